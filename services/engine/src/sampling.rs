//! Picking the next token from the logits.
//!
//! The chain follows llama.cpp's default order: repetition penalty, top-k, top-p, min-p,
//! temperature, then a draw. Temperature 0 is greedy and ignores the rest but the penalty.
//! The same seed with the same parameters and prompt gives the same tokens.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::{EngineError, Result};

/// How to choose tokens. Defaults match llama.cpp's.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// 0 picks the most likely token (greedy); higher spreads the choice.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probabilities add up to `top_p`; 1.0 keeps all.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one; 0 keeps all.
    pub min_p: f32,
    /// Divide (or multiply, when negative) the logit of recently seen tokens; 1.0 is off.
    pub repeat_penalty: f32,
    /// How many recent tokens the repetition penalty looks at.
    pub repeat_last_n: usize,
    /// Seed for the draw; `None` picks one at random.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: None,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding: always the most likely token.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }

    /// Rejects values that make no sense, so nothing out of range reaches the sampler.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str| Err(EngineError::InvalidRequest(what.to_owned()));
        if !self.temperature.is_finite() || !(0.0..=100.0).contains(&self.temperature) {
            return bad("temperature must be between 0 and 100");
        }
        if !self.top_p.is_finite() || !(0.0..=1.0).contains(&self.top_p) || self.top_p == 0.0 {
            return bad("top_p must be greater than 0 and at most 1");
        }
        if !self.min_p.is_finite() || !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p must be between 0 and 1");
        }
        if !self.repeat_penalty.is_finite() || self.repeat_penalty <= 0.0 {
            return bad("repeat_penalty must be greater than 0");
        }
        Ok(())
    }
}

/// A sampler with its own random state, one per generation.
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    /// Scratch space reused between steps: (token id, logit or probability).
    candidates: Vec<(u32, f32)>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let seed = params.seed.unwrap_or_else(|| rand::rng().random());
        Self {
            params,
            rng: StdRng::seed_from_u64(seed),
            candidates: Vec::new(),
        }
    }

    /// Picks the next token. `recent` holds the tokens seen so far (prompt and answer).
    pub fn sample(&mut self, logits: &[f32], recent: &[u32]) -> u32 {
        let p = &self.params;
        self.candidates.clear();
        self.candidates
            .extend(logits.iter().enumerate().map(|(i, &l)| {
                // A NaN logit is a fault upstream; it must never be picked.
                (i as u32, if l.is_nan() { f32::NEG_INFINITY } else { l })
            }));
        if self.candidates.is_empty() {
            return 0;
        }
        if p.repeat_penalty != 1.0 {
            let start = recent.len().saturating_sub(p.repeat_last_n);
            let mut seen: Vec<u32> = recent[start..].to_vec();
            seen.sort_unstable();
            seen.dedup();
            for id in seen {
                if let Some(c) = self.candidates.get_mut(id as usize) {
                    c.1 = if c.1 > 0.0 {
                        c.1 / p.repeat_penalty
                    } else {
                        c.1 * p.repeat_penalty
                    };
                }
            }
        }
        if p.temperature <= 0.0 {
            return argmax(&self.candidates);
        }
        // Sort by logit, highest first.
        self.candidates
            .sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if p.top_k > 0 && p.top_k < self.candidates.len() {
            self.candidates.truncate(p.top_k);
        }
        softmax_sorted(&mut self.candidates, 1.0);
        if p.top_p < 1.0 {
            let mut total = 0.0;
            let mut keep = self.candidates.len();
            for (i, c) in self.candidates.iter().enumerate() {
                total += c.1;
                if total >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
            self.candidates.truncate(keep.max(1));
        }
        if p.min_p > 0.0 {
            let floor = self.candidates[0].1 * p.min_p;
            let keep = self.candidates.iter().take_while(|c| c.1 >= floor).count();
            self.candidates.truncate(keep.max(1));
        }
        // Temperature on probabilities: p^(1/T), renormalised (same as scaling the logits).
        for c in &mut self.candidates {
            c.1 = c.1.ln();
        }
        softmax_sorted(&mut self.candidates, p.temperature);
        let mut draw: f32 = self.rng.random();
        for c in &self.candidates {
            if draw < c.1 {
                return c.0;
            }
            draw -= c.1;
        }
        self.candidates[self.candidates.len() - 1].0
    }
}

