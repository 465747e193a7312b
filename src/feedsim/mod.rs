//! `ironlake feed-sim`: realistic, deterministic partner feeds for every
//! table, with the faults real partners have.
//!
//! Every record is a pure function of the seed (see [`world`]), so the same
//! seed and options give byte-identical responses whatever the request order
//! or page size. Each endpoint has a different real-world shape:
//!
//! | endpoint | format | pagination | auth |
//! |---|---|---|---|
//! | `/v1/enterprises?as_of=` | JSON array | page number | bearer |
//! | `/v1/operations?since=` | JSON `{data, next_cursor}` | cursor | `X-Api-Key` |
//! | `/v1/bank_loans?quarter=` | CSV | `Link` header | bearer |
//! | `/v1/financing_demands?updated_since=` | NDJSON | page number | basic |
//! | `/v1/direct_financing` | JSON `{items, total}` | offset/limit | bearer |
//!
//! `GET /truth` tells what a complete, correct crawl must find.

pub mod portal;
pub mod render;
pub mod rng;
pub mod world;

use crate::domain::Quarter;
use crate::domain::decimal::format_decimal;
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::NaiveDate;
use render::{Malformation, Rec, Table};
use rng::Rng;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use world::{Contract, Enterprise, World};

/// Which faults the simulator injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultMode {
    /// A perfect partner.
    None,
    /// Transient errors, slow and cut-off responses, duplicates, malformed records.
    Flaky,
    /// Flaky, plus huge bodies, pagination loops, invalid UTF-8, deep nesting.
    Hostile,
}

/// Options of `ironlake feed-sim`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimOptions {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: String,
    /// Seed of every random draw.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Number of enterprises in the registry.
    #[arg(long, default_value_t = 7000)]
    pub enterprises: usize,
    /// First simulated quarter.
    #[arg(long, default_value = "2017Q1")]
    pub from: Quarter,
    /// Last simulated quarter.
    #[arg(long, default_value = "2019Q4")]
    pub to: Quarter,
    /// The one secret accepted as bearer token, API key and basic password (user `ironlake`).
    #[arg(long, env = "IRONLAKE_FEED_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Fault mode.
    #[arg(long, value_enum, default_value_t = FaultMode::None)]
    pub faults: FaultMode,
    /// Share of requests answered with a transient fault (flaky, hostile).
    #[arg(long, default_value_t = 0.1)]
    pub fault_rate: f64,
    /// Share of records followed by a malformed copy (flaky, hostile).
    #[arg(long, default_value_t = 0.01)]
    pub malformed_rate: f64,
    /// Share of records sent twice (flaky, hostile).
    #[arg(long, default_value_t = 0.01)]
    pub duplicate_rate: f64,
    /// Share of pages with a hostile fault (hostile only).
    #[arg(long, default_value_t = 0.05)]
    pub hostile_rate: f64,
    /// Which hostile faults to inject (hostile only).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Hostile::ALL)]
    pub hostile_kinds: Vec<Hostile>,
    /// Delay of a slow response, milliseconds.
    #[arg(long, default_value_t = 1500)]
    pub slow_ms: u64,
}

impl SimOptions {
    /// Options with defaults, for tests and the demo.
    pub fn new(seed: u64, enterprises: usize) -> SimOptions {
        SimOptions {
            listen: "127.0.0.1:0".into(),
            seed,
            enterprises,
            from: Quarter::new(2017, 1).expect("valid"),
            to: Quarter::new(2019, 4).expect("valid"),
            token: None,
            faults: FaultMode::None,
            fault_rate: 0.1,
            malformed_rate: 0.01,
            duplicate_rate: 0.01,
            hostile_rate: 0.05,
            hostile_kinds: Hostile::ALL.to_vec(),
            slow_ms: 1500,
        }
    }
}

/// Largest page a client may ask for.
pub const MAX_PAGE_SIZE: usize = 10_000;
const CHUNK: usize = 256;
/// Consecutive transient faults one URL can get before it is served.
const MAX_FAULTS_PER_URL: u32 = 2;

/// One part of a feed's record sequence: a table, maybe a quarter, maybe a lower date bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Segment {
    table: Table,
    quarter: Option<Quarter>,
    min_date: Option<NaiveDate>,
}

/// A position in a sequence of segments: segment, enterprise, item within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pos {
    seg: usize,
    ent: usize,
    item: usize,
}

impl Pos {
    fn token(self) -> String {
        format!("{}.{}.{}", self.seg, self.ent, self.item)
    }

    fn parse(s: &str) -> Option<Pos> {
        let mut it = s.split('.').map(|p| p.parse::<usize>().ok());
        let pos = Pos {
            seg: it.next()??,
            ent: it.next()??,
            item: it.next()??,
        };
        it.next().is_none().then_some(pos)
    }
}

/// Per-table ground truth.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TableTruth {
    /// Distinct valid rows (latest version per key).
    pub rows: u64,
    /// Malformed records injected in a full crawl.
    pub malformed: u64,
    /// Per-quarter rows and sums of the main amount column.
    pub quarters: BTreeMap<String, QuarterTruth>,
}

/// Rows and amount sum of one quarter.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct QuarterTruth {
    /// Distinct valid rows.
    pub rows: u64,
    /// Exact sum of the main amount column (`null` for enterprises).
    pub sum: Option<String>,
    #[serde(skip)]
    sum_fen: i128,
}

/// One injected malformed record.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MalformedRecord {
    /// Table.
    pub table: &'static str,
    /// What is wrong.
    pub kind: Malformation,
    /// The field it concerns.
    pub field: &'static str,
    /// The record's primary-key values, `|`-separated.
    pub key: String,
}

/// Everything a complete crawl must find.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Truth {
    /// Per table.
    pub tables: BTreeMap<&'static str, TableTruth>,
    #[serde(skip)]
    malformed_records: Vec<MalformedRecord>,
}

