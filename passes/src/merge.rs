//! GEMM merging: `linear`s that read the same input (Q/K/V projections, an MLP's gate
//! and up projections) become one `linear` over their row-concatenated weights, whose
//! result is split back (`split` on the last axis) — or, for a gated unit's gate and
//! up, read by a one-operand `glu` that takes the two halves. One GEMM instead of
//! several: the input is read (and, for block-quantized weights, quantized) once, one
//! parallel loop covers all the weight rows, fewer kernels launch.
//!
//! This is a graph pass, after `egraph`, rather than an e-graph rule: the extraction
//! cost is a critical path, and siblings sharing an input run side by side on it, so
//! the merge's saving (total work, launches) is invisible there while its larger GEMM
//! is not. Here every use count is exact, and the rewrite is always a win on the CPU.
//!
//! Weights are concatenated at compile time, without dequantizing: the rows of a
//! `[n, k]` weight are contiguous in every storage format, and a block-quantized row
//! is a whole number of blocks (k is the same for every merged weight), so the bytes
//! of the weights one after another are the concatenated weight. Only weights of one
//! format and one k merge ([`can_row_concat`]); `--explain-fusion` says why others
//! did not ([`blockers`]).

use crate::rewrite::{compact, use_counts};
use crate::{Changed, PassContext, PassError};
use llmc_ir::ops::fused_gemm::Act;
use llmc_ir::{
    Attr, Attrs, DType, Graph, Module, Node, NodeId, Op, Shape, TensorType, ValueDef, ValueId,
    Weight, WeightData, WeightId,
};
use std::collections::HashMap;
use std::sync::Arc;

/// Where a merge operand (a weight or a bias) comes from.
#[derive(Clone, Debug, PartialEq)]
enum Source {
    /// A module weight with its bytes.
    Weight(WeightId),
    /// A `constant` node's value.
    Constant(llmc_ir::Tensor),
}

/// What a linear's weight must agree on with its merge partners.
#[derive(Clone, Debug, PartialEq)]
pub struct MergeKey {
    /// Storage dtype of the weight (`q4_1`, `f32`, ...).
    pub dtype: DType,
    /// The contraction length k.
    pub k: i64,
    /// The bias's dtype, if there is one.
    pub bias: Option<DType>,
    /// Weights are module weights (true) or constants (false).
    pub is_weight: bool,
}

/// One `linear` node and what merging needs of it.
struct Member {
    node: usize,
    n: i64,
    w: Source,
    b: Option<Source>,
}

/// The source of value `v`: a weight with bytes, or a constant node.
fn source(m: &Module, v: ValueId) -> Result<Source, String> {
    let g = &m.graph;
    match g.value(v).def {
        ValueDef::Weight(w) => {
            let wt = m
                .weights
                .get(w.0 as usize)
                .ok_or_else(|| format!("weight #{} does not exist", w.0))?;
            if wt.data.bytes().is_none() {
                return Err(format!("weight @{} has no data attached", wt.name));
            }
            Ok(Source::Weight(w))
        }
        ValueDef::Node(nid, 0) => match g.nodes.get(nid.0 as usize) {
            Some(n) if n.op == Op::Constant => match n.attrs.get("value") {
                Some(Attr::Tensor(t)) => Ok(Source::Constant(t.clone())),
                _ => Err("constant without a value".into()),
            },
            Some(n) => Err(format!(
                "%{} is computed by `{}` at run time, not a weight",
                g.value(v).name,
                n.op
            )),
            None => Err("dangling value".into()),
        },
        _ => Err(format!("%{} is not a weight", g.value(v).name)),
    }
}

/// The merge key of linear node `n`, or why it cannot take part in a merge.
pub fn merge_key(m: &Module, n: &Node) -> Result<MergeKey, String> {
    let g = &m.graph;
    let [_, w, rest @ ..] = &n.inputs[..] else {
        return Err("linear without a weight".into());
    };
    let wt = g.ty(*w);
    let [_, k] = &wt.shape.0[..] else {
        return Err(format!("weight {wt} is not [n, k]"));
    };
    let k = k
        .as_const()
        .ok_or_else(|| format!("weight {wt} has a symbolic k"))?;
    let ws = source(m, *w)?;
    let bias = match rest.first() {
        Some(&b) => {
            let bs = source(m, b)?;
            if matches!(bs, Source::Weight(_)) != matches!(ws, Source::Weight(_)) {
                return Err(
                    "the bias and the weight are not both weights or both constants".into(),
                );
            }
            Some(g.ty(b).dtype)
        }
        None => None,
    };
    Ok(MergeKey {
        dtype: wt.dtype,
        k,
        bias,
        is_weight: matches!(ws, Source::Weight(_)),
    })
}

