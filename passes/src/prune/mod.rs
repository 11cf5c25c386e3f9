//! Structured pruning (`llmc build --prune ffn=PCT`): removes whole channels of each
//! MLP's hidden layer, so every kernel afterwards runs smaller shapes (no sparse
//! format, no special kernel: the gate/up matrices lose rows, the down matrix loses
//! columns, and decode reads fewer bytes).
//!
//! An MLP is found by its shape, not its names: a `linear` (the down projection) whose
//! input is computed from other linears' outputs (gate, up) by elementwise ops only
//! (`silu`, `mul`, `gelu`, casts, ...), every value on the way read only there. Channel
//! `j` of the down projection's input then depends on row `j` of those linears and
//! nothing else, so it can go as a unit.
//!
//! Which channels go: with calibration statistics (`--calibration FILE`, the same
//! `XᵀX` GPTQ uses, here of the down projection's input) a channel's importance is the
//! output energy it carries, `H_jj · ‖W_down[:, j]‖²` (Wanda's `|W|·‖x‖` summed over a
//! column); the down projection is then refitted on the kept channels by least squares
//! (`W' = W·H[:, K]·H[K, K]⁻¹`: the kept channels take over what the removed ones
//! contributed, as far as they correlate), which is layer-wise reconstruction. Without
//! statistics, importance is `‖W_down[:, j]‖² · Σ‖W_in[j, :]‖²` and nothing is
//! refitted. Kept counts are whole blocks of 32, so block formats still fit.

use crate::quant::gptq::{cholesky, dot, DAMP};
use crate::quant::Calibration;
use crate::{Changed, PassContext, PassError};
use llmc_ir::{Dim, Module, NodeId, Op, Shape, ValueDef, ValueId, WeightData, WeightId};
use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

/// What `--prune` asked for.
#[derive(Clone, Debug, PartialEq)]
pub struct PruneSpec {
    /// Fraction of each MLP's hidden channels removed (0..1).
    pub ffn: f64,
    /// Fraction of each attention block's query heads removed (0..1), the same number
    /// in every GQA group.
    pub heads: f64,
    /// Weights set to zero inside the linears' matrices.
    pub sparse: Option<Sparsity>,
}

/// How `sparse=` zeroes weights: in each row, a share of them (`sparse=50%`), or `n` of
/// every `m` consecutive ones (`sparse=2:4`, the pattern sparse tensor cores run).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sparsity {
    /// This share of each row (0..1).
    Share(f64),
    /// `n` zeroed in every `m` consecutive weights of a row.
    NofM(usize, usize),
}

impl fmt::Display for Sparsity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sparsity::Share(x) => write!(f, "{}%", pct(*x)),
            Sparsity::NofM(n, m) => write!(f, "{n}:{m}"),
        }
    }
}

impl fmt::Display for PruneSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if self.ffn > 0.0 || (self.heads == 0.0 && self.sparse.is_none()) {
            parts.push(format!("ffn={}%", pct(self.ffn)));
        }
        if self.heads > 0.0 {
            parts.push(format!("heads={}%", pct(self.heads)));
        }
        if let Some(sp) = self.sparse {
            parts.push(format!("sparse={sp}"));
        }
        f.write_str(&parts.join(","))
    }
}

impl PruneSpec {
    /// Parses `ffn=PCT[,heads=PCT][,sparse=PCT|N:M]` (`ffn=25%`, or a fraction
    /// `ffn=0.25`; `sparse=2:4`).
    pub fn parse(s: &str) -> Result<PruneSpec, String> {
        let mut spec = PruneSpec {
            ffn: 0.0,
            heads: 0.0,
            sparse: None,
        };
        for p in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, val) = p
                .split_once('=')
                .ok_or_else(|| format!("`{p}`: expected ffn=PCT, heads=PCT or sparse=PCT|N:M"))?;
            if key == "sparse" {
                if let Some((n, m)) = val.split_once(':') {
                    let (n, m) = (n.trim().parse::<usize>(), m.trim().parse::<usize>());
                    match (n, m) {
                        (Ok(n), Ok(m)) if n < m && m <= 64 => {
                            spec.sparse = Some(Sparsity::NofM(n, m));
                            continue;
                        }
                        _ => {
                            return Err(format!(
                                "`{p}`: N:M needs whole numbers with N < M <= 64 (2:4)"
                            ))
                        }
                    }
                }
            }
            let frac = match val.strip_suffix('%') {
                Some(pct) => pct.trim().parse::<f64>().map(|v| v / 100.0),
                None => val.trim().parse::<f64>(),
            }
            .map_err(|_| format!("`{p}`: `{val}` is not a percentage (25%) or fraction (0.25)"))?;
            if !(0.0..1.0).contains(&frac) {
                return Err(format!("`{p}`: the share removed must be in [0%, 100%)"));
            }
            match key {
                "ffn" => spec.ffn = frac,
                "heads" => spec.heads = frac,
                "sparse" => spec.sparse = Some(Sparsity::Share(frac)),
                _ => {
                    return Err(format!(
                        "`{key}`: unknown pruning target (ffn, heads, sparse)"
                    ))
                }
            }
        }
        Ok(spec)
    }
}

