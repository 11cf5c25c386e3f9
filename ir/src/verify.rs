//! The verifier: checks the invariants every pass may rely on and must keep. A module
//! that verifies is in SSA form with nodes in topological order, every node agrees with
//! the op table (operand count, attributes, result types equal to what inference
//! gives), the id back-pointers are consistent, and every weight is well formed. It
//! collects every problem it finds, each naming the node, value or weight at fault, so
//! one run after a broken pass shows all of what went wrong.

use crate::module::{Module, ValueDef, ValueId, WeightData};
use crate::text::{is_symbol_name, value_names};
use crate::{Op, TensorType};
use std::collections::HashSet;
use std::fmt;

/// One problem: where (`%12 = rms_norm`, `weight @w`, `value %x`) and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyError {
    /// The node, value, weight or graph at fault, as printed.
    pub at: String,
    /// What is wrong.
    pub msg: String,
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.at, self.msg)
    }
}

/// Every problem the verifier found, in module order; displays one per line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct VerifyErrors(pub Vec<VerifyError>);

impl fmt::Display for VerifyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Checks the module's invariants; on failure returns all problems found.
pub fn verify(m: &Module) -> Result<(), VerifyErrors> {
    let mut v = Verifier {
        m,
        names: value_names(m),
        errs: Vec::new(),
    };
    v.weights();
    v.values();
    v.nodes();
    v.outputs();
    if v.errs.is_empty() {
        Ok(())
    } else {
        Err(VerifyErrors(v.errs))
    }
}

struct Verifier<'m> {
    m: &'m Module,
    names: Vec<String>,
    errs: Vec<VerifyError>,
}

