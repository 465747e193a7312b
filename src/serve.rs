//! Serve: the HTTP API for operators, analysts and dashboards (axum).
//!
//! | route | role |
//! |---|---|
//! | `GET /healthz`, `GET /readyz`, `GET /metrics` | none |
//! | `GET /api/v1/pipelines`, `GET /api/v1/runs` | viewer |
//! | `POST /api/v1/pipelines/{name}/runs`, `POST /api/v1/reload` | admin |
//! | `POST /api/v1/sql` | analyst |
//! | `GET /api/v1/aggregates`, `GET /api/v1/aggregates/{name}`, `GET /api/v1/aggregates/{name}/definition` | viewer, or none if `api.public_aggregates` |
//!
//! Roles nest: admin ⊃ analyst ⊃ viewer. Tokens are compared in constant
//! time and never logged.

use crate::daemon::{Daemon, TriggerError};
use crate::ingest::RunKind;
use crate::primitives::constant_time_eq;
use crate::query::{self, Encoder, OutputFormat, QueryError};
use arrow::array::RecordBatch;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// A role of an API token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// A partner system: pushes to its pipelines, nothing else.
    Partner,
    /// Reads aggregates, pipelines and runs.
    Viewer,
    /// Also runs SQL.
    Analyst,
    /// Also triggers runs and reloads.
    Admin,
}

impl Role {
    /// The role's name in config, logs and the dashboard.
    pub fn name(self) -> &'static str {
        match self {
            Role::Partner => "partner",
            Role::Viewer => "viewer",
            Role::Analyst => "analyst",
            Role::Admin => "admin",
        }
    }
}

/// An error at the HTTP edge: 4xx messages for the client, 5xx details in the log.
#[derive(Debug)]
pub enum ApiError {
    /// No valid token.
    Unauthorized,
    /// The token's role is not enough.
    Forbidden(Role),
    /// A dashboard session's state-changing request without its CSRF token.
    Csrf,
    /// A partner token used for something other than pushing, or a push by
    /// someone who may not push there.
    PushForbidden(String),
    /// The body's media type is not one the route reads.
    UnsupportedMediaType(String),
    /// Nothing there.
    NotFound(String),
    /// A run is in flight.
    Conflict(String),
    /// The request is wrong.
    BadRequest(String),
    /// The query ran past its time limit.
    Timeout(u64),
    /// Not ready yet / shutting down.
    Unavailable(String),
    /// Our own limits (concurrency, memory) are reached: retry shortly.
    Busy(String),
    /// The body is larger than allowed.
    TooLarge(usize),
    /// The client took too long to send the body.
    BodyTimeout(u64),
    /// A bug or an I/O failure.
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, msg) = match self {
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "missing or invalid bearer token".to_string(),
            ),
            ApiError::Forbidden(r) => (
                StatusCode::FORBIDDEN,
                format!("this needs the {r:?} role").to_lowercase(),
            ),
            ApiError::PushForbidden(m) => (StatusCode::FORBIDDEN, m),
            ApiError::UnsupportedMediaType(m) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, m),
            ApiError::Csrf => (
                StatusCode::FORBIDDEN,
                "a dashboard session's request that changes something needs the session's X-CSRF-Token header (GET /ui/session)".to_string(),
            ),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, m),
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            ApiError::Timeout(s) => (
                StatusCode::GATEWAY_TIMEOUT,
                format!("the query ran past the {s}s limit and was stopped"),
            ),
            ApiError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, m),
            ApiError::Busy(m) => (StatusCode::SERVICE_UNAVAILABLE, m),
            ApiError::TooLarge(n) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is larger than {n} bytes"),
            ),
            ApiError::BodyTimeout(s) => (
                StatusCode::REQUEST_TIMEOUT,
                format!("the body did not arrive within {s} s"),
            ),
            ApiError::Internal(m) => {
                tracing::error!(error = %m, "Internal error serving a request.");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error; the details are in the server log".to_string(),
                )
            }
        };
        let mut resp = (status, axum::Json(serde_json::json!({ "error": msg }))).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"ironlake\""),
            );
        }
        resp
    }
}

/// The role a request grants: its bearer token's if it has an
/// `Authorization` header, else its dashboard session's.
pub fn role_of(d: &Daemon, headers: &HeaderMap) -> Option<Role> {
    match headers.get(header::AUTHORIZATION) {
        Some(v) => role_for_token(d, v.to_str().ok()?.strip_prefix("Bearer ")?.trim()),
        None => crate::dashboard::session_of(d, headers).map(|s| s.role),
    }
}

