//! The step function the engine drives: a flat batch of token rows from many
//! sequences in, the logits of the rows that need them out, the new tokens' K/V
//! written into the paged pool on the way. [`StepModel`] is what the engine needs;
//! [`CompiledStep`] implements it with the executable's compiled serving-form plan
//! (see [`crate::plan::ServingInfo`]) and owns the KV pool memory.

use crate::abi::KernelFn;
use crate::exec::{AlignedBuf, ExecError, Input, Model, Output};
use crate::plan::{ElemType, Plan, ServingInfo};

/// One step's rows and attention metadata.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct StepBatch {
    /// Token id of each row.
    pub tokens: Vec<i64>,
    /// Position of each row in its sequence.
    pub positions: Vec<i64>,
    /// The pool slot (block × block size + offset) each row's K/V goes to.
    pub slots: Vec<i64>,
    /// Which sequence (row of `block_tables`) each row belongs to.
    pub row_seq: Vec<i32>,
    /// Each sequence's block table, `table_width` entries per sequence (padded).
    pub block_tables: Vec<i32>,
    /// Entries per block table.
    pub table_width: usize,
    /// Rows whose logits are returned, in order.
    pub logit_rows: Vec<i64>,
}

/// What the engine runs.
pub trait StepModel {
    /// Vocabulary size (logits per row).
    fn vocab(&self) -> usize;
    /// KV blocks in the pool.
    fn kv_blocks(&self) -> usize;
    /// Tokens per block.
    fn block_size(&self) -> usize;
    /// Bytes of KV per token, all layers.
    fn kv_bytes_per_token(&self) -> usize;
    /// Runs one step and returns its logits, `logit_rows.len() × vocab` values (valid
    /// until the next step: a serving step's are megabytes, read where they were
    /// computed).
    fn step(&mut self, batch: &StepBatch) -> Result<&[f32], String>;
    /// Whether [`StepModel::step_picks`] works: the build added the greedy picks to the
    /// step (`llmc_passes::serving::add_picks`, on CUDA).
    fn has_picks(&self) -> bool {
        false
    }
    /// Runs one step and returns each logit row's argmax (the first of equal logits;
    /// the first NaN where a row has any) instead of its logits: for a step whose
    /// sampled rows are all greedy with no logprobs wanted, so a GPU copies back a
    /// token id per row, not `vocab` logits.
    fn step_picks(&mut self, batch: &StepBatch) -> Result<&[u32], String> {
        let _ = batch;
        Err("this step function returns logits only".into())
    }
    /// Copies block `from`'s K/V into block `to` in every layer (copy-on-write).
    fn copy_block(&mut self, from: u32, to: u32);
}

/// The compiled serving-form plan with its KV pool.
pub struct CompiledStep {
    model: Model<'static>,
    serving: ServingInfo,
    /// Per layer: K pool, V pool.
    pools: Vec<(AlignedBuf, AlignedBuf)>,
    blocks: usize,
    block_bytes: usize,
    vocab: usize,
    /// The last step's outputs (its logits are read from them), handed back to the
    /// model at the next step.
    last: Vec<Output>,
    /// The logits as f32 where the output's bytes cannot be read as such in place.
    converted: Vec<f32>,
}

impl CompiledStep {
    /// Bytes of one block of one layer's K (or V) pool.
    pub fn block_bytes(s: &ServingInfo) -> usize {
        s.block_size * Self::row_bytes(s)
    }

    /// Bytes of KV per token over all layers (keys and values).
    pub fn bytes_per_token(s: &ServingInfo) -> usize {
        2 * s.layers.len() * Self::row_bytes(s)
    }

    /// Bytes of one token's keys (or values) in one layer: `kv_heads` head vectors in
    /// the pool's type (a block format: whole blocks per head vector, as the serving
    /// form checked).
    fn row_bytes(s: &ServingInfo) -> usize {
        let n = (s.kv_heads * s.head_dim) as u64;
        s.kv_dtype.bytes_for(n).unwrap_or(n * 4) as usize
    }

