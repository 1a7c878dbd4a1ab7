//! F-gguf: arbitrary bytes through the store's validation (the engine's GGUF walk, candle's
//! header parse, the facts the catalogue keeps) must give a typed error or facts, never a
//! panic or an allocation larger than the input allows.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The parser reads files; a per-process file in /dev/shm keeps that cheap.
    let path = std::env::temp_dir().join(format!("hearth-fuzz-{}.gguf", std::process::id()));
    if std::fs::write(&path, data).is_ok() {
        let _ = hearth_store::ModelFacts::read(&path);
    }
});
