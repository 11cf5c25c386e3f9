//! The loop-IR interpreter: runs a kernel on byte buffers exactly as the loop IR
//! defines it (values rounded to their type after every operation, integers wrapped,
//! memory little-endian, every access bounds-checked). It is how templates are tested
//! against the reference interpreter without a code generator, and the oracle the
//! LLVM backend's output is compared with. Parallel loops run their iterations in
//! reverse order, so a template that wrongly depends on iteration order shows up.

use crate::loopir::{BinOp, BufId, Expr, Kernel, LoopTag, QDot, QFmt, Role, Stmt, Ty, UnOp};
use llmc_ir::tensor::{round_to, wrap_int, Data};
use llmc_ir::{DType, Tensor};

/// An interpreter error: what went wrong, in which kernel.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("kernel {kernel}: {msg}")]
pub struct InterpError {
    /// Kernel name.
    pub kernel: String,
    /// What went wrong.
    pub msg: String,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum V {
    I(i64),
    F(f64),
}

impl V {
    fn i(self) -> i64 {
        match self {
            V::I(v) => v,
            V::F(f) => f as i64,
        }
    }
    fn f(self) -> f64 {
        match self {
            V::I(v) => v as f64,
            V::F(f) => f,
        }
    }
}

/// Rounds/wraps a raw result to type `t`.
fn fit(t: Ty, v: V) -> V {
    match v {
        V::F(x) => V::F(match t {
            Ty::F32 => round_to(DType::F32, x),
            Ty::F16 => round_to(DType::F16, x),
            Ty::BF16 => round_to(DType::BF16, x),
            _ => x,
        }),
        V::I(x) => V::I(match t {
            Ty::I32 => wrap_int(DType::I32, x),
            Ty::I16 => wrap_int(DType::I16, x),
            Ty::I8 => wrap_int(DType::I8, x),
            Ty::U8 => wrap_int(DType::U8, x),
            Ty::U16 => wrap_int(DType::U16, x),
            Ty::U32 => wrap_int(DType::U32, x),
            Ty::Bool => (x != 0) as i64,
            _ => x,
        }),
    }
}

struct Machine<'a> {
    k: &'a Kernel,
    /// Buffer storage by `BufId`: parameters point at the caller's buffers (by index),
    /// locals own their bytes.
    params: Vec<Option<usize>>,
    locals: Vec<Option<Vec<u8>>>,
    vars: Vec<Option<V>>,
    dims: &'a [i64],
}

type R<T> = Result<T, String>;

