//! What the tests that hold llmc to onnxruntime's recorded outputs share: reading the
//! `.npy` files the Python reference scripts write, and comparing outputs elementwise
//! within `atol + rtol * |want|`.

#![allow(dead_code)]

use llmc_ir::{DType, Module, Tensor};
use std::path::Path;

/// Reads a little-endian C-order `.npy` of f32, i64, i32 or bool (what the export
/// scripts write).
pub fn read_npy(path: &Path) -> Tensor {
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
    } else if header.contains("'<i4'") {
        let v = body
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")) as i64)
            .collect();
        Tensor::from_i64(DType::I32, shape, v)
    } else if header.contains("'|b1'") {
        let v = body.iter().map(|&x| i64::from(x != 0)).collect();
        Tensor::from_i64(DType::Bool, shape, v)
    } else {
        panic!("{}: unexpected dtype in {header}", path.display())
    }
}

/// The graph inputs of `m` read from `dir/inputs/<name>.npy`.
pub fn inputs_for(m: &Module, dir: &Path) -> Vec<Tensor> {
    let g = &m.graph;
    g.inputs
        .iter()
        .map(|&v| {
            let name = &g.value(v).name;
            read_npy(&dir.join("inputs").join(format!("{name}.npy")))
        })
        .collect()
}

/// How far one output is from its reference.
#[derive(Clone, Copy, Debug, Default)]
pub struct Diff {
    /// Largest absolute difference.
    pub max_abs: f64,
    /// Largest relative difference over elements with |want| >= 0.01.
    pub max_rel: f64,
    /// Elements out of `atol + rtol * |want|` (NaN counts).
    pub over: usize,
}

/// Elementwise difference of `got` from `want` (same shape, f32), with `atol + rtol *
/// |want|` as the bound.
pub fn diff(got: &Tensor, want: &Tensor, atol: f64, rtol: f64) -> Diff {
    let mut d = Diff::default();
    for (g, w) in got.to_f64().into_iter().zip(want.to_f64()) {
        let e = (g - w).abs();
        d.max_abs = d.max_abs.max(e);
        if w.abs() >= 1e-2 {
            d.max_rel = d.max_rel.max(e / w.abs());
        }
        if e.is_nan() || e > atol + rtol * w.abs() {
            d.over += 1;
        }
    }
    d
}

/// Compares every graph output of `m` (`outs`, in order) with `dir/ort/<name>.npy`.
/// `Ok` carries a one-line summary (worst abs and rel), `Err` names every output out
/// of tolerance.
pub fn compare_outputs(
    m: &Module,
    dir: &Path,
    outs: &[Tensor],
    atol: f64,
    rtol: f64,
) -> Result<String, String> {
    let g = &m.graph;
    if outs.len() != g.outputs.len() {
        return Err(format!(
            "{} outputs, the graph has {}",
            outs.len(),
            g.outputs.len()
        ));
    }
    let mut bad = Vec::new();
    let (mut worst_abs, mut worst_rel) = (0f64, 0f64);
    for (&v, got) in g.outputs.iter().zip(outs) {
        let name = &g.value(v).name;
        let want = read_npy(&dir.join("ort").join(format!("{name}.npy")));
        if got.shape != want.shape {
            bad.push(format!(
                "{name}: shape {:?}, ort {:?}",
                got.shape, want.shape
            ));
            continue;
        }
        if got.dtype != DType::F32 {
            bad.push(format!("{name}: dtype {}", got.dtype));
            continue;
        }
        let d = diff(got, &want, atol, rtol);
        worst_abs = worst_abs.max(d.max_abs);
        worst_rel = worst_rel.max(d.max_rel);
        if d.over > 0 {
            bad.push(format!(
                "{name}: {} elements out of tolerance, max abs {:.3e}, max rel {:.3e}",
                d.over, d.max_abs, d.max_rel
            ));
        }
    }
    if bad.is_empty() {
        Ok(format!(
            "{} outputs, max abs {worst_abs:.3e}, max rel {worst_rel:.3e} (|ort| >= 0.01) \
             (tolerance {atol:.0e} + {rtol:.0e} * |ort|)",
            outs.len()
        ))
    } else {
        Err(bad.join("\n"))
    }
}