/// The role a token grants, if any (compared in constant time).
pub fn role_for_token(d: &Daemon, token: &str) -> Option<Role> {
    let t = d.tokens();
    let matches = |want: &Option<String>| {
        want.as_ref()
            .is_some_and(|w| constant_time_eq(w.as_bytes(), token.as_bytes()))
    };
    // Check every token every time, so timing does not reveal which one matched.
    let (admin, analyst, viewer) = (matches(&t.admin), matches(&t.analyst), matches(&t.viewer));
    let partner = partner_for_token(&t, token).is_some();
    if admin {
        Some(Role::Admin)
    } else if analyst {
        Some(Role::Analyst)
    } else if viewer {
        Some(Role::Viewer)
    } else if partner {
        Some(Role::Partner)
    } else {
        None
    }
}

/// The partner whose token this is, if any (every partner compared in constant time).
pub fn partner_for_token(
    t: &crate::daemon::Tokens,
    token: &str,
) -> Option<crate::daemon::PartnerToken> {
    let mut found = None;
    for p in &t.partners {
        if constant_time_eq(p.token.as_bytes(), token.as_bytes()) && found.is_none() {
            found = Some(p.clone());
        }
    }
    found
}

/// [`require`] for a request that changes something: one made with a
/// dashboard session (not a bearer token) must also carry its CSRF token.
fn require_write(d: &Daemon, headers: &HeaderMap, need: Role) -> Result<Role, ApiError> {
    let role = require(d, headers, need)?;
    if !headers.contains_key(header::AUTHORIZATION) {
        crate::dashboard::check_csrf(d, headers)?;
    }
    Ok(role)
}

pub(crate) fn require(d: &Daemon, headers: &HeaderMap, need: Role) -> Result<Role, ApiError> {
    match role_of(d, headers) {
        None => Err(ApiError::Unauthorized),
        Some(r) if r < need => Err(ApiError::Forbidden(need)),
        Some(r) => Ok(r),
    }
}

type S = State<Arc<Daemon>>;

async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "alive"}))
}

async fn readyz(State(d): S) -> Response {
    if d.is_ready() {
        axum::Json(serde_json::json!({"status": "ready"})).into_response()
    } else {
        ApiError::Unavailable("starting: recovering the warehouse and loading schedules".into())
            .into_response()
    }
}

async fn metrics(State(d): S) -> Response {
    d.sync_run_metrics();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        d.metrics.render(),
    )
        .into_response()
}

async fn pipelines(State(d): S, headers: HeaderMap) -> Result<Response, ApiError> {
    require(&d, &headers, Role::Viewer)?;
    let project = d.project();
    let manifest = d
        .warehouse()
        .manifest_shared()
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let runs = d
        .warehouse()
        .runs_shared()
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let running = d.running();
    let now = d.now();
    let mut list: Vec<serde_json::Value> = project
        .pipelines
        .iter()
        .map(|p| {
            let last = runs.iter().find(|r| r.pipeline == p.name);
            serde_json::json!({
                "name": p.name,
                "kind": "pull",
                "table": p.table,
                "description": p.description,
                "schedule": p.schedule.expression,
                "time_zone": p.schedule.time_zone.to_string(),
                "catch_up": p.schedule.catch_up.as_str(),
                "next_run": crate::daemon::next_fire(&p.schedule, now).map(|t| t.to_rfc3339()),
                "running": running.contains(&p.name),
                "cursor": manifest.cursors.get(&p.name).map(|c| c.value.clone()),
                "last_run": last.map(|r| serde_json::json!({"run_id": r.run_id, "outcome": r.outcome, "started_at": r.started_at, "ended_at": r.ended_at, "error": r.error})),
            })
        })
        .collect();
    // Push pipelines run when partners push: no schedule, no cursor.
    list.extend(project.push_pipelines.iter().map(|p| {
        let last = runs.iter().find(|r| r.pipeline == p.name);
        serde_json::json!({
            "name": p.name,
            "kind": "push",
            "table": p.table,
            "description": p.description,
            "intake": format!("/api/v1/intake/{}", p.name),
            "schedule": null,
            "time_zone": null,
            "next_run": null,
            "running": false,
            "last_run": last.map(|r| serde_json::json!({"run_id": r.run_id, "outcome": r.outcome, "started_at": r.started_at, "ended_at": r.ended_at, "error": r.error})),
        })
    }));
    Ok(axum::Json(serde_json::json!({ "pipelines": list })).into_response())
}

#[derive(Deserialize)]
struct RunsQuery {
    pipeline: Option<String>,
    limit: Option<usize>,
}

