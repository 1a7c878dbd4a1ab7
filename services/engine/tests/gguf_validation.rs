//! `GgufModelFile::open` on real model files and on truncated copies of them.
//!
//! Uses the SmolLM2 GGUF from `$HEARTH_MODEL_DIR` or `~/.cache/hearth/models/` when present
//! (prints "skipped" otherwise, or fails with `HEARTH_REQUIRE_MODELS=1`). Hand-crafted
//! damaged headers are covered by the unit tests in `src/gguf.rs`.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::{Path, PathBuf};

use hearth_engine::EngineError;
use hearth_engine::gguf::GgufModelFile;

const MODEL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

fn find_model(name: &str) -> Option<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("HEARTH_MODEL_DIR") {
        dirs.push(PathBuf::from(d));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".cache/hearth/models"));
    }
    let found = dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file());
    if found.is_none() {
        let msg = format!(
            "skipped: {name} not found; run ../shared/scripts/fetch-models (or set HEARTH_MODEL_DIR)"
        );
        assert!(
            std::env::var("HEARTH_REQUIRE_MODELS").as_deref() != Ok("1"),
            "{msg} (HEARTH_REQUIRE_MODELS=1)"
        );
        eprintln!("{msg}");
    }
    found
}

#[test]
fn the_real_model_opens_with_its_metadata() {
    let Some(path) = find_model(MODEL) else {
        return;
    };
    let file = GgufModelFile::open(&path).unwrap();
    assert_eq!(file.architecture(), "llama");
    assert_eq!(file.get_u32("llama.context_length").unwrap(), 8192);
    assert_eq!(file.get_u32("llama.attention.head_count").unwrap(), 9);
    assert!(
        file.get_f32("llama.attention.layer_norm_rms_epsilon")
            .unwrap()
            > 0.0
    );
    assert_eq!(file.get_str("tokenizer.ggml.model").unwrap(), "gpt2");
    assert_eq!(
        file.get_str_array("tokenizer.ggml.tokens").unwrap().len(),
        49152
    );
    assert!(file.chat_template().unwrap().contains("<|im_start|>"));
    assert!(matches!(
        file.get_u32("llama.no_such_key"),
        Err(EngineError::MissingMetadata { .. })
    ));
    assert_eq!(file.content.tensor_infos.len(), 272);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    NotGguf,
    Invalid,
    Either,
}

/// Copies the first `len` bytes of `src` to a temporary file and opens that.
fn open_prefix(src: &[u8], len: usize) -> (tempfile::TempDir, Result<GgufModelFile, EngineError>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.gguf");
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(&src[..len]).unwrap();
    drop(f);
    let opened = GgufModelFile::open(&path);
    (dir, opened)
}

#[test]
fn truncated_copies_of_the_real_model_are_refused() {
    let Some(path) = find_model(MODEL) else {
        return;
    };
    let bytes = std::fs::read(&path).unwrap();
    let data_start = usize::try_from(
        GgufModelFile::open(&path)
            .unwrap()
            .content
            .tensor_data_offset,
    )
    .unwrap();
    let len = bytes.len();
    // (prefix length, expected error): a cut inside the metadata is either a fixed-size field
    // that runs out (NotGguf) or a declared length longer than what is left (InvalidGguf).
    use Expect::{Either, Invalid, NotGguf};
    let cuts = [
        (0, NotGguf),
        (3, NotGguf),
        (8, NotGguf),
        (20, NotGguf),
        (1000, Either),
        (data_start / 2, Either),
        (data_start - 1, Either),
        (data_start, Invalid),
        (data_start + 1000, Invalid),
        (len / 2, Invalid),
        (len - 1, Invalid),
    ];
    for (cut, expect) in cuts {
        let (_dir, opened) = open_prefix(&bytes, cut);
        match opened {
            Ok(_) => panic!("a copy cut at {cut} of {len} bytes opened"),
            Err(EngineError::NotGguf { reason, .. }) => {
                assert!(expect != Invalid, "cut at {cut}: NotGguf ({reason})");
            }
            Err(EngineError::InvalidGguf { reason, .. }) => {
                assert!(expect != NotGguf, "cut at {cut}: InvalidGguf ({reason})");
                if cut >= data_start {
                    assert!(
                        reason.contains("runs past the end"),
                        "cut at {cut}: {reason}"
                    );
                }
            }
            Err(e) => panic!("cut at {cut}: unexpected error {e}"),
        }
    }
}
