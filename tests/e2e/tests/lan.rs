//! The box on a LAN, end to end with the real `hearthd`: HTTPS with the device certificate
//! (trusted by a rustls client that knows only the box's CA file, and by curl/OpenSSL), the
//! fingerprint in the log, on `/certificate` and in the file agreeing, HTTP → HTTPS redirects,
//! the certificate reused across restarts; and mDNS between two boxes in two network
//! namespaces, where the second `hearth` becomes `hearth-2.local` and its Host allowlist and
//! certificate follow.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hearth_e2e::{Box_, bin_dir};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use sha2::{Digest, Sha256};

#[path = "../../../appliance/lan/tests/support/netns.rs"]
mod netns;
use netns::Netns;

/// A response: status code, header lines (lowercased names), body.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn parse_reply(raw: &[u8]) -> Result<Reply> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of headers")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .context("no status")?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(Reply {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    })
}

fn request(stream: &mut impl ReadWrite, path: &str, host: &str) -> Result<Reply> {
    stream.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut raw = Vec::new();
    match stream.read_to_end(&mut raw) {
        Ok(_) => {}
        // rustls reports a close without close_notify; the response is complete anyway.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(e) => return Err(e.into()),
    }
    parse_reply(&raw)
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// Plain HTTP GET (no redirects followed).
fn http_get(addr: SocketAddr, path: &str, host: &str) -> Result<Reply> {
    let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    request(&mut tcp, path, host)
}

/// HTTPS GET to `addr` presenting `sni`, trusting only the CA in `ca_file`.
fn https_get(addr: SocketAddr, sni: &str, ca_file: &Path, path: &str, host: &str) -> Result<Reply> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(ca_file)?)?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let conn =
        rustls::ClientConnection::new(Arc::new(config), ServerName::try_from(sni.to_owned())?)?;
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    request(&mut tls, path, host)
}

fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn log_of(b: &Box_) -> String {
    std::fs::read_to_string(b.data.path().join("hearthd.log")).unwrap_or_default()
}

/// Starts hearthd with HTTPS on `https_port`, its TLS files in `tls_dir`.
fn start_https_box(tls_dir: &Path, https_port: u16) -> Result<(Box_, SocketAddr)> {
    let data = tempfile::tempdir()?;
    let config = data.path().join("hearth.toml");
    std::fs::write(
        &config,
        format!(
            "https_listen = \"127.0.0.1:{https_port}\"\ntls_dir = \"{}\"\n",
            tls_dir.display()
        ),
    )?;
    let b = Box_::start_in(data, &["--config".as_ref(), config.as_os_str()])?;
    let plain: SocketAddr = b.base.trim_start_matches("http://").parse()?;
    Ok((b, plain))
}

