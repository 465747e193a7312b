//! A hostile partner: huge bodies, pagination loops, invalid UTF-8, deeply
//! nested JSON. Each run fails with a clear message or quarantines, memory
//! stays bounded, and nothing is half-committed.

mod common;

use common::{ironlake, start_sim};
use ironlake::feedsim::{FaultMode, Hostile, SimOptions};
use std::time::Duration;

const TOKEN: &str = "hostile-test-token";

/// Runs a command, sampling its peak resident memory (VmHWM) until it exits.
fn run_measuring(cmd: &mut std::process::Command) -> (std::process::Output, u64) {
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let p2 = peak.clone();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let d2 = done.clone();
    let sampler = std::thread::spawn(move || {
        while !d2.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status"))
                && let Some(kb) = s
                    .lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            {
                p2.fetch_max(kb * 1024, std::sync::atomic::Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    let out = child.wait_with_output().unwrap();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    sampler.join().unwrap();
    (out, peak.load(std::sync::atomic::Ordering::Relaxed))
}

struct Outcome {
    pipeline: &'static str,
    ok: bool,
    line: String,
    peak: u64,
}

/// Runs every pipeline once against a hostile feed with only `kind` enabled.
async fn run_all(
    kind: Hostile,
    seed: u64,
    enterprises: usize,
) -> (Vec<Outcome>, tempfile::TempDir) {
    let mut o = SimOptions::new(seed, enterprises);
    o.token = Some(TOKEN.into());
    o.faults = FaultMode::Hostile;
    o.fault_rate = 0.0;
    o.malformed_rate = 0.0;
    o.duplicate_rate = 0.0;
    o.hostile_rate = 1.0;
    o.hostile_kinds = vec![kind];
    let sim = start_sim(o).await;
    let url = sim.url();
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let outcomes = tokio::task::spawn_blocking(move || {
        let mut results = Vec::new();
        for p in [
            "enterprises",
            "operations",
            "bank_loans",
            "financing_demands",
            "direct_financing",
        ] {
            let (out, peak) = run_measuring(ironlake(&wh, &url, TOKEN).args(["ingest", p]));
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let line = text
                .lines()
                .find(|l| l.starts_with(&format!("{p}: ")))
                .unwrap_or_else(|| panic!("{p}: no result line in {text}"))
                .to_string();
            results.push(Outcome {
                pipeline: p,
                ok: out.status.success(),
                line,
                peak,
            });
        }
        results
    })
    .await
    .unwrap();
    (outcomes, dir)
}

fn check_common(outcomes: &[Outcome], dir: &tempfile::TempDir) {
    let wh = dir.path().join("wh");
    for o in outcomes {
        assert!(
            o.peak > 0 && o.peak < 300 << 20,
            "{}: peak RSS {} MB",
            o.pipeline,
            o.peak >> 20
        );
        if !o.ok {
            assert!(
                o.line
                    .contains("run failed (a problem of the partner's feed), nothing committed: ")
                    && o.line.contains("GET http://127.0.0.1:"),
                "{}",
                o.line
            );
            // Nothing of a failed first run is visible, and its cursor did not move.
            assert!(
                !wh.join("tables").join(o.pipeline).exists(),
                "{}: a failed run left a table",
                o.pipeline
            );
            for m in std::fs::read_dir(wh.join("_ironlake/manifests")).unwrap() {
                let v: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(m.unwrap().path()).unwrap()).unwrap();
                assert!(
                    v["cursors"].get(o.pipeline).is_none(),
                    "{}: cursor moved",
                    o.pipeline
                );
            }
        }
    }
    assert!(
        std::fs::read_dir(wh.join("_ironlake/staging"))
            .unwrap()
            .next()
            .is_none(),
        "staging left behind"
    );
    let failed_records = std::fs::read_dir(wh.join("_ironlake/runs"))
        .unwrap()
        .filter(|e| {
            let v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(e.as_ref().unwrap().path()).unwrap())
                    .unwrap();
            v["outcome"] == "failed"
                && v["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("GET http://"))
        })
        .count();
    assert_eq!(
        failed_records,
        outcomes.iter().filter(|o| !o.ok).count(),
        "failed runs are on record with their reason"
    );
}

fn outcome<'a>(outcomes: &'a [Outcome], p: &str) -> &'a Outcome {
    outcomes.iter().find(|o| o.pipeline == p).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_body_fails_the_run_at_the_size_limit() {
    let (outcomes, dir) = run_all(Hostile::HugeBody, 41, 300).await;
    check_common(&outcomes, &dir);
    for p in [
        "enterprises",
        "operations",
        "bank_loans",
        "financing_demands",
    ] {
        let o = outcome(&outcomes, p);
        assert!(
            !o.ok && o.line.contains("exceeds max_body_bytes (67108864 bytes)"),
            "{}",
            o.line
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pagination_loop_is_detected() {
    let (outcomes, dir) = run_all(Hostile::PaginationLoop, 42, 3000).await;
    check_common(&outcomes, &dir);
    for p in ["operations", "bank_loans"] {
        let o = outcome(&outcomes, p);
        assert!(!o.ok && o.line.contains("pagination loop"), "{}", o.line);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_fails_a_json_page_and_quarantines_a_line_or_row() {
    let (outcomes, dir) = run_all(Hostile::InvalidUtf8, 43, 300).await;
    check_common(&outcomes, &dir);
    let o = outcome(&outcomes, "enterprises");
    assert!(
        !o.ok && o.line.contains("the body is not valid UTF-8"),
        "{}",
        o.line
    );
    for p in ["financing_demands", "bank_loans"] {
        let o = outcome(&outcomes, p);
        assert!(o.ok, "{}", o.line);
        assert!(
            !o.line.contains(" 0 rejected"),
            "{p}: the bad line should be quarantined: {}",
            o.line
        );
    }
    let q = common::py_json("summarize.py", &[dir.path().join("wh").to_str().unwrap()]);
    let reasons: Vec<&str> = q["quarantine"]["financing_demands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["reason"].as_str().unwrap())
        .collect();
    assert!(
        reasons.iter().all(|r| r.contains("not valid UTF-8")),
        "{reasons:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_nesting_is_quarantined_without_overflowing_the_stack() {
    let (outcomes, dir) = run_all(Hostile::DeepNesting, 44, 300).await;
    check_common(&outcomes, &dir);
    for p in ["enterprises", "financing_demands"] {
        let o = outcome(&outcomes, p);
        assert!(o.ok, "{}", o.line);
        assert!(!o.line.contains(" 0 rejected"), "{p}: {}", o.line);
    }
    let q = common::py_json("summarize.py", &[dir.path().join("wh").to_str().unwrap()]);
    let r = &q["quarantine"]["enterprises"][0];
    assert_eq!(r["field"], "uscc");
    assert!(r["reason"].as_str().unwrap().contains("nested JSON"), "{r}");
    assert!(
        r["raw"].as_str().unwrap().contains("truncated"),
        "a 200 KB record is kept truncated"
    );
}
