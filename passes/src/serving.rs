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
//! - The transposes around attention go: a decoder's `[b, s, h, d]` -> `[b, h, s, d]`
//!   transposes of q, k and v (a RoPE between them runs on the token-major rows
//!   instead, as `[s, h, 1, d]` with positions `[s, 1]`), and the transpose of the
//!   attention's result back. Both paged ops then take `token_major = 1`: they read
//!   and write the rows the linears produce and read, `[1, s, h, d]`. Four kernels per
//!   layer fewer, the same numbers.
//!
//! The graph's new inputs are named, so the backend and the runtime find them by name:
//! `kv_slots: i64[seq]`, `kv_row_seq: i32[seq]`, `kv_block_tables: i32[kv_seqs,
//! kv_width]`, `logit_rows: i64[rows]`, and per layer `kv.L.k_pool` / `kv.L.v_pool:
//! DTYPE[kv_blocks, kv_heads, BLOCK, head_dim]`.

use crate::{Changed, PassContext, PassError};
use llmc_ir::{Attr, DType, Dim, Graph, Module, Node, Op, Shape, TensorType, ValueDef, ValueId};
use std::collections::{HashMap, HashSet};

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
    /// The logits output.
    pub const LOGITS: &str = "logits";
    /// The greedy picks output ([`super::add_picks`]).
    pub const PICKS: &str = "picks";
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

/// The nodes of a decoder graph (by index) that the token-major form changes.
#[derive(Default)]
struct TokenMajor {
    /// `[0, 2, 1, 3]` transposes that go: their result stands for their operand.
    dropped: HashSet<usize>,
    /// RoPEs whose operand was such a transpose: they run on `[s, h, 1, d]` views.
    ropes: HashSet<usize>,
    /// `kv_append` and attention nodes whose paged op takes `token_major = 1`.
    ops: HashSet<usize>,
}

/// Finds the transposes around attention that the serving form can drop: a
/// `kv_append` whose k (maybe through a RoPE) and v are `[0, 2, 1, 3]` transposes read
/// only there, and an attention over the cache whose q is one and whose result is
/// read only by such transposes.
fn token_major_plan(g: &Graph) -> TokenMajor {
    let uses = crate::rewrite::use_counts(g);
    let read_once = |v: ValueId| uses.get(v.0 as usize) == Some(&1);
    let producer = |v: ValueId| match g.value(v).def {
        ValueDef::Node(n, 0) => Some(n.0 as usize),
        _ => None,
    };
    let is_swap = |n: usize| {
        let node = &g.nodes[n];
        node.op == Op::Transpose
            && matches!(node.attrs.get("perm"), Some(Attr::Ints(p)) if p[..] == [0, 2, 1, 3])
            && g.ty(node.inputs[0]).shape.rank() == 4
    };
    // An operand `v` read in heads-major form: the transpose it comes from, and the
    // RoPE between them if any.
    let operand = |v: ValueId| -> Option<(usize, Option<usize>)> {
        if !read_once(v) {
            return None;
        }
        let n = producer(v)?;
        if is_swap(n) {
            return Some((n, None));
        }
        let node = &g.nodes[n];
        if node.op != Op::Rope || g.ty(node.inputs[1]).shape.rank() != 2 {
            return None;
        }
        let t = node.inputs[0];
        let tn = producer(t)?;
        (read_once(t) && is_swap(tn)).then_some((tn, Some(n)))
    };
    let mut readers: HashMap<ValueId, Vec<usize>> = HashMap::new();
    for (i, n) in g.nodes.iter().enumerate() {
        for &v in &n.inputs {
            readers.entry(v).or_default().push(i);
        }
    }
    let mut plan = TokenMajor::default();
    let take = |plan: &mut TokenMajor, i: usize, parts: &[(usize, Option<usize>)]| {
        plan.ops.insert(i);
        for &(t, r) in parts {
            plan.dropped.insert(t);
            if let Some(r) = r {
                plan.ropes.insert(r);
            }
        }
    };
    for (i, n) in g.nodes.iter().enumerate() {
        match n.op {
            Op::KvAppend => {
                if let (Some(k), Some(v)) = (operand(n.inputs[0]), operand(n.inputs[1])) {
                    take(&mut plan, i, &[k, v]);
                }
            }
            Op::Attention | Op::FlashAttention
                if n.inputs.len() == 3
                    && producer(n.inputs[1]).is_some_and(|p| g.nodes[p].op == Op::KvAppend) =>
            {
                let out = n.outputs[0];
                let rs = readers.get(&out).map_or(&[][..], |r| &r[..]);
                let all_swaps = !rs.is_empty()
                    && rs.len() == uses[out.0 as usize]
                    && rs.iter().all(|&r| is_swap(r));
                if let (Some(q), true) = (operand(n.inputs[0]), all_swaps) {
                    take(&mut plan, i, &[q]);
                    plan.dropped.extend(rs.iter().copied());
                }
            }
            _ => {}
        }
    }
    plan
}

