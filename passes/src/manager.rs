//! The pass manager: runs a pipeline over a module with the instrumentation that makes
//! the optimizer tunable from the command line. Flag names follow LLVM/MLIR:
//! `--print-ir-before=P`, `--print-ir-after=P`, `--print-ir-after-all`,
//! `--print-ir-after-change` (dumps to the given stream, each under the banner
//! `// ----- IR dump after P ----- //`), `--dump-dir DIR` (`00-input.llmc`, then
//! `NN-P.llmc` after each pass, files the parser reads back), `--verify-each` (the
//! verifier after every pass; always on in debug builds) and `--time-passes` (a table
//! of time and node counts per pass).

use crate::pipeline::{find_pass, known_names, Pass};
use crate::{Changed, PassContext, PassError};
use llmc_ir::Module;
use std::fmt;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

/// Instrumentation of a pipeline run.
#[derive(Clone, Debug, Default)]
pub struct Instrument {
    /// Run the verifier after every pass (it always runs in debug builds).
    pub verify_each: bool,
    /// Print the IR before these passes.
    pub print_before: Vec<String>,
    /// Print the IR after these passes.
    pub print_after: Vec<String>,
    /// Print the IR after every pass.
    pub print_after_all: bool,
    /// Print the IR after every pass that changed it.
    pub print_after_change: bool,
    /// Write `NN-<pass>.llmc` files here.
    pub dump_dir: Option<PathBuf>,
}

impl Instrument {
    /// Checks that the dump flags name known passes.
    pub fn check(&self) -> Result<(), PassError> {
        for (flag, names) in [
            ("--print-ir-before", &self.print_before),
            ("--print-ir-after", &self.print_after),
        ] {
            if let Some(bad) = names.iter().find(|n| find_pass(n).is_none()) {
                return Err(PassError::UnknownPass {
                    name: bad.clone(),
                    context: format!(" in {flag}"),
                    known: known_names(),
                });
            }
        }
        Ok(())
    }
}

/// One pass's line of the `--time-passes` table.
#[derive(Clone, Debug, PartialEq)]
pub struct PassRow {
    /// Pass name.
    pub pass: String,
    /// Wall time in seconds (the pass alone, without verification or dumps).
    pub secs: f64,
    /// Nodes before the pass.
    pub nodes_before: usize,
    /// Nodes after it.
    pub nodes_after: usize,
    /// Whether it changed the module.
    pub changed: bool,
    /// What the pass said it did (`crate::note`), printed under its row.
    pub note: Option<String>,
}

/// What a pipeline run did, pass by pass; displays as the `--time-passes` table.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PassReport {
    /// One row per pass run, in order.
    pub rows: Vec<PassRow>,
}

impl PassReport {
    /// Total pass time in seconds.
    pub fn total_secs(&self) -> f64 {
        self.rows.iter().map(|r| r.secs).sum()
    }

    /// The passes that ran, comma-separated (for the executable's `info`).
    pub fn pass_names(&self) -> String {
        self.rows
            .iter()
            .map(|r| r.pass.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl fmt::Display for PassReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "===== pass execution timing report =====")?;
        if self.rows.is_empty() {
            return writeln!(f, "(no passes: -O0 or an empty --passes)");
        }
        writeln!(
            f,
            "{:<4} {:<16} {:>10} {:>8} {:>8} {:>8}",
            "#", "pass", "time (ms)", "before", "after", "changed"
        )?;
        for (i, r) in self.rows.iter().enumerate() {
            writeln!(
                f,
                "{:<4} {:<16} {:>10.3} {:>8} {:>8} {:>8}",
                i + 1,
                r.pass,
                r.secs * 1e3,
                r.nodes_before,
                r.nodes_after,
                if r.changed { "yes" } else { "no" }
            )?;
            if let Some(n) = &r.note {
                writeln!(f, "{:<4} {:<16} {n}", "", "")?;
            }
        }
        let (first, last) = (
            self.rows.first().map_or(0, |r| r.nodes_before),
            self.rows.last().map_or(0, |r| r.nodes_after),
        );
        writeln!(
            f,
            "{:<4} {:<16} {:>10.3} {:>8} {:>8}",
            "",
            "total",
            self.total_secs() * 1e3,
            first,
            last
        )
    }
}

