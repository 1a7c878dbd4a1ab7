//! The decoder shared by llama, qwen2, qwen3 and gemma3: pre-norm attention and gated
//! feed-forward blocks, with the per-architecture parts switched by [`HParams`] (q/k/v biases,
//! per-head q/k norms, post-norms, GELU or SiLU gate, sliding-window layers with their own
//! RoPE base, embedding scale, logit soft-capping).

use candle_core::Device;
use candle_core::quantized::QTensor;

use super::embeddings::EmbeddingRows;
use super::ops::{self, AttnShape, KvCache, RopeTable};
use super::pool::Pool;
use super::quant::{QMatrix, matmul_shared};
use super::{FfnActivation, Forward, HParams};
use crate::gguf::{GgufModelFile, TensorReader};
use crate::{EngineConfig, EngineError, KvCacheType, Result};

struct Layer {
    attn_norm: Vec<f32>,
    wq: QMatrix,
    wk: QMatrix,
    wv: QMatrix,
    bq: Option<Vec<f32>>,
    bk: Option<Vec<f32>>,
    bv: Option<Vec<f32>>,
    /// Per-head RMS norm weights of q and k (`head_dim` each).
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    wo: QMatrix,
    /// RMS norm of the attention output before its residual add (gemma3).
    attn_post_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    gate: QMatrix,
    up: QMatrix,
    down: QMatrix,
    /// RMS norm of the feed-forward output before its residual add (gemma3).
    ffn_post_norm: Option<Vec<f32>>,
    /// Sliding-window (local) layer.
    local: bool,
}

/// A loaded decoder with its KV cache.
pub struct Transformer {
    hp: HParams,
    vocab: usize,
    /// Token embedding rows, read from the file as needed (see [`EmbeddingRows`]).
    embeddings: EmbeddingRows,
    layers: Vec<Layer>,
    output_norm: Vec<f32>,
    output: QMatrix,
    rope: RopeTable,
    /// RoPE of the sliding-window layers, when the model has them.
    rope_local: Option<RopeTable>,
    cache: Vec<KvCache>,
    /// Positions in the cache.
    cached: usize,
    /// Most positions a sequence may reach (the model's context, capped by the config).
    max_positions: usize,
    /// The engine's own worker threads for the matrix products (not candle's pool).
    pool: Pool,
}

/// Loads tensors and checks their shapes against the hyperparameters.
struct Loader<'a> {
    file: &'a GgufModelFile,
    reader: TensorReader<'a>,
}

impl Loader<'_> {
    fn shape_error(&self, name: &str, want: &[usize], got: &[usize]) -> EngineError {
        EngineError::InvalidGguf {
            path: self.file.path.clone(),
            reason: format!("tensor '{name}' has shape {got:?}, expected {want:?}"),
        }
    }

    fn qtensor(&mut self, name: &str, want: &[usize]) -> Result<QTensor> {
        let t = self.reader.load(name)?;
        if t.shape().dims() != want {
            return Err(self.shape_error(name, want, t.shape().dims()));
        }
        Ok(t)
    }

    fn matmul(&mut self, name: &str, rows: usize, cols: usize) -> Result<QMatrix> {
        let (_, dims) = self.reader.info(name)?;
        if dims != [rows, cols] {
            return Err(self.shape_error(name, &[rows, cols], &dims));
        }
        QMatrix::load(&mut self.reader, name, rows, cols)
    }

    fn vector(&mut self, name: &str, len: usize) -> Result<Vec<f32>> {
        let t = self.qtensor(name, &[len])?;
        Ok(t.dequantize(&Device::Cpu)?.to_vec1::<f32>()?)
    }
}