impl Machine<'_> {
    fn mem<'b>(&'b mut self, b: BufId, bufs: &'b mut [Vec<u8>]) -> R<&'b mut Vec<u8>> {
        let i = b.0 as usize;
        if let Some(Some(p)) = self.params.get(i) {
            return bufs
                .get_mut(*p)
                .ok_or_else(|| format!("buffer {} was not passed", self.k.bufs[i].name));
        }
        match self.locals.get_mut(i) {
            Some(Some(v)) => Ok(v),
            _ => Err(format!("buffer b{i} is not allocated here")),
        }
    }

    fn read(&mut self, b: BufId, byte: i64, t: Ty, bufs: &mut [Vec<u8>]) -> R<V> {
        let name = self
            .k
            .bufs
            .get(b.0 as usize)
            .map_or("?", |x| &x.name)
            .to_string();
        let m = self.mem(b, bufs)?;
        let n = t.bytes();
        let at = usize::try_from(byte)
            .ok()
            .filter(|&a| a.checked_add(n).is_some_and(|e| e <= m.len()))
            .ok_or_else(|| {
                format!(
                    "read of {t} at byte {byte} of {name} ({} bytes) is out of bounds",
                    m.len()
                )
            })?;
        let s = &m[at..at + n];
        Ok(match t {
            Ty::Bool | Ty::U8 => V::I(s[0] as i64),
            Ty::I8 => V::I(s[0] as i8 as i64),
            Ty::I16 => V::I(i16::from_le_bytes([s[0], s[1]]) as i64),
            Ty::U16 => V::I(u16::from_le_bytes([s[0], s[1]]) as i64),
            Ty::U32 => V::I(u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as i64),
            Ty::I32 => V::I(i32::from_le_bytes([s[0], s[1], s[2], s[3]]) as i64),
            Ty::I64 => V::I(i64::from_le_bytes(s.try_into().unwrap_or([0; 8]))),
            Ty::F16 => V::F(half::f16::from_le_bytes([s[0], s[1]]).to_f64()),
            Ty::BF16 => V::F(half::bf16::from_le_bytes([s[0], s[1]]).to_f64()),
            Ty::F32 => V::F(f32::from_le_bytes([s[0], s[1], s[2], s[3]]) as f64),
            Ty::F64 => V::F(f64::from_le_bytes(s.try_into().unwrap_or([0; 8]))),
        })
    }

    fn write(&mut self, b: BufId, index: i64, v: V, bufs: &mut [Vec<u8>]) -> R<()> {
        let buf = &self.k.bufs[b.0 as usize];
        let (t, name) = (buf.ty, buf.name.clone());
        let m = self.mem(b, bufs)?;
        let n = t.bytes();
        let at = usize::try_from(index)
            .ok()
            .and_then(|i| i.checked_mul(n))
            .filter(|&a| a + n <= m.len())
            .ok_or_else(|| {
                format!(
                    "store to element {index} of {name} ({} elements) is out of bounds",
                    m.len() / n
                )
            })?;
        let bytes: Vec<u8> = match (t, fit(t, v)) {
            (Ty::Bool | Ty::U8 | Ty::I8, V::I(x)) => vec![x as u8],
            (Ty::I16 | Ty::U16, V::I(x)) => (x as i16).to_le_bytes().to_vec(),
            (Ty::U32, V::I(x)) => (x as i32).to_le_bytes().to_vec(),
            (Ty::I32, V::I(x)) => (x as i32).to_le_bytes().to_vec(),
            (Ty::I64, V::I(x)) => x.to_le_bytes().to_vec(),
            (Ty::F16, V::F(x)) => half::f16::from_f64(x).to_le_bytes().to_vec(),
            (Ty::BF16, V::F(x)) => half::bf16::from_f64(x).to_le_bytes().to_vec(),
            (Ty::F32, V::F(x)) => (x as f32).to_le_bytes().to_vec(),
            (Ty::F64, V::F(x)) => x.to_le_bytes().to_vec(),
            (t, v) => return Err(format!("store of {v:?} into {name} of type {t}")),
        };
        m[at..at + n].copy_from_slice(&bytes);
        Ok(())
    }

    fn eval(&mut self, e: &Expr, bufs: &mut [Vec<u8>]) -> R<(V, Ty)> {
        Ok(match e {
            Expr::Int(v, t) => (fit(*t, V::I(*v)), *t),
            Expr::Float(v, t) => (fit(*t, V::F(*v)), *t),
            Expr::Var(v) => {
                let t = self.k.var(*v).ty;
                let val = self.vars[v.0 as usize]
                    .ok_or_else(|| format!("variable %{} read before set", self.k.var(*v).name))?;
                (val, t)
            }
            Expr::Dim(i) => (
                V::I(
                    *self
                        .dims
                        .get(*i as usize)
                        .ok_or_else(|| format!("dim parameter {i} was not passed"))?,
                ),
                Ty::I64,
            ),
            Expr::Load(b, i) => {
                let idx = self.eval(i, bufs)?.0.i();
                let t = self.k.buf(*b).ty;
                let byte = idx.checked_mul(t.bytes() as i64).ok_or("index overflows")?;
                (self.read(*b, byte, t, bufs)?, t)
            }
            Expr::LoadRaw(b, i, t) => {
                let byte = self.eval(i, bufs)?.0.i();
                (self.read(*b, byte, *t, bufs)?, *t)
            }
            Expr::Un(op, x) => {
                let (v, t) = self.eval(x, bufs)?;
                un(*op, v, t)?
            }
            Expr::Bin(op, a, b) => {
                let (x, t) = self.eval(a, bufs)?;
                let (y, _) = self.eval(b, bufs)?;
                bin(*op, x, y, t)?
            }
            Expr::Select(c, a, b) => {
                let c = self.eval(c, bufs)?.0.i();
                let (x, t) = self.eval(a, bufs)?;
                let (y, _) = self.eval(b, bufs)?;
                (if c != 0 { x } else { y }, t)
            }
            Expr::Cast(to, x) => {
                let (v, from) = self.eval(x, bufs)?;
                (cast(v, from, *to), *to)
            }
        })
    }

    /// [`QDot`]: integer block sums exact, the rest in f32 in block order.
    fn qdot(&mut self, q: &QDot, bufs: &mut [Vec<u8>]) -> R<()> {
        let w0 = self.eval(&q.w_off, bufs)?.0.i();
        let bb = q.fmt.block_bytes();
        let qs = q.fmt.qs_offset();
        for (xe, acc) in q.x_blk.iter().zip(&q.accs) {
            let x0 = self.eval(xe, bufs)?.0.i();
            let mut a = self.vars[acc.0 as usize]
                .ok_or_else(|| format!("variable %{} read before set", self.k.var(*acc).name))?
                .f() as f32;
            for b in 0..q.blocks {
                let wb = w0 + b * bb;
                let xb = x0 + b;
                let d = self.read(q.w, wb, Ty::F16, bufs)?.f() as f32;
                let mut dot = 0i64;
                for e in 0..32i64 {
                    let w = match q.fmt {
                        QFmt::Q8_0 => self.read(q.w, wb + qs + e, Ty::I8, bufs)?.i(),
                        _ => {
                            let byte = self.read(q.w, wb + qs + e % 16, Ty::U8, bufs)?.i();
                            if e < 16 {
                                byte & 15
                            } else {
                                byte >> 4
                            }
                        }
                    };
                    let x = self.read(q.xq, (xb * 32 + e) * 2, Ty::I16, bufs)?.i();
                    dot += w * x;
                }
                let xd = self.read(q.xd, xb * 4, Ty::F32, bufs)?.f() as f32;
                let mut t = (d * xd) * dot as f32;
                let m = match q.fmt {
                    QFmt::Q8_0 => None,
                    QFmt::Q4_0 => Some(-8.0 * d),
                    QFmt::Q4_1 => Some(self.read(q.w, wb + 2, Ty::F16, bufs)?.f() as f32),
                };
                if let Some(m) = m {
                    let xs = self.read(q.xs, xb * 4, Ty::F32, bufs)?.f() as f32;
                    t += m * xs;
                }
                a += t;
            }
            self.vars[acc.0 as usize] = Some(V::F(a as f64));
        }
        Ok(())
    }

    fn run(&mut self, block: &[Stmt], bufs: &mut [Vec<u8>]) -> R<()> {
        let mut allocated = Vec::new();
        for s in block {
            match s {
                Stmt::For {
                    var,
                    lo,
                    hi,
                    step,
                    tag,
                    body,
                } => {
                    let lo = self.eval(lo, bufs)?.0.i();
                    let hi = self.eval(hi, bufs)?.0.i();
                    let step = (*step).max(1);
                    let n = if hi > lo { (hi - lo - 1) / step + 1 } else { 0 };
                    for j in 0..n {
                        let j = if *tag == LoopTag::Parallel {
                            n - 1 - j
                        } else {
                            j
                        };
                        self.vars[var.0 as usize] = Some(V::I(lo + j * step));
                        self.run(body, bufs)?;
                    }
                    self.vars[var.0 as usize] = None;
                }
                Stmt::Let { var, value } | Stmt::Assign { var, value } => {
                    let v = self.eval(value, bufs)?.0;
                    self.vars[var.0 as usize] = Some(v);
                }
                Stmt::Store { buf, index, value } => {
                    let i = self.eval(index, bufs)?.0.i();
                    let v = self.eval(value, bufs)?.0;
                    self.write(*buf, i, v, bufs)?;
                }
                Stmt::If { cond, then, els } => {
                    if self.eval(cond, bufs)?.0.i() != 0 {
                        self.run(then, bufs)?;
                    } else {
                        self.run(els, bufs)?;
                    }
                }
                Stmt::Alloc { buf, len } => {
                    let t = self.k.buf(*buf).ty;
                    let bytes = usize::try_from(*len)
                        .ok()
                        .and_then(|l| l.checked_mul(t.bytes()))
                        .filter(|&b| b <= 1 << 30)
                        .ok_or_else(|| format!("local of {len} elements is too large"))?;
                    // Fill with a pattern, not zeros: a template must not rely on it.
                    self.locals[buf.0 as usize] = Some(vec![0xA5; bytes]);
                    allocated.push(*buf);
                }
                Stmt::Barrier => {
                    return Err("barrier needs the GPU simulation, which is not written yet".into())
                }
                Stmt::QDot(q) => self.qdot(q, bufs)?,
            }
        }
        for b in allocated {
            self.locals[b.0 as usize] = None;
        }
        Ok(())
    }
}

