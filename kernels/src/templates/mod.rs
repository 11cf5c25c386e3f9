//! Kernel templates: from one IR node (op, attributes, operand and result types) to
//! what runs it — a loop-IR kernel, or a note that no kernel is needed (a reshape is
//! an alias of its operand, a constant is data, `kv_append` is the runtime's job).
//! Each op family has its module; this one dispatches on the op and holds the helpers
//! they share (parameter setup, strides, loop nests, loading block-quantized elements).
//!
//! Kernel calling convention: the parameter buffers are the node's operands (role
//! `In`) in order, then its results (role `Out`) in order; the dims are the graph
//! symbols the kernel's shapes mention, named in `Kernel::dims`.

mod cnn;
mod elementwise;
pub mod gpu;
mod index;
mod layout;
mod linalg;
mod nn;
pub mod pack;
mod paged;
mod reduce;
mod resize;

use crate::builder::KernelBuilder;
use crate::loopir::{BufId, Expr, Kernel, LoopTag, Role, Ty, UnOp};
use llmc_ir::{DType, Dim, Node, Op, Tensor, TensorType};

/// A template error: the node cannot be lowered (yet), and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{op}: {msg}")]
pub struct TemplateError {
    /// Op name.
    pub op: String,
    /// What is unsupported or wrong.
    pub msg: String,
}

/// How a node runs.
#[derive(Clone, Debug, PartialEq)]
pub enum Lowered {
    /// A kernel. Its parameters are the operands, then the results, then `consts`
    /// (tables the template computed at build time, stored with the weights).
    Kernel {
        /// The kernel.
        kernel: Kernel,
        /// Layouts it wants some weight operands in (packed at build time).
        packs: Vec<pack::OperandPack>,
        /// Constant tables passed after the results.
        consts: Vec<Tensor>,
        /// (result, operand) pairs: the result is written in place into the operand's
        /// buffer (the serving form's KV-pool writes); the kernel writes only what
        /// changes.
        in_place: Vec<(usize, usize)>,
    },
    /// Result 0 has operand 0's bytes (reshape, squeeze, unsqueeze): no code.
    Alias,
    /// Result 0 is this constant.
    Constant(Tensor),
    /// Appends to layer `layer`'s KV cache and returns the whole cache: the runtime
    /// owns the cache, so it runs this node itself.
    KvAppend {
        /// The layer attribute.
        layer: i64,
    },
}

pub(crate) type TResult<T> = Result<T, String>;

/// Lowers one node. `name` names the kernel (unique within a module is the caller's
/// business); `ins`/`outs` are the operand and result types.
pub fn lower(
    node: &Node,
    ins: &[&TensorType],
    outs: &[&TensorType],
    name: &str,
) -> Result<Lowered, TemplateError> {
    let err = |msg: String| TemplateError {
        op: node.op.name().to_string(),
        msg,
    };
    // Block formats are for weights, and for the q8_kv KV pools `paged_kv_write` and
    // `paged_qkv_write` write in place and `paged_attention` reads.
    let paged = matches!(
        node.op,
        Op::PagedKvWrite | Op::PagedQkvWrite | Op::PagedAttention
    );
    let kv_pool = |t: &&TensorType| paged && t.dtype == DType::Q8Kv;
    if let Some(t) = outs.iter().find(|t| t.dtype.is_quantized() && !kv_pool(t)) {
        return Err(err(format!("result type {t} is block-quantized")));
    }
    for t in ins {
        if t.dtype.is_quantized() && quant_block(t.dtype).is_none() && !kv_pool(t) {
            return Err(err(format!(
                "operand type {t}: {} blocks are not supported by the kernels yet",
                t.dtype
            )));
        }
    }
    let op = node.op;
    let r = match op {
        Op::Reshape | Op::Squeeze | Op::Unsqueeze => {
            if ins.first().map(|t| t.dtype.is_quantized()) == Some(true) {
                // A reshaped block-quantized weight must be dequantized: copy.
                layout::copy(node, ins, outs, name).map(plain)
            } else {
                Ok(Lowered::Alias)
            }
        }
        Op::Constant => match node.attrs.get("value") {
            Some(llmc_ir::Attr::Tensor(t)) => Ok(Lowered::Constant(t.clone())),
            _ => Err("missing attribute `value`".to_string()),
        },
        Op::KvAppend => match node.attrs.get("layer") {
            Some(llmc_ir::Attr::Int(l)) => Ok(Lowered::KvAppend { layer: *l }),
            _ => Err("missing attribute `layer`".to_string()),
        },
        _ if op.flags().has(llmc_ir::ops::Flags::ELEMENTWISE) => {
            elementwise::elementwise(node, ins, outs, name).map(plain)
        }
        Op::ReduceSum | Op::ReduceMean | Op::ReduceMax | Op::ReduceMin | Op::ReduceProd => {
            reduce::reduce(node, ins, outs, name).map(plain)
        }
        Op::ArgMax | Op::ArgMin => reduce::arg_extreme(node, ins, outs, name).map(plain),
        Op::Softmax | Op::LogSoftmax => reduce::softmax(node, ins, outs, name).map(plain),
        Op::CumSum | Op::CumProd => reduce::cumsum(node, ins, outs, name).map(plain),
        Op::Dims => index::dims(node, outs, name).map(plain),
        Op::GatherNd => index::gather_nd(node, ins, outs, name).map(plain),
        Op::ScatterElements | Op::ScatterNd => index::scatter(node, ins, outs, name).map(plain),
        Op::TopK => index::top_k(node, ins, outs, name).map(plain),
        Op::Conv | Op::ConvTranspose => cnn::conv(node, ins, outs, name).map(plain),
        Op::MaxPool | Op::AvgPool => cnn::pool(node, ins, outs, name).map(plain),
        Op::MatMul => linalg::matmul(node, ins, outs, name).map(plain),
        Op::Linear | Op::LinearAct => {
            linalg::linear(node, ins, outs, name).map(|(kernel, packs)| Lowered::Kernel {
                kernel,
                packs,
                consts: Vec::new(),
                in_place: Vec::new(),
            })
        }
        Op::Resize => {
            resize::resize(node, ins, outs, name).map(|(kernel, consts)| Lowered::Kernel {
                kernel,
                packs: Vec::new(),
                consts,
                in_place: Vec::new(),
            })
        }
        Op::Gather => {
            layout::gather(node, ins, outs, name).map(|(kernel, packs)| Lowered::Kernel {
                kernel,
                packs,
                consts: Vec::new(),
                in_place: Vec::new(),
            })
        }
        Op::Transpose
        | Op::Slice
        | Op::Expand
        | Op::Tile
        | Op::Trilu
        | Op::Pad
        | Op::GatherElements
        | Op::Concat
        | Op::Split => layout::layout(node, ins, outs, name).map(plain),
        Op::Glu => elementwise::glu(node, ins, outs, name).map(plain),
        Op::RmsNorm | Op::LayerNorm => nn::norm(node, ins, outs, name).map(plain),
        Op::Rope => nn::rope(node, ins, outs, name).map(|(kernel, consts)| Lowered::Kernel {
            kernel,
            packs: Vec::new(),
            consts,
            in_place: Vec::new(),
        }),
        Op::Attention => nn::attention(node, ins, outs, name).map(plain),
        Op::FlashAttention => nn::flash_attention(node, ins, outs, name).map(plain),
        Op::PagedKvWrite => paged::kv_write(node, ins, outs, name).map(|kernel| Lowered::Kernel {
            kernel,
            packs: Vec::new(),
            consts: Vec::new(),
            in_place: vec![(0, 2), (1, 3)],
        }),
        Op::PagedQkvWrite => {
            paged::qkv_write(node, ins, outs, name).map(|(kernel, consts)| Lowered::Kernel {
                kernel,
                packs: Vec::new(),
                consts,
                in_place: vec![(0, 1), (1, 2)],
            })
        }
        Op::PagedAttention => paged::attention(node, ins, outs, name).map(plain),
        other => Err(format!("no kernel template for `{other}` yet")),
    };
    r.map_err(err)
}

