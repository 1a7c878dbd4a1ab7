//! The SentencePiece ("llama") vocabulary as a [`tokenizers::Model`], tokenizing the way
//! llama.cpp's `llm_tokenizer_spm_session` does.
//!
//! Start from single characters and repeatedly merge the adjacent pair whose concatenation is
//! a token, taking the best-scoring such token first (leftmost on ties); characters that are no
//! token become their `<0xXX>` byte tokens. The rest of the pipeline (normalizer, special
//! tokens) stays in [`tokenizers::TokenizerImpl`].
//!
//! Why not the crate's BPE: it needs every split of every token as a ranked merge (half a
//! million for a 262k vocabulary) and keeps each token text twice in hash maps, ~66 MiB for
//! Gemma 3. Here the texts sit once in one buffer and the index holds only ids.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::hash::BuildHasher;
use std::path::{Path, PathBuf};

use hashbrown::hash_table::Entry;
use hashbrown::{DefaultHashBuilder, HashTable};
use tokenizers::{AddedToken, Model, Token, Trainer};

use crate::{EngineError, Result};

/// A SentencePiece vocabulary with scores: token texts, scores, and a text-to-id index.
pub struct SpmModel {
    /// Every token's text back to back; token `id` is `buffer[starts[id]..starts[id + 1]]`.
    buffer: String,
    /// One more entry than there are tokens.
    starts: Vec<u32>,
    scores: Vec<f32>,
    /// Ids, found by hashing a text and comparing it with the id's slice of `buffer`.
    index: HashTable<u32>,
    hasher: DefaultHashBuilder,
    /// The `<0xXX>` tokens, by byte.
    byte_ids: Box<[Option<u32>; 256]>,
}

impl std::fmt::Debug for SpmModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpmModel")
            .field("vocab_size", &self.scores.len())
            .finish_non_exhaustive()
    }
}

impl SpmModel {
    /// `texts[id]` with `scores[id]`; texts must be unique.
    pub fn new<S: AsRef<str>>(texts: &[S], scores: Vec<f32>) -> Result<Self> {
        if texts.len() != scores.len() {
            return Err(EngineError::Tokenizer(format!(
                "{} token texts but {} scores",
                texts.len(),
                scores.len()
            )));
        }
        let total: usize = texts.iter().map(|t| t.as_ref().len()).sum();
        if u32::try_from(total).is_err() || u32::try_from(texts.len()).is_err() {
            return Err(EngineError::Tokenizer(format!(
                "vocabulary too large: {} tokens, {total} bytes of text",
                texts.len()
            )));
        }
        let mut buffer = String::with_capacity(total);
        let mut starts = Vec::with_capacity(texts.len() + 1);
        for text in texts {
            starts.push(buffer.len() as u32);
            buffer.push_str(text.as_ref());
        }
        starts.push(buffer.len() as u32);

        let text_of = |id: u32| {
            &buffer.as_bytes()[starts[id as usize] as usize..starts[id as usize + 1] as usize]
        };
        let hasher = DefaultHashBuilder::default();
        let mut index = HashTable::with_capacity(texts.len());
        for id in 0..texts.len() as u32 {
            let text = text_of(id);
            let hash = hasher.hash_one(text);
            match index.entry(
                hash,
                |&other| text_of(other) == text,
                |&other| hasher.hash_one(text_of(other)),
            ) {
                Entry::Occupied(_) => {
                    return Err(EngineError::Tokenizer(format!(
                        "duplicate token in vocabulary: {:?} (id {id})",
                        String::from_utf8_lossy(text)
                    )));
                }
                Entry::Vacant(slot) => {
                    slot.insert(id);
                }
            }
        }
        let mut this = Self {
            buffer,
            starts,
            // llama.cpp compares scores with `<` and `==`: -0.0 ties with 0.0.
            scores: scores.into_iter().map(|s| s + 0.0).collect(),
            index,
            hasher,
            byte_ids: Box::new([None; 256]),
        };
        // llama.cpp falls back to the one-byte text when `<0xXX>` is missing; that text is a
        // token only for ASCII bytes, whose characters are then tokens themselves and never
        // fall back.
        for byte in 0..=255u8 {
            this.byte_ids[usize::from(byte)] = this.token_id(&format!("<0x{byte:02X}>"));
        }
        Ok(this)
    }

    /// Token `id`'s text; `id` must be in range.
    fn text(&self, id: u32) -> &str {
        let id = id as usize;
        &self.buffer[self.starts[id] as usize..self.starts[id + 1] as usize]
    }

