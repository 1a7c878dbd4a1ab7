//! Tokenizer and chat template against llama.cpp's golden outputs
//! (`shared/fixtures/golden/*.json`, see its README).
//!
//! Needs the real GGUF files, looked up in `$HEARTH_MODEL_DIR` or `~/.cache/hearth/models/`.
//! A missing file skips that model with a note, unless `HEARTH_REQUIRE_MODELS=1`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use hearth_engine::ChatMessage;
use hearth_engine::gguf::GgufModelFile;
use hearth_engine::template::ChatTemplate;
use hearth_engine::tokenizer::GgufTokenizer;
use serde::Deserialize;

#[derive(Deserialize)]
struct Golden {
    model: String,
    sha256: String,
    add_bos: bool,
    bos_id: u32,
    eos_id: u32,
    eog_ids: Vec<u32>,
    chat_template_source: String,
    chat_template: String,
    cases: Vec<Case>,
    tokenize: Vec<TokenizeRow>,
}

#[derive(Deserialize)]
struct Case {
    id: String,
    kind: String,
    prompt: String,
    #[serde(default)]
    messages: Vec<ChatMessage>,
    add_bos: bool,
    parse_special: bool,
    prompt_tokens: Vec<u32>,
}

#[derive(Deserialize)]
struct TokenizeRow {
    text: String,
    parse_special: bool,
    ids: Vec<u32>,
}

fn golden_dir() -> PathBuf {
    match std::env::var_os("HEARTH_GOLDEN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/golden"),
    }
}

