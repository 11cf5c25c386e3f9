//! The e-graph language, generated from the op table rather than written out a second
//! time: an e-node is a head (an op of the table, or one of a few structural leaves)
//! with children. An op node's last child is an attribute leaf, so rule patterns can
//! bind attributes to a variable (`(softmax ?x ?a)`) and conditions read them.
//! Shape and dtype are the e-class analysis, computed by the op table's own rules.

use egg::{DidMerge, Id, Language};
use llmc_ir::text::print_attr;
use llmc_ir::{Attrs, Op, TensorType};
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// A node's attributes, compared and hashed by their canonical text. `uniq` keeps
/// otherwise identical stateful nodes (KV cache appends) apart.
#[derive(Clone, Debug)]
pub struct AttrsKey(Arc<(String, Attrs)>);

impl AttrsKey {
    /// Canonical key of `attrs` (attribute names are sorted, values in text syntax).
    pub fn new(attrs: Attrs, uniq: Option<usize>) -> AttrsKey {
        let mut key = String::new();
        for (k, v) in &attrs {
            if !key.is_empty() {
                key.push_str(", ");
            }
            key.push_str(k);
            key.push_str(" = ");
            key.push_str(&print_attr(v));
        }
        if let Some(u) = uniq {
            key.push_str(&format!(" #{u}"));
        }
        AttrsKey(Arc::new((key, attrs)))
    }

    /// The attributes.
    pub fn attrs(&self) -> &Attrs {
        &self.0 .1
    }

    /// The canonical text.
    pub fn key(&self) -> &str {
        &self.0 .0
    }
}

impl PartialEq for AttrsKey {
    fn eq(&self, o: &AttrsKey) -> bool {
        self.key() == o.key()
    }
}
impl Eq for AttrsKey {}
impl Hash for AttrsKey {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.key().hash(h)
    }
}
impl PartialOrd for AttrsKey {
    fn partial_cmp(&self, o: &AttrsKey) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for AttrsKey {
    fn cmp(&self, o: &AttrsKey) -> Ordering {
        self.key().cmp(o.key())
    }
}

/// What an e-node is.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Head {
    /// An op of the table; children are the operands then one [`Head::Attrs`] leaf.
    Op(Op),
    /// An attribute set (leaf).
    Attrs(AttrsKey),
    /// Graph input `i` (leaf).
    Input(u32),
    /// Weight `i` of the module (leaf).
    Weight(u32),
    /// Result `i` of a multi-result node (its one child).
    Proj(u32),
    /// The root: graph outputs, then stateful nodes that must be kept.
    Outputs(u32),
}

/// An e-node.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ENode {
    /// What it is.
    pub head: Head,
    /// Children e-classes.
    pub children: Vec<Id>,
}

impl ENode {
    /// An op node: operands then the attribute class.
    pub fn op(op: Op, operands: &[Id], attrs: Id) -> ENode {
        let mut children = operands.to_vec();
        children.push(attrs);
        ENode {
            head: Head::Op(op),
            children,
        }
    }

    /// A leaf.
    pub fn leaf(head: Head) -> ENode {
        ENode {
            head,
            children: Vec::new(),
        }
    }

    /// The op, if this is an op node.
    pub fn as_op(&self) -> Option<Op> {
        match self.head {
            Head::Op(op) => Some(op),
            _ => None,
        }
    }

    /// An op node's operands (children without the attribute leaf).
    pub fn operands(&self) -> &[Id] {
        match self.head {
            Head::Op(_) => self.children.split_last().map_or(&[], |(_, r)| r),
            _ => &self.children,
        }
    }

    /// An op node's attribute class.
    pub fn attrs_class(&self) -> Option<Id> {
        match self.head {
            Head::Op(_) => self.children.last().copied(),
            _ => None,
        }
    }
}

impl Language for ENode {
    type Discriminant = (Head, usize);

    fn discriminant(&self) -> Self::Discriminant {
        (self.head.clone(), self.children.len())
    }

    fn matches(&self, other: &Self) -> bool {
        self.head == other.head && self.children.len() == other.children.len()
    }

    fn children(&self) -> &[Id] {
        &self.children
    }

    fn children_mut(&mut self) -> &mut [Id] {
        &mut self.children
    }
}

impl fmt::Display for ENode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.head {
            Head::Op(op) => write!(f, "{op}"),
            Head::Attrs(a) => write!(f, "{{{}}}", a.key()),
            Head::Input(i) => write!(f, "input{i}"),
            Head::Weight(i) => write!(f, "weight{i}"),
            Head::Proj(i) => write!(f, "proj{i}"),
            Head::Outputs(n) => write!(f, "outputs{n}"),
        }
    }
}

/// Pattern syntax: op names of the table, `projN`, and `noattrs` (an empty attribute
/// set, for nodes a rule builds). Other leaves are bound to variables in rules.
impl egg::FromOp for ENode {
    type Error = String;

    fn from_op(op: &str, children: Vec<Id>) -> Result<Self, Self::Error> {
        if let Some(o) = Op::from_name(op) {
            return Ok(ENode {
                head: Head::Op(o),
                children,
            });
        }
        if op == "noattrs" && children.is_empty() {
            return Ok(ENode::leaf(Head::Attrs(AttrsKey::new(Attrs::new(), None))));
        }
        if let Some(i) = op.strip_prefix("proj").and_then(|s| s.parse().ok()) {
            return Ok(ENode {
                head: Head::Proj(i),
                children,
            });
        }
        Err(format!("`{op}` is not an op of the table"))
    }
}

