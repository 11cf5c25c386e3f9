//! Graph ⇄ e-graph. A graph goes in with weights and graph inputs as leaves and one
//! root node listing the outputs (and every stateful node, so a KV-cache append is never
//! dropped); it comes back out by walking the cheapest node of each reachable class.
//! Each class remembers the name of the first graph value it held, so results keep
//! their names and dumps stay readable.

use super::lang::{AttrsKey, EGraph, ENode, Head, TypeAnalysis};
use super::EgraphError;
use egg::{Extractor, Id};
use llmc_ir::ops::Flags;
use llmc_ir::{Graph, Module, Node, NodeId, TensorType, Value, ValueDef, ValueId};
use std::collections::HashMap;

/// A graph loaded into an e-graph.
pub struct Loaded {
    /// The e-graph.
    pub egraph: EGraph,
    /// The root class (graph outputs then kept stateful nodes).
    pub root: Id,
    /// Number of graph outputs among the root's children.
    pub n_outputs: usize,
    /// The class of each graph value.
    pub class_of: Vec<Option<Id>>,
}

/// Builds the e-graph of `m`'s graph.
pub fn load(m: &Module) -> Result<Loaded, EgraphError> {
    let g = &m.graph;
    let analysis = TypeAnalysis {
        inputs: g.inputs.iter().map(|&v| g.ty(v).clone()).collect(),
        weights: m
            .weights
            .iter()
            .map(|w| TensorType::new(w.dtype, w.shape.clone()))
            .collect(),
        users: Vec::new(),
        bool_weights: m
            .weights
            .iter()
            .enumerate()
            .filter(|(_, w)| w.dtype == llmc_ir::DType::Bool)
            .filter_map(|(i, w)| {
                let shape: Vec<usize> = w.shape.as_consts()?.iter().map(|&d| d as usize).collect();
                if shape.iter().product::<usize>() > 1 << 20 {
                    return None;
                }
                let t = llmc_ir::interp::weight_tensor(w.dtype, &shape, w.data.bytes()?).ok()?;
                Some((i as u32, std::sync::Arc::new(t)))
            })
            .collect(),
    };
    let mut eg = EGraph::new(analysis);
    let mut class_of: Vec<Option<Id>> = vec![None; g.values.len()];
    for (i, v) in g.values.iter().enumerate() {
        match v.def {
            ValueDef::Input(k) => {
                class_of[i] = Some(eg.add(ENode::leaf(Head::Input(k as u32))));
            }
            ValueDef::Weight(w) => {
                class_of[i] = Some(eg.add(ENode::leaf(Head::Weight(w.0))));
            }
            ValueDef::Node(..) => {}
        }
    }
    let mut kept = Vec::new();
    for (ni, n) in g.nodes.iter().enumerate() {
        let stateful = n.op.flags().has(Flags::STATEFUL);
        let a = eg.add(ENode::leaf(Head::Attrs(AttrsKey::new(
            n.attrs.clone(),
            stateful.then_some(ni),
        ))));
        let mut ops = Vec::with_capacity(n.inputs.len());
        for &v in &n.inputs {
            let c = class_of
                .get(v.0 as usize)
                .copied()
                .flatten()
                .ok_or_else(|| EgraphError::Graph {
                    node: format!("node{ni} ({})", n.op),
                    msg: format!("operand %{} is used before it is defined", v.0),
                })?;
            ops.push(c);
        }
        let id = eg.add(ENode::op(n.op, &ops, a));
        if stateful {
            kept.push(id);
        }
        if n.outputs.len() == 1 {
            class_of[n.outputs[0].0 as usize] = Some(id);
        } else {
            for (k, &o) in n.outputs.iter().enumerate() {
                let p = eg.add(ENode {
                    head: Head::Proj(k as u32),
                    children: vec![id],
                });
                class_of[o.0 as usize] = Some(p);
            }
        }
    }
    let mut root_kids = Vec::new();
    for &o in &g.outputs {
        root_kids.push(
            class_of
                .get(o.0 as usize)
                .copied()
                .flatten()
                .ok_or_else(|| EgraphError::Graph {
                    node: "graph outputs".into(),
                    msg: format!("output %{} is never defined", o.0),
                })?,
        );
    }
    let mut uses = vec![0usize; g.values.len()];
    for v in g.nodes.iter().flat_map(|n| &n.inputs).chain(&g.outputs) {
        if let Some(u) = uses.get_mut(v.0 as usize) {
            *u += 1;
        }
    }
    eg.analysis.users = class_of
        .iter()
        .zip(&uses)
        .filter_map(|(c, &u)| c.map(|c| (c, u)))
        .collect();
    let n_outputs = root_kids.len();
    root_kids.extend(kept);
    let root = eg.add(ENode {
        head: Head::Outputs(n_outputs as u32),
        children: root_kids,
    });
    eg.rebuild();
    Ok(Loaded {
        egraph: eg,
        root,
        n_outputs,
        class_of,
    })
}

