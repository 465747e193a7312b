//! The warehouse on disk, and the commit protocol that makes every run
//! all-or-nothing and crash-safe.
//!
//! ```text
//! warehouse/
//!   tables/<table>            -> symlink to _ironlake/gen/tables.<table>/<generation>
//!   quarantine/<table>        -> symlink to _ironlake/gen/quarantine.<table>/<generation>
//!   published/<aggregate>     -> symlink (published aggregates)
//!   _ironlake/
//!     gen/<dir>/<generation>/quarter=2019Q3/part-….parquet   immutable generations
//!     manifests/m-<version>.json   the commit log; the highest version is current
//!     journal/<run>.json           commit intent: written before any link moves
//!     runs/<run>.json              run history (system.runs)
//!     deliveries/<run>.json        the pages (URLs, ETags) of a table's last feed delivery
//!     staging/<run>/               a run's spill files until it commits
//!     lock                         held while committing, recovering or collecting garbage
//! ```
//!
//! A generation is a complete, immutable copy of one directory (a table's
//! partitions, its quarantine, a published aggregate): files of untouched
//! partitions are hard links to the previous generation's, changed ones are
//! new files. A commit (1) writes and fsyncs the new generations, (2) writes
//! the journal holding the new manifest — from here the commit rolls
//! forward — (3) swings each symlink atomically to its new generation, (4)
//! writes the new manifest with a no-replace rename (the commit point for
//! ironlake's own catalog; on an object store, a conditional put), (5)
//! removes the journal. Startup recovery rolls any journal forward and
//! removes files no retained manifest references. Directory readers
//! (DuckDB, pyarrow) always see one whole generation of a directory;
//! ironlake's catalog reads the manifest, so it sees every table at one
//! version.

pub mod fsutil;
pub mod merge;

use fsutil::FileLock;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};

/// Manifests always kept on disk, the current one included.
pub const RETAINED_MANIFESTS: usize = 3;
/// How long a superseded generation stays readable by default, so queries
/// and external scans that started on it finish.
pub const DEFAULT_SUPERSEDED_RETENTION: std::time::Duration = std::time::Duration::from_secs(3600);
/// Run records kept per pipeline; older ones are removed by garbage collection.
pub const RUNS_KEPT_PER_PIPELINE: usize = 1000;

/// Errors of the warehouse layer.
#[derive(Debug, thiserror::Error)]
pub enum WarehouseError {
    /// A filesystem operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A manifest, journal or run record could not be parsed: the warehouse is damaged.
    #[error("damaged warehouse file {}: {message}", path.display())]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Another process committed the same manifest version first.
    #[error(
        "concurrent commit: manifest version {0} already exists (another ironlake process committed first)"
    )]
    Conflict(u64),
    /// Reading or writing Parquet or Arrow failed.
    #[error("{context}: {source}")]
    Data {
        /// What was being read or written.
        context: String,
        /// The underlying error, kept whole.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Result of warehouse operations.
pub type Result<T> = std::result::Result<T, WarehouseError>;

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> WarehouseError + 'a {
    move |source| WarehouseError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// A directory of the warehouse, as the manifest and the links name it
/// (`tables/bank_loans`, `quarantine/bank_loans`, `published/loan_growth`).
/// The one place these names are built and parsed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DirKey {
    /// A table's partitions.
    Table(String),
    /// A table's quarantine.
    Quarantine(String),
    /// A published aggregate.
    Published(String),
}

impl DirKey {
    /// The table's or aggregate's name.
    pub fn name(&self) -> &str {
        match self {
            DirKey::Table(n) | DirKey::Quarantine(n) | DirKey::Published(n) => n,
        }
    }

    /// The key in the manifest and the link's path under the root: `tables/x`.
    pub fn key(&self) -> String {
        self.to_string()
    }

    /// Parses a manifest key.
    pub fn parse(key: &str) -> Option<DirKey> {
        let (kind, name) = key.split_once('/')?;
        let name = name.to_string();
        match kind {
            "tables" => Some(DirKey::Table(name)),
            "quarantine" => Some(DirKey::Quarantine(name)),
            "published" => Some(DirKey::Published(name)),
            _ => None,
        }
    }

    /// The name SQL uses for it: `x`, `quarantine.x`, `published.x`.
    pub fn sql_name(&self) -> String {
        match self {
            DirKey::Table(n) => n.clone(),
            DirKey::Quarantine(n) => format!("quarantine.{n}"),
            DirKey::Published(n) => format!("published.{n}"),
        }
    }
}

impl std::fmt::Display for DirKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DirKey::Table(n) => write!(f, "tables/{n}"),
            DirKey::Quarantine(n) => write!(f, "quarantine/{n}"),
            DirKey::Published(n) => write!(f, "published/{n}"),
        }
    }
}

/// A partition's directory name, Hive style: `quarter=2019Q3`.
pub fn partition_path(value: &str) -> String {
    format!("{}={value}", crate::config::schema::PARTITION_COLUMN)
}

/// One data file of a partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// File name inside the partition directory.
    pub name: String,
    /// Rows in the file.
    pub rows: u64,
    /// Size in bytes.
    pub bytes: u64,
}

/// One partition (`quarter=2019Q3`) of a directory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionState {
    /// Its files.
    pub files: Vec<FileEntry>,
    /// Total rows.
    pub rows: u64,
    /// Run that last wrote it.
    pub written_by: String,
    /// Fingerprint of the delivery whose merge produced these files
    /// ([`merge::DeliveryHash`]); any other change clears it. The same
    /// delivery again cannot change the partition (a merge applied twice
    /// changes nothing the second time), so it is skipped unread.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<String>,
}

/// The committed state of one directory (`tables/bank_loans`, `quarantine/bank_loans`, …).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirState {
    /// Generation directory, relative to the warehouse root.
    pub generation: String,
    /// Partitions by value (`2019Q3`).
    pub partitions: BTreeMap<String, PartitionState>,
}

impl DirState {
    /// Total rows in all partitions.
    pub fn rows(&self) -> u64 {
        self.partitions.values().map(|p| p.rows).sum()
    }
}

/// What the warehouse holds of one table, and when a run last loaded it.
#[derive(Debug, Clone)]
pub struct TableStatus {
    /// Rows committed.
    pub rows: u64,
    /// Quarters (partitions) committed.
    pub quarters: usize,
    /// The latest of them.
    pub latest_quarter: Option<String>,
    /// Rows in the table's quarantine.
    pub quarantined_rows: u64,
    /// When the last successful run into it ended.
    pub last_success: Option<Timestamp>,
}

impl TableStatus {
    /// The status of `table` in `manifest`, with `runs` (newest first).
    pub fn of(table: &str, manifest: &Manifest, runs: &[RunRecord]) -> TableStatus {
        let state = manifest.dirs.get(&DirKey::Table(table.to_string()).key());
        let quarantine = manifest
            .dirs
            .get(&DirKey::Quarantine(table.to_string()).key());
        TableStatus {
            rows: state.map_or(0, DirState::rows),
            quarters: state.map_or(0, |s| s.partitions.len()),
            latest_quarter: state.and_then(|s| s.partitions.keys().next_back().cloned()),
            quarantined_rows: quarantine.map_or(0, DirState::rows),
            last_success: runs
                .iter()
                .find(|r| r.table == table && r.outcome == Outcome::Succeeded)
                .and_then(|r| r.ended_at),
        }
    }
}

/// A pipeline's stored cursor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// Cursor value: a date or timestamp for incremental feeds, a quarter for quarter windows.
    pub value: String,
    /// Run that advanced it.
    pub run_id: String,
}

/// One committed version of the warehouse.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Monotonic version; 0 is the empty warehouse.
    pub version: u64,
    /// When it was committed (stored as RFC 3339, UTC).
    pub committed_at: Timestamp,
    /// Run that committed it.
    pub run_id: Option<String>,
    /// Every directory's committed state, by key (`tables/bank_loans`).
    pub dirs: BTreeMap<String, DirState>,
    /// Pipeline cursors, by pipeline name.
    pub cursors: BTreeMap<String, Cursor>,
    /// Published aggregates: versions and the input state they were computed from.
    #[serde(default)]
    pub published: BTreeMap<String, PublishedMeta>,
    /// Each table's last delivery that changed it, by table name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub deliveries: BTreeMap<String, Delivery>,
}

/// The last delivery that changed a table: what identifies it, and the state
/// it left the table in. The same delivery again, while the table is still
/// in that state, would change nothing (merging is idempotent and rejected
/// records are quarantined once), so a run that recognises it skips the
/// decoding and records the run as unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// The pipeline (`import-<table>` for imports) that delivered it.
    pub pipeline: String,
    /// The run that committed it.
    pub run_id: String,
    /// BLAKE3 (hex) of everything that decided what it committed: the
    /// content (a file's bytes, or each page's URL and `ETag`), the table's
    /// schema and ironlake's version.
    pub fingerprint: String,
    /// [`Manifest::table_state`] right after its commit.
    pub state: String,
    /// The pipeline's cursor right after its commit.
    #[serde(default)]
    pub cursor: Option<String>,
    /// Bytes of an imported file (a first, cheap test before hashing a file).
    #[serde(default)]
    pub bytes: u64,
    /// For a feed: the file under `_ironlake/deliveries/` that lists its
    /// pages' URLs and `ETag`s, window by window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pages: Option<String>,
}

