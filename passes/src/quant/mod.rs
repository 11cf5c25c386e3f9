//! Weight quantization (`llmc build --quantize FORMAT`, `llmc eval --quantize`): turns
//! the f32/f16/bf16 weight matrices that `linear`/`linear_act` read (and so the ones
//! `merge` later joins into the `glu`-feeding gate/up linear), the token-embedding
//! table `gather` reads and the output projection into the GGUF block formats the CPU
//! kernels run (`q8_0`, `q4_0`, `q4_1`, `q5_0`, `q5_1`, see `gguf`), so that an f32 or
//! f16 model (HF folder, ONNX initializers, GGUF F32/F16) gets the bytes a
//! `llama-quantize`d GGUF file would have; or into llmc's int4 groups of 64 and 128
//! (`q4_0_g64`, `q4_1_g64`, `q4_0_g128`, `q4_1_g128`: Q4_0's and Q4_1's rule over a
//! wider group; a matrix whose rows are not whole groups takes the widest group that
//! fits, and the pass says so); or into `f16`/`bf16` (converted, read by
//! the same kernels as f16/bf16 checkpoints; a cast to f32 goes after a converted
//! table's gather). `layerN=F` / `layerA-B=F` give single layers another format (what
//! `--accuracy-budget` chooses). With calibration statistics, `awq` (`awq`) scales
//! input channels before rounding and `gptq` (`gptq`) chooses codes against `XᵀX`;
//! the pass records each weight's measured output error in the [`Calibration`].
//!
//! The default mix follows `llama-quantize` for the same file type: every matrix in
//! FORMAT, the output matrix (`lm_head`, or the tied token embedding that serves as
//! it) in `q8_0` (llama.cpp picks Q6_K when the row length is a multiple of 256 and
//! Q8_0 otherwise; llmc has no Q6_K quantizer, so it is Q8_0 always), an untied token
//! embedding in FORMAT. `FORMAT,head=F,embed=F` changes the last two (`keep` leaves
//! them as they are). Vectors (norms, biases) and matrices whose rows are not whole
//! blocks of 32 stay as they are, and the pass says which and why.
//!
//! The pass changes a weight's dtype in place (the IR prints `q4_0[576, 576]`), points
//! the linears that read it through an f16 -> f32 `cast` straight at it, and drops the
//! casts; a module read from text (no weight data) only changes dtypes.

pub mod act;
pub mod awq;
pub mod gguf;
pub mod gptq;
pub mod kquant;
pub mod smooth;

use crate::rewrite::compact;
use crate::{Changed, PassContext, PassError};
use llmc_ir::{AttrsExt, DType, Module, NodeId, Op, ValueDef, ValueId, WeightData, WeightId};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

/// What `--quantize` asked for.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantSpec {
    /// The format of the linear layers' matrices.
    pub format: DType,
    /// The output projection's format (`None`: keep it).
    pub head: Option<DType>,
    /// The (untied) token embedding's format (`None`: keep it).
    pub embed: Option<DType>,
    /// Choose the linears' codes with GPTQ against calibration statistics
    /// (`PassContext::calibration`, from `--calibration FILE`) instead of rounding
    /// each weight to nearest.
    pub gptq: bool,
    /// Scale each linear's input channels by their measured activation size before
    /// rounding, folding the inverse into where the input is made (AWQ, `awq`).
    pub awq: bool,
    /// SmoothQuant (`smooth[=A]`): divide each linear input's channels by
    /// `max|x|^α / max|w|^(1-α)` where the input is made and multiply the weights by
    /// it, before int8 activations; `Some(None)`: `α` searched per input on the
    /// calibration, `Some(Some(A))`: fixed (`None`: no migration).
    pub smooth: Option<Option<f64>>,
    /// `int8`: the linears' (and the embedding's) rows in int8 with one scale per
    /// output channel (row), stored as Q8_0 blocks sharing it (`format` is Q8_0).
    pub per_channel: bool,
    /// Per-layer formats for the linears of the layer with that index (the first
    /// number in a weight's name: `model.layers.7.mlp.up_proj.weight` is layer 7),
    /// `layerN=FORMAT`; what `--accuracy-budget` chooses.
    pub layers: std::collections::BTreeMap<usize, DType>,
    /// GPTQ's damping: this fraction of `H`'s mean diagonal is added to its diagonal
    /// (`damp=F`). More damping trusts the calibration's correlations less (towards
    /// rounding to nearest). `None`: [`gptq::default_damp`], which grows as the
    /// calibration has fewer rows per input column.
    pub damp: Option<f64>,
}

fn format_name(d: Option<DType>) -> &'static str {
    d.map_or("keep", DType::name)
}

impl fmt::Display for QuantSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{},head={},embed={}{}{}",
            if self.per_channel {
                "int8".to_string()
            } else {
                self.format.to_string()
            },
            format_name(self.head),
            format_name(self.embed),
            if self.awq { ",awq" } else { "" },
            if self.gptq { ",gptq" } else { "" }
        )?;
        match self.smooth {
            Some(Some(a)) => write!(f, ",smooth={a}")?,
            Some(None) => write!(f, ",smooth")?,
            None => {}
        }
        if let Some(d) = self.damp {
            write!(f, ",damp={d}")?;
        }
        // Runs of consecutive layers in one format as ranges: `layer5-9=q8_0`.
        let mut it = self.layers.iter().peekable();
        while let Some((&a, &d)) = it.next() {
            let mut b = a;
            while let Some((&n, &e)) = it.peek() {
                if n != b + 1 || e != d {
                    break;
                }
                b = n;
                it.next();
            }
            if a == b {
                write!(f, ",layer{a}={d}")?;
            } else {
                write!(f, ",layer{a}-{b}={d}")?;
            }
        }
        Ok(())
    }
}

