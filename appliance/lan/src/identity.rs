//! The device identity: a small certificate authority that lives on the box, and the server
//! certificate it issues for the box's names.
//!
//! Files under the TLS directory (`<data_dir>/tls/` by default), each written durably (temp
//! file, fsync, rename, fsync the directory), keys with mode 0600:
//!
//! - `ca.key`, `ca.crt` — the device CA (ECDSA P-256, PEM). Created once, at first start, and
//!   kept for the life of the data partition. Its SHA-256 fingerprint is *the* fingerprint:
//!   logged at every start, shown on `/certificate`, printed on the label. A person installs
//!   this certificate once; it never changes when the box's names or addresses do.
//!   It is name-constrained to `.local`, `localhost`, the configured extra names, and
//!   private/loopback/link-local addresses, so even a stolen CA key cannot impersonate
//!   other sites to people who trusted it.
//! - `ca.names` — the extra DNS names (configured `host_names`) the CA was created to permit.
//! - `server.key`, `server.crt`, `server.names` — the TLS server certificate, signed by the
//!   CA, and the list of names it covers (plus the CA fingerprint and its expiry).
//!
//! Reissue rule (kept simple on purpose): the server certificate is reissued, with a new key,
//! for exactly the names asked for, whenever one of them is not covered, the certificate is
//! missing or unreadable, it was issued by another CA, or it expires within 30 days. Names it
//! covers but that are no longer asked for do not cause a reissue. Reissuing never changes
//! the fingerprint people compare. Names the CA may not vouch for (a public address, a host
//! name configured after the CA was made) are left out of the certificate with a warning,
//! because one such name would make clients refuse the whole certificate. A corrupt CA key is moved aside (`ca.key.corrupt`) and a
//! new CA is created, loudly: the box must come up, and the old fingerprint is no longer
//! trustworthy anyway.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    NameConstraints, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};

use crate::Error;

/// How long a server certificate is valid. Apple platforms refuse server certificates valid
/// for more than 398 days, even under a user-installed CA.
const LEAF_DAYS: u64 = 397;
/// Reissue the server certificate when it has less than this left.
const LEAF_RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Boards without a battery-backed clock boot in 1970; certificates issued then would not be
/// valid yet on the phones that check them. Earlier clocks are treated as this date
/// (2026-01-01T00:00:00Z).
const EARLIEST_SANE_TIME: u64 = 1_767_225_600;

/// The names a server certificate must cover: DNS names (lowercase) and IP addresses.
pub type Names = BTreeSet<String>;

/// The certificate names for a box called `box_names` (host names such as `hearth.local`)
/// reachable at `addrs`: those names, `localhost`, and every address.
pub fn certificate_names<'a>(
    box_names: impl IntoIterator<Item = &'a str>,
    addrs: &[IpAddr],
) -> Names {
    let mut names: Names = box_names
        .into_iter()
        .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect();
    names.insert("localhost".into());
    names.extend(addrs.iter().map(IpAddr::to_string));
    names
}

/// The device CA and the server certificate it issued; hands the current certificate to
/// rustls (it is a [`ResolvesServerCert`]) and can reissue it while connections are served.
#[derive(Debug)]
pub struct DeviceIdentity {
    dir: PathBuf,
    ca_key: KeyPair,
    ca_params: CertificateParams,
    ca_der: CertificateDer<'static>,
    ca_pem: String,
    fingerprint: String,
    /// DNS names outside `.local`/`localhost` the CA may vouch for (fixed at its creation).
    permitted_extra: Vec<String>,
    leaf: RwLock<Leaf>,
}

#[derive(Debug, Clone)]
struct Leaf {
    certified: Arc<CertifiedKey>,
    names: Names,
    not_after: u64,
    fingerprint: String,
}

