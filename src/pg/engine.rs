//! The PostgreSQL side's SQL engine: each query runs on its own warehouse
//! snapshot (as an HTTP query does), in a session that also has the
//! emulated `pg_catalog`, PostgreSQL's functions and a PostgreSQL `version()`.

use crate::catalog::{Catalog, CatalogError, SCHEMAS, SnapshotSlot, session_config};
use arrow::array::{Array, ArrayRef, AsArray, Int32Array, RecordBatch};
use arrow::datatypes::{DataType, Int64Type, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{
    CatalogProvider, CatalogProviderList, MemoryCatalogProvider, MemoryCatalogProviderList,
    MemorySchemaProvider, SchemaProvider, Session, TableProvider,
};
use datafusion::datasource::{MemTable, TableType};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::session_state::{SessionState, SessionStateBuilder};
use datafusion::logical_expr::{ColumnarValue, Expr, Volatility, create_udf};
use datafusion::physical_plan::{ExecutionPlan, collect};
use datafusion::prelude::SessionContext;
use datafusion::scalar::ScalarValue;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::catalog_info::CatalogInfo;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::{
    PgCatalogSchemaProvider, PgCatalogStaticTables,
};
use datafusion_postgres::datafusion_pg_catalog::setup_pg_catalog;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// What `SELECT version()` answers: drivers (SQLAlchemy, Metabase) parse
/// `PostgreSQL N.N` out of it.
pub const VERSION: &str = concat!(
    "PostgreSQL 16.6 (ironlake ",
    env!("CARGO_PKG_VERSION"),
    ", Apache DataFusion 55, read-only)"
);

/// The `server_version` reported at startup and by `SHOW server_version`.
pub const SERVER_VERSION: &str = "16.6";

/// The catalogs of the snapshot most recently opened, for `pg_catalog`'s
/// listings (`pg_class`, `pg_attribute`, …), which read them when they run.
#[derive(Clone, Debug)]
struct Live(Arc<RwLock<Arc<dyn CatalogProviderList>>>);

impl Live {
    fn current(&self) -> Arc<dyn CatalogProviderList> {
        self.0.read().expect("live catalog lock").clone()
    }
}

#[async_trait]
impl CatalogInfo for Live {
    async fn catalog_names(&self) -> Result<Vec<String>> {
        CatalogInfo::catalog_names(&self.current()).await
    }
    async fn schema_names(&self, catalog: &str) -> Result<Option<Vec<String>>> {
        CatalogInfo::schema_names(&self.current(), catalog).await
    }
    async fn table_names(&self, catalog: &str, schema: &str) -> Result<Option<Vec<String>>> {
        CatalogInfo::table_names(&self.current(), catalog, schema).await
    }
    async fn table_schema(
        &self,
        catalog: &str,
        schema: &str,
        table: &str,
    ) -> Result<Option<SchemaRef>> {
        CatalogInfo::table_schema(&self.current(), catalog, schema, table).await
    }
    async fn table_type(
        &self,
        catalog: &str,
        schema: &str,
        table: &str,
    ) -> Result<Option<TableType>> {
        // Published aggregates are views over their latest version inside
        // the engine; to clients they are tables (`\dt published.*`).
        Ok(
            CatalogInfo::table_type(&self.current(), catalog, schema, table)
                .await?
                .map(|_| TableType::Base),
        )
    }
}

/// `to_regtype(name)`: the OID of a built-in type, NULL for any other
/// (psycopg and SQLAlchemy probe for `hstore` this way when they connect).
fn to_regtype(args: &[ColumnarValue]) -> Result<ColumnarValue> {
    fn oid(name: &str) -> Option<i32> {
        let name = name.trim().trim_start_matches("pg_catalog.").to_lowercase();
        Some(match name.as_str() {
            "bool" | "boolean" => 16,
            "bytea" => 17,
            "int8" | "bigint" => 20,
            "int2" | "smallint" => 21,
            "int4" | "integer" | "int" => 23,
            "text" => 25,
            "oid" => 26,
            "json" => 114,
            "float4" | "real" => 700,
            "float8" | "double precision" => 701,
            "varchar" | "character varying" => 1043,
            "date" => 1082,
            "time" => 1083,
            "timestamp" | "timestamp without time zone" => 1114,
            "timestamptz" | "timestamp with time zone" => 1184,
            "interval" => 1186,
            "numeric" | "decimal" => 1700,
            "uuid" => 2950,
            "jsonb" => 3802,
            _ => return None,
        })
    }
    let arrays = ColumnarValue::values_to_arrays(args)?;
    let names = arrow::compute::cast(&arrays[0], &DataType::Utf8)?;
    let out: Int32Array = names
        .as_string::<i32>()
        .iter()
        .map(|n| n.and_then(oid))
        .collect();
    Ok(ColumnarValue::Array(Arc::new(out)))
}

/// A function of any arguments answering a NULL text (`obj_description`, …).
#[derive(Debug, PartialEq, Eq, Hash)]
struct NoComment {
    name: &'static str,
    signature: datafusion::logical_expr::Signature,
}

impl NoComment {
    fn new(name: &'static str) -> NoComment {
        NoComment {
            name,
            signature: datafusion::logical_expr::Signature::variadic_any(Volatility::Stable),
        }
    }
}

impl datafusion::logical_expr::ScalarUDFImpl for NoComment {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &datafusion::logical_expr::Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(
        &self,
        _: datafusion::logical_expr::ScalarFunctionArgs,
    ) -> Result<ColumnarValue> {
        Ok(ColumnarValue::Scalar(ScalarValue::Utf8(None)))
    }
}

type PgSchema = PgCatalogSchemaProvider<Live, EmptyContextProvider>;

/// The session template and the one `pg_catalog` every query shares (one
/// OID assignment, so `\d` can look a table up by OID in a second query).
pub struct PgEngine {
    template: SessionState,
    pg_catalog: Arc<PgCatalog>,
    live: Live,
    /// The latest snapshot session.
    latest: SnapshotSlot,
}

impl PgEngine {
    /// The engine for `catalog`'s warehouse.
    pub fn new(catalog: &Catalog) -> std::result::Result<PgEngine, CatalogError> {
        let setup = |e: Box<DataFusionError>| CatalogError::Setup(e.to_string());
        let ctx = catalog.session();
        // PostgreSQL's functions and type names (regclass, …) in the template.
        setup_pg_catalog(&ctx, "datafusion", EmptyContextProvider).map_err(setup)?;
        ctx.register_udf(create_udf(
            "current_database",
            vec![],
            DataType::Utf8,
            Volatility::Immutable,
            Arc::new(|_| Ok(ColumnarValue::Scalar(ScalarValue::from(super::DATABASE)))),
        ));
        ctx.register_udf(create_udf(
            "to_regtype",
            vec![DataType::Utf8],
            DataType::Int32,
            Volatility::Immutable,
            Arc::new(to_regtype),
        ));
        // Everything is visible: one catalog, no privileges per object.
        for name in ["pg_type_is_visible", "pg_function_is_visible"] {
            ctx.register_udf(create_udf(
                name,
                vec![DataType::Int64],
                DataType::Boolean,
                Volatility::Stable,
                Arc::new(|_| Ok(ColumnarValue::Scalar(ScalarValue::Boolean(Some(true))))),
            ));
        }
        // Comments on objects: none (BI tools ask when they list tables).
        for name in ["obj_description", "col_description", "shobj_description"] {
            ctx.register_udf(datafusion::logical_expr::ScalarUDF::new_from_impl(
                NoComment::new(name),
            ));
        }
        ctx.register_udf(create_udf(
            "version",
            vec![],
            DataType::Utf8,
            Volatility::Immutable,
            Arc::new(|_| Ok(ColumnarValue::Scalar(ScalarValue::from(VERSION)))),
        ));
        let live = Live(Arc::new(RwLock::new(ctx.state().catalog_list().clone())));
        let statics = Arc::new(PgCatalogStaticTables::try_new().map_err(|e| setup(Box::new(e)))?);
        let inner = PgCatalogSchemaProvider::try_new(live.clone(), statics, EmptyContextProvider)
            .map_err(|e| setup(Box::new(e)))?;
        Ok(PgEngine {
            template: ctx.state(),
            pg_catalog: Arc::new(PgCatalog {
                inner: Arc::new(inner),
                live: live.clone(),
            }),
            live,
            latest: SnapshotSlot::default(),
        })
    }

    /// A session without tables, for statements that read none (SET, SHOW, BEGIN).
    pub fn bare(&self) -> SessionContext {
        SessionContext::new_with_state(self.template.clone())
    }

    /// A session with the current warehouse snapshot and `pg_catalog`,
    /// shared by the queries that start while the warehouse is unchanged
    /// (a session is read-only here: nothing a client sends alters it).
    pub async fn snapshot(
        &self,
        catalog: &Catalog,
    ) -> std::result::Result<SessionContext, CatalogError> {
        let snapshot = catalog
            .snapshot_cached(&self.latest, || self.session(catalog))
            .await?;
        let list = snapshot.ctx.state_ref().read().catalog_list().clone();
        *self.live.0.write().expect("live catalog lock") = list;
        Ok(snapshot.ctx)
    }

    /// A session of the template on `catalog`'s engine, without tables,
    /// whose default catalog has the warehouse's schemas and `pg_catalog`.
    fn session(&self, catalog: &Catalog) -> std::result::Result<SessionContext, CatalogError> {
        let datafusion = Arc::new(MemoryCatalogProvider::new());
        let reg = |name: &str, s: Arc<dyn SchemaProvider>| {
            datafusion
                .register_schema(name, s)
                .map(|_| ())
                .map_err(|e| CatalogError::Setup(e.to_string()))
        };
        reg("public", Arc::new(MemorySchemaProvider::new()))?;
        for s in SCHEMAS {
            reg(s, Arc::new(MemorySchemaProvider::new()))?;
        }
        reg("pg_catalog", self.pg_catalog.clone())?;
        let list = Arc::new(MemoryCatalogProviderList::new());
        list.register_catalog("datafusion".into(), datafusion);
        let config = session_config(catalog.project().settings.sql.target_partitions)
            .with_create_default_catalog_and_schema(false);
        let state = SessionStateBuilder::new_from_existing(self.template.clone())
            .with_config(config)
            .with_runtime_env(catalog.runtime().clone())
            .with_catalog_list(list)
            .build();
        Ok(SessionContext::new_with_state(state))
    }
}

/// `pg_catalog` with column type modifiers: `pg_attribute.atttypmod` says
/// `numeric(18,2)` where the emulation leaves every column at -1.
#[derive(Debug)]
struct PgCatalog {
    inner: Arc<PgSchema>,
    live: Live,
}

#[async_trait]
impl SchemaProvider for PgCatalog {
    fn table_names(&self) -> Vec<String> {
        self.inner.table_names()
    }
    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        let Some(table) = self.inner.table(name).await? else {
            return Ok(None);
        };
        if name.eq_ignore_ascii_case("pg_attribute") {
            return Ok(Some(Arc::new(Attributes {
                table,
                schema: self.inner.clone(),
                live: self.live.clone(),
            })));
        }
        Ok(Some(table))
    }
    fn table_exist(&self, name: &str) -> bool {
        self.inner.table_exist(name)
    }
}

