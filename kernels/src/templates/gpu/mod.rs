//! GPU schedules: the kernels of an LLM step written for CUDA's grid / block / warp
//! (see [`crate::gpu`] for the form), and the generic mapping for every other op. The
//! hot ops have templates of their own — `linear`/`linear_act` (a warp per weight row,
//! lanes over the row's blocks, dequantized in registers, a shuffle reduction; tf32
//! tensor-core tiles from a row count the runtime binds),
//! `rms_norm`/`layer_norm` (a block per row, warp shuffles then shared memory across
//! warps), `rope` (a thread per rotated pair and position, frequencies from a table),
//! `flash_attention`/`attention` (a warp per query row, lanes over the head dim, the
//! online softmax per key), `paged_attention` (a warp per row and query head, a key per
//! lane through the block table, the online softmax per chunk of 32 keys), `argmax`/`argmin`
//! over the last axis (a block per row, (value, index) pairs through shuffles) — and
//! the rest run their CPU template with the parallel outer loop spread over threads ([`crate::gpu::map_parallel`]).

mod attention;
mod linear;
mod norm;
mod reduce;

pub use linear::MMA_ROWS_SYMBOL;

#[cfg(test)]
mod tests;

use super::{lower as lower_cpu, Lowered, TemplateError};
use crate::builder::KernelBuilder;
use crate::loopir::{BinOp, BufId, Expr, Ty};
use llmc_ir::{Node, Op, TensorType};

/// How a node's GPU kernel was scheduled (for the build's report).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GpuSchedule {
    /// A GPU template.
    Template,
    /// The CPU template's parallel loop spread over threads.
    Threads,
    /// The CPU template in one block, its independent inner loops strided over the
    /// block's threads.
    BlockStride,
    /// The CPU template on one thread (no parallel loop to spread): correct, slow.
    OneThread,
    /// No kernel (alias, constant, runtime step).
    None,
}

/// Lowers one node for the GPU: the kernel in the GPU form, and how it was scheduled.
pub fn lower(
    node: &Node,
    ins: &[&TensorType],
    outs: &[&TensorType],
    name: &str,
) -> Result<(Lowered, GpuSchedule), TemplateError> {
    let err = |msg: String| TemplateError {
        op: node.op.name().to_string(),
        msg,
    };
    let templated = match node.op {
        Op::Linear | Op::LinearAct => linear::linear(node, ins, outs, name).map_err(err)?,
        Op::RmsNorm | Op::LayerNorm => norm::norm(node, ins, outs, name).map_err(err)?,
        Op::Rope => norm::rope(node, ins, outs, name).map_err(err)?,
        Op::FlashAttention | Op::Attention => {
            attention::attention(node, ins, outs, name).map_err(err)?
        }
        Op::PagedAttention => attention::paged(node, ins, outs, name).map_err(err)?,
        Op::ArgMax | Op::ArgMin => reduce::arg_extreme(node, ins, outs, name).map_err(err)?,
        _ => None,
    };
    if let Some(l) = templated {
        return Ok((l, GpuSchedule::Template));
    }
    let cpu = super::with_gpu_mapping(|| lower_cpu(node, ins, outs, name))?;
    Ok(match cpu {
        Lowered::Kernel {
            kernel,
            packs,
            consts,
            in_place,
        } => {
            let (kernel, mapping) = crate::gpu::map_parallel(kernel);
            let kind = match mapping {
                crate::gpu::Mapping::Grid => GpuSchedule::Threads,
                crate::gpu::Mapping::BlockStride => GpuSchedule::BlockStride,
                crate::gpu::Mapping::OneThread => GpuSchedule::OneThread,
            };
            (
                Lowered::Kernel {
                    kernel,
                    packs,
                    consts,
                    in_place,
                },
                kind,
            )
        }
        other => (other, GpuSchedule::None),
    })
}

/// The f32 sum of `v` over the 32 lanes of the warp, in every lane (a butterfly of
/// shuffles: every lane adds the same pairs, so every lane gets the same bits).
pub(crate) fn warp_sum(kb: &mut KernelBuilder, v: Expr) -> Expr {
    let acc = kb.let_mut("ws", v);
    for m in [16, 8, 4, 2, 1] {
        let o = kb.let_mut("wo", Expr::f(0.0, Ty::F32));
        kb.shuffle_xor(o, Expr::Var(acc), m);
        kb.assign(acc, Expr::bin(BinOp::Add, Expr::Var(acc), Expr::Var(o)));
    }
    Expr::Var(acc)
}

/// The f32 sum of `v` over a block of `warps` warps, in every thread: warp sums, lane 0
/// of each writes its warp's to `sh[warp]`, a barrier, then every thread adds the
/// `warps` partial sums in order. `sh` must not be reused without another barrier.
pub(crate) fn block_sum(
    kb: &mut KernelBuilder,
    v: Expr,
    tid: &Expr,
    warps: i64,
    sh: BufId,
) -> Expr {
    let w = warp_sum(kb, v);
    if warps == 1 {
        return w;
    }
    kb.if_((tid.clone() % 32).eq_(Expr::i(0)), |kb| {
        kb.store(sh, tid.clone() / 32, w.clone())
    });
    kb.barrier();
    let mut total = Expr::load(sh, Expr::i(0));
    for i in 1..warps {
        total = Expr::bin(BinOp::Add, total, Expr::load(sh, Expr::i(i)));
    }
    kb.let_("bsum", total)
}
