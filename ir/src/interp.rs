//! The reference interpreter: runs a module op by op through the op table's reference
//! semantics. It is the numerical oracle every frontend, pass and backend is checked
//! against, so it favours obvious correctness over speed. It also checks each result
//! against the static type (with symbols bound from the inputs), which catches shape
//! rules and semantics that disagree.

use crate::module::{Module, ValueDef, WeightId};
use crate::{quant, DType, Dim, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Per-layer K and V caches, each `[batch, kv_heads, len, head_dim]`.
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    /// Layer -> (K, V).
    pub layers: BTreeMap<i64, (Tensor, Tensor)>,
}

impl KvCache {
    /// Number of positions cached (0 when empty).
    pub fn len(&self) -> usize {
        self.layers
            .values()
            .next()
            .map(|(k, _)| k.shape[2])
            .unwrap_or(0)
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What an op's reference semantics may consult beyond its operands.
#[derive(Debug, Default)]
pub struct EvalCtx {
    /// Values of the symbolic dims in this run.
    pub syms: HashMap<String, i64>,
    /// The KV cache (read and appended by `kv_append`).
    pub kv: KvCache,
    /// The declared dtypes of the node's results (block formats included: a value of
    /// a block format is held dequantized, in f32, and an op writing one, like
    /// `paged_kv_write` into a `q8_kv` pool, rounds what it writes through it).
    pub result_dtypes: Vec<DType>,
}

impl EvalCtx {
    /// Evaluates a dim with the bound symbols.
    pub fn dim(&self, d: &Dim) -> Result<i64, String> {
        d.eval(&|s| self.syms.get(s).copied())
            .ok_or_else(|| format!("dim `{d}` has a symbol with no value in this run"))
    }
}

/// An interpreter error, naming the node when there is one.
#[derive(Debug, thiserror::Error)]
pub enum InterpError {
    /// Wrong inputs given to the graph.
    #[error("input {name}: {msg}")]
    Input {
        /// Input name.
        name: String,
        /// What is wrong.
        msg: String,
    },
    /// A weight could not be read.
    #[error("weight @{name}: {msg}")]
    Weight {
        /// Weight name.
        name: String,
        /// What is wrong.
        msg: String,
    },
    /// An op failed.
    #[error("node {node} ({op}): {msg}")]
    Node {
        /// The node's first result, as `%name`.
        node: String,
        /// The op name.
        op: String,
        /// What is wrong.
        msg: String,
    },
}

/// Converts a weight's bytes to a tensor, dequantizing block formats to f32.
pub fn weight_tensor(dtype: DType, shape: &[usize], bytes: &[u8]) -> Result<Tensor, String> {
    let numel: usize = shape.iter().product();
    let need = dtype
        .storage_bytes(numel as u64)
        .ok_or_else(|| format!("{numel} elements are not whole {dtype} blocks"))?;
    if bytes.len() as u64 != need {
        return Err(format!(
            "has {} bytes, {dtype}{shape:?} needs {need}",
            bytes.len()
        ));
    }
    if dtype.is_quantized() || dtype.is_float() {
        let v = quant::dequantize(dtype, bytes, numel)?;
        let out = if dtype.is_quantized() {
            DType::F32
        } else {
            dtype
        };
        return Ok(Tensor::from_f64(out, shape.to_vec(), v));
    }
    let w = dtype.block_bytes();
    let v: Vec<i64> = bytes
        .chunks_exact(w)
        .map(|c| match dtype {
            DType::I64 => i64::from_le_bytes(c.try_into().unwrap_or([0; 8])),
            DType::I32 => i32::from_le_bytes(c.try_into().unwrap_or([0; 4])) as i64,
            DType::I16 => i16::from_le_bytes(c.try_into().unwrap_or([0; 2])) as i64,
            DType::I8 => c[0] as i8 as i64,
            DType::U16 => u16::from_le_bytes(c.try_into().unwrap_or([0; 2])) as i64,
            DType::U32 => u32::from_le_bytes(c.try_into().unwrap_or([0; 4])) as i64,
            _ => c[0] as i64,
        })
        .collect();
    Ok(Tensor::from_i64(dtype, shape.to_vec(), v))
}

/// Runs a module; holds the KV cache between calls and caches decoded weights.
pub struct Interpreter<'m> {
    module: &'m Module,
    weights: HashMap<WeightId, Arc<Tensor>>,
    /// The KV cache carried from one `run` to the next.
    pub kv: KvCache,
}

impl<'m> Interpreter<'m> {
    /// An interpreter over `module` with an empty cache.
    pub fn new(module: &'m Module) -> Interpreter<'m> {
        Interpreter {
            module,
            weights: HashMap::new(),
            kv: KvCache::default(),
        }
    }

    /// Clears the KV cache (a new sequence).
    pub fn reset(&mut self) {
        self.kv = KvCache::default();
    }

    fn weight(&mut self, w: WeightId) -> Result<Arc<Tensor>, InterpError> {
        if let Some(t) = self.weights.get(&w) {
            return Ok(t.clone());
        }
        let wt = self.module.weight(w);
        let err = |msg: String| InterpError::Weight {
            name: wt.name.clone(),
            msg,
        };
        let shape: Vec<usize> = wt
            .shape
            .as_consts()
            .ok_or_else(|| err("has a symbolic shape".into()))?
            .into_iter()
            .map(|d| d as usize)
            .collect();
        let bytes = wt
            .data
            .bytes()
            .ok_or_else(|| err("has no data attached".into()))?;
        let t = Arc::new(weight_tensor(wt.dtype, &shape, bytes).map_err(err)?);
        self.weights.insert(w, t.clone());
        Ok(t)
    }

    /// Runs the graph on `inputs` (in graph-input order) and returns the outputs.
    pub fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, InterpError> {
        let g = &self.module.graph;
        if inputs.len() != g.inputs.len() {
            return Err(InterpError::Input {
                name: "(all)".into(),
                msg: format!(
                    "graph takes {} inputs, got {}",
                    g.inputs.len(),
                    inputs.len()
                ),
            });
        }
        let mut ctx = EvalCtx {
            syms: HashMap::new(),
            kv: std::mem::take(&mut self.kv),
            result_dtypes: Vec::new(),
        };
        ctx.syms.insert("past".into(), ctx.kv.len() as i64);
        let mut env: Vec<Option<Arc<Tensor>>> = vec![None; g.values.len()];
        for (&v, t) in g.inputs.iter().zip(inputs) {
            let val = g.value(v);
            let bad = |msg: String| InterpError::Input {
                name: val.name.clone(),
                msg,
            };
            // A block-format input (a quantized KV pool) is given dequantized.
            if t.dtype != val.ty.dtype && t.dtype != val.ty.dtype.compute_type() {
                return Err(bad(format!("expected {}, got {}", val.ty, t.dtype)));
            }
            bind_shape(&mut ctx, &val.ty.shape.0, &t.shape).map_err(bad)?;
            env[v.0 as usize] = Some(Arc::new(t.clone()));
        }
        for (i, v) in g.values.iter().enumerate() {
            if let ValueDef::Weight(w) = v.def {
                let used = g
                    .nodes
                    .iter()
                    .any(|n| n.inputs.iter().any(|x| x.0 as usize == i))
                    || g.outputs.iter().any(|x| x.0 as usize == i);
                if used {
                    env[i] = Some(self.weight(w)?);
                }
            }
        }
        let result = (|| {
            for node in &g.nodes {
                let name = node
                    .outputs
                    .first()
                    .map(|&o| format!("%{}", g.value(o).name))
                    .unwrap_or_else(|| "(no result)".into());
                let err = |msg: String| InterpError::Node {
                    node: name.clone(),
                    op: node.op.name().into(),
                    msg,
                };
                let args: Vec<Arc<Tensor>> = node
                    .inputs
                    .iter()
                    .map(|v| {
                        env[v.0 as usize].clone().ok_or_else(|| {
                            err(format!("operand %{} has no value", g.value(*v).name))
                        })
                    })
                    .collect::<Result<_, _>>()?;
                let refs: Vec<&Tensor> = args.iter().map(|a| a.as_ref()).collect();
                ctx.result_dtypes = node.outputs.iter().map(|&o| g.ty(o).dtype).collect();
                let outs = node.op.eval(&refs, &node.attrs, &mut ctx).map_err(err)?;
                if outs.len() != node.outputs.len() {
                    return Err(err(format!(
                        "produced {} results, expected {}",
                        outs.len(),
                        node.outputs.len()
                    )));
                }
                for (&o, t) in node.outputs.iter().zip(outs) {
                    let ty = &g.value(o).ty;
                    if t.dtype != ty.dtype.compute_type() {
                        return Err(err(format!(
                            "result %{} is {}, its type says {}",
                            g.value(o).name,
                            t.dtype,
                            ty
                        )));
                    }
                    bind_shape(&mut ctx, &ty.shape.0, &t.shape)
                        .map_err(|m| err(format!("result %{}: {m}", g.value(o).name)))?;
                    env[o.0 as usize] = Some(Arc::new(t));
                }
            }
            g.outputs
                .iter()
                .map(|v| {
                    env[v.0 as usize]
                        .as_deref()
                        .cloned()
                        .ok_or_else(|| InterpError::Input {
                            name: g.value(*v).name.clone(),
                            msg: "graph output has no value".into(),
                        })
                })
                .collect()
        })();
        self.kv = ctx.kv;
        result
    }
}

/// Checks concrete dims against static dims, binding bare symbols seen for the first
/// time.
fn bind_shape(ctx: &mut EvalCtx, dims: &[Dim], actual: &[usize]) -> Result<(), String> {
    let show = || {
        let d: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
        format!("[{}]", d.join(", "))
    };
    if dims.len() != actual.len() {
        return Err(format!(
            "has shape {actual:?}, expected rank {} {}",
            dims.len(),
            show()
        ));
    }
    for (d, &a) in dims.iter().zip(actual) {
        if let Some(v) = d.eval(&|s| ctx.syms.get(s).copied()) {
            if v != a as i64 {
                return Err(format!(
                    "has shape {actual:?}, expected {} ({d} = {v})",
                    show()
                ));
            }
        } else if let [s] = d.symbols()[..] {
            if *d == Dim::sym(s) {
                ctx.syms.insert(s.to_string(), a as i64);
            }
        }
    }
    Ok(())
}