async fn runs(
    State(d): S,
    headers: HeaderMap,
    Query(q): Query<RunsQuery>,
) -> Result<Response, ApiError> {
    require(&d, &headers, Role::Viewer)?;
    let runs = d
        .warehouse()
        .runs_shared()
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let limit = q.limit.unwrap_or(50).min(1000);
    let list: Vec<_> = runs
        .iter()
        .filter(|r| q.pipeline.as_ref().is_none_or(|p| &r.pipeline == p))
        .take(limit)
        .collect();
    Ok(axum::Json(serde_json::json!({ "runs": list })).into_response())
}

async fn trigger(
    State(d): S,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    require_write(&d, &headers, Role::Admin)?;
    match d.trigger(&name, RunKind::Ingest) {
        Ok(()) => Ok((
            StatusCode::ACCEPTED,
            axum::Json(serde_json::json!({"pipeline": name, "status": "started"})),
        )
            .into_response()),
        Err(TriggerError::Unknown(n)) if d.project().push_pipeline(&n).is_some() => {
            Err(ApiError::Conflict(format!(
                "{n} is a push pipeline: it runs when partners push to POST /api/v1/intake/{n}"
            )))
        }
        Err(TriggerError::Unknown(n)) => {
            Err(ApiError::NotFound(format!("no pipeline named {n:?}")))
        }
        Err(TriggerError::Running(n)) => Err(ApiError::Conflict(format!(
            "pipeline {n} is already running"
        ))),
        Err(TriggerError::ShuttingDown) => Err(ApiError::Unavailable("shutting down".into())),
    }
}

async fn reload(State(d): S, headers: HeaderMap) -> Result<Response, ApiError> {
    require_write(&d, &headers, Role::Admin)?;
    match d.reload() {
        Ok(n) => Ok(
            axum::Json(serde_json::json!({"status": "reloaded", "pipelines": n})).into_response(),
        ),
        Err(e) => Err(ApiError::BadRequest(format!(
            "the configuration has errors; the previous pipelines keep running:\n{e}"
        ))),
    }
}

/// The bearer token of a request, if it has one.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// The format of a push body, from its `Content-Type`.
fn push_format(headers: &HeaderMap) -> Result<crate::config::pipeline::Format, ApiError> {
    use crate::config::pipeline::Format;
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match media.as_str() {
        "application/json" => Ok(Format::Json),
        "application/x-ndjson"
        | "application/ndjson"
        | "application/jsonl"
        | "application/x-jsonlines" => Ok(Format::Ndjson),
        "text/csv" => Ok(Format::Csv),
        _ => Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type {ct:?} is not one a push reads: application/json (an object or an array), application/x-ndjson or text/csv (with a header row)"
        ))),
    }
}

