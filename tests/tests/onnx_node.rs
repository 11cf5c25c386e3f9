//! ONNX's own node tests as llmc's conformance suite.
//!
//! `scripts/gen-onnx-node-tests.py` writes every case of the `onnx` package's node
//! tests to `.cache/onnx-node/<name>/` (`model.onnx`, `test_data_set_N/{input,output}_K.pb`,
//! `meta.json` with the case's rtol/atol); this runner imports each model with
//! `llmc_frontend::onnx::load`, runs it in the reference interpreter and compares the
//! outputs: floats within `atol + rtol * |want|` (NaN equals NaN), integers and bools
//! exactly, shapes and dtypes exactly.
//!
//! Only the cases matching a line of the allow-list `tests/onnx/node.txt` (one regex per
//! line, matched against the whole case name; `#` starts a comment) run; the others are
//! reported as ignored, so coverage stays visible (`-- --include-ignored` runs them
//! all). The last line printed is `onnx node tests: N passed, N failed, N skipped`.
//! When the cache is missing the runner runs the generator script first.
//!
//! Each data set runs twice in the interpreter: on the module as imported (-O0) and
//! after the -O3 pass pipeline (folding, CSE, the e-graph rewrites, DCE); both must
//! match the case's expected outputs within its tolerance, so the optimizer is checked
//! on every allow-listed case. `LLMC_ONNX_OPT=0,3` picks the levels.
//!
//! `LLMC_ONNX_ENGINE=cpu` runs every case through the compiled CPU path (kernels, LLVM,
//! link, the runtime) instead of the interpreter: slower (a build per data set), a
//! conformance check of code generation (at -O0 unless `LLMC_ONNX_OPT` says otherwise).
//!
//! Many cases feed shape-like operands (a `Reshape`'s shape, reduction axes, pads) as
//! graph inputs, where real models have initializers. The runner imports each data set
//! with its inputs offered as bindings (`ImportOptions::bind_inputs`): a converter that
//! needs such an operand as a constant reads the bound value; everything else still runs
//! from the graph inputs in the interpreter.

use libtest_mimic::{Arguments, Failed, Trial};
use llmc_frontend::onnx::ImportOptions;
use llmc_ir::interp::Interpreter;
use llmc_ir::tensor::Data;
use llmc_ir::Tensor;
use regex::Regex;
use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const SCRIPT: &str = "scripts/gen-onnx-node-tests.py";

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let cache = std::env::var_os("LLMC_ONNX_NODE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".cache/onnx-node"));
    if let Err(e) = ensure_cache(&root, &cache) {
        eprintln!("onnx node tests: {e}");
        return ExitCode::FAILURE;
    }
    let manifest = root.join("tests/onnx/node.txt");
    let allow = match read_manifest(&manifest) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("onnx node tests: {}: {e}", manifest.display());
            return ExitCode::FAILURE;
        }
    };
    let mut cases: Vec<(String, PathBuf)> = match fs::read_dir(&cache) {
        Ok(rd) => rd
            .flatten()
            .filter(|e| e.path().join("model.onnx").is_file())
            .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
            .collect(),
        Err(e) => {
            eprintln!("onnx node tests: {}: {e}", cache.display());
            return ExitCode::FAILURE;
        }
    };
    cases.sort();
    let trials: Vec<Trial> = cases
        .into_iter()
        .map(|(name, dir)| {
            let listed = allow.iter().any(|r| r.is_match(&name));
            Trial::test(name, move || run_case(&dir)).with_ignored_flag(!listed)
        })
        .collect();
    let c = libtest_mimic::run(&args, trials);
    println!(
        "onnx node tests: {} passed, {} failed, {} skipped",
        c.num_passed, c.num_failed, c.num_ignored
    );
    c.exit_code()
}

