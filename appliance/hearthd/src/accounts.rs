//! Secrets and the rules around them: password hashing (argon2id), session and API-token
//! generation (random, stored only as SHA-256), the setup code, and login throttling.
//! Nothing here touches HTTP; the API layer calls in.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngExt as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Errors of the account layer; each names the file involved.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("cannot hash the password: {0}")]
    Hash(String),
    #[error("cannot read or write the setup code file {path}: {source}")]
    SetupCode {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Hashes a password with argon2id and a fresh salt into a PHC string. Slow on purpose
/// (tens of milliseconds): call it off the async threads.
pub fn hash_password(password: &str) -> Result<String, AccountError> {
    let salt_bytes: [u8; 16] = rand::rng().random();
    let salt =
        SaltString::encode_b64(&salt_bytes).map_err(|e| AccountError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AccountError::Hash(e.to_string()))
}

/// True when `password` matches the PHC string. A malformed stored hash never matches.
pub fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc)
        .map(|hash| {
            Argon2::default()
                .verify_password(password.as_bytes(), &hash)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A hash to verify against when the name is unknown, so that a wrong name takes as long
/// as a wrong password and does not reveal which names exist.
pub fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_password("decoy password that matches nothing").unwrap_or_default())
}

/// 32 random bytes, base64url: session ids, CSRF tokens and API token secrets.
pub fn random_secret() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A new API token as shown to its owner once: `hearth_` + 43 characters.
pub fn new_api_token() -> String {
    format!("hearth_{}", random_secret())
}

/// The SHA-256 of a secret, hex: what the database keeps instead of the secret.
pub fn secret_hash(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Constant-time equality for secrets and their hashes.
pub fn secrets_equal(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Checks a display name: 1–64 characters, no control characters, not only spaces.
pub fn valid_name(name: &str) -> Result<(), &'static str> {
    let n = name.chars().count();
    if n == 0 || n > 64 || name.trim().is_empty() {
        return Err("a name is 1 to 64 characters");
    }
    if name.chars().any(char::is_control) || name != name.trim() {
        return Err("a name has no control characters and no leading or trailing spaces");
    }
    Ok(())
}

pub const MIN_PASSWORD_CHARS: usize = 8;
pub const MAX_PASSWORD_BYTES: usize = 1024;

pub fn valid_password(password: &str) -> Result<(), &'static str> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err("a password is at least 8 characters");
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err("a password is at most 1024 bytes");
    }
    Ok(())
}

/// The alphabet of setup codes: no 0/O, 1/I/L, so it reads unambiguously off a label.
const CODE_ALPHABET: &[u8] = b"23456789ABCDEFGHJKMNPQRSTUVWXYZ";

