//! Property tests of the text format: `parse(print(m)) == m` and
//! `print(parse(print(m))) == print(m)` over random modules, and a parser that never
//! panics on damaged input.
//!
//! Two generators: well-typed modules built through `Module::add_node` (a step whose op
//! has no shape rule for the operands it drew is skipped, so the set of ops that appear
//! grows with the op table), checked with `parse`; and modules of arbitrary nodes with
//! every attribute kind and arbitrary result types, checked with `parse_unchecked`.
//! Floats compare bit for bit (so `-0.0` must stay `-0.0`), except that any NaN equals
//! any NaN.

use llmc_ir::module::{attrs, ModelInfo, Node, NodeId, TokenizerSource, ValueDef};
use llmc_ir::tensor::Data;
use llmc_ir::text::{parse, parse_bytes, parse_unchecked, print};
use llmc_ir::verify::verify;
use llmc_ir::{Attr, AttrKind, DType, Dim, Module, Op, Shape, Tensor, TensorType, ValueId};
use llmc_ir::{WeightData, WeightId};
use proptest::collection::{btree_map, vec as pvec};
use proptest::prelude::*;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

// ----- equality with NaN = NaN and -0.0 != 0.0 -----

fn f_eq(a: f64, b: f64) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

fn fs_eq(a: &[f64], b: &[f64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| f_eq(*x, *y))
}

fn attr_eq(a: &Attr, b: &Attr) -> bool {
    match (a, b) {
        (Attr::Float(x), Attr::Float(y)) => f_eq(*x, *y),
        (Attr::Floats(x), Attr::Floats(y)) => fs_eq(x, y),
        (Attr::Tensor(x), Attr::Tensor(y)) => {
            x.dtype == y.dtype
                && x.shape == y.shape
                && match (&x.data, &y.data) {
                    (Data::F(p), Data::F(q)) => fs_eq(p, q),
                    (Data::I(p), Data::I(q)) => p == q,
                    _ => false,
                }
        }
        _ => a == b,
    }
}

/// Structural equality; `Err` says where the modules differ.
fn same(a: &Module, b: &Module) -> Result<(), String> {
    let strip = |m: &Module| {
        let mut m = m.clone();
        for n in &mut m.graph.nodes {
            n.attrs.clear();
        }
        m
    };
    let (sa, sb) = (strip(a), strip(b));
    if sa != sb {
        return Err(format!(
            "modules differ (attributes aside):\n{sa:#?}\n---\n{sb:#?}"
        ));
    }
    for (i, (na, nb)) in a.graph.nodes.iter().zip(&b.graph.nodes).enumerate() {
        let keys_a: Vec<&String> = na.attrs.keys().collect();
        let keys_b: Vec<&String> = nb.attrs.keys().collect();
        if keys_a != keys_b
            || na
                .attrs
                .iter()
                .zip(&nb.attrs)
                .any(|((_, x), (_, y))| !attr_eq(x, y))
        {
            return Err(format!(
                "node {i}: attributes differ: {:?} vs {:?}",
                na.attrs, nb.attrs
            ));
        }
    }
    Ok(())
}

/// The module with every value and weight name blanked (for modules whose names
/// collide: the printer renames, so only the structure must survive).
fn nameless(m: &Module) -> Module {
    let mut m = m.clone();
    for v in &mut m.graph.values {
        v.name.clear();
    }
    for w in &mut m.weights {
        w.name.clear();
    }
    m
}

fn names_unique(m: &Module) -> bool {
    let mut locals = HashSet::new();
    let mut weights = HashSet::new();
    m.graph.values.iter().all(|v| match v.def {
        ValueDef::Weight(_) => true,
        _ => locals.insert(v.name.clone()),
    }) && m.weights.iter().all(|w| weights.insert(w.name.clone()))
}

/// The round-trip property for one module.
fn check_round_trip(m: &Module, checked: bool) -> Result<(), TestCaseError> {
    let text = print(m);
    let back = if checked {
        parse(&text, "gen.llmc")
    } else {
        parse_unchecked(&text, "gen.llmc")
    };
    let back = back.map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
    let again = print(&back);
    prop_assert_eq!(&again, &text, "print(parse(print(m))) != print(m)");
    let r = if names_unique(m) {
        same(m, &back)
    } else {
        same(&nameless(m), &nameless(&back))
    };
    r.map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
    Ok(())
}

// ----- generators -----

