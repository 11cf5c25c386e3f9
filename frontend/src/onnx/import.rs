//! The importer: walks an ONNX graph in order and hands each node to the converter
//! its op type is registered under. Converters see a [`NodeCtx`]: typed access to the
//! node's inputs and attributes, and builders that emit IR ops.
//!
//! Every ONNX value is tracked as a [`V`] handle that may be known in three ways at
//! import: as an IR value (a graph input, weight or node result), as a constant tensor
//! (a `Constant` node, a small initializer, or anything computed from constants), or as
//! a list of dims (a `Shape` of a value with symbolic dims, and what `Gather`, `Concat`,
//! `Unsqueeze`, arithmetic... make of it). Ops whose operands are all known are
//! evaluated here with the reference interpreter's semantics instead of being emitted,
//! so the `Shape -> Gather -> Unsqueeze -> Concat -> Reshape` chains exporters write
//! fold into a `reshape` with a (possibly symbolic) `shape` attribute. Constants become
//! IR values only when an emitted node needs them.

use super::data::{self, ExternalFiles};
use super::registry::Registry;
use crate::FrontendError;
use llmc_ir::interp::EvalCtx;
use llmc_ir::module::{Graph, Node, NodeId};
use llmc_ir::ops::Flags;
use llmc_ir::tensor::Data;
use llmc_ir::{
    Attr, Attrs, DType, Dim, Module, Op, Shape, Tensor, TensorType, ValueDef, ValueId, WeightData,
    WeightId,
};
use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::type_proto;
use onnx_protobuf::{
    AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto, ValueInfoProto,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Oldest default-domain opset the converters understand.
pub const MIN_OPSET: i64 = 7;
/// Newest default-domain opset the converters understand.
pub const MAX_OPSET: i64 = 28;

/// Values computed at import are kept as constants up to this many elements.
const FOLD_LIMIT: usize = 1 << 20;
/// Initializers up to this many elements take part in folding.
const WEIGHT_FOLD_LIMIT: usize = 1 << 16;
/// Initializers of rank 3 or more up to this many elements are imported as constants,
/// not weights (scalars always are).
const SMALL_INITIALIZER: usize = 128;
/// Constants up to this many elements are inlined as `constant` nodes; larger ones
/// become weights.
const INLINE_LIMIT: usize = 4096;

/// A handle to an ONNX value during import.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct V(u32);

struct Val {
    ty: TensorType,
    /// The IR value, once there is one.
    id: Option<ValueId>,
    /// The value's elements, when known at import.
    konst: Option<Arc<Tensor>>,
    /// Elements as dims, for integer values of rank <= 1 computed from shapes.
    dims: Option<Vec<Dim>>,
    /// The initializer behind the value, if any (decoded on demand).
    weight: Option<WeightId>,
    /// For a graph input bound by [`ImportOptions::bind_inputs`], and for values
    /// computed from bound inputs and constants: the value a converter gets when it needs
    /// this one as a constant. Never used for folding: the node stays in the graph.
    bound: Option<Arc<Tensor>>,
}

/// Options of an import.
#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    /// Values for graph inputs that converters need as constants (a `Reshape` shape, a
    /// `ReduceSum`'s axes, ... given as graph inputs). The input stays a graph input;
    /// only a converter that cannot work without the constant reads the bound value,
    /// so the module is specialised to it. ONNX's node tests feed such operands as
    /// inputs; real models have them as initializers.
    pub bind_inputs: HashMap<String, Tensor>,
}

/// The importer's state for one model.
pub struct Importer<'r> {
    file: String,
    base_dir: Option<PathBuf>,
    module: Module,
    vals: Vec<Val>,
    scope: HashMap<String, V>,
    opsets: HashMap<String, i64>,
    registry: &'r Registry,
    ext: ExternalFiles,
    fresh: usize,
    /// `dim_param` symbols read as another: the past lengths of a KV-cache export's
    /// inputs (see [`Importer::cache_lengths`]).
    sym_alias: HashMap<String, String>,
    weight_names: HashSet<String>,
    /// Node index and name prefix for nodes of inlined subgraphs.
    path: Vec<String>,
    options: ImportOptions,
    /// Types the model declares for values (value_info and graph outputs).
    declared: HashMap<String, Declared>,
}

/// A declared type: the element type and, per dim, a constant or unknown (`None` where
/// the model leaves them out or uses a type llmc does not have).
type Declared = (Option<DType>, Option<Vec<Option<i64>>>);

/// The default domain's two spellings.
pub fn norm_domain(d: &str) -> &str {
    if d == "ai.onnx" {
        ""
    } else {
        d
    }
}

fn show_domain(d: &str) -> &str {
    if d.is_empty() {
        "ai.onnx"
    } else {
        d
    }
}

/// A symbol name from an ONNX `dim_param` (which may be any string).
fn symbol_of(param: &str) -> String {
    let mut s: String = param
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if !s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
        s.insert(0, '_');
    }
    if !llmc_ir::text::is_symbol_name(&s) {
        s.push('_');
    }
    s
}

