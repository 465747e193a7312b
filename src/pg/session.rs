//! Statements over the PostgreSQL protocol, under the SQL API's rules: only
//! queries run (DDL, DML, COPY, SET of engine options and file or URL
//! tables are refused with SQLSTATE 25006), each on its own warehouse
//! snapshot, within the `[api]` row, byte, time and concurrency limits and
//! the engine's memory pool; viewers read `published.*` only.
//!
//! Session statements clients send on their own (`SET extra_float_digits`,
//! `BEGIN`, `SHOW TimeZone`, `DISCARD ALL`) are answered, and cursors
//! (`DECLARE … CURSOR`, `FETCH`, `CLOSE`) stream a result in the client's
//! chunks, over the simple and the extended protocol alike.

use super::engine::{PgEngine, SERVER_VERSION};
use crate::daemon::Daemon;
use crate::query::{self, QueryError};
use crate::serve::{InFlight, Role};
use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, SchemaRef};
use async_trait::async_trait;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DFSchema, ParamValues};
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::{EmptyRelation, LogicalPlan};
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{CloseCursor, DeclareType, FetchDirection, Set, Statement};
use datafusion_postgres::QueryHook;
use datafusion_postgres::arrow_pg::datatypes::df::deserialize_parameters_with_server_types;
use datafusion_postgres::arrow_pg::datatypes::{
    arrow_schema_to_pg_fields, encode_recordbatch, into_pg_type,
};
use datafusion_postgres::datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use datafusion_postgres::hooks::HookClient;
use datafusion_postgres::hooks::set_show::SetShowHook;
use datafusion_postgres::hooks::transactions::TransactionStatementHook;
use datafusion_postgres::pgwire;
use futures::{Sink, Stream, StreamExt};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{DataRowEncoder, FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::{QueryParser, StoredStatement};
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, Type};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::data::DataRow;
use pgwire::types::format::FormatOptions;
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

/// A prepared statement: its text, and the statement with the plan that
/// describes its parameters and result (it runs on a fresh snapshot).
pub type Stmt = (String, Option<(Statement, LogicalPlan)>);

/// An `ERROR` with a SQLSTATE.
pub(crate) fn pg_error(code: &str, message: impl Into<String>) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".into(),
        code.into(),
        message.into(),
    )))
}

/// The SQLSTATE of an engine error.
pub(crate) fn sqlstate(e: &DataFusionError) -> &'static str {
    use DataFusionError as E;
    match e.find_root() {
        E::SQL(..) => "42601",
        E::SchemaError(..) => "42703",
        E::Plan(m) if m.contains("not found") => "42P01",
        E::Plan(_) => "42000",
        E::NotImplemented(_) => "0A000",
        E::ResourcesExhausted(_) => "53200",
        E::ArrowError(..) | E::Execution(_) => "22000",
        _ => "XX000",
    }
}

/// An engine error as a PostgreSQL error, worded as the SQL API words it.
pub(crate) fn engine_error(e: DataFusionError, ctx: Option<&SessionContext>) -> PgWireError {
    let tables = ctx.map(query::table_names).unwrap_or_default();
    pg_error(sqlstate(&e), query::describe(&e, &tables))
}

fn refused(e: QueryError) -> PgWireError {
    let code = match &e {
        QueryError::ReadOnly(_) => "25006",
        QueryError::Path(_) => "42P01",
        QueryError::Multiple(_) | QueryError::Sql(_) => "42601",
        QueryError::TooComplex(_) => "54001",
        QueryError::Engine { source, .. } => sqlstate(source),
        QueryError::Output(_) => "XX000",
    };
    pg_error(code, e.to_string())
}

fn internal(e: impl std::fmt::Display) -> PgWireError {
    pg_error("XX000", e.to_string())
}

