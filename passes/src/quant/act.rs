//! The `act-quant` pass: which precision a block-quantized linear quantizes its
//! activations to at run time. The kernels quantize each activation row to blocks of 32
//! before the integer block sums; int16 (the default) keeps the logits within f32
//! noise, int8 (`--act-quant int8`, llama.cpp's Q8 activations) halves the activation
//! bytes and lets AVX-512 VNNI multiply four u8·s8 pairs per lane (`vpdpbusd`) instead
//! of two i16 ones. The pass tags every `linear`/`linear_act` whose weight is in a
//! block format with `act_bits = 8`; it runs last, after the rewrites that make new
//! linears.
//!
//! With static scales (`--act-quant int8-static`, `int16-static`) each block's range
//! is not measured per row at run time but fixed from the calibration: the linear
//! gets `act_amax`, per block of 32 input columns the largest `|x|` its input took on
//! the calibration text (`Hessian::amax`, as SmoothQuant left it, found by the
//! weight's name; a merged Q/K/V or gate/up weight, `NAME.catN`, by its first
//! part's), and the kernel quantizes with `amax / 127` (int16: twice the range over
//! 32767, see [`headroom`]), saturating what goes beyond.

use crate::{Changed, PassContext, PassError};
use llmc_ir::{Attr, Module, Op, ValueDef};

/// The calibrated weight name a (possibly merged: `NAME.cat3`, `NAME.cat3_`) weight
/// was made from.
fn source_name(name: &str) -> &str {
    match name.rsplit_once(".cat") {
        Some((base, tail))
            if !tail.is_empty()
                && tail
                    .trim_end_matches('_')
                    .bytes()
                    .all(|b| b.is_ascii_digit()) =>
        {
            base
        }
        _ => name,
    }
}

/// Per block of 32 columns, the largest of the columns' ranges, times `margin`.
fn block_ranges(amax: &[f64], margin: f64) -> Vec<f64> {
    amax.chunks(32)
        .map(|c| margin * c.iter().fold(0.0f64, |a, &v| a.max(v)))
        .collect()
}

/// How far above the calibrated range a static scale reaches. int16 keeps twice the
/// range (one of its 15 bits): on all-MiniLM-L6-v2 the calibrated maximum itself
/// saturated an all-capitals line (cosine 0.9946 to f32, 0.9997 with the headroom).
/// int8 has no bit to spare: there the calibrated maximum measured best (headroom
/// 0.75x, 1x, 2x, 4x gave cosine 0.969, 0.997, 0.990, 0.968).
fn headroom(bits: u8) -> f64 {
    if bits == 16 {
        2.0
    } else {
        1.0
    }
}

/// Tags the block-quantized linears with `ctx.act_bits` (nothing without it).
pub fn run(m: &mut Module, ctx: &PassContext) -> Result<Changed, PassError> {
    let Some(bits) = ctx.act_bits else {
        crate::note("no --act-quant given: the linears keep int16 activations".into());
        return Ok(Changed::No);
    };
    let err = |msg: String| PassError::Pass {
        pass: "act-quant".into(),
        msg,
    };
    if !matches!(bits, 8 | 16) {
        return Err(err(format!(
            "--act-quant takes int8 or int16, got {bits} bits"
        )));
    }
    let cal = match (ctx.act_static, &ctx.calibration) {
        (false, _) => None,
        (true, Some(c)) => Some(c.clone()),
        (true, None) => {
            return Err(err(format!(
                "--act-quant int{bits}-static needs calibration statistics (--calibration FILE)"
            )))
        }
    };
    let mut tagged = 0usize;
    let mut left = 0usize;
    let mut fixed = 0usize;
    let mut unmeasured: Vec<String> = Vec::new();
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
        // The calibrated ranges of this linear's input, if static scales were asked.
        let ranges = cal.as_ref().and_then(|c| {
            let ValueDef::Weight(wid) = m.graph.value(w).def else {
                return None;
            };
            let name = source_name(&m.weight(wid).name).to_string();
            let k = m.weight(wid).shape.as_consts()?.get(1).copied()? as usize;
            let got = c
                .input_stats(&name)
                .filter(|h| h.amax.len() == k && k.is_multiple_of(32))
                .map(|h| block_ranges(&h.amax, headroom(bits)));
            if got.is_none() {
                unmeasured.push(format!("@{name}"));
            }
            got
        });
        let n = &mut m.graph.nodes[i];
        let had = n.attrs.insert("act_bits".into(), Attr::Int(bits as i64));
        let mut changed = had != Some(Attr::Int(bits as i64));
        if let Some(r) = ranges {
            let had = n.attrs.insert("act_amax".into(), Attr::Floats(r.clone()));
            changed |= had != Some(Attr::Floats(r));
            fixed += 1;
        }
        if changed {
            tagged += 1;
        }
    }
    let mut msg = format!(
        "int{bits} activations on {tagged} block-quantized linear(s) ({left} other linear(s) \
         compute in their weights' float type)"
    );
    if cal.is_some() {
        msg.push_str(&format!("; static scales from the calibration on {fixed}"));
        if !unmeasured.is_empty() {
            msg.push_str(&format!(
                ", run-time scales on {} not measured there ({})",
                unmeasured.len(),
                unmeasured.join(", ")
            ));
        }
    }
    crate::note(msg);
    Ok((tagged > 0).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_weights_name_their_first_part() {
        assert_eq!(source_name("q.weight.cat3"), "q.weight");
        assert_eq!(source_name("q.weight.cat2_"), "q.weight");
        assert_eq!(source_name("model.concat.weight"), "model.concat.weight");
        assert_eq!(source_name("x.cat"), "x.cat");
        let cols: Vec<f64> = (0..64).map(f64::from).collect();
        assert_eq!(block_ranges(&cols, 1.0), vec![31.0, 63.0]);
        assert_eq!(block_ranges(&cols, 2.0), vec![62.0, 126.0]);
    }
}
