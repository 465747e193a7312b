//! Ingestion end to end: the real binary against the real simulator on
//! 127.0.0.1, read back by DuckDB and pyarrow.

mod common;

use common::{ironlake, py_json, run_ok, start_sim};
use ironlake::feedsim::{FaultMode, SimOptions};
use std::collections::BTreeMap;
use std::path::Path;

const TOKEN: &str = "ingest-test-token";
const TABLES: [&str; 5] = [
    "enterprises",
    "operations",
    "bank_loans",
    "financing_demands",
    "direct_financing",
];

fn sim_opts(seed: u64, enterprises: usize) -> SimOptions {
    let mut o = SimOptions::new(seed, enterprises);
    o.token = Some(TOKEN.into());
    o
}

async fn truth(base: &str) -> serde_json::Value {
    reqwest::get(format!("{base}/truth"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Asserts the warehouse holds exactly what `/truth` says, read by DuckDB.
fn assert_matches_truth(summary: &serde_json::Value, truth: &serde_json::Value) {
    for table in TABLES {
        let s = &summary["tables"][table];
        let t = &truth["tables"][table];
        assert_eq!(s["rows"], t["rows"], "{table}: rows");
        assert_eq!(s["rows"], s["distinct_keys"], "{table}: duplicate keys");
        let sq = s["quarters"].as_object().unwrap();
        let tq = t["quarters"].as_object().unwrap();
        assert_eq!(sq.len(), tq.len(), "{table}: quarters");
        for (q, v) in tq {
            assert_eq!(sq[q]["rows"], v["rows"], "{table} {q}: rows");
            assert_eq!(sq[q]["sum"], v["sum"], "{table} {q}: exact sum");
        }
    }
}

fn ingest_all(wh: &Path, url: &str) -> String {
    run_ok(ironlake(wh, url, TOKEN).args(["ingest", "--all"]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_crawl_matches_truth_and_files_are_right_for_duckdb() {
    let sim = start_sim(sim_opts(21, 300)).await;
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let out = ingest_all(&wh, &sim.url());
    assert_eq!(out.matches("committed run").count(), 5, "{out}");
    let summary = py_json("summarize.py", &[wh.to_str().unwrap()]);
    assert_matches_truth(&summary, &truth(&sim.url()).await);
    // `ironlake status` reports each table's freshness and the runs.
    let status = run_ok(ironlake(&wh, &sim.url(), TOKEN).arg("status"));
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("bank_loans") && l.contains("2019Q4")),
        "{status}"
    );
    assert_eq!(
        status.matches(" ingest    succeeded").count(),
        5,
        "{status}"
    );
    // Types as declared: exact decimals, dates, plain strings.
    let types = &summary["tables"]["bank_loans"]["types"];
    assert_eq!(types["balance"], "DECIMAL(18,2)");
    assert_eq!(types["rate_pct"], "DECIMAL(9,4)");
    assert_eq!(types["period_end"], "DATE");
    assert_eq!(types["uscc"], "VARCHAR");
    assert_eq!(
        summary["tables"]["enterprises"]["types"]["above_scale"],
        "BOOLEAN"
    );
    assert_eq!(
        summary["tables"]["operations"]["types"]["employees"],
        "INTEGER"
    );
    assert!(summary["quarantine"].as_object().unwrap().is_empty());
    // LZ4 (the raw block format, which pyarrow calls LZ4) for text, none
    // for numbers, page statistics and page index, plain Utf8 strings.
    let meta = py_json(
        "file_meta.py",
        &[wh.join("tables/bank_loans").to_str().unwrap()],
    );
    assert_eq!(meta["compression"], "LZ4");
    assert_eq!(meta["balance_compression"], "UNCOMPRESSED");
    assert_eq!(meta["has_page_index"], true);
    assert_eq!(meta["uscc_type"], "string");
    assert_eq!(meta["has_min_max"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_the_same_ingest_twice_changes_no_file() {
    let sim = start_sim(sim_opts(22, 200)).await;
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    ingest_all(&wh, &sim.url());
    let before = file_digests(&wh);
    let manifest_before = latest_manifest(&wh);
    let out = ingest_all(&wh, &sim.url());
    assert_eq!(
        out.matches("0 rows new or changed in 0 partitions").count(),
        5,
        "{out}"
    );
    assert_eq!(
        file_digests(&wh),
        before,
        "a file changed on the second run"
    );
    assert_eq!(
        latest_manifest(&wh),
        manifest_before,
        "the second run committed a new version"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restated_demand_replaces_its_old_row() {
    // The same city seen at the end of 2018 and again at the end of 2019:
    // demands in flight at the first pull have moved on by the second.
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let mut early = sim_opts(23, 400);
    early.to = "2018Q4".parse().unwrap();
    let sim = start_sim(early).await;
    run_ok(ironlake(&wh, &sim.url(), TOKEN).args(["ingest", "financing_demands"]));
    let first = py_json("summarize.py", &[wh.to_str().unwrap()]);
    let first_statuses = py_json("statuses.py", &[wh.to_str().unwrap()]);
    drop(sim);
    let sim = start_sim(sim_opts(23, 400)).await;
    run_ok(ironlake(&wh, &sim.url(), TOKEN).args(["ingest", "financing_demands"]));
    let second = py_json("summarize.py", &[wh.to_str().unwrap()]);
    let t = truth(&sim.url()).await;
    let s = &second["tables"]["financing_demands"];
    assert_eq!(s["rows"], t["tables"]["financing_demands"]["rows"]);
    assert_eq!(s["rows"], s["distinct_keys"]);
    // 2018Q4 submissions existed before; some changed status since.
    assert_eq!(
        first["tables"]["financing_demands"]["quarters"]["2018Q4"]["rows"],
        s["quarters"]["2018Q4"]["rows"],
        "no demand was added to or lost from 2018Q4"
    );
    let statuses = py_json("statuses.py", &[wh.to_str().unwrap()]);
    let open = |v: &serde_json::Value| -> u64 {
        [
            "submitted",
            "screened",
            "recommended",
            "accepted",
            "credit_granted",
        ]
        .iter()
        .map(|s| v["2018Q4"][s].as_u64().unwrap_or(0))
        .sum()
    };
    assert!(open(&first_statuses) > 0, "{first_statuses}");
    assert!(
        open(&statuses) < open(&first_statuses),
        "open 2018Q4 demands should have moved on: before {first_statuses}, after {statuses}"
    );
    assert_ne!(
        first["tables"]["financing_demands"]["digest"], s["digest"],
        "restatements replaced rows"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flaky_feed_lands_every_valid_record_once_and_quarantines_the_rest() {
    let mut o = sim_opts(24, 300);
    o.faults = FaultMode::Flaky;
    o.fault_rate = 0.1;
    o.malformed_rate = 0.02;
    o.duplicate_rate = 0.02;
    o.slow_ms = 100;
    let sim = start_sim(o).await;
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let out = ingest_all(&wh, &sim.url());
    assert_eq!(out.matches("committed run").count(), 5, "{out}");
    let retries: u64 = out
        .lines()
        .filter_map(|l| l.split(", ").find_map(|p| p.strip_suffix(" retries)")))
        .map(|n| n.parse::<u64>().unwrap())
        .sum();
    assert!(retries > 0, "the flaky feed caused no retry: {out}");
    let summary = py_json("summarize.py", &[wh.to_str().unwrap()]);
    let t = truth(&sim.url()).await;
    assert_matches_truth(&summary, &t);
    let malformed: serde_json::Value = reqwest::get(format!("{}/truth/malformed", sim.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut expected: BTreeMap<(String, String), u64> = BTreeMap::new();
    for m in malformed["records"].as_array().unwrap() {
        *expected
            .entry((
                m["table"].as_str().unwrap().into(),
                m["field"].as_str().unwrap().into(),
            ))
            .or_default() += 1;
    }
    let mut got: BTreeMap<(String, String), u64> = BTreeMap::new();
    for (table, rows) in summary["quarantine"].as_object().unwrap() {
        for r in rows.as_array().unwrap() {
            let field = r["field"].as_str().unwrap_or("<none>").to_string();
            let reason = r["reason"].as_str().unwrap();
            let ok = match field.as_str() {
                "uscc" => {
                    reason.contains("check character")
                        || reason.contains("required field is missing")
                }
                "district_code" => reason.contains("not one of Chongqing's 38"),
                "as_of" | "period_end" | "submitted_on" | "issued_on" => {
                    reason.contains("never read as a date")
                        || reason.contains("expected a date YYYY-MM-DD")
                }
                "revenue" | "balance" | "amount" => {
                    reason.contains("decimal places, more than")
                        || reason.contains("required field is missing")
                        || reason.contains("got the boolean true")
                }
                "name" => reason.contains("required field is missing"),
                "above_scale" => reason.contains("expected true or false"),
                "employees" | "term_months" => reason.contains("expected a whole number"),
                "rate_pct" => reason.contains("is not a decimal number"),
                "size_class" | "guarantee" | "status" | "instrument" => {
                    reason.contains("is not one of the allowed values")
                }
                _ => false,
            };
            assert!(
                ok,
                "{table}.{field}: unexpected reason {reason:?} for {}",
                r["raw"]
            );
            assert!(!r["raw"].as_str().unwrap().is_empty());
            *got.entry((table.clone(), field)).or_default() += 1;
        }
    }
    assert_eq!(
        got, expected,
        "quarantine by table and field vs injected malformed records"
    );
    assert!(
        expected.values().sum::<u64>() >= 20,
        "too few malformed records to mean anything: {expected:?}"
    );
}

/// One window at a time (`source.windows_at_once = 1`, which bounds a
/// backfill's memory more tightly) lands exactly the files the default two
/// windows land: windows are kept apart and committed in order either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_window_at_a_time_lands_the_same_files_as_two() {
    let sim = start_sim(sim_opts(23, 300)).await;
    let one = common::project_copy(|path, text| {
        if path == "pipelines/bank_loans.toml" {
            text.replace(
                "timeout_secs = 120",
                "timeout_secs = 120\nwindows_at_once = 1",
            )
        } else {
            text
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let mut landed = Vec::new();
    for (i, cfg) in [common::repo(), one.path().to_path_buf()]
        .iter()
        .enumerate()
    {
        let wh = dir.path().join(format!("wh{i}"));
        run_ok(common::ironlake_with(cfg, &wh, &sim.url(), TOKEN).args([
            "backfill",
            "bank_loans",
            "--from",
            "2017Q1",
            "--to",
            "2019Q4",
        ]));
        // Each quarter's file contents (names hold the run id).
        let mut by_quarter: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
        for (path, bytes) in file_digests(&wh) {
            // Rejected records name their run; accepted rows do not.
            if !path.starts_with("tables/") {
                continue;
            }
            let quarter = path.split('/').nth(2).unwrap().to_string();
            by_quarter.entry(quarter).or_default().push(bytes);
        }
        by_quarter.values_mut().for_each(|files| files.sort());
        landed.push(by_quarter);
    }
    assert!(landed[0].len() >= 12, "{:?}", landed[0].keys());
    assert!(
        landed[0] == landed[1],
        "the files differ between one and two windows at once"
    );
}

fn file_digests(wh: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for sub in ["tables", "quarantine"] {
        let d = wh.join(sub);
        for t in std::fs::read_dir(&d).unwrap() {
            let t = t.unwrap().path();
            for part in std::fs::read_dir(&t).unwrap() {
                let part = part.unwrap().path();
                for f in std::fs::read_dir(&part).unwrap() {
                    let f = f.unwrap().path();
                    out.insert(
                        f.strip_prefix(wh).unwrap().display().to_string(),
                        std::fs::read(&f).unwrap(),
                    );
                }
            }
        }
    }
    out
}

fn latest_manifest(wh: &Path) -> String {
    let mut names: Vec<String> = std::fs::read_dir(wh.join("_ironlake/manifests"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("m-"))
        .collect();
    names.sort();
    names.pop().unwrap()
}

/// The run id after `marker` in a command's output (`committed run X — …`).
fn run_id_after<'a>(out: &'a str, marker: &str) -> &'a str {
    let at = out
        .find(marker)
        .unwrap_or_else(|| panic!("no {marker:?} in {out}"));
    out[at + marker.len()..].split_whitespace().next().unwrap()
}

/// A run record as stored.
fn run_record(wh: &Path, run_id: &str) -> serde_json::Value {
    let path = wh.join(format!("_ironlake/runs/{run_id}.json"));
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_answering_304_to_every_page_is_not_fetched_or_decoded_again() {
    let sim = start_sim(sim_opts(26, 150)).await;
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let backfill = |url: &str| {
        run_ok(ironlake(&wh, url, TOKEN).args([
            "backfill",
            "bank_loans",
            "--from",
            "2017Q1",
            "--to",
            "2019Q4",
        ]))
    };
    let first = backfill(&sim.url());
    let first_run = run_id_after(&first, "bank_loans: committed run ").to_string();
    let pages = run_record(&wh, &first_run)["pages"].as_u64().unwrap();
    assert!(pages >= 12, "{pages} pages for 12 quarters");
    let (files, manifest) = (file_digests(&wh), latest_manifest(&wh));

    // The same feed again: every page answers 304 to its ETag.
    let again = backfill(&sim.url());
    let again_run = run_id_after(&again, "bank_loans: unchanged run ");
    assert!(
        again.contains(&format!("ETags of run {first_run}")),
        "{again}"
    );
    assert!(again.contains("0 rows new or changed"), "{again}");
    let record = run_record(&wh, again_run);
    assert_eq!(record["outcome"], "succeeded");
    assert_eq!(record["unchanged_since"], first_run.as_str());
    assert_eq!(
        record["requests"].as_u64(),
        Some(pages),
        "one request per page"
    );
    assert_eq!(record["bytes"], 0, "no page body was sent");
    assert_eq!(record["rows_in"], 0, "nothing was decoded");
    assert_eq!(file_digests(&wh), files, "a file changed");
    assert_eq!(latest_manifest(&wh), manifest, "a version was committed");

    // Another delivery into the table (one loan restated by an import): the
    // table is no longer as the feed's delivery left it, so the feed is
    // fetched and decoded in full, and its row wins again.
    let csv = run_ok(ironlake(&wh, &sim.url(), TOKEN).args([
        "sql",
        "SELECT bank_code, loan_id, period_end, uscc, balance, disbursed + 1 AS disbursed, \
         rate_pct, term, guarantee, product, guarantee_fee_pct FROM bank_loans \
         WHERE quarter = '2018Q2' AND disbursed > 0 ORDER BY loan_id LIMIT 1",
        "--format",
        "csv",
    ]));
    let file = dir.path().join("restated.csv");
    std::fs::write(&file, csv).unwrap();
    let imported = run_ok(
        ironlake(&wh, &sim.url(), TOKEN)
            .args(["import", "bank_loans"])
            .arg(&file)
            .args(["--format", "csv"]),
    );
    assert!(
        imported.contains("1 rows new or changed in 1 partitions"),
        "{imported}"
    );
    let restored = backfill(&sim.url());
    assert!(
        restored.contains("bank_loans: committed run ")
            && restored.contains("1 rows new or changed in 1 partitions"),
        "{restored}"
    );
    assert_eq!(file_digests(&wh).len(), files.len());
    // That run recorded its ETags: the next one is unchanged again.
    assert!(
        backfill(&sim.url()).contains("bank_loans: unchanged run "),
        "after the restoring run"
    );

    // A feed with other content (another seed) has other ETags.
    let other = start_sim(sim_opts(27, 150)).await;
    let changed = backfill(&other.url());
    assert!(changed.contains("bank_loans: committed run "), "{changed}");
    assert!(!changed.contains(" 0 records in"), "{changed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn importing_the_file_the_table_last_took_decodes_nothing() {
    let sim = start_sim(sim_opts(28, 120)).await;
    let dir = tempfile::tempdir().unwrap();
    let (source, wh) = (dir.path().join("source"), dir.path().join("wh"));
    run_ok(ironlake(&source, &sim.url(), TOKEN).args(["ingest", "bank_loans"]));
    let csv = run_ok(ironlake(&source, &sim.url(), TOKEN).args([
        "sql",
        "SELECT bank_code, loan_id, period_end, uscc, balance, disbursed, rate_pct, term, \
         guarantee, product, guarantee_fee_pct FROM bank_loans ORDER BY loan_id, period_end",
        "--format",
        "csv",
    ]));
    assert!(csv.lines().count() > 1000, "{} rows", csv.lines().count());
    let file = dir.path().join("loans.csv");
    std::fs::write(&file, &csv).unwrap();
    let import = |path: &Path| {
        run_ok(
            ironlake(&wh, &sim.url(), TOKEN)
                .args(["import", "bank_loans"])
                .arg(path)
                .args(["--format", "csv"]),
        )
    };
    let first = import(&file);
    let first_run = run_id_after(&first, "bank_loans: committed run ").to_string();
    let (files, manifest) = (file_digests(&wh), latest_manifest(&wh));

    // The same bytes under another name: recognised, nothing decoded.
    let copy = dir.path().join("loans-again.csv");
    std::fs::copy(&file, &copy).unwrap();
    let again = import(&copy);
    let record = run_record(&wh, run_id_after(&again, "bank_loans: unchanged run "));
    assert_eq!(record["unchanged_since"], first_run.as_str(), "{again}");
    assert_eq!(record["rows_in"], 0);
    assert_eq!(file_digests(&wh), files);
    assert_eq!(latest_manifest(&wh), manifest);

    // The same size, one digit changed: hashed, found different, imported.
    let mut restated = csv.clone().into_bytes();
    let second_line = csv.find('\n').unwrap() + 1;
    let balance = second_line
        + csv[second_line..]
            .match_indices(',')
            .nth(3)
            .map(|(i, _)| i + 1)
            .unwrap();
    restated[balance] = if restated[balance] == b'1' {
        b'2'
    } else {
        b'1'
    };
    std::fs::write(&copy, &restated).unwrap();
    let changed = import(&copy);
    assert!(
        changed.contains("bank_loans: committed run ")
            && changed.contains("1 rows new or changed in 1 partitions"),
        "{changed}"
    );
    // The first file again: the table changed since it was imported, so it
    // is imported in full (and restores the row); then it is recognised.
    let restored = import(&file);
    assert!(
        restored.contains("committed run ") && restored.contains("1 rows new or changed"),
        "{restored}"
    );
    assert_eq!(file_digests(&wh).len(), files.len());
    assert!(import(&file).contains("bank_loans: unchanged run "));
}