/// What to do with a statement.
enum Verdict {
    /// A query: plan and run it on a snapshot.
    Query,
    /// A session statement the protocol hooks answer (SHOW, SET of a
    /// session setting, BEGIN/COMMIT/ROLLBACK).
    Session,
    /// DECLARE, FETCH, CLOSE.
    Cursor,
    /// Accepted and ignored (a client's setting the engine has no use for).
    Ignore(&'static str),
    /// Refused.
    Refuse(PgWireError),
}

/// Settings kept per connection (the hooks store them with the client).
const SESSION_SETTINGS: [&str; 8] = [
    "statement_timeout",
    "datestyle",
    "bytea_output",
    "intervalstyle",
    "application_name",
    "extra_float_digits",
    "search_path",
    "timezone",
];

fn classify(s: &Statement) -> Verdict {
    match s {
        // Nothing is written, so there is nothing to roll back to.
        Statement::Savepoint { .. } => Verdict::Ignore("SAVEPOINT"),
        Statement::ReleaseSavepoint { .. } => Verdict::Ignore("RELEASE"),
        Statement::Rollback {
            savepoint: Some(_), ..
        } => Verdict::Ignore("ROLLBACK"),
        Statement::ShowVariable { .. }
        | Statement::ShowStatus { .. }
        | Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. } => Verdict::Session,
        Statement::Declare { .. } | Statement::Fetch { .. } | Statement::Close { .. } => {
            Verdict::Cursor
        }
        Statement::Set(set) => classify_set(set),
        Statement::Discard { .. } => Verdict::Ignore("DISCARD ALL"),
        Statement::Deallocate { .. } => Verdict::Ignore("DEALLOCATE"),
        other => match query::check_statement(other, &other.to_string()) {
            Ok(()) => Verdict::Query,
            Err(e) => Verdict::Refuse(refused(e)),
        },
    }
}

fn classify_set(set: &Set) -> Verdict {
    let name = match set {
        Set::SingleAssignment { variable, .. } => variable.to_string().to_lowercase(),
        Set::SetTimeZone { .. } => "timezone".into(),
        // SET SESSION CHARACTERISTICS, SET NAMES, … : nothing to change.
        _ => return Verdict::Ignore("SET"),
    };
    if name.starts_with("datafusion.") {
        return Verdict::Refuse(pg_error(
            "25006",
            format!(
                "SET {name} is not allowed: the engine's settings are the operator's (ironlake.toml [sql]); ironlake SQL is read-only"
            ),
        ));
    }
    if SESSION_SETTINGS.contains(&name.as_str()) {
        Verdict::Session
    } else {
        Verdict::Ignore("SET")
    }
}

/// `SHOW server_version` answered as PostgreSQL would (drivers parse it).
fn show_override(s: &Statement) -> Option<(&'static str, &'static str)> {
    let Statement::ShowVariable { variable } = s else {
        return None;
    };
    let name = variable
        .iter()
        .map(|i| i.value.to_lowercase())
        .collect::<Vec<_>>()
        .join(" ");
    match name.as_str() {
        "server_version" => Some(("server_version", SERVER_VERSION)),
        "server_version_num" => Some(("server_version_num", "160006")),
        _ => None,
    }
}

fn show_response(name: &str, value: &str, format: &Format) -> PgWireResult<Response> {
    let fields = Arc::new(vec![FieldInfo::new(
        name.into(),
        None,
        None,
        Type::TEXT,
        format.format_for(0),
    )]);
    let mut enc = DataRowEncoder::new(fields.clone());
    enc.encode_field(&Some(value))?;
    let row = enc.take_row();
    Ok(Response::Query(QueryResponse::new(
        fields,
        futures::stream::once(async move { Ok(row) }),
    )))
}

fn plan_with_schema(schema: &arrow::datatypes::Schema) -> PgWireResult<LogicalPlan> {
    Ok(LogicalPlan::EmptyRelation(EmptyRelation {
        produce_one_row: false,
        schema: Arc::new(DFSchema::try_from(schema.clone()).map_err(internal)?),
    }))
}

fn empty_plan() -> LogicalPlan {
    LogicalPlan::EmptyRelation(EmptyRelation {
        produce_one_row: false,
        schema: Arc::new(DFSchema::empty()),
    })
}

fn hooks() -> [&'static dyn QueryHook; 2] {
    [&SetShowHook, &TransactionStatementHook]
}

/// The role the connection logged in as.
fn role_of<C: ClientInfo + ?Sized>(client: &C) -> PgWireResult<Role> {
    match client
        .metadata()
        .get(pgwire::api::METADATA_USER)
        .map(String::as_str)
    {
        Some("admin") => Ok(Role::Admin),
        Some("analyst") => Ok(Role::Analyst),
        Some("viewer") => Ok(Role::Viewer),
        _ => Err(pg_error("28000", "the connection has no ironlake role")),
    }
}

