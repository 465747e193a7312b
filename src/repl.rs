//! The interactive SQL shell of `ironlake sql` (no query given): history,
//! multi-line input ending at `;`, `\dt` to list tables, `\d NAME` to
//! describe one, `\format FMT`, `\x` for expanded display, `\q` to quit.

use anyhow::Result;
use ironlake::catalog::Catalog;
use ironlake::query::{self, OutputFormat};
use std::process::ExitCode;

const HELP: &str = "\
Enter SQL ending with ';' (it may span lines). Commands:
  \\dt            list tables (also .tables)
  \\d NAME        describe a table (also .describe NAME)
  \\format FMT    table, csv or json
  \\x             expanded display on/off: one block per row, a line per column
  \\q             quit (also .quit, exit, Ctrl-D)
  \\?             this help";

async fn run_query(catalog: &Catalog, sql: &str, format: OutputFormat) {
    run_query_as(catalog, sql, format, false).await
}

async fn run_query_as(catalog: &Catalog, sql: &str, format: OutputFormat, expanded: bool) {
    let snapshot = match catalog.snapshot().await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return;
        }
    };
    let started = std::time::Instant::now();
    let df = match query::sql(&snapshot, sql).await {
        Ok(df) => df,
        Err(e) => {
            eprintln!("error: {e}");
            return;
        }
    };
    let done = if expanded && format == OutputFormat::Table {
        print_expanded(df).await
    } else {
        query::write_results(df, format, Box::new(std::io::stdout()))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    match done {
        Ok(()) => eprintln!("({:.3}s)", started.elapsed().as_secs_f64()),
        Err(e) => eprintln!("error: {e}"),
    }
}

/// Prints rows psql's `\x` way: a header per row, then `column | value` lines.
async fn print_expanded(df: datafusion::dataframe::DataFrame) -> Result<(), String> {
    use futures::StreamExt as _;
    let names: Vec<String> = df
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let width = names.iter().map(|n| n.chars().count()).max().unwrap_or(0);
    let mut stream = df
        .execute_stream()
        .await
        .map_err(|e| query::describe(&e, &[]))?;
    let opts = arrow::util::display::FormatOptions::default().with_null("NULL");
    let mut row = 0u64;
    while let Some(b) = stream.next().await {
        let b = b.map_err(|e| query::describe(&e, &[]))?;
        let cols: Vec<_> = b
            .columns()
            .iter()
            .map(|c| arrow::util::display::ArrayFormatter::try_new(c.as_ref(), &opts))
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        for i in 0..b.num_rows() {
            row += 1;
            println!("-[ RECORD {row} ]{}", "-".repeat(width.saturating_sub(8)));
            for (name, col) in names.iter().zip(&cols) {
                println!("{name:<width$} | {}", col.value(i));
            }
        }
    }
    println!("({row} row{})", if row == 1 { "" } else { "s" });
    Ok(())
}

async fn list_tables(catalog: &Catalog) {
    run_query(
        catalog,
        "SELECT table_schema, table_name, table_type FROM information_schema.tables \
         WHERE table_schema <> 'information_schema' AND table_name NOT LIKE '\\_\\_%' ESCAPE '\\' ORDER BY 1, 2",
        OutputFormat::Table,
    )
    .await;
}

async fn describe(catalog: &Catalog, name: &str) {
    if let Some(t) = catalog.project().table(name) {
        println!("{} — {}", t.name, t.description);
        println!(
            "key ({}), partitioned by quarter of {}",
            t.primary_key_names().join(", "),
            t.period().name
        );
        for c in &t.columns {
            let unit = c
                .unit
                .as_deref()
                .map(|u| format!(" [{u}]"))
                .unwrap_or_default();
            let null = if c.nullable { "" } else { " not null" };
            let allowed = c
                .allowed
                .as_ref()
                .map(|a| format!(" ∈ {{{}}}", a.join(", ")))
                .unwrap_or_default();
            println!(
                "  {:<20} {}{null}{unit}{allowed}  — {}",
                c.name, c.data_type, c.description
            );
        }
        println!(
            "  {:<20} Utf8 not null  — partition (YYYYQn)",
            ironlake::config::schema::PARTITION_COLUMN
        );
        return;
    }
    if let Some(def) = name
        .strip_prefix("published.")
        .and_then(|n| ironlake::models::definitions(catalog.project()).remove(n))
    {
        describe_aggregate(catalog, &def).await;
        return;
    }
    run_query(catalog, &format!("DESCRIBE {name}"), OutputFormat::Table).await;
}