// ----- shared helpers -----

/// A kernel that takes its operands as they are.
fn plain(kernel: Kernel) -> Lowered {
    Lowered::Kernel {
        kernel,
        packs: Vec::new(),
        consts: Vec::new(),
        in_place: Vec::new(),
    }
}

/// The kernel parameters of a node: a builder, the operand buffers, the result buffers.
pub(crate) fn setup(
    name: &str,
    ins: &[&TensorType],
    outs: &[&TensorType],
) -> TResult<(KernelBuilder, Vec<BufId>, Vec<BufId>)> {
    let mut kb = KernelBuilder::new(name);
    let mut i_bufs = Vec::new();
    for (k, t) in ins.iter().enumerate() {
        let ty = storage_ty(t.dtype)?;
        i_bufs.push(kb.param(&format!("in{k}"), ty, Role::In));
    }
    let mut o_bufs = Vec::new();
    for (k, t) in outs.iter().enumerate() {
        let ty = storage_ty(t.dtype)?;
        let n = if outs.len() == 1 {
            "out".to_string()
        } else {
            format!("out{k}")
        };
        o_bufs.push(kb.param(&n, ty, Role::Out));
    }
    Ok((kb, i_bufs, o_bufs))
}

/// The buffer element type of a dtype (block formats are raw bytes).
pub(crate) fn storage_ty(d: DType) -> TResult<Ty> {
    if d.is_quantized() {
        return Ok(Ty::U8);
    }
    Ty::of(d).ok_or_else(|| format!("dtype {d} has no loop-IR type"))
}

/// The compute type of a dtype's elements.
pub(crate) fn compute_ty(d: DType) -> TResult<Ty> {
    Ok(storage_ty(d.compute_type())?.compute())
}

/// Row-major strides of a shape, as dims.
pub(crate) fn strides(shape: &[Dim]) -> Vec<Dim> {
    let mut s = vec![Dim::c(1); shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1].mul(&shape[i + 1]);
    }
    s
}

/// Strides of an operand of shape `inp` read at the coordinates of `out` under numpy
/// broadcasting (right-aligned; 0 on broadcast and size-1 dims).
pub(crate) fn broadcast_strides(out: &[Dim], inp: &[Dim]) -> Vec<Dim> {
    let st = strides(inp);
    let off = out.len() - inp.len().min(out.len());
    (0..out.len())
        .map(|d| {
            if d < off {
                return Dim::c(0);
            }
            let k = d - off;
            if inp[k] == Dim::c(1) {
                Dim::c(0)
            } else {
                st[k].clone()
            }
        })
        .collect()
}

/// A rough element count used to decide whether a loop nest is worth threads: each
/// symbol counts as 64, inside expressions too (a merged `384 * batch * seq` is
/// 1.5 M, not 64: it was, and MiniLM's residual adds ran on one thread). A nest that
/// turns out small at run time still runs inline (the lowering's cost check).
pub(crate) fn work_estimate(dims: &[Dim]) -> i64 {
    dims.iter()
        .map(|d| d.eval(&|_| Some(64)).unwrap_or(64).max(0))
        .fold(1i64, |a, b| a.saturating_mul(b))
}

/// Loop nests with fewer elements than this run on one thread.
pub(crate) const PARALLEL_MIN: i64 = 1 << 14;

thread_local! {
    /// Set while [`gpu::lower`] runs a CPU template for the generic GPU mapping: every
    /// loop nest then gets a parallel outer loop (a GPU has threads to spare) and flat
    /// loops are not chunked (one iteration per GPU thread).
    static GPU_MAPPING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// True while templates build a kernel for the generic GPU mapping.
pub(crate) fn gpu_mapping() -> bool {
    GPU_MAPPING.with(|g| g.get())
}

/// Runs `f` with [`gpu_mapping`] set (restored afterwards, also on error).
pub(crate) fn with_gpu_mapping<T>(f: impl FnOnce() -> T) -> T {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            GPU_MAPPING.with(|g| g.set(self.0));
        }
    }
    let _reset = Reset(GPU_MAPPING.with(|g| g.replace(true)));
    f()
}

/// Whether a loop nest of `estimate` elements deserves threads: from
/// [`PARALLEL_MIN`] on for CPU threads, always for the GPU mapping.
pub(crate) fn worth_threads(estimate: i64) -> bool {
    gpu_mapping() || estimate >= PARALLEL_MIN
}

