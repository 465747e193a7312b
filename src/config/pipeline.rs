//! Pipeline definitions (`pipelines/<name>.toml`): one partner feed, its
//! schedule, its HTTP source and the table it lands in.

use super::diag::{Diagnostic, SourceFile};
use crate::domain::Quarter;
use serde::Deserialize;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;
use toml::Spanned;

/// Pagination styles a source may declare.
pub const PAGINATION_STYLES: &str = "none, page_number, offset_limit, cursor, link_header";
/// Auth kinds a source may declare.
pub const AUTH_KINDS: &str = "none, bearer, api_key, basic";
/// Formats a source may declare.
pub const FORMATS: &str = "json, ndjson, csv";
/// Catch-up policies a schedule may declare.
pub const CATCH_UP_POLICIES: &str = "skip, run_once";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    #[serde(default)]
    description: String,
    table: Spanned<String>,
    start: Spanned<String>,
    schedule: RawSchedule,
    source: RawSource,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchedule {
    cron: Spanned<String>,
    #[serde(default)]
    time_zone: Option<Spanned<String>>,
    #[serde(default)]
    catch_up: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    url: Spanned<String>,
    format: Spanned<String>,
    #[serde(default)]
    records_field: Option<Spanned<String>>,
    #[serde(default = "default_timeout_secs")]
    timeout_secs: u64,
    #[serde(default = "default_connect_timeout_secs")]
    connect_timeout_secs: u64,
    #[serde(default = "default_max_body_bytes")]
    max_body_bytes: u64,
    #[serde(default)]
    pagination: Option<RawPagination>,
    #[serde(default)]
    auth: Option<RawAuth>,
    #[serde(default)]
    incremental: Option<RawIncremental>,
    #[serde(default)]
    retry: Option<RawRetry>,
    #[serde(default)]
    allowed_origins: Vec<Spanned<String>>,
    #[serde(default = "default_max_pages")]
    max_pages: u64,
    #[serde(default = "default_max_run_secs")]
    max_run_secs: u64,
    #[serde(default)]
    conditional_requests: bool,
    #[serde(default = "default_windows_at_once")]
    windows_at_once: u64,
}

fn default_timeout_secs() -> u64 {
    60
}
fn default_max_pages() -> u64 {
    100_000
}
fn default_max_run_secs() -> u64 {
    6 * 3600
}
fn default_windows_at_once() -> u64 {
    2
}
/// Most windows a pipeline may fetch at once.
const MAX_WINDOWS_AT_ONCE: u64 = 16;
fn default_connect_timeout_secs() -> u64 {
    10
}
fn default_max_body_bytes() -> u64 {
    64 * 1024 * 1024
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPagination {
    style: Spanned<String>,
    #[serde(default)]
    page_size: Option<Spanned<u32>>,
    #[serde(default)]
    size_param: Option<Spanned<String>>,
    #[serde(default)]
    page_param: Option<Spanned<String>>,
    #[serde(default)]
    first_page: Option<Spanned<u32>>,
    #[serde(default)]
    offset_param: Option<Spanned<String>>,
    #[serde(default)]
    cursor_param: Option<Spanned<String>>,
    #[serde(default)]
    next_cursor_field: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    kind: Spanned<String>,
    #[serde(default)]
    token_env: Option<Spanned<String>>,
    #[serde(default)]
    token_file: Option<Spanned<String>>,
    #[serde(default)]
    header: Option<Spanned<String>>,
    #[serde(default)]
    key_env: Option<Spanned<String>>,
    #[serde(default)]
    key_file: Option<Spanned<String>>,
    #[serde(default)]
    username: Option<Spanned<String>>,
    #[serde(default)]
    password_env: Option<Spanned<String>>,
    #[serde(default)]
    password_file: Option<Spanned<String>>,
    // Literal secrets are refused with a pointed message rather than "unknown field".
    #[serde(default)]
    token: Option<Spanned<toml::Value>>,
    #[serde(default)]
    key: Option<Spanned<toml::Value>>,
    #[serde(default)]
    password: Option<Spanned<toml::Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIncremental {
    param: Spanned<String>,
    field: Spanned<String>,
    #[serde(default)]
    lookback_days: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    #[serde(default = "default_attempts")]
    attempts: Spanned<u32>,
    #[serde(default = "default_base_backoff_ms")]
    base_backoff_ms: u64,
    #[serde(default = "default_max_backoff_ms")]
    max_backoff_ms: Spanned<u64>,
    #[serde(default = "default_max_retry_after_secs")]
    max_retry_after_secs: u64,
}

fn default_attempts() -> Spanned<u32> {
    Spanned::new(0..0, RetryPolicy::default().attempts)
}
fn default_base_backoff_ms() -> u64 {
    RetryPolicy::default().base_backoff.as_millis() as u64
}
fn default_max_backoff_ms() -> Spanned<u64> {
    Spanned::new(0..0, RetryPolicy::default().max_backoff.as_millis() as u64)
}
fn default_max_retry_after_secs() -> u64 {
    RetryPolicy::default().max_retry_after.as_secs()
}

/// What to do about runs missed while the daemon was down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUp {
    /// Forget missed runs; wait for the next scheduled time.
    Skip,
    /// Run once at startup if at least one run was missed.
    RunOnce,
}

impl CatchUp {
    /// The name used in pipeline files, the API and output: `skip`, `run_once`.
    pub fn as_str(self) -> &'static str {
        match self {
            CatchUp::Skip => "skip",
            CatchUp::RunOnce => "run_once",
        }
    }
}