impl Transformer {
    pub fn load(file: &GgufModelFile, hp: HParams, config: &EngineConfig) -> Result<Self> {
        let mut l = Loader {
            file,
            reader: file.tensor_reader()?,
        };
        let n_embd = hp.n_embd;
        let q_dim = hp.n_head * hp.head_dim;
        let kv_dim = hp.n_head_kv * hp.head_dim;

        let embeddings = EmbeddingRows::open(file, "token_embd.weight", n_embd)?;
        let vocab = embeddings.vocab();
        let output = if file.has_tensor("output.weight") {
            l.matmul("output.weight", vocab, n_embd)?
        } else {
            // Tied: the projection's kernel gets its own copy; the lookups read the file.
            l.matmul("token_embd.weight", vocab, n_embd)?
        };
        let output_norm = l.vector("output_norm.weight", n_embd)?;

        let mut layers = Vec::with_capacity(hp.n_layer);
        for i in 0..hp.n_layer {
            let name = |s: &str| format!("blk.{i}.{s}");
            let bias = |l: &mut Loader, s: &str, len| -> Result<Option<Vec<f32>>> {
                if hp.qkv_bias {
                    l.vector(&name(s), len).map(Some)
                } else {
                    Ok(None)
                }
            };
            let opt = |l: &mut Loader, s: &str, len, want: bool| -> Result<Option<Vec<f32>>> {
                if want {
                    l.vector(&name(s), len).map(Some)
                } else {
                    Ok(None)
                }
            };
            layers.push(Layer {
                attn_norm: l.vector(&name("attn_norm.weight"), n_embd)?,
                wq: l.matmul(&name("attn_q.weight"), q_dim, n_embd)?,
                wk: l.matmul(&name("attn_k.weight"), kv_dim, n_embd)?,
                wv: l.matmul(&name("attn_v.weight"), kv_dim, n_embd)?,
                bq: bias(&mut l, "attn_q.bias", q_dim)?,
                bk: bias(&mut l, "attn_k.bias", kv_dim)?,
                bv: bias(&mut l, "attn_v.bias", kv_dim)?,
                q_norm: opt(&mut l, "attn_q_norm.weight", hp.head_dim, hp.qk_norm)?,
                k_norm: opt(&mut l, "attn_k_norm.weight", hp.head_dim, hp.qk_norm)?,
                wo: l.matmul(&name("attn_output.weight"), n_embd, q_dim)?,
                attn_post_norm: opt(&mut l, "post_attention_norm.weight", n_embd, hp.post_norms)?,
                ffn_norm: l.vector(&name("ffn_norm.weight"), n_embd)?,
                gate: l.matmul(&name("ffn_gate.weight"), hp.n_ff, n_embd)?,
                up: l.matmul(&name("ffn_up.weight"), hp.n_ff, n_embd)?,
                down: l.matmul(&name("ffn_down.weight"), n_embd, hp.n_ff)?,
                ffn_post_norm: opt(&mut l, "post_ffw_norm.weight", n_embd, hp.post_norms)?,
                local: hp.sliding_window.as_ref().is_some_and(|w| w.is_local(i)),
            });
        }
        let max_positions = config
            .max_context
            .map_or(hp.context_length, |cap| cap.min(hp.context_length));
        log::debug!(
            "loaded {} model: {} layers, {} embd, {} heads ({} kv), vocab {vocab}, context {}",
            hp.architecture,
            hp.n_layer,
            hp.n_embd,
            hp.n_head,
            hp.n_head_kv,
            hp.context_length
        );
        if config.kv_cache == KvCacheType::Q8_0 && !hp.head_dim.is_multiple_of(32) {
            return Err(EngineError::UnsupportedKvCache {
                path: file.path.clone(),
                kv_cache: config.kv_cache,
                head_dim: hp.head_dim,
            });
        }
        let threads = config.threads.unwrap_or_else(available_threads).max(1);
        let pool = Pool::new(threads).map_err(|e| EngineError::Threads {
            threads,
            reason: e.to_string(),
        })?;
        Ok(Self {
            pool,
            rope: RopeTable::new(hp.n_rot, hp.rope_freq_base, hp.rope_freq_scale),
            rope_local: hp
                .sliding_window
                .as_ref()
                .map(|w| RopeTable::new(hp.n_rot, w.rope_freq_base, 1.0)),
            cache: (0..hp.n_layer)
                .map(|_| KvCache::new(config.kv_cache, kv_dim, max_positions))
                .collect(),
            cached: 0,
            max_positions,
            vocab,
            embeddings,
            layers,
            output_norm,
            output,
            hp,
        })
    }

