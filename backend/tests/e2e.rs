//! End to end: a small graph through loop IR, LLVM, the linker and the runtime, its
//! outputs compared with the reference interpreter.

use llmc_backend::run::run_compiled;
use llmc_backend::BuildOptions;
use llmc_ir::interp::Interpreter;
use llmc_ir::{DType, Tensor};

fn close(got: &Tensor, want: &Tensor, tol: f64) {
    assert_eq!(got.shape, want.shape);
    for (i, (g, w)) in got.to_f64().iter().zip(want.to_f64()).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "element {i}: got {g}, want {w}"
        );
    }
}

/// A xorshift64 stream from `seed`: reproducible test data without a dependency.
fn xorshift(mut seed: u64) -> impl FnMut() -> u64 {
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    }
}

/// An f32 tensor of `shape` holding sin(i · k) at flat index i.
fn sin_tensor(shape: &[usize], k: f64) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::from_f64(
        DType::F32,
        shape.to_vec(),
        (0..n).map(|i| ((i as f64) * k).sin()).collect(),
    )
}

#[test]
fn elementwise_and_matmul_graph_runs_compiled() {
    let text = r#"module @e2e {
  graph @main(%a: f32[seq, 4], %b: f32[4, 3], %c: f32[3]) -> (%y: f32[seq, 3], %s: f32[seq, 3]) {
    %m = matmul(%a, %b) : f32[seq, 3]
    %y = add(%m, %c) : f32[seq, 3]
    %s = silu(%y) : f32[seq, 3]
    return %y, %s
  }
}
"#;
    let m = llmc_ir::text::parse(text, "e2e.llmc").expect("parse");
    let runs = vec![
        vec![
            sin_tensor(&[5, 4], 0.7),
            sin_tensor(&[4, 3], 1.3),
            sin_tensor(&[3], 0.4),
        ],
        vec![
            sin_tensor(&[1, 4], 0.2),
            sin_tensor(&[4, 3], 1.1),
            sin_tensor(&[3], 0.9),
        ],
    ];
    for opt in [0u8, 3] {
        let mut opts = BuildOptions::default();
        opts.cpu.opt_level = opt;
        let got = run_compiled(&m, &opts, &runs).unwrap_or_else(|e| panic!("-O{opt}: {e}"));
        for (r, inputs) in runs.iter().enumerate() {
            let want = Interpreter::new(&m).run(inputs).expect("reference");
            for (g, w) in got[r].iter().zip(&want) {
                close(g, w, 1e-5);
            }
        }
    }
}

/// [`quantized_linears`] of GGML's blocks of 32 (and IQ4_NL's).
#[test]
fn quantized_linear_rows_are_batch_invariant_compiled_ggml_blocks() {
    quantized_linears(&[
        DType::Q8_0,
        DType::Q4_0,
        DType::Q4_1,
        DType::Q5_0,
        DType::Q5_1,
        DType::IQ4NL,
    ]);
}

/// [`quantized_linears`] of the K-quant and IQ4_XS super-blocks.
#[test]
fn quantized_linear_rows_are_batch_invariant_compiled_k_quants() {
    quantized_linears(&[
        DType::Q4K,
        DType::Q5K,
        DType::Q6K,
        DType::Q3K,
        DType::Q2K,
        DType::IQ4XS,
    ]);
}

/// [`quantized_linears`] of llmc's own blocks: the int4 groups and the sparse Q8_0s.
#[test]
fn quantized_linear_rows_are_batch_invariant_compiled_llmc_blocks() {
    quantized_linears(&[
        DType::Q4_0G64,
        DType::Q4_1G64,
        DType::Q4_0G128,
        DType::Q4_1G128,
        DType::Q8_0S24,
        DType::Q8_0S832,
    ]);
}

