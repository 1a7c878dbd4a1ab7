//! The qwen3 and gemma3 forward passes on tiny synthetic GGUF files (random F32 weights,
//! written here), against a straightforward `f64` implementation of the same math.
//!
//! There is no small qwen3 model to test against, and no golden gemma3 prompt reaches the
//! model's 512-token sliding window, so these cover what the golden tests cannot: per-head
//! q/k norms with a key length that is not `n_embd / n_head`, grouped-query heads, NEOX RoPE,
//! gemma's embedding scale, query scale, post-norms and GELU gate, and the sliding window
//! (smaller than the prompt, on the short-batch, tiled (64+ rows) and split-decode attention
//! paths) with its own RoPE base on local layers, global layers every third layer.
//!
//! The engine rounds K, V (and, on short batches, Q) to f16 as llama.cpp's cache does, so the
//! logits agree to [`TOLERANCE`]; each check also makes sure the reference with one gemma
//! detail left out (no window, one RoPE base everywhere) lands well outside it, so the
//! comparison can tell those apart.
#![allow(clippy::unwrap_used, clippy::cast_precision_loss)]

use std::io::Write;
use std::path::Path;

use hearth_engine::EngineConfig;
use hearth_engine::gguf::GgufModelFile;
use hearth_engine::model;

/// Largest allowed `|engine - reference|` over the logits.
const TOLERANCE: f64 = 0.015;

/// A GGUF metadata value.
enum Kv {
    U32(u32),
    F32(f32),
    Str(&'static str),
}

/// Writes a GGUF v3 file with `kvs` and F32 `tensors` (name, GGUF dims innermost first, data).
fn write_gguf(path: &Path, kvs: &[(String, Kv)], tensors: &[(String, Vec<usize>, Vec<f32>)]) {
    const ALIGN: usize = 32;
    let mut b: Vec<u8> = Vec::new();
    let s = |b: &mut Vec<u8>, s: &str| {
        b.extend((s.len() as u64).to_le_bytes());
        b.extend(s.as_bytes());
    };
    b.extend(b"GGUF");
    b.extend(3u32.to_le_bytes());
    b.extend((tensors.len() as u64).to_le_bytes());
    b.extend((kvs.len() as u64).to_le_bytes());
    for (k, v) in kvs {
        s(&mut b, k);
        match v {
            Kv::U32(x) => {
                b.extend(4u32.to_le_bytes());
                b.extend(x.to_le_bytes());
            }
            Kv::F32(x) => {
                b.extend(6u32.to_le_bytes());
                b.extend(x.to_le_bytes());
            }
            Kv::Str(x) => {
                b.extend(8u32.to_le_bytes());
                s(&mut b, x);
            }
        }
    }
    let mut offset = 0usize;
    for (name, dims, data) in tensors {
        assert_eq!(dims.iter().product::<usize>(), data.len(), "{name}");
        s(&mut b, name);
        b.extend((dims.len() as u32).to_le_bytes());
        for &d in dims {
            b.extend((d as u64).to_le_bytes());
        }
        b.extend(0u32.to_le_bytes()); // F32
        b.extend((offset as u64).to_le_bytes());
        offset = (offset + data.len() * 4).next_multiple_of(ALIGN);
    }
    b.resize(b.len().next_multiple_of(ALIGN), 0);
    for (_, _, data) in tensors {
        for &x in data {
            b.extend(x.to_le_bytes());
        }
        b.resize(b.len().next_multiple_of(ALIGN), 0);
    }
    std::fs::File::create(path).unwrap().write_all(&b).unwrap();
}

/// xorshift64*: deterministic uniform values in `[-1, 1)`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40;
        (x as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next() * scale).collect()
    }

    /// Norm weights around 1.
    fn norm(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| 1.0 + 0.3 * self.next()).collect()
    }
}

/// Which architecture a synthetic model is.
#[derive(Clone, Copy, PartialEq)]
enum Arch {
    Qwen3,
    Gemma3,
}

/// Shape and weights of a synthetic model; matrices row-major `[out][in]`.
struct Spec {
    arch: Arch,
    n_embd: usize,
    n_head: usize,
    n_head_kv: usize,
    head_dim: usize,
    n_ff: usize,
    vocab: usize,
    rope_base: f64,
    rms_eps: f64,
    /// gemma3: window size and the period of global layers.
    window: usize,
    pattern: usize,
    embd: Vec<f32>,
    output_norm: Vec<f32>,
    /// Untied output (qwen3); gemma3 uses the embeddings.
    output: Option<Vec<f32>>,
    layers: Vec<LayerW>,
}

struct LayerW {
    attn_norm: Vec<f32>,
    wq: Vec<f32>,
    wk: Vec<f32>,
    wv: Vec<f32>,
    q_norm: Vec<f32>,
    k_norm: Vec<f32>,
    wo: Vec<f32>,
    post_attn: Vec<f32>,
    ffn_norm: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    down: Vec<f32>,
    post_ffn: Vec<f32>,
}

