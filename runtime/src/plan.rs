//! The plan: what the emitted executable does with its kernels — which buffers exist
//! (graph inputs, weights and constants in the payload, temporaries sized by shape
//! polynomials over the graph's symbols), which kernel runs with which buffers and
//! dims, what the runtime does itself (KV-cache appends), and when a temporary can be
//! freed. The compiler writes it; the runtime walks it. It is JSON for now (simple to
//! read in a dump and to evolve); a binary manifest can replace it later.

use serde::{Deserialize, Serialize};

/// An element type as the runtime sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ElemType {
    /// f32.
    F32,
    /// f16.
    F16,
    /// bf16.
    Bf16,
    /// f64.
    F64,
    /// i64.
    I64,
    /// i32.
    I32,
    /// i16.
    I16,
    /// i8.
    I8,
    /// u8.
    U8,
    /// u16.
    U16,
    /// u32.
    U32,
    /// bool (one byte).
    Bool,
    /// A packed block format (weights only): `block_bytes` bytes per `block_len`
    /// elements.
    Block {
        /// Elements per block.
        block_len: u32,
        /// Bytes per block.
        block_bytes: u32,
    },
}

impl ElemType {
    /// Bytes for `numel` elements, `None` on overflow or a partial block.
    pub fn bytes_for(self, numel: u64) -> Option<u64> {
        match self {
            ElemType::Block {
                block_len,
                block_bytes,
            } => {
                if block_len == 0 || !numel.is_multiple_of(block_len as u64) {
                    return None;
                }
                (numel / block_len as u64).checked_mul(block_bytes as u64)
            }
            t => numel.checked_mul(t.size() as u64),
        }
    }

    /// Bytes per element of a plain type (block formats: bytes per block).
    pub fn size(self) -> usize {
        match self {
            ElemType::F32 | ElemType::I32 | ElemType::U32 => 4,
            ElemType::F16 | ElemType::Bf16 | ElemType::I16 | ElemType::U16 => 2,
            ElemType::F64 | ElemType::I64 => 8,
            ElemType::I8 | ElemType::U8 | ElemType::Bool => 1,
            ElemType::Block { block_bytes, .. } => block_bytes as usize,
        }
    }

    /// The IR's name of the type.
    pub fn name(self) -> &'static str {
        match self {
            ElemType::F32 => "f32",
            ElemType::F16 => "f16",
            ElemType::Bf16 => "bf16",
            ElemType::F64 => "f64",
            ElemType::I64 => "i64",
            ElemType::I32 => "i32",
            ElemType::I16 => "i16",
            ElemType::I8 => "i8",
            ElemType::U8 => "u8",
            ElemType::U16 => "u16",
            ElemType::U32 => "u32",
            ElemType::Bool => "bool",
            ElemType::Block { .. } => "block",
        }
    }
}

/// A dim: Σ coefficient × Π symbols (indices into [`Plan::symbols`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Poly(pub Vec<(i64, Vec<u32>)>);

impl Poly {
    /// A constant.
    pub fn c(v: i64) -> Poly {
        Poly(if v == 0 { vec![] } else { vec![(v, vec![])] })
    }

    /// Evaluates with symbol values `syms` (`None` = unbound); `None` on an unbound
    /// symbol or overflow.
    pub fn eval(&self, syms: &[Option<i64>]) -> Option<i64> {
        let mut total = 0i64;
        for (c, mono) in &self.0 {
            let mut t = *c;
            for &s in mono {
                t = t.checked_mul((*syms.get(s as usize)?)?)?;
            }
            total = total.checked_add(t)?;
        }
        Some(total)
    }

    /// The symbol index when the dim is exactly one symbol.
    pub fn as_symbol(&self) -> Option<u32> {
        match &self.0[..] {
            [(1, m)] if m.len() == 1 => Some(m[0]),
            _ => None,
        }
    }

    /// Printed with symbol names (for messages).
    pub fn show(&self, names: &[String]) -> String {
        if self.0.is_empty() {
            return "0".into();
        }
        let terms: Vec<String> = self
            .0
            .iter()
            .map(|(c, m)| {
                let mut parts: Vec<String> = Vec::new();
                if *c != 1 || m.is_empty() {
                    parts.push(c.to_string());
                }
                for &s in m {
                    parts.push(names.get(s as usize).cloned().unwrap_or("?".into()));
                }
                parts.join("*")
            })
            .collect();
        terms.join(" + ")
    }
}

/// Where a buffer's bytes come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Graph input `i`.
    Input(u32),
    /// A byte range of the payload's data section (a weight or a constant).
    Data {
        /// Offset in the data section.
        offset: u64,
        /// Length.
        len: u64,
    },
    /// Allocated when first written, sized from the shape.
    Temp,
}

