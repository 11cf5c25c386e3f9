//! The graph walk: runs a [`Plan`] with compiled kernels. It binds the symbols from
//! the inputs' shapes (and `past` from the KV cache), allocates each temporary when
//! its producing step runs (sized by evaluating its shape polynomial), calls the
//! kernels, appends to the KV cache, frees what no later step reads, and returns the
//! outputs. It owns the KV cache between runs.

use crate::abi::KernelFn;
use crate::plan::{ElemType, Plan, Source, StepKind};
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::collections::{BTreeMap, HashMap};
use std::ptr::NonNull;
use std::sync::Arc;

/// A runtime error, naming the input, step or buffer involved.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The plan and the object disagree, or the plan is inconsistent.
    #[error("plan: {0}")]
    Plan(String),
    /// A bad input.
    #[error("input %{name}: {msg}")]
    Input {
        /// Input name.
        name: String,
        /// What is wrong.
        msg: String,
    },
    /// A step failed.
    #[error("step {node}: {msg}")]
    Step {
        /// The node (`%name`).
        node: String,
        /// What is wrong.
        msg: String,
    },
}

/// 64-byte aligned bytes, zero when allocated (a reused temporary holds what its last
/// user left).
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    layout: Layout,
}

// SAFETY: a plain owned allocation.
unsafe impl Send for AlignedBuf {}
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// The capacity [`Self::zeroed`] gives `len` bytes.
    fn capacity_for(len: usize) -> usize {
        len.max(64)
    }

    /// `len` zero bytes (at least one allocation unit, so the pointer is valid).
    pub fn zeroed(len: usize) -> Option<AlignedBuf> {
        let layout = Layout::from_size_align(Self::capacity_for(len), 64).ok()?;
        // SAFETY: the layout has a nonzero size.
        let p = unsafe { alloc_zeroed(layout) };
        Some(AlignedBuf {
            ptr: NonNull::new(p)?,
            len,
            layout,
        })
    }

    /// `len` zero bytes with room to grow to `cap` bytes in place ([`Self::grow`]).
    pub fn with_capacity(len: usize, cap: usize) -> Option<AlignedBuf> {
        let mut b = AlignedBuf::zeroed(cap.max(len))?;
        b.len = len;
        Some(b)
    }

    /// Bytes it can hold without reallocating.
    pub fn capacity(&self) -> usize {
        self.layout.size()
    }

    /// Extends the length to `len` (the new bytes are whatever the allocation
    /// held: zero or earlier contents); false when `len` exceeds the capacity.
    pub fn grow(&mut self, len: usize) -> bool {
        if len > self.capacity() {
            return false;
        }
        self.len = self.len.max(len);
        true
    }

    /// A copy of `bytes`.
    pub fn from_bytes(bytes: &[u8]) -> Option<AlignedBuf> {
        let b = AlignedBuf::zeroed(bytes.len())?;
        // SAFETY: `b` has room for `bytes.len()` bytes and does not overlap `bytes`.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), b.ptr.as_ptr(), bytes.len()) };
        Some(b)
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `len` initialised bytes live at `ptr`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The base pointer (kernels write through it).
    pub fn ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout in `zeroed`.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// A graph input for [`Model::run_inputs`].
pub enum Input<'a> {
    /// Copied into an aligned buffer for the run.
    Host(&'a HostTensor),
    /// Used in place: `len` bytes at `ptr`, 64-byte aligned, valid and not otherwise
    /// accessed for the whole run (kernels may write through it).
    Borrowed {
        /// Element type.
        dtype: ElemType,
        /// Shape.
        shape: Vec<usize>,
        /// The bytes.
        ptr: *mut u8,
        /// Their length.
        len: usize,
    },
}

impl Input<'_> {
    fn dtype(&self) -> ElemType {
        match self {
            Input::Host(t) => t.dtype,
            Input::Borrowed { dtype, .. } => *dtype,
        }
    }
    fn shape(&self) -> &[usize] {
        match self {
            Input::Host(t) => &t.shape,
            Input::Borrowed { shape, .. } => shape,
        }
    }
    fn len(&self) -> usize {
        match self {
            Input::Host(t) => t.data.len(),
            Input::Borrowed { len, .. } => *len,
        }
    }
}

