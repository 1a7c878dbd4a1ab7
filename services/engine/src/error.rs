use std::path::PathBuf;

/// Everything the engine can refuse or fail at. Variants carry what a person needs to act.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not a GGUF at all (bad magic, unknown version, cut inside the header).
    #[error("{path} is not a GGUF file: {reason}")]
    NotGguf { path: PathBuf, reason: String },
    /// The file is a GGUF but its contents are inconsistent (tensor past the end, bad type...).
    #[error("{path} is a damaged GGUF file: {reason}")]
    InvalidGguf { path: PathBuf, reason: String },
    #[error("{path}: architecture '{arch}' is not supported (supported: {supported})")]
    UnsupportedArchitecture {
        path: PathBuf,
        arch: String,
        supported: &'static str,
    },
    #[error("{path}: metadata key '{key}' is missing or has the wrong type")]
    MissingMetadata { path: PathBuf, key: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The chat template does not compile.
    #[error("chat template: {0}")]
    Template(String),
    /// Rendering stopped: the template failed, ran out of fuel or produced too much output.
    #[error("chat template rendering failed: {0}")]
    TemplateRender(String),
    #[error(
        "the prompt is {prompt_tokens} tokens and {max_tokens} more were asked for, but the context holds {context_length}"
    )]
    ContextLength {
        prompt_tokens: usize,
        max_tokens: usize,
        context_length: usize,
    },
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The configured KV cache type cannot hold this model's attention heads.
    #[error(
        "{path}: a {kv_cache} KV cache needs a head size that is a multiple of 32; this model's is {head_dim}"
    )]
    UnsupportedKvCache {
        path: PathBuf,
        kv_cache: crate::KvCacheType,
        head_dim: usize,
    },
    /// The engine's worker threads could not be started.
    #[error("cannot start {threads} engine threads: {reason}")]
    Threads { threads: usize, reason: String },
    #[error("tensor computation failed: {0}")]
    Compute(#[from] candle_core::Error),
}

impl EngineError {
    /// True when the caller sent something unacceptable (4xx), false for engine faults (5xx).
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            EngineError::ContextLength { .. }
                | EngineError::InvalidRequest(_)
                | EngineError::TemplateRender(_)
        )
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
