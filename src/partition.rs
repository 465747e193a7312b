//! Partition: valid rows into per-quarter Arrow batches, rejected records
//! into quarantine rows; both spilled to the run's staging directory so
//! memory stays bounded whatever the feed's size. Valid rows are encoded
//! as they spill into one Parquet file per window and quarter, written as
//! a warehouse file would be, so a commit can keep such a file as it is;
//! rejected records spill as Arrow IPC files.

use crate::config::schema::{ColumnType, TableSchema};
use crate::domain::Quarter;
use crate::validate::Value;
use crate::warehouse::merge::{DeliveryHash, ParquetFile};
use arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Decimal128Builder, Int32Builder, Int64Builder,
    RecordBatch, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::ipc::reader::FileReader;
use arrow::ipc::writer::FileWriter;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;

/// Valid rows buffered per quarter before they are sent to be staged
/// (about 1.6 MB of loans, under two feed pages). The buffers, the staging
/// queue and the spill being encoded hold at most a few of these: with
/// 32K rows, a 10.2M-row backfill peaked at 109-111 MB against 95-97 MB
/// at 1.3M rows; with 8K, at 92-94 MB against 81-84 MB, in the same time
/// (`feed-sim` on the same 2 cores; `import` of a 5.1M-row CSV: 139-145 MB
/// instead of 151-163, its time within the machine's drift).
const SPILL_ROWS: usize = 8 * 1024;
/// Valid rows buffered across all quarters before spilling everything.
const SPILL_TOTAL_ROWS: usize = 4 * SPILL_ROWS;
/// Rejected records buffered per quarantine partition before spilling.
const SPILL_QUARANTINE_ROWS: usize = 32 * 1024;
/// Longest raw record text kept in the quarantine.
pub const MAX_RAW_BYTES: usize = 64 * 1024;
/// Memory the staged Parquet writers may hold for their unfinished row
/// groups before the largest one ends its row group early.
const STAGED_MEMORY_BYTES: usize = 64 << 20;
/// Raw text buffered for one quarantine partition before it is spilled
/// (also keeps each spilled batch far below Utf8's 2 GiB offset limit).
const SPILL_QUARANTINE_BYTES: usize = 8 << 20;

/// Errors while buffering or spilling.
#[derive(Debug, thiserror::Error)]
#[error("{context}: {source}")]
pub struct PartitionError {
    /// What was being done.
    pub context: String,
    /// The underlying error, kept whole.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

fn perr<E: Into<Box<dyn std::error::Error + Send + Sync>>>(
    context: impl Into<String>,
) -> impl FnOnce(E) -> PartitionError {
    let context = context.into();
    move |e| PartitionError {
        context,
        source: e.into(),
    }
}

enum ColBuilder {
    Utf8(StringBuilder),
    Bool(BooleanBuilder),
    I32(Int32Builder),
    I64(Int64Builder),
    Date(Date32Builder),
    Dec(Decimal128Builder, u8, u8),
}

impl ColBuilder {
    fn new(t: ColumnType, rows: usize, text_bytes: usize) -> ColBuilder {
        match t {
            ColumnType::Utf8 => ColBuilder::Utf8(StringBuilder::with_capacity(rows, text_bytes)),
            ColumnType::Boolean => ColBuilder::Bool(BooleanBuilder::with_capacity(rows)),
            ColumnType::Int32 => ColBuilder::I32(Int32Builder::with_capacity(rows)),
            ColumnType::Int64 => ColBuilder::I64(Int64Builder::with_capacity(rows)),
            ColumnType::Date32 => ColBuilder::Date(Date32Builder::with_capacity(rows)),
            ColumnType::Decimal128 { precision, scale } => {
                ColBuilder::Dec(Decimal128Builder::with_capacity(rows), precision, scale)
            }
        }
    }

