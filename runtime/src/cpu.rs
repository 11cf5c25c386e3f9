//! The start-up CPU check. An executable's kernels are compiled for one CPU (`--cpu`,
//! the build machine's by default) and use whatever instructions that CPU has; copied
//! to a machine without one of them it would die on an illegal instruction at the first
//! kernel. The plan records the instruction-set extensions the code was built for
//! ([`crate::plan::CpuRequirement`]); [`check`] compares them with what this CPU (and
//! its OS, for the AVX register state) reports before anything runs, and names the
//! missing ones.
//!
//! Feature names are the ones `/proc/cpuinfo`-literate users know from Rust's
//! `is_x86_feature_detected!` (`avx512f`, `avx512vnni`, `fma`, ...). Names this module
//! cannot test are ignored, never reported missing.

/// Defines [`CHECKABLE`] and [`has`] from one list (std's detection macro needs each
/// name as a literal).
macro_rules! checkable {
    ($($name:tt),* $(,)?) => {
        /// Every feature name [`has`] can test, in a fixed order (the order messages
        /// use).
        pub const CHECKABLE: &[&str] = &[$($name),*];

        /// Whether this CPU has `feature`; `None` for a name this module cannot test (or
        /// on a non-x86 host).
        pub fn has(feature: &str) -> Option<bool> {
            #[cfg(target_arch = "x86_64")]
            {
                match feature {
                    $($name => Some(std::arch::is_x86_feature_detected!($name)),)*
                    _ => None,
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                let _ = feature;
                None
            }
        }
    };
}

checkable!(
    "sse3",
    "ssse3",
    "sse4.1",
    "sse4.2",
    "popcnt",
    "cmpxchg16b",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "bmi1",
    "bmi2",
    "lzcnt",
    "movbe",
    "avx512f",
    "avx512cd",
    "avx512dq",
    "avx512bw",
    "avx512vl",
    "avx512ifma",
    "avx512vbmi",
    "avx512vbmi2",
    "avx512vnni",
    "avx512bitalg",
    "avx512vpopcntdq",
    "avx512bf16",
    "avx512fp16",
    "avxvnni",
    "gfni",
    "vaes",
    "vpclmulqdq",
);

/// The checkable features this CPU has, in [`CHECKABLE`] order.
pub fn present() -> Vec<&'static str> {
    CHECKABLE
        .iter()
        .copied()
        .filter(|f| has(f) == Some(true))
        .collect()
}

/// The features of `required` this CPU lacks (in the order given).
pub fn missing(required: &[String]) -> Vec<String> {
    required
        .iter()
        .filter(|f| has(f) == Some(false))
        .cloned()
        .collect()
}

/// `Err` with the message users see when the CPU lacks part of what the code was
/// built for: `this executable needs avx512f, avx512vnni (built for cascadelake); this
/// CPU has sse3, ..., avx2, fma`.
pub fn check(req: &crate::plan::CpuRequirement) -> Result<(), String> {
    let lacking = missing(&req.features);
    if lacking.is_empty() {
        return Ok(());
    }
    let have = present();
    Err(format!(
        "this executable needs {} (built for {}); this CPU has {}. Rebuild with \
         `llmc build ... --cpu native` on this machine, or with `--cpu x86-64-v3` \
         (AVX2) for any recent x86-64 server",
        lacking.join(", "),
        req.built_for,
        if have.is_empty() {
            "none of the checked extensions".to_string()
        } else {
            have.join(", ")
        }
    ))
}

/// The environment variable that makes a `--cpu portable` executable run the named
/// variant (`x86-64-v3`) instead of the most capable one this CPU has.
pub const VARIANT_ENV: &str = "LLMC_CPU_VARIANT";

/// Which of a portable build's `variants` (most capable first) this CPU runs: the
/// one [`VARIANT_ENV`] names (it must exist and fit this CPU), else the first whose
/// extensions this CPU has all of; `Err` with [`check`]'s message for the least
/// demanding one when none fits.
pub fn choose(variants: &[crate::plan::CpuRequirement]) -> Result<usize, String> {
    let last = variants
        .last()
        .ok_or("this executable lists no CPU variants")?;
    if let Some(name) = std::env::var(VARIANT_ENV).ok().filter(|n| !n.is_empty()) {
        let i = variants
            .iter()
            .position(|v| v.built_for == name)
            .ok_or_else(|| {
                format!(
                    "{VARIANT_ENV}={name}: this executable has the variants {}",
                    variants
                        .iter()
                        .map(|v| v.built_for.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?;
        check(&variants[i]).map_err(|e| format!("{VARIANT_ENV}={name}: {e}"))?;
        return Ok(i);
    }
    match variants
        .iter()
        .position(|v| missing(&v.features).is_empty())
    {
        Some(i) => Ok(i),
        None => check(last).map(|()| variants.len() - 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_checkable_name_is_testable() {
        if cfg!(target_arch = "x86_64") {
            for f in CHECKABLE {
                assert!(has(f).is_some(), "{f}");
            }
            // x86-64 hosts all have SSE3 and CMPXCHG16B in practice; unknown names
            // are never reported missing.
            assert_eq!(has("avx9000"), None);
            assert!(missing(&["avx9000".into()]).is_empty());
        }
    }

    #[test]
    fn choose_takes_the_first_variant_this_cpu_has() {
        let req = |name: &str, features: Vec<String>| crate::plan::CpuRequirement {
            built_for: name.into(),
            features,
        };
        let have: Vec<String> = present().iter().map(|f| f.to_string()).collect();
        let absent: Vec<String> = CHECKABLE
            .iter()
            .filter(|f| has(f) == Some(false))
            .map(|f| f.to_string())
            .collect();
        let mut variants = vec![req("here", have.clone()), req("base", vec![])];
        if let Some(f) = absent.first() {
            let mut more = have.clone();
            more.push(f.clone());
            variants.insert(0, req("beyond", more));
            assert!(check(&variants[0]).is_err());
        }
        if std::env::var(VARIANT_ENV).is_err() {
            assert_eq!(variants[choose(&variants).unwrap()].built_for, "here");
        }
        assert!(choose(&[]).is_err());
    }

    #[test]
    fn check_names_what_is_missing() {
        let absent: Vec<String> = CHECKABLE
            .iter()
            .filter(|f| has(f) == Some(false))
            .map(|f| f.to_string())
            .collect();
        let req = crate::plan::CpuRequirement {
            built_for: "test-cpu".into(),
            features: present().iter().map(|f| f.to_string()).collect(),
        };
        assert_eq!(check(&req), Ok(()));
        if let Some(f) = absent.first() {
            let mut req = req.clone();
            req.features.push(f.clone());
            let e = check(&req).unwrap_err();
            assert!(
                e.starts_with(&format!("this executable needs {f} (built for test-cpu)")),
                "{e}"
            );
        }
    }
}