fn awkward_f64() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(-0.0),
        Just(0.0),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(f64::NAN),
        Just(-f64::NAN),
        Just(5e-324),
        Just(1e-45),
        Just(f64::MIN_POSITIVE),
        Just(f64::MAX),
        Just(-1e300),
        Just(3.4028235e38),
        Just(65504.0),
        Just(1e-5),
        Just(0.1),
        Just(1.0 / 3.0),
        any::<f64>(),
        (-1e6f64..1e6),
    ]
}

fn any_name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9_]{0,3}",
        "[0-9]{1,2}",
        Just(String::new()),
        Just("a b".to_string()),
        Just("onnx::MatMul_0".to_string()),
        Just("x\"y\\z".to_string()),
        Just("é".to_string()),
        Just("-".to_string()),
        Just("1.1".to_string()),
        any::<String>(),
    ]
}

const DIM_SYMS: &[&str] = &["batch", "seq", "past"];

fn dim() -> impl Strategy<Value = Dim> {
    prop_oneof![
        3 => (1i64..5).prop_map(Dim::c),
        1 => (0usize..3).prop_map(|i| Dim::sym(DIM_SYMS[i])),
        1 => Just(Dim::sym("past").add(&Dim::sym("seq"))),
        1 => Just(Dim::sym("batch").mul(&Dim::c(2))),
        1 => Just(Dim::sym("seq").sub(&Dim::c(1))),
    ]
}

/// Any dim at all, including ones no model has (for the untyped generator).
fn wild_dim() -> impl Strategy<Value = Dim> {
    prop_oneof![
        dim(),
        any::<i64>().prop_map(Dim::c),
        (any::<i64>(), 0usize..3, 0usize..3).prop_map(|(c, a, b)| {
            Dim::sym(DIM_SYMS[a])
                .mul(&Dim::sym(DIM_SYMS[b]))
                .mul(&Dim::c(c))
                .add(&Dim::c(-7))
        }),
    ]
}

const PLAIN: &[DType] = &[
    DType::F32,
    DType::F16,
    DType::BF16,
    DType::F64,
    DType::I64,
    DType::I32,
    DType::I16,
    DType::I8,
    DType::U8,
    DType::U16,
    DType::U32,
    DType::Bool,
];

fn plain_dtype() -> impl Strategy<Value = DType> {
    (0..PLAIN.len()).prop_map(|i| PLAIN[i])
}

fn ty() -> impl Strategy<Value = TensorType> {
    (plain_dtype(), pvec(dim(), 0..4)).prop_map(|(d, s)| TensorType::new(d, Shape(s)))
}

fn tensor() -> impl Strategy<Value = Tensor> {
    (plain_dtype(), pvec(0usize..4, 0..4))
        .prop_flat_map(|(d, shape)| {
            let n: usize = shape.iter().product();
            (
                Just(d),
                Just(shape),
                pvec(awkward_f64(), n),
                pvec(
                    prop_oneof![any::<i64>(), Just(i64::MIN), Just(i64::MAX), -3i64..3],
                    n,
                ),
            )
        })
        .prop_map(|(d, shape, fs, is)| {
            if d.is_float() {
                Tensor::from_f64(d, shape, fs)
            } else {
                Tensor::from_i64(d, shape, is)
            }
        })
}

/// A weight: plain or block format, constant shape; data sometimes attached (it must
/// not matter: weights compare by name, dtype and shape).
fn weight() -> impl Strategy<Value = (String, DType, Shape, bool)> {
    let fmt = prop_oneof![
        (plain_dtype(), pvec(1i64..5, 0..3)).prop_map(|(d, s)| (d, s)),
        (0usize..12, 1i64..3, 1i64..3).prop_map(|(i, r, b)| {
            let d = [
                DType::Q8_0,
                DType::Q4_0,
                DType::Q4_1,
                DType::Q4K,
                DType::Q5K,
                DType::Q6K,
                DType::Q5_0,
                DType::Q5_1,
                DType::Q2K,
                DType::Q3K,
                DType::IQ4NL,
                DType::IQ4XS,
            ][i];
            (d, vec![r, b * d.block_len() as i64])
        }),
    ];
    (
        prop_oneof!["[a-z]{1,2}(\\.[a-z0-9]{1,2}){0,2}", any_name()],
        fmt,
        any::<bool>(),
    )
        .prop_map(|(n, (d, s), data)| (n, d, Shape::of(&s), data))
}

