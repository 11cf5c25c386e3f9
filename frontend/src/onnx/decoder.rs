//! Decoder exports become LLMs: an ONNX graph laid out as Optimum's
//! `text-generation-with-past` export (and `torch.onnx.export` with the same names) —
//! `input_ids`, `position_ids` [+ `attention_mask`] and per layer
//! `past_key_values.N.key/value` in, `logits` and `present.N.key/value` out — is
//! rewritten into the decoder contract every GGUF/HF model is built into
//! (`llmc_frontend::llm::decoder`): `%ids`, `%pos: i64[batch, seq]` in, the last
//! position's `%logits: f32[batch, vocab]` out, and the cache inside the graph:
//!
//! - each layer's `concat(past_key_values.N.key, k_new)` / `concat(…value, v_new)` on
//!   the sequence axis becomes one `kv_append(k_new, v_new) {layer = N}`, whose results
//!   are the same full-length K and V the concatenations were (the driver then lowers
//!   `kv_append` + attention into the engine's paged serving form);
//! - the graph's own symbols are renamed to the contract's: `batch`, `seq`, `past`,
//!   and the mask's total length becomes `past + seq`;
//! - `attention_mask` (one sequence, no padding) becomes ones of `[batch, past + seq]`,
//!   so the mask arithmetic is left with the causal part only;
//! - the `present.*` outputs go, and the vocabulary projection reads only the last
//!   position (`x[:, -1:]`, reshaped to `[batch, hidden]`);
//! - a `matmul` by a [K, N] weight becomes `linear` over the weight transposed to
//!   [N, K], the layout the GGUF/HF builders emit (merged and tiled like theirs).
//!
//! An export without `past_key_values` (Optimum's `text-generation`) is lowered the same
//! way with no cache: its K and V are the current sequence's, the mask ones of `[batch,
//! seq]`. After `-O3` fused its attention, the driver derives the cached step
//! (`llmc_passes::kv_derive`: a `kv_append` before each causal attention).
//!
//! The tokenizer, special ids and chat template come from the files beside the model
//! as Optimum and `save_pretrained` lay them out ([`decoder_info`]).

use crate::hf::json::JsonFile;
use crate::FrontendError;
use llmc_ir::{
    attrs, Attr, DType, Dim, ModelInfo, Module, Op, Shape, Tensor, TensorType, ValueDef, ValueId,
};
use std::collections::HashMap;
use std::path::Path;

/// Where a decoder export keeps its inputs and outputs.
#[derive(Clone, Debug)]
pub struct DecoderExport {
    /// Graph-input index of `input_ids`.
    pub ids: usize,
    /// Graph-input index of `attention_mask`, if any.
    pub mask: Option<usize>,
    /// Graph-input index of `position_ids`, if any.
    pub pos: Option<usize>,
    /// Per layer: graph-input indices of the past key and value (empty for an export
    /// without a KV cache, which computes K and V from the current sequence only).
    pub past: Vec<(usize, usize)>,
    /// Graph-output index of `logits`.
    pub logits: usize,
}

/// Layer and kind (`key` = 0, `value` = 1) of a `past_key_values.N.key|value` name.
fn past_slot(name: &str) -> Option<(usize, usize)> {
    let rest = name.strip_prefix("past_key_values.")?;
    let (n, kind) = rest.split_once('.')?;
    let kind = match kind {
        "key" => 0,
        "value" => 1,
        _ => return None,
    };
    Some((n.parse().ok()?, kind))
}

