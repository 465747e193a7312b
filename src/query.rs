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
    /// The statement is not valid SQL.
    #[error("{0}")]
    Sql(String),
    /// The engine refused or failed the query; the message is for people,
    /// the source says who must act (see [`QueryError::actor`]).
    #[error("{message}")]
    Engine {
        /// The error as a sentence (see [`describe`]).
        message: String,
        /// The engine's error, kept whole.
        #[source]
        source: datafusion::error::DataFusionError,
    },
    /// Writing the results failed.
    #[error("writing results: {0}")]
    Output(String),
}

fn df_err(e: datafusion::error::DataFusionError) -> QueryError {
    engine_err(e, &[])
}

fn engine_err(e: datafusion::error::DataFusionError, tables: &[String]) -> QueryError {
    QueryError::Engine {
        message: describe(&e, tables),
        source: e,
    }
}

impl QueryError {
    /// Who must act on this error (our memory limit is the operator's setting).
    pub fn actor(&self) -> crate::Actor {
        use crate::Actor;
        use datafusion::error::DataFusionError as E;
        match self {
            QueryError::Output(_) => Actor::Ours,
            QueryError::Engine { source, .. } => match source.find_root() {
                E::ResourcesExhausted(_) => Actor::Operator,
                E::Internal(_) | E::IoError(_) | E::ParquetError(_) | E::ObjectStore(_) => {
                    Actor::Ours
                }
                _ => Actor::Analyst,
            },
            _ => Actor::Analyst,
        }
    }
}

/// A DataFusion error as a sentence for people: no Rust debug formatting,
/// no internal catalog prefixes, and for an unknown table the closest of
/// `tables` ("did you mean …?").
pub fn describe(e: &datafusion::error::DataFusionError, tables: &[String]) -> String {
    use datafusion::error::DataFusionError as E;
    use datafusion::sql::sqlparser::parser::ParserError;
    let root = e.find_root();
    let text = match root {
        E::SQL(p, _) => match p.as_ref() {
            ParserError::ParserError(m) | ParserError::TokenizerError(m) => {
                format!("SQL syntax error: {m}")
            }
            ParserError::RecursionLimitExceeded => {
                "SQL syntax error: the query nests too deeply".to_string()
            }
        },
        E::Plan(m) => m.clone(),
        E::ResourcesExhausted(m) => format!("the query needs more memory than allowed: {m}"),
        other => other.strip_backtrace(),
    };
    let text = text
        .replace("datafusion.public.", "")
        .replace("'datafusion.", "'");
    if let Some(rest) = text.split("table '").nth(1)
        && let Some(name) = rest.split('\'').next()
        && text.contains("not found")
    {
        let suggestion = closest(name, tables)
            .map(|t| format!("; did you mean {t}?"))
            .unwrap_or_default();
        return format!("table {name} does not exist{suggestion} (SHOW TABLES lists the tables)");
    }
    text
}

/// The name in `names` closest to `name` by edit distance, if close enough.
fn closest<'a>(name: &str, names: &'a [String]) -> Option<&'a String> {
    fn distance(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut prev: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut cur = vec![i + 1];
            for (j, cb) in b.iter().enumerate() {
                let sub = prev[j] + usize::from(ca != *cb);
                cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
            }
            prev = cur;
        }
        prev[b.len()]
    }
    let name = name.to_lowercase();
    names
        .iter()
        .map(|n| (distance(&name, &n.to_lowercase()), n))
        .filter(|(d, n)| *d <= 3.max(n.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, n)| n)
}

/// Every table name a query may use (`bank_loans`, `published.loan_growth`, …).
pub fn table_names(ctx: &datafusion::prelude::SessionContext) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(cat) = ctx.catalog("datafusion") {
        for schema in cat.schema_names() {
            if let Some(s) = cat.schema(&schema) {
                for t in s.table_names() {
                    if t.starts_with("__") {
                        continue;
                    }
                    out.push(if schema == "public" {
                        t
                    } else {
                        format!("{schema}.{t}")
                    });
                }
            }
        }
    }
    out.sort();
    out
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

