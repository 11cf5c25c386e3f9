//! Dead-code elimination: removes every node none of whose results is read by a live
//! node or returned by the graph. Stateful nodes (`kv_append`, which writes the KV
//! cache) are always live: dropping one would change what later runs see.

use crate::rewrite::{compact, use_counts};
use crate::{Changed, PassContext, PassError};
use llmc_ir::ops::Flags;
use llmc_ir::Module;
use std::collections::HashMap;

/// Runs DCE.
pub fn run(m: &mut Module, _ctx: &PassContext) -> Result<Changed, PassError> {
    let g = &m.graph;
    let mut uses = use_counts(g);
    let mut keep = vec![true; g.nodes.len()];
    // Reverse topological order: a node's death releases its operands.
    for (i, n) in g.nodes.iter().enumerate().rev() {
        if n.op.flags().has(Flags::STATEFUL) {
            continue;
        }
        let read = n
            .outputs
            .iter()
            .any(|v| uses.get(v.0 as usize).is_some_and(|&u| u > 0));
        if !read {
            keep[i] = false;
            for v in &n.inputs {
                if let Some(u) = uses.get_mut(v.0 as usize) {
                    *u = u.saturating_sub(1);
                }
            }
        }
    }
    if keep.iter().all(|&k| k) {
        return Ok(Changed::No);
    }
    compact(&mut m.graph, &keep, &HashMap::new());
    Ok(Changed::Yes)
}
