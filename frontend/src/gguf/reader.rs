//! The GGUF container (versions 2 and 3, little-endian): header, metadata key/values,
//! tensor infos and the aligned data section, read from bytes that usually come from a
//! memory map. A GGUF file is untrusted input, so every count and length read from it
//! is checked against the bytes that remain before anything is allocated or looped
//! over: a string length of 2^60 is an error naming the key, never an allocation.
//!
//! Layout: `"GGUF"`, `version: u32`, `tensor_count: u64`, `kv_count: u64`, then
//! `kv_count` of (`key: string`, `type: u32`, value), then `tensor_count` of (`name:
//! string`, `n_dims: u32`, `dims: [u64; n_dims]` fastest-varying first, `ggml_type:
//! u32`, `offset: u64` into the data section), padding to `general.alignment`
//! (default 32), and the data section. Strings are `len: u64` + UTF-8 bytes.

use crate::FrontendError;
use llmc_ir::{DType, Shape};
use std::collections::HashMap;

/// The magic bytes at the start of every GGUF file.
pub const MAGIC: &[u8; 4] = b"GGUF";
/// Data-section alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Deepest nesting of arrays inside arrays accepted (llama.cpp writes at most 2).
const MAX_ARRAY_DEPTH: usize = 8;
/// ggml tensors have at most 4 dims.
const MAX_DIMS: u32 = 4;

/// A metadata value type id (`gguf_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueType {
    /// 0
    U8,
    /// 1
    I8,
    /// 2
    U16,
    /// 3
    I16,
    /// 4
    U32,
    /// 5
    I32,
    /// 6
    F32,
    /// 7
    Bool,
    /// 8
    String,
    /// 9
    Array,
    /// 10
    U64,
    /// 11
    I64,
    /// 12
    F64,
}

impl ValueType {
    fn from_id(id: u32) -> Option<ValueType> {
        use ValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// The fewest bytes one value of this type takes in the file (a string: its
    /// length prefix; an array: its type and count).
    fn min_size(self) -> u64 {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 12,
        }
    }

    /// The name used in messages.
    pub fn name(self) -> &'static str {
        use ValueType::*;
        match self {
            U8 => "u8",
            I8 => "i8",
            U16 => "u16",
            I16 => "i16",
            U32 => "u32",
            I32 => "i32",
            F32 => "f32",
            Bool => "bool",
            String => "string",
            Array => "array",
            U64 => "u64",
            I64 => "i64",
            F64 => "f64",
        }
    }
}

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    /// u8
    U8(u8),
    /// i8
    I8(i8),
    /// u16
    U16(u16),
    /// i16
    I16(i16),
    /// u32
    U32(u32),
    /// i32
    I32(i32),
    /// f32
    F32(f32),
    /// bool
    Bool(bool),
    /// string
    Str(String),
    /// u64
    U64(u64),
    /// i64
    I64(i64),
    /// f64
    F64(f64),
    /// Array of values of one type.
    Array(ValueType, Vec<MetaValue>),
}

impl MetaValue {
    /// The value's type.
    pub fn value_type(&self) -> ValueType {
        match self {
            MetaValue::U8(_) => ValueType::U8,
            MetaValue::I8(_) => ValueType::I8,
            MetaValue::U16(_) => ValueType::U16,
            MetaValue::I16(_) => ValueType::I16,
            MetaValue::U32(_) => ValueType::U32,
            MetaValue::I32(_) => ValueType::I32,
            MetaValue::F32(_) => ValueType::F32,
            MetaValue::Bool(_) => ValueType::Bool,
            MetaValue::Str(_) => ValueType::String,
            MetaValue::U64(_) => ValueType::U64,
            MetaValue::I64(_) => ValueType::I64,
            MetaValue::F64(_) => ValueType::F64,
            MetaValue::Array(..) => ValueType::Array,
        }
    }