/// A buffer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BufferDecl {
    /// For messages (`%name` of the value it holds first).
    pub name: String,
    /// Element type.
    pub dtype: ElemType,
    /// Shape (its element count sizes a temporary).
    pub shape: Vec<Poly>,
    /// Origin.
    pub source: Source,
}

/// A graph input or output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IoDecl {
    /// Name (without `%`).
    pub name: String,
    /// The buffer holding it.
    pub buffer: u32,
    /// Element type.
    pub dtype: ElemType,
    /// Shape.
    pub shape: Vec<Poly>,
}

/// What a step does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// Calls kernel `kernel` with these buffers and dims.
    Kernel {
        /// Index into the kernel table.
        kernel: u32,
        /// Parameter buffers (operands then results).
        bufs: Vec<u32>,
        /// Dim arguments.
        dims: Vec<Poly>,
    },
    /// Appends k/v `[b, kvh, seq, d]` to layer `layer`'s cache; `out_k`/`out_v` become
    /// the whole cache `[b, kvh, past + seq, d]`.
    KvAppend {
        /// Layer.
        layer: i64,
        /// New keys.
        k: u32,
        /// New values.
        v: u32,
        /// The cache's keys after the append.
        out_k: u32,
        /// The cache's values after the append.
        out_v: u32,
    },
}

/// One step: an action, then the temporaries no later step reads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// The node it came from (`%name`, for messages and profiles).
    pub node: String,
    /// The action.
    pub kind: StepKind,
    /// Buffers to release after the step.
    pub free: Vec<u32>,
}

/// The whole plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// [`crate::abi::ABI_VERSION`] of the compiler that wrote it.
    pub abi_version: u32,
    /// Module name.
    pub name: String,
    /// Graph symbols (`batch`, `seq`, `past`).
    pub symbols: Vec<String>,
    /// Kernel names, in table order (checked against the object's table).
    pub kernels: Vec<String>,
    /// Buffers.
    pub buffers: Vec<BufferDecl>,
    /// Graph inputs.
    pub inputs: Vec<IoDecl>,
    /// Graph outputs.
    pub outputs: Vec<IoDecl>,
    /// Steps in order.
    pub steps: Vec<Step>,
    /// Free-form facts for `info` (target, opt level, ...).
    #[serde(default)]
    pub info: Vec<(String, String)>,
    /// What `generate` needs, for language models.
    #[serde(default)]
    pub llm: Option<LlmInfo>,
    /// What `embed` needs, for sentence-embedding (encoder) models.
    #[serde(default)]
    pub encoder: Option<EncoderInfo>,
    /// The instruction-set extensions the kernels were compiled for, checked at start
    /// ([`crate::cpu::check`]); `None` when the target has no such check (not x86-64).
    #[serde(default)]
    pub cpu: Option<CpuRequirement>,
    /// A `--cpu portable` build's kernel variants, most capable first, in the order of
    /// the object's kernel tables (empty for a build for one CPU). The executable runs
    /// the first one this CPU has everything for ([`crate::cpu::choose`]); `cpu` is
    /// then the last, least demanding one.
    #[serde(default)]
    pub cpu_variants: Vec<CpuRequirement>,
    /// A CUDA build's device code and launches (`llmc build --target cuda`); the
    /// executable then runs its kernels on the GPU and its object holds no CPU kernel.
    #[serde(default)]
    pub gpu: Option<GpuPlan>,
}

/// What a CUDA executable carries for the GPU: its kernels as PTX per architecture
/// (the driver compiles the best one for the device at start) and how each kernel is
/// launched.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GpuPlan {
    /// One module per architecture, in ascending order of architecture.
    pub modules: Vec<GpuModule>,
    /// Per kernel, in table order: its launch.
    pub launches: Vec<GpuLaunch>,
}

/// One architecture's device code.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GpuModule {
    /// `sm_80`, `sm_90`, ...
    pub arch: String,
    /// The PTX module text.
    pub ptx: String,
    /// The entry name of each kernel, in table order.
    pub entries: Vec<String>,
    /// Per kernel, what ptxas reported (registers, shared bytes, spill bytes), when it
    /// assembled the module at build time.
    #[serde(default)]
    pub ptxas: Vec<(u32, u32, u32)>,
    /// The module assembled by ptxas at build time (a cubin, base64), when ptxas ran:
    /// loaded as is on a device of the same major architecture and at least its minor,
    /// so the driver compiles nothing at start.
    #[serde(default)]
    pub cubin_base64: Option<String>,
}