    fn push(&mut self, v: &Value) {
        match (self, v) {
            (ColBuilder::Utf8(b), Value::Str(s)) => b.append_value(s),
            (ColBuilder::Utf8(b), _) => b.append_null(),
            (ColBuilder::Bool(b), Value::Bool(x)) => b.append_value(*x),
            (ColBuilder::Bool(b), _) => b.append_null(),
            (ColBuilder::I32(b), Value::I32(x)) => b.append_value(*x),
            (ColBuilder::I32(b), _) => b.append_null(),
            (ColBuilder::I64(b), Value::I64(x)) => b.append_value(*x),
            (ColBuilder::I64(b), _) => b.append_null(),
            (ColBuilder::Date(b), Value::Date(x)) => b.append_value(*x),
            (ColBuilder::Date(b), _) => b.append_null(),
            (ColBuilder::Dec(b, _, _), Value::Dec(x)) => b.append_value(*x),
            (ColBuilder::Dec(b, _, _), _) => b.append_null(),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            ColBuilder::Utf8(b) => Arc::new(b.finish()),
            ColBuilder::Bool(b) => Arc::new(b.finish()),
            ColBuilder::I32(b) => Arc::new(b.finish()),
            ColBuilder::I64(b) => Arc::new(b.finish()),
            ColBuilder::Date(b) => Arc::new(b.finish()),
            ColBuilder::Dec(b, p, s) => Arc::new(
                b.finish()
                    .with_precision_and_scale(*p, *s as i8)
                    .expect("schema precision and scale are valid"),
            ),
        }
    }
}

/// Valid rows of one quarter being built into a batch (on any thread).
pub struct RowBuffer {
    cols: Vec<ColBuilder>,
    rows: usize,
}

impl RowBuffer {
    /// An empty buffer for rows of `schema`, with room for `rows` rows and
    /// `text_bytes[i]` bytes of text in column `i` before it has to grow.
    /// Sized from the rows it will get, a page's batch is built without
    /// reallocating and holds no spare capacity while it waits in queues.
    pub fn with_capacity(schema: &TableSchema, rows: usize, text_bytes: &[usize]) -> RowBuffer {
        RowBuffer {
            cols: schema
                .columns
                .iter()
                .zip(text_bytes)
                .map(|(c, &text)| ColBuilder::new(c.data_type, rows, text))
                .collect(),
            rows: 0,
        }
    }

    /// Adds a row, its values in schema column order.
    pub fn push(&mut self, values: &[Value]) {
        for (b, v) in self.cols.iter_mut().zip(values) {
            b.push(v);
        }
        self.rows += 1;
    }

    /// The rows so far as one batch of `schema` (the table's Arrow schema).
    pub fn finish(&mut self, schema: &SchemaRef) -> RecordBatch {
        let cols = self.cols.iter_mut().map(ColBuilder::finish).collect();
        self.rows = 0;
        RecordBatch::try_new(schema.clone(), cols).expect("builders match the schema")
    }
}

/// Batches of one quarter waiting to be spilled.
#[derive(Default)]
struct Pending {
    batches: Vec<RecordBatch>,
    rows: usize,
}

/// The schema of quarantine files.
pub fn quarantine_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("fingerprint", DataType::Utf8, false),
        Field::new("run_id", DataType::Utf8, false),
        Field::new("pipeline", DataType::Utf8, false),
        Field::new(
            "received_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("source", DataType::Utf8, false),
        Field::new("record_no", DataType::Int64, false),
        Field::new("field", DataType::Utf8, true),
        Field::new("reason", DataType::Utf8, false),
        Field::new("raw", DataType::Utf8, false),
        // Added later: files written before it read it as null.
        Field::new("reason_code", DataType::Utf8, true),
    ]))
}

/// One rejected record.
#[derive(Debug, Clone)]
pub struct QuarantineRow {
    /// Request URL of the page (secrets redacted).
    pub source: String,
    /// Position in the page.
    pub record_no: u64,
    /// Field concerned.
    pub field: Option<String>,
    /// Why it was rejected, with the value.
    pub reason: String,
    /// Stable code of the kind of problem, for grouping.
    pub code: &'static str,
    /// The record as sent (truncated past [`MAX_RAW_BYTES`]).
    pub raw: String,
}

pub use crate::primitives::fingerprint;

struct QuarantineBuffer {
    fingerprint: StringBuilder,
    source: StringBuilder,
    record_no: Int64Builder,
    field: StringBuilder,
    reason: StringBuilder,
    raw: StringBuilder,
    code: StringBuilder,
    rows: usize,
    bytes: usize,
}

