//! ONNX tensor data: `TensorProto` to an IR dtype, shape and bytes. ONNX stores
//! elements in one of several places — `raw_data` (little-endian bytes), a typed field
//! (`float_data`, `int32_data` which also carries f16/bf16 bit patterns, bools and the
//! small integer types one per entry, `int64_data`, `double_data`, `uint64_data`), or a
//! separate file (`data_location = EXTERNAL`, with `location`/`offset`/`length`
//! relative to the model file). External data is memory-mapped and referenced, never
//! copied; everything else is normalised to little-endian bytes of the IR dtype.

use llmc_ir::interp::weight_tensor;
use llmc_ir::tensor::Data;
use llmc_ir::{DType, Tensor, WeightData};
use onnx_protobuf::tensor_proto::{DataLocation, DataType};
use onnx_protobuf::TensorProto;
use protobuf::Enum;
use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

/// The IR dtype of an ONNX element type code, or a message naming the ONNX type.
pub fn dtype_of(code: i32) -> Result<DType, String> {
    let dt = DataType::from_i32(code);
    Ok(match dt {
        Some(DataType::FLOAT) => DType::F32,
        Some(DataType::DOUBLE) => DType::F64,
        Some(DataType::FLOAT16) => DType::F16,
        Some(DataType::BFLOAT16) => DType::BF16,
        Some(DataType::INT64) => DType::I64,
        Some(DataType::INT32) => DType::I32,
        Some(DataType::INT16) => DType::I16,
        Some(DataType::INT8) => DType::I8,
        Some(DataType::UINT8) => DType::U8,
        Some(DataType::UINT16) => DType::U16,
        Some(DataType::UINT32) => DType::U32,
        Some(DataType::BOOL) => DType::Bool,
        _ => {
            return Err(format!(
                "element type {} is not supported (supported: float, double, float16, \
                 bfloat16, int64, int32, int16, int8, uint32, uint16, uint8, bool)",
                type_name(code)
            ))
        }
    })
}

/// The ONNX name of an element type code (`FLOAT`, `UINT16`, ... or `code 99`).
pub fn type_name(code: i32) -> String {
    match DataType::from_i32(code) {
        Some(d) => format!("{d:?}"),
        None => match code {
            23 => "FLOAT4E2M1".into(),
            24 => "FLOAT8E8M0".into(),
            25 => "UINT2".into(),
            26 => "INT2".into(),
            _ => format!("code {code}"),
        },
    }
}

/// The ONNX element type code of an IR dtype (block formats have none).
pub fn onnx_code(d: DType) -> Option<i32> {
    Some(match d {
        DType::F32 => DataType::FLOAT as i32,
        DType::F64 => DataType::DOUBLE as i32,
        DType::F16 => DataType::FLOAT16 as i32,
        DType::BF16 => DataType::BFLOAT16 as i32,
        DType::I64 => DataType::INT64 as i32,
        DType::I32 => DataType::INT32 as i32,
        DType::I16 => DataType::INT16 as i32,
        DType::I8 => DataType::INT8 as i32,
        DType::U8 => DataType::UINT8 as i32,
        DType::U16 => DataType::UINT16 as i32,
        DType::U32 => DataType::UINT32 as i32,
        DType::Bool => DataType::BOOL as i32,
        _ => return None,
    })
}

/// Memory maps of external data files, shared by every tensor that lives in them.
#[derive(Default)]
pub struct ExternalFiles {
    maps: HashMap<PathBuf, Arc<memmap2::Mmap>>,
}

impl ExternalFiles {
    fn map(&mut self, path: &Path) -> Result<Arc<memmap2::Mmap>, String> {
        if let Some(m) = self.maps.get(path) {
            return Ok(m.clone());
        }
        let file = std::fs::File::open(path)
            .map_err(|e| format!("external data file {}: {e}", path.display()))?;
        // SAFETY: read-only mapping; as for every memory-mapped model file, we assume
        // the file is not truncated or rewritten while the module holds it.
        let map = unsafe { memmap2::Mmap::map(&file) }
            .map_err(|e| format!("external data file {}: {e}", path.display()))?;
        let map = Arc::new(map);
        self.maps.insert(path.to_path_buf(), map.clone());
        Ok(map)
    }
}

/// A decoded `TensorProto`: dtype, concrete shape and where its bytes are.
#[derive(Debug)]
pub struct TensorBytes {
    /// Element type.
    pub dtype: DType,
    /// Shape.
    pub shape: Vec<usize>,
    /// Little-endian elements of `dtype`.
    pub data: WeightData,
}

