//! The printer: a module to its canonical text. It never fails and never panics, even
//! on a module that does not verify (a broken pass must still be printable): ids out of
//! range print as quoted placeholder names the parser will reject.

use super::is_bare_name;
use crate::module::{Graph, ModelInfo, Module, TokenizerSource, ValueDef, ValueId};
use crate::tensor::Data;
use crate::{Attr, DType, Tensor};
use std::collections::HashSet;
use std::fmt::{self, Write};

/// Prints a module in canonical form (`docs/ir-text.md`).
pub fn print(m: &Module) -> String {
    let mut out = String::new();
    let names = value_names(m);
    let _ = writeln!(out, "module @{} {{", name(&m.name));
    print_info(&mut out, &m.info);
    let wnames = weight_names(m);
    for (w, wn) in m.weights.iter().zip(&wnames) {
        let _ = writeln!(out, "  weight {wn} : {}{}", w.dtype, w.shape);
    }
    print_graph(&mut out, &m.graph, &names);
    out.push_str("}\n");
    out
}

impl fmt::Display for Module {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&print(self))
    }
}

/// `name` or `"quoted name"` (without the sigil).
fn name(s: &str) -> String {
    if is_bare_name(s) {
        s.to_string()
    } else {
        quote(s)
    }
}

/// A string literal with Rust-style escapes: `\\`, `\"`, `\n`, `\r`, `\t`, `\0` and
/// `\u{..}` for other control characters; everything else is written as itself.
pub(crate) fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\0' => out.push_str("\\0"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Printed weight names (`@name`), made unique by suffixing `.1`, `.2`, ...
fn weight_names(m: &Module) -> Vec<String> {
    let raw: Vec<&str> = m.weights.iter().map(|w| w.name.as_str()).collect();
    unique(&raw)
        .into_iter()
        .map(|n| format!("@{}", name(&n)))
        .collect()
}

/// Makes names unique: the first holder of a name keeps it, later ones get the first
/// `NAME.K` (K = 1, 2, ...) that no value uses.
fn unique(raw: &[&str]) -> Vec<String> {
    let all: HashSet<&str> = raw.iter().copied().collect();
    let mut taken: HashSet<String> = HashSet::new();
    let mut out = Vec::with_capacity(raw.len());
    for &n in raw {
        if taken.insert(n.to_string()) {
            out.push(n.to_string());
            continue;
        }
        let mut k = 1u64;
        loop {
            let cand = format!("{n}.{k}");
            if !all.contains(cand.as_str()) && taken.insert(cand.clone()) {
                out.push(cand);
                break;
            }
            k += 1;
        }
    }
    out
}

/// The printed name of every value, sigil included (`%ids`, `@model.norm.weight`),
/// indexed by value id. Graph inputs and node results share one namespace and are made
/// unique in print order (inputs, then results); weight values print their weight's name.
pub fn value_names(m: &Module) -> Vec<String> {
    let g = &m.graph;
    let mut names = vec![String::new(); g.values.len()];
    let wnames = weight_names(m);
    // Locals in print order, then any value no input or node claims (still printable).
    let mut order: Vec<usize> = Vec::with_capacity(g.values.len());
    let mut seen = vec![false; g.values.len()];
    let every: Vec<ValueId> = (0..g.values.len() as u32).map(ValueId).collect();
    let claimed = g
        .inputs
        .iter()
        .chain(g.nodes.iter().flat_map(|n| n.outputs.iter()));
    for v in claimed.chain(every.iter()) {
        let i = v.0 as usize;
        if i < g.values.len() && !seen[i] {
            seen[i] = true;
            if !matches!(g.values[i].def, ValueDef::Weight(_)) {
                order.push(i);
            }
        }
    }
    let raw: Vec<&str> = order.iter().map(|&i| g.values[i].name.as_str()).collect();
    for (&i, n) in order.iter().zip(unique(&raw)) {
        names[i] = format!("%{}", name(&n));
    }
    for (i, v) in g.values.iter().enumerate() {
        if let ValueDef::Weight(w) = v.def {
            names[i] = match wnames.get(w.0 as usize) {
                Some(n) => n.clone(),
                None => format!("@{}", quote(&format!("<missing weight {}>", w.0))),
            };
        }
    }
    names
}

fn vname(names: &[String], v: ValueId) -> String {
    names
        .get(v.0 as usize)
        .cloned()
        .unwrap_or_else(|| format!("%{}", quote(&format!("<missing value {}>", v.0))))
}

fn vtype(g: &Graph, v: ValueId) -> String {
    match g.values.get(v.0 as usize) {
        Some(val) => val.ty.to_string(),
        None => "<missing value>".to_string(),
    }
}

