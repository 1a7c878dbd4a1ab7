//! Everything LAN-facing started together, for `hearthd::run`: the device identity, the HTTPS
//! server, mDNS, and a follower that keeps the Host allowlist and the certificate's names in
//! step with the box's name, its mDNS name and its addresses.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use axum::Router;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::{DeviceIdentity, Error, HttpsOptions, MdnsConfig, addrs, identity, mdns, web};

/// The allowlist of host names (lowercase, no port) the Host check reads; shared with
/// `hearthd`'s `AllowedHosts`.
pub type SharedHosts = Arc<RwLock<BTreeSet<String>>>;

/// How often the box's addresses are looked at again (DHCP may move them).
const ADDRESS_POLL: Duration = Duration::from_secs(60);

/// What to start.
#[derive(Debug, Clone)]
pub struct LanConfig {
    /// Where the device CA and server certificate live (`<data_dir>/tls`).
    pub tls_dir: PathBuf,
    /// Serve HTTPS here; `None` keeps the box on plain HTTP (dev mode).
    pub https_listen: Option<SocketAddr>,
    /// The plain-HTTP port (advertised over mDNS when there is no HTTPS).
    pub http_port: u16,
    /// Answer mDNS as `<box name>.local` and advertise the services.
    pub mdns: bool,
    /// Interfaces mDNS answers on; empty means all but loopback.
    pub mdns_interfaces: Vec<String>,
    /// Extra names the box answers to (`host_names` in the config): in the certificate and
    /// the CA's name constraints.
    pub host_names: Vec<String>,
    /// Advertised in mDNS TXT records.
    pub version: String,
    /// Limits for the HTTPS server.
    pub https: HttpsOptions,
}

/// The running LAN services.
#[derive(Debug)]
pub struct Lan {
    identity: Option<Arc<DeviceIdentity>>,
    https_addr: Option<SocketAddr>,
    mdns_name: Option<watch::Receiver<String>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Lan {
    /// Starts what `config` asks for. `app` is served over HTTPS (with `/certificate` and
    /// `/certificate.crt` added); `box_name` is the wanted name (`hearth`), which the owner may
    /// change while running; `hosts` is kept current. Everything stops when `shutdown` turns
    /// true; then await [`Lan::join`].
    pub async fn start(
        config: LanConfig,
        app: Router,
        box_name: watch::Receiver<String>,
        hosts: SharedHosts,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Self, Error> {
        let mut tasks = Vec::new();
        let addrs = addrs::local_addresses().unwrap_or_else(|e| {
            log::warn!(error:% = e; "cannot list this box's addresses");
            Vec::new()
        });
        let wanted = mdns::validate_box_name(&box_name.borrow()).unwrap_or_else(|e| {
            log::warn!(error:% = e; "using 'hearth' as the box name");
            "hearth".to_owned()
        });
        let names = Follow {
            wanted: format!("{wanted}.local"),
            in_use: format!("{wanted}.local"),
            extra: config.host_names.clone(),
            addrs,
        };
        names.publish(&hosts);

        let mut identity = None;
        let mut https_addr = None;
        if let Some(listen) = config.https_listen {
            let dir = config.tls_dir.clone();
            let wanted_names = names.certificate_names();
            let extra = config.host_names.clone();
            let id = tokio::task::spawn_blocking(move || {
                DeviceIdentity::load_or_create(&dir, &wanted_names, &extra)
            })
            .await
            .map_err(|e| Error::Write {
                path: config.tls_dir.clone(),
                source: std::io::Error::other(e),
            })??;
            let id = Arc::new(id);
            let listener = crate::bind(listen).await?;
            let local = listener.local_addr().map_err(|source| Error::Accept {
                addr: Some(listen),
                source,
            })?;
            log::info!(
                fingerprint:% = id.fingerprint(),
                ca_file:? = id.ca_path(),
                url:% = format!("https://{}:{}/", names.in_use, local.port());
                "HTTPS: serving with the device certificate (compare this fingerprint with the box's /certificate page and label)"
            );
            let tls = id.server_config()?;
            let app = app.merge(web::certificate_routes(id.clone(), local.port()));
            let https_options = config.https.clone();
            let stop = shutdown.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = crate::serve_https(listener, tls, app, https_options, stop).await {
                    log::error!(error:% = e; "HTTPS server failed");
                }
            }));
            identity = Some(id);
            https_addr = Some(local);
        }

