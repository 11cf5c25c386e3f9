//! Reading `.safetensors` files without copying: the `safetensors` crate checks the
//! header (JSON, offsets contiguous and matching shape × dtype, covering the file), and
//! each tensor becomes a byte range of one shared memory map. When the crate rejects a
//! header its errors do not always say which tensor is at fault, so a second, purely
//! diagnostic pass over the JSON names the tensor and the numbers that disagree.

use super::{format_err, io_err, unsupported};
use crate::FrontendError;
use ::safetensors::tensor::{Dtype as StDtype, SafeTensorError};
use ::safetensors::SafeTensors;
use llmc_ir::{DType, WeightData};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One tensor of a safetensors header: its dtype as the file names it, its shape, and
/// its byte range in the file (absolute offsets).
#[derive(Clone, Debug, PartialEq)]
pub struct HeaderEntry {
    /// Name in the file.
    pub name: String,
    /// Element type.
    pub dtype: StDtype,
    /// Shape.
    pub shape: Vec<usize>,
    /// First byte, counted from the start of the file.
    pub start: usize,
    /// One past the last byte, counted from the start of the file.
    pub end: usize,
}

/// Parses and validates the header of a safetensors file held in `bytes`; `file`
/// names it in errors. Entries are sorted by offset. Never panics on any input.
pub fn parse_header(bytes: &[u8], file: &Path) -> Result<Vec<HeaderEntry>, FrontendError> {
    let (n, meta) = SafeTensors::read_metadata(bytes).map_err(|e| header_error(bytes, file, e))?;
    let data_start = n + 8;
    let mut out: Vec<HeaderEntry> = meta
        .tensors()
        .into_iter()
        .map(|(name, info)| HeaderEntry {
            name,
            dtype: info.dtype,
            shape: info.shape.clone(),
            start: data_start + info.data_offsets.0,
            end: data_start + info.data_offsets.1,
        })
        .collect();
    out.sort_by(|a, b| (a.start, a.end, &a.name).cmp(&(b.start, b.end, &b.name)));
    Ok(out)
}

/// Turns the crate's error into a message naming what is wrong.
fn header_error(bytes: &[u8], file: &Path, e: SafeTensorError) -> FrontendError {
    let msg = match &e {
        SafeTensorError::HeaderTooSmall => format!(
            "safetensors header truncated: the file has {} bytes, fewer than the 8-byte header length",
            bytes.len()
        ),
        SafeTensorError::InvalidHeaderLength | SafeTensorError::HeaderTooLarge => {
            let n = bytes
                .get(..8)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_le_bytes)
                .unwrap_or(0);
            format!(
                "safetensors header length {n} is larger than the file ({} bytes after the length) or the 100 MB limit",
                bytes.len().saturating_sub(8)
            )
        }
        _ => match diagnose(bytes) {
            Some(d) => format!("safetensors header: {d}"),
            None => format!("safetensors header: {e}"),
        },
    };
    format_err(file, msg)
}

/// Element size in bytes of a safetensors dtype name, for the diagnostic pass.
fn dtype_bits(name: &str) -> Option<u64> {
    Some(match name {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 8,
        "F4" => 4,
        "F6_E2M3" | "F6_E3M2" => 6,
        "I16" | "U16" | "F16" | "BF16" => 16,
        "I32" | "U32" | "F32" => 32,
        "I64" | "U64" | "F64" => 64,
        _ => return None,
    })
}

/// Finds the first tensor whose header entry is wrong and says why. `None` when the
/// header cannot be read as JSON at all (the crate's message is then the best).
fn diagnose(bytes: &[u8]) -> Option<String> {
    let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let end = 8usize.checked_add(usize::try_from(n).ok()?)?;
    let header = bytes.get(8..end)?;
    let data_len = (bytes.len() - end) as u64;
    let json: serde_json::Value = match serde_json::from_slice(header) {
        Ok(v) => v,
        Err(e) => return Some(format!("invalid JSON: {e}")),
    };
    let obj = match json.as_object() {
        Some(o) => o,
        None => return Some("the header is not a JSON object".into()),
    };
    let mut spans: Vec<(u64, u64, String)> = Vec::new();
    for (name, v) in obj {
        if name == "__metadata__" {
            continue;
        }
        let dtype = match v.get("dtype").and_then(|d| d.as_str()) {
            Some(d) => d,
            None => return Some(format!("tensor `{name}` has no string `dtype`")),
        };
        let bits = match dtype_bits(dtype) {
            Some(b) => b,
            None => return Some(format!("tensor `{name}` has unknown dtype `{dtype}`")),
        };
        let shape: Option<Vec<u64>> = v
            .get("shape")
            .and_then(|s| s.as_array())
            .and_then(|a| a.iter().map(|d| d.as_u64()).collect());
        let shape = match shape {
            Some(s) => s,
            None => {
                return Some(format!(
                    "tensor `{name}` has no `shape` list of non-negative integers"
                ))
            }
        };
        let offs: Option<Vec<u64>> = v
            .get("data_offsets")
            .and_then(|s| s.as_array())
            .and_then(|a| a.iter().map(|d| d.as_u64()).collect());
        let (s, e) = match offs.as_deref() {
            Some(&[s, e]) => (s, e),
            _ => {
                return Some(format!(
                    "tensor `{name}` has no `data_offsets` pair of non-negative integers"
                ))
            }
        };
        if e < s {
            return Some(format!(
                "tensor `{name}`: data_offsets [{s}, {e}] end before they start"
            ));
        }
        if e > data_len {
            return Some(format!(
                "tensor `{name}`: data_offsets [{s}, {e}] lie outside the data ({data_len} bytes after the header)"
            ));
        }
        let numel = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
        let need = numel
            .and_then(|n| n.checked_mul(bits))
            .map(|b| b.div_ceil(8));
        match need {
            Some(need) if need == e - s => {}
            Some(need) => {
                return Some(format!(
                    "tensor `{name}`: {dtype}{shape:?} needs {need} bytes, data_offsets [{s}, {e}] hold {}",
                    e - s
                ))
            }
            None => return Some(format!("tensor `{name}`: shape {shape:?} overflows")),
        }
        spans.push((s, e, name.clone()));
    }
    spans.sort();
    let mut at = 0u64;
    for (s, e, name) in &spans {
        if *s != at {
            return Some(format!(
                "tensor `{name}`: data_offsets [{s}, {e}] do not start where the previous tensor ends ({at}): tensors must be packed without gaps or overlaps"
            ));
        }
        at = *e;
    }
    if at != data_len {
        return Some(format!(
            "the tensors cover {at} bytes but the file has {data_len} bytes of data after the header"
        ));
    }
    None
}

