//! Matrix products. `linear` (x · wᵀ + b, w `[n, k]` as stored: f32/f16/bf16 or GGUF
//! Q8_0/Q4_0/Q4_1/Q5_0/Q5_1, K-quant and IQ4 blocks dequantized in the inner loop) is the LLM's hot kernel: it is
//! register-tiled (MR rows of x by NR rows of w share every load of the k loop, so
//! decode's single row reads each weight once and prefill reuses it MR times), the
//! weight rows are split across threads, and the k loop is vectorized. `matmul`
//! (numpy semantics: batch broadcasting, 1-D promotion) is a plain batched product
//! that accumulates rows of the output with a vectorized axpy.

use super::pack::{tile16_packs, OperandPack, Pack, PANEL};
use super::{
    compute_ty, fconst, gpu_mapping, load_elem, loop_nest_par, operand, quant_block, result, setup,
    storage_ty, strides, to_storage, work_estimate, worth_threads, TResult,
};
use crate::builder::KernelBuilder;
use crate::loopir::{
    BinOp, BufId, Expr, FTile, Kernel, LoopTag, QDot, QFmt, QTile, QUnpack, Ty, UnOp, VarId,
};
use llmc_ir::ops::fused_gemm::Act;
use llmc_ir::{DType, Dim, Node, TensorType};

/// Rows of x per register tile.
const MR: usize = 2;
/// Rows of w (output columns) per register tile.
const NR: usize = 4;

/// `linear(x, w[, b])` or `linear_act` (the same kernel, its store applying the
/// activation epilogue), with the weight layout it wants.
pub(crate) fn linear(
    node: &Node,
    ins: &[&TensorType],
    outs: &[&TensorType],
    name: &str,
) -> TResult<(Kernel, Vec<OperandPack>)> {
    let x = operand(ins, 0, "x")?;
    let w = operand(ins, 1, "w")?;
    result(outs, 0)?;
    let [n, k] = &w.shape.0[..] else {
        return Err(format!("weight w must be [n, k], got {}", w.shape));
    };
    let (n, k) = match (n.as_const(), k.as_const()) {
        (Some(n), Some(k)) => (n, k),
        _ => return Err(format!("weight w {} must have constant dims", w.shape)),
    };
    if let Some((bl, _)) = quant_block(w.dtype) {
        if k % bl != 0 {
            return Err(format!(
                "k = {k} is not a whole number of {} blocks",
                w.dtype
            ));
        }
    }
    let t = compute_ty(x.dtype)?;
    if t != Ty::F32 && t != Ty::F64 {
        return Err(format!("x must be a float tensor, got {}", x.dtype));
    }
    if qfmt(w.dtype).is_some()
        && !matches!(w.dtype, DType::Q8_0 | DType::Q4_0 | DType::Q4_1)
        && t != Ty::F32
    {
        return Err(format!(
            "{} weights need f32 activations, got {}",
            w.dtype, x.dtype
        ));
    }
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
    let bias = ib_main
        .get(2)
        .map(|&b| (b, operand(ins, 2, "b").map(|t| t.dtype)));
    let bias = match bias {
        Some((b, Ok(d))) => Some((b, d)),
        Some((_, Err(e))) => return Err(e),
        None => None,
    };
    let act = match node.op {
        llmc_ir::Op::LinearAct => Some(Act::of_attrs(&node.attrs)?),
        _ => None,
    };
    // `glu`: the store takes act(gate) · up of output column j from weight rows j and
    // n / 2 + j; float weights only (the fusing pass asks for nothing else).
    let glu = match llmc_ir::ops::linalg::glu_act(&node.attrs)? {
        None => None,
        Some(name) => {
            if quant_block(w.dtype).is_some() || n % 2 != 0 {
                return Err(format!(
                    "attribute `glu` needs float weights with an even n, got {} [{n}, {k}]",
                    w.dtype
                ));
            }
            Some(Act::from_name(name).ok_or_else(|| format!("unknown activation {name:?}"))?)
        }
    };
    let n_out = if glu.is_some() { n / 2 } else { n };
    // `glu_in`: x is [.., 2k] and every read of it takes act(x[c]) · x[k + c].
    let glu_in = match llmc_ir::ops::linalg::glu_in_act(&node.attrs)? {
        None => None,
        Some(name) => {
            Some(Act::from_name(name).ok_or_else(|| format!("unknown activation {name:?}"))?)
        }
    };
    if norm.is_some() && (qfmt(w.dtype).is_none() || t != Ty::F32) {
        return Err(format!(
            "attribute `norm_eps` needs block-quantized weights and f32 activations, got {} and {}",
            w.dtype, x.dtype
        ));
    }
    let ctx = Lin {
        act,
        glu,
        n_out,
        glu_in,
        norm,
        xk: if glu_in.is_some() { 2 * k } else { k },
        res,
        x: ib[0],
        xd: x.dtype,
        w: ib[1],
        wd: w.dtype,
        out: ob[0],
        bias,
        k,
        n,
        t,
        tile16: false,
        act8: super::attr_int(node, "act_bits")? == Some(8),
        act_amax: match node.attrs.get("act_amax") {
            None => None,
            Some(llmc_ir::Attr::Floats(v)) if v.len() as i64 * 32 == k => Some(v.clone()),
            Some(other) => {
                return Err(format!(
                    "act_amax must hold one float per block of 32 of k = {k}, got {other:?}"
                ))
            }
        },
    };
    let full = ctx.n_out / NR as i64;
    let tail = ctx.n_out % NR as i64;
    // All rows against weight rows j0..j0+ncols of `lin` (whose row `wj0` is j0).
    let tiles = |kb: &mut KernelBuilder, lin: &Lin, j0: &Expr, wj0: &Expr, ncols: usize| {
        // Full MR-row tiles, then the remaining rows one at a time.
        let rfull = kb.let_("rfull", rows.clone() / MR as i64 * MR as i64);
        kb.for_step(
            "r",
            0,
            rfull.clone(),
            MR as i64,
            LoopTag::Serial,
            |kb, r| lin.tile(kb, &r, MR, j0, wj0, ncols),
        );
        kb.for_("r", rfull, rows.clone(), LoopTag::Serial, |kb, r| {
            lin.tile(kb, &r, 1, j0, wj0, ncols)
        });
    };
    let body = |kb: &mut KernelBuilder, j0: Expr, ncols: usize| {
        if quant_block(ctx.wd).is_none() {
            return tiles(kb, &ctx, &j0, &j0, ncols);
        }
        // Many rows (prefill): dequantize these weight rows once into a local f32
        // block and run the f32 tiles from it; few rows (decode): dequantize in the
        // inner loop, reading each weight byte once.
        kb.if_else(
            rows.clone().ge(Expr::i(PACK_MIN_ROWS)),
            |kb| {
                let wl = kb.local("wl", ctx.t, ncols as i64 * ctx.k);
                ctx.dequant_rows(kb, &j0, ncols, wl);
                let local = Lin {
                    w: wl,
                    wd: DType::F32,
                    ..ctx.clone()
                };
                tiles(kb, &local, &j0, &Expr::i(0), ncols);
            },
            |kb| tiles(kb, &ctx, &j0, &j0, ncols),
        );
    };
    let tiled = |kb: &mut KernelBuilder| {
        if full > 0 {
            let tag = if full > 1 {
                LoopTag::Parallel
            } else {
                LoopTag::Serial
            };
            kb.for_("jb", 0, full, tag, |kb, jb| {
                let j0 = kb.let_("j0", jb * NR as i64);
                body(kb, j0, NR);
            });
        }
        if tail > 0 {
            body(kb, Expr::i(full * NR as i64), tail as usize);
        }
    };
    let panels = !gpu_mapping()
        && matches!(ctx.wd, DType::F32 | DType::F16 | DType::BF16)
        && x.dtype == DType::F32
        && n > 0
        && n % PANEL as i64 == 0
        && (ctx.glu.is_none() || ctx.n_out % (PANEL / 2) as i64 == 0)
        && ctx.glu_in.is_none();
    let tile16 = !gpu_mapping()
        && t == Ty::F32
        && tile16_packs(ctx.wd, n as usize, k as usize)
        && tile_bytes(k / 32) <= TILE_MAX_BYTES;
    match qfmt(ctx.wd) {
        // f32 activations against GGUF Q8_0/Q4_0/Q4_1 blocks packed by 16 rows: every
        // row in the tile form, decode included.
        Some(fmt) if tile16 => {
            let ctx = Lin { tile16, ..ctx };
            ctx.int8_rows(&mut kb, &rows, fmt);
            let pack = OperandPack {
                operand: 1,
                pack: Pack::Tile16,
            };
            return Ok((kb.finish()?, vec![pack]));
        }
        // f32 activations against GGUF blocks: integer dot products.
        Some(fmt) if t == Ty::F32 => ctx.int8_rows(&mut kb, &rows, fmt),
        // Float weights packed in panels of 32 rows: outer products.
        _ if panels => {
            ctx.panel_rows(&mut kb, &rows);
            let pack = OperandPack {
                operand: 1,
                pack: if ctx.glu.is_some() {
                    Pack::Panels32Glu
                } else {
                    Pack::Panels32
                },
            };
            return Ok((kb.finish()?, vec![pack]));
        }
        _ => tiled(&mut kb),
    }
    Ok((kb.finish()?, Vec::new()))
}

