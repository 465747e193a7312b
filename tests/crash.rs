//! Crash safety: `kill -9` an ingest at random moments (and at each commit
//! step), restart, finish — the warehouse must equal an uninterrupted run,
//! no orphan file may remain, and a pyarrow reader polling throughout must
//! never see a duplicate row or a half-written file.

mod common;

use common::{ironlake, py_json, python, repo, run_ok, start_sim};
use ironlake::feedsim::SimOptions;
use ironlake::feedsim::rng::Rng;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

const TOKEN: &str = "crash-test-token";

fn sim_opts(seed: u64, enterprises: usize) -> SimOptions {
    let mut o = SimOptions::new(seed, enterprises);
    o.token = Some(TOKEN.into());
    o
}

fn walk(d: &Path, out: &mut Vec<std::path::PathBuf>) {
    if let Ok(rd) = std::fs::read_dir(d) {
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() && !p.is_symlink() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
}

/// Every file under `_ironlake/gen` is referenced by a retained manifest or
/// lies in a generation a commit superseded (kept for the retention time,
/// marked `.superseded`); no journal, staging or temp file is left, nor
/// delivery pages the current manifest does not name.
fn assert_no_orphans(wh: &Path) {
    let mut referenced = BTreeSet::new();
    for m in std::fs::read_dir(wh.join("_ironlake/manifests")).unwrap() {
        let m = m.unwrap().path();
        let name = m.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("m-"), "stray file in manifests: {name}");
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&m).unwrap()).unwrap();
        for (_, d) in v["dirs"].as_object().unwrap() {
            let generation = d["generation"].as_str().unwrap();
            for (part, p) in d["partitions"].as_object().unwrap() {
                for f in p["files"].as_array().unwrap() {
                    referenced.insert(
                        wh.join(generation)
                            .join(format!("quarter={part}"))
                            .join(f["name"].as_str().unwrap()),
                    );
                }
            }
        }
    }
    let mut files = Vec::new();
    walk(&wh.join("_ironlake/gen"), &mut files);
    let superseded: BTreeSet<_> = files
        .iter()
        .filter(|f| f.file_name().is_some_and(|n| n == ".superseded"))
        .filter_map(|f| f.parent().map(Path::to_path_buf))
        .collect();
    files.retain(|f| !superseded.iter().any(|g| f.starts_with(g)));
    for f in &files {
        assert!(referenced.contains(f), "orphan file {}", f.display());
    }
    assert!(!files.is_empty());
    for sub in ["_ironlake/journal", "_ironlake/staging"] {
        let left: Vec<_> = std::fs::read_dir(wh.join(sub)).unwrap().collect();
        assert!(left.is_empty(), "{sub} is not empty: {left:?}");
    }
    // A delivery's pages are kept only while the current manifest names them.
    let latest = std::fs::read_dir(wh.join("_ironlake/manifests"))
        .unwrap()
        .map(|m| m.unwrap().path())
        .max()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(latest).unwrap()).unwrap();
    let named: BTreeSet<&str> = v["deliveries"]
        .as_object()
        .map(|d| d.values().filter_map(|d| d["pages"].as_str()).collect())
        .unwrap_or_default();
    for e in std::fs::read_dir(wh.join("_ironlake/deliveries")).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(named.contains(name.as_str()), "delivery pages left: {name}");
    }
    let mut all = Vec::new();
    walk(wh, &mut all);
    for f in all {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            !name.starts_with(".tmp-"),
            "temp file left: {}",
            f.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_loses_and_duplicates_nothing() {
    let sim = start_sim(sim_opts(31, 400)).await;
    let url = sim.url();
    let dir = tempfile::tempdir().unwrap();
    let reference = dir.path().join("reference");
    let victims = dir.path().join("victims");
    let stop = dir.path().join("stop");
    let result = tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        run_ok(ironlake(&reference, &url, TOKEN).args(["ingest", "--all"]));
        let full_ms = started.elapsed().as_millis() as i64;
        let expected = py_json("summarize.py", &[reference.to_str().unwrap()]);

        std::fs::create_dir_all(&victims).unwrap();
        let poller = std::process::Command::new(python())
            .arg(repo().join("tests/py/poll.py"))
            .arg(&victims)
            .arg(&stop)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut rng = Rng::new(2026, "crash-test", &[]);
        let failpoints = [
            "commit.after_journal",
            "commit.after_link",
            "commit.after_manifest",
        ];
        let (mut killed, mut failpoint_crashes, mut jobs) = (0, 0, Vec::new());
        let mut job = 0;
        let mut wh = victims.join("job-0");
        // Restart the same job until it completes on its own; then start the next
        // job on a fresh warehouse, until at least 30 runs were killed mid-flight.
        for i in 0..200 {
            if killed >= 32 && failpoint_crashes >= 3 {
                break;
            }
            let mut cmd = ironlake(&wh, &url, TOKEN);
            cmd.args(["ingest", "--all"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            let finished = if i % 5 == 4 {
                // A crash at an exact step of the commit protocol.
                cmd.env("IRONLAKE_FAILPOINT", failpoints[(i / 5) % 3]);
                let status = cmd.status().unwrap();
                if !status.success() {
                    failpoint_crashes += 1;
                }
                status.success()
            } else {
                let mut child = cmd.spawn().unwrap();
                std::thread::sleep(Duration::from_millis(
                    rng.range(20, (full_ms * 7 / 10).max(40)) as u64,
                ));
                if child.try_wait().unwrap().is_none() {
                    child.kill().unwrap(); // SIGKILL
                    killed += 1;
                    child.wait().unwrap();
                    false
                } else {
                    child.wait().unwrap().success()
                }
            };
            if finished {
                jobs.push(wh.clone());
                job += 1;
                wh = victims.join(format!("job-{job}"));
            }
        }
        // Finish the job in progress.
        run_ok(ironlake(&wh, &url, TOKEN).args(["ingest", "--all"]));
        jobs.push(wh);
        std::fs::write(&stop, b"").unwrap();
        let out = poller.wait_with_output().unwrap();
        let polled: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let got: Vec<serde_json::Value> = jobs
            .iter()
            .map(|w| py_json("summarize.py", &[w.to_str().unwrap()]))
            .collect();
        (expected, got, polled, killed, failpoint_crashes, jobs)
    })
    .await
    .unwrap();
    let (expected, got, polled, killed, failpoint_crashes, jobs) = result;
    eprintln!(
        "crash test: {killed} runs killed, {failpoint_crashes} failpoint crashes, {} jobs, reader: {polled}",
        jobs.len()
    );
    assert!(killed >= 30, "only {killed} runs were killed mid-flight");
    assert!(
        failpoint_crashes >= 3,
        "only {failpoint_crashes} failpoint crashes"
    );
    assert_eq!(
        polled["violations"].as_array().unwrap().len(),
        0,
        "the reader saw duplicates or broken files: {polled}"
    );
    assert!(
        polled["reads"].as_u64().unwrap() > 50,
        "the reader hardly read: {polled}"
    );
    for (wh, got) in jobs.iter().zip(&got) {
        for table in [
            "enterprises",
            "operations",
            "bank_loans",
            "financing_demands",
            "direct_financing",
        ] {
            assert_eq!(
                got["tables"][table]["digest"],
                expected["tables"][table]["digest"],
                "{}: {table} differs from an uninterrupted run",
                wh.display()
            );
        }
        assert_no_orphans(wh);
    }
    // Runs killed mid-flight are on record as aborted.
    let aborted: usize = jobs
        .iter()
        .map(|wh| {
            std::fs::read_dir(wh.join("_ironlake/runs"))
                .unwrap()
                .filter(|e| {
                    let v: serde_json::Value =
                        serde_json::from_slice(&std::fs::read(e.as_ref().unwrap().path()).unwrap())
                            .unwrap();
                    v["outcome"] == "aborted"
                })
                .count()
        })
        .sum();
    assert!(aborted > 0, "no run is recorded as aborted");
}
