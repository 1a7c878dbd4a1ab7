//! Tokenizer built from GGUF metadata, reproducing llama.cpp's `llama-vocab.cpp`.
//!
//! The vocabulary, merges/scores and token types in the GGUF become a
//! [`tokenizers::TokenizerImpl`] (no `tokenizer.json` on disk): a model ([`VocabModel`]), the
//! pre-tokenizer regexes llama.cpp picks for `tokenizer.ggml.pre` (or SentencePiece's space
//! handling), and every special token as an [`AddedToken`]. Checked against llama.cpp by
//! `tests/golden_tokenize.rs` (SmolLM2, Qwen2.5, Gemma 3).
//!
//! Special tokens follow llama.cpp's rules, which decide what a prompt becomes:
//! - control and unknown tokens are matched in the text only when `parse_special` is on, so a
//!   user who types `<|im_start|>` gets ordinary text, while the rendered template gets the id;
//! - user-defined tokens are matched always;
//! - tokens whose text llama.cpp treats as end-of-turn/end-of-generation/FIM markers are
//!   promoted to control tokens even when the GGUF calls them normal.
//!
//! Two vocabulary families are supported:
//! - `tokenizer.ggml.model = "gpt2"`: byte-level BPE with merge ranks (Qwen, SmolLM, Llama 3);
//! - `"llama"`: SentencePiece-style BPE driven by token scores (Llama 2, Gemma): our own model
//!   ([`SpmModel`]) runs llama.cpp's loop, merging the adjacent pair whose concatenation is
//!   the best-scoring token, with byte fallback to `<0xXX>` tokens; it keeps the texts once in
//!   one buffer (the crate's BPE would need every split of every token as a merge). Spaces
//!   become `▁`.
//!
//! Current limits: other vocabulary types (WordPiece, Unigram, RWKV) and unknown `pre` types are
//! refused. Special tokens are found leftmost-longest (Hugging Face's rule) where llama.cpp splits longest-token-first; the
//! two differ only when special tokens overlap inside the text. The per-token `lstrip`/`rstrip`
//! attributes llama.cpp sets for a few model names (phi-3, jina) are not applied.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use candle_core::quantized::gguf_file::Value;
use tokenizers::models::bpe::{BPE, Merges, Vocab};
use tokenizers::normalizers::{
    NormalizerWrapper, Prepend, Replace, Sequence as NormalizerSequence,
};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{
    AddedToken, AddedVocabulary, DecoderWrapper, Model, OffsetReferential, OffsetType,
    PostProcessorWrapper, PreTokenizedString, PreTokenizer, SplitDelimiterBehavior, Token,
    TokenizerImpl,
};

use crate::gguf::GgufModelFile;
use crate::{EngineError, Result};

mod spm;

pub use spm::{NoTrainer, SpmModel};

/// A [`tokenizers::Tokenizer`] with our model type in it (the crate's `ModelWrapper` is closed).
pub type HfTokenizer = TokenizerImpl<
    VocabModel,
    NormalizerWrapper,
    PreTokenizerWrapper,
    PostProcessorWrapper,
    DecoderWrapper,
>;

/// The model inside [`HfTokenizer`]: the crate's BPE for byte-level vocabularies, ours for
/// SentencePiece ones.
pub enum VocabModel {
    BytePairs(BPE),
    SentencePiece(SpmModel),
}

impl Model for VocabModel {
    type Trainer = NoTrainer<Self>;

    fn tokenize(&self, sequence: &str) -> tokenizers::Result<Vec<Token>> {
        match self {
            Self::BytePairs(m) => m.tokenize(sequence),
            Self::SentencePiece(m) => m.tokenize(sequence),
        }
    }

    fn token_to_id(&self, token: &str) -> Option<u32> {
        match self {
            Self::BytePairs(m) => m.token_to_id(token),
            Self::SentencePiece(m) => m.token_to_id(token),
        }
    }

    fn id_to_token(&self, id: u32) -> Option<String> {
        match self {
            Self::BytePairs(m) => m.id_to_token(id),
            Self::SentencePiece(m) => m.id_to_token(id),
        }
    }

    fn get_vocab(&self) -> HashMap<String, u32> {
        match self {
            Self::BytePairs(m) => m.get_vocab(),
            Self::SentencePiece(m) => m.get_vocab(),
        }
    }

    fn get_vocab_size(&self) -> usize {
        match self {
            Self::BytePairs(m) => m.get_vocab_size(),
            Self::SentencePiece(m) => m.get_vocab_size(),
        }
    }

    fn save(
        &self,
        folder: &std::path::Path,
        prefix: Option<&str>,
    ) -> tokenizers::Result<Vec<std::path::PathBuf>> {
        match self {
            Self::BytePairs(m) => m.save(folder, prefix),
            Self::SentencePiece(m) => m.save(folder, prefix),
        }
    }

    fn get_trainer(&self) -> NoTrainer<Self> {
        NoTrainer::default()
    }
}

/// GPT-2's pre-tokenizer regex (the form Hugging Face uses; llama.cpp implements the same
/// split by hand in `unicode_regex_split_custom_gpt2`).
const REGEX_GPT2: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// Llama 3's regex as llama.cpp writes it (case-insensitive contractions spelled out).
const REGEX_LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's regex: Llama 3's with single digits.
const REGEX_QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Every digit on its own (StarCoder, SmolLM).
const REGEX_DIGIT: &str = r"\p{N}";

// GGUF `tokenizer.ggml.token_type` values.
const TYPE_UNDEFINED: i64 = 0;
const TYPE_NORMAL: i64 = 1;
const TYPE_UNKNOWN: i64 = 2;
const TYPE_CONTROL: i64 = 3;
const TYPE_USER_DEFINED: i64 = 4;
const TYPE_UNUSED: i64 = 5;
const TYPE_BYTE: i64 = 6;

