//! Ingest: one run of one pipeline, from the first request to the commit.
//!
//! Pages are fetched, decoded, validated and partitioned as they arrive
//! (bounded memory: rows spill to the run's staging directory); only when
//! every page is in does the run take the warehouse lock, merge each
//! touched partition with what is committed (newest delivery wins), and
//! commit tables, quarantine and cursor together. A run that fails at any
//! point commits nothing and leaves the cursor where it was.

use crate::config::pipeline::{Format, Pagination, Window};
use crate::config::{Pipeline, Project, TableSchema};
use crate::decode::{self, Columns, DecodeError};
use crate::domain::Quarter;
use crate::packed::{PackedSet, PackedStrings};
use crate::partition::{self, PartitionError, Partitioner, QuarantineRow, Spilled};
use crate::source::{FetchStats, Source, SourceError};
use crate::validate::{Validator, Value};
use crate::warehouse::{
    self, Cursor, DirKey, Outcome, RunRecord, Warehouse, WarehouseError, merge,
};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::Read as _;
use std::sync::Arc;
use std::time::Instant;

/// What kind of run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunKind {
    /// The scheduled pull: from the stored cursor on.
    Ingest,
    /// Re-pull a quarter range.
    Backfill {
        /// First quarter.
        from: Quarter,
        /// Last quarter.
        to: Quarter,
    },
}

/// A progress report, sent after every page.
#[derive(Debug, Clone)]
pub struct Progress {
    /// Pipeline.
    pub pipeline: String,
    /// Run id.
    pub run_id: String,
    /// Windows (quarters) finished.
    pub windows_done: usize,
    /// Windows in the run.
    pub windows_total: usize,
    /// Pages decoded.
    pub pages: u64,
    /// Records received.
    pub rows_in: u64,
    /// Records valid.
    pub rows_valid: u64,
    /// Records rejected.
    pub rejected: u64,
    /// Seconds since the run started.
    pub elapsed_secs: f64,
    /// `fetching`, `committing` or `done`.
    pub phase: &'static str,
}

/// Receives progress reports.
pub type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// No such pipeline.
    #[error("no pipeline named {0:?}; pipelines: {1}")]
    UnknownPipeline(String, String),
    /// No such table (`import` takes a table, not a pipeline).
    #[error("no table named {0:?}; tables: {1}")]
    UnknownTable(String, String),
    /// A run of the pipeline is already in flight.
    #[error("pipeline {0} is already running (another run holds its lock); this run was skipped")]
    AlreadyRunning(String),
    /// A request failed for good.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A page could not be decoded.
    #[error("GET {url}: {source}")]
    Decode {
        /// Request URL (redacted).
        url: String,
        /// Why.
        source: DecodeError,
    },
    /// The feed's pagination went round in a circle.
    #[error("pagination loop: GET {url} {what}; stopping so as not to read the same data forever")]
    PaginationLoop {
        /// Request URL (redacted).
        url: String,
        /// What was seen.
        what: &'static str,
    },
    /// Buffering or spilling failed.
    #[error(transparent)]
    Partition(#[from] PartitionError),
    /// The warehouse refused the commit.
    #[error(transparent)]
    Warehouse(#[from] WarehouseError),
    /// A worker thread died (a bug).
    #[error("internal error: {0}")]
    Internal(String),
    /// The run panicked (a bug of ours); it was stopped and recorded failed.
    #[error("internal error: the run panicked: {0}; nothing was committed (please report this)")]
    Panicked(String),
    /// The run went on past its deadline.
    #[error(
        "the run took longer than source.max_run_secs ({0} s) and was stopped; nothing was committed"
    )]
    Deadline(u64),
    /// The feed sent more pages than allowed.
    #[error(
        "GET {url}: more than source.max_pages ({limit}) pages in one window; stopping (raise max_pages if the feed is really this long)"
    )]
    TooManyPages {
        /// Request URL (redacted) of the page past the limit.
        url: String,
        /// The limit.
        limit: u64,
    },
}

impl IngestError {
    /// Who must act: the partner (a broken or hostile feed), the operator
    /// (names, credentials, the disk, limits), or us (a bug).
    pub fn actor(&self) -> crate::Actor {
        use crate::Actor;
        match self {
            IngestError::Source(
                SourceError::Secret { .. }
                | SourceError::Url { .. }
                | SourceError::Unauthorized { .. },
            ) => Actor::Operator,
            IngestError::Source(_)
            | IngestError::Decode { .. }
            | IngestError::PaginationLoop { .. }
            | IngestError::TooManyPages { .. }
            | IngestError::Deadline(_) => Actor::Partner,
            IngestError::Warehouse(WarehouseError::Damaged { .. })
            | IngestError::Internal(_)
            | IngestError::Panicked(_) => Actor::Ours,
            IngestError::UnknownPipeline(..)
            | IngestError::UnknownTable(..)
            | IngestError::AlreadyRunning(_)
            | IngestError::Partition(_)
            | IngestError::Warehouse(_) => Actor::Operator,
        }
    }
}

/// The message of a panic payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with no message".to_string()
    }
}

/// A run's staging directory, removed when the run ends however it ends.
pub(crate) struct Staging {
    path: std::path::PathBuf,
    _lock: crate::warehouse::fsutil::FileLock,
}

impl Staging {
    pub(crate) fn new(wh: &Warehouse, run_id: &str) -> Result<Staging, IngestError> {
        let (path, lock) = wh.staging_dir(run_id)?;
        Ok(Staging { path, _lock: lock })
    }
}

impl std::ops::Deref for Staging {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.path
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Where a cursor stands.
fn cursor_value(v: &Value) -> Option<String> {
    match v {
        Value::Date(d) => chrono::NaiveDate::from_num_days_from_ce_opt(*d + 719_163)
            .map(|d| d.format("%Y-%m-%d").to_string()),
        Value::Str(s) => Some(s.to_string()),
        Value::I32(i) => Some(format!("{i:020}")),
        Value::I64(i) => Some(format!("{i:020}")),
        _ => None,
    }
}

/// The quarter a pipeline's clock is in now.
pub fn current_quarter(p: &Pipeline) -> Quarter {
    Quarter::from_date(today(p))
}

/// Today's date on a pipeline's clock.
pub fn today(p: &Pipeline) -> chrono::NaiveDate {
    chrono::Utc::now()
        .with_timezone(&p.schedule.time_zone)
        .date_naive()
}

/// A date cursor never runs ahead of today: one future-dated record
/// (`9999-12-31`) would otherwise stop the feed from being asked for
/// anything new for good. Other cursor values pass unchanged.
fn clamp_cursor(value: String, today: chrono::NaiveDate) -> String {
    match chrono::NaiveDate::parse_from_str(&value, "%Y-%m-%d") {
        Ok(d) if d > today => {
            tracing::warn!(cursor = %value, today = %today, "A record is dated in the future; the cursor stops at today.");
            today.format("%Y-%m-%d").to_string()
        }
        _ => value,
    }
}

fn encode(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn with_param(url: &str, key: &str, value: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{key}={}", encode(value))
}

/// The windows one run walks, and the `since` value for incremental feeds.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Plan {
    quarters: Vec<Option<Quarter>>,
    since: Option<String>,
}

fn plan(p: &Pipeline, kind: RunKind, cursor: Option<&str>, today: chrono::NaiveDate) -> Plan {
    match (&p.source.window, kind) {
        (Window::Quarters, RunKind::Backfill { from, to }) => Plan {
            quarters: from.through(to).map(Some).collect(),
            since: None,
        },
        (Window::Quarters, RunKind::Ingest) => {
            // Re-read the last quarter pulled (late restatements), then on to now.
            let from = cursor
                .and_then(|c| c.parse::<Quarter>().ok())
                .map_or(p.start, |q| q.prev().max(p.start));
            Plan {
                quarters: from.through(Quarter::from_date(today)).map(Some).collect(),
                since: None,
            }
        }
        (Window::Incremental { lookback_days, .. }, kind) => {
            let since = match (
                kind,
                cursor.and_then(|c| chrono::NaiveDate::parse_from_str(c, "%Y-%m-%d").ok()),
            ) {
                (RunKind::Backfill { from, .. }, _) => from.first_day(),
                // A cursor stored in the future (by an older release) is healed here.
                (RunKind::Ingest, Some(d)) => (d.min(today)
                    - chrono::Duration::days(i64::from(*lookback_days)))
                .max(p.start.first_day()),
                (RunKind::Ingest, None) => p.start.first_day(),
            };
            Plan {
                quarters: vec![None],
                since: Some(since.format("%Y-%m-%d").to_string()),
            }
        }
        (Window::Snapshot, _) => Plan {
            quarters: vec![None],
            since: None,
        },
    }
}

/// Whether a page-number or offset window goes on after a page of `items`.
/// An empty page ends it; so does a short page after a longer one (the
/// usual last page). A short page that is as long as every page before it
/// may be the partner capping the page size below what was asked: the next
/// page is asked for, rather than committing part of the window as if whole.
fn more_pages(seen: &mut (u64, u64), items: u64, page_size: u64) -> bool {
    let most_before = seen.0;
    *seen = (seen.0.max(items), items);
    items > 0 && (items >= page_size || items >= most_before)
}

/// Pagination state of one window.
enum Pager {
    Single {
        url: String,
        done: bool,
    },
    PageNumber {
        base: String,
        page: u32,
        /// Most items on one page so far, and the items on the last page.
        seen: (u64, u64),
    },
    Offset {
        base: String,
        offset: u64,
        seen: (u64, u64),
    },
    Cursor {
        base: String,
        cursor: Option<String>,
    },
    Link {
        next: String,
    },
}

impl Pager {
    fn start(p: &Pagination, base: String) -> Pager {
        match p {
            Pagination::None => Pager::Single {
                url: base,
                done: false,
            },
            Pagination::PageNumber { first_page, .. } => Pager::PageNumber {
                base,
                page: *first_page,
                seen: (0, 0),
            },
            Pagination::OffsetLimit { .. } => Pager::Offset {
                base,
                offset: 0,
                seen: (0, 0),
            },
            Pagination::Cursor { .. } => Pager::Cursor { base, cursor: None },
            Pagination::LinkHeader {
                size_param,
                page_size,
            } => Pager::Link {
                next: match (size_param, page_size) {
                    (Some(sp), Some(n)) => with_param(&base, sp, &n.to_string()),
                    _ => base,
                },
            },
        }
    }

    fn url(&self, p: &Pagination) -> String {
        match (self, p) {
            (Pager::Single { url, .. }, _) => url.clone(),
            (
                Pager::PageNumber { base, page, .. },
                Pagination::PageNumber {
                    page_param,
                    size_param,
                    page_size,
                    ..
                },
            ) => with_param(
                &with_param(base, page_param, &page.to_string()),
                size_param,
                &page_size.to_string(),
            ),
            (
                Pager::Offset { base, offset, .. },
                Pagination::OffsetLimit {
                    offset_param,
                    size_param,
                    page_size,
                },
            ) => with_param(
                &with_param(base, offset_param, &offset.to_string()),
                size_param,
                &page_size.to_string(),
            ),
            (
                Pager::Cursor { base, cursor },
                Pagination::Cursor {
                    cursor_param,
                    size_param,
                    page_size,
                    ..
                },
            ) => {
                let mut u = base.clone();
                if let (Some(sp), Some(n)) = (size_param, page_size) {
                    u = with_param(&u, sp, &n.to_string());
                }
                if let Some(c) = cursor {
                    u = with_param(&u, cursor_param, c);
                }
                u
            }
            (Pager::Link { next }, _) => next.clone(),
            _ => unreachable!("pager matches pagination"),
        }
    }

    /// Whether the last page was shorter than the page size asked for.
    fn last_was_short(&self, p: &Pagination) -> bool {
        match (self, p) {
            (Pager::PageNumber { seen, .. }, Pagination::PageNumber { page_size, .. }) => {
                seen.1 < u64::from(*page_size)
            }
            (Pager::Offset { seen, .. }, Pagination::OffsetLimit { page_size, .. }) => {
                seen.1 < u64::from(*page_size)
            }
            _ => false,
        }
    }

