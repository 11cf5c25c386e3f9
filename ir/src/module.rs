//! The module: one graph, the weights it reads, and what the runtime needs to know
//! about the model. Values and nodes live in arenas addressed by typed ids, and ids
//! print as their text syntax (`%3`, `@model.norm`), as Cranelift's entities do.

use crate::{Attrs, DType, Op, Shape, TensorType};
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

/// A value id (an SSA value: graph input, weight reference or node result).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(pub u32);

/// A node id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u32);

/// A weight id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WeightId(pub u32);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node{}", self.0)
    }
}

/// Where a value comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum ValueDef {
    /// The `i`th graph input.
    Input(usize),
    /// Output `index` of a node.
    Node(NodeId, usize),
    /// A weight of the module.
    Weight(WeightId),
}

/// A value: its name in the text format, its type and definition.
#[derive(Clone, Debug, PartialEq)]
pub struct Value {
    /// Text name without the sigil (`ids`, `12`, `model.norm.weight`).
    pub name: String,
    /// Static type.
    pub ty: TensorType,
    /// Definition.
    pub def: ValueDef,
}

/// An operation node.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// The op.
    pub op: Op,
    /// Operand values.
    pub inputs: Vec<ValueId>,
    /// Result values.
    pub outputs: Vec<ValueId>,
    /// Attributes.
    pub attrs: Attrs,
}

/// Where a weight's bytes live. The bytes are never printed; they are mapped lazily.
#[derive(Clone, Default)]
pub enum WeightData {
    /// Nothing attached (a module parsed from text, for instance).
    #[default]
    None,
    /// A byte range of a memory-mapped file.
    Mapped {
        /// The mapping (shared by all weights of the file).
        map: Arc<memmap2::Mmap>,
        /// Source path, for messages.
        path: Arc<PathBuf>,
        /// Byte offset in the file.
        offset: usize,
        /// Byte length.
        len: usize,
    },
    /// Bytes owned in memory (built or converted at import).
    Owned(Arc<Vec<u8>>),
}

impl WeightData {
    /// The raw bytes, if attached.
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            WeightData::None => None,
            WeightData::Mapped {
                map, offset, len, ..
            } => map.get(*offset..offset.checked_add(*len)?),
            WeightData::Owned(v) => Some(v),
        }
    }
}

impl fmt::Debug for WeightData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WeightData::None => f.write_str("None"),
            WeightData::Mapped {
                path, offset, len, ..
            } => {
                write!(f, "Mapped({}, {offset}, {len})", path.display())
            }
            WeightData::Owned(v) => write!(f, "Owned({} bytes)", v.len()),
        }
    }
}

/// A weight: name, storage dtype and shape; data mapped from its source file.
#[derive(Clone, Debug)]
pub struct Weight {
    /// Name without `@`.
    pub name: String,
    /// Storage dtype (may be a block format).
    pub dtype: DType,
    /// Shape (constant dims).
    pub shape: Shape,
    /// Bytes.
    pub data: WeightData,
}

/// Weights compare by name, dtype and shape: the text format never carries data.
impl PartialEq for Weight {
    fn eq(&self, o: &Weight) -> bool {
        self.name == o.name && self.dtype == o.dtype && self.shape == o.shape
    }
}

/// Where the runtime finds the tokenizer.
#[derive(Clone, Debug, PartialEq, Default)]
pub enum TokenizerSource {
    /// No tokenizer (a plain tensor model).
    #[default]
    None,
    /// A Hugging Face `tokenizer.json`.
    HfJson(PathBuf),
    /// The metadata of a GGUF file.
    Gguf(PathBuf),
}

/// What the runtime needs to know about the model beyond the graph.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct ModelInfo {
    /// Architecture name (`llama`, `bert`, ...); empty for plain graphs.
    pub architecture: String,
    /// Maximum context length, if known.
    pub context_length: Option<i64>,
    /// Tokenizer location.
    pub tokenizer: TokenizerSource,
    /// Beginning-of-sequence token id.
    pub bos_token: Option<i64>,
    /// End-of-sequence token ids.
    pub eos_tokens: Vec<i64>,
    /// Chat template (Jinja), for instruct models.
    pub chat_template: Option<String>,
    /// Anything else (string key/values, printed sorted).
    pub extra: BTreeMap<String, String>,
}

/// A module: one graph and the weights it reads.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Module {
    /// Module name (`@name`).
    pub name: String,
    /// Model facts.
    pub info: ModelInfo,
    /// Weights, in declaration order.
    pub weights: Vec<Weight>,
    /// The graph.
    pub graph: Graph,
}

/// A dataflow graph in SSA form; nodes are kept in a topological order.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Graph {
    /// Graph name (`@main`).
    pub name: String,
    /// Value arena.
    pub values: Vec<Value>,
    /// Node arena, in topological order.
    pub nodes: Vec<Node>,
    /// Graph inputs.
    pub inputs: Vec<ValueId>,
    /// Graph outputs.
    pub outputs: Vec<ValueId>,
}

