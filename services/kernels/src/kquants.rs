//! Dot products for the K-quants (Q4_K, Q5_K, Q6_K: super-blocks of 256 weights) against
//! ggml's Q8_K activations, with the same runtime CPU-feature dispatch as
//! [`crate::block`].
//!
//! Integer work is exact whatever order it runs in, so what has to follow llama.cpp is where
//! the integer sums are turned into `f32` and how those are accumulated:
//!
//! - Q6_K and Q5_K follow ggml's AVX2 `ggml_vec_dot_q6_K_q8_K` / `q5_K`: per super-block,
//!   eight `i32` lanes (lane `l` holds elements `4l..4l+4` of every 32-element group, with their
//!   sub-block scales; Q6_K subtracts `32·Σ scale·bsum` per lane), each converted to `f32` and
//!   multiply-added with `d_x·d_y` into eight accumulators, reduced as `hsum_float_8`. Q5_K's
//!   minimum term is one scalar, `summs += -d_y·dmin_x · Σ min·bsum` per super-block.
//! - Q4_K follows what llama.cpp runs on an AVX2 CPU: matrices whose row count is a multiple of
//!   8 are repacked (`block_q4_Kx8`, `ggml_gemv_q4_K_8x8_q8_K` / gemm), where each output
//!   accumulates one exact integer per super-block, `acc += f32(Σ scale·q·y) · (d_x·d_y)` and
//!   `acc_min += f32(Σ min·bsum) · (dmin_x·d_y)`, result `acc - acc_min`. Other Q4_K matrices
//!   take the plain AVX2 `ggml_vec_dot_q4_K_q8_K` (eight lanes for the scaled products, four
//!   `f32` lanes for the minimum term).
//! - Prompts take other kernels in llama.cpp's x86 build, whose float steps [`KSum`] names
//!   and [`dot_rows_k_as`] / [`dot_kpanel_as`] follow: the repacked Q4_K gemm for whole groups
//!   of four rows, and the tiled K-quant matmul (one exact integer per super-block and row)
//!   for products of [`TILED_MIN_ROWS`] or more rows with matrices that are not repacked.
//!
//! The portable bodies are the fallback; on x86-64 with AVX2+FMA (detected at run time, [`Isa`])
//! the same arithmetic runs as intrinsics in ggml's shape, which tests check bit for bit
//! against the portable bodies with fused multiply-adds (with AVX-512, [`Isa::Avx512`],
//! prefill reads eight activation rows as a [`KPanel`], two rows to a 512-bit register, for
//! plain Q4_K and Q6_K: the same lanes and bits); on aarch64 so do NEON and NEON +
//! `sdot` (`neon`, in `kquants/neon.rs`). Like [`crate::block`], this
//! module allows `unsafe` only for the `#[target_feature]` calls (each guarded by the runtime
//! detection stored in [`Isa::Avx2Fma`]) and the intrinsics' loads and stores.
#![allow(unsafe_code)]

use crate::Isa;
use crate::block::hsum8;

/// Elements per super-block.
pub const QK_K: usize = 256;

/// One Q4_K super-block with its 6-bit scales and minimums unpacked.
#[derive(Clone, Copy)]
pub struct BlockQ4K {
    pub d: f32,
    pub dmin: f32,
    /// Scale of each 32-element sub-block.
    pub sc: [u8; 8],
    /// Minimum of each 32-element sub-block.
    pub mn: [u8; 8],
    /// Nibbles: byte `32j + e` holds element `64j + e` (low) and `64j + 32 + e` (high).
    pub qs: [u8; 128],
}

/// One Q5_K super-block: Q4_K plus a fifth bit per element.
#[derive(Clone, Copy)]
pub struct BlockQ5K {
    pub d: f32,
    pub dmin: f32,
    pub sc: [u8; 8],
    pub mn: [u8; 8],
    /// Bit `2j` of byte `e` is element `64j + e`'s fifth bit, bit `2j+1` element `64j+32+e`'s.
    pub qh: [u8; 32],
    pub qs: [u8; 128],
}

/// One Q6_K super-block as ggml stores it (scale converted to `f32`).
#[derive(Clone, Copy)]
pub struct BlockQ6K {
    pub d: f32,
    /// Low four bits.
    pub ql: [u8; 128],
    /// High two bits.
    pub qh: [u8; 64],
    /// Signed scale of each 16-element sub-block.
    pub sc: [i8; 16],
}

/// One super-block of activations, as ggml's `block_q8_K`.
#[derive(Clone, Copy)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; QK_K],
    /// Sum of each 16 consecutive `qs`.
    pub bsums: [i16; 16],
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    crate::f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// ggml's `get_scale_min_k4` for all eight sub-blocks.
fn scales_mins_k4(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    for j in 0..8 {
        if j < 4 {
            sc[j] = s[j] & 63;
            mn[j] = s[j + 4] & 63;
        } else {
            sc[j] = (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4);
            mn[j] = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
        }
    }
    (sc, mn)
}

impl BlockQ4K {
    /// Bytes of one block on disk.
    pub const BYTES: usize = 144;

    /// Parses one on-disk block (`b.len() == BYTES`).
    pub fn parse(b: &[u8]) -> Self {
        let (sc, mn) = scales_mins_k4(&b[4..16]);
        let mut qs = [0u8; 128];
        qs.copy_from_slice(&b[16..144]);
        Self {
            d: f16_at(b, 0),
            dmin: f16_at(b, 2),
            sc,
            mn,
            qs,
        }
    }
}

impl BlockQ5K {
    pub const BYTES: usize = 176;

    pub fn parse(b: &[u8]) -> Self {
        let (sc, mn) = scales_mins_k4(&b[4..16]);
        let mut qh = [0u8; 32];
        qh.copy_from_slice(&b[16..48]);
        let mut qs = [0u8; 128];
        qs.copy_from_slice(&b[48..176]);
        Self {
            d: f16_at(b, 0),
            dmin: f16_at(b, 2),
            sc,
            mn,
            qh,
            qs,
        }
    }
}

impl BlockQ6K {
    pub const BYTES: usize = 210;

    pub fn parse(b: &[u8]) -> Self {
        let mut ql = [0u8; 128];
        ql.copy_from_slice(&b[0..128]);
        let mut qh = [0u8; 64];
        qh.copy_from_slice(&b[128..192]);
        let mut sc = [0i8; 16];
        for (s, &v) in sc.iter_mut().zip(&b[192..208]) {
            *s = i8::from_le_bytes([v]);
        }
        Self {
            d: f16_at(b, 208),
            ql,
            qh,
            sc,
        }
    }
}

