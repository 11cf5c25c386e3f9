//! `fused_elementwise`: a chain (a tree) of elementwise ops computed in one pass over
//! the elements, written as a small expression in its `expr` attribute, e.g.
//! `silu(add(mul($0, $1), $2))`, where `$k` is operand k. The optimizer forms these from
//! single-use elementwise chains; the shape/dtype rule and the reference semantics are
//! those of the ops in the expression, applied in order, so the fused op is exactly
//! the chain it replaced (the same roundings to the result dtype after every step).

use super::{Flags, Op};
use crate::attr::AttrsExt;
use crate::interp::EvalCtx;
use crate::{Attrs, Tensor, TensorType};
use std::borrow::Cow;
use std::fmt;

/// Deepest nesting an expression may have (a parse of hostile text stays bounded).
pub const MAX_DEPTH: usize = 200;

/// A parsed `expr`.
#[derive(Clone, Debug, PartialEq)]
pub enum FusedExpr {
    /// Operand k (`$k`).
    Arg(usize),
    /// An elementwise op (without attributes) applied to sub-expressions.
    Apply(Op, Vec<FusedExpr>),
}

impl fmt::Display for FusedExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FusedExpr::Arg(k) => write!(f, "${k}"),
            FusedExpr::Apply(op, kids) => {
                write!(f, "{op}(")?;
                for (i, k) in kids.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{k}")?;
                }
                f.write_str(")")
            }
        }
    }
}

/// Can `op` appear inside an expression? Elementwise, not stateful, a fixed operand
/// count, no required attributes (none are given inside an expression).
pub fn fusible(op: Op) -> bool {
    let d = op.def();
    op != Op::FusedElementwise
        && d.flags.has(Flags::ELEMENTWISE)
        && !d.flags.has(Flags::STATEFUL)
        && matches!(d.arity, super::Arity::Fixed(n) if n >= 1)
        && d.attrs.iter().all(|a| !a.required)
}

impl FusedExpr {
    /// Parses `src` (`$k` operands, `op(e, ...)` applications, blanks anywhere).
    pub fn parse(src: &str) -> Result<FusedExpr, String> {
        let mut p = Parser {
            s: src.as_bytes(),
            at: 0,
        };
        let e = p.expr(0)?;
        p.blanks();
        if p.at != p.s.len() {
            return Err(format!("expr: unexpected text at byte {}", p.at));
        }
        Ok(e)
    }

    /// Number of op applications.
    pub fn ops(&self) -> usize {
        match self {
            FusedExpr::Arg(_) => 0,
            FusedExpr::Apply(_, k) => 1 + k.iter().map(FusedExpr::ops).sum::<usize>(),
        }
    }

    /// Marks every operand index read.
    pub fn args(&self, seen: &mut Vec<bool>) {
        match self {
            FusedExpr::Arg(k) => {
                if seen.len() <= *k {
                    seen.resize(k + 1, false);
                }
                seen[*k] = true;
            }
            FusedExpr::Apply(_, kids) => kids.iter().for_each(|k| k.args(seen)),
        }
    }

    /// The result type of the expression over operands of types `ins`.
    pub fn infer(&self, ins: &[&TensorType]) -> Result<TensorType, String> {
        match self {
            FusedExpr::Arg(k) => ins
                .get(*k)
                .map(|t| (*t).clone())
                .ok_or_else(|| format!("expr reads ${k}, but there are {} operands", ins.len())),
            FusedExpr::Apply(op, kids) => {
                let tys = kids
                    .iter()
                    .map(|k| k.infer(ins))
                    .collect::<Result<Vec<_>, _>>()?;
                let refs: Vec<&TensorType> = tys.iter().collect();
                op.infer(&refs, &Attrs::new())
                    .map_err(|e| format!("in expr: {e}"))?
                    .into_iter()
                    .next()
                    .ok_or_else(|| format!("in expr: {op} has no result"))
            }
        }
    }

    /// The value of the expression (each op by its own reference semantics).
    pub fn eval<'a>(
        &self,
        ins: &[&'a Tensor],
        ctx: &mut EvalCtx,
    ) -> Result<Cow<'a, Tensor>, String> {
        match self {
            FusedExpr::Arg(k) => ins
                .get(*k)
                .map(|t| Cow::Borrowed(*t))
                .ok_or_else(|| format!("expr reads ${k}, but there are {} operands", ins.len())),
            FusedExpr::Apply(op, kids) => {
                let vals = kids
                    .iter()
                    .map(|k| k.eval(ins, ctx))
                    .collect::<Result<Vec<_>, _>>()?;
                let refs: Vec<&Tensor> = vals.iter().map(|c| c.as_ref()).collect();
                op.eval(&refs, &Attrs::new(), ctx)
                    .map_err(|e| format!("in expr: {op}: {e}"))?
                    .into_iter()
                    .next()
                    .map(Cow::Owned)
                    .ok_or_else(|| format!("in expr: {op} has no result"))
            }
        }
    }
}

struct Parser<'s> {
    s: &'s [u8],
    at: usize,
}

