//! GGUF validation and metadata access.
//!
//! [`GgufModelFile::open`] walks the whole header itself before anything is handed to candle's
//! parser: every count, string length and array length is checked against the bytes left in the
//! file before anything is allocated, every tensor's type, shape and data range is checked
//! against the file's length. A hostile or damaged file gets an error that names what is wrong,
//! never a panic or a huge allocation. Only then does candle's `gguf_file::Content::read` parse
//! the (now known-good) header.
//!
//! Limits: GGUF versions 2 and 3, little-endian only; architectures in [`SUPPORTED_ARCHITECTURES`].
use std::collections::HashSet;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candle_core::Device;
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};

use crate::{EngineError, Result};

/// Architectures the engine has a forward pass for.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["llama", "qwen2", "qwen3", "gemma3"];
const SUPPORTED_LIST: &str = crate::model::SUPPORTED;

/// Most tensors a file may declare.
pub const MAX_TENSORS: u64 = 1 << 16;
/// Most metadata entries a file may declare.
pub const MAX_METADATA_KV: u64 = 1 << 16;
/// Most array elements in all metadata arrays together (a 262k vocabulary with its scores,
/// types and merges is ~1.3M). Bounds what candle allocates for the parsed values.
pub const MAX_TOTAL_ARRAY_ELEMENTS: u64 = 1 << 23;
/// Deepest nesting of metadata arrays (real files never nest).
pub const MAX_ARRAY_DEPTH: usize = 4;
/// Longest metadata key or tensor name, in bytes.
pub const MAX_NAME_LEN: u64 = 1 << 12;
/// Most dimensions a tensor may have (`GGML_MAX_DIMS`).
pub const MAX_DIMS: u32 = 4;

const GGUF_MAGIC: [u8; 4] = *b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;

/// A GGUF file whose header, metadata and tensor table have been validated against its length.
pub struct GgufModelFile {
    pub path: PathBuf,
    pub content: gguf_file::Content,
    pub file_len: u64,
}

impl std::fmt::Debug for GgufModelFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufModelFile")
            .field("path", &self.path)
            .field("file_len", &self.file_len)
            .field("tensors", &self.content.tensor_infos.len())
            .field("metadata", &self.content.metadata.len())
            .finish()
    }
}

impl GgufModelFile {
    /// Validates the file at `path` (see the module docs) and parses its header.
    pub fn open(path: &Path) -> Result<Self> {
        let io_err = |source| EngineError::Io {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        let file_len = file.metadata().map_err(io_err)?.len();
        let mut walker = HeaderWalker {
            reader: BufReader::with_capacity(1 << 16, file),
            pos: 0,
            len: file_len,
            path,
            total_array_elements: 0,
        };
        let summary = walker.walk()?;

        let mut reader = walker.reader;
        reader.seek(SeekFrom::Start(0)).map_err(io_err)?;
        let content =
            gguf_file::Content::read(&mut reader).map_err(|e| EngineError::InvalidGguf {
                path: path.to_owned(),
                reason: format!("header parse failed after validation: {e}"),
            })?;
        if content.tensor_data_offset != summary.data_offset
            || content.tensor_infos.len() as u64 != summary.tensor_count
        {
            return Err(EngineError::InvalidGguf {
                path: path.to_owned(),
                reason: format!(
                    "header parsers disagree: tensor data at {} vs {}, {} vs {} tensors",
                    content.tensor_data_offset,
                    summary.data_offset,
                    content.tensor_infos.len(),
                    summary.tensor_count
                ),
            });
        }
        let file = Self {
            path: path.to_owned(),
            content,
            file_len,
        };
        let arch = file.get_str("general.architecture")?;
        if !SUPPORTED_ARCHITECTURES.contains(&arch) {
            return Err(EngineError::UnsupportedArchitecture {
                path: path.to_owned(),
                arch: arch.to_owned(),
                supported: SUPPORTED_LIST,
            });
        }
        Ok(file)
    }

    /// `general.architecture` (validated by [`Self::open`] to be a supported one).
    pub fn architecture(&self) -> &str {
        self.get_str("general.architecture").unwrap_or_default()
    }

    /// `tokenizer.chat_template`, when present.
    pub fn chat_template(&self) -> Option<&str> {
        match self.content.metadata.get("tokenizer.chat_template") {
            Some(Value::String(s)) => Some(s.as_str()),
            _ => None,
        }
    }

    /// The raw metadata value under `key`.
    pub fn metadata(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    fn missing(&self, key: &str) -> EngineError {
        EngineError::MissingMetadata {
            path: self.path.clone(),
            key: key.to_owned(),
        }
    }

    fn require(&self, key: &str) -> Result<&Value> {
        self.metadata(key).ok_or_else(|| self.missing(key))
    }

    /// An unsigned integer of any width (or a non-negative signed one) that fits in `u64`.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        value_as_u64(self.require(key)?).ok_or_else(|| self.missing(key))
    }

    /// Like [`Self::get_u64`], but the value must fit in `u32`.
    pub fn get_u32(&self, key: &str) -> Result<u32> {
        u32::try_from(self.get_u64(key)?).map_err(|_| self.missing(key))
    }

    /// Like [`Self::get_u64`], but the value must fit in `usize`.
    pub fn get_usize(&self, key: &str) -> Result<usize> {
        usize::try_from(self.get_u64(key)?).map_err(|_| self.missing(key))
    }

    /// A float (`f32`, or `f64` narrowed).
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        match self.require(key)? {
            Value::F32(v) => Ok(*v),
            #[allow(clippy::cast_possible_truncation)]
            Value::F64(v) => Ok(*v as f32),
            _ => Err(self.missing(key)),
        }
    }

