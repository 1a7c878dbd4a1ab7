//! The rounding of ggml's CPU kernels as the golden fixtures' llama.cpp build ran them
//! (x86_64 with AVX-512, GCC with `-ffp-contract=fast`), written lane by lane in plain Rust so
//! any CPU reproduces it: the vector `expf` behind SiLU and the attention softmax, the f16 dot
//! product's 16-lane tree, and the fused multiply-adds a C compiler makes of `a * b + c`.
//!
//! Each function names the ggml code it follows. `f32::mul_add` is one correctly rounded fused
//! multiply-add on every target, as `vfmadd` is. The public functions run their body compiled
//! for AVX2+FMA when the CPU has both (so `mul_add` is one instruction and the lane loops
//! vectorise; the arithmetic is the same), otherwise the plain build, where `mul_add` is libm's
//! `fmaf`. Calling a `#[target_feature]` function is `unsafe`; each call is
//! guarded by the run-time check in [`fma`], which is why this module allows `unsafe`.
#![allow(unsafe_code)]

/// Whether this CPU runs the AVX2+FMA build of the bodies below.
fn fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Defines `pub fn $name` that runs `$body` (an `#[inline(always)]` function) compiled for
/// AVX2+FMA when [`fma`] says so.
macro_rules! dispatch {
    ($(#[$doc:meta])* fn $name:ident / $fast:ident = $body:ident ($($arg:ident : $ty:ty),*) -> $ret:ty) => {
        $(#[$doc])*
        pub fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            if fma() {
                // SAFETY: the CPU has AVX2 and FMA (checked at run time just above).
                return unsafe { $fast($($arg),*) };
            }
            $body($($arg),*)
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn $fast($($arg: $ty),*) -> $ret {
            $body($($arg),*)
        }
    };
}

/// `v * 2^n` for an integral `n`, rounded once (AVX-512's `vscalefps`).
#[inline(always)]
fn scalef(v: f32, n: f32) -> f32 {
    #[allow(clippy::cast_possible_truncation)]
    let e = n as i32;
    // 2^e built from its exponent bits (callers keep |e| ≤ 192, well inside f64's range; a
    // `powi` call here kept the SiLU loop from vectorising). The product is exact in f64; one
    // rounding to f32, as the instruction does.
    #[allow(clippy::cast_sign_loss)]
    let pow2 = f64::from_bits(((e + 1023) as u64) << 52);
    #[allow(clippy::cast_possible_truncation)]
    let r = (f64::from(v) * pow2) as f32;
    r
}

/// `a` as a float from the 25-bit hex mantissa `m` (`0x1.xxxxxx`) and exponent `e`.
const fn hexf(m: u32, e: i32) -> f32 {
    // m / 2^24 * 2^e, both steps exact.
    let mut v = m as f32 / 16_777_216.0;
    let mut i = 0;
    if e >= 0 {
        while i < e {
            v *= 2.0;
            i += 1;
        }
    } else {
        while i < -e {
            v /= 2.0;
            i += 1;
        }
    }
    v
}

const ROUNDER: f32 = hexf(0x180_0000, 23); // 0x1.8p23
const LOG2E: f32 = hexf(0x171_5476, 0);
const LN2_HI: f32 = hexf(0x162_e400, -1);
const LN2_LO: f32 = hexf(0x17f_7d1c, -20);
const C5: f32 = hexf(0x10e_4020, -7);
const C4: f32 = hexf(0x157_3e2e, -5);
const C3: f32 = hexf(0x155_5e66, -3);
const C2: f32 = hexf(0x1ff_fdb6, -2);
const C1: f32 = hexf(0x1ff_ffec, -1);

/// One lane of ggml's AVX-512 `ggml_v_expf` (vec.h).
#[inline(always)]
pub fn expf(x: f32) -> f32 {
    let z = x.mul_add(LOG2E, ROUNDER);
    let n = z - ROUNDER;
    let b = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, x));
    let u = b * b;
    let j = C5
        .mul_add(b, C4)
        .mul_add(u, C3.mul_add(b, C2))
        .mul_add(u, C1.mul_add(b, 1.0));
    if n.abs() > 192.0 {
        if n <= 0.0 { 0.0 } else { f32::INFINITY }
    } else if n.is_nan() {
        f32::NAN
    } else {
        scalef(j, n)
    }
}

/// One lane of ggml's `ggml_v_silu`: `x / (1 + expf(-x))`.
#[inline(always)]
fn silu(x: f32) -> f32 {
    x / (1.0 + expf(0.0 - x))
}

/// `_mm512_reduce_add_ps` as GCC expands it: halves, then quarters, then pairs.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn reduce16(a: &[f32; 16]) -> f32 {
    let mut t8 = [0f32; 8];
    for i in 0..8 {
        t8[i] = a[8 + i] + a[i];
    }
    let mut t4 = [0f32; 4];
    for i in 0..4 {
        t4[i] = t8[4 + i] + t8[i];
    }
    let p0 = t4[0] + t4[2];
    let p1 = t4[1] + t4[3];
    p0 + p1
}

dispatch!(
    /// ggml's `rms_norm` of each `weight.len()`-wide row of `x`, times `weight`, into `out`:
    /// `Σ v²` in f64 in element order, `scale = 1/sqrt(mean + eps)` in f32, `(v·scale)·w`.
    /// Four rows' sums run side by side (four independent chains of f64 adds instead of one;
    /// each row's order is unchanged).
    fn rms_norm / rms_norm_fast = rms_norm_body(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) -> ()
);

dispatch!(
    /// [`rms_norm`] of `x` into itself (each row's scale is computed before the row is
    /// overwritten).
    fn rms_norm_in_place / rms_norm_in_place_fast = rms_norm_in_place_body(x: &mut [f32], weight: &[f32], eps: f32) -> ()
);

/// The rms-norm scales of `R` consecutive rows of `rows` (each `n` wide).
#[inline(always)]
fn rms_scales<const R: usize>(rows: &[f32], n: usize, eps: f32) -> [f32; R] {
    let rs: [&[f32]; R] = std::array::from_fn(|r| &rows[r * n..(r + 1) * n]);
    let mut sums = [0f64; R];
    for j in 0..n {
        for (sum, row) in sums.iter_mut().zip(&rs) {
            let v = row[j];
            *sum += f64::from(v * v);
        }
    }
    #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
    sums.map(|sum| {
        let mean = (sum / n as f64) as f32;
        1.0 / (mean + eps).sqrt()
    })
}

#[inline(always)]
fn rms_norm_body(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let n = weight.len();
    if n == 0 {
        return;
    }
    let mut groups = x.chunks_exact(4 * n);
    let mut outs = out.chunks_exact_mut(4 * n);
    for (xg, og) in (&mut groups).zip(&mut outs) {
        let scales = rms_scales::<4>(xg, n, eps);
        for ((row, o), scale) in xg.chunks_exact(n).zip(og.chunks_exact_mut(n)).zip(scales) {
            for ((o, &v), &w) in o.iter_mut().zip(row).zip(weight) {
                *o = (v * scale) * w;
            }
        }
    }
    for (row, o) in groups
        .remainder()
        .chunks_exact(n)
        .zip(outs.into_remainder().chunks_exact_mut(n))
    {
        let [scale] = rms_scales::<1>(row, n, eps);
        for ((o, &v), &w) in o.iter_mut().zip(row).zip(weight) {
            *o = (v * scale) * w;
        }
    }
}

