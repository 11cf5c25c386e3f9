//! From a module to what the executable runs: a kernel per distinct lowered node
//! (identical kernels — the same op on the same shapes in every layer — are emitted
//! once), the plan the runtime walks (buffers, steps, frees), and the data section
//! (weights and constants, 64-byte aligned, borrowed from the module where possible).

use crate::BuildError;
use llmc_ir::{DType, Dim, Module, Op, TensorType, ValueDef, ValueId};
use llmc_kernels::{Kernel, Lowered};
use llmc_runtime::abi::ABI_VERSION;
use llmc_runtime::plan::{BufferDecl, ElemType, IoDecl, Plan, Poly, Source, Step, StepKind};
use std::collections::HashMap;

/// A piece of the data section.
pub enum Piece<'m> {
    /// Bytes borrowed from the module's weights.
    Borrowed(&'m [u8]),
    /// Bytes made here (constants, padding).
    Owned(Vec<u8>),
}

impl Piece<'_> {
    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Piece::Borrowed(b) => b,
            Piece::Owned(v) => v,
        }
    }
}

/// A module lowered for the CPU: kernels, plan, data.
pub struct Planned<'m> {
    /// Distinct kernels, in table order.
    pub kernels: Vec<Kernel>,
    /// The plan.
    pub plan: Plan,
    /// The data section, in order.
    pub data: Vec<Piece<'m>>,
    /// What memory planning (buffer reuse) did.
    pub memory: MemoryReport,
    /// For a GPU plan: how each kernel (in table order) was scheduled.
    pub gpu_schedules: Vec<llmc_kernels::templates::gpu::GpuSchedule>,
}

impl Planned<'_> {
    /// Total data bytes.
    pub fn data_len(&self) -> usize {
        self.data.iter().map(|p| p.bytes().len()).sum()
    }
}

/// The runtime's element type of an IR dtype.
pub fn elem_type(d: DType) -> ElemType {
    match d {
        DType::F32 => ElemType::F32,
        DType::F16 => ElemType::F16,
        DType::BF16 => ElemType::Bf16,
        DType::F64 => ElemType::F64,
        DType::I64 => ElemType::I64,
        DType::I32 => ElemType::I32,
        DType::I16 => ElemType::I16,
        DType::I8 => ElemType::I8,
        DType::U8 => ElemType::U8,
        DType::U16 => ElemType::U16,
        DType::U32 => ElemType::U32,
        DType::Bool => ElemType::Bool,
        q => ElemType::Block {
            block_len: q.block_len() as u32,
            block_bytes: q.block_bytes() as u32,
        },
    }
}

struct Builder<'m> {
    m: &'m Module,
    symbols: Vec<String>,
    buffers: Vec<BufferDecl>,
    data: Vec<Piece<'m>>,
    data_len: u64,
}

impl<'m> Builder<'m> {
    fn sym(&mut self, s: &str) -> u32 {
        match self.symbols.iter().position(|x| x == s) {
            Some(i) => i as u32,
            None => {
                self.symbols.push(s.to_string());
                (self.symbols.len() - 1) as u32
            }
        }
    }

    fn poly(&mut self, d: &Dim) -> Poly {
        let terms: Vec<(i64, Vec<String>)> = d.terms().map(|(m, c)| (c, m.clone())).collect();
        Poly(
            terms
                .into_iter()
                .map(|(c, m)| (c, m.iter().map(|s| self.sym(s)).collect()))
                .collect(),
        )
    }

    fn shape(&mut self, t: &TensorType) -> Vec<Poly> {
        t.shape.0.iter().map(|d| self.poly(d)).collect()
    }

    fn add_data(&mut self, piece: Piece<'m>) -> (u64, u64) {
        let pad = (64 - self.data_len % 64) % 64;
        if pad > 0 {
            self.data.push(Piece::Owned(vec![0; pad as usize]));
            self.data_len += pad;
        }
        let off = self.data_len;
        let len = piece.bytes().len() as u64;
        self.data.push(piece);
        self.data_len += len;
        (off, len)
    }

    fn buffer(&mut self, name: String, t: &TensorType, source: Source) -> u32 {
        let shape = self.shape(t);
        self.buffers.push(BufferDecl {
            name,
            dtype: elem_type(t.dtype),
            shape,
            source,
        });
        (self.buffers.len() - 1) as u32
    }
}