    pub fn get_bool(&self, key: &str) -> Result<bool> {
        match self.require(key)? {
            Value::Bool(v) => Ok(*v),
            _ => Err(self.missing(key)),
        }
    }

    pub fn get_str(&self, key: &str) -> Result<&str> {
        match self.require(key)? {
            Value::String(s) => Ok(s.as_str()),
            _ => Err(self.missing(key)),
        }
    }

    pub fn get_array(&self, key: &str) -> Result<&[Value]> {
        match self.require(key)? {
            Value::Array(v) => Ok(v.as_slice()),
            _ => Err(self.missing(key)),
        }
    }

    /// An array whose elements are all strings.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>> {
        self.get_array(key)?
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.as_str()),
                _ => Err(self.missing(key)),
            })
            .collect()
    }

    /// `None` when absent; an error when present with the wrong type.
    pub fn opt_u32(&self, key: &str) -> Result<Option<u32>> {
        self.optional(key, Self::get_u32)
    }

    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        self.optional(key, Self::get_usize)
    }

    pub fn opt_f32(&self, key: &str) -> Result<Option<f32>> {
        self.optional(key, Self::get_f32)
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        self.optional(key, Self::get_bool)
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        self.optional(key, Self::get_str)
    }

    fn optional<'a, T>(
        &'a self,
        key: &str,
        get: impl FnOnce(&'a Self, &str) -> Result<T>,
    ) -> Result<Option<T>> {
        if self.content.metadata.contains_key(key) {
            get(self, key).map(Some)
        } else {
            Ok(None)
        }
    }

    /// `<architecture>.<suffix>`, e.g. `arch_key("context_length")` → `llama.context_length`.
    pub fn arch_key(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.architecture())
    }

    /// Drops the tokenizer's vocabulary arrays (`tokenizer.ggml.*` lists: tokens, scores,
    /// types, merges) from the parsed metadata once the tokenizer has been built from them:
    /// for a 262k-token vocabulary they are tens of MiB that would otherwise still be held
    /// while the weights load.
    pub fn release_vocabulary(&mut self) {
        self.content
            .metadata
            .retain(|k, v| !(k.starts_with("tokenizer.ggml.") && matches!(v, Value::Array(_))));
    }

    /// Whether the file has a tensor called `name`.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// Opens the file again for reading tensor data.
    pub fn tensor_reader(&self) -> Result<TensorReader<'_>> {
        let file = File::open(&self.path).map_err(|source| EngineError::Io {
            path: self.path.clone(),
            source,
        })?;
        Ok(TensorReader {
            file: self,
            reader: BufReader::new(file),
        })
    }
}

/// Reads tensors out of a validated [`GgufModelFile`].
pub struct TensorReader<'a> {
    file: &'a GgufModelFile,
    reader: BufReader<File>,
}