/// When a pipeline runs.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// The cron expression as written (seconds first).
    pub expression: String,
    /// The parsed schedule.
    pub cron: cron::Schedule,
    /// Time zone the expression is read in.
    pub time_zone: chrono_tz::Tz,
    /// Policy for runs missed during downtime.
    pub catch_up: CatchUp,
}

/// Body format of a feed (or of a file for `ironlake import`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A JSON array, or an object holding the array under `records_field`.
    Json,
    /// One JSON object per line.
    Ndjson,
    /// CSV with a header row.
    Csv,
}

/// How a feed splits its result into pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pagination {
    /// One request returns everything.
    None,
    /// `?page=N&page_size=S`; ends at a page shorter than `page_size`.
    PageNumber {
        /// Parameter carrying the page number.
        page_param: String,
        /// Parameter carrying the page size.
        size_param: String,
        /// Records per page requested.
        page_size: u32,
        /// Number of the first page (0 or 1).
        first_page: u32,
    },
    /// `?offset=N&limit=S`; ends at a page shorter than `limit`.
    OffsetLimit {
        /// Parameter carrying the offset.
        offset_param: String,
        /// Parameter carrying the limit.
        size_param: String,
        /// Records per page requested.
        page_size: u32,
    },
    /// The body names the next cursor; ends when it is null or absent.
    Cursor {
        /// Parameter the cursor is sent in.
        cursor_param: String,
        /// Field of the JSON body holding the next cursor.
        next_cursor_field: String,
        /// Parameter carrying the page size, if the feed takes one.
        size_param: Option<String>,
        /// Records per page requested.
        page_size: Option<u32>,
    },
    /// RFC 8288 `Link: <…>; rel="next"`; ends when there is no next link.
    LinkHeader {
        /// Parameter carrying the page size on the first request, if any.
        size_param: Option<String>,
        /// Records per page requested.
        page_size: Option<u32>,
    },
}

/// Where a secret's value comes from (never the pipeline file itself).
#[derive(Clone, PartialEq, Eq)]
pub enum SecretRef {
    /// An environment variable's name.
    Env(String),
    /// A file whose contents (trimmed) are the secret.
    File(PathBuf),
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Env(v) => write!(f, "env:{v}"),
            SecretRef::File(p) => write!(f, "file:{}", p.display()),
        }
    }
}

/// How requests authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// No credentials.
    None,
    /// `Authorization: Bearer <token>`.
    Bearer {
        /// Where the token comes from.
        token: SecretRef,
    },
    /// A header such as `X-Api-Key: <key>`.
    ApiKey {
        /// Header name.
        header: String,
        /// Where the key comes from.
        key: SecretRef,
    },
    /// HTTP basic authentication.
    Basic {
        /// User name (not secret).
        username: String,
        /// Where the password comes from.
        password: SecretRef,
    },
}

/// What part of the feed a run asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Window {
    /// Everything, every run.
    Snapshot,
    /// One request series per quarter, `{quarter}`/`{as_of}` in the URL,
    /// from the pipeline's `start` up to the current quarter.
    Quarters,
    /// Records changed since a stored cursor.
    Incremental {
        /// Request parameter carrying the cursor (`since`).
        param: String,
        /// Record field the cursor advances from (its maximum value).
        field: String,
        /// How far before the cursor each run re-reads, for late changes.
        lookback_days: u32,
    },
}

/// Retry policy for failed requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts per request, including the first.
    pub attempts: u32,
    /// First backoff; doubles each retry, with jitter.
    pub base_backoff: Duration,
    /// Upper bound on one backoff.
    pub max_backoff: Duration,
    /// Upper bound on a server's `Retry-After`.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            base_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

/// A URL with `${ENV}` / `${ENV:-default}` variables and `{quarter}` / `{as_of}` placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlTemplate {
    /// The text as written in the pipeline file.
    pub raw: String,
    /// Environment variables it names, with their defaults.
    pub env: Vec<(String, Option<String>)>,
}

/// Why a URL template cannot be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("environment variable {0} is not set (used in the source URL)")]
pub struct MissingEnv(pub String);

