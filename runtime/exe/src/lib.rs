//! The emitted executable's C `main`: it hands the kernel table that the generated
//! object exports to the runtime's command line. Built as a static library and linked
//! by `llmc build` with the generated object (which defines `llmc_kernel_tables`, one
//! kernel table per CPU variant).

use llmc_runtime::abi::KernelTables;
use std::ffi::{c_char, c_int, CStr};

extern "C" {
    /// Exported by the generated object (see `llmc_runtime::abi`).
    static llmc_kernel_tables: KernelTables;
}

/// The process entry point.
///
/// # Safety
/// Called by the C runtime with a valid `argv` of `argc` strings.
#[no_mangle]
pub unsafe extern "C" fn main(argc: c_int, argv: *const *const c_char) -> c_int {
    let mut args = Vec::with_capacity(argc.max(0) as usize);
    for i in 0..argc.max(0) as usize {
        let p = *argv.add(i);
        if !p.is_null() {
            args.push(CStr::from_ptr(p).to_string_lossy().into_owned());
        }
    }
    let tables = (*std::ptr::addr_of!(llmc_kernel_tables)).tables();
    // A panic must not unwind into C.
    std::panic::catch_unwind(|| llmc_runtime::exe::main(args, &tables)).unwrap_or(101)
}
