//! Validation of everything a request names: model names, digests, ids. All checks run before
//! any path is built; no path is ever made from a request's text.

use std::fmt;

use crate::error::{Result, StoreError};

/// Longest model name.
pub const MAX_NAME_LEN: usize = 64;

/// Checks a model name: 1–64 of `A-Z a-z 0-9 . _ -`, not starting with `.`.
/// That rules out `..`, `/`, `\`, NUL, `%`-escapes and absolute paths in one rule.
pub fn validate_name(name: &str) -> Result<()> {
    let bad = |reason| {
        Err(StoreError::InvalidName {
            name: name.chars().take(80).collect(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("it is longer than 64 characters");
    }
    if name.starts_with('.') {
        return bad("it starts with a dot");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return bad("only letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

/// A default model name from an uploaded file's name: the stem, with anything outside the
/// allowed alphabet replaced by `-`. Refuses names that try to be paths.
pub fn name_from_filename(filename: &str) -> Result<String> {
    let bad = |reason| {
        Err(StoreError::InvalidName {
            name: filename.chars().take(80).collect(),
            reason,
        })
    };
    if filename.contains(['/', '\\', '\0']) || filename.contains("..") {
        return bad("a file name may not contain '/', '\\', NUL or '..'");
    }
    let stem = filename
        .strip_suffix(".gguf")
        .or_else(|| filename.strip_suffix(".GGUF"))
        .unwrap_or(filename);
    let mut name: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(MAX_NAME_LEN)
        .collect();
    while name.starts_with('.') {
        name.remove(0);
    }
    validate_name(&name)?;
    Ok(name)
}

/// A SHA-256 digest, written `sha256-<64 lowercase hex>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// Parses `sha256-<64 lowercase hex>`; anything else is refused before the disk is touched.
    pub fn parse(text: &str) -> Result<Self> {
        let bad = || StoreError::InvalidDigest {
            digest: text.chars().take(80).collect(),
        };
        let hex = text.strip_prefix("sha256-").ok_or_else(bad)?;
        if hex.len() != 64 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, pair) in hex.as_bytes().chunks_exact(2).enumerate() {
            let hi = hex_value(pair[0]).ok_or_else(bad)?;
            let lo = hex_value(pair[1]).ok_or_else(bad)?;
            out[i] = hi << 4 | lo;
        }
        Ok(Self(out))
    }

    /// The blob's file name inside `models/blobs/`.
    pub fn file_name(&self) -> String {
        self.to_string()
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256-")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A random 128-bit id as 32 lowercase hex digits (uploads, imports).
pub fn new_id() -> String {
    let mut bytes = [0u8; 16];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .is_err()
    {
        // Not secret, only unique: fall back to the clock and a counter.
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default();
        bytes[..8].copy_from_slice(&now.to_le_bytes());
        bytes[8..].copy_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks an id from a request: exactly 32 lowercase hex digits.
pub fn validate_id(id: &str) -> Result<()> {
    if id.len() == 32 && id.bytes().all(|b| hex_value(b).is_some()) {
        Ok(())
    } else {
        Err(StoreError::InvalidId {
            id: id.chars().take(80).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traversal_and_hostile_names_are_refused() {
        for name in [
            "",
            ".",
            "..",
            "../etc/passwd",
            "..\\windows",
            "a/b",
            "a\\b",
            "/abs",
            "%2e%2e",
            "%252e%252e",
            "%2e%2e%2fx",
            "nul\0byte",
            ".hidden",
            "a b",
            "é",
            &"x".repeat(65),
        ] {
            assert!(validate_name(name).is_err(), "{name:?} was accepted");
        }
        for name in [
            "SmolLM2-135M-Instruct.Q4_1",
            "qwen2.5",
            "a",
            &"x".repeat(64),
        ] {
            validate_name(name).unwrap();
        }
    }

    #[test]
    fn file_names_become_model_names_or_are_refused() {
        assert_eq!(
            name_from_filename("SmolLM2 135M (Q4).gguf").unwrap(),
            "SmolLM2-135M--Q4-"
        );
        assert_eq!(name_from_filename(".x.gguf").unwrap(), "x");
        for f in [
            "../x.gguf",
            "a/b.gguf",
            "a\\b.gguf",
            "/x.gguf",
            "x\0.gguf",
            ".gguf",
            "%%",
        ] {
            // "%%" becomes "--", which is fine; the others must fail.
            if f == "%%" {
                assert_eq!(name_from_filename(f).unwrap(), "--");
            } else {
                assert!(name_from_filename(f).is_err(), "{f:?} was accepted");
            }
        }
    }

    #[test]
    fn digests_must_be_exact() {
        let good = format!("sha256-{}", "ab".repeat(32));
        assert_eq!(Digest::parse(&good).unwrap().to_string(), good);
        for bad in [
            String::new(),
            "sha256-".into(),
            format!("sha256-{}", "ab".repeat(31)),
            format!("sha256-{}", "ab".repeat(33)),
            format!("sha256-{}", "AB".repeat(32)),
            format!("sha256-{}g", "a".repeat(63)),
            format!("sha512-{}", "ab".repeat(32)),
            format!("sha256:{}", "ab".repeat(32)),
            format!("sha256-../{}", "a".repeat(61)),
            format!("sha256-{}\0", "a".repeat(63)),
            format!("sha256-{}é", "a".repeat(62)),
        ] {
            assert!(Digest::parse(&bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn ids_are_32_hex() {
        let id = new_id();
        validate_id(&id).unwrap();
        assert_ne!(id, new_id());
        for bad in [
            "",
            "../x",
            &"A".repeat(32),
            &"a".repeat(31),
            &"a".repeat(33),
        ] {
            assert!(validate_id(bad).is_err());
        }
    }
}
