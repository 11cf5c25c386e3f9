//! `fuse-epilogue`: what a linear's result goes through next becomes that linear's
//! store, so the result is written once, in its final form, instead of as a temporary
//! that one more kernel (and, on the CPU, one more thread-pool round trip) reads:
//!
//! - a residual add (`linear {residual = 1}`, operands `x, w[, b], r`): a
//!   transformer's output and down projections write the residual stream directly;
//! - a `glu` of a gate/up projection (`linear {glu = ACT}`): the store takes
//!   `act(gate) · up` of each output column, when the weight is f32/f16/bf16 (the
//!   kernel pairs each gate row with its up row in one packed panel);
//! - otherwise, a `glu` read only by a linear over a block-quantized weight (the down
//!   projection: `linear {glu_in = ACT}` over the gate/up result itself): the kernel
//!   quantizes its activations block by block anyway, and takes each block's
//!   `act(gate) · up` there.
//!
//! - an RMS norm read only by projections over block-quantized weights (a pre-norm's
//!   Q/K/V, gate/up, the LM head): each reads x through it (`linear {norm_eps = e}`,
//!   the norm's weight the last operand) where it quantizes its activations anyway.
//!
//! `add(a, b)` fuses when one operand is the only use of a `linear` or `linear_act`
//! result that is not returned, and both operands have the add's result type (no
//! broadcasting: the residual is indexed as the output). The fused node takes the
//! add's place in the node order, so the residual is always computed before it; the
//! sum is the same single add (`y + r` in the result's dtype) as before, bit for bit.
//! `glu(z)` (one operand, the halves form) fuses when `z` is the only use of a plain
//! `linear` result (no activation, residual or glu) that is not returned.

use crate::rewrite::{compact, use_counts};
use crate::{Changed, PassContext, PassError};
use llmc_ir::{Attr, DType, Graph, Node, Op, ValueDef, ValueId};
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
            && !node.attrs.contains_key("glu")
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
    // The residual goes after w (and b), before a norm's weight (`norm_eps`).
    let at = inputs.len() - usize::from(lin.attrs.contains_key("norm_eps"));
    inputs.insert(at, r);
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

/// The fused node for `glu` node `n` (one operand), and the linear node it absorbs.
fn fuse_glu(g: &Graph, n: &Node, uses: &[usize]) -> Option<(Node, usize)> {
    let [z] = n.inputs[..] else {
        return None;
    };
    let ValueDef::Node(p, 0) = g.value(z).def else {
        return None;
    };
    let p = p.0 as usize;
    let lin = &g.nodes[p];
    let float_w = lin
        .inputs
        .get(1)
        .is_some_and(|&w| matches!(g.ty(w).dtype, DType::F32 | DType::F16 | DType::BF16));
    let plain = lin.op == Op::Linear
        && ["residual", "glu", "act_bits", "act_amax"]
            .iter()
            .all(|a| !lin.attrs.contains_key(*a));
    if !(plain && float_w && uses.get(z.0 as usize) == Some(&1) && !g.outputs.contains(&z)) {
        return None;
    }
    let act = n.attrs.get("act")?.clone();
    let mut attrs = lin.attrs.clone();
    attrs.insert("glu".into(), act);
    let tys: Vec<&llmc_ir::TensorType> = lin.inputs.iter().map(|&v| g.ty(v)).collect();
    match lin.op.infer(&tys, &attrs) {
        Ok(t) if t.first() == Some(g.ty(n.outputs[0])) => {}
        _ => return None,
    }
    let node = Node {
        op: Op::Linear,
        inputs: lin.inputs.clone(),
        outputs: n.outputs.clone(),
        attrs,
    };
    Some((node, p))
}

/// Linear `reader` with new operands and attributes, if its shape rule accepts them
/// and gives its result type unchanged (its results keep their values).
fn relinked(g: &Graph, reader: &Node, inputs: Vec<ValueId>, attrs: llmc_ir::Attrs) -> Option<Node> {
    let tys: Vec<&llmc_ir::TensorType> = inputs.iter().map(|&v| g.ty(v)).collect();
    match Op::Linear.infer(&tys, &attrs) {
        Ok(t) if t.first() == Some(g.ty(reader.outputs[0])) => Some(Node {
            op: Op::Linear,
            inputs,
            outputs: reader.outputs.clone(),
            attrs,
        }),
        _ => None,
    }
}

