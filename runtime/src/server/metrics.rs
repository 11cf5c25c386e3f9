//! `/metrics` in the Prometheus text format, under vLLM's metric names so existing
//! dashboards work unchanged: gauges and counters come from the engine's stats
//! snapshot, latency histograms and finish reasons are recorded by the server as
//! requests end (a stop string ends a request in the server, not in the engine).

use crate::engine::Stats;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Bucket bounds (seconds) shared by the latency histograms.
const BUCKETS: [f64; 20] = [
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0,
];

#[derive(Clone, Debug, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        for (b, c) in BUCKETS.iter().zip(self.counts.iter_mut()) {
            if secs <= *b {
                *c += 1;
            }
        }
        self.count += 1;
        self.sum += secs;
    }

    fn render(&self, out: &mut String, name: &str, help: &str, label: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, c) in BUCKETS.iter().zip(self.counts.iter()) {
            let _ = writeln!(out, "{name}_bucket{{{label},le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{{label},le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{label}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{label}}} {}", self.count);
    }
}

#[derive(Debug, Default)]
struct Inner {
    ttft: Histogram,
    itl: Histogram,
    e2e: Histogram,
    queue: Histogram,
    finished: BTreeMap<&'static str, u64>,
    http_errors: BTreeMap<u16, u64>,
}

/// The server's own metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

/// What one finished choice reports.
#[derive(Clone, Copy, Debug)]
pub struct Finished {
    /// `stop`, `length`, `abort` or `error`.
    pub reason: &'static str,
    /// Submission to first token.
    pub ttft: Option<Duration>,
    /// Submission to end.
    pub e2e: Duration,
    /// Submission to first scheduled.
    pub queued: Duration,
}

impl Metrics {
    fn with(&self, f: impl FnOnce(&mut Inner)) {
        if let Ok(mut g) = self.inner.lock() {
            f(&mut g);
        }
    }

    /// Records a gap between two tokens of one choice.
    pub fn inter_token(&self, gap: Duration) {
        self.with(|m| m.itl.observe(gap.as_secs_f64()));
    }

    /// Records a finished choice.
    pub fn finished(&self, f: Finished) {
        self.with(|m| {
            *m.finished.entry(f.reason).or_insert(0) += 1;
            if let Some(t) = f.ttft {
                m.ttft.observe(t.as_secs_f64());
            }
            m.e2e.observe(f.e2e.as_secs_f64());
            m.queue.observe(f.queued.as_secs_f64());
        });
    }

    /// Counts an error response by status.
    pub fn http_error(&self, status: u16) {
        self.with(|m| *m.http_errors.entry(status).or_insert(0) += 1);
    }