/// Channel alignment of what is kept.
const ALIGN: usize = 32;

/// A weight a linear reads as operand `k`: directly, or through one cast.
fn weight_of(m: &Module, v: ValueId) -> Option<(WeightId, Option<NodeId>)> {
    match m.graph.value(v).def {
        ValueDef::Weight(w) => Some((w, None)),
        ValueDef::Node(n, 0) if m.graph.node(n).op == Op::Cast => {
            match m.graph.value(m.graph.node(n).inputs[0]).def {
                ValueDef::Weight(w) => Some((w, Some(n))),
                _ => None,
            }
        }
        _ => None,
    }
}

/// How many operands and graph outputs read `v`.
fn readers(m: &Module, v: ValueId) -> usize {
    crate::quant::readers(m, v).len() + m.graph.outputs.iter().filter(|&&x| x == v).count()
}

/// One MLP: the down projection and the linears (gate, up) feeding it through
/// elementwise ops; every value between them, whose last dim is the channel count.
struct Mlp {
    down: NodeId,
    inner: Vec<NodeId>,
    channels: usize,
}

/// Elementwise ops a channel passes through unchanged in position.
fn channelwise(op: Op) -> bool {
    matches!(
        op,
        Op::Mul
            | Op::Add
            | Op::Sub
            | Op::Silu
            | Op::Gelu
            | Op::Relu
            | Op::Sigmoid
            | Op::Tanh
            | Op::Cast
    )
}

/// The MLP whose down projection is node `d`, when the shape above holds.
fn find_mlp(m: &Module, d: NodeId) -> Option<Mlp> {
    let g = &m.graph;
    let down = g.node(d);
    if down.op != Op::Linear || down.inputs.len() != 2 {
        return None;
    }
    let (wd, _) = weight_of(m, down.inputs[1])?;
    let channels = m.weight(wd).shape.as_consts()?.get(1).copied()? as usize;
    let mut inner = Vec::new();
    let mut stack = vec![down.inputs[0]];
    let mut seen = HashSet::new();
    while let Some(v) = stack.pop() {
        if !seen.insert(v) {
            continue;
        }
        let ty = g.ty(v);
        if ty.shape.0.last().and_then(Dim::as_const) != Some(channels as i64)
            || readers(m, v) != 1
            || g.outputs.contains(&v)
        {
            return None;
        }
        let ValueDef::Node(n, 0) = g.value(v).def else {
            return None;
        };
        let node = g.node(n);
        if node.op == Op::Linear {
            // gate/up: a weight [channels, in], optional bias [channels].
            let (w, _) = weight_of(m, node.inputs[1])?;
            if m.weight(w).shape.as_consts()?.first().copied()? != channels as i64 {
                return None;
            }
            if let Some(&b) = node.inputs.get(2) {
                weight_of(m, b)?;
            }
            inner.push(n);
        } else if channelwise(node.op) && node.outputs.len() == 1 {
            for &x in &node.inputs {
                // Scalars (and other broadcast constants) are not channels.
                if g.ty(x).shape.numel().as_const() == Some(1) {
                    continue;
                }
                stack.push(x);
            }
        } else {
            return None;
        }
    }
    if inner.is_empty() {
        return None;
    }
    // Every weight touched is read by this MLP alone.
    let mut ws = vec![down.inputs[1]];
    for &n in &inner {
        ws.extend(g.node(n).inputs[1..].iter().copied());
    }
    for v in ws {
        let (w, cast) = weight_of(m, v)?;
        let wv = m.weight_value(w)?;
        if readers(m, wv) != 1 || cast.is_some_and(|_| readers(m, v) != 1) {
            return None;
        }
    }
    Some(Mlp {
        down: d,
        inner,
        channels,
    })
}