/// Writes the cheapest program of `loaded` back into `m`'s graph. `names` gives the
/// preferred result name of each class (canonical ids). With `fold`, a transpose of a
/// weight is done now (`fold_weight`); without, it stays a node (`fold_weights` does it
/// later).
pub fn store(
    m: &mut Module,
    egraph: &EGraph,
    root: Id,
    extractor: &Extractor<'_, super::cost::Cost<'_>, ENode, TypeAnalysis>,
    names: &HashMap<Id, String>,
    fold: bool,
) -> Result<(), EgraphError> {
    let old_graph = m.graph.clone();
    let old = &old_graph;
    let mut g = Graph {
        name: old.name.clone(),
        ..Graph::default()
    };
    // Graph inputs and weight values keep their ids' order and names.
    let mut leaf_value: HashMap<Head, ValueId> = HashMap::new();
    for (k, &v) in old.inputs.iter().enumerate() {
        let val = old.value(v);
        let id = g.add_input(&val.name, val.ty.clone());
        leaf_value.insert(Head::Input(k as u32), id);
    }
    for val in &old.values {
        if let ValueDef::Weight(w) = val.def {
            let id = g.add_value(val.name.clone(), val.ty.clone(), val.def.clone());
            leaf_value.entry(Head::Weight(w.0)).or_insert(id);
        }
    }
    // Iterative post-order over classes, from the root's children.
    let root = egraph.find(root);
    let root_node = extractor.find_best_node(root).clone();
    let mut done: HashMap<Id, Vec<ValueId>> = HashMap::new();
    let mut used_names: std::collections::HashSet<String> =
        g.values.iter().map(|v| v.name.clone()).collect();
    let mut stack: Vec<(Id, bool)> = root_node
        .children
        .iter()
        .rev()
        .map(|&c| (egraph.find(c), false))
        .collect();
    while let Some((c, expanded)) = stack.pop() {
        if done.contains_key(&c) {
            continue;
        }
        let node = extractor.find_best_node(c);
        if !expanded {
            stack.push((c, true));
            for &k in node.children.iter().rev() {
                let k = egraph.find(k);
                if !done.contains_key(&k) {
                    stack.push((k, false));
                }
            }
            continue;
        }
        let kid = |k: Id| -> Result<&Vec<ValueId>, EgraphError> {
            done.get(&egraph.find(k)).ok_or_else(|| EgraphError::Graph {
                node: format!("{node}"),
                msg: "operand class was not built first (a cycle in the extracted program)".into(),
            })
        };
        let vals: Vec<ValueId> = match &node.head {
            Head::Input(_) | Head::Weight(_) => {
                let v = leaf_value
                    .get(&node.head)
                    .copied()
                    .ok_or_else(|| EgraphError::Graph {
                        node: format!("{node}"),
                        msg: "no graph value for this leaf".into(),
                    })?;
                vec![v]
            }
            Head::Attrs(_) | Head::Outputs(_) => Vec::new(),
            Head::Proj(i) => {
                let child = node
                    .children
                    .first()
                    .copied()
                    .ok_or_else(|| EgraphError::Graph {
                        node: format!("{node}"),
                        msg: "projection without an operand".into(),
                    })?;
                let v =
                    kid(child)?
                        .get(*i as usize)
                        .copied()
                        .ok_or_else(|| EgraphError::Graph {
                            node: format!("{node}"),
                            msg: format!("result {i} does not exist"),
                        })?;
                vec![v]
            }
            Head::Op(op) => {
                let attrs = node
                    .attrs_class()
                    .and_then(|a| egraph[a].data.attrs.clone())
                    .ok_or_else(|| EgraphError::Graph {
                        node: op.to_string(),
                        msg: "attribute class missing".into(),
                    })?;
                let mut ins = Vec::new();
                for &k in node.operands() {
                    let v = kid(k)?.first().copied().ok_or_else(|| EgraphError::Graph {
                        node: op.to_string(),
                        msg: "operand has no value".into(),
                    })?;
                    ins.push(v);
                }
                if let Some(w) = fold
                    .then(|| fold_weight(m, &mut g, *op, &ins, attrs.attrs()))
                    .flatten()
                {
                    done.insert(c, vec![w]);
                    continue;
                }
                let tys: Vec<&TensorType> = ins.iter().map(|&v| g.ty(v)).collect();
                let out_tys = op
                    .infer(&tys, attrs.attrs())
                    .map_err(|e| EgraphError::Graph {
                        node: names.get(&c).cloned().unwrap_or_else(|| op.to_string()),
                        msg: format!("extracted node fails its type rule: {e}"),
                    })?;
                let nid = NodeId(g.nodes.len() as u32);
                let mut outs = Vec::new();
                let base = names.get(&c).cloned();
                for (k, ty) in out_tys.into_iter().enumerate() {
                    let name = match (&base, k) {
                        (Some(b), 0) if !used_names.contains(b) => b.clone(),
                        (Some(b), k) if k > 0 && !used_names.contains(&format!("{b}.{k}")) => {
                            format!("{b}.{k}")
                        }
                        _ => {
                            let mut i = g.values.len();
                            while used_names.contains(&i.to_string()) {
                                i += 1;
                            }
                            i.to_string()
                        }
                    };
                    used_names.insert(name.clone());
                    outs.push(g.add_value(name, ty, ValueDef::Node(nid, k)));
                }
                g.nodes.push(Node {
                    op: *op,
                    inputs: ins,
                    outputs: outs.clone(),
                    attrs: attrs.attrs().clone(),
                });
                outs
            }
        };
        done.insert(c, vals);
    }
    let n_out = match root_node.head {
        Head::Outputs(n) => n as usize,
        _ => 0,
    };
    for &c in root_node.children.iter().take(n_out) {
        let v = done
            .get(&egraph.find(c))
            .and_then(|v| v.first().copied())
            .ok_or_else(|| EgraphError::Graph {
                node: "graph outputs".into(),
                msg: "an output was not built".into(),
            })?;
        g.outputs.push(v);
    }
    // Graph outputs keep their original names.
    for (k, &v) in g.outputs.clone().iter().enumerate() {
        if let Some(&ov) = old.outputs.get(k) {
            let want = old.value(ov).name.clone();
            if g.values[v.0 as usize].name != want && !g.inputs.contains(&v) {
                if let Some(other) = g.values.iter_mut().find(|x: &&mut Value| x.name == want) {
                    other.name = format!("{want}.old");
                }
                g.values[v.0 as usize].name = want;
            }
        }
    }
    m.graph = g;
    Ok(())
}

