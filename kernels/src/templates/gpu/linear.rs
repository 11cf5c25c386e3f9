//! `linear` / `linear_act` on the GPU (the decode step's GEMV): a warp per weight row
//! (output column), [`WARPS`] rows per block. The lanes walk the row in units — 8
//! elements of a GGUF block (Q4/Q5: 4 bytes of nibbles, Q5's fifth bits from the
//! block's `qh`, Q8_0: 8 bytes; the K-quants Q2_K-Q6_K and IQ4_NL/IQ4_XS decoded per
//! unit by `k_unit`; 4 units per
//! block) or one element of a float weight — so a warp reads consecutive bytes, each
//! weight byte once per [`RG`] activation rows; the grid's y axis takes the
//! activation rows [`RC`] at a time, so a prefill chunk fills the GPU. Blocks are dequantized in registers:
//! `Σ x·(d q + m) = d Σ x q + m Σ x` per unit. A shuffle butterfly sums the lanes;
//! lane 0 adds the bias, applies the epilogue and stores.
//!
//! Steps of [`MM`]+ rows (prefill chunks, large batches) take tensor cores instead: a
//! block multiplies a tile of `MM` activation rows by [`MN`] output columns with
//! `mma.m16n8k8` on tf32, staging 32 elements of k at a time in shared memory (the
//! weight units dequantized as above, the activations through the norm or `glu_in`).

use super::super::{
    compute_ty, elementwise::activation, fconst, iq4_level, k4_scale_min, load_elem, operand,
    quant_block, result, setup, to_storage,
};
use super::warp_sum;
use crate::builder::KernelBuilder;
use crate::loopir::{BinOp, BufId, Expr, LoopTag, Ty, UnOp};
use crate::templates::{Lowered, TResult};
use llmc_ir::ops::fused_gemm::Act;
use llmc_ir::{DType, Node, TensorType};

/// Weight rows (warps) per block.
pub(crate) const WARPS: i64 = 8;
/// Activation rows sharing one read of the weight row.
const RG: i64 = 4;
/// Weight rows per warp in the tiled form (16+ activation rows).
const JW: i64 = 4;
/// Activation rows per block along the grid's y axis: a prefill chunk's rows spread
/// over blocks (a decode step's few rows stay in one).
const RC: i64 = 16;
/// Units per GGUF block.
const UPB: i64 = 4;
/// Activation rows per tensor-core tile (16 rows per warp, 4 warps down the tile).
const MM: i64 = 64;
/// The symbol whose value is the row count from which a step takes the tensor-core
/// tiles: the CUDA runtime binds it (64; or never, `LLMC_CUDA_NO_MMA=1`), the tests
/// too (`testing::with_mma_rows`).
pub const MMA_ROWS_SYMBOL: &str = "llmc_mma_rows";
/// Output columns per tensor-core tile (32 per warp, 2 warps across).
const MN: i64 = 64;
/// Row stride of the shared tiles in floats: 32 elements + 4, so the lanes of a
/// fragment read (row `g`, column `t`) hit 32 different banks.
const MS: i64 = 36;

fn b(op: BinOp, x: Expr, y: Expr) -> Expr {
    Expr::bin(op, x, y)
}

