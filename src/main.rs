//! The `llmc` command-line driver.
fn main() {}
