//! ONNX import: models built here with the protobuf types, each checking one promise of
//! the importer — element data from every storage field, memory-mapped external data,
//! symbolic dims and shape folding, opset-dependent operands, and an error naming the
//! node (index, name, op, domain, opset) or tensor for each kind of bad input.

use llmc_frontend::onnx::{self, ImportOptions};
use llmc_frontend::FrontendError;
use llmc_ir::interp::Interpreter;
use llmc_ir::{AttrsExt, DType, Dim, Op, Shape, Tensor, WeightData};
use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::tensor_proto::{DataLocation, DataType};
use onnx_protobuf::tensor_shape_proto::{dimension, Dimension};
use onnx_protobuf::{
    type_proto, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use protobuf::{EnumOrUnknown, Message, MessageField};

// ----- builders -----

enum D {
    N(i64),
    P(&'static str),
    Unnamed,
}

fn vi(name: &str, elem: DataType, dims: &[D]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: match d {
                D::N(n) => Some(dimension::Value::DimValue(*n)),
                D::P(p) => Some(dimension::Value::DimParam(p.to_string())),
                D::Unnamed => None,
            },
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        type_: MessageField::some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: elem as i32,
                shape: MessageField::some(TensorShapeProto {
                    dim,
                    ..Default::default()
                }),
                ..Default::default()
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn node(
    op: &str,
    name: &str,
    ins: &[&str],
    outs: &[&str],
    attrs: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        name: name.into(),
        input: ins.iter().map(|s| s.to_string()).collect(),
        output: outs.iter().map(|s| s.to_string()).collect(),
        attribute: attrs,
        ..Default::default()
    }
}

fn a_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        type_: EnumOrUnknown::new(AttributeType::INT),
        i: v,
        ..Default::default()
    }
}

fn a_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        type_: EnumOrUnknown::new(AttributeType::INTS),
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn a_graph(name: &str, g: GraphProto) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        type_: EnumOrUnknown::new(AttributeType::GRAPH),
        g: MessageField::some(g),
        ..Default::default()
    }
}

fn tensor(name: &str, dt: DataType, dims: &[i64]) -> TensorProto {
    TensorProto {
        name: name.into(),
        data_type: dt as i32,
        dims: dims.to_vec(),
        ..Default::default()
    }
}

fn i64s(name: &str, v: &[i64]) -> TensorProto {
    TensorProto {
        int64_data: v.to_vec(),
        ..tensor(name, DataType::INT64, &[v.len() as i64])
    }
}

fn graph(
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    ins: Vec<ValueInfoProto>,
    outs: Vec<ValueInfoProto>,
) -> GraphProto {
    GraphProto {
        name: "g".into(),
        node: nodes,
        initializer: inits,
        input: ins,
        output: outs,
        ..Default::default()
    }
}

fn model(g: GraphProto, opset: i64) -> ModelProto {
    ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: opset,
            ..Default::default()
        }],
        graph: MessageField::some(g),
        ..Default::default()
    }
}

fn bytes(m: &ModelProto) -> Vec<u8> {
    m.write_to_bytes().expect("serializes")
}

fn import(m: &ModelProto) -> Result<llmc_ir::Module, FrontendError> {
    onnx::load_bytes(&bytes(m), "test.onnx")
}

fn run(m: &llmc_ir::Module, inputs: &[Tensor]) -> Vec<Tensor> {
    Interpreter::new(m).run(inputs).expect("runs")
}

fn err(m: &ModelProto) -> String {
    match import(m) {
        Ok(_) => panic!("import succeeded; expected an error"),
        Err(e) => e.to_string(),
    }
}

fn has(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "message lacks {p:?}:\n{msg}");
    }
}

// ----- element data -----

#[test]
fn initializers_from_every_storage_field() {
    let f16_bits: Vec<i32> = [1.5f32, -2.0, 0.25]
        .iter()
        .map(|&v| half::f16::from_f32(v).to_bits() as i32)
        .collect();
    let inits = vec![
        TensorProto {
            float_data: vec![1.0, -2.5, 3.25, 4.0],
            ..tensor("f", DataType::FLOAT, &[2, 2])
        },
        TensorProto {
            double_data: vec![0.1, 1e300],
            ..tensor("d", DataType::DOUBLE, &[2])
        },
        i64s("l", &[i64::MIN, -1, 7]),
        TensorProto {
            int32_data: f16_bits,
            ..tensor("h", DataType::FLOAT16, &[3])
        },
        TensorProto {
            int32_data: vec![1, 0, 5],
            ..tensor("b", DataType::BOOL, &[3])
        },
        TensorProto {
            int32_data: vec![-128, 127, -1],
            ..tensor("i8", DataType::INT8, &[3])
        },
        TensorProto {
            int32_data: vec![0, 255, 17],
            ..tensor("u8", DataType::UINT8, &[3])
        },
        TensorProto {
            int32_data: vec![-70000, 70000],
            ..tensor("i32", DataType::INT32, &[2])
        },
        TensorProto {
            raw_data: [1.0f32, -0.5]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
            ..tensor("raw", DataType::FLOAT, &[2])
        },
    ];
    let names = ["f", "d", "l", "h", "b", "i8", "u8", "i32", "raw"];
    let outs = vec![
        vi("f", DataType::FLOAT, &[D::N(2), D::N(2)]),
        vi("d", DataType::DOUBLE, &[D::N(2)]),
        vi("l", DataType::INT64, &[D::N(3)]),
        vi("h", DataType::FLOAT16, &[D::N(3)]),
        vi("b", DataType::BOOL, &[D::N(3)]),
        vi("i8", DataType::INT8, &[D::N(3)]),
        vi("u8", DataType::UINT8, &[D::N(3)]),
        vi("i32", DataType::INT32, &[D::N(2)]),
        vi("raw", DataType::FLOAT, &[D::N(2)]),
    ];
    let m = import(&model(graph(vec![], inits, vec![], outs), 13)).expect("imports");
    assert_eq!(m.weights.len(), names.len());
    let got = run(&m, &[]);
    assert_eq!(got[0].to_f64(), vec![1.0, -2.5, 3.25, 4.0]);
    assert_eq!(got[0].shape, vec![2, 2]);
    assert_eq!(got[1].to_f64(), vec![0.1, 1e300]);
    assert_eq!(got[2].to_i64(), vec![i64::MIN, -1, 7]);
    assert_eq!(
        (got[3].dtype, got[3].to_f64()),
        (DType::F16, vec![1.5, -2.0, 0.25])
    );
    assert_eq!(
        (got[4].dtype, got[4].to_i64()),
        (DType::Bool, vec![1, 0, 1])
    );
    assert_eq!(got[5].to_i64(), vec![-128, 127, -1]);
    assert_eq!(got[6].to_i64(), vec![0, 255, 17]);
    assert_eq!(got[7].to_i64(), vec![-70000, 70000]);
    assert_eq!(got[8].to_f64(), vec![1.0, -0.5]);
}