impl DeviceIdentity {
    /// Loads the identity from `dir`, creating the CA at first start and (re)issuing the server
    /// certificate when it does not cover `names`. `extra_permitted` are DNS names outside
    /// `.local` the CA may certify (the configured alternative names); they are fixed when
    /// the CA is created. Blocking file I/O: call from `spawn_blocking` in async code.
    pub fn load_or_create(
        dir: &Path,
        names: &Names,
        extra_permitted: &[String],
    ) -> Result<Self, Error> {
        create_private_dir(dir)?;
        let (ca_key, ca_params, ca_der, permitted_extra) = load_or_create_ca(dir, extra_permitted)?;
        let ca_pem = pem_encode("CERTIFICATE", &ca_der);
        let fingerprint = fingerprint(&ca_der);
        let names = &coverable(names, &permitted_extra);
        let leaf = match load_leaf(dir, &ca_der, &fingerprint) {
            Ok(Some(leaf)) if leaf_is_good(&leaf, names) => leaf,
            Ok(_) => issue_leaf(dir, &ca_key, &ca_params, &ca_der, &fingerprint, names)?,
            Err(e) => {
                log::warn!(error:% = e; "server certificate unreadable; issuing a new one");
                issue_leaf(dir, &ca_key, &ca_params, &ca_der, &fingerprint, names)?
            }
        };
        Ok(Self {
            dir: dir.to_owned(),
            ca_key,
            ca_params,
            ca_der,
            ca_pem,
            fingerprint,
            permitted_extra,
            leaf: RwLock::new(leaf),
        })
    }

    /// The SHA-256 fingerprint of the device CA certificate (DER), as `AB:CD:...`.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The device CA certificate, DER: what `/certificate.crt` offers for download.
    pub fn ca_der(&self) -> &[u8] {
        &self.ca_der
    }

    /// The device CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The path of the CA certificate file (PEM), for `curl --cacert` and friends.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// The names the current server certificate covers.
    pub fn server_names(&self) -> Names {
        self.read_leaf().names
    }

    /// The SHA-256 fingerprint of the current server certificate (changes on reissue).
    pub fn server_fingerprint(&self) -> String {
        self.read_leaf().fingerprint
    }

    /// Reissues the server certificate if it does not cover `names` (or is about to expire);
    /// connections made afterwards get the new one. Returns whether it reissued.
    /// Blocking file I/O: call from `spawn_blocking` in async code.
    pub fn ensure_names(&self, names: &Names) -> Result<bool, Error> {
        let names = &coverable(names, &self.permitted_extra);
        if leaf_is_good(&self.read_leaf(), names) {
            return Ok(false);
        }
        let leaf = issue_leaf(
            &self.dir,
            &self.ca_key,
            &self.ca_params,
            &self.ca_der,
            &self.fingerprint,
            names,
        )?;
        *self.leaf.write().unwrap_or_else(|e| e.into_inner()) = leaf;
        Ok(true)
    }

    /// A rustls server configuration (HTTP/1.1 over TLS 1.2/1.3, ring) that always presents
    /// the current server certificate and the CA.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, Error> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(Error::Tls)?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    fn read_leaf(&self) -> Leaf {
        self.leaf.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl ResolvesServerCert for DeviceIdentity {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.read_leaf().certified)
    }
}

pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// `AB:CD:...`: the SHA-256 of `der`, as browsers and `openssl x509 -fingerprint` show it.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = Sha256::digest(der);
    let mut out = String::with_capacity(digest.len() * 3);
    for (i, b) in digest.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        let _ = write!(out, "{b:02X}");
    }
    out
}

/// Networks the device CA may vouch for: private, loopback, link-local and shared (CGNAT)
/// addresses. A server certificate naming any other address would be refused as a whole.
const PERMITTED_NETS: [(&str, u8); 9] = [
    ("10.0.0.0", 8),
    ("172.16.0.0", 12),
    ("192.168.0.0", 16),
    ("127.0.0.0", 8),
    ("169.254.0.0", 16),
    ("100.64.0.0", 10),
    ("::1", 128),
    ("fc00::", 7),
    ("fe80::", 10),
];

