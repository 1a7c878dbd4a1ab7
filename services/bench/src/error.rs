//! The bench's error type.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Engine(#[from] hearth_engine::EngineError),
    #[error("{what} '{path}': {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("'{program}' failed ({status}): {stderr}")]
    ChildFailed {
        program: PathBuf,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("cannot read the output of '{program}': {reason}")]
    BadOutput { program: PathBuf, reason: String },
    #[error("invalid bench option: {0}")]
    Options(String),
}

pub type Result<T, E = BenchError> = std::result::Result<T, E>;
