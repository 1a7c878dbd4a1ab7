//! The store's one error type. Each variant carries what a person needs to act on it.

use std::path::PathBuf;

/// Everything the store can refuse or fail at.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A model name that is not 1–64 of `A-Z a-z 0-9 . _ -` or starts with a dot.
    #[error("'{name}' is not a valid model name: {reason}")]
    InvalidName { name: String, reason: &'static str },
    /// A digest that is not `sha256-` followed by 64 lowercase hex digits.
    #[error("'{digest}' is not a valid digest (expected sha256-<64 lowercase hex digits>)")]
    InvalidDigest { digest: String },
    /// An upload or import id that is not 32 lowercase hex digits.
    #[error("'{id}' is not a valid id")]
    InvalidId { id: String },
    /// A media path that is not one of the listed files.
    #[error("'{path}' is not a file on the removable media")]
    InvalidMediaPath { path: String },
    #[error("no model named '{name}'")]
    UnknownModel { name: String },
    #[error("no upload '{id}'")]
    UnknownUpload { id: String },
    #[error("no import '{id}'")]
    UnknownImport { id: String },
    #[error("a model named '{name}' already exists")]
    NameTaken { name: String },
    #[error("model '{name}' comes from a --model path and cannot be changed here")]
    PathModel { name: String },
    #[error("the upload is at byte {expected}, not {offset}")]
    OffsetMismatch { expected: u64, offset: u64 },
    #[error("the upload declared {size} bytes; this chunk would go past that")]
    TooLarge { size: u64 },
    #[error("the upload has {received} of {size} bytes")]
    Incomplete { received: u64, size: u64 },
    #[error("another request is writing to upload '{id}'")]
    Busy { id: String },
    /// The GGUF file is damaged, truncated, or not a GGUF file at all.
    #[error("{reason}")]
    InvalidModel { reason: String },
    #[error("{reason}")]
    UnsupportedArchitecture { reason: String },
    /// The model would not fit in memory (weights + KV cache).
    #[error("the model does not fit in memory: needs {}, {} available", gib(*.needed), gib(*.available))]
    DoesNotFit { needed: u64, available: u64 },
    /// Not enough free disk for the declared size.
    #[error("not enough free disk: needs {}, {} available", gib(*.needed), gib(*.available))]
    InsufficientStorage { needed: u64, available: u64 },
    /// The disk filled up while writing; the partial file was removed.
    #[error("the disk is full (writing {path}); the partial file was removed")]
    DiskFull { path: PathBuf },
    #[error("cancelled")]
    Cancelled,
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("model catalogue {path}: {source}")]
    Catalogue {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
}

impl StoreError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> StoreError {
        let path = path.into();
        move |source| {
            if source.raw_os_error() == Some(nix::libc::ENOSPC)
                || source.raw_os_error() == Some(nix::libc::EDQUOT)
            {
                StoreError::DiskFull { path }
            } else {
                StoreError::Io { path, source }
            }
        }
    }

    /// A stable code for clients (the HTTP layer maps these to statuses).
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::InvalidName { .. } => "invalid_name",
            StoreError::InvalidDigest { .. } => "invalid_digest",
            StoreError::InvalidId { .. } => "invalid_id",
            StoreError::InvalidMediaPath { .. } => "invalid_path",
            StoreError::UnknownModel { .. }
            | StoreError::UnknownUpload { .. }
            | StoreError::UnknownImport { .. } => "not_found",
            StoreError::NameTaken { .. } => "name_taken",
            StoreError::PathModel { .. } => "path_model",
            StoreError::OffsetMismatch { .. } => "offset_mismatch",
            StoreError::TooLarge { .. } => "too_large",
            StoreError::Incomplete { .. } => "incomplete",
            StoreError::Busy { .. } => "upload_busy",
            StoreError::InvalidModel { .. } => "invalid_model",
            StoreError::UnsupportedArchitecture { .. } => "unsupported_architecture",
            StoreError::DoesNotFit { .. } => "does_not_fit",
            StoreError::InsufficientStorage { .. } => "insufficient_storage",
            StoreError::DiskFull { .. } => "disk_full",
            StoreError::Cancelled => "cancelled",
            StoreError::Io { .. } | StoreError::Catalogue { .. } => "internal_error",
        }
    }
}

/// Bytes as "3.1 GiB" (or MiB below one GiB), for messages people read.
pub fn gib(bytes: u64) -> String {
    const GIB: f64 = (1u64 << 30) as f64;
    const MIB: f64 = (1u64 << 20) as f64;
    let b = bytes as f64;
    if b >= GIB / 10.0 {
        format!("{:.1} GiB", b / GIB)
    } else {
        format!("{:.1} MiB", b / MIB)
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