/// The GPU linear kernel, or `None` when the shapes or types need the generic path
/// (a weight that is not `[n, k]` with constant dims, non-f32 compute).
pub(crate) fn linear(
    node: &Node,
    ins: &[&TensorType],
    outs: &[&TensorType],
    name: &str,
) -> TResult<Option<Lowered>> {
    let x = operand(ins, 0, "x")?;
    let w = operand(ins, 1, "w")?;
    result(outs, 0)?;
    let [n, k] = &w.shape.0[..] else {
        return Ok(None);
    };
    let (Some(n), Some(k)) = (n.as_const(), k.as_const()) else {
        return Ok(None);
    };
    let t = compute_ty(x.dtype)?;
    if t != Ty::F32 {
        return Ok(None);
    }
    // `glu_in`: x rows are [gate | up] of 2k, each read act(gate) · up.
    let glu_in = match llmc_ir::ops::linalg::glu_in_act(&node.attrs)? {
        Some(a) => Some(Act::from_name(a).ok_or("unknown glu_in activation")?),
        None => None,
    };
    // `glu`: output column j from weight rows j (gate) and n / 2 + j (up), which one
    // warp takes together.
    let glu = match llmc_ir::ops::linalg::glu_act(&node.attrs)? {
        Some(a) if n % 2 == 0 => Some(Act::from_name(a).ok_or("unknown glu activation")?),
        Some(_) => return Ok(None),
        None => None,
    };
    let n_out = if glu.is_some() { n / 2 } else { n };
    let quant = quant_block(w.dtype);
    if w.dtype.is_quantized() && quant.is_none() {
        return Ok(None);
    }
    // Every block format `quant_block` knows is decoded here (per unit: `pass`,
    // `k_unit`); a row must be whole blocks.
    if quant.is_some() && k % w.dtype.block_len() as i64 != 0 {
        return Ok(None);
    }
    let act = match node.op {
        llmc_ir::Op::LinearAct => Some(Act::of_attrs(&node.attrs)?),
        _ => None,
    };
    let (mut kb, ib, ob) = setup(name, ins, outs)?;
    let lead = &x.shape.0[..x.shape.rank().saturating_sub(1)];
    let rows = kb.numel(lead);
    let rows = kb.let_("rows", rows);
    // With `norm_eps` the last operand is the weight of the RMS norm x is read
    // through; then, with `residual = 1`, the residual the store adds.
    let (ib_n, norm) = llmc_ir::ops::linalg::split_norm(&ib[..], &node.attrs)?;
    let norm = norm.map(|(&nb, eps)| (nb, ins[ins.len() - 1].dtype, eps));
    let (ib_main, res) = llmc_ir::ops::linalg::split_residual(ib_n, &node.attrs)?;
    let res = res.map(|&r| (r, ins[ib_n.len() - 1].dtype));
    let bias = match ib_main.get(2) {
        Some(&bb) => Some((bb, operand(ins, 2, "b")?.dtype)),
        None => None,
    };
    let g = Gemv {
        res,
        norm,
        glu_in,
        glu,
        n_out,
        x: ib[0],
        xd: x.dtype,
        w: ib[1],
        wd: w.dtype,
        out: ob[0],
        bias,
        act,
        k,
    };
    let blocks = (n_out + WARPS - 1) / WARPS;
    // A warp's weight rows for output columns `cols`: with `glu` their up rows too.
    let with_up = |cols: Vec<Expr>| -> Vec<Expr> {
        match glu {
            None => cols,
            Some(_) => {
                let ups: Vec<Expr> = cols.iter().map(|c| c.clone() + n_out).collect();
                cols.into_iter().chain(ups).collect()
            }
        }
    };
    let chunks = kb.let_("rchunks", (rows.clone() + (RC - 1)) / RC);
    // Tensor cores for steps of `thr`+ rows: a symbol the runtime binds (MM; never,
    // for the SIMT baseline: `LLMC_CUDA_NO_MMA=1`). The grid is the tile count of
    // whichever form the step takes.
    let thr = kb.sym(MMA_ROWS_SYMBOL);
    let thr = kb.let_("mma_rows", thr.max(Expr::i(1)));
    let big = kb.let_("big", (rows.clone() / thr.clone()).min(Expr::i(1)));
    let small = Expr::i(1) - big.clone();
    let gx = big.clone() * ((n_out + MN - 1) / MN) + small.clone() * blocks;
    let gy = big * ((rows.clone() + (MM - 1)) / MM) + small * chunks.clone();
    let (gx, gy) = (kb.let_("gx", gx), kb.let_("gy", gy));
    kb.for_("jb", 0, gx, LoopTag::GpuGrid(0), |kb, jb| {
        kb.for_("rc", 0, gy, LoopTag::GpuGrid(1), |kb, rc| {
            let halves = if glu.is_some() { 2 } else { 1 };
            let tl = Tiles {
                xs: kb.shared("xs", Ty::F32, MM * MS),
                ws: kb.shared("ws", Ty::F32, halves * MN * MS),
                inv: norm.map(|_| kb.shared("sinv", Ty::F32, MM)),
            };
            kb.for_("tid", 0, WARPS * 32, LoopTag::GpuBlock(0), |kb, tid| {
                let gemv = |kb: &mut KernelBuilder| {
                    let lane = kb.let_("lane", tid.clone() % 32);
                    let j = kb.let_("j", jb.clone() * WARPS + tid.clone() / 32);
                    let lo = kb.let_("rlo", rc.clone() * RC);
                    let hi = kb.let_("rhi", (lo.clone() + RC).min(rows.clone()));
                    // A warp per weight row, over the chunk's rows RG at a time.
                    let per_row = |kb: &mut KernelBuilder| {
                        // Warp-uniform: a warp's lanes all pass or all skip.
                        kb.if_(j.clone().lt(Expr::i(n_out)), |kb| {
                            let rfull =
                                kb.let_("rfull", lo.clone() + (hi.clone() - lo.clone()) / RG * RG);
                            let js = with_up(vec![j.clone()]);
                            kb.for_step(
                                "r0",
                                lo.clone(),
                                rfull.clone(),
                                RG,
                                LoopTag::Serial,
                                |kb, r0| g.pass(kb, &r0, RG, &js, &lane),
                            );
                            kb.for_("r0", rfull, hi.clone(), LoopTag::Serial, |kb, r0| {
                                g.pass(kb, &r0, 1, &js, &lane)
                            });
                        });
                    };
                    if n_out % WARPS == 0 && WARPS / JW == 2 && RC == RG * (WARPS / 2) {
                        // Prefill chunks and batched steps (16+ rows): the block's 8 weight
                        // rows x 16 activation rows as 2 x 4 warp tiles of JW weight rows x
                        // RG activation rows, so each activation load serves JW weight rows.
                        kb.if_else(
                            rows.clone().ge(Expr::i(RC)),
                            |kb| {
                                let wi = kb.let_("wi", tid.clone() / 32);
                                let jw = kb.let_("jw", jb.clone() * WARPS + (wi.clone() % 2) * JW);
                                let js = with_up((0..JW).map(|x| jw.clone() + x).collect());
                                let g0 = kb.let_("g0", lo.clone() + (wi / 2) * RG);
                                let ge = kb.let_("ge", (g0.clone() + RG).min(hi.clone()));
                                kb.if_else(
                                    (ge.clone() - g0.clone()).eq_(Expr::i(RG)),
                                    |kb| g.pass(kb, &g0, RG, &js, &lane),
                                    |kb| {
                                        kb.for_(
                                            "r0",
                                            g0.clone(),
                                            ge.clone(),
                                            LoopTag::Serial,
                                            |kb, r0| g.pass(kb, &r0, 1, &js, &lane),
                                        )
                                    },
                                );
                            },
                            per_row,
                        );
                    } else {
                        per_row(kb);
                    }
                };
                kb.if_else(
                    rows.clone().ge(thr.clone()),
                    |kb| g.mma_tile(kb, &tl, (&jb, &rc), &tid, &rows),
                    gemv,
                );
            });
        });
    });
    Ok(Some(Lowered::Kernel {
        kernel: kb.finish()?,
        packs: Vec::new(),
        consts: Vec::new(),
        in_place: Vec::new(),
    }))
}

/// The shared arrays of the tensor-core form: the activation tile (`MM` rows of 32),
/// the weight tile (`MN` rows of 32, twice with `glu`: gate rows then up rows), and
/// the RMS factors of the tile's rows (with `norm_eps`).
struct Tiles {
    xs: BufId,
    ws: BufId,
    inv: Option<BufId>,
}