impl BlockQ8K {
    /// ggml's `quantize_row_q8_K_ref` for one super-block: the scale is `1/iscale` with
    /// `iscale = -127/max` (`max` the first element of largest magnitude), values rounded to
    /// nearest-even.
    pub fn quantize(x: &[f32]) -> Self {
        let mut amax = 0f32;
        let mut max = 0f32;
        for &v in x {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        let mut out = Self {
            d: 0.0,
            qs: [0; QK_K],
            bsums: [0; 16],
        };
        if amax == 0.0 {
            return out;
        }
        let iscale = -127.0 / max;
        for (q, &v) in out.qs.iter_mut().zip(x) {
            // |iscale·v| ≤ 127 by construction (NaN maps to 0).
            #[allow(clippy::cast_possible_truncation)]
            let r = crate::round_small(iscale * v).min(127.0) as i8;
            *q = r;
        }
        for (s, chunk) in out.bsums.iter_mut().zip(out.qs.chunks_exact(16)) {
            *s = chunk.iter().map(|&q| i16::from(q)).sum();
        }
        out.d = 1.0 / iscale;
        out
    }

    /// [`BlockQ8K::quantize`] with the version of the kernels `isa` names: with AVX-512
    /// ([`Isa::Avx512`]) sixteen values to a register (the same bits: the same maximum, the
    /// same products and rounding, NaN treated as the scalar code treats it), elsewhere the
    /// scalar code.
    pub fn quantize_on(isa: Isa, x: &[f32]) -> Self {
        #[cfg(target_arch = "x86_64")]
        if isa == Isa::Avx512
            && let Ok(x) = <&[f32; QK_K]>::try_from(x)
        {
            // SAFETY: `Isa::detect` returns `Isa::Avx512` only after `is_x86_feature_detected!`
            // reported AVX2, FMA and AVX-512 F, BW, VL and VNNI.
            return unsafe { x86::quantize_q8k(x) };
        }
        let _ = isa;
        Self::quantize(x)
    }
}

/// One weight row of a K-quant format, borrowed.
#[derive(Clone, Copy)]
pub enum KRow<'a> {
    /// `repacked`: llama.cpp's AVX2 `block_q4_Kx8` arithmetic (see the module docs).
    Q4K {
        blocks: &'a [BlockQ4K],
        repacked: bool,
    },
    Q5K(&'a [BlockQ5K]),
    Q6K(&'a [BlockQ6K]),
}

/// Dot product of one weight row with each activation row (same number of super-blocks).
pub fn dot_rows_k(isa: Isa, w: KRow<'_>, acts: &[&[BlockQ8K]], out: &mut [f32]) {
    match isa {
        Isa::Portable => dot_rows_body::<false>(w, acts, out),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2Fma` and `Isa::Avx2Vnni` are only returned by `Isa::detect`
        // after `is_x86_feature_detected!` reported both AVX2 and FMA on this CPU.
        Isa::Avx2Fma | Isa::Avx2Vnni | Isa::Avx512 => unsafe { dot_rows_avx2(w, acts, out) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: `Isa::Neon` is only returned by `Isa::detect` after
        // `is_aarch64_feature_detected!` reported NEON.
        Isa::Neon => unsafe { neon::dot_rows(w, acts, out) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: `Isa::NeonDot` is only returned after NEON and dotprod were detected.
        Isa::NeonDot => unsafe { neon::dot_rows_dotprod(w, acts, out) },
    }
}

/// Which of llama.cpp's x86 CPU kernels a K-quant product follows when it turns its exact
/// integer sums into `f32` (the integers are the same whichever runs; only the float steps
/// differ, and a different rounding moves a small model's next-token probabilities by a few
/// hundredths).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KSum {
    /// ggml's AVX2 `vec_dot` (a repacked Q4_K row: the repacked gemv): decode, and prompts
    /// of fewer rows than [`TILED_MIN_ROWS`].
    VecDot,
    /// llama.cpp's tiled K-quant matmul (`ggml-cpu/tiled`, the AVX-512 VNNI microkernel,
    /// whose epilogue GCC contracts to a fused multiply-add), which takes products of at least
    /// [`TILED_MIN_ROWS`] activation rows with matrices that are not repacked: per
    /// super-block `r = f32(Σ scale·q·y)·d_x`, minus `dmin_x·f32(Σ min·bsum)` fused for the
    /// formats with minimums, then `out = fma(r, d_y, out)`.
    Tiled,
    /// The repacked Q4_K gemm (`ggml_gemm_q4_K_8x8_q8_K`), for activation rows in whole
    /// groups of four: per 64 elements `acc = fma(f32(Σ scale·q·y), d_x·d_y, acc)` and
    /// `acc_min = fma(f32(Σ min·bsum), dmin_x·d_y, acc_min)`, `out = acc − acc_min`. Other
    /// formats take [`KSum::VecDot`] for it.
    Gemm,
}

impl KSum {
    /// What `self` means for weight row `w`: [`KSum::Gemm`] is the repacked Q4_K's only; the
    /// other formats take [`KSum::VecDot`] for it.
    fn for_row(self, w: KRow<'_>) -> KSum {
        match (self, w) {
            (KSum::Gemm, KRow::Q4K { repacked: true, .. }) => KSum::Gemm,
            (KSum::Gemm, _) => KSum::VecDot,
            (other, _) => other,
        }
    }
}

/// The fewest activation rows for which llama.cpp's x86 build takes its tiled K-quant
/// matmul (`ggml_tiled_min_batch`).
pub const TILED_MIN_ROWS: usize = 8;

/// [`dot_rows_k`] with the float steps `sum` names.
pub fn dot_rows_k_as(isa: Isa, w: KRow<'_>, acts: &[&[BlockQ8K]], out: &mut [f32], sum: KSum) {
    let sum = sum.for_row(w);
    match (sum, isa) {
        (KSum::VecDot, _) => dot_rows_k(isa, w, acts, out),
        (_, Isa::Portable) => sums_body::<false>(w, acts, out, sum),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2Fma`, `Isa::Avx2Vnni` and `Isa::Avx512` are only returned by
        // `Isa::detect` after `is_x86_feature_detected!` reported AVX2 and FMA on this CPU.
        (_, Isa::Avx2Fma | Isa::Avx2Vnni | Isa::Avx512) => unsafe {
            sums_avx2(w, acts, out, sum);
        },
        // No NEON versions: the fused portable body (aarch64 always has FMA).
        #[cfg(target_arch = "aarch64")]
        (_, Isa::Neon | Isa::NeonDot) => sums_body::<true>(w, acts, out, sum),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn sums_avx2(w: KRow<'_>, acts: &[&[BlockQ8K]], out: &mut [f32], sum: KSum) {
    let mut done = 0;
    for (a, o) in acts.chunks_exact(4).zip(out.chunks_exact_mut(4)) {
        // SAFETY: this function only runs where AVX2 and FMA are available.
        unsafe { x86::sums_group::<4>(w, a, o, sum) };
        done += 4;
    }
    for (a, o) in acts[done..].chunks(1).zip(out[done..].chunks_mut(1)) {
        // SAFETY: as above.
        unsafe { x86::sums_group::<1>(w, a, o, sum) };
    }
}

/// The aarch64 versions (NEON, NEON + `sdot`), in their own file.
#[cfg(target_arch = "aarch64")]
mod neon;

/// Activation rows per [`KPanel`].
pub const KPANEL_ROWS: usize = 8;

/// One super-block of [`KPANEL_ROWS`] Q8_K rows in the layout [`dot_kpanel`]'s 512-bit
/// kernels read: rows in pairs (`2p`, `2p + 1`), one pair to a register, so a weight
/// sub-block broadcast to both halves of a register multiplies two rows in one instruction.
#[derive(Clone, Copy)]
pub struct KPanelBlock {
    /// Pair `p`'s scales: row `2p`'s in lanes 0..8, row `2p + 1`'s in lanes 8..16.
    d: [[f32; 16]; 4],
    /// The eight rows' scales in row order (the [`KSum::Tiled`] and [`KSum::Gemm`] panels).
    d8: [f32; 8],
    /// Minus each row's scale, four times: rows `4h..4h + 4` in `neg_d[h]` (Q4_K's minimum
    /// terms, four lanes a row).
    neg_d: [[f32; 16]; 2],
    /// Pair `p`'s block sums: row `2p`'s sixteen, then row `2p + 1`'s (Q6_K's offset term).
    bsums: [[i16; 32]; 4],
    /// Each row's sums of adjacent block sums (eight a row; exact in `i16`), rows
    /// `4h..4h + 4` in `bsum_pairs[h]` (Q4_K's minimum terms).
    bsum_pairs: [[i16; 32]; 2],
    /// Pair `p`'s 32-element group `g`: row `2p`'s values, then row `2p + 1`'s.
    qs: [[[i8; 64]; 8]; 4],
}

/// [`KPANEL_ROWS`] activation rows interleaved for [`dot_kpanel`], super-block after
/// super-block: built once per product, read by every weight row.
pub struct KPanel {
    // Read only by the x86-64 kernels.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    blocks: Vec<KPanelBlock>,
}

impl KPanel {
    /// Interleaves `rows` (as many super-blocks as the shortest row has).
    pub fn new(rows: &[&[BlockQ8K]; KPANEL_ROWS]) -> Self {
        let nb = rows.iter().map(|r| r.len()).min().unwrap_or(0);
        let blocks = (0..nb)
            .map(|b| {
                let mut block = KPanelBlock {
                    d: [[0.0; 16]; 4],
                    d8: [0.0; 8],
                    neg_d: [[0.0; 16]; 2],
                    bsums: [[0; 32]; 4],
                    bsum_pairs: [[0; 32]; 2],
                    qs: [[[0; 64]; 8]; 4],
                };
                for (r, row) in rows.iter().enumerate() {
                    let y = &row[b];
                    let (p, half) = (r / 2, r % 2);
                    block.d[p][8 * half..8 * half + 8].fill(y.d);
                    block.d8[r] = y.d;
                    block.neg_d[r / 4][4 * (r % 4)..4 * (r % 4) + 4].fill(-y.d);
                    block.bsums[p][16 * half..16 * half + 16].copy_from_slice(&y.bsums);
                    for (i, pair) in y.bsums.chunks_exact(2).enumerate() {
                        block.bsum_pairs[r / 4][8 * (r % 4) + i] = pair[0] + pair[1];
                    }
                    for (g, group) in y.qs.chunks_exact(32).enumerate() {
                        block.qs[p][g][32 * half..32 * half + 32].copy_from_slice(group);
                    }
                }
                block
            })
            .collect();
        Self { blocks }
    }
}

/// Whether [`dot_kpanel`] runs on `isa` (the AVX-512 version only); elsewhere the rows go
/// through [`dot_rows_k`].
pub fn kpanels_supported(isa: Isa) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        isa == Isa::Avx512
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = isa;
        false
    }
}

/// Dot products of one weight row with the eight rows of `panel`, bit for bit what
/// [`dot_rows_k`] gives for those rows. Returns `false` (nothing written) where
/// [`kpanels_supported`] is false, for formats without a panel kernel (Q5_K, repacked Q4_K),
/// or when the panel's length does not match the row.
pub fn dot_kpanel(isa: Isa, w: KRow<'_>, panel: &KPanel, out: &mut [f32; KPANEL_ROWS]) -> bool {
    dot_kpanel_as(isa, w, panel, out, KSum::VecDot)
}

/// [`dot_kpanel`] with the float steps `sum` names (with [`KSum::Tiled`]: plain or repacked
/// Q4_K and Q6_K; [`KSum::Gemm`]: repacked Q4_K), bit for bit what [`dot_rows_k_as`] gives
/// for those rows; `false` (nothing written) where it has no panel kernel.
pub fn dot_kpanel_as(
    isa: Isa,
    w: KRow<'_>,
    panel: &KPanel,
    out: &mut [f32; KPANEL_ROWS],
    sum: KSum,
) -> bool {
    if !kpanels_supported(isa) {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    {
        let (n, blocks) = (panel.blocks.len(), &panel.blocks);
        // SAFETY (every call): `kpanels_supported` holds only for `Isa::Avx512`, which
        // `Isa::detect` returns only after `is_x86_feature_detected!` reported AVX2, FMA and
        // AVX-512 F, BW, VL and VNNI.
        match (w, sum.for_row(w)) {
            (
                KRow::Q4K {
                    blocks: b,
                    repacked,
                },
                sum,
            ) if b.len() == n => match (repacked, sum) {
                (false, KSum::VecDot) => unsafe { x86::q4k_panel(b, blocks, out) },
                (_, KSum::Tiled) => unsafe { x86::q4k_panel_sums::<false>(b, blocks, out) },
                (true, KSum::Gemm) => unsafe { x86::q4k_panel_sums::<true>(b, blocks, out) },
                _ => return false,
            },
            (KRow::Q6K(b), KSum::VecDot) if b.len() == n => unsafe {
                x86::q6k_panel(b, blocks, out);
            },
            (KRow::Q6K(b), KSum::Tiled) if b.len() == n => unsafe {
                x86::q6k_panel_tiled(b, blocks, out);
            },
            _ => return false,
        }
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (w, panel, out, sum);
        false
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_rows_avx2(w: KRow<'_>, acts: &[&[BlockQ8K]], out: &mut [f32]) {
    // Q4_K (plain) and Q6_K take activation rows four at a time, each unpacked weight
    // super-block serving all four (prefill); the rest go row by row.
    let grouped = matches!(
        w,
        KRow::Q4K {
            repacked: false,
            ..
        } | KRow::Q6K(_)
    );
    let mut done = 0;
    if grouped {
        for (a, o) in acts.chunks_exact(4).zip(out.chunks_exact_mut(4)) {
            // SAFETY: this function only runs where AVX2 and FMA are available.
            unsafe {
                match w {
                    KRow::Q4K { blocks, .. } => x86::q4k_group::<4>(blocks, a, o),
                    KRow::Q6K(blocks) => x86::q6k_group::<4>(blocks, a, o),
                    KRow::Q5K(_) => {}
                }
            }
            done += 4;
        }
    }
    for (o, a) in out[done..].iter_mut().zip(&acts[done..]) {
        // SAFETY: this function only runs where AVX2 and FMA are available.
        *o = unsafe {
            match w {
                KRow::Q4K { blocks, repacked } => x86::dot_q4k(blocks, a, repacked),
                KRow::Q5K(blocks) => x86::dot_q5k(blocks, a),
                KRow::Q6K(blocks) => x86::dot_q6k(blocks, a),
            }
        };
    }
}

/// The AVX2 versions with explicit intrinsics, in ggml's shape (`maddubs` of unsigned weight
/// bytes with signed activations, `madd` with the 16-bit sub-block scales); a test checks them
/// bit for bit against the portable bodies with fused multiply-adds.
#[cfg(target_arch = "x86_64")]
// Written for Rust 1.85, which needed `unsafe` around every intrinsic.
#[allow(unused_unsafe)]
mod x86 {
    use std::arch::x86_64::{
        __m256i, _mm256_add_epi32, _mm256_and_si256, _mm256_cvtepi32_ps, _mm256_fmadd_ps,
        _mm256_loadu_si256, _mm256_madd_epi16, _mm256_maddubs_epi16, _mm256_or_si256,
        _mm256_set1_epi8, _mm256_set1_epi16, _mm256_set1_ps, _mm256_setzero_ps,
        _mm256_setzero_si256, _mm256_slli_epi16, _mm256_slli_epi32, _mm256_srli_epi16,
        _mm256_storeu_ps, _mm256_sub_epi32,
    };

    use std::arch::x86_64::{
        __m128, __m128i, _mm_cvtepi32_ps, _mm_cvtepu8_epi16, _mm_fmadd_ps, _mm_hadd_epi16,
        _mm_loadl_epi64, _mm_loadu_si128, _mm_madd_epi16, _mm_set1_ps, _mm_setr_epi8,
        _mm_setzero_ps, _mm_shuffle_epi8, _mm_storeu_ps, _mm256_cvtepi8_epi16,
    };

    use std::arch::x86_64::{
        __m512, __m512i, _mm_storeu_si128, _mm512_abs_ps, _mm512_add_epi32, _mm512_add_ps,
        _mm512_broadcast_i32x4, _mm512_broadcast_i64x4, _mm512_cvtepi32_epi8, _mm512_cvtepi32_ps,
        _mm512_cvtps_epi32, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_loadu_si512,
        _mm512_madd_epi16, _mm512_maddubs_epi16, _mm512_max_ps, _mm512_min_ps, _mm512_mul_ps,
        _mm512_reduce_add_epi32, _mm512_reduce_max_ps, _mm512_set1_epi16, _mm512_set1_ps,
        _mm512_setzero_ps, _mm512_setzero_si512, _mm512_slli_epi32, _mm512_storeu_ps,
        _mm512_sub_epi32, _mm512_sub_ps,
    };

    use std::arch::x86_64::{
        _mm_add_epi32, _mm_cvtsi128_si32, _mm_hadd_epi32, _mm256_castsi256_si128,
        _mm256_extracti128_si256, _mm256_fnmadd_ps, _mm256_hadd_epi32, _mm256_loadu_ps,
        _mm256_mul_ps, _mm256_permute2x128_si256, _mm256_sub_ps, _mm512_castsi512_si256,
        _mm512_extracti64x4_epi64, _mm512_permutex2var_epi32, _mm512_setr_epi32,
    };

    use super::{BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K, KRow, KSum, hsum8, min_sum};

    /// [`min_sum`] as ggml's AVX2 Q4_K kernel computes it: the sixteen block sums added in
    /// pairs (`hadd`), times the eight minimums (`madd`): four exact `i32` lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn min_sum_lanes(mn: &[u8; 8], bsums: &[i16; 16]) -> __m128i {
        // SAFETY: the loads read 8 bytes of `mn` and 2 × 16 bytes of `bsums`.
        unsafe {
            let lo = _mm_loadu_si128(bsums.as_ptr().cast());
            let hi = _mm_loadu_si128(bsums[8..].as_ptr().cast());
            let mins = _mm_cvtepu8_epi16(_mm_loadl_epi64(mn.as_ptr().cast()));
            _mm_madd_epi16(mins, _mm_hadd_epi16(lo, hi))
        }
    }

    /// `acc + dmin · lanes` in four `f32` lanes, each a fused multiply-add as the scalar
    /// `dmin.mul_add(p as f32, acc)` of the portable body.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn add_mins(acc: __m128, dmin: f32, x: &BlockQ4K, y: &BlockQ8K) -> __m128 {
        // SAFETY: AVX2 and FMA are available (this function's requirement).
        unsafe {
            let p = min_sum_lanes(&x.mn, &y.bsums);
            _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(p), acc)
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn load(p: &[u8]) -> __m256i {
        assert!(p.len() >= 32);
        // SAFETY: at least 32 readable bytes (checked above); unaligned loads are allowed.
        unsafe { _mm256_loadu_si256(p.as_ptr().cast()) }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn load_i8(p: &[i8]) -> __m256i {
        assert!(p.len() >= 32);
        // SAFETY: as `load`.
        unsafe { _mm256_loadu_si256(p.as_ptr().cast()) }
    }

    /// Sub-blocks `2j` (`lo`) and `2j + 1` (`hi`) of a Q4_K or Q5_K super-block against
    /// activations `y`: ggml's eight exact lanes of Σ scale·q·y over those 64 elements.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn pair_lanes(lo: __m256i, hi: __m256i, sc: &[u8; 8], y: &[i8], j: usize) -> __m256i {
        // SAFETY: `load_i8` checks its 32 bytes.
        unsafe {
            let p_lo = _mm256_madd_epi16(
                _mm256_maddubs_epi16(lo, load_i8(&y[64 * j..])),
                _mm256_set1_epi16(i16::from(sc[2 * j])),
            );
            let p_hi = _mm256_madd_epi16(
                _mm256_maddubs_epi16(hi, load_i8(&y[64 * j + 32..])),
                _mm256_set1_epi16(i16::from(sc[2 * j + 1])),
            );
            _mm256_add_epi32(p_lo, p_hi)
        }
    }

    /// A Q6_K super-block (unpacked by [`q6k_unpack`], `sc` its [`q6k_sc16`]) against
    /// activations `y`: ggml's eight exact lanes, the `32·Σ scale·bsum` offset taken off.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn q6k_lanes(
        q: &[__m256i; 8],
        scales: &[__m256i; 8],
        sc: __m256i,
        y: &BlockQ8K,
    ) -> __m256i {
        // SAFETY: `load_i8` checks its 32 bytes; the block sums are 32 readable bytes.
        unsafe {
            let mut sumi = _mm256_setzero_si256();
            for (g, (q, scale)) in q.iter().zip(scales).enumerate() {
                let p = _mm256_maddubs_epi16(*q, load_i8(&y.qs[32 * g..]));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(*scale, p));
            }
            let bsums = _mm256_loadu_si256(y.bsums.as_ptr().cast());
            _mm256_sub_epi32(sumi, _mm256_slli_epi32::<5>(_mm256_madd_epi16(bsums, sc)))
        }
    }

    /// Σ over a super-block of the scaled products, as eight lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn q4k_sumi(
        qs: &[u8; 128],
        sc: &[u8; 8],
        fifth: Option<&[u8; 32]>,
        y: &[i8; 256],
    ) -> __m256i {
        unsafe {
            let m4 = _mm256_set1_epi8(0x0f);
            let mut sumi = _mm256_setzero_si256();
            let hbits = fifth.map(|h| load(h));
            for j in 0..4 {
                let bits = load(&qs[32 * j..]);
                let mut lo = _mm256_and_si256(bits, m4);
                let mut hi = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
                if let Some(h) = hbits {
                    // Bit 2j of each byte is the low half's fifth bit, 2j+1 the high half's.
                    let one = _mm256_set1_epi8(1);
                    let shift = |k: u32| -> __m256i {
                        let b = match k {
                            0 => h,
                            1 => _mm256_srli_epi16(h, 1),
                            2 => _mm256_srli_epi16(h, 2),
                            3 => _mm256_srli_epi16(h, 3),
                            4 => _mm256_srli_epi16(h, 4),
                            5 => _mm256_srli_epi16(h, 5),
                            6 => _mm256_srli_epi16(h, 6),
                            _ => _mm256_srli_epi16(h, 7),
                        };
                        _mm256_slli_epi16(_mm256_and_si256(b, one), 4)
                    };
                    #[allow(clippy::cast_possible_truncation)]
                    let jj = j as u32;
                    lo = _mm256_or_si256(lo, shift(2 * jj));
                    hi = _mm256_or_si256(hi, shift(2 * jj + 1));
                }
                sumi = _mm256_add_epi32(sumi, pair_lanes(lo, hi, sc, y, j));
            }
            sumi
        }
    }

    #[allow(clippy::cast_precision_loss)]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_q4k(w: &[BlockQ4K], a: &[BlockQ8K], repacked: bool) -> f32 {
        unsafe {
            if repacked {
                let mut acc = 0f32;
                let mut acc_min = 0f32;
                for (x, y) in w.iter().zip(a) {
                    let sumi = hsum_i32(q4k_sumi(&x.qs, &x.sc, None, &y.qs));
                    let m = min_sum_lanes(&x.mn, &y.bsums);
                    let m = _mm_hadd_epi32(m, m);
                    let mins = _mm_cvtsi128_si32(_mm_hadd_epi32(m, m));
                    acc = (sumi as f32).mul_add(x.d * y.d, acc);
                    acc_min = (mins as f32).mul_add(x.dmin * y.d, acc_min);
                }
                acc - acc_min
            } else {
                let mut acc = _mm256_setzero_ps();
                let mut acc_m = _mm_setzero_ps();
                for (x, y) in w.iter().zip(a) {
                    let d = y.d * x.d;
                    let dmin = -y.d * x.dmin;
                    acc_m = add_mins(acc_m, dmin, x, y);
                    let sumi = q4k_sumi(&x.qs, &x.sc, None, &y.qs);
                    acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
                }
                let mut l = [0f32; 8];
                _mm256_storeu_ps(l.as_mut_ptr(), acc);
                let acc_m = {
                    let mut v = [0f32; 4];
                    _mm_storeu_ps(v.as_mut_ptr(), acc_m);
                    v
                };
                let m = [acc_m[0] + acc_m[2], acc_m[1] + acc_m[3]];
                hsum8(l) + (m[0] + m[1])
            }
        }
    }

