//! The aarch64 versions of [`super::dot_rows_k`]: NEON, and NEON with `sdot`.
//!
//! The integer shape is ggml's ARM `ggml_vec_dot_q4_K_q8_K` & co. (nibbles and high bits
//! unpacked with `vand`/`vshr`/`vshl`, four-product lanes from `sdot` or `smull` + pairwise
//! adds, sub-block scales multiplied into the `i32` lanes); the `f32` part is the portable
//! body's, lane for lane: the eight `i32` lanes of a super-block (two `int32x4`: lane `l`
//! holds elements `4l..4l+4` of every 32-element group with its scale) multiply-added into two
//! `float32x4` accumulators with `vfmaq_f32`, the minimum terms in scalar fused multiply-adds,
//! reduced with the same [`hsum8`](crate::block::hsum8). So both versions give bit for bit
//! what the portable bodies give with fused multiply-adds.
// Written for Rust 1.85, which needed `unsafe` around every intrinsic.
#![allow(unused_unsafe)]

use std::arch::aarch64::{
    int8x16_t, int32x4_t, uint8x16_t, vaddq_s32, vaddvq_s32, vandq_u8, vdupq_n_f32, vdupq_n_s32,
    vdupq_n_u8, vget_low_s8, vget_low_s16, vld1q_s8, vld1q_s16, vld1q_u8, vmlaq_n_s32,
    vmovl_high_s8, vmovl_s8, vmull_high_s16, vmull_s16, vorrq_u8, vpaddq_s32, vreinterpretq_s8_u8,
    vshlq_n_s32, vshlq_n_u8, vshrq_n_u8, vsubq_s32,
};

use super::{BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K, KRow, min_sum};
use crate::block::neon::{fma8, lanes4, reduce8};

/// Bytes `at..at+32` as two registers.
#[inline(always)]
unsafe fn load_u8(p: &[u8], at: usize) -> [uint8x16_t; 2] {
    let p = &p[at..at + 32];
    // SAFETY: 32 readable bytes (the slice above).
    unsafe { [vld1q_u8(p.as_ptr()), vld1q_u8(p.as_ptr().add(16))] }
}

#[inline(always)]
unsafe fn load_i8(p: &[i8], at: usize) -> [int8x16_t; 2] {
    let p = &p[at..at + 32];
    // SAFETY: as `load_u8`.
    unsafe { [vld1q_s8(p.as_ptr()), vld1q_s8(p.as_ptr().add(16))] }
}

#[inline(always)]
unsafe fn signed(v: [uint8x16_t; 2]) -> [int8x16_t; 2] {
    // SAFETY: value-only intrinsics.
    unsafe { [vreinterpretq_s8_u8(v[0]), vreinterpretq_s8_u8(v[1])] }
}

/// The eight lanes of 32 products: `[lanes 0..4, lanes 4..8]`.
#[inline(always)]
unsafe fn lanes8<const DOT: bool>(x: [int8x16_t; 2], y: [int8x16_t; 2]) -> [int32x4_t; 2] {
    // SAFETY: the caller's CPU has what `DOT` asks for.
    unsafe { [lanes4::<DOT>(x[0], y[0]), lanes4::<DOT>(x[1], y[1])] }
}

/// A Q4_K or Q5_K super-block's eight 32-element sub-blocks as bytes (0..=31).
#[inline(always)]
unsafe fn unpack_q4k(qs: &[u8; 128], fifth: Option<&[u8; 32]>) -> [[int8x16_t; 2]; 8] {
    // SAFETY: loads of whole arrays; value-only intrinsics.
    unsafe {
        let m4 = vdupq_n_u8(0x0f);
        let one = vdupq_n_u8(1);
        let two = vdupq_n_u8(2);
        let mut h = fifth.map(|h| load_u8(h, 0));
        let mut q = [[vreinterpretq_s8_u8(m4); 2]; 8];
        for j in 0..4 {
            let bits = load_u8(qs, 32 * j);
            let mut lo = [vandq_u8(bits[0], m4), vandq_u8(bits[1], m4)];
            let mut hi = [vshrq_n_u8::<4>(bits[0]), vshrq_n_u8::<4>(bits[1])];
            if let Some(hb) = h.as_mut() {
                // Bit 2j of each byte is the low half's fifth bit, 2j+1 the high half's; the
                // bytes shift right by two per pair.
                for k in 0..2 {
                    lo[k] = vorrq_u8(lo[k], vshlq_n_u8::<4>(vandq_u8(hb[k], one)));
                    hi[k] = vorrq_u8(hi[k], vshlq_n_u8::<3>(vandq_u8(hb[k], two)));
                    hb[k] = vshrq_n_u8::<2>(hb[k]);
                }
            }
            q[2 * j] = signed(lo);
            q[2 * j + 1] = signed(hi);
        }
        q
    }
}