/// `; N inputs not VERB: the first two, ...` for a rescaling's report (empty when none
/// was skipped).
fn skipped_note(verb: &str, skipped: &[String]) -> String {
    if skipped.is_empty() {
        return String::new();
    }
    format!(
        "; {} inputs not {verb}: {}{}",
        skipped.len(),
        skipped
            .iter()
            .take(2)
            .cloned()
            .collect::<Vec<_>>()
            .join(", "),
        if skipped.len() > 2 { ", ..." } else { "" }
    )
}

/// The formats `--quantize` accepts, for messages.
pub const FORMATS: &str = "f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_0_g64, q4_1_g64, \
     q4_0_g128, q4_1_g128, q4_k, q6_k, int8 (per output channel; as FORMAT only)";

/// The format a `[n, k]` weight asked to be `format` gets: a group format whose groups
/// do not divide `k` takes the widest group of the same kind that does (`q4_0_g128`
/// on rows of 576: `q4_0_g64`; then `q4_0`, whose blocks of 32 the caller checked); a
/// K-quant whose super-blocks of 256 do not, llama-quantize's fallback (q4_k: q5_0,
/// q6_k: q8_0).
pub fn fitted_format(format: DType, k: i64) -> DType {
    let chain: &[DType] = match format {
        DType::Q4_0G128 => &[DType::Q4_0G128, DType::Q4_0G64, DType::Q4_0],
        DType::Q4_0G64 => &[DType::Q4_0G64, DType::Q4_0],
        DType::Q4_1G128 => &[DType::Q4_1G128, DType::Q4_1G64, DType::Q4_1],
        DType::Q4_1G64 => &[DType::Q4_1G64, DType::Q4_1],
        // llama-quantize's fallbacks for rows that are not whole super-blocks.
        DType::Q4K => &[DType::Q4K, DType::Q5_0],
        DType::Q6K => &[DType::Q6K, DType::Q8_0],
        _ => return format,
    };
    chain
        .iter()
        .copied()
        .find(|d| k % d.block_len() as i64 == 0)
        .unwrap_or(format)
}

/// The width `k` of a 2-D weight (0 when it has no constant shape).
fn row_len(w: &llmc_ir::Weight) -> i64 {
    w.shape
        .as_consts()
        .and_then(|d| d.last().copied())
        .unwrap_or(0)
}

/// A float storage format (`f16`, `bf16`): weights converted (round to nearest even),
/// read by the same kernels as f16/bf16 checkpoints.
fn float_format(d: DType) -> bool {
    matches!(d, DType::F16 | DType::BF16)
}

fn parse_format(s: &str, what: &str) -> Result<DType, String> {
    DType::from_name(&s.to_ascii_lowercase())
        .filter(|d| gguf::supported(*d) || float_format(*d))
        .ok_or_else(|| format!("{what} `{s}`: unknown format (known: {FORMATS})"))
}

impl QuantSpec {
    /// The default mix for `format` (see the module comment).
    pub fn new(format: DType) -> QuantSpec {
        QuantSpec {
            format,
            // llama-quantize's F16/BF16 file types keep the output matrix in them too.
            head: Some(if float_format(format) {
                format
            } else {
                DType::Q8_0
            }),
            embed: Some(format),
            gptq: false,
            awq: false,
            smooth: None,
            per_channel: false,
            layers: Default::default(),
            damp: None,
        }
    }

    /// The format of a weight the linears read (`name`): its layer's, else FORMAT.
    pub fn linear_format(&self, name: &str) -> DType {
        layer_of(name)
            .and_then(|l| self.layers.get(&l).copied())
            .unwrap_or(self.format)
    }

    /// Whether the spec needs calibration statistics (`--calibration FILE`).
    pub fn calibrated(&self) -> bool {
        self.gptq || self.awq || self.smooth.is_some()
    }

