//! The GPU side of a `--target cuda` executable: it opens the CUDA driver (loaded at
//! run time, so the executable starts on machines without one and says why it cannot
//! run), compiles the plan's PTX for the device, uploads the weights once into one
//! device arena, keeps the paged KV pools and every temporary on the device, and runs
//! the serving-form step by launching the plan's kernels with their launch shapes.
//! Decode steps of a shape seen before replay a captured CUDA graph. Only the step's
//! inputs (token ids, positions, attention metadata) go up and the logits of the
//! rows that need them come back.

use crate::engine::step::{StepBatch, StepModel};
use crate::plan::{ElemType, GpuPlan, Plan, ServingInfo, Source, StepKind};
use cudarc::driver::{result, sys};
use std::collections::HashMap;
use std::ffi::{c_void, CString};

/// What a CUDA executable says on a machine without the driver.
pub const NO_DRIVER: &str =
    "no CUDA driver found (libcuda.so.1): this executable was built with --target cuda";

/// True when the CUDA driver library can be loaded.
pub fn driver_present() -> bool {
    // SAFETY: only tries to load the library.
    unsafe { sys::is_culib_present() }
}

fn drv<T>(what: &str, r: Result<T, result::DriverError>) -> Result<T, String> {
    r.map_err(|e| format!("CUDA: {what}: {e}"))
}

/// The device this process runs on: device 0's primary context, current on the thread
/// that opened it.
pub struct Device {
    dev: sys::CUdevice,
    /// Device name.
    pub name: String,
    /// Compute capability as `major * 10 + minor` (90 for an H100/H200).
    pub capability: u32,
    /// Streaming multiprocessors.
    pub sms: u32,
    /// Device memory, bytes.
    pub memory: usize,
    stream: sys::CUstream,
}

impl Device {
    /// Opens device 0 and makes its primary context current on this thread.
    pub fn open() -> Result<Device, String> {
        if !driver_present() {
            return Err(NO_DRIVER.into());
        }
        drv(
            "cuInit (is a GPU attached and the driver loaded?)",
            result::init(),
        )?;
        let n = drv("cuDeviceGetCount", result::device::get_count())?;
        if n < 1 {
            return Err(
                "no CUDA device found: the driver is installed but sees no GPU (this executable was built with --target cuda)"
                    .into(),
            );
        }
        let dev = drv("cuDeviceGet", result::device::get(0))?;
        // SAFETY: `dev` came from cuDeviceGet.
        let ctx = drv("cuDevicePrimaryCtxRetain", unsafe {
            result::primary_ctx::retain(dev)
        })?;
        // SAFETY: a retained primary context.
        drv("cuCtxSetCurrent", unsafe { result::ctx::set_current(ctx) })?;
        let attr = |a| {
            // SAFETY: `dev` came from cuDeviceGet.
            drv("cuDeviceGetAttribute", unsafe {
                result::device::get_attribute(dev, a)
            })
        };
        use sys::CUdevice_attribute as A;
        let major = attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
        let minor = attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
        let sms = attr(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?;
        // SAFETY: `dev` came from cuDeviceGet.
        let memory = drv("cuDeviceTotalMem", unsafe {
            result::device::total_mem(dev)
        })?;
        let name = drv("cuDeviceGetName", result::device::get_name(dev))?;
        let stream = drv(
            "cuStreamCreate",
            result::stream::create(result::stream::StreamKind::NonBlocking),
        )?;
        Ok(Device {
            dev,
            name,
            capability: (major * 10 + minor).max(0) as u32,
            sms: sms.max(0) as u32,
            memory,
            stream,
        })
    }

    /// Waits for everything queued on the stream.
    pub fn sync(&self) -> Result<(), String> {
        // SAFETY: the stream was created by `open`.
        drv("a kernel or copy failed", unsafe {
            result::stream::synchronize(self.stream)
        })
    }

    /// Measures device-memory bandwidth (GB/s, bytes read + written) with
    /// device-to-device copies of `mb` MiB, best of five.
    pub fn bandwidth_gbs(&self, mb: usize) -> Result<f64, String> {
        let n = mb << 20;
        let a = DevBuf::zeroed(n)?;
        let b = DevBuf::zeroed(n)?;
        let mut best = f64::MAX;
        for i in 0..6 {
            self.sync()?;
            let t = std::time::Instant::now();
            // SAFETY: two distinct allocations of `n` bytes.
            drv("cuMemcpyDtoDAsync", unsafe {
                result::memcpy_dtod_async(b.ptr, a.ptr, n, self.stream)
            })?;
            self.sync()?;
            if i > 0 {
                best = best.min(t.elapsed().as_secs_f64());
            }
        }
        Ok(2.0 * n as f64 / best / 1e9)
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        // SAFETY: the stream and the retained context belong to this device.
        unsafe {
            let _ = result::stream::synchronize(self.stream);
            let _ = result::stream::destroy(self.stream);
            let _ = result::primary_ctx::release(self.dev);
        }
    }
}

/// Device memory, freed on drop.
pub struct DevBuf {
    ptr: sys::CUdeviceptr,
    len: usize,
}

impl DevBuf {
    /// `len` zero bytes (at least 256, so every buffer has a valid address).
    pub fn zeroed(len: usize) -> Result<DevBuf, String> {
        let n = len.max(256);
        // SAFETY: a plain allocation, then a memset of all of it.
        let ptr = unsafe {
            let p = result::malloc_sync(n)
                .map_err(|e| format!("CUDA: cannot allocate {n} bytes on the device: {e}"))?;
            drv("cuMemsetD8", result::memset_d8_sync(p, 0, n))?;
            p
        };
        Ok(DevBuf { ptr, len: n })
    }