fn in_net(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// Whether the device CA (created with `permitted_extra`) may vouch for `name`. A name it may
/// not vouch for would make clients refuse the whole certificate, so such names are left out.
pub fn ca_may_certify(name: &str, permitted_extra: &[String]) -> bool {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return PERMITTED_NETS.iter().any(|(net, prefix)| {
            net.parse::<IpAddr>()
                .is_ok_and(|net| in_net(ip, net, *prefix))
        });
    }
    let under = |base: &str| name == base || name.ends_with(&format!(".{base}"));
    under("local") || under("localhost") || permitted_extra.iter().any(|e| under(e))
}

fn coverable(names: &Names, permitted_extra: &[String]) -> Names {
    let (ok, left_out): (Names, Names) = names
        .iter()
        .cloned()
        .partition(|n| ca_may_certify(n, permitted_extra));
    if !left_out.is_empty() {
        log::warn!(names:? = left_out;
            "these names are not in the server certificate: the device CA may not vouch for them (for a new host name, remove the tls directory to create a new CA)");
    }
    ok
}

fn leaf_is_good(leaf: &Leaf, names: &Names) -> bool {
    let renew_at = leaf.not_after.saturating_sub(LEAF_RENEW_BEFORE.as_secs());
    names.is_subset(&leaf.names) && now_secs() < renew_at
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The CA's parameters, derived only from its key and the permitted names, so that a CA loaded
/// from disk issues certificates whose issuer name and key identifier match its certificate.
fn ca_params(key: &KeyPair, extra_permitted: &[String]) -> CertificateParams {
    let mut params = CertificateParams::default();
    let id = fingerprint(key.public_key_raw());
    let short: String = id.chars().filter(|c| *c != ':').take(8).collect();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Hearth");
    dn.push(DnType::CommonName, format!("Hearth box {short}"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = rcgen::date_time_ymd(2025, 1, 1);
    params.not_after = rcgen::date_time_ymd(2125, 1, 1);
    let mut permitted = vec![
        GeneralSubtree::DnsName("local".into()),
        GeneralSubtree::DnsName("localhost".into()),
    ];
    permitted.extend(
        extra_permitted
            .iter()
            .map(|n| GeneralSubtree::DnsName(n.clone())),
    );
    for (addr, prefix) in PERMITTED_NETS {
        if let Ok(ip) = addr.parse::<IpAddr>() {
            permitted.push(GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(
                ip, prefix,
            )));
        }
    }
    params.name_constraints = Some(NameConstraints {
        permitted_subtrees: permitted,
        excluded_subtrees: Vec::new(),
    });
    params
}

type Ca = (
    KeyPair,
    CertificateParams,
    CertificateDer<'static>,
    Vec<String>,
);

/// `ca.names`: the extra DNS names the CA was created to permit, one a line.
fn read_permitted(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("ca.names"))
        .map(|t| {
            t.lines()
                .map(str::to_owned)
                .filter(|l| !l.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

fn load_or_create_ca(dir: &Path, extra_permitted: &[String]) -> Result<Ca, Error> {
    let key_path = dir.join("ca.key");
    let cert_path = dir.join("ca.crt");
    let key = match std::fs::read_to_string(&key_path) {
        Ok(text) => match KeyPair::from_pem(&text) {
            Ok(key) => Some(key),
            Err(e) => {
                let aside = dir.join("ca.key.corrupt");
                log::error!(path:? = key_path, error:% = e;
                    "the device CA key is corrupt; moving it aside and creating a new CA (the certificate fingerprint changes)");
                std::fs::rename(&key_path, &aside).map_err(|source| Error::Write {
                    path: aside,
                    source,
                })?;
                None
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(Error::Read {
                path: key_path,
                source,
            });
        }
    };
    if let Some(key) = key {
        let permitted = read_permitted(dir);
        let params = ca_params(&key, &permitted);
        match read_cert(&cert_path) {
            Ok(der) => return Ok((key, params, der, permitted)),
            Err(e) => {
                log::warn!(error:% = e; "device CA certificate unreadable; re-creating it from its key (the fingerprint changes)");
                let der = params
                    .self_signed(&key)
                    .map_err(|source| Error::Certificate {
                        names: vec!["device CA".into()],
                        source,
                    })?
                    .der()
                    .clone();
                write_durably(
                    &cert_path,
                    pem_encode("CERTIFICATE", &der).as_bytes(),
                    0o644,
                )?;
                return Ok((key, params, der, permitted));
            }
        }
    }
    let key = KeyPair::generate().map_err(|source| Error::Certificate {
        names: vec!["device CA".into()],
        source,
    })?;
    let permitted: Vec<String> = extra_permitted
        .iter()
        .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect();
    let params = ca_params(&key, &permitted);
    let der = params
        .self_signed(&key)
        .map_err(|source| Error::Certificate {
            names: vec!["device CA".into()],
            source,
        })?
        .der()
        .clone();
    // The names and key first: a crash after them leaves a key whose certificate is
    // re-created above with the same constraints.
    let mut list = String::new();
    for n in &permitted {
        let _ = writeln!(list, "{n}");
    }
    write_durably(&dir.join("ca.names"), list.as_bytes(), 0o644)?;
    write_durably(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_durably(
        &cert_path,
        pem_encode("CERTIFICATE", &der).as_bytes(),
        0o644,
    )?;
    // A new CA invalidates any server certificate the old one issued.
    let _ = std::fs::remove_file(dir.join("server.names"));
    log::info!(path:? = cert_path, fingerprint:% = fingerprint(&der); "created the device certificate authority");
    Ok((key, params, der, permitted))
}

fn read_cert(path: &Path) -> Result<CertificateDer<'static>, Error> {
    let bytes = std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    CertificateDer::from_pem_slice(&bytes).map_err(|e| Error::BadFile {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// `server.names`: `ca <fingerprint>`, `not_after <unix seconds>`, then `name <san>` lines.
fn load_leaf(
    dir: &Path,
    ca_der: &CertificateDer<'static>,
    ca_fp: &str,
) -> Result<Option<Leaf>, Error> {
    let names_path = dir.join("server.names");
    let text = match std::fs::read_to_string(&names_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(Error::Read {
                path: names_path,
                source,
            });
        }
    };
    let mut names = Names::new();
    let mut not_after = None;
    let mut issuer = None;
    for line in text.lines() {
        match line.split_once(' ') {
            Some(("ca", fp)) => issuer = Some(fp.to_owned()),
            Some(("not_after", t)) => not_after = t.parse::<u64>().ok(),
            Some(("name", n)) => {
                names.insert(n.to_owned());
            }
            _ => {}
        }
    }
    let (Some(not_after), Some(issuer)) = (not_after, issuer) else {
        return Err(Error::BadFile {
            path: names_path,
            message: "missing ca or not_after line".into(),
        });
    };
    if issuer != ca_fp {
        return Ok(None);
    }
    let cert = read_cert(&dir.join("server.crt"))?;
    let key_path = dir.join("server.key");
    let key = std::fs::read(&key_path).map_err(|source| Error::Read {
        path: key_path.clone(),
        source,
    })?;
    let key = PrivateKeyDer::from_pem_slice(&key).map_err(|e| Error::BadFile {
        path: key_path.clone(),
        message: e.to_string(),
    })?;
    let fingerprint = fingerprint(&cert);
    let certified = certified_key(cert, ca_der.clone(), key, &key_path)?;
    Ok(Some(Leaf {
        certified,
        names,
        not_after,
        fingerprint,
    }))
}

fn certified_key(
    cert: CertificateDer<'static>,
    ca: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    key_path: &Path,
) -> Result<Arc<CertifiedKey>, Error> {
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| Error::BadFile {
            path: key_path.to_owned(),
            message: e.to_string(),
        })?;
    Ok(Arc::new(CertifiedKey::new(vec![cert, ca], signing)))
}

fn issue_leaf(
    dir: &Path,
    ca_key: &KeyPair,
    ca_params: &CertificateParams,
    ca_der: &CertificateDer<'static>,
    ca_fp: &str,
    names: &Names,
) -> Result<Leaf, Error> {
    let cert_err = |source| Error::Certificate {
        names: names.iter().cloned().collect(),
        source,
    };
    let key = KeyPair::generate().map_err(cert_err)?;
    let start = now_secs().max(EARLIEST_SANE_TIME) - 24 * 3600;
    let not_after = start + LEAF_DAYS * 24 * 3600;
    let mut params = CertificateParams::default();
    let first = names.iter().find(|n| n.parse::<IpAddr>().is_err());
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, first.map_or("hearth", String::as_str));
    params.distinguished_name = dn;
    params.subject_alt_names = names
        .iter()
        .map(|n| match n.parse::<IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => Ok(SanType::DnsName(n.clone().try_into()?)),
        })
        .collect::<Result<_, rcgen::Error>>()
        .map_err(cert_err)?;
    params.not_before = to_datetime(start);
    params.not_after = to_datetime(not_after);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let issuer = Issuer::from_params(ca_params, ca_key);
    let cert = params.signed_by(&key, &issuer).map_err(cert_err)?;
    let der = cert.der().clone();

    write_durably(
        &dir.join("server.key"),
        key.serialize_pem().as_bytes(),
        0o600,
    )?;
    write_durably(&dir.join("server.crt"), cert.pem().as_bytes(), 0o644)?;
    let mut list = format!("ca {ca_fp}\nnot_after {not_after}\n");
    for n in names {
        let _ = writeln!(list, "name {n}");
    }
    // Written last: a crash before this leaves the old list, which no longer matches, so the
    // next start reissues.
    write_durably(&dir.join("server.names"), list.as_bytes(), 0o644)?;

    let key_path = dir.join("server.key");
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let fingerprint = fingerprint(&der);
    let certified = certified_key(der, ca_der.clone(), key_der, &key_path)?;
    log::info!(names:? = names, fingerprint:% = fingerprint; "issued the server certificate");
    Ok(Leaf {
        certified,
        names: names.clone(),
        not_after,
        fingerprint,
    })
}

fn to_datetime(unix: u64) -> time::OffsetDateTime {
    let secs = i64::try_from(unix).unwrap_or(i64::MAX);
    time::OffsetDateTime::from_unix_timestamp(secs)
        .unwrap_or_else(|_| rcgen::date_time_ymd(2026, 1, 1))
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len() * 4 / 3 + 4);
    for chunk in der.chunks(3) {
        let n = match chunk.len() {
            3 => (u32::from(chunk[0]) << 16) | (u32::from(chunk[1]) << 8) | u32::from(chunk[2]),
            2 => (u32::from(chunk[0]) << 16) | (u32::from(chunk[1]) << 8),
            _ => u32::from(chunk[0]) << 16,
        };
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(char::from(TABLE[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    let _ = writeln!(out, "-----END {label}-----");
    out
}

fn create_private_dir(dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| Error::Write {
            path: dir.to_owned(),
            source,
        })
}

/// Temp file, fsync, rename over `path`, fsync the directory. The temp file is created with
/// `mode` from the start, so a key is never readable by others, not even briefly.
pub(crate) fn write_durably(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Error> {
    let err = |source| Error::Write {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(err)?;
    file.write_all(bytes).map_err(err)?;
    file.sync_all().map_err(err)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(err)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_ca_may_certify() {
        let extra = ["ai.clinic.example".to_owned()];
        let table = [
            ("hearth.local", true),
            ("hearth-2.local", true),
            ("localhost", true),
            ("a.localhost", true),
            ("ai.clinic.example", true),
            ("x.ai.clinic.example", true),
            ("clinic.example", false),
            ("evilai.clinic.example", false),
            ("notlocal", false),
            ("bank.example", false),
            ("10.0.0.5", true),
            ("172.31.255.1", true),
            ("172.32.0.1", false),
            ("192.168.1.20", true),
            ("127.0.0.1", true),
            ("100.64.1.1", true),
            ("192.0.2.2", false),
            ("8.8.8.8", false),
            ("::1", true),
            ("fd00::2", true),
            ("fe80::1", true),
            ("2001:db8::1", false),
        ];
        for (name, want) in table {
            assert_eq!(ca_may_certify(name, &extra), want, "{name}");
        }
    }
}
