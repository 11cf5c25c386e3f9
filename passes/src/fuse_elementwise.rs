//! `fuse-elementwise`: maximal chains of elementwise ops become one `fused_elementwise`
//! node, so a residual add, a bias chain or an add→mul→silu left after the e-graph runs
//! as one loop instead of one kernel (and one temporary) per op.
//!
//! A chain grows backwards from a consumer into a producer when the producer is an
//! elementwise op without attributes (or already fused), its single result is read
//! once, by this consumer, and is not a graph output, and it has the consumer's result
//! type (dtype and shape: operands of the chain may broadcast, intermediates do not, so
//! nothing is recomputed). A value read twice stays a node and both readers read it.
//! Float results only (f32, f64), every operand of that dtype.

use crate::rewrite::{compact, use_counts};
use crate::{Changed, PassContext, PassError};
use llmc_ir::ops::fused::{fusible, FusedExpr};
use llmc_ir::{Attr, DType, Graph, Node, Op, ValueDef, ValueId};
use std::collections::HashMap;

/// Most ops in one fused expression (a longer chain is cut into several).
pub const MAX_OPS: usize = 32;

/// Can node `n` be part of a chain?
fn candidate(g: &Graph, n: &Node) -> bool {
    let op_ok = (fusible(n.op) && n.attrs.is_empty()) || n.op == Op::FusedElementwise;
    let [out] = n.outputs[..] else {
        return false;
    };
    let dt = g.ty(out).dtype;
    op_ok && matches!(dt, DType::F32 | DType::F64) && n.inputs.iter().all(|&v| g.ty(v).dtype == dt)
}

/// The expression of a candidate node over its own operands.
fn own_expr(n: &Node) -> Option<FusedExpr> {
    if n.op == Op::FusedElementwise {
        return llmc_ir::ops::fused::expr_of(&n.attrs).ok();
    }
    Some(FusedExpr::Apply(
        n.op,
        (0..n.inputs.len()).map(FusedExpr::Arg).collect(),
    ))
}

struct Grow<'g> {
    g: &'g Graph,
    uses: &'g [usize],
    outputs: &'g [ValueId],
    absorbed: &'g mut [bool],
    leaves: Vec<ValueId>,
    ops: usize,
}

impl Grow<'_> {
    /// `e` (over `ins`) with every operand either grown into its producer or a leaf.
    fn expand(
        &mut self,
        e: &FusedExpr,
        ins: &[ValueId],
        root_ty: &llmc_ir::TensorType,
    ) -> FusedExpr {
        match e {
            FusedExpr::Apply(op, kids) => FusedExpr::Apply(
                *op,
                kids.iter().map(|k| self.expand(k, ins, root_ty)).collect(),
            ),
            FusedExpr::Arg(k) => match ins.get(*k) {
                Some(&v) => self.operand(v, root_ty),
                None => FusedExpr::Arg(usize::MAX),
            },
        }
    }

    fn operand(&mut self, v: ValueId, root_ty: &llmc_ir::TensorType) -> FusedExpr {
        if let ValueDef::Node(p, 0) = self.g.value(v).def {
            let pi = p.0 as usize;
            if let Some(pn) = self.g.nodes.get(pi) {
                let single = self.uses.get(v.0 as usize) == Some(&1) && !self.outputs.contains(&v);
                if single && !self.absorbed[pi] && candidate(self.g, pn) && self.g.ty(v) == root_ty
                {
                    if let Some(pe) = own_expr(pn) {
                        if self.ops + pe.ops() <= MAX_OPS {
                            self.ops += pe.ops();
                            self.absorbed[pi] = true;
                            return self.expand(&pe, &pn.inputs, root_ty);
                        }
                    }
                }
            }
        }
        let k = self.leaves.iter().position(|&x| x == v).unwrap_or_else(|| {
            self.leaves.push(v);
            self.leaves.len() - 1
        });
        FusedExpr::Arg(k)
    }
}

/// Runs the pass.
pub fn run(m: &mut llmc_ir::Module, _cx: &PassContext) -> Result<Changed, PassError> {
    let g = &m.graph;
    let uses = use_counts(g);
    let mut absorbed = vec![false; g.nodes.len()];
    let mut replaced: HashMap<usize, Node> = HashMap::new();
    for ci in (0..g.nodes.len()).rev() {
        let n = &g.nodes[ci];
        if absorbed[ci] || !candidate(g, n) {
            continue;
        }
        let Some(e) = own_expr(n) else { continue };
        let root_ty = g.ty(n.outputs[0]).clone();
        let mut trial = absorbed.clone();
        let mut grow = Grow {
            g,
            uses: &uses,
            outputs: &g.outputs,
            absorbed: &mut trial,
            leaves: Vec::new(),
            ops: e.ops(),
        };
        let expr = grow.expand(&e, &n.inputs, &root_ty);
        let (ops, leaves) = (grow.ops, grow.leaves);
        let grew = ops > e.ops();
        if !grew {
            continue;
        }
        let mut a = llmc_ir::Attrs::new();
        a.insert("expr".into(), Attr::Str(expr.to_string()));
        let new = Node {
            op: Op::FusedElementwise,
            inputs: leaves,
            outputs: n.outputs.clone(),
            attrs: a,
        };
        // The fused node must pass its own type rule with the consumer's result type.
        let tys: Vec<&llmc_ir::TensorType> = new.inputs.iter().map(|&v| g.ty(v)).collect();
        match Op::FusedElementwise.infer(&tys, &new.attrs) {
            Ok(t) if t.first() == Some(&root_ty) => {
                absorbed = trial;
                replaced.insert(ci, new);
            }
            _ => continue,
        }
    }
    if replaced.is_empty() {
        return Ok(Changed::No);
    }
    let g = &mut m.graph;
    for (ci, node) in replaced {
        g.nodes[ci] = node;
    }
    let keep: Vec<bool> = absorbed.iter().map(|a| !a).collect();
    compact(g, &keep, &HashMap::new());
    Ok(Changed::Yes)
}

