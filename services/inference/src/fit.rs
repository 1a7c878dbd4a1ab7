//! The fit check before a model loads: its weights plus a KV cache (of the configured type) at
//! the context the engine allows, against the memory this process may still use (MemAvailable, or less when its own
//! cgroup's `memory.max` leaves less). The store runs the same check at import; this one runs
//! at every load, when other models already hold their memory.

use std::path::{Path, PathBuf};

use hearth_engine::EngineConfig;
use hearth_store::{MemorySource, ModelFacts, fit};

/// Test hook: a fixed number of available bytes instead of the system's figures.
const MEMORY_OVERRIDE_ENV: &str = "HEARTH_TEST_MEMORY_AVAILABLE";

/// Refuses with the numbers ("needs 3.1 GiB, 1.2 GiB available") when the model at `path`
/// will not fit; a file it cannot read is left for the loader to report.
pub fn check(path: &Path, engine: &EngineConfig) -> Result<(), String> {
    let Ok(facts) = ModelFacts::read(path) else {
        return Ok(());
    };
    let context = engine.max_context.map_or(facts.context_length, |cap| {
        facts
            .context_length
            .min(u64::try_from(cap).unwrap_or(u64::MAX))
    });
    let source = MemorySource {
        cgroup: own_cgroup(),
        fixed: std::env::var(MEMORY_OVERRIDE_ENV)
            .ok()
            .and_then(|v| v.parse().ok()),
    };
    fit::check_memory(&source, facts.needs_bytes(context, engine.kv_cache))
        .map_err(|e| e.to_string())
}

/// This process's cgroup v2 directory (`0::/path` in `/proc/self/cgroup`).
fn own_cgroup() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    let dir = Path::new("/sys/fs/cgroup").join(rel.trim_start_matches('/'));
    dir.is_dir().then_some(dir)
}