    /// An integer of any width, as i128 (so u64 and i64 both fit).
    pub fn as_int(&self) -> Option<i128> {
        Some(match *self {
            MetaValue::U8(v) => v as i128,
            MetaValue::I8(v) => v as i128,
            MetaValue::U16(v) => v as i128,
            MetaValue::I16(v) => v as i128,
            MetaValue::U32(v) => v as i128,
            MetaValue::I32(v) => v as i128,
            MetaValue::U64(v) => v as i128,
            MetaValue::I64(v) => v as i128,
            _ => return None,
        })
    }

    /// A float (f32 or f64) or an integer, as f64. An f32 becomes the f64 nearest its
    /// shortest decimal form (`1e-5f32` gives `1e-5`, not `9.99999974e-6`): the value
    /// the writer meant, so a config read from GGUF equals one read from JSON.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v.to_string().parse::<f64>().unwrap_or(v as f64)),
            MetaValue::F64(v) => Some(v),
            _ => self.as_int().map(|v| v as f64),
        }
    }

    /// A string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A bool.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            MetaValue::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// Describes the value's type for messages (`array of string`).
    pub fn describe(&self) -> String {
        match self {
            MetaValue::Array(t, _) => format!("array of {}", t.name()),
            v => v.value_type().name().to_string(),
        }
    }
}

/// One tensor's record.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    /// The tensor's name in the file.
    pub name: String,
    /// Dims as GGUF lists them (`ne0` first, the fastest-varying).
    pub ne: Vec<u64>,
    /// Row-major shape (the reverse of `ne`).
    pub shape: Shape,
    /// Element type.
    pub dtype: DType,
    /// The ggml type id it was stored with.
    pub ggml_type: u32,
    /// Absolute byte offset of the data in the file.
    pub offset: u64,
    /// Byte length of the data (shape x dtype).
    pub size: u64,
}

/// A parsed GGUF header: metadata and tensor records. Tensor offsets are absolute.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufHeader {
    /// The file, for messages.
    pub file: String,
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata, in file order.
    pub metadata: Vec<(String, MetaValue)>,
    /// Tensor records, in file order.
    pub tensors: Vec<TensorInfo>,
    /// Data-section alignment.
    pub alignment: u64,
    /// Absolute offset of the data section.
    pub data_offset: u64,
    index: HashMap<String, usize>,
    tensor_index: HashMap<String, usize>,
}

/// Maps a ggml type id to a dtype. Types llmc does not decode are `None`.
pub fn ggml_dtype(id: u32) -> Option<DType> {
    Some(match id {
        0 => DType::F32,
        1 => DType::F16,
        2 => DType::Q4_0,
        3 => DType::Q4_1,
        6 => DType::Q5_0,
        7 => DType::Q5_1,
        8 => DType::Q8_0,
        10 => DType::Q2K,
        11 => DType::Q3K,
        12 => DType::Q4K,
        13 => DType::Q5K,
        14 => DType::Q6K,
        20 => DType::IQ4NL,
        23 => DType::IQ4XS,
        24 => DType::I8,
        25 => DType::I16,
        26 => DType::I32,
        27 => DType::I64,
        28 => DType::F64,
        30 => DType::BF16,
        _ => return None,
    })
}

/// The ggml name of a type id, for messages.
pub fn ggml_type_name(id: u32) -> &'static str {
    const NAMES: [&str; 42] = [
        "f32",
        "f16",
        "q4_0",
        "q4_1",
        "q4_2",
        "q4_3",
        "q5_0",
        "q5_1",
        "q8_0",
        "q8_1",
        "q2_K",
        "q3_K",
        "q4_K",
        "q5_K",
        "q6_K",
        "q8_K",
        "iq2_xxs",
        "iq2_xs",
        "iq3_xxs",
        "iq1_s",
        "iq4_nl",
        "iq3_s",
        "iq2_s",
        "iq4_xs",
        "i8",
        "i16",
        "i32",
        "i64",
        "f64",
        "iq1_m",
        "bf16",
        "q4_0_4_4",
        "q4_0_4_8",
        "q4_0_8_8",
        "tq1_0",
        "tq2_0",
        "iq4_nl_4_4",
        "iq4_nl_4_8",
        "iq4_nl_8_8",
        "mxfp4",
        "nvfp4",
        "q1_0",
    ];
    NAMES.get(id as usize).copied().unwrap_or("unknown")
}

