//! The non-matmul arithmetic of a decoder layer, over plain `f32` slices, following ggml's
//! CPU kernels closely enough to reproduce llama.cpp's greedy choices.

use super::RopeStyle;
use super::ggml_math;
use super::pool::Pool;
use crate::KvCacheType;

/// RMS-normalises each `weight.len()`-wide row of `x` into `out`, then scales by `weight`.
/// As ggml: the sum of squares in `f64`, `1/sqrt(mean + eps)` in `f32`
/// ([`ggml_math::rms_norm`]); rows shared out over the pool's threads when there are many.
pub fn rms_norm(pool: &Pool, x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let n = weight.len();
    by_rows(pool, n, out, &|first, out| {
        let x = &x[first * n..first * n + out.len()];
        ggml_math::rms_norm(x, weight, eps, out);
    });
}

/// [`rms_norm`] of `x` into itself (same arithmetic: the row's scale is computed before any
/// value of the row is overwritten).
pub fn rms_norm_in_place(pool: &Pool, x: &mut [f32], weight: &[f32], eps: f32) {
    by_rows(pool, weight.len(), x, &|_, rows| {
        ggml_math::rms_norm_in_place(rows, weight, eps);
    });
}

/// Calls `f(first_row, rows)` on shares of whole `row_len`-wide rows of `data`, one share per
/// pool thread when `data` has at least [`PARALLEL_MIN_ELEMENTS`] values and two rows,
/// otherwise on all of it here. For row-by-row arithmetic each row's result is the same
/// whichever thread computes it.
fn by_rows(pool: &Pool, row_len: usize, data: &mut [f32], f: &(dyn Fn(usize, &mut [f32]) + Sync)) {
    let rows = data.len() / row_len.max(1);
    let threads = pool.threads();
    if threads <= 1 || rows < 2 || data.len() < PARALLEL_MIN_ELEMENTS {
        f(0, data);
        return;
    }
    let per = rows.div_ceil(threads);
    let shares: Vec<(usize, &mut [f32])> = data
        .chunks_mut(per * row_len)
        .enumerate()
        .map(|(i, share)| (i * per, share))
        .collect();
    pool.run_each(shares, |(first, share)| f(first, share));
}

/// `silu(gate) * up`, elementwise, into `gate`, with ggml's vector `expf`
/// ([`ggml_math::swiglu`]); on the pool's threads when `gate` is large ([`elementwise`]).
pub fn swiglu(pool: &Pool, gate: &mut [f32], up: &[f32]) {
    elementwise(pool, gate, up, &|g, u| ggml_math::swiglu(g, u));
}

/// `gelu(gate) * up`, elementwise, into `gate`, as ggml's CPU `geglu` computes it: the gate
/// saturates outside ±10 (0 below, the identity above); inside, it is rounded to f16 and looked
/// up in a table of f16-rounded tanh-approximation GELU values (`GGML_GELU_FP16`;
/// [`ggml_math::geglu`]). On the pool's threads when `gate` is large ([`elementwise`]).
pub fn geglu(pool: &Pool, gate: &mut [f32], up: &[f32]) {
    let table = gelu_table();
    elementwise(pool, gate, up, &|g, u| ggml_math::geglu(g, u, table));
}

/// Gate values (a prompt's worth of rows) from which the FFN activation runs on the pool's
/// threads; a decode step's single row stays on the caller, where handing it out costs more
/// than it saves.
const PARALLEL_MIN_ELEMENTS: usize = 1 << 14;

/// Calls `f` on shares of `gate` and the matching parts of `up`, one share per pool thread
/// when `gate` has at least [`PARALLEL_MIN_ELEMENTS`] values, otherwise on all of it here.
/// Shares start at multiples of 16 from the start of `gate`, so an `f` that treats whole
/// groups of 16 apart from its leftovers (as [`ggml_math::swiglu`] does) sees the same groups
/// and leftovers; for an elementwise `f` each value is the same whichever thread computes it.
fn elementwise(pool: &Pool, gate: &mut [f32], up: &[f32], f: &(dyn Fn(&mut [f32], &[f32]) + Sync)) {
    let threads = pool.threads();
    if threads <= 1 || gate.len() < PARALLEL_MIN_ELEMENTS {
        f(gate, up);
        return;
    }
    let per = gate.len().div_ceil(threads).next_multiple_of(16);
    let shares: Vec<(&mut [f32], &[f32])> = gate
        .chunks_mut(per)
        .enumerate()
        .map(|(i, g)| {
            let start = (i * per).min(up.len());
            let end = (start + g.len()).min(up.len());
            (g, &up[start..end])
        })
        .collect();
    pool.run_each(shares, |(g, u)| f(g, u));
}

/// ggml's `ggml_gelu_f32`: the tanh approximation, in `f32`, with `1 + a·x·x` as one fused
/// multiply-add: GCC contracts it so (`-ffp-contract=fast`, its default for C) when it builds
/// ggml with FMA, and the f16 table it fills then differs from the unfused one in entries
/// such as gelu(-1.999) (-0.045502 against -0.045471).
pub fn gelu_tanh(x: f32) -> f32 {
    const GELU_COEF_A: f32 = 0.044_715;
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (GELU_COEF_A * x).mul_add(x, 1.0)).tanh())
}

/// `f16(gelu(x))` for every f16 bit pattern `x`, as ggml fills `ggml_table_gelu_f16`.
pub(super) fn gelu_table() -> &'static [f32] {
    static TABLE: std::sync::OnceLock<Vec<f32>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|bits| round_to_f16(gelu_tanh(f16_to_f32(bits))))
            .collect()
    })
}

/// The bit pattern of `x` rounded to f16 (as [`round_to_f16`] rounds; NaN becomes a quiet NaN).
pub(crate) fn f16_bits(x: f32) -> u16 {
    let r = round_to_f16(x);
    let bits = r.to_bits();
    #[allow(clippy::cast_possible_truncation)]
    let sign = ((bits >> 16) & 0x8000) as u16;
    let abs = f32::from_bits(bits & 0x7fff_ffff);
    if abs.is_nan() {
        return sign | 0x7e00;
    }
    if abs.is_infinite() {
        return sign | 0x7c00;
    }
    if abs < 6.103_515_6e-5 {
        // Subnormal (or zero): a multiple of 2^-24, exactly representable.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let m = (abs * 16_777_216.0) as u16;
        return sign | m;
    }
    let b = abs.to_bits();
    #[allow(clippy::cast_possible_truncation)]
    let exp = (((b >> 23) & 0xff) - 127 + 15) as u16;
    #[allow(clippy::cast_possible_truncation)]
    let mant = ((b >> 13) & 0x3ff) as u16;
    sign | (exp << 10) | mant
}

/// The value of the f16 bit pattern `h`.
fn f16_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 == 0 { 1.0 } else { -1.0 };
    let exp = i32::from((h >> 10) & 0x1f);
    let mant = f32::from(h & 0x3ff);
    match exp {
        0 => sign * mant * (2f32).powi(-24),
        31 if mant == 0.0 => sign * f32::INFINITY,
        31 => f32::NAN,
        e => sign * (1.0 + mant / 1024.0) * (2f32).powi(e - 15),
    }
}

/// `cap * tanh(x / cap)` for every value, as llama.cpp's final logit soft-capping computes it
/// (a scale by `1/cap`, `tanh`, a scale by `cap`).
pub fn softcap(x: &mut [f32], cap: f32) {
    let inv = 1.0 / cap;
    for v in x {
        *v = (*v * inv).tanh() * cap;
    }
}

/// Multiplies every value by `s`.
pub fn scale(x: &mut [f32], s: f32) {
    for v in x {
        *v *= s;
    }
}

/// Adds `bias` to each `bias.len()`-wide row of `x`.
pub fn add_bias(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        for (v, &b) in row.iter_mut().zip(bias) {
            *v += b;
        }
    }
}

