//! Unit tests of the text format: canonical samples, literals, dims, error positions,
//! and inputs that must fail cleanly.

use super::*;
use crate::module::attrs;
use crate::{Attr, DType, Dim, Module, Op, Shape, Tensor, TensorType, WeightData};

/// A canonical module using only ops whose shape rules exist in every build.
const SAMPLE: &str = r#"module @demo {
  info {
    architecture = "llama"
    context_length = 8192
    tokenizer = gguf("/m/x.gguf")
    bos_token = 1
    eos_tokens = [2, 3]
    chat_template = "{% for m in messages %}\n\"q\" é \u{1}\\"
    extra.rope_theta = "100000"
    extra."weird key" = "v"
  }
  weight @w : f32[4]
  weight @q : q4_1[2, 32]
  graph @main(%x: f32[batch, 4], %"a b": f32[4], %n: i64[past + seq - 1]) -> (%y: f16[batch, 4], @w: f32[4]) {
    %0 = add(%x, @w) : f32[batch, 4]
    %1 = clip(%0) {max = 6.0, min = -inf} : f32[batch, 4]
    %y = cast(%1) {to = f16} : f16[batch, 4]
    %3 = gelu(%"a b") {approximate = "tanh"} : f32[4]
    return %y, @w
  }
}
"#;

fn err(src: &str) -> ParseError {
    match parse(src, "t.llmc") {
        Ok(m) => panic!("expected an error, parsed:\n{}", print(&m)),
        Err(e) => e,
    }
}

#[test]
fn sample_is_canonical() {
    let m = parse(SAMPLE, "sample").unwrap();
    assert_eq!(print(&m), SAMPLE);
    assert_eq!(m.info.extra.get("weird key").map(String::as_str), Some("v"));
    assert_eq!(
        m.info.chat_template.as_deref(),
        Some("{% for m in messages %}\n\"q\" é \u{1}\\")
    );
    assert_eq!(m.graph.inputs.len(), 3);
    assert_eq!(m.graph.value(m.graph.inputs[1]).name, "a b");
    // Weights are numbered first, then inputs, then results.
    assert_eq!(m.weight_value(crate::WeightId(1)), Some(crate::ValueId(1)));
    assert_eq!(m.graph.inputs[0], crate::ValueId(2));
    assert_eq!(
        m.graph.value(m.graph.inputs[2]).ty.shape.0[0],
        Dim::sym("past").add(&Dim::sym("seq")).sub(&Dim::c(1))
    );
    assert_eq!(parse_unchecked(SAMPLE, "sample").unwrap(), m);
    assert_eq!(crate::verify::verify(&m), Ok(()));
}

#[test]
fn programmatic_modules_print_and_parse_back() {
    let mut m = Module::new("p");
    let w = m.add_weight("norm.weight", DType::F32, Shape::of(&[8]), WeightData::None);
    let x = m.graph.add_input(
        "x",
        TensorType::new(DType::F32, Shape(vec![Dim::sym("seq"), Dim::c(8)])),
    );
    let a = m.add1(Op::Mul, &[x, w], attrs([])).unwrap();
    let b = m.add1(Op::Neg, &[a], attrs([])).unwrap();
    m.graph.outputs.push(b);
    let text = print(&m);
    assert_eq!(
        text,
        "module @p {\n  weight @norm.weight : f32[8]\n  graph @main(%x: f32[seq, 8]) -> (%3: f32[seq, 8]) {\n    %2 = mul(%x, @norm.weight) : f32[seq, 8]\n    %3 = neg(%2) : f32[seq, 8]\n    return %3\n  }\n}\n"
    );
    assert_eq!(parse(&text, "p").unwrap(), m);
}