impl Parser<'_> {
    fn blanks(&mut self) {
        while self.s.get(self.at).is_some_and(|c| c.is_ascii_whitespace()) {
            self.at += 1;
        }
    }

    fn expr(&mut self, depth: usize) -> Result<FusedExpr, String> {
        if depth > MAX_DEPTH {
            return Err(format!("expr: nested deeper than {MAX_DEPTH}"));
        }
        self.blanks();
        let start = self.at;
        if self.s.get(self.at) == Some(&b'$') {
            self.at += 1;
            let d0 = self.at;
            while self.s.get(self.at).is_some_and(u8::is_ascii_digit) {
                self.at += 1;
            }
            let digits = std::str::from_utf8(&self.s[d0..self.at]).unwrap_or("");
            let k = digits
                .parse::<usize>()
                .map_err(|_| format!("expr: `$` at byte {start} needs an operand number"))?;
            return Ok(FusedExpr::Arg(k));
        }
        while self
            .s
            .get(self.at)
            .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
        {
            self.at += 1;
        }
        let name = std::str::from_utf8(&self.s[start..self.at]).unwrap_or("");
        if name.is_empty() {
            return Err(format!("expr: expected `$k` or an op name at byte {start}"));
        }
        let op = Op::from_name(name).ok_or_else(|| format!("expr: unknown op `{name}`"))?;
        if !fusible(op) {
            return Err(format!(
                "expr: `{name}` cannot be fused (elementwise ops without required attributes only)"
            ));
        }
        self.blanks();
        if self.s.get(self.at) != Some(&b'(') {
            return Err(format!("expr: expected `(` after `{name}`"));
        }
        self.at += 1;
        let mut kids = Vec::new();
        loop {
            kids.push(self.expr(depth + 1)?);
            self.blanks();
            match self.s.get(self.at) {
                Some(b',') => self.at += 1,
                Some(b')') => {
                    self.at += 1;
                    break;
                }
                _ => return Err(format!("expr: expected `,` or `)` at byte {}", self.at)),
            }
        }
        if !op.def().arity.accepts(kids.len()) {
            return Err(format!(
                "expr: `{name}` takes {} operand(s), got {}",
                op.def().arity,
                kids.len()
            ));
        }
        Ok(FusedExpr::Apply(op, kids))
    }
}

/// The parsed `expr` of a node's attributes.
pub fn expr_of(a: &Attrs) -> Result<FusedExpr, String> {
    let src = a
        .str("expr")
        .ok_or("attribute `expr` (a string) is required")?;
    FusedExpr::parse(src)
}

/// Shape/dtype rule: the expression's ops applied in order; every operand is read.
pub fn infer_fused(i: &[&TensorType], a: &Attrs) -> Result<Vec<TensorType>, String> {
    let e = expr_of(a)?;
    let mut seen = Vec::new();
    e.args(&mut seen);
    if seen.len() > i.len() {
        return Err(format!(
            "expr reads ${}, but there are {} operands",
            seen.len() - 1,
            i.len()
        ));
    }
    if let Some(k) = (0..i.len()).find(|&k| !seen.get(k).copied().unwrap_or(false)) {
        return Err(format!("operand {k} is not read by the expr"));
    }
    Ok(vec![e.infer(i)?])
}

/// Reference semantics: the expression evaluated op by op.
pub fn eval_fused(i: &[&Tensor], a: &Attrs, ctx: &mut EvalCtx) -> Result<Vec<Tensor>, String> {
    let e = expr_of(a)?;
    Ok(vec![e.eval(i, ctx)?.into_owned()])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DType, Shape};

    #[test]
    fn parses_and_prints_back() {
        let e = FusedExpr::parse(" silu( add(mul($0,$1) , $2))").unwrap();
        assert_eq!(e.to_string(), "silu(add(mul($0, $1), $2))");
        assert_eq!(e.ops(), 3);
        assert_eq!(FusedExpr::parse(&e.to_string()).unwrap(), e);
    }

    #[test]
    fn rejects_bad_expressions() {
        for (src, want) in [
            ("mul($0)", "takes 2"),
            ("frob($0)", "unknown op"),
            ("softmax($0)", "cannot be fused"),
            ("cast($0)", "cannot be fused"),
            ("add($0, $1", "expected `,` or `)`"),
            ("add($0, $x)", "operand number"),
            ("neg($0) $1", "unexpected text"),
        ] {
            let e = FusedExpr::parse(src).unwrap_err();
            assert!(e.contains(want), "{src}: {e}");
        }
        let deep = format!("{}$0{}", "neg(".repeat(300), ")".repeat(300));
        assert!(FusedExpr::parse(&deep).unwrap_err().contains("deeper"));
    }

    #[test]
    fn types_and_values_are_the_chains() {
        let mut a = Attrs::new();
        a.insert(
            "expr".into(),
            crate::Attr::Str("relu(sub(mul($0, $1), $0))".into()),
        );
        let x = TensorType::new(DType::F32, Shape::of(&[2, 3]));
        let y = TensorType::new(DType::F32, Shape::of(&[3]));
        let t = infer_fused(&[&x, &y], &a).unwrap();
        assert_eq!(t[0].to_string(), "f32[2, 3]");
        let xv = Tensor::f32(vec![2, 3], vec![1.0, -2.0, 3.0, 0.5, 4.0, -1.0]);
        let yv = Tensor::f32(vec![3], vec![2.0, 0.5, -1.0]);
        let got = eval_fused(&[&xv, &yv], &a, &mut EvalCtx::default()).unwrap();
        // relu(x*y - x), by hand.
        assert_eq!(got[0].to_f64(), vec![1.0, 1.0, 0.0, 0.5, 0.0, 2.0]);
        // An operand never read is an error.
        let z = TensorType::new(DType::F32, Shape::of(&[3]));
        assert!(infer_fused(&[&x, &y, &z], &a)
            .unwrap_err()
            .contains("operand 2"));
    }
}
