//! Source: HTTP requests to a partner feed — authentication, timeouts,
//! retries with exponential backoff and jitter, `Retry-After`, and a hard
//! limit on body size. Pagination is driven by the ingest loop, which needs
//! each decoded page to know the next one.

use crate::config::pipeline::{Auth, HttpSource, Pipeline, RetryPolicy, SecretRef};
use bytes::{Bytes, BytesMut};
use reqwest::StatusCode;
use std::time::{Duration, SystemTime};

/// Why a request failed for good.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A secret could not be read.
    #[error("pipeline {pipeline}: {what}")]
    Secret {
        /// Pipeline.
        pipeline: String,
        /// What is missing.
        what: String,
    },
    /// The URL template could not be resolved.
    #[error("pipeline {pipeline}: {message}")]
    Url {
        /// Pipeline.
        pipeline: String,
        /// What is wrong.
        message: String,
    },
    /// The partner refused the credentials.
    #[error(
        "GET {url}: the feed answered {status}: the credentials were refused; check the pipeline's auth settings and secret"
    )]
    Unauthorized {
        /// Request URL (redacted).
        url: String,
        /// Status code.
        status: u16,
    },
    /// The partner answered with a client error that retrying cannot fix.
    #[error("GET {url}: the feed answered {status}: {body}")]
    Client {
        /// Request URL (redacted).
        url: String,
        /// Status code.
        status: u16,
        /// Start of the response body.
        body: String,
    },
    /// The body is larger than the pipeline allows.
    #[error(
        "GET {url}: the response body exceeds max_body_bytes ({limit} bytes); the feed may be broken or hostile"
    )]
    TooLarge {
        /// Request URL (redacted).
        url: String,
        /// The limit.
        limit: u64,
    },
    /// The feed pointed a request at an origin the pipeline does not trust.
    #[error(
        "GET {url}: {how} leads to {to}, but the pipeline's origin is {from}; credentials are only sent to the pipeline's own origin, so the run stops here (if {to} belongs to the partner, add it to source.allowed_origins)"
    )]
    ForeignOrigin {
        /// The request URL (redacted) that pointed elsewhere.
        url: String,
        /// How: a `Link` header, a redirect.
        how: &'static str,
        /// The pipeline's origin.
        from: String,
        /// The foreign origin.
        to: String,
    },
    /// Every attempt failed.
    #[error("GET {url}: failed after {attempts} attempts; last error: {last}")]
    Exhausted {
        /// Request URL (redacted).
        url: String,
        /// Attempts made.
        attempts: u32,
        /// The last error.
        last: String,
    },
}

/// Counters of one source.
#[derive(Debug, Default, Clone, Copy)]
pub struct FetchStats {
    /// Requests sent, retries included.
    pub requests: u64,
    /// Retries.
    pub retries: u64,
    /// Body bytes received.
    pub bytes: u64,
}

/// One fetched page.
#[derive(Debug)]
pub struct Fetched {
    /// The body.
    pub body: Bytes,
    /// The `Link: rel="next"` target, if any.
    pub next_link: Option<String>,
    /// The page's `ETag`, if the feed sent one.
    pub etag: Option<String>,
}

/// The origins (`scheme://host:port`) a pipeline may send requests, and
/// its credentials, to: the origin of its own URL plus `source.allowed_origins`.
#[derive(Debug, Clone, Default)]
pub struct Origins {
    inner: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
}

impl Origins {
    fn add(&self, origin: String) {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(origin);
    }

    /// Whether `origin` is trusted.
    pub fn contains(&self, origin: &str) -> bool {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(origin)
    }

    /// The trusted origins, for messages.
    pub fn describe(&self) -> String {
        let set = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        set.iter().cloned().collect::<Vec<_>>().join(", ")
    }
}

/// The origin of a URL (`http://127.0.0.1:8080`), or the URL itself if it does not parse.
pub fn origin_of(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => u.origin().ascii_serialization(),
        Err(_) => url.to_string(),
    }
}