/// The simulator's state.
pub struct Sim {
    opts: SimOptions,
    /// A hash of the options that decide what the pages hold.
    identity: blake3::Hash,
    world: World,
    counts: Mutex<HashMap<Segment, Arc<Vec<u32>>>>,
    attempts: Mutex<HashMap<String, u32>>,
    truth: tokio::sync::OnceCell<Arc<Truth>>,
    /// Every enterprise with the loan contracts it signs over the simulated
    /// range, drawn once: a bank_loans page only draws its positions.
    borrowers: Vec<(Enterprise, Box<[Contract]>)>,
}

fn key_fields(table: Table) -> &'static [&'static str] {
    match table {
        Table::Enterprises => &["uscc", "as_of"],
        Table::Operations => &["uscc", "period_end"],
        Table::BankLoans => &["bank_code", "loan_id", "period_end"],
        Table::FinancingDemands => &["demand_id"],
        Table::DirectFinancing => &["record_id"],
    }
}

fn table_code(t: Table) -> u64 {
    Table::ALL.iter().position(|x| *x == t).unwrap_or(0) as u64
}

fn quarter_code(q: Option<Quarter>) -> u64 {
    q.map_or(0, |q| (q.year() as u64) * 4 + u64::from(q.q()))
}

impl Sim {
    /// A simulator for these options.
    pub fn new(opts: SimOptions) -> Sim {
        let world = World {
            seed: opts.seed,
            enterprises: opts.enterprises,
            from: opts.from,
            to: opts.to,
        };
        let mut id = opts.clone();
        id.listen.clear();
        id.token = None;
        let identity = blake3::hash(format!("{id:?}").as_bytes());
        let first = world.from.plus(-(world::MAX_LOAN_AGE - 1));
        let borrowers = (0..world.enterprises)
            .map(|e| {
                let ent = world.enterprise(e);
                let mut contracts = Vec::new();
                world.contracts(&ent, first, world.to, &mut contracts);
                (ent, contracts.into_boxed_slice())
            })
            .collect();
        Sim {
            borrowers,
            opts,
            identity,
            world,
            counts: Mutex::new(HashMap::new()),
            attempts: Mutex::new(HashMap::new()),
            truth: tokio::sync::OnceCell::new(),
        }
    }

    /// The `ETag` of the page at `url` (path and query): every page is a
    /// function of the simulator's options and the request, so a hash of
    /// both identifies its content (and its `Link`) without rendering it.
    fn etag(&self, url: &str) -> String {
        let mut h = blake3::Hasher::new();
        h.update(self.identity.as_bytes());
        h.update(url.as_bytes());
        format!("\"{}\"", &h.finalize().to_hex()[..32])
    }

    fn record_faults(&self) -> bool {
        self.opts.faults != FaultMode::None
    }

    /// The valid records of one segment for enterprise `e`, in feed order.
    fn base_records(&self, seg: &Segment, e: usize) -> Vec<Rec> {
        let w = &self.world;
        let ent = w.enterprise(e);
        let mut out = Vec::new();
        match seg.table {
            Table::Enterprises => {
                let q = seg.quarter.expect("quarter segment");
                if w.in_range(q) && q >= ent.entry {
                    out.push(render::enterprise(&ent, q));
                }
            }
            Table::Operations => {
                if let Some(o) = w.operations(&ent, seg.quarter.expect("quarter segment")) {
                    out.push(render::operations(&ent.uscc, &o));
                }
            }
            Table::BankLoans => {
                let mut loans = Vec::with_capacity(8);
                w.loans(&ent, seg.quarter.expect("quarter segment"), &mut loans);
                out.extend(loans.iter().map(|l| render::loan(&ent.uscc, l)));
            }
            Table::FinancingDemands => {
                let q = seg.quarter.expect("quarter segment");
                for sq in q.plus(-2).through(q) {
                    for ev in w.demand(&ent, sq) {
                        if Quarter::from_date(ev.status_on) == q
                            && seg.min_date.is_none_or(|d| ev.status_on >= d)
                        {
                            out.push(render::demand(&ent.uscc, &ev));
                        }
                    }
                }
            }
            Table::DirectFinancing => {
                for i in w.issues(&ent) {
                    if w.in_range(Quarter::from_date(i.issued_on)) {
                        out.push(render::issue(&ent.uscc, &i));
                    }
                }
            }
        }
        out
    }

    /// Whether base record `k` of enterprise `e` gets a malformed copy, and which.
    fn malformation(
        &self,
        seg: &Segment,
        e: usize,
        k: usize,
    ) -> Option<(Malformation, &'static str)> {
        if !self.record_faults() {
            return None;
        }
        let mut r = Rng::new(
            self.opts.seed,
            "malformed",
            &[
                table_code(seg.table),
                quarter_code(seg.quarter),
                e as u64,
                k as u64,
            ],
        );
        r.chance(self.opts.malformed_rate)
            .then(|| *r.pick(seg.table.faults()))
    }

    fn duplicated(&self, seg: &Segment, e: usize, k: usize) -> bool {
        self.record_faults()
            && Rng::new(
                self.opts.seed,
                "duplicate",
                &[
                    table_code(seg.table),
                    quarter_code(seg.quarter),
                    e as u64,
                    k as u64,
                ],
            )
            .chance(self.opts.duplicate_rate)
    }

    /// All records the feed sends for enterprise `e` in a segment: each valid
    /// record, its malformed copy if any, then duplicates of the previous
    /// enterprise's records (so duplicates can land on another page).
    fn items(&self, seg: &Segment, e: usize) -> Vec<Rec> {
        let base = self.base_records(seg, e);
        let mut out = Vec::with_capacity(base.len());
        for (k, rec) in base.into_iter().enumerate() {
            let bad = self
                .malformation(seg, e, k)
                .map(|(kind, field)| rec.malformed(kind, field));
            out.push(rec);
            out.extend(bad);
        }
        if self.record_faults() && e > 0 {
            for (k, rec) in self.base_records(seg, e - 1).into_iter().enumerate() {
                if self.duplicated(seg, e - 1, k) {
                    out.push(rec);
                }
            }
        }
        out
    }