#[test]
fn duplicate_names_are_made_unique() {
    let mut m = Module::new("d");
    let ty = TensorType::new(DType::F32, Shape::of(&[2]));
    let x = m.graph.add_input("2", ty.clone());
    let y = m.graph.add_input("2.1", ty);
    let a = m.add1(Op::Add, &[x, y], attrs([])).unwrap(); // value 2, named "2"
    m.graph.outputs.push(a);
    let text = print(&m);
    assert!(text.contains("%2.2 = add(%2, %2.1)"), "{text}");
    let back = parse(&text, "d").unwrap();
    assert_eq!(print(&back), text);
}

#[test]
fn dims_parse_as_polynomials() {
    let shape = |s: &str| {
        let src =
            format!("module @m {{\n  graph @main(%x: f32[{s}]) -> () {{\n    return\n  }}\n}}\n");
        parse_unchecked(&src, "d").map(|m| m.graph.value(m.graph.inputs[0]).ty.shape.clone())
    };
    let (b, s, p) = (Dim::sym("batch"), Dim::sym("seq"), Dim::sym("past"));
    assert_eq!(shape("past + seq").unwrap().0, vec![p.add(&s)]);
    assert_eq!(
        shape("576*batch*seq").unwrap().0,
        vec![b.mul(&s).mul(&Dim::c(576))]
    );
    assert_eq!(
        shape("seq*576*batch").unwrap().to_string(),
        "[576*batch*seq]"
    );
    assert_eq!(shape("seq - 1").unwrap().0, vec![s.sub(&Dim::c(1))]);
    assert_eq!(shape("-1, 0").unwrap().0, vec![Dim::c(-1), Dim::c(0)]);
    assert_eq!(shape("seq - seq").unwrap().0, vec![Dim::c(0)]);
    assert_eq!(
        shape("2*batch*batch + 3 - batch").unwrap().to_string(),
        "[-batch + 2*batch*batch + 3]"
    );
    assert_eq!(
        shape("-9223372036854775808").unwrap().0,
        vec![Dim::c(i64::MIN)]
    );
    // A value's constant dims are not negative (checked mode).
    let neg = "module @m {\n  graph @main(%x: f32[-1]) -> () {\n    return\n  }\n}\n";
    assert!(parse(neg, "d").unwrap_err().msg.contains("negative dim"));
    for bad in [
        "9223372036854775807*2",
        "9223372036854775808",
        "99999999999999999999999999999999999999999999",
        "-9223372036854775808 - 1",
        "1.5",
        "seq +",
        "f32",
        "a.b",
        "*",
    ] {
        assert!(shape(bad).is_err(), "{bad} should not parse");
    }
}

#[test]
fn attribute_literals_take_the_op_tables_kind() {
    let m = parse(
        "module @m {\n  graph @main(%x: f32[2]) -> () {\n    %0 = clip(%x) {max = 1, min = -0.0} : f32[2]\n    return\n  }\n}\n",
        "a",
    )
    .unwrap();
    let a = &m.graph.nodes[0].attrs;
    assert_eq!(a.get("max"), Some(&Attr::Float(1.0)));
    assert!(matches!(a.get("min"), Some(Attr::Float(v)) if v.to_bits() == (-0.0f64).to_bits()));
    // Canonical form writes the integer as a float.
    assert!(print(&m).contains("{max = 1.0, min = -0.0}"));
}

