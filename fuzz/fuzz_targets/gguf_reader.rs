//! Fuzz target: the GGUF reader and everything that reads its metadata (the llama
//! config, the tokenizer description, the graph builder) on arbitrary bytes. Any
//! panic, abort, or allocation failure is a bug: bad files must be errors.
#![no_main]

use libfuzzer_sys::fuzz_target;
use llmc_frontend::gguf::{self, GgufFile};

fuzz_target!(|data: &[u8]| {
    let Ok(f) = GgufFile::from_bytes(data, "fuzz.gguf") else {
        return;
    };
    let _ = gguf::vocab_spec(&f.header);
    if f.header.opt_str("general.architecture").ok().flatten() == Some("llama") {
        let _ = gguf::llama::build(&f);
    }
});
