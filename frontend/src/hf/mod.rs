//! The Hugging Face frontend: a model folder (`config.json`, `model.safetensors` or a
//! sharded `model.safetensors.index.json`, `tokenizer.json`, `tokenizer_config.json`,
//! `generation_config.json`) becomes a module. `config.json`'s `architectures[0]`
//! picks the family: causal LMs go to the decoder builder, BERT encoders to the
//! encoder builder; weights stay in the mapped safetensors files.

pub mod config;
pub mod info;
pub mod json;
pub mod safetensors;
pub mod source;

use crate::llm::decoder::build_decoder;
use crate::llm::encoder::{build_encoder, EncoderConfig};
use crate::llm::DecoderConfig;
use crate::FrontendError;
use json::JsonFile;
use llmc_ir::{ModelInfo, Module};
use source::{HfSource, Naming};
use std::path::Path;
use std::path::PathBuf;

/// The `architectures` llmc reads.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &[
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "GPT2LMHeadModel",
    "BertModel",
    "BertForMaskedLM",
];

/// Which builder a folder goes to, with its config.
#[derive(Clone, Debug, PartialEq)]
pub enum Family {
    /// A causal LM.
    Decoder(DecoderConfig),
    /// A sentence encoder.
    Encoder(EncoderConfig),
}

/// A folder read and understood, before the graph is built.
pub struct HfModel {
    /// The family and its config.
    pub family: Family,
    /// The weights under canonical names.
    pub source: HfSource,
    /// Tokenizer, special tokens, chat template.
    pub info: ModelInfo,
}

/// Reads `dir`'s config, weights and tokenizer files.
pub fn open(dir: &Path) -> Result<HfModel, FrontendError> {
    if !dir.is_dir() {
        return Err(format_err(dir, "not a folder"));
    }
    let cfg = JsonFile::read(&dir.join("config.json"))?;
    let arch = cfg
        .get("architectures")
        .and_then(|a| a.as_array())
        .and_then(|a| a.first())
        .ok_or_else(|| FrontendError::MissingKey {
            file: cfg.path.display().to_string(),
            key: "architectures".into(),
        })?;
    let arch = arch.as_str().ok_or_else(|| {
        format_err(
            &cfg.path,
            format!("key `architectures[0]` must be a string, got {arch}"),
        )
    })?;
    let (family, naming) = match arch {
        "LlamaForCausalLM" => (
            Family::Decoder(config::llama_like(&cfg, "llama")?),
            Naming::Identity,
        ),
        "MistralForCausalLM" => (
            Family::Decoder(config::llama_like(&cfg, "mistral")?),
            Naming::Identity,
        ),
        "Qwen2ForCausalLM" => (
            Family::Decoder(config::llama_like(&cfg, "qwen2")?),
            Naming::Identity,
        ),
        "GPT2LMHeadModel" => (Family::Decoder(config::gpt2(&cfg)?), Naming::Gpt2),
        "BertModel" | "BertForMaskedLM" => {
            (Family::Encoder(config::bert(&cfg, dir)?), Naming::Bert)
        }
        other => {
            return Err(FrontendError::UnknownArchitecture {
                file: cfg.path.display().to_string(),
                arch: other.to_string(),
                supported: SUPPORTED_ARCHITECTURES.join(", "),
            })
        }
    };
    let tensors = safetensors::read_dir(dir)?;
    let source = HfSource::new(dir.display().to_string(), tensors, naming);
    let mut info = info::model_info(dir, &cfg)?;
    let (arch, ctx) = match &family {
        Family::Decoder(c) => (&c.arch, c.context_length),
        Family::Encoder(c) => (&c.arch, c.max_positions),
    };
    info.architecture = arch.clone();
    info.context_length = Some(ctx);
    Ok(HfModel {
        family,
        source,
        info,
    })
}

/// Loads a Hugging Face model folder into a module.
pub fn load(dir: &Path) -> Result<Module, FrontendError> {
    let model = open(dir)?;
    match &model.family {
        Family::Encoder(cfg) => build_encoder(cfg, &model.source, model.info),
        Family::Decoder(cfg) => build_decoder(cfg, &model.source, model.info),
    }
}

/// A [`FrontendError::Format`] for `file`.
pub(crate) fn format_err(file: impl AsRef<Path>, msg: impl Into<String>) -> FrontendError {
    FrontendError::Format {
        file: file.as_ref().display().to_string(),
        msg: msg.into(),
    }
}

/// A [`FrontendError::Unsupported`] for `file`.
pub(crate) fn unsupported(file: impl AsRef<Path>, msg: impl Into<String>) -> FrontendError {
    FrontendError::Unsupported {
        file: file.as_ref().display().to_string(),
        msg: msg.into(),
    }
}

/// A [`FrontendError::Io`] for `path`.
pub(crate) fn io_err(path: impl AsRef<Path>, source: std::io::Error) -> FrontendError {
    FrontendError::Io {
        path: PathBuf::from(path.as_ref()),
        source,
    }
}
