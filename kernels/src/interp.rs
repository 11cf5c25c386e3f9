//! The loop-IR interpreter: runs a kernel on byte buffers exactly as the loop IR
//! defines it (values rounded to their type after every operation, integers wrapped,
//! memory little-endian, every access bounds-checked). It is how templates are tested
//! against the reference interpreter without a code generator, and the oracle the
//! LLVM backend's output is compared with. Parallel loops run their iterations in
//! reverse order, so a template that wrongly depends on iteration order shows up.
//!
//! Kernels in the GPU form ([`crate::gpu`]) run as a GPU runs them: block by block
//! (in reverse order), the threads of a block in lock-step — each statement runs for
//! every active thread before the next, `if` and loops narrow an active mask — with
//! shared memory per block, barriers that every thread of the block must reach (a
//! divergent barrier is an error), warp shuffles that need all 32 lanes, and race
//! checks: two threads touching the same shared bytes between barriers (one of them
//! writing), or the same global bytes anywhere in the kernel, is an error.

use crate::loopir::{
    BinOp, BufId, Expr, FTile, Kernel, LoopTag, QDot, QFmt, QTile, QUnpack, Role, Stmt, Ty, UnOp,
    VarId,
};
use llmc_ir::tensor::{round_to, wrap_int, Data};
use llmc_ir::{DType, Tensor};
use std::collections::HashMap;

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
    /// The current GPU block's shared arrays.
    shared: Vec<Option<Vec<u8>>>,
    /// Race tracking while a GPU kernel runs.
    gpu: Option<GpuTrack>,
}

/// Who touched a shared byte since the last barrier.
#[derive(Clone, Copy, Default)]
struct Cell {
    writer: Option<u32>,
    reader: Option<u32>,
    readers: bool,
}

/// What the race checks of a GPU run know.
#[derive(Default)]
struct GpuTrack {
    /// The running thread: index within its block, and its global number.
    thread: u32,
    global: u64,
    /// Shared bytes touched since the last barrier, by (buffer, byte).
    shared: HashMap<(u32, i64), Cell>,
    /// Global (parameter) bytes written, by (buffer, byte): the writing thread.
    written: HashMap<(u32, i64), u64>,
    /// What the NVPTX code assumes about each access's alignment, and the claims
    /// computed so far (by the address of the index expression).
    align: Option<crate::gpu::Alignment>,
    claims: HashMap<usize, u64>,
}

