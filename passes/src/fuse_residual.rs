//! `fuse-residual`: a residual add of a linear's result becomes that linear's last
//! store step (`linear {residual = 1}`, operands `x, w[, b], r`), so a transformer's
//! output and down projections write the residual stream directly instead of a
//! temporary that one more kernel (and, on the CPU, one more thread-pool round trip)
//! adds to it.
//!
//! `add(a, b)` fuses when one operand is the only use of a `linear` or `linear_act`
//! result that is not returned, and both operands have the add's result type (no
//! broadcasting: the residual is indexed as the output). The fused node takes the
//! add's place in the node order, so the residual is always computed before it; the
//! sum is the same single add (`y + r` in the result's dtype) as before, bit for bit.

use crate::rewrite::{compact, use_counts};
use crate::{Changed, PassContext, PassError};
use llmc_ir::{Attr, Graph, Node, Op, ValueDef, ValueId};
use std::collections::HashMap;

/// The fused node for `add` node `n`, and the linear node it absorbs, if it fuses.
fn fuse(g: &Graph, n: &Node, uses: &[usize]) -> Option<(Node, usize)> {
    let [a, b] = n.inputs[..] else {
        return None;
    };
    let out_ty = g.ty(n.outputs[0]);
    if !out_ty.dtype.is_float() || g.ty(a) != out_ty || g.ty(b) != out_ty {
        return None;
    }
    let linear_of = |v: ValueId| -> Option<usize> {
        let ValueDef::Node(p, 0) = g.value(v).def else {
            return None;
        };
        let p = p.0 as usize;
        let node = &g.nodes[p];
        let fusable = matches!(node.op, Op::Linear | Op::LinearAct)
            && !node.attrs.contains_key("residual")
            && uses.get(v.0 as usize) == Some(&1)
            && !g.outputs.contains(&v);
        fusable.then_some(p)
    };
    let (p, r) = match (linear_of(a), linear_of(b)) {
        (Some(p), _) => (p, b),
        (None, Some(p)) => (p, a),
        (None, None) => return None,
    };
    let lin = &g.nodes[p];
    let mut inputs = lin.inputs.clone();
    inputs.push(r);
    let mut attrs = lin.attrs.clone();
    attrs.insert("residual".into(), Attr::Int(1));
    let tys: Vec<&llmc_ir::TensorType> = inputs.iter().map(|&v| g.ty(v)).collect();
    match lin.op.infer(&tys, &attrs) {
        Ok(t) if t.first() == Some(out_ty) => {}
        _ => return None,
    }
    let node = Node {
        op: lin.op,
        inputs,
        outputs: n.outputs.clone(),
        attrs,
    };
    Some((node, p))
}

/// The pass as the pass manager runs it.
pub fn run(m: &mut llmc_ir::Module, _cx: &PassContext) -> Result<Changed, PassError> {
    let g = &m.graph;
    let uses = use_counts(g);
    let mut keep = vec![true; g.nodes.len()];
    let mut replaced: Vec<(usize, Node)> = Vec::new();
    for (i, n) in g.nodes.iter().enumerate() {
        if n.op != Op::Add {
            continue;
        }
        if let Some((node, p)) = fuse(g, n, &uses) {
            if keep[p] {
                keep[p] = false;
                replaced.push((i, node));
            }
        }
    }
    if replaced.is_empty() {
        return Ok(Changed::No);
    }
    let g = &mut m.graph;
    for (i, node) in replaced {
        g.nodes[i] = node;
    }
    compact(g, &keep, &HashMap::new());
    Ok(Changed::Yes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmc_ir::{DType, Tensor};

    fn parse(src: &str) -> llmc_ir::Module {
        llmc_ir::text::parse(src, "t.llmc").unwrap()
    }

    /// A pre-norm block's two residual adds: the output projection's result added to
    /// the stream (operand order either way), and a `linear_act` with a bias.
    const BLOCK: &str = r#"
module @t {
  graph @main(%x: f32[2, 3, 4], %w: f32[4, 4], %w2: f32[4, 4], %b: f32[4]) -> (%y: f32[2, 3, 4]) {
    %o = linear(%x, %w) : f32[2, 3, 4]
    %h = add(%x, %o) : f32[2, 3, 4]
    %m = linear_act(%h, %w2, %b) {act = "silu"} : f32[2, 3, 4]
    %y = add(%m, %h) : f32[2, 3, 4]
    return %y
  }
}
"#;

    #[test]
    fn residual_adds_become_the_linears_store_with_the_same_bits() {
        let before = parse(BLOCK);
        let mut after = before.clone();
        let changed = run(&mut after, &PassContext::default()).unwrap();
        assert_eq!(changed, Changed::Yes);
        llmc_ir::verify::verify(&after).unwrap();
        let ops: Vec<Op> = after.graph.nodes.iter().map(|n| n.op).collect();
        assert_eq!(ops, [Op::Linear, Op::LinearAct]);
        for n in &after.graph.nodes {
            assert_eq!(n.attrs.get("residual"), Some(&Attr::Int(1)));
        }
        let val = |n: usize, salt: usize| -> Vec<f64> {
            (0..n)
                .map(|i| (((i * 29 + salt * 13) % 41) as f64 - 20.0) / 9.0)
                .collect()
        };
        let inputs = [
            Tensor::from_f64(DType::F32, vec![2, 3, 4], val(24, 1)),
            Tensor::from_f64(DType::F32, vec![4, 4], val(16, 2)),
            Tensor::from_f64(DType::F32, vec![4, 4], val(16, 3)),
            Tensor::from_f64(DType::F32, vec![4], val(4, 4)),
        ];
        let run = |m: &llmc_ir::Module| llmc_ir::interp::Interpreter::new(m).run(&inputs).unwrap();
        assert_eq!(run(&before)[0].to_f64(), run(&after)[0].to_f64());
    }

    /// A linear result read twice, returned, or added with broadcasting stays.
    #[test]
    fn shared_returned_or_broadcast_results_stay() {
        for src in [
            r#"module @t {
  graph @main(%x: f32[3, 4], %w: f32[4, 4]) -> (%y: f32[3, 4], %o: f32[3, 4]) {
    %o = linear(%x, %w) : f32[3, 4]
    %y = add(%x, %o) : f32[3, 4]
    return %y, %o
  }
}"#,
            r#"module @t {
  graph @main(%x: f32[3, 4], %w: f32[4, 4]) -> (%y: f32[3, 4]) {
    %o = linear(%x, %w) : f32[3, 4]
    %s = add(%x, %o) : f32[3, 4]
    %y = mul(%s, %o) : f32[3, 4]
    return %y
  }
}"#,
            r#"module @t {
  graph @main(%x: f32[3, 4], %w: f32[4, 4], %r: f32[4]) -> (%y: f32[3, 4]) {
    %o = linear(%x, %w) : f32[3, 4]
    %y = add(%o, %r) : f32[3, 4]
    return %y
  }
}"#,
        ] {
            let mut m = parse(src);
            assert_eq!(
                run(&mut m, &PassContext::default()).unwrap(),
                Changed::No,
                "{src}"
            );
        }
    }
}