impl Verifier<'_> {
    fn err(&mut self, at: impl Into<String>, msg: impl Into<String>) {
        self.errs.push(VerifyError {
            at: at.into(),
            msg: msg.into(),
        });
    }

    fn name(&self, v: ValueId) -> String {
        self.names
            .get(v.0 as usize)
            .cloned()
            .unwrap_or_else(|| format!("value #{}", v.0))
    }

    fn weights(&mut self) {
        let mut seen = HashSet::new();
        for w in &self.m.weights {
            let at = format!("weight @{}", w.name);
            if !seen.insert(w.name.as_str()) {
                self.err(&at, "name is declared more than once");
            }
            let Some(dims) = w.shape.as_consts().filter(|d| d.iter().all(|&x| x >= 0)) else {
                self.err(&at, format!("shape {} is not constant", w.shape));
                continue;
            };
            let numel = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64));
            let Some(numel) = numel else {
                self.err(&at, format!("shape {} is too large", w.shape));
                continue;
            };
            let bl = w.dtype.block_len() as i64;
            let need = w.dtype.storage_bytes(numel);
            if w.dtype.is_quantized() && dims.last().is_none_or(|&d| d % bl != 0) {
                self.err(
                    &at,
                    format!(
                        "{}{}: rows are not whole {} blocks of {bl}",
                        w.dtype, w.shape, w.dtype
                    ),
                );
                continue;
            }
            let Some(need) = need else {
                self.err(
                    &at,
                    format!("{numel} elements are not whole {} blocks of {bl}", w.dtype),
                );
                continue;
            };
            let have = match &w.data {
                WeightData::None => None,
                WeightData::Owned(b) => Some(b.len() as u64),
                WeightData::Mapped {
                    map, offset, len, ..
                } => {
                    let end = offset.checked_add(*len);
                    if end.is_none_or(|e| e > map.len()) {
                        self.err(
                            &at,
                            format!(
                                "mapped bytes {offset}..+{len} lie outside the file ({} bytes)",
                                map.len()
                            ),
                        );
                        continue;
                    }
                    Some(*len as u64)
                }
            };
            if let Some(have) = have.filter(|&h| h != need) {
                self.err(
                    &at,
                    format!(
                        "has {have} bytes of data, {}{} needs {need}",
                        w.dtype, w.shape
                    ),
                );
            }
        }
    }

    fn values(&mut self) {
        let g = &self.m.graph;
        let mut defs = vec![0usize; g.values.len()];
        for (i, &v) in g.inputs.iter().enumerate() {
            match defs.get_mut(v.0 as usize) {
                Some(d) => *d += 1,
                None => self.err(
                    format!("graph @{}", g.name),
                    format!("input {i} is value #{}, which does not exist", v.0),
                ),
            }
        }
        for n in &g.nodes {
            for &v in &n.outputs {
                if let Some(d) = defs.get_mut(v.0 as usize) {
                    *d += 1;
                }
            }
        }
        for (i, val) in g.values.iter().enumerate() {
            let id = ValueId(i as u32);
            let at = format!("value {}", self.name(id));
            match &val.def {
                ValueDef::Input(k) => {
                    if g.inputs.get(*k) != Some(&id) {
                        self.err(
                            &at,
                            format!("says it is graph input {k}, but that input is not this value"),
                        );
                    }
                }
                ValueDef::Node(n, k) => {
                    let back = g.nodes.get(n.0 as usize).and_then(|n| n.outputs.get(*k));
                    if back != Some(&id) {
                        self.err(
                            &at,
                            format!(
                                "says it is result {k} of node {}, but that result is not this value",
                                n.0
                            ),
                        );
                    }
                }
                ValueDef::Weight(w) => match self.m.weights.get(w.0 as usize) {
                    None => self.err(
                        &at,
                        format!("refers to weight #{}, which does not exist", w.0),
                    ),
                    Some(wt) => {
                        let want = TensorType::new(wt.dtype, wt.shape.clone());
                        if val.ty != want {
                            self.err(
                                &at,
                                format!("has type {}, but weight @{} is {want}", val.ty, wt.name),
                            );
                        }
                    }
                },
            }
            let d = defs.get(i).copied().unwrap_or(0);
            if matches!(val.def, ValueDef::Weight(_)) && d > 0 {
                self.err(&at, "is a weight but also a graph input or node result");
            } else if d > 1 {
                self.err(
                    &at,
                    format!("is defined {d} times (SSA values are defined once)"),
                );
            }
            // (A weight's own shape check covers its value.)
            let negative = val
                .ty
                .shape
                .0
                .iter()
                .any(|d| d.as_const().is_some_and(|c| c < 0));
            if negative && !matches!(val.def, ValueDef::Weight(_)) {
                self.err(&at, format!("type {} has a negative dim", val.ty));
            }
            for dim in &val.ty.shape.0 {
                for s in dim.symbols() {
                    if !is_symbol_name(s) {
                        self.err(&at, format!("dim symbol `{s}` is not a valid symbol name"));
                    }
                }
            }
        }
    }

    fn nodes(&mut self) {
        let g = &self.m.graph;
        let nvals = g.values.len();
        let mut defined = vec![false; nvals];
        for &v in &g.inputs {
            if let Some(d) = defined.get_mut(v.0 as usize) {
                *d = true;
            }
        }
        for (i, val) in g.values.iter().enumerate() {
            if matches!(val.def, ValueDef::Weight(_)) {
                defined[i] = true;
            }
        }
        let later: HashSet<u32> = g
            .nodes
            .iter()
            .flat_map(|n| n.outputs.iter().map(|v| v.0))
            .collect();
        for (ni, node) in g.nodes.iter().enumerate() {
            let op: Op = node.op;
            let d = op.def();
            let res: Vec<String> = node.outputs.iter().map(|&v| self.name(v)).collect();
            let at = if res.is_empty() {
                format!("node {ni} ({op})")
            } else {
                format!("{} = {op}", res.join(", "))
            };
            let before = self.errs.len();
            if node.outputs.is_empty() {
                self.err(&at, "has no results");
            }
            for (i, &v) in node.inputs.iter().enumerate() {
                match defined.get(v.0 as usize) {
                    None => self.err(
                        &at,
                        format!("operand {i} is value #{}, which does not exist", v.0),
                    ),
                    Some(true) => {}
                    Some(false) if later.contains(&v.0) => self.err(
                        &at,
                        format!(
                            "operand {i} ({}) is used before it is defined",
                            self.name(v)
                        ),
                    ),
                    Some(false) => self.err(
                        &at,
                        format!("operand {i} ({}) is never defined", self.name(v)),
                    ),
                }
            }
            for (i, &v) in node.outputs.iter().enumerate() {
                if v.0 as usize >= nvals {
                    self.err(
                        &at,
                        format!("result {i} is value #{}, which does not exist", v.0),
                    );
                }
            }
            if !d.arity.accepts(node.inputs.len()) {
                self.err(
                    &at,
                    format!("takes {} operand(s), got {}", d.arity, node.inputs.len()),
                );
            }
            for (k, a) in &node.attrs {
                match d.attrs.iter().find(|s| s.name == k) {
                    None => {
                        let known: Vec<&str> = d.attrs.iter().map(|s| s.name).collect();
                        self.err(
                            &at,
                            format!(
                                "unknown attribute `{k}` (`{op}` takes: {})",
                                if known.is_empty() {
                                    "none".to_string()
                                } else {
                                    known.join(", ")
                                }
                            ),
                        );
                    }
                    Some(s) if s.kind != a.kind() => self.err(
                        &at,
                        format!(
                            "attribute `{k}` must be {}, found {}",
                            kind_name(s.kind),
                            kind_name(a.kind())
                        ),
                    ),
                    Some(_) => {}
                }
            }
            for s in d.attrs {
                if s.required && !node.attrs.contains_key(s.name) {
                    self.err(
                        &at,
                        format!("missing attribute `{}` ({})", s.name, kind_name(s.kind)),
                    );
                }
            }
            // Types only mean something once the node's shape is right, and shape
            // rules may assume operand dims are not negative (reported above).
            let negative = node.inputs.iter().any(|&v| {
                g.values.get(v.0 as usize).is_some_and(|val| {
                    val.ty
                        .shape
                        .0
                        .iter()
                        .any(|d| d.as_const().is_some_and(|c| c < 0))
                })
            });
            if self.errs.len() == before && !negative {
                let tys: Vec<&TensorType> = node.inputs.iter().map(|&v| g.ty(v)).collect();
                match op.infer(&tys, &node.attrs) {
                    Err(e) => self.err(&at, format!("type inference fails: {}", e.msg)),
                    Ok(want) if want.len() != node.outputs.len() => self.err(
                        &at,
                        format!(
                            "has {} result(s), `{op}` gives {}",
                            node.outputs.len(),
                            want.len()
                        ),
                    ),
                    Ok(want) => {
                        for (&v, w) in node.outputs.iter().zip(&want) {
                            let have = g.ty(v);
                            if have != w {
                                self.err(
                                    &at,
                                    format!(
                                        "result {} has type {have}, `{op}` gives {w}",
                                        self.name(v)
                                    ),
                                );
                            }
                        }
                    }
                }
            }
            for &v in &node.outputs {
                if let Some(d) = defined.get_mut(v.0 as usize) {
                    *d = true;
                }
            }
        }
    }

    fn outputs(&mut self) {
        let g = &self.m.graph;
        let defined: HashSet<u32> = g
            .inputs
            .iter()
            .chain(g.nodes.iter().flat_map(|n| n.outputs.iter()))
            .map(|v| v.0)
            .collect();
        for (i, &v) in g.outputs.iter().enumerate() {
            let at = format!("graph @{}", g.name);
            match g.values.get(v.0 as usize) {
                None => self.err(
                    at,
                    format!("output {i} is value #{}, which does not exist", v.0),
                ),
                Some(val) => {
                    if !defined.contains(&v.0) && !matches!(val.def, ValueDef::Weight(_)) {
                        self.err(
                            at,
                            format!(
                                "output {i} ({}) is not defined by an input, weight or node",
                                self.name(v)
                            ),
                        );
                    }
                }
            }
        }
    }
}

