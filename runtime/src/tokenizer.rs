//! Text <-> token ids for the emitted executable. A thin wrapper over the `tokenizers`
//! crate: built either from a Hugging Face `tokenizer.json` or from plain vocabulary
//! data (what a GGUF file carries), plus what serving needs around it: special-token
//! ids, a streaming decoder that never emits half a UTF-8 character, and chat
//! templates rendered with `minijinja`.
//!
//! A [`VocabSpec`] is turned into a `tokenizer.json` document and loaded like any
//! other, so both paths end in the same, well-tested deserializer.

use serde_json::{json, Map, Value as Json};
use std::collections::{BTreeMap, HashMap};

/// Token types as GGUF (`tokenizer.ggml.token_type`) numbers them.
pub mod token_type {
    /// An ordinary token.
    pub const NORMAL: i32 = 1;
    /// The unknown token.
    pub const UNKNOWN: i32 = 2;
    /// A control token (`<s>`, `<|im_start|>`): special, matched whole in text.
    pub const CONTROL: i32 = 3;
    /// A user-defined token: matched whole in text, not special.
    pub const USER_DEFINED: i32 = 4;
    /// An unused slot.
    pub const UNUSED: i32 = 5;
    /// A byte token (`<0x0A>`) used by byte fallback.
    pub const BYTE: i32 = 6;
}

/// A tokenizer error.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// The tokenizer description is invalid.
    #[error("building the tokenizer: {0}")]
    Build(String),
    /// Encoding failed.
    #[error("encoding text: {0}")]
    Encode(String),
    /// Decoding failed.
    #[error("decoding ids: {0}")]
    Decode(String),
    /// The chat template is missing, does not parse, or failed while rendering.
    #[error("chat template: {0}")]
    Template(String),
}

/// Plain vocabulary data, as a GGUF file stores it (`tokenizer.ggml.*`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VocabSpec {
    /// `gpt2` (byte-level BPE with merges) or `llama` (SentencePiece-style BPE from
    /// scores, `▁` for spaces, byte fallback).
    pub model: String,
    /// The pre-tokenizer's name for byte-level BPE (`tokenizer.ggml.pre`): `default`,
    /// `gpt2`, `smollm`, `llama-bpe`/`llama3`, `qwen2`, ...; `None` = `default`.
    pub pre: Option<String>,
    /// Token strings by id.
    pub tokens: Vec<String>,
    /// Scores by id (SentencePiece vocabularies; empty otherwise).
    pub scores: Vec<f32>,
    /// Token types by id (see [`token_type`]); empty = all normal.
    pub token_types: Vec<i32>,
    /// Merges as `"left right"` (byte-level BPE).
    pub merges: Vec<String>,
    /// Beginning-of-sequence id.
    pub bos: Option<u32>,
    /// End-of-sequence id.
    pub eos: Option<u32>,
    /// End-of-turn id, if distinct from `eos` (generation also stops there).
    pub eot: Option<u32>,
    /// Unknown-token id.
    pub unk: Option<u32>,
    /// Padding id.
    pub pad: Option<u32>,
    /// Prepend BOS when encoding with special tokens.
    pub add_bos: bool,
    /// Append EOS when encoding with special tokens.
    pub add_eos: bool,
    /// SentencePiece: prepend `▁` to the text (the "dummy prefix").
    pub add_space_prefix: bool,
    /// Chat template (Jinja).
    pub chat_template: Option<String>,
}

/// One chat message for [`Tokenizer::apply_chat_template`].
#[derive(Clone, Debug, PartialEq)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, ...
    pub role: String,
    /// The text.
    pub content: String,
}

impl ChatMessage {
    /// Builds a message.
    pub fn new(role: &str, content: &str) -> ChatMessage {
        ChatMessage {
            role: role.to_string(),
            content: content.to_string(),
        }
    }
}

/// A tokenizer with its special tokens and chat template.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// `inner.get_vocab_size(true)`, kept: the crate builds the whole vocabulary map
    /// to count it (~8 ms for 49k tokens), and decoding checks ids on every token.
    vocab_size: usize,
    bos: Option<u32>,
    eos: Vec<u32>,
    chat_template: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish()
    }
}

/// The GPT-2 byte-to-character table: printable bytes map to themselves, the others
/// to code points from U+0100 upward, so every byte string has a printable spelling.
fn byte_alphabet() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[b as usize] = if printable {
            b as char
        } else {
            let c = char::from_u32(next).unwrap_or('\u{FFFD}');
            next += 1;
            c
        };
    }
    table
}