/// Builds the HTTP client of one pipeline: its connect timeout, and
/// redirects followed only within `origins` (at most 10).
pub fn client(connect_timeout: Duration, origins: &Origins) -> reqwest::Client {
    let allowed = origins.clone();
    let policy = reqwest::redirect::Policy::custom(move |attempt| {
        let to = attempt.url().origin().ascii_serialization();
        if attempt.previous().len() >= 10 {
            attempt.error("more than 10 redirects")
        } else if allowed.contains(&to) {
            attempt.follow()
        } else {
            attempt.error(ForeignRedirect(to))
        }
    });
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .pool_idle_timeout(Duration::from_secs(30))
        .redirect(policy)
        .user_agent(concat!("ironlake/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("the HTTP client builds")
}

/// The error a redirect to an untrusted origin stops with.
#[derive(Debug)]
struct ForeignRedirect(String);

impl std::fmt::Display for ForeignRedirect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "redirect to the untrusted origin {}", self.0)
    }
}

impl std::error::Error for ForeignRedirect {}

#[derive(Clone)]
enum ResolvedAuth {
    None,
    Bearer(String),
    Header(String, String),
    Basic(String, String),
}

/// The HTTP side of one pipeline, with its secrets resolved.
pub struct Source {
    client: reqwest::Client,
    spec: HttpSource,
    auth: ResolvedAuth,
    secrets: Vec<String>,
    origins: Origins,
}

