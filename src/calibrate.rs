//! `--calibration FILE`: the statistics GPTQ (`--quantize FORMAT,gptq`) quantizes
//! against. The unquantized decoder is run on the text and, for every linear input
//! the quantize pass would touch (`llmc_passes::quant::calibration_points`: the rows
//! the Q/K/V, output, gate/up and down projections read), `XᵀX` is accumulated.
//!
//! The products are computed by the model itself: a copy of the graph gets, per
//! input `x[1, s, k]` (as rows `[s, k]`), `matmul(transpose(x), x)` returned as an output, and is
//! compiled and run through the CPU path like any module (`run_compiled`'s machinery),
//! one process per window of tokens so each starts from an empty KV cache. Only the
//! `k x k` products come back, never the activations.

use crate::{generate, optimize, Reduce};
use anyhow::{bail, Context, Result};
use llmc_ir::{attrs, Attr, Dim, Module, Op, Shape};
use llmc_passes::quant::{calibration_points, gptq::Hessian, Calibration};
use llmc_runtime::exec::HostTensor;
use llmc_runtime::plan::ElemType;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// Window length the calibration text is cut into (each from an empty cache).
const WINDOW: usize = 512;

/// Runs `m` (an unquantized decoder in its one-sequence form) on the first `tokens`
/// tokens of `file` and returns `XᵀX` per weight the quantize pass would GPTQ.
pub fn calibrate(m: &Module, file: &Path, tokens: usize) -> Result<Calibration> {
    let t0 = Instant::now();
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("--calibration {}", file.display()))?;
    let io = generate::find_io(m).context("--calibration needs a decoder language model")?;
    let tok = generate::load_tokenizer(&m.info)?;
    let mut ids = tok
        .encode(&text, true)
        .with_context(|| format!("--calibration {}: tokenizing", file.display()))?;
    ids.truncate(tokens);
    if ids.len() < 64 {
        bail!(
            "--calibration {}: {} tokens; GPTQ needs at least 64 (a few hundred or more \
             give better statistics)",
            file.display(),
            ids.len()
        );
    }
    let points = calibration_points(m);
    if points.is_empty() {
        bail!("--calibration: the model has no f32/f16/bf16 linear weights to quantize");
    }
    let mut cm = m.clone();
    let mut outs = Vec::new();
    for (i, (x, _)) in points.iter().enumerate() {
        let r = cm.graph.ty(*x).shape.rank();
        if r < 2 {
            bail!("calibration point {i}: a linear input of rank {r}");
        }
        // x[.., k] -> rows [n, k] (no batch axis: the matmul's outer loop, the one
        // spread over threads, is then the k rows of the product).
        let dims = cm.graph.ty(*x).shape.0.clone();
        let rows = dims[..r - 1].iter().fold(Dim::c(1), |a, d| a.mul(d));
        let shape = Shape(vec![rows, dims[r - 1].clone()]);
        let x2 = cm.add1(Op::Reshape, &[*x], attrs([("shape", Attr::Shape(shape))]))?;
        let xt = cm.add1(
            Op::Transpose,
            &[x2],
            attrs([("perm", Attr::Ints(vec![1, 0]))]),
        )?;
        let h = cm.add1(Op::MatMul, &[xt, x2], attrs([]))?;
        cm.graph.values[h.0 as usize].name = format!("calib.{i}");
        outs.push(h);
    }
    cm.graph.outputs = outs;
    optimize(
        &mut cm,
        3,
        None,
        &Reduce::default(),
        &llmc_passes::Instrument::default(),
    )
    .context("optimizing the calibration graph")?;
    let opts = llmc_backend::BuildOptions {
        cpu: llmc_backend::CpuOptions {
            opt_level: 3,
            ..Default::default()
        },
        dump_dir: None,
        llm: None,
    };
    let work = tempfile::tempdir().context("creating a temporary folder")?;
    let exe = work.path().join("calibrate");
    llmc_backend::build_executable(&cm, &opts, &exe).context("compiling the calibration graph")?;
    let mut sums: Vec<Vec<f64>> = Vec::new();
    for (w, chunk) in ids.chunks(WINDOW).enumerate() {
        let n = chunk.len();
        let i64s = |v: Vec<i64>| HostTensor {
            dtype: ElemType::I64,
            shape: vec![1, n],
            data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        };
        let mut inputs = vec![i64s(vec![0; n]), i64s(vec![0; n])];
        inputs[io.ids] = i64s(chunk.iter().map(|&t| t as i64).collect());
        inputs[io.pos] = i64s((0..n as i64).collect());
        let dir = work.path().join(format!("window{w}"));
        std::fs::create_dir_all(&dir)?;
        let mut res = llmc_backend::run::run_executable_host(&cm, &exe, &dir, &[inputs])
            .with_context(|| format!("running the calibration graph on window {w}"))?;
        let outs = res.pop().unwrap_or_default();
        if sums.is_empty() {
            sums = outs.iter().map(|t| vec![0.0; t.data.len() / 4]).collect();
        }
        for (i, (s, t)) in sums.iter_mut().zip(&outs).enumerate() {
            if t.dtype != ElemType::F32 || t.data.len() != s.len() * 4 {
                bail!(
                    "calibration output {i}: {} bytes of {}, expected f32",
                    t.data.len(),
                    t.dtype.name()
                );
            }
            for (a, b) in s.iter_mut().zip(t.data.chunks_exact(4)) {
                *a += f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64;
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    // Per weight: the sum over the inputs it is read with (one, for every model seen).
    let mut per_weight: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, (_, names)) in points.iter().enumerate() {
        for n in names {
            per_weight.entry(n.clone()).or_default().push(i);
        }
    }
    let shared: Vec<Arc<Hessian>> = points
        .iter()
        .zip(&sums)
        .map(|((x, _), h)| {
            let k = m
                .graph
                .ty(*x)
                .shape
                .0
                .last()
                .and_then(|d| d.as_const())
                .unwrap_or(0) as usize;
            Arc::new(Hessian {
                k,
                h: h.clone(),
                rows: ids.len(),
            })
        })
        .collect();
    let mut hessians = HashMap::new();
    for (name, idx) in per_weight {
        let h = if idx.len() == 1 {
            shared[idx[0]].clone()
        } else {
            let mut sum = (*shared[idx[0]]).clone();
            for &i in &idx[1..] {
                if shared[i].k != sum.k {
                    bail!("weight @{name}: read by linears of different widths");
                }
                for (a, b) in sum.h.iter_mut().zip(&shared[i].h) {
                    *a += b;
                }
                sum.rows += shared[i].rows;
            }
            Arc::new(sum)
        };
        hessians.insert(name, h);
    }
    eprintln!(
        "llmc: calibrated {} linear inputs on {} tokens of {} in {:.1} s",
        points.len(),
        ids.len(),
        file.display(),
        t0.elapsed().as_secs_f64()
    );
    let source = file.file_name().map_or_else(
        || file.display().to_string(),
        |f| f.to_string_lossy().into(),
    );
    Ok(Calibration::new(hessians, ids.len(), source))
}