/// Replaces weight `w` (and its value, and a cast of it) by `data` of `shape`.
fn set_weight(m: &mut Module, w: WeightId, shape: Vec<i64>, data: Option<Vec<f32>>) {
    let dtype = m.weight(w).dtype;
    let rec = &mut m.weights[w.0 as usize];
    rec.shape = Shape(shape.iter().map(|&d| Dim::c(d)).collect());
    if let Some(x) = data {
        rec.data = WeightData::Owned(Arc::new(crate::quant::float_bytes(dtype, &x)));
    } else {
        rec.data = WeightData::None;
    }
    let shape = rec.shape.clone();
    if let Some(v) = m.weight_value(w) {
        m.graph.values[v.0 as usize].ty.shape = shape;
    }
}

/// Keeps rows `keep` of the weight a linear reads at `v` (a matrix, or a bias vector).
fn keep_rows(m: &mut Module, v: ValueId, keep: &[usize]) -> Result<(), String> {
    let (w, _) = weight_of(m, v).ok_or("not a weight")?;
    let dims = m.weight(w).shape.as_consts().unwrap_or_default();
    let cols = dims.get(1).copied().unwrap_or(1) as usize;
    let data = match m.weight(w).data.bytes() {
        Some(_) => {
            let x = crate::quant::read_float(m, w)?;
            Some(
                keep.iter()
                    .flat_map(|&r| x[r * cols..(r + 1) * cols].iter().copied())
                    .collect(),
            )
        }
        None => None,
    };
    let mut shape = dims.clone();
    shape[0] = keep.len() as i64;
    set_weight(m, w, shape, data);
    Ok(())
}

/// Recomputes every node's result types from its operands (shapes shrank).
fn retype(m: &mut Module) -> Result<(), String> {
    for i in 0..m.graph.nodes.len() {
        let node = m.graph.nodes[i].clone();
        let tys: Vec<&llmc_ir::TensorType> = node.inputs.iter().map(|&v| m.graph.ty(v)).collect();
        let out = node
            .op
            .infer(&tys, &node.attrs)
            .map_err(|e| format!("node {} ({}): {e}", i, node.op.name()))?;
        for (&o, t) in node.outputs.iter().zip(out) {
            m.graph.values[o.0 as usize].ty = t;
        }
    }
    Ok(())
}

/// Least-squares refit of the down projection `w` (`n x c`) on channels `keep`:
/// `W' = W·H[:, K]·H[K, K]⁻¹` (rows independent: each row solves
/// `H[K, K]·w'ᵀ = H[K, :]·wᵀ`).
/// `damp` is the relative damping of `H[K, K]`'s diagonal. Unlike GPTQ, the refit wants
/// little of it even from few calibration rows: on SmolLM2, 12.5% of the channels out
/// with 1024 calibration tokens, 1% damping gave PPL 77 at ctx 128 and `k/rows` (150%,
/// nearly no refit) 1527: the kept columns as they were cannot stand in for the rest.
fn refit(w: &[f32], n: usize, c: usize, h: &[f64], keep: &[usize], damp: f64) -> Option<Vec<f32>> {
    let k = keep.len();
    let mut hkk = vec![0.0f64; k * k];
    for (a, &i) in keep.iter().enumerate() {
        for (b, &j) in keep.iter().enumerate() {
            hkk[a * k + b] = h[i * c + j];
        }
    }
    let mean = (0..k).map(|i| hkk[i * k + i]).sum::<f64>() / k.max(1) as f64;
    for i in 0..k {
        hkk[i * k + i] += damp * mean;
    }
    let l = cholesky(&hkk, k)?;
    let mut out = vec![0f32; n * k];
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
    let rows_per = n.div_ceil(threads).max(1);
    std::thread::scope(|s| {
        for (t, oc) in out.chunks_mut(rows_per * k).enumerate() {
            let l = &l;
            s.spawn(move || {
                let mut rhs = vec![0.0f64; k];
                for (ri, orow) in oc.chunks_mut(k).enumerate() {
                    let r = t * rows_per + ri;
                    let wr: Vec<f64> = w[r * c..(r + 1) * c].iter().map(|&v| v as f64).collect();
                    // rhs = H[K, :] · w_r
                    for (a, &i) in keep.iter().enumerate() {
                        let hi = &h[i * c..(i + 1) * c];
                        rhs[a] = dot(hi, &wr);
                    }
                    // L y = rhs, then Lᵀ x = y.
                    for a in 0..k {
                        rhs[a] = (rhs[a] - dot(&l[a * k..a * k + a], &rhs[..a])) / l[a * k + a];
                    }
                    // Lᵀ x = y from the last unknown up: x[a] = y[a] / L[a, a], then
                    // row a of L (contiguous) leaves the rest of y.
                    for a in (0..k).rev() {
                        let xa = rhs[a] / l[a * k + a];
                        rhs[a] = xa;
                        for (y, &lv) in rhs[..a].iter_mut().zip(&l[a * k..a * k + a]) {
                            *y -= lv * xa;
                        }
                    }
                    for (o, v) in orow.iter_mut().zip(&rhs) {
                        *o = *v as f32;
                    }
                }
            });
        }
    });
    Some(out)
}

