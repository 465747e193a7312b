//! The partner feed simulator over real HTTP on 127.0.0.1.

mod common;

use common::{client, start_sim};
use ironlake::domain::Quarter;
use ironlake::domain::decimal::{format_decimal, parse_decimal};
use ironlake::domain::uscc;
use ironlake::feedsim::{FaultMode, SimOptions, base64_encode};
use serde_json::value::RawValue;
use std::collections::{BTreeMap, HashMap, HashSet};

const TOKEN: &str = "test-token";

fn opts(seed: u64, enterprises: usize) -> SimOptions {
    let mut o = SimOptions::new(seed, enterprises);
    o.token = Some(TOKEN.into());
    o
}

type Record = BTreeMap<String, Box<RawValue>>;

fn text(r: &Record, f: &str) -> String {
    let raw = r.get(f).map(|v| v.get()).unwrap_or("null");
    serde_json::from_str::<String>(raw).unwrap_or_else(|_| raw.to_string())
}

async fn get(c: &reqwest::Client, url: &str, auth: &str) -> reqwest::Response {
    try_get(c, url, auth).await.unwrap()
}

async fn try_get(c: &reqwest::Client, url: &str, auth: &str) -> reqwest::Result<reqwest::Response> {
    request(c, url, auth).send().await
}

/// A GET of `url` with the credentials `auth` names (none for any other word).
fn request(c: &reqwest::Client, url: &str, auth: &str) -> reqwest::RequestBuilder {
    let req = c.get(url);
    match auth {
        "bearer" => req.bearer_auth(TOKEN),
        "api_key" => req.header("X-Api-Key", TOKEN),
        "basic" => req.header(
            "Authorization",
            format!(
                "Basic {}",
                base64_encode(format!("ironlake:{TOKEN}").as_bytes())
            ),
        ),
        _ => req,
    }
}

/// Every record of a table's full crawl, in feed order, and the number of requests.
async fn crawl(
    base: &str,
    table: &str,
    page: usize,
    from: Quarter,
    to: Quarter,
) -> (Vec<Record>, usize) {
    let c = client();
    let mut out = Vec::new();
    let mut requests = 0;
    match table {
        "enterprises" => {
            for q in from.through(to) {
                for p in 1.. {
                    let url = format!(
                        "{base}/v1/enterprises?as_of={}&page={p}&page_size={page}",
                        q.last_day()
                    );
                    let body = get(&c, &url, "bearer").await.text().await.unwrap();
                    requests += 1;
                    let recs: Vec<Record> = serde_json::from_str(&body).unwrap();
                    let n = recs.len();
                    out.extend(recs);
                    if n < page {
                        break;
                    }
                }
            }
        }
        "operations" => {
            let mut cursor = String::new();
            loop {
                let url =
                    format!("{base}/v1/operations?since=2017-01-01&limit={page}&cursor={cursor}");
                let body = get(&c, &url, "api_key").await.text().await.unwrap();
                requests += 1;
                #[derive(serde::Deserialize)]
                struct P {
                    data: Vec<Record>,
                    next_cursor: Option<String>,
                }
                let p: P = serde_json::from_str(&body).unwrap();
                out.extend(p.data);
                match p.next_cursor {
                    Some(n) => cursor = n,
                    None => break,
                }
            }
        }
        "bank_loans" => {
            for q in from.through(to) {
                let mut url = Some(format!("{base}/v1/bank_loans?quarter={q}&per_page={page}"));
                while let Some(u) = url.take() {
                    let resp = get(&c, &u, "bearer").await;
                    requests += 1;
                    url = resp
                        .headers()
                        .get("link")
                        .and_then(|l| l.to_str().ok())
                        .and_then(|l| l.strip_prefix('<'))
                        .and_then(|l| l.split_once(">; rel=\"next\""))
                        .map(|(u, _)| u.to_string());
                    let body = resp.text().await.unwrap();
                    let mut lines = body.lines();
                    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
                    for line in lines {
                        let cells: Vec<&str> = line.split(',').collect();
                        let rec: Record = header
                            .iter()
                            .zip(cells)
                            .map(|(h, v)| {
                                (
                                    h.to_string(),
                                    RawValue::from_string(serde_json::to_string(v).unwrap())
                                        .unwrap(),
                                )
                            })
                            .collect();
                        out.push(rec);
                    }
                }
            }
        }
        "financing_demands" => {
            for p in 1.. {
                let url = format!(
                    "{base}/v1/financing_demands?updated_since=2017-01-01&page={p}&page_size={page}"
                );
                let body = get(&c, &url, "basic").await.text().await.unwrap();
                requests += 1;
                let n = body.lines().count();
                for line in body.lines() {
                    out.push(serde_json::from_str(line).unwrap());
                }
                if n < page {
                    break;
                }
            }
        }
        "direct_financing" => {
            for offset in (0..).step_by(page) {
                let url = format!("{base}/v1/direct_financing?offset={offset}&limit={page}");
                let body = get(&c, &url, "bearer").await.text().await.unwrap();
                requests += 1;
                #[derive(serde::Deserialize)]
                struct P {
                    items: Vec<Record>,
                }
                let p: P = serde_json::from_str(&body).unwrap();
                let n = p.items.len();
                out.extend(p.items);
                if n < page {
                    break;
                }
            }
        }
        _ => unreachable!(),
    }
    (out, requests)
}