impl QuarantineBuffer {
    fn new() -> Self {
        QuarantineBuffer {
            fingerprint: StringBuilder::new(),
            source: StringBuilder::new(),
            record_no: Int64Builder::new(),
            field: StringBuilder::new(),
            reason: StringBuilder::new(),
            raw: StringBuilder::new(),
            code: StringBuilder::new(),
            rows: 0,
            bytes: 0,
        }
    }

    fn finish(&mut self, run_id: &str, pipeline: &str, received_at: i64) -> RecordBatch {
        let n = self.rows;
        self.rows = 0;
        self.bytes = 0;
        let mut ts = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
        let mut run = StringBuilder::new();
        let mut pipe = StringBuilder::new();
        for _ in 0..n {
            ts.append_value(received_at);
            run.append_value(run_id);
            pipe.append_value(pipeline);
        }
        RecordBatch::try_new(
            quarantine_schema(),
            vec![
                Arc::new(self.fingerprint.finish()),
                Arc::new(run.finish()),
                Arc::new(pipe.finish()),
                Arc::new(ts.finish()),
                Arc::new(self.source.finish()),
                Arc::new(self.record_no.finish()),
                Arc::new(self.field.finish()),
                Arc::new(self.reason.finish()),
                Arc::new(self.raw.finish()),
                Arc::new(self.code.finish()),
            ],
        )
        .expect("quarantine builders match the schema")
    }
}

/// Partition key of quarantined records whose period could not be read.
pub const UNKNOWN_QUARTER: &str = "unknown";

/// Buffers a run's rows by quarter and spills them to staging. Rows come
/// in windows (the quarters of a feed fetched side by side); each window's
/// rows stay apart so the spills of a quarter are in window order, as if
/// the windows had come one after the other.
pub struct Partitioner {
    schema: SchemaRef,
    dir: PathBuf,
    run_id: String,
    pipeline: String,
    received_at: i64,
    buffers: BTreeMap<(usize, Quarter), Pending>,
    buffered: usize,
    /// The staged Parquet file of each window's rows of a quarter.
    staged: BTreeMap<(usize, Quarter), PathBuf>,
    stager: Stager,
    quarantine: BTreeMap<(usize, String), QuarantineBuffer>,
    quarantine_spills: BTreeMap<(usize, String), Vec<PathBuf>>,
    /// Fingerprints each window's rows of a quarter, as pushed.
    fingerprints: Fingerprinter,
    /// Windows said to be complete: their files are closed.
    complete: std::collections::BTreeSet<usize>,
    seq: usize,
}

impl Partitioner {
    /// A partitioner spilling into `dir`.
    pub fn new(table: &TableSchema, dir: &Path, run_id: &str, pipeline: &str) -> Partitioner {
        Partitioner {
            schema: table.arrow_schema(),
            dir: dir.to_path_buf(),
            run_id: run_id.to_string(),
            pipeline: pipeline.to_string(),
            received_at: chrono::Utc::now().timestamp_micros(),
            buffers: BTreeMap::new(),
            buffered: 0,
            staged: BTreeMap::new(),
            stager: Stager::default(),
            quarantine: BTreeMap::new(),
            quarantine_spills: BTreeMap::new(),
            fingerprints: Fingerprinter::default(),
            complete: std::collections::BTreeSet::new(),
            seq: 0,
        }
    }

    /// Says that `window` will get no more rows or rejected records: its
    /// buffers are spilled and its staged files closed, so memory does not
    /// grow with the windows a run has finished.
    pub fn window_done(&mut self, window: usize) -> Result<(), PartitionError> {
        for k in keys_of(&self.buffers, window) {
            self.spill_quarter(k)?;
            self.buffers.remove(&k);
        }
        for k in keys_of(&self.quarantine, window) {
            self.spill_quarantine(&k)?;
            self.quarantine.remove(&k);
        }
        let paths = keys_of(&self.staged, window)
            .iter()
            .map(|k| self.staged[k].clone())
            .collect();
        self.complete.insert(window);
        self.stager.close(paths)
    }

    /// An error if `window` was said to be complete.
    fn still_open(&self, window: usize) -> Result<(), PartitionError> {
        if self.complete.contains(&window) {
            return Err(PartitionError {
                context: format!("window {window}"),
                source: "data arrived after the window was complete".into(),
            });
        }
        Ok(())
    }

