//! Warehouse SQL: read-only refusals, formats, partition pruning, snapshot
//! consistency, the catalog's extra tables, and the memory limit.

mod common;

use common::{ironlake, run_ok, start_sim};
use ironlake::catalog::Catalog;
use ironlake::feedsim::SimOptions;
use std::path::Path;
use std::sync::Arc;

const TOKEN: &str = "sql-test-token";

async fn warehouse(seed: u64, enterprises: usize) -> (tempfile::TempDir, common::SimServer) {
    let mut o = SimOptions::new(seed, enterprises);
    o.token = Some(TOKEN.into());
    let sim = start_sim(o).await;
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let url = sim.url();
    let wh2 = wh.clone();
    tokio::task::spawn_blocking(move || {
        run_ok(ironlake(&wh2, &url, TOKEN).args(["ingest", "--all"]))
    })
    .await
    .unwrap();
    (dir, sim)
}

fn sql(wh: &Path, args: &[&str]) -> std::process::Output {
    ironlake(wh, "http://127.0.0.1:9", TOKEN)
        .arg("sql")
        .args(args)
        .output()
        .unwrap()
}

fn project(wh: &Path, memory_limit_mb: Option<u64>) -> Arc<ironlake::config::Project> {
    let mut p = ironlake::config::load(&ironlake::config::LoadOptions {
        config: Some(common::repo().join("ironlake.toml")),
        warehouse: Some(wh.to_path_buf()),
    })
    .project
    .expect("bundled config loads");
    if let Some(m) = memory_limit_mb {
        p.settings.sql.memory_limit_mb = m;
    }
    Arc::new(p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_and_paths_are_refused_with_a_clear_message() {
    let (dir, _sim) = warehouse(51, 100).await;
    let wh = dir.path().join("wh");
    let cases = [
        (
            "CREATE TABLE x AS SELECT 1",
            "read-only: CREATE TABLE is not allowed",
        ),
        (
            "CREATE VIEW v AS SELECT 1",
            "read-only: CREATE VIEW is not allowed",
        ),
        ("DROP TABLE bank_loans", "read-only: DROP is not allowed"),
        (
            "INSERT INTO bank_loans SELECT * FROM bank_loans",
            "read-only: INSERT is not allowed",
        ),
        ("DELETE FROM bank_loans", "read-only: DELETE is not allowed"),
        (
            "COPY bank_loans TO '/tmp/ironlake-copy.parquet'",
            "read-only: COPY is not allowed",
        ),
        (
            "COPY (SELECT 1) TO '/tmp/ironlake-copy.csv'",
            "read-only: COPY is not allowed",
        ),
        (
            "SET datafusion.execution.batch_size = 1",
            "read-only: SET is not allowed",
        ),
        (
            "CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '/etc'",
            "read-only: CREATE EXTERNAL TABLE is not allowed",
        ),
        (
            "SELECT * FROM 'https://example.com/x.parquet'",
            "is a path or URL, not a table",
        ),
        (
            "SELECT * FROM 'file:///etc/passwd'",
            "is a path or URL, not a table",
        ),
        (
            "SELECT * FROM '/etc/passwd'",
            "is a path or URL, not a table",
        ),
        (
            "SELECT * FROM '../../outside/x.parquet'",
            "is a path or URL, not a table",
        ),
        ("SELECT 1; SELECT 2", "one statement at a time"),
    ];
    for (q, msg) in cases {
        let out = sql(&wh, &[q]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{q}: {stderr}");
        assert!(stderr.contains(msg), "{q}: {stderr}");
    }
    assert!(!Path::new("/tmp/ironlake-copy.parquet").exists());
    // The warehouse is untouched and still answers.
    let out = sql(
        &wh,
        &["SELECT count(*) AS n FROM bank_loans", "--format", "csv"],
    );
    assert!(out.status.success());
    let n: u64 = String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(n > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_come_as_table_csv_json_and_parquet() {
    let (dir, _sim) = warehouse(52, 100).await;
    let wh = dir.path().join("wh");
    let q = "SELECT quarter, count(*) AS loans, sum(balance) AS balance FROM bank_loans WHERE quarter IN ('2019Q3', '2019Q4') GROUP BY quarter ORDER BY quarter";
    let table = String::from_utf8(sql(&wh, &[q]).stdout).unwrap();
    assert!(table.contains("| quarter | loans | balance"), "{table}");
    assert!(table.contains("(2 rows)"), "{table}");
    let csv = String::from_utf8(sql(&wh, &[q, "--format", "csv"]).stdout).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "quarter,loans,balance");
    assert!(lines[1].starts_with("2019Q3,"), "{csv}");
    // Exact decimal: two places, no float noise.
    let bal = lines[1].rsplit(',').next().unwrap();
    assert_eq!(bal.split('.').nth(1).map(str::len), Some(2), "{bal}");
    let json: serde_json::Value =
        serde_json::from_slice(&sql(&wh, &[q, "--format", "json"]).stdout).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 2);
    assert_eq!(json[1]["quarter"], "2019Q4");
    let out = dir.path().join("r.parquet");
    let o = sql(
        &wh,
        &[q, "--format", "parquet", "--output", out.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let f = std::fs::File::open(&out).unwrap();
    let rows: usize = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .unwrap()
        .build()
        .unwrap()
        .map(|b| b.unwrap().num_rows())
        .sum();
    assert_eq!(rows, 2);
    let o = sql(&wh, &[q, "--format", "parquet"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("add --output FILE"));
}

fn files_scanned(plan: &Arc<dyn datafusion::physical_plan::ExecutionPlan>) -> usize {
    use datafusion::datasource::physical_plan::FileScanConfig;
    use datafusion::datasource::source::DataSourceExec;
    let here = plan
        .downcast_ref::<DataSourceExec>()
        .and_then(|e| e.data_source().downcast_ref::<FileScanConfig>())
        .map_or(0, |c| c.file_groups.iter().map(|g| g.len()).sum());
    here + plan
        .children()
        .into_iter()
        .map(files_scanned)
        .sum::<usize>()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quarter_filter_reads_only_that_partition() {
    let (dir, _sim) = warehouse(53, 100).await;
    let wh_dir = dir.path().join("wh");
    let wh = ironlake::warehouse::Warehouse::open(&wh_dir).unwrap();
    let catalog = Catalog::new(project(&wh_dir, None), wh).unwrap();
    let snap = catalog.snapshot().await.unwrap();
    let all = ironlake::query::sql(&snap, "SELECT sum(balance) FROM bank_loans")
        .await
        .unwrap();
    assert_eq!(
        files_scanned(&all.create_physical_plan().await.unwrap()),
        12
    );
    let one = ironlake::query::sql(
        &snap,
        "SELECT sum(balance) FROM bank_loans WHERE quarter = '2019Q3'",
    )
    .await
    .unwrap();
    let plan = one.create_physical_plan().await.unwrap();
    assert_eq!(files_scanned(&plan), 1);
    let shown = datafusion::physical_plan::displayable(plan.as_ref())
        .indent(false)
        .to_string();
    assert!(shown.contains("quarter=2019Q3"), "{shown}");
    // The schema is the declared one, with a Utf8 partition column.
    let df = ironlake::query::sql(&snap, "SELECT * FROM bank_loans LIMIT 1")
        .await
        .unwrap();
    let schema = df.schema().as_arrow().clone();
    assert_eq!(
        schema.field_with_name("quarter").unwrap().data_type(),
        &arrow::datatypes::DataType::Utf8
    );
    assert_eq!(
        schema.field_with_name("uscc").unwrap().data_type(),
        &arrow::datatypes::DataType::Utf8
    );
    assert_eq!(
        schema.field_with_name("balance").unwrap().data_type(),
        &arrow::datatypes::DataType::Decimal128(18, 2)
    );
}

async fn count(snap: &ironlake::catalog::Snapshot) -> (i64, i64) {
    let q = "SELECT count(*) AS n, count(DISTINCT quarter) AS q FROM bank_loans";
    let b = ironlake::query::sql(snap, q)
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let n = b[0]
        .column(0)
        .as_any()
        .downcast_ref::<arrow::array::Int64Array>()
        .unwrap()
        .value(0);
    let q = b[0]
        .column(1)
        .as_any()
        .downcast_ref::<arrow::array::Int64Array>()
        .unwrap()
        .value(0);
    (n, q)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_is_consistent_and_the_next_one_sees_the_commit() {
    let mut o = SimOptions::new(54, 150);
    o.token = Some(TOKEN.into());
    o.to = "2018Q4".parse().unwrap();
    let early = start_sim(o).await;
    let dir = tempfile::tempdir().unwrap();
    let wh_dir = dir.path().join("wh");
    let (url, w) = (early.url(), wh_dir.clone());
    tokio::task::spawn_blocking(move || {
        run_ok(ironlake(&w, &url, TOKEN).args(["ingest", "bank_loans"]))
    })
    .await
    .unwrap();
    let wh = ironlake::warehouse::Warehouse::open(&wh_dir).unwrap();
    let catalog = Catalog::new(project(&wh_dir, None), wh).unwrap();
    let before = catalog.snapshot().await.unwrap();
    let (n_before, q_before) = count(&before).await;
    assert_eq!(q_before, 8);
    // A commit lands while `before` is still in use.
    let mut o = SimOptions::new(54, 150);
    o.token = Some(TOKEN.into());
    let late = start_sim(o).await;
    let (url, w) = (late.url(), wh_dir.clone());
    tokio::task::spawn_blocking(move || {
        run_ok(ironlake(&w, &url, TOKEN).args([
            "backfill",
            "bank_loans",
            "--from",
            "2017Q1",
            "--to",
            "2019Q4",
        ]))
    })
    .await
    .unwrap();
    assert_eq!(
        count(&before).await,
        (n_before, 8),
        "the old snapshot must not see the new commit"
    );
    let after = catalog.snapshot().await.unwrap();
    let (n_after, q_after) = count(&after).await;
    assert_eq!(q_after, 12, "the next snapshot sees the new quarters");
    assert!(n_after > n_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantine_system_and_reference_tables_are_queryable() {
    let (dir, _sim) = warehouse(55, 80).await;
    let wh = dir.path().join("wh");
    let out = sql(
        &wh,
        &["SELECT count(*) AS n FROM ref_districts", "--format", "csv"],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().nth(1),
        Some("38")
    );
    let out = sql(
        &wh,
        &[
            "SELECT count(*) AS n FROM ref_industries WHERE manufacturing",
            "--format",
            "csv",
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().nth(1),
        Some("31")
    );
    let out = sql(
        &wh,
        &[
            "SELECT pipeline, outcome FROM system.runs ORDER BY pipeline",
            "--format",
            "csv",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 6, "{text}");
    assert!(text.contains("bank_loans,succeeded"), "{text}");
    let out = sql(
        &wh,
        &[
            "SELECT count(*) FROM quarantine.bank_loans",
            "--format",
            "csv",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = sql(
        &wh,
        &[
            "SELECT directory, count(*) AS partitions FROM system.partitions GROUP BY 1 ORDER BY 1",
            "--format",
            "csv",
        ],
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("tables/bank_loans,12"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_past_the_memory_limit_spills_or_fails_cleanly_and_the_engine_survives() {
    let dir = tempfile::tempdir().unwrap();
    let wh_dir = dir.path().join("wh");
    let wh = ironlake::warehouse::Warehouse::open(&wh_dir).unwrap();
    let catalog = Catalog::new(project(&wh_dir, Some(64)), wh).unwrap();
    let snap = catalog.snapshot().await.unwrap();
    // Sorting 12 million rows needs far more than 64 MiB in memory.
    let q = "SELECT sum(rn) AS s FROM (SELECT row_number() OVER (ORDER BY value DESC) AS rn FROM generate_series(1, 12000000)) t";
    let result = ironlake::query::sql(&snap, q)
        .await
        .unwrap()
        .collect()
        .await;
    match result {
        Ok(b) => {
            let s = b[0]
                .column(0)
                .as_any()
                .downcast_ref::<arrow::array::UInt64Array>()
                .map(|a| a.value(0));
            assert_eq!(
                s,
                Some(12_000_000 * 12_000_001 / 2),
                "spilled and still exact"
            );
        }
        Err(e) => assert!(e.to_string().contains("Resources exhausted"), "{e}"),
    }
    // The same engine keeps answering.
    let b = ironlake::query::sql(&snap, "SELECT 41 + 1 AS x")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(b[0].num_rows(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shell_lists_describes_and_runs_multi_line_queries() {
    use std::io::Write as _;
    let (dir, _sim) = warehouse(56, 60).await;
    let wh = dir.path().join("wh");
    let mut child = ironlake(&wh, "http://127.0.0.1:9", TOKEN)
        .arg("sql")
        .env("HOME", dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"\\dt\n\\d bank_loans\nSELECT count(*) AS loans\n  FROM bank_loans\n WHERE quarter = '2019Q4';\nDROP TABLE bank_loans;\n\\z\n\\x\nSELECT 7 AS seven, 'a' AS letter;\nSELECT * FROM bank_loan;\n\\d published.guarantee_fee_subsidy\n\\q\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("| public       | bank_loans"),
        "\\dt lists tables: {stdout}"
    );
    assert!(
        stdout.contains("published") || stdout.contains("system"),
        "{stdout}"
    );
    assert!(
        stdout.contains("balance") && stdout.contains("余额"),
        "\\d describes with the Chinese term: {stdout}"
    );
    assert!(
        stdout.contains("| loans |"),
        "the multi-line query ran: {stdout}"
    );
    assert!(
        stderr.contains("read-only: DROP is not allowed"),
        "{stderr}"
    );
    // An unknown meta-command says so; \x shows one block per row.
    assert!(stderr.contains("unknown command \\z"), "{stderr}");
    assert!(stdout.contains("Expanded display is on."), "{stdout}");
    assert!(stdout.contains("-[ RECORD 1 ]"), "{stdout}");
    assert!(
        stdout.contains("seven  | 7") && stdout.contains("letter | a"),
        "{stdout}"
    );
    // Errors read as sentences and suggest the table meant.
    assert!(
        stderr.contains("table bank_loan does not exist; did you mean bank_loans?"),
        "{stderr}"
    );
    assert!(!stderr.contains("datafusion.public"), "{stderr}");
    // \d of a published aggregate: how it is made, column by column, with its policy values.
    assert!(
        stdout.contains("published.guarantee_fee_subsidy — 担保费补贴"),
        "{stdout}"
    );
    assert!(
        stdout.contains("policy guarantee_fee_ceiling_pct = 2.0000"),
        "{stdout}"
    );
    assert!(
        stdout.contains("subsidy")
            && stdout
                .contains("担保费补贴 — Σ disbursed × least(guarantee_fee_pct, subsidy_pp) ÷ 100"),
        "{stdout}"
    );
}

/// `DATAFUSION_*` environment variables tune the engine as in
/// `datafusion-cli`; ironlake's own settings still win, and a value the
/// engine cannot parse is named in a warning while the query runs on the
/// defaults.
#[test]
fn datafusion_environment_variables_tune_the_engine_but_not_ironlakes_settings() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    std::fs::create_dir(&wh).unwrap();
    let q = "SELECT name, value FROM information_schema.df_settings WHERE name IN ('datafusion.execution.batch_size', 'datafusion.execution.parquet.schema_force_view_types') ORDER BY name";
    let settings = |batch_size: &str| {
        let out = ironlake(&wh, "http://127.0.0.1:9", TOKEN)
            .args(["sql", q, "--format", "csv"])
            .env("DATAFUSION_EXECUTION_BATCH_SIZE", batch_size)
            .env(
                "DATAFUSION_EXECUTION_PARQUET_SCHEMA_FORCE_VIEW_TYPES",
                "true",
            )
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        (String::from_utf8(out.stdout).unwrap(), stderr)
    };
    let (stdout, stderr) = settings("1234");
    assert_eq!(
        stdout,
        "name,value\ndatafusion.execution.batch_size,1234\ndatafusion.execution.parquet.schema_force_view_types,false\n",
        "{stderr}"
    );
    assert!(!stderr.contains("DATAFUSION_"), "{stderr}");
    let (stdout, stderr) = settings("many");
    assert!(
        stdout.contains("datafusion.execution.batch_size,8192"),
        "{stdout}"
    );
    assert!(
        stderr.contains("A DATAFUSION_* environment variable has a value the engine cannot use")
            && stderr.contains("many"),
        "{stderr}"
    );
}
