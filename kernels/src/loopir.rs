//! The loop IR: the target-neutral form every kernel template produces and every
//! backend consumes. A kernel is a function over buffers (typed, with a role) and i64
//! dims (the values of the graph's symbolic dims); its body is structured statements
//! (loops tagged with how a target should run them, lets, stores, ifs, local arrays)
//! over side-effect-free expressions. Constant dims are folded into the expressions
//! when a template builds them, so a kernel is specialised to the static parts of its
//! shapes (the AOT compiler's advantage) and generic over the symbolic ones.

use std::fmt;

/// A scalar type of the loop IR: the element types of buffers and the types of
/// expressions. Block-quantized weights are `U8` buffers read with [`Expr::LoadRaw`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Ty {
    /// Boolean (a byte in memory, 0 or 1).
    Bool,
    /// Signed 8-bit integer.
    I8,
    /// Unsigned 8-bit integer.
    U8,
    /// Unsigned 16-bit integer.
    U16,
    /// Unsigned 32-bit integer.
    U32,
    /// Signed 16-bit integer.
    I16,
    /// Signed 32-bit integer.
    I32,
    /// Signed 64-bit integer (also every index and dim).
    I64,
    /// IEEE half.
    F16,
    /// bfloat16.
    BF16,
    /// IEEE single.
    F32,
    /// IEEE double.
    F64,
}

impl Ty {
    /// Whether a float converts to this integer type by saturating to the i32 range
    /// first (every integer type of 32 bits or fewer but u32; see [`Expr::Cast`]).
    pub fn sat_i32(self) -> bool {
        matches!(self, Ty::I8 | Ty::U8 | Ty::I16 | Ty::U16 | Ty::I32)
    }

    /// Bytes per element in memory.
    pub fn bytes(self) -> usize {
        match self {
            Ty::Bool | Ty::I8 | Ty::U8 => 1,
            Ty::I16 | Ty::U16 | Ty::F16 | Ty::BF16 => 2,
            Ty::I32 | Ty::U32 | Ty::F32 => 4,
            Ty::I64 | Ty::F64 => 8,
        }
    }

    /// True for the float types.
    pub fn is_float(self) -> bool {
        matches!(self, Ty::F16 | Ty::BF16 | Ty::F32 | Ty::F64)
    }

    /// True for the integer types (not bool).
    pub fn is_int(self) -> bool {
        matches!(
            self,
            Ty::I8 | Ty::U8 | Ty::I16 | Ty::U16 | Ty::I32 | Ty::U32 | Ty::I64
        )
    }

    /// True for the unsigned integer types and bool (compared, divided and shifted
    /// unsigned, zero-extended).
    pub fn is_unsigned(self) -> bool {
        matches!(self, Ty::U8 | Ty::U16 | Ty::U32 | Ty::Bool)
    }

    /// The type arithmetic on this type is done in: f16/bf16 compute in f32 (a kernel
    /// converts on load and store, so one op rounds once, as the reference does).
    pub fn compute(self) -> Ty {
        match self {
            Ty::F16 | Ty::BF16 => Ty::F32,
            t => t,
        }
    }

    /// The loop-IR type of a plain (non-block) IR dtype.
    pub fn of(d: llmc_ir::DType) -> Option<Ty> {
        use llmc_ir::DType as D;
        Some(match d {
            D::F32 => Ty::F32,
            D::F16 => Ty::F16,
            D::BF16 => Ty::BF16,
            D::F64 => Ty::F64,
            D::I64 => Ty::I64,
            D::I32 => Ty::I32,
            D::I16 => Ty::I16,
            D::I8 => Ty::I8,
            D::U8 => Ty::U8,
            D::U16 => Ty::U16,
            D::U32 => Ty::U32,
            D::Bool => Ty::Bool,
            _ => return None,
        })
    }

    /// The name used by the printer (the IR's dtype names).
    pub fn name(self) -> &'static str {
        match self {
            Ty::Bool => "bool",
            Ty::I8 => "i8",
            Ty::U8 => "u8",
            Ty::U16 => "u16",
            Ty::U32 => "u32",
            Ty::I16 => "i16",
            Ty::I32 => "i32",
            Ty::I64 => "i64",
            Ty::F16 => "f16",
            Ty::BF16 => "bf16",
            Ty::F32 => "f32",
            Ty::F64 => "f64",
        }
    }
}

impl fmt::Display for Ty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A buffer of a kernel: a parameter (`In`/`Out`, passed by the caller in declaration
/// order) or a local array (`Local`, declared by an [`Stmt::Alloc`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BufId(pub u32);

/// A scalar variable (loop index, let, accumulator).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VarId(pub u32);

/// What a kernel does with a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Read only.
    In,
    /// Written (and possibly read back).
    Out,
    /// A local array (per thread on CPU); not a parameter.
    Local,
    /// A GPU block's shared array; not a parameter.
    Shared,
}

/// A buffer declaration.
#[derive(Clone, Debug, PartialEq)]
pub struct Buf {
    /// Name (for printing and messages).
    pub name: String,
    /// Element type.
    pub ty: Ty,
    /// Role.
    pub role: Role,
}

/// A variable declaration.
#[derive(Clone, Debug, PartialEq)]
pub struct VarDecl {
    /// Name (for printing).
    pub name: String,
    /// Type.
    pub ty: Ty,
}

/// How a target should run a loop. Every tag means the same iterations; the tag says
/// which may run concurrently or in lanes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoopTag {
    /// In order.
    Serial,
    /// Iterations are independent: split across CPU threads.
    Parallel,
    /// Iterations are independent and the body is straight-line math: run in SIMD lanes
    /// of this width (float reductions in the body may be reassociated).
    Vectorize(u32),
    /// Unroll by this factor.
    Unroll(u32),
    /// A CUDA grid axis (0 = x, 1 = y, 2 = z).
    GpuGrid(u8),
    /// A CUDA block axis.
    GpuBlock(u8),
    /// The lanes of a warp.
    GpuWarp,
}

/// Unary operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnOp {
    /// Arithmetic negation (wrapping on integers).
    Neg,
    /// Absolute value (wrapping on integers).
    Abs,
    /// e^x.
    Exp,
    /// Natural log.
    Log,
    /// Square root.
    Sqrt,
    /// Hyperbolic tangent.
    Tanh,
    /// Arc tangent.
    Atan,
    /// Error function.
    Erf,
    /// Sine.
    Sin,
    /// Cosine.
    Cos,
    /// Round toward -inf.
    Floor,
    /// Round toward +inf.
    Ceil,
    /// Round half to even.
    Round,
    /// Logical not (bool) or bitwise not (integers).
    Not,
    /// True when the float is NaN (bool result).
    IsNan,
}

/// Binary operations. Both operands have one type; comparisons give bool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    /// +, wrapping on integers.
    Add,
    /// -, wrapping on integers.
    Sub,
    /// *, wrapping on integers.
    Mul,
    /// /; integers truncate toward zero, x / 0 = 0, MIN / -1 = MIN.
    Div,
    /// Remainder with the sign of the dividend; x % 0 = 0.
    Rem,
    /// x^y (integers: negative exponents truncate 1/x^|y|, 0^negative = 0).
    Pow,
    /// Maximum (floats: a NaN operand is ignored, as IEEE maxNum).
    Max,
    /// Minimum (floats: a NaN operand is ignored).
    Min,
    /// ==.
    Eq,
    /// !=.
    Ne,
    /// <.
    Lt,
    /// <=.
    Le,
    /// >.
    Gt,
    /// >=.
    Ge,
    /// Logical/bitwise and.
    And,
    /// Logical/bitwise or.
    Or,
    /// Logical/bitwise xor.
    Xor,
    /// Shift left (integers).
    Shl,
    /// Shift right: logical for u8, arithmetic for signed types.
    Shr,
}

impl BinOp {
    /// True for the comparisons (bool result).
    pub fn is_compare(self) -> bool {
        matches!(
            self,
            BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge
        )
    }

    fn name(self) -> &'static str {
        match self {
            BinOp::Add => "add",
            BinOp::Sub => "sub",
            BinOp::Mul => "mul",
            BinOp::Div => "div",
            BinOp::Rem => "rem",
            BinOp::Pow => "pow",
            BinOp::Max => "max",
            BinOp::Min => "min",
            BinOp::Eq => "eq",
            BinOp::Ne => "ne",
            BinOp::Lt => "lt",
            BinOp::Le => "le",
            BinOp::Gt => "gt",
            BinOp::Ge => "ge",
            BinOp::And => "and",
            BinOp::Or => "or",
            BinOp::Xor => "xor",
            BinOp::Shl => "shl",
            BinOp::Shr => "shr",
        }
    }
}

impl UnOp {
    fn name(self) -> &'static str {
        match self {
            UnOp::Neg => "neg",
            UnOp::Abs => "abs",
            UnOp::Exp => "exp",
            UnOp::Log => "log",
            UnOp::Sqrt => "sqrt",
            UnOp::Tanh => "tanh",
            UnOp::Atan => "atan",
            UnOp::Erf => "erf",
            UnOp::Sin => "sin",
            UnOp::Cos => "cos",
            UnOp::Floor => "floor",
            UnOp::Ceil => "ceil",
            UnOp::Round => "round",
            UnOp::Not => "not",
            UnOp::IsNan => "isnan",
        }
    }
}

/// An expression: side-effect free, typed by [`Kernel::ty_of`].
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    /// An integer or bool constant of the given type.
    Int(i64, Ty),
    /// A float constant of the given type.
    Float(f64, Ty),
    /// A variable.
    Var(VarId),
    /// Kernel dim parameter `i` (i64).
    Dim(u32),
    /// Element `index` of a buffer (of the buffer's type).
    Load(BufId, Box<Expr>),
    /// A value of type `ty` read at byte `offset` of a buffer, unaligned (packed blocks).
    LoadRaw(BufId, Box<Expr>, Ty),
    /// A unary operation.
    Un(UnOp, Box<Expr>),
    /// A binary operation.
    Bin(BinOp, Box<Expr>, Box<Expr>),
    /// `cond ? a : b` (both sides are evaluated; use [`Stmt::If`] to guard loads).
    Select(Box<Expr>, Box<Expr>, Box<Expr>),
    /// Conversion. Float to integer truncates toward zero and saturates to i32 for
    /// targets of 32 bits or fewer but u32 ([`Ty::sat_i32`]; one vector conversion),
    /// to i64 otherwise (NaN gives 0), then wraps to the target width, as the
    /// reference's casts do; anything to bool is `!= 0`; bool is 0 or 1.
    Cast(Ty, Box<Expr>),
}