impl TensorReader<'_> {
    /// Loads tensor `name` onto the CPU; a missing tensor is an `InvalidGguf` error naming it.
    pub fn load(&mut self, name: &str) -> Result<QTensor> {
        if !self.file.has_tensor(name) {
            return Err(EngineError::InvalidGguf {
                path: self.file.path.clone(),
                reason: format!("tensor '{name}' is missing"),
            });
        }
        self.file
            .content
            .tensor(&mut self.reader, name, &Device::Cpu)
            .map_err(|e| EngineError::InvalidGguf {
                path: self.file.path.clone(),
                reason: format!("tensor '{name}': {e}"),
            })
    }

    /// The ggml type and shape (candle's order: rows, then columns) of tensor `name`.
    pub fn info(&self, name: &str) -> Result<(GgmlDType, Vec<usize>)> {
        let info =
            self.file
                .content
                .tensor_infos
                .get(name)
                .ok_or_else(|| EngineError::InvalidGguf {
                    path: self.file.path.clone(),
                    reason: format!("tensor '{name}' is missing"),
                })?;
        Ok((info.ggml_dtype, info.shape.dims().to_vec()))
    }

    /// Reads tensor `name`'s bytes as stored, in pieces of whole blocks (about 1 MiB each)
    /// handed to `each` in order, so a large matrix can be converted to another layout
    /// without its file copy and its converted copy both in memory.
    pub fn read_pieces(
        &mut self,
        name: &str,
        mut each: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        let (dtype, dims) = self.info(name)?;
        let path = &self.file.path;
        let offset =
            self.file.content.tensor_data_offset + self.file.content.tensor_infos[name].offset;
        // The header walk checked that every tensor's bytes lie inside the file.
        let blocks = dims.iter().product::<usize>() / dtype.block_size();
        let block_bytes = dtype.type_size();
        let piece_blocks = (1 << 20) / block_bytes.max(1);
        let io = |source| EngineError::Io {
            path: path.clone(),
            source,
        };
        self.reader.seek(SeekFrom::Start(offset)).map_err(io)?;
        let mut buf = vec![0u8; piece_blocks * block_bytes];
        let mut left = blocks;
        while left > 0 {
            let n = left.min(piece_blocks) * block_bytes;
            self.reader.read_exact(&mut buf[..n]).map_err(io)?;
            each(&buf[..n])?;
            left -= n / block_bytes;
        }
        Ok(())
    }

    /// Loads tensor `name` if the file has it.
    pub fn load_opt(&mut self, name: &str) -> Result<Option<QTensor>> {
        if self.file.has_tensor(name) {
            self.load(name).map(Some)
        } else {
            Ok(None)
        }
    }
}

fn value_as_u64(v: &Value) -> Option<u64> {
    match *v {
        Value::U8(x) => Some(u64::from(x)),
        Value::U16(x) => Some(u64::from(x)),
        Value::U32(x) => Some(u64::from(x)),
        Value::U64(x) => Some(x),
        Value::I8(x) => u64::try_from(x).ok(),
        Value::I16(x) => u64::try_from(x).ok(),
        Value::I32(x) => u64::try_from(x).ok(),
        Value::I64(x) => u64::try_from(x).ok(),
        _ => None,
    }
}

/// The ggml types candle can load, by their on-disk id.
fn ggml_dtype(id: u32) -> Option<GgmlDType> {
    Some(match id {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        9 => GgmlDType::Q8_1,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        15 => GgmlDType::Q8K,
        30 => GgmlDType::BF16,
        _ => return None,
    })
}

// GGUF metadata value types.
const T_U8: u32 = 0;
const T_I8: u32 = 1;
const T_U16: u32 = 2;
const T_I16: u32 = 3;
const T_U32: u32 = 4;
const T_I32: u32 = 5;
const T_F32: u32 = 6;
const T_BOOL: u32 = 7;
const T_STRING: u32 = 8;
const T_ARRAY: u32 = 9;
const T_U64: u32 = 10;
const T_I64: u32 = 11;
const T_F64: u32 = 12;

/// Fixed on-disk size of a scalar value type, `None` for strings and arrays.
fn scalar_size(value_type: u32) -> Option<u64> {
    match value_type {
        T_U8 | T_I8 | T_BOOL => Some(1),
        T_U16 | T_I16 => Some(2),
        T_U32 | T_I32 | T_F32 => Some(4),
        T_U64 | T_I64 | T_F64 => Some(8),
        _ => None,
    }
}