#[test]
fn tensor_literals() {
    let t = parse_tensor("dense<f32[2, 2]: [1.0, -0.0, inf, nan]>", "t").unwrap();
    assert_eq!(t.shape, vec![2, 2]);
    assert_eq!(print_tensor(&t), "dense<f32[2, 2]: [1.0, -0.0, inf, nan]>");
    let t = parse_tensor("dense<f32[1]: [0.1]>", "t").unwrap();
    assert_eq!(t.to_f64()[0], 0.1f32 as f64);
    assert_eq!(print_tensor(&t), "dense<f32[1]: [0.1]>");
    let t = parse_tensor("dense<f64[1]: [0.1]>", "t").unwrap();
    assert_eq!(t.to_f64()[0], 0.1);
    let t = parse_tensor("dense<f16[2]: [0.1, 65504]>", "t").unwrap();
    assert_eq!(print_tensor(&t), "dense<f16[2]: [0.099975586, 65504.0]>");
    let t = parse_tensor("dense<bool[3]: [1, 0, 1]>", "t").unwrap();
    assert_eq!(t.to_i64(), vec![1, 0, 1]);
    let t = parse_tensor("dense<i64[]: [-9223372036854775808]>", "t").unwrap();
    assert_eq!(t, Tensor::from_i64(DType::I64, vec![], vec![i64::MIN]));
    assert_eq!(
        parse_tensor("dense<f32[0, 3]: []>", "t").unwrap().numel(),
        0
    );
    for (bad, msg) in [
        ("dense<f32[2]: [1.0]>", "needs 2 value(s), got 1"),
        ("dense<f32[1]: [1.0, 2.0]>", "too many values"),
        ("dense<i8[1]: [300]>", "300 is out of range for i8"),
        ("dense<bool[1]: [2]>", "2 is out of range for bool"),
        ("dense<i32[1]: [1.5]>", "holds integers"),
        ("dense<f16[1]: [1e10]>", "overflows f16"),
        ("dense<f32[1]: [1e999]>", "out of range"),
        ("dense<q4_0[32]: []>", "block format"),
        ("dense<f32[n]: []>", "constant dims"),
        ("dense<f32[-1]: []>", "constant dims"),
        (
            "dense<f32[4294967296, 4294967296, 4294967296]: []>",
            "too large",
        ),
        ("dense<f32[1]: [1.0]> x", "expected end of input"),
    ] {
        let e = parse_tensor(bad, "t").unwrap_err();
        assert!(e.msg.contains(msg), "{bad}: {e}");
    }
}

#[test]
fn errors_name_the_position() {
    let cases: &[(&str, u32, u32, &str)] = &[
        ("", 1, 1, "expected `module`, found end of file"),
        ("module @m {\n  graph @main() -> () {\n    %0 = frob() : f32[]\n", 3, 10, "unknown op `frob`"),
        ("module @m {\n  weight @w : f33[2]\n", 2, 15, "unknown dtype `f33`"),
        ("module @m {\n  graph @main(%x: f32[2]) -> () {\n    %0 = abs(%y) : f32[2]\n", 3, 14, "undefined value %y"),
        ("module @m {\n  graph @main(%x: f32[2], %x: f32[2])", 2, 27, "value %x is already defined at 2:15"),
        ("module @m {\n  graph @main(%x: f32[2]) -> () {\n    %0 = abs(%x, %x) : f32[2]\n", 3, 10, "`abs` takes 1 operand(s), got 2"),
        ("module @m {\n  graph @main(%x: f32[2]) -> () {\n    %0 = abs(%x) : f32[3]\n", 3, 20, "result %0 is written f32[3], but `abs` gives f32[2]"),
        ("module @m {\n  graph @main(%x: f32[2]) -> () {\n    %0 = cast(%x) {to = 3} : f32[2]\n", 3, 25, "attribute `to` of `cast` is a dtype, found an integer"),
        ("module @m {\n  graph @main(%x: f32[2]) -> () {\n    %0 = cast(%x) : f32[2]\n", 3, 10, "missing attribute `to`"),
        ("module @m {\n  graph @main(%x: f32[2]) -> () {\n    %0 = abs(%x) {k = 1} : f32[2]\n", 3, 19, "`abs` has no attribute `k`"),
        ("module @m {\n  info {\n    architecture = \"ab\n", 3, 20, "unterminated string"),
        ("module @m {\n  graph @main() -> () {\n    return\n  }\n", 5, 1, "expected `}`, found end of file"),
        ("module @m {\n  graph @main() -> () {\n    return\n  }\n}\n}", 6, 1, "expected end of file"),
        ("module @m {\n  graph @main(%x: f32[2]) -> (%x: f32[3]) {\n    return %x\n  }\n}\n", 2, 35, "the signature says f32[3], the value is f32[2]"),
        ("module @m {\n  graph @main(%x: f32[2]) -> (%x: f32[2]) {\n    return\n  }\n}\n", 3, 5, "`return` gives 0 value(s)"),
        ("module @m {\n  weight @w : f32[n]\n", 2, 15, "constant shape"),
        ("module @m {\n  info {\n    bos_token = 99999999999999999999\n", 3, 17, "out of range"),
        ("module @m {\n  info {\n    colour = \"red\"\n", 3, 5, "unknown info field `colour`"),
        ("module @m {\n  info {\n    bos_token = 1\n    bos_token = 2\n", 4, 5, "given twice"),
        ("module @m {\n  graph @main(%x: f32[2]) -> () {\n    %0 = add(%x, @nope) : f32[2]\n", 3, 18, "undefined weight @nope"),
        ("module @m {\n  graph @main(%x: f32[2]) -> () {\n    %x = abs(%x) : f32[2]\n", 3, 5, "value %x is already defined at 2:15"),
        ("module @m {\n  graph @main(%x: f32[2]) -> () {\n    %0 = abs(%x) : f32[2], f32[2]\n", 3, 10, "1 result(s) named but 2 type(s) written"),
        ("module @m {\n  graph @main(%x: f32[2], %y: f16[2]) -> () {\n    %0 = add(%x, %y) : f32[2]\n", 3, 10, "%0 = add: operand dtypes differ"),
        ("module @m {\n  graph @main(%x: f32[2]) -> () {\n    %0 = abs(%x) : f32[2] \u{7}", 3, 27, "unexpected character `\\u{7}`"),
    ];
    for &(src, line, col, msg) in cases {
        let e = err(src);
        assert!(
            e.line == line && e.col == col && e.msg.contains(msg),
            "{src:?}\n got {e}\nwant {line}:{col}: ...{msg}..."
        );
        assert!(e.to_string().starts_with(&format!("t.llmc:{line}:{col}: ")));
    }
}

