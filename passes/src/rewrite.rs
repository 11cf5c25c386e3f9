//! The one way passes edit the graph's arenas: mark nodes dead and values replaced,
//! then `compact` rewrites operands and graph outputs through the replacements, drops
//! the dead nodes and their results, and renumbers values and nodes so every id and
//! back-pointer stays consistent (the verifier's invariants). Keeping this in one place
//! means no pass renumbers arenas by hand.

use llmc_ir::{Graph, NodeId, ValueDef, ValueId};
use std::collections::HashMap;

/// How many times each value is read (by nodes and as a graph output), by value id.
pub(crate) fn use_counts(g: &Graph) -> Vec<usize> {
    let mut uses = vec![0usize; g.values.len()];
    for n in &g.nodes {
        for &v in &n.inputs {
            if let Some(u) = uses.get_mut(v.0 as usize) {
                *u += 1;
            }
        }
    }
    for &v in &g.outputs {
        if let Some(u) = uses.get_mut(v.0 as usize) {
            *u += 1;
        }
    }
    uses
}

/// Follows `repl` from `v` to the value that finally stands for it.
fn resolve(repl: &HashMap<ValueId, ValueId>, mut v: ValueId) -> ValueId {
    // A chain is at most as long as the map; a cycle (a pass bug) stops there.
    for _ in 0..=repl.len() {
        match repl.get(&v) {
            Some(&w) if w != v => v = w,
            _ => break,
        }
    }
    v
}

/// Applies replacements and drops the nodes with `keep[i] == false` (and their
/// results), renumbering what remains in the same relative order. Values that are not
/// node results (inputs, weights) are always kept.
pub(crate) fn compact(g: &mut Graph, keep: &[bool], repl: &HashMap<ValueId, ValueId>) {
    for n in &mut g.nodes {
        for v in &mut n.inputs {
            *v = resolve(repl, *v);
        }
    }
    for v in &mut g.outputs {
        *v = resolve(repl, *v);
    }
    let kept = |i: usize| keep.get(i).copied().unwrap_or(true);
    // New node numbers.
    let mut node_map: Vec<Option<u32>> = Vec::with_capacity(g.nodes.len());
    let mut next = 0u32;
    for i in 0..g.nodes.len() {
        if kept(i) {
            node_map.push(Some(next));
            next += 1;
        } else {
            node_map.push(None);
        }
    }
    // New value numbers: node results of dropped nodes go.
    let mut value_map: Vec<Option<u32>> = Vec::with_capacity(g.values.len());
    let mut next = 0u32;
    for val in &g.values {
        let live = match val.def {
            ValueDef::Node(n, _) => node_map.get(n.0 as usize).copied().flatten().is_some(),
            _ => true,
        };
        if live {
            value_map.push(Some(next));
            next += 1;
        } else {
            value_map.push(None);
        }
    }
    let map_v = |v: ValueId| -> ValueId {
        value_map
            .get(v.0 as usize)
            .copied()
            .flatten()
            .map(ValueId)
            // A dangling reference stays out of range, so the verifier reports it.
            .unwrap_or(ValueId(u32::MAX))
    };
    let old_values = std::mem::take(&mut g.values);
    for (i, mut val) in old_values.into_iter().enumerate() {
        if value_map[i].is_none() {
            continue;
        }
        if let ValueDef::Node(n, k) = val.def {
            if let Some(Some(nn)) = node_map.get(n.0 as usize) {
                val.def = ValueDef::Node(NodeId(*nn), k);
            }
        }
        g.values.push(val);
    }
    let old_nodes = std::mem::take(&mut g.nodes);
    for (i, mut n) in old_nodes.into_iter().enumerate() {
        if !kept(i) {
            continue;
        }
        for v in n.inputs.iter_mut().chain(n.outputs.iter_mut()) {
            *v = map_v(*v);
        }
        g.nodes.push(n);
    }
    for v in g.inputs.iter_mut().chain(g.outputs.iter_mut()) {
        *v = map_v(*v);
    }
}
