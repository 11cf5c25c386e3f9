//! The llmc text format (`docs/ir-text.md`): one printed form of a module that the
//! parser reads back to the same module. It is how passes are debugged
//! (`--print-ir-after-all`), how file tests are written, and what `llmc inspect`
//! shows, so the printer is canonical (the same module always prints the same bytes)
//! and the parser never panics on any input.
//!
//! Value numbering: the parser creates the weights' values first (declaration order),
//! then the graph inputs, then node results in order. A module built in that order with
//! unique value names satisfies `parse(print(m)) == m` exactly; any other module
//! round-trips up to value numbering and the printer's renaming of duplicate names.

mod lex;
mod parse;
mod print;

pub(crate) use parse::kind_name;
pub use parse::{parse, parse_bytes, parse_tensor, parse_unchecked};
pub use print::{print, print_attr, print_tensor, value_names};

use std::fmt;

/// A parse error at a position of a file: displays as `FILE:LINE:COL: message`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ParseError {
    /// The file name given to the parser.
    pub file: String,
    /// 1-based line.
    pub line: u32,
    /// 1-based column, in characters.
    pub col: u32,
    /// What is wrong.
    pub msg: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}", self.file, self.line, self.col, self.msg)
    }
}

/// True for names printed bare after `%` or `@` (`[A-Za-z0-9_.\-]+`); other names are
/// printed quoted (`%"onnx::MatMul_0"`).
pub fn is_bare_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// True for names usable as a dim symbol: an identifier `[A-Za-z_][A-Za-z0-9_]*` that is
/// not one of the words with another meaning in a literal (`inf`, `nan`, `true`,
/// `false`) nor a dtype name.
pub fn is_symbol_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    let first_ok = matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_');
    first_ok
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !matches!(s, "inf" | "nan" | "true" | "false" | "dense")
        && crate::DType::from_name(s).is_none()
}

#[cfg(test)]
mod tests;
