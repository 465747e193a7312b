//! The enterprise portal stand-in (`ironlake portal-sim`): many enterprises
//! of the simulated city submitting online financing applications (网上申请)
//! to `POST /api/v1/intake/{pipeline}` at a chosen rate and concurrency, a
//! share of them with mistakes. Used by the tests and `ops/bench/intake.sh`.

use super::rng::Rng;
use super::world::World;
use crate::domain::Quarter;
use chrono::NaiveDate;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What to submit, how fast.
#[derive(clap::Args, Debug, Clone)]
pub struct PortalOptions {
    /// Intake URL, e.g. http://127.0.0.1:8080/api/v1/intake/financing_applications.
    #[arg(long)]
    pub url: String,
    /// Environment variable holding the portal's partner token.
    #[arg(long, default_value = "IRONLAKE_TOKEN_PARTNER_PORTAL")]
    pub token_env: String,
    /// Seed of the simulated city (its enterprises apply) and of the applications.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Enterprises in the simulated city.
    #[arg(long, default_value_t = 7000)]
    pub enterprises: usize,
    /// Requests to send.
    #[arg(long, default_value_t = 1000)]
    pub requests: u64,
    /// Applications per request: 1 sends a JSON object; more send NDJSON (a bulk upload).
    #[arg(long, default_value_t = 1)]
    pub per_request: u64,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Most requests a second, all together; 0 sends each as soon as a client is free.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Share of applications with a mistake (a wrong USCC check character, an
    /// amount with fractions of a fen, an unknown purpose).
    #[arg(long, default_value_t = 0.0)]
    pub bad_share: f64,
    /// Submission date of the applications.
    #[arg(long, default_value = "2019-12-20")]
    pub date: NaiveDate,
    /// Append the demand_id of every application acknowledged with a 2xx here, as acknowledged.
    #[arg(long)]
    pub acked: Option<PathBuf>,
    /// Send an Idempotency-Key with each request.
    #[arg(long)]
    pub idempotency: bool,
    /// Prefix of the demand ids (runs with distinct prefixes submit distinct applications).
    #[arg(long, default_value = "WEB")]
    pub prefix: String,
}

/// What a portal run saw.
#[derive(Debug, Default, serde::Serialize)]
pub struct PortalReport {
    /// Requests sent.
    pub requests: u64,
    /// Answers by HTTP status.
    pub statuses: std::collections::BTreeMap<u16, u64>,
    /// Requests that got no answer (connection refused or reset).
    pub no_answer: u64,
    /// Applications the answers accepted.
    pub accepted: u64,
    /// Applications the answers rejected.
    pub rejected: u64,
    /// Wall time, seconds.
    pub secs: f64,
    /// Requests answered per second.
    pub requests_per_sec: f64,
    /// Applications answered per second.
    pub rows_per_sec: f64,
    /// Median time from sending to the answer, ms.
    pub p50_ms: f64,
    /// 99th percentile of that, ms.
    pub p99_ms: f64,
    /// Slowest answer, ms.
    pub max_ms: f64,
}

const PURPOSES: [&str; 5] = [
    "working_capital",
    "tech_upgrade",
    "equipment",
    "project",
    "other",
];
const INSTRUMENTS: [&str; 7] = [
    "loan",
    "loan",
    "loan",
    "ip_pledge",
    "receivables_pledge",
    "syndicated",
    "leasing",
];
const CATEGORIES: [&str; 6] = [
    "none",
    "none",
    "mic2025",
    "two_integration",
    "transformation",
    "demo_base",
];

/// Application `n` as a JSON object, and its demand id.
pub fn application(world: &World, opts: &PortalOptions, n: u64) -> (String, serde_json::Value) {
    let mut r = Rng::new(opts.seed, "portal", &[n]);
    let ent = world.enterprise(r.range(0, world.enterprises as i64 - 1) as usize);
    let id = format!("{}{n:09}", opts.prefix);
    let amount = r.range(10, 5000) * 10_000;
    let mut v = serde_json::json!({
        "demand_id": id,
        "uscc": ent.uscc,
        "submitted_on": opts.date.to_string(),
        "amount": format!("{amount}.00"),
        "term_months": *r.pick(&[6, 12, 12, 24, 36, 60]),
        "purpose": *r.pick(&PURPOSES),
        "instrument": *r.pick(&INSTRUMENTS),
        "project_category": *r.pick(&CATEGORIES),
        "status": "submitted",
        "status_on": opts.date.to_string(),
        "bank_code": null,
        "funded_amount": null,
        "rate_pct": null,
    });
    if r.chance(opts.bad_share) {
        match r.range(0, 2) {
            0 => {
                let mut u = ent.uscc.clone();
                let last = u.pop().unwrap_or('0');
                u.push(if last == '0' { '1' } else { '0' });
                v["uscc"] = u.into();
            }
            1 => v["amount"] = format!("{amount}.001").into(),
            _ => v["purpose"] = "speculation".into(),
        }
    }
    (id, v)
}

/// One request, built before the clock starts (so the figures measure the
/// intake, not the generator): its body, content type and demand ids.
struct Prepared {
    body: bytes::Bytes,
    content_type: &'static str,
    ids: Vec<String>,
}

/// Request `i`: its applications as a JSON object (one) or NDJSON (a bulk upload).
fn prepare(world: &World, opts: &PortalOptions, i: u64) -> Prepared {
    let apps: Vec<(String, serde_json::Value)> = (0..opts.per_request)
        .map(|k| application(world, opts, i * opts.per_request + k))
        .collect();
    let (body, content_type) = if opts.per_request == 1 {
        (apps[0].1.to_string(), "application/json")
    } else {
        let mut s = String::new();
        for (_, a) in &apps {
            s.push_str(&a.to_string());
            s.push('\n');
        }
        (s, "application/x-ndjson")
    };
    Prepared {
        body: body.into(),
        content_type,
        ids: apps.into_iter().map(|(id, _)| id).collect(),
    }
}

/// Every request, built on all cores.
fn prepare_all(world: &World, opts: &PortalOptions) -> Vec<Prepared> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let per = opts.requests.div_ceil(threads.max(1)).max(1);
    std::thread::scope(|scope| {
        let parts: Vec<_> = (0..opts.requests)
            .step_by(per as usize)
            .map(|from| {
                let to = (from + per).min(opts.requests);
                scope.spawn(move || {
                    (from..to)
                        .map(|i| prepare(world, opts, i))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        parts
            .into_iter()
            .flat_map(|p| p.join().expect("preparing requests"))
            .collect()
    })
}

/// What the portal's clients share while they submit.
struct Portal {
    opts: PortalOptions,
    prepared: Vec<Prepared>,
    client: reqwest::Client,
    token: String,
    started: Instant,
    next: AtomicU64,
    latencies: Mutex<Vec<f64>>,
    report: Mutex<PortalReport>,
    acked: Option<Mutex<std::fs::File>>,
}

impl Portal {
    /// One client: takes the next request number until all are sent.
    async fn client(&self) {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.opts.requests {
                break;
            }
            if self.opts.rate > 0.0 {
                let at = self.started + Duration::from_secs_f64(i as f64 / self.opts.rate);
                tokio::time::sleep_until(at.into()).await;
            }
            self.submit(i).await;
        }
    }

    /// Sends request `i` (prepared before the clock started) and counts the answer.
    async fn submit(&self, i: u64) {
        let opts = &self.opts;
        let prepared = &self.prepared[i as usize];
        let mut req = self
            .client
            .post(&opts.url)
            .bearer_auth(&self.token)
            .header("content-type", prepared.content_type)
            .body(prepared.body.clone());
        if opts.idempotency {
            req = req.header("idempotency-key", format!("{}-{i}", opts.prefix));
        }
        let sent = Instant::now();
        let resp = req.send().await;
        let ms = sent.elapsed().as_secs_f64() * 1000.0;
        let Ok(resp) = resp else {
            self.report.lock().expect("report").no_answer += 1;
            return;
        };
        let status = resp.status().as_u16();
        let answer: serde_json::Value = resp.json().await.unwrap_or_default();
        self.latencies.lock().expect("latencies").push(ms);
        let mut rep = self.report.lock().expect("report");
        *rep.statuses.entry(status).or_default() += 1;
        rep.accepted += answer["accepted"].as_u64().unwrap_or(0);
        rep.rejected += answer["rejected"].as_u64().unwrap_or(0);
        drop(rep);
        if (200..300).contains(&status) {
            self.acknowledge(&prepared.ids, &answer);
        }
    }

    /// Appends the ids of the applications an answer accepted to the `--acked` file.
    fn acknowledge(&self, ids: &[String], answer: &serde_json::Value) {
        let Some(f) = &self.acked else { return };
        // Which applications were rejected: the answer's record numbers.
        let bad: std::collections::HashSet<u64> = answer["errors"]
            .as_array()
            .map(|e| e.iter().filter_map(|x| x["record_no"].as_u64()).collect())
            .unwrap_or_default();
        let mut f = f.lock().expect("acked file");
        for (k, id) in ids.iter().enumerate() {
            if !bad.contains(&(k as u64 + 1)) {
                let _ = writeln!(f, "{id}");
            }
        }
        let _ = f.flush();
    }
}

/// Submits the applications and reports what came back.
pub async fn run(opts: PortalOptions) -> Result<PortalReport, String> {
    let token = std::env::var(&opts.token_env)
        .map_err(|_| format!("set {} to the portal's partner token", opts.token_env))?;
    let to: Quarter = Quarter::from_date(opts.date);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .pool_max_idle_per_host(opts.concurrency)
        .build()
        .map_err(|e| e.to_string())?;
    let acked = match &opts.acked {
        Some(p) => Some(Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| format!("{}: {e}", p.display()))?,
        )),
        None => None,
    };
    let world = World {
        seed: opts.seed,
        enterprises: opts.enterprises.max(1),
        from: to,
        to,
    };
    let prepared = prepare_all(&world, &opts);
    let portal = Arc::new(Portal {
        prepared,
        opts: opts.clone(),
        client,
        token,
        started: Instant::now(),
        next: AtomicU64::new(0),
        latencies: Mutex::new(Vec::new()),
        report: Mutex::new(PortalReport::default()),
        acked,
    });
    let tasks: Vec<_> = (0..opts.concurrency.max(1))
        .map(|_| {
            let p = portal.clone();
            tokio::spawn(async move { p.client().await })
        })
        .collect();
    for t in tasks {
        t.await.map_err(|e| e.to_string())?;
    }
    let (started, latencies, report) = (portal.started, &portal.latencies, &portal.report);
    let secs = started.elapsed().as_secs_f64();
    let mut lat = latencies.lock().expect("latencies").clone();
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            0.0
        } else {
            lat[((lat.len() as f64 - 1.0) * p).round() as usize]
        }
    };
    let mut rep = std::mem::take(&mut *report.lock().expect("report"));
    rep.requests = opts.requests;
    rep.secs = secs;
    let answered: u64 = rep.statuses.values().sum();
    rep.requests_per_sec = answered as f64 / secs;
    rep.rows_per_sec = (rep.accepted + rep.rejected) as f64 / secs;
    rep.p50_ms = pct(0.5);
    rep.p99_ms = pct(0.99);
    rep.max_ms = lat.last().copied().unwrap_or(0.0);
    Ok(rep)
}