/// A statement.
#[derive(Clone, Debug, PartialEq)]
pub enum Stmt {
    /// `for var in lo..hi step step` (step > 0).
    For {
        /// The loop variable (i64).
        var: VarId,
        /// First value.
        lo: Expr,
        /// Bound (exclusive).
        hi: Expr,
        /// Increment, positive.
        step: i64,
        /// How to run it.
        tag: LoopTag,
        /// Body.
        body: Vec<Stmt>,
    },
    /// Defines `var` (visible to the rest of the enclosing block).
    Let {
        /// The variable.
        var: VarId,
        /// Its value.
        value: Expr,
    },
    /// Updates a variable defined by an enclosing `Let`.
    Assign {
        /// The variable.
        var: VarId,
        /// New value.
        value: Expr,
    },
    /// `buf[index] = value`.
    Store {
        /// Destination.
        buf: BufId,
        /// Element index.
        index: Expr,
        /// Value (of the buffer's type).
        value: Expr,
    },
    /// `value` written at byte `offset` of `buf`, in its own type (f16 scales and i8
    /// codes into a `U8` buffer of blocks: a quantized KV pool).
    StoreRaw {
        /// Destination.
        buf: BufId,
        /// Byte offset.
        offset: Expr,
        /// Value (any non-bool type).
        value: Expr,
    },
    /// Conditional.
    If {
        /// Condition (bool).
        cond: Expr,
        /// Then branch.
        then: Vec<Stmt>,
        /// Else branch.
        els: Vec<Stmt>,
    },
    /// Declares a local (or GPU shared) array of `len` elements, live until the end of
    /// the enclosing block. Contents start undefined.
    Alloc {
        /// The array (a buffer with role `Local` or `Shared`).
        buf: BufId,
        /// Element count (a constant).
        len: i64,
    },
    /// GPU block barrier: every thread of the block waits here (all must reach it).
    Barrier,
    /// A hint that element `index` of `buf` will be read soon (its cache line is
    /// fetched; never faults, even out of bounds; no effect on results).
    Prefetch {
        /// The buffer.
        buf: BufId,
        /// The element.
        index: Expr,
    },
    /// GPU warp exchange: `var = value` as computed by the lane `lane ^ xor` of this
    /// thread's warp (32 consecutive threads of the block; all 32 must reach it
    /// together). `var` is defined by an enclosing `Let`; `value` is 32-bit (f32, i32,
    /// u32) and `xor` in 1..32.
    ShuffleXor {
        /// The variable assigned.
        var: VarId,
        /// This lane's contribution.
        value: Expr,
        /// The partner lane is `lane ^ xor`.
        xor: u32,
    },
    /// GPU warp matrix multiply-accumulate on tensor cores (see [`Mma`]); all 32 lanes
    /// of the warp must reach it together.
    Mma(Box<Mma>),
    /// Block-quantized dot products of one weight row (GGUF blocks as stored) with
    /// activation rows quantized to int16 blocks of 32 (see [`QDot`]).
    QDot(Box<QDot>),
    /// Decodes [`QTile::LANES`] weight rows into a tile of int16 quants and f32
    /// scales (see [`QUnpack`]).
    QUnpack(Box<QUnpack>),
    /// Block-quantized dot products of a decoded tile's weight rows with activation
    /// rows (see [`QTile`]).
    QTile(Box<QTile>),
    /// A float outer-product tile: a few rows against a panel of 32 weight rows (see
    /// [`FTile`]).
    FTile(Box<FTile>),
}

/// A weight block format [`QDot`] reads (GGUF's). [`QDot`] works in blocks of 32
/// elements with one scale and one minimum each; Q4_K's super-blocks of 256 are eight
/// such blocks whose scales and minimums are derived from the super-block's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QFmt {
    /// f16 scale `d`, 32 × i8: `w = d q`.
    Q8_0,
    /// f16 `d`, 16 bytes of nibbles (byte e: element e low, e + 16 high): `w = d (q - 8)`.
    Q4_0,
    /// f16 `d`, f16 `m`, 16 bytes of nibbles: `w = d q + m`.
    Q4_1,
    /// f16 `d`, u32 `qh` of fifth bits (bit e: element e), 16 bytes of nibbles as
    /// Q4_0's: `w = d (q - 16)`.
    Q5_0,
    /// f16 `d`, f16 `m`, u32 `qh`, 16 bytes of nibbles: `w = d q + m`.
    Q5_1,
    /// GGUF Q4_K super-blocks of 256 (144 bytes: f16 `D`, f16 `Dmin`, 12 bytes of
    /// packed 6-bit sub-block scales `sc_j` and minimums `mn_j`, 128 bytes of
    /// nibbles). Block `b` of a row is sub-block `j = b mod 8` of super-block
    /// `b / 8`: its scale is `d = D · sc_j` and its minimum `m = -(Dmin · mn_j)` (both
    /// exact in f32), its quants the low (`j` even) or high (`j` odd) nibbles of the
    /// 32 bytes at `16 + 32 ⌊j / 2⌋`, element `e` in byte `e`. Kernels decode
    /// `(sc_j, mn_j)` from the packed bytes `p` (llama.cpp's `get_scale_min_k4`)
    /// without a branch on `j`: with `b0 = p[j mod 4]`, `b1 = p[j + 4]`, `b2 = p[j]`,
    /// `j < 4` gives `(b0 & 63, b1 & 63)`, else
    /// `((b1 & 15) | (b0 >> 6) << 4, (b1 >> 4) | (b2 >> 6) << 4)`; the loop-IR
    /// interpreter uses the reference decoder (`llmc_ir::quant_k::scale_min_k4`).
    Q4K,
    /// GGUF Q5_K super-blocks of 256 (176 bytes: Q4_K's `D`, `Dmin` and packed
    /// scales, 32 bytes `qh`, 128 bytes of nibbles): Q4_K's blocks, scales and nibble
    /// layout (nibbles at `48 + 32 ⌊j / 2⌋`), each quant with a fifth bit,
    /// `(qh[e] >> j) & 1`, worth 16.
    Q5K,
    /// GGUF IQ4_NL: f16 `d`, 16 bytes of nibbles as Q4_0's, each an index into
    /// `llmc_ir::quant::KVALUES_IQ4NL` (16 signed levels): `w = d · kv[q]` (signed, no
    /// minimum).
    IQ4NL,
    /// GGUF IQ4_XS super-blocks of 256 (136 bytes: f16 `D`, u16 `scales_h`, 4 bytes
    /// `scales_l`, 128 bytes of nibbles): block `j` has
    /// `ls = (scales_l[j / 2] >> 4 (j mod 2)) & 15 | ((scales_h >> 2 j) & 3) << 4`,
    /// `d = D · (ls - 32)` (exact in f32), and IQ4_NL's nibbles and table at
    /// `8 + 16 j`.
    IQ4XS,
    /// GGUF Q6_K super-blocks of 256 (210 bytes: 128 bytes `ql` of low nibbles, 64
    /// bytes `qh` of 2-bit pairs, 16 i8 sub-block scales, f16 `D`). Block `b` is
    /// block `j = b mod 8` of super-block `b / 8`, in half `h = j / 4` at quarter
    /// `c = j mod 4`: element `e` is `q_e - 32` with
    /// `q_e = ((ql[64 h + 32 (c mod 2) + e] >> 4 ⌊c / 2⌋) & 15) | ((qh[32 h + e] >> 2 c) & 3) << 4`
    /// (signed, no minimum), and its two 16-element halves have their own scales
    /// `d_lo = D · sc[8 h + 2 c]`, `d_hi = D · sc[8 h + 2 c + 1]` (exact in f32).
    Q6K,
    /// GGUF Q3_K super-blocks of 256 (110 bytes: 32 bytes `hmask`, 64 bytes `qs` of
    /// 2-bit quants, 12 bytes of packed 6-bit scales, f16 `D`). Block `b` is block
    /// `t = b mod 8` of super-block `b / 8`, in half `h = t / 4` at shift `2 k`,
    /// `k = t mod 4`: element `e` is `((qs[32 h + e] >> 2 k) & 3) - 4` plus 4 when bit
    /// `4 h + k` of `hmask[e]` is set (signed, -4..3, no minimum); like Q6_K its two
    /// halves have their own scales, `D · s[2 t]` and `D · s[2 t + 1]`, `s` the
    /// unpacked scales minus 32 (`llmc_ir::quant_k::q3k_scales`).
    Q3K,
    /// GGUF Q2_K super-blocks of 256 (84 bytes: 16 bytes of sub-block scales and
    /// minimums `sc | mn << 4`, 64 bytes `qs` of 2-bit quants, f16 `D`, f16 `Dmin`).
    /// Block `b` is block `t = b mod 8` of super-block `b / 8`, in half `h = t / 4` at
    /// shift `2 k`, `k = t mod 4` (Q3_K's layout): element `e` is
    /// `(qs[32 h + e] >> 2 k) & 3` (0..3), and its 16-element half `p = e / 16` has
    /// the scale `D · sc` and minimum `-(Dmin · mn)` from byte `2 t + p`. The kernels
    /// fold the halves' scales into the integers: per block `A = Σ sc_p q_e x_e`
    /// (exact), then `A · (D x_d)` into the block chains. The minimums take the halves'
    /// activation sums, which `xs` holds for Q2_K instead of the blocks' sums:
    /// `xs[2 (x_blk + b) + p] = x_d · Σ x_q` over half `p` of activation block
    /// `x_blk + b` (row-major, so a super-block's 16 are adjacent); each half adds
    /// `(mn_p · -Dmin) · xs[..]` to the minimum chains.
    Q2K,
    /// llmc's int4 groups ([`llmc_ir::DType::Q4_0G64`] and the like): one f16 `d` (and
    /// for the `_1` kinds an f16 `m` after it) per group of 2 (`G64`) or 4 (`G128`)
    /// blocks, then the blocks' 16 bytes of nibbles each, as Q4_0's. Block `b` of a row
    /// is block `b mod n` of group `b / n`: its `d` and `m` (`-8 d` for the `_0` kinds)
    /// are the group's, its nibbles at `qs_offset + 16 (b mod n)` in the group.
    Q4_0G64,
    /// See [`QFmt::Q4_0G64`].
    Q4_1G64,
    /// See [`QFmt::Q4_0G64`].
    Q4_0G128,
    /// See [`QFmt::Q4_0G64`].
    Q4_1G128,
    /// llmc's half-sparse Q8_0 ([`llmc_ir::DType::Q8_0S24`]): f16 `d`, a u32 mask of
    /// kept elements, then the kept i8 codes in element order (at most 16). A block's
    /// quants are the codes expanded by the mask, zeros elsewhere; elements 16..32
    /// take the codes after the first half's `popcount(mask & 0xffff)`.
    Q8_0S24,
    /// [`QFmt::Q8_0S24`] keeping at most 8 of 32 ([`llmc_ir::DType::Q8_0S832`]): 14
    /// bytes per block, the same decoding.
    Q8_0S832,
}

