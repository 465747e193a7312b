//! `ironlake check` as a new user meets it: the real binary on real files,
//! the bundled project plus one broken file at a time.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A copy of the bundled config, schemas, pipelines and aggregates in a temp dir.
fn project() -> tempfile::TempDir {
    common::project_copy(|_, text| text)
}

fn add_fixture(dir: &Path, fixture: &str, sub: &str) {
    let src = repo().join("tests/fixtures/check").join(fixture);
    std::fs::copy(src, dir.join(sub).join(fixture)).unwrap();
}

struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

fn check(dir: &Path) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_ironlake"))
        .arg("check")
        .arg("--config")
        .arg(dir.join("ironlake.toml"))
        .env("IRONLAKE_FEED_URL", "http://127.0.0.1:9")
        .env("IRONLAKE_FEED_TOKEN", "t")
        .env_remove("IRONLAKE_TEST_UNSET_URL")
        .env_remove("IRONLAKE_TEST_UNSET_TOKEN")
        .env_remove("IRONLAKE_CONFIG")
        .env_remove("IRONLAKE_WAREHOUSE")
        .output()
        .unwrap();
    Output {
        code: out.status.code().unwrap(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// Runs check with one broken file and asserts each expected line is printed.
fn assert_broken(fixture: &str, sub: &str, expected: &[&str]) {
    let dir = project();
    add_fixture(dir.path(), fixture, sub);
    let out = check(dir.path());
    assert_eq!(out.code, 1, "{fixture}: expected exit 1\n{}", out.stderr);
    for e in expected {
        assert!(
            out.stderr.contains(e),
            "{fixture}: expected {e:?} in stderr:\n{}",
            out.stderr
        );
    }
    assert!(out.stderr.contains("check failed:"), "{}", out.stderr);
}

#[test]
fn bundled_project_passes_with_one_line_per_file() {
    let dir = project();
    let out = check(dir.path());
    assert_eq!(out.code, 0, "{}", out.stderr);
    let ok_lines = out.stdout.lines().filter(|l| l.starts_with("ok ")).count();
    // ironlake.toml + 5 schemas + 5 pipelines + 1 push pipeline + 16 aggregates.
    assert_eq!(ok_lines, 28, "{}", out.stdout);
    assert!(out.stdout.contains("ok pipelines/aggregates/loan_growth.sql: published.loan_growth, partitioned by quarter, lags 0,4"), "{}", out.stdout);
    assert!(out.stdout.contains("ok schemas/bank_loans.toml: table bank_loans, 11 columns, key (bank_code, loan_id, period_end)"));
    assert!(
        out.stdout.contains(
            "ok pipelines/operations.toml: operations <- json, cursor pages, API-key auth"
        )
    );
    assert!(
        out.stdout.contains("check passed: 28 files, 0 warnings"),
        "{}",
        out.stdout
    );
    assert!(out.stderr.is_empty(), "{}", out.stderr);
}

#[test]
fn typo_in_a_key_lists_the_valid_keys() {
    assert_broken(
        "typo_key.toml",
        "pipelines",
        &[
            "pipelines/typo_key.toml:5:2: error: unknown field `scheduel`, expected one of `description`, `table`, `start`, `schedule`, `source`",
        ],
    );
}

#[test]
fn bad_cron_expression_says_why() {
    assert_broken(
        "bad_cron.toml",
        "pipelines",
        &[
            "pipelines/bad_cron.toml:6:8: error: `schedule.cron`: invalid cron expression \"0 61 2 * * *\"",
            "minute(0-59)",
        ],
    );
}

#[test]
fn five_field_unix_cron_asks_for_seconds() {
    assert_broken(
        "five_field_cron.toml",
        "pipelines",
        &[
            "`schedule.cron`: cron expression \"30 2 * * *\" has 5 fields, but needs 6 or 7",
            "seconds first",
        ],
    );
}

#[test]
fn unknown_type_lists_valid_types() {
    assert_broken(
        "unknown_type.toml",
        "schemas",
        &[
            "schemas/unknown_type.toml:19:8: error: `columns[2].type`: unknown type \"Float64\"; valid types: Utf8, Boolean, Int32, Int64, Date32, Decimal128(precision,scale)",
        ],
    );
}

#[test]
fn decimal_scale_above_precision() {
    assert_broken(
        "decimal_scale.toml",
        "schemas",
        &[
            "schemas/decimal_scale.toml:19:8: error: `columns[2].type`: \"Decimal128(4,6)\": Decimal128 scale 6 is greater than precision 4",
        ],
    );
}

#[test]
fn key_naming_a_missing_column() {
    assert_broken(
        "key_missing_column.toml",
        "schemas",
        &[
            "schemas/key_missing_column.toml:4:22: error: `primary_key`: primary key names column \"loan_no\", which the table does not have; columns: id, day",
        ],
    );
}

#[test]
fn duplicate_table_name_points_at_the_first() {
    assert_broken(
        "duplicate_table.toml",
        "schemas",
        &[
            "schemas/duplicate_table.toml:2:9: error: `table`: table \"bank_loans\" is already declared in schemas/bank_loans.toml",
        ],
    );
}

#[test]
fn pipeline_pointing_at_a_missing_table_lists_tables() {
    assert_broken(
        "missing_table.toml",
        "pipelines",
        &[
            "pipelines/missing_table.toml:2:9: error: `table`: pipeline targets table \"loans\", which no schema",
            "tables: bank_loans, direct_financing, enterprises, financing_demands, operations",
        ],
    );
}

#[test]
fn unset_env_var_is_a_warning_not_an_error() {
    let dir = project();
    add_fixture(dir.path(), "unset_env.toml", "pipelines");
    let out = check(dir.path());
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("pipelines/unset_env.toml:9:7: warning: `source.url`: environment variable IRONLAKE_TEST_UNSET_URL is not set"), "{}", out.stderr);
    assert!(out.stderr.contains("pipelines/unset_env.toml:14:13: warning: `source.auth.token_env`: environment variable IRONLAKE_TEST_UNSET_TOKEN is not set"), "{}", out.stderr);
    assert!(
        out.stdout.contains("check passed: 29 files, 2 warnings"),
        "{}",
        out.stdout
    );
}

#[test]
fn unknown_pagination_style_lists_valid_styles() {
    assert_broken(
        "bad_pagination.toml",
        "pipelines",
        &[
            "pipelines/bad_pagination.toml:13:9: error: `source.pagination.style`: unknown pagination style \"pages\"; valid styles: none, page_number, offset_limit, cursor, link_header",
        ],
    );
}

#[test]
fn pagination_key_of_another_style() {
    assert_broken(
        "pagination_key_mismatch.toml",
        "pipelines",
        &[
            "`source.pagination.offset_param`: `offset_param` does not apply to pagination style \"page_number\"; that style takes: page_size, size_param, page_param, first_page",
        ],
    );
}

#[test]
fn literal_secret_is_refused() {
    let dir = project();
    add_fixture(dir.path(), "literal_secret.toml", "pipelines");
    let out = check(dir.path());
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("pipelines/literal_secret.toml:14:9: error: `source.auth.token`: secrets are never written in pipeline files; use `token_env`"), "{}", out.stderr);
    // The diagnostic shows the offending line, but the secret must not be echoed
    // anywhere except that source line.
    assert_eq!(
        out.stderr.matches("s3cr3t-do-not-commit").count(),
        1,
        "{}",
        out.stderr
    );
}