    /// Advances after a page of `items` items; false when the window is done.
    fn advance(
        &mut self,
        p: &Pagination,
        items: u64,
        next_cursor: Option<String>,
        next_link: Option<String>,
        current: &str,
    ) -> bool {
        match (self, p) {
            (Pager::Single { done, .. }, _) => {
                *done = true;
                false
            }
            (Pager::PageNumber { page, seen, .. }, Pagination::PageNumber { page_size, .. }) => {
                *page += 1;
                more_pages(seen, items, u64::from(*page_size))
            }
            (Pager::Offset { offset, seen, .. }, Pagination::OffsetLimit { page_size, .. }) => {
                *offset += items;
                more_pages(seen, items, u64::from(*page_size))
            }
            (Pager::Cursor { cursor, .. }, _) => match next_cursor {
                Some(c) => {
                    *cursor = Some(c);
                    true
                }
                None => false,
            },
            (Pager::Link { next }, _) => match next_link {
                Some(l) => {
                    *next = reqwest::Url::parse(current)
                        .and_then(|base| base.join(&l))
                        .map(|u| u.to_string())
                        .unwrap_or(l);
                    true
                }
                None => false,
            },
            _ => false,
        }
    }
}

/// Checks the next request of a window before it is sent: on a trusted
/// origin (a `Link` may point anywhere), not seen before in this window,
/// and within the page cap. Returns the URL redacted for messages.
fn next_request(
    source: &Source,
    visited: &mut PackedSet,
    prev: Option<&str>,
    url: &str,
    max_pages: u64,
) -> Result<String, IngestError> {
    let shown = source.redact(url);
    if let Some(prev) = prev {
        source.check_origin(prev, url, "the Link header's next page")?;
    }
    if !visited.insert(url) {
        return Err(IngestError::PaginationLoop {
            url: shown,
            what: "was already fetched in this run",
        });
    }
    if visited.len() as u64 > max_pages {
        return Err(IngestError::TooManyPages {
            url: shown,
            limit: max_pages,
        });
    }
    Ok(shown)
}

/// Runs one pipeline once. The run is recorded whatever its outcome.
pub async fn run(
    project: &Project,
    wh: &Warehouse,
    pipeline: &str,
    kind: RunKind,
    progress: Option<ProgressFn>,
) -> Result<RunRecord, IngestError> {
    let p = project.pipeline(pipeline).ok_or_else(|| {
        IngestError::UnknownPipeline(
            pipeline.to_string(),
            project
                .pipelines
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        )
    })?;
    let table = project.table(&p.table).ok_or_else(|| {
        IngestError::Internal(format!(
            "pipeline {} names unknown table {}",
            p.name, p.table
        ))
    })?;
    let Some(_pipeline_lock) = wh.try_lock_pipeline(&p.name)? else {
        return Err(IngestError::AlreadyRunning(p.name.clone()));
    };
    let run_id = warehouse::new_run_id(&p.name);
    let kind_name = match kind {
        RunKind::Ingest => warehouse::RunType::Ingest,
        RunKind::Backfill { .. } => warehouse::RunType::Backfill,
    };
    let mut record = RunRecord::start(&run_id, &p.name, kind_name, &p.table);
    wh.write_run(&record)?;
    let span = tracing::info_span!("run", pipeline = %p.name, run_id = %run_id);
    span.in_scope(|| tracing::debug!(kind = %kind_name, "Run started."));
    // A panic anywhere in the run (a bug) fails this run only: it is recorded
    // with its message and the pipeline's slot is released.
    let work = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(
        tracing::Instrument::instrument(
            execute(p, table, wh, kind, progress, &mut record),
            span.clone(),
        ),
    ));
    let result = match work.await {
        Ok(r) => r,
        Err(payload) => Err(IngestError::Panicked(panic_message(payload.as_ref()))),
    };
    let _enter = span.enter();
    match result {
        Ok(done) => {
            tracing::info!(
                rows_in = done.rows_in,
                rows_valid = done.rows_valid,
                rows_rejected = done.rows_rejected,
                rows_changed = done.rows_changed,
                partitions = done.partitions_touched.len(),
                "Run committed."
            );
            Ok(done)
        }
        Err(e) => {
            record.outcome = Outcome::Failed;
            record.error = Some(e.to_string());
            record.ended_at = Some(warehouse::now());
            if let Err(w) = wh.write_run(&record) {
                tracing::error!(error = %w, "Could not record the failed run.");
            }
            tracing::warn!(error = %e, "Run failed; nothing was committed.");
            Err(e)
        }
    }
}

/// What a run has counted so far.
#[derive(Default)]
pub(crate) struct Counters {
    stats: FetchStats,
    pub(crate) pages: u64,
    pub(crate) rows_in: u64,
    pub(crate) rows_valid: u64,
    pub(crate) rejected: u64,
    unknown: BTreeMap<String, u64>,
}

impl Counters {
    /// Copies the counts into the run's record.
    pub(crate) fn record_into(&self, record: &mut RunRecord) {
        record.requests = self.stats.requests;
        record.retries = self.stats.retries;
        record.bytes = self.stats.bytes;
        record.pages = self.pages;
        record.rows_in = self.rows_in;
        record.rows_valid = self.rows_valid;
        record.rows_rejected = self.rejected;
        record.unknown_fields = self.unknown.clone();
    }
}

/// Validation of decoded pages, apart from any run's state: pages are
/// checked on any thread, in any order, and taken into the run in order.
pub(crate) struct Checker {
    validator: Validator,
    schema: arrow::datatypes::SchemaRef,
    cursor_col: Option<usize>,
}

/// One page checked: its valid rows as one batch per quarter, its rejected
/// records (bad items first, then records, in page order; numbered within
/// the page) and its counts.
pub(crate) struct Checked {
    rows: BTreeMap<Quarter, arrow::array::RecordBatch>,
    rejects: Vec<(Option<Quarter>, QuarantineRow)>,
    items: u64,
    valid: u64,
    unknown: BTreeMap<String, u64>,
    max_cursor: Option<String>,
}

impl Checked {
    /// Moves the page's record numbers `offset` on (pages that are chunks of one file).
    fn renumber(&mut self, offset: u64) {
        for (_, r) in &mut self.rejects {
            r.record_no += offset;
        }
    }
}

impl Checker {
    fn new(table: &TableSchema, cursor_col: Option<usize>) -> Checker {
        Checker {
            validator: Validator::new(table),
            schema: table.arrow_schema(),
            cursor_col,
        }
    }

    /// Validates one decoded page from `source` (its URL or file, for the quarantine).
    fn check(&self, page: &decode::DecodedPage, source: &str) -> Checked {
        let mut rejects = Vec::new();
        for bad in &page.bad {
            let row = QuarantineRow {
                source: source.to_string(),
                record_no: bad.no,
                field: None,
                reason: bad.reason.clone(),
                code: bad.code,
                raw: bad.raw.clone(),
            };
            rejects.push((None, row));
        }
        let mut buffers: BTreeMap<Quarter, partition::RowBuffer> = BTreeMap::new();
        let (mut valid, mut max_cursor) = (0, None::<String>);
        let mut values = Vec::with_capacity(self.validator.schema().columns.len());
        for (i, rec) in page.records.iter().enumerate() {
            match self.validator.validate_into(rec, &mut values) {
                Ok(quarter) => {
                    valid += 1;
                    if let Some(ci) = self.cursor_col
                        && let Some(v) = cursor_value(&values[ci])
                        && max_cursor.as_ref().is_none_or(|m| &v > m)
                    {
                        max_cursor = Some(v);
                    }
                    buffers
                        .entry(quarter)
                        .or_insert_with(|| {
                            // Room for the rest of the page: it is mostly one quarter.
                            let rest = &page.records[i..];
                            let text = text_bytes(rest, self.validator.schema().columns.len());
                            partition::RowBuffer::with_capacity(
                                self.validator.schema(),
                                rest.len(),
                                &text,
                            )
                        })
                        .push(&values);
                }
                Err(rej) => {
                    let row = QuarantineRow {
                        source: source.to_string(),
                        record_no: rec.no,
                        field: rej.field,
                        reason: rej.reason,
                        code: rej.code,
                        raw: rec.raw.to_string(),
                    };
                    rejects.push((self.validator.quarter_of(rec), row));
                }
            }
        }
        Checked {
            rows: buffers
                .into_iter()
                .map(|(q, mut b)| (q, b.finish(&self.schema)))
                .collect(),
            rejects,
            items: page.items,
            valid,
            unknown: page.unknown_fields.clone(),
            max_cursor,
        }
    }
}

/// The text bytes of each of the `columns` cells over `records`: room for
/// their string values, which are never longer.
fn text_bytes(records: &[decode::RawRecord<'_>], columns: usize) -> Vec<usize> {
    let mut bytes = vec![0; columns];
    for rec in records {
        for (b, cell) in bytes.iter_mut().zip(&rec.cells) {
            *b += cell.as_ref().map_or(0, decode::Cell::text_len);
        }
    }
    bytes
}

/// Where checked pages go, in order: the partitioner (valid rows by
/// quarter, everything else to the quarantine), the counters, and the
/// highest value of the incremental cursor's column.
pub(crate) struct Absorber {
    checker: Arc<Checker>,
    pub(crate) part: Partitioner,
    max_cursor: Option<String>,
    pub(crate) counters: Counters,
    /// When set (pushes), the first rejected records of the page, to answer with.
    pub(crate) errors: Option<Vec<warehouse::IntakeError>>,
}

/// Rejected records an intake answer lists (all are counted and quarantined).
pub(crate) const MAX_ANSWER_ERRORS: usize = 100;

impl Absorber {
    pub(crate) fn new(
        table: &TableSchema,
        staging: &std::path::Path,
        run_id: &str,
        name: &str,
    ) -> Absorber {
        Absorber::with_cursor(table, staging, run_id, name, None)
    }

    /// An absorber that tracks the highest value of column `cursor_col`.
    fn with_cursor(
        table: &TableSchema,
        staging: &std::path::Path,
        run_id: &str,
        name: &str,
        cursor_col: Option<usize>,
    ) -> Absorber {
        Absorber {
            checker: Arc::new(Checker::new(table, cursor_col)),
            part: Partitioner::new(table, staging, run_id, name),
            max_cursor: None,
            counters: Counters::default(),
            errors: None,
        }
    }

    /// Validates one decoded page from `source` (its URL or file, for the
    /// quarantine) into the run.
    pub(crate) fn absorb(
        &mut self,
        page: &decode::DecodedPage,
        source: &str,
    ) -> Result<(), PartitionError> {
        let checked = self.checker.check(page, source);
        self.take(checked, 0)
    }

    /// Takes a checked page of `window` into the run (each window's pages
    /// in delivery order; windows are ordered by number at the commit).
    fn take(&mut self, checked: Checked, window: usize) -> Result<(), PartitionError> {
        let c = &mut self.counters;
        c.pages += 1;
        c.rows_in += checked.items;
        c.rows_valid += checked.valid;
        c.rejected += checked.rejects.len() as u64;
        for (k, n) in checked.unknown {
            *c.unknown.entry(k).or_default() += n;
        }
        if let Some(v) = checked.max_cursor
            && self.max_cursor.as_ref().is_none_or(|m| &v > m)
        {
            self.max_cursor = Some(v);
        }
        for (q, batch) in checked.rows {
            self.part.push_batch(window, q, batch)?;
        }
        for (quarter, row) in checked.rejects {
            if let Some(errors) = &mut self.errors
                && errors.len() < MAX_ANSWER_ERRORS
            {
                errors.push(warehouse::IntakeError {
                    record_no: row.record_no,
                    field: row.field.clone(),
                    reason: row.reason.clone(),
                });
            }
            self.part.reject(window, quarter, row)?;
        }
        Ok(())
    }
}

/// Sends progress reports of one run.
struct Reporter<'a> {
    progress: Option<ProgressFn>,
    pipeline: &'a str,
    run_id: String,
    windows: usize,
    started: Instant,
}

impl Reporter<'_> {
    fn send(&self, c: &Counters, done: usize, phase: &'static str) {
        if let Some(f) = &self.progress {
            f(&Progress {
                pipeline: self.pipeline.to_string(),
                run_id: self.run_id.clone(),
                windows_done: done,
                windows_total: self.windows,
                pages: c.pages,
                rows_in: c.rows_in,
                rows_valid: c.rows_valid,
                rejected: c.rejected,
                elapsed_secs: self.started.elapsed().as_secs_f64(),
                phase,
            });
        }
    }
}

/// What the paging loop hands to the decoder, in delivery order.
enum Fetched {
    /// A page of a window.
    Page(PageIn),
    /// Every page of this window has been handed over.
    WindowDone(usize),
}

/// One fetched page on its way to decoding.
struct PageIn {
    window: usize,
    shown: String,
    body: bytes::Bytes,
    /// For styles whose next page depends on the page's content: where the
    /// decoder says what the page held.
    reply: Option<tokio::sync::oneshot::Sender<PageInfo>>,
}

/// What the pager needs to know of a decoded page.
#[derive(Default)]
struct PageInfo {
    items: u64,
    next_cursor: Option<String>,
}

/// The first URL of a window (a quarter, or the whole feed).
fn window_url(
    p: &Pipeline,
    source: &Source,
    plan: &Plan,
    quarter: Option<Quarter>,
) -> Result<String, IngestError> {
    let base = source.base_url(&p.name, quarter)?;
    Ok(match (&p.source.window, &plan.since) {
        (Window::Incremental { param, .. }, Some(since)) => with_param(&base, param, since),
        _ => base,
    })
}