/// Rounds to the nearest `f16` value (ties to even) and back, as storing into an f16 KV cache
/// does. Overflow becomes infinity, as ggml's conversion does.
pub fn round_to_f16(x: f32) -> f32 {
    const MIN_NORMAL: f32 = 6.103_515_6e-5; // 2^-14
    let bits = x.to_bits();
    let sign = bits & 0x8000_0000;
    let abs = f32::from_bits(bits & 0x7fff_ffff);
    if !abs.is_finite() {
        return x;
    }
    if abs >= 65_520.0 {
        return f32::from_bits(sign | 0x7f80_0000);
    }
    if abs < MIN_NORMAL {
        // Subnormal f16: a fixed quantum of 2^-24; scaling by a power of two is exact.
        let q = (abs * 16_777_216.0).round_ties_even() / 16_777_216.0;
        return f32::from_bits(sign | q.to_bits());
    }
    // Normal: keep 10 of the 23 mantissa bits, rounding to nearest even.
    let b = bits & 0x7fff_ffff;
    let lsb = (b >> 13) & 1;
    let rounded = (b + 0x0fff + lsb) & !0x1fff;
    f32::from_bits(sign | rounded)
}

/// cos/sin of the RoPE angles, one row of `n_rot / 2` pairs per position, grown on demand.
#[derive(Debug)]
pub struct RopeTable {
    n_rot: usize,
    theta_scale: f32,
    freq_scale: f32,
    /// Interleaved `cos, sin` per pair, `n_rot` values per position.
    table: Vec<f32>,
}

impl RopeTable {
    pub fn new(n_rot: usize, freq_base: f32, freq_scale: f32) -> Self {
        #[allow(clippy::cast_precision_loss)]
        let theta_scale = freq_base.powf(-2.0 / n_rot as f32);
        Self {
            n_rot,
            theta_scale,
            freq_scale,
            table: Vec::new(),
        }
    }

    fn positions(&self) -> usize {
        self.table.len() / self.n_rot
    }

    /// Makes sure positions `0..len` are in the table.
    pub fn ensure(&mut self, len: usize) {
        let have = self.positions();
        if len <= have {
            return;
        }
        self.table.reserve((len - have) * self.n_rot);
        for pos in have..len {
            // As ggml_rope_cache_init: the angle starts at the position and is multiplied by
            // theta_scale for each pair, all in f32.
            #[allow(clippy::cast_precision_loss)]
            let mut theta = pos as f32;
            for _ in 0..self.n_rot / 2 {
                let t = theta * self.freq_scale;
                self.table.push(t.cos());
                self.table.push(t.sin());
                theta *= self.theta_scale;
            }
        }
    }

    /// Rotates `x`: `rows` rows at positions `start..start + rows`, each of `n_heads` heads
    /// of `head_dim` values ([`ggml_math::rope`]), rows shared out over the pool's threads
    /// when there are many. Positions must be in the table.
    pub fn apply(
        &self,
        pool: &Pool,
        x: &mut [f32],
        start: usize,
        n_heads: usize,
        head_dim: usize,
        style: RopeStyle,
    ) {
        let n_rot = self.n_rot;
        let row_len = n_heads * head_dim;
        by_rows(pool, row_len, x, &|first, rows| {
            let from = (start + first) * n_rot;
            let table = &self.table[from..from + rows.len() / row_len.max(1) * n_rot];
            ggml_math::rope(
                rows,
                table,
                row_len,
                head_dim,
                n_rot,
                style == RopeStyle::Neox,
            );
        });
    }
}

/// Values per q8_0 block.
const QK8_0: usize = hearth_kernels::block::QK;

/// One layer's keys and values, one row of `kv_dim` values per position, in the configured
/// [`KvCacheType`]: f16 bits (2 bytes a value) or q8_0 blocks (34 bytes per 32 values).
///
/// [`KvCache::new`] reserves room for every position the model may reach, so appending never
/// copies the cache to a larger allocation (which would briefly hold both copies); the
/// reservation is address space only (the allocator maps fresh pages, which the kernel backs
/// as they are written), so resident memory grows with the positions actually cached.
#[derive(Debug)]
pub struct KvCache {
    kv_dim: usize,
    store: KvStore,
}

#[derive(Debug)]
enum KvStore {
    /// f16 bit patterns, `kv_dim` per position.
    F16 { k: Vec<u16>, v: Vec<u16> },
    /// q8_0 blocks, `kv_dim / 32` per position.
    Q8_0 { k: Q8Rows, v: Q8Rows },
}

/// q8_0 blocks as ggml lays them out (`block_q8_0`), split in two arrays.
#[derive(Debug, Default)]
struct Q8Rows {
    /// Each block's scale, f16 bits.
    d: Vec<u16>,
    qs: Vec<[i8; QK8_0]>,
}

/// An empty vector with room for `n` elements when the allocator grants it (otherwise it
/// grows as it is filled; a refused reservation must not abort the process).
fn reserved<T>(n: usize) -> Vec<T> {
    let mut v = Vec::new();
    if v.try_reserve_exact(n).is_err() {
        log::debug!("KV cache: could not reserve {n} elements up front; growing on demand");
    }
    v
}

impl Q8Rows {
    fn with_capacity(blocks: usize) -> Self {
        Self {
            d: reserved(blocks),
            qs: reserved(blocks),
        }
    }

    /// Appends `x` (a whole number of blocks) quantized as ggml's x86 `quantize_row_q8_0`.
    fn push(&mut self, x: &[f32]) {
        for block in x.chunks_exact(QK8_0) {
            let (d, q) = quantize_q8_0(block);
            self.d.push(d);
            self.qs.push(q);
        }
    }

    fn truncate(&mut self, blocks: usize) {
        self.d.truncate(blocks);
        self.qs.truncate(blocks);
    }
}

/// One block as ggml's x86 `quantize_row_q8_0`: `d = amax / 127` stored as f16, values
/// `round(x · 127 / amax)` to nearest with ties to even (from the unrounded `d`).
fn quantize_q8_0(block: &[f32]) -> (u16, [i8; QK8_0]) {
    let amax = block.iter().fold(0f32, |m, &v| m.max(v.abs()));
    let d = amax / 127.0;
    let inv = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut q = [0i8; QK8_0];
    for (q, &v) in q.iter_mut().zip(block) {
        // |v · inv| ≤ 127 by construction (NaN becomes 0).
        #[allow(clippy::cast_possible_truncation)]
        {
            *q = hearth_kernels::round_small(v * inv) as i8;
        }
    }
    (f16_bits(d), q)
}

impl KvCache {
    /// An empty cache of `kind` for rows of `kv_dim` values, with room reserved for
    /// `positions` positions. q8_0 needs `kv_dim` (and each head) in whole blocks of 32; the
    /// caller checks the head size.
    pub fn new(kind: KvCacheType, kv_dim: usize, positions: usize) -> Self {
        let n = kv_dim.saturating_mul(positions);
        let store = match kind {
            KvCacheType::F16 => KvStore::F16 {
                k: reserved(n),
                v: reserved(n),
            },
            KvCacheType::Q8_0 => KvStore::Q8_0 {
                k: Q8Rows::with_capacity(n / QK8_0),
                v: Q8Rows::with_capacity(n / QK8_0),
            },
        };
        Self { kv_dim, store }
    }

