//! End-to-end tests of the `llmc` binary: its command-line contract (scripts and CI rely
//! on it), its outputs, and that user mistakes give one clear `error:` line and exit
//! code 1, never a panic.

mod common;
use common::*;
use npyz::WriterBuilder;
use std::path::Path;
use std::process::Command;

#[test]
fn help_lists_the_commands() {
    let o = llmc(&["--help"]);
    assert!(o.status.success());
    let h = stdout(&o);
    for cmd in ["build", "inspect", "exec", "run"] {
        assert!(
            h.lines().any(|l| l.trim_start().starts_with(cmd)),
            "--help lacks `{cmd}`:\n{h}"
        );
    }
}

#[test]
fn build_parses_the_contract_flags_for_cuda() {
    let o = llmc(&[
        "build",
        "model.onnx",
        "--target",
        "cuda",
        "--cuda-arch",
        "sm_80",
        "-O3",
        "-o",
        "smollm",
        "--emit",
        "llmc-ir,llvm-ir,ptx,exe",
        "--dump-dir",
        "dumps",
        "--print-ir-after-all",
        "--print-ir-after=fuse-elementwise",
        "--passes=a,b",
        "--time-passes",
    ]);
    assert_user_error(&o, &["model.onnx"]);
    // A flag outside the contract is a usage error (clap's exit code 2), not a panic.
    let o = llmc(&["build", "m.onnx", "-O7"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(!stderr(&o).contains("panicked"));
    let o = llmc(&["build", "m.onnx", "--emit", "wat"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn missing_model_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-model.gguf");
    let m = missing.to_str().unwrap();
    assert_user_error(&llmc(&["inspect", m]), &["no-such-model.gguf"]);
    assert_user_error(
        &llmc(&["exec", m, "--input", "x=x.npy"]),
        &["no-such-model.gguf"],
    );
    assert_user_error(
        &llmc(&["run", m, "--prompt", "hi"]),
        &["no-such-model.gguf"],
    );
}

#[test]
fn onnx_without_an_opset_is_named_for_every_engine() {
    // A ModelProto holding only `ir_version = 7`: it imports no opset, which the ONNX
    // frontend must report naming the file, whichever command reads it.
    let dir = tempfile::tempdir().unwrap();
    let onnx = dir.path().join("m.onnx");
    std::fs::write(&onnx, b"\x08\x07").unwrap();
    let p = onnx.to_str().unwrap();
    let want = ["m.onnx", "imports no opset"];
    assert_user_error(&llmc(&["inspect", p, "--emit", "summary"]), &want);
    assert_user_error(&llmc(&["exec", p, "--engine", "cpu"]), &want);
    assert_user_error(
        &llmc(&["run", p, "--prompt", "x", "--engine", "cpu"]),
        &want,
    );
}

// ----- ONNX models -----

#[test]
fn onnx_models_import_and_run() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/onnx/mlp.onnx");
    let m = model.to_str().unwrap();
    let o = llmc(&["inspect", m, "--emit", "summary"]);
    assert!(o.status.success(), "stderr: {}", stderr(&o));
    let summary = stdout(&o);
    for needle in [
        "%x: f32[batch, 4]",
        "%y: f32[batch, 3]",
        "matmul",
        "relu",
        // W (4x3) and b (3) as f32; the shape-chain constants folded away.
        "weights: 2 tensors, 15 parameters, 60 B",
        // What the file holds: its opsets and its ONNX op histogram.
        "onnx.opset: ai.onnx 17",
        "onnx.ops: 7 nodes: Concat 1, Gather 1, Gemm 1, Relu 1, Reshape 1, Shape 1, Unsqueeze 1",
    ] {
        assert!(
            summary.contains(needle),
            "summary lacks `{needle}`:\n{summary}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let x: Vec<f32> = (0..12).map(|k| (k as f32 - 5.5) / 3.0).collect();
    let xp = dir.path().join("x.npy");
    write_npy(&xp, &[3, 4], x.clone());
    let want = mlp_reference(&x, 3);
    for extra in [&["--engine", "interp"][..], &["--engine", "cpu", "-O3"][..]] {
        let out = dir.path().join(format!("out{}", extra.len()));
        let input = format!("x={}", xp.display());
        let mut args = vec![
            "exec",
            m,
            "--input",
            &input,
            "--output-dir",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let o = llmc(&args);
        assert!(o.status.success(), "{extra:?}: stderr: {}", stderr(&o));
        let (shape, dt, got) = read_npy::<f32>(&out.join("y.npy"));
        assert_eq!((shape, dt.as_str()), (vec![3, 3], "<f4"));
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g - w).abs() <= 1e-6 * w.abs().max(1.0),
                "{extra:?}: {got:?} vs {want:?}"
            );
        }
    }
}

#[test]
fn corrupt_onnx_files_are_explained() {
    let dir = tempfile::tempdir().unwrap();
    let onnx = dir.path().join("m.onnx");
    // Field 1 as a length-delimited value running past the end of the file.
    std::fs::write(&onnx, b"\x0a\xff\xff").unwrap();
    let p = onnx.to_str().unwrap();
    assert_user_error(
        &llmc(&["exec", p, "--engine", "cpu"]),
        &["m.onnx", "not a valid ONNX model"],
    );
}

#[test]
fn unknown_model_kind_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("weights.bin");
    std::fs::write(&f, b"hello").unwrap();
    assert_user_error(
        &llmc(&["inspect", f.to_str().unwrap()]),
        &["weights.bin", "not a model llmc recognises"],
    );
}

// ----- .llmc graphs and .npy files -----

const GRAPH: &str = "module @t {
  graph @main(%a: f32[batch, 3], %b: f32[3], %i: i64[2], %j: i64[2]) -> (%sum: f32[batch, 3], %prod: i64[2], %gt: bool[batch, 3], %half: f16[batch, 3]) {
    %sum = add(%a, %b) : f32[batch, 3]
    %prod = mul(%i, %j) : i64[2]
    %gt = greater(%a, %b) : bool[batch, 3]
    %half = cast(%sum) {to = f16} : f16[batch, 3]
    return %sum, %prod, %gt, %half
  }
}
";

fn write_npy<T: npyz::AutoSerialize>(path: &Path, shape: &[u64], v: Vec<T>) {
    let mut w = npyz::WriteOptions::new()
        .default_dtype()
        .shape(shape)
        .writer(std::fs::File::create(path).unwrap())
        .begin_nd()
        .unwrap();
    w.extend(v).unwrap();
    w.finish().unwrap();
}

fn read_npy<T: npyz::Deserialize>(path: &Path) -> (Vec<u64>, String, Vec<T>) {
    let f = npyz::NpyFile::new(std::fs::File::open(path).unwrap()).unwrap();
    let shape = f.shape().to_vec();
    let dtype = match f.dtype() {
        npyz::DType::Plain(ts) => ts.to_string(),
        other => panic!("unexpected dtype {other:?}"),
    };
    (shape, dtype, f.into_vec::<T>().unwrap())
}

struct Fixture {
    dir: tempfile::TempDir,
    a: Vec<f32>,
    b: Vec<f32>,
    i: Vec<i64>,
    j: Vec<i64>,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("g.llmc"), GRAPH).unwrap();
        let a = vec![0.5f32, -1.25, 3.0, 2.0, 0.1, -7.5];
        let b = vec![1.0f32, -2.0, 3.0];
        let i = vec![3i64, -4_000_000_000];
        let j = vec![-5i64, 2];
        write_npy(&dir.path().join("a.npy"), &[2, 3], a.clone());
        write_npy(&dir.path().join("b.npy"), &[3], b.clone());
        write_npy(&dir.path().join("i.npy"), &[2], i.clone());
        write_npy(&dir.path().join("j.npy"), &[2], j.clone());
        Fixture { dir, a, b, i, j }
    }

    fn p(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_string()
    }
}

