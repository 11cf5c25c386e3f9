//! Encoder exports (BERT-style: `input_ids` [+ `attention_mask`, `token_type_ids`] ->
//! `last_hidden_state`, as `torch.onnx.export` and Optimum's `feature-extraction` write
//! them) become embedding models: the graph is rewritten into the encoder contract the
//! HF builder emits (`%ids`, `%mask` -> `%embedding: f32[batch, hidden]`), with the
//! sentence-transformers head (mean or CLS pooling, optional normalization) read from
//! the files beside the model, so `./OUT embed` and `/v1/embeddings` serve it.
//!
//! - `input_ids` becomes `%ids`, `attention_mask` `%mask` (added when the export has
//!   none: the pooling weighs the tokens by it), `token_type_ids` zeros (single
//!   sentences, all an embedding model is given).
//! - An export that already pools (`sentence_embedding` [batch, hidden]) keeps its
//!   own head; otherwise the token vectors (`last_hidden_state`, `token_embeddings` or
//!   the only rank-3 output) are pooled here.

use crate::llm::encoder::{sentence_head, Pooling};
use llmc_ir::{attrs, Attr, DType, Module, Op, TensorType, ValueId};
use std::collections::HashMap;

/// Where an encoder export keeps its inputs and output (graph indices).
#[derive(Clone, Debug, PartialEq)]
pub struct EncoderExport {
    /// `input_ids`.
    pub ids: usize,
    /// `attention_mask`, if any.
    pub mask: Option<usize>,
    /// `token_type_ids`, if any.
    pub types: Option<usize>,
    /// The output read.
    pub output: usize,
    /// Whether that output is already one vector per row (`sentence_embedding`).
    pub pooled: bool,
}

/// Recognises an encoder export by its graph inputs (named as transformers names
/// them, integer `[batch, seq]`) and a float token-vector or sentence-vector output.
pub fn recognise(m: &Module) -> Option<EncoderExport> {
    let g = &m.graph;
    let (mut ids, mut mask, mut types) = (None, None, None);
    for (k, &v) in g.inputs.iter().enumerate() {
        let val = g.value(v);
        if !val.ty.dtype.is_int() || val.ty.shape.rank() != 2 {
            return None;
        }
        let slot = match val.name.as_str() {
            "input_ids" => &mut ids,
            "attention_mask" => &mut mask,
            "token_type_ids" => &mut types,
            _ => return None,
        };
        *slot = Some(k);
    }
    let named = |n: &str| g.outputs.iter().position(|&v| g.value(v).name == n);
    let float_rank = |k: usize, r: usize| {
        let t = g.ty(g.outputs[k]);
        t.dtype == DType::F32 && t.shape.rank() == r
    };
    let (output, pooled) = match named("sentence_embedding").filter(|&k| float_rank(k, 2)) {
        Some(k) => (k, true),
        None => {
            let k = named("last_hidden_state")
                .or_else(|| named("token_embeddings"))
                .or_else(|| (g.outputs.len() == 1).then_some(0))?;
            (k, false)
        }
    };
    if !pooled && !float_rank(output, 3) {
        return None;
    }
    Some(EncoderExport {
        ids: ids?,
        mask,
        types,
        output,
        pooled,
    })
}

/// Rewrites the export into the encoder contract with the given head.
pub fn lower(
    m: &Module,
    io: &EncoderExport,
    pooling: Pooling,
    normalize: bool,
) -> Result<Module, String> {
    let g = &m.graph;
    let mut out = Module::new(&m.name);
    out.info = m.info.clone();
    out.weights = m.weights.clone();
    out.graph.name = g.name.clone();
    let ids_ty = g.ty(g.inputs[io.ids]).clone();
    let contract = TensorType::new(DType::I64, ids_ty.shape.clone());
    let ids = out.graph.add_input("ids", contract.clone());
    let mask = out.graph.add_input("mask", contract);
    let cast = |out: &mut Module, v: ValueId, dt: DType| -> Result<ValueId, String> {
        if out.graph.ty(v).dtype == dt {
            return Ok(v);
        }
        out.add1(Op::Cast, &[v], attrs([("to", Attr::Type(dt))]))
            .map_err(|e| e.to_string())
    };
    let mut map: HashMap<ValueId, ValueId> = HashMap::new();
    map.insert(g.inputs[io.ids], cast(&mut out, ids, ids_ty.dtype)?);
    if let Some(k) = io.mask {
        let dt = g.ty(g.inputs[k]).dtype;
        map.insert(g.inputs[k], cast(&mut out, mask, dt)?);
    }
    if let Some(k) = io.types {
        let t = g.ty(g.inputs[k]).clone();
        let zero = out
            .add1(
                Op::Constant,
                &[],
                attrs([(
                    "value",
                    Attr::Tensor(llmc_ir::Tensor::from_i64(t.dtype, vec![], vec![0])),
                )]),
            )
            .map_err(|e| e.to_string())?;
        let z = out
            .add1(
                Op::Expand,
                &[zero],
                attrs([("shape", Attr::Shape(t.shape.clone()))]),
            )
            .map_err(|e| e.to_string())?;
        map.insert(g.inputs[k], z);
    }
    for n in &g.nodes {
        let mut ins = Vec::with_capacity(n.inputs.len());
        for &v in &n.inputs {
            let nv = match map.get(&v) {
                Some(&x) => x,
                None => {
                    let x = out
                        .graph
                        .weight_value_from(g, v)
                        .ok_or_else(|| format!("{}: operand has no value", g.value(v).name))?;
                    map.insert(v, x);
                    x
                }
            };
            ins.push(nv);
        }
        let outs = out
            .add_node(n.op, &ins, n.attrs.clone())
            .map_err(|e| format!("{} ({}): {e}", g.value(n.outputs[0]).name, n.op))?;
        for (&o, &no) in n.outputs.iter().zip(&outs) {
            out.graph.values[no.0 as usize].name = g.value(o).name.clone();
            map.insert(o, no);
        }
    }
    let x = *map
        .get(&g.outputs[io.output])
        .ok_or("the output is not computed by a node")?;
    let e = if io.pooled {
        x
    } else {
        let maskf = cast(&mut out, mask, DType::F32)?;
        sentence_head(&mut out, x, maskf, pooling, normalize).map_err(|e| e.to_string())?
    };
    out.graph.values[e.0 as usize].name = "embedding".into();
    out.graph.outputs.push(e);
    Ok(out)
}

/// The sentence-transformers head described by the files in `dir` (`modules.json` and
/// the pooling module's `config.json`; mean pooling, unnormalized, without them).
pub fn head_of(dir: &std::path::Path) -> Result<(Pooling, bool), crate::FrontendError> {
    crate::hf::config::sentence_head(dir)
}