/// Runs the generator when the cache has no stamp (it is idempotent and fast when the
/// cache is current, but it needs Python, so only call it when something is missing).
fn ensure_cache(root: &Path, cache: &Path) -> Result<(), String> {
    if cache.join(".stamp.json").is_file() {
        return Ok(());
    }
    eprintln!(
        "onnx node tests: {} is missing; running {SCRIPT}",
        cache.display()
    );
    let status = Command::new("python3")
        .arg(root.join(SCRIPT))
        .current_dir(root)
        .status()
        .map_err(|e| {
            format!(
                "cannot run `python3 {SCRIPT}` ({e}); run it by hand to write {}",
                cache.display()
            )
        })?;
    if !status.success() || !cache.join(".stamp.json").is_file() {
        return Err(format!(
            "`python3 {SCRIPT}` failed ({status}); run it by hand to write {}",
            cache.display()
        ));
    }
    Ok(())
}

fn read_manifest(path: &Path) -> Result<Vec<Regex>, String> {
    let text = fs::read_to_string(path).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let re = Regex::new(&format!("^(?:{line})$"))
            .map_err(|e| format!("line {}: bad regex `{line}`: {e}", i + 1))?;
        out.push(re);
    }
    Ok(out)
}

#[derive(Clone, Copy)]
struct Tol {
    rtol: f64,
    atol: f64,
}

fn read_tol(dir: &Path) -> Result<Tol, String> {
    let text = fs::read_to_string(dir.join("meta.json")).map_err(|e| format!("meta.json: {e}"))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("meta.json: {e}"))?;
    let get = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_f64())
            .ok_or_else(|| format!("meta.json: missing number `{k}`"))
    };
    Ok(Tol {
        rtol: get("rtol")?,
        atol: get("atol")?,
    })
}

/// The `{prefix}_K.pb` files of a data set, in K order.
fn numbered(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<(usize, PathBuf)> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let k = name
                .strip_prefix(prefix)?
                .strip_prefix('_')?
                .strip_suffix(".pb")?
                .parse()
                .ok()?;
            Some((k, e.path()))
        })
        .collect();
    v.sort();
    v.into_iter().map(|(_, p)| p).collect()
}

fn run_case(dir: &Path) -> Result<(), Failed> {
    match catch_unwind(AssertUnwindSafe(|| check_case(dir))) {
        Ok(r) => r.map_err(Failed::from),
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(Failed::from(format!("panicked: {msg}")))
        }
    }
}

fn check_case(dir: &Path) -> Result<(), String> {
    let tol = read_tol(dir)?;
    let mut sets: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    sets.sort();
    if sets.is_empty() {
        return Err("no test_data_set_* folder".into());
    }
    for set in sets {
        let set_name = set
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let read = |p: &PathBuf| {
            llmc_frontend::onnx::read_tensor(p)
                .map(|(_, t)| t)
                .map_err(|e| format!("{set_name}: {e}"))
        };
        let named: Vec<(String, Tensor)> = numbered(&set, "input")
            .iter()
            .map(|p| llmc_frontend::onnx::read_tensor(p).map_err(|e| format!("{set_name}: {e}")))
            .collect::<Result<_, _>>()?;
        let wants: Vec<Tensor> = numbered(&set, "output")
            .iter()
            .map(read)
            .collect::<Result<_, _>>()?;
        // The node tests feed shape-like operands (axes, a reshape's shape, pads...) as
        // graph inputs; bind them so converters that need a constant find one (as
        // tract's suite does). Bound inputs stay graph inputs and are fed below too.
        let options = ImportOptions {
            bind_inputs: named.iter().cloned().collect(),
        };
        let module = llmc_frontend::onnx::load_with(&dir.join("model.onnx"), options)
            .map_err(|e| format!("import: {e}"))?;
        let inputs: Vec<Tensor> = named.into_iter().map(|(_, t)| t).collect();
        let cpu = std::env::var("LLMC_ONNX_ENGINE").as_deref() == Ok("cpu");
        for level in opt_levels(cpu)? {
            let mut module = module.clone();
            optimize(&mut module, level).map_err(|e| format!("{set_name}: -O{level}: {e}"))?;
            let set_name = format!("{set_name} (-O{level})");
            check_outputs(&module, &inputs, &wants, tol, cpu, &set_name)?;
        }
    }
    Ok(())
}