/// The projection whose input columns a pruning removes (an MLP's down projection, an
/// attention block's o projection): its weight, as floats, each column's energy
/// `‖W[:, j]‖²`, and its input statistics when the calibration has them.
struct Out {
    w: WeightId,
    name: String,
    n: usize,
    c: usize,
    x: Vec<f32>,
    col_energy: Vec<f64>,
    hess: Option<Arc<crate::quant::gptq::Hessian>>,
}

impl Out {
    /// The `n x c` weight the linear reads at `v`.
    fn read(m: &Module, v: ValueId, c: usize, cal: Option<&Calibration>) -> Result<Out, String> {
        let (w, _) = weight_of(m, v).ok_or("the projection's weight")?;
        let name = m.weight(w).name.clone();
        let n = m.weight(w).shape.as_consts().unwrap_or_default()[0] as usize;
        let x = crate::quant::read_float(m, w)?;
        let col_energy = (0..c)
            .map(|j| (0..n).map(|r| (x[r * c + j] as f64).powi(2)).sum())
            .collect();
        let hess = cal
            .and_then(|cal| cal.hessian(&name))
            .filter(|h| h.k == c && h.rows > 0);
        Ok(Out {
            w,
            name,
            n,
            c,
            x,
            col_energy,
            hess,
        })
    }

    /// Column `j`'s output energy: `H_jj · ‖W[:, j]‖²` with statistics, else `‖W[:, j]‖²`.
    fn energy(&self, j: usize) -> f64 {
        match &self.hess {
            Some(h) => h.h[j * self.c + j] * self.col_energy[j],
            None => self.col_energy[j],
        }
    }

    /// Keeps columns `keep` (sorted): refitted by least squares on the statistics, or as
    /// they are; the calibration then describes the smaller input. Returns whether it
    /// refitted.
    fn keep_columns(&self, m: &mut Module, keep: &[usize], cal: Option<&Calibration>) -> bool {
        let (n, c, x) = (self.n, self.c, &self.x);
        let refitted = self
            .hess
            .as_ref()
            .and_then(|h| refit(x, n, c, &h.h, keep, DAMP));
        let done = refitted.is_some();
        let cols = refitted.unwrap_or_else(|| {
            (0..n)
                .flat_map(|r| keep.iter().map(move |&j| x[r * c + j]))
                .collect()
        });
        set_weight(m, self.w, vec![n as i64, keep.len() as i64], Some(cols));
        if let Some(cal) = cal {
            cal.select_columns(&self.name, keep.to_vec());
        }
        done
    }
}

/// Prunes one MLP; returns (channels kept, refitted).
fn prune_mlp(
    m: &mut Module,
    mlp: &Mlp,
    frac: f64,
    calibration: Option<&Calibration>,
) -> Result<(usize, bool), String> {
    let c = mlp.channels;
    let keep_n =
        (((c as f64) * (1.0 - frac) / ALIGN as f64).round() as usize * ALIGN).clamp(ALIGN, c);
    if keep_n == c {
        return Ok((c, false));
    }
    let down = Out::read(m, m.graph.node(mlp.down).inputs[1], c, calibration)?;
    let mut score: Vec<f64> = (0..c).map(|j| down.energy(j)).collect();
    if down.hess.is_none() {
        // Without statistics: times each channel's rows in gate/up.
        for &ln in &mlp.inner {
            let (w, _) = weight_of(m, m.graph.node(ln).inputs[1]).ok_or("inner weight")?;
            let x = crate::quant::read_float(m, w)?;
            let cols = x.len() / c;
            for (j, sj) in score.iter_mut().enumerate() {
                *sj *= x[j * cols..(j + 1) * cols]
                    .iter()
                    .map(|&v| (v as f64).powi(2))
                    .sum::<f64>();
            }
        }
    }
    let mut order: Vec<usize> = (0..c).collect();
    order.sort_by(|&a, &b| score[b].total_cmp(&score[a]));
    let mut keep: Vec<usize> = order[..keep_n].to_vec();
    keep.sort_unstable();
    // The down projection: refitted on the kept channels, or their columns as they are.
    let refitted = down.keep_columns(m, &keep, calibration);
    for &ln in &mlp.inner {
        let operands: Vec<ValueId> = m.graph.node(ln).inputs[1..].to_vec();
        for v in operands {
            keep_rows(m, v, &keep)?;
        }
    }
    Ok((keep_n, refitted))
}

