//! File tests: one test per `tests/filetests/**/*.llmc` (valid modules in canonical
//! form), `tests/verify-errors/*.llmc` (modules the verifier must reject, read with the
//! lenient parser) and `tests/parse-errors/*.llmc` (Cranelift-style, see `tests/filetests/README.md`).
//!
//! Every file test is a module in canonical text: with its `;` comment lines removed it
//! must equal `print(parse(file))`, and printing again gives the same text. The first
//! line `; test KIND` picks what else is checked:
//! - `print`: nothing more.
//! - `verify`: parsed leniently (`parse_unchecked`); each `; error: SUBSTRING` line must
//!   match a verifier error and every verifier error must be matched by one; with no
//!   `; error:` lines the module must verify.
//! - `optimize -ON` / `optimize passes=a,b`: the pipeline runs (verifier after each
//!   pass); the result must print and parse back, match its `; check: TEXT` lines in
//!   order and no `; not: TEXT` between the surrounding checks; with `; run:` lines
//!   the optimized module must give the input module's outputs (exact, or within
//!   `; tolerance: atol=X rtol=Y`).
//! - `run`: `; run: %a = dense<...>, ...` runs the graph in the reference interpreter
//!   (one interpreter per file, so the KV cache carries over); each following
//!   `; expect: %out = dense<...> [atol=X] [rtol=Y]` checks a graph output.
//!
//! `LLMC_BLESS=1` rewrites `; expect:` values with what was computed (tolerances kept)
//! and non-canonical module text to canonical form (comment lines kept in place).
//!
//! A parse-error test's first line is `; error: LINE:COL: SUBSTRING`: parsing the file's
//! bytes must fail at that position with a message containing SUBSTRING.

use libtest_mimic::{Arguments, Failed, Trial};
use llmc_ir::interp::Interpreter;
use llmc_ir::tensor::Data;
use llmc_ir::text::{parse, parse_bytes, parse_unchecked, print, value_names};
use llmc_ir::verify::verify;
use llmc_ir::{Module, Tensor};
use llmc_tests::runfile::binding;
use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

fn main() -> std::process::ExitCode {
    let args = Arguments::from_args();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let bless = std::env::var("LLMC_BLESS").is_ok_and(|v| v == "1");
    let mut trials = Vec::new();
    for dir in ["filetests", "verify-errors", "parse-errors"] {
        let mut files = Vec::new();
        collect(&root.join(dir), &mut files);
        files.sort();
        for path in files {
            let name = path
                .strip_prefix(&root)
                .unwrap_or(&path)
                .to_string_lossy()
                .replace('\\', "/");
            let trial = if dir != "parse-errors" {
                Trial::test(name.clone(), move || file_test(&path, &name, bless))
            } else {
                Trial::test(name.clone(), move || parse_error_test(&path, &name))
            };
            trials.push(trial);
        }
    }
    libtest_mimic::run(&args, trials).exit_code()
}

/// Every `*.llmc` under `dir`, recursively.
fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect(&p, out);
        } else if p.extension().is_some_and(|x| x == "llmc") {
            out.push(p);
        }
    }
}

fn fail(msg: impl Into<String>) -> Failed {
    Failed::from(msg.into())
}

// ----- parse-error tests -----

fn parse_error_test(path: &Path, name: &str) -> Result<(), Failed> {
    let bytes = fs::read(path).map_err(|e| fail(format!("cannot read {name}: {e}")))?;
    let first = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
    let first = std::str::from_utf8(first).map_err(|_| fail("first line is not UTF-8"))?;
    let spec = first
        .trim()
        .strip_prefix("; error:")
        .ok_or_else(|| fail("first line must be `; error: LINE:COL: SUBSTRING`"))?;
    let mut parts = spec.trim().splitn(3, ':');
    let (line, col, sub) = match (parts.next(), parts.next(), parts.next()) {
        (Some(l), Some(c), Some(s)) => (
            l.trim()
                .parse::<u32>()
                .map_err(|_| fail(format!("bad line number in `{first}`")))?,
            c.trim()
                .parse::<u32>()
                .map_err(|_| fail(format!("bad column in `{first}`")))?,
            s.trim().to_string(),
        ),
        _ => return Err(fail("first line must be `; error: LINE:COL: SUBSTRING`")),
    };
    let res = catch_unwind(AssertUnwindSafe(|| parse_bytes(&bytes, name)))
        .map_err(|_| fail("the parser panicked"))?;
    let e = match res {
        Ok(_) => return Err(fail("the file parsed; expected an error")),
        Err(e) => e,
    };
    let want = format!("{name}:{line}:{col}: ");
    if e.line != line || e.col != col || !e.msg.contains(&sub) || !e.to_string().starts_with(&want)
    {
        return Err(fail(format!("got  {e}\nwant {want}...{sub}...")));
    }
    // The lenient parser must not panic either.
    let lenient = catch_unwind(AssertUnwindSafe(|| {
        std::str::from_utf8(&bytes).map(|s| parse_unchecked(s, name).is_ok())
    }));
    match lenient {
        Err(_) => Err(fail("parse_unchecked panicked")),
        Ok(_) => Ok(()),
    }
}