    /// Adds valid rows of `quarter` from `window` (a batch of the table's Arrow schema).
    pub fn push_batch(
        &mut self,
        window: usize,
        quarter: Quarter,
        batch: RecordBatch,
    ) -> Result<(), PartitionError> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        self.still_open(window)?;
        self.fingerprints
            .push(&self.schema, (window, quarter), batch.clone());
        let buf = self.buffers.entry((window, quarter)).or_default();
        buf.batches.push(batch);
        buf.rows += n;
        self.buffered += n;
        if buf.rows >= SPILL_ROWS {
            self.spill_quarter((window, quarter))?;
        } else if self.buffered >= SPILL_TOTAL_ROWS {
            self.spill_all()?;
        }
        Ok(())
    }

    /// The table's Arrow schema, which pushed batches have.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Adds a rejected record; rejected records spill like valid rows, so a
    /// feed of nothing but bad records cannot fill the memory.
    pub fn reject(
        &mut self,
        window: usize,
        quarter: Option<Quarter>,
        row: QuarantineRow,
    ) -> Result<(), PartitionError> {
        self.still_open(window)?;
        let part = quarter.map_or_else(|| UNKNOWN_QUARTER.to_string(), |q| q.to_string());
        let key = (window, part);
        let b = self
            .quarantine
            .entry(key.clone())
            .or_insert_with(QuarantineBuffer::new);
        let mut raw = row.raw;
        if raw.len() > MAX_RAW_BYTES {
            let mut cut = MAX_RAW_BYTES;
            while !raw.is_char_boundary(cut) {
                cut -= 1;
            }
            let total = raw.len();
            raw.truncate(cut);
            raw.push_str(&format!("…[truncated: {total} bytes in all]"));
        }
        b.fingerprint
            .append_value(fingerprint(&raw, row.field.as_deref(), &row.reason));
        b.source.append_value(&row.source);
        b.record_no.append_value(row.record_no as i64);
        b.field.append_option(row.field.as_deref());
        b.reason.append_value(&row.reason);
        b.raw.append_value(&raw);
        b.code.append_value(row.code);
        b.rows += 1;
        b.bytes += raw.len() + row.reason.len() + row.source.len();
        if b.rows >= SPILL_QUARANTINE_ROWS || b.bytes >= SPILL_QUARANTINE_BYTES {
            self.spill_quarantine(&key)?;
        }
        Ok(())
    }

    fn spill_quarantine(&mut self, key: &(usize, String)) -> Result<(), PartitionError> {
        let batch = {
            let Some(b) = self.quarantine.get_mut(key) else {
                return Ok(());
            };
            if b.rows == 0 {
                return Ok(());
            }
            b.finish(&self.run_id, &self.pipeline, self.received_at)
        };
        let path = self.spill_path(&format!("quarantine-{}-{}", key.1, key.0), "arrow");
        write_ipc(&path, &batch.schema(), std::slice::from_ref(&batch))?;
        self.quarantine_spills
            .entry(key.clone())
            .or_default()
            .push(path);
        Ok(())
    }

    fn spill_path(&mut self, what: &str, extension: &str) -> PathBuf {
        self.seq += 1;
        self.dir.join(format!("{what}-{:06}.{extension}", self.seq))
    }

    fn spill_quarter(&mut self, key: (usize, Quarter)) -> Result<(), PartitionError> {
        let Some(buf) = self.buffers.get_mut(&key) else {
            return Ok(());
        };
        if buf.rows == 0 {
            return Ok(());
        }
        self.buffered -= buf.rows;
        let batches = std::mem::take(buf).batches;
        let path = match self.staged.get(&key) {
            Some(p) => p.clone(),
            None => {
                let p = self.spill_path(&format!("rows-{}-{}", key.1, key.0), "parquet");
                self.staged.insert(key, p.clone());
                p
            }
        };
        self.stager.write(&self.schema, path, batches)
    }

    fn spill_all(&mut self) -> Result<(), PartitionError> {
        let keys: Vec<(usize, Quarter)> = self.buffers.keys().copied().collect();
        for k in keys {
            self.spill_quarter(k)?;
        }
        Ok(())
    }

    /// Spills everything and returns the spill files: rows by quarter, quarantine by partition.
    pub fn finish(mut self) -> Result<Spilled, PartitionError> {
        self.spill_all()?;
        self.stager.finish()?;
        let keys: Vec<(usize, String)> = self.quarantine.keys().cloned().collect();
        for k in keys {
            self.spill_quarantine(&k)?;
        }
        // Window by window: the keys sort by window first.
        let mut spilled = Spilled::default();
        for ((_, q), path) in std::mem::take(&mut self.staged) {
            spilled.rows.entry(q).or_default().push(path);
        }
        for ((_, part), paths) in self.quarantine_spills {
            spilled.quarantine.entry(part).or_default().extend(paths);
        }
        let mut by_quarter: BTreeMap<Quarter, Vec<Option<String>>> = BTreeMap::new();
        for ((_, q), f) in self.fingerprints.finish()? {
            by_quarter.entry(q).or_default().push(f.finish());
        }
        for (q, windows) in by_quarter {
            spilled.deliveries.insert(q, DeliveryHash::combine(windows));
        }
        Ok(spilled)
    }
}