/// Is `m` (as imported from ONNX) a decoder export? Every graph input must be one of
/// `input_ids`, `attention_mask`, `position_ids` or a `past_key_values.N.key|value`
/// (every layer both, or none: an export without a KV cache, whose cached step the
/// driver derives after `-O3` fused its attention), and an output must be `logits`.
pub fn recognise(m: &Module) -> Option<DecoderExport> {
    let g = &m.graph;
    let (mut ids, mut mask, mut pos) = (None, None, None);
    let mut past: HashMap<usize, [Option<usize>; 2]> = HashMap::new();
    for (i, &v) in g.inputs.iter().enumerate() {
        let name = g.value(v).name.as_str();
        match name {
            "input_ids" => ids = Some(i),
            "attention_mask" => mask = Some(i),
            "position_ids" => pos = Some(i),
            _ => {
                let (l, kind) = past_slot(name)?;
                past.entry(l).or_default()[kind] = Some(i);
            }
        }
    }
    let ids = ids?;
    let ty = g.ty(g.inputs[ids]);
    if !ty.dtype.is_int() || ty.shape.rank() != 2 {
        return None;
    }
    let mut layers = Vec::with_capacity(past.len());
    for l in 0..past.len() {
        let [Some(k), Some(v)] = past.get(&l).copied()? else {
            return None;
        };
        layers.push((k, v));
    }
    let logits = g
        .outputs
        .iter()
        .position(|&v| g.value(v).name == "logits")?;
    Some(DecoderExport {
        ids,
        mask,
        pos,
        past: layers,
        logits,
    })
}

/// `d` with its symbols replaced by `sub` (symbols not in `sub` stay).
fn subst_dim(d: &Dim, sub: &HashMap<String, Dim>) -> Dim {
    let mut out = Dim::c(0);
    for (mono, c) in d.terms() {
        let mut t = Dim::c(c);
        for s in mono {
            t = t.mul(sub.get(s).unwrap_or(&Dim::sym(s)));
        }
        out = out.add(&t);
    }
    out
}

fn subst_shape(s: &Shape, sub: &HashMap<String, Dim>) -> Shape {
    Shape(s.0.iter().map(|d| subst_dim(d, sub)).collect())
}

/// The one symbol a dim is, if it is a bare symbol.
fn bare_symbol(d: &Dim) -> Option<String> {
    let syms = d.symbols();
    match syms[..] {
        [s] if *d == Dim::sym(s) => Some(s.to_string()),
        _ => None,
    }
}

/// What a node computes when some operands hold one value everywhere.
enum Splat {
    /// The same value everywhere.
    Value(f64),
    /// Operand `k` itself (`and(x, true)`, `where(true, x, y)`, ...), when the result
    /// has its type.
    Forward(usize),
}

/// A rank-0 tensor of `dt` holding `x` (integer and bool tensors hold integers).
fn scalar(dt: DType, x: f64) -> Tensor {
    if dt.is_float() {
        Tensor::from_f64(dt, vec![], vec![x])
    } else {
        Tensor::from_i64(dt, vec![], vec![x as i64])
    }
}

/// `x` as an element of `dt` (what a cast gives).
fn splat_cast(x: f64, dt: DType) -> f64 {
    if dt == DType::Bool {
        f64::from(u8::from(x != 0.0))
    } else if dt.is_int() {
        x.trunc()
    } else {
        x
    }
}

/// The splat rule of `op` on operands of which `splats` knows some.
fn splat_rule(
    op: Op,
    ins: &[ValueId],
    a: &llmc_ir::Attrs,
    splats: &HashMap<ValueId, f64>,
) -> Option<Splat> {
    let sp = |k: usize| ins.get(k).and_then(|v| splats.get(v)).copied();
    let truth = |x: bool| f64::from(u8::from(x));
    match op {
        Op::Cast => {
            let to = match a.get("to") {
                Some(Attr::Type(t)) => *t,
                _ => return None,
            };
            Some(Splat::Value(splat_cast(sp(0)?, to)))
        }
        Op::Reshape
        | Op::Unsqueeze
        | Op::Squeeze
        | Op::Expand
        | Op::Slice
        | Op::Transpose
        | Op::Gather
        | Op::GatherNd => Some(Splat::Value(sp(0)?)),
        Op::Not => Some(Splat::Value(truth(sp(0)? == 0.0))),
        Op::And | Op::Or => {
            let absorbing = if op == Op::And { 0.0 } else { 1.0 };
            match (sp(0), sp(1)) {
                (Some(x), Some(y)) => Some(Splat::Value(if op == Op::And {
                    truth(x != 0.0 && y != 0.0)
                } else {
                    truth(x != 0.0 || y != 0.0)
                })),
                (Some(x), None) if (x != 0.0) == (absorbing != 0.0) => {
                    Some(Splat::Value(absorbing))
                }
                (None, Some(y)) if (y != 0.0) == (absorbing != 0.0) => {
                    Some(Splat::Value(absorbing))
                }
                (Some(_), None) => Some(Splat::Forward(1)),
                (None, Some(_)) => Some(Splat::Forward(0)),
                (None, None) => None,
            }
        }
        Op::Where => {
            let c = sp(0)?;
            let k = if c != 0.0 { 1 } else { 2 };
            match sp(k) {
                Some(x) => Some(Splat::Value(x)),
                None => Some(Splat::Forward(k)),
            }
        }
        _ => None,
    }
}

