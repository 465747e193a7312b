//! Serve: the HTTP API for operators, analysts and dashboards (axum).
//!
//! | route | role |
//! |---|---|
//! | `GET /healthz`, `GET /readyz`, `GET /metrics` | none |
//! | `GET /api/v1/pipelines`, `GET /api/v1/runs` | viewer |
//! | `POST /api/v1/pipelines/{name}/runs`, `POST /api/v1/reload` | admin |
//! | `POST /api/v1/sql` | analyst |
//! | `GET /api/v1/aggregates`, `GET /api/v1/aggregates/{name}` | viewer, or none if `api.public_aggregates` |
//!
//! Roles nest: admin ⊃ analyst ⊃ viewer. Tokens are compared in constant
//! time and never logged.

use crate::daemon::{Daemon, TriggerError};
use crate::ingest::RunKind;
use crate::primitives::constant_time_eq;
use crate::query::{self, QueryError};
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
    /// Reads aggregates, pipelines and runs.
    Viewer,
    /// Also runs SQL.
    Analyst,
    /// Also triggers runs and reloads.
    Admin,
}

/// An error at the HTTP edge: 4xx messages for the client, 5xx details in the log.
#[derive(Debug)]
pub enum ApiError {
    /// No valid token.
    Unauthorized,
    /// The token's role is not enough.
    Forbidden(Role),
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
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, m),
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            ApiError::Timeout(s) => (
                StatusCode::GATEWAY_TIMEOUT,
                format!("the query ran past the {s}s limit and was stopped"),
            ),
            ApiError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, m),
            ApiError::Internal(m) => {
                tracing::error!(error = %m, "Internal error serving a request.");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error; the details are in the server log".to_string(),
                )
            }
        };
        let mut resp = (status, axum::Json(serde_json::json!({ "error": msg }))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"ironlake\""),
            );
        }
        resp
    }
}

/// The role a request's bearer token grants, if any.
pub fn role_of(d: &Daemon, headers: &HeaderMap) -> Option<Role> {
    let token = headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")?
        .trim();
    let t = d.tokens();
    let matches = |want: &Option<String>| {
        want.as_ref()
            .is_some_and(|w| constant_time_eq(w.as_bytes(), token.as_bytes()))
    };
    // Check all three every time, so timing does not reveal which one matched.
    let (admin, analyst, viewer) = (matches(&t.admin), matches(&t.analyst), matches(&t.viewer));
    if admin {
        Some(Role::Admin)
    } else if analyst {
        Some(Role::Analyst)
    } else if viewer {
        Some(Role::Viewer)
    } else {
        None
    }
}

fn require(d: &Daemon, headers: &HeaderMap, need: Role) -> Result<Role, ApiError> {
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
        .manifest()
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let runs = d
        .warehouse()
        .runs()
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let running = d.running();
    let now = d.now();
    let list: Vec<serde_json::Value> = project
        .pipelines
        .iter()
        .map(|p| {
            let last = runs.iter().find(|r| r.pipeline == p.name);
            serde_json::json!({
                "name": p.name,
                "table": p.table,
                "description": p.description,
                "schedule": p.schedule.expression,
                "time_zone": p.schedule.time_zone.to_string(),
                "catch_up": format!("{:?}", p.schedule.catch_up).to_lowercase(),
                "next_run": crate::daemon::next_fire(&p.schedule, now).map(|t| t.to_rfc3339()),
                "running": running.contains(&p.name),
                "cursor": manifest.cursors.get(&p.name).map(|c| c.value.clone()),
                "last_run": last.map(|r| serde_json::json!({"run_id": r.run_id, "outcome": r.outcome, "started_at": r.started_at, "ended_at": r.ended_at, "error": r.error})),
            })
        })
        .collect();
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
        .runs()
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let limit = q.limit.unwrap_or(50).min(1000);
    let list: Vec<_> = runs
        .into_iter()
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
    require(&d, &headers, Role::Admin)?;
    match d.trigger(&name, RunKind::Ingest) {
        Ok(()) => Ok((
            StatusCode::ACCEPTED,
            axum::Json(serde_json::json!({"pipeline": name, "status": "started"})),
        )
            .into_response()),
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
    require(&d, &headers, Role::Admin)?;
    match d.reload() {
        Ok(n) => Ok(
            axum::Json(serde_json::json!({"status": "reloaded", "pipelines": n})).into_response(),
        ),
        Err(e) => Err(ApiError::BadRequest(format!(
            "the configuration has errors; the previous pipelines keep running:\n{e}"
        ))),
    }
}

/// Result encodings of the SQL and aggregate endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Json,
    Csv,
    Arrow,
    Parquet,
}

