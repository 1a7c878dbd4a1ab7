//! Shared helpers: a tiny but valid llama GGUF built by hand (`gguf.rs`), and store setup.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use hearth_store::{MemorySource, Store, StoreConfig};

// Its own file so the end-to-end store tests include the same builder.
mod gguf;
pub use gguf::tiny_gguf;

pub fn config(root: &Path) -> StoreConfig {
    StoreConfig {
        root: root.to_owned(),
        max_context: Some(512),
        kv_cache: Default::default(),
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
