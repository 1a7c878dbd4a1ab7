//! The aarch64 versions of [`super::dot_rows`]: NEON, and NEON with the dot-product extension
//! (`sdot`).
//!
//! The integer shape follows ggml's ARM kernels (`ggml_vec_dot_q4_0_q8_0` & co. in
//! `ggml-cpu/arch/arm/quants.c`: nibbles unpacked with `vand`/`vshr`, `sdot` or
//! `smull` + pairwise adds), but the `f32` part keeps the portable body's order, lane for lane:
//! a block's eight `i32` lanes (lane `l` sums elements `4l..4l+4`, exactly what `sdot` leaves
//! in two `int32x4` registers) are converted and multiply-added into eight accumulators (two
//! `float32x4`, `vfmaq_f32`), reduced with the same [`hsum8`]. Integer sums are exact in any
//! order, so both versions give bit for bit what the portable body gives with fused
//! multiply-adds, and what AVX2 gives on x86-64.
// Written for Rust 1.85, which needed `unsafe` around every intrinsic; newer compilers call the
// value-only ones safe where NEON is enabled.
#![allow(unused_unsafe)]

use std::arch::aarch64::{
    float32x4_t, int8x16_t, int32x4_t, uint8x16_t, vandq_u8, vcombine_u8, vcvtq_f32_s32, vdup_n_u8,
    vdupq_n_f32, vdupq_n_s8, vdupq_n_s32, vdupq_n_u8, vfmaq_f32, vget_low_s8, vld1q_s8, vld1q_u8,
    vmull_high_s8, vmull_s8, vorrq_u8, vpaddlq_s16, vpaddq_s32, vreinterpretq_s8_u8, vshrq_n_u8,
    vst1q_f32, vsubq_s8, vtstq_u8,
};

use super::{ActRow, QK, WeightRow, hsum8};

/// `acc + Σ a·b` over each four bytes: lane `l` gains `a[4l..4l+4]·b[4l..4l+4]`.
///
/// `vdotq_s32` was not stable on Rust 1.85, when this was written, so the instruction is
/// written out.
#[inline]
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn sdot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // SAFETY: `sdot` only reads and writes the three registers; the caller's CPU has the
    // dot-product extension (this function's requirement).
    unsafe {
        std::arch::asm!(
            "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    acc
}

/// Lanes of four products, `Σ a[4l..4l+4]·b[4l..4l+4]`, exactly (with `sdot` when `DOT`,
/// else `smull` and two pairwise widening adds, which cannot overflow even at -128·-128).
#[inline(always)]
pub(crate) unsafe fn lanes4<const DOT: bool>(a: int8x16_t, b: int8x16_t) -> int32x4_t {
    // SAFETY: NEON (and, when `DOT`, the dot-product extension) is available: the callers
    // run inside functions that require it.
    unsafe {
        if DOT {
            sdot(vdupq_n_s32(0), a, b)
        } else {
            let lo = vpaddlq_s16(vmull_s8(vget_low_s8(a), vget_low_s8(b)));
            let hi = vpaddlq_s16(vmull_high_s8(a, b));
            vpaddq_s32(lo, hi)
        }
    }
}

/// Eight accumulators of the portable body: `acc[h] = fma(f32(lanes[h]), d, acc[h])`, lane
/// for lane.
#[inline(always)]
pub(crate) unsafe fn fma8(acc: &mut [float32x4_t; 2], lanes: [int32x4_t; 2], d: f32) {
    // SAFETY: value-only NEON intrinsics.
    unsafe {
        let d = vdupq_n_f32(d);
        acc[0] = vfmaq_f32(acc[0], vcvtq_f32_s32(lanes[0]), d);
        acc[1] = vfmaq_f32(acc[1], vcvtq_f32_s32(lanes[1]), d);
    }
}

/// The eight accumulators reduced as ggml's `hsum_float_8`.
#[inline(always)]
pub(crate) unsafe fn reduce8(acc: [float32x4_t; 2]) -> f32 {
    let mut l = [0f32; 8];
    // SAFETY: `l` is eight writable `f32`.
    unsafe {
        vst1q_f32(l.as_mut_ptr(), acc[0]);
        vst1q_f32(l.as_mut_ptr().add(4), acc[1]);
    }
    hsum8(l)
}

/// Formats as const parameters, so each gets its own loop without a per-block `match`.
const Q4_0: u8 = 0;
const Q4_1: u8 = 1;
const Q5_0: u8 = 2;
const Q8_0: u8 = 3;

/// One weight row's arrays, each cut to the row's block count (those the format does not
/// have are empty).
struct Row<'a> {
    d: &'a [f32],
    m: &'a [f32],
    nib: &'a [[u8; 16]],
    qh: &'a [u32],
    q8: &'a [[i8; QK]],
}

