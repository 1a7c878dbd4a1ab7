//! The bench binary runs end to end on the smallest real model without llama.cpp
//! (`--hearth-only`): a Hearth child process is spawned, measured and reported.
//!
//! Skips (prints why) when the model is missing, unless `HEARTH_REQUIRE_MODELS=1`.
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Result, bail, ensure};

const MODEL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

fn find_model() -> Option<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("HEARTH_MODEL_DIR") {
        dirs.push(PathBuf::from(d));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".cache/hearth/models"));
    }
    dirs.into_iter()
        .map(|d| d.join(MODEL))
        .find(|p| p.is_file())
}

/// The first number on the report line that starts with `label`, Hearth's column.
fn hearth_cell(report: &str, label: &str) -> Option<f64> {
    let line = report.lines().find(|l| l.trim_start().starts_with(label))?;
    let rest = line.trim_start().strip_prefix(label)?;
    rest.split_whitespace().next()?.parse().ok()
}

#[test]
fn bench_runs_hearth_only_on_a_small_model() -> Result<()> {
    let Some(model) = find_model() else {
        if std::env::var("HEARTH_REQUIRE_MODELS").is_ok_and(|v| v == "1") {
            bail!("{MODEL} is missing and HEARTH_REQUIRE_MODELS=1");
        }
        eprintln!("skipping: {MODEL} not found");
        return Ok(());
    };
    let json = tempfile_path("bench.json");
    let out = Command::new(env!("CARGO_BIN_EXE_hearth-bench"))
        .arg("--model")
        .arg(&model)
        .args(["--hearth-only", "--reps", "2", "--threads", "2"])
        .args(["--prompt", "16", "--gen", "4"])
        .arg("--json")
        .arg(&json)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "bench failed: {stdout}\n{stderr}");
    ensure!(
        !stdout.contains("Hearth error"),
        "Hearth side failed: {stdout}"
    );
    ensure!(stdout.contains("memory read bandwidth"), "{stdout}");
    for label in ["prefill tok/s", "decode tok/s", "TTFT ms", "peak RSS MiB"] {
        let v = hearth_cell(&stdout, label);
        ensure!(
            v.is_some_and(|v| v > 0.0 && v.is_finite()),
            "no positive Hearth value for '{label}' in:\n{stdout}"
        );
    }
    let raw: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json)?)?;
    let samples = raw[0]["hearth"].as_array().map_or(0, Vec::len);
    ensure!(
        samples == 2,
        "expected 2 Hearth samples, got {samples}: {raw}"
    );
    ensure!(raw[0]["llama"].as_array().is_some_and(Vec::is_empty));
    let _ = std::fs::remove_file(&json);
    Ok(())
}

fn tempfile_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("hearth-bench-test-{}-{name}", std::process::id()))
}
