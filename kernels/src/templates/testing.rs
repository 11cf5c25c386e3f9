//! Test helpers for templates: build a one-node module, run it through the reference
//! interpreter and through the template + loop-IR interpreter, compare.

use super::{lower, Lowered};
use crate::interp::{bytes_tensor, run, tensor_bytes};
use llmc_ir::interp::Interpreter;
use llmc_ir::{Attrs, DType, Dim, Module, Op, Shape, Tensor, TensorType};
use std::collections::HashMap;

thread_local! {
    static MMA_ROWS: std::cell::Cell<i64> = const { std::cell::Cell::new(64) };
}

/// Runs `f` with the GPU linears' tensor-core threshold at `rows` (what the CUDA
/// runtime binds to `MMA_ROWS_SYMBOL`: 64, or a huge count for the SIMT baseline).
pub fn with_mma_rows<T>(rows: i64, f: impl FnOnce() -> T) -> T {
    let old = MMA_ROWS.with(|m| m.replace(rows));
    let r = f();
    MMA_ROWS.with(|m| m.set(old));
    r
}

/// A small deterministic generator (xorshift), so tests need no extra crate.
pub struct Rng(u64);

impl Rng {
    /// Seeded.
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    /// Next raw value.
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    /// Uniform in [-1, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }
    /// A float tensor with values in [-scale, scale).
    pub fn tensor(&mut self, dtype: DType, shape: &[usize], scale: f64) -> Tensor {
        let n = shape.iter().product();
        let v = (0..n).map(|_| self.unit() * scale).collect();
        Tensor::from_f64(dtype, shape.to_vec(), v)
    }
    /// An integer tensor with values in [lo, hi).
    pub fn ints(&mut self, dtype: DType, shape: &[usize], lo: i64, hi: i64) -> Tensor {
        let n = shape.iter().product();
        let span = (hi - lo).max(1) as u64;
        let v = (0..n).map(|_| lo + (self.next() % span) as i64).collect();
        Tensor::from_i64(dtype, shape.to_vec(), v)
    }
}

/// A type from a dtype and dims written as strings (`"seq"`, `"4"`).
pub fn tt(dtype: DType, dims: &[&str]) -> TensorType {
    TensorType::new(
        dtype,
        Shape(
            dims.iter()
                .map(|d| d.parse::<i64>().map(Dim::c).unwrap_or_else(|_| Dim::sym(d)))
                .collect(),
        ),
    )
}

/// An operand of a checked node: a graph input (typed, possibly symbolically, with
/// its value) or a weight given as raw bytes (block formats included).
pub enum Arg {
    /// A graph input.
    In(TensorType, Tensor),
    /// A weight: dtype, shape, stored bytes.
    W(DType, Vec<usize>, Vec<u8>),
}

/// Runs `op` on `args` both ways and compares every result within
/// `atol + rtol * |want|`. Returns the kernel's text for inspection.
pub fn check_args(op: Op, attrs: Attrs, args: &[Arg], atol: f64, rtol: f64) -> String {
    check_args_on(false, op, attrs, args, atol, rtol)
}

