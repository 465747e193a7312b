//! Partition files: writing Parquet the warehouse way (LZ4, page
//! statistics and page index, plain Utf8), reading it back, and merging new
//! rows into a partition by primary key (the newest delivery wins).

use super::{FileEntry, Result, WarehouseError};
use arrow::array::{ArrayRef, RecordBatch};
use arrow::compute::concat_batches;
use arrow::datatypes::SchemaRef;
use arrow::row::{RowConverter, SortField};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::arrow_writer::{ArrowColumnChunk, compute_leaves};
use parquet::basic::Compression;
use parquet::file::properties::{
    DEFAULT_DICTIONARY_PAGE_SIZE_LIMIT, EnabledStatistics, WriterProperties,
};
use parquet::schema::types::ColumnPath;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Rows per Parquet row group.
pub const ROW_GROUP_ROWS: usize = 128 * 1024;

/// Wraps an Arrow, Parquet or I/O error (or a message) with what was being done.
fn data_err<E: Into<Box<dyn std::error::Error + Send + Sync>>>(
    context: impl Into<String>,
) -> impl FnOnce(E) -> WarehouseError {
    let context = context.into();
    move |e| WarehouseError::Data {
        context,
        source: e.into(),
    }
}

/// Writer properties of every warehouse file of `schema`.
pub fn writer_properties(schema: &arrow::datatypes::Schema) -> WriterProperties {
    writer_properties_builder(schema).build()
}

fn writer_properties_builder(
    schema: &arrow::datatypes::Schema,
) -> parquet::file::properties::WriterPropertiesBuilder {
    let mut b = WriterProperties::builder()
        // LZ4 (the raw block format every current reader knows): against
        // zstd level 1 the benchmark's loan files are half as large again,
        // but they encode about 10% faster and decode 40% faster, which is
        // most of what a scan of them costs (see README, "File encoding").
        .set_compression(Compression::LZ4_RAW)
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_created_by(format!("ironlake {}", env!("CARGO_PKG_VERSION")));
    // Numbers, amounts and dates are stored uncompressed: LZ4 saved only
    // 0-35% of their bytes (amounts, codes of dictionaries), and their
    // decoding is what sums and filters over them cost.
    for field in schema.fields() {
        if field.data_type().is_primitive() {
            let name = ColumnPath::from(field.name().as_str());
            b = b.set_column_compression(name, Compression::UNCOMPRESSED);
        }
    }
    b
}

/// Rows of a file's first batch looked at to choose each column's encoding.
const ENCODING_SAMPLE_ROWS: usize = 4096;

/// The columns of `batch` not worth a dictionary: among its first
/// [`ENCODING_SAMPLE_ROWS`] rows (when it has at least 1024), more than
/// half the non-null values are distinct, as for keys, identifiers and
/// amounts, or the distinct values seen, at that rate over a row group,
/// would fill half of a dictionary page, as for the borrowers of loans
/// (each appears a few times, so it is distinct in only about half the
/// rows). Their dictionaries would outgrow the page limit and fall back to
/// plain encoding anyway, after interning every value; enumerations,
/// codes and dates keep theirs. The choice depends only on the rows, so
/// the same rows give the same file.
fn high_cardinality_columns(batch: &RecordBatch) -> Vec<String> {
    let n = batch.num_rows().min(ENCODING_SAMPLE_ROWS);
    if n < 1024 {
        return Vec::new();
    }
    let schema = batch.schema();
    schema
        .fields()
        .iter()
        .zip(batch.columns())
        .filter(|(field, col)| high_cardinality(field, &col.slice(0, n)))
        .map(|(field, _)| field.name().clone())
        .collect()
}

/// Whether `sample` (a column's first rows) has more than half its
/// non-null values distinct, or distinct values that would fill half a
/// dictionary page within a row group at the sample's rate; never for
/// booleans.
fn high_cardinality(field: &arrow::datatypes::Field, sample: &ArrayRef) -> bool {
    if field.data_type() == &arrow::datatypes::DataType::Boolean {
        return false;
    }
    let n = sample.len();
    // Distinct values counted by their hashes (the same rows always make
    // the same choice).
    let mut hashes = Vec::new();
    if row_hashes([sample], n, &mut hashes).is_err() {
        return false;
    }
    let non_null = n - sample.null_count();
    let distinct: HashSet64 = (0..n)
        .filter(|&i| sample.is_valid(i))
        .map(|i| hashes[i])
        .collect();
    if non_null == 0 {
        return false;
    }
    // A dictionary entry's size: a text value's bytes and its 4-byte
    // length, or a fixed-width value's width.
    let value_bytes = match sample.as_any().downcast_ref::<arrow::array::StringArray>() {
        Some(s) => {
            let offsets = s.value_offsets();
            (offsets[n] - offsets[0]) as usize / non_null + 4
        }
        None => field.data_type().primitive_width().unwrap_or(8),
    };
    let dictionary_bytes = distinct.len() * ROW_GROUP_ROWS / n * value_bytes;
    distinct.len() * 2 > non_null || dictionary_bytes * 2 > DEFAULT_DICTIONARY_PAGE_SIZE_LIMIT
}

/// Writer properties for a file whose first batch is `first`: those of
/// [`writer_properties`], without dictionaries for the columns of
/// [`high_cardinality_columns`].
fn writer_properties_for(first: &RecordBatch) -> WriterProperties {
    let mut b = writer_properties_builder(&first.schema());
    for name in high_cardinality_columns(first) {
        b = b.set_column_dictionary_enabled(ColumnPath::from(name), false);
    }
    b.build()
}

/// Writes `batch` to `path` as one Parquet file, fsynced; returns its entry.
pub fn write_parquet(path: &Path, batch: &RecordBatch) -> Result<FileEntry> {
    let all: Vec<u32> = (0..batch.num_rows() as u32).collect();
    write_parquet_rows(path, batch, &all)
}

/// A Parquet file written a batch at a time (the warehouse way), fsynced on
/// finish. The writer starts at the first batch, which chooses the columns'
/// encodings (see [`high_cardinality_columns`]).
pub struct ParquetFile {
    path: std::path::PathBuf,
    schema: SchemaRef,
    file: Option<std::fs::File>,
    writer: Option<ArrowWriter<std::fs::File>>,
    rows: u64,
}

impl ParquetFile {
    /// Creates `path` for batches of `schema`.
    pub fn create(path: &Path, schema: SchemaRef) -> Result<ParquetFile> {
        let ctx = format!("writing {}", path.display());
        let file = std::fs::File::create(path).map_err(|e| data_err(ctx)(e))?;
        Ok(ParquetFile {
            path: path.to_path_buf(),
            schema,
            file: Some(file),
            writer: None,
            rows: 0,
        })
    }

