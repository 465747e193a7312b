//! The PostgreSQL wire protocol against a real `ironlake run` on simulated
//! data, with real clients: psql (Debian's postgresql-client) and, in
//! `tests/py/pg_clients.py`, psycopg 3, SQLAlchemy and pandas, plus the
//! introspection queries of Grafana's and Metabase's connectors.

mod common;

use common::{ironlake, run_ok, start_sim};
use ironlake::feedsim::SimOptions;
use std::process::Command;
use std::time::{Duration, Instant};

const FEED: &str = "pg-feed-token";
const ANALYST: &str = "pg-analyst-token-0123456789";
const VIEWER: &str = "pg-viewer-token-0123456789";
const ADMIN: &str = "pg-admin-token-0123456789";

/// psql as `user` with `password` on `addr` (HOST:PORT), running each of
/// `commands` (`-c`); output and whether it exited 0.
fn psql(addr: &str, user: &str, password: &str, extra: &str, commands: &[&str]) -> (String, bool) {
    let (host, port) = addr.rsplit_once(':').unwrap();
    let mut cmd = Command::new("psql");
    cmd.arg(format!(
        "host={host} port={port} user={user} dbname=ironlake {extra}"
    ))
    .args(["--no-psqlrc", "-X", "-P", "pager=off"])
    .env("PGPASSWORD", password)
    .env("PGCONNECT_TIMEOUT", "10");
    for c in commands {
        cmd.args(["-c", c]);
    }
    let out = cmd
        .output()
        .expect("psql (ops/test.sh installs postgresql-client)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (text, out.status.success())
}

fn daemon(wh: &std::path::Path, feed: &str) -> Command {
    let mut cmd = ironlake(wh, feed, FEED);
    cmd.args(["run", "--listen", "127.0.0.1:0", "--drain-secs", "1"])
        .env("IRONLAKE_TOKEN_ANALYST", ANALYST)
        .env("IRONLAKE_TOKEN_VIEWER", VIEWER)
        .env("IRONLAKE_TOKEN_ADMIN", ADMIN);
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_psycopg_sqlalchemy_pandas_and_bi_connectors() {
    let mut sim = SimOptions::new(41, 300);
    sim.token = Some(FEED.into());
    let sim = start_sim(sim).await;
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let (url, w) = (sim.url(), wh.clone());
    tokio::task::spawn_blocking(move || {
        run_ok(ironlake(&w, &url, FEED).args(["ingest", "--all"]));
        run_ok(ironlake(&w, &url, FEED).arg("refresh"));
        let d = common::Daemon::spawn(&mut daemon(&w, &url));
        let pg = d.pg.clone();

        // psql: the tables by schema, a table's columns with their types.
        let (dt, ok) = psql(&pg, "analyst", ANALYST, "", &["\\dt"]);
        assert!(ok, "{dt}");
        for t in [
            "bank_loans",
            "enterprises",
            "ref_districts",
            "quarantine",
            "system",
        ] {
            assert!(dt.contains(t), "{t} missing from \\dt:\n{dt}");
        }
        let (published, ok) = psql(&pg, "analyst", ANALYST, "", &["\\dt published.*"]);
        assert!(ok, "{published}");
        for t in [
            "loan_growth",
            "bank_lending",
            "matching_list",
            "financing_cost",
        ] {
            assert!(published.contains(t), "{t} missing:\n{published}");
        }
        let (d_loans, ok) = psql(&pg, "analyst", ANALYST, "", &["\\d bank_loans"]);
        assert!(ok, "{d_loans}");
        let column = |name: &str| {
            d_loans
                .lines()
                .find(|l| l.trim_start().starts_with(&format!("{name} ")))
                .unwrap_or_else(|| panic!("no {name} in:\n{d_loans}"))
                .to_string()
        };
        assert!(column("balance").contains("numeric(18,2)"), "{d_loans}");
        assert!(column("rate_pct").contains("numeric(9,4)"), "{d_loans}");
        assert!(column("period_end").contains("| date"), "{d_loans}");
        assert!(column("loan_id").contains("| text"), "{d_loans}");
        let (d_growth, ok) = psql(&pg, "analyst", ANALYST, "", &["\\d published.loan_growth"]);
        assert!(ok && d_growth.contains("numeric("), "{d_growth}");

        // The same warehouse as `ironlake sql`: the same figures, to the fen.
        let sql = "SELECT count(*) AS n, sum(balance) AS total FROM bank_loans";
        let (over_pg, ok) = psql(
            &pg,
            "analyst",
            ANALYST,
            "",
            &["\\pset format unaligned", sql],
        );
        assert!(ok, "{over_pg}");
        let cli = run_ok(ironlake(&w, &url, FEED).args(["sql", "--format", "csv", sql]));
        let cli_row = cli.lines().nth(1).unwrap().replace(',', "|");
        assert!(over_pg.contains(&cli_row), "pg:\n{over_pg}\ncli:\n{cli}");

        // Refusals come back as errors, and the session goes on.
        let (out, _) = psql(
            &pg,
            "analyst",
            ANALYST,
            "",
            &["DELETE FROM bank_loans", "SELECT 'still here' AS s"],
        );
        assert!(out.contains("read-only"), "{out}");
        assert!(out.contains("still here"), "{out}");

        // Wrong tokens: refused with a message naming the role, and slowed.
        let mut last = Duration::ZERO;
        for _ in 0..5 {
            let started = Instant::now();
            let (out, ok) = psql(&pg, "analyst", "not-the-token", "", &["SELECT 1"]);
            assert!(!ok, "{out}");
            assert!(
                out.contains("password authentication failed for user \"analyst\""),
                "{out}"
            );
            assert!(!out.contains("not-the-token"), "{out}");
            last = started.elapsed();
        }
        assert!(
            last >= Duration::from_millis(400),
            "the fifth failure took {last:?}"
        );

        // psycopg, SQLAlchemy, pandas, BI introspection.
        let (host, port) = pg.rsplit_once(':').unwrap();
        let out = Command::new(common::python())
            .arg(common::repo().join("tests/py/pg_clients.py"))
            .args([host, port, ANALYST, VIEWER])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "pg_clients.py failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for check in [
            "ok version",
            "ok parameters, decimals, dates, nulls",
            "ok chinese text",
            "ok prepared statements",
            "ok refusals keep the session usable",
            "ok server-side cursor streamed 1000000 rows",
            "ok row limit",
            "ok time limit",
            "ok viewer reads published only",
            "ok bad logins refused",
            "ok sqlalchemy inspect",
            "ok pandas read_sql",
            "ok bi introspection",
            "all ok",
        ] {
            assert!(stdout.contains(check), "{check} missing:\n{stdout}");
        }
    })
    .await
    .unwrap();
}

#[test]
fn tls_when_configured_and_scram_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("pg.crt"), dir.path().join("pg.key"));
    let status = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (ops/test.sh installs it)");
    assert!(status.status.success(), "{status:?}");
    let project = common::project_copy(|path, text| {
        if path == "ironlake.toml" {
            text.replace(
                "# tls_cert = \"/etc/ironlake/pg.crt\"\n# tls_key = \"/etc/ironlake/pg.key\"",
                &format!(
                    "tls_cert = \"{}\"\ntls_key = \"{}\"",
                    cert.display(),
                    key.display()
                ),
            )
            .replace("max_connections = 64", "max_connections = 2")
        } else {
            text
        }
    });
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ironlake"));
    cmd.arg("--config")
        .arg(project.path().join("ironlake.toml"))
        .arg("--warehouse")
        .arg(dir.path().join("wh"))
        .args(["run", "--listen", "127.0.0.1:0", "--drain-secs", "1"])
        .env("IRONLAKE_LOG", "warn")
        .env("IRONLAKE_TOKEN_ANALYST", ANALYST)
        .env("IRONLAKE_TOKEN_VIEWER", VIEWER)
        .env("IRONLAKE_TOKEN_ADMIN", ADMIN);
    let d = common::Daemon::spawn(&mut cmd);
    // Over [pg] max_connections: a clear refusal, not a dropped socket.
    let held: Vec<_> = (0..2)
        .map(|_| std::net::TcpStream::connect(&d.pg).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let (out, ok) = psql(&d.pg, "analyst", ANALYST, "", &["SELECT 1"]);
    assert!(!ok && out.contains("too many clients"), "{out}");
    drop(held);
    // The slots come back when those clients go.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (out, ok) = loop {
        let (out, ok) = psql(
            &d.pg,
            "analyst",
            ANALYST,
            "sslmode=require",
            &["SELECT version()"],
        );
        if ok || Instant::now() > deadline {
            break (out, ok);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(ok && out.contains("PostgreSQL 16"), "{out}");
    // Without TLS the token still never crosses the wire: SCRAM-SHA-256
    // (pg_clients.py connects with require_auth=scram-sha-256).
    let (out, ok) = psql(
        &d.pg,
        "viewer",
        VIEWER,
        "sslmode=disable",
        &["SELECT count(*) FROM ref_districts"],
    );
    assert!(!ok && out.contains("viewer"), "{out}");
    let (out, ok) = psql(
        &d.pg,
        "viewer",
        VIEWER,
        "sslmode=disable",
        &["SELECT current_database()"],
    );
    assert!(ok && out.contains("ironlake"), "{out}");
    let (out, ok) = psql(&d.pg, "analyst", ANALYST, "dbname=other", &["SELECT 1"]);
    assert!(
        !ok && out.contains("database \"other\" does not exist"),
        "{out}"
    );
}
