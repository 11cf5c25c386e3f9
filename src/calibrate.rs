//! `--calibration FILE`: the statistics GPTQ, AWQ, pruning and static activation
//! scales measure against. The unquantized model is run on the text (a decoder on
//! windows of it; an encoder on its lines, packed whole into windows) and, for every
//! linear input the quantize pass would touch (`llmc_passes::quant::calibration_points`:
//! the rows the Q/K/V, output, gate/up and down projections read), `XᵀX` and each
//! column's largest `|x|` are accumulated.
//!
//! The products are computed by the model itself: a copy of the graph gets, per
//! input `x[1, s, k]` (as rows `[s, k]`), `matmul(transpose(x), x)` and
//! `reduce_max(abs(x))` returned as outputs, and is compiled and run through the CPU
//! path like any module (`run_compiled`'s machinery), one process per window of tokens
//! so each starts from an empty KV cache. Only the `k x k` products and `k` maxima
//! come back, never the activations.

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

/// The longest window of whole lines an encoder is calibrated on.
const ENCODER_WINDOW: usize = 256;

/// Runs `m` (an unquantized decoder in its one-sequence form) on the first `tokens`
/// tokens of `file` and returns `XᵀX` per weight the quantize pass would GPTQ.
pub fn calibrate(m: &Module, file: &Path, tokens: usize) -> Result<Calibration> {
    let t0 = Instant::now();
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("--calibration {}", file.display()))?;
    let io = calibration_io(m)?;
    let tok = generate::load_tokenizer(&m.info)?;
    let windows = match io {
        Io::Decoder { .. } => {
            let mut ids = tok
                .encode(&text, true)
                .with_context(|| format!("--calibration {}: tokenizing", file.display()))?;
            ids.truncate(tokens);
            ids.chunks(WINDOW).map(<[u32]>::to_vec).collect::<Vec<_>>()
        }
        Io::Encoder { .. } => encoder_windows(&tok, &text, tokens, m.info.context_length)
            .with_context(|| format!("--calibration {}: tokenizing", file.display()))?,
    };
    let total: usize = windows.iter().map(Vec::len).sum();
    if total < 64 {
        bail!(
            "--calibration {}: {} tokens; calibration needs at least 64 (a few hundred or \
             more give better statistics)",
            file.display(),
            total
        );
    }
    // An ONNX export's projections are `matmul(x, w[k, n])`: made linears first, as
    // the quantize pass makes them, so its points are found (weights keep their names).
    let mut lm = m.clone();
    llmc_passes::quant::matmuls_to_linears(&mut lm)
        .map_err(|e| anyhow::anyhow!("--calibration: {e}"))?;
    let m = &lm;
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
        // The largest |x| per column, for static activation scales.
        let ax = cm.add1(Op::Abs, &[x2], attrs([]))?;
        let mx = cm.add1(
            Op::ReduceMax,
            &[ax],
            attrs([
                ("axes", Attr::Ints(vec![0])),
                ("keepdims", Attr::Bool(false)),
            ]),
        )?;
        cm.graph.values[mx.0 as usize].name = format!("calib.{i}.amax");
        outs.push(mx);
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
    for (w, chunk) in windows.iter().enumerate() {
        let n = chunk.len();
        let i64s = |v: Vec<i64>| HostTensor {
            dtype: ElemType::I64,
            shape: vec![1, n],
            data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        };
        let ids = i64s(chunk.iter().map(|&t| t as i64).collect());
        let pos = i64s((0..n as i64).collect());
        let inputs = match io {
            Io::Decoder { ids: i, pos: p } => {
                let mut v = vec![i64s(vec![0; n]), i64s(vec![0; n])];
                v[i] = ids;
                v[p] = pos;
                v
            }
            Io::Encoder {
                ids: i,
                mask,
                pos: p,
            } => {
                let mut v = vec![i64s(vec![0; n]); cm.graph.inputs.len()];
                v[i] = ids;
                if let Some(k) = mask {
                    v[k] = i64s(vec![1; n]);
                }
                if let Some(k) = p {
                    v[k] = pos;
                }
                v
            }
        };
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
            let vals = t
                .data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64);
            if i % 2 == 1 {
                // A column maximum: the largest over the windows.
                for (a, b) in s.iter_mut().zip(vals) {
                    *a = a.max(b);
                }
            } else {
                for (a, b) in s.iter_mut().zip(vals) {
                    *a += b;
                }
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
        .zip(sums.chunks_exact(2))
        .map(|((x, _), hm)| {
            let (h, amax) = (&hm[0], &hm[1]);
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
                rows: total,
                amax: amax.clone(),
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
                for (a, b) in sum.amax.iter_mut().zip(&shared[i].amax) {
                    *a = a.max(*b);
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
        total,
        file.display(),
        t0.elapsed().as_secs_f64()
    );
    let source = file.file_name().map_or_else(
        || file.display().to_string(),
        |f| f.to_string_lossy().into(),
    );
    Ok(Calibration::new(hessians, total, source))
}

/// Where the calibration run feeds its tokens.
#[derive(Clone, Copy)]
enum Io {
    /// A decoder's one-sequence form: `%ids`, `%pos`.
    Decoder { ids: usize, pos: usize },
    /// An encoder (the embedding contract): `%ids`, optional `%mask` and `%pos`.
    Encoder {
        ids: usize,
        mask: Option<usize>,
        pos: Option<usize>,
    },
}

/// The graph inputs of a decoder or an encoder, or why `m` is neither.
fn calibration_io(m: &Module) -> Result<Io> {
    if let Ok(io) = generate::find_io(m) {
        return Ok(Io::Decoder {
            ids: io.ids,
            pos: io.pos,
        });
    }
    let g = &m.graph;
    let slot = |name: &str| {
        g.inputs
            .iter()
            .position(|&v| g.value(v).name == name && g.value(v).ty.dtype == llmc_ir::DType::I64)
    };
    let known = g
        .inputs
        .iter()
        .all(|&v| matches!(g.value(v).name.as_str(), "ids" | "mask" | "pos"));
    match slot("ids") {
        Some(ids) if known && m.info.tokenizer != llmc_ir::TokenizerSource::None => {
            Ok(Io::Encoder {
                ids,
                mask: slot("mask"),
                pos: slot("pos"),
            })
        }
        _ => bail!(
            "--calibration needs a decoder language model (%ids, %pos -> %logits) or an \
             encoder with its tokenizer (%ids[, %mask, %pos] -> %embedding)"
        ),
    }
}

/// An encoder's calibration windows: each non-empty line of `text` tokenized alone
/// (special tokens added, as `embed` runs a text), whole lines packed into windows of
/// up to [`ENCODER_WINDOW`] tokens, `tokens` in all.
fn encoder_windows(
    tok: &llmc_runtime::tokenizer::Tokenizer,
    text: &str,
    tokens: usize,
    context: Option<i64>,
) -> Result<Vec<Vec<u32>>> {
    let cap = context.map_or(ENCODER_WINDOW, |c| (c.max(1) as usize).min(ENCODER_WINDOW));
    let mut windows: Vec<Vec<u32>> = vec![Vec::new()];
    let mut total = 0;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if total >= tokens {
            break;
        }
        let mut ids = tok.encode(line, true)?;
        ids.truncate(cap);
        let last = windows.last_mut().expect("one window");
        if last.len() + ids.len() > cap {
            windows.push(Vec::new());
        }
        total += ids.len();
        windows.last_mut().expect("one window").extend(ids);
    }
    windows.retain(|w| !w.is_empty());
    Ok(windows)
}