    fn chunk_counts(&self, seg: &Segment) -> Arc<Vec<u32>> {
        if let Some(c) = self.counts.lock().expect("counts lock").get(seg) {
            return c.clone();
        }
        let n = self.world.enterprises;
        let counts: Vec<u32> = (0..n.div_ceil(CHUNK))
            .map(|c| {
                (c * CHUNK..((c + 1) * CHUNK).min(n))
                    .map(|e| self.items(seg, e).len() as u32)
                    .sum()
            })
            .collect();
        let counts = Arc::new(counts);
        self.counts
            .lock()
            .expect("counts lock")
            .insert(*seg, counts.clone());
        counts
    }

    /// The position of the `index`-th item of a sequence, if it exists.
    fn seek(&self, segs: &[Segment], mut index: usize) -> Option<Pos> {
        for (s, seg) in segs.iter().enumerate() {
            let counts = self.chunk_counts(seg);
            let total: usize = counts.iter().map(|&c| c as usize).sum();
            if index >= total {
                index -= total;
                continue;
            }
            let mut chunk = 0;
            while index >= counts[chunk] as usize {
                index -= counts[chunk] as usize;
                chunk += 1;
            }
            let mut e = chunk * CHUNK;
            loop {
                let len = self.items(seg, e).len();
                if index < len {
                    return Some(Pos {
                        seg: s,
                        ent: e,
                        item: index,
                    });
                }
                index -= len;
                e += 1;
            }
        }
        None
    }

    /// Walks the items of `segs` from `pos`, enterprise by enterprise, until
    /// `n` are taken: `items(seg, e)` gives enterprise `e`'s items and their
    /// count, `take(items, range)` receives the ones on this page. The
    /// position after them if more remain.
    fn walk<G>(
        &self,
        segs: &[Segment],
        mut pos: Pos,
        n: usize,
        mut items: impl FnMut(&Segment, usize) -> (G, usize),
        mut take: impl FnMut(G, std::ops::Range<usize>),
    ) -> Option<Pos> {
        let mut taken = 0;
        while pos.seg < segs.len() {
            while pos.ent < self.world.enterprises {
                let (group, len) = items(&segs[pos.seg], pos.ent);
                if taken < n {
                    let k = (n - taken).min(len.saturating_sub(pos.item));
                    take(group, pos.item..pos.item + k);
                    taken += k;
                    pos.item += k;
                }
                if pos.item < len {
                    return Some(pos);
                }
                pos.ent += 1;
                pos.item = 0;
            }
            pos.seg += 1;
            pos.ent = 0;
        }
        None
    }

    /// Up to `n` items from `pos`; the position after them if more remain.
    fn collect(&self, segs: &[Segment], pos: Pos, n: usize) -> (Vec<Rec>, Option<Pos>) {
        let mut out = Vec::new();
        let next = self.walk(
            segs,
            pos,
            n,
            |seg, e| {
                let items = self.items(seg, e);
                let len = items.len();
                (items, len)
            },
            |items, r| out.extend(items.into_iter().skip(r.start).take(r.len())),
        );
        (out, next)
    }

    /// [`Sim::collect`] of bank_loans segments for a partner without
    /// faults (each enterprise's items are its loans), written straight into
    /// `out` as CSV rows without a `Rec` per row; the next position, if any.
    fn loans_csv(&self, segs: &[Segment], pos: Pos, n: usize, out: &mut String) -> Option<Pos> {
        let w = &self.world;
        self.walk(
            segs,
            pos,
            n,
            |seg, e| {
                // Counted first (no draws), so a page draws only its rows.
                let q = seg.quarter.expect("quarter segment");
                let (ent, contracts) = &self.borrowers[e];
                let running = w.running(ent, contracts, q).count();
                ((ent, contracts, q), running)
            },
            |(ent, contracts, q), r| {
                for c in w.running(ent, contracts, q).skip(r.start).take(r.len()) {
                    render::write_loan_csv(out, &ent.uscc, &w.loan_at(ent, c, q));
                }
            },
        )
    }

    /// Ground truth, computed once from a full virtual crawl.
    pub fn truth(&self) -> Truth {
        let w = &self.world;
        let mut tables = BTreeMap::new();
        let mut malformed_records = Vec::new();
        for table in Table::ALL {
            let mut t = TableTruth::default();
            for seg in full_crawl(w, table) {
                for e in 0..w.enterprises {
                    let base = self.base_records(&seg, e);
                    for (k, rec) in base.iter().enumerate() {
                        if let Some((kind, field)) = self.malformation(&seg, e, k) {
                            t.malformed += 1;
                            let key = key_fields(table)
                                .iter()
                                .map(|f| rec.text(f))
                                .collect::<Vec<_>>()
                                .join("|");
                            malformed_records.push(MalformedRecord {
                                table: table.name(),
                                kind,
                                field,
                                key,
                            });
                        }
                        if table == Table::FinancingDemands {
                            continue; // counted per demand below
                        }
                        let (q, amount) = match table {
                            Table::Enterprises => (seg.quarter.expect("quarter"), None),
                            Table::Operations => {
                                (seg.quarter.expect("quarter"), Some(dec(rec, "revenue")))
                            }
                            Table::BankLoans => {
                                (seg.quarter.expect("quarter"), Some(dec(rec, "balance")))
                            }
                            _ => (
                                rec.text("issued_on")
                                    .parse::<NaiveDate>()
                                    .map(Quarter::from_date)
                                    .expect("date"),
                                Some(dec(rec, "amount")),
                            ),
                        };
                        add(&mut t, q, amount);
                    }
                }
            }
            if table == Table::FinancingDemands {
                for e in 0..w.enterprises {
                    let ent = w.enterprise(e);
                    for q in w.quarters() {
                        if let Some(last) = w.demand(&ent, q).last() {
                            add(
                                &mut t,
                                Quarter::from_date(last.submitted_on),
                                Some(last.amount),
                            );
                        }
                    }
                }
            }
            for qt in t.quarters.values_mut() {
                if table != Table::Enterprises {
                    qt.sum = Some(format_decimal(qt.sum_fen, 2));
                }
            }
            tables.insert(table.name(), t);
        }
        Truth {
            tables,
            malformed_records,
        }
    }
}