fn read_secret(pipeline: &str, what: &str, r: &SecretRef) -> Result<String, SourceError> {
    let err = |w: String| SourceError::Secret {
        pipeline: pipeline.to_string(),
        what: w,
    };
    match r {
        SecretRef::Env(name) => match std::env::var(name) {
            Ok(v) if !v.trim().is_empty() => Ok(v.trim().to_string()),
            _ => Err(err(format!(
                "environment variable {name} (the {what}) is not set"
            ))),
        },
        SecretRef::File(path) => match std::fs::read_to_string(path) {
            Ok(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
            Ok(_) => Err(err(format!("the {what} file {} is empty", path.display()))),
            Err(e) => Err(err(format!(
                "cannot read the {what} from {}: {e}",
                path.display()
            ))),
        },
    }
}

impl Source {
    /// Resolves the pipeline's secrets; fails naming the missing variable or file (never the value).
    pub fn new(pipeline: &Pipeline) -> Result<Source, SourceError> {
        let name = &pipeline.name;
        let auth = match &pipeline.source.auth {
            Auth::None => ResolvedAuth::None,
            Auth::Bearer { token } => {
                ResolvedAuth::Bearer(read_secret(name, "bearer token", token)?)
            }
            Auth::ApiKey { header, key } => {
                ResolvedAuth::Header(header.clone(), read_secret(name, "API key", key)?)
            }
            Auth::Basic { username, password } => ResolvedAuth::Basic(
                username.clone(),
                read_secret(name, "basic-auth password", password)?,
            ),
        };
        let secrets = match &auth {
            ResolvedAuth::None => Vec::new(),
            ResolvedAuth::Bearer(t) | ResolvedAuth::Header(_, t) | ResolvedAuth::Basic(_, t) => {
                vec![t.clone()]
            }
        };
        let origins = Origins::default();
        for o in &pipeline.source.allowed_origins {
            origins.add(o.clone());
        }
        Ok(Source {
            client: client(pipeline.source.connect_timeout, &origins),
            spec: pipeline.source.clone(),
            auth,
            secrets,
            origins,
        })
    }

    /// The URL for a window (`quarter` for `{quarter}`/`{as_of}` placeholders).
    pub fn base_url(
        &self,
        pipeline: &str,
        quarter: Option<crate::domain::Quarter>,
    ) -> Result<String, SourceError> {
        let url = self
            .spec
            .url
            .resolve(|v| std::env::var(v).ok(), quarter)
            .map_err(|e| SourceError::Url {
                pipeline: pipeline.to_string(),
                message: e.to_string(),
            })?;
        self.origins.add(origin_of(&url));
        Ok(url)
    }

    /// Fails unless `url` (a `Link` target, say) is on a trusted origin.
    pub fn check_origin(
        &self,
        from_url: &str,
        url: &str,
        how: &'static str,
    ) -> Result<(), SourceError> {
        let to = origin_of(url);
        if self.origins.contains(&to) {
            return Ok(());
        }
        Err(SourceError::ForeignOrigin {
            url: self.redact(from_url),
            how,
            from: self.origins.describe(),
            to: self.redact(&to),
        })
    }

    /// `url` with secrets and sensitive query parameters masked, for logs and records.
    pub fn redact(&self, url: &str) -> String {
        let mut out = url.to_string();
        for s in &self.secrets {
            if s.len() >= 4 {
                out = out.replace(s.as_str(), "***");
            }
        }
        redact_query(&out)
    }

    /// GETs `url` with retries; returns the body, at most `max_body_bytes` long.
    pub async fn fetch(&self, url: &str, stats: &mut FetchStats) -> Result<Fetched, SourceError> {
        Ok(self
            .get(url, None, stats)
            .await?
            .expect("an unconditional request is never answered 304"))
    }

    /// GETs `url` with `If-None-Match: etag` (and retries): `true` when the
    /// feed answers `304 Not Modified`, `false` when it sends the page (whose
    /// body is read and dropped).
    pub async fn unchanged(
        &self,
        url: &str,
        etag: &str,
        stats: &mut FetchStats,
    ) -> Result<bool, SourceError> {
        Ok(self.get(url, Some(etag), stats).await?.is_none())
    }

    /// GETs `url` with retries, conditionally when `if_none_match` is set;
    /// `None` is a `304 Not Modified`.
    async fn get(
        &self,
        url: &str,
        if_none_match: Option<&str>,
        stats: &mut FetchStats,
    ) -> Result<Option<Fetched>, SourceError> {
        let policy: &RetryPolicy = &self.spec.retry;
        let shown = self.redact(url);
        let mut last = String::new();
        for attempt in 1..=policy.attempts {
            if attempt > 1 {
                stats.retries += 1;
            }
            stats.requests += 1;
            let wait = match self.try_once(url, if_none_match, &shown, stats).await {
                Ok(f) => return Ok(f),
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Retry {
                    reason,
                    retry_after,
                }) => {
                    last = reason;
                    let backoff = backoff(policy, attempt);
                    match retry_after {
                        Some(ra) if ra > policy.max_retry_after => {
                            tracing::warn!(url = %shown, retry_after_secs = ra.as_secs(), cap_secs = policy.max_retry_after.as_secs(), "Retry-After is past the cap; waiting the cap.");
                            policy.max_retry_after
                        }
                        Some(ra) => ra,
                        None => backoff,
                    }
                }
            };
            if attempt < policy.attempts {
                tracing::debug!(url = %shown, attempt, wait_ms = wait.as_millis() as u64, error = %last, "Retrying request.");
                tokio::time::sleep(wait).await;
            }
        }
        Err(SourceError::Exhausted {
            url: shown,
            attempts: policy.attempts,
            last,
        })
    }

    async fn try_once(
        &self,
        url: &str,
        if_none_match: Option<&str>,
        shown: &str,
        stats: &mut FetchStats,
    ) -> Result<Option<Fetched>, Attempt> {
        let mut req = self.client.get(url).timeout(self.spec.timeout);
        if let Some(etag) = if_none_match {
            req = req.header(reqwest::header::IF_NONE_MATCH, etag);
        }
        req = match &self.auth {
            ResolvedAuth::None => req,
            ResolvedAuth::Bearer(t) => req.bearer_auth(t),
            ResolvedAuth::Header(h, v) => req.header(h.as_str(), v.as_str()),
            ResolvedAuth::Basic(u, p) => req.basic_auth(u, Some(p)),
        };
        let resp = req.send().await.map_err(|e| self.send_error(&e, shown))?;
        if if_none_match.is_some() && resp.status() == StatusCode::NOT_MODIFIED {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(self.status_error(resp, shown).await);
        }
        let limit = self.spec.max_body_bytes;
        if resp.content_length().is_some_and(|n| n > limit) {
            return Err(Attempt::Fatal(SourceError::TooLarge {
                url: shown.to_string(),
                limit,
            }));
        }
        let next_link = resp
            .headers()
            .get_all(reqwest::header::LINK)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(next_link);
        let etag = resp
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = self.read_body(resp, shown, stats).await?;
        Ok(Some(Fetched {
            body,
            next_link,
            etag,
        }))
    }

    /// A request that got no response: a redirect to an untrusted origin is
    /// fatal; a connection or timeout error is retried.
    fn send_error(&self, e: &reqwest::Error, shown: &str) -> Attempt {
        if !e.is_redirect() {
            return Attempt::Retry {
                reason: describe(e),
                retry_after: None,
            };
        }
        let to = std::error::Error::source(e)
            .and_then(|s| s.downcast_ref::<ForeignRedirect>())
            .map(|f| f.0.clone());
        Attempt::Fatal(match to {
            Some(to) => SourceError::ForeignOrigin {
                url: shown.to_string(),
                how: "a redirect",
                from: self.origins.describe(),
                to: self.redact(&to),
            },
            None => SourceError::Client {
                url: shown.to_string(),
                status: 0,
                body: describe(e),
            },
        })
    }

    /// A non-2xx answer: 408, 429 and 5xx are retried (honouring
    /// `Retry-After`); 401/403 mean the credentials; any other 4xx is fatal,
    /// with the start of its body (at most 4 KiB is read).
    async fn status_error(&self, mut resp: reqwest::Response, shown: &str) -> Attempt {
        let status = resp.status();
        if status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::REQUEST_TIMEOUT
            || status.is_server_error()
        {
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            return Attempt::Retry {
                reason: format!("HTTP {status}"),
                retry_after,
            };
        }
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Attempt::Fatal(SourceError::Unauthorized {
                url: shown.to_string(),
                status: status.as_u16(),
            });
        }
        let mut head = Vec::new();
        while head.len() < 4096 {
            match resp.chunk().await {
                Ok(Some(c)) => head.extend_from_slice(&c[..c.len().min(4096 - head.len())]),
                _ => break,
            }
        }
        let body: String = String::from_utf8_lossy(&head).chars().take(300).collect();
        Attempt::Fatal(SourceError::Client {
            url: shown.to_string(),
            status: status.as_u16(),
            body: self.redact(&body),
        })
    }

    /// Reads the body, failing as soon as it passes `max_body_bytes`; a body
    /// cut off by the network is retried.
    async fn read_body(
        &self,
        mut resp: reqwest::Response,
        shown: &str,
        stats: &mut FetchStats,
    ) -> Result<Bytes, Attempt> {
        let limit = self.spec.max_body_bytes;
        // Sized once from the announced length (trusted up to 16 MiB and the
        // limit): growing by doubling copied each page's body several times.
        let announced = resp.content_length().unwrap_or(0).min(limit).min(16 << 20);
        let mut body = BytesMut::with_capacity(announced as usize);
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    stats.bytes += chunk.len() as u64;
                    if (body.len() + chunk.len()) as u64 > limit {
                        return Err(Attempt::Fatal(SourceError::TooLarge {
                            url: shown.to_string(),
                            limit,
                        }));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => return Ok(body.freeze()),
                Err(e) => {
                    return Err(Attempt::Retry {
                        reason: format!(
                            "the body was cut off after {} bytes: {}",
                            body.len(),
                            describe(&e)
                        ),
                        retry_after: None,
                    });
                }
            }
        }
    }
}