    #[allow(clippy::cast_precision_loss)]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_q5k(w: &[BlockQ5K], a: &[BlockQ8K]) -> f32 {
        unsafe {
            let mut acc = _mm256_setzero_ps();
            let mut summs = 0f32;
            for (x, y) in w.iter().zip(a) {
                let d = y.d * x.d;
                let dmin = -y.d * x.dmin;
                let mins: i32 = min_sum(&x.mn, &y.bsums).iter().sum();
                summs = dmin.mul_add(mins as f32, summs);
                let sumi = q4k_sumi(&x.qs, &x.sc, Some(&x.qh), &y.qs);
                acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
            }
            let mut l = [0f32; 8];
            _mm256_storeu_ps(l.as_mut_ptr(), acc);
            hsum8(l) + summs
        }
    }

    /// The sum of `v`'s eight lanes (exact: the lanes are exact integer sums).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum_i32(v: __m256i) -> i32 {
        // SAFETY: register-only operations.
        unsafe {
            let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
            let s = _mm_hadd_epi32(s, s);
            _mm_cvtsi128_si32(_mm_hadd_epi32(s, s))
        }
    }

    /// [`super::sums_body`]'s arithmetic ([`KSum::Tiled`], [`KSum::Gemm`]) for `R`
    /// activation rows at once, each unpacked weight super-block serving all of them: the
    /// integer sums in ggml's lanes, added up exactly, then the same scalar float steps.
    #[allow(clippy::cast_precision_loss)]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn sums_group<const R: usize>(
        w: KRow<'_>,
        acts: &[&[BlockQ8K]],
        out: &mut [f32],
        sum: KSum,
    ) {
        let acts: &[&[BlockQ8K]; R] = acts.try_into().expect("R activation rows");
        let nb = match w {
            KRow::Q4K { blocks, .. } => blocks.len(),
            KRow::Q5K(b) => b.len(),
            KRow::Q6K(b) => b.len(),
        };
        for a in acts {
            assert!(a.len() >= nb);
        }
        let mut acc = [0f32; R];
        let mut acc_min = [0f32; R];
        // SAFETY: every row has at least `nb` blocks (asserted above); the loads read whole
        // arrays of the blocks.
        unsafe {
            for b in 0..nb {
                match w {
                    KRow::Q4K { blocks, .. } => {
                        let x = blocks.get_unchecked(b);
                        let q = q4k_unpack(&x.qs);
                        for r in 0..R {
                            let y = acts[r].get_unchecked(b);
                            let mins = min_sum(&x.mn, &y.bsums);
                            let mut s1 = 0i32;
                            for (j, m) in mins.into_iter().enumerate() {
                                let sj =
                                    hsum_i32(pair_lanes(q[2 * j], q[2 * j + 1], &x.sc, &y.qs, j));
                                if sum == KSum::Gemm {
                                    acc[r] = (sj as f32).mul_add(x.d * y.d, acc[r]);
                                    acc_min[r] = (m as f32).mul_add(x.dmin * y.d, acc_min[r]);
                                } else {
                                    s1 += sj;
                                }
                            }
                            if sum != KSum::Gemm {
                                let s2 = mins.iter().sum();
                                acc[r] = super::tiled_step::<true>(
                                    acc[r],
                                    s1,
                                    Some((s2, x.dmin)),
                                    x.d,
                                    y.d,
                                );
                            }
                        }
                    }
                    KRow::Q5K(blocks) => {
                        let x = blocks.get_unchecked(b);
                        for r in 0..R {
                            let y = acts[r].get_unchecked(b);
                            let s1 = hsum_i32(q4k_sumi(&x.qs, &x.sc, Some(&x.qh), &y.qs));
                            let s2 = min_sum(&x.mn, &y.bsums).iter().sum();
                            acc[r] =
                                super::tiled_step::<true>(acc[r], s1, Some((s2, x.dmin)), x.d, y.d);
                        }
                    }
                    KRow::Q6K(blocks) => {
                        let x = blocks.get_unchecked(b);
                        let (q, scales) = q6k_unpack(x);
                        let sc = q6k_sc16(x);
                        for r in 0..R {
                            let y = acts[r].get_unchecked(b);
                            let s1 = hsum_i32(q6k_lanes(&q, &scales, sc, y));
                            acc[r] = super::tiled_step::<true>(acc[r], s1, None, x.d, y.d);
                        }
                    }
                }
            }
        }
        for r in 0..R {
            out[r] = if sum == KSum::Gemm {
                acc[r] - acc_min[r]
            } else {
                acc[r]
            };
        }
    }

    /// Unpacked Q4_K super-block: the eight 32-element sub-blocks as bytes.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn q4k_unpack(qs: &[u8; 128]) -> [__m256i; 8] {
        unsafe {
            let m4 = _mm256_set1_epi8(0x0f);
            let mut q = [_mm256_setzero_si256(); 8];
            for j in 0..4 {
                let bits = load(&qs[32 * j..]);
                q[2 * j] = _mm256_and_si256(bits, m4);
                q[2 * j + 1] = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
            }
            q
        }
    }

    /// [`dot_q4k`] (plain arithmetic) for `R` activation rows at once, bit for bit.
    #[allow(clippy::cast_precision_loss)]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn q4k_group<const R: usize>(w: &[BlockQ4K], acts: &[&[BlockQ8K]], out: &mut [f32]) {
        let acts: &[&[BlockQ8K]; R] = acts.try_into().expect("R activation rows");
        for a in acts {
            assert!(a.len() >= w.len());
        }
        unsafe {
            let mut acc = [_mm256_setzero_ps(); R];
            let mut acc_mins = [_mm_setzero_ps(); R];
            for (b, x) in w.iter().enumerate() {
                let q = q4k_unpack(&x.qs);
                for r in 0..R {
                    // SAFETY: every row has at least `w.len()` blocks (asserted above).
                    let y = acts[r].get_unchecked(b);
                    let d = y.d * x.d;
                    let dmin = -y.d * x.dmin;
                    acc_mins[r] = add_mins(acc_mins[r], dmin, x, y);
                    let mut sumi = _mm256_setzero_si256();
                    for j in 0..4 {
                        let p = pair_lanes(q[2 * j], q[2 * j + 1], &x.sc, &y.qs, j);
                        sumi = _mm256_add_epi32(sumi, p);
                    }
                    acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc[r]);
                }
            }
            for r in 0..R {
                let mut l = [0f32; 8];
                _mm256_storeu_ps(l.as_mut_ptr(), acc[r]);
                let mut acc_m = [0f32; 4];
                _mm_storeu_ps(acc_m.as_mut_ptr(), acc_mins[r]);
                let m = [acc_m[0] + acc_m[2], acc_m[1] + acc_m[3]];
                out[r] = hsum8(l) + (m[0] + m[1]);
            }
        }
    }

    /// Unpacked Q6_K super-block: eight 32-element groups (0..=63) and their 16-bit scales.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn q6k_unpack(x: &BlockQ6K) -> ([__m256i; 8], [__m256i; 8]) {
        unsafe {
            let m3 = _mm256_set1_epi8(3);
            let m15 = _mm256_set1_epi8(15);
            let mut q = [_mm256_setzero_si256(); 8];
            let mut scales = [_mm256_setzero_si256(); 8];
            for j in 0..2 {
                let b1 = load(&x.ql[64 * j..]);
                let b2 = load(&x.ql[64 * j + 32..]);
                let h = load(&x.qh[32 * j..]);
                let h0 = _mm256_slli_epi16(_mm256_and_si256(h, m3), 4);
                let h1 = _mm256_slli_epi16(_mm256_and_si256(h, _mm256_set1_epi8(12)), 2);
                let h2 = _mm256_and_si256(h, _mm256_set1_epi8(48));
                #[allow(clippy::cast_possible_wrap)]
                let h3 = _mm256_srli_epi16(_mm256_and_si256(h, _mm256_set1_epi8(0xc0_u8 as i8)), 2);
                q[4 * j] = _mm256_or_si256(_mm256_and_si256(b1, m15), h0);
                q[4 * j + 1] = _mm256_or_si256(_mm256_and_si256(b2, m15), h1);
                q[4 * j + 2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(b1, 4), m15), h2);
                q[4 * j + 3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(b2, 4), m15), h3);
            }
            let sc_bytes = _mm_loadu_si128(x.sc.as_ptr().cast());
            for (is, sc) in scales.iter_mut().enumerate() {
                *sc = q6k_scale_pair(sc_bytes, is);
            }
            (q, scales)
        }
    }

    /// [`dot_q6k`] for `R` activation rows at once, bit for bit.
    #[allow(clippy::cast_precision_loss)]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn q6k_group<const R: usize>(w: &[BlockQ6K], acts: &[&[BlockQ8K]], out: &mut [f32]) {
        let acts: &[&[BlockQ8K]; R] = acts.try_into().expect("R activation rows");
        for a in acts {
            assert!(a.len() >= w.len());
        }
        unsafe {
            let mut acc = [_mm256_setzero_ps(); R];
            for (b, x) in w.iter().enumerate() {
                let (q, scales) = q6k_unpack(x);
                let sc = q6k_sc16(x);
                for r in 0..R {
                    // SAFETY: every row has at least `w.len()` blocks (asserted above).
                    let y = acts[r].get_unchecked(b);
                    let d = y.d * x.d;
                    let sumi = q6k_lanes(&q, &scales, sc, y);
                    acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc[r]);
                }
            }
            for r in 0..R {
                let mut l = [0f32; 8];
                _mm256_storeu_ps(l.as_mut_ptr(), acc[r]);
                out[r] = hsum8(l);
            }
        }
    }

    /// [`BlockQ8K::quantize`] on 512-bit registers. The maximum magnitude skips NaN as the
    /// scalar `>` does (`vmaxps` returns its second operand, the running maximum, when the
    /// first is NaN); the value that sets the scale is the first with that magnitude, as in
    /// the scalar loop; `vminps` against 127 returns 127 for NaN, as `f32::min` does.
    #[allow(clippy::cast_possible_truncation)]
    #[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub unsafe fn quantize_q8k(x: &[f32; 256]) -> BlockQ8K {
        let mut out = BlockQ8K {
            d: 0.0,
            qs: [0; 256],
            bsums: [0; 16],
        };
        // SAFETY: every load reads 16 of `x`'s 256 values; every store writes 16 of `qs`.
        unsafe {
            let mut m = _mm512_setzero_ps();
            for c in x.chunks_exact(16) {
                m = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(c.as_ptr())), m);
            }
            let amax = _mm512_reduce_max_ps(m);
            if amax == 0.0 {
                return out;
            }
            let Some(&max) = x.iter().find(|v| v.abs() == amax) else {
                return out;
            };
            let iscale = -127.0 / max;
            let (scale, magic, top) = (
                _mm512_set1_ps(iscale),
                _mm512_set1_ps(12_582_912.0),
                _mm512_set1_ps(127.0),
            );
            for ((c, q), s) in x
                .chunks_exact(16)
                .zip(out.qs.chunks_exact_mut(16))
                .zip(out.bsums.iter_mut())
            {
                let v = _mm512_mul_ps(scale, _mm512_loadu_ps(c.as_ptr()));
                let r = _mm512_sub_ps(_mm512_add_ps(v, magic), magic);
                let i = _mm512_cvtps_epi32(_mm512_min_ps(r, top));
                _mm_storeu_si128(q.as_mut_ptr().cast(), _mm512_cvtepi32_epi8(i));
                *s = _mm512_reduce_add_epi32(i) as i16;
            }
            out.d = 1.0 / iscale;
        }
        out
    }

    /// Lanes 0..8 and 8..16 of `acc`, each reduced as `hsum_float_8`.
    #[inline]
    #[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl")]
    unsafe fn hsum8_pair(acc: __m512) -> (f32, f32) {
        let mut l = [0f32; 16];
        // SAFETY: `l` is 64 writable bytes.
        unsafe { _mm512_storeu_ps(l.as_mut_ptr(), acc) };
        let (lo, hi) = l.split_at(8);
        (
            hsum8(lo.try_into().expect("8 lanes")),
            hsum8(hi.try_into().expect("8 lanes")),
        )
    }

    /// A Q4_K super-block for the 512-bit panels: each unpacked sub-block broadcast to both
    /// halves of a register, and the eight sub-block scales as 16-bit lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn q4k_panel_weights(x: &BlockQ4K) -> ([__m512i; 8], [__m512i; 8]) {
        // SAFETY: register-only operations on the unpacked block.
        unsafe {
            let q4 = q4k_unpack(&x.qs);
            (
                std::array::from_fn(|g| _mm512_broadcast_i64x4(q4[g])),
                std::array::from_fn(|g| _mm512_set1_epi16(i16::from(x.sc[g]))),
            )
        }
    }

    /// Sub-blocks `2j` and `2j + 1` of a Q4_K super-block against one pair of panel rows:
    /// ggml's eight exact lanes for each of the two rows, Σ scale·q·y over those 64 elements.
    #[inline]
    #[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn q4k_pair_lanes(
        q: &[__m512i; 8],
        sc: &[__m512i; 8],
        ys: &[[i8; 64]; 8],
        j: usize,
    ) -> __m512i {
        // SAFETY: the loads read whole `[i8; 64]`s.
        unsafe {
            let p_lo = _mm512_madd_epi16(
                _mm512_maddubs_epi16(q[2 * j], _mm512_loadu_si512(ys[2 * j].as_ptr().cast())),
                sc[2 * j],
            );
            let p_hi = _mm512_madd_epi16(
                _mm512_maddubs_epi16(
                    q[2 * j + 1],
                    _mm512_loadu_si512(ys[2 * j + 1].as_ptr().cast()),
                ),
                sc[2 * j + 1],
            );
            _mm512_add_epi32(p_lo, p_hi)
        }
    }

    /// A Q6_K super-block for the 512-bit panels: its unpacked groups and their scale pairs,
    /// each broadcast to both halves of a register, and the sixteen scales as 16-bit lanes.
    struct Q6kPanelWeights {
        q: [__m512i; 8],
        scales: [__m512i; 8],
        sc: __m512i,
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn q6k_panel_weights(x: &BlockQ6K) -> Q6kPanelWeights {
        // SAFETY: register-only operations on the unpacked block.
        unsafe {
            let (q6, scales6) = q6k_unpack(x);
            Q6kPanelWeights {
                q: std::array::from_fn(|g| _mm512_broadcast_i64x4(q6[g])),
                scales: std::array::from_fn(|g| _mm512_broadcast_i64x4(scales6[g])),
                sc: _mm512_broadcast_i64x4(q6k_sc16(x)),
            }
        }
    }

    /// A Q6_K super-block against one pair of panel rows: ggml's eight exact lanes for each of
    /// the two rows, the `32·Σ scale·bsum` offset taken off.
    #[inline]
    #[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn q6k_pair_lanes(w: &Q6kPanelWeights, p: &super::KPanelBlock, pair: usize) -> __m512i {
        // SAFETY: the loads read whole arrays of the panel block.
        unsafe {
            let ys = &p.qs[pair];
            let mut sumi = _mm512_setzero_si512();
            for ((q, y), scale) in w.q.iter().zip(ys).zip(&w.scales) {
                let prod = _mm512_maddubs_epi16(*q, _mm512_loadu_si512(y.as_ptr().cast()));
                sumi = _mm512_add_epi32(sumi, _mm512_madd_epi16(*scale, prod));
            }
            let bsums = _mm512_loadu_si512(p.bsums[pair].as_ptr().cast());
            _mm512_sub_epi32(sumi, _mm512_slli_epi32::<5>(_mm512_madd_epi16(bsums, w.sc)))
        }
    }

    /// [`q4k_group`]'s arithmetic for a [`super::KPanel`]'s eight rows on 512-bit registers,
    /// two rows to a register: each unpacked weight sub-block is broadcast to both halves, so
    /// each half's `maddubs`/`madd`/`add` leaves that row's exact eight lanes; its scale
    /// product, `fmadd`, and the minimum terms (four lanes a row, four rows to a register)
    /// are the row's own, in the same order, so the bits are the same.
    #[allow(clippy::cast_precision_loss)]
    #[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub unsafe fn q4k_panel(w: &[BlockQ4K], panel: &[super::KPanelBlock], out: &mut [f32; 8]) {
        assert!(panel.len() == w.len());
        // SAFETY: the loads read whole arrays of the panel block and the weight block; the
        // stores write `[f32; 16]`s.
        unsafe {
            let mut acc = [_mm512_setzero_ps(); 4];
            let mut acc_m = [_mm512_setzero_ps(); 2];
            for (x, p) in w.iter().zip(panel) {
                let (q, sc) = q4k_panel_weights(x);
                let dx = _mm512_set1_ps(x.d);
                for (pair, acc) in acc.iter_mut().enumerate() {
                    let mut sumi = _mm512_setzero_si512();
                    for j in 0..4 {
                        sumi = _mm512_add_epi32(sumi, q4k_pair_lanes(&q, &sc, &p.qs[pair], j));
                    }
                    let dd = _mm512_mul_ps(_mm512_loadu_ps(p.d[pair].as_ptr()), dx);
                    *acc = _mm512_fmadd_ps(dd, _mm512_cvtepi32_ps(sumi), *acc);
                }
                // Minimum terms: `min_sum_lanes` for four rows at once.
                let mins = _mm512_broadcast_i32x4(_mm_cvtepu8_epi16(_mm_loadl_epi64(
                    x.mn.as_ptr().cast(),
                )));
                let dmin = _mm512_set1_ps(x.dmin);
                for (h, acc_m) in acc_m.iter_mut().enumerate() {
                    let lanes = _mm512_madd_epi16(
                        mins,
                        _mm512_loadu_si512(p.bsum_pairs[h].as_ptr().cast()),
                    );
                    let dm = _mm512_mul_ps(_mm512_loadu_ps(p.neg_d[h].as_ptr()), dmin);
                    *acc_m = _mm512_fmadd_ps(dm, _mm512_cvtepi32_ps(lanes), *acc_m);
                }
            }
            let mut m = [0f32; 32];
            _mm512_storeu_ps(m.as_mut_ptr(), acc_m[0]);
            _mm512_storeu_ps(m[16..].as_mut_ptr(), acc_m[1]);
            for (pair, acc) in acc.iter().enumerate() {
                let (lo, hi) = hsum8_pair(*acc);
                for (r, sum) in [(2 * pair, lo), (2 * pair + 1, hi)] {
                    let a = &m[4 * r..4 * r + 4];
                    out[r] = sum + ((a[0] + a[2]) + (a[1] + a[3]));
                }
            }
        }
    }

    /// [`q6k_group`]'s arithmetic for a [`super::KPanel`]'s eight rows, two rows to a
    /// 512-bit register as [`q4k_panel`]: the same lanes, the same bits.
    #[allow(clippy::cast_precision_loss)]
    #[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub unsafe fn q6k_panel(w: &[BlockQ6K], panel: &[super::KPanelBlock], out: &mut [f32; 8]) {
        assert!(panel.len() == w.len());
        // SAFETY: the loads read whole arrays of the panel block; the stores write
        // `[f32; 16]`s.
        unsafe {
            let mut acc = [_mm512_setzero_ps(); 4];
            for (x, p) in w.iter().zip(panel) {
                let weights = q6k_panel_weights(x);
                let dx = _mm512_set1_ps(x.d);
                for (pair, acc) in acc.iter_mut().enumerate() {
                    let sumi = q6k_pair_lanes(&weights, p, pair);
                    let dd = _mm512_mul_ps(_mm512_loadu_ps(p.d[pair].as_ptr()), dx);
                    *acc = _mm512_fmadd_ps(dd, _mm512_cvtepi32_ps(sumi), *acc);
                }
            }
            for (pair, acc) in acc.iter().enumerate() {
                (out[2 * pair], out[2 * pair + 1]) = hsum8_pair(*acc);
            }
        }
    }

    /// The sums of each of `v`'s eight registers' lanes, in row order (exact integer adds).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum_rows(v: [__m256i; 8]) -> __m256i {
        // SAFETY: register-only operations.
        unsafe {
            let g0 =
                _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
            let g1 =
                _mm256_hadd_epi32(_mm256_hadd_epi32(v[4], v[5]), _mm256_hadd_epi32(v[6], v[7]));
            _mm256_add_epi32(
                _mm256_permute2x128_si256::<0x20>(g0, g1),
                _mm256_permute2x128_si256::<0x31>(g0, g1),
            )
        }
    }

    /// A pair register's two rows (row `2p` in the low half, `2p + 1` in the high half) into
    /// `rows`.
    #[inline]
    #[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl")]
    unsafe fn split_pair(v: __m512i, pair: usize, rows: &mut [__m256i; 8]) {
        // SAFETY: register-only operations.
        unsafe {
            rows[2 * pair] = _mm512_castsi512_si256(v);
            rows[2 * pair + 1] = _mm512_extracti64x4_epi64::<1>(v);
        }
    }

    /// The Q4_K panel with [`KSum::Tiled`] (`GEMM` false) or [`KSum::Gemm`] (`GEMM` true)
    /// steps: [`q4k_panel`]'s integer lanes, each row's (Tiled: whole super-block; Gemm: each
    /// 64 elements') lanes added up exactly, then the float steps of
    /// [`super::sums_body`] for the eight rows side by side, one row to a lane.
    #[allow(clippy::cast_precision_loss)]
    #[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub unsafe fn q4k_panel_sums<const GEMM: bool>(
        w: &[BlockQ4K],
        panel: &[super::KPanelBlock],
        out: &mut [f32; 8],
    ) {
        assert!(panel.len() == w.len());
        // SAFETY: the loads read whole arrays of the panel block and the weight block.
        unsafe {
            let mut acc = _mm256_setzero_ps();
            let mut acc_min = _mm256_setzero_ps();
            // Lane `4r + j` of the minimum terms (rows 0..4, then 4..8) to lane `r` of `j`'s.
            let pick: [__m512i; 4] = std::array::from_fn(|j| {
                #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
                let j = j as i32;
                _mm512_setr_epi32(
                    j,
                    4 + j,
                    8 + j,
                    12 + j,
                    16 + j,
                    20 + j,
                    24 + j,
                    28 + j,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                )
            });
            for (x, p) in w.iter().zip(panel) {
                let (q, sc) = q4k_panel_weights(x);
                let dy = _mm256_loadu_ps(p.d8.as_ptr());
                let mins = _mm512_broadcast_i32x4(_mm_cvtepu8_epi16(_mm_loadl_epi64(
                    x.mn.as_ptr().cast(),
                )));
                let m = [
                    _mm512_madd_epi16(mins, _mm512_loadu_si512(p.bsum_pairs[0].as_ptr().cast())),
                    _mm512_madd_epi16(mins, _mm512_loadu_si512(p.bsum_pairs[1].as_ptr().cast())),
                ];
                let m_j: [__m256i; 4] = std::array::from_fn(|j| {
                    _mm512_castsi512_si256(_mm512_permutex2var_epi32(m[0], pick[j], m[1]))
                });
                let mut total = [_mm256_setzero_si256(); 8];
                for (j, mins_j) in m_j.iter().enumerate() {
                    let mut rows = [_mm256_setzero_si256(); 8];
                    for pair in 0..4 {
                        split_pair(q4k_pair_lanes(&q, &sc, &p.qs[pair], j), pair, &mut rows);
                    }
                    if GEMM {
                        let s = _mm256_cvtepi32_ps(hsum_rows(rows));
                        acc = _mm256_fmadd_ps(s, _mm256_mul_ps(_mm256_set1_ps(x.d), dy), acc);
                        acc_min = _mm256_fmadd_ps(
                            _mm256_cvtepi32_ps(*mins_j),
                            _mm256_mul_ps(_mm256_set1_ps(x.dmin), dy),
                            acc_min,
                        );
                    } else {
                        for (t, r) in total.iter_mut().zip(rows) {
                            *t = _mm256_add_epi32(*t, r);
                        }
                    }
                }
                if !GEMM {
                    let s1 = _mm256_cvtepi32_ps(hsum_rows(total));
                    let s2 = _mm256_add_epi32(
                        _mm256_add_epi32(m_j[0], m_j[1]),
                        _mm256_add_epi32(m_j[2], m_j[3]),
                    );
                    let r = _mm256_mul_ps(s1, _mm256_set1_ps(x.d));
                    let r = _mm256_fnmadd_ps(_mm256_set1_ps(x.dmin), _mm256_cvtepi32_ps(s2), r);
                    acc = _mm256_fmadd_ps(r, dy, acc);
                }
            }
            let result = if GEMM {
                _mm256_sub_ps(acc, acc_min)
            } else {
                acc
            };
            _mm256_storeu_ps(out.as_mut_ptr(), result);
        }
    }

    /// The Q6_K panel with [`KSum::Tiled`] steps: [`q6k_panel`]'s integer lanes, each row's
    /// added up exactly, then `fma(f32(s1)·d_x, d_y, out)` for the eight rows side by side.
    #[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub unsafe fn q6k_panel_tiled(
        w: &[BlockQ6K],
        panel: &[super::KPanelBlock],
        out: &mut [f32; 8],
    ) {
        assert!(panel.len() == w.len());
        // SAFETY: the loads read whole arrays of the panel block.
        unsafe {
            let mut acc = _mm256_setzero_ps();
            for (x, p) in w.iter().zip(panel) {
                let weights = q6k_panel_weights(x);
                let mut rows = [_mm256_setzero_si256(); 8];
                for pair in 0..4 {
                    split_pair(q6k_pair_lanes(&weights, p, pair), pair, &mut rows);
                }
                let r = _mm256_mul_ps(_mm256_cvtepi32_ps(hsum_rows(rows)), _mm256_set1_ps(x.d));
                acc = _mm256_fmadd_ps(r, _mm256_loadu_ps(p.d8.as_ptr()), acc);
            }
            _mm256_storeu_ps(out.as_mut_ptr(), acc);
        }
    }

    /// The sixteen Q6_K scales as 16-bit lanes (one sign extension of the loaded bytes).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn q6k_sc16(x: &BlockQ6K) -> __m256i {
        // SAFETY: reads the 16 scale bytes.
        unsafe { _mm256_cvtepi8_epi16(_mm_loadu_si128(x.sc.as_ptr().cast())) }
    }

    /// Scales `2·is` and `2·is + 1` of a Q6_K super-block as sixteen 16-bit lanes (eight of
    /// each), as ggml's `get_scale_shuffle`: one byte shuffle of the loaded scales and a sign
    /// extension instead of sixteen lane inserts.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn q6k_scale_pair(scales: __m128i, is: usize) -> __m256i {
        #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
        let (a, b) = ((2 * is) as i8, (2 * is + 1) as i8);
        // SAFETY: register-only operations.
        unsafe {
            let mask = _mm_setr_epi8(a, a, a, a, a, a, a, a, b, b, b, b, b, b, b, b);
            _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, mask))
        }
    }

    #[allow(clippy::cast_precision_loss)]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_q6k(w: &[BlockQ6K], a: &[BlockQ8K]) -> f32 {
        unsafe {
            let m3 = _mm256_set1_epi8(3);
            let m15 = _mm256_set1_epi8(15);
            let mut acc = _mm256_setzero_ps();
            for (x, y) in w.iter().zip(a) {
                let d = y.d * x.d;
                let sc_bytes = _mm_loadu_si128(x.sc.as_ptr().cast());
                let mut sumi = _mm256_setzero_si256();
                for j in 0..2 {
                    let b1 = load(&x.ql[64 * j..]);
                    let b2 = load(&x.ql[64 * j + 32..]);
                    let h = load(&x.qh[32 * j..]);
                    let h0 = _mm256_slli_epi16(_mm256_and_si256(h, m3), 4);
                    let h1 = _mm256_slli_epi16(_mm256_and_si256(h, _mm256_set1_epi8(12)), 2);
                    let h2 = _mm256_and_si256(h, _mm256_set1_epi8(48));
                    #[allow(clippy::cast_possible_wrap)]
                    let h3 =
                        _mm256_srli_epi16(_mm256_and_si256(h, _mm256_set1_epi8(0xc0_u8 as i8)), 2);
                    let q = [
                        _mm256_or_si256(_mm256_and_si256(b1, m15), h0),
                        _mm256_or_si256(_mm256_and_si256(b2, m15), h1),
                        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(b1, 4), m15), h2),
                        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(b2, 4), m15), h3),
                    ];
                    for (t, q) in q.into_iter().enumerate() {
                        let scale = q6k_scale_pair(sc_bytes, 4 * j + t);
                        let p = _mm256_maddubs_epi16(q, load_i8(&y.qs[128 * j + 32 * t..]));
                        sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(scale, p));
                    }
                }
                let bsums = _mm256_loadu_si256(y.bsums.as_ptr().cast());
                let sc = q6k_sc16(x);
                let sub = _mm256_slli_epi32::<5>(_mm256_madd_epi16(bsums, sc));
                sumi = _mm256_sub_epi32(sumi, sub);
                acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
            }
            let mut l = [0f32; 8];
            _mm256_storeu_ps(l.as_mut_ptr(), acc);
            hsum8(l)
        }
    }
}