fn encoding_from_accept(headers: &HeaderMap) -> Encoding {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if accept.contains("text/csv") {
        Encoding::Csv
    } else if accept.contains("application/vnd.apache.arrow.stream") {
        Encoding::Arrow
    } else if accept.contains("application/vnd.apache.parquet") {
        Encoding::Parquet
    } else {
        Encoding::Json
    }
}

fn encode(
    batches: &[RecordBatch],
    schema: &arrow::datatypes::SchemaRef,
    enc: Encoding,
) -> Result<(Vec<u8>, &'static str), ApiError> {
    let ierr = |e: &dyn std::fmt::Display| ApiError::Internal(e.to_string());
    let mut buf = Vec::new();
    let ct = match enc {
        Encoding::Json => {
            let mut w = arrow::json::ArrayWriter::new(&mut buf);
            for b in batches {
                w.write(b).map_err(|e| ierr(&e))?;
            }
            w.finish().map_err(|e| ierr(&e))?;
            if buf.is_empty() {
                buf.extend_from_slice(b"[]");
            }
            "application/json"
        }
        Encoding::Csv => {
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut buf);
            if batches.is_empty() {
                w.write(&RecordBatch::new_empty(schema.clone()))
                    .map_err(|e| ierr(&e))?;
            }
            for b in batches {
                w.write(b).map_err(|e| ierr(&e))?;
            }
            drop(w);
            "text/csv; charset=utf-8"
        }
        Encoding::Arrow => {
            let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut buf, schema)
                .map_err(|e| ierr(&e))?;
            for b in batches {
                w.write(b).map_err(|e| ierr(&e))?;
            }
            w.finish().map_err(|e| ierr(&e))?;
            drop(w);
            "application/vnd.apache.arrow.stream"
        }
        Encoding::Parquet => {
            let mut w = parquet::arrow::ArrowWriter::try_new(
                &mut buf,
                schema.clone(),
                Some(crate::warehouse::merge::writer_properties()),
            )
            .map_err(|e| ierr(&e))?;
            for b in batches {
                w.write(b).map_err(|e| ierr(&e))?;
            }
            w.close().map_err(|e| ierr(&e))?;
            "application/vnd.apache.parquet"
        }
    };
    Ok((buf, ct))
}

#[derive(Deserialize)]
struct SqlBody {
    sql: String,
}

async fn sql(State(d): S, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    require(&d, &headers, Role::Analyst)?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::BadRequest("the body is not UTF-8".into()))?;
    let sql = if headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.contains("json"))
    {
        serde_json::from_str::<SqlBody>(text)
            .map_err(|e| ApiError::BadRequest(format!("expected {{\"sql\": \"…\"}}: {e}")))?
            .sql
    } else {
        text.to_string()
    };
    let project = d.project();
    let limit = project.settings.api.sql_max_rows;
    let secs = project.settings.api.sql_timeout_secs;
    let enc = encoding_from_accept(&headers);
    let catalog = d.catalog();
    let work = async {
        let snapshot = catalog
            .snapshot()
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let df = query::sql(&snapshot, &sql).await.map_err(|e| match e {
            QueryError::Output(m) => ApiError::Internal(m),
            other => ApiError::BadRequest(other.to_string()),
        })?;
        let schema = Arc::new(df.schema().as_arrow().clone());
        let mut stream = df
            .execute_stream()
            .await
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let mut batches = Vec::new();
        let mut rows = 0usize;
        let mut truncated = false;
        while let Some(b) = stream.next().await {
            let b = b.map_err(|e| ApiError::BadRequest(e.to_string()))?;
            if rows + b.num_rows() > limit {
                batches.push(b.slice(0, limit - rows));
                truncated = true;
                break;
            }
            rows += b.num_rows();
            batches.push(b);
        }
        Ok::<_, ApiError>((schema, batches, truncated))
    };
    let (schema, batches, truncated) = tokio::time::timeout(Duration::from_secs(secs), work)
        .await
        .map_err(|_| ApiError::Timeout(secs))??;
    let (bytes, ct) = encode(&batches, &schema, enc)?;
    let mut resp = ([(header::CONTENT_TYPE, ct)], bytes).into_response();
    if truncated {
        resp.headers_mut()
            .insert("x-ironlake-truncated", HeaderValue::from(limit));
    }
    Ok(resp)
}