/// The pages of a feed delivery: for each window, each page's URL and `ETag`.
pub type DeliveredPages = Vec<Vec<(String, String)>>;

/// One published version of an aggregate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedVersion {
    /// Version id: the manifest version that published it.
    pub version: u64,
    /// Its generation directory, relative to the warehouse root.
    pub generation: String,
    /// When it was published (stored as RFC 3339, UTC).
    pub published_at: Timestamp,
    /// Rows in it.
    pub rows: u64,
    /// `full` or `incremental`.
    pub mode: String,
    /// Output quarters recomputed for it.
    pub quarters: Vec<String>,
}

/// What ironlake knows about a published aggregate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedMeta {
    /// Output columns in the SQL's order (the partition column included).
    pub columns: Vec<String>,
    /// The stored columns (all but `quarter`): name, Arrow type, nullable.
    #[serde(default)]
    pub schema: Vec<(String, String, bool)>,
    /// Versions kept on disk, newest last.
    pub versions: Vec<PublishedVersion>,
    /// For each input (`tables/x`, `published/y`): a token per partition, to find what changed.
    pub inputs: BTreeMap<String, BTreeMap<String, String>>,
    /// A hash of the SQL the published rows were computed with (the file
    /// with the policy's values filled in); `None` in manifests written
    /// before it was recorded. A different definition makes every
    /// published quarter stale.
    #[serde(default)]
    pub definition: Option<String>,
}

impl Manifest {
    /// A token of a table's committed state (its partitions' files and its
    /// quarantine's): equal tokens mean the same committed rows.
    pub fn table_state(&self, table: &str) -> String {
        let dirs = (
            self.dirs.get(&DirKey::Table(table.to_string()).key()),
            self.dirs.get(&DirKey::Quarantine(table.to_string()).key()),
        );
        let json = serde_json::to_vec(&dirs).expect("dir states serialise");
        blake3::hash(&json).to_hex().to_string()
    }

    /// The table's last delivery, if the table is still as it left it and
    /// `cursor` is the cursor it left.
    pub fn standing_delivery(&self, table: &str, cursor: Option<&str>) -> Option<&Delivery> {
        self.deliveries
            .get(table)
            .filter(|d| d.cursor.as_deref() == cursor && d.state == self.table_state(table))
    }

    /// Absolute path of a committed file.
    pub fn file_path(
        &self,
        root: &Path,
        dir: &str,
        partition: &str,
        file: &str,
    ) -> Option<PathBuf> {
        let d = self.dirs.get(dir)?;
        Some(
            root.join(&d.generation)
                .join(partition_path(partition))
                .join(file),
        )
    }
}

/// Outcome of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// In progress (or its process died; recovery marks it aborted).
    Running,
    /// Committed.
    Succeeded,
    /// Failed cleanly: nothing committed.
    Failed,
    /// The process died before committing; nothing committed.
    Aborted,
}

/// What kind of run a record is of (stored as `ingest`, `backfill`, `import`, `refresh`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunType {
    /// A pipeline's scheduled or triggered pull.
    Ingest,
    /// A pipeline re-pulling a quarter range.
    Backfill,
    /// A local file loaded with `ironlake import`.
    Import,
    /// A refresh of published aggregates.
    Refresh,
    /// Records partners pushed (one commit for a group of requests).
    Push,
}

impl RunType {
    /// The name in run records, `system.runs` and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            RunType::Ingest => "ingest",
            RunType::Backfill => "backfill",
            RunType::Import => "import",
            RunType::Refresh => "refresh",
            RunType::Push => "push",
        }
    }
}

impl std::fmt::Display for RunType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// The record of one run (`system.runs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Unique run id.
    pub run_id: String,
    /// Pipeline (or `refresh`).
    pub pipeline: String,
    /// What kind of run.
    pub kind: RunType,
    /// Target table.
    pub table: String,
    /// Start time (stored as RFC 3339, UTC).
    pub started_at: Timestamp,
    /// End time.
    pub ended_at: Option<Timestamp>,
    /// Outcome.
    pub outcome: Outcome,
    /// Why it failed.
    pub error: Option<String>,
    /// HTTP requests made, retries included.
    pub requests: u64,
    /// Retried requests.
    pub retries: u64,
    /// Pages decoded.
    pub pages: u64,
    /// Bytes received.
    pub bytes: u64,
    /// Records received.
    pub rows_in: u64,
    /// Records that passed validation.
    pub rows_valid: u64,
    /// Records quarantined.
    pub rows_rejected: u64,
    /// Rows new or changed in the warehouse by this run.
    pub rows_changed: u64,
    /// Rows in the partition files this run wrote.
    pub rows_written: u64,
    /// Set when the run recognised the table's last delivery (the same
    /// file, or every page answered `304 Not Modified`) with the table still
    /// as that delivery left it: the run that committed it. Nothing was
    /// decoded or committed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unchanged_since: Option<String>,
    /// Partitions rewritten.
    pub partitions_touched: Vec<String>,
    /// Fields the feed sent that the schema does not declare, with counts.
    pub unknown_fields: BTreeMap<String, u64>,
    /// Cursor before the run.
    pub cursor_before: Option<String>,
    /// Cursor after the run.
    pub cursor_after: Option<String>,
    /// Manifest version the run committed.
    pub manifest_version: Option<u64>,
    /// For a push: the answers of its requests that carried an
    /// `Idempotency-Key`, committed with the data so a retry gets the same answer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub intake: Vec<IntakeAnswer>,
}

/// What a push request was answered (`POST /api/v1/intake/{pipeline}`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IntakeAnswer {
    /// The request's `Idempotency-Key`, if it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The run that committed it.
    pub run_id: String,
    /// Records accepted (valid; new or replacing a row with the same key).
    pub accepted: u64,
    /// Records rejected (quarantined).
    pub rejected: u64,
    /// The first rejected records: position in the request (1-based), field, reason.
    pub errors: Vec<IntakeError>,
}

/// One rejected record of a push.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IntakeError {
    /// Position in the request (1-based; CSV rows after the header).
    pub record_no: u64,
    /// Field concerned, if one.
    pub field: Option<String>,
    /// What is wrong and what was expected.
    pub reason: String,
}

impl RunRecord {
    /// A new record in state `running`.
    pub fn start(run_id: &str, pipeline: &str, kind: RunType, table: &str) -> RunRecord {
        RunRecord {
            run_id: run_id.into(),
            pipeline: pipeline.into(),
            kind,
            table: table.into(),
            started_at: now(),
            ended_at: None,
            outcome: Outcome::Running,
            error: None,
            requests: 0,
            retries: 0,
            pages: 0,
            bytes: 0,
            rows_in: 0,
            rows_valid: 0,
            rows_rejected: 0,
            rows_changed: 0,
            rows_written: 0,
            unchanged_since: None,
            partitions_touched: Vec::new(),
            unknown_fields: BTreeMap::new(),
            cursor_before: None,
            cursor_after: None,
            manifest_version: None,
            intake: Vec::new(),
        }
    }
}

/// A point in time, UTC; stored in manifests and run records as RFC 3339.
pub type Timestamp = chrono::DateTime<chrono::Utc>;

/// Now, to the millisecond (what run records and manifests keep).
pub fn now() -> Timestamp {
    let t = chrono::Utc::now();
    t - chrono::Duration::nanoseconds(i64::from(t.timestamp_subsec_nanos() % 1_000_000))
}

/// A timestamp as people read it in messages: `2019-10-01T02:00:00.000Z`.
pub fn display_time(t: &Timestamp) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// A unique run id: `20191001T020000Z-bank_loans-1a2b3c`.
pub fn new_run_id(name: &str) -> String {
    let now = chrono::Utc::now();
    let salt = crate::primitives::mix(
        now.timestamp_nanos_opt().unwrap_or_default() as u64
            ^ (u64::from(std::process::id()) << 32),
    );
    format!(
        "{}-{name}-{:06x}",
        now.format("%Y%m%dT%H%M%SZ"),
        salt & 0xFF_FFFF
    )
}

#[derive(Debug, Serialize, Deserialize)]
struct Journal {
    manifest: Manifest,
    links: Vec<(String, String)>,
    /// Files moved from a run's staging directory into a live generation
    /// (appends in place), as (from, to) relative to the warehouse root.
    #[serde(default)]
    appends: Vec<(String, String)>,
    run: Option<RunRecord>,
}

/// Whether a file is a temp file (`.tmp-<pid>-…` or `.tmp-link-<pid>-…`)
/// whose writer process no longer exists. Manifest temp files
/// (`.tmp-<version>`) are written under the warehouse lock and always stale here.
fn is_stale_temp(name: &str) -> bool {
    let Some(rest) = name.strip_prefix(".tmp-") else {
        return false;
    };
    let rest = rest.strip_prefix("link-").unwrap_or(rest);
    match rest.split_once('-') {
        Some((pid, _)) => match pid.parse::<u32>() {
            Ok(pid) => pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists(),
            Err(_) => true,
        },
        None => true,
    }
}

/// Whether a generation directory is being built by a live process.
fn is_being_built(generation: &Path) -> bool {
    let mark = generation.join(BUILDING);
    mark.exists() && matches!(FileLock::try_acquire(&mark), Ok(None))
}

/// Whether `name` is a journal file's name (`<20 digits>.json`).
fn is_journal_name(name: &str) -> bool {
    name.strip_suffix(".json")
        .is_some_and(|v| v.len() == 20 && v.bytes().all(|b| b.is_ascii_digit()))
}