fn dec(rec: &Rec, field: &str) -> i128 {
    crate::domain::decimal::parse_decimal(&rec.text(field), 38, 2).expect("generated decimal")
}

fn add(t: &mut TableTruth, q: Quarter, amount: Option<i128>) {
    t.rows += 1;
    let qt = t.quarters.entry(q.to_string()).or_default();
    qt.rows += 1;
    if let Some(a) = amount {
        qt.sum_fen += a;
    }
}

/// The segments a complete crawl of a table walks.
fn full_crawl(w: &World, table: Table) -> Vec<Segment> {
    match table {
        Table::DirectFinancing => vec![Segment {
            table,
            quarter: None,
            min_date: None,
        }],
        _ => w
            .quarters()
            .map(|q| Segment {
                table,
                quarter: Some(q),
                min_date: None,
            })
            .collect(),
    }
}

/// Why a request is refused.
struct Reject(StatusCode, String);

impl IntoResponse for Reject {
    fn into_response(self) -> Response {
        let mut resp = (self.0, axum::Json(serde_json::json!({ "error": self.1 }))).into_response();
        if self.0 == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"ironlake-feed-sim\""),
            );
        }
        resp
    }
}

fn bad_request(msg: impl Into<String>) -> Reject {
    Reject(StatusCode::BAD_REQUEST, msg.into())
}

#[derive(Clone, Copy)]
enum AuthKind {
    Bearer,
    ApiKey,
    Basic,
}

fn authorize(sim: &Sim, headers: &HeaderMap, kind: AuthKind) -> Result<(), Reject> {
    let Some(token) = &sim.opts.token else {
        return Ok(());
    };
    let h = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let ok = match kind {
        AuthKind::Bearer => h(header::AUTHORIZATION)
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| constant_time_eq(t.as_bytes(), token.as_bytes())),
        AuthKind::ApiKey => headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| constant_time_eq(t.as_bytes(), token.as_bytes())),
        AuthKind::Basic => h(header::AUTHORIZATION)
            .and_then(|v| v.strip_prefix("Basic "))
            .and_then(|b| base64_decode(b.trim()))
            .is_some_and(|cred| constant_time_eq(&cred, format!("ironlake:{token}").as_bytes())),
    };
    if ok {
        Ok(())
    } else {
        let what = match kind {
            AuthKind::Bearer => "an `Authorization: Bearer <token>` header",
            AuthKind::ApiKey => "an `X-Api-Key: <token>` header",
            AuthKind::Basic => "basic authentication as user `ironlake`",
        };
        Err(Reject(
            StatusCode::UNAUTHORIZED,
            format!("missing or invalid credentials: this endpoint expects {what}"),
        ))
    }
}

/// Compares two byte strings in time independent of where they differ.
pub use crate::primitives::constant_time_eq;