/// The keys of `window` in a map keyed by window first.
fn keys_of<K: Clone, V>(map: &BTreeMap<(usize, K), V>, window: usize) -> Vec<(usize, K)> {
    map.keys().filter(|k| k.0 == window).cloned().collect()
}

/// What the staging thread is asked to do.
enum Stage {
    /// Append these rows to the staged file at this path (created at its first rows).
    Rows(PathBuf, Vec<RecordBatch>),
    /// Close these staged files: their window is complete.
    Close(Vec<PathBuf>),
    /// Close every staged file: the run's rows are all in.
    Finish,
}

/// Spills waiting for the staging thread beyond the one it encodes. Each
/// is up to [`SPILL_ROWS`] rows of Arrow arrays. When spills were 32K
/// rows (about 5 MB of loans), the queue's depth was most of what a long
/// backfill held that a short one did not. A backfill of 7.9M loan rows
/// (`feed-sim --seed 11 --enterprises 310000`, 12 quarters) peaked at 119-128 MB with 4 against
/// 83-86 MB for 1M rows (38,750 enterprises); with 1, at 111-119 MB against
/// 89-93 MB, in the same time (5.2-5.9 s either way, `feed-sim` sharing the
/// 2 cores): the encoding, not the queue, sets the pace.
const STAGE_QUEUE: usize = 1;

/// Encodes spilled rows into their staged Parquet files on a thread of its
/// own, so the thread that partitions does not wait for the encoding. The
/// unfinished row groups of all files together stay under
/// [`STAGED_MEMORY_BYTES`]. Dropped without [`Stager::finish`] (a failed
/// run), it leaves its files unfinished for the staging directory's removal.
#[derive(Default)]
struct Stager {
    tx: Option<mpsc::SyncSender<Stage>>,
    thread: Option<std::thread::JoinHandle<Result<(), PartitionError>>>,
}

impl Stager {
    fn write(
        &mut self,
        schema: &SchemaRef,
        path: PathBuf,
        batches: Vec<RecordBatch>,
    ) -> Result<(), PartitionError> {
        let tx = self.tx.get_or_insert_with(|| {
            let (tx, rx) = mpsc::sync_channel::<Stage>(STAGE_QUEUE);
            let schema = schema.clone();
            self.thread = Some(std::thread::spawn(move || stage_rows(&schema, &rx)));
            tx
        });
        if tx.send(Stage::Rows(path, batches)).is_err() {
            // The thread stopped at an error: report it.
            return self.join();
        }
        Ok(())
    }

    /// Closes the staged files at `paths` (none of which gets rows again).
    fn close(&mut self, paths: Vec<PathBuf>) -> Result<(), PartitionError> {
        let Some(tx) = &self.tx else {
            return Ok(());
        };
        if paths.is_empty() || tx.send(Stage::Close(paths)).is_ok() {
            return Ok(());
        }
        self.join()
    }

    /// Closes every staged file; the first error of the staging thread.
    fn finish(&mut self) -> Result<(), PartitionError> {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Stage::Finish);
        }
        self.join()
    }

    fn join(&mut self) -> Result<(), PartitionError> {
        self.tx = None;
        join_worker(self.thread.take(), STAGING).and_then(|r| r.unwrap_or(Ok(())))
    }
}