// llama.cpp's token attributes (a bit set: a normal token can be promoted to control).
const ATTR_UNDEFINED: u8 = 0;
const ATTR_UNKNOWN: u8 = 1 << 0;
const ATTR_UNUSED: u8 = 1 << 1;
const ATTR_NORMAL: u8 = 1 << 2;
const ATTR_CONTROL: u8 = 1 << 3;
const ATTR_USER_DEFINED: u8 = 1 << 4;
const ATTR_BYTE: u8 = 1 << 5;

/// Texts llama.cpp takes as the end-of-turn token when `tokenizer.ggml.eot_token_id` is absent.
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];
const FIM_PRE_TEXTS: &[&str] = &[
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<｜fim▁begin｜>",
    "<PRE>",
    "▁<PRE>",
    "<|code_prefix|>",
    "<|prefix|>",
];
const FIM_SUF_TEXTS: &[&str] = &[
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<｜fim▁hole｜>",
    "<SUF>",
    "▁<SUF>",
    "<|code_suffix|>",
    "<|suffix|>",
];
const FIM_MID_TEXTS: &[&str] = &[
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<｜fim▁end｜>",
    "<MID>",
    "▁<MID>",
    "<|code_middle|>",
    "<|middle|>",
];
const FIM_PAD_TEXTS: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
const FIM_REP_TEXTS: &[&str] = &[
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
];
const FIM_SEP_TEXTS: &[&str] = &["<|file_sep|>"];
/// Texts that end generation wherever they appear in the vocabulary.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

/// The tokenizer of one model: text to ids and ids to output bytes, as llama.cpp does it.
pub struct GgufTokenizer {
    kind: VocabKind,
    /// Model, pre-tokenizer, decoder, and every special token as an [`AddedToken`].
    inner: HfTokenizer,
    /// Only the user-defined tokens: what is matched when `parse_special` is off.
    user_defined: AddedVocabulary,
    /// llama.cpp token attributes (`ATTR_*` bits), one per id. The token texts (byte-level
    /// encoded for BPE) live only in the model: another copy of a 262k vocabulary would cost
    /// megabytes.
    attrs: Vec<u8>,
    bos: Option<u32>,
    eos: Option<u32>,
    bos_text: String,
    eos_text: String,
    add_bos: bool,
    /// End-of-generation ids, sorted.
    eog: Vec<u32>,
}

impl std::fmt::Debug for GgufTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufTokenizer")
            .field("vocab_size", &self.attrs.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .field("eog", &self.eog)
            .finish_non_exhaustive()
    }
}

/// Vocabulary families, from `tokenizer.ggml.model`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VocabKind {
    /// `gpt2`: byte-level BPE with merge ranks.
    BytePairs,
    /// `llama`: SentencePiece BPE with token scores, `▁` for spaces, `<0xXX>` byte tokens.
    SentencePiece,
}

/// SentencePiece's visible space.
const SPM_SPACE: &str = "\u{2581}";

/// What `tokenizer.ggml.pre` selects for a BPE vocabulary.
struct PreTokenizerChoice {
    regexes: &'static [&'static str],
    ignore_merges: bool,
    /// llama.cpp's default for `add_bos` when the GGUF does not say.
    add_bos: bool,
}

fn pre_tokenizer_for(pre: &str) -> Result<PreTokenizerChoice> {
    let choice = |regexes, ignore_merges, add_bos| PreTokenizerChoice {
        regexes,
        ignore_merges,
        add_bos,
    };
    Ok(match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" => choice(&[REGEX_LLAMA3], true, true),
        "dbrx" | "smaug-bpe" => choice(&[REGEX_LLAMA3], false, false),
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" | "stablelm2" | "hunyuan"
        | "solar-open" => choice(&[REGEX_QWEN2], false, false),
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b"
        | "mellum2" => choice(&[REGEX_DIGIT, REGEX_GPT2], false, false),
        "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es" | "jina-v2-de"
        | "a.x-4.0" | "mellum" | "modern-bert" | "mpt" | "olmo" | "jais" | "trillion"
        | "granite-docling" | "exaone4" | "jina-v1-en" | "jina-v2-code" | "roberta-bpe" => {
            choice(&[REGEX_GPT2], false, false)
        }
        "" | "default" => choice(
            &[
                r"[\p{P}\$\+<=>\^~\|]+",
                REGEX_GPT2,
                r"\p{N}+",
                "[0-9][0-9][0-9]",
            ],
            false,
            false,
        ),
        other => {
            return Err(EngineError::Tokenizer(format!(
                "pre-tokenizer '{other}' (tokenizer.ggml.pre) is not supported"
            )));
        }
    })
}

impl GgufTokenizer {
    pub fn from_gguf(file: &GgufModelFile) -> Result<Self> {
        Self::from_metadata(&file.content.metadata)
    }