fn key_of(table: &str, r: &Record) -> String {
    let fields: &[&str] = match table {
        "enterprises" => &["uscc", "as_of"],
        "operations" => &["uscc", "period_end"],
        "bank_loans" => &["bank_code", "loan_id", "period_end"],
        "financing_demands" => &["demand_id"],
        _ => &["record_id"],
    };
    fields
        .iter()
        .map(|f| text(r, f))
        .collect::<Vec<_>>()
        .join("|")
}

/// Per-quarter (rows, exact sum) of the latest version of each key.
fn summarise(table: &str, recs: &[Record]) -> BTreeMap<String, (u64, Option<String>)> {
    let mut latest: HashMap<String, &Record> = HashMap::new();
    for r in recs {
        latest.insert(key_of(table, r), r);
    }
    let (period, amount) = match table {
        "enterprises" => ("as_of", None),
        "operations" => ("period_end", Some("revenue")),
        "bank_loans" => ("period_end", Some("balance")),
        "financing_demands" => ("submitted_on", Some("amount")),
        _ => ("issued_on", Some("amount")),
    };
    let mut acc: BTreeMap<String, (u64, i128)> = BTreeMap::new();
    for r in latest.values() {
        let q = Quarter::from_date(text(r, period).parse().unwrap()).to_string();
        let e = acc.entry(q).or_default();
        e.0 += 1;
        if let Some(a) = amount {
            e.1 += parse_decimal(&text(r, a), 18, 2).unwrap();
        }
    }
    acc.into_iter()
        .map(|(q, (n, s))| (q, (n, amount.map(|_| format_decimal(s, 2)))))
        .collect()
}