#[inline(always)]
fn rms_norm_in_place_body(x: &mut [f32], weight: &[f32], eps: f32) {
    let n = weight.len();
    if n == 0 {
        return;
    }
    let mut groups = x.chunks_exact_mut(4 * n);
    for group in &mut groups {
        let scales = rms_scales::<4>(group, n, eps);
        for (row, scale) in group.chunks_exact_mut(n).zip(scales) {
            for (v, &w) in row.iter_mut().zip(weight) {
                *v = (*v * scale) * w;
            }
        }
    }
    for row in groups.into_remainder().chunks_exact_mut(n) {
        let [scale] = rms_scales::<1>(row, n, eps);
        for (v, &w) in row.iter_mut().zip(weight) {
            *v = (*v * scale) * w;
        }
    }
}

dispatch!(
    /// ggml's `rope_f32` on `x`'s rows of `row_len` values (heads of `head_dim`): row `i`
    /// rotated by `table`'s row `i` (`n_rot` values: `cos, sin` per pair), the first `n_rot`
    /// dimensions of each head in pairs `(2j, 2j+1)`, or `(j, j + n_rot/2)` when `neox`;
    /// `x0·cos - x1·sin` and `x0·sin + x1·cos` with one fused multiply-add each, as GCC
    /// contracts ggml's C.
    fn rope / rope_fast = rope_body(x: &mut [f32], table: &[f32], row_len: usize, head_dim: usize, n_rot: usize, neox: bool) -> ()
);

#[inline(always)]
fn rope_body(
    x: &mut [f32],
    table: &[f32],
    row_len: usize,
    head_dim: usize,
    n_rot: usize,
    neox: bool,
) {
    if row_len == 0 || head_dim == 0 || n_rot == 0 {
        return;
    }
    let half = n_rot / 2;
    for (row, cs) in x.chunks_exact_mut(row_len).zip(table.chunks_exact(n_rot)) {
        for head in row.chunks_exact_mut(head_dim) {
            if neox {
                let (lo, hi) = head[..n_rot].split_at_mut(half);
                for ((a, b), c) in lo.iter_mut().zip(hi.iter_mut()).zip(cs.chunks_exact(2)) {
                    let (x0, x1) = (*a, *b);
                    *a = x0.mul_add(c[0], -(x1 * c[1]));
                    *b = x0.mul_add(c[1], x1 * c[0]);
                }
            } else {
                for (pair, c) in head[..n_rot].chunks_exact_mut(2).zip(cs.chunks_exact(2)) {
                    let (x0, x1) = (pair[0], pair[1]);
                    pair[0] = x0.mul_add(c[0], -(x1 * c[1]));
                    pair[1] = x0.mul_add(c[1], x1 * c[0]);
                }
            }
        }
    }
}

// The f32-input dot product the attention kernel used before it read f16 rows directly;
// kept as the reference [`dot_f16_bits`] is tested against.
#[cfg(test)]
dispatch!(
    /// ggml's `ggml_vec_dot_f16` on AVX-512 (see [`dot_f16_body`]).
    fn dot_f16 / dot_f16_fast = dot_f16_body(x: &[f32], y: &[f32]) -> f32
);

/// ggml's `ggml_vec_dot_f16` on AVX-512 (no FP16 arithmetic): four 16-lane f32 accumulators
/// of fused multiply-adds per 64 elements, folded 0+2, 1+3, 0+1, reduced in a tree, then the
/// leftovers added one by one in f64. `x` and `y` hold f16 values widened to f32.
#[cfg(test)]
#[inline(always)]
fn dot_f16_body(x: &[f32], y: &[f32]) -> f32 {
    dot_lanes(x, y, |v| v)
}

dispatch!(
    /// [`dot_f16_bits`] without F16C: each f16 widened in its lane.
    fn dot_f16_bits_lanes / dot_f16_bits_lanes_fast = dot_f16_bits_body(x: &[f32], y: &[u16]) -> f32
);

#[inline(always)]
fn dot_f16_bits_body(x: &[f32], y: &[u16]) -> f32 {
    dot_lanes(x, y, hearth_kernels::f16_to_f32)
}

/// ggml's `ggml_vec_dot_f16` on AVX-512 (no FP16 arithmetic) of `x` (f16 values widened to
/// f32) with the f16 bit patterns `y`, widened as they are read: four 16-lane f32
/// accumulators of fused multiply-adds per 64 elements, folded 0+2, 1+3, 0+1, reduced in a
/// tree, then the leftovers added one by one in f64. With AVX2, FMA and F16C the lanes are
/// eight-wide registers and `vcvtph2ps` widens `y`, as ggml's `GGML_F32Cx16_LOAD` does;
/// widening is exact, so the bits are those of widening `y` first.
pub fn dot_f16_bits(x: &[f32], y: &[u16]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if fma() && f16c() {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked at run time just above).
        return unsafe { f16c::dot_f16(x, y) };
    }
    dot_f16_bits_lanes(x, y)
}

/// The lane structure of [`dot_f16_bits`], each `y` value passed through `widen`.
// Lane indices mirror the SIMD registers.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn dot_lanes<T: Copy>(x: &[f32], y: &[T], widen: impl Fn(T) -> f32) -> f32 {
    let n = x.len().min(y.len());
    let np = n & !63;
    let mut sum = [[0f32; 16]; 4];
    for i in (0..np).step_by(64) {
        for (j, acc) in sum.iter_mut().enumerate() {
            let base = i + 16 * j;
            for (l, a) in acc.iter_mut().enumerate() {
                *a = x[base + l].mul_add(widen(y[base + l]), *a);
            }
        }
    }
    for l in 0..16 {
        sum[0][l] += sum[2][l];
        sum[1][l] += sum[3][l];
    }
    for l in 0..16 {
        sum[0][l] += sum[1][l];
    }
    dot_tail(&sum[0], &x[np..n], &y[np..n], widen)
}

/// The end of [`dot_lanes`]: the folded 16 lanes reduced in a tree, then the leftover
/// products added one by one in f64.
#[inline(always)]
fn dot_tail<T: Copy>(lanes: &[f32; 16], x: &[f32], y: &[T], widen: impl Fn(T) -> f32) -> f32 {
    let mut total = f64::from(reduce16(lanes));
    for (&a, &b) in x.iter().zip(y) {
        total += f64::from(a * widen(b));
    }
    #[allow(clippy::cast_possible_truncation)]
    let s = total as f32;
    s
}

dispatch!(
    /// `silu(gate) * up` into `gate`, as ggml's `ggml_vec_swiglu_f32` on AVX-512: the vector
    /// SiLU for whole groups of 16, libm's `expf` for the leftovers.
    fn swiglu / swiglu_fast = swiglu_body(gate: &mut [f32], up: &[f32]) -> ()
);