#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

/// `Σ x·y` over 32 elements into eight lanes of four.
#[inline(always)]
fn lanes32(x: &[u8; 32], y: &[i8]) -> [i32; 8] {
    let mut out = [0i32; 8];
    for (l, o) in out.iter_mut().enumerate() {
        let mut s = 0i32;
        for t in 0..4 {
            s += i32::from(x[4 * l + t]) * i32::from(y[4 * l + t]);
        }
        *o = s;
    }
    out
}

/// `Σ x·y` over 32 elements.
#[inline(always)]
fn dot32(x: &[u8; 32], y: &[i8]) -> i32 {
    let mut s = 0i32;
    for (&a, &b) in x.iter().zip(&y[..32]) {
        s += i32::from(a) * i32::from(b);
    }
    s
}

/// Q4_K sub-blocks `2j` (low nibbles) and `2j+1` (high nibbles) of a super-block.
#[inline(always)]
fn q4k_pair(qs: &[u8; 128], j: usize) -> ([u8; 32], [u8; 32]) {
    let mut lo = [0u8; 32];
    let mut hi = [0u8; 32];
    for e in 0..32 {
        let b = qs[32 * j + e];
        lo[e] = b & 0x0f;
        hi[e] = b >> 4;
    }
    (lo, hi)
}