struct HeaderSummary {
    tensor_count: u64,
    data_offset: u64,
}

/// Walks a GGUF header with every length checked against the bytes left in the file.
struct HeaderWalker<'p> {
    reader: BufReader<File>,
    pos: u64,
    len: u64,
    path: &'p Path,
    total_array_elements: u64,
}

impl HeaderWalker<'_> {
    fn not_gguf(&self, reason: impl Into<String>) -> EngineError {
        EngineError::NotGguf {
            path: self.path.to_owned(),
            reason: reason.into(),
        }
    }

    fn invalid(&self, reason: impl Into<String>) -> EngineError {
        EngineError::InvalidGguf {
            path: self.path.to_owned(),
            reason: reason.into(),
        }
    }

    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    fn read_exact(&mut self, buf: &mut [u8], what: &str) -> Result<()> {
        if (buf.len() as u64) > self.remaining() {
            return Err(self.not_gguf(format!(
                "the file ends inside the header (reading {what} at byte {} of {})",
                self.pos, self.len
            )));
        }
        self.reader
            .read_exact(buf)
            .map_err(|source| EngineError::Io {
                path: self.path.to_owned(),
                source,
            })?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn read_u32(&mut self, what: &str) -> Result<u32> {
        let mut b = [0u8; 4];
        self.read_exact(&mut b, what)?;
        Ok(u32::from_le_bytes(b))
    }

    fn read_u64(&mut self, what: &str) -> Result<u64> {
        let mut b = [0u8; 8];
        self.read_exact(&mut b, what)?;
        Ok(u64::from_le_bytes(b))
    }

    fn skip(&mut self, n: u64, what: &str) -> Result<()> {
        if n > self.remaining() {
            return Err(self.invalid(format!(
                "{what} needs {n} bytes at byte {} but only {} are left in the file",
                self.pos,
                self.remaining()
            )));
        }
        let delta = i64::try_from(n).map_err(|_| self.invalid(format!("{what} is too long")))?;
        self.reader
            .seek_relative(delta)
            .map_err(|source| EngineError::Io {
                path: self.path.to_owned(),
                source,
            })?;
        self.pos += n;
        Ok(())
    }

    /// Reads a short string (key, tensor name); its length is bounded before allocating.
    fn read_name(&mut self, what: &str) -> Result<String> {
        let len = self.read_u64(what)?;
        if len > MAX_NAME_LEN || len > self.remaining() {
            return Err(self.invalid(format!(
                "{what} at byte {} claims {len} bytes (limit {MAX_NAME_LEN}, {} left in the file)",
                self.pos,
                self.remaining()
            )));
        }
        let mut buf = vec![0u8; len as usize];
        self.read_exact(&mut buf, what)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    /// Skips a string value after checking its length against the file.
    fn skip_string(&mut self, what: &str) -> Result<u64> {
        let len = self.read_u64(what)?;
        self.skip(len, &format!("{what} (string of {len} bytes)"))?;
        Ok(len)
    }

    /// Reads a string value up to `limit` bytes (for the few values the walker needs).
    fn read_string_value(&mut self, what: &str, limit: u64) -> Result<String> {
        let len = self.read_u64(what)?;
        if len > limit || len > self.remaining() {
            return Err(self.invalid(format!(
                "{what}: string of {len} bytes (limit {limit}, {} left in the file)",
                self.remaining()
            )));
        }
        let mut buf = vec![0u8; len as usize];
        self.read_exact(&mut buf, what)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    fn skip_value(&mut self, value_type: u32, key: &str, depth: usize) -> Result<()> {
        if let Some(size) = scalar_size(value_type) {
            if value_type == T_BOOL {
                let mut b = [0u8; 1];
                self.read_exact(&mut b, key)?;
                if b[0] > 1 {
                    return Err(self.invalid(format!("metadata '{key}': bool byte is {}", b[0])));
                }
                return Ok(());
            }
            return self.skip(size, &format!("metadata '{key}'"));
        }
        match value_type {
            T_STRING => self.skip_string(&format!("metadata '{key}'")).map(|_| ()),
            T_ARRAY => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.invalid(format!(
                        "metadata '{key}': arrays nested deeper than {MAX_ARRAY_DEPTH}"
                    )));
                }
                let elem_type = self.read_u32(key)?;
                let count = self.read_u64(key)?;
                let min_elem = match elem_type {
                    T_STRING => 8,
                    T_ARRAY => 12,
                    t => scalar_size(t).ok_or_else(|| {
                        self.invalid(format!("metadata '{key}': unknown array element type {t}"))
                    })?,
                };
                let needed = count.saturating_mul(min_elem);
                if needed > self.remaining() {
                    return Err(self.invalid(format!(
                        "metadata '{key}': array of {count} elements needs at least {needed} bytes, \
                         only {} left in the file",
                        self.remaining()
                    )));
                }
                self.total_array_elements = self.total_array_elements.saturating_add(count);
                if self.total_array_elements > MAX_TOTAL_ARRAY_ELEMENTS {
                    return Err(self.invalid(format!(
                        "metadata '{key}': more than {MAX_TOTAL_ARRAY_ELEMENTS} array elements in all"
                    )));
                }
                match elem_type {
                    T_STRING | T_ARRAY | T_BOOL => {
                        for _ in 0..count {
                            self.skip_value(elem_type, key, depth + 1)?;
                        }
                        Ok(())
                    }
                    // Scalars: the size check above covers the whole array.
                    _ => self.skip(needed, &format!("metadata '{key}'")),
                }
            }
            t => Err(self.invalid(format!("metadata '{key}': unknown value type {t}"))),
        }
    }

    fn walk(&mut self) -> Result<HeaderSummary> {
        if self.len == 0 {
            return Err(self.not_gguf("the file is empty"));
        }
        let mut magic = [0u8; 4];
        self.read_exact(&mut magic, "the magic")?;
        if magic != GGUF_MAGIC {
            return Err(self.not_gguf(format!("bad magic {magic:02x?} (expected \"GGUF\")")));
        }
        let version = self.read_u32("the version")?;
        if version != 2 && version != 3 {
            return Err(self.not_gguf(format!(
                "unsupported GGUF version {version} (supported: 2, 3)"
            )));
        }
        let tensor_count = self.read_u64("the tensor count")?;
        let kv_count = self.read_u64("the metadata count")?;
        if tensor_count > MAX_TENSORS {
            return Err(self.invalid(format!(
                "the header declares {tensor_count} tensors (limit {MAX_TENSORS})"
            )));
        }
        if kv_count > MAX_METADATA_KV {
            return Err(self.invalid(format!(
                "the header declares {kv_count} metadata entries (limit {MAX_METADATA_KV})"
            )));
        }

        let mut alignment = DEFAULT_ALIGNMENT;
        let mut keys = HashSet::new();
        for index in 0..kv_count {
            let key = self.read_name(&format!("metadata key #{index}"))?;
            let value_type = self.read_u32(&format!("the type of metadata '{key}'"))?;
            if key == "general.alignment" {
                if value_type != T_U32 {
                    return Err(self.invalid(format!(
                        "general.alignment has value type {value_type}, expected u32"
                    )));
                }
                let a = u64::from(self.read_u32("general.alignment")?);
                if a == 0 || !a.is_power_of_two() {
                    return Err(
                        self.invalid(format!("general.alignment is {a}, not a power of two"))
                    );
                }
                alignment = a;
            } else if key == "general.architecture" {
                if value_type != T_STRING {
                    return Err(self.invalid(format!(
                        "general.architecture has value type {value_type}, expected string"
                    )));
                }
                self.read_string_value("general.architecture", MAX_NAME_LEN)?;
            } else {
                self.skip_value(value_type, &key, 0)?;
            }
            if !keys.insert(key) {
                return Err(self.invalid(format!("metadata key #{index} is a duplicate")));
            }
        }

        struct Entry {
            name: String,
            size: u64,
            offset: u64,
        }
        let mut names = HashSet::new();
        let mut entries = Vec::new();
        for index in 0..tensor_count {
            let name = self.read_name(&format!("tensor name #{index}"))?;
            let n_dims = self.read_u32(&format!("tensor '{name}' rank"))?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(self.invalid(format!(
                    "tensor '{name}' has {n_dims} dimensions (1..={MAX_DIMS} allowed)"
                )));
            }
            let mut dims = [0u64; MAX_DIMS as usize];
            for d in dims.iter_mut().take(n_dims as usize) {
                *d = self.read_u64(&format!("tensor '{name}' shape"))?;
            }
            let dims = &dims[..n_dims as usize];
            let type_id = self.read_u32(&format!("tensor '{name}' type"))?;
            let offset = self.read_u64(&format!("tensor '{name}' offset"))?;
            let dtype = ggml_dtype(type_id).ok_or_else(|| {
                self.invalid(format!(
                    "tensor '{name}' has ggml type {type_id}, which this engine cannot load"
                ))
            })?;
            let elems = dims
                .iter()
                .try_fold(
                    1u64,
                    |acc, &d| if d == 0 { None } else { acc.checked_mul(d) },
                )
                .filter(|&n| usize::try_from(n).is_ok() && n <= i64::MAX as u64)
                .ok_or_else(|| {
                    self.invalid(format!(
                        "tensor '{name}' has shape {dims:?}: a zero dimension or too many elements"
                    ))
                })?;
            let block = dtype.block_size() as u64;
            if dims[0] % block != 0 {
                return Err(self.invalid(format!(
                    "tensor '{name}' ({dtype:?}): row length {} is not a multiple of the block size {block}",
                    dims[0]
                )));
            }
            let size = (elems / block)
                .checked_mul(dtype.type_size() as u64)
                .ok_or_else(|| self.invalid(format!("tensor '{name}' is too large")))?;
            if offset % alignment != 0 {
                return Err(self.invalid(format!(
                    "tensor '{name}' offset {offset} is not a multiple of the alignment {alignment}"
                )));
            }
            if !names.insert(name.clone()) {
                return Err(self.invalid(format!("tensor '{name}' is declared twice")));
            }
            entries.push(Entry { name, size, offset });
        }

        let data_offset = self.pos.div_ceil(alignment) * alignment;
        for e in &entries {
            let end = data_offset
                .checked_add(e.offset)
                .and_then(|start| start.checked_add(e.size));
            match end {
                Some(end) if end <= self.len => {}
                _ => {
                    return Err(self.invalid(format!(
                        "tensor '{}' ({} bytes at offset {}) runs past the end of the file ({} bytes, data starts at {data_offset})",
                        e.name, e.size, e.offset, self.len
                    )));
                }
            }
        }
        Ok(HeaderSummary {
            tensor_count,
            data_offset,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds GGUF bytes by hand.
    #[derive(Default, Clone)]
    struct Builder {
        version: u32,
        tensor_count: Option<u64>,
        kv_count: Option<u64>,
        kvs: Vec<u8>,
        n_kv: u64,
        tensors: Vec<u8>,
        n_tensors: u64,
        data_len: usize,
    }

    fn string(s: &str) -> Vec<u8> {
        let mut v = (s.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(s.as_bytes());
        v
    }

    impl Builder {
        fn new() -> Self {
            Self {
                version: 3,
                ..Self::default()
            }
            .kv_str("general.architecture", "llama")
        }

        fn kv_raw(mut self, key: &str, value_type: u32, value: &[u8]) -> Self {
            self.kvs.extend(string(key));
            self.kvs.extend(value_type.to_le_bytes());
            self.kvs.extend_from_slice(value);
            self.n_kv += 1;
            self
        }

        fn kv_str(self, key: &str, value: &str) -> Self {
            self.kv_raw(key, T_STRING, &string(value))
        }

        fn kv_u32(self, key: &str, value: u32) -> Self {
            self.kv_raw(key, T_U32, &value.to_le_bytes())
        }

        fn tensor(mut self, name: &str, dims: &[u64], ggml_type: u32, offset: u64) -> Self {
            self.tensors.extend(string(name));
            self.tensors.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                self.tensors.extend(d.to_le_bytes());
            }
            self.tensors.extend(ggml_type.to_le_bytes());
            self.tensors.extend(offset.to_le_bytes());
            self.n_tensors += 1;
            self
        }

        fn data(mut self, len: usize) -> Self {
            self.data_len = len;
            self
        }

        fn bytes(&self) -> Vec<u8> {
            let mut b = b"GGUF".to_vec();
            b.extend(self.version.to_le_bytes());
            b.extend(self.tensor_count.unwrap_or(self.n_tensors).to_le_bytes());
            b.extend(self.kv_count.unwrap_or(self.n_kv).to_le_bytes());
            b.extend_from_slice(&self.kvs);
            b.extend_from_slice(&self.tensors);
            while !b.len().is_multiple_of(32) {
                b.push(0);
            }
            b.extend(std::iter::repeat_n(0u8, self.data_len));
            b
        }
    }

    /// A valid file: one f32 tensor of 8 values.
    fn valid() -> Builder {
        Builder::new()
            .kv_u32("llama.context_length", 128)
            .tensor("w", &[8], 0, 0)
            .data(32)
    }

    /// Opens `bytes` from a temporary file (kept alive with the result).
    fn open_bytes(bytes: &[u8]) -> (tempfile::TempDir, Result<GgufModelFile>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        std::fs::write(&path, bytes).unwrap();
        let file = GgufModelFile::open(&path);
        (dir, file)
    }

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Want {
        NotGguf,
        Invalid,
        Unsupported,
        Missing,
    }

    fn kind(e: &EngineError) -> Option<Want> {
        match e {
            EngineError::NotGguf { .. } => Some(Want::NotGguf),
            EngineError::InvalidGguf { .. } => Some(Want::Invalid),
            EngineError::UnsupportedArchitecture { .. } => Some(Want::Unsupported),
            EngineError::MissingMetadata { .. } => Some(Want::Missing),
            _ => None,
        }
    }

    #[test]
    fn the_valid_file_opens() {
        let (_dir, f) = open_bytes(&valid().bytes());
        let f = f.unwrap();
        assert_eq!(f.architecture(), "llama");
        assert_eq!(f.get_u32("llama.context_length").unwrap(), 128);
        assert_eq!(f.get_usize("llama.context_length").unwrap(), 128);
        assert!(f.get_f32("llama.context_length").is_err());
        assert!(matches!(
            f.get_u32("nope"),
            Err(EngineError::MissingMetadata { ref key, .. }) if key == "nope"
        ));
        assert_eq!(f.opt_u32("nope").unwrap(), None);
        assert!(f.opt_str("llama.context_length").is_err());
        assert_eq!(f.chat_template(), None);
        assert!(f.has_tensor("w"));
        let t = f.tensor_reader().unwrap().load("w").unwrap();
        assert_eq!(t.shape().dims(), &[8]);
    }

    #[test]
    fn damaged_headers_are_refused_with_the_right_error() {
        let mut random = Vec::new();
        let mut x: u32 = 0x1234_5678;
        for _ in 0..4096 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            random.push(x.to_le_bytes()[0]);
        }
        let cut = valid().bytes();
        let huge = u64::MAX.to_le_bytes();
        let mut huge_array = T_U8.to_le_bytes().to_vec();
        huge_array.extend(huge);
        let mut nested = Vec::new();
        for _ in 0..8 {
            nested.extend(T_ARRAY.to_le_bytes());
            nested.extend(1u64.to_le_bytes());
        }
        nested.extend(T_U8.to_le_bytes());
        nested.extend(0u64.to_le_bytes());
        let with = |b: Builder| b.bytes();
        let cases: Vec<(&str, Vec<u8>, Want, &str)> = vec![
            ("empty file", vec![], Want::NotGguf, "empty"),
            ("random bytes", random, Want::NotGguf, "magic"),
            (
                "bad magic",
                b"GGUX\x03\0\0\0".to_vec(),
                Want::NotGguf,
                "magic",
            ),
            ("three bytes", b"GGU".to_vec(), Want::NotGguf, "ends inside"),
            (
                "version 1",
                with(Builder {
                    version: 1,
                    ..valid()
                }),
                Want::NotGguf,
                "version 1",
            ),
            (
                "version 4",
                with(Builder {
                    version: 4,
                    ..valid()
                }),
                Want::NotGguf,
                "version 4",
            ),
            (
                "cut after version",
                cut[..8].to_vec(),
                Want::NotGguf,
                "ends inside",
            ),
            (
                "cut in a key",
                cut[..40].to_vec(),
                Want::Invalid,
                "left in the file",
            ),
            (
                "cut in the tensor table",
                cut[..cut.len() - 60].to_vec(),
                Want::NotGguf,
                "ends inside",
            ),
            (
                "huge tensor count",
                with(Builder {
                    tensor_count: Some(u64::MAX),
                    ..valid()
                }),
                Want::Invalid,
                "tensors",
            ),
            (
                "huge metadata count",
                with(Builder {
                    kv_count: Some(1 << 40),
                    ..valid()
                }),
                Want::Invalid,
                "metadata entries",
            ),
            (
                "huge key length",
                {
                    let mut b = valid().bytes();
                    b[24..32].copy_from_slice(&huge);
                    b
                },
                Want::Invalid,
                "metadata key #0",
            ),
            (
                "huge string value",
                with(valid().kv_raw("x", T_STRING, &huge)),
                Want::Invalid,
                "'x'",
            ),
            (
                "huge array",
                with(valid().kv_raw("arr", T_ARRAY, &huge_array)),
                Want::Invalid,
                "'arr'",
            ),
            (
                "deeply nested arrays",
                with(valid().kv_raw("deep", T_ARRAY, &nested)),
                Want::Invalid,
                "nested",
            ),
            (
                "unknown value type",
                with(valid().kv_raw("odd", 99, &[0; 8])),
                Want::Invalid,
                "unknown value type 99",
            ),
            (
                "bad bool",
                with(valid().kv_raw("flag", T_BOOL, &[7])),
                Want::Invalid,
                "bool",
            ),
            (
                "duplicate key",
                with(valid().kv_u32("llama.context_length", 1)),
                Want::Invalid,
                "duplicate",
            ),
            (
                "zero alignment",
                with(valid().kv_u32("general.alignment", 0)),
                Want::Invalid,
                "alignment",
            ),
            (
                "odd alignment",
                with(valid().kv_u32("general.alignment", 48)),
                Want::Invalid,
                "power of two",
            ),
            (
                "tensor past the end",
                with(valid().tensor("big", &[1024, 1024], 0, 64)),
                Want::Invalid,
                "'big'",
            ),
            (
                "tensor offset overflows",
                with(valid().tensor("far", &[8], 0, u64::MAX - 31)),
                Want::Invalid,
                "'far'",
            ),
            (
                "unknown ggml type",
                with(valid().tensor("iq", &[256], 16, 0)),
                Want::Invalid,
                "ggml type 16",
            ),
            (
                "five dimensions",
                with(valid().tensor("t5", &[1, 1, 1, 1, 1], 0, 0)),
                Want::Invalid,
                "5 dimensions",
            ),
            (
                "zero dimension",
                with(valid().tensor("z", &[8, 0], 0, 0)),
                Want::Invalid,
                "'z'",
            ),
            (
                "element count overflows",
                with(valid().tensor("o", &[1 << 32, 1 << 32, 1 << 32], 0, 0)),
                Want::Invalid,
                "'o'",
            ),
            (
                "row not a multiple of the block",
                with(valid().tensor("q", &[33], 2, 0)),
                Want::Invalid,
                "block size",
            ),
            (
                "misaligned offset",
                with(valid().tensor("m", &[8], 0, 4)),
                Want::Invalid,
                "alignment",
            ),
            (
                "duplicate tensor",
                with(valid().tensor("w", &[8], 0, 0)),
                Want::Invalid,
                "twice",
            ),
            (
                "unsupported architecture",
                with(
                    Builder {
                        kvs: Vec::new(),
                        n_kv: 0,
                        ..valid()
                    }
                    .kv_str("general.architecture", "mamba"),
                ),
                Want::Unsupported,
                "mamba",
            ),
            (
                "architecture missing",
                with(Builder {
                    kvs: Vec::new(),
                    n_kv: 0,
                    ..valid()
                }),
                Want::Missing,
                "general.architecture",
            ),
        ];
        for (name, bytes, want, needle) in cases {
            match open_bytes(&bytes).1 {
                Ok(_) => panic!("{name}: opened"),
                Err(e) => {
                    assert_eq!(kind(&e), Some(want), "{name}: {e}");
                    assert!(
                        e.to_string().contains(needle),
                        "{name}: '{e}' lacks '{needle}'"
                    );
                }
            }
        }
    }

    /// Every single-byte corruption of a small valid file's header is an error or a file
    /// that opens; never a panic.
    #[test]
    fn corrupting_any_header_byte_never_panics() {
        let good = valid().kv_str("tokenizer.chat_template", "{{ x }}").bytes();
        let header_len = good.len() - 32;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        for i in 0..header_len {
            for v in [0x00, 0xff, 0x80, good[i] ^ 0x01] {
                let mut b = good.clone();
                b[i] = v;
                std::fs::write(&path, &b).unwrap();
                let _ = GgufModelFile::open(&path);
            }
        }
    }
}
