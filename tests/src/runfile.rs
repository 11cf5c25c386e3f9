//! Reading `; test run` file tests for runners other than the reference one (the
//! compiled path): the module, each `; run:` line's inputs in graph-input order, and
//! each `; expect:` line (output index, expected tensor, tolerances) attached to the
//! run before it; plus the comparison rule the file tests use.

use llmc_ir::tensor::Data;
use llmc_ir::text::{parse, parse_tensor};
use llmc_ir::{Module, Tensor};

/// One expectation: output `output` of the run equals `want` within tolerances.
#[derive(Debug)]
pub struct Expect {
    /// Line number (1-based) of the `; expect:` line.
    pub line: usize,
    /// Output name (with `%`).
    pub name: String,
    /// Graph-output index.
    pub output: usize,
    /// Expected tensor.
    pub want: Tensor,
    /// Absolute tolerance.
    pub atol: f64,
    /// Relative tolerance.
    pub rtol: f64,
}

/// One `; run:` line and its expectations.
#[derive(Debug)]
pub struct Run {
    /// Line number of the `; run:` line.
    pub line: usize,
    /// Inputs in graph-input order.
    pub inputs: Vec<Tensor>,
    /// Expectations.
    pub expects: Vec<Expect>,
}

/// A printed value name at the start of `s` (`%x`, `%"a b"`), and the rest.
pub fn take_name(s: &str) -> Option<(&str, &str)> {
    let s = s.trim_start();
    let body = s.strip_prefix('%')?;
    let len = if body.starts_with('"') {
        let mut escaped = false;
        let mut end = None;
        for (i, c) in body.char_indices().skip(1) {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => {
                    end = Some(i + 1);
                    break;
                }
                _ => {}
            }
        }
        end?
    } else {
        body.find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
            .unwrap_or(body.len())
    };
    if len == 0 {
        return None;
    }
    Some((&s[..len + 1], &s[len + 1..]))
}

/// `NAME = dense<...>` at the start of `s`: name, tensor, rest.
pub fn binding<'a>(s: &'a str, file: &str) -> Result<(String, Tensor, &'a str), String> {
    let (name, r) =
        take_name(s).ok_or_else(|| format!("expected `%name = dense<...>` at `{s}`"))?;
    let r = r
        .trim_start()
        .strip_prefix('=')
        .ok_or_else(|| format!("expected `=` after {name}"))?
        .trim_start();
    let end = r
        .find('>')
        .ok_or_else(|| format!("{name}: expected `dense<...>`"))?;
    let t = parse_tensor(&r[..=end], file).map_err(|e| format!("{name}: {}", e.msg))?;
    Ok((name.to_string(), t, &r[end + 1..]))
}

/// Parses a run file: the module and its runs.
pub fn read(text: &str, file: &str) -> Result<(Module, Vec<Run>), String> {
    let m = parse(text, file).map_err(|e| e.to_string())?;
    let names = llmc_ir::text::value_names(&m);
    let g = &m.graph;
    let mut runs: Vec<Run> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let at = format!("{file}:{}", i + 1);
        let body = line.trim_start();
        if let Some(args) = body.strip_prefix("; run:") {
            let mut inputs: Vec<Option<Tensor>> = vec![None; g.inputs.len()];
            let mut rest = args.trim();
            while !rest.is_empty() {
                let (n, t, r) = binding(rest, file).map_err(|e| format!("{at}: {e}"))?;
                let k = g
                    .inputs
                    .iter()
                    .position(|v| names.get(v.0 as usize) == Some(&n))
                    .ok_or_else(|| format!("{at}: the graph has no input {n}"))?;
                inputs[k] = Some(t);
                rest = r.trim_start();
                rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
            }
            let inputs = inputs
                .into_iter()
                .enumerate()
                .map(|(k, t)| t.ok_or_else(|| format!("{at}: graph input {k} is not bound")))
                .collect::<Result<_, _>>()?;
            runs.push(Run {
                line: i + 1,
                inputs,
                expects: Vec::new(),
            });
        } else if let Some(spec) = body.strip_prefix("; expect:") {
            let (name, want, tail) = binding(spec, file).map_err(|e| format!("{at}: {e}"))?;
            let (mut atol, mut rtol) = (0.0, 0.0);
            for tok in tail.split_whitespace() {
                let tok = tok.trim_start_matches('[').trim_end_matches(']');
                let (k, v) = tok
                    .split_once('=')
                    .ok_or_else(|| format!("{at}: bad tolerance `{tok}`"))?;
                let v: f64 = v
                    .parse()
                    .map_err(|_| format!("{at}: bad tolerance `{tok}`"))?;
                match k {
                    "atol" => atol = v,
                    "rtol" => rtol = v,
                    _ => return Err(format!("{at}: unknown tolerance `{k}`")),
                }
            }
            let output = g
                .outputs
                .iter()
                .position(|v| names.get(v.0 as usize) == Some(&name))
                .ok_or_else(|| format!("{at}: the graph has no output {name}"))?;
            let run = runs
                .last_mut()
                .ok_or_else(|| format!("{at}: `; expect:` before any `; run:`"))?;
            run.expects.push(Expect {
                line: i + 1,
                name,
                output,
                want,
                atol,
                rtol,
            });
        }
    }
    Ok((m, runs))
}

/// Checks `got` against `want`: ints and bools exactly, floats within
/// `atol + rtol * |want|` (exactly when both are 0), NaN equal to NaN.
pub fn compare(got: &Tensor, want: &Tensor, atol: f64, rtol: f64) -> Result<(), String> {
    if got.dtype != want.dtype || got.shape != want.shape {
        return Err(format!(
            "got {}{:?}, want {}{:?}",
            got.dtype, got.shape, want.dtype, want.shape
        ));
    }
    let mut bad = Vec::new();
    let mut count = 0;
    for k in 0..want.numel() {
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
                    "element {k}: got {}, want {}",
                    got.get_f64(k),
                    want.get_f64(k)
                ));
            }
        }
    }
    if count == 0 {
        Ok(())
    } else {
        Err(format!(
            "{count} of {} element(s) differ (atol={atol}, rtol={rtol}): {}",
            want.numel(),
            bad.join("; ")
        ))
    }
}
