//! Prometheus metrics (text exposition format), kept with atomics and one small map, and
//! rendered on `GET /metrics`. Hand-written: the few metric types we need do not justify a
//! metrics crate and its dependency tree.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// A histogram with fixed upper bounds (seconds).
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: Duration) {
        let secs = value.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|b| secs <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micros.fetch_add(value.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let total = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {total}");
        let _ =
            writeln!(out, "{name}_sum {}", self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {total}");
    }
}

/// Gateway overhead is sub-millisecond when healthy; the buckets resolve that range.
const OVERHEAD_BOUNDS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0];
const UPSTREAM_BOUNDS: &[f64] =
    &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// What the handler learned about a request, for its metrics line.
#[derive(Clone, Debug, Default)]
pub struct RequestLabels {
    pub model: Option<String>,
    pub provider: Option<&'static str>,
}

#[derive(Hash, PartialEq, Eq)]
struct RequestKey {
    endpoint: String,
    model: String,
    provider: &'static str,
    status: u16,
}

pub struct Metrics {
    requests: Mutex<HashMap<RequestKey, u64>>,
    pub overhead: Histogram,
    pub upstream: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Mutex::new(HashMap::new()),
            overhead: Histogram::new(OVERHEAD_BOUNDS),
            upstream: Histogram::new(UPSTREAM_BOUNDS),
        }
    }
}

/// Bounds the label space: an unknown path is reported as "other" rather than by its text,
/// so scanning clients cannot grow the map without limit.
fn endpoint_label(path: &str) -> &str {
    match path {
        "/health"
        | "/metrics"
        | "/v1/models"
        | "/v1/license"
        | "/v1/chat/completions"
        | "/v1/responses"
        | "/v1/embeddings"
        | "/v1/web-search"
        | "/v1/fetch" => path,
        p if p.starts_with("/admin/") => "/admin",
        _ => "other",
    }
}

impl Metrics {
    pub fn record_request(
        &self,
        path: &str,
        labels: Option<&RequestLabels>,
        status: u16,
        overhead: Duration,
    ) {
        self.overhead.observe(overhead);
        let key = RequestKey {
            endpoint: endpoint_label(path).to_string(),
            model: labels.and_then(|l| l.model.clone()).unwrap_or_default(),
            provider: labels.and_then(|l| l.provider).unwrap_or(""),
            status,
        };
        let mut requests = match self.requests.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        *requests.entry(key).or_insert(0) += 1;
    }

    pub fn render_requests(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP quantized_requests_total Requests by endpoint, model, provider and status."
        );
        let _ = writeln!(out, "# TYPE quantized_requests_total counter");
        let requests = match self.requests.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut lines: Vec<String> = requests
            .iter()
            .map(|(k, v)| {
                format!(
                    "quantized_requests_total{{endpoint=\"{}\",model=\"{}\",provider=\"{}\",status=\"{}\"}} {v}",
                    escape(&k.endpoint),
                    escape(&k.model),
                    k.provider,
                    k.status
                )
            })
            .collect();
        lines.sort();
        for line in lines {
            let _ = writeln!(out, "{line}");
        }
    }

    pub fn render_histograms(&self, out: &mut String) {
        self.overhead.render(
            out,
            "quantized_gateway_overhead_seconds",
            "Time spent in the gateway itself, excluding the upstream wait.",
        );
        self.upstream.render(
            out,
            "quantized_upstream_latency_seconds",
            "Time waiting for upstream providers.",
        );
    }
}

/// Label values are quoted strings: backslash, quote and newline must be escaped.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

pub fn counter(out: &mut String, name: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
}

pub fn gauge(out: &mut String, name: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative() {
        let h = Histogram::new(&[0.001, 0.01]);
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_secs(1));
        let mut out = String::new();
        h.render(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"0.001\"} 1\n"));
        assert!(out.contains("x_bucket{le=\"0.01\"} 2\n"));
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n"));
        assert!(out.contains("x_count 3\n"));
    }

    #[test]
    fn unknown_paths_share_one_label() {
        let m = Metrics::default();
        m.record_request("/v1/chat/completions", None, 200, Duration::ZERO);
        m.record_request("/random/1", None, 404, Duration::ZERO);
        m.record_request("/random/2", None, 404, Duration::ZERO);
        let mut out = String::new();
        m.render_requests(&mut out);
        assert!(out.contains("endpoint=\"other\",model=\"\",provider=\"\",status=\"404\"} 2"));
        assert!(out.contains("endpoint=\"/v1/chat/completions\""));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
