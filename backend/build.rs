//! Embeds the runtime's static library (`llmc-rt-exe`, a build-dependency, so cargo
//! has built it before this script runs) into the backend: the link step writes it
//! out next to the generated object. Cargo gives build scripts no path to their
//! dependencies' artifacts, so the script finds `libllmc_rt_exe-*.a` in the `deps`
//! folder of this build's profile directory (the newest one, when several exist),
//! and strips its debug info (it is most of the archive's size).

use std::path::{Path, PathBuf};

fn candidates(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name();
            let n = name.to_string_lossy();
            if n.starts_with("libllmc_rt_exe") && n.ends_with(".a") {
                out.push(e.path());
            }
        }
    }
}

fn main() {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    // OUT_DIR = <target>/<profile>/build/llmc-backend-<hash>/out; host build
    // dependencies land in <target>/<profile>/deps (or, when cross-compiling, the
    // host profile directory <target>/<profile>/deps above the triple folder).
    let mut found = Vec::new();
    for up in out_dir.ancestors().skip(3).take(3) {
        candidates(&up.join("deps"), &mut found);
    }
    let newest = found
        .into_iter()
        .filter_map(|p| {
            let t = std::fs::metadata(&p).and_then(|m| m.modified()).ok()?;
            Some((t, p))
        })
        .max_by_key(|(t, _)| *t)
        .map(|(_, p)| p);
    let Some(lib) = newest else {
        panic!(
            "llmc-backend: cannot find libllmc_rt_exe-*.a near {} (the runtime static library should have been built as a build-dependency)",
            out_dir.display()
        );
    };
    let dest = out_dir.join("libllmc_rt.a");
    // Debug info is most of the archive (std's included): strip it when a strip tool
    // is at hand (GNU strip or LLVM's), else embed the archive as built.
    let _ = std::fs::remove_file(&dest);
    let llvm_strip = std::env::var("LLVM_SYS_191_PREFIX")
        .map(|p| format!("{p}/bin/llvm-strip"))
        .unwrap_or_else(|_| "llvm-strip".into());
    let stripped = ["strip", llvm_strip.as_str()].iter().any(|tool| {
        std::process::Command::new(tool)
            .arg("-g")
            .arg(&lib)
            .arg("-o")
            .arg(&dest)
            .status()
            .is_ok_and(|s| s.success())
            && dest.exists()
    });
    if !stripped {
        std::fs::copy(&lib, &dest).expect("copy the runtime static library");
    }
    // A content hash names the copy the link step writes to the temp folder, so
    // repeated links reuse one file and a rebuilt runtime never meets a stale copy.
    let bytes = std::fs::read(&dest).expect("read the runtime static library");
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &x in &bytes {
        h = (h ^ x as u64).wrapping_mul(0x0100_0000_01b3);
    }
    println!("cargo:rustc-env=LLMC_RT_HASH={h:016x}");
    println!("cargo:rerun-if-changed={}", lib.display());
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-env=LLMC_RT_LIB={}", dest.display());
}