/// One attention block's query heads: the q projection, the o projection reading the
/// merged heads, the reshapes that split and merge them, and the geometry.
struct Heads {
    q: NodeId,
    o: NodeId,
    split: NodeId,
    merge: NodeId,
    heads: usize,
    kv_heads: usize,
    dim: usize,
}

/// The node of `op` defining `v`, when `v` is its first result and read once.
fn producer(m: &Module, v: ValueId, op: Op) -> Option<NodeId> {
    match m.graph.value(v).def {
        ValueDef::Node(n, 0) if m.graph.node(n).op == op && readers(m, v) == 1 => Some(n),
        _ => None,
    }
}

/// The attention block whose output projection is node `o`: `o = linear(reshape(
/// transpose(attention(q', k, v))))` with `q'` made from `linear` → `reshape` to
/// `[.., H, d]` through per-head ops (`transpose`, `rope`, a q-norm), every value on the
/// way read once, and both weights read by this block alone. Query head `h` then owns
/// rows `h·d..(h+1)·d` of the q weight and the same columns of the o weight.
fn find_heads(m: &Module, o: NodeId) -> Option<Heads> {
    let g = &m.graph;
    let on = g.node(o);
    if on.op != Op::Linear || on.inputs.len() != 2 {
        return None;
    }
    let merge = producer(m, on.inputs[0], Op::Reshape)?;
    let t = producer(m, g.node(merge).inputs[0], Op::Transpose)?;
    let attn = producer(m, g.node(t).inputs[0], Op::Attention)?;
    let an = g.node(attn);
    let kv_heads = g.ty(*an.inputs.get(1)?).shape.0.get(1)?.as_const()? as usize;
    let mut v = an.inputs[0];
    let split = loop {
        let ValueDef::Node(n, 0) = g.value(v).def else {
            return None;
        };
        if readers(m, v) != 1 {
            return None;
        }
        match g.node(n).op {
            Op::Reshape => break n,
            Op::Transpose | Op::Rope | Op::RmsNorm => v = g.node(n).inputs[0],
            _ => return None,
        }
    };
    let [_, _, heads, dim] = &g.ty(g.node(split).outputs[0]).shape.0[..] else {
        return None;
    };
    let (heads, dim) = (heads.as_const()? as usize, dim.as_const()? as usize);
    let q = producer(m, g.node(split).inputs[0], Op::Linear)?;
    if kv_heads == 0 || heads % kv_heads != 0 || heads == kv_heads {
        return None;
    }
    let (wq, _) = weight_of(m, g.node(q).inputs[1])?;
    let (wo, _) = weight_of(m, on.inputs[1])?;
    let hd = (heads * dim) as i64;
    if m.weight(wq).shape.as_consts()?.first() != Some(&hd)
        || m.weight(wo).shape.as_consts()?.get(1) != Some(&hd)
    {
        return None;
    }
    for w in [wq, wo] {
        if readers(m, m.weight_value(w)?) != 1 {
            return None;
        }
    }
    Some(Heads {
        q,
        o,
        split,
        merge,
        heads,
        kv_heads,
        dim,
    })
}