// ----- file tests -----

#[derive(Clone, PartialEq)]
enum Kind {
    Print,
    Verify,
    Run,
    /// `optimize -O3` or `optimize passes=a,b`: the pipeline spec after `optimize`.
    Optimize(String),
}

fn is_comment(line: &str) -> bool {
    line.trim_start().starts_with(';')
}

/// The file without its comment lines.
fn strip_comments(text: &str) -> String {
    text.split_inclusive('\n')
        .filter(|l| !is_comment(l))
        .collect()
}

fn file_test(path: &Path, name: &str, bless: bool) -> Result<(), Failed> {
    let text = fs::read_to_string(path).map_err(|e| fail(format!("cannot read {name}: {e}")))?;
    let header = text.lines().next().unwrap_or_default().trim();
    let kind = match header.strip_prefix("; test ").map(str::trim) {
        Some("print") => Kind::Print,
        Some("verify") => Kind::Verify,
        Some("run") => Kind::Run,
        Some(o) if o.starts_with("optimize ") => {
            Kind::Optimize(o["optimize ".len()..].trim().to_string())
        }
        _ => {
            return Err(fail(format!(
                "{name}:1: first line must be `; test print|verify|run|optimize SPEC`, found `{header}`"
            )))
        }
    };
    let parse_mode = |src: &str| {
        if matches!(kind, Kind::Verify) {
            parse_unchecked(src, name)
        } else {
            parse(src, name)
        }
    };
    let m = parse_mode(&text).map_err(|e| fail(e.to_string()))?;
    let canonical = print(&m);
    let mut new_text = text.clone();
    if strip_comments(&text) != canonical {
        if bless {
            new_text = merge_comments(&text, &canonical);
        } else {
            return Err(fail(format!(
                "{name} is not in canonical form ({}); run with LLMC_BLESS=1 to rewrite it",
                first_difference(&strip_comments(&text), &canonical)
            )));
        }
    }
    let again =
        parse_mode(&canonical).map_err(|e| fail(format!("reparsing the printed text: {e}")))?;
    if print(&again) != canonical {
        return Err(fail(format!(
            "printing is not stable: {}",
            first_difference(&canonical, &print(&again))
        )));
    }
    match &kind {
        Kind::Print => {}
        Kind::Verify => verify_test(&text, &m, name)?,
        Kind::Run => {
            let blessed = run_test(&new_text, &m, name, bless)?;
            new_text = blessed;
        }
        Kind::Optimize(spec) => optimize_test(&text, &m, spec, name)?,
    }
    if bless && new_text != text {
        fs::write(path, &new_text).map_err(|e| fail(format!("cannot write {name}: {e}")))?;
        eprintln!("blessed {name}");
    }
    Ok(())
}

/// `line N: file has `A`, canonical is `B``.
fn first_difference(a: &str, b: &str) -> String {
    let (la, lb): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    for i in 0..la.len().max(lb.len()) {
        let (x, y) = (la.get(i), lb.get(i));
        if x != y {
            return format!(
                "module line {}: file has {}, canonical is {}",
                i + 1,
                x.map_or("nothing".to_string(), |s| format!("`{s}`")),
                y.map_or("nothing".to_string(), |s| format!("`{s}`"))
            );
        }
    }
    "texts differ in line endings".to_string()
}