/// A weight's stored bytes, checked against its dtype and shape.
fn weight_bytes(m: &Module, w: llmc_ir::WeightId) -> Result<&[u8], BuildError> {
    let wt = m.weight(w);
    let bytes = wt.data.bytes().ok_or_else(|| BuildError::Weight {
        name: wt.name.clone(),
        msg: "has no data attached (a module read from text has none)".into(),
    })?;
    let numel = wt
        .shape
        .as_consts()
        .map(|d| d.iter().product::<i64>())
        .ok_or_else(|| BuildError::Weight {
            name: wt.name.clone(),
            msg: "has a symbolic shape".into(),
        })?;
    let need = wt.dtype.storage_bytes(numel.max(0) as u64);
    if need != Some(bytes.len() as u64) {
        return Err(BuildError::Weight {
            name: wt.name.clone(),
            msg: format!(
                "has {} bytes, {}{} needs {:?}",
                bytes.len(),
                wt.dtype,
                wt.shape,
                need
            ),
        });
    }
    Ok(bytes)
}

/// Gives weight value `v` a buffer of its stored bytes (once); other values are left
/// alone.
fn raw_weight<'m>(
    b: &mut Builder<'m>,
    buf_of: &mut HashMap<ValueId, u32>,
    v: ValueId,
) -> Result<(), BuildError> {
    if buf_of.contains_key(&v) {
        return Ok(());
    }
    let ValueDef::Weight(w) = b.m.graph.value(v).def else {
        return Ok(());
    };
    let bytes = weight_bytes(b.m, w)?;
    let wt = b.m.weight(w);
    let (offset, len) = b.add_data(Piece::Borrowed(bytes));
    let ty = TensorType::new(wt.dtype, wt.shape.clone());
    let id = b.buffer(format!("@{}", wt.name), &ty, Source::Data { offset, len });
    buf_of.insert(v, id);
    Ok(())
}

/// Every value's unique printed name without its sigil or quotes (`ids`,
/// `onnx::MatMul_0`), indexed by value id: the names the plan and `.npy` files use.
pub fn plain_names(m: &Module) -> Vec<String> {
    llmc_ir::text::value_names(m)
        .into_iter()
        .map(|n| {
            let n = n.trim_start_matches(['%', '@']);
            match n.strip_prefix('"').and_then(|x| x.strip_suffix('"')) {
                Some(q) => q.replace("\\\"", "\"").replace("\\\\", "\\"),
                None => n.to_string(),
            }
        })
        .collect()
}

/// Lowers every node of `m` and lays out the plan and data section.
pub fn plan_module(m: &Module) -> Result<Planned<'_>, BuildError> {
    plan_module_for(m, false)
}