/// The module with every `fused_elementwise` node expanded back into the chain of ops
/// its `expr` names (the inverse of this pass), for tools that read primitive ops:
/// `--explain-fusion` reports candidates on the program as the e-graph rules saw it,
/// not on the fused loops that came after. A node whose `expr` does not expand (it
/// would not have passed the verifier) is kept as it is.
pub fn unfuse(m: &llmc_ir::Module) -> llmc_ir::Module {
    let mut out = m.clone();
    let g = &mut out.graph;
    let old = std::mem::take(&mut g.nodes);
    for n in old {
        let expr = if n.op == Op::FusedElementwise {
            llmc_ir::ops::fused::expr_of(&n.attrs).ok()
        } else {
            None
        };
        let expanded = match &expr {
            Some(FusedExpr::Apply(op, kids)) => kids
                .iter()
                .map(|k| emit(g, k, &n.inputs))
                .collect::<Option<Vec<_>>>()
                .map(|ins| Node {
                    op: *op,
                    inputs: ins,
                    outputs: n.outputs.clone(),
                    attrs: llmc_ir::Attrs::new(),
                }),
            _ => None,
        };
        push(g, expanded.unwrap_or(n));
    }
    out
}

/// Appends `n`, pointing its results at their new position.
fn push(g: &mut Graph, n: Node) {
    let nid = llmc_ir::NodeId(g.nodes.len() as u32);
    for (i, &v) in n.outputs.iter().enumerate() {
        if let Some(val) = g.values.get_mut(v.0 as usize) {
            val.def = llmc_ir::ValueDef::Node(nid, i);
        }
    }
    g.nodes.push(n);
}