impl Spec {
    fn new(arch: Arch, n_layer: usize, seed: u64) -> Self {
        let (n_embd, n_head, n_head_kv, head_dim, n_ff, vocab) = (32, 4, 2, 16, 48, 40);
        let mut r = Rng(seed);
        let q_dim = n_head * head_dim;
        let kv_dim = n_head_kv * head_dim;
        let layers = (0..n_layer)
            .map(|_| LayerW {
                attn_norm: r.norm(n_embd),
                wq: r.vec(q_dim * n_embd, 0.3),
                wk: r.vec(kv_dim * n_embd, 0.3),
                wv: r.vec(kv_dim * n_embd, 0.3),
                q_norm: r.norm(head_dim),
                k_norm: r.norm(head_dim),
                wo: r.vec(n_embd * q_dim, 0.2),
                post_attn: r.norm(n_embd),
                ffn_norm: r.norm(n_embd),
                gate: r.vec(n_ff * n_embd, 0.3),
                up: r.vec(n_ff * n_embd, 0.3),
                down: r.vec(n_embd * n_ff, 0.2),
                post_ffn: r.norm(n_embd),
            })
            .collect();
        Self {
            arch,
            n_embd,
            n_head,
            n_head_kv,
            head_dim,
            n_ff,
            vocab,
            rope_base: 1_000_000.0,
            rms_eps: 1e-6,
            window: 5,
            pattern: 3,
            embd: r.vec(vocab * n_embd, if arch == Arch::Gemma3 { 0.2 } else { 1.0 }),
            output_norm: r.norm(n_embd),
            output: (arch == Arch::Qwen3).then(|| r.vec(vocab * n_embd, 0.3)),
            layers,
        }
    }

    fn name(&self) -> &'static str {
        match self.arch {
            Arch::Qwen3 => "qwen3",
            Arch::Gemma3 => "gemma3",
        }
    }

    fn write(&self, path: &Path) {
        let a = self.name();
        let key = |k: &str| format!("{a}.{k}");
        let u = |x: usize| Kv::U32(u32::try_from(x).unwrap());
        let mut kvs = vec![
            ("general.architecture".to_owned(), Kv::Str(a)),
            (key("context_length"), u(4096)),
            (key("embedding_length"), u(self.n_embd)),
            (key("block_count"), u(self.layers.len())),
            (key("feed_forward_length"), u(self.n_ff)),
            (key("attention.head_count"), u(self.n_head)),
            (key("attention.head_count_kv"), u(self.n_head_kv)),
            (key("attention.key_length"), u(self.head_dim)),
            (key("attention.value_length"), u(self.head_dim)),
            (
                key("attention.layer_norm_rms_epsilon"),
                Kv::F32(self.rms_eps as f32),
            ),
            (key("rope.freq_base"), Kv::F32(self.rope_base as f32)),
        ];
        if self.arch == Arch::Gemma3 {
            kvs.push((key("attention.sliding_window"), u(self.window)));
            kvs.push((key("attention.sliding_window_pattern"), u(self.pattern)));
        }
        let (e, hd) = (self.n_embd, self.head_dim);
        let (q_dim, kv_dim) = (self.n_head * hd, self.n_head_kv * hd);
        let mut t = vec![
            (
                "token_embd.weight".to_owned(),
                vec![e, self.vocab],
                self.embd.clone(),
            ),
            (
                "output_norm.weight".to_owned(),
                vec![e],
                self.output_norm.clone(),
            ),
        ];
        if let Some(o) = &self.output {
            t.push(("output.weight".to_owned(), vec![e, self.vocab], o.clone()));
        }
        for (i, l) in self.layers.iter().enumerate() {
            let n = |s: &str| format!("blk.{i}.{s}.weight");
            t.push((n("attn_norm"), vec![e], l.attn_norm.clone()));
            t.push((n("attn_q"), vec![e, q_dim], l.wq.clone()));
            t.push((n("attn_k"), vec![e, kv_dim], l.wk.clone()));
            t.push((n("attn_v"), vec![e, kv_dim], l.wv.clone()));
            t.push((n("attn_q_norm"), vec![hd], l.q_norm.clone()));
            t.push((n("attn_k_norm"), vec![hd], l.k_norm.clone()));
            t.push((n("attn_output"), vec![q_dim, e], l.wo.clone()));
            t.push((n("ffn_norm"), vec![e], l.ffn_norm.clone()));
            t.push((n("ffn_gate"), vec![e, self.n_ff], l.gate.clone()));
            t.push((n("ffn_up"), vec![e, self.n_ff], l.up.clone()));
            t.push((n("ffn_down"), vec![self.n_ff, e], l.down.clone()));
            if self.arch == Arch::Gemma3 {
                t.push((n("post_attention_norm"), vec![e], l.post_attn.clone()));
                t.push((n("post_ffw_norm"), vec![e], l.post_ffn.clone()));
            }
        }
        write_gguf(path, &kvs, &t);
    }
}