    fn token_id(&self, text: &str) -> Option<u32> {
        self.token_id_bytes(text.as_bytes())
    }

    /// Bytes rather than `str`: the merge loop's slices then skip the char-boundary checks.
    fn token_id_bytes(&self, text: &[u8]) -> Option<u32> {
        let bytes = self.buffer.as_bytes();
        let hash = self.hasher.hash_one(text);
        self.index
            .find(hash, |&id| {
                let id = id as usize;
                &bytes[self.starts[id] as usize..self.starts[id + 1] as usize] == text
            })
            .copied()
    }

    /// llama.cpp's SentencePiece merge loop over `text`: `(id, byte range)` per token.
    fn encode(&self, text: &str) -> Result<Vec<(u32, usize, usize)>> {
        if u32::try_from(text.len()).is_err() {
            return Err(EngineError::Tokenizer(format!(
                "cannot tokenize {} bytes at once",
                text.len()
            )));
        }
        // One symbol per character, linked to its neighbours; a merged-away symbol has len 0.
        let mut symbols: Vec<Symbol> = text
            .char_indices()
            .enumerate()
            .map(|(i, (start, c))| Symbol {
                start: start as u32,
                len: c.len_utf8() as u32,
                prev: if i == 0 { NONE } else { i as u32 - 1 },
                next: i as u32 + 1,
            })
            .collect();
        let n = symbols.len();
        if let Some(last) = symbols.last_mut() {
            last.next = NONE;
        }
        // The pair starting at symbol `left` (which has a right neighbour), if it is a token.
        let bigram = |symbols: &[Symbol], left: u32| -> Option<Bigram> {
            let l = &symbols[left as usize];
            let size = l.len + symbols[l.next as usize].len;
            let start = l.start as usize;
            let id = self.token_id_bytes(&text.as_bytes()[start..start + size as usize])?;
            Some(Bigram {
                score: self.scores[id as usize],
                left,
                size,
            })
        };
        let mut queue: BinaryHeap<Bigram> = (1..n as u32)
            .filter_map(|i| bigram(&symbols, i - 1))
            .collect();
        while let Some(top) = queue.pop() {
            let left = symbols[top.left as usize];
            // Stale: one side was merged into something else since this pair was queued (a
            // grown left symbol no longer fits `size` with any neighbour, a merged-away one is
            // empty, a grown right one makes the sum too big), as llama.cpp's size check.
            if left.len == 0 || left.next == NONE {
                continue;
            }
            let right = symbols[left.next as usize];
            if left.len + right.len != top.size {
                continue;
            }
            symbols[left.next as usize].len = 0;
            let merged = &mut symbols[top.left as usize];
            merged.len = top.size;
            merged.next = right.next;
            if right.next != NONE {
                symbols[right.next as usize].prev = top.left;
                if let Some(pair) = bigram(&symbols, top.left) {
                    queue.push(pair);
                }
            }
            if left.prev != NONE
                && let Some(pair) = bigram(&symbols, left.prev)
            {
                queue.push(pair);
            }
        }

        let mut out = Vec::with_capacity(n);
        let mut at = if n > 0 { 0 } else { NONE };
        while at != NONE {
            let Symbol {
                start, len, next, ..
            } = symbols[at as usize];
            let (start, end) = (start as usize, (start + len) as usize);
            let piece = &text[start..end];
            // Merged symbols are tokens by construction; only single characters can be unknown.
            if let Some(id) = self.token_id(piece) {
                out.push((id, start, end));
            } else {
                for (j, byte) in piece.bytes().enumerate() {
                    let id = self.byte_ids[usize::from(byte)].ok_or_else(|| {
                        EngineError::Tokenizer(format!(
                            "{piece:?} is not in the vocabulary and byte {byte:#04X} has no token"
                        ))
                    })?;
                    out.push((id, start + j, start + j + 1));
                }
            }
            at = next;
        }
        Ok(out)
    }
}

/// No neighbour.
const NONE: u32 = u32::MAX;

/// A run of the text, linked to its neighbours by index (`NONE` at the ends).
#[derive(Clone, Copy)]
struct Symbol {
    start: u32,
    len: u32,
    prev: u32,
    next: u32,
}

/// Symbol `left` and its right neighbour, whose concatenation (`size` bytes) is a token with
/// `score`.
struct Bigram {
    score: f32,
    left: u32,
    size: u32,
}

impl Ord for Bigram {
    /// Best score first, then leftmost (llama.cpp's `llm_bigram_spm::comparator`).
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Bigram {}

impl Model for SpmModel {
    type Trainer = NoTrainer<Self>;

