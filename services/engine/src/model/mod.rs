//! Transformer forward passes over quantized GGUF weights. (Being written: see the helper's task.)
use crate::gguf::GgufModelFile;
use crate::{EngineConfig, Result};

/// A model's forward pass with its own KV cache.
pub trait Forward: Send {
    /// Runs `tokens` at positions `start_pos..start_pos + tokens.len()` (appending to the KV
    /// cache) and returns the logits of the last position, one per vocabulary entry.
    fn forward(&mut self, tokens: &[u32], start_pos: usize) -> Result<Vec<f32>>;
    /// Forgets the KV cache; the next call starts at position 0.
    fn reset(&mut self);
    /// The model's trained context length.
    fn context_length(&self) -> usize;
}

/// Builds the forward pass for the file's architecture.
pub fn load(file: &GgufModelFile, config: &EngineConfig) -> Result<Box<dyn Forward>> {
    let _ = (file, config);
    unimplemented!()
}