    /// Builds the tokenizer from the `tokenizer.ggml.*` metadata of a GGUF file.
    pub fn from_metadata(metadata: &HashMap<String, Value>) -> Result<Self> {
        let meta = Meta(metadata);
        let model = meta.string("tokenizer.ggml.model")?.ok_or_else(|| {
            EngineError::Tokenizer("metadata has no tokenizer.ggml.model".to_owned())
        })?;
        let kind = match model {
            "gpt2" => VocabKind::BytePairs,
            "llama" => VocabKind::SentencePiece,
            other => {
                return Err(EngineError::Tokenizer(format!(
                    "tokenizer.ggml.model '{other}' is not supported"
                )));
            }
        };
        // Only BPE vocabularies have pre-tokenizers; llama.cpp ignores the key otherwise.
        let choice = match kind {
            VocabKind::BytePairs => Some(pre_tokenizer_for(
                meta.string("tokenizer.ggml.pre")?.unwrap_or(""),
            )?),
            VocabKind::SentencePiece => None,
        };

        // Borrowed from the metadata: only the model keeps its own copy.
        let texts = read_token_texts(&meta)?;
        let n_tokens = texts.len();
        let mut attrs = read_token_attrs(&meta, n_tokens)?;

        let SpecialIds { bos, eos, eog } = special_ids(&meta, kind, &texts, &mut attrs)?;
        let default_add_bos = choice.as_ref().is_none_or(|c| c.add_bos);
        let add_bos = meta
            .bool("tokenizer.ggml.add_bos_token")?
            .unwrap_or(default_add_bos);
        if add_bos && bos.is_none() {
            return Err(EngineError::Tokenizer(
                "tokenizer.ggml.add_bos_token is true but there is no BOS token".to_owned(),
            ));
        }

        let mut inner = match &choice {
            Some(choice) => build_byte_level_tokenizer(&meta, &texts, choice)?,
            None => {
                let add_space_prefix = meta
                    .bool("tokenizer.ggml.add_space_prefix")?
                    .unwrap_or(true);
                build_sentencepiece_tokenizer(&meta, &texts, add_space_prefix)?
            }
        };
        inner
            .add_tokens(added_tokens(&texts, &attrs, true))
            .map_err(tok_err)?;
        let mut user_defined = AddedVocabulary::new();
        user_defined
            .add_tokens(
                added_tokens(&texts, &attrs, false),
                inner.get_model(),
                None::<&NormalizerWrapper>,
            )
            .map_err(tok_err)?;

        let mut this = Self {
            kind,
            inner,
            user_defined,
            attrs,
            bos,
            eos,
            bos_text: String::new(),
            eos_text: String::new(),
            add_bos,
            eog,
        };
        this.bos_text = bos.map(|id| this.piece_text(id)).unwrap_or_default();
        this.eos_text = eos.map(|id| this.piece_text(id)).unwrap_or_default();
        Ok(this)
    }

    /// `text` to ids; BOS prepended when `add_bos`; special-token text becomes control tokens
    /// only when `parse_special`.
    pub fn encode(&self, text: &str, add_bos: bool, parse_special: bool) -> Result<Vec<u32>> {
        let mut ids = Vec::with_capacity(text.len() / 3 + 2);
        if add_bos {
            let bos = self.bos.ok_or_else(|| {
                EngineError::Tokenizer("BOS requested but the model has none".to_owned())
            })?;
            ids.push(bos);
        }
        if text.is_empty() {
            return Ok(ids);
        }
        let added = if parse_special {
            self.inner.get_added_vocabulary()
        } else {
            &self.user_defined
        };
        let mut pieces: PreTokenizedString =
            added.extract_and_normalize(self.inner.get_normalizer(), text);
        if let Some(pre) = self.inner.get_pre_tokenizer() {
            pre.pre_tokenize(&mut pieces).map_err(tok_err)?;
        }
        let model = self.inner.get_model();
        pieces
            .tokenize(|piece| model.tokenize(piece.get()))
            .map_err(tok_err)?;
        for (_, _, tokens) in pieces.get_splits(OffsetReferential::Original, OffsetType::None) {
            ids.extend(tokens.iter().flatten().map(|token| token.id));
        }
        Ok(ids)
    }

    /// Whether the model wants BOS at the start of a prompt (`tokenizer.ggml.add_bos_token`,
    /// else llama.cpp's default for the vocabulary).
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// BOS as text, for chat templates (`bos_token`); empty when the model has none.
    pub fn bos_text(&self) -> &str {
        &self.bos_text
    }

    /// EOS as text, for chat templates (`eos_token`); empty when the model has none.
    pub fn eos_text(&self) -> &str {
        &self.eos_text
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// True for every end-of-generation id (llama.cpp's EOG set: EOS, EOT, im_end...).
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.binary_search(&id).is_ok()
    }

    /// Every end-of-generation id, sorted.
    pub fn eog_ids(&self) -> &[u32] {
        &self.eog
    }

    /// Number of ids in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.attrs.len()
    }

    /// The underlying Hugging Face tokenizer (model, pre-tokenizer, special tokens).
    pub fn hf_tokenizer(&self) -> &HfTokenizer {
        &self.inner
    }

    /// The raw bytes `id` contributes to output. Control, unknown and unused tokens, and ids
    /// outside the vocabulary, give nothing. A multi-byte character may be split across
    /// tokens, so a single token's bytes need not be valid UTF-8.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        self.piece(id, false)
    }

    /// llama.cpp's `token_to_piece`; `special` renders control tokens as their text.
    fn piece(&self, id: u32, special: bool) -> Vec<u8> {
        let Some(&attr) = self.attrs.get(id as usize) else {
            return Vec::new();
        };
        // Every GGUF id is in the model's vocabulary.
        let Some(text) = self.inner.get_model().id_to_token(id) else {
            return Vec::new();
        };
        let text = text.as_str();
        if !special && attr & (ATTR_CONTROL | ATTR_UNKNOWN) != 0 {
            return Vec::new();
        }
        if attr & (ATTR_CONTROL | ATTR_UNKNOWN | ATTR_USER_DEFINED) != 0 {
            return text.as_bytes().to_vec();
        }
        if attr & ATTR_NORMAL != 0 {
            return match self.kind {
                VocabKind::BytePairs => byte_level_decode(text),
                VocabKind::SentencePiece => text.replace(SPM_SPACE, " ").into_bytes(),
            };
        }
        if attr & ATTR_BYTE != 0 {
            return parse_byte_token(text).map(|b| vec![b]).unwrap_or_default();
        }
        Vec::new()
    }

    fn piece_text(&self, id: u32) -> String {
        String::from_utf8_lossy(&self.piece(id, true)).into_owned()
    }
}