/// Two linears' weights can be concatenated by rows into one weight: same storage
/// format, same k, both with a bias of one dtype or both without, both module weights
/// or both constants.
pub fn can_row_concat(a: &MergeKey, b: &MergeKey) -> bool {
    a == b
}

/// Why linears sharing an input were not merged: for each group of two or more
/// `linear`s reading one value, the pairs that [`can_row_concat`] rejects, named.
pub fn blockers(m: &Module) -> Vec<(String, String)> {
    let g = &m.graph;
    let mut out = Vec::new();
    for (x, nodes) in groups(g) {
        let first = &g.nodes[nodes[0]];
        let name = |i: usize| {
            g.nodes[i]
                .outputs
                .first()
                .map(|&o| g.value(o).name.clone())
                .unwrap_or_default()
        };
        let k0 = merge_key(m, first);
        for &i in &nodes[1..] {
            let ki = merge_key(m, &g.nodes[i]);
            let why = match (&k0, &ki) {
                (Err(e), _) => Some(format!("%{}: {e}", name(nodes[0]))),
                (_, Err(e)) => Some(format!("%{}: {e}", name(i))),
                (Ok(a), Ok(b)) if !can_row_concat(a, b) => Some(format!(
                    "%{} has a {} weight (k = {}, bias {:?}), %{} a {} weight (k = {}, bias {:?}): different formats or k",
                    name(nodes[0]),
                    a.dtype,
                    a.k,
                    a.bias.map(|d| d.to_string()),
                    name(i),
                    b.dtype,
                    b.k,
                    b.bias.map(|d| d.to_string())
                )),
                _ => None,
            };
            if let Some(w) = why {
                out.push((g.value(x).name.clone(), w));
            }
        }
    }
    out
}

/// Linear nodes grouped by their input, groups of two or more, in graph order.
fn groups(g: &Graph) -> Vec<(ValueId, Vec<usize>)> {
    let mut by_x: Vec<(ValueId, Vec<usize>)> = Vec::new();
    for (i, n) in g.nodes.iter().enumerate() {
        if n.op != Op::Linear {
            continue;
        }
        let Some(&x) = n.inputs.first() else { continue };
        match by_x.iter_mut().find(|(v, _)| *v == x) {
            Some((_, v)) => v.push(i),
            None => by_x.push((x, vec![i])),
        }
    }
    by_x.retain(|(_, v)| v.len() >= 2);
    by_x
}

/// The bytes of a weight.
fn weight_bytes(m: &Module, w: WeightId) -> Result<&[u8], String> {
    m.weights
        .get(w.0 as usize)
        .and_then(|w| w.data.bytes())
        .ok_or_else(|| format!("weight #{} has no data", w.0))
}

/// Row-concatenates `parts` into a new weight or constant; returns its value (for a
/// constant, the node to insert before the merged linear).
fn concat(
    m: &mut Module,
    parts: &[&Source],
    name: &str,
    pending: &mut Vec<Node>,
) -> Result<ValueId, String> {
    match parts.first() {
        Some(Source::Weight(w0)) => {
            let first = m
                .weights
                .get(w0.0 as usize)
                .ok_or("missing weight")?
                .clone();
            let mut bytes = Vec::new();
            let mut rows = 0i64;
            for p in parts {
                let Source::Weight(w) = p else {
                    return Err("mixed weight and constant".into());
                };
                bytes.extend_from_slice(weight_bytes(m, *w)?);
                let sh = &m.weights[w.0 as usize].shape;
                rows +=
                    sh.0.first()
                        .and_then(|d| d.as_const())
                        .ok_or("symbolic rows")?;
            }
            let mut dims: Vec<llmc_ir::Dim> = first.shape.0.clone();
            if let Some(d) = dims.first_mut() {
                *d = llmc_ir::Dim::c(rows);
            }
            let shape = Shape(dims);
            let mut wname = format!("{}.cat{}", first.name, parts.len());
            while m.weights.iter().any(|w| w.name == wname) {
                wname.push('_');
            }
            let wid = WeightId(m.weights.len() as u32);
            m.weights.push(Weight {
                name: wname.clone(),
                dtype: first.dtype,
                shape: shape.clone(),
                data: WeightData::Owned(Arc::new(bytes)),
            });
            Ok(m.graph.add_value(
                wname,
                TensorType::new(first.dtype, shape),
                ValueDef::Weight(wid),
            ))
        }
        Some(Source::Constant(_)) => {
            let mut ts = Vec::new();
            for p in parts {
                let Source::Constant(t) = p else {
                    return Err("mixed weight and constant".into());
                };
                ts.push(t);
            }
            let mut a = Attrs::new();
            a.insert("axis".into(), Attr::Int(0));
            let mut ctx = llmc_ir::interp::EvalCtx::default();
            let cat = Op::Concat
                .eval(&ts, &a, &mut ctx)?
                .into_iter()
                .next()
                .ok_or("concat gave no result")?;
            let mut ca = Attrs::new();
            ca.insert("value".into(), Attr::Tensor(cat));
            let ty = Op::Constant
                .infer(&[], &ca)
                .map_err(|e| e.to_string())?
                .into_iter()
                .next()
                .ok_or("constant has no type")?;
            // The node id is fixed when the node list is rebuilt.
            let v = m
                .graph
                .add_value(name.to_string(), ty, ValueDef::Node(NodeId(u32::MAX), 0));
            pending.push(Node {
                op: Op::Constant,
                inputs: Vec::new(),
                outputs: vec![v],
                attrs: ca,
            });
            Ok(v)
        }
        None => Err("nothing to concatenate".into()),
    }
}

