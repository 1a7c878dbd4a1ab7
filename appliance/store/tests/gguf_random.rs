//! F-gguf without nightly: the seed corpus of `fuzz/seeds/gguf` (and mutations of it: bit
//! flips, overwritten counts and lengths, truncations, splices) through the store's
//! validation. Every input must give facts or a typed error; a panic fails the test. The
//! cargo-fuzz target in `fuzz/` runs the same call under libFuzzer.
#![allow(clippy::unwrap_used)]

use hearth_store::ModelFacts;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>], mut b: Vec<u8>) -> Vec<u8> {
    for _ in 0..1 + rng.below(4) {
        match rng.below(6) {
            0 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
            }
            1 if b.len() >= 8 => {
                // An 8-byte count or length replaced by something extreme.
                let i = rng.below(b.len() - 7);
                let v: u64 = match rng.below(4) {
                    0 => u64::MAX,
                    1 => 1 << rng.below(64),
                    2 => rng.next(),
                    _ => 0,
                };
                b[i..i + 8].copy_from_slice(&v.to_le_bytes());
            }
            2 => b.truncate(rng.below(b.len() + 1)),
            3 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] = rng.next() as u8;
            }
            4 => {
                let other = &seeds[rng.below(seeds.len())];
                let cut = rng.below(b.len() + 1);
                let from = rng.below(other.len() + 1);
                b.truncate(cut);
                b.extend_from_slice(&other[from..]);
            }
            _ => {
                let at = rng.below(b.len() + 1);
                let n = rng.below(64);
                let junk: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                b.splice(at..at, junk);
            }
        }
    }
    b
}

#[test]
fn random_and_mutated_gguf_files_never_panic() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/gguf");
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    seeds.sort();
    assert!(seeds.len() >= 5, "seed corpus missing at {}", dir.display());
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("input.gguf");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let iterations: usize = std::env::var("HEARTH_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    let (mut ok, mut refused) = (0, 0);
    for seed in &seeds {
        std::fs::write(&path, seed).unwrap();
        match ModelFacts::read(&path) {
            Ok(_) => ok += 1,
            Err(_) => refused += 1,
        }
    }
    assert!(ok >= 2, "the valid seeds must validate");
    for _ in 0..iterations {
        let base = seeds[rng.below(seeds.len())].clone();
        let input = mutate(&mut rng, &seeds, base);
        std::fs::write(&path, &input).unwrap();
        match ModelFacts::read(&path) {
            Ok(f) => {
                assert!(f.file_size == input.len() as u64);
                ok += 1;
            }
            Err(e) => {
                assert!(!e.to_string().is_empty());
                refused += 1;
            }
        }
    }
    eprintln!("{ok} accepted, {refused} refused");
    assert!(refused > iterations / 2);
}