    /// A copy of `bytes` on the device.
    pub fn from_host(bytes: &[u8]) -> Result<DevBuf, String> {
        let b = DevBuf::zeroed(bytes.len())?;
        // SAFETY: `b` holds at least `bytes.len()` bytes.
        drv("cuMemcpyHtoD", unsafe {
            result::memcpy_htod_sync(b.ptr, bytes)
        })?;
        Ok(b)
    }
}

impl Drop for DevBuf {
    fn drop(&mut self) {
        // SAFETY: allocated by `zeroed`, freed once.
        unsafe {
            let _ = result::free_sync(self.ptr);
        }
    }
}

/// The plan's kernels loaded on the device.
struct Kernels {
    module: sys::CUmodule,
    funcs: Vec<sys::CUfunction>,
    /// The architecture whose PTX was loaded.
    arch: String,
}

impl Drop for Kernels {
    fn drop(&mut self) {
        // SAFETY: loaded by `load_kernels`, unloaded once.
        unsafe {
            let _ = result::module::unload(self.module);
        }
    }
}

/// Picks the module of the highest architecture the device runs (PTX of an older
/// architecture is compiled for a newer device by the driver) and loads it.
fn load_kernels(gpu: &GpuPlan, dev: &Device) -> Result<Kernels, String> {
    // A cubin assembled for this architecture when there is one; else the PTX of the
    // highest architecture the device runs, compiled by the driver.
    let cubin = gpu
        .modules
        .iter()
        .filter(|m| m.cubin_runs_on(dev.capability))
        .max_by_key(|m| m.capability());
    let m = match cubin {
        Some(m) => m,
        None => gpu
            .modules
            .iter()
            .filter(|m| m.capability().is_some_and(|c| c <= dev.capability))
            .max_by_key(|m| m.capability())
            .ok_or_else(|| {
                let have: Vec<&str> = gpu.modules.iter().map(|m| m.arch.as_str()).collect();
                format!(
                    "the GPU {} has compute capability {}.{}; this executable holds code for {} only (rebuild with --cuda-arch)",
                    dev.name,
                    dev.capability / 10,
                    dev.capability % 10,
                    have.join(", ")
                )
            })?,
    };
    let (image, form) = match cubin.and_then(|m| m.cubin_base64.as_deref()) {
        Some(b) => (
            crate::plan::base64_decode(b)
                .ok_or_else(|| format!("the {} cubin is corrupt", m.arch))?,
            "cubin",
        ),
        None => {
            let mut t = m.ptx.clone().into_bytes();
            if t.contains(&0) {
                return Err("the PTX holds a NUL byte".into());
            }
            t.push(0);
            (t, "PTX")
        }
    };
    // SAFETY: a cubin image, or a NUL-terminated PTX image.
    let module = unsafe { result::module::load_data(image.as_ptr() as *const c_void) }
        .map_err(|e| format!("CUDA: loading the {} {form} for {}: {e}", m.arch, dev.name))?;
    let mut funcs = Vec::with_capacity(m.entries.len());
    for e in &m.entries {
        let name = CString::new(e.as_str()).map_err(|_| "a kernel name holds a NUL byte")?;
        // SAFETY: `module` is loaded; the name is NUL-terminated.
        let f = unsafe { result::module::get_function(module, name) }
            .map_err(|err| format!("CUDA: kernel {e} is not in the {} module: {err}", m.arch))?;
        funcs.push(f);
    }
    Ok(Kernels {
        module,
        funcs,
        arch: format!("{} {form}", m.arch),
    })
}

/// The symbol GPU linear kernels compare a step's row count with to choose their
/// tensor-core tiles (`llmc_kernels::templates::gpu::MMA_ROWS_SYMBOL`): not a shape,
/// the runtime binds it.
pub const MMA_ROWS_SYMBOL: &str = "llmc_mma_rows";

/// Rows from which a step's linears run on tensor cores (one 64-row tile's worth).
pub const MMA_ROWS: i64 = 64;

/// The tensor-core threshold a step binds: never with `LLMC_CUDA_NO_MMA=1`, else
/// `LLMC_CUDA_MMA_ROWS` (a row count of at least 1, for tuning on a GPU without a
/// rebuild), else [`MMA_ROWS`].
fn mma_rows(off: bool, rows: Option<&str>) -> Result<i64, String> {
    if off {
        return Ok(1 << 40);
    }
    match rows {
        None => Ok(MMA_ROWS),
        Some(v) => match v.trim().parse::<i64>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => Err(format!(
                "LLMC_CUDA_MMA_ROWS={v}: expected a row count of at least 1"
            )),
        },
    }
}