/// Prunes one attention block's query heads, the same count in every GQA group;
/// returns (heads kept, refitted). A head's importance is the output energy its
/// columns of the o projection carry (`Σ H_jj · ‖W_o[:, j]‖²` over its `d` columns)
/// with calibration statistics, then the o projection is refitted on the kept columns
/// as the MLP's down projection is; without them, `‖W_o[:, head]‖² · ‖W_q[head, :]‖²`.
fn prune_heads(
    m: &mut Module,
    h: &Heads,
    frac: f64,
    calibration: Option<&Calibration>,
) -> Result<(usize, bool), String> {
    let group = h.heads / h.kv_heads;
    let keep_g = ((group as f64) * (1.0 - frac))
        .round()
        .clamp(1.0, group as f64) as usize;
    if keep_g == group {
        return Ok((h.heads, false));
    }
    let c = h.heads * h.dim;
    let out = Out::read(m, m.graph.node(h.o).inputs[1], c, calibration)?;
    let span = |hd: usize| hd * h.dim..(hd + 1) * h.dim;
    let score: Vec<f64> = match &out.hess {
        Some(_) => (0..h.heads)
            .map(|hd| span(hd).map(|j| out.energy(j)).sum())
            .collect(),
        None => {
            let (wq, _) = weight_of(m, m.graph.node(h.q).inputs[1]).ok_or("q weight")?;
            let xq = crate::quant::read_float(m, wq)?;
            let cols = xq.len() / c;
            (0..h.heads)
                .map(|hd| {
                    let span = span(hd);
                    let o: f64 = span.clone().map(|j| out.energy(j)).sum();
                    let q: f64 = xq[span.start * cols..span.end * cols]
                        .iter()
                        .map(|&v| (v as f64).powi(2))
                        .sum();
                    o * q
                })
                .collect()
        }
    };
    // Per group (query heads g·G..(g+1)·G share kv head g), its best keep_g heads.
    let mut kept_heads = Vec::new();
    for g in 0..h.kv_heads {
        let mut order: Vec<usize> = (g * group..(g + 1) * group).collect();
        order.sort_by(|&a, &b| score[b].total_cmp(&score[a]));
        let mut best = order[..keep_g].to_vec();
        best.sort_unstable();
        kept_heads.extend(best);
    }
    let keep: Vec<usize> = kept_heads.iter().flat_map(|&hd| span(hd)).collect();
    let refitted = out.keep_columns(m, &keep, calibration);
    let operands: Vec<ValueId> = m.graph.node(h.q).inputs[1..].to_vec();
    for v in operands {
        keep_rows(m, v, &keep)?;
    }
    let kept = kept_heads.len();
    // The reshapes: [.., H, d] and [.., H·d] with the kept count.
    for (node, at, value) in [
        (h.split, 2, kept as i64),
        (h.merge, usize::MAX, (kept * h.dim) as i64),
    ] {
        let attrs = &mut m.graph.nodes[node.0 as usize].attrs;
        let Some(llmc_ir::Attr::Shape(shape)) = attrs.get_mut("shape") else {
            return Err("a head reshape without a shape".into());
        };
        let i = if at == usize::MAX {
            shape.0.len() - 1
        } else {
            at
        };
        let d = shape
            .0
            .get_mut(i)
            .ok_or("a head reshape of the wrong rank")?;
        *d = Dim::c(value);
    }
    Ok((kept, refitted))
}

/// Columns whose mask one SparseGPT step chooses together (a share of each row's
/// weights in such a block, or whole N:M groups inside it).
const MASK_BLOCK: usize = 32;

/// SparseGPT on one row (width `k`) against `u`, the upper Cholesky factor of the
/// damped `H⁻¹`: column by column, a block's mask is chosen from the current weights by
/// `w_j² / U_jj²` (the output error a zero costs), a masked weight becomes 0 and its
/// error `w_j / U_jj` is carried into the later columns through row `j` of `U` (the
/// GPTQ update with "round" replaced by "keep or zero"). Returns the zeros made.
fn sparse_gpt_row(
    row: &mut [f32],
    u: &[f32],
    k: usize,
    sp: Sparsity,
    idx: &mut Vec<usize>,
) -> usize {
    let mut masked = vec![false; k];
    let mut zeros = 0;
    for j in 0..k {
        if j % MASK_BLOCK == 0 {
            let end = (j + MASK_BLOCK).min(k);
            let cost = |c: usize| (row[c] as f64 / u[c * k + c] as f64).powi(2);
            let groups: Vec<(usize, usize, usize)> = match sp {
                Sparsity::Share(f) => vec![(j, end, (f * (end - j) as f64).round() as usize)],
                Sparsity::NofM(z, g) => (j..end)
                    .step_by(g)
                    .map(|a| (a, (a + g).min(end), z))
                    .collect(),
            };
            for (a, b, z) in groups {
                idx.clear();
                idx.extend(a..b);
                idx.sort_by(|&p, &q| cost(p).total_cmp(&cost(q)));
                for &c in idx.iter().take(z.min(b - a)) {
                    masked[c] = true;
                }
            }
        }
        if !masked[j] {
            continue;
        }
        let e = row[j] / u[j * k + j];
        row[j] = 0.0;
        zeros += 1;
        let ur = &u[j * k..(j + 1) * k];
        for l in j + 1..k {
            row[l] -= e * ur[l];
        }
    }
    zeros
}