/// Refuses a parsed statement that is not a read-only query (`sql` names it in the message).
pub(crate) fn check_statement(s: &Statement, sql: &str) -> Result<(), QueryError> {
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
        .map_err(|e| QueryError::Sql(format!("SQL syntax error: {e}")))?;
    // One operator count per open parenthesis level.
    let mut chains: Vec<usize> = vec![0];
    for t in &tokens {
        let depth = chains.len();
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
            Token::RParen if depth > 1 => {
                chains.pop();
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

/// Plans a read-only query on a snapshot; its string columns come out as
/// `Utf8` (see [`plain_strings`]).
pub async fn sql(snapshot: &Snapshot, sql: &str) -> Result<DataFrame, QueryError> {
    check_read_only(sql)?;
    snapshot
        .ctx
        .sql_with_options(sql, read_only_options())
        .await
        .and_then(plain_strings)
        .map_err(|e| engine_err(e, &table_names(&snapshot.ctx)))
}

/// `df` with the columns that come out as `Utf8View` cast to `Utf8`,
/// names and qualifiers kept. Tables read some text as views
/// ([`crate::config::schema::TableSchema::read_schema`]); results, stored
/// aggregates and every front end keep the plain string type of the
/// schemas, which every client reads. Which columns are views is known
/// only after type coercion (`CASE WHEN … THEN 'ALL' ELSE district_code
/// END` reads `Utf8` before it and is a view after), so the plan is
/// analyzed here to find them; the other columns are left alone, so the
/// optimizer's rules still see them as they are.
pub fn plain_strings(df: DataFrame) -> datafusion::error::Result<DataFrame> {
    use arrow::datatypes::DataType;
    use datafusion::common::Column;
    use datafusion::logical_expr::{Expr, LogicalPlan, Projection, cast};
    let (state, plan) = df.into_parts();
    let analyzed =
        state
            .analyzer()
            .execute_and_check(plan.clone(), state.config_options(), |_, _| {})?;
    let views: Vec<bool> = analyzed
        .schema()
        .fields()
        .iter()
        .map(|f| f.data_type() == &DataType::Utf8View)
        .collect();
    if !views.contains(&true) || views.len() != plan.schema().fields().len() {
        return Ok(DataFrame::new(state, plan));
    }
    let exprs: Vec<Expr> = plan
        .schema()
        .iter()
        .zip(views)
        .map(|((qualifier, f), view)| {
            let c = Expr::Column(Column::new(qualifier.cloned(), f.name()));
            if view {
                cast(c, DataType::Utf8).alias_qualified(qualifier.cloned(), f.name())
            } else {
                c
            }
        })
        .collect();
    let projection = Projection::try_new(exprs, std::sync::Arc::new(plan))?;
    Ok(DataFrame::new(state, LogicalPlan::Projection(projection)))
}

/// Result formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum OutputFormat {
    /// An aligned text table.
    Table,
    /// CSV with a header row.
    Csv,
    /// A JSON array of objects.
    Json,
    /// A Parquet file (needs --output).
    Parquet,
    /// An Arrow IPC stream.
    Arrow,
}

impl OutputFormat {
    /// The HTTP content type of the format.
    pub fn content_type(self) -> &'static str {
        match self {
            OutputFormat::Table => "text/plain; charset=utf-8",
            OutputFormat::Csv => "text/csv; charset=utf-8",
            OutputFormat::Json => "application/json",
            OutputFormat::Parquet => "application/vnd.apache.parquet",
            OutputFormat::Arrow => "application/vnd.apache.arrow.stream",
        }
    }

    /// The format's short name (`csv`, `json`, …).
    pub fn name(self) -> &'static str {
        match self {
            OutputFormat::Table => "table",
            OutputFormat::Csv => "csv",
            OutputFormat::Json => "json",
            OutputFormat::Parquet => "parquet",
            OutputFormat::Arrow => "arrow",
        }
    }
}

/// A writer that counts the bytes through it.
struct Counting<W> {
    inner: W,
    bytes: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

enum Sink<W: Write + Send> {
    Table {
        out: Counting<W>,
        pending: Vec<RecordBatch>,
        pending_rows: usize,
        printed_any: bool,
    },
    Csv(arrow::csv::Writer<Counting<W>>, bool),
    Json(arrow::json::ArrayWriter<Counting<W>>),
    Arrow(arrow::ipc::writer::StreamWriter<Counting<W>>),
    Parquet(parquet::arrow::ArrowWriter<Counting<W>>),
}

/// Encodes result batches in one [`OutputFormat`], a batch at a time: the
/// one encoder of the CLI, the HTTP API and anything later. Knows how many
/// rows and bytes it has produced, so callers can cap either.
pub struct Encoder<W: Write + Send> {
    sink: Sink<W>,
    schema: arrow::datatypes::SchemaRef,
    rows: u64,
    bytes: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

fn out_err(e: impl std::fmt::Display) -> QueryError {
    QueryError::Output(e.to_string())
}

impl<W: Write + Send> Encoder<W> {
    /// An encoder writing `format` to `out`.
    pub fn new(
        format: OutputFormat,
        schema: arrow::datatypes::SchemaRef,
        out: W,
    ) -> Result<Encoder<W>, QueryError> {
        let bytes = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let out = Counting {
            inner: out,
            bytes: bytes.clone(),
        };
        let sink = match format {
            OutputFormat::Table => Sink::Table {
                out,
                pending: Vec::new(),
                pending_rows: 0,
                printed_any: false,
            },
            OutputFormat::Csv => Sink::Csv(
                arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(out),
                false,
            ),
            // Every row has every column: nulls are written as `null`, not left out.
            OutputFormat::Json => Sink::Json(
                arrow::json::WriterBuilder::new()
                    .with_explicit_nulls(true)
                    .build::<_, arrow::json::writer::JsonArray>(out),
            ),
            OutputFormat::Arrow => Sink::Arrow(
                arrow::ipc::writer::StreamWriter::try_new(out, &schema).map_err(out_err)?,
            ),
            OutputFormat::Parquet => Sink::Parquet(
                parquet::arrow::ArrowWriter::try_new(
                    out,
                    schema.clone(),
                    Some(crate::warehouse::merge::writer_properties(&schema)),
                )
                .map_err(out_err)?,
            ),
        };
        Ok(Encoder {
            sink,
            schema,
            rows: 0,
            bytes,
        })
    }

