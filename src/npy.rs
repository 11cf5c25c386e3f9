//! `.npy` files <-> interpreter tensors, for `llmc exec`. NumPy is how users hand
//! tensors to a model and read results back, so every plain dtype the IR has a NumPy
//! twin for is supported, in either byte order and either memory order.

use anyhow::{bail, Context, Result};
use llmc_ir::{DType, Tensor};
use npyz::{TypeChar, WriterBuilder};
use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::Path;

/// The llmc dtype of a NumPy type (`<f4` -> f32), if there is one.
fn dtype_of(ts: &npyz::TypeStr) -> Option<DType> {
    Some(match (ts.type_char(), ts.size_field()) {
        (TypeChar::Float, 4) => DType::F32,
        (TypeChar::Float, 8) => DType::F64,
        (TypeChar::Float, 2) => DType::F16,
        (TypeChar::Int, 8) => DType::I64,
        (TypeChar::Int, 4) => DType::I32,
        (TypeChar::Int, 2) => DType::I16,
        (TypeChar::Int, 1) => DType::I8,
        (TypeChar::Uint, 1) => DType::U8,
        (TypeChar::Uint, 2) => DType::U16,
        (TypeChar::Uint, 4) => DType::U32,
        (TypeChar::Bool, 1) => DType::Bool,
        _ => return None,
    })
}

/// Reads a `.npy` file into a tensor of the matching dtype.
pub fn read(path: &Path) -> Result<Tensor> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let npy = npyz::NpyFile::new(BufReader::new(file))
        .with_context(|| format!("{}: not a valid .npy file", path.display()))?;
    let ts = match npy.dtype() {
        npyz::DType::Plain(ts) => ts,
        other => bail!(
            "{}: structured NumPy dtype {} is not supported (save a plain array)",
            path.display(),
            other.descr()
        ),
    };
    let dtype = dtype_of(&ts).with_context(|| {
        format!(
            "{}: NumPy dtype {ts} has no llmc counterpart (supported: f2 f4 f8 i1 i2 i4 i8 \
             u1 u2 u4 b1)",
            path.display()
        )
    })?;
    let file_shape: Vec<usize> = npy
        .shape()
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<_, _>>()
        .with_context(|| format!("{}: a dim does not fit in memory", path.display()))?;
    let fortran = npy.order() == npyz::Order::Fortran;
    let ctx = || format!("{}: reading {dtype} data", path.display());
    let t = if dtype.is_float() {
        let v: Vec<f64> = match dtype {
            DType::F32 => npy
                .into_vec::<f32>()
                .with_context(ctx)?
                .into_iter()
                .map(f64::from)
                .collect(),
            DType::F16 => npy
                .into_vec::<npyz::half::f16>()
                .with_context(ctx)?
                .into_iter()
                .map(f64::from)
                .collect(),
            _ => npy.into_vec::<f64>().with_context(ctx)?,
        };
        Tensor::from_f64(dtype, file_shape.clone(), v)
    } else {
        let v: Vec<i64> = match dtype {
            DType::Bool => npy
                .into_vec::<bool>()
                .with_context(ctx)?
                .into_iter()
                .map(i64::from)
                .collect(),
            DType::U8 => npy
                .into_vec::<u8>()
                .with_context(ctx)?
                .into_iter()
                .map(i64::from)
                .collect(),
            DType::U16 => npy
                .into_vec::<u16>()
                .with_context(ctx)?
                .into_iter()
                .map(i64::from)
                .collect(),
            DType::U32 => npy
                .into_vec::<u32>()
                .with_context(ctx)?
                .into_iter()
                .map(i64::from)
                .collect(),
            DType::I8 => npy
                .into_vec::<i8>()
                .with_context(ctx)?
                .into_iter()
                .map(i64::from)
                .collect(),
            DType::I16 => npy
                .into_vec::<i16>()
                .with_context(ctx)?
                .into_iter()
                .map(i64::from)
                .collect(),
            DType::I32 => npy
                .into_vec::<i32>()
                .with_context(ctx)?
                .into_iter()
                .map(i64::from)
                .collect(),
            _ => npy.into_vec::<i64>().with_context(ctx)?,
        };
        Tensor::from_i64(dtype, file_shape.clone(), v)
    };
    if fortran {
        Ok(from_fortran(t))
    } else {
        Ok(t)
    }
}

/// Reorders a tensor read from a Fortran-order file (first axis fastest) into
/// row-major order; the shape stays the file's shape.
fn from_fortran(t: Tensor) -> Tensor {
    let shape = t.shape.clone();
    let n = t.numel();
    // Element at row-major multi-index i sits at column-major offset sum(i_k * cs_k).
    let mut col_strides = vec![1usize; shape.len()];
    for k in 1..shape.len() {
        col_strides[k] = col_strides[k - 1] * shape[k - 1];
    }
    let src_index = |flat: usize| {
        let mut rem = flat;
        let mut off = 0;
        for k in (0..shape.len()).rev() {
            off += (rem % shape[k]) * col_strides[k];
            rem /= shape[k];
        }
        off
    };
    match &t.data {
        llmc_ir::tensor::Data::F(v) => {
            let out = (0..n).map(|i| v[src_index(i)]).collect();
            Tensor::from_f64(t.dtype, shape.clone(), out)
        }
        llmc_ir::tensor::Data::I(v) => {
            let out = (0..n).map(|i| v[src_index(i)]).collect();
            Tensor::from_i64(t.dtype, shape.clone(), out)
        }
    }
}

