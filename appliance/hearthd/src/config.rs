//! The one configuration struct, read from a TOML file, with command-line overrides.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Error;

/// hearthd's configuration. Every field has a default, so an empty file is a valid config.
/// In the image the defaults are read-only; overrides live on the data partition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where hearthd keeps its state: `hearth.db`, the worker socket, (later) models and TLS
    /// keys. Default: the per-user data directory (`~/.local/share/hearth`) in dev mode.
    pub data_dir: PathBuf,
    /// Address the HTTP server listens on.
    pub listen: SocketAddr,
    /// GGUF files served as models in dev mode; each model's id is its file stem.
    pub models: Vec<PathBuf>,
    /// The inference worker binary. Default: `hearth-inference` next to the hearthd binary.
    pub inference_worker: Option<PathBuf>,
    /// Cap on each model's context length in tokens (prompt + answer). Default: the model's own.
    pub max_context: Option<usize>,
    /// How the inference worker's KV cache stores keys and values: `"f16"` (default, what
    /// llama.cpp uses and the golden tests pin down) or `"q8_0"` (about half the memory per
    /// token of context, slightly different answers). The fit checks size the cache by it.
    pub kv_cache: hearth_engine::KvCacheType,
    /// Requests that may wait per model before new ones get 429.
    pub queue_depth: usize,
    /// Threads the inference worker uses for model math. Default: the cores this process may
    /// run on (CPU affinity and cgroup quota respected).
    pub inference_threads: Option<usize>,
    /// Largest request body accepted on the API routes, in bytes; larger gets 413.
    pub max_body_bytes: usize,
    /// Largest `max_tokens` a request may ask for (the context still bounds it).
    pub max_tokens_limit: usize,
    /// First delay before restarting a worker that died, in milliseconds; doubles per crash.
    pub restart_backoff_initial_ms: u64,
    /// Longest delay between worker restarts, in milliseconds.
    pub restart_backoff_max_ms: u64,
    /// The file holding the setup code (on a real box: printed on its label, kept on the boot
    /// or data partition). Created with a fresh code when missing. Default:
    /// `<data_dir>/setup-code`.
    pub setup_code_file: Option<PathBuf>,
    /// How long a browser session lasts without use, in hours.
    pub session_idle_hours: u64,
    /// Extra host names this box answers to (besides localhost, its IP addresses and its
    /// mDNS name); requests with any other `Host` are refused (DNS-rebinding defence).
    pub host_names: Vec<String>,
    /// Longest time a client may take to send a request body, in seconds.
    pub request_body_timeout_secs: u64,
    /// Where removable media (USB sticks) are mounted; `.gguf` files below it are offered for
    /// import. Watched (see `media_poll_ms`), never written; links are not followed.
    pub media_dir: PathBuf,
    /// How often the media watcher lists `media_dir` again, in milliseconds, so a stick that
    /// was just plugged in shows up on the Models page by itself. Polling (rather than inotify
    /// or udev) sees a mount whoever makes it (udisks, systemd automount, a hand `mount`) and
    /// needs nothing outside this process; a listing is bounded (depth, files, entries).
    /// 0 turns the watcher off: the listing is then made on request.
    pub media_poll_ms: u64,
    /// Tests only: abort the process at this model-import step (`hearth_store::FaultPoint`,
    /// 1..=7). Never read from the file; `main.rs` sets it from `HEARTH_TEST_CRASH_AT`.
    #[serde(skip)]
    pub test_crash_at: Option<u32>,
    /// Serve HTTPS here with the box's own certificate (`hearth-lan`); plain HTTP on `listen`
    /// then only redirects to it, except the certificate page and `/healthz`. Default: none,
    /// plain HTTP only (dev mode on localhost).
    pub https_listen: Option<SocketAddr>,
    /// Where the device CA and the server certificate are kept. Default: `<data_dir>/tls`.
    pub tls_dir: Option<PathBuf>,
    /// Answer mDNS as `<box name>.local` and advertise `_https._tcp` and `_hearth._tcp`.
    /// Default: off (dev mode); the image turns it on.
    pub mdns: bool,
    /// Network interfaces mDNS answers on (`eth0`, `wlan0`). Default: all but loopback.
    pub mdns_interfaces: Vec<String>,
    /// The box's name (`<name>.local`) until the owner sets one on the Settings page.
    pub box_name: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: default_data_dir(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            models: Vec::new(),
            inference_worker: None,
            max_context: None,
            kv_cache: hearth_engine::KvCacheType::F16,
            queue_depth: 8,
            inference_threads: None,
            max_body_bytes: 1024 * 1024,
            max_tokens_limit: 32 * 1024,
            restart_backoff_initial_ms: 250,
            restart_backoff_max_ms: 30_000,
            setup_code_file: None,
            session_idle_hours: 24 * 14,
            host_names: Vec::new(),
            request_body_timeout_secs: 30,
            media_dir: PathBuf::from("/media"),
            media_poll_ms: 2000,
            test_crash_at: None,
            https_listen: None,
            tls_dir: None,
            mdns: false,
            mdns_interfaces: Vec::new(),
            box_name: "hearth".to_owned(),
        }
    }
}