/// A parallel chunk of a flat loop runs this many iterations.
pub(crate) const CHUNK: i64 = 1 << 12;

/// Merges adjacent dims that every operand walks contiguously (stride of the outer =
/// stride of the inner * its extent) and drops constant-1 dims. Returns the merged
/// extents and, per operand, the merged strides.
pub(crate) fn merge_dims(extents: &[Dim], strides: &[Vec<Dim>]) -> (Vec<Dim>, Vec<Vec<Dim>>) {
    let mut ext: Vec<Dim> = Vec::new();
    let mut st: Vec<Vec<Dim>> = vec![Vec::new(); strides.len()];
    for d in 0..extents.len() {
        if extents[d] == Dim::c(1) {
            continue;
        }
        let mergeable = !ext.is_empty()
            && strides.iter().enumerate().all(|(o, s)| {
                // The previous (outer) group's stride must equal this dim's stride times
                // its extent.
                st[o].last() == Some(&s[d].mul(&extents[d]))
            });
        if mergeable {
            let last = ext.len() - 1;
            ext[last] = ext[last].mul(&extents[d]);
            for (o, s) in strides.iter().enumerate() {
                st[o][last] = s[d].clone();
            }
        } else {
            ext.push(extents[d].clone());
            for (o, s) in strides.iter().enumerate() {
                st[o].push(s[d].clone());
            }
        }
    }
    (ext, st)
}

/// Emits a loop nest over `extents` (outermost first) and calls `body` with the
/// coordinates. The outermost loop is parallel when the nest is big enough, the
/// innermost is vectorized; a single big loop is split into parallel chunks of
/// vectorized iterations.
pub(crate) fn loop_nest(
    kb: &mut KernelBuilder,
    extents: &[Dim],
    vectorize: bool,
    body: &mut dyn FnMut(&mut KernelBuilder, &[Expr]),
) {
    let parallel = worth_threads(work_estimate(extents));
    loop_nest_par(kb, extents, parallel, vectorize, body)
}

/// [`loop_nest`] with the parallel decision made by the caller (a nest whose body
/// does much work per element may deserve threads although it has few elements).
pub(crate) fn loop_nest_par(
    kb: &mut KernelBuilder,
    extents: &[Dim],
    parallel: bool,
    vectorize: bool,
    body: &mut dyn FnMut(&mut KernelBuilder, &[Expr]),
) {
    let ex: Vec<Expr> = extents.iter().map(|d| kb.dim(d)).collect();
    if gpu_mapping() && ex.len() > 1 {
        // One GPU thread per element: the nest flattened, coordinates by div/mod.
        let total = ex.iter().skip(1).fold(ex[0].clone(), |a, e| a * e.clone());
        let total = kb.let_("total", total);
        kb.for_("i", 0, total, LoopTag::Parallel, |kb, i| {
            let mut rest = i;
            let mut coords = vec![Expr::i(0); ex.len()];
            for d in (1..ex.len()).rev() {
                coords[d] = kb.let_("c", rest.clone() % ex[d].clone());
                rest = kb.let_("q", rest / ex[d].clone());
            }
            coords[0] = rest;
            body(kb, &coords);
        });
        return;
    }
    let parallel = parallel || gpu_mapping();
    if ex.len() == 1 && parallel {
        let n = ex[0].clone();
        chunked(kb, n, vectorize, &mut |kb, i| body(kb, &[i]));
        return;
    }
    let depth = ex.len();
    let tags: Vec<LoopTag> = (0..depth)
        .map(|d| {
            if d == depth - 1 && vectorize {
                LoopTag::Vectorize(8)
            } else if d == 0 && parallel {
                LoopTag::Parallel
            } else {
                LoopTag::Serial
            }
        })
        .collect();
    let mut coords = Vec::new();
    nest(kb, &ex, &tags, &mut coords, body);
}

fn nest(
    kb: &mut KernelBuilder,
    ex: &[Expr],
    tags: &[LoopTag],
    coords: &mut Vec<Expr>,
    body: &mut dyn FnMut(&mut KernelBuilder, &[Expr]),
) {
    let d = coords.len();
    if d == ex.len() {
        body(kb, coords);
        return;
    }
    kb.for_("i", 0, ex[d].clone(), tags[d], |kb, i| {
        coords.push(i);
        nest(kb, ex, tags, coords, body);
        coords.pop();
    });
}

/// `for i in 0..n` split into parallel chunks of [`CHUNK`] iterations.
pub(crate) fn chunked(
    kb: &mut KernelBuilder,
    n: Expr,
    vectorize: bool,
    body: &mut dyn FnMut(&mut KernelBuilder, Expr),
) {
    if gpu_mapping() {
        // One iteration per GPU thread.
        kb.for_("i", 0, n, LoopTag::Parallel, |kb, i| body(kb, i));
        return;
    }
    let chunks = (n.clone() + (CHUNK - 1)) / CHUNK;
    kb.for_("c", 0, chunks, LoopTag::Parallel, |kb, c| {
        let lo = kb.let_("lo", c * CHUNK);
        let hi = kb.let_("hi", (lo.clone() + CHUNK).min(n.clone()));
        let tag = if vectorize {
            LoopTag::Vectorize(8)
        } else {
            LoopTag::Serial
        };
        kb.for_("i", lo, hi, tag, |kb, i| body(kb, i));
    });
}

/// Σ coords[d] * strides[d].
pub(crate) fn offset(kb: &mut KernelBuilder, coords: &[Expr], strides: &[Dim]) -> Expr {
    let mut e = Expr::i(0);
    for (c, s) in coords.iter().zip(strides) {
        let s = kb.dim(s);
        e = e + c.clone() * s;
    }
    e
}

/// Whether the kernels read weights stored as `d` (plain types, and the block formats
/// with a kernel path: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K..Q6_K, IQ4_NL, IQ4_XS, and
/// llmc's own). A block format without one would be dequantized before code
/// generation (`llmc_backend::fallback`).
pub fn reads_dtype(d: DType) -> bool {
    !d.is_quantized() || quant_block(d).is_some()
}