    /// Loads the plan and allocates a pool of `blocks` blocks per layer.
    pub fn new(
        plan: Plan,
        data: &'static [u8],
        table: &[(String, KernelFn)],
        blocks: usize,
    ) -> Result<CompiledStep, String> {
        let serving = plan.llm.as_ref().and_then(|l| l.serving.clone()).ok_or(
            "this executable was built without the serving form (rebuild it with this llmc)",
        )?;
        let vocab = serving.vocab;
        let block_bytes = Self::block_bytes(&serving);
        let mut pools = Vec::with_capacity(serving.layers.len());
        for (i, _) in serving.layers.iter().enumerate() {
            let n = block_bytes
                .checked_mul(blocks)
                .ok_or("the KV pool size overflows")?;
            let alloc = || {
                AlignedBuf::zeroed(n)
                    .ok_or_else(|| format!("cannot allocate {n} bytes of KV pool for layer {i}"))
            };
            pools.push((alloc()?, alloc()?));
        }
        let model = Model::new(plan, data, table).map_err(|e| e.to_string())?;
        Ok(CompiledStep {
            model,
            serving,
            pools,
            blocks,
            block_bytes,
            vocab,
            last: Vec::new(),
            converted: Vec::new(),
        })
    }

    /// KV blocks per layer that `mb` MiB hold (at least one).
    pub fn blocks_for_mb(s: &ServingInfo, mb: usize) -> usize {
        let per_block = Self::bytes_per_token(s) * s.block_size;
        ((mb << 20) / per_block.max(1)).max(1)
    }

    /// Starts an engine on this plan (on the GPU for a CUDA build) with a pool of `kv_cache_mb` MiB (the
    /// configuration's `kv_blocks` is replaced by what that holds); 0 sizes the pool
    /// for `cfg.max_context` tokens when that is set, else [`DEFAULT_KV_CACHE_MB`].
    pub fn start_engine(
        plan: Plan,
        data: &'static [u8],
        table: Vec<(String, KernelFn)>,
        kv_cache_mb: usize,
        mut cfg: super::EngineConfig,
    ) -> Result<super::EngineHandle, String> {
        let llm = plan
            .llm
            .clone()
            .ok_or("this executable holds no language model")?;
        let serving = llm.serving.clone().ok_or(
            "this executable was built without the serving form (rebuild it with this llmc)",
        )?;
        let model_context = llm.context_length.unwrap_or(i64::MAX).clamp(1, 1 << 40) as usize;
        let context = cfg
            .max_context
            .map_or(model_context, |c| c.min(model_context));
        cfg.kv_blocks = match (kv_cache_mb, cfg.max_context) {
            // `--max-context N` alone: a pool of N tokens shared by every sequence (as
            // llama.cpp's `-c`), each sequence at most N long.
            (0, Some(_)) => context.div_ceil(serving.block_size).max(1),
            (0, None) => Self::blocks_for_mb(&serving, DEFAULT_KV_CACHE_MB),
            (mb, _) => Self::blocks_for_mb(&serving, mb),
        };
        let blocks = cfg.kv_blocks;
        super::Engine::start(
            move || {
                if plan.gpu.is_some() {
                    let s = crate::cuda::CudaStep::new(plan, data, blocks)?;
                    return Ok(Box::new(s) as Box<dyn StepModel>);
                }
                let s = CompiledStep::new(plan, data, &table, blocks)?;
                Ok(Box::new(s) as Box<dyn StepModel>)
            },
            cfg,
            context,
            llm.eos.clone(),
        )
    }

    /// The serving facts.
    pub fn serving(&self) -> &ServingInfo {
        &self.serving
    }

    /// The plan.
    pub fn plan(&self) -> &Plan {
        self.model.plan()
    }
}