#[inline(always)]
fn swiglu_body(gate: &mut [f32], up: &[f32]) {
    let whole = gate.len() & !15;
    let (head, tail) = gate.split_at_mut(whole);
    for (g, &u) in head.iter_mut().zip(up) {
        *g = silu(*g) * u;
    }
    for (g, &u) in tail.iter_mut().zip(&up[whole..]) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

/// The scores of one tile of ggml's tiled flash attention: `scores[t] = scale · q·k_t`, each
/// dot product one chain of fused multiply-adds over the dimensions in order (as `simd_gemm`
/// runs it), for `keys_t` (a tile of keys transposed: `head_dim` rows of `scores.len()`
/// values). With AVX2 and FMA the scores stay in registers across the dimensions
/// ([`blocked::tile_scores`]); each score's chain is the same.
pub fn tile_scores(q: &[f32], keys_t: &[f32], scale: f32, scores: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if fma() {
        // SAFETY: the CPU has AVX2 and FMA (checked at run time just above).
        return unsafe { blocked::tile_scores(q, keys_t, scale, scores) };
    }
    tile_scores_body(q, keys_t, scale, scores);
}

#[inline(always)]
fn tile_scores_body(q: &[f32], keys_t: &[f32], scale: f32, scores: &mut [f32]) {
    let n = scores.len();
    scores.fill(0.0);
    for (&qd, row) in q.iter().zip(keys_t.chunks_exact(n)) {
        for (s, &k) in scores.iter_mut().zip(row) {
            *s = k.mul_add(qd, *s);
        }
    }
    for s in scores.iter_mut() {
        *s *= scale;
    }
}

/// `out += Σ_t p[t] · v_t` as `simd_gemm` accumulates it: per output element one chain of
/// fused multiply-adds over `t` in order. `values` holds `p.len()` rows of `out.len()`. With
/// AVX2 and FMA a block of `out` stays in registers across `t`
/// ([`blocked::accumulate_values`]); each element's chain is the same.
pub fn accumulate_values(p: &[f32], values: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if fma() {
        // SAFETY: the CPU has AVX2 and FMA (checked at run time just above).
        return unsafe { blocked::accumulate_values(p, values, out) };
    }
    accumulate_values_body(p, values, out);
}

#[inline(always)]
fn accumulate_values_body(p: &[f32], values: &[f32], out: &mut [f32]) {
    for (&w, row) in p.iter().zip(values.chunks_exact(out.len())) {
        for (o, &v) in out.iter_mut().zip(row) {
            *o = v.mul_add(w, *o);
        }
    }
}

/// Query rows the [`wide`] kernels take at once.
pub const TILE_QUERIES: usize = 4;

/// [`tile_scores`] for several query rows against the same keys: [`TILE_QUERIES`] rows with
/// AVX-512 in one pass, each loaded key vector serving every row ([`wide::chains`]); any other
/// count, or without AVX-512, row by row. Each score's chain is the same, so are the bits.
pub fn tile_scores_rows(qs: &[&[f32]], keys_t: &[f32], scale: f32, scores: &mut [&mut [f32]]) {
    #[cfg(target_arch = "x86_64")]
    if let Some((qs, scores)) = wide_fits(qs, scores, keys_t) {
        // SAFETY: the CPU has AVX-512 F, AVX2 and FMA (checked at run time just above).
        return unsafe { wide::chains(qs, keys_t, scores, Some(scale)) };
    }
    for (q, s) in qs.iter().zip(scores) {
        tile_scores(q, keys_t, scale, s);
    }
}

/// [`accumulate_values`] for several rows of weights and outputs against the same values,
/// as [`tile_scores_rows`] shares them out ([`wide::chains`] for [`TILE_QUERIES`] rows with
/// AVX-512). Each element's chain is the same, so are the bits.
pub fn accumulate_values_rows(ps: &[&[f32]], values: &[f32], outs: &mut [&mut [f32]]) {
    #[cfg(target_arch = "x86_64")]
    if let Some((ps, outs)) = wide_fits(ps, outs, values) {
        // SAFETY: the CPU has AVX-512 F, AVX2 and FMA (checked at run time just above).
        return unsafe { wide::chains(ps, values, outs, None) };
    }
    for (p, o) in ps.iter().zip(outs) {
        accumulate_values(p, values, o);
    }
}

/// The [`TILE_QUERIES`] input rows of a [`wide`] kernel.
#[cfg(target_arch = "x86_64")]
type WideRows<'s, 'a> = &'s [&'a [f32]; TILE_QUERIES];

/// The [`TILE_QUERIES`] output rows of a [`wide`] kernel.
#[cfg(target_arch = "x86_64")]
type WideRowsMut<'s, 'b> = &'s mut [&'b mut [f32]; TILE_QUERIES];

/// `inputs` and `outputs` as the [`TILE_QUERIES`] rows the [`wide`] kernels take, when they
/// run for these shapes: the CPU has AVX-512, there are [`TILE_QUERIES`] rows of each, the
/// outputs are a whole number of 16-lane registers wide and all as wide, the inputs all as
/// long, and `matrix` holds an input's length of output-wide rows.
#[cfg(target_arch = "x86_64")]
fn wide_fits<'s, 'a, 'b>(
    inputs: &'s [&'a [f32]],
    outputs: &'s mut [&'b mut [f32]],
    matrix: &[f32],
) -> Option<(WideRows<'s, 'a>, WideRowsMut<'s, 'b>)> {
    let inputs: &[&[f32]; TILE_QUERIES] = inputs.try_into().ok()?;
    let outputs: &mut [&mut [f32]; TILE_QUERIES] = outputs.try_into().ok()?;
    let (len, n) = (inputs[0].len(), outputs[0].len());
    let fits = avx512()
        && n.is_multiple_of(16)
        && matrix.len() >= len * n
        && inputs.iter().all(|i| i.len() == len)
        && outputs.iter().all(|o| o.len() == n);
    fits.then_some((inputs, outputs))
}

/// Whether this CPU runs the AVX-512 versions in [`wide`] (AVX-512 F with AVX2 and FMA).
#[cfg(target_arch = "x86_64")]
fn avx512() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| fma() && std::arch::is_x86_feature_detected!("avx512f"))
}

// The f32-input multiply-add the attention kernel used before it read f16 rows directly;
// kept as the reference [`mad_f16_bits`] is tested against.
#[cfg(test)]
dispatch!(
    /// ggml's `ggml_vec_mad_f16`: `acc = f16(fma(v, w, acc))` elementwise, the accumulator
    /// held in f16 (as f32 values that are exactly f16).
    fn mad_f16 / mad_f16_fast = mad_f16_body(acc: &mut [f32], values: &[f32], w: f32) -> ()
);

#[cfg(test)]
#[inline(always)]
fn mad_f16_body(acc: &mut [f32], values: &[f32], w: f32) {
    for (a, &v) in acc.iter_mut().zip(values) {
        *a = super::ops::round_to_f16(v.mul_add(w, *a));
    }
}

dispatch!(
    /// [`mad_f16_bits`] without F16C: each f16 widened and each sum rounded in its lane.
    fn mad_f16_bits_lanes / mad_f16_bits_lanes_fast = mad_f16_bits_body(acc: &mut [f32], values: &[u16], w: f32) -> ()
);

#[inline(always)]
fn mad_f16_bits_body(acc: &mut [f32], values: &[u16], w: f32) {
    for (a, &v) in acc.iter_mut().zip(values) {
        *a = super::ops::round_to_f16(hearth_kernels::f16_to_f32(v).mul_add(w, *a));
    }
}

/// ggml's `ggml_vec_mad_f16`: `acc = f16(fma(v, w, acc))` elementwise, the accumulator held
/// in f16 (as f32 values that are exactly f16), the values given as f16 bit patterns and
/// widened as they are read. With AVX2, FMA and F16C eight lanes at a time, the f16 rounding of
/// the accumulator a `vcvtps2ph`/`vcvtph2ps` round trip, as ggml's `GGML_F32Cx16_STORE` then
/// `GGML_F32Cx16_LOAD` of its f16 accumulator.
pub fn mad_f16_bits(acc: &mut [f32], values: &[u16], w: f32) {
    #[cfg(target_arch = "x86_64")]
    if fma() && f16c() {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked at run time just above).
        return unsafe { f16c::mad_f16(acc, values, w) };
    }
    mad_f16_bits_lanes(acc, values, w);
}