/// [`plan_module`] for the CPU (`gpu` false) or with the GPU schedules
/// ([`llmc_kernels::templates::gpu::lower`]; every kernel in the GPU form).
pub fn plan_module_for(m: &Module, gpu: bool) -> Result<Planned<'_>, BuildError> {
    let g = &m.graph;
    let names = plain_names(m);
    let vname = |v: ValueId| {
        names
            .get(v.0 as usize)
            .cloned()
            .unwrap_or_else(|| g.value(v).name.clone())
    };
    let mut b = Builder {
        m,
        symbols: Vec::new(),
        buffers: Vec::new(),
        data: Vec::new(),
        data_len: 0,
    };
    // `past` is bound from the KV cache; list input symbols first for readability.
    let mut buf_of: HashMap<ValueId, u32> = HashMap::new();
    let mut inputs = Vec::new();
    for (i, &v) in g.inputs.iter().enumerate() {
        let ty = g.ty(v).clone();
        // A q8_kv input is an int8 KV pool, which only the paged ops read.
        let pool = ty.dtype == DType::Q8Kv
            && g.nodes.iter().filter(|n| n.inputs.contains(&v)).all(|n| {
                matches!(
                    n.op,
                    Op::PagedKvWrite | Op::PagedQkvWrite | Op::PagedAttention
                )
            });
        if ty.dtype.is_quantized() && !pool {
            return Err(BuildError::Input {
                name: vname(v),
                msg: format!("graph inputs cannot be block-quantized ({})", ty.dtype),
            });
        }
        let id = b.buffer(vname(v), &ty, Source::Input(i as u32));
        buf_of.insert(v, id);
        let shape = b.shape(&ty);
        inputs.push(IoDecl {
            name: vname(v),
            buffer: id,
            dtype: elem_type(ty.dtype),
            shape,
        });
    }
    // Every weight's bytes are checked up front; a weight gets a buffer of its stored
    // bytes only when a step reads it as stored (a packed-only weight does not).
    for val in &g.values {
        if let ValueDef::Weight(w) = val.def {
            weight_bytes(m, w)?;
        }
    }
    let mut kernels: Vec<Kernel> = Vec::new();
    let mut packed: HashMap<(llmc_ir::WeightId, llmc_kernels::Pack), u32> = HashMap::new();
    let mut kernel_ids: HashMap<String, u32> = HashMap::new();
    // Build-time tables by content: every layer's rope reads one copy.
    let mut tables: HashMap<Vec<u8>, (u64, u64)> = HashMap::new();
    let mut gpu_schedules = Vec::new();
    let mut steps: Vec<Step> = Vec::new();
    for node in &g.nodes {
        let first = node
            .outputs
            .first()
            .map(|&o| format!("%{}", vname(o)))
            .unwrap_or_else(|| "(no result)".into());
        let in_tys: Vec<&TensorType> = node.inputs.iter().map(|&v| g.ty(v)).collect();
        let out_tys: Vec<&TensorType> = node.outputs.iter().map(|&v| g.ty(v)).collect();
        let lowered = if gpu {
            llmc_kernels::templates::gpu::lower(node, &in_tys, &out_tys, node.op.name())
        } else {
            llmc_kernels::lower(node, &in_tys, &out_tys, node.op.name())
                .map(|l| (l, llmc_kernels::templates::gpu::GpuSchedule::None))
        };
        let (lowered, schedule) = lowered.map_err(|e| BuildError::Node {
            node: first.clone(),
            op: node.op.name().into(),
            msg: e.msg,
        })?;
        if let (true, Lowered::Kernel { kernel, .. }) = (gpu, &lowered) {
            llmc_kernels::gpu::schedule(kernel)
                .and_then(|_| kernel.check())
                .map_err(|msg| BuildError::Node {
                    node: first.clone(),
                    op: node.op.name().into(),
                    msg: format!("GPU schedule: {msg}"),
                })?;
        }
        // Weights this node reads as stored get their buffer now.
        let packed_ops: Vec<usize> = match &lowered {
            Lowered::Kernel { packs, .. } => packs.iter().map(|p| p.operand).collect(),
            _ => Vec::new(),
        };
        for (i, &v) in node.inputs.iter().enumerate() {
            if !packed_ops.contains(&i) {
                raw_weight(&mut b, &mut buf_of, v)?;
            }
        }
        let operand = |k: usize| -> Result<u32, BuildError> {
            node.inputs
                .get(k)
                .and_then(|v| buf_of.get(v).copied())
                .ok_or_else(|| BuildError::Node {
                    node: first.clone(),
                    op: node.op.name().into(),
                    msg: format!("operand {k} has no buffer"),
                })
        };
        match lowered {
            Lowered::Alias => {
                let src = operand(0)?;
                if let Some(&o) = node.outputs.first() {
                    buf_of.insert(o, src);
                }
            }
            Lowered::Constant(t) => {
                let bytes = llmc_kernels::interp::tensor_bytes(&t);
                let (offset, len) = b.add_data(Piece::Owned(bytes));
                if let Some(&o) = node.outputs.first() {
                    let id = b.buffer(vname(o), g.ty(o), Source::Data { offset, len });
                    buf_of.insert(o, id);
                }
            }
            Lowered::KvAppend { layer } => {
                let (k, v) = (operand(0)?, operand(1)?);
                let outs: Vec<u32> = node
                    .outputs
                    .iter()
                    .map(|&o| {
                        let id = b.buffer(vname(o), g.ty(o), Source::Temp);
                        buf_of.insert(o, id);
                        id
                    })
                    .collect();
                let [out_k, out_v] = outs[..] else {
                    return Err(BuildError::Node {
                        node: first,
                        op: node.op.name().into(),
                        msg: "kv_append must have two results".into(),
                    });
                };
                steps.push(Step {
                    node: first,
                    kind: StepKind::KvAppend {
                        layer,
                        k,
                        v,
                        out_k,
                        out_v,
                    },
                    free: Vec::new(),
                });
            }
            Lowered::Kernel {
                kernel: mut k,
                packs,
                consts,
                in_place,
            } => {
                let mut bufs = Vec::new();
                for i in 0..node.inputs.len() {
                    // Packed operands are filled in below.
                    bufs.push(if packed_ops.contains(&i) {
                        u32::MAX
                    } else {
                        operand(i)?
                    });
                }
                // Weights the kernel wants in another layout: packed once per layout.
                for p in packs {
                    let v = node.inputs.get(p.operand).copied();
                    let w = match v.map(|v| &g.value(v).def) {
                        Some(ValueDef::Weight(w)) => *w,
                        _ => {
                            return Err(BuildError::Node {
                                node: first.clone(),
                                op: node.op.name().into(),
                                msg: format!(
                                    "the kernel wants operand {} packed, but it is not a weight",
                                    p.operand
                                ),
                            })
                        }
                    };
                    let id = match packed.get(&(w, p.pack)) {
                        Some(&id) => id,
                        None => {
                            let wt = m.weight(w);
                            let dims = wt.shape.as_consts().unwrap_or_default();
                            let (rows, cols) = match dims[..] {
                                [r, c] => (r as usize, c as usize),
                                _ => (0, 0),
                            };
                            let bytes = weight_bytes(m, w)?;
                            let pk = llmc_kernels::templates::pack::pack(
                                p.pack, wt.dtype, rows, cols, bytes,
                            )
                            .map_err(|msg| BuildError::Weight {
                                name: wt.name.clone(),
                                msg,
                            })?;
                            let (offset, len) = b.add_data(Piece::Owned(pk));
                            let ty = TensorType::new(wt.dtype, wt.shape.clone());
                            let id = b.buffer(
                                format!("@{} ({:?})", wt.name, p.pack),
                                &ty,
                                Source::Data { offset, len },
                            );
                            packed.insert((w, p.pack), id);
                            id
                        }
                    };
                    if let Some(slot) = bufs.get_mut(p.operand) {
                        *slot = id;
                    }
                }
                // A result written in place takes its operand's buffer.
                let aliased: Vec<Option<u32>> = (0..node.outputs.len())
                    .map(|ri| {
                        in_place
                            .iter()
                            .find(|(r, _)| *r == ri)
                            .map(|&(_, op)| operand(op))
                            .transpose()
                    })
                    .collect::<Result<_, _>>()?;
                for (&o, alias) in node.outputs.iter().zip(aliased) {
                    let id = match alias {
                        Some(id) => id,
                        None => b.buffer(vname(o), g.ty(o), Source::Temp),
                    };
                    buf_of.insert(o, id);
                    bufs.push(id);
                }
                // Build-time tables follow the results.
                for (ci, t) in consts.iter().enumerate() {
                    let bytes = llmc_kernels::interp::tensor_bytes(t);
                    let (offset, len) = match tables.get(&bytes) {
                        Some(&at) => at,
                        None => {
                            let at = b.add_data(Piece::Owned(bytes.clone()));
                            tables.insert(bytes, at);
                            at
                        }
                    };
                    let dims: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
                    let ty = TensorType::new(t.dtype, llmc_ir::Shape::of(&dims));
                    let id = b.buffer(
                        format!("{first}.table{ci}"),
                        &ty,
                        Source::Data { offset, len },
                    );
                    bufs.push(id);
                }
                let dims: Vec<Poly> = k
                    .dims
                    .clone()
                    .iter()
                    .map(|s| b.poly(&Dim::sym(s)))
                    .collect();
                // Identical kernels (same body, same parameters) are emitted once.
                let key = k.to_string();
                let idx = match kernel_ids.get(&key) {
                    Some(&i) => i,
                    None => {
                        let i = kernels.len() as u32;
                        k.name = format!("{}_{i}", k.name);
                        kernels.push(k);
                        if gpu {
                            gpu_schedules.push(schedule);
                        }
                        kernel_ids.insert(key, i);
                        i
                    }
                };
                steps.push(Step {
                    node: first,
                    kind: StepKind::Kernel {
                        kernel: idx,
                        bufs,
                        dims,
                    },
                    free: Vec::new(),
                });
            }
        }
    }
    let mut outputs = Vec::new();
    for &v in &g.outputs {
        raw_weight(&mut b, &mut buf_of, v)?;
        let id = *buf_of.get(&v).ok_or_else(|| BuildError::Input {
            name: vname(v),
            msg: "graph output has no buffer".into(),
        })?;
        let ty = g.ty(v).clone();
        let shape = b.shape(&ty);
        outputs.push(IoDecl {
            name: vname(v),
            buffer: id,
            dtype: elem_type(ty.dtype.compute_type()),
            shape,
        });
    }
    let memory = reuse_buffers(&b.buffers, &mut steps, &outputs, &b.symbols);
    // Free each temporary after the last step that touches it (outputs are kept).
    let mut last: HashMap<u32, usize> = HashMap::new();
    for (i, s) in steps.iter().enumerate() {
        let ids: Vec<u32> = match &s.kind {
            StepKind::Kernel { bufs, .. } => bufs.clone(),
            StepKind::KvAppend {
                k, v, out_k, out_v, ..
            } => vec![*k, *v, *out_k, *out_v],
        };
        for id in ids {
            last.insert(id, i);
        }
    }
    for (id, i) in last {
        let d = &b.buffers[id as usize];
        let is_out = outputs.iter().any(|o| o.buffer == id);
        if d.source == Source::Temp && !is_out {
            steps[i].free.push(id);
        }
    }
    for s in &mut steps {
        s.free.sort();
    }
    let plan = Plan {
        abi_version: ABI_VERSION,
        name: m.name.clone(),
        symbols: b.symbols.clone(),
        kernels: kernels.iter().map(|k| k.name.clone()).collect(),
        buffers: b.buffers,
        inputs,
        outputs,
        steps,
        info: Vec::new(),
        llm: None,
        encoder: None,
        cpu: None,
        cpu_variants: Vec::new(),
        gpu: None,
    };
    Ok(Planned {
        kernels,
        plan,
        data: b.data,
        memory,
        gpu_schedules,
    })
}

