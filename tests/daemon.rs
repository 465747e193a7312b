//! The daemon binary: first line, SIGTERM in the middle of an ingest, the
//! next start completing the work, SIGHUP reloads, and a bounded soak.

mod common;

use common::{py_json, start_sim};
use ironlake::feedsim::{FaultMode, SimOptions};
use std::path::Path;
use std::time::{Duration, Instant};

const FEED: &str = "daemon-test-feed";
const ADMIN: &str = "daemon-test-admin";

/// A copy of the bundled project; `cron` replaces every pipeline's schedule if given.
fn project(cron: Option<&str>) -> tempfile::TempDir {
    common::project_copy(|path, text| match cron {
        Some(c) if path.starts_with("pipelines/") && path.ends_with(".toml") => text
            .lines()
            .map(|l| {
                if l.starts_with("cron = ") {
                    format!("cron = \"{c}\"")
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n"),
        _ => text,
    })
}

struct Running {
    child: std::process::Child,
    base: String,
}

fn start(project: &Path, wh: &Path, feed: &str, drain: u64) -> Running {
    let (child, base) = common::spawn_daemon(
        std::process::Command::new(env!("CARGO_BIN_EXE_ironlake"))
            .arg("--config")
            .arg(project.join("ironlake.toml"))
            .arg("--warehouse")
            .arg(wh)
            .args([
                "run",
                "--listen",
                "127.0.0.1:0",
                "--drain-secs",
                &drain.to_string(),
            ])
            .env("IRONLAKE_FEED_URL", feed)
            .env("IRONLAKE_FEED_TOKEN", FEED)
            .env("IRONLAKE_TOKEN_ADMIN", ADMIN)
            .env("IRONLAKE_TOKEN_VIEWER", ADMIN)
            .env("IRONLAKE_LOG", "warn"),
    );
    Running { child, base }
}

fn signal(child: &std::process::Child, sig: i32) {
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

async fn pipelines(base: &str) -> serde_json::Value {
    common::get_json(&format!("{base}/api/v1/pipelines"), ADMIN).await
}

fn wait_exit(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(
            start.elapsed() < limit,
            "the daemon did not stop within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_ingest_leaves_a_consistent_warehouse_and_the_next_start_finishes() {
    // Slow answers (every page's first request takes 300 ms) keep the catch-up runs in flight.
    let mut o = SimOptions::new(101, 300);
    o.token = Some(FEED.into());
    o.faults = FaultMode::Flaky;
    o.fault_rate = 1.0;
    o.malformed_rate = 0.0;
    o.duplicate_rate = 0.0;
    o.slow_ms = 300;
    o.hostile_kinds = vec![];
    let sim = start_sim(o).await;
    let p = project(None);
    let wh = p.path().join("wh");
    // First start: catch-up (run_once, never ran) starts runs at once; stop in the middle.
    let mut d = start(p.path(), &wh, &sim.url(), 0);
    let mut seen_running = false;
    for _ in 0..100 {
        let v = pipelines(&d.base).await;
        if v["pipelines"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["running"] == true)
        {
            seen_running = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen_running, "no run started at startup");
    tokio::time::sleep(Duration::from_millis(400)).await;
    signal(&d.child, libc::SIGTERM);
    let status =
        tokio::task::spawn_blocking(move || wait_exit(&mut d.child, Duration::from_secs(20)))
            .await
            .unwrap();
    assert!(status.success(), "{status:?}");
    // Consistent: whatever is visible is whole and has no duplicate key.
    let mid = py_json("summarize.py", &[wh.to_str().unwrap()]);
    for (t, v) in mid["tables"].as_object().unwrap() {
        assert_eq!(v["rows"], v["distinct_keys"], "{t}");
    }
    // Second start: the interrupted runs are caught up.
    let mut d = start(p.path(), &wh, &sim.url(), 30);
    let run_once = [
        "enterprises",
        "operations",
        "bank_loans",
        "direct_financing",
    ];
    let mut done = false;
    for _ in 0..600 {
        let v = pipelines(&d.base).await;
        done = v["pipelines"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| run_once.contains(&p["name"].as_str().unwrap()))
            .all(|p| p["last_run"]["outcome"] == "succeeded" && p["running"] == false);
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(done, "the second start did not complete the work");
    signal(&d.child, libc::SIGTERM);
    let status =
        tokio::task::spawn_blocking(move || wait_exit(&mut d.child, Duration::from_secs(40)))
            .await
            .unwrap();
    assert!(status.success());
    let truth: serde_json::Value = reqwest::get(format!("{}/truth", sim.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let fin = py_json("summarize.py", &[wh.to_str().unwrap()]);
    for t in run_once {
        assert_eq!(fin["tables"][t]["rows"], truth["tables"][t]["rows"], "{t}");
        assert_eq!(
            fin["tables"][t]["rows"], fin["tables"][t]["distinct_keys"],
            "{t}"
        );
    }
    assert!(
        std::fs::read_dir(wh.join("_ironlake/journal"))
            .unwrap()
            .next()
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_and_an_invalid_file_keeps_the_old_pipelines() {
    let mut o = SimOptions::new(102, 50);
    o.token = Some(FEED.into());
    let sim = start_sim(o).await;
    let p = project(Some("0 0 3 1 1 *"));
    let wh = p.path().join("wh");
    let mut d = start(p.path(), &wh, &sim.url(), 30);
    // Pulled pipelines (the bundled push pipeline is listed too, as kind "push").
    let count = |v: &serde_json::Value| {
        v["pipelines"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["kind"] == "pull")
            .count()
    };
    assert_eq!(count(&pipelines(&d.base).await), 5);
    // A broken pipeline file: the reload is refused, the five keep running.
    std::fs::write(
        p.path().join("pipelines/broken.toml"),
        "table = \"bank_loans\"\n[schedule]\ncron = \"nonsense\"\n",
    )
    .unwrap();
    signal(&d.child, libc::SIGHUP);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(count(&pipelines(&d.base).await), 5);
    // Fixed: a sixth pipeline appears.
    std::fs::remove_file(p.path().join("pipelines/broken.toml")).unwrap();
    let text = std::fs::read_to_string(p.path().join("pipelines/direct_financing.toml")).unwrap();
    std::fs::write(p.path().join("pipelines/direct_financing_copy.toml"), text).unwrap();
    signal(&d.child, libc::SIGHUP);
    let mut n = 0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        n = count(&pipelines(&d.base).await);
        if n == 6 {
            break;
        }
    }
    assert_eq!(n, 6);
    signal(&d.child, libc::SIGTERM);
    assert!(
        tokio::task::spawn_blocking(move || wait_exit(&mut d.child, Duration::from_secs(40)))
            .await
            .unwrap()
            .success()
    );
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_every_two_seconds_against_a_flaky_feed() {
    let mut o = SimOptions::new(103, 200);
    o.token = Some(FEED.into());
    o.faults = FaultMode::Flaky;
    o.fault_rate = 0.1;
    o.malformed_rate = 0.01;
    o.duplicate_rate = 0.01;
    o.slow_ms = 100;
    let sim = start_sim(o).await;
    let p = project(Some("*/2 * * * * *"));
    let wh = p.path().join("wh");
    let mut d = start(p.path(), &wh, &sim.url(), 60);
    let pid = d.child.id();
    let started = Instant::now();
    let mut samples = Vec::new();
    while started.elapsed() < Duration::from_secs(24) {
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            d.child.try_wait().unwrap().is_none(),
            "the daemon died during the soak"
        );
        samples.push(rss_kb(pid));
        let h = reqwest::get(format!("{}/healthz", d.base)).await.unwrap();
        assert_eq!(h.status(), 200);
    }
    let metrics = reqwest::get(format!("{}/metrics", d.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    signal(&d.child, libc::SIGTERM);
    let status =
        tokio::task::spawn_blocking(move || wait_exit(&mut d.child, Duration::from_secs(90)))
            .await
            .unwrap();
    assert!(status.success(), "{status:?}");
    // Many runs happened, some were skipped for overlap or retried.
    let succeeded: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("ironlake_pipeline_runs_total{") && l.contains("outcome=\"succeeded\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(
        succeeded >= 10.0,
        "only {succeeded} successful runs in the soak:\n{metrics}"
    );
    // No lost row, no duplicate.
    let truth: serde_json::Value = reqwest::get(format!("{}/truth", sim.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let fin = py_json("summarize.py", &[wh.to_str().unwrap()]);
    for t in [
        "enterprises",
        "operations",
        "bank_loans",
        "financing_demands",
        "direct_financing",
    ] {
        assert_eq!(fin["tables"][t]["rows"], truth["tables"][t]["rows"], "{t}");
        assert_eq!(
            fin["tables"][t]["rows"], fin["tables"][t]["distinct_keys"],
            "{t}"
        );
    }
    // Flat memory: the last third of the soak stays within 1.5× (+32 MB) of the first third.
    let third = samples.len() / 3;
    let early = samples[..third].iter().copied().max().unwrap();
    let late = samples[samples.len() - third..]
        .iter()
        .copied()
        .max()
        .unwrap();
    assert!(
        late <= early * 3 / 2 + 32 * 1024,
        "memory grew from {early} kB to {late} kB: {samples:?}"
    );
}