/// The answer to a push as the client sees it: 200 when a record was accepted, else 422.
fn intake_response(a: &crate::warehouse::IntakeAnswer, replayed: bool) -> Response {
    let status = if a.accepted > 0 {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    let mut resp = (
        status,
        axum::Json(serde_json::json!({
            "run_id": a.run_id,
            "accepted": a.accepted,
            "rejected": a.rejected,
            "errors": a.errors,
        })),
    )
        .into_response();
    if replayed {
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    resp
}

/// `POST /api/v1/intake/{pipeline}`: records a partner pushes. The token is
/// checked before a byte of the body is read; the answer comes after the commit.
async fn intake(State(d): S, Path(name): Path<String>, req: Request) -> Result<Response, ApiError> {
    use crate::intake::{Intake, Pushed, Refused};
    let (parts, body) = req.into_parts();
    let headers = &parts.headers;
    let token = bearer(headers).ok_or(ApiError::Unauthorized)?;
    let Some(partner) = partner_for_token(&d.tokens(), token) else {
        return match role_for_token(&d, token) {
            Some(r) => Err(ApiError::PushForbidden(format!(
                "the {} role cannot push; pushes need a partner's token ([[api.partners]])",
                r.name()
            ))),
            None => Err(ApiError::Unauthorized),
        };
    };
    let project = d.project();
    let Some(pipeline) = project.push_pipeline(&name) else {
        return Err(ApiError::NotFound(format!(
            "no push pipeline named {name:?}"
        )));
    };
    if !partner.pipelines.contains(&name) {
        return Err(ApiError::PushForbidden(format!(
            "partner {} may not push to {name} (it may push to: {})",
            partner.name,
            partner.pipelines.join(", ")
        )));
    }
    let format = push_format(headers)?;
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => {
            let k = v.to_str().unwrap_or("").trim();
            if k.is_empty() || k.len() > 255 {
                return Err(ApiError::BadRequest(
                    "an Idempotency-Key is 1 to 255 visible ASCII characters".into(),
                ));
            }
            Some(k.to_string())
        }
    };
    if let Some(k) = &key
        && let Some(a) = d.intake().answered(&d, &name, k)
    {
        return Ok(intake_response(&a, true));
    }
    let max = pipeline.max_body_bytes;
    let body = read_body(&d, body, max).await?;
    let pushed = Pushed {
        partner: partner.name.clone(),
        key,
        format,
        body,
        request_no: d.intake().next_request_no(),
    };
    match Intake::push(&d, &name, pushed).await {
        Ok(a) => Ok(intake_response(&a, false)),
        Err(Refused::Undecodable(m)) => Ok((
            StatusCode::UNPROCESSABLE_ENTITY,
            axum::Json(serde_json::json!({
                "error": format!("the body could not be read; nothing of it was committed: {m}"),
                "accepted": 0,
                "rejected": 0,
                "errors": [],
            })),
        )
            .into_response()),
        Err(Refused::Busy) => Err(ApiError::Busy(
            "too many pushes are queued; retry shortly".into(),
        )),
        Err(Refused::NotCommitted(m)) => Err(ApiError::Unavailable(format!(
            "nothing was committed ({m}); retry with the same Idempotency-Key"
        ))),
    }
}

fn encoding_from_accept(headers: &HeaderMap) -> OutputFormat {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if accept.contains("text/csv") {
        OutputFormat::Csv
    } else if accept.contains("application/vnd.apache.arrow.stream") {
        OutputFormat::Arrow
    } else if accept.contains("application/vnd.apache.parquet") {
        OutputFormat::Parquet
    } else {
        OutputFormat::Json
    }
}

/// Encodes whole batches (a published aggregate: small and already bounded).
fn encode(
    batches: &[RecordBatch],
    schema: &arrow::datatypes::SchemaRef,
    format: OutputFormat,
) -> Result<Vec<u8>, ApiError> {
    let ierr = |e: QueryError| ApiError::Internal(e.to_string());
    let mut enc = Encoder::new(format, schema.clone(), Vec::new()).map_err(ierr)?;
    for b in batches {
        enc.write(b).map_err(ierr)?;
    }
    enc.finish().map_err(ierr)
}

#[derive(Deserialize)]
struct SqlBody {
    sql: String,
}

/// Counts a query in flight for as long as it lives (dropped with the
/// handler when the client goes away).
pub(crate) struct InFlight(Arc<Daemon>);

impl InFlight {
    pub(crate) fn new(d: &Arc<Daemon>) -> InFlight {
        d.metrics
            .inc(crate::metrics::Metric::SqlQueriesInFlight, &[], 1.0);
        InFlight(d.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0
            .metrics
            .inc(crate::metrics::Metric::SqlQueriesInFlight, &[], -1.0);
    }
}

/// Reads a request body of at most `limit` bytes within the body timeout.
async fn read_body(d: &Daemon, body: axum::body::Body, limit: usize) -> Result<Bytes, ApiError> {
    let secs = d.project().settings.api.body_timeout_secs;
    match tokio::time::timeout(Duration::from_secs(secs), axum::body::to_bytes(body, limit)).await {
        Err(_) => Err(ApiError::BodyTimeout(secs)),
        Ok(Ok(b)) => Ok(b),
        Ok(Err(_)) => Err(ApiError::TooLarge(limit)),
    }
}

/// The statement of a SQL request: the body as text, or `{"sql": …}` for JSON.
fn statement_of(headers: &HeaderMap, body: &[u8]) -> Result<String, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::BadRequest("the body is not UTF-8".into()))?;
    if headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.contains("json"))
    {
        Ok(serde_json::from_str::<SqlBody>(text)
            .map_err(|e| ApiError::BadRequest(format!("expected {{\"sql\": \"…\"}}: {e}")))?
            .sql)
    } else {
        Ok(text.to_string())
    }
}

/// A result encoded within the row, byte and memory limits.
struct Encoded {
    bytes: Vec<u8>,
    truncated: Option<&'static str>,
}

/// Plans, runs and encodes one analyst query. Rows and bytes are capped;
/// the encoded bytes are reserved in the engine's memory pool as they grow.
async fn run_sql(d: &Daemon, sql: &str, format: OutputFormat) -> Result<Encoded, ApiError> {
    let api = d.project().settings.api.clone();
    let catalog = d.catalog();
    let snapshot = catalog
        .snapshot()
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let df = query::sql(&snapshot, sql).await.map_err(query_error)?;
    let schema = Arc::new(df.schema().as_arrow().clone());
    let mut stream = df.execute_stream().await.map_err(engine_error)?;
    let reservation = datafusion::execution::memory_pool::MemoryConsumer::new("SQL API result")
        .register(catalog.memory_pool());
    let mut enc = Encoder::new(format, schema, Vec::new()).map_err(query_error)?;
    let mut truncated = None;
    'batches: while let Some(b) = stream.next().await {
        let b = b.map_err(engine_error)?;
        // Small slices, so a cap is overshot by little.
        let mut offset = 0;
        while offset < b.num_rows() {
            let left = api.sql_max_rows as u64 - enc.rows();
            if left == 0 {
                truncated = Some("rows");
                break 'batches;
            }
            let n = (b.num_rows() - offset).min(1024).min(left as usize);
            enc.write(&b.slice(offset, n)).map_err(query_error)?;
            offset += n;
            let used = enc.bytes();
            if used > reservation.size() as u64 {
                reservation.try_resize(used as usize).map_err(|e| {
                    ApiError::Busy(format!(
                        "the result does not fit in the engine's memory now: {e}"
                    ))
                })?;
            }
            if used >= api.sql_max_bytes {
                truncated = Some("bytes");
                break 'batches;
            }
        }
    }
    let bytes = enc.finish().map_err(query_error)?;
    Ok(Encoded { bytes, truncated })
}