/// `act(g) · u`, the `glu` kernel's expression (`elementwise::glu`), for a linear whose
/// store takes the GLU (`glu`).
fn glu_of(kb: &mut KernelBuilder, act: Act, g: Expr, u: Expr, t: Ty) -> Expr {
    let g = kb.let_("g", g);
    Expr::bin(BinOp::Mul, super::elementwise::activation(act, g, t), u)
}

/// The [`QFmt`] of a GGUF block dtype.
fn qfmt(d: DType) -> Option<QFmt> {
    match d {
        DType::Q8_0 => Some(QFmt::Q8_0),
        DType::Q4_0 => Some(QFmt::Q4_0),
        DType::Q4_1 => Some(QFmt::Q4_1),
        DType::Q5_0 => Some(QFmt::Q5_0),
        DType::Q5_1 => Some(QFmt::Q5_1),
        DType::Q4K => Some(QFmt::Q4K),
        DType::Q5K => Some(QFmt::Q5K),
        DType::IQ4NL => Some(QFmt::IQ4NL),
        DType::IQ4XS => Some(QFmt::IQ4XS),
        DType::Q6K => Some(QFmt::Q6K),
        DType::Q3K => Some(QFmt::Q3K),
        DType::Q2K => Some(QFmt::Q2K),
        DType::Q4_0G64 => Some(QFmt::Q4_0G64),
        DType::Q4_1G64 => Some(QFmt::Q4_1G64),
        DType::Q4_0G128 => Some(QFmt::Q4_0G128),
        DType::Q4_1G128 => Some(QFmt::Q4_1G128),
        DType::Q8_0S24 => Some(QFmt::Q8_0S24),
        DType::Q8_0S832 => Some(QFmt::Q8_0S832),
        _ => None,
    }
}

/// Weight rows per parallel iteration of the integer path.
const QROWS: i64 = 16;

/// Bytes of int16 activations the integer path quantizes at once (a super-group of
/// rows; 128 rows of SmolLM2's 576, 84 of its 1536: L2-resident while every weight
/// chunk passes over them, and each chunk's tile decode serves that many rows; 128 KiB
/// measured 7% slower pp128 on the Xeon with the tile form, 512 KiB no faster).
const QGROUP_BYTES: i64 = 256 * 1024;

/// From this many rows on, a super-group's activations quantize in parallel.
const QUANTIZE_PAR_ROWS: i64 = 8;

/// Row quads per [`QDot`] statement (each weight block decoded once for them).
const QUADS_PER_DOT: i64 = 2;

/// The most rows in a super-group.
const QGROUP_MAX: i64 = 128;

/// The largest activation quant: int16 activations by default. (int8 ones, as
/// llama.cpp's q8 blocks, moved SmolLM2's logits by 2.6% of their range after one
/// decode step and changed its greedy text; int16 keeps the logits within
/// f32-accumulation noise. `act_bits = 8` asks for int8: [`QMAX8`].)
const QMAX: f64 = 32767.0;

/// The largest int8 activation quant (`act_bits = 8`).
const QMAX8: f64 = 127.0;

/// The largest decoded tile (bytes of quants and scales, on the stack of the thread
/// running a chunk): rows up to 8192 wide (256 blocks) take the tile form.
const TILE_MAX_BYTES: i64 = 288 * 1024;

/// Bytes of a decoded tile of `blocks` blocks (quants and scales).
fn tile_bytes(blocks: i64) -> i64 {
    QTile::tile_len(blocks) * 2 + QTile::scales_len(blocks) * 4
}

/// A decoded tile larger than this is taken in slices of [`SLICE_BLOCKS`] blocks
/// (SmolLM2's down projection, 48 blocks, ran at half the others' rate with its
/// 55 KiB tile outside L1).
const TILE_L1_BYTES: i64 = 32 * 1024;

/// Bytes of f32 activations a float linear's block of rows holds (it stays in L2
/// while every panel of the weight passes it).
const X_BLOCK_BYTES: i64 = 384 * 1024;

/// Blocks per slice of a long row (18 KiB of tile; a multiple of the K-quants' 8).
const SLICE_BLOCKS: i64 = 16;

/// From this many rows on, a quantized linear dequantizes each weight tile once.
const PACK_MIN_ROWS: i64 = 4;

/// What a linear kernel's tiles need.
#[derive(Clone)]
struct Lin {
    /// The activation epilogue (`linear_act`).
    act: Option<Act>,
    /// The residual the store adds last (`residual = 1`): its buffer and dtype,
    /// indexed as the output.
    res: Option<(BufId, DType)>,
    /// `glu`: output column j is act(row j) · (row n / 2 + j) of the weight's sums.
    glu: Option<Act>,
    /// Output columns: `n`, or `n / 2` with `glu`.
    n_out: i64,
    /// `glu_in`: x rows are `[gate | up]` of 2k, read as act(gate) · up.
    glu_in: Option<Act>,
    /// Elements per x row: k, or 2k with `glu_in`.
    xk: i64,
    /// `norm_eps`: x rows are read through an RMS norm (its weight, dtype and
    /// epsilon) where they are quantized.
    norm: Option<(BufId, DType, f64)>,
    x: BufId,
    xd: DType,
    w: BufId,
    wd: DType,
    out: BufId,
    bias: Option<(BufId, DType)>,
    k: i64,
    n: i64,
    t: Ty,
    /// The quantized weight is in the `Tile16` layout: every row takes the tile form.
    tile16: bool,
    /// The integer path quantizes activations to int8 blocks (`act_bits = 8`), else
    /// int16.
    act8: bool,
    /// Static scales (`act_amax`): per block of 32 input columns the calibrated
    /// largest |x|; the blocks quantize with `amax / 127`, saturating, instead of each
    /// row's own range.
    act_amax: Option<Vec<f64>>,
}

impl Lin {
    /// One register tile: rows r0..r0+mr of x against output columns j0..j0+nr, which
    /// are weight rows wj0..wj0+nr of `self.w`.
    fn tile(&self, kb: &mut KernelBuilder, r0: &Expr, mr: usize, j0: &Expr, wj0: &Expr, nr: usize) {
        let t = self.t;
        let nacc = if self.glu.is_some() { 2 * nr } else { nr };
        let acc: Vec<Vec<VarId>> = (0..mr)
            .map(|_| {
                (0..nacc)
                    .map(|_| kb.let_mut("acc", fconst(0.0, t)))
                    .collect()
            })
            .collect();
        let xrow: Vec<Expr> = (0..mr)
            .map(|i| kb.let_("xr", (r0.clone() + i as i64) * self.xk))
            .collect();
        // With `glu` the gate rows, then the up rows n / 2 further.
        let halves: &[i64] = if self.glu.is_some() {
            &[0, self.n_out]
        } else {
            &[0]
        };
        let wrow: Vec<Expr> = halves
            .iter()
            .flat_map(|&h| (0..nr).map(move |j| h + j as i64))
            .map(|j| kb.let_("wr", (wj0.clone() + j) * self.k))
            .collect();

        let fma = |a: Expr, x: Expr, y: Expr| Expr::bin(BinOp::Add, a, Expr::bin(BinOp::Mul, x, y));
        match quant_block(self.wd) {
            None => {
                kb.for_("p", 0, self.k, LoopTag::Vectorize(8), |kb, p| {
                    let xs: Vec<Expr> = xrow
                        .iter()
                        .map(|xr| {
                            let v = self.load_x(kb, xr.clone() + p.clone());
                            kb.let_("xv", v)
                        })
                        .collect();
                    let ws: Vec<Expr> = wrow
                        .iter()
                        .map(|wr| {
                            let v = load_elem(kb, self.w, self.wd, wr.clone() + p.clone());
                            kb.let_("wv", v.cast(t))
                        })
                        .collect();
                    for (i, xv) in xs.iter().enumerate() {
                        for (j, wv) in ws.iter().enumerate() {
                            let a = acc[i][j];
                            kb.assign(a, fma(Expr::Var(a), xv.clone(), wv.clone()));
                        }
                    }
                });
            }
            Some((bl, bb)) => {
                let blocks = self.k / bl;
                kb.for_("blk", 0, blocks, LoopTag::Serial, |kb, blk| {
                    self.quant_block(kb, &blk, &xrow, wj0, nr, &acc, bl, bb, blocks);
                });
            }
        }
        for (i, row) in acc.iter().enumerate() {
            for (j, a) in row.iter().enumerate().take(nr) {
                let col = j0.clone() + j as i64;
                let mut v = Expr::Var(*a);
                if let Some((b, bd)) = self.bias {
                    let bv = load_elem(kb, b, bd, col.clone());
                    v = Expr::bin(BinOp::Add, v, bv.cast(t));
                }
                if let Some(act) = self.glu {
                    let mut u = Expr::Var(row[nr + j]);
                    if let Some((b, bd)) = self.bias {
                        let bv = load_elem(kb, b, bd, col.clone() + self.n_out);
                        u = Expr::bin(BinOp::Add, u, bv.cast(t));
                    }
                    v = glu_of(kb, act, v, u, t);
                }
                let o = (r0.clone() + i as i64) * self.n_out + col;
                let v = self.epilogue(kb, v, t);
                let v = self.residual(kb, v, t, o.clone());
                let v = to_storage(kb, self.out, v);
                kb.store(self.out, o, v);
            }
        }
    }
}