enum Attempt {
    Retry {
        reason: String,
        retry_after: Option<Duration>,
    },
    Fatal(SourceError),
}

fn describe(e: &reqwest::Error) -> String {
    let mut s = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "could not connect".to_string()
    } else if e.is_body() || e.is_decode() {
        "error reading the body".to_string()
    } else {
        "request error".to_string()
    };
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// Exponential backoff with jitter for attempt `n` (1-based): base·2ⁿ⁻¹, capped, times 0.5–1.0.
pub fn backoff(policy: &RetryPolicy, attempt: u32) -> Duration {
    let exp = policy
        .base_backoff
        .saturating_mul(1u32 << (attempt - 1).min(20));
    let capped = exp.min(policy.max_backoff);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let jitter = 0.5
        + (crate::primitives::mix(u64::from(nanos) ^ u64::from(attempt)) % 1000) as f64 / 2000.0;
    capped.mul_f64(jitter)
}

/// Parses `Retry-After` as seconds or an HTTP date.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// The `rel="next"` target of a `Link` header value (RFC 8288). Entries
/// are split on commas outside `<…>` and quotes, so a URL may hold commas;
/// entries that do not parse are skipped rather than spoiling the rest;
/// `rel` may list several relation types (`rel="next last"`).
pub fn next_link(header: &str) -> Option<String> {
    let mut rest = header;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            return None;
        }
        let (entry, after) = split_link_entry(rest);
        rest = after;
        if let Some(url) = link_entry_next(entry) {
            return Some(url);
        }
    }
}