fn tok_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Tokenizer(e.to_string())
}

/// Special ids and the end-of-generation set.
struct SpecialIds {
    bos: Option<u32>,
    eos: Option<u32>,
    /// Sorted.
    eog: Vec<u32>,
}

/// Special ids as llama.cpp's `llama_vocab::load` derives them: defaults for the vocabulary
/// kind, overridden by metadata; end-of-turn, FIM and end-of-generation tokens found by their
/// text are promoted to control tokens in `attrs`.
fn special_ids(
    meta: &Meta<'_>,
    kind: VocabKind,
    texts: &[Cow<'_, str>],
    attrs: &mut [u8],
) -> Result<SpecialIds> {
    let n_tokens = texts.len();
    // Special ids: llama.cpp's defaults for the vocabulary kind, overridden by metadata.
    let in_range = |id: u32| (id as usize) < n_tokens;
    let (default_bos, default_eos) = match kind {
        VocabKind::BytePairs => (Some(11), Some(11)),
        VocabKind::SentencePiece => (Some(1), Some(2)),
    };
    let special = |key: &str, default: Option<u32>| -> Result<Option<u32>> {
        let default = default.filter(|&id| in_range(id));
        Ok(match meta.uint(key)? {
            Some(id) if in_range(id) => Some(id),
            Some(id) => {
                log::warn!(key = key, id = id; "special token id out of vocabulary range, ignored");
                default
            }
            None => default,
        })
    };
    let bos = special("tokenizer.ggml.bos_token_id", default_bos)?;
    let eos = special("tokenizer.ggml.eos_token_id", default_eos)?;
    let mut eot = special("tokenizer.ggml.eot_token_id", None)?;
    let mut eom = special("tokenizer.ggml.eom_token_id", None)?;
    let fim_pre = special("tokenizer.ggml.prefix_token_id", None)?;
    let fim_suf = special("tokenizer.ggml.suffix_token_id", None)?;
    let fim_mid = special("tokenizer.ggml.middle_token_id", None)?;
    let mut fim_pre = special("tokenizer.ggml.fim_pre_token_id", fim_pre)?;
    let mut fim_suf = special("tokenizer.ggml.fim_suf_token_id", fim_suf)?;
    let mut fim_mid = special("tokenizer.ggml.fim_mid_token_id", fim_mid)?;
    let mut fim_pad = special("tokenizer.ggml.fim_pad_token_id", None)?;
    let mut fim_rep = special("tokenizer.ggml.fim_rep_token_id", None)?;
    let mut fim_sep = special("tokenizer.ggml.fim_sep_token_id", None)?;

    // Find end-of-turn and FIM tokens by their text and make them control tokens.
    for (id, text) in texts.iter().enumerate() {
        let id = id as u32;
        let text = text.as_ref();
        for (slot, list) in [
            (&mut eot, EOT_TEXTS),
            (&mut eom, &["<|eom_id|>"][..]),
            (&mut fim_pre, FIM_PRE_TEXTS),
            (&mut fim_suf, FIM_SUF_TEXTS),
            (&mut fim_mid, FIM_MID_TEXTS),
            (&mut fim_pad, FIM_PAD_TEXTS),
            (&mut fim_rep, FIM_REP_TEXTS),
            (&mut fim_sep, FIM_SEP_TEXTS),
        ] {
            if slot.is_none() && list.contains(&text) {
                *slot = Some(id);
                attrs[id as usize] |= ATTR_CONTROL;
            }
        }
    }

    // The end-of-generation set, as llama.cpp builds it.
    let mut eog: HashSet<u32> = [fim_pad, fim_rep, fim_sep].into_iter().flatten().collect();
    for (id, text) in texts.iter().enumerate() {
        if EOG_TEXTS.contains(&text.as_ref()) {
            eog.insert(id as u32);
            attrs[id] |= ATTR_CONTROL;
        }
        // gpt-oss: these always render.
        if matches!(
            text.as_ref(),
            "<|channel|>" | "<|message|>" | "<|start|>" | "<|constrain|>"
        ) {
            attrs[id] = ATTR_USER_DEFINED;
        }
    }
    eog.extend([eos, eot, eom].into_iter().flatten());
    let eog_with_text = |eog: &HashSet<u32>, wanted: &[&str]| {
        eog.iter()
            .copied()
            .find(|&id| wanted.contains(&texts[id as usize].as_ref()))
    };
    // o200k_harmony and solar-open: "<|end|>" is not the end of generation there.
    let has = |eog: &HashSet<u32>, wanted: &[&str]| eog_with_text(eog, wanted).is_some();
    if let Some(end) = eog_with_text(&eog, &["<|end|>"]) {
        let has_call = has(&eog, &["<|call|>", "<|calls|>"]);
        if has_call && (has(&eog, &["<|return|>"]) || has(&eog, &["<|flush|>"])) {
            eog.remove(&end);
            attrs[end as usize] = ATTR_USER_DEFINED;
        }
    }
    // gemma4 and paddleocr: "</s>" is ordinary text there.
    if has(&eog, &["<|tool_response>"])
        && let Some(s) = eog_with_text(&eog, &["</s>"])
    {
        eog.remove(&s);
        attrs[s as usize] = ATTR_NORMAL;
    }
    let mut eog: Vec<u32> = eog.into_iter().collect();
    eog.sort_unstable();
    Ok(SpecialIds { bos, eos, eog })
}

/// Typed access to GGUF metadata; wrong types are errors, missing keys are `None`.
struct Meta<'a>(&'a HashMap<String, Value>);