impl Lin {
    /// Element `at` of x (an index into its rows of `xk`), in x's compute type: with
    /// `glu_in`, act(x[at]) · x[at + k], the `glu` kernel's expression.
    fn load_x(&self, kb: &mut KernelBuilder, at: Expr) -> Expr {
        let v = load_elem(kb, self.x, self.xd, at.clone());
        match self.glu_in {
            None => v,
            Some(act) => {
                let t = compute_ty(self.xd).unwrap_or(Ty::F32);
                let u = load_elem(kb, self.x, self.xd, at + self.k);
                glu_of(kb, act, v.cast(t), u.cast(t), t)
            }
        }
    }

    /// The residual's element `o` added to the stored value `v` (`residual = 1`), or
    /// `v` itself: one add in the compute type, as the `add` it replaces.
    fn residual(&self, kb: &mut KernelBuilder, v: Expr, t: Ty, o: Expr) -> Expr {
        match self.res {
            None => v,
            Some((r, rd)) => Expr::bin(BinOp::Add, v, load_elem(kb, r, rd, o).cast(t)),
        }
    }

    /// The store side's epilogue: the activation of `linear_act` applied to the
    /// accumulated (and biased) value `v` of compute type `t`, or `v` itself.
    fn epilogue(&self, kb: &mut KernelBuilder, v: Expr, t: Ty) -> Expr {
        match self.act {
            None => v,
            Some(act) => {
                let v = kb.let_("pre", v);
                super::elementwise::activation(act, v, t)
            }
        }
    }

    /// Rows of f32 x against a float weight packed in panels of 32 rows
    /// ([`Pack::Panels32`]): in parallel over (block of rows, panel) pairs, panels
    /// inner, tiles of up to [`FTile::ROWS`] rows ([`FTile`]: the panel's 32 rows in
    /// vector lanes, one broadcast activation per position, no horizontal sums), then
    /// the block's rows left over in tiles of 4, 2 and 1; each tile's sums go through the bias
    /// and the epilogue vectorized over the columns. A block of rows
    /// ([`X_BLOCK_BYTES`] of activations) stays in L2 while the panels stream past it,
    /// so many rows read x once per block rather than once per panel.
    fn panel_rows(&self, kb: &mut KernelBuilder, rows: &Expr) {
        let lanes = PANEL as i64;
        let panels = self.n / lanes;
        // With `glu` (`Pack::Panels32Glu`) panel p holds gate rows 16p.. in lanes
        // 0..16 and the up rows n / 2 + 16p.. in lanes 16..32: its tile stores 16
        // output columns, act(gate) · up.
        let cols = if self.glu.is_some() { lanes / 2 } else { lanes };
        let rt = FTile::ROWS as i64;
        let rb = (X_BLOCK_BYTES / (4 * self.k) / rt * rt).clamp(rt, 1024);
        let w_ty = storage_ty(self.wd).unwrap_or(Ty::F32);
        let nrb = kb.let_("nrb", (rows.clone() + (rb - 1)) / rb);
        let items = kb.let_("items", nrb * panels);
        kb.for_("item", 0, items, LoopTag::Parallel, |kb, item| {
            let tile = kb.local("ftile", Ty::F32, rt * lanes);
            let jp = kb.let_("jp", item.clone() % panels);
            let lo = kb.let_("rlo", item.clone() / panels * rb);
            let hi = kb.let_("rhi", (lo.clone() + rb).min(rows.clone()));
            let w_off = kb.let_("w_off", jp.clone() * (self.k * lanes));
            let j0 = kb.let_("j0", jp * cols);
            let full = kb.let_("rfull", lo.clone() + (hi.clone() - lo.clone()) / rt * rt);
            // The panel of the next item (this thread's next claim, most of the time)
            // is asked for while this one computes, each full tile a slice of it, so
            // the first tile of a panel does not wait on memory: the tiles' slices
            // advance `step` elements a position and together cover the panel (one
            // tile alone asks every other line; the adjacent-line prefetcher fetches
            // the pair).
            let tiles = kb.let_("ntiles", (hi.clone() - lo.clone()) / rt);
            let next = kb.let_("pf_next", (item.clone() + 1) % panels * (self.k * lanes));
            let step = kb.let_("pf_step", Expr::i(lanes) / tiles.max(Expr::i(1)));
            let run = |kb: &mut KernelBuilder, r0: &Expr, nr: i64| {
                let prefetch = (nr == rt).then(|| {
                    let t = (r0.clone() - lo.clone()) / rt;
                    (next.clone() + t * self.k * step.clone(), step.clone())
                });
                kb.ftile(FTile {
                    w: self.w,
                    w_ty,
                    w_off: w_off.clone(),
                    w_stride: Expr::i(FTile::LANES as i64),
                    k: Expr::i(self.k),
                    x: self.x,
                    x_rows: (0..nr).map(|i| (r0.clone() + i) * self.k).collect(),
                    x_stride: 1,
                    out: tile,
                    out_off: Expr::i(0),
                    prefetch,
                });
                for i in 0..nr {
                    kb.for_("c", 0, cols, LoopTag::Vectorize(16), |kb, c| {
                        let j = j0.clone() + c.clone();
                        let mut v = Expr::load(tile, c.clone() + i * lanes);
                        if let Some((b, bd)) = self.bias {
                            let bv = load_elem(kb, b, bd, j.clone());
                            v = Expr::bin(BinOp::Add, v, bv.cast(Ty::F32));
                        }
                        if let Some(act) = self.glu {
                            let mut u = Expr::load(tile, c + (i * lanes + cols));
                            if let Some((b, bd)) = self.bias {
                                let bv = load_elem(kb, b, bd, j.clone() + self.n_out);
                                u = Expr::bin(BinOp::Add, u, bv.cast(Ty::F32));
                            }
                            v = glu_of(kb, act, v, u, Ty::F32);
                        }
                        let v = self.epilogue(kb, v, Ty::F32);
                        let o = (r0.clone() + i) * self.n_out + j;
                        let v = self.residual(kb, v, Ty::F32, o.clone());
                        let v = to_storage(kb, self.out, v);
                        kb.store(self.out, o, v);
                    });
                }
            };
            row_tiles(kb, lo.clone(), full, hi, &run);
        });
    }