#[test]
fn every_error_of_a_file_is_reported_at_once() {
    assert_broken(
        "bad_time_zone.toml",
        "pipelines",
        &[
            "`start`: invalid quarter \"2017Q5\": the quarter number must be 1, 2, 3 or 4",
            "`schedule.time_zone`: unknown time zone \"Beijing\"; use an IANA name such as Asia/Shanghai",
            "`schedule.catch_up`: unknown catch-up policy \"always\"; valid policies: skip, run_once",
            "`source.format`: unknown format \"xml\"; valid formats: json, ndjson, csv",
            "check failed: 4 errors in 1 file",
        ],
    );
}

#[test]
fn period_column_must_be_a_date_and_keys_not_null() {
    assert_broken(
        "period_not_date.toml",
        "schemas",
        &[
            "`period_column`: period column \"quarter_label\" is Utf8, but it must be Date32",
            "`primary_key`: primary-key column \"id\" must not be nullable",
        ],
    );
}

#[test]
fn toml_syntax_error_points_at_the_spot() {
    assert_broken(
        "syntax_error.toml",
        "pipelines",
        &["pipelines/syntax_error.toml:2:20: error: invalid basic string"],
    );
}

#[test]
fn bad_config_file() {
    let dir = project();
    std::fs::copy(
        repo().join("tests/fixtures/check/bad_config.toml"),
        dir.path().join("ironlake.toml"),
    )
    .unwrap();
    let out = check(dir.path());
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("ironlake.toml:9:1: error: unknown field `memory_limit`, expected one of `memory_limit_mb`, `spill_dir`, `target_partitions`"),
        "{}",
        out.stderr
    );
}

