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

/// Every metric ironlake exposes, with its name, type and help in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Pipeline runs by outcome (from the run history).
    PipelineRuns,
    /// Scheduled runs skipped because the previous one was in flight.
    PipelineRunsSkipped,
    /// Records in, valid and rejected by pipeline (from the run history).
    PipelineRows,
    /// Bytes received by pipeline (from the run history).
    PipelineBytes,
    /// HTTP retries by pipeline (from the run history).
    PipelineRetries,
    /// Duration of runs made by this daemon.
    PipelineRunDuration,
    /// Unix time of the last successful run (from the run history).
    PipelineLastSuccess,
    /// Duration of the last refresh that recomputed each aggregate.
    AggregateRefreshDuration,
    /// Version id of each published aggregate.
    AggregatePublishedVersion,
    /// HTTP requests by route and status.
    HttpRequests,
    /// API SQL queries running now.
    SqlQueriesInFlight,
}

impl Metric {
    /// Every metric, for describing them all up front.
    pub const ALL: [Metric; 11] = [
        Metric::PipelineRuns,
        Metric::PipelineRunsSkipped,
        Metric::PipelineRows,
        Metric::PipelineBytes,
        Metric::PipelineRetries,
        Metric::PipelineRunDuration,
        Metric::PipelineLastSuccess,
        Metric::AggregateRefreshDuration,
        Metric::AggregatePublishedVersion,
        Metric::HttpRequests,
        Metric::SqlQueriesInFlight,
    ];

    /// The exposed name.
    pub fn name(self) -> &'static str {
        match self {
            Metric::PipelineRuns => "ironlake_pipeline_runs_total",
            Metric::PipelineRunsSkipped => "ironlake_pipeline_runs_skipped_total",
            Metric::PipelineRows => "ironlake_pipeline_rows_total",
            Metric::PipelineBytes => "ironlake_pipeline_bytes_total",
            Metric::PipelineRetries => "ironlake_pipeline_retries_total",
            Metric::PipelineRunDuration => "ironlake_pipeline_run_duration_seconds",
            Metric::PipelineLastSuccess => "ironlake_pipeline_last_success_timestamp_seconds",
            Metric::AggregateRefreshDuration => "ironlake_aggregate_refresh_duration_seconds",
            Metric::AggregatePublishedVersion => "ironlake_aggregate_published_version",
            Metric::HttpRequests => "ironlake_http_requests_total",
            Metric::SqlQueriesInFlight => "ironlake_sql_queries_in_flight",
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Metric::PipelineRuns
            | Metric::PipelineRunsSkipped
            | Metric::PipelineRows
            | Metric::PipelineBytes
            | Metric::PipelineRetries
            | Metric::HttpRequests => "counter",
            Metric::PipelineRunDuration => "histogram",
            _ => "gauge",
        }
    }

    fn help(self) -> &'static str {
        match self {
            Metric::PipelineRuns => {
                "Pipeline runs by outcome, over the run history kept (every process on this warehouse)."
            }
            Metric::PipelineRunsSkipped => {
                "Scheduled runs skipped because the previous run was still in flight."
            }
            Metric::PipelineRows => "Records received, valid and rejected, by pipeline.",
            Metric::PipelineBytes => "Bytes received by pipeline.",
            Metric::PipelineRetries => "HTTP retries by pipeline.",
            Metric::PipelineRunDuration => "Duration of pipeline runs made by this daemon.",
            Metric::PipelineLastSuccess => "Unix time of the last successful run.",
            Metric::AggregateRefreshDuration => {
                "Duration of the last refresh that recomputed the aggregate."
            }
            Metric::AggregatePublishedVersion => "Version id of the published aggregate.",
            Metric::HttpRequests => "HTTP requests by route and status.",
            Metric::SqlQueriesInFlight => "API SQL queries running now.",
        }
    }
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
    /// A registry with every [`Metric`] described (help text and type).
    pub fn new() -> Metrics {
        let m = Metrics::default();
        {
            let mut inner = m.inner.lock().expect("metrics lock");
            for metric in Metric::ALL {
                inner
                    .help
                    .insert(metric.name().to_string(), (metric.kind(), metric.help()));
            }
        }
        m
    }

    /// Adds `v` to a counter.
    pub fn inc(&self, metric: Metric, l: &[(&str, &str)], v: f64) {
        let name = metric.name();
        *self
            .inner
            .lock()
            .expect("metrics lock")
            .values
            .entry((name.to_string(), labels(l)))
            .or_default() += v;
    }

    /// Sets a gauge.
    pub fn set(&self, metric: Metric, l: &[(&str, &str)], v: f64) {
        let name = metric.name();
        self.inner
            .lock()
            .expect("metrics lock")
            .values
            .insert((name.to_string(), labels(l)), v);
    }

    /// Records an observation in a histogram.
    pub fn observe(&self, metric: Metric, l: &[(&str, &str)], v: f64) {
        let name = metric.name();
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
    pub fn get(&self, metric: Metric, l: &[(&str, &str)]) -> Option<f64> {
        let name = metric.name();
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
        let runs = Metric::PipelineRuns;
        m.inc(runs, &[("pipeline", "a\"b")], 2.0);
        m.inc(runs, &[("pipeline", "a\"b")], 1.0);
        m.observe(Metric::PipelineRunDuration, &[("pipeline", "p")], 3.0);
        let s = m.render();
        assert!(
            s.contains("# TYPE ironlake_pipeline_runs_total counter\nironlake_pipeline_runs_total{pipeline=\"a\\\"b\"} 3\n"),
            "{s}"
        );
        let d = "ironlake_pipeline_run_duration_seconds";
        assert!(
            s.contains(&format!("{d}_bucket{{pipeline=\"p\",le=\"2.5\"}} 0")),
            "{s}"
        );
        assert!(
            s.contains(&format!("{d}_bucket{{pipeline=\"p\",le=\"5\"}} 1")),
            "{s}"
        );
        assert!(s.contains(&format!("{d}_count{{pipeline=\"p\"}} 1")), "{s}");
    }
}