/// The subdirectories of `dir`; anything else in it (a stray file someone
/// left there) is skipped with a warning instead of failing the warehouse.
fn subdirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)
        .map_err(io_err("read", dir))?
        .filter_map(|e| e.ok())
    {
        let path = e.path();
        // file_type() does not follow symlinks: only real directories count.
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.push(path);
        } else {
            tracing::warn!(path = %path.display(), "Ignoring something that is not a directory where ironlake keeps directories; it was not written by ironlake.");
        }
    }
    out.sort();
    Ok(out)
}

/// The current manifest as last read, and the modification time of the
/// manifests directory it may be trusted for (see [`Warehouse::manifest_shared`]).
#[derive(Debug)]
struct SharedManifest {
    manifest: std::sync::Arc<Manifest>,
    /// Set when the directory was listed long enough after it last
    /// changed that a later change must move its modification time.
    listed_stamp: Option<std::time::SystemTime>,
}

/// How long after the manifests directory last changed a listing of it
/// must start for its modification time to vouch for the listing: a change
/// within the same tick of the file system's clock leaves the time as it
/// was. That tick is a few milliseconds here, up to 2 s on some file
/// systems.
const STAMP_MARGIN: std::time::Duration = std::time::Duration::from_secs(2);

/// A warehouse directory, opened (and recovered).
#[derive(Debug, Clone)]
pub struct Warehouse {
    root: PathBuf,
    retention: std::time::Duration,
    runs_cache: std::sync::Arc<std::sync::Mutex<Option<RunsCache>>>,
    manifest_cache: std::sync::Arc<std::sync::Mutex<Option<SharedManifest>>>,
    /// The generations each retained manifest version references (manifests
    /// never change), so garbage collection reads each manifest once.
    gc_refs: std::sync::Arc<std::sync::Mutex<HashMap<u64, std::sync::Arc<Vec<PathBuf>>>>>,
    /// When garbage collection next looks through the generations.
    gc_schedule: std::sync::Arc<std::sync::Mutex<GcSchedule>>,
}

/// When garbage collection next lists the generations and prunes the run
/// history: a listing costs time proportional to what is kept, so a stream
/// of small commits (pushes) must not pay it on every commit.
#[derive(Debug, Default)]
struct GcSchedule {
    /// The earliest a kept generation may go (`None`: look now, e.g. after opening).
    next_scan: Option<std::time::SystemTime>,
    /// Run records written since the run history was last pruned.
    runs_written: u32,
}

/// Longest garbage collection waits between looks at the generations, so
/// generations other processes superseded are found too.
const GC_MAX_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);
/// Run records written between two prunings of the run history.
const PRUNE_RUNS_EVERY: u32 = 64;

/// The runs directory's modification time and the run records read at it.
/// The run history as last read: the directory's modification time, the
/// records newest first, and each file's (modification time, size) with its
/// record, so a change re-reads only the files that changed.
#[derive(Debug)]
struct RunsCache {
    dir_mtime: std::time::SystemTime,
    runs: std::sync::Arc<Vec<RunRecord>>,
    files: RunFiles,
}

/// Run records by file name, with the file's modification time and size.
type RunFiles = HashMap<std::ffi::OsString, (std::time::SystemTime, u64, RunRecord)>;

/// Proof that the warehouse lock is held.
#[derive(Debug)]
pub struct CommitGuard {
    _lock: FileLock,
}

/// A generation being built for one directory.
#[derive(Debug)]
pub struct GenBuilder {
    key: String,
    generation: String,
    dir: PathBuf,
    base: DirState,
    partitions: BTreeMap<String, PartitionState>,
    replaced: BTreeSet<String>,
    run_id: String,
    /// Held while the generation is built without the warehouse lock: garbage
    /// collection leaves the directory alone while this lock is held.
    building: Option<FileLock>,
}

/// The file whose lock marks a generation as being built (see [`Warehouse::begin_generation_unlocked`]).
const BUILDING: &str = ".building";
/// The file whose modification time says when a generation was superseded
/// (its retention runs from then).
const SUPERSEDED: &str = ".superseded";

impl GenBuilder {
    /// The directory a new partition's files go into (created on demand).
    pub fn partition_dir(&self, partition: &str) -> Result<PathBuf> {
        let d = self.dir.join(partition_path(partition));
        std::fs::create_dir_all(&d).map_err(io_err("create", &d))?;
        Ok(d)
    }

    /// A fresh file name for a partition's data.
    pub fn file_name(&self, n: usize) -> String {
        let id = self
            .generation
            .rsplit('/')
            .next()
            .unwrap_or(&self.generation);
        format!("part-{id}-{n}.parquet")
    }

    /// Records that `partition` now consists of `files` (already written and fsynced in `partition_dir`).
    pub fn set_partition(&mut self, partition: &str, files: Vec<FileEntry>) {
        let rows = files.iter().map(|f| f.rows).sum();
        self.replaced.insert(partition.to_string());
        if files.is_empty() {
            self.partitions.remove(partition);
        } else {
            self.partitions.insert(
                partition.to_string(),
                PartitionState {
                    files,
                    rows,
                    written_by: self.run_id.clone(),
                    delivery: None,
                },
            );
        }
    }

    /// Records the fingerprint of the delivery that produced `partition`'s
    /// files (after [`GenBuilder::set_partition`]).
    pub fn set_delivery(&mut self, partition: &str, delivery: String) {
        if let Some(p) = self.partitions.get_mut(partition) {
            p.delivery = Some(delivery);
        }
    }

    /// Adds new files to a partition, keeping its existing files (append-only directories such as quarantine).
    pub fn add_files(&mut self, partition: &str, files: Vec<FileEntry>) {
        let entry = self.partitions.entry(partition.to_string()).or_default();
        entry.rows += files.iter().map(|f| f.rows).sum::<u64>();
        entry.files.extend(files);
        entry.written_by = self.run_id.clone();
        entry.delivery = None;
    }

    /// The state this generation started from.
    pub fn base(&self) -> &DirState {
        &self.base
    }

    /// The generation directory (absolute).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The partitions the generation will hold, as of now.
    pub fn partitions(&self) -> &BTreeMap<String, PartitionState> {
        &self.partitions
    }

    /// Partitions replaced so far.
    pub fn replaced(&self) -> &BTreeSet<String> {
        &self.replaced
    }
}

/// New files for the live generation of a directory, added in place instead
/// of building a new generation (pushes of new keys, quarantine appends):
/// written and fsynced in the run's staging directory, moved into the
/// generation when the commit rolls forward. Readers go by the manifest, so
/// the files are visible exactly from the commit that lists them on; an
/// external reader of the directory may see them just before the manifest,
/// as it sees a new generation just before it.
pub struct InPlace {
    key: String,
    state: DirState,
    root: PathBuf,
    /// Where the files are staged, relative to the root:
    /// `_ironlake/staging/<run>/<directory key with dots>`.
    staged: PathBuf,
    /// The commit's id in file names (`v<version>-<run>`).
    name: String,
    moves: Vec<(String, String)>,
}

impl InPlace {
    /// Where the `n`th new file of `partition` is written (its parent is created).
    pub fn staged_path(&self, partition: &str, n: usize) -> Result<PathBuf> {
        let d = self.root.join(&self.staged).join(partition_path(partition));
        std::fs::create_dir_all(&d).map_err(io_err("create", &d))?;
        Ok(d.join(self.file_name(n)))
    }

    fn file_name(&self, n: usize) -> String {
        format!("part-{}-{n}.parquet", self.name)
    }

    /// Records the file written (and fsynced) at `staged_path(partition, n)`.
    pub fn add_file(&mut self, partition: &str, n: usize, entry: FileEntry, run_id: &str) {
        let name = self.file_name(n);
        let part_dir = partition_path(partition);
        let from = self.staged.join(&part_dir).join(&name);
        let to = Path::new(&self.state.generation)
            .join(&part_dir)
            .join(&name);
        self.moves.push((
            from.to_string_lossy().into_owned(),
            to.to_string_lossy().into_owned(),
        ));
        let part = self
            .state
            .partitions
            .entry(partition.to_string())
            .or_default();
        part.rows += entry.rows;
        part.files.push(FileEntry { name, ..entry });
        part.written_by = run_id.to_string();
        part.delivery = None;
    }

    /// The directory's state once the files are in.
    pub fn state(&self) -> &DirState {
        &self.state
    }
}

/// A new generation ready to commit.
#[derive(Debug)]
pub struct DirChange {
    key: String,
    state: DirState,
    building: Option<FileLock>,
    /// Files moved into the (unchanged) live generation, for in-place appends.
    moves: Vec<(String, String)>,
}

impl DirChange {
    /// The directory's state in the new generation.
    pub fn state(&self) -> &DirState {
        &self.state
    }
}

impl Warehouse {
    /// Opens (creating if needed) the warehouse at `root` and recovers any
    /// interrupted commit, keeping superseded generations for the default time.
    pub fn open(root: &Path) -> Result<Warehouse> {
        Self::open_with(root, DEFAULT_SUPERSEDED_RETENTION)
    }