        let mut mdns_name = None;
        if config.mdns {
            let mdns_config = MdnsConfig {
                https_port: https_addr.map(|a| a.port()),
                http_port: config.http_port,
                version: config.version.clone(),
                api_path: "/v1".into(),
                interfaces: config.mdns_interfaces.clone(),
            };
            let (in_use, task) = mdns::start(mdns_config, box_name.clone(), shutdown.clone())?;
            tasks.push(task);
            mdns_name = Some(in_use);
        }

        tasks.push(tokio::spawn(follow(
            names,
            box_name,
            mdns_name.clone(),
            hosts,
            identity.clone(),
            shutdown,
        )));
        Ok(Self {
            identity,
            https_addr,
            mdns_name,
            tasks,
        })
    }

    /// The device identity, when HTTPS is on.
    pub fn identity(&self) -> Option<&Arc<DeviceIdentity>> {
        self.identity.as_ref()
    }

    /// Where HTTPS listens, when it is on.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https_addr
    }

    /// The mDNS host name in use (`hearth.local`, `hearth-2.local`), when mDNS is on.
    pub fn mdns_name(&self) -> Option<watch::Receiver<String>> {
        self.mdns_name.clone()
    }

    /// What the plain-HTTP listener should serve: the redirect router when HTTPS is on,
    /// otherwise `app` itself.
    pub fn plain_http_router(&self, app: Router) -> Router {
        match (&self.identity, self.https_addr) {
            (Some(id), Some(addr)) => web::http_redirect_router(id.clone(), addr.port()),
            _ => app,
        }
    }

    /// Waits for every task to finish (after the shutdown signal).
    pub async fn join(self) {
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// The names the box currently answers to.
struct Follow {
    wanted: String,
    in_use: String,
    extra: Vec<String>,
    addrs: Vec<IpAddr>,
}

impl Follow {
    fn certificate_names(&self) -> identity::Names {
        identity::certificate_names(
            [self.wanted.as_str(), self.in_use.as_str()]
                .into_iter()
                .chain(self.extra.iter().map(String::as_str)),
            &self.addrs,
        )
    }

    /// Adds the current names to the allowlist. Names are never removed while running: a
    /// page open under the old name keeps working until restart.
    fn publish(&self, hosts: &SharedHosts) {
        let mut set = hosts.write().unwrap_or_else(PoisonError::into_inner);
        set.insert("localhost".into());
        set.insert(self.wanted.clone());
        set.insert(self.in_use.clone());
        set.extend(self.extra.iter().map(|n| n.to_ascii_lowercase()));
        set.extend(self.addrs.iter().map(addrs::host_form));
    }
}

async fn follow(
    mut names: Follow,
    mut box_name: watch::Receiver<String>,
    mut in_use: Option<watch::Receiver<String>>,
    hosts: SharedHosts,
    identity: Option<Arc<DeviceIdentity>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut poll = tokio::time::interval(ADDRESS_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    poll.tick().await;
    loop {
        tokio::select! {
            changed = box_name.changed() => {
                if changed.is_err() {
                    crate::stopped(&mut shutdown).await;
                    return;
                }
                let wanted = box_name.borrow_and_update().clone();
                match mdns::validate_box_name(&wanted) {
                    Ok(label) => names.wanted = format!("{label}.local"),
                    Err(_) => continue,
                }
                if in_use.is_none() {
                    names.in_use = names.wanted.clone();
                }
            }
            changed = async {
                match in_use.as_mut() {
                    Some(rx) => rx.changed().await,
                    None => std::future::pending().await,
                }
            } => {
                match (changed, in_use.as_mut()) {
                    (Ok(()), Some(rx)) => names.in_use = rx.borrow_and_update().clone(),
                    _ => in_use = None,
                }
            }
            _ = poll.tick() => {
                match addrs::local_addresses() {
                    Ok(now) if now != names.addrs => names.addrs = now,
                    _ => continue,
                }
            }
            _ = crate::stopped(&mut shutdown) => return,
        }
        names.publish(&hosts);
        if let Some(id) = &identity {
            let id = id.clone();
            let wanted = names.certificate_names();
            match tokio::task::spawn_blocking(move || id.ensure_names(&wanted)).await {
                Ok(Ok(true)) => {
                    log::info!("HTTPS: reissued the server certificate for the new names")
                }
                Ok(Ok(false)) => {}
                Ok(Err(e)) => {
                    log::error!(error:% = e; "HTTPS: cannot reissue the server certificate")
                }
                Err(e) => log::error!(error:% = e; "HTTPS: certificate task failed"),
            }
        }
    }
}