fn default_data_dir() -> PathBuf {
    dirs::data_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("hearth")
}

impl Config {
    /// Reads a TOML config file; unknown keys are an error so typos do not pass silently.
    pub fn from_file(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::ConfigRead {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| Error::ConfigParse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// The dev-mode model list as (id, path): the id is the file stem.
    pub fn model_files(&self) -> Result<Vec<(String, PathBuf)>, Error> {
        let mut out: Vec<(String, PathBuf)> = Vec::new();
        for path in &self.models {
            let id = path
                .file_stem()
                .and_then(|s| s.to_str())
                .filter(|s| !s.is_empty())
                .ok_or_else(|| Error::ModelPath { path: path.clone() })?
                .to_owned();
            if out.iter().any(|(seen, _)| *seen == id) {
                return Err(Error::DuplicateModel { id });
            }
            out.push((id, path.clone()));
        }
        Ok(out)
    }

    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("hearth.db")
    }

    pub fn tls_path(&self) -> PathBuf {
        self.tls_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("tls"))
    }

    pub fn setup_code_path(&self) -> PathBuf {
        self.setup_code_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("setup-code"))
    }

    pub fn worker_socket(&self) -> PathBuf {
        self.data_dir.join("run").join("inference.sock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults_and_unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hearth.toml");
        std::fs::write(&path, "").unwrap();
        assert_eq!(Config::from_file(&path).unwrap(), Config::default());
        std::fs::write(&path, "listen = \"0.0.0.0:80\"\nmax_context = 512\n").unwrap();
        let c = Config::from_file(&path).unwrap();
        assert_eq!(c.listen.port(), 80);
        assert_eq!(c.max_context, Some(512));
        assert_eq!(c.kv_cache, hearth_engine::KvCacheType::F16);
        std::fs::write(&path, "kv_cache = \"q8_0\"\n").unwrap();
        let c = Config::from_file(&path).unwrap();
        assert_eq!(c.kv_cache, hearth_engine::KvCacheType::Q8_0);
        std::fs::write(&path, "kv_cache = \"q4_0\"\n").unwrap();
        assert!(Config::from_file(&path).is_err());
        std::fs::write(&path, "lisen = \"0.0.0.0:80\"\n").unwrap();
        let err = Config::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("lisen"), "{err}");
    }

    #[test]
    fn model_ids_are_file_stems_and_must_be_unique() {
        let c = Config {
            models: vec!["/m/SmolLM2.Q4_1.gguf".into(), "/n/qwen.gguf".into()],
            ..Config::default()
        };
        let ids: Vec<_> = c.model_files().unwrap().into_iter().map(|m| m.0).collect();
        assert_eq!(ids, ["SmolLM2.Q4_1", "qwen"]);
        let c = Config {
            models: vec!["/a/x.gguf".into(), "/b/x.gguf".into()],
            ..Config::default()
        };
        assert!(matches!(c.model_files(), Err(Error::DuplicateModel { .. })));
    }
}