    /// Parses `FORMAT[,head=F|keep][,embed=F|keep][,awq][,gptq][,damp=F]`.
    pub fn parse(s: &str) -> Result<QuantSpec, String> {
        let mut parts = s.split(',').map(str::trim);
        let first = parts.next().unwrap_or_default();
        let per_channel = first.eq_ignore_ascii_case("int8");
        let mut spec = if per_channel {
            QuantSpec {
                per_channel,
                ..QuantSpec::new(DType::Q8_0)
            }
        } else {
            QuantSpec::new(parse_format(first, "format")?)
        };
        for p in parts {
            if p == "gptq" {
                spec.gptq = true;
                continue;
            }
            if p == "awq" {
                spec.awq = true;
                continue;
            }
            if p == "smooth" {
                spec.smooth = Some(None);
                continue;
            }
            let (key, val) = p.split_once('=').ok_or_else(|| {
                format!(
                    "`{p}`: expected head=FORMAT, embed=FORMAT, awq, gptq, smooth[=A] or damp=F"
                )
            })?;
            if key == "smooth" {
                spec.smooth = Some(Some(
                    val.parse::<f64>()
                        .ok()
                        .filter(|a| (0.0..=1.0).contains(a))
                        .ok_or_else(|| {
                            format!("smooth=`{val}`: expected a strength from 0 to 1 (0.5)")
                        })?,
                ));
                continue;
            }
            if key == "damp" {
                spec.damp = Some(
                    val.parse::<f64>()
                        .ok()
                        .filter(|d| d.is_finite() && *d > 0.0)
                        .ok_or_else(|| {
                            format!("damp=`{val}`: expected a positive fraction (0.1)")
                        })?,
                );
                continue;
            }
            if let Some(l) = key.strip_prefix("layer") {
                let bad =
                    || format!("`{key}`: expected layerN=FORMAT or layerA-B=FORMAT (layer7=q8_0)");
                let (a, b) = l.split_once('-').unwrap_or((l, l));
                let (a, b): (usize, usize) =
                    (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                if a > b {
                    return Err(bad());
                }
                let d = parse_format(val, key)?;
                for l in a..=b {
                    spec.layers.insert(l, d);
                }
                continue;
            }
            let val = if val == "keep" {
                None
            } else {
                Some(parse_format(val, key)?)
            };
            match key {
                "head" => spec.head = val,
                "embed" => spec.embed = val,
                _ => {
                    return Err(format!(
                        "`{key}`: unknown option (head, embed, layerN, awq, gptq, smooth, damp)"
                    ))
                }
            }
        }
        if spec.per_channel && (spec.gptq || spec.awq) {
            return Err(format!(
                "{s}: int8 per channel is rounded to nearest (gptq and awq choose per-block \
                 codes: use q8_0)"
            ));
        }
        let k_quant = |d: &DType| gguf::K_WRITTEN.contains(d);
        if spec.calibrated() && (k_quant(&spec.format) || spec.layers.values().any(k_quant)) {
            return Err(format!(
                "{s}: gptq, awq and smooth choose codes per block of 32 (q8_0, q4_0, q4_1, \
                 q5_0, q5_1 and the int4 groups); q4_k and q6_k are rounded as \
                 llama-quantize rounds them"
            ));
        }
        if spec.awq && spec.smooth.is_some() {
            return Err(format!(
                "{s}: awq and smooth both rescale the input channels; choose one"
            ));
        }
        let mixed_float = spec.layers.values().any(|d| float_format(*d));
        if spec.calibrated() && (float_format(spec.format) || mixed_float) {
            return Err(format!(
                "{}: awq, gptq and smooth work on block codes; {} weights are converted as they are",
                s, spec.format
            ));
        }
        Ok(spec)
    }
}

/// The layer a weight belongs to: the first all-digit component of its name
/// (`model.layers.7.mlp.up_proj.weight`, `blk.7.ffn_up.weight`: 7).
pub fn layer_of(name: &str) -> Option<usize> {
    name.split(['.', '/'])
        .find(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|p| p.parse().ok())
}

/// Calibration statistics for GPTQ: per weight (by name), `XᵀX` over the calibration
/// rows of the linear input that reads it (`src/calibrate.rs` measures them by running
/// the unquantized model on `--calibration FILE`). Weights reading the same input share
/// one [`gptq::Hessian`].
#[derive(Default)]
pub struct Calibration {
    pub hessians: HashMap<String, Arc<gptq::Hessian>>,
    /// Tokens the model ran on, and where they came from (for the report).
    pub tokens: usize,
    pub source: String,
    /// Input columns a pass removed from a weight after calibration (structured
    /// pruning keeps channels `K` of a down projection): its statistics are then
    /// `H[K, K]`, exactly those of the smaller linear's input.
    selected: Mutex<HashMap<String, Vec<usize>>>,
    /// What the quantize pass measured per weight it quantized against these
    /// statistics: the relative output error `Σ eᵀHe / Σ wᵀHw` over sampled rows
    /// (`--accuracy-budget` ranks layers by it).
    errors: Mutex<HashMap<String, f64>>,
    /// The statistics of the inputs the last quantize pass rescaled (AWQ, SmoothQuant),
    /// by weight name: what the linears read after it (the `act-quant` pass's static
    /// scales come from them).
    scaled: Mutex<HashMap<String, Arc<gptq::Hessian>>>,
}

impl Calibration {
    pub fn new(
        hessians: HashMap<String, Arc<gptq::Hessian>>,
        tokens: usize,
        source: String,
    ) -> Self {
        Calibration {
            hessians,
            tokens,
            source,
            selected: Mutex::default(),
            errors: Mutex::default(),
            scaled: Mutex::default(),
        }
    }

    /// The relative output errors the quantize pass measured, by weight name.
    pub fn errors(&self) -> HashMap<String, f64> {
        self.errors.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// Replaces the record of rescaled inputs (the quantize pass, each run).
    fn record_scaled(&self, scaled: &HashMap<String, Arc<gptq::Hessian>>) {
        if let Ok(mut s) = self.scaled.lock() {
            *s = scaled.clone();
        }
    }

    /// The statistics of weight `name`'s input as the module reads it after the
    /// quantize pass: rescaled by AWQ or SmoothQuant if it was, else as measured.
    pub fn input_stats(&self, name: &str) -> Option<Arc<gptq::Hessian>> {
        let s = self.scaled.lock().ok()?.get(name).cloned();
        s.or_else(|| self.hessian(name))
    }

    fn record_error(&self, name: &str, e: f64) {
        if let Ok(mut errs) = self.errors.lock() {
            errs.insert(name.to_string(), e);
        }
    }

    /// The statistics of weight `name`'s input as the module now reads it.
    pub fn hessian(&self, name: &str) -> Option<Arc<gptq::Hessian>> {
        let h = self.hessians.get(name)?;
        let sel = self.selected.lock().ok()?;
        let Some(keep) = sel.get(name) else {
            return Some(h.clone());
        };
        let (k, c) = (keep.len(), h.k);
        let mut sub = vec![0.0; k * k];
        for (a, &i) in keep.iter().enumerate() {
            for (b, &j) in keep.iter().enumerate() {
                sub[a * k + b] = h.h[i * c + j];
            }
        }
        Some(Arc::new(gptq::Hessian {
            k,
            h: sub,
            rows: h.rows,
            amax: keep
                .iter()
                .filter_map(|&i| h.amax.get(i).copied())
                .collect(),
        }))
    }

    /// Records that weight `name` now reads only input columns `keep` (of the
    /// statistics' current columns).
    pub fn select_columns(&self, name: &str, keep: Vec<usize>) {
        if let Ok(mut sel) = self.selected.lock() {
            let keep = match sel.get(name) {
                Some(prev) => keep.iter().map(|&i| prev[i]).collect(),
                None => keep,
            };
            sel.insert(name.to_string(), keep);
        }
    }
}

impl fmt::Debug for Calibration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Calibration({} weights, {} tokens of {})",
            self.hessians.len(),
            self.tokens,
            self.source
        )
    }
}

