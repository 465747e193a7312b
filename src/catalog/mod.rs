//! Catalog: the warehouse as DataFusion tables, at one committed version.
//!
//! Every query gets a [`Snapshot`]: a session whose tables are registered
//! over the generation directories named by one manifest, reading exactly
//! the files that manifest lists (pushes add files to a live generation in
//! place; see [`files`]), so a commit during a query cannot mix old and new
//! files into it, and the next snapshot sees the new commit. DataFusion's
//! list-files cache is disabled all the same.
//!
//! Tables: the warehouse tables (`bank_loans`, …, with a Utf8 `quarter`
//! partition column), `quarantine.<table>`, `published.<aggregate>`,
//! `system.runs`, `system.partitions`, `ref_districts`, `ref_industries`.

mod count;
mod files;
mod split;
mod views;

use crate::config::Project;
use crate::config::schema::{PARTITION_COLUMN, TableSchema};
use crate::domain::reference;
use crate::partition::quarantine_schema;
use crate::warehouse::{DirKey, Manifest, PublishedMeta, Warehouse, WarehouseError};
use arrow::array::{
    ArrayRef, BooleanArray, RecordBatch, StringArray, TimestampMicrosecondArray, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::MemorySchemaProvider;
use datafusion::datasource::MemTable;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::error::DataFusionError;
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::prelude::{SessionConfig, SessionContext};
use std::path::Path;
use std::sync::Arc;

/// Errors while building a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// Reading the manifest or run records failed.
    #[error(transparent)]
    Warehouse(#[from] WarehouseError),
    /// DataFusion refused a registration (a bug or a damaged generation).
    #[error("registering {table}: {source}")]
    Register {
        /// Table name.
        table: String,
        /// The error.
        source: DataFusionError,
    },
    /// The engine could not be set up.
    #[error("setting up the SQL engine: {0}")]
    Setup(String),
}

/// Bytes of files analysts' snapshots keep mapped between queries, all
/// snapshots of a catalog together (see [`files::KeptMappings`]). The
/// refresh keeps none: its queries read each file once, and its peak
/// memory is measured.
const KEPT_MAPPINGS: u64 = 1 << 30;

/// Schemas besides the default one.
pub const SCHEMAS: [&str; 3] = ["quarantine", "published", "system"];

/// The run records (as the warehouse shares them) and the `system.runs` table built from them.
type RunsCache = (Arc<Vec<crate::warehouse::RunRecord>>, Arc<MemTable>);

/// The SQL engine of one warehouse: shared memory pool and spill directory.
#[derive(Clone)]
pub struct Catalog {
    project: Arc<Project>,
    wh: Warehouse,
    runtime: Arc<RuntimeEnv>,
    /// `system.runs`, rebuilt only when the runs directory changes.
    runs_cache: Arc<std::sync::Mutex<Option<RunsCache>>>,
    /// The latest snapshot of [`Catalog::snapshot`].
    latest: Arc<SnapshotSlot>,
    /// File mappings analysts' snapshots keep between queries.
    mappings: Arc<files::KeptMappings>,
}

/// The latest snapshot of one kind of session, with the manifest, run
/// records and engine it was built from (see [`Catalog::snapshot_cached`]).
#[derive(Default)]
pub struct SnapshotSlot(std::sync::Mutex<Option<LatestSnapshot>>);

type LatestSnapshot = (
    Arc<Manifest>,
    Arc<Vec<crate::warehouse::RunRecord>>,
    Arc<RuntimeEnv>,
    Snapshot,
);

/// One consistent view of the warehouse.
#[derive(Clone)]
pub struct Snapshot {
    /// The session with every table registered.
    pub ctx: SessionContext,
    /// The manifest it reflects, shared: every query takes a copy of the
    /// snapshot, and a deep copy of the manifest cost about a tenth of
    /// planning a small query.
    pub manifest: Arc<Manifest>,
}

/// Engine options from `DATAFUSION_*` environment variables, as
/// `datafusion-cli` reads them (`DATAFUSION_EXECUTION_BATCH_SIZE=16384` sets
/// `datafusion.execution.batch_size`), over ironlake's batch size
/// ([`BATCH_SIZE`]), read once per process. A value the engine cannot parse
/// is reported once and the defaults are used instead.
fn environment_options() -> &'static datafusion::config::ConfigOptions {
    static OPTIONS: std::sync::OnceLock<datafusion::config::ConfigOptions> =
        std::sync::OnceLock::new();
    OPTIONS.get_or_init(|| {
        let mut options = datafusion::config::ConfigOptions::from_env().unwrap_or_else(|e| {
            tracing::warn!(
                error = %e,
                "A DATAFUSION_* environment variable has a value the engine cannot use; \
                 all of them are ignored."
            );
            datafusion::config::ConfigOptions::default()
        });
        if std::env::var_os("DATAFUSION_EXECUTION_BATCH_SIZE").is_none() {
            options.execution.batch_size =
                datafusion::config::ConfigNonZeroUsize::try_new(BATCH_SIZE).expect("not zero");
        }
        options
    })
}

