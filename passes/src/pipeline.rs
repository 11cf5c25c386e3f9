//! The pass registry and the pipelines: every pass by name, and one readable list of
//! names per `-O` level. `--passes=a,b,c` builds a custom list from the same registry.

use crate::{PassError, PassFn};

/// A named pass.
pub struct Pass {
    /// The name used by `--passes`, `--print-ir-after` and the dump files.
    pub name: &'static str,
    /// One line for `--help`-style listings.
    pub summary: &'static str,
    /// The function.
    pub run: PassFn,
}

/// Every pass, by name.
pub static PASSES: &[Pass] = &[
    Pass {
        name: "prune",
        summary: "structured pruning as --prune asks: whole MLP hidden channels removed by measured importance, the down projection refitted on calibration statistics; first in the pipeline when given",
        run: crate::prune::run,
    },
    Pass {
        name: "quantize",
        summary: "weight matrices to GGUF block formats (q8_0, q4_0, q4_1, q5_0, q5_1) or f16/bf16 as --quantize asks (per layer with layerN=), rounded to nearest, after AWQ's channel scaling and/or with GPTQ against calibration statistics; first in the pipeline (after prune) when given",
        run: crate::quant::run,
    },
    Pass {
        name: "fold",
        summary: "constant folding through the reference interpreter",
        run: crate::fold::run,
    },
    Pass {
        name: "cse",
        summary: "common-subexpression elimination (same op, operands, attributes)",
        run: crate::cse::run,
    },
    Pass {
        name: "dce",
        summary: "dead-code elimination (stateful nodes stay)",
        run: crate::dce::run,
    },
    Pass {
        name: "egraph",
        summary: "e-graph rewrites: attention to flash_attention, norm and epilogue fusion, layout and algebra",
        run: crate::egraph::pass,
    },
    Pass {
        name: "merge",
        summary: "GEMM merging: linears sharing an input (Q/K/V, gate/up) become one linear over concatenated weights + split or glu",
        run: crate::merge::run,
    },
    Pass {
        name: "fuse-epilogue",
        summary: "a linear's single-use result's residual add (residual = 1) or, for float weights, its glu (glu = ACT) becomes the linear's store: one kernel and one temporary fewer each",
        run: crate::fuse_epilogue::run,
    },
    Pass {
        name: "fuse-elementwise",
        summary: "single-use elementwise chains into one fused_elementwise loop",
        run: crate::fuse_elementwise::run,
    },
    Pass {
        name: "act-quant",
        summary: "block-quantized linears quantize their activations to int8 blocks of 32 at run time instead of int16, as --act-quant int8 asks (llama.cpp's Q8 activations; VNNI's u8·s8 products); last in the pipeline when given",
        run: crate::quant::act::run,
    },
    Pass {
        name: "serving",
        summary: "decoder to the engine's step over a flat token batch: kv_append + attention become paged_kv_write + paged_attention over per-layer KV pools (in no -O pipeline: `llmc build` runs it last for decoder LLMs)",
        run: crate::serving::run,
    },
];

/// `-O0`: no rewrites at all.
const O0: &[&str] = &[];
/// `-O1`: the cheap cleanups.
const O1: &[&str] = &["fold", "dce"];
/// `-O2`: plus common subexpressions.
const O2: &[&str] = &["fold", "cse", "dce"];
/// `-O3`: everything: the e-graph pass (fusion, attention to flash_attention) after
/// `cse`, then `merge` (sibling GEMMs into one), residual adds and glus into the
/// linears' stores, then the elementwise chains left fused into single loops; `dce` cleans up
/// what they leave.
const O3: &[&str] = &[
    "fold",
    "cse",
    "egraph",
    "merge",
    "fuse-epilogue",
    "fuse-elementwise",
    "dce",
];

/// The pass named `name`.
pub fn find_pass(name: &str) -> Option<&'static Pass> {
    PASSES.iter().find(|p| p.name == name)
}

/// The known pass names, comma-separated (for error messages).
pub fn known_names() -> String {
    PASSES.iter().map(|p| p.name).collect::<Vec<_>>().join(", ")
}

/// The pipeline of an `-O` level (levels above 3 are 3).
pub fn pipeline_for_level(level: u8) -> Vec<&'static Pass> {
    let names = match level {
        0 => O0,
        1 => O1,
        2 => O2,
        _ => O3,
    };
    // Every name in the lists above is registered (a unit test checks it).
    names.iter().filter_map(|n| find_pass(n)).collect()
}

/// A custom pipeline from `--passes` names (empty names, as in `a,,b`, are skipped).
pub fn parse_pipeline<S: AsRef<str>>(names: &[S]) -> Result<Vec<&'static Pass>, PassError> {
    names
        .iter()
        .map(|n| n.as_ref().trim())
        .filter(|n| !n.is_empty())
        .map(|n| {
            find_pass(n).ok_or_else(|| PassError::UnknownPass {
                name: n.to_string(),
                context: " in --passes".into(),
                known: known_names(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_level_lists_registered_passes() {
        for names in [O0, O1, O2, O3] {
            for n in names {
                assert!(find_pass(n).is_some(), "pipeline names unknown pass {n}");
            }
        }
        assert!(pipeline_for_level(0).is_empty());
        let o3: Vec<&str> = pipeline_for_level(3).iter().map(|p| p.name).collect();
        assert_eq!(o3, O3);
    }

    #[test]
    fn unknown_pass_lists_the_known_ones() {
        let e = parse_pipeline(&["cse", "nope"])
            .err()
            .map(|e| e.to_string());
        let e = e.unwrap_or_default();
        assert!(e.contains("unknown pass `nope`"), "{e}");
        assert!(e.contains("fold, cse, dce"), "{e}");
        let p = parse_pipeline(&["dce", "", "cse"]).map(|p| p.len());
        assert_eq!(p.ok(), Some(2));
    }
}