/// Standard base64 decoding (for basic auth).
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        })
    };
    let bytes = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for &c in bytes {
        acc = (acc << 6) | val(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Standard base64 encoding (for basic auth).
pub fn base64_encode(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn query(req: &Request) -> HashMap<String, String> {
    req.uri()
        .query()
        .map(|q| {
            q.split('&')
                .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
                .filter(|(k, _)| !k.is_empty())
                .map(|(k, v)| (percent_decode(k), percent_decode(v)))
                .collect()
        })
        .unwrap_or_default()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn param_usize(q: &HashMap<String, String>, name: &str, default: usize) -> Result<usize, Reject> {
    match q.get(name) {
        None => Ok(default),
        Some(v) => v.parse::<usize>().map_err(|_| {
            bad_request(format!(
                "parameter {name}={v:?} is not a non-negative integer"
            ))
        }),
    }
}

fn page_size(q: &HashMap<String, String>, name: &str, default: usize) -> Result<usize, Reject> {
    let n = param_usize(q, name, default)?;
    if n == 0 || n > MAX_PAGE_SIZE {
        return Err(bad_request(format!(
            "parameter {name}={n} must be between 1 and {MAX_PAGE_SIZE}"
        )));
    }
    Ok(n)
}

fn param_date(q: &HashMap<String, String>, name: &str) -> Result<Option<NaiveDate>, Reject> {
    q.get(name)
        .map(|v| {
            NaiveDate::parse_from_str(v, "%Y-%m-%d").map_err(|_| {
                bad_request(format!("parameter {name}={v:?} is not a date (YYYY-MM-DD)"))
            })
        })
        .transpose()
}

/// A request-level fault chosen for this request.
#[derive(Debug, Clone, Copy)]
enum Transient {
    Status(u16),
    TooManySeconds,
    TooManyDate,
    Slow,
    Reset,
    Truncated,
}

/// A persistent hostile fault of a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Hostile {
    /// A body of gigabytes.
    HugeBody,
    /// The next page link or cursor points back at the current page.
    PaginationLoop,
    /// Bytes that are not UTF-8 inside a record.
    InvalidUtf8,
    /// JSON nested 100,000 levels deep.
    DeepNesting,
}

impl Hostile {
    /// Every hostile fault.
    pub const ALL: [Hostile; 4] = [
        Hostile::HugeBody,
        Hostile::PaginationLoop,
        Hostile::InvalidUtf8,
        Hostile::DeepNesting,
    ];
}

impl Sim {
    fn transient(&self, url: &str) -> Option<Transient> {
        if self.opts.faults == FaultMode::None {
            return None;
        }
        let attempt = {
            let mut a = self.attempts.lock().expect("attempts lock");
            if a.len() > 200_000 {
                a.clear();
            }
            let n = a.entry(url.to_string()).or_insert(0);
            *n += 1;
            *n - 1
        };
        if attempt >= MAX_FAULTS_PER_URL {
            return None;
        }
        let mut r = Rng::new(
            self.opts.seed,
            "transient",
            &[rng::tag(url), u64::from(attempt)],
        );
        if !r.chance(self.opts.fault_rate) {
            return None;
        }
        Some(match r.range(0, 7) {
            0 => Transient::Status(500),
            1 => Transient::Status(502),
            2 => Transient::Status(503),
            3 => Transient::TooManySeconds,
            4 => Transient::TooManyDate,
            5 => Transient::Slow,
            6 => Transient::Reset,
            _ => Transient::Truncated,
        })
    }

    fn hostile(&self, url: &str) -> Option<Hostile> {
        if self.opts.faults != FaultMode::Hostile {
            return None;
        }
        let mut r = Rng::new(self.opts.seed, "hostile", &[rng::tag(url)]);
        if self.opts.hostile_kinds.is_empty() {
            return None;
        }
        r.chance(self.opts.hostile_rate)
            .then(|| *r.pick(&self.opts.hostile_kinds))
    }
}

/// A page body and its headers.
struct Page {
    content_type: &'static str,
    body: Vec<u8>,
    link: Option<String>,
}

fn finish(page: Result<Page, Reject>, fault: Option<Transient>, etag: String) -> Response {
    let page = match page {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, v);
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(page.content_type),
    );
    if let Some(link) = &page.link
        && let Ok(v) = HeaderValue::from_str(link)
    {
        headers.insert(header::LINK, v);
    }
    match fault {
        Some(Transient::Reset) => {
            let stream = futures::stream::iter(vec![Err::<bytes::Bytes, std::io::Error>(
                std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "simulated connection reset",
                ),
            )]);
            (StatusCode::OK, headers, Body::from_stream(stream)).into_response()
        }
        Some(Transient::Truncated) => {
            let cut = page.body.len() / 2;
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(page.body.len()));
            let stream = futures::stream::iter(vec![
                Ok::<bytes::Bytes, std::io::Error>(bytes::Bytes::copy_from_slice(
                    &page.body[..cut],
                )),
                Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "simulated truncated body",
                )),
            ]);
            (StatusCode::OK, headers, Body::from_stream(stream)).into_response()
        }
        _ => (StatusCode::OK, headers, page.body).into_response(),
    }
}

fn huge_body(content_type: &'static str) -> Response {
    // 8 GiB of well-formed-looking records, generated lazily: far past any sane size.
    let chunk = bytes::Bytes::from({
        let mut s = String::from("{\"uscc\":\"91500000202833449G\",\"note\":\"");
        s.push_str(&"x".repeat(65_000));
        s.push_str("\"},");
        s
    });
    let stream = futures::stream::iter(
        std::iter::once(bytes::Bytes::from_static(b"["))
            .chain(std::iter::repeat_n(chunk, 130_000))
            .map(Ok::<_, std::io::Error>),
    );
    (
        [(header::CONTENT_TYPE, content_type)],
        Body::from_stream(stream),
    )
        .into_response()
}

fn deep_nesting() -> Vec<u8> {
    let depth = 100_000;
    let mut s = String::with_capacity(depth * 2 + 32);
    s.push_str("[{\"uscc\":");
    s.push_str(&"[".repeat(depth));
    s.push_str(&"]".repeat(depth));
    s.push_str("}]");
    s.into_bytes()
}

fn invalid_utf8(mut body: Vec<u8>) -> Vec<u8> {
    // Corrupt the first record: bytes that are not UTF-8 inside a value.
    let at = if let Some(i) = body.windows(8).position(|w| w == b"\"uscc\":\"") {
        i + 10
    } else if let Some(i) = body.iter().position(|&b| b == b'\n') {
        (i + 4).min(body.len())
    } else {
        1.min(body.len())
    };
    body.splice(at..at, [0xFF, 0xFE, 0xC3]);
    body
}

fn url_of(req: &Request) -> String {
    req.uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_string(), |p| p.to_string())
}

fn base_url(headers: &HeaderMap, path: &str) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    format!("http://{host}{path}")
}

async fn apply_transient(sim: &Sim, url: &str) -> Result<Option<Transient>, Response> {
    let fault = sim.transient(url);
    match fault {
        Some(Transient::Status(code)) => {
            let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            Err((
                code,
                axum::Json(serde_json::json!({"error": "simulated upstream failure"})),
            )
                .into_response())
        }
        Some(Transient::TooManySeconds) => Err((
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "1")],
            axum::Json(serde_json::json!({"error": "rate limited"})),
        )
            .into_response()),
        Some(Transient::TooManyDate) => {
            let when = std::time::SystemTime::now() + Duration::from_secs(1);
            Err((
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, httpdate::fmt_http_date(when))],
                axum::Json(serde_json::json!({"error": "rate limited"})),
            )
                .into_response())
        }
        Some(Transient::Slow) => {
            tokio::time::sleep(Duration::from_millis(sim.opts.slow_ms)).await;
            Ok(fault)
        }
        other => Ok(other),
    }
}

/// Checks credentials and reads the query string and the URL of a feed request.
fn begin(
    sim: &Sim,
    req: &Request,
    auth: AuthKind,
) -> Result<(HashMap<String, String>, String), Reject> {
    authorize(sim, req.headers(), auth)?;
    Ok((query(req), url_of(req)))
}

/// The request's `If-None-Match` values, joined.
fn if_none_match(req: &Request) -> Option<String> {
    let values: Vec<&str> = req
        .headers()
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}

