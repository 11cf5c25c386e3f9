//! The e-graph optimizer (egg): the graph goes into an e-graph, themed rewrite rules
//! saturate it within bounds (iterations, nodes, time; the stop reason is reported),
//! the cheapest program under the target's cost model comes back out as the graph.
//! Repeated identical blocks (the layers of an LLM) are matched once per distinct shape
//! by egg's hash-consing: identical subterms share e-classes until their weights differ,
//! and each rule's applier is a plain function of one match, so the work grows with the
//! number of matches, not with the depth of the graph.
//!
//! `explain` reports, for every attention / norm / GEMM-epilogue candidate left in a
//! module, the nearest pattern and what blocked it.

pub mod causal;
pub mod convert;
pub mod cost;
pub mod explain;
pub mod lang;
pub mod matchers;
pub mod rotary;
pub mod rules;

pub use explain::{explain, Explanation};

use egg::{Extractor, Runner, SimpleScheduler, StopReason};
use llmc_ir::Module;
use std::time::{Duration, Instant};

/// Errors of the e-graph pass.
#[derive(Debug, thiserror::Error)]
pub enum EgraphError {
    /// The graph could not be loaded or stored (names the node and what is wrong).
    #[error("e-graph: at {node}: {msg}")]
    Graph {
        /// The node (or place) involved.
        node: String,
        /// What is wrong.
        msg: String,
    },
}

/// Bounds and target of one run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Maximum saturation iterations.
    pub iter_limit: usize,
    /// Maximum e-nodes.
    pub node_limit: usize,
    /// Maximum time.
    pub time_limit: Duration,
    /// Cost model target.
    pub target: cost::Target,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            iter_limit: 12,
            node_limit: 400_000,
            time_limit: Duration::from_secs(10),
            target: cost::Target::cpu(),
        }
    }
}

/// What one run did.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Why saturation stopped (`saturated`, `iteration limit 12`, ...).
    pub stop_reason: String,
    /// Iterations run.
    pub iterations: usize,
    /// E-nodes and e-classes at the end.
    pub enodes: usize,
    /// E-classes at the end.
    pub eclasses: usize,
    /// Nodes in the graph before and after.
    pub nodes_before: usize,
    /// Nodes after.
    pub nodes_after: usize,
    /// Applications per rule name, sorted by name.
    pub applied: Vec<(String, usize)>,
    /// Wall time.
    pub time: Duration,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "egraph: stop reason: {}; {} iteration(s), {} e-nodes in {} e-classes; nodes {} -> {}; {:.3} s",
            self.stop_reason,
            self.iterations,
            self.enodes,
            self.eclasses,
            self.nodes_before,
            self.nodes_after,
            self.time.as_secs_f64()
        )?;
        for (r, n) in &self.applied {
            write!(f, "\n  {r}: {n}")?;
        }
        Ok(())
    }
}

fn stop_text(r: &Option<StopReason>) -> String {
    match r {
        None => "not run".into(),
        Some(StopReason::Saturated) => "saturated".into(),
        Some(StopReason::IterationLimit(n)) => format!("iteration limit {n}"),
        Some(StopReason::NodeLimit(n)) => format!("node limit {n}"),
        Some(StopReason::TimeLimit(s)) => format!("time limit {s} s"),
        Some(StopReason::Other(s)) => format!("stopped: {s}"),
    }
}

/// The pass: rewrites `module` with every rule; returns whether the graph changed.
pub fn run(module: &mut Module) -> Result<bool, EgraphError> {
    let (changed, report) = run_with(module, &Options::default())?;
    log::info!("{report}");
    if std::env::var_os("LLMC_EGRAPH_LOG").is_some() {
        eprintln!("{report}");
    }
    Ok(changed)
}

/// The pass as the pass manager runs it (`egraph` in the `-O3` pipeline).
pub fn pass(
    module: &mut Module,
    _cx: &crate::PassContext,
) -> Result<crate::Changed, crate::PassError> {
    run(module)
        .map(crate::Changed::from)
        .map_err(|e| crate::PassError::Pass {
            pass: "egraph".into(),
            msg: e.to_string(),
        })
}

/// The pass with explicit bounds; also returns what it did.
pub fn run_with(module: &mut Module, opts: &Options) -> Result<(bool, Report), EgraphError> {
    let start = Instant::now();
    let nodes_before = module.graph.nodes.len();
    let loaded = convert::load(module)?;
    let rules = rules::all();
    let runner = Runner::default()
        .with_egraph(loaded.egraph)
        .with_iter_limit(opts.iter_limit)
        .with_node_limit(opts.node_limit)
        .with_time_limit(opts.time_limit)
        .with_scheduler(SimpleScheduler)
        .run(&rules);
    let mut applied: std::collections::BTreeMap<String, usize> = Default::default();
    for it in &runner.iterations {
        for (name, n) in &it.applied {
            *applied.entry(name.to_string()).or_default() += n;
        }
    }
    let egraph = &runner.egraph;
    let names = convert::class_names(module, egraph, &loaded.class_of);
    let extractor = Extractor::new(
        egraph,
        cost::Cost {
            egraph,
            target: opts.target.clone(),
        },
    );
    let before = module.graph.clone();
    convert::store(module, egraph, loaded.root, &extractor, &names)?;
    let changed = module.graph != before;
    let report = Report {
        stop_reason: stop_text(&runner.stop_reason),
        iterations: runner.iterations.len(),
        enodes: egraph.total_number_of_nodes(),
        eclasses: egraph.number_of_classes(),
        nodes_before,
        nodes_after: module.graph.nodes.len(),
        applied: applied.into_iter().collect(),
        time: start.elapsed(),
    };
    Ok((changed, report))
}

#[cfg(test)]
mod tests;
