//! The programme's indicators: hand-worked values on a small fixture, an
//! independent DuckDB computation on a simulated city, and incremental
//! refreshes that equal a full rebuild.

mod common;

use common::{ironlake, py_json, repo, run_ok, start_sim};
use ironlake::feedsim::SimOptions;
use ironlake::feedsim::rng::Rng;
use std::path::{Path, PathBuf};

const TOKEN: &str = "aggregates-test-token";

/// A copy of the bundled project whose config is edited by `edit`.
fn project_dir(edit: impl Fn(String) -> String) -> tempfile::TempDir {
    common::project_copy(|path, text| {
        if path == "ironlake.toml" {
            edit(text)
        } else {
            text
        }
    })
}

fn cmd(project: &Path, wh: &Path) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_ironlake"));
    c.arg("--config")
        .arg(project.join("ironlake.toml"))
        .arg("--warehouse")
        .arg(wh)
        .env("IRONLAKE_LOG", "warn");
    c
}

/// Query results as JSON objects built from CSV text, so decimals stay exact
/// strings: every value is text but true/false (booleans) and empty cells (null).
fn query(project: &Path, wh: &Path, sql: &str) -> Vec<serde_json::Value> {
    let out = run_ok(cmd(project, wh).args(["sql", sql, "--format", "csv"]));
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    lines
        .map(|l| {
            let m: serde_json::Map<String, serde_json::Value> = header
                .iter()
                .zip(l.split(','))
                .map(|(h, v)| {
                    let v = if v.is_empty() {
                        serde_json::Value::Null
                    } else if v == "true" || v == "false" {
                        serde_json::Value::Bool(v == "true")
                    } else {
                        serde_json::Value::String(v.to_string())
                    };
                    (h.to_string(), v)
                })
                .collect();
            serde_json::Value::Object(m)
        })
        .collect()
}