/// Split patterns of byte-level pre-tokenizers, by `tokenizer.ggml.pre` name (those
/// llama.cpp defines in `llama-vocab.cpp`). `None` = GPT-2's own regex, applied by the
/// ByteLevel pre-tokenizer itself.
fn pre_split(pre: &str) -> Result<(Option<&'static str>, bool), TokenizerError> {
    const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    // (split regex, split digits individually first)
    Ok(match pre {
        "default" | "gpt2" | "gpt-2" => (None, false),
        "smollm" => (None, true),
        "llama3" | "llama-v3" | "llama-bpe" | "smaug-bpe" | "dbrx" => (Some(LLAMA3), false),
        "qwen2" | "deepseek-r1-qwen" => (Some(QWEN2), false),
        other => {
            return Err(TokenizerError::Build(format!(
                "pre-tokenizer `{other}` is not supported (known: default, gpt2, smollm, \
                 llama-bpe, llama3, qwen2)"
            )))
        }
    })
}

fn byte_level(use_regex: bool) -> Json {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

impl VocabSpec {
    fn token_type(&self, id: usize) -> i32 {
        self.token_types
            .get(id)
            .copied()
            .unwrap_or(token_type::NORMAL)
    }

    fn token_name(&self, id: Option<u32>, what: &str) -> Result<Option<String>, TokenizerError> {
        match id {
            None => Ok(None),
            Some(i) => self
                .tokens
                .get(i as usize)
                .cloned()
                .map(Some)
                .ok_or_else(|| {
                    TokenizerError::Build(format!(
                        "{what} id {i} is outside the vocabulary of {} tokens",
                        self.tokens.len()
                    ))
                }),
        }
    }

    /// Token -> first id carrying it (a vocabulary may repeat a string).
    fn vocab_map(&self) -> Map<String, Json> {
        let mut m = Map::new();
        for (i, t) in self.tokens.iter().enumerate() {
            if !m.contains_key(t) {
                m.insert(t.clone(), json!(i));
            }
        }
        m
    }

    /// Control and user-defined tokens, matched whole in text before the model runs.
    fn added_tokens(&self, byte_level: bool) -> Vec<Json> {
        let alphabet: std::collections::HashSet<char> = byte_alphabet().into_iter().collect();
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (i, t) in self.tokens.iter().enumerate() {
            let ty = self.token_type(i);
            let special = match ty {
                token_type::CONTROL => true,
                token_type::USER_DEFINED => false,
                _ => continue,
            };
            // In a byte-level vocabulary every real token is spelled in the byte
            // alphabet; a "control" token that is not is a converter's mislabel.
            if t.is_empty() || (byte_level && special && !t.chars().all(|c| alphabet.contains(&c)))
            {
                continue;
            }
            if !seen.insert(t.as_str()) {
                continue;
            }
            out.push(json!({
                "id": i, "content": t, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": special,
            }));
        }
        out
    }

    fn post_processor(&self) -> Result<Json, TokenizerError> {
        let bos = if self.add_bos {
            self.token_name(self.bos, "BOS")?
                .map(|t| (t, self.bos.unwrap_or(0)))
        } else {
            None
        };
        let eos = if self.add_eos {
            self.token_name(self.eos, "EOS")?
                .map(|t| (t, self.eos.unwrap_or(0)))
        } else {
            None
        };
        if bos.is_none() && eos.is_none() {
            return Ok(Json::Null);
        }
        let mut single = Vec::new();
        let mut pair = Vec::new();
        let mut specials = Map::new();
        let piece = |t: &str| json!({"SpecialToken": {"id": t, "type_id": 0}});
        if let Some((t, id)) = &bos {
            single.push(piece(t));
            pair.push(piece(t));
            specials.insert(t.clone(), json!({"id": t, "ids": [id], "tokens": [t]}));
        }
        single.push(json!({"Sequence": {"id": "A", "type_id": 0}}));
        pair.push(json!({"Sequence": {"id": "A", "type_id": 0}}));
        if let Some((t, id)) = &eos {
            single.push(piece(t));
            pair.push(piece(t));
            specials.insert(t.clone(), json!({"id": t, "ids": [id], "tokens": [t]}));
        }
        if let Some((t, _)) = &bos {
            pair.push(piece(t));
        }
        pair.push(json!({"Sequence": {"id": "B", "type_id": 1}}));
        if let Some((t, _)) = &eos {
            pair.push(piece(t));
        }
        Ok(
            json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials}),
        )
    }

    /// Byte-level BPE (GPT-2 family): merges from the file, a split regex chosen by the
    /// pre-tokenizer name, bytes spelled in the GPT-2 alphabet.
    fn gpt2_json(&self) -> Result<Json, TokenizerError> {
        let mut merges = Vec::with_capacity(self.merges.len());
        for (i, m) in self.merges.iter().enumerate() {
            let mut parts = m.split(' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(a), Some(b), None) if !a.is_empty() && !b.is_empty() => {
                    merges.push(json!([a, b]))
                }
                _ => {
                    return Err(TokenizerError::Build(format!(
                        "merge {i} `{m}` is not two tokens separated by one space"
                    )))
                }
            }
        }
        let (split, digits) = pre_split(self.pre.as_deref().unwrap_or("default"))?;
        let mut pre = Vec::new();
        if digits {
            pre.push(json!({"type": "Digits", "individual_digits": true}));
        }
        if let Some(re) = split {
            pre.push(json!({"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false}));
            pre.push(byte_level(false));
        } else {
            pre.push(byte_level(true));
        }
        Ok(json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": self.added_tokens(true),
            "normalizer": null,
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": pre},
            "post_processor": self.post_processor()?,
            "decoder": byte_level(true),
            "model": {
                "type": "BPE", "dropout": null, "unk_token": null,
                "continuing_subword_prefix": null, "end_of_word_suffix": null,
                "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": self.vocab_map(), "merges": merges,
            },
        }))
    }

    /// SentencePiece-style BPE (Llama 1/2, Mistral): the file gives scores, not merges.
    /// A pair merges into a token when both halves are tokens, ranked by the merged
    /// token's score (highest first) -- the order llama.cpp's SPM tokenizer merges in.
    fn llama_json(&self) -> Result<Json, TokenizerError> {
        if self.scores.len() != self.tokens.len() {
            return Err(TokenizerError::Build(format!(
                "{} scores for {} tokens",
                self.scores.len(),
                self.tokens.len()
            )));
        }
        let ids: HashMap<&str, usize> = {
            let mut m = HashMap::new();
            for (i, t) in self.tokens.iter().enumerate() {
                m.entry(t.as_str()).or_insert(i);
            }
            m
        };
        // (score, left len, right len, left id, right id, left, right)
        let mut cands: Vec<(f32, usize, usize, usize, usize, &str, &str)> = Vec::new();
        for (i, t) in self.tokens.iter().enumerate() {
            if !matches!(
                self.token_type(i),
                token_type::NORMAL | token_type::USER_DEFINED
            ) || ids.get(t.as_str()) != Some(&i)
            {
                continue;
            }
            for (k, _) in t.char_indices().skip(1) {
                let (a, b) = t.split_at(k);
                if let (Some(&ia), Some(&ib)) = (ids.get(a), ids.get(b)) {
                    cands.push((
                        self.scores[i],
                        a.chars().count(),
                        b.chars().count(),
                        ia,
                        ib,
                        a,
                        b,
                    ));
                }
            }
        }
        // Best score first; ties: longer left piece, longer right piece, then ids.
        cands.sort_by(|x, y| {
            y.0.total_cmp(&x.0)
                .then(y.1.cmp(&x.1))
                .then(y.2.cmp(&x.2))
                .then(x.3.cmp(&y.3))
                .then(x.4.cmp(&y.4))
        });
        let merges: Vec<Json> = cands.iter().map(|c| json!([c.5, c.6])).collect();
        let unk = self.token_name(self.unk, "unknown-token")?;
        let prepend = if self.add_space_prefix {
            "first"
        } else {
            "never"
        };
        Ok(json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": self.added_tokens(false),
            "normalizer": null,
            "pre_tokenizer": {"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": prepend, "split": false},
            "post_processor": self.post_processor()?,
            "decoder": {"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
                {"type": "ByteFallback"},
                {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": if self.add_space_prefix { 1 } else { 0 }, "stop": 0},
            ]},
            "model": {
                "type": "BPE", "dropout": null, "unk_token": unk,
                "continuing_subword_prefix": null, "end_of_word_suffix": null,
                "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                "vocab": self.vocab_map(), "merges": merges,
            },
        }))
    }

    /// The equivalent `tokenizer.json` document.
    pub fn to_tokenizer_json(&self) -> Result<Json, TokenizerError> {
        if self.tokens.is_empty() {
            return Err(TokenizerError::Build("the vocabulary is empty".into()));
        }
        if !self.token_types.is_empty() && self.token_types.len() != self.tokens.len() {
            return Err(TokenizerError::Build(format!(
                "{} token types for {} tokens",
                self.token_types.len(),
                self.tokens.len()
            )));
        }
        match self.model.as_str() {
            "gpt2" => self.gpt2_json(),
            "llama" => self.llama_json(),
            other => Err(TokenizerError::Build(format!(
                "tokenizer model `{other}` is not supported (known: gpt2, llama)"
            ))),
        }
    }
}