/// A tensor ready for the IR: dtype, shape and a view of the mapped file.
#[derive(Clone, Debug)]
pub struct MappedTensor {
    /// IR dtype.
    pub dtype: DType,
    /// Shape.
    pub shape: Vec<usize>,
    /// The bytes (a range of the file's map).
    pub data: WeightData,
    /// The file it came from.
    pub file: Arc<PathBuf>,
}

/// Tensors that checkpoints carry as integer or boolean buffers rather than parameters
/// (BERT's `position_ids`, GPT-2's causal-mask buffers, old Llama `inv_freq`). No
/// builder reads them, so their dtype is not checked; any other tensor must be
/// F32, F16 or BF16.
fn is_buffer(name: &str) -> bool {
    const SUFFIXES: &[&str] = &[
        "position_ids",
        "token_type_ids",
        ".attn.bias",
        ".attn.masked_bias",
        "rotary_emb.inv_freq",
    ];
    SUFFIXES.iter().any(|s| name.ends_with(s))
}

fn ir_dtype(d: StDtype) -> Option<DType> {
    match d {
        StDtype::F32 => Some(DType::F32),
        StDtype::F16 => Some(DType::F16),
        StDtype::BF16 => Some(DType::BF16),
        _ => None,
    }
}

/// Maps a safetensors file and returns its tensors by name (buffers skipped).
pub fn read_file(path: &Path) -> Result<BTreeMap<String, MappedTensor>, FrontendError> {
    let f = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
    // SAFETY: the map is read-only; like every memory-mapped model loader we rely on
    // the file not being truncated while it is mapped.
    let map = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| io_err(path, e))?;
    let map = Arc::new(map);
    let file = Arc::new(path.to_path_buf());
    let mut out = BTreeMap::new();
    for e in parse_header(&map, path)? {
        let dtype = match ir_dtype(e.dtype) {
            Some(d) => d,
            None if is_buffer(&e.name) => continue,
            None => {
                return Err(unsupported(
                    path,
                    format!(
                        "tensor `{}` has dtype {:?}; llmc reads F32, F16 and BF16 safetensors",
                        e.name, e.dtype
                    ),
                ))
            }
        };
        let data = WeightData::Mapped {
            map: map.clone(),
            path: file.clone(),
            offset: e.start,
            len: e.end - e.start,
        };
        out.insert(
            e.name,
            MappedTensor {
                dtype,
                shape: e.shape,
                data,
                file: file.clone(),
            },
        );
    }
    Ok(out)
}

/// Reads the model's weights from `dir`: `model.safetensors`, or the shards listed in
/// `model.safetensors.index.json`. Every tensor the index lists must be in its shard.
pub fn read_dir(dir: &Path) -> Result<BTreeMap<String, MappedTensor>, FrontendError> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return read_file(&single);
    }
    let index = dir.join("model.safetensors.index.json");
    if !index.is_file() {
        return Err(format_err(
            dir,
            "no model.safetensors or model.safetensors.index.json in the folder",
        ));
    }
    let text = std::fs::read_to_string(&index).map_err(|e| io_err(&index, e))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| format_err(&index, format!("invalid JSON: {e}")))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| format_err(&index, "missing key `weight_map` (an object)"))?;
    let mut by_shard: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (name, shard) in map {
        let shard = shard
            .as_str()
            .ok_or_else(|| format_err(&index, format!("weight_map.`{name}` is not a file name")))?;
        if shard.contains('/') || shard.contains('\\') || shard == ".." {
            return Err(format_err(
                &index,
                format!("weight_map.`{name}`: shard `{shard}` is not a plain file name"),
            ));
        }
        by_shard.entry(shard).or_default().push(name);
    }
    let mut out = BTreeMap::new();
    for (shard, names) in by_shard {
        let path = dir.join(shard);
        if !path.is_file() {
            return Err(format_err(
                &index,
                format!(
                    "shard `{shard}` (holding `{}`) is missing from {}",
                    names.first().copied().unwrap_or("?"),
                    dir.display()
                ),
            ));
        }
        let mut tensors = read_file(&path)?;
        for name in names {
            match tensors.remove(name) {
                Some(t) => {
                    out.insert(name.to_string(), t);
                }
                None if is_buffer(name) => {}
                None => {
                    return Err(format_err(
                        &index,
                        format!("tensor `{name}` is listed in shard `{shard}` but not found there"),
                    ))
                }
            }
        }
    }
    Ok(out)
}