/// Deliberate departures from the real math, to show the comparison would notice them.
#[derive(Clone, Copy, Default)]
struct Variant {
    no_window: bool,
    one_rope_base: bool,
    no_qk_norm: bool,
}

fn rms(x: &[f64], w: &[f32], eps: f64) -> Vec<f64> {
    let mean = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let s = 1.0 / (mean + eps).sqrt();
    x.iter()
        .zip(w)
        .map(|(v, &w)| v * s * f64::from(w))
        .collect()
}

/// `w` (`[out][in]`, row-major) times `x`.
fn mv(w: &[f32], x: &[f64]) -> Vec<f64> {
    w.chunks_exact(x.len())
        .map(|row| row.iter().zip(x).map(|(&a, b)| f64::from(a) * b).sum())
        .collect()
}

/// NEOX RoPE of one head at `pos`.
fn rope(head: &mut [f64], pos: usize, base: f64) {
    let half = head.len() / 2;
    for i in 0..half {
        let theta = pos as f64 * base.powf(-2.0 * i as f64 / head.len() as f64);
        let (s, c) = theta.sin_cos();
        let (a, b) = (head[i], head[i + half]);
        head[i] = a * c - b * s;
        head[i + half] = a * s + b * c;
    }
}

fn gelu_tanh(x: f64) -> f64 {
    0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044_715 * x * x * x)).tanh())
}

/// The logits after each of `tokens`, computed from scratch in `f64`.
fn reference(spec: &Spec, tokens: &[u32], v: Variant) -> Vec<Vec<f64>> {
    let gemma = spec.arch == Arch::Gemma3;
    let (e, hd) = (spec.n_embd, spec.head_dim);
    let group = spec.n_head / spec.n_head_kv;
    let mut x: Vec<Vec<f64>> = tokens
        .iter()
        .map(|&t| {
            let row = &spec.embd[t as usize * e..(t as usize + 1) * e];
            let s = if gemma { (e as f64).sqrt() } else { 1.0 };
            row.iter().map(|&v| f64::from(v) * s).collect()
        })
        .collect();
    for (il, l) in spec.layers.iter().enumerate() {
        let local = gemma && il % spec.pattern < spec.pattern - 1;
        let base = if local && !v.one_rope_base {
            10_000.0
        } else {
            spec.rope_base
        };
        let window = (local && !v.no_window).then_some(spec.window);
        let mut qs = Vec::new();
        let mut ks = Vec::new();
        let mut vs = Vec::new();
        for (pos, xr) in x.iter().enumerate() {
            let h = rms(xr, &l.attn_norm, spec.rms_eps);
            let mut q = mv(&l.wq, &h);
            let mut k = mv(&l.wk, &h);
            for (x, norm) in [(&mut q, &l.q_norm), (&mut k, &l.k_norm)] {
                for head in x.chunks_exact_mut(hd) {
                    if !v.no_qk_norm {
                        let n = rms(head, norm, spec.rms_eps);
                        head.copy_from_slice(&n);
                    }
                    rope(head, pos, base);
                }
            }
            qs.push(q);
            ks.push(k);
            vs.push(mv(&l.wv, &h));
        }
        // gemma: q·k / sqrt(key_length) (its query_pre_attn_scalar), as qwen3's kq scale.
        let scale = 1.0 / (hd as f64).sqrt();
        for (i, xr) in x.iter_mut().enumerate() {
            let mut attn = vec![0f64; spec.n_head * hd];
            for h in 0..spec.n_head {
                let kvh = h / group;
                let q = &qs[i][h * hd..(h + 1) * hd];
                let seen: Vec<usize> = (0..=i)
                    .filter(|&j| window.is_none_or(|w| i - j < w))
                    .collect();
                let scores: Vec<f64> = seen
                    .iter()
                    .map(|&j| {
                        let k = &ks[j][kvh * hd..(kvh + 1) * hd];
                        q.iter().zip(k).map(|(a, b)| a * b).sum::<f64>() * scale
                    })
                    .collect();
                let m = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let p: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let sum: f64 = p.iter().sum();
                for (&j, p) in seen.iter().zip(&p) {
                    for d in 0..hd {
                        attn[h * hd + d] += p / sum * vs[j][kvh * hd + d];
                    }
                }
            }
            let mut o = mv(&l.wo, &attn);
            if gemma {
                o = rms(&o, &l.post_attn, spec.rms_eps);
            }
            for (a, b) in xr.iter_mut().zip(&o) {
                *a += b;
            }
            let h = rms(xr, &l.ffn_norm, spec.rms_eps);
            let g = mv(&l.gate, &h);
            let u = mv(&l.up, &h);
            let act: Vec<f64> = g
                .iter()
                .zip(&u)
                .map(|(&g, &u)| {
                    if gemma {
                        gelu_tanh(g) * u
                    } else {
                        g / (1.0 + (-g).exp()) * u
                    }
                })
                .collect();
            let mut d = mv(&l.down, &act);
            if gemma {
                d = rms(&d, &l.post_ffn, spec.rms_eps);
            }
            for (a, b) in xr.iter_mut().zip(&d) {
                *a += b;
            }
        }
    }
    let out = spec.output.as_ref().unwrap_or(&spec.embd);
    x.iter()
        .map(|xr| mv(out, &rms(xr, &spec.output_norm, spec.rms_eps)))
        .collect()
}