dispatch!(
    /// ggml's `ggml_vec_soft_max_f32` on AVX-512: `x = expf(x - max)` lane by lane, summed per
    /// 16 lanes in a tree and across groups in f64 (leftovers one by one with libm's `expf`).
    fn soft_max / soft_max_fast = soft_max_body(x: &mut [f32], max: f32) -> f64
);

#[inline(always)]
fn soft_max_body(x: &mut [f32], max: f32) -> f64 {
    let n = x.len();
    let np = n & !15;
    let mut sum = 0f64;
    for chunk in x[..np].chunks_exact_mut(16) {
        let mut lanes = [0f32; 16];
        for (v, lane) in chunk.iter_mut().zip(lanes.iter_mut()) {
            *v = expf(*v - max);
            *lane = *v;
        }
        sum += f64::from(reduce16(&lanes));
    }
    for v in &mut x[np..] {
        *v = (*v - max).exp();
        sum += f64::from(*v);
    }
    sum
}

dispatch!(
    /// ggml's `ggml_vec_mad_f32`: `acc = fma(v, w, acc)` elementwise, in f32 (the q8_0 cache's
    /// value accumulation, after `dequantize_row_q8_0`).
    fn mad_f32 / mad_f32_fast = mad_f32_body(acc: &mut [f32], values: &[f32], w: f32) -> ()
);

#[inline(always)]
fn mad_f32_body(acc: &mut [f32], values: &[f32], w: f32) {
    for (a, &v) in acc.iter_mut().zip(values) {
        *a = v.mul_add(w, *a);
    }
}

/// ggml's `ggml_vec_scale_f16`: `acc = f16(acc · s)` elementwise, the accumulator held in f16
/// (as f32 values that are exactly f16). With AVX2, FMA and F16C eight lanes at a time, the
/// rounding a `vcvtps2ph`/`vcvtph2ps` round trip as in [`mad_f16_bits`].
pub fn scale_f16(acc: &mut [f32], s: f32) {
    #[cfg(target_arch = "x86_64")]
    if fma() && f16c() {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked at run time just above).
        return unsafe { f16c::scale_f16(acc, s) };
    }
    scale_f16_body(acc, s);
}

#[inline(always)]
fn scale_f16_body(acc: &mut [f32], s: f32) {
    for a in acc {
        *a = super::ops::round_to_f16(*a * s);
    }
}

/// Whether this CPU has F16C (8-lane f16 ⇄ f32 conversion instructions).
fn f16c() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| {
            std::arch::is_x86_feature_detected!("f16c")
                && std::arch::is_x86_feature_detected!("avx")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Widens f16 bit patterns to f32 (`dst.len()` values; exact). With F16C eight at a time
/// (`vcvtph2ps`, as ggml's `GGML_CPU_FP16_TO_FP32` on x86), otherwise one by one.
pub fn f16_to_f32_slice(src: &[u16], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if f16c() {
        // SAFETY: the CPU has F16C and AVX (checked at run time just above).
        return unsafe { f16c::to_f32(src, dst) };
    }
    for (d, &h) in dst.iter_mut().zip(src) {
        *d = hearth_kernels::f16_to_f32(h);
    }
}

/// Rounds f32 values to f16 bit patterns, to nearest with ties to even (overflow to
/// infinity), as `round_to_f16` does. With F16C eight at a time (`vcvtps2ph`), otherwise one
/// by one.
pub fn f32_to_f16_slice(src: &[f32], dst: &mut [u16]) {
    #[cfg(target_arch = "x86_64")]
    if f16c() {
        // SAFETY: the CPU has F16C and AVX (checked at run time just above).
        return unsafe { f16c::from_f32(src, dst) };
    }
    for (d, &x) in dst.iter_mut().zip(src) {
        *d = super::ops::f16_bits(x);
    }
}

/// `gelu(gate) * up`, elementwise, into `gate`, as ggml's CPU `ggml_vec_geglu_f32` with
/// `GGML_GELU_FP16`: the gate saturates outside ±10 (0 below, the identity above); inside, it
/// is rounded to f16 and looked up in `table` (`ggml_table_gelu_f16`, one value per f16 bit
/// pattern). With AVX2, FMA and F16C eight lanes at a time, the rounding `vcvtps2ph` (as
/// ggml's `GGML_CPU_FP32_TO_FP16`) and the lookup a gather; the bits are those of
/// [`geglu_body`] (a NaN gate indexes some NaN entry; the table's NaN entries are all the
/// same NaN).
pub fn geglu(gate: &mut [f32], up: &[f32], table: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if fma() && f16c() && table.len() > usize::from(u16::MAX) {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked at run time just above), and
        // `table` has an entry for every u16.
        return unsafe { f16c::geglu(gate, up, table) };
    }
    geglu_body(gate, up, table);
}

/// [`geglu`] one value at a time, the f16 rounding in software.
#[inline(always)]
fn geglu_body(gate: &mut [f32], up: &[f32], table: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        let x = *g;
        *g = if x <= -10.0 {
            0.0
        } else if x >= 10.0 {
            x * u
        } else {
            table
                .get(usize::from(super::ops::f16_bits(x)))
                .map_or(f32::NAN, |&t| t * u)
        };
    }
}

/// The attention tile kernels with their accumulators held in registers.
#[cfg(target_arch = "x86_64")]
// Written for Rust 1.85, which needed `unsafe` around every intrinsic.
#[allow(unused_unsafe)]
mod blocked {
    use std::arch::x86_64::{
        __m256, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_mul_ps, _mm256_set1_ps, _mm256_setzero_ps,
        _mm256_storeu_ps,
    };

