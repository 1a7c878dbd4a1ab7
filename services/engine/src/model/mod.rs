//! Transformer forward passes over quantized GGUF weights.
//!
//! One decoder ([`transformer::Transformer`]) serves the llama, qwen2, qwen3 and gemma3
//! architectures ([`SUPPORTED`]); they differ only in what [`HParams`] records: RoPE style
//! (llama.cpp's "normal" interleaved pairs for llama, whose GGUF q/k weights are stored
//! permuted for it; NEOX halves for the others), the q/k/v biases qwen2 carries, the per-head
//! q/k RMS norms of qwen3 and gemma3, and whether the output projection is tied to the
//! embeddings. gemma3 adds, as llama.cpp's `llm_build_gemma3_iswa`: embeddings scaled by
//! `sqrt(n_embd)`, q scaled by `1/sqrt(key_length)` before attention, RMS post-norms on the
//! attention and feed-forward outputs, a GELU (tanh, ggml's f16 table) gate, and
//! sliding-window layers ([`SlidingWindow`]: every 6th layer global by default) that see only
//! the last `attention.sliding_window` positions and rotate with RoPE base 10000 while global
//! layers use the file's base. The norm weights are used as stored: gemma's converter already
//! added the `+1`.
//!
//! The matrix products run on Hearth's own kernels ([`quant`] lays out and threads them; the
//! `hearth-kernels` crate's `block` for the 32-block formats and `kquants` for
//! Q4_K/Q5_K/Q6_K do the dot products; candle's `QMatMul` only for float and
//! Q2_K/Q3_K matrices); weights stay quantized. Token embedding rows are
//! read from the file as tokens need them ([`embeddings`]), so a tied embedding table is held
//! once, in the output projection. Norms, RoPE, attention and the KV cache are plain
//! Rust over `f32` slices ([`ops`]), written to follow ggml's CPU arithmetic: RMS sums in `f64`,
//! the RoPE angle advanced by repeated multiplication, K/V rounded to f16 in the cache, and
//! attention as llama.cpp's flash attention computes it (tiled f32 kernel for batches of 64+
//! rows; otherwise f16 query, online softmax and an f16 accumulator, with decoding split in two
//! halves from 512 cached positions on). Where ggml's rounding depends on the SIMD width, the
//! engine follows the AVX-512 build that made the golden fixtures ([`ggml_math`]: the vector
//! `expf` of SiLU and the softmax, the 16-lane f16 dot product, and the fused multiply-adds
//! GCC makes of ggml's scalar `a * b + c`), and on x86-64 it follows the K-quant kernel that
//! build picks for each product (repacked Q4_K gemv/gemm, the tiled matmul for prompts:
//! [`quant`]), so its greedy output is the fixtures' on any x86-64 CPU.
//!
//! The block kernels (`hearth-kernels`) and [`ggml_math`] are portable Rust with an AVX2+FMA
//! version picked at run time; [`ggml_math`] is the only engine module that allows `unsafe`.
//!
//! Current limits: CPU only, one sequence, no RoPE scaling other than linear; weights are
//! copied out of the file (not memory-mapped); no NEON build of the kernels yet. Sliding-window
//! layers keep every position in their cache (llama.cpp keeps a ring of window + batch
//! cells), so a long gemma3 context costs the memory of full attention, and past llama.cpp's
//! ring size its key order (hence rounding) differs.
use candle_core::quantized::gguf_file::Value;

use crate::gguf::GgufModelFile;
use crate::{EngineConfig, EngineError, Result};

mod embeddings;
mod ggml_math;
mod ops;
mod pool;
mod quant;
mod transformer;

/// A model's forward pass with its own KV cache.
pub trait Forward: Send {
    /// Runs `tokens` at positions `start_pos..start_pos + tokens.len()` (appending to the KV
    /// cache) and returns the logits of the last position, one per vocabulary entry.
    fn forward(&mut self, tokens: &[u32], start_pos: usize) -> Result<Vec<f32>>;
    /// Forgets the KV cache; the next call starts at position 0.
    fn reset(&mut self);
    /// The model's trained context length.
    fn context_length(&self) -> usize;
}