#[test]
fn https_with_the_device_certificate_redirects_and_the_certificate_page() {
    let keep = tempfile::tempdir().unwrap();
    let tls_dir = keep.path().join("tls");
    let https_port = free_port();
    let https = SocketAddr::from(([127, 0, 0, 1], https_port));
    let (mut b, plain) = start_https_box(&tls_dir, https_port).unwrap();
    let ca_file = tls_dir.join("ca.crt");
    let ca_der = CertificateDer::from_pem_file(&ca_file).unwrap();
    let fp = fingerprint(&ca_der);

    // The same fingerprint in the file, the log and on the page (over plain HTTP).
    assert!(log_of(&b).contains(&fp), "fingerprint {fp} not in the log");
    let page = http_get(plain, "/certificate", "hearth.local").unwrap();
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(page.text().contains(&fp), "fingerprint not on the page");
    assert!(!page.text().contains("<script"));
    let csp = page.header("content-security-policy").unwrap();
    assert!(
        !csp.contains("script-src") && csp.contains("default-src 'none'"),
        "{csp}"
    );
    let file = http_get(plain, "/certificate.crt", "hearth.local").unwrap();
    assert_eq!(file.status, 200);
    assert_eq!(
        file.header("content-type"),
        Some("application/x-x509-ca-cert")
    );
    assert_eq!(fingerprint(&file.body), fp);

    // Plain HTTP redirects everything else to the same host and path on HTTPS.
    let moved = http_get(plain, "/v1/models?x=1", "hearth.local").unwrap();
    assert_eq!(moved.status, 308);
    assert_eq!(
        moved.header("location"),
        Some(format!("https://hearth.local:{https_port}/v1/models?x=1").as_str())
    );
    let moved = http_get(plain, "/", &format!("127.0.0.1:{}", plain.port())).unwrap();
    assert_eq!(
        moved.header("location"),
        Some(format!("https://127.0.0.1:{https_port}/").as_str())
    );
    assert_eq!(
        http_get(plain, "/healthz", "localhost").unwrap().status,
        200
    );

    // HTTPS: a client that trusts only the box's CA accepts every name the box answers to.
    for name in ["localhost", "hearth.local", "127.0.0.1"] {
        let r = https_get(https, name, &ca_file, "/healthz", name).unwrap();
        assert_eq!(r.status, 200, "{name}");
    }
    let page = https_get(
        https,
        "hearth.local",
        &ca_file,
        "/certificate",
        "hearth.local",
    )
    .unwrap();
    assert_eq!(page.status, 200);
    assert!(page.text().contains(&fp));
    // ... and refuses a name the box is not.
    assert!(https_get(https, "other.local", &ca_file, "/healthz", "other.local").is_err());
    // The real box's answers come over HTTPS too (setup state, no credentials needed).
    let session = https_get(
        https,
        "hearth.local",
        &ca_file,
        "/ui/session",
        "hearth.local",
    )
    .unwrap();
    assert_eq!(session.status, 200, "{}", session.text());

    // OpenSSL agrees (curl, when installed): the name-constrained CA is accepted.
    if Command::new("curl").arg("--version").output().is_ok() {
        let out = Command::new("curl")
            .args(["-sS", "--fail", "--cacert"])
            .arg(&ca_file)
            .arg("--resolve")
            .arg(format!("hearth.local:{https_port}:127.0.0.1"))
            .arg(format!("https://hearth.local:{https_port}/healthz"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "curl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        eprintln!("curl not installed: skipped the OpenSSL check");
    }

    // Garbage on the HTTPS port does not hurt the box.
    let mut junk = TcpStream::connect(https).unwrap();
    junk.write_all(b"\x16\x03\x01\xff\xffhello garbage\r\n\r\n")
        .unwrap();
    let _ = junk.read(&mut [0; 64]);
    assert_eq!(
        https_get(https, "localhost", &ca_file, "/healthz", "localhost")
            .unwrap()
            .status,
        200
    );

    // Restart: the same CA and the same server certificate are reused.
    let server_crt = std::fs::read(tls_dir.join("server.crt")).unwrap();
    b.terminate().unwrap();
    drop(b);
    let (b, _) = start_https_box(&tls_dir, https_port).unwrap();
    assert_eq!(
        fingerprint(&CertificateDer::from_pem_file(&ca_file).unwrap()),
        fp
    );
    assert_eq!(
        std::fs::read(tls_dir.join("server.crt")).unwrap(),
        server_crt
    );
    assert!(
        log_of(&b).contains(&fp),
        "fingerprint in the log after restart"
    );
    assert_eq!(
        https_get(https, "hearth.local", &ca_file, "/healthz", "hearth.local")
            .unwrap()
            .status,
        200
    );
}

/// hearthd started inside a network namespace (plain HTTP on :8080, HTTPS on :8443, mDNS on).
struct NsBox {
    child: Child,
    data: tempfile::TempDir,
}

impl NsBox {
    fn start(ns: &str) -> Result<Self> {
        let data = tempfile::tempdir()?;
        hearth_e2e::provision(data.path())?;
        let config = data.path().join("hearth.toml");
        std::fs::write(
            &config,
            "listen = \"0.0.0.0:8080\"\nhttps_listen = \"0.0.0.0:8443\"\nmdns = true\nbox_name = \"hearth\"\n",
        )?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(bin_dir().join("hearthd"))
            .arg("--data-dir")
            .arg(data.path())
            .arg("--config")
            .arg(&config)
            .env("HEARTH_LOG", "info")
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(data.path().join("hearthd.log"))?)
            .spawn()?;
        let b = Self { child, data };
        let name = ns.to_owned();
        Netns::spawn_in(ns, move || -> Result<()> {
            let start = Instant::now();
            let addr = SocketAddr::from(([127, 0, 0, 1], 8080));
            while http_get(addr, "/healthz", "localhost")
                .map(|r| r.status)
                .ok()
                != Some(200)
            {
                if start.elapsed() > Duration::from_secs(30) {
                    bail!("hearthd in {name} did not answer /healthz");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(())
        })
        .join()
        .unwrap()
        .with_context(|| self_log(&b.data))?;
        Ok(b)
    }

    fn log(&self) -> String {
        self_log(&self.data)
    }

    fn ca_file(&self) -> PathBuf {
        self.data.path().join("tls/ca.crt")
    }
}

fn self_log(data: &tempfile::TempDir) -> String {
    std::fs::read_to_string(data.path().join("hearthd.log")).unwrap_or_default()
}

impl Drop for NsBox {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- hearthd's log ---\n{}", self.log());
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn resolve_in(ns: &str, host: &'static str) -> Result<HashSet<IpAddr>> {
    Netns::spawn_in(ns, move || -> Result<HashSet<IpAddr>> {
        let daemon = mdns_sd::ServiceDaemon::new()?;
        let events = daemon.resolve_hostname(host, Some(10_000))?;
        let start = Instant::now();
        while let Ok(ev) =
            events.recv_timeout(Duration::from_secs(10).saturating_sub(start.elapsed()))
        {
            if let mdns_sd::HostnameResolutionEvent::AddressesFound(_, addrs) = ev {
                let v4: HashSet<IpAddr> = addrs
                    .iter()
                    .map(|a| a.to_ip_addr())
                    .filter(IpAddr::is_ipv4)
                    .collect();
                if !v4.is_empty() {
                    let _ = daemon.shutdown();
                    return Ok(v4);
                }
            }
        }
        let _ = daemon.shutdown();
        bail!("{host} did not resolve")
    })
    .join()
    .unwrap()
}

#[test]
fn two_boxes_called_hearth_on_one_lan() {
    let Some(net) = Netns::create(2) else { return };
    let first = NsBox::start(&net.a).unwrap();
    // The first box is hearth.local, seen from the other namespace.
    assert_eq!(
        resolve_in(&net.b, "hearth.local.").unwrap(),
        HashSet::from([net.addr_a])
    );
    let second = NsBox::start(&net.b).unwrap();
    // The second finds the name taken and becomes hearth-2.local ...
    let start = Instant::now();
    while !second.log().contains("hearth-2.local") {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "second box never renamed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        resolve_in(&net.a, "hearth-2.local.").unwrap(),
        HashSet::from([net.addr_b])
    );
    assert!(
        !first.log().contains("hearth-2.local"),
        "the first box keeps its name"
    );

    // ... and its certificate and Host allowlist follow: https://hearth-2.local works, a
    // name that is not the box's gets 421.
    let ca = second.ca_file();
    let addr_b = net.addr_b;
    Netns::spawn_in(&net.b, move || -> Result<()> {
        let https = SocketAddr::new(addr_b, 8443);
        let start = Instant::now();
        loop {
            match https_get(https, "hearth-2.local", &ca, "/healthz", "hearth-2.local") {
                Ok(r) if r.status == 200 => break,
                other if start.elapsed() > Duration::from_secs(10) => {
                    bail!("https://hearth-2.local/healthz: {other:?}")
                }
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        let r = https_get(https, "hearth-2.local", &ca, "/healthz", "evil.example")?;
        assert_eq!(r.status, 421, "{}", r.text());
        Ok(())
    })
    .join()
    .unwrap()
    .unwrap();
}
