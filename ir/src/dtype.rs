//! Element types. Plain numeric types are what activations carry; the packed block
//! formats (GGUF's Q4_0..Q8_0, K-quants, IQ4) exist only as weight types, so a model
//! keeps its quantized weights as they were shipped until a kernel reads them; the one
//! exception is `q8_kv`, the int8 format of the serving engine's KV pools.

use std::fmt;

/// An element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    /// 32-bit IEEE float.
    F32,
    /// 16-bit IEEE float.
    F16,
    /// bfloat16.
    BF16,
    /// 64-bit IEEE float.
    F64,
    /// Signed 64-bit integer.
    I64,
    /// Signed 32-bit integer.
    I32,
    /// Signed 16-bit integer.
    I16,
    /// Signed 8-bit integer.
    I8,
    /// Unsigned 8-bit integer.
    U8,
    /// Unsigned 16-bit integer.
    U16,
    /// Unsigned 32-bit integer.
    U32,
    /// Boolean (one byte per element in memory).
    Bool,
    /// GGUF Q8_0: blocks of 32, one f16 scale + 32 i8.
    Q8_0,
    /// GGUF Q4_0: blocks of 32, one f16 scale + 16 bytes of nibbles, offset 8.
    Q4_0,
    /// GGUF Q4_1: blocks of 32, f16 scale + f16 min + 16 bytes of nibbles.
    Q4_1,
    /// GGUF Q4_K: super-blocks of 256 with 6-bit sub-block scales and mins.
    Q4K,
    /// GGUF Q5_K: super-blocks of 256, 5-bit quants.
    Q5K,
    /// GGUF Q6_K: super-blocks of 256, 6-bit quants.
    Q6K,
    /// GGUF Q5_0: blocks of 32, f16 scale + 32 high bits + 16 bytes of nibbles, offset 16.
    Q5_0,
    /// GGUF Q5_1: blocks of 32, f16 scale + f16 min + 32 high bits + 16 bytes of nibbles.
    Q5_1,
    /// GGUF Q2_K: super-blocks of 256, 2-bit quants, 4-bit sub-block scales and mins.
    Q2K,
    /// GGUF Q3_K: super-blocks of 256, 3-bit quants (2 low bits + a high-bit mask),
    /// 6-bit signed sub-block scales.
    Q3K,
    /// GGUF IQ4_NL: blocks of 32, f16 scale + 16 bytes of 4-bit indices into a fixed
    /// non-linear table.
    IQ4NL,
    /// GGUF IQ4_XS: super-blocks of 256, IQ4_NL's table with 6-bit sub-block scales.
    IQ4XS,
    /// llmc's int8 KV-cache format: blocks of 64 (a head vector, or a quarter of a
    /// 256-wide one), one f32 scale then 64 × i8 codes: `x = d q`. Not a GGUF type: the
    /// codes of a block are contiguous so a kernel reads a head vector as one run.
    Q8Kv,
    /// llmc's int4 groups of 64, symmetric (Q4_0 with a wider group): f16 scale `d`
    /// then two 16-byte Q4_0 nibble blocks (sub-block `j`'s element `e` in byte
    /// `2 + 16 j + e mod 16`, low nibble for `e < 16`): `w = d (q - 8)`. Not a GGUF type.
    Q4_0G64,
    /// int4 groups of 64 with a minimum (Q4_1 with a wider group): f16 `d`, f16 `m`, two
    /// nibble blocks at byte 4: `w = d q + m`.
    Q4_1G64,
    /// [`DType::Q4_0G64`] with groups of 128 (four nibble blocks).
    Q4_0G128,
    /// [`DType::Q4_1G64`] with groups of 128 (four nibble blocks).
    Q4_1G128,
    /// llmc's half-sparse Q8_0 (2:4 and 16:32 pruning): blocks of 32 with at most 16
    /// nonzero weights, stored compressed: f16 scale `d`, a u32 mask (bit `e`: element
    /// `e` is kept; at most 16 bits, two per four after 2:4), then the kept i8 codes in
    /// element order, zeros to 16 (`w = d q`, 0 where the mask is clear). 22 bytes per
    /// 32 weights (Q8_0: 34). Named for 2:4, its first pattern.
    Q8_0S24,
    /// [`DType::Q8_0S24`] for three quarters sparse (`--prune sparse=24:32`: 24 of
    /// every 32 zeroed): at most 8 kept weights per block of 32, their codes
    /// zero-padded to 8. 14 bytes per 32 weights.
    Q8_0S832,
}