/// Refuses a plan that reads tables the role may not read: viewers read
/// `published.*` (and the catalog's listings) only.
fn check_role(role: Role, plan: &LogicalPlan) -> PgWireResult<()> {
    if role >= Role::Analyst {
        return Ok(());
    }
    let mut denied = None;
    plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && !matches!(
                scan.table_name.schema(),
                Some("published" | "pg_catalog" | "information_schema")
            )
        {
            denied = Some(scan.table_name.to_string());
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .map_err(internal)?;
    match denied {
        Some(t) => Err(pg_error(
            "42501",
            format!(
                "permission denied for table {t}: the viewer role reads the published aggregates (published.*) only; tables need the analyst role"
            ),
        )),
        None => Ok(()),
    }
}

/// The `[api]` SQL limits of one statement.
#[derive(Clone, Copy)]
struct Limits {
    max_rows: u64,
    max_bytes: u64,
    timeout: Duration,
    deadline: tokio::time::Instant,
}

impl Limits {
    fn of<C: ClientInfo + ?Sized>(d: &Daemon, client: &C) -> Limits {
        let api = &d.project().settings.api;
        let mut timeout = Duration::from_secs(api.sql_timeout_secs);
        // A client's own statement_timeout may only shorten it.
        if let Some(ms) = client
            .metadata()
            .get("statement_timeout_ms")
            .and_then(|s| s.parse::<u64>().ok())
            .filter(|ms| *ms > 0)
        {
            timeout = timeout.min(Duration::from_millis(ms));
        }
        Limits {
            max_rows: api.sql_max_rows as u64,
            max_bytes: api.sql_max_bytes,
            timeout,
            deadline: tokio::time::Instant::now() + timeout,
        }
    }

    fn timed_out(&self) -> PgWireError {
        pg_error(
            "57014",
            format!(
                "canceling statement due to statement timeout ({} s: the [api] sql_timeout_secs limit or the session's statement_timeout)",
                self.timeout.as_secs_f64()
            ),
        )
    }

    fn too_many_rows(&self) -> PgWireError {
        pg_error(
            "54000",
            format!(
                "the result has more than {} rows (the [api] sql_max_rows limit); add a LIMIT or a WHERE, aggregate, or read it with a cursor (DECLARE c CURSOR FOR …; FETCH 10000 FROM c)",
                self.max_rows
            ),
        )
    }

    fn too_many_bytes(&self) -> PgWireError {
        pg_error(
            "54000",
            format!(
                "the result is larger than {} bytes (the [api] sql_max_bytes limit); select fewer columns or rows, or read it with a cursor in smaller FETCHes",
                self.max_bytes
            ),
        )
    }
}

/// A query's share of the `[api] sql_max_concurrent` slots (shared with
/// the HTTP API) and of the in-flight gauge, held until its rows are sent.
struct Slot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    _in_flight: InFlight,
}

impl Slot {
    fn take(d: &Arc<Daemon>) -> PgWireResult<Slot> {
        let permit = d.sql_permits().try_acquire_owned().map_err(|_| {
            pg_error(
                "53000",
                format!(
                    "{} SQL queries are already running (the [api] sql_max_concurrent limit, shared with the HTTP API); try again shortly",
                    d.project().settings.api.sql_max_concurrent
                ),
            )
        })?;
        Ok(Slot {
            _permit: permit,
            _in_flight: InFlight::new(d),
        })
    }
}

type Rows = Box<dyn Iterator<Item = PgWireResult<DataRow>> + Send>;