/// What buffer reuse did, and the activation memory it implies.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MemoryReport {
    /// Temporaries (activation buffers) before reuse: one per computed value.
    pub buffers_before: usize,
    /// Distinct temporaries after reuse.
    pub buffers_after: usize,
    /// `(binding, bytes if nothing were freed, peak live bytes before reuse, peak live
    /// bytes after reuse)` for a few symbol bindings (`seq=1` decode, `seq=128` prefill;
    /// `batch` = 1, `past` = 0, other symbols 1).
    pub bytes: Vec<(String, u64, u64, u64)>,
}

impl std::fmt::Display for MemoryReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "===== memory plan: {} activation buffers -> {} after reuse =====",
            self.buffers_before, self.buffers_after
        )?;
        writeln!(
            f,
            "{:<12} {:>16} {:>18} {:>18}",
            "binding", "no frees (B)", "peak before (B)", "peak after (B)"
        )?;
        for (bind, total, before, after) in &self.bytes {
            writeln!(f, "{bind:<12} {total:>16} {before:>18} {after:>18}")?;
        }
        Ok(())
    }
}

/// Every buffer a step touches.
fn step_buffers(s: &Step) -> Vec<u32> {
    match &s.kind {
        StepKind::Kernel { bufs, .. } => bufs.clone(),
        StepKind::KvAppend {
            k, v, out_k, out_v, ..
        } => vec![*k, *v, *out_k, *out_v],
    }
}

