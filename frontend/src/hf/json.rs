//! A JSON file with typed key look-ups whose errors name the file and the key, so a
//! `config.json` missing `hidden_size` says exactly that. A key set to `null` counts
//! as absent (Hugging Face writes `"head_dim": null` for "use the default").

use super::{format_err, io_err};
use crate::FrontendError;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// A parsed JSON object and the file it came from.
#[derive(Clone, Debug)]
pub struct JsonFile {
    /// Source path, for messages.
    pub path: PathBuf,
    /// The top-level value.
    pub value: Value,
}

impl JsonFile {
    /// Reads and parses `path`; the top level must be an object.
    pub fn read(path: &Path) -> Result<JsonFile, FrontendError> {
        let text = std::fs::read_to_string(path).map_err(|e| io_err(path, e))?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| format_err(path, format!("invalid JSON: {e}")))?;
        if !value.is_object() {
            return Err(format_err(path, "the top level is not an object"));
        }
        Ok(JsonFile {
            path: path.to_path_buf(),
            value,
        })
    }

    /// Reads `path` if the file exists.
    pub fn read_optional(path: &Path) -> Result<Option<JsonFile>, FrontendError> {
        if path.is_file() {
            JsonFile::read(path).map(Some)
        } else {
            Ok(None)
        }
    }

    /// The value at `key`, `None` when absent or null.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.value.get(key).filter(|v| !v.is_null())
    }

    fn missing(&self, key: &str) -> FrontendError {
        FrontendError::MissingKey {
            file: self.path.display().to_string(),
            key: key.to_string(),
        }
    }

    fn wrong(&self, key: &str, what: &str, v: &Value) -> FrontendError {
        self.bad_value(key, format!("must be {what}, got {v}"))
    }

    /// A [`FrontendError::BadValue`] for `key` of this file.
    pub fn bad_value(&self, key: &str, msg: impl Into<String>) -> FrontendError {
        FrontendError::BadValue {
            file: self.path.display().to_string(),
            key: key.to_string(),
            msg: msg.into(),
        }
    }

    /// An optional integer.
    pub fn opt_int(&self, key: &str) -> Result<Option<i64>, FrontendError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| self.wrong(key, "an integer", v)),
        }
    }

    /// A required integer.
    pub fn int(&self, key: &str) -> Result<i64, FrontendError> {
        self.opt_int(key)?.ok_or_else(|| self.missing(key))
    }

    /// A required positive integer.
    pub fn pos_int(&self, key: &str) -> Result<i64, FrontendError> {
        let v = self.int(key)?;
        if v <= 0 {
            return Err(self.bad_value(key, format!("must be positive, got {v}")));
        }
        Ok(v)
    }

    /// An optional positive integer.
    pub fn opt_pos_int(&self, key: &str) -> Result<Option<i64>, FrontendError> {
        match self.opt_int(key)? {
            Some(v) if v <= 0 => Err(self.bad_value(key, format!("must be positive, got {v}"))),
            v => Ok(v),
        }
    }

    /// An optional number.
    pub fn opt_float(&self, key: &str) -> Result<Option<f64>, FrontendError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.wrong(key, "a number", v)),
        }
    }

    /// A required number.
    pub fn float(&self, key: &str) -> Result<f64, FrontendError> {
        self.opt_float(key)?.ok_or_else(|| self.missing(key))
    }

    /// An optional boolean.
    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>, FrontendError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.wrong(key, "true or false", v)),
        }
    }

    /// An optional string.
    pub fn opt_str(&self, key: &str) -> Result<Option<&str>, FrontendError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.wrong(key, "a string", v)),
        }
    }

    /// A required string.
    pub fn str(&self, key: &str) -> Result<&str, FrontendError> {
        self.opt_str(key)?.ok_or_else(|| self.missing(key))
    }

    /// An integer or a list of integers (`eos_token_id` is written both ways), as a
    /// list; empty when absent.
    pub fn int_or_ints(&self, key: &str) -> Result<Vec<i64>, FrontendError> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_i64()
                        .ok_or_else(|| self.wrong(key, "an integer or a list of integers", x))
                })
                .collect(),
            Some(v) => v
                .as_i64()
                .map(|x| vec![x])
                .ok_or_else(|| self.wrong(key, "an integer or a list of integers", v)),
        }
    }
}
