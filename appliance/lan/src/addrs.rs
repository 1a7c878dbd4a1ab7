//! The box's own IP addresses, for certificate names and the Host allowlist.

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::Error;

/// Every address configured on an interface that is up: IPv4 and IPv6, loopback included,
/// IPv6 link-local (`fe80::/10`) left out (a URL needs a zone id for those, and browsers
/// do not send one in `Host`). Sorted, without duplicates.
pub fn local_addresses() -> Result<Vec<IpAddr>, Error> {
    let mut out = BTreeSet::new();
    for ifa in nix::ifaddrs::getifaddrs().map_err(Error::Interfaces)? {
        if !ifa.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP) {
            continue;
        }
        let Some(addr) = ifa.address else { continue };
        let ip = if let Some(v4) = addr.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            IpAddr::V6(v6.ip())
        } else {
            continue;
        };
        if usable(&ip) {
            out.insert(ip);
        }
    }
    Ok(out.into_iter().collect())
}

fn usable(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !v4.is_unspecified(),
        IpAddr::V6(v6) => !v6.is_unspecified() && (v6.segments()[0] & 0xffc0) != 0xfe80,
    }
}

/// How `addr` appears in a `Host` header, without the port: `10.0.0.5`, `[fd00::5]`.
pub fn host_form(addr: &IpAddr) -> String {
    match addr {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_loopback_and_skips_link_local() {
        let addrs = local_addresses().unwrap();
        assert!(addrs.contains(&IpAddr::from([127, 0, 0, 1])), "{addrs:?}");
        assert!(addrs.iter().all(usable), "{addrs:?}");
        assert!(!usable(&"fe80::1".parse().unwrap()));
        assert!(usable(&"fd00::1".parse().unwrap()));
        assert!(!usable(&"0.0.0.0".parse().unwrap()));
    }

    #[test]
    fn host_form_brackets_ipv6() {
        assert_eq!(host_form(&"10.0.0.5".parse().unwrap()), "10.0.0.5");
        assert_eq!(host_form(&"fd00::5".parse().unwrap()), "[fd00::5]");
    }
}