/// A temporary's device memory, reused across steps and grown when a step needs more.
#[derive(Default)]
struct Slot {
    buf: Option<DevBuf>,
}

impl Slot {
    /// The device address of at least `n` bytes; `grew` is set when it reallocated.
    fn ensure(&mut self, n: usize, grew: &mut bool) -> Result<sys::CUdeviceptr, String> {
        match &self.buf {
            Some(b) if b.len >= n => Ok(b.ptr),
            _ => {
                *grew = true;
                // Room for a quarter more, so a growing batch reallocates rarely.
                let b = DevBuf::zeroed(n + n / 4)?;
                let p = b.ptr;
                self.buf = Some(b);
                Ok(p)
            }
        }
    }
}

/// One kernel launch of a step, with its arguments evaluated.
struct Launch {
    func: sys::CUfunction,
    grid: (u32, u32, u32),
    block: (u32, u32, u32),
    shared: u32,
    /// Buffer addresses then dims, each one 8-byte kernel parameter.
    args: Vec<u64>,
    step: usize,
}

/// A captured step: the graph and the launches it replays.
struct Captured {
    exec: sys::CUgraphExec,
    graph: sys::CUgraph,
}

impl Drop for Captured {
    fn drop(&mut self) {
        // SAFETY: created by `capture`, destroyed once.
        unsafe {
            let _ = result::graph::exec_destroy(self.exec);
            let _ = result::graph::destroy(self.graph);
        }
    }
}

/// Where a step's wall time goes, by step size (`LLMC_CUDA_TIMING=1`): seconds in
/// [prepare (shapes, addresses, uploads), enqueue (launches or graph replay), kernels
/// (waiting for them), copy back (the logits, or the greedy picks), host between
/// steps (engine: scheduling, sampling)], and the steps, rows, logit rows, graph
/// replays and steps that copied back picks counted, per bucket of rows.
#[derive(Default)]
struct Timing {
    buckets: [([f64; 5], u64, u64, u64, u64, u64); 3],
    last_end: Option<std::time::Instant>,
}

