//! The extraction cost model: an estimate of the time a node takes on the target, from
//! the bytes it moves and the flops it does, both read off the operand and result types.
//! A program's cost is its critical path: a node costs its own time plus its slowest
//! operand. (A tree sum would count a value once per use: the residual stream of an
//! LLM is used twice per layer, so sums double every layer and, by layer 20, f64
//! rounding hides the difference between fusing a block or not.) It is monotonic (a
//! node costs strictly more than each operand, by a positive per-node overhead), so
//! extraction never picks a cycle. Symbolic dims are priced at a nominal size.

use super::lang::{EGraph, ENode, Head};
use egg::{CostFunction, Id};
use llmc_ir::{Dim, Op, Shape, TensorType};

/// What the target is like, as far as the cost model cares.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    /// Name, for reports.
    pub name: &'static str,
    /// Sustained memory bandwidth, bytes per nanosecond.
    pub bytes_per_ns: f64,
    /// Sustained arithmetic rate, flops per nanosecond.
    pub flops_per_ns: f64,
    /// Fixed cost of launching one kernel, nanoseconds.
    pub launch_ns: f64,
    /// The value priced for every symbolic dim (`seq`, `batch`, `past`).
    pub nominal_dim: i64,
}

impl Target {
    /// A desktop CPU: ~20 GB/s, ~100 GFLOP/s, 100 ns per kernel.
    pub fn cpu() -> Target {
        Target {
            name: "cpu",
            bytes_per_ns: 20.0,
            flops_per_ns: 100.0,
            launch_ns: 100.0,
            nominal_dim: 128,
        }
    }
}

/// Element count of a shape with symbols priced at `nominal`.
pub fn numel(shape: &Shape, nominal: i64) -> f64 {
    shape
        .0
        .iter()
        .map(|d: &Dim| d.eval(&|_| Some(nominal)).unwrap_or(nominal).max(0) as f64)
        .product()
}

/// Bytes a tensor of this type occupies (block formats by their storage size).
pub fn bytes(t: &TensorType, nominal: i64) -> f64 {
    let n = numel(&t.shape, nominal);
    match t.dtype.storage_bytes(n as u64) {
        Some(b) => b as f64,
        None => n * 4.0,
    }
}

/// The flops an op does given its operand and result types.
pub fn flops(op: Op, ins: &[&TensorType], outs: &[TensorType], nominal: i64) -> f64 {
    if matches!(op, Op::Reshape | Op::Squeeze | Op::Unsqueeze) {
        return 0.0;
    }
    let out_n: f64 = outs.iter().map(|t| numel(&t.shape, nominal)).sum();
    let in0_n = ins.first().map_or(0.0, |t| numel(&t.shape, nominal));
    let last = |t: &TensorType| {
        t.shape.0.last().map_or(1.0, |d| {
            d.eval(&|_| Some(nominal)).unwrap_or(nominal) as f64
        })
    };
    match op {
        Op::MatMul | Op::Linear => {
            // 2 * output elements * contraction length (last dim of the first operand).
            2.0 * out_n * ins.first().map_or(1.0, |t| last(t))
        }
        // The GEMM plus its activation, applied in registers at the store.
        Op::LinearAct => (2.0 * ins.first().map_or(1.0, |t| last(t)) + 4.0) * out_n,
        // act(gate) · up: the activation and one product per element.
        Op::Glu => 5.0 * out_n,
        Op::Attention | Op::FlashAttention => {
            // q[b,h,s,d], k[b,kvh,t,d]: scores and weighted sum, 2*2*b*h*s*t*d, plus softmax.
            let (Some(q), Some(k)) = (ins.first(), ins.get(1)) else {
                return out_n;
            };
            let t = k.shape.0.get(2).map_or(1.0, |d| {
                d.eval(&|_| Some(nominal)).unwrap_or(nominal) as f64
            });
            let bhs = numel(&q.shape, nominal) / last(q).max(1.0);
            4.0 * numel(&q.shape, nominal) * t + 5.0 * bhs * t
        }
        Op::Exp
        | Op::Log
        | Op::Tanh
        | Op::Sigmoid
        | Op::Silu
        | Op::Gelu
        | Op::Erf
        | Op::Sin
        | Op::Cos
        | Op::Sqrt
        | Op::Rsqrt
        | Op::Pow
        | Op::Div
        | Op::Reciprocal => 4.0 * out_n,
        Op::Softmax | Op::LogSoftmax => 5.0 * out_n,
        Op::RmsNorm => 4.0 * in0_n,
        Op::LayerNorm => 7.0 * in0_n,
        _ if op.flags().has(llmc_ir::ops::Flags::REDUCTION) => in0_n.max(out_n),
        _ => out_n,
    }
}