/// Whether a page-number or offset page is byte-identical to the one before it.
fn repeats_last_page(p: &Pagination, body: &[u8], last: &mut Option<u64>) -> bool {
    if !matches!(
        p,
        Pagination::PageNumber { .. } | Pagination::OffsetLimit { .. }
    ) {
        return false;
    }
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    body.hash(&mut hasher);
    let h = hasher.finish();
    last.replace(h) == Some(h)
}

/// The one paging loop: walks every window of the plan page by page and
/// hands each body to `tx`; returns the pages it fetched. Styles whose next
/// page is known from the response alone (a `Link` header, a single page)
/// fetch ahead of decoding; the others wait for the decoded page's item
/// count or cursor.
async fn fetch_pages(
    p: &Pipeline,
    source: &Source,
    plan: &Plan,
    stats: &mut FetchStats,
    tx: tokio::sync::mpsc::Sender<Fetched>,
) -> Result<Chains, IngestError> {
    use futures::StreamExt as _;
    let quarters: Vec<Option<Quarter>> = plan.quarters.clone();
    let mut windows = futures::stream::iter(quarters.into_iter().enumerate())
        .map(|(window, quarter)| fetch_window(p, source, plan, window, quarter, tx.clone()))
        .buffered(p.source.windows_at_once);
    let mut chains = Vec::new();
    while let Some((window_stats, chain, fetched)) = windows.next().await {
        stats.requests += window_stats.requests;
        stats.retries += window_stats.retries;
        stats.bytes += window_stats.bytes;
        fetched?;
        chains.push(chain);
    }
    Ok(chains)
}

/// Each window's pages.
type Chains = Vec<Chain>;

/// A window's pages in order: URL and `ETag` (if the feed sent one),
/// packed (see [`crate::packed`]): kept to the end of the run.
#[derive(Default)]
struct Chain {
    urls: PackedStrings,
    /// The `ETag` of each page, empty for none.
    etags: PackedStrings,
    tagged: Vec<bool>,
}

impl Chain {
    fn push(&mut self, url: &str, etag: Option<&str>) {
        self.urls.push(url);
        self.etags.push(etag.unwrap_or_default());
        self.tagged.push(etag.is_some());
    }

    /// The pages: URL and `ETag`.
    fn pages(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        self.urls
            .iter()
            .zip(self.etags.iter())
            .zip(&self.tagged)
            .map(|((url, etag), &tagged)| (url, tagged.then_some(etag)))
    }
}

/// Fetches one window page by page into `tx`; returns its request counts
/// and its pages (URL, `ETag`) with the outcome.
async fn fetch_window(
    p: &Pipeline,
    source: &Source,
    plan: &Plan,
    window: usize,
    quarter: Option<Quarter>,
    tx: tokio::sync::mpsc::Sender<Fetched>,
) -> (FetchStats, Chain, Result<(), IngestError>) {
    let mut stats = FetchStats::default();
    let mut chain = Chain::default();
    let pagination = &p.source.pagination;
    let ahead = matches!(pagination, Pagination::LinkHeader { .. } | Pagination::None);
    let result = async {
        let mut pager = Pager::start(pagination, window_url(p, source, plan, quarter)?);
        let mut visited = PackedSet::default();
        let (mut prev, mut last_body): (Option<String>, Option<u64>) = (None, None);
        loop {
            let url = pager.url(pagination);
            let shown = next_request(
                source,
                &mut visited,
                prev.as_deref(),
                &url,
                p.source.max_pages,
            )?;
            let fetched = source.fetch(&url, &mut stats).await?;
            if repeats_last_page(pagination, &fetched.body, &mut last_body) {
                // After a short page, the same page again means the feed
                // ignores paging past its end: done, nothing new.
                if pager.last_was_short(pagination) {
                    break;
                }
                return Err(IngestError::PaginationLoop {
                    url: shown,
                    what: "returned the same page as the request before it",
                });
            }
            chain.push(&url, fetched.etag.as_deref());
            let (reply, answer) = if ahead {
                (None, None)
            } else {
                let (t, r) = tokio::sync::oneshot::channel();
                (Some(t), Some(r))
            };
            let page = PageIn {
                window,
                shown,
                body: fetched.body,
                reply,
            };
            if tx.send(Fetched::Page(page)).await.is_err() {
                return Ok(()); // the decoder stopped with an error of its own
            }
            let info = match answer {
                None => PageInfo::default(),
                Some(r) => match r.await {
                    Ok(info) => info,
                    Err(_) => return Ok(()),
                },
            };
            if !pager.advance(
                pagination,
                info.items,
                info.next_cursor,
                fetched.next_link,
                &url,
            ) {
                break;
            }
            prev = Some(url);
        }
        // A decoder that stopped has an error of its own.
        let _ = tx.send(Fetched::WindowDone(window)).await;
        Ok(())
    }
    .await;
    (stats, chain, result)
}

/// Threads that decode and validate pages side by side.
fn check_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 8))
}

/// Pages (feed pages, or chunks of an imported file) being checked or
/// waiting to be taken, per checking thread. With one, a thread that
/// finished its page waited for the oldest to be taken: a 5.1M-row
/// backfill took 3.8-4.3 s instead of 3.4-3.8 (best of three, `feed-sim`
/// on the same 2 cores), for 6-12 MB less at its peak.
const PAGES_PER_THREAD: usize = 2;

/// Fetched pages waiting for a checking thread.
const FETCHED_AHEAD: usize = 4;

/// A page being checked on a blocking thread, with its window.
type Checking = (usize, tokio::task::JoinHandle<Result<Checked, IngestError>>);

/// Waits for a page being checked and takes it into the run; `done`
/// windows are complete.
async fn take_checked(
    sink: &mut Absorber,
    report: &Reporter<'_>,
    (window, task): Checking,
    done: usize,
) -> Result<(), IngestError> {
    let checked = task.await.map_err(|e| match e.try_into_panic() {
        Ok(payload) => IngestError::Panicked(panic_message(payload.as_ref())),
        Err(e) => IngestError::Internal(format!("page thread: {e}")),
    })??;
    sink.take(checked, window)?;
    report.send(&sink.counters, done, "fetching");
    Ok(())
}

/// Decodes and validates pages as they arrive, a few at a time on blocking
/// threads (each answers the pager as soon as it is decoded), and takes
/// them into the run in delivery order. A window's staged files are closed
/// once its last page is in, so a long backfill holds only the unfinished
/// row groups of the windows still being fetched.
async fn absorb_pages(
    p: &Pipeline,
    columns: Arc<Columns>,
    sink: &mut Absorber,
    report: &Reporter<'_>,
    mut rx: tokio::sync::mpsc::Receiver<Fetched>,
) -> Result<(), IngestError> {
    let cursor_field = match &p.source.pagination {
        Pagination::Cursor {
            next_cursor_field, ..
        } => Some(next_cursor_field.clone()),
        _ => None,
    };
    let records_field = p.source.records_field.clone();
    let format = p.source.format;
    let mut queue: std::collections::VecDeque<Checking> = Default::default();
    let mut done = 0;
    while let Some(fetched) = rx.recv().await {
        let page_in = match fetched {
            Fetched::Page(page_in) => page_in,
            Fetched::WindowDone(window) => {
                // Its pages are all queued or taken: take them, then close it.
                while let Some(next) = queue.pop_front() {
                    take_checked(sink, report, next, done).await?;
                }
                sink.part.window_done(window)?;
                done += 1;
                continue;
            }
        };
        if queue.len() >= PAGES_PER_THREAD * check_threads() {
            let next = queue.pop_front().expect("queue is full");
            take_checked(sink, report, next, done).await?;
        }
        let window = page_in.window;
        let (checker, columns) = (sink.checker.clone(), columns.clone());
        let (records_field, cursor_field) = (records_field.clone(), cursor_field.clone());
        let task = tokio::task::spawn_blocking(move || {
            let PageIn {
                shown, body, reply, ..
            } = page_in;
            let page = decode::decode(
                format,
                records_field.as_deref(),
                cursor_field.as_deref(),
                &columns,
                &body,
            )
            .map_err(|e| IngestError::Decode {
                url: shown.clone(),
                source: e,
            })?;
            if let Some(reply) = reply {
                let _ = reply.send(PageInfo {
                    items: page.items,
                    next_cursor: page.next_cursor.clone(),
                });
            }
            Ok(checker.check(&page, &shown))
        });
        queue.push_back((window, task));
    }
    while let Some(next) = queue.pop_front() {
        take_checked(sink, report, next, done).await?;
    }
    Ok(())
}

/// Fetches every page of the plan into `sink`, fetching and decoding side
/// by side; returns the pages with their `ETag`s if every page had one.
async fn fetch_into(
    p: &Pipeline,
    table: &TableSchema,
    source: &Source,
    plan: &Plan,
    sink: &mut Absorber,
    report: &Reporter<'_>,
) -> Result<Option<warehouse::DeliveredPages>, IngestError> {
    let columns = Arc::new(Columns::new(table.columns.iter().map(|c| c.name.as_str())));
    let (tx, rx) = tokio::sync::mpsc::channel::<Fetched>(FETCHED_AHEAD);
    let mut stats = FetchStats::default();
    let (fetched, absorbed) = tokio::join!(
        fetch_pages(p, source, plan, &mut stats, tx),
        absorb_pages(p, columns, sink, report, rx)
    );
    sink.counters.stats = stats;
    absorbed?;
    // Pages can be recognised again when every one has an `ETag` (and no
    // URL holds a secret, which would be kept in the warehouse).
    let tagged = fetched?
        .into_iter()
        .map(|chain| {
            chain
                .pages()
                .map(|(url, etag)| {
                    etag.filter(|_| source.redact(url) == url)
                        .map(|e| (url.to_string(), e.to_string()))
                })
                .collect::<Option<Vec<_>>>()
        })
        .collect::<Option<warehouse::DeliveredPages>>();
    Ok(tagged)
}

/// The cursor a run leaves behind: never behind the old one, never in the future.
fn cursor_after(
    p: &Pipeline,
    kind: RunKind,
    before: Option<String>,
    max_seen: Option<String>,
) -> Option<String> {
    match (&p.source.window, kind) {
        (Window::Quarters, RunKind::Ingest) => Some(current_quarter(p).to_string()),
        (Window::Quarters, RunKind::Backfill { to, .. }) => {
            let before = before.as_deref().and_then(|c| c.parse::<Quarter>().ok());
            Some(before.map_or(to, |b| b.max(to)).to_string())
        }
        (Window::Incremental { .. }, _) => {
            let max_seen = max_seen.map(|m| clamp_cursor(m, today(p)));
            let before = before.map(|b| clamp_cursor(b, today(p)));
            match (before, max_seen) {
                (Some(b), Some(m)) => Some(if m > b { m } else { b }),
                (b, m) => m.or(b),
            }
        }
        (Window::Snapshot, _) => None,
    }
}

async fn execute(
    p: &Pipeline,
    table: &TableSchema,
    wh: &Warehouse,
    kind: RunKind,
    progress: Option<ProgressFn>,
    record: &mut RunRecord,
) -> Result<RunRecord, IngestError> {
    let manifest = wh.manifest_shared()?;
    let cursor_before = manifest.cursors.get(&p.name).map(|c| c.value.clone());
    record.cursor_before = cursor_before.clone();
    let staging = Staging::new(wh, &record.run_id)?;
    crate::failpoint_panic("ingest.panic");
    let source = Source::new(p)?;
    let plan = plan(p, kind, cursor_before.as_deref(), today(p));
    let cursor_col = match &p.source.window {
        Window::Incremental { field, .. } => table.columns.iter().position(|c| &c.name == field),
        _ => None,
    };
    // The fetch phase (revalidation included) has a deadline; the commit,
    // once started, is not cut short.
    let deadline = tokio::time::Instant::now() + p.source.max_run;
    let past_deadline = || IngestError::Deadline(p.source.max_run.as_secs());
    // The revalidation's requests count in the run's record.
    let mut revalidated = FetchStats::default();
    if p.source.conditional_requests {
        let since = tokio::time::timeout_at(
            deadline,
            same_pages_again(p, table, wh, &manifest, &source, &plan, &mut revalidated),
        )
        .await;
        (record.requests, record.retries) = (revalidated.requests, revalidated.retries);
        if let Some(since) = since.map_err(|_| past_deadline())?? {
            return record_unchanged(wh, &manifest, record.clone(), since);
        }
    }
    let mut sink = Absorber::with_cursor(table, &staging, &record.run_id, &p.name, cursor_col);
    let report = Reporter {
        progress,
        pipeline: &p.name,
        run_id: record.run_id.clone(),
        windows: plan.quarters.len(),
        started: Instant::now(),
    };
    let fetched = tokio::time::timeout_at(
        deadline,
        fetch_into(p, table, &source, &plan, &mut sink, &report),
    )
    .await
    .unwrap_or_else(|_| Err(past_deadline()));
    sink.counters.record_into(record);
    record.requests += revalidated.requests;
    record.retries += revalidated.retries;
    // On failure the staging directory goes with `staging`.
    let delivered = fetched?
        .filter(|_| p.source.conditional_requests)
        .map(|pages| Delivered {
            fingerprint: feed_fingerprint(p, table, &pages),
            bytes: 0,
            pages: Some(pages),
        });
    for (field, n) in &sink.counters.unknown {
        tracing::warn!(field = %field, records = n, "The feed sends a field the schema does not declare; it was ignored.");
    }
    let cursor_after = cursor_after(p, kind, cursor_before, sink.max_cursor.take());
    record.cursor_after = cursor_after.clone();
    let spilled = sink.part.finish()?;
    crate::primitives::release_freed_memory();
    report.send(&sink.counters, plan.quarters.len(), "committing");
    let commit = RowsCommit {
        pipeline: &p.name,
        cursor_after,
        append: false,
        delivered,
    };
    let done = commit_blocking(wh, table, spilled, commit, record.clone(), staging).await?;
    *record = done.clone();
    report.send(&sink.counters, plan.quarters.len(), "done");
    Ok(done)
}