fn un(op: UnOp, v: V, t: Ty) -> R<(V, Ty)> {
    if op == UnOp::IsNan {
        return Ok((V::I(v.f().is_nan() as i64), Ty::Bool));
    }
    let r = match (op, v) {
        (UnOp::Neg, V::I(x)) => V::I(x.wrapping_neg()),
        (UnOp::Neg, V::F(x)) => V::F(-x),
        (UnOp::Abs, V::I(x)) => V::I(x.wrapping_abs()),
        (UnOp::Abs, V::F(x)) => V::F(x.abs()),
        (UnOp::Not, V::I(x)) => V::I(if t == Ty::Bool { (x == 0) as i64 } else { !x }),
        (UnOp::Exp, V::F(x)) => V::F(x.exp()),
        (UnOp::Log, V::F(x)) => V::F(x.ln()),
        (UnOp::Sqrt, V::F(x)) => V::F(x.sqrt()),
        (UnOp::Tanh, V::F(x)) => V::F(x.tanh()),
        (UnOp::Atan, V::F(x)) => V::F(x.atan()),
        (UnOp::Erf, V::F(x)) => V::F(llmc_ir::ops::elementwise::erf(x)),
        (UnOp::Sin, V::F(x)) => V::F(x.sin()),
        (UnOp::Cos, V::F(x)) => V::F(x.cos()),
        (UnOp::Floor, V::F(x)) => V::F(x.floor()),
        (UnOp::Ceil, V::F(x)) => V::F(x.ceil()),
        (UnOp::Round, V::F(x)) => V::F(x.round_ties_even()),
        (op, v) => return Err(format!("{op:?} of {v:?} ({t})")),
    };
    Ok((fit(t, r), t))
}

