//! Common-subexpression elimination: two nodes with the same op, the same operands
//! (in either order for commutative ops) and the same attributes compute the same
//! values, so the later one's results are replaced by the earlier one's. Stateful ops
//! (`kv_append`) are never merged: each call appends to the cache.
//!
//! Graph outputs keep their names: when the duplicate's result is returned by the
//! graph, the surviving value takes that name (if it is not itself returned, in which
//! case both nodes stay).

use crate::rewrite::compact;
use crate::{Changed, PassContext, PassError};
use llmc_ir::ops::Flags;
use llmc_ir::text::print_attr;
use llmc_ir::{Module, ValueId};
use std::collections::{HashMap, HashSet};

/// Runs CSE.
pub fn run(m: &mut Module, _ctx: &PassContext) -> Result<Changed, PassError> {
    let g = &mut m.graph;
    let mut outputs: HashSet<ValueId> = g.outputs.iter().copied().collect();
    let mut repl: HashMap<ValueId, ValueId> = HashMap::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut dead: Vec<usize> = Vec::new();
    for i in 0..g.nodes.len() {
        let n = &g.nodes[i];
        if n.op.flags().has(Flags::STATEFUL) {
            continue;
        }
        let mut ins: Vec<u32> = n
            .inputs
            .iter()
            .map(|v| repl.get(v).copied().unwrap_or(*v).0)
            .collect();
        if n.op.flags().has(Flags::COMMUTATIVE) {
            ins.sort_unstable();
        }
        let mut key = format!("{}({ins:?})", n.op.name());
        for (k, a) in &n.attrs {
            key.push_str(&format!(" {k}={}", print_attr(a)));
        }
        let Some(&orig) = seen.get(&key) else {
            seen.insert(key, i);
            continue;
        };
        let (orig_outs, dup_outs) = (g.nodes[orig].outputs.clone(), n.outputs.clone());
        if orig_outs.len() != dup_outs.len() {
            continue;
        }
        // Both returned: the graph needs two names, so both nodes stay.
        if orig_outs
            .iter()
            .zip(&dup_outs)
            .any(|(o, d)| outputs.contains(o) && outputs.contains(d))
        {
            continue;
        }
        for (&o, &d) in orig_outs.iter().zip(&dup_outs) {
            if outputs.contains(&d) {
                let name = g.values[d.0 as usize].name.clone();
                g.values[o.0 as usize].name = name;
                outputs.insert(o);
            }
            repl.insert(d, o);
        }
        dead.push(i);
    }
    if dead.is_empty() {
        return Ok(Changed::No);
    }
    let mut keep = vec![true; g.nodes.len()];
    for i in dead {
        keep[i] = false;
    }
    compact(g, &keep, &repl);
    Ok(Changed::Yes)
}