    /// Rows of f32 x against a quantized weight as stored, in super-groups of up to
    /// [`QGROUP_BYTES`] of int16 activations: each super-group is quantized once to
    /// int16 blocks of 32 (scale `amax / 32767`, so the quants stay in
    /// -32767..=32767), then one parallel loop over chunks of [`QROWS`] weight rows
    /// runs every row quad's block sums against the chunk ([`QDot`]; one weight decode
    /// serves four rows, the chunk stays in L1 across the quads), then the rows left
    /// over one at a time. One thread-pool dispatch serves the whole super-group.
    fn int8_rows(&self, kb: &mut KernelBuilder, rows: &Expr, fmt: QFmt) {
        let k = self.k;
        let blocks = k / 32;
        let quad = QDot::QUAD as i64;
        let sg = (QGROUP_BYTES / (2 * k) / quad * quad).clamp(quad, QGROUP_MAX);
        let stride = QDot::scale_stride(blocks);
        let xq_ty = if self.act8 { Ty::I8 } else { Ty::I16 };
        let xq = kb.local("xq", xq_ty, sg * k);
        let xd = kb.local("xd", Ty::F32, sg / quad * stride);
        // (Q2_K: two sums a block, the halves', row-major; see `QFmt::Q2K`.)
        let halves = if fmt.split_mins() { 2 } else { 1 };
        let xs = kb.local("xs", Ty::F32, halves * sg / quad * stride);
        // Static scales: per block the quantization factor and the scale, as tables.
        let fixed = self.act_amax.as_ref().map(|amax| {
            let qmax = if self.act8 { QMAX8 } else { QMAX };
            let fid = kb.local("fid", Ty::F32, blocks);
            let fd = kb.local("fd", Ty::F32, blocks);
            for (b, &a) in amax.iter().enumerate() {
                let a = a as f32;
                let id = if a > 0.0 { qmax as f32 / a } else { 0.0 };
                kb.store(fid, Expr::i(b as i64), fconst(id as f64, Ty::F32));
                kb.store(
                    fd,
                    Expr::i(b as i64),
                    fconst((a / qmax as f32) as f64, Ty::F32),
                );
            }
            (fid, fd)
        });
        kb.for_step("rg", 0, rows.clone(), sg, LoopTag::Serial, |kb, rg| {
            let nr = kb.let_(
                "nr",
                Expr::bin(BinOp::Min, rows.clone() - rg.clone(), Expr::i(sg)),
            );
            // Many rows (prefill) quantize in parallel: serially they left the other
            // threads waiting for 10% of a SmolLM2 prefill.
            let quantize = |kb: &mut KernelBuilder, tag| {
                kb.for_("r", 0, nr.clone(), tag, |kb, r| {
                    let q = (xq, xd, xs);
                    self.quantize_row(kb, &(rg.clone() + r.clone()), &r, q, fixed, halves == 2);
                });
            };
            kb.if_else(
                nr.clone().ge(Expr::i(QUANTIZE_PAR_ROWS)),
                |kb| quantize(kb, LoopTag::Parallel),
                |kb| quantize(kb, LoopTag::Serial),
            );
            self.int8_group(kb, &rg, &nr, fmt, (xq, xd, xs));
        });
    }

    /// The scale slot of local row `lr`'s block 0 (rows interleave by quads; see
    /// [`QDot`]).
    fn scale_slot(&self, lr: &Expr) -> Expr {
        let quad = QDot::QUAD as i64;
        let stride = QDot::scale_stride(self.k / 32);
        Expr::bin(BinOp::Div, lr.clone(), Expr::i(quad)) * stride
            + Expr::bin(BinOp::Rem, lr.clone(), Expr::i(quad))
    }

    /// Quantizes row `r` of x into local row `lr` of the int16 locals; with `fixed`
    /// (static scales: per block the factor `qmax / amax` and the scale `amax / qmax`)
    /// every block takes the table's scale and saturates at `±qmax`. With `halves`
    /// (Q2_K) `xs` takes each block's two halves' sums instead ([`Self::half_sums`]).
    fn quantize_row(
        &self,
        kb: &mut KernelBuilder,
        r: &Expr,
        lr: &Expr,
        q: (BufId, BufId, BufId),
        fixed: Option<(BufId, BufId)>,
        halves: bool,
    ) {
        let (xq, xd, xs) = q;
        let k = self.k;
        let blocks = k / 32;
        let sc = kb.let_("sc", self.scale_slot(lr));
        // With `norm_eps`, the row's RMS factor first, as `rms_norm` computes it.
        let inv = self.norm.map(|(_, _, eps)| {
            let base = r.clone() * self.xk;
            super::nn::rms_inv(kb, (self.x, self.xd), base, &Expr::i(k), eps, self.t)
        });
        // Element e of block b of the row at x0 (`x0 = r · xk + 32 b`): through the
        // norm, rms_norm's `(x · inv) · w`, or as `load_x` reads it.
        let elem = |kb: &mut KernelBuilder, x0: &Expr, b: &Expr, e: Expr| match (&inv, self.norm) {
            (Some(inv), Some((nw, nd, _))) => {
                let x = load_elem(kb, self.x, self.xd, x0.clone() + e.clone());
                let w = load_elem(kb, nw, nd, b.clone() * 32 + e);
                Expr::bin(BinOp::Mul, Expr::bin(BinOp::Mul, x, inv.clone()), w)
            }
            _ => self.load_x(kb, x0.clone() + e),
        };
        if let Some((fid, fd)) = fixed {
            let qmax = if self.act8 { QMAX8 } else { QMAX };
            let qty = if self.act8 { Ty::I8 } else { Ty::I16 };
            kb.for_("b", 0, blocks, LoopTag::Serial, |kb, b| {
                let x0 = kb.let_("x0", r.clone() * self.xk + b.clone() * 32);
                let q0 = kb.let_("q0", lr.clone() * k + b.clone() * 32);
                let id = kb.let_("id", Expr::Load(fid, Box::new(b.clone())));
                let qsum = kb.let_mut("qsum", Expr::Int(0, Ty::I32));
                kb.for_("e", 0, 32, LoopTag::Vectorize(16), |kb, e| {
                    let v = elem(kb, &x0, &b, e.clone()).cast(Ty::F32);
                    let q = Expr::un(UnOp::Round, Expr::bin(BinOp::Mul, v, id.clone()));
                    let q = Expr::bin(BinOp::Min, q, fconst(qmax, Ty::F32));
                    let q = Expr::bin(BinOp::Max, q, fconst(-qmax, Ty::F32));
                    let q = kb.let_("q", q.cast(qty));
                    kb.store(xq, q0.clone() + e, q.clone());
                    kb.assign(
                        qsum,
                        Expr::bin(BinOp::Add, Expr::Var(qsum), q.cast(Ty::I32)),
                    );
                });
                let d = kb.let_("d", Expr::Load(fd, Box::new(b.clone())));
                let at = kb.let_("at", sc.clone() + b.clone() * QDot::scale_offset(1));
                kb.store(xd, at.clone(), d.clone());
                if halves {
                    self.half_sums(kb, (xq, xs), lr, &b, &q0, &d);
                } else {
                    let s = Expr::bin(BinOp::Mul, d, Expr::Var(qsum).cast(Ty::F32));
                    kb.store(xs, at, s);
                }
            });
            return;
        }
        let ab = kb.local("abits", Ty::I32, 1);
        // With `glu_in` or `norm_eps` each block's 32 inputs are computed once into
        // `gb` (the values the glu or the norm kernel would store), and the range and
        // the quants read them there.
        let gb = (self.glu_in.is_some() || inv.is_some()).then(|| kb.local("gb", Ty::F32, 32));
        kb.for_("b", 0, blocks, LoopTag::Serial, |kb, b| {
            let xr0 = kb.let_("x0", r.clone() * self.xk + b.clone() * 32);
            let q0 = kb.let_("q0", lr.clone() * k + b.clone() * 32);
            let (src, sdt, x0) = match gb {
                None => (self.x, self.xd, xr0),
                Some(gb) => {
                    kb.for_("e", 0, 32, LoopTag::Vectorize(16), |kb, e| {
                        let v = elem(kb, &xr0, &b, e.clone());
                        kb.store(gb, e, v.cast(Ty::F32));
                    });
                    (gb, DType::F32, Expr::i(0))
                }
            };
            let amax = if sdt == DType::F32 {
                // The largest |x| as the largest bit pattern with the sign cleared
                // (non-negative floats order as their bits; a NaN, above inf, gives a
                // NaN scale and zero quants): an integer max reduction vectorizes,
                // where LLVM 19 keeps a float maxnum reduction scalar (it was half the
                // activation quantization, 7% of a 32-stream serving step).
                let bits = kb.let_mut("abits", Expr::Int(0, Ty::I32));
                kb.for_("e", 0, 32, LoopTag::Vectorize(16), |kb, e| {
                    let at = (x0.clone() + e) * 4;
                    let v = Expr::LoadRaw(src, Box::new(at), Ty::I32);
                    let v = Expr::bin(BinOp::And, v, Expr::Int(0x7fff_ffff, Ty::I32));
                    kb.assign(bits, Expr::bin(BinOp::Max, Expr::Var(bits), v));
                });
                kb.store(ab, Expr::i(0), Expr::Var(bits));
                kb.let_("amax", Expr::LoadRaw(ab, Box::new(Expr::i(0)), Ty::F32))
            } else {
                let amax = kb.let_mut("amax", fconst(0.0, Ty::F32));
                kb.for_("e", 0, 32, LoopTag::Vectorize(8), |kb, e| {
                    let v = load_elem(kb, src, sdt, x0.clone() + e).cast(Ty::F32);
                    let m = Expr::bin(BinOp::Max, Expr::Var(amax), Expr::un(UnOp::Abs, v));
                    kb.assign(amax, m);
                });
                Expr::Var(amax)
            };
            let qmax = if self.act8 { QMAX8 } else { QMAX };
            let pos = Expr::bin(BinOp::Gt, amax.clone(), fconst(0.0, Ty::F32));
            let inv = Expr::bin(BinOp::Div, fconst(qmax, Ty::F32), amax.clone());
            let id = kb.let_(
                "id",
                Expr::Select(Box::new(pos), Box::new(inv), Box::new(fconst(0.0, Ty::F32))),
            );
            let qsum = kb.let_mut("qsum", Expr::Int(0, Ty::I32));
            kb.for_("e", 0, 32, LoopTag::Vectorize(16), |kb, e| {
                let v = load_elem(kb, src, sdt, x0.clone() + e.clone()).cast(Ty::F32);
                let q = Expr::un(UnOp::Round, Expr::bin(BinOp::Mul, v, id.clone()));
                let q = kb.let_("q", q.cast(if self.act8 { Ty::I8 } else { Ty::I16 }));
                kb.store(xq, q0.clone() + e, q.clone());
                kb.assign(
                    qsum,
                    Expr::bin(BinOp::Add, Expr::Var(qsum), q.cast(Ty::I32)),
                );
            });
            let d = kb.let_(
                "d",
                Expr::bin(BinOp::Div, amax.clone(), fconst(qmax, Ty::F32)),
            );
            let at = kb.let_("at", sc.clone() + b.clone() * QDot::scale_offset(1));
            kb.store(xd, at.clone(), d.clone());
            if halves {
                self.half_sums(kb, (xq, xs), lr, &b, &q0, &d);
            } else {
                let s = Expr::bin(BinOp::Mul, d, Expr::Var(qsum).cast(Ty::F32));
                kb.store(xs, at, s);
            }
        });
    }

