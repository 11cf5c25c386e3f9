//! The converter registry: (domain, op type) to the function that maps such a node
//! onto IR ops. Each op family module has a `register` function adding its converters,
//! so supporting a new ONNX op is one function in its family plus one line there.

use super::import::{NodeCtx, V};
use std::collections::HashMap;
use std::sync::OnceLock;

/// A converter: reads the node through the context, emits IR ops, and returns the
/// node's outputs in order (it may return fewer than the node lists when the rest are
/// unused; the importer reports a used one that is missing).
pub type Convert = fn(&mut NodeCtx) -> Result<Vec<V>, String>;

/// Converters by domain and op type.
#[derive(Default)]
pub struct Registry {
    ops: HashMap<&'static str, HashMap<&'static str, Convert>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Registers a converter for an op of the default domain (`ai.onnx`).
    pub fn add(&mut self, op: &'static str, f: Convert) {
        self.add_in("", op, f);
    }

    /// Registers a converter for an op of another domain.
    pub fn add_in(&mut self, domain: &'static str, op: &'static str, f: Convert) {
        self.ops.entry(domain).or_default().insert(op, f);
    }

    /// The converter for an op, if registered.
    pub fn get(&self, domain: &str, op: &str) -> Option<Convert> {
        self.ops.get(domain)?.get(op).copied()
    }

    /// Does any converter live in `domain`?
    pub fn has_domain(&self, domain: &str) -> bool {
        self.ops.contains_key(domain)
    }

    /// The domains with converters, sorted, the default one as `ai.onnx`.
    pub fn domains(&self) -> Vec<&'static str> {
        let mut d: Vec<&'static str> = self
            .ops
            .keys()
            .map(|d| if d.is_empty() { "ai.onnx" } else { *d })
            .collect();
        d.sort();
        d.dedup();
        d
    }

    /// The op types registered in `domain`, sorted.
    pub fn ops(&self, domain: &str) -> Vec<&'static str> {
        let mut v: Vec<&'static str> = self
            .ops
            .get(domain)
            .map(|m| m.keys().copied().collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Every converter llmc has.
    pub fn standard() -> &'static Registry {
        static STANDARD: OnceLock<Registry> = OnceLock::new();
        STANDARD.get_or_init(|| {
            let mut r = Registry::new();
            super::math::register(&mut r);
            super::logic::register(&mut r);
            super::reduce::register(&mut r);
            super::tensor::register(&mut r);
            super::shape::register(&mut r);
            super::linalg::register(&mut r);
            super::nn::register(&mut r);
            super::attention::register(&mut r);
            super::loss::register(&mut r);
            super::cnn::register(&mut r);
            super::quant::register(&mut r);
            super::control::register(&mut r);
            r
        })
    }
}