    fn check_request(&self, tokens: &[u32], start_pos: usize) -> Result<()> {
        if tokens.is_empty() {
            return Err(EngineError::InvalidRequest(
                "forward needs at least one token".into(),
            ));
        }
        if start_pos > self.cached {
            return Err(EngineError::InvalidRequest(format!(
                "forward at position {start_pos}, but only {} positions are cached",
                self.cached
            )));
        }
        if start_pos + tokens.len() > self.max_positions {
            return Err(EngineError::ContextLength {
                prompt_tokens: start_pos + tokens.len(),
                max_tokens: 0,
                context_length: self.max_positions,
            });
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= self.vocab) {
            return Err(EngineError::InvalidRequest(format!(
                "token id {bad} is outside the vocabulary of {}",
                self.vocab
            )));
        }
        Ok(())
    }
}

/// Logical CPUs this process may run on: the standard library reads the affinity mask and the
/// cgroup CPU quota (`cpu.max`), so a container or a `taskset` limit is respected.
pub fn available_threads() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// Unpacks exactly `N` results of [`matmul_shared`].
fn take<const N: usize>(v: Vec<Vec<f32>>) -> Result<[Vec<f32>; N]> {
    <[Vec<f32>; N]>::try_from(v)
        .map_err(|_| EngineError::InvalidRequest("matmul result count mismatch".into()))
}

impl Transformer {
    /// Drops every cached position from `len` on.
    fn truncate_cache(&mut self, len: usize) {
        for c in &mut self.cache {
            c.truncate(len);
        }
        self.cached = self.cached.min(len);
    }