impl QFmt {
    /// Bytes per block (per super-block for Q4_K).
    pub fn block_bytes(self) -> i64 {
        match self {
            QFmt::Q8_0 => 34,
            QFmt::Q4_0 => 18,
            QFmt::Q4_1 => 20,
            QFmt::Q5_0 => 22,
            QFmt::Q5_1 => 24,
            QFmt::Q4K => 144,
            QFmt::Q5K => 176,
            QFmt::IQ4NL => 18,
            QFmt::IQ4XS => 136,
            QFmt::Q6K => 210,
            QFmt::Q3K => 110,
            QFmt::Q2K => 84,
            QFmt::Q4_0G64 => 34,
            QFmt::Q4_1G64 => 36,
            QFmt::Q4_0G128 => 66,
            QFmt::Q4_1G128 => 68,
            QFmt::Q8_0S24 => 22,
            QFmt::Q8_0S832 => 14,
        }
    }

    /// Whether the format is a sparse Q8_0 ([`QFmt::Q8_0S24`], [`QFmt::Q8_0S832`]):
    /// a mask of kept elements and their codes.
    pub fn sparse(self) -> bool {
        matches!(self, QFmt::Q8_0S24 | QFmt::Q8_0S832)
    }

    /// Blocks of 32 per stored block (8 for K-quant super-blocks, else 1).
    pub fn sub_blocks(self) -> i64 {
        match self {
            QFmt::Q4K | QFmt::Q5K | QFmt::Q6K | QFmt::Q3K | QFmt::Q2K | QFmt::IQ4XS => 8,
            QFmt::Q4_0G64 | QFmt::Q4_1G64 => 2,
            QFmt::Q4_0G128 | QFmt::Q4_1G128 => 4,
            _ => 1,
        }
    }

    /// Whether the quants are signed (Q8_0, Q6_K's `q - 32`, the IQ4 table's levels);
    /// unsigned ones (0..15, 0..31) carry their offset in the minimum term.
    pub fn signed(self) -> bool {
        matches!(
            self,
            QFmt::Q8_0 | QFmt::Q6K | QFmt::Q3K | QFmt::IQ4NL | QFmt::IQ4XS
        ) || self.sparse()
    }

    /// Whether the nibbles index IQ4_NL's table of levels.
    pub fn iq4(self) -> bool {
        matches!(self, QFmt::IQ4NL | QFmt::IQ4XS)
    }

    /// Whether a block's two 16-element halves have their own scales (Q6_K, Q3_K,
    /// Q2_K).
    pub fn split_scales(self) -> bool {
        matches!(self, QFmt::Q6K | QFmt::Q3K | QFmt::Q2K)
    }

    /// Whether a block's two 16-element halves also have their own minimums (Q2_K),
    /// taken against the halves' activation sums (see [`QFmt::Q2K`]).
    pub fn split_mins(self) -> bool {
        self == QFmt::Q2K
    }

    /// Bytes of a row of `blocks` blocks of 32.
    pub fn row_bytes(self, blocks: i64) -> i64 {
        blocks * self.block_bytes() / self.sub_blocks()
    }

    /// Offset of the quant bytes in a block.
    pub fn qs_offset(self) -> i64 {
        match self {
            QFmt::Q4_1 | QFmt::Q4_1G64 | QFmt::Q4_1G128 => 4,
            QFmt::Q5_0 | QFmt::Q8_0S24 | QFmt::Q8_0S832 => 6,
            QFmt::Q5_1 => 8,
            QFmt::Q4K => 16,
            QFmt::Q5K => 48,
            QFmt::IQ4XS => 8,
            QFmt::Q6K | QFmt::Q3K => 0,
            QFmt::Q2K => 16,
            _ => 2,
        }
    }

    /// Offset of the fifth bits (`qh`, a little-endian u32) of a Q5 block.
    pub fn qh_offset(self) -> Option<i64> {
        // (The `Tile16` layouts keep fifth bits as masks: [`Self::tile_fifth`].)
        match self {
            QFmt::Q5_0 => Some(2),
            QFmt::Q5_1 => Some(4),
            _ => None,
        }
    }

    /// Whether a `Tile16` block has fifth bits (Q5_0, Q5_1, Q5_K: a u32 mask per pair
    /// of quants, `templates::pack::tile16_fifth`).
    pub fn tile_fifth(self) -> bool {
        matches!(self, QFmt::Q5_0 | QFmt::Q5_1 | QFmt::Q5K)
    }

    /// The GGUF block dtype of the format.
    pub fn dtype(self) -> llmc_ir::DType {
        use llmc_ir::DType;
        match self {
            QFmt::Q8_0 => DType::Q8_0,
            QFmt::Q4_0 => DType::Q4_0,
            QFmt::Q4_1 => DType::Q4_1,
            QFmt::Q5_0 => DType::Q5_0,
            QFmt::Q5_1 => DType::Q5_1,
            QFmt::Q4K => DType::Q4K,
            QFmt::Q5K => DType::Q5K,
            QFmt::IQ4NL => DType::IQ4NL,
            QFmt::IQ4XS => DType::IQ4XS,
            QFmt::Q6K => DType::Q6K,
            QFmt::Q3K => DType::Q3K,
            QFmt::Q2K => DType::Q2K,
            QFmt::Q4_0G64 => DType::Q4_0G64,
            QFmt::Q4_1G64 => DType::Q4_1G64,
            QFmt::Q4_0G128 => DType::Q4_0G128,
            QFmt::Q4_1G128 => DType::Q4_1G128,
            QFmt::Q8_0S24 => DType::Q8_0S24,
            QFmt::Q8_0S832 => DType::Q8_0S832,
        }
    }

    /// Whether weights of the format can be packed in tiles of 16 rows
    /// (`templates::pack::Pack::Tile16`).
    pub fn tile16(self) -> bool {
        matches!(
            self,
            QFmt::Q8_0
                | QFmt::Q4_0
                | QFmt::Q4_1
                | QFmt::Q5_0
                | QFmt::Q5_1
                | QFmt::IQ4NL
                | QFmt::IQ4XS
                | QFmt::Q4K
                | QFmt::Q5K
                | QFmt::Q6K
                | QFmt::Q3K
                | QFmt::Q2K
        ) || self.grouped()
            || self.sparse()
    }

    /// Whether the format is Q4_K or Q5_K (six-bit scales and minimums per block).
    pub fn k_scales(self) -> bool {
        matches!(self, QFmt::Q4K | QFmt::Q5K)
    }

    /// Whether the format stores its minimum (Q4_1, Q5_1, the `_1` groups) after the
    /// scale.
    pub fn stored_min(self) -> bool {
        matches!(
            self,
            QFmt::Q4_1 | QFmt::Q5_1 | QFmt::Q4_1G64 | QFmt::Q4_1G128
        )
    }

    /// Whether blocks share their group's scale and minimum ([`QFmt::Q4_0G64`]): the
    /// Q4_0/Q4_1 block read with group addressing.
    pub fn grouped(self) -> bool {
        matches!(
            self,
            QFmt::Q4_0G64 | QFmt::Q4_1G64 | QFmt::Q4_0G128 | QFmt::Q4_1G128
        )
    }

    /// The implied minimum's factor of `d` (Q4_0 and its groups: -8, Q5_0: -16).
    pub fn offset_min(self) -> Option<f32> {
        match self {
            QFmt::Q4_0 | QFmt::Q4_0G64 | QFmt::Q4_0G128 => Some(-8.0),
            QFmt::Q5_0 => Some(-16.0),
            _ => None,
        }
    }

    /// Whether the format has a minimum term (every format but Q8_0 and Q6_K).
    pub fn has_min(self) -> bool {
        !self.signed()
    }
}

/// `accs[i] += Σ_b dot_b(i)` for one weight row and activation rows `i`, where block
/// `b` of the weight row (at byte `w_off + b · block_bytes`; Q4_K: see [`QFmt::Q4K`])
/// has scale `d`, minimum `m` (Q4_1, Q5_1, Q4_K; `-8 d` for Q4_0, `-16 d` for
/// Q5_0; none for Q8_0) and integer quants `q_e`, and the
/// activation row's block `xb = x_blk[i] + b` has int16 (or int8) values `xq[32 xb + e]`; its
/// scale `xd[s]` and `xs[s] = xd[s] Σ_e xq[32 xb + e]` sit at
/// `s = x_sc[i] + 4 b`:
/// `dot_b(i) = (d · xd[s]) · I_b  +  m · xs[s]`, `I_b = Σ_e q_e xq[32 xb + e]`.
///
/// The scale layout interleaves four rows (rows `4g..4g+3` must have
/// `x_sc[4g + r] = x_sc[4g] + r`), so the scales of a row quad's block pair are one
/// 8-lane load. The arithmetic is fixed
/// (backends match it bit for bit): the integer sums are exact; per row, an even and
/// an odd chain take `E = fma(float(I_b), d · xd[s], E)` over even and odd blocks
/// (Q6_K: `E` takes every block's first half, `I_lo` with `d_lo`, and `O` its second,
/// `I_hi` with `d_hi`; no trailing block, as blocks come in eights)
/// (and `ME = fma(m, xs[s], ME)` for the minimum terms), a trailing odd block pairs
/// with a zero partner (`O = fma(0, 0, O)`), and `acc += (E + O) + (ME + MO)` (no
/// One warp's `mma.sync.m16n8k8.row.col.f32.tf32.tf32.f32`: D = A·B + C with A of
/// 16 x 8, B of 8 x 8, C and D of 16 x 8, spread over the warp's 32 lanes. Lane `l`
/// (group `g = l / 4`, `t = l % 4`) holds `a = [A[g][t], A[g+8][t], A[g][t+4],
/// A[g+8][t+4]]`, `b = [B[t][g], B[t+4][g]]` and `c`, `d = [C[g][2t], C[g][2t+1],
/// C[g+8][2t], C[g+8][2t+1]]` (the PTX ISA's fragment layout). A and B are f32 values
/// rounded to tf32 (10 mantissa bits, to nearest, ties away from zero: `cvt.rna.tf32`);
/// the products add up in f32.
#[derive(Clone, Debug, PartialEq)]
pub struct Mma {
    /// This lane's results (f32 variables defined by enclosing `Let`s).
    pub d: [VarId; 4],
    /// This lane's elements of A (f32).
    pub a: [Expr; 4],
    /// This lane's elements of B (f32).
    pub b: [Expr; 2],
    /// This lane's elements of C (f32).
    pub c: [Expr; 4],
}

impl Mma {
    /// Rows, columns and depth of one product.
    pub const M: i64 = 16;
    /// Columns.
    pub const N: i64 = 8;
    /// Depth.
    pub const K: i64 = 8;