/// Requests at once while revalidating a delivery's pages.
const REVALIDATE_AT_ONCE: usize = 4;

/// When this run would ask for the same pages as the table's last delivery
/// (by this pipeline, with the table as it left it and the same cursor) and
/// the feed answers `304 Not Modified` to every page's `If-None-Match`: the
/// run that committed that delivery. Any other answer, or an error, means
/// the run goes on as usual (the first page that changed ends the checks).
async fn same_pages_again(
    p: &Pipeline,
    table: &TableSchema,
    wh: &Warehouse,
    manifest: &warehouse::Manifest,
    source: &Source,
    plan: &Plan,
    stats: &mut FetchStats,
) -> Result<Option<String>, IngestError> {
    use futures::StreamExt as _;
    let cursor = manifest.cursors.get(&p.name).map(|c| c.value.as_str());
    let Some(d) = manifest.standing_delivery(&table.name, cursor) else {
        return Ok(None);
    };
    let Some(pages) = d.pages.as_deref().and_then(|n| wh.delivered_pages(n)) else {
        return Ok(None);
    };
    if d.pipeline != p.name || feed_fingerprint(p, table, &pages) != d.fingerprint {
        return Ok(None);
    }
    // The same windows, each starting where this run would start it.
    let pagination = &p.source.pagination;
    let firsts = plan
        .quarters
        .iter()
        .map(|q| Ok(Pager::start(pagination, window_url(p, source, plan, *q)?).url(pagination)))
        .collect::<Result<Vec<String>, IngestError>>()?;
    let same_windows = firsts.len() == pages.len()
        && firsts
            .iter()
            .zip(&pages)
            .all(|(first, window)| window.first().is_some_and(|(url, _)| url == first));
    if !same_windows {
        return Ok(None);
    }
    let mut answers = futures::stream::iter(pages.into_iter().flatten())
        .map(|(url, etag)| async move {
            let mut s = FetchStats::default();
            let answer = source.unchanged(&url, &etag, &mut s).await;
            (s, url, answer)
        })
        .buffered(REVALIDATE_AT_ONCE);
    while let Some((s, url, answer)) = answers.next().await {
        stats.requests += s.requests;
        stats.retries += s.retries;
        match answer {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!(url = %source.redact(&url), "A page changed since the last delivery; fetching the feed.");
                return Ok(None);
            }
            Err(e) => {
                tracing::debug!(error = %e, "Revalidating the last delivery failed; fetching the feed.");
                return Ok(None);
            }
        }
    }
    Ok(Some(d.run_id.clone()))
}

/// Runs [`commit_rows`] on a blocking thread. The staging directory lives
/// until the commit is over, even if the awaiting future is dropped.
async fn commit_blocking(
    wh: &Warehouse,
    table: &TableSchema,
    spilled: Spilled,
    commit: RowsCommit<'_>,
    record: RunRecord,
    staging: Staging,
) -> Result<RunRecord, IngestError> {
    let (wh, table, pipeline) = (wh.clone(), table.clone(), commit.pipeline.to_string());
    let RowsCommit {
        cursor_after,
        append,
        delivered,
        ..
    } = commit;
    tokio::task::spawn_blocking(move || {
        let commit = RowsCommit {
            pipeline: &pipeline,
            cursor_after,
            append,
            delivered,
        };
        let r = commit_rows(&wh, &table, spilled, record, commit);
        drop(staging);
        r
    })
    .await
    .map_err(|e| match e.try_into_panic() {
        Ok(payload) => IngestError::Panicked(panic_message(payload.as_ref())),
        Err(e) => IngestError::Internal(format!("commit thread: {e}")),
    })?
}

/// The paths of a committed partition's files.
fn partition_files<'a>(
    wh: &'a Warehouse,
    state: &'a warehouse::DirState,
    part: &'a str,
) -> impl Iterator<Item = std::path::PathBuf> + 'a {
    let dir = wh
        .root()
        .join(&state.generation)
        .join(warehouse::partition_path(part));
    state
        .partitions
        .get(part)
        .map_or(&[][..], |p| &p.files)
        .iter()
        .map(move |f| dir.join(&f.name))
}

/// What merging a run's rows into its table produced.
#[derive(Default)]
struct TableMerge {
    change: Option<warehouse::DirChange>,
    rows_changed: u64,
    rows_written: u64,
    touched: Vec<String>,
}

/// Keys whose period changed move partitions: for each committed
/// partition, the keys to drop from it because they now arrive in another.
/// Only tables whose key does not contain the period column can move.
fn moved_keys(
    wh: &Warehouse,
    table: &TableSchema,
    state: &warehouse::DirState,
    new_by_part: &BTreeMap<String, &Vec<std::path::PathBuf>>,
) -> Result<BTreeMap<String, HashSet<Vec<u8>>>, IngestError> {
    let schema = table.arrow_schema();
    let pk = &table.primary_key;
    let mut removals: BTreeMap<String, HashSet<Vec<u8>>> = BTreeMap::new();
    if pk.contains(&table.period_column) || new_by_part.is_empty() {
        return Ok(removals);
    }
    let mut new_keys: HashMap<Vec<u8>, String> = HashMap::new();
    for (q, paths) in new_by_part {
        for b in partition::read_spills(paths)? {
            for k in merge::encode_keys(&schema, &b, pk)? {
                new_keys.insert(k, q.clone());
            }
        }
    }
    for part in state.partitions.keys() {
        for path in partition_files(wh, state, part) {
            let held = file_keys(&path, &schema, pk)?;
            // Look the (few) new keys up in the (many) held ones.
            for (k, q) in &new_keys {
                if q != part && held.contains(k) {
                    removals.entry(part.clone()).or_default().insert(k.clone());
                }
            }
        }
    }
    Ok(removals)
}

/// What every commit step of a run reads: the warehouse under its lock,
/// the manifest committed on, the table, the run's spilled rows.
struct CommitInput<'a> {
    wh: &'a Warehouse,
    guard: &'a warehouse::CommitGuard,
    base: &'a warehouse::Manifest,
    table: &'a TableSchema,
    spilled: &'a Spilled,
    run_id: &'a str,
    /// New rows whose keys a partition does not hold yet may go into a file
    /// of their own beside its files (pushes), instead of a rewrite.
    append: bool,
}

/// Files a partition may have before an appending commit compacts all but
/// its largest file into one (or, when keys repeat, merges it whole).
const MAX_PARTITION_FILES: usize = 24;

/// A committed file's identity: device, inode, size, modification time (s, ns).
type FileId = (u64, u64, u64, i64, i64);

