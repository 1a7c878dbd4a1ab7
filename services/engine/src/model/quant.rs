//! Matrix products over quantized weights, matching ggml's CPU arithmetic.
//!
//! For the 32-element block formats (Q4_0, Q4_1, Q5_0, Q8_0) the engine has its own kernels:
//! activations are quantized as ggml's x86 `quantize_row_q8_0`/`q8_1` do (scale `amax/127`
//! rounded to f16, values rounded to nearest-even, and for Q8_1 the block sum `f16(d * Σq)`),
//! then the block dot products of [`super::kernels`] (AVX2+FMA when the CPU has it, detected
//! at run time) multiply them with the weights. candle's own Q8_1 quantization
//! rounds the block sum through f16 twice (ggml rounds `d * Σq` once), and its Q4_1 and
//! Q5_0 kernels are scalar, so these formats do not go through candle. The K-quants (Q4_K,
//! Q5_K, Q6_K) multiply ggml's Q8_K activations (256-element blocks, f32 scale, i16 sums of
//! 16) with `hearth_kernels::kquants`, also Hearth's own.
//!
//! Work is split in chunks of weight rows between the calling thread and `threads - 1`
//! workers of the engine's own [`Pool`] (sized by `EngineConfig::threads`; workers spin
//! briefly between products, then park), all taking chunks off one counter; one call can run
//! several matrices that share an input (q/k/v, gate/up), quantizing that input once. Only formats without engine kernels (float matrices, Q2_K,
//! Q3_K...) still go through candle's `QMatMul` and its own threads.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};

use hearth_kernels::block::{
    ActPanel, ActRow, PANEL_ROWS, QK, WeightRow, dot_panel, dot_panel_pair, dot_rows,
    dot_rows_one_act, panels_supported,
};
use hearth_kernels::kquants::{
    BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K, KPANEL_ROWS, KPanel, KRow, KSum, QK_K, TILED_MIN_ROWS,
    dot_kpanel, dot_kpanel_as, dot_rows_k, dot_rows_k_as, kpanels_supported,
};
use hearth_kernels::{Isa, f16_to_f32, round_small};

use super::ops::round_to_f16;
use super::pool::Pool;
use crate::Result;
use crate::gguf::TensorReader;

/// The kernels this CPU runs, detected once.
fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(Isa::detect)
}

/// Which 8-bit activation blocks a weight format multiplies with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ActFormat {
    /// `d`, 32 × i8.
    Q8_0,
    /// `d`, `s = d·Σq`, 32 × i8.
    Q8_1,
}

/// Rows of activations quantized to 8-bit blocks of 32.
struct QActs {
    blocks_per_row: usize,
    /// Scale of each block, already rounded through f16.
    d: Vec<f32>,
    /// `f16(d · Σq)` per block (Q8_1 only).
    s: Vec<f32>,
    qs: Vec<[i8; QK]>,
}

impl QActs {
    /// As ggml's x86 `quantize_row_q8_0`/`quantize_row_q8_1`.
    fn quantize(x: &[f32], k: usize, format: ActFormat) -> Self {
        let n_blocks = x.len() / QK;
        let mut d = Vec::with_capacity(n_blocks);
        let mut s = Vec::with_capacity(if format == ActFormat::Q8_1 {
            n_blocks
        } else {
            0
        });
        let mut qs = Vec::with_capacity(n_blocks);
        for block in x.chunks_exact(QK) {
            let amax = block.iter().fold(0f32, |m, &v| m.max(v.abs()));
            let scale = amax / 127.0;
            let inv = if amax != 0.0 { 127.0 / amax } else { 0.0 };
            let mut q = [0i8; QK];
            let mut sum = 0i32;
            for (q, &v) in q.iter_mut().zip(block) {
                // |v·inv| ≤ 127 by construction.
                #[allow(clippy::cast_possible_truncation)]
                let r = round_small(v * inv) as i8;
                *q = r;
                sum += i32::from(r);
            }
            d.push(round_to_f16(scale));
            if format == ActFormat::Q8_1 {
                #[allow(clippy::cast_precision_loss)]
                s.push(round_to_f16(scale * sum as f32));
            }
            qs.push(q);
        }
        Self {
            blocks_per_row: k / QK,
            d,
            s,
            qs,
        }
    }

    /// [`Self::quantize`] with the rows shared out over the pool's threads (prefill); each
    /// row's blocks are the same whichever thread quantizes them.
    fn quantize_on(pool: &Pool, x: &[f32], k: usize, format: ActFormat) -> Self {
        let parts = by_row_shares(pool, x, k, |rows| Self::quantize(rows, k, format));
        if parts.len() == 1 {
            return parts
                .into_iter()
                .next()
                .unwrap_or_else(|| Self::quantize(x, k, format));
        }
        let mut all = Self {
            blocks_per_row: k / QK,
            d: Vec::with_capacity(x.len() / QK),
            s: Vec::new(),
            qs: Vec::with_capacity(x.len() / QK),
        };
        for part in parts {
            all.d.extend(part.d);
            all.s.extend(part.s);
            all.qs.extend(part.qs);
        }
        all
    }