impl<'r> Importer<'r> {
    fn new(
        file: String,
        base_dir: Option<PathBuf>,
        registry: &'r Registry,
        options: ImportOptions,
    ) -> Importer<'r> {
        Importer {
            file,
            base_dir,
            module: Module::new("main"),
            vals: Vec::new(),
            scope: HashMap::new(),
            opsets: HashMap::new(),
            registry,
            ext: ExternalFiles::default(),
            fresh: 0,
            sym_alias: HashMap::new(),
            weight_names: HashSet::new(),
            path: Vec::new(),
            options,
            declared: HashMap::new(),
        }
    }

    /// Records the types the model declares (value_info, graph outputs); unsupported
    /// or absent parts are left unknown.
    fn declare(&mut self, infos: &[ValueInfoProto]) {
        use onnx_protobuf::tensor_shape_proto::dimension::Value as DV;
        for vi in infos {
            let Some(type_proto::Value::TensorType(t)) =
                vi.type_.as_ref().and_then(|t| t.value.as_ref())
            else {
                continue;
            };
            let dtype = data::dtype_of(t.elem_type).ok();
            let dims = t.shape.as_ref().map(|s| {
                s.dim
                    .iter()
                    .map(|d| match d.value {
                        Some(DV::DimValue(n)) => Some(n),
                        _ => None,
                    })
                    .collect()
            });
            self.declared.insert(vi.name.clone(), (dtype, dims));
        }
    }

    /// Checks a produced value against the type the model declares for it.
    fn check_declared(&self, name: &str, v: V) -> Result<(), String> {
        let Some((dtype, dims)) = self.declared.get(name) else {
            return Ok(());
        };
        let ty = &self.val(v).ty;
        let clash = |what: String| {
            Err(format!(
                "output `{name}` is {ty} here, but the model declares {what}"
            ))
        };
        if let Some(d) = dtype {
            if *d != ty.dtype {
                return clash(format!("element type {d}"));
            }
        }
        if let Some(dims) = dims {
            if dims.len() != ty.shape.rank() {
                return clash(format!("rank {}", dims.len()));
            }
            for (k, (want, have)) in dims.iter().zip(&ty.shape.0).enumerate() {
                if let (Some(w), Some(h)) = (want, have.as_const()) {
                    if *w != h {
                        return clash(format!("dim {k} = {w}"));
                    }
                }
            }
        }
        Ok(())
    }

    fn format_err(&self, msg: impl Into<String>) -> FrontendError {
        FrontendError::Format {
            file: self.file.clone(),
            msg: msg.into(),
        }
    }

    fn unsupported(&self, msg: impl Into<String>) -> FrontendError {
        FrontendError::Unsupported {
            file: self.file.clone(),
            msg: msg.into(),
        }
    }

    fn push(&mut self, val: Val) -> V {
        self.vals.push(val);
        V(self.vals.len() as u32 - 1)
    }

    fn val(&self, v: V) -> &Val {
        &self.vals[v.0 as usize]
    }

    /// A fresh symbol for an unnamed dynamic dim.
    fn fresh_symbol(&mut self) -> Dim {
        let s = format!("dyn{}", self.fresh);
        self.fresh += 1;
        Dim::sym(&s)
    }

    // ----- model level -----

    fn model(&mut self, mut model: ModelProto) -> Result<(), FrontendError> {
        for o in &model.opset_import {
            let d = norm_domain(&o.domain).to_string();
            if d.is_empty() && !(MIN_OPSET..=MAX_OPSET).contains(&o.version) {
                return Err(self.unsupported(format!(
                    "opset {} of domain ai.onnx is not supported (supported: {MIN_OPSET} to {MAX_OPSET})",
                    o.version
                )));
            }
            self.opsets.insert(d, o.version);
        }
        if model.opset_import.is_empty() {
            // IR version 1 and 2 models predate opset_import: opset 1, not supported.
            return Err(self.unsupported(format!(
                "the model imports no opset (IR version {}); opsets {MIN_OPSET} to {MAX_OPSET} are supported",
                model.ir_version
            )));
        }
        let g = model
            .graph
            .as_mut()
            .ok_or_else(|| self.format_err("the model has no graph"))?;
        let inits = std::mem::take(&mut g.initializer);
        let g = &*g;
        self.module.name = if g.name.is_empty() {
            "main".into()
        } else {
            g.name.clone()
        };
        if !model.producer_name.is_empty() {
            let p = format!("{} {}", model.producer_name, model.producer_version);
            self.module
                .info
                .extra
                .insert("onnx.producer".into(), p.trim().to_string());
        }
        // What the file holds, for `llmc inspect --emit summary`: the opsets and the
        // ONNX op histogram (the IR graph's own ops are counted from the graph).
        let opsets: Vec<String> = model
            .opset_import
            .iter()
            .map(|o| {
                let d = if o.domain.is_empty() {
                    "ai.onnx"
                } else {
                    o.domain.as_str()
                };
                format!("{d} {}", o.version)
            })
            .collect();
        let info = &mut self.module.info.extra;
        info.insert("onnx.opset".into(), opsets.join(", "));
        let mut hist = BTreeMap::<String, usize>::new();
        for n in &g.node {
            let key = if norm_domain(&n.domain).is_empty() {
                n.op_type.clone()
            } else {
                format!("{}.{}", n.domain, n.op_type)
            };
            *hist.entry(key).or_default() += 1;
        }
        let mut hist: Vec<(String, usize)> = hist.into_iter().collect();
        hist.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let ops: Vec<String> = hist.iter().map(|(k, n)| format!("{k} {n}")).collect();
        info.insert(
            "onnx.ops".into(),
            format!("{} nodes: {}", g.node.len(), ops.join(", ")),
        );
        self.declare(&g.value_info);
        self.declare(&g.output);
        self.initializers(g, inits)?;
        self.inputs(g)?;
        self.nodes(g)?;
        self.outputs(g)?;
        Ok(())
    }

    fn initializers(
        &mut self,
        g: &GraphProto,
        inits: Vec<TensorProto>,
    ) -> Result<(), FrontendError> {
        if let Some(s) = g.sparse_initializer.first() {
            let name = s
                .values
                .as_ref()
                .map(|t| t.name.clone())
                .unwrap_or_default();
            return Err(self.unsupported(format!("sparse initializer `{name}`")));
        }
        for t in inits {
            self.initializer(t)?;
        }
        Ok(())
    }

    fn initializer(&mut self, t: TensorProto) -> Result<V, FrontendError> {
        if t.name.is_empty() {
            return Err(self.format_err("an initializer has no name"));
        }
        let name = t.name.clone();
        let tb = data::decode_owned(t, self.base_dir.as_deref(), &mut self.ext).map_err(|m| {
            FrontendError::BadTensor {
                file: self.file.clone(),
                name: name.clone(),
                msg: format!("initializer: {m}"),
            }
        })?;
        let dims: Vec<i64> = tb.shape.iter().map(|&d| d as i64).collect();
        // Exporters store their own constants as initializers too (dynamo: the 2 of
        // `pow(x, 2)`, RoPE's inv_freq [1, d/2, 1], a mask's -inf, named `val_N`):
        // scalars and small tensors of rank 3 or more are constants, as a `Constant`
        // node would have made them, so folding and the rewrite rules see their values.
        // Parameters (biases, norm weights, matrices: rank 1 and 2) stay weights
        // whatever their size.
        let numel = tb.shape.iter().product::<usize>();
        if numel <= 1 || (tb.shape.len() >= 3 && numel <= SMALL_INITIALIZER) {
            let t = tb
                .data
                .bytes()
                .and_then(|b| llmc_ir::interp::weight_tensor(tb.dtype, &tb.shape, b).ok());
            if let Some(t) = t {
                let v = self.push(Val {
                    ty: TensorType::new(tb.dtype, Shape::of(&dims)),
                    id: None,
                    konst: Some(Arc::new(t)),
                    dims: None,
                    weight: None,
                    bound: None,
                });
                self.scope.insert(name, v);
                return Ok(v);
            }
        }
        let wname = self.unique_weight_name(&name);
        let id = self
            .module
            .add_weight(&wname, tb.dtype, Shape::of(&dims), tb.data);
        let ValueDef::Weight(w) = self.module.graph.value(id).def else {
            unreachable!("add_weight returns a weight value")
        };
        let v = self.push(Val {
            ty: TensorType::new(tb.dtype, Shape::of(&dims)),
            id: Some(id),
            konst: None,
            dims: None,
            weight: Some(w),
            bound: None,
        });
        self.scope.insert(name, v);
        Ok(v)
    }

    fn unique_weight_name(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut k = 1;
        while self.weight_names.contains(&name) {
            name = format!("{base}.{k}");
            k += 1;
        }
        self.weight_names.insert(name.clone());
        name
    }

    fn value_type(&mut self, vi: &ValueInfoProto, what: &str) -> Result<TensorType, FrontendError> {
        let file = self.file.clone();
        let bad = |msg: String| FrontendError::Unsupported {
            file: file.clone(),
            msg: format!("{what} `{}`: {msg}", vi.name),
        };
        let tt = match vi.type_.as_ref().and_then(|t| t.value.as_ref()) {
            Some(type_proto::Value::TensorType(t)) => t,
            Some(type_proto::Value::SequenceType(_)) => {
                return Err(bad("sequence types are not supported".into()))
            }
            Some(type_proto::Value::MapType(_)) => {
                return Err(bad("map types are not supported".into()))
            }
            Some(type_proto::Value::OptionalType(_)) => {
                return Err(bad("optional types are not supported".into()))
            }
            Some(type_proto::Value::SparseTensorType(_)) => {
                return Err(bad("sparse tensors are not supported".into()))
            }
            Some(_) => return Err(bad("this value type is not supported".into())),
            None => return Err(bad("has no type".into())),
        };
        let dtype = data::dtype_of(tt.elem_type).map_err(bad)?;
        let shape = tt
            .shape
            .as_ref()
            .ok_or_else(|| bad("has no shape (unknown rank)".into()))?;
        let mut dims = Vec::with_capacity(shape.dim.len());
        for d in &shape.dim {
            use onnx_protobuf::tensor_shape_proto::dimension::Value as DV;
            dims.push(match &d.value {
                Some(DV::DimValue(n)) if *n >= 0 => Dim::c(*n),
                Some(DV::DimValue(n)) => return Err(bad(format!("negative dim {n}"))),
                Some(DV::DimParam(p)) if !p.is_empty() => {
                    let s = symbol_of(p);
                    Dim::sym(self.sym_alias.get(&s).unwrap_or(&s))
                }
                _ => self.fresh_symbol(),
            });
        }
        Ok(TensorType::new(dtype, Shape(dims)))
    }

    /// A KV-cache export's past inputs (`past_key_values.N.key/value`, `past_key.N`,
    /// ..., rank 4 `[batch, kv_heads, past, head_dim]`) hold one past length, but
    /// dynamo names each input's own (`s69`, `s89`, ...): the symbols of their axis 2
    /// become the first one's, so the keys and values of a layer concatenate to one
    /// length. Only bare `dim_param`s are aliased.
    fn cache_lengths(&mut self, g: &GraphProto) {
        use onnx_protobuf::tensor_shape_proto::dimension::Value as DV;
        let mut first: Option<String> = None;
        for vi in &g.input {
            let n = vi.name.to_ascii_lowercase();
            if !(n.starts_with("past") && (n.contains("key") || n.contains("value"))) {
                continue;
            }
            let Some(type_proto::Value::TensorType(t)) =
                vi.type_.as_ref().and_then(|t| t.value.as_ref())
            else {
                continue;
            };
            let dims = t.shape.as_ref().map(|s| &s.dim[..]).unwrap_or(&[]);
            let Some(Some(DV::DimParam(p))) = (dims.len() == 4).then(|| &dims[2].value) else {
                continue;
            };
            let sym = symbol_of(p);
            match &first {
                None => first = Some(sym),
                Some(f) if *f != sym => {
                    self.sym_alias.insert(sym, f.clone());
                }
                Some(_) => {}
            }
        }
    }

    fn inputs(&mut self, g: &GraphProto) -> Result<(), FrontendError> {
        self.cache_lengths(g);
        for vi in &g.input {
            // IR < 4 lists initializers among the inputs too: those are weights.
            if self.scope.contains_key(&vi.name) {
                continue;
            }
            let ty = self.value_type(vi, "graph input")?;
            let id = self.module.graph.add_input(&vi.name, ty.clone());
            let bound = self
                .options
                .bind_inputs
                .get(&vi.name)
                .cloned()
                .map(Arc::new);
            let v = self.push(Val {
                ty,
                id: Some(id),
                konst: None,
                dims: None,
                weight: None,
                bound,
            });
            self.scope.insert(vi.name.clone(), v);
        }
        Ok(())
    }

    fn nodes(&mut self, g: &GraphProto) -> Result<(), FrontendError> {
        for (i, node) in g.node.iter().enumerate() {
            self.node(node, i)?;
        }
        Ok(())
    }

    fn node(&mut self, node: &NodeProto, index: usize) -> Result<(), FrontendError> {
        let domain = norm_domain(&node.domain);
        let err = |imp: &Importer, opset: i64, msg: String| {
            let mut idx = imp.path.join("/");
            if !idx.is_empty() {
                idx.push('/');
            }
            idx.push_str(&index.to_string());
            FrontendError::OnnxNode(Box::new(crate::error::OnnxNodeError {
                file: imp.file.clone(),
                index: idx,
                name: node.name.clone(),
                op: node.op_type.clone(),
                domain: show_domain(domain).to_string(),
                opset,
                msg,
            }))
        };
        let Some(&opset) = self.opsets.get(domain) else {
            return Err(err(
                self,
                0,
                format!(
                    "domain `{}` is not imported by the model (opset_import lists: {})",
                    show_domain(domain),
                    {
                        let mut d: Vec<&str> = self.opsets.keys().map(|d| show_domain(d)).collect();
                        d.sort();
                        d.join(", ")
                    }
                ),
            ));
        };
        let Some(conv) = self.registry.get(domain, &node.op_type) else {
            let msg = if self.registry.has_domain(domain) {
                format!(
                    "unknown op `{}` (no converter is registered for it)",
                    node.op_type
                )
            } else {
                format!(
                    "unknown domain `{}` (supported: {})",
                    show_domain(domain),
                    self.registry.domains().join(", ")
                )
            };
            return Err(err(self, opset, msg));
        };
        let outs = {
            let mut cx = NodeCtx {
                imp: self,
                node,
                opset,
            };
            conv(&mut cx)
        }
        .map_err(|m| err(self, opset, m))?;
        for (k, name) in node.output.iter().enumerate() {
            if name.is_empty() {
                continue;
            }
            let Some(&v) = outs.get(k) else {
                return Err(err(
                    self,
                    opset,
                    format!("output {k} (`{name}`) is not supported by this converter"),
                ));
            };
            if self.path.is_empty() {
                self.check_declared(name, v)
                    .map_err(|m| err(self, opset, m))?;
            }
            self.scope.insert(name.clone(), v);
        }
        Ok(())
    }

    fn outputs(&mut self, g: &GraphProto) -> Result<(), FrontendError> {
        let mut outs = Vec::new();
        for vi in &g.output {
            let v = *self.scope.get(&vi.name).ok_or_else(|| {
                self.format_err(format!(
                    "graph output `{}` is not produced by any node, initializer or input",
                    vi.name
                ))
            })?;
            let id = self
                .materialize(v)
                .map_err(|m| self.unsupported(format!("graph output `{}`: {m}", vi.name)))?;
            let have = self.module.graph.ty(id).dtype;
            if let Some(type_proto::Value::TensorType(t)) =
                vi.type_.as_ref().and_then(|t| t.value.as_ref())
            {
                if t.elem_type != 0 {
                    let want = data::dtype_of(t.elem_type).map_err(|m| {
                        self.unsupported(format!("graph output `{}`: {m}", vi.name))
                    })?;
                    if want != have {
                        return Err(self.format_err(format!(
                            "graph output `{}` is declared {want}, but its producer gives {have}",
                            vi.name
                        )));
                    }
                }
            }
            let val = &mut self.module.graph.values[id.0 as usize];
            if matches!(val.def, ValueDef::Node(..)) && !outs.contains(&id) {
                val.name = vi.name.clone();
            }
            outs.push(id);
        }
        self.module.graph.outputs = outs;
        Ok(())
    }

    // ----- values -----

    /// The value's elements, if known at import (initializers are decoded here).
    fn konst(&mut self, v: V, limit: usize) -> Result<Option<Arc<Tensor>>, String> {
        let val = self.val(v);
        if let Some(k) = &val.konst {
            return Ok(Some(k.clone()));
        }
        let Some(w) = val.weight else {
            return Ok(None);
        };
        let numel = val
            .ty
            .shape
            .as_consts()
            .map(|d| d.iter().product::<i64>() as usize)
            .unwrap_or(usize::MAX);
        if numel > limit {
            return Ok(None);
        }
        let wt = self.module.weight(w);
        let shape: Vec<usize> = wt
            .shape
            .as_consts()
            .unwrap_or_default()
            .into_iter()
            .map(|d| d as usize)
            .collect();
        let bytes = wt.data.bytes().ok_or("initializer has no data")?;
        let t = Arc::new(
            llmc_ir::interp::weight_tensor(wt.dtype, &shape, bytes)
                .map_err(|m| format!("initializer `{}`: {m}", wt.name))?,
        );
        self.vals[v.0 as usize].konst = Some(t.clone());
        Ok(Some(t))
    }

    /// The elements of an integer value of rank <= 1 as dims, if known.
    fn dims_of(&mut self, v: V) -> Result<Option<Vec<Dim>>, String> {
        if let Some(d) = &self.val(v).dims {
            return Ok(Some(d.clone()));
        }
        let ty = &self.val(v).ty;
        if !ty.dtype.is_int() || ty.shape.rank() > 1 {
            return Ok(None);
        }
        Ok(self
            .konst(v, WEIGHT_FOLD_LIMIT)?
            .map(|t| t.to_i64().into_iter().map(Dim::c).collect()))
    }

    /// The IR value of `v`, emitting a constant (or a weight, when large) if `v` was
    /// only known at import.
    fn materialize(&mut self, v: V) -> Result<ValueId, String> {
        if let Some(id) = self.val(v).id {
            return Ok(id);
        }
        let t = match &self.val(v).konst {
            Some(t) => t.clone(),
            None => return self.materialize_dims(v),
        };
        let id = if t.numel() <= INLINE_LIMIT {
            let attrs = Attrs::from([("value".to_string(), Attr::Tensor((*t).clone()))]);
            self.module
                .add1(Op::Constant, &[], attrs)
                .map_err(|e| e.to_string())?
        } else {
            let name = self.unique_weight_name(&format!("const.{}", v.0));
            let dims: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
            self.module.add_weight(
                &name,
                t.dtype,
                Shape::of(&dims),
                WeightData::Owned(Arc::new(data::tensor_bytes(&t))),
            )
        };
        self.vals[v.0 as usize].id = Some(id);
        Ok(id)
    }

    /// A value known as (symbolic) dims, computed at run time by a `dims` op.
    fn materialize_dims(&mut self, v: V) -> Result<ValueId, String> {
        let val = self.val(v);
        let (dims, ty) = match &val.dims {
            Some(d) => (d.clone(), val.ty.clone()),
            None => return Err("a value with no definition is used".into()),
        };
        let attrs = Attrs::from([("value".to_string(), Attr::Shape(Shape(dims)))]);
        let mut id = self
            .module
            .add1(Op::Dims, &[], attrs)
            .map_err(|e| e.to_string())?;
        if ty.shape.rank() == 0 {
            let a = Attrs::from([("shape".to_string(), Attr::Shape(Shape(vec![])))]);
            id = self
                .module
                .add1(Op::Reshape, &[id], a)
                .map_err(|e| e.to_string())?;
        }
        if ty.dtype != DType::I64 {
            let a = Attrs::from([("to".to_string(), Attr::Type(ty.dtype))]);
            id = self
                .module
                .add1(Op::Cast, &[id], a)
                .map_err(|e| e.to_string())?;
        }
        self.vals[v.0 as usize].id = Some(id);
        Ok(id)
    }

    fn constant(&mut self, t: Tensor) -> V {
        let dims: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
        self.push(Val {
            ty: TensorType::new(t.dtype, Shape::of(&dims)),
            id: None,
            konst: Some(Arc::new(t)),
            dims: None,
            weight: None,
            bound: None,
        })
    }

    /// Emits `op`, or evaluates it when every operand is known at import.
    fn op(&mut self, op: Op, ins: &[V], attrs: Attrs) -> Result<Vec<V>, String> {
        let tys: Vec<&TensorType> = ins.iter().map(|&v| &self.val(v).ty).collect();
        let out_tys = op.infer(&tys, &attrs).map_err(|e| e.to_string())?;
        let stateful = op.flags().has(Flags::STATEFUL);
        let small = out_tys.iter().all(|t| {
            t.shape.as_consts().is_some_and(|d| {
                d.iter()
                    .try_fold(1i64, |a, &x| a.checked_mul(x))
                    .is_some_and(|n| n as usize <= FOLD_LIMIT)
            })
        });
        if !stateful && small {
            let mut ks = Vec::with_capacity(ins.len());
            for &v in ins {
                match self.konst(v, WEIGHT_FOLD_LIMIT)? {
                    Some(k) => ks.push(k),
                    None => break,
                }
            }
            if ks.len() == ins.len() {
                let refs: Vec<&Tensor> = ks.iter().map(|k| k.as_ref()).collect();
                let outs = op
                    .eval(&refs, &attrs, &mut EvalCtx::default())
                    .map_err(|m| format!("{op} (evaluated at import): {m}"))?;
                return Ok(outs.into_iter().map(|t| self.constant(t)).collect());
            }
        }
        if !stateful && out_tys.len() == 1 {
            if let Some(t) = self.sym_compare(op, ins, &out_tys[0])? {
                return Ok(vec![self.constant(t)]);
            }
            if let Some(d) = self.sym_eval(op, ins, &attrs, &out_tys[0])? {
                let ty = out_tys[0].clone();
                return Ok(vec![self.push(Val {
                    ty,
                    id: None,
                    konst: None,
                    dims: Some(d),
                    weight: None,
                    bound: None,
                })]);
            }
        }
        let bound = if !stateful && small {
            self.shadow_eval(op, ins, &attrs)
        } else {
            None
        };
        let ids: Vec<ValueId> = ins
            .iter()
            .map(|&v| self.materialize(v))
            .collect::<Result<_, _>>()?;
        let outs = self
            .module
            .add_node(op, &ids, attrs)
            .map_err(|e| e.to_string())?;
        Ok(outs
            .into_iter()
            .enumerate()
            .map(|(k, id)| {
                let ty = self.module.graph.ty(id).clone();
                let bound = bound.as_ref().and_then(|b| b.get(k)).cloned().map(Arc::new);
                self.push(Val {
                    ty,
                    id: Some(id),
                    konst: None,
                    dims: None,
                    weight: None,
                    bound,
                })
            })
            .collect())
    }

    /// Evaluates an op whose operands are constants or bound values (see
    /// [`ImportOptions::bind_inputs`]); `None` when one is neither or evaluation fails.
    fn shadow_eval(&mut self, op: Op, ins: &[V], attrs: &Attrs) -> Option<Vec<Tensor>> {
        if !ins.iter().any(|&v| self.val(v).bound.is_some()) {
            return None;
        }
        let mut ks = Vec::with_capacity(ins.len());
        for &v in ins {
            let k = match self.konst(v, WEIGHT_FOLD_LIMIT) {
                Ok(Some(k)) => k,
                _ => self.val(v).bound.clone()?,
            };
            ks.push(k);
        }
        let refs: Vec<&Tensor> = ks.iter().map(|k| k.as_ref()).collect();
        op.eval(&refs, attrs, &mut EvalCtx::default()).ok()
    }

    /// Comparisons of values known as dims whose answer does not depend on the
    /// symbols: a dim equals itself, and a symbolic dim (a size, so >= 0) is never a
    /// negative constant. Exporters write `Where(Equal(shape, -1), 1, shape)` before an
    /// `Expand`; this folds the `Equal`. `None` when some element is undecided.
    fn sym_compare(
        &mut self,
        op: Op,
        ins: &[V],
        out: &TensorType,
    ) -> Result<Option<Tensor>, String> {
        if op != Op::Equal || out.shape.rank() > 1 {
            return Ok(None);
        }
        if !ins.iter().any(|&v| self.val(v).dims.is_some()) {
            return Ok(None);
        }
        let (Some(a), Some(b)) = (self.dims_of(ins[0])?, self.dims_of(ins[1])?) else {
            return Ok(None);
        };
        let n = match out.shape.as_consts() {
            Some(d) => d.iter().product::<i64>() as usize,
            None => return Ok(None),
        };
        let mut v = Vec::with_capacity(n);
        for i in 0..n {
            let x = a.get(if a.len() == 1 { 0 } else { i });
            let y = b.get(if b.len() == 1 { 0 } else { i });
            let (Some(x), Some(y)) = (x, y) else {
                return Ok(None);
            };
            let eq = match (x.as_const(), y.as_const()) {
                (Some(p), Some(q)) => p == q,
                _ if x == y => true,
                (Some(c), None) | (None, Some(c)) if c < 0 => false,
                _ => return Ok(None),
            };
            v.push(i64::from(eq));
        }
        let shape = out
            .shape
            .as_consts()
            .unwrap_or_default()
            .into_iter()
            .map(|d| d as usize)
            .collect();
        Ok(Some(Tensor::from_i64(DType::Bool, shape, v)))
    }

    /// Evaluates integer ops over dims (shape arithmetic with symbols). `None` when an
    /// operand is not known as dims or the op is not one shape computations use.
    fn sym_eval(
        &mut self,
        op: Op,
        ins: &[V],
        attrs: &Attrs,
        out: &TensorType,
    ) -> Result<Option<Vec<Dim>>, String> {
        if !out.dtype.is_int() || out.shape.rank() > 1 {
            return Ok(None);
        }
        if !ins.iter().any(|&v| self.val(v).dims.is_some()) {
            return Ok(None);
        }
        let out_n = match out.shape.as_consts() {
            Some(d) => d.iter().product::<i64>() as usize,
            None => return Ok(None),
        };
        if op == Op::Where {
            // A known condition picks between dims elementwise.
            let Some(c) = self.konst(ins[0], WEIGHT_FOLD_LIMIT)? else {
                return Ok(None);
            };
            let (Some(a), Some(b)) = (self.dims_of(ins[1])?, self.dims_of(ins[2])?) else {
                return Ok(None);
            };
            let c = c.to_i64();
            let pick = |d: &Vec<Dim>, i: usize| d.get(if d.len() == 1 { 0 } else { i }).cloned();
            let r: Option<Vec<Dim>> = (0..out_n)
                .map(|i| {
                    let ci = *c.get(if c.len() == 1 { 0 } else { i })?;
                    if ci != 0 {
                        pick(&a, i)
                    } else {
                        pick(&b, i)
                    }
                })
                .collect();
            return Ok(r);
        }
        let mut ds = Vec::with_capacity(ins.len());
        for &v in ins {
            match self.dims_of(v)? {
                Some(d) => ds.push(d),
                None => return Ok(None),
            }
        }
        let bin = |f: &dyn Fn(&Dim, &Dim) -> Option<Dim>| -> Option<Vec<Dim>> {
            let (a, b) = (&ds[0], &ds[1]);
            (0..out_n)
                .map(|i| {
                    let x = a.get(if a.len() == 1 { 0 } else { i })?;
                    let y = b.get(if b.len() == 1 { 0 } else { i })?;
                    f(x, y)
                })
                .collect()
        };
        let r = match op {
            Op::Cast | Op::Reshape | Op::Squeeze | Op::Unsqueeze | Op::Expand => {
                let d = &ds[0];
                if d.len() == out_n {
                    Some(d.clone())
                } else if d.len() == 1 {
                    Some(vec![d[0].clone(); out_n])
                } else {
                    None
                }
            }
            Op::Concat => Some(ds.concat()),
            Op::Add => bin(&|x, y| x.checked_add(y)),
            Op::Sub => bin(&|x, y| x.checked_sub(y)),
            Op::Mul => bin(&|x, y| x.checked_mul(y)),
            Op::Div => bin(&|x, y| {
                // Integer division truncates: exact only when it divides.
                match (x.as_const(), y.as_const()) {
                    (Some(a), Some(b)) if b != 0 => Some(Dim::c(a / b)),
                    _ => x.div_exact(y),
                }
            }),
            Op::Gather => {
                let idx = match self.konst(ins[1], WEIGHT_FOLD_LIMIT)? {
                    Some(t) => t.to_i64(),
                    None => return Ok(None),
                };
                let d = &ds[0];
                let n = d.len() as i64;
                idx.iter()
                    .map(|&i| {
                        let j = if i < 0 { i + n } else { i };
                        d.get(usize::try_from(j).ok()?).cloned()
                    })
                    .collect::<Option<Vec<_>>>()
            }
            Op::Slice => {
                // Evaluate on positions 0..n with the real semantics, then pick.
                let d = &ds[0];
                let pos =
                    Tensor::from_i64(DType::I64, vec![d.len()], (0..d.len() as i64).collect());
                let picked = Op::Slice
                    .eval(&[&pos], attrs, &mut EvalCtx::default())
                    .map_err(|m| format!("slice of a shape: {m}"))?;
                picked
                    .first()
                    .map(|t| t.to_i64().iter().map(|&i| d[i as usize].clone()).collect())
            }
            _ => None,
        };
        Ok(r.filter(|d| d.len() == out_n))
    }
}