    /// Q2_K's activation sums: block `b` of local row `lr` (its quants at `q0`, scale
    /// `d`) stores `d · Σ x_q` of its first and second 16 quants at
    /// `xs[2 (lr · blocks + b) + p]` (row-major, so a super-block's 16 are adjacent).
    fn half_sums(
        &self,
        kb: &mut KernelBuilder,
        (xq, xs): (BufId, BufId),
        lr: &Expr,
        b: &Expr,
        q0: &Expr,
        d: &Expr,
    ) {
        let blocks = self.k / 32;
        for p in 0..2i64 {
            let sum = kb.let_mut("hsum", Expr::Int(0, Ty::I32));
            kb.for_("e", 0, 16, LoopTag::Vectorize(16), |kb, e| {
                let q = Expr::Load(xq, Box::new(q0.clone() + 16 * p + e)).cast(Ty::I32);
                kb.assign(sum, Expr::bin(BinOp::Add, Expr::Var(sum), q));
            });
            let at = (lr.clone() * blocks + b.clone()) * 2 + p;
            let v = Expr::bin(BinOp::Mul, d.clone(), Expr::Var(sum).cast(Ty::F32));
            kb.store(xs, at, v);
        }
    }

    /// Rows `r0..r0 + nr` of x (quantized in local rows `0..nr`) against every weight
    /// row: per chunk of weight rows, the full row quads, then the rows left over.
    fn int8_group(
        &self,
        kb: &mut KernelBuilder,
        r0: &Expr,
        nr: &Expr,
        fmt: QFmt,
        q: (BufId, BufId, BufId),
    ) {
        let n = self.n;
        let chunks = (n + QROWS - 1) / QROWS;
        let tag = if chunks > 1 {
            LoopTag::Parallel
        } else {
            LoopTag::Serial
        };
        let quad = QDot::QUAD as i64;
        // Rows per statement: QUADS_PER_DOT quads share each weight decode, then the
        // quads left over one at a time, then single rows. Each level's statements
        // start where the previous level's ended: (first, count) in statements.
        let mut levels = Vec::new();
        let mut first = Expr::i(0);
        let mut prev = 0;
        for per in [quad * QUADS_PER_DOT, quad, 1] {
            if prev > 0 {
                first = first * (prev / per);
            }
            let count = kb.let_("ns", Expr::bin(BinOp::Div, nr.clone(), Expr::i(per)));
            levels.push((per, first.clone(), count.clone()));
            first = count;
            prev = per;
        }
        let dots = |kb: &mut KernelBuilder, j0: &Expr, j1: &Expr| {
            for (per, first, count) in &levels {
                kb.for_(
                    "g",
                    first.clone(),
                    count.clone(),
                    LoopTag::Serial,
                    |kb, g| {
                        let lr = kb.let_("lr", g * *per);
                        let rows = self.statement_rows(kb, lr, *per);
                        self.int8_dots(kb, r0, j0, j1, &rows, fmt, q);
                    },
                );
            }
        };
        let lanes = QTile::LANES as i64;
        kb.for_("jc", 0, chunks, tag, |kb, jc| {
            let j0 = kb.let_("j0", jc * QROWS);
            let j1 = kb.let_("j1", Expr::bin(BinOp::Min, j0.clone() + QROWS, Expr::i(n)));
            if self.tile16 {
                // Packed weights: every chunk is whole, and only the tile reads them.
                self.int8_tile(kb, r0, nr, &j0, fmt, q);
                return;
            }
            let blocks = self.k / 32;
            // (The tile form is CPU-only: the generic GPU mapping takes the dots.)
            if fmt.split_scales()
                || QROWS != lanes
                || tile_bytes(blocks) > TILE_MAX_BYTES
                || gpu_mapping()
            {
                dots(kb, &j0, &j1);
                return;
            }
            // A whole chunk against at least a quad of rows: decode it once into the
            // tile (weight rows in vector lanes, no horizontal sums); else per row.
            let whole = Expr::bin(BinOp::Eq, j1.clone() - j0.clone(), Expr::i(lanes));
            let many = Expr::bin(BinOp::Ge, nr.clone(), Expr::i(quad));
            let cond = Expr::bin(BinOp::And, whole, many);
            kb.if_else(
                cond,
                |kb| self.int8_tile(kb, r0, nr, &j0, fmt, q),
                |kb| dots(kb, &j0, &j1),
            );
        });
    }