impl Tokenizer {
    /// Loads a Hugging Face `tokenizer.json`. Special ids and the chat template are
    /// not part of that file; set them with [`Tokenizer::with_specials`] and
    /// [`Tokenizer::with_chat_template`].
    pub fn from_json_bytes(bytes: &[u8]) -> Result<Tokenizer, TokenizerError> {
        let mut inner = tokenizers::Tokenizer::from_bytes(bytes)
            .map_err(|e| TokenizerError::Build(e.to_string()))?;
        // A tokenizer.json may carry the padding/truncation its exporter used
        // (all-MiniLM-L6-v2 pads every input to 128): as transformers does, ignore
        // them; the runtime pads batches and bounds lengths itself.
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| TokenizerError::Build(e.to_string()))?;
        Ok(Tokenizer {
            vocab_size: inner.get_vocab_size(true),
            inner,
            bos: None,
            eos: Vec::new(),
            chat_template: None,
        })
    }

    /// The tokenizer as `tokenizer.json` text (what [`Tokenizer::from_json_bytes`]
    /// reads back); special ids and the chat template are not part of it.
    pub fn to_json(&self) -> Result<String, TokenizerError> {
        self.inner
            .to_string(false)
            .map_err(|e| TokenizerError::Build(e.to_string()))
    }

    /// Builds a tokenizer from plain vocabulary data.
    pub fn from_vocab(spec: &VocabSpec) -> Result<Tokenizer, TokenizerError> {
        let doc = spec.to_tokenizer_json()?;
        let bytes = serde_json::to_vec(&doc).map_err(|e| TokenizerError::Build(e.to_string()))?;
        let mut eos: Vec<u32> = spec.eos.into_iter().collect();
        if let Some(t) = spec.eot.filter(|t| !eos.contains(t)) {
            eos.push(t);
        }
        Ok(Tokenizer::from_json_bytes(&bytes)?
            .with_specials(spec.bos, eos)
            .with_chat_template(spec.chat_template.clone()))
    }

    /// Sets the BOS id and the ids that end generation.
    pub fn with_specials(mut self, bos: Option<u32>, eos: Vec<u32>) -> Tokenizer {
        self.bos = bos;
        self.eos = eos;
        self
    }

    /// Sets the chat template.
    pub fn with_chat_template(mut self, template: Option<String>) -> Tokenizer {
        self.chat_template = template;
        self
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The BOS id, if known.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// Ids that end generation.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos
    }

    /// The id of a token string (added tokens included).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The string of a token id.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Encodes text. `add_special` applies the tokenizer's post-processor (BOS/EOS
    /// when the vocabulary asks for them); special tokens written in the text are
    /// always recognised.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>, TokenizerError> {
        self.inner
            .encode(text, add_special)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| TokenizerError::Encode(e.to_string()))
    }

    /// Decodes ids to text, keeping special tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.decode_opts(ids, false)
    }

    /// Decodes ids to text; `skip_special` drops special tokens.
    pub fn decode_opts(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        let n = self.vocab_size() as u64;
        if let Some(bad) = ids.iter().find(|&&i| i as u64 >= n) {
            return Err(TokenizerError::Decode(format!(
                "id {bad} is outside the vocabulary of {n} tokens"
            )));
        }
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| TokenizerError::Decode(e.to_string()))
    }

    /// A streaming decoder for generated ids.
    pub fn stream(&self, skip_special: bool) -> StreamDecoder {
        StreamDecoder {
            ids: Vec::new(),
            prefix: 0,
            read: 0,
            skip_special,
        }
    }

    /// The chat template, if the model has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Renders the chat template over `messages` (as Hugging Face's
    /// `apply_chat_template` does: trim_blocks and lstrip_blocks on, `bos_token` and
    /// `eos_token` defined, `raise_exception` and `strftime_now` available, common
    /// Python string methods on values).
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        let source = self
            .chat_template
            .as_deref()
            .ok_or_else(|| TokenizerError::Template("the model has no chat template".into()))?;
        let name = |id: Option<u32>| {
            id.and_then(|i| self.inner.id_to_token(i))
                .unwrap_or_default()
        };
        render_chat_template(
            source,
            messages,
            add_generation_prompt,
            &name(self.bos),
            &name(self.eos.first().copied()),
        )
    }
}