    fn rows(&self) -> usize {
        self.d.len() / self.blocks_per_row
    }

    fn row(&self, i: usize) -> ActRow<'_> {
        let r = i * self.blocks_per_row..(i + 1) * self.blocks_per_row;
        ActRow {
            d: &self.d[r.clone()],
            s: if self.s.is_empty() {
                &[]
            } else {
                &self.s[r.clone()]
            },
            qs: &self.qs[r],
        }
    }
}

/// Weights of one 32-block format, unpacked into separate arrays (scales as f32).
enum Blocks {
    Q4_0 {
        d: Vec<f32>,
        qs: Vec<[u8; 16]>,
    },
    Q4_1 {
        d: Vec<f32>,
        m: Vec<f32>,
        qs: Vec<[u8; 16]>,
    },
    Q5_0 {
        d: Vec<f32>,
        qh: Vec<u32>,
        qs: Vec<[u8; 16]>,
    },
    Q8_0 {
        d: Vec<f32>,
        qs: Vec<[i8; QK]>,
    },
}

impl Blocks {
    fn act_format(&self) -> ActFormat {
        match self {
            Blocks::Q4_1 { .. } => ActFormat::Q8_1,
            _ => ActFormat::Q8_0,
        }
    }

    /// Room for `count` blocks of `dtype`; `None` for formats without engine kernels.
    fn with_capacity(dtype: GgmlDType, count: usize) -> Option<Self> {
        Some(match dtype {
            GgmlDType::Q4_0 => Blocks::Q4_0 {
                d: Vec::with_capacity(count),
                qs: Vec::with_capacity(count),
            },
            GgmlDType::Q4_1 => Blocks::Q4_1 {
                d: Vec::with_capacity(count),
                m: Vec::with_capacity(count),
                qs: Vec::with_capacity(count),
            },
            GgmlDType::Q5_0 => Blocks::Q5_0 {
                d: Vec::with_capacity(count),
                qh: Vec::with_capacity(count),
                qs: Vec::with_capacity(count),
            },
            GgmlDType::Q8_0 => Blocks::Q8_0 {
                d: Vec::with_capacity(count),
                qs: Vec::with_capacity(count),
            },
            _ => return None,
        })
    }

    /// Appends the whole blocks in `data` (ggml's on-disk layout).
    fn extend(&mut self, data: &[u8]) {
        let h = |b: &[u8], i: usize| f16_to_f32(u16::from_le_bytes([b[i], b[i + 1]]));
        let nib = |b: &[u8], at: usize| -> [u8; 16] {
            let mut q = [0u8; 16];
            q.copy_from_slice(&b[at..at + 16]);
            q
        };
        match self {
            Blocks::Q4_0 { d, qs } => {
                for b in data.chunks_exact(18) {
                    d.push(h(b, 0));
                    qs.push(nib(b, 2));
                }
            }
            Blocks::Q4_1 { d, m, qs } => {
                for b in data.chunks_exact(20) {
                    d.push(h(b, 0));
                    m.push(h(b, 2));
                    qs.push(nib(b, 4));
                }
            }
            Blocks::Q5_0 { d, qh, qs } => {
                for b in data.chunks_exact(22) {
                    d.push(h(b, 0));
                    qh.push(u32::from_le_bytes([b[2], b[3], b[4], b[5]]));
                    qs.push(nib(b, 6));
                }
            }
            Blocks::Q8_0 { d, qs } => {
                for b in data.chunks_exact(34) {
                    d.push(h(b, 0));
                    qs.push(std::array::from_fn(|i| i8::from_le_bytes([b[2 + i]])));
                }
            }
        }
    }

    /// Parses ggml's on-disk blocks.
    fn parse(dtype: GgmlDType, data: &[u8]) -> Option<Self> {
        let mut blocks = Self::with_capacity(dtype, data.len() / dtype.type_size())?;
        blocks.extend(data);
        Some(blocks)
    }

    fn block_count(&self) -> usize {
        match self {
            Blocks::Q4_0 { d, .. }
            | Blocks::Q4_1 { d, .. }
            | Blocks::Q5_0 { d, .. }
            | Blocks::Q8_0 { d, .. } => d.len(),
        }
    }

    /// Weight row `r` (`nb` blocks) for the kernels.
    fn row(&self, r: usize, nb: usize) -> WeightRow<'_> {
        self.span(r * nb..(r + 1) * nb)
    }

    /// Blocks `range` (whole rows, one after another) for the kernels.
    fn span(&self, range: std::ops::Range<usize>) -> WeightRow<'_> {
        match self {
            Blocks::Q4_0 { d, qs } => WeightRow::Q4_0 {
                d: &d[range.clone()],
                qs: &qs[range],
            },
            Blocks::Q4_1 { d, m, qs } => WeightRow::Q4_1 {
                d: &d[range.clone()],
                m: &m[range.clone()],
                qs: &qs[range],
            },
            Blocks::Q5_0 { d, qh, qs } => WeightRow::Q5_0 {
                d: &d[range.clone()],
                qh: &qh[range.clone()],
                qs: &qs[range],
            },
            Blocks::Q8_0 { d, qs } => WeightRow::Q8_0 {
                d: &d[range.clone()],
                qs: &qs[range],
            },
        }
    }
}

