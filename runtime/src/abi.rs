//! The ABI between generated code and the runtime — the one place both sides agree
//! on. The backend imports these names and signatures from here when it emits code;
//! the runtime uses them to call what was emitted.
//!
//! - Every kernel is `extern "C" fn(bufs: *const *mut u8, dims: *const i64)`: `bufs`
//!   holds the kernel's parameter buffers in order (operands, then results), `dims`
//!   the values of the graph symbols the kernel was specialised over, in the order
//!   the plan lists them for that step.
//! - A parallel loop is outlined into a [`BodyFn`] over a context block and handed
//!   to [`PARALLEL_FOR_SYMBOL`] (`llmc_parallel_for`, the runtime's thread pool),
//!   which calls the body on disjoint `[start, end)` ranges covering `0..n`.
//! - The object exports [`KERNEL_TABLE_SYMBOL`], a [`KernelTable`] listing every
//!   kernel by name in plan order, and [`KERNEL_TABLES_SYMBOL`], the [`KernelTables`]
//!   of every variant the executable carries (one; or, built with `--cpu portable`,
//!   one per instruction-set level, in the order of the plan's `cpu_variants`, whose
//!   tables are `llmc_kernel_table_v0`, `_v1`, … and whose kernels' symbols carry the
//!   same `v0`, `v1` tag).

use std::ffi::{c_char, CStr};

/// A compiled kernel.
pub type KernelFn = unsafe extern "C" fn(bufs: *const *mut u8, dims: *const i64);

/// The body of an outlined parallel loop: runs iterations `start..end`.
pub type BodyFn = unsafe extern "C" fn(ctx: *mut u8, start: i64, end: i64);

/// `llmc_parallel_for(body, ctx, n)`: the runtime entry generated code calls.
pub type ParallelForFn = unsafe extern "C" fn(body: BodyFn, ctx: *mut u8, n: i64);

/// The symbol of the kernel table the object exports.
pub const KERNEL_TABLE_SYMBOL: &str = "llmc_kernel_table";

/// The symbol of the list of kernel tables (one per CPU variant) the object exports.
pub const KERNEL_TABLES_SYMBOL: &str = "llmc_kernel_tables";

/// The symbol of the runtime's parallel-for.
pub const PARALLEL_FOR_SYMBOL: &str = "llmc_parallel_for";

/// The ABI version written into plans; a plan of another version is refused.
pub const ABI_VERSION: u32 = 1;

/// One kernel of the table.
#[repr(C)]
pub struct KernelEntry {
    /// NUL-terminated kernel name.
    pub name: *const c_char,
    /// The kernel.
    pub func: KernelFn,
}

/// The table an object exports: `count` entries at `entries`.
#[repr(C)]
pub struct KernelTable {
    /// Number of entries.
    pub count: u64,
    /// The entries.
    pub entries: *const KernelEntry,
}

/// The variants' tables an object exports: `count` pointers at `tables`.
#[repr(C)]
pub struct KernelTables {
    /// Number of tables.
    pub count: u64,
    /// The tables.
    pub tables: *const *const KernelTable,
}

impl KernelTables {
    /// The tables, in variant order.
    ///
    /// # Safety
    /// The list must be what generated code exported: `count` valid table pointers.
    pub unsafe fn tables(&self) -> Vec<&KernelTable> {
        (0..self.count as usize)
            .map(|i| &**self.tables.add(i))
            .collect()
    }
}

impl KernelTable {
    /// The entries as (name, function) pairs.
    ///
    /// # Safety
    /// The table must be what generated code exported (or built the same way): `count`
    /// valid entries with NUL-terminated names.
    pub unsafe fn kernels(&self) -> Vec<(String, KernelFn)> {
        let mut out = Vec::with_capacity(self.count as usize);
        for i in 0..self.count as usize {
            let e = &*self.entries.add(i);
            let name = CStr::from_ptr(e.name).to_string_lossy().into_owned();
            out.push((name, e.func));
        }
        out
    }
}