/// What the analysis knows about an e-class.
#[derive(Clone, Debug, PartialEq)]
pub struct Data {
    /// Result types (one per result; a multi-result node's class has several, an
    /// attribute leaf none). `None` when the op table rejects the node.
    pub types: Option<Vec<TensorType>>,
    /// The attributes, for an attribute class.
    pub attrs: Option<AttrsKey>,
    /// The value when every element is one known constant (a splat constant).
    pub splat: Option<f64>,
    /// Computed from weights and constants only: folded at compile time, free at run time.
    pub konst: bool,
}

impl Data {
    /// The single result type, if the class has exactly one.
    pub fn ty(&self) -> Option<&TensorType> {
        match self.types.as_deref() {
            Some([t]) => Some(t),
            _ => None,
        }
    }
}

/// The shape/dtype analysis: each class's types come from the op table's inference rule
/// applied to its operands' types; weights and inputs read theirs from the module.
#[derive(Default)]
pub struct TypeAnalysis {
    /// Types of the graph inputs, by index.
    pub inputs: Vec<TensorType>,
    /// Types of the weights, by index.
    pub weights: Vec<TensorType>,
    /// Uses of each graph value in the loaded graph (operands and graph outputs), by
    /// the class it was loaded into: a rewrite that changes a value for one user must
    /// know it has no other.
    pub users: Vec<(Id, usize)>,
    /// The values of boolean weights (mask buffers, as GPT-2's causal `bias` that its
    /// TorchScript export gathers rows and columns from), by index: the causal rules
    /// read them.
    pub bool_weights: std::collections::HashMap<u32, Arc<llmc_ir::Tensor>>,
}

impl TypeAnalysis {
    /// Uses the loaded graph made of class `id` (summed over the values merged into
    /// it); `None` for a class no graph value was loaded into.
    pub fn uses(eg: &EGraph, id: Id) -> Option<usize> {
        let id = eg.find(id);
        let mut n = None;
        for &(c, u) in &eg.analysis.users {
            if eg.find(c) == id {
                n = Some(n.unwrap_or(0) + u);
            }
        }
        n
    }
}

/// The e-graph type used throughout.
pub type EGraph = egg::EGraph<ENode, TypeAnalysis>;

/// The single-element or all-equal value of a constant tensor.
fn splat_of(t: &llmc_ir::Tensor) -> Option<f64> {
    let v = t.to_f64();
    let first = *v.first()?;
    v.iter().all(|&x| x == first).then_some(first)
}

impl egg::Analysis<ENode> for TypeAnalysis {
    type Data = Data;

    fn make(egraph: &mut EGraph, enode: &ENode) -> Data {
        let none = Data {
            types: None,
            attrs: None,
            splat: None,
            konst: false,
        };
        match &enode.head {
            Head::Attrs(a) => Data {
                types: Some(Vec::new()),
                attrs: Some(a.clone()),
                splat: None,
                konst: true,
            },
            Head::Input(i) => Data {
                types: egraph
                    .analysis
                    .inputs
                    .get(*i as usize)
                    .map(|t| vec![t.clone()]),
                ..none
            },
            Head::Weight(i) => Data {
                types: egraph
                    .analysis
                    .weights
                    .get(*i as usize)
                    .map(|t| vec![t.clone()]),
                konst: true,
                ..none
            },
            Head::Proj(i) => {
                let types = enode.children.first().and_then(|&c| {
                    let ts = egraph[c].data.types.as_ref()?;
                    ts.get(*i as usize).map(|t| vec![t.clone()])
                });
                Data { types, ..none }
            }
            Head::Outputs(_) => Data {
                types: Some(Vec::new()),
                ..none
            },
            Head::Op(op) => {
                let Some(attrs) = enode
                    .attrs_class()
                    .and_then(|c| egraph[c].data.attrs.clone())
                else {
                    return none;
                };
                let mut tys = Vec::new();
                for &c in enode.operands() {
                    match egraph[c].data.ty() {
                        Some(t) => tys.push(t.clone()),
                        None => return none,
                    }
                }
                let refs: Vec<&TensorType> = tys.iter().collect();
                let types = op.infer(&refs, attrs.attrs()).ok();
                let splat = match op {
                    Op::Constant => attrs.attrs().get("value").and_then(|v| match v {
                        llmc_ir::Attr::Tensor(t) => splat_of(t),
                        _ => None,
                    }),
                    _ => None,
                };
                let konst = !op.flags().has(llmc_ir::ops::Flags::STATEFUL)
                    && !matches!(op, Op::Dims)
                    && enode.operands().iter().all(|&c| egraph[c].data.konst);
                Data {
                    types,
                    attrs: None,
                    splat,
                    konst,
                }
            }
        }
    }

    fn merge(&mut self, a: &mut Data, b: Data) -> DidMerge {
        let mut changed_a = false;
        if a.types.is_none() && b.types.is_some() {
            a.types = b.types.clone();
            changed_a = true;
        }
        if a.splat.is_none() && b.splat.is_some() {
            a.splat = b.splat;
            changed_a = true;
        }
        if a.attrs.is_none() && b.attrs.is_some() {
            a.attrs = b.attrs.clone();
            changed_a = true;
        }
        let changed_b =
            (b.types.is_none() && a.types.is_some()) || (b.splat.is_none() && a.splat.is_some());
        DidMerge(changed_a, changed_b)
    }
}