fn argmax(candidates: &[(u32, f32)]) -> u32 {
    let mut best = candidates[0];
    for &c in &candidates[1..] {
        if c.1 > best.1 {
            best = c;
        }
    }
    best.0
}

/// Turns logits (sorted highest first) into probabilities at `temperature`.
fn softmax_sorted(candidates: &mut [(u32, f32)], temperature: f32) {
    let max = candidates[0].1;
    let mut sum = 0.0;
    for c in candidates.iter_mut() {
        let e = ((c.1 - max) / temperature).exp();
        c.1 = if e.is_finite() { e } else { 0.0 };
        sum += c.1;
    }
    if sum > 0.0 {
        for c in candidates.iter_mut() {
            c.1 /= sum;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![1.0, 3.0, 2.5, -1.0, 0.5, 2.9]
    }

    #[test]
    fn greedy_picks_the_largest_logit() {
        let mut s = Sampler::new(SamplingParams::greedy());
        assert_eq!(s.sample(&logits(), &[]), 1);
    }

    #[test]
    fn repetition_penalty_moves_greedy_off_a_seen_token() {
        let params = SamplingParams {
            repeat_penalty: 1.5,
            ..SamplingParams::greedy()
        };
        let mut s = Sampler::new(params);
        assert_eq!(s.sample(&logits(), &[1]), 5);
    }

    #[test]
    fn same_seed_same_tokens_and_different_seeds_differ() {
        let params = |seed| SamplingParams {
            temperature: 1.5,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: Some(seed),
            ..SamplingParams::default()
        };
        let run = |seed| {
            let mut s = Sampler::new(params(seed));
            (0..64)
                .map(|_| s.sample(&logits(), &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn top_k_one_is_greedy() {
        let params = SamplingParams {
            temperature: 5.0,
            top_k: 1,
            seed: Some(1),
            ..SamplingParams::default()
        };
        let mut s = Sampler::new(params);
        for _ in 0..50 {
            assert_eq!(s.sample(&logits(), &[]), 1);
        }
    }

    #[test]
    fn top_p_and_min_p_cut_the_tail() {
        // Token 3 (logit -1) is far below the others: never drawn with min_p 0.2.
        let params = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.2,
            seed: Some(3),
            ..SamplingParams::default()
        };
        let mut s = Sampler::new(params);
        for _ in 0..500 {
            let t = s.sample(&logits(), &[]);
            assert!(![3, 0, 4].contains(&t), "drew {t}");
        }
        // top_p 0.5 keeps only the top token and the one just under it.
        let params = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.5,
            min_p: 0.0,
            seed: Some(4),
            ..SamplingParams::default()
        };
        let mut s = Sampler::new(params);
        for _ in 0..500 {
            assert!([1, 5].contains(&s.sample(&logits(), &[])));
        }
    }

    #[test]
    fn nan_logits_never_win() {
        let mut s = Sampler::new(SamplingParams {
            seed: Some(1),
            ..SamplingParams::default()
        });
        let l = vec![f32::NAN, 1.0, f32::NAN, 0.0];
        for _ in 0..100 {
            assert!([1, 3].contains(&s.sample(&l, &[])));
        }
    }

    #[test]
    fn validate_rejects_nonsense() {
        for bad in [
            SamplingParams {
                temperature: f32::NAN,
                ..Default::default()
            },
            SamplingParams {
                temperature: -1.0,
                ..Default::default()
            },
            SamplingParams {
                top_p: 0.0,
                ..Default::default()
            },
            SamplingParams {
                min_p: 2.0,
                ..Default::default()
            },
            SamplingParams {
                repeat_penalty: 0.0,
                ..Default::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        assert!(SamplingParams::default().validate().is_ok());
    }
}