    /// Every operand expression, A's then B's then C's.
    pub fn operands(&self) -> impl Iterator<Item = &Expr> {
        self.a.iter().chain(&self.b).chain(&self.c)
    }
}

/// minimum terms for Q8_0). A row's sum is the same whichever rows share the
/// statement: a sequence's logits do not depend on its batch.
#[derive(Clone, Debug, PartialEq)]
pub struct QDot {
    /// Weight block format.
    pub fmt: QFmt,
    /// The weight buffer (bytes read raw).
    pub w: BufId,
    /// Byte offset of the row's first block.
    pub w_off: Expr,
    /// Blocks in the row.
    pub blocks: i64,
    /// Activation quants: i16 (at most 32767 in magnitude) or i8 (at most 127; the
    /// buffer's type says which).
    pub xq: BufId,
    /// Activation block scales (f32).
    pub xd: BufId,
    /// Activation block sums times scales (f32).
    pub xs: BufId,
    /// Per activation row: the index of its first block.
    pub x_blk: Vec<Expr>,
    /// Per activation row: the slot of its block 0's scale in `xd`/`xs`.
    pub x_sc: Vec<Expr>,
    /// Per activation row: the f32 accumulator added to.
    pub accs: Vec<VarId>,
}

impl QDot {
    /// Rows whose scales interleave (one vector load per block pair).
    pub const QUAD: usize = 4;

    /// Offset of block `b`'s scale from the row's `x_sc` (see [`QDot`]).
    pub fn scale_offset(b: i64) -> i64 {
        Self::QUAD as i64 * b
    }

    /// Scale slots a quad of rows over `blocks` blocks spans.
    pub fn scale_stride(blocks: i64) -> i64 {
        Self::QUAD as i64 * blocks
    }
}

/// Decodes weight rows `c = 0..`[`QTile::LANES`] (row `c` at byte
/// `w_off + c · row_bytes` of `w`, `blocks` blocks of `fmt`; a split-scale format only
/// `packed`) into the locals a [`QTile`] reads: block `b`'s integer quants
/// `q_e` (as [`QDot`] reads them: unsigned 0..15 / 0..31 with the offset in the
/// minimum, signed for Q8_0 and the IQ4 levels) at
/// `tile[((b · 16 + e / 2) · 16 + c) · 2 + e mod 2]` (i16: a vector of a pair of
/// quants per weight row, the weight rows in lanes), its scale `d` at
/// `scales[(2 b) · 16 + c]` and its minimum `m` ([`QDot`]'s: stored, `-8 d`,
/// `-16 d`, or 0; Q6_K: its second half's scale `d_hi`, `d` being `d_lo`) at
/// `scales[(2 b + 1) · 16 + c]` (f32), for tile blocks
/// `b = 0..blocks`, which are the rows' blocks `first_block + b` (a slice of a long
/// row, so the tile stays in L1). When `packed`, the weight
/// is laid out as `templates::pack::Pack::Tile16` ([`QFmt::tile16`]): the 16 rows'
/// block `b` at byte `w_off + 16 b · block_bytes`, and `row_bytes` is unused.
#[derive(Clone, Debug, PartialEq)]
pub struct QUnpack {
    /// Weight block format.
    pub fmt: QFmt,
    /// The weight buffer (bytes read raw).
    pub w: BufId,
    /// Byte offset of the first row's first block.
    pub w_off: Expr,
    /// Bytes from one weight row to the next.
    pub row_bytes: i64,
    /// Whether the weight is in the `Tile16` layout (see above).
    pub packed: bool,
    /// The rows' block that tile block 0 holds (a multiple of the format's
    /// sub-blocks).
    pub first_block: i64,
    /// Blocks of 32 decoded.
    pub blocks: i64,
    /// The quants (i16, `blocks · 512` elements).
    pub tile: BufId,
    /// The scales and minimums (f32, `blocks · 32` elements).
    pub scales: BufId,
    /// The [`QTile`]s reading the tile take int8 activations: a backend may lay the
    /// quants out as bytes for u8·s8 products (the tile is the two statements'
    /// private scratch; this layout above is the interpreter's). A packed Q8_0 tile
    /// then holds `q + 128` (0..255) with the minimum `-128 d`, as Q4_0's nibbles
    /// carry `-8 d` (see [`QTile::has_min`]).
    pub act8: bool,
}

/// `accs[16 i + c] += Σ_b dot_b(i, c)` for the [`QTile::LANES`] weight rows `c` a
/// [`QUnpack`] decoded into `tile`/`scales` and activation rows `i` (at most
/// [`QDot::QUAD`]): [`QDot`]'s products and arithmetic for every (row, weight row)
/// pair, bit for bit (the even and odd chains, the minimum chains when `has_min`,
/// the trailing block's zero partner; Q6_K's and Q3_K's halves: quants 0..16 with the
/// scale slot into E, 16..32 with the minimum slot into O; Q2_K, packed and `direct`
/// only: the integer `Σ (sc q) x` with `D` into the block's chain, then each half's
/// minimum against its half sum into the block's minimum chain), so a row's result is the same
/// whether a `QDot` or a `QTile` computed it. `fmt`, `w`, `w_off` and `row_bytes` name the
/// weight rows the tile holds (the [`QUnpack`]'s): a backend without a tile form
/// (no AVX2) computes the same products as one [`QDot`] per weight row instead (the
/// whole row, in the statement of its last slice), and its `QUnpack` does nothing,
/// unless the weight is `packed` (then every backend reads the tile: a `QDot` cannot
/// read the `Tile16` layout).
///
/// A long row may be taken in slices of blocks (`first_block`, `blocks`, of
/// `row_blocks`): block `first_block + i` is tile block `i`, with its activation block
/// and scale slot; a slice that starts after block 0 continues the chains from
/// `state`, one that ends before the row's end keeps them there (and leaves `accs`
/// alone), and only the last slice applies the trailing block's rule and adds to
/// `accs`. `state` holds, for statement row `i`, chain `h` (E, O, ME, MO) and weight
/// row `c`, one f32 at `state_off + (4 i + h) · 16 + c`. Slices start at even blocks.
#[derive(Clone, Debug, PartialEq)]
pub struct QTile {
    /// Weight block format.
    pub fmt: QFmt,
    /// The weight buffer the tile was decoded from.
    pub w: BufId,
    /// Byte offset of its first row.
    pub w_off: Expr,
    /// Bytes from one weight row to the next.
    pub row_bytes: i64,
    /// Whether the weight is in the `Tile16` layout (the [`QUnpack`]'s).
    pub packed: bool,
    /// Whether the tile is decoded from the packed weight block by block as the sums
    /// go (`packed` only; `tile` and `scales` are then unused): one activation row
    /// does not repay a [`QUnpack`]'s round trip through memory.
    pub direct: bool,
    /// Whether the minimum terms count (the format's [`QFmt::has_min`]; for a packed
    /// Q8_0 read with int8 activations too: its quants are then read as `q + 128`
    /// with the minimum `-128 d`, unsigned for u8·s8 products, the same sums).
    pub has_min: bool,
    /// The row's first block this statement takes (even).
    pub first_block: i64,
    /// Blocks of 32 this statement takes (the tile's).
    pub blocks: i64,
    /// Blocks of 32 in the whole row.
    pub row_blocks: i64,
    /// The chains between slices: an f32 local and the offset of this statement's
    /// (see above); needed unless the statement takes the whole row.
    pub state: Option<(BufId, Expr)>,
    /// The decoded quants (i16; see [`QUnpack`]).
    pub tile: BufId,
    /// The decoded scales and minimums (f32).
    pub scales: BufId,
    /// Activation quants (i16 or i8), as [`QDot`]'s.
    pub xq: BufId,
    /// Activation block scales (f32).
    pub xd: BufId,
    /// Activation block sums times scales (f32).
    pub xs: BufId,
    /// Per activation row: the index of its first block.
    pub x_blk: Vec<Expr>,
    /// Per activation row: the slot of its block 0's scale in `xd`/`xs` (block `b`
    /// at `x_sc + 4 b`, as [`QDot`]'s).
    pub x_sc: Vec<Expr>,
    /// Per activation row `i` and weight row `c`: the f32 accumulator `accs[16 i + c]`.
    pub accs: Vec<VarId>,
}

impl QTile {
    /// Weight rows in a tile (one 512-bit vector of i32 sums).
    pub const LANES: usize = 16;

    /// Elements of the `tile` local for `blocks` blocks.
    pub fn tile_len(blocks: i64) -> i64 {
        blocks * 32 * Self::LANES as i64
    }

    /// Elements of the `scales` local for `blocks` blocks.
    pub fn scales_len(blocks: i64) -> i64 {
        blocks * 2 * Self::LANES as i64
    }
}

/// `out[out_off + 32 i + c] = Σ_p x[x_rows[i] + x_stride · p] · w[w_off + w_stride · p + c]`
/// for activation rows `i` (at most [`FTile::ROWS`]) and the [`FTile::LANES`] weight
/// rows `c` of a panel (`templates::pack::Pack::Panels32`: position `p` of the panel's
/// rows side by side), `p` in `0..k`, each sum taken in order of `p` as
/// `s = fma(x, w, s)` from 0 in f32 (f16/bf16 weights widened exactly), so the lanes of
/// a vector FMA compute it bit for bit. The sums overwrite `out` (an f32 local).
///
/// The linear's panels read activation rows (`x_stride` 1) against packed weights;
/// attention reads key rows against a transposed query tile (scores with queries in
/// lanes) and value columns (`x_stride` = the value width) against the probabilities
/// (`k` the keys of a tile, known only at run time).
#[derive(Clone, Debug, PartialEq)]
pub struct FTile {
    /// The packed weight (elements of `w_ty`).
    pub w: BufId,
    /// Its element type: f32, f16 or bf16.
    pub w_ty: Ty,
    /// Element index of the panel's first element.
    pub w_off: Expr,
    /// Elements between consecutive positions of the panel: 32 for packed panels
    /// (`Pack::Panels32`), a row's length for a row-major `[k, n]` operand read 32
    /// columns at a time (`matmul`).
    pub w_stride: Expr,
    /// The reduction length (an index expression, at least 0).
    pub k: Expr,
    /// The activations (f32).
    pub x: BufId,
    /// Per activation row: the element index of its first element.
    pub x_rows: Vec<Expr>,
    /// Elements between consecutive positions of an activation row (1: contiguous).
    pub x_stride: i64,
    /// The f32 local the sums go to.
    pub out: BufId,
    /// Element index in `out` of row 0's first sum.
    pub out_off: Expr,
    /// A hint, no semantics: `(start, step)` asks the cache for the weight's element
    /// `start + step · p` at position `p` (towards L2), so a tile can fetch a slice of
    /// the panel its thread reads next while this one computes.
    pub prefetch: Option<(Expr, Expr)>,
}

