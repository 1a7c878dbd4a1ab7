//! Per-model results and the printed table.
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::hearth::HearthSample;
use crate::llama::LlamaSample;
use crate::median;

/// Every sample of one model, and what the machine could do.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelReport {
    pub model: PathBuf,
    pub file_bytes: u64,
    /// Measured read bandwidth, GB/s.
    pub bandwidth_gbs: f64,
    pub weight_bytes_per_token: Option<u64>,
    pub hearth: Vec<HearthSample>,
    pub llama: Vec<LlamaSample>,
    pub hearth_error: Option<String>,
    pub llama_error: Option<String>,
    /// 1-minute load averages read before each sample.
    pub loads: Vec<f64>,
}

impl ModelReport {
    pub fn new(model: &Path, bandwidth_gbs: f64, weight_bytes_per_token: Option<u64>) -> Self {
        Self {
            model: model.to_owned(),
            file_bytes: std::fs::metadata(model).map_or(0, |m| m.len()),
            bandwidth_gbs,
            weight_bytes_per_token,
            hearth: Vec::new(),
            llama: Vec::new(),
            hearth_error: None,
            llama_error: None,
            loads: Vec::new(),
        }
    }

    /// Decode tokens per second that memory bandwidth allows.
    pub fn decode_ceiling(&self) -> Option<f64> {
        #[allow(clippy::cast_precision_loss)]
        self.weight_bytes_per_token
            .filter(|&b| b > 0)
            .map(|b| self.bandwidth_gbs * 1e9 / b as f64)
    }

    pub fn hearth_prefill(&self) -> Option<f64> {
        median(self.hearth.iter().map(|s| s.prefill_tok_s))
    }
    pub fn hearth_decode(&self) -> Option<f64> {
        median(self.hearth.iter().map(|s| s.decode_tok_s))
    }
    pub fn hearth_ttft(&self) -> Option<f64> {
        median(self.hearth.iter().map(|s| s.ttft_s))
    }
    #[allow(clippy::cast_precision_loss)]
    pub fn hearth_rss_mib(&self) -> Option<f64> {
        median(
            self.hearth
                .iter()
                .filter_map(|s| s.peak_rss_kib)
                .map(|k| k as f64 / 1024.0),
        )
    }
    pub fn llama_prefill(&self) -> Option<f64> {
        median(self.llama.iter().map(|s| s.prefill_tok_s))
    }
    pub fn llama_decode(&self) -> Option<f64> {
        median(self.llama.iter().map(|s| s.decode_tok_s))
    }
    #[allow(clippy::cast_precision_loss)]
    pub fn llama_rss_mib(&self) -> Option<f64> {
        median(
            self.llama
                .iter()
                .filter_map(|s| s.peak_rss_kib)
                .map(|k| k as f64 / 1024.0),
        )
    }
}

fn cell(v: Option<f64>, prec: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.prec$}"))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "-".to_owned(),
    }
}

/// The human-readable report: one block per model.
pub fn print_report(
    reports: &[ModelReport],
    threads: usize,
    prompt: usize,
    gen_len: usize,
) -> String {
    let mut s = String::new();
    let bw = reports.first().map_or(0.0, |r| r.bandwidth_gbs);
    let _ = writeln!(
        s,
        "threads {threads}, prompt {prompt} tokens, decode {gen_len} tokens after the prompt; medians; memory read bandwidth {bw:.1} GB/s"
    );
    for r in reports {
        let name = r.model.file_name().map_or_else(
            || r.model.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        #[allow(clippy::cast_precision_loss)]
        let file_mib = r.file_bytes as f64 / (1024.0 * 1024.0);
        let (lo, hi) = r
            .loads
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &l| {
                (lo.min(l), hi.max(l))
            });
        let loads = if r.loads.is_empty() {
            "-".to_owned()
        } else {
            format!("{lo:.2}..{hi:.2}")
        };
        #[allow(clippy::cast_precision_loss)]
        let per_token = r.weight_bytes_per_token.map_or_else(
            || "-".into(),
            |b| format!("{:.0} MiB", b as f64 / 1048576.0),
        );
        let _ = writeln!(
            s,
            "\n{name} ({file_mib:.0} MiB; {} Hearth / {} llama.cpp samples; load avg {loads})",
            r.hearth.len(),
            r.llama.len()
        );
        let _ = writeln!(
            s,
            "  decode ceiling {} tok/s ({bw:.1} GB/s / {per_token} of weights per token)",
            cell(r.decode_ceiling(), 0)
        );
        let _ = writeln!(
            s,
            "  {:<22} {:>10} {:>10} {:>8}",
            "", "Hearth", "llama.cpp", "ratio"
        );
        let llama_ttft = r.llama_prefill().map(|p| prompt as f64 / p);
        let rows = [
            ("prefill tok/s", r.hearth_prefill(), r.llama_prefill(), 1),
            ("decode tok/s", r.hearth_decode(), r.llama_decode(), 1),
            (
                "TTFT ms",
                r.hearth_ttft().map(|t| t * 1e3),
                llama_ttft.map(|t| t * 1e3),
                1,
            ),
            ("peak RSS MiB", r.hearth_rss_mib(), r.llama_rss_mib(), 0),
        ];
        for (label, h, l, prec) in rows {
            let _ = writeln!(
                s,
                "  {label:<22} {:>10} {:>10} {:>8}",
                cell(h, prec),
                cell(l, prec),
                ratio(h, l)
            );
        }
        if llama_ttft.is_some() {
            let _ = writeln!(
                s,
                "  (llama.cpp's TTFT is derived: prompt / its prefill rate)"
            );
        }
        if let Some(load) = median(r.hearth.iter().map(|x| x.load_s)) {
            let _ = writeln!(s, "  Hearth load time {:.2} s", load);
        }
        if let Some(e) = &r.hearth_error {
            let _ = writeln!(s, "  Hearth error: {e}");
        }
        if let Some(e) = &r.llama_error {
            let _ = writeln!(s, "  llama.cpp error: {e}");
        }
    }
    s
}