fn file_identity(path: &std::path::Path) -> Option<FileId> {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

/// Items all [`FileSets`] of one kind hold before they are emptied.
const FILE_SET_ITEMS: usize = 4_000_000;

/// Sets read from committed files (primary keys, quarantine fingerprints),
/// kept by the file's identity: committed files never change, and a hard
/// link into a later generation is the same file.
struct FileSets<T>(std::sync::LazyLock<std::sync::Mutex<HashMap<FileId, Arc<HashSet<T>>>>>);

impl<T: Eq + std::hash::Hash> FileSets<T> {
    const fn new() -> FileSets<T> {
        FileSets(std::sync::LazyLock::new(Default::default))
    }

    /// The set of the file at `path`, read by `read` the first time.
    fn get_or_read(
        &self,
        path: &std::path::Path,
        read: impl FnOnce() -> Result<HashSet<T>, IngestError>,
    ) -> Result<Arc<HashSet<T>>, IngestError> {
        let id = file_identity(path);
        if let Some(id) = id
            && let Some(set) = self.0.lock().expect("file sets").get(&id)
        {
            return Ok(set.clone());
        }
        let set = Arc::new(read()?);
        if let Some(id) = id {
            self.remember(id, set.clone());
        }
        Ok(set)
    }

    /// Keeps the set of a file just written.
    fn remember(&self, id: FileId, set: Arc<HashSet<T>>) {
        let mut cache = self.0.lock().expect("file sets");
        let held: usize = cache.values().map(|s| s.len()).sum();
        if held + set.len() > FILE_SET_ITEMS {
            cache.clear();
        }
        cache.insert(id, set);
    }
}

/// The encoded primary keys of committed table files.
static KEYS: FileSets<Vec<u8>> = FileSets::new();

/// The record fingerprints of committed quarantine files.
static FINGERPRINTS: FileSets<String> = FileSets::new();

/// The primary keys of one committed file (cached by identity).
fn file_keys(
    path: &std::path::Path,
    schema: &arrow::datatypes::SchemaRef,
    pk: &[usize],
) -> Result<Arc<HashSet<Vec<u8>>>, IngestError> {
    KEYS.get_or_read(path, || {
        let batch = merge::read_parquet(path, schema)?;
        Ok(merge::encode_keys(schema, &batch, pk)?
            .into_iter()
            .collect())
    })
}

/// New rows ready to go into a file of their own, sorted by key like a
/// merged partition, with their keys.
struct Appendable {
    rows: arrow::array::RecordBatch,
    order: Vec<u32>,
    keys: HashSet<Vec<u8>>,
    /// The partition already has [`MAX_PARTITION_FILES`] files: the rows
    /// go in with a compaction ([`compact_around_largest`]).
    crowded: bool,
}

/// `new` rows of `part` as a file of their own when that changes nothing
/// else: none of their keys is in the partition or repeated among them.
/// `None`: the partition has to be merged and rewritten.
fn appendable(
    c: &CommitInput,
    state: &warehouse::DirState,
    part: &str,
    new: &[arrow::array::RecordBatch],
) -> Result<Option<Appendable>, IngestError> {
    let schema = c.table.arrow_schema();
    let pk = &c.table.primary_key;
    let files: Vec<std::path::PathBuf> = partition_files(c.wh, state, part).collect();
    if new.is_empty() {
        return Ok(None);
    }
    let rows = arrow::compute::concat_batches(&schema, new)
        .map_err(|e| IngestError::Internal(e.to_string()))?;
    let keys = merge::encode_keys(&schema, &rows, pk)?;
    let mut fresh: HashSet<Vec<u8>> = HashSet::with_capacity(keys.len());
    for k in &keys {
        if !fresh.insert(k.clone()) {
            return Ok(None);
        }
    }
    for path in &files {
        let held = file_keys(path, &schema, pk)?;
        if keys.iter().any(|k| held.contains(k)) {
            return Ok(None);
        }
    }
    Ok(Some(Appendable {
        order: key_order(&keys),
        rows,
        keys: fresh,
        crowded: files.len() >= MAX_PARTITION_FILES,
    }))
}

/// Row numbers in the order of their encoded keys.
fn key_order(keys: &[Vec<u8>]) -> Vec<u32> {
    let mut order: Vec<u32> = (0..keys.len() as u32).collect();
    order.sort_by(|a, b| keys[*a as usize].cmp(&keys[*b as usize]));
    order
}

/// Appends to a partition with too many files: its largest file stays (a
/// hard link in the new generation) and the other files with the new rows
/// become one file sorted by key. All of them hold distinct keys, so this
/// changes no row, and costs the small files, not the whole partition.
fn compact_around_largest(
    c: &CommitInput,
    state: &warehouse::DirState,
    g: &mut warehouse::GenBuilder,
    part: &str,
    a: Appendable,
) -> Result<warehouse::FileEntry, IngestError> {
    let schema = c.table.arrow_schema();
    let files = state.partitions.get(part).map_or(&[][..], |p| &p.files);
    let largest = files.iter().max_by_key(|f| f.rows).cloned();
    let dir =
        c.wh.root()
            .join(&state.generation)
            .join(warehouse::partition_path(part));
    let mut batches = vec![a.rows];
    for f in files {
        if Some(&f.name) != largest.as_ref().map(|l| &l.name) {
            batches.push(merge::read_parquet(&dir.join(&f.name), &schema)?);
        }
    }
    let rows = arrow::compute::concat_batches(&schema, &batches)
        .map_err(|e| IngestError::Internal(e.to_string()))?;
    drop(batches);
    let keys = merge::encode_keys(&schema, &rows, &c.table.primary_key)?;
    let merged = Appendable {
        order: key_order(&keys),
        rows,
        keys: keys.into_iter().collect(),
        crowded: false,
    };
    let into = g.partition_dir(part)?;
    let entry = write_appended(&into.join(g.file_name(files.len())), merged)?;
    let mut kept = Vec::new();
    if let Some(l) = largest {
        let (from, to) = (dir.join(&l.name), into.join(&l.name));
        std::fs::hard_link(&from, &to).map_err(|e| {
            IngestError::Internal(format!(
                "linking {} to {}: {e}",
                from.display(),
                to.display()
            ))
        })?;
        kept.push(l);
    }
    kept.push(entry.clone());
    g.set_partition(part, kept);
    Ok(entry)
}

/// Writes appendable rows at `path` and remembers their keys for the next commit.
fn write_appended(
    path: &std::path::Path,
    a: Appendable,
) -> Result<warehouse::FileEntry, IngestError> {
    let entry = merge::write_parquet_rows(path, &a.rows, &a.order)?;
    if let Some(id) = file_identity(path) {
        KEYS.remember(id, Arc::new(a.keys));
    }
    Ok(entry)
}

/// Pushes of new keys only: every partition's new rows go into a file of
/// its own added to the table's live generation in place (no new
/// generation per push). `None` when some partition has to be merged (or
/// the table has no generation yet).
fn append_in_place(
    c: &CommitInput,
    state: &warehouse::DirState,
    new_by_part: &BTreeMap<String, &Vec<std::path::PathBuf>>,
) -> Result<Option<TableMerge>, IngestError> {
    let key = DirKey::Table(c.table.name.clone()).key();
    let Some(mut target) = c.wh.begin_in_place(c.base, &key, c.run_id) else {
        return Ok(None);
    };
    let mut out = TableMerge::default();
    for (n, (part, paths)) in new_by_part.iter().enumerate() {
        let new = partition::read_spills(paths)?;
        let Some(a) = appendable(c, state, part, &new)?.filter(|a| !a.crowded) else {
            return Ok(None);
        };
        let entry = write_appended(&target.staged_path(part, n)?, a)?;
        out.rows_changed += entry.rows;
        out.rows_written += entry.rows;
        out.touched.push(part.clone());
        target.add_file(part, n, entry, c.run_id);
    }
    out.change = Some(c.wh.finish_in_place(target)?);
    Ok(Some(out))
}

/// Merges the run's valid rows into a new generation of the table, one
/// partition at a time (newest delivery wins per key). When appending
/// (pushes), new keys go into files of their own instead: in place when
/// every partition takes them that way, else in the new generation.
fn merge_rows(c: &CommitInput) -> Result<TableMerge, IngestError> {
    let CommitInput {
        wh,
        guard,
        base,
        table,
        spilled,
        run_id,
        ..
    } = *c;
    let key = DirKey::Table(table.name.clone()).key();
    let schema = table.arrow_schema();
    let state = base.dirs.get(&key).cloned().unwrap_or_default();
    let new_by_part: BTreeMap<String, &Vec<std::path::PathBuf>> = spilled
        .rows
        .iter()
        .map(|(q, paths)| (q.to_string(), paths))
        .collect();
    let removals = moved_keys(wh, table, &state, &new_by_part)?;
    let affected: BTreeSet<String> = new_by_part.keys().chain(removals.keys()).cloned().collect();
    let mut out = TableMerge::default();
    if affected.is_empty() {
        return Ok(out);
    }
    if c.append
        && removals.is_empty()
        && let Some(m) = append_in_place(c, &state, &new_by_part)?
    {
        return Ok(m);
    }
    let mut g = wh.begin_generation(guard, base, &key, run_id)?;
    let empty = HashSet::new();
    let delivery_of = |part: &str| {
        let q: Quarter = part.parse().ok()?;
        spilled.deliveries.get(&q).cloned().flatten()
    };
    // Partitions to merge with their committed files, after any appends.
    let mut jobs: Vec<MergeJob> = Vec::new();
    for part in &affected {
        let remove = removals.get(part).unwrap_or(&empty);
        let paths = new_by_part.get(part).copied();
        if !c.append {
            jobs.push(MergeJob {
                part,
                new: None,
                paths,
                delivery: delivery_of(part),
                remove,
            });
            continue;
        }
        let new = match paths {
            Some(paths) => partition::read_spills(paths)?,
            None => Vec::new(),
        };
        if remove.is_empty()
            && let Some((added, written)) = append_partition(c, &state, &mut g, part, &new)?
        {
            out.rows_changed += added;
            out.rows_written += written;
            out.touched.push(part.clone());
            continue;
        }
        jobs.push(MergeJob {
            part,
            new: Some(new),
            paths,
            delivery: delivery_of(part),
            remove,
        });
    }
    // Partitions merge side by side (a partition with committed rows a
    // column at a time; a new one streams from its spills).
    let merged = parallel_map(jobs, check_threads().min(MERGE_THREADS), |job| {
        merge_partition(c, &state, &g, &schema, job)
    })?;
    for (part, m) in merged.into_iter().flatten() {
        out.rows_changed += m.changed;
        out.touched.push(part.to_string());
        out.rows_written += m.file.as_ref().map_or(0, |f| f.rows);
        g.set_partition(part, m.file.into_iter().collect());
        if let Some(d) = m.delivery {
            g.set_delivery(part, d);
        }
    }
    if out.touched.is_empty() {
        wh.abandon_generation(g)?;
    } else {
        out.change = Some(wh.finish_generation(g)?);
    }
    Ok(out)
}

/// Puts a partition's new rows beside its files when they replace nothing
/// (pushes), compacting a crowded partition around its largest file;
/// returns the rows added and written, or `None` to merge instead.
fn append_partition(
    c: &CommitInput,
    state: &warehouse::DirState,
    g: &mut warehouse::GenBuilder,
    part: &str,
    new: &[arrow::array::RecordBatch],
) -> Result<Option<(u64, u64)>, IngestError> {
    let Some(a) = appendable(c, state, part, new)? else {
        return Ok(None);
    };
    let added = a.rows.num_rows() as u64;
    if a.crowded {
        let entry = compact_around_largest(c, state, g, part, a)?;
        return Ok(Some((added, entry.rows)));
    }
    let n = state.partitions.get(part).map_or(0, |p| p.files.len());
    let entry = write_appended(&g.partition_dir(part)?.join(g.file_name(n)), a)?;
    let written = entry.rows;
    g.add_files(part, vec![entry]);
    Ok(Some((added, written)))
}

/// Partitions merged at once (each holds its keys and one column of its rows).
const MERGE_THREADS: usize = 2;

/// One partition to merge with its committed files.
struct MergeJob<'a> {
    part: &'a str,
    /// The new rows when already read, else read from `paths`.
    new: Option<Vec<arrow::array::RecordBatch>>,
    paths: Option<&'a Vec<std::path::PathBuf>>,
    /// The fingerprint of the delivered rows, taken while partitioning.
    delivery: Option<String>,
    /// Keys that moved to another partition.
    remove: &'a HashSet<Vec<u8>>,
}

/// A merged partition: rows changed and its one file (none when it is now empty).
struct PartitionMerge {
    changed: u64,
    file: Option<warehouse::FileEntry>,
    /// Fingerprint of the delivery merged in.
    delivery: Option<String>,
}

/// Merges one partition's new rows with its committed files and writes the
/// result into the generation, a column at a time (see [`merge::merge`]);
/// `None` when nothing changed.
fn merge_partition<'a>(
    c: &CommitInput,
    state: &warehouse::DirState,
    g: &warehouse::GenBuilder,
    schema: &arrow::datatypes::SchemaRef,
    job: MergeJob<'a>,
) -> Result<Option<(&'a str, PartitionMerge)>, IngestError> {
    let delivery = job.delivery.clone();
    let committed = state.partitions.get(job.part);
    if job.remove.is_empty()
        && delivery.is_some()
        && committed.and_then(|p| p.delivery.as_ref()) == delivery.as_ref()
    {
        return Ok(None); // the delivery that made the partition, again
    }
    let fresh = committed.is_none_or(|p| p.files.is_empty());
    if fresh
        && job.remove.is_empty()
        && job.new.is_none()
        && let Some(paths) = job.paths
        && let Some(m) = write_new_partition(
            g,
            schema,
            &c.table.primary_key,
            job.part,
            paths,
            delivery.clone(),
        )?
    {
        return Ok(Some((job.part, m)));
    }
    let new = match (job.new, job.paths) {
        (Some(new), _) => vec![merge::RowSource::Batches(new)],
        // Staged rows are Parquet files (see `partition::Spilled::rows`).
        (None, Some(paths)) => paths.iter().cloned().map(merge::RowSource::File).collect(),
        (None, None) => Vec::new(),
    };
    let existing = partition_files(c.wh, state, job.part)
        .map(merge::RowSource::File)
        .collect();
    let path = || Ok(g.partition_dir(job.part)?.join(g.file_name(0)));
    let key = &c.table.primary_key;
    let Some(m) = merge::merge(path, schema, existing, new, key, job.remove)? else {
        return Ok(None);
    };
    let file = m.file;
    let changed = m.changed_rows;
    let merged = PartitionMerge {
        changed,
        file,
        delivery,
    };
    Ok(Some((job.part, merged)))
}

/// A partition with no committed rows, from its staged files in delivery
/// order. One staged file (one window) whose keys are distinct is kept as
/// it is: it was written the way the warehouse writes its files. Several
/// are written again into one, a batch at a time: memory holds one batch,
/// a row group being encoded and a run of key hashes (full runs are sorted
/// and spilled beside the staged files), whatever the partition's size.
/// `None` when a key may repeat (or nothing was delivered): the full merge
/// then picks each key's last row.
fn write_new_partition(
    g: &warehouse::GenBuilder,
    schema: &arrow::datatypes::SchemaRef,
    key: &[usize],
    part: &str,
    paths: &[std::path::PathBuf],
    delivery: Option<String>,
) -> Result<Option<PartitionMerge>, IngestError> {
    let path = g.partition_dir(part)?.join(g.file_name(0));
    if let [staged] = paths {
        let (distinct, rows) = merge::staged_keys_distinct(staged, key)?;
        if !distinct || rows == 0 {
            return Ok(None);
        }
        let entry = merge::adopt_staged(staged, &path, rows)?;
        return Ok(Some(PartitionMerge {
            changed: entry.rows,
            file: Some(entry),
            delivery,
        }));
    }
    let mut file = merge::ParquetFile::create(&path, schema.clone())?;
    let mut keys = merge::DistinctKeys::new(paths.first().unwrap_or(&path));
    let distinct = partition::each_spilled_batch(paths, |batch| {
        if !keys.insert(&batch, key)? {
            return Ok::<_, IngestError>(false);
        }
        file.write(&batch)?;
        Ok(true)
    })? && keys.finish()?;
    if !distinct || file.rows() == 0 {
        drop(file);
        std::fs::remove_file(&path)
            .map_err(|e| IngestError::Internal(format!("removing {}: {e}", path.display())))?;
        return Ok(None);
    }
    let entry = file.finish()?;
    Ok(Some(PartitionMerge {
        changed: entry.rows,
        file: Some(entry),
        delivery,
    }))
}

/// `f` over `items` on up to `threads` threads; results in item order, or
/// the first error.
fn parallel_map<T: Send, R: Send, E: Send>(
    items: Vec<T>,
    threads: usize,
    f: impl Fn(T) -> Result<R, E> + Sync,
) -> Result<Vec<R>, E> {
    let n = items.len();
    let queue = std::sync::Mutex::new(items.into_iter().enumerate());
    let results: Vec<std::sync::Mutex<Option<Result<R, E>>>> =
        (0..n).map(|_| std::sync::Mutex::new(None)).collect();
    let failed = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 0..threads.clamp(1, n.max(1)) {
            s.spawn(|| {
                while !failed.load(std::sync::atomic::Ordering::Relaxed) {
                    let Some((i, item)) = queue.lock().expect("queue lock").next() else {
                        break;
                    };
                    let r = f(item);
                    if r.is_err() {
                        failed.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    *results[i].lock().expect("result lock") = Some(r);
                }
            });
        }
    });
    let mut out = Vec::with_capacity(n);
    for r in results
        .into_iter()
        .filter_map(|r| r.into_inner().expect("result lock"))
    {
        out.push(r?);
    }
    Ok(out)
}

/// The fingerprints of a quarantine partition's records: those of its
/// committed files (only that column is read, once per file) and those
/// added by the commit under way.
struct Fingerprints {
    held: Vec<Arc<HashSet<String>>>,
    new: HashSet<String>,
}

impl Fingerprints {
    /// Adds `fp`; false when the partition already holds it.
    fn insert(&mut self, fp: &str) -> bool {
        !self.held.iter().any(|h| h.contains(fp)) && self.new.insert(fp.to_string())
    }
}