impl UrlTemplate {
    fn parse(raw: &str) -> Result<UrlTemplate, String> {
        let mut env = Vec::new();
        let mut rest = raw;
        while let Some(start) = rest.find("${") {
            let after = &rest[start + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| "`${` is not closed by `}`".to_string())?;
            let inner = &after[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d.to_string())),
                None => (inner, None),
            };
            let valid = name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_uppercase() || c == '_')
                && name
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
            if !valid {
                return Err(format!(
                    "`${{{inner}}}`: environment variable names are upper case letters, digits and _"
                ));
            }
            env.push((name.to_string(), default));
            rest = &after[end + 1..];
        }
        for (i, _) in raw.match_indices('{') {
            if i > 0 && raw.as_bytes()[i - 1] == b'$' {
                continue;
            }
            let tail = &raw[i..];
            if !(tail.starts_with("{quarter}") || tail.starts_with("{as_of}")) {
                let shown: String = tail.chars().take_while(|&c| c != '}').collect();
                return Err(format!(
                    "unknown placeholder `{shown}}}`; valid placeholders: {{quarter}}, {{as_of}}, ${{ENV}}, ${{ENV:-default}}"
                ));
            }
        }
        Ok(UrlTemplate {
            raw: raw.to_string(),
            env,
        })
    }

    /// Whether the URL is walked quarter by quarter.
    pub fn has_quarter_placeholder(&self) -> bool {
        self.raw.contains("{quarter}") || self.raw.contains("{as_of}")
    }

    /// Substitutes environment variables (via `lookup`) and the quarter placeholders.
    pub fn resolve(
        &self,
        lookup: impl Fn(&str) -> Option<String>,
        quarter: Option<Quarter>,
    ) -> Result<String, MissingEnv> {
        let mut out = self.raw.clone();
        for (name, default) in &self.env {
            let value = lookup(name)
                .filter(|v| !v.is_empty())
                .or_else(|| default.clone())
                .ok_or_else(|| MissingEnv(name.clone()))?;
            let pattern = match default {
                Some(d) => format!("${{{name}:-{d}}}"),
                None => format!("${{{name}}}"),
            };
            out = out.replace(&pattern, value.trim_end_matches('/'));
        }
        if let Some(q) = quarter {
            out = out
                .replace("{quarter}", &q.to_string())
                .replace("{as_of}", &q.last_day().format("%Y-%m-%d").to_string());
        }
        Ok(out)
    }
}

/// The `table` a pipeline file names, read leniently (the rest of the file
/// may be broken), with its span.
pub fn declared_table(file: &SourceFile) -> Option<(String, std::ops::Range<usize>)> {
    #[derive(Deserialize)]
    struct JustTable {
        table: Spanned<String>,
    }
    let t: JustTable = toml::from_str(&file.text).ok()?;
    Some((t.table.get_ref().clone(), t.table.span()))
}