/// `pg_attribute` with `atttypmod` filled in for decimals.
#[derive(Debug)]
struct Attributes {
    table: Arc<dyn TableProvider>,
    schema: Arc<PgSchema>,
    live: Live,
}

/// PostgreSQL's type modifier of a `numeric(p,s)` column.
fn numeric_typmod(t: &DataType) -> Option<i32> {
    match t {
        DataType::Decimal128(p, s) | DataType::Decimal256(p, s) => {
            Some((((*p as i32) << 16) | (*s as i32 & 0xffff)) + 4)
        }
        _ => None,
    }
}

async fn scan_all(table: &dyn TableProvider, state: &dyn Session) -> Result<Vec<RecordBatch>> {
    let plan: Arc<dyn ExecutionPlan> = table.scan(state, None, &[], None).await?;
    collect(plan, state.task_ctx()).await
}

fn column_i64(b: &RecordBatch, name: &str) -> Result<Vec<Option<i64>>> {
    let c = b
        .column_by_name(name)
        .ok_or_else(|| DataFusionError::Internal(format!("pg_catalog column {name} missing")))?;
    let c = arrow::compute::cast(c, &DataType::Int64)?;
    Ok(c.as_primitive::<Int64Type>().iter().collect())
}

fn column_str(b: &RecordBatch, name: &str) -> Result<Vec<Option<String>>> {
    let c = b
        .column_by_name(name)
        .ok_or_else(|| DataFusionError::Internal(format!("pg_catalog column {name} missing")))?;
    let c = arrow::compute::cast(c, &DataType::Utf8)?;
    Ok(c.as_string::<i32>()
        .iter()
        .map(|v| v.map(str::to_string))
        .collect())
}