impl GpuModule {
    /// The compute capability the module targets (`sm_86` -> 86).
    pub fn capability(&self) -> Option<u32> {
        self.arch.strip_prefix("sm_")?.parse().ok()
    }

    /// True when the module's cubin runs on a device of compute capability `cc`
    /// (`major * 10 + minor`): same major, minor at most the device's.
    pub fn cubin_runs_on(&self, cc: u32) -> bool {
        self.cubin_base64.is_some()
            && self
                .capability()
                .is_some_and(|c| c / 10 == cc / 10 && c <= cc)
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (for binary blobs inside the JSON plan).
pub fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes [`base64_encode`]'s output; `None` on a malformed string.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.as_bytes();
    if !s.len().is_multiple_of(4) {
        return None;
    }
    let val = |c: u8| B64.iter().position(|&b| b == c).map(|v| v as u32);
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    for q in s.chunks(4) {
        let pad = q.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 {
            return None;
        }
        let mut n = 0u32;
        for &c in &q[..4 - pad] {
            n = n << 6 | val(c)?;
        }
        n <<= 6 * pad as u32;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Some(out)
}

/// A kernel's launch: blocks per axis as expressions over the kernel's dims, threads
/// per block, shared memory per block.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GpuLaunch {
    /// Blocks along x, y, z.
    pub grid: [DimExpr; 3],
    /// Threads along x, y, z.
    pub block: [u32; 3],
    /// Static shared memory per block, bytes.
    pub shared_bytes: u32,
}

/// An integer expression over a kernel's dim arguments (a launch's grid).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DimExpr {
    /// A constant.
    Int(i64),
    /// Dim argument `i` of the step.
    Dim(u32),
    /// `a op b`.
    Bin(DimOp, Box<DimExpr>, Box<DimExpr>),
}

/// The operators of [`DimExpr`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DimOp {
    /// +
    Add,
    /// -
    Sub,
    /// *
    Mul,
    /// / (truncating; 0 when dividing by 0)
    Div,
    /// % (0 when dividing by 0)
    Rem,
    /// max
    Max,
    /// min
    Min,
}

impl DimExpr {
    /// The value for dim arguments `dims`; `None` when it names a dim not passed.
    pub fn eval(&self, dims: &[i64]) -> Option<i64> {
        Some(match self {
            DimExpr::Int(v) => *v,
            DimExpr::Dim(i) => *dims.get(*i as usize)?,
            DimExpr::Bin(op, a, b) => {
                let (x, y) = (a.eval(dims)?, b.eval(dims)?);
                match op {
                    DimOp::Add => x.wrapping_add(y),
                    DimOp::Sub => x.wrapping_sub(y),
                    DimOp::Mul => x.wrapping_mul(y),
                    DimOp::Div => x.checked_div(y).unwrap_or(0),
                    DimOp::Rem => x.checked_rem(y).unwrap_or(0),
                    DimOp::Max => x.max(y),
                    DimOp::Min => x.min(y),
                }
            }
        })
    }
}

/// What a CPU executable's code needs from the machine it runs on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuRequirement {
    /// The CPU the code was built for, as `--cpu` named it after resolving `native`
    /// (`znver5`, `x86-64-v3`).
    pub built_for: String,
    /// Extensions the code may use, in [`crate::cpu::CHECKABLE`] names.
    pub features: Vec<String>,
}

/// A sentence-embedding model's facts: its tokenizer and the encoder contract
/// (`%ids: i64[batch, seq]`, optional `%mask` and `%pos` of the same shape ->
/// `%embedding: f32[batch, dim]`, pooled (and normalized) inside the graph).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EncoderInfo {
    /// The tokenizer as `tokenizer.json` text.
    pub tokenizer_json: String,
    /// Maximum tokens per text (position embeddings).
    pub context_length: Option<i64>,
    /// Graph-input index of the token ids.
    pub ids_input: u32,
    /// Graph-input index of the attention mask (all ones for one text), if any.
    pub mask_input: Option<u32>,
    /// Graph-input index of the positions (`0..n`), if any.
    pub pos_input: Option<u32>,
    /// Graph-output index of the embedding.
    pub embedding_output: u32,
}

/// A language model's facts: its tokenizer and the decoder contract
/// (`%ids: i64[batch, seq]`, `%pos: i64[batch, seq]` -> `%logits: f32[batch, vocab]`,
/// the KV cache carried between calls).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlmInfo {
    /// The tokenizer as `tokenizer.json` text.
    pub tokenizer_json: String,
    /// Beginning-of-sequence id.
    pub bos: Option<u32>,
    /// Ids that end generation.
    pub eos: Vec<u32>,
    /// Chat template (Jinja).
    pub chat_template: Option<String>,
    /// Maximum context length.
    pub context_length: Option<i64>,
    /// Graph-input index of the token ids.
    pub ids_input: u32,
    /// Graph-input index of the positions.
    pub pos_input: u32,
    /// Graph-output index of the logits.
    pub logits_output: u32,
    /// The serving form's contract, when the plan is the engine's step function.
    #[serde(default)]
    pub serving: Option<ServingInfo>,
}

