//! Measuring processes and the machine: a child's peak RSS, the load average, memory bandwidth.
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{BenchError, Result};

/// `VmHWM` in KiB from a `/proc/<pid>/status` file, if the process still has one.
pub fn vm_hwm_kib(status: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(status).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The 1-minute load average, from `/proc/loadavg`.
pub fn load_average() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// What a finished child printed, and the highest `VmHWM` seen while it ran (KiB).
#[derive(Debug)]
pub struct ChildRun {
    pub stdout: String,
    pub peak_rss_kib: Option<u64>,
}

/// Runs `cmd` to completion, polling its peak RSS every few milliseconds (`VmHWM` only grows,
/// so the last reading before exit is the peak up to that moment).
pub fn run_measured(mut cmd: Command) -> Result<ChildRun> {
    let program = PathBuf::from(cmd.get_program());
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| BenchError::Io {
            what: "cannot start",
            path: program.clone(),
            source,
        })?;
    let status_path = PathBuf::from(format!("/proc/{}/status", child.id()));
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut p) = pipe {
                // A read error leaves what was read; the exit status tells the rest.
                let _ = p.read_to_string(&mut s);
            }
            s
        })
    };
    let out = reader(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = reader(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let mut peak = None;
    let status = loop {
        if let Some(kib) = vm_hwm_kib(&status_path) {
            peak = Some(peak.map_or(kib, |p: u64| p.max(kib)));
        }
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(source) => {
                return Err(BenchError::Io {
                    what: "cannot wait for",
                    path: program,
                    source,
                });
            }
        }
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    if !status.success() {
        let tail: String = stderr
            .lines()
            .rev()
            .take(15)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        return Err(BenchError::ChildFailed {
            program,
            status,
            stderr: tail,
        });
    }
    Ok(ChildRun {
        stdout,
        peak_rss_kib: peak,
    })
}

/// Read bandwidth of main memory with `threads` threads, in GB/s (10^9 bytes): each thread
/// sums its share of a buffer far larger than the caches; the best of a few passes.
pub fn memory_bandwidth_gbs(threads: usize) -> f64 {
    const BYTES: usize = 512 << 20;
    let threads = threads.max(1);
    let words = BYTES / 8;
    // Non-zero contents, so the pages are really allocated.
    let buf: Vec<u64> = (0..words as u64).collect();
    let per = words.div_ceil(threads);
    let mut best = 0f64;
    for _ in 0..5 {
        let t = Instant::now();
        let total: u64 = std::thread::scope(|s| {
            let handles: Vec<_> = buf
                .chunks(per)
                .map(|chunk| s.spawn(move || sum_words(chunk)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or(0))
                .fold(0, u64::wrapping_add)
        });
        std::hint::black_box(total);
        #[allow(clippy::cast_precision_loss)]
        let gbs = BYTES as f64 / t.elapsed().as_secs_f64() / 1e9;
        best = best.max(gbs);
    }
    best
}

/// Wrapping sum with independent lanes, so it runs at load speed rather than add latency.
fn sum_words(words: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    let chunks = words.chunks_exact(8);
    let tail = chunks
        .remainder()
        .iter()
        .fold(0, |a: u64, &w| a.wrapping_add(w));
    for c in chunks {
        for (a, &w) in acc.iter_mut().zip(c) {
            *a = a.wrapping_add(w);
        }
    }
    acc.iter().fold(tail, |a, &w| a.wrapping_add(w))
}

/// Logical CPUs this process may run on (affinity- and cgroup-aware as the standard library is).
pub fn available_threads() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}
