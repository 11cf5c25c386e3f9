//! Loss functions (`NegativeLogLikelihoodLoss`, `SoftmaxCrossEntropyLoss`): a gather
//! of the target class along axis 1, optional class weights and an ignored index, and
//! the `none`/`sum`/`mean` reductions, written with primitive ops as the ONNX
//! reference defines them (a weighted mean divides by the sum of the weights used).

use super::import::{NodeCtx, V};
use super::registry::Registry;
use llmc_ir::{attrs, Attr, Attrs, DType, Op};

type R = Result<Vec<V>, String>;

/// Adds this family's converters.
pub fn register(r: &mut Registry) {
    r.add("NegativeLogLikelihoodLoss", |cx| {
        let x = cx.input(0)?;
        loss(cx, x)
    });
    r.add("SoftmaxCrossEntropyLoss", |cx| {
        let x = cx.input(0)?;
        let lp = cx.op(Op::LogSoftmax, &[x], attrs([("axis", Attr::Int(1))]))?;
        let mut out = loss(cx, lp)?;
        out.push(lp);
        Ok(out)
    });
}

/// The loss of log-probabilities `lp` [N, C, d...] against the node's target [N, d...].
fn loss(cx: &mut NodeCtx, lp: V) -> R {
    let target = cx.input(1)?;
    let weight = cx.opt_input(2)?;
    let dt = cx.dtype(lp);
    cx.need_float(lp, "input 0")?;
    if cx.rank(lp) < 2 {
        return Err(format!("input 0 must have rank >= 2, got {}", cx.ty(lp)));
    }
    let reduction = cx.attr_s("reduction")?.unwrap_or_else(|| "mean".into());
    let ignore = cx.attr_opt_i("ignore_index")?;
    let t = cx.cast(target, DType::I64)?;
    // Ignored targets gather class 0 (their loss and weight are zeroed below).
    let keep = match ignore {
        Some(ig) => {
            let c = cx.scalar(DType::I64, ig as f64);
            let e = cx.bin(Op::Equal, t, c)?;
            Some(cx.un(Op::Not, e)?)
        }
        None => None,
    };
    let t_safe = match keep {
        Some(k) => {
            let z = cx.scalar(DType::I64, 0.0);
            cx.op(Op::Where, &[k, t, z], Attrs::new())?
        }
        None => t,
    };
    let idx = cx.op(
        Op::Unsqueeze,
        &[t_safe],
        attrs([("axes", Attr::Ints(vec![1]))]),
    )?;
    let picked = cx.op(
        Op::GatherElements,
        &[lp, idx],
        attrs([("axis", Attr::Int(1))]),
    )?;
    let picked = cx.op(
        Op::Squeeze,
        &[picked],
        attrs([("axes", Attr::Ints(vec![1]))]),
    )?;
    let mut l = cx.un(Op::Neg, picked)?;
    let zero = cx.scalar(dt, 0.0);
    if let Some(k) = keep {
        l = cx.op(Op::Where, &[k, l, zero], Attrs::new())?;
    }
    // Per-element weights: the class weight, or 1; 0 where ignored.
    let w = match weight {
        Some(wt) => {
            let g = cx.op(Op::Gather, &[wt, t_safe], attrs([("axis", Attr::Int(0))]))?;
            Some(match keep {
                Some(k) => cx.op(Op::Where, &[k, g, zero], Attrs::new())?,
                None => g,
            })
        }
        // Without class weights an ignored index still leaves them out of the mean.
        None => match keep {
            Some(k) => Some(cx.cast(k, dt)?),
            None => None,
        },
    };
    if let (Some(_), Some(w)) = (weight, w) {
        l = cx.bin(Op::Mul, l, w)?;
    }
    let all = |cx: &mut NodeCtx, v: V| {
        cx.op(
            Op::ReduceSum,
            &[v],
            attrs([("keepdims", Attr::Bool(false))]),
        )
    };
    let y = match reduction.as_str() {
        "none" => l,
        "sum" => all(cx, l)?,
        "mean" => match w {
            Some(w) => {
                let s = all(cx, l)?;
                let ws = all(cx, w)?;
                cx.bin(Op::Div, s, ws)?
            }
            None => cx.op(
                Op::ReduceMean,
                &[l],
                attrs([("keepdims", Attr::Bool(false))]),
            )?,
        },
        other => return Err(format!("attribute `reduction` = {other:?} is unknown")),
    };
    Ok(vec![y])
}