fn viewer_or_public(d: &Daemon, headers: &HeaderMap) -> Result<(), ApiError> {
    if d.project().settings.api.public_aggregates {
        return Ok(());
    }
    require(d, headers, Role::Viewer).map(|_| ())
}

async fn aggregates(State(d): S, headers: HeaderMap) -> Result<Response, ApiError> {
    viewer_or_public(&d, &headers)?;
    let m = d
        .warehouse()
        .manifest()
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let list: Vec<_> = m
        .published
        .iter()
        .map(|(name, meta)| {
            let v = meta.versions.last();
            serde_json::json!({
                "name": name,
                "version": v.map(|v| v.version),
                "published_at": v.map(|v| v.published_at.clone()),
                "rows": v.map(|v| v.rows),
                "columns": meta.columns,
                "quarters": m.dirs.get(&format!("published/{name}")).map(|s| s.partitions.keys().cloned().collect::<Vec<_>>()),
                "versions": meta.versions.iter().map(|v| v.version).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(axum::Json(serde_json::json!({ "aggregates": list })).into_response())
}

fn sql_str(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

async fn aggregate(
    State(d): S,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    viewer_or_public(&d, &headers)?;
    let catalog = d.catalog();
    let snapshot = catalog
        .snapshot()
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let Some(meta) = snapshot.manifest.published.get(&name) else {
        return Err(ApiError::NotFound(format!(
            "no published aggregate {name:?}; published: {}",
            snapshot
                .manifest
                .published
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )));
    };
    let version = meta.versions.last().map_or(0, |v| v.version);
    let etag = format!("\"v{version}\"");
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
    {
        let mut resp = StatusCode::NOT_MODIFIED.into_response();
        resp.headers_mut()
            .insert(header::ETAG, HeaderValue::from_str(&etag).expect("ascii"));
        return Ok(resp);
    }
    let mut filters = Vec::new();
    for (k, v) in &q {
        match k.as_str() {
            "format" => {}
            "quarter" => {
                v.parse::<crate::domain::Quarter>()
                    .map_err(|e| ApiError::BadRequest(e.to_string()))?;
                filters.push(format!("quarter = {}", sql_str(v)));
            }
            "district_code" => {
                if !meta.columns.iter().any(|c| c == "district_code") {
                    return Err(ApiError::BadRequest(format!(
                        "{name} has no district_code column"
                    )));
                }
                filters.push(format!("district_code = {}", sql_str(v)));
            }
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown parameter {other:?}; use quarter, district_code, format"
                )));
            }
        }
    }
    let enc = match q.get("format").map(String::as_str) {
        None => encoding_from_accept(&headers),
        Some("json") => Encoding::Json,
        Some("csv") => Encoding::Csv,
        Some("arrow") => Encoding::Arrow,
        Some("parquet") => Encoding::Parquet,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "unknown format {other:?}; use json, csv, arrow or parquet"
            )));
        }
    };
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
    let sql = format!("SELECT * FROM published.{name}{where_} ORDER BY {order}");
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
    let (bytes, ct) = encode(&batches, &schema, enc)?;
    let mut resp = ([(header::CONTENT_TYPE, ct)], bytes).into_response();
    resp.headers_mut()
        .insert(header::ETAG, HeaderValue::from_str(&etag).expect("ascii"));
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(resp)
}

async fn record_metrics(State(d): S, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let resp = next.run(req).await;
    d.metrics.inc(
        "ironlake_http_requests_total",
        &[("route", &route), ("status", resp.status().as_str())],
        1.0,
    );
    resp
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
        .route_layer(middleware::from_fn_with_state(d.clone(), record_metrics))
        .with_state(d)
}