/// (elements per block, bytes per block) of the block formats the kernels read.
pub(crate) fn quant_block(d: DType) -> Option<(i64, i64)> {
    match d {
        DType::Q8_0
        | DType::Q4_0
        | DType::Q4_1
        | DType::Q5_0
        | DType::Q5_1
        | DType::Q4K
        | DType::Q5K
        | DType::Q6K
        | DType::Q3K
        | DType::Q2K
        | DType::IQ4NL
        | DType::IQ4XS
        | DType::Q4_0G64
        | DType::Q4_1G64
        | DType::Q4_0G128
        | DType::Q4_1G128
        | DType::Q8_0S24
        | DType::Q8_0S832 => Some((d.block_len() as i64, d.block_bytes() as i64)),
        _ => None,
    }
}

/// Element `index` of a buffer holding `dtype`, converted to its compute type;
/// block formats are dequantized (llama.cpp's block layouts).
pub(crate) fn load_elem(kb: &KernelBuilder, buf: BufId, dtype: DType, index: Expr) -> Expr {
    match quant_block(dtype) {
        Some((bl, bb)) => {
            let blk = index.clone() / bl;
            let j = index % bl;
            dequant(buf, dtype, blk * bb, j)
        }
        None => {
            let t = kb.buf_ty(buf);
            Expr::load(buf, index).cast(t.compute())
        }
    }
}

/// The f32 value of element `j` (0..32; 0..256 for Q4_K; 0..64 or 0..128 for the int4
/// groups) of the block starting at byte `base`.
pub(crate) fn dequant(buf: BufId, dtype: DType, base: Expr, j: Expr) -> Expr {
    if dtype.sparse_keep().is_some() {
        return dequant_s24(buf, base, j);
    }
    if let Some(sub) = match dtype {
        DType::Q4_0G64 | DType::Q4_0G128 => Some((DType::Q4_0, 2)),
        DType::Q4_1G64 | DType::Q4_1G128 => Some((DType::Q4_1, 4)),
        _ => None,
    } {
        // A group is its scale (and minimum) and Q4_0-ordered nibble blocks: element
        // `j` is element `j mod 32` of a Q4_0 / Q4_1 block whose nibbles sit `16 (j /
        // 32)` bytes further on (read as if its header were just before them).
        let (base_fmt, hdr) = sub;
        let blk = j.clone() / 32;
        return dequant_group(buf, base_fmt, hdr, base, blk, j % 32);
    }
    if matches!(dtype, DType::Q4K | DType::Q5K) {
        return dequant_q45k(buf, base, j, dtype == DType::Q5K);
    }
    if dtype == DType::Q6K {
        return dequant_q6k(buf, base, j);
    }
    if dtype == DType::Q3K {
        return dequant_q3k(buf, base, j);
    }
    if dtype == DType::Q2K {
        return dequant_q2k(buf, base, j);
    }
    if dtype == DType::IQ4NL || dtype == DType::IQ4XS {
        return dequant_iq4(buf, dtype, base, j);
    }
    let f16 = |off: Expr| Expr::LoadRaw(buf, Box::new(off), Ty::F16).cast(Ty::F32);
    let byte = |off: Expr| Expr::LoadRaw(buf, Box::new(off), Ty::U8);
    let nibble = |b: Expr, j: Expr| {
        let lo = Expr::bin(crate::loopir::BinOp::And, b.clone(), Expr::Int(15, Ty::U8));
        let hi = Expr::bin(crate::loopir::BinOp::Shr, b, Expr::Int(4, Ty::U8));
        Expr::select(j.lt(Expr::i(16)), lo, hi).cast(Ty::F32)
    };
    match dtype {
        DType::Q8_0 => {
            let d = f16(base.clone());
            let q = Expr::LoadRaw(buf, Box::new(base + 2 + j), Ty::I8).cast(Ty::F32);
            Expr::bin(crate::loopir::BinOp::Mul, d, q)
        }
        DType::Q5_0 | DType::Q5_1 => {
            // The nibble plus the fifth bit from qh (bit j: byte j / 8, bit j % 8).
            let (qh, qs) = if dtype == DType::Q5_0 { (2, 6) } else { (4, 8) };
            let d = f16(base.clone());
            let b = byte(base.clone() + qs + (j.clone() % 16));
            let h = byte(base.clone() + qh + j.clone() / 8);
            let bit = Expr::bin(
                crate::loopir::BinOp::And,
                Expr::bin(crate::loopir::BinOp::Shr, h, (j.clone() % 8).cast(Ty::U8)),
                Expr::Int(1, Ty::U8),
            );
            let q = Expr::bin(
                crate::loopir::BinOp::Add,
                nibble(b, j),
                Expr::bin(
                    crate::loopir::BinOp::Mul,
                    bit.cast(Ty::F32),
                    Expr::f(16.0, Ty::F32),
                ),
            );
            if dtype == DType::Q5_0 {
                let q = Expr::bin(crate::loopir::BinOp::Sub, q, Expr::f(16.0, Ty::F32));
                Expr::bin(crate::loopir::BinOp::Mul, q, d)
            } else {
                let m = f16(base + 2);
                Expr::bin(
                    crate::loopir::BinOp::Add,
                    Expr::bin(crate::loopir::BinOp::Mul, q, d),
                    m,
                )
            }
        }
        DType::Q4_0 => {
            let d = f16(base.clone());
            let b = byte(base + 2 + (j.clone() % 16));
            let q = Expr::bin(
                crate::loopir::BinOp::Sub,
                nibble(b, j),
                Expr::f(8.0, Ty::F32),
            );
            Expr::bin(crate::loopir::BinOp::Mul, q, d)
        }
        _ => {
            // Q4_1: q * d + m.
            let d = f16(base.clone());
            let m = f16(base.clone() + 2);
            let b = byte(base + 4 + (j.clone() % 16));
            Expr::bin(
                crate::loopir::BinOp::Add,
                Expr::bin(crate::loopir::BinOp::Mul, nibble(b, j), d),
                m,
            )
        }
    }
}