    /// Rows encoded so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Bytes produced so far, counting what a Parquet writer still buffers.
    pub fn bytes(&self) -> u64 {
        let written = self.bytes.load(std::sync::atomic::Ordering::Relaxed);
        match &self.sink {
            Sink::Parquet(w) => written + w.in_progress_size() as u64,
            _ => written,
        }
    }

    /// Encodes one batch.
    pub fn write(&mut self, b: &RecordBatch) -> Result<(), QueryError> {
        self.rows += b.num_rows() as u64;
        match &mut self.sink {
            Sink::Table {
                out,
                pending,
                pending_rows,
                printed_any,
            } => {
                *pending_rows += b.num_rows();
                pending.push(b.clone());
                if *pending_rows >= 10_000 {
                    let t = arrow::util::pretty::pretty_format_batches(pending).map_err(out_err)?;
                    writeln!(out, "{t}").map_err(out_err)?;
                    pending.clear();
                    *pending_rows = 0;
                    *printed_any = true;
                }
            }
            Sink::Csv(w, any) => {
                w.write(b).map_err(out_err)?;
                *any = true;
            }
            Sink::Json(w) => w.write(b).map_err(out_err)?,
            Sink::Arrow(w) => w.write(b).map_err(out_err)?,
            Sink::Parquet(w) => w.write(b).map_err(out_err)?,
        }
        Ok(())
    }

