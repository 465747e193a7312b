//! The programme office's web dashboard, served on the API's port.
//!
//! | route | what |
//! |---|---|
//! | `GET /`, `/indicators/{name}`, `/ops`, `/login` | the page shell (`web/index.html`); `web/app.js` draws each page |
//! | `GET /ui/app.js`, `/ui/app.css` | the dashboard's own script and styles (no third-party code, nothing from the internet) |
//! | `POST /login` `{"token": …}`, `POST /logout` | a session cookie (HttpOnly, SameSite=Strict) for a role's token |
//! | `GET /ui/session`, `GET /ui/districts` | who is logged in (and the session's CSRF token); the 38 districts and 全市 |
//! | `GET /api/v1/aggregates/{name}/chart.svg` | a chart of an aggregate over quarters, rendered here as SVG |
//! | `GET /api/v1/tables` | rows, quarters, quarantined rows and freshness of each table |
//!
//! A session is an opaque random id mapped in memory to a role and a CSRF
//! token; the token itself never leaves the login request. State-changing
//! requests made with a session cookie must carry `X-CSRF-Token`.

pub mod svg;

use crate::daemon::Daemon;
use crate::primitives::{constant_time_eq, random_hex};
use crate::serve::{ApiError, Role, cached, filters_of, require, validated, viewer_or_public};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

const INDEX_HTML: &str = include_str!("../../web/index.html");
const APP_JS: &str = include_str!("../../web/app.js");
const APP_CSS: &str = include_str!("../../web/app.css");

/// Name of the session cookie.
pub const COOKIE: &str = "ironlake_session";
/// How long a dashboard session lasts.
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Most sessions kept; past it the one closest to expiry goes.
const MAX_SESSIONS: usize = 10_000;

/// One logged-in browser.
#[derive(Clone, Debug)]
pub struct Session {
    /// The role its token granted.
    pub role: Role,
    /// Must accompany the session's state-changing requests (`X-CSRF-Token`).
    pub csrf: String,
    expires: Instant,
}

/// The dashboard's login sessions, in memory.
#[derive(Default)]
pub struct Sessions {
    inner: Mutex<HashMap<String, Session>>,
    failures: AtomicU32,
}

impl Sessions {
    fn create(&self, role: Role) -> std::io::Result<(String, Session)> {
        let id = random_hex(32)?;
        let session = Session {
            role,
            csrf: random_hex(16)?,
            expires: Instant::now() + SESSION_TTL,
        };
        let mut m = self.inner.lock().expect("sessions lock");
        let now = Instant::now();
        m.retain(|_, s| s.expires > now);
        if m.len() >= MAX_SESSIONS
            && let Some(k) = m
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
        {
            m.remove(&k);
        }
        m.insert(id.clone(), session.clone());
        Ok((id, session))
    }

    /// The live session with this id.
    pub fn get(&self, id: &str) -> Option<Session> {
        let m = self.inner.lock().expect("sessions lock");
        m.get(id).filter(|s| s.expires > Instant::now()).cloned()
    }

    fn remove(&self, id: &str) {
        self.inner.lock().expect("sessions lock").remove(id);
    }
}

/// The session named by the request's cookie, if it is live.
pub fn session_of(d: &Daemon, headers: &HeaderMap) -> Option<Session> {
    d.sessions().get(cookie(headers, COOKIE)?)
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A state-changing request made with a session cookie must carry the
/// session's CSRF token in `X-CSRF-Token`.
pub fn check_csrf(d: &Daemon, headers: &HeaderMap) -> Result<(), ApiError> {
    let s = session_of(d, headers).ok_or(ApiError::Unauthorized)?;
    let sent = headers
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if constant_time_eq(sent.as_bytes(), s.csrf.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::Csrf)
    }
}

type S = State<Arc<Daemon>>;

/// The dashboard's routes (merged into the API router).
pub fn routes() -> Router<Arc<Daemon>> {
    Router::new()
        .route("/", get(page))
        .route("/indicators/{name}", get(page))
        .route("/ops", get(page))
        .route("/login", get(page).post(login))
        .route("/logout", post(logout))
        .route("/ui/app.js", get(app_js))
        .route("/ui/app.css", get(app_css))
        .route("/ui/session", get(session_info))
        .route("/ui/districts", get(districts))
        .route("/api/v1/aggregates/{name}/chart.svg", get(chart))
        .route("/api/v1/tables", get(tables))
}