/// The serving form of `m` with `kv_dtype` pools, or why it cannot be made. With
/// `k_dim_major` (a float pool for a CPU target) the key pools hold each block's keys
/// transposed, which the CPU's `paged_attention` scores a vector of keys at a time;
/// the GPU kernels read key rows.
pub fn lower(m: &Module, kv_dtype: DType, k_dim_major: bool) -> Result<Module, String> {
    lower_as(m, kv_dtype, k_dim_major, true)
}

/// [`lower`], with the transposes around attention kept when `token_major` is false
/// (the form before `token_major` existed, for the tests that compare the two).
fn lower_as(
    m: &Module,
    kv_dtype: DType,
    k_dim_major: bool,
    token_major: bool,
) -> Result<Module, String> {
    let k_dim_major = k_dim_major && !kv_dtype.is_quantized();
    let layout = |tm: bool| {
        let mut a = llmc_ir::Attrs::new();
        if k_dim_major {
            a.insert("k_dim_major".into(), Attr::Int(1));
        }
        if tm {
            a.insert("token_major".into(), Attr::Int(1));
        }
        a
    };
    let g = &m.graph;
    let plan = if token_major {
        token_major_plan(g)
    } else {
        TokenMajor::default()
    };
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
    // Positions `[1, s]` as `[s, 1]`, for the token-major RoPEs (one view each).
    let mut pos_col: HashMap<ValueId, ValueId> = HashMap::new();
    for (ni, n) in g.nodes.iter().enumerate() {
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
        if plan.dropped.contains(&ni) {
            // A transpose the paged ops no longer need: its result is its operand,
            // token-major.
            map.insert(n.outputs[0], ins[0]);
            continue;
        }
        if plan.ropes.contains(&ni) {
            // RoPE of token-major rows `[1, s, h, d]` as `[s, h, 1, d]` at positions
            // `[s, 1]`: each row's heads at its own position, as before.
            let og = &mut out;
            let x = og.graph.ty(ins[0]).clone();
            let [_, s, h, d] = &x.shape.0[..] else {
                return Err(format!("{at}: rope of {} is not rank 4", x.shape));
            };
            let shape = |dims: Vec<Dim>| llmc_ir::attrs([("shape", Attr::Shape(Shape(dims)))]);
            let view = og
                .add1(
                    Op::Reshape,
                    &[ins[0]],
                    shape(vec![s.clone(), h.clone(), Dim::c(1), d.clone()]),
                )
                .map_err(|e| format!("{at}: {e}"))?;
            let p = match pos_col.get(&ins[1]) {
                Some(&p) => p,
                None => {
                    let p = og
                        .add1(Op::Reshape, &[ins[1]], shape(vec![s.clone(), Dim::c(1)]))
                        .map_err(|e| format!("{at}: {e}"))?;
                    pos_col.insert(ins[1], p);
                    p
                }
            };
            let r = og
                .add1(Op::Rope, &[view, p], n.attrs.clone())
                .map_err(|e| format!("{at}: {e}"))?;
            let back = og
                .add1(Op::Reshape, &[r], shape(x.shape.0.clone()))
                .map_err(|e| format!("{at}: {e}"))?;
            og.graph.values[back.0 as usize].name = g.value(n.outputs[0]).name.clone();
            map.insert(n.outputs[0], back);
            continue;
        }
        let tm = plan.ops.contains(&ni);
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
                    layout(tm),
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
                let mut a = layout(tm);
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
    if token_major {
        fuse_qkv_writes(&mut out);
    }
    Ok(out)
}

/// Adds the greedy picks to a serving form: `%picks: i64[rows] = argmax(%logits, axis
/// -1)` (a pick per logits row, whatever leading dims of 1 the logits keep), an output after the logits (the output named `logits`, else the first). A step on a GPU then copies back a token id
/// per row for the rows the engine samples greedily instead of their `vocab` logits
/// (docs/cuda.md); `argmax` takes the first of equal logits, as the engine's own
/// greedy choice does.
pub fn add_picks(m: &mut Module) -> Result<(), String> {
    let g = &m.graph;
    if g.outputs.iter().any(|&v| g.value(v).name == names::PICKS) {
        return Ok(());
    }
    let logits = g
        .outputs
        .iter()
        .copied()
        .find(|&v| g.value(v).name == names::LOGITS)
        .or(g.outputs.first().copied())
        .ok_or("the serving form has no output")?;
    if g.ty(logits).shape.rank() == 0 {
        return Err(format!(
            "the serving form's %logits are {}, expected [.., rows, vocab]",
            g.ty(logits)
        ));
    }
    let outs = m
        .add_node(
            Op::ArgMax,
            &[logits],
            llmc_ir::attrs([("axis", Attr::Int(-1)), ("keepdims", Attr::Bool(false))]),
        )
        .map_err(|e| format!("the greedy picks of %logits: {e}"))?;
    m.graph.values[outs[0].0 as usize].name = names::PICKS.to_string();
    m.graph.outputs.push(outs[0]);
    Ok(())
}

/// One layer's fusable QKV step: the `paged_kv_write` node's index, the fused node,
/// the nodes it replaces, and the query rows' value (now the fused node's result 2).
struct QkvFusion {
    at: usize,
    node: Node,
    dead: Vec<usize>,
    q: ValueId,
}

/// Finds the layer of `paged_kv_write` node `wi` whose keys and values come from one
/// `split` of a merged projection `[1, s, (h + 2 kvh)·d]` (through reshapes, the keys
/// through a RoPE of `[s, kvh, 1, d]` rows) and whose queries, the split's first part,
/// go through the same RoPE (same attributes and positions) to rows `[1, s, h, d]`
/// read only after the write. Every value in between is read once.
fn qkv_fusion(g: &Graph, wi: usize, readers: &HashMap<ValueId, Vec<usize>>) -> Option<QkvFusion> {
    let uses = |v: ValueId| {
        readers.get(&v).map_or(0, |r| r.len()) + g.outputs.iter().filter(|&&o| o == v).count()
    };
    let once = |v: ValueId| uses(v) == 1;
    let producer = |v: ValueId| match g.value(v).def {
        ValueDef::Node(n, i) => Some((n.0 as usize, i)),
        _ => None,
    };
    let is = |n: usize, op: Op| g.nodes[n].op == op;
    // Back through reshapes read once, noting them.
    let back = |mut v: ValueId, dead: &mut Vec<usize>| {
        while let Some((n, 0)) = producer(v) {
            if !is(n, Op::Reshape) || !once(v) {
                break;
            }
            dead.push(n);
            v = g.nodes[n].inputs[0];
        }
        v
    };
    // Forward through reshapes that are a value's only reader, noting them.
    let fwd = |mut v: ValueId, dead: &mut Vec<usize>| {
        while once(v) {
            match readers.get(&v).map(|r| &r[..]) {
                Some(&[n]) if is(n, Op::Reshape) => {
                    dead.push(n);
                    v = g.nodes[n].outputs[0];
                }
                _ => break,
            }
        }
        v
    };
    let w = &g.nodes[wi];
    let [k_rows, v_rows, kp, vp, slots] = w.inputs[..] else {
        return None;
    };
    if w.attrs.get("token_major") != Some(&Attr::Int(1)) || !once(k_rows) || !once(v_rows) {
        return None;
    }
    let mut dead = Vec::new();
    let rope_k = match producer(back(k_rows, &mut dead)) {
        Some((n, 0)) if is(n, Op::Rope) && once(g.nodes[n].outputs[0]) => n,
        _ => return None,
    };
    dead.push(rope_k);
    let rk = &g.nodes[rope_k];
    let ks = back(rk.inputs[0], &mut dead);
    let vs = back(v_rows, &mut dead);
    let si = match (producer(ks), producer(vs)) {
        (Some((a, 1)), Some((b, 2))) if a == b && is(a, Op::Split) && once(ks) && once(vs) => a,
        _ => return None,
    };
    dead.push(si);
    let split = &g.nodes[si];
    let qkv = split.inputs[0];
    let q_in = fwd(split.outputs[0], &mut dead);
    let rope_q = match readers.get(&q_in).map(|r| &r[..]) {
        Some(&[n]) if once(q_in) && is(n, Op::Rope) && g.nodes[n].inputs[0] == q_in => n,
        _ => return None,
    };
    let rq = &g.nodes[rope_q];
    if rq.attrs != rk.attrs || rq.inputs[1] != rk.inputs[1] {
        return None;
    }
    dead.push(rope_q);
    let q = fwd(rq.outputs[0], &mut dead);
    // The positions `[1, s]` the ropes' `[s, 1]` view is of.
    let mut pos = rk.inputs[1];
    while let Some((n, 0)) = producer(pos) {
        if !is(n, Op::Reshape) {
            break;
        }
        pos = g.nodes[n].inputs[0];
    }
    // Shapes: qkv [1, s, W], the split on its last axis into h, kvh and kvh heads of
    // d, each rope's rows [s, heads, 1, d], the queries [1, s, h, d].
    let dims = |v: ValueId| g.ty(v).shape.0.clone();
    let (kd, qd) = (dims(k_rows), dims(q));
    let ([_, s, kvh, d], [_, qs, hq, qdd]) = (&kd[..], &qd[..]) else {
        return None;
    };
    let (kvh, d, hq) = (kvh.as_const()?, d.as_const()?, hq.as_const()?);
    let row_view = |v: ValueId, h: i64| {
        matches!(&dims(v)[..], [rs, rh, one, rd] if rs == s && rh.as_const() == Some(h)
            && one.as_const() == Some(1) && rd.as_const() == Some(d))
    };
    let sizes = [hq * d, kvh * d, kvh * d];
    let axis_ok = match split.attrs.get("axis") {
        Some(Attr::Int(a)) => *a == 2 || *a == -1,
        _ => false,
    };
    if qs != s
        || qdd.as_const() != Some(d)
        || !row_view(rk.inputs[0], kvh)
        || !row_view(rq.inputs[0], hq)
        || !axis_ok
        || split.attrs.get("sizes") != Some(&Attr::Ints(sizes.to_vec()))
        || dims(pos).len() != 2
    {
        return None;
    }
    // The queries are read after the write only (the fused node takes its place).
    if readers.get(&q).is_some_and(|r| r.iter().any(|&n| n <= wi)) || g.outputs.contains(&q) {
        return None;
    }
    let mut attrs = rk.attrs.clone();
    attrs.insert("heads".into(), Attr::Int(hq));
    if let Some(dm) = w.attrs.get("k_dim_major") {
        attrs.insert("k_dim_major".into(), dm.clone());
    }
    let inputs = vec![qkv, kp, vp, slots, pos];
    let tys: Vec<&TensorType> = inputs.iter().map(|&v| g.ty(v)).collect();
    let want = [g.ty(w.outputs[0]), g.ty(w.outputs[1]), g.ty(q)];
    match Op::PagedQkvWrite.infer(&tys, &attrs) {
        Ok(t) if t.iter().eq(want) => {}
        _ => return None,
    }
    let mut outputs = w.outputs.clone();
    outputs.push(q);
    Some(QkvFusion {
        at: wi,
        node: Node {
            op: Op::PagedQkvWrite,
            inputs,
            outputs,
            attrs,
        },
        dead,
        q,
    })
}

/// Fuses each layer's `split` of its merged QKV projection, both RoPEs and its
/// `paged_kv_write` (token-major rows) into one `paged_qkv_write`: three
/// kernels a layer fewer, each element computed as before. Returns how many layers
/// fused.
fn fuse_qkv_writes(m: &mut Module) -> usize {
    let g = &m.graph;
    let mut readers: HashMap<ValueId, Vec<usize>> = HashMap::new();
    for (i, n) in g.nodes.iter().enumerate() {
        for &v in &n.inputs {
            readers.entry(v).or_default().push(i);
        }
    }
    let found: Vec<QkvFusion> = (0..g.nodes.len())
        .filter(|&i| g.nodes[i].op == Op::PagedKvWrite)
        .filter_map(|i| qkv_fusion(g, i, &readers))
        .collect();
    if found.is_empty() {
        return 0;
    }
    let g = &mut m.graph;
    let mut keep = vec![true; g.nodes.len()];
    for f in &found {
        for &d in &f.dead {
            keep[d] = false;
        }
        g.values[f.q.0 as usize].def = ValueDef::Node(llmc_ir::NodeId(f.at as u32), 2);
    }
    let n = found.len();
    for f in found {
        g.nodes[f.at] = f.node;
    }
    crate::rewrite::compact(g, &keep, &HashMap::new());
    // The positions' [s, 1] view the ropes shared is read by nothing now.
    let _ = crate::dce::run(m, &PassContext::default());
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmc_ir::Tensor;

    #[test]
    fn batch_becomes_one() {
        let d = Dim::sym("batch").mul(&Dim::sym("seq")).mul(&Dim::c(576));
        assert_eq!(one_batch(&d), Dim::sym("seq").mul(&Dim::c(576)));
        assert_eq!(one_batch(&Dim::sym("batch")), Dim::c(1));
        assert_eq!(one_batch(&Dim::c(7)), Dim::c(7));
    }

    /// One decoder layer's attention as the importers write it: q, k, v transposed
    /// to heads-major, RoPE on q and k, the cache, attention, the result transposed
    /// back, then the last-position slice.
    const LAYER: &str = r#"
module @t {
  graph @main(%xq: f32[batch, seq, 16], %xk: f32[batch, seq, 8], %xv: f32[batch, seq, 8], %pos: i64[batch, seq]) -> (%y: f32[batch, 1, 16]) {
    %q4 = reshape(%xq) {shape = [batch, seq, 2, 8]} : f32[batch, seq, 2, 8]
    %q = transpose(%q4) {perm = [0, 2, 1, 3]} : f32[batch, 2, seq, 8]
    %qr = rope(%q, %pos) {style = "neox", theta = 10000.0} : f32[batch, 2, seq, 8]
    %k4 = reshape(%xk) {shape = [batch, seq, 1, 8]} : f32[batch, seq, 1, 8]
    %k = transpose(%k4) {perm = [0, 2, 1, 3]} : f32[batch, 1, seq, 8]
    %kr = rope(%k, %pos) {style = "neox", theta = 10000.0} : f32[batch, 1, seq, 8]
    %v4 = reshape(%xv) {shape = [batch, seq, 1, 8]} : f32[batch, seq, 1, 8]
    %v = transpose(%v4) {perm = [0, 2, 1, 3]} : f32[batch, 1, seq, 8]
    %kc, %vc = kv_append(%kr, %v) {layer = 0} : f32[batch, 1, past + seq, 8], f32[batch, 1, past + seq, 8]
    %a = flash_attention(%qr, %kc, %vc) {causal = true, scale = 0.35} : f32[batch, 2, seq, 8]
    %at = transpose(%a) {perm = [0, 2, 1, 3]} : f32[batch, seq, 2, 8]
    %am = reshape(%at) {shape = [batch, seq, 16]} : f32[batch, seq, 16]
    %y = slice(%am) {starts = [-1], ends = [9223372036854775807], axes = [1]} : f32[batch, 1, 16]
    return %y
  }
}
"#;

    /// The token-major form drops the four transposes, runs the RoPEs on `[s, h, 1,
    /// d]` views and gives, for a step of two sequences' rows, the pools and the
    /// logits rows the heads-major form gives, bit for bit.
    #[test]
    fn token_major_drops_the_transposes_and_computes_the_same() {
        let m = llmc_ir::text::parse(LAYER, "layer.llmc").unwrap();
        let tm = lower_as(&m, DType::F32, true, true).unwrap();
        let hm = lower_as(&m, DType::F32, true, false).unwrap();
        let ops = |m: &Module, op: Op| m.graph.nodes.iter().filter(|n| n.op == op).count();
        assert_eq!(ops(&hm, Op::Transpose), 4);
        assert_eq!(ops(&tm, Op::Transpose), 0);
        for n in &tm.graph.nodes {
            if matches!(n.op, Op::PagedKvWrite | Op::PagedAttention) {
                assert_eq!(n.attrs.get("token_major"), Some(&Attr::Int(1)), "{}", n.op);
            }
        }
        // Rows: sequence 0 at positions 3..8 (blocks 2, 0), sequence 1 at 0..2 (block 1).
        let rows = 7usize;
        let val = |i: usize, salt: usize| (((i * 31 + salt * 17) % 53) as f64 - 26.0) / 13.0;
        let f = |shape: Vec<usize>, salt: usize| {
            let n: usize = shape.iter().product();
            Tensor::from_f64(DType::F32, shape, (0..n).map(|i| val(i, salt)).collect())
        };
        let pos: Vec<i64> = vec![3, 4, 5, 6, 7, 0, 1];
        let tables: Vec<i64> = vec![2, 0, 1, 3];
        let slots: Vec<i64> = pos
            .iter()
            .zip([0, 0, 0, 0, 0, 1, 1])
            .map(|(&p, sq)| tables[sq * 2 + p as usize / 16] * 16 + p % 16)
            .collect();
        let inputs = vec![
            f(vec![1, rows, 16], 1),
            f(vec![1, rows, 8], 2),
            f(vec![1, rows, 8], 3),
            Tensor::from_i64(DType::I64, vec![1, rows], pos),
            Tensor::from_i64(DType::I64, vec![rows], slots),
            Tensor::from_i64(DType::I32, vec![rows], vec![0, 0, 0, 0, 0, 1, 1]),
            Tensor::from_i64(DType::I32, vec![2, 2], tables),
            Tensor::from_i64(DType::I64, vec![2], vec![4, 6]),
            // Pools with cached keys and values already in them.
            f(vec![4, 1, 16, 8], 4),
            f(vec![4, 1, 16, 8], 5),
        ];
        assert_same_results(&tm, &hm, &inputs);
    }

    /// The greedy picks: an `argmax` output after the logits, named `picks`, equal to
    /// the first maximum of each logits row (ties included); added once.
    #[test]
    fn picks_are_each_logits_rows_first_maximum() {
        let m = llmc_ir::text::parse(LAYER, "layer.llmc").unwrap();
        let mut sm = lower_as(&m, DType::F32, true, true).unwrap();
        add_picks(&mut sm).unwrap();
        add_picks(&mut sm).unwrap();
        let g = &sm.graph;
        assert_eq!(g.outputs.len(), 2);
        assert_eq!(g.value(g.outputs[1]).name, names::PICKS);
        assert_eq!(g.ty(g.outputs[1]).dtype, DType::I64);
        let rows = 3usize;
        // Values in steps of 1/13 over a small range: the rows have ties.
        let val = |i: usize, salt: usize| (((i * 7 + salt * 5) % 9) as f64 - 4.0) / 13.0;
        let f = |shape: Vec<usize>, salt: usize| {
            let n: usize = shape.iter().product();
            Tensor::from_f64(DType::F32, shape, (0..n).map(|i| val(i, salt)).collect())
        };
        let inputs = vec![
            f(vec![1, rows, 16], 1),
            f(vec![1, rows, 8], 2),
            f(vec![1, rows, 8], 3),
            Tensor::from_i64(DType::I64, vec![1, rows], vec![0, 1, 2]),
            Tensor::from_i64(DType::I64, vec![rows], vec![0, 1, 2]),
            Tensor::from_i64(DType::I32, vec![rows], vec![0, 0, 0]),
            Tensor::from_i64(DType::I32, vec![1, 1], vec![0]),
            Tensor::from_i64(DType::I64, vec![3], vec![0, 1, 2]),
            f(vec![1, 1, 16, 8], 4),
            f(vec![1, 1, 16, 8], 5),
        ];
        let out = llmc_ir::interp::Interpreter::new(&sm).run(&inputs).unwrap();
        let (logits, picks) = (out[0].to_f64(), out[1].to_f64());
        assert_eq!(picks.len(), rows);
        let mut ties = 0;
        for (r, row) in logits.chunks(16).enumerate() {
            let best = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let first = row.iter().position(|&x| x == best).unwrap();
            ties += row.iter().filter(|&&x| x == best).count() - 1;
            assert_eq!(picks[r], first as f64, "row {r}: {row:?}");
        }
        assert!(ties > 0, "no row has a tie: {logits:?}");
    }

    /// Runs both forms on `inputs` in the interpreter: the logits rows and the written
    /// pools must agree bit for bit.
    fn assert_same_results(a: &Module, b: &Module, inputs: &[Tensor]) {
        let run = |m: &Module| llmc_ir::interp::Interpreter::new(m).run(inputs).unwrap();
        let (a, b) = (run(a), run(b));
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.shape, y.shape);
            assert_eq!(x.to_f64(), y.to_f64());
        }
    }

    /// [`LAYER`] with q, k and v split from one merged projection, as `-O3`'s merge
    /// leaves a decoder.
    const LAYER_QKV: &str = r#"