/// Element `j` (0..32) of the `q8_0_2of4` or `q8_0_8of32` block at `base` (at most
/// 16 or 8 kept elements, as llmc writes it): `d ·` its code if kept, else 0. Its code's index is the number
/// of kept elements before it: the popcount of the mask below bit `j` (a SWAR
/// popcount in i64, exact for 32 bits).
fn dequant_s24(buf: BufId, base: Expr, j: Expr) -> Expr {
    use crate::loopir::BinOp::{Add, And, Mul, Shl, Shr, Sub};
    let d = Expr::LoadRaw(buf, Box::new(base.clone()), Ty::F16).cast(Ty::F32);
    let mask = Expr::LoadRaw(buf, Box::new(base.clone() + 2), Ty::U32).cast(Ty::I64);
    let c = |v: i64| Expr::Int(v, Ty::I64);
    let and = |a: Expr, m: i64| Expr::bin(And, a, c(m));
    let shr = |a: Expr, n: i64| Expr::bin(Shr, a, c(n));
    let below = Expr::bin(Sub, Expr::bin(Shl, c(1), j.clone()), c(1));
    let v = Expr::bin(And, mask.clone(), below);
    let v = Expr::bin(Sub, v.clone(), and(shr(v, 1), 0x5555_5555));
    let v = Expr::bin(
        Add,
        and(v.clone(), 0x3333_3333),
        and(shr(v, 2), 0x3333_3333),
    );
    let v = and(Expr::bin(Add, v.clone(), shr(v, 4)), 0x0f0f_0f0f);
    let rank = and(shr(Expr::bin(Mul, v, c(0x0101_0101)), 24), 0xff);
    let kept = Expr::bin(And, Expr::bin(Shr, mask, j), c(1)).eq_(c(1));
    // A dropped element reads the block's first code (its rank could point past the
    // block's last one), and gives 0.
    let rank = Expr::select(kept.clone(), rank, Expr::i(0));
    let q = Expr::LoadRaw(buf, Box::new(base + 6 + rank), Ty::I8).cast(Ty::F32);
    Expr::select(kept, Expr::bin(Mul, d, q), Expr::f(0.0, Ty::F32))
}

/// Element `j` (0..32) of sub-block `blk` of the int4 group at `base` (`hdr` header
/// bytes, `fmt` Q4_0 or Q4_1): the group's `d` (and `m`), the sub-block's nibbles.
fn dequant_group(buf: BufId, fmt: DType, hdr: i64, base: Expr, blk: Expr, j: Expr) -> Expr {
    use crate::loopir::BinOp::{Add, And, Mul, Shr, Sub};
    let f16 = |off: Expr| Expr::LoadRaw(buf, Box::new(off), Ty::F16).cast(Ty::F32);
    let d = f16(base.clone());
    let b = Expr::LoadRaw(
        buf,
        Box::new(base.clone() + hdr + blk * 16 + (j.clone() % 16)),
        Ty::U8,
    );
    let lo = Expr::bin(And, b.clone(), Expr::Int(15, Ty::U8));
    let hi = Expr::bin(Shr, b, Expr::Int(4, Ty::U8));
    let q = Expr::select(j.lt(Expr::i(16)), lo, hi).cast(Ty::F32);
    if fmt == DType::Q4_0 {
        Expr::bin(Mul, Expr::bin(Sub, q, Expr::f(8.0, Ty::F32)), d)
    } else {
        Expr::bin(Add, Expr::bin(Mul, q, d), f16(base + 2))
    }
}

/// The f32 value of element `j` (0..32; Q6_K: 0..256) of row `c` (0..16) in the block
/// group at byte `group` of a Q8_0/Q4_0/Q4_1/Q5/Q6_K weight packed as
/// [`pack::Pack::Tile16`]: the same
/// arithmetic as [`dequant`] on the row's block as stored, so a row reads the same
/// values either way.
pub(crate) fn dequant_tile16(buf: BufId, dtype: DType, group: Expr, c: Expr, j: Expr) -> Expr {
    use crate::loopir::BinOp::{Add, And, Mul, Shr, Sub};
    let lanes = crate::QTile::LANES as i64;
    let f16 = |off: Expr| Expr::LoadRaw(buf, Box::new(off), Ty::F16).cast(Ty::F32);
    let d = f16(group.clone() + c.clone() * 2);
    if dtype == DType::Q6K {
        // Element j (0..256) of the super-block: block j / 32's quant e = j mod 32,
        // `(D sc) (q - 32)` as `dequant_q6k`.
        let e = j.clone() % 32;
        let lane = c.clone() * 2 + e.clone() % 2;
        let sc = Expr::LoadRaw(
            buf,
            Box::new(
                group.clone() + pack::tile16_q6k_scale(0, 0) as i64 + j.clone() / 16 * lanes + c,
            ),
            Ty::I8,
        );
        let qs = group + pack::TILE16_Q6K_QUANTS as i64 + j / 32 * pack::TILE16_Q6K_BLOCK as i64;
        let p = e.clone() / 2;
        let b = Expr::LoadRaw(
            buf,
            Box::new(qs.clone() + p.clone() % 8 * 32 + lane.clone()),
            Ty::U8,
        );
        let lo = Expr::bin(And, b.clone(), Expr::Int(15, Ty::U8));
        let hi = Expr::bin(Shr, b, Expr::Int(4, Ty::U8));
        let nib = Expr::select(e.lt(Expr::i(16)), lo, hi);
        let (h0, _) = pack::tile16_q6k_high(0, 0);
        let hb = Expr::LoadRaw(
            buf,
            Box::new(qs + h0 as i64 + p.clone() % 4 * 32 + lane),
            Ty::U8,
        );
        let hb = Expr::bin(
            And,
            Expr::bin(Shr, hb, (p / 4 * 2).cast(Ty::U8)),
            Expr::Int(3, Ty::U8),
        );
        let q = Expr::bin(
            crate::loopir::BinOp::Or,
            nib,
            Expr::bin(crate::loopir::BinOp::Shl, hb, Expr::Int(4, Ty::U8)),
        );
        let q = Expr::bin(Sub, q.cast(Ty::F32), Expr::f(32.0, Ty::F32));
        return Expr::bin(Mul, Expr::bin(Mul, d, sc.cast(Ty::F32)), q);
    }
    // Byte of quant j in the chunk order of pack::tile16_quant.
    let lane = c.clone() * 2 + j.clone() % 2;
    let (qs, masks) = pack::tile16_offsets(dtype);
    let qs = group.clone() + qs as i64;
    if dtype == DType::Q8_0 {
        let q = Expr::LoadRaw(buf, Box::new(qs + j / 2 * 32 + lane), Ty::I8).cast(Ty::F32);
        return Expr::bin(Mul, d, q);
    }
    let b = Expr::LoadRaw(
        buf,
        Box::new(qs + j.clone() % 16 / 2 * 32 + lane.clone()),
        Ty::U8,
    );
    let lo = Expr::bin(And, b.clone(), Expr::Int(15, Ty::U8));
    let hi = Expr::bin(Shr, b, Expr::Int(4, Ty::U8));
    let nib = Expr::select(j.clone().lt(Expr::i(16)), lo, hi);
    if dtype == DType::IQ4NL {
        return Expr::bin(Mul, d, iq4_level(nib));
    }
    let mut q = nib.cast(Ty::F32);
    if matches!(dtype, DType::Q5_0 | DType::Q5_1) {
        // Bit `lane` of pair j / 2's mask (pack::tile16_fifth): byte lane / 8.
        let at = group.clone() + masks as i64 + j / 2 * 4 + lane.clone() / 8;
        let byte = Expr::LoadRaw(buf, Box::new(at), Ty::U8);
        let bit = Expr::bin(
            And,
            Expr::bin(Shr, byte, (lane % 8).cast(Ty::U8)),
            Expr::Int(1, Ty::U8),
        );
        q = Expr::bin(
            Add,
            q,
            Expr::bin(Mul, bit.cast(Ty::F32), Expr::f(16.0, Ty::F32)),
        );
    }
    match dtype {
        DType::Q4_0 => Expr::bin(Mul, Expr::bin(Sub, q, Expr::f(8.0, Ty::F32)), d),
        DType::Q5_0 => Expr::bin(Mul, Expr::bin(Sub, q, Expr::f(16.0, Ty::F32)), d),
        _ => {
            let m = f16(group + (c + lanes) * 2);
            Expr::bin(Add, Expr::bin(Mul, q, d), m)
        }
    }
}