fn kind_name(k: crate::AttrKind) -> &'static str {
    crate::text::kind_name(k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::module::{attrs, NodeId};
    use crate::{Attr, DType, Shape, TensorType, WeightData};
    use std::sync::Arc;

    fn sample() -> (Module, ValueId, ValueId, ValueId) {
        let mut m = Module::new("t");
        let w = m.add_weight("w", DType::F32, Shape::of(&[4]), WeightData::None);
        let x = m
            .graph
            .add_input("x", TensorType::new(DType::F32, Shape::of(&[4])));
        let a = m.add1(Op::Add, &[x, w], attrs([])).unwrap();
        let b = m.add1(Op::Abs, &[a], attrs([])).unwrap();
        m.graph.outputs.push(b);
        (m, x, a, b)
    }

    fn errors(m: &Module) -> String {
        match verify(m) {
            Ok(()) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_well_formed_module_verifies() {
        let (m, ..) = sample();
        assert_eq!(errors(&m), "");
    }

    #[test]
    fn back_pointers_and_double_definitions() {
        let (mut m, x, a, _) = sample();
        // The abs node claims `a` as a second result: defined twice, and the value's
        // own def names only the add node.
        m.graph.nodes[1].outputs.push(a);
        let e = errors(&m);
        assert!(e.contains("value %2: is defined 2 times"), "{e}");
        // A value whose def points at the wrong input.
        let (mut m2, ..) = sample();
        m2.graph.values[x.0 as usize].def = ValueDef::Input(3);
        let e = errors(&m2);
        assert!(e.contains("value %x: says it is graph input 3"), "{e}");
        let (mut m3, ..) = sample();
        m3.graph.values[a.0 as usize].def = ValueDef::Node(NodeId(7), 0);
        let e = errors(&m3);
        assert!(e.contains("says it is result 0 of node 7"), "{e}");
    }

    #[test]
    fn dangling_ids_are_reported_not_panicked_on() {
        let (mut m, ..) = sample();
        m.graph.nodes[1].inputs[0] = ValueId(99);
        m.graph.outputs.push(ValueId(77));
        m.graph.values[0].def = ValueDef::Weight(crate::WeightId(5));
        let e = errors(&m);
        assert!(
            e.contains("operand 0 is value #99, which does not exist"),
            "{e}"
        );
        assert!(
            e.contains("output 1 is value #77, which does not exist"),
            "{e}"
        );
        assert!(
            e.contains("refers to weight #5, which does not exist"),
            "{e}"
        );
    }

    #[test]
    fn undefined_graph_output() {
        let (mut m, ..) = sample();
        let orphan = m.graph.add_value(
            "ghost".into(),
            TensorType::new(DType::F32, Shape::of(&[4])),
            ValueDef::Node(NodeId(9), 0),
        );
        m.graph.outputs.push(orphan);
        let e = errors(&m);
        assert!(
            e.contains("output 1 (%ghost) is not defined by an input, weight or node"),
            "{e}"
        );
    }

    #[test]
    fn weight_data_and_blocks() {
        let (mut m, ..) = sample();
        m.weights[0].data = WeightData::Owned(Arc::new(vec![0u8; 15]));
        let e = errors(&m);
        assert!(
            e.contains("weight @w: has 15 bytes of data, f32[4] needs 16"),
            "{e}"
        );
        m.weights[0].data = WeightData::Owned(Arc::new(vec![0u8; 16]));
        assert_eq!(errors(&m), "");
        m.add_weight("q", DType::Q4_0, Shape::of(&[2, 48]), WeightData::None);
        let e = errors(&m);
        assert!(
            e.contains("weight @q: q4_0[2, 48]: rows are not whole q4_0 blocks of 32"),
            "{e}"
        );
    }

    #[test]
    fn all_errors_are_collected() {
        let (mut m, ..) = sample();
        m.graph.nodes[0].attrs.insert("bogus".into(), Attr::Int(1));
        m.graph.nodes[1].inputs.push(ValueId(0));
        m.graph.values[3].ty = TensorType::new(DType::F16, Shape::of(&[4]));
        let e = verify(&m).unwrap_err();
        assert_eq!(e.0.len(), 2, "{e}");
        assert!(e.0[0]
            .to_string()
            .starts_with("%2 = add: unknown attribute `bogus`"));
        assert!(e.0[1]
            .to_string()
            .starts_with("%3 = abs: takes 1 operand(s), got 2"));
        // With the operand count fixed, the wrong result type shows.
        m.graph.nodes[1].inputs.pop();
        let e = errors(&m);
        assert!(
            e.contains("%3 = abs: result %3 has type f16[4], `abs` gives f32[4]"),
            "{e}"
        );
    }
}