/// Rows in a batch unless `DATAFUSION_EXECUTION_BATCH_SIZE` says otherwise:
/// four times DataFusion's 8192. On the query benchmark's warehouse the ten
/// analyst queries ran 4–9% faster by geometric mean in three runs of
/// alternating warm sessions (Q1 13–18%); a full refresh took the same time
/// and 2% more memory.
const BATCH_SIZE: usize = 32 * 1024;

/// Session settings every ironlake session uses: the engine's options from
/// the environment (see [`environment_options`]), then ironlake's own, which
/// always win (read-only string types, exact decimals, the parallelism).
pub fn session_config(target_partitions: usize) -> SessionConfig {
    let mut config = SessionConfig::from(environment_options().clone())
        .with_target_partitions(target_partitions)
        .with_information_schema(true)
        .set_bool(
            "datafusion.execution.parquet.schema_force_view_types",
            false,
        )
        .set_bool("datafusion.sql_parser.map_string_types_to_utf8view", false)
        .set_bool("datafusion.sql_parser.parse_float_as_decimal", true)
        .set_bool("datafusion.execution.parquet.pushdown_filters", false);
    config.options_mut().execution.parquet.enable_page_index = true;
    config
}

fn register(
    ctx: &SessionContext,
    name: &str,
    provider: Arc<dyn datafusion::catalog::TableProvider>,
) -> Result<(), CatalogError> {
    ctx.register_table(name, provider)
        .map_err(|e| CatalogError::Register {
            table: name.to_string(),
            source: e,
        })?;
    Ok(())
}

/// A table provider over a generation directory: Parquet files in `quarter=…/` subdirectories.
pub fn listing_table(
    ctx: &SessionContext,
    dir: &Path,
    file_schema: SchemaRef,
) -> Result<Arc<ListingTable>, DataFusionError> {
    let fmt = ParquetFormat::default().with_options(ctx.state().table_options().parquet.clone());
    let opts = ListingOptions::new(Arc::new(fmt))
        .with_file_extension(".parquet")
        .with_table_partition_cols(vec![(PARTITION_COLUMN.to_string(), DataType::Utf8)]);
    let url = ListingTableUrl::parse(format!("{}/", dir.display()))?;
    let cfg = ListingTableConfig::new(url)
        .with_listing_options(opts)
        .with_schema(file_schema);
    // Each file's statistics are read from its footer once per engine, not
    // once per query: warehouse files never change once written (the cache
    // checks size and modification time all the same), and it is bounded.
    let statistics = ctx.runtime_env().cache_manager.get_file_statistic_cache();
    Ok(Arc::new(ListingTable::try_new(cfg)?.with_cache(statistics)))
}

/// An empty table with the file schema plus the `quarter` column.
pub fn empty_table(file_schema: &SchemaRef) -> Result<Arc<MemTable>, DataFusionError> {
    let mut fields: Vec<Field> = file_schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new(PARTITION_COLUMN, DataType::Utf8, false));
    let schema = Arc::new(Schema::new(fields));
    Ok(Arc::new(MemTable::try_new(schema, vec![vec![]])?))
}