    /// [`super::tile_scores`]: columns in blocks of 64, then 8, each block's scores in `R`
    /// registers for the whole chain over the dimensions; the last columns one by one.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tile_scores(q: &[f32], keys_t: &[f32], scale: f32, scores: &mut [f32]) {
        let n = scores.len();
        if n == 0 {
            return;
        }
        let mut c = 0;
        while c + 64 <= n {
            // SAFETY: the CPU has AVX2 and FMA (this function's contract); `c + 64 <= n`.
            unsafe { scores_block::<8>(q, keys_t, scale, scores, c) };
            c += 64;
        }
        while c + 8 <= n {
            // SAFETY: as above; `c + 8 <= n`.
            unsafe { scores_block::<1>(q, keys_t, scale, scores, c) };
            c += 8;
        }
        for col in c..n {
            let mut s = 0f32;
            for (&qd, row) in q.iter().zip(keys_t.chunks_exact(n)) {
                s = row[col].mul_add(qd, s);
            }
            scores[col] = s * scale;
        }
    }

    /// Scores `c..c + 8R` of [`tile_scores`] (the caller keeps `c + 8R <= scores.len()`).
    #[inline(always)]
    unsafe fn scores_block<const R: usize>(
        q: &[f32],
        keys_t: &[f32],
        scale: f32,
        scores: &mut [f32],
        c: usize,
    ) {
        let n = scores.len();
        // SAFETY: the caller's CPU has AVX2 and FMA; every load and store below reads or
        // writes 8 f32 inside a slice of `8R` values.
        unsafe {
            let mut acc: [__m256; R] = [_mm256_setzero_ps(); R];
            for (&qd, row) in q.iter().zip(keys_t.chunks_exact(n)) {
                let qv = _mm256_set1_ps(qd);
                let block = &row[c..c + 8 * R];
                for (r, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(_mm256_loadu_ps(block[8 * r..].as_ptr()), qv, *a);
                }
            }
            let sv = _mm256_set1_ps(scale);
            let out = &mut scores[c..c + 8 * R];
            for (r, a) in acc.iter().enumerate() {
                _mm256_storeu_ps(out[8 * r..].as_mut_ptr(), _mm256_mul_ps(*a, sv));
            }
        }
    }

    /// [`super::accumulate_values`]: `out` in blocks of 64, then 8, each block in `R` registers
    /// for the whole chain over `t`; the last elements one by one.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn accumulate_values(p: &[f32], values: &[f32], out: &mut [f32]) {
        let n = out.len();
        if n == 0 {
            return;
        }
        let mut c = 0;
        while c + 64 <= n {
            // SAFETY: the CPU has AVX2 and FMA (this function's contract); `c + 64 <= n`.
            unsafe { values_block::<8>(p, values, out, c) };
            c += 64;
        }
        while c + 8 <= n {
            // SAFETY: as above; `c + 8 <= n`.
            unsafe { values_block::<1>(p, values, out, c) };
            c += 8;
        }
        for col in c..n {
            let mut o = out[col];
            for (&w, row) in p.iter().zip(values.chunks_exact(n)) {
                o = row[col].mul_add(w, o);
            }
            out[col] = o;
        }
    }

    /// Elements `c..c + 8R` of [`accumulate_values`] (the caller keeps `c + 8R <= out.len()`).
    #[inline(always)]
    unsafe fn values_block<const R: usize>(p: &[f32], values: &[f32], out: &mut [f32], c: usize) {
        let n = out.len();
        let out = &mut out[c..c + 8 * R];
        // SAFETY: the caller's CPU has AVX2 and FMA; every load and store below reads or
        // writes 8 f32 inside a slice of `8R` values.
        unsafe {
            let mut acc: [__m256; R] = [_mm256_setzero_ps(); R];
            for (r, a) in acc.iter_mut().enumerate() {
                *a = _mm256_loadu_ps(out[8 * r..].as_ptr());
            }
            for (&w, row) in p.iter().zip(values.chunks_exact(n)) {
                let wv = _mm256_set1_ps(w);
                let block = &row[c..c + 8 * R];
                for (r, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(_mm256_loadu_ps(block[8 * r..].as_ptr()), wv, *a);
                }
            }
            for (r, a) in acc.iter().enumerate() {
                _mm256_storeu_ps(out[8 * r..].as_mut_ptr(), *a);
            }
        }
    }
}

/// The attention tile kernels for [`TILE_QUERIES`] query rows on 512-bit registers: 64
/// columns (four registers) for each of the four rows stay in registers for a whole chain,
/// and each loaded key or value vector feeds the four rows' fused multiply-adds.
#[cfg(target_arch = "x86_64")]
mod wide {
    use std::arch::x86_64::{
        __m512, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_mul_ps, _mm512_set1_ps, _mm512_setzero_ps,
        _mm512_storeu_ps,
    };

    use super::TILE_QUERIES as Q;

    /// `out[q][col]` as one chain of `fmadd(matrix[j][col], ws[q][j], ·)` over the rows `j`
    /// of `matrix`, for the four rows, 64 (then 16) columns at a time in registers: started
    /// from zero and multiplied by `scale` at the end when it is given
    /// ([`super::tile_scores_rows`]: `ws` the queries, `matrix` the transposed keys),
    /// otherwise started from `out` ([`super::accumulate_values_rows`]: `ws` the softmax
    /// weights, `matrix` the values). The caller checked the shapes ([`super::wide_fits`]).
    #[target_feature(enable = "avx2,fma,avx512f")]
    pub unsafe fn chains(
        ws: &[&[f32]; Q],
        matrix: &[f32],
        outs: &mut [&mut [f32]; Q],
        scale: Option<f32>,
    ) {
        let n = outs[0].len();
        let mut c = 0;
        while c + 64 <= n {
            // SAFETY: the CPU has AVX-512 F, AVX2 and FMA (this function's contract).
            unsafe { chains_block::<4>(ws, matrix, outs, scale, c) };
            c += 64;
        }
        while c + 16 <= n {
            // SAFETY: as above.
            unsafe { chains_block::<1>(ws, matrix, outs, scale, c) };
            c += 16;
        }
    }

    /// Columns `c..c + 16R` of [`chains`] for the four rows.
    #[inline(always)]
    unsafe fn chains_block<const R: usize>(
        ws: &[&[f32]; Q],
        matrix: &[f32],
        outs: &mut [&mut [f32]; Q],
        scale: Option<f32>,
        c: usize,
    ) {
        let n = outs[0].len();
        let len = ws[0].len();
        // SAFETY: the caller's CPU has AVX-512 F; every load and store below reads or writes
        // 16 f32 inside a slice of `16R` values.
        unsafe {
            let mut acc: [[__m512; R]; Q] = [[_mm512_setzero_ps(); R]; Q];
            if scale.is_none() {
                for (acc, o) in acc.iter_mut().zip(outs.iter()) {
                    for (r, a) in acc.iter_mut().enumerate() {
                        *a = _mm512_loadu_ps(o[c + 16 * r..].as_ptr());
                    }
                }
            }
            for (j, row) in matrix.chunks_exact(n).take(len).enumerate() {
                let block = &row[c..c + 16 * R];
                let m: [__m512; R] =
                    std::array::from_fn(|r| _mm512_loadu_ps(block[16 * r..].as_ptr()));
                for (acc, w) in acc.iter_mut().zip(ws) {
                    let wv = _mm512_set1_ps(w[j]);
                    for (a, m) in acc.iter_mut().zip(&m) {
                        *a = _mm512_fmadd_ps(*m, wv, *a);
                    }
                }
            }
            for (acc, o) in acc.iter().zip(outs.iter_mut()) {
                for (r, a) in acc.iter().enumerate() {
                    let v = match scale {
                        Some(s) => _mm512_mul_ps(*a, _mm512_set1_ps(s)),
                        None => *a,
                    };
                    _mm512_storeu_ps(o[c + 16 * r..].as_mut_ptr(), v);
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
// Written for Rust 1.85, which needed `unsafe` around every intrinsic.
#[allow(unused_unsafe)]
mod f16c {
    use std::arch::x86_64::{
        __m256, _CMP_GE_OQ, _CMP_LE_OQ, _CMP_UNORD_Q, _MM_FROUND_TO_NEAREST_INT, _mm_loadu_si128,
        _mm_storeu_si128, _mm256_add_ps, _mm256_blendv_ps, _mm256_cmp_ps, _mm256_cvtepu16_epi32,
        _mm256_cvtph_ps, _mm256_cvtps_ph, _mm256_fmadd_ps, _mm256_i32gather_ps, _mm256_loadu_ps,
        _mm256_mul_ps, _mm256_set1_ps, _mm256_setzero_ps, _mm256_storeu_ps,
    };

    /// Eight f16 bit patterns widened to f32 (`vcvtph2ps`).
    #[inline(always)]
    unsafe fn load_f16(src: &[u16]) -> __m256 {
        debug_assert!(src.len() >= 8);
        // SAFETY: the caller's CPU has F16C; `src` holds at least 8 u16 (16 bytes).
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(src.as_ptr().cast())) }
    }

    /// [`super::dot_f16_bits`] in registers: lane `l` of the body's accumulator `j` is lane
    /// `l % 8` of `acc[2j + l / 8]`, each taking the same fused multiply-adds in the same order.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f16(x: &[f32], y: &[u16]) -> f32 {
        let n = x.len().min(y.len());
        let np = n & !63;
        let mut acc = [unsafe { _mm256_setzero_ps() }; 8];
        for (xc, yc) in x[..np].chunks_exact(64).zip(y[..np].chunks_exact(64)) {
            for (k, a) in acc.iter_mut().enumerate() {
                // SAFETY: the CPU has AVX2, FMA and F16C (this function's contract); each
                // chunk holds 64 values, so 8 from `8 * k` are in bounds.
                unsafe {
                    let xv = _mm256_loadu_ps(xc[8 * k..].as_ptr());
                    *a = _mm256_fmadd_ps(xv, load_f16(&yc[8 * k..]), *a);
                }
            }
        }
        let mut lanes = [0f32; 16];
        // SAFETY: as above; `lanes` holds 16 writable f32.
        unsafe {
            // sum0 += sum2, sum1 += sum3, then sum0 += sum1, lane by lane.
            let lo = _mm256_add_ps(_mm256_add_ps(acc[0], acc[4]), _mm256_add_ps(acc[2], acc[6]));
            let hi = _mm256_add_ps(_mm256_add_ps(acc[1], acc[5]), _mm256_add_ps(acc[3], acc[7]));
            _mm256_storeu_ps(lanes.as_mut_ptr(), lo);
            _mm256_storeu_ps(lanes[8..].as_mut_ptr(), hi);
        }
        super::dot_tail(&lanes, &x[np..n], &y[np..n], hearth_kernels::f16_to_f32)
    }

    /// [`super::mad_f16_bits`] in registers. The f16 round trip rounds as `round_to_f16`
    /// (nearest, ties to even, overflow to infinity); a NaN sum is kept as it is, as
    /// `round_to_f16` keeps it.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn mad_f16(acc: &mut [f32], values: &[u16], w: f32) {
        let n = acc.len().min(values.len());
        let whole = n & !7;
        // SAFETY: the CPU has AVX2, FMA and F16C (this function's contract).
        let wv = unsafe { _mm256_set1_ps(w) };
        for (a, v) in acc[..whole]
            .chunks_exact_mut(8)
            .zip(values[..whole].chunks_exact(8))
        {
            // SAFETY: as above; `a` is 8 writable f32 and `v` 8 readable u16.
            unsafe {
                let sum = _mm256_fmadd_ps(load_f16(v), wv, _mm256_loadu_ps(a.as_ptr()));
                _mm256_storeu_ps(a.as_mut_ptr(), round_f16(sum));
            }
        }
        for (a, &v) in acc[whole..n].iter_mut().zip(&values[whole..n]) {
            *a = super::super::ops::round_to_f16(hearth_kernels::f16_to_f32(v).mul_add(w, *a));
        }
    }

    /// [`super::scale_f16`] in registers.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn scale_f16(acc: &mut [f32], s: f32) {
        let whole = acc.len() & !7;
        // SAFETY: the CPU has AVX2, FMA and F16C (this function's contract).
        let sv = unsafe { _mm256_set1_ps(s) };
        let (head, tail) = acc.split_at_mut(whole);
        for a in head.chunks_exact_mut(8) {
            // SAFETY: as above; `a` is 8 writable f32.
            unsafe {
                let x = _mm256_mul_ps(_mm256_loadu_ps(a.as_ptr()), sv);
                _mm256_storeu_ps(a.as_mut_ptr(), round_f16(x));
            }
        }
        for a in tail {
            *a = super::super::ops::round_to_f16(*a * s);
        }
    }

