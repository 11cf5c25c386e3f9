//! Repeated-block detection, so a 30-layer model does not mean a 30× e-graph. The
//! graph's node order is cut into segments at narrow points (where only one short-lived
//! value, the residual stream, crosses), each segment gets a canonical structural
//! signature (ops, attributes, operand wiring, operand types; weights abstracted as
//! parameters by dtype and shape, the `layer` of a stateful op ignored), and segments
//! with equal signatures are copies of one block. The driver (`super::run_with`)
//! optimises one representative per distinct block and instantiates the result for
//! every copy with the copy's own operands, weights and stateful attributes.
//!
//! Any split of a topological order into contiguous segments is sound to optimise piece
//! by piece; where the cuts fall only decides which rewrites can see across them, so the
//! cuts are placed where no fusion pattern (norm, attention, epilogue) can straddle one.

use super::EgraphError;
use llmc_ir::ops::Flags;
use llmc_ir::text::print_attr;
use llmc_ir::{Attrs, Graph, Module, Node, NodeId, ValueDef, ValueId, WeightId};
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::ops::Range;

/// A segment shorter than this is never ended by a cut (it joins the next one).
pub const MIN_SEGMENT: usize = 6;

/// Graphs with fewer nodes than this are optimised whole.
pub const MIN_GRAPH: usize = 64;

/// One segment lifted out of the graph as a standalone sub-graph.
#[derive(Clone, Debug)]
pub struct Segment {
    /// Node range in the original graph.
    pub nodes: Range<usize>,
    /// The canonical signature (equal signatures: the same block).
    pub signature: String,
    /// The sub-graph: inputs are the segment's external non-weight operands, weights
    /// keep their module ids, outputs are the segment's values read after it.
    pub graph: Graph,
    /// Original-graph values standing for the sub-graph's inputs, in order.
    pub params: Vec<ValueId>,
    /// Weights read, in order of first use.
    pub weights: Vec<WeightId>,
    /// Original-graph values standing for the sub-graph's outputs, in order.
    pub outputs: Vec<ValueId>,
    /// Attributes of the stateful nodes, in order.
    pub stateful: Vec<Attrs>,
}

/// The segments of a graph and which are copies of which.
#[derive(Clone, Debug)]
pub struct Blocks {
    /// The segments, in graph order.
    pub segments: Vec<Segment>,
    /// For each segment, the index of the first segment with the same signature.
    pub rep: Vec<usize>,
}

impl Blocks {
    /// Number of distinct blocks.
    pub fn distinct(&self) -> usize {
        self.rep
            .iter()
            .enumerate()
            .filter(|(i, r)| *i == **r)
            .count()
    }

    /// Does some block occur more than once?
    pub fn repeats(&self) -> bool {
        self.distinct() < self.segments.len()
    }
}

/// Where each node result is defined and last read (graph outputs: at the end); `None`
/// for graph inputs and weights.
fn lifetimes(g: &Graph) -> Vec<Option<(usize, usize)>> {
    let n = g.nodes.len();
    let mut life: Vec<Option<(usize, usize)>> = g
        .values
        .iter()
        .map(|v| match v.def {
            ValueDef::Node(nid, _) => Some((nid.0 as usize, nid.0 as usize)),
            // Graph inputs are never counted: a mask is read by every layer, and a
            // past-KV input by one layer each, far from the start.
            ValueDef::Input(_) | ValueDef::Weight(_) => None,
        })
        .collect();
    for (i, node) in g.nodes.iter().enumerate() {
        for v in &node.inputs {
            if let Some(Some((_, last))) = life.get_mut(v.0 as usize) {
                *last = (*last).max(i);
            }
        }
    }
    for v in &g.outputs {
        if let Some(Some((_, last))) = life.get_mut(v.0 as usize) {
            *last = n;
        }
    }
    life
}