/// Formats the engine multiplies itself. candle's AVX2 kernels for Q4_0 and Q8_0 are not
/// much faster here, and its activation rounding (`1/d`, ties away from zero) differs from
/// ggml's x86 code (`127/amax`, ties to even): with candle for Q8_0, Qwen2.5's greedy output
/// left llama.cpp's at a non-tie in one golden case.
const ENGINE_KERNEL_TYPES: &[GgmlDType] = &[
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q8_0,
];

/// Whether Q4_K matrices whose row count is a multiple of 8 take the arithmetic of
/// llama.cpp's repacked `block_q4_Kx8` kernels, as its AVX2 and AVX-512 builds do: the gemv
/// for decode and for the rows of a prompt past its last whole group of four, the gemm
/// ([`KSum::Gemm`]) for those groups. (An earlier try applied the gemv to whole prompts,
/// matched worse than the plain arithmetic and was left off; with the gemm and the tiled
/// steps, gemma3's forward pass over a golden prompt is llama.cpp's bit for bit, logits
/// included, and every golden case of the three models matches every step.)
const REPACK_Q4K: bool = true;

/// How the K-quant product of weight row `row` with `m` activation rows turns its integer
/// sums into `f32`, as llama.cpp's x86 build would for that matrix and batch: the [`KSum`]
/// for the leading activation rows and how many take it; the rest take [`KSum::VecDot`].
/// Elsewhere (aarch64) every row takes [`KSum::VecDot`]: llama.cpp's ARM kernels differ
/// anyway, and those are the NEON kernels' arithmetic.
fn k_sums(row: KRow<'_>, m: usize) -> (KSum, usize) {
    if !cfg!(target_arch = "x86_64") {
        return (KSum::VecDot, 0);
    }
    match row {
        KRow::Q4K { repacked: true, .. } if m >= 4 => (KSum::Gemm, m - m % 4),
        KRow::Q4K { repacked: true, .. } => (KSum::VecDot, 0),
        _ if m >= TILED_MIN_ROWS => (KSum::Tiled, m),
        _ => (KSum::VecDot, 0),
    }
}

/// Weights of one K-quant format, one entry per super-block, row after row.
enum KBlocks {
    Q4K {
        blocks: Vec<BlockQ4K>,
        /// Whether llama.cpp would repack this matrix (see [`kquants`]).
        repacked: bool,
    },
    Q5K(Vec<BlockQ5K>),
    Q6K(Vec<BlockQ6K>),
}

impl KBlocks {
    /// Room for an `n × k` matrix of `dtype`; `None` for other formats or a `k` that is not
    /// a whole number of super-blocks.
    fn with_capacity(dtype: GgmlDType, n: usize, k: usize, repacked: bool) -> Option<Self> {
        if !k.is_multiple_of(QK_K) {
            return None;
        }
        let count = n * (k / QK_K);
        Some(match dtype {
            // llama.cpp repacks Q4_K on AVX2 CPUs when the row count allows it.
            GgmlDType::Q4K => KBlocks::Q4K {
                blocks: Vec::with_capacity(count),
                repacked: repacked && n.is_multiple_of(8),
            },
            GgmlDType::Q5K => KBlocks::Q5K(Vec::with_capacity(count)),
            GgmlDType::Q6K => KBlocks::Q6K(Vec::with_capacity(count)),
            _ => return None,
        })
    }

    /// Appends the whole super-blocks in `data` (ggml's on-disk layout).
    fn extend(&mut self, data: &[u8]) {
        match self {
            KBlocks::Q4K { blocks, .. } => {
                blocks.extend(data.chunks_exact(BlockQ4K::BYTES).map(BlockQ4K::parse))
            }
            KBlocks::Q5K(b) => b.extend(data.chunks_exact(BlockQ5K::BYTES).map(BlockQ5K::parse)),
            KBlocks::Q6K(b) => b.extend(data.chunks_exact(BlockQ6K::BYTES).map(BlockQ6K::parse)),
        }
    }

    fn block_count(&self) -> usize {
        match self {
            KBlocks::Q4K { blocks, .. } => blocks.len(),
            KBlocks::Q5K(b) => b.len(),
            KBlocks::Q6K(b) => b.len(),
        }
    }

    /// Parses ggml's on-disk super-blocks of an `n × k` matrix; `None` for other formats or
    /// a size mismatch.
    fn parse(dtype: GgmlDType, data: &[u8], n: usize, k: usize, repacked: bool) -> Option<Self> {
        let mut blocks = Self::with_capacity(dtype, n, k, repacked)?;
        blocks.extend(data);
        (data.len() == n * (k / QK_K) * dtype.type_size()).then_some(blocks)
    }