/// A quantized `linear` (the integer path: row quads and single rows over block
/// pairs, an odd block count's trailing block; K-quant and IQ4_XS super-blocks)
/// compiled: every row of a 13-row batch (8 + 4 + 1)
/// equals bit for bit the same row run alone (a sequence's logits do not depend on
/// its batch), and every output is the reference interpreter's within the int16
/// activation quantization (2e-3 of the row's magnitude); for the host's kernels and
/// for `--cpu x86-64` (SSE2, no AVX2).
/// (Three tests above take a third of the formats each, so the harness runs their
/// builds on every core.)
fn quantized_linears(formats: &[DType]) {
    use llmc_ir::{attrs, Dim, Module, Op, Shape, TensorType, WeightData};
    use std::sync::Arc;
    let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
    let f16 = |v: f32| half::f16::from_f32(v).to_le_bytes();
    for &d in formats {
        // The longest rows are taken in slices of blocks (33 blocks: 16 + 16 + 1;
        // 40: 16 + 16 + 8).
        let ks: &[usize] = match d {
            DType::Q4_0 | DType::Q5_1 => &[1056, 128],
            DType::Q4K | DType::Q6K => &[1280, 256],
            DType::Q4_0G64 | DType::Q4_1G64 => &[1088, 192],
            DType::Q4_1G128 | DType::Q4_0G128 => &[1280, 384],
            _ if d.block_len() == 256 => &[256, 512],
            _ => &[96, 128],
        };
        for &k in ks {
            // 48 rows: Q8_0/Q4_0/Q4_1 packed in tiles of 16 (direct decode for a row
            // alone, the unpacked tile for the batch); 40: as stored.
            let n = if k == ks[0] { 48 } else { 40 };
            let mut bytes = Vec::new();
            if d == DType::Q4K || d == DType::Q5K {
                // Super-blocks: D, Dmin, packed 6-bit scales and mins (any bits), Q5_K's
                // fifth bits, nibbles.
                for _ in 0..n * k / 256 {
                    bytes.extend(f16(0.001 + (next() % 100) as f32 * 4e-5));
                    bytes.extend(f16((next() % 100) as f32 * 2e-5));
                    bytes.extend((0..d.block_bytes() - 4).map(|_| next() as u8));
                }
            }
            if d == DType::IQ4XS {
                // Super-blocks: D, scales_h, scales_l (any bits), nibbles.
                for _ in 0..n * k / 256 {
                    bytes.extend(f16(0.0002 + (next() % 100) as f32 * 5e-6));
                    bytes.extend((0..134).map(|_| next() as u8));
                }
            }
            if d == DType::Q6K || d == DType::Q3K {
                // Super-blocks: quants and scales (any bits), D.
                for _ in 0..n * k / 256 {
                    bytes.extend((0..d.block_bytes() - 2).map(|_| next() as u8));
                    bytes.extend(f16(0.0005 + (next() % 100) as f32 * 1e-5));
                }
            }
            if d == DType::Q2K {
                // Super-blocks: scales and minimums, quants (any bits), D, Dmin.
                for _ in 0..n * k / 256 {
                    bytes.extend((0..80).map(|_| next() as u8));
                    bytes.extend(f16(0.001 + (next() % 100) as f32 * 2e-5));
                    bytes.extend(f16(0.0005 + (next() % 100) as f32 * 1e-5));
                }
            }
            if matches!(
                d,
                DType::Q4_0G64 | DType::Q4_1G64 | DType::Q4_0G128 | DType::Q4_1G128
            ) {
                // Groups: d, the `_1` kinds' m, nibbles.
                for _ in 0..n * k / d.block_len() {
                    bytes.extend(f16(0.01 + (next() % 100) as f32 * 1e-4));
                    if matches!(d, DType::Q4_1G64 | DType::Q4_1G128) {
                        bytes.extend(f16((next() % 100) as f32 * -1e-3));
                    }
                    bytes.extend((0..d.block_len() / 2).map(|_| next() as u8));
                }
            }
            let per_32 = d.block_len() == 32;
            for _ in 0..if per_32 { n * k / 32 } else { 0 } {
                let scale = 0.01 + (next() % 100) as f32 * 1e-4;
                // IQ4_NL's levels reach 127: a smaller scale keeps outputs comparable.
                let scale = if d == DType::IQ4NL {
                    scale / 16.0
                } else {
                    scale
                };
                bytes.extend(f16(scale));
                if let Some(keep) = d.sparse_keep() {
                    // q8_0_2of4: two kept of every four (2:4), or any 16 or fewer of
                    // the 32 (16:32); q8_0_8of32: any 8 or fewer. Then `keep` codes
                    // (the tail unread when fewer are kept).
                    const PAIRS: [u32; 6] = [0b0011, 0b0101, 0b1001, 0b0110, 0b1010, 0b1100];
                    let mask = if keep == 16 && next().is_multiple_of(2) {
                        (0..8).fold(0u32, |m, g| m | PAIRS[next() as usize % 6] << (4 * g))
                    } else {
                        let mut m = (next() as u32) ^ ((next() as u32) << 16);
                        while m.count_ones() as usize > keep {
                            m &= !(1u32 << (next() % 32));
                        }
                        m
                    };
                    bytes.extend(mask.to_le_bytes());
                    bytes.extend((0..keep).map(|_| next() as u8));
                    continue;
                }
                if matches!(d, DType::Q4_1 | DType::Q5_1) {
                    bytes.extend(f16((next() % 100) as f32 * -1e-3));
                }

                let quants = match d {
                    DType::Q8_0 => 32,
                    DType::Q5_0 | DType::Q5_1 => 20,
                    _ => 16,
                };
                bytes.extend((0..quants).map(|_| next() as u8));
            }
            let mut m = Module::new("qlin");
            let xt = TensorType::new(DType::F32, Shape(vec![Dim::sym("seq"), Dim::c(k as i64)]));
            let x = m.graph.add_input("x", xt);
            let w = m.add_weight(
                "w",
                d,
                Shape::of(&[n as i64, k as i64]),
                WeightData::Owned(Arc::new(bytes)),
            );
            let y = m.add1(Op::Linear, &[x, w], attrs([])).expect("linear");
            m.graph.outputs.push(y);
            // The same linear on int8 activation blocks (`act_bits = 8`).
            let mut m8 = m.clone();
            let lin = m8.graph.nodes.len() - 1;
            m8.graph.nodes[lin]
                .attrs
                .insert("act_bits".into(), llmc_ir::Attr::Int(8));
            // And with static scales (`act_amax`: every block's range fixed at 1, the
            // inputs' bound).
            let mut m8s = m8.clone();
            m8s.graph.nodes[lin]
                .attrs
                .insert("act_amax".into(), llmc_ir::Attr::Floats(vec![1.0; k / 32]));
            let rows = 13;
            let xv: Vec<f64> = (0..rows * k)
                .map(|_| (next() % 2001) as f64 / 1000.0 - 1.0)
                .collect();
            let mut runs = vec![vec![Tensor::from_f64(
                DType::F32,
                vec![rows, k],
                xv.clone(),
            )]];
            for r in 0..rows {
                let row = xv[r * k..(r + 1) * k].to_vec();
                runs.push(vec![Tensor::from_f64(DType::F32, vec![1, k], row)]);
            }
            let want = Interpreter::new(&m).run(&runs[0]).expect("reference")[0].to_f64();
            // The host's kernels, the SSE2 ones, AVX2's and AVX-512's without VNNI (the
            // tile form's 8- and 16-lane sums; run where the host has the features),
            // each on int16 and on int8 activations (the latter within int8's rounding:
            // 2e-2 of the row's magnitude). AVX-512 with and without VNNI (u8·s8 byte
            // tiles or i16 pairs; vpdpwssd or vpmaddwd) give the same bits.
            // Static int8 scales on the host's kernels only.
            let mut avx512: [Option<Vec<f64>>; 3] = [None, None, None];
            for ((cpu, opts), (bits, m, tol)) in cpu_builds().into_iter().flat_map(|c| {
                let host = c.0.is_empty();
                [(c.clone(), (16, &m, 2e-3)), (c.clone(), (8, &m8, 2e-2))]
                    .into_iter()
                    .chain(host.then_some((c, (-8, &m8s, 2e-2))))
            }) {
                let got = run_compiled(m, &opts, &runs)
                    .unwrap_or_else(|e| panic!("{d} k {k} cpu {cpu:?} int{bits}: {e}"));
                let batch = got[0][0].to_f64();
                let slot = &mut avx512[match bits {
                    16 => 0,
                    8 => 1,
                    _ => 2,
                }];
                if cpu.is_empty() && host_runs("x86-64-v4") || cpu == "x86-64-v4" {
                    match slot {
                        Some(other) => assert!(
                            other
                                .iter()
                                .zip(&batch)
                                .all(|(a, b)| a.to_bits() == b.to_bits()),
                            "{d} k {k} int{bits}: the host's AVX-512 and x86-64-v4's differ"
                        ),
                        None => *slot = Some(batch.clone()),
                    }
                }
                for r in 0..rows {
                    let alone = got[r + 1][0].to_f64();
                    for j in 0..n {
                        let (b, a) = (batch[r * n + j] as f32, alone[j] as f32);
                        assert_eq!(
                            b.to_bits(),
                            a.to_bits(),
                            "{d} k {k} cpu {cpu:?} int{bits}: row {r} col {j}: {b} in the \
                             batch, {a} alone"
                        );
                    }
                    let mag = want[r * n..(r + 1) * n]
                        .iter()
                        .fold(0f64, |a, v| a.max(v.abs()));
                    for j in 0..n {
                        let (g, w) = (batch[r * n + j], want[r * n + j]);
                        assert!(
                            (g - w).abs() <= tol * (1.0 + mag),
                            "{d} k {k} cpu {cpu:?} int{bits}: row {r} col {j}: got {g}, want {w}"
                        );
                    }
                }
            }
        }
    }
}

