//! The HTTP API through the real router on 127.0.0.1: the auth matrix,
//! aggregates with ETags and formats, SQL, run triggers and metrics.

mod common;

use common::{ironlake, repo, run_ok, start_sim};
use ironlake::daemon::{Daemon, SystemClock};
use ironlake::feedsim::SimOptions;
use std::sync::Arc;

const FEED: &str = "api-test-feed-token";
const ADMIN: &str = "admin-token-1";
const ANALYST: &str = "analyst-token-2";
const VIEWER: &str = "viewer-token-3";

struct Api {
    base: String,
    daemon: Arc<Daemon>,
    _dir: tempfile::TempDir,
    _sim: common::SimServer,
}

async fn api(public_aggregates: bool, slow_ms: u64) -> Api {
    let mut o = SimOptions::new(91, 150);
    o.token = Some(FEED.into());
    if slow_ms > 0 {
        o.faults = ironlake::feedsim::FaultMode::Flaky;
        o.fault_rate = 1.0;
        o.malformed_rate = 0.0;
        o.duplicate_rate = 0.0;
        o.slow_ms = slow_ms;
    }
    let sim = start_sim(o).await;
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let (url, w) = (sim.url(), wh.clone());
    if slow_ms == 0 {
        tokio::task::spawn_blocking(move || {
            run_ok(ironlake(&w, &url, FEED).args(["ingest", "--all"]));
            run_ok(ironlake(&w, &url, FEED).arg("refresh"));
        })
        .await
        .unwrap();
    }
    for (f, t) in [("admin", ADMIN), ("analyst", ANALYST), ("viewer", VIEWER)] {
        let path = dir.path().join(f);
        std::fs::write(&path, format!("{t}\n")).unwrap();
        // Token files others can read are refused.
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let mut project = ironlake::config::load(&ironlake::config::LoadOptions {
        config: Some(repo().join("ironlake.toml")),
        warehouse: Some(wh.clone()),
    })
    .project
    .unwrap();
    project.settings.api.admin_token_file = Some(dir.path().join("admin"));
    project.settings.api.analyst_token_file = Some(dir.path().join("analyst"));
    project.settings.api.viewer_token_file = Some(dir.path().join("viewer"));
    project.settings.api.public_aggregates = public_aggregates;
    project.settings.api.sql_max_rows = 50;
    // The pipelines read the feed from the environment; point them at this simulator.
    for p in &mut project.pipelines {
        p.source.url.raw = p.source.url.raw.replace("${IRONLAKE_FEED_URL}", &sim.url());
        p.source.url.env.clear();
        if let ironlake::config::pipeline::Auth::Bearer { token }
        | ironlake::config::pipeline::Auth::ApiKey { key: token, .. }
        | ironlake::config::pipeline::Auth::Basic {
            password: token, ..
        } = &mut p.source.auth
        {
            let f = dir.path().join("feed-token");
            std::fs::write(&f, FEED).unwrap();
            *token = ironlake::config::pipeline::SecretRef::File(f);
        }
    }
    let daemon = tokio::task::spawn_blocking(move || {
        Daemon::new(Default::default(), project, Arc::new(SystemClock)).unwrap()
    })
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(ironlake::serve::serve(
        daemon.clone(),
        listener,
        daemon.shutdown_token(),
    ));
    Api {
        base,
        daemon,
        _dir: dir,
        _sim: sim,
    }
}

fn client() -> reqwest::Client {
    common::client()
}

async fn call(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> reqwest::Response {
    let c = client();
    let mut r = match method {
        "POST" => c.post(url),
        _ => c.get(url),
    };
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    if let Some(b) = body {
        r = r.body(b.to_string());
    }
    r.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_against_every_route() {
    let a = api(false, 0).await;
    a.daemon.start_schedules();
    let b = &a.base;
    // (method, path, body, minimum role: 0 none, 1 viewer, 2 analyst, 3 admin)
    let routes: [(&str, String, Option<&str>, u8); 13] = [
        ("GET", format!("{b}/healthz"), None, 0),
        ("GET", format!("{b}/readyz"), None, 0),
        ("GET", format!("{b}/metrics"), None, 0),
        ("GET", format!("{b}/api/v1/pipelines"), None, 1),
        ("GET", format!("{b}/api/v1/runs?limit=5"), None, 1),
        ("GET", format!("{b}/api/v1/aggregates"), None, 1),
        ("GET", format!("{b}/api/v1/aggregates/loan_growth"), None, 1),
        (
            "GET",
            format!("{b}/api/v1/aggregates/loan_growth/definition"),
            None,
            1,
        ),
        (
            "GET",
            format!("{b}/api/v1/aggregates/loan_growth/chart.svg?y=industry_balance"),
            None,
            1,
        ),
        ("GET", format!("{b}/api/v1/tables"), None, 1),
        ("POST", format!("{b}/api/v1/sql"), Some("SELECT 1 AS x"), 2),
        ("POST", format!("{b}/api/v1/pipelines/nosuch/runs"), None, 3),
        // Last: a reload re-reads ./ironlake.toml, which does not name this test's token files.
        ("POST", format!("{b}/api/v1/reload"), None, 3),
    ];
    let roles: [(Option<&str>, u8); 5] = [
        (None, 0),
        (Some("wrong-token"), 0),
        (Some(VIEWER), 1),
        (Some(ANALYST), 2),
        (Some(ADMIN), 3),
    ];
    for (method, url, body, need) in &routes {
        for (token, level) in roles {
            let resp = call(method, url, token, *body).await;
            let status = resp.status().as_u16();
            let expected = if level >= *need {
                if url.ends_with("/nosuch/runs") {
                    404
                } else {
                    200
                }
            } else if level == 0 {
                401
            } else {
                403
            };
            assert_eq!(status, expected, "{method} {url} as {token:?}");
            if status >= 400 {
                let body: serde_json::Value = resp.json().await.unwrap();
                assert!(
                    body["error"].as_str().is_some_and(|e| !e.is_empty()),
                    "{body}"
                );
            }
        }
    }
    // The metrics count requests by route and status.
    let m = call("GET", &format!("{b}/metrics"), None, None)
        .await
        .text()
        .await
        .unwrap();
    assert!(
        m.contains("ironlake_http_requests_total{route=\"/api/v1/sql\",status=\"403\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("ironlake_http_requests_total{route=\"/api/v1/sql\",status=\"401\"} 2"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_aggregates_need_no_token_but_sql_still_does() {
    let a = api(true, 0).await;
    let b = &a.base;
    assert_eq!(
        call(
            "GET",
            &format!("{b}/api/v1/aggregates/loan_growth"),
            None,
            None
        )
        .await
        .status(),
        200
    );
    assert_eq!(
        call("POST", &format!("{b}/api/v1/sql"), None, Some("SELECT 1"))
            .await
            .status(),
        401
    );
    // The dashboard's charts are public too; its operations data is not.
    let chart = call(
        "GET",
        &format!("{b}/api/v1/aggregates/financing_cost/chart.svg?y=avg_loan_rate_pct&district_code=ALL&kind=line"),
        None,
        None,
    )
    .await;
    assert_eq!(chart.status(), 200);
    assert_eq!(chart.headers()["content-type"], "image/svg+xml");
    let svg = chart.text().await.unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("data-points=\"12\""),
        "{svg}"
    );
    assert_eq!(
        call("GET", &format!("{b}/api/v1/tables"), None, None)
            .await
            .status(),
        401
    );
    let session: serde_json::Value = call("GET", &format!("{b}/ui/session"), None, None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(session["public_aggregates"], true);
    assert!(session["role"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_published_aggregate_explains_how_it_is_made() {
    let a = api(false, 0).await;
    let b = &a.base;
    let list: serde_json::Value =
        call("GET", &format!("{b}/api/v1/aggregates"), Some(VIEWER), None)
            .await
            .json()
            .await
            .unwrap();
    let list = list["aggregates"].as_array().unwrap();
    assert_eq!(list.len(), common::PUBLISHED_AGGREGATES, "{list:?}");
    for agg in list {
        let name = agg["name"].as_str().unwrap();
        let url = format!("{b}/api/v1/aggregates/{name}/definition");
        let r = call("GET", &url, Some(VIEWER), None).await;
        assert_eq!(r.status(), 200, "{url}");
        let d: serde_json::Value = r.json().await.unwrap();
        assert_eq!(d["name"], name);
        assert!(d["description"].as_str().unwrap().len() > 40, "{d}");
        assert_eq!(d["file"], format!("pipelines/aggregates/{name}.sql"));
        assert!(d["sql"].as_str().unwrap().contains("SELECT"), "{d}");
        assert!(
            !d["sql"].as_str().unwrap().contains("{{"),
            "placeholders left: {d}"
        );
        // Every column, in the listing and the definition: a type, a Chinese name and a formula.
        let cols = d["columns"].as_array().unwrap();
        assert_eq!(cols, agg["columns"].as_array().unwrap(), "{name}");
        for c in cols {
            assert!(
                c["type"].as_str().is_some_and(|t| !t.is_empty()),
                "{name}: {c}"
            );
            let label = c["label"].as_str().unwrap_or_else(|| panic!("{name}: {c}"));
            assert!(label.chars().any(|ch| ch as u32 > 0x4e00), "{name}: {c}");
            assert!(
                c["formula"].as_str().is_some_and(|f| !f.is_empty()),
                "{name}: {c}"
            );
        }
    }
    // The policy values a definition depends on are named with their values.
    let d: serde_json::Value = call(
        "GET",
        &format!("{b}/api/v1/aggregates/guarantee_fee_subsidy/definition"),
        Some(VIEWER),
        None,
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(d["policy"]["guarantee_fee_ceiling_pct"], "2.0000", "{d}");
    assert_eq!(d["policy"]["guarantee_fee_subsidy_pp"], "1.0000", "{d}");
    assert_eq!(d["lags"], serde_json::json!([0]));
    let subsidy = d["columns"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "subsidy")
        .unwrap();
    assert_eq!(subsidy["label"], "担保费补贴");
    assert_eq!(subsidy["unit"], "CNY yuan");
    assert_eq!(subsidy["type"], "Decimal128(18, 2)");
    let r = call(
        "GET",
        &format!("{b}/api/v1/aggregates/nosuch/definition"),
        Some(VIEWER),
        None,
    )
    .await;
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregates_have_etags_formats_and_filters() {
    let a = api(false, 0).await;
    let b = &a.base;
    let list: serde_json::Value =
        call("GET", &format!("{b}/api/v1/aggregates"), Some(VIEWER), None)
            .await
            .json()
            .await
            .unwrap();
    let names: Vec<&str> = list["aggregates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    for n in [
        "loan_growth",
        "direct_financing_growth",
        "financing_cost",
        "demand_funnel",
        "matching_list",
        "interest_subsidy",
    ] {
        assert!(names.contains(&n), "{n} missing from {names:?}");
    }
    let url = format!("{b}/api/v1/aggregates/loan_growth");
    let r = call("GET", &url, Some(VIEWER), None).await;
    assert_eq!(r.headers()["content-type"], "application/json");
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    let raw = r.text().await.unwrap();
    let rows: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 12);
    assert_eq!(rows[0]["quarter"], "2017Q1");
    // Every row has every column; a missing prior year is an explicit null.
    for r in rows.as_array().unwrap() {
        assert_eq!(r.as_object().unwrap().len(), 6, "{r}");
    }
    assert!(rows[0]["industry_yoy_pct"].is_null());
    // Decimals are JSON numbers written with exactly the column's scale.
    for part in raw.split("\"industry_balance\":").skip(1) {
        let number: String = part
            .chars()
            .take_while(|c| *c != ',' && *c != '}')
            .collect();
        let (_, frac) = number.split_once('.').unwrap_or_else(|| panic!("{number}"));
        assert_eq!(frac.len(), 2, "{number}");
    }
    // Several quarters, a range, and a bad one.
    for (query, n) in [
        ("quarter=2019Q1,2019Q2", 2),
        ("from=2018Q1&to=2018Q4", 4),
        ("from=2019Q3", 2),
    ] {
        let r: serde_json::Value = call("GET", &format!("{url}?{query}"), Some(VIEWER), None)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(r.as_array().unwrap().len(), n, "{query}: {r}");
    }
    let r = call("GET", &format!("{url}?quarter=2019Q5"), Some(VIEWER), None).await;
    assert_eq!(r.status(), 400);
    // The listing says what each column is.
    let lg = list["aggregates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "loan_growth")
        .unwrap();
    assert!(
        lg["description"]
            .as_str()
            .unwrap()
            .contains("工业和制造业贷款增长")
    );
    let cols = lg["columns"].as_array().unwrap();
    assert_eq!(cols[1]["name"], "industry_balance");
    assert_eq!(cols[1]["unit"], "CNY yuan");
    assert!(cols[1]["type"].as_str().unwrap().starts_with("Decimal128("));
    assert_eq!(cols[3]["unit"], "percent");
    let c = client();
    let r = c
        .get(&url)
        .bearer_auth(VIEWER)
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    // A 304 carries the validator and the caching rules again (RFC 9111).
    assert_eq!(r.headers()["etag"].to_str().unwrap(), etag);
    assert_eq!(r.headers()["cache-control"], "no-cache");
    assert_eq!(r.headers()["vary"], "Accept");
    // What a gzip proxy sends back (a weak validator) still matches.
    let r = c
        .get(&url)
        .bearer_auth(VIEWER)
        .header("If-None-Match", format!("\"other\", W/{etag}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    let r = c
        .get(&url)
        .bearer_auth(VIEWER)
        .header("If-None-Match", "\"v0\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Each representation has its own validator: CSV by Accept, Parquet, a filter.
    let mut tags = vec![etag.clone()];
    for (accept, query) in [
        ("text/csv", ""),
        ("*/*", "?format=parquet"),
        ("*/*", "?quarter=2019Q3"),
    ] {
        let r = c
            .get(format!("{url}{query}"))
            .bearer_auth(VIEWER)
            .header("Accept", accept)
            .header("If-None-Match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            200,
            "{accept} {query}: the JSON validator matched"
        );
        assert_eq!(r.headers()["vary"], "Accept");
        tags.push(r.headers()["etag"].to_str().unwrap().to_string());
    }
    tags.sort();
    tags.dedup();
    assert_eq!(tags.len(), 4, "{tags:?}");
    let csv = call(
        "GET",
        &format!("{url}?format=csv&quarter=2019Q3"),
        Some(VIEWER),
        None,
    )
    .await
    .text()
    .await
    .unwrap();
    assert_eq!(csv.lines().count(), 2, "{csv}");
    assert!(csv.starts_with("quarter,industry_balance,manufacturing_balance,industry_yoy_pct,manufacturing_yoy_pct,gap_pp"), "{csv}");
    let arrow = call("GET", &format!("{url}?format=arrow"), Some(VIEWER), None).await;
    assert_eq!(
        arrow.headers()["content-type"],
        "application/vnd.apache.arrow.stream"
    );
    let bytes = arrow.bytes().await.unwrap();
    let reader =
        arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes.to_vec()), None)
            .unwrap();
    let n: usize = reader.map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(n, 12);
    let pq = call("GET", &format!("{url}?format=parquet"), Some(VIEWER), None)
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(&pq[..4], b"PAR1");
    let fc = call(
        "GET",
        &format!("{b}/api/v1/aggregates/financing_cost?quarter=2019Q3&district_code=ALL"),
        Some(VIEWER),
        None,
    )
    .await;
    let fc: serde_json::Value = fc.json().await.unwrap();
    assert_eq!(fc.as_array().unwrap().len(), 1);
    // District names come with the codes, for every role that may read them.
    assert_eq!(fc[0]["district_name"], "全市");
    let all: serde_json::Value = call(
        "GET",
        &format!("{b}/api/v1/aggregates/financing_cost?quarter=2019Q3"),
        Some(VIEWER),
        None,
    )
    .await
    .json()
    .await
    .unwrap();
    let all = all.as_array().unwrap();
    assert!(all.len() >= 3, "{all:?}");
    for r in all {
        assert!(
            r["district_name"].as_str().is_some_and(|n| !n.is_empty()),
            "{r}"
        );
    }
    let codes: Vec<&str> = all
        .iter()
        .map(|r| r["district_code"].as_str().unwrap())
        .filter(|c| *c != "ALL")
        .take(2)
        .collect();
    let two: serde_json::Value = call(
        "GET",
        &format!(
            "{b}/api/v1/aggregates/financing_cost?quarter=2019Q3&district_code={}",
            codes.join(",")
        ),
        Some(VIEWER),
        None,
    )
    .await
    .json()
    .await
    .unwrap();
    let got: Vec<&str> = two
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["district_code"].as_str().unwrap())
        .collect();
    assert_eq!(got, codes);
    assert_eq!(
        call(
            "GET",
            &format!("{url}?district_code=500112"),
            Some(VIEWER),
            None
        )
        .await
        .status(),
        400
    );
    assert_eq!(
        call("GET", &format!("{url}?quarter=2019Q5"), Some(VIEWER), None)
            .await
            .status(),
        400
    );
    assert_eq!(
        call(
            "GET",
            &format!("{b}/api/v1/aggregates/nosuch"),
            Some(VIEWER),
            None
        )
        .await
        .status(),
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_over_http_is_read_only_limited_and_speaks_three_formats() {
    let a = api(false, 0).await;
    let url = format!("{}/api/v1/sql", a.base);
    let c = client();
    let q = "SELECT quarter, count(*) AS n FROM bank_loans GROUP BY quarter ORDER BY quarter";
    let r = c
        .post(&url)
        .bearer_auth(ANALYST)
        .header("Content-Type", "application/json")
        .body(serde_json::json!({"sql": q}).to_string())
        .send()
        .await
        .unwrap();
    let j: serde_json::Value = r.json().await.unwrap();
    assert_eq!(j.as_array().unwrap().len(), 12);
    let r = c
        .post(&url)
        .bearer_auth(ANALYST)
        .header("Accept", "text/csv")
        .body(q)
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap().lines().count(), 13);
    let r = c
        .post(&url)
        .bearer_auth(ANALYST)
        .header("Accept", "application/vnd.apache.arrow.stream")
        .body(q)
        .send()
        .await
        .unwrap();
    let reader = arrow::ipc::reader::StreamReader::try_new(
        std::io::Cursor::new(r.bytes().await.unwrap().to_vec()),
        None,
    )
    .unwrap();
    assert_eq!(reader.map(|b| b.unwrap().num_rows()).sum::<usize>(), 12);
    // Row limit (50 in this test's config).
    let r = c
        .post(&url)
        .bearer_auth(ANALYST)
        .header("Accept", "text/csv")
        .body("SELECT * FROM bank_loans")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-ironlake-truncated"], "50");
    assert_eq!(r.text().await.unwrap().lines().count(), 51);
    for bad in [
        "DROP TABLE bank_loans",
        "COPY bank_loans TO '/tmp/x'",
        "SELECT * FROM '/etc/passwd'",
    ] {
        let r = c
            .post(&url)
            .bearer_auth(ADMIN)
            .body(bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        let j: serde_json::Value = r.json().await.unwrap();
        assert!(
            j["error"].as_str().unwrap().contains("read-only")
                || j["error"].as_str().unwrap().contains("path or URL"),
            "{j}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_can_be_triggered_once_at_a_time_and_is_counted() {
    // Every first request is answered slowly (1.5 s), so the run is still in flight.
    let a = api(false, 1500).await;
    let url = format!("{}/api/v1/pipelines/direct_financing/runs", a.base);
    let r = call("POST", &url, Some(ADMIN), None).await;
    assert_eq!(r.status(), 202);
    let r = call("POST", &url, Some(ADMIN), None).await;
    assert_eq!(r.status(), 409, "a second run while the first is in flight");
    let p: serde_json::Value = call(
        "GET",
        &format!("{}/api/v1/pipelines", a.base),
        Some(VIEWER),
        None,
    )
    .await
    .json()
    .await
    .unwrap();
    let df = p["pipelines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "direct_financing")
        .unwrap()
        .clone();
    assert_eq!(df["running"], true);
    // Enum names as the config spells them (pulled pipelines; pushed ones have no schedule).
    let catch_up: Vec<&str> = p["pipelines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["kind"] == "pull")
        .map(|x| x["catch_up"].as_str().unwrap())
        .collect();
    assert_eq!(catch_up.len(), 5);
    let push: Vec<&serde_json::Value> = p["pipelines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["kind"] == "push")
        .collect();
    assert_eq!(push.len(), 1);
    assert_eq!(push[0]["intake"], "/api/v1/intake/financing_applications");
    assert!(catch_up.contains(&"run_once"), "{catch_up:?}");
    assert!(
        catch_up.iter().all(|c| ["run_once", "skip"].contains(c)),
        "{catch_up:?}"
    );
    let mut done = false;
    for _ in 0..300 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if a.daemon.running().is_empty() {
            done = true;
            break;
        }
    }
    assert!(done, "the run did not finish");
    let runs: serde_json::Value = call(
        "GET",
        &format!("{}/api/v1/runs?pipeline=direct_financing&limit=1", a.base),
        Some(VIEWER),
        None,
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(runs["runs"][0]["outcome"], "succeeded", "{runs}");
    let m = call("GET", &format!("{}/metrics", a.base), None, None)
        .await
        .text()
        .await
        .unwrap();
    assert!(
        m.contains(
            "ironlake_pipeline_runs_total{pipeline=\"direct_financing\",outcome=\"succeeded\"} 1"
        ),
        "{m}"
    );
    assert!(
        m.contains("ironlake_pipeline_run_duration_seconds_count{pipeline=\"direct_financing\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("ironlake_aggregate_published_version{aggregate=\"direct_financing_growth\"}"),
        "the ingest refreshed what reads the table: {m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_match_the_run_history_of_every_process() {
    // The warehouse was filled by other processes (`ironlake ingest --all`, `refresh`).
    let a = api(false, 0).await;
    a.daemon.refresh(&[], true).await.expect("refresh");
    let text = call("GET", &format!("{}/metrics", a.base), None, None)
        .await
        .text()
        .await
        .unwrap();
    let file = a._dir.path().join("metrics.txt");
    std::fs::write(&file, &text).unwrap();
    // The reference parser accepts the whole exposition.
    let parsed = common::py_json("metrics.py", &[file.to_str().unwrap()]);
    let samples = parsed["samples"].as_array().unwrap();
    let find = |name: &str, labels: &[(&str, &str)]| -> Option<f64> {
        samples
            .iter()
            .find(|s| s[0] == name && labels.iter().all(|(k, v)| s[1][*k] == *v))
            .map(|s| s[2].as_f64().unwrap())
    };
    let runs: serde_json::Value = call(
        "POST",
        &format!("{}/api/v1/sql", a.base),
        Some(ANALYST),
        Some("SELECT pipeline, outcome, count(*) AS n FROM system.runs WHERE kind <> 'refresh' AND outcome <> 'running' GROUP BY pipeline, outcome"),
    )
    .await
    .json()
    .await
    .unwrap();
    let runs = runs.as_array().unwrap();
    assert!(runs.len() >= 5, "{runs:?}");
    for r in runs {
        let (p, o) = (
            r["pipeline"].as_str().unwrap(),
            r["outcome"].as_str().unwrap(),
        );
        assert_eq!(
            find(
                "ironlake_pipeline_runs_total",
                &[("pipeline", p), ("outcome", o)]
            ),
            Some(r["n"].as_f64().unwrap()),
            "{p} {o}"
        );
    }
    for p in [
        "enterprises",
        "operations",
        "bank_loans",
        "financing_demands",
        "direct_financing",
    ] {
        let last = find(
            "ironlake_pipeline_last_success_timestamp_seconds",
            &[("pipeline", p)],
        )
        .unwrap_or_else(|| panic!("no last success for {p}"));
        assert!(last > 1.7e9, "{p}: {last}");
        assert_eq!(
            find("ironlake_pipeline_runs_skipped_total", &[("pipeline", p)]),
            Some(0.0),
            "{p}"
        );
        assert!(
            find(
                "ironlake_pipeline_rows_total",
                &[("pipeline", p), ("kind", "valid")]
            )
            .unwrap()
                > 0.0
        );
    }
    // Each aggregate has its own refresh duration.
    let durations: Vec<f64> = samples
        .iter()
        .filter(|s| s[0] == "ironlake_aggregate_refresh_duration_seconds")
        .map(|s| s[2].as_f64().unwrap())
        .collect();
    assert_eq!(durations.len(), common::PUBLISHED_AGGREGATES, "{text}");
    let mut distinct = durations.clone();
    distinct.sort_by(f64::total_cmp);
    distinct.dedup();
    assert!(
        distinct.len() > 1,
        "every aggregate shows the same duration: {durations:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_publication_is_served_on_the_next_request() {
    let a = api(false, 0).await;
    let url = format!("{}/api/v1/aggregates/loan_growth?format=csv", a.base);
    let first = call("GET", &url, Some(VIEWER), None).await;
    let etag1 = first.headers()["etag"].to_str().unwrap().to_string();
    let body1 = first.text().await.unwrap();
    // Served again from the cache: same bytes, same validator.
    let again = call("GET", &url, Some(VIEWER), None).await;
    assert_eq!(again.headers()["etag"].to_str().unwrap(), etag1);
    assert_eq!(again.text().await.unwrap(), body1);
    assert!(a.daemon.responses().bytes() > 0, "nothing was cached");
    // A new version, published by a full refresh: the very next read has it.
    a.daemon
        .refresh(&["loan_growth".to_string()], true)
        .await
        .expect("refresh");
    let next = call("GET", &url, Some(VIEWER), None).await;
    assert_eq!(next.status(), 200);
    let etag2 = next.headers()["etag"].to_str().unwrap().to_string();
    assert_ne!(
        etag2, etag1,
        "the old version was served after a new one was published"
    );
    let r = client()
        .get(&url)
        .bearer_auth(VIEWER)
        .header("If-None-Match", &etag1)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the old validator still matched");
}
