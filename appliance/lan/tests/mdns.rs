//! mDNS over a real (virtual) network: two network namespaces joined by a veth pair, one
//! responder in each, both wanting `hearth`. Needs root (`ip netns`); without it the test says
//! so and passes, unless `HEARTH_REQUIRE_NETNS=1` (set by the project's test command).
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

#[path = "support/netns.rs"]
mod netns;
use hearth_lan::MdnsConfig;
use mdns_sd::{HostnameResolutionEvent, ServiceDaemon, ServiceEvent};
use netns::Netns;
use tokio::sync::watch;

fn config() -> MdnsConfig {
    MdnsConfig {
        https_port: Some(8443),
        http_port: 8080,
        version: "9.9.9".into(),
        api_path: "/v1".into(),
        interfaces: Vec::new(),
    }
}

/// A responder for `name` in its own thread and runtime; returns controls for the test.
struct Responder {
    desired: watch::Sender<String>,
    stop: watch::Sender<bool>,
    in_use: std::sync::mpsc::Receiver<watch::Receiver<String>>,
    thread: std::thread::JoinHandle<()>,
}

fn responder(ns: &str, name: &str) -> Responder {
    let (desired, desired_rx) = watch::channel(name.to_owned());
    let (stop, stop_rx) = watch::channel(false);
    let (tx, in_use) = std::sync::mpsc::channel();
    let thread = Netns::spawn_in(ns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let (in_use, task) = hearth_lan::mdns::start(config(), desired_rx, stop_rx).unwrap();
            tx.send(in_use).unwrap();
            task.await.unwrap();
        });
    });
    Responder {
        desired,
        stop,
        in_use,
        thread,
    }
}

fn wait_name(rx: &mut watch::Receiver<String>, want: &str, limit: Duration) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if *rx.borrow() == want {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("name in use is {:?}, wanted {want:?}", *rx.borrow())
}

/// Resolves `host` with a fresh mDNS querier; returns the IPv4 addresses found.
fn resolve(daemon: &ServiceDaemon, host: &str, limit: Duration) -> Result<HashSet<IpAddr>> {
    let events = daemon.resolve_hostname(host, Some(limit.as_millis() as u64))?;
    let start = Instant::now();
    while let Ok(ev) = events.recv_timeout(limit.saturating_sub(start.elapsed())) {
        if let HostnameResolutionEvent::AddressesFound(_, addrs) = ev {
            let v4: HashSet<IpAddr> = addrs
                .iter()
                .map(|a| a.to_ip_addr())
                .filter(IpAddr::is_ipv4)
                .collect();
            if !v4.is_empty() {
                let _ = daemon.stop_resolve_hostname(host);
                return Ok(v4);
            }
        }
    }
    let _ = daemon.stop_resolve_hostname(host);
    bail!("{host} did not resolve within {limit:?}")
}

#[test]
fn two_boxes_called_hearth_one_becomes_hearth_2_and_both_resolve() {
    let Some(net) = Netns::create(1) else { return };
    let (addr_a, addr_b) = (net.addr_a, net.addr_b);

    let a = responder(&net.a, "hearth");
    let mut a_name = a.in_use.recv().unwrap();
    // A querier in namespace b (where the second box will also live).
    let checks = Netns::spawn_in(&net.b, move || -> Result<()> {
        let querier = ServiceDaemon::new()?;
        let found = resolve(&querier, "hearth.local.", Duration::from_secs(10))?;
        assert_eq!(
            found,
            HashSet::from([addr_a]),
            "hearth.local before the second box"
        );
        querier.shutdown()?;
        Ok(())
    });
    checks.join().unwrap().unwrap();
    wait_name(&mut a_name, "hearth.local", Duration::from_secs(1)).unwrap();

    // The second box wants the same name, finds it taken, and takes hearth-2.
    let b = responder(&net.b, "hearth");
    let mut b_name = b.in_use.recv().unwrap();
    wait_name(&mut b_name, "hearth-2.local", Duration::from_secs(15)).unwrap();
    assert_eq!(
        *a_name.borrow(),
        "hearth.local",
        "the first box keeps its name"
    );

    // From the first box's network: both names resolve to the right box, and the service is
    // advertised with its TXT records.
    let checks = Netns::spawn_in(&net.a, move || -> Result<()> {
        let querier = ServiceDaemon::new()?;
        let found = resolve(&querier, "hearth-2.local.", Duration::from_secs(10))?;
        assert_eq!(found, HashSet::from([addr_b]), "hearth-2.local");
        let browse = querier.browse(hearth_lan::mdns::HEARTH_SERVICE)?;
        let start = Instant::now();
        let mut hosts = HashSet::new();
        while hosts.len() < 2 && start.elapsed() < Duration::from_secs(10) {
            if let Ok(ServiceEvent::ServiceResolved(s)) =
                browse.recv_timeout(Duration::from_millis(500))
            {
                assert_eq!(s.port, 8443);
                assert_eq!(s.txt_properties.get_property_val_str("api"), Some("/v1"));
                assert_eq!(
                    s.txt_properties.get_property_val_str("version"),
                    Some("9.9.9")
                );
                hosts.insert(s.host.clone());
            }
        }
        assert_eq!(
            hosts,
            HashSet::from(["hearth.local.".to_owned(), "hearth-2.local.".to_owned()])
        );
        let https = querier.browse(hearth_lan::mdns::HTTPS_SERVICE)?;
        let start = Instant::now();
        loop {
            if start.elapsed() > Duration::from_secs(10) {
                bail!("_https._tcp not advertised");
            }
            if let Ok(ServiceEvent::ServiceResolved(s)) =
                https.recv_timeout(Duration::from_millis(500))
            {
                assert_eq!(s.port, 8443);
                break;
            }
        }
        querier.shutdown()?;
        Ok(())
    });
    checks.join().unwrap().unwrap();

    // The owner renames the second box: it follows, and the new name resolves.
    b.desired.send("kitchen".into()).unwrap();
    wait_name(&mut b_name, "kitchen.local", Duration::from_secs(5)).unwrap();
    let checks = Netns::spawn_in(&net.a, move || -> Result<()> {
        let querier = ServiceDaemon::new()?;
        let found = resolve(&querier, "kitchen.local.", Duration::from_secs(10))?;
        assert_eq!(found, HashSet::from([addr_b]));
        querier.shutdown()?;
        Ok(())
    });
    checks.join().unwrap().unwrap();
    // An invalid name is ignored.
    b.desired.send("not a name!".into()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(*b_name.borrow(), "kitchen.local");

    // Shutdown: both tasks end promptly.
    let start = Instant::now();
    a.stop.send(true).unwrap();
    b.stop.send(true).unwrap();
    a.thread.join().unwrap();
    b.thread.join().unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
}