/// A tensor on the host: element type, shape, little-endian bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    /// Element type.
    pub dtype: ElemType,
    /// Shape.
    pub shape: Vec<usize>,
    /// Bytes.
    pub data: Vec<u8>,
}

/// A result of [`Model::run_outputs`]: element type, shape and the buffer holding it
/// (owned by the output, or a range of the data section for a constant output).
pub struct Output {
    /// Element type.
    pub dtype: ElemType,
    /// Shape.
    pub shape: Vec<usize>,
    storage: Storage,
    bytes: usize,
}

impl Output {
    /// The little-endian bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.storage.bytes()[..self.bytes]
    }
}

#[derive(Clone)]
enum Storage {
    Owned(Arc<AlignedBuf>),
    /// Memory the model does not own: a range of the payload's data section, or a
    /// borrowed input.
    Data(*mut u8, usize),
}

impl Storage {
    fn ptr(&self) -> *mut u8 {
        match self {
            Storage::Owned(b) => b.ptr(),
            Storage::Data(p, _) => *p,
        }
    }
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Owned(b) => b.as_slice(),
            // SAFETY: the data section outlives the model (it borrows it).
            Storage::Data(p, n) => unsafe { std::slice::from_raw_parts(*p, *n) },
        }
    }
    fn len(&self) -> usize {
        self.bytes().len()
    }
}

struct CacheEntry {
    k: Arc<AlignedBuf>,
    v: Arc<AlignedBuf>,
    /// [b, kvh, len, d] of k and v.
    kshape: [usize; 4],
    vshape: [usize; 4],
    elem: usize,
}

/// A loaded model: the plan, its data section and kernels, and the KV cache.
pub struct Model<'d> {
    plan: Plan,
    data: &'d [u8],
    kernels: Vec<KernelFn>,
    cache: BTreeMap<i64, CacheEntry>,
    /// Per kernel (and one last slot for KV appends): calls and seconds, when
    /// profiling (`LLMC_PROFILE=1`).
    profile: Option<Vec<(u64, f64)>>,
    /// Temporaries of earlier runs, kept for the next ones ([`Spare`]).
    spare: Spare,
    /// The last run's buffer sizes and kernel dims, for the next run with the same
    /// symbol values (every decode step of a sequence but one in 16).
    shapes: Option<Shapes>,
}

/// Buffer sizes (bytes) and each step's kernel dims for one binding of the symbols,
/// filled as the run asks for them.
struct Shapes {
    syms: Vec<Option<i64>>,
    sizes: Vec<Option<usize>>,
    dims: Vec<Option<Vec<i64>>>,
}

/// Temporaries of finished runs, handed to later runs instead of fresh zeroed
/// allocations. A serving step allocates the same large buffers every step (the
/// logits of a 32-row step are 6 MiB); zeroing them again and faulting their pages in
/// cost 4% of the engine thread at 32 streams, time the pool's workers spent waiting.
/// A decode step also asks for about 270 small ones (a few KiB each), the same sizes
/// every step: `calloc` and `free` of them were 1.5% of a two-thread decode's samples,
/// all on the engine thread while the worker spun. Small ones are kept by exact
/// capacity. A reused buffer holds the bytes its last user left: kernels write every
/// element of their outputs, which `LLMC_POISON_TEMPS=1` checks by filling every
/// temporary with 0xFF bytes (NaN floats, -1 integers) before its kernel runs.
struct Spare {
    bufs: Vec<AlignedBuf>,
    bytes: usize,
    /// Temporaries below [`SPARE_MIN_BYTES`], by capacity.
    small: HashMap<usize, Vec<AlignedBuf>>,
    small_bytes: usize,
    poison: bool,
}

/// Temporaries below this size are kept by exact capacity ([`Spare::small`]); larger
/// ones are handed to any request they fit at most twice over.
const SPARE_MIN_BYTES: usize = 64 * 1024;

/// The most bytes of small temporaries kept for reuse.
const SPARE_SMALL_MAX_BYTES: usize = 32 << 20;

/// The most bytes kept for reuse; beyond it the oldest kept buffers are freed.
const SPARE_MAX_BYTES: usize = 512 << 20;

impl Spare {
    fn new() -> Spare {
        Spare {
            bufs: Vec::new(),
            bytes: 0,
            small: HashMap::new(),
            small_bytes: 0,
            poison: std::env::var("LLMC_POISON_TEMPS").is_ok_and(|v| v == "1"),
        }
    }