/// Replaces the module lines of `old` with `canonical`, keeping each comment line just
/// after the code line it followed (matched by a longest common subsequence of lines).
fn merge_comments(old: &str, canonical: &str) -> String {
    let lines: Vec<&str> = old.lines().collect();
    let code: Vec<usize> = (0..lines.len())
        .filter(|&i| !is_comment(lines[i]))
        .collect();
    let new: Vec<&str> = canonical.lines().collect();
    let (n, m) = (code.len(), new.len());
    // lcs[i][j] = LCS length of code[i..] and new[j..].
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if lines[code[i]] == new[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    // matched[k] = index in `new` of old code line k, if it survives unchanged.
    let mut matched = vec![None; n];
    let (mut i, mut j) = (0, 0);
    while i < n && j < m {
        if lines[code[i]] == new[j] {
            matched[i] = Some(j);
            i += 1;
            j += 1;
        } else if lcs[i + 1][j] >= lcs[i][j + 1] {
            i += 1;
        } else {
            j += 1;
        }
    }
    // A comment goes right after the new position of the last surviving code line
    // before it (or at the top).
    let mut after: Vec<Vec<&str>> = vec![Vec::new(); m + 1];
    let mut slot = 0usize;
    let mut k = 0usize;
    for line in &lines {
        if is_comment(line) {
            after[slot].push(line);
        } else {
            if let Some(j) = matched.get(k).copied().flatten() {
                slot = j + 1;
            }
            k += 1;
        }
    }
    let mut out = String::new();
    for c in &after[0] {
        out.push_str(c);
        out.push('\n');
    }
    for (j, l) in new.iter().enumerate() {
        out.push_str(l);
        out.push('\n');
        for c in &after[j + 1] {
            out.push_str(c);
            out.push('\n');
        }
    }
    out
}

fn verify_test(text: &str, m: &Module, name: &str) -> Result<(), Failed> {
    let expected: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("; error:"))
        .map(str::trim)
        .collect();
    let errors: Vec<String> = match verify(m) {
        Ok(()) => Vec::new(),
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    };
    let mut problems = Vec::new();
    for want in &expected {
        if !errors.iter().any(|e| e.contains(want)) {
            problems.push(format!("expected an error containing `{want}`"));
        }
    }
    for e in &errors {
        if !expected.iter().any(|w| e.contains(w)) {
            problems.push(format!("unexpected error: {e}"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(fail(format!(
            "{name}:\n  {}\nverifier said:\n  {}",
            problems.join("\n  "),
            if errors.is_empty() {
                "(nothing: the module verifies)".to_string()
            } else {
                errors.join("\n  ")
            }
        )))
    }
}

/// `%a = dense<...>, %b = dense<...>`.
fn parse_bindings(s: &str, file: &str) -> Result<Vec<(String, Tensor)>, String> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let (name, t, r) = binding(rest, file)?;
        out.push((name, t));
        rest = r.trim_start();
        if let Some(r) = rest.strip_prefix(',') {
            rest = r.trim_start();
        } else if !rest.is_empty() {
            return Err(format!("expected `,` before `{rest}`"));
        }
    }
    Ok(out)
}

/// An `; expect:` line's parts: output name, expected tensor, the text after the
/// literal (tolerances, kept by bless), atol, rtol.
struct Expect {
    name: String,
    want: Tensor,
    tail: String,
    atol: f64,
    rtol: f64,
}

fn parse_expect(s: &str, file: &str) -> Result<Expect, String> {
    let (name, want, tail) = binding(s, file)?;
    let tail = tail.to_string();
    let (mut atol, mut rtol) = (0.0, 0.0);
    for tok in tail.split_whitespace() {
        let tok = tok.trim_start_matches('[').trim_end_matches(']');
        let (k, v) = tok
            .split_once('=')
            .ok_or_else(|| format!("expected `atol=X` or `rtol=Y`, found `{tok}`"))?;
        let v: f64 = v
            .parse()
            .ok()
            .filter(|v: &f64| *v >= 0.0)
            .ok_or_else(|| format!("bad tolerance `{tok}`"))?;
        match k {
            "atol" => atol = v,
            "rtol" => rtol = v,
            _ => return Err(format!("unknown tolerance `{k}` (atol or rtol)")),
        }
    }
    Ok(Expect {
        name,
        want,
        tail,
        atol,
        rtol,
    })
}

/// Multi-index of flat index `k` in `shape`.
fn index_of(mut k: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        let n = shape[d].max(1);
        idx[d] = k % n;
        k /= n;
    }
    idx
}

