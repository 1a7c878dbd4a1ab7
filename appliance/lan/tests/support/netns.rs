//! Two network namespaces joined by a veth pair, for tests of things that talk multicast
//! (mDNS) between two "boxes". Shared by hearth-lan's tests and the end-to-end tests
//! (`#[path]`-included; it has no dependencies beyond anyhow and nix).

use std::net::IpAddr;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Two namespaces `<tag>a` and `<tag>b` with 10.231.<n>.1 and .2 on a veth pair.
#[derive(Debug)]
pub struct Netns {
    pub a: String,
    pub b: String,
    pub addr_a: IpAddr,
    pub addr_b: IpAddr,
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

impl Netns {
    /// `None` (after saying why) when namespaces cannot be made here.
    pub fn create(n: u8) -> Option<Self> {
        let tag = format!("hl{}x{n}", std::process::id() % 100_000);
        let net = Self {
            a: format!("{tag}a"),
            b: format!("{tag}b"),
            addr_a: IpAddr::from([10, 231, n, 1]),
            addr_b: IpAddr::from([10, 231, n, 2]),
        };
        match net.setup(&tag, n) {
            Ok(()) => Some(net),
            Err(e) => {
                if std::env::var("HEARTH_REQUIRE_NETNS").as_deref() == Ok("1") {
                    panic!("cannot create network namespaces: {e:#}");
                }
                eprintln!("skipped: cannot create network namespaces (run as root): {e:#}");
                None
            }
        }
    }

    fn setup(&self, tag: &str, n: u8) -> Result<()> {
        ip(&["netns", "add", &self.a])?;
        ip(&["netns", "add", &self.b])?;
        let (va, vb) = (format!("{tag}va"), format!("{tag}vb"));
        ip(&[
            "link", "add", &va, "netns", &self.a, "type", "veth", "peer", "name", &vb, "netns",
            &self.b,
        ])?;
        for (ns, dev, host) in [(&self.a, &va, 1), (&self.b, &vb, 2)] {
            let addr = format!("10.231.{n}.{host}/24");
            ip(&["-n", ns, "addr", "add", &addr, "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// Runs `f` on a new thread inside namespace `ns`; threads it starts (the mDNS daemon's,
    /// the tokio runtime's) inherit the namespace.
    pub fn spawn_in<T: Send + 'static>(
        ns: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/run/netns/{ns}");
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap();
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.a]);
        let _ = ip(&["netns", "del", &self.b]);
    }
}