    /// A temporary of `len` bytes: a kept one with room for it (and at most twice
    /// that, so a small request does not pin a large buffer), else a fresh one.
    fn take(&mut self, len: usize) -> Option<AlignedBuf> {
        let kept = if len >= SPARE_MIN_BYTES {
            self.bufs
                .iter()
                .enumerate()
                .filter(|(_, b)| b.capacity() >= len && b.capacity() / 2 <= len)
                .min_by_key(|(_, b)| b.capacity())
                .map(|(i, _)| i)
                .map(|i| {
                    let b = self.bufs.remove(i);
                    self.bytes -= b.capacity();
                    b
                })
        } else {
            let b = self
                .small
                .get_mut(&AlignedBuf::capacity_for(len))
                .and_then(|v| v.pop());
            if let Some(b) = &b {
                self.small_bytes -= b.capacity();
            }
            b
        };
        let buf = match kept {
            Some(mut b) => {
                b.len = len;
                b
            }
            None => AlignedBuf::zeroed(len)?,
        };
        if self.poison {
            // SAFETY: `buf` holds `len` bytes.
            unsafe { std::ptr::write_bytes(buf.ptr(), 0xff, len) };
        }
        Some(buf)
    }

    /// Keeps `s` for reuse when it is a large temporary no one else holds.
    fn give(&mut self, s: Option<Storage>) {
        let Some(Storage::Owned(arc)) = s else {
            return;
        };
        let Ok(buf) = Arc::try_unwrap(arc) else {
            return;
        };
        if buf.capacity() < SPARE_MIN_BYTES {
            if self.small_bytes + buf.capacity() <= SPARE_SMALL_MAX_BYTES {
                self.small_bytes += buf.capacity();
                self.small.entry(buf.capacity()).or_default().push(buf);
            }
            return;
        }
        if buf.capacity() > SPARE_MAX_BYTES {
            return;
        }
        self.bytes += buf.capacity();
        self.bufs.push(buf);
        while self.bytes > SPARE_MAX_BYTES {
            let old = self.bufs.remove(0);
            self.bytes -= old.capacity();
        }
    }
}

impl Drop for Model<'_> {
    fn drop(&mut self) {
        if let Some(p) = &self.profile {
            let total: f64 = p.iter().map(|(_, s)| s).sum();
            let mut rows: Vec<(usize, &(u64, f64))> = p.iter().enumerate().collect();
            rows.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
            eprintln!("profile: {:.3} ms in steps", total * 1e3);
            for (i, (calls, secs)) in rows {
                if *calls == 0 {
                    continue;
                }
                let name = self.plan.kernels.get(i).map_or("kv_append", |s| s.as_str());
                eprintln!(
                    "  {:>9.3} ms {:>5.1}% {:>7} calls  {name}",
                    secs * 1e3,
                    100.0 * secs / total.max(1e-12),
                    calls
                );
            }
        }
    }
}