    /// Starts the writer, with the encodings `first` chooses, unless it has started.
    fn start(&mut self, first: Option<&RecordBatch>) -> Result<()> {
        if self.writer.is_some() {
            return Ok(());
        }
        let ctx = format!("writing {}", self.path.display());
        let file = self
            .file
            .take()
            .ok_or_else(|| data_err(ctx.clone())("the file is gone"))?;
        let props = match first {
            Some(b) => writer_properties_for(b),
            None => writer_properties(&self.schema),
        };
        let w = ArrowWriter::try_new(file, self.schema.clone(), Some(props))
            .map_err(|e| data_err(ctx)(e))?;
        self.writer = Some(w);
        Ok(())
    }

    /// Appends a batch.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.start(Some(batch))?;
        self.rows += batch.num_rows() as u64;
        let writer = self.writer.as_mut().expect("writer started");
        writer
            .write(batch)
            .map_err(|e| data_err(format!("writing {}", self.path.display()))(e))
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Memory the writer holds for the row group being written.
    pub fn memory_size(&self) -> usize {
        self.writer.as_ref().map_or(0, ArrowWriter::memory_size)
    }

    /// Ends the row group being written, releasing its memory.
    pub fn flush(&mut self) -> Result<()> {
        match self.writer.as_mut() {
            Some(w) => w
                .flush()
                .map_err(|e| data_err(format!("writing {}", self.path.display()))(e)),
            None => Ok(()),
        }
    }

    /// Closes and fsyncs the file; returns its entry.
    pub fn finish(self) -> Result<FileEntry> {
        self.end(true)
    }

    /// Closes the file without waiting for the disk (a staged file, which
    /// [`adopt_staged`] syncs when it keeps it); returns its entry.
    pub fn close(self) -> Result<FileEntry> {
        self.end(false)
    }

