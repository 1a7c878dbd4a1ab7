//! llama.cpp's side of the bench: `llama-bench`, built from the llama-cpp-python source package
//! by `services/bench/build-llama-bench` (once, under `target/bench/`), run one repetition at a
//! time so the bench can interleave it with Hearth.
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::proc::run_measured;
use crate::{BenchError, Result};

/// One repetition's measurements.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LlamaSample {
    pub prefill_tok_s: f64,
    pub decode_tok_s: f64,
    /// Polled `VmHWM` of the llama-bench process, KiB.
    pub peak_rss_kib: Option<u64>,
}

/// The build script, beside this crate's manifest.
pub fn build_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("build-llama-bench")
}

/// Runs the build script (which reuses an existing build) and returns llama-bench's path.
pub fn ensure_llama_bench() -> Result<PathBuf> {
    let script = build_script();
    eprintln!(
        "bench: locating llama-bench with {} (builds it once, several minutes)",
        script.display()
    );
    let out = std::process::Command::new(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|source| BenchError::Io {
            what: "cannot run",
            path: script.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(BenchError::ChildFailed {
            program: script,
            status: out.status,
            stderr: "see the output above".into(),
        });
    }
    let path = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_owned();
    Ok(PathBuf::from(path))
}

#[derive(serde::Deserialize)]
struct TestResult {
    n_prompt: usize,
    n_gen: usize,
    #[serde(default)]
    n_depth: usize,
    avg_ts: f64,
}

/// One llama-bench repetition: a `prompt`-token prefill, and `gen` decode steps after a
/// `prompt`-token context (`-d`), on `threads` threads, with the options' KV cache type.
pub fn measure(
    llama_bench: &Path,
    model: &Path,
    opts: &crate::BenchOptions,
) -> Result<LlamaSample> {
    let (threads, prompt, gen_len, kv_cache) =
        (opts.threads, opts.prompt, opts.gen_len, opts.kv_cache);
    let mut cmd = Command::new(llama_bench);
    if kv_cache != hearth_engine::KvCacheType::F16 {
        // A quantized V cache needs flash attention (on by default on CPU; explicit here).
        let t = kv_cache.to_string();
        cmd.args(["-ctk", &t, "-ctv", &t, "-fa", "1"]);
    }
    cmd.arg("-m")
        .arg(model)
        .args(["-t", &threads.to_string()])
        .args(["-p", &prompt.to_string()])
        .args(["-n", &gen_len.to_string()])
        .args(["-d", &format!("0,{prompt}")])
        .args(["-r", "1", "-o", "json"]);
    let run = run_measured(cmd)?;
    let bad = |reason: String| BenchError::BadOutput {
        program: llama_bench.to_owned(),
        reason,
    };
    let results: Vec<TestResult> =
        serde_json::from_str(&run.stdout).map_err(|e| bad(format!("not JSON: {e}")))?;
    let find = |p: usize, g: usize, d: usize| {
        results
            .iter()
            .find(|r| r.n_prompt == p && r.n_gen == g && r.n_depth == d)
            .map(|r| r.avg_ts)
            .ok_or_else(|| bad(format!("no result for pp{p} tg{g} d{d}")))
    };
    Ok(LlamaSample {
        prefill_tok_s: find(prompt, 0, 0)?,
        decode_tok_s: find(0, gen_len, prompt)?,
        peak_rss_kib: run.peak_rss_kib,
    })
}