impl Catalog {
    /// The engine for a project's warehouse, with its memory limit and spill directory.
    pub fn new(project: Arc<Project>, wh: Warehouse) -> Result<Catalog, CatalogError> {
        let sql = &project.settings.sql;
        // A reader without write permission on the warehouse spills to the
        // system's temp directory instead.
        let spill_dir = match std::fs::create_dir_all(&sql.spill_dir) {
            Ok(()) => sql.spill_dir.clone(),
            Err(e) => {
                let fallback = std::env::temp_dir();
                tracing::debug!(spill_dir = %sql.spill_dir.display(), error = %e, fallback = %fallback.display(), "Cannot create the spill directory; spilling to the temp directory.");
                fallback
            }
        };
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(FairSpillPool::new(
                (sql.memory_limit_mb as usize) << 20,
            )))
            .with_temp_file_path(&spill_dir)
            .with_object_list_cache_limit(0)
            .build_arc()
            .map_err(|e| CatalogError::Setup(e.to_string()))?;
        Ok(Catalog {
            project,
            wh,
            runtime,
            runs_cache: Arc::default(),
            latest: Arc::default(),
            mappings: files::KeptMappings::new(KEPT_MAPPINGS),
        })
    }

    /// The project.
    pub fn project(&self) -> &Arc<Project> {
        &self.project
    }

    /// The engine's memory pool, shared by every query of this catalog.
    pub fn memory_pool(&self) -> &Arc<dyn datafusion::execution::memory_pool::MemoryPool> {
        &self.runtime.memory_pool
    }

    /// The warehouse.
    pub fn warehouse(&self) -> &Warehouse {
        &self.wh
    }

    /// A fresh session sharing the engine's memory pool, with no tables.
    pub fn session(&self) -> SessionContext {
        let ctx = SessionContext::new_with_config_rt(
            session_config(self.project.settings.sql.target_partitions),
            self.runtime.clone(),
        );
        if let Some(cat) = ctx.catalog("datafusion") {
            for s in SCHEMAS {
                let _ = cat.register_schema(s, Arc::new(MemorySchemaProvider::new()));
            }
        }
        ctx
    }

    /// A snapshot at the current committed version, shared while the
    /// warehouse is unchanged (see [`Catalog::snapshot_cached`]).
    pub async fn snapshot(&self) -> Result<Snapshot, CatalogError> {
        self.snapshot_cached(&self.latest, || Ok(self.session()))
            .await
    }

    /// The snapshot in `slot` if the warehouse is unchanged since it was
    /// built (same manifest, same run records, this engine), else a new one
    /// in a session from `session` (its default catalog with the schemas of
    /// [`SCHEMAS`]). Queries that start meanwhile share it: its session is
    /// only read (the SQL is read-only), and building one costs
    /// milliseconds a small query should not pay.
    pub async fn snapshot_cached(
        &self,
        slot: &SnapshotSlot,
        session: impl FnOnce() -> Result<SessionContext, CatalogError>,
    ) -> Result<Snapshot, CatalogError> {
        let manifest = self.wh.manifest_shared()?;
        let runs = self.wh.runs_shared()?;
        if let Some((m, r, rt, s)) = slot.0.lock().expect("snapshot lock").as_ref()
            && Arc::ptr_eq(m, &manifest)
            && Arc::ptr_eq(r, &runs)
            && Arc::ptr_eq(rt, &self.runtime)
        {
            return Ok(s.clone());
        }
        let snapshot = self
            .snapshot_in(session()?, manifest.as_ref().clone())
            .await?;
        *slot.0.lock().expect("snapshot lock") =
            Some((manifest, runs, self.runtime.clone(), snapshot.clone()));
        Ok(snapshot)
    }

    /// `system.runs`, built again only when the warehouse read the run
    /// records again (it does when the runs directory changed).
    fn runs_table(&self) -> Result<Arc<MemTable>, CatalogError> {
        let runs = self.wh.runs_shared()?;
        let mut cache = self.runs_cache.lock().expect("runs cache lock");
        if let Some((cached, table)) = cache.as_ref()
            && Arc::ptr_eq(cached, &runs)
        {
            return Ok(table.clone());
        }
        let table = runs_table(&runs)?;
        *cache = Some((runs, table.clone()));
        Ok(table)
    }

    /// `ctx` reading local files as `manifest` lists them (see [`files`]):
    /// the same engine (memory pool, spill directory, caches) with its own
    /// file store, planning queries with `planner`.
    fn reading_only(
        ctx: SessionContext,
        root: &Path,
        manifest: &Manifest,
        kept_mappings: Option<Arc<files::KeptMappings>>,
        planner: split::SplitPlanner,
    ) -> Result<SessionContext, CatalogError> {
        let registry = datafusion::execution::object_store::DefaultObjectStoreRegistry::new();
        let url = datafusion::execution::object_store::ObjectStoreUrl::local_filesystem();
        datafusion::execution::object_store::ObjectStoreRegistry::register_store(
            &registry,
            url.as_ref(),
            Arc::new(files::ManifestFiles::new(root, manifest, kept_mappings)),
        );
        let runtime = RuntimeEnvBuilder::from_runtime_env(ctx.runtime_env().as_ref())
            .with_object_store_registry(Arc::new(registry))
            .build_arc()
            .map_err(|e| CatalogError::Setup(e.to_string()))?;
        let state = datafusion::execution::SessionStateBuilder::new_from_existing(ctx.state())
            .with_runtime_env(runtime)
            .with_physical_optimizer_rule(Arc::new(views::CompactViews))
            .with_query_planner(Arc::new(planner))
            .build();
        Ok(SessionContext::new_with_state(state))
    }

    /// A snapshot at a given manifest.
    pub async fn snapshot_at(&self, manifest: Manifest) -> Result<Snapshot, CatalogError> {
        self.snapshot_in(self.session(), manifest).await
    }

    /// A snapshot at a given manifest for the refresh: its tables read text
    /// as stored (`Utf8`), not as views. The refresh carries the registry's
    /// columns through joins with millions of rows on their build side,
    /// where short strings take less memory than 16-byte views: a full
    /// refresh of the 10.7M-loan benchmark peaked at 1.61 GB with views
    /// against 1.37 GB without, in the same time.
    pub async fn refresh_snapshot(&self, manifest: Manifest) -> Result<Snapshot, CatalogError> {
        self.snapshot_reading(self.session(), manifest, TableSchema::arrow_schema, None)
            .await
    }

    /// The engine's runtime: memory pool, spill directory, caches.
    pub fn runtime(&self) -> &Arc<RuntimeEnv> {
        &self.runtime
    }

    /// The tables of `manifest` registered in `ctx`, a session whose default
    /// catalog has the schemas of [`SCHEMAS`] (a session of another front
    /// end, such as the PostgreSQL protocol's, with its own functions).
    pub async fn snapshot_in(
        &self,
        ctx: SessionContext,
        manifest: Manifest,
    ) -> Result<Snapshot, CatalogError> {
        self.snapshot_reading(
            ctx,
            manifest,
            TableSchema::read_schema,
            Some(self.mappings.clone()),
        )
        .await
    }

    /// [`Catalog::snapshot_in`] with each table read in the schema `schema`
    /// gives it, keeping mappings of files between reads in `kept_mappings`
    /// (see [`files::ManifestFiles::new`]).
    async fn snapshot_reading(
        &self,
        ctx: SessionContext,
        manifest: Manifest,
        schema: fn(&TableSchema) -> SchemaRef,
        kept_mappings: Option<Arc<files::KeptMappings>>,
    ) -> Result<Snapshot, CatalogError> {
        let root = self.wh.root().to_path_buf();
        // Aggregates grouped by quarter over a warehouse table run one
        // quarter at a time (see [`split`]). Quarters without rows have
        // nothing to aggregate.
        let quarters = self
            .project
            .tables
            .iter()
            .filter_map(|t| {
                let dir = manifest.dirs.get(&DirKey::Table(t.name.clone()).key())?;
                let held = dir.partitions.iter().filter(|(_, p)| p.rows > 0);
                Some((t.name.clone(), held.map(|(q, _)| q.clone()).collect()))
            })
            .collect();
        let planner = split::SplitPlanner::new(split::SplitByQuarter::new(quarters));
        let ctx = Self::reading_only(ctx, &root, &manifest, kept_mappings, planner)?;
        for t in &self.project.tables {
            register_dir(
                &ctx,
                &root,
                &manifest,
                &DirKey::Table(t.name.clone()).key(),
                &t.name,
                schema(t),
            )?;
            register_dir(
                &ctx,
                &root,
                &manifest,
                &DirKey::Quarantine(t.name.clone()).key(),
                &format!("quarantine.{}", t.name),
                quarantine_schema(),
            )?;
        }
        for (name, meta) in &manifest.published {
            let key = DirKey::Published(name.clone()).key();
            let Some(dir) = manifest.dirs.get(&key) else {
                continue;
            };
            let path = root.join(&dir.generation);
            register_published(&ctx, name, &path, meta).await?;
        }
        // Joins of one quarter to the same quarter do not hash the quarter
        // (see [`split`]); `count(*)` counts a column read anyway (see [`count`]).
        ctx.add_optimizer_rule(Arc::new(split::SameQuarterJoin));
        ctx.add_optimizer_rule(Arc::new(count::CountOnColumn));
        register(&ctx, "system.runs", self.runs_table()?)?;
        register(&ctx, "system.partitions", partitions_table(&manifest)?)?;
        register(&ctx, "ref_districts", districts_table()?)?;
        register(&ctx, "ref_industries", industries_table()?)?;
        Ok(Snapshot {
            ctx,
            manifest: Arc::new(manifest),
        })
    }
}