/// Integer power with the reference's rules (0 to a negative power gives 0 here).
fn int_pow(x: i64, y: i64) -> i64 {
    if y >= 0 {
        return x.wrapping_pow(y.min(u32::MAX as i64) as u32);
    }
    match x {
        1 => 1,
        -1 => {
            if y % 2 == 0 {
                1
            } else {
                -1
            }
        }
        _ => 0,
    }
}

fn bin(op: BinOp, a: V, b: V, t: Ty) -> R<(V, Ty)> {
    if op.is_compare() {
        let r = match (a, b) {
            (V::I(x), V::I(y)) => match op {
                BinOp::Eq => x == y,
                BinOp::Ne => x != y,
                BinOp::Lt => x < y,
                BinOp::Le => x <= y,
                BinOp::Gt => x > y,
                _ => x >= y,
            },
            (x, y) => {
                let (x, y) = (x.f(), y.f());
                match op {
                    BinOp::Eq => x == y,
                    BinOp::Ne => x != y,
                    BinOp::Lt => x < y,
                    BinOp::Le => x <= y,
                    BinOp::Gt => x > y,
                    _ => x >= y,
                }
            }
        };
        return Ok((V::I(r as i64), Ty::Bool));
    }
    let r = match (a, b) {
        (V::I(x), V::I(y)) => V::I(match op {
            BinOp::Add => x.wrapping_add(y),
            BinOp::Sub => x.wrapping_sub(y),
            BinOp::Mul => x.wrapping_mul(y),
            BinOp::Div => {
                if y == 0 {
                    0
                } else {
                    x.wrapping_div(y)
                }
            }
            BinOp::Rem => {
                if y == 0 {
                    0
                } else {
                    x.wrapping_rem(y)
                }
            }
            BinOp::Pow => int_pow(x, y),
            BinOp::Max => x.max(y),
            BinOp::Min => x.min(y),
            BinOp::And => x & y,
            BinOp::Or => x | y,
            BinOp::Xor => x ^ y,
            BinOp::Shl | BinOp::Shr => {
                let bits = (t.bytes() * 8) as i64;
                if !(0..bits).contains(&y) {
                    return Err(format!("shift of {t} by {y}"));
                }
                if op == BinOp::Shl {
                    x.wrapping_shl(y as u32)
                } else {
                    x >> y
                }
            }
            _ => return Err(format!("{op:?} of integers")),
        }),
        (x, y) => {
            let (x, y) = (x.f(), y.f());
            V::F(match op {
                BinOp::Add => x + y,
                BinOp::Sub => x - y,
                BinOp::Mul => x * y,
                BinOp::Div => x / y,
                BinOp::Rem => x % y,
                BinOp::Pow => x.powf(y),
                BinOp::Max => x.max(y),
                BinOp::Min => x.min(y),
                _ => return Err(format!("{op:?} of floats")),
            })
        }
    };
    Ok((fit(t, r), t))
}