/// A bounds-checked little-endian reader. `what` in each call names the field for the
/// error message.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    file: &'a str,
}

impl<'a> Cursor<'a> {
    fn err(&self, msg: String) -> FrontendError {
        FrontendError::Format {
            file: self.file.to_string(),
            msg,
        }
    }

    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8], FrontendError> {
        if n > self.remaining() {
            return Err(self.err(format!(
                "truncated file: {} needs {n} bytes at offset {}, only {} remain",
                what(),
                self.pos,
                self.remaining()
            )));
        }
        let s = &self.bytes[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(
        &mut self,
        what: &dyn Fn() -> String,
    ) -> Result<[u8; N], FrontendError> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, FrontendError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, FrontendError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A length-prefixed UTF-8 string; the length is checked before anything is read.
    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String, FrontendError> {
        let len = self.u64(&|| format!("the length of {}", what()))?;
        if len > self.remaining() {
            return Err(self.err(format!(
                "{}: string length {len} runs past the end of the file ({} bytes remain at \
                 offset {})",
                what(),
                self.remaining(),
                self.pos
            )));
        }
        let b = self.take(len, what)?;
        String::from_utf8(b.to_vec())
            .map_err(|e| self.err(format!("{}: string is not valid UTF-8 ({e})", what())))
    }

    /// A value of type `ty`. `depth` counts enclosing arrays.
    fn value(
        &mut self,
        ty: ValueType,
        depth: usize,
        what: &dyn Fn() -> String,
    ) -> Result<MetaValue, FrontendError> {
        Ok(match ty {
            ValueType::U8 => MetaValue::U8(u8::from_le_bytes(self.array(what)?)),
            ValueType::I8 => MetaValue::I8(i8::from_le_bytes(self.array(what)?)),
            ValueType::U16 => MetaValue::U16(u16::from_le_bytes(self.array(what)?)),
            ValueType::I16 => MetaValue::I16(i16::from_le_bytes(self.array(what)?)),
            ValueType::U32 => MetaValue::U32(self.u32(what)?),
            ValueType::I32 => MetaValue::I32(i32::from_le_bytes(self.array(what)?)),
            ValueType::F32 => MetaValue::F32(f32::from_le_bytes(self.array(what)?)),
            ValueType::Bool => {
                let [b] = self.array::<1>(what)?;
                match b {
                    0 => MetaValue::Bool(false),
                    1 => MetaValue::Bool(true),
                    b => return Err(self.err(format!("{}: bool byte is {b}, not 0 or 1", what()))),
                }
            }
            ValueType::String => MetaValue::Str(self.string(what)?),
            ValueType::U64 => MetaValue::U64(self.u64(what)?),
            ValueType::I64 => MetaValue::I64(i64::from_le_bytes(self.array(what)?)),
            ValueType::F64 => MetaValue::F64(f64::from_le_bytes(self.array(what)?)),
            ValueType::Array => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.err(format!(
                        "{}: arrays nested deeper than {MAX_ARRAY_DEPTH}",
                        what()
                    )));
                }
                let tid = self.u32(&|| format!("the element type of {}", what()))?;
                let ety = ValueType::from_id(tid).ok_or_else(|| {
                    self.err(format!("{}: unknown array element type {tid}", what()))
                })?;
                let n = self.u64(&|| format!("the element count of {}", what()))?;
                // Each element takes at least min_size bytes: a count the rest of the
                // file cannot hold is rejected before any allocation.
                let need = n.checked_mul(ety.min_size());
                if need.is_none_or(|b| b > self.remaining()) {
                    return Err(self.err(format!(
                        "{}: array of {n} {} elements needs at least {} bytes, only {} remain",
                        what(),
                        ety.name(),
                        need.map_or_else(|| "more than 2^64".to_string(), |b| b.to_string()),
                        self.remaining()
                    )));
                }
                let mut items = Vec::with_capacity(n as usize);
                for i in 0..n {
                    items.push(self.value(ety, depth + 1, &|| format!("{}[{i}]", what()))?);
                }
                MetaValue::Array(ety, items)
            }
        })
    }
}