impl TensorBytes {
    /// Decodes the elements into an interpreter tensor.
    pub fn to_tensor(&self) -> Result<Tensor, String> {
        let bytes = self
            .data
            .bytes()
            .ok_or_else(|| "has no data attached".to_string())?;
        weight_tensor(self.dtype, &self.shape, bytes)
    }
}

/// The element count of `dims`, rejecting negative dims and overflow.
pub fn checked_shape(dims: &[i64]) -> Result<(Vec<usize>, usize), String> {
    let mut shape = Vec::with_capacity(dims.len());
    let mut n: usize = 1;
    for &d in dims {
        let u = usize::try_from(d).map_err(|_| format!("dims {dims:?} has negative dim {d}"))?;
        n = n
            .checked_mul(u)
            .filter(|&n| n <= 1 << 40)
            .ok_or_else(|| format!("dims {dims:?} has too many elements"))?;
        shape.push(u);
    }
    Ok((shape, n))
}

/// Decodes a `TensorProto`. `base_dir` is the model file's folder (external data is
/// relative to it); without one, external data is an error. Errors say what is wrong
/// with the tensor; the caller names it.
pub fn decode(
    t: &TensorProto,
    base_dir: Option<&Path>,
    ext: &mut ExternalFiles,
) -> Result<TensorBytes, String> {
    decode_inner(t, None, base_dir, ext)
}

/// [`decode`] that moves `raw_data` out of the tensor instead of copying it (a large
/// model's initializers are not held twice).
pub fn decode_owned(
    mut t: TensorProto,
    base_dir: Option<&Path>,
    ext: &mut ExternalFiles,
) -> Result<TensorBytes, String> {
    let raw = std::mem::take(&mut t.raw_data);
    decode_inner(&t, Some(raw), base_dir, ext)
}

fn decode_inner(
    t: &TensorProto,
    raw: Option<Vec<u8>>,
    base_dir: Option<&Path>,
    ext: &mut ExternalFiles,
) -> Result<TensorBytes, String> {
    let dtype = dtype_of(t.data_type)?;
    let (shape, numel) = checked_shape(&t.dims)?;
    if t.segment.is_some() {
        return Err("segmented tensors are not supported".into());
    }
    let need = dtype.block_bytes() * numel;
    let ty = || format!("{dtype}{shape:?}");
    if t.data_location.value() == DataLocation::EXTERNAL as i32 {
        let data = external(t, base_dir, ext, need, &ty())?;
        return Ok(TensorBytes { dtype, shape, data });
    }
    let raw_len = raw.as_ref().map_or(t.raw_data.len(), Vec::len);
    if raw_len > 0 || typed_len(t) == 0 {
        if raw_len != need {
            return Err(format!(
                "raw_data has {raw_len} bytes, {} needs {need}",
                ty()
            ));
        }
        let mut bytes = raw.unwrap_or_else(|| t.raw_data.clone());
        if dtype == DType::Bool {
            // Any nonzero byte is true; keep the canonical 0/1.
            for b in &mut bytes {
                *b = (*b != 0) as u8;
            }
        }
        return Ok(TensorBytes {
            dtype,
            shape,
            data: WeightData::Owned(Arc::new(bytes)),
        });
    }
    let bytes = typed_bytes(t, dtype, numel, &ty())?;
    Ok(TensorBytes {
        dtype,
        shape,
        data: WeightData::Owned(Arc::new(bytes)),
    })
}

/// How many entries the typed fields hold.
fn typed_len(t: &TensorProto) -> usize {
    t.float_data.len()
        + t.int32_data.len()
        + t.int64_data.len()
        + t.double_data.len()
        + t.uint64_data.len()
        + t.string_data.len()
}

fn count_check(field: &str, got: usize, numel: usize, ty: &str) -> Result<(), String> {
    if got != numel {
        return Err(format!("{field} has {got} elements, {ty} needs {numel}"));
    }
    Ok(())
}