/// How the rotary embedding pairs up the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// llama.cpp's `LLAMA_ROPE_TYPE_NORM`: dimensions `(2i, 2i+1)` rotate together.
    Interleaved,
    /// llama.cpp's `LLAMA_ROPE_TYPE_NEOX`: dimensions `(i, i + n_rot/2)` rotate together.
    Neox,
}

/// The feed-forward block's gate activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FfnActivation {
    /// `silu(gate) * up` (llama, qwen2, qwen3).
    Silu,
    /// `gelu(gate) * up` with ggml's tanh-approximation GELU (gemma3).
    GeluTanh,
}

/// Interleaved sliding-window attention (gemma3): most layers see only the last `size`
/// positions and rotate with their own RoPE frequency base.
#[derive(Debug, Clone, PartialEq)]
pub struct SlidingWindow {
    /// A query at position `p` sees positions `p0` with `p - p0 < size`.
    pub size: usize,
    /// Per layer: whether it is a sliding-window (local) layer.
    pub layers: Vec<bool>,
    /// RoPE frequency base of the local layers (`rope.freq_base_swa`, default 10000); their
    /// positions are never scaled.
    pub rope_freq_base: f32,
}

impl SlidingWindow {
    /// Whether layer `il` uses the window.
    pub fn is_local(&self, il: usize) -> bool {
        self.layers.get(il).copied().unwrap_or(false)
    }
}

/// Shape and constants of a decoder, read from the GGUF metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct HParams {
    pub architecture: String,
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_ff: usize,
    /// Dimensions of each head that RoPE rotates (≤ `head_dim`).
    pub n_rot: usize,
    pub rope_style: RopeStyle,
    pub rope_freq_base: f32,
    /// Multiplier on positions (1 / linear scaling factor).
    pub rope_freq_scale: f32,
    pub rms_eps: f32,
    pub context_length: usize,
    /// Whether q/k/v projections carry biases.
    pub qkv_bias: bool,
    /// Whether each head of q and k is RMS-normalised (`attn_q_norm`/`attn_k_norm`) before
    /// RoPE (qwen3, gemma3).
    pub qk_norm: bool,
    /// Whether the attention and feed-forward outputs are RMS-normalised before their residual
    /// adds (gemma3's `post_attention_norm`, `post_ffw_norm`).
    pub post_norms: bool,
    pub ffn_activation: FfnActivation,
    /// Multiplier on the looked-up token embeddings (gemma3: `sqrt(n_embd)`).
    pub embd_scale: Option<f32>,
    /// gemma3: q is multiplied by this after RoPE and the attention scores are not scaled
    /// again. `None`: the scores are scaled by `1/sqrt(head_dim)` (llama.cpp's `kq_scale`).
    pub query_scale: Option<f32>,
    pub sliding_window: Option<SlidingWindow>,
    /// `cap * tanh(logits / cap)` on the output (gemma's `final_logit_softcapping`).
    pub final_logit_softcap: Option<f32>,
}