fn quarantined_fingerprints(
    wh: &Warehouse,
    state: &warehouse::DirState,
    part: &str,
) -> Result<Fingerprints, IngestError> {
    let held = partition_files(wh, state, part)
        .map(|path| {
            FINGERPRINTS.get_or_read(&path, || {
                let mut set = HashSet::new();
                merge::read_strings(&path, 0, |v| {
                    set.insert(v.to_string());
                })?;
                Ok(set)
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Fingerprints {
        held,
        new: HashSet::new(),
    })
}

/// Appends the run's rejected records not quarantined before (same raw
/// text, field and reason) to a new generation of the table's quarantine,
/// a spill file at a time so memory stays bounded.
fn append_quarantine(c: &CommitInput) -> Result<Option<warehouse::DirChange>, IngestError> {
    let CommitInput {
        wh,
        guard,
        base,
        table,
        spilled,
        run_id,
        ..
    } = *c;
    if spilled.quarantine.is_empty() {
        return Ok(None);
    }
    let qkey = DirKey::Quarantine(table.name.clone()).key();
    let qschema = partition::quarantine_schema();
    let qstate = base.dirs.get(&qkey).cloned().unwrap_or_default();
    // Quarantine only grows: new files go into the live generation in place,
    // unless a partition has too many files: then, in a new generation, its
    // files and the new rows become one file.
    let crowded = |part: &String| {
        qstate
            .partitions
            .get(part)
            .is_some_and(|p| p.files.len() + 1 >= MAX_PARTITION_FILES)
    };
    let compact = spilled.quarantine.keys().any(crowded);
    let in_place = match compact {
        false => wh.begin_in_place(base, &qkey, run_id),
        true => None,
    };
    let mut target = match in_place {
        Some(p) => Target::InPlace(p),
        None => Target::Generation(wh.begin_generation(guard, base, &qkey, run_id)?),
    };
    let mut added = false;
    // File names carry the generation's (or the in-place commit's) id, so
    // the partition's index among the run's partitions makes them unique.
    for (n, (part, paths)) in spilled.quarantine.iter().enumerate() {
        let mut seen = quarantined_fingerprints(wh, &qstate, part)?;
        let path = target.path(part, n)?;
        let mut file = merge::ParquetFile::create(&path, qschema.clone())?;
        for spill in paths {
            for batch in partition::read_spills(std::slice::from_ref(spill))? {
                let fp = batch
                    .column(0)
                    .as_any()
                    .downcast_ref::<arrow::array::StringArray>()
                    .expect("fingerprint is Utf8");
                let keep: Vec<u32> = (0..batch.num_rows())
                    .filter(|&i| seen.insert(fp.value(i)))
                    .map(|i| i as u32)
                    .collect();
                if keep.is_empty() {
                    continue;
                }
                let batch = arrow::compute::take_record_batch(
                    &batch,
                    &arrow::array::UInt32Array::from(keep),
                )
                .map_err(|e| IngestError::Internal(e.to_string()))?;
                file.write(&batch)?;
            }
        }
        if file.rows() == 0 {
            drop(file);
            let _ = std::fs::remove_file(&path);
            continue;
        }
        added = true;
        if let Target::Generation(g) = &mut target
            && crowded(part)
        {
            for old in partition_files(wh, &qstate, part) {
                file.write(&merge::read_parquet(&old, &qschema)?)?;
            }
            g.set_partition(part, vec![file.finish()?]);
            continue;
        }
        target.add(part, n, file.finish()?, run_id);
    }
    match (added, target) {
        (true, Target::InPlace(p)) => Ok(Some(wh.finish_in_place(p)?)),
        (true, Target::Generation(g)) => Ok(Some(wh.finish_generation(g)?)),
        (false, Target::InPlace(_)) => Ok(None),
        (false, Target::Generation(g)) => {
            wh.abandon_generation(g)?;
            Ok(None)
        }
    }
}

/// Where an append-only directory's new files go: a new generation, or
/// the live one in place.
enum Target {
    Generation(warehouse::GenBuilder),
    InPlace(warehouse::InPlace),
}

impl Target {
    /// Where the `n`th new file of `part` is written.
    fn path(&self, part: &str, n: usize) -> Result<std::path::PathBuf, IngestError> {
        Ok(match self {
            Target::Generation(g) => g.partition_dir(part)?.join(g.file_name(n)),
            Target::InPlace(p) => p.staged_path(part, n)?,
        })
    }

    /// Records the file written at `path(part, n)`.
    fn add(&mut self, part: &str, n: usize, entry: warehouse::FileEntry, run_id: &str) {
        match self {
            Target::Generation(g) => g.add_files(part, vec![entry]),
            Target::InPlace(p) => p.add_file(part, n, entry, run_id),
        }
    }
}

/// What identifies a run's delivery, recorded with its commit as the
/// table's [`warehouse::Delivery`].
pub struct Delivered {
    /// See [`warehouse::Delivery::fingerprint`].
    pub fingerprint: String,
    /// Bytes of an imported file (0 for a feed).
    pub bytes: u64,
    /// A feed's pages, window by window.
    pub pages: Option<warehouse::DeliveredPages>,
}

/// How [`commit_rows`] commits a run's rows besides the rows themselves.
pub struct RowsCommit<'a> {
    /// The pipeline (`import-<table>` for imports).
    pub pipeline: &'a str,
    /// The pipeline's cursor after the run.
    pub cursor_after: Option<String>,
    /// Whether new keys may go into files of their own beside a partition's
    /// files (pushes: no rewrite of the partition per request).
    pub append: bool,
    /// The delivery, when it can be recognised again.
    pub delivered: Option<Delivered>,
}

/// Merges a run's spilled rows into the warehouse and commits (blocking;
/// takes the warehouse lock): the table's new generation, the quarantine's,
/// the cursor and the delivery, in one manifest version, as `commit` says.
pub fn commit_rows(
    wh: &Warehouse,
    table: &TableSchema,
    spilled: Spilled,
    mut record: RunRecord,
    commit: RowsCommit,
) -> Result<RunRecord, IngestError> {
    let RowsCommit {
        pipeline,
        cursor_after,
        append,
        delivered,
    } = commit;
    let guard = wh.lock()?;
    let base = wh.manifest()?;
    let input = CommitInput {
        wh,
        guard: &guard,
        base: &base,
        table,
        spilled: &spilled,
        run_id: &record.run_id,
        append,
    };
    let started = Instant::now();
    let merged = merge_rows(&input)?;
    let merge_time = started.elapsed();
    let quarantined = append_quarantine(&input)?;
    tracing::debug!(
        merge_ms = merge_time.as_millis() as u64,
        quarantine_ms = (started.elapsed() - merge_time).as_millis() as u64,
        "Commit timings."
    );
    record.rows_changed = merged.rows_changed;
    record.rows_written = merged.rows_written;
    record.partitions_touched = merged.touched;
    let changes: Vec<_> = merged.change.into_iter().chain(quarantined).collect();
    let mut cursors = BTreeMap::new();
    let old_cursor = base.cursors.get(pipeline).map(|c| &c.value);
    if let Some(c) = cursor_after
        && Some(&c) != old_cursor
    {
        let cursor = Cursor {
            value: c,
            run_id: record.run_id.clone(),
        };
        cursors.insert(pipeline.to_string(), cursor);
    }
    record.outcome = Outcome::Succeeded;
    if changes.is_empty() && cursors.is_empty() {
        // Nothing new: no commit, but the run is recorded.
        record.ended_at = Some(warehouse::now());
        record.manifest_version = Some(base.version);
        wh.write_run(&record)?;
        return Ok(record);
    }
    // The delivery is recorded with the commit (its pages in a file of their
    // own, written first); a commit without one forgets the table's last.
    // Page files no manifest names any more (replaced, or of a commit that
    // failed) go with the garbage collection that follows every commit.
    let pages = match delivered.as_ref().and_then(|d| d.pages.as_ref()) {
        Some(pages) => Some(wh.write_delivered_pages(&record.run_id, pages)?),
        None => None,
    };
    let delivery = |next: &mut warehouse::Manifest| match delivered {
        Some(d) => {
            let delivery = warehouse::Delivery {
                pipeline: pipeline.to_string(),
                run_id: record.run_id.clone(),
                fingerprint: d.fingerprint,
                state: next.table_state(&table.name),
                cursor: next.cursors.get(pipeline).map(|c| c.value.clone()),
                bytes: d.bytes,
                pages: pages.clone(),
            };
            next.deliveries.insert(table.name.clone(), delivery);
        }
        None => {
            next.deliveries.remove(&table.name);
        }
    };
    let committed = wh.commit_with(&guard, &base, changes, cursors, delivery, record.clone())?;
    record.manifest_version = Some(committed.version);
    record.ended_at = Some(warehouse::now());
    Ok(record)
}

/// Bytes of a local file that `import` reads and decodes at a time.
const IMPORT_CHUNK_BYTES: usize = 2 << 20;

/// The end of the last whole record in `buf`: just after its last newline
/// (for CSV, one outside quotes). `None` when `buf` holds no whole record.
/// Quotes are counted as the decoder reads them for well-formed CSV; a
/// stray quote inside an unquoted cell can move a boundary, which at worst
/// quarantines a row differently, never loses one.
fn record_boundary(buf: &[u8], csv: bool) -> Option<usize> {
    if !csv {
        return memchr::memrchr(b'\n', buf).map(|i| i + 1);
    }
    csv_record_ends(buf).last()
}

/// The ends of the CSV records in `buf`: just after each newline outside quotes.
fn csv_record_ends(buf: &[u8]) -> impl Iterator<Item = usize> + '_ {
    let mut in_quote = false;
    memchr::memchr2_iter(b'"', b'\n', buf).filter_map(move |i| {
        if buf[i] == b'"' {
            in_quote = !in_quote;
            None
        } else {
            (!in_quote).then_some(i + 1)
        }
    })
}

/// A chunk of a local file on its way to a checking thread.
struct Chunk {
    seq: u64,
    /// The file's CSV header row, for CSV chunks after the first (which
    /// starts with it).
    header: Option<bytes::Bytes>,
    /// Whole records.
    body: bytes::Bytes,
}

impl Chunk {
    /// Chunk `seq` of a file; the first CSV chunk's header row is kept in
    /// `header` and given to the chunks after it.
    fn cut(seq: u64, body: bytes::Bytes, header: &mut Option<bytes::Bytes>, csv: bool) -> Chunk {
        let chunk_header = header.clone();
        if csv && header.is_none() {
            let h_end = csv_record_ends(&body).next().unwrap_or(body.len());
            *header = Some(body.slice(..h_end));
        }
        Chunk {
            seq,
            header: chunk_header,
            body,
        }
    }
}

/// A local file to import: read through a reader, or mapped whole (see
/// [`crate::warehouse::fsutil::MappedFile`]), which spares copying it.
pub enum ImportSource<'a> {
    /// Read a chunk at a time.
    Reader(&'a mut (dyn std::io::Read + Send)),
    /// The whole file, mapped.
    Mapped(crate::warehouse::fsutil::MappedFile),
}

/// Reads a local file a chunk of whole records at a time and hands each
/// chunk to `send` (false: stop). A JSON array is read whole. Returns the
/// bytes read.
fn read_chunks(
    format: Format,
    source_name: &str,
    file: &mut dyn std::io::Read,
    chunk: usize,
    mut send: impl FnMut(Chunk) -> bool,
) -> Result<u64, IngestError> {
    let read_err = |e: std::io::Error| {
        IngestError::Partition(PartitionError {
            context: format!("reading {source_name}"),
            source: e.into(),
        })
    };
    let csv = format == Format::Csv;
    // Bytes read past the last whole record sent: the start of the next chunk.
    let mut carry: Vec<u8> = Vec::new();
    let (mut eof, mut total, mut seq) = (false, 0u64, 0u64);
    let mut header: Option<bytes::Bytes> = None;
    loop {
        // A chunk is read straight into its own body.
        let mut body = Vec::with_capacity(carry.len() + chunk + 64 * 1024);
        body.append(&mut carry);
        // Fill up to a chunk past what is buffered; a JSON array is read whole.
        let mut want = body.len() + chunk;
        let end = loop {
            while !eof && (format == Format::Json || body.len() < want) {
                let n = (&mut *file)
                    .take(chunk as u64)
                    .read_to_end(&mut body)
                    .map_err(read_err)?;
                eof = n == 0;
            }
            if eof || format == Format::Json {
                break body.len();
            }
            match record_boundary(&body, csv) {
                Some(e) => break e,
                None => want += chunk, // one record longer than a chunk: read on
            }
        };
        if end == 0 && seq > 0 {
            break;
        }
        total += end as u64;
        carry.extend_from_slice(&body[end..]);
        body.truncate(end);
        let body = bytes::Bytes::from(body);
        if !send(Chunk::cut(seq, body, &mut header, csv)) {
            break;
        }
        seq += 1;
        if eof && carry.is_empty() {
            break;
        }
    }
    Ok(total)
}

/// Cuts a mapped file into chunks of whole records, as [`read_chunks`]
/// reads them, without copying: each chunk is a slice of the mapping.
fn mapped_chunks(
    format: Format,
    data: &bytes::Bytes,
    chunk: usize,
    mut send: impl FnMut(Chunk) -> bool,
) -> u64 {
    let csv = format == Format::Csv;
    let n = data.len();
    let (mut pos, mut seq) = (0usize, 0u64);
    let mut header: Option<bytes::Bytes> = None;
    while pos < n {
        // A JSON array is one chunk; otherwise up to the last record end
        // within a chunk's length (further when one record is longer).
        let mut want = chunk;
        let end = loop {
            let stop = pos.saturating_add(want).min(n);
            if stop == n || format == Format::Json {
                break n;
            }
            match record_boundary(&data[pos..stop], csv) {
                Some(e) => break pos + e,
                None => want = want.saturating_add(chunk),
            }
        };
        let body = data.slice(pos..end);
        if !send(Chunk::cut(seq, body, &mut header, csv)) {
            break;
        }
        seq += 1;
        pos = end;
    }
    pos as u64
}

/// Reads a local file a chunk of whole records at a time, decodes and
/// validates the chunks on every core and takes them into `sink` in file
/// order (memory stays flat whatever the file's size: a few chunks are in
/// flight at a time); record numbers count from the start of the file.
/// Returns the bytes read and the file's [`ContentHash`] (which depends on
/// where chunks end: only that of a mapped file cut into
/// [`IMPORT_CHUNK_BYTES`] chunks is kept).
fn import_chunks(
    t: &TableSchema,
    format: Format,
    source_name: &str,
    source: ImportSource<'_>,
    chunk: usize,
    sink: &mut Absorber,
) -> Result<(u64, blake3::Hash), IngestError> {
    use std::sync::mpsc;
    let columns = Columns::new(t.columns.iter().map(|c| c.name.as_str()));
    let csv = format == Format::Csv;
    let threads = check_threads();
    // Chunks read but not yet taken: each holds a slot until it is taken.
    let (slot_tx, slot_rx) = mpsc::sync_channel::<()>(threads * PAGES_PER_THREAD);
    let (job_tx, job_rx) = mpsc::sync_channel::<Chunk>(1);
    let job_rx = Arc::new(std::sync::Mutex::new(job_rx));
    type Done = Result<(Checked, u64, blake3::Hash), IngestError>;
    let (done_tx, done_rx) = mpsc::channel::<(u64, Done)>();
    // The checkers release a mapped file's pages as they finish with them.
    let mapped = match &source {
        ImportSource::Mapped(m) => Some(m.clone()),
        ImportSource::Reader(_) => None,
    };
    let mapped = mapped.as_ref();
    std::thread::scope(|s| {
        let reader = s.spawn(move || {
            let send = |c| slot_tx.send(()).is_ok() && job_tx.send(c).is_ok();
            match source {
                ImportSource::Reader(file) => read_chunks(format, source_name, file, chunk, send),
                ImportSource::Mapped(m) => Ok(mapped_chunks(format, m.bytes(), chunk, send)),
            }
        });
        for _ in 0..threads {
            let (job_rx, done_tx) = (job_rx.clone(), done_tx.clone());
            let (checker, columns) = (sink.checker.clone(), &columns);
            s.spawn(move || {
                loop {
                    let job = job_rx.lock().map(|rx| rx.recv());
                    let Ok(Ok(Chunk { seq, header, body })) = job else {
                        break;
                    };
                    let decoded = match &header {
                        Some(h) => decode::decode_csv_after(columns, h, &body),
                        None => decode::decode(format, None, None, columns, &body),
                    };
                    let done = decoded
                        .map_err(|e| IngestError::Decode {
                            url: source_name.to_string(),
                            source: e,
                        })
                        .map(|page| {
                            // NDJSON counts lines (blank ones too); CSV counts rows.
                            let advance = if csv {
                                page.items
                            } else {
                                memchr::memchr_iter(b'\n', &body).count() as u64
                            };
                            let hash = blake3::hash(&body);
                            (checker.check(&page, source_name), advance, hash)
                        });
                    // Checked: a mapped chunk's pages leave memory.
                    if let Some(m) = mapped {
                        m.release(&body);
                    }
                    if done_tx.send((seq, done)).is_err() {
                        break;
                    }
                }
            });
        }
        drop((job_rx, done_tx));
        // Take the chunks in file order.
        let mut content = ContentHash::default();
        let taken = (|| {
            let (mut next, mut offset) = (0u64, 0u64);
            let mut waiting: BTreeMap<u64, Done> = BTreeMap::new();
            for (seq, done) in &done_rx {
                waiting.insert(seq, done);
                while let Some(done) = waiting.remove(&next) {
                    let (mut checked, advance, hash) = done?;
                    content.add(&hash);
                    checked.renumber(offset);
                    offset += advance;
                    sink.take(checked, 0)?;
                    next += 1;
                    let _ = slot_rx.recv();
                }
            }
            if !waiting.is_empty() {
                return Err(IngestError::Internal(format!(
                    "chunk {next} of {source_name} was never checked"
                )));
            }
            Ok::<(), IngestError>(())
        })();
        // On an error, stop the reader (its slots and jobs fail) and the checkers.
        drop(slot_rx);
        drop(done_rx);
        let read = reader
            .join()
            .map_err(|p| IngestError::Panicked(panic_message(p.as_ref())))?;
        taken?;
        Ok((read?, content.finish()))
    })
}

/// The content hash of a file cut into chunks: BLAKE3 over each chunk's
/// BLAKE3, in file order (chunks are hashed on the threads that check them).
#[derive(Default)]
struct ContentHash(blake3::Hasher);

impl ContentHash {
    fn add(&mut self, chunk: &blake3::Hash) {
        self.0.update(chunk.as_bytes());
    }

    fn finish(&self) -> blake3::Hash {
        self.0.finalize()
    }
}

/// The content hash of a mapped file (as [`import_chunks`] computes it),
/// releasing its pages as it goes.
fn mapped_content_hash(format: Format, m: &crate::warehouse::fsutil::MappedFile) -> blake3::Hash {
    let mut content = ContentHash::default();
    mapped_chunks(format, m.bytes(), IMPORT_CHUNK_BYTES, |c| {
        content.add(&blake3::hash(&c.body));
        m.release(&c.body);
        true
    });
    content.finish()
}

/// What decides a delivery's outcome besides its content: ironlake's
/// version and the table's columns, checks and keys.
fn delivery_context(table: &TableSchema) -> String {
    format!(
        "ironlake {}\n{:?}\n{:?}\n{}",
        env!("CARGO_PKG_VERSION"),
        table.columns,
        table.primary_key,
        table.period_column
    )
}

/// The fingerprint of an import: its context, format and content hash.
fn import_fingerprint(table: &TableSchema, format: Format, content: &blake3::Hash) -> String {
    let mut h = blake3::Hasher::new();
    h.update(delivery_context(table).as_bytes());
    h.update(format!("\nimport {format:?}\n").as_bytes());
    h.update(content.as_bytes());
    h.finalize().to_hex().to_string()
}

/// The fingerprint of a feed delivery: its context, how its pages are read,
/// and every page's URL and `ETag`, window by window.
fn feed_fingerprint(
    p: &Pipeline,
    table: &TableSchema,
    pages: &warehouse::DeliveredPages,
) -> String {
    let mut h = blake3::Hasher::new();
    h.update(delivery_context(table).as_bytes());
    let s = &p.source;
    h.update(
        format!(
            "\nfeed {} {:?} {:?} {:?}\n",
            p.name, s.format, s.records_field, s.pagination
        )
        .as_bytes(),
    );
    for (w, window) in pages.iter().enumerate() {
        h.update(&(w as u64).to_le_bytes());
        h.update(&(window.len() as u64).to_le_bytes());
        for (url, etag) in window {
            for part in [url, etag] {
                h.update(&(part.len() as u64).to_le_bytes());
                h.update(part.as_bytes());
            }
        }
    }
    h.finalize().to_hex().to_string()
}

/// When the table's last delivery was this very file (same size, same
/// content hash, same schema) and the table is still as it left it: the run
/// that committed it. Hashing costs a read of the file, done only when the
/// sizes match.
fn same_file_again(
    manifest: &warehouse::Manifest,
    t: &TableSchema,
    format: Format,
    m: &crate::warehouse::fsutil::MappedFile,
) -> Option<String> {
    let d = manifest.standing_delivery(&t.name, None)?;
    if d.pipeline != format!("import-{}", t.name) || d.bytes != m.bytes().len() as u64 {
        return None;
    }
    let fingerprint = import_fingerprint(t, format, &mapped_content_hash(format, m));
    (fingerprint == d.fingerprint).then(|| d.run_id.clone())
}

/// Records a run that recognised the table's last delivery (committed by
/// run `since`) in `manifest`: succeeded, nothing decoded, nothing committed.
fn record_unchanged(
    wh: &Warehouse,
    manifest: &warehouse::Manifest,
    mut record: RunRecord,
    since: String,
) -> Result<RunRecord, IngestError> {
    tracing::info!(since = %since, "The delivery is the one run {since} committed, and the table is as it left it: nothing to do.");
    record.outcome = Outcome::Succeeded;
    record.unchanged_since = Some(since);
    record.cursor_after = record.cursor_before.clone();
    record.manifest_version = Some(manifest.version);
    record.ended_at = Some(warehouse::now());
    wh.write_run(&record)?;
    Ok(record)
}

/// Loads a local file into `table` through the same decode, validation,
/// quarantine and commit as a feed (`ironlake import`).
pub fn import(
    project: &Project,
    wh: &Warehouse,
    table: &str,
    format: Format,
    source_name: &str,
    source: ImportSource<'_>,
) -> Result<RunRecord, IngestError> {
    let t = project.table(table).ok_or_else(|| {
        IngestError::UnknownTable(
            table.to_string(),
            project
                .tables
                .iter()
                .map(|t| t.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        )
    })?;
    let name = format!("import-{table}");
    let run_id = warehouse::new_run_id(&name);
    let mut record = RunRecord::start(&run_id, &name, warehouse::RunType::Import, table);
    wh.write_run(&record)?;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(
        || -> Result<RunRecord, IngestError> {
            if let ImportSource::Mapped(m) = &source {
                let manifest = wh.manifest_shared()?;
                if let Some(since) = same_file_again(&manifest, t, format, m) {
                    record.bytes = m.bytes().len() as u64;
                    return record_unchanged(wh, &manifest, record.clone(), since);
                }
            }
            // Only a mapped file is hashed as the check above hashes it.
            let mapped = matches!(source, ImportSource::Mapped(_));
            let staging = Staging::new(wh, &run_id)?;
            let mut sink = Absorber::new(t, &staging, &run_id, &name);
            let started = Instant::now();
            let (bytes, content) = import_chunks(
                t,
                format,
                source_name,
                source,
                IMPORT_CHUNK_BYTES,
                &mut sink,
            )?;
            sink.counters.record_into(&mut record);
            record.bytes = bytes;
            let spilled = sink.part.finish()?;
            crate::primitives::release_freed_memory();
            let read = started.elapsed();
            let delivered = mapped.then(|| Delivered {
                fingerprint: import_fingerprint(t, format, &content),
                bytes,
                pages: None,
            });
            let commit = RowsCommit {
                pipeline: &name,
                cursor_after: None,
                append: false,
                delivered,
            };
            let done = commit_rows(wh, t, spilled, record.clone(), commit)?;
            tracing::debug!(
                read_ms = read.as_millis() as u64,
                commit_ms = (started.elapsed() - read).as_millis() as u64,
                "Import timings."
            );
            drop(staging);
            Ok(done)
        },
    ))
    .unwrap_or_else(|payload| Err(IngestError::Panicked(panic_message(payload.as_ref()))));
    if let Err(e) = &result {
        record.outcome = Outcome::Failed;
        record.error = Some(e.to_string());
        record.ended_at = Some(warehouse::now());
        let _ = wh.write_run(&record);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project() -> Project {
        crate::config::bundled_for_tests()
    }

    fn day(s: &str) -> chrono::NaiveDate {
        chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    #[test]
    fn a_future_dated_cursor_is_clamped_to_today_and_healed_when_planning() {
        let today = day("2026-11-29");
        assert_eq!(clamp_cursor("9999-12-31".into(), today), "2026-11-29");
        assert_eq!(clamp_cursor("2026-11-01".into(), today), "2026-11-01");
        assert_eq!(clamp_cursor("000000000042".into(), today), "000000000042");
        let project = project();
        let p = project.pipeline("financing_demands").unwrap();
        // A cursor poisoned by an older release asks from today − lookback, not from year 9999.
        let planned = plan(p, RunKind::Ingest, Some("9999-12-31"), today);
        assert_eq!(planned.since.as_deref(), Some("2026-11-22"));
        let planned = plan_for(p, Some("2019-03-10"), today);
        assert_eq!(planned.since.as_deref(), Some("2019-03-03"));
    }

    fn plan_for(p: &Pipeline, cursor: Option<&str>, today: chrono::NaiveDate) -> Plan {
        plan(p, RunKind::Ingest, cursor, today)
    }

    #[test]
    fn quarter_windows_run_from_the_cursor_quarter_before_to_today() {
        let project = project();
        let p = project.pipeline("bank_loans").unwrap();
        let planned = plan_for(p, Some("2019Q3"), day("2019-12-01"));
        let qs: Vec<String> = planned
            .quarters
            .iter()
            .map(|q| q.unwrap().to_string())
            .collect();
        assert_eq!(qs, ["2019Q2", "2019Q3", "2019Q4"]);
        let backfill = plan(
            p,
            RunKind::Backfill {
                from: "2018Q1".parse().unwrap(),
                to: "2018Q2".parse().unwrap(),
            },
            None,
            day("2019-12-01"),
        );
        assert_eq!(backfill.quarters.len(), 2);
    }

    /// A `bank_loans` CSV of (loan id, period end, balance) rows of one bank and borrower.
    fn loans_csv(rows: &[(&str, &str, &str)]) -> String {
        let mut csv = String::from(
            "bank_code,loan_id,period_end,uscc,balance,disbursed,rate_pct,term,guarantee,product,guarantee_fee_pct\n",
        );
        for (loan, period, balance) in rows {
            csv.push_str(&format!("102653000013,{loan},{period},915002292000000007,{balance},0.00,5.3900,medium_long,credit,trade_finance,\n"));
        }
        csv
    }

    fn import_csv(
        project: &Project,
        wh: &Warehouse,
        text: String,
    ) -> Result<RunRecord, IngestError> {
        let mut reader = std::io::Cursor::new(text.into_bytes());
        import(
            project,
            wh,
            "bank_loans",
            Format::Csv,
            "f.csv",
            ImportSource::Reader(&mut reader),
        )
    }

    #[test]
    fn the_same_delivery_again_is_skipped_unread_but_not_after_another_one() {
        let project = project();
        let dir = tempfile::tempdir().unwrap();
        let wh = Warehouse::open(dir.path()).unwrap();
        let file = |first_balance: &str| {
            loans_csv(&[
                ("L0", "2019-09-30", first_balance),
                ("L1", "2019-09-30", "20.00"),
                ("L2", "2019-12-31", "30.00"),
            ])
        };
        let load = |text: String| import_csv(&project, &wh, text).unwrap();
        let (a, b) = (file("10.00"), file("11.00"));
        assert_eq!(load(a.clone()).rows_changed, 3);
        let deliveries = || {
            let m = wh.manifest().unwrap();
            let parts = m.dirs["tables/bank_loans"].partitions.clone();
            parts.into_values().map(|p| p.delivery).collect::<Vec<_>>()
        };
        assert!(
            deliveries().iter().all(Option::is_some),
            "{:?}",
            deliveries()
        );
        let again = load(a.clone());
        assert_eq!((again.rows_changed, again.partitions_touched.len()), (0, 0));
        // Another delivery changes a row; the first one again changes it back.
        assert_eq!(load(b).rows_changed, 1);
        assert_eq!(load(a.clone()).rows_changed, 1);
        // Skipped unread: the committed files are not even opened.
        let m = wh.manifest().unwrap();
        let state = &m.dirs["tables/bank_loans"];
        for part in state.partitions.keys() {
            for f in partition_files(&wh, state, part) {
                std::fs::write(&f, b"not parquet").unwrap();
            }
        }
        assert_eq!(load(a).rows_changed, 0);
    }

    #[test]
    fn a_new_partition_is_written_in_delivery_order_unless_a_key_repeats() {
        let project = project();
        let load = |rows: &[(&str, &str)]| {
            let dir = tempfile::tempdir().unwrap();
            let wh = Warehouse::open(dir.path()).unwrap();
            let rows: Vec<_> = rows.iter().map(|&(l, b)| (l, "2019-09-30", b)).collect();
            let t = import_csv(&project, &wh, loans_csv(&rows));
            let changed = t.unwrap().rows_changed;
            let m = wh.manifest().unwrap();
            let state = &m.dirs["tables/bank_loans"];
            let files: Vec<_> = partition_files(&wh, state, "2019Q3").collect();
            assert_eq!(files.len(), 1);
            // Nothing but the manifest's file is left in the partition.
            let on_disk = std::fs::read_dir(files[0].parent().unwrap())
                .unwrap()
                .count();
            assert_eq!(on_disk, 1);
            let schema = project.table("bank_loans").unwrap().arrow_schema();
            let batch = merge::read_parquet(&files[0], &schema).unwrap();
            let text = |c: usize| {
                let col = arrow::compute::cast(batch.column(c), &arrow::datatypes::DataType::Utf8);
                let col = col.unwrap();
                let col = col
                    .as_any()
                    .downcast_ref::<arrow::array::StringArray>()
                    .unwrap();
                col.iter()
                    .map(|v| v.unwrap().to_string())
                    .collect::<Vec<_>>()
            };
            (changed, text(1), text(4))
        };
        // Distinct keys go straight to the file, as delivered (not sorted).
        let (changed, loans, _) = load(&[("L2", "1.00"), ("L0", "2.00"), ("L1", "3.00")]);
        assert_eq!(
            (changed, loans),
            (3, vec!["L2".into(), "L0".into(), "L1".into()])
        );
        // A repeated key: the full merge keeps its last row, sorted by key.
        let (changed, loans, balances) = load(&[("L1", "1.00"), ("L0", "2.00"), ("L1", "9.00")]);
        assert_eq!((changed, loans), (2, vec!["L0".into(), "L1".into()]));
        assert_eq!(balances, ["2.00", "9.00"]);
    }

    /// `text` written to a file in `dir` and mapped.
    fn map_text(dir: &tempfile::TempDir, text: &str) -> crate::warehouse::fsutil::MappedFile {
        let path = dir.path().join("input");
        std::fs::write(&path, text).unwrap();
        let f = std::fs::File::open(&path).unwrap();
        crate::warehouse::fsutil::MappedFile::open(&f)
            .unwrap()
            .unwrap()
    }

    #[test]
    fn a_file_imported_in_small_chunks_reads_like_one_page() {
        let project = project();
        let t = project.table("bank_loans").unwrap();
        // Quoted newlines and a quarantined row straddle chunk boundaries.
        let mut csv = String::from("bank_code,loan_id,period_end\n");
        for i in 0..50 {
            csv.push_str(&format!("\"B\n{i}\",L{i},2019-09-30\n"));
        }
        csv.push_str("\"open");
        // Read, or cut from the file's bytes as a mapped file is.
        let run = |chunk: usize, mapped: bool| {
            let dir = tempfile::tempdir().unwrap();
            let mut sink = Absorber::new(t, dir.path(), "r", "import-bank_loans");
            let mut reader = std::io::Cursor::new(csv.as_bytes().to_vec());
            let source = match mapped {
                true => ImportSource::Mapped(map_text(&dir, &csv)),
                false => ImportSource::Reader(&mut reader),
            };
            let (n, hash) =
                import_chunks(t, Format::Csv, "f.csv", source, chunk, &mut sink).unwrap();
            assert_eq!(n, csv.len() as u64);
            if mapped && chunk == IMPORT_CHUNK_BYTES {
                // The pre-check hashes a file as the import does.
                let m = map_text(&dir, &csv);
                assert_eq!(mapped_content_hash(Format::Csv, &m), hash);
            }
            let spilled = sink.part.finish().unwrap();
            let q = crate::partition::read_spills(&spilled.quarantine["unknown"]).unwrap();
            let nos: Vec<i64> = q
                .iter()
                .flat_map(|b| {
                    let c = b
                        .column(5)
                        .as_any()
                        .downcast_ref::<arrow::array::Int64Array>()
                        .unwrap();
                    c.values().to_vec()
                })
                .collect();
            (sink.counters.rows_in, sink.counters.rejected, nos, hash)
        };
        let whole = run(IMPORT_CHUNK_BYTES, false);
        assert_eq!(whole.0, 51);
        let same = |a: &(u64, u64, Vec<i64>, blake3::Hash)| (a.0, a.1, a.2.clone());
        let chunked = run(37, false);
        assert_eq!(
            same(&chunked),
            same(&whole),
            "chunked import differs from a whole read"
        );
        assert_eq!(
            run(IMPORT_CHUNK_BYTES, true),
            whole,
            "a mapped file differs from a read one (the content hash too)"
        );
        assert_eq!(
            same(&run(37, true)),
            same(&chunked),
            "chunks of a mapped file differ"
        );
        assert_ne!(chunked.3, whole.3, "the content hash is over the chunks");
        let mut ndjson = String::new();
        for i in 0..20 {
            ndjson.push_str(&format!("{{\"bank_code\":\"B{i}\"}}\n\n"));
        }
        for mapped in [false, true] {
            let mut sink = Absorber::new(t, std::path::Path::new("/nonexistent"), "r", "x");
            let mut reader = std::io::Cursor::new(ndjson.clone().into_bytes());
            let dir = tempfile::tempdir().unwrap();
            let source = match mapped {
                true => ImportSource::Mapped(map_text(&dir, &ndjson)),
                false => ImportSource::Reader(&mut reader),
            };
            let _ = import_chunks(t, Format::Ndjson, "f", source, 16, &mut sink);
            assert_eq!(sink.counters.rows_in, 20, "mapped: {mapped}");
        }
    }

    #[test]
    fn a_short_page_ends_a_window_only_after_a_longer_one() {
        let pn = Pagination::PageNumber {
            page_param: "page".into(),
            size_param: "size".into(),
            page_size: 100,
            first_page: 1,
        };
        let mut pager = Pager::start(&pn, "http://h/x".into());
        assert_eq!(pager.url(&pn), "http://h/x?page=1&size=100");
        // A short first page (the partner may cap pages at 40) is not the end…
        assert!(pager.advance(&pn, 40, None, None, "http://h/x?page=1&size=100"));
        assert_eq!(pager.url(&pn), "http://h/x?page=2&size=100");
        assert!(pager.last_was_short(&pn));
        assert!(pager.advance(&pn, 40, None, None, ""));
        // …but a page shorter than the ones before it is, and so is an empty one.
        assert!(!pager.advance(&pn, 7, None, None, ""));
        let mut pager = Pager::start(&pn, "http://h/x".into());
        assert!(pager.advance(&pn, 100, None, None, ""));
        assert!(!pager.advance(&pn, 0, None, None, ""));
        let off = Pagination::OffsetLimit {
            offset_param: "offset".into(),
            size_param: "limit".into(),
            page_size: 50,
        };
        let mut pager = Pager::start(&off, "http://h/x?a=1".into());
        assert!(pager.advance(&off, 50, None, None, ""));
        assert_eq!(pager.url(&off), "http://h/x?a=1&offset=50&limit=50");
        assert!(
            !pager.advance(&off, 20, None, None, ""),
            "a short page after a full one ends"
        );
    }

    #[test]
    fn link_pages_resolve_relative_targets_and_foreign_origins_are_refused() {
        let lh = Pagination::LinkHeader {
            size_param: None,
            page_size: None,
        };
        let mut pager = Pager::start(&lh, "http://127.0.0.1:9/v1/x".into());
        assert!(pager.advance(
            &lh,
            1,
            None,
            Some("/v1/x?after=5".into()),
            "http://127.0.0.1:9/v1/x"
        ));
        assert_eq!(pager.url(&lh), "http://127.0.0.1:9/v1/x?after=5");
        let project = project();
        let mut p = project.pipeline("bank_loans").unwrap().clone();
        p.source.url.raw = "http://127.0.0.1:9/v1/x".into();
        p.source.url.env.clear();
        p.source.auth = crate::config::pipeline::Auth::None;
        let source = Source::new(&p).unwrap();
        let base = source.base_url("bank_loans", None).unwrap();
        let mut visited = PackedSet::default();
        next_request(&source, &mut visited, None, &base, 10).unwrap();
        next_request(
            &source,
            &mut visited,
            Some(&base),
            "http://127.0.0.1:9/v1/x?after=5",
            10,
        )
        .unwrap();
        let err = next_request(
            &source,
            &mut visited,
            Some(&base),
            "http://evil.example/steal",
            10,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("http://evil.example") && err.contains("http://127.0.0.1:9"),
            "{err}"
        );
        assert!(err.contains("allowed_origins"), "{err}");
        // The same URL twice is a loop; past max_pages the run stops.
        let err = next_request(&source, &mut visited, Some(&base), &base, 10).unwrap_err();
        assert!(matches!(err, IngestError::PaginationLoop { .. }), "{err}");
        let err = next_request(
            &source,
            &mut visited,
            Some(&base),
            "http://127.0.0.1:9/v1/x?after=6",
            2,
        )
        .unwrap_err();
        assert!(
            matches!(err, IngestError::TooManyPages { limit: 2, .. }),
            "{err}"
        );
    }
}