/// Build options for the host's kernels, the SSE2 ones (`x86-64`), AVX2's
/// (`x86-64-v3`) and AVX-512's without VNNI (`x86-64-v4`): those this machine runs.
fn cpu_builds() -> Vec<(&'static str, BuildOptions)> {
    ["", "x86-64", "x86-64-v3", "x86-64-v4"]
        .into_iter()
        .filter(|cpu| host_runs(cpu))
        .map(|cpu| {
            let mut opts = BuildOptions::default();
            if !cpu.is_empty() {
                opts.cpu.cpu = cpu.to_string();
            }
            (cpu, opts)
        })
        .collect()
}

/// Whether this machine runs code built for the named `--cpu` (the baseline and the
/// host always).
fn host_runs(cpu: &str) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        match cpu {
            "x86-64-v3" => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            "x86-64-v4" => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512dq")
                    && is_x86_feature_detected!("avx512cd")
            }
            _ => true,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        cpu.is_empty()
    }
}

/// `flash_attention`'s tile form compiled (queries in the lanes of [`FTile`]s of key
/// rows and of value columns): several query and key tiles with partial ones at both
/// ends, GQA, causal with a KV prefix, a sliding window, soft-capping and an additive
/// mask that hides every key of some rows; within 1e-5 of the reference interpreter on
/// the host's kernels, the SSE2 ones, AVX2's and AVX-512's.
#[test]
fn flash_attention_tiles_run_compiled() {
    let text = r#"module @fa {
  graph @main(%q: f32[2, 4, seq, 16], %k: f32[2, 2, t, 16], %v: f32[2, 2, t, 24], %mask: f32[2, 1, 1, t]) -> (%plain: f32[2, 4, seq, 24], %causal: f32[2, 4, seq, 24], %window: f32[2, 4, seq, 24]) {
    %plain = flash_attention(%q, %k, %v, %mask) {scale = 0.3} : f32[2, 4, seq, 24]
    %causal = flash_attention(%q, %k, %v) {causal = true, scale = 0.3} : f32[2, 4, seq, 24]
    %window = flash_attention(%q, %k, %v, %mask) {causal = true, scale = 0.3, softcap = 3.0, window = 50} : f32[2, 4, seq, 24]
    return %plain, %causal, %window
  }
}
"#;
    let m = llmc_ir::text::parse(text, "fa.llmc").expect("parse");
    let mask = |t: usize| {
        let mv = (0..2 * t)
            .map(|i| match (i / t, i % t) {
                (1, j) if j < 70 => f64::NEG_INFINITY,
                (_, j) => 0.1 * (j % 5) as f64,
            })
            .collect();
        Tensor::from_f64(DType::F32, vec![2, 1, 1, t], mv)
    };
    let runs: Vec<Vec<Tensor>> = [(70usize, 150usize), (33, 33), (5, 60)]
        .iter()
        .map(|&(s, t)| {
            vec![
                sin_tensor(&[2, 4, s, 16], 0.37),
                sin_tensor(&[2, 2, t, 16], 0.91),
                sin_tensor(&[2, 2, t, 24], 0.53),
                mask(t),
            ]
        })
        .collect();
    for (cpu, opts) in cpu_builds() {
        let got = run_compiled(&m, &opts, &runs).unwrap_or_else(|e| panic!("cpu {cpu:?}: {e}"));
        for (r, inputs) in runs.iter().enumerate() {
            let want = Interpreter::new(&m).run(inputs).expect("reference");
            for (g, w) in got[r].iter().zip(&want) {
                close(g, w, 1e-5);
            }
        }
    }
}