    /// Weight row `r` (`nb` super-blocks).
    fn row(&self, r: usize, nb: usize) -> KRow<'_> {
        let range = r * nb..(r + 1) * nb;
        match self {
            KBlocks::Q4K { blocks, repacked } => KRow::Q4K {
                blocks: &blocks[range],
                repacked: *repacked,
            },
            KBlocks::Q5K(b) => KRow::Q5K(&b[range]),
            KBlocks::Q6K(b) => KRow::Q6K(&b[range]),
        }
    }
}

enum Kernel {
    Blocks(Blocks),
    K(KBlocks),
    Candle(QMatMul),
}

/// A weight matrix of `n` rows (outputs) by `k` columns (inputs).
pub struct QMatrix {
    n: usize,
    k: usize,
    kernel: Kernel,
}

impl QMatrix {
    /// Takes a 2-D `[n, k]` tensor; the 32-block formats and the K-quants (Q4_K, Q5_K, Q6_K)
    /// get the engine's kernels, anything else candle's `QMatMul`.
    pub fn new(t: QTensor) -> Result<Self> {
        let (n, k) = t.shape().dims2()?;
        if let Some(kernel) = Self::engine_kernel(&t, n, k, REPACK_Q4K)? {
            return Ok(Self { n, k, kernel });
        }
        Ok(Self {
            n,
            k,
            kernel: Kernel::Candle(QMatMul::from_qtensor(t)?),
        })
    }

    fn engine_kernel(t: &QTensor, n: usize, k: usize, repack: bool) -> Result<Option<Kernel>> {
        if k.is_multiple_of(QK) && ENGINE_KERNEL_TYPES.contains(&t.dtype()) {
            return Ok(Self::parse_blocks(t, n, k)?.map(Kernel::Blocks));
        }
        if matches!(t.dtype(), GgmlDType::Q4K | GgmlDType::Q5K | GgmlDType::Q6K) {
            return Ok(KBlocks::parse(t.dtype(), &t.data()?, n, k, repack).map(Kernel::K));
        }
        Ok(None)
    }

    fn parse_blocks(t: &QTensor, n: usize, k: usize) -> Result<Option<Blocks>> {
        Ok(Blocks::parse(t.dtype(), &t.data()?).filter(|b| b.block_count() == n * k / QK))
    }

    /// Reads tensor `name` (an `n × k` matrix, shape checked by the caller) from the file.
    /// Formats with engine kernels are converted piece by piece as they are read, so the
    /// file's copy of a large matrix (a tied 262k-token output) is never held whole next to
    /// the converted one; anything else goes to candle's `QMatMul`.
    pub fn load(reader: &mut TensorReader<'_>, name: &str, n: usize, k: usize) -> Result<Self> {
        let (dtype, _) = reader.info(name)?;
        let kernel = if k.is_multiple_of(QK) && ENGINE_KERNEL_TYPES.contains(&dtype) {
            let blocks = Blocks::with_capacity(dtype, n * k / QK);
            read_into(reader, name, blocks, Blocks::extend)?
                .filter(|b| b.block_count() == n * k / QK)
                .map(Kernel::Blocks)
        } else {
            let blocks = KBlocks::with_capacity(dtype, n, k, REPACK_Q4K);
            read_into(reader, name, blocks, KBlocks::extend)?
                .filter(|b| b.block_count() == n * (k / QK_K))
                .map(Kernel::K)
        };
        match kernel {
            Some(kernel) => Ok(Self { n, k, kernel }),
            None => Self::new(reader.load(name)?),
        }
    }

    /// `x` (`m` rows of `k`) times this matrix transposed: `m` rows of `n`, row-major.
    pub fn matmul(&self, pool: &Pool, x: &[f32], m: usize) -> Result<Vec<f32>> {
        let mut out = matmul_shared(pool, &[self], x, m)?;
        Ok(out.pop().unwrap_or_default())
    }
}

/// Appends tensor `name`'s bytes to `blocks` piece by piece with `extend` (nothing is read
/// when `blocks` is `None`, a format without engine kernels).
fn read_into<B>(
    reader: &mut TensorReader<'_>,
    name: &str,
    mut blocks: Option<B>,
    extend: fn(&mut B, &[u8]),
) -> Result<Option<B>> {
    if let Some(b) = blocks.as_mut() {
        reader.read_pieces(name, |piece| {
            extend(b, piece);
            Ok(())
        })?;
    }
    Ok(blocks)
}

/// Output rows per work item.
const CHUNK_ROWS: usize = 16;

/// Weight rows per work item. For one activation row (decode) each thread gets one
/// contiguous share of the rows, as ggml splits a matrix-vector product, so each streams one
/// sequential run of memory that the hardware prefetcher follows; with more rows, chunks of
/// [`CHUNK_ROWS`] balance the load.
fn chunk_rows(n: usize, m: usize, threads: usize) -> usize {
    if m == 1 {
        n.div_ceil(threads.max(1))
            .next_multiple_of(8)
            .max(CHUNK_ROWS)
    } else {
        CHUNK_ROWS
    }
}