/// Cuts the node order into segments: after node `i` when at most one short-lived
/// value (defined at or before `i`, read after it) crosses, that value (if the segment
/// defines it) has two or more readers, and the segment has at least `MIN_SEGMENT`
/// nodes. Long-lived values (masks, position tables, shared
/// constants: alive over more than a quarter of the graph) cross every layer boundary
/// and are not counted.
pub fn cut(g: &Graph) -> Vec<Range<usize>> {
    let n = g.nodes.len();
    let long = (n / 4).max(MIN_SEGMENT * 4);
    // crossing[i]: short-lived values alive across the boundary after node i.
    let mut delta = vec![0i64; n + 1];
    for &(def, last) in lifetimes(g).iter().flatten() {
        if last > def && last - def <= long {
            // Crosses boundaries def..last-1.
            delta[def] += 1;
            delta[last] -= 1;
        }
    }
    // Readers of each value (distinct nodes; a graph output counts as one more).
    let mut readers = vec![0usize; g.values.len()];
    for node in &g.nodes {
        let mut seen: Vec<ValueId> = Vec::with_capacity(node.inputs.len());
        for &v in &node.inputs {
            if !seen.contains(&v) {
                seen.push(v);
                if let Some(r) = readers.get_mut(v.0 as usize) {
                    *r += 1;
                }
            }
        }
    }
    for v in &g.outputs {
        if let Some(r) = readers.get_mut(v.0 as usize) {
            *r += 1;
        }
    }
    let life = lifetimes(g);
    // The one value of the segment crossing a boundary must be read at least twice (a
    // residual stream: the next norm and the next residual add); a value read once is
    // the middle of a chain (a norm's weight multiply, an activation), never cut.
    let chain_continues = |start: usize, i: usize| -> bool {
        g.nodes[start..=i]
            .iter()
            .flat_map(|nd| &nd.outputs)
            .any(|&o| {
                let crosses = life
                    .get(o.0 as usize)
                    .copied()
                    .flatten()
                    .is_some_and(|(d, last)| last > i && last - d <= long);
                crosses && readers.get(o.0 as usize).copied().unwrap_or(0) < 2
            })
    };
    let mut ranges = Vec::new();
    let (mut start, mut alive) = (0usize, 0i64);
    for (i, d) in delta.iter().take(n).enumerate() {
        alive += d;
        if alive <= 1 && i + 1 - start >= MIN_SEGMENT && i + 1 < n && !chain_continues(start, i) {
            ranges.push(start..i + 1);
            start = i + 1;
        }
    }
    if start < n {
        ranges.push(start..n);
    }
    ranges
}

/// Lifts the nodes `r` of `g` into a standalone segment with its signature.
fn lift(m: &Module, g: &Graph, r: Range<usize>, read_after: &[usize]) -> Segment {
    let mut sg = Graph {
        name: g.name.clone(),
        ..Graph::default()
    };
    let mut map: HashMap<ValueId, ValueId> = HashMap::new();
    let mut params = Vec::new();
    let mut weights: Vec<WeightId> = Vec::new();
    let mut stateful = Vec::new();
    let mut sig = String::new();
    let attrs_text = |a: &Attrs, skip_layer: bool| -> String {
        let mut s = String::new();
        for (k, v) in a {
            if skip_layer && k == "layer" {
                continue;
            }
            let _ = write!(s, "{k}={};", print_attr(v));
        }
        s
    };
    for ni in r.clone() {
        let node = &g.nodes[ni];
        let mut ins = Vec::with_capacity(node.inputs.len());
        let mut refs = String::new();
        for &v in &node.inputs {
            if let Some(&nv) = map.get(&v) {
                let _ = write!(refs, "v{},", nv.0);
                ins.push(nv);
                continue;
            }
            let val = g.value(v);
            let nv = match val.def {
                ValueDef::Weight(w) => {
                    let k = weights.iter().position(|&x| x == w).unwrap_or_else(|| {
                        weights.push(w);
                        weights.len() - 1
                    });
                    let wt = m.weights.get(w.0 as usize);
                    let _ = write!(
                        sig,
                        "W{k}:{:?}:{};",
                        wt.map(|w| w.dtype),
                        wt.map(|w| w.shape.to_string()).unwrap_or_default()
                    );
                    sg.add_value(val.name.clone(), val.ty.clone(), val.def.clone())
                }
                ValueDef::Node(d, _)
                    if g.nodes.get(d.0 as usize).is_some_and(|dn| {
                        dn.inputs.is_empty()
                            && dn.outputs.len() == 1
                            && !dn.op.flags().has(Flags::STATEFUL)
                    }) =>
                {
                    // A constant defined elsewhere: copied in, so rules see its value.
                    let dn = &g.nodes[d.0 as usize];
                    let _ = write!(sig, "K:{}:{};", dn.op, attrs_text(&dn.attrs, false));
                    let nid = NodeId(sg.nodes.len() as u32);
                    let nv = sg.add_value(val.name.clone(), val.ty.clone(), ValueDef::Node(nid, 0));
                    sg.nodes.push(Node {
                        op: dn.op,
                        inputs: Vec::new(),
                        outputs: vec![nv],
                        attrs: dn.attrs.clone(),
                    });
                    nv
                }
                _ => {
                    let _ = write!(sig, "P{}:{};", params.len(), val.ty);
                    params.push(v);
                    sg.add_input(&val.name, val.ty.clone())
                }
            };
            map.insert(v, nv);
            let _ = write!(refs, "v{},", nv.0);
            ins.push(nv);
        }
        let is_stateful = node.op.flags().has(Flags::STATEFUL);
        if is_stateful {
            stateful.push(node.attrs.clone());
        }
        let nid = NodeId(sg.nodes.len() as u32);
        let outs: Vec<ValueId> = node
            .outputs
            .iter()
            .enumerate()
            .map(|(k, &o)| {
                let val = g.value(o);
                let nv = sg.add_value(val.name.clone(), val.ty.clone(), ValueDef::Node(nid, k));
                map.insert(o, nv);
                nv
            })
            .collect();
        let _ = write!(
            sig,
            "{}({refs}){{{}}}->{};",
            node.op,
            attrs_text(&node.attrs, is_stateful),
            outs.len()
        );
        sg.nodes.push(Node {
            op: node.op,
            inputs: ins,
            outputs: outs,
            attrs: node.attrs.clone(),
        });
    }
    // Outputs: results read after the segment or returned, in definition order.
    let mut outputs = Vec::new();
    for ni in r.clone() {
        for &o in &g.nodes[ni].outputs {
            if read_after
                .get(o.0 as usize)
                .is_some_and(|&last| last >= r.end)
            {
                if let Some(&nv) = map.get(&o) {
                    let _ = write!(sig, "out v{};", nv.0);
                    sg.outputs.push(nv);
                    outputs.push(o);
                }
            }
        }
    }
    Segment {
        nodes: r,
        signature: sig,
        graph: sg,
        params,
        weights,
        outputs,
        stateful,
    }
}

