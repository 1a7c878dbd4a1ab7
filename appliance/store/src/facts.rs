//! What the catalogue records about a GGUF file, read through the engine's validating parser.

use std::path::Path;

use hearth_engine::EngineError;
use hearth_engine::gguf::GgufModelFile;

use crate::error::{Result, StoreError};

/// Facts about a validated model file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ModelFacts {
    pub architecture: String,
    pub parameters: u64,
    pub quantization: String,
    pub context_length: u64,
    pub has_chat_template: bool,
    pub license: Option<String>,
    pub n_layer: u64,
    pub n_kv_head: u64,
    pub head_dim: u64,
    pub file_size: u64,
}

impl ModelFacts {
    /// Validates the GGUF at `path` (header, counts, string lengths, tensor types and
    /// bounds, supported architecture) and reads its facts. Errors name what is wrong.
    pub fn read(path: &Path) -> Result<Self> {
        let file = GgufModelFile::open(path).map_err(engine_error)?;
        let invalid = |reason: String| StoreError::InvalidModel { reason };
        let architecture = file.architecture().to_owned();
        let get = |suffix: &str| -> Result<u64> {
            file.get_u64(&file.arch_key(suffix))
                .map_err(|e| invalid(strip_path(&e, path)))
        };
        let context_length = get("context_length")?;
        let n_layer = get("block_count")?;
        let n_head = get("attention.head_count")?.max(1);
        let n_kv_head = match file.opt_usize(&file.arch_key("attention.head_count_kv")) {
            Ok(Some(v)) => v as u64,
            _ => n_head,
        };
        let head_dim = match file.opt_usize(&file.arch_key("attention.key_length")) {
            Ok(Some(v)) => v as u64,
            _ => get("embedding_length")? / n_head,
        };
        let parameters = file
            .content
            .tensor_infos
            .values()
            .map(|t| t.shape.elem_count() as u64)
            .fold(0u64, u64::saturating_add);
        let quantization = match file.opt_u32("general.file_type") {
            Ok(Some(ft)) => file_type_name(ft).map(str::to_owned),
            _ => None,
        }
        .unwrap_or_else(|| dominant_dtype(&file));
        let license = file
            .opt_str("general.license")
            .ok()
            .flatten()
            .map(|s| s.chars().take(200).collect());
        Ok(Self {
            architecture,
            parameters,
            quantization,
            context_length,
            has_chat_template: file.chat_template().is_some(),
            license,
            n_layer,
            n_kv_head,
            head_dim,
            file_size: file.file_len,
        })
    }

    /// Bytes the model needs in memory: its weights plus a KV cache of type `kv` for
    /// `context` tokens (2 tensors × layers × context × the bytes of KV heads × head size
    /// values: 2 each in f16, 34 per 32 in q8_0).
    pub fn needs_bytes(&self, context: u64, kv: hearth_engine::KvCacheType) -> u64 {
        let kv_dim = self.n_kv_head.saturating_mul(self.head_dim);
        let cache = kv.cache_bytes(self.n_layer, context, kv_dim);
        self.file_size.saturating_add(cache)
    }
}

/// The engine's message without the (temporary) path, which means nothing to the person.
fn strip_path(e: &EngineError, path: &Path) -> String {
    let text = e.to_string();
    let prefix = format!("{}", path.display());
    match text.strip_prefix(&prefix) {
        Some(rest) => format!("the file{rest}"),
        None => text,
    }
}

fn engine_error(e: EngineError) -> StoreError {
    let path = match &e {
        EngineError::Io { path, .. }
        | EngineError::NotGguf { path, .. }
        | EngineError::InvalidGguf { path, .. }
        | EngineError::UnsupportedArchitecture { path, .. }
        | EngineError::MissingMetadata { path, .. } => path.clone(),
        _ => Default::default(),
    };
    let reason = strip_path(&e, &path);
    match e {
        EngineError::UnsupportedArchitecture { .. } => {
            StoreError::UnsupportedArchitecture { reason }
        }
        EngineError::Io { source, .. } => StoreError::Io { path, source },
        _ => StoreError::InvalidModel { reason },
    }
}

/// llama.cpp's `general.file_type` values.
fn file_type_name(ft: u32) -> Option<&'static str> {
    Some(match ft {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        32 => "BF16",
        _ => return None,
    })
}

/// The tensor type holding the most elements, when the file does not say.
fn dominant_dtype(file: &GgufModelFile) -> String {
    let mut counts: Vec<(String, u64)> = Vec::new();
    for t in file.content.tensor_infos.values() {
        let name = format!("{:?}", t.ggml_dtype);
        let n = t.shape.elem_count() as u64;
        match counts.iter_mut().find(|(k, _)| *k == name) {
            Some((_, c)) => *c += n,
            None => counts.push((name, n)),
        }
    }
    counts
        .into_iter()
        .max_by_key(|(_, c)| *c)
        .map(|(k, _)| k.to_uppercase())
        .unwrap_or_else(|| "unknown".into())
}
