//! The inference worker binary; `hearthd` starts it. Logic lives in the library.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use hearth_engine::{EngineConfig, KvCacheType};
use hearth_inference::{WorkerConfig, serve};

/// Hearth's inference worker: loads GGUF models and serves generations on a Unix socket.
/// Started and watched by hearthd; not meant to be run by hand except for debugging.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Unix socket to listen on.
    #[arg(long)]
    socket: PathBuf,
    /// A model to load, as ID=PATH. Repeatable.
    #[arg(long = "model", value_parser = parse_model)]
    models: Vec<(String, PathBuf)>,
    /// Cap on the context length in tokens (default: each model's own).
    #[arg(long)]
    max_context: Option<usize>,
    /// Threads for model math (default: the CPUs this process may run on).
    #[arg(long)]
    threads: Option<usize>,
    /// KV cache element type: f16 (default) or q8_0 (about half the memory).
    #[arg(long, default_value_t = KvCacheType::F16)]
    kv_cache: KvCacheType,
    /// Requests that may wait per model before new ones are refused as busy.
    #[arg(long, default_value_t = 8)]
    queue_depth: usize,
}

fn parse_model(s: &str) -> Result<(String, PathBuf), String> {
    let (id, path) = s
        .split_once('=')
        .ok_or_else(|| format!("expected ID=PATH, got '{s}'"))?;
    Ok((id.to_owned(), PathBuf::from(path)))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::new().filter_or("HEARTH_LOG", "info")).init();
    // If hearthd dies without stopping us, do not linger holding the model in memory.
    #[cfg(target_os = "linux")]
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
        .context("setting the parent-death signal")?;
    let args = Args::parse();
    let config = WorkerConfig {
        socket: args.socket,
        models: args.models,
        engine: EngineConfig {
            max_context: args.max_context,
            threads: args.threads.filter(|&n| n > 0),
            kv_cache: args.kv_cache,
        },
        queue_depth: args.queue_depth.max(1),
    };
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => return,
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        let _ = stop.send(true);
    });
    serve(config, shutdown).await?;
    // Model threads may be mid-generation; the process ends here without waiting for them.
    std::process::exit(0)
}