/// Activation rows of one 8-bit format: each row for [`dot_rows`], and the leading whole
/// groups of eight interleaved as panels where the CPU's kernels read those
/// ([`panels_supported`]; the rest of the rows, fewer than eight, go row by row).
struct BlockActs<'a> {
    rows: Vec<ActRow<'a>>,
    panels: Vec<ActPanel>,
}

impl<'a> BlockActs<'a> {
    fn new(acts: Option<&'a QActs>, format: ActFormat) -> Self {
        let rows = act_rows(acts);
        let panels = if panels_supported(isa()) {
            rows.chunks_exact(PANEL_ROWS)
                .filter_map(|group| <&[ActRow<'_>; PANEL_ROWS]>::try_from(group).ok())
                .map(|group| ActPanel::new(group, format == ActFormat::Q8_1))
                .collect()
        } else {
            Vec::new()
        };
        Self { rows, panels }
    }
}

/// Q8_K activation rows: each row for [`dot_rows_k`], and the leading whole groups of
/// eight interleaved as panels where the CPU's kernels read those ([`kpanels_supported`]).
struct KActs<'a> {
    rows: Vec<&'a [BlockQ8K]>,
    panels: Vec<KPanel>,
}

impl<'a> KActs<'a> {
    fn new(rows: Vec<&'a [BlockQ8K]>) -> Self {
        let panels = if kpanels_supported(isa()) {
            rows.chunks_exact(KPANEL_ROWS)
                .filter_map(|group| <&[&[BlockQ8K]; KPANEL_ROWS]>::try_from(group).ok())
                .map(KPanel::new)
                .collect()
        } else {
            Vec::new()
        };
        Self { rows, panels }
    }
}

/// What one work item multiplies.
#[derive(Clone, Copy)]
enum Src<'a> {
    Blocks(&'a Blocks, &'a BlockActs<'a>),
    K(&'a KBlocks, &'a KActs<'a>),
}

/// A chunk of consecutive weight rows of one matrix and where their outputs go.
struct Work<'a> {
    src: Src<'a>,
    k: usize,
    first_row: usize,
    out: Mutex<&'a mut [f32]>,
}

impl Work<'_> {
    fn run(&self, isa: Isa, m: usize) {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        // Decode: the whole chunk of rows in one kernel call.
        if let (1, Src::Blocks(blocks, acts)) = (m, self.src)
            && let [act] = acts.rows[..]
        {
            let nb = self.k / QK;
            let rows = self.first_row..self.first_row + out.len();
            dot_rows_one_act(
                isa,
                blocks.span(rows.start * nb..rows.end * nb),
                nb,
                act,
                &mut out,
            );
            return;
        }
        match self.src {
            Src::Blocks(blocks, acts) => self.run_blocks(isa, m, blocks, acts, &mut out),
            Src::K(blocks, acts) => {
                for (r, out_row) in out.chunks_exact_mut(m).enumerate() {
                    let row = blocks.row(self.first_row + r, self.k / QK_K);
                    let (sum, n) = k_sums(row, m);
                    if n > 0 {
                        let (lead, rest) = out_row.split_at_mut(n);
                        let done = through_panels(&acts.panels, lead, |panel, out| {
                            dot_kpanel_as(isa, row, panel, out, sum)
                        });
                        dot_rows_k_as(isa, row, &acts.rows[done..n], &mut lead[done..], sum);
                        dot_rows_k(isa, row, &acts.rows[n..], rest);
                        continue;
                    }
                    let done = through_panels(&acts.panels, out_row, |panel, out| {
                        dot_kpanel(isa, row, panel, out)
                    });
                    dot_rows_k(isa, row, &acts.rows[done..], &mut out_row[done..]);
                }
            }
        }
    }

    /// The block formats' rows with `m > 1` activation rows: weight rows two at a time
    /// through the panels (the two rows' products interleave), the rest of the activation
    /// rows (fewer than a panel) and an odd last weight row one by one.
    fn run_blocks(
        &self,
        isa: Isa,
        m: usize,
        blocks: &Blocks,
        acts: &BlockActs<'_>,
        out: &mut [f32],
    ) {
        let nb = self.k / QK;
        let rows = out.len() / m;
        let (paired, last) = out.split_at_mut(rows / 2 * 2 * m);
        for (i, pair) in paired.chunks_exact_mut(2 * m).enumerate() {
            let r = self.first_row + 2 * i;
            let (o0, o1) = pair.split_at_mut(m);
            let w = [blocks.row(r, nb), blocks.row(r + 1, nb)];
            let mut done = 0;
            for (panel, (p0, p1)) in acts.panels.iter().zip(
                o0.chunks_exact_mut(PANEL_ROWS)
                    .zip(o1.chunks_exact_mut(PANEL_ROWS)),
            ) {
                let (Ok(p0), Ok(p1)) = (p0.try_into(), p1.try_into()) else {
                    break;
                };
                if !dot_panel_pair(isa, w, panel, [p0, p1]) {
                    break;
                }
                done += PANEL_ROWS;
            }
            dot_rows(isa, w[0], &acts.rows[done..], &mut o0[done..]);
            dot_rows(isa, w[1], &acts.rows[done..], &mut o1[done..]);
        }
        if !last.is_empty() {
            let row = blocks.row(self.first_row + rows - 1, nb);
            let done = through_panels(&acts.panels, last, |panel, o| dot_panel(isa, row, panel, o));
            dot_rows(isa, row, &acts.rows[done..], &mut last[done..]);
        }
    }
}