    /// Positions cached.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        if self.kv_dim == 0 {
            return 0;
        }
        match &self.store {
            KvStore::F16 { k, .. } => k.len() / self.kv_dim,
            KvStore::Q8_0 { k, .. } => k.d.len() * QK8_0 / self.kv_dim,
        }
    }

    /// Bytes the cached keys and values take (what [`KvCacheType::cache_bytes`] predicts).
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        match &self.store {
            KvStore::F16 { k, v } => 2 * (k.len() + v.len()),
            KvStore::Q8_0 { k, v } => {
                (k.d.len() + v.d.len()) * 2 + (k.qs.len() + v.qs.len()) * QK8_0
            }
        }
    }

    /// Appends the rows of `k` and `v` (whole rows of `kv_dim` values, as many of each),
    /// converted to the cache's type.
    pub fn append(&mut self, k: &[f32], v: &[f32]) {
        match &mut self.store {
            KvStore::F16 { k: kc, v: vc } => {
                for (src, dst) in [(k, kc), (v, vc)] {
                    let at = dst.len();
                    dst.resize(at + src.len(), 0);
                    ggml_math::f32_to_f16_slice(src, &mut dst[at..]);
                }
            }
            KvStore::Q8_0 { k: kc, v: vc } => {
                kc.push(k);
                vc.push(v);
            }
        }
    }

    /// Keeps the first `len` positions.
    pub fn truncate(&mut self, len: usize) {
        let n = len.saturating_mul(self.kv_dim);
        match &mut self.store {
            KvStore::F16 { k, v } => {
                k.truncate(n);
                v.truncate(n);
            }
            KvStore::Q8_0 { k, v } => {
                k.truncate(n / QK8_0);
                v.truncate(n / QK8_0);
            }
        }
    }

    pub fn clear(&mut self) {
        self.truncate(0);
    }

    /// The cached values of position `j` as f32 (keys, or values when `values`): exactly
    /// what attention reads (f16 widened, or q8_0 dequantized as `dequantize_row_q8_0`).
    #[cfg(test)]
    pub fn row_f32(&self, j: usize, values: bool) -> Vec<f32> {
        let mut out = vec![0f32; self.kv_dim];
        match &self.store {
            KvStore::F16 { k, v } => {
                let src = if values { v } else { k };
                ggml_math::f16_to_f32_slice(&src[j * self.kv_dim..(j + 1) * self.kv_dim], &mut out);
            }
            KvStore::Q8_0 { k, v } => {
                let src = if values { v } else { k };
                let nb = self.kv_dim / QK8_0;
                dequantize_q8_0(
                    &src.d[j * nb..(j + 1) * nb],
                    &src.qs[j * nb..(j + 1) * nb],
                    &mut out,
                );
            }
        }
        out
    }
}

/// ggml's `dequantize_row_q8_0`: `q · d` (exact in f32).
fn dequantize_q8_0(d: &[u16], qs: &[[i8; QK8_0]], out: &mut [f32]) {
    for ((&d, q), o) in d.iter().zip(qs).zip(out.chunks_exact_mut(QK8_0)) {
        let d = hearth_kernels::f16_to_f32(d);
        for (o, &q) in o.iter_mut().zip(q) {
            *o = f32::from(q) * d;
        }
    }
}

/// Shape of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    /// Multiplier on each `q·k` score (llama.cpp's `kq_scale`).
    pub scale: f32,
    /// Sliding window: a query at position `p` sees only positions `p0` with
    /// `p - p0 < window` (llama.cpp's `LLAMA_SWA_TYPE_STANDARD`). `None` for full attention.
    pub window: Option<usize>,
}

/// Causal grouped-query attention of `q` (`rows` × `n_head` × `head_dim`, positions
/// `start..start + rows`) over the cache, into `out` (same shape as `q`). Splits the heads
/// across threads when the work is large enough to pay for them.
pub fn attention(
    pool: &Pool,
    q: &[f32],
    cache: &KvCache,
    start: usize,
    shape: AttnShape,
    out: &mut [f32],
) {
    let AttnShape {
        n_head, head_dim, ..
    } = shape;
    let rows = q.len() / (n_head * head_dim);
    let ctx = start + rows;
    let work = rows * ctx * n_head * head_dim;
    // Below this, handing heads to the pool's workers costs more than it saves.
    let threads = if work >= PARALLEL_MIN_WORK {
        pool.threads().min(n_head)
    } else {
        1
    };
    if threads <= 1 {
        let mut outs: Vec<&mut [f32]> = out.chunks_exact_mut(n_head * head_dim).collect();
        attention_heads(q, cache, start, shape, 0..n_head, &mut outs);
        return;
    }
    // Give each thread a contiguous range of heads; it writes those heads of every row. Each
    // head's arithmetic is the same whichever thread runs it.
    let per = n_head.div_ceil(threads);
    let mut per_thread: Vec<Vec<&mut [f32]>> = (0..threads).map(|_| Vec::new()).collect();
    for row in out.chunks_exact_mut(n_head * head_dim) {
        let mut rest = row;
        for slot in per_thread.iter_mut() {
            let take = (per * head_dim).min(rest.len());
            let (mine, tail) = rest.split_at_mut(take);
            slot.push(mine);
            rest = tail;
        }
    }
    let shares: Vec<_> = per_thread
        .into_iter()
        .enumerate()
        .map(|(t, outs)| ((t * per).min(n_head)..((t + 1) * per).min(n_head), outs))
        .filter(|(heads, _)| !heads.is_empty())
        .collect();
    pool.run_each(shares, |(heads, mut outs)| {
        attention_heads(q, cache, start, shape, heads, &mut outs);
    });
}

/// `rows · positions · heads · head_dim` from which attention runs on the pool's threads.
const PARALLEL_MIN_WORK: usize = 1 << 15;

/// Query rows from which llama.cpp's CPU flash attention switches to its tiled f32 kernel.
const TILED_MIN_ROWS: usize = 64;
/// Key/value positions per tile of the tiled kernel.
const KV_TILE: usize = 64;

use ggml_math::TILE_QUERIES;
/// KV length (llama.cpp pads it to multiples of 256) from which a single-row query is split
/// into two halves that are reduced afterwards (llama.cpp's split-KV decode, two threads).
const SPLIT_KV_MIN: usize = 512;

/// Attention for `heads` of every row; `outs` holds, per row, the output slice that starts
/// at head `heads.start` (the whole row when that is 0).
///
/// Follows llama.cpp's CPU flash attention. Over an f16 cache: prompts of at least
/// [`TILED_MIN_ROWS`] rows take the tiled kernel (f32 query, f32 accumulation, softmax
/// rescaled per tile of [`KV_TILE`] keys); shorter batches and decoding take the vector kernel
/// (query rounded to f16, online softmax, output accumulated in f16). A q8_0 cache always
/// takes the vector kernel in its quantized form ([`attention_heads_q8`]).
fn attention_heads(
    q: &[f32],
    cache: &KvCache,
    start: usize,
    shape: AttnShape,
    heads: std::ops::Range<usize>,
    outs: &mut [&mut [f32]],
) {
    let (k_cache, v_cache) = match &cache.store {
        KvStore::F16 { k, v } => (k.as_slice(), v.as_slice()),
        KvStore::Q8_0 { k, v } => {
            return attention_heads_q8(q, (k, v), cache.kv_dim, start, shape, heads, outs);
        }
    };
    let AttnShape {
        n_head,
        n_head_kv,
        head_dim,
        scale,
        window,
    } = shape;
    let kv_dim = n_head_kv * head_dim;
    let group = n_head / n_head_kv;
    if outs.len() >= TILED_MIN_ROWS {
        for h in heads.clone() {
            let kv = KvHead {
                k: k_cache,
                v: v_cache,
                kv_dim,
                offset: (h / group) * head_dim,
                head_dim,
            };
            let local = h - heads.start;
            let rows: Vec<TiledRow<'_>> = outs
                .iter_mut()
                .enumerate()
                .map(|(i, out_row)| {
                    let ctx = start + i + 1;
                    let at = (i * n_head + h) * head_dim;
                    TiledRow {
                        q: &q[at..at + head_dim],
                        // First position the sliding window lets this query see.
                        range: window.map_or(0, |w| ctx.saturating_sub(w))..ctx,
                        o: &mut out_row[local * head_dim..(local + 1) * head_dim],
                        max: f32::NEG_INFINITY,
                        sum: 0.0,
                    }
                })
                .collect();
            attend_tiled(rows, kv, scale);
        }
        return;
    }
    let single = outs.len() == 1;
    // Scratch for one group of query heads (those sharing a KV head): f16-rounded queries,
    // the second split-KV partial and the two partials' softmax states.
    let mut q_group = vec![0f32; group * head_dim];
    let mut partial = vec![0f32; group * head_dim];
    let mut states = vec![Online::default(); 2 * group];
    for (i, out_row) in outs.iter_mut().enumerate() {
        let ctx = start + i + 1;
        // First position the sliding window lets this query see (masked cells are skipped).
        let lo = window.map_or(0, |w| ctx.saturating_sub(w));
        let q_row = &q[i * n_head * head_dim..(i + 1) * n_head * head_dim];
        let n_kv = ctx.next_multiple_of(256);
        // The heads of this range that share a KV head walk the positions together; a thread's
        // range may start or end inside a group.
        let mut h = heads.start;
        while h < heads.end {
            let end = ((h / group + 1) * group).min(heads.end);
            let n = end - h;
            let kv = KvHead {
                k: k_cache,
                v: v_cache,
                kv_dim,
                offset: (h / group) * head_dim,
                head_dim,
            };
            let q_heads = &mut q_group[..n * head_dim];
            // The vector kernel converts Q to the cache's f16 before the dot products.
            for (d, &s) in q_heads.iter_mut().zip(&q_row[h * head_dim..end * head_dim]) {
                *d = round_to_f16(s);
            }
            let o = &mut out_row[(h - heads.start) * head_dim..(end - heads.start) * head_dim];
            let (first, second) = states.split_at_mut(group);
            let (first, second) = (&mut first[..n], &mut second[..n]);
            if single && n_kv >= SPLIT_KV_MIN {
                // Two chunks of n_kv/2 cells, each with its own online softmax, then merged.
                // A chunk the window masks entirely has a zero sum and is left out.
                let mid = (n_kv / 2).min(ctx);
                let part = &mut partial[..n * head_dim];
                attend_vec(q_heads, kv, lo.min(mid)..mid, scale, o, first);
                attend_vec(q_heads, kv, lo.max(mid)..ctx, scale, part, second);
                for ((o, p), (s0, s1)) in o
                    .chunks_exact_mut(head_dim)
                    .zip(part.chunks_exact(head_dim))
                    .zip(first.iter().zip(second.iter()))
                {
                    merge_partials(o, (s0.max, s0.sum), p, (s1.max, s1.sum));
                }
            } else {
                attend_vec(q_heads, kv, lo..ctx, scale, o, first);
                for (o, st) in o.chunks_exact_mut(head_dim).zip(first.iter()) {
                    let inv = if st.sum == 0.0 { 0.0 } else { 1.0 / st.sum };
                    o.iter_mut().for_each(|v| *v *= inv);
                }
            }
            h = end;
        }
    }
}