/// A query refused or failed, by who must act: the analyst (400), our
/// limits (503, retry), or us (500, details in the log).
fn query_error(e: QueryError) -> ApiError {
    match e.actor() {
        crate::Actor::Analyst | crate::Actor::Partner => ApiError::BadRequest(e.to_string()),
        crate::Actor::Operator => ApiError::Busy(e.to_string()),
        crate::Actor::Ours => ApiError::Internal(e.to_string()),
    }
}

/// An execution error, sorted like [`query_error`].
fn engine_error(e: datafusion::error::DataFusionError) -> ApiError {
    query_error(QueryError::Engine {
        message: query::describe(&e, &[]),
        source: e,
    })
}

async fn sql(State(d): S, req: Request) -> Result<Response, ApiError> {
    // The token is checked before a byte of the body is read.
    let (parts, body) = req.into_parts();
    require_write(&d, &parts.headers, Role::Analyst)?;
    let api = d.project().settings.api.clone();
    let Ok(_permit) = d.sql_permits().try_acquire_owned() else {
        return Err(ApiError::Busy(format!(
            "{} SQL queries are already running; try again shortly",
            api.sql_max_concurrent
        )));
    };
    let body = read_body(&d, body, query::MAX_STATEMENT_BYTES + 4096).await?;
    let sql = statement_of(&parts.headers, &body)?;
    let format = encoding_from_accept(&parts.headers);
    let _in_flight = InFlight::new(&d);
    // One deadline for planning, running and encoding.
    let secs = api.sql_timeout_secs;
    let out = tokio::time::timeout(Duration::from_secs(secs), run_sql(&d, &sql, format))
        .await
        .map_err(|_| ApiError::Timeout(secs))??;
    let mut resp = ([(header::CONTENT_TYPE, format.content_type())], out.bytes).into_response();
    if let Some(what) = out.truncated {
        let limit = if what == "rows" {
            api.sql_max_rows.to_string()
        } else {
            format!("{} bytes", api.sql_max_bytes)
        };
        resp.headers_mut().insert(
            "x-ironlake-truncated",
            HeaderValue::from_str(&limit).expect("ascii"),
        );
    }
    Ok(resp)
}

pub(crate) fn viewer_or_public(d: &Daemon, headers: &HeaderMap) -> Result<(), ApiError> {
    if d.project().settings.api.public_aggregates {
        return Ok(());
    }
    require(d, headers, Role::Viewer).map(|_| ())
}

async fn aggregates(State(d): S, headers: HeaderMap) -> Result<Response, ApiError> {
    viewer_or_public(&d, &headers)?;
    let m = d
        .warehouse()
        .manifest_shared()
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let definitions = d.aggregate_definitions();
    let list: Vec<_> = m
        .published
        .iter()
        .map(|(name, meta)| {
            let v = meta.versions.last();
            let description = definitions.get(name).map(|d| &d.description);
            serde_json::json!({
                "name": name,
                "description": description,
                "version": v.map(|v| v.version),
                "published_at": v.map(|v| v.published_at),
                "rows": v.map(|v| v.rows),
                "columns": columns_of(meta, definitions.get(name)),
                "quarters": m.dirs.get(&crate::warehouse::DirKey::Published(name.clone()).key()).map(|s| s.partitions.keys().cloned().collect::<Vec<_>>()),
                "versions": meta.versions.iter().map(|v| v.version).collect::<Vec<_>>(),
            })
        })
        .collect();
    // Dashboards poll this list for new versions: a validator over the body
    // answers an unchanged list with a 304.
    let body = serde_json::json!({ "aggregates": list }).to_string();
    let etag = format!(
        "\"l{}-{}\"",
        m.version,
        &crate::primitives::fingerprint(&body, None, "")[..12]
    );
    validated(&headers, &etag, "application/json", async {
        Ok(Bytes::from(body))
    })
    .await
}