/// Reads the setup code from `path`, or creates one there (0600, durably) when the file is
/// missing. Returns the normalized code and whether it was created now.
pub fn load_or_create_setup_code(path: &Path) -> Result<(String, bool), AccountError> {
    let err = |source| AccountError::SetupCode {
        path: path.to_owned(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(text) if !normalize_code(&text).is_empty() => return Ok((normalize_code(&text), false)),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let mut rng = rand::rng();
    let code: String = (0..12)
        .map(|i| {
            let c = CODE_ALPHABET[rng.random_range(0..CODE_ALPHABET.len())] as char;
            if i > 0 && i % 4 == 0 {
                format!("-{c}")
            } else {
                c.to_string()
            }
        })
        .collect();
    crate::durable::write_file(path, format!("{code}\n").as_bytes(), 0o600).map_err(err)?;
    Ok((normalize_code(&code), true))
}

/// Upper case, without spaces and dashes: how a person may type the code.
pub fn normalize_code(code: &str) -> String {
    code.chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// Throttles failed logins with exponential backoff, per account *as tried from one client
/// address* and per client address. The first few failures are free; later ones make the next
/// attempt wait, doubling up to a cap. Keying the account by address means a stranger
/// hammering the owner's name slows only themself: the owner, from their own phone, still
/// gets in at once. Nobody is ever locked out for good, and a success clears the record.
#[derive(Debug)]
pub struct LoginThrottle {
    entries: Mutex<HashMap<ThrottleKey, Failures>>,
    free_attempts: u32,
    max_wait: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ThrottleKey {
    /// A name (lowercased) tried from an address (`None` when the server did not record it).
    Account(String, Option<IpAddr>),
    /// Everything tried from an address, whatever the name; allowed 4x the free attempts.
    Address(IpAddr),
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    blocked_until: Instant,
    last: Instant,
}

impl Default for LoginThrottle {
    fn default() -> Self {
        Self::new(5, Duration::from_secs(300))
    }
}

impl LoginThrottle {
    pub fn new(free_attempts: u32, max_wait: Duration) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            free_attempts,
            max_wait,
        }
    }

    /// How long the caller must wait before trying again, if at all.
    pub fn wait(&self, keys: &[ThrottleKey], now: Instant) -> Option<Duration> {
        let entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        keys.iter()
            .filter_map(|k| entries.get(k))
            .filter_map(|f| f.blocked_until.checked_duration_since(now))
            .filter(|d| !d.is_zero())
            .max()
    }

    pub fn failed(&self, keys: &[ThrottleKey], now: Instant) {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Forget what is old, so the map cannot grow without bound under a spray of names.
        let horizon = self.max_wait * 4;
        entries.retain(|_, f| now.saturating_duration_since(f.last) < horizon);
        if entries.len() > 10_000 {
            entries.clear();
        }
        for key in keys {
            let f = entries.entry(key.clone()).or_insert(Failures {
                count: 0,
                blocked_until: now,
                last: now,
            });
            f.count = f.count.saturating_add(1);
            f.last = now;
            let free = match key {
                ThrottleKey::Account(..) => self.free_attempts,
                ThrottleKey::Address(_) => self.free_attempts * 4,
            };
            if f.count >= free {
                let doublings = (f.count - free).min(16);
                let wait = Duration::from_secs(1u64 << doublings).min(self.max_wait);
                f.blocked_until = now + wait;
            }
        }
    }

    pub fn succeeded(&self, account: &ThrottleKey) {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        entries.remove(account);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_and_verify() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("correct horsE", &h));
        assert!(!verify_password("x", "not a phc string"));
        assert_ne!(h, hash_password("correct horse").unwrap(), "salted");
    }

    #[test]
    fn tokens_are_random_and_hashes_compare() {
        let t = new_api_token();
        assert_eq!(t.len(), "hearth_".len() + 43);
        assert_ne!(t, new_api_token());
        let h = secret_hash(&t);
        assert_eq!(h.len(), 64);
        assert!(secrets_equal(&h, &secret_hash(&t)));
        assert!(!secrets_equal(&h, &secret_hash("other")));
        assert!(!secrets_equal("a", "ab"));
    }

    #[test]
    fn names_and_passwords_are_checked() {
        assert!(valid_name("Ana María").is_ok());
        assert!(valid_name("").is_err());
        assert!(valid_name(" ana").is_err());
        assert!(valid_name("a\u{0}b").is_err());
        assert!(valid_name(&"x".repeat(65)).is_err());
        assert!(valid_password("1234567").is_err());
        assert!(valid_password("12345678").is_ok());
        assert!(valid_password(&"x".repeat(2000)).is_err());
    }

    #[test]
    fn setup_code_is_created_once_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("setup-code");
        let (code, created) = load_or_create_setup_code(&path).unwrap();
        assert!(created);
        assert_eq!(code.len(), 12);
        let (again, created) = load_or_create_setup_code(&path).unwrap();
        assert!(!created);
        assert_eq!(code, again);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(normalize_code(" abcd-efgh "), "ABCDEFGH");
    }

    #[test]
    fn throttle_backs_off_and_forgives() {
        let t = LoginThrottle::new(3, Duration::from_secs(60));
        let keys = [ThrottleKey::Account("ana".into(), None)];
        let now = Instant::now();
        for _ in 0..2 {
            t.failed(&keys, now);
        }
        assert_eq!(t.wait(&keys, now), None, "the first failures are free");
        t.failed(&keys, now);
        assert_eq!(t.wait(&keys, now), Some(Duration::from_secs(1)));
        for _ in 0..20 {
            t.failed(&keys, now);
        }
        assert_eq!(
            t.wait(&keys, now),
            Some(Duration::from_secs(60)),
            "capped, never permanent"
        );
        assert_eq!(t.wait(&keys, now + Duration::from_secs(61)), None);
        t.succeeded(&keys[0]);
        assert_eq!(t.wait(&keys, now), None);
    }
}