struct Gemv {
    x: BufId,
    xd: DType,
    w: BufId,
    wd: DType,
    out: BufId,
    bias: Option<(BufId, DType)>,
    act: Option<Act>,
    /// The residual the store adds last (`residual = 1`), indexed as the output.
    res: Option<(BufId, DType)>,
    /// `glu`: `js` holds gate rows, then as many up rows; the store takes
    /// act(gate) · up of each pair.
    glu: Option<Act>,
    /// `glu_in`: x rows are `[gate | up]` of 2k, read as act(gate) · up.
    glu_in: Option<Act>,
    /// `norm_eps`: x rows are read through an RMS norm (its weight, dtype and
    /// epsilon); each warp takes its rows' factors first.
    norm: Option<(BufId, DType, f64)>,
    /// Output columns: `n`, or `n / 2` with `glu`.
    n_out: i64,
    k: i64,
}

impl Gemv {
    /// Elements per x row: k, or 2k with `glu_in`.
    fn xk(&self) -> i64 {
        if self.glu_in.is_some() {
            2 * self.k
        } else {
            self.k
        }
    }

    /// Element `at` of x as f32: with `glu_in`, act(x[at]) · x[at + k], the `glu`
    /// kernel's expression.
    fn load_x(&self, kb: &mut KernelBuilder, at: Expr) -> Expr {
        let f = Ty::F32;
        let v = load_elem(kb, self.x, self.xd, at.clone()).cast(f);
        match self.glu_in {
            None => v,
            Some(act) => {
                let u = load_elem(kb, self.x, self.xd, at + self.k).cast(f);
                let g = kb.let_("g", v);
                b(BinOp::Mul, activation(act, g, f), u)
            }
        }
    }

    /// Column `col` of the x row at `xr`: through the RMS norm (`(x · inv) · w`, as
    /// `rms_norm`) when the row's factor `inv` is given, else [`Self::load_x`].
    fn load_xn(&self, kb: &mut KernelBuilder, xr: &Expr, col: Expr, inv: Option<&Expr>) -> Expr {
        match (inv, self.norm) {
            (Some(inv), Some((nw, nd, _))) => {
                let f = Ty::F32;
                let x = load_elem(kb, self.x, self.xd, xr.clone() + col.clone()).cast(f);
                let w = load_elem(kb, nw, nd, col).cast(f);
                b(BinOp::Mul, b(BinOp::Mul, x, inv.clone()), w)
            }
            _ => self.load_x(kb, xr.clone() + col),
        }
    }

    /// The RMS factor `1 / sqrt(mean(x²) + eps)` of the x row at `xr`, in every lane
    /// of the warp (a lane's strided squares, then a butterfly).
    fn rms_inv(&self, kb: &mut KernelBuilder, xr: &Expr, lane: &Expr, eps: f64) -> Expr {
        let f = Ty::F32;
        let ss = kb.let_mut("ss", fconst(0.0, f));
        kb.for_step("p", lane.clone(), self.k, 32, LoopTag::Serial, |kb, p| {
            let v = load_elem(kb, self.x, self.xd, xr.clone() + p).cast(f);
            let v = kb.let_("v", v);
            kb.assign(
                ss,
                b(BinOp::Add, Expr::Var(ss), b(BinOp::Mul, v.clone(), v)),
            );
        });
        let tot = warp_sum(kb, Expr::Var(ss));
        let ms = b(BinOp::Div, tot, fconst(self.k as f64, f));
        let inv = b(
            BinOp::Div,
            fconst(1.0, f),
            Expr::un(UnOp::Sqrt, b(BinOp::Add, ms, fconst(eps, f))),
        );
        kb.let_("inv", inv)
    }

