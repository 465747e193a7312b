//! Hostile inputs cannot take ironlake down (issue 9): each test is named
//! after a failure seen on an earlier main and runs the real binary against
//! real servers on 127.0.0.1 and real warehouses in temp dirs.

mod common;

use common::Daemon;

use common::{ironlake, project_copy, run_ok, start_sim};
use ironlake::feedsim::SimOptions;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const FEED: &str = "robust-feed-token";
const ADMIN: &str = "robust-admin-token";
const ANALYST: &str = "robust-analyst-token";

/// The binary on `config` and warehouse `wh`, with this file's tokens.
fn bin(config: &Path, wh: &Path) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_ironlake"));
    c.arg("--config")
        .arg(config)
        .arg("--warehouse")
        .arg(wh)
        .env("IRONLAKE_LOG", "warn")
        .env_remove("IRONLAKE_FAILPOINT")
        .env("IRONLAKE_TOKEN_ADMIN", ADMIN)
        .env("IRONLAKE_TOKEN_ANALYST", ANALYST)
        .env("IRONLAKE_FEED_TOKEN", FEED);
    c
}

/// Starts `ironlake run` with `config` on `wh`; `env` adds variables.
fn start_daemon(config: &Path, wh: &Path, feed: &str, env: &[(&str, &str)]) -> Daemon {
    let mut cmd = bin(config, wh);
    cmd.args(["run", "--listen", "127.0.0.1:0", "--drain-secs", "1"])
        .env("IRONLAKE_FEED_URL", feed);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Daemon::spawn(&mut cmd)
}

fn repo_config() -> PathBuf {
    common::repo().join("ironlake.toml")
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

async fn sql(base: &str, query: &str) -> reqwest::Response {
    http()
        .post(format!("{base}/api/v1/sql"))
        .bearer_auth(ANALYST)
        .body(query.to_string())
        .send()
        .await
        .unwrap()
}

/// Runs `cmd` backfilling bank_loans for 2019Q1, off the async workers.
async fn backfill_2019q1(mut cmd: std::process::Command) -> std::process::Output {
    cmd.args([
        "backfill",
        "bank_loans",
        "--from",
        "2019Q1",
        "--to",
        "2019Q1",
    ]);
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

/// A stand-in partner on 127.0.0.1:0 built from an axum router.
async fn partner(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_20000_term_expression_is_refused_and_the_daemon_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let d = start_daemon(
        &repo_config(),
        &dir.path().join("wh"),
        "http://127.0.0.1:9",
        &[],
    );
    let deep = format!("SELECT 1{}", "+1".repeat(20_000));
    let r = sql(&d.base, &deep).await;
    assert_eq!(r.status(), 400);
    let text = r.text().await.unwrap();
    assert!(text.contains("chains more than"), "{text}");
    // Still alive, still answering queries.
    let r = sql(&d.base, "SELECT 1 + 1 AS two").await;
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("\"two\":2"));
    // The CLI refuses it too instead of overflowing its stack.
    let out = bin(&repo_config(), &dir.path().join("wh"))
        .args(["sql", &deep])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("chains more than"));
}

#[test]
fn a_csv_page_ending_inside_an_open_quote_is_quarantined_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("loans.csv");
    std::fs::write(&f, "bank_code,loan_id,period_end\n\"x").unwrap();
    let out = run_ok(
        ironlake(&dir.path().join("wh"), "http://127.0.0.1:9", FEED)
            .args(["import", "bank_loans"])
            .arg(&f)
            .args(["--format", "csv"]),
    );
    assert!(out.contains("1 rejected"), "{out}");
    let q = run_ok(
        ironlake(&dir.path().join("wh"), "http://127.0.0.1:9", FEED).args([
            "sql",
            "SELECT reason FROM quarantine.bank_loans",
            "--format",
            "csv",
        ]),
    );
    assert!(q.contains("never closed"), "{q}");
}