/// Static text with a validator, revalidated on every use.
async fn asset(
    headers: &HeaderMap,
    body: &'static str,
    etag: &str,
    content_type: &'static str,
) -> Response {
    let body = async { Ok(Bytes::from_static(body.as_bytes())) };
    let mut resp = validated(headers, etag, content_type, body)
        .await
        .unwrap_or_else(IntoResponse::into_response);
    resp.headers_mut().insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    resp
}

fn etag_of(text: &str) -> String {
    format!(
        "\"{}\"",
        &crate::primitives::fingerprint(text, None, "")[..16]
    )
}

static INDEX_ETAG: LazyLock<String> = LazyLock::new(|| etag_of(INDEX_HTML));
static JS_ETAG: LazyLock<String> = LazyLock::new(|| etag_of(APP_JS));
static CSS_ETAG: LazyLock<String> = LazyLock::new(|| etag_of(APP_CSS));

async fn page(headers: HeaderMap) -> Response {
    let mut resp = asset(
        &headers,
        INDEX_HTML,
        &INDEX_ETAG,
        "text/html; charset=utf-8",
    )
    .await;
    let h = resp.headers_mut();
    // Everything comes from this server; nothing is framed or inlined.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
             connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

async fn app_js(headers: HeaderMap) -> Response {
    asset(&headers, APP_JS, &JS_ETAG, "text/javascript; charset=utf-8").await
}

async fn app_css(headers: HeaderMap) -> Response {
    asset(&headers, APP_CSS, &CSS_ETAG, "text/css; charset=utf-8").await
}

#[derive(Deserialize)]
struct Login {
    token: String,
}

/// `POST /login`: a role's token for a session cookie. Failures are logged
/// without the token and answered more slowly the more of them come in a row.
async fn login(State(d): S, body: Bytes) -> Result<Response, ApiError> {
    let login: Login = serde_json::from_slice(&body)
        .map_err(|_| ApiError::BadRequest("expected {\"token\": \"…\"}".into()))?;
    // Partners push; they do not log in.
    let role = crate::serve::role_for_token(&d, login.token.trim()).filter(|r| *r >= Role::Viewer);
    let Some(role) = role else {
        let n = d.sessions().failures.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::warn!(
            failures_in_a_row = n,
            "dashboard login refused: the token matches no role"
        );
        tokio::time::sleep(Duration::from_millis(250 * u64::from(n.min(12)))).await;
        return Err(ApiError::Unauthorized);
    };
    d.sessions().failures.store(0, Ordering::Relaxed);
    let (id, session) = d
        .sessions()
        .create(role)
        .map_err(|e| ApiError::Internal(format!("cannot draw a session id: {e}")))?;
    tracing::info!(role = role.name(), "dashboard login");
    let cookie = format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        SESSION_TTL.as_secs()
    );
    let mut resp =
        axum::Json(serde_json::json!({"role": role.name(), "csrf": session.csrf})).into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).expect("ascii"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// `POST /logout`: ends the session (CSRF-checked) and clears the cookie.
async fn logout(State(d): S, headers: HeaderMap) -> Result<Response, ApiError> {
    check_csrf(&d, &headers)?;
    if let Some(id) = cookie(&headers, COOKIE) {
        d.sessions().remove(id);
    }
    let mut resp = axum::Json(serde_json::json!({"status": "logged out"})).into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&format!(
            "{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"
        ))
        .expect("ascii"),
    );
    Ok(resp)
}

