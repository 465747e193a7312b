//! What operators read is exact (issue 17): logs, quarantine reason codes,
//! and a demo whose environment every runbook command can use.

mod common;

use common::{ironlake, run_ok, start_sim};
use ironlake::feedsim::SimOptions;
use std::io::BufRead as _;
use std::time::{Duration, Instant};

const FEED: &str = "operator-feed-token";

/// A simulator of 40 enterprises up to 2018Q4.
async fn small_sim(seed: u64) -> common::SimServer {
    let mut o = SimOptions::new(seed, 40);
    o.token = Some(FEED.into());
    o.to = "2018Q4".parse().unwrap();
    start_sim(o).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_have_no_colour_off_a_terminal_and_one_summary_line_per_run() {
    let sim = small_sim(21).await;
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let url = sim.url();
    let out = tokio::task::spawn_blocking(move || {
        ironlake(&wh, &url, FEED)
            .env("IRONLAKE_LOG", "info")
            .args([
                "backfill",
                "bank_loans",
                "--from",
                "2018Q1",
                "--to",
                "2018Q4",
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains('\u{1b}'),
        "colour codes in a pipe: {stderr:?}"
    );
    let run_lines: Vec<&str> = stderr.lines().filter(|l| l.contains("run_id=")).collect();
    assert_eq!(
        run_lines
            .iter()
            .filter(|l| l.contains("Run committed."))
            .count(),
        1,
        "{stderr}"
    );
    assert_eq!(run_lines.len(), 1, "one summary line per run:\n{stderr}");
    for l in &run_lines {
        assert_eq!(l.matches("run_id=").count(), 1, "{l}");
        assert_eq!(l.matches("pipeline=").count(), 1, "{l}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantine_rows_carry_a_stable_reason_code() {
    let sim = small_sim(23).await;
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let url = sim.url();
    let (w, u) = (wh.clone(), url.clone());
    tokio::task::spawn_blocking(move || {
        run_ok(ironlake(&w, &u, FEED).args([
            "backfill",
            "bank_loans",
            "--from",
            "2018Q4",
            "--to",
            "2018Q4",
        ]));
    })
    .await
    .unwrap();
    let export = dir.path().join("loans.csv");
    run_ok(
        ironlake(&wh, &url, FEED)
            .args([
                "sql",
                "SELECT * FROM bank_loans LIMIT 6",
                "--format",
                "csv",
                "--output",
            ])
            .arg(&export),
    );
    // Break one field in each of four rows, two of them the same way with different values.
    let text = std::fs::read_to_string(&export).unwrap();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let header: Vec<&str> = lines[0].split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let (balance, period, uscc) = (col("balance"), col("period_end"), col("uscc"));
    let edits = [
        (1, balance, "1.234"),
        (2, balance, "99.999"),
        (3, period, "2018/12/31"),
        (4, uscc, "91500000202833449H"),
    ];
    for (row, c, value) in edits {
        let mut cells: Vec<String> = lines[row].split(',').map(String::from).collect();
        cells[c] = value.to_string();
        lines[row] = cells.join(",");
    }
    std::fs::write(&export, lines.join("\n")).unwrap();
    run_ok(
        ironlake(&wh, &url, FEED)
            .args(["import", "bank_loans"])
            .arg(&export)
            .args(["--format", "csv"]),
    );
    let got = run_ok(ironlake(&wh, &url, FEED).args([
        "sql",
        "SELECT reason_code, count(*) AS n FROM quarantine.bank_loans GROUP BY reason_code ORDER BY reason_code",
        "--format",
        "csv",
    ]));
    assert_eq!(
        got.lines().collect::<Vec<_>>(),
        [
            "reason_code,n",
            "decimal_scale,2",
            "not_a_date,1",
            "uscc_check_char,1"
        ],
        "{got}"
    );
    // The human reason still names the value.
    let reasons = run_ok(ironlake(&wh, &url, FEED).args([
        "sql",
        "SELECT reason FROM quarantine.bank_loans WHERE reason_code = 'decimal_scale' ORDER BY reason",
        "--format",
        "csv",
    ]));
    assert!(
        reasons.contains("\"1.234\"") && reasons.contains("\"99.999\""),
        "{reasons}"
    );
    // A warehouse named by a relative path that does not exist yet is created.
    run_ok(
        ironlake(std::path::Path::new("fresh"), &url, FEED)
            .current_dir(dir.path())
            .args(["import", "bank_loans"])
            .arg(&export)
            .args(["--format", "csv"]),
    );
    let got = run_ok(ironlake(&dir.path().join("fresh"), &url, FEED).args([
        "sql",
        "SELECT count(*) AS n FROM quarantine.bank_loans",
        "--format",
        "csv",
    ]));
    assert_eq!(got.trim(), "n\n4", "{got}");
}

#[test]
fn the_demo_hands_over_an_environment_every_runbook_command_can_use() {
    let project = common::project_copy(|_, text| text);
    let mut demo = std::process::Command::new(env!("CARGO_BIN_EXE_ironlake"))
        .arg("--config")
        .arg(project.path().join("ironlake.toml"))
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--pg-listen",
            "127.0.0.1:0",
        ])
        .args(["--enterprises", "30"])
        .env("IRONLAKE_LOG", "warn")
        .env_remove("IRONLAKE_TOKEN_ADMIN")
        .env_remove("IRONLAKE_TOKEN_ANALYST")
        .env_remove("IRONLAKE_TOKEN_VIEWER")
        .env_remove("IRONLAKE_FEED_URL")
        .env_remove("IRONLAKE_FEED_TOKEN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = demo.stdout.take().unwrap();
    let mut printed = String::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut lines = std::io::BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        printed.push_str(&line);
        printed.push('\n');
        if line.contains("/metrics") || Instant::now() > deadline {
            break;
        }
    }
    // Keep reading what the demo prints after that: a closed pipe would end it.
    std::thread::spawn(move || lines.for_each(drop));
    let env_file = project.path().join("ironlake-demo.env");
    let env_text =
        std::fs::read_to_string(&env_file).unwrap_or_else(|_| panic!("no env file:\n{printed}"));
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&env_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        printed.contains(&format!(". '{}'", env_file.display())),
        "{printed}"
    );
    assert!(printed.contains("export PATH="), "{printed}");
    assert!(printed.contains("  ironlake sql "), "{printed}");
    assert!(
        printed.contains("postgres listening on 127.0.0.1:"),
        "{printed}"
    );
    assert!(
        printed.contains("psql 'postgresql://analyst@127.0.0.1:"),
        "a ready-to-paste psql command: {printed}"
    );
    assert!(!printed.contains("cargo run"), "{printed}");
    assert!(
        printed.contains("'http://"),
        "URLs are quoted for zsh: {printed}"
    );
    assert!(
        printed.contains("a version is the number of the warehouse commit"),
        "{printed}"
    );
    // Every variable a runbook command needs, taken from the file.
    let vars: Vec<(String, String)> = env_text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
        .collect();
    for k in [
        "IRONLAKE_CONFIG",
        "IRONLAKE_WAREHOUSE",
        "IRONLAKE_FEED_URL",
        "IRONLAKE_FEED_TOKEN",
        "IRONLAKE_TOKEN_ADMIN",
    ] {
        assert!(
            vars.iter().any(|(n, _)| n == k),
            "{k} missing from {env_text}"
        );
    }
    let runbook = |args: &[&str]| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_ironlake"));
        c.args(args).env("IRONLAKE_LOG", "warn");
        for (k, v) in &vars {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let backfill = runbook(&[
        "backfill",
        "bank_loans",
        "--from",
        "2019Q4",
        "--to",
        "2019Q4",
    ]);
    assert!(
        backfill.status.success(),
        "{}",
        String::from_utf8_lossy(&backfill.stderr)
    );
    let status = runbook(&["status"]);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(String::from_utf8_lossy(&status.stdout).contains("bank_loans"));
    let _ = demo.kill();
    let _ = demo.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_all_runs_pipelines_side_by_side_up_to_the_limit() {
    // Every first request of a page is answered slowly, so runs take a while.
    let mut o = SimOptions::new(29, 30);
    o.token = Some(FEED.into());
    o.to = "2017Q2".parse().unwrap();
    o.faults = ironlake::feedsim::FaultMode::Flaky;
    o.fault_rate = 1.0;
    o.malformed_rate = 0.0;
    o.duplicate_rate = 0.0;
    o.slow_ms = 600;
    let sim = start_sim(o).await;
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let (w, url) = (wh.clone(), sim.url());
    let out = tokio::task::spawn_blocking(move || {
        run_ok(ironlake(&w, &url, FEED).args(["ingest", "--all"]))
    })
    .await
    .unwrap();
    assert_eq!(
        out.lines()
            .filter(|l| l.contains(": committed run "))
            .count(),
        5,
        "{out}"
    );
    let runs = run_ok(ironlake(&wh, "http://127.0.0.1:9", FEED).args([
        "sql",
        "SELECT CAST(started_at AS BIGINT) AS s, CAST(ended_at AS BIGINT) AS e FROM system.runs WHERE kind = 'ingest' ORDER BY s",
        "--format",
        "json",
    ]));
    let runs: Vec<serde_json::Value> = serde_json::from_str(&runs).unwrap();
    let spans: Vec<(i64, i64)> = runs
        .iter()
        .map(|r| (r["s"].as_i64().unwrap(), r["e"].as_i64().unwrap()))
        .collect();
    // At most two at once (max_concurrent_runs = 2), and some did overlap.
    let overlaps = |i: usize| {
        spans
            .iter()
            .enumerate()
            .filter(|(j, s)| *j != i && s.0 < spans[i].1 && spans[i].0 < s.1)
            .count()
    };
    assert!(
        (0..spans.len()).any(|i| overlaps(i) >= 1),
        "no two runs overlapped: {spans:?}"
    );
    for (i, s) in spans.iter().enumerate() {
        let at_start = spans
            .iter()
            .enumerate()
            .filter(|(j, o)| *j != i && o.0 <= s.0 && s.0 < o.1)
            .count();
        assert!(
            at_start <= 1,
            "more than two runs at once at {}: {spans:?}",
            s.0
        );
    }
}
