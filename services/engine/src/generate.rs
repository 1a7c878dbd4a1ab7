//! The generation loop: prefill, then sample token by token until an end-of-generation token,
//! a stop string, the token limit or the caller says stop.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use crate::sampling::{Sampler, SamplingParams};
use crate::{EngineError, LoadedModel, Result};

/// What to generate, beyond the prompt.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GenerationParams {
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Generation ends before any of these strings; they are not part of the answer.
    pub stop: Vec<String>,
    pub sampling: SamplingParams,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model ended its turn or a stop string appeared.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// The caller stopped it.
    Cancelled,
}

/// The outcome of one generation.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Completion {
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Time spent on the prompt (up to the first sampled token).
    pub prefill: Duration,
    /// Time spent generating after the first token.
    pub decode: Duration,
}

impl LoadedModel {
    /// Generates an answer to `prompt_tokens`, handing text to `on_text` as it becomes valid
    /// UTF-8 and is known not to be part of a stop string. `on_text` is called after every
    /// token (possibly with ""), and generation stops when it returns `Break`.
    pub fn generate(
        &mut self,
        prompt_tokens: &[u32],
        params: &GenerationParams,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Completion> {
        params.sampling.validate()?;
        let context_length = self.info.context_length;
        if prompt_tokens.is_empty() {
            return Err(EngineError::InvalidRequest("the prompt is empty".into()));
        }
        if params.max_tokens == 0 || prompt_tokens.len() + params.max_tokens > context_length {
            return Err(EngineError::ContextLength {
                prompt_tokens: prompt_tokens.len(),
                max_tokens: params.max_tokens,
                context_length,
            });
        }
        let started = Instant::now();
        let mut sampler = Sampler::new(params.sampling.clone());
        let mut text = TextAssembler::new(&params.stop);
        let mut history = prompt_tokens.to_vec();
        self.forward.reset();
        let mut logits = self.forward.forward(prompt_tokens, 0)?;
        let mut prefill = None;
        let mut generated = 0;
        let finish_reason = loop {
            let token = sampler.sample(&logits, &history);
            prefill.get_or_insert_with(|| started.elapsed());
            generated += 1;
            if self.tokenizer.is_eog(token) {
                break FinishReason::Stop;
            }
            history.push(token);
            let (piece, hit_stop) = text.push(&self.tokenizer.token_bytes(token));
            if on_text(&piece).is_break() {
                break FinishReason::Cancelled;
            }
            if hit_stop {
                break FinishReason::Stop;
            }
            if generated == params.max_tokens {
                break FinishReason::Length;
            }
            logits = self.forward.forward(&[token], history.len() - 1)?;
        };
        if finish_reason != FinishReason::Cancelled {
            let rest = text.finish();
            if !rest.is_empty() {
                // The caller can no longer stop anything; its answer is ignored.
                let _ = on_text(&rest);
            }
        }
        let prefill = prefill.unwrap_or_default();
        Ok(Completion {
            finish_reason,
            prompt_tokens: prompt_tokens.len(),
            completion_tokens: generated,
            prefill,
            decode: started.elapsed().saturating_sub(prefill),
        })
    }
}

/// Turns token bytes into text that is safe to show: whole UTF-8 characters only, and never
/// a piece that could still turn out to be the start of a stop string.
struct TextAssembler<'a> {
    stop: &'a [String],
    /// Bytes of an unfinished UTF-8 character.
    partial: Vec<u8>,
    /// Text held back because it may be the start of a stop string.
    held: String,
    stopped: bool,
}

impl<'a> TextAssembler<'a> {
    fn new(stop: &'a [String]) -> Self {
        Self {
            stop,
            partial: Vec::new(),
            held: String::new(),
            stopped: false,
        }
    }

    /// Adds one token's bytes; returns the text now safe to emit and whether a stop string hit.
    fn push(&mut self, bytes: &[u8]) -> (String, bool) {
        if self.stopped {
            return (String::new(), true);
        }
        self.partial.extend_from_slice(bytes);
        let valid_up_to = match std::str::from_utf8(&self.partial) {
            Ok(s) => s.len(),
            // An incomplete character at the end waits for the next token; garbage is replaced.
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => {
                let lossy = String::from_utf8_lossy(&self.partial).into_owned();
                self.partial.clear();
                self.held.push_str(&lossy);
                return self.release();
            }
        };
        let complete: Vec<u8> = self.partial.drain(..valid_up_to).collect();
        self.held.push_str(&String::from_utf8_lossy(&complete));
        self.release()
    }

    fn release(&mut self) -> (String, bool) {
        let first_hit = self
            .stop
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        if let Some(at) = first_hit {
            self.held.truncate(at);
            self.stopped = true;
            return (std::mem::take(&mut self.held), true);
        }
        // Keep back the longest tail of `held` that is a prefix of some stop string.
        let keep = self
            .stop
            .iter()
            .map(|s| longest_suffix_prefix(&self.held, s))
            .max()
            .unwrap_or(0);
        let emit_to = self.held.len() - keep;
        let emitted = self.held[..emit_to].to_owned();
        self.held.drain(..emit_to);
        (emitted, false)
    }

    /// Whatever is left when generation ends without a stop string.
    fn finish(&mut self) -> String {
        if self.stopped {
            return String::new();
        }
        let mut rest = std::mem::take(&mut self.held);
        rest.push_str(&String::from_utf8_lossy(&self.partial));
        self.partial.clear();
        rest
    }
}

/// Length of the longest suffix of `text` that is a proper prefix of `stop`, on char boundaries.
fn longest_suffix_prefix(text: &str, stop: &str) -> usize {
    let max = stop.len().saturating_sub(1).min(text.len());
    (1..=max)
        .rev()
        .find(|&n| {
            let start = text.len() - n;
            text.is_char_boundary(start) && stop.starts_with(&text[start..])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(stop: &[&str], pieces: &[&[u8]]) -> (String, bool) {
        let stop: Vec<String> = stop.iter().map(|s| s.to_string()).collect();
        let mut t = TextAssembler::new(&stop);
        let mut out = String::new();
        for p in pieces {
            let (s, hit) = t.push(p);
            out.push_str(&s);
            if hit {
                return (out, true);
            }
        }
        out.push_str(&t.finish());
        (out, false)
    }

    #[test]
    fn multibyte_characters_split_across_tokens_are_joined() {
        let euro = "€".as_bytes();
        assert_eq!(
            feed(&[], &[b"a", &euro[..1], &euro[1..], b"b"]),
            ("a€b".into(), false)
        );
    }

    #[test]
    fn stop_string_split_across_tokens_is_cut_and_not_emitted() {
        assert_eq!(
            feed(&["END"], &[b"hello E", b"N", b"D more"]),
            ("hello ".into(), true)
        );
    }

    #[test]
    fn held_back_prefix_is_released_when_it_is_not_a_stop() {
        assert_eq!(feed(&["END"], &[b"E", b"N", b"X"]), ("ENX".into(), false));
    }

    #[test]
    fn invalid_utf8_becomes_replacement_characters() {
        assert_eq!(feed(&[], &[b"\xff", b"ok"]), ("\u{fffd}ok".into(), false));
    }

    #[test]
    fn suffix_prefix_respects_char_boundaries() {
        assert_eq!(longest_suffix_prefix("ab€", "€x"), 3);
        assert_eq!(longest_suffix_prefix("abc", "cd"), 1);
        assert_eq!(longest_suffix_prefix("abc", "x"), 0);
    }
}
