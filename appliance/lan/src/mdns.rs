//! mDNS: the box answers as `<name>.local` and advertises `_https._tcp` and `_hearth._tcp`.
//!
//! Built on `mdns-sd`, which probes for the host name before using it (RFC 6762 §8) and, when
//! another device already answers for it with other addresses, moves to `<name>-2.local`
//! (then `-3`, ...). [`start`] publishes the name actually in use on a watch channel, so the
//! Host allowlist and the certificate follow it; it takes the wanted name from another
//! watch channel, so the owner can rename the box while it runs.

use std::collections::HashMap;
use std::time::Duration;

use mdns_sd::{DaemonEvent, IfKind, RRType, ServiceDaemon, ServiceInfo};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::Error;

/// The service type every Hearth box advertises, for clients that look for boxes.
pub const HEARTH_SERVICE: &str = "_hearth._tcp.local.";
/// The standard type for a web server over TLS.
pub const HTTPS_SERVICE: &str = "_https._tcp.local.";
/// The standard type for a plain-HTTP web server (advertised only without HTTPS).
pub const HTTP_SERVICE: &str = "_http._tcp.local.";

/// What to advertise.
#[derive(Debug, Clone)]
pub struct MdnsConfig {
    /// The HTTPS port, when HTTPS is on: advertised as `_https._tcp`, and as `_hearth._tcp`'s
    /// port.
    pub https_port: Option<u16>,
    /// The plain-HTTP port: advertised as `_http._tcp` (and `_hearth._tcp`) without HTTPS.
    pub http_port: u16,
    /// `version` in the TXT records (hearthd's version).
    pub version: String,
    /// `api` in the `_hearth._tcp` TXT record: where the OpenAI-compatible API lives.
    pub api_path: String,
    /// Network interfaces to answer on, by name (`eth0`, `wlan0`); empty means every
    /// interface except loopback.
    pub interfaces: Vec<String>,
}

/// A box name as a DNS label: lowercase letters, digits and `-`, 1–63 characters, not
/// starting or ending with `-`. A trailing `.local` is accepted and removed.
pub fn validate_box_name(name: &str) -> Result<String, Error> {
    let lower = name.trim().to_ascii_lowercase();
    let label = lower
        .trim_end_matches('.')
        .strip_suffix(".local")
        .unwrap_or(lower.trim_end_matches('.'));
    let bad = |reason| {
        Err(Error::BoxName {
            name: name.to_owned(),
            reason,
        })
    };
    if label.is_empty() || label.len() > 63 {
        return bad("it must be 1 to 63 characters long");
    }
    if !label
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return bad("only letters, digits and '-' are allowed");
    }
    if label.starts_with('-') || label.ends_with('-') {
        return bad("it cannot start or end with '-'");
    }
    Ok(label.to_owned())
}