/// Little-endian bytes from the typed field that holds `dtype`.
fn typed_bytes(t: &TensorProto, dtype: DType, numel: usize, ty: &str) -> Result<Vec<u8>, String> {
    // Sized by what the fields hold, not by the dims: a header that claims 2^40
    // elements over one stored value must be an error, not a 4 TiB allocation.
    let mut out = Vec::with_capacity(numel.min(typed_len(t)) * dtype.block_bytes());
    match dtype {
        DType::F32 => {
            count_check("float_data", t.float_data.len(), numel, ty)?;
            t.float_data
                .iter()
                .for_each(|v| out.extend(v.to_le_bytes()));
        }
        DType::F64 => {
            count_check("double_data", t.double_data.len(), numel, ty)?;
            t.double_data
                .iter()
                .for_each(|v| out.extend(v.to_le_bytes()));
        }
        DType::I64 => {
            count_check("int64_data", t.int64_data.len(), numel, ty)?;
            t.int64_data
                .iter()
                .for_each(|v| out.extend(v.to_le_bytes()));
        }
        // uint64_data carries uint32 (and uint64).
        DType::U32 => {
            count_check("uint64_data", t.uint64_data.len(), numel, ty)?;
            t.uint64_data
                .iter()
                .for_each(|&v| out.extend((v as u32).to_le_bytes()));
        }
        // int32_data carries every other type of 32 bits or fewer, one element per
        // entry; f16/bf16 as their bit patterns.
        DType::I32
        | DType::I16
        | DType::I8
        | DType::U8
        | DType::U16
        | DType::Bool
        | DType::F16
        | DType::BF16 => {
            count_check("int32_data", t.int32_data.len(), numel, ty)?;
            for &v in &t.int32_data {
                match dtype {
                    DType::I32 => out.extend(v.to_le_bytes()),
                    DType::I16 | DType::U16 | DType::F16 | DType::BF16 => {
                        out.extend((v as u16).to_le_bytes())
                    }
                    DType::Bool => out.push((v != 0) as u8),
                    _ => out.push(v as u8),
                }
            }
        }
        other => return Err(format!("element type {other} has no typed field")),
    }
    Ok(out)
}

fn external(
    t: &TensorProto,
    base_dir: Option<&Path>,
    ext: &mut ExternalFiles,
    need: usize,
    ty: &str,
) -> Result<WeightData, String> {
    let mut location = None;
    let mut offset = 0usize;
    let mut length = None;
    for kv in &t.external_data {
        let num = || {
            kv.value.trim().parse::<usize>().map_err(|_| {
                format!(
                    "external_data `{}` = {:?} is not a number",
                    kv.key, kv.value
                )
            })
        };
        match kv.key.as_str() {
            "location" => location = Some(kv.value.clone()),
            "offset" => offset = num()?,
            "length" => length = Some(num()?),
            _ => {} // checksum and unknown keys are informational
        }
    }
    let location = location.ok_or("external data without a `location` entry")?;
    let rel = Path::new(&location);
    if rel.is_absolute()
        || rel
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(format!(
            "external data location {location:?} must be a relative path inside the model's folder"
        ));
    }
    let base =
        base_dir.ok_or("external data needs the model's folder (load the model from a file)")?;
    let path = base.join(rel);
    let map = ext.map(&path)?;
    let len = length.unwrap_or(need);
    if len != need {
        return Err(format!(
            "external data length {len} disagrees with {ty}, which needs {need} bytes"
        ));
    }
    let end = offset
        .checked_add(len)
        .filter(|&e| e <= map.len())
        .ok_or_else(|| {
            format!(
                "external data {}: bytes {offset}..{} are outside the file ({} bytes)",
                path.display(),
                offset.saturating_add(len),
                map.len()
            )
        })?;
    debug_assert!(end <= map.len());
    Ok(WeightData::Mapped {
        map,
        path: Arc::new(path),
        offset,
        len,
    })
}

/// Little-endian bytes of a tensor's elements, as a weight stores them.
pub fn tensor_bytes(t: &Tensor) -> Vec<u8> {
    let mut out = Vec::with_capacity(t.numel() * t.dtype.block_bytes());
    match &t.data {
        Data::F(v) => {
            for &x in v {
                match t.dtype {
                    DType::F64 => out.extend(x.to_le_bytes()),
                    DType::F16 => out.extend(half::f16::from_f64(x).to_le_bytes()),
                    DType::BF16 => out.extend(half::bf16::from_f64(x).to_le_bytes()),
                    _ => out.extend((x as f32).to_le_bytes()),
                }
            }
        }
        Data::I(v) => {
            for &x in v {
                match t.dtype {
                    DType::I64 => out.extend(x.to_le_bytes()),
                    DType::I32 => out.extend((x as i32).to_le_bytes()),
                    DType::U32 => out.extend((x as u32).to_le_bytes()),
                    DType::I16 => out.extend((x as i16).to_le_bytes()),
                    DType::U16 => out.extend((x as u16).to_le_bytes()),
                    _ => out.push(x as u8),
                }
            }
        }
    }
    out
}

/// Reads a serialized `TensorProto` (the `.pb` files of ONNX's test data) into a
/// tensor; external data is resolved against `base_dir`.
pub fn tensor_from_bytes(
    bytes: &[u8],
    base_dir: Option<&Path>,
) -> Result<(String, Tensor), String> {
    use protobuf::Message;
    let t = TensorProto::parse_from_bytes(bytes).map_err(|e| format!("not a TensorProto: {e}"))?;
    let tb = decode(&t, base_dir, &mut ExternalFiles::default())?;
    Ok((t.name.clone(), tb.to_tensor()?))
}