/// The page's hostile fault (a huge body is answered at once), this
/// request's transient fault (an error status is answered at once) and the
/// page's `ETag` (a matching `If-None-Match` is answered `304` at once).
async fn faults(
    sim: &Sim,
    if_none_match: Option<String>,
    url: &str,
    content_type: &'static str,
) -> Result<(Option<Hostile>, Option<Transient>, String), Response> {
    let hostile = sim.hostile(url);
    if hostile == Some(Hostile::HugeBody) {
        return Err(huge_body(content_type));
    }
    let fault = apply_transient(sim, url).await?;
    let etag = sim.etag(url);
    let unchanged = if_none_match.iter().flat_map(|v| v.split(',')).any(|t| {
        let t = t.trim();
        t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag
    });
    if unchanged {
        return Err((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    Ok((hostile, fault, etag))
}

macro_rules! guard {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(r) => return r.into_response(),
        }
    };
}

async fn build<F>(sim: Arc<Sim>, f: F) -> Result<Page, Reject>
where
    F: FnOnce(&Sim) -> Result<Page, Reject> + Send + 'static,
{
    tokio::task::spawn_blocking(move || f(&sim))
        .await
        .unwrap_or_else(|e| {
            Err(Reject(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("page generation failed: {e}"),
            ))
        })
}

fn json_array(recs: &[Rec]) -> String {
    let mut s = String::with_capacity(recs.len() * 300 + 2);
    s.push('[');
    for (i, r) in recs.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        r.write_json(&mut s);
    }
    s.push(']');
    s
}

async fn enterprises(State(sim): State<Arc<Sim>>, req: Request) -> Response {
    let (q, url) = guard!(begin(&sim, &req, AuthKind::Bearer));
    let Some(as_of) = guard!(param_date(&q, "as_of")) else {
        return bad_request("parameter as_of (a quarter-end date, YYYY-MM-DD) is required")
            .into_response();
    };
    let quarter = Quarter::from_date(as_of);
    if quarter.last_day() != as_of {
        return bad_request(format!(
            "as_of={as_of} is not a quarter-end date; snapshots exist for {}",
            quarter.last_day()
        ))
        .into_response();
    }
    let size = guard!(page_size(&q, "page_size", 500));
    let page = guard!(param_usize(&q, "page", 1));
    if page == 0 {
        return bad_request("page numbers start at 1").into_response();
    }
    let (hostile, fault, etag) =
        match faults(&sim, if_none_match(&req), &url, "application/json").await {
            Ok(f) => f,
            Err(resp) => return resp,
        };
    let result = build(sim.clone(), move |sim| {
        let segs: Vec<Segment> = sim
            .world
            .in_range(quarter)
            .then_some(Segment {
                table: Table::Enterprises,
                quarter: Some(quarter),
                min_date: None,
            })
            .into_iter()
            .collect();
        let recs = match sim.seek(&segs, (page - 1) * size) {
            Some(pos) => sim.collect(&segs, pos, size).0,
            None => Vec::new(),
        };
        let body = match hostile {
            Some(Hostile::DeepNesting) => deep_nesting(),
            Some(Hostile::InvalidUtf8) => invalid_utf8(json_array(&recs).into_bytes()),
            _ => json_array(&recs).into_bytes(),
        };
        Ok(Page {
            content_type: "application/json",
            body,
            link: None,
        })
    })
    .await;
    finish(result, fault, etag)
}

async fn operations(State(sim): State<Arc<Sim>>, req: Request) -> Response {
    let (q, url) = guard!(begin(&sim, &req, AuthKind::ApiKey));
    let since = guard!(param_date(&q, "since"));
    let limit = guard!(page_size(&q, "limit", 1000));
    let cursor = match q.get("cursor").filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => match Pos::parse(c) {
            Some(p) => Some(p),
            None => {
                return bad_request(format!("cursor {c:?} is not a cursor this feed issued"))
                    .into_response();
            }
        },
    };
    let (hostile, fault, etag) =
        match faults(&sim, if_none_match(&req), &url, "application/json").await {
            Ok(f) => f,
            Err(resp) => return resp,
        };
    let result = build(sim.clone(), move |sim| {
        let first = since.map_or(sim.world.from, |d| {
            Quarter::from_date(d).max(sim.world.from)
        });
        let segs: Vec<Segment> = first
            .through(sim.world.to)
            .map(|q| Segment {
                table: Table::Operations,
                quarter: Some(q),
                min_date: None,
            })
            .collect();
        let start = cursor.unwrap_or(Pos {
            seg: 0,
            ent: 0,
            item: 0,
        });
        let (recs, next) = sim.collect(&segs, start, limit);
        let next = if hostile == Some(Hostile::PaginationLoop) && next.is_some() {
            Some(start)
        } else {
            next
        };
        let mut s = String::from("{\"data\":");
        s.push_str(&json_array(&recs));
        match next {
            Some(p) => {
                s.push_str(",\"next_cursor\":\"");
                s.push_str(&p.token());
                s.push_str("\"}");
            }
            None => s.push_str(",\"next_cursor\":null}"),
        }
        let body = match hostile {
            Some(Hostile::DeepNesting) => {
                let mut b = b"{\"data\":".to_vec();
                b.extend(deep_nesting());
                b.extend_from_slice(b",\"next_cursor\":null}");
                b
            }
            Some(Hostile::InvalidUtf8) => invalid_utf8(s.into_bytes()),
            _ => s.into_bytes(),
        };
        Ok(Page {
            content_type: "application/json",
            body,
            link: None,
        })
    })
    .await;
    finish(result, fault, etag)
}