/// The linear inputs calibration must measure: each value a `linear`/`linear_act`
/// multiplies a weight the pass would quantize in the linear role (directly or
/// through its f32 cast), with the names of the weights it meets there. A module's
/// values, so the caller can make them outputs of a calibration graph.
pub fn calibration_points(m: &Module) -> Vec<(ValueId, Vec<String>)> {
    let mut points: Vec<(ValueId, Vec<String>)> = Vec::new();
    let mut add = |x: ValueId, name: &str| match points.iter_mut().find(|(v, _)| *v == x) {
        Some((_, names)) => {
            if !names.iter().any(|n| n == name) {
                names.push(name.to_string())
            }
        }
        None => points.push((x, vec![name.to_string()])),
    };
    for i in 0..m.weights.len() {
        let w = WeightId(i as u32);
        let Ok(Some(p)) = analyse(m, w) else {
            continue;
        };
        if p.role != Role::Linear {
            continue;
        }
        let name = &m.weight(w).name;
        for (n, k) in readers(m, p.value) {
            if is_matmul_weight(m, n, k) {
                add(m.graph.node(n).inputs[0], name);
            } else if casts_to_f32(m, n) {
                for (r, ko) in readers(m, m.graph.node(n).outputs[0]) {
                    if is_matmul_weight(m, r, ko) {
                        add(m.graph.node(r).inputs[0], name);
                    }
                }
            }
        }
    }
    points
}

/// The role a weight plays, which decides its format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// Read by linears only.
    Linear,
    /// The output projection (possibly also the token embedding: tied).
    Head,
    /// Read by gathers only.
    Embed,
}

/// How one node reads the weight.
enum Use {
    /// `linear`/`linear_act` operand 1.
    Matrix,
    /// A `cast` to f32 whose every reader is a `linear`/`linear_act` weight operand.
    CastToMatrix(NodeId),
    /// `gather` operand 0 along axis 0.
    Gather(NodeId),
}

/// What the analysis decided for one weight.
struct Plan {
    weight: WeightId,
    value: ValueId,
    role: Role,
    uses: Vec<Use>,
}

fn is_matmul_weight(m: &Module, n: NodeId, operand: usize) -> bool {
    let node = m.graph.node(n);
    matches!(node.op, Op::Linear | Op::LinearAct)
        && operand == 1
        && node
            .outputs
            .first()
            .is_some_and(|&o| m.graph.ty(o).dtype == DType::F32)
}

/// Every (node, operand index) that reads `v`.
pub(crate) fn readers(m: &Module, v: ValueId) -> Vec<(NodeId, usize)> {
    let mut out = Vec::new();
    for (i, n) in m.graph.nodes.iter().enumerate() {
        for (k, &x) in n.inputs.iter().enumerate() {
            if x == v {
                out.push((NodeId(i as u32), k));
            }
        }
    }
    out
}

/// Is node `n` a `cast` to f32?
fn casts_to_f32(m: &Module, n: NodeId) -> bool {
    let node = m.graph.node(n);
    node.op == Op::Cast && node.attrs.dtype("to") == Some(DType::F32)
}

/// Is `v` (a linear's result) the graph's output, directly or through one cast?
fn feeds_output(m: &Module, v: ValueId) -> bool {
    let g = &m.graph;
    if g.outputs.contains(&v) {
        return true;
    }
    let r = readers(m, v);
    r.len() == 1
        && casts_to_f32(m, r[0].0)
        && g.node(r[0].0)
            .outputs
            .first()
            .is_some_and(|o| g.outputs.contains(o))
}

/// Decides whether weight `w` can be quantized and in which role, or says why not.
fn analyse(m: &Module, w: WeightId) -> Result<Option<Plan>, String> {
    let weight = m.weight(w);
    if !matches!(weight.dtype, DType::F32 | DType::F16 | DType::BF16) {
        return Ok(None);
    }
    let Some(value) = m.weight_value(w) else {
        return Ok(None);
    };
    let dims = weight.shape.as_consts();
    let Some([_, k]) = dims.as_deref() else {
        return Ok(None);
    };
    let g = &m.graph;
    let mut uses = Vec::new();
    let (mut head, mut gathers, mut matrices) = (false, 0usize, 0usize);
    if g.outputs.contains(&value) {
        return Err("returned by the graph".into());
    }
    for (n, k_op) in readers(m, value) {
        let node = g.node(n);
        if is_matmul_weight(m, n, k_op) {
            head |= feeds_output(m, node.outputs[0]);
            matrices += 1;
            uses.push(Use::Matrix);
        } else if casts_to_f32(m, n) && k_op == 0 {
            let out = node.outputs[0];
            let rs = readers(m, out);
            if g.outputs.contains(&out) || rs.is_empty() {
                return Err("its cast to f32 is returned or unused".into());
            }
            for &(r, ko) in &rs {
                if !is_matmul_weight(m, r, ko) {
                    return Err(format!(
                        "its cast to f32 is read by {}",
                        g.node(r).op.name()
                    ));
                }
                head |= feeds_output(m, g.node(r).outputs[0]);
                matrices += 1;
            }
            uses.push(Use::CastToMatrix(n));
        } else if node.op == Op::Gather && k_op == 0 {
            let axis = node.attrs.int("axis").unwrap_or(0);
            if axis != 0 && axis != -2 {
                return Err(format!("gathered along axis {axis}"));
            }
            // A gather from an f16 table gives f16 rows; from a block format, f32 rows.
            // Only a cast to f32 may read them then.
            if weight.dtype != DType::F32 {
                let out = node.outputs[0];
                if g.outputs.contains(&out)
                    || !readers(m, out).iter().all(|&(r, _)| casts_to_f32(m, r))
                {
                    return Err("its gathered rows are used as f16/bf16".into());
                }
            }
            gathers += 1;
            uses.push(Use::Gather(n));
        } else {
            return Err(format!("read by {} (operand {k_op})", node.op.name()));
        }
    }
    if uses.is_empty() {
        return Ok(None);
    }
    if k % gguf::BLOCK as i64 != 0 {
        return Err(format!(
            "rows of {k} elements are not whole blocks of {}",
            gguf::BLOCK
        ));
    }
    let role = if head || (gathers > 0 && matrices > 0) {
        Role::Head
    } else if matrices == 0 {
        Role::Embed
    } else {
        Role::Linear
    };
    Ok(Some(Plan {
        weight: w,
        value,
        role,
        uses,
    }))
}