/// Encodes a result stream into rows within the limits; the slot is
/// released when the last row is sent or the client goes away.
fn limited_rows(
    fields: Arc<Vec<FieldInfo>>,
    stream: SendableRecordBatchStream,
    limits: Limits,
    slot: Slot,
) -> impl Stream<Item = PgWireResult<DataRow>> + Send + 'static {
    struct State {
        fields: Arc<Vec<FieldInfo>>,
        stream: SendableRecordBatchStream,
        rows: Option<Rows>,
        count: u64,
        bytes: u64,
        limits: Limits,
        done: bool,
        _slot: Slot,
    }
    let state = State {
        fields,
        stream,
        rows: None,
        count: 0,
        bytes: 0,
        limits,
        done: false,
        _slot: slot,
    };
    futures::stream::unfold(state, |mut st| async move {
        loop {
            if st.done {
                return None;
            }
            if let Some(rows) = st.rows.as_mut() {
                if let Some(row) = rows.next() {
                    match &row {
                        Ok(r) => {
                            st.count += 1;
                            st.bytes += r.data.len() as u64;
                            if st.count > st.limits.max_rows {
                                st.done = true;
                                return Some((Err(st.limits.too_many_rows()), st));
                            }
                            if st.bytes > st.limits.max_bytes {
                                st.done = true;
                                return Some((Err(st.limits.too_many_bytes()), st));
                            }
                        }
                        Err(_) => st.done = true,
                    }
                    return Some((row, st));
                }
                st.rows = None;
            }
            match tokio::time::timeout_at(st.limits.deadline, st.stream.next()).await {
                Err(_) => {
                    st.done = true;
                    return Some((Err(st.limits.timed_out()), st));
                }
                Ok(None) => return None,
                Ok(Some(Err(e))) => {
                    st.done = true;
                    return Some((Err(engine_error(e, None)), st));
                }
                Ok(Some(Ok(b))) => st.rows = Some(encode_recordbatch(st.fields.clone(), b)),
            }
        }
    })
}

/// Parameter types of a plan, in `$n` order (gaps are unknown).
fn parameter_types(plan: &LogicalPlan) -> PgWireResult<Vec<Option<DataType>>> {
    let types = plan.get_parameter_types().map_err(internal)?;
    let mut out: Vec<Option<DataType>> = Vec::new();
    for (name, t) in types {
        let Some(n) = name
            .strip_prefix('$')
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| *n >= 1)
        else {
            continue;
        };
        if out.len() < n {
            out.resize(n, None);
        }
        out[n - 1] = t;
    }
    Ok(out)
}

fn wire_types(types: &[Option<DataType>]) -> PgWireResult<Vec<Type>> {
    types
        .iter()
        .map(|t| match t {
            Some(t) => into_pg_type(t),
            None => Ok(Type::UNKNOWN),
        })
        .collect()
}

/// The values bound to a portal, decoded with the plan's parameter types.
fn bound_values(portal: &Portal<Stmt>, plan: &LogicalPlan) -> PgWireResult<ParamValues> {
    let types = parameter_types(plan)?;
    let wire = wire_types(&types)?;
    let inferred: Vec<Option<&DataType>> = types.iter().map(Option::as_ref).collect();
    let wire: Vec<Option<&Type>> = wire.iter().map(Some).collect();
    deserialize_parameters_with_server_types(portal, &inferred, &wire)
}

/// Open cursors of a connection.
#[derive(Default)]
struct Cursors(std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<Cursor>>>>);

struct Cursor {
    schema: SchemaRef,
    stream: SendableRecordBatchStream,
    pending: Option<RecordBatch>,
}

fn cursors<C: ClientInfo + ?Sized>(client: &C) -> Arc<Cursors> {
    client
        .session_extensions()
        .get_or_insert_with(Cursors::default)
}

fn cursor_named<C: ClientInfo + ?Sized>(
    client: &C,
    name: &str,
) -> PgWireResult<Arc<tokio::sync::Mutex<Cursor>>> {
    cursors(client)
        .0
        .lock()
        .expect("cursors lock")
        .get(name)
        .cloned()
        .ok_or_else(|| pg_error("34000", format!("cursor \"{name}\" does not exist")))
}

fn fetch_count(direction: &FetchDirection) -> PgWireResult<Option<usize>> {
    let count = |v: &dyn std::fmt::Display| {
        v.to_string()
            .parse::<usize>()
            .map(Some)
            .map_err(|_| pg_error("22023", format!("FETCH count {v} is not a number of rows")))
    };
    match direction {
        FetchDirection::Next | FetchDirection::Forward { limit: None } => Ok(Some(1)),
        FetchDirection::Forward { limit: Some(v) } | FetchDirection::Count { limit: v } => count(v),
        FetchDirection::ForwardAll | FetchDirection::All => Ok(None),
        _ => Err(pg_error(
            "55000",
            "cursors here scan forward only (FETCH n, FETCH NEXT, FETCH ALL)",
        )),
    }
}

