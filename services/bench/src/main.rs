//! `hearth-bench`: argv in, report out; the work is in the library.
use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;

/// Benchmarks Hearth's engine against llama.cpp's llama-bench on the same GGUF files.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// GGUF file(s) to measure (repeat the option for several).
    #[arg(long = "model", required = true)]
    models: Vec<PathBuf>,
    /// Threads for both engines; default: the CPUs this process may use.
    #[arg(long)]
    threads: Option<usize>,
    /// Interleaved rounds (Hearth, llama.cpp) per model.
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Prompt length for prefill and for the context decode starts from.
    #[arg(long, default_value_t = 128)]
    prompt: usize,
    /// Decode steps.
    #[arg(long = "gen", default_value_t = 64)]
    gen_len: usize,
    /// KV cache type for both engines: f16 (default) or q8_0 (llama-bench gets `-ctk`/`-ctv`).
    #[arg(long, default_value_t = hearth_engine::KvCacheType::F16)]
    kv_cache: hearth_engine::KvCacheType,
    /// Measure Hearth only (no llama.cpp build needed).
    #[arg(long)]
    hearth_only: bool,
    /// Use this llama-bench binary instead of building one under target/bench/.
    #[arg(long)]
    llama_bench: Option<PathBuf>,
    /// Also write the raw samples as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Internal: measure Hearth once in this process and print JSON.
    #[arg(long, hide = true)]
    child: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let threads = args
        .threads
        .unwrap_or_else(hearth_bench::proc::available_threads);
    if args.child {
        let model = args
            .models
            .first()
            .ok_or_else(|| anyhow::anyhow!("no model"))?;
        println!(
            "{}",
            hearth_bench::run_child(model, threads, args.prompt, args.gen_len, args.kv_cache)?
        );
        return Ok(());
    }
    let opts = hearth_bench::BenchOptions {
        models: args.models,
        threads,
        reps: args.reps,
        prompt: args.prompt,
        gen_len: args.gen_len,
        kv_cache: args.kv_cache,
        hearth_only: args.hearth_only,
        llama_bench: args.llama_bench,
    };
    let reports = hearth_bench::run(&opts)?;
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&reports)?)?;
    }
    print!(
        "{}",
        hearth_bench::print_report(&reports, threads, opts.prompt, opts.gen_len)
    );
    Ok(())
}