fn cast(v: V, from: Ty, to: Ty) -> V {
    if to == Ty::Bool {
        return V::I(match v {
            V::I(x) => (x != 0) as i64,
            V::F(x) => (x != 0.0) as i64,
        });
    }
    if to.is_float() {
        return fit(to, V::F(v.f()));
    }
    let _ = from;
    match v {
        V::I(x) => fit(to, V::I(x)),
        // `as` saturates and maps NaN to 0, then the value wraps to the width.
        V::F(x) => fit(to, V::I(x as i64)),
    }
}

/// Runs `k` with parameter buffers `bufs` (in the kernel's parameter order, as bytes)
/// and dim values `dims`.
pub fn run(k: &Kernel, bufs: &mut [Vec<u8>], dims: &[i64]) -> Result<(), InterpError> {
    let err = |msg: String| InterpError {
        kernel: k.name.clone(),
        msg,
    };
    let nparams = k.params().count();
    if bufs.len() != nparams {
        return Err(err(format!("takes {nparams} buffers, got {}", bufs.len())));
    }
    if dims.len() != k.dims.len() {
        return Err(err(format!(
            "takes {} dims, got {}",
            k.dims.len(),
            dims.len()
        )));
    }
    let mut params = vec![None; k.bufs.len()];
    let mut p = 0;
    for (i, b) in k.bufs.iter().enumerate() {
        if matches!(b.role, Role::In | Role::Out) {
            params[i] = Some(p);
            p += 1;
        }
    }
    let mut m = Machine {
        k,
        params,
        locals: vec![None; k.bufs.len()],
        vars: vec![None; k.vars.len()],
        dims,
    };
    m.run(&k.body, bufs).map_err(err)
}

/// A tensor's elements as little-endian bytes of its dtype (what a kernel reads).
pub fn tensor_bytes(t: &Tensor) -> Vec<u8> {
    let n = t.numel();
    let mut out = Vec::with_capacity(n * t.dtype.block_bytes());
    for k in 0..n {
        match (&t.data, t.dtype) {
            (Data::F(v), DType::F32) => out.extend((v[k] as f32).to_le_bytes()),
            (Data::F(v), DType::F64) => out.extend(v[k].to_le_bytes()),
            (Data::F(v), DType::F16) => out.extend(half::f16::from_f64(v[k]).to_le_bytes()),
            (Data::F(v), DType::BF16) => out.extend(half::bf16::from_f64(v[k]).to_le_bytes()),
            (Data::I(v), DType::I64) => out.extend(v[k].to_le_bytes()),
            (Data::I(v), DType::I32) => out.extend((v[k] as i32).to_le_bytes()),
            (Data::I(v), DType::I16 | DType::U16) => out.extend((v[k] as i16).to_le_bytes()),
            (Data::I(v), DType::U32) => out.extend((v[k] as i32).to_le_bytes()),
            (Data::I(v), _) => out.push(v[k] as u8),
            (Data::F(v), _) => out.extend((v[k] as f32).to_le_bytes()),
        }
    }
    out
}

/// Decodes bytes of a plain dtype into a tensor of `shape`.
pub fn bytes_tensor(dtype: DType, shape: &[usize], bytes: &[u8]) -> Result<Tensor, String> {
    llmc_ir::interp::weight_tensor(dtype, shape, bytes)
}