fn banner(when: &str, pass: &str) -> String {
    format!("// ----- IR dump {when} {pass} ----- //\n")
}

fn emit(out: &mut dyn Write, text: &str) -> Result<(), PassError> {
    out.write_all(text.as_bytes()).map_err(|e| PassError::Io {
        path: "(dump stream)".into(),
        msg: e.to_string(),
    })
}

fn write_file(path: &std::path::Path, text: &str) -> Result<(), PassError> {
    std::fs::write(path, text).map_err(|e| PassError::Io {
        path: path.display().to_string(),
        msg: e.to_string(),
    })
}

/// Runs `-O level`'s pipeline on `m` with the default context for that level, no
/// instrumentation and no dumps: what a test or tool wants when it builds as
/// `llmc build -O<level>` does.
pub fn optimize(m: &mut Module, level: u8) -> Result<PassReport, PassError> {
    let ctx = PassContext {
        opt_level: level,
        ..Default::default()
    };
    let passes = crate::pipeline::pipeline_for_level(level);
    run_passes(
        m,
        &passes,
        &ctx,
        &Instrument::default(),
        &mut std::io::sink(),
    )
}

/// Runs `passes` over `m` in order, with the instrumentation of `inst`; IR dumps go to
/// `dumps` (the driver passes stderr).
pub fn run_passes(
    m: &mut Module,
    passes: &[&Pass],
    ctx: &PassContext,
    inst: &Instrument,
    dumps: &mut dyn Write,
) -> Result<PassReport, PassError> {
    inst.check()?;
    let verify = inst.verify_each || cfg!(debug_assertions);
    if let Some(dir) = &inst.dump_dir {
        std::fs::create_dir_all(dir).map_err(|e| PassError::Io {
            path: dir.display().to_string(),
            msg: e.to_string(),
        })?;
        write_file(&dir.join("00-input.llmc"), &llmc_ir::text::print(m))?;
    }
    let mut report = PassReport::default();
    for (i, p) in passes.iter().enumerate() {
        if inst.print_before.iter().any(|n| n == p.name) {
            emit(dumps, &banner("before", p.name))?;
            emit(dumps, &llmc_ir::text::print(m))?;
        }
        let nodes_before = m.graph.nodes.len();
        let before_text = inst.print_after_change.then(|| llmc_ir::text::print(m));
        let t0 = Instant::now();
        crate::take_note();
        let changed = (p.run)(m, ctx)? == Changed::Yes;
        let secs = t0.elapsed().as_secs_f64();
        if verify {
            llmc_ir::verify::verify(m).map_err(|errors| PassError::Verify {
                pass: p.name.to_string(),
                errors,
            })?;
        }
        report.rows.push(PassRow {
            pass: p.name.to_string(),
            secs,
            nodes_before,
            nodes_after: m.graph.nodes.len(),
            changed,
            note: crate::take_note(),
        });
        let wants_print = inst.print_after_all || inst.print_after.iter().any(|n| n == p.name);
        let needs_text = wants_print || before_text.is_some() || inst.dump_dir.is_some();
        if needs_text {
            let text = llmc_ir::text::print(m);
            // "Changed" for the dump means the text differs: a pass may report a change
            // that prints the same (a renumbering), and that is not worth a dump.
            let differs = before_text.as_ref().is_some_and(|b| *b != text);
            if wants_print || differs {
                emit(dumps, &banner("after", p.name))?;
                emit(dumps, &text)?;
            }
            if let Some(dir) = &inst.dump_dir {
                write_file(&dir.join(format!("{:02}-{}.llmc", i + 1, p.name)), &text)?;
            }
        }
    }
    Ok(report)
}