/// An aggregate's columns in output order with Arrow type, nullability,
/// unit, Chinese name and formula (from its SQL header; the unit falls back
/// to the naming convention of the aggregate files), plus the
/// `district_name` the API adds beside `district_code`.
fn columns_of(
    meta: &crate::warehouse::PublishedMeta,
    def: Option<&crate::models::Definition>,
) -> Vec<serde_json::Value> {
    let mut out: Vec<serde_json::Value> = meta
        .columns
        .iter()
        .map(|c| {
            let (ty, nullable) = meta
                .schema
                .iter()
                .find(|(n, _, _)| n == c)
                .map_or(("Utf8".to_string(), false), |(_, t, n)| (t.clone(), *n));
            let doc = def.and_then(|d| d.columns.iter().find(|x| &x.name == c));
            let unit = match doc {
                Some(doc) => doc.unit.clone(),
                None => unit_of(c, &ty).map(str::to_string),
            };
            serde_json::json!({
                "name": c,
                "type": ty,
                "nullable": nullable,
                "unit": unit,
                "label": doc.map(|d| &d.label),
                "formula": doc.map(|d| &d.formula),
            })
        })
        .collect();
    if meta.columns.iter().any(|c| c == "district_code") {
        out.push(serde_json::json!({
            "name": "district_name",
            "type": "Utf8",
            "nullable": true,
            "unit": null,
            "label": "区县名称",
            "formula": "name of district_code in GB/T 2260 (全市 for ALL), added by the API",
        }));
    }
    out
}

/// `GET /api/v1/aggregates/{name}/definition`: how an aggregate is made
/// (口径说明) — its description, columns with types, units, Chinese names
/// and formulas, the policy parameters it uses and its SQL.
async fn definition(
    State(d): S,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    viewer_or_public(&d, &headers)?;
    let definitions = d.aggregate_definitions();
    let m = d
        .warehouse()
        .manifest_shared()
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let (Some(def), Some(meta)) = (definitions.get(&name), m.published.get(&name)) else {
        return Err(ApiError::NotFound(format!(
            "no published aggregate named {name:?}; GET /api/v1/aggregates lists them"
        )));
    };
    Ok(axum::Json(serde_json::json!({
        "name": def.name,
        "description": def.description,
        "file": def.file,
        "version": meta.versions.last().map(|v| v.version),
        "partition_by": crate::config::schema::PARTITION_COLUMN,
        "lags": def.lags,
        "input_lags": def.input_lags,
        "latest": def.latest,
        "refresh": if def.lags.is_some() { "incremental by quarter" } else { "recomputed whole" },
        "refresh_rule": def.refresh,
        "columns": columns_of(meta, Some(def)),
        "policy": def.policy,
        "sql": def.sql,
    }))
    .into_response())
}

/// The unit of an aggregate column, from its name and type.
fn unit_of(name: &str, ty: &str) -> Option<&'static str> {
    if name.ends_with("_pct") {
        Some("percent")
    } else if name.ends_with("_pp") {
        Some("percentage points")
    } else if name.ends_with("_days") || name.starts_with("days_") {
        Some("days")
    } else if ty.starts_with("Decimal128(") && ty.ends_with(", 2)") {
        Some("CNY yuan")
    } else {
        None
    }
}

/// Comma-separated quarters as SQL literals; 400 naming a bad one.
fn quarters(v: &str) -> Result<Vec<String>, ApiError> {
    v.split(',')
        .map(|q| {
            let q = q.trim();
            q.parse::<crate::domain::Quarter>()
                .map(|q| sql_str(&q.to_string()))
                .map_err(|e| ApiError::BadRequest(format!("{q:?}: {e}")))
        })
        .collect()
}

