//! `hearth-engine`: GGUF in, tokens out.
//!
//! Owns everything between a GGUF file on disk and a stream of generated text: validating and
//! loading the file ([`gguf`]), the tokenizer built from its metadata ([`tokenizer`]), its chat
//! template rendered in a sandbox ([`template`]), the transformer forward pass ([`model`]),
//! sampling ([`sampling`]) and the generation loop ([`LoadedModel::generate`]).
//!
//! It must never touch HTTP, SQL, sockets or processes: the inference worker
//! (`services/inference`) wraps it, and `hearthd` never links model math.
//!
//! Current limits: architectures llama and qwen2; one sequence at a time per model;
//! the KV cache is rebuilt for each request.

pub mod error;
mod generate;
pub mod gguf;
pub mod model;
pub mod sampling;
pub mod template;
pub mod tokenizer;

use std::path::{Path, PathBuf};

pub use error::{EngineError, Result};
pub use generate::{Completion, FinishReason, GenerationParams};
pub use sampling::SamplingParams;

/// One chat message, as the template sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// How the engine runs. One struct, not a list of arguments.
#[derive(Debug, Clone, Default)]
pub struct EngineConfig {
    /// Upper bound on the context (prompt + answer) in tokens; `None` uses the model's own.
    pub max_context: Option<usize>,
    /// Threads for the matrix products and attention; `None` uses the CPUs this process may
    /// run on (affinity- and cgroup-aware).
    pub threads: Option<usize>,
    /// How the KV cache stores keys and values: f16 (the default, llama.cpp's) or q8_0 (about
    /// half the memory, at a small cost in agreement with the f16 results).
    pub kv_cache: KvCacheType,
}

/// The KV cache's element type, as llama.cpp's `--cache-type-k`/`--cache-type-v`.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum KvCacheType {
    /// IEEE half precision, 2 bytes a value; the arithmetic the golden fixtures pin down.
    #[default]
    #[serde(rename = "f16")]
    F16,
    /// ggml's `q8_0`: per 32 values one f16 scale and 32 signed bytes (34 bytes), attended as
    /// llama.cpp's CPU flash attention does with `-ctk q8_0 -ctv q8_0`. Head sizes must be
    /// multiples of 32.
    #[serde(rename = "q8_0")]
    Q8_0,
}

impl KvCacheType {
    /// The names [`std::str::FromStr`] accepts (and [`std::fmt::Display`] writes).
    pub const NAMES: &'static str = "f16, q8_0";

    /// Bytes one cached position takes for `kv_dim` values (keys or values, not both).
    pub fn row_bytes(self, kv_dim: u64) -> u64 {
        match self {
            KvCacheType::F16 => kv_dim.saturating_mul(2),
            KvCacheType::Q8_0 => kv_dim.div_ceil(32).saturating_mul(34),
        }
    }

    /// Bytes of a whole cache: keys and values of `n_layer` layers for `context` positions,
    /// `kv_dim` (KV heads × head size) values each.
    pub fn cache_bytes(self, n_layer: u64, context: u64, kv_dim: u64) -> u64 {
        2u64.saturating_mul(n_layer)
            .saturating_mul(context)
            .saturating_mul(self.row_bytes(kv_dim))
    }
}

impl std::fmt::Display for KvCacheType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KvCacheType::F16 => "f16",
            KvCacheType::Q8_0 => "q8_0",
        })
    }
}

impl std::str::FromStr for KvCacheType {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f16" => Ok(KvCacheType::F16),
            "q8_0" => Ok(KvCacheType::Q8_0),
            other => Err(format!(
                "unknown KV cache type '{other}' (known: {})",
                Self::NAMES
            )),
        }
    }
}

/// What a loaded model is, for listings and for request checks.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelInfo {
    /// Name clients use to pick the model (the file stem in dev mode).
    pub id: String,
    pub path: PathBuf,
    pub architecture: String,
    /// Context length the engine will allow (the model's own, capped by the config).
    pub context_length: usize,
    pub file_size: u64,
    pub has_chat_template: bool,
}

/// A model ready to generate: weights, tokenizer and chat template.
pub struct LoadedModel {
    info: ModelInfo,
    tokenizer: tokenizer::GgufTokenizer,
    template: template::ChatTemplate,
    forward: Box<dyn model::Forward>,
}

impl LoadedModel {
    /// Validates and loads the GGUF at `path`. Errors name the file and what is wrong with it.
    pub fn load(id: &str, path: &Path, config: &EngineConfig) -> Result<Self> {
        let mut file = gguf::GgufModelFile::open(path)?;
        let tokenizer = tokenizer::GgufTokenizer::from_gguf(&file)?;
        file.release_vocabulary();
        let template = match file.chat_template() {
            Some(source) => template::ChatTemplate::new(source)?,
            None => template::ChatTemplate::chatml_fallback(),
        };
        let forward = model::load(&file, config)?;
        let model_context = forward.context_length();
        let context_length = config
            .max_context
            .map_or(model_context, |cap| cap.min(model_context));
        let info = ModelInfo {
            id: id.to_owned(),
            path: path.to_owned(),
            architecture: file.architecture().to_owned(),
            context_length,
            file_size: file.file_len,
            has_chat_template: file.chat_template().is_some(),
        };
        Ok(Self {
            info,
            tokenizer,
            template,
            forward,
        })
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    pub fn tokenizer(&self) -> &tokenizer::GgufTokenizer {
        &self.tokenizer
    }

    /// Renders `messages` with the model's chat template, ready for the assistant's turn.
    pub fn render_chat(&self, messages: &[ChatMessage]) -> Result<String> {
        self.template.render(
            messages,
            true,
            self.tokenizer.bos_text(),
            self.tokenizer.eos_text(),
        )
    }

    /// Tokenizes a rendered prompt as llama.cpp does: BOS when the model asks for it, special
    /// token text in the (template-rendered) prompt becomes control tokens.
    /// When the template already wrote the BOS text, it is not doubled (llama.cpp does the same).
    pub fn tokenize_prompt(&self, prompt: &str) -> Result<Vec<u32>> {
        let add_bos = self.tokenizer.add_bos();
        let bos = self.tokenizer.bos_text();
        let prompt = match prompt.strip_prefix(bos) {
            Some(rest) if add_bos && !bos.is_empty() => rest,
            _ => prompt,
        };
        self.tokenizer.encode(prompt, add_bos, true)
    }
}

#[cfg(test)]
mod tests {
    use super::KvCacheType;

    #[test]
    fn kv_cache_types_parse_print_and_size() {
        for t in [KvCacheType::F16, KvCacheType::Q8_0] {
            assert_eq!(t.to_string().parse::<KvCacheType>(), Ok(t));
        }
        assert!(
            "q4_0"
                .parse::<KvCacheType>()
                .unwrap_err()
                .contains("f16, q8_0")
        );
        // SmolLM2-135M: 30 layers, 3 KV heads of 64, at 8192 positions.
        assert_eq!(KvCacheType::F16.cache_bytes(30, 8192, 192), 188_743_680);
        assert_eq!(KvCacheType::Q8_0.cache_bytes(30, 8192, 192), 100_270_080);
        assert_eq!(KvCacheType::Q8_0.row_bytes(64), 68);
        assert_eq!(KvCacheType::F16.cache_bytes(u64::MAX, 2, 2), u64::MAX);
    }
}