    /// Weight rows `j0..j0 + 16` against local rows `0..nr` (at least a quad): the
    /// chunk decoded once ([`QUnpack`]), then [`QTile`] per row quad and per row
    /// left over.
    fn int8_tile(
        &self,
        kb: &mut KernelBuilder,
        r0: &Expr,
        nr: &Expr,
        j0: &Expr,
        fmt: QFmt,
        q: (BufId, BufId, BufId),
    ) {
        let (xq, xd, xs) = q;
        let blocks = self.k / 32;
        let quad = QDot::QUAD as i64;
        // Long rows in slices of blocks, so the tile stays in L1 while every row quad
        // passes over it; the chains wait in `state` between slices.
        let slices: Vec<(i64, i64)> = if tile_bytes(blocks) > TILE_L1_BYTES {
            (0..blocks)
                .step_by(SLICE_BLOCKS as usize)
                .map(|b0| (b0, SLICE_BLOCKS.min(blocks - b0)))
                .collect()
        } else {
            vec![(0, blocks)]
        };
        let most = slices.iter().map(|s| s.1).max().unwrap_or(blocks);
        let tile = kb.local("wtile", Ty::I16, QTile::tile_len(most));
        let scales = kb.local("wscales", Ty::F32, QTile::scales_len(most));
        let state = (slices.len() > 1)
            .then(|| kb.local("qstate", Ty::F32, QGROUP_MAX * 4 * QTile::LANES as i64));
        let row_bytes = fmt.row_bytes(blocks);
        // One statement: rows (local row, scale slot) over slice (first block, blocks),
        // stored when the slice is the row's last.
        let run = |kb: &mut KernelBuilder,
                   rows: Vec<(Expr, Expr)>,
                   (b0, nb): (i64, i64),
                   direct: bool| {
            let accs: Vec<VarId> = (0..rows.len() * QTile::LANES)
                .map(|_| kb.let_mut("acc", fconst(0.0, Ty::F32)))
                .collect();
            let lr0 = rows[0].0.clone();
            kb.qtile(QTile {
                fmt,
                w: self.w,
                w_off: j0.clone() * row_bytes,
                row_bytes,
                packed: self.tile16,
                direct,
                // Packed Q8_0 on int8 activations: unsigned quants with a minimum.
                has_min: fmt.has_min() || (self.act8 && self.tile16 && fmt == QFmt::Q8_0),
                first_block: b0,
                blocks: nb,
                row_blocks: blocks,
                state: state.map(|st| (st, lr0 * (4 * QTile::LANES as i64))),
                tile,
                scales,
                xq,
                xd,
                xs,
                x_blk: rows.iter().map(|(lr, _)| lr.clone() * blocks).collect(),
                x_sc: rows.iter().map(|(_, sc)| sc.clone()).collect(),
                accs: accs.clone(),
            });
            if b0 + nb < blocks {
                return;
            }
            for (i, (lr, _)) in rows.iter().enumerate() {
                for c in 0..QTile::LANES {
                    let j = j0.clone() + c as i64;
                    self.store_dot(kb, r0, lr, &j, accs[i * QTile::LANES + c]);
                }
            }
        };
        let unpacked = |kb: &mut KernelBuilder| {
            let quads = kb.let_("nq", Expr::bin(BinOp::Div, nr.clone(), Expr::i(quad)));
            for &(b0, nb) in &slices {
                kb.qunpack(QUnpack {
                    fmt,
                    w: self.w,
                    w_off: j0.clone() * row_bytes,
                    row_bytes,
                    packed: self.tile16,
                    first_block: b0,
                    blocks: nb,
                    tile,
                    scales,
                    act8: self.act8,
                });
                kb.for_("g", 0, quads.clone(), LoopTag::Serial, |kb, g| {
                    let lr = kb.let_("lr", g * quad);
                    let rows = self.statement_rows(kb, lr, quad);
                    run(kb, rows, (b0, nb), false);
                });
                kb.for_(
                    "lr",
                    quads.clone() * quad,
                    nr.clone(),
                    LoopTag::Serial,
                    |kb, lr| {
                        let rows = self.statement_rows(kb, lr, 1);
                        run(kb, rows, (b0, nb), false);
                    },
                );
            }
        };
        if !self.tile16 {
            return unpacked(kb);
        }
        if fmt.split_mins() {
            // Packed Q2_K: a block has a scale and two minimums a row, one slot more
            // than the unpacked tile keeps, so every row decodes the packed blocks as
            // it goes; a quad of rows shares each decode.
            let quads = kb.let_("nq", Expr::bin(BinOp::Div, nr.clone(), Expr::i(quad)));
            kb.for_("g", 0, quads.clone(), LoopTag::Serial, |kb, g| {
                let lr = kb.let_("lr", g * quad);
                let rows = self.statement_rows(kb, lr, quad);
                run(kb, rows, (0, blocks), true);
            });
            kb.for_("lr", quads * quad, nr.clone(), LoopTag::Serial, |kb, lr| {
                let rows = self.statement_rows(kb, lr, 1);
                run(kb, rows, (0, blocks), true);
            });
            return;
        }
        // Packed weights and fewer rows than a quad (decode): each row decodes the
        // packed blocks as it goes; a tile in memory would not pay back its stores.
        kb.if_else(nr.clone().ge(Expr::i(quad)), unpacked, |kb| {
            kb.for_("lr", 0, nr.clone(), LoopTag::Serial, |kb, lr| {
                let rows = self.statement_rows(kb, lr, 1);
                run(kb, rows, (0, blocks), true);
            });
        });
    }

    /// Stores accumulator `acc` of local row `lr` and weight row `j`: bias, the
    /// epilogue, output row `r0 + lr`.
    fn store_dot(&self, kb: &mut KernelBuilder, r0: &Expr, lr: &Expr, j: &Expr, acc: VarId) {
        let mut v = Expr::Var(acc);
        if let Some((b, bd)) = self.bias {
            let bv = load_elem(kb, b, bd, j.clone());
            v = Expr::bin(BinOp::Add, v, bv.cast(Ty::F32));
        }
        let v = self.epilogue(kb, v, Ty::F32);
        let o = (r0.clone() + lr.clone()) * self.n + j.clone();
        let v = self.residual(kb, v, Ty::F32, o.clone());
        let v = to_storage(kb, self.out, v);
        kb.store(self.out, o, v);
    }

    /// Local rows `lr..lr + per` as (row, scale slot) pairs for one [`QDot`]: `per` is
    /// 1, or a multiple of 4 with `lr` one too (whole quads, whose slots are
    /// consecutive).
    fn statement_rows(&self, kb: &mut KernelBuilder, lr: Expr, per: i64) -> Vec<(Expr, Expr)> {
        if per == 1 {
            let sc = kb.let_("sc", self.scale_slot(&lr));
            return vec![(lr, sc)];
        }
        let quad = QDot::QUAD as i64;
        let stride = QDot::scale_stride(self.k / 32);
        let sc = kb.let_(
            "sc",
            Expr::bin(BinOp::Div, lr.clone(), Expr::i(quad)) * stride,
        );
        (0..per)
            .map(|i| {
                (
                    lr.clone() + i,
                    (sc.clone() + (i / quad) * stride) + i % quad,
                )
            })
            .collect()
    }

    /// Weight rows `j0..j1` against local rows `rows` (local row, scale slot), stored
    /// to output rows `r0 + local row`.
    #[allow(clippy::too_many_arguments)]
    fn int8_dots(
        &self,
        kb: &mut KernelBuilder,
        r0: &Expr,
        j0: &Expr,
        j1: &Expr,
        rows: &[(Expr, Expr)],
        fmt: QFmt,
        q: (BufId, BufId, BufId),
    ) {
        let (xq, xd, xs) = q;
        let blocks = self.k / 32;
        let row_bytes = fmt.row_bytes(blocks);
        kb.for_("j", j0.clone(), j1.clone(), LoopTag::Serial, |kb, j| {
            let accs: Vec<VarId> = rows
                .iter()
                .map(|_| kb.let_mut("acc", fconst(0.0, Ty::F32)))
                .collect();
            kb.qdot(QDot {
                fmt,
                w: self.w,
                w_off: j.clone() * row_bytes,
                blocks,
                xq,
                xd,
                xs,
                x_blk: rows.iter().map(|(lr, _)| lr.clone() * blocks).collect(),
                x_sc: rows.iter().map(|(_, sc)| sc.clone()).collect(),
                accs: accs.clone(),
            });
            for ((lr, _), acc) in rows.iter().zip(&accs) {
                self.store_dot(kb, r0, lr, &j, *acc);
            }
        });
    }

    /// Dequantizes weight rows j0..j0+nr into the local f32 array `dst` ([nr, k]).
    fn dequant_rows(&self, kb: &mut KernelBuilder, j0: &Expr, nr: usize, dst: BufId) {
        let Some((bl, bb)) = quant_block(self.wd) else {
            return;
        };
        let t = self.t;
        let blocks = self.k / bl;
        let four_bit = self.wd != DType::Q8_0;
        let qs_off = if self.wd == DType::Q4_1 { 4 } else { 2 };
        for j in 0..nr {
            kb.for_("blk", 0, blocks, LoopTag::Serial, |kb, blk| {
                let base = kb.let_(
                    "qb",
                    (j0.clone() + j as i64) * (blocks * bb) + blk.clone() * bb,
                );
                let f16 = |off: Expr| Expr::LoadRaw(self.w, Box::new(off), Ty::F16).cast(t);
                let d = kb.let_("d", f16(base.clone()));
                let m = match self.wd {
                    DType::Q4_1 => Some(kb.let_("m", f16(base.clone() + 2))),
                    DType::Q4_0 => {
                        Some(kb.let_("m", Expr::bin(BinOp::Mul, d.clone(), fconst(-8.0, t))))
                    }
                    _ => None,
                };
                let out0 = kb.let_("o0", blk.clone() * bl + j as i64 * self.k);
                let n = if four_bit { bl / 2 } else { bl };
                kb.for_("e", 0, n, LoopTag::Vectorize(8), |kb, e| {
                    let at = Box::new(base.clone() + qs_off + e.clone());
                    let scale = |q: Expr| {
                        let v = Expr::bin(BinOp::Mul, q, d.clone());
                        match &m {
                            Some(m) => Expr::bin(BinOp::Add, v, m.clone()),
                            None => v,
                        }
                    };
                    if four_bit {
                        let byte = kb.let_("q", Expr::LoadRaw(self.w, at, Ty::U8));
                        let lo = Expr::bin(BinOp::And, byte.clone(), Expr::Int(15, Ty::U8)).cast(t);
                        let hi = Expr::bin(BinOp::Shr, byte, Expr::Int(4, Ty::U8)).cast(t);
                        kb.store(dst, out0.clone() + e.clone(), scale(lo));
                        kb.store(dst, out0.clone() + e.clone() + bl / 2, scale(hi));
                    } else {
                        let q = Expr::LoadRaw(self.w, at, Ty::I8).cast(t);
                        kb.store(dst, out0.clone() + e, scale(q));
                    }
                });
            });
        }
    }