/// What a converter sees of one node.
pub struct NodeCtx<'a, 'r> {
    imp: &'a mut Importer<'r>,
    node: &'a NodeProto,
    /// The opset version of the node's domain.
    pub opset: i64,
}

fn attr_kind(a: &AttributeProto) -> AttributeType {
    a.type_.enum_value().unwrap_or(AttributeType::UNDEFINED)
}

impl NodeCtx<'_, '_> {
    /// The op type.
    pub fn op_type(&self) -> &str {
        &self.node.op_type
    }

    /// How many inputs the node lists (including empty, i.e. omitted, ones).
    pub fn n_inputs(&self) -> usize {
        self.node.input.len()
    }

    /// How many outputs the node lists.
    pub fn n_outputs(&self) -> usize {
        self.node.output.len()
    }

    /// Does the node use output `k`?
    pub fn wants_output(&self, k: usize) -> bool {
        self.node.output.get(k).is_some_and(|n| !n.is_empty())
    }

    /// Is input `i` given (present and not the empty name)?
    pub fn has_input(&self, i: usize) -> bool {
        self.node.input.get(i).is_some_and(|n| !n.is_empty())
    }

    /// Optional input `i`.
    pub fn opt_input(&self, i: usize) -> Result<Option<V>, String> {
        let Some(name) = self.node.input.get(i).filter(|n| !n.is_empty()) else {
            return Ok(None);
        };
        match self.imp.scope.get(name) {
            Some(&v) => Ok(Some(v)),
            None => Err(format!(
                "input {i} `{name}` is not defined by an earlier node, an initializer or a graph input"
            )),
        }
    }