/// A pipeline fed by partners pushing records (`[source] kind = "push"`):
/// `POST /api/v1/intake/{name}` puts each request through the same
/// validation, quarantine and commit as pulled data.
#[derive(Debug, Clone)]
pub struct PushPipeline {
    /// Pipeline name (the file stem).
    pub name: String,
    /// File it was loaded from.
    pub file: String,
    /// What is pushed.
    pub description: String,
    /// Target table.
    pub table: String,
    /// Byte span of the `table` value in the file, for cross-file diagnostics.
    pub table_span: std::ops::Range<usize>,
    /// Largest request body accepted (413 past it).
    pub max_body_bytes: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPushPipeline {
    #[serde(default)]
    description: String,
    table: Spanned<String>,
    source: RawPushSource,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPushSource {
    #[allow(dead_code)]
    kind: Spanned<String>,
    #[serde(default)]
    max_body_bytes: Option<Spanned<u64>>,
}

/// A push request's body limit unless the pipeline sets `source.max_body_bytes`.
const DEFAULT_PUSH_MAX_BODY_BYTES: u64 = 64 << 20;

/// Whether a pipeline file declares `[source] kind = "push"`.
pub fn is_push(file: &SourceFile) -> bool {
    #[derive(Deserialize)]
    struct Kind {
        source: Option<KindOnly>,
    }
    #[derive(Deserialize)]
    struct KindOnly {
        kind: Option<String>,
    }
    toml::from_str::<Kind>(&file.text)
        .ok()
        .and_then(|k| k.source?.kind)
        .is_some_and(|k| k == "push")
}

/// Parses and validates a push pipeline file.
pub fn load_push(file: &SourceFile, name: &str) -> Result<PushPipeline, Vec<Diagnostic>> {
    let raw: RawPushPipeline = file.parse().map_err(|d| vec![d])?;
    let max = raw
        .source
        .max_body_bytes
        .as_ref()
        .map_or(DEFAULT_PUSH_MAX_BODY_BYTES, |m| *m.get_ref());
    if !(1..=1 << 30).contains(&max) {
        return Err(vec![file.error(
            raw.source.max_body_bytes.as_ref().map(|m| m.span()),
            "source.max_body_bytes",
            format!("{max}: a push body limit is 1 byte to 1 GiB"),
        )]);
    }
    Ok(PushPipeline {
        name: name.to_string(),
        file: file.name.clone(),
        description: raw.description,
        table: raw.table.get_ref().clone(),
        table_span: raw.table.span(),
        max_body_bytes: max as usize,
    })
}

/// The HTTP source of a pipeline.
#[derive(Debug, Clone)]
pub struct HttpSource {
    /// URL template.
    pub url: UrlTemplate,
    /// Body format.
    pub format: Format,
    /// For JSON objects: the field holding the records array.
    pub records_field: Option<String>,
    /// Pagination style.
    pub pagination: Pagination,
    /// Credentials.
    pub auth: Auth,
    /// What part of the feed each run asks for.
    pub window: Window,
    /// Whole-request timeout.
    pub timeout: Duration,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Largest response body accepted.
    pub max_body_bytes: u64,
    /// Retry policy.
    pub retry: RetryPolicy,
    /// Origins (`https://host:port`) besides the URL's own that `Link`
    /// targets and redirects may lead to; credentials go to them too.
    pub allowed_origins: Vec<String>,
    /// Most pages fetched in one window before the run fails (`source.max_pages`).
    pub max_pages: u64,
    /// Longest the fetch phase of a run may take before it fails (`source.max_run_secs`).
    pub max_run: Duration,
    /// Whether the feed's `ETag`s are trusted (`source.conditional_requests`,
    /// off by default): a run that would ask for the same pages as the
    /// table's last delivery sends their `ETag`s in `If-None-Match`, and when
    /// every page answers `304 Not Modified` (and the table is as that
    /// delivery left it) the run ends without fetching or decoding anything.
    pub conditional_requests: bool,
    /// Windows (quarters of a backfill) fetched at once
    /// (`source.windows_at_once`, 1–16, default 2). A second window keeps
    /// the feed busy while the first one's pages are decoded: over
    /// loopback from `feed-sim` on the same 2 cores, 5.1M loan rows took
    /// 3.4–3.5 s with 2 against 3.7–3.8 s with 1. Each window fetched
    /// holds its own rows and staged file, and the peak memory of a big
    /// backfill follows: 119–121 MB against 84–85 MB for those rows, and
    /// for 10.7M rows 127–139 MB against 89–91 MB (1.3–1.5× a 1.3M-row
    /// backfill with 2, 1.2–1.25× with 1). Windows are committed in order
    /// whatever this is.
    pub windows_at_once: usize,
}

/// A validated pipeline.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// Pipeline name (the file stem).
    pub name: String,
    /// File it was loaded from.
    pub file: String,
    /// What the feed is.
    pub description: String,
    /// Target table.
    pub table: String,
    /// Byte span of the `table` value in the file, for cross-file diagnostics.
    pub table_span: std::ops::Range<usize>,
    /// First quarter the feed is pulled from.
    pub start: Quarter,
    /// When it runs.
    pub schedule: Schedule,
    /// Where the data comes from.
    pub source: HttpSource,
}

struct Ctx<'a> {
    file: &'a SourceFile,
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
}

impl Ctx<'_> {
    fn err<T>(&mut self, v: &Spanned<T>, key: &str, msg: impl Into<String>) {
        let span = v.span();
        let span = (span.end > 0).then_some(span);
        self.errors.push(self.file.error(span, key, msg));
    }
}

fn check_cron(expr: &str) -> Result<cron::Schedule, String> {
    let fields = expr.split_whitespace().count();
    if !(6..=7).contains(&fields) {
        return Err(format!(
            "cron expression {expr:?} has {fields} fields, but needs 6 or 7: \
             second minute hour day-of-month month day-of-week [year], seconds first \
             (e.g. \"0 30 2 * * *\" is 02:30:00 every day; a 5-field Unix crontab needs a leading seconds field)"
        ));
    }
    cron::Schedule::from_str(expr).map_err(|e| {
        // The cron crate echoes the expression with a caret; keep only its reason.
        let text = e.to_string();
        let e = text
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty() && *l != "^" && *l != expr.trim())
            .unwrap_or("not a valid expression")
            .to_string();
        format!(
            "invalid cron expression {expr:?}: {e}; fields are second(0-59) minute(0-59) hour(0-23) \
             day-of-month(1-31) month(1-12 or JAN-DEC) day-of-week(1-7 or SUN-SAT) [year]"
        )
    })
}

fn name_param(ctx: &mut Ctx, v: &Option<Spanned<String>>, key: &str, default: &str) -> String {
    match v {
        Some(s) if s.get_ref().trim().is_empty() => {
            ctx.err(s, key, "parameter name must not be empty");
            default.to_string()
        }
        Some(s) => s.get_ref().clone(),
        None => default.to_string(),
    }
}

