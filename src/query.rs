//! Read-only SQL over a snapshot, and result writers that stream.
//!
//! Only queries (SELECT, WITH, VALUES, EXPLAIN, SHOW/DESCRIBE) are accepted:
//! DDL, DML, COPY, SET, CREATE EXTERNAL TABLE, URL tables and paths are
//! refused before planning with a message that says why, and the plan is
//! checked again with DataFusion's `SQLOptions`.

use crate::catalog::Snapshot;
use arrow::array::RecordBatch;
use datafusion::dataframe::DataFrame;
use datafusion::execution::context::SQLOptions;
use datafusion::sql::parser::{DFParser, Statement as DFStatement};
use datafusion::sql::sqlparser::ast::Statement;
use futures::StreamExt;
use std::io::Write;

/// Why a query was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The statement would change something.
    #[error(
        "ironlake SQL is read-only: {0} is not allowed; only queries (SELECT, WITH, EXPLAIN, SHOW, DESCRIBE) run here, and the warehouse changes only through ingest and refresh"
    )]
    ReadOnly(String),
    /// The query names a file or URL instead of a table.
    #[error(
        "{0:?} is a path or URL, not a table: ironlake SQL reads warehouse tables only (list them with SHOW TABLES)"
    )]
    Path(String),
    /// More than one statement.
    #[error("one statement at a time, please ({0} given)")]
    Multiple(usize),
    /// The statement is too long or its expressions nest too deeply to plan safely.
    #[error("{0}")]
    TooComplex(String),
    /// Parsing, planning or execution failed.
    #[error("{0}")]
    Sql(String),
    /// Writing the results failed.
    #[error("writing results: {0}")]
    Output(String),
}

fn df_err(e: datafusion::error::DataFusionError) -> QueryError {
    QueryError::Sql(e.to_string())
}

/// The `SQLOptions` every query runs with.
pub fn read_only_options() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

fn first_words(sql: &str, n: usize) -> String {
    sql.split_whitespace()
        .take(n)
        .collect::<Vec<_>>()
        .join(" ")
        .to_uppercase()
}

fn check_statement(s: &Statement, sql: &str) -> Result<(), QueryError> {
    match s {
        Statement::Query(_) => Ok(()),
        Statement::Explain { statement, .. } => check_statement(statement, sql),
        Statement::ShowTables { .. }
        | Statement::ShowColumns { .. }
        | Statement::ExplainTable { .. } => Ok(()),
        Statement::Set(_) => Err(QueryError::ReadOnly("SET".into())),
        Statement::Insert(_) => Err(QueryError::ReadOnly("INSERT".into())),
        Statement::Update { .. } => Err(QueryError::ReadOnly("UPDATE".into())),
        Statement::Delete(_) => Err(QueryError::ReadOnly("DELETE".into())),
        Statement::Copy { .. } => Err(QueryError::ReadOnly("COPY".into())),
        Statement::CreateTable(_) => Err(QueryError::ReadOnly("CREATE TABLE".into())),
        Statement::CreateView { .. } => Err(QueryError::ReadOnly("CREATE VIEW".into())),
        Statement::Drop { .. } => Err(QueryError::ReadOnly("DROP".into())),
        _ => Err(QueryError::ReadOnly(first_words(sql, 2))),
    }
}

/// Longest statement accepted, in bytes.
pub const MAX_STATEMENT_BYTES: usize = 256 * 1024;
/// Deepest parenthesis nesting accepted.
pub const MAX_PAREN_DEPTH: usize = 64;
/// Most binary operators in one chain (`a + b + … `, `x OR y OR …`): each
/// one is a level of the expression tree the planner walks recursively.
pub const MAX_OPERATOR_CHAIN: usize = 1000;

/// Refuses statements too long or too deeply nested to plan safely, before
/// anything recursive (the parser, the planner, dropping the tree) sees them.
/// Works on the flat token stream, so it cannot itself overflow the stack.
pub fn check_complexity(sql: &str) -> Result<(), QueryError> {
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::keywords::Keyword;
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
    if sql.len() > MAX_STATEMENT_BYTES {
        return Err(QueryError::TooComplex(format!(
            "the statement is {} bytes long; the limit is {MAX_STATEMENT_BYTES} bytes",
            sql.len()
        )));
    }
    let tokens = Tokenizer::new(&GenericDialect {}, sql)
        .tokenize()
        .map_err(|e| QueryError::Sql(format!("SQL syntax: {e}")))?;
    // One operator count per open parenthesis level.
    let mut chains: Vec<usize> = vec![0];
    for t in &tokens {
        let chain = chains.last_mut().expect("never empty");
        match t {
            Token::LParen => {
                chains.push(0);
                if chains.len() > MAX_PAREN_DEPTH + 1 {
                    return Err(QueryError::TooComplex(format!(
                        "parentheses nest more than {MAX_PAREN_DEPTH} levels deep; simplify the query"
                    )));
                }
            }
            Token::RParen => {
                if chains.len() > 1 {
                    chains.pop();
                }
            }
            Token::Comma | Token::SemiColon => *chain = 0,
            Token::Word(w) => match w.keyword {
                Keyword::AND | Keyword::OR | Keyword::LIKE | Keyword::ILIKE => *chain += 1,
                Keyword::NoKeyword
                | Keyword::NOT
                | Keyword::IS
                | Keyword::NULL
                | Keyword::TRUE
                | Keyword::FALSE
                | Keyword::IN
                | Keyword::BETWEEN => {}
                _ => *chain = 0,
            },
            Token::Plus
            | Token::Minus
            | Token::Mul
            | Token::Div
            | Token::Mod
            | Token::StringConcat
            | Token::Eq
            | Token::Neq
            | Token::Lt
            | Token::Gt
            | Token::LtEq
            | Token::GtEq
            | Token::Caret
            | Token::Ampersand
            | Token::Pipe
            | Token::DoubleColon => *chain += 1,
            _ => {}
        }
        if *chains.last().expect("never empty") > MAX_OPERATOR_CHAIN {
            return Err(QueryError::TooComplex(format!(
                "an expression chains more than {MAX_OPERATOR_CHAIN} operators; use IN (…), a CASE or an aggregate instead"
            )));
        }
    }
    Ok(())
}