/// Segments `m`'s graph and groups equal segments.
pub fn find(m: &Module) -> Blocks {
    let g = &m.graph;
    let n = g.nodes.len();
    let ranges = if n < MIN_GRAPH {
        std::iter::once(0..n).collect()
    } else {
        cut(g)
    };
    // Last reader of each value (n: returned).
    let mut read_after = vec![0usize; g.values.len()];
    for (i, node) in g.nodes.iter().enumerate() {
        for v in &node.inputs {
            if let Some(x) = read_after.get_mut(v.0 as usize) {
                *x = (*x).max(i);
            }
        }
    }
    for v in &g.outputs {
        if let Some(x) = read_after.get_mut(v.0 as usize) {
            *x = n;
        }
    }
    let segments: Vec<Segment> = ranges
        .into_iter()
        .map(|r| lift(m, g, r, &read_after))
        .collect();
    let mut first: HashMap<&str, usize> = HashMap::new();
    let rep = segments
        .iter()
        .enumerate()
        .map(|(i, s)| *first.entry(s.signature.as_str()).or_insert(i))
        .collect();
    Blocks { segments, rep }
}

fn err(seg: usize, msg: impl Into<String>) -> EgraphError {
    EgraphError::Graph {
        node: format!("block instance {seg}"),
        msg: msg.into(),
    }
}

