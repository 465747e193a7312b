//! Prometheus metrics: counters, gauges and histograms with labels, in the
//! text exposition format. Small and dependency-free.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

type Labels = Vec<(String, String)>;

/// Buckets of duration histograms, seconds.
pub const DURATION_BUCKETS: [f64; 11] = [
    0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0,
];

#[derive(Debug, Clone)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

#[derive(Debug, Default)]
struct Inner {
    help: BTreeMap<String, (&'static str, &'static str)>,
    values: BTreeMap<(String, Labels), f64>,
    histograms: BTreeMap<(String, Labels), Histogram>,
}

/// A registry of metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

fn labels(l: &[(&str, &str)]) -> Labels {
    l.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn render_labels(l: &Labels, extra: Option<(&str, String)>) -> String {
    let mut parts: Vec<String> = l
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    if let Some((k, v)) = extra {
        parts.push(format!("{k}=\"{v}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

impl Metrics {
    /// An empty registry.
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// Declares a metric's help text and type (`counter`, `gauge`, `histogram`).
    pub fn describe(&self, name: &str, kind: &'static str, help: &'static str) {
        self.inner
            .lock()
            .expect("metrics lock")
            .help
            .insert(name.to_string(), (kind, help));
    }

    /// Adds `v` to a counter.
    pub fn inc(&self, name: &str, l: &[(&str, &str)], v: f64) {
        *self
            .inner
            .lock()
            .expect("metrics lock")
            .values
            .entry((name.to_string(), labels(l)))
            .or_default() += v;
    }

    /// Sets a gauge.
    pub fn set(&self, name: &str, l: &[(&str, &str)], v: f64) {
        self.inner
            .lock()
            .expect("metrics lock")
            .values
            .insert((name.to_string(), labels(l)), v);
    }

    /// Records an observation in a histogram.
    pub fn observe(&self, name: &str, l: &[(&str, &str)], v: f64) {
        let mut inner = self.inner.lock().expect("metrics lock");
        let h = inner
            .histograms
            .entry((name.to_string(), labels(l)))
            .or_insert_with(|| Histogram {
                counts: vec![0; DURATION_BUCKETS.len()],
                sum: 0.0,
                count: 0,
            });
        for (i, b) in DURATION_BUCKETS.iter().enumerate() {
            if v <= *b {
                h.counts[i] += 1;
            }
        }
        h.sum += v;
        h.count += 1;
    }

    /// The current value of a counter or gauge (tests, status).
    pub fn get(&self, name: &str, l: &[(&str, &str)]) -> Option<f64> {
        self.inner
            .lock()
            .expect("metrics lock")
            .values
            .get(&(name.to_string(), labels(l)))
            .copied()
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let inner = self.inner.lock().expect("metrics lock");
        let mut out = String::new();
        let mut names: Vec<&String> = inner
            .values
            .keys()
            .map(|(n, _)| n)
            .chain(inner.histograms.keys().map(|(n, _)| n))
            .collect();
        names.sort();
        names.dedup();
        for name in names {
            if let Some((kind, help)) = inner.help.get(name) {
                let _ = writeln!(out, "# HELP {name} {help}");
                let _ = writeln!(out, "# TYPE {name} {kind}");
            }
            for ((n, l), v) in inner.values.range((name.clone(), Vec::new())..) {
                if n != name {
                    break;
                }
                let _ = writeln!(out, "{name}{} {v}", render_labels(l, None));
            }
            for ((n, l), h) in inner.histograms.range((name.clone(), Vec::new())..) {
                if n != name {
                    break;
                }
                for (i, b) in DURATION_BUCKETS.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "{name}_bucket{} {}",
                        render_labels(l, Some(("le", b.to_string()))),
                        h.counts[i]
                    );
                }
                let _ = writeln!(
                    out,
                    "{name}_bucket{} {}",
                    render_labels(l, Some(("le", "+Inf".into()))),
                    h.count
                );
                let _ = writeln!(out, "{name}_sum{} {}", render_labels(l, None), h.sum);
                let _ = writeln!(out, "{name}_count{} {}", render_labels(l, None), h.count);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::new();
        m.describe("x_total", "counter", "Things.");
        m.inc("x_total", &[("pipeline", "a\"b")], 2.0);
        m.inc("x_total", &[("pipeline", "a\"b")], 1.0);
        m.observe("d_seconds", &[("pipeline", "p")], 3.0);
        let s = m.render();
        assert!(
            s.contains("# TYPE x_total counter\nx_total{pipeline=\"a\\\"b\"} 3\n"),
            "{s}"
        );
        assert!(
            s.contains("d_seconds_bucket{pipeline=\"p\",le=\"2.5\"} 0"),
            "{s}"
        );
        assert!(
            s.contains("d_seconds_bucket{pipeline=\"p\",le=\"5\"} 1"),
            "{s}"
        );
        assert!(s.contains("d_seconds_count{pipeline=\"p\"} 1"), "{s}");
    }
}