/// Refuses anything that is not a read-only query over warehouse tables.
pub fn check_read_only(sql: &str) -> Result<(), QueryError> {
    check_complexity(sql)?;
    let statements = DFParser::parse_sql(sql).map_err(df_err)?;
    if statements.len() != 1 {
        return Err(QueryError::Multiple(statements.len()));
    }
    let stmt = &statements[0];
    match stmt {
        DFStatement::Statement(s) => check_statement(s, sql)?,
        DFStatement::CreateExternalTable(_) => {
            return Err(QueryError::ReadOnly("CREATE EXTERNAL TABLE".into()));
        }
        DFStatement::CopyTo(_) => return Err(QueryError::ReadOnly("COPY".into())),
        DFStatement::Explain(e) => match e.statement.as_ref() {
            DFStatement::Statement(s) => check_statement(s, sql)?,
            _ => return Err(QueryError::ReadOnly(first_words(sql, 3))),
        },
        _ => return Err(QueryError::ReadOnly(first_words(sql, 2))),
    }
    let (tables, _ctes) =
        datafusion::sql::resolve::resolve_table_references(stmt, true).map_err(df_err)?;
    for t in tables {
        let name = t.table();
        if name.contains('/')
            || name.contains("://")
            || name.contains('\\')
            || name.ends_with(".parquet")
            || name.ends_with(".csv")
            || name.ends_with(".json")
        {
            return Err(QueryError::Path(name.to_string()));
        }
    }
    Ok(())
}

/// Plans a read-only query on a snapshot.
pub async fn sql(snapshot: &Snapshot, sql: &str) -> Result<DataFrame, QueryError> {
    check_read_only(sql)?;
    snapshot
        .ctx
        .sql_with_options(sql, read_only_options())
        .await
        .map_err(df_err)
}

/// Result formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// An aligned text table.
    Table,
    /// CSV with a header row.
    Csv,
    /// A JSON array of objects.
    Json,
    /// A Parquet file (needs --output).
    Parquet,
}

/// Streams a query's results to `out`; returns the number of rows written.
pub async fn write_results(
    df: DataFrame,
    format: OutputFormat,
    out: Box<dyn Write + Send>,
) -> Result<u64, QueryError> {
    let schema = std::sync::Arc::new(df.schema().as_arrow().clone());
    let mut stream = df.execute_stream().await.map_err(df_err)?;
    let oerr = |e: &dyn std::fmt::Display| QueryError::Output(e.to_string());
    let mut rows = 0u64;
    match format {
        OutputFormat::Table => {
            let mut out = out;
            let mut pending: Vec<RecordBatch> = Vec::new();
            let mut pending_rows = 0;
            let mut printed_any = false;
            while let Some(b) = stream.next().await {
                let b = b.map_err(df_err)?;
                rows += b.num_rows() as u64;
                pending_rows += b.num_rows();
                pending.push(b);
                if pending_rows >= 10_000 {
                    let t = arrow::util::pretty::pretty_format_batches(&pending)
                        .map_err(|e| oerr(&e))?;
                    writeln!(out, "{t}").map_err(|e| oerr(&e))?;
                    pending.clear();
                    pending_rows = 0;
                    printed_any = true;
                }
            }
            if !pending.is_empty() || !printed_any {
                if pending.is_empty() {
                    pending.push(RecordBatch::new_empty(schema.clone()));
                }
                let t =
                    arrow::util::pretty::pretty_format_batches(&pending).map_err(|e| oerr(&e))?;
                writeln!(out, "{t}").map_err(|e| oerr(&e))?;
            }
            writeln!(out, "({rows} row{})", if rows == 1 { "" } else { "s" })
                .map_err(|e| oerr(&e))?;
        }
        OutputFormat::Csv => {
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(out);
            let mut any = false;
            while let Some(b) = stream.next().await {
                let b = b.map_err(df_err)?;
                rows += b.num_rows() as u64;
                w.write(&b).map_err(|e| oerr(&e))?;
                any = true;
            }
            if !any {
                w.write(&RecordBatch::new_empty(schema.clone()))
                    .map_err(|e| oerr(&e))?;
            }
        }
        OutputFormat::Json => {
            let mut w = arrow::json::ArrayWriter::new(out);
            while let Some(b) = stream.next().await {
                let b = b.map_err(df_err)?;
                rows += b.num_rows() as u64;
                w.write(&b).map_err(|e| oerr(&e))?;
            }
            w.finish().map_err(|e| oerr(&e))?;
            let mut out = w.into_inner();
            if rows == 0 {
                out.write_all(b"[]").map_err(|e| oerr(&e))?;
            }
            out.write_all(b"\n").map_err(|e| oerr(&e))?;
        }
        OutputFormat::Parquet => {
            let mut w = parquet::arrow::ArrowWriter::try_new(
                out,
                schema.clone(),
                Some(crate::warehouse::merge::writer_properties()),
            )
            .map_err(|e| oerr(&e))?;
            while let Some(b) = stream.next().await {
                let b = b.map_err(df_err)?;
                rows += b.num_rows() as u64;
                w.write(&b).map_err(|e| oerr(&e))?;
            }
            w.close().map_err(|e| oerr(&e))?;
        }
    }
    Ok(rows)
}