/// Rewrites the decoder export `m` (as [`recognise`] found it) into the decoder
/// contract (see the module doc). Errors say which node or value stands in the way.
pub fn lower(m: &Module, io: &DecoderExport) -> Result<Module, String> {
    let g = &m.graph;
    let names = llmc_ir::text::value_names(m);
    let vname = |v: ValueId| {
        names
            .get(v.0 as usize)
            .cloned()
            .unwrap_or_else(|| format!("%{}", v.0))
    };
    // Without a `position_ids` input the export computes the positions itself:
    // transformers' `cache_position.unsqueeze(0)`, a ramp over the new tokens (from the
    // past length). The engine's flat batch has no such ramp, so where the positions
    // are read as positions (a float cast for RoPE's angles, a gather of a learned
    // position table) `%pos` is read instead; the causal mask keeps its ramps.
    let producer = |v: ValueId| g.nodes.iter().find(|n| n.outputs.contains(&v));
    let is_ramp = |mut v: ValueId| {
        for _ in 0..6 {
            let Some(n) = producer(v) else { return false };
            match n.op {
                Op::CumSum => return true,
                Op::Add | Op::Mul | Op::Cast => v = n.inputs[0],
                _ => return false,
            }
        }
        false
    };
    let mut pos_like: std::collections::HashSet<ValueId> = Default::default();
    if io.pos.is_none() {
        for n in &g.nodes {
            // unsqueeze(ramp, [0]) (dynamo: [0, 1]): [1, s] or [1, 1, s].
            let t = g.ty(n.outputs[0]);
            let leading = t.shape.rank() >= 2
                && t.shape.0[..t.shape.rank() - 1]
                    .iter()
                    .all(|d| d.as_const() == Some(1));
            let from_ramp = n.op == Op::Unsqueeze && is_ramp(n.inputs[0]);
            // ... and views of those (`position_ids[:, None, :]`).
            let view = matches!(n.op, Op::Unsqueeze | Op::Reshape | Op::Expand)
                && pos_like.contains(&n.inputs[0]);
            if leading && t.dtype.is_int() && (from_ramp || view) {
                pos_like.insert(n.outputs[0]);
            }
        }
        if pos_like.is_empty() {
            return Err(
                "the export has no `position_ids` input and its positions are not a ramp over the new tokens (`cache_position.unsqueeze(0)`); export it with position_ids".into(),
            );
        }
    }
    // The export's symbols -> the contract's.
    let ids_ty = g.ty(g.inputs[io.ids]).clone();
    let sym_at = |t: &TensorType, i: usize, what: &str| -> Result<String, String> {
        t.shape
            .0
            .get(i)
            .and_then(bare_symbol)
            .ok_or_else(|| format!("{what} dim {i} must be a symbol, got {}", t.shape))
    };
    // The batch is a symbol, or 1 when the export fixed it (dynamo exports often do):
    // the engine runs one sequence per row set either way.
    let b = match ids_ty.shape.0.first().and_then(Dim::as_const) {
        Some(1) => None,
        _ => Some(sym_at(&ids_ty, 0, "input_ids")?),
    };
    let s = sym_at(&ids_ty, 1, "input_ids")?;
    if b.as_ref() == Some(&s) {
        return Err(format!(
            "input_ids [{s}, {s}] must use two different symbols"
        ));
    }
    let p = match io.past.first() {
        Some(&(k0, _)) => {
            let p = sym_at(g.ty(g.inputs[k0]), 2, "past_key_values.0.key")?;
            if s == p || b.as_ref() == Some(&p) {
                return Err(format!(
                    "input_ids [.., {s}] and past_key_values.0.key's length {p} must use different symbols"
                ));
            }
            Some(p)
        }
        None => None,
    };
    // Without a cache the keys are the current sequence's (the cache the driver derives
    // later makes them `past + seq`).
    let total = if p.is_some() {
        Dim::sym("past").add(&Dim::sym("seq"))
    } else {
        Dim::sym("seq")
    };
    let mut sub: HashMap<String, Dim> = HashMap::new();
    if let Some(b) = &b {
        sub.insert(b.clone(), Dim::sym("batch"));
    }
    sub.insert(s, Dim::sym("seq"));
    if let Some(p) = p {
        sub.insert(p, Dim::sym("past"));
    }
    if let Some(mi) = io.mask {
        let mt = g.ty(g.inputs[mi]);
        if mt.shape.rank() != 2 {
            return Err(format!("attention_mask must have rank 2, got {}", mt.shape));
        }
        if let Some(t) = bare_symbol(&mt.shape.0[1]) {
            sub.entry(t).or_insert_with(|| total.clone());
        }
    }
    // Symbols the new module must not see: they would be unbound at run time.
    for (i, &v) in g.inputs.iter().enumerate() {
        let t = g.ty(v);
        let mapped = subst_shape(&t.shape, &sub);
        for d in &mapped.0 {
            for sy in d.symbols() {
                if !["batch", "seq", "past"].contains(&sy) {
                    return Err(format!(
                        "input {} ({}) has the dim {d}, which is not the batch, the new tokens or the past length",
                        i,
                        g.value(v).name
                    ));
                }
            }
        }
    }

    // Each layer's concatenations of the past with the new K and V.
    let mut past_layer: HashMap<ValueId, (usize, usize)> = io
        .past
        .iter()
        .enumerate()
        .flat_map(|(l, &(k, v))| [(g.inputs[k], (l, 0)), (g.inputs[v], (l, 1))])
        .collect();
    // concat output -> (layer, kind, new operand)
    let mut concats: HashMap<ValueId, (usize, usize, ValueId)> = HashMap::new();
    let mut found: Vec<[Option<ValueId>; 2]> = vec![[None, None]; io.past.len()];
    // One-operand concats of a past input (transformers 5's cache starts from
    // `cat([past])`): the same value, skipped when the graph is rebuilt.
    let mut aliases: std::collections::HashSet<usize> = std::collections::HashSet::new();
    for (ni, n) in g.nodes.iter().enumerate() {
        if let ([x], [o]) = (&n.inputs[..], &n.outputs[..]) {
            if n.op == Op::Concat {
                if let Some(&slot) = past_layer.get(x) {
                    past_layer.insert(*o, slot);
                    aliases.insert(ni);
                    continue;
                }
            }
        }
        for (k, &v) in n.inputs.iter().enumerate() {
            let Some(&(l, kind)) = past_layer.get(&v) else {
                continue;
            };
            let what = if kind == 0 { "key" } else { "value" };
            let at = vname(n.outputs[0]);
            let ok = n.op == Op::Concat
                && k == 0
                && n.inputs.len() == 2
                && matches!(n.attrs.get("axis"), Some(Attr::Int(2) | Attr::Int(-2)));
            if !ok {
                return Err(format!(
                    "{at} ({}) reads past_key_values.{l}.{what}; a decoder export may only concatenate the past with the new {what}s on axis 2",
                    n.op
                ));
            }
            if found[l][kind].is_some() {
                return Err(format!(
                    "past_key_values.{l}.{what} is concatenated twice ({at})"
                ));
            }
            found[l][kind] = Some(n.outputs[0]);
            concats.insert(n.outputs[0], (l, kind, n.inputs[1]));
        }
    }
    for (l, f) in found.iter().enumerate() {
        if f.iter().any(Option::is_none) {
            return Err(format!(
                "past_key_values.{l}: the key and the value must both be concatenated with the new ones"
            ));
        }
    }
    // The vocabulary projection: the node computing `logits` reads the hidden states
    // [batch, seq, hidden] as operand 0, possibly followed by elementwise ops with
    // constants (Gemma 2's final soft-capping `tanh(x / 30) * 30`), which then run on
    // the last position's row.
    let logits_v = g.outputs[io.logits];
    let producer = |v: ValueId| g.nodes.iter().position(|n| n.outputs.contains(&v));
    let is_const = |v: ValueId| match g.value(v).def {
        ValueDef::Weight(_) => true,
        _ => producer(v).is_some_and(|i| g.nodes[i].op == Op::Constant),
    };
    let mut head = producer(logits_v).ok_or("the `logits` output is not computed by a node")?;
    for _ in 0..8 {
        let n = &g.nodes[head];
        if !matches!(n.op, Op::Mul | Op::Div | Op::Add | Op::Sub | Op::Tanh) {
            break;
        }
        let mut varying = n.inputs.iter().filter(|&&v| !is_const(v));
        let (Some(&x), None) = (varying.next(), varying.next()) else {
            break;
        };
        match producer(x) {
            Some(i) => head = i,
            None => break,
        }
    }
    let head_node = &g.nodes[head];
    if !matches!(head_node.op, Op::MatMul | Op::Linear) {
        return Err(format!(
            "{} ({}): the logits must come from a matmul over the hidden states",
            vname(logits_v),
            head_node.op
        ));
    }

    let mut out = Module::new(&m.name);
    out.info = m.info.clone();
    out.weights = m.weights.clone();
    out.graph.name = g.name.clone();
    // The contract's batch: `batch`, or the export's fixed 1.
    let batch = if b.is_some() {
        Dim::sym("batch")
    } else {
        Dim::c(1)
    };
    let contract = TensorType::new(DType::I64, Shape(vec![batch.clone(), Dim::sym("seq")]));
    let ids = out.graph.add_input("ids", contract.clone());
    let pos = out.graph.add_input("pos", contract);
    let mut map: HashMap<ValueId, ValueId> = HashMap::new();
    // Values known to hold one value everywhere (the all-ones mask and what is computed
    // from it alone): the padding half of the mask folds away.
    let mut splats: HashMap<ValueId, f64> = HashMap::new();
    let cast_to = |out: &mut Module, v: ValueId, dt: DType| -> Result<ValueId, String> {
        if out.graph.ty(v).dtype == dt {
            return Ok(v);
        }
        out.add1(Op::Cast, &[v], attrs([("to", Attr::Type(dt))]))
            .map_err(|e| e.to_string())
    };
    let ids_in = cast_to(&mut out, ids, ids_ty.dtype)?;
    map.insert(g.inputs[io.ids], ids_in);
    if let Some(pi) = io.pos {
        let pv = g.inputs[pi];
        let dt = g.ty(pv).dtype;
        let pv_new = cast_to(&mut out, pos, dt)?;
        map.insert(pv, pv_new);
    }
    if let Some(mi) = io.mask {
        let mv = g.inputs[mi];
        let dt = g.ty(mv).dtype;
        let one = out
            .add1(
                Op::Constant,
                &[],
                attrs([("value", Attr::Tensor(scalar(dt, 1.0)))]),
            )
            .map_err(|e| e.to_string())?;
        let shape = Shape(vec![batch.clone(), total.clone()]);
        let ones = out
            .add1(Op::Expand, &[one], attrs([("shape", Attr::Shape(shape))]))
            .map_err(|e| e.to_string())?;
        out.graph.values[ones.0 as usize].name = "attention_mask".into();
        map.insert(mv, ones);
        splats.insert(ones, 1.0);
    }
    // Weights already transposed for `linear`, by source weight.
    let mut transposed: HashMap<llmc_ir::WeightId, ValueId> = HashMap::new();
    // Whether each layer's kv_append is emitted (at the later of its two concats).
    let mut appended = vec![false; io.past.len()];
    for (ni, n) in g.nodes.iter().enumerate() {
        if aliases.contains(&ni) {
            continue;
        }
        let at = vname(n.outputs.first().copied().unwrap_or(ValueId(0)));
        if let Some(&(l, _, _)) = n.outputs.first().and_then(|o| concats.get(o)) {
            if appended[l] {
                continue;
            }
            let [Some(kc), Some(vc)] = found[l] else {
                continue;
            };
            let (Some(&k_new), Some(&v_new)) = (
                concats.get(&kc).and_then(|c| map.get(&c.2)),
                concats.get(&vc).and_then(|c| map.get(&c.2)),
            ) else {
                // The other half's new operand is computed later: append then.
                continue;
            };
            let outs = out
                .add_node(
                    Op::KvAppend,
                    &[k_new, v_new],
                    attrs([("layer", Attr::Int(l as i64))]),
                )
                .map_err(|e| format!("{at}: kv_append of layer {l}: {e}"))?;
            out.graph.values[outs[0].0 as usize].name = format!("layers.{l}.k_cache");
            out.graph.values[outs[1].0 as usize].name = format!("layers.{l}.v_cache");
            map.insert(kc, outs[0]);
            map.insert(vc, outs[1]);
            appended[l] = true;
            continue;
        }
        let mut ins = Vec::with_capacity(n.inputs.len());
        for (k, &v) in n.inputs.iter().enumerate() {
            // Positions read as positions: the contract's %pos (see above).
            let as_position = pos_like.contains(&v)
                && match n.op {
                    Op::Cast => matches!(n.attrs.get("to"), Some(Attr::Type(t)) if t.is_float()),
                    Op::Gather => k == 1,
                    _ => false,
                };
            if as_position {
                let mut p = cast_to(&mut out, pos, g.ty(v).dtype)?;
                let want = subst_shape(&g.ty(v).shape, &sub);
                if out.graph.ty(p).shape != want {
                    // [b, s] -> [b, 1, s] as an unsqueeze (the rope rule's spelling),
                    // any other view as a reshape.
                    let (op, a) = if want.rank() == 3 {
                        (Op::Unsqueeze, attrs([("axes", Attr::Ints(vec![1]))]))
                    } else {
                        (Op::Reshape, attrs([("shape", Attr::Shape(want))]))
                    };
                    p = out
                        .add1(op, &[p], a)
                        .map_err(|e| format!("{at}: positions: {e}"))?;
                }
                ins.push(p);
                continue;
            }
            let nv = match map.get(&v) {
                Some(&x) => x,
                None => match out.graph.weight_value_from(g, v) {
                    Some(x) => {
                        map.insert(v, x);
                        x
                    }
                    None if concats.contains_key(&v) => {
                        return Err(format!(
                            "{at} ({}) reads {} before both the key and the value of its layer are computed",
                            n.op,
                            vname(v)
                        ))
                    }
                    _ => return Err(format!("{at}: operand {} has no value", vname(v))),
                },
            };
            ins.push(nv);
        }
        let mut a = n.attrs.clone();
        for x in a.values_mut() {
            if let Attr::Shape(sh) = x {
                *sh = subst_shape(sh, &sub);
            }
        }
        if ni == head {
            // The projection reads the last position only: x[:, -1:] as [batch, hidden].
            let x = ins[0];
            let xt = out.graph.ty(x).clone();
            let [_, _, hidden] = &xt.shape.0[..] else {
                return Err(format!(
                    "{at}: the hidden states before the vocabulary projection must be [batch, seq, hidden], got {}",
                    xt.shape
                ));
            };
            let last = out
                .add1(
                    Op::Slice,
                    &[x],
                    attrs([
                        ("starts", Attr::Ints(vec![-1])),
                        ("ends", Attr::Ints(vec![i64::MAX])),
                        ("axes", Attr::Ints(vec![1])),
                    ]),
                )
                .map_err(|e| format!("{at}: {e}"))?;
            let shape = Shape(vec![batch.clone(), hidden.clone()]);
            ins[0] = out
                .add1(Op::Reshape, &[last], attrs([("shape", Attr::Shape(shape))]))
                .map_err(|e| format!("{at}: {e}"))?;
        }
        if n.outputs.len() == 1 {
            match splat_rule(n.op, &ins, &a, &splats) {
                Some(Splat::Forward(k)) => {
                    let tys: Vec<&TensorType> = ins.iter().map(|&v| out.graph.ty(v)).collect();
                    let want = n.op.infer(&tys, &a).map_err(|e| format!("{at}: {e}"))?;
                    if want.first() == Some(out.graph.ty(ins[k])) {
                        map.insert(n.outputs[0], ins[k]);
                        continue;
                    }
                }
                Some(Splat::Value(x)) => {
                    let tys: Vec<&TensorType> = ins.iter().map(|&v| out.graph.ty(v)).collect();
                    let want = n.op.infer(&tys, &a).map_err(|e| format!("{at}: {e}"))?;
                    let t = want
                        .first()
                        .ok_or_else(|| format!("{at}: no result type"))?;
                    let x = splat_cast(x, t.dtype);
                    let c = out
                        .add1(
                            Op::Constant,
                            &[],
                            attrs([("value", Attr::Tensor(scalar(t.dtype, x)))]),
                        )
                        .map_err(|e| format!("{at}: {e}"))?;
                    let e = out
                        .add1(
                            Op::Expand,
                            &[c],
                            attrs([("shape", Attr::Shape(t.shape.clone()))]),
                        )
                        .map_err(|e| format!("{at}: {e}"))?;
                    out.graph.values[e.0 as usize].name = g.value(n.outputs[0]).name.clone();
                    map.insert(n.outputs[0], e);
                    splats.insert(e, x);
                    continue;
                }
                None => {}
            }
        }
        // A projection by a [K, N] weight (the exporter's layout) becomes `linear` over
        // the transposed [N, K] weight, the layout the GGUF/HF builders emit: the merge
        // pass joins Q/K/V and gate/up, and the GEMM kernel tiles it.
        let (op, ins) = match transposed_weight(&mut out, m, n.op, &ins, &mut transposed) {
            Some(wt) => (Op::Linear, vec![ins[0], wt]),
            // A tied head (dynamo): matmul(x, transpose(embedding)) is linear over the
            // embedding itself, no copy.
            None => match untransposed_weight(&out, n.op, &ins) {
                Some(w) => (Op::Linear, vec![ins[0], w]),
                None => (n.op, ins),
            },
        };
        let outs = out
            .add_node(op, &ins, a)
            .map_err(|e| format!("{at} ({}): {e}", n.op))?;
        for (&o, &no) in n.outputs.iter().zip(&outs) {
            out.graph.values[no.0 as usize].name = g.value(o).name.clone();
            map.insert(o, no);
        }
    }
    if let Some(l) = appended.iter().position(|a| !a) {
        return Err(format!(
            "layer {l}: its key and value cache were never appended"
        ));
    }
    let logits = map[&logits_v];
    let logits = cast_to(&mut out, logits, DType::F32)?;
    out.graph.values[logits.0 as usize].name = "logits".into();
    out.graph.outputs = vec![logits];
    // Drop what only the `present.*` outputs and the mask's unused parts read.
    Ok(super::import::prune(out))
}