impl<'a> Meta<'a> {
    fn wrong_type(key: &str, wanted: &str) -> EngineError {
        EngineError::Tokenizer(format!("metadata key {key} is not {wanted}"))
    }

    fn string(&self, key: &str) -> Result<Option<&str>> {
        match self.0.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(Self::wrong_type(key, "a string")),
        }
    }

    fn uint(&self, key: &str) -> Result<Option<u32>> {
        let Some(value) = self.0.get(key) else {
            return Ok(None);
        };
        int_value(value)
            .and_then(|v| u32::try_from(v).ok())
            .map(Some)
            .ok_or_else(|| Self::wrong_type(key, "an unsigned 32-bit integer"))
    }

    fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.0.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(Self::wrong_type(key, "a boolean")),
        }
    }

    fn array(&self, key: &str) -> Result<Option<&'a [Value]>> {
        match self.0.get(key) {
            None => Ok(None),
            Some(Value::Array(values)) => Ok(Some(values)),
            Some(_) => Err(Self::wrong_type(key, "an array")),
        }
    }
}

fn int_value(value: &Value) -> Option<i64> {
    Some(match *value {
        Value::U8(v) => v.into(),
        Value::I8(v) => v.into(),
        Value::U16(v) => v.into(),
        Value::I16(v) => v.into(),
        Value::U32(v) => v.into(),
        Value::I32(v) => v.into(),
        Value::U64(v) => i64::try_from(v).ok()?,
        Value::I64(v) => v,
        _ => return None,
    })
}

/// `tokenizer.ggml.tokens`, with llama.cpp's placeholder for empty entries. Duplicates are an
/// error, as in llama.cpp: ids would be ambiguous.
fn read_token_texts<'a>(meta: &Meta<'a>) -> Result<Vec<Cow<'a, str>>> {
    const KEY: &str = "tokenizer.ggml.tokens";
    let values = meta
        .array(KEY)?
        .ok_or_else(|| EngineError::Tokenizer(format!("metadata has no {KEY}")))?;
    if values.is_empty() || values.len() > u32::MAX as usize / 2 {
        return Err(EngineError::Tokenizer(format!(
            "{KEY} has {} entries",
            values.len()
        )));
    }
    let mut seen = HashSet::with_capacity(values.len());
    let mut texts = Vec::with_capacity(values.len());
    for (id, value) in values.iter().enumerate() {
        let Value::String(text) = value else {
            return Err(Meta::wrong_type(KEY, "an array of strings"));
        };
        let text = if text.is_empty() {
            Cow::Owned(format!("[EMPTY_{id}]"))
        } else {
            Cow::Borrowed(text.as_str())
        };
        if !seen.insert(text.clone()) {
            return Err(EngineError::Tokenizer(format!(
                "duplicate token in vocabulary: {text:?} (id {id})"
            )));
        }
        texts.push(text);
    }
    Ok(texts)
}

fn read_token_attrs(meta: &Meta<'_>, n_tokens: usize) -> Result<Vec<u8>> {
    const KEY: &str = "tokenizer.ggml.token_type";
    let Some(types) = meta.array(KEY)? else {
        return Ok(vec![ATTR_NORMAL; n_tokens]);
    };
    if types.len() < n_tokens {
        return Err(EngineError::Tokenizer(format!(
            "{KEY} has {} entries for {n_tokens} tokens",
            types.len()
        )));
    }
    types[..n_tokens]
        .iter()
        .map(|value| {
            let kind = int_value(value).ok_or_else(|| Meta::wrong_type(KEY, "integers"))?;
            Ok(match kind {
                TYPE_NORMAL => ATTR_NORMAL,
                TYPE_UNKNOWN => ATTR_UNKNOWN,
                TYPE_CONTROL => ATTR_CONTROL,
                TYPE_USER_DEFINED => ATTR_USER_DEFINED,
                TYPE_UNUSED => ATTR_UNUSED,
                TYPE_BYTE => ATTR_BYTE,
                TYPE_UNDEFINED => ATTR_UNDEFINED,
                _ => ATTR_UNDEFINED,
            })
        })
        .collect()
}