    /// Required input `i`.
    pub fn input(&self, i: usize) -> Result<V, String> {
        self.opt_input(i)?
            .ok_or_else(|| format!("input {i} is required but not given"))
    }

    /// Every given input, in order (omitted ones skipped).
    pub fn inputs(&self) -> Result<Vec<V>, String> {
        (0..self.n_inputs())
            .filter(|&i| self.has_input(i))
            .map(|i| self.input(i))
            .collect()
    }

    /// The static type of a value.
    pub fn ty(&self, v: V) -> &TensorType {
        &self.imp.val(v).ty
    }

    /// The element type of a value.
    pub fn dtype(&self, v: V) -> DType {
        self.ty(v).dtype
    }

    /// The rank of a value.
    pub fn rank(&self, v: V) -> usize {
        self.ty(v).shape.rank()
    }

    /// The shape of a value.
    pub fn shape(&self, v: V) -> &Shape {
        &self.ty(v).shape
    }

    /// The shape of a value, which must be constant.
    pub fn static_shape(&self, v: V, what: &str) -> Result<Vec<usize>, String> {
        self.shape(v)
            .as_consts()
            .map(|d| d.into_iter().map(|x| x as usize).collect())
            .ok_or_else(|| format!("{what} must have a constant shape, got {}", self.shape(v)))
    }

