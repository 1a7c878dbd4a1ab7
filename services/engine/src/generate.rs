//! Generation loop (being written).
pub struct Completion;
pub enum FinishReason {}
pub struct GenerationParams;