#[test]
fn errors_in_many_files_are_all_reported() {
    let dir = project();
    for (f, sub) in [
        ("bad_cron.toml", "pipelines"),
        ("missing_table.toml", "pipelines"),
        ("unknown_type.toml", "schemas"),
        ("duplicate_table.toml", "schemas"),
    ] {
        add_fixture(dir.path(), f, sub);
    }
    let out = check(dir.path());
    assert_eq!(out.code, 1);
    for f in [
        "bad_cron.toml",
        "missing_table.toml",
        "unknown_type.toml",
        "duplicate_table.toml",
    ] {
        assert!(
            out.stderr.contains(&format!("{f}:")),
            "{f} missing:\n{}",
            out.stderr
        );
    }
    assert!(
        out.stderr.contains("check failed: 4 errors in 4 files"),
        "{}",
        out.stderr
    );
    // The good files still get their summary line.
    assert!(
        out.stdout.contains("ok pipelines/bank_loans.toml"),
        "{}",
        out.stdout
    );
}

#[test]
fn aggregate_sql_errors_point_at_the_file_and_position() {
    assert_broken(
        "bad_aggregate.sql",
        "pipelines/aggregates",
        &[
            "pipelines/aggregates/bad_aggregate.sql:4:21: error: SQL: ",
            "balanse",
        ],
    );
}

/// Four independent mistakes in three files: all reported in one pass, and
/// an aggregate reading a broken one gets a single "depends on" line.
#[test]
fn every_problem_is_reported_in_one_pass_and_knock_on_errors_are_folded() {
    let dir = common::project_copy(|path, text| match path {
        "pipelines/bank_loans.toml" => text
            .replace(
                "time_zone = \"Asia/Shanghai\"",
                "time_zone = \"Asia/Chongqin\"",
            )
            .replace("{quarter}", "{quartr}"),
        "pipelines/direct_financing.toml" => text.replace(
            "table = \"direct_financing\"",
            "table = \"direct_financin\"",
        ),
        "pipelines/aggregates/loan_balances.sql" => {
            text.replacen("FROM bank_loans", "FROM bank_loan", 1)
        }
        _ => text,
    });
    let out = check(dir.path());
    assert_eq!(out.code, 1);
    for expected in [
        "unknown time zone \"Asia/Chongqin\"",
        "unknown placeholder `{quartr}`",
        "pipeline targets table \"direct_financin\"",
        "loan_balances.sql: error: SQL: table bank_loan does not exist; did you mean bank_loans?",
        "loan_growth.sql: error: depends on published.loan_balances, which has errors",
    ] {
        assert!(
            out.stderr.contains(expected),
            "{expected:?} missing:\n{}",
            out.stderr
        );
    }
    assert!(
        !out.stderr.contains("loan_growth.sql: error: SQL"),
        "{}",
        out.stderr
    );
}

/// An aggregate's `-- column:` lines must match its SELECT: a documented
/// column it does not output and a malformed line are errors; an output
/// column left undocumented is a warning.
#[test]
fn column_documentation_must_match_the_select() {
    let dir = common::project_copy(|path, text| {
        match path {
        "pipelines/aggregates/loan_balances.sql" => text.replace(
            "-- column: loans | 贷款笔数 | | loans whose borrower is in the quarter's registry snapshot\n",
            "-- column: loan_count | 贷款笔数 | | renamed\n-- column: industry_balance without pipes\n",
        ),
        _ => text,
    }
    });
    let out = check(dir.path());
    assert_eq!(out.code, 1, "{}", out.stderr);
    for expected in [
        "loan_balances.sql: error: `column`: documents column \"loan_count\", which the SELECT does not output",
        "loan_balances.sql:9:1: error: `column`: a column line reads `-- column: name | 中文名 | unit | formula`",
        "loan_balances.sql: warning: `column`: output column \"loans\" has no `-- column:` line",
    ] {
        assert!(
            out.stderr.contains(expected),
            "{expected:?} missing:\n{}",
            out.stderr
        );
    }
}
