//! The web dashboard in a real browser: Debian's chromium, driven by
//! Playwright (`tests/browser/dashboard.mjs`), against a real `ironlake run`
//! on simulated data. Screenshots go to `target/dashboard-screenshots/`.

mod common;

use common::{ironlake, repo, run_ok, start_sim};
use ironlake::feedsim::SimOptions;
use std::io::{BufRead as _, Write as _};

const FEED: &str = "dashboard-feed-token";
const VIEWER: &str = "dashboard-viewer-token-0123456789";
const ADMIN: &str = "dashboard-admin-token-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_a_real_browser() {
    // The city up to 2019Q3; later the harness adds 2019Q4 from a second feed.
    let mut early = SimOptions::new(93, 400);
    early.token = Some(FEED.into());
    early.to = "2019Q3".parse().unwrap();
    let mut late = early.clone();
    late.to = "2019Q4".parse().unwrap();
    let (early, late) = (start_sim(early).await, start_sim(late).await);
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let (eu, lu, w) = (early.url(), late.url(), wh.clone());
    let report = tokio::task::spawn_blocking(move || {
        run_ok(ironlake(&w, &eu, FEED).args(["ingest", "--all"]));
        run_ok(ironlake(&w, &eu, FEED).arg("refresh"));
        let mut daemon = ironlake(&w, &eu, FEED);
        daemon
            .args(["run", "--listen", "127.0.0.1:0", "--drain-secs", "1"])
            .env("IRONLAKE_TOKEN_VIEWER", VIEWER)
            .env("IRONLAKE_TOKEN_ADMIN", ADMIN)
            .env(
                "IRONLAKE_TOKEN_ANALYST",
                "dashboard-analyst-token-0123456789",
            );
        let (mut child, base) = common::spawn_daemon(&mut daemon);
        let shots = repo().join("target/dashboard-screenshots");
        let mut node = std::process::Command::new("node")
            .arg(repo().join("tests/browser/dashboard.mjs"))
            .env("BASE", &base)
            .env("VIEWER_TOKEN", VIEWER)
            .env("ADMIN_TOKEN", ADMIN)
            .env("SHOTS", &shots)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("node (ops/test.sh installs it)");
        let mut to_node = node.stdin.take().unwrap();
        let mut last = String::new();
        for line in std::io::BufReader::new(node.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            if line == "PUBLISH" {
                // A new quarter lands and is published while the page is open.
                for p in ["enterprises", "bank_loans"] {
                    run_ok(
                        ironlake(&w, &lu, FEED)
                            .args(["backfill", p, "--from", "2019Q4", "--to", "2019Q4"]),
                    );
                }
                run_ok(ironlake(&w, &lu, FEED).arg("refresh"));
                writeln!(to_node, "PUBLISHED").unwrap();
            } else {
                last = line;
            }
        }
        let status = node.wait().unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert!(status.success(), "node failed: {last}");
        serde_json::from_str::<serde_json::Value>(&last).unwrap_or_else(|e| panic!("{e}: {last}"))
    })
    .await
    .unwrap();
    println!("{report}");
    assert!(report["failure"].is_null(), "{}", report["failure"]);
    assert_eq!(report["console_errors"], serde_json::json!([]), "{report}");

    // Private indicators: the browser is sent to /login; the session cookie is HttpOnly and SameSite=Strict.
    assert_eq!(report["redirected_to_login"], true);
    let cookie = &report["cookie"][0];
    assert_eq!(cookie["name"], "ironlake_session");
    assert_eq!(cookie["httpOnly"], true);
    assert_eq!(cookie["sameSite"], "Strict");
    assert_eq!(report["cookie_visible_to_script"], "");

    // Overview: eight goal cards, each with the latest value and a drawn trend line.
    let cards = report["overview"]["cards"].as_array().unwrap();
    assert_eq!(cards.len(), 8, "{cards:?}");
    // (Direct financing is sparse in a small city: a card may have no value yet.)
    let with_value: Vec<_> = cards
        .iter()
        .filter(|c| !c["value"].as_str().unwrap().starts_with('—'))
        .collect();
    assert!(with_value.len() >= 6, "{cards:?}");
    for c in with_value {
        assert!(c["points"].as_u64().unwrap() >= 1, "{c}");
    }
    for id in [
        "card-industry_yoy_pct",
        "card-fin_expense_ratio_pct",
        "card-avg_loan_rate_pct",
    ] {
        let c = cards.iter().find(|c| c["id"] == id).unwrap();
        assert!(c["value"].as_str().unwrap().contains("2019Q3"), "{c}");
    }
    assert!(
        cards
            .iter()
            .any(|c| c["value"].as_str().unwrap().contains('%')),
        "{cards:?}"
    );
    assert!(
        report["overview"]["freshness"]
            .as_str()
            .unwrap()
            .contains("数据截至 2019Q3"),
        "{report}"
    );

    // Every published aggregate has a page with a non-empty chart, rows and its definition.
    let pages = report["pages"].as_object().unwrap();
    assert_eq!(pages.len(), common::PUBLISHED_AGGREGATES, "{pages:?}");
    for (name, p) in pages {
        assert!(p["chart"]["points"].as_u64().unwrap() > 0, "{name}: {p}");
        assert!(p["chart"]["marks"].as_u64().unwrap() > 0, "{name}: {p}");
        assert!(p["rows"].as_u64().unwrap() > 0, "{name}: {p}");
        assert!(p["definition"].as_u64().unwrap() > 100, "{name}: {p}");
    }

    // The district selector changes the numbers.
    let d = &report["district"];
    assert_ne!(d["city_first_row"], d["district_first_row"], "{d}");
    assert_eq!(d["chart_changed"], true, "{d}");
    assert_eq!(d["rows_all_in_district"], true, "{d}");

    // A new publication appears without a reload: a new version and the new quarter.
    let (before, after) = (
        &report["publication"]["before"],
        &report["publication"]["after"],
    );
    assert_ne!(before["version"], after["version"]);
    assert!(
        !before["quarters"].to_string().contains("2019Q4"),
        "{before}"
    );
    assert!(after["quarters"].to_string().contains("2019Q4"), "{after}");
    assert!(
        after["points"].as_u64() > before["points"].as_u64(),
        "{after}"
    );
    assert_eq!(after["not_reloaded"], true);

    // Operations: a viewer sees pipelines and tables but cannot run one; an admin can.
    let ops = &report["viewer_ops"];
    assert_eq!(ops["pipelines"], 6, "five pulled and one pushed: {ops}");
    assert_eq!(ops["tables"].as_array().unwrap().len(), 5, "{ops}");
    assert_eq!(ops["run_buttons_disabled"], true, "{ops}");
    assert_eq!(report["viewer_forced_status"], 403);
    assert_eq!(report["admin_run"]["pipeline"], "financing_demands");
    assert_eq!(report["admin_run"]["outcome"], "succeeded", "{report}");
    assert_eq!(report["admin_without_csrf_status"], 403);

    // Phone width: nothing wider than the screen.
    assert!(
        report["phone"]["overview_overflow"].as_i64().unwrap() <= 0,
        "{report}"
    );
    assert!(
        report["phone"]["indicator_overflow"].as_i64().unwrap() <= 0,
        "{report}"
    );

    // A wrong token: a message, and still on /login.
    assert_eq!(report["wrong_token"]["path"], "/login");
    assert!(
        report["wrong_token"]["message"]
            .as_str()
            .unwrap()
            .contains("令牌无效"),
        "{report}"
    );
    for shot in ["overview-1366.png", "overview-phone.png", "ops-admin.png"] {
        assert!(
            repo()
                .join("target/dashboard-screenshots")
                .join(shot)
                .exists(),
            "{shot}"
        );
    }
}
