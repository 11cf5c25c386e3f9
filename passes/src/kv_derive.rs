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

use llmc_ir::{attrs, Attr, Module, Op, ValueId};
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
                None => {
                    let x = out
                        .graph
                        .weight_value_from(g, v)
                        .ok_or_else(|| format!("{at}: operand {} has no value", vname(v)))?;
                    map.insert(v, x);
                    x
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use llmc_ir::interp::Interpreter;
    use llmc_ir::Tensor;

    /// Two causal attentions over K/V computed from the current rows only (per-token
    /// ops around them), as -O3 leaves a decoder exported without a cache.
    const FULL: &str = r#"
module @tiny {
  graph @main(%q: f32[1, 2, seq, 3], %k: f32[1, 1, seq, 3], %v: f32[1, 1, seq, 3]) -> (%y: f32[1, 2, seq, 3]) {
    %nk = neg(%k) : f32[1, 1, seq, 3]
    %a = attention(%q, %nk, %v) {causal = true, scale = 0.5} : f32[1, 2, seq, 3]
    %k2 = add(%k, %v) : f32[1, 1, seq, 3]
    %y = flash_attention(%a, %k2, %k) {causal = true, scale = 0.7} : f32[1, 2, seq, 3]
    return %y
  }
}
"#;

    fn rows(n: usize, heads: usize, from: usize, to: usize, k: f32) -> Tensor {
        let mut v = Vec::new();
        for h in 0..heads {
            for s in from..to {
                for d in 0..3 {
                    v.push(((h * n * 3 + s * 3 + d) as f32 * k).sin());
                }
            }
        }
        Tensor::f32(vec![1, heads, to - from, 3], v)
    }

    #[test]
    fn the_cached_step_gives_the_full_sequences_rows() {
        let m = llmc_ir::text::parse(FULL, "tiny").expect("parses");
        let d = derive(&m).expect("derives");
        llmc_ir::verify::verify(&d).expect("valid");
        let appends: Vec<_> = d
            .graph
            .nodes
            .iter()
            .filter(|n| n.op == Op::KvAppend)
            .map(|n| n.attrs.get("layer").cloned())
            .collect();
        assert_eq!(appends, [Some(Attr::Int(0)), Some(Attr::Int(1))]);
        // The full graph on 5 rows; the derived one on 3, then 1, then 1.
        let n = 5;
        let inputs = |a: usize, b: usize| {
            vec![
                rows(n, 2, a, b, 0.31),
                rows(n, 1, a, b, 0.77),
                rows(n, 1, a, b, 1.9),
            ]
        };
        let full = Interpreter::new(&m).run(&inputs(0, n)).expect("full")[0].to_f64();
        let mut it = Interpreter::new(&d);
        let mut got = vec![Vec::new(); 2];
        for (a, b) in [(0, 3), (3, 4), (4, 5)] {
            let y = it.run(&inputs(a, b)).expect("step")[0].to_f64();
            for h in 0..2 {
                got[h].extend_from_slice(&y[h * (b - a) * 3..(h + 1) * (b - a) * 3]);
            }
        }
        let got: Vec<f64> = got.concat();
        assert_eq!(got.len(), full.len());
        for (x, y) in got.iter().zip(&full) {
            assert!((x - y).abs() < 1e-6, "{got:?} vs {full:?}");
        }
    }

    #[test]
    fn masked_or_missing_attention_is_named() {
        let m = llmc_ir::text::parse(
            &FULL.replace("{causal = true, scale = 0.5}", "{scale = 0.5}"),
            "tiny",
        )
        .expect("parses");
        let e = derive(&m).unwrap_err();
        assert!(e.contains("%a (attention): attention is not causal"), "{e}");
        let plain = r#"
module @p {
  graph @main(%x: f32[2]) -> (%y: f32[2]) {
    %y = neg(%x) : f32[2]
    return %y
  }
}
"#;
        let m = llmc_ir::text::parse(plain, "p").expect("parses");
        assert!(derive(&m).unwrap_err().contains("no fused attention"));
    }
}