/// The PostgreSQL protocol's query handlers over one daemon.
pub struct PgSession {
    d: Arc<Daemon>,
    engine: Arc<PgEngine>,
    parser: Arc<PgParser>,
}

/// Parses and describes statements of the extended protocol.
pub struct PgParser {
    d: Arc<Daemon>,
    engine: Arc<PgEngine>,
    sql: PostgresCompatibilityParser,
}

impl PgSession {
    /// Handlers over `d`'s warehouse.
    pub fn new(d: Arc<Daemon>, engine: Arc<PgEngine>) -> PgSession {
        PgSession {
            parser: Arc::new(PgParser {
                d: d.clone(),
                engine: engine.clone(),
                sql: PostgresCompatibilityParser::new(),
            }),
            d,
            engine,
        }
    }

    /// Plans `stmt` on a fresh snapshot, binds `params`, runs it.
    async fn query<C: ClientInfo + ?Sized>(
        &self,
        client: &C,
        stmt: &Statement,
        portal: Option<&Portal<Stmt>>,
        format: &Format,
    ) -> PgWireResult<Response> {
        let role = role_of(client)?;
        let limits = Limits::of(&self.d, client);
        let slot = Slot::take(&self.d)?;
        let options = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
        let (schema, stream) =
            tokio::time::timeout_at(limits.deadline, self.start(role, stmt, portal))
                .await
                .map_err(|_| limits.timed_out())??;
        let fields = Arc::new(arrow_schema_to_pg_fields(&schema, format, Some(options))?);
        Ok(Response::Query(QueryResponse::new(
            fields.clone(),
            limited_rows(fields, stream, limits, slot),
        )))
    }

    /// Plans `stmt` on the current snapshot, binds the portal's values,
    /// checks the role and starts it: the result's schema and stream.
    async fn start(
        &self,
        role: Role,
        stmt: &Statement,
        portal: Option<&Portal<Stmt>>,
    ) -> PgWireResult<(SchemaRef, SendableRecordBatchStream)> {
        let (ctx, mut plan) = self.parser.plan(role, stmt).await?;
        if let Some(portal) = portal {
            let values = bound_values(portal, &plan)?;
            plan = plan
                .replace_params_with_values(&values)
                .map_err(|e| engine_error(e, Some(&ctx)))?;
        }
        let df = ctx
            .execute_logical_plan(plan)
            .await
            .map_err(|e| engine_error(e, Some(&ctx)))?;
        let schema = Arc::new(df.schema().as_arrow().clone());
        let stream = df
            .execute_stream()
            .await
            .map_err(|e| engine_error(e, Some(&ctx)))?;
        Ok((schema, stream))
    }

    /// DECLARE, FETCH (rows in `format`) or CLOSE.
    async fn cursor<C>(
        &self,
        client: &mut C,
        stmt: &Statement,
        portal: Option<&Portal<Stmt>>,
        format: &Format,
    ) -> PgWireResult<Response>
    where
        C: HookClient,
    {
        match stmt {
            Statement::Declare { stmts } => {
                for declare in stmts {
                    self.declare(client, declare, portal).await?;
                }
                Ok(Response::Execution(Tag::new("DECLARE CURSOR")))
            }
            Statement::Fetch {
                name, direction, ..
            } => {
                self.fetch(client, &name.value, fetch_count(direction)?, format)
                    .await
            }
            Statement::Close { cursor } => {
                let cursors = cursors(client);
                let mut open = cursors.0.lock().expect("cursors lock");
                let store = HookClient::portal_store(client);
                match cursor {
                    CloseCursor::All => {
                        for name in open.keys() {
                            store.rm_portal(name);
                        }
                        open.clear();
                    }
                    CloseCursor::Specific { name } => {
                        if open.remove(&name.value).is_none() {
                            return Err(pg_error(
                                "34000",
                                format!("cursor \"{}\" does not exist", name.value),
                            ));
                        }
                        store.rm_portal(&name.value);
                    }
                }
                Ok(Response::Execution(Tag::new("CLOSE CURSOR")))
            }
            _ => Err(internal("not a cursor statement")),
        }
    }

