//! Constant folding: a node whose operands are all known at compile time (constants,
//! small weights with data attached, or results folded before it) is evaluated once
//! through the reference interpreter's semantics and replaced by its result.
//!
//! A result computed only from constants becomes a `constant` node in place (same
//! value, same name). A result that reads a weight becomes a new weight (its bytes
//! owned by the module): kernels that want a weight in a packed layout keep getting a
//! weight, and IR dumps stay readable (weights print by name, not data). Results and
//! weights larger than `PassContext::fold_max_elems` are left alone, as are stateful
//! ops, ops with several results, and anything the interpreter cannot evaluate without
//! run-time values (symbolic dims).
//!
//! One cast is never folded: an f16/bf16 weight widened to f32 only to feed `linear`
//! weights. Folding it would store the matrix at twice the bytes (decode streams every
//! weight byte once per token); instead the linears read the narrow weight directly
//! (`linear` widens each element as it loads it) and the cast goes.

use crate::rewrite::compact;
use crate::{Changed, PassContext, PassError};
use llmc_ir::interp::{weight_tensor, EvalCtx};
use llmc_ir::ops::Flags;
use llmc_ir::tensor::Data;
use llmc_ir::{
    Attr, Attrs, DType, Module, Op, Shape, Tensor, ValueDef, ValueId, Weight, WeightData,
};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// A value known at compile time, and whether it derives from a weight.
#[derive(Clone)]
struct Known {
    t: Arc<Tensor>,
    from_weight: bool,
}

/// Points `linear`/`linear_act` weight operands that read an f16/bf16 weight through
/// a cast to f32 at the weight itself, and drops those casts. True if any changed.
fn narrow_weight_reads(m: &mut Module) -> bool {
    let g = &m.graph;
    let mut readers: HashMap<ValueId, Vec<(usize, usize)>> = HashMap::new();
    for (i, n) in g.nodes.iter().enumerate() {
        for (k, &v) in n.inputs.iter().enumerate() {
            readers.entry(v).or_default().push((i, k));
        }
    }
    let mut keep = vec![true; g.nodes.len()];
    let mut repl: HashMap<ValueId, ValueId> = HashMap::new();
    for (i, n) in g.nodes.iter().enumerate() {
        let (Op::Cast, [src], [out]) = (n.op, &n.inputs[..], &n.outputs[..]) else {
            continue;
        };
        let narrow = matches!(g.value(*src).def, ValueDef::Weight(_))
            && matches!(g.ty(*src).dtype, DType::F16 | DType::BF16)
            && g.ty(*out).dtype == DType::F32
            && !g.outputs.contains(out);
        let all_linear = readers.get(out).is_some_and(|rs| {
            rs.iter().all(|&(r, k)| {
                matches!(g.nodes[r].op, Op::Linear | Op::LinearAct)
                    && k == 1
                    && g.nodes[r]
                        .outputs
                        .first()
                        .is_some_and(|&o| g.ty(o).dtype == DType::F32)
            })
        });
        if narrow && all_linear {
            keep[i] = false;
            repl.insert(*out, *src);
        }
    }
    if repl.is_empty() {
        return false;
    }
    compact(&mut m.graph, &keep, &repl);
    true
}