    /// Like [`Warehouse::open`], keeping a superseded generation for
    /// `retention` after the commit that replaced it.
    pub fn open_with(root: &Path, retention: std::time::Duration) -> Result<Warehouse> {
        let wh = Warehouse::at(root, retention);
        for d in [
            "_ironlake/gen",
            "_ironlake/manifests",
            "_ironlake/journal",
            "_ironlake/runs",
            "_ironlake/deliveries",
            "_ironlake/staging",
            "_ironlake/locks",
            "tables",
            "quarantine",
            "published",
        ] {
            let p = root.join(d);
            fsutil::create_dir_durable(&p).map_err(io_err("create", &p))?;
        }
        let guard = wh.lock()?;
        wh.recover(&guard)?;
        Ok(wh)
    }

    /// Opens the warehouse at `root` for reading only: no directory is
    /// created, no lock taken, nothing recovered or collected, so it works
    /// for a user without write permission and beside a running daemon.
    /// Readers see committed manifests only, so an interrupted commit that
    /// recovery has not finished yet is simply not visible.
    pub fn open_read_only(root: &Path) -> Result<Warehouse> {
        let meta = root.join("_ironlake");
        match std::fs::metadata(root) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(io_err("open", root)(io::Error::other("not a directory")));
            }
            Err(e) => return Err(io_err("open", root)(e)),
        }
        if !meta.is_dir() {
            tracing::warn!(warehouse = %root.display(), "No _ironlake directory: the warehouse is empty (nothing was ever committed here).");
        }
        Ok(Warehouse::at(root, DEFAULT_SUPERSEDED_RETENTION))
    }

    /// The handle itself: nothing on disk is touched.
    fn at(root: &Path, retention: std::time::Duration) -> Warehouse {
        Warehouse {
            root: root.to_path_buf(),
            retention,
            runs_cache: Default::default(),
            gc_refs: Default::default(),
            manifest_cache: Default::default(),
            gc_schedule: Default::default(),
        }
    }

    /// Every file in the journal directory, sorted, with its name.
    fn journal_files(&self) -> Result<Vec<(PathBuf, String)>> {
        let jdir = self.meta("journal");
        let mut out: Vec<(PathBuf, String)> = std::fs::read_dir(&jdir)
            .map_err(io_err("read", &jdir))?
            .filter_map(|e| e.ok())
            .map(|e| (e.path(), e.file_name().to_string_lossy().into_owned()))
            .collect();
        out.sort();
        Ok(out)
    }

    /// Points the link of directory `key` at `generation` (a path relative to the root).
    fn point_link(&self, key: &str, generation: &str) -> Result<()> {
        let link = self.root.join(key);
        let ups = key.matches('/').count();
        let target = PathBuf::from("../".repeat(ups)).join(generation);
        fsutil::replace_symlink(&link, &target).map_err(io_err("link", &link))
    }

    /// The warehouse root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn meta(&self, rel: &str) -> PathBuf {
        self.root.join("_ironlake").join(rel)
    }

    /// Takes the warehouse lock (blocking).
    pub fn lock(&self) -> Result<CommitGuard> {
        let p = self.meta("lock");
        Ok(CommitGuard {
            _lock: FileLock::acquire(&p).map_err(io_err("lock", &p))?,
        })
    }

    /// Takes the daemon lock: one `ironlake run` per warehouse. Fails, naming
    /// the holder, when another daemon serves this warehouse.
    pub fn lock_daemon(&self, whoami: &str) -> Result<FileLock> {
        let p = self.meta("daemon.lock");
        match FileLock::try_acquire(&p).map_err(io_err("lock", &p))? {
            Some(l) => {
                l.write_owner(whoami).map_err(io_err("write", &p))?;
                Ok(l)
            }
            None => {
                let holder = std::fs::read_to_string(&p).unwrap_or_default();
                Err(WarehouseError::Io {
                    op: "lock",
                    path: p,
                    source: io::Error::other(format!(
                        "another ironlake daemon already serves this warehouse ({}); stop it first, or point this one at another warehouse",
                        if holder.trim().is_empty() {
                            "pid unknown"
                        } else {
                            holder.trim()
                        }
                    )),
                })
            }
        }
    }

    /// Takes the warehouse lock from async code, waiting on a blocking thread
    /// rather than on one of the runtime's workers.
    pub async fn lock_async(&self) -> Result<CommitGuard> {
        let wh = self.clone();
        tokio::task::spawn_blocking(move || wh.lock())
            .await
            .map_err(|e| io_err("lock", &self.root)(io::Error::other(e.to_string())))?
    }

    /// Takes a pipeline's run lock, or `None` if a run of it is in flight.
    pub fn try_lock_pipeline(&self, pipeline: &str) -> Result<Option<FileLock>> {
        let p = self.meta(&format!("locks/{pipeline}.lock"));
        FileLock::try_acquire(&p).map_err(io_err("lock", &p))
    }

    /// A staging directory for a run (spill files); removed when the run ends or by recovery.
    pub fn staging_dir(&self, run_id: &str) -> Result<(PathBuf, FileLock)> {
        let d = self.meta(&format!("staging/{run_id}"));
        std::fs::create_dir_all(&d).map_err(io_err("create", &d))?;
        let lock_path = d.join(".owner");
        let lock = FileLock::try_acquire(&lock_path)
            .map_err(io_err("lock", &lock_path))?
            .ok_or_else(|| WarehouseError::Io {
                op: "lock",
                path: lock_path.clone(),
                source: io::Error::other("staging directory is owned by another process"),
            })?;
        Ok((d, lock))
    }

    fn manifest_path(&self, version: u64) -> PathBuf {
        self.meta(&format!("manifests/m-{version:020}.json"))
    }

    fn manifest_versions(&self) -> Result<Vec<u64>> {
        let dir = self.meta("manifests");
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            // A warehouse opened read-only that was never written to.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("read", &dir)(e)),
        };
        let mut v: Vec<u64> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.strip_prefix("m-")?.strip_suffix(".json")?.parse().ok()
            })
            .collect();
        v.sort_unstable();
        Ok(v)
    }

    fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
        let text = std::fs::read(path).map_err(io_err("read", path))?;
        serde_json::from_slice(&text).map_err(|e| WarehouseError::Damaged {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// The current committed manifest (version 0, empty, for a new warehouse).
    pub fn manifest(&self) -> Result<Manifest> {
        self.read_manifest(self.manifest_versions()?.last().copied())
    }

    /// Manifest `version` (`None`: none committed yet, the empty one).
    fn read_manifest(&self, version: Option<u64>) -> Result<Manifest> {
        match version {
            None => Ok(Manifest::default()),
            Some(v) => Self::read_json(&self.manifest_path(v)),
        }
    }

    /// The current manifest, shared: parsed again only when a newer version
    /// exists, so hot read paths such as dashboard reads do not parse JSON
    /// per request. A commit by any process is visible on the next call.
    ///
    /// Each call looks at the manifests directory's modification time (one
    /// `stat`); the directory is listed only when that time moved since a
    /// listing it vouches for (one that started [`STAMP_MARGIN`] after it).
    /// A listing per call cost a 304 answer to a dashboard about a fifth of
    /// its time.
    pub fn manifest_shared(&self) -> Result<std::sync::Arc<Manifest>> {
        let dir = self.meta("manifests");
        let stamp = std::fs::metadata(&dir).and_then(|m| m.modified()).ok();
        let mut cache = self
            .manifest_cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = cache.as_ref()
            && stamp.is_some()
            && c.listed_stamp == stamp
        {
            return Ok(c.manifest.clone());
        }
        let listed_at = std::time::SystemTime::now();
        let latest = self.manifest_versions()?.last().copied();
        let listed_stamp = stamp.filter(|s| {
            listed_at
                .duration_since(*s)
                .is_ok_and(|age| age >= STAMP_MARGIN)
        });
        let manifest = match cache.as_ref() {
            Some(c) if c.manifest.version == latest.unwrap_or(0) => c.manifest.clone(),
            _ => std::sync::Arc::new(self.read_manifest(latest)?),
        };
        *cache = Some(SharedManifest {
            manifest: manifest.clone(),
            listed_stamp,
        });
        Ok(manifest)
    }

    /// Starts a new generation of directory `key` (e.g. `tables/bank_loans`).
    pub fn begin_generation(
        &self,
        guard: &CommitGuard,
        base: &Manifest,
        key: &str,
        run_id: &str,
    ) -> Result<GenBuilder> {
        let base_state = base.dirs.get(key).cloned().unwrap_or_default();
        self.begin_generation_from(guard, base, key, run_id, base_state)
    }

    /// Starts a new generation of `key` from a given state (an empty one for a full rewrite).
    pub fn begin_generation_from(
        &self,
        _guard: &CommitGuard,
        base: &Manifest,
        key: &str,
        run_id: &str,
        base_state: DirState,
    ) -> Result<GenBuilder> {
        self.new_generation(base, key, run_id, base_state, false)
    }

    /// Starts a new generation without holding the warehouse lock (a long
    /// refresh, so commits of other runs need not wait for it). The
    /// generation is marked as being built, so garbage collection leaves it
    /// alone; [`Warehouse::commit_with`] removes the mark under the lock.
    /// Its base generation stays on disk at least as long as the
    /// superseded-retention time after the next commit.
    pub fn begin_generation_unlocked(
        &self,
        base: &Manifest,
        key: &str,
        run_id: &str,
        base_state: DirState,
    ) -> Result<GenBuilder> {
        self.new_generation(base, key, run_id, base_state, true)
    }

    fn new_generation(
        &self,
        base: &Manifest,
        key: &str,
        run_id: &str,
        base_state: DirState,
        unlocked: bool,
    ) -> Result<GenBuilder> {
        let generation = format!(
            "v{:010}-{}",
            base.version + 1,
            run_id.rsplit('-').next().unwrap_or(run_id)
        );
        let rel = format!("_ironlake/gen/{}/{generation}", key.replace('/', "."));
        let dir = self.root.join(&rel);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io_err("remove", &dir))?;
        }
        std::fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let building = if unlocked {
            let p = dir.join(BUILDING);
            Some(
                FileLock::try_acquire(&p)
                    .map_err(io_err("lock", &p))?
                    .ok_or_else(|| {
                        io_err("lock", &p)(io::Error::other("held by another process"))
                    })?,
            )
        } else {
            None
        };
        Ok(GenBuilder {
            key: key.to_string(),
            generation: rel,
            dir,
            partitions: base_state.partitions.clone(),
            base: base_state,
            replaced: BTreeSet::new(),
            run_id: run_id.to_string(),
            building,
        })
    }

    /// Completes a generation: hard-links untouched partitions and fsyncs it.
    pub fn finish_generation(&self, g: GenBuilder) -> Result<DirChange> {
        for (part, state) in &g.partitions {
            if g.replaced.contains(part) {
                continue;
            }
            let dst_dir = g.dir.join(partition_path(part));
            std::fs::create_dir_all(&dst_dir).map_err(io_err("create", &dst_dir))?;
            let base_files = g
                .base
                .partitions
                .get(part)
                .map(|p| p.files.as_slice())
                .unwrap_or(&[]);
            for f in state.files.iter().filter(|f| base_files.contains(f)) {
                let src = self
                    .root
                    .join(&g.base.generation)
                    .join(partition_path(part))
                    .join(&f.name);
                let dst = dst_dir.join(&f.name);
                std::fs::hard_link(&src, &dst).map_err(io_err("link", &src))?;
            }
        }
        // fsync every partition directory, then the generation directory and its parent.
        for part in g.partitions.keys() {
            let d = g.dir.join(partition_path(part));
            fsutil::fsync_dir(&d).map_err(io_err("fsync", &d))?;
        }
        fsutil::fsync_dir(&g.dir).map_err(io_err("fsync", &g.dir))?;
        if let Some(parent) = g.dir.parent() {
            fsutil::fsync_dir(parent).map_err(io_err("fsync", parent))?;
        }
        Ok(DirChange {
            key: g.key,
            state: DirState {
                generation: g.generation,
                partitions: g.partitions,
            },
            building: g.building,
            moves: Vec::new(),
        })
    }

    /// Starts adding files in place to the live generation of `key` (see
    /// [`InPlace`]); `None` when the directory has no generation yet. The
    /// files are staged in the run's staging directory ([`Warehouse::staging_dir`]).
    pub fn begin_in_place(&self, base: &Manifest, key: &str, run_id: &str) -> Option<InPlace> {
        let state = base.dirs.get(key)?.clone();
        if state.generation.is_empty() {
            return None;
        }
        Some(InPlace {
            key: key.to_string(),
            state,
            root: self.root.clone(),
            staged: Path::new("_ironlake/staging")
                .join(run_id)
                .join(key.replace('/', ".")),
            name: format!(
                "v{:010}-{}",
                base.version + 1,
                run_id.rsplit('-').next().unwrap_or(run_id)
            ),
            moves: Vec::new(),
        })
    }

    /// Completes an in-place change: fsyncs the staged files' directories.
    pub fn finish_in_place(&self, p: InPlace) -> Result<DirChange> {
        let dirs: BTreeSet<PathBuf> = p
            .moves
            .iter()
            .filter_map(|(from, _)| self.root.join(from).parent().map(Path::to_path_buf))
            .collect();
        for d in &dirs {
            fsutil::fsync_dir(d).map_err(io_err("fsync", d))?;
        }
        Ok(DirChange {
            key: p.key,
            state: p.state,
            building: None,
            moves: p.moves,
        })
    }

    /// Drops a generation that turned out not to be needed.
    pub fn abandon_generation(&self, g: GenBuilder) -> Result<()> {
        std::fs::remove_dir_all(&g.dir).map_err(io_err("remove", &g.dir))
    }

    /// Commits new generations, cursors and the run record as one new manifest version.
    pub fn commit(
        &self,
        guard: &CommitGuard,
        base: &Manifest,
        changes: Vec<DirChange>,
        cursors: BTreeMap<String, Cursor>,
        run: RunRecord,
    ) -> Result<Manifest> {
        self.commit_with(guard, base, changes, cursors, |_| {}, run)
    }

    /// Like [`Warehouse::commit`], letting `edit` change the new manifest (published metadata).
    pub fn commit_with(
        &self,
        guard: &CommitGuard,
        base: &Manifest,
        changes: Vec<DirChange>,
        cursors: BTreeMap<String, Cursor>,
        edit: impl FnOnce(&mut Manifest),
        mut run: RunRecord,
    ) -> Result<Manifest> {
        let mut next = base.clone();
        next.version = base.version + 1;
        next.committed_at = now();
        next.run_id = Some(run.run_id.clone());
        let (mut links, mut appends) = (Vec::new(), Vec::new());
        for c in changes {
            if c.building.is_some() {
                // Built without the lock; under it now, the mark can go.
                let mark = self.root.join(&c.state.generation).join(BUILDING);
                std::fs::remove_file(&mark).map_err(io_err("remove", &mark))?;
            }
            if base.dirs.get(&c.key).map(|d| &d.generation) != Some(&c.state.generation) {
                links.push((c.key.clone(), c.state.generation.clone()));
            }
            appends.extend(c.moves);
            next.dirs.insert(c.key, c.state);
        }
        next.cursors.extend(cursors);
        edit(&mut next);
        run.manifest_version = Some(next.version);
        run.outcome = Outcome::Succeeded;
        run.ended_at = Some(now());
        let journal = Journal {
            manifest: next.clone(),
            links,
            appends,
            run: Some(run),
        };
        // A commit of this process that failed half-way and could not be
        // undone then is undone now, before its version number is reused.
        self.discard_uncommitted(base)?;
        let jpath = self.meta(&format!("journal/{:020}.json", next.version));
        let data = serde_json::to_vec_pretty(&journal).expect("journal serialises");
        fsutil::write_atomic(&jpath, &data).map_err(io_err("write", &jpath))?;
        crate::failpoint("commit.after_journal");
        if let Err(e) = self.roll_forward(guard, &jpath, journal) {
            // Before the manifest exists nothing is committed: put the links
            // back so directory readers see the previous state again.
            if !self.manifest_path(next.version).exists()
                && let Err(undo) = self.discard_uncommitted(base)
            {
                tracing::error!(error = %undo, "Could not undo a failed commit; the next commit or start will.");
            }
            return Err(e);
        }
        Ok(next)
    }

    /// Undoes journals newer than `current` whose manifest was never
    /// written (an in-process commit that failed): links go back to
    /// `current`'s generations and the journal is removed.
    fn discard_uncommitted(&self, current: &Manifest) -> Result<()> {
        for (j, name) in self.journal_files()? {
            if !is_journal_name(&name) {
                continue;
            }
            let journal: Journal = Self::read_json(&j)?;
            if journal.manifest.version <= current.version
                || self.manifest_path(journal.manifest.version).exists()
            {
                continue;
            }
            for (_, to) in &journal.appends {
                let p = self.root.join(to);
                match std::fs::remove_file(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err("remove", &p)(e)),
                }
            }
            for (key, _) in &journal.links {
                let link = self.root.join(key);
                match current.dirs.get(key) {
                    Some(d) => self.point_link(key, &d.generation)?,
                    None => match std::fs::remove_file(&link) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(io_err("remove", &link)(e)),
                    },
                }
            }
            std::fs::remove_file(&j).map_err(io_err("remove", &j))?;
            tracing::warn!(
                version = journal.manifest.version,
                "Undid a commit that failed before its manifest was written."
            );
        }
        Ok(())
    }

    fn roll_forward(&self, guard: &CommitGuard, jpath: &Path, journal: Journal) -> Result<()> {
        let mut moved_into = BTreeSet::new();
        for (from, to) in &journal.appends {
            let (from, to) = (self.root.join(from), self.root.join(to));
            if to.exists() {
                continue;
            }
            if let Some(parent) = to.parent() {
                if !parent.is_dir() {
                    fsutil::create_dir_durable(parent).map_err(io_err("create", parent))?;
                }
                moved_into.insert(parent.to_path_buf());
            }
            std::fs::rename(&from, &to).map_err(io_err("move", &from))?;
        }
        for d in &moved_into {
            fsutil::fsync_dir(d).map_err(io_err("fsync", d))?;
        }
        crate::failpoint("commit.after_appends");
        for (key, generation) in &journal.links {
            let link = self.root.join(key);
            if let Some(parent) = link.parent() {
                fsutil::create_dir_durable(parent).map_err(io_err("create", parent))?;
            }
            self.mark_superseded(key, generation);
            self.point_link(key, generation)?;
            crate::failpoint("commit.after_link");
        }
        let mpath = self.manifest_path(journal.manifest.version);
        if !mpath.exists() {
            let tmp = self.meta(&format!("manifests/.tmp-{}", journal.manifest.version));
            let data = serde_json::to_vec_pretty(&journal.manifest).expect("manifest serialises");
            crate::failpoint_io("commit.manifest").map_err(io_err("write", &tmp))?;
            {
                use std::io::Write as _;
                let mut f = std::fs::File::create(&tmp).map_err(io_err("create", &tmp))?;
                f.write_all(&data).map_err(io_err("write", &tmp))?;
                f.sync_all().map_err(io_err("fsync", &tmp))?;
            }
            match fsutil::rename_noreplace(&tmp, &mpath) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(WarehouseError::Conflict(journal.manifest.version));
                }
                Err(e) => return Err(io_err("rename", &mpath)(e)),
            }
            let mdir = self.meta("manifests");
            fsutil::fsync_dir(&mdir).map_err(io_err("fsync", &mdir))?;
        }
        crate::failpoint("commit.after_manifest");
        // Committed. The new manifest is what readers of the shared one (the
        // garbage collection below first) get, without parsing it back.
        let version = journal.manifest.version;
        *self
            .manifest_cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(SharedManifest {
            manifest: std::sync::Arc::new(journal.manifest),
            listed_stamp: None,
        });
        // What follows is housekeeping: a failure is logged, not reported
        // as a failed commit (the next start or commit redoes it).
        let after = || -> Result<()> {
            if let Some(run) = &journal.run {
                self.write_run(run)?;
            }
            std::fs::remove_file(jpath).map_err(io_err("remove", jpath))?;
            let jdir = self.meta("journal");
            fsutil::fsync_dir(&jdir).map_err(io_err("fsync", &jdir))?;
            self.collect_garbage(guard)
        };
        if let Err(e) = after() {
            tracing::warn!(version, error = %e, "Committed, but housekeeping after the commit failed; it is retried later.");
        }
        Ok(())
    }

    /// Writes a feed delivery's pages for `run_id` (durably, before the
    /// commit that names them); returns the name for [`Delivery::pages`].
    pub fn write_delivered_pages(&self, run_id: &str, pages: &DeliveredPages) -> Result<String> {
        let name = format!("{run_id}.json");
        let p = self.meta(&format!("deliveries/{name}"));
        let data = serde_json::to_vec(pages).expect("pages serialise");
        fsutil::write_atomic(&p, &data).map_err(io_err("write", &p))?;
        Ok(name)
    }

    /// Reads the pages a [`Delivery`] names (`None` if the file is gone or unreadable).
    pub fn delivered_pages(&self, name: &str) -> Option<DeliveredPages> {
        if name.contains('/') {
            return None;
        }
        let data = std::fs::read(self.meta(&format!("deliveries/{name}"))).ok()?;
        serde_json::from_slice(&data).ok()
    }

    /// Writes (or replaces) a run record.
    pub fn write_run(&self, run: &RunRecord) -> Result<()> {
        let p = self.meta(&format!("runs/{}.json", run.run_id));
        let data = serde_json::to_vec_pretty(run).expect("run serialises");
        fsutil::write_atomic(&p, &data).map_err(io_err("write", &p))?;
        self.gc_schedule
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .runs_written += 1;
        Ok(())
    }

    /// All run records, newest first; read again only when the runs directory changed.
    pub fn runs(&self) -> Result<Vec<RunRecord>> {
        Ok(self.runs_shared()?.as_ref().clone())
    }

    /// All run records, newest first, shared (no copy when nothing changed).
    pub fn runs_shared(&self) -> Result<std::sync::Arc<Vec<RunRecord>>> {
        let dir = self.meta("runs");
        let mtime = std::fs::metadata(&dir).and_then(|m| m.modified()).ok();
        let mut cache = self
            .runs_cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let (Some(t), Some(c)) = (mtime, cache.as_ref())
            && c.dir_mtime == t
        {
            return Ok(c.runs.clone());
        }
        let old = cache.take().map(|c| c.files).unwrap_or_default();
        let files = self.read_runs(old)?;
        let mut runs: Vec<RunRecord> = files.values().map(|(_, _, r)| r.clone()).collect();
        runs.sort_by(|a, b| {
            b.started_at
                .cmp(&a.started_at)
                .then(b.run_id.cmp(&a.run_id))
        });
        let runs = std::sync::Arc::new(runs);
        if let Some(t) = mtime {
            *cache = Some(RunsCache {
                dir_mtime: t,
                runs: runs.clone(),
                files,
            });
        }
        Ok(runs)
    }

    /// The run records on disk, reusing those of `known` whose file has
    /// the same modification time and size (run files are replaced whole).
    fn read_runs(&self, mut known: RunFiles) -> Result<RunFiles> {
        let dir = self.meta("runs");
        let mut out = HashMap::new();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io_err("read", &dir)(e)),
        };
        for e in entries.filter_map(|e| e.ok()) {
            let p = e.path();
            if p.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let Ok(meta) = e.metadata() else { continue };
            let stamp = (meta.modified().unwrap_or(std::time::UNIX_EPOCH), meta.len());
            let name = e.file_name();
            if let Some(k) = known.remove(&name)
                && (k.0, k.1) == stamp
            {
                out.insert(name, k);
                continue;
            }
            match Self::read_json::<RunRecord>(&p) {
                Ok(r) => {
                    out.insert(name, (stamp.0, stamp.1, r));
                }
                Err(e) => tracing::warn!(error = %e, "Skipping unreadable run record."),
            }
        }
        Ok(out)
    }

    /// Removes the oldest run records past [`RUNS_KEPT_PER_PIPELINE`] per pipeline.
    fn prune_runs(&self) -> Result<()> {
        let runs = self.runs_shared()?;
        let mut seen: std::collections::HashMap<&str, usize> = Default::default();
        for r in runs.iter() {
            let n = seen.entry(r.pipeline.as_str()).or_default();
            *n += 1;
            if *n > RUNS_KEPT_PER_PIPELINE && r.outcome != Outcome::Running {
                let p = self.meta(&format!("runs/{}.json", r.run_id));
                std::fs::remove_file(&p).map_err(io_err("remove", &p))?;
            }
        }
        Ok(())
    }

    /// Finishes interrupted commits, marks dead runs aborted, removes orphans.
    pub fn recover(&self, guard: &CommitGuard) -> Result<()> {
        for (j, name) in self.journal_files()? {
            if name.starts_with(".tmp-") {
                let _ = std::fs::remove_file(&j);
                continue;
            }
            if !is_journal_name(&name) || !j.is_file() {
                tracing::warn!(path = %j.display(), "Ignoring a file that ironlake did not write in the journal directory.");
                continue;
            }
            let journal: Journal = Self::read_json(&j)?;
            let current = self.manifest_versions()?.last().copied().unwrap_or(0);
            if journal.manifest.version < current {
                // Committed (newer commits follow only a written manifest,
                // which garbage collection may have removed since): only its
                // clean-up was left undone. Rolling it forward would move
                // links backwards.
                if let Some(run) = &journal.run {
                    self.write_run(run)?;
                }
                std::fs::remove_file(&j).map_err(io_err("remove", &j))?;
                continue;
            }
            if journal.manifest.version <= current
                && !self.manifest_path(journal.manifest.version).exists()
            {
                // A newer commit superseded it without it: impossible under the lock; drop it.
                tracing::error!(journal = %j.display(), "Dropping a journal older than the current manifest.");
                std::fs::remove_file(&j).map_err(io_err("remove", &j))?;
                continue;
            }
            tracing::warn!(
                version = journal.manifest.version,
                "Rolling an interrupted commit forward."
            );
            self.roll_forward(guard, &j, journal)?;
        }
        // Staging directories of dead runs; runs left `running` by dead processes.
        let sdir = self.meta("staging");
        for d in subdirs(&sdir)? {
            let lock_path = d.join(".owner");
            let dead = match FileLock::try_acquire(&lock_path) {
                Ok(Some(_l)) => true,
                Ok(None) => false,
                Err(_) => true,
            };
            if dead {
                std::fs::remove_dir_all(&d).map_err(io_err("remove", &d))?;
            }
        }
        for mut run in self.runs()? {
            if run.outcome == Outcome::Running {
                let lock = self.meta(&format!("locks/{}.lock", run.pipeline));
                if let Ok(Some(_l)) = FileLock::try_acquire(&lock) {
                    run.outcome = Outcome::Aborted;
                    run.ended_at = Some(now());
                    run.error = Some(
                        "the process running it stopped before it committed; nothing was committed"
                            .into(),
                    );
                    self.write_run(&run)?;
                }
            }
        }
        // Housekeeping: a failure here must not keep the warehouse closed.
        if let Err(e) = self.collect_garbage(guard) {
            tracing::warn!(error = %e, "Garbage collection failed; it is retried after the next commit.");
        }
        Ok(())
    }

    /// The generations the manifests `versions` reference (read once per
    /// version: manifests never change).
    fn referenced_generations(&self, versions: &[u64]) -> Result<HashSet<PathBuf>> {
        let mut refs = self
            .gc_refs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        refs.retain(|v, _| versions.contains(v));
        let mut referenced = HashSet::new();
        for &v in versions {
            let gens = match refs.get(&v) {
                Some(g) => g.clone(),
                None => {
                    let m: Manifest = Self::read_json(&self.manifest_path(v))?;
                    let mut g: Vec<PathBuf> = m
                        .dirs
                        .values()
                        .map(|d| self.root.join(&d.generation))
                        .collect();
                    for p in m.published.values() {
                        g.extend(p.versions.iter().map(|v| self.root.join(&v.generation)));
                    }
                    let g = std::sync::Arc::new(g);
                    refs.insert(v, g.clone());
                    g
                }
            };
            referenced.extend(gens.iter().cloned());
        }
        Ok(referenced)
    }

    /// Marks the generation `key`'s link points to as superseded now (a
    /// [`SUPERSEDED`] file, created or touched), unless it is `generation`:
    /// its retention starts now, and garbage collection looks again once it
    /// is over. A generation without the mark that no retained manifest
    /// references was never committed (a crashed run's) and goes at once.
    fn mark_superseded(&self, key: &str, generation: &str) {
        let link = self.root.join(key);
        let Ok(target) = std::fs::read_link(&link) else {
            return;
        };
        let old = link.parent().unwrap_or(&self.root).join(target);
        if old.ends_with(generation) || !old.is_dir() {
            return;
        }
        let now = std::time::SystemTime::now();
        let mark = old.join(SUPERSEDED);
        // Best effort: without the mark the generation goes at the next look.
        if let Ok(f) = std::fs::File::create(&mark) {
            let _ = f.set_modified(now);
        }
        let mut sched = self
            .gc_schedule
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let at = now + self.retention;
        sched.next_scan = Some(sched.next_scan.map_or(at, |t| t.min(at)));
    }

    /// Removes manifests older than the last [`RETAINED_MANIFESTS`];
    /// generations none of those references, once superseded for the
    /// retention time (at once if never committed: a crashed run's); stale
    /// temp files; delivery pages no longer named; and run records past
    /// [`RUNS_KEPT_PER_PIPELINE`].
    /// Generations are listed only when one may be due (or a minute has
    /// passed), so a commit's cost does not grow with what is kept.
    pub fn collect_garbage(&self, _guard: &CommitGuard) -> Result<()> {
        crate::failpoint_io("gc").map_err(io_err("collect garbage in", &self.root))?;
        let versions = self.manifest_versions()?;
        let keep_from = versions.len().saturating_sub(RETAINED_MANIFESTS);
        for &v in &versions[..keep_from] {
            let p = self.manifest_path(v);
            std::fs::remove_file(&p).map_err(io_err("remove", &p))?;
        }
        let now = std::time::SystemTime::now();
        let (scan, prune) = {
            let mut sched = self
                .gc_schedule
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let scan = sched.next_scan.is_none_or(|t| now >= t);
            let prune = scan || sched.runs_written >= PRUNE_RUNS_EVERY;
            if prune {
                sched.runs_written = 0;
            }
            (scan, prune)
        };
        if prune {
            self.prune_runs()?;
        }
        // Delivery pages the current manifest does not name: a commit that
        // wrote them and then failed or died (commits hold the lock too).
        let named: HashSet<String> = self
            .manifest_shared()?
            .deliveries
            .values()
            .filter_map(|d| d.pages.clone())
            .collect();
        let d = self.meta("deliveries");
        for e in std::fs::read_dir(&d)
            .map_err(io_err("read", &d))?
            .filter_map(|e| e.ok())
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with(".tmp-") && !named.contains(&name) {
                let _ = std::fs::remove_file(e.path());
            }
        }
        if !scan {
            return Ok(());
        }
        let referenced = self.referenced_generations(&versions[keep_from..])?;
        let mut next = now + GC_MAX_INTERVAL;
        let gen_root = self.meta("gen");
        for dir in subdirs(&gen_root)? {
            for g in subdirs(&dir)? {
                if referenced.contains(g.as_path()) || is_being_built(&g) {
                    continue;
                }
                let superseded = std::fs::metadata(g.join(SUPERSEDED))
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::UNIX_EPOCH);
                let expires = superseded + self.retention;
                if now >= expires {
                    std::fs::remove_dir_all(&g).map_err(io_err("remove", &g))?;
                } else {
                    next = next.min(expires);
                }
            }
        }
        self.gc_schedule
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .next_scan = Some(next);
        for sub in [
            "_ironlake/manifests",
            "_ironlake/runs",
            "_ironlake/journal",
            "_ironlake/deliveries",
            "tables",
            "quarantine",
            "published",
        ] {
            let d = self.root.join(sub);
            for e in std::fs::read_dir(&d)
                .map_err(io_err("read", &d))?
                .filter_map(|e| e.ok())
            {
                if is_stale_temp(&e.file_name().to_string_lossy()) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit_dir(wh: &Warehouse, key: &str, run: &str, parts: &[&str]) -> Manifest {
        let guard = wh.lock().unwrap();
        let base = wh.manifest().unwrap();
        let mut g = wh.begin_generation(&guard, &base, key, run).unwrap();
        for p in parts {
            let path = g.partition_dir(p).unwrap().join(g.file_name(0));
            std::fs::write(&path, b"x").unwrap();
            let entry = FileEntry {
                name: g.file_name(0),
                rows: 1,
                bytes: 1,
            };
            g.set_partition(p, vec![entry]);
        }
        let change = wh.finish_generation(g).unwrap();
        let record = RunRecord::start(run, "p", RunType::Import, "t");
        wh.commit(&guard, &base, vec![change], BTreeMap::new(), record)
            .unwrap()
    }

    /// Stages one file for partition `part` of `key`'s live generation.
    fn stage_in_place(
        wh: &Warehouse,
        base: &Manifest,
        key: &str,
        run: &str,
        part: &str,
    ) -> InPlace {
        let mut p = wh.begin_in_place(base, key, run).unwrap();
        std::fs::write(p.staged_path(part, 0).unwrap(), b"y").unwrap();
        let entry = FileEntry {
            name: String::new(),
            rows: 1,
            bytes: 1,
        };
        p.add_file(part, 0, entry, run);
        p
    }

    /// Sets the modification time of directory `dir` to `t`.
    fn set_mtime(dir: &Path, t: std::time::SystemTime) {
        std::fs::File::open(dir).unwrap().set_modified(t).unwrap();
    }

    #[test]
    fn the_shared_manifest_follows_commits_of_other_handles_by_the_directory_time() {
        let dir = tempfile::tempdir().unwrap();
        let (reader, writer) = (
            Warehouse::open(dir.path()).unwrap(),
            Warehouse::open(dir.path()).unwrap(),
        );
        let mdir = reader.meta("manifests");
        commit_dir(&writer, "tables/t", "r1", &["2019Q1"]);
        assert_eq!(reader.manifest_shared().unwrap().version, 1);
        // Changed long ago: a listing now vouches for the directory's time.
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        set_mtime(&mdir, old);
        assert_eq!(reader.manifest_shared().unwrap().version, 1);
        // While that time stands, calls do not list the directory: a
        // manifest slipped in under the same time goes unseen ...
        std::fs::write(mdir.join("m-00000000000000000099.json"), b"{").unwrap();
        set_mtime(&mdir, old);
        assert_eq!(reader.manifest_shared().unwrap().version, 1);
        std::fs::remove_file(mdir.join("m-00000000000000000099.json")).unwrap();
        set_mtime(&mdir, old);
        // ... and a commit, which moves it, is seen on the next call.
        commit_dir(&writer, "tables/t", "r2", &["2019Q2"]);
        assert_eq!(reader.manifest_shared().unwrap().version, 2);
        // Listed within the margin of the change: the next call lists
        // again, and sees a commit however close behind.
        commit_dir(&writer, "tables/t", "r3", &["2019Q3"]);
        assert_eq!(reader.manifest_shared().unwrap().version, 3);
        let now = std::fs::metadata(&mdir).unwrap().modified().unwrap();
        commit_dir(&writer, "tables/t", "r4", &["2019Q4"]);
        set_mtime(&mdir, now);
        assert_eq!(reader.manifest_shared().unwrap().version, 4);
    }

    #[test]
    fn a_delivery_stands_only_while_its_table_quarantine_and_cursor_do() {
        let dir = tempfile::tempdir().unwrap();
        let wh = Warehouse::open(dir.path()).unwrap();
        commit_dir(&wh, "tables/t", "r1", &["2019Q1"]);
        let m = commit_dir(&wh, "quarantine/t", "r1", &["2019Q1"]);
        let mut m = m.clone();
        m.deliveries.insert(
            "t".into(),
            Delivery {
                pipeline: "p".into(),
                run_id: "r1".into(),
                fingerprint: "f".into(),
                state: m.table_state("t"),
                cursor: Some("2019Q1".into()),
                bytes: 0,
                pages: None,
            },
        );
        assert_eq!(
            m.standing_delivery("t", Some("2019Q1"))
                .map(|d| d.run_id.as_str()),
            Some("r1")
        );
        assert!(m.standing_delivery("t", None).is_none(), "another cursor");
        assert!(
            m.standing_delivery("u", Some("2019Q1")).is_none(),
            "another table"
        );
        // Other tables and published aggregates do not matter.
        let mut other = m.clone();
        other
            .dirs
            .insert("tables/u".into(), other.dirs["tables/t"].clone());
        assert!(other.standing_delivery("t", Some("2019Q1")).is_some());
        // Any change to the table's files or to its quarantine does.
        for key in ["tables/t", "quarantine/t"] {
            let mut changed = m.clone();
            let d = changed.dirs.get_mut(key).unwrap();
            d.partitions.get_mut("2019Q1").unwrap().files[0].rows += 1;
            assert!(
                changed.standing_delivery("t", Some("2019Q1")).is_none(),
                "{key}"
            );
            let mut gone = m.clone();
            gone.dirs.remove(key);
            assert!(
                gone.standing_delivery("t", Some("2019Q1")).is_none(),
                "{key}"
            );
        }
        // A feed's pages are written apart and read back; a name with a
        // path in it is refused.
        let pages: DeliveredPages = vec![vec![("http://h/a?p=1".into(), "\"e1\"".into())]];
        let name = wh.write_delivered_pages("r1", &pages).unwrap();
        assert_eq!(wh.delivered_pages(&name), Some(pages.clone()));
        assert_eq!(wh.delivered_pages("../manifests/x.json"), None);
        // Pages no manifest names (replaced, or of a commit that died after
        // writing them) go with the next garbage collection.
        let orphan = wh.write_delivered_pages("r2", &pages).unwrap();
        wh.collect_garbage(&wh.lock().unwrap()).unwrap();
        assert_eq!(wh.delivered_pages(&name), None);
        assert_eq!(wh.delivered_pages(&orphan), None);
    }

    #[test]
    fn appends_in_place_keep_the_generation_and_list_the_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let wh = Warehouse::open(dir.path()).unwrap();
        let first = commit_dir(&wh, "tables/t", "r-000001", &["2019Q1"]);
        let generation = first.dirs["tables/t"].generation.clone();
        let (_staging, _owner) = wh.staging_dir("r-000002").unwrap();
        let guard = wh.lock().unwrap();
        let p = stage_in_place(&wh, &first, "tables/t", "r-000002", "2019Q2");
        let change = wh.finish_in_place(p).unwrap();
        let record = RunRecord::start("r-000002", "p", RunType::Push, "t");
        let m = wh
            .commit(&guard, &first, vec![change], BTreeMap::new(), record)
            .unwrap();
        let d = &m.dirs["tables/t"];
        assert_eq!(d.generation, generation, "no new generation");
        assert_eq!(
            d.partitions["2019Q1"],
            first.dirs["tables/t"].partitions["2019Q1"]
        );
        let name = &d.partitions["2019Q2"].files[0].name;
        let file = dir
            .path()
            .join(&generation)
            .join("quarter=2019Q2")
            .join(name);
        assert_eq!(std::fs::read(&file).unwrap(), b"y");
        // Readers through the table's link see it too.
        assert!(
            dir.path()
                .join("tables/t/quarter=2019Q2")
                .join(name)
                .is_file()
        );
        assert_eq!(wh.manifest().unwrap(), m);
    }

    #[test]
    fn an_interrupted_append_rolls_forward_and_a_failed_one_is_undone() {
        let dir = tempfile::tempdir().unwrap();
        let wh = Warehouse::open(dir.path()).unwrap();
        let first = commit_dir(&wh, "tables/t", "r-000001", &["2019Q1"]);
        let guard = wh.lock().unwrap();
        let (_staging, _owner) = wh.staging_dir("r-000002").unwrap();
        let p = stage_in_place(&wh, &first, "tables/t", "r-000002", "2019Q1");
        let change = wh.finish_in_place(p).unwrap();
        let mut next = first.clone();
        next.version += 1;
        next.dirs.insert(change.key.clone(), change.state.clone());
        let journal = Journal {
            manifest: next.clone(),
            links: Vec::new(),
            appends: change.moves.clone(),
            run: None,
        };
        let to = dir.path().join(&change.moves[0].1);
        let jpath = wh.meta(&format!("journal/{:020}.json", next.version));
        let write_journal = || {
            let data = serde_json::to_vec(&journal).unwrap();
            fsutil::write_atomic(&jpath, &data).unwrap();
        };
        // Killed after the journal, before the move: the next start finishes it.
        write_journal();
        wh.recover(&guard).unwrap();
        assert!(to.is_file());
        assert_eq!(wh.manifest().unwrap(), next);
        // A commit that moved its file but failed before its manifest: undone.
        let (_staging, _owner) = wh.staging_dir("r-000003").unwrap();
        let p = stage_in_place(&wh, &next, "tables/t", "r-000003", "2019Q1");
        let change = wh.finish_in_place(p).unwrap();
        let (from, to) = change.moves[0].clone();
        std::fs::rename(dir.path().join(&from), dir.path().join(&to)).unwrap();
        let mut failed = next.clone();
        failed.version += 1;
        let journal = Journal {
            manifest: failed.clone(),
            links: Vec::new(),
            appends: change.moves.clone(),
            run: None,
        };
        let data = serde_json::to_vec(&journal).unwrap();
        let jpath = wh.meta(&format!("journal/{:020}.json", failed.version));
        fsutil::write_atomic(&jpath, &data).unwrap();
        wh.discard_uncommitted(&next).unwrap();
        assert!(
            !dir.path().join(&to).exists(),
            "the uncommitted file is gone"
        );
        assert!(!jpath.exists());
    }

    #[test]
    fn directory_keys_round_trip() {
        for k in [
            DirKey::Table("bank_loans".into()),
            DirKey::Quarantine("bank_loans".into()),
            DirKey::Published("loan_growth".into()),
        ] {
            assert_eq!(DirKey::parse(&k.key()), Some(k.clone()));
        }
        assert_eq!(DirKey::Quarantine("x".into()).sql_name(), "quarantine.x");
        assert_eq!(DirKey::parse("system/runs"), None);
    }

    #[test]
    fn a_commit_swings_the_link_writes_the_manifest_and_keeps_untouched_partitions() {
        let dir = tempfile::tempdir().unwrap();
        let wh = Warehouse::open_with(dir.path(), std::time::Duration::ZERO).unwrap();
        let m1 = commit_dir(&wh, "tables/t", "r-000001", &["2019Q1", "2019Q2"]);
        assert_eq!(m1.version, 1);
        let m2 = commit_dir(&wh, "tables/t", "r-000002", &["2019Q2"]);
        assert_eq!(wh.manifest().unwrap(), m2);
        let state = &m2.dirs["tables/t"];
        // 2019Q1 was hard-linked into the new generation, 2019Q2 rewritten.
        assert_eq!(state.partitions.len(), 2);
        let link = std::fs::read_link(dir.path().join("tables/t")).unwrap();
        assert!(
            link.to_string_lossy().ends_with(&state.generation),
            "{link:?}"
        );
        assert!(
            dir.path()
                .join(&state.generation)
                .join("quarter=2019Q1")
                .is_dir()
        );
        assert_eq!(wh.runs().unwrap().len(), 2);
    }

    #[test]
    fn superseded_generations_stay_for_the_retention_then_go() {
        let dir = tempfile::tempdir().unwrap();
        let keep = Warehouse::open_with(dir.path(), std::time::Duration::from_secs(3600)).unwrap();
        let first = commit_dir(&keep, "tables/t", "r-000001", &["2019Q1"]);
        let gen1 = dir.path().join(&first.dirs["tables/t"].generation);
        for i in 2..7 {
            commit_dir(&keep, "tables/t", &format!("r-00000{i}"), &["2019Q1"]);
        }
        assert!(
            gen1.is_dir(),
            "removed although superseded less than an hour ago"
        );
        let now = Warehouse::open_with(dir.path(), std::time::Duration::ZERO).unwrap();
        commit_dir(&now, "tables/t", "r-000009", &["2019Q1"]);
        assert!(
            !gen1.exists(),
            "kept although no retained manifest names it"
        );
    }

    #[test]
    fn a_generation_being_built_without_the_lock_survives_garbage_collection() {
        let dir = tempfile::tempdir().unwrap();
        let wh = Warehouse::open_with(dir.path(), std::time::Duration::ZERO).unwrap();
        let base = wh.manifest().unwrap();
        let g = wh
            .begin_generation_unlocked(&base, "published/x", "r-000001", DirState::default())
            .unwrap();
        commit_dir(&wh, "tables/t", "r-000002", &["2019Q1"]);
        assert!(g.dir().is_dir());
        let path = g.dir().to_path_buf();
        drop(g);
        commit_dir(&wh, "tables/t", "r-000003", &["2019Q1"]);
        assert!(
            !path.exists(),
            "an abandoned unlocked generation is collected"
        );
    }

    #[test]
    fn run_records_past_the_limit_per_pipeline_are_pruned_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let wh = Warehouse::open(dir.path()).unwrap();
        for i in 0..RUNS_KEPT_PER_PIPELINE + 5 {
            let mut r = RunRecord::start(&format!("r-{i:06}"), "p", RunType::Ingest, "t");
            r.started_at = chrono::DateTime::from_timestamp(1_546_300_800 + i as i64, 0).unwrap();
            r.outcome = Outcome::Succeeded;
            wh.write_run(&r).unwrap();
        }
        wh.write_run(&RunRecord::start("other-1", "q", RunType::Ingest, "t"))
            .unwrap();
        let guard = wh.lock().unwrap();
        wh.collect_garbage(&guard).unwrap();
        let runs = wh.runs().unwrap();
        assert_eq!(
            runs.iter().filter(|r| r.pipeline == "p").count(),
            RUNS_KEPT_PER_PIPELINE
        );
        assert!(runs.iter().any(|r| r.run_id == "other-1"));
        assert!(
            !runs.iter().any(|r| r.run_id == "r-000000"),
            "the oldest is gone"
        );
    }
}