/// Σ over a super-block of the sub-block scales times the products, as eight lanes.
#[inline(always)]
unsafe fn q4k_sumi<const DOT: bool>(
    q: &[[int8x16_t; 2]; 8],
    sc: &[u8; 8],
    y: &[i8; 256],
) -> [int32x4_t; 2] {
    // SAFETY: the caller's CPU has what `DOT` asks for.
    unsafe {
        let mut sumi = [vdupq_n_s32(0); 2];
        for (g, (q, &s)) in q.iter().zip(sc).enumerate() {
            let l = lanes8::<DOT>(*q, load_i8(y, 32 * g));
            let s = i32::from(s);
            sumi[0] = vmlaq_n_s32(sumi[0], l[0], s);
            sumi[1] = vmlaq_n_s32(sumi[1], l[1], s);
        }
        sumi
    }
}

/// A Q6_K super-block's eight 32-element groups as bytes (0..=63).
#[inline(always)]
unsafe fn unpack_q6k(x: &BlockQ6K) -> [[int8x16_t; 2]; 8] {
    // SAFETY: loads of whole arrays; value-only intrinsics.
    unsafe {
        let m15 = vdupq_n_u8(15);
        let m3 = vdupq_n_u8(3);
        let m12 = vdupq_n_u8(12);
        let m48 = vdupq_n_u8(48);
        let mc0 = vdupq_n_u8(0xc0);
        let mut q = [[vreinterpretq_s8_u8(m15); 2]; 8];
        for j in 0..2 {
            let b1 = load_u8(&x.ql, 64 * j);
            let b2 = load_u8(&x.ql, 64 * j + 32);
            let h = load_u8(&x.qh, 32 * j);
            let mut g = [[m15; 2]; 4];
            for k in 0..2 {
                g[0][k] = vorrq_u8(vandq_u8(b1[k], m15), vshlq_n_u8::<4>(vandq_u8(h[k], m3)));
                g[1][k] = vorrq_u8(vandq_u8(b2[k], m15), vshlq_n_u8::<2>(vandq_u8(h[k], m12)));
                g[2][k] = vorrq_u8(vshrq_n_u8::<4>(b1[k]), vandq_u8(h[k], m48));
                g[3][k] = vorrq_u8(vshrq_n_u8::<4>(b2[k]), vshrq_n_u8::<2>(vandq_u8(h[k], mc0)));
            }
            for (t, g) in g.into_iter().enumerate() {
                q[4 * j + t] = signed(g);
            }
        }
        q
    }
}

/// Q6_K's eight lanes for one super-block: group `g`'s first 16 elements (lanes 0..4) take
/// scale `2g`, the next 16 (lanes 4..8) scale `2g+1`; then lane `l` loses
/// `32·(bsums[2l]·sc[2l] + bsums[2l+1]·sc[2l+1])`.
#[inline(always)]
unsafe fn q6k_sumi<const DOT: bool>(
    q: &[[int8x16_t; 2]; 8],
    x: &BlockQ6K,
    y: &BlockQ8K,
) -> [int32x4_t; 2] {
    // SAFETY: loads of whole arrays; the caller's CPU has what `DOT` asks for.
    unsafe {
        let mut sumi = [vdupq_n_s32(0); 2];
        for (g, q) in q.iter().enumerate() {
            let l = lanes8::<DOT>(*q, load_i8(&y.qs, 32 * g));
            sumi[0] = vmlaq_n_s32(sumi[0], l[0], i32::from(x.sc[2 * g]));
            sumi[1] = vmlaq_n_s32(sumi[1], l[1], i32::from(x.sc[2 * g + 1]));
        }
        let sc = vld1q_s8(x.sc.as_ptr());
        let sc = [vmovl_s8(vget_low_s8(sc)), vmovl_high_s8(sc)];
        for (k, sc) in sc.into_iter().enumerate() {
            let bs = vld1q_s16(y.bsums[8 * k..8 * k + 8].as_ptr());
            let p = vpaddq_s32(
                vmull_s16(vget_low_s16(bs), vget_low_s16(sc)),
                vmull_high_s16(bs, sc),
            );
            sumi[k] = vsubq_s32(sumi[k], vshlq_n_s32::<5>(p));
        }
        sumi
    }
}

