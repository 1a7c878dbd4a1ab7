//! Block dot products for the 32-element formats, with runtime CPU-feature dispatch.
//!
//! Each kernel is written once as portable Rust in the shape of ggml's x86 `ggml_vec_dot_*`
//! kernels: per block, the 32 integer products are summed four at a time into eight `i32`
//! lanes (what `maddubs` + `madd` or `vpdpbusd` leave), each lane is converted to `f32` and
//! multiply-added with the product of the two block scales into eight `f32` accumulators, and
//! the accumulators are reduced as ggml's `hsum_float_8` does. The same body is compiled twice:
//! plainly (the portable fallback, `a * b + c`) and inside a `#[target_feature(enable =
//! "avx2,fma")]` function (LLVM vectorises it to AVX2 and the multiply-add is a real fused
//! `vfmadd`, as in ggml). [`Isa::detect`] picks one at run time.
//!
//! This is the only module that allows `unsafe`: calling a `#[target_feature]` function is
//! unsafe on Rust 1.85, and each such call is guarded by the runtime detection stored in
//! [`Isa`], which can only be constructed as `Avx2Fma` when the CPU reports both features.
#![allow(unsafe_code)]

/// Elements per block.
pub const QK: usize = 32;

/// Which compiled version of the kernels runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// Plain Rust for the target's baseline (SSE2 on x86-64), no fused multiply-add.
    Portable,
    /// AVX2 + FMA (x86-64), detected at run time.
    #[cfg(target_arch = "x86_64")]
    Avx2Fma,
}

impl Isa {
    /// The best version this CPU runs; `HEARTH_KERNELS=portable` forces the fallback.
    pub fn detect() -> Self {
        if std::env::var("HEARTH_KERNELS").is_ok_and(|v| v == "portable") {
            return Isa::Portable;
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Isa::Avx2Fma;
        }
        Isa::Portable
    }
}

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
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_rows_avx2(w: WeightRow<'_>, acts: &[ActRow<'_>], out: &mut [f32]) {
    dot_rows_body::<true>(w, acts, out);
}

/// ggml's `hsum_float_8`: `((l0+l4) + (l2+l6)) + ((l1+l5) + (l3+l7))`.
#[inline(always)]
fn hsum8(l: [f32; 8]) -> f32 {
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

    /// A small deterministic generator (xorshift), so failures reproduce.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn byte(&mut self) -> u8 {
            self.next().to_le_bytes()[0]
        }
        #[allow(clippy::cast_precision_loss)]
        fn unit(&mut self) -> f32 {
            (self.next() % 2001) as f32 / 1000.0 - 1.0
        }
    }

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
            qh: (0..blocks).map(|_| rng.next() as u32).collect(),
            nib: (0..blocks)
                .map(|_| std::array::from_fn(|_| rng.byte()))
                .collect(),
            q8: (0..blocks)
                .map(|_| {
                    std::array::from_fn(|_| {
                        #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
                        let v = (rng.next() % 255) as i16 - 127;
                        #[allow(clippy::cast_possible_truncation)]
                        let v = v as i8;
                        v
                    })
                })
                .collect(),
        }
    }

    fn isas() -> Vec<Isa> {
        let mut v = vec![Isa::Portable];
        let best = Isa::detect();
        if best != Isa::Portable {
            v.push(best);
        }
        v
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
                let rows: Vec<ActRow<'_>> = acts
                    .iter()
                    .map(|a| ActRow {
                        d: &a.d,
                        s: &a.m,
                        qs: &a.q8,
                    })
                    .collect();
                let formats = [
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
                ];
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

    /// The portable and the AVX2 version agree closely (they differ only by fused rounding).
    #[test]
    fn compiled_versions_agree() {
        let mut rng = Rng(42);
        let w = data(&mut rng, 24);
        let a = data(&mut rng, 24);
        let row = [ActRow {
            d: &a.d,
            s: &a.m,
            qs: &a.q8,
        }];
        let wr = WeightRow::Q4_1 {
            d: &w.d,
            m: &w.m,
            qs: &w.nib,
        };
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