fn info() -> impl Strategy<Value = ModelInfo> {
    (
        prop_oneof![
            Just(String::new()),
            Just("llama".to_string()),
            any::<String>()
        ],
        proptest::option::of(any::<i64>()),
        (0u8..3, any::<String>()),
        proptest::option::of(any::<i64>()),
        pvec(any::<i64>(), 0..3),
        proptest::option::of(prop_oneof![
            Just("{% for m in messages %}{{ m['content'] }}\n{% endfor %}\"\\".to_string()),
            any::<String>()
        ]),
        btree_map(any_name(), any::<String>(), 0..3),
    )
        .prop_map(
            |(architecture, context_length, (tk, path), bos, eos, tmpl, extra)| ModelInfo {
                architecture,
                context_length,
                tokenizer: match tk {
                    0 => TokenizerSource::None,
                    1 => TokenizerSource::HfJson(PathBuf::from(path)),
                    _ => TokenizerSource::Gguf(PathBuf::from(path)),
                },
                bos_token: bos,
                eos_tokens: eos,
                chat_template: tmpl,
                extra,
            },
        )
}

/// One value of every attribute kind; a step takes the ones its op declares.
#[derive(Clone, Debug)]
struct AttrPool {
    int: i64,
    float: f64,
    boolean: bool,
    string: String,
    ints: Vec<i64>,
    floats: Vec<f64>,
    dtype: DType,
    shape: Vec<Dim>,
    tensor: Tensor,
    /// Which declared attributes to give (bit i = the op's i-th attribute).
    mask: u16,
}

impl AttrPool {
    fn get(&self, k: AttrKind) -> Attr {
        match k {
            AttrKind::Int => Attr::Int(self.int),
            AttrKind::Float => Attr::Float(self.float),
            AttrKind::Bool => Attr::Bool(self.boolean),
            AttrKind::Str => Attr::Str(self.string.clone()),
            AttrKind::Ints => Attr::Ints(self.ints.clone()),
            AttrKind::Floats => Attr::Floats(self.floats.clone()),
            AttrKind::Type => Attr::Type(self.dtype),
            AttrKind::Shape => Attr::Shape(Shape(self.shape.clone())),
            AttrKind::Tensor => Attr::Tensor(self.tensor.clone()),
        }
    }

    fn attrs_for(&self, op: Op) -> llmc_ir::Attrs {
        op.def()
            .attrs
            .iter()
            .enumerate()
            .filter(|(i, s)| s.required || self.mask & (1 << (i % 16)) != 0)
            .map(|(_, s)| (s.name.to_string(), self.get(s.kind)))
            .collect()
    }
}

fn attr_pool(wild: bool) -> impl Strategy<Value = AttrPool> {
    let d = if wild {
        wild_dim().boxed()
    } else {
        dim().boxed()
    };
    (
        (
            prop_oneof![-3i64..4, any::<i64>()],
            awkward_f64(),
            any::<bool>(),
            prop_oneof![Just("tanh".to_string()), any::<String>()],
            pvec(prop_oneof![-3i64..4, any::<i64>()], 0..4),
            pvec(awkward_f64(), 0..4),
        ),
        (
            (0..DType::ALL.len()).prop_map(|i| DType::ALL[i]),
            pvec(d, 0..4),
            tensor(),
            any::<u16>(),
        ),
    )
        .prop_map(
            |((int, float, boolean, string, ints, floats), (dtype, shape, tensor, mask))| {
                AttrPool {
                    int,
                    float,
                    boolean,
                    string,
                    ints,
                    floats,
                    dtype,
                    shape,
                    tensor,
                    mask,
                }
            },
        )
}

/// One step of building a well-typed module. Operand indices are taken modulo the
/// values available when the step runs.
#[derive(Clone, Debug)]
enum Step {
    /// Any op of the table with drawn operands and attributes.
    Any(usize, Vec<usize>, AttrPool),
    /// An elementwise op with two operands of the first one's dtype.
    Binary(usize, usize, usize),
    Unary(usize, usize),
    Cast(usize, DType),
    Where(usize, usize, usize),
    /// `a @ transpose(a)` (last two axes swapped).
    MatMulT(usize),
    Transpose(usize, u64),
    /// 0: flatten, 1: [1, numel], 2: same shape.
    Reshape(usize, u8),
    Concat(usize, usize, i64),
    Reduce(usize, usize, u16, Option<bool>),
    Softmax(usize, i64),
    Split(usize, usize, u64),
    Constant(Tensor),
}

