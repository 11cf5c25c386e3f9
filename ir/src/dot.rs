//! Graphviz export (`llmc inspect --emit dot`, `llmc build --emit dot`): a picture of the
//! dataflow for humans. Graph inputs and outputs are ellipses, nodes are boxes labelled
//! with their results, op, attributes and result types; weights are not drawn as their
//! own nodes (a model has hundreds) but listed in the label of the node that reads them.

use crate::module::{Module, ValueDef};
use crate::text::{print_attr, value_names};
use crate::Attr;
use std::collections::HashMap;
use std::fmt::Write;

/// Longest attribute text shown in a label before it is cut.
const MAX_ATTR: usize = 48;

/// The module as a Graphviz `digraph`.
pub fn to_dot(m: &Module) -> String {
    let g = &m.graph;
    let names = value_names(m);
    let vname = |v: crate::ValueId| {
        names
            .get(v.0 as usize)
            .cloned()
            .unwrap_or_else(|| format!("#{}", v.0))
    };
    let vty = |v: crate::ValueId| {
        g.values
            .get(v.0 as usize)
            .map(|x| x.ty.to_string())
            .unwrap_or_default()
    };
    let mut out = String::new();
    let _ = writeln!(out, "digraph {} {{", esc(&m.name));
    out.push_str("  node [shape=box, fontname=\"monospace\"];\n");
    // Where each value is produced: a DOT node id.
    let mut src: HashMap<u32, String> = HashMap::new();
    for (i, &v) in g.inputs.iter().enumerate() {
        let id = format!("in{i}");
        let _ = writeln!(
            out,
            "  {id} [shape=ellipse, label={}];",
            esc(&format!("{}\n{}", vname(v), vty(v)))
        );
        src.insert(v.0, id);
    }
    for (ni, node) in g.nodes.iter().enumerate() {
        let id = format!("n{ni}");
        let res: Vec<String> = node.outputs.iter().map(|&v| vname(v)).collect();
        let mut label = format!("{} = {}", res.join(", "), node.op);
        if !node.attrs.is_empty() {
            let attrs: Vec<String> = node
                .attrs
                .iter()
                .map(|(k, a)| format!("{k} = {}", short_attr(a)))
                .collect();
            let _ = write!(label, "\n{{{}}}", attrs.join(", "));
        }
        let tys: Vec<String> = node.outputs.iter().map(|&v| vty(v)).collect();
        let _ = write!(label, "\n{}", tys.join(", "));
        let weights: Vec<String> = node
            .inputs
            .iter()
            .filter(|&&v| is_weight(m, v))
            .map(|&v| format!("{}: {}", vname(v), vty(v)))
            .collect();
        for w in weights {
            let _ = write!(label, "\n{w}");
        }
        let _ = writeln!(out, "  {id} [label={}];", esc(&label));
        for &v in &node.inputs {
            if let Some(from) = src.get(&v.0) {
                if node_count_outputs(m, from) > 1 {
                    let _ = writeln!(out, "  {from} -> {id} [label={}];", esc(&vname(v)));
                } else {
                    let _ = writeln!(out, "  {from} -> {id};");
                }
            }
        }
        for &v in &node.outputs {
            src.insert(v.0, id.clone());
        }
    }
    for (i, &v) in g.outputs.iter().enumerate() {
        let id = format!("out{i}");
        let _ = writeln!(
            out,
            "  {id} [shape=ellipse, label={}];",
            esc(&format!("return {}\n{}", vname(v), vty(v)))
        );
        match src.get(&v.0) {
            Some(from) => {
                let _ = writeln!(out, "  {from} -> {id};");
            }
            None if is_weight(m, v) => {
                let _ = writeln!(
                    out,
                    "  w{i} [shape=note, label={}];\n  w{i} -> {id};",
                    esc(&vname(v))
                );
            }
            None => {}
        }
    }
    out.push_str("}\n");
    out
}

fn is_weight(m: &Module, v: crate::ValueId) -> bool {
    m.graph
        .values
        .get(v.0 as usize)
        .is_some_and(|x| matches!(x.def, ValueDef::Weight(_)))
}

/// How many results the node with DOT id `nI` has (1 for inputs).
fn node_count_outputs(m: &Module, dot_id: &str) -> usize {
    dot_id
        .strip_prefix('n')
        .and_then(|i| i.parse::<usize>().ok())
        .and_then(|i| m.graph.nodes.get(i))
        .map_or(1, |n| n.outputs.len())
}

/// An attribute for a label: tensors by type only, long literals cut.
fn short_attr(a: &Attr) -> String {
    let s = match a {
        Attr::Tensor(t) => {
            let dims: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
            format!("dense<{}[{}]>", t.dtype, dims.join(", "))
        }
        other => print_attr(other),
    };
    if s.chars().count() > MAX_ATTR {
        let cut: String = s.chars().take(MAX_ATTR).collect();
        format!("{cut}...")
    } else {
        s
    }
}

/// A DOT string literal: quotes and backslashes escaped, newlines as `\n`.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => {}
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::module::attrs;
    use crate::{DType, Op, Shape, TensorType, WeightData};

    #[test]
    fn inputs_nodes_weights_and_edges() {
        let mut m = Module::new("demo");
        let w = m.add_weight("lm \"head\"", DType::F32, Shape::of(&[3]), WeightData::None);
        let x = m
            .graph
            .add_input("x", TensorType::new(DType::F32, Shape::of(&[3])));
        let a = m.add1(Op::Add, &[x, w], attrs([])).unwrap();
        let c = m
            .add1(Op::Cast, &[a], attrs([("to", Attr::Type(DType::F16))]))
            .unwrap();
        m.graph.outputs.push(c);
        let dot = to_dot(&m);
        let expected = [
            "digraph \"demo\" {",
            "  in0 [shape=ellipse, label=\"%x\\nf32[3]\"];",
            "  n0 [label=\"%2 = add\\nf32[3]\\n@\\\"lm \\\\\\\"head\\\\\\\"\\\": f32[3]\"];",
            "  in0 -> n0;",
            "  n1 [label=\"%3 = cast\\n{to = f16}\\nf16[3]\"];",
            "  n0 -> n1;",
            "  out0 [shape=ellipse, label=\"return %3\\nf16[3]\"];",
            "  n1 -> out0;",
        ];
        for line in expected {
            assert!(dot.lines().any(|l| l == line), "missing {line:?} in\n{dot}");
        }
        assert!(dot.ends_with("}\n"));
    }
}
