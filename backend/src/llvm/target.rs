//! The one seam between the targets the loop-IR lowering serves. The lowering of
//! loop bodies (expressions, loops, lets, stores, ifs, `exp`, block dot products) is
//! shared; what differs is decided here and emitted by `lower/nvptx.rs` for NVPTX:
//!
//! | what | CPU | NVPTX (`nvptx64-nvidia-cuda`) |
//! |---|---|---|
//! | kernel ABI | internal body + `void(ptr bufs, ptr dims)` entry in a table | the body itself, `ptx_kernel` (calling convention 71), one parameter per buffer and dim |
//! | parallel loops | outlined, `llmc_parallel_for` | run serially inside a thread (the GPU form spreads work over grid/block loops) |
//! | grid / block loops | refused | `ctaid` / `tid` special registers (`llvm.nvvm.read.ptx.sreg.*`), one iteration per block / thread |
//! | barriers, shuffles | refused | `llvm.nvvm.barrier0`, `llvm.nvvm.shfl.sync.bfly.*` |
//! | shared arrays | — | globals in address space 3 |
//! | math | libm calls for tanh/atan/erf | no libm: f32 `exp` inline (as on the CPU), sin/cos by Cody–Waite reduction and Cephes polynomials in f64, tanh from `exp`; the rest is refused with the kernel and op named |

/// The target of one lowering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// A CPU; `avx2` selects the AVX2 block dot products, `avx512` the 512-bit
    /// tile products (`vnni`: with `vpdpwssd`).
    Cpu {
        /// The target machine has AVX2 (and FMA).
        avx2: bool,
        /// The target machine has AVX-512 F, BW and VL.
        avx512: bool,
        /// ... and AVX-512 VNNI.
        vnni: bool,
    },
    /// NVIDIA GPUs through PTX.
    Nvptx,
}

impl Target {
    /// True for the GPU.
    pub fn is_gpu(self) -> bool {
        self == Target::Nvptx
    }

    /// True when block dot products may use AVX2.
    pub fn avx2(self) -> bool {
        matches!(self, Target::Cpu { avx2: true, .. })
    }

    /// True when tile products may use 512-bit vectors (AVX-512 F/BW/VL).
    pub fn avx512(self) -> bool {
        matches!(self, Target::Cpu { avx512: true, .. })
    }

    /// True when tile products may use `vpdpwssd` (AVX-512 VNNI).
    pub fn vnni(self) -> bool {
        matches!(self, Target::Cpu { vnni: true, .. })
    }
}

/// LLVM's calling convention number of PTX kernels (`ptx_kernel`).
pub(crate) const PTX_KERNEL_CC: u32 = 71;

/// PTX's address space of a block's shared memory.
pub(crate) const SHARED_ADDRESS_SPACE: u16 = 3;