/// Q5_K sub-blocks `2j` and `2j+1`.
#[inline(always)]
fn q5k_pair(blk: &BlockQ5K, j: usize) -> ([u8; 32], [u8; 32]) {
    let (mut lo, mut hi) = q4k_pair(&blk.qs, j);
    for e in 0..32 {
        lo[e] |= ((blk.qh[e] >> (2 * j)) & 1) << 4;
        hi[e] |= ((blk.qh[e] >> (2 * j + 1)) & 1) << 4;
    }
    (lo, hi)
}

/// Q6_K's 32-element group `t` of half `j` (elements `128j + 32t ..`), unsigned 0..=63.
#[inline(always)]
fn q6k_group(blk: &BlockQ6K, j: usize, t: usize) -> [u8; 32] {
    let mut v = [0u8; 32];
    for (e, v) in v.iter_mut().enumerate() {
        let l = blk.ql[64 * j + 32 * (t & 1) + e];
        let low = if t < 2 { l & 0x0f } else { l >> 4 };
        let high = (blk.qh[32 * j + e] >> (2 * t)) & 3;
        *v = low | (high << 4);
    }
    v
}

/// Σ min · (sum of the activations of that 32-element sub-block), exact.
#[inline(always)]
fn min_sum(mn: &[u8; 8], bsums: &[i16; 16]) -> [i32; 4] {
    let mut prod = [0i32; 4];
    for (k, p) in prod.iter_mut().enumerate() {
        for i in [2 * k, 2 * k + 1] {
            let s = i32::from(bsums[2 * i]) + i32::from(bsums[2 * i + 1]);
            *p += i32::from(mn[i]) * s;
        }
    }
    prod
}