impl FTile {
    /// Weight rows per panel (output columns per tile).
    pub const LANES: usize = 32;
    /// The most activation rows per tile.
    pub const ROWS: usize = 12;
}

/// A kernel: parameters and a body.
#[derive(Clone, Debug, PartialEq)]
pub struct Kernel {
    /// Symbol-safe name (`[A-Za-z0-9_]`).
    pub name: String,
    /// Buffers: parameters (`In`/`Out`) in call order, then locals.
    pub bufs: Vec<Buf>,
    /// Dim parameters (names of the graph symbols they carry), in call order.
    pub dims: Vec<String>,
    /// Variables.
    pub vars: Vec<VarDecl>,
    /// Body.
    pub body: Vec<Stmt>,
}

impl Kernel {
    /// The buffer record.
    pub fn buf(&self, b: BufId) -> &Buf {
        &self.bufs[b.0 as usize]
    }

    /// The variable record.
    pub fn var(&self, v: VarId) -> &VarDecl {
        &self.vars[v.0 as usize]
    }

    /// The buffer record for validation: `Err` naming what `what` (`store to`,
    /// `qdot reads`) did with an unknown buffer.
    /// The locals of a [`QUnpack`] / [`QTile`]: an allocated i16 tile and f32 scales
    /// of the sizes `blocks` needs.
    fn check_tile(
        &self,
        tile: BufId,
        scales: BufId,
        blocks: i64,
        allocated: &[bool],
        what: &str,
    ) -> Result<(), String> {
        if blocks < 0 {
            return Err(format!("{what} over {blocks} blocks"));
        }
        for (b, ty) in [(tile, Ty::I16), (scales, Ty::F32)] {
            let buf = self.checked_buf(b, what)?;
            if buf.ty != ty || !matches!(buf.role, Role::Local) {
                return Err(format!("{what}: {} must be a {ty} local", buf.name));
            }
            if !allocated[b.0 as usize] {
                return Err(format!(
                    "{what}: local {} used outside its allocation",
                    buf.name
                ));
            }
        }
        Ok(())
    }

    fn checked_buf(&self, b: BufId, what: &str) -> Result<&Buf, String> {
        self.bufs
            .get(b.0 as usize)
            .ok_or_else(|| format!("{what} unknown buffer b{}", b.0))
    }

    /// Buffer `b` as the target of a `what` ("store to", "raw store to"): known, not an
    /// input, and a local or shared one only inside its allocation.
    fn writable_buf(&self, b: BufId, what: &str, allocated: &[bool]) -> Result<&Buf, String> {
        let buf = self.checked_buf(b, what)?;
        match buf.role {
            Role::In => Err(format!("{what} input buffer {}", buf.name)),
            Role::Local | Role::Shared if !allocated[b.0 as usize] => {
                Err(format!("{what} {} outside its allocation", buf.name))
            }
            _ => Ok(buf),
        }
    }

    /// The parameter buffers (those the caller passes), in call order.
    pub fn params(&self) -> impl Iterator<Item = (BufId, &Buf)> {
        self.bufs
            .iter()
            .enumerate()
            .filter(|(_, b)| matches!(b.role, Role::In | Role::Out))
            .map(|(i, b)| (BufId(i as u32), b))
    }

    /// The position of a parameter buffer in the call's buffer array.
    pub fn param_index(&self, b: BufId) -> Option<usize> {
        self.params().position(|(id, _)| id == b)
    }

    /// The type of an expression, or what is ill-typed.
    pub fn ty_of(&self, e: &Expr) -> Result<Ty, String> {
        Ok(match e {
            Expr::Int(_, t) | Expr::Float(_, t) => *t,
            Expr::Var(v) => {
                self.vars
                    .get(v.0 as usize)
                    .ok_or_else(|| format!("unknown variable v{}", v.0))?
                    .ty
            }
            Expr::Dim(i) => {
                if *i as usize >= self.dims.len() {
                    return Err(format!("dim parameter {i} is not declared"));
                }
                Ty::I64
            }
            Expr::Load(b, i) => {
                self.index_ty(i)?;
                self.bufs
                    .get(b.0 as usize)
                    .ok_or_else(|| format!("unknown buffer b{}", b.0))?
                    .ty
            }
            Expr::LoadRaw(b, i, t) => {
                self.index_ty(i)?;
                if self.bufs.get(b.0 as usize).is_none() {
                    return Err(format!("unknown buffer b{}", b.0));
                }
                *t
            }
            Expr::Un(op, x) => {
                let t = self.ty_of(x)?;
                match op {
                    UnOp::Neg | UnOp::Abs => {
                        if t == Ty::Bool {
                            return Err(format!("{} of a bool", op.name()));
                        }
                        t
                    }
                    UnOp::Not => {
                        if t.is_float() {
                            return Err("not of a float".into());
                        }
                        t
                    }
                    UnOp::IsNan => {
                        if !t.is_float() {
                            return Err(format!("isnan of {t}"));
                        }
                        Ty::Bool
                    }
                    _ => {
                        if !t.is_float() {
                            return Err(format!("{} of {t} (a float op)", op.name()));
                        }
                        t
                    }
                }
            }
            Expr::Bin(op, a, b) => {
                let (ta, tb) = (self.ty_of(a)?, self.ty_of(b)?);
                if ta != tb {
                    return Err(format!("{} of {ta} and {tb}", op.name()));
                }
                match op {
                    _ if op.is_compare() => Ty::Bool,
                    BinOp::And | BinOp::Or | BinOp::Xor | BinOp::Shl | BinOp::Shr
                        if ta.is_float() =>
                    {
                        return Err(format!("{} of floats", op.name()))
                    }
                    BinOp::Rem | BinOp::Shl | BinOp::Shr if ta == Ty::Bool => {
                        return Err(format!("{} of bools", op.name()))
                    }
                    BinOp::Add
                    | BinOp::Sub
                    | BinOp::Mul
                    | BinOp::Div
                    | BinOp::Pow
                    | BinOp::Max
                    | BinOp::Min
                        if ta == Ty::Bool =>
                    {
                        return Err(format!("{} of bools", op.name()))
                    }
                    _ => ta,
                }
            }
            Expr::Select(c, a, b) => {
                let tc = self.ty_of(c)?;
                if tc != Ty::Bool {
                    return Err(format!("select condition is {tc}, not bool"));
                }
                let (ta, tb) = (self.ty_of(a)?, self.ty_of(b)?);
                if ta != tb {
                    return Err(format!("select of {ta} and {tb}"));
                }
                ta
            }
            Expr::Cast(t, x) => {
                self.ty_of(x)?;
                *t
            }
        })
    }

    fn index_ty(&self, i: &Expr) -> Result<(), String> {
        match self.ty_of(i)? {
            Ty::I64 => Ok(()),
            t => Err(format!("an index must be i64, got {t}")),
        }
    }

    /// Checks types, variable scoping (defined before use, assigned only when defined
    /// by an enclosing `Let`), buffer roles and loop steps. Templates run this on what
    /// they build, so a malformed kernel never reaches a backend.
    pub fn check(&self) -> Result<(), String> {
        let mut defined = vec![false; self.vars.len()];
        let mut allocated = vec![false; self.bufs.len()];
        self.check_block(&self.body, &mut defined, &mut allocated)
            .map_err(|e| format!("kernel {}: {e}", self.name))
    }

    fn check_expr(&self, e: &Expr, defined: &[bool], allocated: &[bool]) -> Result<(), String> {
        let mut err = None;
        visit_expr(e, &mut |x| {
            if err.is_some() {
                return;
            }
            match x {
                Expr::Var(v) if !defined.get(v.0 as usize).copied().unwrap_or(false) => {
                    err = Some(format!(
                        "variable {} used before its definition",
                        self.vname(*v)
                    ))
                }
                Expr::Load(b, _) | Expr::LoadRaw(b, _, _) => {
                    if let Some(buf) = self.bufs.get(b.0 as usize) {
                        let local = matches!(buf.role, Role::Local | Role::Shared);
                        if local && !allocated[b.0 as usize] {
                            err = Some(format!("local {} read outside its allocation", buf.name));
                        }
                    }
                }
                _ => {}
            }
        });
        if let Some(e) = err {
            return Err(e);
        }
        self.ty_of(e).map(|_| ())
    }

    fn vname(&self, v: VarId) -> String {
        self.vars
            .get(v.0 as usize)
            .map_or(format!("v{}", v.0), |d| format!("%{}", d.name))
    }