#[test]
fn external_data_is_memory_mapped_relative_to_the_model() {
    let dir = tempfile::tempdir().expect("tempdir");
    // 8 bytes of padding, then the weight at offset 8.
    let vals = [0.5f32, 1.5, -3.0, 8.0, 9.5, -0.25];
    let mut blob = vec![0xAAu8; 8];
    blob.extend(vals.iter().flat_map(|v| v.to_le_bytes()));
    std::fs::write(dir.path().join("weights.bin"), &blob).expect("write");
    let kv = |k: &str, v: &str| StringStringEntryProto {
        key: k.into(),
        value: v.into(),
        ..Default::default()
    };
    let w = TensorProto {
        data_location: EnumOrUnknown::new(DataLocation::EXTERNAL),
        external_data: vec![
            kv("location", "weights.bin"),
            kv("offset", "8"),
            kv("length", "24"),
        ],
        ..tensor("w", DataType::FLOAT, &[2, 3])
    };
    let g = graph(
        vec![node("Add", "add", &["x", "w"], &["y"], vec![])],
        vec![w],
        vec![vi("x", DataType::FLOAT, &[D::N(2), D::N(3)])],
        vec![vi("y", DataType::FLOAT, &[D::N(2), D::N(3)])],
    );
    let path = dir.path().join("model.onnx");
    std::fs::write(&path, bytes(&model(g, 14))).expect("write");
    let m = onnx::load(&path).expect("imports");
    match &m.weights[0].data {
        WeightData::Mapped {
            offset,
            len,
            path: p,
            ..
        } => {
            assert_eq!((*offset, *len), (8, 24));
            assert_eq!(p.file_name().and_then(|n| n.to_str()), Some("weights.bin"));
        }
        other => panic!("expected a mapped weight, got {other:?}"),
    }
    let x = Tensor::f32(vec![2, 3], vec![1.0; 6]);
    let want: Vec<f64> = vals.iter().map(|v| (*v as f64) + 1.0).collect();
    assert_eq!(run(&m, &[x])[0].to_f64(), want);
}

// ----- symbolic dims and shape folding -----

#[test]
fn shape_chain_folds_to_a_symbolic_reshape() {
    // y = Reshape(x, Concat(Unsqueeze(Gather(Shape(x), 0)), Unsqueeze(Gather(Shape(x), 1) * 4)))
    let nodes = vec![
        node("Shape", "shape", &["x"], &["s"], vec![]),
        node("Gather", "g0", &["s", "i0"], &["b"], vec![a_int("axis", 0)]),
        node("Gather", "g1", &["s", "i1"], &["t"], vec![a_int("axis", 0)]),
        node("Mul", "mul", &["t", "four"], &["t4"], vec![]),
        node("Unsqueeze", "u0", &["b", "zero"], &["b1"], vec![]),
        node("Unsqueeze", "u1", &["t4", "zero"], &["t41"], vec![]),
        node(
            "Concat",
            "cat",
            &["b1", "t41"],
            &["shape"],
            vec![a_int("axis", 0)],
        ),
        node("Reshape", "reshape", &["x", "shape"], &["y"], vec![]),
    ];
    let scalar = |name: &str, v: i64| TensorProto {
        int64_data: vec![v],
        ..tensor(name, DataType::INT64, &[])
    };
    let inits = vec![
        scalar("i0", 0),
        scalar("i1", 1),
        scalar("four", 4),
        i64s("zero", &[0]),
    ];
    let g = graph(
        nodes,
        inits,
        vec![vi(
            "x",
            DataType::FLOAT,
            &[D::P("batch"), D::P("seq len"), D::N(4)],
        )],
        vec![vi("y", DataType::FLOAT, &[D::P("batch"), D::Unnamed])],
    );
    let m = import(&model(g, 13)).expect("imports");
    // The whole shape computation folds away: one reshape with a symbolic shape.
    assert_eq!(m.graph.nodes.len(), 1, "{:?}", m.graph.nodes);
    let n = &m.graph.nodes[0];
    assert_eq!(n.op, Op::Reshape);
    let (b, s) = (Dim::sym("batch"), Dim::sym("seq_len"));
    assert_eq!(
        n.attrs.shape("shape"),
        Some(&Shape(vec![b.clone(), s.mul(&Dim::c(4))]))
    );
    assert!(
        m.weights.is_empty(),
        "folded shape constants are not kept as weights"
    );
    let x = Tensor::f32(vec![2, 3, 4], (0..24).map(|v| v as f32).collect());
    let y = &run(&m, &[x])[0];
    assert_eq!(y.shape, vec![2, 12]);
    assert_eq!(y.to_f64(), (0..24).map(|v| v as f64).collect::<Vec<_>>());
}

#[test]
fn unnamed_dynamic_dims_get_fresh_symbols() {
    let g = graph(
        vec![node("Relu", "r", &["x"], &["y"], vec![])],
        vec![],
        vec![vi("x", DataType::FLOAT, &[D::Unnamed, D::N(2), D::Unnamed])],
        vec![vi("y", DataType::FLOAT, &[D::Unnamed, D::N(2), D::Unnamed])],
    );
    let m = import(&model(g, 14)).expect("imports");
    let s = &m.graph.ty(m.graph.inputs[0]).shape;
    assert_eq!(s.0[1], Dim::c(2));
    assert!(
        !s.0[0].is_const() && !s.0[2].is_const() && s.0[0] != s.0[2],
        "{s}"
    );
}