async fn bank_loans(State(sim): State<Arc<Sim>>, req: Request) -> Response {
    let (q, url) = guard!(begin(&sim, &req, AuthKind::Bearer));
    let Some(quarter) = q.get("quarter") else {
        return bad_request("parameter quarter (YYYYQn) is required").into_response();
    };
    let quarter: Quarter = guard!(
        quarter
            .parse()
            .map_err(|e: crate::domain::QuarterParseError| bad_request(e.to_string()))
    );
    let per_page = guard!(page_size(&q, "per_page", 1000));
    let after = match q.get("after") {
        None => None,
        Some(a) => match Pos::parse(a) {
            Some(p) => Some(p),
            None => {
                return bad_request(format!("after={a:?} is not a position this feed issued"))
                    .into_response();
            }
        },
    };
    let (hostile, fault, etag) =
        match faults(&sim, if_none_match(&req), &url, "text/csv; charset=utf-8").await {
            Ok(f) => f,
            Err(resp) => return resp,
        };
    let base = base_url(req.headers(), req.uri().path());
    let result = build(sim.clone(), move |sim| {
        let segs: Vec<Segment> = sim
            .world
            .in_range(quarter)
            .then_some(Segment {
                table: Table::BankLoans,
                quarter: Some(quarter),
                min_date: None,
            })
            .into_iter()
            .collect();
        let start = after.unwrap_or(Pos {
            seg: 0,
            ent: 0,
            item: 0,
        });
        // Rows are about 150 bytes: room for all of them, so the page is
        // never copied as it grows.
        let mut s = String::with_capacity(per_page.min(10_000) * 170 + 200);
        // The header is always sent, also for an empty quarter.
        let header_rec = render::loan(
            "",
            &world::Loan {
                bank_code: "",
                loan_id: String::new(),
                quarter,
                enterprise: 0,
                balance: 0,
                disbursed: 0,
                rate: 0,
                term: "",
                guarantee: "",
                product: "",
                guarantee_fee: None,
            },
        );
        header_rec.write_csv_header(&mut s);
        let next = if sim.record_faults() {
            let (recs, next) = sim.collect(&segs, start, per_page);
            for r in &recs {
                r.write_csv(&mut s);
            }
            next
        } else {
            sim.loans_csv(&segs, start, per_page, &mut s)
        };
        let next = if hostile == Some(Hostile::PaginationLoop) && next.is_some() {
            Some(start)
        } else {
            next
        };
        let link = next.map(|p| {
            format!(
                "<{base}?quarter={quarter}&per_page={per_page}&after={}>; rel=\"next\"",
                p.token()
            )
        });
        let body = match hostile {
            Some(Hostile::InvalidUtf8) | Some(Hostile::DeepNesting) => invalid_utf8(s.into_bytes()),
            _ => s.into_bytes(),
        };
        Ok(Page {
            content_type: "text/csv; charset=utf-8",
            body,
            link,
        })
    })
    .await;
    finish(result, fault, etag)
}

async fn financing_demands(State(sim): State<Arc<Sim>>, req: Request) -> Response {
    let (q, url) = guard!(begin(&sim, &req, AuthKind::Basic));
    let since = guard!(param_date(&q, "updated_since"));
    let size = guard!(page_size(&q, "page_size", 500));
    let page = guard!(param_usize(&q, "page", 1));
    if page == 0 {
        return bad_request("page numbers start at 1").into_response();
    }
    let (hostile, fault, etag) =
        match faults(&sim, if_none_match(&req), &url, "application/x-ndjson").await {
            Ok(f) => f,
            Err(resp) => return resp,
        };
    let result = build(sim.clone(), move |sim| {
        let first = since.map_or(sim.world.from, |d| {
            Quarter::from_date(d).max(sim.world.from)
        });
        let segs: Vec<Segment> = first
            .through(sim.world.to)
            .enumerate()
            .map(|(i, q)| Segment {
                table: Table::FinancingDemands,
                quarter: Some(q),
                min_date: if i == 0 { since } else { None },
            })
            .collect();
        let recs = match sim.seek(&segs, (page - 1) * size) {
            Some(pos) => sim.collect(&segs, pos, size).0,
            None => Vec::new(),
        };
        let mut s = String::with_capacity(recs.len() * 300);
        for r in &recs {
            r.write_json(&mut s);
            s.push('\n');
        }
        let body = match hostile {
            Some(Hostile::DeepNesting) => {
                let mut b = deep_nesting();
                b.push(b'\n');
                b.extend(s.into_bytes());
                b
            }
            Some(Hostile::InvalidUtf8) => invalid_utf8(s.into_bytes()),
            _ => s.into_bytes(),
        };
        Ok(Page {
            content_type: "application/x-ndjson",
            body,
            link: None,
        })
    })
    .await;
    finish(result, fault, etag)
}

async fn direct_financing(State(sim): State<Arc<Sim>>, req: Request) -> Response {
    let (q, url) = guard!(begin(&sim, &req, AuthKind::Bearer));
    let offset = guard!(param_usize(&q, "offset", 0));
    let limit = guard!(page_size(&q, "limit", 100));
    let (hostile, fault, etag) =
        match faults(&sim, if_none_match(&req), &url, "application/json").await {
            Ok(f) => f,
            Err(resp) => return resp,
        };
    let result = build(sim.clone(), move |sim| {
        let segs = full_crawl(&sim.world, Table::DirectFinancing);
        let total: usize = segs
            .iter()
            .map(|s| {
                sim.chunk_counts(s)
                    .iter()
                    .map(|&c| c as usize)
                    .sum::<usize>()
            })
            .sum();
        let recs = match sim.seek(&segs, offset) {
            Some(pos) => sim.collect(&segs, pos, limit).0,
            None => Vec::new(),
        };
        let s = format!(
            "{{\"items\":{},\"total\":{total},\"offset\":{offset},\"limit\":{limit}}}",
            json_array(&recs)
        );
        let body = match hostile {
            Some(Hostile::DeepNesting) => {
                let mut b = b"{\"items\":".to_vec();
                b.extend(deep_nesting());
                b.extend_from_slice(format!(",\"total\":{total}}}").as_bytes());
                b
            }
            Some(Hostile::InvalidUtf8) => invalid_utf8(s.into_bytes()),
            _ => s.into_bytes(),
        };
        Ok(Page {
            content_type: "application/json",
            body,
            link: None,
        })
    })
    .await;
    finish(result, fault, etag)
}