/// What a worker thread returned (`None` when none was started), or an
/// error saying what it was doing when it panicked.
fn join_worker<T>(
    thread: Option<std::thread::JoinHandle<T>>,
    doing: &str,
) -> Result<Option<T>, PartitionError> {
    match thread.map(std::thread::JoinHandle::join) {
        None => Ok(None),
        Some(Ok(r)) => Ok(Some(r)),
        Some(Err(_)) => Err(PartitionError {
            context: doing.into(),
            source: "the thread panicked".into(),
        }),
    }
}

impl Drop for Stager {
    fn drop(&mut self) {
        let _ = self.join();
    }
}

/// What the staging thread's errors say it was doing (they name the file).
const STAGING: &str = "staging the run's rows";

/// The staging thread: appends rows to their files until told to finish.
fn stage_rows(schema: &SchemaRef, rx: &mpsc::Receiver<Stage>) -> Result<(), PartitionError> {
    let mut files: BTreeMap<PathBuf, ParquetFile> = BTreeMap::new();
    for job in rx {
        let (path, batches) = match job {
            Stage::Rows(path, batches) => (path, batches),
            Stage::Close(paths) => {
                for path in paths {
                    if let Some(file) = files.remove(&path) {
                        file.close().map_err(perr(STAGING))?;
                    }
                }
                continue;
            }
            Stage::Finish => {
                for file in files.into_values() {
                    file.close().map_err(perr(STAGING))?;
                }
                return Ok(());
            }
        };
        let file = match files.entry(path) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                let f = ParquetFile::create(e.key(), schema.clone()).map_err(perr(STAGING))?;
                e.insert(f)
            }
        };
        for b in &batches {
            file.write(b).map_err(perr(STAGING))?;
        }
        let held: usize = files.values().map(ParquetFile::memory_size).sum();
        if held > STAGED_MEMORY_BYTES
            && let Some(f) = files.values_mut().max_by_key(|f| f.memory_size())
        {
            f.flush().map_err(perr(STAGING))?;
        }
    }
    // Dropped without `finish`: the run failed.
    Ok(())
}

/// Pushed batches waiting for the fingerprinting thread. Each keeps a
/// page's rows (about 1 MB of loans) alive after they are spilled: with 16,
/// a 10.2M-row backfill peaked at 137-139 MB, with 4 at 132-133 MB (the
/// old and new binaries taking turns on one `feed-sim`; no change at
/// 1.3M rows, nor in time).
const FINGERPRINT_QUEUE: usize = 4;

/// Fingerprints pushed rows on a thread of its own, in push order, so the
/// thread that partitions does not wait for the hashing.
#[derive(Default)]
struct Fingerprinter {
    tx: Option<mpsc::SyncSender<((usize, Quarter), RecordBatch)>>,
    thread: Option<std::thread::JoinHandle<BTreeMap<(usize, Quarter), DeliveryHash>>>,
}

impl Fingerprinter {
    fn push(&mut self, schema: &SchemaRef, key: (usize, Quarter), batch: RecordBatch) {
        let tx = self.tx.get_or_insert_with(|| {
            let (tx, rx) = mpsc::sync_channel::<((usize, Quarter), RecordBatch)>(FINGERPRINT_QUEUE);
            let schema = schema.clone();
            self.thread = Some(std::thread::spawn(move || {
                let mut hashes: BTreeMap<(usize, Quarter), DeliveryHash> = BTreeMap::new();
                for (key, batch) in rx {
                    hashes
                        .entry(key)
                        .or_insert_with(|| DeliveryHash::new(&schema))
                        .update(&batch);
                }
                hashes
            }));
            tx
        });
        // A failed send means the thread panicked; `finish` reports it.
        let _ = tx.send((key, batch));
    }

    /// The fingerprints of everything pushed.
    fn finish(&mut self) -> Result<BTreeMap<(usize, Quarter), DeliveryHash>, PartitionError> {
        self.tx = None;
        Ok(join_worker(self.thread.take(), "fingerprinting the delivery")?.unwrap_or_default())
    }
}