#[allow(clippy::cast_precision_loss)]
#[inline(always)]
fn dot_q4k<const FMA: bool>(w: &[BlockQ4K], a: &[BlockQ8K], repacked: bool) -> f32 {
    if repacked {
        let mut acc = 0f32;
        let mut acc_min = 0f32;
        for (x, y) in w.iter().zip(a) {
            let sumi: i32 = (0..4)
                .map(|j| pair_sum(q4k_pair(&x.qs, j), &x.sc, &y.qs, j))
                .sum();
            let mins: i32 = min_sum(&x.mn, &y.bsums).iter().sum();
            acc = madd::<FMA>(sumi as f32, x.d * y.d, acc);
            acc_min = madd::<FMA>(mins as f32, x.dmin * y.d, acc_min);
        }
        acc - acc_min
    } else {
        let mut acc = [0f32; 8];
        let mut acc_m = [0f32; 4];
        for (x, y) in w.iter().zip(a) {
            let d = y.d * x.d;
            let dmin = -y.d * x.dmin;
            for (m, p) in acc_m.iter_mut().zip(min_sum(&x.mn, &y.bsums)) {
                *m = madd::<FMA>(dmin, p as f32, *m);
            }
            let mut sumi = [0i32; 8];
            for j in 0..4 {
                let (lo, hi) = q4k_pair(&x.qs, j);
                let l0 = lanes32(&lo, &y.qs[64 * j..]);
                let l1 = lanes32(&hi, &y.qs[64 * j + 32..]);
                for l in 0..8 {
                    sumi[l] += i32::from(x.sc[2 * j]) * l0[l] + i32::from(x.sc[2 * j + 1]) * l1[l];
                }
            }
            for (acc, s) in acc.iter_mut().zip(sumi) {
                *acc = madd::<FMA>(d, s as f32, *acc);
            }
        }
        let m = [acc_m[0] + acc_m[2], acc_m[1] + acc_m[3]];
        hsum8(acc) + (m[0] + m[1])
    }
}

#[allow(clippy::cast_precision_loss)]
#[inline(always)]
fn dot_q5k<const FMA: bool>(w: &[BlockQ5K], a: &[BlockQ8K]) -> f32 {
    let mut acc = [0f32; 8];
    let mut summs = 0f32;
    for (x, y) in w.iter().zip(a) {
        let d = y.d * x.d;
        let dmin = -y.d * x.dmin;
        let mins: i32 = min_sum(&x.mn, &y.bsums).iter().sum();
        summs = madd::<FMA>(dmin, mins as f32, summs);
        let mut sumi = [0i32; 8];
        for j in 0..4 {
            let (lo, hi) = q5k_pair(x, j);
            let l0 = lanes32(&lo, &y.qs[64 * j..]);
            let l1 = lanes32(&hi, &y.qs[64 * j + 32..]);
            for l in 0..8 {
                sumi[l] += i32::from(x.sc[2 * j]) * l0[l] + i32::from(x.sc[2 * j + 1]) * l1[l];
            }
        }
        for (acc, s) in acc.iter_mut().zip(sumi) {
            *acc = madd::<FMA>(d, s as f32, *acc);
        }
    }
    hsum8(acc) + summs
}

#[allow(clippy::cast_precision_loss)]
#[inline(always)]
fn dot_q6k<const FMA: bool>(w: &[BlockQ6K], a: &[BlockQ8K]) -> f32 {
    let mut acc = [0f32; 8];
    for (x, y) in w.iter().zip(a) {
        let d = y.d * x.d;
        let mut sumi = [0i32; 8];
        for j in 0..2 {
            for t in 0..4 {
                let q = q6k_group(x, j, t);
                let l = lanes32(&q, &y.qs[128 * j + 32 * t..]);
                let is = 4 * j + t;
                for (lane, (s, v)) in sumi.iter_mut().zip(l).enumerate() {
                    // Lanes 0..4 are the group's first 16 elements.
                    let sc = x.sc[2 * is + usize::from(lane >= 4)];
                    *s += i32::from(sc) * v;
                }
            }
        }
        for (l, s) in sumi.iter_mut().enumerate() {
            let sub = i32::from(y.bsums[2 * l]) * i32::from(x.sc[2 * l])
                + i32::from(y.bsums[2 * l + 1]) * i32::from(x.sc[2 * l + 1]);
            *s -= sub << 5;
        }
        for (acc, s) in acc.iter_mut().zip(sumi) {
            *acc = madd::<FMA>(d, s as f32, *acc);
        }
    }
    hsum8(acc)
}

/// Σ scale·(q·y) over sub-blocks `2j` and `2j + 1` (64 elements) of a Q4_K or Q5_K
/// super-block, given them unpacked ([`q4k_pair`], [`q5k_pair`]).
#[inline(always)]
fn pair_sum((lo, hi): ([u8; 32], [u8; 32]), sc: &[u8; 8], y: &[i8], j: usize) -> i32 {
    i32::from(sc[2 * j]) * dot32(&lo, &y[64 * j..])
        + i32::from(sc[2 * j + 1]) * dot32(&hi, &y[64 * j + 32..])
}

