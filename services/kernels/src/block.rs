//! Block dot products for the 32-element formats (Q4_0, Q4_1, Q5_0, Q8_0), with runtime
//! CPU-feature dispatch.
//!
//! Each kernel is written once as portable Rust in the shape of ggml's x86 `ggml_vec_dot_*`
//! kernels: per block, the 32 integer products are summed four at a time into eight `i32`
//! lanes (what `maddubs` + `madd` or `vpdpbusd` leave), each lane is converted to `f32` and
//! multiply-added with the product of the two block scales into eight `f32` accumulators, and
//! the accumulators are reduced as ggml's `hsum_float_8` does. The portable body is the
//! fallback (`a * b + c`); on x86-64 with AVX2+FMA (detected at run time, [`Isa::detect`])
//! the same arithmetic runs as explicit intrinsics ([`x86`]: `maddubs`, `madd`, `fmadd`, as in
//! ggml), which a test checks bit for bit against the portable body with fused multiply-adds.
//! On aarch64 the same holds for NEON and NEON + `sdot` (`neon`, in `block/neon.rs`: `sdot`
//! leaves exactly the eight lanes, two `float32x4` take the `f32` part). With AVX-512 VNNI
//! (`Isa::Avx2Vnni`) the lanes come from one `vpdpbusd` (unsigned × signed bytes): one side is
//! made unsigned by an offset (`q + 8`, `q + 16`, `q + 128`, a flipped sign bit) and the lanes
//! start at minus `offset ×` the other side's sums of four, which leaves the same integers; the
//! prefill version reads eight activation rows interleaved ([`ActPanel`]), the decode version
//! a whole run of weight rows per call ([`dot_rows_one_act`]).
//!
//! This module and [`crate::kquants`] (with their `neon` submodules) are the only ones that
//! allow `unsafe`:
//! calling a `#[target_feature]` function is unsafe, and each such call is
//! guarded by the runtime detection stored in [`Isa`], which can only be constructed as
//! `Avx2Fma` when the CPU reports both features (and as `Avx2Vnni` when it also reports
//! AVX512-VNNI and AVX512-VL).
#![allow(unsafe_code)]

/// Elements per block.
pub const QK: usize = 32;

use crate::Isa;

/// One weight row's blocks in the engine's layout, borrowed.
#[derive(Clone, Copy)]
pub enum WeightRow<'a> {
    /// Scale, 16 bytes of nibbles (low nibbles elements 0..16), values `q - 8`.
    Q4_0 { d: &'a [f32], qs: &'a [[u8; 16]] },
    /// Scale, minimum, nibbles; values `d·q + m`.
    Q4_1 {
        d: &'a [f32],
        m: &'a [f32],
        qs: &'a [[u8; 16]],
    },
    /// Scale, 32 fifth bits, nibbles; values `(q | bit << 4) - 16`.
    Q5_0 {
        d: &'a [f32],
        qh: &'a [u32],
        qs: &'a [[u8; 16]],
    },
    /// Scale, 32 signed bytes.
    Q8_0 { d: &'a [f32], qs: &'a [[i8; QK]] },
}

/// One activation row quantized to 8-bit blocks (`s` only for Q8_1).
#[derive(Clone, Copy)]
pub struct ActRow<'a> {
    pub d: &'a [f32],
    pub s: &'a [f32],
    pub qs: &'a [[i8; QK]],
}