    fn tokenize(&self, sequence: &str) -> tokenizers::Result<Vec<Token>> {
        Ok(self
            .encode(sequence)?
            .into_iter()
            .map(|(id, start, end)| Token::new(id, self.text(id).to_owned(), (start, end)))
            .collect())
    }

    fn token_to_id(&self, token: &str) -> Option<u32> {
        self.token_id(token)
    }

    fn id_to_token(&self, id: u32) -> Option<String> {
        ((id as usize) < self.scores.len()).then(|| self.text(id).to_owned())
    }

    fn get_vocab(&self) -> HashMap<String, u32> {
        (0..self.scores.len() as u32)
            .map(|id| (self.text(id).to_owned(), id))
            .collect()
    }

    fn get_vocab_size(&self) -> usize {
        self.scores.len()
    }

    fn save(&self, _folder: &Path, _prefix: Option<&str>) -> tokenizers::Result<Vec<PathBuf>> {
        Err(Box::new(EngineError::Tokenizer(
            "a vocabulary built from GGUF metadata is not saved".to_owned(),
        )))
    }

    fn get_trainer(&self) -> NoTrainer<Self> {
        NoTrainer::default()
    }
}

/// [`Model`] requires a trainer; vocabularies come from GGUF files and are never trained.
pub struct NoTrainer<M>(std::marker::PhantomData<fn() -> M>);

impl<M> Default for NoTrainer<M> {
    fn default() -> Self {
        Self(std::marker::PhantomData)
    }
}

impl<M: Model> Trainer for NoTrainer<M> {
    type Model = M;

    fn should_show_progress(&self) -> bool {
        false
    }

    fn train(&self, _model: &mut M) -> tokenizers::Result<Vec<AddedToken>> {
        Err(Box::new(EngineError::Tokenizer(
            "GGUF vocabularies cannot be trained".to_owned(),
        )))
    }