/// The tokens llama.cpp splits out of the text before tokenizing, as added tokens matched
/// verbatim: control and unknown tokens (marked special: only with `parse_special`) and
/// user-defined ones (always). With `parse_special` off only the latter are wanted; a
/// user-defined token promoted to control (an end-of-generation text) counts as control.
fn added_tokens(texts: &[Cow<'_, str>], attrs: &[u8], parse_special: bool) -> Vec<AddedToken> {
    texts
        .iter()
        .zip(attrs)
        .filter_map(|(text, &attr)| {
            let special = attr & (ATTR_CONTROL | ATTR_UNKNOWN) != 0;
            let always = !special && attr & ATTR_USER_DEFINED != 0;
            (always || (special && parse_special))
                .then(|| AddedToken::from(text.as_ref(), special).normalized(false))
        })
        .collect()
}

fn build_byte_level_tokenizer(
    meta: &Meta<'_>,
    texts: &[Cow<'_, str>],
    choice: &PreTokenizerChoice,
) -> Result<HfTokenizer> {
    const KEY: &str = "tokenizer.ggml.merges";
    let vocab: Vocab = texts
        .iter()
        .enumerate()
        .map(|(id, text)| (text.as_ref().to_owned(), id as u32))
        .collect();
    let raw_merges = meta
        .array(KEY)?
        .ok_or_else(|| EngineError::Tokenizer(format!("metadata has no {KEY}")))?;
    // llama.cpp splits at the first space after the first byte and keeps the first rank of a
    // repeated pair. Merges whose parts or result are not tokens can never produce an id;
    // they are dropped (the BPE builder would reject them).
    let mut merges: Merges = Vec::with_capacity(raw_merges.len());
    let mut seen = HashSet::with_capacity(raw_merges.len());
    let mut dropped = 0usize;
    for value in raw_merges {
        let Value::String(merge) = value else {
            return Err(Meta::wrong_type(KEY, "an array of strings"));
        };
        let split = merge
            .char_indices()
            .skip(1)
            .find(|&(_, c)| c == ' ')
            .map(|(i, _)| (&merge[..i], &merge[i + 1..]));
        let Some((left, right)) = split else {
            dropped += 1;
            continue;
        };
        let joined = format!("{left}{right}");
        if !vocab.contains_key(left) || !vocab.contains_key(right) || !vocab.contains_key(&joined) {
            dropped += 1;
            continue;
        }
        if seen.insert((left, right)) {
            merges.push((left.to_owned(), right.to_owned()));
        }
    }
    if dropped > 0 {
        log::warn!(dropped = dropped; "BPE merges that cannot produce a token were ignored");
    }
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(choice.ignore_merges)
        .build()
        .map_err(tok_err)?;

    let mut steps: Vec<PreTokenizerWrapper> = Vec::with_capacity(choice.regexes.len() + 1);
    for regex in choice.regexes {
        let split = Split::new(
            SplitPattern::Regex((*regex).to_owned()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(tok_err)?;
        steps.push(split.into());
    }
    steps.push(ByteLevel::new(false, false, false).into());

    let mut tokenizer = HfTokenizer::new(VocabModel::BytePairs(bpe));
    tokenizer.with_pre_tokenizer(Some(Sequence::new(steps)));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    Ok(tokenizer)
}

/// SentencePiece BPE as llama.cpp runs it ([`SpmModel`]), after a normalizer that turns spaces
/// into `▁` and, with `add_space_prefix`, puts one in front.
fn build_sentencepiece_tokenizer(
    meta: &Meta<'_>,
    texts: &[Cow<'_, str>],
    add_space_prefix: bool,
) -> Result<HfTokenizer> {
    let model = SpmModel::new(texts, read_scores(meta, texts.len())?)?;
    let mut steps: Vec<NormalizerWrapper> = Vec::with_capacity(2);
    if add_space_prefix {
        steps.push(Prepend::new(SPM_SPACE.to_owned()).into());
    }
    steps.push(Replace::new(" ", SPM_SPACE).map_err(tok_err)?.into());
    let mut tokenizer = HfTokenizer::new(VocabModel::SentencePiece(model));
    tokenizer
        .with_normalizer(Some(NormalizerSequence::new(steps)))
        .map_err(tok_err)?;
    Ok(tokenizer)
}

/// `tokenizer.ggml.scores`, one per token (all 0 when absent, as in llama.cpp).
fn read_scores(meta: &Meta<'_>, n_tokens: usize) -> Result<Vec<f32>> {
    const KEY: &str = "tokenizer.ggml.scores";
    match meta.array(KEY)? {
        None => Ok(vec![0.0; n_tokens]),
        Some(values) if values.len() >= n_tokens => values[..n_tokens]
            .iter()
            .map(|v| match *v {
                Value::F32(x) => Ok(x),
                Value::F64(x) => Ok(x as f32),
                _ => int_value(v)
                    .map(|x| x as f32)
                    .ok_or_else(|| Meta::wrong_type(KEY, "numbers")),
            })
            .collect(),
        Some(values) => Err(EngineError::Tokenizer(format!(
            "{KEY} has {} entries for {n_tokens} tokens",
            values.len()
        ))),
    }
}

/// GPT-2's byte-to-character table: printable Latin-1 bytes stand for themselves, the rest
/// are shifted to U+0100 and up.
fn byte_level_char(byte: u8) -> char {
    let b = u32::from(byte);
    let printable = |b: u32| (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    if printable(b) {
        return char::from(byte);
    }
    let shifted = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + shifted).unwrap_or(char::REPLACEMENT_CHARACTER)
}

/// Inverse of [`byte_level_char`]: the byte a character of a byte-level token stands for.
fn byte_level_byte(c: char) -> Option<u8> {
    static TABLE: std::sync::OnceLock<HashMap<char, u8>> = std::sync::OnceLock::new();
    TABLE
        .get_or_init(|| (0..=255u8).map(|b| (byte_level_char(b), b)).collect())
        .get(&c)
        .copied()
}

/// A byte-level BPE token's text to the bytes it stands for. Characters outside the table
/// (not produced by GPT-2 conversion) are kept as their UTF-8.
fn byte_level_decode(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        match byte_level_byte(c) {
            Some(b) => out.push(b),
            None => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out
}

/// `<0xAB>` to 0xAB.
fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    u8::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A byte-level vocabulary: the 256 byte characters, a few merges, and special tokens.
    fn metadata(pre: &str, extra: &[(&str, i32)], merges: &[&str]) -> HashMap<String, Value> {
        let mut tokens: Vec<String> = (0..=255u8)
            .map(|b| byte_level_char(b).to_string())
            .collect();
        let mut types = vec![1i32; tokens.len()];
        for merge in merges {
            let joined = merge.replace(' ', "");
            if !tokens.contains(&joined) {
                tokens.push(joined);
                types.push(1);
            }
        }
        for (text, kind) in extra {
            tokens.push((*text).to_owned());
            types.push(*kind);
        }
        let strings = |v: Vec<String>| Value::Array(v.into_iter().map(Value::String).collect());
        let mut m = HashMap::new();
        m.insert("tokenizer.ggml.model".into(), Value::String("gpt2".into()));
        m.insert("tokenizer.ggml.pre".into(), Value::String(pre.into()));
        m.insert("tokenizer.ggml.tokens".into(), strings(tokens));
        m.insert(
            "tokenizer.ggml.token_type".into(),
            Value::Array(types.into_iter().map(Value::I32).collect()),
        );
        m.insert(
            "tokenizer.ggml.merges".into(),
            strings(merges.iter().map(|s| (*s).to_owned()).collect()),
        );
        m
    }

    fn id(tok: &GgufTokenizer, text: &str) -> u32 {
        tok.inner.get_model().token_to_id(text).unwrap()
    }

    /// A token's text as stored in the GGUF.
    fn token_text(tok: &GgufTokenizer, id: u32) -> String {
        tok.inner.get_model().id_to_token(id).unwrap()
    }

    #[test]
    fn multibyte_character_split_across_tokens_reassembles() {
        let tok = GgufTokenizer::from_metadata(&metadata("gpt-2", &[], &[])).unwrap();
        let text = "é🦀";
        let ids = tok.encode(text, false, false).unwrap();
        assert_eq!(ids.len(), text.len(), "no merges: one token per byte");
        assert!(
            ids.iter()
                .all(|&i| std::str::from_utf8(&tok.token_bytes(i)).is_err())
        );
        let bytes: Vec<u8> = ids.iter().flat_map(|&i| tok.token_bytes(i)).collect();
        assert_eq!(bytes, text.as_bytes());
    }

    #[test]
    fn merges_apply_by_rank() {
        let meta = metadata("gpt-2", &[], &["h e", "l l", "he ll", "Ġ w"]);
        let tok = GgufTokenizer::from_metadata(&meta).unwrap();
        let ids = tok.encode("hello w", false, false).unwrap();
        let pieces: Vec<String> = ids.iter().map(|&i| token_text(&tok, i)).collect();
        assert_eq!(pieces, ["hell", "o", "Ġw"]);
    }

    #[test]
    fn control_tokens_only_with_parse_special_user_defined_always() {
        let meta = metadata(
            "smollm",
            &[
                ("<|im_end|>", 3),
                ("<tool>", 4),
                ("<|extra|>", 3),
                ("</s>", 4),
            ],
            &[],
        );
        let tok = GgufTokenizer::from_metadata(&meta).unwrap();
        let im_end = id(&tok, "<|im_end|>");
        let tool = id(&tok, "<tool>");
        assert_eq!(tok.encode("<|im_end|>", false, true).unwrap(), [im_end]);
        let plain = tok.encode("<|im_end|>", false, false).unwrap();
        assert_eq!(plain.len(), "<|im_end|>".len());
        assert_eq!(tok.encode("<tool>", false, false).unwrap(), [tool]);
        assert_eq!(tok.encode("<tool>", false, true).unwrap(), [tool]);
        // Output: control tokens render as nothing, user-defined as their text.
        assert!(tok.token_bytes(im_end).is_empty());
        assert_eq!(tok.token_bytes(tool), b"<tool>");
        assert!(tok.token_bytes(u32::MAX).is_empty());
        assert!(tok.is_eog(im_end));
        assert!(!tok.is_eog(id(&tok, "<|extra|>")));
        // A user-defined end-of-generation token is promoted to control (gemma's "</s>").
        let end = id(&tok, "</s>");
        assert!(tok.is_eog(end));
        assert_eq!(tok.encode("</s>", false, true).unwrap(), [end]);
        assert_eq!(tok.encode("</s>", false, false).unwrap().len(), 4);
    }

    #[test]
    fn digits_split_one_by_one_for_smollm() {
        let meta = metadata("smollm", &[], &["1 2"]);
        let tok = GgufTokenizer::from_metadata(&meta).unwrap();
        assert_eq!(tok.encode("12", false, false).unwrap().len(), 2);
        let gpt2 = GgufTokenizer::from_metadata(&metadata("gpt-2", &[], &["1 2"])).unwrap();
        assert_eq!(gpt2.encode("12", false, false).unwrap().len(), 1);
    }

    #[test]
    fn eog_set_and_bos_defaults() {
        let mut meta = metadata(
            "qwen2",
            &[
                ("<|endoftext|>", 3),
                ("<|im_end|>", 3),
                ("</s>", 1),
                ("<|fim_pad|>", 3),
                ("<|fim_prefix|>", 3),
            ],
            &[],
        );
        let n = 256;
        meta.insert("tokenizer.ggml.eos_token_id".into(), Value::U32(n + 1));
        let tok = GgufTokenizer::from_metadata(&meta).unwrap();
        assert_eq!(tok.eog_ids(), [n, n + 1, n + 2, n + 3]);
        assert!(!tok.add_bos());
        assert_eq!(tok.eos_text(), "<|im_end|>");
        // "</s>" was promoted to control: parsed only as special, rendered as nothing.
        assert_eq!(tok.encode("</s>", false, true).unwrap(), [n + 2]);
        assert_eq!(tok.encode("</s>", false, false).unwrap().len(), 4);
        assert!(tok.token_bytes(n + 2).is_empty());
        // gpt2 default BOS is id 11, which is the byte-level character for byte 11.
        assert_eq!(tok.bos_id(), Some(11));
        assert_eq!(tok.encode("", true, true).unwrap(), [11]);
    }

    #[test]
    fn refuses_bad_metadata_without_panicking() {
        let mut meta = metadata("gpt-2", &[], &[]);
        meta.insert("tokenizer.ggml.pre".into(), Value::String("nope".into()));
        assert!(GgufTokenizer::from_metadata(&meta).is_err());

        let mut meta = metadata("gpt-2", &[], &[]);
        meta.insert("tokenizer.ggml.model".into(), Value::String("bert".into()));
        assert!(GgufTokenizer::from_metadata(&meta).is_err());

        let mut meta = metadata("gpt-2", &[("a", 1)], &[]);
        assert!(
            GgufTokenizer::from_metadata(&meta).is_err(),
            "duplicate 'a'"
        );
        meta.insert("tokenizer.ggml.tokens".into(), Value::U32(3));
        assert!(GgufTokenizer::from_metadata(&meta).is_err());

        // Merges naming unknown tokens, without a space, or too long are ignored.
        let mut meta = metadata("gpt-2", &[], &[]);
        meta.insert(
            "tokenizer.ggml.merges".into(),
            Value::Array(vec![
                Value::String("zz zz".into()),
                Value::String("nospace".into()),
                Value::String(" ".into()),
                Value::String("a b".into()),
            ]),
        );
        let tok = GgufTokenizer::from_metadata(&meta).unwrap();
        assert_eq!(tok.encode("ab", false, true).unwrap().len(), 2);

        let mut meta = metadata("gpt-2", &[], &[]);
        meta.insert("tokenizer.ggml.add_bos_token".into(), Value::Bool(true));
        meta.insert("tokenizer.ggml.bos_token_id".into(), Value::U32(1 << 30));
        // Out-of-range BOS falls back to the default (11), which exists here.
        assert_eq!(
            GgufTokenizer::from_metadata(&meta).unwrap().bos_id(),
            Some(11)
        );
    }

    #[test]
    fn odd_input_does_not_panic() {
        let meta = metadata("qwen2", &[("<|im_end|>", 3)], &["Ġ Ġ", "ĠĠ ĠĠ"]);
        let tok = GgufTokenizer::from_metadata(&meta).unwrap();
        for text in [
            "\0\u{1}\u{7f}\u{85}\u{a0}\u{2028}\u{feff}",
            "<|im_end|<|im_end|>>",
            &" ".repeat(100_000),
            &"a".repeat(100_000),
            &"\n\r\t ".repeat(10_000),
            &"🦀".repeat(10_000),
        ] {
            for special in [false, true] {
                let ids = tok.encode(text, false, special).unwrap();
                let bytes: Vec<u8> = ids.iter().flat_map(|&i| tok.token_bytes(i)).collect();
                if !special {
                    assert_eq!(bytes, text.as_bytes());
                }
            }
        }
    }

    /// A SentencePiece vocabulary: `(text, type, score)`.
    fn spm_metadata(tokens: &[(&str, i32, f32)]) -> HashMap<String, Value> {
        let mut m = HashMap::new();
        m.insert("tokenizer.ggml.model".into(), Value::String("llama".into()));
        m.insert(
            "tokenizer.ggml.tokens".into(),
            Value::Array(tokens.iter().map(|t| Value::String(t.0.into())).collect()),
        );
        m.insert(
            "tokenizer.ggml.token_type".into(),
            Value::Array(tokens.iter().map(|t| Value::I32(t.1)).collect()),
        );
        m.insert(
            "tokenizer.ggml.scores".into(),
            Value::Array(tokens.iter().map(|t| Value::F32(t.2)).collect()),
        );
        m
    }

    #[test]
    fn sentencepiece_merges_by_score_with_byte_fallback() {
        let mut tokens = vec![
            ("<unk>", 2, 0.0),
            ("<s>", 3, 0.0),
            ("</s>", 3, 0.0),
            ("▁", 1, -1.0),
            ("a", 1, -2.0),
            ("b", 1, -3.0),
            ("ab", 1, -10.0),
            ("▁a", 1, -5.0),
            ("▁ab", 1, -4.0),
            ("\n", 4, 0.0),
        ];
        let bytes: Vec<String> = (0..=255u8).map(|b| format!("<0x{b:02X}>")).collect();
        tokens.extend(bytes.iter().map(|b| (b.as_str(), 6, 0.0)));
        let tok = GgufTokenizer::from_metadata(&spm_metadata(&tokens)).unwrap();
        let pieces = |text: &str| -> Vec<String> {
            let ids = tok.encode(text, false, true).unwrap();
            ids.iter().map(|&i| token_text(&tok, i)).collect()
        };
        // Default add_space_prefix: a leading "▁". "▁a" (-5) merges before "ab" (-10), then
        // "▁ab" (-4) is reachable from "▁a" + "b".
        assert_eq!(pieces("ab"), ["▁ab"]);
        assert_eq!(pieces("ab ab"), ["▁ab", "▁ab"]);
        // "é" is no token: its two bytes.
        assert_eq!(pieces("é"), ["▁", "<0xC3>", "<0xA9>"]);
        // User-defined tokens split the text even without parse_special; a space is prefixed
        // after every special piece, as llama.cpp does.
        assert_eq!(pieces("a\na"), ["▁a", "\n", "▁a"]);
        assert!(tok.add_bos());
        assert_eq!(tok.bos_id(), Some(1));
        assert_eq!(tok.bos_text(), "<s>");
        let ids = tok.encode("ab é", true, false).unwrap();
        assert_eq!(ids[0], 1);
        let bytes: Vec<u8> = ids.iter().flat_map(|&i| tok.token_bytes(i)).collect();
        assert_eq!(bytes, " ab é".as_bytes());
        assert!(tok.is_eog(2));
    }

    #[test]
    fn byte_level_table_is_a_bijection() {
        let chars: HashSet<char> = (0..=255u8).map(byte_level_char).collect();
        assert_eq!(chars.len(), 256);
        assert_eq!(byte_level_char(b' '), 'Ġ');
        assert_eq!(byte_level_char(b'\n'), 'Ċ');
        for b in 0..=255u8 {
            assert_eq!(byte_level_byte(byte_level_char(b)), Some(b));
        }
        assert_eq!(parse_byte_token("<0x0A>"), Some(10));
        assert_eq!(parse_byte_token("<0xZZ>"), None);
    }
}