const BINARY: &[Op] = &[
    Op::Add,
    Op::Sub,
    Op::Mul,
    Op::Div,
    Op::Max,
    Op::Less,
    Op::Equal,
];
const UNARY: &[Op] = &[Op::Neg, Op::Abs, Op::Exp, Op::Sqrt, Op::Relu, Op::Not];
const REDUCE: &[Op] = &[Op::ReduceSum, Op::ReduceMean, Op::ReduceMax, Op::ArgMax];

fn step() -> impl Strategy<Value = Step> {
    let i = || any::<usize>();
    prop_oneof![
        2 => ((0..Op::ALL.len()), pvec(i(), 0..4), attr_pool(false))
            .prop_map(|(o, v, a)| Step::Any(o, v, a)),
        3 => (0..BINARY.len(), i(), i()).prop_map(|(o, a, b)| Step::Binary(o, a, b)),
        2 => (0..UNARY.len(), i()).prop_map(|(o, a)| Step::Unary(o, a)),
        2 => (i(), plain_dtype()).prop_map(|(a, d)| Step::Cast(a, d)),
        1 => (i(), i(), i()).prop_map(|(c, a, b)| Step::Where(c, a, b)),
        1 => i().prop_map(Step::MatMulT),
        1 => (i(), any::<u64>()).prop_map(|(a, p)| Step::Transpose(a, p)),
        1 => (i(), 0u8..3).prop_map(|(a, k)| Step::Reshape(a, k)),
        1 => (i(), i(), -4i64..4).prop_map(|(a, b, x)| Step::Concat(a, b, x)),
        1 => (0..REDUCE.len(), i(), any::<u16>(), proptest::option::of(any::<bool>()))
            .prop_map(|(o, a, m, k)| Step::Reduce(o, a, m, k)),
        1 => (i(), -4i64..4).prop_map(|(a, x)| Step::Softmax(a, x)),
        1 => (i(), i(), any::<u64>()).prop_map(|(a, x, k)| Step::Split(a, x, k)),
        1 => tensor().prop_map(Step::Constant),
    ]
}

#[derive(Clone, Debug)]
struct Recipe {
    name: String,
    info: ModelInfo,
    weights: Vec<(String, DType, Shape, bool)>,
    inputs: Vec<(String, TensorType)>,
    steps: Vec<Step>,
    outputs: Vec<usize>,
}

fn recipe() -> impl Strategy<Value = Recipe> {
    (
        any_name(),
        info(),
        pvec(weight(), 0..4),
        pvec((any_name(), ty()), 0..4),
        pvec(step(), 0..14),
        pvec(any::<usize>(), 0..4),
    )
        .prop_map(|(name, info, weights, inputs, steps, outputs)| Recipe {
            name,
            info,
            weights,
            inputs,
            steps,
            outputs,
        })
}

fn pick(vals: &[ValueId], i: usize) -> Option<ValueId> {
    if vals.is_empty() {
        None
    } else {
        Some(vals[i % vals.len()])
    }
}

