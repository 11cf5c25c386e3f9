//! The payload appended to the emitted executable: the plan and the data section
//! (weights and constants), found through a fixed trailer at the end of the file, so
//! the executable is one file. The data section starts page-aligned, and the runtime
//! memory-maps the executable, so weights are never copied.
//!
//! Layout: `[executable][pad][plan JSON][pad to 4096][data][trailer]`, trailer =
//! magic `LLMCPAY1`, then plan offset, plan length, data offset, data length (u64
//! little-endian, absolute file offsets).

use std::fs::File;
use std::io::Write;
use std::path::Path;

/// The trailer's magic.
pub const MAGIC: &[u8; 8] = b"LLMCPAY1";
/// Bytes in the trailer.
pub const TRAILER: usize = 8 + 4 * 8;
/// Alignment of the data section within the file.
pub const DATA_ALIGN: u64 = 4096;

/// Appends `plan` and the data section (the concatenation of `data`) to the file at
/// `path` (an executable just linked).
pub fn append(path: &Path, plan: &[u8], data: &[&[u8]]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new().append(true).open(path)?;
    let len = f.metadata()?.len();
    let plan_off = len;
    f.write_all(plan)?;
    let after = plan_off + plan.len() as u64;
    let data_off = after.div_ceil(DATA_ALIGN) * DATA_ALIGN;
    f.write_all(&vec![0u8; (data_off - after) as usize])?;
    let mut data_len = 0u64;
    for piece in data {
        f.write_all(piece)?;
        data_len += piece.len() as u64;
    }
    let mut t = Vec::with_capacity(TRAILER);
    t.extend_from_slice(MAGIC);
    for v in [plan_off, plan.len() as u64, data_off, data_len] {
        t.extend_from_slice(&v.to_le_bytes());
    }
    f.write_all(&t)?;
    f.flush()
}

/// The payload of a mapped executable: (plan bytes, data bytes).
pub fn locate(file: &[u8]) -> Result<(&[u8], &[u8]), String> {
    if file.len() < TRAILER {
        return Err("no llmc payload (file too short)".into());
    }
    let t = &file[file.len() - TRAILER..];
    if &t[..8] != MAGIC {
        return Err("no llmc payload (was this file built by `llmc build`?)".into());
    }
    let u = |i: usize| u64::from_le_bytes(t[8 + i * 8..16 + i * 8].try_into().unwrap_or([0; 8]));
    let (po, pl, d_o, dl) = (u(0), u(1), u(2), u(3));
    let body = (file.len() - TRAILER) as u64;
    let range = |o: u64, l: u64| -> Result<std::ops::Range<usize>, String> {
        match o.checked_add(l) {
            Some(e) if e <= body => Ok(o as usize..e as usize),
            _ => Err("the llmc payload trailer is corrupt".into()),
        }
    };
    Ok((&file[range(po, pl)?], &file[range(d_o, dl)?]))
}

/// The running executable, memory-mapped.
pub fn map_self() -> Result<memmap2::Mmap, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find my own file: {e}"))?;
    let f = File::open(&exe).map_err(|e| format!("cannot open {}: {e}", exe.display()))?;
    // SAFETY: the executable is not modified while it runs.
    unsafe { memmap2::Mmap::map(&f) }.map_err(|e| format!("cannot map {}: {e}", exe.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_then_locate() {
        let dir = std::env::temp_dir().join(format!("llmc-payload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("exe");
        std::fs::write(&p, b"\x7fELF pretend").unwrap();
        append(&p, b"{\"plan\":1}", &[&[7u8; 60], &[7u8; 40]]).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        let (plan, data) = locate(&bytes).unwrap();
        assert_eq!(plan, b"{\"plan\":1}");
        assert_eq!(data, &[7u8; 100][..]);
        let off = data.as_ptr() as usize - bytes.as_ptr() as usize;
        assert_eq!(off as u64 % DATA_ALIGN, 0);
        assert!(locate(b"short").is_err());
        std::fs::remove_dir_all(&dir).ok();
    }
}