/// The f32 value of element `j` (0..256) of the Q4_K (Q5_K when `five`) super-block at
/// byte `base` ([`crate::loopir::QFmt::Q4K`], [`crate::loopir::QFmt::Q5K`]):
/// `(D sc) q - Dmin mn`, the products exact in f32 and one rounding after, so it
/// equals llama.cpp's decoding rounded to f32.
/// The 6-bit scale and minimum (u8) of sub-block `sub` (0..8) of the Q4_K/Q5_K
/// super-block at byte `base` of `buf`: the branch-free decode of its 12 packed scale
/// bytes ([`crate::loopir::QFmt::Q4K`]).
pub(crate) fn k4_scale_min(buf: BufId, base: &Expr, sub: &Expr) -> (Expr, Expr) {
    use crate::loopir::BinOp::{And, Or, Shl, Shr};
    let byte = |off: Expr| Expr::LoadRaw(buf, Box::new(off), Ty::U8);
    let u8c = |v: i64| Expr::Int(v, Ty::U8);
    let b0 = byte(base.clone() + 4 + sub.clone() % 4);
    let b1 = byte(base.clone() + 8 + sub.clone());
    let b2 = byte(base.clone() + 4 + sub.clone());
    let top = |b: Expr| Expr::bin(Shl, Expr::bin(Shr, b, u8c(6)), u8c(4));
    let low = sub.clone().lt(Expr::i(4));
    let sc = Expr::select(
        low.clone(),
        Expr::bin(And, b0.clone(), u8c(63)),
        Expr::bin(Or, Expr::bin(And, b1.clone(), u8c(15)), top(b0)),
    );
    let mn = Expr::select(
        low,
        Expr::bin(And, b1.clone(), u8c(63)),
        Expr::bin(Or, Expr::bin(Shr, b1, u8c(4)), top(b2)),
    );
    (sc, mn)
}

fn dequant_q45k(buf: BufId, base: Expr, j: Expr, five: bool) -> Expr {
    use crate::loopir::BinOp::{And, Mul, Or, Shl, Shr, Sub};
    let f16 = |off: Expr| Expr::LoadRaw(buf, Box::new(off), Ty::F16).cast(Ty::F32);
    let byte = |off: Expr| Expr::LoadRaw(buf, Box::new(off), Ty::U8);
    let u8c = |v: i64| Expr::Int(v, Ty::U8);
    let sub = j.clone() / 32;
    let (sc, mn) = k4_scale_min(buf, &base, &sub);
    let qs = if five { 48 } else { 16 };
    let q = byte(base.clone() + qs + (j.clone() / 64) * 32 + j.clone() % 32);
    let shift = ((sub.clone() % 2) * 4).cast(Ty::U8);
    let mut q = Expr::bin(And, Expr::bin(Shr, q, shift), u8c(15));
    if five {
        let h = byte(base.clone() + 16 + j % 32);
        let h = Expr::bin(And, Expr::bin(Shr, h, sub.cast(Ty::U8)), u8c(1));
        q = Expr::bin(Or, q, Expr::bin(Shl, h, u8c(4)));
    }
    let q = q.cast(Ty::F32);
    let d = Expr::bin(Mul, f16(base.clone()), sc.cast(Ty::F32));
    let m = Expr::bin(Mul, f16(base + 2), mn.cast(Ty::F32));
    Expr::bin(Sub, Expr::bin(Mul, d, q), m)
}

/// IQ4_NL's level `kv[q]` (f32) for the nibble `q` (u8, 0..15): a tree of selects on
/// its bits (the loop IR has no constant arrays in expressions).
pub(crate) fn iq4_level(q: Expr) -> Expr {
    use crate::loopir::BinOp::And;
    fn tree(q: &Expr, bit: u32, lo: usize, n: usize) -> Expr {
        if n == 1 {
            return Expr::f(llmc_ir::quant::KVALUES_IQ4NL[lo] as f64, Ty::F32);
        }
        let set = Expr::bin(And, q.clone(), Expr::Int(1 << bit, Ty::U8)).ne_(Expr::Int(0, Ty::U8));
        let half = n / 2;
        Expr::select(
            set,
            tree(q, bit.wrapping_sub(1), lo + half, half),
            tree(q, bit.wrapping_sub(1), lo, half),
        )
    }
    tree(&q, 3, 0, 16)
}