/// Builds the module: weights, then inputs, then the steps whose types work out.
fn build(r: &Recipe) -> Module {
    let mut m = Module::new(&r.name);
    m.info = r.info.clone();
    for (n, d, s, data) in &r.weights {
        let bytes = data
            .then(|| {
                let numel = s.as_consts()?.iter().product::<i64>() as u64;
                d.storage_bytes(numel)
            })
            .flatten();
        let wd = match bytes {
            Some(b) => WeightData::Owned(Arc::new(vec![0u8; b as usize])),
            None => WeightData::None,
        };
        m.add_weight(n, *d, s.clone(), wd);
    }
    for (n, t) in &r.inputs {
        m.graph.add_input(n, t.clone());
    }
    let mut avail: Vec<ValueId> = (0..m.graph.values.len() as u32).map(ValueId).collect();
    let none = attrs([]);
    for st in &r.steps {
        let ty = |m: &Module, v: ValueId| m.graph.ty(v).clone();
        let same_dtype = |m: &Module, v: ValueId| -> Vec<ValueId> {
            let d = m.graph.ty(v).dtype.compute_type();
            avail
                .iter()
                .copied()
                .filter(|&w| m.graph.ty(w).dtype == d)
                .collect()
        };
        let res: Option<Vec<ValueId>> = (|| {
            Some(match st {
                Step::Any(o, ops, pool) => {
                    let op = Op::ALL[*o];
                    let operands: Vec<ValueId> = ops
                        .iter()
                        .map(|&i| pick(&avail, i))
                        .collect::<Option<_>>()?;
                    m.add_node(op, &operands, pool.attrs_for(op)).ok()?
                }
                Step::Binary(o, a, b) => {
                    let a = pick(&avail, *a)?;
                    let b = pick(&same_dtype(&m, a), *b)?;
                    m.add_node(BINARY[*o], &[a, b], none.clone()).ok()?
                }
                Step::Unary(o, a) => {
                    let a = pick(&avail, *a)?;
                    m.add_node(UNARY[*o], &[a], none.clone()).ok()?
                }
                Step::Cast(a, d) => {
                    let a = pick(&avail, *a)?;
                    m.add_node(Op::Cast, &[a], attrs([("to", Attr::Type(*d))]))
                        .ok()?
                }
                Step::Where(c, a, b) => {
                    let bools: Vec<ValueId> = avail
                        .iter()
                        .copied()
                        .filter(|&v| m.graph.ty(v).dtype == DType::Bool)
                        .collect();
                    let c = pick(&bools, *c)?;
                    let a = pick(&avail, *a)?;
                    let b = pick(&same_dtype(&m, a), *b)?;
                    m.add_node(Op::Where, &[c, a, b], none.clone()).ok()?
                }
                Step::MatMulT(a) => {
                    let a = pick(&avail, *a)?;
                    let r = ty(&m, a).shape.rank();
                    if r < 2 {
                        return None;
                    }
                    let mut perm: Vec<i64> = (0..r as i64).collect();
                    perm.swap(r - 1, r - 2);
                    let t = m
                        .add1(Op::Transpose, &[a], attrs([("perm", Attr::Ints(perm))]))
                        .ok()?;
                    let mut out = vec![t];
                    out.extend(m.add_node(Op::MatMul, &[a, t], none.clone()).ok()?);
                    out
                }
                Step::Transpose(a, seed) => {
                    let a = pick(&avail, *a)?;
                    let r = ty(&m, a).shape.rank();
                    let mut perm: Vec<i64> = (0..r as i64).collect();
                    let mut s = *seed;
                    for i in (1..r).rev() {
                        perm.swap(i, (s % (i as u64 + 1)) as usize);
                        s /= i as u64 + 1;
                    }
                    m.add_node(Op::Transpose, &[a], attrs([("perm", Attr::Ints(perm))]))
                        .ok()?
                }
                Step::Reshape(a, k) => {
                    let a = pick(&avail, *a)?;
                    let s = ty(&m, a).shape;
                    let shape = match k {
                        0 => Shape(vec![s.numel()]),
                        1 => Shape(vec![Dim::c(1), s.numel()]),
                        _ => s,
                    };
                    m.add_node(Op::Reshape, &[a], attrs([("shape", Attr::Shape(shape))]))
                        .ok()?
                }
                Step::Concat(a, b, axis) => {
                    let a = pick(&avail, *a)?;
                    let b = pick(&same_dtype(&m, a), *b)?;
                    m.add_node(Op::Concat, &[a, b], attrs([("axis", Attr::Int(*axis))]))
                        .ok()?
                }
                Step::Reduce(o, a, mask, keep) => {
                    let a = pick(&avail, *a)?;
                    let r = ty(&m, a).shape.rank();
                    let op = REDUCE[*o];
                    let mut at = if op == Op::ArgMax {
                        attrs([("axis", Attr::Int((*mask as i64 % (r as i64 + 1)) - 1))])
                    } else {
                        let axes = (0..r as i64).filter(|i| mask & (1 << i) != 0).collect();
                        attrs([("axes", Attr::Ints(axes))])
                    };
                    if let Some(k) = keep {
                        at.insert("keepdims".into(), Attr::Bool(*k));
                    }
                    m.add_node(op, &[a], at).ok()?
                }
                Step::Softmax(a, axis) => {
                    let a = pick(&avail, *a)?;
                    m.add_node(Op::Softmax, &[a], attrs([("axis", Attr::Int(*axis))]))
                        .ok()?
                }
                Step::Split(a, axis, k) => {
                    let a = pick(&avail, *a)?;
                    let s = ty(&m, a).shape;
                    if s.rank() == 0 {
                        return None;
                    }
                    let ax = axis % s.rank();
                    let d = s.0[ax].as_const()?;
                    let first = (*k as i64).rem_euclid(d + 1);
                    m.add_node(
                        Op::Split,
                        &[a],
                        attrs([
                            ("axis", Attr::Int(ax as i64)),
                            ("sizes", Attr::Ints(vec![first, d - first])),
                        ]),
                    )
                    .ok()?
                }
                Step::Constant(t) => m
                    .add_node(
                        Op::Constant,
                        &[],
                        attrs([("value", Attr::Tensor(t.clone()))]),
                    )
                    .ok()?,
            })
        })();
        if let Some(vs) = res {
            avail.extend(vs);
        }
    }
    for &o in &r.outputs {
        if let Some(v) = pick(&avail, o) {
            m.graph.outputs.push(v);
        }
    }
    m
}