/// Runs `fold_weight` over every node of `m`'s graph (in order, rebuilding it): what
/// `store` does during extraction, for a graph assembled from blocks stored without it.
/// The same fold of the same value is done once.
pub fn fold_weights(m: &mut Module) {
    let old = std::mem::take(&mut m.graph);
    let mut g = Graph {
        name: old.name.clone(),
        ..Graph::default()
    };
    let mut map: Vec<Option<ValueId>> = vec![None; old.values.len()];
    for &v in &old.inputs {
        let val = old.value(v);
        map[v.0 as usize] = Some(g.add_input(&val.name, val.ty.clone()));
    }
    for (i, val) in old.values.iter().enumerate() {
        if let ValueDef::Weight(_) = val.def {
            map[i] = Some(g.add_value(val.name.clone(), val.ty.clone(), val.def.clone()));
        }
    }
    let mut memo: HashMap<String, ValueId> = HashMap::new();
    let get = |map: &[Option<ValueId>], v: ValueId| map.get(v.0 as usize).copied().flatten();
    for n in &old.nodes {
        let Some(ins) = n
            .inputs
            .iter()
            .map(|&v| get(&map, v))
            .collect::<Option<Vec<_>>>()
        else {
            // Operands not built (cannot happen in a topological graph): keep the old one.
            m.graph = old;
            return;
        };
        if n.outputs.len() == 1 && !n.op.flags().has(Flags::STATEFUL) {
            let mut key = format!("{}({:?})", n.op, ins);
            for (k, a) in &n.attrs {
                key.push_str(&format!(" {k}={}", llmc_ir::text::print_attr(a)));
            }
            let folded = match memo.get(&key) {
                Some(&v) => Some(v),
                None => fold_weight(m, &mut g, n.op, &ins, &n.attrs),
            };
            if let Some(v) = folded {
                memo.insert(key, v);
                map[n.outputs[0].0 as usize] = Some(v);
                continue;
            }
        }
        let nid = NodeId(g.nodes.len() as u32);
        let outs: Vec<ValueId> = n
            .outputs
            .iter()
            .enumerate()
            .map(|(k, &o)| {
                let val = old.value(o);
                let nv = g.add_value(val.name.clone(), val.ty.clone(), ValueDef::Node(nid, k));
                map[o.0 as usize] = Some(nv);
                nv
            })
            .collect();
        g.nodes.push(Node {
            op: n.op,
            inputs: ins,
            outputs: outs,
            attrs: n.attrs.clone(),
        });
    }
    let Some(outs) = old
        .outputs
        .iter()
        .map(|&v| get(&map, v))
        .collect::<Option<Vec<_>>>()
    else {
        m.graph = old;
        return;
    };
    // A returned value that became a folded weight keeps its node (outputs are nodes).
    if outs
        .iter()
        .any(|&v| !matches!(g.value(v).def, ValueDef::Node(..)) && !g.inputs.contains(&v))
    {
        m.graph = old;
        return;
    }
    g.outputs = outs;
    m.graph = g;
}