/// 16 nibbles as bytes: low nibbles (elements 0..16) and high nibbles (16..32).
#[inline(always)]
unsafe fn nibbles(q: &[u8; 16]) -> [uint8x16_t; 2] {
    // SAFETY: `q` is 16 readable bytes.
    unsafe {
        let v = vld1q_u8(q.as_ptr());
        [vandq_u8(v, vdupq_n_u8(0x0f)), vshrq_n_u8::<4>(v)]
    }
}

/// `0x10` in byte `e` of the result where bit `e` of `bits` is set (the Q5_0 fifth bits).
#[inline(always)]
unsafe fn fifth_bits(bits: u32) -> [uint8x16_t; 2] {
    const SELECT: [u8; 16] = [1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128];
    let b = bits.to_le_bytes();
    // SAFETY: `SELECT` is 16 readable bytes; the rest are value-only intrinsics.
    unsafe {
        let select = vld1q_u8(SELECT.as_ptr());
        let half = |lo: u8, hi: u8| {
            let v = vcombine_u8(vdup_n_u8(lo), vdup_n_u8(hi));
            vandq_u8(vtstq_u8(v, select), vdupq_n_u8(0x10))
        };
        [half(b[0], b[1]), half(b[2], b[3])]
    }
}

/// Block `b`'s 32 values as signed bytes (Q4_1's nibbles are 0..=15, so also fit).
#[inline(always)]
unsafe fn block<const F: u8>(w: &Row<'_>, b: usize) -> [int8x16_t; 2] {
    // SAFETY: the loads read whole block arrays; the rest are value-only intrinsics.
    unsafe {
        match F {
            Q4_0 => {
                let [lo, hi] = nibbles(&w.nib[b]);
                let eight = vdupq_n_s8(8);
                [
                    vsubq_s8(vreinterpretq_s8_u8(lo), eight),
                    vsubq_s8(vreinterpretq_s8_u8(hi), eight),
                ]
            }
            Q4_1 => {
                let [lo, hi] = nibbles(&w.nib[b]);
                [vreinterpretq_s8_u8(lo), vreinterpretq_s8_u8(hi)]
            }
            Q5_0 => {
                let [lo, hi] = nibbles(&w.nib[b]);
                let [h0, h1] = fifth_bits(w.qh[b]);
                let sixteen = vdupq_n_s8(16);
                [
                    vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(lo, h0)), sixteen),
                    vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(hi, h1)), sixteen),
                ]
            }
            _ => {
                let q = &w.q8[b];
                [vld1q_s8(q.as_ptr()), vld1q_s8(q.as_ptr().add(16))]
            }
        }
    }
}

/// NEON without the dot-product extension. See [`super::dot_rows`].
#[target_feature(enable = "neon")]
pub unsafe fn dot_rows(w: WeightRow<'_>, acts: &[ActRow<'_>], out: &mut [f32]) {
    // SAFETY: NEON is available (this function's requirement).
    unsafe { dot_rows_impl::<false>(w, acts, out) }
}

/// NEON with `sdot`. See [`super::dot_rows`].
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn dot_rows_dotprod(w: WeightRow<'_>, acts: &[ActRow<'_>], out: &mut [f32]) {
    // SAFETY: NEON and the dot-product extension are available (this function's requirement).
    unsafe { dot_rows_impl::<true>(w, acts, out) }
}