/// The f32 value of element `j` (0..32 of an IQ4_NL block, 0..256 of an IQ4_XS
/// super-block) at byte `base`: `d · kv[q]` (IQ4_XS: `(D (ls - 32)) · kv[q]`, the
/// scale exact in f32, one rounding after, as the reference decoder).
fn dequant_iq4(buf: BufId, dtype: DType, base: Expr, j: Expr) -> Expr {
    use crate::loopir::BinOp::{And, Mul, Or, Shl, Shr, Sub};
    let byte = |off: Expr| Expr::LoadRaw(buf, Box::new(off), Ty::U8);
    let u8c = |v: i64| Expr::Int(v, Ty::U8);
    let big_d = Expr::LoadRaw(buf, Box::new(base.clone()), Ty::F16).cast(Ty::F32);
    let (d, qs, e) = if dtype == DType::IQ4XS {
        let ib = j.clone() / 32;
        let sl = byte(base.clone() + 4 + ib.clone() / 2);
        let sl = Expr::bin(
            And,
            Expr::bin(Shr, sl, ((ib.clone() % 2) * 4).cast(Ty::U8)),
            u8c(15),
        );
        let sh = Expr::LoadRaw(buf, Box::new(base.clone() + 2), Ty::U16);
        let sh = Expr::bin(
            And,
            Expr::bin(Shr, sh, (ib.clone() * 2).cast(Ty::U16)),
            Expr::Int(3, Ty::U16),
        );
        let ls = Expr::bin(Or, sl, Expr::bin(Shl, sh.cast(Ty::U8), u8c(4)));
        let ls = Expr::bin(Sub, ls.cast(Ty::F32), Expr::f(32.0, Ty::F32));
        (Expr::bin(Mul, big_d, ls), base + 8 + ib * 16, j % 32)
    } else {
        (big_d, base + 2, j)
    };
    let b = byte(qs + e.clone() % 16);
    let lo = Expr::bin(And, b.clone(), u8c(15));
    let hi = Expr::bin(Shr, b, u8c(4));
    let q = Expr::select(e.lt(Expr::i(16)), lo, hi);
    Expr::bin(Mul, d, iq4_level(q))
}

/// The f32 value of element `j` (0..256) of the Q3_K super-block at byte `base`
/// ([`crate::loopir::QFmt::Q3K`]): `(D s) q`, `D s` exact in f32 and one rounding
/// after, as the reference decoder.
fn dequant_q3k(buf: BufId, base: Expr, j: Expr) -> Expr {
    use crate::loopir::BinOp::{And, Mul, Or, Shl, Shr, Sub};
    let byte = |off: Expr| Expr::LoadRaw(buf, Box::new(off), Ty::U8);
    let u8c = |v: i64| Expr::Int(v, Ty::U8);
    let (t, e) = (j.clone() / 32, j.clone() % 32);
    let (h, k) = (t.clone() / 4, t.clone() % 4);
    let q = byte(base.clone() + 32 + h.clone() * 32 + e.clone());
    let q = Expr::bin(And, Expr::bin(Shr, q, (k.clone() * 2).cast(Ty::U8)), u8c(3));
    let hm = byte(base.clone() + e.clone());
    let bit = Expr::bin(And, Expr::bin(Shr, hm, (h * 4 + k).cast(Ty::U8)), u8c(1));
    // q - 4 + 4 bit
    let q = Expr::bin(
        Sub,
        Expr::bin(Or, q, Expr::bin(Shl, bit, u8c(2))).cast(Ty::F32),
        Expr::f(4.0, Ty::F32),
    );
    // Scale index s = 2 t + (e >= 16): low nibble from byte s mod 8 (high nibble for
    // s >= 8), top 2 bits from byte 8 + s mod 4 at 2 (s / 4).
    let s = t * 2 + e / 16;
    let lo = byte(base.clone() + 96 + s.clone() % 8);
    let lo = Expr::bin(
        And,
        Expr::bin(Shr, lo, ((s.clone() / 8) * 4).cast(Ty::U8)),
        u8c(15),
    );
    let hi = byte(base.clone() + 104 + s.clone() % 4);
    let hi = Expr::bin(And, Expr::bin(Shr, hi, ((s / 4) * 2).cast(Ty::U8)), u8c(3));
    let sc = Expr::bin(Or, lo, Expr::bin(Shl, hi, u8c(4))).cast(Ty::F32);
    let sc = Expr::bin(Sub, sc, Expr::f(32.0, Ty::F32));
    let d = Expr::LoadRaw(buf, Box::new(base + 108), Ty::F16).cast(Ty::F32);
    Expr::bin(Mul, Expr::bin(Mul, d, sc), q)
}

/// The f32 value of element `j` (0..256) of the Q2_K super-block at byte `base`
/// ([`crate::loopir::QFmt::Q2K`]): `(D sc) q - Dmin mn`, every product exact in f32
/// and one rounding after, as the reference decoder.
fn dequant_q2k(buf: BufId, base: Expr, j: Expr) -> Expr {
    use crate::loopir::BinOp::{And, Mul, Shr, Sub};
    let byte = |off: Expr| Expr::LoadRaw(buf, Box::new(off), Ty::U8);
    let u8c = |v: i64| Expr::Int(v, Ty::U8);
    let (t, e) = (j.clone() / 32, j.clone() % 32);
    let (h, k) = (t.clone() / 4, t.clone() % 4);
    let q = byte(base.clone() + 16 + h * 32 + e);
    let q = Expr::bin(And, Expr::bin(Shr, q, (k * 2).cast(Ty::U8)), u8c(3)).cast(Ty::F32);
    // Sub-block j / 16: scale in the low nibble, minimum in the high one.
    let s = byte(base.clone() + j / 16);
    let sc = Expr::bin(And, s.clone(), u8c(15)).cast(Ty::F32);
    let mn = Expr::bin(Shr, s, u8c(4)).cast(Ty::F32);
    let f16 = |off: i64| Expr::LoadRaw(buf, Box::new(base.clone() + off), Ty::F16).cast(Ty::F32);
    let dq = Expr::bin(Mul, Expr::bin(Mul, f16(80), sc), q);
    Expr::bin(Sub, dq, Expr::bin(Mul, f16(82), mn))
}

