//! Greedy generation against llama.cpp's golden outputs (`shared/fixtures/golden/`).
//!
//! For each fixture whose model is present (under `$HEARTH_MODEL_DIR` or
//! `~/.cache/hearth/models/`, with the recorded sha256), every case's `prompt_tokens` is fed
//! through `model::load`'s forward pass and decoded greedily, then compared as the fixture
//! README's "How a test should compare" says (lenient variant): steps 0-15 equal except that a
//! step in `near_tie_steps` may flip to a near-tie; after that, the first divergence must be a
//! near-tie (in llama.cpp's top-5, within 0.02 of its top-1 prob).
//!
//! The README's optional check, the engine's top-1 probability within 0.02 of llama.cpp's
//! before any divergence, is enforced for every fixture, and tighter: within
//! [`PROB_TOLERANCE`]. The engine now rounds as the fixtures' x86 AVX-512 build does in every
//! step of these three models (its block kernels' lanes, the repacked Q4_K gemv and gemm, the
//! tiled K-quant matmul of prompts, the fused GELU table, attention, SiLU and RoPE), so on
//! gemma3's raw-english prompt every intermediate result of the forward pass, logits
//! included, is bit for bit llama.cpp's (compared with `llama-eval-callback`), and every case
//! agrees within ~0.0015. A tolerance of 0.005 keeps room for the softmax's own rounding while a
//! kernel that rounds differently (as the plain K-quant arithmetic did, by up to 0.13 on
//! gemma3) fails.
//!
//! `HEARTH_GOLDEN_KV=q8_0` (or `f16`) runs every case with that KV cache type in report mode:
//! nothing fails on divergence; per case it prints how many steps match llama.cpp's greedy
//! tokens before the first divergence, how many match when each step is fed llama.cpp's token
//! (teacher forcing), and the largest difference between llama.cpp's top-1 probability and the
//! engine's probability for that token. This is how the q8_0 cache's quality effect is stated
//! (ARCHITECTURE.md, "KV cache").
//!
//! A missing or different model file skips (prints why) unless `HEARTH_REQUIRE_MODELS=1`.
//! Run it in release: `cargo test --release -p hearth-engine --test golden_generate`.
#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use hearth_engine::gguf::GgufModelFile;
use hearth_engine::model;
use hearth_engine::{EngineConfig, KvCacheType};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Steps that must match exactly (unless listed as near-ties).
const STRICT_STEPS: usize = 16;
/// How far below llama.cpp's top-1 probability a flipped token's probability may be.
const NEAR_TIE: f64 = 0.02;
/// How far the engine's top-1 probability may be from llama.cpp's (see the module docs).
const PROB_TOLERANCE: f64 = 0.005;

/// `$HEARTH_GOLDEN_DIR`, else `shared/fixtures/golden` beside the checkout.
fn fixtures_dir() -> PathBuf {
    std::env::var_os("HEARTH_GOLDEN_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/golden"),
        PathBuf::from,
    )
}

fn model_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("HEARTH_MODEL_DIR") {
        dirs.push(PathBuf::from(d));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".cache/hearth/models"));
    }
    dirs
}

