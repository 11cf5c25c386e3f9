//! Node attributes. Each op declares its attributes (name, kind, default) in the op
//! table; the parser uses that declaration to read a literal (`[]` is an empty list of
//! whichever kind the op wants), and the verifier checks nodes against it.

use crate::{DType, Shape, Tensor};
use std::collections::BTreeMap;

/// An attribute value.
#[derive(Clone, Debug, PartialEq)]
pub enum Attr {
    /// Integer.
    Int(i64),
    /// Float.
    Float(f64),
    /// Boolean.
    Bool(bool),
    /// String.
    Str(String),
    /// List of integers.
    Ints(Vec<i64>),
    /// List of floats.
    Floats(Vec<f64>),
    /// An element type.
    Type(DType),
    /// A shape (dims may be symbolic).
    Shape(Shape),
    /// A constant tensor (printed inline as `dense<...>`).
    Tensor(Tensor),
}

/// The kind of value an attribute takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttrKind {
    /// `Attr::Int`.
    Int,
    /// `Attr::Float`.
    Float,
    /// `Attr::Bool`.
    Bool,
    /// `Attr::Str`.
    Str,
    /// `Attr::Ints`.
    Ints,
    /// `Attr::Floats`.
    Floats,
    /// `Attr::Type`.
    Type,
    /// `Attr::Shape`.
    Shape,
    /// `Attr::Tensor`.
    Tensor,
}

impl Attr {
    /// The kind of this value.
    pub fn kind(&self) -> AttrKind {
        match self {
            Attr::Int(_) => AttrKind::Int,
            Attr::Float(_) => AttrKind::Float,
            Attr::Bool(_) => AttrKind::Bool,
            Attr::Str(_) => AttrKind::Str,
            Attr::Ints(_) => AttrKind::Ints,
            Attr::Floats(_) => AttrKind::Floats,
            Attr::Type(_) => AttrKind::Type,
            Attr::Shape(_) => AttrKind::Shape,
            Attr::Tensor(_) => AttrKind::Tensor,
        }
    }
}

/// The attributes of one node, sorted by name.
pub type Attrs = BTreeMap<String, Attr>;

/// One attribute an op declares.
#[derive(Clone, Copy, Debug)]
pub struct AttrSpec {
    /// Name.
    pub name: &'static str,
    /// Kind of value.
    pub kind: AttrKind,
    /// Must a node give it?
    pub required: bool,
}

/// Shorthand for a required attribute spec.
pub const fn req(name: &'static str, kind: AttrKind) -> AttrSpec {
    AttrSpec {
        name,
        kind,
        required: true,
    }
}

/// Shorthand for an optional attribute spec.
pub const fn opt(name: &'static str, kind: AttrKind) -> AttrSpec {
    AttrSpec {
        name,
        kind,
        required: false,
    }
}

/// Typed getters used by op rules; the verifier has already checked kinds, but these
/// still answer `None` rather than panic on a wrong kind.
pub trait AttrsExt {
    /// Integer attribute.
    fn int(&self, name: &str) -> Option<i64>;
    /// Float attribute (an integer literal is accepted).
    fn float(&self, name: &str) -> Option<f64>;
    /// Boolean attribute.
    fn bool(&self, name: &str) -> Option<bool>;
    /// String attribute.
    fn str(&self, name: &str) -> Option<&str>;
    /// Integer list attribute.
    fn ints(&self, name: &str) -> Option<&[i64]>;
    /// Float list attribute.
    fn floats(&self, name: &str) -> Option<&[f64]>;
    /// Type attribute.
    fn dtype(&self, name: &str) -> Option<DType>;
    /// Shape attribute.
    fn shape(&self, name: &str) -> Option<&Shape>;
    /// Tensor attribute.
    fn tensor(&self, name: &str) -> Option<&Tensor>;
}

impl AttrsExt for Attrs {
    fn int(&self, name: &str) -> Option<i64> {
        match self.get(name)? {
            Attr::Int(v) => Some(*v),
            _ => None,
        }
    }
    fn float(&self, name: &str) -> Option<f64> {
        match self.get(name)? {
            Attr::Float(v) => Some(*v),
            Attr::Int(v) => Some(*v as f64),
            _ => None,
        }
    }
    fn bool(&self, name: &str) -> Option<bool> {
        match self.get(name)? {
            Attr::Bool(v) => Some(*v),
            _ => None,
        }
    }
    fn str(&self, name: &str) -> Option<&str> {
        match self.get(name)? {
            Attr::Str(v) => Some(v),
            _ => None,
        }
    }
    fn ints(&self, name: &str) -> Option<&[i64]> {
        match self.get(name)? {
            Attr::Ints(v) => Some(v),
            _ => None,
        }
    }
    fn floats(&self, name: &str) -> Option<&[f64]> {
        match self.get(name)? {
            Attr::Floats(v) => Some(v),
            _ => None,
        }
    }
    fn dtype(&self, name: &str) -> Option<DType> {
        match self.get(name)? {
            Attr::Type(v) => Some(*v),
            _ => None,
        }
    }
    fn shape(&self, name: &str) -> Option<&Shape> {
        match self.get(name)? {
            Attr::Shape(v) => Some(v),
            _ => None,
        }
    }
    fn tensor(&self, name: &str) -> Option<&Tensor> {
        match self.get(name)? {
            Attr::Tensor(v) => Some(v),
            _ => None,
        }
    }
}