    fn check_block(
        &self,
        block: &[Stmt],
        defined: &mut Vec<bool>,
        allocated: &mut Vec<bool>,
    ) -> Result<(), String> {
        let saved_vars = defined.clone();
        let saved_bufs = allocated.clone();
        for s in block {
            match s {
                Stmt::For {
                    var,
                    lo,
                    hi,
                    step,
                    body,
                    ..
                } => {
                    self.check_expr(lo, defined, allocated)?;
                    self.check_expr(hi, defined, allocated)?;
                    for (what, e) in [("lower bound", lo), ("bound", hi)] {
                        if self.ty_of(e)? != Ty::I64 {
                            return Err(format!("loop {} is not i64", what));
                        }
                    }
                    if *step <= 0 {
                        return Err(format!("loop {} has step {step}", self.vname(*var)));
                    }
                    if self.var(*var).ty != Ty::I64 {
                        return Err(format!("loop variable {} is not i64", self.vname(*var)));
                    }
                    if defined[var.0 as usize] {
                        return Err(format!("loop variable {} redefined", self.vname(*var)));
                    }
                    defined[var.0 as usize] = true;
                    self.check_block(body, defined, allocated)?;
                    defined[var.0 as usize] = false;
                }
                Stmt::Let { var, value } => {
                    self.check_expr(value, defined, allocated)?;
                    let (t, vt) = (self.ty_of(value)?, self.var(*var).ty);
                    if t != vt {
                        return Err(format!(
                            "let {}: {vt} bound to a {t} value",
                            self.vname(*var)
                        ));
                    }
                    if defined[var.0 as usize] {
                        return Err(format!("variable {} defined twice", self.vname(*var)));
                    }
                    defined[var.0 as usize] = true;
                }
                Stmt::Assign { var, value } => {
                    self.check_expr(value, defined, allocated)?;
                    if !defined[var.0 as usize] {
                        return Err(format!(
                            "assignment to {} outside its definition",
                            self.vname(*var)
                        ));
                    }
                    let (t, vt) = (self.ty_of(value)?, self.var(*var).ty);
                    if t != vt {
                        return Err(format!("{} = a {t} value (it is {vt})", self.vname(*var)));
                    }
                }
                Stmt::Store { buf, index, value } => {
                    self.check_expr(index, defined, allocated)?;
                    self.check_expr(value, defined, allocated)?;
                    self.index_ty(index)?;
                    let b = self.writable_buf(*buf, "store to", allocated)?;
                    let t = self.ty_of(value)?;
                    if t != b.ty {
                        return Err(format!("store of a {t} value into {} ({})", b.name, b.ty));
                    }
                }
                Stmt::StoreRaw { buf, offset, value } => {
                    self.check_expr(offset, defined, allocated)?;
                    self.check_expr(value, defined, allocated)?;
                    self.index_ty(offset)?;
                    let b = self.writable_buf(*buf, "raw store to", allocated)?;
                    if self.ty_of(value)? == Ty::Bool {
                        return Err(format!("raw store of a bool into {}", b.name));
                    }
                }
                Stmt::If { cond, then, els } => {
                    self.check_expr(cond, defined, allocated)?;
                    if self.ty_of(cond)? != Ty::Bool {
                        return Err("if condition is not bool".into());
                    }
                    self.check_block(then, defined, allocated)?;
                    self.check_block(els, defined, allocated)?;
                }
                Stmt::Alloc { buf, len } => {
                    let b = self.checked_buf(*buf, "alloc of")?;
                    if !matches!(b.role, Role::Local | Role::Shared) {
                        return Err(format!("alloc of parameter buffer {}", b.name));
                    }
                    if *len < 0 {
                        return Err(format!("alloc of {} with length {len}", b.name));
                    }
                    allocated[buf.0 as usize] = true;
                }
                Stmt::Barrier => {}
                Stmt::Prefetch { buf, index } => {
                    self.check_expr(index, defined, allocated)?;
                    self.index_ty(index)?;
                    let b = self.checked_buf(*buf, "prefetch of")?;
                    if matches!(b.role, Role::Local | Role::Shared) && !allocated[buf.0 as usize] {
                        return Err(format!("prefetch of {} outside its allocation", b.name));
                    }
                }
                Stmt::Mma(m) => {
                    for e in m.operands() {
                        self.check_expr(e, defined, allocated)?;
                        let t = self.ty_of(e)?;
                        if t != Ty::F32 {
                            return Err(format!("mma operand of type {t}: f32 only"));
                        }
                    }
                    for v in &m.d {
                        if !defined[v.0 as usize] {
                            return Err(format!(
                                "mma into {} outside its definition",
                                self.vname(*v)
                            ));
                        }
                        if self.var(*v).ty != Ty::F32 {
                            return Err(format!("mma into {} (not f32)", self.vname(*v)));
                        }
                    }
                }
                Stmt::ShuffleXor { var, value, xor } => {
                    self.check_expr(value, defined, allocated)?;
                    if !defined[var.0 as usize] {
                        return Err(format!(
                            "shuffle into {} outside its definition",
                            self.vname(*var)
                        ));
                    }
                    let (t, vt) = (self.ty_of(value)?, self.var(*var).ty);
                    if t != vt || !matches!(t, Ty::F32 | Ty::I32 | Ty::U32) {
                        return Err(format!(
                            "shuffle of a {t} value into {} ({vt}): 32-bit types only",
                            self.vname(*var)
                        ));
                    }
                    if !(1..32).contains(xor) {
                        return Err(format!("shuffle xor {xor} is not in 1..32"));
                    }
                }
                Stmt::QDot(q) => {
                    self.check_expr(&q.w_off, defined, allocated)?;
                    self.index_ty(&q.w_off)?;
                    if q.blocks % q.fmt.sub_blocks() != 0 {
                        return Err(format!(
                            "qdot: {} blocks of 32 are not whole {:?} blocks",
                            q.blocks, q.fmt
                        ));
                    }
                    if q.x_blk.len() != q.accs.len() || q.x_sc.len() != q.accs.len() {
                        return Err(
                            "qdot: as many activation rows and scale slots as accumulators".into(),
                        );
                    }
                    for e in q.x_blk.iter().chain(&q.x_sc) {
                        self.check_expr(e, defined, allocated)?;
                        self.index_ty(e)?;
                    }
                    for quad in q.x_sc.chunks_exact(QDot::QUAD) {
                        for (r, e) in quad.iter().enumerate() {
                            if *e != quad[0].clone() + r as i64 {
                                return Err(format!(
                                    "qdot: the scale slots of a row quad must be consecutive \
                                     (row {r} of a quad is not the first's + {r})"
                                ));
                            }
                        }
                    }
                    for (b, t) in [(q.xq, Ty::I16), (q.xd, Ty::F32), (q.xs, Ty::F32)] {
                        let buf = self.checked_buf(b, "qdot reads")?;
                        if buf.ty != t && !(b == q.xq && buf.ty == Ty::I8) {
                            return Err(format!("qdot: {} must be {t}", buf.name));
                        }
                        let local = matches!(buf.role, Role::Local | Role::Shared);
                        if local && !allocated[b.0 as usize] {
                            return Err(format!("local {} read outside its allocation", buf.name));
                        }
                    }
                    self.checked_buf(q.w, "qdot reads")?;
                    for a in &q.accs {
                        if !defined.get(a.0 as usize).copied().unwrap_or(false) {
                            return Err(format!(
                                "qdot accumulates into {} outside its definition",
                                self.vname(*a)
                            ));
                        }
                        if self.var(*a).ty != Ty::F32 {
                            return Err(format!("qdot accumulator {} is not f32", self.vname(*a)));
                        }
                    }
                    if q.blocks < 0 {
                        return Err(format!("qdot over {} blocks", q.blocks));
                    }
                }
                Stmt::QUnpack(u) => {
                    self.check_expr(&u.w_off, defined, allocated)?;
                    self.index_ty(&u.w_off)?;
                    if u.packed && !u.fmt.tile16() {
                        return Err(format!("qunpack: {:?} has no packed layout", u.fmt));
                    }
                    if u.fmt.split_mins() {
                        // A block's two minimums and scale need three slots.
                        return Err(format!(
                            "qunpack: {:?} is read by the direct tile only",
                            u.fmt
                        ));
                    }
                    if (u.fmt.split_scales() && !u.packed)
                        || u.blocks < 0
                        || u.first_block < 0
                        || u.blocks % u.fmt.sub_blocks() != 0
                        || u.first_block % u.fmt.sub_blocks() != 0
                    {
                        return Err(format!(
                            "qunpack: {} blocks from {} of {:?} (whole sub-blocks; \
                             split-scale formats are unpacked only when packed)",
                            u.blocks, u.first_block, u.fmt
                        ));
                    }
                    self.checked_buf(u.w, "qunpack reads")?;
                    self.check_tile(u.tile, u.scales, u.blocks, allocated, "qunpack")?;
                }
                Stmt::FTile(t) => {
                    let pf = t.prefetch.iter().flat_map(|(a, b)| [a, b]);
                    for e in [&t.w_off, &t.w_stride, &t.k, &t.out_off]
                        .into_iter()
                        .chain(&t.x_rows)
                        .chain(pf)
                    {
                        self.check_expr(e, defined, allocated)?;
                        self.index_ty(e)?;
                    }
                    if t.x_rows.is_empty()
                        || t.x_rows.len() > FTile::ROWS
                        || t.x_stride < 1
                        || t.w_stride.as_i64().is_some_and(|w| w < FTile::LANES as i64)
                    {
                        return Err(format!(
                            "ftile: 1..={} rows, x_stride >= 1 and w_stride >= {}, got {} rows, \
                             x_stride {}, w_stride {}",
                            FTile::ROWS,
                            FTile::LANES,
                            t.x_rows.len(),
                            t.x_stride,
                            t.w_stride.as_i64().unwrap_or(-1)
                        ));
                    }
                    let w = self.checked_buf(t.w, "ftile reads")?;
                    if w.ty != t.w_ty || !matches!(t.w_ty, Ty::F32 | Ty::F16 | Ty::BF16) {
                        return Err(format!(
                            "ftile: weight {} is not {} (f32/f16/bf16)",
                            w.name, t.w_ty
                        ));
                    }
                    if self.checked_buf(t.x, "ftile reads")?.ty != Ty::F32 {
                        return Err("ftile: activations must be f32".into());
                    }
                    let out = self.writable_buf(t.out, "ftile writes", allocated)?;
                    if out.ty != Ty::F32 {
                        return Err(format!("ftile: {} must be f32", out.name));
                    }
                }
                Stmt::QTile(t) => {
                    self.check_tile(t.tile, t.scales, t.blocks, allocated, "qtile")?;
                    let whole = t.first_block == 0 && t.blocks == t.row_blocks;
                    if t.first_block < 0
                        || t.first_block % 2 != 0
                        || t.first_block + t.blocks > t.row_blocks
                        || (t.first_block + t.blocks < t.row_blocks && t.blocks % 2 != 0)
                        || (!whole && t.state.is_none())
                        || (t.direct && !whole)
                    {
                        return Err(format!(
                            "qtile: blocks {}..+{} of {} (slices start at even blocks, only \
                             the last may be odd, and need a state; direct ones are whole)",
                            t.first_block, t.blocks, t.row_blocks
                        ));
                    }
                    if let Some((st, off)) = &t.state {
                        self.check_expr(off, defined, allocated)?;
                        self.index_ty(off)?;
                        let buf = self.writable_buf(*st, "qtile keeps its chains in", allocated)?;
                        if buf.ty != Ty::F32 {
                            return Err(format!("qtile: state {} must be f32", buf.name));
                        }
                    }
                    self.check_expr(&t.w_off, defined, allocated)?;
                    self.index_ty(&t.w_off)?;
                    self.checked_buf(t.w, "qtile reads")?;
                    let offset8 = t.fmt == QFmt::Q8_0 && t.packed && {
                        let xq = self.checked_buf(t.xq, "qtile reads")?;
                        xq.ty == Ty::I8
                    };
                    if t.has_min != t.fmt.has_min() && !(offset8 && t.has_min) {
                        return Err(format!("qtile: has_min differs from {:?}'s", t.fmt));
                    }
                    if (t.direct && !t.packed)
                        || (t.packed && !t.fmt.tile16())
                        || (t.fmt.split_mins() && !t.direct)
                    {
                        return Err(format!(
                            "qtile: {:?} packed {} direct {}: only Tile16 formats are \
                             packed, only packed weights are read directly, and Q2_K \
                             only directly",
                            t.fmt, t.packed, t.direct
                        ));
                    }
                    if t.x_blk.len() != t.x_sc.len()
                        || t.x_blk.len() > QDot::QUAD
                        || t.accs.len() != t.x_blk.len() * QTile::LANES
                    {
                        return Err(format!(
                            "qtile: 1..={} activation rows, each with a scale slot and {} \
                             accumulators",
                            QDot::QUAD,
                            QTile::LANES
                        ));
                    }
                    for e in t.x_blk.iter().chain(&t.x_sc) {
                        self.check_expr(e, defined, allocated)?;
                        self.index_ty(e)?;
                    }
                    for (b, ty) in [(t.xq, Ty::I16), (t.xd, Ty::F32), (t.xs, Ty::F32)] {
                        let buf = self.checked_buf(b, "qtile reads")?;
                        if buf.ty != ty && !(b == t.xq && buf.ty == Ty::I8) {
                            return Err(format!("qtile: {} must be {ty}", buf.name));
                        }
                    }
                    for a in &t.accs {
                        if !defined.get(a.0 as usize).copied().unwrap_or(false)
                            || self.var(*a).ty != Ty::F32
                        {
                            return Err(format!(
                                "qtile accumulates into {} (not a defined f32 variable)",
                                self.vname(*a)
                            ));
                        }
                    }
                }
            }
        }
        *defined = saved_vars;
        *allocated = saved_bufs;
        Ok(())
    }
}