/// [`attention_heads`] over a q8_0 cache, as llama.cpp's `flash_attn_ext_f16_one_chunk` runs
/// with q8_0 K and V (no tiled kernel, no split-KV decode for quantized caches): the query
/// head quantized to q8_0 (`quantize_row_q8_0`), each score the q8_0 × q8_0 block dot product
/// (`ggml_vec_dot_q8_0_q8_0`, the `hearth-kernels` block kernel), online softmax with libm's
/// `expf`, each value row dequantized and accumulated in f32 (`ggml_vec_mad_f32`).
fn attention_heads_q8(
    q: &[f32],
    (k, v): (&Q8Rows, &Q8Rows),
    kv_dim: usize,
    start: usize,
    shape: AttnShape,
    heads: std::ops::Range<usize>,
    outs: &mut [&mut [f32]],
) {
    use hearth_kernels::block::{ActRow, WeightRow, dot_rows};
    let AttnShape {
        n_head,
        n_head_kv,
        head_dim,
        scale,
        window,
    } = shape;
    let group = n_head / n_head_kv;
    let isa = hearth_kernels::Isa::detect();
    let (row_blocks, nb) = (kv_dim / QK8_0, head_dim / QK8_0);
    let mut q_d = vec![0f32; nb];
    let mut q_qs = vec![[0i8; QK8_0]; nb];
    let mut k_d = vec![0f32; nb];
    let mut v_row = vec![0f32; head_dim];
    for (i, out_row) in outs.iter_mut().enumerate() {
        let ctx = start + i + 1;
        let lo = window.map_or(0, |w| ctx.saturating_sub(w));
        let q_row = &q[i * n_head * head_dim..(i + 1) * n_head * head_dim];
        for h in heads.clone() {
            let local = h - heads.start;
            let o = &mut out_row[local * head_dim..(local + 1) * head_dim];
            let q_src = &q_row[h * head_dim..(h + 1) * head_dim];
            for ((d, qs), block) in q_d
                .iter_mut()
                .zip(q_qs.iter_mut())
                .zip(q_src.chunks_exact(QK8_0))
            {
                let (bits, quants) = quantize_q8_0(block);
                *d = hearth_kernels::f16_to_f32(bits);
                *qs = quants;
            }
            let act = [ActRow {
                d: &q_d,
                s: &[],
                qs: &q_qs,
            }];
            let first = (h / group) * nb;
            o.fill(0.0);
            let (mut max, mut sum) = (f32::NEG_INFINITY, 0f32);
            for j in lo..ctx {
                let at = j * row_blocks + first;
                for (x, &bits) in k_d.iter_mut().zip(&k.d[at..at + nb]) {
                    *x = hearth_kernels::f16_to_f32(bits);
                }
                let mut dot = [0f32];
                let key = WeightRow::Q8_0 {
                    d: &k_d,
                    qs: &k.qs[at..at + nb],
                };
                dot_rows(isa, key, &act, &mut dot);
                let s = dot[0] * scale;
                let (mut ms, mut vs) = (1f32, 1f32);
                if s > max {
                    ms = (max - s).exp();
                    max = s;
                    o.iter_mut().for_each(|x| *x *= ms);
                } else {
                    vs = (s - max).exp();
                }
                dequantize_q8_0(&v.d[at..at + nb], &v.qs[at..at + nb], &mut v_row);
                ggml_math::mad_f32(o, &v_row, vs);
                sum = sum.mul_add(ms, vs);
            }
            let inv = if sum == 0.0 { 0.0 } else { 1.0 / sum };
            o.iter_mut().for_each(|x| *x *= inv);
        }
    }
}

/// One key/value head of a layer's f16 cache.
#[derive(Clone, Copy)]
struct KvHead<'a> {
    k: &'a [u16],
    v: &'a [u16],
    kv_dim: usize,
    offset: usize,
    head_dim: usize,
}

impl KvHead<'_> {
    fn k(&self, j: usize) -> &[u16] {
        let at = j * self.kv_dim + self.offset;
        &self.k[at..at + self.head_dim]
    }

    fn v(&self, j: usize) -> &[u16] {
        let at = j * self.kv_dim + self.offset;
        &self.v[at..at + self.head_dim]
    }
}

/// One query head's online softmax in [`attend_vec`]: running max and sum, and the weight of
/// the current position's value row.
#[derive(Clone, Copy, Debug)]
struct Online {
    max: f32,
    sum: f32,
    weight: f32,
}

impl Default for Online {
    fn default() -> Self {
        Self {
            max: f32::NEG_INFINITY,
            sum: 0.0,
            weight: 0.0,
        }
    }
}

