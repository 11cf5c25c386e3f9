//! Fuzzes the safetensors header reader: any bytes must give either tensors whose
//! byte ranges lie inside the input, in order and without overlap, or an error —
//! never a panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use llmc_frontend::hf::safetensors::parse_header;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    if let Ok(entries) = parse_header(data, Path::new("fuzz.safetensors")) {
        let mut at = 0;
        for e in &entries {
            assert!(e.start >= at && e.start <= e.end && e.end <= data.len());
            at = e.end;
        }
    }
});