/// Σ scale·((q − 32)·y) over a Q6_K super-block, exact.
#[inline(always)]
fn q6k_block_sum(x: &BlockQ6K, y: &BlockQ8K) -> i32 {
    let mut s = 0i32;
    for j in 0..2 {
        for t in 0..4 {
            let q = q6k_group(x, j, t);
            let is = 4 * j + t;
            for half in 0..2 {
                let (q, ys) = (&q[16 * half..16 * half + 16], &y.qs[32 * is + 16 * half..]);
                let raw: i32 = q
                    .iter()
                    .zip(ys)
                    .map(|(&a, &b)| i32::from(a) * i32::from(b))
                    .sum();
                let corr = raw - 32 * i32::from(y.bsums[2 * is + half]);
                s += i32::from(x.sc[2 * is + half]) * corr;
            }
        }
    }
    s
}

/// One output of [`KSum::Tiled`] from each super-block's exact sums `(s1, s2)` (`s2` the
/// minimum term, `None` for Q6_K).
#[allow(clippy::cast_precision_loss)]
#[inline(always)]
fn tiled_step<const FMA: bool>(out: f32, s1: i32, s2: Option<(i32, f32)>, dx: f32, dy: f32) -> f32 {
    let mut r = s1 as f32 * dx;
    if let Some((s2, dmin)) = s2 {
        r = madd::<FMA>(-dmin, s2 as f32, r);
    }
    madd::<FMA>(r, dy, out)
}

/// The portable bodies, for each [`KSum`] (see [`dot_rows_k_as`]).
#[allow(clippy::cast_precision_loss)]
#[inline(always)]
fn sums_body<const FMA: bool>(w: KRow<'_>, acts: &[&[BlockQ8K]], out: &mut [f32], sum: KSum) {
    for (o, a) in out.iter_mut().zip(acts) {
        *o = match (w, sum) {
            (KRow::Q4K { blocks, repacked }, KSum::VecDot) => dot_q4k::<FMA>(blocks, a, repacked),
            (KRow::Q5K(blocks), KSum::VecDot) => dot_q5k::<FMA>(blocks, a),
            (KRow::Q6K(blocks), KSum::VecDot) => dot_q6k::<FMA>(blocks, a),
            (KRow::Q4K { blocks, .. }, KSum::Gemm) => {
                let (mut acc, mut acc_min) = (0f32, 0f32);
                for (x, y) in blocks.iter().zip(a.iter()) {
                    let mins = min_sum(&x.mn, &y.bsums);
                    for (j, m) in mins.into_iter().enumerate() {
                        let s = pair_sum(q4k_pair(&x.qs, j), &x.sc, &y.qs, j);
                        acc = madd::<FMA>(s as f32, x.d * y.d, acc);
                        acc_min = madd::<FMA>(m as f32, x.dmin * y.d, acc_min);
                    }
                }
                acc - acc_min
            }
            (KRow::Q4K { blocks, .. }, _) => blocks.iter().zip(a.iter()).fold(0f32, |o, (x, y)| {
                let s1 = (0..4)
                    .map(|j| pair_sum(q4k_pair(&x.qs, j), &x.sc, &y.qs, j))
                    .sum();
                let s2 = min_sum(&x.mn, &y.bsums).iter().sum();
                tiled_step::<FMA>(o, s1, Some((s2, x.dmin)), x.d, y.d)
            }),
            (KRow::Q5K(blocks), _) => blocks.iter().zip(a.iter()).fold(0f32, |o, (x, y)| {
                let s1 = (0..4)
                    .map(|j| pair_sum(q5k_pair(x, j), &x.sc, &y.qs, j))
                    .sum();
                let s2 = min_sum(&x.mn, &y.bsums).iter().sum();
                tiled_step::<FMA>(o, s1, Some((s2, x.dmin)), x.d, y.d)
            }),
            (KRow::Q6K(blocks), _) => blocks.iter().zip(a.iter()).fold(0f32, |o, (x, y)| {
                tiled_step::<FMA>(o, q6k_block_sum(x, y), None, x.d, y.d)
            }),
        };
    }
}

#[inline(always)]
fn dot_rows_body<const FMA: bool>(w: KRow<'_>, acts: &[&[BlockQ8K]], out: &mut [f32]) {
    sums_body::<FMA>(w, acts, out, KSum::VecDot);
}