fn host_i64(v: &[i64], shape: Vec<usize>) -> crate::exec::HostTensor {
    crate::exec::HostTensor {
        dtype: ElemType::I64,
        shape,
        data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

fn host_i32(v: &[i32], shape: Vec<usize>) -> crate::exec::HostTensor {
    crate::exec::HostTensor {
        dtype: ElemType::I32,
        shape,
        data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

/// Byte offsets of blocks `from` and `to` in a pool of `blocks` blocks of `n` bytes,
/// when a copy-on-write copy between them is needed and in bounds (CPU and GPU pools).
pub(crate) fn block_copy_offsets(
    from: u32,
    to: u32,
    n: usize,
    blocks: usize,
) -> Option<(usize, usize)> {
    let (f, t) = (from as usize * n, to as usize * n);
    (from != to && f + n <= blocks * n && t + n <= blocks * n).then_some((f, t))
}

/// The KV pool's size when neither `--kv-cache-mb` nor `--max-context` is given.
pub const DEFAULT_KV_CACHE_MB: usize = 512;

impl StepModel for CompiledStep {
    fn vocab(&self) -> usize {
        self.vocab
    }

    fn kv_blocks(&self) -> usize {
        self.blocks
    }

    fn block_size(&self) -> usize {
        self.serving.block_size
    }

    fn kv_bytes_per_token(&self) -> usize {
        Self::bytes_per_token(&self.serving)
    }

    fn step(&mut self, b: &StepBatch) -> Result<&[f32], String> {
        self.model.recycle(std::mem::take(&mut self.last));
        let s = &self.serving;
        let t = b.tokens.len();
        let nseq = b.block_tables.len().checked_div(b.table_width).unwrap_or(0);
        let host = [
            (s.ids_input, host_i64(&b.tokens, vec![1, t])),
            (s.pos_input, host_i64(&b.positions, vec![1, t])),
            (s.slots_input, host_i64(&b.slots, vec![t])),
            (s.row_seq_input, host_i32(&b.row_seq, vec![t])),
            (
                s.block_tables_input,
                host_i32(&b.block_tables, vec![nseq, b.table_width]),
            ),
            (
                s.logit_rows_input,
                host_i64(&b.logit_rows, vec![b.logit_rows.len()]),
            ),
        ];
        let n_inputs = self.model.plan().inputs.len();
        let mut inputs: Vec<Option<Input>> = (0..n_inputs).map(|_| None).collect();
        for (slot, h) in &host {
            *inputs
                .get_mut(*slot as usize)
                .ok_or_else(|| format!("the plan names graph input {slot} of {n_inputs}"))? =
                Some(Input::Host(h));
        }
        let pool_shape = vec![self.blocks, s.kv_heads, s.block_size, s.head_dim];
        for (l, (kp, vp)) in s.layers.iter().zip(&self.pools) {
            for (slot, buf) in [(l.k_pool_input, kp), (l.v_pool_input, vp)] {
                *inputs
                    .get_mut(slot as usize)
                    .ok_or_else(|| format!("the plan names graph input {slot} of {n_inputs}"))? =
                    Some(Input::Borrowed {
                        dtype: s.kv_dtype,
                        shape: pool_shape.clone(),
                        ptr: buf.ptr(),
                        len: buf.len(),
                    });
            }
        }
        let inputs: Vec<Input> = inputs
            .into_iter()
            .enumerate()
            .map(|(i, x)| x.ok_or_else(|| format!("serving input {i} is not bound")))
            .collect::<Result<_, _>>()?;
        let outs = self
            .model
            .run_outputs(&inputs)
            .map_err(|e: ExecError| e.to_string())?;
        let at = s.logits_output as usize;
        let out = outs.get(at).ok_or("the step returned no logits")?;
        if out.dtype != ElemType::F32 {
            return Err(format!("logits are {}, expected f32", out.dtype.name()));
        }
        let n = out.bytes().len() / 4;
        if n != b.logit_rows.len() * self.vocab {
            return Err(format!(
                "the step returned {n} logits for {} rows of {}",
                b.logit_rows.len(),
                self.vocab
            ));
        }
        self.last = outs;
        let bytes = self.last[at].bytes();
        // SAFETY: every bit pattern is an f32; `align_to` only takes the aligned middle.
        let (head, mid, tail) = unsafe { bytes.align_to::<f32>() };
        if cfg!(target_endian = "little") && head.is_empty() && tail.is_empty() {
            return Ok(mid);
        }
        self.converted.clear();
        self.converted.extend(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        );
        Ok(&self.converted)
    }

    fn copy_block(&mut self, from: u32, to: u32) {
        let n = self.block_bytes;
        let Some((f, t)) = block_copy_offsets(from, to, n, self.blocks) else {
            return;
        };
        for (kp, vp) in &self.pools {
            for p in [kp, vp] {
                // SAFETY: both ranges lie in the pool and do not overlap (from != to).
                unsafe { std::ptr::copy_nonoverlapping(p.ptr().add(f), p.ptr().add(t), n) };
            }
        }
    }
}
