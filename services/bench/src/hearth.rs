//! Hearth's side of the bench: load the model, time a prompt (prefill), the first token and
//! the decode steps that follow, in this process. The bench runs it in a child process (its own
//! peak RSS, no state shared between repetitions).
use std::path::Path;
use std::time::Instant;

use hearth_engine::gguf::GgufModelFile;
use hearth_engine::{EngineConfig, model, tokenizer::GgufTokenizer};

use crate::Result;

/// One repetition's measurements.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct HearthSample {
    /// Opening, validating and loading the weights, seconds.
    pub load_s: f64,
    /// Prompt tokens per second.
    pub prefill_tok_s: f64,
    /// Prompt in, first token chosen (greedy), seconds.
    pub ttft_s: f64,
    /// Tokens per second over the decode steps after the prompt.
    pub decode_tok_s: f64,
    /// `VmHWM` of this process at the end, KiB.
    pub peak_rss_kib: Option<u64>,
}

/// Text the prompt is cut from: ordinary English, so the token ids are a real prompt's.
const PROMPT_TEXT: &str = "The old lighthouse keeper climbed the spiral stairs every evening, \
counting the steps as his father had taught him. Outside, the sea rolled grey and patient \
against the rocks, and gulls argued over the scraps the fishing boats left behind. He lit the \
lamp, wound the clockwork that turned the great lens, and sat down with his logbook to write \
the weather, the ships he had seen, and the small events of a quiet life on the edge of the \
world. ";

/// `len` prompt token ids: [`PROMPT_TEXT`] tokenized (repeated as needed), cut to `len`.
pub fn prompt_tokens(tokenizer: &GgufTokenizer, len: usize) -> Result<Vec<u32>> {
    let mut text = String::new();
    let mut ids = Vec::new();
    while ids.len() < len {
        text.push_str(PROMPT_TEXT);
        ids = tokenizer.encode(&text, tokenizer.add_bos(), false)?;
        if text.len() > 64 * PROMPT_TEXT.len() {
            // A tokenizer that yields nothing for text; fall back to repeating what there is.
            break;
        }
    }
    if ids.is_empty() {
        ids.push(0);
    }
    let mut out: Vec<u32> = ids.iter().copied().cycle().take(len).collect();
    out.truncate(len);
    Ok(out)
}

fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    u32::try_from(best).unwrap_or(0)
}

/// `VmHWM` (peak resident set) of this process in KiB, from `/proc/self/status`.
pub fn own_peak_rss_kib() -> Option<u64> {
    crate::proc::vm_hwm_kib(Path::new("/proc/self/status"))
}

/// Loads `model` and times one prompt of `prompt_len` tokens and `gen_len` greedy decode steps
/// after it. A short warm-up prompt runs first (as llama-bench warms up).
pub fn measure(
    model_path: &Path,
    threads: usize,
    prompt_len: usize,
    gen_len: usize,
    kv_cache: hearth_engine::KvCacheType,
) -> Result<HearthSample> {
    let t0 = Instant::now();
    // As `LoadedModel::load` does it.
    let mut file = GgufModelFile::open(model_path)?;
    let tokenizer = GgufTokenizer::from_gguf(&file)?;
    file.release_vocabulary();
    let config = EngineConfig {
        max_context: Some(prompt_len + gen_len + 1),
        threads: Some(threads),
        kv_cache,
    };
    let mut forward = model::load(&file, &config)?;
    let load_s = t0.elapsed().as_secs_f64();
    let prompt = prompt_tokens(&tokenizer, prompt_len)?;

    // Warm-up: touch every weight and start the thread pool.
    forward.forward(&prompt[..prompt.len().min(8)], 0)?;
    forward.forward(&prompt[..1], 0)?;
    forward.reset();

    let t = Instant::now();
    let logits = forward.forward(&prompt, 0)?;
    let prefill_s = t.elapsed().as_secs_f64();
    let mut next = argmax(&logits);
    let ttft_s = t.elapsed().as_secs_f64();

    let t = Instant::now();
    for step in 0..gen_len {
        let logits = forward.forward(&[next], prompt_len + step)?;
        next = argmax(&logits);
    }
    let decode_s = t.elapsed().as_secs_f64();
    #[allow(clippy::cast_precision_loss)]
    Ok(HearthSample {
        load_s,
        prefill_tok_s: prompt_len as f64 / prefill_s,
        ttft_s,
        decode_tok_s: if gen_len == 0 {
            0.0
        } else {
            gen_len as f64 / decode_s
        },
        peak_rss_kib: own_peak_rss_kib(),
    })
}