/// For `matmul(x, w)` with `w` a 2-D float weight [K, N] with data and `x` of rank >= 2:
/// the value of the weight transposed to [N, K] (`NAME.T`, made once per weight), for
/// `linear(x, wᵀ)`.
fn transposed_weight(
    out: &mut Module,
    src: &Module,
    op: Op,
    ins: &[ValueId],
    done: &mut HashMap<llmc_ir::WeightId, ValueId>,
) -> Option<ValueId> {
    if op != Op::MatMul || out.graph.ty(*ins.first()?).shape.rank() < 2 {
        return None;
    }
    let ValueDef::Weight(wid) = out.graph.value(*ins.get(1)?).def else {
        return None;
    };
    if let Some(&v) = done.get(&wid) {
        return Some(v);
    }
    let w = src.weight(wid);
    let dt = w.dtype;
    let [k, n] = w.shape.as_consts()?[..] else {
        return None;
    };
    if !dt.is_float() || dt.is_quantized() || k <= 0 || n <= 0 {
        return None;
    }
    let (k, n, e) = (k as usize, n as usize, dt.block_bytes());
    let bytes = w.data.bytes()?;
    if bytes.len() != k.checked_mul(n)?.checked_mul(e)? {
        return None;
    }
    let mut t = vec![0u8; bytes.len()];
    for r in 0..k {
        for c in 0..n {
            let (from, to) = ((r * n + c) * e, (c * k + r) * e);
            t[to..to + e].copy_from_slice(&bytes[from..from + e]);
        }
    }
    let name = format!("{}.T", w.name);
    let v = out.add_weight(
        &name,
        dt,
        Shape::of(&[n as i64, k as i64]),
        llmc_ir::WeightData::Owned(std::sync::Arc::new(t)),
    );
    done.insert(wid, v);
    Some(v)
}