/// Emits the nodes of sub-expression `e` over the fused node's operands `leaves`.
fn emit(g: &mut Graph, e: &FusedExpr, leaves: &[ValueId]) -> Option<ValueId> {
    match e {
        FusedExpr::Arg(k) => leaves.get(*k).copied(),
        FusedExpr::Apply(op, kids) => {
            let ins = kids
                .iter()
                .map(|k| emit(g, k, leaves))
                .collect::<Option<Vec<_>>>()?;
            let tys: Vec<&llmc_ir::TensorType> = ins.iter().map(|&v| g.ty(v)).collect();
            let ty = op
                .infer(&tys, &llmc_ir::Attrs::new())
                .ok()?
                .into_iter()
                .next()?;
            let v = g.add_value(
                g.values.len().to_string(),
                ty,
                llmc_ir::ValueDef::Node(llmc_ir::NodeId(g.nodes.len() as u32), 0),
            );
            push(
                g,
                Node {
                    op: *op,
                    inputs: ins,
                    outputs: vec![v],
                    attrs: llmc_ir::Attrs::new(),
                },
            );
            Some(v)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmc_ir::interp::Interpreter;
    use llmc_ir::Tensor;

    fn parse(src: &str) -> llmc_ir::Module {
        llmc_ir::text::parse(src, "test").unwrap_or_else(|e| panic!("{e}"))
    }

    fn fuse(src: &str) -> (llmc_ir::Module, llmc_ir::Module, String) {
        let m0 = parse(src);
        let mut m1 = m0.clone();
        run(&mut m1, &PassContext::default()).unwrap_or_else(|e| panic!("{e}"));
        llmc_ir::verify::verify(&m1).unwrap_or_else(|e| panic!("{e:?}"));
        let text = llmc_ir::text::print(&m1);
        // The text parses back to the same module.
        assert_eq!(llmc_ir::text::print(&parse(&text)), text);
        (m0, m1, text)
    }

    fn same_outputs(m0: &llmc_ir::Module, m1: &llmc_ir::Module, ins: &[Tensor]) {
        let a = Interpreter::new(m0)
            .run(ins)
            .unwrap_or_else(|e| panic!("{e}"));
        let b = Interpreter::new(m1)
            .run(ins)
            .unwrap_or_else(|e| panic!("{e}"));
        // The fused op evaluates the same ops with the same roundings: bit for bit.
        assert_eq!(a, b);
    }

    #[test]
    fn unfuse_gives_back_the_chain() {
        let src = "module @m {
  graph @main(%a: f32[2, 3], %b: f32[3], %c: f32[2, 3]) -> (%out: f32[2, 3]) {
    %s = add(%a, %b) : f32[2, 3]
    %t = mul(%s, %c) : f32[2, 3]
    %out = silu(%t) : f32[2, 3]
    return %out
  }
}";
        let (m0, m1, _) = fuse(src);
        assert_eq!(m1.graph.nodes.len(), 1);
        let m2 = unfuse(&m1);
        llmc_ir::verify::verify(&m2).unwrap_or_else(|e| panic!("{e:?}"));
        let ops: Vec<Op> = m2.graph.nodes.iter().map(|n| n.op).collect();
        assert_eq!(ops, vec![Op::Add, Op::Mul, Op::Silu]);
        let a = Tensor::f32(vec![2, 3], vec![0.5, -1.0, 2.0, 3.0, -0.25, 1.5]);
        let b = Tensor::f32(vec![3], vec![1.0, 2.0, -3.0]);
        let c = Tensor::f32(vec![2, 3], vec![0.5, -2.0, 1.0, 0.0, 4.0, -1.5]);
        same_outputs(&m0, &m2, &[a, b, c]);
    }

    #[test]
    fn a_chain_with_broadcast_operands_becomes_one_node() {
        let (m0, m1, text) = fuse(
            "module @m {
  graph @main(%x: f32[2, 3], %y: f32[3], %z: f32[2, 1]) -> (%out: f32[2, 3]) {
    %a = add(%x, %y) : f32[2, 3]
    %b = mul(%a, %z) : f32[2, 3]
    %out = silu(%b) : f32[2, 3]
    return %out
  }
}",
        );
        assert_eq!(m1.graph.nodes.len(), 1, "{text}");
        assert!(
            text.contains(
                "%out = fused_elementwise(%x, %y, %z) {expr = \"silu(mul(add($0, $1), $2))\"}"
            ),
            "{text}"
        );
        let x = Tensor::f32(vec![2, 3], vec![0.5, -1.0, 2.0, 3.0, -0.25, 1.5]);
        let y = Tensor::f32(vec![3], vec![1.0, 2.0, -3.0]);
        let z = Tensor::f32(vec![2, 1], vec![0.5, -2.0]);
        same_outputs(&m0, &m1, &[x, y, z]);
    }

    #[test]
    fn a_value_read_twice_is_not_fused_away() {
        let (m0, m1, text) = fuse(
            "module @m {
  graph @main(%x: f32[4], %y: f32[4]) -> (%out: f32[4]) {
    %a = add(%x, %y) : f32[4]
    %e = exp(%a) : f32[4]
    %t = tanh(%a) : f32[4]
    %n = neg(%t) : f32[4]
    %out = mul(%e, %n) : f32[4]
    return %out
  }
}",
        );
        // %a has two readers: it stays a node; each side's chain fuses up to it.
        assert!(text.contains("%a = add(%x, %y)"), "{text}");
        assert!(
            text.contains("%out = fused_elementwise(%a) {expr = \"mul(exp($0), neg(tanh($0)))\"}"),
            "{text}"
        );
        assert_eq!(m1.graph.nodes.len(), 2, "{text}");
        let x = Tensor::f32(vec![4], vec![0.5, -1.0, 2.0, 3.0]);
        let y = Tensor::f32(vec![4], vec![1.0, 2.0, -3.0, 0.0]);
        same_outputs(&m0, &m1, &[x, y]);
    }

    #[test]
    fn outputs_broadcast_intermediates_and_non_float_chains_stay() {
        let (_, m1, text) = fuse(
            "module @m {
  graph @main(%x: f32[3], %y: f32[2, 3], %i: i64[3]) -> (%a: f32[3], %out: f32[2, 3], %k: i64[3]) {
    %a = neg(%x) : f32[3]
    %b = exp(%a) : f32[3]
    %s = tanh(%x) : f32[3]
    %c = add(%s, %y) : f32[2, 3]
    %out = mul(%c, %b) : f32[2, 3]
    %j = neg(%i) : i64[3]
    %k = abs(%j) : i64[3]
    return %a, %out, %k
  }
}",
        );
        // %a is returned; %s and %b are [3] under a [2, 3] chain (not recomputed per
        // row); the i64 chain is left alone.
        assert!(text.contains("%a = neg(%x)"), "{text}");
        assert!(text.contains("%s = tanh(%x)"), "{text}");
        assert!(text.contains("%b = exp(%a)"), "{text}");
        assert!(text.contains("%k = abs(%j)"), "{text}");
        assert!(
            text.contains("%out = fused_elementwise(%s, %y, %b) {expr = \"mul(add($0, $1), $2)\"}"),
            "{text}"
        );
        assert_eq!(m1.graph.nodes.len(), 6, "{text}");
    }
}