    /// One block (32 elements of k) of a quantized tile. The block's bytes and the
    /// activations load contiguously: byte `e` of a Q4 block holds element `e` (low
    /// nibble) and element `e + 16` (high nibble); the scale multiplies the block's
    /// integer dot product once, and Q4_1's minimum (Q4_0's offset 8) multiplies the
    /// block's activation sum: Σ x (d q + m) = d Σ x q + m Σ x.
    #[allow(clippy::too_many_arguments)]
    fn quant_block(
        &self,
        kb: &mut KernelBuilder,
        blk: &Expr,
        xrow: &[Expr],
        j0: &Expr,
        nr: usize,
        acc: &[Vec<VarId>],
        bl: i64,
        bb: i64,
        blocks: i64,
    ) {
        let t = self.t;
        let mr = xrow.len();
        let base: Vec<Expr> = (0..nr)
            .map(|j| {
                let row_bytes = (j0.clone() + j as i64) * (blocks * bb);
                kb.let_("qb", row_bytes + blk.clone() * bb)
            })
            .collect();
        let x0: Vec<Expr> = xrow
            .iter()
            .map(|xr| kb.let_("x0", xr.clone() + blk.clone() * bl))
            .collect();
        let dot: Vec<Vec<VarId>> = (0..mr)
            .map(|_| (0..nr).map(|_| kb.let_mut("dot", fconst(0.0, t))).collect())
            .collect();
        let four_bit = self.wd != DType::Q8_0;
        let xsum: Vec<VarId> = if four_bit {
            (0..mr)
                .map(|_| kb.let_mut("xsum", fconst(0.0, t)))
                .collect()
        } else {
            Vec::new()
        };
        let qs_off = match self.wd {
            DType::Q4_1 => 4,
            _ => 2,
        };
        let fma = |a: Expr, x: Expr, y: Expr| Expr::bin(BinOp::Add, a, Expr::bin(BinOp::Mul, x, y));
        let n = if four_bit { bl / 2 } else { bl };
        kb.for_("e", 0, n, LoopTag::Vectorize(8), |kb, e| {
            // Weight values of this lane, per weight row: (element e [, element e + 16]).
            let ws: Vec<(Expr, Option<Expr>)> = base
                .iter()
                .map(|b| {
                    let at = Box::new(b.clone() + qs_off + e.clone());
                    if four_bit {
                        let byte = kb.let_("q", Expr::LoadRaw(self.w, at, Ty::U8));
                        let lo = Expr::bin(BinOp::And, byte.clone(), Expr::Int(15, Ty::U8));
                        let hi = Expr::bin(BinOp::Shr, byte, Expr::Int(4, Ty::U8));
                        (kb.let_("lo", lo.cast(t)), Some(kb.let_("hi", hi.cast(t))))
                    } else {
                        (
                            kb.let_("q", Expr::LoadRaw(self.w, at, Ty::I8).cast(t)),
                            None,
                        )
                    }
                })
                .collect();
            for (i, xb) in x0.iter().enumerate() {
                let xa = self.load_x(kb, xb.clone() + e.clone());
                let xa = kb.let_("xa", xa);
                let xh = if four_bit {
                    let v = self.load_x(kb, xb.clone() + e.clone() + bl / 2);
                    let v = kb.let_("xh", v);
                    let s = xsum[i];
                    kb.assign(
                        s,
                        Expr::bin(
                            BinOp::Add,
                            Expr::Var(s),
                            Expr::bin(BinOp::Add, xa.clone(), v.clone()),
                        ),
                    );
                    Some(v)
                } else {
                    None
                };
                for (j, (lo, hi)) in ws.iter().enumerate() {
                    let a = dot[i][j];
                    let mut v = fma(Expr::Var(a), xa.clone(), lo.clone());
                    if let (Some(h), Some(xh)) = (hi, &xh) {
                        v = fma(v, xh.clone(), h.clone());
                    }
                    kb.assign(a, v);
                }
            }
        });
        for (j, b) in base.iter().enumerate() {
            let f16 = |off: Expr| Expr::LoadRaw(self.w, Box::new(off), Ty::F16).cast(t);
            let d = kb.let_("d", f16(b.clone()));
            let m = match self.wd {
                DType::Q4_1 => Some(kb.let_("m", f16(b.clone() + 2))),
                DType::Q4_0 => {
                    Some(kb.let_("m", Expr::bin(BinOp::Mul, d.clone(), fconst(-8.0, t))))
                }
                _ => None,
            };
            for i in 0..mr {
                let a = acc[i][j];
                let mut v = fma(Expr::Var(a), d.clone(), Expr::Var(dot[i][j]));
                if let Some(m) = &m {
                    v = fma(v, m.clone(), Expr::Var(xsum[i]));
                }
                kb.assign(a, v);
            }
        }
    }
}

/// Rows `lo..hi` of an outer-product GEMM through `run(kb, first row, rows)`: tiles of
/// [`FTile::ROWS`] up to `full` (`lo` plus a whole number of tiles), then the rows
/// left 8, 4, then 2 at a time, then singly (a single row is two FMA chains, a quarter
/// of the pipes' depth).
fn row_tiles(
    kb: &mut KernelBuilder,
    lo: Expr,
    full: Expr,
    hi: Expr,
    run: &dyn Fn(&mut KernelBuilder, &Expr, i64),
) {
    let rt = FTile::ROWS as i64;
    kb.for_step("r", lo, full.clone(), rt, LoopTag::Serial, |kb, r| {
        run(kb, &r, rt)
    });
    let mut from = full;
    for nr in [8, 4, 2].into_iter().filter(|&n| n < rt) {
        let to = kb.let_(
            "rpart",
            from.clone() + (hi.clone() - from.clone()) / nr * nr,
        );
        kb.for_step("r", from, to.clone(), nr, LoopTag::Serial, |kb, r| {
            run(kb, &r, nr)
        });
        from = to;
    }
    kb.for_("r", from, hi, LoopTag::Serial, |kb, r| run(kb, &r, 1));
}