/// NEON without the dot-product extension. See [`super::dot_rows_k`].
#[target_feature(enable = "neon")]
pub unsafe fn dot_rows(w: KRow<'_>, acts: &[&[BlockQ8K]], out: &mut [f32]) {
    // SAFETY: NEON is available (this function's requirement).
    unsafe { dot_rows_impl::<false>(w, acts, out) }
}

/// NEON with `sdot`. See [`super::dot_rows_k`].
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn dot_rows_dotprod(w: KRow<'_>, acts: &[&[BlockQ8K]], out: &mut [f32]) {
    // SAFETY: NEON and the dot-product extension are available (this function's requirement).
    unsafe { dot_rows_impl::<true>(w, acts, out) }
}

/// Activation rows in groups of four (each unpacked weight super-block serves all four), the
/// rest one by one.
#[inline(always)]
unsafe fn dot_rows_impl<const DOT: bool>(w: KRow<'_>, acts: &[&[BlockQ8K]], out: &mut [f32]) {
    let mut groups = acts.chunks_exact(4);
    let mut outs = out.chunks_exact_mut(4);
    // SAFETY (all calls): the caller's CPU has what `DOT` asks for.
    unsafe {
        for (a, o) in (&mut groups).zip(&mut outs) {
            dot_group::<4, DOT>(w, a, o);
        }
        for (a, o) in groups
            .remainder()
            .chunks(1)
            .zip(outs.into_remainder().chunks_mut(1))
        {
            dot_group::<1, DOT>(w, a, o);
        }
    }
}

#[inline(always)]
unsafe fn dot_group<const R: usize, const DOT: bool>(
    w: KRow<'_>,
    acts: &[&[BlockQ8K]],
    out: &mut [f32],
) {
    // SAFETY: the caller's CPU has what `DOT` asks for.
    unsafe {
        match w {
            KRow::Q4K {
                blocks,
                repacked: true,
            } => q4k_repacked::<R, DOT>(blocks, acts, out),
            KRow::Q4K {
                blocks,
                repacked: false,
            } => q4k::<R, DOT>(blocks, acts, out),
            KRow::Q5K(blocks) => q5k::<R, DOT>(blocks, acts, out),
            KRow::Q6K(blocks) => q6k::<R, DOT>(blocks, acts, out),
        }
    }
}

/// The `R` activation rows, each cut to `nb` super-blocks (panics, like the portable body's
/// indexing, if a row is shorter).
#[inline(always)]
fn rows<'a, const R: usize>(acts: &[&'a [BlockQ8K]], nb: usize) -> [&'a [BlockQ8K]; R] {
    let acts: &[&[BlockQ8K]; R] = acts.try_into().expect("R activation rows");
    std::array::from_fn(|r| &acts[r][..nb])
}