/// The optimisation levels each case runs at (`LLMC_ONNX_OPT`, comma-separated).
fn opt_levels(cpu: bool) -> Result<Vec<u8>, String> {
    match std::env::var("LLMC_ONNX_OPT") {
        Ok(v) => v
            .split(',')
            .map(|l| {
                l.trim()
                    .parse::<u8>()
                    .ok()
                    .filter(|l| *l <= 3)
                    .ok_or_else(|| format!("LLMC_ONNX_OPT: `{l}` is not a level 0..3"))
            })
            .collect(),
        Err(_) if cpu => Ok(vec![0]),
        Err(_) => Ok(vec![0, 3]),
    }
}

/// Runs the -O`level` pipeline over `m` (nothing at -O0), verifying after each pass.
fn optimize(m: &mut llmc_ir::Module, level: u8) -> Result<(), String> {
    let pipeline = llmc_passes::pipeline_for_level(level);
    let ctx = llmc_passes::PassContext {
        opt_level: level,
        ..Default::default()
    };
    let inst = llmc_passes::Instrument {
        verify_each: true,
        ..Default::default()
    };
    llmc_passes::run_passes(m, &pipeline, &ctx, &inst, &mut std::io::sink())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Runs `module` on `inputs` (interpreter, or compiled when `cpu`) and compares every
/// output with `wants`.
fn check_outputs(
    module: &llmc_ir::Module,
    inputs: &[Tensor],
    wants: &[Tensor],
    tol: Tol,
    cpu: bool,
    set_name: &str,
) -> Result<(), String> {
    let gots = if cpu {
        let opts = llmc_backend::BuildOptions::default();
        llmc_backend::run::run_compiled(module, &opts, &[inputs.to_vec()])
            .map_err(|e| format!("{set_name}: compiled run: {e}"))?
            .pop()
            .unwrap_or_default()
    } else {
        Interpreter::new(module)
            .run(inputs)
            .map_err(|e| format!("{set_name}: run: {e}"))?
    };
    if gots.len() != wants.len() {
        return Err(format!(
            "{set_name}: the graph gives {} outputs, the case expects {}",
            gots.len(),
            wants.len()
        ));
    }
    for (k, (got, want)) in gots.iter().zip(wants).enumerate() {
        compare(got, want, tol).map_err(|m| format!("{set_name}: output {k}: {m}"))?;
    }
    Ok(())
}

fn compare(got: &Tensor, want: &Tensor, tol: Tol) -> Result<(), String> {
    if got.dtype != want.dtype {
        return Err(format!("dtype {} , expected {}", got.dtype, want.dtype));
    }
    if got.shape != want.shape {
        return Err(format!("shape {:?}, expected {:?}", got.shape, want.shape));
    }
    match (&got.data, &want.data) {
        (Data::F(g), Data::F(w)) => {
            let mut bad = 0usize;
            let mut first = None;
            for (i, (&a, &b)) in g.iter().zip(w).enumerate() {
                let ok = if a.is_nan() || b.is_nan() {
                    a.is_nan() && b.is_nan()
                } else if a.is_infinite() || b.is_infinite() {
                    a == b
                } else {
                    (a - b).abs() <= tol.atol + tol.rtol * b.abs()
                };
                if !ok {
                    bad += 1;
                    first.get_or_insert((i, a, b));
                }
            }
            if let Some((i, a, b)) = first {
                return Err(format!(
                    "{bad} of {} elements differ beyond atol {} rtol {}; first at {i}: got {a}, want {b}",
                    g.len(),
                    tol.atol,
                    tol.rtol
                ));
            }
        }
        (Data::I(g), Data::I(w)) => {
            if let Some((i, (a, b))) = g.iter().zip(w).enumerate().find(|(_, (a, b))| a != b) {
                let bad = g.iter().zip(w).filter(|(a, b)| a != b).count();
                return Err(format!(
                    "{bad} of {} elements differ; first at {i}: got {a}, want {b}",
                    g.len()
                ));
            }
        }
        _ => return Err("storage kinds differ".into()),
    }
    Ok(())
}
