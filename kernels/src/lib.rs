//! Kernel templates producing target-neutral loop IR. Arrives with the CPU codegen issue.
