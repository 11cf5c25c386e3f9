//! GGUF import: llama.cpp's single-file format (metadata + possibly block-quantized
//! tensors). The container is read over a memory map ([`reader`]); each architecture
//! maps its metadata to a family config and its tensor names to canonical names
//! ([`decoder`], one builder for every architecture; [`llama`] holds that family's Q/K
//! row permutation), and the shared builders in `crate::llm` emit the graph. Weights stay
//! in the file: the module's weights are byte ranges of the mapping.

pub mod decoder;
pub mod llama;
pub mod reader;

use crate::FrontendError;
use llmc_ir::{Module, WeightData};
use llmc_runtime::{Tokenizer, VocabSpec};
use reader::{GgufHeader, TensorInfo};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Architectures [`load`] imports.
pub const SUPPORTED_ARCHITECTURES: &[&str] = decoder::ARCHITECTURES;

/// An open GGUF file: its parsed header and the mapping its tensors live in.
pub struct GgufFile {
    /// The file.
    pub path: Arc<PathBuf>,
    /// Metadata and tensor records.
    pub header: GgufHeader,
    map: Arc<memmap2::Mmap>,
}

impl GgufFile {
    /// Maps and parses a GGUF file.
    pub fn open(path: &Path) -> Result<GgufFile, FrontendError> {
        let io = |source| FrontendError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the mapping is read-only; like every reader of memory-mapped model
        // files we assume the file is not truncated or rewritten while it is mapped.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        let header = GgufHeader::parse(&map, &path.display().to_string())?;
        Ok(GgufFile {
            path: Arc::new(path.to_path_buf()),
            header,
            map: Arc::new(map),
        })
    }

    /// Parses a GGUF file held in memory (tests, fuzzing): the bytes are copied into
    /// an anonymous mapping so that weights refer to it as they would to a file.
    pub fn from_bytes(bytes: &[u8], name: &str) -> Result<GgufFile, FrontendError> {
        let header = GgufHeader::parse(bytes, name)?;
        let io = |source| FrontendError::Io {
            path: PathBuf::from(name),
            source,
        };
        let mut anon = memmap2::MmapMut::map_anon(bytes.len().max(1)).map_err(io)?;
        anon[..bytes.len()].copy_from_slice(bytes);
        let map = anon.make_read_only().map_err(io)?;
        Ok(GgufFile {
            path: Arc::new(PathBuf::from(name)),
            header,
            map: Arc::new(map),
        })
    }

    /// The bytes of a tensor (ranges were checked when the header was parsed).
    pub fn tensor_bytes(&self, t: &TensorInfo) -> &[u8] {
        let start = t.offset as usize;
        self.map.get(start..start + t.size as usize).unwrap_or(&[])
    }

    /// A tensor's data as a weight: a range of the shared mapping, no copy.
    pub fn tensor_data(&self, t: &TensorInfo) -> WeightData {
        WeightData::Mapped {
            map: self.map.clone(),
            path: self.path.clone(),
            offset: t.offset as usize,
            len: t.size as usize,
        }
    }

    /// The file name for messages.
    pub fn name(&self) -> String {
        self.path.display().to_string()
    }
}

/// Loads a GGUF model as a module.
pub fn load(path: &Path) -> Result<Module, FrontendError> {
    let f = GgufFile::open(path)?;
    decoder::build(&f)
}

/// Reads the `tokenizer.ggml.*` metadata into a vocabulary description.
pub fn vocab_spec(h: &GgufHeader) -> Result<VocabSpec, FrontendError> {
    let model = h.req_str("tokenizer.ggml.model")?.to_string();
    let tokens =
        h.opt_str_array("tokenizer.ggml.tokens")?
            .ok_or_else(|| FrontendError::MissingKey {
                file: h.file.clone(),
                key: "tokenizer.ggml.tokens".into(),
            })?;
    let id = |key: &str| -> Result<Option<u32>, FrontendError> {
        match h.opt_count(key)? {
            None => Ok(None),
            Some(v) if (v as u64) < tokens.len() as u64 => Ok(Some(v as u32)),
            Some(v) => Err(FrontendError::BadValue {
                file: h.file.clone(),
                key: key.to_string(),
                msg: format!(
                    "id {v} is outside the vocabulary of {} tokens",
                    tokens.len()
                ),
            }),
        }
    };
    let scores = h
        .opt_f64_array("tokenizer.ggml.scores")?
        .unwrap_or_default()
        .into_iter()
        .map(|s| s as f32)
        .collect();
    let token_types = h
        .opt_int_array("tokenizer.ggml.token_type")?
        .unwrap_or_default()
        .into_iter()
        .map(|t| t.clamp(i32::MIN as i64, i32::MAX as i64) as i32)
        .collect();
    let sentencepiece = model == "llama";
    Ok(VocabSpec {
        pre: h.opt_str("tokenizer.ggml.pre")?.map(str::to_string),
        scores,
        token_types,
        merges: h
            .opt_str_array("tokenizer.ggml.merges")?
            .unwrap_or_default(),
        bos: id("tokenizer.ggml.bos_token_id")?,
        eos: id("tokenizer.ggml.eos_token_id")?,
        eot: id("tokenizer.ggml.eot_token_id")?,
        unk: id("tokenizer.ggml.unknown_token_id")?,
        pad: id("tokenizer.ggml.padding_token_id")?,
        add_bos: h
            .opt_bool("tokenizer.ggml.add_bos_token")?
            .unwrap_or(sentencepiece),
        add_eos: h.opt_bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false),
        add_space_prefix: h
            .opt_bool("tokenizer.ggml.add_space_prefix")?
            .unwrap_or(sentencepiece),
        chat_template: h.opt_str("tokenizer.chat_template")?.map(str::to_string),
        model,
        tokens,
    })
}

/// Builds the tokenizer a GGUF file describes.
pub fn load_tokenizer(path: &Path) -> Result<Tokenizer, FrontendError> {
    let f = GgufFile::open(path)?;
    let spec = vocab_spec(&f.header)?;
    Tokenizer::from_vocab(&spec).map_err(|source| FrontendError::Tokenizer {
        file: f.name(),
        source,
    })
}
