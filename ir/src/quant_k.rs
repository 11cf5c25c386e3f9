//! GGUF K-quant super-blocks (Q4_K, Q5_K, Q6_K), decoded as llama.cpp defines them.

use crate::DType;

/// Appends the decoded values of whole super-blocks of `dtype` in `bytes` to `out`.
pub fn dequantize_k(dtype: DType, _bytes: &[u8], _out: &mut Vec<f64>) -> Result<(), String> {
    Err(format!("decoding {dtype} is not available yet"))
}