/// A weight's dims when all are constant and non-negative.
fn weight_dims(w: &llmc_ir::Weight) -> Option<Vec<usize>> {
    w.shape
        .as_consts()?
        .into_iter()
        .map(|d| usize::try_from(d).ok())
        .collect()
}

/// The tensor of an f32 weight with data, or of a constant node.
fn known_tensor(m: &Module, g: &Graph, v: ValueId) -> Option<(llmc_ir::Tensor, bool)> {
    use llmc_ir::{Attr, DType, Op};
    match g.value(v).def.clone() {
        ValueDef::Weight(wid) => {
            let w = m.weights.get(wid.0 as usize)?;
            if w.dtype != DType::F32 {
                return None;
            }
            let shape = weight_dims(w)?;
            let t = llmc_ir::interp::weight_tensor(w.dtype, &shape, w.data.bytes()?).ok()?;
            Some((t, true))
        }
        ValueDef::Node(nid, 0) => {
            let n = g.nodes.get(nid.0 as usize)?;
            match n.attrs.get("value").filter(|_| n.op == Op::Constant) {
                Some(Attr::Tensor(t)) => Some((t.clone(), false)),
                _ => None,
            }
        }
        _ => None,
    }
}

/// A transpose of an f32 weight with data or of a constant, and a product of such
/// tensors (a weight scaled by a constant), are done now: the result is a new weight
/// (`NAME.T`, `NAME.scaled`) when a weight is involved, else a new constant. `None`
/// leaves the node to run.
fn fold_weight(
    m: &mut Module,
    g: &mut Graph,
    op: llmc_ir::Op,
    ins: &[ValueId],
    attrs: &llmc_ir::Attrs,
) -> Option<ValueId> {
    use llmc_ir::{Attr, DType, Op};
    if let (Op::Transpose, [v]) = (op, ins) {
        if let Some(t) = transpose_plain_weight(m, g, *v, attrs) {
            return Some(t);
        }
    }
    let suffix = match (op, ins) {
        (Op::Transpose, [_]) => "T",
        (Op::Mul, [_, _]) => "scaled",
        _ => return None,
    };
    let mut ts = Vec::new();
    let mut weight = false;
    for &v in ins {
        let (t, w) = known_tensor(m, g, v)?;
        weight |= w;
        ts.push(t);
    }
    let refs: Vec<&llmc_ir::Tensor> = ts.iter().collect();
    let mut ctx = llmc_ir::interp::EvalCtx::default();
    let out = op.eval(&refs, attrs, &mut ctx).ok()?.into_iter().next()?;
    // The operand named after: the weight (for a product, the larger operand).
    let (mut first, mut len) = (*ins.first()?, 0);
    for (&v, t) in ins.iter().zip(&ts) {
        if t.to_f64().len() > len {
            (first, len) = (v, t.to_f64().len());
        }
    }
    let base = match g.value(first).def {
        ValueDef::Weight(wid) => m.weights.get(wid.0 as usize)?.name.clone(),
        _ => g.value(first).name.clone(),
    };
    let name = format!("{base}.{suffix}");
    if weight && out.dtype == DType::F32 {
        let bytes: Vec<u8> = out
            .to_f64()
            .iter()
            .flat_map(|&v| (v as f32).to_le_bytes())
            .collect();
        let dims: Vec<i64> = out.shape.iter().map(|&d| d as i64).collect();
        let new_shape = llmc_ir::Shape::of(&dims);
        let wid = llmc_ir::WeightId(m.weights.len() as u32);
        m.weights.push(llmc_ir::Weight {
            name: name.clone(),
            dtype: DType::F32,
            shape: new_shape.clone(),
            data: llmc_ir::WeightData::Owned(std::sync::Arc::new(bytes)),
        });
        return Some(g.add_value(
            name,
            TensorType::new(DType::F32, new_shape),
            ValueDef::Weight(wid),
        ));
    }
    if weight {
        return None;
    }
    let mut a = llmc_ir::Attrs::new();
    a.insert("value".into(), Attr::Tensor(out));
    let ty = Op::Constant.infer(&[], &a).ok()?.into_iter().next()?;
    let id = NodeId(g.nodes.len() as u32);
    let v = g.add_value(name, ty, ValueDef::Node(id, 0));
    g.nodes.push(Node {
        op: Op::Constant,
        inputs: Vec::new(),
        outputs: vec![v],
        attrs: a,
    });
    Some(v)
}