impl Graph {
    /// The value record.
    pub fn value(&self, v: ValueId) -> &Value {
        &self.values[v.0 as usize]
    }

    /// The node record.
    pub fn node(&self, n: NodeId) -> &Node {
        &self.nodes[n.0 as usize]
    }

    /// A value's type.
    pub fn ty(&self, v: ValueId) -> &TensorType {
        &self.value(v).ty
    }

    /// Adds a value and returns its id.
    pub fn add_value(&mut self, name: String, ty: TensorType, def: ValueDef) -> ValueId {
        let id = ValueId(self.values.len() as u32);
        self.values.push(Value { name, ty, def });
        id
    }

    /// When `v` of graph `from` names a weight, the same weight as a value of this
    /// graph (same name, type and weight index: the module's weights are shared by the
    /// rewrite that copies a graph); `None` for any other value.
    pub fn weight_value_from(&mut self, from: &Graph, v: ValueId) -> Option<ValueId> {
        let val = from.value(v);
        match val.def {
            ValueDef::Weight(w) => {
                Some(self.add_value(val.name.clone(), val.ty.clone(), ValueDef::Weight(w)))
            }
            _ => None,
        }
    }

    /// Adds a graph input.
    pub fn add_input(&mut self, name: &str, ty: TensorType) -> ValueId {
        let idx = self.inputs.len();
        let v = self.add_value(name.to_string(), ty, ValueDef::Input(idx));
        self.inputs.push(v);
        v
    }

    /// Node ids in order.
    pub fn node_ids(&self) -> impl Iterator<Item = NodeId> {
        (0..self.nodes.len() as u32).map(NodeId)
    }
}

impl Module {
    /// An empty module.
    pub fn new(name: &str) -> Module {
        Module {
            name: name.to_string(),
            graph: Graph {
                name: "main".to_string(),
                ..Graph::default()
            },
            ..Module::default()
        }
    }

    /// Finds a weight by name.
    pub fn weight_id(&self, name: &str) -> Option<WeightId> {
        self.weights
            .iter()
            .position(|w| w.name == name)
            .map(|i| WeightId(i as u32))
    }

    /// The weight record.
    pub fn weight(&self, w: WeightId) -> &Weight {
        &self.weights[w.0 as usize]
    }

    /// Declares a weight and a graph value referring to it; returns the value.
    pub fn add_weight(
        &mut self,
        name: &str,
        dtype: DType,
        shape: Shape,
        data: WeightData,
    ) -> ValueId {
        let wid = WeightId(self.weights.len() as u32);
        self.weights.push(Weight {
            name: name.to_string(),
            dtype,
            shape: shape.clone(),
            data,
        });
        self.graph.add_value(
            name.to_string(),
            TensorType::new(dtype, shape),
            ValueDef::Weight(wid),
        )
    }

    /// The value that refers to weight `w`, if one exists.
    pub fn weight_value(&self, w: WeightId) -> Option<ValueId> {
        self.graph
            .values
            .iter()
            .position(|v| v.def == ValueDef::Weight(w))
            .map(|i| ValueId(i as u32))
    }

    /// Appends a node whose result types come from the op table's inference rule, and
    /// returns its results. Result names are the value numbers.
    pub fn add_node(
        &mut self,
        op: Op,
        inputs: &[ValueId],
        attrs: Attrs,
    ) -> Result<Vec<ValueId>, crate::InferError> {
        let tys: Vec<&TensorType> = inputs.iter().map(|&v| self.graph.ty(v)).collect();
        let out_tys = op.infer(&tys, &attrs)?;
        let nid = NodeId(self.graph.nodes.len() as u32);
        let mut outs = Vec::with_capacity(out_tys.len());
        for (i, ty) in out_tys.into_iter().enumerate() {
            let name = self.graph.values.len().to_string();
            outs.push(self.graph.add_value(name, ty, ValueDef::Node(nid, i)));
        }
        self.graph.nodes.push(Node {
            op,
            inputs: inputs.to_vec(),
            outputs: outs.clone(),
            attrs,
        });
        Ok(outs)
    }

    /// Like [`Module::add_node`] for single-result ops.
    pub fn add1(
        &mut self,
        op: Op,
        inputs: &[ValueId],
        attrs: Attrs,
    ) -> Result<ValueId, crate::InferError> {
        let outs = self.add_node(op, inputs, attrs)?;
        outs.first()
            .copied()
            .ok_or_else(|| crate::InferError::new(op.name(), "op produced no result"))
    }
}

/// Builds an [`Attrs`] map from `(name, value)` pairs.
pub fn attrs<const N: usize>(pairs: [(&str, crate::Attr); N]) -> Attrs {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}