/// Calls `f` on every sub-expression of `e` (pre-order).
pub fn visit_expr(e: &Expr, f: &mut impl FnMut(&Expr)) {
    f(e);
    match e {
        Expr::Int(..) | Expr::Float(..) | Expr::Var(_) | Expr::Dim(_) => {}
        Expr::Load(_, i) | Expr::LoadRaw(_, i, _) | Expr::Un(_, i) | Expr::Cast(_, i) => {
            visit_expr(i, f)
        }
        Expr::Bin(_, a, b) => {
            visit_expr(a, f);
            visit_expr(b, f);
        }
        Expr::Select(c, a, b) => {
            visit_expr(c, f);
            visit_expr(a, f);
            visit_expr(b, f);
        }
    }
}

/// Calls `f` on every expression appearing in the statements, recursively.
pub fn visit_stmts_exprs(body: &[Stmt], f: &mut impl FnMut(&Expr)) {
    for s in body {
        match s {
            Stmt::For { lo, hi, body, .. } => {
                visit_expr(lo, f);
                visit_expr(hi, f);
                visit_stmts_exprs(body, f);
            }
            Stmt::Let { value, .. }
            | Stmt::Assign { value, .. }
            | Stmt::ShuffleXor { value, .. } => visit_expr(value, f),
            Stmt::Mma(m) => m.operands().for_each(|e| visit_expr(e, f)),
            Stmt::Store { index, value, .. } => {
                visit_expr(index, f);
                visit_expr(value, f);
            }
            Stmt::StoreRaw { offset, value, .. } => {
                visit_expr(offset, f);
                visit_expr(value, f);
            }
            Stmt::If { cond, then, els } => {
                visit_expr(cond, f);
                visit_stmts_exprs(then, f);
                visit_stmts_exprs(els, f);
            }
            Stmt::Alloc { .. } | Stmt::Barrier => {}
            Stmt::Prefetch { index, .. } => visit_expr(index, f),
            Stmt::QDot(q) => {
                visit_expr(&q.w_off, f);
                for e in q.x_blk.iter().chain(&q.x_sc) {
                    visit_expr(e, f);
                }
            }
            Stmt::QUnpack(u) => visit_expr(&u.w_off, f),
            Stmt::FTile(t) => {
                visit_expr(&t.w_off, f);
                visit_expr(&t.w_stride, f);
                visit_expr(&t.k, f);
                visit_expr(&t.out_off, f);
                for e in &t.x_rows {
                    visit_expr(e, f);
                }
                if let Some((a, b)) = &t.prefetch {
                    visit_expr(a, f);
                    visit_expr(b, f);
                }
            }
            Stmt::QTile(t) => {
                visit_expr(&t.w_off, f);
                for e in t.x_blk.iter().chain(&t.x_sc) {
                    visit_expr(e, f);
                }
                if let Some((_, off)) = &t.state {
                    visit_expr(off, f);
                }
            }
        }
    }
}

// ----- expression constructors with constant folding -----
//
// Templates compute indices from shapes whose dims are mostly constants; folding here
// keeps the printed kernels readable and the LLVM input small.

impl Expr {
    /// An i64 constant.
    pub fn i(v: i64) -> Expr {
        Expr::Int(v, Ty::I64)
    }

    /// A float constant of type `t`.
    pub fn f(v: f64, t: Ty) -> Expr {
        Expr::Float(v, t)
    }

    /// A bool constant.
    pub fn bool(v: bool) -> Expr {
        Expr::Int(v as i64, Ty::Bool)
    }

    /// The value of an i64 constant.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Expr::Int(v, Ty::I64) => Some(*v),
            _ => None,
        }
    }

    /// `self op other`, folding i64 constants and identities.
    pub fn bin(op: BinOp, a: Expr, b: Expr) -> Expr {
        if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) {
            let folded = match op {
                BinOp::Add => x.checked_add(y),
                BinOp::Sub => x.checked_sub(y),
                BinOp::Mul => x.checked_mul(y),
                BinOp::Div if y != 0 => x.checked_div(y),
                BinOp::Rem if y != 0 => x.checked_rem(y),
                BinOp::Max => Some(x.max(y)),
                BinOp::Min => Some(x.min(y)),
                _ => None,
            };
            if let Some(v) = folded {
                return Expr::i(v);
            }
        }
        match (op, a.as_i64(), b.as_i64()) {
            (BinOp::Add, Some(0), _) => b,
            (BinOp::Add | BinOp::Sub, _, Some(0)) => a,
            (BinOp::Mul, Some(1), _) => b,
            (BinOp::Mul | BinOp::Div, _, Some(1)) => a,
            (BinOp::Mul, Some(0), _) | (BinOp::Mul, _, Some(0)) => Expr::i(0),
            _ => Expr::Bin(op, Box::new(a), Box::new(b)),
        }
    }

    /// Unary operation.
    pub fn un(op: UnOp, a: Expr) -> Expr {
        Expr::Un(op, Box::new(a))
    }

    /// `cond ? a : b`.
    pub fn select(c: Expr, a: Expr, b: Expr) -> Expr {
        match c {
            Expr::Int(v, Ty::Bool) => {
                if v != 0 {
                    a
                } else {
                    b
                }
            }
            c => Expr::Select(Box::new(c), Box::new(a), Box::new(b)),
        }
    }

    /// Conversion to `t` (no-op when `self` is already a constant of `t`).
    pub fn cast(self, t: Ty) -> Expr {
        match self {
            Expr::Int(v, s) if s == t => Expr::Int(v, s),
            Expr::Float(v, s) if s == t => Expr::Float(v, s),
            Expr::Int(v, Ty::I64) if t.is_float() => Expr::Float(v as f64, t),
            e => Expr::Cast(t, Box::new(e)),
        }
    }

    /// `buf[index]`.
    pub fn load(buf: BufId, index: Expr) -> Expr {
        Expr::Load(buf, Box::new(index))
    }

    /// Comparisons and min/max as methods, for readable templates.
    pub fn lt(self, o: Expr) -> Expr {
        Expr::bin(BinOp::Lt, self, o)
    }
    /// `self <= o`.
    pub fn le(self, o: Expr) -> Expr {
        Expr::bin(BinOp::Le, self, o)
    }
    /// `self > o`.
    pub fn gt(self, o: Expr) -> Expr {
        Expr::bin(BinOp::Gt, self, o)
    }
    /// `self >= o`.
    pub fn ge(self, o: Expr) -> Expr {
        Expr::bin(BinOp::Ge, self, o)
    }
    /// `self == o`.
    pub fn eq_(self, o: Expr) -> Expr {
        Expr::bin(BinOp::Eq, self, o)
    }
    /// `self != o`.
    pub fn ne_(self, o: Expr) -> Expr {
        Expr::bin(BinOp::Ne, self, o)
    }
    /// `max(self, o)`.
    pub fn max(self, o: Expr) -> Expr {
        Expr::bin(BinOp::Max, self, o)
    }
    /// `min(self, o)`.
    pub fn min(self, o: Expr) -> Expr {
        Expr::bin(BinOp::Min, self, o)
    }
    /// `self && o` (bools).
    pub fn and(self, o: Expr) -> Expr {
        match (&self, &o) {
            (Expr::Int(1, Ty::Bool), _) => o,
            (_, Expr::Int(1, Ty::Bool)) => self,
            _ => Expr::bin(BinOp::And, self, o),
        }
    }
    /// `self || o` (bools).
    pub fn or(self, o: Expr) -> Expr {
        match (&self, &o) {
            (Expr::Int(0, Ty::Bool), _) => o,
            (_, Expr::Int(0, Ty::Bool)) => self,
            _ => Expr::bin(BinOp::Or, self, o),
        }
    }
}

macro_rules! arith_ops {
    ($($tr:ident $m:ident $op:ident;)*) => {$(
        impl std::ops::$tr for Expr {
            type Output = Expr;
            fn $m(self, o: Expr) -> Expr { Expr::bin(BinOp::$op, self, o) }
        }
        impl std::ops::$tr<i64> for Expr {
            type Output = Expr;
            fn $m(self, o: i64) -> Expr { Expr::bin(BinOp::$op, self, Expr::i(o)) }
        }
    )*};
}

arith_ops! {
    Add add Add;
    Sub sub Sub;
    Mul mul Mul;
    Div div Div;
    Rem rem Rem;
}

// ----- printing -----

impl Kernel {
    fn fmt_expr(&self, e: &Expr, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match e {
            Expr::Int(v, Ty::I64) => write!(f, "{v}"),
            Expr::Int(v, Ty::Bool) => write!(f, "{}", *v != 0),
            Expr::Int(v, t) => write!(f, "{v}:{t}"),
            Expr::Float(v, t) => write!(f, "{v:?}:{t}"),
            Expr::Var(v) => write!(f, "{}", self.vname(*v)),
            Expr::Dim(i) => match self.dims.get(*i as usize) {
                Some(n) => write!(f, "${n}"),
                None => write!(f, "$?{i}"),
            },
            Expr::Load(b, i) => {
                write!(f, "{}[", self.bname(*b))?;
                self.fmt_expr(i, f)?;
                f.write_str("]")
            }
            Expr::LoadRaw(b, i, t) => {
                write!(f, "load.{t} {}[byte ", self.bname(*b))?;
                self.fmt_expr(i, f)?;
                f.write_str("]")
            }
            Expr::Un(op, x) => {
                write!(f, "{}(", op.name())?;
                self.fmt_expr(x, f)?;
                f.write_str(")")
            }
            Expr::Bin(op, a, b) => {
                let sym = match op {
                    BinOp::Add => Some("+"),
                    BinOp::Sub => Some("-"),
                    BinOp::Mul => Some("*"),
                    BinOp::Div => Some("/"),
                    BinOp::Rem => Some("%"),
                    BinOp::Eq => Some("=="),
                    BinOp::Ne => Some("!="),
                    BinOp::Lt => Some("<"),
                    BinOp::Le => Some("<="),
                    BinOp::Gt => Some(">"),
                    BinOp::Ge => Some(">="),
                    BinOp::And => Some("&&"),
                    BinOp::Or => Some("||"),
                    BinOp::Xor => Some("^"),
                    BinOp::Shl => Some("<<"),
                    BinOp::Shr => Some(">>"),
                    _ => None,
                };
                match sym {
                    Some(s) => {
                        f.write_str("(")?;
                        self.fmt_expr(a, f)?;
                        write!(f, " {s} ")?;
                        self.fmt_expr(b, f)?;
                        f.write_str(")")
                    }
                    None => {
                        write!(f, "{}(", op.name())?;
                        self.fmt_expr(a, f)?;
                        f.write_str(", ")?;
                        self.fmt_expr(b, f)?;
                        f.write_str(")")
                    }
                }
            }
            Expr::Select(c, a, b) => {
                f.write_str("select(")?;
                self.fmt_expr(c, f)?;
                f.write_str(", ")?;
                self.fmt_expr(a, f)?;
                f.write_str(", ")?;
                self.fmt_expr(b, f)?;
                f.write_str(")")
            }
            Expr::Cast(t, x) => {
                write!(f, "{t}(")?;
                self.fmt_expr(x, f)?;
                f.write_str(")")
            }
        }
    }