/// For `matmul(x, transpose(w, [1, 0]))` with `w` a 2-D float weight [N, K] and `x` of
/// rank >= 2: `w`, for `linear(x, w)`.
fn untransposed_weight(out: &Module, op: Op, ins: &[ValueId]) -> Option<ValueId> {
    if op != Op::MatMul || out.graph.ty(*ins.first()?).shape.rank() < 2 {
        return None;
    }
    let ValueDef::Node(nid, 0) = out.graph.value(*ins.get(1)?).def else {
        return None;
    };
    let t = out.graph.nodes.get(nid.0 as usize)?;
    let perm_10 = matches!(t.attrs.get("perm"), Some(Attr::Ints(p)) if p == &[1, 0]);
    let w = *t.inputs.first()?;
    let ty = out.graph.ty(w);
    let weight = matches!(out.graph.value(w).def, ValueDef::Weight(_));
    (t.op == Op::Transpose
        && perm_10
        && weight
        && ty.shape.rank() == 2
        && ty.dtype.is_float()
        && !ty.dtype.is_quantized())
    .then_some(w)
}

/// The model facts of a decoder export: tokenizer, special ids and chat template from
/// `tok_dir` (the model's folder, or `--tokenizer DIR`): `tokenizer.json`,
/// `tokenizer_config.json`, `generation_config.json` and `config.json` (architecture,
/// context length) as Optimum and `save_pretrained` write them.
pub fn decoder_info(tok_dir: &Path) -> Result<ModelInfo, FrontendError> {
    let cfg_path = tok_dir.join("config.json");
    let config = match JsonFile::read_optional(&cfg_path)? {
        Some(c) => c,
        None => JsonFile {
            path: cfg_path,
            value: serde_json::Value::Object(Default::default()),
        },
    };
    let mut info = crate::hf::info::model_info(tok_dir, &config)?;
    if let Some(arch) = config.opt_str("model_type")? {
        info.architecture = arch.to_string();
    }
    info.context_length = config.opt_pos_int("max_position_embeddings")?;
    Ok(info)
}
