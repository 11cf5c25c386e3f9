//! The op table: the one place an op is defined. Each entry gives the text name, the
//! operand count, the attributes, the flags, the shape/dtype rule and the reference
//! semantics. The printer, parser, verifier, shape inference, interpreter (and later
//! the e-graph language) all read this table; adding an op is one entry here plus its
//! two functions in the family module, never edits to matches scattered elsewhere.

use crate::attr::{opt, req, AttrKind as K, AttrSpec};
use crate::{Attrs, Tensor, TensorType};
use std::fmt;

pub mod cnn;
pub mod elementwise;
pub mod fused;
pub mod fused_gemm;
pub mod index;
pub mod linalg;
pub mod nn;
pub mod paged;
pub mod reduce;
pub mod tensor;
mod util;

/// How many operands an op takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arity {
    /// Exactly n.
    Fixed(usize),
    /// Between min and max inclusive.
    Range(usize, usize),
    /// At least n.
    AtLeast(usize),
}

impl Arity {
    /// Does `n` operands satisfy this arity?
    pub fn accepts(self, n: usize) -> bool {
        match self {
            Arity::Fixed(k) => n == k,
            Arity::Range(a, b) => (a..=b).contains(&n),
            Arity::AtLeast(a) => n >= a,
        }
    }
}

impl fmt::Display for Arity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Arity::Fixed(k) => write!(f, "{k}"),
            Arity::Range(a, b) => write!(f, "{a} to {b}"),
            Arity::AtLeast(a) => write!(f, "at least {a}"),
        }
    }
}

/// Op properties that rewrites and code generators group ops by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Flags(u8);

impl Flags {
    /// No flags.
    pub const NONE: Flags = Flags(0);
    /// Applies per element with numpy broadcasting of its operands.
    pub const ELEMENTWISE: Flags = Flags(1);
    /// Operands may be swapped.
    pub const COMMUTATIVE: Flags = Flags(2);
    /// Reduces over axes.
    pub const REDUCTION: Flags = Flags(4);
    /// Reads or writes state outside its operands (the KV cache): never folded or CSE'd.
    pub const STATEFUL: Flags = Flags(8);

    /// Union.
    pub const fn or(self, o: Flags) -> Flags {
        Flags(self.0 | o.0)
    }

    /// Does this set contain all of `o`?
    pub const fn has(self, o: Flags) -> bool {
        self.0 & o.0 == o.0
    }
}

/// Error of a shape/dtype rule, naming the op.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{op}: {msg}")]
pub struct InferError {
    /// Op name.
    pub op: String,
    /// What is wrong.
    pub msg: String,
}

impl InferError {
    /// Builds an error.
    pub fn new(op: &str, msg: impl Into<String>) -> InferError {
        InferError {
            op: op.to_string(),
            msg: msg.into(),
        }
    }
}

/// A shape/dtype rule: operand types and attributes to result types. The error string
/// says what is wrong; the caller adds the op and node.
pub type InferFn = fn(&[&TensorType], &Attrs) -> Result<Vec<TensorType>, String>;

/// Reference semantics: operand tensors to result tensors.
pub type EvalFn =
    fn(&[&Tensor], &Attrs, &mut crate::interp::EvalCtx) -> Result<Vec<Tensor>, String>;

/// One entry of the op table.
pub struct OpDef {
    /// Text name.
    pub name: &'static str,
    /// Operand count.
    pub arity: Arity,
    /// Declared attributes.
    pub attrs: &'static [AttrSpec],
    /// Flags.
    pub flags: Flags,
    /// Shape/dtype rule.
    pub infer: InferFn,
    /// Reference semantics.
    pub eval: EvalFn,
    /// One-line description.
    pub doc: &'static str,
}

