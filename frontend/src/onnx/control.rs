//! Control flow, resolved at import: `If` with a condition known at import inlines the
//! branch it takes; `Loop` (trip count and condition known at import, step by step) and
//! `Scan` (sequence length from a constant dim) are unrolled, their body inlined once
//! per iteration and scan outputs stacked. A condition that is only known at run time
//! is an error naming the node.

use super::import::{NodeCtx, V};
use super::registry::Registry;
use super::tensor::norm_axis;
use llmc_ir::tensor::Tensor;
use llmc_ir::{attrs, Attr, DType, Op};

type R = Result<Vec<V>, String>;

/// Unrolled loops stop with an error beyond this many iterations.
const MAX_UNROLL: i64 = 4096;

/// Adds this family's converters.
pub fn register(r: &mut Registry) {
    r.add("If", if_);
    r.add("Loop", loop_);
    r.add("Scan", scan);
}

fn if_(cx: &mut NodeCtx) -> R {
    let c = cx.const_input(0, "cond")?;
    let take = *c.to_i64().first().ok_or("input 0 (cond) is empty")? != 0;
    let (name, tag) = if take {
        ("then_branch", "then")
    } else {
        ("else_branch", "else")
    };
    let g = cx.attr_graph(name)?.clone();
    cx.inline_graph(&g, tag, &[])
}

/// Stacks one value per step along a new axis `axis` (of the stacked rank).
fn stack(cx: &mut NodeCtx, steps: &[V], axis: i64) -> Result<V, String> {
    let first = *steps
        .first()
        .ok_or("no iterations ran, so a scan output has no shape")?;
    let ax = norm_axis(axis, cx.rank(first) + 1, "scan output axis")? as i64;
    let mut parts = Vec::with_capacity(steps.len());
    for &s in steps {
        parts.push(cx.op(Op::Unsqueeze, &[s], attrs([("axes", Attr::Ints(vec![ax]))]))?);
    }
    cx.op(Op::Concat, &parts, attrs([("axis", Attr::Int(ax))]))
}

fn loop_(cx: &mut NodeCtx) -> R {
    let trips = match cx.opt_input(0)? {
        Some(v) => {
            let t = cx
                .konst(v)?
                .ok_or("input 0 (M, the trip count) must be known at import")?;
            Some(*t.to_i64().first().ok_or("input 0 (M) is empty")?)
        }
        None => None,
    };
    let mut go = match cx.opt_input(1)? {
        Some(v) => {
            let t = cx
                .konst(v)?
                .ok_or("input 1 (cond) must be known at import")?;
            *t.to_i64().first().ok_or("input 1 (cond) is empty")? != 0
        }
        None => true,
    };
    let mut state: Vec<V> = (2..cx.n_inputs())
        .map(|i| cx.input(i))
        .collect::<Result<_, _>>()?;
    let body = cx.attr_graph("body")?.clone();
    let n_state = state.len();
    let n_scan = body
        .output
        .len()
        .checked_sub(1 + n_state)
        .ok_or("the body has too few outputs")?;
    let mut scans: Vec<Vec<V>> = vec![Vec::new(); n_scan];
    let limit = trips.unwrap_or(i64::MAX);
    let mut i = 0i64;
    while i < limit && go {
        if i >= MAX_UNROLL {
            return Err(format!("more than {MAX_UNROLL} iterations to unroll"));
        }
        let iter = cx.constant(Tensor::from_i64(DType::I64, vec![], vec![i]));
        let cond = cx.constant(Tensor::from_i64(DType::Bool, vec![], vec![1]));
        let mut ins = vec![iter, cond];
        ins.extend(&state);
        let outs = cx.inline_graph(&body, &format!("body{i}"), &ins)?;
        let c = cx.konst(outs[0])?.ok_or_else(|| {
            format!("the loop condition after iteration {i} is only known at run time")
        })?;
        go = *c.to_i64().first().ok_or("the loop condition is empty")? != 0;
        state = outs[1..1 + n_state].to_vec();
        for (k, &v) in outs[1 + n_state..].iter().enumerate() {
            scans[k].push(v);
        }
        i += 1;
    }
    let mut out = state;
    for s in &scans {
        out.push(stack(cx, s, 0)?);
    }
    Ok(out)
}

fn scan(cx: &mut NodeCtx) -> R {
    if cx.opset < 9 {
        return Err("Scan before opset 9 (batched, with sequence_lens) is not supported".into());
    }
    let body = cx.attr_graph("body")?.clone();
    let m = cx
        .attr_opt_i("num_scan_inputs")?
        .ok_or("missing attribute `num_scan_inputs`")? as usize;
    let ins = cx.inputs()?;
    let n = ins
        .len()
        .checked_sub(m)
        .ok_or("fewer inputs than num_scan_inputs")?;
    let (states, xs) = ins.split_at(n);
    let list = |cx: &NodeCtx, name: &str, k: usize| -> Result<Vec<i64>, String> {
        let v = cx.attr_ints(name)?.unwrap_or_else(|| vec![0; k]);
        if v.len() != k {
            return Err(format!("attribute `{name}` must hold {k} values"));
        }
        Ok(v)
    };
    let in_axes = list(cx, "scan_input_axes", m)?;
    let in_dirs = list(cx, "scan_input_directions", m)?;
    let n_out = body
        .output
        .len()
        .checked_sub(n)
        .ok_or("the body has too few outputs")?;
    let out_axes = list(cx, "scan_output_axes", n_out)?;
    let out_dirs = list(cx, "scan_output_directions", n_out)?;
    let mut axes = Vec::with_capacity(m);
    let mut len = None;
    for (j, &x) in xs.iter().enumerate() {
        let ax = norm_axis(in_axes[j], cx.rank(x), "scan input axis")?;
        let l = cx.shape(x).0[ax]
            .as_const()
            .ok_or("the scanned dim must be constant")?;
        if len.is_some_and(|p| p != l) {
            return Err("scan inputs have different lengths".into());
        }
        len = Some(l);
        axes.push(ax as i64);
    }
    let len = len.ok_or("no scan inputs")?;
    if len > MAX_UNROLL {
        return Err(format!("a scan of {len} steps is too long to unroll"));
    }
    let mut state = states.to_vec();
    let mut outs: Vec<Vec<V>> = vec![Vec::new(); n_out];
    for t in 0..len {
        let mut step_ins = state.clone();
        for (j, &x) in xs.iter().enumerate() {
            let at = if in_dirs[j] == 1 { len - 1 - t } else { t };
            let s = cx.op(
                Op::Slice,
                &[x],
                attrs([
                    ("starts", Attr::Ints(vec![at])),
                    ("ends", Attr::Ints(vec![at + 1])),
                    ("axes", Attr::Ints(vec![axes[j]])),
                ]),
            )?;
            step_ins.push(cx.op(
                Op::Squeeze,
                &[s],
                attrs([("axes", Attr::Ints(vec![axes[j]]))]),
            )?);
        }
        let o = cx.inline_graph(&body, &format!("step{t}"), &step_ins)?;
        state = o[..n].to_vec();
        for (k, &v) in o[n..].iter().enumerate() {
            outs[k].push(v);
        }
    }
    let mut result = state;
    for (k, mut steps) in outs.into_iter().enumerate() {
        if out_dirs[k] == 1 {
            steps.reverse();
        }
        result.push(stack(cx, &steps, out_axes[k])?);
    }
    Ok(result)
}