impl HParams {
    /// Reads the hyperparameters of `file`'s architecture from its metadata.
    pub fn from_gguf(file: &GgufModelFile) -> Result<Self> {
        let arch = file.architecture().to_owned();
        let (rope_style, qkv_bias, qk_norm) = match arch.as_str() {
            "llama" => (RopeStyle::Interleaved, false, false),
            "qwen2" => (RopeStyle::Neox, true, false),
            "qwen3" | "gemma3" => (RopeStyle::Neox, false, true),
            other => {
                return Err(EngineError::UnsupportedArchitecture {
                    path: file.path.clone(),
                    arch: other.to_owned(),
                    supported: SUPPORTED,
                });
            }
        };
        let gemma = arch == "gemma3";
        let key = |s: &str| file.arch_key(s);
        let n_embd = file.get_usize(&key("embedding_length"))?;
        let n_head = file.get_usize(&key("attention.head_count"))?;
        let n_head_kv = file
            .opt_usize(&key("attention.head_count_kv"))?
            .unwrap_or(n_head);
        let invalid = |reason: String| EngineError::InvalidGguf {
            path: file.path.clone(),
            reason,
        };
        if n_head == 0 || n_head_kv == 0 || n_head % n_head_kv != 0 {
            return Err(invalid(format!(
                "{n_head} attention heads cannot share {n_head_kv} key/value heads"
            )));
        }
        let head_dim = match file.opt_usize(&key("attention.key_length"))? {
            Some(d) => d,
            None if n_embd % n_head == 0 => n_embd / n_head,
            None => {
                return Err(invalid(format!(
                    "embedding length {n_embd} is not a multiple of {n_head} heads"
                )));
            }
        };
        if let Some(v) = file.opt_usize(&key("attention.value_length"))?
            && v != head_dim
        {
            return Err(invalid(format!(
                "value length {v} differs from key length {head_dim}"
            )));
        }
        let n_rot = file
            .opt_usize(&key("rope.dimension_count"))?
            .unwrap_or(head_dim);
        if n_rot == 0 || n_rot > head_dim || n_rot % 2 != 0 {
            return Err(invalid(format!(
                "RoPE dimension count {n_rot} does not fit head size {head_dim}"
            )));
        }
        let rope_freq_scale = match file.opt_str(&key("rope.scaling.type"))? {
            None | Some("none") => 1.0,
            Some("linear") => {
                let factor = file.get_f32(&key("rope.scaling.factor"))?;
                if !(factor.is_finite() && factor > 0.0) {
                    return Err(invalid(format!("RoPE scaling factor {factor}")));
                }
                1.0 / factor
            }
            Some(other) => {
                return Err(invalid(format!(
                    "RoPE scaling '{other}' is not supported (only linear)"
                )));
            }
        };
        let rope_freq_base = file.opt_f32(&key("rope.freq_base"))?.unwrap_or(10_000.0);
        let rms_eps = file.get_f32(&key("attention.layer_norm_rms_epsilon"))?;
        let n_layer = file.get_usize(&key("block_count"))?;
        let (sliding_window, embd_scale, query_scale, final_logit_softcap) = if gemma {
            #[allow(clippy::cast_precision_loss)]
            let embd_scale = (n_embd as f32).sqrt();
            // As llama.cpp: the 27B model (62 layers) scales by n_embd / n_head, the others by
            // the key length (gemma's query_pre_attn_scalar).
            let scalar = if n_layer == 62 {
                n_embd / n_head
            } else {
                head_dim
            };
            #[allow(clippy::cast_precision_loss)]
            let query_scale = 1.0 / (scalar as f32).sqrt();
            let softcap = file
                .opt_f32(&key("final_logit_softcapping"))?
                .filter(|&c| c != 0.0);
            if let Some(c) = softcap
                && !(c.is_finite() && c > 0.0)
            {
                return Err(invalid(format!("final logit soft-capping {c}")));
            }
            (
                sliding_window(file, n_layer)?,
                Some(embd_scale),
                Some(query_scale),
                softcap,
            )
        } else {
            (None, None, None, None)
        };
        let hp = Self {
            n_layer,
            n_embd,
            n_head,
            n_head_kv,
            head_dim,
            n_ff: file.get_usize(&key("feed_forward_length"))?,
            n_rot,
            rope_style,
            rope_freq_base,
            rope_freq_scale,
            rms_eps,
            context_length: file.get_usize(&key("context_length"))?,
            qkv_bias,
            qk_norm,
            post_norms: gemma,
            ffn_activation: if gemma {
                FfnActivation::GeluTanh
            } else {
                FfnActivation::Silu
            },
            embd_scale,
            query_scale,
            sliding_window,
            final_logit_softcap,
            architecture: arch,
        };
        if hp.n_layer == 0 || hp.n_embd == 0 || hp.context_length == 0 || hp.n_ff == 0 {
            return Err(invalid(format!("degenerate model shape {hp:?}")));
        }
        if !(rope_freq_base.is_finite() && rope_freq_base > 0.0) {
            return Err(invalid(format!("RoPE frequency base {rope_freq_base}")));
        }
        if !(rms_eps.is_finite() && rms_eps >= 0.0) {
            return Err(invalid(format!("RMS norm epsilon {rms_eps}")));
        }
        Ok(hp)
    }
}

