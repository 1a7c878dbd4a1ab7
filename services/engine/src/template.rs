//! Chat template rendering in a minijinja sandbox. (Being written: see the helper's task.)
use crate::{ChatMessage, Result};

pub struct ChatTemplate {}

impl ChatTemplate {
    pub fn new(source: &str) -> Result<Self> {
        let _ = source;
        unimplemented!()
    }
    /// llama.cpp's ChatML template, used when the GGUF has none.
    pub fn chatml_fallback() -> Self {
        unimplemented!()
    }
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<String> {
        let _ = (messages, add_generation_prompt, bos_token, eos_token);
        unimplemented!()
    }
}
