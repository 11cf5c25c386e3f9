//! Kernels: the target-neutral loop IR (`loopir`), a builder templates write it with
//! (`builder`), the kernel templates that turn IR nodes into loop IR (`templates`),
//! the GPU form of a kernel and the generic GPU mapping (`gpu`), and the loop-IR
//! interpreter that checks them against the reference interpreter, GPU schedules
//! included (`interp`). Backends (LLVM for the CPU and NVPTX) consume the loop IR.

pub mod builder;
pub mod gpu;
pub mod interp;
pub mod loopir;
pub mod templates;

pub use builder::KernelBuilder;
pub use loopir::{
    BinOp, Buf, BufId, Expr, FTile, Kernel, LoopTag, Mma, QDot, QFmt, QTile, QUnpack, Role, Stmt,
    Ty, UnOp, VarId,
};
pub use templates::pack::{OperandPack, Pack};
pub use templates::{lower, Lowered, TemplateError};