/// The serving form: one step over a flat batch of `T` token rows from many sequences
/// (`%ids`, `%pos: i64[1, T]`), the paged KV pool of each layer as graph inputs the
/// step writes in place (`[blocks, kv_heads, block_size, head_dim]`), the attention
/// metadata (`%kv_slots: i64[T]`, `%kv_row_seq: i32[T]`, `%kv_block_tables: i32[S,
/// W]`) and the rows whose logits are returned (`%logit_rows: i64[R]` ->
/// `%logits: f32[R, vocab]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServingInfo {
    /// Tokens per KV block.
    pub block_size: usize,
    /// Element type of the KV pool.
    pub kv_dtype: ElemType,
    /// Key/value heads per layer.
    pub kv_heads: usize,
    /// Head dim (keys and values).
    pub head_dim: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// Graph input of the token ids.
    pub ids_input: u32,
    /// Graph input of the positions.
    pub pos_input: u32,
    /// Graph input of the cache slots of the new tokens.
    pub slots_input: u32,
    /// Graph input of each row's sequence index.
    pub row_seq_input: u32,
    /// Graph input of the block tables.
    pub block_tables_input: u32,
    /// Graph input of the rows whose logits are returned.
    pub logit_rows_input: u32,
    /// Graph output of the logits.
    pub logits_output: u32,
    /// Graph output of the greedy picks (`argmax` of each logits row, i64), where the
    /// build added them (CUDA).
    #[serde(default)]
    pub picks_output: Option<u32>,
    /// The pools, per layer.
    pub layers: Vec<ServingLayer>,
}

/// One layer's KV pool inputs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServingLayer {
    /// Graph input of the key pool.
    pub k_pool_input: u32,
    /// Graph input of the value pool.
    pub v_pool_input: u32,
}

impl Plan {
    /// Bytes of buffer `b` for symbol values `syms` (its shape's element count in its
    /// type), or why it has none.
    pub fn buffer_bytes(&self, b: usize, syms: &[Option<i64>]) -> Result<usize, String> {
        let d = self
            .buffers
            .get(b)
            .ok_or_else(|| format!("buffer {b} of {}", self.buffers.len()))?;
        let mut n: u64 = 1;
        for p in &d.shape {
            let v = p.eval(syms).ok_or_else(|| {
                format!(
                    "dim {} of buffer {} has no value",
                    p.show(&self.symbols),
                    d.name
                )
            })?;
            if v < 0 {
                return Err(format!(
                    "buffer {} has a negative dim {} = {v}",
                    d.name,
                    p.show(&self.symbols)
                ));
            }
            n = n
                .checked_mul(v as u64)
                .filter(|&n| n <= 1 << 40)
                .ok_or_else(|| format!("buffer {} is too large", d.name))?;
        }
        d.dtype
            .bytes_for(n)
            .map(|b| b as usize)
            .ok_or_else(|| format!("buffer {} has a partial block", d.name))
    }

    /// Serialises to JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads JSON.
    pub fn from_json(s: &[u8]) -> Result<Plan, String> {
        serde_json::from_slice(s).map_err(|e| format!("the plan is malformed: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_every_length_and_refuses_garbage() {
        for n in 0..70usize {
            let data: Vec<u8> = (0..n).map(|i| (i * 37 + 11) as u8).collect();
            let e = base64_encode(&data);
            assert_eq!(e.len(), n.div_ceil(3) * 4);
            assert_eq!(base64_decode(&e).as_deref(), Some(&data[..]), "{n}");
        }
        assert_eq!(base64_encode(b"Man"), "TWFu");
        assert_eq!(base64_encode(b"Ma"), "TWE=");
        assert_eq!(base64_decode("TWE"), None);
        assert_eq!(base64_decode("T!E="), None);
    }

    #[test]
    fn a_cubin_runs_on_its_major_architecture_only() {
        let m = |arch: &str| GpuModule {
            arch: arch.into(),
            ptx: String::new(),
            entries: vec![],
            ptxas: vec![],
            cubin_base64: Some(String::new()),
        };
        assert!(m("sm_80").cubin_runs_on(86));
        assert!(m("sm_90").cubin_runs_on(90));
        assert!(!m("sm_80").cubin_runs_on(90));
        assert!(!m("sm_86").cubin_runs_on(80));
    }
}