fn register_dir(
    ctx: &SessionContext,
    root: &Path,
    manifest: &Manifest,
    key: &str,
    name: &str,
    schema: SchemaRef,
) -> Result<(), CatalogError> {
    let err = |e| CatalogError::Register {
        table: name.to_string(),
        source: e,
    };
    let provider: Arc<dyn datafusion::catalog::TableProvider> = match manifest.dirs.get(key) {
        Some(d) if !d.partitions.is_empty() => {
            listing_table(ctx, &root.join(&d.generation), schema).map_err(err)?
        }
        _ => empty_table(&schema).map_err(err)?,
    };
    register(ctx, name, provider)
}

/// The stored (file) schema of a published aggregate.
pub fn published_file_schema(meta: &PublishedMeta) -> Result<SchemaRef, CatalogError> {
    let mut fields = Vec::new();
    for (name, ty, nullable) in &meta.schema {
        let dt: DataType = ty.parse().map_err(|e| {
            CatalogError::Setup(format!(
                "published column {name} has an unreadable type {ty:?}: {e}"
            ))
        })?;
        fields.push(Field::new(name, dt, *nullable));
    }
    Ok(Arc::new(Schema::new(fields)))
}

/// Registers `published.<name>` over a generation directory, columns in the SQL's order.
pub async fn register_published(
    ctx: &SessionContext,
    name: &str,
    dir: &Path,
    meta: &PublishedMeta,
) -> Result<(), CatalogError> {
    let err = |e| CatalogError::Register {
        table: format!("published.{name}"),
        source: e,
    };
    let file_schema = published_file_schema(meta)?;
    let has_files = std::fs::read_dir(dir)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    let raw_name = format!("published.\"__{name}_files\"");
    let provider: Arc<dyn datafusion::catalog::TableProvider> = if has_files {
        listing_table(ctx, dir, file_schema).map_err(err)?
    } else {
        empty_table(&file_schema).map_err(err)?
    };
    register(ctx, &raw_name, provider)?;
    let df = ctx.table(raw_name.as_str()).await.map_err(err)?;
    let available: Vec<String> = df
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let cols: Vec<&str> = meta
        .columns
        .iter()
        .map(String::as_str)
        .filter(|c| available.iter().any(|a| a == c))
        .collect();
    let df = if cols.is_empty() {
        df
    } else {
        df.select_columns(&cols).map_err(err)?
    };
    ctx.deregister_table(raw_name.as_str()).map_err(err)?;
    register(ctx, &format!("published.{name}"), df.into_view())
}

