//! The quantizers against gguf-py (`gguf.quants.quantize`, which reproduces llama.cpp's
//! reference quantizer bit for bit): real SmolLM2 matrices from the HF f32 folder and
//! synthetic blocks built to hit the edge cases (ties for the largest magnitude,
//! constant and zero blocks, values on rounding boundaries, tiny and huge scales) must
//! give the same bytes, 0 differing. Then the `quantize` pass on the whole model: the
//! dtypes, the llama-quantize mix (tied embedding in q8_0) and the bytes of every
//! matrix it wrote.
//!
//! Needs `$LLMC_MODELS/SmolLM2-135M-Instruct-hf` and a Python with `gguf` and `numpy`
//! (`$LLMC_PYTHON`, else the repository's `.venv`, else `python3`); skips with a message
//! when either is missing.

use llmc_ir::{DType, Module, Op};
use llmc_passes::quant::{gguf, QuantSpec};
use llmc_passes::PassContext;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn models() -> PathBuf {
    std::env::var_os("LLMC_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".cache/models"))
}

/// A Python that can `import gguf, numpy`.
fn python() -> Option<PathBuf> {
    let mut cands: Vec<PathBuf> = std::env::var_os("LLMC_PYTHON")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    cands.push(root().join(".venv/bin/python"));
    cands.push("python3".into());
    let found = cands.into_iter().find(|p| {
        Command::new(p)
            .args(["-c", "import gguf.quants, numpy"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if found.is_none() {
        eprintln!("skipped: no Python with the gguf package (set LLMC_PYTHON or create .venv)");
    }
    found
}

const SCRIPT: &str = r#"
import sys, numpy as np
from gguf.quants import quantize
from gguf import GGMLQuantizationType as T
src, k, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
x = np.fromfile(src, dtype="<f4").reshape(-1, k)
for name in sys.argv[4:]:
    quantize(x, T[name.upper()]).tofile(out + "." + name)
"#;

const FORMATS: [DType; 5] = [
    DType::Q8_0,
    DType::Q4_0,
    DType::Q4_1,
    DType::Q5_0,
    DType::Q5_1,
];

/// gguf-py's bytes for `x` (rows of `k`) in every format.
fn reference(py: &Path, dir: &Path, tag: &str, x: &[f32], k: usize) -> Vec<Vec<u8>> {
    let src = dir.join(format!("{tag}.f32"));
    let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&src, bytes).unwrap();
    let out = dir.join(tag);
    let mut cmd = Command::new(py);
    cmd.args(["-c", SCRIPT])
        .arg(&src)
        .arg(k.to_string())
        .arg(&out);
    cmd.args(FORMATS.iter().map(|d| d.name()));
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "gguf-py failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    FORMATS
        .iter()
        .map(|d| std::fs::read(format!("{}.{}", out.display(), d.name())).unwrap())
        .collect()
}

/// Compares llmc's bytes with gguf-py's; returns the number of differing bytes.
fn compare(py: &Path, dir: &Path, tag: &str, x: &[f32], k: usize) -> usize {
    let refs = reference(py, dir, tag, x, k);
    let mut bad = 0;
    for (d, want) in FORMATS.iter().zip(refs) {
        let got = gguf::quantize(*d, x).unwrap();
        assert_eq!(got.len(), want.len(), "{tag} {d}: length");
        let diff = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
            let bb = d.block_bytes();
            let blk = i / bb;
            eprintln!(
                "{tag} {d}: {diff} bytes differ; first in block {blk}: x = {:?}\n  llmc   {:?}\n  gguf-py {:?}",
                &x[blk * 32..blk * 32 + 32],
                &got[blk * bb..blk * bb + bb],
                &want[blk * bb..blk * bb + bb]
            );
        }
        eprintln!(
            "{tag} {d}: {} elements, {} bytes, {diff} differ",
            x.len(),
            got.len()
        );
        bad += diff;
    }
    bad
}

/// Blocks built to hit the quantizers' edge cases, plus pseudo-random ones.
fn synthetic() -> Vec<f32> {
    let mut x: Vec<f32> = Vec::new();
    let mut block = |f: &dyn Fn(usize) -> f32| x.extend((0..32).map(f));
    block(&|_| 0.0);
    block(&|_| 1.5);
    block(&|_| -2.25);
    block(&|i| {
        if i == 5 {
            -3.0
        } else if i == 9 {
            3.0
        } else {
            0.5
        }
    });
    block(&|i| {
        if i == 9 {
            -3.0
        } else if i == 5 {
            3.0
        } else {
            -0.5
        }
    });
    block(&|i| (i as f32 - 16.0) * 0.25);
    block(&|i| (i as f32 - 15.5) * 8.0);
    block(&|i| (i % 16) as f32 / 15.0);
    block(&|i| (i % 3) as f32 * 1e-7);
    block(&|i| (i as f32 - 16.0) * 1e-30);
    block(&|i| (i as f32 - 16.0) * 1e5);
    block(&|i| (i as f32 - 16.0) * 3e6);
    block(&|i| if i == 0 { 1.0 } else { 0.0 });
    block(&|i| if i == 31 { -1.0 } else { 0.0 });
    block(&|i| 127.0 * (i as f32 - 16.0) / 16.0 + 0.5);
    // Halfway cases for Q8_0 (x / d exactly k + 0.5).
    block(&|i| if i == 0 { 127.0 } else { i as f32 + 0.5 });
    block(&|i| if i == 0 { -127.0 } else { -(i as f32) - 0.5 });
    let mut s = 0x2545_f491_4f6c_dd1du64;
    let mut rnd = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    for b in 0..64 {
        let scale = 10f32.powi(b % 7 - 4);
        let v: Vec<f32> = (0..32).map(|_| rnd() * scale).collect();
        x.extend(v);
    }
    x
}

#[test]
fn quantizers_match_gguf_py_byte_for_byte() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut bad = compare(&py, dir.path(), "synthetic", &synthetic(), 32);
    let hf = models().join("SmolLM2-135M-Instruct-hf");
    if !hf.exists() {
        eprintln!(
            "skipped the real weights: {} not found (scripts/fetch-models)",
            hf.display()
        );
        assert_eq!(bad, 0);
        return;
    }
    let m = llmc_frontend::load(&hf).unwrap();
    for name in [
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.self_attn.v_proj.weight",
        "model.layers.7.mlp.down_proj.weight",
        "model.layers.29.mlp.gate_proj.weight",
        "model.embed_tokens.weight",
    ] {
        let w = m.weight(m.weight_id(name).unwrap());
        assert_eq!(w.dtype, DType::F32, "{name}");
        let dims = w.shape.as_consts().unwrap();
        let x: Vec<f32> = w
            .data
            .bytes()
            .unwrap()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        bad += compare(&py, dir.path(), name, &x, dims[1] as usize);
    }
    assert_eq!(bad, 0, "bytes differing from gguf-py");
}

fn quantized(m: &Module, spec: &str) -> Module {
    let mut q = m.clone();
    let ctx = PassContext {
        quantize: Some(QuantSpec::parse(spec).unwrap()),
        ..Default::default()
    };
    let pass = llmc_passes::find_pass("quantize").unwrap();
    llmc_passes::run_passes(
        &mut q,
        &[pass],
        &ctx,
        &llmc_passes::Instrument {
            verify_each: true,
            ..Default::default()
        },
        &mut std::io::sink(),
    )
    .unwrap();
    q
}

#[test]
fn pass_quantizes_smollm2_like_llama_quantize() {
    let hf = models().join("SmolLM2-135M-Instruct-hf");
    if !hf.exists() {
        eprintln!("skipped: {} not found (scripts/fetch-models)", hf.display());
        return;
    }
    let m = llmc_frontend::load(&hf).unwrap();
    for (spec, fmt, head) in [
        ("q4_0", DType::Q4_0, DType::Q8_0),
        ("q4_1,head=q4_1", DType::Q4_1, DType::Q4_1),
        ("q8_0,head=keep", DType::Q8_0, DType::F32),
    ] {
        let q = quantized(&m, spec);
        let mut n = 0;
        for w in &q.weights {
            let orig = m.weight(m.weight_id(&w.name).unwrap());
            let want = if w.name == "model.embed_tokens.weight" {
                head
            } else if orig.shape.rank() == 2 {
                fmt
            } else {
                DType::F32
            };
            assert_eq!(w.dtype, want, "{spec}: @{}", w.name);
            if want == orig.dtype {
                continue;
            }
            // The bytes are the quantizer's on the original f32 rows.
            let x: Vec<f32> = orig
                .data
                .bytes()
                .unwrap()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            let bytes = w.data.bytes().unwrap();
            assert!(
                bytes == gguf::quantize(want, &x).unwrap().as_slice(),
                "@{}",
                w.name
            );
            n += 1;
        }
        // 7 matrices in each of 30 layers, + the head.
        assert_eq!(n, 30 * 7 + usize::from(head != DType::F32), "{spec}");
        // Nothing else changed: the same ops, the linears read the weights directly.
        let ops = |m: &Module| m.graph.nodes.iter().map(|n| n.op).collect::<Vec<Op>>();
        assert_eq!(ops(&q), ops(&m), "{spec}");
        let text = llmc_ir::text::print(&q);
        assert!(
            text.contains(&format!(
                "weight @model.layers.0.self_attn.q_proj.weight : {fmt}[576, 576]"
            )),
            "{spec}"
        );
    }
}

/// The HF folder holds the published Q4_1 GGUF's weights dequantized to f32, so the
/// pass (q4_1, head q8_0: llama-quantize's Q4_1 mix) must give that file's bytes back
/// for every matrix llama.cpp's converter stores unpermuted (q/k rows are permuted for
/// its rotary layout).
#[test]
fn q4_1_of_the_hf_folder_is_the_published_gguf() {
    let (hf, gg) = (
        models().join("SmolLM2-135M-Instruct-hf"),
        models().join("SmolLM2-135M-Instruct.Q4_1.gguf"),
    );
    if !hf.exists() || !gg.exists() {
        eprintln!("skipped: SmolLM2 HF folder or GGUF not found (scripts/fetch-models)");
        return;
    }
    let q = quantized(&llmc_frontend::load(&hf).unwrap(), "q4_1");
    let g = llmc_frontend::load(&gg).unwrap();
    let mut n = 0;
    for w in &q.weights {
        if w.dtype.is_float() || w.name.contains("q_proj") || w.name.contains("k_proj") {
            continue;
        }
        let gw = g.weight(
            g.weight_id(&w.name)
                .unwrap_or_else(|| panic!("@{}", w.name)),
        );
        assert_eq!(gw.dtype, w.dtype, "@{}", w.name);
        let (a, b) = (w.data.bytes().unwrap(), gw.data.bytes().unwrap());
        let diff = a.iter().zip(b).filter(|(x, y)| x != y).count();
        assert_eq!((a.len(), diff), (b.len(), 0), "@{}", w.name);
        n += 1;
    }
    assert_eq!(n, 30 * 5 + 1);
}
