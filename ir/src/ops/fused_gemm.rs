//! Fused GEMM ops the optimizer produces: `linear_act` (a `linear` whose store applies
//! an activation: MatMul + bias + GELU/ReLU/SiLU/tanh epilogues) and `glu` (the gated
//! unit of SwiGLU/GeGLU MLPs: act(gate) · up, from two tensors or from the two halves
//! of one merged gate/up projection). Their meaning is defined by the unfused ops:
//! the activation runs through the op table's own `silu`/`gelu`/... semantics, so a
//! fused program computes exactly what the primitives did.

use super::linalg::infer_linear;
use super::util::{arg, need_float, targ, R, T};
use super::Op;
use crate::attr::Attr;
use crate::interp::EvalCtx;
use crate::{Attrs, Dim, Tensor, TensorType};

/// An activation a fused op applies, named by the `act` attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Act {
    /// x · sigmoid(x)
    Silu,
    /// max(x, 0)
    Relu,
    /// tanh(x)
    Tanh,
    /// 1 / (1 + e^-x)
    Sigmoid,
    /// GELU with erf
    Gelu,
    /// GELU, tanh approximation
    GeluTanh,
}

impl Act {
    /// Every activation.
    pub const ALL: &'static [Act] = &[
        Act::Silu,
        Act::Relu,
        Act::Tanh,
        Act::Sigmoid,
        Act::Gelu,
        Act::GeluTanh,
    ];

    /// The `act` attribute text.
    pub fn name(self) -> &'static str {
        match self {
            Act::Silu => "silu",
            Act::Relu => "relu",
            Act::Tanh => "tanh",
            Act::Sigmoid => "sigmoid",
            Act::Gelu => "gelu",
            Act::GeluTanh => "gelu_tanh",
        }
    }

    /// The activation named `s`.
    pub fn from_name(s: &str) -> Option<Act> {
        Act::ALL.iter().copied().find(|a| a.name() == s)
    }

    /// The activation of a node's `act` attribute.
    pub fn of_attrs(a: &Attrs) -> Result<Act, String> {
        match a.get("act") {
            Some(Attr::Str(s)) => Act::from_name(s).ok_or_else(|| {
                let known: Vec<&str> = Act::ALL.iter().map(|a| a.name()).collect();
                format!(
                    "attribute `act` = {s:?} is unknown (expected one of {})",
                    known.join(", ")
                )
            }),
            Some(other) => Err(format!("attribute `act` must be a string, got {other:?}")),
            None => Err("missing attribute `act`".into()),
        }
    }

    /// The unfused op (and its attributes) this activation stands for.
    pub fn op(self) -> (Op, Attrs) {
        let mut a = Attrs::new();
        let op = match self {
            Act::Silu => Op::Silu,
            Act::Relu => Op::Relu,
            Act::Tanh => Op::Tanh,
            Act::Sigmoid => Op::Sigmoid,
            Act::Gelu => Op::Gelu,
            Act::GeluTanh => {
                a.insert("approximate".into(), Attr::Str("tanh".into()));
                Op::Gelu
            }
        };
        (op, a)
    }

    /// The activation an unfused unary node computes, if it is one.
    pub fn of_node(op: Op, attrs: &Attrs) -> Option<Act> {
        Some(match op {
            Op::Silu => Act::Silu,
            Op::Relu => Act::Relu,
            Op::Tanh => Act::Tanh,
            Op::Sigmoid => Act::Sigmoid,
            Op::Gelu => match attrs.get("approximate") {
                None => Act::Gelu,
                Some(Attr::Str(s)) if s == "none" => Act::Gelu,
                Some(Attr::Str(s)) if s == "tanh" => Act::GeluTanh,
                _ => return None,
            },
            _ => return None,
        })
    }

    /// `act` attributes naming this activation.
    pub fn attrs(self) -> Attrs {
        let mut a = Attrs::new();
        a.insert("act".into(), Attr::Str(self.name().into()));
        a
    }

    /// Applies the activation by the unfused op's reference semantics.
    pub fn apply(self, x: &Tensor, ctx: &mut EvalCtx) -> Result<Tensor, String> {
        let (op, a) = self.op();
        op.eval(&[x], &a, ctx)?
            .into_iter()
            .next()
            .ok_or_else(|| format!("{op} returned no result"))
    }
}

/// Shape rule of `linear_act`: `linear`'s, plus a known `act`.
pub fn infer_linear_act(i: &[&TensorType], a: &Attrs) -> T {
    Act::of_attrs(a)?;
    infer_linear(i, a)
}

/// Reference semantics of `linear_act`: act(linear(x, w, b)), plus the residual
/// with `residual = 1`.
pub fn eval_linear_act(i: &[&Tensor], a: &Attrs, ctx: &mut EvalCtx) -> R {
    let act = Act::of_attrs(a)?;
    let (i, res) = super::linalg::split_residual(i, a)?;
    let lin = super::linalg::eval_linear_plain(i, a, ctx)?;
    let y = lin.first().ok_or("linear returned no result")?;
    let y = act.apply(y, ctx)?;
    match res {
        Some(r) => Ok(vec![super::linalg::add_residual(&y, r)?]),
        None => Ok(vec![y]),
    }
}