/// Turns generated ids into text pieces as they arrive. Text is held back while the
/// tail decodes to an incomplete UTF-8 sequence (U+FFFD), and each piece is decoded
/// with the token before it so that context-dependent spacing (SentencePiece's `▁`)
/// comes out right.
#[derive(Clone, Debug)]
pub struct StreamDecoder {
    ids: Vec<u32>,
    prefix: usize,
    read: usize,
    skip_special: bool,
}

impl StreamDecoder {
    /// Adds one id; returns the new text, if a complete piece is available.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<Option<String>, TokenizerError> {
        self.ids.push(id);
        let before = tok.decode_opts(&self.ids[self.prefix..self.read], self.skip_special)?;
        let now = tok.decode_opts(&self.ids[self.prefix..], self.skip_special)?;
        if now.len() > before.len() && !now.ends_with('\u{FFFD}') {
            let piece = match now.strip_prefix(before.as_str()) {
                Some(rest) => rest.to_string(),
                // The window re-decoded differently; emit what follows the old length.
                None => now.get(before.len()..).unwrap_or(&now).to_string(),
            };
            self.prefix = self.read;
            self.read = self.ids.len();
            Ok(Some(piece))
        } else {
            Ok(None)
        }
    }

    /// Text still held back (an incomplete sequence at the end of generation), decoded
    /// as it stands.
    pub fn flush(&mut self, tok: &Tokenizer) -> Result<Option<String>, TokenizerError> {
        let before = tok.decode_opts(&self.ids[self.prefix..self.read], self.skip_special)?;
        let now = tok.decode_opts(&self.ids[self.prefix..], self.skip_special)?;
        self.prefix = self.ids.len();
        self.read = self.ids.len();
        Ok(now
            .strip_prefix(before.as_str())
            .filter(|r| !r.is_empty())
            .map(str::to_string))
    }
}

