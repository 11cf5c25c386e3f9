//! The serving form: lowers a decoder graph that runs one sequence (`%ids`, `%pos:
//! [batch, seq]`, K/V through `kv_append`, last-position logits) into the engine's step
//! function over a flat batch of token rows drawn from many sequences.
//!
//! - `batch` becomes 1: the step's rows are the `seq` axis, so every op outside
//!   attention (linears, norms, RoPE at per-row positions, the MLP) is per token.
//! - Each layer's `kv_append(k, v)` becomes `paged_kv_write(k, v, %kv.L.k_pool,
//!   %kv.L.v_pool, %kv_slots)`, and the attention reading its results becomes
//!   `paged_attention(q, pools, %pos, %kv_row_seq, %kv_block_tables)` (its `scale`,
//!   `window` and `softcap` carried over).
//! - The last-position slice before the final norm becomes a gather of the rows in
//!   `%logit_rows`, so the logits are `[rows, vocab]`: the engine asks for the rows it
//!   samples (and every prompt row when prompt logprobs are wanted).
//!
//! The graph's new inputs are named, so the backend and the runtime find them by name:
//! `kv_slots: i64[seq]`, `kv_row_seq: i32[seq]`, `kv_block_tables: i32[kv_seqs,
//! kv_width]`, `logit_rows: i64[rows]`, and per layer `kv.L.k_pool` / `kv.L.v_pool:
//! DTYPE[kv_blocks, kv_heads, BLOCK, head_dim]`.

use crate::{Changed, PassContext, PassError};
use llmc_ir::{Attr, DType, Dim, Graph, Module, Op, Shape, TensorType, ValueDef, ValueId};
use std::collections::HashMap;

/// Tokens per KV block.
pub const BLOCK_SIZE: i64 = 16;

/// Names of the serving form's inputs.
pub mod names {
    /// Token ids.
    pub const IDS: &str = "ids";
    /// Positions.
    pub const POS: &str = "pos";
    /// Cache slot of each row.
    pub const SLOTS: &str = "kv_slots";
    /// Sequence of each row.
    pub const ROW_SEQ: &str = "kv_row_seq";
    /// Block tables.
    pub const BLOCK_TABLES: &str = "kv_block_tables";
    /// Rows whose logits are returned.
    pub const LOGIT_ROWS: &str = "logit_rows";
    /// Layer `l`'s key pool.
    pub fn k_pool(l: i64) -> String {
        format!("kv.{l}.k_pool")
    }
    /// Layer `l`'s value pool.
    pub fn v_pool(l: i64) -> String {
        format!("kv.{l}.v_pool")
    }
}

/// The pass as the pass manager runs it (f16 pools; the driver may pick another
/// dtype through [`lower`]).
pub fn run(m: &mut Module, _ctx: &PassContext) -> Result<Changed, PassError> {
    let out = lower(m, DType::F16, false).map_err(|msg| PassError::Pass {
        pass: "serving".into(),
        msg,
    })?;
    *m = out;
    Ok(Changed::Yes)
}

/// `batch` replaced by 1.
fn one_batch(d: &Dim) -> Dim {
    let mut out = Dim::c(0);
    for (mono, c) in d.terms() {
        let mut t = Dim::c(c);
        for s in mono {
            if s != "batch" {
                t = t.mul(&Dim::sym(s));
            }
        }
        out = out.add(&t);
    }
    out
}

fn one_batch_shape(s: &Shape) -> Shape {
    Shape(s.0.iter().map(one_batch).collect())
}

fn one_batch_type(t: &TensorType) -> TensorType {
    TensorType::new(t.dtype, one_batch_shape(&t.shape))
}

/// Is this the decoder's last-position slice (`x[:, -1:, :]` on `[1, seq, h]`)?
fn is_last_slice(op: Op, attrs: &llmc_ir::Attrs) -> bool {
    op == Op::Slice
        && matches!(attrs.get("starts"), Some(Attr::Ints(v)) if v[..] == [-1])
        && matches!(attrs.get("axes"), Some(Attr::Ints(v)) if v[..] == [1])
}