/// [`check_args`] with the GPU schedule when `gpu` (run by the interpreter's GPU mode:
/// blocks, threads in lock-step, shared memory, barriers, race checks).
pub fn check_args_on(
    gpu: bool,
    op: Op,
    attrs: Attrs,
    args: &[Arg],
    atol: f64,
    rtol: f64,
) -> String {
    let (got, want, k) = run_args_on(gpu, op, attrs, args);
    for (i, (g, wv)) in got.iter().zip(&want).enumerate() {
        for (j, (a, b)) in g.iter().zip(wv).enumerate() {
            let ok = (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= atol + rtol * b.abs();
            assert!(ok, "{op} result {i} element {j}: got {a}, want {b}\n{k}");
        }
    }
    k
}

/// Runs `op` on `args` both ways: (the kernel's results, the reference's results, the
/// kernel's text).
pub fn run_args(op: Op, attrs: Attrs, args: &[Arg]) -> (Vec<Vec<f64>>, Vec<Vec<f64>>, String) {
    run_args_on(false, op, attrs, args)
}

/// [`run_args`] with the GPU schedule when `gpu`.
pub fn run_args_on(
    gpu: bool,
    op: Op,
    attrs: Attrs,
    args: &[Arg],
) -> (Vec<Vec<f64>>, Vec<Vec<f64>>, String) {
    let mut m = Module::new("t");
    let mut ids = Vec::new();
    let mut tensors = Vec::new();
    let mut bufs: Vec<Vec<u8>> = Vec::new();
    let mut syms: HashMap<String, i64> = HashMap::new();
    for (i, a) in args.iter().enumerate() {
        match a {
            Arg::In(t, x) => {
                ids.push(m.graph.add_input(&format!("x{i}"), t.clone()));
                tensors.push(x.clone());
                // A q8_kv input (a KV pool) is given dequantized and stored encoded.
                bufs.push(if t.dtype == DType::Q8Kv {
                    llmc_ir::quant::q8_kv_encode(&x.to_f64())
                } else {
                    tensor_bytes(x)
                });
                for (d, &n) in t.shape.0.iter().zip(&x.shape) {
                    if let [s] = d.symbols()[..] {
                        if *d == Dim::sym(s) {
                            syms.insert(s.to_string(), n as i64);
                        }
                    }
                }
            }
            Arg::W(d, shape, bytes) => {
                let dims: Vec<i64> = shape.iter().map(|&v| v as i64).collect();
                ids.push(m.add_weight(
                    &format!("w{i}"),
                    *d,
                    Shape::of(&dims),
                    llmc_ir::WeightData::Owned(std::sync::Arc::new(bytes.clone())),
                ));
                bufs.push(bytes.clone());
            }
        }
    }
    let outs = m.add_node(op, &ids, attrs).expect("shape rule");
    m.graph.outputs = outs.clone();
    let want = Interpreter::new(&m).run(&tensors).expect("reference run");
    let node = &m.graph.nodes[0];
    let in_tys: Vec<&TensorType> = ids.iter().map(|&v| m.graph.ty(v)).collect();
    let out_tys: Vec<&TensorType> = outs.iter().map(|&v| m.graph.ty(v)).collect();
    let lowered = if gpu {
        let (l, _) = super::gpu::lower(node, &in_tys, &out_tys, op.name()).expect("GPU lowering");
        if let Lowered::Kernel { kernel, .. } = &l {
            crate::gpu::schedule(kernel).unwrap_or_else(|e| panic!("{e}\n{kernel}"));
        }
        l
    } else {
        lower(node, &in_tys, &out_tys, op.name()).expect("lowering")
    };
    let (k, packs, consts, in_place) = match lowered {
        Lowered::Kernel {
            kernel,
            packs,
            consts,
            in_place,
        } => (kernel, packs, consts, in_place),
        other => panic!("expected a kernel, got {other:?}"),
    };
    for p in packs {
        let Arg::W(d, shape, bytes) = &args[p.operand] else {
            panic!(
                "a pack was requested for operand {}, not a weight",
                p.operand
            );
        };
        bufs[p.operand] = super::pack::pack(p.pack, *d, shape[0], shape[1], bytes).expect("pack");
    }
    // The runtime binds the tensor-core threshold (not a shape).
    syms.insert(
        super::gpu::MMA_ROWS_SYMBOL.to_string(),
        MMA_ROWS.with(|m| m.get()),
    );
    let dims: Vec<i64> = k.dims.iter().map(|s| syms[s]).collect();
    for (i, w) in want.iter().enumerate() {
        // A result written in place starts as its operand (the plan aliases them).
        match in_place.iter().find(|(r, _)| *r == i) {
            Some(&(_, op)) => bufs.push(bufs[op].clone()),
            None => {
                let dt = m.graph.ty(outs[i]).dtype;
                let n = dt.storage_bytes(w.numel() as u64).unwrap_or(0) as usize;
                bufs.push(vec![0x5A; n])
            }
        }
    }
    bufs.extend(consts.iter().map(tensor_bytes));
    run(&k, &mut bufs, &dims).unwrap_or_else(|e| panic!("{e}\n{k}"));
    let mut got = Vec::new();
    for (i, w) in want.iter().enumerate() {
        // In the declared type (a q8_kv result decodes to f32, as the reference holds it).
        let dt = m.graph.ty(outs[i]).dtype;
        let g = bytes_tensor(dt, &w.shape, &bufs[args.len() + i]).expect("decode");
        got.push(g.to_f64());
    }
    let want = want.iter().map(|w| w.to_f64()).collect();
    (got, want, k.to_string())
}

/// [`check_args`] with graph inputs only.
pub fn check(
    op: Op,
    attrs: Attrs,
    inputs: &[(TensorType, Tensor)],
    atol: f64,
    rtol: f64,
) -> String {
    let args: Vec<Arg> = inputs
        .iter()
        .map(|(t, x)| Arg::In(t.clone(), x.clone()))
        .collect();
    check_args(op, attrs, &args, atol, rtol)
}