    /// Finishes the output (footer, closing bracket, row count) and returns the writer.
    pub fn finish(self) -> Result<W, QueryError> {
        let rows = self.rows;
        let out = match self.sink {
            Sink::Table {
                mut out,
                mut pending,
                printed_any,
                ..
            } => {
                if !pending.is_empty() || !printed_any {
                    if pending.is_empty() {
                        pending.push(RecordBatch::new_empty(self.schema.clone()));
                    }
                    let t =
                        arrow::util::pretty::pretty_format_batches(&pending).map_err(out_err)?;
                    writeln!(out, "{t}").map_err(out_err)?;
                }
                writeln!(out, "({rows} row{})", if rows == 1 { "" } else { "s" })
                    .map_err(out_err)?;
                out
            }
            Sink::Csv(mut w, any) => {
                if !any {
                    w.write(&RecordBatch::new_empty(self.schema.clone()))
                        .map_err(out_err)?;
                }
                w.into_inner()
            }
            Sink::Json(mut w) => {
                w.finish().map_err(out_err)?;
                let mut out = w.into_inner();
                // Older arrow writers print nothing at all for no rows.
                if out.bytes.load(std::sync::atomic::Ordering::Relaxed) == 0 {
                    out.write_all(b"[]").map_err(out_err)?;
                }
                out.write_all(b"\n").map_err(out_err)?;
                out
            }
            Sink::Arrow(mut w) => {
                w.finish().map_err(out_err)?;
                w.into_inner().map_err(out_err)?
            }
            Sink::Parquet(w) => w.into_inner().map_err(out_err)?,
        };
        let mut inner = out.inner;
        inner.flush().map_err(out_err)?;
        Ok(inner)
    }
}

/// Streams a query's results to `out`; returns the number of rows written.
pub async fn write_results(
    df: DataFrame,
    format: OutputFormat,
    out: Box<dyn Write + Send>,
) -> Result<u64, QueryError> {
    let schema = std::sync::Arc::new(df.schema().as_arrow().clone());
    let mut stream = df.execute_stream().await.map_err(df_err)?;
    let mut enc = Encoder::new(format, schema, out)?;
    while let Some(b) = stream.next().await {
        enc.write(&b.map_err(df_err)?)?;
    }
    let rows = enc.rows();
    enc.finish()?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn views_leave_as_plain_strings_even_where_coercion_makes_them() {
        use arrow::array::{Int64Array, StringViewArray};
        use arrow::datatypes::{DataType, Field, Schema};
        use datafusion::datasource::MemTable;
        use std::sync::Arc;
        let schema = Arc::new(Schema::new(vec![
            Field::new("v", DataType::Utf8View, true),
            Field::new("n", DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringViewArray::from(vec![Some("credit"), None])),
                Arc::new(Int64Array::from(vec![1, 2])),
            ],
        )
        .unwrap();
        let ctx = datafusion::prelude::SessionContext::new();
        ctx.register_table(
            "t",
            Arc::new(MemTable::try_new(schema, vec![vec![batch]]).unwrap()),
        )
        .unwrap();
        // `CASE … THEN 'ALL' ELSE v END` reads Utf8 before type coercion
        // and is a view after it; `t.v` is a view throughout.
        let sql = "SELECT CASE WHEN n = 2 THEN 'ALL' ELSE v END AS c, t.v, n FROM t ORDER BY n";
        let df = plain_strings(ctx.sql(sql).await.unwrap()).unwrap();
        let types: Vec<DataType> = df
            .schema()
            .fields()
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        assert_eq!(types, [DataType::Utf8, DataType::Utf8, DataType::Int64]);
        let out = df.collect().await.unwrap();
        let schema = out[0].schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["c", "v", "n"]);
        for f in schema.fields().iter().take(2) {
            assert_eq!(f.data_type(), &DataType::Utf8, "{f}");
        }
        let c = out[0]
            .column(0)
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .unwrap();
        assert_eq!(c.iter().collect::<Vec<_>>(), [Some("credit"), Some("ALL")]);
        // A plan without views is left as it is.
        let df = ctx.sql("SELECT n FROM t").await.unwrap();
        let plan = df.logical_plan().clone();
        assert_eq!(plain_strings(df).unwrap().logical_plan(), &plan);
    }

    #[test]
    fn deep_expressions_are_refused_before_parsing() {
        let deep = format!("SELECT 1{}", "+1".repeat(20_000));
        let err = check_read_only(&deep).unwrap_err();
        assert!(err.to_string().contains("chains more than"), "{err}");
        let parens = format!("SELECT {}1{}", "(".repeat(200), ")".repeat(200));
        let err = check_read_only(&parens).unwrap_err();
        assert!(err.to_string().contains("nest more than"), "{err}");
        let long = format!("SELECT '{}'", "x".repeat(MAX_STATEMENT_BYTES));
        assert!(matches!(
            check_read_only(&long),
            Err(QueryError::TooComplex(_))
        ));
        // Ordinary queries, long IN lists and many columns pass.
        let list = (0..5000)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        check_read_only(&format!(
            "SELECT a + b * 2 FROM t WHERE x IN ({list}) AND y = 1 OR z LIKE 'a%'"
        ))
        .unwrap();
        let cols = (0..3000)
            .map(|i| format!("c{i} + 1"))
            .collect::<Vec<_>>()
            .join(", ");
        check_read_only(&format!("SELECT {cols} FROM t")).unwrap();
    }

    #[test]
    fn errors_read_as_sentences_and_suggest_a_table() {
        let tables: Vec<String> = ["bank_loans", "enterprises", "published.loan_growth"]
            .map(String::from)
            .to_vec();
        let e = datafusion::error::DataFusionError::Plan(
            "table 'datafusion.public.bank_loan' not found".into(),
        );
        assert_eq!(
            describe(&e, &tables),
            "table bank_loan does not exist; did you mean bank_loans? (SHOW TABLES lists the tables)"
        );
        let err = check_read_only("SELEC 1").unwrap_err().to_string();
        assert!(!err.contains("ParserError("), "{err}");
        assert!(err.starts_with("SQL syntax error: "), "{err}");
        assert_eq!(closest("zzzzzz", &tables), None);
    }

    #[test]
    fn every_format_encodes_empty_and_nonempty_results() {
        use arrow::array::Int32Array;
        let schema = std::sync::Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("x", arrow::datatypes::DataType::Int32, true),
        ]));
        let b = RecordBatch::try_new(
            schema.clone(),
            vec![std::sync::Arc::new(Int32Array::from(vec![Some(1), None]))],
        )
        .unwrap();
        for f in [
            OutputFormat::Table,
            OutputFormat::Csv,
            OutputFormat::Json,
            OutputFormat::Arrow,
            OutputFormat::Parquet,
        ] {
            let mut e = Encoder::new(f, schema.clone(), Vec::new()).unwrap();
            e.write(&b).unwrap();
            assert_eq!(e.rows(), 2);
            let out = e.finish().unwrap();
            assert!(!out.is_empty(), "{f:?}");
            let empty = Encoder::new(f, schema.clone(), Vec::new())
                .unwrap()
                .finish()
                .unwrap();
            assert!(!empty.is_empty(), "{f:?}");
        }
        let json = Encoder::new(OutputFormat::Json, schema.clone(), Vec::new()).unwrap();
        assert_eq!(json.finish().unwrap(), b"[]\n");
    }
}