fn align_up(x: u64, a: u64) -> Option<u64> {
    x.checked_add(a - 1).map(|v| v / a * a)
}

impl GgufHeader {
    /// Parses the header of a GGUF file held in `bytes` (the whole file: tensor data
    /// ranges are checked against its length). `file` names it in messages.
    pub fn parse(bytes: &[u8], file: &str) -> Result<GgufHeader, FrontendError> {
        let mut c = Cursor {
            bytes,
            pos: 0,
            file,
        };
        let magic: [u8; 4] = c.array(&|| "the magic".to_string())?;
        if &magic != MAGIC {
            return Err(c.err(format!(
                "bad magic {:?} (expected \"GGUF\"): not a GGUF file",
                String::from_utf8_lossy(&magic)
            )));
        }
        let version = c.u32(&|| "the version".to_string())?;
        if version != 2 && version != 3 {
            let hint = if version.swap_bytes() == 2 || version.swap_bytes() == 3 {
                " (a big-endian file; only little-endian GGUF is supported)"
            } else if version == 1 {
                " (GGUF v1 is obsolete; convert the model again)"
            } else {
                ""
            };
            return Err(c.err(format!(
                "unsupported GGUF version {version}{hint}; versions 2 and 3 are supported"
            )));
        }
        let n_tensors = c.u64(&|| "the tensor count".to_string())?;
        let n_kv = c.u64(&|| "the metadata count".to_string())?;
        // A key/value takes at least 8 (key length) + 4 (type) + 1 bytes; a tensor
        // record at least 8 (name length) + 4 (n_dims) + 4 (type) + 8 (offset).
        if n_kv.checked_mul(13).is_none_or(|b| b > c.remaining()) {
            return Err(c.err(format!(
                "metadata count {n_kv} cannot fit in the {} bytes that remain",
                c.remaining()
            )));
        }
        if n_tensors.checked_mul(24).is_none_or(|b| b > c.remaining()) {
            return Err(c.err(format!(
                "tensor count {n_tensors} cannot fit in the {} bytes that remain",
                c.remaining()
            )));
        }
        let mut metadata = Vec::with_capacity(n_kv as usize);
        let mut index = HashMap::new();
        for i in 0..n_kv {
            let key = c.string(&|| format!("metadata key #{i}"))?;
            let tid = c.u32(&|| format!("the type of metadata key `{key}`"))?;
            let ty = ValueType::from_id(tid)
                .ok_or_else(|| c.err(format!("metadata key `{key}`: unknown value type {tid}")))?;
            let v = c.value(ty, 0, &|| format!("metadata key `{key}`"))?;
            if index.insert(key.clone(), metadata.len()).is_some() {
                return Err(c.err(format!("metadata key `{key}` appears twice")));
            }
            metadata.push((key, v));
        }
        let alignment = match index.get("general.alignment").map(|&i| &metadata[i].1) {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_int() {
                Some(a) if a > 0 && (a as u64).is_power_of_two() && a <= u32::MAX as i128 => {
                    a as u64
                }
                _ => {
                    return Err(FrontendError::BadValue {
                        file: file.to_string(),
                        key: "general.alignment".into(),
                        msg: format!("{v:?} is not a power of two"),
                    })
                }
            },
        };
        let mut tensors = Vec::with_capacity(n_tensors as usize);
        let mut tensor_index = HashMap::new();
        for i in 0..n_tensors {
            let name = c.string(&|| format!("the name of tensor #{i}"))?;
            let n_dims = c.u32(&|| format!("the dim count of tensor `{name}`"))?;
            if n_dims > MAX_DIMS {
                return Err(c.err(format!(
                    "tensor `{name}`: {n_dims} dims (ggml allows at most {MAX_DIMS})"
                )));
            }
            let mut ne = Vec::with_capacity(n_dims as usize);
            for d in 0..n_dims {
                ne.push(c.u64(&|| format!("dim {d} of tensor `{name}`"))?);
            }
            let ggml_type = c.u32(&|| format!("the type of tensor `{name}`"))?;
            let rel = c.u64(&|| format!("the data offset of tensor `{name}`"))?;
            let bad = |msg: String| FrontendError::BadTensor {
                file: file.to_string(),
                name: name.clone(),
                msg,
            };
            let dtype = ggml_dtype(ggml_type).ok_or_else(|| {
                bad(format!(
                    "ggml type {ggml_type} ({}) is not supported for tensor {name} (supported: \
                     f32, f16, bf16, q4_0, q4_1, q5_0, q5_1, q8_0, q2_K..q6_K, iq4_nl, \
                     iq4_xs, i8..i64, f64)",
                    ggml_type_name(ggml_type)
                ))
            })?;
            if ne.iter().any(|&d| d > i64::MAX as u64) {
                return Err(bad(format!("dims {ne:?} overflow")));
            }
            let mut numel: u64 = 1;
            for &d in &ne {
                numel = numel
                    .checked_mul(d)
                    .filter(|&n| n <= i64::MAX as u64)
                    .ok_or_else(|| bad(format!("dims {ne:?} overflow")))?;
            }
            let bl = dtype.block_len() as u64;
            if ne.first().copied().unwrap_or(1) % bl != 0 {
                return Err(bad(format!(
                    "row length {} is not a multiple of the {dtype} block of {bl}",
                    ne.first().copied().unwrap_or(1)
                )));
            }
            let size = dtype
                .storage_bytes(numel)
                .ok_or_else(|| bad(format!("{numel} elements do not fit {dtype} blocks")))?;
            if rel % alignment != 0 {
                return Err(bad(format!(
                    "data offset {rel} is not a multiple of the alignment {alignment}"
                )));
            }
            if tensor_index.insert(name.clone(), tensors.len()).is_some() {
                return Err(bad("appears twice".into()));
            }
            let shape = Shape::of(&ne.iter().rev().map(|&d| d as i64).collect::<Vec<_>>());
            tensors.push(TensorInfo {
                name,
                ne,
                shape,
                dtype,
                ggml_type,
                offset: rel,
                size,
            });
        }
        let data_offset = align_up(c.pos as u64, alignment)
            .ok_or_else(|| c.err("the data section offset overflows".into()))?;
        let len = bytes.len() as u64;
        if data_offset > len && !tensors.is_empty() {
            return Err(c.err(format!(
                "truncated file: the data section starts at {data_offset}, past the end of \
                 the file ({len} bytes)"
            )));
        }
        // Absolute ranges inside the file, and no tensor running into the next one.
        for t in &mut tensors {
            let start = data_offset.checked_add(t.offset);
            let end = start.and_then(|s| s.checked_add(t.size));
            match (start, end) {
                (Some(s), Some(e)) if e <= len => t.offset = s,
                _ => {
                    return Err(FrontendError::BadTensor {
                        file: file.to_string(),
                        name: t.name.clone(),
                        msg: format!(
                            "data at offset {} + {} bytes ({} of {:?}) lies outside the file \
                             ({} bytes, data section at {data_offset})",
                            t.offset, t.size, t.dtype, t.ne, len
                        ),
                    })
                }
            }
        }
        let mut order: Vec<&TensorInfo> = tensors.iter().collect();
        order.sort_by_key(|t| t.offset);
        for w in order.windows(2) {
            if w[0].offset + w[0].size > w[1].offset {
                return Err(FrontendError::BadTensor {
                    file: file.to_string(),
                    name: w[0].name.clone(),
                    msg: format!(
                        "shape {:?} x {} needs {} bytes, but the next tensor `{}` starts {} \
                         bytes after it",
                        w[0].ne,
                        w[0].dtype,
                        w[0].size,
                        w[1].name,
                        w[1].offset - w[0].offset
                    ),
                });
            }
        }
        Ok(GgufHeader {
            file: file.to_string(),
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
            index,
            tensor_index,
        })
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// A tensor record.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    fn missing(&self, key: &str) -> FrontendError {
        FrontendError::MissingKey {
            file: self.file.clone(),
            key: key.to_string(),
        }
    }