    fn input_name(&self, i: usize) -> &str {
        self.node.input.get(i).map(String::as_str).unwrap_or("")
    }

    /// The elements of a value if known at import (a bound graph input counts: the
    /// converter cannot work without a constant).
    pub fn konst(&mut self, v: V) -> Result<Option<Arc<Tensor>>, String> {
        if let Some(t) = self.imp.konst(v, usize::MAX)? {
            return Ok(Some(t));
        }
        Ok(self.imp.val(v).bound.clone())
    }

    /// Input `i`, which must be known at import (an initializer, a constant or a value
    /// computed from them).
    pub fn const_input(&mut self, i: usize, what: &str) -> Result<Arc<Tensor>, String> {
        let v = self.input(i)?;
        self.konst(v)?.ok_or_else(|| {
            format!(
                "input {i} ({what}, `{}`) must be a constant at import (an initializer or a value computed from constants)",
                self.input_name(i)
            )
        })
    }

    /// Optional input `i` as integers, which must be known at import.
    pub fn opt_const_ints(&mut self, i: usize, what: &str) -> Result<Option<Vec<i64>>, String> {
        if !self.has_input(i) {
            return Ok(None);
        }
        let t = self.const_input(i, what)?;
        if !t.dtype.is_int() {
            return Err(format!(
                "input {i} ({what}) must be an integer tensor, got {}",
                t.dtype
            ));
        }
        Ok(Some(t.to_i64()))
    }