fn write_vec<T: npyz::AutoSerialize>(path: &Path, shape: &[u64], v: Vec<T>) -> Result<()> {
    let ctx = || format!("cannot write {}", path.display());
    let file = File::create(path).with_context(ctx)?;
    let mut w = npyz::WriteOptions::new()
        .default_dtype()
        .shape(shape)
        .writer(BufWriter::new(file))
        .begin_nd()
        .with_context(ctx)?;
    w.extend(v).with_context(ctx)?;
    w.finish().with_context(ctx)?;
    Ok(())
}

/// Writes a tensor as a `.npy` file in its own dtype (bf16, which NumPy lacks, is
/// written as f32). Returns the NumPy dtype written.
pub fn write(path: &Path, t: &Tensor) -> Result<&'static str> {
    let shape: Vec<u64> = t.shape.iter().map(|&d| d as u64).collect();
    let f = || t.to_f64();
    let i = || t.to_i64();
    Ok(match t.dtype {
        DType::F32 | DType::BF16 => {
            write_vec(path, &shape, f().into_iter().map(|x| x as f32).collect())?;
            "f4"
        }
        DType::F64 => {
            write_vec(path, &shape, f())?;
            "f8"
        }
        DType::F16 => {
            write_vec(
                path,
                &shape,
                f().into_iter().map(npyz::half::f16::from_f64).collect(),
            )?;
            "f2"
        }
        DType::I64 => {
            write_vec(path, &shape, i())?;
            "i8"
        }
        DType::I32 => {
            write_vec(path, &shape, i().into_iter().map(|x| x as i32).collect())?;
            "i4"
        }
        DType::I16 => {
            write_vec(path, &shape, i().into_iter().map(|x| x as i16).collect())?;
            "i2"
        }
        DType::I8 => {
            write_vec(path, &shape, i().into_iter().map(|x| x as i8).collect())?;
            "i1"
        }
        DType::U8 => {
            write_vec(path, &shape, i().into_iter().map(|x| x as u8).collect())?;
            "u1"
        }
        DType::U16 => {
            write_vec(path, &shape, i().into_iter().map(|x| x as u16).collect())?;
            "u2"
        }
        DType::U32 => {
            write_vec(path, &shape, i().into_iter().map(|x| x as u32).collect())?;
            "u4"
        }
        DType::Bool => {
            write_vec(path, &shape, i().into_iter().map(|x| x != 0).collect())?;
            "b1"
        }
        q => bail!(
            "{}: a {q} tensor has no .npy form (block formats are weights only)",
            path.display()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dtype_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            Tensor::f32(vec![2, 3], vec![0.5, -1.25, 3.0, 1e-3, 7.0, -0.0]),
            Tensor::from_f64(DType::F64, vec![3], vec![1.0 / 3.0, -2.5, 1e300]),
            Tensor::from_f64(DType::F16, vec![2], vec![0.099975586, -65504.0]),
            Tensor::from_i64(DType::I64, vec![2, 2], vec![i64::MIN, -1, 0, i64::MAX]),
            Tensor::from_i64(DType::I32, vec![2], vec![-7, 1 << 30]),
            Tensor::from_i64(DType::I16, vec![1], vec![-300]),
            Tensor::from_i64(DType::I8, vec![3], vec![-128, 0, 127]),
            Tensor::from_i64(DType::U8, vec![2], vec![0, 255]),
            Tensor::from_i64(DType::U16, vec![2], vec![0, 65535]),
            Tensor::from_i64(DType::U32, vec![2], vec![7, 4_294_967_295]),
            Tensor::from_i64(DType::Bool, vec![3], vec![1, 0, 1]),
            Tensor::f32(vec![], vec![4.0]),
        ];
        for (k, t) in cases.iter().enumerate() {
            let p = dir.path().join(format!("{k}.npy"));
            write(&p, t).unwrap();
            assert_eq!(&read(&p).unwrap(), t, "case {k}");
        }
    }

    #[test]
    fn fortran_order_is_reordered() {
        // A hand-written Fortran-order file of [[1, 2, 3], [4, 5, 6]] (i8): the data
        // bytes are column by column, 1 4 2 5 3 6.
        let header = "{'descr': '|i1', 'fortran_order': True, 'shape': (2, 3), }";
        let mut h = header.to_string();
        while !(10 + h.len() + 1).is_multiple_of(64) {
            h.push(' ');
        }
        h.push('\n');
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend((h.len() as u16).to_le_bytes());
        bytes.extend(h.as_bytes());
        bytes.extend([1u8, 4, 2, 5, 3, 6]);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.npy");
        std::fs::write(&p, bytes).unwrap();
        let t = read(&p).unwrap();
        assert_eq!(t.shape, vec![2, 3]);
        assert_eq!(t.to_i64(), vec![1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn bad_files_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("junk.npy");
        std::fs::write(&p, b"not numpy").unwrap();
        let e = format!("{:#}", read(&p).unwrap_err());
        assert!(
            e.contains("junk.npy") && e.contains("not a valid .npy"),
            "{e}"
        );
        let e = format!("{:#}", read(&dir.path().join("nope.npy")).unwrap_err());
        assert!(e.contains("nope.npy"), "{e}");
        // u8 (8-byte unsigned) has no llmc dtype.
        let q = dir.path().join("u64.npy");
        write_vec(&q, &[2], vec![1u64, 2]).unwrap();
        let e = format!("{:#}", read(&q).unwrap_err());
        assert!(e.contains("u64.npy") && e.contains("<u8"), "{e}");
    }
}
