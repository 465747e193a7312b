//! # ironlake
//!
//! The engine of Chongqing's industry–finance cooperation data platform
//! (产融合作 工业运行大数据采集平台): it pulls partner feeds on schedules,
//! validates every record, lands the data as Parquet partitioned by quarter,
//! and keeps the programme's indicators up to date with DataFusion SQL.
//!
//! # Layout
//!
//! The stages, in the order data flows through them:
//!
//! - [`source`]: HTTP requests to a partner feed — auth, timeouts, retries
//!   with backoff and `Retry-After`, a body-size limit.
//! - [`decode`]: a page's bytes (JSON, NDJSON, CSV) into raw records, one
//!   cell per schema column, the partner's text kept exactly.
//! - [`validate`]: each record against its schema into typed values, or a
//!   rejection naming the field and the reason.
//! - [`partition`]: valid rows by quarter and rejected ones for the
//!   quarantine, spilled to the run's staging directory.
//! - [`warehouse`]: the commit protocol — immutable generations, journal,
//!   manifest, recovery — and partition merges by primary key.
//! - [`catalog`]: the committed state as DataFusion tables, one consistent
//!   snapshot per query.
//! - [`query`]: read-only SQL and streaming result writers.
//! - [`models`]: the published aggregates and their incremental refresh.
//! - [`serve`]: the HTTP API for operators, analysts and dashboards.
//!
//! Around them: [`config`] (declarative files, validated), [`check`]
//! (`ironlake check`), [`domain`] (USCC, district, industry, decimal and
//! quarter rules), [`ingest`] (one run of one pipeline, end to end),
//! [`daemon`] (schedules, reload, shutdown), [`metrics`] (Prometheus),
//! [`primitives`] (constant-time comparison, randomness, fingerprint hash),
//! [`packed`] (strings a run keeps to its end, packed into few buffers)
//! and [`feedsim`] (the partner stand-in, `ironlake feed-sim`; production
//! code never depends on it).

#![warn(missing_docs)]

pub mod catalog;
pub mod check;
pub mod config;
pub mod daemon;
pub mod dashboard;
pub mod decode;
pub mod domain;
pub mod feedsim;
pub mod ingest;
pub mod intake;
pub mod metrics;
pub mod models;
pub mod packed;
pub mod partition;
pub mod pg;
pub mod primitives;
pub mod query;
pub mod serve;
pub mod source;
pub mod validate;
pub mod warehouse;

/// Who must act on an error: errors are sorted by it, and the CLI and API
/// say it (a bad partner record is quarantined, a bad feed fails its run, a
/// bad config stops startup, a bad query is the analyst's, a bug is ours).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    /// The partner's feed is broken or hostile: tell the partner.
    Partner,
    /// Configuration, credentials, limits or the machine: the operator.
    Operator,
    /// The query is wrong or refused: the analyst.
    Analyst,
    /// A bug in ironlake: please report it.
    Ours,
}

impl Actor {
    /// Who must act, as a phrase for messages.
    pub fn describe(self) -> &'static str {
        match self {
            Actor::Partner => "a problem of the partner's feed",
            Actor::Operator => "a problem of configuration or environment",
            Actor::Analyst => "a problem of the query",
            Actor::Ours => "a bug in ironlake, please report it",
        }
    }
}

/// Test hook: aborts the process (as `kill -9` would) when the environment
/// variable `IRONLAKE_FAILPOINT` names this point. Used by the crash tests.
pub fn failpoint(name: &str) {
    if std::env::var("IRONLAKE_FAILPOINT").is_ok_and(|v| v == name) {
        std::process::abort();
    }
}

/// Test hook: an I/O error (as a full disk would give) when the environment
/// variable `IRONLAKE_FAILPOINT` names this point. Used by the failure tests.
pub fn failpoint_io(name: &str) -> std::io::Result<()> {
    if std::env::var("IRONLAKE_FAILPOINT").is_ok_and(|v| v == name) {
        return Err(std::io::Error::other(format!(
            "injected failure at {name} (IRONLAKE_FAILPOINT)"
        )));
    }
    Ok(())
}

/// Test hook: panics, as a bug would, when `IRONLAKE_FAILPOINT` names this
/// point. Used to show that a panicking run never wedges the daemon.
pub fn failpoint_panic(name: &str) {
    if std::env::var("IRONLAKE_FAILPOINT").is_ok_and(|v| v == name) {
        panic!("injected panic at {name} (IRONLAKE_FAILPOINT)");
    }
}