/// `paged_attention` on CPU-layout pools (keys by dimension), compiled: every row of a
/// prefill chunk (taken in row tiles: its query heads in vector lanes) equals bit for
/// bit the same row run alone (the row form a decode row takes), with the chunk
/// crossing a 256-key split and sharing its step with another sequence's rows (tiles
/// that straddle them go row by row); plain, with a window and with soft-capping, for
/// f16 and f32 pools, for every `--cpu` the host runs. Each output is also the
/// reference interpreter's within 1e-5.
#[test]
fn paged_attention_rows_are_batch_invariant_compiled() {
    let mut bits = xorshift(0x2545_f491_4f6c_dd1d);
    let mut next = move || (bits() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0;
    let (h, kvh, d, bs, nblk) = (6usize, 2usize, 64usize, 16usize, 40usize);
    // (sequence, position) of each row: three rows of sequence 1, then a chunk of 37
    // rows of sequence 0 at positions 300..337.
    let mut rows: Vec<(i64, i64)> = (20..23).map(|p| (1, p)).collect();
    rows.extend((300..337).map(|p| (0, p)));
    let width = 24usize;
    let mut order: Vec<i64> = (0..nblk as i64).collect();
    for i in (1..order.len()).rev() {
        let j = ((next() + 1.0) / 2.0 * (i + 1) as f64) as usize % (i + 1);
        order.swap(i, j);
    }
    let tables: Vec<i64> = (0..2 * width)
        .map(|i| {
            if i < width {
                order[i]
            } else {
                order[(i - width + 22) % nblk]
            }
        })
        .collect();
    for (pool_dt, attrs) in [
        ("f16", "k_dim_major = 1, scale = 0.125"),
        ("f32", "k_dim_major = 1, scale = 0.125, window = 100"),
        ("f16", "k_dim_major = 1, scale = 0.125, softcap = 5.0"),
    ] {
        let text = format!(
            "module @pa {{
  graph @main(%q: f32[1, {h}, seq, {d}], %kp: {pool_dt}[{nblk}, {kvh}, {bs}, {d}], %vp: {pool_dt}[{nblk}, {kvh}, {bs}, {d}], %pos: i64[1, seq], %rs: i32[seq], %bt: i32[2, {width}]) -> (%o: f32[1, {h}, seq, {d}]) {{
    %o = paged_attention(%q, %kp, %vp, %pos, %rs, %bt) {{{attrs}}} : f32[1, {h}, seq, {d}]
    return %o
  }}
}}
"
        );
        let m = llmc_ir::text::parse(&text, "pa.llmc").expect("parse");
        let dt = if pool_dt == "f16" {
            DType::F16
        } else {
            DType::F32
        };
        let n = nblk * kvh * bs * d;
        let kp = Tensor::from_f64(dt, vec![nblk, kvh, bs, d], (0..n).map(|_| next()).collect());
        let vp = Tensor::from_f64(dt, vec![nblk, kvh, bs, d], (0..n).map(|_| next()).collect());
        let bt = Tensor::from_i64(DType::I32, vec![2, width], tables.clone());
        let s = rows.len();
        let q: Vec<f64> = (0..h * s * d).map(|_| next()).collect();
        let inputs = |rs: &[(usize, (i64, i64))]| {
            let mut qv = Vec::new();
            for head in 0..h {
                for &(r, _) in rs {
                    let at = (head * s + r) * d;
                    qv.extend_from_slice(&q[at..at + d]);
                }
            }
            vec![
                Tensor::from_f64(DType::F32, vec![1, h, rs.len(), d], qv),
                kp.clone(),
                vp.clone(),
                Tensor::from_i64(
                    DType::I64,
                    vec![1, rs.len()],
                    rs.iter().map(|x| x.1 .1).collect(),
                ),
                Tensor::from_i64(
                    DType::I32,
                    vec![rs.len()],
                    rs.iter().map(|x| x.1 .0).collect(),
                ),
                bt.clone(),
            ]
        };
        let all: Vec<(usize, (i64, i64))> = rows.iter().copied().enumerate().collect();
        let mut runs = vec![inputs(&all)];
        for one in &all {
            runs.push(inputs(std::slice::from_ref(one)));
        }
        let want = Interpreter::new(&m).run(&runs[0]).expect("reference");
        // The host's kernels, and AVX2's and AVX-512's where the host runs them (the
        // 16-lane tiles are two registers per vector with AVX2).
        for (cpu, mut opts) in cpu_builds() {
            opts.cpu.opt_level = 3;
            let got = run_compiled(&m, &opts, &runs)
                .unwrap_or_else(|e| panic!("{attrs} --cpu {cpu}: {e}"));
            close(&got[0][0], &want[0], 1e-5);
            let batch = got[0][0].to_f64();
            for (r, out) in got[1..].iter().enumerate() {
                let alone = out[0].to_f64();
                for head in 0..h {
                    for c in 0..d {
                        let (x, y) = (batch[(head * s + r) * d + c], alone[head * d + c]);
                        assert!(
                            x.to_bits() == y.to_bits(),
                            "{pool_dt} {{{attrs}}} --cpu {cpu}: row {r} (position {}) head {head} element {c}: {x} in the chunk, {y} alone",
                            rows[r].1
                        );
                    }
                }
            }
        }
    }
}