/// The weight's elements as f32 (exact for f16/bf16), checked finite.
pub(crate) fn as_f32(
    name: &str,
    dtype: DType,
    bytes: &[u8],
    numel: usize,
) -> Result<Vec<f32>, String> {
    let eb = dtype.block_bytes();
    if bytes.len() < numel * eb {
        return Err(format!(
            "weight @{name}: {} bytes, {dtype} x {numel} needs {}",
            bytes.len(),
            numel * eb
        ));
    }
    let b = &bytes[..numel * eb];
    let x: Vec<f32> = match dtype {
        DType::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        DType::F16 => b
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        DType::BF16 => b
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => return Err(format!("weight @{name}: {other} is not a float format")),
    };
    if let Some(i) = x.iter().position(|v| !v.is_finite()) {
        return Err(format!(
            "weight @{name}: element {i} is {}, which no block format can hold",
            x[i]
        ));
    }
    Ok(x)
}

/// Puts a `cast` to f32 right after node `n` (single result): every reader of the
/// result, and the graph outputs, read the cast's instead.
fn insert_cast_f32(m: &mut Module, n: NodeId) {
    let g = &mut m.graph;
    let out = g.node(n).outputs[0];
    let at = n.0 + 1;
    let mut ty = g.ty(out).clone();
    ty.dtype = DType::F32;
    let name = g.value(out).name.clone();
    g.values[out.0 as usize].name = format!("{name}.{}", g.ty(out).dtype);
    for v in &mut g.values {
        if let ValueDef::Node(k, i) = v.def {
            if k.0 >= at {
                v.def = ValueDef::Node(NodeId(k.0 + 1), i);
            }
        }
    }
    let cast = g.add_value(name, ty, ValueDef::Node(NodeId(at), 0));
    for node in &mut g.nodes {
        for x in &mut node.inputs {
            if *x == out {
                *x = cast;
            }
        }
    }
    for x in &mut g.outputs {
        if *x == out {
            *x = cast;
        }
    }
    g.nodes.insert(
        at as usize,
        llmc_ir::Node {
            op: Op::Cast,
            inputs: vec![out],
            outputs: vec![cast],
            attrs: llmc_ir::attrs([("to", llmc_ir::Attr::Type(DType::F32))]),
        },
    );
}

