//! `.npy` files in and out (NumPy format 1.0-3.0, little-endian, C order): how the
//! emitted executable's `run` command and `llmc exec` exchange tensors.

use crate::exec::HostTensor;
use crate::plan::ElemType;

fn descr(t: ElemType) -> Option<&'static str> {
    Some(match t {
        ElemType::F32 => "<f4",
        ElemType::F16 => "<f2",
        ElemType::F64 => "<f8",
        ElemType::I64 => "<i8",
        ElemType::I32 => "<i4",
        ElemType::I16 => "<i2",
        ElemType::I8 => "|i1",
        ElemType::U8 => "|u1",
        ElemType::Bool => "|b1",
        ElemType::Bf16 | ElemType::Block { .. } => return None,
    })
}

fn from_descr(d: &str) -> Option<ElemType> {
    Some(match d {
        "<f4" => ElemType::F32,
        "<f2" => ElemType::F16,
        "<f8" => ElemType::F64,
        "<i8" => ElemType::I64,
        "<i4" => ElemType::I32,
        "<i2" => ElemType::I16,
        "|i1" | "<i1" => ElemType::I8,
        "|u1" | "<u1" => ElemType::U8,
        "|b1" | "<b1" => ElemType::Bool,
        _ => return None,
    })
}

/// Encodes a tensor as `.npy` bytes.
pub fn write(t: &HostTensor) -> Result<Vec<u8>, String> {
    let d =
        descr(t.dtype).ok_or_else(|| format!("{} tensors have no .npy type", t.dtype.name()))?;
    let shape = match t.shape.len() {
        0 => "()".to_string(),
        1 => format!("({},)", t.shape[0]),
        _ => {
            let s: Vec<String> = t.shape.iter().map(|v| v.to_string()).collect();
            format!("({})", s.join(", "))
        }
    };
    let mut header = format!("{{'descr': '{d}', 'fortran_order': False, 'shape': {shape}, }}");
    // Pad so the data starts on a 64-byte boundary, header ends with '\n'.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + t.data.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    let hl = u16::try_from(header.len()).map_err(|_| "shape too long for .npy".to_string())?;
    out.extend_from_slice(&hl.to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&t.data);
    Ok(out)
}

/// The value of `'key':` in a header dict (up to the next top-level comma).
fn field<'a>(h: &'a str, key: &str) -> Option<&'a str> {
    let at = h.find(&format!("'{key}'"))? + key.len() + 2;
    let rest = h[at..].trim_start().strip_prefix(':')?.trim_start();
    if rest.starts_with('(') {
        let end = rest.find(')')?;
        return Some(&rest[..=end]);
    }
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    Some(rest[..end].trim())
}

/// Decodes `.npy` bytes.
pub fn read(b: &[u8]) -> Result<HostTensor, String> {
    if b.len() < 10 || &b[..6] != b"\x93NUMPY" {
        return Err("not a .npy file (bad magic)".into());
    }
    let (hlen, start): (usize, usize) = match b[6] {
        1 => (u16::from_le_bytes([b[8], b[9]]) as usize, 10),
        2 | 3 => {
            if b.len() < 12 {
                return Err("truncated .npy header".into());
            }
            (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12)
        }
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let end = start
        .checked_add(hlen)
        .filter(|&e| e <= b.len())
        .ok_or("truncated .npy header")?;
    let h = std::str::from_utf8(&b[start..end]).map_err(|_| "the .npy header is not text")?;
    let d = field(h, "descr").ok_or("the .npy header has no 'descr'")?;
    let d = d.trim_matches(|c| c == '\'' || c == '"');
    let dtype = from_descr(d).ok_or_else(|| format!("unsupported .npy dtype '{d}'"))?;
    if field(h, "fortran_order").is_some_and(|v| v.starts_with("True")) {
        return Err("Fortran-order .npy files are not supported".into());
    }
    let s = field(h, "shape").ok_or("the .npy header has no 'shape'")?;
    let inner = s.trim().trim_start_matches('(').trim_end_matches(')');
    let mut shape = Vec::new();
    for part in inner.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        shape.push(
            part.trim_end_matches('L')
                .parse::<usize>()
                .map_err(|_| format!("bad .npy shape {s}"))?,
        );
    }
    let n = shape
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
        .and_then(|n| dtype.bytes_for(n))
        .ok_or("the .npy shape is too large")?;
    let data = &b[end..];
    if (data.len() as u64) < n {
        return Err(format!(
            "the .npy data has {} bytes, shape {shape:?} needs {n}",
            data.len()
        ));
    }
    Ok(HostTensor {
        dtype,
        shape,
        data: data[..n as usize].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_header_alignment() {
        for (dtype, shape) in [
            (ElemType::F32, vec![2, 3]),
            (ElemType::I64, vec![4]),
            (ElemType::Bool, vec![]),
            (ElemType::F16, vec![1, 0, 2]),
        ] {
            let n: usize = shape.iter().product();
            let t = HostTensor {
                dtype,
                shape,
                data: (0..n * dtype.size()).map(|i| i as u8).collect(),
            };
            let b = write(&t).unwrap();
            assert_eq!((b.len() - t.data.len()) % 64, 0);
            assert_eq!(read(&b).unwrap(), t);
        }
        assert!(read(b"nope").unwrap_err().contains("magic"));
        let mut b = write(&HostTensor {
            dtype: ElemType::F32,
            shape: vec![4],
            data: vec![0; 16],
        })
        .unwrap();
        b.truncate(b.len() - 1);
        assert!(read(&b).unwrap_err().contains("needs 16"));
    }
}