    /// Input `i` as integers, which must be known at import.
    pub fn const_ints(&mut self, i: usize, what: &str) -> Result<Vec<i64>, String> {
        self.opt_const_ints(i, what)?
            .ok_or_else(|| format!("input {i} ({what}) is required but not given"))
    }

    /// Input `i` as dims: known integers, or a value computed from (symbolic) shapes.
    pub fn shape_input(&mut self, i: usize, what: &str) -> Result<Vec<Dim>, String> {
        let v = self.input(i)?;
        if !self.dtype(v).is_int() || self.rank(v) > 1 {
            return Err(format!(
                "input {i} ({what}) must be an integer tensor of rank 0 or 1, got {}",
                self.ty(v)
            ));
        }
        if let Some(t) = self.imp.val(v).bound.clone() {
            if self.imp.val(v).konst.is_none() {
                return Ok(t.to_i64().into_iter().map(Dim::c).collect());
            }
        }
        self.imp.dims_of(v)?.ok_or_else(|| {
            format!(
                "input {i} ({what}, `{}`) must be known at import (a constant or computed from shapes)",
                self.input_name(i)
            )
        })
    }

    /// A value known only as dims (rank 1, or rank 0 when `scalar`).
    pub fn dims_value(&mut self, dims: Vec<Dim>, scalar: bool) -> V {
        let shape = if scalar {
            Shape(vec![])
        } else {
            Shape::of(&[dims.len() as i64])
        };
        if let Some(c) = dims
            .iter()
            .map(|d| d.as_const())
            .collect::<Option<Vec<i64>>>()
        {
            let sh = if scalar { vec![] } else { vec![c.len()] };
            return self.constant(Tensor::from_i64(DType::I64, sh, c));
        }
        self.imp.push(Val {
            ty: TensorType::new(DType::I64, shape),
            id: None,
            konst: None,
            dims: Some(dims),
            weight: None,
            bound: None,
        })
    }