/// Dot product of one weight row with each of `acts`, into `out` (one value per activation
/// row). Rows must have the same number of blocks.
pub fn dot_rows(isa: Isa, w: WeightRow<'_>, acts: &[ActRow<'_>], out: &mut [f32]) {
    match isa {
        Isa::Portable => dot_rows_body::<false>(w, acts, out),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2Fma` is only returned by `Isa::detect` after
        // `is_x86_feature_detected!` reported both AVX2 and FMA on this CPU.
        Isa::Avx2Fma => unsafe { dot_rows_avx2(w, acts, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2Vnni` and `Isa::Avx512` are only returned by `Isa::detect` after
        // `is_x86_feature_detected!` reported AVX2, FMA, AVX512-VNNI and AVX512-VL.
        Isa::Avx2Vnni | Isa::Avx512 => unsafe { dot_rows_avx2_vnni(w, acts, out) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: `Isa::Neon` is only returned by `Isa::detect` after
        // `is_aarch64_feature_detected!` reported NEON.
        Isa::Neon => unsafe { neon::dot_rows(w, acts, out) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: `Isa::NeonDot` is only returned after NEON and dotprod were detected.
        Isa::NeonDot => unsafe { neon::dot_rows_dotprod(w, acts, out) },
    }
}

/// Dot products of consecutive weight rows with one activation row (decode): `w` holds
/// `out.len()` rows of `nb` blocks one after another, and `out[r]` gets row `r`'s product, bit
/// for bit what [`dot_rows`] gives for that row. The x86-64 versions run the whole run of rows
/// in one call, without the per-row dispatch (a 262k-row output projection of 20 blocks a
/// row paid it 262k times a token).
pub fn dot_rows_one_act(isa: Isa, w: WeightRow<'_>, nb: usize, act: ActRow<'_>, out: &mut [f32]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2Fma` and `Isa::Avx2Vnni` are only returned by `Isa::detect`
        // after `is_x86_feature_detected!` reported AVX2 and FMA (and, for `Avx2Vnni`,
        // AVX512-VNNI and AVX512-VL).
        Isa::Avx2Fma => unsafe { dot_rows_one_act_avx2::<false>(w, nb, &act, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2Vnni | Isa::Avx512 => unsafe { dot_rows_one_act_avx2::<true>(w, nb, &act, out) },
        _ => {
            for (r, o) in out.iter_mut().enumerate() {
                dot_rows(
                    isa,
                    w.rows(r * nb..(r + 1) * nb),
                    &[act],
                    std::slice::from_mut(o),
                );
            }
        }
    }
}

impl<'a> WeightRow<'a> {
    /// The blocks `range` of this run of blocks (one row's, when `w` holds several rows).
    pub fn rows(&self, range: std::ops::Range<usize>) -> WeightRow<'a> {
        match *self {
            WeightRow::Q4_0 { d, qs } => WeightRow::Q4_0 {
                d: &d[range.clone()],
                qs: &qs[range],
            },
            WeightRow::Q4_1 { d, m, qs } => WeightRow::Q4_1 {
                d: &d[range.clone()],
                m: &m[range.clone()],
                qs: &qs[range],
            },
            WeightRow::Q5_0 { d, qh, qs } => WeightRow::Q5_0 {
                d: &d[range.clone()],
                qh: &qh[range.clone()],
                qs: &qs[range],
            },
            WeightRow::Q8_0 { d, qs } => WeightRow::Q8_0 {
                d: &d[range.clone()],
                qs: &qs[range],
            },
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_rows_one_act_avx2<const VNNI: bool>(
    w: WeightRow<'_>,
    nb: usize,
    act: &ActRow<'_>,
    out: &mut [f32],
) {
    // SAFETY: this function only runs where AVX2 and FMA (and VNNI when `VNNI`) are
    // available (see `dot_rows_one_act`).
    unsafe { x86::dot_rows_one_act::<VNNI>(w, nb, act, out) }
}

/// Rows per [`ActPanel`].
pub const PANEL_ROWS: usize = 8;

/// One block of [`PANEL_ROWS`] activation rows, interleaved: the rows' scales side by side
/// (one vector), their Q8_1 block sums likewise, and their 32 values one after another,
/// stored as unsigned bytes `q + 128` for the Q8_0 format (what `vpdpbusd` multiplies) and as
/// they are for Q8_1.
#[derive(Clone, Copy)]
pub struct PanelBlock {
    pub d: [f32; PANEL_ROWS],
    pub s: [f32; PANEL_ROWS],
    pub qs: [[u8; QK]; PANEL_ROWS],
}

/// [`PANEL_ROWS`] activation rows in the layout the VNNI kernels read fastest: block after
/// block, each a [`PanelBlock`]. Building one copies the rows once per product; every weight
/// row then reads it as one stream instead of eight, takes the eight scale products in one
/// multiply, and needs no per-row sign flip.
pub struct ActPanel {
    /// Whether the rows are Q8_1 (kept signed, with block sums) rather than Q8_0 (flipped).
    q8_1: bool,
    blocks: Vec<PanelBlock>,
}

impl ActPanel {
    /// Interleaves `rows` (Q8_1 when `q8_1`: their `s` is used; otherwise Q8_0).
    pub fn new(rows: &[ActRow<'_>; PANEL_ROWS], q8_1: bool) -> Self {
        let nb = rows
            .iter()
            .map(|r| r.d.len().min(r.qs.len()))
            .min()
            .unwrap_or(0);
        let blocks = (0..nb)
            .map(|b| {
                let mut block = PanelBlock {
                    d: [0.0; PANEL_ROWS],
                    s: [0.0; PANEL_ROWS],
                    qs: [[0; QK]; PANEL_ROWS],
                };
                for (r, row) in rows.iter().enumerate() {
                    block.d[r] = row.d[b];
                    block.s[r] = if q8_1 { row.s[b] } else { 0.0 };
                    for (o, &q) in block.qs[r].iter_mut().zip(&row.qs[b]) {
                        // Q8_0: the sign bit flipped is `q + 128` as an unsigned byte.
                        #[allow(clippy::cast_sign_loss)]
                        let byte = if q8_1 { q as u8 } else { (q as u8) ^ 0x80 };
                        *o = byte;
                    }
                }
                block
            })
            .collect();
        Self { q8_1, blocks }
    }

    /// Blocks per row.
    pub fn blocks(&self) -> usize {
        self.blocks.len()
    }
}

/// Whether [`dot_panel`] runs on `isa` (the VNNI versions only); elsewhere the rows go
/// through [`dot_rows`].
pub fn panels_supported(isa: Isa) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        matches!(isa, Isa::Avx2Vnni | Isa::Avx512)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = isa;
        false
    }
}

/// Dot products of one weight row with the eight rows of `panel`, bit for bit what
/// [`dot_rows`] gives for those rows. Returns `false` (nothing written) where
/// [`panels_supported`] is false, or when the panel's format or length does not fit the row
/// (Q4_1 takes Q8_1 panels, the others Q8_0 ones).
pub fn dot_panel(
    isa: Isa,
    w: WeightRow<'_>,
    panel: &ActPanel,
    out: &mut [f32; PANEL_ROWS],
) -> bool {
    if !panel_fits(isa, &w, panel) {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    {
        if isa == Isa::Avx512 {
            // SAFETY: `Isa::detect` returns `Isa::Avx512` only after `is_x86_feature_detected!`
            // reported AVX2, FMA and AVX-512 F, BW, VL and VNNI.
            unsafe { x86::dot_panel_avx512([w], &panel.blocks, [out]) };
        } else {
            // SAFETY: `panel_fits` holds otherwise only for `Isa::Avx2Vnni`, which
            // `Isa::detect` returns only after `is_x86_feature_detected!` reported AVX2, FMA,
            // AVX512-VNNI and AVX512-VL.
            unsafe { dot_panel_avx2_vnni(w, &panel.blocks, out) };
        }
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = out;
        false
    }
}

/// [`dot_panel`] for two weight rows of the same format at once (where the 512-bit version
/// runs, the two rows' products interleave, which is faster than one after the other); the
/// same bits. Returns `false` (nothing written) where [`dot_panel`] would for either row.
pub fn dot_panel_pair(
    isa: Isa,
    w: [WeightRow<'_>; 2],
    panel: &ActPanel,
    out: [&mut [f32; PANEL_ROWS]; 2],
) -> bool {
    if !w.iter().all(|w| panel_fits(isa, w, panel))
        || std::mem::discriminant(&w[0]) != std::mem::discriminant(&w[1])
    {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 {
        // SAFETY: as in `dot_panel`.
        unsafe { x86::dot_panel_avx512(w, &panel.blocks, out) };
        return true;
    }
    let [o0, o1] = out;
    dot_panel(isa, w[0], panel, o0) && dot_panel(isa, w[1], panel, o1)
}

/// Whether `panel` can multiply `w` on `isa`: panels supported, the panel's activation
/// format the one `w`'s format takes, the same block count.
fn panel_fits(isa: Isa, w: &WeightRow<'_>, panel: &ActPanel) -> bool {
    let (nb, wants_q8_1) = match w {
        WeightRow::Q4_1 { d, .. } => (d.len(), true),
        WeightRow::Q4_0 { d, .. } | WeightRow::Q5_0 { d, .. } | WeightRow::Q8_0 { d, .. } => {
            (d.len(), false)
        }
    };
    panels_supported(isa) && panel.q8_1 == wants_q8_1 && panel.blocks.len() == nb
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_panel_avx2_vnni(w: WeightRow<'_>, panel: &[PanelBlock], out: &mut [f32; PANEL_ROWS]) {
    // SAFETY: this function only runs where AVX2, FMA and the 256-bit VNNI are available
    // (see `dot_panel`).
    unsafe { x86::dot_panel_vnni(w, panel, out) }
}

/// The aarch64 versions (NEON, NEON + `sdot`), in their own file.
#[cfg(target_arch = "aarch64")]
pub(crate) mod neon;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_rows_avx2(w: WeightRow<'_>, acts: &[ActRow<'_>], out: &mut [f32]) {
    // SAFETY: this function only runs where AVX2 and FMA are available (see `dot_rows`).
    unsafe { x86::dot_rows(w, acts, out) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_rows_avx2_vnni(w: WeightRow<'_>, acts: &[ActRow<'_>], out: &mut [f32]) {
    // SAFETY: this function only runs where AVX2, FMA and the 256-bit VNNI are available
    // (see `dot_rows`).
    unsafe { x86::dot_rows_vnni(w, acts, out) }
}

/// The AVX2 version with explicit intrinsics, as ggml's `ggml_vec_dot_q4_0_q8_0` & co. do it:
/// `maddubs` + `madd` leave the eight lanes of four products, `cvtepi32_ps` and `fmadd` with
/// the product of the block scales accumulate them. (LLVM's auto-vectorisation of the
/// portable body widened every product to 32 bits and ran at a quarter of this speed.)
#[cfg(target_arch = "x86_64")]
// Written for Rust 1.85, which needed `unsafe` around every intrinsic; newer compilers call the
// value-only ones safe inside `#[target_feature]` functions.
#[allow(unused_unsafe)]
pub(crate) mod x86 {
    use std::arch::x86_64::{
        __m256i, __m512i, _cvtu64_mask64, _mm_loadu_si128, _mm_srli_epi16, _mm256_add_ps,
        _mm256_and_si256, _mm256_cmpeq_epi8, _mm256_cvtepi32_ps, _mm256_fmadd_ps, _mm256_loadu_ps,
        _mm256_loadu_si256, _mm256_madd_epi16, _mm256_maddubs_epi16, _mm256_mul_ps,
        _mm256_or_si256, _mm256_permutevar8x32_ps, _mm256_set_epi64x, _mm256_set_m128i,
        _mm256_set1_epi8, _mm256_set1_epi16, _mm256_set1_epi32, _mm256_set1_epi64x, _mm256_set1_ps,
        _mm256_setzero_ps, _mm256_setzero_si256, _mm256_shuffle_epi8, _mm256_sign_epi8,
        _mm256_storeu_ps, _mm256_sub_epi8, _mm256_sub_epi32, _mm256_xor_si256, _mm512_and_si512,
        _mm512_broadcast_i32x4, _mm512_broadcast_i64x4, _mm512_castps256_ps512,
        _mm512_castsi256_si512, _mm512_cvtepi32_ps, _mm512_dpbusd_epi32, _mm512_fmadd_ps,
        _mm512_inserti64x4, _mm512_loadu_si512, _mm512_mask_sub_epi8, _mm512_permutexvar_ps,
        _mm512_set_epi64, _mm512_set1_epi8, _mm512_setzero_ps, _mm512_setzero_si512,
        _mm512_srlv_epi16, _mm512_storeu_ps, _mm512_sub_epi8, _mm512_sub_epi32,
    };

    use super::{ActRow, PanelBlock, QK, WeightRow, hsum8};

    /// ggml's `bytes_from_nibbles_32`: low nibbles to bytes 0..16, high nibbles to 16..32.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn nibbles(q: &[u8; 16]) -> __m256i {
        // SAFETY: `q` is 16 readable bytes; unaligned loads are allowed.
        unsafe {
            let lo = _mm_loadu_si128(q.as_ptr().cast());
            let both = _mm256_set_m128i(_mm_srli_epi16(lo, 4), lo);
            _mm256_and_si256(both, _mm256_set1_epi8(0x0f))
        }
    }

    /// ggml's `bytes_from_bits_32`: byte `e` is `0xff` where bit `e` of `bits` is set.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn bits_32(bits: u32) -> __m256i {
        unsafe {
            let shuf = _mm256_set_epi64x(
                0x0303_0303_0303_0303,
                0x0202_0202_0202_0202,
                0x0101_0101_0101_0101,
                0,
            );
            #[allow(clippy::cast_possible_wrap)]
            let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(bits as i32), shuf);
            #[allow(clippy::cast_possible_wrap)]
            let bytes =
                _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe_u64 as i64));
            _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1))
        }
    }

    /// Formats as const parameters, so each gets its own loop without a per-block `match`.
    const Q4_0: u8 = 0;
    const Q4_1: u8 = 1;
    const Q5_0: u8 = 2;
    const Q8_0: u8 = 3;

    /// One weight row's arrays (those the format does not have are empty).
    struct Row<'a> {
        d: &'a [f32],
        m: &'a [f32],
        nib: &'a [[u8; 16]],
        qh: &'a [u32],
        q8: &'a [[i8; QK]],
    }

    impl<'a> Row<'a> {
        /// `w`'s arrays and its format constant.
        fn of(w: WeightRow<'a>) -> (u8, Self) {
            let mut row = Row {
                d: &[],
                m: &[],
                nib: &[],
                qh: &[],
                q8: &[],
            };
            let format = match w {
                WeightRow::Q4_0 { d, qs } => {
                    (row.d, row.nib) = (d, qs);
                    Q4_0
                }
                WeightRow::Q4_1 { d, m, qs } => {
                    (row.d, row.m, row.nib) = (d, m, qs);
                    Q4_1
                }
                WeightRow::Q5_0 { d, qh, qs } => {
                    (row.d, row.qh, row.nib) = (d, qh, qs);
                    Q5_0
                }
                WeightRow::Q8_0 { d, qs } => {
                    (row.d, row.q8) = (d, qs);
                    Q8_0
                }
            };
            (format, row)
        }

        /// Whether the arrays format `F` reads hold `nb` blocks.
        fn has_blocks<const F: u8>(&self, nb: usize) -> bool {
            match F {
                Q4_0 => self.nib.len() >= nb,
                Q4_1 => self.nib.len() >= nb && self.m.len() >= nb,
                Q5_0 => self.nib.len() >= nb && self.qh.len() >= nb,
                _ => self.q8.len() >= nb,
            }
        }

        /// Row `r` of a run of rows of `nb` blocks each (arrays the format lacks stay empty).
        fn nth(&self, r: usize, nb: usize) -> Self {
            fn part<T>(v: &[T], r: usize, nb: usize) -> &[T] {
                if v.is_empty() {
                    v
                } else {
                    &v[r * nb..(r + 1) * nb]
                }
            }
            Row {
                d: part(self.d, r, nb),
                m: part(self.m, r, nb),
                nib: part(self.nib, r, nb),
                qh: part(self.qh, r, nb),
                q8: part(self.q8, r, nb),
            }
        }
    }

    /// `$f::<F>(args)` with `F` the format constant `$format` names (one monomorphised loop
    /// per format).
    macro_rules! by_format {
        ($format:expr, $f:ident($($arg:expr),*)) => {
            match $format {
                Q4_0 => $f::<Q4_0>($($arg),*),
                Q4_1 => $f::<Q4_1>($($arg),*),
                Q5_0 => $f::<Q5_0>($($arg),*),
                _ => $f::<Q8_0>($($arg),*),
            }
        };
    }

    /// Block `b`'s 32 values as bytes (signed, except Q4_1's unsigned nibbles).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn block<const F: u8>(w: &Row<'_>, b: usize) -> __m256i {
        // SAFETY: each load reads one whole block array of 16 or 32 bytes.
        unsafe {
            match F {
                Q4_0 => _mm256_sub_epi8(nibbles(&w.nib[b]), _mm256_set1_epi8(8)),
                Q4_1 => nibbles(&w.nib[b]),
                Q5_0 => {
                    let high = _mm256_and_si256(bits_32(w.qh[b]), _mm256_set1_epi8(0x10));
                    _mm256_sub_epi8(
                        _mm256_or_si256(nibbles(&w.nib[b]), high),
                        _mm256_set1_epi8(16),
                    )
                }
                _ => _mm256_loadu_si256(w.q8[b].as_ptr().cast()),
            }
        }
    }

    /// See [`super::dot_rows`]. Activation rows go in groups of four (their accumulators
    /// stay in registers and each unpacked weight block serves all four), the rest one by one.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_rows(w: WeightRow<'_>, acts: &[ActRow<'_>], out: &mut [f32]) {
        let (format, row) = Row::of(w);
        // SAFETY: AVX2 and FMA are available (this function's requirement).
        unsafe { by_format!(format, dot_format_avx2(&row, acts, out)) }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_format_avx2<const F: u8>(w: &Row<'_>, acts: &[ActRow<'_>], out: &mut [f32]) {
        // SAFETY: AVX2 and FMA are available (this function's own requirement).
        unsafe { dot_format::<F, false>(w, acts, out) }
    }

    /// Activation rows in groups of `8` (VNNI only: the AVX2 lanes need more registers), then
    /// four, then one by one, each group sharing every unpacked weight block.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_format<const F: u8, const VNNI: bool>(
        w: &Row<'_>,
        acts: &[ActRow<'_>],
        out: &mut [f32],
    ) {
        let (mut acts, mut out) = (acts, out);
        if VNNI {
            let mut groups = acts.chunks_exact(8);
            let mut outs = out.chunks_exact_mut(8);
            for (a, o) in (&mut groups).zip(&mut outs) {
                // SAFETY: AVX2, FMA (and VNNI) are available (this function's requirement).
                unsafe { dot_group::<8, F, VNNI>(w, a, o) };
            }
            (acts, out) = (groups.remainder(), outs.into_remainder());
        }
        let mut groups = acts.chunks_exact(4);
        let mut outs = out.chunks_exact_mut(4);
        for (a, o) in (&mut groups).zip(&mut outs) {
            // SAFETY: as above.
            unsafe { dot_group::<4, F, VNNI>(w, a, o) };
        }
        for (a, o) in groups
            .remainder()
            .chunks(1)
            .zip(outs.into_remainder().chunks_mut(1))
        {
            // SAFETY: as above.
            unsafe { dot_group::<1, F, VNNI>(w, a, o) };
        }
    }

    /// `R` activation rows (`acts.len() == out.len() == R`) against one weight row. The AVX2
    /// lanes are `madd(maddubs(|x|, sign(y, x)), 1)`, as ggml's; with `VNNI` one `vpdpbusd` of
    /// the sign-flipped activations (`y + 128`) and the signed weights, started at minus the
    /// weight block's `128 · Σx` (one more `vpdpbusd` per block, shared by the `R` rows), gives
    /// the same integers (Q4_1's weights are unsigned and multiply the activations directly).
    /// The scales, `fmadd`, `hsum8` and Q4_1's minimums are the same in both.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_group<const R: usize, const F: u8, const VNNI: bool>(
        w: &Row<'_>,
        acts: &[ActRow<'_>],
        out: &mut [f32],
    ) {
        let unsigned = F == Q4_1;
        let nb = w.d.len();
        let acts: &[ActRow<'_>; R] = acts.try_into().expect("R activation rows");
        // Every row has the weight row's block count, so the loop below indexes in bounds.
        for a in acts {
            assert!(a.d.len() >= nb && a.qs.len() >= nb && (!unsigned || a.s.len() >= nb));
        }
        // SAFETY: the loads read whole `[i8; QK]` blocks; the store writes an `[f32; 8]`.
        unsafe {
            let ones = _mm256_set1_epi16(1);
            let flip = _mm256_set1_epi8(-128);
            let mut acc = [_mm256_setzero_ps(); R];
            let mut summs = [0f32; R];
            for (b, &dx) in w.d.iter().enumerate() {
                let x = block::<F>(w, b);
                let ax = if unsigned || VNNI {
                    x
                } else {
                    _mm256_sign_epi8(x, x)
                };
                // VNNI: minus 128·Σx per lane (0x80 read as unsigned is 128).
                let start = if unsigned || !VNNI {
                    _mm256_setzero_si256()
                } else {
                    _mm256_sub_epi32(
                        _mm256_setzero_si256(),
                        dpbusd(_mm256_setzero_si256(), flip, x),
                    )
                };
                for r in 0..R {
                    let a = &acts[r];
                    let qy: &[i8; QK] = a.qs.get_unchecked(b);
                    let y = _mm256_loadu_si256(qy.as_ptr().cast());
                    let lanes = match (VNNI, unsigned) {
                        (true, true) => dpbusd(start, x, y),
                        (true, false) => dpbusd(start, _mm256_xor_si256(y, flip), x),
                        (false, true) => _mm256_madd_epi16(_mm256_maddubs_epi16(ax, y), ones),
                        (false, false) => {
                            let sy = _mm256_sign_epi8(y, x);
                            _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sy), ones)
                        }
                    };
                    let dd = _mm256_set1_ps(dx * *a.d.get_unchecked(b));
                    acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lanes), dd, acc[r]);
                    if unsigned {
                        summs[r] += w.m[b] * *a.s.get_unchecked(b);
                    }
                }
            }
            for r in 0..R {
                let mut l = [0f32; 8];
                _mm256_storeu_ps(l.as_mut_ptr(), acc[r]);
                out[r] = hsum8(l) + summs[r];
            }
        }
    }

    /// `acc + Σ a·b` over each four bytes (`a` unsigned, `b` signed) into eight `i32` lanes:
    /// AVX-512 VNNI's `vpdpbusd` on 256-bit registers. Written as inline assembly so
    /// one function body serves the AVX2 and VNNI versions (the intrinsic would need the
    /// AVX-512 target features on every caller, the AVX2 version's included).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dpbusd(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
        let mut acc = acc;
        // SAFETY: register-only instruction; the caller runs only where AVX512-VNNI and
        // AVX512-VL are present (see `Isa::Avx2Vnni`).
        unsafe {
            std::arch::asm!(
                "vpdpbusd {acc}, {a}, {b}",
                acc = inout(ymm_reg) acc,
                a = in(ymm_reg) a,
                b = in(ymm_reg) b,
                options(pure, nomem, nostack, preserves_flags),
            );
        }
        acc
    }

    /// See [`super::dot_rows_one_act`]: each row as [`dot_group`] (or [`dot_one_vnni`])
    /// with one activation row, all in this one call.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_rows_one_act<const VNNI: bool>(
        w: WeightRow<'_>,
        nb: usize,
        act: &ActRow<'_>,
        out: &mut [f32],
    ) {
        let (format, all) = Row::of(w);
        assert!(all.d.len() >= out.len() * nb);
        let acts = std::slice::from_ref(act);
        let corr = if VNNI {
            lane_corrections(format, act, nb)
        } else {
            Vec::new()
        };
        for (r, o) in out.iter_mut().enumerate() {
            let row = all.nth(r, nb);
            let o = std::slice::from_mut(o);
            // SAFETY (all calls): AVX2 and FMA (and VNNI when `VNNI`) are available (this
            // function's own requirement).
            unsafe {
                match (format, VNNI) {
                    (Q4_0, false) => dot_group::<1, Q4_0, false>(&row, acts, o),
                    (Q4_1, false) => dot_group::<1, Q4_1, false>(&row, acts, o),
                    (Q5_0, false) => dot_group::<1, Q5_0, false>(&row, acts, o),
                    (_, false) => dot_group::<1, Q8_0, false>(&row, acts, o),
                    (Q4_0, true) => o[0] = dot_one_vnni::<Q4_0>(&row, act, &corr),
                    (Q4_1, true) => o[0] = dot_one_vnni::<Q4_1>(&row, act, &corr),
                    (Q5_0, true) => o[0] = dot_one_vnni::<Q5_0>(&row, act, &corr),
                    (_, true) => o[0] = dot_one_vnni::<Q8_0>(&row, act, &corr),
                }
            }
        }
    }

    /// Minus `offset ×` the sums of each four activation values, per block: what
    /// [`dot_one_vnni`] starts each block's lanes from, computed once for a whole run of
    /// rows (`offset` 8, 16 or 128 by format; empty for Q4_1, which needs none).
    fn lane_corrections(format: u8, act: &ActRow<'_>, nb: usize) -> Vec<[i32; 8]> {
        let offset = match format {
            Q4_0 => 8,
            Q5_0 => 16,
            Q8_0 => 128,
            _ => return Vec::new(),
        };
        act.qs[..nb]
            .iter()
            .map(|q| {
                std::array::from_fn(|l| {
                    -offset
                        * q[4 * l..4 * l + 4]
                            .iter()
                            .map(|&v| i32::from(v))
                            .sum::<i32>()
                })
            })
            .collect()
    }

    /// Block `b`'s 32 values as unsigned bytes `q + offset`: Q4_0 and Q4_1 their nibbles,
    /// Q5_0 its five-bit values, Q8_0 its bytes with the sign bit flipped (`q + 128`).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn block_unsigned<const F: u8>(w: &Row<'_>, b: usize) -> __m256i {
        // SAFETY: each load reads one whole block array of 16 or 32 bytes.
        unsafe {
            match F {
                Q4_0 | Q4_1 => nibbles(&w.nib[b]),
                Q5_0 => _mm256_or_si256(
                    nibbles(&w.nib[b]),
                    _mm256_and_si256(bits_32(w.qh[b]), _mm256_set1_epi8(0x10)),
                ),
                _ => _mm256_xor_si256(
                    _mm256_loadu_si256(w.q8[b].as_ptr().cast()),
                    _mm256_set1_epi8(-128),
                ),
            }
        }
    }

    /// One weight row against one activation row, [`dot_group`]'s VNNI arithmetic with the
    /// roles swapped: the weights as unsigned bytes `q + offset` ([`block_unsigned`]) times
    /// the signed activations, each block's lanes started at the precomputed
    /// `-offset · Σy` (`corr`), which leaves the same eight lanes with no per-block work on
    /// the activation side.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_one_vnni<const F: u8>(w: &Row<'_>, a: &ActRow<'_>, corr: &[[i32; 8]]) -> f32 {
        let unsigned = F == Q4_1;
        let nb = w.d.len();
        assert!(a.d.len() >= nb && a.qs.len() >= nb);
        assert!(if unsigned {
            a.s.len() >= nb && w.m.len() >= nb
        } else {
            corr.len() >= nb
        });
        // SAFETY: the loads read whole `[i8; QK]` / `[i32; 8]` blocks (indices checked
        // above); the store writes an `[f32; 8]`.
        unsafe {
            let mut acc = _mm256_setzero_ps();
            let mut summs = 0f32;
            for (b, &dx) in w.d.iter().enumerate() {
                let x = block_unsigned::<F>(w, b);
                let start = if unsigned {
                    _mm256_setzero_si256()
                } else {
                    _mm256_loadu_si256(corr.get_unchecked(b).as_ptr().cast())
                };
                let qy: &[i8; QK] = a.qs.get_unchecked(b);
                let lanes = dpbusd(start, x, _mm256_loadu_si256(qy.as_ptr().cast()));
                let dd = _mm256_set1_ps(dx * *a.d.get_unchecked(b));
                acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lanes), dd, acc);
                if unsigned {
                    summs += *w.m.get_unchecked(b) * *a.s.get_unchecked(b);
                }
            }
            let mut l = [0f32; 8];
            _mm256_storeu_ps(l.as_mut_ptr(), acc);
            hsum8(l) + summs
        }
    }

    /// See [`super::dot_rows`]: the VNNI version ([`dot_group`] says how its lanes are the
    /// AVX2 version's integers, so the results are the same bits); groups of eight rows.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_rows_vnni(w: WeightRow<'_>, acts: &[ActRow<'_>], out: &mut [f32]) {
        let (format, row) = Row::of(w);
        // SAFETY: AVX2, FMA and VNNI are available (this function's requirement).
        unsafe { by_format!(format, dot_format_vnni(&row, acts, out)) }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_format_vnni<const F: u8>(w: &Row<'_>, acts: &[ActRow<'_>], out: &mut [f32]) {
        // SAFETY: AVX2, FMA and VNNI are available (this function's own requirement).
        unsafe { dot_format::<F, true>(w, acts, out) }
    }

    /// See [`super::dot_panel`]: [`dot_group`]'s VNNI arithmetic for eight rows, reading the
    /// interleaved panel (the eight scale products in one multiply, the activations already
    /// flipped; Q4_1's minimum terms `m·s` for the eight rows in one multiply and one add,
    /// each rounded as the scalar ones).
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_panel_vnni(w: WeightRow<'_>, panel: &[PanelBlock], out: &mut [f32; 8]) {
        let (format, row) = Row::of(w);
        // SAFETY: AVX2, FMA and VNNI are available (this function's requirement).
        unsafe { by_format!(format, panel_format(&row, panel, out)) }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn panel_format<const F: u8>(w: &Row<'_>, panel: &[PanelBlock], out: &mut [f32; 8]) {
        let unsigned = F == Q4_1;
        let nb = w.d.len();
        assert!(panel.len() == nb && w.has_blocks::<F>(nb));
        // SAFETY: every load reads a whole array of the panel block or the weight row (block
        // indices checked above); the stores write `[f32; 8]`s.
        unsafe {
            let flip = _mm256_set1_epi8(-128);
            let mut acc = [_mm256_setzero_ps(); 8];
            let mut summs = _mm256_setzero_ps();
            for (b, p) in panel.iter().enumerate() {
                let x = block::<F>(w, b);
                // Minus 128·Σx per lane, for the flipped activations.
                let start = if unsigned {
                    _mm256_setzero_si256()
                } else {
                    _mm256_sub_epi32(
                        _mm256_setzero_si256(),
                        dpbusd(_mm256_setzero_si256(), flip, x),
                    )
                };
                let dx = *w.d.get_unchecked(b);
                let dd = _mm256_mul_ps(_mm256_set1_ps(dx), _mm256_loadu_ps(p.d.as_ptr()));
                if unsigned {
                    let m = _mm256_set1_ps(*w.m.get_unchecked(b));
                    summs = _mm256_add_ps(summs, _mm256_mul_ps(m, _mm256_loadu_ps(p.s.as_ptr())));
                }
                for (r, (acc, qy)) in acc.iter_mut().zip(&p.qs).enumerate() {
                    let y = _mm256_loadu_si256(qy.as_ptr().cast());
                    let lanes = if unsigned {
                        dpbusd(start, x, y)
                    } else {
                        dpbusd(start, y, x)
                    };
                    // Row r's scale product in every lane (a permute, not a store and
                    // reload: a narrow load from a wide store is not forwarded).
                    #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
                    let dd_r = _mm256_permutevar8x32_ps(dd, _mm256_set1_epi32(r as i32));
                    *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lanes), dd_r, *acc);
                }
            }
            let mut m = [0f32; 8];
            _mm256_storeu_ps(m.as_mut_ptr(), summs);
            for r in 0..8 {
                let mut l = [0f32; 8];
                _mm256_storeu_ps(l.as_mut_ptr(), acc[r]);
                out[r] = hsum8(l) + m[r];
            }
        }
    }
    /// See [`super::dot_panel`] and [`super::dot_panel_pair`]: [`panel_format`]'s arithmetic
    /// on 512-bit registers for `W` weight rows, two activation rows to a register. The
    /// weight block is broadcast to both halves, so each half's `vpdpbusd` leaves the same
    /// eight lanes as the 256-bit version for its row, and each half's scale product (one
    /// permute of the eight) and `fmadd` are that row's, in the same order: the same bits,
    /// with half the instructions per row. Two weight rows give eight independent `fmadd`
    /// chains instead of four, which is what the loop's speed waits on otherwise.
    #[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub unsafe fn dot_panel_avx512<const W: usize>(
        w: [WeightRow<'_>; W],
        panel: &[PanelBlock],
        out: [&mut [f32; 8]; W],
    ) {
        let rows = w.map(Row::of);
        let format = rows[0].0;
        assert!(rows.iter().all(|r| r.0 == format));
        let rows = rows.map(|r| r.1);
        // SAFETY: AVX2, FMA and AVX-512 F/BW/VL/VNNI are available (this function's
        // requirement).
        unsafe {
            match format {
                Q4_0 => panel_format_512::<Q4_0, W>(&rows, panel, out),
                Q4_1 => panel_format_512::<Q4_1, W>(&rows, panel, out),
                Q5_0 => panel_format_512::<Q5_0, W>(&rows, panel, out),
                _ => panel_format_512::<Q8_0, W>(&rows, panel, out),
            }
        }
    }

    /// [`block`]'s 32 values in both halves of a 512-bit register, unpacked there: the 16
    /// nibble bytes broadcast to all four 128-bit lanes, the odd lanes shifted right by four
    /// (the high nibbles), and Q5_0's fifth bits applied from a mask register (each byte
    /// without its bit loses 16), instead of [`block`]'s byte shuffles and a broadcast.
    #[inline]
    #[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn block_pair<const F: u8>(w: &Row<'_>, b: usize) -> __m512i {
        // SAFETY: each load reads one whole block array of 16 or 32 bytes.
        unsafe {
            if F == Q8_0 {
                return _mm512_broadcast_i64x4(_mm256_loadu_si256(w.q8[b].as_ptr().cast()));
            }
            let bytes = _mm512_broadcast_i32x4(_mm_loadu_si128(w.nib[b].as_ptr().cast()));
            let shifts = _mm512_set_epi64(
                0x0004_0004_0004_0004,
                0x0004_0004_0004_0004,
                0,
                0,
                0x0004_0004_0004_0004,
                0x0004_0004_0004_0004,
                0,
                0,
            );
            let nib = _mm512_and_si512(_mm512_srlv_epi16(bytes, shifts), _mm512_set1_epi8(0x0f));
            match F {
                Q4_0 => _mm512_sub_epi8(nib, _mm512_set1_epi8(8)),
                Q4_1 => nib,
                _ => {
                    // Q5_0: `(q | bit << 4) - 16` is `q` where the bit is set, `q - 16` elsewhere.
                    let bits = u64::from(w.qh[b]);
                    let without = _cvtu64_mask64(!(bits | (bits << 32)));
                    _mm512_mask_sub_epi8(nib, without, nib, _mm512_set1_epi8(16))
                }
            }
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn panel_format_512<const F: u8, const W: usize>(
        ws: &[Row<'_>; W],
        panel: &[PanelBlock],
        out: [&mut [f32; 8]; W],
    ) {
        let unsigned = F == Q4_1;
        let nb = panel.len();
        for w in ws {
            assert!(w.d.len() == nb && w.has_blocks::<F>(nb));
        }
        // SAFETY: every load reads whole arrays of the panel block (a pair of rows is 64
        // contiguous bytes of `qs`) or of the weight rows (block indices checked above); the
        // stores write `[f32; 8]` and `[f32; 16]`s.
        unsafe {
            let zero = _mm512_setzero_si512();
            let flip = _mm512_set1_epi8(-128);
            // Pair `k` takes row 2k's scale product into lanes 0..8, row 2k+1's into 8..16.
            #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
            let pick: [__m512i; 4] = std::array::from_fn(|k| {
                _mm512_inserti64x4::<1>(
                    _mm512_castsi256_si512(_mm256_set1_epi32(2 * k as i32)),
                    _mm256_set1_epi32(2 * k as i32 + 1),
                )
            });
            let mut acc = [[_mm512_setzero_ps(); 4]; W];
            let mut summs = [_mm256_setzero_ps(); W];
            for (b, p) in panel.iter().enumerate() {
                let pairs = p.qs.as_ptr().cast::<u8>();
                let d_act = _mm256_loadu_ps(p.d.as_ptr());
                for (i, w) in ws.iter().enumerate() {
                    let x = block_pair::<F>(w, b);
                    // Minus 128·Σx per lane, for the flipped activations.
                    let start = if unsigned {
                        zero
                    } else {
                        _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, flip, x))
                    };
                    let dx = *w.d.get_unchecked(b);
                    let dd = _mm512_castps256_ps512(_mm256_mul_ps(_mm256_set1_ps(dx), d_act));
                    if unsigned {
                        let m = _mm256_set1_ps(*w.m.get_unchecked(b));
                        summs[i] = _mm256_add_ps(
                            summs[i],
                            _mm256_mul_ps(m, _mm256_loadu_ps(p.s.as_ptr())),
                        );
                    }
                    for (k, acc) in acc[i].iter_mut().enumerate() {
                        let y = _mm512_loadu_si512(pairs.add(64 * k).cast());
                        let lanes = if unsigned {
                            _mm512_dpbusd_epi32(start, x, y)
                        } else {
                            _mm512_dpbusd_epi32(start, y, x)
                        };
                        let dd_k = _mm512_permutexvar_ps(pick[k], dd);
                        *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(lanes), dd_k, *acc);
                    }
                }
            }
            for ((acc, summs), out) in acc.iter().zip(&summs).zip(out) {
                let mut m = [0f32; 8];
                _mm256_storeu_ps(m.as_mut_ptr(), *summs);
                for (k, acc) in acc.iter().enumerate() {
                    let mut l = [0f32; 16];
                    _mm512_storeu_ps(l.as_mut_ptr(), *acc);
                    let (lo, hi) = l.split_at(8);
                    out[2 * k] = hsum8(lo.try_into().expect("8 lanes")) + m[2 * k];
                    out[2 * k + 1] = hsum8(hi.try_into().expect("8 lanes")) + m[2 * k + 1];
                }
            }
        }
    }
}

