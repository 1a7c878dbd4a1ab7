//! A tiny but valid llama GGUF built by hand, shared by the store's tests and the end-to-end
//! store tests (`tests/e2e/tests/store.rs` includes this file by path).

fn string(s: &str) -> Vec<u8> {
    let mut v = (s.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(s.as_bytes());
    v
}

/// A llama GGUF with the metadata the store reads and one f32 tensor of `floats` values
/// (`seed` makes the bytes, and so the digest, differ).
pub fn tiny_gguf(floats: usize, seed: u8) -> Vec<u8> {
    let mut kvs = Vec::new();
    let mut n_kv = 0u64;
    let mut kv = |key: &str, ty: u32, value: Vec<u8>| {
        kvs.extend(string(key));
        kvs.extend(ty.to_le_bytes());
        kvs.extend(value);
        n_kv += 1;
    };
    kv("general.architecture", 8, string("llama"));
    kv("general.license", 8, string("apache-2.0"));
    kv("llama.context_length", 4, 2048u32.to_le_bytes().to_vec());
    kv("llama.block_count", 4, 2u32.to_le_bytes().to_vec());
    kv("llama.attention.head_count", 4, 4u32.to_le_bytes().to_vec());
    kv(
        "llama.attention.head_count_kv",
        4,
        2u32.to_le_bytes().to_vec(),
    );
    kv("llama.embedding_length", 4, 64u32.to_le_bytes().to_vec());
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(1u64.to_le_bytes());
    b.extend(n_kv.to_le_bytes());
    b.extend(kvs);
    b.extend(string("w"));
    b.extend(1u32.to_le_bytes());
    b.extend((floats as u64).to_le_bytes());
    b.extend(0u32.to_le_bytes()); // F32
    b.extend(0u64.to_le_bytes()); // offset
    while !b.len().is_multiple_of(32) {
        b.push(0);
    }
    b.extend((0..floats * 4).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
    b
}
