//! Fuzz target: the ONNX loader (protobuf decoding, initializer decoding, the graph
//! walk with constant and shape folding, every op converter, shape inference) on
//! arbitrary bytes. Any panic, abort, or allocation failure is a bug: bad files must
//! be errors, and a header that lies about sizes must not make the loader allocate
//! what the file does not hold.
#![no_main]

use libfuzzer_sys::fuzz_target;
use llmc_frontend::onnx;

fuzz_target!(|data: &[u8]| {
    // In-memory import: external data is refused (there is no folder to read from),
    // so the fuzzer cannot reach the file system.
    let _ = onnx::load_bytes(data, "fuzz.onnx");
});