/// Checks `got` against `want`: ints and bools exactly, floats within
/// `atol + rtol * |want|` (exactly when both are 0), NaN equal to NaN.
fn compare(got: &Tensor, want: &Tensor, atol: f64, rtol: f64) -> Result<(), String> {
    if got.dtype != want.dtype || got.shape != want.shape {
        return Err(format!(
            "got {}{:?}, want {}{:?}",
            got.dtype, got.shape, want.dtype, want.shape
        ));
    }
    let mut bad: Vec<String> = Vec::new();
    let mut count = 0usize;
    let n = want.numel();
    for k in 0..n {
        let ok = match (&got.data, &want.data) {
            (Data::I(g), Data::I(w)) => g.get(k) == w.get(k),
            (Data::F(g), Data::F(w)) => match (g.get(k), w.get(k)) {
                (Some(&g), Some(&w)) => {
                    (g.is_nan() && w.is_nan())
                        || g == w
                        || (w.is_finite() && (g - w).abs() <= atol + rtol * w.abs())
                }
                _ => false,
            },
            _ => false,
        };
        if !ok {
            count += 1;
            if bad.len() < 5 {
                bad.push(format!(
                    "index {:?}: got {}, want {}",
                    index_of(k, &want.shape),
                    show(got, k),
                    show(want, k)
                ));
            }
        }
    }
    if count == 0 {
        Ok(())
    } else {
        Err(format!(
            "{count} of {n} element(s) differ (atol={atol}, rtol={rtol}):\n    {}",
            bad.join("\n    ")
        ))
    }
}

fn show(t: &Tensor, k: usize) -> String {
    match &t.data {
        Data::F(v) => v.get(k).map_or("-".into(), |x| format!("{x:?}")),
        Data::I(v) => v.get(k).map_or("-".into(), |x| x.to_string()),
    }
}

/// Runs the `; run:` / `; expect:` lines; returns the text with `; expect:` values
/// replaced by the computed ones when blessing.
fn run_test(text: &str, m: &Module, name: &str, bless: bool) -> Result<String, Failed> {
    let names = value_names(m);
    let g = &m.graph;
    let mut interp = Interpreter::new(m);
    let mut outputs: Option<Vec<Tensor>> = None;
    let mut runs = 0;
    let mut out = String::new();
    let mut problems: Vec<String> = Vec::new();
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let at = format!("{name}:{}", i + 1);
        let body = line.trim_start();
        if let Some(args) = body.strip_prefix("; run:") {
            let binds = parse_bindings(args, name).map_err(|e| fail(format!("{at}: {e}")))?;
            let mut inputs: Vec<Option<Tensor>> = vec![None; g.inputs.len()];
            for (n, t) in binds {
                let k = g
                    .inputs
                    .iter()
                    .position(|v| names.get(v.0 as usize) == Some(&n))
                    .ok_or_else(|| fail(format!("{at}: the graph has no input {n}")))?;
                if inputs[k].replace(t).is_some() {
                    return Err(fail(format!("{at}: {n} is bound twice")));
                }
            }
            let inputs: Vec<Tensor> = inputs
                .into_iter()
                .enumerate()
                .map(|(k, t)| {
                    t.ok_or_else(|| {
                        fail(format!(
                            "{at}: graph input {} is not bound",
                            names.get(g.inputs[k].0 as usize).map_or("?", |s| s)
                        ))
                    })
                })
                .collect::<Result<_, _>>()?;
            let res = interp
                .run(&inputs)
                .map_err(|e| fail(format!("{at}: the run failed: {e}")))?;
            outputs = Some(res);
            runs += 1;
            out.push_str(line);
        } else if let Some(spec) = body.strip_prefix("; expect:") {
            let e = parse_expect(spec, name).map_err(|e| fail(format!("{at}: {e}")))?;
            let outs = outputs
                .as_ref()
                .ok_or_else(|| fail(format!("{at}: `; expect:` before any `; run:`")))?;
            let k = g
                .outputs
                .iter()
                .position(|v| names.get(v.0 as usize) == Some(&e.name))
                .ok_or_else(|| fail(format!("{at}: the graph has no output {}", e.name)))?;
            let got = outs
                .get(k)
                .ok_or_else(|| fail(format!("{at}: the run gave no output {k}")))?;
            if bless {
                let indent = &line[..line.len() - body.len()];
                let nl = if line.ends_with('\n') { "\n" } else { "" };
                out.push_str(&format!(
                    "{indent}; expect: {} = {}{}{nl}",
                    e.name,
                    llmc_ir::text::print_tensor(got),
                    e.tail.trim_end()
                ));
            } else {
                if let Err(msg) = compare(got, &e.want, e.atol, e.rtol) {
                    problems.push(format!("{at}: {}: {msg}", e.name));
                }
                out.push_str(line);
            }
        } else {
            out.push_str(line);
        }
    }
    if runs == 0 {
        return Err(fail(format!("{name}: a run test needs `; run:` lines")));
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(fail(problems.join("\n")))
    }
}

