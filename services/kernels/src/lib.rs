//! Hearth's quantized dot-product kernels: the weight block formats llama.cpp writes (Q4_0,
//! Q4_1, Q5_0, Q8_0 in [`block`]; Q4_K, Q5_K, Q6_K in [`kquants`]) multiplied with 8-bit
//! activation blocks, with the arithmetic of ggml's CPU kernels so the engine's outputs match
//! llama.cpp's.
//!
//! Owns: each kernel's portable body (the reference and the fallback), its SIMD versions
//! (AVX2+FMA, AVX-512 VNNI's 256-bit `vpdpbusd` for the block kernels, and 512-bit registers
//! for their prefill panels, on x86-64; NEON and
//! NEON + `sdot` on aarch64, in `block/neon.rs` and `kquants/neon.rs`), the activation layout
//! the VNNI prefill kernels read ([`block::ActPanel`]), and the runtime choice between them
//! ([`Isa`]). Every SIMD version is
//! tested bit for bit against the portable body with fused multiply-adds (so x86-64 and
//! aarch64 give the same bits), and every kernel against a scalar reference on random data
//! with odd sizes; `services/kernels/test-aarch64` runs the tests under qemu-user on CPUs
//! without and with `sdot`.
//!
//! Must never: read files, allocate per call in the hot loops, spawn threads, or depend on the
//! model code (the engine owns layouts of whole matrices, threading and model structure). It
//! has no dependencies, so it builds and its tests run quickly for every target, including
//! aarch64 under qemu-user. Only [`block`] and [`kquants`] allow `unsafe`, for the
//! `#[target_feature]` calls and the intrinsics.

pub mod block;
pub mod kquants;
pub mod testing;

/// Which compiled version of the kernels runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// Plain Rust for the target's baseline (SSE2 on x86-64), no fused multiply-add.
    Portable,
    /// AVX2 + FMA (x86-64), detected at run time.
    #[cfg(target_arch = "x86_64")]
    Avx2Fma,
    /// AVX2 + FMA, and AVX-512 VNNI with AVX-512VL for the 256-bit `vpdpbusd` (Ice Lake and
    /// later, Zen 4 and later), detected at run time: the 32-element block kernels multiply
    /// unsigned weight bytes with the activations in one instruction ([`block`]); the
    /// K-quants run their AVX2 version.
    #[cfg(target_arch = "x86_64")]
    Avx2Vnni,
    /// `Avx2Vnni`, and AVX-512 F/BW/VL/VNNI on 512-bit registers for the prefill panels
    /// (two activation rows to a register, [`block::dot_panel`]), detected at run time.
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// NEON (aarch64), with fused multiply-adds; the integer products widen with `smull`.
    #[cfg(target_arch = "aarch64")]
    Neon,
    /// NEON with the dot-product extension (`sdot`), detected at run time.
    #[cfg(target_arch = "aarch64")]
    NeonDot,
}

impl Isa {
    /// The best version this CPU runs; `HEARTH_KERNELS=portable` forces the fallback,
    /// `HEARTH_KERNELS=avx2` the AVX2 version without VNNI and `HEARTH_KERNELS=avx2vnni` the
    /// one without 512-bit registers (for comparisons).
    pub fn detect() -> Self {
        let forced = std::env::var("HEARTH_KERNELS").unwrap_or_default();
        if forced == "portable" {
            return Isa::Portable;
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            if forced == "avx2" || !vnni() {
                return Isa::Avx2Fma;
            }
            if forced == "avx2vnni" || !avx512() {
                return Isa::Avx2Vnni;
            }
            return Isa::Avx512;
        }
        #[cfg(target_arch = "aarch64")]
        if std::arch::is_aarch64_feature_detected!("neon") {
            if std::arch::is_aarch64_feature_detected!("dotprod") {
                return Isa::NeonDot;
            }
            return Isa::Neon;
        }
        Isa::Portable
    }

    /// Every version this CPU runs, the portable one first (for tests and benchmarks; ignores
    /// `HEARTH_KERNELS`).
    pub fn supported() -> Vec<Isa> {
        #[allow(unused_mut)]
        let mut v = vec![Isa::Portable];
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            v.push(Isa::Avx2Fma);
            if vnni() {
                v.push(Isa::Avx2Vnni);
                if avx512() {
                    v.push(Isa::Avx512);
                }
            }
        }
        #[cfg(target_arch = "aarch64")]
        if std::arch::is_aarch64_feature_detected!("neon") {
            v.push(Isa::Neon);
            if std::arch::is_aarch64_feature_detected!("dotprod") {
                v.push(Isa::NeonDot);
            }
        }
        v
    }
}

/// Whether this CPU has the 256-bit `vpdpbusd` of AVX-512 VNNI (with AVX-512VL).
#[cfg(target_arch = "x86_64")]
fn vnni() -> bool {
    std::arch::is_x86_feature_detected!("avx512vnni")
        && std::arch::is_x86_feature_detected!("avx512vl")
}

/// Whether this CPU has the rest of what [`Isa::Avx512`] uses: AVX-512 F and BW.
#[cfg(target_arch = "x86_64")]
fn avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
}

/// Rounds to nearest, ties to even, for `|v| ≤ 2^22` (and NaN to NaN) the way ggml's
/// `nearest_int` does: adding and subtracting 1.5·2^23 leaves the integer part. Inline, where
/// `f32::round_ties_even` is a call to libm's `rintf` on baseline x86-64.
#[inline(always)]
pub fn round_small(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (v + MAGIC) - MAGIC
}

/// f16 bits to f32.
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h & 0x8000) << 16;
    let exp = u32::from((h >> 10) & 0x1f);
    let man = u32::from(h & 0x3ff);
    match exp {
        0 => {
            // Zero or subnormal: man * 2^-24.
            #[allow(clippy::cast_precision_loss)]
            let v = man as f32 * (1.0 / 16_777_216.0);
            if sign == 0 { v } else { -v }
        }
        31 => f32::from_bits(sign | 0x7f80_0000 | (man << 13)),
        _ => f32::from_bits(sign | ((exp + 112) << 23) | (man << 13)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_decoding() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 5.960_464_5e-8);
        assert_eq!(f16_to_f32(0x7c00), f32::INFINITY);
        assert!(f16_to_f32(0x7e00).is_nan());
    }

    /// `HEARTH_KERNELS_EXPECT` (set by `services/kernels/test-aarch64` for each emulated CPU)
    /// names the version this CPU must select, so a run cannot silently test only the
    /// portable body.
    #[test]
    fn detected_isa_is_the_expected_one() {
        let supported = Isa::supported();
        let best = Isa::detect();
        println!("kernels: detect() = {best:?}, supported = {supported:?}");
        assert_eq!(supported[0], Isa::Portable);
        if std::env::var("HEARTH_KERNELS").is_err() {
            assert_eq!(supported.last(), Some(&best));
        }
        if let Ok(want) = std::env::var("HEARTH_KERNELS_EXPECT") {
            assert_eq!(format!("{best:?}"), want);
        }
    }
}
