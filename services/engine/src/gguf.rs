//! GGUF validation and metadata access. (Being written: see the helper's task.)
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;

use crate::Result;

/// A GGUF file whose header, metadata and tensor table have been validated against its length.
pub struct GgufModelFile {
    pub path: PathBuf,
    pub content: gguf_file::Content,
    pub file_len: u64,
}

impl GgufModelFile {
    pub fn open(path: &Path) -> Result<Self> {
        let _ = path;
        unimplemented!()
    }
    /// `general.architecture`.
    pub fn architecture(&self) -> &str {
        unimplemented!()
    }
    /// `tokenizer.chat_template`, when present.
    pub fn chat_template(&self) -> Option<&str> {
        unimplemented!()
    }
}