/// `x` stored as `dtype` (f32, f16 or bf16: round to nearest even), little-endian.
pub(crate) fn float_bytes(dtype: DType, x: &[f32]) -> Vec<u8> {
    match dtype {
        DType::F16 => x
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect(),
        DType::BF16 => x
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect(),
        _ => x.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

/// The elements of a float weight (f32/f16/bf16) as f32.
pub(crate) fn read_float(m: &Module, w: WeightId) -> Result<Vec<f32>, String> {
    let wt = m.weight(w);
    let numel = wt
        .shape
        .as_consts()
        .map_or(0, |d| d.iter().product::<i64>()) as usize;
    let bytes = wt
        .data
        .bytes()
        .ok_or_else(|| format!("weight @{}: no data", wt.name))?;
    as_f32(&wt.name, wt.dtype, bytes, numel)
}

/// `x` as a `--quantize f16|bf16` target; an element beyond f16's range is an error
/// (it would become infinite).
fn to_float(dtype: DType, x: &[f32]) -> Result<Vec<u8>, String> {
    if dtype == DType::F16 {
        if let Some(i) = x.iter().position(|v| v.abs() > 65504.0) {
            return Err(format!(
                "element {i} is {}, beyond f16's range (65504): use bf16",
                x[i]
            ));
        }
    }
    Ok(float_bytes(dtype, x))
}

/// Byte counts for the report.
fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

/// The weight value `v` as a constant rank-1 weight of `n` elements of `dtype`.
fn is_bias(m: &Module, v: ValueId, n: i64, dtype: DType) -> bool {
    let val = m.graph.value(v);
    matches!(val.def, ValueDef::Weight(_))
        && val.ty.dtype == dtype
        && val.ty.shape.as_consts().as_deref() == Some(&[n][..])
}

/// ONNX exports (and other graphs) multiply by a weight as `matmul(x, w)` with `w`
/// `[k, n]`, and the e-graph makes that a `linear(x, wᵀ[, b])` only after this pass
/// has run: so every 2-D float weight that only `matmul`s read (operand 1, an f32
/// result, x of rank ≥ 2) is transposed here in place to `[n, k]` and its matmuls
/// become `linear`s, each taking a following `add` of a constant `[n]` bias when it is
/// the product's only reader. The quantizer then takes them as it takes imported
/// linears. Returns how many weights it transposed. (Calibration does the same to its
/// copy of the module first, so the statistics are keyed by the same weights.)
pub fn matmuls_to_linears(m: &mut Module) -> Result<usize, String> {
    let mut keep = vec![true; m.graph.nodes.len()];
    let mut repl: HashMap<ValueId, ValueId> = HashMap::new();
    let mut done = 0;
    for i in 0..m.weights.len() {
        let w = WeightId(i as u32);
        let weight = m.weight(w).clone();
        let es = match weight.dtype {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            _ => continue,
        };
        let dims = weight.shape.as_consts();
        let (Some(v), Some(&[k, n])) = (m.weight_value(w), dims.as_deref()) else {
            continue;
        };
        let rs = readers(m, v);
        let g = &m.graph;
        let all_matmul = !rs.is_empty()
            && !g.outputs.contains(&v)
            && rs.iter().all(|&(r, ko)| {
                let node = g.node(r);
                node.op == Op::MatMul
                    && ko == 1
                    && node.inputs.len() == 2
                    && g.ty(node.inputs[0]).shape.rank() >= 2
                    && g.ty(node.outputs[0]).dtype == DType::F32
            });
        if !all_matmul {
            continue;
        }
        let data = match weight.data.bytes() {
            Some(b) => {
                let (ku, nu) = (k as usize, n as usize);
                if b.len() != ku * nu * es {
                    return Err(format!(
                        "weight @{} holds {} bytes for [{k}, {n}]",
                        weight.name,
                        b.len()
                    ));
                }
                let mut t = vec![0u8; b.len()];
                for r in 0..ku {
                    for c in 0..nu {
                        let from = (r * nu + c) * es;
                        let to = (c * ku + r) * es;
                        t[to..to + es].copy_from_slice(&b[from..from + es]);
                    }
                }
                WeightData::Owned(Arc::new(t))
            }
            None => WeightData::None,
        };
        // Transposed in place: every reader is one of the matmuls rewritten below.
        let shape = llmc_ir::Shape::of(&[n, k]);
        m.weights[i].shape = shape.clone();
        m.weights[i].data = data;
        m.graph.values[v.0 as usize].ty.shape = shape;
        let wt = v;
        for (r, _) in rs {
            let out = m.graph.node(r).outputs[0];
            let x = m.graph.node(r).inputs[0];
            let xdt = m.graph.ty(x).dtype;
            let after = readers(m, out);
            let bias = match after.as_slice() {
                [(a, _)] if m.graph.node(*a).op == Op::Add && !m.graph.outputs.contains(&out) => {
                    let add = m.graph.node(*a);
                    let other = if add.inputs[0] == out {
                        add.inputs[1]
                    } else {
                        add.inputs[0]
                    };
                    let same = m.graph.ty(add.outputs[0]) == m.graph.ty(out);
                    (same && is_bias(m, other, n, xdt)).then_some((*a, other))
                }
                _ => None,
            };
            let node = &mut m.graph.nodes[r.0 as usize];
            node.op = Op::Linear;
            node.inputs = vec![x, wt];
            if let Some((a, b)) = bias {
                node.inputs.push(b);
                let add_out = m.graph.node(a).outputs[0];
                repl.insert(add_out, out);
                keep[a.0 as usize] = false;
            }
        }
        done += 1;
    }
    if done > 0 {
        compact(&mut m.graph, &keep, &repl);
    }
    Ok(done)
}

/// The pass: quantizes per `ctx.quantize`; without a spec it changes nothing.
pub fn run(m: &mut Module, ctx: &PassContext) -> Result<Changed, PassError> {
    let Some(spec) = &ctx.quantize else {
        crate::note("no --quantize format given: nothing to do".into());
        return Ok(Changed::No);
    };
    let err = |msg: String| PassError::Pass {
        pass: "quantize".into(),
        msg,
    };
    let turned = matmuls_to_linears(m).map_err(err)?;
    if turned > 0 {
        crate::note(format!(
            "{turned} matmul weight(s) transposed into linears to be quantized"
        ));
    }
    let mut plans = Vec::new();
    let mut left: Vec<String> = Vec::new();
    for i in 0..m.weights.len() {
        let w = WeightId(i as u32);
        match analyse(m, w) {
            Ok(Some(p)) => plans.push(p),
            Ok(None) => {}
            Err(why) => left.push(format!("@{} ({why})", m.weight(w).name)),
        }
    }
    let mut counts: HashMap<DType, usize> = HashMap::new();
    let (mut before, mut after) = (0u64, 0u64);
    let mut kept: Vec<String> = Vec::new();
    let mut regrouped: Vec<String> = Vec::new();
    // Matrices stored sparse: (q8_0_2of4, q8_0_8of32).
    let mut sparse = (0usize, 0usize);
    let mut per_channel = 0usize;
    let mut special: Vec<String> = Vec::new();
    let mut keep_node = vec![true; m.graph.nodes.len()];
    let mut repl: HashMap<ValueId, ValueId> = HashMap::new();
    let calibration = ctx.calibration.as_deref();
    if spec.calibrated() && calibration.is_none() {
        return Err(err(format!(
            "--quantize {spec} chooses codes against calibration statistics: give \
             --calibration FILE (a text the model is run on)"
        )));
    }
    // AWQ first: it changes the float weights (and the norms/linears making their
    // inputs) that rounding or GPTQ then quantize, and the statistics GPTQ reads.
    let mut scaled: HashMap<String, Arc<gptq::Hessian>> = HashMap::new();
    let mut awq_report = None;
    let mut smooth_report = None;
    if let (true, Some(cal)) = (spec.awq || spec.smooth.is_some(), calibration) {
        let linear: HashMap<String, DType> = plans
            .iter()
            .filter(|p| p.role == Role::Linear)
            .map(|p| {
                let w = m.weight(p.weight);
                let d = fitted_format(spec.linear_format(&w.name), row_len(w));
                (w.name.clone(), d)
            })
            .filter(|(_, d)| !float_format(*d))
            .collect();
        let has_data = plans
            .iter()
            .all(|p| m.weight(p.weight).data.bytes().is_some());
        if has_data {
            let target = |n: &str| linear.get(n).copied();
            if let Some(alpha) = spec.smooth {
                // The activations' rounding the search weighs: int8's, unless
                // --act-quant keeps int16.
                let qmax = if ctx.act_bits == Some(16) {
                    32767.0
                } else {
                    127.0
                };
                let (h, r) = smooth::apply(m, cal, &target, alpha, qmax).map_err(err)?;
                scaled = h;
                smooth_report = Some(r);
            } else {
                let (h, r) = awq::apply(m, cal, &target).map_err(err)?;
                scaled = h;
                awq_report = Some(r);
            }
        }
    }
    if let Some(cal) = calibration {
        cal.record_scaled(&scaled);
    }
    let stats = |name: &str| -> Option<Arc<gptq::Hessian>> {
        scaled
            .get(name)
            .cloned()
            .or_else(|| calibration.and_then(|c| c.hessian(name)))
    };
    // Factored calibration statistics, one per input the linears share (q/k/v, gate/up).
    let mut prepared: Vec<(Arc<gptq::Hessian>, gptq::Prepared)> = Vec::new();
    let mut gptq_stats: Vec<gptq::Outcome> = Vec::new();
    let mut uncalibrated: Vec<String> = Vec::new();
    for (pi, p) in plans.iter().enumerate() {
        let target = match p.role {
            Role::Linear => Some(spec.linear_format(&m.weight(p.weight).name)),
            Role::Head => spec.head,
            Role::Embed => spec.embed,
        };
        let w = m.weight(p.weight).clone();
        let role = match p.role {
            Role::Linear => "",
            Role::Head => "head",
            Role::Embed => "embed",
        };
        let Some(asked) = target else {
            kept.push(format!("@{} ({role}=keep)", w.name));
            continue;
        };
        let target = fitted_format(asked, row_len(&w));
        if target != asked {
            let why = format!(
                "rows of {} are not whole groups of {}: {target}",
                row_len(&w),
                asked.block_len()
            );
            if !regrouped.contains(&why) {
                regrouped.push(why);
            }
        }
        let numel = w.shape.as_consts().map_or(0, |d| d.iter().product::<i64>()) as usize;
        // A matrix with at most 16 nonzeros in every block of 32 (`--prune sparse=2:4`
        // or `sparse=16:32`) asked for in q8_0 is stored compressed (`q8_0_2of4`: the
        // kept codes and their masks), one with at most 8 (`sparse=24:32`) in
        // `q8_0_8of32`; GPTQ would fill their zeros, so they are rounded to nearest.
        let sparse_fmt = match (target, p.role, w.data.bytes()) {
            (DType::Q8_0, Role::Linear, Some(bytes)) => as_f32(&w.name, w.dtype, bytes, numel)
                .ok()
                .and_then(|x| gguf::sparse_q8_0(&x)),
            _ => None,
        };
        let target = match sparse_fmt {
            Some(DType::Q8_0S832) => {
                sparse.1 += 1;
                DType::Q8_0S832
            }
            Some(d) => {
                sparse.0 += 1;
                d
            }
            None => target,
        };
        let hess = if spec.gptq
            && p.role == Role::Linear
            && !float_format(target)
            && target.sparse_keep().is_none()
        {
            let h = stats(&w.name);
            if h.is_none() {
                uncalibrated.push(format!("@{}", w.name));
            }
            h
        } else {
            None
        };
        let data = match w.data.bytes() {
            None => WeightData::None,
            Some(bytes) => {
                let x = as_f32(&w.name, w.dtype, bytes, numel).map_err(err)?;
                let wname = |e: String| err(format!("weight @{}: {e}", w.name));
                let q = match hess {
                    Some(h) => {
                        let at = match prepared.iter().position(|(k, _)| Arc::ptr_eq(k, &h)) {
                            Some(i) => i,
                            None => {
                                let d = spec.damp.unwrap_or_else(|| gptq::default_damp(&h));
                                let p = gptq::Prepared::new(&h, d).map_err(wname)?;
                                prepared.push((h.clone(), p));
                                prepared.len() - 1
                            }
                        };
                        let prep = &prepared[at].1;
                        let (q, o) =
                            gptq::quantize(target, &x, numel / h.k, prep).map_err(wname)?;
                        if let Some(c) = calibration {
                            c.record_error(&w.name, o.gptq_error);
                        }
                        gptq_stats.push(o);
                        // Dropped once no later linear reads the same input (a factored
                        // `H` is 12·k² bytes: a 1B model's down projections hold GBs).
                        let later = plans[pi + 1..].iter().any(|q| {
                            q.role == Role::Linear
                                && scaled
                                    .get(&m.weight(q.weight).name)
                                    .or_else(|| {
                                        calibration
                                            .and_then(|c| c.hessians.get(&m.weight(q.weight).name))
                                    })
                                    .is_some_and(|a| Arc::ptr_eq(a, &h))
                        });
                        if !later {
                            prepared.swap_remove(at);
                        }
                        q
                    }
                    None if float_format(target) => to_float(target, &x).map_err(wname)?,
                    None => {
                        // int8 per channel: the linears and the embedding (not the
                        // head, q8_0 in the default mix).
                        let per_row =
                            spec.per_channel && target == DType::Q8_0 && p.role != Role::Head;
                        let q = if per_row {
                            per_channel += 1;
                            gguf::quantize_q8_rows(&x, row_len(&w) as usize).map_err(wname)?
                        } else {
                            gguf::quantize(target, &x).map_err(wname)?
                        };
                        let measured = match (calibration, p.role) {
                            (Some(c), Role::Linear) => stats(&w.name).map(|h| (c, h)),
                            _ => None,
                        };
                        if let Some((c, h)) = measured {
                            c.record_error(&w.name, gptq::rounding_error(target, &x, &h));
                        }
                        q
                    }
                };
                WeightData::Owned(Arc::new(q))
            }
        };
        before += w.dtype.storage_bytes(numel as u64).unwrap_or(0);
        after += target.storage_bytes(numel as u64).unwrap_or(0);
        *counts.entry(target).or_default() += 1;
        if p.role != Role::Linear {
            special.push(format!("{role} @{} {target}", w.name));
        }
        let rec = &mut m.weights[p.weight.0 as usize];
        rec.dtype = target;
        rec.data = data;
        m.graph.values[p.value.0 as usize].ty.dtype = target;
        for u in &p.uses {
            match *u {
                Use::Matrix => {}
                Use::CastToMatrix(c) => {
                    // The linears read the quantized weight itself.
                    let out = m.graph.node(c).outputs[0];
                    repl.insert(out, p.value);
                    keep_node[c.0 as usize] = false;
                }
                Use::Gather(n) if float_format(target) => {
                    // f16/bf16 rows; a cast to f32 is put after the gather below where
                    // the rows were f32 (the casts after an f16 table's gather stay).
                    let out = m.graph.node(n).outputs[0];
                    m.graph.values[out.0 as usize].ty.dtype = target;
                }
                Use::Gather(n) => {
                    let out = m.graph.node(n).outputs[0];
                    let was = m.graph.ty(out).dtype;
                    m.graph.values[out.0 as usize].ty.dtype = DType::F32;
                    if was != DType::F32 {
                        // The casts to f32 after it are identities now; the rows take
                        // the name of the (first) cast's result.
                        let casts = readers(m, out);
                        for (i, &(r, _)) in casts.iter().enumerate() {
                            let cast_out = m.graph.node(r).outputs[0];
                            if i == 0 {
                                let name = m.graph.value(cast_out).name.clone();
                                m.graph.values[out.0 as usize].name = name;
                            }
                            repl.insert(cast_out, out);
                            keep_node[r.0 as usize] = false;
                        }
                    }
                }
            }
        }
    }
    let changed = !counts.is_empty();
    if changed {
        compact(&mut m.graph, &keep_node, &repl);
        // Rows gathered from a table now in f16/bf16 that were read as f32.
        for i in (0..m.graph.nodes.len()).rev() {
            let node = &m.graph.nodes[i];
            let out = node.outputs[0];
            let narrow = node.op == Op::Gather && float_format(m.graph.ty(out).dtype);
            if narrow
                && (m.graph.outputs.contains(&out)
                    || !readers(m, out).iter().all(|&(r, _)| casts_to_f32(m, r)))
            {
                insert_cast_f32(m, NodeId(i as u32));
            }
        }
    }
    let mut by_fmt: Vec<String> = counts.iter().map(|(d, c)| format!("{c} {d}")).collect();
    by_fmt.sort();
    let mut note = format!(
        "{spec}: {} matrices ({}), {} -> {}",
        counts.values().sum::<usize>(),
        if by_fmt.is_empty() {
            "none".to_string()
        } else {
            by_fmt.join(", ")
        },
        mib(before),
        mib(after)
    );
    if !special.is_empty() {
        note += &format!("; {}", special.join(", "));
    }
    if !regrouped.is_empty() {
        note += &format!("; {}", regrouped.join(", "));
    }
    if per_channel > 0 {
        note += &format!(
            "; {per_channel} matrices in int8 per output channel (q8_0 blocks sharing each \
             row's scale)"
        );
    }
    let nearest = if spec.gptq {
        ", rounded to nearest"
    } else {
        ""
    };
    if sparse.0 > 0 {
        note += &format!(
            "; {} half-sparse matrices (at most 16 of 32 kept) stored compressed (q8_0_2of4{nearest})",
            sparse.0
        );
    }
    if sparse.1 > 0 {
        note += &format!(
            "; {} three-quarters-sparse matrices (at most 8 of 32 kept) stored compressed \
             (q8_0_8of32{nearest})",
            sparse.1
        );
    }
    if !kept.is_empty() {
        note += &format!("; kept {}", kept.join(", "));
    }
    if let Some(r) = &smooth_report {
        note += &format!(
            "; smoothquant on {} inputs ({} matrices, mean alpha {:.2}): estimated output \
             error (relative, weights and static activations rounded) {:.5} -> {:.5}, largest \
             channel range over the mean {:.1} -> {:.1}",
            r.groups,
            r.matrices,
            r.alpha_sum / r.groups.max(1) as f64,
            r.plain_error,
            r.smooth_error,
            r.spread_before,
            r.spread_after
        );
        note += &skipped_note("smoothed", &r.skipped);
    }
    if let Some(r) = &awq_report {
        note += &format!(
            "; awq on {} inputs ({} matrices, mean alpha {:.2}): output error (relative, \
             on the calibration, rounded) {:.5} -> {:.5}",
            r.groups,
            r.matrices,
            r.alpha_sum / r.groups.max(1) as f64,
            r.rtn_error,
            r.awq_error
        );
        note += &skipped_note("scaled", &r.skipped);
    }
    if let (true, Some(c)) = (spec.gptq, calibration) {
        let n = gptq_stats.len().max(1) as f64;
        let mean = |f: fn(&gptq::Outcome) -> f64| gptq_stats.iter().map(f).sum::<f64>() / n;
        note += &format!(
            "; gptq on {} matrices ({} tokens of {}): output error (relative, on the \
             calibration) {:.5} rounded to nearest -> {:.5}",
            gptq_stats.len(),
            c.tokens,
            c.source,
            mean(|o| o.rtn_error),
            mean(|o| o.gptq_error)
        );
        let damped = gptq_stats.iter().filter(|o| o.damped).count();
        if damped > 0 {
            note += &format!(" ({damped} needed more damping)");
        }
        if !uncalibrated.is_empty() {
            note += &format!(
                "; {} without statistics rounded to nearest: {}",
                uncalibrated.len(),
                uncalibrated
                    .iter()
                    .take(3)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    if !left.is_empty() {
        note += &format!(
            "; {} left as they are: {}{}",
            left.len(),
            left.iter().take(3).cloned().collect::<Vec<_>>().join(", "),
            if left.len() > 3 { ", ..." } else { "" }
        );
    }
    crate::note(note);
    Ok(changed.into())
}

#[cfg(test)]
mod tests;