#[test]
fn exec_writes_each_output_with_its_dtype() {
    exec_outputs(&[]);
}

#[test]
fn exec_compiled_for_the_cpu_writes_the_same_outputs() {
    exec_outputs(&["--engine", "cpu", "-O0"]);
    exec_outputs(&["--engine", "cpu", "-O3"]);
}

/// Runs the fixture graph with `extra` flags and checks every output.
fn exec_outputs(extra: &[&str]) {
    let fx = Fixture::new();
    let out = fx.dir.path().join("out");
    let (g, a, b, i, j) = (
        fx.p("g.llmc"),
        fx.p("a.npy"),
        fx.p("b.npy"),
        fx.p("i.npy"),
        fx.p("j.npy"),
    );
    let (ia, ib, ii, ij) = (
        format!("a={a}"),
        format!("b={b}"),
        format!("i={i}"),
        format!("%j={j}"),
    );
    let mut args = vec![
        "exec",
        &g,
        "--input",
        &ia,
        "--input",
        &ib,
        "--input",
        &ii,
        "--input",
        &ij,
        "--output-dir",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let o = llmc(&args);
    assert!(o.status.success(), "stderr: {}", stderr(&o));

    // Expectations computed here: numpy broadcasting of b over a's rows.
    let sum: Vec<f32> = (0..6).map(|k| fx.a[k] + fx.b[k % 3]).collect();
    let (shape, dt, got) = read_npy::<f32>(&out.join("sum.npy"));
    assert_eq!((shape, dt.as_str()), (vec![2, 3], "<f4"));
    for (g, e) in got.iter().zip(&sum) {
        assert!(
            (g - e).abs() <= 1e-6 * e.abs().max(1.0),
            "{got:?} vs {sum:?}"
        );
    }
    let (shape, dt, got) = read_npy::<i64>(&out.join("prod.npy"));
    assert_eq!((shape, dt.as_str()), (vec![2], "<i8"));
    assert_eq!(got, vec![fx.i[0] * fx.j[0], fx.i[1] * fx.j[1]]);
    let (_, dt, got) = read_npy::<bool>(&out.join("gt.npy"));
    assert_eq!(dt, "|b1");
    let gt: Vec<bool> = (0..6).map(|k| fx.a[k] > fx.b[k % 3]).collect();
    assert_eq!(got, gt);
    let (_, dt, got) = read_npy::<npyz::half::f16>(&out.join("half.npy"));
    assert_eq!(dt, "<f2");
    let half: Vec<npyz::half::f16> = sum.iter().map(|&x| npyz::half::f16::from_f32(x)).collect();
    assert_eq!(got, half);
}

#[test]
fn cuda_build_emits_ptx_per_arch_and_refuses_what_it_cannot_do() {
    let fx = Fixture::new();
    let out = fx.dir.path().join("g");
    let dump = fx.dir.path().join("dump");
    let o = llmc(&[
        "build",
        &fx.p("g.llmc"),
        "--target",
        "cuda",
        "--cuda-arch",
        "sm_80,sm_90",
        "-o",
        out.to_str().unwrap(),
        "--emit",
        "ptx,llvm-ir",
        "--dump-dir",
        dump.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    for arch in ["sm_80", "sm_90"] {
        let ptx = read(&out.with_extension(format!("{arch}.ptx")));
        assert!(
            ptx.contains(&format!(".target {arch}")) && ptx.contains(".entry llmc_k0_add"),
            "{ptx}"
        );
        assert!(read(&out.with_extension(format!("{arch}.ll"))).contains("ptx_kernel"));
        assert!(dump.join(format!("t.{arch}.ptx")).exists());
    }
    assert!(read(&dump.join("kernels.loopir")).contains("grid.x for"));
    assert!(stderr(&o).contains("GPU kernels"), "{}", stderr(&o));
    let base = ["build", &fx.p("g.llmc"), "-o", out.to_str().unwrap()];
    let with = |extra: &[&str]| {
        let mut v: Vec<&str> = base.to_vec();
        v.extend_from_slice(extra);
        llmc(&v)
    };
    assert_user_error(
        &with(&["--target", "cuda", "--emit", "exe"]),
        &["not a decoder LLM", "language models only"],
    );
    assert_user_error(
        &with(&["--target", "cuda", "--cuda-arch", "sm_12", "--emit", "ptx"]),
        &["--cuda-arch sm_12", "unknown CUDA architecture"],
    );
    assert_user_error(&with(&["--emit", "ptx"]), &["need --target cuda"]);
}

#[test]
fn build_emits_each_kind_and_dumps() {
    let fx = Fixture::new();
    let out = fx.dir.path().join("g");
    let dump = fx.dir.path().join("dump");
    let o = llmc(&[
        "build",
        &fx.p("g.llmc"),
        "-O2",
        "--cpu",
        "x86-64-v3",
        "-o",
        out.to_str().unwrap(),
        "--emit",
        "llmc-ir,llvm-ir,asm,obj,exe",
        "--dump-dir",
        dump.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    assert!(read(&out.with_extension("llmc")).starts_with("module @t"));
    let ll = read(&out.with_extension("ll"));
    assert!(
        ll.contains("@llmc_kernel_table") && ll.contains("define"),
        "{ll}"
    );
    assert!(read(&out.with_extension("s")).contains("llmc_kernel_table"));
    let obj = std::fs::read(out.with_extension("o")).unwrap();
    assert_eq!(&obj[..4], b"\x7fELF");
    for f in ["kernels.loopir", "plan.json", "t.preopt.ll", "t.postopt.ll"] {
        assert!(dump.join(f).exists(), "--dump-dir lacks {f}");
    }
    assert!(read(&dump.join("kernels.loopir")).contains("kernel add"));
    // The executable describes itself and runs the graph.
    let info = Command::new(&out).arg("info").output().unwrap();
    assert!(info.status.success(), "{}", stderr(&info));
    let text = stdout(&info);
    assert!(
        text.contains("cpu=x86-64-v3")
            && text.contains("input %a: f32[batch, 3]")
            && text.contains("(built for x86-64-v3)")
            && text.contains("avx2, fma"),
        "{text}"
    );
    let run = Command::new(&out)
        .args(["run", "--input", &format!("a={}", fx.p("a.npy"))])
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(1));
    assert!(
        stderr(&run).contains("input `b` is not given"),
        "{}",
        stderr(&run)
    );
    // A CPU LLVM does not know is a user error naming it.
    let o = llmc(&[
        "build",
        &fx.p("g.llmc"),
        "--cpu",
        "pentium-9000",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_user_error(&o, &["unknown CPU `pentium-9000`"]);
}

/// An executable built for a CPU with extensions this machine lacks exits at start with
/// an error naming them (never SIGILL); `info` still works and says what is missing.
#[test]
fn executable_checks_the_cpu_at_start() {
    let fx = Fixture::new();
    let out = fx.dir.path().join("g");
    // The first named CPU with an extension this machine lacks.
    let candidates = [
        "sapphirerapids",
        "znver5",
        "cooperlake",
        "x86-64-v4",
        "x86-64-v3",
    ];
    let Some((cpu, lacking)) = candidates.iter().find_map(|c| {
        let need = llmc_backend::cpu::named_cpu_features(c)?;
        let lack: Vec<&str> = need
            .into_iter()
            .filter(|f| llmc_runtime::cpu::has(f) == Some(false))
            .collect();
        (!lack.is_empty()).then_some((*c, lack))
    }) else {
        eprintln!("this CPU has every extension of {candidates:?}: nothing to refuse");
        return;
    };
    let o = llmc(&[
        "build",
        &fx.p("g.llmc"),
        "--cpu",
        cpu,
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let run = Command::new(&out)
        .args(["run", "--input", &format!("a={}", fx.p("a.npy"))])
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(1), "{}", stderr(&run));
    let e = stderr(&run);
    // Every extension the test found missing is named (the executable may name more:
    // it also checks extensions std cannot detect on this toolchain).
    let (needs, rest) = e
        .strip_prefix("error: this executable needs ")
        .and_then(|r| r.split_once(&format!(" (built for {cpu}); this CPU has ")))
        .unwrap_or_else(|| panic!("{e}"));
    let needs: Vec<&str> = needs.split(", ").collect();
    assert!(
        lacking.iter().all(|f| needs.contains(f)),
        "{lacking:?}: {e}"
    );
    assert!(!rest.is_empty(), "{e}");
    let info = Command::new(&out).arg("info").output().unwrap();
    assert!(info.status.success(), "{}", stderr(&info));
    let info = stdout(&info);
    let lacks: Vec<&str> = info
        .lines()
        .find_map(|l| l.strip_prefix("cpu check: this CPU lacks "))
        .unwrap_or_else(|| panic!("{info}"))
        .split(", ")
        .collect();
    assert!(
        lacking.iter().all(|f| lacks.contains(f)),
        "{lacking:?}: {info}"
    );
}

/// True when this CPU has every extension of the named CPU.
fn runs_here(cpu: &str) -> bool {
    llmc_backend::cpu::named_cpu_features(cpu)
        .unwrap()
        .into_iter()
        .all(|f| llmc_runtime::cpu::has(f) != Some(false))
}

/// SmolLM2's greedy reference: the prompt and the text up to the end of sequence.
fn smollm_reference() -> (String, String) {
    let reference = fixture("smollm2/greedy.json");
    let prompt = reference["prompt"].as_str().unwrap().to_string();
    let want = reference["generated_text"].as_str().unwrap();
    let to_eos = want.split("<|im_end|>").next().unwrap().to_string();
    (prompt, to_eos)
}

/// `--cpu portable` embeds the AVX-512, AVX2 and SSE4.2 kernel variants: `info` lists
/// them and marks as chosen the first this CPU has everything for, every variant this
/// CPU can run gives the fixture graph's outputs (`LLMC_CPU_VARIANT` forces one), and
/// forcing one it cannot run, or an unknown one, is a clear error (never SIGILL).
#[test]
fn portable_executable_chooses_a_variant_and_every_variant_agrees() {
    let fx = Fixture::new();
    let out = fx.dir.path().join("g");
    let o = llmc(&[
        "build",
        &fx.p("g.llmc"),
        "--cpu",
        "portable",
        "-o",
        out.to_str().unwrap(),
    ]);
    if !cfg!(target_arch = "x86_64") {
        assert_user_error(&o, &["--cpu portable embeds x86-64 variants"]);
        return;
    }
    assert!(o.status.success(), "{}", stderr(&o));
    let expect = llmc_backend::PORTABLE_CPUS
        .iter()
        .position(|c| runs_here(c))
        .expect("x86-64-v2 runs on every x86-64 CPU this test meets");
    let info = Command::new(&out)
        .arg("info")
        .env_remove("LLMC_CPU_VARIANT")
        .output()
        .unwrap();
    assert!(info.status.success(), "{}", stderr(&info));
    let info = stdout(&info);
    for (i, cpu) in llmc_backend::PORTABLE_CPUS.iter().enumerate() {
        let line = info
            .lines()
            .find(|l| l.starts_with(&format!("cpu variant {i}: {cpu} (")))
            .unwrap_or_else(|| panic!("variant {i} ({cpu}) not listed:\n{info}"));
        assert_eq!(line.ends_with(" -- chosen"), i == expect, "{line}");
        if !runs_here(cpu) {
            assert!(line.contains(" -- this CPU lacks "), "{line}");
        }
    }
    let a = format!("a={}", fx.p("a.npy"));
    let b = format!("b={}", fx.p("b.npy"));
    let i = format!("i={}", fx.p("i.npy"));
    let j = format!("j={}", fx.p("j.npy"));
    let run = |variant: Option<&str>, dir: &str| {
        let mut c = Command::new(&out);
        c.args([
            "run", "--input", &a, "--input", &b, "--input", &i, "--input", &j,
        ])
        .args(["--output-dir", &fx.p(dir)]);
        match variant {
            Some(v) => c.env("LLMC_CPU_VARIANT", v),
            None => c.env_remove("LLMC_CPU_VARIANT"),
        };
        c.output().unwrap()
    };
    let o = run(None, "chosen");
    assert!(o.status.success(), "{}", stderr(&o));
    let (_, _, want) = read_npy::<f32>(&fx.dir.path().join("chosen/sum.npy"));
    let sum: Vec<f32> = (0..6).map(|k| fx.a[k] + fx.b[k % 3]).collect();
    assert_eq!(want, sum);
    for cpu in llmc_backend::PORTABLE_CPUS {
        let o = run(Some(cpu), cpu);
        if runs_here(cpu) {
            assert!(o.status.success(), "{cpu}: {}", stderr(&o));
            let (_, _, got) = read_npy::<f32>(&fx.dir.path().join(format!("{cpu}/sum.npy")));
            assert_eq!(got, want, "{cpu}");
            let (_, _, got) = read_npy::<i64>(&fx.dir.path().join(format!("{cpu}/prod.npy")));
            assert_eq!(got, vec![fx.i[0] * fx.j[0], fx.i[1] * fx.j[1]], "{cpu}");
        } else {
            assert_eq!(o.status.code(), Some(1), "{cpu}: {}", stderr(&o));
            let e = stderr(&o);
            assert!(
                e.starts_with(&format!(
                    "error: LLMC_CPU_VARIANT={cpu}: this executable needs "
                )),
                "{e}"
            );
        }
    }
    let o = run(Some("pentium-9000"), "bad");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(
            "LLMC_CPU_VARIANT=pentium-9000: this executable has the variants \
             x86-64-v4, x86-64-v3, x86-64-v2"
        ),
        "{}",
        stderr(&o)
    );
}

/// SmolLM2 built with `--cpu portable` generates the reference text greedily with
/// every variant this CPU runs (the SSE4.2 one included).
#[test]
fn smollm_portable_executable_generates_the_reference_text_with_every_variant() {
    let Some(m) = model(SMOLLM) else { return };
    if !cfg!(target_arch = "x86_64") {
        return;
    }
    let (prompt, want_to_eos) = smollm_reference();
    let (prompt, want_to_eos) = (prompt.as_str(), want_to_eos.as_str());
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("smollm");
    let o = llmc(&[
        "build",
        m.to_str().unwrap(),
        "-O3",
        "--cpu",
        "portable",
        "-o",
        exe.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    for cpu in llmc_backend::PORTABLE_CPUS {
        if !runs_here(cpu) {
            continue;
        }
        let o = Command::new(&exe)
            .args(["generate", "--prompt", prompt, "--max-tokens", "32"])
            .args(["--temperature", "0"])
            .env("LLMC_CPU_VARIANT", cpu)
            .output()
            .unwrap();
        assert!(o.status.success(), "{cpu}: {}", stderr(&o));
        let out = stdout(&o);
        assert_eq!(out.strip_suffix('\n').unwrap_or(&out), want_to_eos, "{cpu}");
    }
}

#[test]
fn exec_names_missing_extra_and_mistyped_inputs() {
    let fx = Fixture::new();
    let (g, a, b, i, j) = (
        fx.p("g.llmc"),
        fx.p("a.npy"),
        fx.p("b.npy"),
        fx.p("i.npy"),
        fx.p("j.npy"),
    );
    let (ia, ib, ii, ij) = (
        format!("a={a}"),
        format!("b={b}"),
        format!("i={i}"),
        format!("j={j}"),
    );
    let o = llmc(&["exec", &g, "--input", &ia, "--input", &ib]);
    assert_user_error(&o, &["missing input(s) i, j"]);
    let extra = format!("zz={a}");
    let o = llmc(&[
        "exec", &g, "--input", &ia, "--input", &ib, "--input", &ii, "--input", &ij, "--input",
        &extra,
    ]);
    assert_user_error(&o, &["unknown input(s) zz"]);
    // i64 data where the graph wants f32: the input and both dtypes are named.
    let wrong = format!("a={i}");
    let o = llmc(&[
        "exec", &g, "--input", &wrong, "--input", &ib, "--input", &ii, "--input", &ij,
    ]);
    assert_user_error(&o, &["input a", "i64", "f32[batch, 3]"]);
    // A shape that contradicts the graph is the interpreter's error, naming the input.
    let wrong = format!("b={a}");
    let o = llmc(&[
        "exec", &g, "--input", &ia, "--input", &wrong, "--input", &ii, "--input", &ij,
    ]);
    assert_user_error(&o, &["input b"]);
    let o = llmc(&["exec", &g, "--input", "a"]);
    assert_eq!(o.status.code(), Some(2), "a usage error: {}", stderr(&o));
    let nofile = format!("a={}", fx.p("nope.npy"));
    let o = llmc(&[
        "exec", &g, "--input", &nofile, "--input", &ib, "--input", &ii, "--input", &ij,
    ]);
    assert_user_error(&o, &["input a", "nope.npy"]);
}

#[test]
fn malformed_llmc_gives_file_line_col() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.llmc");
    // Line 3 uses an op the table does not have.
    std::fs::write(
        &f,
        "module @m {\n  graph @main(%x: f32[2]) -> (%y: f32[2]) {\n    %y = frobnicate(%x) : f32[2]\n    return %y\n  }\n}\n",
    )
    .unwrap();
    let o = llmc(&["inspect", f.to_str().unwrap()]);
    assert_user_error(&o, &["bad.llmc:3:"]);
    let o = llmc(&["exec", f.to_str().unwrap(), "--input", "x=x.npy"]);
    assert_user_error(&o, &["bad.llmc:3:"]);
    std::fs::write(&f, b"module @m { \xff }").unwrap();
    assert_user_error(&llmc(&["inspect", f.to_str().unwrap()]), &["bad.llmc:1:"]);
}

#[test]
fn inspect_prints_text_that_reads_back_dot_and_summary() {
    let fx = Fixture::new();
    let g = fx.p("g.llmc");
    let o = llmc(&["inspect", &g]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert_eq!(text, GRAPH, "the fixture is written in canonical form");
    // The printed text parses back to the same print.
    let again = fx.dir.path().join("again.llmc");
    std::fs::write(&again, &text).unwrap();
    assert_eq!(stdout(&llmc(&["inspect", again.to_str().unwrap()])), text);

    let dot = stdout(&llmc(&["inspect", &g, "--emit", "dot"]));
    assert!(dot.starts_with("digraph"), "{dot}");
    assert!(dot.contains("add") && dot.contains("cast"), "{dot}");

    let s = stdout(&llmc(&["inspect", &g, "--emit", "summary"]));
    for want in [
        "%a: f32[batch, 3]",
        "%half: f16[batch, 3]",
        "ops: 4 nodes",
        "weights: 0 tensors",
    ] {
        assert!(s.contains(want), "summary lacks `{want}`:\n{s}");
    }
}

// ----- real models (from scripts/fetch-models) -----

/// Every `.llmc` file under `tests/filetests/` (all canonical, valid modules) through
/// the CLI: `llmc inspect FILE --emit llmc-ir` gives the file minus its comment lines,
/// and inspecting that output gives it again.
#[test]
fn inspect_prints_every_filetest_back_identically() {
    fn collect(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                collect(&p, out);
            } else if p.extension().is_some_and(|x| x == "llmc") {
                out.push(p);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/filetests");
    let mut files = Vec::new();
    collect(&root, &mut files);
    assert!(files.len() > 70, "found only {} file tests", files.len());
    let tmp = tempfile::tempdir().unwrap();
    for f in &files {
        let o = llmc(&["inspect", f.to_str().unwrap(), "--emit", "llmc-ir"]);
        assert!(o.status.success(), "{}: {}", f.display(), stderr(&o));
        let src = std::fs::read_to_string(f).unwrap();
        let body: String = src
            .lines()
            .filter(|l| !l.trim_start().starts_with(';'))
            .map(|l| format!("{l}\n"))
            .collect();
        let printed = stdout(&o);
        assert_eq!(
            printed,
            body,
            "{} does not print back identically",
            f.display()
        );
        let again = tmp.path().join("again.llmc");
        std::fs::write(&again, &printed).unwrap();
        let o2 = llmc(&["inspect", again.to_str().unwrap(), "--emit", "llmc-ir"]);
        assert_eq!(
            stdout(&o2),
            printed,
            "{}: printing is not stable",
            f.display()
        );
    }
}

const SMOLLM: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

#[test]
fn smollm_summary_counts_every_parameter() {
    let Some(m) = model(SMOLLM) else { return };
    let o = llmc(&["inspect", m.to_str().unwrap(), "--emit", "summary"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = stdout(&o);
    // SmolLM2-135M: vocab 49152, hidden 576, 30 layers, 9 query / 3 KV heads of 64,
    // MLP 1536, tied embeddings.
    let (v, h, kv, ff, layers) = (49152u64, 576u64, 192u64, 1536u64, 30u64);
    let per_layer = 2 * h * h + 2 * kv * h + 3 * ff * h + 2 * h;
    let total = v * h + layers * per_layer + h;
    let grouped = {
        let d = total.to_string();
        let mut g = String::new();
        for (k, c) in d.chars().enumerate() {
            if k > 0 && (d.len() - k).is_multiple_of(3) {
                g.push(',');
            }
            g.push(c);
        }
        g
    };
    assert!(
        s.contains(&format!("{grouped} parameters")),
        "expected {grouped}:\n{s}"
    );
    for want in [
        "%ids: i64[batch, seq]",
        "%logits: f32[batch, 49152]",
        "architecture: llama",
        "kv_append",
        "attention",
    ] {
        assert!(s.contains(want), "summary lacks `{want}`:\n{s}");
    }
}

#[test]
fn smollm_greedy_matches_the_transformers_reference() {
    let Some(m) = model(SMOLLM) else { return };
    // Greedy text from Hugging Face transformers on the same (dequantized) weights,
    // made by scripts/reference/smollm2_reference.py.
    let reference = fixture("smollm2/greedy.json");
    let prompt = reference["prompt"].as_str().unwrap();
    let want = reference["generated_text"].as_str().unwrap();
    let o = llmc(&[
        "run",
        m.to_str().unwrap(),
        "--prompt",
        prompt,
        "--max-tokens",
        "32",
        "--temperature",
        "0",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let text = out.strip_suffix('\n').unwrap_or(&out);
    assert!(text.starts_with(" Paris"), "stdout: {text:?}");
    // The reference ran 32 plain argmax steps; `llmc run` stops at the first EOS
    // (`<|im_end|>`, the 30th token), so all 29 tokens before it must agree.
    let want_to_eos = want.split("<|im_end|>").next().unwrap();
    assert_eq!(text, want_to_eos, "llmc vs transformers greedy text");
    let e = stderr(&o);
    assert!(e.contains("prefill") && e.contains("tok/s"), "stderr: {e}");
    assert!(
        e.contains("29 tokens") && e.contains("end of sequence"),
        "stderr: {e}"
    );
}

#[test]
fn smollm_compiled_executable_generates_the_reference_text() {
    let Some(m) = model(SMOLLM) else { return };
    let (prompt, want_to_eos) = smollm_reference();
    let (prompt, want_to_eos) = (prompt.as_str(), want_to_eos.as_str());
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("smollm");
    // llmc build smollm.gguf -o smollm && ./smollm generate --prompt ...
    let o = llmc(&[
        "build",
        m.to_str().unwrap(),
        "-O3",
        "-o",
        exe.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = Command::new(&exe)
        .args([
            "generate",
            "--prompt",
            prompt,
            "--max-tokens",
            "32",
            "--temperature",
            "0",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert_eq!(out.strip_suffix('\n').unwrap_or(&out), want_to_eos);
    let e = stderr(&o);
    assert!(
        e.contains("29 tokens") && e.contains("end of sequence"),
        "stderr: {e}"
    );
    let info = Command::new(&exe).arg("info").output().unwrap();
    assert!(
        stdout(&info).contains("language model: context 8192"),
        "{}",
        stdout(&info)
    );
    // The same through `llmc run --engine cpu`.
    let o = llmc(&[
        "run",
        m.to_str().unwrap(),
        "--prompt",
        prompt,
        "--max-tokens",
        "32",
        "--engine",
        "cpu",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert_eq!(out.strip_suffix('\n').unwrap_or(&out), want_to_eos);
}

/// `llmc build smollm.gguf --target cuda` links one executable holding the PTX for
/// each `--cuda-arch` and every kernel's launch: `info` lists them (and the ptxas
/// report where ptxas ran). On a machine without the CUDA driver every model command
/// exits 1 with the one clear error (no panic); where a GPU is attached, it generates
/// the reference text (the GPU runs and checks live in `scripts/gpu-check`).
#[test]
fn smollm_cuda_executable_runs_or_says_no_driver() {
    let Some(m) = model(SMOLLM) else { return };
    let (prompt, want_to_eos) = smollm_reference();
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("smollm-cuda");
    let o = llmc(&[
        "build",
        m.to_str().unwrap(),
        "-O3",
        "--target",
        "cuda",
        "--cuda-arch",
        "sm_80,sm_90",
        "-o",
        exe.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("GPU kernels"), "{}", stderr(&o));
    let info = Command::new(&exe).arg("info").output().unwrap();
    let text = stdout(&info);
    assert!(info.status.success(), "{}", stderr(&info));
    assert!(
        text.contains("target: cuda; PTX for sm_80, sm_90")
            && text.contains("sm_90 llmc_k")
            && text.contains("paged_attention")
            && text.contains("language model: context 8192"),
        "{text}"
    );
    if llmc_backend::ptxas::find().is_some() {
        assert!(
            text.contains("cubins (ptxas at build time) for sm_80, sm_90"),
            "{text}"
        );
        // The greedy picks: a block of 1024 threads per logits row, no spills.
        let argmax: Vec<&str> = text.lines().filter(|l| l.contains("_argmax_")).collect();
        assert_eq!(argmax.len(), 2, "{text}");
        for l in argmax {
            assert!(
                l.contains("1024x1x1 threads") && l.contains(" 0 B spilled"),
                "{l}"
            );
        }
    }
    let no_driver =
        "error: no CUDA driver found (libcuda.so.1): this executable was built with --target cuda";
    for args in [
        &[
            "generate",
            "--prompt",
            &prompt,
            "--max-tokens",
            "32",
            "--temperature",
            "0",
        ][..],
        &["bench", "--gen-tokens", "4"],
        &["serve", "--port", "0"],
        &["perplexity", "--file", "/nonexistent"],
    ] {
        let o = Command::new(&exe).args(args).output().unwrap();
        if llmc_runtime::cuda::driver_present() {
            if args[0] == "generate" {
                assert!(o.status.success(), "{}", stderr(&o));
                let out = stdout(&o);
                assert_eq!(out.strip_suffix('\n').unwrap_or(&out), want_to_eos);
            }
            continue;
        }
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        assert_eq!(stderr(&o).trim_end(), no_driver, "{args:?}");
    }
    let o = Command::new(&exe)
        .args(["run", "--input", "x=y.npy"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
}

const GEMMA3: &str = "gemma-3-270m-Q4_K_M.gguf";

/// llama-quantize's Q4_K_M (Q5_0, Q8_0, Q4_K and Q6_K matrices) builds for CUDA, and
/// every linear is a GEMV kernel of many threads: none takes the CPU-only tile form
/// (the build used to fail on it) or a one-thread generic kernel (the K-quant down
/// projections did), as `info`'s ptxas report shows.
#[test]
fn gemma3_q4_k_m_builds_for_cuda_with_every_linear_on_the_gemv() {
    let Some(m) = model(GEMMA3) else { return };
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("gemma-cuda");
    let o = llmc(&[
        "build",
        m.to_str().unwrap(),
        "-O3",
        "--target",
        "cuda",
        "--cuda-arch",
        "sm_90",
        "-o",
        exe.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    if llmc_backend::ptxas::find().is_none() {
        return;
    }
    let info = Command::new(&exe).arg("info").output().unwrap();
    let text = stdout(&info);
    let linears: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("sm_90 llmc_k") && l.contains("_linear_"))
        .collect();
    assert!(linears.len() >= 5, "{text}");
    for l in linears {
        assert!(
            l.contains("256x1x1 threads") && l.contains(" 0 B spilled"),
            "{l}\n{text}"
        );
    }
}

/// Greedy text of the Gemma 3 270M GGUF (Q4_K_M: Q5_0, Q8_0, Q4_K and Q6_K weights;
/// sliding-window and global layers, QK-norm, sandwich norms, two RoPE bases) through
/// `engine`, against transformers on the same weights dequantized to f32
/// (tests/fixtures/gemma3/greedy.json, scripts/reference/gemma3_reference.py).
fn gemma3_greedy(engine: &str) {
    let Some(m) = model(GEMMA3) else { return };
    let reference = fixture("gemma3/greedy.json");
    let prompt = reference["prompt"].as_str().unwrap();
    let want = reference["generated_text"].as_str().unwrap();
    let n = reference["generated_ids"].as_array().unwrap().len();
    let o = llmc(&[
        "run",
        m.to_str().unwrap(),
        "--prompt",
        prompt,
        "--max-tokens",
        &n.to_string(),
        "--temperature",
        "0",
        "--engine",
        engine,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let text = out.strip_suffix('\n').unwrap_or(&out);
    assert_eq!(text, want, "llmc ({engine}) vs transformers greedy text");
    // The prompt is "<bos>" + 5 tokens, as transformers tokenized it.
    let prompt_len = reference["prompt_ids"].as_array().unwrap().len();
    let e = stderr(&o);
    assert!(
        engine == "cpu" || e.contains(&format!("{prompt_len} tokens")),
        "stderr: {e}"
    );
}

#[test]
fn gemma3_greedy_matches_transformers_through_the_interpreter() {
    gemma3_greedy("interp");
}

#[test]
fn gemma3_greedy_matches_transformers_compiled_for_the_cpu() {
    gemma3_greedy("cpu");
}

#[test]
fn minilm_exec_matches_the_sentence_transformers_embedding() {
    minilm_exec(&[]);
}

#[test]
fn minilm_compiled_for_the_cpu_matches_the_reference_embedding() {
    minilm_exec(&["--engine", "cpu", "-O3"]);
}

/// Embeds one reference sentence with `extra` flags and compares with the
/// sentence-transformers embedding.
fn minilm_exec(extra: &[&str]) {
    let Some(m) = model("all-MiniLM-L6-v2") else {
        return;
    };
    let reference = fixture("minilm/reference.json");
    let k = 4; // "A short one"
    let ids: Vec<i64> = reference["token_ids"][k]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    let want: Vec<f64> = reference["embeddings"][k]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let n = ids.len() as u64;
    let dir = tempfile::tempdir().unwrap();
    let p = |f: &str| dir.path().join(f);
    write_npy(&p("ids.npy"), &[1, n], ids.clone());
    write_npy(&p("mask.npy"), &[1, n], vec![1i64; ids.len()]);
    write_npy(&p("pos.npy"), &[1, n], (0..n as i64).collect());
    let arg = |name: &str| format!("{name}={}", p(&format!("{name}.npy")).display());
    let (ids_a, mask_a, pos_a) = (arg("ids"), arg("mask"), arg("pos"));
    let mut args = vec![
        "exec",
        m.to_str().unwrap(),
        "--input",
        &ids_a,
        "--input",
        &mask_a,
        "--input",
        &pos_a,
        "--output-dir",
        dir.path().to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let o = llmc(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let (shape, _, got) = read_npy::<f32>(&p("embedding.npy"));
    assert_eq!(shape, vec![1, want.len() as u64]);
    let dot: f64 = got.iter().zip(&want).map(|(a, b)| *a as f64 * b).sum();
    let na: f64 = got.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = want.iter().map(|b| b * b).sum::<f64>().sqrt();
    let cos = dot / (na * nb);
    // f32 arithmetic in a different order than PyTorch: agreement to ~1e-6 relative.
    assert!(cos > 0.99999, "cosine similarity {cos}");
    let max_diff = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (*a as f64 - b).abs())
        .fold(0.0, f64::max);
    assert!(max_diff < 1e-4, "max abs difference {max_diff}");
}

#[test]
fn smollm_chat_answers_and_stops_at_end_of_turn() {
    let Some(m) = model(SMOLLM) else { return };
    let o = llmc(&[
        "run",
        m.to_str().unwrap(),
        "--prompt",
        "What is the capital of France?",
        "--chat",
        "--max-tokens",
        "24",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("Paris"), "stdout: {text:?}");
    assert!(
        !text.contains("<|im_end|>"),
        "special tokens leak: {text:?}"
    );
    assert!(
        stderr(&o).contains("stopped at end of sequence"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn smollm_sampling_is_reproducible_for_a_seed() {
    let Some(m) = model(SMOLLM) else { return };
    let m = m.to_str().unwrap();
    let gen = |seed: &str| {
        let o = llmc(&[
            "run",
            m,
            "--prompt",
            "Once upon a time",
            "--max-tokens",
            "6",
            "--temperature",
            "1.0",
            "--top-k",
            "40",
            "--top-p",
            "0.95",
            "--seed",
            seed,
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o)
    };
    let a = gen("11");
    assert!(!a.trim().is_empty());
    assert_eq!(a, gen("11"), "same seed, different text");
}

#[test]
fn run_rejects_bad_sampling_flags_and_non_decoders() {
    let fx = Fixture::new();
    let o = llmc(&["run", &fx.p("g.llmc"), "--prompt", "hi"]);
    assert_user_error(&o, &["needs a decoder graph", "%a: f32[batch, 3]"]);
    if let Some(m) = model(SMOLLM) {
        let o = llmc(&[
            "run",
            m.to_str().unwrap(),
            "--prompt",
            "hi",
            "--top-p",
            "1.5",
        ]);
        assert_user_error(&o, &["top_p"]);
    }
}

#[test]
fn explain_fusion_names_what_blocked_each_candidate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m");
    let run = |file: &str| {
        let model = root.join("tests/filetests/optimize").join(file);
        let o = llmc(&[
            "build",
            model.to_str().unwrap(),
            "-O3",
            "--explain-fusion",
            "--emit",
            "llmc-ir",
            "-o",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        stderr(&o)
    };
    let e = run("attention/wrong-axis.llmc");
    assert!(
        e.contains("attention candidate %p (softmax)")
            && e.contains("softmax over axis 2; attention needs the last axis (3)"),
        "{e}"
    );
    let e = run("fusion/rms-norm-wrong-axis.llmc");
    assert!(e.contains("reduce_mean over axes [1]"), "{e}");
    assert!(
        e.contains("explain-fusion: 1 candidate(s) left unfused"),
        "{e}"
    );
    // Fused: nothing to explain, and the summary counts the fused op.
    let e = run("attention/bert.llmc");
    assert!(
        e.contains("explain-fusion: 0 candidate(s) left unfused; fused ops: 1 flash_attention"),
        "{e}"
    );
    assert_eq!(e.matches("explain-fusion").count(), 1, "{e}");
}

/// `llmc inspect --quantize F --emit summary` counts the bytes per format a build
/// would store: SmolLM2's 1536-wide down projections in q4_k, its 576-wide matrices in
/// llama-quantize's fallback q5_0, the head in q8_0; calibrated options are refused.
#[test]
fn inspect_counts_bytes_per_format_after_quantize() {
    let Some(m) = model("SmolLM2-135M-Instruct-hf") else {
        return;
    };
    let m = m.to_str().unwrap();
    let o = llmc(&["inspect", m, "--quantize", "q4_k", "--emit", "summary"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    for want in [
        "q4_k      30 tensors",
        "q5_0     180 tensors",
        "q8_0       1 tensors",
    ] {
        assert!(out.contains(want), "{want}: {out}");
    }
    assert_user_error(
        &llmc(&["inspect", m, "--quantize", "q4_0,gptq", "--emit", "summary"]),
        &["need calibration", "llmc build"],
    );
}
