//! Real ONNX exports (torch.onnx.export of all-MiniLM-L6-v2 and SmolLM2-135M, with and
//! without a KV cache) imported by llmc and checked against onnxruntime's outputs.
//!
//! `scripts/onnx-exports` writes the exports, sample inputs and onnxruntime's outputs
//! to `.cache/onnx-exports/<case>/` (`$LLMC_ONNX_EXPORTS` overrides); torch is heavy,
//! so CI does not run it, and each test here skips with a message when its case is
//! absent. Each case is imported with `llmc_frontend::onnx::load`, run in the reference
//! interpreter and, compiled for the CPU, through the backend, on the recorded inputs
//! (the export's sample and `sample2/`, other sizes);
//! every output must match onnxruntime elementwise within `atol + rtol * |ort|` (the
//! tolerances per case are in `CASES`, with why).

use llmc_frontend::onnx;
use llmc_ir::interp::Interpreter;
use llmc_ir::{DType, Module, Tensor};
use std::path::{Path, PathBuf};

/// A recorded export and the tolerance its outputs are held to.
struct Case {
    name: &'static str,
    atol: f64,
    rtol: f64,
}

/// The tolerances. Both sides compute in f32 but sum in different orders (ORT's MLAS
/// kernels block their reductions; llmc's interpreter sums in f64 and rounds per op,
/// the compiled code in f32 tiles), so errors grow with depth and reduction length:
/// - MiniLM: 6 layers, hidden states up to ~6; max abs error observed 2.0e-5
///   (interp) and 3.6e-5 (cpu), held to 1e-4 + 1e-4 * |ort|.
/// - SmolLM2: 30 layers, logits up to ~29 from a 576-long dot product against the
///   tied embedding; max abs error observed 3.8e-5 (interp) and 1.2e-4 (cpu), held to
///   5e-4 + 5e-4 * |ort|. The KV cache outputs (`present.N.key/value`, up to ~16) are
///   held to the same bound.
const CASES: &[Case] = &[
    Case {
        name: "minilm",
        atol: 1e-4,
        rtol: 1e-4,
    },
    Case {
        name: "smollm2-prefill",
        atol: 5e-4,
        rtol: 5e-4,
    },
    Case {
        name: "smollm2-past",
        atol: 5e-4,
        rtol: 5e-4,
    },
    // Optimum's own export (`optimum-cli export onnx --task text-generation-with-past`,
    // sdpa attention, positions from a Range starting at the past length): max abs
    // error observed 4.8e-5 (interp) and 7.2e-5 (cpu) on the logits.
    Case {
        name: "smollm2-optimum",
        atol: 5e-4,
        rtol: 5e-4,
    },
];

fn exports_dir() -> PathBuf {
    std::env::var_os("LLMC_ONNX_EXPORTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .unwrap_or(Path::new("."))
                .join(".cache/onnx-exports")
        })
}

/// The case folder, or `None` (having said why) when it was not exported.
fn case_dir(name: &str) -> Option<PathBuf> {
    let dir = exports_dir().join(name);
    if dir.join("case.json").is_file() && dir.join("model.onnx").is_file() {
        Some(dir)
    } else {
        eprintln!(
            "skipped: {} not found, run scripts/onnx-exports (needs torch; outside CI)",
            dir.display()
        );
        None
    }
}

/// Reads a little-endian C-order `.npy` of f32 or i64 (what the export script writes).
fn read_npy(path: &Path) -> Tensor {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&b[..6], b"\x93NUMPY", "{}: not .npy", path.display());
    let (hlen, start) = match b[6] {
        1 => (u16::from_le_bytes([b[8], b[9]]) as usize, 10),
        _ => (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12),
    };
    let header = std::str::from_utf8(&b[start..start + hlen]).expect("ascii header");
    assert!(
        header.contains("'fortran_order': False"),
        "{}: {header}",
        path.display()
    );
    let shape_txt = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .expect("shape");
    let shape: Vec<usize> = shape_txt
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().expect("dim"))
        .collect();
    let body = &b[start + hlen..];
    if header.contains("'<f4'") {
        let v = body
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Tensor::f32(shape, v)
    } else if header.contains("'<i8'") {
        let v = body
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        Tensor::from_i64(DType::I64, shape, v)
    } else {
        panic!("{}: unexpected dtype in {header}", path.display())
    }
}

fn inputs_for(m: &Module, dir: &Path) -> Vec<Tensor> {
    let g = &m.graph;
    g.inputs
        .iter()
        .map(|&v| {
            let name = &g.value(v).name;
            read_npy(&dir.join("inputs").join(format!("{name}.npy")))
        })
        .collect()
}