    async fn declare<C: HookClient>(
        &self,
        client: &mut C,
        declare: &datafusion::sql::sqlparser::ast::Declare,
        portal: Option<&Portal<Stmt>>,
    ) -> PgWireResult<()> {
        let (Some(DeclareType::Cursor), Some(name), Some(query)) = (
            declare.declare_type.as_ref(),
            declare.names.first(),
            declare.for_query.as_ref(),
        ) else {
            return Err(pg_error(
                "42601",
                "only DECLARE name CURSOR FOR query is supported",
            ));
        };
        let inner = Statement::Query(query.clone());
        let role = role_of(client)?;
        let limits = Limits::of(&self.d, client);
        let _slot = Slot::take(&self.d)?;
        let (schema, stream) =
            tokio::time::timeout_at(limits.deadline, self.start(role, &inner, portal))
                .await
                .map_err(|_| limits.timed_out())??;
        // A portal by the cursor's name, so a client can Describe it (psycopg does).
        let described = plan_with_schema(&schema)?;
        let stored = StoredStatement::new(
            name.value.clone(),
            (inner.to_string(), Some((inner, described))),
            vec![],
        );
        HookClient::portal_store(client).put_portal(Arc::new(Portal::new_cursor(
            name.value.clone(),
            Arc::new(stored),
        )));
        cursors(client).0.lock().expect("cursors lock").insert(
            name.value.clone(),
            Arc::new(tokio::sync::Mutex::new(Cursor {
                schema,
                stream,
                pending: None,
            })),
        );
        Ok(())
    }

    /// The next `count` rows of a cursor (all the rest for `None`), within
    /// the time and byte limits (a cursor is how results beyond the row
    /// limit are read).
    async fn fetch<C: ClientInfo + ?Sized>(
        &self,
        client: &C,
        name: &str,
        count: Option<usize>,
        format: &Format,
    ) -> PgWireResult<Response> {
        let cursor = cursor_named(client, name)?;
        let limits = Limits::of(&self.d, client);
        let _slot = Slot::take(&self.d)?;
        let options = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
        let mut c = cursor.lock().await;
        let fields = Arc::new(arrow_schema_to_pg_fields(&c.schema, format, Some(options))?);
        let mut rows = Vec::new();
        let mut bytes = 0u64;
        let mut left = count.unwrap_or(usize::MAX);
        while left > 0 {
            let batch = match c.pending.take() {
                Some(b) => b,
                None => match tokio::time::timeout_at(limits.deadline, c.stream.next()).await {
                    Err(_) => return Err(limits.timed_out()),
                    Ok(None) => break,
                    Ok(Some(b)) => b.map_err(|e| engine_error(e, None))?,
                },
            };
            let take = batch.num_rows().min(left);
            if take < batch.num_rows() {
                c.pending = Some(batch.slice(take, batch.num_rows() - take));
            }
            for row in encode_recordbatch(fields.clone(), batch.slice(0, take)) {
                let row = row?;
                bytes += row.data.len() as u64;
                rows.push(row);
            }
            if bytes > limits.max_bytes {
                return Err(limits.too_many_bytes());
            }
            left -= take;
        }
        let mut resp = QueryResponse::new(fields, futures::stream::iter(rows.into_iter().map(Ok)));
        resp.set_command_tag("FETCH");
        Ok(Response::Query(resp))
    }

