//! Helpers shared by the CLI and executable end-to-end tests: running `llmc`, reading
//! its output, asserting one-line user errors, finding models and fixtures.

#![allow(dead_code)] // each test binary uses its own subset

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn llmc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_llmc"))
        .args(args)
        .output()
        .expect("the llmc binary runs")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A user error: exit code 1, one `error:` message mentioning every `needle`, no panic.
pub fn assert_user_error(o: &Output, needles: &[&str]) {
    let e = stderr(o);
    assert_eq!(o.status.code(), Some(1), "exit code; stderr: {e}");
    assert!(e.starts_with("error: "), "stderr: {e}");
    assert!(!e.contains("panicked"), "stderr: {e}");
    for n in needles {
        assert!(e.contains(n), "stderr lacks `{n}`: {e}");
    }
}

pub fn model(name: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("LLMC_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/models"));
    let p = dir.join(name);
    if p.exists() {
        Some(p)
    } else {
        eprintln!(
            "skipped: model not found at {}, run scripts/fetch-models",
            p.display()
        );
        None
    }
}

pub fn fixture(rel: &str) -> serde_json::Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

/// `tests/fixtures/onnx/mlp.onnx`: y = relu(x W + b), W[i][j] = (i - j) / 4,
/// b[j] = 1/2 - j/4.
pub fn mlp_reference(x: &[f32], rows: usize) -> Vec<f32> {
    let mut y = Vec::new();
    for r in 0..rows {
        for j in 0..3 {
            let mut acc = 0.5 - j as f64 / 4.0;
            for i in 0..4 {
                acc += x[r * 4 + i] as f64 * (i as f64 - j as f64) / 4.0;
            }
            y.push(acc.max(0.0) as f32);
        }
    }
    y
}

/// `./OUT serve` on a free loopback port, stopped when dropped.
pub struct Server {
    child: Child,
    port: u16,
}

impl Server {
    pub fn start(exe: &Path) -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let child = Command::new(exe)
            .args(["serve", "--port", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("serve starts");
        let s = Server { child, port };
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "serve did not listen"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        s
    }

    /// POSTs JSON `body` to `path` and returns the JSON reply.
    pub fn post(&self, path: &str, body: &str) -> serde_json::Value {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        write!(
            c,
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        let (head, rest) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
        assert!(head.starts_with("HTTP/1.1 200"), "{out}");
        let json = &rest[rest.find('{').unwrap_or(0)..rest.rfind('}').map_or(0, |i| i + 1)];
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {out}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `exe` served over HTTP answers a greedy 16-token completion of "The capital of
/// France is" with `want` (the greedy text `generate` printed).
pub fn assert_serves(exe: &Path, want: &str) {
    let server = Server::start(exe);
    let body = r#"{"prompt": "The capital of France is", "max_tokens": 16, "temperature": 0}"#;
    let reply = server.post("/v1/completions", body);
    let text = reply["choices"][0]["text"].as_str().unwrap_or_default();
    assert_eq!(text, want.strip_suffix('\n').unwrap_or(want), "{reply}");
}