fn sql_str(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Encoded aggregate responses, by representation (name, version, format,
/// filters). Published versions never change, so an entry never goes stale;
/// the least recently used go when the byte budget is reached.
pub struct ResponseCache {
    budget: usize,
    inner: std::sync::Mutex<CacheInner>,
}

#[derive(Default)]
struct CacheInner {
    entries: HashMap<String, (Bytes, u64)>,
    bytes: usize,
    tick: u64,
}

impl ResponseCache {
    /// A cache holding at most `budget` bytes of responses.
    pub fn new(budget: usize) -> ResponseCache {
        ResponseCache {
            budget,
            inner: Default::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheInner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A cached response body.
    pub fn get(&self, key: &str) -> Option<Bytes> {
        let mut inner = self.lock();
        inner.tick += 1;
        let tick = inner.tick;
        let entry = inner.entries.get_mut(key)?;
        entry.1 = tick;
        Some(entry.0.clone())
    }

    /// Keeps a response body, evicting the least recently used past the budget.
    pub fn put(&self, key: String, body: Bytes) {
        if body.len() > self.budget / 4 {
            return; // one huge response would flush everything else
        }
        let mut inner = self.lock();
        inner.tick += 1;
        let tick = inner.tick;
        inner.bytes += body.len();
        if let Some((old, _)) = inner.entries.insert(key, (body, tick)) {
            inner.bytes -= old.len();
        }
        while inner.bytes > self.budget {
            let Some(oldest) = inner
                .entries
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some((b, _)) = inner.entries.remove(&oldest) {
                inner.bytes -= b.len();
            }
        }
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

async fn aggregate(
    State(d): S,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    viewer_or_public(&d, &headers)?;
    // The current version from the manifest's cached copy: no SQL, no
    // session for a read whose representation is cached or unchanged.
    let manifest = d
        .warehouse()
        .manifest_shared()
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let Some(meta) = manifest.published.get(&name) else {
        return Err(ApiError::NotFound(format!(
            "no published aggregate {name:?}; published: {}",
            manifest
                .published
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )));
    };
    let version = meta.versions.last().map_or(0, |v| v.version);
    let filters = filters_of(&name, meta, &q)?;
    let format = match q.get("format") {
        None => encoding_from_accept(&headers),
        Some(f) => format_named(f)?,
    };
    // One validator per representation: version, format and filters.
    let filter_tag = crate::primitives::fingerprint(&filters.join("&"), None, "");
    let etag = format!("\"v{version}-{}-{}\"", format.name(), &filter_tag[..12]);
    let body = cached(&d, format!("{name} {etag}"), async {
        Ok(Bytes::from(
            read_aggregate(&d, &manifest, &name, meta, &filters, format).await?,
        ))
    });
    let mut resp = validated(&headers, &etag, format.content_type(), body).await?;
    resp.headers_mut()
        .insert(header::VARY, HeaderValue::from_static("Accept"));
    Ok(resp)
}

/// Runs the query of an aggregate read (on a cache miss) and encodes it.
async fn read_aggregate(
    d: &Daemon,
    manifest: &crate::warehouse::Manifest,
    name: &str,
    meta: &crate::warehouse::PublishedMeta,
    filters: &[String],
    format: OutputFormat,
) -> Result<Vec<u8>, ApiError> {
    let (schema, batches) = aggregate_rows(d, manifest, name, meta, filters).await?;
    encode(&batches, &schema, format)
}

/// The rows of a published aggregate in `manifest`'s version, filtered, in
/// key order; aggregates by district also carry the district's name (全市 for the city).
pub(crate) async fn aggregate_rows(
    d: &Daemon,
    manifest: &crate::warehouse::Manifest,
    name: &str,
    meta: &crate::warehouse::PublishedMeta,
    filters: &[String],
) -> Result<(arrow::datatypes::SchemaRef, Vec<RecordBatch>), ApiError> {
    let snapshot = d
        .catalog()
        .snapshot_at(manifest.clone())
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let order = if meta.columns.iter().any(|c| c == "rank") {
        "quarter, rank"
    } else {
        "1, 2"
    };
    let where_ = if filters.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", filters.join(" AND "))
    };
    let sql = if meta.columns.iter().any(|c| c == "district_code") {
        format!(
            "SELECT a.*, CASE WHEN a.district_code = 'ALL' THEN '全市' ELSE d.name END AS district_name \
             FROM published.{name} a LEFT JOIN ref_districts d ON a.district_code = d.code{where_} ORDER BY {order}"
        )
    } else {
        format!("SELECT a.* FROM published.{name} a{where_} ORDER BY {order}")
    };
    let df = snapshot
        .ctx
        .sql_with_options(&sql, query::read_only_options())
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let schema = Arc::new(df.schema().as_arrow().clone());
    let batches = df
        .collect()
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok((schema, batches))
}

/// The SQL conditions of an aggregate request's filters, in a stable
/// order (equal requests get equal validators): `quarter` (several values,
/// comma-separated), `from`/`to` (a range) and `district_code`.
pub(crate) fn filters_of(
    name: &str,
    meta: &crate::warehouse::PublishedMeta,
    q: &HashMap<String, String>,
) -> Result<Vec<String>, ApiError> {
    let mut params: Vec<(&String, &String)> = q.iter().collect();
    params.sort();
    let mut filters = Vec::new();
    for (k, v) in params {
        match k.as_str() {
            "format" => {}
            "quarter" => filters.push(format!("a.quarter IN ({})", quarters(v)?.join(", "))),
            "from" | "to" => {
                let q = quarters(v)?;
                if q.len() != 1 {
                    return Err(ApiError::BadRequest(format!(
                        "{k} takes one quarter, e.g. 2019Q1"
                    )));
                }
                let op = if k.as_str() == "from" { ">=" } else { "<=" };
                filters.push(format!("a.quarter {op} {}", q[0]));
            }
            "district_code" => {
                if !meta.columns.iter().any(|c| c == "district_code") {
                    return Err(ApiError::BadRequest(format!(
                        "{name} has no district_code column"
                    )));
                }
                let codes: Vec<String> = v.split(',').map(|c| sql_str(c.trim())).collect();
                filters.push(format!("a.district_code IN ({})", codes.join(", ")));
            }
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown parameter {other:?}; use quarter, from, to, district_code, format"
                )));
            }
        }
    }
    Ok(filters)
}

/// A `format=` value.
fn format_named(f: &str) -> Result<OutputFormat, ApiError> {
    match f {
        "json" => Ok(OutputFormat::Json),
        "csv" => Ok(OutputFormat::Csv),
        "arrow" => Ok(OutputFormat::Arrow),
        "parquet" => Ok(OutputFormat::Parquet),
        other => Err(ApiError::BadRequest(format!(
            "unknown format {other:?}; use json, csv, arrow or parquet"
        ))),
    }
}

/// `If-None-Match` by RFC 9110's weak comparison: `W/"x"` matches `"x"`; `*` matches anything.
pub fn if_none_match(header: &str, etag: &str) -> bool {
    let bare = |t: &str| t.trim().trim_start_matches("W/").to_string();
    let want = bare(etag);
    header
        .split(',')
        .any(|t| t.trim() == "*" || bare(t) == want)
}

/// A representation with a validator: 304 when the request's
/// `If-None-Match` matches `etag`, else `body` (awaited only then) as
/// `content_type`. Both carry the ETag and `Cache-Control: no-cache`.
pub(crate) async fn validated(
    headers: &HeaderMap,
    etag: &str,
    content_type: &'static str,
    body: impl std::future::Future<Output = Result<Bytes, ApiError>>,
) -> Result<Response, ApiError> {
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| if_none_match(v, etag));
    let mut resp = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, content_type)], body.await?).into_response()
    };
    let h = resp.headers_mut();
    h.insert(header::ETAG, HeaderValue::from_str(etag).expect("ascii"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(resp)
}

/// The encoded response cached under `key` (a published version never
/// changes), or `build`'s, then cached.
pub(crate) async fn cached(
    d: &Daemon,
    key: String,
    build: impl std::future::Future<Output = Result<Bytes, ApiError>>,
) -> Result<Bytes, ApiError> {
    if let Some(body) = d.responses().get(&key) {
        return Ok(body);
    }
    let body = build.await?;
    d.responses().put(key, body.clone());
    Ok(body)
}

async fn record_metrics(State(d): S, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let resp = next.run(req).await;
    d.metrics.inc(
        crate::metrics::Metric::HttpRequests,
        &[("route", &route), ("status", resp.status().as_str())],
        1.0,
    );
    resp
}

/// Serves the API on `listener` until `shutdown` is cancelled, then lets
/// requests in flight finish. Unlike a bare `axum::serve`, a client must
/// send its headers within `api.header_timeout_secs`, and at most
/// `api.max_connections` connections are open at once (more wait in the
/// listen queue), so slow or idle clients cannot exhaust the daemon.
pub async fn serve(
    d: Arc<Daemon>,
    listener: tokio::net::TcpListener,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    let api = d.project().settings.api.clone();
    let app = router(d);
    let slots = Arc::new(tokio::sync::Semaphore::new(api.max_connections));
    let header_timeout = Duration::from_secs(api.header_timeout_secs);
    let tracker = tokio_util::task::TaskTracker::new();
    loop {
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => s.expect("the semaphore is never closed"),
            _ = shutdown.cancelled() => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: wait a little instead of spinning.
                    tracing::warn!(error = %e, "Cannot accept a connection.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let _slot = slot;
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    tracker.close();
    tracker.wait().await;
    Ok(())
}

/// The API router.
pub fn router(d: Arc<Daemon>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/pipelines", get(pipelines))
        .route("/api/v1/pipelines/{name}/runs", post(trigger))
        .route("/api/v1/runs", get(runs))
        .route("/api/v1/reload", post(reload))
        .route("/api/v1/sql", post(sql))
        .route("/api/v1/aggregates", get(aggregates))
        .route("/api/v1/aggregates/{name}", get(aggregate))
        .route("/api/v1/aggregates/{name}/definition", get(definition))
        .route("/api/v1/intake/{pipeline}", post(intake))
        .merge(crate::dashboard::routes())
        .route_layer(middleware::from_fn_with_state(d.clone(), record_metrics))
        .with_state(d)
}
