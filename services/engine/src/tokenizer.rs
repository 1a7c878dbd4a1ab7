//! Tokenizer built from GGUF metadata. (Being written: see the helper's task.)
use crate::Result;
use crate::gguf::GgufModelFile;

pub struct GgufTokenizer {}

impl GgufTokenizer {
    pub fn from_gguf(file: &GgufModelFile) -> Result<Self> {
        let _ = file;
        unimplemented!()
    }
    /// `text` to ids; BOS prepended when `add_bos`; special-token text becomes control tokens
    /// only when `parse_special`.
    pub fn encode(&self, text: &str, add_bos: bool, parse_special: bool) -> Result<Vec<u32>> {
        let _ = (text, add_bos, parse_special);
        unimplemented!()
    }
    /// Whether the model wants BOS at the start of a prompt (`tokenizer.ggml.add_bos_token`).
    pub fn add_bos(&self) -> bool {
        unimplemented!()
    }
    pub fn bos_text(&self) -> &str {
        unimplemented!()
    }
    pub fn eos_text(&self) -> &str {
        unimplemented!()
    }
    /// True for every end-of-generation id (llama.cpp's EOG set: EOS, EOT, im_end...).
    pub fn is_eog(&self, id: u32) -> bool {
        let _ = id;
        unimplemented!()
    }
    /// The text of `id` as it should appear in output (control tokens give "").
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        let _ = id;
        unimplemented!()
    }
}