// ----- optimize tests -----

/// The passes a `; test optimize SPEC` header asks for: `-ON` or `passes=a,b,c`,
/// optionally followed by `quantize=FORMAT` (the `--quantize` spec; the `quantize`
/// pass runs first unless the list places it).
fn optimize_pipeline(
    spec: &str,
    name: &str,
) -> Result<(Vec<&'static llmc_passes::Pass>, llmc_passes::PassContext), Failed> {
    if let Some((spec, q)) = spec.split_once(" quantize=") {
        let (mut passes, mut ctx) = optimize_pipeline(spec.trim(), name)?;
        let q = llmc_passes::quant::QuantSpec::parse(q.trim())
            .map_err(|e| fail(format!("{name}:1: quantize={q}: {e}")))?;
        ctx.quantize = Some(q);
        if !passes.iter().any(|p| p.name == "quantize") {
            passes.splice(0..0, llmc_passes::find_pass("quantize"));
        }
        return Ok((passes, ctx));
    }
    let mut ctx = llmc_passes::PassContext::default();
    if let Some(level) = spec.strip_prefix("-O") {
        let level: u8 = level
            .parse()
            .ok()
            .filter(|l| *l <= 3)
            .ok_or_else(|| fail(format!("{name}:1: bad level `{spec}` (-O0 to -O3)")))?;
        ctx.opt_level = level;
        return Ok((llmc_passes::pipeline_for_level(level), ctx));
    }
    if let Some(list) = spec.strip_prefix("passes=") {
        let names: Vec<&str> = list.split(',').collect();
        let p = llmc_passes::parse_pipeline(&names).map_err(|e| fail(format!("{name}:1: {e}")))?;
        ctx.opt_level = 3;
        return Ok((p, ctx));
    }
    Err(fail(format!(
        "{name}:1: expected `; test optimize -ON` or `; test optimize passes=a,b`, found `{spec}`"
    )))
}

/// Runs the pipeline, verifies and reprints the result, checks `; check:` / `; not:`
/// lines against the printed module and, with `; run:` lines, that the optimized module
/// gives the input module's outputs (within `; tolerance: atol=X rtol=Y`, exact by
/// default).
fn optimize_test(text: &str, m: &Module, spec: &str, name: &str) -> Result<(), Failed> {
    let (passes, ctx) = optimize_pipeline(spec, name)?;
    let mut opt = m.clone();
    let mut sink = Vec::new();
    let inst = llmc_passes::Instrument {
        verify_each: true,
        ..Default::default()
    };
    llmc_passes::run_passes(&mut opt, &passes, &ctx, &inst, &mut sink)
        .map_err(|e| fail(format!("{name}: {e}")))?;
    let printed = print(&opt);
    let again = parse(&printed, name).map_err(|e| {
        fail(format!(
            "{name}: the optimized module does not parse back: {e}\n{printed}"
        ))
    })?;
    if print(&again) != printed {
        return Err(fail(format!(
            "{name}: the optimized module does not print back the same: {}",
            first_difference(&printed, &print(&again))
        )));
    }
    check_lines(text, &printed, name)?;
    compare_runs(text, m, &opt, name)
}