    /// One statement, by its [`Verdict`]; rows in the portal's formats
    /// (text over the simple protocol).
    async fn statement<C>(
        &self,
        client: &mut C,
        stmt: &Statement,
        portal: Option<&Portal<Stmt>>,
    ) -> PgWireResult<Response>
    where
        C: HookClient,
    {
        let format = portal
            .map(|p| p.result_column_format.clone())
            .unwrap_or(Format::UnifiedText);
        match classify(stmt) {
            Verdict::Refuse(e) => Err(e),
            Verdict::Ignore(tag) => Ok(Response::Execution(Tag::new(tag))),
            Verdict::Cursor => self.cursor(client, stmt, portal, &format).await,
            Verdict::Query => self.query(client, stmt, portal, &format).await,
            Verdict::Session => {
                if let Some((name, value)) = show_override(stmt) {
                    return show_response(name, value, &format);
                }
                let ctx = self.engine.bare();
                for hook in hooks() {
                    let answer = match portal {
                        None => hook.handle_simple_query(stmt, &ctx, client).await,
                        Some(p) => {
                            let plan = p
                                .statement
                                .statement
                                .1
                                .as_ref()
                                .map(|(_, plan)| plan.clone())
                                .unwrap_or_else(empty_plan);
                            let values = ParamValues::List(vec![]);
                            hook.handle_extended_query(stmt, &plan, &values, &ctx, client)
                                .await
                        }
                    };
                    if let Some(answer) = answer {
                        return answer;
                    }
                }
                self.query(client, stmt, portal, &format).await
            }
        }
    }
}

/// Plans a statement and checks again that the plan only reads.
async fn plan_statement(ctx: &SessionContext, stmt: &Statement) -> PgWireResult<LogicalPlan> {
    let plan = ctx
        .state()
        .statement_to_plan(DFStatement::Statement(Box::new(stmt.clone())))
        .await
        .map_err(|e| engine_error(e, Some(ctx)))?;
    query::read_only_options()
        .verify_plan(&plan)
        .map_err(|e| pg_error("25006", format!("ironlake SQL is read-only: {e}")))?;
    Ok(plan)
}

fn syntax_error(e: impl std::fmt::Display) -> PgWireError {
    pg_error("42601", format!("SQL syntax error: {e}"))
}

#[async_trait]
impl SimpleQueryHandler for PgSession {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        query::check_complexity(query).map_err(refused)?;
        let statements = self.parser.sql.parse(query).map_err(syntax_error)?;
        if statements.is_empty() {
            return Ok(vec![Response::EmptyQuery]);
        }
        let mut out = Vec::with_capacity(statements.len());
        for stmt in &statements {
            out.push(self.statement(client, stmt, None).await?);
        }
        Ok(out)
    }
}

#[async_trait]
impl ExtendedQueryHandler for PgSession {
    type Statement = Stmt;
    type QueryParser = PgParser;

    fn query_parser(&self) -> Arc<PgParser> {
        self.parser.clone()
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Stmt>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Stmt>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match &portal.statement.statement {
            (_, Some((stmt, _))) => self.statement(client, stmt, Some(portal)).await,
            (_, None) => Ok(Response::EmptyQuery),
        }
    }
}

#[async_trait]
impl QueryParser for PgParser {
    type Statement = Stmt;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        _types: &[Option<Type>],
    ) -> PgWireResult<Option<Stmt>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        query::check_complexity(sql).map_err(refused)?;
        let mut statements = self.sql.parse(sql).map_err(syntax_error)?;
        if statements.is_empty() {
            return Ok(None);
        }
        if statements.len() > 1 {
            return Err(pg_error(
                "42601",
                format!(
                    "cannot insert multiple commands into a prepared statement ({} given)",
                    statements.len()
                ),
            ));
        }
        let stmt = statements.remove(0);
        let plan = match classify(&stmt) {
            Verdict::Refuse(e) => return Err(e),
            Verdict::Ignore(_) => empty_plan(),
            Verdict::Cursor => match &stmt {
                Statement::Fetch { name, .. } => {
                    let cursor = cursor_named(client, &name.value)?;
                    let schema = cursor.lock().await.schema.clone();
                    plan_with_schema(&schema)?
                }
                _ => empty_plan(),
            },
            Verdict::Session => self.session_plan(client, &stmt).await?,
            Verdict::Query => self.plan(role_of(client)?, &stmt).await?.1,
        };
        Ok(Some((sql.to_string(), Some((stmt, plan)))))
    }

    fn get_parameter_types(&self, stmt: &Stmt) -> PgWireResult<Vec<Type>> {
        match stmt {
            (_, Some((_, plan))) => wire_types(&parameter_types(plan)?),
            _ => Ok(vec![]),
        }
    }

    fn get_result_schema(
        &self,
        stmt: &Stmt,
        column_format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        match stmt {
            (_, Some((_, plan))) => arrow_schema_to_pg_fields(
                plan.schema().as_arrow(),
                column_format.unwrap_or(&Format::UnifiedText),
                None,
            ),
            _ => Ok(vec![]),
        }
    }
}