async fn truth_cached(sim: &Arc<Sim>) -> Arc<Truth> {
    sim.truth
        .get_or_init(|| {
            let sim = sim.clone();
            async move {
                Arc::new(
                    tokio::task::spawn_blocking(move || sim.truth())
                        .await
                        .expect("truth computation"),
                )
            }
        })
        .await
        .clone()
}

async fn truth(State(sim): State<Arc<Sim>>) -> Response {
    let t = truth_cached(&sim).await;
    axum::Json(serde_json::json!({ "tables": t.tables })).into_response()
}

async fn truth_malformed(State(sim): State<Arc<Sim>>) -> Response {
    let t = truth_cached(&sim).await;
    axum::Json(serde_json::json!({ "records": t.malformed_records })).into_response()
}

async fn index(State(sim): State<Arc<Sim>>) -> Response {
    let o = &sim.opts;
    axum::Json(serde_json::json!({
        "service": "ironlake feed-sim",
        "seed": o.seed,
        "enterprises": o.enterprises,
        "from": o.from.to_string(),
        "to": o.to.to_string(),
        "faults": o.faults,
        "auth": if o.token.is_some() { "required" } else { "disabled (no --token / IRONLAKE_FEED_TOKEN)" },
        "max_page_size": MAX_PAGE_SIZE,
        "endpoints": [
            {"path": "/v1/enterprises", "table": "enterprises", "format": "json (array)",
             "pagination": "page_number: ?page=1&page_size=N; a page shorter than page_size is the last",
             "params": {"as_of": "quarter-end date, required"}, "auth": "bearer"},
            {"path": "/v1/operations", "table": "operations", "format": "json ({\"data\": [...], \"next_cursor\": ...})",
             "pagination": "cursor: ?cursor=<next_cursor>&limit=N; next_cursor null on the last page",
             "params": {"since": "period_end on or after this date"}, "auth": "api_key (X-Api-Key)"},
            {"path": "/v1/bank_loans", "table": "bank_loans", "format": "csv with header",
             "pagination": "link_header: follow Link rel=\"next\"; ?per_page=N on the first request",
             "params": {"quarter": "YYYYQn, required"}, "auth": "bearer"},
            {"path": "/v1/financing_demands", "table": "financing_demands", "format": "ndjson, one record per status change",
             "pagination": "page_number: ?page=1&page_size=N",
             "params": {"updated_since": "status_on on or after this date"}, "auth": "basic (user ironlake)"},
            {"path": "/v1/direct_financing", "table": "direct_financing", "format": "json ({\"items\": [...], \"total\": N})",
             "pagination": "offset_limit: ?offset=0&limit=N", "params": {}, "auth": "bearer"},
            {"path": "/truth", "what": "rows, malformed and per-quarter sums a complete crawl must find"},
            {"path": "/truth/malformed", "what": "every injected malformed record with its kind and field"},
        ]
    }))
    .into_response()
}

/// The simulator's HTTP routes.
pub fn router(sim: Arc<Sim>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/truth", get(truth))
        .route("/truth/malformed", get(truth_malformed))
        .route("/v1/enterprises", get(enterprises))
        .route("/v1/operations", get(operations))
        .route("/v1/bank_loans", get(bank_loans))
        .route("/v1/financing_demands", get(financing_demands))
        .route("/v1/direct_financing", get(direct_financing))
        .with_state(sim)
}

/// Serves the simulator on `listener` until `shutdown` completes.
pub async fn serve(
    opts: SimOptions,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let sim = Arc::new(Sim::new(opts));
    axum::serve(listener, router(sim))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loan_pages_from_drawn_contracts_are_the_records_pages() {
        // The CSV fast path reads contracts drawn once at start-up; the
        // records path draws each quarter's loans afresh. Same rows, same
        // order, same page breaks, in every quarter.
        let sim = Sim::new(SimOptions::new(11, 300));
        let mut quarter = sim.world.from;
        while quarter <= sim.world.to {
            let segs = [Segment {
                table: Table::BankLoans,
                quarter: Some(quarter),
                min_date: None,
            }];
            let mut pos = Some(Pos {
                seg: 0,
                ent: 0,
                item: 0,
            });
            let mut rows = 0;
            while let Some(at) = pos {
                let (mut fast, mut plain) = (String::new(), String::new());
                let next = sim.loans_csv(&segs, at, 97, &mut fast);
                let (recs, plain_next) = sim.collect(&segs, at, 97);
                for r in &recs {
                    r.write_csv(&mut plain);
                }
                assert_eq!(fast, plain, "{quarter} from {at:?}");
                assert_eq!(next, plain_next);
                rows += recs.len();
                pos = next;
            }
            assert!(rows > 0, "{quarter} has loans");
            quarter = quarter.next();
        }
    }

    #[test]
    fn base64_round_trips() {
        for s in [
            "",
            "a",
            "ab",
            "abc",
            "ironlake:s3cret",
            "ironlake:tok-12345",
        ] {
            assert_eq!(
                base64_decode(&base64_encode(s.as_bytes())).unwrap(),
                s.as_bytes()
            );
        }
        assert_eq!(base64_encode(b"ironlake:t"), "aXJvbmxha2U6dA==");
    }

    #[test]
    fn positions_round_trip() {
        let p = Pos {
            seg: 2,
            ent: 345,
            item: 6,
        };
        assert_eq!(Pos::parse(&p.token()), Some(p));
        assert_eq!(Pos::parse("1.2"), None);
        assert_eq!(Pos::parse("1.2.3.4"), None);
    }
}