/// Shape rule of `glu`: one operand `[..., 2n]` gives `[..., n]` (gate is the first
/// half, up the second); two operands (gate, up) of one float type give that type.
pub fn infer_glu(i: &[&TensorType], a: &Attrs) -> T {
    Act::of_attrs(a)?;
    let g = targ(i, 0, "gate")?;
    need_float(g, "operand gate")?;
    if let Some(u) = i.get(1) {
        if *u != g {
            return Err(format!(
                "operands gate ({g}) and up ({u}) must have the same type"
            ));
        }
        return Ok(vec![g.clone()]);
    }
    let r = g.shape.rank();
    let last = r
        .checked_sub(1)
        .and_then(|l| g.shape.0.get(l))
        .ok_or("operand x must have rank >= 1, got a scalar")?;
    let n = match last.as_const() {
        Some(n) if n % 2 == 0 => n / 2,
        _ => {
            return Err(format!(
                "last dim of x {} must be an even constant (gate and up halves)",
                g.shape
            ))
        }
    };
    let mut dims = g.shape.0[..r - 1].to_vec();
    dims.push(Dim::c(n));
    Ok(vec![TensorType::new(g.dtype, crate::Shape(dims))])
}

/// Reference semantics of `glu`: act(gate) · up.
pub fn eval_glu(i: &[&Tensor], a: &Attrs, ctx: &mut EvalCtx) -> R {
    let act = Act::of_attrs(a)?;
    let g = arg(i, 0, "gate")?;
    let (gate, up) = match i.get(1) {
        Some(u) => ((*g).clone(), (*u).clone()),
        None => {
            let r = g.shape.len();
            let last = *g.shape.last().ok_or("operand x must have rank >= 1")?;
            if last % 2 != 0 {
                return Err(format!("last dim of x {:?} must be even", g.shape));
            }
            let n = last / 2;
            let mut sa = Attrs::new();
            sa.insert("axis".into(), Attr::Int(r as i64 - 1));
            sa.insert("sizes".into(), Attr::Ints(vec![n as i64, n as i64]));
            let mut parts = Op::Split.eval(&[g], &sa, ctx)?.into_iter();
            match (parts.next(), parts.next()) {
                (Some(a), Some(b)) => (a, b),
                _ => return Err("split into halves failed".into()),
            }
        }
    };
    let ga = act.apply(&gate, ctx)?;
    Op::Mul.eval(&[&ga, &up], &Attrs::new(), ctx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::util::testing::*;
    use crate::{DType, Shape};

    fn act_attrs(s: &str) -> Attrs {
        let mut a = Attrs::new();
        a.insert("act".into(), Attr::Str(s.into()));
        a
    }

    fn t(shape: &[usize], v: Vec<f64>) -> Tensor {
        Tensor::from_f64(DType::F32, shape.to_vec(), v)
    }

    #[test]
    fn glu_halves_equal_act_of_first_half_times_second() {
        let x = t(&[2, 4], vec![-1.0, 0.5, 2.0, 3.0, 1.5, -2.0, -1.0, 0.25]);
        let y = ev1(Op::Glu, &[&x], act_attrs("silu"));
        assert_eq!(y.shape, vec![2, 2]);
        let silu = |v: f64| v / (1.0 + (-v).exp());
        let want = [
            silu(-1.0) * 2.0,
            silu(0.5) * 3.0,
            -silu(1.5),
            silu(-2.0) * 0.25,
        ];
        for (a, b) in y.to_f64().iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn glu_of_two_operands_matches_the_halves_form() {
        let g = t(&[1, 2], vec![0.3, -0.7]);
        let u = t(&[1, 2], vec![2.0, 5.0]);
        let cat = t(&[1, 4], vec![0.3, -0.7, 2.0, 5.0]);
        for act in ["gelu", "gelu_tanh", "relu", "tanh", "sigmoid"] {
            let a = ev1(Op::Glu, &[&g, &u], act_attrs(act));
            let b = ev1(Op::Glu, &[&cat], act_attrs(act));
            assert_eq!(a.to_f64(), b.to_f64(), "act {act}");
        }
    }

    #[test]
    fn linear_act_is_the_activation_of_linear() {
        let x = t(&[1, 2], vec![1.0, -2.0]);
        let w = t(&[2, 2], vec![0.5, 0.25, -1.0, 0.5]);
        let b = t(&[2], vec![0.1, -0.2]);
        let y = ev1(Op::LinearAct, &[&x, &w, &b], act_attrs("relu"));
        // linear: [0.5 - 0.5 + 0.1, -1 - 1 - 0.2] = [0.1, -2.2]; relu: [0.1, 0].
        let v = y.to_f64();
        assert!((v[0] - 0.1).abs() < 1e-6 && v[1] == 0.0, "{v:?}");
    }

    #[test]
    fn shape_rules_reject_what_they_must() {
        let f = |d: &[i64]| TensorType::new(DType::F32, Shape::of(d));
        assert_eq!(
            inf(Op::Glu, &[&f(&[3, 8])], act_attrs("silu")).unwrap(),
            vec![f(&[3, 4])]
        );
        assert!(inf(Op::Glu, &[&f(&[3, 7])], act_attrs("silu")).is_err());
        assert!(inf(Op::Glu, &[&f(&[3, 8]), &f(&[3, 4])], act_attrs("silu")).is_err());
        assert!(inf(Op::Glu, &[&f(&[3, 8])], act_attrs("swish")).is_err());
        assert!(inf(Op::LinearAct, &[&f(&[3, 8]), &f(&[4, 8])], Attrs::new()).is_err());
        assert_eq!(
            inf(
                Op::LinearAct,
                &[&f(&[3, 8]), &f(&[4, 8])],
                act_attrs("gelu")
            )
            .unwrap(),
            vec![f(&[3, 4])]
        );
    }
}
