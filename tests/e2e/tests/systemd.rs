//! hearthd speaks systemd's notify protocol when run as a Type=notify service: READY=1 once
//! it serves, WATCHDOG=1 pings at half of WATCHDOG_USEC, STOPPING=1 on SIGTERM. A test
//! datagram socket stands in for systemd. Needs no model.
#![allow(clippy::unwrap_used)]

use std::ffi::OsStr;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use hearth_e2e::Box_;

fn receive_until(sock: &UnixDatagram, want: &str, limit: Duration) -> Vec<String> {
    let start = Instant::now();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while start.elapsed() < limit {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = msg.lines().any(|l| l == want);
            seen.push(msg);
            if done {
                return seen;
            }
        }
    }
    panic!("no {want} within {limit:?}; got {seen:?}");
}

#[test]
fn ready_watchdog_and_stopping_are_sent_to_the_notify_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut b = Box_::start_with_env(
        data,
        &[],
        &[
            ("NOTIFY_SOCKET", path.as_os_str()),
            ("WATCHDOG_USEC", OsStr::new("400000")),
        ],
    )
    .unwrap();
    receive_until(&sock, "READY=1", Duration::from_secs(10));
    // Two pings within a few intervals: the watchdog keeps running, not just once.
    receive_until(&sock, "WATCHDOG=1", Duration::from_secs(5));
    receive_until(&sock, "WATCHDOG=1", Duration::from_secs(5));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(b.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    receive_until(&sock, "STOPPING=1", Duration::from_secs(10));
    assert!(b.terminate().unwrap().success());
}