/// Dequantized value of element `e` of a super-block, and the block's offset term, in `f64`
/// (test reference).
#[cfg(test)]
pub fn reference_dot(w: KRow<'_>, a: &[BlockQ8K]) -> f64 {
    let mut sum = 0f64;
    let n = match w {
        KRow::Q4K { blocks, .. } => blocks.len(),
        KRow::Q5K(b) => b.len(),
        KRow::Q6K(b) => b.len(),
    };
    for b in 0..n {
        let y = &a[b];
        for e in 0..QK_K {
            let sub = e / 32;
            let j = e / 64;
            let hi = (e % 64) >= 32;
            let idx = 32 * j + e % 32;
            let wv = match w {
                KRow::Q4K { blocks, .. } => {
                    let x = &blocks[b];
                    let q = if hi { x.qs[idx] >> 4 } else { x.qs[idx] & 15 };
                    f64::from(x.d) * f64::from(x.sc[sub]) * f64::from(q)
                        - f64::from(x.dmin) * f64::from(x.mn[sub])
                }
                KRow::Q5K(blocks) => {
                    let x = &blocks[b];
                    let q = if hi { x.qs[idx] >> 4 } else { x.qs[idx] & 15 };
                    let h = (x.qh[e % 32] >> (2 * j + usize::from(hi))) & 1;
                    let q = q | (h << 4);
                    f64::from(x.d) * f64::from(x.sc[sub]) * f64::from(q)
                        - f64::from(x.dmin) * f64::from(x.mn[sub])
                }
                KRow::Q6K(blocks) => {
                    // ggml's dequantize_row_q6_K, element by element.
                    let x = &blocks[b];
                    let half = e / 128;
                    let r = e % 128;
                    let t = r / 32;
                    let l = r % 32;
                    let qlb = x.ql[64 * half + l + if t & 1 == 1 { 32 } else { 0 }];
                    let low = if t < 2 { qlb & 15 } else { qlb >> 4 };
                    let high = (x.qh[32 * half + l] >> (2 * t)) & 3;
                    let q = i32::from(low | (high << 4)) - 32;
                    let sc = x.sc[8 * half + l / 16 + 2 * t];
                    f64::from(x.d) * f64::from(sc) * f64::from(q)
                }
            };
            sum += wv * f64::from(y.d) * f64::from(y.qs[e]);
        }
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testing::Rng;

    fn raw_q4k(rng: &mut Rng) -> Vec<u8> {
        let mut b = Vec::with_capacity(BlockQ4K::BYTES);
        b.extend(rng.f16());
        b.extend(rng.f16());
        b.extend(rng.bytes(BlockQ4K::BYTES - 4));
        b
    }

    fn raw_q5k(rng: &mut Rng) -> Vec<u8> {
        let mut b = Vec::with_capacity(BlockQ5K::BYTES);
        b.extend(rng.f16());
        b.extend(rng.f16());
        b.extend(rng.bytes(BlockQ5K::BYTES - 4));
        b
    }

    fn raw_q6k(rng: &mut Rng) -> Vec<u8> {
        let mut b = rng.bytes(BlockQ6K::BYTES - 2);
        b.extend(rng.f16());
        b
    }

    /// `blocks` random super-blocks of each weight format.
    fn weights(rng: &mut Rng, blocks: usize) -> (Vec<BlockQ4K>, Vec<BlockQ5K>, Vec<BlockQ6K>) {
        let q4 = (0..blocks)
            .map(|_| BlockQ4K::parse(&raw_q4k(rng)))
            .collect();
        let q5 = (0..blocks)
            .map(|_| BlockQ5K::parse(&raw_q5k(rng)))
            .collect();
        let q6 = (0..blocks)
            .map(|_| BlockQ6K::parse(&raw_q6k(rng)))
            .collect();
        (q4, q5, q6)
    }

    fn acts(rng: &mut Rng, blocks: usize) -> Vec<BlockQ8K> {
        (0..blocks)
            .map(|_| {
                let x: Vec<f32> = (0..QK_K).map(|_| rng.unit() * 3.0).collect();
                BlockQ8K::quantize(&x)
            })
            .collect()
    }

    /// Every version this CPU runs (all of them, whatever `HEARTH_KERNELS` says).
    fn isas() -> Vec<Isa> {
        Isa::supported()
    }

    #[test]
    fn small_rounding_is_ties_to_even() {
        for (v, want) in [
            (0.5f32, 0.0f32),
            (1.5, 2.0),
            (2.5, 2.0),
            (-0.5, -0.0),
            (-1.5, -2.0),
            (126.5, 126.0),
            (-126.7, -127.0),
            (0.49999997, 0.0),
        ] {
            assert_eq!(crate::round_small(v), want, "{v}");
            assert_eq!(v.round_ties_even(), want, "{v}");
        }
        assert!(crate::round_small(f32::NAN).is_nan());
    }

    #[test]
    fn q8k_quantization_follows_ggml() {
        let mut x: Vec<f32> = (0..QK_K)
            .map(|i| {
                #[allow(clippy::cast_precision_loss)]
                let v = (i as f32 - 100.0) / 37.0;
                v
            })
            .collect();
        x[7] = -9.0;
        let q = BlockQ8K::quantize(&x);
        // The largest magnitude is negative, so iscale = -127/-9 > 0 and it maps to -127.
        assert_eq!(q.qs[7], -127);
        assert!((q.d - 9.0 / 127.0).abs() < 1e-7);
        for (i, s) in q.bsums.iter().enumerate() {
            let want: i16 = q.qs[16 * i..16 * i + 16]
                .iter()
                .map(|&v| i16::from(v))
                .sum();
            assert_eq!(*s, want);
        }
        // A positive maximum gives a negative scale and maps itself to -127.
        let y: Vec<f32> = x.iter().map(|v| -v).collect();
        let q = BlockQ8K::quantize(&y);
        assert_eq!(q.qs[7], -127);
        assert!(q.d < 0.0);
        assert!(BlockQ8K::quantize(&[0.0; QK_K]).qs.iter().all(|&v| v == 0));
    }

    /// [`BlockQ8K::quantize_on`] gives every version's bits: random blocks, an all-zero one,
    /// a negative and a positive extreme, ties of magnitude, and NaN.
    #[test]
    fn q8k_quantization_versions_agree() {
        let mut rng = Rng(0x00c0_ffee);
        let mut blocks: Vec<Vec<f32>> = (0..20)
            .map(|i| {
                #[allow(clippy::cast_precision_loss)]
                let amp = (i + 1) as f32 * 0.7;
                (0..QK_K).map(|_| rng.unit() * amp).collect()
            })
            .collect();
        blocks.push(vec![0.0; QK_K]);
        let mut ties: Vec<f32> = (0..QK_K).map(|_| rng.unit()).collect();
        (ties[3], ties[9]) = (2.0, -2.0);
        blocks.push(ties.clone());
        (ties[3], ties[9]) = (-2.0, 2.0);
        blocks.push(ties.clone());
        ties[100] = f32::NAN;
        blocks.push(ties);
        let mut nan_first: Vec<f32> = (0..QK_K).map(|_| rng.unit()).collect();
        nan_first[0] = f32::NAN;
        blocks.push(nan_first);
        for (b, x) in blocks.iter().enumerate() {
            let want = BlockQ8K::quantize(x);
            for isa in isas() {
                let got = BlockQ8K::quantize_on(isa, x);
                assert_eq!(got.d.to_bits(), want.d.to_bits(), "{isa:?} block {b}");
                assert_eq!(got.qs, want.qs, "{isa:?} block {b}");
                assert_eq!(got.bsums, want.bsums, "{isa:?} block {b}");
            }
        }
    }

    /// Every format and compiled version against the f64 reference, odd block and row counts.
    #[test]
    fn kernels_match_scalar_reference() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for blocks in [1usize, 2, 3, 5] {
            for n_acts in [1usize, 3, 4, 7] {
                let (q4, q5, q6) = weights(&mut rng, blocks);
                let a: Vec<Vec<BlockQ8K>> = (0..n_acts).map(|_| acts(&mut rng, blocks)).collect();
                let rows: Vec<&[BlockQ8K]> = a.iter().map(Vec::as_slice).collect();
                let formats = [
                    KRow::Q4K {
                        blocks: &q4,
                        repacked: true,
                    },
                    KRow::Q4K {
                        blocks: &q4,
                        repacked: false,
                    },
                    KRow::Q5K(&q5),
                    KRow::Q6K(&q6),
                ];
                for (f, w) in formats.into_iter().enumerate() {
                    for (isa, sum) in isas()
                        .into_iter()
                        .flat_map(|i| [KSum::VecDot, KSum::Tiled, KSum::Gemm].map(|s| (i, s)))
                    {
                        let mut out = vec![f32::NAN; n_acts];
                        dot_rows_k_as(isa, w, &rows, &mut out, sum);
                        for (i, (&got, a)) in out.iter().zip(&rows).enumerate() {
                            let want = reference_dot(w, a);
                            #[allow(clippy::cast_precision_loss)]
                            let tol = 2e-3 * (blocks as f64) + 1e-5 * want.abs();
                            assert!(
                                (f64::from(got) - want).abs() <= tol,
                                "format {f} {isa:?} {sum:?} blocks {blocks} row {i}: {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// Every SIMD version this CPU runs (AVX2, NEON, NEON + `sdot`) gives bit for bit what the
    /// portable bodies give with fused multiply-adds, with each [`KSum`]'s float steps (odd
    /// block counts; 9 rows: two groups of four and a rest).
    #[test]
    fn intrinsics_equal_the_fused_portable_body() {
        let mut rng = Rng(0xdead_beef);
        for blocks in [1usize, 3, 4] {
            let (q4, q5, q6) = weights(&mut rng, blocks);
            let a: Vec<Vec<BlockQ8K>> = (0..9).map(|_| acts(&mut rng, blocks)).collect();
            let rows: Vec<&[BlockQ8K]> = a.iter().map(Vec::as_slice).collect();
            for w in [
                KRow::Q4K {
                    blocks: &q4,
                    repacked: true,
                },
                KRow::Q4K {
                    blocks: &q4,
                    repacked: false,
                },
                KRow::Q5K(&q5),
                KRow::Q6K(&q6),
            ] {
                for sum in [KSum::VecDot, KSum::Tiled, KSum::Gemm] {
                    let mut want = vec![0f32; rows.len()];
                    sums_body::<true>(w, &rows, &mut want, sum.for_row(w));
                    for isa in isas().into_iter().skip(1) {
                        let mut got = vec![0f32; rows.len()];
                        dot_rows_k_as(isa, w, &rows, &mut got, sum);
                        assert_eq!(
                            got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                            want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                            "{isa:?} {sum:?} blocks {blocks}"
                        );
                    }
                }
            }
        }
    }

    /// The float steps themselves, on one super-block with known integer sums: Q6_K's tiled
    /// result is `fma(f32(s1)·d_x, d_y, 0)`; Q4_K's gemm result is the fused chain over its
    /// four 64-element sums minus the minimum chain.
    #[test]
    fn llama_sums_follow_the_written_steps() {
        let mut rng = Rng(99);
        let (q4, _, q6) = weights(&mut rng, 2);
        let a = acts(&mut rng, 2);
        let mut want6 = 0f32;
        for (x, y) in q6.iter().zip(&a) {
            #[allow(clippy::cast_precision_loss)]
            let r = q6k_block_sum(x, y) as f32 * x.d;
            want6 = r.mul_add(y.d, want6);
        }
        let mut got = [0f32];
        dot_rows_k_as(Isa::Portable, KRow::Q6K(&q6), &[&a], &mut got, KSum::Tiled);
        assert!(
            (got[0] - want6).abs() <= 1e-6 * want6.abs().max(1.0),
            "{got:?} vs {want6}"
        );
        let (mut acc, mut acc_min) = (0f32, 0f32);
        for (x, y) in q4.iter().zip(&a) {
            for j in 0..4 {
                #[allow(clippy::cast_precision_loss)]
                let (s, m) = (
                    pair_sum(q4k_pair(&x.qs, j), &x.sc, &y.qs, j) as f32,
                    min_sum(&x.mn, &y.bsums)[j] as f32,
                );
                acc = s.mul_add(x.d * y.d, acc);
                acc_min = m.mul_add(x.dmin * y.d, acc_min);
            }
        }
        let w = KRow::Q4K {
            blocks: &q4,
            repacked: true,
        };
        for isa in isas().into_iter().skip(1) {
            dot_rows_k_as(isa, w, &[&a], &mut got, KSum::Gemm);
            assert_eq!(got[0].to_bits(), (acc - acc_min).to_bits(), "{isa:?}");
        }
    }

    /// [`dot_kpanel_as`] with [`KSum::Tiled`] (plain Q4_K, Q6_K) and [`KSum::Gemm`]
    /// (repacked Q4_K) gives bit for bit what the fused portable body gives for its eight rows
    /// (odd block counts); Q5_K and plain Q4_K with `Gemm` are refused.
    #[test]
    fn llama_sum_kpanels_equal_the_fused_portable_body() {
        let mut rng = Rng(0x7a11_ed00);
        for blocks in [1usize, 3, 4] {
            let (q4, q5, q6) = weights(&mut rng, blocks);
            let a: Vec<Vec<BlockQ8K>> = (0..KPANEL_ROWS).map(|_| acts(&mut rng, blocks)).collect();
            let rows: Vec<&[BlockQ8K]> = a.iter().map(Vec::as_slice).collect();
            let rows: &[&[BlockQ8K]; KPANEL_ROWS] = rows.as_slice().try_into().unwrap();
            let panel = KPanel::new(rows);
            let plain = KRow::Q4K {
                blocks: &q4,
                repacked: false,
            };
            let repacked = KRow::Q4K {
                blocks: &q4,
                repacked: true,
            };
            for (w, sum, has_panel) in [
                (plain, KSum::Tiled, true),
                (repacked, KSum::Gemm, true),
                (KRow::Q6K(&q6), KSum::Tiled, true),
                (KRow::Q5K(&q5), KSum::Tiled, false),
                (plain, KSum::Gemm, true),
            ] {
                let mut fused = [0f32; KPANEL_ROWS];
                sums_body::<true>(w, rows, &mut fused, sum.for_row(w));
                for isa in isas() {
                    let mut got = [f32::NAN; KPANEL_ROWS];
                    if !dot_kpanel_as(isa, w, &panel, &mut got, sum) {
                        assert!(
                            !kpanels_supported(isa) || !has_panel,
                            "{isa:?} {sum:?} refused"
                        );
                        continue;
                    }
                    assert_eq!(
                        got.map(f32::to_bits),
                        fused.map(f32::to_bits),
                        "{isa:?} {sum:?} blocks {blocks}"
                    );
                }
            }
        }
    }

    /// [`dot_kpanel`] gives bit for bit the fused portable body's products for its eight rows
    /// (plain Q4_K and Q6_K; odd block counts); Q5_K, repacked Q4_K and a panel of the wrong
    /// length are refused.
    #[test]
    fn kpanels_equal_the_fused_portable_body() {
        let mut rng = Rng(0x0b5e_55ed);
        for blocks in [1usize, 3, 4] {
            let (q4, q5, q6) = weights(&mut rng, blocks);
            let a: Vec<Vec<BlockQ8K>> = (0..KPANEL_ROWS)
                .map(|_| acts(&mut rng, blocks + 1))
                .collect();
            let rows: Vec<&[BlockQ8K]> = a.iter().map(|r| &r[..blocks]).collect();
            let rows: &[&[BlockQ8K]; KPANEL_ROWS] = rows.as_slice().try_into().unwrap();
            let panel = KPanel::new(rows);
            let longer: Vec<&[BlockQ8K]> = a.iter().map(Vec::as_slice).collect();
            let longer = KPanel::new(longer.as_slice().try_into().unwrap());
            for (w, has_panel) in [
                (
                    KRow::Q4K {
                        blocks: &q4,
                        repacked: false,
                    },
                    true,
                ),
                (KRow::Q6K(&q6), true),
                (
                    KRow::Q4K {
                        blocks: &q4,
                        repacked: true,
                    },
                    false,
                ),
                (KRow::Q5K(&q5), false),
            ] {
                let mut want = [0f32; KPANEL_ROWS];
                dot_rows_body::<true>(w, rows, &mut want);
                for isa in isas() {
                    let mut got = [f32::NAN; KPANEL_ROWS];
                    assert!(!dot_kpanel(isa, w, &longer, &mut got));
                    if !dot_kpanel(isa, w, &panel, &mut got) {
                        assert!(!kpanels_supported(isa) || !has_panel, "{isa:?} refused");
                        continue;
                    }
                    assert_eq!(
                        got.map(f32::to_bits),
                        want.map(f32::to_bits),
                        "{isa:?} blocks {blocks}"
                    );
                }
            }
        }
    }

    /// The portable and AVX2 versions agree up to fused rounding.
    #[test]
    fn compiled_versions_agree() {
        let mut rng = Rng(7);
        let q6: Vec<BlockQ6K> = (0..6)
            .map(|_| BlockQ6K::parse(&raw_q6k(&mut rng)))
            .collect();
        let q4: Vec<BlockQ4K> = (0..6)
            .map(|_| BlockQ4K::parse(&raw_q4k(&mut rng)))
            .collect();
        let a = acts(&mut rng, 6);
        let rows = [a.as_slice()];
        for w in [
            KRow::Q6K(&q6),
            KRow::Q4K {
                blocks: &q4,
                repacked: true,
            },
        ] {
            let mut results = Vec::new();
            for isa in isas() {
                let mut out = [0f32];
                dot_rows_k(isa, w, &rows, &mut out);
                results.push(out[0]);
            }
            for r in &results {
                assert!((r - results[0]).abs() <= 1e-4 * results[0].abs().max(1.0));
            }
        }
    }

    /// Parsing follows ggml's layout: a Q4_K block's scales through `get_scale_min_k4`.
    #[test]
    fn q4k_scales_unpack() {
        let mut raw = vec![0u8; BlockQ4K::BYTES];
        raw[4..16].copy_from_slice(&[
            0xc1, 0x42, 0x03, 0x04, 0x45, 0x06, 0x87, 0x08, 0x9a, 0xbc, 0xde, 0xf0,
        ]);
        let b = BlockQ4K::parse(&raw);
        assert_eq!(b.sc[..4], [0x01, 0x02, 0x03, 0x04]);
        assert_eq!(b.mn[..4], [0x05, 0x06, 0x07, 0x08]);
        // j = 4: (s[8] & 15) | (s[0] >> 6) << 4 = 0xa | 0x30; min (s[8] >> 4) | (s[4] >> 6) << 4.
        assert_eq!(b.sc[4], 0x3a);
        assert_eq!(b.mn[4], 0x19);
    }
}