    fn end(mut self, sync: bool) -> Result<FileEntry> {
        let ctx = format!("writing {}", self.path.display());
        self.start(None)?;
        let file = self
            .writer
            .take()
            .expect("writer started")
            .into_inner()
            .map_err(|e| data_err(ctx.clone())(e))?;
        file_entry(&self.path, &file, self.rows, sync)
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Whether the keys (columns `key` of the table) of a staged Parquet file
/// are all distinct (as far as 64-bit hashes tell: a collision says no),
/// reading only those columns; and its rows.
pub fn staged_keys_distinct(path: &Path, key: &[usize]) -> Result<(bool, u64)> {
    let ctx = format!("reading {}", path.display());
    let builder = parquet_reader(path, Some(key))?;
    let rows = u64::try_from(builder.metadata().file_metadata().num_rows()).unwrap_or(0);
    let reader = builder.build().map_err(|e| data_err(ctx.clone())(e))?;
    // The projected batch holds the key columns only, in table order.
    let cols: Vec<usize> = (0..key.len()).collect();
    let mut keys = DistinctKeys::new(path);
    for b in reader {
        let b = b.map_err(|e| data_err(ctx.clone())(e))?;
        if !keys.insert(&b, &cols)? {
            return Ok((false, rows));
        }
    }
    Ok((keys.finish()?, rows))
}

/// Makes the staged file `staged` (of `rows` rows) the file at `path`:
/// synced to disk, then linked there (copied where linking is not
/// possible), leaving the staged name for the staging directory's removal.
pub fn adopt_staged(staged: &Path, path: &Path, rows: u64) -> Result<FileEntry> {
    let ctx = format!("keeping {} as {}", staged.display(), path.display());
    let file = std::fs::File::open(staged).map_err(|e| data_err(ctx.clone())(e))?;
    file.sync_all().map_err(|e| data_err(ctx.clone())(e))?;
    let bytes = file.metadata().map_err(|e| data_err(ctx.clone())(e))?.len();
    if std::fs::hard_link(staged, path).is_err() {
        std::fs::copy(staged, path).map_err(|e| data_err(ctx.clone())(e))?;
        std::fs::File::open(path)
            .and_then(|f| f.sync_all())
            .map_err(|e| data_err(ctx.clone())(e))?;
    }
    Ok(FileEntry {
        name: file_name(path),
        rows,
        bytes,
    })
}

/// Calls `f` with every non-null value of the Utf8 column at `index`,
/// reading only that column.
pub fn read_strings(path: &Path, index: usize, mut f: impl FnMut(&str)) -> Result<()> {
    let ctx = format!("reading {}", path.display());
    let reader = parquet_reader(path, Some(&[index]))?
        .build()
        .map_err(|e| data_err(ctx.clone())(e))?;
    for b in reader {
        let b = b.map_err(|e| data_err(ctx.clone())(e))?;
        let col = arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Utf8)
            .map_err(|e| data_err(ctx.clone())(e))?;
        let col = col
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .ok_or_else(|| data_err(ctx.clone())("column is not text"))?;
        col.iter().flatten().for_each(&mut f);
    }
    Ok(())
}

/// Reads a whole Parquet file as one batch with `schema`.
pub fn read_parquet(path: &Path, schema: &SchemaRef) -> Result<RecordBatch> {
    let batches = read_parquet_batches(path, schema)?;
    concat_batches(schema, &batches).map_err(|e| data_err(format!("reading {}", path.display()))(e))
}

/// A reader of `path` in batches of 64K rows, of the (top-level) columns
/// at `columns` only when given, in file order; `build` it to read.
pub fn parquet_reader(
    path: &Path,
    columns: Option<&[usize]>,
) -> Result<ParquetRecordBatchReaderBuilder<std::fs::File>> {
    let ctx = format!("reading {}", path.display());
    let file = std::fs::File::open(path).map_err(|e| data_err(ctx.clone())(e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(data_err(ctx))?
        .with_batch_size(64 * 1024);
    Ok(match columns {
        Some(c) => {
            let mask =
                parquet::arrow::ProjectionMask::roots(builder.parquet_schema(), c.iter().copied());
            builder.with_projection(mask)
        }
        None => builder,
    })
}

/// Reads a whole Parquet file as batches with `schema`.
pub fn read_parquet_batches(path: &Path, schema: &SchemaRef) -> Result<Vec<RecordBatch>> {
    let ctx = format!("reading {}", path.display());
    let reader = parquet_reader(path, None)?
        .build()
        .map_err(|e| data_err(ctx.clone())(e))?;
    let mut batches = Vec::new();
    for b in reader {
        let b = b.map_err(|e| data_err(ctx.clone())(e))?;
        let b = RecordBatch::try_new(schema.clone(), b.columns().to_vec()).map_err(|e| {
            data_err(ctx.clone())(format!("file does not match the table schema: {e}"))
        })?;
        batches.push(b);
    }
    Ok(batches)
}

/// A fingerprint of a delivery's rows of one partition, in delivery order,
/// whatever the batches they came in: per column, the stream of validity
/// bits, of value lengths (text) and of value bytes, each hashed apart,
/// then all of them with the schema.
pub struct DeliveryHash {
    schema: SchemaRef,
    /// Per column: validity (as runs of valid rows), lengths, values.
    streams: Vec<[blake3::Hasher; 3]>,
    /// Per column: valid rows since the last null.
    valid_runs: Vec<u64>,
    rows: u64,
    /// A column of a type not fingerprinted: the delivery never matches.
    unhashable: bool,
}

impl DeliveryHash {
    /// An empty fingerprint for rows of `schema`.
    pub fn new(schema: &SchemaRef) -> DeliveryHash {
        DeliveryHash {
            schema: schema.clone(),
            streams: schema.fields().iter().map(|_| Default::default()).collect(),
            valid_runs: vec![0; schema.fields().len()],
            rows: 0,
            unhashable: false,
        }
    }

    /// Adds the rows of `batch` (of the schema).
    pub fn update(&mut self, batch: &RecordBatch) {
        use arrow::array::{Array, AsArray};
        self.rows += batch.num_rows() as u64;
        let (streams, mut unhashable) = (self.streams.iter_mut(), false);
        let columns = batch.columns().iter().zip(&mut self.valid_runs);
        for ((col, run), [validity, lengths, values]) in columns.zip(streams) {
            // Validity as the lengths of the runs of valid rows before each null.
            if col.null_count() == 0 {
                *run += col.len() as u64;
            } else {
                for i in 0..col.len() {
                    if col.is_valid(i) {
                        *run += 1;
                    } else {
                        validity.update(&run.to_le_bytes());
                        *run = 0;
                    }
                }
            }
            let data = col.to_data();
            match col.data_type() {
                arrow::datatypes::DataType::Utf8 => {
                    let s = col.as_string::<i32>();
                    let offsets = s.value_offsets();
                    let lens: Vec<u8> = offsets
                        .windows(2)
                        .flat_map(|w| ((w[1] - w[0]) as u32).to_le_bytes())
                        .collect();
                    lengths.update(&lens);
                    let (first, last) = (offsets[0] as usize, offsets[s.len()] as usize);
                    values.update(&s.value_data()[first..last]);
                }
                arrow::datatypes::DataType::Boolean => {
                    let b = col.as_boolean();
                    let bytes: Vec<u8> = (0..b.len()).map(|i| u8::from(b.value(i))).collect();
                    values.update(&bytes);
                }
                t => match t.primitive_width() {
                    // Fixed-width values: the buffer's bytes of these rows.
                    Some(width) => {
                        let buf = &data.buffers()[0];
                        let start = data.offset() * width;
                        values.update(&buf.as_slice()[start..start + data.len() * width]);
                    }
                    None => unhashable = true,
                },
            }
        }
        self.unhashable |= unhashable;
    }

    /// The fingerprint (hex); `None` when some column could not be fingerprinted.
    pub fn finish(&self) -> Option<String> {
        if self.unhashable {
            return None;
        }
        let mut all = blake3::Hasher::new();
        all.update(format!("{:?}", self.schema.fields()).as_bytes());
        all.update(&self.rows.to_le_bytes());
        for (streams, run) in self.streams.iter().zip(&self.valid_runs) {
            let mut validity = streams[0].clone();
            validity.update(&run.to_le_bytes());
            all.update(validity.finalize().as_bytes());
            for h in &streams[1..] {
                all.update(h.finalize().as_bytes());
            }
        }
        Some(all.finalize().to_hex().to_string())
    }
}

/// Hashes of keys held in memory before they are sorted and spilled as a
/// run (512 KiB).
const KEY_RUN_HASHES: usize = 64 * 1024;

/// Tells whether a delivery repeats a key, holding neither its keys nor
/// more than [`KEY_RUN_HASHES`] of their 64-bit hashes, whatever the
/// partition's size: each full run of hashes is sorted and spilled to a
/// file beside the partition's staged rows, and [`DistinctKeys::finish`]
/// merges the runs looking for a repeated hash. A repeated hash means a
/// repeated key, or (rarely) two keys with one hash; either way the caller
/// merges the full way. The run files are removed when it is dropped.
pub struct DistinctKeys {
    /// Run files are this path with `.keys-<n>` appended.
    spill_to: PathBuf,
    /// The run being gathered.
    run: Vec<u64>,
    /// Hashes of the batch being added.
    hashes: Vec<u64>,
    /// The spilled runs, each sorted.
    runs: Vec<PathBuf>,
}

impl DistinctKeys {
    /// No keys yet; runs spill beside `spill_to` (a staged file).
    pub fn new(spill_to: &Path) -> DistinctKeys {
        DistinctKeys {
            spill_to: spill_to.to_path_buf(),
            run: Vec::new(),
            hashes: Vec::new(),
            runs: Vec::new(),
        }
    }

    /// Adds the keys (columns `key`) of `batch`; false when one of them
    /// may have been added before (found early, within a run; the rest are
    /// found by [`DistinctKeys::finish`]).
    pub fn insert(&mut self, batch: &RecordBatch, key: &[usize]) -> Result<bool> {
        let cols = key.iter().map(|&i| batch.column(i));
        row_hashes(cols, batch.num_rows(), &mut self.hashes)
            .map_err(|e| data_err("hashing keys")(e))?;
        let mut at = 0;
        while at < self.hashes.len() {
            let take = (self.hashes.len() - at).min(KEY_RUN_HASHES - self.run.len());
            self.run.extend_from_slice(&self.hashes[at..at + take]);
            at += take;
            if self.run.len() == KEY_RUN_HASHES && !self.spill_run()? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Sorts the run gathered and writes it to a new run file; false when
    /// it repeats a hash.
    fn spill_run(&mut self) -> Result<bool> {
        if !sort_distinct(&mut self.run) {
            return Ok(false);
        }
        let path = PathBuf::from(format!(
            "{}.keys-{}",
            self.spill_to.display(),
            self.runs.len()
        ));
        let ctx = format!("spilling key hashes to {}", path.display());
        let bytes: Vec<u8> = self.run.iter().flat_map(|h| h.to_le_bytes()).collect();
        self.runs.push(path.clone());
        std::fs::write(&path, bytes).map_err(|e| data_err(ctx)(e))?;
        self.run.clear();
        Ok(true)
    }

    /// Whether every key added was distinct (as far as their hashes tell).
    pub fn finish(mut self) -> Result<bool> {
        if !sort_distinct(&mut self.run) {
            return Ok(false);
        }
        if self.runs.is_empty() {
            return Ok(true);
        }
        // A k-way merge of the runs (the last one still in memory), in
        // hash order: a repeated hash comes out twice in a row.
        let mut sources: Vec<Box<dyn Iterator<Item = Result<u64>>>> = Vec::new();
        for path in &self.runs {
            let ctx = format!("reading key hashes from {}", path.display());
            let file = std::fs::File::open(path).map_err(|e| data_err(ctx.clone())(e))?;
            let mut file = std::io::BufReader::with_capacity(16 << 10, file);
            sources.push(Box::new(std::iter::from_fn(move || {
                let mut b = [0u8; 8];
                match std::io::Read::read_exact(&mut file, &mut b) {
                    Ok(()) => Some(Ok(u64::from_le_bytes(b))),
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => None,
                    Err(e) => Some(Err(data_err(ctx.clone())(e))),
                }
            })));
        }
        let last = std::mem::take(&mut self.run);
        sources.push(Box::new(last.into_iter().map(Ok)));
        let mut heads = std::collections::BinaryHeap::new();
        for (i, s) in sources.iter_mut().enumerate() {
            if let Some(h) = s.next() {
                heads.push(std::cmp::Reverse((h?, i)));
            }
        }
        let mut previous = None;
        while let Some(std::cmp::Reverse((h, i))) = heads.pop() {
            if previous == Some(h) {
                return Ok(false);
            }
            previous = Some(h);
            if let Some(next) = sources[i].next() {
                heads.push(std::cmp::Reverse((next?, i)));
            }
        }
        Ok(true)
    }
}

impl Drop for DistinctKeys {
    fn drop(&mut self) {
        for path in &self.runs {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Sorts `hashes`; false when one repeats.
fn sort_distinct(hashes: &mut [u64]) -> bool {
    hashes.sort_unstable();
    hashes.windows(2).all(|w| w[0] != w[1])
}

/// The 64-bit hash of each of the `rows` rows of `columns` into `out`
/// (DataFusion's hashes with a fixed seed: the same values hash the same
/// in every run).
fn row_hashes<'a>(
    columns: impl IntoIterator<Item = &'a ArrayRef>,
    rows: usize,
    out: &mut Vec<u64>,
) -> datafusion::error::Result<()> {
    use datafusion::common::hash_utils::{RandomState, create_hashes};
    out.clear();
    out.resize(rows, 0);
    create_hashes(columns, &RandomState::with_seed(0), out).map(|_| ())
}

/// A set of values that already are hashes.
type HashSet64 = std::collections::HashSet<u64, std::hash::BuildHasherDefault<Prehashed>>;

/// A hasher for values that already are hashes.
#[derive(Default)]
struct Prehashed(u64);

impl std::hash::Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl DeliveryHash {
    /// The fingerprint of a partition's rows that came from several windows
    /// (each fingerprinted apart, in window order); one window's stands as is.
    pub fn combine(windows: Vec<Option<String>>) -> Option<String> {
        match windows.as_slice() {
            [one] => one.clone(),
            _ => {
                let mut all = blake3::Hasher::new();
                all.update(b"windows");
                for w in &windows {
                    all.update(w.as_ref()?.as_bytes());
                }
                Some(all.finalize().to_hex().to_string())
            }
        }
    }
}

/// A row of `batches`: (batch, row within it).
type RowRef = (usize, usize);

/// Writes the rows of `all` picked by `order` to one Parquet file, a row group at a time.
pub fn write_parquet_rows(path: &Path, all: &RecordBatch, order: &[u32]) -> Result<FileEntry> {
    let order: Vec<RowRef> = order.iter().map(|&i| (0, i as usize)).collect();
    write_picked(path, std::slice::from_ref(all), &order)
}

/// Writes the rows of `batches` picked by `order` to one Parquet file (with
/// the first batch's schema), a row group at a time.
fn write_picked(path: &Path, batches: &[RecordBatch], order: &[RowRef]) -> Result<FileEntry> {
    let ctx = format!("writing {}", path.display());
    let mut f = ParquetFile::create(path, batches[0].schema())?;
    let batches: Vec<&RecordBatch> = batches.iter().collect();
    for chunk in order.chunks(ROW_GROUP_ROWS) {
        let b = arrow::compute::interleave_record_batch(&batches, chunk)
            .map_err(|e| data_err(ctx.clone())(e))?;
        f.write(&b)?;
    }
    f.finish()
}

/// Where a merge reads rows of the table's schema: a Parquet file, read a
/// few columns at a time, or batches already in memory.
pub enum RowSource {
    /// A Parquet file (a committed partition file or a staged file).
    File(std::path::PathBuf),
    /// Batches in memory.
    Batches(Vec<RecordBatch>),
}

impl RowSource {
    /// The columns at `columns` of every row, in batches whose columns come
    /// in the order asked, checked against `schema`.
    fn read(&self, schema: &SchemaRef, columns: &[usize]) -> Result<Vec<RecordBatch>> {
        let projected = Arc::new(
            schema
                .project(columns)
                .map_err(|e| data_err("merging partition")(e))?,
        );
        let path = match self {
            RowSource::Batches(batches) => {
                return batches
                    .iter()
                    .map(|b| {
                        b.project(columns)
                            .map_err(|e| data_err("merging partition")(e))
                    })
                    .collect();
            }
            RowSource::File(path) => path,
        };
        let ctx = format!("reading {}", path.display());
        let mismatch =
            |e: String| data_err(ctx.clone())(format!("file does not match the table schema: {e}"));
        let mut sorted = columns.to_vec();
        sorted.sort_unstable();
        let builder = parquet_reader(path, Some(&sorted))?;
        let found = builder.schema().fields().len();
        if found != schema.fields().len() {
            return Err(mismatch(format!(
                "{found} columns, expected {}",
                schema.fields().len()
            )));
        }
        // The reader gives the columns in file order.
        let at: Vec<usize> = columns
            .iter()
            .map(|c| sorted.binary_search(c).expect("column asked"))
            .collect();
        let reader = builder.build().map_err(|e| data_err(ctx.clone())(e))?;
        let mut out = Vec::new();
        for b in reader {
            let b = b.map_err(|e| data_err(ctx.clone())(e))?;
            let cols = at.iter().map(|&i| b.column(i).clone()).collect();
            out.push(
                RecordBatch::try_new(projected.clone(), cols)
                    .map_err(|e| mismatch(e.to_string()))?,
            );
        }
        Ok(out)
    }
}

/// One column of every row of a merge's sources, batch by batch.
struct MergeColumn {
    arrays: Vec<ArrayRef>,
    /// The number of the first row of each batch, counting over all sources.
    starts: Vec<usize>,
}

impl MergeColumn {
    fn read(sources: &[RowSource], schema: &SchemaRef, c: usize) -> Result<MergeColumn> {
        let (mut arrays, mut starts, mut rows) = (Vec::new(), Vec::new(), 0);
        for s in sources {
            for b in s.read(schema, &[c])? {
                starts.push(rows);
                rows += b.num_rows();
                arrays.push(b.column(0).clone());
            }
        }
        Ok(MergeColumn { arrays, starts })
    }

    /// Clears `same` for each (before, after) pair of `pairs` whose values
    /// in this column differ (nulls equal), a chunk of pairs at a time.
    fn compare(&self, pairs: &[(u32, u32)], same: &mut [bool]) -> Result<()> {
        for (chunk, same) in pairs.chunks(64 * 1024).zip(same.chunks_mut(64 * 1024)) {
            let before = self.take(chunk.iter().map(|p| p.0))?;
            let after = self.take(chunk.iter().map(|p| p.1))?;
            let eq = arrow::compute::kernels::cmp::not_distinct(&before, &after)
                .map_err(|e| data_err("merging partition")(e))?;
            for (i, s) in same.iter_mut().enumerate() {
                *s &= eq.value(i);
            }
        }
        Ok(())
    }

    /// This column (the `c`th of `schema`) of the rows `order`, encoded one
    /// row group of [`ROW_GROUP_ROWS`] rows at a time, with or without a
    /// dictionary, the way the warehouse's writer encodes it.
    fn encode(
        &self,
        schema: &SchemaRef,
        c: usize,
        order: &[u32],
        dictionary: bool,
    ) -> Result<Vec<ArrowColumnChunk>> {
        let encoding = |e: parquet::errors::ParquetError| data_err("merging partition")(e);
        let field = schema.field(c);
        let mut props = writer_properties_builder(schema);
        if !dictionary {
            let name = ColumnPath::from(field.name().as_str());
            props = props.set_column_dictionary_enabled(name, false);
        }
        let (_, writers) =
            ArrowWriter::try_new(std::io::sink(), schema.clone(), Some(props.build()))
                .and_then(ArrowWriter::into_serialized_writer)
                .map_err(encoding)?;
        let mut chunks = Vec::new();
        for (group, rows) in order.chunks(ROW_GROUP_ROWS).enumerate() {
            let values = self.take(rows.iter().copied())?;
            let mut writers = writers.create_column_writers(group).map_err(encoding)?;
            if writers.len() != schema.fields().len() {
                return Err(data_err("merging partition")(
                    "nested columns cannot be merged",
                ));
            }
            let mut w = writers.swap_remove(c);
            for leaf in compute_leaves(field, &values).map_err(encoding)? {
                w.write(&leaf).map_err(encoding)?;
            }
            chunks.push(w.close().map_err(encoding)?);
        }
        Ok(chunks)
    }

    /// The values of the rows numbered `rows` (counting over all sources), in that order.
    fn take(&self, rows: impl Iterator<Item = u32>) -> Result<ArrayRef> {
        let refs: Vec<RowRef> = rows
            .map(|g| {
                let g = g as usize;
                // The last batch starting at or before the row (empty batches share a start).
                let b = self.starts.partition_point(|&s| s <= g) - 1;
                (b, g - self.starts[b])
            })
            .collect();
        let arrays: Vec<&dyn arrow::array::Array> =
            self.arrays.iter().map(|a| a.as_ref()).collect();
        arrow::compute::interleave(&arrays, &refs).map_err(|e| data_err("merging partition")(e))
    }
}

/// What a merge changed and wrote.
#[derive(Debug)]
pub struct Merged {
    /// Rows whose key is new or whose values changed (plus rows removed).
    pub changed_rows: u64,
    /// The partition's one file, sorted by key; `None` when no row is left.
    pub file: Option<FileEntry>,
}

/// Merges the rows of `new` (in delivery order) into those of `existing`
/// by the key columns `key`: for each key the last delivered row wins;
/// rows whose key is in `remove` are dropped. Writes the partition's rows,
/// sorted by key, to the file `path()` names, fsynced; returns `None` when
/// nothing changes (and writes nothing).
///
/// Memory holds the key of every row, then one column of every row at a
/// time (with the file's encoded pages), never whole rows: the rows are
/// compared and each column encoded on its own, and the file is assembled
/// from the encoded columns, the same file a row-wise writer would write.
pub fn merge(
    path: impl FnOnce() -> Result<std::path::PathBuf>,
    schema: &SchemaRef,
    existing: Vec<RowSource>,
    new: Vec<RowSource>,
    key: &[usize],
    remove: &std::collections::HashSet<Vec<u8>>,
) -> Result<Option<Merged>> {
    let existing_sources = existing.len();
    let mut sources = existing;
    sources.extend(new);
    let Picked {
        order,
        pairs,
        mut changed,
    } = pick_rows(&sources, existing_sources, schema, key, remove)?;

    // A column at a time: compare the restated rows, choose the encoding
    // (from the first rows, as a row-wise writer does) and encode each row group.
    let mut same = vec![true; pairs.len()];
    let mut props = writer_properties_builder(schema);
    let mut encoded: Vec<std::vec::IntoIter<ArrowColumnChunk>> = Vec::new();
    for (c, field) in schema.fields().iter().enumerate() {
        let column = MergeColumn::read(&sources, schema, c)?;
        column.compare(&pairs, &mut same)?;
        let sample = order.len().min(ENCODING_SAMPLE_ROWS);
        let dictionary = sample < 1024
            || !high_cardinality(field, &column.take(order[..sample].iter().copied())?);
        if !dictionary {
            let name = ColumnPath::from(field.name().as_str());
            props = props.set_column_dictionary_enabled(name, false);
        }
        encoded.push(column.encode(schema, c, &order, dictionary)?.into_iter());
    }
    changed += same.iter().filter(|s| !**s).count() as u64;
    if changed == 0 {
        return Ok(None);
    }
    let file = if order.is_empty() {
        None
    } else {
        Some(write_encoded(
            &path()?,
            schema,
            props.build(),
            encoded,
            order.len(),
        )?)
    };
    Ok(Some(Merged {
        changed_rows: changed,
        file,
    }))
}

/// The rows a merge keeps, numbered over all its sources in order.
struct Picked {
    /// The rows of the merged partition, sorted by key.
    order: Vec<u32>,
    /// (row before, row after) of keys present before whose winner is a
    /// new delivery: equal or not, their values tell.
    pairs: Vec<(u32, u32)>,
    /// Keys new or removed.
    changed: u64,
}

/// Picks each key's row from the keys alone: every row by key, then in
/// delivery order (existing rows first, the first `existing_sources`
/// sources), the last row of each run of equal keys wins; an existing row
/// of the key, if any, is the first of its run.
fn pick_rows(
    sources: &[RowSource],
    existing_sources: usize,
    schema: &SchemaRef,
    key: &[usize],
    remove: &std::collections::HashSet<Vec<u8>>,
) -> Result<Picked> {
    let err = |e: arrow::error::ArrowError| data_err("merging partition")(e);
    let conv = key_converter(schema, key).map_err(err)?;
    // The keys, batch by batch; batches before `first_new` hold existing rows.
    let (mut keys, mut starts, mut first_new, mut total) = (Vec::new(), Vec::new(), 0, 0usize);
    for (s, source) in sources.iter().enumerate() {
        for b in source.read(schema, key)? {
            starts.push(total);
            total += b.num_rows();
            keys.push(conv.convert_columns(b.columns()).map_err(err)?);
        }
        if s + 1 == existing_sources {
            first_new = keys.len();
        }
    }
    if u32::try_from(total).is_err() {
        return Err(data_err("merging partition")(format!(
            "{total} rows are more than a partition may hold"
        )));
    }
    let key_of = |&(b, r): &(u32, u32)| keys[b as usize].row(r as usize);
    let number = |(b, r): (u32, u32)| (starts[b as usize] + r as usize) as u32;
    let mut rows: Vec<(u32, u32)> = Vec::with_capacity(total);
    for (b, k) in keys.iter().enumerate() {
        rows.extend((0..k.num_rows() as u32).map(|r| (b as u32, r)));
    }
    rows.sort_unstable_by(|x, y| key_of(x).cmp(&key_of(y)).then(x.cmp(y)));
    let mut picked = Picked {
        order: Vec::with_capacity(total),
        pairs: Vec::new(),
        changed: 0,
    };
    for run in rows.chunk_by(|x, y| key_of(x) == key_of(y)) {
        let first = run[0];
        let winner = run[run.len() - 1];
        let before = ((first.0 as usize) < first_new).then_some(first);
        if !remove.is_empty() && remove.contains(key_of(&first).data()) {
            if before.is_some() {
                picked.changed += 1;
            }
            continue;
        }
        match before {
            Some(b) if b == winner => {}
            Some(b) => picked.pairs.push((number(b), number(winner))),
            None => picked.changed += 1,
        }
        picked.order.push(number(winner));
    }
    Ok(picked)
}

/// Writes a file of `rows` rows from its columns' encoded row groups (one
/// chunk per row group of [`ROW_GROUP_ROWS`] rows in each column), fsynced.
fn write_encoded(
    path: &Path,
    schema: &SchemaRef,
    props: WriterProperties,
    mut columns: Vec<std::vec::IntoIter<ArrowColumnChunk>>,
    rows: usize,
) -> Result<FileEntry> {
    let ctx = format!("writing {}", path.display());
    let file = std::fs::File::create(path).map_err(|e| data_err(ctx.clone())(e))?;
    let (mut w, _) = ArrowWriter::try_new(file, schema.clone(), Some(props))
        .and_then(ArrowWriter::into_serialized_writer)
        .map_err(|e| data_err(ctx.clone())(e))?;
    for _ in 0..rows.div_ceil(ROW_GROUP_ROWS) {
        let mut group = w.next_row_group().map_err(|e| data_err(ctx.clone())(e))?;
        for column in &mut columns {
            let chunk = column.next().expect("a chunk per row group");
            chunk
                .append_to_row_group(&mut group)
                .map_err(|e| data_err(ctx.clone())(e))?;
        }
        group.close().map_err(|e| data_err(ctx.clone())(e))?;
    }
    let file = w.into_inner().map_err(|e| data_err(ctx.clone())(e))?;
    file_entry(path, &file, rows as u64, true)
}

/// The entry of the file at `path` just written through `file`, synced
/// to disk first when `sync`.
fn file_entry(path: &Path, file: &std::fs::File, rows: u64, sync: bool) -> Result<FileEntry> {
    let ctx = format!("writing {}", path.display());
    if sync {
        file.sync_all().map_err(|e| data_err(ctx.clone())(e))?;
    }
    let bytes = file.metadata().map_err(|e| data_err(ctx)(e))?.len();
    Ok(FileEntry {
        name: file_name(path),
        rows,
        bytes,
    })
}

/// A converter of the key columns `key` of `schema` to comparable rows.
fn key_converter(
    schema: &SchemaRef,
    key: &[usize],
) -> std::result::Result<RowConverter, arrow::error::ArrowError> {
    RowConverter::new(
        key.iter()
            .map(|&i| SortField::new(schema.field(i).data_type().clone()))
            .collect(),
    )
}

/// The encoded key of every row of `batch` (for cross-partition moves).
pub fn encode_keys(schema: &SchemaRef, batch: &RecordBatch, key: &[usize]) -> Result<Vec<Vec<u8>>> {
    let conv = key_converter(schema, key).map_err(|e| data_err("encoding keys")(e))?;
    let cols: Vec<ArrayRef> = key.iter().map(|&i| batch.column(i).clone()).collect();
    let rows = conv
        .convert_columns(&cols)
        .map_err(|e| data_err("encoding keys")(e))?;
    Ok((0..batch.num_rows())
        .map(|i| rows.row(i).as_ref().to_vec())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("v", DataType::Int64, true),
        ]))
    }

    fn batch(rows: &[(&str, Option<i64>)]) -> RecordBatch {
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(StringArray::from(
                    rows.iter().map(|r| r.0).collect::<Vec<_>>(),
                )),
                Arc::new(Int64Array::from(
                    rows.iter().map(|r| r.1).collect::<Vec<_>>(),
                )),
            ],
        )
        .unwrap()
    }

    #[test]
    fn keys_repeated_across_spilled_runs_are_found_and_the_runs_removed() {
        let dir = tempfile::tempdir().unwrap();
        let staged = dir.path().join("staged.parquet");
        let n = 3 * KEY_RUN_HASHES as i64 + 100;
        let keys = |range: std::ops::Range<i64>| {
            let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
            let col: ArrayRef = Arc::new(Int64Array::from_iter_values(range));
            RecordBatch::try_new(schema, vec![col]).unwrap()
        };
        let leftovers = || {
            std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect::<Vec<_>>()
        };
        // Distinct keys over three runs and a bit, in batches of 1000.
        let mut distinct = DistinctKeys::new(&staged);
        for start in (0..n).step_by(1000) {
            assert!(
                distinct
                    .insert(&keys(start..(start + 1000).min(n)), &[0])
                    .unwrap()
            );
        }
        assert_eq!(
            leftovers().len(),
            3,
            "three runs spilled: {:?}",
            leftovers()
        );
        assert!(distinct.finish().unwrap());
        assert!(
            leftovers().is_empty(),
            "runs left behind: {:?}",
            leftovers()
        );
        // Key 5 again in the last, unspilled run: found only by the merge.
        let mut repeated = DistinctKeys::new(&staged);
        assert!(repeated.insert(&keys(0..n), &[0]).unwrap());
        assert!(repeated.insert(&keys(5..6), &[0]).unwrap());
        assert!(!repeated.finish().unwrap());
        assert!(leftovers().is_empty());
        // A key repeated within one run is found as that run is sorted.
        let mut early = DistinctKeys::new(&staged);
        assert!(early.insert(&keys(0..10), &[0]).unwrap());
        assert!(!early.insert(&keys(9..KEY_RUN_HASHES as i64), &[0]).unwrap());
    }

    #[test]
    fn a_staged_file_with_distinct_keys_is_kept_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let stage = |name: &str, rows: &[(&str, Option<i64>)]| {
            let path = dir.path().join(name);
            let mut f = ParquetFile::create(&path, schema()).unwrap();
            f.write(&batch(rows)).unwrap();
            f.close().unwrap();
            path
        };
        let distinct = stage(
            "a.parquet",
            &[("k1", Some(1)), ("k2", None), ("k3", Some(3))],
        );
        let repeated = stage(
            "b.parquet",
            &[("k1", Some(1)), ("k2", None), ("k1", Some(3))],
        );
        assert_eq!(staged_keys_distinct(&distinct, &[0]).unwrap(), (true, 3));
        assert_eq!(staged_keys_distinct(&repeated, &[0]).unwrap(), (false, 3));
        // Only the key columns count: the values may repeat.
        assert_eq!(staged_keys_distinct(&repeated, &[0, 1]).unwrap(), (true, 3));
        let kept = dir.path().join("kept.parquet");
        let entry = adopt_staged(&distinct, &kept, 3).unwrap();
        assert_eq!(entry.name, "kept.parquet");
        assert_eq!(entry.rows, 3);
        assert_eq!(
            std::fs::read(&kept).unwrap(),
            std::fs::read(&distinct).unwrap()
        );
        assert_eq!(entry.bytes, std::fs::metadata(&kept).unwrap().len());
        assert_eq!(
            read_parquet(&kept, &schema()).unwrap(),
            batch(&[("k1", Some(1)), ("k2", None), ("k3", Some(3))])
        );
    }

    /// Whether each column chunk of `path`'s first row group has a dictionary page.
    fn dictionary_pages(path: &Path) -> Vec<(String, bool)> {
        let reader =
            parquet::file::reader::SerializedFileReader::new(std::fs::File::open(path).unwrap())
                .unwrap();
        let meta = parquet::file::reader::FileReader::metadata(&reader);
        meta.row_group(0)
            .columns()
            .iter()
            .map(|c| {
                (
                    c.column_path().string(),
                    c.dictionary_page_offset().is_some(),
                )
            })
            .collect()
    }

    #[test]
    fn columns_of_mostly_distinct_values_are_written_without_a_dictionary() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("loan_id", DataType::Utf8, false),
            Field::new("term", DataType::Utf8, false),
            Field::new("balance", DataType::Int64, true),
            Field::new("note", DataType::Utf8, true),
            Field::new("borrower", DataType::Utf8, false),
        ]));
        let n = 5000;
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from_iter_values(
                    (0..n).map(|i| format!("L{i:08}")),
                )),
                Arc::new(StringArray::from_iter_values(
                    (0..n).map(|i| ["short", "medium_long"][i % 2]),
                )),
                // Distinct, and some nulls (not counted).
                Arc::new(Int64Array::from_iter(
                    (0..n as i64).map(|i| (i % 10 != 0).then_some(i * 3)),
                )),
                // Mostly null; the few values repeat.
                Arc::new(StringArray::from_iter(
                    (0..n).map(|i| (i % 100 == 0).then_some("x")),
                )),
                // Each value twice, so only half the rows are distinct, but
                // at that rate a row group's dictionary would be ~1.4 MB.
                Arc::new(StringArray::from_iter_values(
                    (0..n).map(|i| format!("91500000MA{:08}", i / 2)),
                )),
            ],
        )
        .unwrap();
        assert_eq!(
            high_cardinality_columns(&batch),
            vec![
                "loan_id".to_string(),
                "balance".to_string(),
                "borrower".to_string()
            ]
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.parquet");
        let mut f = ParquetFile::create(&path, schema.clone()).unwrap();
        f.write(&batch).unwrap();
        f.write(&batch.slice(0, 10)).unwrap();
        assert_eq!(f.finish().unwrap().rows, n as u64 + 10);
        assert_eq!(
            dictionary_pages(&path),
            vec![
                ("loan_id".to_string(), false),
                ("term".to_string(), true),
                ("balance".to_string(), false),
                ("note".to_string(), true),
                ("borrower".to_string(), false),
            ]
        );
        // The rows read back unchanged, whatever the encoding.
        assert_eq!(read_parquet(&path, &schema).unwrap().slice(0, n), batch);
        // A small first batch chooses nothing: every column keeps its dictionary.
        assert!(high_cardinality_columns(&batch.slice(0, 1000)).is_empty());
        let small = dir.path().join("small.parquet");
        write_parquet(&small, &batch.slice(0, 1000)).unwrap();
        assert!(dictionary_pages(&small).iter().all(|(_, d)| *d));
    }

    /// Rows of the test schema, read back.
    type Rows = Vec<(String, Option<i64>)>;

    /// Merges into a file in a temporary directory: the rows changed, and
    /// the rows written, read back.
    fn merged(
        existing: &[RecordBatch],
        new: &[RecordBatch],
        remove: &std::collections::HashSet<Vec<u8>>,
    ) -> Option<(u64, Rows)> {
        let dir = tempfile::tempdir().unwrap();
        // One existing source from a file, one in memory: both kinds are read.
        let file = dir.path().join("existing.parquet");
        let mut sources = Vec::new();
        if let Some((first, rest)) = existing.split_first() {
            write_parquet(&file, first).unwrap();
            sources.push(RowSource::File(file));
            sources.push(RowSource::Batches(rest.to_vec()));
        }
        let out = dir.path().join("out.parquet");
        let new = vec![RowSource::Batches(new.to_vec())];
        let m = merge(|| Ok(out.clone()), &schema(), sources, new, &[0], remove).unwrap()?;
        let Some(entry) = m.file else {
            assert!(!out.exists());
            return Some((m.changed_rows, Vec::new()));
        };
        assert_eq!(entry.bytes, std::fs::metadata(&out).unwrap().len());
        let b = read_parquet(&out, &schema()).unwrap();
        assert_eq!(entry.rows, b.num_rows() as u64);
        let ids = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
        let vs = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
        let rows = (0..b.num_rows())
            .map(|i| {
                (
                    ids.value(i).to_string(),
                    vs.is_valid(i).then(|| vs.value(i)),
                )
            })
            .collect();
        Some((m.changed_rows, rows))
    }

    #[test]
    fn a_delivery_fingerprint_ignores_batch_boundaries_and_sees_every_value() {
        let hash = |batches: &[RecordBatch]| {
            let mut h = DeliveryHash::new(&schema());
            batches.iter().for_each(|b| h.update(b));
            h.finish().unwrap()
        };
        let rows = [("a", Some(1)), ("bb", None), ("", Some(3))];
        let whole = hash(&[batch(&rows)]);
        assert_eq!(hash(&[batch(&rows[..1]), batch(&rows[1..])]), whole);
        let sliced = batch(&rows);
        assert_eq!(hash(&[sliced.slice(0, 2), sliced.slice(2, 1)]), whole);
        // Moving a character between neighbouring texts, a null, an order, a value.
        for other in [
            vec![("ab", Some(1)), ("b", None), ("", Some(3))],
            vec![("a", Some(1)), ("bb", Some(0)), ("", Some(3))],
            vec![("bb", None), ("a", Some(1)), ("", Some(3))],
            vec![("a", Some(1)), ("bb", None), ("", Some(4))],
            vec![("a", Some(1)), ("bb", None)],
        ] {
            assert_ne!(hash(&[batch(&other)]), whole, "{other:?}");
        }
    }

    #[test]
    fn the_newest_delivery_of_a_key_wins_and_rows_come_out_sorted_by_key() {
        let none = std::collections::HashSet::new();
        let existing = [
            batch(&[("b", Some(1)), ("a", Some(1))]),
            batch(&[("d", None)]),
        ];
        let new = [
            batch(&[("c", Some(3)), ("b", Some(2))]),
            batch(&[("c", Some(4))]),
        ];
        let (changed, rows) = merged(&existing, &new, &none).unwrap();
        assert_eq!(
            rows,
            [
                ("a".into(), Some(1)),
                ("b".into(), Some(2)),
                ("c".into(), Some(4)),
                ("d".into(), None)
            ]
        );
        // b changed, c is new: two rows.
        assert_eq!(changed, 2);
    }

    #[test]
    fn re_delivering_the_same_rows_changes_nothing_and_nulls_compare_equal() {
        let none = std::collections::HashSet::new();
        let existing = [batch(&[("a", Some(1)), ("b", None)])];
        let again = [batch(&[("b", None), ("a", Some(1))])];
        assert!(merged(&existing, &again, &none).is_none());
        // One value differs: that row only.
        let one = [batch(&[("b", Some(0)), ("a", Some(1))])];
        let (changed, rows) = merged(&existing, &one, &none).unwrap();
        assert_eq!(changed, 1);
        assert_eq!(rows, [("a".into(), Some(1)), ("b".into(), Some(0))]);
    }

    #[test]
    fn removed_keys_leave_the_partition() {
        let existing = [batch(&[("a", Some(1)), ("b", Some(2))])];
        let remove = |rows: &[(&str, Option<i64>)]| -> std::collections::HashSet<Vec<u8>> {
            encode_keys(&schema(), &batch(rows), &[0])
                .unwrap()
                .into_iter()
                .collect()
        };
        let (changed, rows) = merged(&existing, &[], &remove(&[("b", Some(2))])).unwrap();
        assert_eq!(rows, [("a".into(), Some(1))]);
        assert_eq!(changed, 1);
        // Every key removed: no file at all.
        let all = remove(&[("a", None), ("b", None)]);
        assert_eq!(merged(&existing, &[], &all), Some((2, Vec::new())));
    }

    #[test]
    fn a_source_gives_the_columns_in_the_order_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.parquet");
        let b = batch(&[("a", Some(1)), ("b", None)]);
        write_parquet(&path, &b).unwrap();
        for source in [RowSource::File(path), RowSource::Batches(vec![b.clone()])] {
            let got = source.read(&schema(), &[1, 0]).unwrap();
            assert_eq!(got, [b.project(&[1, 0]).unwrap()]);
        }
        // A file of another table is refused, naming the file.
        let other = dir.path().join("other.parquet");
        write_parquet(&other, &b.project(&[0]).unwrap()).unwrap();
        let e = RowSource::File(other).read(&schema(), &[0]).unwrap_err();
        assert!(e.to_string().contains("other.parquet"), "{e}");
    }

    #[test]
    fn a_merged_file_is_the_file_a_row_wise_writer_writes() {
        // Enough rows for two row groups and for the encoding choice
        // (distinct ids without a dictionary, repeated values with one).
        let n = ROW_GROUP_ROWS + 5000;
        let ids: Vec<String> = (0..n).map(|i| format!("k{i:07}")).collect();
        let rows: Vec<(&str, Option<i64>)> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.as_str(), (i % 7 != 0).then_some(i as i64 % 5)))
            .collect();
        let none = std::collections::HashSet::new();
        let (half, rest) = rows.split_at(n / 2);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("merged.parquet");
        // New rows in reverse key order: the merge sorts them.
        let mut new: Vec<_> = rest.to_vec();
        new.reverse();
        let m = merge(
            || Ok(out.clone()),
            &schema(),
            vec![RowSource::Batches(vec![batch(half)])],
            vec![RowSource::Batches(vec![batch(&new)])],
            &[0],
            &none,
        )
        .unwrap()
        .unwrap();
        assert_eq!(m.changed_rows, rest.len() as u64);
        let expected = dir.path().join("row-wise.parquet");
        write_parquet(&expected, &batch(&rows)).unwrap();
        assert_eq!(
            std::fs::read(&out).unwrap(),
            std::fs::read(&expected).unwrap()
        );
        assert_eq!(
            dictionary_pages(&out),
            [("id".to_string(), false), ("v".to_string(), true)]
        );
    }

    #[test]
    fn written_files_read_back_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.parquet");
        let b = batch(&[("a", Some(1)), ("b", None)]);
        let entry = write_parquet(&path, &b).unwrap();
        assert_eq!(entry.rows, 2);
        assert_eq!(read_parquet(&path, &schema()).unwrap(), b);
        let mut ids = Vec::new();
        read_strings(&path, 0, |s| ids.push(s.to_string())).unwrap();
        assert_eq!(ids, ["a", "b"]);
    }
}
