//! The GGUF reader on hand-built files: every value type, alignment, dims order, and
//! each kind of broken file giving a message that names what is wrong.

mod common;

use common::{ggml, ty, GgufWriter};
use llmc_frontend::gguf::reader::{GgufHeader, MetaValue, ValueType};
use llmc_ir::{DType, Shape};

fn parse(w: &GgufWriter) -> Result<GgufHeader, String> {
    GgufHeader::parse(&w.finish(), "test.gguf").map_err(|e| e.to_string())
}

fn err_of(bytes: &[u8]) -> String {
    match GgufHeader::parse(bytes, "test.gguf") {
        Ok(_) => panic!("parsed a broken file"),
        Err(e) => e.to_string(),
    }
}

fn assert_has(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "message {msg:?} lacks {p:?}");
    }
}

/// A small valid file: every scalar type, string and nested arrays, two tensors.
fn sample() -> GgufWriter {
    let mut w = GgufWriter::default();
    w.kv_raw("t.u8", ty::U8, &[200])
        .kv_raw("t.i8", ty::I8, &[0xFE])
        .kv_raw("t.u16", ty::U16, &60000u16.to_le_bytes())
        .kv_raw("t.i16", ty::I16, &(-300i16).to_le_bytes())
        .kv_u32("t.u32", 4_000_000_000)
        .kv_raw("t.i32", ty::I32, &(-5i32).to_le_bytes())
        .kv_f32("t.f32", 1.5)
        .kv_bool("t.bool", true)
        .kv_str("t.str", "héllo")
        .kv_u64("t.u64", u64::MAX)
        .kv_raw("t.i64", ty::I64, &i64::MIN.to_le_bytes())
        .kv_raw("t.f64", ty::F64, &0.25f64.to_le_bytes())
        .kv_str_array("t.strs", &["a", "", "ccc"])
        .kv_i32_array("t.ints", &[1, -2, 3]);
    // Array of two arrays of u16: [[1, 2], [3]].
    let mut nested = ty::ARRAY.to_le_bytes().to_vec();
    nested.extend(2u64.to_le_bytes());
    for inner in [&[1u16, 2][..], &[3u16][..]] {
        nested.extend(ty::U16.to_le_bytes());
        nested.extend((inner.len() as u64).to_le_bytes());
        for v in inner {
            nested.extend(v.to_le_bytes());
        }
    }
    w.kv_raw("t.nested", ty::ARRAY, &nested);
    w.tensor_f32("a", &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    // A q4_1 matrix [2 rows, 32 cols]: ne = [32, 2], 2 blocks of 20 bytes.
    w.tensor("b", &[32, 2], ggml::Q4_1, vec![7u8; 40]);
    w
}

#[test]
fn parses_every_value_type_and_tensor() {
    let bytes = sample().finish();
    let h = GgufHeader::parse(&bytes, "test.gguf").unwrap();
    assert_eq!(h.version, 3);
    assert_eq!(h.get("t.u8"), Some(&MetaValue::U8(200)));
    assert_eq!(h.get("t.i8"), Some(&MetaValue::I8(-2)));
    assert_eq!(h.get("t.u16"), Some(&MetaValue::U16(60000)));
    assert_eq!(h.get("t.i16"), Some(&MetaValue::I16(-300)));
    assert_eq!(h.get("t.u32"), Some(&MetaValue::U32(4_000_000_000)));
    assert_eq!(h.get("t.i32"), Some(&MetaValue::I32(-5)));
    assert_eq!(h.get("t.f32"), Some(&MetaValue::F32(1.5)));
    assert_eq!(h.get("t.bool"), Some(&MetaValue::Bool(true)));
    assert_eq!(h.get("t.str"), Some(&MetaValue::Str("héllo".into())));
    assert_eq!(h.get("t.u64"), Some(&MetaValue::U64(u64::MAX)));
    assert_eq!(h.get("t.i64"), Some(&MetaValue::I64(i64::MIN)));
    assert_eq!(h.get("t.f64"), Some(&MetaValue::F64(0.25)));
    assert_eq!(
        h.opt_str_array("t.strs").unwrap(),
        Some(vec!["a".to_string(), String::new(), "ccc".to_string()])
    );
    assert_eq!(h.opt_int_array("t.ints").unwrap(), Some(vec![1, -2, 3]));
    assert_eq!(
        h.get("t.nested"),
        Some(&MetaValue::Array(
            ValueType::Array,
            vec![
                MetaValue::Array(ValueType::U16, vec![MetaValue::U16(1), MetaValue::U16(2)]),
                MetaValue::Array(ValueType::U16, vec![MetaValue::U16(3)]),
            ]
        ))
    );
    assert_eq!(h.req_count("t.u32").unwrap(), 4_000_000_000);
    assert_eq!(h.opt_f64("t.f32").unwrap(), Some(1.5));
    assert_eq!(
        MetaValue::F32(1e-5).as_f64(),
        Some(1e-5),
        "shortest decimal of the f32"
    );
    assert_eq!(MetaValue::F32(f32::INFINITY).as_f64(), Some(f64::INFINITY));
    let e = h.req_count("t.i32").unwrap_err().to_string();
    assert_has(&e, &["test.gguf", "`t.i32`", "-5"]);
    let e = h.req_str("t.u8").unwrap_err().to_string();
    assert_has(&e, &["`t.u8`", "expected a string, found u8"]);
    assert_has(
        &h.req_count("absent").unwrap_err().to_string(),
        &["missing metadata key `absent`"],
    );

    // Tensors: dims reversed to row-major, offsets absolute and aligned.
    assert_eq!(h.alignment, 32);
    assert_eq!(h.data_offset % 32, 0);
    let a = h.tensor("a").unwrap();
    assert_eq!(a.ne, vec![3, 2]);
    assert_eq!(a.shape, Shape::of(&[2, 3]));
    assert_eq!(a.dtype, DType::F32);
    assert_eq!(a.offset, h.data_offset);
    assert_eq!(a.size, 24);
    let first = f32::from_le_bytes(
        bytes[a.offset as usize..a.offset as usize + 4]
            .try_into()
            .unwrap(),
    );
    assert_eq!(first, 1.0);
    let b = h.tensor("b").unwrap();
    assert_eq!(
        (b.dtype, b.size, b.shape.clone()),
        (DType::Q4_1, 40, Shape::of(&[2, 32]))
    );
    assert_eq!(
        b.offset,
        h.data_offset + 32,
        "second tensor at the next aligned offset"
    );
}

#[test]
fn honours_general_alignment() {
    let mut w = sample();
    w.alignment = 64;
    w.kv_u32("general.alignment", 64);
    let h = parse(&w).unwrap();
    assert_eq!(h.alignment, 64);
    assert_eq!(h.data_offset % 64, 0);
    assert_eq!(h.tensor("b").unwrap().offset, h.data_offset + 64);
    let mut w = sample();
    w.kv_u32("general.alignment", 48);
    assert_has(
        &parse(&w).unwrap_err(),
        &["`general.alignment`", "power of two"],
    );
}

#[test]
fn truncated_files_are_errors_at_every_length() {
    let bytes = sample().finish();
    let h = GgufHeader::parse(&bytes, "test.gguf").unwrap();
    let b = h.tensor("b").unwrap();
    // Cutting only the padding after the last tensor's data leaves a valid file.
    let end = (b.offset + b.size) as usize;
    assert!(GgufHeader::parse(&bytes[..end], "test.gguf").is_ok());
    for n in 0..end {
        let e = err_of(&bytes[..n]);
        assert!(
            e.contains("truncated")
                || e.contains("past the end")
                || e.contains("outside the file")
                || e.contains("cannot fit")
                || e.contains("remain"),
            "prefix of {n} bytes: {e}"
        );
        assert!(e.contains("test.gguf"), "{e}");
    }
    let e = err_of(&bytes[..10]);
    assert_has(&e, &["truncated file"]);
}

#[test]
fn bad_magic() {
    let mut bytes = sample().finish();
    bytes[..4].copy_from_slice(b"GGML");
    assert_has(
        &err_of(&bytes),
        &["test.gguf", "bad magic", "GGML", "not a GGUF file"],
    );
}

#[test]
fn unsupported_versions() {
    for (v, hint) in [
        (1u32, "v1 is obsolete"),
        (4, "versions 2 and 3"),
        (3u32.swap_bytes(), "big-endian"),
    ] {
        let mut w = sample();
        w.version = v;
        assert_has(&parse(&w).unwrap_err(), &["unsupported GGUF version", hint]);
    }
    let mut w = sample();
    w.version = 2;
    assert!(parse(&w).is_ok(), "v2 has the same layout as v3");
}

#[test]
fn huge_string_length_names_the_key() {
    let mut w = GgufWriter::default();
    let mut v = (1u64 << 60).to_le_bytes().to_vec();
    v.extend(b"short");
    w.kv_raw("general.name", ty::STRING, &v);
    let e = parse(&w).unwrap_err();
    assert_has(
        &e,
        &[
            "metadata key `general.name`",
            "string length 1152921504606846976",
            "runs past the end",
        ],
    );
    // A huge key length is caught the same way.
    let mut bytes = b"GGUF".to_vec();
    bytes.extend(3u32.to_le_bytes());
    bytes.extend(0u64.to_le_bytes());
    bytes.extend(1u64.to_le_bytes());
    bytes.extend(u64::MAX.to_le_bytes());
    bytes.extend([0u8; 16]);
    assert_has(&err_of(&bytes), &["metadata key #0", "string length"]);
}

#[test]
fn huge_array_count_names_the_key() {
    let mut w = GgufWriter::default();
    let mut v = ty::U32.to_le_bytes().to_vec();
    v.extend((1u64 << 62).to_le_bytes());
    v.extend([0u8; 8]);
    w.kv_raw("tokenizer.ggml.token_type", ty::ARRAY, &v);
    assert_has(
        &parse(&w).unwrap_err(),
        &[
            "metadata key `tokenizer.ggml.token_type`",
            "array of 4611686018427387904 u32",
            "remain",
        ],
    );
    // Counts whose byte size overflows u64, and array-of-string counts.
    let mut w = GgufWriter::default();
    let mut v = ty::STRING.to_le_bytes().to_vec();
    v.extend(u64::MAX.to_le_bytes());
    w.kv_raw("tokenizer.ggml.tokens", ty::ARRAY, &v);
    assert_has(
        &parse(&w).unwrap_err(),
        &["`tokenizer.ggml.tokens`", "more than 2^64"],
    );
    // Header counts.
    let mut bytes = b"GGUF".to_vec();
    bytes.extend(3u32.to_le_bytes());
    bytes.extend(u64::MAX.to_le_bytes());
    bytes.extend(0u64.to_le_bytes());
    assert_has(
        &err_of(&bytes),
        &["tensor count 18446744073709551615 cannot fit"],
    );
}

#[test]
fn deeply_nested_arrays_are_rejected() {
    let mut v = Vec::new();
    for _ in 0..20 {
        v.extend(ty::ARRAY.to_le_bytes());
        v.extend(1u64.to_le_bytes());
    }
    v.extend(ty::U8.to_le_bytes());
    v.extend(0u64.to_le_bytes());
    let mut w = GgufWriter::default();
    w.kv_raw("deep", ty::ARRAY, &v);
    assert_has(&parse(&w).unwrap_err(), &["`deep`", "nested deeper"]);
}

#[test]
fn tensor_offset_outside_the_file() {
    let mut w = sample();
    w.tensors[1].offset = Some(1 << 40);
    assert_has(
        &parse(&w).unwrap_err(),
        &["tensor `b`", "lies outside the file"],
    );
    let mut w = sample();
    w.tensors[0].offset = Some(u64::MAX - 31);
    assert_has(&parse(&w).unwrap_err(), &["tensor `a`", "outside the file"]);
    let mut w = sample();
    w.tensors[1].offset = Some(33);
    assert_has(
        &parse(&w).unwrap_err(),
        &["tensor `b`", "not a multiple of the alignment 32"],
    );
}

#[test]
fn unknown_ggml_type_names_tensor_and_id() {
    let mut w = sample();
    w.tensors[1].ggml_type = 16;
    assert_has(
        &parse(&w).unwrap_err(),
        &[
            "tensor `b`",
            "ggml type 16 (iq2_xxs) is not supported for tensor b",
        ],
    );
    let mut w = sample();
    w.tensors[0].ggml_type = 999;
    assert_has(
        &parse(&w).unwrap_err(),
        &["tensor `a`", "ggml type 999 (unknown)"],
    );
}

#[test]
fn tensor_bytes_disagreeing_with_shape() {
    // `a` claims 2 x 12 f32 = 96 bytes, but `b` starts 32 bytes after it.
    let mut w = sample();
    w.tensors[0].ne = vec![12, 2];
    assert_has(
        &parse(&w).unwrap_err(),
        &[
            "tensor `a`",
            "needs 96 bytes",
            "next tensor `b` starts 32 bytes after it",
        ],
    );
    // The last tensor's shape running past the end of the file.
    let mut w = sample();
    w.tensors[1].ne = vec![32, 4000];
    assert_has(
        &parse(&w).unwrap_err(),
        &["tensor `b`", "80000 bytes", "outside the file"],
    );
    // Block formats need whole blocks per row.
    let mut w = sample();
    w.tensors[1].ne = vec![16, 4];
    assert_has(
        &parse(&w).unwrap_err(),
        &["tensor `b`", "row length 16", "q4_1 block of 32"],
    );
    let mut w = sample();
    w.tensors[0].ne = vec![1, 1, 1, 1, 1];
    assert_has(&parse(&w).unwrap_err(), &["tensor `a`", "5 dims"]);
    let mut w = sample();
    w.tensors[0].ne = vec![u64::MAX, 2];
    assert_has(&parse(&w).unwrap_err(), &["tensor `a`", "overflow"]);
    let mut w = sample();
    w.tensors[0].ne = vec![0, u64::MAX];
    assert_has(&parse(&w).unwrap_err(), &["tensor `a`", "overflow"]);
}

#[test]
fn duplicate_names_are_errors() {
    let mut w = sample();
    w.kv_u32("t.u32", 1);
    assert_has(&parse(&w).unwrap_err(), &["`t.u32` appears twice"]);
    let mut w = sample();
    w.tensors[1].name = "a".into();
    assert_has(&parse(&w).unwrap_err(), &["tensor `a`", "appears twice"]);
}

#[test]
fn bad_bool_and_utf8_are_errors() {
    let mut w = GgufWriter::default();
    w.kv_raw("flag", ty::BOOL, &[2]);
    assert_has(&parse(&w).unwrap_err(), &["`flag`", "bool byte is 2"]);
    let mut w = GgufWriter::default();
    let mut v = 2u64.to_le_bytes().to_vec();
    v.extend([0xC3, 0x28]);
    w.kv_raw("text", ty::STRING, &v);
    assert_has(&parse(&w).unwrap_err(), &["`text`", "not valid UTF-8"]);
    let mut w = GgufWriter::default();
    w.kv_raw("odd", 13, &[0; 8]);
    assert_has(&parse(&w).unwrap_err(), &["`odd`", "unknown value type 13"]);
}

#[test]
fn missing_block_count_and_unknown_architecture() {
    let mut w = GgufWriter::default();
    w.kv_str("general.architecture", "llama")
        .kv_u32("llama.embedding_length", 8);
    w.tensor_f32("token_embd.weight", &[4, 8], &[0.0; 32]);
    let (_dir, path) = w.write_temp();
    let e = llmc_frontend::gguf::load(&path).unwrap_err().to_string();
    assert_has(
        &e,
        &["model.gguf", "missing metadata key `llama.block_count`"],
    );

    let mut w = GgufWriter::default();
    w.kv_str("general.architecture", "mamba");
    let (_dir, path) = w.write_temp();
    let e = llmc_frontend::gguf::load(&path).unwrap_err().to_string();
    assert_has(
        &e,
        &[
            "model.gguf",
            "unknown architecture `mamba`",
            "supported: llama, mistral, qwen2, qwen3, phi3, gemma, gemma2, gemma3, gpt2",
        ],
    );

    // Every architecture reads its own `{arch}.*` keys, and names the one missing.
    let mut w = GgufWriter::default();
    w.kv_str("general.architecture", "gemma3")
        .kv_u32("gemma3.block_count", 1)
        .kv_u32("gemma3.embedding_length", 8);
    w.tensor_f32("token_embd.weight", &[4, 8], &[0.0; 32]);
    let (_dir, path) = w.write_temp();
    let e = llmc_frontend::gguf::load(&path).unwrap_err().to_string();
    assert_has(
        &e,
        &[
            "model.gguf",
            "missing metadata key `gemma3.feed_forward_length`",
        ],
    );

    let w = GgufWriter::default();
    let (_dir, path) = w.write_temp();
    let e = llmc_frontend::gguf::load(&path).unwrap_err().to_string();
    assert_has(&e, &["missing metadata key `general.architecture`"]);

    let mut w = GgufWriter::default();
    w.kv_str("general.architecture", "llama")
        .kv_u64("llama.block_count", 1 << 40);
    let (_dir, path) = w.write_temp();
    let e = llmc_frontend::gguf::load(&path).unwrap_err().to_string();
    assert_has(
        &e,
        &[
            "`llama.block_count`",
            "1099511627776 blocks but the file has 0 tensors",
        ],
    );
}

#[test]
fn missing_and_empty_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.gguf");
    let e = llmc_frontend::gguf::load(&path).unwrap_err().to_string();
    assert_has(&e, &["nope.gguf"]);
    std::fs::write(&path, b"").unwrap();
    let e = llmc_frontend::gguf::load(&path).unwrap_err().to_string();
    assert_has(&e, &["nope.gguf", "truncated file"]);
}