/// FileCheck-style matching: each `; check: TEXT` must occur after the previous
/// check's match; each `; not: TEXT` must not occur between the matches of the checks
/// around it (to the start or end of the text where there is none).
fn check_lines(text: &str, printed: &str, name: &str) -> Result<(), Failed> {
    enum Line<'a> {
        Check(usize, &'a str),
        Not(usize, &'a str),
    }
    let mut lines = Vec::new();
    for (i, l) in text.lines().enumerate() {
        let l = l.trim_start();
        if let Some(c) = l.strip_prefix("; check:") {
            lines.push(Line::Check(i + 1, c.trim()));
        } else if let Some(c) = l.strip_prefix("; not:") {
            lines.push(Line::Not(i + 1, c.trim()));
        }
    }
    if lines.is_empty() {
        return Err(fail(format!(
            "{name}: an optimize test needs `; check:` or `; not:` lines"
        )));
    }
    let show = || format!("optimized module:\n{printed}");
    let mut pos = 0usize;
    let mut pending_not: Vec<(usize, &str)> = Vec::new();
    let check_nots = |nots: &mut Vec<(usize, &str)>, region: &str| -> Result<(), Failed> {
        for (line, pat) in nots.drain(..) {
            if region.contains(pat) {
                return Err(fail(format!(
                    "{name}:{line}: `; not: {pat}` matched\n{}",
                    show()
                )));
            }
        }
        Ok(())
    };
    for l in &lines {
        match *l {
            Line::Not(line, pat) => pending_not.push((line, pat)),
            Line::Check(line, pat) => {
                let found = printed.get(pos..).and_then(|rest| rest.find(pat));
                let Some(at) = found else {
                    return Err(fail(format!(
                        "{name}:{line}: `; check: {pat}` not found after byte {pos}\n{}",
                        show()
                    )));
                };
                let start = pos + at;
                check_nots(&mut pending_not, &printed[pos..start])?;
                pos = start + pat.len();
            }
        }
    }
    check_nots(&mut pending_not, &printed[pos..])
}

/// Runs every `; run:` line's inputs through the input and the optimized module (one
/// interpreter each, so the KV cache carries over) and compares all outputs.
fn compare_runs(text: &str, m: &Module, opt: &Module, name: &str) -> Result<(), Failed> {
    let (mut atol, mut rtol) = (0.0, 0.0);
    for (i, l) in text.lines().enumerate() {
        if let Some(spec) = l.trim_start().strip_prefix("; tolerance:") {
            let e = parse_expect(&format!("%t = dense<f32[]: [0.0]> {spec}"), name)
                .map_err(|e| fail(format!("{name}:{}: {e}", i + 1)))?;
            (atol, rtol) = (e.atol, e.rtol);
        }
    }
    let names = value_names(m);
    let g = &m.graph;
    let (mut a, mut b) = (Interpreter::new(m), Interpreter::new(opt));
    for (i, line) in text.lines().enumerate() {
        let Some(args) = line.trim_start().strip_prefix("; run:") else {
            continue;
        };
        let at = format!("{name}:{}", i + 1);
        let binds = parse_bindings(args, name).map_err(|e| fail(format!("{at}: {e}")))?;
        let mut inputs: Vec<Option<Tensor>> = vec![None; g.inputs.len()];
        for (n, t) in binds {
            let k = g
                .inputs
                .iter()
                .position(|v| names.get(v.0 as usize) == Some(&n))
                .ok_or_else(|| fail(format!("{at}: the graph has no input {n}")))?;
            inputs[k] = Some(t);
        }
        let inputs: Vec<Tensor> = inputs
            .into_iter()
            .collect::<Option<_>>()
            .ok_or_else(|| fail(format!("{at}: every graph input must be bound")))?;
        let want = a
            .run(&inputs)
            .map_err(|e| fail(format!("{at}: the input module failed: {e}")))?;
        let got = b
            .run(&inputs)
            .map_err(|e| fail(format!("{at}: the optimized module failed: {e}")))?;
        if want.len() != got.len() {
            return Err(fail(format!(
                "{at}: {} outputs before, {} after",
                want.len(),
                got.len()
            )));
        }
        for (k, (w, o)) in want.iter().zip(&got).enumerate() {
            let out = names
                .get(g.outputs[k].0 as usize)
                .map_or("?", |s| s.as_str());
            compare(o, w, atol, rtol)
                .map_err(|e| fail(format!("{at}: output {out} differs after optimizing: {e}")))?;
        }
    }
    Ok(())
}
