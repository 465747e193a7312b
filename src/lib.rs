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
//! - [`config`]: `ironlake.toml`, table schemas and pipelines, parsed and
//!   validated into types that cannot be invalid; [`check`] reports on them.
//! - [`domain`]: validators and facts every stage shares (USCC, district and
//!   industry codes, exact decimals, quarters).
//! - [`feedsim`]: the partner stand-in, `ironlake feed-sim`: deterministic,
//!   realistic feeds for every table, with the faults real partners have.
//!
//! Still to come, each as its own module: source (HTTP pages, auth, retry,
//! cursor) → decode → validate → partition → commit → catalog → models →
//! publish → serve.

pub mod catalog;
pub mod check;
pub mod config;
pub mod daemon;
pub mod decode;
pub mod domain;
pub mod feedsim;
pub mod ingest;
pub mod metrics;
pub mod models;
pub mod partition;
pub mod query;
pub mod serve;
pub mod source;
pub mod validate;
pub mod warehouse;

/// Test hook: aborts the process (as `kill -9` would) when the environment
/// variable `IRONLAKE_FAILPOINT` names this point. Used by the crash tests.
pub fn failpoint(name: &str) {
    if std::env::var("IRONLAKE_FAILPOINT").is_ok_and(|v| v == name) {
        std::process::abort();
    }
}