/// The broad class a dtype belongs to, used by type rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DTypeClass {
    /// f16/bf16/f32/f64.
    Float,
    /// Signed or unsigned integers.
    Int,
    /// bool.
    Bool,
    /// A packed block format (weights only).
    Quant,
}

impl DType {
    /// Every dtype, in declaration order (used by tests and the parser).
    pub const ALL: &'static [DType] = &[
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::F64,
        DType::I64,
        DType::I32,
        DType::I16,
        DType::I8,
        DType::U8,
        DType::U16,
        DType::U32,
        DType::Bool,
        DType::Q8_0,
        DType::Q4_0,
        DType::Q4_1,
        DType::Q4K,
        DType::Q5K,
        DType::Q6K,
        DType::Q5_0,
        DType::Q5_1,
        DType::Q2K,
        DType::Q3K,
        DType::IQ4NL,
        DType::IQ4XS,
        DType::Q8Kv,
        DType::Q4_0G64,
        DType::Q4_1G64,
        DType::Q4_0G128,
        DType::Q4_1G128,
        DType::Q8_0S24,
        DType::Q8_0S832,
    ];

    /// The name used in the text format.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::F64 => "f64",
            DType::I64 => "i64",
            DType::I32 => "i32",
            DType::I16 => "i16",
            DType::I8 => "i8",
            DType::U8 => "u8",
            DType::U16 => "u16",
            DType::U32 => "u32",
            DType::Bool => "bool",
            DType::Q8_0 => "q8_0",
            DType::Q4_0 => "q4_0",
            DType::Q4_1 => "q4_1",
            DType::Q4K => "q4_k",
            DType::Q5K => "q5_k",
            DType::Q6K => "q6_k",
            DType::Q5_0 => "q5_0",
            DType::Q5_1 => "q5_1",
            DType::Q2K => "q2_k",
            DType::Q3K => "q3_k",
            DType::IQ4NL => "iq4_nl",
            DType::IQ4XS => "iq4_xs",
            DType::Q8Kv => "q8_kv",
            DType::Q4_0G64 => "q4_0_g64",
            DType::Q4_1G64 => "q4_1_g64",
            DType::Q4_0G128 => "q4_0_g128",
            DType::Q4_1G128 => "q4_1_g128",
            DType::Q8_0S24 => "q8_0_2of4",
            DType::Q8_0S832 => "q8_0_8of32",
        }
    }

    /// Parses a text-format name.
    pub fn from_name(s: &str) -> Option<DType> {
        DType::ALL.iter().copied().find(|d| d.name() == s)
    }

    /// The class of this dtype.
    pub fn class(self) -> DTypeClass {
        match self {
            DType::F32 | DType::F16 | DType::BF16 | DType::F64 => DTypeClass::Float,
            DType::I64
            | DType::I32
            | DType::I16
            | DType::I8
            | DType::U8
            | DType::U16
            | DType::U32 => DTypeClass::Int,
            DType::Bool => DTypeClass::Bool,
            _ => DTypeClass::Quant,
        }
    }

    /// True for float types.
    pub fn is_float(self) -> bool {
        self.class() == DTypeClass::Float
    }

    /// True for integer types (not bool).
    pub fn is_int(self) -> bool {
        self.class() == DTypeClass::Int
    }

    /// True for packed block formats.
    pub fn is_quantized(self) -> bool {
        self.class() == DTypeClass::Quant
    }

    /// Elements per block: 1 for plain types, 32 or 256 for block formats.
    pub fn block_len(self) -> usize {
        match self {
            DType::Q8_0
            | DType::Q4_0
            | DType::Q4_1
            | DType::Q5_0
            | DType::Q5_1
            | DType::IQ4NL
            | DType::Q8_0S24
            | DType::Q8_0S832 => 32,
            DType::Q4K | DType::Q5K | DType::Q6K | DType::Q2K | DType::Q3K | DType::IQ4XS => 256,
            DType::Q8Kv | DType::Q4_0G64 | DType::Q4_1G64 => 64,
            DType::Q4_0G128 | DType::Q4_1G128 => 128,
            _ => 1,
        }
    }

    /// Bytes per block (for plain types: bytes per element).
    pub fn block_bytes(self) -> usize {
        match self {
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::F16 | DType::BF16 | DType::I16 | DType::U16 => 2,
            DType::F64 | DType::I64 => 8,
            DType::I8 | DType::U8 | DType::Bool => 1,
            DType::Q8_0 => 2 + 32,
            DType::Q4_0 => 2 + 16,
            DType::Q4_1 => 2 + 2 + 16,
            DType::Q4K => 2 + 2 + 12 + 128,
            DType::Q5K => 2 + 2 + 12 + 32 + 128,
            DType::Q6K => 128 + 64 + 16 + 2,
            DType::Q5_0 => 2 + 4 + 16,
            DType::Q5_1 => 2 + 2 + 4 + 16,
            DType::Q2K => 16 + 64 + 2 + 2,
            DType::Q3K => 32 + 64 + 12 + 2,
            DType::IQ4NL => 2 + 16,
            DType::IQ4XS => 2 + 2 + 4 + 128,
            DType::Q8Kv => 4 + 64,
            DType::Q4_0G64 => 2 + 32,
            DType::Q4_1G64 => 2 + 2 + 32,
            DType::Q4_0G128 => 2 + 64,
            DType::Q4_1G128 => 2 + 2 + 64,
            DType::Q8_0S24 => 2 + 4 + 16,
            DType::Q8_0S832 => 2 + 4 + 8,
        }
    }

    /// For the sparse Q8_0 formats, the most weights a block of 32 keeps (the codes
    /// stored per block): 16 for [`DType::Q8_0S24`], 8 for [`DType::Q8_0S832`].
    pub fn sparse_keep(self) -> Option<usize> {
        match self {
            DType::Q8_0S24 => Some(16),
            DType::Q8_0S832 => Some(8),
            _ => None,
        }
    }

    /// Bytes needed to store `numel` elements, or `None` when `numel` is not a whole
    /// number of blocks (or the size overflows).
    pub fn storage_bytes(self, numel: u64) -> Option<u64> {
        let bl = self.block_len() as u64;
        if !numel.is_multiple_of(bl) {
            return None;
        }
        (numel / bl).checked_mul(self.block_bytes() as u64)
    }

    /// The type values of this dtype compute in: block formats dequantize to f32.
    pub fn compute_type(self) -> DType {
        if self.is_quantized() {
            DType::F32
        } else {
            self
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for &d in DType::ALL {
            assert_eq!(DType::from_name(d.name()), Some(d));
        }
        assert_eq!(DType::from_name("f8"), None);
    }

    #[test]
    fn storage_sizes_match_gguf_blocks() {
        assert_eq!(DType::Q4_1.storage_bytes(64), Some(40));
        assert_eq!(DType::Q8_0.storage_bytes(32), Some(34));
        assert_eq!(DType::Q4K.storage_bytes(256), Some(144));
        assert_eq!(DType::Q6K.storage_bytes(256), Some(210));
        assert_eq!(DType::Q5K.storage_bytes(256), Some(176));
        assert_eq!(DType::Q5_0.storage_bytes(32), Some(22));
        assert_eq!(DType::Q5_1.storage_bytes(32), Some(24));
        assert_eq!(DType::Q2K.storage_bytes(256), Some(84));
        assert_eq!(DType::Q3K.storage_bytes(256), Some(110));
        assert_eq!(DType::IQ4NL.storage_bytes(32), Some(18));
        assert_eq!(DType::IQ4XS.storage_bytes(256), Some(136));
        assert_eq!(DType::Q4_0G128.storage_bytes(256), Some(132));
        assert_eq!(DType::Q4_1G64.storage_bytes(128), Some(72));
        assert_eq!(DType::Q4_0G64.storage_bytes(96), None);
        assert_eq!(DType::Q4_0.storage_bytes(33), None);
        assert_eq!(DType::F16.storage_bytes(3), Some(6));
    }
}
