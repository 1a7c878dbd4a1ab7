//! The device identity and the HTTPS server, over real sockets, with a real rustls client that
//! trusts only the box's CA file.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use axum::Router;
use axum::routing::get;
use hearth_lan::{DeviceIdentity, HttpsOptions, Names, certificate_names};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

fn names(list: &[&str]) -> Names {
    list.iter().map(|s| (*s).to_owned()).collect()
}

fn client_config(ca_file: &Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let ca = CertificateDer::from_pem_file(ca_file).unwrap();
    roots.add(ca).unwrap();
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

/// GET `path` over TLS to `addr`, presenting `sni`; returns the status line and the body.
async fn get_tls(
    addr: SocketAddr,
    sni: &str,
    config: Arc<rustls::ClientConfig>,
    path: &str,
) -> Result<(String, String)> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let name = ServerName::try_from(sni.to_owned())?;
    let mut tls = connector
        .connect(name, tcp)
        .await
        .context("TLS handshake")?;
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = Vec::new();
    tls.read_to_end(&mut out).await?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("no response head: {text:?}");
    };
    Ok((
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    ))
}

struct Server {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), hearth_lan::Error>>,
}

async fn serve(identity: &Arc<DeviceIdentity>, options: HttpsOptions) -> Server {
    let listener = hearth_lan::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/hello", get(|| async { "hello over tls" }))
        .route(
            "/peer",
            get(
                |axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>| async move {
                    peer.ip().to_string()
                },
            ),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(500)).await;
                "slow done"
            }),
        );
    let (stop, shutdown) = watch::channel(false);
    let tls = identity.server_config().unwrap();
    let task = tokio::spawn(hearth_lan::serve_https(
        listener, tls, app, options, shutdown,
    ));
    Server { addr, stop, task }
}

#[test]
fn first_start_creates_private_files_and_later_starts_reuse_them() {
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    let wanted = names(&["hearth.local", "localhost", "127.0.0.1"]);
    let first = DeviceIdentity::load_or_create(&tls, &wanted, &[]).unwrap();
    for (file, mode) in [
        ("ca.key", 0o600),
        ("server.key", 0o600),
        ("ca.crt", 0o644),
        ("server.crt", 0o644),
    ] {
        let meta = std::fs::metadata(tls.join(file)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, mode, "{file}");
    }
    assert_eq!(
        std::fs::metadata(&tls).unwrap().permissions().mode() & 0o777,
        0o700
    );
    // No temp files left behind.
    let leftovers: Vec<_> = std::fs::read_dir(&tls)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // The fingerprint is the SHA-256 of the CA file's DER, formatted AB:CD:...
    let der = CertificateDer::from_pem_file(tls.join("ca.crt")).unwrap();
    assert_eq!(first.fingerprint(), hearth_lan::fingerprint(&der));
    assert_eq!(first.ca_der(), der.as_ref());
    assert_eq!(first.fingerprint().len(), 32 * 3 - 1);
    assert!(
        first
            .fingerprint()
            .bytes()
            .all(|b| b == b':' || b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
    );

    let server_fp = first.server_fingerprint();
    drop(first);
    let again = DeviceIdentity::load_or_create(&tls, &wanted, &[]).unwrap();
    assert_eq!(again.fingerprint(), hearth_lan::fingerprint(&der));
    assert_eq!(again.server_fingerprint(), server_fp, "server cert reused");

    // Fewer names: still covered, no reissue.
    let fewer = names(&["hearth.local"]);
    assert!(!again.ensure_names(&fewer).unwrap());
    // A new name: reissued, same CA.
    let more = names(&["hearth-2.local", "hearth.local", "localhost", "127.0.0.1"]);
    assert!(again.ensure_names(&more).unwrap());
    assert_ne!(again.server_fingerprint(), server_fp);
    assert_eq!(again.fingerprint(), hearth_lan::fingerprint(&der));
    assert_eq!(again.server_names(), more);
    // And a restart asking for the new names reuses the reissued certificate.
    let reissued = again.server_fingerprint();
    drop(again);
    let third = DeviceIdentity::load_or_create(&tls, &more, &[]).unwrap();
    assert_eq!(third.server_fingerprint(), reissued);
}

#[test]
fn damaged_files_are_recovered_from() {
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    let wanted = names(&["hearth.local"]);
    let fp = DeviceIdentity::load_or_create(&tls, &wanted, &[])
        .unwrap()
        .fingerprint()
        .to_owned();
    // A torn server certificate: reissued under the same CA.
    std::fs::write(tls.join("server.crt"), "garbage").unwrap();
    let id = DeviceIdentity::load_or_create(&tls, &wanted, &[]).unwrap();
    assert_eq!(id.fingerprint(), fp);
    // A corrupt CA key: moved aside, a new CA (the box must come up).
    std::fs::write(tls.join("ca.key"), "not a key").unwrap();
    let id = DeviceIdentity::load_or_create(&tls, &wanted, &[]).unwrap();
    assert_ne!(id.fingerprint(), fp);
    assert!(tls.join("ca.key.corrupt").exists());
}

#[tokio::test]
async fn https_serves_with_the_generated_certificate_and_survives_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    let wanted = certificate_names(["hearth.local"], &["127.0.0.1".parse().unwrap()]);
    let identity = Arc::new(DeviceIdentity::load_or_create(&tls, &wanted, &[]).unwrap());
    let server = serve(
        &identity,
        HttpsOptions {
            handshake_timeout: Duration::from_millis(300),
            ..HttpsOptions::default()
        },
    )
    .await;
    let client = client_config(&identity.ca_path());

    for sni in ["hearth.local", "localhost", "127.0.0.1"] {
        let (status, body) = get_tls(server.addr, sni, client.clone(), "/hello")
            .await
            .unwrap();
        assert_eq!(status, "HTTP/1.1 200 OK", "{sni}");
        assert_eq!(body, "hello over tls");
    }
    let (_, peer) = get_tls(server.addr, "localhost", client.clone(), "/peer")
        .await
        .unwrap();
    assert_eq!(peer, "127.0.0.1");
    // A name the certificate does not cover is refused by the client.
    let err = get_tls(server.addr, "other.local", client.clone(), "/hello").await;
    assert!(err.is_err(), "{err:?}");

    // Garbage instead of a ClientHello, a client that never speaks, a half handshake.
    let mut garbage = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\xff\x16\x03\x01\xff\xff")
        .await
        .unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), garbage.read_to_end(&mut sink)).await;
    let mut silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(3), silent.read_to_end(&mut sink)).await;
    assert!(
        closed.is_ok(),
        "a silent client is dropped after the handshake timeout"
    );
    let (status, _) = get_tls(server.addr, "hearth.local", client.clone(), "/hello")
        .await
        .unwrap();
    assert_eq!(status, "HTTP/1.1 200 OK", "still serving after bad clients");

    // Graceful shutdown: a request in flight finishes, then the server returns.
    let slow = tokio::spawn(get_tls(server.addr, "localhost", client.clone(), "/slow"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.stop.send(true).unwrap();
    let (status, body) = slow.await.unwrap().unwrap();
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 200 OK", "slow done")
    );
    tokio::time::timeout(Duration::from_secs(5), server.task)
        .await
        .expect("server stops after the signal")
        .unwrap()
        .unwrap();
    assert!(tokio::net::TcpStream::connect(server.addr).await.is_err());
}