#[test]
fn constant_of_shape_and_range_fold_at_import() {
    let nodes = vec![
        node("Shape", "shape", &["x"], &["s"], vec![]),
        node(
            "ConstantOfShape",
            "cos",
            &["s"],
            &["ones"],
            vec![AttributeProto {
                name: "value".into(),
                type_: EnumOrUnknown::new(AttributeType::TENSOR),
                t: MessageField::some(TensorProto {
                    float_data: vec![1.0],
                    ..tensor("v", DataType::FLOAT, &[1])
                }),
                ..Default::default()
            }],
        ),
        node(
            "Range",
            "range",
            &["start", "limit", "delta"],
            &["r"],
            vec![],
        ),
        node("Add", "add", &["x", "ones"], &["xp"], vec![]),
        node("Add", "add2", &["xp", "r"], &["y"], vec![]),
    ];
    let f = |name: &str, v: f32| TensorProto {
        float_data: vec![v],
        ..tensor(name, DataType::FLOAT, &[])
    };
    let g = graph(
        nodes,
        vec![f("start", 0.5), f("limit", 3.0), f("delta", 1.0)],
        vec![vi("x", DataType::FLOAT, &[D::N(2), D::N(3)])],
        vec![vi("y", DataType::FLOAT, &[D::N(2), D::N(3)])],
    );
    let m = import(&model(g, 13)).expect("imports");
    let ops: Vec<Op> = m.graph.nodes.iter().map(|n| n.op).collect();
    assert_eq!(ops, vec![Op::Constant, Op::Add, Op::Constant, Op::Add]);
    let x = Tensor::f32(vec![2, 3], vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    // x + 1 + [0.5, 1.5, 2.5]
    assert_eq!(
        run(&m, &[x])[0].to_f64(),
        vec![1.5, 3.5, 5.5, 4.5, 6.5, 8.5]
    );
}

#[test]
fn exporter_style_position_and_mask_graphs_run_for_any_length() {
    // What exporters write for position ids and a causal mask over symbolic dims:
    // seq = Shape(ids)[1]; pos = Expand(Unsqueeze(Range(0, seq, 1)), Shape(ids));
    // tri = Trilu(ConstantOfShape([seq, seq], 1), upper=0); frac = pos / float(seq).
    let scalar = |name: &str, v: i64| TensorProto {
        int64_data: vec![v],
        ..tensor(name, DataType::INT64, &[])
    };
    let one_f = AttributeProto {
        name: "value".into(),
        type_: EnumOrUnknown::new(AttributeType::TENSOR),
        t: MessageField::some(TensorProto {
            float_data: vec![1.0],
            ..tensor("v", DataType::FLOAT, &[1])
        }),
        ..Default::default()
    };
    let nodes = vec![
        node("Shape", "shape", &["ids"], &["s"], vec![]),
        node(
            "Gather",
            "seq",
            &["s", "one"],
            &["seq"],
            vec![a_int("axis", 0)],
        ),
        node("Range", "range", &["zero", "seq", "one"], &["r"], vec![]),
        node("Unsqueeze", "u", &["r", "axes0"], &["r1"], vec![]),
        node("Expand", "expand", &["r1", "s"], &["pos"], vec![]),
        node("Unsqueeze", "us", &["seq", "axes0"], &["seq1"], vec![]),
        node(
            "Concat",
            "cat",
            &["seq1", "seq1"],
            &["ss"],
            vec![a_int("axis", 0)],
        ),
        node("ConstantOfShape", "ones", &["ss"], &["o"], vec![one_f]),
        node("Trilu", "tri", &["o"], &["tri"], vec![a_int("upper", 0)]),
        node(
            "Cast",
            "posf",
            &["pos"],
            &["pf"],
            vec![a_int("to", DataType::FLOAT as i64)],
        ),
        node(
            "Cast",
            "seqf",
            &["seq"],
            &["sf"],
            vec![a_int("to", DataType::FLOAT as i64)],
        ),
        node("Div", "frac", &["pf", "sf"], &["frac"], vec![]),
    ];
    let g = graph(
        nodes,
        vec![scalar("zero", 0), scalar("one", 1), i64s("axes0", &[0])],
        vec![vi("ids", DataType::INT64, &[D::P("batch"), D::P("seq")])],
        vec![
            vi("pos", DataType::INT64, &[D::P("batch"), D::P("seq")]),
            vi("tri", DataType::FLOAT, &[D::P("seq"), D::P("seq")]),
            vi("frac", DataType::FLOAT, &[D::P("batch"), D::P("seq")]),
        ],
    );
    let m = import(&model(g, 18)).expect("imports");
    let ops: Vec<Op> = m.graph.nodes.iter().map(|n| n.op).collect();
    assert!(
        ops.contains(&Op::Dims),
        "the divisor needs seq at run time: {ops:?}"
    );
    let s = |n: &str| Dim::sym(n);
    assert_eq!(
        m.graph.ty(m.graph.outputs[1]).shape,
        Shape(vec![s("seq"), s("seq")])
    );
    let mut interp = Interpreter::new(&m);
    for (b, q) in [(2usize, 3usize), (1, 5)] {
        let ids = Tensor::from_i64(DType::I64, vec![b, q], vec![7; b * q]);
        let out = interp.run(&[ids]).expect("runs");
        let pos: Vec<i64> = (0..b).flat_map(|_| 0..q as i64).collect();
        assert_eq!(
            (out[0].shape.clone(), out[0].to_i64()),
            (vec![b, q], pos.clone())
        );
        let tri: Vec<f64> = (0..q)
            .flat_map(|i| (0..q).map(move |j| (j <= i) as i64 as f64))
            .collect();
        assert_eq!(out[1].to_f64(), tri);
        let frac: Vec<f64> = pos.iter().map(|&p| (p as f32 / q as f32) as f64).collect();
        assert_eq!(out[2].to_f64(), frac);
    }
}

#[test]
fn range_from_the_past_length_runs_for_any_cache_size() {
    // What Optimum's decoder exports write for positions: past = Shape(past_k)[2],
    // total = past + Shape(ids)[1], pos = Range(Cast(past), total, 1) (the start is a
    // symbolic dim, not a constant), and a countdown Range(total, past, -1).
    let scalar = |name: &str, v: i64| TensorProto {
        int64_data: vec![v],
        ..tensor(name, DataType::INT64, &[])
    };
    let nodes = vec![
        node("Shape", "pshape", &["past_k"], &["ps"], vec![]),
        node(
            "Gather",
            "past",
            &["ps", "two"],
            &["past"],
            vec![a_int("axis", 0)],
        ),
        node(
            "Cast",
            "past_i64",
            &["past"],
            &["pastc"],
            vec![a_int("to", DataType::INT64 as i64)],
        ),
        node("Shape", "ishape", &["ids"], &["is"], vec![]),
        node(
            "Gather",
            "seq",
            &["is", "one"],
            &["seq"],
            vec![a_int("axis", 0)],
        ),
        node("Add", "total", &["pastc", "seq"], &["total"], vec![]),
        node(
            "Range",
            "range",
            &["pastc", "total", "one"],
            &["pos"],
            vec![],
        ),
        node(
            "Range",
            "down",
            &["total", "pastc", "minus_one"],
            &["down"],
            vec![],
        ),
    ];
    let g = graph(
        nodes,
        vec![scalar("one", 1), scalar("two", 2), scalar("minus_one", -1)],
        vec![
            vi("ids", DataType::INT64, &[D::P("batch"), D::P("seq")]),
            vi(
                "past_k",
                DataType::FLOAT,
                // (`past` is the interpreter's KV-cache length; the export's own name.)
                &[
                    D::P("batch"),
                    D::N(2),
                    D::P("past_sequence_length"),
                    D::N(4),
                ],
            ),
        ],
        vec![
            vi("pos", DataType::INT64, &[D::P("seq")]),
            vi("down", DataType::INT64, &[D::P("seq")]),
        ],
    );
    let m = import(&model(g, 17)).expect("imports");
    let s = |n: &str| Dim::sym(n);
    assert_eq!(m.graph.ty(m.graph.outputs[0]).shape, Shape(vec![s("seq")]));
    assert_eq!(m.graph.ty(m.graph.outputs[1]).shape, Shape(vec![s("seq")]));
    let mut interp = Interpreter::new(&m);
    for (past, q) in [(0usize, 3usize), (5, 2), (9, 1)] {
        let ids = Tensor::from_i64(DType::I64, vec![1, q], vec![7; q]);
        let pk = Tensor::f32(vec![1, 2, past, 4], vec![0.0; 8 * past]);
        let out = interp.run(&[ids, pk]).expect("runs");
        let want: Vec<i64> = (past as i64..(past + q) as i64).collect();
        assert_eq!(out[0].to_i64(), want, "past {past}, seq {q}");
        let down: Vec<i64> = want.iter().map(|p| p + 1).rev().collect();
        assert_eq!(out[1].to_i64(), down, "past {past}, seq {q}");
    }
    // A start that is neither constant nor computed from shapes stays an error naming
    // the node and the input.
    let g = graph(
        vec![node("Range", "r", &["x", "lim", "one"], &["y"], vec![])],
        vec![scalar("one", 1), scalar("lim", 9)],
        vec![vi("x", DataType::INT64, &[])],
        vec![vi("y", DataType::INT64, &[D::Unnamed])],
    );
    let e = import(&model(g, 17)).unwrap_err().to_string();
    assert!(e.contains("Range") && e.contains("input 0 (start"), "{e}");
}

#[test]
fn slices_with_symbolic_bounds_and_expand_shapes_behind_where() {
    // What torch.onnx.export writes for BERT's position ids and a KV-cache mask:
    // pos = buf[:, 0:seq] (buf a constant 0..8 buffer), tail = x[:, -seq:],
    // rest = x[:, seq:], and Expand to Where(Equal(shape, -1), 1, shape).
    let seq_nodes = vec![
        node("Shape", "shape", &["ids"], &["s"], vec![]),
        node(
            "Gather",
            "seq",
            &["s", "one"],
            &["seq"],
            vec![a_int("axis", 0)],
        ),
        node(
            "Gather",
            "batch",
            &["s", "zero"],
            &["b"],
            vec![a_int("axis", 0)],
        ),
        node("Unsqueeze", "u", &["seq", "axes0"], &["seq1"], vec![]),
        node("Unsqueeze", "ub", &["b", "axes0"], &["b1"], vec![]),
        node(
            "Slice",
            "pos",
            &["buf", "zeros1", "seq1", "axes1"],
            &["pos"],
            vec![],
        ),
        node("Sub", "neg", &["zeros1", "seq1"], &["mseq"], vec![]),
        node(
            "Slice",
            "tail",
            &["x", "mseq", "big", "axes1"],
            &["tail"],
            vec![],
        ),
        node(
            "Slice",
            "rest",
            &["x", "seq1", "big", "axes1"],
            &["rest"],
            vec![],
        ),
        node(
            "Concat",
            "target",
            &["b1", "seq1"],
            &["t"],
            vec![a_int("axis", 0)],
        ),
        node("Mul", "m1", &["ones2", "minus1"], &["neg1"], vec![]),
        node("Equal", "eq", &["t", "neg1"], &["eq"], vec![]),
        node("Where", "where", &["eq", "ones2", "t"], &["shape"], vec![]),
        node("Expand", "expand", &["half", "shape"], &["e"], vec![]),
    ];
    let scalar = |name: &str, v: i64| TensorProto {
        int64_data: vec![v],
        ..tensor(name, DataType::INT64, &[])
    };
    let buf = TensorProto {
        int64_data: (0..8).collect(),
        ..tensor("buf", DataType::INT64, &[1, 8])
    };
    let half = TensorProto {
        float_data: vec![0.5],
        ..tensor("half", DataType::FLOAT, &[1, 1])
    };
    let g = graph(
        seq_nodes,
        vec![
            scalar("zero", 0),
            scalar("one", 1),
            scalar("minus1", -1),
            i64s("axes0", &[0]),
            i64s("axes1", &[1]),
            i64s("zeros1", &[0]),
            i64s("big", &[i64::MAX]),
            i64s("ones2", &[1, 1]),
            buf,
            half,
        ],
        vec![
            vi("ids", DataType::INT64, &[D::P("batch"), D::P("seq")]),
            vi("x", DataType::FLOAT, &[D::P("batch"), D::P("total")]),
        ],
        vec![
            vi("pos", DataType::INT64, &[D::N(1), D::P("seq")]),
            vi("tail", DataType::FLOAT, &[D::P("batch"), D::P("seq")]),
            vi("rest", DataType::FLOAT, &[D::P("batch"), D::Unnamed]),
            vi("e", DataType::FLOAT, &[D::P("batch"), D::P("seq")]),
        ],
    );
    let m = import(&model(g, 17)).expect("imports");
    let s = |n: &str| Dim::sym(n);
    let ty = |k: usize| m.graph.ty(m.graph.outputs[k]).shape.clone();
    assert_eq!(ty(0), Shape(vec![Dim::c(1), s("seq")]));
    assert_eq!(ty(1), Shape(vec![s("batch"), s("seq")]));
    assert_eq!(ty(2), Shape(vec![s("batch"), s("total").sub(&s("seq"))]));
    assert_eq!(ty(3), Shape(vec![s("batch"), s("seq")]));
    let mut interp = Interpreter::new(&m);
    for (b, q, t) in [(2usize, 3usize, 5usize), (1, 1, 4)] {
        let ids = Tensor::from_i64(DType::I64, vec![b, q], vec![0; b * q]);
        let xv: Vec<f32> = (0..b * t).map(|i| i as f32).collect();
        let x = Tensor::f32(vec![b, t], xv.clone());
        let out = interp.run(&[ids, x]).expect("runs");
        assert_eq!(out[0].to_i64(), (0..q as i64).collect::<Vec<_>>());
        let cols = |from: usize, to: usize| -> Vec<f64> {
            (0..b)
                .flat_map(|r| (from..to).map(move |c| (r * t + c) as f64))
                .collect()
        };
        assert_eq!(
            (out[1].shape.clone(), out[1].to_f64()),
            (vec![b, q], cols(t - q, t))
        );
        assert_eq!(
            (out[2].shape.clone(), out[2].to_f64()),
            (vec![b, t - q], cols(q, t))
        );
        assert_eq!(
            (out[3].shape.clone(), out[3].to_f64()),
            (vec![b, q], vec![0.5; b * q])
        );
    }
}

// ----- opset-dependent operands -----

#[test]
fn axes_move_from_attributes_to_inputs_with_the_opset() {
    let x = || vi("x", DataType::FLOAT, &[D::N(2), D::N(1), D::N(3)]);
    let y = |d: &[D]| vi("y", DataType::FLOAT, d);
    // Opset 11: attributes.
    let g11 = graph(
        vec![
            node("Squeeze", "sq", &["x"], &["s"], vec![a_ints("axes", &[1])]),
            node(
                "ReduceSum",
                "rs",
                &["s"],
                &["y"],
                vec![a_ints("axes", &[1]), a_int("keepdims", 0)],
            ),
        ],
        vec![],
        vec![x()],
        vec![y(&[D::N(2)])],
    );
    // Opset 13: inputs.
    let g13 = graph(
        vec![
            node("Squeeze", "sq", &["x", "a1"], &["s"], vec![]),
            node(
                "ReduceSum",
                "rs",
                &["s", "a1"],
                &["y"],
                vec![a_int("keepdims", 0)],
            ),
        ],
        vec![i64s("a1", &[1])],
        vec![x()],
        vec![y(&[D::N(2)])],
    );
    let xv = Tensor::f32(vec![2, 1, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    for (g, opset) in [(g11, 11), (g13, 13)] {
        let m = import(&model(g, opset)).expect("imports");
        assert_eq!(
            run(&m, std::slice::from_ref(&xv))[0].to_f64(),
            vec![6.0, 15.0],
            "opset {opset}"
        );
    }
}

#[test]
fn split_sizes_and_slice_bounds_follow_the_opset() {
    let x = || vi("x", DataType::FLOAT, &[D::N(5)]);
    let outs = || {
        vec![
            vi("a", DataType::FLOAT, &[D::N(2)]),
            vi("b", DataType::FLOAT, &[D::N(3)]),
            vi("c", DataType::FLOAT, &[D::N(2)]),
        ]
    };
    let g11 = graph(
        vec![
            node(
                "Split",
                "split",
                &["x"],
                &["a", "b"],
                vec![a_ints("split", &[2, 3])],
            ),
            node("Slice", "slice", &["x", "st", "en"], &["c"], vec![]),
        ],
        vec![i64s("st", &[-1]), i64s("en", &[-3]), i64s("steps", &[-1])],
        vec![x()],
        outs(),
    );
    let mut g11 = g11;
    g11.node[1]
        .input
        .extend(["ax".to_string(), "steps".to_string()]);
    g11.initializer.push(i64s("ax", &[0]));
    let mut g13 = g11.clone();
    g13.node[0].attribute.clear();
    g13.node[0].input.push("sizes".into());
    g13.initializer.push(i64s("sizes", &[2, 3]));
    let xv = Tensor::f32(vec![5], vec![10.0, 11.0, 12.0, 13.0, 14.0]);
    for (g, opset) in [(g11, 11), (g13, 13)] {
        let m = import(&model(g, opset)).expect("imports");
        let o = run(&m, std::slice::from_ref(&xv));
        assert_eq!(o[0].to_f64(), vec![10.0, 11.0], "opset {opset}");
        assert_eq!(o[1].to_f64(), vec![12.0, 13.0, 14.0], "opset {opset}");
        assert_eq!(o[2].to_f64(), vec![14.0, 13.0], "opset {opset}");
    }
}

#[test]
fn if_with_a_constant_condition_inlines_its_branch() {
    let branch = |op: &str| {
        graph(
            vec![node(op, "b", &["x"], &["o"], vec![])],
            vec![],
            vec![],
            vec![vi("o", DataType::FLOAT, &[D::N(2)])],
        )
    };
    let cond = TensorProto {
        int32_data: vec![0],
        ..tensor("c", DataType::BOOL, &[])
    };
    let g = graph(
        vec![node(
            "If",
            "if",
            &["c"],
            &["y"],
            vec![
                a_graph("then_branch", branch("Neg")),
                a_graph("else_branch", branch("Abs")),
            ],
        )],
        vec![cond],
        vec![vi("x", DataType::FLOAT, &[D::N(2)])],
        vec![vi("y", DataType::FLOAT, &[D::N(2)])],
    );
    let m = import(&model(g, 16)).expect("imports");
    let x = Tensor::f32(vec![2], vec![-1.5, 2.0]);
    assert_eq!(run(&m, &[x])[0].to_f64(), vec![1.5, 2.0]);
}

#[test]
fn loops_with_known_trip_counts_unroll() {
    // acc = x; repeat 3 times: acc = acc * 2 + i; scan output: acc after each step.
    let body = graph(
        vec![
            node("Mul", "dbl", &["acc_in", "two"], &["d"], vec![]),
            node(
                "Cast",
                "fi",
                &["i"],
                &["fi"],
                vec![a_int("to", DataType::FLOAT as i64)],
            ),
            node("Add", "add", &["d", "fi"], &["acc_out"], vec![]),
            node("Identity", "keep", &["c_in"], &["c_out"], vec![]),
            node("Identity", "scan", &["acc_out"], &["each"], vec![]),
        ],
        vec![TensorProto {
            float_data: vec![2.0],
            ..tensor("two", DataType::FLOAT, &[])
        }],
        vec![
            vi("i", DataType::INT64, &[]),
            vi("c_in", DataType::BOOL, &[]),
            vi("acc_in", DataType::FLOAT, &[D::N(2)]),
        ],
        vec![
            vi("c_out", DataType::BOOL, &[]),
            vi("acc_out", DataType::FLOAT, &[D::N(2)]),
            vi("each", DataType::FLOAT, &[D::N(2)]),
        ],
    );
    let g = |trips: Option<TensorProto>| {
        let mut inits = vec![TensorProto {
            int32_data: vec![1],
            ..tensor("c", DataType::BOOL, &[])
        }];
        inits.extend(trips);
        graph(
            vec![node(
                "Loop",
                "loop",
                &["m", "c", "x"],
                &["y", "ys"],
                vec![a_graph("body", body.clone())],
            )],
            inits,
            vec![vi("x", DataType::FLOAT, &[D::N(2)])],
            vec![
                vi("y", DataType::FLOAT, &[D::N(2)]),
                vi("ys", DataType::FLOAT, &[D::N(3), D::N(2)]),
            ],
        )
    };
    let m = import(&model(
        g(Some(TensorProto {
            int64_data: vec![3],
            ..tensor("m", DataType::INT64, &[])
        })),
        16,
    ))
    .expect("imports");
    let out = run(&m, &[Tensor::f32(vec![2], vec![1.0, -1.0])]);
    // 1 -> 2 -> 5 -> 12 and -1 -> -2 -> -3 -> -4.
    assert_eq!(out[0].to_f64(), vec![12.0, -4.0]);
    assert_eq!(out[1].to_f64(), vec![2.0, -2.0, 5.0, -3.0, 12.0, -4.0]);
    // A trip count known only at run time cannot be unrolled.
    let mut g2 = g(None);
    g2.input.push(vi("m", DataType::INT64, &[]));
    has(
        &err(&model(g2, 16)),
        &["node 0 `loop` (Loop", "trip count) must be known at import"],
    );
}

#[test]
fn bound_inputs_serve_as_constants_only_where_needed() {
    let g = graph(
        vec![node("Reshape", "r", &["x", "shape"], &["y"], vec![])],
        vec![],
        vec![
            vi("x", DataType::FLOAT, &[D::N(6)]),
            vi("shape", DataType::INT64, &[D::N(2)]),
        ],
        vec![vi("y", DataType::FLOAT, &[D::N(2), D::N(3)])],
    );
    let m = model(g, 14);
    let e = err(&m);
    has(
        &e,
        &[
            "node 0 `r` (Reshape, domain ai.onnx, opset 14)",
            "input 1 (shape, `shape`)",
            "must be known at import",
        ],
    );
    let shape = Tensor::from_i64(DType::I64, vec![2], vec![2, -1]);
    let opts = ImportOptions {
        bind_inputs: [("shape".to_string(), shape.clone())].into(),
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("m.onnx");
    std::fs::write(&p, bytes(&m)).expect("write");
    let module = onnx::load_with(&p, opts).expect("imports");
    assert_eq!(
        module.graph.inputs.len(),
        2,
        "a bound input stays a graph input"
    );
    let x = Tensor::f32(vec![6], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    assert_eq!(run(&module, &[x, shape])[0].shape, vec![2, 3]);
}

// ----- bad input -----

fn add_model() -> ModelProto {
    model(
        graph(
            vec![node("Add", "add", &["x", "x"], &["y"], vec![])],
            vec![],
            vec![vi("x", DataType::FLOAT, &[D::N(2)])],
            vec![vi("y", DataType::FLOAT, &[D::N(2)])],
        ),
        13,
    )
}

#[test]
fn truncated_or_corrupt_protobuf_is_a_format_error() {
    let b = bytes(&add_model());
    for cut in [b.len() / 2, b.len() - 1, 3] {
        let e = onnx::load_bytes(&b[..cut], "cut.onnx").expect_err("truncated");
        has(&e.to_string(), &["cut.onnx", "not a valid ONNX model"]);
    }
    let e = onnx::load_bytes(&[0xff, 0xff, 0xff, 0xff, 0x0f], "junk.onnx").expect_err("junk");
    has(&e.to_string(), &["junk.onnx", "protobuf decoding failed"]);
    let e = onnx::load_bytes(&[], "empty.onnx").expect_err("empty");
    has(&e.to_string(), &["empty.onnx", "empty"]);
}

#[test]
fn unknown_fields_from_newer_schemas_are_ignored() {
    let mut b = bytes(&add_model());
    // Field 99 (varint) and field 98 (length-delimited) are not in the IR v10 schema.
    b.extend([0x98, 0x06, 0x2a, 0x92, 0x06, 0x03, b'a', b'b', b'c']);
    let m = onnx::load_bytes(&b, "new.onnx").expect("imports");
    let x = Tensor::f32(vec![2], vec![1.0, -2.0]);
    assert_eq!(run(&m, &[x])[0].to_f64(), vec![2.0, -4.0]);
}

#[test]
fn unknown_op_names_the_node() {
    let mut m = add_model();
    if let Some(g) = m.graph.as_mut() {
        g.node
            .push(node("FancyOp", "fancy", &["y"], &["z"], vec![]));
    }
    has(
        &err(&m),
        &[
            "test.onnx",
            "node 1 `fancy` (FancyOp, domain ai.onnx, opset 13)",
            "unknown op `FancyOp`",
        ],
    );
}

#[test]
fn unknown_domain_names_the_node() {
    let mut m = add_model();
    m.opset_import.push(OperatorSetIdProto {
        domain: "com.example".into(),
        version: 1,
        ..Default::default()
    });
    if let Some(g) = m.graph.as_mut() {
        let mut n = node("Thing", "", &["y"], &["z"], vec![]);
        n.domain = "com.example".into();
        g.node.push(n);
    }
    has(
        &err(&m),
        &[
            "node 1 `` (Thing, domain com.example, opset 1)",
            "unknown domain `com.example`",
        ],
    );
    // A domain the model does not import at all.
    m.opset_import.pop();
    has(
        &err(&m),
        &[
            "node 1",
            "domain `com.example` is not imported by the model",
        ],
    );
}

#[test]
fn unsupported_opset_is_an_error() {
    let mut m = add_model();
    m.opset_import[0].version = 99;
    has(
        &err(&m),
        &[
            "test.onnx",
            "opset 99 of domain ai.onnx is not supported",
            "7 to 28",
        ],
    );
    m.opset_import[0].version = 5;
    has(&err(&m), &["opset 5 of domain ai.onnx is not supported"]);
}

#[test]
fn missing_external_data_file_names_the_tensor_and_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let w = TensorProto {
        data_location: EnumOrUnknown::new(DataLocation::EXTERNAL),
        external_data: vec![StringStringEntryProto {
            key: "location".into(),
            value: "missing.bin".into(),
            ..Default::default()
        }],
        ..tensor("w", DataType::FLOAT, &[2])
    };
    let mut m = add_model();
    if let Some(g) = m.graph.as_mut() {
        g.initializer.push(w);
    }
    let p = dir.path().join("m.onnx");
    std::fs::write(&p, bytes(&m)).expect("write");
    let e = onnx::load(&p).expect_err("missing file").to_string();
    has(&e, &["tensor `w`", "external data file", "missing.bin"]);
    // Escaping the model's folder is refused.
    if let Some(g) = m.graph.as_mut() {
        g.initializer[0].external_data[0].value = "../etc/passwd".into();
    }
    std::fs::write(&p, bytes(&m)).expect("write");
    has(
        &onnx::load(&p).expect_err("escape").to_string(),
        &["tensor `w`", "relative path inside the model's folder"],
    );
}

#[test]
fn initializer_byte_length_must_match_its_shape() {
    let mut m = add_model();
    if let Some(g) = m.graph.as_mut() {
        g.initializer.push(TensorProto {
            raw_data: vec![0; 10],
            ..tensor("w", DataType::FLOAT, &[2, 2])
        });
    }
    has(
        &err(&m),
        &["tensor `w`", "raw_data has 10 bytes, f32[2, 2] needs 16"],
    );
    if let Some(g) = m.graph.as_mut() {
        g.initializer[0] = TensorProto {
            float_data: vec![1.0; 3],
            ..tensor("w", DataType::FLOAT, &[2, 2])
        };
    }
    has(
        &err(&m),
        &["tensor `w`", "float_data has 3 elements", "needs 4"],
    );
    if let Some(g) = m.graph.as_mut() {
        g.initializer[0] = TensorProto {
            raw_data: vec![0; 4],
            ..tensor("w", DataType::FLOAT, &[-1, 1])
        };
    }
    has(&err(&m), &["tensor `w`", "negative dim -1"]);
    // A lying header: 2^40 elements claimed over one stored value is an error, not a
    // 4 TiB allocation (the test would abort if the loader sized by the dims).
    if let Some(g) = m.graph.as_mut() {
        g.initializer[0] = TensorProto {
            float_data: vec![1.0],
            ..tensor("w", DataType::FLOAT, &[1 << 20, 1 << 20])
        };
    }
    has(
        &err(&m),
        &[
            "tensor `w`",
            "float_data has 1 elements",
            "needs 1099511627776",
        ],
    );
    if let Some(g) = m.graph.as_mut() {
        g.initializer[0] = TensorProto {
            raw_data: vec![0; 4],
            ..tensor("w", DataType::FLOAT, &[1 << 40, 1 << 40])
        };
    }
    has(&err(&m), &["tensor `w`", "too many elements"]);
}

#[test]
fn operands_of_the_wrong_rank_are_errors_not_panics() {
    // Found by the fuzzer (fuzz/fuzz_targets/onnx_loader.rs): a 4-D Q with a 3-D K
    // indexed past K's dims.
    let g = graph(
        vec![node("Attention", "attn", &["q", "k", "v"], &["y"], vec![])],
        vec![],
        vec![
            vi("q", DataType::FLOAT, &[D::N(1), D::N(2), D::N(3), D::N(4)]),
            vi("k", DataType::FLOAT, &[D::N(1), D::N(3), D::N(8)]),
            vi("v", DataType::FLOAT, &[D::N(1), D::N(3), D::N(8)]),
        ],
        vec![vi(
            "y",
            DataType::FLOAT,
            &[D::N(1), D::N(2), D::N(3), D::N(4)],
        )],
    );
    has(
        &err(&model(g, 23)),
        &[
            "node 0 `attn` (Attention, domain ai.onnx, opset 23)",
            "K must be [batch, heads, seq, head_size], got f32[1, 3, 8]",
        ],
    );
}

#[test]
fn non_constant_operand_names_the_node_and_input() {
    let g = graph(
        vec![
            node("Relu", "relu", &["x"], &["r"], vec![]),
            node("ReduceSum", "sum", &["r", "axes"], &["y"], vec![]),
        ],
        vec![],
        vec![
            vi("x", DataType::FLOAT, &[D::N(2)]),
            vi("axes", DataType::INT64, &[D::N(1)]),
        ],
        vec![vi("y", DataType::FLOAT, &[D::N(1)])],
    );
    has(
        &err(&model(g, 13)),
        &[
            "node 1 `sum` (ReduceSum, domain ai.onnx, opset 13)",
            "input 1 (axes, `axes`) must be a constant at import",
        ],
    );
}

#[test]
fn unsupported_element_types_name_the_value() {
    let g = graph(
        vec![node("Identity", "id", &["x"], &["y"], vec![])],
        vec![],
        vec![vi("x", DataType::STRING, &[D::N(2)])],
        vec![vi("y", DataType::STRING, &[D::N(2)])],
    );
    has(
        &err(&model(g, 13)),
        &["graph input `x`", "element type STRING is not supported"],
    );
    let bad_shape = graph(
        vec![node("Add", "add", &["x", "x"], &["y"], vec![])],
        vec![],
        vec![vi("x", DataType::FLOAT, &[D::N(2)])],
        vec![vi("y", DataType::FLOAT, &[D::N(2)])],
    );
    let mut m = model(bad_shape, 13);
    if let Some(g) = m.graph.as_mut() {
        g.node[0].input[1] = "nowhere".into();
    }
    has(
        &err(&m),
        &["node 0 `add` (Add", "input 1 `nowhere` is not defined"],
    );
}

#[test]
fn declared_types_are_checked_against_the_import() {
    // value_info says the intermediate is [2, 5]; MatMul of [2, 3] x [3, 4] gives [2, 4].
    let mut g = graph(
        vec![
            node("MatMul", "mm", &["a", "b"], &["h"], vec![]),
            node("Relu", "relu", &["h"], &["y"], vec![]),
        ],
        vec![],
        vec![
            vi("a", DataType::FLOAT, &[D::N(2), D::N(3)]),
            vi("b", DataType::FLOAT, &[D::N(3), D::N(4)]),
        ],
        vec![vi("y", DataType::FLOAT, &[D::N(2), D::N(4)])],
    );
    g.value_info
        .push(vi("h", DataType::FLOAT, &[D::N(2), D::P("n")]));
    assert!(
        import(&model(g.clone(), 13)).is_ok(),
        "symbolic declared dims match anything"
    );
    g.value_info[0] = vi("h", DataType::FLOAT, &[D::N(2), D::N(5)]);
    has(
        &err(&model(g.clone(), 13)),
        &[
            "node 0 `mm` (MatMul",
            "output `h` is f32[2, 4] here, but the model declares dim 1 = 5",
        ],
    );
    g.value_info[0] = vi("h", DataType::DOUBLE, &[D::N(2), D::N(4)]);
    has(
        &err(&model(g, 13)),
        &["node 0 `mm`", "declares element type f64"],
    );
}

#[test]
fn shape_rule_violations_name_the_node() {
    let g = graph(
        vec![node("MatMul", "mm", &["a", "b"], &["y"], vec![])],
        vec![],
        vec![
            vi("a", DataType::FLOAT, &[D::N(2), D::N(3)]),
            vi("b", DataType::FLOAT, &[D::N(4), D::N(5)]),
        ],
        vec![vi("y", DataType::FLOAT, &[D::N(2), D::N(5)])],
    );
    has(
        &err(&model(g, 13)),
        &["node 0 `mm` (MatMul, domain ai.onnx, opset 13)", "matmul"],
    );
}

// ----- decoder exports -----

/// A one-layer decoder laid out as Optimum's with-past exports: x = E[ids] + P[pos],
/// scaled by float(max(mask)) (all ones); K = V = x per head; present = concat(past, new) on
/// axis 2; softmax(x·Kᵀ)·V; logits = h · W.
fn tiny_decoder_export() -> ModelProto {
    let f = |name: &str, dims: &[i64], v: Vec<f32>| TensorProto {
        float_data: v,
        ..tensor(name, DataType::FLOAT, dims)
    };
    let vals = |n: usize, k: f32| (0..n).map(|i| (i as f32 * k).sin() * 0.7).collect();
    let nodes = vec![
        node("Gather", "embed", &["E", "input_ids"], &["xe"], vec![]),
        node(
            "Gather",
            "pos_embed",
            &["P", "position_ids"],
            &["xp"],
            vec![],
        ),
        node("Add", "x0", &["xe", "xp"], &["x0"], vec![]),
        // The integer mask read at run time (the lowering's ones must be i64 data).
        node(
            "ReduceMax",
            "maskmax",
            &["attention_mask"],
            &["mi"],
            vec![a_ints("axes", &[1]), a_int("keepdims", 1)],
        ),
        node(
            "Cast",
            "maskf",
            &["mi"],
            &["mm"],
            vec![a_int("to", DataType::FLOAT as i64)],
        ),
        node("Unsqueeze", "mm3", &["mm", "axes2"], &["mm3"], vec![]),
        node("Mul", "x", &["x0", "mm3"], &["x"], vec![]),
        node("Unsqueeze", "heads", &["x", "axes1"], &["xh"], vec![]),
        node(
            "Concat",
            "kcat",
            &["past_key_values.0.key", "xh"],
            &["present.0.key"],
            vec![a_int("axis", -2)],
        ),
        node(
            "Concat",
            "vcat",
            &["past_key_values.0.value", "xh"],
            &["present.0.value"],
            vec![a_int("axis", 2)],
        ),
        node(
            "Transpose",
            "kt",
            &["present.0.key"],
            &["kt"],
            vec![a_ints("perm", &[0, 1, 3, 2])],
        ),
        node("MatMul", "scores", &["xh", "kt"], &["s"], vec![]),
        node("Softmax", "probs", &["s"], &["p"], vec![a_int("axis", -1)]),
        node("MatMul", "attn", &["p", "present.0.value"], &["a"], vec![]),
        node("Squeeze", "merge", &["a", "axes1"], &["h"], vec![]),
        node("MatMul", "head", &["h", "W"], &["logits"], vec![]),
    ];
    let g = graph(
        nodes,
        vec![
            f("E", &[6, 4], vals(24, 0.37)),
            f("P", &[8, 4], vals(32, 0.91)),
            f("W", &[4, 6], vals(24, 1.3)),
            i64s("axes1", &[1]),
            i64s("axes2", &[2]),
        ],
        vec![
            vi(
                "input_ids",
                DataType::INT64,
                &[D::P("batch_size"), D::P("sequence_length")],
            ),
            vi(
                "attention_mask",
                DataType::INT64,
                &[
                    D::P("batch_size"),
                    D::P("past_sequence_length + sequence_length"),
                ],
            ),
            vi(
                "position_ids",
                DataType::INT64,
                &[D::P("batch_size"), D::P("sequence_length")],
            ),
            vi(
                "past_key_values.0.key",
                DataType::FLOAT,
                &[
                    D::P("batch_size"),
                    D::N(1),
                    D::P("past_sequence_length"),
                    D::N(4),
                ],
            ),
            vi(
                "past_key_values.0.value",
                DataType::FLOAT,
                &[
                    D::P("batch_size"),
                    D::N(1),
                    D::P("past_sequence_length"),
                    D::N(4),
                ],
            ),
        ],
        vec![
            vi(
                "logits",
                DataType::FLOAT,
                &[D::P("batch_size"), D::P("sequence_length"), D::N(6)],
            ),
            vi(
                "present.0.key",
                DataType::FLOAT,
                &[D::Unnamed, D::Unnamed, D::Unnamed, D::Unnamed],
            ),
            vi(
                "present.0.value",
                DataType::FLOAT,
                &[D::Unnamed, D::Unnamed, D::Unnamed, D::Unnamed],
            ),
        ],
    );
    model(g, 17)
}

#[test]
fn decoder_export_becomes_the_decoder_contract_with_a_kv_append() {
    decoder_export_lowers(tiny_decoder_export());
}

#[test]
fn one_operand_concats_of_the_past_are_the_past() {
    // transformers 5's cache starts from cat([past]) before cat([past, new]).
    let mut m = tiny_decoder_export();
    let g = m.graph.as_mut().unwrap();
    g.node.insert(
        0,
        node(
            "Concat",
            "start",
            &["past_key_values.0.key"],
            &["pk"],
            vec![a_int("axis", -2)],
        ),
    );
    for n in g.node.iter_mut() {
        if n.name == "kcat" {
            n.input[0] = "pk".into();
        }
    }
    decoder_export_lowers(m);
}

fn decoder_export_lowers(export: ModelProto) {
    use llmc_frontend::onnx::decoder;
    let m = import(&export).expect("imports");
    let io = decoder::recognise(&m).expect("a decoder export");
    assert_eq!(
        (io.ids, io.mask, io.pos, io.past.len()),
        (0, Some(1), Some(2), 1)
    );
    let d = decoder::lower(&m, &io).expect("lowers");
    llmc_ir::verify::verify(&d).expect("valid");
    let g = &d.graph;
    let names: Vec<String> = g.inputs.iter().map(|&v| g.value(v).name.clone()).collect();
    assert_eq!(names, ["ids", "pos"]);
    assert_eq!(g.outputs.len(), 1);
    assert_eq!(g.ty(g.outputs[0]).to_string(), "f32[batch, 6]");
    let appends = g.nodes.iter().filter(|n| n.op == Op::KvAppend).count();
    assert_eq!(appends, 1);
    assert!(!g.nodes.iter().any(|n| n.op == Op::Concat));
    // The head's matmul by W [4, 6] is a linear over W transposed.
    let lin = g
        .nodes
        .iter()
        .find(|n| n.op == Op::Linear)
        .expect("a linear");
    assert_eq!(g.ty(lin.inputs[1]).to_string(), "f32[6, 4]");
    assert!(!g
        .nodes
        .iter()
        .any(|n| n.op == Op::MatMul
            && matches!(g.value(n.inputs[1]).def, llmc_ir::ValueDef::Weight(_))));

    // The export run as ONNX runs it (cache in, presents out) and the lowered graph
    // (cache inside) agree on a 3-token prompt and then one decode step.
    let ids = |v: &[i64]| Tensor::from_i64(DType::I64, vec![1, v.len()], v.to_vec());
    let ones = |n: usize| Tensor::from_i64(DType::I64, vec![1, n], vec![1; n]);
    let empty = Tensor::f32(vec![1, 1, 0, 4], vec![]);
    let pre = run(
        &m,
        &[
            ids(&[1, 4, 2]),
            ones(3),
            ids(&[0, 1, 2]),
            empty.clone(),
            empty,
        ],
    );
    let step = run(
        &m,
        &[
            ids(&[5]),
            ones(4),
            ids(&[3]),
            pre[1].clone(),
            pre[2].clone(),
        ],
    );
    let mut it = Interpreter::new(&d);
    let a = it.run(&[ids(&[1, 4, 2]), ids(&[0, 1, 2])]).expect("prompt");
    let b = it.run(&[ids(&[5]), ids(&[3])]).expect("step");
    let last = pre[0].to_f64()[12..18].to_vec();
    for (x, y) in a[0].to_f64().iter().zip(&last) {
        assert!(
            (x - y).abs() < 1e-6,
            "prompt logits {:?} vs {last:?}",
            a[0].to_f64()
        );
    }
    for (x, y) in b[0].to_f64().iter().zip(step[0].to_f64()) {
        assert!(
            (x - y).abs() < 1e-6,
            "step logits {:?} vs {:?}",
            b[0].to_f64(),
            step[0].to_f64()
        );
    }
}

#[test]
fn graphs_that_are_not_decoder_exports_are_left_alone_or_named() {
    use llmc_frontend::onnx::decoder;
    // No cache inputs: not a decoder export (a plain graph).
    let mut g = tiny_decoder_export().graph.unwrap();
    let plain = graph(
        vec![node("MatMul", "head", &["x", "W"], &["logits"], vec![])],
        g.initializer.clone(),
        vec![vi("input_ids", DataType::FLOAT, &[D::N(1), D::N(4)])]
            .into_iter()
            .map(|mut v| {
                v.name = "x".into();
                v
            })
            .collect(),
        vec![vi("logits", DataType::FLOAT, &[D::N(1), D::N(6)])],
    );
    let m = import(&model(plain, 17)).expect("imports");
    assert!(decoder::recognise(&m).is_none());
    // The past key read by something else than the concatenation: an error naming it.
    g.node.push(node(
        "ReduceSum",
        "peek",
        &["past_key_values.0.key"],
        &["peek"],
        vec![a_int("keepdims", 0)],
    ));
    g.output.push(vi("peek", DataType::FLOAT, &[]));
    let m = import(&model(g, 17)).expect("imports");
    let io = decoder::recognise(&m).expect("a decoder export");
    let e = decoder::lower(&m, &io).unwrap_err();
    assert!(e.contains("reads past_key_values.0.key"), "{e}");
}

/// The tiny decoder exported without a cache: K = V = the current sequence's x, the
/// mask as long as the sequence, `logits` the only output.
fn tiny_no_past_export() -> ModelProto {
    let mut m = tiny_decoder_export();
    let g = m.graph.as_mut().unwrap();
    g.node.retain(|n| n.op_type != "Concat");
    for n in g.node.iter_mut() {
        for i in n.input.iter_mut() {
            if i.starts_with("present.0.") {
                *i = "xh".into();
            }
        }
    }
    g.input.retain(|i| !i.name.starts_with("past_key_values."));
    g.output.retain(|o| o.name == "logits");
    for i in g.input.iter_mut() {
        if i.name == "attention_mask" {
            *i = vi(
                "attention_mask",
                DataType::INT64,
                &[D::P("batch_size"), D::P("sequence_length")],
            );
        }
    }
    m
}

#[test]
fn decoder_export_without_past_becomes_the_decoder_contract_without_a_cache() {
    use llmc_frontend::onnx::decoder;
    let m = import(&tiny_no_past_export()).expect("imports");
    let io = decoder::recognise(&m).expect("a decoder export without past");
    assert_eq!(
        (io.ids, io.mask, io.pos, io.past.len()),
        (0, Some(1), Some(2), 0)
    );
    let d = decoder::lower(&m, &io).expect("lowers");
    llmc_ir::verify::verify(&d).expect("valid");
    let g = &d.graph;
    let names: Vec<String> = g.inputs.iter().map(|&v| g.value(v).name.clone()).collect();
    assert_eq!(names, ["ids", "pos"]);
    assert_eq!(g.ty(g.outputs[0]).to_string(), "f32[batch, 6]");
    // No cache yet (the driver derives it after -O3 fused the attention), and no
    // symbol of the past: the keys are the sequence's.
    assert!(!g.nodes.iter().any(|n| n.op == Op::KvAppend));
    let text = llmc_ir::text::print(&d);
    assert!(!text.contains("past"), "{text}");
    // The lowered graph gives the export's last-position logits.
    let ids = |v: &[i64]| Tensor::from_i64(DType::I64, vec![1, v.len()], v.to_vec());
    let ones = |n: usize| Tensor::from_i64(DType::I64, vec![1, n], vec![1; n]);
    let full = run(&m, &[ids(&[1, 4, 2, 5]), ones(4), ids(&[0, 1, 2, 3])]);
    let mut it = Interpreter::new(&d);
    let a = it
        .run(&[ids(&[1, 4, 2, 5]), ids(&[0, 1, 2, 3])])
        .expect("runs");
    let last = full[0].to_f64()[18..24].to_vec();
    for (x, y) in a[0].to_f64().iter().zip(&last) {
        assert!(
            (x - y).abs() < 1e-6,
            "logits {:?} vs {last:?}",
            a[0].to_f64()
        );
    }
}
