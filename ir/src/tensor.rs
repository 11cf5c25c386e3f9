//! Concrete tensors for the reference interpreter, constants and test fixtures.
//! Storage is deliberately simple: every float type is held as `f64` values already
//! rounded to the dtype's precision, every integer and bool type as `i64`. That keeps
//! each op's reference semantics one short function, obviously correct, not fast.

use crate::DType;

/// Element storage.
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    /// Floats (f16/bf16/f32/f64), rounded to the dtype's precision.
    F(Vec<f64>),
    /// Integers and bools (bools are 0 or 1).
    I(Vec<i64>),
}

/// A dense tensor, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// Element type (never a block format: those are dequantized on load).
    pub dtype: DType,
    /// Concrete dims.
    pub shape: Vec<usize>,
    /// Elements, `shape.iter().product()` of them.
    pub data: Data,
}

/// Rounds an f64 to the precision of a float dtype.
pub fn round_to(dtype: DType, v: f64) -> f64 {
    match dtype {
        DType::F32 => v as f32 as f64,
        DType::F16 => half::f16::from_f64(v).to_f64(),
        DType::BF16 => half::bf16::from_f64(v).to_f64(),
        _ => v,
    }
}

/// Wraps an i64 to the range of an integer dtype (two's complement, as a cast does).
pub fn wrap_int(dtype: DType, v: i64) -> i64 {
    match dtype {
        DType::I32 => v as i32 as i64,
        DType::I16 => v as i16 as i64,
        DType::I8 => v as i8 as i64,
        DType::U8 => v as u8 as i64,
        DType::U16 => v as u16 as i64,
        DType::U32 => v as u32 as i64,
        DType::Bool => (v != 0) as i64,
        _ => v,
    }
}

impl Tensor {
    /// A float tensor; values are rounded to `dtype`.
    pub fn from_f64(dtype: DType, shape: Vec<usize>, mut v: Vec<f64>) -> Tensor {
        debug_assert!(dtype.is_float());
        debug_assert_eq!(v.len(), shape.iter().product::<usize>());
        for x in &mut v {
            *x = round_to(dtype, *x);
        }
        Tensor {
            dtype,
            shape,
            data: Data::F(v),
        }
    }

    /// An f32 tensor.
    pub fn f32(shape: Vec<usize>, v: Vec<f32>) -> Tensor {
        Tensor::from_f64(DType::F32, shape, v.into_iter().map(|x| x as f64).collect())
    }

    /// An integer or bool tensor; values are wrapped to `dtype`.
    pub fn from_i64(dtype: DType, shape: Vec<usize>, mut v: Vec<i64>) -> Tensor {
        debug_assert!(dtype.is_int() || dtype == DType::Bool);
        debug_assert_eq!(v.len(), shape.iter().product::<usize>());
        for x in &mut v {
            *x = wrap_int(dtype, *x);
        }
        Tensor {
            dtype,
            shape,
            data: Data::I(v),
        }
    }

    /// A scalar of any non-block dtype from an f64 value.
    pub fn scalar(dtype: DType, v: f64) -> Tensor {
        if dtype.is_float() {
            Tensor::from_f64(dtype, vec![], vec![v])
        } else {
            Tensor::from_i64(dtype, vec![], vec![v as i64])
        }
    }

    /// A tensor of zeros.
    pub fn zeros(dtype: DType, shape: Vec<usize>) -> Tensor {
        let n = shape.iter().product();
        if dtype.is_float() {
            Tensor {
                dtype,
                shape,
                data: Data::F(vec![0.0; n]),
            }
        } else {
            Tensor {
                dtype,
                shape,
                data: Data::I(vec![0; n]),
            }
        }
    }

    /// Element count.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Elements as f64 (integers converted).
    pub fn to_f64(&self) -> Vec<f64> {
        match &self.data {
            Data::F(v) => v.clone(),
            Data::I(v) => v.iter().map(|&x| x as f64).collect(),
        }
    }

    /// Elements as i64 (floats truncated toward zero, as a cast does).
    pub fn to_i64(&self) -> Vec<i64> {
        match &self.data {
            Data::F(v) => v.iter().map(|&x| x as i64).collect(),
            Data::I(v) => v.clone(),
        }
    }

    /// Element `i` as f64.
    pub fn get_f64(&self, i: usize) -> f64 {
        match &self.data {
            Data::F(v) => v[i],
            Data::I(v) => v[i] as f64,
        }
    }

    /// Element `i` as i64.
    pub fn get_i64(&self, i: usize) -> i64 {
        match &self.data {
            Data::F(v) => v[i] as i64,
            Data::I(v) => v[i],
        }
    }

    /// Row-major strides of the shape.
    pub fn strides(&self) -> Vec<usize> {
        strides(&self.shape)
    }

    /// Same data, converted to another dtype (a cast).
    pub fn cast(&self, to: DType) -> Tensor {
        if to.is_float() {
            Tensor::from_f64(to, self.shape.clone(), self.to_f64())
        } else if to == DType::Bool {
            let v = self
                .to_f64()
                .into_iter()
                .map(|x| (x != 0.0) as i64)
                .collect();
            Tensor::from_i64(to, self.shape.clone(), v)
        } else {
            let v = match &self.data {
                // Float -> int truncates toward zero; NaN/inf saturate like Rust's `as`,
                // to i32 for targets of 32 bits or fewer but u32 (the compiled
                // kernels' one vector conversion), to i64 otherwise.
                Data::F(v)
                    if matches!(
                        to,
                        DType::I8 | DType::U8 | DType::I16 | DType::U16 | DType::I32
                    ) =>
                {
                    v.iter().map(|&x| x as i32 as i64).collect()
                }
                Data::F(v) => v.iter().map(|&x| x as i64).collect(),
                Data::I(v) => v.clone(),
            };
            Tensor::from_i64(to, self.shape.clone(), v)
        }
    }

    /// Reinterprets the shape (same element count).
    pub fn reshaped(mut self, shape: Vec<usize>) -> Tensor {
        debug_assert_eq!(shape.iter().product::<usize>(), self.numel());
        self.shape = shape;
        self
    }
}

/// Row-major strides for `shape`.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Maps a flat index of `out_shape` to the flat index of a tensor of `in_shape` that
/// broadcasts to it (numpy rules, right-aligned).
pub fn broadcast_index(flat: usize, out_shape: &[usize], in_shape: &[usize]) -> usize {
    let off = out_shape.len() - in_shape.len();
    let mut rem = flat;
    let mut idx = 0;
    let mut in_stride = 1;
    for d in (0..out_shape.len()).rev() {
        let coord = rem % out_shape[d];
        rem /= out_shape[d];
        if d >= off {
            let n = in_shape[d - off];
            if n != 1 {
                idx += coord * in_stride;
            }
            in_stride *= n;
        }
    }
    idx
}

/// Numpy broadcast of concrete shapes.
pub fn broadcast_shapes(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let x = if i + a.len() >= n {
            a[i + a.len() - n]
        } else {
            1
        };
        let y = if i + b.len() >= n {
            b[i + b.len() - n]
        } else {
            1
        };
        out[i] = if x == y || y == 1 {
            x
        } else if x == 1 {
            y
        } else {
            return None;
        };
    }
    Some(out)
}