#[test]
fn hand_worked_indicators_on_a_small_fixture() {
    // Policy for this test: subsidise 50% of first-year interest, at most 7,000.00 yuan per enterprise and quarter.
    let p = project_dir(|c| {
        c.replace(
            "interest_subsidy_cap_yuan = \"2000000.00\"",
            "interest_subsidy_cap_yuan = \"7000.00\"",
        )
    });
    let wh = p.path().join("wh");
    load_fixture(p.path(), &wh, "aggregates");

    // loan_growth. Industry = divisions 06–46, manufacturing = 13–43, by the borrower's snapshot of the same quarter.
    // 2018Q3: L1 E1(36) 1,000,000 + L2 E5(06, mining) 500,000 + L4 E2(39) 200,000; L3 E7(51, wholesale) is not industry.
    //   industry 1,700,000.00; manufacturing 1,000,000 + 200,000 = 1,200,000.00
    // 2019Q3: L1 1,100,000 + L2 450,000 + L5 E2 400,000 + L6 E3 0 + L7 E9 250,000 = 2,200,000.00 industry;
    //   manufacturing 1,100,000 + 400,000 + 0 + 250,000 = 1,750,000.00
    //   industry yoy = (2,200,000 / 1,700,000 − 1) × 100 = 29.4118 → 29.41
    //   manufacturing yoy = (1,750,000 / 1,200,000 − 1) × 100 = 45.8333 → 45.83; gap = 45.83 − 29.41 = 16.42
    let lg = query(
        p.path(),
        &wh,
        "SELECT * FROM published.loan_growth ORDER BY quarter",
    );
    assert_eq!(lg.len(), 2);
    assert_eq!(lg[0]["quarter"], "2018Q3");
    assert_eq!(lg[0]["industry_balance"], "1700000.00");
    assert_eq!(lg[0]["manufacturing_balance"], "1200000.00");
    assert!(
        lg[0]["industry_yoy_pct"].is_null(),
        "no prior year: {}",
        lg[0]
    );
    assert_eq!(lg[1]["industry_balance"], "2200000.00");
    assert_eq!(lg[1]["manufacturing_balance"], "1750000.00");
    assert_eq!(lg[1]["industry_yoy_pct"], "29.41");
    assert_eq!(lg[1]["manufacturing_yoy_pct"], "45.83");
    assert_eq!(lg[1]["gap_pp"], "16.42");

    // financing_cost 2019Q3, industrial enterprises only (E7 wholesale excluded).
    // ALL: Σ financial_expenses = 50,000 (E1) + 20,000 (E5) − 5,000 (E2) = 65,000; Σ cost = 2,000,000 + 1,000,000 + 500,000 = 3,500,000
    //   ratio = 65,000 / 3,500,000 × 100 = 1.857 → 1.86
    // loans with balance > 0: L1 1,100,000 @4.35, L2 450,000 @4.785, L5 400,000 @4.20 (+1.50 fee), L7 250,000 @5.10; L6 has balance 0.
    //   Σ w = 2,200,000; Σ w·r = 4,785,000 + 2,153,250 + 1,680,000 + 1,275,000 = 9,893,250 → 4.496932 → 4.4969
    //   comprehensive: 9,893,250 + 400,000 × 1.50 = 10,493,250 → 4.769659 → 4.7697
    // District 500112 (E1, E2): ratio 45,000 / 2,500,000 × 100 = 1.80; rate (4,785,000 + 1,680,000) / 1,500,000 = 4.3100;
    //   comprehensive (6,465,000 + 600,000) / 1,500,000 = 4.7100
    let fc = query(
        p.path(),
        &wh,
        "SELECT * FROM published.financing_cost WHERE quarter = '2019Q3' AND district_code IN ('ALL', '500112') ORDER BY district_code",
    );
    assert_eq!(fc.len(), 2, "{fc:?}");
    assert_eq!(fc[0]["district_code"], "500112");
    assert_eq!(fc[0]["fin_expense_ratio_pct"], "1.80");
    assert_eq!(fc[0]["avg_loan_rate_pct"], "4.3100");
    assert_eq!(fc[0]["avg_comprehensive_cost_pct"], "4.7100");
    assert_eq!(fc[1]["district_code"], "ALL");
    assert_eq!(fc[1]["fin_expense_ratio_pct"], "1.86");
    assert_eq!(fc[1]["avg_loan_rate_pct"], "4.4969");
    assert_eq!(fc[1]["avg_comprehensive_cost_pct"], "4.7697");

    // interest_subsidy: new loans to strategic divisions (27, 34, 35, 36, 38, 39).
    // 2018Q3: E2 (39) L4 200,000 @4.35 → interest 8,700.00, subsidy 50% = 4,350.00.
    // 2019Q3: E2 (39) L5 400,000 @4.20 → interest 16,800.00 → 8,400.00, capped at 7,000.00;
    //         E9 (34) L7 250,000 @5.10 → interest 12,750.00 → 6,375.00. E1 (36) drew nothing new.
    let is = query(
        p.path(),
        &wh,
        "SELECT quarter, division, new_loans, first_year_interest, subsidy_share_pct, subsidy, capped FROM published.interest_subsidy ORDER BY quarter, division",
    );
    assert_eq!(is.len(), 3, "{is:?}");
    assert_eq!(
        (
            is[0]["quarter"].as_str(),
            is[0]["first_year_interest"].as_str(),
            is[0]["subsidy"].as_str()
        ),
        (Some("2018Q3"), Some("8700.00"), Some("4350.00"))
    );
    assert_eq!(
        (
            is[1]["division"].as_str(),
            is[1]["new_loans"].as_str(),
            is[1]["first_year_interest"].as_str()
        ),
        (Some("34"), Some("250000.00"), Some("12750.00"))
    );
    assert_eq!(
        (is[1]["subsidy"].as_str(), is[1]["capped"].as_bool()),
        (Some("6375.00"), Some(false))
    );
    assert_eq!(
        (
            is[2]["division"].as_str(),
            is[2]["first_year_interest"].as_str()
        ),
        (Some("39"), Some("16800.00"))
    );
    assert_eq!(
        (is[2]["subsidy"].as_str(), is[2]["capped"].as_bool()),
        (Some("7000.00"), Some(true))
    );
    assert_eq!(is[2]["subsidy_share_pct"], "50.00");

    // demand_funnel 2019Q3, district 500112, category mic2025: D1 (funded 800,000 after 45 days),
    // D2 (funded 2,000,000 after 60 days), D4 (rejected): 3 demands, 6,000,000 asked,
    // match rate 2/3 = 66.67%, funded 2,800,000, median days (45 + 60) / 2 = 52.5.
    // District 500107, category none: D3 (screened) and D6 (recommended): 1,700,000 open, 0% matched, no median.
    let f = query(
        p.path(),
        &wh,
        "SELECT * FROM published.demand_funnel ORDER BY district_code, project_category",
    );
    let by = |d: &str, c: &str| {
        f.iter()
            .find(|r| r["district_code"] == d && r["project_category"] == c)
            .unwrap()
            .clone()
    };
    let a = by("500112", "mic2025");
    assert_eq!(
        (
            a["demands"].as_str().and_then(|x| x.parse::<i64>().ok()),
            a["amount"].as_str()
        ),
        (Some(3), Some("6000000.00"))
    );
    assert_eq!(
        (
            a["n_funded"].as_str().and_then(|x| x.parse::<i64>().ok()),
            a["n_rejected"].as_str().and_then(|x| x.parse::<i64>().ok())
        ),
        (Some(2), Some(1))
    );
    assert_eq!(
        (a["funded_amount"].as_str(), a["match_rate_pct"].as_str()),
        (Some("2800000.00"), Some("66.67"))
    );
    assert_eq!(a["median_days_to_funding"], "52.5");
    let b = by("500107", "none");
    assert_eq!(
        (
            b["demands"].as_str().and_then(|x| x.parse::<i64>().ok()),
            b["amount_open"].as_str(),
            b["match_rate_pct"].as_str()
        ),
        (Some(2), Some("1700000.00"), Some("0.00"))
    );
    assert!(b["median_days_to_funding"].is_null());
    assert_eq!(by("500154", "transformation")["n_submitted"], "1");

    // matching_list: open demands D3 (E9 growth +2 = 2), D5 (category transformation +2 = 2),
    // D6 (E4 专精特新 +2, recommended +1 = 3). Rank: D6; then D3 (submitted 08-01) before D5 (09-20).
    // days_open to the feed's latest status date 2019-09-20: D6 19, D3 50, D5 0.
    let m = query(
        p.path(),
        &wh,
        "SELECT rank, demand_id, priority, days_open FROM published.matching_list ORDER BY rank",
    );
    let got: Vec<(i64, &str, i64, i64)> = m
        .iter()
        .map(|r| {
            (
                r["rank"].as_str().unwrap().parse::<i64>().unwrap(),
                r["demand_id"].as_str().unwrap(),
                r["priority"]
                    .as_str()
                    .and_then(|x| x.parse::<i64>().ok())
                    .unwrap(),
                r["days_open"]
                    .as_str()
                    .and_then(|x| x.parse::<i64>().ok())
                    .unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![(1, "D6", 3, 19), (2, "D3", 2, 50), (3, "D5", 2, 0)]
    );

    // direct_financing_growth: 2018Q3 E1 bond 80,000,000; 2019Q3 E1 bond 100,000,000 (+25.00%),
    // E4 NEEQ equity 20,000,000 (no prior year → null); E7's bond (wholesale) does not count.
    let d = query(
        p.path(),
        &wh,
        "SELECT * FROM published.direct_financing_growth ORDER BY quarter",
    );
    assert_eq!(d.len(), 2);
    assert_eq!(
        (d[1]["bond_amount"].as_str(), d[1]["equity_amount"].as_str()),
        (Some("100000000.00"), Some("20000000.00"))
    );
    assert_eq!(d[1]["bond_yoy_pct"], "25.00");
    assert!(d[1]["equity_yoy_pct"].is_null());
    assert_eq!(
        (
            d[1]["bond_issuers"]
                .as_str()
                .and_then(|x| x.parse::<i64>().ok()),
            d[1]["equity_issuers"]
                .as_str()
                .and_then(|x| x.parse::<i64>().ok())
        ),
        (Some(1), Some(1))
    );
}

/// Loads a fixture directory's five tables through `import` and refreshes.
fn load_fixture(project: &Path, wh: &Path, dir: &str) {
    let fx = repo().join("tests/fixtures").join(dir);
    for (table, file, format) in [
        ("enterprises", "enterprises.ndjson", "ndjson"),
        ("operations", "operations.ndjson", "ndjson"),
        ("bank_loans", "bank_loans.csv", "csv"),
        ("financing_demands", "financing_demands.ndjson", "ndjson"),
        ("direct_financing", "direct_financing.ndjson", "ndjson"),
    ] {
        let out = run_ok(
            cmd(project, wh)
                .args(["import", table])
                .arg(fx.join(file))
                .args(["--format", format]),
        );
        assert!(out.contains(" 0 rejected"), "{out}");
    }
    run_ok(cmd(project, wh).arg("refresh"));
}

/// The row of `rows` whose `key` columns have these values.
fn row<'a>(rows: &'a [serde_json::Value], key: &[(&str, &str)]) -> &'a serde_json::Value {
    rows.iter()
        .find(|r| key.iter().all(|(k, v)| r[*k] == *v))
        .unwrap_or_else(|| panic!("no row {key:?} in {rows:?}"))
}