impl Drop for Fingerprinter {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// A run's spilled data.
#[derive(Debug, Default)]
pub struct Spilled {
    /// Valid rows by quarter, in delivery order: a staged Parquet file per window.
    pub rows: BTreeMap<Quarter, Vec<PathBuf>>,
    /// Quarantined records by partition value.
    pub quarantine: BTreeMap<String, Vec<PathBuf>>,
    /// The fingerprint of each quarter's rows (see [`DeliveryHash`]),
    /// taken as they were pushed, so a commit need not read the spills to
    /// tell that a partition already holds exactly this delivery.
    pub deliveries: BTreeMap<Quarter, Option<String>>,
}

fn write_ipc(
    path: &Path,
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> Result<(), PartitionError> {
    let ctx = format!("spilling to {}", path.display());
    let file = std::fs::File::create(path).map_err(|e| perr(ctx.clone())(e))?;
    let file = std::io::BufWriter::new(file);
    let mut w = FileWriter::try_new(file, schema).map_err(|e| perr(ctx.clone())(e))?;
    for b in batches {
        w.write(b).map_err(|e| perr(ctx.clone())(e))?;
    }
    w.finish().map_err(|e| perr(ctx)(e))
}

/// Reads spill files back, in order (Parquet for rows, Arrow IPC for rejected records).
pub fn read_spills(paths: &[PathBuf]) -> Result<Vec<RecordBatch>, PartitionError> {
    let mut out = Vec::new();
    each_spilled_batch(paths, |b| {
        out.push(b);
        Ok::<_, PartitionError>(true)
    })?;
    Ok(out)
}

/// Calls `f` with each batch of the spill files in order, one batch in
/// memory at a time, until it returns false; returns whether it never did.
pub fn each_spilled_batch<E: From<PartitionError>>(
    paths: &[PathBuf],
    mut f: impl FnMut(RecordBatch) -> Result<bool, E>,
) -> Result<bool, E> {
    for p in paths {
        let ctx = format!("reading spill {}", p.display());
        if p.extension().is_some_and(|e| e == "parquet") {
            let r = crate::warehouse::merge::parquet_reader(p, None)
                .map_err(perr(ctx.clone()))?
                .build()
                .map_err(|e| perr(ctx.clone())(e))?;
            for b in r {
                if !f(b.map_err(|e| perr(ctx.clone())(e))?)? {
                    return Ok(false);
                }
            }
            continue;
        }
        let file = std::fs::File::open(p).map_err(|e| perr(ctx.clone())(e))?;
        let file = std::io::BufReader::with_capacity(1 << 20, file);
        let r = FileReader::try_new(file, None).map_err(|e| perr(ctx.clone())(e))?;
        for b in r {
            if !f(b.map_err(|e| perr(ctx.clone())(e))?)? {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> TableSchema {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/schemas/bank_loans.toml"
        ))
        .unwrap();
        crate::config::schema::load(&crate::config::SourceFile::new("bank_loans.toml", text))
            .unwrap()
    }

    /// A batch of `t`'s rows, one per id: the id in every text column.
    fn batch_of(t: &TableSchema, ids: &[String]) -> RecordBatch {
        let mut b = RowBuffer::with_capacity(t, ids.len(), &vec![0; t.columns.len()]);
        for id in ids {
            let values: Vec<Value> = t
                .columns
                .iter()
                .map(|c| match c.data_type {
                    ColumnType::Utf8 => Value::Str(id.as_str().into()),
                    ColumnType::Date32 => Value::Date(18_000),
                    ColumnType::Decimal128 { .. } => Value::Dec(1),
                    _ => Value::Null,
                })
                .collect();
            b.push(&values);
        }
        b.finish(&t.arrow_schema())
    }

    fn bad(i: usize, raw: String) -> QuarantineRow {
        QuarantineRow {
            source: "test".into(),
            record_no: i as u64,
            field: Some("balance".into()),
            reason: format!("bad {i}"),
            code: "decimal_syntax",
            raw,
        }
    }

    #[test]
    fn rejected_records_spill_like_valid_rows_and_read_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Partitioner::new(&table(), dir.path(), "run-1", "bank_loans");
        // 40 MB of rejected text: more than one spill's worth, never all in memory.
        let raw = "x".repeat(4000);
        for i in 0..10_000 {
            p.reject(0, None, bad(i, raw.clone())).unwrap();
        }
        assert!(
            !p.quarantine_spills.is_empty(),
            "rejected records were still all held in memory"
        );
        assert!(
            p.quarantine
                .values()
                .all(|b| b.bytes < SPILL_QUARANTINE_BYTES)
        );
        let spilled = p.finish().unwrap();
        let paths = &spilled.quarantine[UNKNOWN_QUARTER];
        assert!(paths.len() >= 5, "{}", paths.len());
        let rows: usize = read_spills(paths)
            .unwrap()
            .iter()
            .map(|b| b.num_rows())
            .sum();
        assert_eq!(rows, 10_000);
    }

    #[test]
    fn windows_pushed_side_by_side_spill_in_window_order() {
        let t = table();
        let dir = tempfile::tempdir().unwrap();
        let mut p = Partitioner::new(&t, dir.path(), "run-1", "bank_loans");
        let rows = |ids: &[&str]| {
            let ids: Vec<String> = ids.iter().map(|id| (*id).to_string()).collect();
            batch_of(&t, &ids)
        };
        let q: Quarter = "2019Q2".parse().unwrap();
        // Window 1 arrives first, and spills in between; window 0 still goes first.
        p.push_batch(1, q, rows(&["w1-a"])).unwrap();
        p.push_batch(0, q, rows(&["w0-a"])).unwrap();
        p.spill_all().unwrap();
        p.push_batch(1, q, rows(&["w1-b"])).unwrap();
        p.push_batch(0, q, rows(&["w0-b"])).unwrap();
        let spilled = p.finish().unwrap();
        let got: Vec<String> = read_spills(&spilled.rows[&q])
            .unwrap()
            .iter()
            .flat_map(|b| {
                let c = b
                    .column(0)
                    .as_any()
                    .downcast_ref::<arrow::array::StringArray>();
                c.unwrap()
                    .iter()
                    .map(|v| v.unwrap().to_string())
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(got, ["w0-a", "w0-b", "w1-a", "w1-b"]);
    }

    #[test]
    fn a_complete_window_is_closed_and_refuses_more_data() {
        let t = table();
        let dir = tempfile::tempdir().unwrap();
        let mut p = Partitioner::new(&t, dir.path(), "run-1", "bank_loans");
        let rows = |id: &str, n: usize| {
            let ids: Vec<String> = (0..n).map(|i| format!("{id}-{i}")).collect();
            batch_of(&t, &ids)
        };
        let q: Quarter = "2019Q2".parse().unwrap();
        // Window 0 spills (past SPILL_ROWS), keeps a buffered tail and a
        // rejected record, then completes while window 1 goes on.
        p.push_batch(0, q, rows("w0", SPILL_ROWS + 10)).unwrap();
        p.push_batch(1, q, rows("w1", 5)).unwrap();
        p.reject(0, Some(q), bad(7, "raw".into())).unwrap();
        p.window_done(0).unwrap();
        assert!(
            p.buffers.keys().all(|k| k.0 != 0),
            "window 0 still buffered"
        );
        assert!(p.quarantine.keys().all(|k| k.0 != 0));
        let late = p.push_batch(0, q, rows("late", 1)).unwrap_err();
        assert!(late.to_string().contains("window 0"), "{late}");
        assert!(p.reject(0, None, bad(8, "raw".into())).is_err());
        p.push_batch(1, q, rows("w1b", 5)).unwrap();
        let spilled = p.finish().unwrap();
        let batches = read_spills(&spilled.rows[&q]).unwrap();
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        assert_eq!(rows, SPILL_ROWS + 20);
        let first = batches[0]
            .column(0)
            .as_any()
            .downcast_ref::<arrow::array::StringArray>();
        assert_eq!(first.unwrap().value(0), "w0-0");
        let rejected = read_spills(&spilled.quarantine["2019Q2"]).unwrap();
        assert_eq!(rejected.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
    }

    #[test]
    fn raw_text_past_the_limit_is_cut_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Partitioner::new(&table(), dir.path(), "run-1", "bank_loans");
        p.reject(0, None, bad(1, "y".repeat(MAX_RAW_BYTES + 10)))
            .unwrap();
        let spilled = p.finish().unwrap();
        let b = &read_spills(&spilled.quarantine[UNKNOWN_QUARTER]).unwrap()[0];
        let raw = b
            .column(8)
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .unwrap()
            .value(0);
        assert!(raw.ends_with(&format!(
            "…[truncated: {} bytes in all]",
            MAX_RAW_BYTES + 10
        )));
        let code = b
            .column(9)
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .unwrap()
            .value(0);
        assert_eq!(code, "decimal_syntax");
    }
}