async fn truth(base: &str) -> serde_json::Value {
    client()
        .get(format!("{base}/truth"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

const TABLES: [&str; 5] = [
    "enterprises",
    "operations",
    "bank_loans",
    "financing_demands",
    "direct_financing",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truth_equals_what_a_full_crawl_yields_and_pages_walk_once() {
    let sim = start_sim(opts(11, 300)).await;
    let base = sim.url();
    let t = truth(&base).await;
    let (from, to) = (
        Quarter::new(2017, 1).unwrap(),
        Quarter::new(2019, 4).unwrap(),
    );
    for table in TABLES {
        let page = if table == "direct_financing" { 9 } else { 97 };
        let (recs, requests) = crawl(&base, table, page, from, to).await;
        let tt = &t["tables"][table];
        let distinct: HashSet<String> = recs.iter().map(|r| key_of(table, r)).collect();
        assert_eq!(
            distinct.len() as u64,
            tt["rows"].as_u64().unwrap(),
            "{table}: distinct keys vs truth"
        );
        if table != "financing_demands" {
            // Without faults every key is sent exactly once.
            assert_eq!(
                recs.len(),
                distinct.len(),
                "{table}: a record was sent twice"
            );
        }
        assert!(
            requests >= 2,
            "{table}: expected several pages, got {requests}"
        );
        let summary = summarise(table, &recs);
        let quarters = tt["quarters"].as_object().unwrap();
        assert_eq!(summary.len(), quarters.len(), "{table}: quarters");
        for (q, (rows, sum)) in &summary {
            assert_eq!(
                quarters[q]["rows"].as_u64().unwrap(),
                *rows,
                "{table} {q} rows"
            );
            assert_eq!(
                quarters[q]["sum"].as_str().map(String::from),
                *sum,
                "{table} {q} sum"
            );
        }
        for r in &recs {
            assert!(
                uscc::is_valid(&text(r, "uscc")),
                "{table}: invalid USCC {}",
                text(r, "uscc")
            );
        }
        assert_eq!(tt["malformed"], 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_seed_gives_byte_identical_responses_whatever_order_or_page_size() {
    let a = start_sim(opts(5, 200)).await;
    let b = start_sim(opts(5, 200)).await;
    let c = client();
    let paths = [
        "/v1/enterprises?as_of=2018-06-30&page=2&page_size=50",
        "/v1/operations?since=2018-01-01&limit=40",
        "/v1/bank_loans?quarter=2019Q1&per_page=60",
        "/v1/financing_demands?updated_since=2018-03-01&page=1&page_size=30",
        "/v1/direct_financing?offset=5&limit=10",
    ];
    let auths = ["bearer", "api_key", "bearer", "basic", "bearer"];
    let mut first = Vec::new();
    for (p, auth) in paths.iter().zip(auths) {
        first.push(
            get(&c, &format!("{}{p}", a.url()), auth)
                .await
                .bytes()
                .await
                .unwrap(),
        );
    }
    // The other server, asked in reverse order.
    for (i, (p, auth)) in paths.iter().zip(auths).enumerate().rev() {
        let body = get(&c, &format!("{}{p}", b.url()), auth)
            .await
            .bytes()
            .await
            .unwrap();
        assert_eq!(body, first[i], "{p}");
    }
    // Page size does not change the sequence of records.
    let (q, _) = (Quarter::new(2018, 2).unwrap(), ());
    for table in TABLES {
        let (small, n_small) = crawl(&a.url(), table, 7, q, q).await;
        let (large, n_large) = crawl(&b.url(), table, 5000, q, q).await;
        assert!(n_small > n_large, "{table}");
        let s: Vec<String> = small
            .iter()
            .map(|r| serde_json::to_string(r).unwrap())
            .collect();
        let l: Vec<String> = large
            .iter()
            .map(|r| serde_json::to_string(r).unwrap())
            .collect();
        assert_eq!(s, l, "{table}");
    }
    // A different seed gives a different city.
    let other = start_sim(opts(6, 200)).await;
    let body = get(&c, &format!("{}{}", other.url(), paths[0]), "bearer")
        .await
        .bytes()
        .await
        .unwrap();
    assert_ne!(body, first[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_endpoint_demands_its_own_credentials() {
    let sim = start_sim(opts(1, 50)).await;
    let c = client();
    let cases = [
        ("/v1/enterprises?as_of=2019-09-30", "bearer"),
        ("/v1/operations", "api_key"),
        ("/v1/bank_loans?quarter=2019Q3", "bearer"),
        ("/v1/financing_demands", "basic"),
        ("/v1/direct_financing", "bearer"),
    ];
    for (path, right) in cases {
        let url = format!("{}{path}", sim.url());
        assert_eq!(
            get(&c, &url, right).await.status(),
            200,
            "{path} with {right}"
        );
        for wrong in ["none", "bearer", "api_key", "basic"] {
            if wrong == right {
                continue;
            }
            let resp = get(&c, &url, wrong).await;
            assert_eq!(resp.status(), 401, "{path} with {wrong}");
            let body: serde_json::Value = resp.json().await.unwrap();
            assert!(
                body["error"]
                    .as_str()
                    .unwrap()
                    .contains("this endpoint expects"),
                "{body}"
            );
        }
        let bad = c
            .get(&url)
            .bearer_auth("wrong-token")
            .header("X-Api-Key", "wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(bad.status(), 401);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periods_outside_the_range_are_empty_and_bad_params_are_400() {
    let sim = start_sim(opts(1, 50)).await;
    let c = client();
    let u = sim.url();
    let body = get(
        &c,
        &format!("{u}/v1/enterprises?as_of=2021-03-31"),
        "bearer",
    )
    .await
    .text()
    .await
    .unwrap();
    assert_eq!(body, "[]");
    let body = get(&c, &format!("{u}/v1/bank_loans?quarter=2016Q4"), "bearer")
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(body.lines().count(), 1, "header only: {body}");
    let body = get(
        &c,
        &format!("{u}/v1/operations?since=2021-01-01"),
        "api_key",
    )
    .await
    .text()
    .await
    .unwrap();
    assert_eq!(body, "{\"data\":[],\"next_cursor\":null}");
    for (path, auth, msg) in [
        (
            "/v1/enterprises?as_of=2019-09-29",
            "bearer",
            "not a quarter-end date",
        ),
        ("/v1/bank_loans?quarter=2019Q5", "bearer", "invalid quarter"),
        ("/v1/bank_loans", "bearer", "quarter (YYYYQn) is required"),
        (
            "/v1/direct_financing?limit=100000",
            "bearer",
            "between 1 and 10000",
        ),
    ] {
        let resp = get(&c, &format!("{u}{path}"), auth).await;
        assert_eq!(resp.status(), 400, "{path}");
        assert!(resp.text().await.unwrap().contains(msg), "{path}");
    }
}

/// Requests each of `n` distinct URLs once and classifies the first answer.
async fn first_answers(base: &str, n: usize) -> HashMap<&'static str, usize> {
    let c = client();
    let mut kinds: HashMap<&'static str, usize> = HashMap::new();
    for i in 0..n {
        let url = format!(
            "{base}/v1/direct_financing?offset={}&limit={}",
            i % 40,
            1 + i / 40
        );
        let started = std::time::Instant::now();
        let Ok(resp) = try_get(&c, &url, "bearer").await else {
            *kinds.entry("cut").or_default() += 1;
            continue;
        };
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        let body = resp.bytes().await;
        let kind = match (status, retry_after, body) {
            (429, Some(ra), _) if ra.parse::<u64>().is_ok() => "429-seconds",
            (429, Some(_), _) => "429-date",
            (500 | 502 | 503, _, _) => "5xx",
            (200, _, Err(_)) => "cut",
            (200, _, Ok(_)) if started.elapsed().as_millis() >= 200 => "slow",
            (200, _, Ok(_)) => "ok",
            other => panic!("unexpected answer {:?}", other.0),
        };
        *kinds.entry(kind).or_default() += 1;
    }
    kinds
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flaky_faults_appear_at_their_configured_rates() {
    let mut o = opts(3, 300);
    o.faults = FaultMode::Flaky;
    o.fault_rate = 0.3;
    o.malformed_rate = 0.05;
    o.duplicate_rate = 0.05;
    o.slow_ms = 250;
    let sim = start_sim(o).await;
    let n = 400;
    let kinds = first_answers(&sim.url(), n).await;
    let faulty = n - kinds.get("ok").copied().unwrap_or(0);
    let rate = faulty as f64 / n as f64;
    assert!(
        (0.22..=0.38).contains(&rate),
        "transient fault rate {rate}: {kinds:?}"
    );
    for k in ["429-seconds", "429-date", "5xx", "cut", "slow"] {
        assert!(
            kinds.get(k).copied().unwrap_or(0) > 0,
            "no {k} among {kinds:?}"
        );
    }
    // A retried URL is eventually served.
    let c = client();
    let url = format!("{}/v1/direct_financing?offset=0&limit=1", sim.url());
    let mut ok = false;
    for _ in 0..4 {
        if let Ok(resp) = c.get(&url).bearer_auth(TOKEN).send().await
            && resp.status() == 200
            && resp.bytes().await.is_ok()
        {
            ok = true;
            break;
        }
    }
    assert!(ok, "a URL kept failing past the fault cap");

    // Malformed and duplicated records, counted against the truth.
    let t = truth(&sim.url()).await;
    let malformed: serde_json::Value = client()
        .get(format!("{}/truth/malformed", sim.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let listed = malformed["records"].as_array().unwrap();
    let mut total_rows = 0;
    let mut total_bad = 0;
    for table in TABLES {
        total_rows += t["tables"][table]["rows"].as_u64().unwrap();
        total_bad += t["tables"][table]["malformed"].as_u64().unwrap();
    }
    assert_eq!(listed.len() as u64, total_bad);
    let rate = total_bad as f64 / total_rows as f64;
    assert!((0.04..=0.065).contains(&rate), "malformed rate {rate}");
    let kinds: HashSet<&str> = listed.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    for k in [
        "bad_uscc",
        "unknown_district",
        "date_as_number",
        "extra_decimals",
        "missing_field",
        "wrong_type",
        "unknown_enum",
    ] {
        assert!(kinds.contains(k), "no {k} among {kinds:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_duplicate_records_are_in_the_feed() {
    let mut o = opts(4, 300);
    o.faults = FaultMode::Flaky;
    o.fault_rate = 0.0;
    o.malformed_rate = 0.05;
    o.duplicate_rate = 0.05;
    let sim = start_sim(o).await;
    let q = Quarter::new(2018, 3).unwrap();
    let (recs, _) = crawl(&sim.url(), "bank_loans", 50, q, q).await;
    let t = truth(&sim.url()).await;
    let valid_rows = t["tables"]["bank_loans"]["quarters"]["2018Q3"]["rows"]
        .as_u64()
        .unwrap() as usize;
    let bad: Vec<&Record> = recs
        .iter()
        .filter(|r| {
            !uscc::is_valid(&text(r, "uscc"))
                || text(r, "period_end").parse::<chrono::NaiveDate>().is_err()
                || parse_decimal(&text(r, "balance"), 18, 2).is_err()
                || parse_decimal(&text(r, "rate_pct"), 9, 4).is_err()
                || ![
                    "credit",
                    "guaranteed",
                    "mortgage",
                    "pledge_receivables",
                    "pledge_ip",
                    "pledge_other",
                ]
                .contains(&text(r, "guarantee").as_str())
        })
        .collect();
    assert!(!bad.is_empty());
    let good: Vec<&Record> = recs
        .iter()
        .filter(|r| !bad.iter().any(|b| std::ptr::eq(*b, *r)))
        .collect();
    let distinct: HashSet<String> = good.iter().map(|r| key_of("bank_loans", r)).collect();
    assert_eq!(distinct.len(), valid_rows, "every valid row is there");
    assert!(good.len() > distinct.len(), "duplicates are sent");
    // Duplicates are exact copies.
    let mut seen: HashMap<String, String> = HashMap::new();
    for r in good {
        let s = serde_json::to_string(r).unwrap();
        if let Some(prev) = seen.insert(key_of("bank_loans", r), s.clone()) {
            assert_eq!(prev, s);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_pages_are_huge_looping_invalid_or_deeply_nested() {
    let mut o = opts(9, 300);
    o.faults = FaultMode::Hostile;
    o.fault_rate = 0.0;
    o.hostile_rate = 1.0;
    let sim = start_sim(o).await;
    let c = client();
    let mut seen: HashSet<&str> = HashSet::new();
    for i in 0..40 {
        let cursor = if i == 0 {
            String::new()
        } else {
            format!("0.{i}.0")
        };
        let url = format!("{}/v1/operations?limit=20&cursor={cursor}", sim.url());
        let mut resp = get(&c, &url, "api_key").await;
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.unwrap() {
            body.extend_from_slice(&chunk);
            if body.len() > 20 << 20 {
                break;
            }
        }
        let kind = if body.len() > 20 << 20 {
            "huge"
        } else if std::str::from_utf8(&body).is_err() {
            "invalid_utf8"
        } else {
            match serde_json::from_slice::<serde_json::Value>(&body) {
                Err(e) => {
                    assert!(e.to_string().contains("recursion limit"), "{e}");
                    "deep"
                }
                Ok(v)
                    if v["next_cursor"].as_str()
                        == Some(if cursor.is_empty() { "0.0.0" } else { &cursor }) =>
                {
                    "loop"
                }
                Ok(_) => "other",
            }
        };
        seen.insert(kind);
    }
    for k in ["huge", "invalid_utf8", "deep", "loop"] {
        assert!(seen.contains(k), "no {k} among {seen:?}");
    }
}

#[test]
fn binary_prints_its_address_first_and_stops_on_sigterm() {
    use std::io::BufRead as _;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ironlake"))
        .args([
            "feed-sim",
            "--listen",
            "127.0.0.1:0",
            "--seed",
            "3",
            "--enterprises",
            "40",
            "--token",
            "x",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .expect(&line)
        .to_string();
    assert!(
        addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"),
        "{line}"
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let index: serde_json::Value = rt.block_on(async {
        client()
            .get(format!("http://{addr}/"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    assert_eq!(index["endpoints"].as_array().unwrap().len(), 7);
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_carry_etags_and_a_matching_if_none_match_gets_304() {
    let (a, b) = (start_sim(opts(61, 40)).await, start_sim(opts(62, 40)).await);
    let c = client();
    let page = |base: &str, q: &str| format!("{base}/v1/bank_loans?quarter={q}&per_page=50");
    let etag = |r: &reqwest::Response| r.headers()["etag"].to_str().unwrap().to_string();
    // The 2019Q3 page of the city at `base`, sent with `If-None-Match: tags`.
    let conditional = |base: &str, auth: &str, tags: &str| {
        let req = request(&c, &page(base, "2019Q3"), auth).header("If-None-Match", tags);
        async move { req.send().await.unwrap() }
    };
    let first = get(&c, &page(&a.url(), "2019Q3"), "bearer").await;
    assert_eq!(first.status(), 200);
    let tag = etag(&first);
    assert!(tag.starts_with('"') && tag.ends_with('"'), "{tag}");
    assert!(!first.bytes().await.unwrap().is_empty());
    // The same page again, conditionally: 304, no body, the same ETag.
    let again = conditional(&a.url(), "bearer", &format!("\"other\", W/{tag}")).await;
    assert_eq!(again.status(), 304);
    assert_eq!(etag(&again), tag);
    assert!(again.bytes().await.unwrap().is_empty());
    // Another page, or the same page of another city, has another ETag and
    // is sent in full.
    let other_quarter = get(&c, &page(&a.url(), "2019Q2"), "bearer").await;
    assert_ne!(etag(&other_quarter), tag);
    let other_city = conditional(&b.url(), "bearer", &tag).await;
    assert_eq!(other_city.status(), 200);
    assert_ne!(etag(&other_city), tag);
    // Credentials are checked before any 304.
    let anonymous = conditional(&a.url(), "none", &tag).await;
    assert_eq!(anonymous.status(), 401);
}
