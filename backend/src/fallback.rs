//! The dequantizing fallback for block formats the kernels cannot read yet (Q2_K): before code generation such a weight is decoded
//! to f32 with the reference decoder (`llmc_ir::quant`), so every GGUF file llmc
//! imports also compiles and runs, with the same values the interpreter computes. The
//! IR keeps the stored format; only the compiled copy of the module changes. Native
//! kernels for these formats will make this a no-op for them.

use crate::BuildError;
use llmc_ir::{DType, Module, WeightData};
use std::sync::Arc;

/// Whether `m` has a weight the kernels cannot read as stored.
pub fn needs_fallback(m: &Module) -> bool {
    m.weights
        .iter()
        .any(|w| !llmc_kernels::templates::reads_dtype(w.dtype))
}

/// Decodes every weight of a format the kernels cannot read to f32, in place (data,
/// weight dtype and the weight's value type). Returns the names of the weights decoded.
pub fn dequantize_unsupported(m: &mut Module) -> Result<Vec<String>, BuildError> {
    let mut done = Vec::new();
    for i in 0..m.weights.len() {
        let w = &m.weights[i];
        if llmc_kernels::templates::reads_dtype(w.dtype) {
            continue;
        }
        let err = |msg: String| BuildError::Weight {
            name: w.name.clone(),
            msg,
        };
        let numel = w
            .shape
            .0
            .iter()
            .map(|d| d.as_const().and_then(|c| usize::try_from(c).ok()))
            .try_fold(1usize, |n, d| d.and_then(|d| n.checked_mul(d)))
            .ok_or_else(|| err(format!("shape {} is not constant", w.shape)))?;
        let bytes = w
            .data
            .bytes()
            .ok_or_else(|| err("has no data to dequantize".into()))?;
        let vals = llmc_ir::quant::dequantize(w.dtype, bytes, numel)
            .map_err(|e| err(format!("dequantizing {}: {e}", w.dtype)))?;
        let mut out = Vec::with_capacity(numel * 4);
        for v in vals {
            out.extend((v as f32).to_le_bytes());
        }
        let name = w.name.clone();
        let id = llmc_ir::WeightId(i as u32);
        let w = &mut m.weights[i];
        w.dtype = DType::F32;
        w.data = WeightData::Owned(Arc::new(out));
        if let Some(v) = m.weight_value(id) {
            m.graph.values[v.0 as usize].ty.dtype = DType::F32;
        }
        done.push(name);
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmc_ir::{Op, Shape, TensorType};

    #[test]
    fn q2_k_weight_becomes_f32_with_the_reference_values() {
        let mut m = Module::new("t");
        // One Q2_K super-block (84 bytes): scales and mins, 2-bit quants, then d and
        // dmin (a format the kernels do not read).
        let mut block: Vec<u8> = (0..80u32).map(|i| (i * 37 + 11) as u8).collect();
        block.extend(half::f16::from_f64(0.5).to_le_bytes());
        block.extend(half::f16::from_f64(0.25).to_le_bytes());
        let wt = m.add_weight(
            "w",
            DType::Q2K,
            Shape::of(&[1, 256]),
            WeightData::Owned(Arc::new(block.clone())),
        );
        let x = m
            .graph
            .add_input("x", TensorType::new(DType::F32, Shape::of(&[1, 256])));
        let y = m.add1(Op::Linear, &[x, wt], Default::default()).unwrap();
        m.graph.outputs.push(y);
        assert!(needs_fallback(&m));
        let done = dequantize_unsupported(&mut m).unwrap();
        assert_eq!(done, vec!["w".to_string()]);
        assert!(!needs_fallback(&m));
        assert_eq!(m.graph.ty(wt).dtype, DType::F32);
        let want = llmc_ir::quant::dequantize(DType::Q2K, &block, 256).unwrap();
        let got: Vec<f64> = m.weights[0]
            .data
            .bytes()
            .unwrap()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect();
        assert_eq!(got, want);
        assert!(got.iter().any(|&v| v != 0.0));
        llmc_ir::verify::verify(&m).unwrap();
    }
}