impl Timing {
    const NAMES: [&'static str; 3] = ["1 row", "2-32 rows", "33+ rows"];

    fn bucket(rows: usize) -> usize {
        match rows {
            0 | 1 => 0,
            2..=32 => 1,
            _ => 2,
        }
    }

    fn report(&self) {
        eprintln!(
            "cuda timing (ms per step): prepare, enqueue, kernels, copy back (logits or picks), host between steps"
        );
        for (name, (t, n, rows, lrows, replays, picks)) in Self::NAMES.iter().zip(&self.buckets) {
            if *n == 0 {
                continue;
            }
            let per = |x: f64| x * 1e3 / *n as f64;
            eprintln!(
                "  {name:>9}: {n} steps ({:.1} rows, {:.1} logit rows, {replays} graph replays, {picks} greedy picks only): {:.3} {:.3} {:.3} {:.3} {:.3}",
                *rows as f64 / *n as f64,
                *lrows as f64 / *n as f64,
                per(t[0]),
                per(t[1]),
                per(t[2]),
                per(t[3]),
                per(t[4])
            );
        }
    }
}

/// The serving-form step on the GPU.
pub struct CudaStep {
    plan: Plan,
    serving: ServingInfo,
    kernels: Kernels,
    /// The data section (weights and constants), uploaded once.
    arena: DevBuf,
    /// Per buffer: its device memory (inputs and temporaries).
    slots: Vec<Slot>,
    /// Per layer: K pool, V pool.
    pools: Vec<(DevBuf, DevBuf)>,
    blocks: usize,
    block_bytes: usize,
    /// Step shapes (symbol values) seen with no reallocation, and their graphs.
    graphs: HashMap<Vec<i64>, Option<Captured>>,
    use_graphs: bool,
    sync_each: bool,
    /// Zero every temporary before each step (`LLMC_CUDA_ZERO=1`, a diagnosis aid:
    /// the CPU runtime hands kernels zeroed temporaries).
    zero_temps: bool,
    profile: Option<Vec<(u64, f64)>>,
    /// Host-side phase times per step (`LLMC_CUDA_TIMING=1`), printed at exit.
    timing: Option<Timing>,
    logits_host: Vec<f32>,
    /// The greedy picks copied back (`i64` per logit row), and as token ids.
    picks_host: Vec<i64>,
    picks_ids: Vec<u32>,
    /// Whether the step computes greedy picks and they are used (`LLMC_CUDA_NO_PICKS=1`
    /// turns them off: every step copies back its logits, the baseline
    /// `scripts/gpu-check` measures).
    use_picks: bool,
    /// The value of [`MMA_ROWS_SYMBOL`]: the row count from which the linears take
    /// their tensor-core tiles (`LLMC_CUDA_NO_MMA=1`: never, the SIMT tiles as the
    /// baseline `scripts/gpu-check` measures).
    mma_rows: i64,
    // Last: the context must outlive every allocation above.
    dev: Device,
}

impl CudaStep {
    /// Opens the device, loads the kernels, uploads the weights and allocates a KV pool
    /// of `blocks` blocks per layer.
    pub fn new(plan: Plan, data: &[u8], blocks: usize) -> Result<CudaStep, String> {
        let dev = Device::open()?;
        let gpu = plan
            .gpu
            .clone()
            .ok_or("this executable holds no GPU code")?;
        let serving = plan.llm.as_ref().and_then(|l| l.serving.clone()).ok_or(
            "this executable was built without the serving form (rebuild it with this llmc)",
        )?;
        if gpu.launches.len() != plan.kernels.len() {
            return Err(format!(
                "plan: {} kernels, {} GPU launches",
                plan.kernels.len(),
                gpu.launches.len()
            ));
        }
        let kernels = load_kernels(&gpu, &dev)?;
        if kernels.funcs.len() != plan.kernels.len() {
            return Err(format!(
                "plan: {} kernels, the {} module has {}",
                plan.kernels.len(),
                kernels.arch,
                kernels.funcs.len()
            ));
        }
        let arena = DevBuf::from_host(data)?;
        let block_bytes = crate::engine::step::CompiledStep::block_bytes(&serving);
        let mut pools = Vec::with_capacity(serving.layers.len());
        for _ in &serving.layers {
            let n = block_bytes
                .checked_mul(blocks)
                .ok_or("the KV pool size overflows")?;
            pools.push((DevBuf::zeroed(n)?, DevBuf::zeroed(n)?));
        }
        let env = |k: &str| std::env::var(k).is_ok_and(|v| v == "1");
        let profile = env("LLMC_PROFILE").then(|| vec![(0, 0.0); plan.kernels.len()]);
        Ok(CudaStep {
            slots: (0..plan.buffers.len()).map(|_| Slot::default()).collect(),
            use_graphs: !env("LLMC_CUDA_NO_GRAPHS") && profile.is_none(),
            sync_each: env("LLMC_CUDA_SYNC") || profile.is_some(),
            zero_temps: env("LLMC_CUDA_ZERO"),
            timing: env("LLMC_CUDA_TIMING").then(Timing::default),
            profile,
            plan,
            kernels,
            arena,
            pools,
            blocks,
            block_bytes,
            graphs: HashMap::new(),
            logits_host: Vec::new(),
            picks_host: Vec::new(),
            picks_ids: Vec::new(),
            use_picks: serving.picks_output.is_some() && !env("LLMC_CUDA_NO_PICKS"),
            mma_rows: mma_rows(
                env("LLMC_CUDA_NO_MMA"),
                std::env::var("LLMC_CUDA_MMA_ROWS").ok().as_deref(),
            )?,
            serving,
            dev,
        })
    }

    /// The device, for `info` and `bench`.
    pub fn device(&self) -> &Device {
        &self.dev
    }

    /// The architecture whose code runs, and its form (`sm_90 cubin`, `sm_80 PTX`).
    pub fn arch(&self) -> &str {
        &self.kernels.arch
    }

    /// Binds the plan's symbols from the step's input shapes.
    fn bind(&self, shapes: &[(u32, Vec<usize>)]) -> Result<Vec<Option<i64>>, String> {
        let plan = &self.plan;
        let mut syms: Vec<Option<i64>> = vec![None; plan.symbols.len()];
        for (slot, shape) in shapes {
            let io = plan
                .inputs
                .get(*slot as usize)
                .ok_or_else(|| format!("the plan has no graph input {slot}"))?;
            if io.shape.len() != shape.len() {
                return Err(format!(
                    "input %{}: expected rank {}, got {:?}",
                    io.name,
                    io.shape.len(),
                    shape
                ));
            }
            for (d, &n) in io.shape.iter().zip(shape) {
                if let Some(s) = d.as_symbol() {
                    syms[s as usize].get_or_insert(n as i64);
                }
            }
        }
        if let Some(s) = plan.symbols.iter().position(|n| n == MMA_ROWS_SYMBOL) {
            syms[s] = Some(self.mma_rows);
        }
        for (slot, shape) in shapes {
            let io = &plan.inputs[*slot as usize];
            for (d, &n) in io.shape.iter().zip(shape) {
                if d.eval(&syms) != Some(n as i64) {
                    return Err(format!(
                        "input %{}: shape {shape:?} does not match {}",
                        io.name,
                        d.show(&plan.symbols)
                    ));
                }
            }
        }
        Ok(syms)
    }