/// Architectures [`load`] builds a forward pass for.
pub const SUPPORTED: &str = "llama, qwen2, qwen3, gemma3";

/// gemma3's sliding-window layers, as llama.cpp reads them: none when
/// `attention.sliding_window` is absent or 0; otherwise `attention.sliding_window_pattern`
/// (an array of per-layer flags, or a period `n` whose last layer of every `n` is global),
/// default period 6.
fn sliding_window(file: &GgufModelFile, n_layer: usize) -> Result<Option<SlidingWindow>> {
    let key = |s: &str| file.arch_key(s);
    let size = match file.opt_usize(&key("attention.sliding_window"))? {
        None | Some(0) => return Ok(None),
        Some(n) => n,
    };
    let invalid = |reason: String| EngineError::InvalidGguf {
        path: file.path.clone(),
        reason,
    };
    let pattern_key = key("attention.sliding_window_pattern");
    let layers = match file.metadata(&pattern_key) {
        Some(Value::Array(flags)) => {
            let flags: Option<Vec<bool>> = flags
                .iter()
                .map(|v| match v {
                    Value::Bool(b) => Some(*b),
                    _ => None,
                })
                .collect();
            match flags {
                Some(f) if f.len() == n_layer => f,
                _ => {
                    return Err(invalid(format!(
                        "'{pattern_key}' is not {n_layer} per-layer booleans"
                    )));
                }
            }
        }
        _ => swa_pattern(file.opt_usize(&pattern_key)?.unwrap_or(6), n_layer),
    };
    let rope_freq_base = file
        .opt_f32(&key("rope.freq_base_swa"))?
        .unwrap_or(10_000.0);
    if !(rope_freq_base.is_finite() && rope_freq_base > 0.0) {
        return Err(invalid(format!(
            "sliding-window RoPE frequency base {rope_freq_base}"
        )));
    }
    Ok(Some(SlidingWindow {
        size,
        layers,
        rope_freq_base,
    }))
}

/// llama.cpp's `set_swa_pattern`: with period `n`, the last layer of every `n` is global (all
/// layers local when `n` is 0).
fn swa_pattern(n: usize, n_layer: usize) -> Vec<bool> {
    (0..n_layer).map(|il| n == 0 || il % n < n - 1).collect()
}

/// Builds the forward pass for the file's architecture.
pub fn load(file: &GgufModelFile, config: &EngineConfig) -> Result<Box<dyn Forward>> {
    let hparams = HParams::from_gguf(file)?;
    let model = transformer::Transformer::load(file, hparams, config)?;
    Ok(Box::new(model))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_check_and_the_forward_pass_support_the_same_architectures() {
        let listed: Vec<&str> = SUPPORTED.split(", ").collect();
        assert_eq!(listed, crate::gguf::SUPPORTED_ARCHITECTURES);
    }

    #[test]
    fn every_sixth_layer_is_global_by_default() {
        let w = SlidingWindow {
            size: 512,
            layers: swa_pattern(6, 18),
            rope_freq_base: 10_000.0,
        };
        let global: Vec<usize> = (0..18).filter(|&il| !w.is_local(il)).collect();
        assert_eq!(global, [5, 11, 17], "gemma-3-270m's global layers");
        assert!(!w.is_local(18), "layers past the end are not local");
        assert_eq!(swa_pattern(0, 3), [true, true, true]);
        assert_eq!(swa_pattern(1, 3), [false, false, false]);
    }
}
