//! A builder for loop-IR kernels, so templates read like the loops they emit:
//! `kb.for_("i", 0, n, Parallel, |kb, i| { ... })`. It owns the variable and buffer
//! tables, turns symbolic IR dims into expressions over dim parameters (adding a
//! parameter per symbol on first use), and checks the finished kernel.

use crate::loopir::{Buf, BufId, Expr, Kernel, LoopTag, Role, Stmt, Ty, VarDecl, VarId};
use llmc_ir::Dim;

/// Builds one kernel.
pub struct KernelBuilder {
    k: Kernel,
    /// Open blocks; the last is where statements go.
    blocks: Vec<Vec<Stmt>>,
}

impl KernelBuilder {
    /// A builder for a kernel named `name` (non-identifier characters become `_`).
    pub fn new(name: &str) -> KernelBuilder {
        let clean: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        KernelBuilder {
            k: Kernel {
                name: clean,
                bufs: Vec::new(),
                dims: Vec::new(),
                vars: Vec::new(),
                body: Vec::new(),
            },
            blocks: vec![Vec::new()],
        }
    }

    /// Declares a parameter buffer (parameters are passed in declaration order).
    pub fn param(&mut self, name: &str, ty: Ty, role: Role) -> BufId {
        debug_assert!(matches!(role, Role::In | Role::Out));
        let id = BufId(self.k.bufs.len() as u32);
        self.k.bufs.push(Buf {
            name: name.to_string(),
            ty,
            role,
        });
        id
    }

    /// The type of a buffer.
    pub fn buf_ty(&self, b: BufId) -> Ty {
        self.k.buf(b).ty
    }

    /// Allocates a local array of `len` elements in the current block.
    pub fn local(&mut self, name: &str, ty: Ty, len: i64) -> BufId {
        let id = BufId(self.k.bufs.len() as u32);
        self.k.bufs.push(Buf {
            name: name.to_string(),
            ty,
            role: Role::Local,
        });
        self.push(Stmt::Alloc { buf: id, len });
        id
    }

    /// Allocates a GPU block's shared array of `len` elements in the current block
    /// (between a grid loop and its block loop).
    pub fn shared(&mut self, name: &str, ty: Ty, len: i64) -> BufId {
        let id = BufId(self.k.bufs.len() as u32);
        self.k.bufs.push(Buf {
            name: name.to_string(),
            ty,
            role: Role::Shared,
        });
        self.push(Stmt::Alloc { buf: id, len });
        id
    }

    /// A prefetch hint for element `index` of `buf` ([`Stmt::Prefetch`]).
    pub fn prefetch(&mut self, buf: BufId, index: impl Into<Expr>) {
        self.push(Stmt::Prefetch {
            buf,
            index: index.into(),
        });
    }

    /// A GPU block barrier.
    pub fn barrier(&mut self) {
        self.push(Stmt::Barrier);
    }

    /// `var = value` of lane `lane ^ xor` of this thread's warp.
    pub fn shuffle_xor(&mut self, var: VarId, value: Expr, xor: u32) {
        self.push(Stmt::ShuffleXor { var, value, xor });
    }

    /// One warp's tensor-core product `d = a·b + c` (see [`crate::loopir::Mma`]).
    pub fn mma(&mut self, d: [VarId; 4], a: [Expr; 4], b: [Expr; 2], c: [Expr; 4]) {
        self.push(Stmt::Mma(Box::new(crate::loopir::Mma { d, a, b, c })));
    }

    /// The expression for a dim parameter carrying symbol `name`.
    pub fn sym(&mut self, name: &str) -> Expr {
        let i = match self.k.dims.iter().position(|d| d == name) {
            Some(i) => i,
            None => {
                self.k.dims.push(name.to_string());
                self.k.dims.len() - 1
            }
        };
        Expr::Dim(i as u32)
    }