/// Zeroes weights of every linear's float matrix but the output projection's (read by
/// this linear alone) per `sp`. With calibration statistics, SparseGPT
/// ([`sparse_gpt_row`]: the mask by output error, the kept weights updated to carry what
/// the zeros dropped); without, each row's lowest `|W_ij|`. Returns (matrices, weights
/// zeroed, weights in them, matrices reconstructed).
fn sparsify(
    m: &mut Module,
    sp: Sparsity,
    calibration: Option<&Calibration>,
) -> Result<(usize, usize, usize, usize), String> {
    let mut seen = HashSet::new();
    let (mut mats, mut zeroed, mut total, mut calibrated) = (0, 0, 0, 0);
    for i in 0..m.graph.nodes.len() {
        let node = m.graph.node(NodeId(i as u32));
        if !matches!(node.op, Op::Linear | Op::LinearAct) || node.inputs.len() < 2 {
            continue;
        }
        let out = node.outputs[0];
        if m.graph.outputs.contains(&out) {
            continue;
        }
        let Some((w, cast)) = weight_of(m, node.inputs[1]) else {
            continue;
        };
        let Some(wv) = m.weight_value(w) else {
            continue;
        };
        if readers(m, wv) != 1
            || cast.is_some_and(|_| readers(m, node.inputs[1]) != 1)
            || !seen.insert(w)
            || m.weight(w).dtype.is_quantized()
        {
            continue;
        }
        let dims = m.weight(w).shape.as_consts().unwrap_or_default();
        let [n, k] = dims[..] else { continue };
        let (n, k) = (n as usize, k as usize);
        let name = m.weight(w).name.clone();
        let mut x = crate::quant::read_float(m, w)?;
        let hess = calibration
            .and_then(|c| c.hessian(&name))
            .filter(|h| h.k == k && h.rows > 0);
        let mut idx: Vec<usize> = Vec::with_capacity(k);
        if let Some(h) = hess {
            let p = crate::quant::gptq::Prepared::new(&h, crate::quant::gptq::default_damp(&h))?;
            let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
            let rows_per = n.div_ceil(threads).max(1);
            let u = &p.u;
            zeroed += std::thread::scope(|s| {
                let jobs: Vec<_> = x
                    .chunks_mut(rows_per * k)
                    .map(|chunk| {
                        s.spawn(move || {
                            let mut idx = Vec::with_capacity(MASK_BLOCK);
                            chunk
                                .chunks_mut(k)
                                .map(|row| sparse_gpt_row(row, u, k, sp, &mut idx))
                                .sum::<usize>()
                        })
                    })
                    .collect();
                jobs.into_iter()
                    .map(|j| j.join().unwrap_or(0))
                    .sum::<usize>()
            });
            calibrated += 1;
            total += n * k;
            set_weight(m, w, dims.clone(), Some(x));
            mats += 1;
            continue;
        }
        let norm = vec![1.0f64; k];
        let mut score = vec![0f64; k];
        for row in x.chunks_mut(k) {
            for (j, sc) in score.iter_mut().enumerate() {
                *sc = (row[j] as f64).abs() * norm[j];
            }
            let groups: Vec<(usize, usize, usize)> = match sp {
                Sparsity::Share(f) => vec![(0, k, (f * k as f64).round() as usize)],
                Sparsity::NofM(z, g) => (0..k).step_by(g).map(|a| (a, (a + g).min(k), z)).collect(),
            };
            for (a, b, z) in groups {
                idx.clear();
                idx.extend(a..b);
                idx.sort_by(|&p, &q| score[p].total_cmp(&score[q]));
                for &j in idx.iter().take(z.min(b - a)) {
                    row[j] = 0.0;
                    zeroed += 1;
                }
            }
        }
        total += n * k;
        set_weight(m, w, dims.clone(), Some(x));
        mats += 1;
    }
    Ok((mats, zeroed, total, calibrated))
}

/// A percentage as `--prune` spells it (`33%`, `12.5%`).
fn pct(x: f64) -> f64 {
    (x * 100.0 * 1000.0).round() / 1000.0
}