/// Reports keys set that the chosen pagination style does not take.
fn keys_of_other_styles(ctx: &mut Ctx, p: &RawPagination, style: &str, allowed: &[&str]) {
    let present: [(&str, Option<std::ops::Range<usize>>); 7] = [
        ("page_size", p.page_size.as_ref().map(|s| s.span())),
        ("size_param", p.size_param.as_ref().map(|s| s.span())),
        ("page_param", p.page_param.as_ref().map(|s| s.span())),
        ("first_page", p.first_page.as_ref().map(|s| s.span())),
        ("offset_param", p.offset_param.as_ref().map(|s| s.span())),
        ("cursor_param", p.cursor_param.as_ref().map(|s| s.span())),
        (
            "next_cursor_field",
            p.next_cursor_field.as_ref().map(|s| s.span()),
        ),
    ];
    for (key, span) in present {
        if let Some(span) = span
            && !allowed.contains(&key)
        {
            let valid = if allowed.is_empty() {
                "none".to_string()
            } else {
                allowed.join(", ")
            };
            ctx.errors.push(ctx.file.error(
                Some(span),
                &format!("source.pagination.{key}"),
                format!("`{key}` does not apply to pagination style {style:?}; that style takes: {valid}"),
            ));
        }
    }
}

/// The pagination section: the style, the keys it takes, their defaults.
fn pagination(ctx: &mut Ctx, raw: Option<&RawPagination>) -> Pagination {
    let Some(p) = raw else {
        return Pagination::None;
    };
    let style = p.style.get_ref().as_str();
    // Which optional keys each style takes.
    let allowed: &[&str] = match style {
        "none" => &[],
        "page_number" => &["page_size", "size_param", "page_param", "first_page"],
        "offset_limit" => &["page_size", "size_param", "offset_param"],
        "cursor" => &[
            "page_size",
            "size_param",
            "cursor_param",
            "next_cursor_field",
        ],
        "link_header" => &["page_size", "size_param"],
        other => {
            ctx.err(
                &p.style,
                "source.pagination.style",
                format!("unknown pagination style {other:?}; valid styles: {PAGINATION_STYLES}"),
            );
            return Pagination::None;
        }
    };
    keys_of_other_styles(ctx, p, style, allowed);
    if let Some(ps) = &p.page_size
        && *ps.get_ref() == 0
    {
        ctx.err(
            ps,
            "source.pagination.page_size",
            "page_size must be at least 1",
        );
    }
    let page_size = p.page_size.as_ref().map(|s| *s.get_ref());
    match style {
        "none" => Pagination::None,
        "page_number" => Pagination::PageNumber {
            page_param: name_param(ctx, &p.page_param, "source.pagination.page_param", "page"),
            size_param: name_param(
                ctx,
                &p.size_param,
                "source.pagination.size_param",
                "page_size",
            ),
            page_size: page_size.unwrap_or(500),
            first_page: p.first_page.as_ref().map_or(1, |s| *s.get_ref()),
        },
        "offset_limit" => Pagination::OffsetLimit {
            offset_param: name_param(
                ctx,
                &p.offset_param,
                "source.pagination.offset_param",
                "offset",
            ),
            size_param: name_param(ctx, &p.size_param, "source.pagination.size_param", "limit"),
            page_size: page_size.unwrap_or(500),
        },
        "cursor" => Pagination::Cursor {
            cursor_param: name_param(
                ctx,
                &p.cursor_param,
                "source.pagination.cursor_param",
                "cursor",
            ),
            next_cursor_field: name_param(
                ctx,
                &p.next_cursor_field,
                "source.pagination.next_cursor_field",
                "next_cursor",
            ),
            size_param: p.size_param.as_ref().map(|s| s.get_ref().clone()),
            page_size,
        },
        _ => Pagination::LinkHeader {
            size_param: p.size_param.as_ref().map(|s| s.get_ref().clone()),
            page_size,
        },
    }
}

fn secret(
    ctx: &mut Ctx,
    env: &Option<Spanned<String>>,
    file: &Option<Spanned<String>>,
    what: &str,
    kind: &str,
    auth_span: std::ops::Range<usize>,
) -> SecretRef {
    match (env, file) {
        (Some(e), None) => {
            let name = e.get_ref();
            if std::env::var_os(name).is_none() {
                ctx.warnings.push(ctx.file.warning(
                    Some(e.span()),
                    &format!("source.auth.{what}_env"),
                    format!("environment variable {name} is not set; runs of this pipeline will fail until it is"),
                ));
            }
            SecretRef::Env(name.clone())
        }
        (None, Some(f)) => SecretRef::File(PathBuf::from(f.get_ref())),
        (Some(e), Some(_)) => {
            ctx.err(
                e,
                &format!("source.auth.{what}_env"),
                format!("give the {what} either by `{what}_env` or by `{what}_file`, not both"),
            );
            SecretRef::Env(String::new())
        }
        (None, None) => {
            ctx.errors.push(ctx.file.error(
                Some(auth_span),
                "source.auth",
                format!("auth kind {kind:?} needs `{what}_env` (an environment variable) or `{what}_file` (a file holding the secret)"),
            ));
            SecretRef::Env(String::new())
        }
    }
}

