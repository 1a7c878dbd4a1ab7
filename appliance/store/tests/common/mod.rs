//! Shared helpers: a tiny but valid llama GGUF built by hand, and store setup.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use hearth_store::{MemorySource, Store, StoreConfig};

fn string(s: &str) -> Vec<u8> {
    let mut v = (s.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(s.as_bytes());
    v
}

/// A llama GGUF with the metadata the store reads and one f32 tensor of `floats` values
/// (`seed` makes the bytes, and so the digest, differ).
pub fn tiny_gguf(floats: usize, seed: u8) -> Vec<u8> {
    let mut kvs = Vec::new();
    let mut n_kv = 0u64;
    let mut kv = |key: &str, ty: u32, value: Vec<u8>| {
        kvs.extend(string(key));
        kvs.extend(ty.to_le_bytes());
        kvs.extend(value);
        n_kv += 1;
    };
    kv("general.architecture", 8, string("llama"));
    kv("general.license", 8, string("apache-2.0"));
    kv("llama.context_length", 4, 2048u32.to_le_bytes().to_vec());
    kv("llama.block_count", 4, 2u32.to_le_bytes().to_vec());
    kv("llama.attention.head_count", 4, 4u32.to_le_bytes().to_vec());
    kv(
        "llama.attention.head_count_kv",
        4,
        2u32.to_le_bytes().to_vec(),
    );
    kv("llama.embedding_length", 4, 64u32.to_le_bytes().to_vec());
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(1u64.to_le_bytes());
    b.extend(n_kv.to_le_bytes());
    b.extend(kvs);
    b.extend(string("w"));
    b.extend(1u32.to_le_bytes());
    b.extend((floats as u64).to_le_bytes());
    b.extend(0u32.to_le_bytes()); // F32
    b.extend(0u64.to_le_bytes()); // offset
    while b.len() % 32 != 0 {
        b.push(0);
    }
    b.extend((0..floats * 4).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
    b
}

pub fn config(root: &Path) -> StoreConfig {
    StoreConfig {
        root: root.to_owned(),
        max_context: Some(512),
        memory: MemorySource {
            cgroup: None,
            fixed: Some(1 << 40),
        },
        disk_reserve: 0,
        media_dir: None,
        reserved_names: vec!["dev-model".into()],
        crash_at: None,
    }
}

pub fn open(root: &Path) -> Store {
    Store::open(config(root)).unwrap()
}

/// The real SmolLM2 file, when fetched.
pub fn smollm2() -> Option<PathBuf> {
    let dir = std::env::var_os("HEARTH_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/hearth/models")
        });
    let path = dir.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    if path.is_file() {
        Some(path)
    } else if std::env::var("HEARTH_REQUIRE_MODELS").as_deref() == Ok("1") {
        panic!(
            "{} is missing; run ../shared/scripts/fetch-models",
            path.display()
        );
    } else {
        eprintln!("skipped: {} is missing", path.display());
        None
    }
}

/// Files in `dir` (names), sorted.
pub fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(bytes);
    format!(
        "sha256-{}",
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}