fn max_diff(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(&a, b)| (f64::from(a) - b).abs())
        .fold(0.0, f64::max)
}

/// Runs `prompt` through the engine in one batch, then decodes `extra` more tokens one at a
/// time, checking the logits of every call against the reference (and against `wrong`
/// variants, which must be off by more than the tolerance).
fn check(spec: &Spec, prompt_len: usize, extra: usize, wrong: &[(&str, Variant)]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    spec.write(&path);
    let file = GgufModelFile::open(&path).unwrap();
    let mut forward = model::load(&file, &EngineConfig::default()).unwrap();
    let vocab = u32::try_from(spec.vocab).unwrap();
    let tokens: Vec<u32> = (0..prompt_len + extra)
        .map(|i| u32::try_from(i * 7 + 3).unwrap() % vocab)
        .collect();
    let want = reference(spec, &tokens, Variant::default());
    let wrongs: Vec<(&str, Vec<Vec<f64>>)> = wrong
        .iter()
        .map(|(name, v)| (*name, reference(spec, &tokens, *v)))
        .collect();
    let mut got = vec![forward.forward(&tokens[..prompt_len], 0).unwrap()];
    for (i, &t) in tokens[prompt_len..].iter().enumerate() {
        got.push(forward.forward(&[t], prompt_len + i).unwrap());
    }
    for (step, logits) in got.iter().enumerate() {
        let at = prompt_len - 1 + step;
        let d = max_diff(logits, &want[at]);
        let scale = want[at].iter().fold(0f64, |m, v| m.max(v.abs()));
        eprintln!(
            "{} prompt {prompt_len}, position {at}: max |engine - reference| {d:.5} (logits up to {scale:.2})",
            spec.name()
        );
        assert!(
            d < TOLERANCE,
            "{} position {at}: logits differ by {d}",
            spec.name()
        );
        for (name, w) in &wrongs {
            let dw = max_diff(logits, &w[at]);
            eprintln!("  the reference {name}: {dw:.5} away");
            assert!(
                dw > 2.0 * TOLERANCE,
                "{} position {at}: the reference {name} is only {dw} away; the check cannot see it",
                spec.name()
            );
        }
    }
}

#[test]
fn qwen3_matches_the_reference() {
    let spec = Spec::new(Arch::Qwen3, 2, 0x5eed_0001);
    let wrong = [(
        "without the q/k norms",
        Variant {
            no_qk_norm: true,
            ..Variant::default()
        },
    )];
    // Short batch (vector attention kernel), then decoding.
    check(&spec, 9, 3, &wrong);
    // 70 rows: the tiled attention kernel.
    check(&spec, 70, 1, &wrong);
}

#[test]
fn gemma3_matches_the_reference_with_a_window_smaller_than_the_prompt() {
    // Layers 0, 1, 3, 4 are local (window 5, RoPE base 10000), 2 and 5 global.
    let spec = Spec::new(Arch::Gemma3, 6, 0x5eed_0002);
    let wrong = [
        (
            "without the sliding window",
            Variant {
                no_window: true,
                ..Variant::default()
            },
        ),
        (
            "with one RoPE base for all layers",
            Variant {
                one_rope_base: true,
                ..Variant::default()
            },
        ),
    ];
    check(&spec, 12, 3, &wrong);
    // The tiled kernel, with the window starting inside a 64-key tile.
    check(&spec, 70, 2, &wrong);
}

#[test]
fn gemma3_window_on_the_split_decode_path() {
    // From 512 cached positions on, a single-row decode splits the keys in two halves; with a
    // window of 40 at position 600 the first half is masked entirely.
    let mut spec = Spec::new(Arch::Gemma3, 3, 0x5eed_0003);
    spec.window = 40;
    check(
        &spec,
        600,
        2,
        &[(
            "without the sliding window",
            Variant {
                no_window: true,
                ..Variant::default()
            },
        )],
    );
}