    /// Each lane rounded to f16 and back, as `round_to_f16` rounds (nearest, ties to even,
    /// overflow to infinity); a NaN lane is kept as it is, as `round_to_f16` keeps it.
    #[inline(always)]
    unsafe fn round_f16(x: __m256) -> __m256 {
        // SAFETY: the caller's CPU has AVX and F16C.
        unsafe {
            let rounded = _mm256_cvtph_ps(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x));
            let nan = _mm256_cmp_ps::<_CMP_UNORD_Q>(x, x);
            _mm256_blendv_ps(rounded, x, nan)
        }
    }

    #[target_feature(enable = "avx,f16c")]
    pub unsafe fn to_f32(src: &[u16], dst: &mut [f32]) {
        let n = src.len().min(dst.len());
        let whole = n & !7;
        for (s, d) in src[..whole]
            .chunks_exact(8)
            .zip(dst[..whole].chunks_exact_mut(8))
        {
            // SAFETY: `s` is 8 readable u16 (16 bytes), `d` 8 writable f32; unaligned is fine.
            unsafe {
                _mm256_storeu_ps(
                    d.as_mut_ptr(),
                    _mm256_cvtph_ps(_mm_loadu_si128(s.as_ptr().cast())),
                )
            };
        }
        for (d, &h) in dst[whole..n].iter_mut().zip(&src[whole..n]) {
            *d = hearth_kernels::f16_to_f32(h);
        }
    }

    /// [`super::geglu`] eight lanes at a time (`table` has an entry for every u16).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn geglu(gate: &mut [f32], up: &[f32], table: &[f32]) {
        let n = gate.len().min(up.len());
        let whole = n & !7;
        if table.len() <= usize::from(u16::MAX) {
            return super::geglu_body(gate, up, table);
        }
        for (g, u) in gate[..whole]
            .chunks_exact_mut(8)
            .zip(up[..whole].chunks_exact(8))
        {
            // SAFETY: the CPU has AVX2, FMA and F16C (this function's contract); `g` is 8
            // writable f32, `u` 8 readable f32; the gathered indices are u16 values, each
            // inside `table` (checked above).
            unsafe {
                let x = _mm256_loadu_ps(g.as_ptr());
                let uv = _mm256_loadu_ps(u.as_ptr());
                let bits = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x);
                let t = _mm256_i32gather_ps::<4>(table.as_ptr(), _mm256_cvtepu16_epi32(bits));
                let mut r = _mm256_mul_ps(t, uv);
                let high = _mm256_cmp_ps::<_CMP_GE_OQ>(x, _mm256_set1_ps(10.0));
                r = _mm256_blendv_ps(r, _mm256_mul_ps(x, uv), high);
                let low = _mm256_cmp_ps::<_CMP_LE_OQ>(x, _mm256_set1_ps(-10.0));
                r = _mm256_blendv_ps(r, _mm256_setzero_ps(), low);
                _mm256_storeu_ps(g.as_mut_ptr(), r);
            }
        }
        super::geglu_body(&mut gate[whole..n], &up[whole..n], table);
    }

    #[target_feature(enable = "avx,f16c")]
    pub unsafe fn from_f32(src: &[f32], dst: &mut [u16]) {
        let n = src.len().min(dst.len());
        let whole = n & !7;
        for (s, d) in src[..whole]
            .chunks_exact(8)
            .zip(dst[..whole].chunks_exact_mut(8))
        {
            // SAFETY: `s` is 8 readable f32, `d` 8 writable u16 (16 bytes); unaligned is fine.
            unsafe {
                let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(s.as_ptr()));
                _mm_storeu_si128(d.as_mut_ptr().cast(), h);
            }
        }
        for (d, &x) in dst[whole..n].iter_mut().zip(&src[whole..n]) {
            *d = super::super::ops::f16_bits(x);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_are_the_hex_literals() {
        assert_eq!(ROUNDER, 12_582_912.0);
        assert_eq!(LOG2E.to_bits(), 0x3fb8_aa3b);
        assert_eq!(LN2_HI, 0.693_145_75);
        assert_eq!(C1.to_bits(), 0x3f7f_fff6);
    }

    #[test]
    fn expf_is_close_to_libm() {
        for i in -2000..2000 {
            #[allow(clippy::cast_precision_loss)]
            let x = i as f32 * 0.043;
            let (got, want) = (expf(x), x.exp());
            assert!(
                (got - want).abs() <= want * 4e-7,
                "expf({x}) = {got}, libm {want}"
            );
        }
        assert_eq!(expf(f32::NEG_INFINITY), 0.0);
        assert_eq!(expf(200.0), f32::INFINITY);
        assert_eq!(expf(-200.0), 0.0);
    }

    #[test]
    fn f16_dot_is_close_to_f64() {
        let x: Vec<f32> = (0..131)
            .map(|i| ((i * 37) % 17) as f32 * 0.25 - 2.0)
            .collect();
        let y: Vec<f32> = (0..131)
            .map(|i| ((i * 11) % 13) as f32 * 0.5 - 3.0)
            .collect();
        let want: f64 = x
            .iter()
            .zip(&y)
            .map(|(a, b)| f64::from(*a) * f64::from(*b))
            .sum();
        assert!((f64::from(dot_f16(&x, &y)) - want).abs() < 1e-3);
    }

    /// The AVX2+FMA build of each body (what the public functions run on this CPU, when it
    /// has them) gives the same bits as the plain build.
    #[test]
    fn both_builds_agree_bit_for_bit() {
        let mut rng = hearth_kernels::testing::Rng(0x9e37_79b9);
        let mut next = || super::super::ops::round_to_f16(rng.unit() * 10.0);
        for n in [1, 15, 16, 63, 64, 65, 130, 256] {
            let x: Vec<f32> = (0..n).map(|_| next()).collect();
            let y: Vec<f32> = (0..n).map(|_| next()).collect();
            assert_eq!(dot_f16(&x, &y).to_bits(), dot_f16_body(&x, &y).to_bits());
            let (mut a, mut b) = (x.clone(), x.clone());
            swiglu(&mut a, &y);
            swiglu_body(&mut b, &y);
            assert_eq!(a, b);
            let (mut a, mut b) = (y.clone(), y.clone());
            assert_eq!(
                soft_max(&mut a, 3.0).to_bits(),
                soft_max_body(&mut b, 3.0).to_bits()
            );
            assert_eq!(a, b);
            let (mut a, mut b) = (y.clone(), y.clone());
            mad_f16(&mut a, &x, 0.37);
            mad_f16_body(&mut b, &x, 0.37);
            assert_eq!(a, b);
            let (mut a, mut b) = (vec![0f32; 4], vec![0f32; 4]);
            let keys_t: Vec<f32> = (0..n * 4).map(|_| next()).collect();
            tile_scores(&x, &keys_t, 0.125, &mut a);
            tile_scores_body(&x, &keys_t, 0.125, &mut b);
            assert_eq!(a, b);
            let (mut a, mut b) = (vec![1f32; 3], vec![1f32; 3]);
            let values: Vec<f32> = (0..n * 3).map(|_| next()).collect();
            accumulate_values(&x, &values, &mut a);
            accumulate_values_body(&x, &values, &mut b);
            assert_eq!(a, b);
            let (mut a, mut b) = (y.clone(), y.clone());
            mad_f32(&mut a, &x, 0.37);
            mad_f32_body(&mut b, &x, 0.37);
            assert_eq!(a, b);
        }
    }

    /// The register-blocked tile kernels give the bits of their plain bodies, over widths
    /// that exercise the 64- and 8-column blocks and the one-by-one leftovers.
    #[test]
    fn blocked_tile_kernels_agree_with_bodies() {
        let mut rng = hearth_kernels::testing::Rng(0x7f4a_7c15);
        let mut next = || rng.unit() * 4.0 - 2.0;
        for cols in [1, 7, 8, 9, 63, 64, 65, 72, 75, 128, 131] {
            for dims in [0, 1, 5, 64, 256, 257] {
                let q: Vec<f32> = (0..dims).map(|_| next()).collect();
                let keys_t: Vec<f32> = (0..dims * cols).map(|_| next()).collect();
                let (mut a, mut b) = (vec![9f32; cols], vec![9f32; cols]);
                tile_scores(&q, &keys_t, 0.0625, &mut a);
                tile_scores_body(&q, &keys_t, 0.0625, &mut b);
                assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
                // `dims` weights over rows of `cols` values.
                let init: Vec<f32> = (0..cols).map(|_| next()).collect();
                let (mut a, mut b) = (init.clone(), init);
                accumulate_values(&q, &keys_t, &mut a);
                accumulate_values_body(&q, &keys_t, &mut b);
                assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
            }
        }
    }

    /// The several-row tile kernels give each row the bits of its plain body: four rows and
    /// three (row by row), widths of whole 64-column blocks, 16-column blocks and neither
    /// (row-by-row fallback), zero to 257 dimensions.
    #[test]
    fn four_row_tile_kernels_agree_with_bodies() {
        let mut rng = hearth_kernels::testing::Rng(0x0f0e_4a11);
        let mut next = || rng.unit() * 4.0 - 2.0;
        for cols in [16, 48, 64, 80, 256, 9] {
            for dims in [0, 1, 5, 64, 256, 257] {
                for rows in [TILE_QUERIES, 3] {
                    let qs: Vec<Vec<f32>> = (0..rows)
                        .map(|_| (0..dims).map(|_| next()).collect())
                        .collect();
                    let q_rows: Vec<&[f32]> = qs.iter().map(Vec::as_slice).collect();
                    let keys_t: Vec<f32> = (0..dims * cols).map(|_| next()).collect();
                    let mut got = vec![vec![9f32; cols]; rows];
                    let mut outs: Vec<&mut [f32]> = got.iter_mut().map(Vec::as_mut_slice).collect();
                    tile_scores_rows(&q_rows, &keys_t, 0.0625, &mut outs);
                    for (q, g) in qs.iter().zip(&got) {
                        let mut want = vec![9f32; cols];
                        tile_scores_body(q, &keys_t, 0.0625, &mut want);
                        assert!(g.iter().zip(&want).all(|(x, y)| x.to_bits() == y.to_bits()));
                    }
                    let init: Vec<Vec<f32>> = (0..rows)
                        .map(|_| (0..cols).map(|_| next()).collect())
                        .collect();
                    let mut got = init.clone();
                    let mut outs: Vec<&mut [f32]> = got.iter_mut().map(Vec::as_mut_slice).collect();
                    accumulate_values_rows(&q_rows, &keys_t, &mut outs);
                    for ((q, g), init) in qs.iter().zip(&got).zip(init) {
                        let mut want = init;
                        accumulate_values_body(q, &keys_t, &mut want);
                        assert!(g.iter().zip(&want).all(|(x, y)| x.to_bits() == y.to_bits()));
                    }
                }
            }
        }
    }

    /// The F16C GEGLU (hardware f16 rounding, gathered lookups) gives the bits of the
    /// software-rounded body: random gates over ±12, every f16 value in ±10 and the f32 values
    /// either side of it and of each halfway point (the rounding ties), subnormals, the
    /// saturation edges, infinities and NaNs of several payloads; odd lengths.
    #[test]
    fn geglu_f16c_agrees_with_body() {
        let table = super::super::ops::gelu_table();
        // Every NaN bit pattern looks up the same NaN, so a NaN gate's result does not depend
        // on how its payload is rounded.
        let nans: Vec<u32> = (0..=u16::MAX)
            .filter(|&h| (h >> 10) & 0x1f == 0x1f && h & 0x3ff != 0)
            .map(|h| table[usize::from(h)].to_bits())
            .collect();
        assert!(
            nans.iter()
                .all(|&b| b == nans[0] && f32::from_bits(b).is_nan())
        );

        let mut gates: Vec<f32> = Vec::new();
        for h in 0..=u16::MAX {
            let v = hearth_kernels::f16_to_f32(h);
            if v.is_finite() && v.abs() < 10.0 {
                let b = v.to_bits();
                // The value, its f32 neighbours and the neighbours of the halfway point up.
                let half = b + (1 << 12);
                for x in [b, b + 1, b.wrapping_sub(1), half, half - 1, half + 1] {
                    gates.push(f32::from_bits(x));
                }
            }
        }
        let mut rng = hearth_kernels::testing::Rng(0x1234_5678);
        gates.extend((0..10_001).map(|_| rng.unit() * 24.0 - 12.0));
        gates.extend([
            -10.0,
            10.0,
            -9.999_999,
            9.999_999,
            -10.000_001,
            10.000_001,
            1e-30,
            -1e-30,
            f32::MIN_POSITIVE,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
            f32::from_bits(0x7f80_0001),
            f32::from_bits(0xffc0_1234),
            f32::from_bits(0x7fbf_ffff),
        ]);
        let up: Vec<f32> = (0..gates.len()).map(|_| rng.unit() * 6.0 - 3.0).collect();
        for n in [gates.len(), gates.len() - 3, 7, 9] {
            let (mut a, mut b) = (gates[..n].to_vec(), gates[..n].to_vec());
            geglu(&mut a, &up[..n], table);
            geglu_body(&mut b, &up[..n], table);
            for (i, (x, y)) in a.iter().zip(&b).enumerate() {
                assert_eq!(x.to_bits(), y.to_bits(), "gate {:e} ({i})", gates[i]);
            }
        }
    }

    /// The f16-reading dot product and multiply-add (F16C build, lane build, plain body) give
    /// the bits of widening the row first and calling [`dot_f16`] / [`mad_f16`], on random
    /// f16 values over the whole finite range (subnormals included) and odd lengths.
    #[test]
    fn f16_bits_variants_agree_with_widening_first() {
        let mut rng = hearth_kernels::testing::Rng(0x2545_f491);
        let mut bits = || loop {
            // Any finite f16 (exponent field below 31), either sign.
            #[allow(clippy::cast_possible_truncation)]
            let h = rng.next_u64() as u16;
            if (h >> 10) & 0x1f != 0x1f {
                break h;
            }
        };
        for n in [1, 7, 8, 9, 15, 16, 63, 64, 65, 127, 128, 130, 200, 256, 257] {
            let y: Vec<u16> = (0..n).map(|_| bits()).collect();
            let mut wide = vec![0f32; n];
            f16_to_f32_slice(&y, &mut wide);
            // Small queries keep the dot products finite; big ones overflow some of them.
            for amp in [1e-3f32, 1.0, 1e3] {
                let x: Vec<f32> = (0..n)
                    .map(|_| hearth_kernels::f16_to_f32(bits()) * amp)
                    .collect();
                let want = dot_f16(&x, &wide).to_bits();
                assert_eq!(dot_f16_bits(&x, &y).to_bits(), want, "n {n}");
                assert_eq!(dot_f16_bits_lanes(&x, &y).to_bits(), want, "n {n}");
                assert_eq!(dot_f16_bits_body(&x, &y).to_bits(), want, "n {n}");
                assert_eq!(dot_f16_body(&x, &wide).to_bits(), want, "n {n}");
            }
            // Accumulators that are f16 values, some near the overflow boundary, and
            // weights that round, overflow and underflow.
            let acc: Vec<f32> = (0..n).map(|_| hearth_kernels::f16_to_f32(bits())).collect();
            for w in [0.37f32, 1.0, -2.5e-3, 3.1e4, 1e-9, 0.0] {
                let mut want = acc.clone();
                mad_f16(&mut want, &wide, w);
                let want: Vec<u32> = want.iter().map(|v| v.to_bits()).collect();
                for f in [mad_f16_bits, mad_f16_bits_lanes, mad_f16_bits_body] {
                    let mut got = acc.clone();
                    f(&mut got, &y, w);
                    let got: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
                    assert_eq!(got, want, "n {n} w {w}");
                }
            }
        }
        // Scaling: to nearest f16, overflowing, underflowing to subnormals and zero.
        for n in [1, 7, 8, 9, 64, 67] {
            let acc: Vec<f32> = (0..n).map(|_| hearth_kernels::f16_to_f32(bits())).collect();
            for s in [0.37f32, 1.0, 3.1e4, 1e-6, 1e-9, 0.0] {
                let (mut a, mut b) = (acc.clone(), acc.clone());
                scale_f16(&mut a, s);
                scale_f16_body(&mut b, s);
                let a: Vec<u32> = a.iter().map(|v| v.to_bits()).collect();
                let b: Vec<u32> = b.iter().map(|v| v.to_bits()).collect();
                assert_eq!(a, b, "n {n} s {s}");
            }
        }
        // Infinities in the accumulator and the values stay infinite; a NaN sum stays NaN.
        let y = [0x7c00u16, 0xfc00, 0x3c00, 0x3c00, 0, 0, 0, 0, 0x7c00];
        let acc = [
            1f32,
            1.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            0.0,
            -0.0,
            2.0,
            3.0,
            f32::NAN,
        ];
        let mut wide = [0f32; 9];
        f16_to_f32_slice(&y, &mut wide);
        let (mut a, mut b) = (acc, acc);
        mad_f16(&mut a, &wide, 0.5);
        mad_f16_bits(&mut b, &y, 0.5);
        for (a, b) in a.iter().zip(&b) {
            assert!(
                a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                "{a} {b}"
            );
        }
        let (mut a, mut b) = (acc, acc);
        scale_f16(&mut a, 0.5);
        scale_f16_body(&mut b, 0.5);
        for (a, b) in a.iter().zip(&b) {
            assert!(
                a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                "{a} {b}"
            );
        }
    }

    /// The F16C conversions agree with the one-by-one ones: every f16 value widened, and
    /// f32 values around every f16 rounding boundary (ties included) narrowed.
    #[test]
    fn f16_slices_convert_as_one_by_one() {
        let all: Vec<u16> = (0..=u16::MAX).collect();
        let mut wide = vec![0f32; all.len()];
        f16_to_f32_slice(&all, &mut wide);
        for (&h, &w) in all.iter().zip(&wide) {
            let want = hearth_kernels::f16_to_f32(h);
            assert!(
                w.to_bits() == want.to_bits() || (w.is_nan() && want.is_nan()),
                "{h:#x}"
            );
        }
        // Each finite f16 value, the midpoints to its neighbour and a nudge either side.
        let mut xs: Vec<f32> = Vec::new();
        for (&a, &b) in wide.iter().zip(&wide[1..]) {
            if a.is_finite() && b.is_finite() && a.signum() == b.signum() {
                let mid = ((f64::from(a) + f64::from(b)) / 2.0) as f32;
                xs.extend([
                    a,
                    mid,
                    f32::from_bits(mid.to_bits() + 1),
                    f32::from_bits(mid.to_bits() - 1),
                ]);
            }
        }
        xs.extend([
            65_519.0,
            65_520.0,
            -65_520.0,
            1e9,
            -1e-9,
            0.0,
            -0.0,
            f32::INFINITY,
        ]);
        let mut narrow = vec![0u16; xs.len()];
        f32_to_f16_slice(&xs, &mut narrow);
        for (&x, &h) in xs.iter().zip(&narrow) {
            assert_eq!(h, super::super::ops::f16_bits(x), "{x:e}");
            assert_eq!(
                hearth_kernels::f16_to_f32(h).to_bits(),
                super::super::ops::round_to_f16(x).to_bits(),
                "{x:e}"
            );
        }
    }
}