#[tokio::test]
async fn a_reissued_certificate_is_served_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let identity = Arc::new(
        DeviceIdentity::load_or_create(&dir.path().join("tls"), &names(&["hearth.local"]), &[])
            .unwrap(),
    );
    let server = serve(&identity, HttpsOptions::default()).await;
    let client = client_config(&identity.ca_path());
    assert!(
        get_tls(server.addr, "hearth-2.local", client.clone(), "/hello")
            .await
            .is_err()
    );
    identity
        .ensure_names(&names(&["hearth.local", "hearth-2.local"]))
        .unwrap();
    let (status, _) = get_tls(server.addr, "hearth-2.local", client.clone(), "/hello")
        .await
        .unwrap();
    assert_eq!(status, "HTTP/1.1 200 OK");
    server.stop.send(true).unwrap();
}

#[tokio::test]
async fn names_outside_the_ca_constraints_are_left_out_and_the_rest_still_works() {
    // The CA is constrained to .local, localhost, private addresses and the configured extra
    // names, so a stolen CA key cannot impersonate other sites to people who trusted it. A
    // server certificate naming anything else (a public address on eth0, say) would be
    // refused as a whole, so such names are left out of it.
    let dir = tempfile::tempdir().unwrap();
    let identity = Arc::new(
        DeviceIdentity::load_or_create(
            &dir.path().join("tls"),
            &names(&[
                "bank.example",
                "8.8.8.8",
                "192.0.2.2",
                "hearth.local",
                "10.1.2.3",
            ]),
            &[],
        )
        .unwrap(),
    );
    assert_eq!(
        identity.server_names(),
        names(&["10.1.2.3", "hearth.local"])
    );
    let server = serve(&identity, HttpsOptions::default()).await;
    let client = client_config(&identity.ca_path());
    for sni in ["bank.example", "8.8.8.8"] {
        let err = get_tls(server.addr, sni, client.clone(), "/hello").await;
        assert!(err.is_err(), "{sni}: {err:?}");
    }
    let (status, _) = get_tls(server.addr, "hearth.local", client.clone(), "/hello")
        .await
        .unwrap();
    assert_eq!(status, "HTTP/1.1 200 OK");
    server.stop.send(true).unwrap();

    // Configured extra names are permitted when the CA is created with them.
    let dir = tempfile::tempdir().unwrap();
    let identity = Arc::new(
        DeviceIdentity::load_or_create(
            &dir.path().join("tls"),
            &names(&["ai.clinic.example", "hearth.local"]),
            &["ai.clinic.example".to_owned()],
        )
        .unwrap(),
    );
    let server = serve(&identity, HttpsOptions::default()).await;
    let client = client_config(&identity.ca_path());
    let (status, _) = get_tls(server.addr, "ai.clinic.example", client.clone(), "/hello")
        .await
        .unwrap();
    assert_eq!(status, "HTTP/1.1 200 OK");
    server.stop.send(true).unwrap();
}