/// Q4_K in the repacked arithmetic: one exact integer per super-block and output.
#[allow(clippy::cast_precision_loss)]
#[inline(always)]
unsafe fn q4k_repacked<const R: usize, const DOT: bool>(
    w: &[BlockQ4K],
    acts: &[&[BlockQ8K]],
    out: &mut [f32],
) {
    let a = rows::<R>(acts, w.len());
    let mut acc = [0f32; R];
    let mut acc_min = [0f32; R];
    // SAFETY: the caller's CPU has what `DOT` asks for.
    unsafe {
        for (b, x) in w.iter().enumerate() {
            let q = unpack_q4k(&x.qs, None);
            for r in 0..R {
                let y = &a[r][b];
                let s = q4k_sumi::<DOT>(&q, &x.sc, &y.qs);
                let sumi = vaddvq_s32(vaddq_s32(s[0], s[1]));
                let mins: i32 = min_sum(&x.mn, &y.bsums).iter().sum();
                acc[r] = (sumi as f32).mul_add(x.d * y.d, acc[r]);
                acc_min[r] = (mins as f32).mul_add(x.dmin * y.d, acc_min[r]);
            }
        }
    }
    for r in 0..R {
        out[r] = acc[r] - acc_min[r];
    }
}

/// Q4_K in `ggml_vec_dot_q4_K_q8_K`'s arithmetic: eight lanes, four `f32` minimum lanes.
#[allow(clippy::cast_precision_loss)]
#[inline(always)]
unsafe fn q4k<const R: usize, const DOT: bool>(
    w: &[BlockQ4K],
    acts: &[&[BlockQ8K]],
    out: &mut [f32],
) {
    let a = rows::<R>(acts, w.len());
    // SAFETY: the caller's CPU has what `DOT` asks for.
    unsafe {
        let mut acc = [[vdupq_n_f32(0.0); 2]; R];
        let mut acc_m = [[0f32; 4]; R];
        for (b, x) in w.iter().enumerate() {
            let q = unpack_q4k(&x.qs, None);
            for r in 0..R {
                let y = &a[r][b];
                let d = y.d * x.d;
                let dmin = -y.d * x.dmin;
                for (m, p) in acc_m[r].iter_mut().zip(min_sum(&x.mn, &y.bsums)) {
                    *m = dmin.mul_add(p as f32, *m);
                }
                fma8(&mut acc[r], q4k_sumi::<DOT>(&q, &x.sc, &y.qs), d);
            }
        }
        for r in 0..R {
            let m = [acc_m[r][0] + acc_m[r][2], acc_m[r][1] + acc_m[r][3]];
            out[r] = reduce8(acc[r]) + (m[0] + m[1]);
        }
    }
}

#[allow(clippy::cast_precision_loss)]
#[inline(always)]
unsafe fn q5k<const R: usize, const DOT: bool>(
    w: &[BlockQ5K],
    acts: &[&[BlockQ8K]],
    out: &mut [f32],
) {
    let a = rows::<R>(acts, w.len());
    // SAFETY: the caller's CPU has what `DOT` asks for.
    unsafe {
        let mut acc = [[vdupq_n_f32(0.0); 2]; R];
        let mut summs = [0f32; R];
        for (b, x) in w.iter().enumerate() {
            let q = unpack_q4k(&x.qs, Some(&x.qh));
            for r in 0..R {
                let y = &a[r][b];
                let d = y.d * x.d;
                let dmin = -y.d * x.dmin;
                let mins: i32 = min_sum(&x.mn, &y.bsums).iter().sum();
                summs[r] = dmin.mul_add(mins as f32, summs[r]);
                fma8(&mut acc[r], q4k_sumi::<DOT>(&q, &x.sc, &y.qs), d);
            }
        }
        for r in 0..R {
            out[r] = reduce8(acc[r]) + summs[r];
        }
    }
}

#[inline(always)]
unsafe fn q6k<const R: usize, const DOT: bool>(
    w: &[BlockQ6K],
    acts: &[&[BlockQ8K]],
    out: &mut [f32],
) {
    let a = rows::<R>(acts, w.len());
    // SAFETY: the caller's CPU has what `DOT` asks for.
    unsafe {
        let mut acc = [[vdupq_n_f32(0.0); 2]; R];
        for (b, x) in w.iter().enumerate() {
            let q = unpack_q6k(x);
            for r in 0..R {
                let y = &a[r][b];
                fma8(&mut acc[r], q6k_sumi::<DOT>(&q, x, y), y.d * x.d);
            }
        }
        for r in 0..R {
            out[r] = reduce8(acc[r]);
        }
    }
}