    fn bname(&self, b: BufId) -> String {
        self.bufs
            .get(b.0 as usize)
            .map_or(format!("b{}", b.0), |x| format!("%{}", x.name))
    }

    fn fmt_block(&self, block: &[Stmt], depth: usize, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pad = "  ".repeat(depth);
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
                    let t = match tag {
                        LoopTag::Serial => "for".to_string(),
                        LoopTag::Parallel => "parallel for".to_string(),
                        LoopTag::Vectorize(w) => format!("vectorize({w}) for"),
                        LoopTag::Unroll(n) => format!("unroll({n}) for"),
                        LoopTag::GpuGrid(a) => {
                            format!("grid.{} for", ["x", "y", "z"][*a as usize % 3])
                        }
                        LoopTag::GpuBlock(a) => {
                            format!("block.{} for", ["x", "y", "z"][*a as usize % 3])
                        }
                        LoopTag::GpuWarp => "warp for".to_string(),
                    };
                    write!(f, "{pad}{t} {} in ", self.vname(*var))?;
                    self.fmt_expr(lo, f)?;
                    f.write_str("..")?;
                    self.fmt_expr(hi, f)?;
                    if *step != 1 {
                        write!(f, " step {step}")?;
                    }
                    f.write_str(" {\n")?;
                    self.fmt_block(body, depth + 1, f)?;
                    writeln!(f, "{pad}}}")?;
                }
                Stmt::Let { var, value } => {
                    write!(f, "{pad}let {}: {} = ", self.vname(*var), self.var(*var).ty)?;
                    self.fmt_expr(value, f)?;
                    f.write_str("\n")?;
                }
                Stmt::Assign { var, value } => {
                    write!(f, "{pad}{} = ", self.vname(*var))?;
                    self.fmt_expr(value, f)?;
                    f.write_str("\n")?;
                }
                Stmt::Store { buf, index, value } => {
                    write!(f, "{pad}{}[", self.bname(*buf))?;
                    self.fmt_expr(index, f)?;
                    f.write_str("] = ")?;
                    self.fmt_expr(value, f)?;
                    f.write_str("\n")?;
                }
                Stmt::StoreRaw { buf, offset, value } => {
                    write!(f, "{pad}store {}[byte ", self.bname(*buf))?;
                    self.fmt_expr(offset, f)?;
                    f.write_str("] = ")?;
                    self.fmt_expr(value, f)?;
                    f.write_str("\n")?;
                }
                Stmt::If { cond, then, els } => {
                    write!(f, "{pad}if ")?;
                    self.fmt_expr(cond, f)?;
                    f.write_str(" {\n")?;
                    self.fmt_block(then, depth + 1, f)?;
                    if els.is_empty() {
                        writeln!(f, "{pad}}}")?;
                    } else {
                        writeln!(f, "{pad}}} else {{")?;
                        self.fmt_block(els, depth + 1, f)?;
                        writeln!(f, "{pad}}}")?;
                    }
                }
                Stmt::Alloc { buf, len } => {
                    let b = self.buf(*buf);
                    let space = if b.role == Role::Shared {
                        "shared"
                    } else {
                        "local"
                    };
                    writeln!(f, "{pad}{space} %{}: {}[{len}]", b.name, b.ty)?;
                }
                Stmt::Barrier => writeln!(f, "{pad}barrier")?,
                Stmt::Prefetch { buf, index } => {
                    write!(f, "{pad}prefetch {}[", self.bname(*buf))?;
                    self.fmt_expr(index, f)?;
                    writeln!(f, "]")?;
                }
                Stmt::Mma(m) => {
                    let ds: Vec<String> = m.d.iter().map(|v| self.vname(*v)).collect();
                    write!(f, "{pad}{} = mma.m16n8k8.tf32(", ds.join(", "))?;
                    for (i, e) in m.operands().enumerate() {
                        if i > 0 {
                            write!(f, "{}", if i == 4 || i == 6 { "; " } else { ", " })?;
                        }
                        self.fmt_expr(e, f)?;
                    }
                    writeln!(f, ")")?;
                }
                Stmt::ShuffleXor { var, value, xor } => {
                    write!(f, "{pad}{} = shuffle_xor(", self.vname(*var))?;
                    self.fmt_expr(value, f)?;
                    writeln!(f, ", {xor})")?;
                }
                Stmt::QDot(q) => {
                    let accs: Vec<String> = q.accs.iter().map(|a| self.vname(*a)).collect();
                    write!(
                        f,
                        "{pad}{} += qdot.{:?}({}[",
                        accs.join(", "),
                        q.fmt,
                        self.bname(q.w)
                    )?;
                    self.fmt_expr(&q.w_off, f)?;
                    write!(
                        f,
                        ".. x{}], {}/{}/{} blocks [",
                        q.blocks,
                        self.bname(q.xq),
                        self.bname(q.xd),
                        self.bname(q.xs)
                    )?;
                    for (i, e) in q.x_blk.iter().enumerate() {
                        if i > 0 {
                            f.write_str(", ")?;
                        }
                        self.fmt_expr(e, f)?;
                    }
                    f.write_str("] scales [")?;
                    for (i, e) in q.x_sc.iter().enumerate() {
                        if i > 0 {
                            f.write_str(", ")?;
                        }
                        self.fmt_expr(e, f)?;
                    }
                    f.write_str("])\n")?;
                }
                Stmt::FTile(t) => {
                    write!(f, "{pad}{}[", self.bname(t.out))?;
                    self.fmt_expr(&t.out_off, f)?;
                    write!(f, "..] = ftile({}[", self.bname(t.w))?;
                    self.fmt_expr(&t.w_off, f)?;
                    write!(f, ".. x{} x", FTile::LANES)?;
                    if t.w_stride.as_i64() != Some(FTile::LANES as i64) {
                        f.write_str("stride ")?;
                        self.fmt_expr(&t.w_stride, f)?;
                        f.write_str(" x")?;
                    }
                    self.fmt_expr(&t.k, f)?;
                    write!(f, "], {}[", self.bname(t.x))?;
                    for (i, e) in t.x_rows.iter().enumerate() {
                        if i > 0 {
                            f.write_str(", ")?;
                        }
                        self.fmt_expr(e, f)?;
                    }
                    write!(f, "] step {}", t.x_stride)?;
                    if let Some((a, b)) = &t.prefetch {
                        f.write_str(", prefetch ")?;
                        self.fmt_expr(a, f)?;
                        f.write_str(" + ")?;
                        self.fmt_expr(b, f)?;
                        f.write_str("·p")?;
                    }
                    writeln!(f, ")")?;
                }
                Stmt::QUnpack(u) => {
                    write!(
                        f,
                        "{pad}{}, {} = qunpack.{:?}({}[",
                        self.bname(u.tile),
                        self.bname(u.scales),
                        u.fmt,
                        self.bname(u.w)
                    )?;
                    self.fmt_expr(&u.w_off, f)?;
                    if u.packed {
                        write!(f, ".. x{} packed rows", QTile::LANES)?;
                    } else {
                        write!(f, ".. x{} rows of {} bytes", QTile::LANES, u.row_bytes)?;
                    }
                    writeln!(f, ", blocks {}..+{}])", u.first_block, u.blocks)?;
                }
                Stmt::QTile(t) => {
                    let accs: Vec<String> = t.accs.iter().map(|a| self.vname(*a)).collect();
                    write!(
                        f,
                        "{pad}{} += qtile{}({}, {}/{}/{} blocks {}..+{} of {} [",
                        accs.join(", "),
                        if t.has_min { ".min" } else { "" },
                        if t.direct {
                            format!("{}.{:?} packed", self.bname(t.w), t.fmt)
                        } else {
                            format!("{}/{}", self.bname(t.tile), self.bname(t.scales))
                        },
                        self.bname(t.xq),
                        self.bname(t.xd),
                        self.bname(t.xs),
                        t.first_block,
                        t.blocks,
                        t.row_blocks
                    )?;
                    for (i, e) in t.x_blk.iter().enumerate() {
                        if i > 0 {
                            f.write_str(", ")?;
                        }
                        self.fmt_expr(e, f)?;
                    }
                    f.write_str("] scales [")?;
                    for (i, e) in t.x_sc.iter().enumerate() {
                        if i > 0 {
                            f.write_str(", ")?;
                        }
                        self.fmt_expr(e, f)?;
                    }
                    if let Some((st, off)) = &t.state {
                        write!(f, "] state {}[", self.bname(*st))?;
                        self.fmt_expr(off, f)?;
                    }
                    f.write_str("])\n")?;
                }
            }
        }
        Ok(())
    }
}

/// The kernel's text form (used by `--emit` dumps and tests):
/// `kernel NAME(in %a: f32, out %y: f32; $seq) { ... }`.
impl fmt::Display for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "kernel {}(", self.name)?;
        let mut first = true;
        for (_, b) in self.params() {
            if !first {
                f.write_str(", ")?;
            }
            first = false;
            let role = if b.role == Role::In { "in" } else { "out" };
            write!(f, "{role} %{}: {}", b.name, b.ty)?;
        }
        if !self.dims.is_empty() {
            f.write_str("; ")?;
            let d: Vec<String> = self.dims.iter().map(|d| format!("${d}")).collect();
            f.write_str(&d.join(", "))?;
        }
        f.write_str(") {\n")?;
        self.fmt_block(&self.body, 1, f)?;
        f.write_str("}\n")
    }
}
