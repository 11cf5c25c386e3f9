//! `llmc inspect --emit summary`: what a model is at a glance (its interface, op
//! histogram, parameters and bytes by dtype, model facts), without printing thousands
//! of IR lines.

use llmc_ir::{DType, Module, TokenizerSource};
use std::collections::BTreeMap;
use std::fmt::Write;

/// Parameter and byte totals of one dtype.
#[derive(Default, Debug, PartialEq)]
pub struct DTypeTotals {
    /// Number of weight tensors.
    pub tensors: usize,
    /// Elements.
    pub params: u64,
    /// Storage bytes.
    pub bytes: u64,
}

/// Weight totals by dtype, plus the names of weights whose size is not static.
pub fn weight_totals(m: &Module) -> (BTreeMap<DType, DTypeTotals>, Vec<String>) {
    let mut by = BTreeMap::<DType, DTypeTotals>::new();
    let mut symbolic = Vec::new();
    for w in &m.weights {
        let numel = w.shape.as_consts().and_then(|d| {
            d.iter()
                .try_fold(1u64, |a, &x| a.checked_mul(u64::try_from(x).ok()?))
        });
        let e = by.entry(w.dtype).or_default();
        e.tensors += 1;
        match numel {
            Some(n) => {
                e.params += n;
                e.bytes += w.dtype.storage_bytes(n).unwrap_or(0);
            }
            None => symbolic.push(w.name.clone()),
        }
    }
    (by, symbolic)
}

/// Groups digits by thousands: 1234567 -> "1,234,567".
fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Bytes in binary units.
fn human_bytes(b: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < U.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", U[u])
    }
}

/// The summary text.
pub fn summary(m: &Module) -> String {
    let g = &m.graph;
    let mut s = String::new();
    let _ = writeln!(s, "module @{}  (graph @{})", m.name, g.name);

    let _ = writeln!(s, "inputs:");
    for &v in &g.inputs {
        let val = g.value(v);
        let _ = writeln!(s, "  %{}: {}", val.name, val.ty);
    }
    let _ = writeln!(s, "outputs:");
    for &v in &g.outputs {
        let val = g.value(v);
        let _ = writeln!(s, "  %{}: {}", val.name, val.ty);
    }

    let mut ops = BTreeMap::<&str, usize>::new();
    for n in &g.nodes {
        *ops.entry(n.op.name()).or_default() += 1;
    }
    let _ = writeln!(s, "ops: {} nodes", g.nodes.len());
    let mut ops: Vec<(&str, usize)> = ops.into_iter().collect();
    ops.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    for (op, n) in ops {
        let _ = writeln!(s, "  {op:<16} {n:>6}");
    }

    let (by, symbolic) = weight_totals(m);
    let params: u64 = by.values().map(|t| t.params).sum();
    let bytes: u64 = by.values().map(|t| t.bytes).sum();
    let _ = writeln!(
        s,
        "weights: {} tensors, {} parameters, {}",
        m.weights.len(),
        group(params),
        human_bytes(bytes)
    );
    for (dt, t) in &by {
        let _ = writeln!(
            s,
            "  {:<6} {:>5} tensors {:>15} params {:>12}",
            dt.name(),
            t.tensors,
            group(t.params),
            human_bytes(t.bytes)
        );
    }
    if !symbolic.is_empty() {
        let _ = writeln!(
            s,
            "  (not counted, symbolic shape: {})",
            symbolic.join(", ")
        );
    }

    let i = &m.info;
    let _ = writeln!(s, "model info:");
    let arch = if i.architecture.is_empty() {
        "(none)"
    } else {
        &i.architecture
    };
    let _ = writeln!(s, "  architecture: {arch}");
    if let Some(c) = i.context_length {
        let _ = writeln!(s, "  context_length: {c}");
    }
    match &i.tokenizer {
        TokenizerSource::None => {}
        TokenizerSource::HfJson(p) => {
            let _ = writeln!(s, "  tokenizer: hf({})", p.display());
        }
        TokenizerSource::Gguf(p) => {
            let _ = writeln!(s, "  tokenizer: gguf({})", p.display());
        }
    }
    if let Some(b) = i.bos_token {
        let _ = writeln!(s, "  bos_token: {b}");
    }
    if !i.eos_tokens.is_empty() {
        let _ = writeln!(s, "  eos_tokens: {:?}", i.eos_tokens);
    }
    if let Some(t) = &i.chat_template {
        let _ = writeln!(s, "  chat_template: {} chars", t.chars().count());
    }
    for (k, v) in &i.extra {
        let _ = writeln!(s, "  {k}: {v}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmc_ir::{Node, NodeId, Op, Shape, TensorType, ValueDef, ValueId, WeightData};

    #[test]
    fn counts_ops_params_and_bytes() {
        let mut m = Module::new("t");
        let x_ty = TensorType::new(
            DType::F32,
            Shape(vec![llmc_ir::Dim::sym("batch"), 64.into()]),
        );
        let x = m.graph.add_input("x", x_ty.clone());
        let w = m.add_weight("w", DType::Q4_1, Shape::of(&[32, 64]), WeightData::None);
        let b = m.add_weight("b", DType::F32, Shape::of(&[32]), WeightData::None);
        // Nodes are pushed by hand with their declared types: the summary reads the
        // graph as it is and must not depend on shape rules.
        let ty = x_ty.clone();
        let push = |m: &mut Module, op: Op, ins: &[ValueId]| {
            let nid = NodeId(m.graph.nodes.len() as u32);
            let name = m.graph.values.len().to_string();
            let out = m.graph.add_value(name, ty.clone(), ValueDef::Node(nid, 0));
            m.graph.nodes.push(Node {
                op,
                inputs: ins.to_vec(),
                outputs: vec![out],
                attrs: Default::default(),
            });
            out
        };
        let y = push(&mut m, Op::Linear, &[x, w, b]);
        let z = push(&mut m, Op::Relu, &[y]);
        let z2 = push(&mut m, Op::Relu, &[z]);
        m.graph.outputs.push(z2);
        m.info.eos_tokens = vec![2];

        let (by, symbolic) = weight_totals(&m);
        assert!(symbolic.is_empty());
        // 32*64 = 2048 q4_1 elements = 64 blocks of 20 bytes.
        assert_eq!(
            by[&DType::Q4_1],
            DTypeTotals {
                tensors: 1,
                params: 2048,
                bytes: 64 * 20
            }
        );
        assert_eq!(
            by[&DType::F32],
            DTypeTotals {
                tensors: 1,
                params: 32,
                bytes: 128
            }
        );
        let s = summary(&m);
        assert!(s.contains("%x: f32[batch, 64]"), "{s}");
        assert!(s.contains("ops: 3 nodes"), "{s}");
        assert!(s.contains("relu                  2"), "{s}");
        assert!(s.contains("2 tensors, 2,080 parameters, 1.4 KiB"), "{s}");
        assert!(s.contains("eos_tokens: [2]"), "{s}");
    }

    #[test]
    fn number_formatting() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1000), "1,000");
        assert_eq!(group(134515008), "134,515,008");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }
}