    /// Activation rows `r0..r0 + nr` against weight rows `js`, in one warp: each
    /// weight unit is decoded once for the `nr` rows, each activation element loaded
    /// once for the `js.len()` weight rows.
    fn pass(&self, kb: &mut KernelBuilder, r0: &Expr, nr: i64, js: &[Expr], lane: &Expr) {
        let f = Ty::F32;
        let k = self.k;
        let nj = js.len();
        // accs[j * nr + i]: weight row js[j], activation row r0 + i.
        let accs: Vec<_> = (0..nj as i64 * nr)
            .map(|_| kb.let_mut("acc", fconst(0.0, f)))
            .collect();
        let xrow: Vec<Expr> = (0..nr)
            .map(|i| kb.let_("xr", (r0.clone() + i) * self.xk()))
            .collect();
        let invs: Vec<Option<Expr>> = xrow
            .iter()
            .map(|xr| self.norm.map(|(_, _, eps)| self.rms_inv(kb, xr, lane, eps)))
            .collect();
        let fma = |a: Expr, x: Expr, y: Expr| b(BinOp::Add, a, b(BinOp::Mul, x, y));
        // Sparse q8_0 (2:4, 16:32, 24:32) takes the float path, each weight dequantized where it is
        // read (its codes' places depend on the mask).
        match quant_block(self.wd).filter(|_| self.wd.sparse_keep().is_none()) {
            None => {
                let wrows: Vec<Expr> = js.iter().map(|j| kb.let_("wr", j.clone() * k)).collect();
                kb.for_step("p", lane.clone(), k, 32, LoopTag::Serial, |kb, p| {
                    let wvs: Vec<Expr> = wrows
                        .iter()
                        .map(|wr| {
                            let wv = load_elem(kb, self.w, self.wd, wr.clone() + p.clone()).cast(f);
                            kb.let_("wv", wv)
                        })
                        .collect();
                    for (i, xr) in xrow.iter().enumerate() {
                        let xv = self.load_xn(kb, xr, p.clone(), invs[i].as_ref());
                        let xv = kb.let_("xv", xv);
                        for (jj, wv) in wvs.iter().enumerate() {
                            let a = accs[jj * nr as usize + i];
                            kb.assign(a, fma(Expr::Var(a), xv.clone(), wv.clone()));
                        }
                    }
                });
            }
            Some(_) => {
                let units = k / 32 * UPB;
                kb.for_step("u", lane.clone(), units, 32, LoopTag::Serial, |kb, u| {
                    let blk = kb.let_("blk", u.clone() / UPB);
                    let part = kb.let_("part", u % UPB);
                    let x0 = blk.clone() * 32;
                    // Per weight row: the block's scale, its minimum term and the
                    // unit's quants with their element index within the block.
                    let decoded: Vec<Decoded> =
                        js.iter().map(|j| self.unit(kb, j, &blk, &part)).collect();
                    for (i, xr) in xrow.iter().enumerate() {
                        let xb = kb.let_("xb", xr.clone() + x0.clone());
                        // The unit's activations (the same elements for every weight
                        // row) and their sum.
                        let mut sx = fconst(0.0, f);
                        let mut xs: Vec<Expr> = Vec::new();
                        for (_, e) in &decoded[0].2 {
                            let xv = match &invs[i] {
                                Some(inv) => {
                                    self.load_xn(kb, xr, x0.clone() + e.clone(), Some(inv))
                                }
                                None => self.load_x(kb, xb.clone() + e.clone()),
                            };
                            let xv = kb.let_("xv", xv);
                            sx = b(BinOp::Add, sx, xv.clone());
                            xs.push(xv);
                        }
                        let sx = kb.let_("sx", sx);
                        for (jj, (d, m, elems)) in decoded.iter().enumerate() {
                            let mut qx = fconst(0.0, f);
                            for ((q, _), xv) in elems.iter().zip(&xs) {
                                qx = fma(qx, q.clone(), xv.clone());
                            }
                            let a = accs[jj * nr as usize + i];
                            let mut v = fma(Expr::Var(a), d.clone(), qx);
                            if let Some(m) = m {
                                v = fma(v, m.clone(), sx.clone());
                            }
                            kb.assign(a, v);
                        }
                    }
                });
            }
        }
        let sums: Vec<Expr> = accs.iter().map(|a| warp_sum(kb, Expr::Var(*a))).collect();
        kb.if_(lane.clone().eq_(Expr::i(0)), |kb| {
            // With `glu` the first half of `js` are the output columns.
            let cols = if self.glu.is_some() { nj / 2 } else { nj };
            for (ai, s) in sums.iter().enumerate().take(cols * nr as usize) {
                let (jx, i) = (ai / nr as usize, ai % nr as usize);
                let up = self
                    .glu
                    .map(|_| sums[(jx + cols) * nr as usize + i].clone());
                self.store(kb, &(r0.clone() + i as i64), &js[jx], s.clone(), up);
            }
        });
    }
}

/// One weight row's unit, decoded: the block's scale, its minimum term (Q4_1, Q4_0),
/// and each quant with its element index within the block.
type Decoded = (Expr, Option<Expr>, Vec<(Expr, Expr)>);