module @t {
  graph @main(%x: f32[batch, seq, 256], %pos: i64[batch, seq]) -> (%y: f32[batch, 1, 128]) {
    %xq, %xk, %xv = split(%x) {axis = 2, sizes = [128, 64, 64]} : f32[batch, seq, 128], f32[batch, seq, 64], f32[batch, seq, 64]
    %q4 = reshape(%xq) {shape = [batch, seq, 2, 64]} : f32[batch, seq, 2, 64]
    %q = transpose(%q4) {perm = [0, 2, 1, 3]} : f32[batch, 2, seq, 64]
    %qr = rope(%q, %pos) {style = "interleaved", theta = 10000.0, dims = 48} : f32[batch, 2, seq, 64]
    %k4 = reshape(%xk) {shape = [batch, seq, 1, 64]} : f32[batch, seq, 1, 64]
    %k = transpose(%k4) {perm = [0, 2, 1, 3]} : f32[batch, 1, seq, 64]
    %kr = rope(%k, %pos) {style = "interleaved", theta = 10000.0, dims = 48} : f32[batch, 1, seq, 64]
    %v4 = reshape(%xv) {shape = [batch, seq, 1, 64]} : f32[batch, seq, 1, 64]
    %v = transpose(%v4) {perm = [0, 2, 1, 3]} : f32[batch, 1, seq, 64]
    %kc, %vc = kv_append(%kr, %v) {layer = 0} : f32[batch, 1, past + seq, 64], f32[batch, 1, past + seq, 64]
    %a = flash_attention(%qr, %kc, %vc) {causal = true, scale = 0.125} : f32[batch, 2, seq, 64]
    %at = transpose(%a) {perm = [0, 2, 1, 3]} : f32[batch, seq, 2, 64]
    %am = reshape(%at) {shape = [batch, seq, 128]} : f32[batch, seq, 128]
    %y = slice(%am) {starts = [-1], ends = [9223372036854775807], axes = [1]} : f32[batch, 1, 128]
    return %y
  }
}
"#;

    /// The token-major form of a merged projection's layer takes its split, both
    /// RoPEs and the KV write as one `paged_qkv_write` (f32, f16 and q8_kv pools, keys
    /// transposed or not) and computes what the unfused heads-major form computes.
    #[test]
    fn the_qkv_split_ropes_and_write_fuse_and_compute_the_same() {
        let m = llmc_ir::text::parse(LAYER_QKV, "layer.llmc").unwrap();
        let ops = |m: &Module, op: Op| m.graph.nodes.iter().filter(|n| n.op == op).count();
        for (dt, dm) in [
            (DType::F32, true),
            (DType::F32, false),
            (DType::F16, true),
            (DType::Q8Kv, false),
        ] {
            let tm = lower_as(&m, dt, dm, true).unwrap();
            let hm = lower_as(&m, dt, dm, false).unwrap();
            assert_eq!(ops(&hm, Op::Rope), 2);
            assert_eq!(ops(&tm, Op::PagedQkvWrite), 1);
            for op in [Op::Rope, Op::Split, Op::PagedKvWrite, Op::Transpose] {
                assert_eq!(
                    ops(&tm, op),
                    0,
                    "{op} left in\n{}",
                    llmc_ir::text::print(&tm)
                );
            }
            llmc_ir::verify::verify(&tm).unwrap();
            let rows = 7usize;
            let val = |i: usize, salt: usize| (((i * 37 + salt * 11) % 59) as f64 - 29.0) / 13.0;
            let f = |shape: Vec<usize>, salt: usize, dt: DType| {
                let n: usize = shape.iter().product();
                Tensor::from_f64(dt, shape, (0..n).map(|i| val(i, salt)).collect())
            };
            // A q8_kv pool is given as values its blocks hold exactly.
            let pool = |shape: Vec<usize>, salt: usize| match dt {
                DType::Q8Kv => {
                    let x = f(shape, salt, DType::F32);
                    let held = llmc_ir::quant::q8_kv_round_trip(&x.to_f64());
                    Tensor::from_f64(DType::F32, x.shape.clone(), held)
                }
                _ => f(shape, salt, dt),
            };
            let pos: Vec<i64> = vec![3, 4, 5, 6, 7, 0, 1];
            let tables: Vec<i64> = vec![2, 0, 1, 3];
            let slots: Vec<i64> = pos
                .iter()
                .zip([0, 0, 0, 0, 0, 1, 1])
                .map(|(&p, sq)| tables[sq * 2 + p as usize / 16] * 16 + p % 16)
                .collect();
            let inputs = vec![
                f(vec![1, rows, 256], 1, DType::F32),
                Tensor::from_i64(DType::I64, vec![1, rows], pos),
                Tensor::from_i64(DType::I64, vec![rows], slots),
                Tensor::from_i64(DType::I32, vec![rows], vec![0, 0, 0, 0, 0, 1, 1]),
                Tensor::from_i64(DType::I32, vec![2, 2], tables),
                Tensor::from_i64(DType::I64, vec![2], vec![4, 6]),
                pool(vec![4, 1, 16, 64], 4),
                pool(vec![4, 1, 16, 64], 5),
            ];
            assert_same_results(&tm, &hm, &inputs);
        }
    }
}