fn require_models() -> bool {
    std::env::var("HEARTH_REQUIRE_MODELS").is_ok_and(|v| v == "1")
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// The model file for `fixture`, or why it cannot be used.
fn find_model(fixture: &Value) -> Result<std::result::Result<PathBuf, String>> {
    let name = fixture["model"].as_str().context("fixture has no model")?;
    let want = fixture["sha256"]
        .as_str()
        .context("fixture has no sha256")?;
    let mut why = Vec::new();
    for dir in model_dirs() {
        let path = dir.join(name);
        if !path.is_file() {
            why.push(format!("{} not found", path.display()));
            continue;
        }
        let got = sha256_file(&path)?;
        if got == want {
            return Ok(Ok(path));
        }
        why.push(format!(
            "{} has sha256 {got}, fixture wants {want}",
            path.display()
        ));
    }
    Ok(Err(why.join("; ")))
}

fn softmax_top1(logits: &[f32]) -> (u32, f64) {
    let (mut best, mut max) = (0usize, f32::NEG_INFINITY);
    for (i, &l) in logits.iter().enumerate() {
        if l > max {
            best = i;
            max = l;
        }
    }
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    (u32::try_from(best).unwrap(), 1.0 / sum)
}

/// Outcome of one case.
struct CaseResult {
    /// Steps that produced llama.cpp's token.
    matched: usize,
    steps: usize,
    note: String,
    max_prob_diff: f64,
}

fn ids(v: &Value) -> Result<Vec<u32>> {
    v.as_array()
        .context("expected an array of ids")?
        .iter()
        .map(|x| {
            x.as_u64()
                .and_then(|x| u32::try_from(x).ok())
                .context("bad id")
        })
        .collect()
}

/// `top[step]` as (id, prob) pairs.
fn top_at(case: &Value, step: usize) -> Result<Vec<(u32, f64)>> {
    case["top"][step]
        .as_array()
        .context("missing top entry")?
        .iter()
        .map(|pair| {
            let id = pair[0].as_u64().context("top id")?;
            let p = pair[1].as_f64().context("top prob")?;
            Ok((u32::try_from(id)?, p))
        })
        .collect()
}

fn run_case(forward: &mut dyn model::Forward, case: &Value, eog: &[u32]) -> Result<CaseResult> {
    let prompt = ids(&case["prompt_tokens"])?;
    let golden = ids(&case["greedy_tokens"])?;
    let near_ties: Vec<usize> = case["near_tie_steps"]
        .as_array()
        .context("near_tie_steps")?
        .iter()
        .filter_map(|v| v.as_u64().and_then(|v| usize::try_from(v).ok()))
        .collect();
    forward.reset();
    let mut logits = forward.forward(&prompt, 0)?;
    let mut pos = prompt.len();
    let mut max_prob_diff = 0f64;
    for (step, &want) in golden.iter().enumerate() {
        let (got, prob) = softmax_top1(&logits);
        let top = top_at(case, step)?;
        if got != want {
            let top1 = top[0].1;
            let in_top = top.iter().find(|(id, _)| *id == got);
            let near_tie = matches!(in_top, Some(&(_, p)) if p >= top1 - NEAR_TIE);
            let allowed = step >= STRICT_STEPS || near_ties.contains(&step);
            let got_p = in_top.map_or("not in top-5".to_owned(), |(_, p)| format!("{p}"));
            if !(allowed && near_tie) {
                bail!(
                    "step {step}: engine picked {got} (llama.cpp prob {got_p}, engine prob {prob:.6}), \
                     llama.cpp picked {want} (prob {top1}); near-tie: {near_tie}, \
                     step allows a flip: {allowed}"
                );
            }
            return Ok(CaseResult {
                matched: step,
                steps: golden.len(),
                note: format!(
                    "near-tie flip at step {step}: {got} (llama.cpp {got_p}) for {want} ({top1})"
                ),
                max_prob_diff,
            });
        }
        let diff = (prob - top[0].1).abs();
        max_prob_diff = max_prob_diff.max(diff);
        ensure!(
            diff <= PROB_TOLERANCE,
            "step {step}: token {got} has prob {prob:.6} here, {} in llama.cpp",
            top[0].1
        );
        if eog.contains(&got) {
            ensure!(
                step + 1 == golden.len(),
                "step {step}: end-of-generation token {got} before the end"
            );
            break;
        }
        if step + 1 < golden.len() {
            logits = forward.forward(&[got], pos)?;
            pos += 1;
        }
    }
    Ok(CaseResult {
        matched: golden.len(),
        steps: golden.len(),
        note: "all steps match".into(),
        max_prob_diff,
    })
}

/// `HEARTH_GOLDEN_KV`: the KV cache type of report mode, when set.
fn report_kv() -> Result<Option<KvCacheType>> {
    match std::env::var("HEARTH_GOLDEN_KV") {
        Ok(v) => v
            .parse()
            .map(Some)
            .map_err(|e: String| anyhow::anyhow!("HEARTH_GOLDEN_KV: {e}")),
        Err(_) => Ok(None),
    }
}

/// One case's agreement with llama.cpp, for report mode.
struct Agreement {
    /// Steps equal to llama.cpp's greedy tokens before the first divergence.
    free_run: usize,
    /// Steps whose top-1 is llama.cpp's token when every step is fed llama.cpp's token.
    forced: usize,
    steps: usize,
    /// Largest |llama.cpp's top-1 prob − the engine's prob of that token| over all steps.
    max_prob_diff: f64,
    /// The first divergence: step, whether it is a near-tie (the engine's pick in llama.cpp's
    /// top-5 within [`NEAR_TIE`] of its top-1), the engine's and llama.cpp's tokens.
    first: Option<(usize, bool, u32, u32)>,
}

/// Runs `case` with teacher forcing and measures its [`Agreement`].
fn agreement(forward: &mut dyn model::Forward, case: &Value) -> Result<Agreement> {
    let prompt = ids(&case["prompt_tokens"])?;
    let golden = ids(&case["greedy_tokens"])?;
    forward.reset();
    let mut logits = forward.forward(&prompt, 0)?;
    let mut pos = prompt.len();
    let mut a = Agreement {
        free_run: golden.len(),
        forced: 0,
        steps: golden.len(),
        max_prob_diff: 0.0,
        first: None,
    };
    for (step, &want) in golden.iter().enumerate() {
        let (got, _) = softmax_top1(&logits);
        let top = top_at(case, step)?;
        let max = logits.iter().fold(f32::NEG_INFINITY, |m, &l| m.max(l));
        let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
        let p_want = f64::from(logits[want as usize] - max).exp() / sum;
        a.max_prob_diff = a.max_prob_diff.max((p_want - top[0].1).abs());
        if got == want {
            a.forced += 1;
        } else if a.first.is_none() {
            let near = top
                .iter()
                .any(|&(id, p)| id == got && p >= top[0].1 - NEAR_TIE);
            a.first = Some((step, near, got, want));
            a.free_run = step;
        }
        if step + 1 < golden.len() {
            logits = forward.forward(&[want], pos)?;
            pos += 1;
        }
    }
    Ok(a)
}

/// Report mode (see the module docs): every case of `file_name` with a `kv` cache.
fn report_fixture(
    file_name: &str,
    fixture: &Value,
    model_path: &Path,
    kv: KvCacheType,
) -> Result<()> {
    let file = GgufModelFile::open(model_path)?;
    let config = EngineConfig {
        kv_cache: kv,
        ..EngineConfig::default()
    };
    let mut forward = model::load(&file, &config)?;
    let tokenizer = hearth_engine::tokenizer::GgufTokenizer::from_gguf(&file)?;
    let text = |id| String::from_utf8_lossy(&tokenizer.token_bytes(id)).into_owned();
    let (mut free, mut forced, mut steps, mut worst) = (0, 0, 0, 0f64);
    let cases = fixture["cases"].as_array().context("cases")?;
    for case in cases {
        let id = case["id"].as_str().unwrap_or("?");
        let a = agreement(forward.as_mut(), case)?;
        let first = match a.first {
            None => "no divergence".to_owned(),
            Some((step, near, got, want)) => format!(
                "first divergence at step {step} ({}): {:?} for llama.cpp's {:?}",
                if near { "near-tie" } else { "NOT a near-tie" },
                text(got),
                text(want)
            ),
        };
        eprintln!(
            "  [{kv}] {id}: {}/{} steps before divergence, {}/{} teacher-forced, max top-1 prob diff {:.4}; {first}",
            a.free_run, a.steps, a.forced, a.steps, a.max_prob_diff
        );
        free += a.free_run;
        forced += a.forced;
        steps += a.steps;
        worst = worst.max(a.max_prob_diff);
    }
    eprintln!(
        "{file_name} [{kv} KV cache]: {} cases, {free}/{steps} steps before divergence, {forced}/{steps} teacher-forced, max top-1 prob diff {worst:.4}",
        cases.len()
    );
    Ok(())
}

/// Cases that still diverge from llama.cpp beyond the near-tie rule, named one by one.
/// Every other case must pass. A listed case that passes is reported so it can come off the
/// list; it does not fail the test.
///
/// SmolLM2 (Q4_1, Q8_0) has none: its block kernels have the lane structure of ggml's x86
/// kernels (the AVX-512 build runs the AVX2 code for these types), and attention, SiLU and
/// RoPE follow the fixtures' AVX-512 build (`services/engine/src/model/ggml_math.rs`).
const SMOLLM2_KNOWN_DIVERGENT: &[&str] = &[];

/// Qwen2.5-Coder (Q4_K_M mix): none. Its Q5_0/Q8_0 products have ggml's lanes; its Q4_K
/// `ffn_down` matrices (896 rows) take the repacked gemv/gemm arithmetic and its Q6_K ones the
/// tiled matmul's for prompts, as the fixtures' build did (`quant.rs`, `k_sums`).
const QWEN_KNOWN_DIVERGENT: &[&str] = &[];

/// gemma-3-270m (Q4_K_M mix, Q8_0 embeddings tied to the output): none. The chat cases run
/// too: this test feeds each case's recorded `prompt_tokens`, which llama.cpp rendered with
/// its ChatML fallback (the GGUF has no template); whether Hearth renders that fallback itself
/// is `golden_tokenize`'s concern. No prompt reaches the 512-token sliding window, so the
/// window itself is covered by the synthetic model test (`tests/synthetic_arch.rs`).
///
/// raw-english used to flip at step 1 (to 37423, llama.cpp 0.0753, for 2523, 0.1027). Dumping
/// the tensors of llama.cpp's graph (`llama-eval-callback`) and the engine's showed the three
/// places that rounded differently: the Q4_K `attn_output`/`ffn_down` matrices (640 rows)
/// are repacked there and a prompt's groups of four rows take the repacked gemm; the Q6_K
/// ones take the tiled K-quant matmul for prompts of 8 or more rows; and ggml's GELU table is
/// built with `1 + a·x²` fused by GCC. With those three followed, all 11 cases match every
/// step.
const GEMMA3_KNOWN_DIVERGENT: &[&str] = &[];

fn check_fixture(file_name: &str, known_divergent: &[&str]) -> Result<()> {
    let path = fixtures_dir().join(file_name);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let fixture: Value = serde_json::from_str(&text)?;
    let model_path = match find_model(&fixture)? {
        Ok(p) => p,
        Err(why) => {
            let msg = format!(
                "skipped {file_name}: {why}. Run ../shared/scripts/fetch-models (or set HEARTH_MODEL_DIR)"
            );
            if require_models() {
                bail!("{msg} (HEARTH_REQUIRE_MODELS=1)");
            }
            eprintln!("{msg}");
            return Ok(());
        }
    };
    if let Some(kv) = report_kv()? {
        return report_fixture(file_name, &fixture, &model_path, kv);
    }
    let eog = ids(&fixture["eog_ids"])?;
    let t = Instant::now();
    let file = GgufModelFile::open(&model_path)?;
    let mut forward = model::load(&file, &EngineConfig::default())?;
    eprintln!(
        "{file_name}: loaded {} in {:.2?}",
        model_path.display(),
        t.elapsed()
    );
    let mut failures = Vec::new();
    for case in fixture["cases"].as_array().context("cases")? {
        let id = case["id"].as_str().unwrap_or("?");
        let t = Instant::now();
        match run_case(forward.as_mut(), case, &eog) {
            Ok(r) => eprintln!(
                "  {id}: {}/{} steps matched, max top-1 prob diff {:.4} ({}) [{:.2?}]",
                r.matched,
                r.steps,
                r.max_prob_diff,
                r.note,
                t.elapsed(),
            ),
            Err(e) if known_divergent.contains(&id) => {
                eprintln!("  {id}: KNOWN DIVERGENCE (expected failure): {e:#}");
                continue;
            }
            Err(e) => {
                eprintln!("  {id}: FAILED: {e:#}");
                failures.push(format!("{id}: {e:#}"));
                continue;
            }
        }
        if known_divergent.contains(&id) {
            eprintln!("  {id}: now matches llama.cpp; take it off the known-divergent list");
        }
    }
    ensure!(
        failures.is_empty(),
        "{file_name}: {} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    Ok(())
}

/// The models run one at a time: each uses every core.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn golden_smollm2_135m() -> Result<()> {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    check_fixture("smollm2-135m.json", SMOLLM2_KNOWN_DIVERGENT)
}

#[test]
fn golden_qwen2_5_coder_0_5b() -> Result<()> {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    check_fixture("qwen2.5-coder-0.5b.json", QWEN_KNOWN_DIVERGENT)
}

#[test]
fn golden_gemma3_270m() -> Result<()> {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    check_fixture("gemma3-270m.json", GEMMA3_KNOWN_DIVERGENT)
}