    fn feed<I, S, F>(&mut self, _iterator: I, _process: F) -> tokenizers::Result<()>
    where
        I: Iterator<Item = S> + Send,
        S: AsRef<str> + Send,
        F: Fn(&str) -> tokenizers::Result<Vec<String>> + Sync,
    {
        Err(Box::new(EngineError::Tokenizer(
            "GGUF vocabularies cannot be trained".to_owned(),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(text, score)` tokens, then the 256 `<0xXX>` byte tokens when `bytes`.
    fn model(tokens: &[(&str, f32)], bytes: bool) -> SpmModel {
        let mut texts: Vec<String> = tokens.iter().map(|t| t.0.to_owned()).collect();
        let mut scores: Vec<f32> = tokens.iter().map(|t| t.1).collect();
        if bytes {
            texts.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
            scores.resize(texts.len(), 0.0);
        }
        SpmModel::new(&texts, scores).unwrap()
    }

    fn pieces(model: &SpmModel, text: &str) -> Vec<String> {
        let tokens = model.tokenize(text).unwrap();
        // Offsets cover the text in order.
        let mut at = 0;
        for token in &tokens {
            assert_eq!(token.offsets.0, at, "{text:?}");
            at = token.offsets.1;
        }
        assert_eq!(at, text.len());
        tokens.into_iter().map(|t| t.value).collect()
    }

    #[test]
    fn best_score_merges_first() {
        let m = model(
            &[
                ("a", -1.0),
                ("b", -1.0),
                ("c", -1.0),
                ("ab", -5.0),
                ("bc", -2.0),
            ],
            true,
        );
        assert_eq!(pieces(&m, "abc"), ["a", "bc"]);
        // A worse pair is merged once the better one is no longer there.
        let m = model(
            &[
                ("a", -1.0),
                ("b", -1.0),
                ("c", -1.0),
                ("ab", -5.0),
                ("bc", -2.0),
                ("abc", -9.0),
            ],
            true,
        );
        assert_eq!(pieces(&m, "abc"), ["abc"]);
        assert_eq!(pieces(&m, ""), Vec::<String>::new());
    }

    #[test]
    fn ties_go_to_the_leftmost_pair() {
        // Different tokens with the same score: position decides, not id (the crate BPE this
        // replaced ranked them by id and would give "a", "bc").
        let m = model(
            &[
                ("a", -1.0),
                ("b", -1.0),
                ("c", -1.0),
                ("bc", -3.0),
                ("ab", -3.0),
            ],
            true,
        );
        assert_eq!(pieces(&m, "abc"), ["ab", "c"]);
        assert_eq!(pieces(&m, "bcabc"), ["bc", "ab", "c"]);
        // The same token from overlapping pairs.
        let m = model(&[("a", -1.0), ("aa", -2.0)], true);
        assert_eq!(pieces(&m, "aaaaa"), ["aa", "aa", "a"]);
        // -0.0 ties with 0.0, as llama.cpp's float comparison has it.
        let m = model(
            &[
                ("a", -1.0),
                ("b", -1.0),
                ("c", -1.0),
                ("bc", -0.0),
                ("ab", 0.0),
            ],
            true,
        );
        assert_eq!(pieces(&m, "abc"), ["ab", "c"]);
    }

    #[test]
    fn unknown_characters_fall_back_to_bytes_but_still_merge() {
        let m = model(&[("a", -1.0), ("éa", -1.0), ("x", -1.0)], true);
        // "é" alone is no token: its UTF-8 bytes.
        assert_eq!(pieces(&m, "xé"), ["x", "<0xC3>", "<0xA9>"]);
        // llama.cpp still merges it with a neighbour when the pair is a token.
        assert_eq!(pieces(&m, "xéa"), ["x", "éa"]);
        assert_eq!(pieces(&m, "🦀").len(), 4);
        // No byte tokens: an unknown character is an error, not silently dropped.
        let m = model(&[("a", -1.0)], false);
        assert_eq!(pieces(&m, "aa"), ["a", "a"]);
        assert!(m.tokenize("aé").is_err());
    }

    #[test]
    fn vocabulary_lookups() {
        let m = model(&[("a", -1.0), ("▁b", -2.0)], true);
        assert_eq!(m.get_vocab_size(), 258);
        assert_eq!(m.token_to_id("▁b"), Some(1));
        assert_eq!(m.token_to_id("<0x0A>"), Some(2 + 10));
        assert_eq!(m.token_to_id("b"), None);
        assert_eq!(m.id_to_token(1).as_deref(), Some("▁b"));
        assert_eq!(m.id_to_token(258), None);
        let vocab = m.get_vocab();
        assert_eq!(vocab.len(), 258);
        assert_eq!(vocab["<0xFF>"], 257);
        assert!(SpmModel::new(&["a", "b", "a"], vec![0.0; 3]).is_err());
        assert!(SpmModel::new(&["a"], vec![]).is_err());
    }

    /// The merge loop written the slow, obvious way: merge the best (leftmost on ties)
    /// adjacent pair that is a token until none is.
    fn reference(m: &SpmModel, text: &str) -> Vec<u32> {
        let mut parts: Vec<String> = text.chars().map(String::from).collect();
        loop {
            let mut best: Option<(f32, usize)> = None;
            for i in 1..parts.len() {
                let joined = format!("{}{}", parts[i - 1], parts[i]);
                if let Some(id) = m.token_id(&joined) {
                    let score = m.scores[id as usize];
                    if best.is_none_or(|(s, _)| score > s) {
                        best = Some((score, i));
                    }
                }
            }
            let Some((_, i)) = best else { break };
            let right = parts.remove(i);
            parts[i - 1].push_str(&right);
        }
        parts
            .iter()
            .flat_map(|p| match m.token_id(p) {
                Some(id) => vec![id],
                None => p
                    .bytes()
                    .map(|b| m.byte_ids[usize::from(b)].unwrap())
                    .collect(),
            })
            .collect()
    }

    #[test]
    fn matches_the_obvious_algorithm_on_random_text() {
        // xorshift: deterministic, no dependency.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let alphabet = ["a", "b", "c", "▁", "é"];
        for _ in 0..50 {
            // Random tokens over the alphabet with few distinct scores, so ties are common.
            let mut tokens: Vec<String> = alphabet[..4].iter().map(|s| (*s).to_owned()).collect();
            for _ in 0..30 {
                let len = 2 + next(4);
                let token: String = (0..len).map(|_| alphabet[next(alphabet.len())]).collect();
                if !tokens.contains(&token) {
                    tokens.push(token);
                }
            }
            let scored: Vec<(&str, f32)> = tokens
                .iter()
                .map(|t| (t.as_str(), -(next(4) as f32)))
                .collect();
            let m = model(&scored, true);
            for _ in 0..20 {
                let text: String = (0..next(40))
                    .map(|_| alphabet[next(alphabet.len())])
                    .collect();
                let got: Vec<u32> = m.tokenize(&text).unwrap().iter().map(|t| t.id).collect();
                assert_eq!(got, reference(&m, &text), "{text:?} with {scored:?}");
            }
        }
    }
}