impl Gemv {
    /// The tensor-core form: activation rows `rc·MM ..` against output columns
    /// `jb·MN ..`, 8 warps as 4 (rows) x 2 (columns), each 16 rows x 32 columns as four
    /// `mma.m16n8k8` accumulators (four more for the up rows with `glu`). Per 32 elements
    /// of k, the block stages the activation tile (through the norm or `glu_in`) and
    /// the weight tile, each thread 8 elements of a row (a weight unit, dequantized
    /// in registers as the GEMV does), then each warp runs 4 k-steps of 8 from shared
    /// memory. Tiles past the rows or columns are zero and never stored.
    fn mma_tile(
        &self,
        kb: &mut KernelBuilder,
        tl: &Tiles,
        (jb, rc): (&Expr, &Expr),
        tid: &Expr,
        rows: &Expr,
    ) {
        let f = Ty::F32;
        let k = self.k;
        let (xs, ws) = (tl.xs, tl.ws);
        let lane = kb.let_("lane", tid.clone() % 32);
        let wi = kb.let_("wi", tid.clone() / 32);
        let m0 = kb.let_("m0", rc.clone() * MM);
        let n0 = kb.let_("n0", jb.clone() * MN);
        let g = kb.let_("g", lane.clone() / 4);
        let t = kb.let_("t", lane.clone() % 4);
        let wm = kb.let_("wm", (wi.clone() % 4) * 16);
        let wn = kb.let_("wn", (wi.clone() / 4) * 32);
        // The RMS factors of the tile's rows, 8 rows a warp.
        if let (Some(sinv), Some((_, _, eps))) = (tl.inv, self.norm) {
            for rr in 0..MM / WARPS {
                let tr = kb.let_("tr", wi.clone() * (MM / WARPS) + rr);
                let row = kb.let_("nrow", m0.clone() + tr.clone());
                kb.if_(row.clone().lt(rows.clone()), |kb| {
                    let xr = kb.let_("xr", row * self.xk());
                    let inv = self.rms_inv(kb, &xr, &lane, eps);
                    kb.if_(lane.clone().eq_(Expr::i(0)), |kb| kb.store(sinv, tr, inv));
                });
            }
            kb.barrier();
        }
        let zero = || fconst(0.0, f);
        let accs = |kb: &mut KernelBuilder| -> Vec<[crate::loopir::VarId; 4]> {
            (0..4)
                .map(|_| std::array::from_fn(|_| kb.let_mut("acc", zero())))
                .collect()
        };
        let acc = accs(kb);
        let accu = if self.glu.is_some() {
            accs(kb)
        } else {
            Vec::new()
        };
        // This thread's share of the staging: row `sr` of each tile, elements
        // `sp·8 .. sp·8 + 8` (a weight unit) of the 32.
        // Stores `value` (column `col` of k) at `at` of a shared tile, or zero past k.
        let stage = |kb: &mut KernelBuilder,
                     (buf, at): (BufId, Expr),
                     col: &Expr,
                     value: &mut dyn FnMut(&mut KernelBuilder) -> Expr| {
            if k % 32 == 0 {
                let v = value(kb);
                kb.store(buf, at, v);
            } else {
                kb.if_else(
                    col.clone().lt(Expr::i(k)),
                    |kb| {
                        let v = value(kb);
                        kb.store(buf, at.clone(), v);
                    },
                    |kb| kb.store(buf, at.clone(), zero()),
                );
            }
        };
        let sr = kb.let_("sr", tid.clone() / 4);
        let sp = kb.let_("sp", tid.clone() % 4);
        let quant = quant_block(self.wd).filter(|_| self.wd.sparse_keep().is_none());
        kb.for_("kc", 0, (k + 31) / 32, LoopTag::Serial, |kb, kc| {
            let col0 = kb.let_("col0", kc.clone() * 32 + sp.clone() * 8);
            // Activations.
            let xrow = kb.let_("xrow", m0.clone() + sr.clone());
            let xo = kb.let_("xo", sr.clone() * MS + sp.clone() * 8);
            kb.if_else(
                xrow.clone().lt(rows.clone()),
                |kb| {
                    let xr = kb.let_("xr", xrow.clone() * self.xk());
                    let inv = tl.inv.map(|si| kb.let_("inv", Expr::load(si, sr.clone())));
                    for e in 0..8 {
                        let col = col0.clone() + e;
                        stage(kb, (xs, xo.clone() + e), &col, &mut |kb| {
                            self.load_xn(kb, &xr, col.clone(), inv.as_ref())
                        });
                    }
                },
                |kb| {
                    for e in 0..8 {
                        kb.store(xs, xo.clone() + e, zero());
                    }
                },
            );
            // Weights: gate (or only) rows, then the up rows.
            let halves: &[i64] = if self.glu.is_some() { &[0, 1] } else { &[0] };
            for &h in halves {
                let j = kb.let_("wj", n0.clone() + sr.clone());
                let so = kb.let_("so", (sr.clone() + h * MN) * MS);
                kb.if_else(
                    j.clone().lt(Expr::i(self.n_out)),
                    |kb| {
                        let wj = kb.let_("wrow", j.clone() + h * self.n_out);
                        match quant {
                            Some(_) => {
                                let (d, m, elems) = self.unit(kb, &wj, &kc, &sp);
                                for (q, e) in elems {
                                    let mut v = b(BinOp::Mul, d.clone(), q);
                                    if let Some(m) = &m {
                                        v = b(BinOp::Add, v, m.clone());
                                    }
                                    kb.store(ws, so.clone() + e, v);
                                }
                            }
                            None => {
                                for e in 0..8 {
                                    let col = col0.clone() + e;
                                    let at = so.clone() + sp.clone() * 8 + e;
                                    stage(kb, (ws, at), &col, &mut |kb| {
                                        let i = wj.clone() * k + col.clone();
                                        load_elem(kb, self.w, self.wd, i).cast(f)
                                    });
                                }
                            }
                        }
                    },
                    |kb| {
                        for e in 0..8 {
                            kb.store(ws, so.clone() + sp.clone() * 8 + e, zero());
                        }
                    },
                );
            }
            kb.barrier();
            for kk in 0..4 {
                let c = kb.let_("fc", t.clone() + kk * 8);
                let xa = |kb: &mut KernelBuilder, r: Expr, c: Expr| {
                    kb.let_("fa", Expr::load(xs, r * MS + c))
                };
                let ra = wm.clone() + g.clone();
                let a = [
                    xa(kb, ra.clone(), c.clone()),
                    xa(kb, ra.clone() + 8, c.clone()),
                    xa(kb, ra.clone(), c.clone() + 4),
                    xa(kb, ra + 8, c.clone() + 4),
                ];
                for s in 0..4 {
                    let cb = kb.let_("cb", wn.clone() + s * 8 + g.clone());
                    let mut sets = vec![(&acc[s as usize], 0)];
                    if self.glu.is_some() {
                        sets.push((&accu[s as usize], MN));
                    }
                    for (dv, off) in sets {
                        let wrow = (cb.clone() + off) * MS;
                        let bv = [
                            kb.let_("fb", Expr::load(ws, wrow.clone() + c.clone())),
                            kb.let_("fb", Expr::load(ws, wrow + c.clone() + 4)),
                        ];
                        kb.mma(*dv, a.clone(), bv, dv.map(Expr::Var));
                    }
                }
            }
            kb.barrier();
        });
        for (s, sacc) in acc.iter().enumerate() {
            for i in 0..4i64 {
                let row = kb.let_("orow", m0.clone() + wm.clone() + g.clone() + 8 * (i / 2));
                let col = kb.let_(
                    "ocol",
                    n0.clone() + wn.clone() + s as i64 * 8 + t.clone() * 2 + i % 2,
                );
                let ok = row
                    .clone()
                    .lt(rows.clone())
                    .and(col.clone().lt(Expr::i(self.n_out)));
                let sum = Expr::Var(sacc[i as usize]);
                let up = accu.get(s).map(|u| Expr::Var(u[i as usize]));
                kb.if_(ok, |kb| self.store(kb, &row, &col, sum, up));
            }
        }
    }

