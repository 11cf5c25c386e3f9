//! Optimization passes over the llmc IR and the pass manager that runs them. A pass is
//! a plain function over the module with a name; each `-O` level is one readable list
//! of pass names (`pipeline`), and the manager (`manager`) runs a list with the
//! instrumentation users tune with: `--verify-each`, `--time-passes` and the
//! LLVM/MLIR-named IR dumps (`--print-ir-after-all`, `--dump-dir`, ...).
//!
//! The rewrites here are the classic ones (constant folding, common-subexpression
//! elimination, dead-code elimination); memory planning is an analysis the backend
//! consumes. The e-graph pass lives in `egraph/` and takes the `egraph` slot of the
//! `-O3` pipeline.

pub mod cse;
pub mod dce;
pub mod egraph;
pub mod fold;
pub mod fuse_elementwise;
pub mod fuse_epilogue;
pub mod kv_derive;
pub mod manager;
pub mod merge;
pub mod pipeline;
pub mod prune;
pub mod quant;
mod rewrite;
pub mod serving;

pub use manager::{optimize, run_passes, Instrument, PassReport, PassRow};
pub use pipeline::{find_pass, parse_pipeline, pipeline_for_level, Pass, PASSES};

use llmc_ir::Module;

/// Did a pass change the module?
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Changed {
    /// The module is as it was.
    No,
    /// Something was rewritten.
    Yes,
}

impl From<bool> for Changed {
    fn from(b: bool) -> Changed {
        if b {
            Changed::Yes
        } else {
            Changed::No
        }
    }
}

/// What every pass may consult: the level it runs at and the limits it keeps to.
#[derive(Clone, Debug)]
pub struct PassContext {
    /// The `-O` level (0..=3) the pipeline was chosen for (3 for a custom pipeline).
    pub opt_level: u8,
    /// Constant folding leaves results with more elements than this unfolded (a folded
    /// constant is stored inline in the IR and in the executable's data).
    pub fold_max_elems: usize,
    /// `--quantize`: what the `quantize` pass turns the weights into (`None`: the
    /// pass does nothing).
    pub quantize: Option<quant::QuantSpec>,
    /// `--calibration FILE`: what the unquantized model's linears read on a text, for
    /// `quantize`'s GPTQ.
    pub calibration: Option<std::sync::Arc<quant::Calibration>>,
    /// `--prune`: what the `prune` pass removes (`None`: the pass does nothing).
    pub prune: Option<prune::PruneSpec>,
    /// `--act-quant int8|int16`: the bits the `act-quant` pass gives block-quantized
    /// linears' run-time activation blocks (`None`: the pass does nothing).
    pub act_bits: Option<u8>,
    /// `--act-quant int8-static`: the `act-quant` pass gives each linear the ranges of
    /// its input measured on the calibration (`act_amax`), fixed scales instead of
    /// run-time ones.
    pub act_static: bool,
}

impl Default for PassContext {
    fn default() -> PassContext {
        PassContext {
            opt_level: 2,
            fold_max_elems: 1 << 20,
            quantize: None,
            calibration: None,
            prune: None,
            act_bits: None,
            act_static: false,
        }
    }
}

/// A pass's function: rewrites the module in place and says whether it changed it.
pub type PassFn = fn(&mut Module, &PassContext) -> Result<Changed, PassError>;

/// A pass manager or pass error, naming the pass, flag or file involved.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    /// `--passes=` or a dump flag named a pass that does not exist.
    #[error("unknown pass `{name}`{context}; known passes: {known}")]
    UnknownPass {
        /// The name given.
        name: String,
        /// Where it was given (` in --print-ir-after`), possibly empty.
        context: String,
        /// The known pass names, comma-separated.
        known: String,
    },
    /// The verifier rejected the module a pass produced.
    #[error("the module does not verify after pass `{pass}`:\n{errors}")]
    Verify {
        /// The pass that ran last.
        pass: String,
        /// Every problem found.
        errors: llmc_ir::verify::VerifyErrors,
    },
    /// A pass failed.
    #[error("pass `{pass}`: {msg}")]
    Pass {
        /// The pass.
        pass: String,
        /// What went wrong (naming the node or value).
        msg: String,
    },
    /// A dump could not be written.
    #[error("{path}: {msg}")]
    Io {
        /// The file or stream.
        path: String,
        /// The error.
        msg: String,
    },
}

thread_local! {
    static NOTE: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// A pass leaves one line about what it did (the e-graph: "N blocks, K distinct"); the
/// manager puts it under the pass's row of the `--time-passes` table.
pub fn note(text: String) {
    NOTE.with(|n| *n.borrow_mut() = Some(text));
}

/// Takes the note the last pass left, if any.
pub fn take_note() -> Option<String> {
    NOTE.with(|n| n.borrow_mut().take())
}

#[cfg(test)]
mod tests;