impl PgParser {
    /// The plan describing a session statement: `SHOW server_version`'s
    /// column, the protocol hooks' answer, or else the engine's own plan.
    async fn session_plan<C>(&self, client: &C, stmt: &Statement) -> PgWireResult<LogicalPlan>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        if let Some((name, _)) = show_override(stmt) {
            return plan_with_schema(&arrow::datatypes::Schema::new(vec![
                arrow::datatypes::Field::new(name, DataType::Utf8, false),
            ]));
        }
        let ctx = self.engine.bare();
        for hook in hooks() {
            if let Some(p) = hook
                .handle_extended_parse_query(stmt, &ctx, client as &(dyn ClientInfo + Send + Sync))
                .await
            {
                return p;
            }
        }
        Ok(self.plan(role_of(client)?, stmt).await?.1)
    }

    /// Plans a query on the current snapshot for `role` (refused if it
    /// reads what the role may not): the session and the plan. Parse plans
    /// to describe a statement; Execute plans again, on the snapshot
    /// current then.
    async fn plan(
        &self,
        role: Role,
        stmt: &Statement,
    ) -> PgWireResult<(SessionContext, LogicalPlan)> {
        let ctx = self
            .engine
            .snapshot(&self.d.catalog())
            .await
            .map_err(internal)?;
        let plan = plan_statement(&ctx, stmt).await?;
        check_role(role, &plan)?;
        Ok((ctx, plan))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(sql: &str) -> Statement {
        PostgresCompatibilityParser::new()
            .parse(sql)
            .unwrap()
            .remove(0)
    }

    fn verdict(sql: &str) -> &'static str {
        match classify(&parse(sql)) {
            Verdict::Query => "query",
            Verdict::Session => "session",
            Verdict::Cursor => "cursor",
            Verdict::Ignore(_) => "ignore",
            Verdict::Refuse(_) => "refuse",
        }
    }

    #[test]
    fn only_queries_and_session_statements_pass() {
        assert_eq!(verdict("SELECT 1"), "query");
        assert_eq!(verdict("EXPLAIN SELECT 1"), "query");
        assert_eq!(verdict("SHOW server_version"), "session");
        assert_eq!(verdict("SET extra_float_digits = 3"), "session");
        assert_eq!(verdict("SET application_name = 'x'"), "session");
        assert_eq!(verdict("BEGIN"), "session");
        assert_eq!(verdict("DECLARE c CURSOR FOR SELECT 1"), "cursor");
        assert_eq!(verdict("FETCH 10 FROM c"), "cursor");
        assert_eq!(verdict("DISCARD ALL"), "ignore");
        assert_eq!(verdict("SAVEPOINT s1"), "ignore");
        assert_eq!(verdict("ROLLBACK TO SAVEPOINT s1"), "ignore");
        assert_eq!(
            verdict("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY"),
            "ignore"
        );
        for sql in [
            "INSERT INTO bank_loans VALUES (1)",
            "DELETE FROM bank_loans",
            "UPDATE bank_loans SET balance = 0",
            "DROP TABLE bank_loans",
            "CREATE TABLE t (a int)",
            "CREATE VIEW v AS SELECT 1",
            "COPY bank_loans TO '/tmp/x'",
            "SET datafusion.execution.batch_size = 1",
            "EXPLAIN ANALYZE DELETE FROM bank_loans",
        ] {
            assert_eq!(verdict(sql), "refuse", "{sql}");
        }
    }

    #[test]
    fn parameters_are_numbered_in_order() {
        let ctx = SessionContext::new();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let plan = rt
            .block_on(ctx.state().create_logical_plan(
                "SELECT * FROM (VALUES (CAST(1 AS BIGINT), 'a')) t(a, b) WHERE b = $1 AND a = $2",
            ))
            .unwrap();
        let types = parameter_types(&plan).unwrap();
        assert_eq!(types, vec![Some(DataType::Utf8), Some(DataType::Int64)]);
        assert_eq!(wire_types(&types).unwrap(), vec![Type::TEXT, Type::INT8]);
    }
}