impl Attributes {
    /// `oid → (schema, table)` from `pg_class` and `pg_namespace`.
    async fn relations(&self, state: &dyn Session) -> Result<HashMap<i64, (String, String)>> {
        let mut namespaces = HashMap::new();
        if let Some(t) = self.schema.table("pg_namespace").await? {
            for b in scan_all(t.as_ref(), state).await? {
                for (oid, name) in column_i64(&b, "oid")?
                    .into_iter()
                    .zip(column_str(&b, "nspname")?)
                {
                    if let (Some(oid), Some(name)) = (oid, name) {
                        namespaces.insert(oid, name);
                    }
                }
            }
        }
        let mut out = HashMap::new();
        if let Some(t) = self.schema.table("pg_class").await? {
            for b in scan_all(t.as_ref(), state).await? {
                let oids = column_i64(&b, "oid")?;
                let names = column_str(&b, "relname")?;
                let spaces = column_i64(&b, "relnamespace")?;
                for ((oid, name), space) in oids.into_iter().zip(names).zip(spaces) {
                    if let (Some(oid), Some(name), Some(ns)) =
                        (oid, name, space.and_then(|s| namespaces.get(&s)))
                    {
                        out.insert(oid, (ns.clone(), name));
                    }
                }
            }
        }
        Ok(out)
    }