/// The f32 value of element `j` (0..256) of the Q6_K super-block at byte `base`
/// ([`crate::loopir::QFmt::Q6K`]): `(D sc) (q - 32)`, `D sc` exact in f32 and one
/// rounding after, as the reference decoder.
fn dequant_q6k(buf: BufId, base: Expr, j: Expr) -> Expr {
    use crate::loopir::BinOp::{And, Mul, Or, Shl, Shr, Sub};
    let byte = |off: Expr| Expr::LoadRaw(buf, Box::new(off), Ty::U8);
    let u8c = |v: i64| Expr::Int(v, Ty::U8);
    let (h, c, e) = (j.clone() / 128, j.clone() % 128 / 32, j % 32);
    let lo = byte(base.clone() + h.clone() * 64 + (c.clone() % 2) * 32 + e.clone());
    let lo = Expr::bin(
        And,
        Expr::bin(Shr, lo, ((c.clone() / 2) * 4).cast(Ty::U8)),
        u8c(15),
    );
    let hi = byte(base.clone() + 128 + h.clone() * 32 + e.clone());
    let hi = Expr::bin(
        And,
        Expr::bin(Shr, hi, (c.clone() * 2).cast(Ty::U8)),
        u8c(3),
    );
    let q = Expr::bin(Or, lo, Expr::bin(Shl, hi, u8c(4))).cast(Ty::F32);
    let q = Expr::bin(Sub, q, Expr::f(32.0, Ty::F32));
    let sc = Expr::LoadRaw(
        buf,
        Box::new(base.clone() + 192 + h * 8 + c * 2 + e / 16),
        Ty::I8,
    );
    let d = Expr::LoadRaw(buf, Box::new(base + 208), Ty::F16).cast(Ty::F32);
    Expr::bin(Mul, Expr::bin(Mul, d, sc.cast(Ty::F32)), q)
}

/// Converts a compute value to a buffer's element type for a store.
pub(crate) fn to_storage(kb: &KernelBuilder, buf: BufId, v: Expr) -> Expr {
    let t = kb.buf_ty(buf);
    if kb.ty(&v) == t {
        v
    } else {
        v.cast(t)
    }
}

/// A float constant in type `t`.
pub(crate) fn fconst(v: f64, t: Ty) -> Expr {
    Expr::f(v, t)
}

/// `1 / l`, or 0 where `l` is 0: the normalizer of an online-softmax row whose keys
/// were all masked out (such a row's output is 0).
pub(crate) fn recip_or_zero(l: Expr, t: Ty) -> Expr {
    Expr::select(
        l.clone().ne_(fconst(0.0, t)),
        Expr::bin(crate::loopir::BinOp::Div, fconst(1.0, t), l),
        fconst(0.0, t),
    )
}

/// exp(x) as an expression (kept here so a faster polynomial can replace it once).
pub(crate) fn exp(x: Expr) -> Expr {
    Expr::un(UnOp::Exp, x)
}

/// The node's attribute reader with an error naming the attribute.
pub(crate) fn attr_int(node: &Node, name: &str) -> TResult<Option<i64>> {
    match node.attrs.get(name) {
        None => Ok(None),
        Some(llmc_ir::Attr::Int(v)) => Ok(Some(*v)),
        Some(other) => Err(format!(
            "attribute `{name}` must be an integer, got {other:?}"
        )),
    }
}

/// A float attribute (integers accepted).
pub(crate) fn attr_float(node: &Node, name: &str) -> TResult<Option<f64>> {
    match node.attrs.get(name) {
        None => Ok(None),
        Some(llmc_ir::Attr::Float(v)) => Ok(Some(*v)),
        Some(llmc_ir::Attr::Int(v)) => Ok(Some(*v as f64)),
        Some(other) => Err(format!("attribute `{name}` must be a float, got {other:?}")),
    }
}

/// A bool attribute with a default.
pub(crate) fn attr_bool(node: &Node, name: &str, default: bool) -> TResult<bool> {
    match node.attrs.get(name) {
        None => Ok(default),
        Some(llmc_ir::Attr::Bool(v)) => Ok(*v),
        Some(llmc_ir::Attr::Int(v)) if *v == 0 || *v == 1 => Ok(*v == 1),
        Some(other) => Err(format!("attribute `{name}` must be a bool, got {other:?}")),
    }
}

/// An integer-list attribute.
pub(crate) fn attr_ints<'a>(node: &'a Node, name: &str) -> TResult<Option<&'a [i64]>> {
    match node.attrs.get(name) {
        None => Ok(None),
        Some(llmc_ir::Attr::Ints(v)) => Ok(Some(v)),
        Some(llmc_ir::Attr::Floats(v)) if v.is_empty() => Ok(Some(&[])),
        Some(other) => Err(format!(
            "attribute `{name}` must be a list of integers, got {other:?}"
        )),
    }
}

/// A string attribute.
pub(crate) fn attr_str<'a>(node: &'a Node, name: &str) -> TResult<Option<&'a str>> {
    match node.attrs.get(name) {
        None => Ok(None),
        Some(llmc_ir::Attr::Str(v)) => Ok(Some(v)),
        Some(other) => Err(format!(
            "attribute `{name}` must be a string, got {other:?}"
        )),
    }
}

/// Resolves a possibly negative axis.
pub(crate) fn axis(a: i64, rank: usize, what: &str) -> TResult<usize> {
    llmc_ir::shape::norm_axis(a, rank)
        .ok_or_else(|| format!("{what} = {a} is out of range for rank {rank}"))
}

/// Operand `k`'s type, or an error naming it.
pub(crate) fn operand<'a>(ins: &[&'a TensorType], k: usize, what: &str) -> TResult<&'a TensorType> {
    ins.get(k)
        .copied()
        .ok_or_else(|| format!("missing operand {k} ({what})"))
}

/// Result `k`'s type.
pub(crate) fn result<'a>(outs: &[&'a TensorType], k: usize) -> TResult<&'a TensorType> {
    outs.get(k)
        .copied()
        .ok_or_else(|| format!("missing result {k}"))
}

#[cfg(test)]
pub(crate) mod testing;

#[cfg(test)]
mod tests;