/// The type of timestamps in system tables: microseconds, UTC.
fn timestamp() -> DataType {
    DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, Some("UTC".into()))
}

/// A one-batch in-memory table.
fn mem_table(schema: SchemaRef, cols: Vec<ArrayRef>) -> Result<Arc<MemTable>, CatalogError> {
    let batch = RecordBatch::try_new(schema.clone(), cols)
        .map_err(|e| CatalogError::Setup(e.to_string()))?;
    MemTable::try_new(schema, vec![vec![batch]])
        .map(Arc::new)
        .map_err(|e| CatalogError::Setup(e.to_string()))
}

fn runs_table(runs: &[crate::warehouse::RunRecord]) -> Result<Arc<MemTable>, CatalogError> {
    let s = |f: &dyn Fn(&crate::warehouse::RunRecord) -> Option<String>| -> ArrayRef {
        Arc::new(StringArray::from(runs.iter().map(f).collect::<Vec<_>>()))
    };
    let t = |f: &dyn Fn(&crate::warehouse::RunRecord) -> Option<crate::warehouse::Timestamp>| -> ArrayRef {
        Arc::new(
            TimestampMicrosecondArray::from(
                runs.iter()
                    .map(|r| f(r).map(|t| t.timestamp_micros()))
                    .collect::<Vec<_>>(),
            )
            .with_timezone("UTC"),
        )
    };
    let u = |f: &dyn Fn(&crate::warehouse::RunRecord) -> u64| -> ArrayRef {
        Arc::new(UInt64Array::from(runs.iter().map(f).collect::<Vec<_>>()))
    };
    let schema = Arc::new(Schema::new(vec![
        Field::new("run_id", DataType::Utf8, false),
        Field::new("pipeline", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("table_name", DataType::Utf8, false),
        Field::new("started_at", timestamp(), false),
        Field::new("ended_at", timestamp(), true),
        Field::new("outcome", DataType::Utf8, false),
        Field::new("error", DataType::Utf8, true),
        Field::new("requests", DataType::UInt64, false),
        Field::new("retries", DataType::UInt64, false),
        Field::new("pages", DataType::UInt64, false),
        Field::new("bytes", DataType::UInt64, false),
        Field::new("rows_in", DataType::UInt64, false),
        Field::new("rows_valid", DataType::UInt64, false),
        Field::new("rows_rejected", DataType::UInt64, false),
        Field::new("rows_changed", DataType::UInt64, false),
        Field::new("rows_written", DataType::UInt64, false),
        Field::new("partitions_touched", DataType::Utf8, false),
        Field::new("cursor_before", DataType::Utf8, true),
        Field::new("cursor_after", DataType::Utf8, true),
        Field::new("manifest_version", DataType::UInt64, true),
        Field::new("unchanged_since", DataType::Utf8, true),
    ]));
    let cols: Vec<ArrayRef> = vec![
        s(&|r| Some(r.run_id.clone())),
        s(&|r| Some(r.pipeline.clone())),
        s(&|r| Some(r.kind.as_str().to_string())),
        s(&|r| Some(r.table.clone())),
        t(&|r| Some(r.started_at)),
        t(&|r| r.ended_at),
        s(&|r| Some(serde_json::to_value(r.outcome).ok()?.as_str()?.to_string())),
        s(&|r| r.error.clone()),
        u(&|r| r.requests),
        u(&|r| r.retries),
        u(&|r| r.pages),
        u(&|r| r.bytes),
        u(&|r| r.rows_in),
        u(&|r| r.rows_valid),
        u(&|r| r.rows_rejected),
        u(&|r| r.rows_changed),
        u(&|r| r.rows_written),
        s(&|r| Some(r.partitions_touched.join(","))),
        s(&|r| r.cursor_before.clone()),
        s(&|r| r.cursor_after.clone()),
        Arc::new(UInt64Array::from(
            runs.iter().map(|r| r.manifest_version).collect::<Vec<_>>(),
        )),
        s(&|r| r.unchanged_since.clone()),
    ];
    mem_table(schema, cols)
}

fn partitions_table(m: &Manifest) -> Result<Arc<MemTable>, CatalogError> {
    let (mut dir, mut part, mut rows, mut files, mut bytes, mut by) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for (k, d) in &m.dirs {
        for (p, s) in &d.partitions {
            dir.push(k.clone());
            part.push(p.clone());
            rows.push(s.rows);
            files.push(s.files.len() as u64);
            bytes.push(s.files.iter().map(|f| f.bytes).sum::<u64>());
            by.push(s.written_by.clone());
        }
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("directory", DataType::Utf8, false),
        Field::new(PARTITION_COLUMN, DataType::Utf8, false),
        Field::new("rows", DataType::UInt64, false),
        Field::new("files", DataType::UInt64, false),
        Field::new("bytes", DataType::UInt64, false),
        Field::new("written_by", DataType::Utf8, false),
    ]));
    mem_table(
        schema,
        vec![
            Arc::new(StringArray::from(dir)),
            Arc::new(StringArray::from(part)),
            Arc::new(UInt64Array::from(rows)),
            Arc::new(UInt64Array::from(files)),
            Arc::new(UInt64Array::from(bytes)),
            Arc::new(StringArray::from(by)),
        ],
    )
}