/// Counts of what one run merged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Merged {
    /// Groups merged into a linear + split.
    pub split: usize,
    /// Gate/up pairs merged into a linear + one-operand glu.
    pub glu: usize,
}

/// Runs the merge pass.
pub fn run(m: &mut Module, _ctx: &PassContext) -> Result<Changed, PassError> {
    let r = merge(m).map_err(|msg| PassError::Pass {
        pass: "merge".into(),
        msg,
    })?;
    Ok((r.split + r.glu > 0).into())
}

/// Merges every group it can; returns what it merged.
pub fn merge(m: &mut Module) -> Result<Merged, String> {
    let mut done = Merged::default();
    // Node index → nodes to insert before it; nodes to drop; value replacements.
    let mut before: HashMap<usize, Vec<Node>> = HashMap::new();
    let mut replace_node: HashMap<usize, Node> = HashMap::new();
    let mut drop: Vec<bool> = vec![false; m.graph.nodes.len()];
    let mut repl: HashMap<ValueId, ValueId> = HashMap::new();
    let uses = use_counts(&m.graph);
    for (x, nodes) in groups(&m.graph) {
        // Partition the group by merge key, in graph order.
        let mut parts: Vec<(MergeKey, Vec<Member>)> = Vec::new();
        for &i in &nodes {
            let n = &m.graph.nodes[i];
            let Ok(key) = merge_key(m, n) else { continue };
            let w = source(m, n.inputs[1])?;
            let b = n.inputs.get(2).map(|&b| source(m, b)).transpose()?;
            let rows = m.graph.ty(n.inputs[1]).shape.0[0]
                .as_const()
                .ok_or("weight with symbolic rows")?;
            let mem = Member {
                node: i,
                n: rows,
                w,
                b,
            };
            match parts.iter_mut().find(|(k, _)| can_row_concat(k, &key)) {
                Some((_, v)) => v.push(mem),
                None => parts.push((key, vec![mem])),
            }
        }
        for (_, mut members) in parts {
            if members.len() < 2 {
                continue;
            }
            let out_of = |m: &Module, i: usize| m.graph.nodes[i].outputs[0];
            // A gate/up pair read by one glu (and nothing else): the glu reads halves.
            let mut glu_node = None;
            if members.len() == 2 && members[0].n == members[1].n {
                let (a, b) = (out_of(m, members[0].node), out_of(m, members[1].node));
                let single = |v: ValueId| uses.get(v.0 as usize) == Some(&1);
                if single(a) && single(b) {
                    for (gi, gn) in m.graph.nodes.iter().enumerate() {
                        if gn.op != Op::Glu || gn.inputs.len() != 2 {
                            continue;
                        }
                        if gn.inputs[..] == [b, a] {
                            members.swap(0, 1);
                        }
                        let (a, b) = (out_of(m, members[0].node), out_of(m, members[1].node));
                        if gn.inputs[..] == [a, b] {
                            glu_node = Some(gi);
                            break;
                        }
                    }
                }
            }
            let first = members[0].node;
            let first_out = out_of(m, first);
            let base = m.graph.value(first_out).name.clone();
            let mut pending = Vec::new();
            let ws: Vec<&Source> = members.iter().map(|mm| &mm.w).collect();
            let w = concat(m, &ws, &format!("{base}.w_cat"), &mut pending)?;
            let mut ins = vec![x, w];
            if members[0].b.is_some() {
                let bs: Vec<&Source> = members.iter().filter_map(|mm| mm.b.as_ref()).collect();
                ins.push(concat(m, &bs, &format!("{base}.b_cat"), &mut pending)?);
            }
            let lin_ty = Op::Linear
                .infer(
                    &ins.iter().map(|&v| m.graph.ty(v)).collect::<Vec<_>>(),
                    &Attrs::new(),
                )
                .map_err(|e| format!("merged linear at %{base}: {e}"))?
                .remove(0);
            let rank = lin_ty.shape.rank();
            let merged = m.graph.add_value(
                format!("{base}.cat"),
                lin_ty,
                ValueDef::Node(NodeId(u32::MAX), 0),
            );
            pending.push(Node {
                op: Op::Linear,
                inputs: ins,
                outputs: vec![merged],
                attrs: Attrs::new(),
            });
            for mm in &members {
                drop[mm.node] = true;
            }
            if let Some(gi) = glu_node {
                let old = &m.graph.nodes[gi];
                let act = Act::of_attrs(&old.attrs)?;
                let out = old.outputs[0];
                let ty = m.graph.ty(out).clone();
                let name = m.graph.value(out).name.clone();
                let nv = m
                    .graph
                    .add_value(name, ty, ValueDef::Node(NodeId(u32::MAX), 0));
                repl.insert(out, nv);
                replace_node.insert(
                    gi,
                    Node {
                        op: Op::Glu,
                        inputs: vec![merged],
                        outputs: vec![nv],
                        attrs: act.attrs(),
                    },
                );
                done.glu += 1;
            } else {
                let mut sa = Attrs::new();
                sa.insert("axis".into(), Attr::Int(rank as i64 - 1));
                sa.insert(
                    "sizes".into(),
                    Attr::Ints(members.iter().map(|mm| mm.n).collect()),
                );
                let mut outs = Vec::new();
                for mm in &members {
                    let o = out_of(m, mm.node);
                    let ty = m.graph.ty(o).clone();
                    let name = m.graph.value(o).name.clone();
                    let nv = m
                        .graph
                        .add_value(name, ty, ValueDef::Node(NodeId(u32::MAX), 0));
                    repl.insert(o, nv);
                    outs.push(nv);
                }
                pending.push(Node {
                    op: Op::Split,
                    inputs: vec![merged],
                    outputs: outs,
                    attrs: sa,
                });
                done.split += 1;
            }
            before.entry(first).or_default().extend(pending);
        }
    }
    if done.split + done.glu == 0 {
        return Ok(done);
    }
    // Rebuild the node list: inserted nodes before the first member of their group,
    // replaced glus in place, dropped members kept (marked) for `compact` to remove.
    let old_nodes = std::mem::take(&mut m.graph.nodes);
    let mut nodes = Vec::with_capacity(old_nodes.len());
    let mut keep = Vec::with_capacity(old_nodes.len());
    for (i, n) in old_nodes.into_iter().enumerate() {
        for p in before.remove(&i).into_iter().flatten() {
            nodes.push(p);
            keep.push(true);
        }
        match replace_node.remove(&i) {
            Some(r) => {
                nodes.push(r);
                keep.push(true);
                // The old glu's node goes; it is no longer in the list, so its result
                // (replaced) must not point at a node.
                nodes.push(n);
                keep.push(false);
            }
            None => {
                keep.push(!drop[i]);
                nodes.push(n);
            }
        }
    }
    for (i, n) in nodes.iter().enumerate() {
        for (k, &o) in n.outputs.iter().enumerate() {
            if let Some(v) = m.graph.values.get_mut(o.0 as usize) {
                v.def = ValueDef::Node(NodeId(i as u32), k);
            }
        }
    }
    m.graph.nodes = nodes;
    compact(&mut m.graph, &keep, &repl);
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmc_ir::interp::Interpreter;
    use llmc_ir::Tensor;

    /// One Q8_0 block row per row: f16 scale then 32 int8 quants.
    fn q8_rows(rows: usize, seed: u8) -> Vec<u8> {
        let mut v = Vec::new();
        for r in 0..rows {
            v.extend(half::f16::from_f32(0.01 * (r as f32 + 1.0)).to_le_bytes());
            v.extend((0..32u8).map(|e| e.wrapping_mul(7).wrapping_add(seed) % 50));
        }
        v
    }

    /// One Q4_1 block row per row: f16 scale, f16 min, 16 bytes of nibbles.
    fn q41_rows(rows: usize) -> Vec<u8> {
        let mut v = Vec::new();
        for r in 0..rows {
            v.extend(half::f16::from_f32(0.02).to_le_bytes());
            v.extend(half::f16::from_f32(-0.1 * r as f32).to_le_bytes());
            v.extend((0..16u8).map(|e| e.wrapping_mul(37)));
        }
        v
    }

    fn weight(m: &mut Module, name: &str, d: DType, rows: i64, bytes: Vec<u8>) -> ValueId {
        m.add_weight(
            name,
            d,
            Shape::of(&[rows, 32]),
            WeightData::Owned(Arc::new(bytes)),
        )
    }

    #[test]
    fn merges_block_quantized_weights_of_one_format_and_explains_the_other() {
        let mut m = Module::new("qkv");
        let x = m.graph.add_input(
            "x",
            TensorType::new(
                DType::F32,
                Shape(vec![llmc_ir::Dim::sym("seq"), llmc_ir::Dim::c(32)]),
            ),
        );
        let (qb, kb) = (q8_rows(3, 1), q8_rows(2, 5));
        let wq = weight(&mut m, "wq", DType::Q8_0, 3, qb.clone());
        let wk = weight(&mut m, "wk", DType::Q8_0, 2, kb.clone());
        let wv = weight(&mut m, "wv", DType::Q4_1, 2, q41_rows(2));
        let mut outs = Vec::new();
        for w in [wq, wk, wv] {
            outs.extend(
                m.add_node(Op::Linear, &[x, w], Attrs::new())
                    .expect("linear"),
            );
        }
        m.graph.outputs = outs;
        let before = m.clone();
        let why = blockers(&m);
        assert_eq!(why.len(), 1, "{why:?}");
        assert!(
            why[0].1.contains("q8_0") && why[0].1.contains("q4_1"),
            "{why:?}"
        );

        let r = merge(&mut m).expect("merge");
        assert_eq!(r, Merged { split: 1, glu: 0 });
        llmc_ir::verify::verify(&m).expect("verifies");
        // The merged weight is the two weights' bytes one after the other.
        let cat = m.weights.last().expect("new weight");
        assert_eq!(cat.dtype, DType::Q8_0);
        assert_eq!(cat.shape, Shape::of(&[5, 32]));
        let mut want = qb;
        want.extend(kb);
        assert_eq!(cat.data.bytes(), Some(&want[..]));
        let ops: Vec<Op> = m.graph.nodes.iter().map(|n| n.op).collect();
        assert_eq!(ops, vec![Op::Linear, Op::Split, Op::Linear]);

        let xs = Tensor::from_f64(
            DType::F32,
            vec![2, 32],
            (0..64).map(|i| (i as f64 * 0.37).sin()).collect(),
        );
        let a = Interpreter::new(&before)
            .run(std::slice::from_ref(&xs))
            .expect("before");
        let b = Interpreter::new(&m).run(&[xs]).expect("after");
        assert_eq!(a.len(), b.len());
        for (p, q) in a.iter().zip(&b) {
            assert_eq!(p.shape, q.shape);
            // The same dequantized rows, the same f64 dot products: identical.
            assert_eq!(p.to_f64(), q.to_f64());
        }
    }

    #[test]
    fn a_glu_over_a_gate_up_pair_reads_the_halves() {
        let mut m = Module::new("mlp");
        let x = m
            .graph
            .add_input("x", TensorType::new(DType::F32, Shape::of(&[1, 32])));
        let wg = weight(&mut m, "wg", DType::Q8_0, 2, q8_rows(2, 3));
        let wu = weight(&mut m, "wu", DType::Q8_0, 2, q8_rows(2, 9));
        let g = m.add_node(Op::Linear, &[x, wg], Attrs::new()).expect("g")[0];
        let u = m.add_node(Op::Linear, &[x, wu], Attrs::new()).expect("u")[0];
        // up first in the graph does not matter: glu's operand order decides.
        let out = m
            .add_node(Op::Glu, &[u, g], Act::Silu.attrs())
            .expect("glu");
        m.graph.outputs = out;
        let before = m.clone();
        assert_eq!(merge(&mut m).expect("merge"), Merged { split: 0, glu: 1 });
        llmc_ir::verify::verify(&m).expect("verifies");
        let glu = m.graph.nodes.iter().find(|n| n.op == Op::Glu).expect("glu");
        assert_eq!(glu.inputs.len(), 1);
        assert_eq!(m.weights.last().map(|w| w.name.as_str()), Some("wu.cat2"));
        let xs = Tensor::from_f64(
            DType::F32,
            vec![1, 32],
            (0..32).map(|i| i as f64 / 40.0).collect(),
        );
        let a = Interpreter::new(&before)
            .run(std::slice::from_ref(&xs))
            .expect("before");
        let b = Interpreter::new(&m).run(&[xs]).expect("after");
        assert_eq!(a[0].to_f64(), b[0].to_f64());
    }
}