impl<'d> Model<'d> {
    /// Checks the plan against the kernel table (names in order) and the data section.
    pub fn new(
        plan: Plan,
        data: &'d [u8],
        table: &[(String, KernelFn)],
    ) -> Result<Model<'d>, ExecError> {
        if plan.abi_version != crate::abi::ABI_VERSION {
            return Err(ExecError::Plan(format!(
                "written for ABI {}, this runtime is ABI {}",
                plan.abi_version,
                crate::abi::ABI_VERSION
            )));
        }
        if plan.kernels.len() != table.len() {
            return Err(ExecError::Plan(format!(
                "lists {} kernels, the object has {}",
                plan.kernels.len(),
                table.len()
            )));
        }
        for (i, (want, (got, _))) in plan.kernels.iter().zip(table).enumerate() {
            if want != got {
                return Err(ExecError::Plan(format!(
                    "kernel {i} is `{got}` in the object, `{want}` in the plan"
                )));
            }
        }
        for b in &plan.buffers {
            if let Source::Data { offset, len } = b.source {
                let end = offset.checked_add(len);
                if end.is_none_or(|e| e > data.len() as u64) {
                    return Err(ExecError::Plan(format!(
                        "buffer {} reads bytes {offset}..+{len} of a {}-byte data section",
                        b.name,
                        data.len()
                    )));
                }
            }
        }
        let nb = plan.buffers.len() as u32;
        for s in &plan.steps {
            let ids: Vec<u32> = match &s.kind {
                StepKind::Kernel { kernel, bufs, .. } => {
                    if *kernel as usize >= table.len() {
                        return Err(ExecError::Plan(format!(
                            "step {} calls kernel {kernel} of {}",
                            s.node,
                            table.len()
                        )));
                    }
                    bufs.clone()
                }
                StepKind::KvAppend {
                    k, v, out_k, out_v, ..
                } => vec![*k, *v, *out_k, *out_v],
            };
            if let Some(b) = ids.iter().chain(&s.free).find(|&&b| b >= nb) {
                return Err(ExecError::Plan(format!(
                    "step {} uses buffer {b} of {nb}",
                    s.node
                )));
            }
        }
        for io in plan.inputs.iter().chain(&plan.outputs) {
            if let Some(s) = io
                .shape
                .iter()
                .filter_map(|d| d.as_symbol())
                .find(|&s| s as usize >= plan.symbols.len())
            {
                return Err(ExecError::Plan(format!(
                    "%{} names symbol {s} of {}",
                    io.name,
                    plan.symbols.len()
                )));
            }
            if io.buffer >= nb {
                return Err(ExecError::Plan(format!(
                    "%{} is buffer {} of {nb}",
                    io.name, io.buffer
                )));
            }
        }
        let profile = std::env::var("LLMC_PROFILE")
            .is_ok_and(|v| v == "1")
            .then(|| vec![(0, 0.0); table.len() + 1]);
        Ok(Model {
            kernels: table.iter().map(|(_, f)| *f).collect(),
            plan,
            data,
            cache: BTreeMap::new(),
            profile,
            spare: Spare::new(),
            shapes: None,
        })
    }

    /// Hands outputs of [`Self::run_outputs`] back once read, so later runs reuse
    /// their buffers.
    pub fn recycle(&mut self, outs: Vec<Output>) {
        for o in outs {
            self.spare.give(Some(o.storage));
        }
    }

    /// The plan.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Positions held by the KV cache (0 when empty).
    pub fn past(&self) -> usize {
        self.cache.values().next().map_or(0, |c| c.kshape[2])
    }

    /// Empties the KV cache (a new sequence).
    pub fn reset(&mut self) {
        self.cache.clear();
    }

    /// Runs the graph on `inputs` (in graph-input order).
    pub fn run(&mut self, inputs: &[HostTensor]) -> Result<Vec<HostTensor>, ExecError> {
        let inputs: Vec<Input> = inputs.iter().map(Input::Host).collect();
        self.run_inputs(&inputs)
    }

    /// Runs the graph on inputs that are copied ([`Input::Host`]) or used in place
    /// ([`Input::Borrowed`]: a kernel may write through it, as the serving form's
    /// KV-pool writes do).
    pub fn run_inputs(&mut self, inputs: &[Input]) -> Result<Vec<HostTensor>, ExecError> {
        let outs = self.run_outputs(inputs)?;
        let host = outs
            .iter()
            .map(|o| HostTensor {
                data: o.bytes().to_vec(),
                dtype: o.dtype,
                shape: o.shape.clone(),
            })
            .collect();
        self.recycle(outs);
        Ok(host)
    }

    /// [`Self::run_inputs`] without copying the results: each output is its buffer
    /// as the last kernel left it (the serving step reads a batch's logits, megabytes
    /// a step, straight from it).
    pub fn run_outputs(&mut self, inputs: &[Input]) -> Result<Vec<Output>, ExecError> {
        let plan = &self.plan;
        if inputs.len() != plan.inputs.len() {
            return Err(ExecError::Input {
                name: "(all)".into(),
                msg: format!(
                    "the graph takes {} inputs, got {}",
                    plan.inputs.len(),
                    inputs.len()
                ),
            });
        }
        // Bind symbols: `past` from the cache, then bare symbols from input shapes.
        let mut syms: Vec<Option<i64>> = vec![None; plan.symbols.len()];
        if let Some(i) = plan.symbols.iter().position(|s| s == "past") {
            syms[i] = Some(self.past() as i64);
        }
        for (io, t) in plan.inputs.iter().zip(inputs) {
            let bad = |msg: String| ExecError::Input {
                name: io.name.clone(),
                msg,
            };
            if t.dtype() != io.dtype {
                return Err(bad(format!(
                    "expected {}, got {}",
                    io.dtype.name(),
                    t.dtype().name()
                )));
            }
            if t.shape().len() != io.shape.len() {
                return Err(bad(format!(
                    "expected rank {}, got shape {:?}",
                    io.shape.len(),
                    t.shape()
                )));
            }
            for (d, &n) in io.shape.iter().zip(t.shape()) {
                if let Some(s) = d.as_symbol() {
                    if syms[s as usize].is_none() {
                        syms[s as usize] = Some(n as i64);
                    }
                }
            }
        }
        let show = |shape: &[crate::plan::Poly]| {
            let d: Vec<String> = shape.iter().map(|p| p.show(&plan.symbols)).collect();
            format!("[{}]", d.join(", "))
        };
        for (io, t) in plan.inputs.iter().zip(inputs) {
            for (d, &n) in io.shape.iter().zip(t.shape()) {
                match d.eval(&syms) {
                    Some(v) if v == n as i64 => {}
                    Some(v) => {
                        return Err(ExecError::Input {
                            name: io.name.clone(),
                            msg: format!(
                                "has shape {:?}, expected {} ({} = {v})",
                                t.shape(),
                                show(&io.shape),
                                d.show(&plan.symbols)
                            ),
                        })
                    }
                    None => {
                        return Err(ExecError::Input {
                            name: io.name.clone(),
                            msg: format!(
                                "dim {} of {} cannot be bound from the inputs",
                                d.show(&plan.symbols),
                                show(&io.shape)
                            ),
                        })
                    }
                }
            }
            let need = t
                .shape()
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
                .and_then(|n| io.dtype.bytes_for(n));
            if need != Some(t.len() as u64) {
                return Err(ExecError::Input {
                    name: io.name.clone(),
                    msg: format!("has {} bytes for shape {:?}", t.len(), t.shape()),
                });
            }
        }
        // Buffers.
        let mut store: Vec<Option<Storage>> = vec![None; plan.buffers.len()];
        for (i, b) in plan.buffers.iter().enumerate() {
            match &b.source {
                Source::Input(k) => {
                    let t = inputs.get(*k as usize).ok_or_else(|| {
                        ExecError::Plan(format!("buffer {} reads input {k}", b.name))
                    })?;
                    store[i] = Some(match t {
                        Input::Host(t) => {
                            let buf = AlignedBuf::from_bytes(&t.data).ok_or_else(|| {
                                ExecError::Input {
                                    name: b.name.clone(),
                                    msg: "cannot allocate".into(),
                                }
                            })?;
                            Storage::Owned(Arc::new(buf))
                        }
                        Input::Borrowed { ptr, len, .. } => Storage::Data(*ptr, *len),
                    });
                }
                Source::Data { offset, len } => {
                    // Kernels never write weights; the pointer is mutable only
                    // because borrowed inputs share the variant.
                    let p = self.data[*offset as usize..].as_ptr() as *mut u8;
                    store[i] = Some(Storage::Data(p, *len as usize));
                }
                Source::Temp => {}
            }
        }
        let mut shapes = match self.shapes.take() {
            Some(c) if c.syms == syms => c,
            _ => Shapes {
                syms: syms.clone(),
                sizes: vec![None; plan.buffers.len()],
                dims: vec![None; plan.steps.len()],
            },
        };
        let nk = self.kernels.len();
        for (si, step) in plan.steps.iter().enumerate() {
            let t0 = self.profile.is_some().then(std::time::Instant::now);
            let fail = |msg: String| ExecError::Step {
                node: step.node.clone(),
                msg,
            };
            match &step.kind {
                StepKind::Kernel { kernel, bufs, dims } => {
                    let mut ptrs: Vec<*mut u8> = Vec::with_capacity(bufs.len());
                    for &b in bufs {
                        if store[b as usize].is_none() {
                            let n = match shapes.sizes[b as usize] {
                                Some(n) => n,
                                None => {
                                    let n = plan.buffer_bytes(b as usize, &syms).map_err(fail)?;
                                    shapes.sizes[b as usize] = Some(n);
                                    n
                                }
                            };
                            let buf = self
                                .spare
                                .take(n)
                                .ok_or_else(|| fail(format!("cannot allocate {n} bytes")))?;
                            store[b as usize] = Some(Storage::Owned(Arc::new(buf)));
                        }
                        ptrs.push(
                            store[b as usize]
                                .as_ref()
                                .map_or(std::ptr::null_mut(), |s| s.ptr()),
                        );
                    }
                    if shapes.dims[si].is_none() {
                        let dv: Vec<i64> = dims
                            .iter()
                            .map(|p| {
                                p.eval(&syms).ok_or_else(|| {
                                    fail(format!("dim {} has no value", p.show(&plan.symbols)))
                                })
                            })
                            .collect::<Result<_, _>>()?;
                        shapes.dims[si] = Some(dv);
                    }
                    let dv = shapes.dims[si].as_deref().unwrap_or(&[]);
                    let f = self.kernels[*kernel as usize];
                    // SAFETY: the kernel was compiled for exactly these parameters;
                    // every buffer is sized from the same shapes it indexes with.
                    unsafe { f(ptrs.as_ptr(), dv.as_ptr()) };
                }
                StepKind::KvAppend {
                    layer,
                    k,
                    v,
                    out_k,
                    out_v,
                } => {
                    let dims = |b: u32| -> Result<Vec<usize>, ExecError> {
                        let d = &plan.buffers[b as usize];
                        d.shape
                            .iter()
                            .map(|p| {
                                p.eval(&syms)
                                    .filter(|&v| v >= 0)
                                    .map(|v| v as usize)
                                    .ok_or_else(|| {
                                        fail(format!("dim {} has no value", p.show(&plan.symbols)))
                                    })
                            })
                            .collect()
                    };
                    // The cache's [b, kvh, _, d] (the new k/v may arrive through a view,
                    // whose buffer is its operand's: e.g. [b, s, d] reshaped to
                    // [b, 1, s, d] for one KV head; the bytes are the same).
                    let cache_dims = dims(*out_k)?;
                    let get = |b: u32| -> Result<(Storage, [usize; 4], usize), ExecError> {
                        let d = &plan.buffers[b as usize];
                        let s = store[b as usize]
                            .clone()
                            .ok_or_else(|| fail(format!("{} has no value", d.name)))?;
                        let own = dims(b)?;
                        let shape = match (&own[..], &cache_dims[..]) {
                            ([b0, h, t, e], _) => [*b0, *h, *t, *e],
                            (_, [b0, h, _, e]) if b0 * h * e > 0 => {
                                let n: usize = own.iter().product();
                                if !n.is_multiple_of(b0 * h * e) {
                                    return Err(fail(format!(
                                        "{} ({own:?}) is not a whole number of [{b0}, {h}, _, {e}] rows",
                                        d.name
                                    )));
                                }
                                [*b0, *h, n / (b0 * h * e), *e]
                            }
                            _ => return Err(fail(format!("{} must have rank 4", d.name))),
                        };
                        Ok((s, shape, d.dtype.size()))
                    };
                    let (ks, kshape, elem) = get(*k)?;
                    let (vs, vshape, _) = get(*v)?;
                    // Taken out of the map so that its buffers are not shared and
                    // grow in place.
                    let entry = match self.cache.remove(layer) {
                        None => CacheEntry {
                            k: Arc::new(
                                first_buf(ks.bytes())
                                    .ok_or_else(|| fail("cannot allocate".into()))?,
                            ),
                            v: Arc::new(
                                first_buf(vs.bytes())
                                    .ok_or_else(|| fail("cannot allocate".into()))?,
                            ),
                            kshape,
                            vshape,
                            elem,
                        },
                        Some(mut c) => {
                            for (new, old, name) in
                                [(kshape, c.kshape, "k"), (vshape, c.vshape, "v")]
                            {
                                if new[0] != old[0]
                                    || new[1] != old[1]
                                    || new[3] != old[3]
                                    || elem != c.elem
                                {
                                    let e = fail(format!(
                                        "operand {name} {new:?} does not match layer {layer}'s cache {old:?} (b, kvh and d must agree)"
                                    ));
                                    self.cache.insert(*layer, c);
                                    return Err(e);
                                }
                            }
                            let ks2 = append(&mut c.k, c.kshape, ks.bytes(), kshape, elem)
                                .ok_or_else(|| fail("cannot allocate the cache".into()))?;
                            let vs2 = append(&mut c.v, c.vshape, vs.bytes(), vshape, elem)
                                .ok_or_else(|| fail("cannot allocate the cache".into()))?;
                            c.kshape = ks2;
                            c.vshape = vs2;
                            c
                        }
                    };
                    let want = plan.buffer_bytes(*out_k as usize, &syms).map_err(fail)?;
                    if want != entry.k.len() {
                        return Err(fail(format!(
                            "the cache holds {} bytes, its result type says {want}",
                            entry.k.len()
                        )));
                    }
                    store[*out_k as usize] = Some(Storage::Owned(entry.k.clone()));
                    store[*out_v as usize] = Some(Storage::Owned(entry.v.clone()));
                    self.cache.insert(*layer, entry);
                }
            }
            if let (Some(t0), Some(p)) = (t0, self.profile.as_mut()) {
                let slot = match &step.kind {
                    StepKind::Kernel { kernel, .. } => *kernel as usize,
                    StepKind::KvAppend { .. } => nk,
                };
                p[slot].0 += 1;
                p[slot].1 += t0.elapsed().as_secs_f64();
            }
            for &b in &step.free {
                self.spare.give(store[b as usize].take());
            }
        }
        let mut outs = Vec::with_capacity(plan.outputs.len());
        for io in &plan.outputs {
            let s = store[io.buffer as usize].as_ref().ok_or_else(|| {
                ExecError::Plan(format!("output %{} was never computed", io.name))
            })?;
            let mut shape = Vec::with_capacity(io.shape.len());
            for p in &io.shape {
                let v = p.eval(&syms).filter(|&v| v >= 0).ok_or_else(|| {
                    ExecError::Plan(format!(
                        "output %{}: dim {} has no value",
                        io.name,
                        p.show(&plan.symbols)
                    ))
                })?;
                shape.push(v as usize);
            }
            let n: u64 = shape.iter().map(|&d| d as u64).product();
            let bytes = io.dtype.bytes_for(n).unwrap_or(0) as usize;
            if bytes > s.len() {
                return Err(ExecError::Plan(format!(
                    "output %{} needs {bytes} bytes, its buffer has {}",
                    io.name,
                    s.len()
                )));
            }
            outs.push(Output {
                dtype: io.dtype,
                shape,
                storage: s.clone(),
                bytes,
            });
        }
        for s in store {
            self.spare.give(s);
        }
        self.shapes = Some(shapes);
        Ok(outs)
    }
}