    /// An IR dim (a polynomial over symbols) as an i64 expression.
    pub fn dim(&mut self, d: &Dim) -> Expr {
        if let Some(c) = d.as_const() {
            return Expr::i(c);
        }
        let terms: Vec<(i64, Vec<String>)> = d.terms().map(|(m, c)| (c, m.clone())).collect();
        let mut acc = Expr::i(0);
        for (coef, mono) in terms {
            let mut t = Expr::i(coef);
            for s in &mono {
                let x = self.sym(s);
                t = t * x;
            }
            acc = acc + t;
        }
        acc
    }

    /// The product of some dims, as an expression.
    pub fn numel(&mut self, dims: &[Dim]) -> Expr {
        let mut e = Expr::i(1);
        for d in dims {
            let x = self.dim(d);
            e = e * x;
        }
        e
    }

    /// A new variable (not yet defined).
    pub fn var(&mut self, name: &str, ty: Ty) -> VarId {
        let id = VarId(self.k.vars.len() as u32);
        self.k.vars.push(VarDecl {
            name: format!("{name}{}", id.0),
            ty,
        });
        id
    }

    fn push(&mut self, s: Stmt) {
        if let Some(b) = self.blocks.last_mut() {
            b.push(s);
        }
    }

    /// `let name = value`; returns the variable as an expression.
    pub fn let_(&mut self, name: &str, value: Expr) -> Expr {
        let ty = self.k.ty_of(&value).unwrap_or(Ty::I64);
        let v = self.var(name, ty);
        self.push(Stmt::Let { var: v, value });
        Expr::Var(v)
    }

    /// A mutable variable (an accumulator) initialised to `value`.
    pub fn let_mut(&mut self, name: &str, value: Expr) -> VarId {
        let ty = self.k.ty_of(&value).unwrap_or(Ty::I64);
        let v = self.var(name, ty);
        self.push(Stmt::Let { var: v, value });
        v
    }

    /// `var = value`.
    pub fn assign(&mut self, var: VarId, value: Expr) {
        self.push(Stmt::Assign { var, value });
    }

    /// A block-quantized dot product statement ([`crate::loopir::QDot`]).
    pub fn qdot(&mut self, q: crate::loopir::QDot) {
        self.push(Stmt::QDot(Box::new(q)));
    }

    /// Decodes a tile of weight rows ([`crate::loopir::QUnpack`]).
    pub fn qunpack(&mut self, u: crate::loopir::QUnpack) {
        self.push(Stmt::QUnpack(Box::new(u)));
    }

    /// A float outer-product tile ([`crate::loopir::FTile`]).
    pub fn ftile(&mut self, t: crate::loopir::FTile) {
        self.push(Stmt::FTile(Box::new(t)));
    }

    /// Dot products over a decoded tile ([`crate::loopir::QTile`]).
    pub fn qtile(&mut self, t: crate::loopir::QTile) {
        self.push(Stmt::QTile(Box::new(t)));
    }

    /// `buf[index] = value`.
    pub fn store(&mut self, buf: BufId, index: Expr, value: Expr) {
        self.push(Stmt::Store { buf, index, value });
    }

    /// `value` at byte `offset` of `buf`, in the value's own type ([`Stmt::StoreRaw`]).
    pub fn store_raw(&mut self, buf: BufId, offset: Expr, value: Expr) {
        self.push(Stmt::StoreRaw { buf, offset, value });
    }

    /// The type of an expression (i64 when it is ill-typed; `finish` reports that).
    pub fn ty(&self, e: &Expr) -> Ty {
        self.k.ty_of(e).unwrap_or(Ty::I64)
    }

    /// `for name in lo..hi` with a tag; `body` gets the loop variable.
    pub fn for_(
        &mut self,
        name: &str,
        lo: impl Into<Expr>,
        hi: impl Into<Expr>,
        tag: LoopTag,
        body: impl FnOnce(&mut KernelBuilder, Expr),
    ) {
        self.for_step(name, lo, hi, 1, tag, body)
    }