    fn bad(&self, key: &str, msg: String) -> FrontendError {
        FrontendError::BadValue {
            file: self.file.clone(),
            key: key.to_string(),
            msg,
        }
    }

    /// A required non-negative integer that fits i64.
    pub fn req_count(&self, key: &str) -> Result<i64, FrontendError> {
        self.opt_count(key)?.ok_or_else(|| self.missing(key))
    }

    /// An optional non-negative integer that fits i64.
    pub fn opt_count(&self, key: &str) -> Result<Option<i64>, FrontendError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        match v.as_int() {
            Some(n) if (0..=i64::MAX as i128).contains(&n) => Ok(Some(n as i64)),
            Some(n) => Err(self.bad(key, format!("{n} is not a valid count"))),
            None => Err(self.bad(key, format!("expected an integer, found {}", v.describe()))),
        }
    }

    /// An optional float (f32, f64 or integer).
    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>, FrontendError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        v.as_f64()
            .map(Some)
            .ok_or_else(|| self.bad(key, format!("expected a number, found {}", v.describe())))
    }

    /// A required string.
    pub fn req_str(&self, key: &str) -> Result<&str, FrontendError> {
        self.opt_str(key)?.ok_or_else(|| self.missing(key))
    }

    /// An optional string.
    pub fn opt_str(&self, key: &str) -> Result<Option<&str>, FrontendError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        v.as_str()
            .map(Some)
            .ok_or_else(|| self.bad(key, format!("expected a string, found {}", v.describe())))
    }

    /// An optional bool.
    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>, FrontendError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        v.as_bool()
            .map(Some)
            .ok_or_else(|| self.bad(key, format!("expected a bool, found {}", v.describe())))
    }

    fn opt_array(&self, key: &str) -> Option<&[MetaValue]> {
        match self.get(key) {
            Some(MetaValue::Array(_, items)) => Some(items),
            _ => None,
        }
    }

    fn not_array(&self, key: &str, want: &str) -> FrontendError {
        let found = self.get(key).map(|v| v.describe()).unwrap_or_default();
        self.bad(key, format!("expected an array of {want}, found {found}"))
    }

    /// An optional array of strings.
    pub fn opt_str_array(&self, key: &str) -> Result<Option<Vec<String>>, FrontendError> {
        if self.get(key).is_none() {
            return Ok(None);
        }
        let items = self
            .opt_array(key)
            .ok_or_else(|| self.not_array(key, "strings"))?;
        items
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .map(Some)
            .ok_or_else(|| self.not_array(key, "strings"))
    }

    /// An optional array of numbers, as f64.
    pub fn opt_f64_array(&self, key: &str) -> Result<Option<Vec<f64>>, FrontendError> {
        if self.get(key).is_none() {
            return Ok(None);
        }
        let items = self
            .opt_array(key)
            .ok_or_else(|| self.not_array(key, "numbers"))?;
        items
            .iter()
            .map(|v| v.as_f64())
            .collect::<Option<Vec<_>>>()
            .map(Some)
            .ok_or_else(|| self.not_array(key, "numbers"))
    }

    /// An optional array of integers.
    pub fn opt_int_array(&self, key: &str) -> Result<Option<Vec<i64>>, FrontendError> {
        if self.get(key).is_none() {
            return Ok(None);
        }
        let items = self
            .opt_array(key)
            .ok_or_else(|| self.not_array(key, "integers"))?;
        items
            .iter()
            .map(|v| v.as_int().and_then(|n| i64::try_from(n).ok()))
            .collect::<Option<Vec<_>>>()
            .map(Some)
            .ok_or_else(|| self.not_array(key, "integers"))
    }
}
