//! Property tests (fuzzing on stable Rust) for everything a partner or an
//! analyst controls: the three decoders, the `Link` parser, the config
//! loaders and the SQL guard. None may panic or overflow the stack on any
//! input, and each keeps its own invariants.
//!
//! `ops/test.sh` runs a bounded number of cases (proptest's default, 256 per
//! property); `ops/fuzz.sh` runs a long campaign by raising `PROPTEST_CASES`.

use ironlake::config::diag::SourceFile;
use ironlake::config::pipeline::Format;
use ironlake::decode::{Columns, decode};
use proptest::prelude::*;

/// Bytes biased towards what matters to the parsers: quotes, separators,
/// brackets, newlines, escapes and invalid UTF-8, mixed with anything.
fn structured_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    let pieces = prop::sample::select(vec![
        &b"\""[..],
        b",",
        b"\n",
        b"\r\n",
        b"{",
        b"}",
        b"[",
        b"]",
        b":",
        b"\\",
        b"\"id\"",
        b"\"amount\":",
        b"12.50",
        b"null",
        b"\xff",
        b"\xe4\xb8",
        b"id,amount,day\n",
        b" ",
        b"x",
    ]);
    prop::collection::vec(
        prop_oneof![
            3 => pieces.prop_map(|p| p.to_vec()),
            1 => prop::collection::vec(any::<u8>(), 0..4),
        ],
        0..max,
    )
    .prop_map(|parts| parts.concat())
}

fn columns() -> Columns {
    Columns::new(["id", "amount", "day"])
}

proptest! {
    #[test]
    fn decoders_never_panic_and_account_for_every_item(body in structured_bytes(200)) {
        for format in [Format::Json, Format::Ndjson, Format::Csv] {
            if let Ok(page) = decode(format, None, None, &columns(), &body) {
                prop_assert_eq!(page.records.len() as u64 + page.bad.len() as u64, page.items);
                for r in &page.records {
                    prop_assert!(r.no >= 1);
                    prop_assert_eq!(r.cells.len(), 3);
                }
            }
        }
        // Records wrapped in an object, with a cursor field.
        let _ = decode(Format::Json, Some("data"), Some("next"), &columns(), &body);
    }

    #[test]
    fn csv_rows_keep_their_text(cells in prop::collection::vec("[a-z0-9,\"\n ]{0,8}", 1..20)) {
        // Any cell text, quoted the RFC 4180 way, comes back exactly.
        let mut body = String::from("id\n");
        for c in &cells {
            body.push('"');
            body.push_str(&c.replace('"', "\"\""));
            body.push_str("\"\n");
        }
        let page = decode(Format::Csv, None, None, &Columns::new(["id"]), body.as_bytes()).unwrap();
        prop_assert_eq!(page.records.len() + page.bad.len(), cells.len());
        let got: Vec<String> = page
            .records
            .iter()
            .map(|r| match &r.cells[0] {
                Some(ironlake::decode::Cell::Text(t)) => t.to_string(),
                _ => String::new(),
            })
            .collect();
        prop_assert_eq!(got, cells);
    }

    #[test]
    fn link_parser_never_panics_and_returns_a_url_from_the_header(header in "[<>;,=\" a-z:/.?&0-9]{0,80}") {
        if let Some(url) = ironlake::source::next_link(&header) {
            prop_assert!(header.contains(&url));
        }
    }

    #[test]
    fn sql_guard_never_panics_or_overflows(parts in prop::collection::vec(
        prop::sample::select(vec![
            "SELECT", "1", "+", "(", ")", "FROM", "t", "WHERE", "a", "=", "AND", "OR", ",",
            "'x'", "--c\n", "/*", "*/", ";", "CASE", "WHEN", "THEN", "END", "NOT", "IN", "COPY",
            "INSERT", "DROP", "WITH", "x AS", "::", "||", "\"q\"", "$1", "'", "\\",
        ]),
        0..3000,
    )) {
        let sql = parts.join(" ");
        let _ = ironlake::query::check_read_only(&sql);
    }

    #[test]
    fn pipeline_loader_never_panics(text in "[a-z_=\\[\\]\"{}$ .0-9\n#:/?*-]{0,300}") {
        let _ = ironlake::config::pipeline::load(&SourceFile::new("pipelines/x.toml", text), "x");
    }

    #[test]
    fn schema_and_settings_loaders_never_panic(text in "[a-z_=\\[\\]\"(),.0-9\n #-]{0,300}") {
        let _ = ironlake::config::schema::load(&SourceFile::new("schemas/x.toml", text.clone()));
        let _ = ironlake::config::settings::load(
            &SourceFile::new("ironlake.toml", text),
            std::path::Path::new("."),
        );
    }
}

/// Mutations of the bundled pipeline files: each line dropped, duplicated or
/// given a changed value, so the loader sees nearly valid input too.
#[test]
fn pipeline_loader_survives_mutations_of_the_bundled_files() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
    let mut runner = proptest::test_runner::TestRunner::default();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|x| x != "toml") {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        let lines: Vec<String> = text.lines().map(String::from).collect();
        let n = lines.len();
        runner
            .run(
                &(0..n, 0..3u8, "[a-z0-9\"_ ,{}-]{0,12}"),
                |(i, how, junk)| {
                    let mut l = lines.clone();
                    match how {
                        0 => {
                            l.remove(i);
                        }
                        1 => l.insert(i, l[i].clone()),
                        _ => {
                            if let Some((k, _)) = l[i].split_once('=') {
                                l[i] = format!("{k}= {junk}");
                            }
                        }
                    }
                    let _ = ironlake::config::pipeline::load(
                        &SourceFile::new("pipelines/x.toml", l.join("\n")),
                        "x",
                    );
                    Ok(())
                },
            )
            .unwrap();
    }
}