/// One GPU thread's private state while its block runs in lock-step.
struct Thread {
    vars: Vec<Option<V>>,
    locals: Vec<Option<Vec<u8>>>,
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
        let store = if self.k.bufs.get(i).map(|b| b.role) == Some(Role::Shared) {
            &mut self.shared
        } else {
            &mut self.locals
        };
        match store.get_mut(i) {
            Some(Some(v)) => Ok(v),
            _ => Err(format!("buffer b{i} is not allocated here")),
        }
    }

    /// GPU mode: fails when an access to `size` bytes at `byte` of `b` (an element of
    /// the buffer when `elem`, else a raw access) breaks the alignment the NVPTX code
    /// gives it from its index expression `e` ([`crate::gpu::Alignment`]): a vector
    /// load it would make could fault on the device.
    fn check_align(&mut self, b: BufId, e: &Expr, byte: i64, size: u64, elem: bool) -> R<()> {
        let Some(g) = self.gpu.as_mut() else {
            return Ok(());
        };
        let buf = &self.k.bufs[b.0 as usize];
        let Some(al) = g.align.as_ref() else {
            return Ok(());
        };
        if buf.role == Role::Local {
            return Ok(());
        }
        let m = *g
            .claims
            .entry(e as *const Expr as usize)
            .or_insert_with(|| al.multiple(e));
        let need = if elem {
            (m * size).clamp(size.max(1), 16)
        } else {
            m.min(size).max(1)
        };
        if byte.rem_euclid(need as i64) != 0 {
            return Err(format!(
                "misaligned GPU access: byte {byte} of %{} is not a multiple of {need}, which the NVPTX code assumes (its index is known to be a multiple of {m})",
                buf.name
            ));
        }
        Ok(())
    }

    /// Race checks of a GPU access to `n` bytes at `at` of buffer `b`.
    fn track(&mut self, b: BufId, at: i64, n: usize, write: bool) -> R<()> {
        let Some(g) = self.gpu.as_mut() else {
            return Ok(());
        };
        let buf = &self.k.bufs[b.0 as usize];
        match buf.role {
            Role::Shared => {
                for byte in at..at + n as i64 {
                    let c = g.shared.entry((b.0, byte)).or_default();
                    let other = |t: Option<u32>| t.is_some_and(|t| t != g.thread);
                    let race = other(c.writer) || (write && (other(c.reader) || c.readers));
                    if race {
                        let who = c.writer.or(c.reader).unwrap_or(g.thread);
                        return Err(format!(
                            "race on shared %{} byte {byte}: threads {who} and {} of the block touch it between barriers{}",
                            buf.name,
                            g.thread,
                            if write { " (a write)" } else { "" }
                        ));
                    }
                    if write {
                        c.writer = Some(g.thread);
                    } else if c.reader.is_none() {
                        c.reader = Some(g.thread);
                    } else if c.reader != Some(g.thread) {
                        c.readers = true;
                    }
                }
            }
            Role::In | Role::Out => {
                for byte in at..at + n as i64 {
                    match g.written.get(&(b.0, byte)) {
                        Some(&t) if t != g.global => {
                            return Err(format!(
                                "race on %{} byte {byte}: GPU threads {t} and {} both touch it, one writing",
                                buf.name, g.global
                            ))
                        }
                        _ => {}
                    }
                    if write {
                        g.written.insert((b.0, byte), g.global);
                    }
                }
            }
            Role::Local => {}
        }
        Ok(())
    }

    /// Element `e` of an activation-quant buffer (`xq` of a QDot/QTile: i16 or i8).
    fn read_xq(&mut self, b: BufId, e: i64, bufs: &mut [Vec<u8>]) -> R<i64> {
        let t = match self.k.bufs.get(b.0 as usize).map(|x| x.ty) {
            Some(Ty::I8) => Ty::I8,
            _ => Ty::I16,
        };
        Ok(self.read(b, e * t.bytes() as i64, t, bufs)?.i())
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
        let mut s8 = [0u8; 8];
        s8[..n].copy_from_slice(&m[at..at + n]);
        let s: &[u8] = &s8[..n];
        self.track(b, at as i64, n, false)?;
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
        let t = self.k.bufs[b.0 as usize].ty;
        let byte = index
            .checked_mul(t.bytes() as i64)
            .ok_or("store index overflows")?;
        self.write_at(b, byte, t, v, bufs)
    }

    /// Writes `v` as a `t` at byte `byte` of buffer `b` (a typed store's element, or a
    /// raw store's offset).
    fn write_at(&mut self, b: BufId, byte: i64, t: Ty, v: V, bufs: &mut [Vec<u8>]) -> R<()> {
        let name = self.k.bufs[b.0 as usize].name.clone();
        let m = self.mem(b, bufs)?;
        let n = t.bytes();
        let at = usize::try_from(byte)
            .ok()
            .filter(|&a| a.checked_add(n).is_some_and(|e| e <= m.len()))
            .ok_or_else(|| {
                format!(
                    "store of {t} at byte {byte} of {name} ({} bytes) is out of bounds",
                    m.len()
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
        self.track(b, at as i64, n, true)
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
                self.check_align(*b, i, byte, t.bytes() as u64, true)?;
                (self.read(*b, byte, t, bufs)?, t)
            }
            Expr::LoadRaw(b, i, t) => {
                let byte = self.eval(i, bufs)?.0.i();
                self.check_align(*b, i, byte, t.bytes() as u64, false)?;
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

    /// Block `b` of the weight row at byte `w0` of `w` in `fmt` (not a split-scale
    /// format): `(d, m, q)` as [`QDot`] reads them.
    fn weight_block(
        &mut self,
        fmt: QFmt,
        w: BufId,
        w0: i64,
        b: i64,
        bufs: &mut [Vec<u8>],
    ) -> R<(f32, Option<f32>, [i64; 32])> {
        let bb = fmt.block_bytes();
        let qs = fmt.qs_offset();
        // (scale, minimum, the block's first quant byte, nibble shift).
        let (d, m, q0, shift) = match fmt {
            QFmt::IQ4XS => {
                let sb = w0 + b / 8 * bb;
                let j = b % 8;
                let big_d = self.read(w, sb, Ty::F16, bufs)?.f() as f32;
                let sh = self.read(w, sb + 2, Ty::U16, bufs)?.i();
                let sl = self.read(w, sb + 4 + j / 2, Ty::U8, bufs)?.i();
                let ls = ((sl >> (4 * (j % 2))) & 15) | ((sh >> (2 * j)) & 3) << 4;
                (big_d * (ls - 32) as f32, None, sb + 8 + 16 * j, 0)
            }
            QFmt::Q8_0S24 | QFmt::Q8_0S832 => {
                // The codes expanded by the mask.
                let wb = w0 + b * bb;
                let d = self.read(w, wb, Ty::F16, bufs)?.f() as f32;
                let mask = self.read(w, wb + 2, Ty::U32, bufs)?.i();
                let mut out = [0i64; 32];
                let mut at = wb + qs;
                for (e, o) in out.iter_mut().enumerate() {
                    if (mask >> e) & 1 == 1 {
                        *o = self.read(w, at, Ty::I8, bufs)?.i();
                        at += 1;
                    }
                }
                return Ok((d, None, out));
            }
            QFmt::Q4K | QFmt::Q5K => {
                let sb = w0 + b / 8 * bb;
                let j = (b % 8) as usize;
                let mut packed = [0u8; 12];
                for (i, p) in packed.iter_mut().enumerate() {
                    *p = self.read(w, sb + 4 + i as i64, Ty::U8, bufs)?.i() as u8;
                }
                let (sc, mn) = llmc_ir::quant_k::scale_min_k4(j, &packed);
                let big_d = self.read(w, sb, Ty::F16, bufs)?.f() as f32;
                let dmin = self.read(w, sb + 2, Ty::F16, bufs)?.f() as f32;
                let q0 = sb + qs + 32 * (j as i64 / 2);
                (
                    big_d * sc as f32,
                    Some(-(dmin * mn as f32)),
                    q0,
                    4 * (j as i64 % 2),
                )
            }
            _ => {
                // A group format's block `b` is sub-block `b mod n` of group `b / n`.
                let n = fmt.sub_blocks();
                let wb = w0 + b / n * bb;
                let d = self.read(w, wb, Ty::F16, bufs)?.f() as f32;
                let m = if fmt.stored_min() {
                    Some(self.read(w, wb + 2, Ty::F16, bufs)?.f() as f32)
                } else {
                    fmt.offset_min().map(|f| f * d)
                };
                (d, m, wb + qs + 16 * (b % n), 0)
            }
        };
        let mut out = [0i64; 32];
        for (e, o) in (0..32i64).zip(out.iter_mut()) {
            let v = match fmt {
                QFmt::Q8_0 => self.read(w, q0 + e, Ty::I8, bufs)?.i(),
                QFmt::Q4K => (self.read(w, q0 + e, Ty::U8, bufs)?.i() >> shift) & 15,
                QFmt::Q5K => {
                    let sb = w0 + b / 8 * bb;
                    let nib = (self.read(w, q0 + e, Ty::U8, bufs)?.i() >> shift) & 15;
                    let qh = self.read(w, sb + 16 + e, Ty::U8, bufs)?.i();
                    nib | ((qh >> (b % 8)) & 1) << 4
                }
                QFmt::IQ4NL | QFmt::IQ4XS => {
                    let byte = self.read(w, q0 + e % 16, Ty::U8, bufs)?.i();
                    let nib = if e < 16 { byte & 15 } else { byte >> 4 };
                    llmc_ir::quant::KVALUES_IQ4NL[nib as usize] as i64
                }
                _ => {
                    let byte = self.read(w, q0 + e % 16, Ty::U8, bufs)?.i();
                    let nib = if e < 16 { byte & 15 } else { byte >> 4 };
                    match fmt.qh_offset() {
                        Some(h) => {
                            let wb = q0 - qs;
                            let qh = self.read(w, wb + h + e / 8, Ty::U8, bufs)?.i();
                            nib | ((qh >> (e % 8)) & 1) << 4
                        }
                        None => nib,
                    }
                }
            };
            *o = v;
        }
        Ok((d, m, out))
    }

    /// [`QUnpack`]: the blocks of [`QTile::LANES`] weight rows into the tile layout.
    fn qunpack(&mut self, u: &QUnpack, bufs: &mut [Vec<u8>]) -> R<()> {
        let w0 = self.eval(&u.w_off, bufs)?.0.i();
        let lanes = QTile::LANES as i64;
        if u.packed {
            return self.qunpack_packed(u, w0, bufs);
        }
        for c in 0..lanes {
            for b in 0..u.blocks {
                let wb = u.first_block + b;
                let (d, m, q) = self.weight_block(u.fmt, u.w, w0 + c * u.row_bytes, wb, bufs)?;
                for (e, v) in q.iter().enumerate() {
                    let e = e as i64;
                    let at = ((b * 16 + e / 2) * lanes + c) * 2 + e % 2;
                    self.write(u.tile, at, V::I(*v), bufs)?;
                }
                let at = 2 * b * lanes + c;
                self.write(u.scales, at, V::F(d as f64), bufs)?;
                let m = m.unwrap_or(0.0) as f64;
                self.write(u.scales, at + lanes, V::F(m), bufs)?;
            }
        }
        Ok(())
    }

    /// A packed [`QUnpack`]: the `Tile16` layout (`templates::pack`) read back.
    fn qunpack_packed(&mut self, u: &QUnpack, w0: i64, bufs: &mut [Vec<u8>]) -> R<()> {
        let lanes = QTile::LANES as i64;
        for b in 0..u.blocks {
            for c in 0..lanes {
                let (d, m, q) =
                    self.packed_block(u.fmt, u.w, w0, u.first_block + b, c, u.act8, bufs)?;
                for (e, v) in (0..32).zip(q) {
                    let at = ((b * 16 + e / 2) * lanes + c) * 2 + e % 2;
                    self.write(u.tile, at, V::I(v), bufs)?;
                }
                let at = 2 * b * lanes + c;
                self.write(u.scales, at, V::F(d as f64), bufs)?;
                self.write(u.scales, at + lanes, V::F(m as f64), bufs)?;
            }
        }
        Ok(())
    }

    /// Row `c`'s block `b` of the 16 rows at `w0` in the `Tile16` layout: scale,
    /// minimum ([`QDot`]'s: stored, `-8 d`, `-16 d` or 0) and quants in activation
    /// order.
    /// `offset8`: a Q8_0 block's quants as `q + 128` with the minimum `-128 d` (int8
    /// activations' unsigned form; see `QTile::has_min`).
    #[allow(clippy::too_many_arguments)]
    fn packed_block(
        &mut self,
        fmt: QFmt,
        w: BufId,
        w0: i64,
        b: i64,
        c: i64,
        offset8: bool,
        bufs: &mut [Vec<u8>],
    ) -> R<(f32, f32, [i64; 32])> {
        let lanes = QTile::LANES as i64;
        if matches!(fmt, QFmt::Q4K | QFmt::Q5K) {
            return self.packed_q4k(fmt, w, w0, b, c, bufs);
        }
        if fmt == QFmt::Q6K {
            return self.packed_q6k(w, w0, b, c, bufs);
        }
        if fmt == QFmt::Q3K {
            return self.packed_q3k(w, w0, b, c, bufs);
        }
        if fmt == QFmt::Q2K {
            return Err(
                "Q2_K's packed blocks are read by the direct tile only (two minimums a block)"
                    .into(),
            );
        }
        if fmt == QFmt::IQ4XS {
            return self.packed_iq4xs(w, w0, b, c, bufs);
        }
        if !fmt.tile16() {
            return Err(format!("{fmt:?} has no packed layout"));
        }
        if fmt.sparse() {
            return self.packed_s24(fmt, w, w0, b, c, bufs);
        }
        let dt = fmt.dtype();
        // A group format's block `b` is block `b mod n` of its group's quants.
        let n = fmt.sub_blocks();
        let g = w0 + b / n * lanes * fmt.block_bytes();
        let (qs, masks) = crate::templates::pack::tile16_offsets(dt);
        let (qs, masks) = (g + qs as i64 + (b % n) * lanes * 16, g + masks as i64);
        let d = self.read(w, g + 2 * c, Ty::F16, bufs)?.f() as f32;
        let offset8 = offset8 && dt == DType::Q8_0;
        let m = if fmt.stored_min() {
            self.read(w, g + 2 * (lanes + c), Ty::F16, bufs)?.f() as f32
        } else if offset8 {
            -128.0 * d
        } else {
            fmt.offset_min().map_or(0.0, |f| f * d)
        };
        if dt != DType::Q8_0 {
            let q = self.packed_nibbles(fmt, w, (qs, masks), c, bufs)?;
            return Ok((d, m, q));
        }
        let mut q = [0i64; 32];
        for (e, v) in q.iter_mut().enumerate() {
            let (at, _) = crate::templates::pack::tile16_quant(dt, c as usize, e);
            *v = self.read(w, qs + at as i64, Ty::I8, bufs)?.i() + if offset8 { 128 } else { 0 };
        }
        Ok((d, m, q))
    }

    /// Row `c`'s 32 quants of a 4-bit `Tile16` block whose nibbles start at byte `qs`
    /// (Q4_0's order, `templates::pack::tile16_quant`), in activation order: with a
    /// fifth bit from the block's masks at byte `masks` (`QFmt::tile_fifth`), or as
    /// IQ4's levels.
    fn packed_nibbles(
        &mut self,
        fmt: QFmt,
        w: BufId,
        (qs, masks): (i64, i64),
        c: i64,
        bufs: &mut [Vec<u8>],
    ) -> R<[i64; 32]> {
        let mut q = [0i64; 32];
        for (e, v) in q.iter_mut().enumerate() {
            let (at, high) = crate::templates::pack::tile16_quant(DType::Q4_0, c as usize, e);
            let byte = self.read(w, qs + at as i64, Ty::U8, bufs)?.i();
            let nib = if high { byte >> 4 } else { byte & 15 };
            *v = if fmt.iq4() {
                llmc_ir::quant::KVALUES_IQ4NL[nib as usize] as i64
            } else if fmt.tile_fifth() {
                let (word, bit) = crate::templates::pack::tile16_fifth(c as usize, e);
                let mask = self.read(w, masks + 4 * word as i64, Ty::U32, bufs)?.i();
                nib | ((mask >> bit) & 1) << 4
            } else {
                nib
            };
        }
        Ok(q)
    }

    /// [`Self::packed_block`] for `q8_0_2of4` and `q8_0_8of32`
    /// (`templates::pack::tile16_s24`).
    fn packed_s24(
        &mut self,
        fmt: QFmt,
        w: BufId,
        w0: i64,
        b: i64,
        c: i64,
        bufs: &mut [Vec<u8>],
    ) -> R<(f32, f32, [i64; 32])> {
        let lanes = QTile::LANES as i64;
        let g = w0 + b * lanes * fmt.block_bytes();
        let d = self.read(w, g + 2 * c, Ty::F16, bufs)?.f() as f32;
        let mut masks = [0u32; 16];
        for (p, m) in masks.iter_mut().enumerate() {
            *m = self.read(w, g + 32 + 4 * p as i64, Ty::U32, bufs)?.i() as u32;
        }
        let mut q = [0i64; 32];
        for (e, v) in q.iter_mut().enumerate() {
            let (p, bit) = (e / 2, 2 * c as u32 + (e % 2) as u32);
            if (masks[p] >> bit) & 1 == 0 {
                continue;
            }
            let start: i64 = masks[..p].iter().map(|m| m.count_ones() as i64).sum();
            let off = start + (masks[p] & ((1u32 << bit) - 1)).count_ones() as i64;
            *v = self.read(w, g + 96 + off, Ty::I8, bufs)?.i();
        }
        Ok((d, 0.0, q))
    }

    /// The K-quant `Tile16` super-block group holding block `b` of the 16 rows at `w0`:
    /// its byte offset, the block's index in it (0..8), and row `c`'s `D` (the group's
    /// first 16 f16).
    fn super_group(
        &mut self,
        fmt: QFmt,
        w: BufId,
        (w0, b, c): (i64, i64, i64),
        bufs: &mut [Vec<u8>],
    ) -> R<(i64, i64, f32)> {
        let g = w0 + b / 8 * QTile::LANES as i64 * fmt.block_bytes();
        let big_d = self.read(w, g + 2 * c, Ty::F16, bufs)?.f() as f32;
        Ok((g, b % 8, big_d))
    }

    /// [`Self::packed_block`] for Q6_K (`templates::pack::tile16_q6k_scale`): `d_lo`,
    /// `d_hi` (in the minimum's place) and the signed quants `q - 32`.
    fn packed_q6k(
        &mut self,
        w: BufId,
        w0: i64,
        b: i64,
        c: i64,
        bufs: &mut [Vec<u8>],
    ) -> R<(f32, f32, [i64; 32])> {
        use crate::templates::pack::{
            tile16_q6k_high, tile16_q6k_scale, TILE16_Q6K_BLOCK, TILE16_Q6K_QUANTS,
        };
        let (g, j, big_d) = self.super_group(QFmt::Q6K, w, (w0, b, c), bufs)?;
        let mut d = [0f32; 2];
        for (h, d) in d.iter_mut().enumerate() {
            let at = g + tile16_q6k_scale(2 * j as usize + h, c as usize) as i64;
            *d = big_d * self.read(w, at, Ty::I8, bufs)?.i() as f32;
        }
        let qs = g + (TILE16_Q6K_QUANTS + TILE16_Q6K_BLOCK * j as usize) as i64;
        let mut q = [0i64; 32];
        for (e, v) in q.iter_mut().enumerate() {
            let (at, high) = crate::templates::pack::tile16_quant(DType::Q4_0, c as usize, e);
            let byte = self.read(w, qs + at as i64, Ty::U8, bufs)?.i();
            let lo = if high { byte >> 4 } else { byte & 15 };
            let (at, shift) = tile16_q6k_high(c as usize, e);
            let hi = (self.read(w, qs + at as i64, Ty::U8, bufs)?.i() >> shift) & 3;
            *v = (lo | hi << 4) - 32;
        }
        Ok((d[0], d[1], q))
    }

    /// [`Self::packed_block`] for Q3_K (`templates::pack::tile16_q3k_scale`): `D s_lo`,
    /// `D s_hi` (in the minimum's place, as Q6_K's) and the signed quants
    /// `lo + 4 h - 4`.
    fn packed_q3k(
        &mut self,
        w: BufId,
        w0: i64,
        b: i64,
        c: i64,
        bufs: &mut [Vec<u8>],
    ) -> R<(f32, f32, [i64; 32])> {
        use crate::templates::pack::{
            tile16_fifth, tile16_q3k_low, tile16_q3k_scale, TILE16_Q3K_BLOCK, TILE16_Q3K_QUANTS,
        };
        let (g, j, big_d) = self.super_group(QFmt::Q3K, w, (w0, b, c), bufs)?;
        let j = j as usize;
        let mut packed = [0u8; 12];
        for (t, p) in packed.iter_mut().enumerate() {
            let at = tile16_q3k_scale(t, c as usize) as i64;
            *p = self.read(w, g + at, Ty::U8, bufs)?.i() as u8;
        }
        let s = llmc_ir::quant_k::q3k_scales(&packed);
        let blk = g + (TILE16_Q3K_QUANTS + TILE16_Q3K_BLOCK * j) as i64;
        let mut q = [0i64; 32];
        for (e, v) in q.iter_mut().enumerate() {
            let (at, shift) = tile16_q3k_low(c as usize, e);
            let lo = (self.read(w, blk + at as i64, Ty::U8, bufs)?.i() >> shift) & 3;
            let (word, bit) = tile16_fifth(c as usize, e);
            let mask = self.read(w, blk + 4 * word as i64, Ty::U32, bufs)?.i();
            *v = lo + 4 * ((mask >> bit) & 1) - 4;
        }
        Ok((big_d * s[2 * j] as f32, big_d * s[2 * j + 1] as f32, q))
    }

    /// Row `c`'s block `b` of a packed Q2_K weight (`templates::pack::tile16_q2k_scale`):
    /// `D`, the halves' minimums `mn · -Dmin`, and the quants times their half's scale
    /// (`QFmt::Q2K`'s folded form, exact).
    fn packed_q2k(
        &mut self,
        w: BufId,
        w0: i64,
        b: i64,
        c: i64,
        bufs: &mut [Vec<u8>],
    ) -> R<(f32, [f32; 2], [i64; 32])> {
        use crate::templates::pack::{
            tile16_q2k_quant, tile16_q2k_scale, TILE16_Q2K_BLOCK, TILE16_Q2K_QUANTS,
        };
        let (g, j, big_d) = self.super_group(QFmt::Q2K, w, (w0, b, c), bufs)?;
        let j = j as usize;
        let dmin = self.read(w, g + 32 + 2 * c, Ty::F16, bufs)?.f() as f32;
        let mut sc = [0i64; 2];
        let mut mins = [0f32; 2];
        for p in 0..2 {
            let at = tile16_q2k_scale(2 * j + p, c as usize) as i64;
            let byte = self.read(w, g + at, Ty::U8, bufs)?.i();
            sc[p] = byte & 15;
            mins[p] = (byte >> 4) as f32 * -dmin;
        }
        let blk = g + (TILE16_Q2K_QUANTS + TILE16_Q2K_BLOCK * j) as i64;
        let mut q = [0i64; 32];
        for (e, v) in q.iter_mut().enumerate() {
            let (at, shift) = tile16_q2k_quant(c as usize, e);
            let v2 = (self.read(w, blk + at as i64, Ty::U8, bufs)?.i() >> shift) & 3;
            *v = v2 * sc[e / 16];
        }
        Ok((big_d, mins, q))
    }

    /// [`Self::packed_block`] for Q4_K (`templates::pack::tile16_q4k_scale`) and Q5_K
    /// (the same, with its blocks' fifth-bit masks, `templates::pack::TILE16_Q5K_BLOCK`).
    fn packed_q4k(
        &mut self,
        fmt: QFmt,
        w: BufId,
        w0: i64,
        b: i64,
        c: i64,
        bufs: &mut [Vec<u8>],
    ) -> R<(f32, f32, [i64; 32])> {
        let (g, j, big_d) = self.super_group(fmt, w, (w0, b, c), bufs)?;
        let j = j as usize;
        let dmin = self.read(w, g + 32 + 2 * c, Ty::F16, bufs)?.f() as f32;
        let mut packed = [0u8; 12];
        for (t, p) in packed.iter_mut().enumerate() {
            let at = crate::templates::pack::tile16_q4k_scale(t, c as usize) as i64;
            *p = self.read(w, g + at, Ty::U8, bufs)?.i() as u8;
        }
        let (sc, mn) = llmc_ir::quant_k::scale_min_k4(j, &packed);
        // Q5_K: each block's 64 bytes of fifth-bit masks before its quants.
        let masks = g + 256 + (crate::templates::pack::TILE16_Q5K_BLOCK * j) as i64;
        let qs = if fmt.tile_fifth() {
            masks + 64
        } else {
            g + 256 + 256 * j as i64
        };
        let q = self.packed_nibbles(fmt, w, (qs, masks), c, bufs)?;
        Ok((big_d * sc as f32, -(dmin * mn as f32), q))
    }

    /// [`Self::packed_block`] for IQ4_XS: block `b % 8` of its super-block group
    /// (`templates::pack::tile16_iq4xs_scale`): `D · (ls - 32)`, no minimum, the
    /// table's levels.
    fn packed_iq4xs(
        &mut self,
        w: BufId,
        w0: i64,
        b: i64,
        c: i64,
        bufs: &mut [Vec<u8>],
    ) -> R<(f32, f32, [i64; 32])> {
        use crate::templates::pack::{tile16_iq4xs_scale, TILE16_IQ4XS_QUANTS};
        let (g, j, big_d) = self.super_group(QFmt::IQ4XS, w, (w0, b, c), bufs)?;
        let sh = self.read(w, g + 32 + 2 * c, Ty::U16, bufs)?.i();
        let at = tile16_iq4xs_scale(j as usize / 2, c as usize) as i64;
        let sl = self.read(w, g + at, Ty::U8, bufs)?.i();
        let ls = ((sl >> (4 * (j % 2))) & 15) | ((sh >> (2 * j)) & 3) << 4;
        let qs = g + (TILE16_IQ4XS_QUANTS + 256 * j as usize) as i64;
        let q = self.packed_nibbles(QFmt::IQ4XS, w, (qs, 0), c, bufs)?;
        Ok((big_d * (ls - 32) as f32, 0.0, q))
    }

    /// [`FTile`]: in-order f32 FMAs per (row, weight row).
    fn ftile(&mut self, t: &FTile, bufs: &mut [Vec<u8>]) -> R<()> {
        let w0 = self.eval(&t.w_off, bufs)?.0.i();
        let k = self.eval(&t.k, bufs)?.0.i();
        let o0 = self.eval(&t.out_off, bufs)?.0.i();
        let ws = self.eval(&t.w_stride, bufs)?.0.i();
        if k < 0 {
            return Err(format!("ftile: k = {k} is negative"));
        }
        let lanes = FTile::LANES as i64;
        let es = t.w_ty.bytes() as i64;
        for (i, xe) in t.x_rows.iter().enumerate() {
            let x0 = self.eval(xe, bufs)?.0.i();
            for c in 0..lanes {
                let mut s = 0f32;
                for p in 0..k {
                    let at = (x0 + p * t.x_stride) * 4;
                    let x = self.read(t.x, at, Ty::F32, bufs)?.f() as f32;
                    let w = self.read(t.w, (w0 + p * ws + c) * es, t.w_ty, bufs)?.f() as f32;
                    s = x.mul_add(w, s);
                }
                self.write(t.out, o0 + i as i64 * lanes + c, V::F(s as f64), bufs)?;
            }
        }
        Ok(())
    }

    /// [`QTile`]: [`QDot`]'s arithmetic over the decoded tile.
    fn qtile(&mut self, t: &QTile, bufs: &mut [Vec<u8>]) -> R<()> {
        let lanes = QTile::LANES as i64;
        let last = t.first_block + t.blocks == t.row_blocks;
        let state = match &t.state {
            Some((st, off)) => Some((*st, self.eval(off, bufs)?.0.i())),
            None => None,
        };
        for (i, (xe, se)) in t.x_blk.iter().zip(&t.x_sc).enumerate() {
            let x0 = self.eval(xe, bufs)?.0.i();
            let s0 = self.eval(se, bufs)?.0.i();
            let mut x = Vec::with_capacity(32 * t.blocks as usize);
            for e in 0..32 * t.blocks {
                x.push(self.read_xq(t.xq, (x0 + t.first_block) * 32 + e, bufs)?);
            }
            let i = i as i64;
            for c in 0..lanes {
                // The chains: from the state when an earlier slice ran.
                let at = |h: i64| (4 * i + h) * lanes + c;
                let mut ch = Chains::default();
                if t.first_block > 0 {
                    let (st, off) = state.ok_or("qtile: a later slice without a state")?;
                    let mut v = [0f32; 4];
                    for (h, v) in (0..4).zip(v.iter_mut()) {
                        *v = self.read(st, (off + at(h)) * 4, Ty::F32, bufs)?.f() as f32;
                    }
                    ch = Chains {
                        sum: [v[0], v[1]],
                        min: [v[2], v[3]],
                    };
                }
                for b in 0..t.blocks {
                    let bg = t.first_block + b;
                    if t.fmt.split_mins() {
                        // Q2_K (direct only), as QDot: the folded quants with `D xd`
                        // into the block's chain, each half's minimum against its half
                        // sum into the block's minimum chain.
                        if !t.direct {
                            return Err("qtile: Q2_K is read from the packed weight only".into());
                        }
                        let w0 = self.eval(&t.w_off, bufs)?.0.i();
                        let (dd, mins, q) = self.packed_q2k(t.w, w0, bg, c, bufs)?;
                        let dot: i64 = (0..32).map(|e| q[e] * x[32 * b as usize + e]).sum();
                        let sc = s0 + QDot::scale_offset(bg);
                        let xd = self.read(t.xd, sc * 4, Ty::F32, bufs)?.f() as f32;
                        ch.block(bg, dot, dd * xd, None);
                        for (p, m) in mins.iter().enumerate() {
                            let at = (2 * (x0 + bg) + p as i64) * 4;
                            let hs = self.read(t.xs, at, Ty::F32, bufs)?.f() as f32;
                            let chain = &mut ch.min[(bg % 2) as usize];
                            *chain = m.mul_add(hs, *chain);
                        }
                        continue;
                    }
                    // The block's scale, minimum and quants: from the tile, or from
                    // the packed weight as it goes.
                    let (d, m, q) = if t.direct {
                        let w0 = self.eval(&t.w_off, bufs)?.0.i();
                        self.packed_block(t.fmt, t.w, w0, bg, c, t.has_min, bufs)?
                    } else {
                        let mut q = [0i64; 32];
                        for (e, v) in (0..32).zip(q.iter_mut()) {
                            let at = ((b * 16 + e / 2) * lanes + c) * 2 + e % 2;
                            *v = self.read(t.tile, at * 2, Ty::I16, bufs)?.i();
                        }
                        let d = self.read(t.scales, (2 * b * lanes + c) * 4, Ty::F32, bufs)?;
                        let at = ((2 * b + 1) * lanes + c) * 4;
                        let m = self.read(t.scales, at, Ty::F32, bufs)?;
                        (d.f() as f32, m.f() as f32, q)
                    };
                    let dot = |e: std::ops::Range<usize>| -> i64 {
                        e.map(|e| q[e] * x[32 * b as usize + e]).sum()
                    };
                    let sc = s0 + QDot::scale_offset(bg);
                    let xd = self.read(t.xd, sc * 4, Ty::F32, bufs)?.f() as f32;
                    if t.fmt.split_scales() {
                        // Q6_K: the first half with `d` into E, the second with the
                        // minimum's slot (`d_hi`) into O, as QDot.
                        ch.sum[0] = (dot(0..16) as f32).mul_add(d * xd, ch.sum[0]);
                        ch.sum[1] = (dot(16..32) as f32).mul_add(m * xd, ch.sum[1]);
                        continue;
                    }
                    let dot = dot(0..32);
                    let min = if t.has_min {
                        let xs = self.read(t.xs, sc * 4, Ty::F32, bufs)?.f() as f32;
                        Some((m, xs))
                    } else {
                        None
                    };
                    ch.block(bg, dot, d * xd, min);
                }
                if !last {
                    let (st, off) = state.ok_or("qtile: a slice without a state")?;
                    let v = [ch.sum[0], ch.sum[1], ch.min[0], ch.min[1]];
                    for (h, v) in (0..4).zip(v) {
                        self.write(st, off + at(h), V::F(v as f64), bufs)?;
                    }
                    continue;
                }
                let acc = t.accs[(i * lanes + c) as usize];
                let a = self.vars[acc.0 as usize]
                    .ok_or_else(|| format!("variable %{} read before set", self.k.var(acc).name))?
                    .f() as f32;
                let tot = ch.total(t.row_blocks, t.has_min);
                self.vars[acc.0 as usize] = Some(V::F((a + tot) as f64));
            }
        }
        Ok(())
    }

    /// [`QDot`] with the arithmetic its definition fixes (the backends match it bit for
    /// bit on AVX2): exact integer block sums, f32 fused multiply-adds into even/odd
    /// block chains.
    fn qdot(&mut self, q: &QDot, bufs: &mut [Vec<u8>]) -> R<()> {
        let w0 = self.eval(&q.w_off, bufs)?.0.i();
        let bb = q.fmt.block_bytes();
        for ((xe, se), acc) in q.x_blk.iter().zip(&q.x_sc).zip(&q.accs) {
            let x0 = self.eval(xe, bufs)?.0.i();
            let s0 = self.eval(se, bufs)?.0.i();
            let a = self.vars[acc.0 as usize]
                .ok_or_else(|| format!("variable %{} read before set", self.k.var(*acc).name))?
                .f() as f32;
            // [even, odd] chains of the block sums and of the minimum terms.
            let mut ch = Chains::default();
            for b in 0..q.blocks {
                let xb = x0 + b;
                let sc = s0 + QDot::scale_offset(b);
                if q.fmt == QFmt::Q6K {
                    // Halves with their own scales: the first into E, the second into O.
                    let sb = w0 + b / 8 * bb;
                    let (h, c) = (b % 8 / 4, b % 4);
                    let big_d = self.read(q.w, sb + 208, Ty::F16, bufs)?.f() as f32;
                    let xd = self.read(q.xd, sc * 4, Ty::F32, bufs)?.f() as f32;
                    for (p, chain) in ch.sum.iter_mut().enumerate() {
                        let mut dot = 0i64;
                        for e in 16 * p as i64..16 * p as i64 + 16 {
                            let lo =
                                self.read(q.w, sb + 64 * h + 32 * (c % 2) + e, Ty::U8, bufs)?;
                            let lo = (lo.i() >> (4 * (c / 2))) & 15;
                            let hi = self.read(q.w, sb + 128 + 32 * h + e, Ty::U8, bufs)?;
                            let hi = (hi.i() >> (2 * c)) & 3;
                            let x = self.read_xq(q.xq, xb * 32 + e, bufs)?;
                            dot += ((lo | hi << 4) - 32) * x;
                        }
                        let at = sb + 192 + 8 * h + 2 * c + p as i64;
                        let s = self.read(q.w, at, Ty::I8, bufs)?.i() as f32;
                        *chain = (dot as f32).mul_add(big_d * s * xd, *chain);
                    }
                    continue;
                }
                if q.fmt == QFmt::Q2K {
                    // The quants times their half's scale against x (exact), one step
                    // of the block chains with `D xd`; each half's minimum times
                    // `-Dmin` against the half's activation sum from `xs`, one step of
                    // the minimum chains each.
                    let sb = w0 + b / 8 * bb;
                    let t = b % 8;
                    let (h, k) = (t / 4, t % 4);
                    let big_d = self.read(q.w, sb + 80, Ty::F16, bufs)?.f() as f32;
                    let dmin = self.read(q.w, sb + 82, Ty::F16, bufs)?.f() as f32;
                    let xd = self.read(q.xd, sc * 4, Ty::F32, bufs)?.f() as f32;
                    let mut dot = 0i64;
                    for e in 0..32 {
                        let s = self.read(q.w, sb + 2 * t + e / 16, Ty::U8, bufs)?.i();
                        let v = self.read(q.w, sb + 16 + 32 * h + e, Ty::U8, bufs)?;
                        let x = self.read_xq(q.xq, xb * 32 + e, bufs)?;
                        dot += (s & 15) * ((v.i() >> (2 * k)) & 3) * x;
                    }
                    ch.block(b, dot, big_d * xd, None);
                    for p in 0..2 {
                        let mn = self.read(q.w, sb + 2 * t + p, Ty::U8, bufs)?.i() >> 4;
                        let hs = self.read(q.xs, (2 * xb + p) * 4, Ty::F32, bufs)?.f() as f32;
                        let c = &mut ch.min[(b % 2) as usize];
                        *c = (mn as f32 * -dmin).mul_add(hs, *c);
                    }
                    continue;
                }
                if q.fmt == QFmt::Q3K {
                    // As Q6_K: the first half into E, the second into O.
                    let sb = w0 + b / 8 * bb;
                    let t = b % 8;
                    let (h, k) = (t / 4, t % 4);
                    let mut packed = [0u8; 12];
                    for (i, p) in packed.iter_mut().enumerate() {
                        *p = self.read(q.w, sb + 96 + i as i64, Ty::U8, bufs)?.i() as u8;
                    }
                    let scales = llmc_ir::quant_k::q3k_scales(&packed);
                    let big_d = self.read(q.w, sb + 108, Ty::F16, bufs)?.f() as f32;
                    let xd = self.read(q.xd, sc * 4, Ty::F32, bufs)?.f() as f32;
                    for (p, chain) in ch.sum.iter_mut().enumerate() {
                        let mut dot = 0i64;
                        for e in 16 * p as i64..16 * p as i64 + 16 {
                            let lo = self.read(q.w, sb + 32 + 32 * h + e, Ty::U8, bufs)?;
                            let lo = (lo.i() >> (2 * k)) & 3;
                            let hm = self.read(q.w, sb + e, Ty::U8, bufs)?.i();
                            let sub = if (hm >> (4 * h + k)) & 1 == 1 { 0 } else { 4 };
                            let x = self.read_xq(q.xq, xb * 32 + e, bufs)?;
                            dot += (lo - sub) * x;
                        }
                        let s = scales[(2 * t) as usize + p] as f32;
                        *chain = (dot as f32).mul_add(big_d * s * xd, *chain);
                    }
                    continue;
                }
                let (d, m, w) = self.weight_block(q.fmt, q.w, w0, b, bufs)?;
                let mut dot = 0i64;
                for (e, w) in w.iter().enumerate() {
                    let x = self.read_xq(q.xq, xb * 32 + e as i64, bufs)?;
                    dot += w * x;
                }
                let xd = self.read(q.xd, sc * 4, Ty::F32, bufs)?.f() as f32;
                let min = match m {
                    Some(m) => Some((m, self.read(q.xs, sc * 4, Ty::F32, bufs)?.f() as f32)),
                    None => None,
                };
                ch.block(b, dot, d * xd, min);
            }
            let tot = ch.total(q.blocks, q.fmt.has_min());
            self.vars[acc.0 as usize] = Some(V::F((a + tot) as f64));
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
                    if matches!(
                        tag,
                        LoopTag::GpuGrid(_) | LoopTag::GpuBlock(_) | LoopTag::GpuWarp
                    ) {
                        return Err("a GPU loop outside the GPU form".into());
                    }
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
                    let bytes = self.k.buf(*buf).ty.bytes() as i64;
                    self.check_align(*buf, index, i.wrapping_mul(bytes), bytes as u64, true)?;
                    self.write(*buf, i, v, bufs)?;
                }
                Stmt::StoreRaw { buf, offset, value } => {
                    let at = self.eval(offset, bufs)?.0.i();
                    let (v, t) = self.eval(value, bufs)?;
                    self.check_align(*buf, offset, at, t.bytes() as u64, false)?;
                    self.write_at(*buf, at, t, v, bufs)?;
                }
                Stmt::If { cond, then, els } => {
                    if self.eval(cond, bufs)?.0.i() != 0 {
                        self.run(then, bufs)?;
                    } else {
                        self.run(els, bufs)?;
                    }
                }
                Stmt::Alloc { buf, len } => {
                    let bytes = alloc_bytes(self.k.buf(*buf).ty, *len)?;
                    // Fill with a pattern, not zeros: a template must not rely on it.
                    self.locals[buf.0 as usize] = Some(vec![0xA5; bytes]);
                    allocated.push(*buf);
                }
                Stmt::Barrier | Stmt::ShuffleXor { .. } | Stmt::Mma(_) => {
                    return Err("a barrier, shuffle or mma outside a GPU block's threads".into())
                }
                Stmt::QDot(q) => self.qdot(q, bufs)?,
                Stmt::QUnpack(u) => self.qunpack(u, bufs)?,
                Stmt::QTile(t) => self.qtile(t, bufs)?,
                Stmt::FTile(t) => self.ftile(t, bufs)?,
                // A hint: no effect on results.
                Stmt::Prefetch { .. } => {}
            }
        }
        for b in allocated {
            self.locals[b.0 as usize] = None;
        }
        Ok(())
    }
    /// Runs a kernel in the GPU form: top-level lets, then the grid.
    fn run_gpu(&mut self, bufs: &mut [Vec<u8>]) -> R<()> {
        self.gpu = Some(GpuTrack {
            align: Some(crate::gpu::Alignment::of(self.k)),
            ..GpuTrack::default()
        });
        let k = self.k;
        let mut rest = &k.body[..];
        while let [Stmt::Let { var, value }, tail @ ..] = rest {
            let v = self.eval(value, bufs)?.0;
            self.vars[var.0 as usize] = Some(v);
            rest = tail;
        }
        let mut blocks = 0u64;
        self.grid(rest, bufs, &mut blocks)
    }

    /// A grid loop's level: uniform lets, the block's shared arrays, then a grid loop
    /// (its blocks in reverse order) or the block's threads.
    fn grid(&mut self, stmts: &[Stmt], bufs: &mut [Vec<u8>], blocks: &mut u64) -> R<()> {
        let mut allocated = Vec::new();
        for s in stmts {
            match s {
                Stmt::Let { var, value } => {
                    let v = self.eval(value, bufs)?.0;
                    self.vars[var.0 as usize] = Some(v);
                }
                Stmt::Alloc { buf, len } => {
                    let bytes = alloc_bytes(self.k.buf(*buf).ty, *len)?;
                    self.shared[buf.0 as usize] = Some(vec![0xA5; bytes]);
                    allocated.push(*buf);
                }
                Stmt::For {
                    var,
                    lo,
                    hi,
                    step,
                    tag: LoopTag::GpuGrid(_),
                    body,
                } => {
                    let lo = self.eval(lo, bufs)?.0.i();
                    let hi = self.eval(hi, bufs)?.0.i();
                    let step = (*step).max(1);
                    let n = if hi > lo { (hi - lo - 1) / step + 1 } else { 0 };
                    for j in (0..n).rev() {
                        self.vars[var.0 as usize] = Some(V::I(lo + j * step));
                        self.grid(body, bufs, blocks)?;
                    }
                    self.vars[var.0 as usize] = None;
                }
                Stmt::For {
                    tag: LoopTag::GpuBlock(_),
                    ..
                } => {
                    self.block(s, bufs, *blocks)?;
                    *blocks += 1;
                }
                _ => return Err("the kernel is not in the GPU form".into()),
            }
        }
        for b in allocated {
            self.shared[b.0 as usize] = None;
        }
        Ok(())
    }

    /// One block: its threads (the nested block loops' iterations) in lock-step.
    fn block(&mut self, s: &Stmt, bufs: &mut [Vec<u8>], block_no: u64) -> R<()> {
        // (var, lo, step, axis) per block loop, and the threads' body.
        let mut loops: Vec<(VarId, i64, i64, usize)> = Vec::new();
        let mut ext = [1i64; 3];
        let mut cur = s;
        let body = loop {
            let Stmt::For {
                var,
                lo,
                hi,
                step,
                tag: LoopTag::GpuBlock(a),
                body,
            } = cur
            else {
                return Err("the kernel is not in the GPU form".into());
            };
            let lo = self.eval(lo, bufs)?.0.i();
            let hi = self.eval(hi, bufs)?.0.i();
            let step = (*step).max(1);
            let a = (*a as usize).min(2);
            ext[a] = if hi > lo { (hi - lo - 1) / step + 1 } else { 0 };
            loops.push((*var, lo, step, a));
            match &body[..] {
                [inner @ Stmt::For {
                    tag: LoopTag::GpuBlock(_),
                    ..
                }] => cur = inner,
                _ => break body,
            }
        };
        let n = ext.iter().product::<i64>().max(0) as usize;
        let mut ts: Vec<Thread> = (0..n)
            .map(|tid| {
                let tid = tid as i64;
                let idx = [
                    tid % ext[0],
                    (tid / ext[0]) % ext[1],
                    tid / (ext[0] * ext[1]),
                ];
                let mut vars = self.vars.clone();
                for &(v, lo, step, a) in &loops {
                    vars[v.0 as usize] = Some(V::I(lo + idx[a] * step));
                }
                Thread {
                    vars,
                    locals: vec![None; self.k.bufs.len()],
                }
            })
            .collect();
        if let Some(g) = self.gpu.as_mut() {
            g.shared.clear();
        }
        let mask = vec![true; n];
        self.lockstep(body, &mask, &mut ts, bufs, block_no)
            .map_err(|e| format!("block {block_no}: {e}"))
    }

    /// Makes thread `i` the running one.
    fn enter(&mut self, i: usize, ts: &mut [Thread], block_no: u64) {
        std::mem::swap(&mut self.vars, &mut ts[i].vars);
        std::mem::swap(&mut self.locals, &mut ts[i].locals);
        let n = ts.len() as u64;
        if let Some(g) = self.gpu.as_mut() {
            g.thread = i as u32;
            g.global = block_no * n + i as u64;
        }
    }

    fn leave(&mut self, i: usize, ts: &mut [Thread]) {
        std::mem::swap(&mut self.vars, &mut ts[i].vars);
        std::mem::swap(&mut self.locals, &mut ts[i].locals);
    }

    /// Evaluates `e` for every active thread.
    #[allow(clippy::needless_range_loop)] // threads index several parallel arrays
    fn eval_all(
        &mut self,
        e: &Expr,
        mask: &[bool],
        ts: &mut [Thread],
        bufs: &mut [Vec<u8>],
        block_no: u64,
    ) -> R<Vec<Option<V>>> {
        let mut out = vec![None; ts.len()];
        for i in 0..ts.len() {
            if mask[i] {
                self.enter(i, ts, block_no);
                let v = self.eval(e, bufs);
                self.leave(i, ts);
                out[i] = Some(v?.0);
            }
        }
        Ok(out)
    }

    /// Runs `stmts` for the threads in `mask`, statement by statement.
    #[allow(clippy::needless_range_loop)] // threads index several parallel arrays
    fn lockstep(
        &mut self,
        stmts: &[Stmt],
        mask: &[bool],
        ts: &mut [Thread],
        bufs: &mut [Vec<u8>],
        block_no: u64,
    ) -> R<()> {
        let n = ts.len();
        let mut allocated = Vec::new();
        for s in stmts {
            match s {
                Stmt::For {
                    var,
                    lo,
                    hi,
                    step,
                    body,
                    ..
                } => {
                    let los = self.eval_all(lo, mask, ts, bufs, block_no)?;
                    let his = self.eval_all(hi, mask, ts, bufs, block_no)?;
                    for i in 0..n {
                        if let Some(l) = los[i] {
                            ts[i].vars[var.0 as usize] = Some(V::I(l.i()));
                        }
                    }
                    loop {
                        let active: Vec<bool> = (0..n)
                            .map(|i| {
                                mask[i]
                                    && match (ts[i].vars[var.0 as usize], his[i]) {
                                        (Some(v), Some(h)) => v.i() < h.i(),
                                        _ => false,
                                    }
                            })
                            .collect();
                        if !active.iter().any(|&a| a) {
                            break;
                        }
                        self.lockstep(body, &active, ts, bufs, block_no)?;
                        for i in 0..n {
                            if active[i] {
                                let v = ts[i].vars[var.0 as usize].map_or(0, |v| v.i());
                                ts[i].vars[var.0 as usize] = Some(V::I(v + (*step).max(1)));
                            }
                        }
                    }
                    for i in 0..n {
                        if mask[i] {
                            ts[i].vars[var.0 as usize] = None;
                        }
                    }
                }
                Stmt::If { cond, then, els } => {
                    let c = self.eval_all(cond, mask, ts, bufs, block_no)?;
                    let tm: Vec<bool> = c.iter().map(|v| v.is_some_and(|v| v.i() != 0)).collect();
                    let em: Vec<bool> = c.iter().map(|v| v.is_some_and(|v| v.i() == 0)).collect();
                    if tm.iter().any(|&a| a) {
                        self.lockstep(then, &tm, ts, bufs, block_no)?;
                    }
                    if em.iter().any(|&a| a) {
                        self.lockstep(els, &em, ts, bufs, block_no)?;
                    }
                }
                Stmt::Barrier => {
                    if let Some(i) = mask.iter().position(|&a| !a) {
                        let active = mask.iter().filter(|&&a| a).count();
                        return Err(format!(
                            "divergent barrier: {active} of {n} threads reach it (thread {i} does not)"
                        ));
                    }
                    if let Some(g) = self.gpu.as_mut() {
                        g.shared.clear();
                    }
                }
                Stmt::Mma(m) => {
                    let mut ops = Vec::with_capacity(10);
                    for e in m.operands() {
                        ops.push(self.eval_all(e, mask, ts, bufs, block_no)?);
                    }
                    whole_warps(mask, n, "mma")?;
                    for w0 in (0..n).step_by(32) {
                        if !mask[w0] {
                            continue;
                        }
                        let op = |i: usize, l: usize| ops[i][w0 + l].map_or(0.0, |v| v.f());
                        let (mut a, mut b, mut c) =
                            ([[0f64; 8]; 16], [[0f64; 8]; 8], [[0f64; 8]; 16]);
                        for l in 0..32 {
                            let (g, t) = (l / 4, l % 4);
                            a[g][t] = tf32(op(0, l));
                            a[g + 8][t] = tf32(op(1, l));
                            a[g][t + 4] = tf32(op(2, l));
                            a[g + 8][t + 4] = tf32(op(3, l));
                            b[t][g] = tf32(op(4, l));
                            b[t + 4][g] = tf32(op(5, l));
                            c[g][2 * t] = op(6, l);
                            c[g][2 * t + 1] = op(7, l);
                            c[g + 8][2 * t] = op(8, l);
                            c[g + 8][2 * t + 1] = op(9, l);
                        }
                        for l in 0..32 {
                            let (g, t) = (l / 4, l % 4);
                            let at = [
                                (g, 2 * t),
                                (g, 2 * t + 1),
                                (g + 8, 2 * t),
                                (g + 8, 2 * t + 1),
                            ];
                            for (v, (r, col)) in m.d.iter().zip(at) {
                                let s: f64 =
                                    (0..8).map(|k| a[r][k] * b[k][col]).sum::<f64>() + c[r][col];
                                ts[w0 + l].vars[v.0 as usize] = Some(V::F(round_to(DType::F32, s)));
                            }
                        }
                    }
                }
                Stmt::ShuffleXor { var, value, xor } => {
                    let vals = self.eval_all(value, mask, ts, bufs, block_no)?;
                    whole_warps(mask, n, "shuffle")?;
                    for i in 0..n {
                        if mask[i] {
                            ts[i].vars[var.0 as usize] = vals[i ^ *xor as usize];
                        }
                    }
                }
                Stmt::Alloc { buf, len } => {
                    let bytes = alloc_bytes(self.k.buf(*buf).ty, *len)?;
                    for i in 0..n {
                        if mask[i] {
                            ts[i].locals[buf.0 as usize] = Some(vec![0xA5; bytes]);
                        }
                    }
                    allocated.push(*buf);
                }
                _ => {
                    for i in 0..n {
                        if mask[i] {
                            self.enter(i, ts, block_no);
                            let r = self.run(std::slice::from_ref(s), bufs);
                            self.leave(i, ts);
                            r.map_err(|e| format!("thread {i}: {e}"))?;
                        }
                    }
                }
            }
        }
        for b in allocated {
            for (i, t) in ts.iter_mut().enumerate() {
                if mask[i] {
                    t.locals[b.0 as usize] = None;
                }
            }
        }
        Ok(())
    }
}

/// The bytes of a local or shared array of `len` elements of `t`.
fn alloc_bytes(t: Ty, len: i64) -> R<usize> {
    usize::try_from(len)
        .ok()
        .and_then(|l| l.checked_mul(t.bytes()))
        .filter(|&b| b <= 1 << 30)
        .ok_or_else(|| format!("local of {len} elements is too large"))
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
        // `as` saturates (to i32 for targets of 32 bits or fewer but u32, to i64
        // otherwise) and maps NaN to 0, then the value wraps to the width.
        V::F(x) if to.sat_i32() => fit(to, V::I(x as i32 as i64)),
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
        shared: vec![None; k.bufs.len()],
        gpu: None,
    };
    if crate::gpu::is_gpu(k) {
        crate::gpu::schedule(k).map_err(|e| InterpError {
            kernel: k.name.clone(),
            msg: e,
        })?;
        return m.run_gpu(bufs).map_err(err);
    }
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

/// Fails unless every warp with an active lane has all 32 lanes active (a shuffle or
/// an mma needs the whole warp).
fn whole_warps(mask: &[bool], n: usize, what: &str) -> R<()> {
    for i in 0..n {
        if !mask[i] {
            continue;
        }
        let w0 = i / 32 * 32;
        if let Some(l) = (w0..w0 + 32).find(|&l| l >= n || !mask[l]) {
            return Err(format!(
                "{what} in warp {} with lane {} inactive or missing (all 32 lanes must take part)",
                i / 32,
                l - w0
            ));
        }
    }
    Ok(())
}

/// `x` as f32 rounded to tf32 the way `cvt.rna.tf32.f32` does: 10 mantissa bits, to
/// nearest, ties away from zero (the 13 low bits cleared).
fn tf32(x: f64) -> f64 {
    let f = x as f32;
    if !f.is_finite() {
        return f as f64;
    }
    f32::from_bits((f.to_bits() + 0x1000) & !0x1FFF) as f64
}

/// [`QDot`]'s float arithmetic for one (row, weight row) pair, which [`QTile`] shares:
/// an even and an odd chain of block sums (`E = fma(float(I_b), d · xd, E)`) and of
/// minimum terms (`ME = fma(m, xs, ME)`).
#[derive(Default)]
struct Chains {
    sum: [f32; 2],
    min: [f32; 2],
}

impl Chains {
    /// Block `b`: integer sum `dot`, scale product `d · xd`, and `(m, xs)` when the
    /// format has a minimum.
    fn block(&mut self, b: i64, dot: i64, dxd: f32, min: Option<(f32, f32)>) {
        let p = (b % 2) as usize;
        self.sum[p] = (dot as f32).mul_add(dxd, self.sum[p]);
        if let Some((m, xs)) = min {
            self.min[p] = m.mul_add(xs, self.min[p]);
        }
    }

    /// `(E + O) + (ME + MO)` after `blocks` blocks (a trailing odd block pairs with a
    /// zero partner in the odd chains).
    fn total(mut self, blocks: i64, has_min: bool) -> f32 {
        if blocks % 2 == 1 {
            self.sum[1] = 0f32.mul_add(0.0, self.sum[1]);
            self.min[1] = 0f32.mul_add(0.0, self.min[1]);
        }
        let mut tot = self.sum[0] + self.sum[1];
        if has_min {
            tot += self.min[0] + self.min[1];
        }
        tot
    }
}

#[cfg(test)]
mod tests {
    /// `cvt.rna.tf32.f32`: 10 mantissa bits, to nearest, ties away from zero.
    #[test]
    fn tf32_rounds_to_nearest_with_ties_away() {
        let e = |p: i32| 2f64.powi(p);
        assert_eq!(super::tf32(1.0 + e(-10)), 1.0 + e(-10));
        assert_eq!(super::tf32(1.0 + e(-12)), 1.0);
        assert_eq!(super::tf32(1.0 + e(-11)), 1.0 + e(-10));
        assert_eq!(super::tf32(-(1.0 + e(-11))), -(1.0 + e(-10)));
        assert_eq!(super::tf32(1.0 + e(-11) + e(-20)), 1.0 + e(-10));
        assert_eq!(super::tf32(1.0 + 3.0 * e(-11)), 1.0 + e(-9));
        assert!(super::tf32(f64::NAN).is_nan());
        assert_eq!(super::tf32(f64::INFINITY), f64::INFINITY);
    }
}
