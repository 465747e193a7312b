//! Online financing applications pushed by partners (`POST
//! /api/v1/intake/{pipeline}`) against a real `ironlake run`: every format,
//! partial rejects, who may push, idempotency, group commit under
//! concurrency, refresh within seconds, and `kill -9` in a burst.

mod common;

use common::{Daemon, client, get_json, run_ok, start_sim};
use ironlake::feedsim::SimOptions;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const FEED: &str = "intake-feed-token";
const PORTAL: &str = "intake-portal-token-0123456789";
const BANK: &str = "intake-bank-gateway-token-0123456789";
const VIEWER: &str = "intake-viewer-token-0123456789";
const ADMIN: &str = "intake-admin-token-0123456789";
const ANALYST: &str = "intake-analyst-token-0123456789";

/// The bundled project with a second partner (`bank_gateway`, which may push
/// nowhere) and a 4 KiB body limit on pushes.
fn project() -> tempfile::TempDir {
    common::project_copy(|path, text| {
        match path {
        "ironlake.toml" => text.replace(
            "[policy]",
            "[[api.partners]]\nname = \"bank_gateway\"\ntoken_env = \"IRONLAKE_TOKEN_PARTNER_BANK\"\npipelines = []\n\n[policy]",
        ),
        "pipelines/financing_applications.toml" => {
            text.replace("max_body_bytes = 67108864", "max_body_bytes = 4096")
        }
        _ => text,
    }
    })
}

fn start(config: &Path, wh: &Path, feed: &str) -> Daemon {
    let mut cmd = cli(config, wh);
    cmd.env("IRONLAKE_FEED_URL", feed)
        .args(["run", "--listen", "127.0.0.1:0", "--drain-secs", "1"])
        .env("IRONLAKE_TOKEN_PARTNER_PORTAL", PORTAL)
        .env("IRONLAKE_TOKEN_PARTNER_BANK", BANK)
        .env("IRONLAKE_TOKEN_VIEWER", VIEWER)
        .env("IRONLAKE_TOKEN_ADMIN", ADMIN)
        .env("IRONLAKE_TOKEN_ANALYST", ANALYST);
    Daemon::spawn(&mut cmd)
}

/// The binary on `config` and warehouse `wh` (the feed at an unused port unless set).
fn cli(config: &Path, wh: &Path) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_ironlake"));
    c.arg("--config")
        .arg(config)
        .arg("--warehouse")
        .arg(wh)
        .env("IRONLAKE_FEED_URL", "http://127.0.0.1:9")
        .env("IRONLAKE_FEED_TOKEN", FEED)
        .env("IRONLAKE_LOG", "warn")
        .env_remove("IRONLAKE_FAILPOINT");
    c
}