/// A transpose of a weight of a plain type other than f32 (f16, bf16, integers: f32
/// goes through the interpreter above) with data, done now by moving its elements'
/// bytes: the new weight `NAME.T`. An f16 ONNX export's `matmul` becomes a `linear`
/// over the transposed weight, which would otherwise be transposed at every run.
fn transpose_plain_weight(
    m: &mut Module,
    g: &mut Graph,
    v: ValueId,
    attrs: &llmc_ir::Attrs,
) -> Option<ValueId> {
    use llmc_ir::{AttrsExt, DType};
    let ValueDef::Weight(wid) = g.value(v).def else {
        return None;
    };
    let w = m.weights.get(wid.0 as usize)?;
    if w.dtype == DType::F32 || w.dtype.is_quantized() {
        return None;
    }
    let es = w.dtype.block_bytes();
    let dims = weight_dims(w)?;
    let rank = dims.len();
    let perm: Vec<usize> = match attrs.ints("perm") {
        Some(p) => p
            .iter()
            .map(|&d| usize::try_from(d).ok())
            .collect::<Option<_>>()?,
        None => (0..rank).rev().collect(),
    };
    let mut seen = vec![false; rank];
    if perm.len() != rank
        || perm
            .iter()
            .any(|&d| d >= rank || std::mem::replace(&mut seen[d], true))
    {
        return None;
    }
    let bytes = w.data.bytes()?;
    let n: usize = dims.iter().product();
    if bytes.len() != n * es {
        return None;
    }
    // Element strides of the source; output index i walks the permuted dims.
    let mut stride = vec![1usize; rank];
    for d in (0..rank.saturating_sub(1)).rev() {
        stride[d] = stride[d + 1] * dims[d + 1];
    }
    let out_dims: Vec<usize> = perm.iter().map(|&p| dims[p]).collect();
    let mut out = vec![0u8; bytes.len()];
    let mut idx = vec![0usize; rank];
    for o in 0..n {
        let src: usize = idx.iter().zip(&perm).map(|(&i, &p)| i * stride[p]).sum();
        out[o * es..(o + 1) * es].copy_from_slice(&bytes[src * es..(src + 1) * es]);
        for d in (0..rank).rev() {
            idx[d] += 1;
            if idx[d] < out_dims[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    let name = format!("{}.T", w.name);
    let dtype = w.dtype;
    let shape = llmc_ir::Shape::of(&out_dims.iter().map(|&d| d as i64).collect::<Vec<_>>());
    let nid = llmc_ir::WeightId(m.weights.len() as u32);
    m.weights.push(llmc_ir::Weight {
        name: name.clone(),
        dtype,
        shape: shape.clone(),
        data: llmc_ir::WeightData::Owned(std::sync::Arc::new(out)),
    });
    Some(g.add_value(name, TensorType::new(dtype, shape), ValueDef::Weight(nid)))
}

/// Preferred names: the first original value (in graph order) each class held.
pub fn class_names(m: &Module, egraph: &EGraph, class_of: &[Option<Id>]) -> HashMap<Id, String> {
    let mut names = HashMap::new();
    for (i, c) in class_of.iter().enumerate() {
        if let (Some(c), Some(v)) = (c, m.graph.values.get(i)) {
            if matches!(v.def, ValueDef::Node(..)) {
                names
                    .entry(egraph.find(*c))
                    .or_insert_with(|| v.name.clone());
            }
        }
    }
    names
}