fn auth(ctx: &mut Ctx, raw: Option<&RawAuth>) -> Auth {
    let Some(a) = raw else {
        return Auth::None;
    };
    for (lit, name) in [
        (&a.token, "token"),
        (&a.key, "key"),
        (&a.password, "password"),
    ] {
        if let Some(v) = lit {
            ctx.err(
                v,
                &format!("source.auth.{name}"),
                format!(
                    "secrets are never written in pipeline files; use `{name}_env` (an environment variable) or `{name}_file` (a file) instead"
                ),
            );
        }
    }
    let kind = a.kind.get_ref().as_str();
    let span = a.kind.span();
    let allowed: &[&str] = match kind {
        "none" => &[],
        "bearer" => &["token_env", "token_file"],
        "api_key" => &["header", "key_env", "key_file"],
        "basic" => &["username", "password_env", "password_file"],
        other => {
            ctx.err(
                &a.kind,
                "source.auth.kind",
                format!("unknown auth kind {other:?}; valid kinds: {AUTH_KINDS}"),
            );
            return Auth::None;
        }
    };
    let present = [
        ("token_env", &a.token_env),
        ("token_file", &a.token_file),
        ("header", &a.header),
        ("key_env", &a.key_env),
        ("key_file", &a.key_file),
        ("username", &a.username),
        ("password_env", &a.password_env),
        ("password_file", &a.password_file),
    ];
    for (key, v) in present {
        if let Some(v) = v
            && !allowed.contains(&key)
        {
            let valid = if allowed.is_empty() {
                "nothing else".to_string()
            } else {
                allowed.join(", ")
            };
            ctx.err(
                v,
                &format!("source.auth.{key}"),
                format!("`{key}` does not apply to auth kind {kind:?}; that kind takes: {valid}"),
            );
        }
    }
    match kind {
        "none" => Auth::None,
        "bearer" => Auth::Bearer {
            token: secret(ctx, &a.token_env, &a.token_file, "token", kind, span),
        },
        "api_key" => Auth::ApiKey {
            header: a
                .header
                .as_ref()
                .map_or_else(|| "X-Api-Key".to_string(), |h| h.get_ref().clone()),
            key: secret(ctx, &a.key_env, &a.key_file, "key", kind, span),
        },
        _ => Auth::Basic {
            username: match &a.username {
                Some(u) => u.get_ref().clone(),
                None => {
                    ctx.errors.push(ctx.file.error(
                        Some(span.clone()),
                        "source.auth",
                        "auth kind \"basic\" needs `username`",
                    ));
                    String::new()
                }
            },
            password: secret(
                ctx,
                &a.password_env,
                &a.password_file,
                "password",
                kind,
                span,
            ),
        },
    }
}

/// The schedule section: cron (seconds first), time zone, catch-up policy.
fn schedule(ctx: &mut Ctx, raw: &RawSchedule) -> Option<Schedule> {
    let cron = match check_cron(raw.cron.get_ref()) {
        Ok(c) => Some(c),
        Err(msg) => {
            ctx.err(&raw.cron, "schedule.cron", msg);
            None
        }
    };
    let time_zone = match &raw.time_zone {
        None => chrono_tz::Asia::Shanghai,
        Some(tz) => tz.get_ref().parse::<chrono_tz::Tz>().unwrap_or_else(|_| {
            ctx.err(
                tz,
                "schedule.time_zone",
                format!(
                    "unknown time zone {:?}; use an IANA name such as Asia/Shanghai or UTC",
                    tz.get_ref()
                ),
            );
            chrono_tz::Asia::Shanghai
        }),
    };
    let catch_up = match raw.catch_up.as_ref().map(|c| (c, c.get_ref().as_str())) {
        None | Some((_, "skip")) => CatchUp::Skip,
        Some((_, "run_once")) => CatchUp::RunOnce,
        Some((c, other)) => {
            ctx.err(
                c,
                "schedule.catch_up",
                format!("unknown catch-up policy {other:?}; valid policies: {CATCH_UP_POLICIES}"),
            );
            CatchUp::Skip
        }
    };
    Some(Schedule {
        expression: raw.cron.get_ref().clone(),
        cron: cron?,
        time_zone,
        catch_up,
    })
}

/// The source URL template: placeholders known, `${VAR}`s set (a warning
/// otherwise), and an http(s) URL once resolved.
fn url(ctx: &mut Ctx, raw: &Spanned<String>) -> UrlTemplate {
    let u = match UrlTemplate::parse(raw.get_ref()) {
        Ok(u) => u,
        Err(msg) => {
            ctx.err(raw, "source.url", msg);
            return UrlTemplate {
                raw: String::new(),
                env: Vec::new(),
            };
        }
    };
    for (var, default) in &u.env {
        if default.is_none() && std::env::var_os(var).is_none() {
            ctx.warnings.push(ctx.file.warning(
                Some(raw.span()),
                "source.url",
                format!("environment variable {var} is not set; runs of this pipeline will fail until it is"),
            ));
        }
    }
    let probe = u
        .resolve(
            |_| Some("http://example.invalid".into()),
            Quarter::new(2019, 3),
        )
        .unwrap_or_default();
    if !(probe.starts_with("http://") || probe.starts_with("https://")) {
        ctx.err(
            raw,
            "source.url",
            "the URL must start with http:// or https:// (or with a ${VAR} that holds such a base URL)",
        );
    }
    u
}