/// The fused node for `glu` node `n` whose one reader is a linear over a
/// block-quantized weight: that linear reads the glu's operand with `glu_in`.
/// Returns the reader's index and its new form; the glu node goes.
fn fuse_glu_in(g: &Graph, gi: usize, n: &Node, uses: &[usize]) -> Option<(usize, Node)> {
    let [z] = n.inputs[..] else {
        return None;
    };
    let y = n.outputs[0];
    if uses.get(y.0 as usize) != Some(&1) || g.outputs.contains(&y) {
        return None;
    }
    let (ri, reader) = g
        .nodes
        .iter()
        .enumerate()
        .skip(gi + 1)
        .find(|(_, m)| m.inputs.contains(&y))?;
    let quant_w = reader.inputs.get(1).is_some_and(|&w| {
        let d = g.ty(w).dtype;
        d.is_quantized() && d != DType::Q8Kv
    });
    let plain = reader.op == Op::Linear
        && reader.inputs[0] == y
        && reader.inputs[1..].iter().all(|&v| v != y)
        && ["glu", "glu_in"]
            .iter()
            .all(|a| !reader.attrs.contains_key(*a));
    if !(plain && quant_w) {
        return None;
    }
    let act = n.attrs.get("act")?.clone();
    let mut inputs = reader.inputs.clone();
    inputs[0] = z;
    let mut attrs = reader.attrs.clone();
    attrs.insert("glu_in".into(), act);
    Some((ri, relinked(g, reader, inputs, attrs)?))
}

/// The block formats the CPU kernel's integer path reads (`qfmt` in
/// kernels/src/templates/linalg.rs): a linear over one of them quantizes its
/// activations block by block, where it can take them through a norm.
fn integer_path(d: DType) -> bool {
    matches!(
        d,
        DType::Q8_0
            | DType::Q4_0
            | DType::Q4_1
            | DType::Q5_0
            | DType::Q5_1
            | DType::Q4K
            | DType::Q5K
            | DType::Q6K
            | DType::Q3K
            | DType::Q2K
            | DType::IQ4NL
            | DType::IQ4XS
            | DType::Q4_0G64
            | DType::Q4_1G64
            | DType::Q4_0G128
            | DType::Q4_1G128
            | DType::Q8_0S24
            | DType::Q8_0S832
    )
}

/// The readers of `rms_norm` node `n` rewritten to read its operand through the norm
/// (`linear {norm_eps}`, the norm's weight last), when every reader is a plain
/// `linear` over a block-quantized weight reading the result as x (the projections
/// after a pre-norm: Q/K/V, gate/up, the LM head). The norm node goes.
fn fuse_norm(
    g: &Graph,
    n: &Node,
    uses: &[usize],
    readers: &HashMap<ValueId, Vec<usize>>,
) -> Option<Vec<(usize, Node)>> {
    let [x, nw] = n.inputs[..] else {
        return None;
    };
    let z = n.outputs[0];
    let eps = match n.attrs.get("eps") {
        Some(Attr::Float(e)) => *e,
        _ => return None,
    };
    let rs = readers.get(&z)?;
    if g.outputs.contains(&z) || uses.get(z.0 as usize) != Some(&rs.len()) {
        return None;
    }
    let mut out = Vec::new();
    for &ri in rs {
        let reader = &g.nodes[ri];
        let fusable = reader.op == Op::Linear
            && reader.inputs[0] == z
            && reader.inputs[1..].iter().all(|&v| v != z)
            && reader
                .inputs
                .get(1)
                .is_some_and(|&w| integer_path(g.ty(w).dtype))
            && ["glu", "glu_in", "norm_eps"]
                .iter()
                .all(|a| !reader.attrs.contains_key(*a));
        if !fusable {
            return None;
        }
        let mut inputs = reader.inputs.clone();
        inputs[0] = x;
        inputs.push(nw);
        let mut attrs = reader.attrs.clone();
        attrs.insert("norm_eps".into(), Attr::Float(eps));
        out.push((ri, relinked(g, reader, inputs, attrs)?));
    }
    Some(out)
}

/// The pass as the pass manager runs it: rounds until nothing fuses (a down
/// projection takes its glu in one round and its residual add in the next).
pub fn run(m: &mut llmc_ir::Module, _cx: &PassContext) -> Result<Changed, PassError> {
    let mut changed = Changed::No;
    while round(m) {
        changed = Changed::Yes;
    }
    Ok(changed)
}