    fn run(&mut self, tokens: &[u32], start_pos: usize) -> Result<Vec<f32>> {
        let hp = &self.hp;
        let rows = tokens.len();
        self.rope.ensure(start_pos + rows);
        if let Some(r) = &mut self.rope_local {
            r.ensure(start_pos + rows);
        }
        let mut hidden = self.embeddings.rows(tokens)?;
        if let Some(s) = hp.embd_scale {
            ops::scale(&mut hidden, s);
        }
        #[allow(clippy::cast_precision_loss)]
        let kq_scale = match hp.query_scale {
            Some(_) => 1.0,
            None => 1.0 / (hp.head_dim as f32).sqrt(),
        };
        let full = AttnShape {
            n_head: hp.n_head,
            n_head_kv: hp.n_head_kv,
            head_dim: hp.head_dim,
            scale: kq_scale,
            window: None,
        };
        let mut normed = vec![0f32; hidden.len()];
        let mut attn = vec![0f32; rows * hp.n_head * hp.head_dim];
        // Rows still carried: after the last layer's attention only the last position matters
        // (llama.cpp's `inp_out_ids`), so its feed-forward block runs on that row alone.
        let mut m = rows;
        let last_layer = self.layers.len().saturating_sub(1);
        for (il, (layer, cache)) in self.layers.iter().zip(self.cache.iter_mut()).enumerate() {
            let (rope, shape) = match (&self.rope_local, &hp.sliding_window) {
                (Some(rope), Some(w)) if layer.local => (
                    rope,
                    AttnShape {
                        window: Some(w.size),
                        ..full
                    },
                ),
                _ => (&self.rope, full),
            };
            ops::rms_norm(
                &self.pool,
                &hidden,
                &layer.attn_norm,
                hp.rms_eps,
                &mut normed,
            );
            let [mut q, mut k, mut v] = take(matmul_shared(
                &self.pool,
                &[&layer.wq, &layer.wk, &layer.wv],
                &normed,
                rows,
            )?)?;
            for (x, b) in [
                (&mut q, &layer.bq),
                (&mut k, &layer.bk),
                (&mut v, &layer.bv),
            ] {
                if let Some(b) = b {
                    ops::add_bias(x, b);
                }
            }
            if let Some(w) = &layer.q_norm {
                ops::rms_norm_in_place(&self.pool, &mut q, w, hp.rms_eps);
            }
            if let Some(w) = &layer.k_norm {
                ops::rms_norm_in_place(&self.pool, &mut k, w, hp.rms_eps);
            }
            rope.apply(
                &self.pool,
                &mut q,
                start_pos,
                hp.n_head,
                hp.head_dim,
                hp.rope_style,
            );
            rope.apply(
                &self.pool,
                &mut k,
                start_pos,
                hp.n_head_kv,
                hp.head_dim,
                hp.rope_style,
            );
            if let Some(s) = hp.query_scale {
                ops::scale(&mut q, s);
            }
            cache.append(&k, &v);
            ops::attention(&self.pool, &q, cache, start_pos, shape, &mut attn);
            let mut o = layer.wo.matmul(&self.pool, &attn, rows)?;
            if il == last_layer && rows > 1 {
                let drop = (rows - 1) * hp.n_embd;
                o.drain(..drop);
                hidden.drain(..drop);
                normed.truncate(hp.n_embd);
                m = 1;
            }
            if let Some(w) = &layer.attn_post_norm {
                ops::rms_norm_in_place(&self.pool, &mut o, w, hp.rms_eps);
            }
            for (h, o) in hidden.iter_mut().zip(&o) {
                *h += o;
            }

            ops::rms_norm(
                &self.pool,
                &hidden,
                &layer.ffn_norm,
                hp.rms_eps,
                &mut normed,
            );
            let [mut gate, up] = take(matmul_shared(
                &self.pool,
                &[&layer.gate, &layer.up],
                &normed,
                m,
            )?)?;
            match hp.ffn_activation {
                FfnActivation::Silu => ops::swiglu(&self.pool, &mut gate, &up),
                FfnActivation::GeluTanh => ops::geglu(&self.pool, &mut gate, &up),
            }
            let mut down = layer.down.matmul(&self.pool, &gate, m)?;
            if let Some(w) = &layer.ffn_post_norm {
                ops::rms_norm_in_place(&self.pool, &mut down, w, hp.rms_eps);
            }
            for (h, d) in hidden.iter_mut().zip(&down) {
                *h += d;
            }
        }
        self.cached = start_pos + rows;
        let last = &hidden[(m - 1) * hp.n_embd..];
        let mut last_normed = vec![0f32; hp.n_embd];
        ops::rms_norm(
            &self.pool,
            last,
            &self.output_norm,
            hp.rms_eps,
            &mut last_normed,
        );
        let mut logits = self.output.matmul(&self.pool, &last_normed, 1)?;
        if let Some(cap) = hp.final_logit_softcap {
            ops::softcap(&mut logits, cap);
        }
        Ok(logits)
    }
}

impl Forward for Transformer {
    fn forward(&mut self, tokens: &[u32], start_pos: usize) -> Result<Vec<f32>> {
        self.check_request(tokens, start_pos)?;
        // Re-running from an earlier position drops what was cached after it.
        self.truncate_cache(start_pos);
        let result = self.run(tokens, start_pos);
        if result.is_err() {
            // Layers that already appended this call's keys must not keep them.
            self.truncate_cache(start_pos);
        }
        result
    }

    fn reset(&mut self) {
        for c in &mut self.cache {
            c.clear();
        }
        self.cached = 0;
    }

    fn context_length(&self) -> usize {
        self.hp.context_length
    }
}