#[inline(always)]
unsafe fn dot_rows_impl<const DOT: bool>(w: WeightRow<'_>, acts: &[ActRow<'_>], out: &mut [f32]) {
    let mut row = Row {
        d: &[],
        m: &[],
        nib: &[],
        qh: &[],
        q8: &[],
    };
    // SAFETY (all calls below): the caller's CPU has what `DOT` asks for.
    unsafe {
        // Every array of the weight row is cut to its block count.
        match w {
            WeightRow::Q4_0 { d, qs } => {
                (row.d, row.nib) = (d, &qs[..d.len()]);
                dot_format::<Q4_0, DOT>(&row, acts, out);
            }
            WeightRow::Q4_1 { d, m, qs } => {
                (row.d, row.m, row.nib) = (d, &m[..d.len()], &qs[..d.len()]);
                dot_format::<Q4_1, DOT>(&row, acts, out);
            }
            WeightRow::Q5_0 { d, qh, qs } => {
                (row.d, row.qh, row.nib) = (d, &qh[..d.len()], &qs[..d.len()]);
                dot_format::<Q5_0, DOT>(&row, acts, out);
            }
            WeightRow::Q8_0 { d, qs } => {
                (row.d, row.q8) = (d, &qs[..d.len()]);
                dot_format::<Q8_0, DOT>(&row, acts, out);
            }
        }
    }
}