/// Renders a chat template (see [`Tokenizer::apply_chat_template`]).
pub fn render_chat_template(
    source: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    bos_token: &str,
    eos_token: &str,
) -> Result<String, TokenizerError> {
    use minijinja::{Environment, Error, ErrorKind, Value};
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.add_function("raise_exception", |msg: String| -> Result<Value, Error> {
        Err(Error::new(ErrorKind::InvalidOperation, msg))
    });
    env.add_function("strftime_now", |fmt: String| -> Result<Value, Error> {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        Ok(Value::from(strftime_utc(&fmt, secs)))
    });
    env.set_unknown_method_callback(python_methods);
    let tmpl = env
        .template_from_str(source)
        .map_err(|e| TokenizerError::Template(e.to_string()))?;
    let msgs: Vec<Value> = messages
        .iter()
        .map(|m| {
            let mut map = BTreeMap::new();
            map.insert("role".to_string(), Value::from(m.role.clone()));
            map.insert("content".to_string(), Value::from(m.content.clone()));
            Value::from(map)
        })
        .collect();
    tmpl.render(minijinja::context! {
        messages => msgs,
        add_generation_prompt => add_generation_prompt,
        bos_token => bos_token,
        eos_token => eos_token,
    })
    .map_err(|e| {
        let mut s = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(inner) = src {
            s.push_str(&format!(": {inner}"));
            src = inner.source();
        }
        TokenizerError::Template(s)
    })
}

/// Python `str`/`dict` methods templates written for Jinja2 call (`.strip()`,
/// `.startswith()`, `.items()`, ...), which minijinja does not have natively.
fn python_methods(
    _: &minijinja::State,
    value: &minijinja::Value,
    method: &str,
    args: &[minijinja::Value],
) -> Result<minijinja::Value, minijinja::Error> {
    use minijinja::{Error, ErrorKind, Value};
    let arg_str =
        |i: usize| -> Option<String> { args.get(i).and_then(|a| a.as_str()).map(str::to_string) };
    if let Some(s) = value.as_str() {
        let chars: Option<Vec<char>> = arg_str(0).map(|c| c.chars().collect());
        let trim = |s: &str, left: bool, right: bool| -> String {
            let is_strip = |c: char| match &chars {
                Some(set) => set.contains(&c),
                None => c.is_whitespace(),
            };
            let mut t = s;
            if left {
                t = t.trim_start_matches(is_strip);
            }
            if right {
                t = t.trim_end_matches(is_strip);
            }
            t.to_string()
        };
        let out = match method {
            "strip" => Value::from(trim(s, true, true)),
            "lstrip" => Value::from(trim(s, true, false)),
            "rstrip" => Value::from(trim(s, false, true)),
            "upper" => Value::from(s.to_uppercase()),
            "lower" => Value::from(s.to_lowercase()),
            "capitalize" => {
                let mut c = s.chars();
                Value::from(match c.next() {
                    Some(f) => f
                        .to_uppercase()
                        .chain(c.flat_map(|x| x.to_lowercase()))
                        .collect(),
                    None => String::new(),
                })
            }
            "title" => {
                let mut out = String::new();
                let mut prev_alpha = false;
                for c in s.chars() {
                    if prev_alpha {
                        out.extend(c.to_lowercase());
                    } else {
                        out.extend(c.to_uppercase());
                    }
                    prev_alpha = c.is_alphabetic();
                }
                Value::from(out)
            }
            "startswith" | "endswith" => {
                let p = arg_str(0).ok_or_else(|| {
                    Error::new(
                        ErrorKind::InvalidOperation,
                        format!("{method} needs a string"),
                    )
                })?;
                Value::from(if method == "startswith" {
                    s.starts_with(&p)
                } else {
                    s.ends_with(&p)
                })
            }
            "split" => {
                let parts: Vec<Value> = match arg_str(0) {
                    Some(sep) if !sep.is_empty() => {
                        s.split(sep.as_str()).map(Value::from).collect()
                    }
                    _ => s.split_whitespace().map(Value::from).collect(),
                };
                Value::from(parts)
            }
            "replace" => match (arg_str(0), arg_str(1)) {
                (Some(a), Some(b)) => Value::from(s.replace(&a, &b)),
                _ => {
                    return Err(Error::new(
                        ErrorKind::InvalidOperation,
                        "replace needs two strings",
                    ))
                }
            },
            "count" => Value::from(
                arg_str(0)
                    .map(|p| s.matches(p.as_str()).count())
                    .unwrap_or(0),
            ),
            _ => return Err(Error::from(ErrorKind::UnknownMethod)),
        };
        return Ok(out);
    }
    if value.kind() == minijinja::value::ValueKind::Map {
        let keys: Vec<Value> = value.try_iter()?.collect();
        return match method {
            "items" => Ok(Value::from(
                keys.into_iter()
                    .map(|k| {
                        let v = value.get_item(&k).unwrap_or_default();
                        Value::from(vec![k, v])
                    })
                    .collect::<Vec<_>>(),
            )),
            "keys" => Ok(Value::from(keys)),
            "values" => Ok(Value::from(
                keys.iter()
                    .map(|k| value.get_item(k).unwrap_or_default())
                    .collect::<Vec<_>>(),
            )),
            "get" => {
                let k = args.first().cloned().unwrap_or_default();
                let v = value.get_item(&k).unwrap_or_default();
                Ok(if v.is_undefined() {
                    args.get(1).cloned().unwrap_or(Value::from(()))
                } else {
                    v
                })
            }
            _ => Err(Error::from(ErrorKind::UnknownMethod)),
        };
    }
    Err(Error::from(ErrorKind::UnknownMethod))
}