/// A module of arbitrary nodes: any op, any operand count, every declared attribute
/// kind, result types as drawn. It need not verify; it must survive
/// `parse_unchecked(print(m))`.
#[derive(Clone, Debug)]
struct WildNode {
    op: usize,
    operands: Vec<usize>,
    results: Vec<(String, TensorType, Vec<Dim>)>,
    attrs: AttrPool,
}

fn wild_module() -> impl Strategy<Value = Module> {
    let node = (
        0..Op::ALL.len(),
        pvec(any::<usize>(), 0..4),
        pvec((any_name(), ty(), pvec(wild_dim(), 0..3)), 1..3),
        attr_pool(true),
    )
        .prop_map(|(op, operands, results, attrs)| WildNode {
            op,
            operands,
            results,
            attrs,
        });
    (
        recipe().prop_map(|mut r| {
            r.steps.clear();
            r
        }),
        pvec(node, 0..8),
    )
        .prop_map(|(r, nodes)| {
            let mut m = build(&r);
            m.graph.outputs.clear();
            for n in nodes {
                let nvals = m.graph.values.len();
                if nvals == 0 {
                    continue;
                }
                let nid = NodeId(m.graph.nodes.len() as u32);
                let inputs: Vec<ValueId> = n
                    .operands
                    .iter()
                    .map(|&i| ValueId((i % nvals) as u32))
                    .collect();
                let mut outputs = Vec::new();
                for (k, (name, mut ty, extra)) in n.results.into_iter().enumerate() {
                    ty.shape.0.extend(extra);
                    outputs.push(m.graph.add_value(name, ty, ValueDef::Node(nid, k)));
                }
                let op = Op::ALL[n.op];
                m.graph.nodes.push(Node {
                    op,
                    inputs,
                    outputs,
                    attrs: n.attrs.attrs_for(op),
                });
            }
            let n = m.graph.values.len() as u32;
            m.graph
                .outputs
                .extend((0..n.min(2)).map(|i| ValueId(n - 1 - i)));
            m
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn typed_modules_round_trip(r in recipe()) {
        let m = build(&r);
        let mut wnames = HashSet::new();
        let weights_unique = m.weights.iter().all(|w| wnames.insert(&w.name));
        // Duplicate weight names are a verifier error, but the printer must cope.
        if let (true, Err(e)) = (weights_unique, verify(&m)) {
            return Err(TestCaseError::fail(format!("built module does not verify: {e}\n{}", print(&m))));
        }
        check_round_trip(&m, true)?;
    }

    #[test]
    fn arbitrary_nodes_round_trip_unchecked(m in wild_module()) {
        check_round_trip(&m, false)?;
    }

    /// Damaged text: a span of the printed module replaced by other text. The parser
    /// returns, and an error's position lies inside the text.
    #[test]
    fn damaged_text_never_panics(
        r in recipe(),
        cut in any::<prop::sample::Index>(),
        len in 0usize..12,
        junk in prop_oneof![
            "[%@{}()\\[\\]<>,:=*+\\-;\"a-z0-9. \n]{0,6}",
            any::<String>(),
            Just("9999999999999999999999".to_string()),
            Just("\"\\u{".to_string()),
            Just("dense<f32[99999999999, 99999999999]: [".to_string()),
        ],
    ) {
        let text = print(&build(&r));
        let mut at = cut.index(text.len() + 1);
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        let mut end = (at + len).min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let damaged = format!("{}{}{}", &text[..at], junk, &text[end..]);
        let lines = damaged.lines().count() as u32 + 1;
        for res in [parse(&damaged, "d"), parse_unchecked(&damaged, "d")] {
            if let Err(e) = res {
                prop_assert!(e.line >= 1 && e.line <= lines && e.col >= 1, "{e}");
            }
        }
    }

    /// Every op, fed extreme dims and attribute values from text: the checked parser and
    /// the verifier (both run the op table's shape rules) report errors, never panic.
    #[test]
    fn extreme_dims_and_attrs_never_panic(
        op in 0..Op::ALL.len(),
        tys in pvec((0..EXTREME_DIMS.len(), 0..EXTREME_DIMS.len(), 0u8..4), 0..4),
        attr in 0..EXTREME_ATTRS.len(),
    ) {
        let ty = |&(a, b, k): &(usize, usize, u8)| {
            let (a, b) = (EXTREME_DIMS[a], EXTREME_DIMS[b]);
            match k {
                0 => format!("f32[{a}, {b}]"),
                1 => format!("i64[{a}]"),
                2 => format!("f32[2, {a}, {b}, 3]"),
                _ => format!("bool[{b}, 1]"),
            }
        };
        let decl: Vec<String> = tys.iter().enumerate().map(|(i, t)| format!("%x{i}: {}", ty(t))).collect();
        let args: Vec<String> = (0..tys.len()).map(|i| format!("%x{i}")).collect();
        let src = format!(
            "module @m {{\n  graph @main({}) -> () {{\n    %r = {}({}) {} : f32[]\n    return\n  }}\n}}\n",
            decl.join(", "),
            Op::ALL[op].name(),
            args.join(", "),
            EXTREME_ATTRS[attr]
        );
        let _ = parse(&src, "x");
        if let Ok(m) = parse_unchecked(&src, "x") {
            let _ = verify(&m);
        }
    }

    #[test]
    fn random_bytes_never_panic(bytes in pvec(any::<u8>(), 0..200)) {
        let _ = parse_bytes(&bytes, "bytes");
    }
}

const EXTREME_DIMS: &[&str] = &[
    "9223372036854775807",
    "-9223372036854775808",
    "-1",
    "0",
    "n",
    "4611686018427387904*n",
    "9223372036854775807*n + 9223372036854775807*m",
    "3037000500*n",
    "n - 1",
];

const EXTREME_ATTRS: &[&str] = &[
    "",
    "{axis = 0}",
    "{axis = -9223372036854775808}",
    "{axes = [9223372036854775807]}",
    "{axes = [0], keepdims = true}",
    "{perm = [1, 0]}",
    "{perm = [9223372036854775807, 0]}",
    "{shape = [-1]}",
    "{shape = [9223372036854775807, 2]}",
    "{shape = [9223372036854775807*n, 4611686018427387904*n]}",
    "{repeats = [9223372036854775807, 2]}",
    "{repeats = [4611686018427387904, 4]}",
    "{pads = [9223372036854775807, 9223372036854775807, 1, 1]}",
    "{axis = 0, sizes = [9223372036854775807, 9223372036854775807]}",
    "{axis = 0, sizes = [1, 2]}",
    "{starts = [0], ends = [9223372036854775807], steps = [-9223372036854775808]}",
    "{starts = [-9223372036854775808], ends = [9223372036854775807]}",
    "{eps = 1.0}",
    "{theta = 1.0, dims = 9223372036854775807}",
    "{scale = 1.0}",
    "{layer = 0}",
    "{to = f16}",
    "{upper = true, k = -9223372036854775808}",
    "{value = dense<f32[1]: [1.0]>}",
];

#[test]
fn weight_value_ids_follow_declaration_order() {
    // The numbering the round trip relies on: weights, then inputs, then results.
    let m = parse(
        "module @m {\n  weight @b : f32[2]\n  weight @a : f32[2]\n  graph @main(%x: f32[2]) -> (%0: f32[2]) {\n    %0 = add(%x, @a) : f32[2]\n    return %0\n  }\n}\n",
        "w",
    )
    .unwrap();
    assert_eq!(m.graph.values[0].def, ValueDef::Weight(WeightId(0)));
    assert_eq!(m.graph.values[1].def, ValueDef::Weight(WeightId(1)));
    assert_eq!(m.graph.inputs, vec![ValueId(2)]);
    assert_eq!(m.graph.nodes[0].inputs, vec![ValueId(2), ValueId(1)]);
}
