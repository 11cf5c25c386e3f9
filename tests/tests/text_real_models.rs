//! The text format at the scale of a real model: SmolLM2-135M (GGUF, 30 layers) imported
//! by the frontend verifies, prints, parses back (checked: every node re-typed by the op
//! table), and prints again to the same text; the DOT export names every node.
//! Needs the model under `$LLMC_MODELS` (default `.cache/models`); skips with a message
//! when it is absent.

use llmc_ir::text::{parse, print};
use llmc_ir::verify::verify;
use std::path::PathBuf;
use std::time::Instant;

const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

fn model(name: &str) -> Option<PathBuf> {
    let dir = match std::env::var_os("LLMC_MODELS") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/models"),
    };
    let p = dir.join(name);
    if p.exists() {
        Some(p)
    } else {
        eprintln!(
            "skipped: model not found at {}, run scripts/fetch-models (or set LLMC_MODELS)",
            p.display()
        );
        None
    }
}

#[test]
fn smollm2_round_trips_through_text() -> anyhow::Result<()> {
    let Some(path) = model(SMOLLM2) else {
        return Ok(());
    };
    let m = llmc_frontend::gguf::load(&path)?;
    verify(&m).map_err(|e| anyhow::anyhow!("imported module does not verify:\n{e}"))?;
    let t0 = Instant::now();
    let text = print(&m);
    let t1 = Instant::now();
    let back = parse(&text, "smollm2.llmc").map_err(|e| anyhow::anyhow!("{e}"))?;
    let t2 = Instant::now();
    eprintln!(
        "{} nodes, {} weights, {} bytes of text: print {:?}, parse {:?}",
        m.graph.nodes.len(),
        m.weights.len(),
        text.len(),
        t1 - t0,
        t2 - t1
    );
    assert_eq!(print(&back), text, "print(parse(print(m))) differs");
    verify(&back).map_err(|e| anyhow::anyhow!("parsed module does not verify:\n{e}"))?;
    // Same graph, weights and facts (weights compare by name, dtype, shape).
    assert_eq!(back.weights, m.weights);
    assert_eq!(back.info, m.info);
    assert_eq!(back.graph.nodes.len(), m.graph.nodes.len());
    for (a, b) in m.graph.nodes.iter().zip(&back.graph.nodes) {
        assert_eq!((a.op, &a.attrs), (b.op, &b.attrs));
    }
    let dot = llmc_ir::dot::to_dot(&m);
    for i in 0..m.graph.nodes.len() {
        assert!(
            dot.contains(&format!("\n  n{i} [label=")),
            "node {i} missing from DOT"
        );
    }
    Ok(())
}