/// One round: every fusion whose nodes no other fusion of the round touched.
fn round(m: &mut llmc_ir::Module) -> bool {
    let g = &m.graph;
    let uses = use_counts(g);
    let mut keep = vec![true; g.nodes.len()];
    let mut replaced: Vec<(usize, Node)> = Vec::new();
    // Nodes already rewritten this round (a linear that took its glu_in takes its
    // residual in the next).
    let mut taken = vec![false; g.nodes.len()];
    let mut readers: HashMap<ValueId, Vec<usize>> = HashMap::new();
    for (i, n) in g.nodes.iter().enumerate() {
        for &v in &n.inputs {
            let r = readers.entry(v).or_default();
            if r.last() != Some(&i) {
                r.push(i);
            }
        }
    }
    for (i, n) in g.nodes.iter().enumerate() {
        if n.op == Op::RmsNorm {
            if let Some(fused) = fuse_norm(g, n, &uses, &readers) {
                if fused.iter().all(|(ri, _)| keep[*ri] && !taken[*ri]) {
                    keep[i] = false;
                    for (ri, node) in fused {
                        taken[ri] = true;
                        replaced.push((ri, node));
                    }
                }
            }
            continue;
        }
        let fused = match n.op {
            Op::Add => fuse(g, n, &uses),
            Op::Glu => fuse_glu(g, n, &uses),
            _ => None,
        };
        if let Some((node, p)) = fused {
            if keep[p] && !taken[p] {
                keep[p] = false;
                taken[i] = true;
                replaced.push((i, node));
            }
            continue;
        }
        if n.op == Op::Glu {
            if let Some((ri, node)) = fuse_glu_in(g, i, n, &uses) {
                if !taken[ri] && keep[ri] {
                    keep[i] = false;
                    taken[ri] = true;
                    replaced.push((ri, node));
                }
            }
        }
    }
    if replaced.is_empty() {
        return false;
    }
    let g = &mut m.graph;
    for (i, node) in replaced {
        g.nodes[i] = node;
    }
    compact(g, &keep, &HashMap::new());
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmc_ir::Tensor;

    fn parse(src: &str) -> llmc_ir::Module {
        llmc_ir::text::parse(src, "t.llmc").unwrap()
    }

    /// Runs both modules in the interpreter on the same f32 inputs of these shapes
    /// (fixed values) and asserts their first outputs are equal, bit for bit.
    fn assert_same_outputs(before: &llmc_ir::Module, after: &llmc_ir::Module, shapes: &[&[usize]]) {
        let inputs: Vec<Tensor> = shapes
            .iter()
            .enumerate()
            .map(|(salt, shape)| {
                let n: usize = shape.iter().product();
                let v = (0..n)
                    .map(|i| (((i * 29 + salt * 13) % 41) as f64 - 20.0) / 9.0)
                    .collect();
                Tensor::from_f64(DType::F32, shape.to_vec(), v)
            })
            .collect();
        let run = |m: &llmc_ir::Module| llmc_ir::interp::Interpreter::new(m).run(&inputs).unwrap();
        assert_eq!(run(before)[0].to_f64(), run(after)[0].to_f64());
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
        assert_same_outputs(&before, &after, &[&[2, 3, 4], &[4, 4], &[4, 4], &[4]]);
    }

    /// A gate/up projection's glu becomes its store, with the same numbers.
    #[test]
    fn a_float_gate_up_glu_becomes_the_linears_store() {
        let src = r#"
module @t {
  graph @main(%x: f32[3, 4], %w: f32[8, 4], %b: f32[8]) -> (%y: f32[3, 4]) {
    %z = linear(%x, %w, %b) : f32[3, 8]
    %y = glu(%z) {act = "silu"} : f32[3, 4]
    return %y
  }
}"#;
        let before = parse(src);
        let mut after = before.clone();
        assert_eq!(
            run(&mut after, &PassContext::default()).unwrap(),
            Changed::Yes
        );
        llmc_ir::verify::verify(&after).unwrap();
        let [n] = &after.graph.nodes[..] else {
            panic!("one node: {:?}", after.graph.nodes)
        };
        assert_eq!(
            (n.op, n.attrs.get("glu")),
            (Op::Linear, Some(&Attr::Str("silu".into())))
        );
        assert_same_outputs(&before, &after, &[&[3, 4], &[8, 4], &[8]]);
    }

    /// A block-quantized MLP: the glu goes into the down projection's activation read
    /// (`glu_in`) and, the next round, the residual add into its store; the gate/up
    /// projection (a quantized weight: no paired panels) keeps its plain store.
    #[test]
    fn a_quantized_down_projection_takes_its_glu_and_its_residual() {
        let src = r#"
module @t {
  graph @main(%x: f32[3, 32], %wg: q8_0[64, 32], %wd: q8_0[32, 32]) -> (%y: f32[3, 32]) {
    %z = linear(%x, %wg) : f32[3, 64]
    %h = glu(%z) {act = "silu"} : f32[3, 32]
    %d = linear(%h, %wd) : f32[3, 32]
    %y = add(%x, %d) : f32[3, 32]
    return %y
  }
}"#;
        let mut m = parse(src);
        assert_eq!(run(&mut m, &PassContext::default()).unwrap(), Changed::Yes);
        llmc_ir::verify::verify(&m).unwrap();
        let ops: Vec<Op> = m.graph.nodes.iter().map(|n| n.op).collect();
        assert_eq!(ops, [Op::Linear, Op::Linear]);
        let (up, down) = (&m.graph.nodes[0], &m.graph.nodes[1]);
        assert!(up.attrs.is_empty(), "{:?}", up.attrs);
        assert_eq!(down.attrs.get("glu_in"), Some(&Attr::Str("silu".into())));
        assert_eq!(down.attrs.get("residual"), Some(&Attr::Int(1)));
        assert_eq!(down.inputs[0], up.outputs[0]);
    }

    /// A pre-norm's projections over block-quantized weights read x through the norm
    /// (`norm_eps`, its weight last), then take a residual before that weight; a norm
    /// one of whose readers has float weights stays.
    #[test]
    fn quantized_projections_take_their_norm() {
        let src = r#"
module @t {
  graph @main(%x: f32[3, 32], %nw: f32[32], %wq: q8_0[32, 32], %wk: q4_0[16, 32], %wv: q4_0[32, 32]) -> (%y: f32[3, 32], %k: f32[3, 16]) {
    %n = rms_norm(%x, %nw) {eps = 0.00001} : f32[3, 32]
    %q = linear(%n, %wq) : f32[3, 32]
    %v = linear(%n, %wv) : f32[3, 32]
    %s = add(%q, %v) : f32[3, 32]
    %y = add(%x, %s) : f32[3, 32]
    %k = linear(%s, %wk) : f32[3, 16]
    return %y, %k
  }
}"#;
        let mut m = parse(src);
        assert_eq!(run(&mut m, &PassContext::default()).unwrap(), Changed::Yes);
        llmc_ir::verify::verify(&m).unwrap();
        let ops: Vec<Op> = m.graph.nodes.iter().map(|n| n.op).collect();
        assert_eq!(
            ops,
            [Op::Linear, Op::Linear, Op::Add, Op::Linear],
            "{ops:?}"
        );
        let (x, nw) = (m.graph.inputs[0], m.graph.inputs[1]);
        // %q takes the norm, then %s = q + v its residual (before the norm's weight),
        // in the add's place.
        let (v, q) = (&m.graph.nodes[0], &m.graph.nodes[1]);
        assert_eq!(q.attrs.get("norm_eps"), Some(&Attr::Float(0.00001)));
        assert_eq!(q.attrs.get("residual"), Some(&Attr::Int(1)));
        assert_eq!(q.inputs[0], x);
        assert_eq!(q.inputs.last(), Some(&nw));
        assert_eq!(q.inputs.len(), 4);
        assert_eq!(v.attrs.get("norm_eps"), Some(&Attr::Float(0.00001)));
        assert_eq!((v.inputs[0], v.inputs.len()), (x, 3));
        // A float reader keeps the norm for all.
        let float = src.replace("%wv: q4_0[32, 32]", "%wv: f32[32, 32]");
        let mut m = parse(&float);
        run(&mut m, &PassContext::default()).unwrap();
        assert_eq!(m.graph.nodes[0].op, Op::RmsNorm);
        assert!(m
            .graph
            .nodes
            .iter()
            .all(|n| !n.attrs.contains_key("norm_eps")));
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