/// The serving form of `m` with `kv_dtype` pools, or why it cannot be made. With
/// `k_dim_major` (a float pool for a CPU target) the key pools hold each block's keys
/// transposed, which the CPU's `paged_attention` scores a vector of keys at a time;
/// the GPU kernels read key rows.
pub fn lower(m: &Module, kv_dtype: DType, k_dim_major: bool) -> Result<Module, String> {
    let k_dim_major = k_dim_major && !kv_dtype.is_quantized();
    let layout = || llmc_ir::attrs([("k_dim_major", Attr::Int(1))]);
    let g = &m.graph;
    let names = llmc_ir::text::value_names(m);
    let vname = |v: ValueId| {
        names
            .get(v.0 as usize)
            .cloned()
            .unwrap_or_else(|| format!("%{}", v.0))
    };
    // Layers in order of their kv_append nodes, with the pools' kv heads and dims.
    let mut layers: Vec<(i64, Dim, Dim, Dim)> = Vec::new();
    for n in &g.nodes {
        if n.op == Op::KvAppend {
            let l = match n.attrs.get("layer") {
                Some(Attr::Int(l)) => *l,
                _ => return Err("a kv_append node has no `layer` attribute".into()),
            };
            let (k, v) = (g.ty(n.inputs[0]), g.ty(n.inputs[1]));
            let (Some(kvh), Some(dk), Some(dv)) =
                (k.shape.0.get(1), k.shape.0.get(3), v.shape.0.get(3))
            else {
                return Err(format!(
                    "kv_append of layer {l}: k/v must be [b, kvh, seq, d]"
                ));
            };
            if layers.iter().any(|x| x.0 == l) {
                return Err(format!("layer {l} appends to its KV cache twice"));
            }
            layers.push((l, kvh.clone(), dk.clone(), dv.clone()));
        }
    }
    if layers.is_empty() {
        return Err(
            "the graph has no kv_append: only decoders with a KV cache have a serving form".into(),
        );
    }
    let mut out = Module::new(&m.name);
    out.info = m.info.clone();
    out.weights = m.weights.clone();
    out.graph.name = g.name.clone();
    let og = &mut out.graph;
    let mut map: HashMap<ValueId, ValueId> = HashMap::new();
    let mut pos_new = None;
    for &v in &g.inputs {
        let nv = og.add_input(&g.value(v).name, one_batch_type(g.ty(v)));
        if g.value(v).name == names::POS {
            pos_new = Some(nv);
        }
        map.insert(v, nv);
    }
    let pos = pos_new.ok_or("the decoder graph has no input %pos")?;
    let seq = Dim::sym("seq");
    let slots = og.add_input(
        names::SLOTS,
        TensorType::new(DType::I64, Shape(vec![seq.clone()])),
    );
    let row_seq = og.add_input(
        names::ROW_SEQ,
        TensorType::new(DType::I32, Shape(vec![seq])),
    );
    let tables = og.add_input(
        names::BLOCK_TABLES,
        TensorType::new(
            DType::I32,
            Shape(vec![Dim::sym("kv_seqs"), Dim::sym("kv_width")]),
        ),
    );
    let rows = og.add_input(
        names::LOGIT_ROWS,
        TensorType::new(DType::I64, Shape(vec![Dim::sym("rows")])),
    );
    let mut pools: HashMap<i64, (ValueId, ValueId)> = HashMap::new();
    for (l, kvh, dk, dv) in &layers {
        if kv_dtype.is_quantized() {
            for (what, d) in [("key", dk), ("value", dv)] {
                let bl = kv_dtype.block_len() as i64;
                if d.as_const().is_none_or(|d| d % bl != 0) {
                    return Err(format!(
                        "a {kv_dtype} KV cache needs head dims that are multiples of {bl}; \
                         layer {l}'s {what} head dim is {d}"
                    ));
                }
            }
        }
        let shape = |d: &Dim| {
            Shape(vec![
                Dim::sym("kv_blocks"),
                kvh.clone(),
                Dim::c(BLOCK_SIZE),
                d.clone(),
            ])
        };
        let kp = og.add_input(&names::k_pool(*l), TensorType::new(kv_dtype, shape(dk)));
        let vp = og.add_input(&names::v_pool(*l), TensorType::new(kv_dtype, shape(dv)));
        pools.insert(*l, (kp, vp));
    }
    // Values that hold a written pool (layer), and values that are per logits row.
    let mut pool_vals: HashMap<ValueId, i64> = HashMap::new();
    let mut row_vals: HashMap<ValueId, ()> = HashMap::new();
    let mut found_slice = false;
    let weight_val = |og: &mut Graph, v: ValueId| -> Option<ValueId> {
        match g.value(v).def {
            ValueDef::Weight(w) => Some(og.add_value(
                g.value(v).name.clone(),
                g.ty(v).clone(),
                ValueDef::Weight(w),
            )),
            _ => None,
        }
    };
    for n in &g.nodes {
        let at = vname(n.outputs.first().copied().unwrap_or(ValueId(0)));
        let mut ins = Vec::with_capacity(n.inputs.len());
        for &v in &n.inputs {
            let nv = match map.get(&v) {
                Some(&x) => x,
                None => {
                    let x = weight_val(&mut out.graph, v)
                        .ok_or_else(|| format!("{at}: operand {} has no value", vname(v)))?;
                    map.insert(v, x);
                    x
                }
            };
            ins.push(nv);
        }
        let is_attn = matches!(n.op, Op::Attention | Op::FlashAttention);
        for (k, &v) in ins.iter().enumerate() {
            if pool_vals.contains_key(&v) && !(is_attn && (k == 1 || k == 2)) {
                return Err(format!(
                    "{at} ({}) reads the KV cache; the serving form supports only attention reading it",
                    n.op
                ));
            }
        }
        let mut attrs = n.attrs.clone();
        for a in attrs.values_mut() {
            if let Attr::Shape(s) = a {
                *s = one_batch_shape(s);
            }
        }
        let (op, ins, attrs) = match n.op {
            Op::KvAppend => {
                let l = match n.attrs.get("layer") {
                    Some(Attr::Int(l)) => *l,
                    _ => return Err(format!("{at}: kv_append has no `layer`")),
                };
                let (kp, vp) = pools[&l];
                (
                    Op::PagedKvWrite,
                    vec![ins[0], ins[1], kp, vp, slots],
                    if k_dim_major {
                        layout()
                    } else {
                        llmc_ir::Attrs::new()
                    },
                )
            }
            _ if is_attn && pool_vals.contains_key(&ins[1]) => {
                if ins.len() > 3 {
                    return Err(format!(
                        "{at}: attention over the KV cache with a mask has no serving form yet"
                    ));
                }
                if !matches!(n.attrs.get("causal"), Some(Attr::Bool(true))) {
                    return Err(format!("{at}: attention over the KV cache must be causal"));
                }
                let mut a = if k_dim_major {
                    layout()
                } else {
                    llmc_ir::Attrs::new()
                };
                for key in ["scale", "window", "softcap"] {
                    if let Some(x) = n.attrs.get(key) {
                        a.insert(key.into(), x.clone());
                    }
                }
                (
                    Op::PagedAttention,
                    vec![ins[0], ins[1], ins[2], pos, row_seq, tables],
                    a,
                )
            }
            Op::Slice if is_last_slice(n.op, &n.attrs) && !found_slice => {
                found_slice = true;
                let a = llmc_ir::attrs([("axis", Attr::Int(1))]);
                (Op::Gather, vec![ins[0], rows], a)
            }
            Op::Reshape if row_vals.contains_key(&ins[0]) => {
                // [1, rows, h] -> [rows, h] where the decoder reshaped [1, 1, h] -> [1, h].
                let Some(Attr::Shape(s)) = attrs.get("shape") else {
                    return Err(format!("{at}: reshape without a shape"));
                };
                let last = s.0.last().cloned().unwrap_or(Dim::c(1));
                let a =
                    llmc_ir::attrs([("shape", Attr::Shape(Shape(vec![Dim::sym("rows"), last])))]);
                (Op::Reshape, ins, a)
            }
            op => (op, ins, attrs),
        };
        let outs = out
            .add_node(op, &ins, attrs)
            .map_err(|e| format!("{at}: {e}"))?;
        for (&o, &no) in n.outputs.iter().zip(&outs) {
            out.graph.values[no.0 as usize].name = g.value(o).name.clone();
            map.insert(o, no);
        }
        if n.op == Op::KvAppend {
            let l = match n.attrs.get("layer") {
                Some(Attr::Int(l)) => *l,
                _ => 0,
            };
            for &no in &outs {
                pool_vals.insert(no, l);
            }
        }
        if op == Op::Gather && found_slice && row_vals.is_empty() {
            row_vals.insert(outs[0], ());
        }
    }
    if !found_slice {
        return Err(
            "the decoder graph has no last-position slice (x[:, -1:]) before its head".into(),
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

    #[test]
    fn batch_becomes_one() {
        let d = Dim::sym("batch").mul(&Dim::sym("seq")).mul(&Dim::c(576));
        assert_eq!(one_batch(&d), Dim::sym("seq").mul(&Dim::c(576)));
        assert_eq!(one_batch(&Dim::sym("batch")), Dim::c(1));
        assert_eq!(one_batch(&Dim::c(7)), Dim::c(7));
    }
}