/// ggml's vector flash-attention kernel (`ggml_compute_forward_flash_attn_ext_f16_one_chunk`)
/// over `range`, for query heads that share the KV head `kv`: `q` and `o` hold one
/// `head_dim` slice per head, `states` one [`Online`] each. The heads walk the positions
/// together (each K and V row fetched once per position for all of them); each head takes
/// exactly the steps ggml runs for it alone: online softmax, the running output kept in f16
/// (rounded after every scale and multiply-add). The f16 rows are widened as the dot product
/// and multiply-add read them. Leaves the unnormalised outputs in `o` and each head's running
/// max and sum in `states`.
fn attend_vec(
    q: &[f32],
    kv: KvHead<'_>,
    range: std::ops::Range<usize>,
    scale: f32,
    o: &mut [f32],
    states: &mut [Online],
) {
    let head_dim = kv.head_dim;
    o.fill(0.0);
    states.fill(Online::default());
    for j in range {
        let k_row = kv.k(j);
        for ((q, o), st) in q
            .chunks_exact(head_dim)
            .zip(o.chunks_exact_mut(head_dim))
            .zip(states.iter_mut())
        {
            let s = ggml_math::dot_f16_bits(q, k_row) * scale;
            // ggml's `S = S*ms + vs` with one of `ms`, `vs` exactly 1: a fused multiply-add
            // of `S*1 + vs` is the plain sum, so only a new max needs the (called) `fmaf`.
            if s > st.max {
                let ms = (st.max - s).exp();
                st.max = s;
                ggml_math::scale_f16(o, ms);
                st.sum = st.sum.mul_add(ms, 1.0);
                st.weight = 1.0;
            } else {
                let vs = (s - st.max).exp();
                st.sum += vs;
                st.weight = vs;
            }
        }
        let v_row = kv.v(j);
        for (o, st) in o.chunks_exact_mut(head_dim).zip(states.iter()) {
            ggml_math::mad_f16_bits(o, v_row, st.weight);
        }
    }
}

/// Merges two unnormalised partial results (llama.cpp's split-KV reduction) into `a`,
/// normalised.
fn merge_partials(a: &mut [f32], (ma, sa): (f32, f32), b: &[f32], (mb, sb): (f32, f32)) {
    // The rescale factors of each partial, worked out before the elements: (old, new), or
    // `None` for a partial with a zero sum.
    let (mut m, mut s) = (f32::NEG_INFINITY, 0f32);
    let mut factors = [None; 2];
    for (f, (mc, sc)) in factors.iter_mut().zip([(ma, sa), (mb, sb)]) {
        if sc == 0.0 {
            continue;
        }
        let m_new = m.max(mc);
        let (scale_old, scale_new) = ((m - m_new).exp(), (mc - m_new).exp());
        *f = Some((scale_old, scale_new));
        s = s.mul_add(scale_old, sc * scale_new);
        m = m_new;
    }
    let inv = if s == 0.0 { 0.0 } else { 1.0 / s };
    // Each element runs the same chain from 0 as a whole-row accumulator would.
    for (x, &y) in a.iter_mut().zip(b) {
        let mut acc = 0f32;
        for (p, f) in [*x, y].into_iter().zip(factors) {
            if let Some((scale_old, scale_new)) = f {
                acc = acc.mul_add(scale_old, p * scale_new);
            }
        }
        *x = acc * inv;
    }
}

/// One query row of the tiled kernel: its query head, the positions it sees, its output
/// (unnormalised until the end) and its running softmax max and sum.
struct TiledRow<'a> {
    q: &'a [f32],
    range: std::ops::Range<usize>,
    o: &'a mut [f32],
    max: f32,
    sum: f32,
}