/// A partner whose every page points its next page (`Link`) or redirects
/// (`302`) to `foreign`, and a foreign server counting what reaches it.
async fn leaky_partner(redirect: bool) -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let foreign = partner(axum::Router::new().fallback(move || {
        let h = h.clone();
        async move {
            h.fetch_add(1, Ordering::SeqCst);
            "bank_code,loan_id,period_end\n"
        }
    }))
    .await;
    let f = foreign.clone();
    let home = partner(axum::Router::new().fallback(move || {
        let f = f.clone();
        async move {
            use axum::response::IntoResponse;
            if redirect {
                axum::response::Redirect::temporary(&format!("{f}/v1/bank_loans")).into_response()
            } else {
                (
                    [("link", format!("<{f}/v1/bank_loans?page=2>; rel=\"next\""))],
                    "bank_code,loan_id,period_end\n",
                )
                    .into_response()
            }
        }
    }))
    .await;
    (home, hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_never_follow_a_link_or_a_redirect_to_another_origin() {
    for redirect in [false, true] {
        let (home, hits) = leaky_partner(redirect).await;
        let dir = tempfile::tempdir().unwrap();
        let wh = dir.path().join("wh");
        let out = tokio::task::spawn_blocking(move || {
            ironlake(&wh, &home, FEED)
                .args(["ingest", "bank_loans"])
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("credentials are only sent"), "{err}");
        assert!(err.contains("allowed_origins"), "{err}");
        assert_eq!(
            hits.load(Ordering::SeqCst),
            0,
            "a request reached the foreign origin"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allow_listed_origin_may_serve_the_next_pages() {
    let (home, hits) = leaky_partner(false).await;
    let foreign_origin = {
        // The foreign server is the one the Link names: ask the partner.
        let r = http()
            .get(format!("{home}/v1/bank_loans"))
            .send()
            .await
            .unwrap();
        let link = r.headers()["link"].to_str().unwrap().to_string();
        let url = link
            .trim_start_matches('<')
            .split('>')
            .next()
            .unwrap()
            .to_string();
        ironlake::source::origin_of(&url)
    };
    let project = project_copy(|path, text| {
        if path == "pipelines/bank_loans.toml" {
            text.replace(
                "timeout_secs = 120",
                &format!("timeout_secs = 120\nallowed_origins = [\"{foreign_origin}\"]"),
            )
        } else {
            text
        }
    });
    let wh = project.path().join("wh");
    let cfg = project.path().join("ironlake.toml");
    let out = {
        let mut cmd = bin(&cfg, &wh);
        cmd.env("IRONLAKE_FEED_URL", &home);
        backfill_2019q1(cmd).await
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[test]
fn stray_files_in_the_warehouse_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let f = dir.path().join("loans.csv");
    std::fs::write(&f, "bank_code,loan_id\n\"x").unwrap();
    let import = || {
        run_ok(
            ironlake(&wh, "http://127.0.0.1:9", FEED)
                .args(["import", "bank_loans"])
                .arg(&f)
                .args(["--format", "csv"]),
        )
    };
    import();
    for stray in [
        "_ironlake/gen/notes.txt",
        "_ironlake/staging/notes.txt",
        "_ironlake/journal/README",
    ] {
        std::fs::write(wh.join(stray), "left here by a person").unwrap();
    }
    import();
    run_ok(ironlake(&wh, "http://127.0.0.1:9", FEED).arg("status"));
    run_ok(
        ironlake(&wh, "http://127.0.0.1:9", FEED).args(["sql", "SELECT count(*) FROM bank_loans"]),
    );
    assert!(
        wh.join("_ironlake/gen/notes.txt").exists(),
        "foreign files are left alone"
    );
}

/// The warehouse of a small simulated crawl (loans and enterprises, one year).
async fn crawled_warehouse(dir: &Path, seed: u64) -> PathBuf {
    crawled_warehouse_of(dir, seed, 60).await
}

async fn crawled_warehouse_of(dir: &Path, seed: u64, enterprises: usize) -> PathBuf {
    let mut o = SimOptions::new(seed, enterprises);
    o.token = Some(FEED.into());
    o.to = "2018Q4".parse().unwrap();
    let sim = start_sim(o).await;
    let wh = dir.join("wh");
    let (w, url) = (wh.clone(), sim.url());
    tokio::task::spawn_blocking(move || {
        for p in ["enterprises", "bank_loans"] {
            run_ok(
                ironlake(&w, &url, FEED)
                    .args(["backfill", p, "--from", "2018Q1", "--to", "2018Q4"]),
            );
        }
    })
    .await
    .unwrap();
    wh
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_user_can_query_without_writing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let wh = crawled_warehouse(dir.path(), 5).await;
    let listing = |p: &Path| {
        let out = std::process::Command::new("find")
            .arg(p)
            .arg("-printf")
            .arg("%p %s %T@\n")
            .output()
            .unwrap();
        let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(String::from)
            .collect();
        lines.sort();
        lines
    };
    let before = listing(&wh);
    // The reader's own copies of the binary and the project, inside the temp
    // dir, so nothing outside it (the checkout may be private) must be readable.
    let project = common::project_copy(|_, t| t);
    let bin = dir.path().join("ironlake");
    std::fs::copy(env!("CARGO_BIN_EXE_ironlake"), &bin).unwrap();
    let config = dir.path().join("project");
    std::fs::rename(project.path(), &config).unwrap_or_else(|_| {
        copy_tree(project.path(), &config);
    });
    let mut cmd = if unsafe { libc::geteuid() } == 0 {
        // Root ignores permissions: run as `nobody` instead.
        std::process::Command::new("chmod")
            .args(["-R", "a+rX"])
            .arg(dir.path())
            .status()
            .unwrap();
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&bin);
        c
    } else {
        std::process::Command::new("chmod")
            .args(["-R", "a-w"])
            .arg(&wh)
            .status()
            .unwrap();
        std::process::Command::new(&bin)
    };
    let out = cmd
        .arg("--config")
        .arg(config.join("ironlake.toml"))
        .arg("--warehouse")
        .arg(&wh)
        .args([
            "sql",
            "SELECT count(*) AS n FROM bank_loans",
            "--format",
            "csv",
        ])
        .env("IRONLAKE_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n: u64 = String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(n > 0);
    assert_eq!(listing(&wh), before, "a reader changed the warehouse");
    std::process::Command::new("chmod")
        .args(["-R", "u+w"])
        .arg(&wh)
        .status()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_run_is_recorded_failed_and_frees_its_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let d = start_daemon(
        &repo_config(),
        &dir.path().join("wh"),
        "http://127.0.0.1:9",
        &[("IRONLAKE_FAILPOINT", "ingest.panic")],
    );
    let trigger = || async {
        http()
            .post(format!("{}/api/v1/pipelines/bank_loans/runs", d.base))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
            .status()
    };
    for round in 0..2 {
        // Schedules and catch-up may have started it already; wait for it to end.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = trigger().await;
            if s == 202 {
                break;
            }
            assert_eq!(s, 409, "round {round}");
            assert!(
                Instant::now() < deadline,
                "the pipeline stayed marked running"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let runs: serde_json::Value = http()
            .get(format!("{}/api/v1/runs?pipeline=bank_loans", d.base))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let failed: Vec<_> = runs["runs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["outcome"] == "failed")
            .collect();
        if failed.len() >= 2 {
            assert!(
                failed[0]["error"].as_str().unwrap().contains("panicked"),
                "{}",
                failed[0]
            );
            break;
        }
        assert!(Instant::now() < deadline, "{runs}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = http()
        .get(format!("{}/healthz", d.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// A partner whose pages never end: each names the next with a fresh URL.
async fn endless_partner(delay: Duration) -> String {
    partner(axum::Router::new().fallback(
        move |q: axum::extract::Query<std::collections::HashMap<String, String>>| async move {
            tokio::time::sleep(delay).await;
            let n: u64 = q.get("n").and_then(|v| v.parse().ok()).unwrap_or(0);
            (
                [(
                    "link",
                    format!("</v1/bank_loans?n={}>; rel=\"next\"", n + 1),
                )],
                "bank_code,loan_id,period_end\n",
            )
        },
    ))
    .await
}

/// A copy of the bundled project whose `ironlake.toml` has each `(from, to)` replaced.
fn config_with(edits: &[(&str, &str)]) -> tempfile::TempDir {
    project_copy(|path, text| {
        if path != "ironlake.toml" {
            return text;
        }
        edits.iter().fold(text, |t, (from, to)| t.replace(from, to))
    })
}

fn with_source_keys(extra: &str) -> tempfile::TempDir {
    let extra = extra.to_string();
    project_copy(move |path, text| {
        if path == "pipelines/bank_loans.toml" {
            text.replace(
                "timeout_secs = 120",
                &format!("timeout_secs = 120\n{extra}"),
            )
        } else {
            text
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_feed_stops_at_the_page_cap_and_at_the_run_deadline() {
    for (extra, delay, expect) in [
        (
            "max_pages = 5",
            Duration::ZERO,
            "more than source.max_pages (5) pages",
        ),
        (
            "max_run_secs = 2",
            Duration::from_millis(50),
            "longer than source.max_run_secs (2 s)",
        ),
    ] {
        let url = endless_partner(delay).await;
        let project = with_source_keys(extra);
        let wh = project.path().join("wh");
        let cfg = project.path().join("ironlake.toml");
        let started = Instant::now();
        let out = {
            let mut cmd = bin(&cfg, &wh);
            cmd.env("IRONLAKE_FEED_URL", &url);
            backfill_2019q1(cmd).await
        };
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains(expect), "{err}");
        assert!(started.elapsed() < Duration::from_secs(30));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_error_body_is_read_only_in_part() {
    let url = partner(axum::Router::new().fallback(|| async {
        let chunks = futures::stream::repeat_with(|| {
            Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'e'; 65536]))
        });
        (
            axum::http::StatusCode::NOT_FOUND,
            axum::body::Body::from_stream(chunks),
        )
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let started = Instant::now();
    let out = backfill_2019q1(ironlake(&wh, &url, FEED)).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("answered 404"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_the_same_warehouse_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let _first = start_daemon(&repo_config(), &wh, "http://127.0.0.1:9", &[]);
    let out = bin(&repo_config(), &wh)
        .args([
            "run",
            "--listen",
            "127.0.0.1:0",
            "--pg-listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("another ironlake daemon already serves this warehouse"),
        "{err}"
    );
    assert!(err.contains("pid"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("api listening"));
}

#[test]
fn a_token_file_others_can_read_is_refused() {
    let project = config_with(&[("[api]\n", "[api]\nadmin_token_file = \"admin.token\"\n")]);
    std::fs::write(project.path().join("admin.token"), "secret-admin\n").unwrap();
    let out = bin(
        &project.path().join("ironlake.toml"),
        &project.path().join("wh"),
    )
    .env_remove("IRONLAKE_TOKEN_ADMIN")
    .args(["run", "--listen", "127.0.0.1:0"])
    .output()
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("can be read by other users") && err.contains("chmod 600"),
        "{err}"
    );
    assert!(!err.contains("secret-admin"), "the secret reached the log");
}

/// Copies a directory tree (for moves across file systems).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

/// A query slow enough to still be running a few seconds later.
const SLOW: &str = "SELECT sum(value) AS s FROM generate_series(1, 3000000000)";

async fn metric(base: &str, name: &str) -> f64 {
    let text = http()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_api_limits_concurrency_bytes_and_cancels_abandoned_queries() {
    let project = config_with(&[
        ("sql_max_concurrent = 4", "sql_max_concurrent = 1"),
        ("sql_max_bytes = 67108864", "sql_max_bytes = 5000"),
    ]);
    let d = start_daemon(
        &project.path().join("ironlake.toml"),
        &project.path().join("wh"),
        "http://127.0.0.1:9",
        &[],
    );
    // A result past the byte cap is cut short and says so.
    let r = sql(&d.base, "SELECT value FROM generate_series(1, 100000)").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-ironlake-truncated"], "5000 bytes");
    let body = r.bytes().await.unwrap();
    assert!(body.len() < 5000 + 64 * 1024, "{}", body.len());
    serde_json::from_slice::<serde_json::Value>(&body).expect("still valid JSON");
    // A client that gives up: its query stops, and its slot is freed.
    let base = d.base.clone();
    let abandoned = tokio::spawn(async move {
        let c = reqwest::Client::builder()
            .timeout(Duration::from_millis(1500))
            .build()
            .unwrap();
        c.post(format!("{base}/api/v1/sql"))
            .bearer_auth(ANALYST)
            .body(SLOW)
            .send()
            .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(metric(&d.base, "ironlake_sql_queries_in_flight").await, 1.0);
    // The one slot is taken: the next query is told to come back.
    let r = sql(&d.base, "SELECT 1").await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    assert!(
        abandoned.await.unwrap().is_err(),
        "the slow query should have timed out client-side"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&d.base, "ironlake_sql_queries_in_flight").await != 0.0 {
        assert!(
            Instant::now() < deadline,
            "the abandoned query kept running"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(sql(&d.base, "SELECT 1").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_clients_cannot_exhaust_the_server() {
    let project = config_with(&[
        ("max_connections = 512", "max_connections = 2"),
        ("header_timeout_secs = 10", "header_timeout_secs = 1"),
    ]);
    let d = start_daemon(
        &project.path().join("ironlake.toml"),
        &project.path().join("wh"),
        "http://127.0.0.1:9",
        &[],
    );
    let addr = d.base.trim_start_matches("http://").to_string();
    // The token is checked before the body is read: a 100 MB promise gets a 401 at once.
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.write_all(b"POST /api/v1/sql HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 401");
    drop(s);
    // Two connections that never finish their headers take both slots…
    let mut slow: Vec<std::net::TcpStream> = (0..2)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(&addr).unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost:").unwrap();
            s
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let quick = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    assert!(
        quick
            .get(format!("{}/healthz", d.base))
            .send()
            .await
            .is_err(),
        "a third connection was served"
    );
    // …until the header timeout closes them.
    for s in &mut slow {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = Vec::new();
        let started = Instant::now();
        let _ = s.read_to_end(&mut buf);
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "a slow client was not cut off"
        );
    }
    let r = http()
        .get(format!("{}/healthz", d.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_started_before_later_commits_still_completes() {
    let dir = tempfile::tempdir().unwrap();
    let wh = crawled_warehouse(dir.path(), 9).await;
    run_ok(ironlake(&wh, "http://127.0.0.1:9", FEED).arg("refresh"));
    let project = ironlake::config::load(&ironlake::config::LoadOptions {
        config: Some(repo_config()),
        warehouse: Some(wh.clone()),
    })
    .project
    .unwrap();
    let catalog = ironlake::catalog::Catalog::new(
        Arc::new(project),
        ironlake::warehouse::Warehouse::open_read_only(&wh).unwrap(),
    )
    .unwrap();
    let old = catalog.snapshot().await.unwrap();
    let w = wh.clone();
    tokio::task::spawn_blocking(move || {
        for _ in 0..4 {
            run_ok(ironlake(&w, "http://127.0.0.1:9", FEED).args(["refresh", "--full"]));
        }
    })
    .await
    .unwrap();
    let df = ironlake::query::sql(&old, "SELECT count(*) AS n FROM published.loan_growth")
        .await
        .unwrap();
    let batches = df
        .collect()
        .await
        .expect("the old version's files are still there");
    let n = batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<arrow::array::Int64Array>()
        .unwrap()
        .value(0);
    assert!(n > 0, "the old version's rows are gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_after_the_commit_point_still_reports_success() {
    let dir = tempfile::tempdir().unwrap();
    let wh = crawled_warehouse(dir.path(), 11).await;
    let out = ironlake(&wh, "http://127.0.0.1:9", FEED)
        .env("IRONLAKE_FAILPOINT", "gc")
        .arg("refresh")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let q = run_ok(ironlake(&wh, "http://127.0.0.1:9", FEED).args([
        "sql",
        "SELECT count(*) AS n FROM published.loan_growth",
        "--format",
        "csv",
    ]));
    assert_ne!(q.lines().nth(1), Some("0"), "{q}");
}

/// The warehouse's loans (`filter`: a WHERE clause or nothing) as a CSV file
/// beside it, with one text replaced (to move them to other quarters).
fn export_loans(wh: &Path, filter: &str, replace: (&str, &str)) -> PathBuf {
    let export = wh.with_file_name("loans.csv");
    let query = format!("SELECT * FROM bank_loans {filter}");
    run_ok(
        ironlake(wh, "http://127.0.0.1:9", FEED)
            .args(["sql", &query, "--format", "csv", "--output"])
            .arg(&export),
    );
    let text = std::fs::read_to_string(&export)
        .unwrap()
        .replace(replace.0, replace.1);
    std::fs::write(&export, text).unwrap();
    export
}

fn link_target(wh: &Path, key: &str) -> Option<PathBuf> {
    std::fs::read_link(wh.join(key)).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_write_that_fails_puts_the_links_back_and_the_next_commit_is_clean() {
    let dir = tempfile::tempdir().unwrap();
    let wh = crawled_warehouse(dir.path(), 13).await;
    // The same loans a quarter later: a new partition, so a new generation.
    let export = export_loans(
        &wh,
        "WHERE quarter = '2018Q4'",
        ("2018-12-31", "2019-03-31"),
    );
    let before = link_target(&wh, "tables/bank_loans");
    let out = ironlake(&wh, "http://127.0.0.1:9", FEED)
        .env("IRONLAKE_FAILPOINT", "commit.manifest")
        .args(["import", "bank_loans"])
        .arg(&export)
        .args(["--format", "csv"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("injected failure"));
    assert_eq!(
        link_target(&wh, "tables/bank_loans"),
        before,
        "directory readers see an uncommitted generation"
    );
    assert_eq!(
        std::fs::read_dir(wh.join("_ironlake/journal"))
            .unwrap()
            .count(),
        0
    );
    let count = |q: &str| {
        run_ok(ironlake(&wh, "http://127.0.0.1:9", FEED).args(["sql", q, "--format", "csv"]))
            .lines()
            .nth(1)
            .unwrap()
            .to_string()
    };
    assert_eq!(
        count("SELECT count(*) FROM bank_loans WHERE quarter = '2019Q1'"),
        "0"
    );
    run_ok(
        ironlake(&wh, "http://127.0.0.1:9", FEED)
            .args(["import", "bank_loans"])
            .arg(&export)
            .args(["--format", "csv"]),
    );
    assert_ne!(
        count("SELECT count(*) FROM bank_loans WHERE quarter = '2019Q1'"),
        "0"
    );
    let target = link_target(&wh, "tables/bank_loans").unwrap();
    assert!(
        wh.join("tables").join(&target).is_dir(),
        "dangling link {target:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_the_import_cleanly_and_the_next_one_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let wh = crawled_warehouse_of(dir.path(), 17, 400).await;
    let export = export_loans(&wh, "", ("2018-", "2016-"));
    let count = || {
        run_ok(ironlake(&wh, "http://127.0.0.1:9", FEED).args([
            "sql",
            "SELECT count(*) FROM bank_loans",
            "--format",
            "csv",
        ]))
    };
    let before = count();
    // No file may grow past 8 KiB: the import's staged files do.
    let mut cmd = std::process::Command::new("bash");
    cmd.arg("-c")
        .arg("ulimit -f 8; exec \"$@\"")
        .arg("bash")
        .arg(env!("CARGO_BIN_EXE_ironlake"))
        .arg("--config")
        .arg(repo_config())
        .arg("--warehouse")
        .arg(&wh)
        .args(["import", "bank_loans"])
        .arg(&export)
        .args(["--format", "csv"])
        .env("IRONLAKE_LOG", "warn");
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("File too large"), "{err}");
    assert_eq!(count(), before, "a failed import changed the table");
    run_ok(
        ironlake(&wh, "http://127.0.0.1:9", FEED)
            .args(["import", "bank_loans"])
            .arg(&export)
            .args(["--format", "csv"]),
    );
    assert_ne!(count(), before);
}