#[test]
fn invalid_utf8_is_reported_where_it_is() {
    let mut bytes = b"module @m {\n  graph @main\xff".to_vec();
    let e = parse_bytes(&bytes, "b.llmc").unwrap_err();
    assert_eq!((e.line, e.col), (2, 14), "{e}");
    assert!(e.msg.contains("invalid UTF-8 (byte 0xff)"), "{e}");
    bytes.truncate(12);
    assert!(parse_bytes(&bytes, "b.llmc").is_err());
}

#[test]
fn unchecked_mode_keeps_what_the_verifier_must_reject() {
    let src = "module @m {\n  graph @main(%x: f32[2]) -> (%1: f16[2]) {\n    %0 = abs(%1, %x) {k = 1, to = 3} : f16[2]\n    %1 = cast(%0) : f16[2]\n    return %1\n  }\n}\n";
    assert!(parse(src, "u").is_err());
    let m = parse_unchecked(src, "u").unwrap();
    assert_eq!(print(&m), src);
    let e = crate::verify::verify(&m).unwrap_err().to_string();
    for want in [
        "%0 = abs: operand 0 (%1) is used before it is defined",
        "%0 = abs: takes 1 operand(s), got 2",
        "%0 = abs: unknown attribute `k`",
        "%1 = cast: missing attribute `to` (a dtype)",
    ] {
        assert!(e.contains(want), "missing {want:?} in\n{e}");
    }
    // Forward references still have to be defined somewhere.
    let bad = src.replace("%0 = abs", "%9 = abs");
    assert!(parse_unchecked(&bad, "u").is_err());
}

#[test]
fn no_prefix_of_a_module_panics() {
    for (i, _) in SAMPLE.char_indices() {
        let prefix = &SAMPLE[..i];
        if SAMPLE[i..].trim().is_empty() {
            continue;
        }
        assert!(parse(prefix, "p").is_err(), "prefix of {i} chars parsed");
        assert!(parse_unchecked(prefix, "p").is_err());
    }
}