/// Both kinds of panel hold eight activation rows, so one loop serves them.
const _: () = assert!(KPANEL_ROWS == PANEL_ROWS);

/// Runs `kernel` on each of `panels` with the next [`PANEL_ROWS`] outputs of `out`, in
/// order, while it takes them (a kernel returns `false` for a panel it cannot multiply);
/// returns how many outputs it wrote, the rest being left for the row-by-row kernels.
fn through_panels<P>(
    panels: &[P],
    out: &mut [f32],
    mut kernel: impl FnMut(&P, &mut [f32; PANEL_ROWS]) -> bool,
) -> usize {
    let mut done = 0;
    for (panel, o) in panels.iter().zip(out.chunks_exact_mut(PANEL_ROWS)) {
        let Ok(o) = o.try_into() else { break };
        if !kernel(panel, o) {
            break;
        }
        done += PANEL_ROWS;
    }
    done
}

/// Multiplies the same input `x` (`m` rows) by each of `mats` (all with the same `k`),
/// quantizing `x` once per activation format and running all products in one parallel region.
pub fn matmul_shared(pool: &Pool, mats: &[&QMatrix], x: &[f32], m: usize) -> Result<Vec<Vec<f32>>> {
    let k = x.len() / m.max(1);
    let needs = |f: ActFormat| {
        mats.iter()
            .any(|w| matches!(&w.kernel, Kernel::Blocks(b) if b.act_format() == f))
    };
    let q8_0 = needs(ActFormat::Q8_0).then(|| QActs::quantize_on(pool, x, k, ActFormat::Q8_0));
    let q8_1 = needs(ActFormat::Q8_1).then(|| QActs::quantize_on(pool, x, k, ActFormat::Q8_1));
    let rows_8_0 = BlockActs::new(q8_0.as_ref(), ActFormat::Q8_0);
    let rows_8_1 = BlockActs::new(q8_1.as_ref(), ActFormat::Q8_1);
    let q8_k: Vec<BlockQ8K> =
        if k.is_multiple_of(QK_K) && mats.iter().any(|w| matches!(w.kernel, Kernel::K(_))) {
            by_row_shares(pool, x, k, |rows| {
                rows.chunks_exact(QK_K)
                    .map(|block| BlockQ8K::quantize_on(isa(), block))
                    .collect::<Vec<_>>()
            })
            .concat()
        } else {
            Vec::new()
        };
    let rows_8_k = KActs::new(if q8_k.is_empty() {
        Vec::new()
    } else {
        q8_k.chunks_exact(k / QK_K).collect()
    });

    // Transposed outputs (n × m per matrix), cut into chunks of CHUNK_ROWS weight rows.
    let mut outs_t: Vec<Vec<f32>> = mats
        .iter()
        .map(|w| match w.kernel {
            Kernel::Blocks(_) | Kernel::K(_) => vec![0f32; w.n * m],
            Kernel::Candle(_) => Vec::new(),
        })
        .collect();
    let mut work = Vec::new();
    for (w, out) in mats.iter().zip(outs_t.iter_mut()) {
        debug_assert_eq!(w.k, k);
        let src = match &w.kernel {
            Kernel::Blocks(blocks) => match blocks.act_format() {
                ActFormat::Q8_0 => Src::Blocks(blocks, &rows_8_0),
                ActFormat::Q8_1 => Src::Blocks(blocks, &rows_8_1),
            },
            Kernel::K(blocks) if rows_8_k.rows.len() == m => Src::K(blocks, &rows_8_k),
            _ => continue,
        };
        let rows_per_chunk = chunk_rows(w.n, m, pool.threads());
        for (c, chunk) in out.chunks_mut(rows_per_chunk * m).enumerate() {
            work.push(Work {
                src,
                k: w.k,
                first_row: c * rows_per_chunk,
                out: Mutex::new(chunk),
            });
        }
    }
    let isa = isa();
    let next = AtomicUsize::new(0);
    // Every thread (the caller included) takes chunks off one counter.
    pool.run(&|_| {
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(item) = work.get(i) else { break };
            item.run(isa, m);
        }
    });
    drop(work);

    let mut results = Vec::with_capacity(mats.len());
    for (w, out_t) in mats.iter().zip(outs_t) {
        match &w.kernel {
            Kernel::Blocks(_) | Kernel::K(_) if m == 1 => results.push(out_t),
            Kernel::Blocks(_) | Kernel::K(_) => results.push(transpose(pool, &out_t, w.n, m)),
            Kernel::Candle(q) => {
                let t = Tensor::from_slice(x, (m, k), &Device::Cpu)?;
                results.push(q.forward(&t)?.flatten_all()?.to_vec1::<f32>()?);
            }
        }
    }
    Ok(results)
}