/// The body format, and the keys that only fit some formats.
fn format(ctx: &mut Ctx, s: &RawSource) -> Format {
    let format = match s.format.get_ref().as_str() {
        "json" => Format::Json,
        "ndjson" => Format::Ndjson,
        "csv" => Format::Csv,
        other => {
            ctx.err(
                &s.format,
                "source.format",
                format!("unknown format {other:?}; valid formats: {FORMATS}"),
            );
            Format::Json
        }
    };
    if let Some(rf) = &s.records_field
        && format != Format::Json
    {
        ctx.err(
            rf,
            "source.records_field",
            "`records_field` applies only to format \"json\"",
        );
    }
    format
}

/// Quarter windows, an incremental cursor, or the whole feed each run.
fn window(ctx: &mut Ctx, s: &RawSource, url: &UrlTemplate) -> Window {
    match (&s.incremental, url.has_quarter_placeholder()) {
        (Some(inc), true) => {
            ctx.err(
                &inc.param,
                "source.incremental",
                "a source is either walked by quarter ({quarter}/{as_of} in the URL) or incremental, not both",
            );
            Window::Quarters
        }
        (Some(inc), false) => Window::Incremental {
            param: inc.param.get_ref().clone(),
            field: inc.field.get_ref().clone(),
            lookback_days: inc.lookback_days,
        },
        (None, true) => Window::Quarters,
        (None, false) => Window::Snapshot,
    }
}

/// The retry policy (attempts count the first try).
fn retry(ctx: &mut Ctx, raw: Option<&RawRetry>) -> RetryPolicy {
    let Some(r) = raw else {
        return RetryPolicy::default();
    };
    if *r.attempts.get_ref() == 0 {
        ctx.err(
            &r.attempts,
            "source.retry.attempts",
            "attempts counts the first try too, so it must be at least 1",
        );
    }
    if *r.max_backoff_ms.get_ref() < r.base_backoff_ms {
        ctx.err(
            &r.max_backoff_ms,
            "source.retry.max_backoff_ms",
            format!(
                "max_backoff_ms ({}) is smaller than base_backoff_ms ({})",
                r.max_backoff_ms.get_ref(),
                r.base_backoff_ms
            ),
        );
    }
    RetryPolicy {
        attempts: *r.attempts.get_ref(),
        base_backoff: Duration::from_millis(r.base_backoff_ms),
        max_backoff: Duration::from_millis(*r.max_backoff_ms.get_ref()),
        max_retry_after: Duration::from_secs(r.max_retry_after_secs),
    }
}

/// Origins besides the URL's own that the feed may lead to.
fn allowed_origins(ctx: &mut Ctx, raw: &[Spanned<String>]) -> Vec<String> {
    let mut out = Vec::new();
    for o in raw {
        match reqwest::Url::parse(o.get_ref()) {
            Ok(u)
                if matches!(u.scheme(), "http" | "https")
                    && u.origin().ascii_serialization() == o.get_ref().trim_end_matches('/') =>
            {
                out.push(u.origin().ascii_serialization());
            }
            _ => ctx.err(
                o,
                "source.allowed_origins",
                format!(
                    "{:?} is not an origin; expected scheme://host[:port] with nothing after it, e.g. \"https://files.partner.example\"",
                    o.get_ref()
                ),
            ),
        }
    }
    out
}

/// Timeouts, size and page limits: each at least its minimum.
fn limits(ctx: &mut Ctx, s: &RawSource) {
    let file = ctx.file;
    if s.timeout_secs == 0 || s.connect_timeout_secs == 0 {
        ctx.errors.push(file.error(
            None,
            "source.timeout_secs",
            "timeouts must be at least 1 second",
        ));
    }
    if s.max_pages == 0 || s.max_run_secs == 0 {
        ctx.errors.push(file.error(
            None,
            "source.max_pages",
            "source.max_pages and source.max_run_secs must be at least 1",
        ));
    }
    if !(1..=MAX_WINDOWS_AT_ONCE).contains(&s.windows_at_once) {
        ctx.errors.push(file.error(
            None,
            "source.windows_at_once",
            format!("windows_at_once must be between 1 and {MAX_WINDOWS_AT_ONCE}"),
        ));
    }
    if s.max_body_bytes < 1024 {
        ctx.errors.push(file.error(
            None,
            "source.max_body_bytes",
            "max_body_bytes must be at least 1024",
        ));
    }
}