/// llama.cpp's tiled f32 flash-attention kernel for one head over a batch of query rows.
/// Each tile of [`KV_TILE`] positions is widened from f16 (keys transposed, each position in
/// its own lane, zero-padded) once for the whole batch, as ggml converts a KV tile once per
/// query tile; each row then takes the tiles its range touches, in order, with its own
/// online softmax: scores by [`ggml_math::tile_scores`], masked positions (outside the row's
/// range, and the padding) -inf as ggml's mask makes them, the running output rescaled when
/// the max grows, the tile's f64 softmax sum added to the f32 running sum in f64, and the
/// values accumulated by [`ggml_math::accumulate_values`]. A row's arithmetic does not depend
/// on the other rows in the batch.
fn attend_tiled(mut rows: Vec<TiledRow<'_>>, kv: KvHead<'_>, scale: f32) {
    let head_dim = kv.head_dim;
    let (Some(lo), Some(hi)) = (
        rows.iter().map(|r| r.range.start).min(),
        rows.iter().map(|r| r.range.end).max(),
    ) else {
        return;
    };
    for r in &mut rows {
        r.o.fill(0.0);
    }
    let mut keys_t = vec![0f32; head_dim * KV_TILE];
    let mut values = vec![0f32; KV_TILE * head_dim];
    let mut key = vec![0f32; head_dim];
    let mut scores = vec![0f32; TILE_QUERIES * KV_TILE];
    for tile in (lo - lo % KV_TILE..hi).step_by(KV_TILE) {
        let (first_all, end_all) = (tile.max(lo), (tile + KV_TILE).min(hi));
        keys_t.fill(0.0);
        values.fill(0.0);
        for j in first_all..end_all {
            let t = j - tile;
            ggml_math::f16_to_f32_slice(kv.k(j), &mut key);
            for (d, &k) in key.iter().enumerate() {
                keys_t[d * KV_TILE + t] = k;
            }
            ggml_math::f16_to_f32_slice(kv.v(j), &mut values[t * head_dim..(t + 1) * head_dim]);
        }
        let mut active: Vec<&mut TiledRow<'_>> = rows
            .iter_mut()
            .filter(|r| tile < r.range.end && tile + KV_TILE > r.range.start)
            .collect();
        // Rows in groups of TILE_QUERIES: each widened key and value serves the group.
        for group in active.chunks_mut(TILE_QUERIES) {
            let len = group.len();
            let mut qs: [&[f32]; TILE_QUERIES] = [&[]; TILE_QUERIES];
            for (q, row) in qs.iter_mut().zip(group.iter()) {
                *q = row.q;
            }
            let qs = &qs[..len];
            let mut chunks = scores.chunks_exact_mut(KV_TILE);
            let mut tile_scores: [&mut [f32]; TILE_QUERIES] =
                std::array::from_fn(|_| chunks.next().unwrap_or_default());
            let tile_scores = &mut tile_scores[..len];
            ggml_math::tile_scores_rows(qs, &keys_t, scale, tile_scores);
            for (row, scores) in group.iter_mut().zip(tile_scores.iter_mut()) {
                let first = tile.max(row.range.start);
                let end = (tile + KV_TILE).min(row.range.end);
                scores[..first - tile].fill(f32::NEG_INFINITY);
                scores[end - tile..].fill(f32::NEG_INFINITY);
                let tile_max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
                let new_max = row.max.max(tile_max);
                if new_max > row.max {
                    let ms = (row.max - new_max).exp();
                    row.o.iter_mut().for_each(|v| *v *= ms);
                    row.sum *= ms;
                }
                row.max = new_max;
                let tile_sum = ggml_math::soft_max(scores, row.max);
                // ggml adds the f64 tile sum to its f32 running sum in f64.
                #[allow(clippy::cast_possible_truncation)]
                {
                    row.sum = (f64::from(row.sum) + tile_sum) as f32;
                }
            }
            let mut ps: [&[f32]; TILE_QUERIES] = [&[]; TILE_QUERIES];
            for (p, s) in ps.iter_mut().zip(tile_scores.iter()) {
                *p = s;
            }
            let mut outs: [&mut [f32]; TILE_QUERIES] = std::array::from_fn(|_| Default::default());
            for (o, row) in outs.iter_mut().zip(group.iter_mut()) {
                *o = &mut *row.o;
            }
            ggml_math::accumulate_values_rows(&ps[..len], &values, &mut outs[..len]);
        }
    }
    for row in rows {
        let inv = if row.sum == 0.0 { 0.0 } else { 1.0 / row.sum };
        row.o.iter_mut().for_each(|v| *v *= inv);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_rounding() {
        let cases: &[(f32, f32)] = &[
            (0.0, 0.0),
            (1.0, 1.0),
            (-2.5, -2.5),
            (65504.0, 65504.0),
            (65520.0, f32::INFINITY),
            (1.0 + 1.0 / 4096.0, 1.0), // below half an ulp (2^-10)
            (1.0 + 1.0 / 2048.0, 1.0), // exactly half: ties to even
            (1.0 + 3.0 / 2048.0, 1.0 + 2.0 / 1024.0), // half: ties to even (up)
            (5.960_464_5e-8, 5.960_464_5e-8), // smallest subnormal
            (2.0e-8, 0.0),
            (0.1, 0.099_975_586),
        ];
        for &(x, want) in cases {
            assert_eq!(round_to_f16(x), want, "round_to_f16({x})");
        }
        assert!(round_to_f16(f32::NAN).is_nan());
    }

    #[test]
    fn f16_bits_round_trip() {
        for h in 0..=u16::MAX {
            let x = f16_to_f32(h);
            if x.is_nan() {
                assert!(f16_bits(x) & 0x7c00 == 0x7c00 && f16_bits(x) & 0x3ff != 0);
                continue;
            }
            assert_eq!(f16_bits(x), h, "{h:#06x} = {x}");
            assert_eq!(
                round_to_f16(x).to_bits(),
                x.to_bits(),
                "{h:#06x} is an f16 value"
            );
        }
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0001), 5.960_464_5e-8);
        assert_eq!(f16_bits(1.0 + 1.0 / 4096.0), 0x3c00);
    }

    #[test]
    fn geglu_follows_gelu_through_f16() {
        let xs = [
            -12.0f32, -10.0, -3.0, -0.5, 0.0, 1e-6, 0.3, 1.0, 2.5, 9.99, 10.0, 30.0,
        ];
        let mut g = xs.to_vec();
        let pool = Pool::new(1).expect("pool");
        geglu(&pool, &mut g, &[2.0; 12]);
        for (&x, &y) in xs.iter().zip(&g) {
            let want = if x <= -10.0 {
                0.0
            } else if x >= 10.0 {
                2.0 * x
            } else {
                2.0 * round_to_f16(gelu_tanh(round_to_f16(x)))
            };
            assert_eq!(y, want, "geglu({x})");
            // And close to the exact tanh approximation.
            assert!(
                (y - 2.0 * gelu_tanh(x)).abs() <= 2e-2 * x.abs().max(1e-3),
                "{x}"
            );
        }
        assert!((gelu_tanh(1.0) - 0.841_192).abs() < 1e-5);
    }

    /// The FFN activations on the pool (2 and 3 threads, odd lengths above and below the
    /// threshold) give the bits of one call on the caller.
    #[test]
    fn pooled_activations_match_serial() {
        let mut rng = hearth_kernels::testing::Rng(0x51_7cc1);
        for threads in [2, 3] {
            let pool = Pool::new(threads).unwrap();
            for n in [
                17,
                PARALLEL_MIN_ELEMENTS - 1,
                PARALLEL_MIN_ELEMENTS,
                PARALLEL_MIN_ELEMENTS + 13,
                3 * PARALLEL_MIN_ELEMENTS + 7,
            ] {
                let gate = random(&mut rng, n, 12.0);
                let up = random(&mut rng, n, 3.0);
                let (mut a, mut b) = (gate.clone(), gate.clone());
                swiglu(&pool, &mut a, &up);
                ggml_math::swiglu(&mut b, &up);
                assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
                let (mut a, mut b) = (gate.clone(), gate.clone());
                geglu(&pool, &mut a, &up);
                ggml_math::geglu(&mut b, &up, gelu_table());
                assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
            }
        }
    }

    /// The row-wise ops on three threads (37 rows: uneven shares) give, bit for bit, ggml's
    /// arithmetic row by row in plain order: rms norm (into `out` and in place) and both
    /// RoPE styles.
    #[test]
    fn row_ops_on_threads_equal_row_by_row() {
        let mut rng = hearth_kernels::testing::Rng(0x0505_2026);
        let (rows, n) = (37, 640);
        let x = random(&mut rng, rows * n, 3.0);
        let w = random(&mut rng, n, 1.0);
        let eps = 1e-6;
        let mut want = vec![0f32; rows * n];
        for (row, o) in x.chunks_exact(n).zip(want.chunks_exact_mut(n)) {
            let sum: f64 = row.iter().map(|&v| f64::from(v * v)).sum();
            #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
            let scale = 1.0 / ((sum / n as f64) as f32 + eps).sqrt();
            for ((o, &v), &w) in o.iter_mut().zip(row).zip(&w) {
                *o = (v * scale) * w;
            }
        }
        let pool = Pool::new(3).unwrap();
        let mut got = vec![f32::NAN; rows * n];
        rms_norm(&pool, &x, &w, eps, &mut got);
        assert!(
            got.iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits())
        );
        let mut in_place = x.clone();
        rms_norm_in_place(&pool, &mut in_place, &w, eps);
        assert!(
            in_place
                .iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits())
        );

        let (head_dim, n_rot, start) = (64, 48, 5);
        let mut t = RopeTable::new(n_rot, 10_000.0, 1.0);
        t.ensure(start + rows);
        for style in [RopeStyle::Interleaved, RopeStyle::Neox] {
            let mut want = x.clone();
            for (i, row) in want.chunks_exact_mut(n).enumerate() {
                let cs = &t.table[(start + i) * n_rot..(start + i + 1) * n_rot];
                for head in row.chunks_exact_mut(head_dim) {
                    for (j, c) in cs.chunks_exact(2).enumerate() {
                        let (a, b) = match style {
                            RopeStyle::Interleaved => (2 * j, 2 * j + 1),
                            RopeStyle::Neox => (j, j + n_rot / 2),
                        };
                        let (x0, x1) = (head[a], head[b]);
                        head[a] = x0.mul_add(c[0], -(x1 * c[1]));
                        head[b] = x0.mul_add(c[1], x1 * c[0]);
                    }
                }
            }
            let mut got = x.clone();
            t.apply(&pool, &mut got, start, n / head_dim, head_dim, style);
            assert!(
                got.iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{style:?}"
            );
        }
    }

    #[test]
    fn rope_styles_rotate_the_right_pairs() {
        let pool = Pool::new(1).unwrap();
        let mut t = RopeTable::new(4, 10_000.0, 1.0);
        t.ensure(2);
        let x0 = [1.0f32, 2.0, 3.0, 4.0];
        let mut a = x0;
        t.apply(&pool, &mut a, 0, 1, 4, RopeStyle::Interleaved);
        assert_eq!(a, x0, "position 0 is the identity");
        let mut a = x0;
        t.apply(&pool, &mut a, 1, 1, 4, RopeStyle::Interleaved);
        let (c, s) = (1f32.cos(), 1f32.sin());
        assert!((a[0] - (1.0 * c - 2.0 * s)).abs() < 1e-6);
        assert!((a[1] - (1.0 * s + 2.0 * c)).abs() < 1e-6);
        let mut b = x0;
        t.apply(&pool, &mut b, 1, 1, 4, RopeStyle::Neox);
        assert!((b[0] - (1.0 * c - 3.0 * s)).abs() < 1e-6);
        assert!((b[2] - (1.0 * s + 3.0 * c)).abs() < 1e-6);
    }

    #[test]
    fn attention_threads_agree_with_one() {
        let shape = AttnShape {
            n_head: 4,
            n_head_kv: 2,
            head_dim: 8,
            scale: 1.0 / 8f32.sqrt(),
            window: None,
        };
        let kv_dim = 16;
        let rows = 40;
        let ctx = 1500;
        let mut cache = KvCache::new(KvCacheType::F16, kv_dim, ctx);
        #[allow(clippy::cast_precision_loss)]
        let f = |i: usize| ((i * 7919 % 1000) as f32 / 500.0) - 1.0;
        let k: Vec<f32> = (0..ctx * kv_dim).map(f).collect();
        let v: Vec<f32> = (0..ctx * kv_dim).map(|i| f(i + 3)).collect();
        cache.append(&k, &v);
        let q: Vec<f32> = (0..rows * 32).map(|i| f(i + 11)).collect();
        let start = ctx - rows;
        let mut big = vec![0f32; rows * 32];
        attention(&Pool::new(3).unwrap(), &q, &cache, start, shape, &mut big);
        let mut single = vec![0f32; rows * 32];
        let mut outs: Vec<&mut [f32]> = single.chunks_exact_mut(32).collect();
        attention_heads(&q, &cache, start, shape, 0..4, &mut outs);
        drop(outs);
        assert_eq!(big, single);
    }

    /// The tiled kernel gives each row of a batch exactly what it gives that row alone: the
    /// shared KV tiles (widened once for the batch, covering every row's positions) do not
    /// leak into a row's result, with a window and with rows starting mid-tile.
    #[test]
    fn tiled_batch_rows_equal_rows_alone() {
        let mut rng = hearth_kernels::testing::Rng(0x7177_ed00);
        let (head_dim, rows, start) = (16, 70, 37);
        let ctx = start + rows;
        let mut cache = KvCache::new(KvCacheType::F16, head_dim, ctx);
        cache.append(
            &random(&mut rng, ctx * head_dim, 2.0),
            &random(&mut rng, ctx * head_dim, 1.0),
        );
        let KvStore::F16 { k, v } = &cache.store else {
            panic!("f16 cache");
        };
        let kv = || KvHead {
            k,
            v,
            kv_dim: head_dim,
            offset: 0,
            head_dim,
        };
        let q = random(&mut rng, rows * head_dim, 2.0);
        for window in [None, Some(45)] {
            let range = |i: usize| {
                let ctx = start + i + 1;
                window.map_or(0, |w: usize| ctx.saturating_sub(w))..ctx
            };
            let mut batch = vec![0f32; rows * head_dim];
            let batch_rows = batch
                .chunks_exact_mut(head_dim)
                .enumerate()
                .map(|(i, o)| TiledRow {
                    q: &q[i * head_dim..(i + 1) * head_dim],
                    range: range(i),
                    o,
                    max: f32::NEG_INFINITY,
                    sum: 0.0,
                })
                .collect();
            attend_tiled(batch_rows, kv(), 0.25);
            for i in 0..rows {
                let mut alone = vec![0f32; head_dim];
                let row = TiledRow {
                    q: &q[i * head_dim..(i + 1) * head_dim],
                    range: range(i),
                    o: &mut alone,
                    max: f32::NEG_INFINITY,
                    sum: 0.0,
                };
                attend_tiled(vec![row], kv(), 0.25);
                assert_eq!(
                    alone,
                    batch[i * head_dim..(i + 1) * head_dim],
                    "row {i} window {window:?}"
                );
                assert!(alone.iter().any(|&x| x != 0.0));
            }
        }
    }

    fn random(rng: &mut hearth_kernels::testing::Rng, n: usize, amp: f32) -> Vec<f32> {
        (0..n).map(|_| rng.unit() * amp).collect()
    }

    /// The f16 cache holds exactly the f16-rounded values, in 2 bytes each, and truncates by
    /// position; the q8_0 cache takes 34 bytes per 32 values.
    #[test]
    fn kv_cache_f16_round_trip_and_sizes() {
        let mut rng = hearth_kernels::testing::Rng(0x5eed_1234);
        let kv_dim = 96;
        let mut cache = KvCache::new(KvCacheType::F16, kv_dim, 8);
        let mut k = random(&mut rng, 5 * kv_dim, 40.0);
        k.extend([65_519.0, 65_520.0, -1e-7, 0.1, 3.0e-8, -0.0]);
        k.resize(7 * kv_dim, 0.25);
        let v = random(&mut rng, 7 * kv_dim, 3.0);
        cache.append(&k[..2 * kv_dim], &v[..2 * kv_dim]);
        cache.append(&k[2 * kv_dim..], &v[2 * kv_dim..]);
        assert_eq!(cache.len(), 7);
        assert_eq!(cache.bytes(), 7 * 2 * kv_dim * 2);
        assert_eq!(
            cache.bytes() as u64,
            KvCacheType::F16.cache_bytes(1, 7, kv_dim as u64)
        );
        for j in 0..7 {
            for (values, src) in [(false, &k), (true, &v)] {
                let got = cache.row_f32(j, values);
                for (g, &x) in got.iter().zip(&src[j * kv_dim..(j + 1) * kv_dim]) {
                    assert_eq!(g.to_bits(), round_to_f16(x).to_bits(), "{x:e} at {j}");
                }
            }
        }
        cache.truncate(3);
        assert_eq!((cache.len(), cache.bytes()), (3, 3 * 2 * kv_dim * 2));
        cache.clear();
        assert_eq!(cache.len(), 0);

        let mut q8 = KvCache::new(KvCacheType::Q8_0, kv_dim, 8);
        q8.append(&k, &v);
        assert_eq!(q8.len(), 7);
        assert_eq!(q8.bytes(), 7 * 2 * (kv_dim / 32) * 34);
        assert_eq!(
            q8.bytes() as u64,
            KvCacheType::Q8_0.cache_bytes(1, 7, kv_dim as u64)
        );
        // Dequantized values are within half a quantization step of the originals.
        let got = q8.row_f32(1, true);
        for (block, want) in got.chunks(32).zip(v[kv_dim..2 * kv_dim].chunks(32)) {
            let amax = want.iter().fold(0f32, |m, x| m.max(x.abs()));
            for (g, w) in block.iter().zip(want) {
                assert!((g - w).abs() <= amax / 127.0 * 0.5 * 1.01, "{g} vs {w}");
            }
        }
        q8.truncate(2);
        assert_eq!(q8.len(), 2);
    }

    /// Today's decode arithmetic written head by head, as it was before the heads of a group
    /// shared their K and V rows: the vector kernel for query row `q` (all heads) at context
    /// `ctx`, split into two merged halves when `single` and the padded length allows.
    fn per_head_vec(
        q: &[f32],
        cache: &KvCache,
        ctx: usize,
        single: bool,
        shape: AttnShape,
    ) -> Vec<f32> {
        let AttnShape {
            n_head,
            n_head_kv,
            head_dim,
            scale,
            window,
        } = shape;
        let group = n_head / n_head_kv;
        let keys: Vec<Vec<f32>> = (0..ctx).map(|j| cache.row_f32(j, false)).collect();
        let values: Vec<Vec<f32>> = (0..ctx).map(|j| cache.row_f32(j, true)).collect();
        let attend = |qh: &[f32], off: usize, range: std::ops::Range<usize>| {
            let mut o = vec![0f32; head_dim];
            let (mut max, mut sum) = (f32::NEG_INFINITY, 0f32);
            for j in range {
                let s = ggml_math::dot_f16(qh, &keys[j][off..off + head_dim]) * scale;
                let (mut ms, mut vs) = (1f32, 1f32);
                if s > max {
                    ms = (max - s).exp();
                    max = s;
                    for acc in &mut o {
                        *acc = round_to_f16(*acc * ms);
                    }
                } else {
                    vs = (s - max).exp();
                }
                ggml_math::mad_f16(&mut o, &values[j][off..off + head_dim], vs);
                sum = sum.mul_add(ms, vs);
            }
            (o, max, sum)
        };
        let lo = window.map_or(0, |w| ctx.saturating_sub(w));
        let n_kv = ctx.next_multiple_of(256);
        let mut out = Vec::new();
        for h in 0..n_head {
            let off = (h / group) * head_dim;
            let qh: Vec<f32> = q[h * head_dim..(h + 1) * head_dim]
                .iter()
                .map(|&x| round_to_f16(x))
                .collect();
            if single && n_kv >= SPLIT_KV_MIN {
                let mid = (n_kv / 2).min(ctx);
                let parts = [
                    attend(&qh, off, lo.min(mid)..mid),
                    attend(&qh, off, lo.max(mid)..ctx),
                ];
                let (mut m, mut s) = (f32::NEG_INFINITY, 0f32);
                let mut acc = vec![0f32; head_dim];
                for (part, mc, sc) in parts {
                    if sc == 0.0 {
                        continue;
                    }
                    let m_new = m.max(mc);
                    let (scale_old, scale_new) = ((m - m_new).exp(), (mc - m_new).exp());
                    for (x, &p) in acc.iter_mut().zip(&part) {
                        *x = x.mul_add(scale_old, p * scale_new);
                    }
                    s = s.mul_add(scale_old, sc * scale_new);
                    m = m_new;
                }
                let inv = if s == 0.0 { 0.0 } else { 1.0 / s };
                out.extend(acc.iter().map(|x| x * inv));
            } else {
                let (o, _, sum) = attend(&qh, off, lo..ctx);
                let inv = if sum == 0.0 { 0.0 } else { 1.0 / sum };
                out.extend(o.iter().map(|x| x * inv));
            }
        }
        out
    }

    /// The grouped vector kernel gives each head the bits of [`per_head_vec`]: GQA shapes
    /// (one with a leftover dot-product tail), with and without a window (one masking the
    /// whole first split-KV half), short contexts and ones long enough to split, decode rows
    /// alone and small batches, one thread and head ranges that start and end inside groups.
    #[test]
    fn grouped_vec_kernel_matches_per_head() {
        let mut rng = hearth_kernels::testing::Rng(0x51f1_5eed);
        for (n_head, n_head_kv, head_dim) in [(9, 3, 64), (4, 1, 40), (14, 2, 64)] {
            let kv_dim = n_head_kv * head_dim;
            let ctx_max = 800;
            let mut cache = KvCache::new(KvCacheType::F16, kv_dim, ctx_max);
            let k = random(&mut rng, ctx_max * kv_dim, 3.0);
            let v = random(&mut rng, ctx_max * kv_dim, 1.0);
            cache.append(&k, &v);
            for window in [None, Some(100), Some(30)] {
                #[allow(clippy::cast_precision_loss)]
                let shape = AttnShape {
                    n_head,
                    n_head_kv,
                    head_dim,
                    scale: 1.0 / (head_dim as f32).sqrt(),
                    window,
                };
                let width = n_head * head_dim;
                for (ctx, rows) in [(20, 1), (300, 1), (700, 1), (300, 3)] {
                    let q = random(&mut rng, rows * width, 2.0);
                    let start = ctx - rows;
                    let want: Vec<u32> = (0..rows)
                        .flat_map(|i| {
                            let row = &q[i * width..(i + 1) * width];
                            per_head_vec(row, &cache, start + i + 1, rows == 1, shape)
                        })
                        .map(f32::to_bits)
                        .collect();
                    let mut out = vec![0f32; rows * width];
                    attention(&Pool::new(2).unwrap(), &q, &cache, start, shape, &mut out);
                    let got: Vec<u32> = out.iter().map(|x| x.to_bits()).collect();
                    assert_eq!(got, want, "{shape:?} ctx {ctx} rows {rows}");
                    // Every head range, as the pool's threads may cut them.
                    for a in 0..n_head {
                        for b in a + 1..=n_head {
                            let mut part = vec![0f32; rows * (b - a) * head_dim];
                            let mut outs: Vec<&mut [f32]> =
                                part.chunks_exact_mut((b - a) * head_dim).collect();
                            attention_heads(&q, &cache, start, shape, a..b, &mut outs);
                            drop(outs);
                            for (i, got) in part.chunks_exact((b - a) * head_dim).enumerate() {
                                let at = i * width;
                                let want = &want[at + a * head_dim..at + b * head_dim];
                                let got: Vec<u32> = got.iter().map(|x| x.to_bits()).collect();
                                assert_eq!(got, want, "{shape:?} ctx {ctx} heads {a}..{b}");
                            }
                        }
                    }
                }
            }
        }
    }

    /// Causal attention in f64 for one query row at position `pos` (grouped heads, window).
    fn reference_row(q: &[f32], k: &[f32], v: &[f32], pos: usize, shape: AttnShape) -> Vec<f64> {
        let AttnShape {
            n_head,
            n_head_kv,
            head_dim,
            scale,
            window,
        } = shape;
        let kv_dim = n_head_kv * head_dim;
        let lo = window.map_or(0, |w| (pos + 1).saturating_sub(w));
        let mut out = vec![0f64; n_head * head_dim];
        for h in 0..n_head {
            let off = (h / (n_head / n_head_kv)) * head_dim;
            let qh = &q[h * head_dim..(h + 1) * head_dim];
            let scores: Vec<f64> = (lo..=pos)
                .map(|j| {
                    let kr = &k[j * kv_dim + off..j * kv_dim + off + head_dim];
                    let dot: f64 = qh
                        .iter()
                        .zip(kr)
                        .map(|(a, b)| f64::from(*a) * f64::from(*b))
                        .sum();
                    dot * f64::from(scale)
                })
                .collect();
            let m = scores.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
            let w: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
            let total: f64 = w.iter().sum();
            for (wj, j) in w.iter().zip(lo..=pos) {
                let vr = &v[j * kv_dim + off..j * kv_dim + off + head_dim];
                for (o, &x) in out[h * head_dim..(h + 1) * head_dim].iter_mut().zip(vr) {
                    *o += wj / total * f64::from(x);
                }
            }
        }
        out
    }

    /// The values a q8_0 block stores, dequantized.
    fn through_q8_0(x: &[f32]) -> Vec<f32> {
        let mut out = vec![0f32; x.len()];
        for (block, o) in x.chunks_exact(QK8_0).zip(out.chunks_exact_mut(QK8_0)) {
            let (d, qs) = quantize_q8_0(block);
            dequantize_q8_0(&[d], &[qs], o);
        }
        out
    }

    /// q8_0 attention against f64 attention on random data: within 2e-5 of the f64 result on
    /// the values q8_0 holds (Q, K and V through q8_0: only float rounding differs), and within
    /// 0.03 (values in ±1) of the f64 result on the original values (the quantization error).
    /// Head sizes 32, 96 and 160, odd lengths, grouped heads, a window, one row and several.
    #[test]
    fn q8_0_attention_matches_f64_reference() {
        let mut rng = hearth_kernels::testing::Rng(0x0a77_e171);
        let mut worst = (0f64, 0f64);
        for (head_dim, n_head, n_head_kv, ctx, rows, window) in [
            (32, 2, 1, 1, 1, None),
            (96, 3, 1, 37, 5, None),
            (160, 4, 2, 301, 1, None),
            (64, 6, 2, 129, 70, Some(17)),
            (32, 1, 1, 600, 1, Some(255)),
        ] {
            #[allow(clippy::cast_precision_loss)]
            let shape = AttnShape {
                n_head,
                n_head_kv,
                head_dim,
                scale: 1.0 / (head_dim as f32).sqrt(),
                window,
            };
            let kv_dim = n_head_kv * head_dim;
            let k = random(&mut rng, ctx * kv_dim, 2.0);
            let v = random(&mut rng, ctx * kv_dim, 1.0);
            let q = random(&mut rng, rows * n_head * head_dim, 2.0);
            let mut cache = KvCache::new(KvCacheType::Q8_0, kv_dim, ctx);
            cache.append(&k, &v);
            let start = ctx - rows;
            let mut out = vec![0f32; q.len()];
            attention(&Pool::new(2).unwrap(), &q, &cache, start, shape, &mut out);
            let (kq, vq) = (through_q8_0(&k), through_q8_0(&v));
            for r in 0..rows {
                let qr = &q[r * n_head * head_dim..(r + 1) * n_head * head_dim];
                let exact = reference_row(&through_q8_0(qr), &kq, &vq, start + r, shape);
                let ideal = reference_row(qr, &k, &v, start + r, shape);
                let got = &out[r * n_head * head_dim..(r + 1) * n_head * head_dim];
                for ((&g, e), i) in got.iter().zip(&exact).zip(&ideal) {
                    let (de, di) = ((f64::from(g) - e).abs(), (f64::from(g) - i).abs());
                    assert!(
                        de <= 2e-5,
                        "{head_dim}/{ctx}/{rows}: {g} vs {e} (q8_0 values)"
                    );
                    assert!(di <= 0.03, "{head_dim}/{ctx}/{rows}: {g} vs {i} (original)");
                    worst = (worst.0.max(de), worst.1.max(di));
                }
            }
        }
        eprintln!(
            "q8_0 attention: max error {:.2e} (q8_0 values), {:.2e} (original)",
            worst.0, worst.1
        );
    }
}