/// Bytes an op moves: operands read plus results written; views (reshape, squeeze,
/// unsqueeze) move nothing; `attention` also writes and reads its score matrix, which
/// `flash_attention` never materialises.
pub fn bytes_moved(op: Op, ins: &[&TensorType], outs: &[TensorType], nominal: i64) -> f64 {
    if matches!(op, Op::Reshape | Op::Squeeze | Op::Unsqueeze) {
        return 0.0;
    }
    let mut b: f64 = ins.iter().map(|t| bytes(t, nominal)).sum::<f64>()
        + outs.iter().map(|t| bytes(t, nominal)).sum::<f64>();
    if op == Op::Attention {
        if let (Some(q), Some(k)) = (ins.first(), ins.get(1)) {
            let t = k.shape.0.get(2).map_or(1.0, |d| {
                d.eval(&|_| Some(nominal)).unwrap_or(nominal) as f64
            });
            let d = q.shape.0.last().map_or(1.0, |d| {
                d.eval(&|_| Some(nominal)).unwrap_or(nominal).max(1) as f64
            });
            // scores [b,h,s,t] in f32, written then read twice (softmax, then P·V).
            b += 3.0 * 4.0 * numel(&q.shape, nominal) / d * t;
        }
    }
    b
}

/// What an attention's `scale` costs: one multiply per score, none at scale 1 (the
/// scale folded into the q projection).
pub fn scale_cost(op: Op, ins: &[&TensorType], attrs: &llmc_ir::Attrs, target: &Target) -> f64 {
    use llmc_ir::AttrsExt;
    if !matches!(op, Op::Attention | Op::FlashAttention) || attrs.float("scale") == Some(1.0) {
        return 0.0;
    }
    let (Some(q), Some(k)) = (ins.first(), ins.get(1)) else {
        return 0.0;
    };
    let n = target.nominal_dim;
    let t = k
        .shape
        .0
        .get(2)
        .map_or(1.0, |d| d.eval(&|_| Some(n)).unwrap_or(n) as f64);
    let d = q
        .shape
        .0
        .last()
        .map_or(1.0, |d| d.eval(&|_| Some(n)).unwrap_or(n).max(1) as f64);
    numel(&q.shape, n) / d * t / target.flops_per_ns
}

/// Cost of one node on `target`, not counting its operands.
pub fn node_cost(op: Op, ins: &[&TensorType], outs: &[TensorType], target: &Target) -> f64 {
    let n = target.nominal_dim;
    // The generic matmul loop reads its right operand unpacked, the linear's packed
    // GEMM at about twice its rate: so a product by a weight is extracted as `linear`.
    let rate = if op == Op::MatMul { 0.5 } else { 1.0 };
    target.launch_ns
        + bytes_moved(op, ins, outs, n) / target.bytes_per_ns
        + flops(op, ins, outs, n) / (rate * target.flops_per_ns)
}

/// The extraction cost function: a node's own cost plus its slowest operand's.
/// Nodes the op table rejects cost infinity, so they are never extracted.
pub struct Cost<'a> {
    /// The e-graph (for operand and result types).
    pub egraph: &'a EGraph,
    /// The target.
    pub target: Target,
}