/// The HTTP source section, every key checked.
fn source(ctx: &mut Ctx, s: &RawSource) -> HttpSource {
    let url = url(ctx, &s.url);
    let format = format(ctx, s);
    let pagination = pagination(ctx, s.pagination.as_ref());
    if let Pagination::Cursor { .. } = pagination
        && format == Format::Csv
    {
        ctx.err(
            &s.format,
            "source.pagination.style",
            "cursor pagination reads the next cursor from a JSON body; it cannot be used with format \"csv\"",
        );
    }
    let auth = auth(ctx, s.auth.as_ref());
    let window = window(ctx, s, &url);
    let retry = retry(ctx, s.retry.as_ref());
    let allowed_origins = allowed_origins(ctx, &s.allowed_origins);
    limits(ctx, s);
    HttpSource {
        url,
        format,
        records_field: s.records_field.as_ref().map(|r| r.get_ref().clone()),
        pagination,
        auth,
        window,
        timeout: Duration::from_secs(s.timeout_secs),
        connect_timeout: Duration::from_secs(s.connect_timeout_secs),
        max_body_bytes: s.max_body_bytes,
        retry,
        allowed_origins,
        max_pages: s.max_pages,
        max_run: Duration::from_secs(s.max_run_secs),
        conditional_requests: s.conditional_requests,
        windows_at_once: s.windows_at_once as usize,
    }
}

/// Loads and validates one pipeline file.
///
/// `name` is the pipeline's name (the file stem). Returns the pipeline and
/// its warnings, or every error found.
pub fn load(file: &SourceFile, name: &str) -> Result<(Pipeline, Vec<Diagnostic>), Vec<Diagnostic>> {
    let raw: RawPipeline = file.parse().map_err(|d| vec![d])?;
    let mut ctx = Ctx {
        file,
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    let start = raw.start.get_ref().parse::<Quarter>().unwrap_or_else(|e| {
        ctx.err(&raw.start, "start", e.to_string());
        Quarter::new(2017, 1).expect("valid")
    });
    let schedule = schedule(&mut ctx, &raw.schedule);
    let source = source(&mut ctx, &raw.source);
    let (Some(schedule), true) = (schedule, ctx.errors.is_empty()) else {
        return Err(ctx.errors);
    };
    let pipeline = Pipeline {
        name: name.to_string(),
        file: file.name.clone(),
        description: raw.description,
        table: raw.table.get_ref().clone(),
        table_span: raw.table.span(),
        start,
        schedule,
        source,
    };
    Ok((pipeline, ctx.warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_templates_resolve_env_and_quarters() {
        let t = UrlTemplate::parse("${FEED}/v1/loans?quarter={quarter}&as_of={as_of}").unwrap();
        assert!(t.has_quarter_placeholder());
        let url = t
            .resolve(
                |_| Some("http://127.0.0.1:9/".into()),
                Quarter::new(2019, 3),
            )
            .unwrap();
        assert_eq!(
            url,
            "http://127.0.0.1:9/v1/loans?quarter=2019Q3&as_of=2019-09-30"
        );
        assert_eq!(t.resolve(|_| None, None), Err(MissingEnv("FEED".into())));
        let d = UrlTemplate::parse("${FEED:-http://localhost:1}/x").unwrap();
        assert_eq!(d.resolve(|_| None, None).unwrap(), "http://localhost:1/x");
        assert!(UrlTemplate::parse("${feed}/x").is_err());
        assert!(
            UrlTemplate::parse("http://x/{year}")
                .unwrap_err()
                .contains("{quarter}")
        );
    }

    #[test]
    fn windows_at_once_defaults_to_two_and_is_bounded() {
        let text = |extra: &str| {
            format!(
                "table = \"bank_loans\"\nstart = \"2017Q1\"\n[schedule]\ncron = \"0 0 2 * * *\"\n\
                 [source]\nurl = \"http://127.0.0.1:9/x?quarter={{quarter}}\"\nformat = \"csv\"\n{extra}"
            )
        };
        let load_text = |extra: &str| load(&SourceFile::new("p.toml", text(extra)), "p");
        let (p, _) = load_text("").unwrap();
        assert_eq!(p.source.windows_at_once, 2);
        let (p, _) = load_text("windows_at_once = 1\n").unwrap();
        assert_eq!(p.source.windows_at_once, 1);
        for bad in ["windows_at_once = 0\n", "windows_at_once = 17\n"] {
            let errors = load_text(bad).unwrap_err();
            assert!(
                errors
                    .iter()
                    .any(|d| d.to_string().contains("between 1 and 16")),
                "{errors:?}"
            );
        }
    }

    #[test]
    fn cron_errors_explain_the_fields() {
        assert!(check_cron("0 30 2 * * *").is_ok());
        assert!(
            check_cron("30 2 * * *")
                .unwrap_err()
                .contains("needs 6 or 7")
        );
        assert!(
            check_cron("0 61 2 * * *")
                .unwrap_err()
                .contains("minute(0-59)")
        );
    }
}