#[test]
fn hand_worked_plan_measures_on_a_second_fixture() {
    // Policy: guarantee fees up to 2.0000% qualify, the city pays 1.0000 point; 双百 subsidy 50%, capped at 1,999.99.
    let p = project_dir(|c| {
        c.replace(
            "dual_hundred_subsidy_cap_yuan = \"500000.00\"",
            "dual_hundred_subsidy_cap_yuan = \"1999.99\"",
        )
        .replace(
            "screening_max_amount_to_revenue = \"1.00\"",
            "screening_max_amount_to_revenue = \"2.00\"",
        )
    });
    let wh = p.path().join("wh");
    load_fixture(p.path(), &wh, "indicators");
    // Enterprises (same in both snapshots, 2018Q3 and 2019Q3): A 36 large 双百重点 500112; B 39 medium
    // 双百成长 500112; C 26 small 专精特新 500115; D 06 (mining: industry, not manufacturing) micro 500110;
    // W 51 (wholesale: not industry) small 500105. Banks K1 = 102653000013, K2 = 105653000010.

    // bank_lending. 2018Q3: K1 L1 A 1,000,000 (medium_long, 4.35) + L2 B 500,000 (short, credit, 4.00, drawn 500,000);
    //   K2 L3 D 200,000 (short, guaranteed, 5.00).
    // 2019Q3 K1: L1 A 1,200,000 ml mortgage 4.35; L4 A 300,001 short credit 3.90 (drawn); L10 A 100,000 short
    //   guaranteed 4.00 (drawn); L2 B 400,000 short credit 4.00. Industry = manufacturing = 2,000,001.00;
    //   yoy = (2,000,001 / 1,500,000 − 1) × 100 = 33.3334 → 33.33; new = 300,001 + 100,000 = 400,001.00;
    //   credit = (300,001 + 400,000) / 2,000,001 × 100 = 34.99998 → 35.00; medium_long = 1,200,000 / 2,000,001 → 60.00;
    //   rate = (5,220,000 + 1,170,003.90 + 400,000 + 1,600,000) / 2,000,001 = 8,390,003.90 / 2,000,001 = 4.1949999… → 4.1950.
    // 2019Q3 K2: L9 B 0 (credit), L5 C 250,000 4.50, L6 D 100,000 5.20, L7 D 333,334 ml 4.80; all drawn but L9.
    //   industry 683,334.00, manufacturing (C) 250,000.00; yoy = (683,334 / 200,000 − 1) × 100 = 241.667 → 241.67;
    //   credit 0 → 0.00; medium_long 333,334 / 683,334 = 48.78; rate (L9 has no weight) =
    //   (1,125,000 + 520,000 + 1,600,003.20) / 683,334 = 4.74880 → 4.7488. W's L8 is not industrial lending.
    // ALL 2019Q3: 2,683,335.00; manufacturing 2,250,001.00; yoy (2,683,335 / 1,700,000 − 1) × 100 = 57.84;
    //   new 1,083,335.00; credit 700,001 / 2,683,335 = 26.09; medium_long 1,533,334 / 2,683,335 = 57.14;
    //   rate (8,390,003.90 + 3,245,003.20) / 2,683,335 = 4.3360; 8 loans.
    let bl = query(
        p.path(),
        &wh,
        "SELECT * FROM published.bank_lending ORDER BY quarter, bank_code",
    );
    assert_eq!(bl.len(), 6, "{bl:?}");
    let k1 = row(&bl, &[("quarter", "2019Q3"), ("bank_code", "102653000013")]);
    assert_eq!(k1["industry_balance"], "2000001.00");
    assert_eq!(k1["manufacturing_balance"], "2000001.00");
    assert_eq!(k1["industry_yoy_pct"], "33.33");
    assert_eq!(k1["new_industry_loans"], "400001.00");
    assert_eq!(k1["credit_share_pct"], "35.00");
    assert_eq!(k1["medium_long_share_pct"], "60.00");
    assert_eq!(k1["avg_rate_pct"], "4.1950");
    assert_eq!(k1["loans"], "4");
    let k2 = row(&bl, &[("quarter", "2019Q3"), ("bank_code", "105653000010")]);
    assert_eq!(k2["industry_balance"], "683334.00");
    assert_eq!(k2["manufacturing_balance"], "250000.00");
    assert_eq!(k2["industry_yoy_pct"], "241.67");
    assert_eq!(k2["credit_share_pct"], "0.00");
    assert_eq!(k2["medium_long_share_pct"], "48.78");
    assert_eq!(k2["avg_rate_pct"], "4.7488");
    let all = row(&bl, &[("quarter", "2019Q3"), ("bank_code", "ALL")]);
    assert_eq!(all["industry_balance"], "2683335.00");
    assert_eq!(all["manufacturing_balance"], "2250001.00");
    assert_eq!(all["industry_yoy_pct"], "57.84");
    assert_eq!(all["new_industry_loans"], "1083335.00");
    assert_eq!(all["credit_share_pct"], "26.09");
    assert_eq!(all["medium_long_share_pct"], "57.14");
    assert_eq!(all["avg_rate_pct"], "4.3360");
    assert_eq!(all["loans"], "8");
    let first = row(&bl, &[("quarter", "2018Q3"), ("bank_code", "ALL")]);
    assert!(
        first["industry_yoy_pct"].is_null(),
        "no prior year: {first}"
    );

    // guarantee_fee_subsidy 2019Q3 (medium/small/micro, guaranteed, fee ≤ 2.0000, drawn in the quarter):
    //   C small: L5 250,000 @1.80 → fee 4,500.00; subsidy 250,000 × least(1.80, 1.00) % = 2,500.00.
    //   D micro: L6 @2.50 is above the ceiling; L7 333,334 @0.75 → fee 2,500.005 → 2,500.01; subsidy
    //     (0.75 < 1.00, so the whole fee) 2,500.01.
    //   W small (any industry): L8 50,000 @1.00 → 500.00 and 500.00.
    //   A is large (L10 excluded); 2018Q3's L3 was not drawn in the quarter: no 2018Q3 rows.
    let gf = query(
        p.path(),
        &wh,
        "SELECT * FROM published.guarantee_fee_subsidy ORDER BY quarter, uscc",
    );
    assert_eq!(gf.len(), 3, "{gf:?}");
    let c = row(&gf, &[("uscc", "91500115MA5U000020")]);
    assert_eq!(
        (
            &c["guaranteed_new_loans"],
            &c["guarantee_fee"],
            &c["subsidy"]
        ),
        (&"250000.00".into(), &"4500.00".into(), &"2500.00".into())
    );
    let d = row(&gf, &[("uscc", "91500110MA5U00004X")]);
    assert_eq!(
        (
            &d["loans"],
            &d["guaranteed_new_loans"],
            &d["guarantee_fee"],
            &d["subsidy"]
        ),
        (
            &"1".into(),
            &"333334.00".into(),
            &"2500.01".into(),
            &"2500.01".into()
        )
    );
    assert_eq!(d["size_class"], "micro");
    let w = row(&gf, &[("uscc", "91500105MA5U00006W")]);
    assert_eq!(
        (
            &w["guarantee_fee"],
            &w["subsidy"],
            &w["fee_ceiling_pct"],
            &w["subsidy_pp"]
        ),
        (
            &"500.00".into(),
            &"500.00".into(),
            &"2.0000".into(),
            &"1.0000".into()
        )
    );

    // working_capital_subsidy (双百 with short-term loans, balance > 0), share 50%, cap 1,999.99:
    //   2019Q3 A: L4 300,001 @3.90 + L10 100,000 @4.00 → 400,001.00; interest (1,170,003.90 + 400,000) ÷ 400
    //     = 3,925.00975 → 3,925.01; × 50% = 1,962.505 → 1,962.51, under the cap.
    //   2019Q3 B: L2 400,000 @4.00 → 4,000.00; × 50% = 2,000.00 → capped at 1,999.99 (L9 has balance 0).
    //   2018Q3 B: L2 500,000 @4.00 → 5,000.00 → 2,500.00 → 1,999.99. A had no short-term loan in 2018Q3; C, D are not 双百.
    let wc = query(
        p.path(),
        &wh,
        "SELECT * FROM published.working_capital_subsidy ORDER BY quarter, uscc",
    );
    assert_eq!(wc.len(), 3, "{wc:?}");
    let a = row(
        &wc,
        &[("quarter", "2019Q3"), ("uscc", "91500112MA5U00000E")],
    );
    assert_eq!(
        (
            &a["short_term_balance"],
            &a["quarter_interest"],
            &a["subsidy"],
            &a["capped"]
        ),
        (
            &"400001.00".into(),
            &"3925.01".into(),
            &"1962.51".into(),
            &false.into()
        )
    );
    assert_eq!(a["loans"], "2");
    let b = row(
        &wc,
        &[("quarter", "2019Q3"), ("uscc", "91500112MA5U00001H")],
    );
    assert_eq!(
        (
            &b["short_term_balance"],
            &b["quarter_interest"],
            &b["subsidy"],
            &b["capped"]
        ),
        (
            &"400000.00".into(),
            &"4000.00".into(),
            &"1999.99".into(),
            &true.into()
        )
    );
    let b18 = row(
        &wc,
        &[("quarter", "2018Q3"), ("uscc", "91500112MA5U00001H")],
    );
    assert_eq!(
        (&b18["quarter_interest"], &b18["subsidy"]),
        (&"5000.00".into(), &"1999.99".into())
    );

    // energy_water_intensity (industrial: A, B, C, D; W excluded). 2019Q3 energy / water / output:
    //   A 100 / 1,000 / 2,000,000; B 30 / 500 / 1,000,000; C 80 / 2,000 / 500,000; D 120 / 300 / 400,000.
    //   2018Q3: A 96 / 900 / 1,600,000; B 28 / 400 / 800,000; C 90 / 2,100 / 500,000; D 100 / 250 / 300,000.
    //   4 districts×divisions + 3 district totals + 4 division totals + 1 city total = 12 rows a quarter.
    //   ALL/ALL 2019Q3: 330 / 3,800 / 3,900,000 → 330 ÷ 390 = 0.846154 → 0.8462; 3,800 ÷ 390 = 9.743590 → 9.7436;
    //     2018Q3: 314 ÷ 320 = 0.98125, 3,650 ÷ 320 = 11.40625; yoy (0.846154 ÷ 0.98125 − 1) × 100 = −13.77,
    //     (9.743590 ÷ 11.40625 − 1) × 100 = −14.58.
    //   500112/ALL 2019Q3: 130 ÷ 300 = 0.4333, 1,500 ÷ 300 = 5.0000; 2018Q3 124 ÷ 240, 1,300 ÷ 240: yoy −16.13, −7.69.
    //   500112/36: 0.5000 vs 0.6000 → −16.67; 5.0000 vs 5.6250 → −11.11.
    let ew = query(
        p.path(),
        &wh,
        "SELECT * FROM published.energy_water_intensity ORDER BY quarter, district_code, division",
    );
    assert_eq!(ew.len(), 24, "{ew:?}");
    let city = row(
        &ew,
        &[
            ("quarter", "2019Q3"),
            ("district_code", "ALL"),
            ("division", "ALL"),
        ],
    );
    assert_eq!(
        (
            &city["enterprises"],
            &city["energy_tce"],
            &city["water_m3"],
            &city["output_value"]
        ),
        (
            &"4".into(),
            &"330.00".into(),
            &"3800.00".into(),
            &"3900000.00".into()
        )
    );
    assert_eq!(
        (&city["energy_per_10k_yuan"], &city["water_per_10k_yuan"]),
        (&"0.8462".into(), &"9.7436".into())
    );
    assert_eq!(
        (
            &city["energy_intensity_yoy_pct"],
            &city["water_intensity_yoy_pct"]
        ),
        (&"-13.77".into(), &"-14.58".into())
    );
    let dist = row(
        &ew,
        &[
            ("quarter", "2019Q3"),
            ("district_code", "500112"),
            ("division", "ALL"),
        ],
    );
    assert_eq!(
        (&dist["energy_per_10k_yuan"], &dist["water_per_10k_yuan"]),
        (&"0.4333".into(), &"5.0000".into())
    );
    assert_eq!(
        (
            &dist["energy_intensity_yoy_pct"],
            &dist["water_intensity_yoy_pct"]
        ),
        (&"-16.13".into(), &"-7.69".into())
    );
    let cell = row(
        &ew,
        &[
            ("quarter", "2019Q3"),
            ("district_code", "500112"),
            ("division", "36"),
        ],
    );
    assert_eq!(
        (
            &cell["energy_intensity_yoy_pct"],
            &cell["water_intensity_yoy_pct"]
        ),
        (&"-16.67".into(), &"-11.11".into())
    );
    assert!(
        !ew.iter().any(|r| r["division"] == "51"),
        "wholesale is not industry"
    );

    // enterprise_profile 2019Q3, A: reports 2018Q4–2019Q3 (2018Q3 is outside the trailing four quarters):
    //   revenue 1,000,000 + 1,100,000 + 1,200,000 + 1,300,000 = 4,600,000.00; profit 60,000 + … + 90,000 = 300,000.00;
    //   financial expenses 46,000 ÷ cost 3,100,000 × 100 = 1.4839 → 1.48; debt 6,000,000 ÷ 10,000,000 = 60.00;
    //   loans L1 + L4 + L10 = 1,600,001.00 from 1 bank; open demands submitted 2018Q4–2019Q3: G2 (screened,
    //   5,000,000.00) — G1 is older, G3 is funded; bonds: F1 mtn 50,000,000.00 (2019-03-15); equity: F2 (2018-06-20)
    //   is older → 0.00; energy 100 ÷ 200 = 0.5000, water 1,000 ÷ 200 = 5.0000.
    // 2018Q3, A: one report (900,000.00), debt 5,000,000 ÷ 9,000,000 = 55.56, G1 open (1,000,000.00), equity 30,000,000.00.
    // 2019Q3, B: L9 at K2 has balance 0, so 1 lending bank; expenses −1,000 ÷ 450,000 = −0.22.
    // 2019Q3, D: total assets 0 → debt ratio null. W 2018Q3: no report → 0 quarters, nulls.
    let ep = query(
        p.path(),
        &wh,
        "SELECT * FROM published.enterprise_profile ORDER BY quarter, uscc",
    );
    assert_eq!(ep.len(), 10, "{ep:?}");
    let a = row(
        &ep,
        &[("quarter", "2019Q3"), ("uscc", "91500112MA5U00000E")],
    );
    for (k, v) in [
        ("reported_quarters", "4"),
        ("revenue_ttm", "4600000.00"),
        ("total_profit_ttm", "300000.00"),
        ("fin_expense_ratio_pct", "1.48"),
        ("debt_ratio_pct", "60.00"),
        ("loan_balance", "1600001.00"),
        ("lending_banks", "1"),
        ("open_demands", "1"),
        ("open_demand_amount", "5000000.00"),
        ("bond_raised_ttm", "50000000.00"),
        ("equity_raised_ttm", "0.00"),
        ("energy_per_10k_yuan", "0.5000"),
        ("water_per_10k_yuan", "5.0000"),
    ] {
        assert_eq!(a[k], v, "A 2019Q3 {k}: {a}");
    }
    assert_eq!(a["key_enterprise"], true);
    let a18 = row(
        &ep,
        &[("quarter", "2018Q3"), ("uscc", "91500112MA5U00000E")],
    );
    for (k, v) in [
        ("reported_quarters", "1"),
        ("revenue_ttm", "900000.00"),
        ("debt_ratio_pct", "55.56"),
        ("open_demand_amount", "1000000.00"),
        ("equity_raised_ttm", "30000000.00"),
    ] {
        assert_eq!(a18[k], v, "A 2018Q3 {k}: {a18}");
    }
    let b = row(
        &ep,
        &[("quarter", "2019Q3"), ("uscc", "91500112MA5U00001H")],
    );
    assert_eq!(
        (&b["lending_banks"], &b["fin_expense_ratio_pct"]),
        (&"1".into(), &"-0.22".into())
    );
    let d = row(
        &ep,
        &[("quarter", "2019Q3"), ("uscc", "91500110MA5U00004X")],
    );
    assert!(d["debt_ratio_pct"].is_null(), "{d}");
    let w = row(
        &ep,
        &[("quarter", "2018Q3"), ("uscc", "91500105MA5U00006W")],
    );
    assert_eq!(w["reported_quarters"], "0");
    assert!(
        w["revenue_ttm"].is_null() && w["fin_expense_ratio_pct"].is_null(),
        "{w}"
    );

    // demand_screening (policy: strategic divisions 27, 34–36, 38, 39; reports within 2 quarters;
    // amount ≤ 2.00 × the last four reported quarters' revenue). Open demands: G1, G2, G4, G5, G6 (G3 is funded).
    //   G1 A (36, 双百重点) 2018Q3: reports up to 2018Q3: 2018Q3 only → 900,000; 1,000,000 ≤ 1,800,000 → priority.
    //   G2 A 2019Q2: last four reports 2019Q2, 2019Q1, 2018Q4, 2018Q3 → 4,200,000; 5,000,000 ≤ 8,400,000 → priority.
    //   G4 C (26, 专精特新) 2019Q1: latest report 2018Q3 = 2019Q1 − 2, still current; 300,000 × 2 < 800,000 → review.
    //   G5 D (06) 2020Q2: latest report 2019Q3 < 2020Q2 − 2 → not current → review; 五类项目 transformation.
    //   G6 W (51) 2019Q3: current, 50,000 ≤ 200,000, none of the plan's kinds → eligible, no reasons.
    let ds = query(
        p.path(),
        &wh,
        "SELECT * FROM published.demand_screening ORDER BY demand_id",
    );
    let got: Vec<String> = ds
        .iter()
        .map(|r| {
            format!(
                "{} {} {}",
                r["demand_id"].as_str().unwrap(),
                r["result"].as_str().unwrap(),
                r["reasons"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            "G1 priority 三类企业: 战略性产业 36；三类企业: 双百企业",
            "G2 priority 三类企业: 战略性产业 36；三类企业: 双百企业",
            "G4 review 三类企业: 专精特新；金额超过近四期营业收入的 2.00 倍",
            "G5 review 五类项目: transformation；数据未更新: 最近报表 2019Q3",
            "G6 eligible ",
        ]
    );
    let g2 = row(&ds, &[("demand_id", "G2")]);
    assert_eq!(
        (
            &g2["latest_report_quarter"],
            &g2["revenue_4q"],
            &g2["three_kinds"],
            &g2["data_current"],
            &g2["amount_plausible"]
        ),
        (
            &"2019Q2".into(),
            &"4200000.00".into(),
            &true.into(),
            &true.into(),
            &true.into()
        )
    );
    let g4 = row(&ds, &[("demand_id", "G4")]);
    assert_eq!(
        (
            &g4["latest_report_quarter"],
            &g4["revenue_4q"],
            &g4["data_current"],
            &g4["amount_plausible"]
        ),
        (
            &"2018Q3".into(),
            &"300000.00".into(),
            &true.into(),
            &false.into()
        )
    );

    // demand_recommendations: the last 4 quarters of loan reports end at 2019Q3, so only 2019Q3's drawn loans count.
    //   G1, G2 (loan; 36, 500112): K1 drew L4 300,001 + L10 100,000 to A (36, 500112) → 2 loans, 400,001.00, both local.
    //   G4 (loan; 26, 500115): K2 drew L5 250,000 to C. G6 (loan; 51, 500105): K2 drew L8 50,000 to W.
    //   G5 wants receivables_pledge: no 2019Q3 loan to division 06 is pledged on receivables or supply-chain → none.
    let dr = query(
        p.path(),
        &wh,
        "SELECT * FROM published.demand_recommendations ORDER BY demand_id, rank",
    );
    let got: Vec<String> = dr
        .iter()
        .map(|r| {
            format!(
                "{} {} {} {} {} {}",
                r["demand_id"].as_str().unwrap(),
                r["rank"].as_str().unwrap(),
                r["bank_code"].as_str().unwrap(),
                r["matched_loans"].as_str().unwrap(),
                r["matched_amount"].as_str().unwrap(),
                r["local_loans"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            "G1 1 102653000013 2 400001.00 2",
            "G2 1 102653000013 2 400001.00 2",
            "G4 1 105653000010 1 250000.00 1",
            "G6 1 105653000010 1 50000.00 1",
        ]
    );
    assert_eq!(
        dr[0]["reason"],
        "近4个季度向36行业企业发放匹配贷款 2 笔 400001.00 元，其中同区县 2 笔"
    );
}

/// Copies warehouse `wh` to `copy` and rebuilds every aggregate of the copy in full.
fn rebuilt_copy(wh: &Path, copy: &Path, url: &str) {
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(wh)
        .arg(copy)
        .status()
        .unwrap();
    assert!(status.success());
    run_ok(ironlake(copy, url, TOKEN).args(["refresh", "--full"]));
}

fn published_digests(wh: &Path) -> serde_json::Value {
    py_json("published.py", &[wh.to_str().unwrap()])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duckdb_computes_the_same_indicators_independently() {
    let mut o = SimOptions::new(61, 400);
    o.token = Some(TOKEN.into());
    let sim = start_sim(o).await;
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let (url, w) = (sim.url(), wh.clone());
    tokio::task::spawn_blocking(move || {
        run_ok(ironlake(&w, &url, TOKEN).args(["ingest", "--all"]));
        run_ok(ironlake(&w, &url, TOKEN).arg("refresh"));
    })
    .await
    .unwrap();
    let policy = ironlake::config::load(&ironlake::config::LoadOptions {
        config: Some(repo().join("ironlake.toml")),
        warehouse: None,
    })
    .project
    .unwrap()
    .settings
    .policy;
    // The [policy] values as the SQL literals ironlake fills in, so both engines use the same parameters.
    let params: serde_json::Map<String, serde_json::Value> = policy
        .placeholders()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.into()))
        .collect();
    let params = serde_json::Value::Object(params).to_string();
    let r = py_json("crosscheck.py", &[wh.to_str().unwrap(), &params]);
    for (name, v) in r.as_object().unwrap() {
        assert!(
            v["rows"].as_u64().unwrap() > 0,
            "{name}: no rows to compare"
        );
        assert_eq!(v["mismatches"].as_array().unwrap().len(), 0, "{name}: {v}");
    }
    assert_eq!(r.as_object().unwrap().len(), 13);
    // The simulated city gives the plan's measures something to measure.
    let count = |sql: &str| -> u64 {
        let out = run_ok(
            ironlake(&wh, "http://127.0.0.1:9", TOKEN).args(["sql", sql, "--format", "csv"]),
        );
        out.lines().nth(1).unwrap().parse().unwrap()
    };
    let ceiling = ironlake::domain::decimal::format_decimal(policy.guarantee_fee_ceiling_pct, 4);
    for (what, sql) in [
        ("drawn guaranteed loans with a fee within the ceiling", format!("SELECT count(*) FROM bank_loans WHERE guarantee = 'guaranteed' AND disbursed > 0 AND guarantee_fee_pct <= {ceiling}")),
        ("drawn guaranteed loans with a fee above the ceiling", format!("SELECT count(*) FROM bank_loans WHERE guarantee = 'guaranteed' AND disbursed > 0 AND guarantee_fee_pct > {ceiling}")),
        ("双百 subsidies under the cap", "SELECT count(*) FROM published.working_capital_subsidy WHERE NOT capped".into()),
        ("双百 subsidies at the cap", "SELECT count(*) FROM published.working_capital_subsidy WHERE capped".into()),
        ("growth enterprises with working-capital loans", "SELECT count(*) FROM published.working_capital_subsidy WHERE growth_enterprise".into()),
        ("distinct energy intensities across divisions", "SELECT count(DISTINCT energy_per_10k_yuan) FROM published.energy_water_intensity WHERE quarter = '2019Q4' AND district_code = 'ALL' AND division <> 'ALL'".into()),
        ("distinct water intensities across divisions", "SELECT count(DISTINCT water_per_10k_yuan) FROM published.energy_water_intensity WHERE quarter = '2019Q4' AND district_code = 'ALL' AND division <> 'ALL'".into()),
        ("profiles with trailing-four-quarter revenue", "SELECT count(*) FROM published.enterprise_profile WHERE reported_quarters = 4".into()),
        ("banks with industrial lending", "SELECT count(*) FROM published.bank_lending WHERE quarter = '2019Q4' AND bank_code <> 'ALL'".into()),
    ] {
        let n = count(&sql);
        assert!(n >= 3, "only {n} {what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_refreshes_equal_a_full_rebuild_over_random_ingest_orders() {
    let mut early = SimOptions::new(71, 300);
    early.token = Some(TOKEN.into());
    early.to = "2018Q4".parse().unwrap();
    let mut late = early.clone();
    late.to = "2019Q4".parse().unwrap();
    let (early, late) = (start_sim(early).await, start_sim(late).await);
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let copy = dir.path().join("copy");
    let (eu, lu) = (early.url(), late.url());
    let (w, c) = (wh.clone(), copy.clone());
    let (incremental_runs, steps) = tokio::task::spawn_blocking(move || {
        let mut rng = Rng::new(7, "refresh-order", &[]);
        let pipelines = [
            "enterprises",
            "operations",
            "bank_loans",
            "financing_demands",
            "direct_financing",
        ];
        let mut incremental = 0;
        let mut steps = Vec::new();
        // Random backfills, first of the early city then of the later one (restating demands and adding quarters).
        for (url, n) in [(&eu, 6), (&lu, 8)] {
            for _ in 0..n {
                let p = pipelines[rng.range(0, 4) as usize];
                let from = rng.range(0, 11) as i32;
                let to = (from + rng.range(0, 4) as i32).min(11);
                let q = |i: i32| {
                    "2017Q1"
                        .parse::<ironlake::domain::Quarter>()
                        .unwrap()
                        .plus(i)
                        .to_string()
                };
                run_ok(ironlake(&w, url, TOKEN).args([
                    "backfill",
                    p,
                    "--from",
                    &q(from),
                    "--to",
                    &q(to),
                ]));
                let out = run_ok(ironlake(&w, url, TOKEN).arg("refresh"));
                incremental += out.matches(": incremental").count();
                steps.push(format!("{p} {}..{}", q(from), q(to)));
            }
        }
        // Finish with everything from the later city.
        run_ok(ironlake(&w, &lu, TOKEN).args(["ingest", "--all"]));
        let out = run_ok(ironlake(&w, &lu, TOKEN).arg("refresh"));
        incremental += out.matches(": incremental").count();
        rebuilt_copy(&w, &c, &lu);
        (incremental, steps)
    })
    .await
    .unwrap();
    assert!(
        incremental_runs >= 10,
        "only {incremental_runs} incremental refreshes in {steps:?}"
    );
    let inc = published_digests(&wh);
    let full = published_digests(&copy);
    assert_eq!(inc.as_object().unwrap().len(), common::PUBLISHED_AGGREGATES);
    for (name, v) in full.as_object().unwrap() {
        assert!(v["rows"].as_u64().unwrap() > 0, "{name} is empty");
        assert_eq!(
            &inc[name], v,
            "{name}: incremental differs from a full rebuild after {steps:?}"
        );
    }
}

/// The line `refresh` printed for one aggregate: `name: mode [quarters], …`.
fn refreshed<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(&format!("{name}: ")))
        .unwrap_or_else(|| panic!("no line for {name} in {out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restated_old_quarter_recomputes_only_what_reads_it() {
    let mut o = SimOptions::new(91, 200);
    o.token = Some(TOKEN.into());
    let sim = start_sim(o).await;
    let dir = tempfile::tempdir().unwrap();
    let (wh, copy) = (dir.path().join("wh"), dir.path().join("copy"));
    let (url, w, c, d) = (
        sim.url(),
        wh.clone(),
        copy.clone(),
        dir.path().to_path_buf(),
    );
    let outs = tokio::task::spawn_blocking(move || {
        run_ok(ironlake(&w, &url, TOKEN).args(["ingest", "--all"]));
        run_ok(ironlake(&w, &url, TOKEN).arg("refresh"));
        // One drawn loan of `quarter` restated (1 yuan more drawn), imported
        // as its bank would redeliver it; then an incremental refresh.
        let restate = |quarter: &str| {
            let csv = run_ok(ironlake(&w, &url, TOKEN).args([
                "sql",
                &format!(
                    "SELECT bank_code, loan_id, period_end, uscc, balance, disbursed + 1 AS disbursed, \
                     rate_pct, term, guarantee, product, guarantee_fee_pct FROM bank_loans \
                     WHERE quarter = '{quarter}' AND disbursed > 0 ORDER BY loan_id LIMIT 1"
                ),
                "--format",
                "csv",
            ]));
            assert_eq!(csv.lines().count(), 2, "{csv}");
            let file = d.join(format!("restated-{quarter}.csv"));
            std::fs::write(&file, csv).unwrap();
            let out = run_ok(
                ironlake(&w, &url, TOKEN)
                    .args(["import", "bank_loans"])
                    .arg(&file)
                    .args(["--format", "csv"]),
            );
            assert!(out.contains(" 0 rejected"), "{out}");
            run_ok(ironlake(&w, &url, TOKEN).arg("refresh"))
        };
        // 2018Q2 is before the recommendations' lookback (the latest 4
        // quarters: 2019Q1–2019Q4); 2019Q3 is inside it.
        let outs = (restate("2018Q2"), restate("2019Q3"));
        rebuilt_copy(&w, &c, &url);
        outs
    })
    .await
    .unwrap();
    let (old, recent) = outs;
    // Loans enter the profile only in their own quarter (lags(bank_loans) = 0),
    // though its other inputs are read over four quarters.
    assert!(
        refreshed(&old, "enterprise_profile")
            .starts_with("enterprise_profile: incremental [2018Q2],"),
        "{old}"
    );
    // The loans are joined with the registry for the changed quarter alone;
    // the year-on-year growth reads that quarter's bank totals a year on.
    assert!(
        refreshed(&old, "bank_lending_quarterly")
            .starts_with("bank_lending_quarterly: incremental [2018Q2],"),
        "{old}"
    );
    assert!(
        refreshed(&old, "bank_lending").starts_with("bank_lending: incremental [2018Q2, 2019Q2],"),
        "{old}"
    );
    // Before the lookback: the recommendations, and the list that shows
    // them, keep their published versions.
    for name in ["demand_recommendations", "matching_list"] {
        assert!(
            refreshed(&old, name).starts_with(&format!("{name}: unchanged,")),
            "{old}"
        );
    }
    // Inside it: they are recomputed.
    assert!(
        refreshed(&recent, "demand_recommendations").starts_with("demand_recommendations: full"),
        "{recent}"
    );
    assert!(
        refreshed(&recent, "enterprise_profile")
            .starts_with("enterprise_profile: incremental [2019Q3],"),
        "{recent}"
    );
    // And every aggregate equals a full rebuild.
    let inc = published_digests(&wh);
    let full = published_digests(&copy);
    assert_eq!(inc.as_object().unwrap().len(), common::PUBLISHED_AGGREGATES);
    for (name, v) in full.as_object().unwrap() {
        assert_eq!(
            &inc[name], v,
            "{name}: incremental differs from a full rebuild"
        );
    }
}

/// An aggregate whose definition changed (here a policy value its SQL
/// uses) is recomputed whole at the next refresh, though none of its
/// inputs changed, so no quarter keeps rows of the old definition; the
/// others keep their published versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_definition_is_recomputed_whole() {
    let mut o = SimOptions::new(92, 150);
    o.token = Some(TOKEN.into());
    let sim = start_sim(o).await;
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let quarter_share = project_dir(|t| {
        assert!(t.contains("interest_subsidy_share_pct = \"50.00\""));
        t.replace(
            "interest_subsidy_share_pct = \"50.00\"",
            "interest_subsidy_share_pct = \"25.00\"",
        )
    });
    let (url, w, p) = (sim.url(), wh.clone(), quarter_share.path().to_path_buf());
    let (before, edited, again) = tokio::task::spawn_blocking(move || {
        run_ok(ironlake(&w, &url, TOKEN).args(["ingest", "--all"]));
        run_ok(ironlake(&w, &url, TOKEN).arg("refresh"));
        let before = query(
            &p,
            &w,
            "SELECT count(*) AS n, count(DISTINCT quarter) AS quarters, \
             min(subsidy_share_pct) AS share FROM published.interest_subsidy",
        );
        let edited = run_ok(cmd(&p, &w).arg("refresh"));
        let again = run_ok(cmd(&p, &w).arg("refresh"));
        (before, edited, again)
    })
    .await
    .unwrap();
    assert_eq!(before[0]["share"], "50.00", "{before:?}");
    assert!(
        refreshed(&edited, "interest_subsidy").starts_with("interest_subsidy: full"),
        "{edited}"
    );
    for name in ["loan_growth", "enterprise_profile", "financing_cost"] {
        assert!(
            refreshed(&edited, name).starts_with(&format!("{name}: unchanged,")),
            "{edited}"
        );
    }
    assert!(
        refreshed(&again, "interest_subsidy").starts_with("interest_subsidy: unchanged,"),
        "{again}"
    );
    // Every quarter now has the new share, none the old.
    let after = query(
        quarter_share.path(),
        &wh,
        "SELECT count(*) AS n, count(DISTINCT quarter) AS quarters, \
         min(subsidy_share_pct) AS lo, max(subsidy_share_pct) AS hi FROM published.interest_subsidy",
    );
    assert_eq!(after[0]["n"], before[0]["n"], "{after:?}");
    assert_eq!(after[0]["quarters"], before[0]["quarters"], "{after:?}");
    assert_eq!(
        (&after[0]["lo"], &after[0]["hi"]),
        (&"25.00".into(), &"25.00".into()),
        "{after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_are_kept_readable_then_pruned_by_retention() {
    // No time-based grace for superseded files, so pruning shows at once.
    let p = project_dir(|c| {
        c.replace("retention_versions = 3", "retention_versions = 2")
            .replace(
                "superseded_retention_secs = 3600",
                "superseded_retention_secs = 0",
            )
    });
    let mut o = SimOptions::new(81, 120);
    o.token = Some(TOKEN.into());
    o.to = "2018Q2".parse().unwrap();
    let early = start_sim(o.clone()).await;
    o.to = "2019Q4".parse().unwrap();
    let late = start_sim(o).await;
    let wh = p.path().join("wh");
    let pdir: PathBuf = p.path().to_path_buf();
    let (eu, lu) = (early.url(), late.url());
    let generations = tokio::task::spawn_blocking(move || {
        let run = |url: &str, args: &[&str]| {
            run_ok(
                cmd(&pdir, &wh)
                    .env("IRONLAKE_FEED_URL", url)
                    .env("IRONLAKE_FEED_TOKEN", TOKEN)
                    .args(args),
            )
        };
        let mut gens = Vec::new();
        for (url, to) in [(&eu, "2018Q2"), (&lu, "2018Q4"), (&lu, "2019Q4")] {
            run(
                url,
                &["backfill", "bank_loans", "--from", "2017Q1", "--to", to],
            );
            run(
                url,
                &["backfill", "enterprises", "--from", "2017Q1", "--to", to],
            );
            run(url, &["refresh", "loan_growth"]);
            let m = latest_manifest(&wh);
            let v = m["published"]["loan_growth"]["versions"]
                .as_array()
                .unwrap()
                .clone();
            gens.push(v);
        }
        (gens, wh)
    })
    .await
    .unwrap();
    let (gens, wh) = generations;
    assert_eq!(gens[0].len(), 1);
    assert_eq!(gens[1].len(), 2, "the previous version is kept");
    assert_eq!(gens[2].len(), 2, "pruned to retention_versions = 2");
    let oldest = gens[1][0]["generation"].as_str().unwrap().to_string();
    assert!(
        gens[2].iter().all(|v| v["generation"] != oldest.as_str()),
        "the oldest version was pruned"
    );
    for v in &gens[2] {
        assert!(
            wh.join(v["generation"].as_str().unwrap()).exists(),
            "a retained version is readable"
        );
        assert!(v["rows"].as_u64().unwrap() > 0);
    }
    assert!(gens[2][1]["version"].as_u64() > gens[2][0]["version"].as_u64());
    // Once no retained manifest names it any more, its files are collected.
    let p2: PathBuf = p.path().to_path_buf();
    let w2 = wh.clone();
    tokio::task::spawn_blocking(move || {
        for _ in 0..3 {
            run_ok(cmd(&p2, &w2).args(["refresh", "--full", "loan_growth"]));
        }
    })
    .await
    .unwrap();
    assert!(
        !wh.join(&oldest).exists(),
        "the pruned version's files are still on disk"
    );
}

fn latest_manifest(wh: &Path) -> serde_json::Value {
    let mut names: Vec<PathBuf> = std::fs::read_dir(wh.join("_ironlake/manifests"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    serde_json::from_slice(&std::fs::read(names.last().unwrap()).unwrap()).unwrap()
}