/// Rows of `x` (each `k` wide) from which the quantization of a product's input is shared
/// out over the pool's threads.
const PARALLEL_QUANT_ROWS: usize = 8;

/// `f` of each thread's share of the rows of `x` (`k` wide), run on the pool, in row order;
/// one call on all rows below [`PARALLEL_QUANT_ROWS`].
fn by_row_shares<T: Send>(
    pool: &Pool,
    x: &[f32],
    k: usize,
    f: impl Fn(&[f32]) -> T + Sync,
) -> Vec<T> {
    let rows = x.len() / k.max(1);
    if rows < PARALLEL_QUANT_ROWS || pool.threads() == 1 {
        return vec![f(x)];
    }
    let per = rows.div_ceil(pool.threads());
    let shares: Vec<&[f32]> = x.chunks(per * k).collect();
    let parts: Vec<Mutex<Option<T>>> = shares.iter().map(|_| Mutex::new(None)).collect();
    pool.run_each(shares.into_iter().zip(&parts).collect(), |(share, part)| {
        let value = f(share);
        *part
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(value);
    });
    parts
        .into_iter()
        .filter_map(|p| {
            p.into_inner()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        })
        .collect()
}

/// The activation rows of `a` for the kernels (none when absent).
fn act_rows(a: Option<&QActs>) -> Vec<ActRow<'_>> {
    a.map(|a| (0..a.rows()).map(|i| a.row(i)).collect())
        .unwrap_or_default()
}

/// `n × m` row-major to `m × n`, the output rows shared out over the pool's threads; each
/// share in tiles of [`TRANSPOSE_TILE`] input rows so the writes run along output rows (a
/// column at a time, each write touched a new cache line: 5% of gemma3's prefill profile).
fn transpose(pool: &Pool, a: &[f32], n: usize, m: usize) -> Vec<f32> {
    let mut out = vec![0f32; n * m];
    if n == 0 || m == 0 {
        return out;
    }
    let per = if m < PARALLEL_QUANT_ROWS {
        m
    } else {
        m.div_ceil(pool.threads())
    };
    let shares: Vec<(usize, &mut [f32])> = out
        .chunks_mut(per * n)
        .enumerate()
        .map(|(s, rows)| (s * per, rows))
        .collect();
    pool.run_each(shares, |(first, rows)| transpose_rows(a, n, m, first, rows));
    out
}

/// Output rows `first..` (as many as `out` holds) of [`transpose`].
fn transpose_rows(a: &[f32], n: usize, m: usize, first: usize, out: &mut [f32]) {
    for (t, tile) in a.chunks(TRANSPOSE_TILE * m).enumerate() {
        let j0 = t * TRANSPOSE_TILE;
        let rows = tile.len() / m;
        for (di, out_row) in out.chunks_exact_mut(n).enumerate() {
            let i = first + di;
            for (j, o) in out_row[j0..j0 + rows].iter_mut().enumerate() {
                *o = tile[j * m + i];
            }
        }
    }
}