    /// `for name in lo..hi step step`.
    pub fn for_step(
        &mut self,
        name: &str,
        lo: impl Into<Expr>,
        hi: impl Into<Expr>,
        step: i64,
        tag: LoopTag,
        body: impl FnOnce(&mut KernelBuilder, Expr),
    ) {
        let (lo, hi) = (lo.into(), hi.into());
        let var = self.var(name, Ty::I64);
        self.blocks.push(Vec::new());
        body(self, Expr::Var(var));
        let b = self.blocks.pop().unwrap_or_default();
        // A loop that cannot run is dropped; one that runs once needs no loop
        // (but keeps its variable, so it becomes a let).
        if let (Some(l), Some(h)) = (lo.as_i64(), hi.as_i64()) {
            if h <= l {
                return;
            }
            if h - l <= step && !matches!(tag, LoopTag::GpuGrid(_) | LoopTag::GpuBlock(_)) {
                self.push(Stmt::Let {
                    var,
                    value: Expr::i(l),
                });
                if let Some(outer) = self.blocks.last_mut() {
                    outer.extend(b);
                }
                return;
            }
        }
        self.push(Stmt::For {
            var,
            lo,
            hi,
            step,
            tag,
            body: b,
        });
    }

    /// `if cond { then }`.
    pub fn if_(&mut self, cond: Expr, then: impl FnOnce(&mut KernelBuilder)) {
        self.if_else(cond, then, |_| {})
    }

    /// `if cond { then } else { els }`.
    pub fn if_else(
        &mut self,
        cond: Expr,
        then: impl FnOnce(&mut KernelBuilder),
        els: impl FnOnce(&mut KernelBuilder),
    ) {
        self.blocks.push(Vec::new());
        then(self);
        let t = self.blocks.pop().unwrap_or_default();
        self.blocks.push(Vec::new());
        els(self);
        let e = self.blocks.pop().unwrap_or_default();
        match cond {
            Expr::Int(v, Ty::Bool) => {
                if let Some(b) = self.blocks.last_mut() {
                    b.extend(if v != 0 { t } else { e });
                }
            }
            cond => self.push(Stmt::If {
                cond,
                then: t,
                els: e,
            }),
        }
    }

    /// The finished kernel, checked.
    pub fn finish(mut self) -> Result<Kernel, String> {
        self.k.body = self.blocks.pop().unwrap_or_default();
        self.k.check()?;
        Ok(self.k)
    }
}

impl From<i64> for Expr {
    fn from(v: i64) -> Expr {
        Expr::i(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dims_become_expressions_over_symbol_params() {
        let mut kb = KernelBuilder::new("t");
        let d = Dim::sym("past")
            .add(&Dim::sym("seq"))
            .mul(&Dim::c(3))
            .sub(&Dim::c(1));
        let e = kb.dim(&d);
        assert_eq!(kb.k.dims, vec!["past".to_string(), "seq".to_string()]);
        // Evaluate the expression by hand at past = 5, seq = 2: 3*7 - 1 = 20.
        fn ev(e: &Expr, d: &[i64]) -> i64 {
            match e {
                Expr::Int(v, _) => *v,
                Expr::Dim(i) => d[*i as usize],
                Expr::Bin(crate::loopir::BinOp::Add, a, b) => ev(a, d) + ev(b, d),
                Expr::Bin(crate::loopir::BinOp::Mul, a, b) => ev(a, d) * ev(b, d),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(ev(&e, &[5, 2]), 20);
        let sq = Dim::sym("b").mul(&Dim::sym("b")).mul(&Dim::c(-2));
        let e2 = kb.dim(&sq);
        assert_eq!(ev(&e2, &[5, 2, 7]), -98);
        assert_eq!(kb.dim(&Dim::c(576)), Expr::i(576));
    }
}