fn sql(config: &Path, wh: &Path, q: &str) -> Vec<Vec<String>> {
    let out = run_ok(cli(config, wh).args(["sql", q, "--format", "csv"]));
    out.lines()
        .skip(1)
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

fn application(id: &str, uscc: &str, amount: &str, status: &str) -> serde_json::Value {
    serde_json::json!({
        "demand_id": id, "uscc": uscc, "submitted_on": "2019-12-20", "amount": amount,
        "term_months": 12, "purpose": "working_capital", "instrument": "ip_pledge",
        "project_category": "mic2025", "status": status, "status_on": "2019-12-20",
        "bank_code": null, "funded_amount": null, "rate_pct": null
    })
}

/// The freshness check and the kill -9 burst must not share the 2 cores:
/// the tests that load the machine take this in turn.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const A: &str = "91500112MA5U00000E";
const BAD_USCC: &str = "91500112MA5U00000X";

async fn push(
    base: &str,
    token: Option<&str>,
    content_type: &str,
    body: String,
    key: Option<&str>,
) -> (u16, serde_json::Value, bool) {
    let mut req = client()
        .post(format!("{base}/api/v1/intake/financing_applications"))
        .header("content-type", content_type)
        .body(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let replayed = resp.headers().contains_key("idempotent-replayed");
    (status, resp.json().await.unwrap_or_default(), replayed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_format_partial_rejects_and_who_may_push() {
    let p = project();
    let config = p.path().join("ironlake.toml");
    let wh = p.path().join("wh");
    let d = start(&config, &wh, "http://127.0.0.1:9");
    let b = d.base.as_str();

    // One JSON object.
    let (s, a, _) = push(
        b,
        Some(PORTAL),
        "application/json",
        application("W1", A, "1000000.00", "submitted").to_string(),
        None,
    )
    .await;
    assert_eq!(
        (s, &a["accepted"], &a["rejected"]),
        (200, &1.into(), &0.into()),
        "{a}"
    );
    assert!(
        a["run_id"]
            .as_str()
            .unwrap()
            .contains("financing_applications"),
        "{a}"
    );
    // A JSON array with a bad record in the middle: the others are accepted.
    let arr = serde_json::json!([
        application("W2", A, "2000000.00", "submitted"),
        application("W3", BAD_USCC, "3000000.00", "submitted"),
        application("W4", A, "4000000.00", "submitted"),
    ]);
    let (s, a, _) = push(b, Some(PORTAL), "application/json", arr.to_string(), None).await;
    assert_eq!(
        (s, &a["accepted"], &a["rejected"]),
        (200, &2.into(), &1.into()),
        "{a}"
    );
    assert_eq!(a["errors"][0]["record_no"], 2, "{a}");
    assert_eq!(a["errors"][0]["field"], "uscc", "{a}");
    assert!(
        a["errors"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("check character"),
        "{a}"
    );
    // NDJSON, and a restatement: W1 moves on to screened (same demand_id replaces the row).
    let nd = format!(
        "{}\n{}\n",
        application("W5", A, "5000000.00", "submitted"),
        application("W1", A, "1000000.00", "screened")
    );
    let (s, a, _) = push(b, Some(PORTAL), "application/x-ndjson", nd, None).await;
    assert_eq!((s, &a["accepted"]), (200, &2.into()), "{a}");
    // CSV with a header row.
    let csv = "demand_id,uscc,submitted_on,amount,term_months,purpose,instrument,project_category,status,status_on,bank_code,funded_amount,rate_pct\n\
               W6,91500112MA5U00000E,2019-12-21,600000.00,24,equipment,loan,none,submitted,2019-12-21,,,\n";
    let (s, a, _) = push(b, Some(PORTAL), "text/csv; charset=utf-8", csv.into(), None).await;
    assert_eq!((s, &a["accepted"]), (200, &1.into()), "{a}");
    // Nothing acceptable: 422, with every reason; an amount is never rounded.
    let bad = serde_json::json!([
        application("W7", A, "7.001", "submitted"),
        application("W8", A, "8.00", "approved"),
    ]);
    let (s, a, _) = push(b, Some(PORTAL), "application/json", bad.to_string(), None).await;
    assert_eq!(
        (s, &a["accepted"], &a["rejected"]),
        (422, &0.into(), &2.into()),
        "{a}"
    );
    assert_eq!(a["errors"][0]["field"], "amount", "{a}");
    assert_eq!(a["errors"][1]["field"], "status", "{a}");
    // Undecodable, unknown type, too large.
    let (s, a, _) = push(b, Some(PORTAL), "application/json", "[{".into(), None).await;
    assert_eq!(s, 422, "{a}");
    assert!(
        a["error"]
            .as_str()
            .unwrap()
            .contains("nothing of it was committed"),
        "{a}"
    );
    let (s, _, _) = push(b, Some(PORTAL), "text/plain", "x".into(), None).await;
    assert_eq!(s, 415);
    let big = serde_json::json!(vec![application("W9", A, "1.00", "submitted"); 40]);
    let (s, _, _) = push(b, Some(PORTAL), "application/json", big.to_string(), None).await;
    assert_eq!(s, 413);

    // Who may push: only a partner for its pipelines.
    let one = || application("W10", A, "1.00", "submitted").to_string();
    assert_eq!(push(b, None, "application/json", one(), None).await.0, 401);
    assert_eq!(
        push(b, Some("no-such-token"), "application/json", one(), None)
            .await
            .0,
        401
    );
    for t in [VIEWER, ANALYST, ADMIN, BANK] {
        assert_eq!(
            push(b, Some(t), "application/json", one(), None).await.0,
            403,
            "{t}"
        );
    }
    // A partner's token does nothing else.
    let get = client()
        .get(format!("{b}/api/v1/pipelines"))
        .bearer_auth(PORTAL)
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 403);
    let sql_req = client()
        .post(format!("{b}/api/v1/sql"))
        .bearer_auth(PORTAL)
        .body("SELECT 1")
        .send()
        .await
        .unwrap();
    assert_eq!(sql_req.status(), 403);

    // What landed: exact values, the restatement, and the quarantine naming the partner.
    drop(d);
    let rows = sql(
        &config,
        &wh,
        "SELECT demand_id, amount, status FROM financing_demands ORDER BY demand_id",
    );
    let got: Vec<String> = rows.iter().map(|r| r.join(" ")).collect();
    assert_eq!(
        got,
        [
            "W1 1000000.00 screened",
            "W2 2000000.00 submitted",
            "W4 4000000.00 submitted",
            "W5 5000000.00 submitted",
            "W6 600000.00 submitted"
        ]
    );
    let q = sql(
        &config,
        &wh,
        "SELECT count(*) FROM quarantine.financing_demands WHERE source LIKE 'push to financing_applications by portal, request %'",
    );
    assert_eq!(q[0][0], "3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_key_gets_the_same_answer_and_commits_nothing_even_after_a_restart() {
    let p = project();
    let config = p.path().join("ironlake.toml");
    let wh = p.path().join("wh");
    let d = start(&config, &wh, "http://127.0.0.1:9");
    let body = serde_json::json!([
        application("K1", A, "1000000.00", "submitted"),
        application("K2", BAD_USCC, "1000000.00", "submitted"),
    ])
    .to_string();
    let (s, first, replayed) = push(
        &d.base,
        Some(PORTAL),
        "application/json",
        body.clone(),
        Some("order-42"),
    )
    .await;
    assert_eq!(s, 200, "{first}");
    assert!(!replayed);
    let runs = |base: String| async move {
        let r: serde_json::Value = get_json(
            &format!("{base}/api/v1/runs?pipeline=financing_applications"),
            VIEWER,
        )
        .await;
        r["runs"].as_array().unwrap().len()
    };
    let before = runs(d.base.clone()).await;
    // The same key again, even with another body: the first answer, nothing committed.
    let other = application("K3", A, "5.00", "submitted").to_string();
    let (s, again, replayed) = push(
        &d.base,
        Some(PORTAL),
        "application/json",
        other,
        Some("order-42"),
    )
    .await;
    assert_eq!((s, replayed), (200, true));
    assert_eq!(again, first);
    assert_eq!(runs(d.base.clone()).await, before);
    drop(d);
    // After a restart the answer is read back from the committed run.
    let d = start(&config, &wh, "http://127.0.0.1:9");
    let (s, after, replayed) = push(
        &d.base,
        Some(PORTAL),
        "application/json",
        body,
        Some("order-42"),
    )
    .await;
    assert_eq!((s, replayed), (200, true));
    assert_eq!(after, first);
    drop(d);
    let ids = sql(
        &config,
        &wh,
        "SELECT demand_id FROM financing_demands ORDER BY 1",
    );
    assert_eq!(ids, vec![vec!["K1".to_string()]]);
}

/// `ironlake portal-sim` against `base`; its JSON report.
fn portal(base: &str, args: &[&str]) -> serde_json::Value {
    let out = run_ok(
        std::process::Command::new(env!("CARGO_BIN_EXE_ironlake"))
            .arg("portal-sim")
            .arg("--url")
            .arg(format!("{base}/api/v1/intake/financing_applications"))
            .args(args)
            .env("IRONLAKE_TOKEN_PARTNER_PORTAL", PORTAL)
            .env("IRONLAKE_LOG", "warn"),
    );
    serde_json::from_str(out.lines().last().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pushes_share_commits_and_show_in_the_indicators_within_seconds() {
    let _turn = HEAVY.lock().await;
    // A small city with published indicators, then the portal's applications.
    let mut o = SimOptions::new(95, 150);
    o.token = Some(FEED.into());
    let sim = start_sim(o).await;
    let p = project();
    let config = p.path().join("ironlake.toml");
    let wh = p.path().join("wh");
    let (url, w, c) = (sim.url(), wh.clone(), config.clone());
    let d = tokio::task::spawn_blocking(move || {
        run_ok(
            cli(&c, &w)
                .env("IRONLAKE_FEED_URL", &url)
                .args(["ingest", "--all"]),
        );
        run_ok(cli(&c, &w).arg("refresh"));
        start(&c, &w, &url)
    })
    .await
    .unwrap();
    let base = d.base.clone();
    let report = tokio::task::spawn_blocking(move || {
        portal(
            &base,
            &[
                "--enterprises",
                "150",
                "--seed",
                "95",
                "--requests",
                "1000",
                "--concurrency",
                "32",
                "--bad-share",
                "0.1",
                "--prefix",
                "GC",
            ],
        )
    })
    .await
    .unwrap();
    assert_eq!(report["no_answer"], 0, "{report}");
    let statuses = report["statuses"].as_object().unwrap();
    let answered: u64 = statuses.values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(answered, 1000, "{report}");
    assert!(
        statuses.keys().all(|k| k == "200" || k == "422"),
        "{report}"
    );
    assert_eq!(
        report["accepted"].as_u64().unwrap() + report["rejected"].as_u64().unwrap(),
        1000,
        "{report}"
    );
    assert!(report["rejected"].as_u64().unwrap() > 10, "{report}");
    // Group commit: far fewer commits than requests.
    let runs: serde_json::Value = get_json(
        &format!(
            "{}/api/v1/runs?pipeline=financing_applications&limit=1000",
            d.base
        ),
        VIEWER,
    )
    .await;
    let push_runs = runs["runs"].as_array().unwrap();
    let requests: u64 = push_runs
        .iter()
        .map(|r| r["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(requests, 1000);
    assert!(
        push_runs.len() <= 250,
        "{} commits for 1000 requests",
        push_runs.len()
    );
    // Every accepted application is in the table once and every rejected
    // one in the quarantine, across the appends in place and the
    // compactions of partitions that collected too many files.
    let counts = &sql(
        &config,
        &wh,
        "SELECT (SELECT count(*) FROM financing_demands WHERE demand_id LIKE 'GC%') AS n, \
                (SELECT count(DISTINCT demand_id) FROM financing_demands \
                 WHERE demand_id LIKE 'GC%') AS ids, \
                (SELECT count(*) FROM quarantine.financing_demands \
                 WHERE source LIKE 'push to financing_applications%') AS quarantined, \
                (SELECT max(files) FROM system.partitions) AS most_files",
    )[0];
    let accepted = report["accepted"].as_u64().unwrap().to_string();
    assert_eq!(counts[0], accepted, "{counts:?}");
    assert_eq!(counts[1], accepted, "{counts:?}");
    assert_eq!(
        counts[2],
        report["rejected"].as_u64().unwrap().to_string(),
        "{counts:?}"
    );
    assert!(counts[3].parse::<u64>().unwrap() <= 24, "{counts:?}");

    // One more application: in the funnel and the matching list by the
    // daemon's own refresh, with no refresh asked for. Let the refresh after
    // the burst finish first. The deadline is generous because this is a
    // debug build sharing two cores with the other tests of this file (5 s
    // was missed once in a clean-clone CI run); the test prints how long it took.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let uscc = sql(
        &config,
        &wh,
        "SELECT uscc FROM enterprises WHERE quarter = '2019Q4' ORDER BY uscc LIMIT 1",
    )[0][0]
        .clone();
    let sent = Instant::now();
    let (s, a, _) = push(
        &d.base,
        Some(PORTAL),
        "application/json",
        application("FRESH1", &uscc, "1234567.89", "submitted").to_string(),
        None,
    )
    .await;
    assert_eq!(s, 200, "{a}");
    let mut found = false;
    while sent.elapsed() < Duration::from_secs(30) {
        let rows: serde_json::Value = get_json(
            &format!("{}/api/v1/aggregates/matching_list", d.base),
            VIEWER,
        )
        .await;
        if rows
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["demand_id"] == "FRESH1" && r["amount"].as_f64() == Some(1_234_567.89))
        {
            found = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        found,
        "FRESH1 not in the matching list after {:?}",
        sent.elapsed()
    );
    eprintln!("FRESH1 in the matching list after {:?}", sent.elapsed());
    let funnel: serde_json::Value = get_json(
        &format!("{}/api/v1/aggregates/demand_funnel?quarter=2019Q4", d.base),
        VIEWER,
    )
    .await;
    let total: u64 = funnel
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["demands"].as_u64().unwrap())
        .sum();
    let in_table: u64 = sql(
        &config,
        &wh,
        "SELECT count(*) FROM financing_demands WHERE quarter = '2019Q4'",
    )[0][0]
        .parse()
        .unwrap();
    assert_eq!(
        total, in_table,
        "the funnel counts every 2019Q4 demand, pushed ones included"
    );
    drop(d);
    drop(sim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_in_a_burst_keeps_every_acknowledged_application_exactly_once() {
    let _turn = HEAVY.lock().await;
    let p = project();
    let config = p.path().join("ironlake.toml");
    let wh = p.path().join("wh");
    let mut d = start(&config, &wh, "http://127.0.0.1:9");
    let acked: PathBuf = p.path().join("acked.txt");
    let (base, ack) = (d.base.clone(), acked.clone());
    let burst = std::thread::spawn(move || {
        portal(
            &base,
            &[
                "--enterprises",
                "300",
                "--requests",
                "100000",
                "--concurrency",
                "16",
                "--bad-share",
                "0.05",
                "--prefix",
                "CRASH",
                "--acked",
                ack.to_str().unwrap(),
            ],
        )
    });
    // Kill the daemon mid-burst, once some applications are acknowledged.
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::read_to_string(&acked).map_or(0, |t| t.lines().count()) < 300 {
        assert!(Instant::now() < deadline, "no acknowledgements");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = d.child.id().to_string();
    run_ok(std::process::Command::new("kill").args(["-9", &pid]));
    let _ = d.child.wait();
    let report = burst.join().unwrap();
    assert!(
        report["no_answer"].as_u64().unwrap() > 0,
        "the burst outlived the daemon: {report}"
    );
    // Restart (recovery), then count.
    drop(d);
    let d = start(&config, &wh, "http://127.0.0.1:9");
    drop(d);
    let ids: Vec<String> = std::fs::read_to_string(&acked)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let rows = sql(
        &config,
        &wh,
        "SELECT demand_id, count(*) FROM financing_demands GROUP BY demand_id",
    );
    let counts: std::collections::HashMap<String, u64> = rows
        .into_iter()
        .map(|r| (r[0].clone(), r[1].parse().unwrap()))
        .collect();
    assert!(ids.len() >= 300);
    for id in &ids {
        assert_eq!(
            counts.get(id),
            Some(&1),
            "{id} was acknowledged but is present {:?} times",
            counts.get(id)
        );
    }
    // Nothing appears twice, acknowledged or not.
    assert!(counts.values().all(|&n| n == 1));
}