/// ggml's `hsum_float_8`: `((l0+l4) + (l2+l6)) + ((l1+l5) + (l3+l7))`.
#[inline(always)]
pub(crate) fn hsum8(l: [f32; 8]) -> f32 {
    let r = [l[4] + l[0], l[5] + l[1], l[6] + l[2], l[7] + l[3]];
    (r[0] + r[2]) + (r[1] + r[3])
}

#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

/// Eight lanes of four products each: lane `l` sums elements `4l..4l+4`.
#[inline(always)]
fn lanes(x: &[i8; QK], y: &[i8; QK]) -> [i32; 8] {
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

/// ggml's nibble layout unpacked: low nibbles are elements 0..16, high nibbles 16..32.
#[inline(always)]
fn unpack_nibbles(q: &[u8; 16], offset: i8) -> [i8; QK] {
    let mut v = [0i8; QK];
    for j in 0..16 {
        // Nibbles are 0..=15, so the casts are exact.
        #[allow(clippy::cast_possible_wrap)]
        {
            v[j] = (q[j] & 0x0f) as i8 - offset;
            v[j + 16] = (q[j] >> 4) as i8 - offset;
        }
    }
    v
}

/// Q5_0: element `e` is its nibble plus bit `e` of `qh` as the fifth bit, minus 16.
#[inline(always)]
fn unpack_q5(q: &[u8; 16], qh: u32) -> [i8; QK] {
    let mut v = [0i8; QK];
    for j in 0..16 {
        let lo = u8::from((qh >> j) & 1 != 0) << 4;
        let hi = u8::from((qh >> (j + 16)) & 1 != 0) << 4;
        // Five-bit values are 0..=31, so the casts are exact.
        #[allow(clippy::cast_possible_wrap)]
        {
            v[j] = ((q[j] & 0x0f) | lo) as i8 - 16;
            v[j + 16] = ((q[j] >> 4) | hi) as i8 - 16;
        }
    }
    v
}

/// The weight row's block `b` as 32 signed values.
#[inline(always)]
fn block_values(w: &WeightRow<'_>, b: usize) -> [i8; QK] {
    match w {
        WeightRow::Q4_0 { qs, .. } => unpack_nibbles(&qs[b], 8),
        WeightRow::Q4_1 { qs, .. } => unpack_nibbles(&qs[b], 0),
        WeightRow::Q5_0 { qs, qh, .. } => unpack_q5(&qs[b], qh[b]),
        WeightRow::Q8_0 { qs, .. } => qs[b],
    }
}

/// Up to this many activation rows share one unpacking of a weight block.
const ROW_GROUP: usize = 8;

#[inline(always)]
fn dot_rows_body<const FMA: bool>(w: WeightRow<'_>, acts: &[ActRow<'_>], out: &mut [f32]) {
    let (d, mins) = match w {
        WeightRow::Q4_0 { d, .. } | WeightRow::Q5_0 { d, .. } | WeightRow::Q8_0 { d, .. } => {
            (d, None)
        }
        WeightRow::Q4_1 { d, m, .. } => (d, Some(m)),
    };
    for (acts, out) in acts.chunks(ROW_GROUP).zip(out.chunks_mut(ROW_GROUP)) {
        let mut acc = [[0f32; 8]; ROW_GROUP];
        let mut summs = [0f32; ROW_GROUP];
        for (b, &dx) in d.iter().enumerate() {
            let x = block_values(&w, b);
            for (r, a) in acts.iter().enumerate() {
                let dd = dx * a.d[b];
                let l = lanes(&x, &a.qs[b]);
                for (acc, &li) in acc[r].iter_mut().zip(&l) {
                    // |li| ≤ 4·127·127, exact in f32.
                    #[allow(clippy::cast_precision_loss)]
                    let v = li as f32;
                    *acc = madd::<FMA>(v, dd, *acc);
                }
                if let Some(m) = mins {
                    summs[r] += m[b] * a.s[b];
                }
            }
        }
        for (r, o) in out.iter_mut().enumerate() {
            *o = hsum8(acc[r]) + summs[r];
        }
    }
}