    /// Output column `j` of row `row` from its dot product `s` (and, with `glu`, the
    /// up row's `up`): bias, activation, glu, residual, store.
    fn store(&self, kb: &mut KernelBuilder, row: &Expr, j: &Expr, s: Expr, up: Option<Expr>) {
        let f = Ty::F32;
        let mut v = s;
        if let Some((bb, bd)) = self.bias {
            v = b(BinOp::Add, v, load_elem(kb, bb, bd, j.clone()).cast(f));
        }
        if let Some(act) = self.act {
            let pre = kb.let_("pre", v);
            v = activation(act, pre, f);
        }
        if let (Some(act), Some(mut u)) = (self.glu, up) {
            if let Some((bb, bd)) = self.bias {
                let at = j.clone() + self.n_out;
                u = b(BinOp::Add, u, load_elem(kb, bb, bd, at).cast(f));
            }
            let g = kb.let_("g", v);
            v = b(BinOp::Mul, activation(act, g, f), u);
        }
        let o = row.clone() * self.n_out + j.clone();
        if let Some((rb, rd)) = self.res {
            v = b(BinOp::Add, v, load_elem(kb, rb, rd, o.clone()).cast(f));
        }
        let v = to_storage(kb, self.out, v);
        kb.store(self.out, o, v);
    }

    /// Weight row `j`'s unit `part` of 32-element block `blk`, decoded: the block's
    /// scale, its minimum term and 8 quants with their element index within the
    /// block (`value = d q + m`). Block formats only.
    fn unit(&self, kb: &mut KernelBuilder, j: &Expr, blk: &Expr, part: &Expr) -> Decoded {
        let f = Ty::F32;
        let (bl, bb) = quant_block(self.wd).unwrap_or((32, 0));
        // Blocks of 32; an int4 group's `sub` blocks share its scale (and
        // minimum), their nibbles 16 bytes apart after it.
        let sub = bl / 32;
        let rowbytes = self.k / bl * bb;
        // The minimum: stored after d (Q4_1, Q5_1, the `_1` groups), or `k d`
        // (Q4_0 and its groups: -8, Q5_0: -16).
        let min_kind = match self.wd {
            DType::Q4_1 | DType::Q4_1G64 | DType::Q4_1G128 | DType::Q5_1 => Some(None),
            DType::Q4_0 | DType::Q4_0G64 | DType::Q4_0G128 => Some(Some(-8.0)),
            DType::Q5_0 => Some(Some(-16.0)),
            _ => None,
        };
        // Q5's fifth bits: a little-endian u32 after d (and m).
        let qh_at = match self.wd {
            DType::Q5_0 => Some(2),
            DType::Q5_1 => Some(4),
            _ => None,
        };
        let base = if sub == 1 {
            kb.let_("qb", j.clone() * rowbytes + blk.clone() * bb)
        } else {
            kb.let_("qb", j.clone() * rowbytes + blk.clone() / sub * bb)
        };
        if matches!(
            self.wd,
            DType::Q4K
                | DType::Q5K
                | DType::Q6K
                | DType::Q3K
                | DType::Q2K
                | DType::IQ4NL
                | DType::IQ4XS
        ) {
            return self.k_unit(kb, &base, blk, part);
        }
        let f16 = |off: Expr| Expr::LoadRaw(self.w, Box::new(off), Ty::F16).cast(f);
        let d = kb.let_("d", f16(base.clone()));
        let m = match min_kind {
            Some(None) => Some(kb.let_("m", f16(base.clone() + 2))),
            Some(Some(k)) => Some(kb.let_("m", b(BinOp::Mul, d.clone(), fconst(k, f)))),
            None => None,
        };
        // The fifth bits of quants 0..16 and 16..32 (2-byte aligned in
        // Q5_0's 22-byte blocks).
        let qh = qh_at.map(|h| {
            let mut half = |o: i64| {
                let v = Expr::LoadRaw(self.w, Box::new(base.clone() + h + o), Ty::U16);
                kb.let_("qh", v)
            };
            (half(0), half(2))
        });
        let mut elems: Vec<(Expr, Expr)> = Vec::new();
        // The unit's quant bytes in as few loads as their alignment
        // allows: Q4_1 and Q5_1 blocks (20, 24 bytes) keep them 4-byte
        // aligned, Q4_0, Q5_0 and Q8_0 (18, 22, 34) 2-byte aligned.
        let qs = self.wd.qs_offset();
        let (nbytes, word) = match self.wd {
            DType::Q8_0 => (8, Ty::U16),
            DType::Q4_1 | DType::Q4_1G64 | DType::Q4_1G128 | DType::Q5_1 => (4, Ty::U32),
            _ => (4, Ty::U16),
        };
        let qs = if sub == 1 {
            base.clone() + qs
        } else {
            base.clone() + qs + blk.clone() % sub * 16
        };
        let at0 = kb.let_("qa", qs + part.clone() * nbytes);
        let bytes = self.weight_bytes(kb, at0, nbytes, word);
        for (e, byte) in bytes.into_iter().enumerate() {
            let e = e as i64;
            if self.wd == DType::Q8_0 {
                let q = byte.cast(Ty::I8).cast(f);
                elems.push((kb.let_("q", q), part.clone() * 8 + e));
            } else {
                let mut lo = b(BinOp::And, byte.clone(), Expr::Int(15, Ty::U8)).cast(f);
                let mut hi = b(BinOp::Shr, byte, Expr::Int(4, Ty::U8)).cast(f);
                if let Some((h0, h1)) = &qh {
                    // Bit `i` of each half: 16 more.
                    let i = (part.clone() * 4 + e).cast(Ty::U16);
                    let bit = |h: &Expr| {
                        let v = b(BinOp::Shr, h.clone(), i.clone());
                        let v = b(BinOp::And, v, Expr::Int(1, Ty::U16)).cast(f);
                        b(BinOp::Mul, v, fconst(16.0, f))
                    };
                    lo = b(BinOp::Add, lo, bit(h0));
                    hi = b(BinOp::Add, hi, bit(h1));
                }
                elems.push((kb.let_("lo", lo), part.clone() * 4 + e));
                elems.push((kb.let_("hi", hi), part.clone() * 4 + e + 16));
            }
        }
        (d, m, elems)
    }

