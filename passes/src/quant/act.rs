//! The `act-quant` pass: which precision a block-quantized linear quantizes its
//! activations to at run time. The kernels quantize each activation row to blocks of 32
//! before the integer block sums; int16 (the default) keeps the logits within f32
//! noise, int8 (`--act-quant int8`, llama.cpp's Q8 activations) halves the activation
//! bytes and lets AVX-512 VNNI multiply four u8·s8 pairs per lane (`vpdpbusd`) instead
//! of two i16 ones. The pass tags every `linear`/`linear_act` whose weight is in a
//! block format with `act_bits = 8`; it runs last, after the rewrites that make new
//! linears.

use crate::{Changed, PassContext, PassError};
use llmc_ir::{Attr, Module, Op};

/// Tags the block-quantized linears with `ctx.act_bits` (nothing without it).
pub fn run(m: &mut Module, ctx: &PassContext) -> Result<Changed, PassError> {
    let Some(bits) = ctx.act_bits else {
        crate::note("no --act-quant given: the linears keep int16 activations".into());
        return Ok(Changed::No);
    };
    if !matches!(bits, 8 | 16) {
        return Err(PassError::Pass {
            pass: "act-quant".into(),
            msg: format!("--act-quant takes int8 or int16, got {bits} bits"),
        });
    }
    let mut tagged = 0usize;
    let mut left = 0usize;
    for i in 0..m.graph.nodes.len() {
        let n = &m.graph.nodes[i];
        if !matches!(n.op, Op::Linear | Op::LinearAct) {
            continue;
        }
        let Some(&w) = n.inputs.get(1) else { continue };
        let dt = m.graph.value(w).ty.dtype;
        if !dt.is_quantized() || dt == llmc_ir::DType::Q8Kv {
            left += 1;
            continue;
        }
        let n = &mut m.graph.nodes[i];
        let had = n.attrs.insert("act_bits".into(), Attr::Int(bits as i64));
        if had != Some(Attr::Int(bits as i64)) {
            tagged += 1;
        }
    }
    crate::note(format!(
        "int{bits} activations on {tagged} block-quantized linear(s) ({left} other linear(s) \
         compute in their weights' float type)"
    ));
    Ok((tagged > 0).into())
}