/// A small `strftime` over UTC seconds: `%Y %y %m %d %e %B %b %A %a %H %M %S %j %%`.
pub fn strftime_utc(fmt: &str, secs: i64) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
    ];
    let days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let cum = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = cum[(m - 1) as usize] + d + if leap && m > 2 { 1 } else { 0 };
    let month = MONTHS[(m - 1) as usize];
    let day = DAYS[days.rem_euclid(7) as usize];
    let mut out = String::new();
    let mut it = fmt.chars();
    while let Some(c) = it.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('e') => out.push_str(&format!("{d:2}")),
            Some('B') => out.push_str(month),
            Some('b') => out.push_str(&month[..3]),
            Some('A') => out.push_str(day),
            Some('a') => out.push_str(&day[..3]),
            Some('H') => out.push_str(&format!("{:02}", tod / 3600)),
            Some('M') => out.push_str(&format!("{:02}", tod / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", tod % 60)),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('%') => out.push('%'),
            Some(o) => {
                out.push('%');
                out.push(o);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A byte-level vocabulary: all 256 byte characters, a few merges, two control
    /// tokens. Ids: 0 `<|endoftext|>`, 1 `<|im_start|>`, then bytes in alphabet order,
    /// then merged tokens.
    fn gpt2_spec() -> VocabSpec {
        let mut tokens = vec!["<|endoftext|>".to_string(), "<|im_start|>".to_string()];
        let mut types = vec![token_type::CONTROL, token_type::CONTROL];
        for c in byte_alphabet() {
            tokens.push(c.to_string());
            types.push(token_type::NORMAL);
        }
        let merges = [
            "h e", "l l", "he ll", "hell o", "Ġ w", "Ġw o", "r l", "Ġwo rl", "Ġworl d",
        ];
        for m in merges {
            tokens.push(m.replace(' ', ""));
            types.push(token_type::NORMAL);
        }
        VocabSpec {
            model: "gpt2".into(),
            pre: Some("smollm".into()),
            tokens,
            token_types: types,
            merges: merges.iter().map(|s| s.to_string()).collect(),
            bos: Some(1),
            eos: Some(0),
            ..VocabSpec::default()
        }
    }

    fn id(spec: &VocabSpec, t: &str) -> u32 {
        spec.tokens.iter().position(|x| x == t).unwrap() as u32
    }

    #[test]
    fn gpt2_merges_bytes_and_specials() {
        let spec = gpt2_spec();
        let tok = Tokenizer::from_vocab(&spec).unwrap();
        let ids = tok.encode("hello world<|im_start|>", false).unwrap();
        assert_eq!(
            ids,
            vec![id(&spec, "hello"), id(&spec, "Ġworld"), 1],
            "merged words and a control token matched whole"
        );
        // Unmerged text falls back to one token per byte; 'é' is two bytes.
        let ids = tok.encode("hé", false).unwrap();
        let alpha = byte_alphabet();
        let want: Vec<u32> = "hé"
            .bytes()
            .map(|b| id(&spec, &alpha[b as usize].to_string()))
            .collect();
        assert_eq!(ids, want);
        for text in ["hello world", "naïve 日本語 🎉\n\ttabs  ", "<|im_start|>x"] {
            let ids = tok.encode(text, false).unwrap();
            assert_eq!(tok.decode(&ids).unwrap(), text);
        }
    }

    #[test]
    fn smollm_pre_tokenizer_splits_digits() {
        let spec = gpt2_spec();
        let tok = Tokenizer::from_vocab(&spec).unwrap();
        let mut with_merge = spec.clone();
        with_merge.tokens.push("12".into());
        with_merge.token_types.push(token_type::NORMAL);
        with_merge.merges.push("1 2".into());
        let tok2 = Tokenizer::from_vocab(&with_merge).unwrap();
        // Digits are split one by one before BPE, so the "1 2" merge never applies.
        assert_eq!(tok2.encode("12", false).unwrap().len(), 2);
        assert_eq!(tok.encode("12", false).unwrap().len(), 2);
        with_merge.pre = Some("gpt2".into());
        let tok3 = Tokenizer::from_vocab(&with_merge).unwrap();
        assert_eq!(
            tok3.encode("12", false).unwrap(),
            vec![id(&with_merge, "12")]
        );
    }

    #[test]
    fn tokenizer_json_padding_and_truncation_are_ignored() {
        // all-MiniLM-L6-v2's tokenizer.json pads to 128 and truncates; transformers
        // ignores both, and so must we (the runtime pads batches itself).
        let spec = gpt2_spec();
        let mut doc = spec.to_tokenizer_json().unwrap();
        doc["padding"] = serde_json::json!({"strategy": {"Fixed": 16}, "direction": "Right",
            "pad_to_multiple_of": null, "pad_id": 0, "pad_type_id": 0, "pad_token": "<|endoftext|>"});
        doc["truncation"] = serde_json::json!({"direction": "Right", "max_length": 1,
            "strategy": "LongestFirst", "stride": 0});
        let tok = Tokenizer::from_json_bytes(&serde_json::to_vec(&doc).unwrap()).unwrap();
        assert_eq!(
            tok.encode("hello world", false).unwrap(),
            vec![id(&spec, "hello"), id(&spec, "Ġworld")]
        );
    }

    #[test]
    fn bos_added_only_when_asked() {
        let mut spec = gpt2_spec();
        spec.add_bos = true;
        let tok = Tokenizer::from_vocab(&spec).unwrap();
        assert_eq!(
            tok.encode("hello", true).unwrap(),
            vec![1, id(&spec, "hello")]
        );
        assert_eq!(
            tok.encode("hello", false).unwrap(),
            vec![id(&spec, "hello")]
        );
        assert_eq!(tok.eos_ids(), &[0]);
        assert_eq!(tok.bos_id(), Some(1));
    }

    #[test]
    fn bad_specs_are_errors() {
        let mut spec = gpt2_spec();
        spec.merges.push("nospace".into());
        let e = Tokenizer::from_vocab(&spec).unwrap_err().to_string();
        assert!(e.contains("merge 9 `nospace`"), "{e}");
        let mut spec = gpt2_spec();
        spec.pre = Some("mystery".into());
        let e = Tokenizer::from_vocab(&spec).unwrap_err().to_string();
        assert!(e.contains("pre-tokenizer `mystery`"), "{e}");
        let mut spec = gpt2_spec();
        spec.model = "wordpiece".into();
        assert!(Tokenizer::from_vocab(&spec).is_err());
        let mut spec = gpt2_spec();
        spec.add_bos = true;
        spec.bos = Some(99_999);
        let e = Tokenizer::from_vocab(&spec).unwrap_err().to_string();
        assert!(e.contains("BOS id 99999"), "{e}");
    }

    /// A SentencePiece vocabulary: `<unk> <s> </s>`, 256 byte tokens, then pieces
    /// with scores.
    fn llama_spec() -> VocabSpec {
        let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
        let mut types = vec![
            token_type::UNKNOWN,
            token_type::CONTROL,
            token_type::CONTROL,
        ];
        let mut scores = vec![0.0, 0.0, 0.0];
        for b in 0..=255u8 {
            tokens.push(format!("<0x{b:02X}>"));
            types.push(token_type::BYTE);
            scores.push(0.0);
        }
        // Higher score = merged earlier.
        let pieces = [
            ("▁", -1.0),
            ("h", -2.0),
            ("e", -2.0),
            ("l", -2.0),
            ("o", -2.0),
            ("w", -2.0),
            ("r", -2.0),
            ("d", -2.0),
            ("ll", -3.0),
            ("he", -4.0),
            ("▁h", -5.0),
            ("llo", -6.0),
            ("ello", -7.0),
            ("▁hello", -8.0),
            ("▁w", -9.0),
            ("or", -10.0),
            ("▁wor", -11.0),
            ("ld", -12.0),
            ("▁world", -13.0),
        ];
        for (p, s) in pieces {
            tokens.push(p.into());
            types.push(token_type::NORMAL);
            scores.push(s);
        }
        VocabSpec {
            model: "llama".into(),
            tokens,
            scores,
            token_types: types,
            bos: Some(1),
            eos: Some(2),
            unk: Some(0),
            add_bos: true,
            add_space_prefix: true,
            ..VocabSpec::default()
        }
    }

    #[test]
    fn sentencepiece_merges_by_score_with_byte_fallback() {
        let spec = llama_spec();
        let tok = Tokenizer::from_vocab(&spec).unwrap();
        // "▁hello": ll (-3) first, then he (-4) -> ▁ he ll o; ▁h is not formable
        // (h is gone); llo (-6): ▁ he llo; ello needs e: no; "he"+"llo" is not a token,
        // so the pieces stay: ▁ he llo.  With add_bos: <s> first.
        let ids = tok.encode("hello", true).unwrap();
        assert_eq!(
            ids,
            vec![1, id(&spec, "▁"), id(&spec, "he"), id(&spec, "llo")]
        );
        // " world": ▁ w o r l d -> ld? no: "or" (-10) after "▁w" (-9): ▁w o r l d ->
        // ▁w or l d -> ▁wor l d -> ▁wor ld -> ▁world.
        let ids = tok.encode("world", false).unwrap();
        assert_eq!(ids, vec![id(&spec, "▁world")]);
        // 'é' is not a piece: its two UTF-8 bytes become byte tokens.
        let ids = tok.encode("é", false).unwrap();
        assert_eq!(
            ids,
            vec![id(&spec, "▁"), id(&spec, "<0xC3>"), id(&spec, "<0xA9>")]
        );
        for text in ["hello world", "é hello", "x  y"] {
            let ids = tok.encode(text, true).unwrap();
            assert_eq!(tok.decode_opts(&ids, true).unwrap(), text, "{ids:?}");
        }
    }

    #[test]
    fn stream_decoder_waits_for_whole_characters() {
        let spec = gpt2_spec();
        let tok = Tokenizer::from_vocab(&spec).unwrap();
        let text = "hello 日本 🎉 world";
        let ids = tok.encode(text, false).unwrap();
        assert!(
            ids.iter()
                .any(|&i| tok.decode(&[i]).unwrap().contains('\u{FFFD}')),
            "some ids hold only part of a character"
        );
        let mut s = tok.stream(false);
        let mut out = String::new();
        for &i in &ids {
            if let Some(piece) = s.push(&tok, i).unwrap() {
                assert!(!piece.contains('\u{FFFD}'), "piece {piece:?}");
                out.push_str(&piece);
            }
        }
        if let Some(rest) = s.flush(&tok).unwrap() {
            out.push_str(&rest);
        }
        assert_eq!(out, text);
    }

    #[test]
    fn stream_decoder_keeps_sentencepiece_spaces() {
        let spec = llama_spec();
        let tok = Tokenizer::from_vocab(&spec).unwrap();
        let ids = tok.encode("hello world é", false).unwrap();
        let mut s = tok.stream(true);
        let mut out = String::new();
        for &i in &ids {
            out.push_str(&s.push(&tok, i).unwrap().unwrap_or_default());
        }
        assert_eq!(out, "hello world é");
    }

    #[test]
    fn chat_template_renders_with_helpers() {
        let tmpl = "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'bad' %}\
                    {{ raise_exception('no bad roles') }}{% endif %}\
                    <{{ m.role.upper() }}>{{ m['content'].strip() }}{{ eos_token }}\n\
                    {% endfor %}{% if add_generation_prompt %}<ASSISTANT>{% endif %}";
        let tok = Tokenizer::from_vocab(&gpt2_spec())
            .unwrap()
            .with_chat_template(Some(tmpl.into()));
        let msgs = [
            ChatMessage::new("system", " be brief "),
            ChatMessage::new("user", "hi"),
        ];
        let out = tok.apply_chat_template(&msgs, true).unwrap();
        assert_eq!(
            out,
            "<|im_start|><SYSTEM>be brief<|endoftext|>\n<USER>hi<|endoftext|>\n<ASSISTANT>"
        );
        let e = tok
            .apply_chat_template(&[ChatMessage::new("bad", "x")], false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no bad roles"), "{e}");
        let none = Tokenizer::from_vocab(&gpt2_spec()).unwrap();
        assert!(none.apply_chat_template(&msgs, true).is_err());
    }

    #[test]
    fn strftime_known_dates() {
        // 2024-02-29 13:05:09 UTC is 1709211909.
        assert_eq!(
            strftime_utc("%Y-%m-%d %H:%M:%S %j %a %B %b %e %y %%", 1_709_211_909),
            "2024-02-29 13:05:09 060 Thu February Feb 29 24 %"
        );
        assert_eq!(strftime_utc("%d %b %Y", 0), "01 Jan 1970");
        assert_eq!(strftime_utc("%A", 86_400 * 3), "Sunday");
    }
}