fn districts_table() -> Result<Arc<MemTable>, CatalogError> {
    let d = reference::districts();
    let schema = Arc::new(Schema::new(vec![
        Field::new("code", DataType::Utf8, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
    ]));
    mem_table(
        schema,
        vec![
            Arc::new(StringArray::from(
                d.iter().map(|x| x.code.clone()).collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(
                d.iter().map(|x| x.name.clone()).collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(
                d.iter().map(|x| x.kind.clone()).collect::<Vec<_>>(),
            )),
        ],
    )
}

fn industries_table() -> Result<Arc<MemTable>, CatalogError> {
    let d = reference::industrial_divisions();
    let schema = Arc::new(Schema::new(vec![
        Field::new("division", DataType::Utf8, false),
        Field::new("section", DataType::Utf8, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("manufacturing", DataType::Boolean, false),
    ]));
    mem_table(
        schema,
        vec![
            Arc::new(StringArray::from(
                d.iter().map(|x| x.code.clone()).collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(
                d.iter().map(|x| x.section.to_string()).collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(
                d.iter().map(|x| x.name.clone()).collect::<Vec<_>>(),
            )),
            Arc::new(BooleanArray::from(
                d.iter().map(|x| x.section == 'C').collect::<Vec<_>>(),
            )),
        ],
    )
}

/// A session with every table registered empty, for planning aggregates in
/// `ironlake check`; tables have their stored types, as the refresh reads
/// them ([`Catalog::refresh_snapshot`]).
pub fn empty_session(project: &Project) -> Result<SessionContext, CatalogError> {
    let ctx = SessionContext::new_with_config(session_config(1));
    if let Some(cat) = ctx.catalog("datafusion") {
        for s in SCHEMAS {
            let _ = cat.register_schema(s, Arc::new(MemorySchemaProvider::new()));
        }
    }
    let err = |t: &str| {
        let t = t.to_string();
        move |e| CatalogError::Register {
            table: t,
            source: e,
        }
    };
    for t in &project.tables {
        register(
            &ctx,
            &t.name,
            empty_table(&t.arrow_schema()).map_err(err(&t.name))?,
        )?;
        let q = format!("quarantine.{}", t.name);
        register(
            &ctx,
            &q,
            empty_table(&quarantine_schema()).map_err(err(&q))?,
        )?;
    }
    register(&ctx, "ref_districts", districts_table()?)?;
    register(&ctx, "ref_industries", industries_table()?)?;
    Ok(ctx)
}