/// Scalar reference: dequantized weights times dequantized activations, summed in `f64`.
/// Used by the tests to check every compiled version.
#[cfg(test)]
pub fn reference_dot(w: WeightRow<'_>, a: ActRow<'_>) -> f64 {
    let d = match w {
        WeightRow::Q4_0 { d, .. }
        | WeightRow::Q4_1 { d, .. }
        | WeightRow::Q5_0 { d, .. }
        | WeightRow::Q8_0 { d, .. } => d,
    };
    let mut sum = 0f64;
    for b in 0..d.len() {
        let x = block_values(&w, b);
        for (e, &xv) in x.iter().enumerate() {
            let wv = match w {
                WeightRow::Q4_1 { d, m, .. } => f64::from(d[b]) * f64::from(xv) + f64::from(m[b]),
                _ => f64::from(d[b]) * f64::from(xv),
            };
            sum += wv * f64::from(a.d[b]) * f64::from(a.qs[b][e]);
        }
        // Q4_1 uses the activation's block sum `s = d·Σq` (rounded to f16) for the minimum
        // term; the exact sum above differs from it only by that rounding.
        if let WeightRow::Q4_1 { m, .. } = w {
            let exact: f64 = a.qs[b].iter().map(|&q| f64::from(q)).sum::<f64>() * f64::from(a.d[b]);
            sum += f64::from(m[b]) * (f64::from(a.s[b]) - exact);
        }
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Rng;

    struct Data {
        d: Vec<f32>,
        m: Vec<f32>,
        qh: Vec<u32>,
        nib: Vec<[u8; 16]>,
        q8: Vec<[i8; QK]>,
    }

    fn data(rng: &mut Rng, blocks: usize) -> Data {
        Data {
            d: (0..blocks).map(|_| rng.unit() * 0.1).collect(),
            m: (0..blocks).map(|_| rng.unit() * 0.5).collect(),
            #[allow(clippy::cast_possible_truncation)]
            qh: (0..blocks).map(|_| rng.next_u64() as u32).collect(),
            nib: (0..blocks)
                .map(|_| std::array::from_fn(|_| rng.byte()))
                .collect(),
            q8: (0..blocks)
                .map(|_| {
                    std::array::from_fn(|_| {
                        #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
                        let v = (rng.next_u64() % 255) as i16 - 127;
                        #[allow(clippy::cast_possible_truncation)]
                        let v = v as i8;
                        v
                    })
                })
                .collect(),
        }
    }

    /// One weight row in each format, from the same random data.
    fn formats(w: &Data) -> [WeightRow<'_>; 4] {
        [
            WeightRow::Q4_0 {
                d: &w.d,
                qs: &w.nib,
            },
            WeightRow::Q4_1 {
                d: &w.d,
                m: &w.m,
                qs: &w.nib,
            },
            WeightRow::Q5_0 {
                d: &w.d,
                qh: &w.qh,
                qs: &w.nib,
            },
            WeightRow::Q8_0 { d: &w.d, qs: &w.q8 },
        ]
    }

    impl Data {
        /// This data as an activation row (`m` standing in for Q8_1's block sums).
        fn act(&self) -> ActRow<'_> {
            ActRow {
                d: &self.d,
                s: &self.m,
                qs: &self.q8,
            }
        }
    }

    /// Every version this CPU runs (all of them, whatever `HEARTH_KERNELS` says).
    fn isas() -> Vec<Isa> {
        Isa::supported()
    }

    /// Every format, every compiled version, odd block counts and odd row counts, against
    /// the f64 reference.
    #[test]
    fn kernels_match_scalar_reference() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for blocks in [1usize, 2, 3, 5, 7, 18, 33] {
            for n_acts in [1usize, 3, 8, 9, 17] {
                let w = data(&mut rng, blocks);
                let acts: Vec<Data> = (0..n_acts).map(|_| data(&mut rng, blocks)).collect();
                let rows: Vec<ActRow<'_>> = acts.iter().map(Data::act).collect();
                let formats = formats(&w);
                for (f, wr) in formats.into_iter().enumerate() {
                    for isa in isas() {
                        let mut out = vec![f32::NAN; n_acts];
                        dot_rows(isa, wr, &rows, &mut out);
                        for (i, (&got, a)) in out.iter().zip(&rows).enumerate() {
                            let want = reference_dot(wr, *a);
                            let tol = 1e-4 * (blocks as f64) + 1e-5 * want.abs();
                            assert!(
                                (f64::from(got) - want).abs() <= tol,
                                "format {f} {isa:?} blocks {blocks} row {i}: {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// Every SIMD version this CPU runs (AVX2, NEON, NEON + `sdot`) gives bit for bit what
    /// the portable body gives with fused multiply-adds: the same lanes, the same conversions,
    /// the same accumulation order (odd block counts; 11 rows: groups of four and a rest).
    #[test]
    fn intrinsics_equal_the_fused_portable_body() {
        let mut rng = Rng(0x1234_5678);
        for blocks in [1usize, 7, 18] {
            let w = data(&mut rng, blocks);
            let acts: Vec<Data> = (0..11).map(|_| data(&mut rng, blocks)).collect();
            let rows: Vec<ActRow<'_>> = acts.iter().map(Data::act).collect();
            for wr in formats(&w) {
                let mut want = vec![0f32; rows.len()];
                dot_rows_body::<true>(wr, &rows, &mut want);
                for isa in isas().into_iter().skip(1) {
                    let mut got = vec![0f32; rows.len()];
                    dot_rows(isa, wr, &rows, &mut got);
                    assert_eq!(
                        got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        "{isa:?} blocks {blocks}"
                    );
                }
            }
        }
    }

    /// A run of rows against one activation row gives, on every version, bit for bit what
    /// `dot_rows` gives row by row.
    #[test]
    fn runs_of_rows_equal_row_by_row() {
        let mut rng = Rng(0x0dd_5eed);
        let (rows, nb) = (13usize, 5usize);
        let w = data(&mut rng, rows * nb);
        let a = data(&mut rng, nb);
        let act = a.act();
        for wr in formats(&w) {
            for isa in isas() {
                let mut got = vec![f32::NAN; rows];
                dot_rows_one_act(isa, wr, nb, act, &mut got);
                for (r, &g) in got.iter().enumerate() {
                    let mut want = [0f32];
                    dot_rows(isa, wr.rows(r * nb..(r + 1) * nb), &[act], &mut want);
                    assert_eq!(g.to_bits(), want[0].to_bits(), "{isa:?} row {r}");
                }
            }
        }
    }

    /// Panels of eight rows give, on every version that has them, bit for bit what the
    /// fused portable body gives for those rows (each format, Q8_0 and Q8_1 panels, odd block
    /// counts); a panel of the wrong format is refused.
    /// [`dot_panel_pair`] gives each row's [`dot_panel`] bits (two rows of each format);
    /// rows of two formats are refused.
    #[test]
    fn panel_pairs_equal_the_fused_portable_body() {
        let mut rng = Rng(0x009a_1e0f_00d5);
        for blocks in [1usize, 7, 20] {
            let w = [data(&mut rng, blocks), data(&mut rng, blocks)];
            let acts: Vec<Data> = (0..PANEL_ROWS).map(|_| data(&mut rng, blocks)).collect();
            let rows: Vec<ActRow<'_>> = acts.iter().map(Data::act).collect();
            let rows: &[ActRow<'_>; PANEL_ROWS] = rows.as_slice().try_into().unwrap();
            let panels = [ActPanel::new(rows, false), ActPanel::new(rows, true)];
            let (first, second) = (formats(&w[0]), formats(&w[1]));
            for (i, (&w0, &w1)) in first.iter().zip(&second).enumerate() {
                let mut want = [[0f32; PANEL_ROWS]; 2];
                dot_rows_body::<true>(w0, rows, &mut want[0]);
                dot_rows_body::<true>(w1, rows, &mut want[1]);
                let panel = &panels[usize::from(matches!(w0, WeightRow::Q4_1 { .. }))];
                for isa in isas() {
                    let mut got = [[f32::NAN; PANEL_ROWS]; 2];
                    let [g0, g1] = &mut got;
                    if !dot_panel_pair(isa, [w0, w1], panel, [g0, g1]) {
                        assert!(!panels_supported(isa), "{isa:?} refused a pair");
                        continue;
                    }
                    assert_eq!(
                        got.map(|g| g.map(f32::to_bits)),
                        want.map(|g| g.map(f32::to_bits)),
                        "{isa:?} blocks {blocks} format {i}"
                    );
                    // Q4_0 with Q5_0 (both read Q8_0 panels) is still two formats.
                    if i == 0 {
                        let [g0, g1] = &mut got;
                        assert!(!dot_panel_pair(isa, [w0, second[2]], panel, [g0, g1]));
                    }
                }
            }
        }
    }

    #[test]
    fn panels_equal_the_fused_portable_body() {
        let mut rng = Rng(0x5eed_0f9a_7e00);
        for blocks in [1usize, 7, 20] {
            let w = data(&mut rng, blocks);
            let acts: Vec<Data> = (0..PANEL_ROWS).map(|_| data(&mut rng, blocks)).collect();
            let rows: Vec<ActRow<'_>> = acts.iter().map(Data::act).collect();
            let rows: &[ActRow<'_>; PANEL_ROWS] = rows.as_slice().try_into().unwrap();
            let panels = [ActPanel::new(rows, false), ActPanel::new(rows, true)];
            for wr in formats(&w) {
                let mut want = [0f32; PANEL_ROWS];
                dot_rows_body::<true>(wr, rows, &mut want);
                let q8_1 = matches!(wr, WeightRow::Q4_1 { .. });
                for isa in isas() {
                    let mut got = [f32::NAN; PANEL_ROWS];
                    let right = &panels[usize::from(q8_1)];
                    let wrong = &panels[usize::from(!q8_1)];
                    assert!(!dot_panel(isa, wr, wrong, &mut got));
                    if !dot_panel(isa, wr, right, &mut got) {
                        assert!(!panels_supported(isa), "{isa:?} refused a panel");
                        continue;
                    }
                    assert_eq!(
                        got.map(f32::to_bits),
                        want.map(f32::to_bits),
                        "{isa:?} blocks {blocks} q8_1 {q8_1}"
                    );
                }
            }
        }
    }

    /// Q8_0 weights and activations at the ends of the i8 range (-128 included, outside what
    /// the quantizers write): the VNNI version gives the exact product, as the portable body
    /// does, -128·-128 included (where the AVX2 version's `sign` trick, like ggml's, wraps).
    #[test]
    fn q8_0_extremes_are_exact() {
        let blocks = 3;
        let d = vec![0.5f32; blocks];
        for (wv, av) in [
            (-128i8, 127i8),
            (-128, -127),
            (127, 127),
            (127, -128),
            (-128, -128),
        ] {
            let w_q = vec![[wv; QK]; blocks];
            let a_q = vec![[av; QK]; blocks];
            let w = WeightRow::Q8_0 { d: &d, qs: &w_q };
            #[allow(clippy::cast_precision_loss)]
            let exact = f32::from(wv) * f32::from(av) * (QK * blocks) as f32 * 0.25;
            let acts = [ActRow {
                d: &d,
                s: &[],
                qs: &a_q,
            }];
            for isa in isas() {
                #[cfg(target_arch = "x86_64")]
                if wv == -128 && av == -128 && isa == Isa::Avx2Fma {
                    continue;
                }
                let mut got = [0f32];
                dot_rows(isa, w, &acts, &mut got);
                assert_eq!(got[0], exact, "{isa:?} {wv}·{av}");
            }
        }
    }

    /// The portable and the AVX2 version agree closely (they differ only by fused rounding).
    #[test]
    fn compiled_versions_agree() {
        let mut rng = Rng(42);
        let w = data(&mut rng, 24);
        let a = data(&mut rng, 24);
        let row = [a.act()];
        let wr = formats(&w)[1];
        let mut results = Vec::new();
        for isa in isas() {
            let mut out = [0f32];
            dot_rows(isa, wr, &row, &mut out);
            results.push(out[0]);
        }
        for r in &results {
            assert!((r - results[0]).abs() <= 1e-4 * results[0].abs().max(1.0));
        }
    }
}