/// Input rows per tile of [`transpose`].
const TRANSPOSE_TILE: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_moves_every_element() {
        let pool = Pool::new(2).unwrap();
        for (n, m) in [
            (1usize, 1usize),
            (5, 1),
            (3, 7),
            (16, 2),
            (37, 5),
            (40, 33),
            (7, 9),
        ] {
            #[allow(clippy::cast_precision_loss)]
            let a: Vec<f32> = (0..n * m).map(|v| v as f32).collect();
            let t = transpose(&pool, &a, n, m);
            for j in 0..n {
                for i in 0..m {
                    assert_eq!(t[i * n + j], a[j * m + i], "n {n} m {m} [{j},{i}]");
                }
            }
        }
    }

    /// Each engine kernel agrees with candle's dequantized weights times the dequantized
    /// 8-bit activations (only float rounding and Q8_1's f16 block sums differ).
    #[test]
    fn kernels_match_dequantized_products() {
        // Eleven rows: one panel of eight where the CPU has them, and three row by row; 41
        // weight rows: pairs, and an odd last row in the last chunk.
        let (n, k, m) = (41, 96, 11);
        #[allow(clippy::cast_precision_loss)]
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0)
            .collect();
        #[allow(clippy::cast_precision_loss)]
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 53 % 89) as f32 - 44.0) / 30.0)
            .collect();
        let wt = Tensor::from_slice(&w, (n, k), &Device::Cpu).unwrap();
        for dtype in [
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q8_0,
        ] {
            let q = QTensor::quantize(&wt, dtype).unwrap();
            let deq = q
                .dequantize(&Device::Cpu)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            let (n_rows, k_cols) = q.shape().dims2().unwrap();
            let blocks = QMatrix::parse_blocks(&q, n_rows, k_cols).unwrap().unwrap();
            let mat = QMatrix {
                n: n_rows,
                k: k_cols,
                kernel: Kernel::Blocks(blocks),
            };
            let Kernel::Blocks(blocks) = &mat.kernel else {
                panic!("{dtype:?} should use the engine's kernel");
            };
            let acts = QActs::quantize(&x, k, blocks.act_format());
            let xq: Vec<f32> = acts
                .d
                .iter()
                .zip(&acts.qs)
                .flat_map(|(&d, q)| q.iter().map(move |&v| f32::from(v) * d))
                .collect();
            let pool = Pool::new(2).unwrap();
            let got = mat.matmul(&pool, &x, m).unwrap();
            assert_products(&got, &deq, &xq, 2e-3, &format!("{dtype:?}"));
        }
    }

    /// `got` (tokens × rows) equals each dequantized weight row times each dequantized
    /// activation row within `rel` of the sum of the products' magnitudes (plus 1e-5).
    fn assert_products(got: &[f32], deq: &[Vec<f32>], xq: &[f32], rel: f32, what: &str) {
        let n = deq.len();
        let k = deq[0].len();
        for (i, xrow) in xq.chunks_exact(k).enumerate() {
            for (j, wrow) in deq.iter().enumerate() {
                let want: f32 = wrow.iter().zip(xrow).map(|(a, b)| a * b).sum();
                let mag: f32 = wrow.iter().zip(xrow).map(|(a, b)| (a * b).abs()).sum();
                let g = got[i * n + j];
                assert!(
                    (g - want).abs() <= rel * mag + 1e-5,
                    "{what} [{i},{j}]: {g} vs {want}"
                );
            }
        }
    }

    /// Which of llama.cpp's x86 kernels each K-quant product follows, by matrix and batch.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn k_sums_follow_llama_cpp_dispatch() {
        let blocks = [BlockQ4K::parse(&[0u8; BlockQ4K::BYTES])];
        let repacked = KRow::Q4K {
            blocks: &blocks,
            repacked: true,
        };
        let plain = KRow::Q4K {
            blocks: &blocks,
            repacked: false,
        };
        assert_eq!(k_sums(repacked, 1), (KSum::VecDot, 0));
        assert_eq!(k_sums(repacked, 3), (KSum::VecDot, 0));
        assert_eq!(k_sums(repacked, 4), (KSum::Gemm, 4));
        assert_eq!(k_sums(repacked, 10), (KSum::Gemm, 8));
        assert_eq!(k_sums(plain, 7), (KSum::VecDot, 0));
        assert_eq!(k_sums(plain, 8), (KSum::Tiled, 8));
        assert_eq!(k_sums(plain, 130), (KSum::Tiled, 130));
    }

    /// The K-quant matrices (repacked Q4_K for 8k rows, plain otherwise, Q5_K, Q6_K) agree
    /// with candle's dequantized weights times the Q8_K-dequantized activations, through
    /// `QMatrix` and the thread pool, for odd row and token counts: one token (`vec_dot`,
    /// the repacked gemv), 5 (below the tiled matmul's 8), 11 (tiled: a panel of eight where
    /// the CPU has the panel kernels, and three more), and 10 with 24 rows (repacked: the gemm
    /// for eight tokens, the gemv for two).
    #[test]
    fn k_quants_match_dequantized_products() {
        let k = 512;
        let pool = Pool::new(2).unwrap();
        for (n, m) in [(24usize, 1usize), (24, 10), (37, 5), (37, 11)] {
            #[allow(clippy::cast_precision_loss)]
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0)
                .collect();
            #[allow(clippy::cast_precision_loss)]
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 53 % 89) as f32 - 44.0) / 30.0)
                .collect();
            let xq: Vec<f32> = x
                .chunks_exact(QK_K)
                .flat_map(|c| {
                    let b = BlockQ8K::quantize(c);
                    b.qs.map(|q| f32::from(q) * b.d)
                })
                .collect();
            let wt = Tensor::from_slice(&w, (n, k), &Device::Cpu).unwrap();
            for dtype in [GgmlDType::Q4K, GgmlDType::Q5K, GgmlDType::Q6K] {
                let q = QTensor::quantize(&wt, dtype).unwrap();
                let deq = q
                    .dequantize(&Device::Cpu)
                    .unwrap()
                    .to_vec2::<f32>()
                    .unwrap();
                let mat = QMatrix::new(q).unwrap();
                assert!(
                    matches!(mat.kernel, Kernel::K(_)),
                    "{dtype:?} should use the engine's kernel"
                );
                let got = mat.matmul(&pool, &x, m).unwrap();
                assert_products(&got, &deq, &xq, 1e-4, &format!("{dtype:?} n {n}"));
            }
        }
    }
}
