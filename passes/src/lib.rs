//! Optimization passes over the llmc IR and the pass manager that runs them per -O
//! level. The pipeline arrives with the optimizer issue; this crate holds its place in
//! the workspace so the dependency graph is fixed from the start.
pub mod egraph;