/// Starts answering mDNS for the name in `desired` (a box name such as `hearth`). Returns a
/// receiver of the host name in use (`hearth.local`, or `hearth-2.local` after a conflict)
/// and the task, which unregisters everything and stops when `shutdown` turns true.
/// A desired name that is not a valid DNS label is logged and ignored (the old name stays).
pub fn start(
    config: MdnsConfig,
    mut desired: watch::Receiver<String>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(watch::Receiver<String>, JoinHandle<()>), Error> {
    let first = validate_box_name(&desired.borrow_and_update())?;
    let daemon = ServiceDaemon::new().map_err(Error::Mdns)?;
    if config.interfaces.is_empty() {
        daemon
            .disable_interface(vec![IfKind::LoopbackV4, IfKind::LoopbackV6])
            .map_err(Error::Mdns)?;
    } else {
        daemon.disable_interface(IfKind::All).map_err(Error::Mdns)?;
        let named: Vec<IfKind> = config
            .interfaces
            .iter()
            .map(|i| IfKind::Name(i.clone()))
            .collect();
        daemon.enable_interface(named).map_err(Error::Mdns)?;
    }
    let monitor = daemon.monitor().map_err(Error::Mdns)?;
    let mut registered = register(&daemon, &config, &first)?;
    let (in_use_tx, in_use) = watch::channel(format!("{first}.local"));
    log::info!(name:% = format!("{first}.local"); "mDNS: announcing");

    let task = tokio::spawn(async move {
        let mut label = first;
        loop {
            tokio::select! {
                event = monitor.recv_async() => match event {
                    Ok(DaemonEvent::NameChange(change))
                        if matches!(change.rr_type, RRType::A | RRType::AAAA)
                            && bare(&change.original) == format!("{label}.local") =>
                    {
                        let new = bare(&change.new_name);
                        log::warn!(wanted:% = format!("{label}.local"), name:% = new, interface:% = change.intf_name;
                            "mDNS: another device answers for this name; using another");
                        in_use_tx.send_replace(new);
                    }
                    Ok(DaemonEvent::Error(e)) => log::warn!(error:% = e; "mDNS daemon error"),
                    Ok(_) => {}
                    Err(_) => {
                        log::error!("mDNS daemon stopped unexpectedly");
                        break;
                    }
                },
                changed = desired.changed() => {
                    if changed.is_err() {
                        // The owner of the name is gone; keep answering until shutdown.
                        let _ = crate::stopped(&mut shutdown).await;
                        break;
                    }
                    let wanted = desired.borrow_and_update().clone();
                    match validate_box_name(&wanted) {
                        Ok(new) if new != label => {
                            unregister(&daemon, &registered).await;
                            match register(&daemon, &config, &new) {
                                Ok(r) => {
                                    registered = r;
                                    label = new;
                                    log::info!(name:% = format!("{label}.local"); "mDNS: renamed; announcing");
                                    in_use_tx.send_replace(format!("{label}.local"));
                                }
                                Err(e) => {
                                    log::error!(error:% = e; "mDNS: cannot announce the new name");
                                    registered.clear();
                                }
                            }
                        }
                        Ok(_) => {}
                        Err(e) => log::warn!(error:% = e; "mDNS: ignoring an invalid box name"),
                    }
                }
                _ = crate::stopped(&mut shutdown) => break,
            }
        }
        unregister(&daemon, &registered).await;
        if let Ok(status) = daemon.shutdown() {
            let _ = tokio::time::timeout(Duration::from_secs(2), status.recv_async()).await;
        }
        log::info!("mDNS: stopped");
    });
    Ok((in_use, task))
}

/// `hearth.local.` → `hearth.local`.
fn bare(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn register(
    daemon: &ServiceDaemon,
    config: &MdnsConfig,
    label: &str,
) -> Result<Vec<String>, Error> {
    let host = format!("{label}.local.");
    let version = ("version".to_owned(), config.version.clone());
    let mut services = Vec::new();
    let main_port = config.https_port.unwrap_or(config.http_port);
    let mut hearth_txt: HashMap<String, String> = HashMap::from([
        version.clone(),
        ("api".to_owned(), config.api_path.clone()),
        ("path".to_owned(), "/".to_owned()),
    ]);
    hearth_txt.insert(
        "scheme".to_owned(),
        if config.https_port.is_some() {
            "https"
        } else {
            "http"
        }
        .to_owned(),
    );
    services.push((HEARTH_SERVICE, main_port, hearth_txt));
    let web_txt = HashMap::from([version, ("path".to_owned(), "/".to_owned())]);
    match config.https_port {
        Some(port) => services.push((HTTPS_SERVICE, port, web_txt)),
        None => services.push((HTTP_SERVICE, config.http_port, web_txt)),
    }
    let mut fullnames = Vec::new();
    for (ty, port, txt) in services {
        let info = ServiceInfo::new(ty, label, &host, (), port, txt)
            .map_err(Error::Mdns)?
            .enable_addr_auto();
        fullnames.push(info.get_fullname().to_owned());
        daemon.register(info).map_err(Error::Mdns)?;
    }
    Ok(fullnames)
}

async fn unregister(daemon: &ServiceDaemon, fullnames: &[String]) {
    for name in fullnames {
        match daemon.unregister(name) {
            Ok(done) => {
                let _ = tokio::time::timeout(Duration::from_secs(2), done.recv_async()).await;
            }
            Err(e) => log::warn!(service:% = name, error:% = e; "mDNS: cannot unregister"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn box_names_are_dns_labels() {
        let table = [
            ("hearth", Some("hearth")),
            ("Kitchen-Box", Some("kitchen-box")),
            ("hearth.local", Some("hearth")),
            ("hearth.local.", Some("hearth")),
            ("box2", Some("box2")),
            ("", None),
            ("-x", None),
            ("x-", None),
            ("a.b", None),
            ("naïve", None),
            ("with space", None),
            (&"x".repeat(64), None),
        ];
        for (input, want) in table {
            assert_eq!(validate_box_name(input).ok().as_deref(), want, "{input}");
        }
        assert_eq!(bare("Hearth-2.local."), "hearth-2.local");
    }
}