/// Activation rows in groups of four (each unpacked weight block serves all four), the rest
/// one by one.
#[inline(always)]
unsafe fn dot_format<const F: u8, const DOT: bool>(
    w: &Row<'_>,
    acts: &[ActRow<'_>],
    out: &mut [f32],
) {
    let mut groups = acts.chunks_exact(4);
    let mut outs = out.chunks_exact_mut(4);
    for (a, o) in (&mut groups).zip(&mut outs) {
        // SAFETY: as the caller's.
        unsafe { dot_group::<4, F, DOT>(w, a, o) };
    }
    for (a, o) in groups
        .remainder()
        .chunks(1)
        .zip(outs.into_remainder().chunks_mut(1))
    {
        // SAFETY: as the caller's.
        unsafe { dot_group::<1, F, DOT>(w, a, o) };
    }
}

/// `R` activation rows (`acts.len() == out.len() == R`) against one weight row.
#[inline(always)]
unsafe fn dot_group<const R: usize, const F: u8, const DOT: bool>(
    w: &Row<'_>,
    acts: &[ActRow<'_>],
    out: &mut [f32],
) {
    let unsigned = F == Q4_1;
    let nb = w.d.len();
    let acts: &[ActRow<'_>; R] = acts.try_into().expect("R activation rows");
    // Each row cut to the weight row's block count (panics, like the portable body's
    // indexing, if a row is shorter).
    let d: [&[f32]; R] = std::array::from_fn(|r| &acts[r].d[..nb]);
    let qs: [&[[i8; QK]]; R] = std::array::from_fn(|r| &acts[r].qs[..nb]);
    let s: [&[f32]; R] = std::array::from_fn(|r| if unsigned { &acts[r].s[..nb] } else { &[][..] });
    // SAFETY: the loads read whole `[i8; QK]` blocks; NEON (and `sdot` when `DOT`) is
    // available (the caller's requirement).
    unsafe {
        let zero = vdupq_n_f32(0.0);
        let mut acc = [[zero; 2]; R];
        let mut summs = [0f32; R];
        for (b, &dx) in w.d.iter().enumerate() {
            let x = block::<F>(w, b);
            for r in 0..R {
                let qy = &qs[r][b];
                let y0 = vld1q_s8(qy.as_ptr());
                let y1 = vld1q_s8(qy.as_ptr().add(16));
                let lanes = [lanes4::<DOT>(x[0], y0), lanes4::<DOT>(x[1], y1)];
                fma8(&mut acc[r], lanes, dx * d[r][b]);
                if unsigned {
                    summs[r] += w.m[b] * s[r][b];
                }
            }
        }
        for r in 0..R {
            out[r] = reduce8(acc[r]) + summs[r];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Isa;
    use crate::testing::Rng;
    use std::arch::aarch64::vst1q_s32;

    #[target_feature(enable = "neon,dotprod")]
    unsafe fn lanes_dot(a: &[i8; 16], b: &[i8; 16]) -> [i32; 4] {
        let mut l = [0i32; 4];
        // SAFETY: 16 readable bytes each, four writable `i32`; `sdot` is available (this
        // function's requirement).
        unsafe {
            let v = lanes4::<true>(vld1q_s8(a.as_ptr()), vld1q_s8(b.as_ptr()));
            vst1q_s32(l.as_mut_ptr(), v);
        }
        l
    }

    #[target_feature(enable = "neon")]
    unsafe fn lanes_plain(a: &[i8; 16], b: &[i8; 16]) -> [i32; 4] {
        let mut l = [0i32; 4];
        // SAFETY: as `lanes_dot`, NEON only.
        unsafe {
            let v = lanes4::<false>(vld1q_s8(a.as_ptr()), vld1q_s8(b.as_ptr()));
            vst1q_s32(l.as_mut_ptr(), v);
        }
        l
    }

    /// Both integer paths give the exact four-product lanes over the whole `i8` range,
    /// -128·-128 included (where a 16-bit pairwise sum would overflow).
    #[test]
    fn lanes_are_exact_over_the_whole_byte_range() {
        let mut rng = Rng(0xa11c_e5ed);
        let dot = Isa::supported().contains(&Isa::NeonDot);
        let mut cases: Vec<([i8; 16], [i8; 16])> = vec![
            ([-128; 16], [-128; 16]),
            ([127; 16], [-128; 16]),
            ([127; 16], [127; 16]),
        ];
        for _ in 0..200 {
            let a = std::array::from_fn(|_| i8::from_le_bytes([rng.byte()]));
            let b = std::array::from_fn(|_| i8::from_le_bytes([rng.byte()]));
            cases.push((a, b));
        }
        for (a, b) in &cases {
            let want: [i32; 4] = std::array::from_fn(|l| {
                (4 * l..4 * l + 4)
                    .map(|e| i32::from(a[e]) * i32::from(b[e]))
                    .sum()
            });
            // SAFETY: NEON is baseline on aarch64 (and reported, or `supported` would not
            // list `Neon`).
            assert_eq!(unsafe { lanes_plain(a, b) }, want, "{a:?} {b:?}");
            if dot {
                // SAFETY: `Isa::supported` lists `NeonDot` only where dotprod was detected.
                assert_eq!(unsafe { lanes_dot(a, b) }, want, "{a:?} {b:?}");
            }
        }
    }

    /// Q8_0 weights and activations at -128 and 127 (outside what the quantizers write, but a
    /// file may hold them): the NEON versions still give the fused portable body's bits.
    #[test]
    fn q8_0_extremes_equal_the_fused_portable_body() {
        for (wv, av) in [(-128i8, -128i8), (-128, 127), (127, 127)] {
            for blocks in [1usize, 3] {
                let wd = vec![0.25f32; blocks];
                let wq = vec![[wv; QK]; blocks];
                let acts: Vec<(Vec<f32>, Vec<[i8; QK]>)> = (0..5)
                    .map(|_| (vec![0.5f32; blocks], vec![[av; QK]; blocks]))
                    .collect();
                let rows: Vec<ActRow<'_>> = acts
                    .iter()
                    .map(|(d, qs)| ActRow { d, s: &[], qs })
                    .collect();
                let w = WeightRow::Q8_0 { d: &wd, qs: &wq };
                let mut want = vec![0f32; rows.len()];
                super::super::dot_rows_body::<true>(w, &rows, &mut want);
                #[allow(clippy::cast_precision_loss)]
                let exact = f32::from(wv) * f32::from(av) * 32.0 * 0.125 * blocks as f32;
                assert_eq!(want[0], exact);
                for isa in Isa::supported().into_iter().skip(1) {
                    let mut got = vec![0f32; rows.len()];
                    super::super::dot_rows(isa, w, &rows, &mut got);
                    assert_eq!(got, want, "{isa:?} {wv} {av} blocks {blocks}");
                }
            }
        }
    }
}