/// `GET /ui/session`: the session's role and CSRF token, and whether
/// indicator pages are public.
async fn session_info(State(d): S, headers: HeaderMap) -> Response {
    let s = session_of(&d, &headers);
    let mut resp = axum::Json(serde_json::json!({
        "role": s.as_ref().map(|s| s.role.name()),
        "csrf": s.as_ref().map(|s| s.csrf.clone()),
        "public_aggregates": d.project().settings.api.public_aggregates,
    }))
    .into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// `GET /ui/districts`: 全市 (`ALL`) and the districts of the reference data.
async fn districts() -> Response {
    let mut list = vec![serde_json::json!({"code": "ALL", "name": "全市"})];
    list.extend(
        crate::domain::reference::districts()
            .iter()
            .map(|d| serde_json::json!({"code": d.code, "name": d.name})),
    );
    axum::Json(serde_json::json!({ "districts": list })).into_response()
}

/// `GET /api/v1/tables`: each table's rows, quarters, latest quarter,
/// quarantined rows and last successful run.
async fn tables(State(d): S, headers: HeaderMap) -> Result<Response, ApiError> {
    require(&d, &headers, Role::Viewer)?;
    let project = d.project();
    let wh = d.warehouse();
    let manifest = wh
        .manifest_shared()
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let runs = wh
        .runs_shared()
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let now = d.now();
    let list: Vec<serde_json::Value> = project
        .tables
        .iter()
        .map(|t| {
            let s = crate::warehouse::TableStatus::of(&t.name, &manifest, &runs);
            serde_json::json!({
                "table": t.name,
                "description": t.description,
                "rows": s.rows,
                "quarters": s.quarters,
                "latest_quarter": s.latest_quarter,
                "quarantined_rows": s.quarantined_rows,
                "last_success": s.last_success,
                "age_secs": s.last_success.map(|t| (now - t).num_seconds().max(0)),
            })
        })
        .collect();
    Ok(axum::Json(serde_json::json!({ "tables": list })).into_response())
}

/// `GET /api/v1/aggregates/{name}/chart.svg?y=col,col&kind=line|bar|stacked|spark&w=&h=`
/// plus the aggregate filters (`quarter`, `from`, `to`, `district_code`):
/// the chosen columns over quarters. Rows of a dimension that has an `ALL`
/// row (district, bank, division) are read at `ALL` unless filtered; the
/// remaining rows of a quarter are summed (subsidies per enterprise become
/// the quarter's total).
async fn chart(
    State(d): S,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(mut q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    viewer_or_public(&d, &headers)?;
    let y: Vec<String> = q
        .remove("y")
        .unwrap_or_default()
        .split(',')
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty())
        .collect();
    let kind = svg::Kind::parse(q.remove("kind").as_deref().unwrap_or("line"))
        .map_err(ApiError::BadRequest)?;
    let size = |v: Option<String>, default: u32| -> Result<u32, ApiError> {
        v.map_or(Ok(default), |v| {
            v.parse::<u32>()
                .ok()
                .filter(|n| (40..=2400).contains(n))
                .ok_or_else(|| ApiError::BadRequest(format!("{v:?}: a size is 40..2400 pixels")))
        })
    };
    let (w, h) = (size(q.remove("w"), 800)?, size(q.remove("h"), 320)?);
    let manifest = d
        .warehouse()
        .manifest_shared()
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let Some(meta) = manifest.published.get(&name) else {
        return Err(ApiError::NotFound(format!(
            "no published aggregate {name:?}"
        )));
    };
    if y.is_empty() || y.len() > 12 {
        return Err(ApiError::BadRequest(
            "name 1 to 12 columns to draw: y=col,col".into(),
        ));
    }
    for c in &y {
        let numeric = meta.schema.iter().any(|(n, t, _)| {
            n == c
                && (t.starts_with("Decimal")
                    || t.starts_with("Int")
                    || t.starts_with("Float")
                    || t.starts_with("UInt"))
        });
        if !numeric {
            return Err(ApiError::BadRequest(format!(
                "{name} has no numeric column {c:?}"
            )));
        }
    }
    let filters = filters_of(&name, meta, &q)?;
    let version = meta.versions.last().map_or(0, |v| v.version);
    let mut params: Vec<String> = q.iter().map(|(k, v)| format!("{k}={v}")).collect();
    params.sort();
    let tag = crate::primitives::fingerprint(
        &format!("{} {} {kind:?} {w}x{h}", y.join(","), params.join("&")),
        None,
        "",
    );
    let etag = format!("\"v{version}-svg-{}\"", &tag[..12]);
    let body = cached(&d, format!("{name} {etag}"), async {
        let (schema, batches) =
            crate::serve::aggregate_rows(&d, &manifest, &name, meta, &filters).await?;
        let defs = d.aggregate_definitions();
        let doc = defs.get(&name);
        let label = |c: &str| {
            doc.and_then(|d| d.columns.iter().find(|x| x.name == c))
                .map_or_else(|| c.to_string(), |x| x.label.clone())
        };
        let unit = doc
            .and_then(|d| d.columns.iter().find(|x| x.name == y[0]))
            .and_then(|x| x.unit.clone());
        let data = svg::collect(&schema, &batches, &y).map_err(ApiError::Internal)?;
        let labels: Vec<String> = y.iter().map(|c| label(c)).collect();
        Ok(Bytes::from(svg::render(
            kind,
            &data,
            &labels,
            unit.as_deref(),
            w,
            h,
        )))
    });
    let mut resp = validated(&headers, &etag, "image/svg+xml", body).await?;
    let hm = resp.headers_mut();
    hm.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
    );
    Ok(resp)
}