    // ----- attributes -----

    /// The attribute named `name`, if given.
    pub fn attr(&self, name: &str) -> Option<&AttributeProto> {
        self.node.attribute.iter().find(|a| a.name == name)
    }

    fn kind_err(&self, name: &str, want: &str, a: &AttributeProto) -> String {
        format!("attribute `{name}` must be {want}, got {:?}", attr_kind(a))
    }

    /// Integer attribute.
    pub fn attr_opt_i(&self, name: &str) -> Result<Option<i64>, String> {
        match self.attr(name) {
            None => Ok(None),
            Some(a) if matches!(attr_kind(a), AttributeType::INT | AttributeType::UNDEFINED) => {
                Ok(Some(a.i))
            }
            Some(a) => Err(self.kind_err(name, "INT", a)),
        }
    }

    /// Integer attribute with a default.
    pub fn attr_i(&self, name: &str, default: i64) -> Result<i64, String> {
        Ok(self.attr_opt_i(name)?.unwrap_or(default))
    }

    /// Float attribute.
    pub fn attr_opt_f(&self, name: &str) -> Result<Option<f64>, String> {
        match self.attr(name) {
            None => Ok(None),
            Some(a)
                if matches!(
                    attr_kind(a),
                    AttributeType::FLOAT | AttributeType::UNDEFINED
                ) =>
            {
                Ok(Some(a.f as f64))
            }
            Some(a) => Err(self.kind_err(name, "FLOAT", a)),
        }
    }

    /// Float attribute with a default.
    pub fn attr_f(&self, name: &str, default: f64) -> Result<f64, String> {
        Ok(self.attr_opt_f(name)?.unwrap_or(default))
    }

    /// String attribute.
    pub fn attr_s(&self, name: &str) -> Result<Option<String>, String> {
        match self.attr(name) {
            None => Ok(None),
            Some(a)
                if matches!(
                    attr_kind(a),
                    AttributeType::STRING | AttributeType::UNDEFINED
                ) =>
            {
                Ok(Some(String::from_utf8_lossy(&a.s).into_owned()))
            }
            Some(a) => Err(self.kind_err(name, "STRING", a)),
        }
    }

    /// Integer-list attribute.
    pub fn attr_ints(&self, name: &str) -> Result<Option<Vec<i64>>, String> {
        match self.attr(name) {
            None => Ok(None),
            Some(a) if matches!(attr_kind(a), AttributeType::INTS | AttributeType::UNDEFINED) => {
                Ok(Some(a.ints.clone()))
            }
            Some(a) => Err(self.kind_err(name, "INTS", a)),
        }
    }

    /// Float-list attribute.
    pub fn attr_floats(&self, name: &str) -> Result<Option<Vec<f64>>, String> {
        match self.attr(name) {
            None => Ok(None),
            Some(a)
                if matches!(
                    attr_kind(a),
                    AttributeType::FLOATS | AttributeType::UNDEFINED
                ) =>
            {
                Ok(Some(a.floats.iter().map(|&f| f as f64).collect()))
            }
            Some(a) => Err(self.kind_err(name, "FLOATS", a)),
        }
    }

    /// Tensor attribute, decoded.
    pub fn attr_tensor(&mut self, name: &str) -> Result<Option<Tensor>, String> {
        let node = self.node;
        let Some(a) = node.attribute.iter().find(|a| a.name == name) else {
            return Ok(None);
        };
        let t = match (attr_kind(a), a.t.as_ref()) {
            (AttributeType::TENSOR | AttributeType::UNDEFINED, Some(t)) => t,
            _ => return Err(self.kind_err(name, "TENSOR", a)),
        };
        let tb = data::decode(t, self.imp.base_dir.as_deref(), &mut self.imp.ext)
            .map_err(|m| format!("attribute `{name}`: {m}"))?;
        tb.to_tensor()
            .map_err(|m| format!("attribute `{name}`: {m}"))
            .map(Some)
    }

    /// Graph attribute (a subgraph), for control flow.
    pub fn attr_graph(&self, name: &str) -> Result<&GraphProto, String> {
        match self.attr(name) {
            Some(a) => a.g.as_ref().ok_or_else(|| self.kind_err(name, "GRAPH", a)),
            None => Err(format!("missing attribute `{name}`")),
        }
    }

    // ----- building -----

    /// Emits (or folds) a single-result op.
    pub fn op(&mut self, op: Op, ins: &[V], attrs: Attrs) -> Result<V, String> {
        let outs = self.imp.op(op, ins, attrs)?;
        outs.first()
            .copied()
            .ok_or_else(|| format!("{op} produced no result"))
    }

    /// Emits (or folds) an op with several results.
    pub fn op_n(&mut self, op: Op, ins: &[V], attrs: Attrs) -> Result<Vec<V>, String> {
        self.imp.op(op, ins, attrs)
    }

    /// A constant value.
    pub fn constant(&mut self, t: Tensor) -> V {
        self.imp.constant(t)
    }

