//! What a `--cpu` target lets LLVM use, in the runtime's feature names
//! ([`llmc_runtime::cpu::CHECKABLE`]), so the executable can check the machine it runs
//! on at start instead of dying on an illegal instruction. For `native` LLVM reports the
//! host's features itself; named CPUs imply theirs, which LLVM does not expose, so this
//! table lists the extensions that matter for code generation (vector ISA, bit
//! manipulation) per CPU that `--cpu` accepts. Crypto and AMX extensions are left out:
//! LLVM emits them only for their intrinsics, which llmc's kernels do not use.

use llmc_runtime::cpu::CHECKABLE;

const V2: &[&str] = &["sse3", "ssse3", "sse4.1", "sse4.2", "popcnt", "cmpxchg16b"];
const V3: &[&str] = &[
    "avx", "avx2", "fma", "f16c", "bmi1", "bmi2", "lzcnt", "movbe",
];
const V4: &[&str] = &["avx512f", "avx512cd", "avx512dq", "avx512bw", "avx512vl"];
const ICL: &[&str] = &[
    "avx512ifma",
    "avx512vbmi",
    "avx512vbmi2",
    "avx512vnni",
    "avx512bitalg",
    "avx512vpopcntdq",
    "gfni",
    "vaes",
    "vpclmulqdq",
];

/// The extensions a named x86-64 CPU implies, or `None` for a name not in the table.
pub fn named_cpu_features(cpu: &str) -> Option<Vec<&'static str>> {
    let mut f: Vec<&'static str> = Vec::new();
    let mut add = |xs: &[&'static str]| f.extend_from_slice(xs);
    match cpu {
        "x86-64" | "generic" => {}
        "core2" => add(&["sse3", "ssse3", "cmpxchg16b"]),
        "nehalem" | "westmere" | "x86-64-v2" => add(V2),
        "sandybridge" => {
            add(V2);
            add(&["avx"]);
        }
        "ivybridge" => {
            add(V2);
            add(&["avx", "f16c"]);
        }
        "x86-64-v3" | "haswell" | "broadwell" | "skylake" | "znver1" | "znver2" => {
            add(V2);
            add(V3);
        }
        "znver3" => {
            add(V2);
            add(V3);
            add(&["vaes", "vpclmulqdq"]);
        }
        "alderlake" | "raptorlake" | "meteorlake" => {
            add(V2);
            add(V3);
            add(&["avxvnni", "gfni", "vaes", "vpclmulqdq"]);
        }
        "x86-64-v4" | "skylake-avx512" => {
            add(V2);
            add(V3);
            add(V4);
        }
        "cascadelake" => {
            add(V2);
            add(V3);
            add(V4);
            add(&["avx512vnni"]);
        }
        "cooperlake" => {
            add(V2);
            add(V3);
            add(V4);
            add(&["avx512vnni", "avx512bf16"]);
        }
        "icelake-client" | "icelake-server" | "tigerlake" => {
            add(V2);
            add(V3);
            add(V4);
            add(ICL);
        }
        "sapphirerapids" | "emeraldrapids" | "graniterapids" => {
            add(V2);
            add(V3);
            add(V4);
            add(ICL);
            add(&["avx512bf16", "avx512fp16", "avxvnni"]);
        }
        "znver4" => {
            add(V2);
            add(V3);
            add(V4);
            add(ICL);
            add(&["avx512bf16"]);
        }
        "znver5" => {
            add(V2);
            add(V3);
            add(V4);
            add(ICL);
            add(&["avx512bf16", "avxvnni"]);
        }
        _ => return None,
    }
    Some(f)
}

/// An LLVM feature name in the runtime's spelling.
fn runtime_name(llvm: &str) -> &str {
    match llvm {
        "bmi" => "bmi1",
        "cx16" => "cmpxchg16b",
        other => other,
    }
}

/// The checkable extensions of a target machine: its CPU's (named CPUs through the
/// table; `native` arrives as the host's name with its feature list) plus the `+`
/// features of `feature_string`, minus its `-` features; in [`CHECKABLE`] order.
pub fn required_features(cpu: &str, feature_string: &str) -> Vec<String> {
    let mut set: Vec<&str> = named_cpu_features(cpu).unwrap_or_default();
    for f in feature_string.split(',').map(str::trim) {
        if let Some(name) = f.strip_prefix('+') {
            set.push(runtime_name(name));
        } else if let Some(name) = f.strip_prefix('-') {
            let name = runtime_name(name);
            set.retain(|x| *x != name);
        }
    }
    CHECKABLE
        .iter()
        .filter(|c| set.contains(c))
        .map(|c| c.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_nest_and_features_edit_the_set() {
        let v3 = required_features("x86-64-v3", "");
        assert!(v3.contains(&"avx2".to_string()) && v3.contains(&"fma".to_string()));
        assert!(!v3.iter().any(|f| f.starts_with("avx512")));
        let v4 = required_features("x86-64-v4", "");
        assert!(v3.iter().all(|f| v4.contains(f)));
        assert!(v4.contains(&"avx512bw".to_string()));
        let edited = required_features("x86-64-v3", "+avx512vnni,-fma,+bmi,+aes");
        assert!(edited.contains(&"avx512vnni".to_string()));
        assert!(!edited.contains(&"fma".to_string()));
        assert!(required_features("x86-64", "").is_empty());
        let spr = required_features("sapphirerapids", "");
        assert!(spr.contains(&"avx512fp16".to_string()));
    }

    #[test]
    fn every_table_name_is_checkable() {
        for cpu in [
            "core2",
            "ivybridge",
            "x86-64-v4",
            "cooperlake",
            "graniterapids",
            "znver5",
            "meteorlake",
        ] {
            for f in named_cpu_features(cpu).unwrap() {
                assert!(CHECKABLE.contains(&f), "{cpu}: {f}");
            }
        }
    }
}