/// Runs constant folding.
pub fn run(m: &mut Module, ctx: &PassContext) -> Result<Changed, PassError> {
    let narrowed = narrow_weight_reads(m);
    let mut known: HashMap<ValueId, Known> = HashMap::new();
    let mut dead: Vec<usize> = Vec::new();
    let mut repl: HashMap<ValueId, ValueId> = HashMap::new();
    let mut weight_names: HashSet<String> = m.weights.iter().map(|w| w.name.clone()).collect();
    let mut changed = narrowed;
    for i in 0..m.graph.nodes.len() {
        let n = &m.graph.nodes[i];
        if n.op == Op::Constant {
            if let (Some(Attr::Tensor(t)), [o]) = (n.attrs.get("value"), &n.outputs[..]) {
                known.insert(
                    *o,
                    Known {
                        t: Arc::new(t.clone()),
                        from_weight: false,
                    },
                );
            }
            continue;
        }
        if n.op.flags().has(Flags::STATEFUL) || n.outputs.len() != 1 {
            continue;
        }
        let Some(args) = operands(m, &n.inputs, &mut known, ctx.fold_max_elems) else {
            continue;
        };
        let from_weight = args.iter().any(|k| k.from_weight);
        let out = n.outputs[0];
        let ty = m.graph.ty(out).clone();
        let Some(dims) = ty.shape.as_consts() else {
            continue;
        };
        let numel = dims
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(usize::try_from(d).ok()?));
        if numel.is_none_or(|n| n > ctx.fold_max_elems) {
            continue;
        }
        let refs: Vec<&Tensor> = args.iter().map(|k| k.t.as_ref()).collect();
        let Ok(mut res) = n.op.eval(&refs, &n.attrs, &mut EvalCtx::default()) else {
            continue;
        };
        let (Some(t), 1) = (res.pop(), res.len() + 1) else {
            continue;
        };
        let shape_ok =
            t.shape.len() == dims.len() && t.shape.iter().zip(&dims).all(|(&a, &b)| a as i64 == b);
        if t.dtype != ty.dtype || !shape_ok {
            continue;
        }
        // A returned value keeps its name, so it stays a node (a constant).
        let returned = m.graph.outputs.contains(&out);
        if from_weight && !returned {
            let Some(bytes) = encode(&t) else {
                continue;
            };
            let base = format!("fold.{}", m.graph.value(out).name);
            let mut name = base.clone();
            let mut k = 1;
            while weight_names.contains(&name) {
                name = format!("{base}.{k}");
                k += 1;
            }
            weight_names.insert(name.clone());
            let v = m.add_weight(
                &name,
                ty.dtype,
                Shape::of(&dims),
                WeightData::Owned(Arc::new(bytes)),
            );
            known.insert(
                v,
                Known {
                    t: Arc::new(t),
                    from_weight: true,
                },
            );
            repl.insert(out, v);
            dead.push(i);
        } else {
            let node = &mut m.graph.nodes[i];
            node.op = Op::Constant;
            node.inputs.clear();
            let mut attrs = Attrs::new();
            attrs.insert("value".into(), Attr::Tensor(t.clone()));
            node.attrs = attrs;
            known.insert(
                out,
                Known {
                    t: Arc::new(t),
                    from_weight,
                },
            );
        }
        changed = true;
    }
    if !repl.is_empty() {
        let mut keep = vec![true; m.graph.nodes.len()];
        for i in dead {
            keep[i] = false;
        }
        compact(&mut m.graph, &keep, &repl);
    }
    Ok(changed.into())
}

/// The operands' values if every one is known (loading small weights on first use).
fn operands(
    m: &Module,
    inputs: &[ValueId],
    known: &mut HashMap<ValueId, Known>,
    max_elems: usize,
) -> Option<Vec<Known>> {
    let mut out = Vec::with_capacity(inputs.len());
    for &v in inputs {
        if let Some(k) = known.get(&v) {
            out.push(k.clone());
            continue;
        }
        let ValueDef::Weight(w) = m.graph.value(v).def else {
            return None;
        };
        let k = load_weight(m.weights.get(w.0 as usize)?, max_elems)?;
        known.insert(v, k.clone());
        out.push(k);
    }
    Some(out)
}

fn load_weight(w: &Weight, max_elems: usize) -> Option<Known> {
    let dims = w.shape.as_consts()?;
    let shape: Vec<usize> = dims
        .iter()
        .map(|&d| usize::try_from(d).ok())
        .collect::<Option<_>>()?;
    if shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))? > max_elems {
        return None;
    }
    let t = weight_tensor(w.dtype, &shape, w.data.bytes()?).ok()?;
    Some(Known {
        t: Arc::new(t),
        from_weight: true,
    })
}

/// A tensor's little-endian storage bytes (the layout weights use), for plain dtypes.
fn encode(t: &Tensor) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(t.numel() * t.dtype.block_bytes());
    match (&t.data, t.dtype) {
        (Data::F(v), DType::F32) => v.iter().for_each(|x| out.extend((*x as f32).to_le_bytes())),
        (Data::F(v), DType::F64) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
        (Data::F(v), DType::F16) => v
            .iter()
            .for_each(|x| out.extend(half::f16::from_f64(*x).to_le_bytes())),
        (Data::F(v), DType::BF16) => v
            .iter()
            .for_each(|x| out.extend(half::bf16::from_f64(*x).to_le_bytes())),
        (Data::I(v), DType::I64) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
        (Data::I(v), DType::I32 | DType::U32) => {
            v.iter().for_each(|x| out.extend((*x as u32).to_le_bytes()))
        }
        (Data::I(v), DType::I16 | DType::U16) => {
            v.iter().for_each(|x| out.extend((*x as u16).to_le_bytes()))
        }
        (Data::I(v), DType::I8 | DType::U8 | DType::Bool) => {
            v.iter().for_each(|x| out.push(*x as u8))
        }
        _ => return None,
    }
    Some(out)
}
