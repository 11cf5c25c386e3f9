//! The driver's view of the pieces other crates provide: the IR's text printer, DOT
//! export and verifier, and the runtime's tokenizer. Keeping every such call in one
//! file means each lands in one place as its crate grows, and commands stay plain
//! `anyhow` code.

use anyhow::{bail, Result};
use llmc_ir::{Module, TokenizerSource};

/// The module as llmc IR text.
pub fn print_text(_m: &Module) -> Result<String> {
    bail!("the llmc IR text printer is not available yet")
}

/// The graph as Graphviz DOT.
pub fn to_dot(_m: &Module) -> Result<String> {
    bail!("DOT export is not available yet")
}

/// Runs the IR verifier. Until it lands the interpreter's own checks (operand types,
/// result shapes against the declared types) are the only ones.
pub fn verify(_m: &Module) -> Result<()> {
    Ok(())
}

/// A tokenizer: text <-> token ids.
pub struct Tokenizer {
    _private: (),
}

impl Tokenizer {
    /// Loads the tokenizer a model names.
    pub fn load(src: &TokenizerSource) -> Result<Tokenizer> {
        match src {
            TokenizerSource::None => bail!("the model has no tokenizer"),
            TokenizerSource::HfJson(p) => {
                bail!(
                    "{}: tokenizer.json support is not available yet",
                    p.display()
                )
            }
            TokenizerSource::Gguf(p) => {
                bail!("{}: GGUF tokenizers are not available yet", p.display())
            }
        }
    }

    /// Text to ids (`add_special` adds what the tokenizer adds by default, e.g. BOS).
    pub fn encode(&self, _text: &str, _add_special: bool) -> Result<Vec<u32>> {
        bail!("tokenizer support is not available yet")
    }

    /// Ids to text.
    pub fn decode(&self, _ids: &[u32]) -> Result<String> {
        bail!("tokenizer support is not available yet")
    }

    /// The text of one token (special tokens included), if the id exists.
    pub fn token_text(&self, _id: u32) -> Option<String> {
        None
    }
}