fn print_info(out: &mut String, info: &ModelInfo) {
    if *info == ModelInfo::default() {
        return;
    }
    out.push_str("  info {\n");
    if !info.architecture.is_empty() {
        let _ = writeln!(out, "    architecture = {}", quote(&info.architecture));
    }
    if let Some(n) = info.context_length {
        let _ = writeln!(out, "    context_length = {n}");
    }
    match &info.tokenizer {
        TokenizerSource::None => {}
        TokenizerSource::HfJson(p) => {
            let _ = writeln!(out, "    tokenizer = hf({})", quote(&p.to_string_lossy()));
        }
        TokenizerSource::Gguf(p) => {
            let _ = writeln!(out, "    tokenizer = gguf({})", quote(&p.to_string_lossy()));
        }
    }
    if let Some(n) = info.bos_token {
        let _ = writeln!(out, "    bos_token = {n}");
    }
    if !info.eos_tokens.is_empty() {
        let _ = writeln!(out, "    eos_tokens = {}", ints(&info.eos_tokens));
    }
    if let Some(t) = &info.chat_template {
        let _ = writeln!(out, "    chat_template = {}", quote(t));
    }
    for (k, v) in &info.extra {
        let bare = !k.is_empty()
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
        if bare {
            let _ = writeln!(out, "    extra.{k} = {}", quote(v));
        } else {
            let _ = writeln!(out, "    extra.{} = {}", quote(k), quote(v));
        }
    }
    out.push_str("  }\n");
}

fn print_graph(out: &mut String, g: &Graph, names: &[String]) {
    let ins: Vec<String> = g
        .inputs
        .iter()
        .map(|&v| format!("{}: {}", vname(names, v), vtype(g, v)))
        .collect();
    let outs: Vec<String> = g
        .outputs
        .iter()
        .map(|&v| format!("{}: {}", vname(names, v), vtype(g, v)))
        .collect();
    let _ = writeln!(
        out,
        "  graph @{}({}) -> ({}) {{",
        name(&g.name),
        ins.join(", "),
        outs.join(", ")
    );
    for node in &g.nodes {
        let res: Vec<String> = node.outputs.iter().map(|&v| vname(names, v)).collect();
        let args: Vec<String> = node.inputs.iter().map(|&v| vname(names, v)).collect();
        let _ = write!(
            out,
            "    {} = {}({})",
            res.join(", "),
            node.op.name(),
            args.join(", ")
        );
        if !node.attrs.is_empty() {
            let a: Vec<String> = node
                .attrs
                .iter()
                .map(|(k, v)| format!("{k} = {}", print_attr(v)))
                .collect();
            let _ = write!(out, " {{{}}}", a.join(", "));
        }
        let tys: Vec<String> = node.outputs.iter().map(|&v| vtype(g, v)).collect();
        let _ = writeln!(out, " : {}", tys.join(", "));
    }
    let rets: Vec<String> = g.outputs.iter().map(|&v| vname(names, v)).collect();
    if rets.is_empty() {
        out.push_str("    return\n");
    } else {
        let _ = writeln!(out, "    return {}", rets.join(", "));
    }
    out.push_str("  }\n");
}

/// An f64 as Rust's `{:?}` prints it (always with `.` or `e`), `nan` for NaN.
pub(crate) fn fmt_f64(v: f64) -> String {
    if v.is_nan() {
        "nan".to_string()
    } else {
        format!("{v:?}")
    }
}

/// The shortest text that reads back as the same f32.
fn fmt_f32(v: f32) -> String {
    if v.is_nan() {
        "nan".to_string()
    } else {
        format!("{v:?}")
    }
}

fn ints(v: &[i64]) -> String {
    let s: Vec<String> = v.iter().map(|x| x.to_string()).collect();
    format!("[{}]", s.join(", "))
}

/// An attribute literal.
pub fn print_attr(a: &Attr) -> String {
    match a {
        Attr::Int(v) => v.to_string(),
        Attr::Float(v) => fmt_f64(*v),
        Attr::Bool(v) => v.to_string(),
        Attr::Str(s) => quote(s),
        Attr::Ints(v) => ints(v),
        Attr::Floats(v) => {
            let s: Vec<String> = v.iter().map(|x| fmt_f64(*x)).collect();
            format!("[{}]", s.join(", "))
        }
        Attr::Type(d) => d.name().to_string(),
        Attr::Shape(s) => s.to_string(),
        Attr::Tensor(t) => print_tensor(t),
    }
}

/// A tensor literal: `dense<f32[2]: [1.0, 2.5]>`, elements flat in row-major order.
/// f16/bf16/f32 elements print as the shortest text that reads back as the same f32
/// (the values are already rounded to the dtype), f64 as the shortest f64 text.
pub fn print_tensor(t: &Tensor) -> String {
    let dims: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
    let elems: Vec<String> = match &t.data {
        Data::F(v) => v
            .iter()
            .map(|&x| {
                if t.dtype == DType::F64 {
                    fmt_f64(x)
                } else {
                    fmt_f32(x as f32)
                }
            })
            .collect(),
        Data::I(v) => v.iter().map(|x| x.to_string()).collect(),
    };
    format!(
        "dense<{}[{}]: [{}]>",
        t.dtype,
        dims.join(", "),
        elems.join(", ")
    )
}