/// `\d published.<name>`: how the aggregate is made (口径说明) — its
/// description, then each column with type, unit, Chinese name and formula.
async fn describe_aggregate(catalog: &Catalog, def: &ironlake::models::Definition) {
    println!("published.{} — {}", def.name, def.description);
    println!(
        "defined in {}; partitioned by quarter; {}",
        def.file, def.refresh
    );
    for (k, v) in &def.policy {
        println!("policy {k} = {v}");
    }
    let types: Vec<(String, String)> = match catalog.snapshot().await {
        Ok(s) => match s
            .ctx
            .table(format!("published.{}", def.name).as_str())
            .await
        {
            Ok(df) => df
                .schema()
                .fields()
                .iter()
                .map(|f| (f.name().clone(), f.data_type().to_string()))
                .collect(),
            Err(_) => Vec::new(),
        },
        Err(_) => Vec::new(),
    };
    for c in &def.columns {
        let ty = types
            .iter()
            .find(|(n, _)| n == &c.name)
            .map_or("(not published yet)", |(_, t)| t.as_str());
        let unit = c
            .unit
            .as_deref()
            .map(|u| format!(" [{u}]"))
            .unwrap_or_default();
        println!("  {:<26} {ty}{unit}  {} — {}", c.name, c.label, c.formula);
    }
}

/// Runs the shell until the user quits.
pub async fn run(catalog: &Catalog, mut format: OutputFormat) -> Result<ExitCode> {
    let mut rl = rustyline::DefaultEditor::new()?;
    let history =
        std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".ironlake_history"));
    if let Some(h) = &history {
        let _ = rl.load_history(h);
    }
    if format == OutputFormat::Parquet {
        format = OutputFormat::Table;
    }
    println!(
        "ironlake SQL (read-only) on {} — \\? for help",
        catalog.warehouse().root().display()
    );
    let mut buf = String::new();
    let mut expanded = false;
    loop {
        let prompt = if buf.is_empty() {
            "ironlake> "
        } else {
            "     ...> "
        };
        let line = match rl.readline(prompt) {
            Ok(l) => l,
            Err(rustyline::error::ReadlineError::Interrupted) => {
                buf.clear();
                continue;
            }
            Err(_) => break,
        };
        let trimmed = line.trim();
        if buf.is_empty()
            && (trimmed.starts_with('\\')
                || trimmed.starts_with('.')
                || trimmed == "exit"
                || trimmed == "quit")
        {
            let _ = rl.add_history_entry(trimmed);
            let mut parts = trimmed.split_whitespace();
            match (parts.next().unwrap_or(""), parts.next()) {
                ("\\q" | ".quit" | "exit" | "quit", _) => break,
                ("\\dt" | ".tables", _) => list_tables(catalog).await,
                ("\\d" | ".describe", Some(name)) => describe(catalog, name).await,
                ("\\d" | ".describe", None) => list_tables(catalog).await,
                ("\\format", Some(f)) => match f {
                    "table" => format = OutputFormat::Table,
                    "csv" => format = OutputFormat::Csv,
                    "json" => format = OutputFormat::Json,
                    other => eprintln!("unknown format {other:?}; use table, csv or json"),
                },
                ("\\x", _) => {
                    expanded = !expanded;
                    println!(
                        "Expanded display is {}.",
                        if expanded { "on" } else { "off" }
                    );
                }
                ("\\?" | "\\h" | ".help", _) => println!("{HELP}"),
                (other, _) => eprintln!("unknown command {other}; \\? lists the commands"),
            }
            continue;
        }
        if trimmed.is_empty() && buf.is_empty() {
            continue;
        }
        buf.push_str(&line);
        buf.push('\n');
        if trimmed.ends_with(';') {
            let sql = buf.trim().trim_end_matches(';').to_string();
            let _ = rl.add_history_entry(buf.trim());
            buf.clear();
            run_query_as(catalog, &sql, format, expanded).await;
        }
    }
    if let Some(h) = &history {
        let _ = rl.save_history(h);
    }
    Ok(ExitCode::SUCCESS)
}
