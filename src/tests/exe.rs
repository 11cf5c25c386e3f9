//! End-to-end tests of the executables `llmc build` emits: that one file, copied alone
//! into an empty folder and started with an empty environment, generates the
//! reference text (GGUF and Hugging Face folder) or embeddings (MiniLM); that it links
//! only system libraries; that ONNX graphs compile and agree with the interpreter;
//! that emit kinds and `-O` levels agree; that `info` describes the build; and that
//! bad flags to the executable are one `error:` line, never a panic.
//!
//! Each model is built once per test process (a build takes seconds to tens of
//! seconds) into `CARGO_TARGET_TMPDIR`; tests needing a model from
//! `scripts/fetch-models` print "skipped" when it is absent, and so does the test of
//! real ONNX exports (`scripts/onnx-exports`, `$LLMC_ONNX_EXPORTS`).

mod common;
use common::*;
use npyz::WriterBuilder;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

const SMOLLM: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const SMOLLM_HF: &str = "SmolLM2-135M-Instruct-hf";
const MINILM: &str = "all-MiniLM-L6-v2";

/// `llmc build MODEL -O3 -o OUT` into the test-process folder.
fn build(model: &Path, out_name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("exe-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join(out_name);
    let t0 = std::time::Instant::now();
    let o = llmc(&[
        "build",
        model.to_str().unwrap(),
        "-O3",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    eprintln!(
        "built {} in {:.1} s ({:.1} MB)",
        out.display(),
        t0.elapsed().as_secs_f64(),
        std::fs::metadata(&out).unwrap().len() as f64 / 1e6
    );
    out
}

/// The SmolLM2 GGUF executable, built once per process.
fn smollm_exe() -> Option<&'static Path> {
    static EXE: OnceLock<Option<PathBuf>> = OnceLock::new();
    EXE.get_or_init(|| model(SMOLLM).map(|m| build(&m, "smollm")))
        .as_deref()
}

/// The MiniLM executable, built once per process.
fn minilm_exe() -> Option<&'static Path> {
    static EXE: OnceLock<Option<PathBuf>> = OnceLock::new();
    EXE.get_or_init(|| model(MINILM).map(|m| build(&m, "minilm")))
        .as_deref()
}

/// The greedy text of the transformers reference up to its first end of turn (where
/// `generate` stops).
fn smollm_reference() -> (String, String) {
    let reference = fixture("smollm2/greedy.json");
    let prompt = reference["prompt"].as_str().unwrap().to_string();
    let want = reference["generated_text"].as_str().unwrap();
    (prompt, want.split("<|im_end|>").next().unwrap().to_string())
}

/// Copies `exe` alone into an empty folder and runs it there with an empty
/// environment.
fn run_alone(exe: &Path, args: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join(exe.file_name().unwrap());
    std::fs::copy(exe, &copy).unwrap();
    let o = Command::new(&copy)
        .args(args)
        .env_clear()
        .current_dir(dir.path())
        .output()
        .unwrap();
    // Nothing was written next to it.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 1, "the executable wrote files: {left:?}");
    o
}

fn greedy_args(prompt: &str) -> Vec<&str> {
    vec![
        "generate",
        "--prompt",
        prompt,
        "--max-tokens",
        "32",
        "--temperature",
        "0",
    ]
}

#[test]
fn smollm_executable_copied_alone_with_an_empty_environment_generates_the_reference() {
    let Some(exe) = smollm_exe() else { return };
    let (prompt, want) = smollm_reference();
    let o = run_alone(exe, &greedy_args(&prompt));
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert_eq!(out.strip_suffix('\n').unwrap_or(&out), want);
    assert!(
        stderr(&o).contains("29 tokens") && stderr(&o).contains("end of sequence"),
        "{}",
        stderr(&o)
    );
}

/// The libraries `ldd` lists for `exe`, by file name.
fn linked_libraries(exe: &Path) -> Option<Vec<String>> {
    let o = Command::new("ldd").arg(exe).output().ok()?;
    assert!(o.status.success(), "ldd: {}", stderr(&o));
    Some(
        stdout(&o)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .map(|l| l.rsplit('/').next().unwrap_or(l).to_string())
            .collect(),
    )
}

/// The plan (JSON) an executable carries, read through its trailer.
fn embedded_plan(exe: &Path) -> String {
    let bytes = std::fs::read(exe).unwrap();
    let t = &bytes[bytes.len() - 40..];
    assert_eq!(&t[..8], b"LLMCPAY1");
    let u = |i: usize| u64::from_le_bytes(t[8 + 8 * i..16 + 8 * i].try_into().unwrap()) as usize;
    String::from_utf8(bytes[u(0)..u(0) + u(1)].to_vec()).unwrap()
}

#[test]
fn executables_link_only_system_libraries_and_name_no_build_paths() {
    let allowed = [
        "linux-vdso.so.1",
        "libc.so.6",
        "libm.so.6",
        "libgcc_s.so.1",
        "ld-linux-x86-64.so.2",
        "ld-linux-aarch64.so.1",
        "libpthread.so.0",
        "libdl.so.2",
        "librt.so.1",
        "libutil.so.1",
    ];
    let models = dirs_of_models();
    for exe in [smollm_exe(), minilm_exe()].into_iter().flatten() {
        let Some(libs) = linked_libraries(exe) else {
            eprintln!("skipped: ldd not found");
            return;
        };
        assert!(libs.iter().any(|l| l == "libc.so.6"), "{libs:?}");
        for l in &libs {
            assert!(
                allowed.contains(&l.as_str()),
                "{} links {l} (all: {libs:?})",
                exe.display()
            );
        }
        // The tokenizer and templates are embedded: the plan names no file of the
        // model folder or of the source tree.
        let plan = embedded_plan(exe);
        for dir in &models {
            assert!(
                !plan.contains(dir.as_str()),
                "{} names {dir}",
                exe.display()
            );
        }
        assert!(!plan.contains(env!("CARGO_MANIFEST_DIR")));
    }
}

fn dirs_of_models() -> Vec<String> {
    [SMOLLM, MINILM]
        .iter()
        .filter_map(|m| model(m))
        .filter_map(|p| p.parent().map(|d| d.display().to_string()))
        .collect()
}

#[test]
fn hf_folder_executable_generates_the_reference_text() {
    let Some(m) = model(SMOLLM_HF) else { return };
    let (prompt, want) = smollm_reference();
    // Its own folder (the f32 build is ~550 MB): removed at the end of the test.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let exe = dir.path().join("smollm-hf");
    let o = llmc(&["build", m.to_str().unwrap(), "-o", exe.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run_alone(&exe, &greedy_args(&prompt));
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert_eq!(out.strip_suffix('\n').unwrap_or(&out), want);
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (na * nb)
}

fn write_npy<T: npyz::AutoSerialize>(path: &Path, shape: &[u64], v: Vec<T>) {
    let f = std::fs::File::create(path).unwrap();
    let mut w = npyz::WriteOptions::new()
        .default_dtype()
        .shape(shape)
        .writer(f)
        .begin_nd()
        .unwrap();
    w.extend(v).unwrap();
    w.finish().unwrap();
}

fn read_npy<T: npyz::Deserialize>(path: &Path) -> (Vec<u64>, Vec<T>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let f = npyz::NpyFile::new(&bytes[..]).unwrap();
    let shape = f.shape().to_vec();
    (shape, f.into_vec().unwrap())
}

/// The reference interpreter's embedding of `ids` (`llmc exec --engine interp`).
fn interp_embedding(m: &Path, ids: &[i64]) -> Vec<f64> {
    let dir = tempfile::tempdir().unwrap();
    let p = |f: &str| dir.path().join(f);
    let n = ids.len() as u64;
    write_npy(&p("ids.npy"), &[1, n], ids.to_vec());
    write_npy(&p("mask.npy"), &[1, n], vec![1i64; ids.len()]);
    write_npy(&p("pos.npy"), &[1, n], (0..n as i64).collect());
    let arg = |name: &str| format!("{name}={}", p(&format!("{name}.npy")).display());
    let o = llmc(&[
        "exec",
        m.to_str().unwrap(),
        "--engine",
        "interp",
        "--input",
        &arg("ids"),
        "--input",
        &arg("mask"),
        "--input",
        &arg("pos"),
        "--output-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (shape, v) = read_npy::<f32>(&p("embedding.npy"));
    assert_eq!(shape, vec![1, 384]);
    v.into_iter().map(f64::from).collect()
}

#[test]
fn minilm_executable_embeds_like_the_interpreter_and_sentence_transformers() {
    let (Some(m), Some(exe)) = (model(MINILM), minilm_exe()) else {
        return;
    };
    let reference = fixture("minilm/reference.json");
    let sentences: Vec<String> = reference["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    let want: Vec<Vec<f64>> = reference["embeddings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            e.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect();
    // ./minilm embed --text S1 --text S2 ... : one JSON array per line, in order.
    let mut args = vec!["embed".to_string()];
    for s in &sentences {
        args.push("--text".into());
        args.push(s.clone());
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = run_alone(exe, &argv);
    assert!(o.status.success(), "{}", stderr(&o));
    // Each value is the shortest decimal that reads back as the same f32.
    let lines: Vec<Vec<f32>> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), sentences.len());
    for (k, got) in lines.iter().enumerate() {
        let got: Vec<f64> = got.iter().map(|&x| f64::from(x)).collect();
        let ids: Vec<i64> = reference["token_ids"][k]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        let interp = interp_embedding(&m, &ids);
        let c_interp = cosine(&got, &interp);
        let c_ref = cosine(&got, &want[k]);
        eprintln!(
            "sentence {k}: 1 - cosine vs interpreter {:.2e}, vs sentence-transformers {:.2e}",
            1.0 - c_interp,
            1.0 - c_ref
        );
        assert!(c_interp >= 0.9999, "sentence {k}: cosine {c_interp}");
        assert!(c_ref >= 0.9999, "sentence {k}: cosine {c_ref}");
        // all-MiniLM-L6-v2 normalizes its embeddings.
        let norm = got.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "sentence {k}: norm {norm}");
    }
    // --output FILE.npy: the same vectors as one [texts, 384] f32 array.
    let dir = tempfile::tempdir().unwrap();
    let npy = dir.path().join("e.npy");
    let o = Command::new(exe)
        .args(["embed", "--text", &sentences[0], "--text", &sentences[4]])
        .arg("--output")
        .arg(&npy)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).is_empty(), "{}", stdout(&o));
    let (shape, v) = read_npy::<f32>(&npy);
    assert_eq!(shape, vec![2, 384]);
    for (row, k) in [(0usize, 0usize), (1, 4)] {
        let got = &v[row * 384..(row + 1) * 384];
        assert!(got == lines[k], "npy row {row} differs from JSON line {k}");
    }
}

#[test]
fn embed_and_generate_refuse_the_wrong_kind_of_model() {
    if let Some(exe) = minilm_exe() {
        let o = Command::new(exe)
            .args(["generate", "--prompt", "hi"])
            .output()
            .unwrap();
        assert_user_error(&o, &["generate needs a language model", "embed --text"]);
        let o = Command::new(exe).arg("embed").output().unwrap();
        assert_user_error(&o, &["at least one --text"]);
        let o = Command::new(exe)
            .args(["embed", "--text", "x", "--output", "/no/such/dir/e.npy"])
            .output()
            .unwrap();
        assert_user_error(&o, &["--output", "/no/such/dir/e.npy"]);
        // Beyond the 512 positions: named, with the text's number.
        let long = "word ".repeat(600);
        let o = Command::new(exe)
            .args(["embed", "--text", "fine", "--text", &long])
            .output()
            .unwrap();
        assert_user_error(&o, &["--text #2", "limit of 512"]);
    }
    if let Some(exe) = smollm_exe() {
        let o = Command::new(exe)
            .args(["embed", "--text", "hi"])
            .output()
            .unwrap();
        assert_user_error(
            &o,
            &["embed needs a sentence-embedding", "generate --prompt"],
        );
    }
}

#[test]
fn bad_flags_to_the_executable_are_named() {
    let Some(exe) = smollm_exe() else { return };
    let run = |args: &[&str]| Command::new(exe).args(args).output().unwrap();
    assert_user_error(
        &run(&["generate", "--prompt", "x", "--max-tokens", "abc"]),
        &["--max-tokens abc", "not a valid number"],
    );
    assert_user_error(
        &run(&["generate", "--prompt", "x", "--temperature"]),
        &["--temperature needs a value"],
    );
    assert_user_error(
        &run(&["generate", "--prompt", "x", "--top-p", "7"]),
        &["--top-p", "top_p = 7", "(0, 1]"],
    );
    assert_user_error(
        &run(&["generate", "--prompt", "x", "--temperature", "nan"]),
        &["--temperature", "finite"],
    );
    assert_user_error(&run(&["generate"]), &["generate needs --prompt"]);
    assert_user_error(&run(&["generate", "--prompt"]), &["--prompt needs"]);
    assert_user_error(&run(&["generat"]), &["unknown command `generat`", "usage"]);
    for cmd in ["generate", "bench", "embed", "run"] {
        let o = run(&[cmd, "--help"]);
        assert!(o.status.success(), "{cmd} --help: {}", stderr(&o));
        assert!(
            stdout(&o).starts_with("usage:"),
            "{cmd} --help: {}",
            stdout(&o)
        );
    }
    assert_user_error(
        &run(&["generate", "--prompt", "x", "--bogus"]),
        &["unknown argument `--bogus`"],
    );
    assert_user_error(
        &run(&["run", "--input", "ids=/no/such/ids.npy"]),
        &["/no/such/ids.npy"],
    );
    assert_user_error(&run(&["run", "--input", "ids"]), &["NAME=FILE"]);
    // A prompt beyond the context length (8192) is named, not a crash.
    let long = "hello ".repeat(9000);
    assert_user_error(
        &run(&["generate", "--prompt", &long, "--max-tokens", "1"]),
        &["--prompt", "context length 8192"],
    );
    // Help is not an error.
    let o = run(&["--help"]);
    assert!(o.status.success());
    for cmd in ["generate", "embed", "run", "info"] {
        assert!(stdout(&o).contains(cmd), "{}", stdout(&o));
    }
}

/// `info` lines as key -> value.
fn info_map(exe: &Path) -> std::collections::BTreeMap<String, String> {
    let o = Command::new(exe).arg("info").output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    stdout(&o)
        .lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The leading byte count of a `N bytes (...)` value.
fn bytes_of(v: &str) -> u64 {
    v.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn info_describes_the_model_target_level_passes_and_sizes() {
    let (Some(m), Some(exe)) = (model(MINILM), minilm_exe()) else {
        return;
    };
    let info = info_map(exe);
    assert_eq!(info["model"], "bert");
    assert_eq!(info["architecture"], "bert");
    assert_eq!(info["source"], MINILM);
    assert_eq!(info["opt_level"], "3");
    assert!(info["target"].starts_with("x86_64") || info["target"].starts_with("aarch64"));
    assert!(info["target"].contains("cpu="), "{}", info["target"]);
    // The -O3 pipeline's passes, in order.
    assert!(info["passes"].starts_with("fold,cse"), "{}", info["passes"]);
    assert_eq!(info["kind"], "sentence embedding model (embed)");
    // Parameters as `llmc inspect --emit summary` counts them.
    let o = llmc(&["inspect", m.to_str().unwrap(), "--emit", "summary"]);
    let summary = stdout(&o);
    let count = summary
        .lines()
        .find_map(|l| l.strip_prefix("weights: "))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|p| p.strip_suffix(" parameters"))
        .unwrap()
        .replace(',', "");
    assert_eq!(info["parameters"], count);
    // Sizes add up to the file, and the data holds every f32 parameter.
    let file = std::fs::metadata(exe).unwrap().len();
    let (size, code, plan, data) = (
        bytes_of(&info["size"]),
        bytes_of(&info["code"]),
        bytes_of(&info["plan"]),
        bytes_of(&info["data"]),
    );
    assert_eq!(size, file);
    assert!(code + plan + data <= size && size - (code + plan + data) < 4096 + 40);
    // -O3 folds `slice(@embeddings.token_type_embeddings.weight)` (2 rows of 384) into
    // the one row it reads, so the other row is not stored.
    assert!(data + 4 * 384 >= 4 * count.parse::<u64>().unwrap());
    if let Some(exe) = smollm_exe() {
        let info = info_map(exe);
        assert_eq!(info["kind"], "language model (generate)");
        assert_eq!(info["architecture"], "llama");
        assert!(info["language model"].starts_with("context 8192"));
    }
}

#[test]
fn onnx_executable_runs_like_the_interpreter() {
    let onnx = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/onnx/mlp.onnx");
    let dir = tempfile::tempdir().unwrap();
    let p = |f: &str| dir.path().join(f);
    let exe = p("mlp");
    let o = llmc(&[
        "build",
        onnx.to_str().unwrap(),
        "-O3",
        "-o",
        exe.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows = 5;
    let x: Vec<f32> = (0..rows * 4).map(|i| (i as f32 - 9.0) * 0.37).collect();
    write_npy(&p("x.npy"), &[rows as u64, 4], x.clone());
    let input = format!("x={}", p("x.npy").display());
    std::fs::create_dir_all(p("interp")).unwrap();
    let o = llmc(&[
        "exec",
        onnx.to_str().unwrap(),
        "--engine",
        "interp",
        "--input",
        &input,
        "--output-dir",
        p("interp").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = Command::new(&exe)
        .args(["run", "--input", &input, "--output-dir"])
        .arg(p("exe"))
        .env_clear()
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let (s1, want) = read_npy::<f32>(&p("interp/y.npy"));
    let (s2, got) = read_npy::<f32>(&p("exe/y.npy"));
    assert_eq!(s1, vec![rows as u64, 3]);
    assert_eq!(s2, s1);
    let exact = mlp_reference(&x, rows);
    for ((g, w), e) in got.iter().zip(&want).zip(&exact) {
        assert!(
            (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
            "{got:?} vs {want:?}"
        );
        assert!(
            (g - e).abs() <= 1e-5 * (1.0 + e.abs()),
            "{got:?} vs {exact:?}"
        );
    }
    // A wrong input is named.
    let o = Command::new(&exe)
        .args(["run", "--input", &format!("z={}", p("x.npy").display())])
        .output()
        .unwrap();
    assert_user_error(&o, &["no input `z`", "inputs: x"]);
}

#[test]
fn emit_kinds_write_readable_files() {
    let onnx = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/onnx/mlp.onnx");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("mlp");
    let o = llmc(&[
        "build",
        onnx.to_str().unwrap(),
        "-O3",
        "-o",
        out.to_str().unwrap(),
        "--emit",
        "llvm-ir,asm,obj",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Only what was asked: no executable.
    assert!(!out.exists());
    let ll = std::fs::read_to_string(out.with_extension("ll")).unwrap();
    let kernels: Vec<&str> = ll
        .lines()
        .filter(|l| l.starts_with("define"))
        .filter_map(|l| l.split('@').nth(1))
        .filter_map(|l| l.split('(').next())
        .filter(|n| n.starts_with("llmc_k"))
        .collect();
    // One kernel per op of the -O3 graph: the e-graph fused matmul + bias into one
    // `linear` (rule fusion/matmul-bias-linear) and the relu into its store
    // (fusion/linear-relu): a `linear_act` kernel, no relu kernel.
    assert!(
        kernels.iter().any(|k| k.contains("linear_act")),
        "no linear_act kernel in {kernels:?}"
    );
    assert!(
        !kernels.iter().any(|k| k.contains("relu")),
        "a separate relu kernel in {kernels:?}"
    );
    assert!(ll.contains("@llmc_kernel_table"));
    let asm = std::fs::read_to_string(out.with_extension("s")).unwrap();
    for k in &kernels {
        assert!(
            asm.lines().any(|l| l == format!("{k}:")),
            "the assembly lacks the label of {k}"
        );
    }
    let obj = std::fs::read(out.with_extension("o")).unwrap();
    assert_eq!(&obj[..4], b"\x7fELF");
    // ELF type 1 = relocatable object.
    assert_eq!(u16::from_le_bytes([obj[16], obj[17]]), 1);
}

/// The logits of a five-token prefill of SmolLM2 through `llmc exec --engine cpu -O N`.
fn smollm_logits(m: &Path, level: &str, dir: &Path) -> Vec<f32> {
    let out = dir.join(format!("O{level}"));
    let ids = dir.join("ids.npy");
    let pos = dir.join("pos.npy");
    if !ids.exists() {
        write_npy(&ids, &[1, 5], vec![504i64, 3575, 282, 4649, 314]);
        write_npy(&pos, &[1, 5], (0..5i64).collect());
    }
    let o = llmc(&[
        "exec",
        m.to_str().unwrap(),
        "--engine",
        "cpu",
        &format!("-O{level}"),
        "--input",
        &format!("ids={}", ids.display()),
        "--input",
        &format!("pos={}", pos.display()),
        "--output-dir",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (shape, v) = read_npy::<f32>(&out.join("logits.npy"));
    assert_eq!(shape.last(), Some(&49152));
    v
}

#[test]
fn smollm_logits_agree_between_o0_and_o3() {
    let Some(m) = model(SMOLLM) else { return };
    let dir = tempfile::tempdir().unwrap();
    let o0 = smollm_logits(&m, "0", dir.path());
    let o3 = smollm_logits(&m, "3", dir.path());
    assert_eq!(o0.len(), o3.len());
    let scale = o3.iter().fold(0.0f32, |a, x| a.max(x.abs()));
    let err = o0
        .iter()
        .zip(&o3)
        .fold(0.0f32, |a, (x, y)| a.max((x - y).abs()));
    eprintln!("-O0 vs -O3: max |logit| {scale}, max difference {err:e}");
    // -O3 runs flash_attention (online softmax, another summation order) where -O0 runs
    // attention, and LLVM contracts into FMAs; the GGUF layers quantize their f32
    // activations to int16 per block, so a last-bit difference upstream can move a value
    // by one quantization step. Measured: 2.3e-3 on logits of 19.8 (1.2e-4 relative);
    // held to 1e-3 relative, half of codegen_smollm's bound against the interpreter.
    assert!(err <= 1e-3 * scale, "max difference {err} (scale {scale})");
    let argmax = |v: &[f32]| {
        v.iter()
            .enumerate()
            .fold((0, f32::MIN), |b, (i, &x)| if x > b.1 { (i, x) } else { b })
            .0
    };
    // " Paris" (the reference's first generated id).
    assert_eq!(argmax(&o0[o0.len() - 49152..]), 7042);
    assert_eq!(argmax(&o3[o3.len() - 49152..]), 7042);
}

/// The folder of real ONNX exports (`scripts/onnx-exports` writes
/// `<case>/model.onnx`, `<case>/inputs/NAME.npy` and onnxruntime's `<case>/ort/NAME.npy`).
fn onnx_exports() -> Option<PathBuf> {
    let dir = std::env::var_os("LLMC_ONNX_EXPORTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/onnx-exports"));
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "skipped: {} not found, run scripts/onnx-exports (needs torch; outside CI)",
            dir.display()
        );
        None
    }
}

/// The `.npy` files of `dir` as (name, path), sorted by name.
fn npy_files(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut v: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?.strip_suffix(".npy")?.to_string();
            Some((name, p))
        })
        .collect();
    v.sort();
    v
}

#[test]
fn onnx_export_executables_match_onnxruntime() {
    let Some(root) = onnx_exports() else { return };
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("model.onnx").exists() && p.join("ort").is_dir())
        .collect();
    cases.sort();
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        // A decoder export (`input_ids` in, `logits` out) builds into an LLM, whose
        // graph is the engine's step, not the export's: src/tests/onnx_llm.rs checks
        // those builds, tests/tests/onnx_exports.rs the graphs as written.
        if case.join("inputs/input_ids.npy").exists() && case.join("ort/logits.npy").exists() {
            eprintln!("{name}: a decoder export, built into an LLM: checked by onnx_llm.rs");
            continue;
        }
        // Its own folder: the f32 SmolLM2 build is ~670 MB, removed after the case.
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let exe = dir.path().join(&name);
        let t0 = std::time::Instant::now();
        let o = llmc(&[
            "build",
            case.join("model.onnx").to_str().unwrap(),
            "-O3",
            "-o",
            exe.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        let built = t0.elapsed().as_secs_f64();
        // ./X run --input NAME=FILE.npy ... --output-dir out, alone, empty environment.
        let mut cmd = Command::new(&exe);
        cmd.arg("run").env_clear();
        for (input, path) in npy_files(&case.join("inputs")) {
            cmd.arg("--input")
                .arg(format!("{input}={}", path.display()));
        }
        let out = dir.path().join("out");
        let o = cmd.arg("--output-dir").arg(&out).output().unwrap();
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        let want_outputs = npy_files(&case.join("ort"));
        assert!(!want_outputs.is_empty(), "{name}: no onnxruntime outputs");
        let mut worst = 0.0f64;
        for (output, want_path) in &want_outputs {
            let (ws, want) = read_npy::<f32>(want_path);
            let (gs, got) = read_npy::<f32>(&out.join(format!("{output}.npy")));
            assert_eq!(gs, ws, "{name}: output {output} shape");
            let scale = want.iter().fold(1.0f64, |a, &x| a.max(f64::from(x).abs()));
            let err = got.iter().zip(&want).fold(0.0f64, |a, (&g, &w)| {
                a.max((f64::from(g) - f64::from(w)).abs())
            });
            // onnxruntime and torch differ by ~2e-6 of the scale on these models.
            assert!(
                err <= 1e-4 * scale,
                "{name}: output {output} differs by {err:e} (scale {scale})"
            );
            worst = worst.max(err / scale);
        }
        eprintln!(
            "{name}: built in {built:.1} s, {} output(s) match onnxruntime, worst error {worst:.2e} of the scale",
            want_outputs.len()
        );
    }
}

/// The MiniLM ONNX export (torch's, from `scripts/onnx-exports`) calibrated like the HF
/// folder: its `matmul` projections are found, static int16 activation scales come
/// from a licence text, and its embeddings stay within cosine 0.999 of the f32 HF
/// build's on sentences of another text.
#[test]
fn onnx_encoder_export_calibrates_static_activation_scales() {
    let (Some(root), Some(hf), Some(reference)) = (onnx_exports(), model(MINILM), minilm_exe())
    else {
        return;
    };
    let onnx = root.join("minilm/model.onnx");
    let cal = Path::new("/usr/share/common-licenses/Apache-2.0");
    if !onnx.exists() || !cal.exists() {
        eprintln!("skipped: {} or {} not found", onnx.display(), cal.display());
        return;
    }
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let exe = dir.path().join("minilm-static");
    let o = llmc(&[
        "build",
        onnx.to_str().unwrap(),
        "--tokenizer",
        hf.to_str().unwrap(),
        "--quantize",
        "q8_0",
        "--act-quant",
        "int16-static",
        "--calibration",
        cal.to_str().unwrap(),
        "--time-passes",
        "-O3",
        "-o",
        exe.to_str().unwrap(),
    ]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("calibrated 24 linear inputs"), "{err}");
    assert!(
        err.contains("static scales from the calibration on 24"),
        "{err}"
    );
    let sentences = [
        "The licenses for most software are designed to take away your freedom to share.",
        "A compiler turns a model into one executable.",
        "THIS PROGRAM IS PROVIDED WITHOUT WARRANTY OF ANY KIND.",
    ];
    let embed = |exe: &Path| -> Vec<Vec<f64>> {
        let mut args = vec!["embed"];
        for s in &sentences {
            args.extend(["--text", s]);
        }
        let o = run_alone(exe, &args);
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o)
            .lines()
            .map(|l| serde_json::from_str::<Vec<f64>>(l).unwrap())
            .collect()
    };
    let (got, want) = (embed(&exe), embed(reference));
    assert_eq!(got.len(), sentences.len());
    for (k, (g, w)) in got.iter().zip(&want).enumerate() {
        let dot: f64 = g.iter().zip(w).map(|(a, b)| a * b).sum();
        let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
        let cos = dot / (norm(g) * norm(w));
        eprintln!("sentence {k}: cosine {cos:.6}");
        assert!(cos > 0.999, "sentence {k}: cosine {cos}");
    }
}