    /// The Prometheus text for `model`.
    pub fn render(&self, s: &Stats, model: &str) -> String {
        let label = format!("model_name=\"{}\"", model.replace(['\\', '"', '\n'], "_"));
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, v: String| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{{label}}} {v}"
            );
        };
        metric(
            "vllm:num_requests_running",
            "gauge",
            "Sequences being stepped.",
            s.running.to_string(),
        );
        metric(
            "vllm:num_requests_waiting",
            "gauge",
            "Requests waiting to run.",
            s.waiting.to_string(),
        );
        let usage = if s.kv_blocks_total == 0 {
            0.0
        } else {
            s.kv_blocks_used as f64 / s.kv_blocks_total as f64
        };
        metric(
            "vllm:kv_cache_usage_perc",
            "gauge",
            "Fraction of KV blocks in use (1 = full).",
            usage.to_string(),
        );
        metric(
            "llmc:kv_blocks_used",
            "gauge",
            "KV blocks held by sequences.",
            s.kv_blocks_used.to_string(),
        );
        metric(
            "llmc:kv_blocks_cached",
            "gauge",
            "Unreferenced KV blocks kept for the prefix cache.",
            s.kv_blocks_cached.to_string(),
        );
        metric(
            "llmc:kv_blocks_total",
            "gauge",
            "KV blocks in the pool.",
            s.kv_blocks_total.to_string(),
        );
        metric(
            "vllm:prompt_tokens_total",
            "counter",
            "Prompt tokens processed.",
            s.prompt_tokens.to_string(),
        );
        metric(
            "vllm:generation_tokens_total",
            "counter",
            "Tokens generated.",
            s.generation_tokens.to_string(),
        );
        metric(
            "vllm:num_preemptions_total",
            "counter",
            "Sequences preempted.",
            s.preemptions.to_string(),
        );
        metric(
            "vllm:prefix_cache_queries_total",
            "counter",
            "Prompt blocks looked up in the prefix cache.",
            s.prefix_queries.to_string(),
        );
        metric(
            "vllm:prefix_cache_hits_total",
            "counter",
            "Prompt blocks found in the prefix cache.",
            s.prefix_hits.to_string(),
        );
        metric(
            "llmc:engine_steps_total",
            "counter",
            "Engine steps run.",
            s.steps.to_string(),
        );
        if let Ok(m) = self.inner.lock() {
            let name = "vllm:request_success_total";
            let _ = writeln!(
                out,
                "# HELP {name} Finished requests by reason.\n# TYPE {name} counter"
            );
            for r in ["stop", "length", "abort"] {
                let v = m.finished.get(r).copied().unwrap_or(0);
                let _ = writeln!(out, "{name}{{{label},finished_reason=\"{r}\"}} {v}");
            }
            let name = "llmc:request_errors_total";
            let _ = writeln!(
                out,
                "# HELP {name} Requests the engine failed.\n# TYPE {name} counter"
            );
            let _ = writeln!(
                out,
                "{name}{{{label}}} {}",
                m.finished.get("error").copied().unwrap_or(0)
            );
            let name = "llmc:http_errors_total";
            let _ = writeln!(
                out,
                "# HELP {name} Error responses by status.\n# TYPE {name} counter"
            );
            for (code, v) in &m.http_errors {
                let _ = writeln!(out, "{name}{{{label},status=\"{code}\"}} {v}");
            }
            m.ttft.render(
                &mut out,
                "vllm:time_to_first_token_seconds",
                "Time to first token.",
                &label,
            );
            m.itl.render(
                &mut out,
                "vllm:inter_token_latency_seconds",
                "Time between tokens.",
                &label,
            );
            m.e2e.render(
                &mut out,
                "vllm:e2e_request_latency_seconds",
                "Request latency.",
                &label,
            );
            m.queue.render(
                &mut out,
                "vllm:request_queue_time_seconds",
                "Time waiting to be scheduled.",
                &label,
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_vllm_names_with_model_label() {
        let m = Metrics::default();
        m.finished(Finished {
            reason: "stop",
            ttft: Some(Duration::from_millis(30)),
            e2e: Duration::from_millis(300),
            queued: Duration::from_millis(1),
        });
        m.inter_token(Duration::from_millis(10));
        let s = Stats {
            running: 2,
            kv_blocks_total: 10,
            kv_blocks_used: 5,
            ..Stats::default()
        };
        let t = m.render(&s, "smol");
        assert!(t.contains("vllm:num_requests_running{model_name=\"smol\"} 2"));
        assert!(t.contains("vllm:kv_cache_usage_perc{model_name=\"smol\"} 0.5"));
        assert!(t.contains(
            "vllm:request_success_total{model_name=\"smol\",finished_reason=\"stop\"} 1"
        ));
        assert!(t.contains(
            "vllm:time_to_first_token_seconds_bucket{model_name=\"smol\",le=\"0.04\"} 1"
        ));
        assert!(t.contains(
            "vllm:time_to_first_token_seconds_bucket{model_name=\"smol\",le=\"0.02\"} 0"
        ));
        assert!(t.contains("vllm:inter_token_latency_seconds_count{model_name=\"smol\"} 1"));
        assert!(t.contains("vllm:e2e_request_latency_seconds_sum{model_name=\"smol\"} 0.3"));
        assert!(t.contains("vllm:request_queue_time_seconds_count"));
    }
}