/// Memory planning: liveness over the step order, then each temporary takes over a
/// temporary of the same element type and shape (so the same size under every symbol
/// binding) whose last use came strictly before the step that writes it. Graph outputs
/// and the KV cache's results (they hold the cache's own storage) are never shared.
/// Steps are rewritten to the shared ids; the frees computed afterwards release a
/// shared buffer after its last holder's last use.
fn reuse_buffers(
    buffers: &[BufferDecl],
    steps: &mut [Step],
    outputs: &[IoDecl],
    symbols: &[String],
) -> MemoryReport {
    let n = buffers.len();
    let mut first = vec![usize::MAX; n];
    let mut last = vec![0usize; n];
    let mut pinned = vec![false; n];
    for o in outputs {
        if let Some(p) = pinned.get_mut(o.buffer as usize) {
            *p = true;
        }
    }
    for (i, s) in steps.iter().enumerate() {
        if let StepKind::KvAppend { out_k, out_v, .. } = &s.kind {
            for b in [*out_k, *out_v] {
                if let Some(p) = pinned.get_mut(b as usize) {
                    *p = true;
                }
            }
        }
        for b in step_buffers(s) {
            let b = b as usize;
            if b < n {
                first[b] = first[b].min(i);
                last[b] = i;
            }
        }
    }
    let temp = |b: usize| buffers[b].source == Source::Temp && first[b] != usize::MAX;
    let before_map: Vec<u32> = (0..n as u32).collect();
    let mut map: Vec<u32> = (0..n as u32).collect();
    // Free slots by (dtype, shape), most recently freed last: (slot, step of its last
    // use). A slot stays allocated between its holders, so it is only taken over
    // within `REUSE_WINDOW` steps of its release: a longer idle gap would hold memory
    // the runtime would otherwise have freed, and raise the peak.
    const REUSE_WINDOW: usize = 1;
    let mut pool: HashMap<String, Vec<(u32, usize)>> = HashMap::new();
    let mut slot_last: HashMap<u32, usize> = HashMap::new();
    let mut by_first: Vec<Vec<usize>> = vec![Vec::new(); steps.len()];
    let mut by_last: Vec<Vec<usize>> = vec![Vec::new(); steps.len()];
    for b in (0..n).filter(|&b| temp(b) && !pinned[b]) {
        by_first[first[b]].push(b);
    }
    let key = |b: usize| format!("{:?} {:?}", buffers[b].dtype, buffers[b].shape);
    for i in 0..steps.len() {
        for &b in &by_first[i] {
            let free = pool.get_mut(&key(b));
            let slot = match free {
                Some(v) => match v.pop() {
                    Some((slot, at)) if i - at <= REUSE_WINDOW => Some(slot),
                    // The most recent is too old, so all are.
                    Some(_) => {
                        v.clear();
                        None
                    }
                    None => None,
                },
                None => None,
            };
            let slot = slot.unwrap_or(b as u32);
            map[b] = slot;
            slot_last.insert(slot, last[b]);
            if let Some(l) = by_last.get_mut(last[b]) {
                l.push(slot as usize);
            }
        }
        // Slots whose holder was last used at step i are free for steps after i.
        for &slot in &by_last[i] {
            if slot_last.get(&(slot as u32)) == Some(&i) {
                pool.entry(key(slot)).or_default().push((slot as u32, i));
            }
        }
    }
    for s in steps.iter_mut() {
        let remap = |b: &mut u32| {
            if let Some(&m) = map.get(*b as usize) {
                *b = m;
            }
        };
        match &mut s.kind {
            StepKind::Kernel { bufs, .. } => bufs.iter_mut().for_each(remap),
            StepKind::KvAppend {
                k, v, out_k, out_v, ..
            } => [k, v, out_k, out_v].into_iter().for_each(remap),
        }
    }
    let temps: Vec<usize> = (0..n).filter(|&b| temp(b)).collect();
    let after: std::collections::BTreeSet<u32> = temps.iter().map(|&b| map[b]).collect();
    let mut bytes = Vec::new();
    for seq in [1i64, 128] {
        let syms: Vec<Option<i64>> = symbols
            .iter()
            .map(|s| match s.as_str() {
                "seq" => Some(seq),
                "past" => Some(0),
                _ => Some(1),
            })
            .collect();
        let size = |b: usize| -> u64 {
            let d = &buffers[b];
            let numel = d
                .shape
                .iter()
                .try_fold(1u64, |a, p| a.checked_mul(p.eval(&syms)?.max(0) as u64));
            numel.and_then(|n| d.dtype.bytes_for(n)).unwrap_or(0)
        };
        let total: u64 = temps.iter().map(|&b| size(b)).sum();
        let peak = |m: &[u32]| -> u64 {
            // A buffer (slot) is live from its first holder's write to its last use.
            let mut span: HashMap<u32, (usize, usize)> = HashMap::new();
            for &b in &temps {
                let e = span.entry(m[b]).or_insert((first[b], last[b]));
                e.0 = e.0.min(first[b]);
                e.1 = e.1.max(last[b]);
            }
            let mut delta = vec![0i128; steps.len() + 1];
            for (&slot, &(f, l)) in &span {
                let sz = size(slot as usize) as i128;
                delta[f] += sz;
                delta[l + 1] -= sz;
            }
            let (mut cur, mut best) = (0i128, 0i128);
            for d in delta {
                cur += d;
                best = best.max(cur);
            }
            best as u64
        };
        bytes.push((format!("seq={seq}"), total, peak(&before_map), peak(&map)));
    }
    MemoryReport {
        buffers_before: temps.len(),
        buffers_after: after.len(),
        bytes,
    }
}
