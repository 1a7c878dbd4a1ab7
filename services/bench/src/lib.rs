//! `hearth-bench`: Hearth's engine against llama.cpp on the same GGUF file, same thread count,
//! same run.
//!
//! For each model it alternates one Hearth repetition (this binary re-run as a child process,
//! so each repetition has its own peak RSS and a cold engine) with one `llama-bench`
//! repetition, `reps` rounds, and reports medians: prefill tok/s (a `prompt`-token prompt),
//! decode tok/s (`gen` tokens after a `prompt`-token context), time to first token, peak RSS,
//! the ratios Hearth / llama.cpp, and the 1-minute load average seen during the samples. It
//! also measures this machine's memory read bandwidth and prints the decode ceiling it implies
//! for each model (bandwidth ÷ weight bytes read per token).
//!
//! llama.cpp is never downloaded at run time: `build-llama-bench` (beside this crate) builds
//! `llama-bench` once from the llama-cpp-python source package that pip fetches from PyPI, under
//! `target/bench/`. With `hearth_only` none of that is needed.
//!
//! It must never be part of the test suite's timing claims: the numbers are only meaningful on
//! a quiet machine, which is why the load average is printed next to them.
//!
//! Limits: llama.cpp's time to first token is derived from its prefill rate (llama-bench does
//! not time it); peak RSS of llama-bench is polled every 5 ms.

pub mod error;
pub mod hearth;
pub mod llama;
pub mod proc;
mod report;

use std::path::{Path, PathBuf};
use std::process::Command;

pub use error::{BenchError, Result};
pub use report::{ModelReport, print_report};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub models: Vec<PathBuf>,
    pub threads: usize,
    pub reps: usize,
    pub prompt: usize,
    pub gen_len: usize,
    /// KV cache type of both engines.
    pub kv_cache: hearth_engine::KvCacheType,
    /// Skip llama.cpp entirely.
    pub hearth_only: bool,
    /// A llama-bench binary to use instead of building one.
    pub llama_bench: Option<PathBuf>,
}

/// Measures every model; a model Hearth cannot load is reported with its error and llama.cpp's
/// numbers alone.
pub fn run(opts: &BenchOptions) -> Result<Vec<ModelReport>> {
    if opts.reps == 0 || opts.prompt == 0 || opts.threads == 0 {
        return Err(BenchError::Options(
            "reps, prompt and threads must be at least 1".into(),
        ));
    }
    let llama_bench = match (&opts.llama_bench, opts.hearth_only) {
        (_, true) => None,
        (Some(p), false) => Some(p.clone()),
        (None, false) => Some(llama::ensure_llama_bench()?),
    };
    eprintln!(
        "bench: measuring memory bandwidth ({} threads)",
        opts.threads
    );
    let bandwidth = proc::memory_bandwidth_gbs(opts.threads);
    let mut reports = Vec::new();
    for model in &opts.models {
        let mut r = ModelReport::new(model, bandwidth, weight_bytes_per_token(model));
        for rep in 0..opts.reps {
            eprintln!("bench: {} round {}/{}", model.display(), rep + 1, opts.reps);
            r.loads.extend(proc::load_average());
            match measure_hearth_child(model, opts) {
                Ok(s) => r.hearth.push(s),
                Err(e) => {
                    eprintln!("bench: hearth: {e}");
                    r.hearth_error = Some(e.to_string());
                }
            }
            if let Some(lb) = &llama_bench {
                r.loads.extend(proc::load_average());
                match llama::measure(lb, model, opts) {
                    Ok(s) => r.llama.push(s),
                    Err(e) => {
                        eprintln!("bench: llama.cpp: {e}");
                        r.llama_error = Some(e.to_string());
                    }
                }
            }
        }
        reports.push(r);
    }
    Ok(reports)
}

/// Runs one Hearth repetition in a child process (this executable with `--child`).
fn measure_hearth_child(model: &Path, opts: &BenchOptions) -> Result<hearth::HearthSample> {
    let exe = std::env::current_exe().map_err(|source| BenchError::Io {
        what: "cannot find the bench executable",
        path: PathBuf::from("/proc/self/exe"),
        source,
    })?;
    let mut cmd = Command::new(&exe);
    cmd.arg("--child")
        .arg("--model")
        .arg(model)
        .args(["--threads", &opts.threads.to_string()])
        .args(["--prompt", &opts.prompt.to_string()])
        .args(["--gen", &opts.gen_len.to_string()])
        .args(["--kv-cache", &opts.kv_cache.to_string()])
        // candle's pool (still used for some formats) sizes itself from this.
        .env("RAYON_NUM_THREADS", opts.threads.to_string())
        .env("RUST_BACKTRACE", "0");
    let run = proc::run_measured(cmd)?;
    let mut sample: hearth::HearthSample =
        serde_json::from_str(run.stdout.trim()).map_err(|e| BenchError::BadOutput {
            program: exe,
            reason: format!("{e}: {}", run.stdout),
        })?;
    sample.peak_rss_kib = sample.peak_rss_kib.or(run.peak_rss_kib);
    Ok(sample)
}

/// The child side: measure in this process and print one JSON line.
pub fn run_child(
    model: &Path,
    threads: usize,
    prompt: usize,
    gen_len: usize,
    kv_cache: hearth_engine::KvCacheType,
) -> Result<String> {
    let sample = hearth::measure(model, threads, prompt, gen_len, kv_cache)?;
    serde_json::to_string(&sample).map_err(|e| BenchError::BadOutput {
        program: PathBuf::from("hearth-bench --child"),
        reason: e.to_string(),
    })
}

/// Bytes of weights a decode step reads: every tensor, except that the token embedding counts
/// once only when it doubles as the output projection (otherwise one row is read). KV-cache
/// reads are left out (small at these context lengths).
pub fn weight_bytes_per_token(model: &Path) -> Option<u64> {
    let file = hearth_engine::gguf::GgufModelFile::open(model).ok()?;
    let infos = &file.content.tensor_infos;
    let tied = !infos.contains_key("output.weight");
    let mut total = 0u64;
    for (name, info) in infos {
        if name == "token_embd.weight" && !tied {
            continue;
        }
        let elems = info.shape.elem_count() as u64;
        let block = info.ggml_dtype.block_size() as u64;
        total += elems / block.max(1) * info.ggml_dtype.type_size() as u64;
    }
    Some(total)
}

/// The median of `xs` (mean of the middle two for an even count); `None` when empty.
pub fn median(xs: impl IntoIterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = xs.into_iter().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        f64::midpoint(v[n / 2 - 1], v[n / 2])
    })
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn medians() {
        assert_eq!(median([]), None);
        assert_eq!(median([3.0]), Some(3.0));
        assert_eq!(median([5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median([4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median([f64::NAN, 2.0]), Some(2.0));
    }
}