/// Prunes each unit (an MLP, an attention block) with `one`, then retypes the graph;
/// returns the units' sizes before and after summed, and how many were refitted.
fn prune_each<T>(
    m: &mut Module,
    units: &[T],
    size: impl Fn(&T) -> usize,
    mut one: impl FnMut(&mut Module, &T) -> Result<(usize, bool), String>,
) -> Result<(usize, usize, usize), String> {
    let (mut before, mut after, mut refitted) = (0, 0, 0);
    for u in units {
        let (kept, refit) = one(m, u)?;
        before += size(u);
        after += kept;
        refitted += refit as usize;
    }
    retype(m)?;
    Ok((before, after, refitted))
}

/// `heads=PCT` over every attention block.
fn prune_all_heads(m: &mut Module, frac: f64, cal: Option<&Calibration>) -> Result<(), String> {
    let blocks: Vec<Heads> = (0..m.graph.nodes.len())
        .filter_map(|i| find_heads(m, NodeId(i as u32)))
        .collect();
    if blocks.is_empty() {
        return Err(
            "--prune heads: no attention block found (q linear -> reshape [.., H, d] \
             -> attention -> reshape -> o linear, with more query than kv heads)"
                .into(),
        );
    }
    let (before, after, refitted) =
        prune_each(m, &blocks, |b| b.heads, |m, b| prune_heads(m, b, frac, cal))?;
    let kv: usize = blocks.iter().map(|b| b.kv_heads).sum();
    crate::note(format!(
        "heads={}%: {} attention blocks, query heads {} -> {} ({} per kv head); {}",
        pct(frac),
        blocks.len(),
        before / blocks.len(),
        after / blocks.len(),
        after / kv.max(1),
        if refitted > 0 {
            format!("{refitted} o projections refitted by least squares")
        } else {
            "heads ranked by weight magnitude (no --calibration: nothing refitted)".into()
        }
    ));
    Ok(())
}

/// `ffn=PCT` over every MLP.
fn prune_all_mlps(m: &mut Module, frac: f64, cal: Option<&Calibration>) -> Result<(), String> {
    let mlps: Vec<Mlp> = (0..m.graph.nodes.len())
        .filter_map(|i| find_mlp(m, NodeId(i as u32)))
        .collect();
    if mlps.is_empty() {
        return Err(
            "--prune ffn: no MLP found (a linear fed by other linears through elementwise ops)"
                .into(),
        );
    }
    let (before, after, refitted) =
        prune_each(m, &mlps, |u| u.channels, |m, u| prune_mlp(m, u, frac, cal))?;
    crate::note(format!(
        "ffn={}%: {} MLPs, hidden channels {} -> {} ({:.1}% removed); {}",
        pct(frac),
        mlps.len(),
        before / mlps.len(),
        after / mlps.len(),
        100.0 * (before - after) as f64 / before as f64,
        match cal {
            Some(c) if refitted > 0 => format!(
                "channels ranked by output energy on {} tokens of {}, {refitted} down projections refitted by least squares",
                c.tokens, c.source
            ),
            _ => "channels ranked by weight magnitude (no --calibration: nothing refitted)".into(),
        }
    ));
    Ok(())
}

/// The pass: prunes per `ctx.prune` (heads, then MLP channels, then sparsity, which
/// scores what the structured steps leave, their refits included); without a spec it
/// changes nothing.
pub fn run(m: &mut Module, ctx: &PassContext) -> Result<Changed, PassError> {
    let Some(spec) = &ctx.prune else {
        crate::note("no --prune given: nothing to do".into());
        return Ok(Changed::No);
    };
    let err = |msg: String| PassError::Pass {
        pass: "prune".into(),
        msg,
    };
    if spec.ffn <= 0.0 && spec.heads <= 0.0 && spec.sparse.is_none() {
        return Ok(Changed::No);
    }
    let cal = ctx.calibration.as_deref();
    if spec.heads > 0.0 {
        prune_all_heads(m, spec.heads, cal).map_err(err)?;
    }
    if spec.ffn > 0.0 {
        prune_all_mlps(m, spec.ffn, cal).map_err(err)?;
    }
    if let Some(sp) = spec.sparse {
        let (mats, zeroed, total, fitted) = sparsify(m, sp, cal).map_err(err)?;
        crate::note(format!(
            "sparse={sp}: {zeroed} of {total} weights zeroed ({:.1}%) in {mats} matrices; {}",
            100.0 * zeroed as f64 / total.max(1) as f64,
            if fitted > 0 {
                format!("SparseGPT on calibration statistics for {fitted} (masks by the cost of each zero, kept weights updated)")
            } else {
                "ranked by |w| (no --calibration)".into()
            }
        ));
    }
    Ok(Changed::Yes)
}

#[cfg(test)]
mod tests;
