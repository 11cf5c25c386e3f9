//! LLVM code generation and the link step. Arrives with the CPU codegen issue.
