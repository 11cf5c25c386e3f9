//! Model importers: each reads a model file format and builds an `llmc_ir::Module`.
//! [`load`] is the one door the driver uses: it recognises the kind of model a path
//! holds and hands it to the matching importer.

pub mod error;
pub mod gguf;
pub mod hf;
pub mod llm;
pub mod onnx;

pub use error::FrontendError;

use llmc_ir::Module;
use std::path::{Path, PathBuf};

/// The kinds of model [`load`] recognises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelKind {
    /// llmc IR text (`.llmc`).
    Text,
    /// A GGUF file.
    Gguf,
    /// A Hugging Face folder: `config.json` plus safetensors.
    HfFolder,
    /// An ONNX model.
    Onnx,
}

/// What kind of model `path` holds, and the path the importer should read (an HF
/// folder when `path` is its `config.json` or a safetensors file inside it). Decided by
/// the extension, then by the file's magic bytes.
pub fn detect(path: &Path) -> Result<(ModelKind, PathBuf), FrontendError> {
    let io = |source| FrontendError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.is_dir() {
        if path.join("config.json").is_file() {
            return Ok((ModelKind::HfFolder, path.to_path_buf()));
        }
        return Err(FrontendError::UnknownKind {
            path: path.to_path_buf(),
            msg: "a folder, but it has no config.json (a Hugging Face model folder has \
                  config.json and *.safetensors)"
                .into(),
        });
    }
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase());
    let parent_hf = || {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        dir.join("config.json")
            .is_file()
            .then_some((ModelKind::HfFolder, dir))
    };
    match ext.as_deref() {
        Some("llmc") => return Ok((ModelKind::Text, path.to_path_buf())),
        Some("gguf") => return Ok((ModelKind::Gguf, path.to_path_buf())),
        Some("onnx") => return Ok((ModelKind::Onnx, path.to_path_buf())),
        Some("safetensors") | Some("json") => {
            if let Some(found) = parent_hf() {
                return Ok(found);
            }
        }
        _ => {}
    }
    let mut magic = [0u8; 4];
    let n = {
        use std::io::Read;
        let mut f = std::fs::File::open(path).map_err(io)?;
        f.read(&mut magic).map_err(io)?
    };
    if n == 4 && &magic == b"GGUF" {
        return Ok((ModelKind::Gguf, path.to_path_buf()));
    }
    Err(FrontendError::UnknownKind {
        path: path.to_path_buf(),
        msg: "not a model llmc recognises (expected a .llmc text file, a .gguf file, \
              a Hugging Face folder with config.json, or a .onnx file)"
            .into(),
    })
}

/// Imports the model at `path`, whatever its kind (see [`detect`]).
pub fn load(path: &Path) -> Result<Module, FrontendError> {
    let (kind, path) = detect(path)?;
    match kind {
        ModelKind::Text => {
            let src = std::fs::read(&path).map_err(|source| FrontendError::Io {
                path: path.clone(),
                source,
            })?;
            Ok(llmc_ir::text::parse_bytes(
                &src,
                &path.display().to_string(),
            )?)
        }
        ModelKind::Gguf => gguf::load(&path),
        ModelKind::HfFolder => hf::load(&path),
        ModelKind::Onnx => onnx::load(&path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_kinds_by_extension_magic_and_folder() {
        let dir = std::env::temp_dir().join(format!("llmc-detect-{}", std::process::id()));
        let hf = dir.join("hf");
        std::fs::create_dir_all(&hf).unwrap();
        std::fs::write(hf.join("config.json"), "{}").unwrap();
        std::fs::write(hf.join("model.safetensors"), "").unwrap();
        std::fs::write(dir.join("a.llmc"), "").unwrap();
        std::fs::write(dir.join("m.onnx"), "").unwrap();
        std::fs::write(dir.join("noext"), b"GGUF\x03\0\0\0").unwrap();
        std::fs::write(dir.join("junk.bin"), b"hello").unwrap();

        assert_eq!(detect(&hf).unwrap(), (ModelKind::HfFolder, hf.clone()));
        assert_eq!(
            detect(&hf.join("model.safetensors")).unwrap(),
            (ModelKind::HfFolder, hf.clone())
        );
        assert_eq!(detect(&dir.join("a.llmc")).unwrap().0, ModelKind::Text);
        assert_eq!(detect(&dir.join("m.onnx")).unwrap().0, ModelKind::Onnx);
        assert_eq!(detect(&dir.join("noext")).unwrap().0, ModelKind::Gguf);
        let e = detect(&dir.join("junk.bin")).unwrap_err().to_string();
        assert!(e.contains("junk.bin") && e.contains("not a model"), "{e}");
        let e = detect(&dir).unwrap_err().to_string();
        assert!(e.contains("no config.json"), "{e}");
        let e = detect(&dir.join("missing.gguf")).unwrap_err().to_string();
        assert!(e.contains("missing.gguf"), "{e}");
        let e = load(&dir.join("m.onnx")).unwrap_err().to_string();
        assert!(
            e.contains("m.onnx") && e.contains("not an ONNX model"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