    async fn with_typmods(&self, state: &dyn Session) -> Result<Vec<RecordBatch>> {
        let batches = scan_all(self.table.as_ref(), state).await?;
        let relations = self.relations(state).await?;
        let mut schemas: HashMap<i64, Option<SchemaRef>> = HashMap::new();
        let mut out = Vec::with_capacity(batches.len());
        for b in batches {
            let rel = column_i64(&b, "attrelid")?;
            let num = column_i64(&b, "attnum")?;
            let idx = b.schema().index_of("atttypmod")?;
            let old = b.column(idx).as_primitive::<arrow::datatypes::Int32Type>();
            let mut typmods = Vec::with_capacity(b.num_rows());
            for row in 0..b.num_rows() {
                let mut typmod = if old.is_null(row) { -1 } else { old.value(row) };
                if let (Some(r), Some(n)) = (rel[row], num[row]) {
                    if let std::collections::hash_map::Entry::Vacant(e) = schemas.entry(r) {
                        let s = match relations.get(&r) {
                            Some((ns, t)) => {
                                CatalogInfo::table_schema(&self.live, "datafusion", ns, t).await?
                            }
                            None => None,
                        };
                        e.insert(s);
                    }
                    if let Some(Some(s)) = schemas.get(&r)
                        && let Some(f) = usize::try_from(n - 1).ok().and_then(|i| s.fields().get(i))
                        && let Some(m) = numeric_typmod(f.data_type())
                    {
                        typmod = m;
                    }
                }
                typmods.push(typmod);
            }
            let mut cols: Vec<ArrayRef> = b.columns().to_vec();
            cols[idx] = Arc::new(Int32Array::from(typmods));
            out.push(RecordBatch::try_new(b.schema(), cols)?);
        }
        Ok(out)
    }
}

#[async_trait]
impl TableProvider for Attributes {
    fn schema(&self) -> SchemaRef {
        self.table.schema()
    }
    fn table_type(&self) -> TableType {
        self.table.table_type()
    }
    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let batches = self.with_typmods(state).await?;
        MemTable::try_new(self.schema(), vec![batches])?
            .scan(state, projection, filters, limit)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_type_modifiers_are_postgres_encoding() {
        // PostgreSQL: ((precision << 16) | scale) + VARHDRSZ.
        assert_eq!(numeric_typmod(&DataType::Decimal128(18, 2)), Some(1179654));
        assert_eq!(numeric_typmod(&DataType::Decimal128(9, 4)), Some(589832));
        assert_eq!(numeric_typmod(&DataType::Utf8), None);
    }
}
