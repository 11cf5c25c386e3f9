//! The e-graph optimizer (egg): the graph goes into an e-graph, themed rewrite rules
//! saturate it within bounds (iterations, nodes, time; the stop reason is reported),
//! the cheapest program under the target's cost model comes back out as the graph.
//! Repeated identical blocks (the layers of an LLM) are found first (`blocks`): one
//! representative per distinct block is saturated and extracted, and the result is
//! instantiated for every copy with its own weights, so the work grows with the number
//! of distinct blocks, not with the depth of the model. A graph with no repetition goes
//! into one e-graph whole.
//!
//! `explain` reports, for every attention / norm / GEMM-epilogue candidate left in a
//! module, the nearest pattern and what blocked it.

pub mod blocks;
pub mod causal;
pub mod convert;
pub mod cost;
pub mod explain;
pub mod gemm;
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
    /// Optimise one representative per repeated block (`blocks`) instead of the whole
    /// graph at once.
    pub blocks: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            iter_limit: 12,
            node_limit: 400_000,
            time_limit: Duration::from_secs(10),
            target: cost::Target::cpu(),
            blocks: true,
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
    /// Segments the graph was cut into (0: optimised whole).
    pub blocks: usize,
    /// Distinct blocks among them (each saturated once).
    pub distinct_blocks: usize,
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
        if self.blocks > 0 {
            write!(
                f,
                "; {} blocks, {} distinct",
                self.blocks, self.distinct_blocks
            )?;
        } else {
            write!(f, "; whole graph")?;
        }
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
    crate::note(if report.blocks > 0 {
        format!(
            "{} blocks, {} distinct; {} e-nodes; {}",
            report.blocks, report.distinct_blocks, report.enodes, report.stop_reason
        )
    } else {
        format!(
            "whole graph; {} e-nodes; {}",
            report.enodes, report.stop_reason
        )
    });
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

/// The pass with explicit bounds; also returns what it did. With `opts.blocks`, a
/// graph with repeated blocks is optimised block by block (falling back to the whole
/// graph, with a log line, if instantiating a block fails).
pub fn run_with(module: &mut Module, opts: &Options) -> Result<(bool, Report), EgraphError> {
    let start = Instant::now();
    let nodes_before = module.graph.nodes.len();
    let before = module.graph.clone();
    let mut report = None;
    let env_off = std::env::var_os("LLMC_EGRAPH_BLOCKS").is_some_and(|v| v == "0");
    if opts.blocks && !env_off {
        let found = blocks::find(module);
        if found.repeats() {
            let saved = (module.weights.len(), module.graph.clone());
            match run_blocks(module, &found, opts) {
                Ok(r) => report = Some(r),
                Err(e) => {
                    log::warn!("egraph: block-wise run failed ({e}); optimising the whole graph");
                    module.weights.truncate(saved.0);
                    module.graph = saved.1;
                }
            }
        }
    }
    let mut report = match report {
        Some(r) => r,
        None => saturate(module, opts, true)?,
    };
    report.nodes_before = nodes_before;
    report.nodes_after = module.graph.nodes.len();
    report.time = start.elapsed();
    Ok((module.graph != before, report))
}

/// One e-graph over `module`'s whole graph: load, saturate, extract, store.
/// `fold_weights`: transposes of weights become new weights now (off for a block
/// representative, whose result is instantiated with other weights first).
fn saturate(
    module: &mut Module,
    opts: &Options,
    fold_weights: bool,
) -> Result<Report, EgraphError> {
    saturate_with(module, opts, fold_weights, &rules::all())
}

/// [`saturate`] with the given rules.
fn saturate_with(
    module: &mut Module,
    opts: &Options,
    fold_weights: bool,
    rules: &[egg::Rewrite<lang::ENode, lang::TypeAnalysis>],
) -> Result<Report, EgraphError> {
    let loaded = convert::load(module)?;
    let runner = Runner::default()
        .with_egraph(loaded.egraph)
        .with_iter_limit(opts.iter_limit)
        .with_node_limit(opts.node_limit)
        .with_time_limit(opts.time_limit)
        .with_scheduler(SimpleScheduler)
        .run(rules);
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
    convert::store(
        module,
        egraph,
        loaded.root,
        &extractor,
        &names,
        fold_weights,
    )?;
    Ok(Report {
        stop_reason: stop_text(&runner.stop_reason),
        iterations: runner.iterations.len(),
        enodes: egraph.total_number_of_nodes(),
        eclasses: egraph.number_of_classes(),
        applied: applied.into_iter().collect(),
        ..Report::default()
    })
}

/// Saturates one representative per distinct block and instantiates each result for
/// every copy; then folds weight transposes, merges the constants copied into segments
/// (`cse`) and drops what no one reads any more (`dce`).
fn run_blocks(
    module: &mut Module,
    found: &blocks::Blocks,
    opts: &Options,
) -> Result<Report, EgraphError> {
    let mut optimised: std::collections::HashMap<usize, llmc_ir::Graph> = Default::default();
    let mut applied: std::collections::BTreeMap<String, usize> = Default::default();
    let mut report = Report {
        blocks: found.segments.len(),
        distinct_blocks: found.distinct(),
        ..Report::default()
    };
    let mut stops: Vec<String> = Vec::new();
    for (i, seg) in found.segments.iter().enumerate() {
        if found.rep.get(i) != Some(&i) {
            continue;
        }
        let mut sub = Module::new(&module.name);
        sub.weights = module.weights.clone();
        sub.graph = seg.graph.clone();
        let r = saturate(&mut sub, opts, false)?;
        if sub.weights.len() != module.weights.len() {
            return Err(EgraphError::Graph {
                node: format!("block {i}"),
                msg: "the block's rewrite created weights".into(),
            });
        }
        for (name, n) in r.applied {
            *applied.entry(name).or_default() += n;
        }
        report.iterations = report.iterations.max(r.iterations);
        report.enodes += r.enodes;
        report.eclasses += r.eclasses;
        if !stops.contains(&r.stop_reason) {
            stops.push(r.stop_reason);
        }
        optimised.insert(i, sub.graph);
    }
    report.applied = applied.into_iter().collect();
    report.stop_reason = stops.join(", ");
    let g = blocks::instantiate(module, found, &optimised)?;
    module.graph = g;
    convert::fold_weights(module);
    // Constants copied into segments merge again; a segment's results that only the
    // replaced nodes of later segments read (constants, mostly) go, as extraction
    // from one e-graph would never have built them.
    let cx = crate::PassContext::default();
    let merge_err = |e: crate::PassError| EgraphError::Graph {
        node: "block merge".into(),
        msg: e.to_string(),
    };
    crate::cse::run(module, &cx).map_err(merge_err)?;
    crate::dce::run(module, &cx).map_err(merge_err)?;
    // The rules that read values built outside the blocks (the causal mask, rope's
    // cos/sin) run once over the whole graph.
    let r = saturate_with(module, opts, true, &rules::attention::whole_graph_rules())?;
    for (name, n) in r.applied {
        match report.applied.iter_mut().find(|(k, _)| *k == name) {
            Some((_, m)) => *m += n,
            None => report.applied.push((name, n)),
        }
    }
    report.applied.sort();
    // (e-node counts stay the blocks': the whole-graph pass only loads the graph.)
    crate::dce::run(module, &cx).map_err(merge_err)?;
    Ok(report)
}

#[cfg(test)]
mod tests;