/// f32 `matmul` as outer-product tiles: the right operand `[k, n]` is read in place,
/// 32 columns at a time ([`FTile`] with `w_stride` = n), in parallel over (batch,
/// block of rows, 32 columns), rows in tiles of 12, 8, 4, 2 and 1; the last `n mod 32`
/// columns are a dot product per output. Every output is one in-order chain over the
/// reduction, as in the row-update form. (That form ran one row at a time through the
/// whole right operand: 14.5 GFLOP/s.)
fn matmul_panels(
    kb: &mut KernelBuilder,
    (a, b, out): (BufId, BufId, BufId),
    batch: &[Dim],
    [a_st, b_st, o_st]: &[Vec<Dim>; 3],
    [me, ke, ne]: [Expr; 3],
    k: &Dim,
) {
    let lanes = PANEL as i64;
    let rt = FTile::ROWS as i64;
    let kc = k.as_const().unwrap_or(64).max(1);
    let rb = (X_BLOCK_BYTES / (4 * kc) / rt * rt).clamp(rt, 1024);
    let bex: Vec<Expr> = batch.iter().map(|d| kb.dim(d)).collect();
    let nbatch = bex.iter().fold(Expr::i(1), |acc, e| acc * e.clone());
    let panels = kb.let_("panels", ne.clone() / lanes);
    let cols = kb.let_("colgroups", (ne.clone() + (lanes - 1)) / lanes);
    let nrb = kb.let_("nrb", (me.clone() + (rb - 1)) / rb);
    let per = kb.let_("per", nrb * cols.clone());
    let items = kb.let_("items", nbatch * per.clone());
    kb.for_("item", 0, items, LoopTag::Parallel, |kb, item| {
        let tile = kb.local("mtile", Ty::F32, rt * lanes);
        let bi = kb.let_("bi", item.clone() / per.clone());
        let rest = kb.let_("rest", item % per.clone());
        let jp = kb.let_("jp", rest.clone() % cols.clone());
        let lo = kb.let_("rlo", rest / cols.clone() * rb);
        let hi = kb.let_("rhi", (lo.clone() + rb).min(me.clone()));
        let mut coords = vec![Expr::i(0); bex.len()];
        let mut q = bi;
        for d in (0..bex.len()).rev() {
            coords[d] = kb.let_("bc", q.clone() % bex[d].clone());
            q = kb.let_("bq", q / bex[d].clone());
        }
        let ab = super::offset(kb, &coords, a_st);
        let ab = kb.let_("ab", ab);
        let bb = super::offset(kb, &coords, b_st);
        let bb = kb.let_("bb", bb);
        let ob = super::offset(kb, &coords, o_st) * me.clone() * ne.clone();
        let ob = kb.let_("ob", ob);
        let j0 = kb.let_("j0", jp.clone() * lanes);
        let w_off = kb.let_("w_off", bb.clone() + j0.clone());
        let run = |kb: &mut KernelBuilder, r0: &Expr, nr: i64| {
            kb.ftile(FTile {
                w: b,
                w_ty: Ty::F32,
                w_off: w_off.clone(),
                w_stride: ne.clone(),
                k: ke.clone(),
                x: a,
                x_rows: (0..nr)
                    .map(|i| ab.clone() + (r0.clone() + i) * ke.clone())
                    .collect(),
                x_stride: 1,
                out: tile,
                out_off: Expr::i(0),
                // Positions are a row of `b` apart, beyond the stride prefetchers'
                // reach: each asks for the one 16 positions ahead.
                prefetch: Some((w_off.clone() + ne.clone() * 16, ne.clone())),
            });
            for i in 0..nr {
                kb.for_("c", 0, lanes, LoopTag::Vectorize(16), |kb, c| {
                    let v = Expr::load(tile, c.clone() + i * lanes);
                    let o = ob.clone() + (r0.clone() + i) * ne.clone() + j0.clone() + c;
                    kb.store(out, o, v);
                });
            }
        };
        kb.if_else(
            jp.clone().lt(panels.clone()),
            |kb| {
                let full = kb.let_("rfull", lo.clone() + (hi.clone() - lo.clone()) / rt * rt);
                row_tiles(kb, lo.clone(), full, hi.clone(), &run);
            },
            |kb| {
                // The columns past the last full 32: one dot product per output.
                kb.for_("r", lo.clone(), hi.clone(), LoopTag::Serial, |kb, r| {
                    let arow = kb.let_("arow", ab.clone() + r.clone() * ke.clone());
                    kb.for_("j", j0.clone(), ne.clone(), LoopTag::Serial, |kb, j| {
                        let acc = kb.let_mut("acc", fconst(0.0, Ty::F32));
                        kb.for_("p", 0, ke.clone(), LoopTag::Serial, |kb, p| {
                            let av = Expr::load(a, arow.clone() + p.clone());
                            let bv = Expr::load(b, bb.clone() + p * ne.clone() + j.clone());
                            let v = Expr::bin(
                                BinOp::Add,
                                Expr::Var(acc),
                                Expr::bin(BinOp::Mul, av, bv),
                            );
                            kb.assign(acc, v);
                        });
                        let o = ob.clone() + r.clone() * ne.clone() + j;
                        kb.store(out, o, Expr::Var(acc));
                    });
                });
            },
        );
    });
}

/// `matmul(a, b)` with numpy semantics.
pub(crate) fn matmul(
    _node: &Node,
    ins: &[&TensorType],
    outs: &[&TensorType],
    name: &str,
) -> TResult<Kernel> {
    let a = operand(ins, 0, "a")?;
    let b = operand(ins, 1, "b")?;
    let out = result(outs, 0)?;
    let (ra, rb) = (a.shape.rank(), b.shape.rank());
    if ra == 0 || rb == 0 {
        return Err("operands must have rank >= 1".into());
    }
    let one = Dim::c(1);
    let m = if ra >= 2 {
        a.shape.0[ra - 2].clone()
    } else {
        one.clone()
    };
    let k = a.shape.0[ra - 1].clone();
    let n = if rb >= 2 {
        b.shape.0[rb - 1].clone()
    } else {
        one.clone()
    };
    let a_batch = &a.shape.0[..ra.saturating_sub(2)];
    let b_batch = &b.shape.0[..rb.saturating_sub(2)];
    let nb = out
        .shape
        .rank()
        .saturating_sub((ra >= 2) as usize + (rb >= 2) as usize);
    let batch = &out.shape.0[..nb];
    let t = compute_ty(out.dtype)?;
    let (mut kb, ib, ob) = setup(name, ins, outs)?;
    let a_st: Vec<Dim> = super::broadcast_strides(batch, a_batch)
        .iter()
        .map(|s| s.mul(&m).mul(&k))
        .collect();
    let b_st: Vec<Dim> = super::broadcast_strides(batch, b_batch)
        .iter()
        .map(|s| s.mul(&k).mul(&n))
        .collect();
    let o_st = strides(batch);
    let (me, ke, ne) = (kb.dim(&m), kb.dim(&k), kb.dim(&n));
    let f32s = [a.dtype, b.dtype, out.dtype]
        .iter()
        .all(|&d| d == DType::F32);
    // Tiles when n is whole panels, or wide enough that its tail (a dot product per
    // output) is small; the row-update form keeps a small or run-time n (it streams a
    // right operand that fits in cache well: a 24 x 100 x 64 x 100 product measured
    // 0.62 ms against the tiles' 0.67).
    let wide = n
        .as_const()
        .is_some_and(|nc| nc >= PANEL as i64 && (nc % PANEL as i64 == 0 || nc >= 256));
    if f32s && !gpu_mapping() && ra >= 2 && rb >= 2 && wide {
        let st = [a_st, b_st, o_st];
        matmul_panels(&mut kb, (ib[0], ib[1], ob[0]), batch, &st, [me, ke, ne], &k);
        return kb.finish();
    }
    let mut ext: Vec<Dim> = batch.to_vec();
    ext.push(m.clone());
    let total: Vec<Dim> = ext.iter().cloned().chain([n.clone(), k.clone()]).collect();
    let parallel = worth_threads(work_estimate(&total));
    // Row-update form when the output holds the compute type exactly (f32, f64,
    // integers); a dot-product form otherwise, so f16 outputs round once.
    let axpy = Ty::of(out.dtype.compute_type()) == Some(t);
    loop_nest_par(&mut kb, &ext, parallel, false, &mut |kb, c| {
        let (bc, r) = c.split_at(c.len() - 1);
        let r = r[0].clone();
        let ab = super::offset(kb, bc, &a_st);
        let bb = super::offset(kb, bc, &b_st);
        let obase = super::offset(kb, bc, &o_st) * me.clone() * ne.clone();
        let orow = kb.let_("orow", obase + r.clone() * ne.clone());
        let arow = kb.let_("arow", ab + r * ke.clone());
        let bb = kb.let_("bb", bb);
        let zero = if t.is_float() {
            fconst(0.0, t)
        } else {
            Expr::Int(0, t)
        };
        if axpy {
            kb.for_("j", 0, ne.clone(), LoopTag::Vectorize(8), |kb, j| {
                kb.store(ob[0], orow.clone() + j, zero.clone());
            });
            kb.for_("p", 0, ke.clone(), LoopTag::Serial, |kb, p| {
                let av = load_elem(kb, ib[0], a.dtype, arow.clone() + p.clone());
                let av = kb.let_("av", av);
                let brow = kb.let_("brow", bb.clone() + p * ne.clone());
                kb.for_("j", 0, ne.clone(), LoopTag::Vectorize(8), |kb, j| {
                    let bv = load_elem(kb, ib[1], b.dtype, brow.clone() + j.clone());
                    let o = orow.clone() + j;
                    let cur = Expr::load(ob[0], o.clone());
                    let v = Expr::bin(BinOp::Add, cur, Expr::bin(BinOp::Mul, av.clone(), bv));
                    kb.store(ob[0], o, v);
                });
            });
        } else {
            kb.for_("j", 0, ne.clone(), LoopTag::Serial, |kb, j| {
                let acc = kb.let_mut("acc", zero.clone());
                kb.for_("p", 0, ke.clone(), LoopTag::Vectorize(8), |kb, p| {
                    let av = load_elem(kb, ib[0], a.dtype, arow.clone() + p.clone());
                    let bv = load_elem(kb, ib[1], b.dtype, bb.clone() + p * ne.clone() + j.clone());
                    let v = Expr::bin(BinOp::Add, Expr::Var(acc), Expr::bin(BinOp::Mul, av, bv));
                    kb.assign(acc, v);
                });
                let v = to_storage(kb, ob[0], Expr::Var(acc));
                kb.store(ob[0], orow.clone() + j, v);
            });
        }
    });
    kb.finish()
}