fn load_golden(name: &str) -> Golden {
    let path = golden_dir().join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn model_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("HEARTH_MODEL_DIR") {
        return Some(PathBuf::from(dir));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/hearth/models"))
}

/// The GGUF the fixture was made from, or `None` (after saying why) when it is not here.
fn find_model(golden: &Golden, fetch_name: &str) -> Option<PathBuf> {
    let path = model_dir().map(|dir| dir.join(&golden.model));
    if let Some(path) = path.filter(|p| p.is_file()) {
        check_sha256(&path, &golden.sha256);
        return Some(path);
    }
    let note = format!(
        "{}: skipped: run ../shared/scripts/fetch-models {fetch_name}",
        golden.model
    );
    if std::env::var("HEARTH_REQUIRE_MODELS").is_ok_and(|v| v == "1") {
        panic!("{note} (HEARTH_REQUIRE_MODELS=1)");
    }
    println!("{note}");
    None
}

/// The fixtures are only meaningful for the exact file they were made from.
fn check_sha256(path: &Path, want: &str) {
    let Ok(out) = std::process::Command::new("sha256sum").arg(path).output() else {
        println!("sha256sum not available; not checking {}", path.display());
        return;
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let got = stdout.split_whitespace().next().unwrap_or_default();
    assert_eq!(
        got,
        want,
        "{} is not the file the fixtures were made from",
        path.display()
    );
}

/// Opens the GGUF (every fixture's architecture is one the engine runs).
fn open_model(path: &Path) -> GgufModelFile {
    GgufModelFile::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn show(tok: &GgufTokenizer, ids: &[u32]) -> String {
    let pieces: Vec<String> = ids
        .iter()
        .map(|&id| format!("{id}:{:?}", String::from_utf8_lossy(&tok.token_bytes(id))))
        .collect();
    pieces.join(" ")
}

/// Checks one model: vocabulary facts, every tokenize row, every case's prompt tokens, and
/// every chat case's rendering.
fn check_model(fixture: &str, fetch_name: &str) {
    let golden = load_golden(fixture);
    let Some(path) = find_model(&golden, fetch_name) else {
        return;
    };
    let file = open_model(&path);
    let start = std::time::Instant::now();
    let tok = GgufTokenizer::from_gguf(&file).unwrap();
    println!("{}: tokenizer built in {:?}", golden.model, start.elapsed());
    let mut failures = Vec::new();

    assert_eq!(tok.add_bos(), golden.add_bos, "add_bos");
    assert_eq!(tok.bos_id(), Some(golden.bos_id), "bos id");
    assert_eq!(tok.eos_id(), Some(golden.eos_id), "eos id");
    assert_eq!(tok.eog_ids(), golden.eog_ids.as_slice(), "EOG set");
    for &id in &golden.eog_ids {
        assert!(tok.is_eog(id));
    }

    for row in &golden.tokenize {
        let ids = tok.encode(&row.text, false, row.parse_special).unwrap();
        if ids != row.ids {
            failures.push(format!(
                "tokenize {:?} (parse_special {}):\n   got  {}\n   want {}",
                row.text,
                row.parse_special,
                show(&tok, &ids),
                show(&tok, &row.ids)
            ));
        }
        if !row.parse_special {
            // Ordinary text must come back byte for byte.
            let bytes: Vec<u8> = row.ids.iter().flat_map(|&id| tok.token_bytes(id)).collect();
            if bytes != row.text.as_bytes() {
                failures.push(format!("token_bytes of {:?} do not round-trip", row.text));
            }
        }
    }

    for case in &golden.cases {
        assert!(
            case.parse_special,
            "{}: fixtures always parse specials",
            case.id
        );
        let ids = tok.encode(&case.prompt, case.add_bos, true).unwrap();
        if ids != case.prompt_tokens {
            let at = ids
                .iter()
                .zip(&case.prompt_tokens)
                .position(|(a, b)| a != b)
                .unwrap_or(ids.len().min(case.prompt_tokens.len()));
            let from = at.saturating_sub(3);
            failures.push(format!(
                "case {} prompt tokens differ at {at}:\n   got  {}\n   want {}",
                case.id,
                show(&tok, &ids[from..(at + 5).min(ids.len())]),
                show(
                    &tok,
                    &case.prompt_tokens[from..(at + 5).min(case.prompt_tokens.len())]
                )
            ));
        }
    }

    let from_gguf = golden.chat_template_source.starts_with("gguf");
    let template = match file.chat_template() {
        Some(source) => {
            assert!(from_gguf, "the GGUF has a template the fixture did not use");
            // The fixture records the template without the file's trailing newline.
            assert_eq!(
                source.trim_end(),
                golden.chat_template.trim_end(),
                "template text"
            );
            ChatTemplate::new(source).unwrap()
        }
        None => {
            assert!(
                !from_gguf,
                "the fixture used a GGUF template this file lacks"
            );
            ChatTemplate::chatml_fallback()
        }
    };
    failures.extend(check_chat_cases(
        &golden,
        &template,
        tok.bos_text(),
        tok.eos_text(),
    ));

    assert!(
        failures.is_empty(),
        "{}: {} mismatches:\n{}",
        golden.model,
        failures.len(),
        failures.join("\n")
    );
    println!(
        "{}: {} tokenize rows, {} cases, {} chat renders match llama.cpp",
        golden.model,
        golden.tokenize.len(),
        golden.cases.len(),
        golden.cases.iter().filter(|c| c.kind == "chat").count()
    );
}

fn check_chat_cases(golden: &Golden, template: &ChatTemplate, bos: &str, eos: &str) -> Vec<String> {
    let mut failures = Vec::new();
    for case in golden.cases.iter().filter(|c| c.kind == "chat") {
        let rendered = template.render(&case.messages, true, bos, eos).unwrap();
        if rendered != case.prompt {
            failures.push(format!(
                "chat {}:\n   got  {rendered:?}\n   want {:?}",
                case.id, case.prompt
            ));
        }
    }
    failures
}

#[test]
fn smollm2_135m() {
    check_model("smollm2-135m.json", "smollm2-135m");
}

#[test]
fn qwen2_5_coder_0_5b() {
    check_model("qwen2.5-coder-0.5b.json", "qwen2.5-coder-0.5b");
}

#[test]
fn gemma3_270m() {
    check_model("gemma3-270m.json", "gemma3-270m");
}

/// Gemma's GGUF has no template, so llama.cpp used its ChatML fallback: that part needs no
/// model file.
#[test]
fn gemma3_270m_chat_uses_chatml_fallback() {
    let golden = load_golden("gemma3-270m.json");
    assert!(golden.chat_template_source.contains("CHATML_TEMPLATE_SRC"));
    let template = ChatTemplate::chatml_fallback();
    let failures = check_chat_cases(&golden, &template, "<bos>", "<eos>");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
