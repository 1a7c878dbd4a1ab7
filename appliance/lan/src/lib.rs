//! `hearth-lan`: how the box meets its local network — its device certificate, HTTPS, the
//! plain-HTTP redirect and certificate page, and mDNS (`hearth.local`).
//!
//! - [`identity`]: a device CA created at first start under `<data_dir>/tls/` and the server
//!   certificate it issues for the box's names and addresses (reissued when they change; the
//!   CA, and so the fingerprint people compare, stays).
//! - [`https`]: serves an axum `Router` over rustls with handshake and header timeouts, a
//!   connection cap and graceful shutdown.
//! - [`web`]: the plain-HTTP router (308 to HTTPS, except `/certificate`, `/certificate.crt`,
//!   `/healthz`) and the certificate page.
//! - [`mdns`]: answers as `<name>.local`, advertises `_https._tcp` and `_hearth._tcp`, moves to
//!   `<name>-2.local` on a conflict and says so on a watch channel.
//! - [`addrs`]: the box's own IP addresses.
//! - [`service`]: all of the above started together for `hearthd`, plus a follower that keeps
//!   the Host allowlist and the certificate in step with the box's names and addresses.
//!
//! It must never: download anything, log or serve private keys, write a key with permissions
//! wider than 0600, or panic on what a client sends. It knows nothing about accounts, the
//! database or models; `hearthd` wires it in.
//!
//! Current limits: HTTP/1.1 only (no h2); addresses are re-read every minute, so a new DHCP
//! address is in the certificate within a minute; mDNS conflicts are resolved per interface by
//! `mdns-sd`, and the last renamed interface's name is published; names are added to the
//! allowlist while running, never removed (until restart).

pub mod addrs;
pub mod https;
pub mod identity;
pub mod mdns;
pub mod service;
pub mod web;

use std::net::SocketAddr;
use std::path::PathBuf;

pub use addrs::{host_form, local_addresses};
pub use https::{HttpsOptions, OverHttps, bind, serve_http, serve_https};
pub use identity::{DeviceIdentity, Names, certificate_names, fingerprint};
pub use mdns::{MdnsConfig, validate_box_name};
pub use service::{Lan, LanConfig, SharedHosts};
pub use web::{certificate_routes, http_redirect_router, request_host};

/// hearth-lan's errors; each names the file, address or name involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid key or certificate: {message}")]
    BadFile { path: PathBuf, message: String },
    #[error("cannot create a certificate for {names:?}: {source}")]
    Certificate {
        names: Vec<String>,
        #[source]
        source: rcgen::Error,
    },
    #[error("TLS configuration: {0}")]
    Tls(#[source] rustls::Error),
    #[error("cannot list the network interfaces: {0}")]
    Interfaces(#[source] nix::Error),
    #[error("cannot listen on {addr:?}: {source}")]
    Accept {
        addr: Option<SocketAddr>,
        #[source]
        source: std::io::Error,
    },
    #[error("mDNS: {0}")]
    Mdns(#[source] mdns_sd::Error),
    #[error("'{name}' cannot be the box's name: {reason}")]
    BoxName { name: String, reason: &'static str },
}

/// Resolves once `shutdown` is true (or its sender is gone).
pub(crate) async fn stopped(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}