impl CostFunction<ENode> for Cost<'_> {
    type Cost = f64;

    fn cost<C>(&mut self, enode: &ENode, mut costs: C) -> f64
    where
        C: FnMut(Id) -> f64,
    {
        let kids: f64 = enode.children.iter().map(|&c| costs(c)).fold(0.0, f64::max);
        let own = match &enode.head {
            Head::Attrs(_) | Head::Input(_) | Head::Weight(_) => 0.0,
            Head::Proj(_) | Head::Outputs(_) => 1.0,
            // Weights and constants only: folded at compile time (a token cost keeps
            // costs strictly growing, so extraction never closes a cycle).
            Head::Op(_) if enode.operands().iter().all(|&c| self.egraph[c].data.konst) => 1e-3,
            Head::Op(op) => {
                let tys: Option<Vec<&TensorType>> = enode
                    .operands()
                    .iter()
                    .map(|&c| self.egraph[c].data.ty())
                    .collect();
                let attrs = enode
                    .attrs_class()
                    .and_then(|c| self.egraph[c].data.attrs.as_ref());
                match (tys, attrs) {
                    (Some(tys), Some(a)) => match op.infer(&tys, a.attrs()) {
                        Ok(outs) => {
                            node_cost(*op, &tys, &outs, &self.target)
                                + scale_cost(*op, &tys, a.attrs(), &self.target)
                        }
                        Err(_) => f64::INFINITY,
                    },
                    _ => f64::INFINITY,
                }
            }
        };
        own + kids
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmc_ir::DType;

    fn t(dims: &[i64]) -> TensorType {
        TensorType::new(DType::F32, Shape::of(dims))
    }

    #[test]
    fn every_node_costs_at_least_the_launch_overhead() {
        let cpu = Target::cpu();
        // An empty tensor moves nothing and computes nothing, yet still costs a launch.
        let e = t(&[0, 4]);
        let c = node_cost(Op::Add, &[&e, &e], std::slice::from_ref(&e), &cpu);
        assert!((c - cpu.launch_ns).abs() < 1e-9, "{c}");
        // A view costs exactly a launch.
        let x = t(&[8, 8]);
        let r = t(&[64]);
        let c = node_cost(Op::Reshape, &[&x], std::slice::from_ref(&r), &cpu);
        assert!((c - cpu.launch_ns).abs() < 1e-9, "{c}");
    }

    #[test]
    fn cost_grows_with_size() {
        let cpu = Target::cpu();
        let mut last = 0.0;
        for n in [1, 2, 16, 256, 4096] {
            let x = t(&[n, 64]);
            let c = node_cost(Op::Exp, &[&x], std::slice::from_ref(&x), &cpu);
            assert!(c > last, "cost of exp on [{n}, 64] = {c} not above {last}");
            last = c;
        }
    }

    #[test]
    fn matmul_flops_are_2mnk() {
        let a = t(&[3, 5]);
        let b = t(&[5, 7]);
        let o = t(&[3, 7]);
        assert_eq!(
            flops(Op::MatMul, &[&a, &b], &[o], 1),
            (2 * 3 * 5 * 7) as f64
        );
    }

    #[test]
    fn flash_attention_is_cheaper_than_attention_and_its_primitives() {
        let cpu = Target::cpu();
        let q = t(&[1, 9, 128, 64]);
        let k = t(&[1, 3, 128, 64]);
        let o = t(&[1, 9, 128, 64]);
        let att = node_cost(Op::Attention, &[&q, &k, &k], std::slice::from_ref(&o), &cpu);
        let fl = node_cost(
            Op::FlashAttention,
            &[&q, &k, &k],
            std::slice::from_ref(&o),
            &cpu,
        );
        assert!(fl < att, "flash {fl} vs attention {att}");
        // The primitive form: matmul to scores, softmax, matmul back (k already repeated).
        let kr = t(&[1, 9, 64, 128]);
        let s = t(&[1, 9, 128, 128]);
        let vr = t(&[1, 9, 128, 64]);
        let prim = node_cost(Op::MatMul, &[&q, &kr], std::slice::from_ref(&s), &cpu)
            + node_cost(Op::Softmax, &[&s], std::slice::from_ref(&s), &cpu)
            + node_cost(Op::MatMul, &[&s, &vr], std::slice::from_ref(&o), &cpu);
        assert!(fl < prim, "flash {fl} vs primitives {prim}");
    }

    #[test]
    fn fused_gemm_ops_are_cheaper_than_their_primitives() {
        let cpu = Target::cpu();
        let x = t(&[128, 576]);
        let w = t(&[1536, 576]);
        let h = t(&[128, 1536]);
        let lin = node_cost(Op::Linear, &[&x, &w], std::slice::from_ref(&h), &cpu);
        let act = node_cost(Op::Gelu, &[&h], std::slice::from_ref(&h), &cpu);
        let fused = node_cost(Op::LinearAct, &[&x, &w], std::slice::from_ref(&h), &cpu);
        assert!(
            fused < lin + act,
            "linear_act {fused} vs linear + gelu {}",
            lin + act
        );
        assert!(fused > lin, "the epilogue is not free: {fused} vs {lin}");
        let silu = node_cost(Op::Silu, &[&h], std::slice::from_ref(&h), &cpu);
        let mul = node_cost(Op::Mul, &[&h, &h], std::slice::from_ref(&h), &cpu);
        let glu = node_cost(Op::Glu, &[&h, &h], std::slice::from_ref(&h), &cpu);
        assert!(glu < silu + mul, "glu {glu} vs silu + mul {}", silu + mul);
    }

    #[test]
    fn symbols_are_priced_at_the_nominal_dim() {
        let s = TensorType::new(DType::F32, Shape(vec![Dim::sym("seq"), Dim::c(4)]));
        assert_eq!(numel(&s.shape, 10), 40.0);
        // 2*seq is priced as 2 * nominal.
        let s2 = TensorType::new(
            DType::F32,
            Shape(vec![Dim::sym("seq").mul(&Dim::c(2)), Dim::c(4)]),
        );
        assert_eq!(numel(&s2.shape, 10), 80.0);
    }

    #[test]
    fn quantized_weights_are_priced_by_storage() {
        let w = TensorType::new(DType::Q4_0, Shape::of(&[64, 64]));
        let f = t(&[64, 64]);
        assert!(bytes(&w, 1) < bytes(&f, 1) / 4.0);
    }

    #[test]
    fn an_attention_scale_costs_a_multiply_per_score_unless_it_is_one() {
        use llmc_ir::{Attr, Attrs};
        let cpu = Target::cpu();
        let q = t(&[1, 9, 128, 64]);
        let k = t(&[1, 3, 256, 64]);
        let at = |s: f64| {
            let mut a = Attrs::new();
            a.insert("scale".into(), Attr::Float(s));
            a
        };
        assert_eq!(
            scale_cost(Op::FlashAttention, &[&q, &k, &k], &at(1.0), &cpu),
            0.0
        );
        let c = scale_cost(Op::FlashAttention, &[&q, &k, &k], &at(0.125), &cpu);
        assert_eq!(c, (9 * 128 * 256) as f64 / cpu.flops_per_ns);
        assert_eq!(scale_cost(Op::MatMul, &[&q, &k], &at(0.125), &cpu), 0.0);
    }
}