/// Assembles the graph from `optimised` (the rewritten sub-graph of each representative,
/// by segment index): every segment becomes its representative's result with the
/// segment's own operands, weights, stateful attributes and value names.
pub fn instantiate(
    m: &Module,
    found: &Blocks,
    optimised: &HashMap<usize, Graph>,
) -> Result<Graph, EgraphError> {
    let old = &m.graph;
    let mut g = Graph {
        name: old.name.clone(),
        ..Graph::default()
    };
    let mut vmap: HashMap<ValueId, ValueId> = HashMap::new();
    let mut wval: HashMap<WeightId, ValueId> = HashMap::new();
    for &v in &old.inputs {
        let val = old.value(v);
        vmap.insert(v, g.add_input(&val.name, val.ty.clone()));
    }
    for (i, val) in old.values.iter().enumerate() {
        if let ValueDef::Weight(w) = val.def {
            let nv = g.add_value(val.name.clone(), val.ty.clone(), val.def.clone());
            vmap.insert(ValueId(i as u32), nv);
            wval.entry(w).or_insert(nv);
        }
    }
    let mut used: HashSet<String> = g.values.iter().map(|v| v.name.clone()).collect();
    for (si, seg) in found.segments.iter().enumerate() {
        let ri = *found
            .rep
            .get(si)
            .ok_or_else(|| err(si, "no representative"))?;
        let rseg = found
            .segments
            .get(ri)
            .ok_or_else(|| err(si, "no representative"))?;
        let opt = optimised
            .get(&ri)
            .ok_or_else(|| err(si, format!("block {ri} was not optimised")))?;
        // The representative's value names, as this copy calls them.
        let names: HashMap<&str, &str> = rseg
            .graph
            .values
            .iter()
            .zip(&seg.graph.values)
            .map(|(a, b)| (a.name.as_str(), b.name.as_str()))
            .collect();
        let mut local: HashMap<ValueId, ValueId> = HashMap::new();
        for (k, &inp) in opt.inputs.iter().enumerate() {
            let p = seg
                .params
                .get(k)
                .ok_or_else(|| err(si, "operand count differs"))?;
            let nv = *vmap
                .get(p)
                .ok_or_else(|| err(si, format!("operand %{} is not built yet", p.0)))?;
            local.insert(inp, nv);
        }
        for (i, val) in opt.values.iter().enumerate() {
            if let ValueDef::Weight(w) = val.def {
                let j =
                    rseg.weights.iter().position(|&x| x == w).ok_or_else(|| {
                        err(si, format!("weight {} is not the block's", val.name))
                    })?;
                let cw = *seg
                    .weights
                    .get(j)
                    .ok_or_else(|| err(si, "weight count differs"))?;
                let nv = match wval.get(&cw) {
                    Some(&v) => v,
                    None => {
                        let w = m
                            .weights
                            .get(cw.0 as usize)
                            .ok_or_else(|| err(si, "bad weight"))?;
                        let ty = llmc_ir::TensorType::new(w.dtype, w.shape.clone());
                        let v = g.add_value(w.name.clone(), ty, ValueDef::Weight(cw));
                        wval.insert(cw, v);
                        v
                    }
                };
                local.insert(ValueId(i as u32), nv);
            }
        }
        let mut k_state = 0usize;
        for n in &opt.nodes {
            let ins = n
                .inputs
                .iter()
                .map(|v| local.get(v).copied())
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| err(si, format!("{}: an operand is not built", n.op)))?;
            let attrs = if n.op.flags().has(Flags::STATEFUL) {
                let (r, c) = (rseg.stateful.get(k_state), seg.stateful.get(k_state));
                k_state += 1;
                match (r, c) {
                    (Some(r), Some(c)) if *r == n.attrs => c.clone(),
                    _ => return Err(err(si, format!("{}: stateful node not matched", n.op))),
                }
            } else {
                n.attrs.clone()
            };
            let nid = NodeId(g.nodes.len() as u32);
            let mut outs = Vec::with_capacity(n.outputs.len());
            for (k, &o) in n.outputs.iter().enumerate() {
                let val = opt.value(o);
                let base = names
                    .get(val.name.as_str())
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| {
                        if si == ri {
                            val.name.clone()
                        } else if val.name.bytes().all(|c| c.is_ascii_digit()) {
                            // A number the rewrite made up: a fresh one here.
                            g.values.len().to_string()
                        } else {
                            format!("{}.b{si}", val.name)
                        }
                    });
                let mut name = base.clone();
                let mut t = 1;
                while used.contains(&name) {
                    name = format!("{base}.{t}");
                    t += 1;
                }
                used.insert(name.clone());
                let nv = g.add_value(name, val.ty.clone(), ValueDef::Node(nid, k));
                local.insert(o, nv);
                outs.push(nv);
            }
            g.nodes.push(Node {
                op: n.op,
                inputs: ins,
                outputs: outs,
                attrs,
            });
        }
        if k_state != seg.stateful.len() {
            return Err(err(si, "stateful node count differs"));
        }
        for (k, &o) in opt.outputs.iter().enumerate() {
            let ov = *seg
                .outputs
                .get(k)
                .ok_or_else(|| err(si, "result count differs"))?;
            let nv = *local
                .get(&o)
                .ok_or_else(|| err(si, format!("result {k} is not built")))?;
            vmap.insert(ov, nv);
        }
    }
    for &o in &old.outputs {
        let nv = *vmap.get(&o).ok_or_else(|| {
            err(
                0,
                format!("graph output {} is not built", old.value(o).name),
            )
        })?;
        g.outputs.push(nv);
    }
    // Graph outputs keep their names (a copy's intermediate may have taken one).
    for (&o, &nv) in old.outputs.iter().zip(&g.outputs.clone()) {
        let want = old.value(o).name.clone();
        if g.values[nv.0 as usize].name != want && !g.inputs.contains(&nv) {
            if let Some(other) = g.values.iter_mut().find(|x| x.name == want) {
                other.name = format!("{want}.old");
            }
            g.values[nv.0 as usize].name = want;
        }
    }
    Ok(g)
}