    /// Queues one launch.
    fn launch(&self, l: &Launch) -> Result<(), String> {
        let mut args: Vec<u64> = l.args.clone();
        let mut params: Vec<*mut c_void> = args
            .iter_mut()
            .map(|a| a as *mut u64 as *mut c_void)
            .collect();
        // SAFETY: the kernel takes exactly these 8-byte parameters (pointers to
        // buffers sized from the shapes it indexes with, then i64 dims); the driver
        // copies the parameter values before returning.
        unsafe {
            result::launch_kernel(
                l.func,
                l.grid,
                l.block,
                l.shared,
                self.dev.stream,
                &mut params,
            )
        }
        .map_err(|e| {
            format!(
                "CUDA: launching {} (step {}): {e}",
                self.plan
                    .kernels
                    .get(self.kernel_of(l.step))
                    .map_or("?", |s| s.as_str()),
                self.plan.steps[l.step].node
            )
        })
    }

    fn kernel_of(&self, step: usize) -> usize {
        match &self.plan.steps[step].kind {
            StepKind::Kernel { kernel, .. } => *kernel as usize,
            _ => usize::MAX,
        }
    }

    /// Captures `launches` into a CUDA graph.
    fn capture(&self, launches: &[Launch]) -> Result<Captured, String> {
        let s = self.dev.stream;
        // SAFETY: the stream is idle (synchronised by the caller); every launch is
        // valid as in `launch`.
        unsafe {
            drv(
                "cuStreamBeginCapture",
                result::stream::begin_capture(
                    s,
                    sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
                ),
            )?;
            let mut err = None;
            for l in launches {
                if let Err(e) = self.launch(l) {
                    err = Some(e);
                    break;
                }
            }
            let graph = drv("cuStreamEndCapture", result::stream::end_capture(s))?;
            if let Some(e) = err {
                let _ = result::graph::destroy(graph);
                return Err(e);
            }
            let exec = match result::graph::instantiate(
                graph,
                sys::CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH,
            ) {
                Ok(x) => x,
                Err(e) => {
                    let _ = result::graph::destroy(graph);
                    return Err(format!("CUDA: cuGraphInstantiate: {e}"));
                }
            };
            Ok(Captured { exec, graph })
        }
    }
}

fn i64_bytes(v: &[i64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn i32_bytes(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl StepModel for CudaStep {
    fn vocab(&self) -> usize {
        self.serving.vocab
    }

    fn kv_blocks(&self) -> usize {
        self.blocks
    }

    fn block_size(&self) -> usize {
        self.serving.block_size
    }

    fn kv_bytes_per_token(&self) -> usize {
        crate::engine::step::CompiledStep::bytes_per_token(&self.serving)
    }

    fn step(&mut self, b: &StepBatch) -> Result<&[f32], String> {
        self.run(b, false)?;
        Ok(&self.logits_host)
    }

    fn has_picks(&self) -> bool {
        self.use_picks
    }

    fn step_picks(&mut self, b: &StepBatch) -> Result<&[u32], String> {
        if !self.use_picks {
            return Err("this executable's step computes no greedy picks".into());
        }
        self.run(b, true)?;
        self.picks_ids.clear();
        for &p in &self.picks_host {
            let id = u32::try_from(p).map_err(|_| format!("a greedy pick is {p}"))?;
            self.picks_ids.push(id);
        }
        Ok(&self.picks_ids)
    }

    fn copy_block(&mut self, from: u32, to: u32) {
        self.copy_block_in_pools(from, to);
    }
}

impl CudaStep {
    /// Runs one step and copies back its logits, or its greedy picks when `picks`.
    fn run(&mut self, b: &StepBatch, picks: bool) -> Result<(), String> {
        let t_start = std::time::Instant::now();
        let s = self.serving.clone();
        let t = b.tokens.len();
        let nseq = b.block_tables.len().checked_div(b.table_width).unwrap_or(0);
        // Block tables padded to a multiple of 32 entries (512 tokens of 16), so a
        // sequence's decode steps keep one shape, and one graph, for that long.
        let width = b.table_width.div_ceil(32).max(1) * 32;
        let mut tables = vec![0i32; nseq * width];
        for (dst, src) in tables
            .chunks_exact_mut(width)
            .zip(b.block_tables.chunks_exact(b.table_width.max(1)))
        {
            dst[..src.len()].copy_from_slice(src);
        }
        let pool_shape = vec![self.blocks, s.kv_heads, s.block_size, s.head_dim];
        let host: Vec<(u32, Vec<usize>, Vec<u8>)> = vec![
            (s.ids_input, vec![1, t], i64_bytes(&b.tokens)),
            (s.pos_input, vec![1, t], i64_bytes(&b.positions)),
            (s.slots_input, vec![t], i64_bytes(&b.slots)),
            (s.row_seq_input, vec![t], i32_bytes(&b.row_seq)),
            (s.block_tables_input, vec![nseq, width], i32_bytes(&tables)),
            (
                s.logit_rows_input,
                vec![b.logit_rows.len()],
                i64_bytes(&b.logit_rows),
            ),
        ];
        let mut shapes: Vec<(u32, Vec<usize>)> =
            host.iter().map(|(i, sh, _)| (*i, sh.clone())).collect();
        for l in &s.layers {
            shapes.push((l.k_pool_input, pool_shape.clone()));
            shapes.push((l.v_pool_input, pool_shape.clone()));
        }
        let syms = self.bind(&shapes)?;
        // Where each buffer lives for this step.
        let nb = self.plan.buffers.len();
        let mut addr: Vec<Option<u64>> = vec![None; nb];
        let mut grew = false;
        let mut uploads: Vec<(u64, &[u8])> = Vec::new();
        let pool_of: HashMap<u32, u64> = s
            .layers
            .iter()
            .zip(&self.pools)
            .flat_map(|(l, (k, v))| [(l.k_pool_input, k.ptr), (l.v_pool_input, v.ptr)])
            .collect();
        for ((a, d), slot) in addr.iter_mut().zip(&self.plan.buffers).zip(&mut self.slots) {
            match d.source {
                Source::Input(k) => {
                    if let Some(p) = pool_of.get(&k) {
                        *a = Some(*p);
                    } else if let Some((_, _, bytes)) = host.iter().find(|(x, _, _)| *x == k) {
                        let p = slot.ensure(bytes.len(), &mut grew)?;
                        *a = Some(p);
                        uploads.push((p, bytes));
                    } else {
                        return Err(format!("serving input {k} is not bound"));
                    }
                }
                Source::Data { offset, .. } => *a = Some(self.arena.ptr + offset),
                Source::Temp => {}
            }
        }
        let mut launches = Vec::new();
        let gpu = self.plan.gpu.as_ref().ok_or("no GPU plan")?;
        for (si, step) in self.plan.steps.iter().enumerate() {
            let StepKind::Kernel { kernel, bufs, dims } = &step.kind else {
                return Err(format!(
                    "step {}: a KV append has no GPU form (the serving form writes the pool in place)",
                    step.node
                ));
            };
            let mut args = Vec::with_capacity(bufs.len() + dims.len());
            for &bi in bufs {
                let bi = bi as usize;
                if addr[bi].is_none() {
                    let n = self.plan.buffer_bytes(bi, &syms)?;
                    addr[bi] = Some(self.slots[bi].ensure(n, &mut grew)?);
                }
                args.push(addr[bi].unwrap_or(0));
            }
            let mut dv = Vec::with_capacity(dims.len());
            for p in dims {
                dv.push(p.eval(&syms).ok_or_else(|| {
                    format!(
                        "step {}: dim {} has no value",
                        step.node,
                        p.show(&self.plan.symbols)
                    )
                })?);
            }
            let l = &gpu.launches[*kernel as usize];
            let g = |e: &crate::plan::DimExpr| -> Result<u32, String> {
                let v = e.eval(&dv).ok_or_else(|| {
                    format!("step {}: a grid size names a dim not passed", step.node)
                })?;
                u32::try_from(v.max(0))
                    .map_err(|_| format!("step {}: grid size {v} too large", step.node))
            };
            let grid = (g(&l.grid[0])?, g(&l.grid[1])?, g(&l.grid[2])?);
            if grid.1 > 65535 || grid.2 > 65535 {
                return Err(format!(
                    "step {}: grid {grid:?} exceeds the y/z limit of 65535",
                    step.node
                ));
            }
            args.extend(dv.iter().map(|&d| d as u64));
            if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
                continue;
            }
            launches.push(Launch {
                func: self.kernels.funcs[*kernel as usize],
                grid,
                block: (l.block[0], l.block[1], l.block[2]),
                shared: l.shared_bytes,
                args,
                step: si,
            });
        }
        let out = &self.plan.outputs[s.logits_output as usize];
        let out_addr = addr[out.buffer as usize].ok_or("the logits are never computed")?;
        let n_logits = b.logit_rows.len() * s.vocab;
        if out.dtype != ElemType::F32 {
            return Err(format!("logits are {}, expected f32", out.dtype.name()));
        }
        let picks_addr = match (picks, s.picks_output) {
            (false, _) => None,
            (true, Some(p)) => {
                let out =
                    self.plan.outputs.get(p as usize).ok_or_else(|| {
                        format!("the greedy picks are output {p}, past the plan's")
                    })?;
                if out.dtype != ElemType::I64 {
                    return Err(format!(
                        "greedy picks are {}, expected i64",
                        out.dtype.name()
                    ));
                }
                Some(addr[out.buffer as usize].ok_or("the greedy picks are never computed")?)
            }
            (true, None) => return Err("this executable's step computes no greedy picks".into()),
        };
        // Uploads, then the kernels, on the one stream.
        for (p, bytes) in &uploads {
            // SAFETY: the slot holds at least `bytes.len()` bytes; a pageable source
            // is staged before the call returns.
            drv("cuMemcpyHtoDAsync", unsafe {
                result::memcpy_htod_async(*p, bytes, self.dev.stream)
            })?;
        }
        if self.zero_temps {
            for (i, slot) in self.slots.iter().enumerate() {
                if let (Some(buf), Source::Temp) = (&slot.buf, &self.plan.buffers[i].source) {
                    // SAFETY: the whole allocation, on the step's stream.
                    drv("cuMemsetD8Async", unsafe {
                        result::memset_d8_async(buf.ptr, 0, buf.len, self.dev.stream)
                    })?;
                }
            }
        }
        let key: Vec<i64> = syms.iter().map(|v| v.unwrap_or(-1)).collect();
        let t_prepared = std::time::Instant::now();
        let mut replayed = false;
        if self.use_graphs && !grew {
            match self.graphs.get(&key) {
                Some(Some(c)) => {
                    // SAFETY: the graph's launches use the same addresses and dims
                    // (same shapes, no buffer moved since it was captured).
                    drv("cuGraphLaunch", unsafe {
                        result::graph::launch(c.exec, self.dev.stream)
                    })?;
                    replayed = true;
                }
                Some(None) => {
                    self.dev.sync()?;
                    let c = self.capture(&launches)?;
                    // SAFETY: as above.
                    drv("cuGraphLaunch", unsafe {
                        result::graph::launch(c.exec, self.dev.stream)
                    })?;
                    self.graphs.insert(key.clone(), Some(c));
                    replayed = true;
                }
                None => {
                    self.graphs.insert(key.clone(), None);
                }
            }
        }
        if grew {
            // Addresses moved: every captured graph is stale.
            self.graphs.clear();
        }
        if !replayed {
            for l in &launches {
                let t0 = self.sync_each.then(std::time::Instant::now);
                self.launch(l)?;
                if let Some(t0) = t0 {
                    self.dev.sync().map_err(|e| {
                        format!(
                            "{e} (in step {}, kernel {})",
                            self.plan.steps[l.step].node,
                            self.plan.kernels[self.kernel_of(l.step)]
                        )
                    })?;
                    if let Some(p) = self.profile.as_mut() {
                        let k = match &self.plan.steps[l.step].kind {
                            StepKind::Kernel { kernel, .. } => *kernel as usize,
                            _ => 0,
                        };
                        p[k].0 += 1;
                        p[k].1 += t0.elapsed().as_secs_f64();
                    }
                }
            }
        }
        let t_enqueued = std::time::Instant::now();
        if self.timing.is_some() {
            self.dev.sync()?;
        }
        let t_kernels = std::time::Instant::now();
        if let Some(pa) = picks_addr {
            self.picks_host.resize(b.logit_rows.len(), 0);
            // SAFETY: the picks buffer holds an i64 per logit row (sized from the same
            // shapes); the copy is ordered after the kernels on the stream.
            drv("copying the greedy picks back", unsafe {
                result::memcpy_dtoh_async(&mut self.picks_host[..], pa, self.dev.stream)
            })?;
        } else {
            self.logits_host.resize(n_logits, 0.0);
            // SAFETY: the logits buffer holds `n_logits` f32 values (sized from the
            // same shapes); the copy is ordered after the kernels on the stream.
            drv("copying the logits back", unsafe {
                result::memcpy_dtoh_async(&mut self.logits_host[..], out_addr, self.dev.stream)
            })?;
        }
        self.dev.sync()?;
        if let Some(tm) = self.timing.as_mut() {
            let end = std::time::Instant::now();
            let between = tm
                .last_end
                .map_or(0.0, |e| t_start.duration_since(e).as_secs_f64());
            let bk = &mut tm.buckets[Timing::bucket(t)];
            for (acc, d) in bk.0.iter_mut().zip([
                t_prepared.duration_since(t_start),
                t_enqueued.duration_since(t_prepared),
                t_kernels.duration_since(t_enqueued),
                end.duration_since(t_kernels),
            ]) {
                *acc += d.as_secs_f64();
            }
            bk.0[4] += between;
            bk.1 += 1;
            bk.2 += t as u64;
            bk.3 += b.logit_rows.len() as u64;
            bk.4 += replayed as u64;
            bk.5 += picks as u64;
            tm.last_end = Some(end);
        }
        Ok(())
    }

    fn copy_block_in_pools(&mut self, from: u32, to: u32) {
        let n = self.block_bytes;
        let Some((f, t)) = crate::engine::step::block_copy_offsets(from, to, n, self.blocks) else {
            return;
        };
        for (kp, vp) in &self.pools {
            for p in [kp, vp] {
                // SAFETY: both ranges lie in the pool and do not overlap.
                unsafe {
                    let _ = result::memcpy_dtod_async(
                        p.ptr + t as u64,
                        p.ptr + f as u64,
                        n,
                        self.dev.stream,
                    );
                }
            }
        }
    }
}

impl Drop for CudaStep {
    fn drop(&mut self) {
        let _ = self.dev.sync();
        self.graphs.clear();
        if let Some(t) = &self.timing {
            t.report();
        }
        if let Some(p) = &self.profile {
            let total: f64 = p.iter().map(|(_, s)| s).sum();
            let mut rows: Vec<(usize, &(u64, f64))> = p.iter().enumerate().collect();
            rows.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
            eprintln!(
                "profile ({}, synchronised after each launch): {:.3} ms in kernels",
                self.dev.name,
                total * 1e3
            );
            for (i, (calls, secs)) in rows {
                if *calls == 0 {
                    continue;
                }
                eprintln!(
                    "  {:>9.3} ms {:>5.1}% {:>7} calls  {}",
                    secs * 1e3,
                    100.0 * secs / total.max(1e-12),
                    calls,
                    self.plan.kernels.get(i).map_or("?", |s| s.as_str())
                );
            }
        }
    }
}

/// HBM bandwidth (bytes/s) of the GPUs the cost model knows, by the vendors' sheets.
pub const KNOWN_GPUS: [(&str, f64); 2] = [("H100 SXM", 3.35e12), ("H200", 4.8e12)];

/// The cost model's assumptions: the share of HBM bandwidth the decode kernels reach,
/// the GPU time of one small kernel node in a replayed CUDA graph (launch, ramp, tail),
/// and the host's time per step (inputs up, logits back, sampling).
pub const ASSUMED_BW_SHARE: f64 = 0.85;
/// See [`ASSUMED_BW_SHARE`].
pub const ASSUMED_NODE_SECS: f64 = 3e-6;
/// See [`ASSUMED_BW_SHARE`].
pub const ASSUMED_HOST_SECS: f64 = 3e-4;

/// A single-sequence decode estimate for each known GPU: weight bytes per token over
/// [`ASSUMED_BW_SHARE`] of its bandwidth, or the kernel count times
/// [`ASSUMED_NODE_SECS`] when that is longer (small models are launch-bound), plus the
/// host's share. Lines for `llmc build --target cuda` and `info`.
pub fn decode_estimate(plan: &Plan) -> Vec<String> {
    let bytes = crate::bench::weight_bytes_per_token(plan) as f64;
    let kernels = plan
        .steps
        .iter()
        .filter(|s| matches!(s.kind, StepKind::Kernel { .. }))
        .count();
    let launch = kernels as f64 * ASSUMED_NODE_SECS;
    KNOWN_GPUS
        .iter()
        .map(|(name, bw)| {
            let mem = bytes / (ASSUMED_BW_SHARE * bw);
            let t = mem.max(launch) + ASSUMED_HOST_SECS;
            format!(
                "{name}: {:.0} tok/s ({:.1} MB of weights per token: {:.1} us at {:.0}% of {:.2} TB/s; {kernels} kernels: {:.2} ms at {:.0} us each in a CUDA graph; {}-bound)",
                1.0 / t,
                bytes / 1e6,
                mem * 1e6,
                ASSUMED_BW_SHARE * 100.0,
                bw / 1e12,
                launch * 1e3,
                ASSUMED_NODE_SECS * 1e6,
                if mem >= launch { "bandwidth" } else { "launch" }
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_tensor_core_threshold_comes_from_the_environment() {
        assert_eq!(super::mma_rows(false, None), Ok(super::MMA_ROWS));
        assert_eq!(super::mma_rows(false, Some("16")), Ok(16));
        assert_eq!(super::mma_rows(true, Some("16")), Ok(1 << 40));
        for bad in ["0", "-3", "sixteen", ""] {
            let e = super::mma_rows(false, Some(bad)).unwrap_err();
            assert!(e.contains("LLMC_CUDA_MMA_ROWS"), "{e}");
        }
    }
}