/// Max abs and max rel error of each output against onnxruntime; panics with every
/// output out of tolerance.
fn compare(case: &Case, m: &Module, dir: &Path, outs: &[Tensor], engine: &str) {
    let g = &m.graph;
    assert_eq!(outs.len(), g.outputs.len());
    let label = if dir.ends_with("sample2") {
        format!("{}/sample2", case.name)
    } else {
        case.name.to_string()
    };
    let mut bad = Vec::new();
    let (mut worst_abs, mut worst_rel) = (0f64, 0f64);
    for (&v, got) in g.outputs.iter().zip(outs) {
        let name = &g.value(v).name;
        let want = read_npy(&dir.join("ort").join(format!("{name}.npy")));
        assert_eq!(got.shape, want.shape, "{label}/{name}: shape");
        assert_eq!(got.dtype, DType::F32, "{label}/{name}: dtype");
        let (mut max_abs, mut max_rel, mut over) = (0f64, 0f64, 0usize);
        for (g, w) in got.to_f64().into_iter().zip(want.to_f64()) {
            let d = (g - w).abs();
            max_abs = max_abs.max(d);
            if w.abs() >= 1e-2 {
                max_rel = max_rel.max(d / w.abs());
            }
            if d.is_nan() || d > case.atol + case.rtol * w.abs() {
                over += 1;
            }
        }
        worst_abs = worst_abs.max(max_abs);
        worst_rel = worst_rel.max(max_rel);
        if over > 0 {
            bad.push(format!(
                "{name}: {over} elements out of tolerance, max abs {max_abs:.3e}, max rel {max_rel:.3e}"
            ));
        }
    }
    println!(
        "{} [{engine}]: {} outputs, max abs {worst_abs:.3e}, max rel {worst_rel:.3e} (|ort| >= 0.01) \
         (tolerance {:.0e} + {:.0e} * |ort|)",
        label,
        outs.len(),
        case.atol,
        case.rtol
    );
    assert!(
        bad.is_empty(),
        "{} [{engine}] differs from onnxruntime:\n{}",
        label,
        bad.join("\n")
    );
}

fn case(name: &str) -> &'static Case {
    CASES
        .iter()
        .find(|c| c.name == name)
        .expect("case listed in CASES")
}

/// The recorded input sets of a case: the export's own and, when written,
/// `sample2/` (other sizes: the import must not be specialised to the first).
fn samples(dir: &Path) -> Vec<PathBuf> {
    [dir.to_path_buf(), dir.join("sample2")]
        .into_iter()
        .filter(|d| d.join("ort").is_dir())
        .collect()
}

fn check_interp(name: &str) {
    let c = case(name);
    let Some(dir) = case_dir(name) else { return };
    let m = onnx::load(&dir.join("model.onnx")).unwrap_or_else(|e| panic!("{name}: {e}"));
    for sample in samples(&dir) {
        let inputs = inputs_for(&m, &sample);
        let outs = Interpreter::new(&m)
            .run(&inputs)
            .unwrap_or_else(|e| panic!("{}: interpreter: {e}", sample.display()));
        compare(c, &m, &sample, &outs, "interp");
    }
}

fn check_cpu(name: &str) {
    let c = case(name);
    let Some(dir) = case_dir(name) else { return };
    let m = onnx::load(&dir.join("model.onnx")).unwrap_or_else(|e| panic!("{name}: {e}"));
    let samples = samples(&dir);
    let runs: Vec<Vec<Tensor>> = samples.iter().map(|s| inputs_for(&m, s)).collect();
    let opts = llmc_backend::BuildOptions::default();
    let outs = llmc_backend::run::run_compiled(&m, &opts, &runs)
        .unwrap_or_else(|e| panic!("{name}: compiled run: {e}"));
    assert_eq!(outs.len(), samples.len(), "{name}: one result per run");
    for (sample, outs) in samples.iter().zip(&outs) {
        compare(c, &m, sample, outs, "cpu");
    }
}

#[test]
fn minilm_matches_onnxruntime_in_the_interpreter() {
    check_interp("minilm");
}

#[test]
fn minilm_compiled_for_the_cpu_matches_onnxruntime() {
    check_cpu("minilm");
}

#[test]
fn smollm2_prefill_matches_onnxruntime_in_the_interpreter() {
    check_interp("smollm2-prefill");
}

#[test]
fn smollm2_prefill_compiled_for_the_cpu_matches_onnxruntime() {
    check_cpu("smollm2-prefill");
}

#[test]
fn smollm2_with_past_matches_onnxruntime_in_the_interpreter() {
    check_interp("smollm2-past");
}

#[test]
fn smollm2_with_past_compiled_for_the_cpu_matches_onnxruntime() {
    check_cpu("smollm2-past");
}

#[test]
fn smollm2_optimum_export_matches_onnxruntime_in_the_interpreter() {
    check_interp("smollm2-optimum");
}

#[test]
fn smollm2_optimum_export_compiled_for_the_cpu_matches_onnxruntime() {
    check_cpu("smollm2-optimum");
}