/// Splits off the first entry of a `Link` value at the first comma outside `<…>` and quotes.
fn split_link_entry(s: &str) -> (&str, &str) {
    let (mut in_url, mut in_quote) = (false, false);
    for (i, c) in s.char_indices() {
        match c {
            '<' if !in_quote => in_url = true,
            '>' if !in_quote => in_url = false,
            '"' if !in_url => in_quote = !in_quote,
            ',' if !in_url && !in_quote => return (&s[..i], &s[i + 1..]),
            _ => {}
        }
    }
    (s, "")
}

/// The URL of one `Link` entry if its `rel` includes `next`.
fn link_entry_next(entry: &str) -> Option<String> {
    let entry = entry.trim().strip_prefix('<')?;
    let (url, params) = entry.split_once('>')?;
    let is_next = params.split(';').any(|p| {
        let Some((k, v)) = p.split_once('=') else {
            return false;
        };
        k.trim().eq_ignore_ascii_case("rel")
            && v.trim()
                .trim_matches('"')
                .split_ascii_whitespace()
                .any(|r| r.eq_ignore_ascii_case("next"))
    });
    is_next.then(|| url.trim().to_string())
}

/// Masks the values of query parameters whose names suggest secrets.
pub fn redact_query(url: &str) -> String {
    let Some((base, query)) = url.split_once('?') else {
        return url.to_string();
    };
    let parts: Vec<String> = query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, _))
                if ["token", "key", "secret", "password", "sig", "signature"]
                    .iter()
                    .any(|s| k.to_ascii_lowercase().contains(s)) =>
            {
                format!("{k}=***")
            }
            _ => kv.to_string(),
        })
        .collect();
    format!("{base}?{}", parts.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_headers_and_retry_after_parse() {
        assert_eq!(
            next_link(r#"<http://h/x?after=1>; rel="next", <http://h/x>; rel="first""#).as_deref(),
            Some("http://h/x?after=1")
        );
        assert_eq!(next_link(r#"<http://h/x>; rel="prev""#), None);
        // One entry without parameters, a URL with commas, several relation types.
        assert_eq!(
            next_link(r#"<http://h/a>, <http://h/x?ids=1,2>; rel="next last""#).as_deref(),
            Some("http://h/x?ids=1,2")
        );
        assert_eq!(
            next_link(r#"garbage, <http://h/y>; title="a, b"; rel=next"#).as_deref(),
            Some("http://h/y")
        );
        assert_eq!(next_link(""), None);
        assert_eq!(next_link("<"), None);
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        let soon = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
        let d = parse_retry_after(&soon).unwrap();
        assert!(
            d <= Duration::from_secs(30) && d >= Duration::from_secs(28),
            "{d:?}"
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            attempts: 5,
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1000),
            max_retry_after: Duration::from_secs(5),
        };
        let b1 = backoff(&p, 1);
        assert!(
            b1 >= Duration::from_millis(50) && b1 <= Duration::from_millis(100),
            "{b1:?}"
        );
        let b10 = backoff(&p, 10);
        assert!(
            b10 >= Duration::from_millis(500) && b10 <= Duration::from_millis(1000),
            "{b10:?}"
        );
    }

    #[test]
    fn secrets_in_query_strings_are_masked() {
        assert_eq!(
            redact_query("http://h/x?quarter=2019Q3&api_key=abc"),
            "http://h/x?quarter=2019Q3&api_key=***"
        );
        assert_eq!(redact_query("http://h/x"), "http://h/x");
    }
}