/// A layer's first cache buffer: a copy of `b` with room for as many positions
/// again.
fn first_buf(b: &[u8]) -> Option<AlignedBuf> {
    let out = AlignedBuf::with_capacity(b.len(), b.len().checked_mul(2)?)?;
    // SAFETY: `out` holds at least `b.len()` bytes and does not overlap `b`.
    unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), out.ptr(), b.len()) };
    Some(out)
}

/// Concatenates `[b, h, n1, d]` (in `buf`) and `[b, h, n2, d]` along axis 2 into
/// `buf`: in place when `buf` is not shared and has the room (rows moved back to
/// front, so no row is overwritten before it has moved), else into a new buffer
/// with room for as many positions again, so appends copy the cache only when it
/// doubles.
fn append(
    buf: &mut Arc<AlignedBuf>,
    oshape: [usize; 4],
    new: &[u8],
    nshape: [usize; 4],
    elem: usize,
) -> Option<[usize; 4]> {
    let [b, h, n1, d] = oshape;
    let n2 = nshape[2];
    let total = n1 + n2;
    let (row_old, row_new) = (n1 * d * elem, n2 * d * elem);
    let rows = b * h;
    let bytes = rows * (row_old + row_new);
    if new.len() < rows * row_new || buf.len() < rows * row_old {
        return None;
    }
    let in_place = Arc::get_mut(buf).is_some_and(|a| a.capacity() >= bytes);
    if !in_place {
        let out = AlignedBuf::with_capacity(rows * row_old, bytes.checked_mul(2)?)?;
        // SAFETY: `out` has room for the old rows, which `buf` holds.
        unsafe { std::ptr::copy_nonoverlapping(buf.ptr(), out.ptr(), rows * row_old) };
        *buf = Arc::new(out);
    }
    let a = Arc::get_mut(buf)?;
    if !a.grow(bytes) {
        return None;
    }
    let dst = a.ptr();
    for i in (0..rows).rev() {
        // SAFETY: both ranges lie in `bytes` ≤ the capacity; `copy` allows the
        // overlap of a row with its own new place, and rows 0..i still sit below
        // `i * row_old` ≤ this row's new start.
        unsafe {
            std::ptr::copy(
                dst.add(i * row_old),
                dst.add(i * (row_old + row_new)),
                row_old,
            );
            std::ptr::copy_nonoverlapping(
                new.as_ptr().add(i * row_new),
                dst.add(i * (row_old + row_new) + row_old),
                row_new,
            );
        }
    }
    Some([b, h, total, d])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{BufferDecl, IoDecl, Poly};

    /// A plan with one f32 input `%x` of shape `[dim]` and no steps.
    fn plan_with_input_dim(symbols: Vec<String>, dim: Poly) -> Plan {
        Plan {
            abi_version: crate::abi::ABI_VERSION,
            name: "t".into(),
            symbols,
            kernels: vec![],
            buffers: vec![BufferDecl {
                name: "x".into(),
                dtype: ElemType::F32,
                shape: vec![dim.clone()],
                source: Source::Input(0),
            }],
            inputs: vec![IoDecl {
                name: "x".into(),
                buffer: 0,
                dtype: ElemType::F32,
                shape: vec![dim],
            }],
            outputs: vec![],
            steps: vec![],
            info: vec![],
            llm: None,
            encoder: None,
            cpu: None,
            cpu_variants: Vec::new(),
            gpu: None,
        }
    }

    /// Appending to a `[1, 3, n, 8]` cache (one byte per element) in steps of 1 or 2
    /// positions gives the same bytes as concatenating along axis 2 from scratch,
    /// and grows in place while the capacity lasts.
    #[test]
    fn kv_append_concatenates_along_positions_in_place() {
        let (h, d) = (3usize, 8usize);
        let elem = |hh: usize, p: usize, j: usize| ((hh * 100 + p * d + j) % 251) as u8;
        let block = |p0: usize, n: usize| -> Vec<u8> {
            let mut v = Vec::new();
            for hh in 0..h {
                for p in p0..p0 + n {
                    for j in 0..d {
                        v.push(elem(hh, p, j));
                    }
                }
            }
            v
        };
        let mut buf = Arc::new(first_buf(&block(0, 3)).unwrap());
        let mut shape = [1, h, 3, d];
        let mut moves = 0;
        for step in [1usize, 2, 1, 1, 2, 1, 1, 1, 2, 1] {
            let before = buf.ptr();
            let n = shape[2];
            shape = append(&mut buf, shape, &block(n, step), [1, h, step, d], 1).unwrap();
            if buf.ptr() != before {
                moves += 1;
            }
            assert_eq!(shape, [1, h, n + step, d]);
            assert_eq!(
                buf.as_slice(),
                &block(0, n + step)[..],
                "after {} positions",
                n + step
            );
        }
        // 3 positions with room for 6; 7 positions (room for 14); 15 (room for 30).
        assert_eq!(moves, 2);
        // A shared buffer is never written in place.
        let shared = buf.clone();
        let old = shared.as_slice().to_vec();
        let n = shape[2];
        append(&mut buf, shape, &block(n, 1), [1, h, 1, d], 1).unwrap();
        assert_eq!(shared.as_slice(), &old[..]);
        assert_eq!(buf.as_slice(), &block(0, n + 1)[..]);
    }

    #[test]
    fn a_plan_naming_a_missing_symbol_is_refused() {
        let sym = |s: u32| Poly(vec![(1, vec![s])]);
        let ok = plan_with_input_dim(vec!["seq".into()], sym(0));
        assert!(Model::new(ok, &[], &[]).is_ok());
        let bad = plan_with_input_dim(vec!["seq".into()], sym(3));
        let e = Model::new(bad, &[], &[]).err().map(|e| e.to_string());
        assert!(
            e.as_deref()
                .is_some_and(|e| e.contains("%x names symbol 3 of 1")),
            "{e:?}"
        );
    }
}