    /// A scalar constant of `dtype`.
    pub fn scalar(&mut self, dtype: DType, v: f64) -> V {
        self.imp.constant(Tensor::scalar(dtype, v))
    }

    /// Casts `v` to `to` (no node when it already has that type).
    pub fn cast(&mut self, v: V, to: DType) -> Result<V, String> {
        if self.dtype(v) == to {
            return Ok(v);
        }
        self.op(Op::Cast, &[v], Attrs::from([("to".into(), Attr::Type(to))]))
    }

    /// Inlines a subgraph (an `If` branch, a `Loop` or `Scan` body for one step): its
    /// inputs are bound to `inputs` in order, its nodes see the enclosing scope; returns
    /// its outputs.
    pub fn inline_graph(
        &mut self,
        g: &GraphProto,
        tag: &str,
        inputs: &[V],
    ) -> Result<Vec<V>, String> {
        if inputs.len() != g.input.len() {
            return Err(format!(
                "the subgraph takes {} inputs, {} given",
                g.input.len(),
                inputs.len()
            ));
        }
        let saved = self.imp.scope.clone();
        self.imp.path.push(tag.to_string());
        for (vi, &v) in g.input.iter().zip(inputs) {
            self.imp.scope.insert(vi.name.clone(), v);
        }
        let r = (|| {
            for t in &g.initializer {
                self.imp.initializer(t.clone()).map_err(|e| e.to_string())?;
            }
            for (i, n) in g.node.iter().enumerate() {
                self.imp.node(n, i).map_err(|e| e.to_string())?;
            }
            g.output
                .iter()
                .map(|o| {
                    self.imp.scope.get(&o.name).copied().ok_or_else(|| {
                        format!("subgraph output `{}` is not produced by its nodes", o.name)
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        })();
        self.imp.path.pop();
        self.imp.scope = saved;
        r
    }
}

/// Removes nodes whose results nothing uses and weights nothing reads.
pub(crate) fn prune(old: Module) -> Module {
    let g = &old.graph;
    let n = g.values.len();
    let mut live = vec![false; n];
    for o in &g.outputs {
        live[o.0 as usize] = true;
    }
    let mut live_node = vec![false; g.nodes.len()];
    for (ni, node) in g.nodes.iter().enumerate().rev() {
        if node.op.flags().has(Flags::STATEFUL) || node.outputs.iter().any(|o| live[o.0 as usize]) {
            live_node[ni] = true;
            for i in &node.inputs {
                live[i.0 as usize] = true;
            }
        }
    }
    let mut m = Module {
        name: old.name.clone(),
        info: old.info.clone(),
        weights: Vec::new(),
        graph: Graph {
            name: g.name.clone(),
            ..Graph::default()
        },
    };
    let mut map: Vec<Option<ValueId>> = vec![None; n];
    for &i in &g.inputs {
        let v = g.value(i);
        map[i.0 as usize] = Some(m.graph.add_input(&v.name, v.ty.clone()));
    }
    for (i, v) in g.values.iter().enumerate() {
        if let ValueDef::Weight(w) = v.def {
            if live[i] {
                let wt = old.weight(w);
                map[i] = Some(m.add_weight(&wt.name, wt.dtype, wt.shape.clone(), wt.data.clone()));
            }
        }
    }
    for (ni, node) in g.nodes.iter().enumerate() {
        if !live_node[ni] {
            continue;
        }
        let nid = NodeId(m.graph.nodes.len() as u32);
        let inputs = node
            .inputs
            .iter()
            .map(|i| map[i.0 as usize].unwrap_or(*i))
            .collect();
        let mut outputs = Vec::with_capacity(node.outputs.len());
        for (k, &o) in node.outputs.iter().enumerate() {
            let v = g.value(o);
            let id = m
                .graph
                .add_value(v.name.clone(), v.ty.clone(), ValueDef::Node(nid, k));
            map[o.0 as usize] = Some(id);
            outputs.push(id);
        }
        m.graph.nodes.push(Node {
            op: node.op,
            inputs,
            outputs,
            attrs: node.attrs.clone(),
        });
    }
    // Node results are named by their number in the text format; renumber them.
    for (i, v) in m.graph.values.iter_mut().enumerate() {
        if matches!(v.def, ValueDef::Node(..)) && v.name.parse::<u64>().is_ok() {
            v.name = i.to_string();
        }
    }
    m.graph.outputs = g
        .outputs
        .iter()
        .map(|o| map[o.0 as usize].unwrap_or(*o))
        .collect();
    m
}

/// Imports a parsed model. `file` names it in messages; `base_dir` is where external
/// data files are looked up.
pub fn import(
    model: ModelProto,
    file: &str,
    base_dir: Option<&Path>,
    registry: &Registry,
    options: ImportOptions,
) -> Result<Module, FrontendError> {
    let mut imp = Importer::new(
        file.to_string(),
        base_dir.map(Path::to_path_buf),
        registry,
        options,
    );
    imp.model(model)?;
    Ok(prune(imp.module))
}

/// Helper for converters: the elements of a known tensor as i64.
pub fn ints_of(t: &Tensor) -> Vec<i64> {
    match &t.data {
        Data::I(v) => v.clone(),
        Data::F(v) => v.iter().map(|&x| x as i64).collect(),
    }
}

/// Small builders converters share.
impl NodeCtx<'_, '_> {
    /// A unary op without attributes.
    pub fn un(&mut self, op: Op, x: V) -> Result<V, String> {
        self.op(op, &[x], Attrs::new())
    }

    /// A binary op without attributes.
    pub fn bin(&mut self, op: Op, a: V, b: V) -> Result<V, String> {
        self.op(op, &[a, b], Attrs::new())
    }

    /// A scalar constant with the dtype of `like`.
    pub fn scalar_like(&mut self, like: V, v: f64) -> V {
        let d = self.dtype(like);
        self.scalar(d, v)
    }

    /// The single given input, converted by one unary op.
    pub fn unary(&mut self, op: Op) -> Result<Vec<V>, String> {
        let x = self.input(0)?;
        Ok(vec![self.un(op, x)?])
    }

    /// The two inputs, combined by one binary op.
    pub fn binary(&mut self, op: Op) -> Result<Vec<V>, String> {
        let (a, b) = (self.input(0)?, self.input(1)?);
        Ok(vec![self.bin(op, a, b)?])
    }

    /// Requires a float input.
    pub fn need_float(&self, v: V, what: &str) -> Result<(), String> {
        if self.dtype(v).is_float() {
            Ok(())
        } else {
            Err(format!(
                "{what} must be a float tensor, got {}",
                self.dtype(v)
            ))
        }
    }
}