    /// `n` bytes (u8 values) from byte `at` of the weight, in `word` loads (`at` a
    /// multiple of the word's size).
    fn weight_bytes(&self, kb: &mut KernelBuilder, at: Expr, n: i64, word: Ty) -> Vec<Expr> {
        let wb = word.bytes() as i64;
        let mut out = Vec::new();
        for w in 0..n / wb {
            let v = Expr::LoadRaw(self.w, Box::new(at.clone() + w * wb), word);
            let v = kb.let_("qw", v);
            for by in 0..wb {
                let sh = Expr::bin(BinOp::Shr, v.clone(), Expr::Int(8 * by, word));
                let byte = Expr::bin(BinOp::And, sh, Expr::Int(255, word)).cast(Ty::U8);
                out.push(kb.let_("qv", byte));
            }
        }
        out
    }

    /// A K-quant or IQ4 unit (`part` of block `blk`) of the (super-)block at byte
    /// `base`, decoded as `templates::dequant_q45k` / `dequant_q6k` / `dequant_q3k` /
    /// `dequant_iq4` read them:
    /// - Q4_K/Q5_K: `D · sc` and `-(Dmin · mn)` of sub-block `blk mod 8` (the
    ///   branch-free 6-bit decode), its 8 nibbles (Q5_K: with the fifth bit, bit `sj`
    ///   of the unit's `qh` bytes);
    /// - Q6_K: `D · sc` of the unit's 16-element half, its quants `q - 32` from `ql`
    ///   and `qh`;
    /// - Q3_K: `D · (sc - 32)` of the unit's 16-element half (the 6-bit scale from a
    ///   nibble and two high bits), its quants `q - 4 + 4 hmask`;
    /// - Q2_K: `D · sc` and `-(Dmin · mn)` of the unit's 16-element half (one byte's
    ///   two nibbles), its 2-bit quants;
    /// - IQ4_NL/IQ4_XS: `d` (IQ4_XS: `D · (ls - 32)` of sub-block `blk mod 8`) and the
    ///   table levels of 4 bytes' nibbles, as Q4_0's unit (elements `4 part + e` and
    ///   `4 part + e + 16`).
    fn k_unit(&self, kb: &mut KernelBuilder, base: &Expr, blk: &Expr, part: &Expr) -> Decoded {
        use BinOp::{And, Mul, Or, Shl, Shr, Sub};
        let f = Ty::F32;
        let u8c = |v: i64| Expr::Int(v, Ty::U8);
        let f16 = |off: Expr| Expr::LoadRaw(self.w, Box::new(off), Ty::F16).cast(f);
        let byte = |off: Expr| Expr::LoadRaw(self.w, Box::new(off), Ty::U8);
        let sj = kb.let_("sj", blk.clone() % 8);
        let mut elems = Vec::new();
        if matches!(self.wd, DType::IQ4NL | DType::IQ4XS) {
            let (d, qs, word) = if self.wd == DType::IQ4XS {
                // 136-byte super-blocks: the sub-block's 16 bytes 4-byte aligned.
                let sl = b(
                    Shr,
                    byte(base.clone() + 4 + sj.clone() / 2),
                    (sj.clone() % 2 * 4).cast(Ty::U8),
                );
                let sl = b(And, sl, u8c(15));
                let sh = Expr::LoadRaw(self.w, Box::new(base.clone() + 2), Ty::U16);
                let sh = b(
                    And,
                    b(Shr, sh, (sj.clone() * 2).cast(Ty::U16)),
                    Expr::Int(3, Ty::U16),
                );
                let ls = b(Or, sl, b(Shl, sh.cast(Ty::U8), u8c(4)));
                let ls = b(Sub, ls.cast(f), fconst(32.0, f));
                let d = kb.let_("d", b(Mul, f16(base.clone()), ls));
                (d, base.clone() + 8 + sj.clone() * 16, Ty::U32)
            } else {
                // 18-byte blocks: 2-byte aligned.
                (kb.let_("d", f16(base.clone())), base.clone() + 2, Ty::U16)
            };
            let at = kb.let_("qa", qs + part.clone() * 4);
            for (e, v) in self.weight_bytes(kb, at, 4, word).into_iter().enumerate() {
                let e = e as i64;
                let lo = iq4_level(b(And, v.clone(), u8c(15)));
                let hi = iq4_level(b(Shr, v, u8c(4)));
                elems.push((kb.let_("lo", lo), part.clone() * 4 + e));
                elems.push((kb.let_("hi", hi), part.clone() * 4 + e + 16));
            }
            return (d, None, elems);
        }
        if matches!(self.wd, DType::Q4K | DType::Q5K) {
            let five = self.wd == DType::Q5K;
            let (sc, mn) = k4_scale_min(self.w, base, &sj);
            let d = kb.let_("d", b(Mul, f16(base.clone()), sc.cast(f)));
            let m = b(Mul, f16(base.clone() + 2), mn.cast(f));
            let m = kb.let_("m", Expr::un(UnOp::Neg, m));
            // Sub-block pairs share 32 bytes: low nibbles for the even one. 144- and
            // 176-byte super-blocks keep the unit's 8 bytes 4-byte aligned.
            let qs = if five { 48 } else { 16 };
            let at = base.clone() + qs + sj.clone() / 2 * 32 + part.clone() * 8;
            let at = kb.let_("qa", at);
            let shift = kb.let_("qsh", (sj.clone() % 2 * 4).cast(Ty::U8));
            let his = if five {
                let at = kb.let_("qha", base.clone() + 16 + part.clone() * 8);
                let hs = kb.let_("hsh", sj.clone().cast(Ty::U8));
                self.weight_bytes(kb, at, 8, Ty::U32)
                    .into_iter()
                    .map(|h| Some(b(Shl, b(And, b(Shr, h, hs.clone()), u8c(1)), u8c(4))))
                    .collect()
            } else {
                vec![None; 8]
            };
            for (e, (v, h)) in self
                .weight_bytes(kb, at, 8, Ty::U32)
                .into_iter()
                .zip(his)
                .enumerate()
            {
                let mut q = b(And, b(Shr, v, shift.clone()), u8c(15));
                if let Some(h) = h {
                    q = b(Or, q, h);
                }
                elems.push((kb.let_("q", q.cast(f)), part.clone() * 8 + e as i64));
            }
            return (d, Some(m), elems);
        }
        if self.wd == DType::Q2K {
            // Sub-block t = sj: half h = t / 4, shift 2 (t mod 4) in the half's 32 `qs`
            // bytes; the scale byte 2 t + part / 2. 84-byte super-blocks keep the
            // unit's 8 bytes 4-byte aligned.
            let s = kb.let_("s2", byte(base.clone() + sj.clone() * 2 + part.clone() / 2));
            let sc = b(And, s.clone(), u8c(15)).cast(f);
            let mn = b(Shr, s, u8c(4)).cast(f);
            let d = kb.let_("d", b(Mul, f16(base.clone() + 80), sc));
            let m = b(Mul, f16(base.clone() + 82), mn);
            let m = kb.let_("m", Expr::un(UnOp::Neg, m));
            let qa = kb.let_(
                "qa",
                base.clone() + 16 + sj.clone() / 4 * 32 + part.clone() * 8,
            );
            let qsh = kb.let_("qsh", (sj % 4 * 2).cast(Ty::U8));
            for (e, q) in self
                .weight_bytes(kb, qa, 8, Ty::U32)
                .into_iter()
                .enumerate()
            {
                let q = b(And, b(Shr, q, qsh.clone()), u8c(3));
                elems.push((kb.let_("q", q.cast(f)), part.clone() * 8 + e as i64));
            }
            return (d, Some(m), elems);
        }
        if self.wd == DType::Q3K {
            // Sub-block t = sj: half h = t / 4, shift 2 (t mod 4) in the half's 32 `qs`
            // bytes, bit t of the `hmask` bytes. 110-byte super-blocks: 2-byte aligned.
            let s = kb.let_("s3", sj.clone() * 2 + part.clone() / 2);
            let lo = b(
                Shr,
                byte(base.clone() + 96 + s.clone() % 8),
                (s.clone() / 8 * 4).cast(Ty::U8),
            );
            let lo = b(And, lo, u8c(15));
            let hi = b(
                Shr,
                byte(base.clone() + 104 + s.clone() % 4),
                (s / 4 * 2).cast(Ty::U8),
            );
            let hi = b(And, hi, u8c(3));
            let sc = b(Sub, b(Or, lo, b(Shl, hi, u8c(4))).cast(f), fconst(32.0, f));
            let d = kb.let_("d", b(Mul, f16(base.clone() + 108), sc));
            let qa = kb.let_(
                "qa",
                base.clone() + 32 + sj.clone() / 4 * 32 + part.clone() * 8,
            );
            let ha = kb.let_("qha", base.clone() + part.clone() * 8);
            let qsh = kb.let_("qsh", (sj.clone() % 4 * 2).cast(Ty::U8));
            let hsh = kb.let_("hsh", sj.clone().cast(Ty::U8));
            let qs = self.weight_bytes(kb, qa, 8, Ty::U16);
            let hm = self.weight_bytes(kb, ha, 8, Ty::U16);
            for (e, (q, h)) in qs.into_iter().zip(hm).enumerate() {
                let q = b(And, b(Shr, q, qsh.clone()), u8c(3));
                let h = b(And, b(Shr, h, hsh.clone()), u8c(1));
                let q = b(Sub, b(Or, q, b(Shl, h, u8c(2))).cast(f), fconst(4.0, f));
                elems.push((kb.let_("q", q), part.clone() * 8 + e as i64));
            }
            return (d, None, elems);
        }
        // Q6_K: block sj is half h = sj / 4 at quarter c = sj mod 4; the unit's 8
        // elements lie in one 16-element half (scale 8 h + 2 c + part / 2). 210-byte
        // super-blocks keep its bytes 2-byte aligned.
        let h = kb.let_("h", sj.clone() / 4);
        let c = kb.let_("c", sj % 4);
        let sc = Expr::LoadRaw(
            self.w,
            Box::new(base.clone() + 192 + h.clone() * 8 + c.clone() * 2 + part.clone() / 2),
            Ty::I8,
        );
        let d = kb.let_("d", b(Mul, f16(base.clone() + 208), sc.cast(f)));
        let ql = base.clone() + h.clone() * 64 + c.clone() % 2 * 32 + part.clone() * 8;
        let ql = kb.let_("ql", ql);
        let qh = kb.let_("qh", base.clone() + 128 + h * 32 + part.clone() * 8);
        let lsh = kb.let_("lsh", (c.clone() / 2 * 4).cast(Ty::U8));
        let hsh = kb.let_("hsh", (c * 2).cast(Ty::U8));
        let lo = self.weight_bytes(kb, ql, 8, Ty::U16);
        let hi = self.weight_bytes(kb, qh, 8, Ty::U16);
        for (e, (l, hb)) in lo.into_iter().zip(hi).enumerate() {
            let l = b(And, b(Shr, l, lsh.clone()), u8c(15));
            let hb = b(And, b(Shr, hb, hsh.clone()), u8c(3));
            let q = b(Or, l, b(Shl, hb, u8c(4))).cast(f);
            let q = b(Sub, q, fconst(32.0, f));
            elems.push((kb.let_("q", q), part.clone() * 8 + e as i64));
        }
        (d, None, elems)
    }
}

/// Offsets of a GGUF block's quants.
trait QsOffset {
    fn qs_offset(self) -> i64;
}

impl QsOffset for DType {
    fn qs_offset(self) -> i64 {
        match self {
            DType::Q4_1 | DType::Q4_1G64 | DType::Q4_1G128 => 4,
            DType::Q5_0 => 6,
            DType::Q5_1 => 8,
            _ => 2,
        }
    }
}
