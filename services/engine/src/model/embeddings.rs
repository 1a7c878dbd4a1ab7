//! Token embedding rows read from the GGUF file on demand.
//!
//! The embedding table is the largest tensor of a small model (gemma-3-270m: 170 MiB of its
//! 241) and a forward pass needs only the rows of its tokens. Keeping it in memory as well as
//! in the output projection's kernel layout (tied embeddings) would hold it twice, so the rows
//! are read from the file (the page cache keeps hot ones) and dequantized one at a time. The
//! file must not change while the model is loaded (the model store's blobs are immutable).
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use candle_core::Device;
use candle_core::quantized::GgmlDType;
use candle_core::quantized::ggml_file::qtensor_from_ggml;

use crate::gguf::GgufModelFile;
use crate::{EngineError, Result};

/// Reads and dequantizes rows of one `[vocab, n_embd]` tensor.
pub struct EmbeddingRows {
    path: PathBuf,
    file: File,
    /// Absolute file offset of row 0.
    offset: u64,
    row_bytes: usize,
    dtype: GgmlDType,
    n_embd: usize,
    vocab: usize,
}

impl EmbeddingRows {
    /// The rows of tensor `name`, which must be `[vocab, n_embd]` (GGUF dims `n_embd, vocab`).
    pub fn open(file: &GgufModelFile, name: &str, n_embd: usize) -> Result<Self> {
        let invalid = |reason: String| EngineError::InvalidGguf {
            path: file.path.clone(),
            reason,
        };
        let info = file
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| invalid(format!("tensor '{name}' is missing")))?;
        let vocab = match info.shape.dims() {
            &[v, e] if e == n_embd && v > 0 => v,
            got => {
                return Err(invalid(format!(
                    "tensor '{name}' has shape {got:?}, expected [vocab, {n_embd}]"
                )));
            }
        };
        let dtype = info.ggml_dtype;
        if !n_embd.is_multiple_of(dtype.block_size()) {
            return Err(invalid(format!(
                "tensor '{name}': rows of {n_embd} do not split into {dtype:?} blocks"
            )));
        }
        let row_bytes = n_embd / dtype.block_size() * dtype.type_size();
        let offset = file.content.tensor_data_offset + info.offset;
        let end = (vocab as u64)
            .checked_mul(row_bytes as u64)
            .and_then(|len| len.checked_add(offset));
        if end.is_none_or(|end| end > file.file_len) {
            return Err(invalid(format!(
                "tensor '{name}' runs past the end of the file"
            )));
        }
        let handle = File::open(&file.path).map_err(|source| EngineError::Io {
            path: file.path.clone(),
            source,
        })?;
        Ok(Self {
            path: file.path.clone(),
            file: handle,
            offset,
            row_bytes,
            dtype,
            n_embd,
            vocab,
        })
    }

    /// Rows in the table.
    pub fn vocab(&self) -> usize {
        self.vocab
    }

    /// The rows of `tokens`, one after another (`tokens.len() * n_embd` values). Tokens must
    /// be below [`Self::vocab`].
    pub fn rows(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(tokens.len() * self.n_embd);
        let mut raw = vec![0u8; self.row_bytes];
        for &t in tokens {
            let t = t as usize;
            if t >= self.vocab {
                return Err(EngineError::InvalidRequest(format!(
                    "token id {t} is outside the vocabulary of {}",
                    self.vocab
                )));
            }
            let at = self.offset + (t * self.row_bytes) as u64;
            self.file
                .read_exact_at(&mut raw, at)
                .map_err(|source| EngineError::Io {
                    path: self.path.clone(),
                    source,
                })?;
            let row = qtensor_from_ggml(self.dtype, &raw, vec![self.n_embd], &Device::Cpu)?
                .dequantize(&Device::Cpu)?
                .to_vec1::<f32>()?;
            out.extend(row);
        }
        Ok(out)
    }
}