macro_rules! op_table {
    ($( $(#[doc = $doc:literal])+ $variant:ident = $name:literal, $arity:expr, $flags:expr,
        [$($attr:expr),* $(,)?], $infer:path, $eval:path; )*) => {
        /// An operation. `Op::def` gives its table entry.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Op { $( $(#[doc = $doc])+ $variant, )* }

        static TABLE: &[OpDef] = &[ $( OpDef {
            name: $name, arity: $arity, flags: $flags, attrs: &[$($attr),*],
            infer: $infer, eval: $eval, doc: concat!($($doc),+),
        }, )* ];

        impl Op {
            /// Every op, in table order.
            pub const ALL: &'static [Op] = &[ $( Op::$variant, )* ];
        }
    };
}

use Arity::{AtLeast, Fixed, Range};
const EW: Flags = Flags::ELEMENTWISE;
const EWC: Flags = Flags::ELEMENTWISE.or(Flags::COMMUTATIVE);
const RED: Flags = Flags::REDUCTION;
const NONE: Flags = Flags::NONE;

use elementwise as ew;
use index as ix;
use linalg as la;
use reduce as rd;
use tensor as tn;

op_table! {
    // ----- elementwise, unary (float in, same type out unless noted) -----
    /// -x
    Neg = "neg", Fixed(1), EW, [], ew::infer_numeric_unary, ew::eval_neg;
    /// |x|
    Abs = "abs", Fixed(1), EW, [], ew::infer_numeric_unary, ew::eval_abs;
    /// e^x
    Exp = "exp", Fixed(1), EW, [], ew::infer_float_unary, ew::eval_exp;
    /// natural log
    Log = "log", Fixed(1), EW, [], ew::infer_float_unary, ew::eval_log;
    /// square root
    Sqrt = "sqrt", Fixed(1), EW, [], ew::infer_float_unary, ew::eval_sqrt;
    /// 1/sqrt(x)
    Rsqrt = "rsqrt", Fixed(1), EW, [], ew::infer_float_unary, ew::eval_rsqrt;
    /// 1/x
    Reciprocal = "reciprocal", Fixed(1), EW, [], ew::infer_float_unary, ew::eval_reciprocal;
    /// tanh
    Tanh = "tanh", Fixed(1), EW, [], ew::infer_float_unary, ew::eval_tanh;
    /// 1/(1+e^-x)
    Sigmoid = "sigmoid", Fixed(1), EW, [], ew::infer_float_unary, ew::eval_sigmoid;
    /// max(x, 0)
    Relu = "relu", Fixed(1), EW, [], ew::infer_numeric_unary, ew::eval_relu;
    /// x * sigmoid(x)
    Silu = "silu", Fixed(1), EW, [], ew::infer_float_unary, ew::eval_silu;
    /// GELU; approximate = "none" (erf, default) or "tanh"
    Gelu = "gelu", Fixed(1), EW, [opt("approximate", K::Str)], ew::infer_gelu, ew::eval_gelu;
    /// error function
    Erf = "erf", Fixed(1), EW, [], ew::infer_float_unary, ew::eval_erf;
    /// sine
    Sin = "sin", Fixed(1), EW, [], ew::infer_float_unary, ew::eval_sin;
    /// cosine
    Cos = "cos", Fixed(1), EW, [], ew::infer_float_unary, ew::eval_cos;
    /// round toward -inf
    Floor = "floor", Fixed(1), EW, [], ew::infer_float_unary, ew::eval_floor;
    /// round toward +inf
    Ceil = "ceil", Fixed(1), EW, [], ew::infer_float_unary, ew::eval_ceil;
    /// round half to even
    Round = "round", Fixed(1), EW, [], ew::infer_float_unary, ew::eval_round;
    /// -1, 0 or 1
    Sign = "sign", Fixed(1), EW, [], ew::infer_numeric_unary, ew::eval_sign;
    /// logical not (bool)
    Not = "not", Fixed(1), EW, [], ew::infer_bool_unary, ew::eval_not;
    /// clamp to [min, max] (either bound optional)
    Clip = "clip", Fixed(1), EW, [opt("min", K::Float), opt("max", K::Float)], ew::infer_numeric_unary, ew::eval_clip;
    /// dtype conversion
    Cast = "cast", Fixed(1), EW, [req("to", K::Type)], ew::infer_cast, ew::eval_cast;

    // ----- elementwise, binary with numpy broadcasting -----
    /// a + b
    Add = "add", Fixed(2), EWC, [], ew::infer_binary, ew::eval_add;
    /// a - b
    Sub = "sub", Fixed(2), EW, [], ew::infer_binary, ew::eval_sub;
    /// a * b
    Mul = "mul", Fixed(2), EWC, [], ew::infer_binary, ew::eval_mul;
    /// a / b (integer division truncates)
    Div = "div", Fixed(2), EW, [], ew::infer_binary, ew::eval_div;
    /// a ^ b
    Pow = "pow", Fixed(2), EW, [], ew::infer_binary, ew::eval_pow;
    /// max(a, b)
    Max = "max", Fixed(2), EWC, [], ew::infer_binary, ew::eval_max;
    /// min(a, b)
    Min = "min", Fixed(2), EWC, [], ew::infer_binary, ew::eval_min;
    /// a == b (bool result)
    Equal = "equal", Fixed(2), EWC, [], ew::infer_compare, ew::eval_equal;
    /// a < b (bool result)
    Less = "less", Fixed(2), EW, [], ew::infer_compare, ew::eval_less;
    /// a <= b (bool result)
    LessEqual = "less_equal", Fixed(2), EW, [], ew::infer_compare, ew::eval_less_equal;
    /// a > b (bool result)
    Greater = "greater", Fixed(2), EW, [], ew::infer_compare, ew::eval_greater;
    /// a >= b (bool result)
    GreaterEqual = "greater_equal", Fixed(2), EW, [], ew::infer_compare, ew::eval_greater_equal;
    /// logical and (bool)
    And = "and", Fixed(2), EWC, [], ew::infer_logical, ew::eval_and;
    /// logical or (bool)
    Or = "or", Fixed(2), EWC, [], ew::infer_logical, ew::eval_or;
    /// logical xor (bool)
    Xor = "xor", Fixed(2), EWC, [], ew::infer_logical, ew::eval_xor;
    /// cond ? a : b, all three broadcast
    Where = "where", Fixed(3), EW, [], ew::infer_where, ew::eval_where;

    // ----- reductions -----
    /// sum over `axes` (all axes if empty/absent)
    ReduceSum = "reduce_sum", Fixed(1), RED, [opt("axes", K::Ints), opt("keepdims", K::Bool)], rd::infer_reduce, rd::eval_reduce_sum;
    /// mean over `axes`
    ReduceMean = "reduce_mean", Fixed(1), RED, [opt("axes", K::Ints), opt("keepdims", K::Bool)], rd::infer_reduce, rd::eval_reduce_mean;
    /// max over `axes`
    ReduceMax = "reduce_max", Fixed(1), RED, [opt("axes", K::Ints), opt("keepdims", K::Bool)], rd::infer_reduce, rd::eval_reduce_max;
    /// min over `axes`
    ReduceMin = "reduce_min", Fixed(1), RED, [opt("axes", K::Ints), opt("keepdims", K::Bool)], rd::infer_reduce, rd::eval_reduce_min;
    /// product over `axes`
    ReduceProd = "reduce_prod", Fixed(1), RED, [opt("axes", K::Ints), opt("keepdims", K::Bool)], rd::infer_reduce, rd::eval_reduce_prod;
    /// index of the max along `axis` (first on ties), i64
    ArgMax = "argmax", Fixed(1), RED, [req("axis", K::Int), opt("keepdims", K::Bool)], rd::infer_arg, rd::eval_argmax;
    /// index of the min along `axis` (first on ties), i64
    ArgMin = "argmin", Fixed(1), RED, [req("axis", K::Int), opt("keepdims", K::Bool)], rd::infer_arg, rd::eval_argmin;
    /// softmax along `axis`
    Softmax = "softmax", Fixed(1), RED, [req("axis", K::Int)], rd::infer_softmax, rd::eval_softmax;
    /// log of softmax along `axis`
    LogSoftmax = "log_softmax", Fixed(1), RED, [req("axis", K::Int)], rd::infer_softmax, rd::eval_log_softmax;
    /// running sum along `axis` (`exclusive`, `reverse` as ONNX CumSum)
    CumSum = "cumsum", Fixed(1), NONE, [req("axis", K::Int), opt("exclusive", K::Bool), opt("reverse", K::Bool)], rd::infer_cumsum, rd::eval_cumsum;

    // ----- linear algebra -----
    /// numpy matmul: batch dims broadcast, 1-D operands promoted
    MatMul = "matmul", Fixed(2), NONE, [], la::infer_matmul, la::eval_matmul;
    /// x[..., k] . w[n, k]^T (+ b[n]); `w` may be a block-quantized weight, whose kernel
    /// then quantizes x to blocks of 32 at run time: int16 (the default) or int8 when
    /// `act_bits` is 8 (the reference semantics stay exact: the bits are a lowering's
    /// precision, as f16 accumulation would be); `act_amax` (one value per block of 32 input
    /// columns) fixes each block's scale at `act_amax / 127` (int16: `/ 32767`),
    /// values beyond it saturating (static scales, from calibration); `residual = 1` adds
    /// the operand after w (and b) last, `glu`/`glu_in` take a GLU of the result's or
    /// of x's halves (docs/passes.md, `fuse-epilogue`), and `norm_eps = e` reads x as
    /// `rms_norm(x, nw) {eps = e}`, its weight nw the last operand
    Linear = "linear", Range(2, 5), NONE, [opt("act_bits", K::Int), opt("act_amax", K::Floats), opt("residual", K::Int), opt("glu", K::Str), opt("glu_in", K::Str), opt("norm_eps", K::Float)], la::infer_linear, la::eval_linear;

    // ----- tensor layout and indexing -----
    /// constant tensor from `value`
    Constant = "constant", Fixed(0), NONE, [req("value", K::Tensor)], tn::infer_constant, tn::eval_constant;
    /// same elements, new `shape` (dims may be symbolic; element counts must agree)
    Reshape = "reshape", Fixed(1), NONE, [req("shape", K::Shape)], tn::infer_reshape, tn::eval_reshape;
    /// permute axes by `perm`
    Transpose = "transpose", Fixed(1), NONE, [req("perm", K::Ints)], tn::infer_transpose, tn::eval_transpose;
    /// join along `axis`
    Concat = "concat", AtLeast(1), NONE, [req("axis", K::Int)], tn::infer_concat, tn::eval_concat;
    /// split along `axis` into pieces of `sizes`
    Split = "split", Fixed(1), NONE, [req("axis", K::Int), req("sizes", K::Ints)], tn::infer_split, tn::eval_split;
    /// ONNX Slice with constant starts/ends/axes/steps (negative and clamped as ONNX)
    Slice = "slice", Fixed(1), NONE, [req("starts", K::Ints), req("ends", K::Ints), opt("axes", K::Ints), opt("steps", K::Ints)], tn::infer_slice, tn::eval_slice;
    /// take rows of the table (operand 0) along `axis` at indices (operand 1); the table may be block-quantized
    Gather = "gather", Fixed(2), NONE, [opt("axis", K::Int)], tn::infer_gather, tn::eval_gather;
    /// ONNX GatherElements along `axis`
    GatherElements = "gather_elements", Fixed(2), NONE, [req("axis", K::Int)], tn::infer_gather_elements, tn::eval_gather_elements;
    /// broadcast to `shape` (numpy rules, both ways as ONNX Expand)
    Expand = "expand", Fixed(1), NONE, [req("shape", K::Shape)], tn::infer_expand, tn::eval_expand;
    /// remove size-1 `axes`
    Squeeze = "squeeze", Fixed(1), NONE, [req("axes", K::Ints)], tn::infer_squeeze, tn::eval_squeeze;
    /// insert size-1 `axes` (positions in the output)
    Unsqueeze = "unsqueeze", Fixed(1), NONE, [req("axes", K::Ints)], tn::infer_unsqueeze, tn::eval_unsqueeze;
    /// repeat `repeats` times along each axis
    Tile = "tile", Fixed(1), NONE, [req("repeats", K::Ints)], tn::infer_tile, tn::eval_tile;
    /// keep the upper (or lower) triangle of the last two axes, diagonal offset `k`
    Trilu = "trilu", Fixed(1), NONE, [req("upper", K::Bool), opt("k", K::Int)], tn::infer_trilu, tn::eval_trilu;
    /// constant padding: `pads` = [begin_0.., end_0..] (negative crops), fill `value`
    Pad = "pad", Fixed(1), NONE, [req("pads", K::Ints), opt("value", K::Float)], tn::infer_pad, tn::eval_pad;

    // ----- neural-network building blocks -----
    /// x / sqrt(mean(x^2, last axis) + eps) * w
    RmsNorm = "rms_norm", Fixed(2), NONE, [req("eps", K::Float)], nn::infer_norm, nn::eval_rms_norm;
    /// (x - mean) / sqrt(var + eps) * w (+ b), over the last axis
    LayerNorm = "layer_norm", Range(2, 3), NONE, [req("eps", K::Float)], nn::infer_norm, nn::eval_layer_norm;
    /// rotary embedding of x[b, h, s, d] at positions pos[b, s]; `style` "neox" (halves) or "interleaved" (pairs); `dims` rotated (default d); positions divided by `scale` (default 1.0, linear scaling)
    Rope = "rope", Fixed(2), NONE, [req("theta", K::Float), opt("style", K::Str), opt("dims", K::Int), opt("scale", K::Float)], nn::infer_rope, nn::eval_rope;
    /// softmax(q k^T * scale + mask) v; q[b, h, s, d], k/v[b, kvh, t, d] (GQA when kvh < h); causal aligns the last query with the last key (query i is at position p = i + t - s); `window = w` (> 0) hides the keys at positions <= p - w, so a causal query sees p-w+1..=p (absent or 0: no window); `softcap = c` makes each score c·tanh(score/c) before the mask is added (absent: none)
    Attention = "attention", Range(3, 4), NONE, [req("scale", K::Float), opt("causal", K::Bool), opt("window", K::Int), opt("softcap", K::Float)], nn::infer_attention, nn::eval_attention;
    /// `attention` as the optimizer leaves it for a tiled, online-softmax kernel (no score matrix in memory): same operands and meaning; `block_k` is the key-tile length the kernel uses (default 64); with `causal`, `causal_fill = f` scores the keys past the causal bound q·k·scale + f instead of dropping them (what a where-mask of 0 / f gave: a row whose every visible key is masked then spreads over all keys as the unfused graph did); `window` and `softcap` as for `attention` (keys hidden by the window are dropped, never filled)
    FlashAttention = "flash_attention", Range(3, 4), NONE, [req("scale", K::Float), opt("causal", K::Bool), opt("block_k", K::Int), opt("causal_fill", K::Float), opt("window", K::Int), opt("softcap", K::Float)], nn::infer_attention, nn::eval_attention;
    /// append k/v[b, kvh, seq, d] to layer `layer`'s cache; results are the whole cache [b, kvh, past + seq, d]
    KvAppend = "kv_append", Fixed(2), Flags::STATEFUL, [req("layer", K::Int)], nn::infer_kv_append, nn::eval_kv_append;
    /// the serving form's KV write: k/v[1, kvh, s, d] into the pools [blocks, kvh, block_size, d] at slots[s] (block = slot / block_size); results are the written pools (in place when compiled)
    PagedKvWrite = "paged_kv_write", Fixed(5), Flags::STATEFUL, [opt("k_dim_major", K::Int), opt("token_major", K::Int)], paged::infer_paged_kv_write, paged::eval_paged_kv_write;
    /// the serving form's KV write with its RoPE and its split: qkv[1, s, (heads + 2 kvh)·d] (a merged projection's rows: `heads` query heads, then kvh key heads, then kvh value heads) at positions pos[1, s]; the keys rotated as `rope` (same attributes) and the values go into the pools at slots[s] as `paged_kv_write` with token_major; results are the written pools (in place when compiled) and the rotated queries [1, s, heads, d]
    PagedQkvWrite = "paged_qkv_write", Fixed(5), Flags::STATEFUL, [req("heads", K::Int), req("theta", K::Float), opt("style", K::Str), opt("dims", K::Int), opt("scale", K::Float), opt("k_dim_major", K::Int)], paged::infer_paged_qkv_write, paged::eval_paged_qkv_write;
    /// the serving form's attention: q[1, h, s, d] row r attends keys 0..=pos[0, r] (or the last `window`) of sequence row_seq[r] through block_tables[S, W] into the pools; `softcap` caps scores as c·tanh(x/c); GQA from the head counts
    PagedAttention = "paged_attention", Fixed(6), NONE, [req("scale", K::Float), opt("window", K::Int), opt("softcap", K::Float), opt("k_dim_major", K::Int), opt("token_major", K::Int)], paged::infer_paged_attention, paged::eval_paged_attention;

    // ----- added for the ONNX frontend -----
    /// remainder of a / b: the divisor's sign (numpy `mod`), or the dividend's when `fmod` (C `fmod`)
    Mod = "mod", Fixed(2), EW, [opt("fmod", K::Bool)], ew::infer_binary, ew::eval_mod;
    /// convolution of x[N, C, spatial...] with w[M, C/group, k...] (+ b[M]); `pads` = [begins.., ends..]
    Conv = "conv", Range(2, 3), NONE, [opt("strides", K::Ints), opt("pads", K::Ints), opt("dilations", K::Ints), opt("group", K::Int)], cnn::infer_conv, cnn::eval_conv;
    /// transposed convolution of x[N, C, spatial...] with w[C, M/group, k...] (+ b[M]); `output_padding` extends the end
    ConvTranspose = "conv_transpose", Range(2, 3), NONE, [opt("strides", K::Ints), opt("pads", K::Ints), opt("dilations", K::Ints), opt("group", K::Int), opt("output_padding", K::Ints)], cnn::infer_conv_transpose, cnn::eval_conv_transpose;
    /// max over `kernel` windows of x[N, C, spatial...] (padding never wins; `ceil_mode` keeps partial windows)
    MaxPool = "max_pool", Fixed(1), NONE, [req("kernel", K::Ints), opt("strides", K::Ints), opt("pads", K::Ints), opt("dilations", K::Ints), opt("ceil_mode", K::Bool)], cnn::infer_max_pool, cnn::eval_max_pool;
    /// mean over `kernel` windows of x[N, C, spatial...]; `count_include_pad` counts padding as zeros
    AvgPool = "avg_pool", Fixed(1), NONE, [req("kernel", K::Ints), opt("strides", K::Ints), opt("pads", K::Ints), opt("dilations", K::Ints), opt("ceil_mode", K::Bool), opt("count_include_pad", K::Bool)], cnn::infer_avg_pool, cnn::eval_avg_pool;
    /// resize to `sizes` by nearest / linear / cubic interpolation, separable per axis, ONNX Resize semantics (`scales` drive the coordinate transform)
    Resize = "resize", Fixed(1), NONE, [req("sizes", K::Shape), opt("scales", K::Floats), opt("roi", K::Floats), opt("mode", K::Str), opt("coordinate_transformation_mode", K::Str), opt("nearest_mode", K::Str), opt("cubic_coeff_a", K::Float), opt("exclude_outside", K::Bool), opt("extrapolation_value", K::Float), opt("antialias", K::Bool)], cnn::infer_resize, cnn::eval_resize;
    /// the values of the dims in `value` (symbolic ones evaluated in this run) as an i64 vector
    Dims = "dims", Fixed(0), NONE, [req("value", K::Shape)], tn::infer_dims, tn::eval_dims;
    /// arctangent
    Atan = "atan", Fixed(1), EW, [], ew::infer_float_unary, ew::eval_atan;
    /// bitwise a & b (integers)
    BitwiseAnd = "bitwise_and", Fixed(2), EWC, [], ew::infer_bitwise, ew::eval_bitwise_and;
    /// bitwise a | b (integers)
    BitwiseOr = "bitwise_or", Fixed(2), EWC, [], ew::infer_bitwise, ew::eval_bitwise_or;
    /// bitwise a ^ b (integers)
    BitwiseXor = "bitwise_xor", Fixed(2), EWC, [], ew::infer_bitwise, ew::eval_bitwise_xor;
    /// bitwise complement (integers, wrapped to the dtype)
    BitwiseNot = "bitwise_not", Fixed(1), EW, [], ew::infer_bitwise_not, ew::eval_bitwise_not;
    /// a shifted by b bits, `direction` "left" or "right" (integers)
    BitShift = "bit_shift", Fixed(2), EW, [req("direction", K::Str)], ew::infer_bit_shift, ew::eval_bit_shift;
    /// running product along `axis` (`exclusive`, `reverse` as ONNX CumProd)
    CumProd = "cumprod", Fixed(1), NONE, [req("axis", K::Int), opt("exclusive", K::Bool), opt("reverse", K::Bool)], rd::infer_cumsum, rd::eval_cumprod;
    /// data with updates written (or combined by `reduction`) at indices along `axis` (ONNX ScatterElements)
    ScatterElements = "scatter_elements", Fixed(3), NONE, [opt("axis", K::Int), opt("reduction", K::Str)], ix::infer_scatter_elements, ix::eval_scatter_elements;
    /// data with update slices written (or combined by `reduction`) at index tuples (ONNX ScatterND)
    ScatterNd = "scatter_nd", Fixed(3), NONE, [opt("reduction", K::Str)], ix::infer_scatter_nd, ix::eval_scatter_nd;
    /// slices of data picked by index tuples, after `batch_dims` shared leading dims (ONNX GatherND)
    GatherNd = "gather_nd", Fixed(2), NONE, [opt("batch_dims", K::Int)], ix::infer_gather_nd, ix::eval_gather_nd;
    /// the `k` largest (or smallest) elements along `axis` and their i64 indices, sorted, ties to the lower index
    TopK = "top_k", Fixed(1), RED, [req("k", K::Int), opt("axis", K::Int), opt("largest", K::Bool), opt("sorted", K::Bool)], ix::infer_top_k, ix::eval_top_k;

    // ----- added by the optimizer -----
    /// a tree of elementwise ops in one pass over the elements: `expr` such as "silu(add(mul($0, $1), $2))" (`$k` is operand k; ops without attributes); operands broadcast
    FusedElementwise = "fused_elementwise", AtLeast(1), EW, [req("expr", K::Str)], fused::infer_fused, fused::eval_fused;
    // ----- fused GEMM ops the optimizer produces -----
    /// act(x[..., k] . w[n, k]^T (+ b[n])): `linear` with an activation epilogue; `act` is "silu", "relu", "tanh", "sigmoid", "gelu" or "gelu_tanh"
    LinearAct = "linear_act", Range(2, 4), NONE, [req("act", K::Str), opt("act_bits", K::Int), opt("act_amax", K::Floats), opt("residual", K::Int)], fused_gemm::infer_linear_act, fused_gemm::eval_linear_act;
    /// gated unit act(gate) * up: from two operands of one type, or from one x[..., 2n] whose first half is the gate and second the up projection (SwiGLU: act = "silu", GeGLU: "gelu")
    Glu = "glu", Range(1, 2), NONE, [req("act", K::Str)], fused_gemm::infer_glu, fused_gemm::eval_glu;
}

impl Op {
    /// The table entry.
    pub fn def(self) -> &'static OpDef {
        &TABLE[self as usize]
    }

    /// Text name.
    pub fn name(self) -> &'static str {
        self.def().name
    }

    /// Looks an op up by its text name.
    pub fn from_name(name: &str) -> Option<Op> {
        Op::ALL.iter().copied().find(|o| o.name() == name)
    }

    /// Flags.
    pub fn flags(self) -> Flags {
        self.def().flags
    }

    /// Runs the shape/dtype rule after checking operand count.
    pub fn infer(
        self,
        inputs: &[&TensorType],
        attrs: &Attrs,
    ) -> Result<Vec<TensorType>, InferError> {
        let d = self.def();
        if !d.arity.accepts(inputs.len()) {
            return Err(InferError::new(
                d.name,
                format!("takes {} operand(s), got {}", d.arity, inputs.len()),
            ));
        }
        (d.infer)(inputs, attrs).map_err(|m| InferError::new(d.name, m))
    }

    /// Runs the reference semantics after checking operand count (the verifier may not
    /// have run, and eval functions read their operands by position).
    pub fn eval(
        self,
        inputs: &[&Tensor],
        attrs: &Attrs,
        ctx: &mut crate::interp::EvalCtx,
    ) -> Result<Vec<Tensor>, String> {
        let d = self.def();
        if !d.arity.accepts(inputs.len()) {
            return Err(format!(
                "takes {} operand(s), got {}",
                d.arity,
                inputs.len()
            ));
        }
        (d.eval)(inputs, attrs, ctx)
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_found() {
        let mut names: Vec<&str> = Op::ALL.iter().map(|o| o.name()).collect();
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n, "duplicate op name in the table");
        for &op in Op::ALL {
            assert_eq!(Op::from_name(op.name()), Some(op));
        }
    }
}
