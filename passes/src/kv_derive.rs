//! The KV-cached step of a decoder exported without a cache: an ONNX export without
//! `past_key_values` computes every layer's K and V from the current sequence only,
//! and `-O3`'s rules fuse its attention into one `attention`/`flash_attention` op
//! over those K and V (`causal`, no mask operand once the all-ones padding mask has
//! folded away). [`derive`] puts a `kv_append(k, v) {layer = L}` (L counting the
//! attentions in program order) between each attention and its K/V, so the attention
//! reads the whole cache: the graph then has the decoder form the with-past exports
//! and the GGUF/HF builders give, and the serving lowering (`crate::serving`) applies.
//!
//! This is exact because `causal` attention aligns the last query with the last key
//! (query i of s sees the keys up to `past + i`), which is what the full-sequence graph
//! computes for the sequence's last s tokens, and because nothing but the attention
//! reads K or V across positions (every other op is per token, RoPE at `%pos`).

use llmc_ir::{attrs, Attr, Module, Op, ValueDef, ValueId};
use std::collections::HashMap;

/// `m` with a `kv_append` before each attention (see the module doc), or why not:
/// an attention with a mask operand, a non-causal one, or none at all.
pub fn derive(m: &Module) -> Result<Module, String> {
    let g = &m.graph;
    let names = llmc_ir::text::value_names(m);
    let vname = |v: ValueId| {
        names
            .get(v.0 as usize)
            .cloned()
            .unwrap_or_else(|| format!("%{}", v.0))
    };
    if g.nodes.iter().any(|n| n.op == Op::KvAppend) {
        return Err("the graph already has a KV cache (kv_append)".into());
    }
    let mut out = Module::new(&m.name);
    out.info = m.info.clone();
    out.weights = m.weights.clone();
    out.graph.name = g.name.clone();
    let mut map: HashMap<ValueId, ValueId> = HashMap::new();
    for &v in &g.inputs {
        let nv = out.graph.add_input(&g.value(v).name, g.ty(v).clone());
        map.insert(v, nv);
    }
    let mut layers = 0i64;
    for n in &g.nodes {
        let at = vname(n.outputs.first().copied().unwrap_or(ValueId(0)));
        let mut ins = Vec::with_capacity(n.inputs.len());
        for &v in &n.inputs {
            let nv = match map.get(&v) {
                Some(&x) => x,
                None => match g.value(v).def {
                    ValueDef::Weight(w) => {
                        let x = out.graph.add_value(
                            g.value(v).name.clone(),
                            g.ty(v).clone(),
                            ValueDef::Weight(w),
                        );
                        map.insert(v, x);
                        x
                    }
                    _ => return Err(format!("{at}: operand {} has no value", vname(v))),
                },
            };
            ins.push(nv);
        }
        if matches!(n.op, Op::Attention | Op::FlashAttention) {
            if ins.len() > 3 {
                return Err(format!(
                    "{at} ({}): attention with a mask operand; the KV cache can be derived only for causal attention without a mask",
                    n.op
                ));
            }
            if !matches!(n.attrs.get("causal"), Some(Attr::Bool(true))) {
                return Err(format!(
                    "{at} ({}): attention is not causal; the KV cache can be derived only for a causal decoder",
                    n.op
                ));
            }
            let kv = out
                .add_node(
                    Op::KvAppend,
                    &[ins[1], ins[2]],
                    attrs([("layer", Attr::Int(layers))]),
                )
                .map_err(|e| format!("{at}: kv_append of layer {layers}: {e}"))?;
            out.graph.values[kv[0].0 as usize].name = format!("layers.{layers}.k_cache");
            out.graph.values[kv[1].0 as usize].name = format!("layers.{layers}.v_cache");
            ins[1] = kv[0];
            ins[2] = kv[1];
            layers += 1;
        }
        let outs = out
            .add_node(n.op, &ins, n.attrs.clone())
            .map_err(|e| format!("{at} ({}): {e}", n.op))?;
        for (&o, &no) in n.outputs.iter().zip(&outs) {
            out.graph.values[no.0 as usize].name = g.value(o).name.clone();
            map.insert(o, no);
        }
    }
    if layers == 0 {
        return Err(
            "no fused attention (attention/flash_attention) to read a KV cache: build at -O3, whose rules fuse the export's attention"
                .into(),
        );
    }
    out.graph.outputs = g
        .outputs
        .iter()
        .map(|v| {
            map.get(v)
                .copied()
                .ok_or_else(|| format!("output {} was not rebuilt", vname(*v)))
        })
        .collect::<Result<_, _>>()?;
    Ok(out)
}
