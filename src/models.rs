//! Models: the published aggregates, one SELECT per `pipelines/aggregates/<name>.sql`.
//!
//! A header comment declares how an aggregate is partitioned and which
//! input quarters each output quarter reads:
//!
//! ```sql
//! -- ironlake: partition_by = quarter
//! -- ironlake: lags = 0, 4      -- output quarter q reads input quarters q and q-4
//! -- ironlake: lags(enterprises) = 0   -- except this input: only quarter q
//! ```
//!
//! An aggregate recomputed whole (no `lags`) that reads only the latest
//! quarters of an input says so, so that changes to older quarters leave it
//! as it is (placeholders are filled in from the policy):
//!
//! ```sql
//! -- ironlake: latest(bank_loans) = {{recommendation_lookback_quarters}}
//! ```
//!
//! The order between aggregates follows from their table references
//! (`published.loan_balances` before `loan_growth`). A refresh compares each
//! input partition with the state the last version was computed from, and
//! recomputes only the output quarters that read a changed one (q + lag for
//! every changed q), from just the input quarters those need. An aggregate
//! without `lags` is recomputed whole when any input changed.

use crate::catalog::{self, Catalog, CatalogError};
use crate::config::diag::{Diagnostic, SourceFile};
use crate::config::schema::PARTITION_COLUMN;
use crate::config::{Project, settings::Policy};
use crate::warehouse::{
    self, DirKey, DirState, FileEntry, Manifest, PublishedMeta, PublishedVersion, RunRecord,
    Warehouse, WarehouseError, merge,
};
use arrow::array::{Array, RecordBatch, StringArray, UInt32Array};
use arrow::datatypes::{Schema, SchemaRef};
use datafusion::prelude::{SessionContext, col, lit};
use futures::StreamExt as _;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// One aggregate definition.
#[derive(Debug, Clone)]
pub struct Aggregate {
    /// Name (the file stem); published as `published.<name>`.
    pub name: String,
    /// The file it was loaded from.
    pub file: SourceFile,
    /// Whether the output is partitioned by its `quarter` column.
    pub partition_by_quarter: bool,
    /// Input quarters each output quarter reads (q − lag), if declared.
    pub lags: Option<Vec<i32>>,
    /// Lags replacing `lags` for one input (`lags(enterprises) = 0`), by
    /// the input's manifest key (`tables/enterprises`).
    pub input_lags: BTreeMap<String, Vec<i32>>,
    /// How many latest quarters of an input the SQL reads
    /// (`latest(bank_loans) = 4`: the quarters after the input's latest
    /// one minus 4), by the input's manifest key; only for aggregates
    /// recomputed whole.
    pub latest: BTreeMap<String, u32>,
    /// The output columns' documentation (`-- column:` header lines), in file order.
    pub columns: Vec<ColumnDoc>,
    /// The SQL as run: the file with its `{{placeholder}}`s filled from the policy.
    pub sql: String,
    /// What the SQL reads (see [`references`]), or why it does not parse.
    pub reads: Result<BTreeSet<Input>, String>,
}

impl Aggregate {
    /// A hash of the SQL as run (see [`PublishedMeta::definition`]).
    pub fn definition(&self) -> String {
        blake3::hash(self.sql.as_bytes()).to_hex().to_string()
    }
}

/// One output column's documentation, from a header line
/// `-- column: name | 中文名 | unit | formula` (unit may be empty).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ColumnDoc {
    /// Column name as the SELECT outputs it.
    pub name: String,
    /// Chinese name (中文名称) shown to readers.
    pub label: String,
    /// Unit of the values (`CNY yuan`, `percent`, …), if any.
    pub unit: Option<String>,
    /// How the value is computed (口径).
    pub formula: String,
}

/// Why a refresh failed.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The aggregate files have problems.
    #[error("aggregate definitions have errors:\n{0}")]
    Definitions(String),
    /// No such aggregate.
    #[error("no aggregate named {0:?}; aggregates: {1}")]
    Unknown(String, String),
    /// SQL failed.
    #[error("aggregate {name}: {message}")]
    Sql {
        /// Aggregate.
        name: String,
        /// What failed.
        message: String,
    },
    /// The engine failed planning or running an aggregate.
    #[error("aggregate {name}: {}", crate::query::describe(.source, &[]))]
    Engine {
        /// Aggregate.
        name: String,
        /// The engine's error, kept whole.
        #[source]
        source: datafusion::error::DataFusionError,
    },
    /// The catalog failed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The warehouse failed.
    #[error(transparent)]
    Warehouse(#[from] WarehouseError),
    /// Another process published the same aggregate while this refresh ran.
    #[error(
        "aggregate {0} was published by another refresh while this one ran; nothing was published by this one (run it again)"
    )]
    Conflict(String),
}

/// The definition in an aggregate file's header: its leading `--` comment
/// lines, without the `-- ironlake:` directives.
pub fn description(text: &str) -> String {
    text.lines()
        .map_while(|l| l.trim_start().strip_prefix("--"))
        .map(str::trim)
        .filter(|l| !l.starts_with("ironlake:") && !l.starts_with("column:"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// How an aggregate is made (口径说明), for readers of its numbers: served by
/// `GET /api/v1/aggregates/{name}/definition` and `\\d published.<name>`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Definition {
    /// Aggregate name.
    pub name: String,
    /// The SQL file it is defined in.
    pub file: String,
    /// The header's prose.
    pub description: String,
    /// Documented output columns, in file order.
    pub columns: Vec<ColumnDoc>,
    /// Input quarters each output quarter reads (q − lag); `None`: recomputed whole.
    pub lags: Option<Vec<i32>>,
    /// Lags replacing `lags` for one input, by its SQL name (`enterprises`, `published.x`).
    pub input_lags: BTreeMap<String, Vec<i32>>,
    /// How many latest quarters of an input are read, by its SQL name.
    pub latest: BTreeMap<String, u32>,
    /// How a refresh treats the aggregate, in words (see [`Aggregate::refresh_rule`]).
    pub refresh: String,
    /// The `[policy]` parameters the SQL uses, with their values.
    pub policy: BTreeMap<String, String>,
    /// The SQL as run, placeholders filled.
    pub sql: String,
}

/// Every aggregate's definition, by name (files with problems included as far as they load).
pub fn definitions(project: &Project) -> BTreeMap<String, Definition> {
    let (aggs, _) = load(project);
    let policy = &project.settings.policy;
    aggs.iter()
        .map(|a| {
            let used = policy
                .placeholders()
                .into_iter()
                .filter(|(k, _)| a.file.text.contains(&format!("{{{{{k}}}}}")))
                .map(|(k, v)| (k.to_string(), v.replace('\'', "")))
                .collect();
            let d = Definition {
                name: a.name.clone(),
                file: a.file.name.clone(),
                description: description(&a.file.text),
                columns: a.columns.clone(),
                lags: a.lags.clone(),
                input_lags: sql_names(&a.input_lags),
                latest: sql_names(&a.latest),
                refresh: a.refresh_rule(),
                policy: used,
                sql: a.sql.clone(),
            };
            (a.name.clone(), d)
        })
        .collect()
}

/// The same map keyed by SQL names (`enterprises`, `published.x`) instead of manifest keys.
fn sql_names<V: Clone>(by_key: &BTreeMap<String, V>) -> BTreeMap<String, V> {
    by_key
        .iter()
        .map(|(k, v)| {
            let name = DirKey::parse(k).map_or_else(|| k.clone(), |d| d.sql_name());
            (name, v.clone())
        })
        .collect()
}

impl Aggregate {
    /// How a refresh treats the aggregate: `lags 0,4` (with any per-input
    /// lags), or `recomputed whole` (with any latest-quarters inputs).
    pub fn refresh_rule(&self) -> String {
        let list = |l: &[i32]| {
            l.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut out = match &self.lags {
            Some(l) => format!("lags {}", list(l)),
            None => "recomputed whole".to_string(),
        };
        for (name, l) in sql_names(&self.input_lags) {
            out.push_str(&format!("; {name}: lags {}", list(&l)));
        }
        for (name, n) in sql_names(&self.latest) {
            out.push_str(&format!(
                "; reads the latest {n} quarters of {name} (older changes keep it)"
            ));
        }
        out
    }
}

/// Fills `{{placeholder}}`s from the policy.
pub fn render_sql(text: &str, policy: &Policy) -> String {
    policy
        .placeholders()
        .into_iter()
        .fold(text.to_string(), |sql, (key, value)| {
            sql.replace(&format!("{{{{{key}}}}}"), &value)
        })
}

/// Loads every `*.sql` file in `<pipelines_dir>/aggregates`, with header diagnostics.
pub fn load(project: &Project) -> (Vec<Aggregate>, Vec<Diagnostic>) {
    let dir = project.settings.pipelines_dir.join("aggregates");
    let mut out = Vec::new();
    let mut diags = Vec::new();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return (out, diags);
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    paths.sort();
    for path in paths {
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        let shown = path
            .strip_prefix(
                project
                    .settings
                    .pipelines_dir
                    .parent()
                    .unwrap_or(&project.settings.pipelines_dir),
            )
            .unwrap_or(&path)
            .display()
            .to_string();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                diags.push(SourceFile::new(shown, "").error(None, "", format!("cannot read: {e}")));
                continue;
            }
        };
        let file = SourceFile::new(shown, text);
        let sql = render_sql(&file.text, &project.settings.policy);
        let reads = references(&sql);
        let empty = BTreeSet::new();
        let d = directives(
            &file,
            &project.settings.policy,
            reads.as_ref().unwrap_or(&empty),
            &mut diags,
        );
        let columns = column_docs(&file, &mut diags);
        out.push(Aggregate {
            name,
            file,
            partition_by_quarter: d.partition_by_quarter,
            lags: d.lags,
            input_lags: d.input_lags,
            latest: d.latest,
            columns,
            sql,
            reads,
        });
    }
    (out, diags)
}

/// An aggregate file's `-- ironlake:` directives.
#[derive(Default)]
struct Directives {
    partition_by_quarter: bool,
    lags: Option<Vec<i32>>,
    input_lags: BTreeMap<String, Vec<i32>>,
    latest: BTreeMap<String, u32>,
}

const DIRECTIVE_KEYS: &str = "partition_by, lags, lags(INPUT), latest(INPUT)";

/// Parses `lags` values: quarter offsets 0..40, at least one.
fn parse_lags(v: &str) -> Option<Vec<i32>> {
    let parsed: Result<Vec<i32>, _> = v
        .split([',', ' '])
        .filter(|s| !s.is_empty())
        .map(str::parse::<i32>)
        .collect();
    parsed
        .ok()
        .filter(|l| !l.is_empty() && l.iter().all(|&x| (0..=40).contains(&x)))
}

/// The `-- ironlake:` directives of an aggregate file: whether it is
/// partitioned by quarter, its lags, per-input lags and latest-quarters
/// inputs (their values may use policy placeholders). Per-input directives
/// must name an input the SQL reads (`reads`).
fn directives(
    file: &SourceFile,
    policy: &Policy,
    reads: &BTreeSet<Input>,
    diags: &mut Vec<Diagnostic>,
) -> Directives {
    let mut d = Directives::default();
    let mut offset = 0;
    for line in file.text.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        let Some(directive) = line.trim().strip_prefix("-- ironlake:") else {
            continue;
        };
        let span = Some(start..offset);
        let Some((k, v)) = directive.split_once('=') else {
            diags.push(file.error(
                span,
                "",
                format!("an `-- ironlake:` directive reads `key = value`; keys: {DIRECTIVE_KEYS}"),
            ));
            continue;
        };
        let (k, v) = (k.trim(), render_sql(v.trim(), policy));
        // `lags(x)` / `latest(x)`: the input x, as its manifest key.
        let (key, input) = match k.split_once('(') {
            Some((key, rest)) => match rest.strip_suffix(')').map(str::trim) {
                Some(name) if !name.is_empty() => {
                    let dir = match name.strip_prefix("published.") {
                        Some(p) => DirKey::Published(p.to_string()),
                        None => DirKey::Table(name.to_string()),
                    };
                    if !reads.contains(&Input::Dir(dir.clone())) {
                        diags.push(file.error(
                            span.clone(),
                            key.trim(),
                            format!("{k}: the SQL does not read {name}"),
                        ));
                        continue;
                    }
                    (key.trim(), Some(dir.key()))
                }
                _ => (k, None),
            },
            None => (k, None),
        };
        match (key, input) {
            ("partition_by", None) if v == PARTITION_COLUMN => d.partition_by_quarter = true,
            ("partition_by", None) => diags.push(file.error(
                span,
                "partition_by",
                format!("{v:?}: aggregates can only be partitioned by quarter"),
            )),
            ("lags", input) => match (parse_lags(&v), input) {
                (Some(l), None) => d.lags = Some(l),
                (Some(l), Some(input)) => {
                    d.input_lags.insert(input, l);
                }
                (None, _) => diags.push(file.error(
                    span,
                    "lags",
                    "lags are quarter offsets 0..40 separated by commas, e.g. `lags = 0, 4`",
                )),
            },
            ("latest", Some(input)) => match v.parse::<u32>() {
                Ok(n) if (1..=400).contains(&n) => {
                    d.latest.insert(input, n);
                }
                _ => diags.push(file.error(
                    span,
                    "latest",
                    format!("latest(INPUT) is a number of quarters 1..400, got {v:?}"),
                )),
            },
            (other, _) => diags.push(file.error(
                span,
                other,
                format!("unknown directive; valid: {DIRECTIVE_KEYS}"),
            )),
        }
    }
    if d.lags.is_some() && !d.partition_by_quarter {
        diags.push(file.error(None, "lags", "lags need `partition_by = quarter`"));
    }
    if !d.input_lags.is_empty() && d.lags.is_none() {
        diags.push(file.error(
            None,
            "lags",
            "lags(INPUT) overrides `lags` for one input: declare `lags` too",
        ));
    }
    if !d.latest.is_empty() && d.lags.is_some() {
        diags.push(file.error(None, "latest", "latest(INPUT) is for aggregates recomputed whole; with `lags`, each output quarter's inputs are narrowed to the quarters it reads"));
    }
    if !d.partition_by_quarter {
        diags.push(file.error(None, "partition_by", "declare `-- ironlake: partition_by = quarter`: published aggregates are partitioned by their quarter column"));
    }
    d
}

/// The `-- column: name | 中文名 | unit | formula` lines of an aggregate's header.
fn column_docs(file: &SourceFile, diags: &mut Vec<Diagnostic>) -> Vec<ColumnDoc> {
    let mut out: Vec<ColumnDoc> = Vec::new();
    let mut offset = 0;
    for line in file.text.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        let Some(rest) = line
            .trim()
            .strip_prefix("--")
            .and_then(|l| l.trim_start().strip_prefix("column:"))
        else {
            continue;
        };
        let parts: Vec<&str> = rest.split('|').map(str::trim).collect();
        match parts.as_slice() {
            [name, label, unit, formula] if !name.is_empty() && !label.is_empty() && !formula.is_empty() => {
                if out.iter().any(|c| c.name == *name) {
                    diags.push(file.error(Some(start..offset), "column", format!("column {name:?} is documented twice")));
                    continue;
                }
                out.push(ColumnDoc {
                    name: name.to_string(),
                    label: label.to_string(),
                    unit: (!unit.is_empty()).then(|| unit.to_string()),
                    formula: formula.to_string(),
                });
            }
            _ => diags.push(file.error(
                Some(start..offset),
                "column",
                "a column line reads `-- column: name | 中文名 | unit | formula` (the unit may be empty)",
            )),
        }
    }
    out
}

/// Something an aggregate's SQL reads.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Input {
    /// A warehouse directory, tracked partition by partition.
    Dir(DirKey),
    /// Reference data built into ironlake (`ref_*` tables).
    Reference,
    /// Anything else (`system.*`): not partition-tracked, so whatever reads
    /// it is recomputed whole.
    Untracked(String),
}

impl Input {
    /// The published aggregate this input is, if it is one.
    pub fn published(&self) -> Option<&str> {
        match self {
            Input::Dir(DirKey::Published(p)) => Some(p),
            _ => None,
        }
    }
}

/// What a query reads: tables, quarantines, published aggregates, reference data.
pub fn references(sql: &str) -> Result<BTreeSet<Input>, String> {
    let stmts = datafusion::sql::parser::DFParser::parse_sql(sql).map_err(|e| e.to_string())?;
    let mut out = BTreeSet::new();
    for s in &stmts {
        let (tables, _) = datafusion::sql::resolve::resolve_table_references(s, true)
            .map_err(|e| e.to_string())?;
        for t in tables {
            let name = t.table().to_string();
            out.insert(match t.schema() {
                None | Some("public") if name.starts_with("ref_") => Input::Reference,
                None | Some("public") => Input::Dir(DirKey::Table(name)),
                Some("published") => Input::Dir(DirKey::Published(name)),
                Some("quarantine") => Input::Dir(DirKey::Quarantine(name)),
                Some(other) => Input::Untracked(format!("{other}.{name}")),
            });
        }
    }
    Ok(out)
}

/// The aggregates that read `table`, directly or through other aggregates,
/// in dependency order: what an ingest into `table` makes stale.
pub fn readers_of(project: &Project, table: &str) -> Vec<String> {
    let (aggs, _) = load(project);
    let Ok(ordered) = order(&aggs) else {
        return Vec::new();
    };
    let mut stale: BTreeSet<String> = BTreeSet::new();
    let mut out = Vec::new();
    // Readers come after what they read: one pass in order finds them all.
    for a in ordered.iter().map(|&i| &aggs[i]) {
        let Ok(refs) = &a.reads else {
            continue;
        };
        let reads_stale = refs.iter().any(|r| match r {
            Input::Dir(DirKey::Table(t)) => t == table,
            other => other.published().is_some_and(|p| stale.contains(p)),
        });
        if reads_stale {
            stale.insert(a.name.clone());
            out.push(a.name.clone());
        }
    }
    out
}

/// Aggregates in dependency order; an error names a cycle or a missing aggregate.
pub fn order(aggs: &[Aggregate]) -> Result<Vec<usize>, String> {
    let index: HashMap<&str, usize> = aggs
        .iter()
        .enumerate()
        .map(|(i, a)| (a.name.as_str(), i))
        .collect();
    let mut deps: Vec<Vec<usize>> = Vec::new();
    for a in aggs {
        let refs = a
            .reads
            .as_ref()
            .map_err(|e| format!("{}: {e}", a.file.name))?;
        let mut d = Vec::new();
        for r in refs {
            if let Some(p) = r.published() {
                match index.get(p) {
                    Some(&i) => d.push(i),
                    None => {
                        return Err(format!(
                            "{}: reads published.{p}, but there is no aggregate {p}",
                            a.file.name
                        ));
                    }
                }
            }
        }
        deps.push(d);
    }
    let mut state = vec![0u8; aggs.len()];
    let mut out = Vec::new();
    fn visit(
        i: usize,
        deps: &[Vec<usize>],
        state: &mut [u8],
        out: &mut Vec<usize>,
        aggs: &[Aggregate],
    ) -> Result<(), String> {
        match state[i] {
            2 => return Ok(()),
            1 => {
                return Err(format!(
                    "aggregates depend on each other in a cycle through {}",
                    aggs[i].name
                ));
            }
            _ => {}
        }
        state[i] = 1;
        for &d in &deps[i] {
            visit(d, deps, state, out, aggs)?;
        }
        state[i] = 2;
        out.push(i);
        Ok(())
    }
    for i in 0..aggs.len() {
        visit(i, &deps, &mut state, &mut out, aggs)?;
    }
    Ok(out)
}

/// The 1-based (line, column) a planning error points at, if it says.
fn error_position(message: &str, sql: &str) -> Option<(usize, usize)> {
    if let Some(i) = message.find("Line: ") {
        let rest = &message[i + 6..];
        let line: usize = rest
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()?;
        let col = rest
            .find("Column: ")
            .and_then(|j| {
                rest[j + 8..]
                    .split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or(1);
        return Some((line, col));
    }
    // "No field named x" / "table 'y' not found": point at the name.
    for marker in ["No field named ", "field named ", "column "] {
        if let Some(i) = message.find(marker) {
            let rest = message[i + marker.len()..].trim_start_matches(['"', '\'', '`']);
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '.')
                .collect();
            let name = name
                .trim_end_matches('.')
                .rsplit('.')
                .next()
                .unwrap_or("")
                .to_string();
            if !name.is_empty()
                && let Some(pos) = sql.find(&name)
            {
                let before = &sql[..pos];
                let line = before.matches('\n').count() + 1;
                let col = before.len() - before.rfind('\n').map_or(0, |n| n + 1) + 1;
                return Some((line, col));
            }
        }
    }
    // Otherwise point at the first quoted identifier the message names.
    for quote in ['\'', '"', '`'] {
        let mut parts = message.split(quote);
        parts.next();
        while let Some(ident) = parts.next() {
            let last = ident.rsplit('.').next().unwrap_or(ident);
            if !last.is_empty()
                && let Some(pos) = sql.find(last)
            {
                let before = &sql[..pos];
                let line = before.matches('\n').count() + 1;
                let col = before.len() - before.rfind('\n').map_or(0, |n| n + 1) + 1;
                return Some((line, col));
            }
            parts.next();
        }
    }
    None
}

/// Plans every aggregate against empty tables; returns diagnostics (for `ironlake check`).
pub async fn check(project: &Project) -> Vec<Diagnostic> {
    let (aggs, mut diags) = load(project);
    let order = match order(&aggs) {
        Ok(o) => o,
        Err(e) => {
            diags.push(SourceFile::new("pipelines/aggregates", "").error(None, "", e));
            return diags;
        }
    };
    let ctx = match catalog::empty_session(project) {
        Ok(c) => c,
        Err(e) => {
            diags.push(SourceFile::new("pipelines/aggregates", "").error(None, "", e.to_string()));
            return diags;
        }
    };
    let mut failed: BTreeSet<String> = BTreeSet::new();
    for i in order {
        let a = &aggs[i];
        let sql = &a.sql;
        // An aggregate reading a broken one gets one line saying so, not a
        // knock-on "table not found".
        let broken: Vec<String> = a
            .reads
            .iter()
            .flatten()
            .filter_map(Input::published)
            .filter(|p| failed.contains(*p))
            .map(|p| format!("published.{p}"))
            .collect();
        if !broken.is_empty() {
            diags.push(a.file.error(
                None,
                "",
                format!("depends on {}, which has errors", broken.join(", ")),
            ));
            failed.insert(a.name.clone());
            continue;
        }
        let planned = async {
            crate::query::check_read_only(sql).map_err(|e| e.to_string())?;
            let df = ctx
                .sql_with_options(sql, crate::query::read_only_options())
                .await
                .and_then(crate::query::plain_strings)
                // The table list is only needed to suggest a name in an error.
                .map_err(|e| crate::query::describe(&e, &crate::query::table_names(&ctx)))?;
            Ok::<_, String>(df)
        }
        .await;
        match planned {
            Ok(df) => {
                let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
                if a.partition_by_quarter && schema.field_with_name(PARTITION_COLUMN).is_err() {
                    diags.push(a.file.error(None, "partition_by", "the aggregate is partitioned by quarter but its SELECT has no `quarter` column"));
                }
                diags.extend(undocumented(a, &schema));
                if let Ok(t) = datafusion::datasource::MemTable::try_new(schema, vec![vec![]]) {
                    let _ =
                        ctx.register_table(format!("published.{}", a.name).as_str(), Arc::new(t));
                }
            }
            Err(message) => {
                failed.insert(a.name.clone());
                let message = message.replace('\n', " ");
                let d = match error_position(&message, sql) {
                    Some((line, column)) => {
                        let offset = a
                            .file
                            .text
                            .split_inclusive('\n')
                            .take(line - 1)
                            .map(str::len)
                            .sum::<usize>()
                            + column
                            - 1;
                        a.file
                            .error(Some(offset..offset + 1), "", format!("SQL: {message}"))
                    }
                    None => a.file.error(None, "", format!("SQL: {message}")),
                };
                diags.push(d);
            }
        }
    }
    diags
}

/// Column documentation that does not match the SELECT: a documented
/// column it does not output is an error; once a file documents any column,
/// each output column it leaves undocumented is a warning.
fn undocumented(a: &Aggregate, schema: &Schema) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for c in &a.columns {
        if schema.field_with_name(&c.name).is_err() {
            out.push(a.file.error(
                None,
                "column",
                format!(
                    "documents column {:?}, which the SELECT does not output",
                    c.name
                ),
            ));
        }
    }
    if !a.columns.is_empty() {
        for f in schema.fields() {
            if !a.columns.iter().any(|c| &c.name == f.name()) {
                out.push(a.file.warning(
                    None,
                    "column",
                    format!("output column {:?} has no `-- column:` line", f.name()),
                ));
            }
        }
    }
    out
}

/// How a refresh treated an aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RefreshMode {
    /// Recomputed whole.
    Full,
    /// Only the quarters whose inputs changed were recomputed.
    Incremental,
    /// Nothing it reads changed; the published version stays.
    Unchanged,
}

impl RefreshMode {
    /// The name used in output, the manifest and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            RefreshMode::Full => "full",
            RefreshMode::Incremental => "incremental",
            RefreshMode::Unchanged => "unchanged",
        }
    }
}

impl std::fmt::Display for RefreshMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// What one refresh did to one aggregate.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Refreshed {
    /// Aggregate.
    pub name: String,
    /// Whether it was recomputed whole, in part, or not at all.
    pub mode: RefreshMode,
    /// Output quarters recomputed.
    pub quarters: Vec<String>,
    /// Rows in the published version.
    pub rows: u64,
    /// Version id (manifest version) now published.
    pub version: u64,
    /// Seconds this aggregate's recomputation took (0 when unchanged).
    pub secs: f64,
}

fn tokens(state: Option<&DirState>) -> BTreeMap<String, String> {
    state
        .map(|s| {
            s.partitions
                .iter()
                .map(|(q, p)| {
                    (
                        q.clone(),
                        p.files
                            .iter()
                            .map(|f| f.name.as_str())
                            .collect::<Vec<_>>()
                            .join("+"),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn shift(q: &str, n: i32) -> Option<String> {
    q.parse::<crate::domain::Quarter>()
        .ok()
        .map(|q| q.plus(n).to_string())
}

fn sql_err(name: &str) -> impl Fn(datafusion::error::DataFusionError) -> ModelError + '_ {
    move |e| ModelError::Engine {
        name: name.to_string(),
        source: e,
    }
}

/// An aggregate's output being written as it is computed: one Parquet
/// file per `quarter` value (the column itself is dropped from the data),
/// so the output is never held in memory whole.
struct QuarterFiles<F> {
    name: String,
    /// The output's schema.
    schema: SchemaRef,
    /// Index of the `quarter` column in the output.
    qi: usize,
    /// The output's schema without `quarter`.
    data_schema: SchemaRef,
    /// Where each quarter's file goes: (directory, file name).
    place: F,
    open: BTreeMap<String, merge::ParquetFile>,
}

impl<F: FnMut(&str) -> Result<PathBuf, ModelError>> QuarterFiles<F> {
    fn new(name: &str, schema: SchemaRef, place: F) -> Result<QuarterFiles<F>, ModelError> {
        let qi = schema
            .index_of(PARTITION_COLUMN)
            .map_err(|_| ModelError::Sql {
                name: name.to_string(),
                message: "the output has no `quarter` column".into(),
            })?;
        let data_fields: Vec<_> = schema
            .fields()
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != qi)
            .map(|(_, f)| f.as_ref().clone())
            .collect();
        Ok(QuarterFiles {
            name: name.to_string(),
            qi,
            data_schema: Arc::new(Schema::new(data_fields)),
            schema,
            place,
            open: BTreeMap::new(),
        })
    }

    fn err(&self, message: impl ToString) -> ModelError {
        ModelError::Sql {
            name: self.name.clone(),
            message: message.to_string(),
        }
    }

    /// Appends one output batch to the files of the quarters it holds.
    fn write(&mut self, batch: &RecordBatch) -> Result<(), ModelError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let qcol = arrow::compute::cast(batch.column(self.qi), &arrow::datatypes::DataType::Utf8)
            .map_err(|e| self.err(e))?;
        let qcol = qcol
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("cast to Utf8");
        if qcol.null_count() > 0 {
            return Err(self.err("a row has a null quarter"));
        }
        let first = qcol.value(0);
        if (1..qcol.len()).all(|i| qcol.value(i) == first) {
            let b = self.data(batch)?;
            return self.append(first, &b);
        }
        let mut groups: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
        for i in 0..qcol.len() {
            groups.entry(qcol.value(i)).or_default().push(i as u32);
        }
        for (q, idx) in groups {
            let b = arrow::compute::take_record_batch(batch, &UInt32Array::from(idx))
                .map_err(|e| self.err(e))?;
            let b = self.data(&b)?;
            self.append(q, &b)?;
        }
        Ok(())
    }

    /// `b` without its `quarter` column.
    fn data(&self, b: &RecordBatch) -> Result<RecordBatch, ModelError> {
        let cols = b
            .columns()
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != self.qi)
            .map(|(_, c)| c.clone())
            .collect();
        RecordBatch::try_new(self.data_schema.clone(), cols).map_err(|e| self.err(e))
    }

    fn append(&mut self, quarter: &str, batch: &RecordBatch) -> Result<(), ModelError> {
        if !self.open.contains_key(quarter) {
            let path = (self.place)(quarter)?;
            let f = merge::ParquetFile::create(&path, self.data_schema.clone())?;
            self.open.insert(quarter.to_string(), f);
        }
        self.open
            .get_mut(quarter)
            .expect("opened above")
            .write(batch)?;
        Ok(())
    }

    /// Closes every file; returns the schema without `quarter` and each quarter's file.
    fn finish(self) -> Result<(SchemaRef, BTreeMap<String, FileEntry>), ModelError> {
        let mut out = BTreeMap::new();
        for (q, f) in self.open {
            out.insert(q, f.finish()?);
        }
        Ok((self.data_schema, out))
    }
}

/// The aggregates to refresh: `names` (all when empty) and everything they read.
fn selection(
    aggs: &[Aggregate],
    ordered: &[usize],
    names: &[String],
) -> Result<BTreeSet<String>, ModelError> {
    if names.is_empty() {
        return Ok(aggs.iter().map(|a| a.name.clone()).collect());
    }
    let mut wanted = BTreeSet::new();
    for n in names {
        if !aggs.iter().any(|a| &a.name == n) {
            let known = aggs.iter().map(|a| a.name.as_str()).collect::<Vec<_>>();
            return Err(ModelError::Unknown(n.clone(), known.join(", ")));
        }
        wanted.insert(n.clone());
    }
    // Readers come after what they read in `ordered`: walk it backwards.
    for &i in ordered.iter().rev() {
        if wanted.contains(&aggs[i].name) {
            for r in aggs[i].reads.iter().flatten() {
                if let Some(p) = r.published() {
                    wanted.insert(p.to_string());
                }
            }
        }
    }
    Ok(wanted)
}

/// About how many input rows (over all tracked inputs, per output quarter)
/// one pass of a lagged aggregate computes from: passes bound the memory of
/// a full refresh (or a long incremental one) by a few quarters' inputs, at
/// the cost of reading lagged inputs more than once and planning each pass,
/// so small inputs are computed in one pass.
const ROWS_PER_PASS: u64 = 3_000_000;

/// One pass of a recomputation: the output quarters it computes and the
/// quarters they read of each input (by manifest key).
struct Pass {
    outputs: BTreeSet<String>,
    reads: BTreeMap<String, BTreeSet<String>>,
}

/// The quarters `sign × lag` away from `quarters`, for every lag: with
/// sign 1 the output quarters an input quarter feeds, with −1 the input
/// quarters an output quarter reads.
fn shifted<'a>(
    quarters: impl IntoIterator<Item = &'a String>,
    lags: &[i32],
    sign: i32,
) -> BTreeSet<String> {
    quarters
        .into_iter()
        .flat_map(|q| lags.iter().filter_map(move |&l| shift(q, sign * l)))
        .collect()
}

/// What one aggregate needs this refresh.
struct Step {
    /// The input partitions' tokens now, by input (`tables/x`, `published/y`).
    current: BTreeMap<String, BTreeMap<String, String>>,
    /// Output quarters to recompute (incremental only).
    incremental: Option<BTreeSet<String>>,
    /// The passes the recomputation runs in, a few output quarters at a
    /// time (see [`ROWS_PER_PASS`]); one unnarrowed pass (`None`) when
    /// the aggregate declares no lags or reads untracked inputs.
    passes: Vec<Option<Pass>>,
    /// Nothing changed: keep the published version.
    unchanged: bool,
}

/// The state of one refresh: the base version it computes from, the new
/// generations written so far (later aggregates read them), and the report.
struct Refresh<'a> {
    catalog: &'a Catalog,
    wh: Warehouse,
    base: Manifest,
    ctx: SessionContext,
    run_id: String,
    full: bool,
    retention: usize,
    /// What has been recomputed so far. Recomputations running at once
    /// lock it only to read or record, never across an `await`.
    done: Mutex<Done>,
}

/// The recomputations of one refresh so far.
#[derive(Default)]
struct Done {
    /// New generations, for the commit.
    changes: Vec<warehouse::DirChange>,
    /// The next metadata of each recomputed aggregate.
    metas: BTreeMap<String, PublishedMeta>,
    /// The new state of each recomputed aggregate (later aggregates read it).
    pending: BTreeMap<String, DirState>,
    /// One entry per aggregate, in the order they finished.
    report: Vec<Refreshed>,
}

/// A refresh's session: joins whose smaller side is estimated at up to
/// 1M rows and 64 MiB build one hash table for all partitions instead of
/// hash-partitioning both sides (DataFusion's defaults are 128K rows and
/// 1 MiB). An incremental refresh joins one quarter of a table (a registry
/// snapshot of 300K enterprises) with another: partitioning copied both
/// sides once more for nothing. On 10.7M loans, after one quarter of them
/// changed: 4.3 -> 3.6 CPU-seconds; a full refresh is unchanged. Analysts'
/// sessions keep the defaults (a join of a quarter's loans with the registry
/// measured a little slower this way).
fn refresh_session(ctx: SessionContext) -> SessionContext {
    {
        let state = ctx.state_ref();
        let mut state = state.write();
        let o = &mut state.config_mut().options_mut().optimizer;
        o.hash_join_single_partition_threshold = 64 << 20;
        o.hash_join_single_partition_threshold_rows = 1 << 20;
    }
    ctx
}

/// Incremental recomputations of independent aggregates that run at once:
/// one quarter of an input is mostly a single file, which DataFusion reads
/// on one thread, and planning is single-threaded too. Full recomputations
/// run alone, so a full refresh's memory stays that of its largest aggregate.
fn concurrent_recomputations() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

impl Refresh<'_> {
    fn done(&self) -> std::sync::MutexGuard<'_, Done> {
        self.done
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Compares the aggregate's inputs now with those it was last computed
    /// from, and decides: unchanged, incremental (which quarters), or full.
    fn step(&self, a: &Aggregate, inputs: &BTreeSet<Input>) -> Step {
        let pending = self.done().pending.clone();
        let mut current: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        let mut always_full = self.full || a.lags.is_none();
        let mut untracked = false;
        for input in inputs {
            match input {
                Input::Dir(d @ DirKey::Table(_)) => {
                    current.insert(d.key(), tokens(self.base.dirs.get(&d.key())));
                }
                Input::Dir(d @ DirKey::Published(p)) => {
                    let state = pending.get(p).or_else(|| self.base.dirs.get(&d.key()));
                    current.insert(d.key(), tokens(state));
                }
                Input::Reference => {}
                // Quarantine and system inputs are not partition-tracked.
                Input::Dir(DirKey::Quarantine(_)) | Input::Untracked(_) => {
                    always_full = true;
                    untracked = true;
                }
            }
        }
        let prev = self.base.published.get(&a.name);
        // An edited definition (its SQL, or a policy value it uses) makes
        // every published quarter stale, not only those whose inputs
        // changed: recompute it whole. So does a definition never recorded.
        let redefined = prev.is_some_and(|p| p.definition.as_deref() != Some(&a.definition()));
        always_full |= redefined;
        if redefined && !self.full {
            tracing::info!(
                aggregate = %a.name,
                "Its SQL or a policy value it uses changed since it was published: every quarter is recomputed."
            );
        }
        let default_lags = a.lags.clone().unwrap_or_else(|| vec![0]);
        // Output quarter q reads quarters q − lag of each input.
        let lags_of = |input: &str| a.input_lags.get(input).unwrap_or(&default_lags);
        let mut changed = false;
        // The output quarters a changed input quarter feeds.
        let mut fed: BTreeSet<String> = BTreeSet::new();
        for (input, parts) in &current {
            let before = prev.and_then(|p| p.inputs.get(input));
            let mut quarters: BTreeSet<String> = parts
                .iter()
                .filter(|(q, t)| before.and_then(|b| b.get(*q)) != Some(*t))
                .map(|(q, _)| q.clone())
                .collect();
            if let Some(b) = before {
                quarters.extend(b.keys().filter(|q| !parts.contains_key(*q)).cloned());
            }
            if let Some(&n) = a.latest.get(input) {
                // The SQL reads only the input's latest n quarters, then
                // or now: changes before both windows change nothing.
                let read = |parts: Option<&BTreeMap<String, String>>| {
                    let mut with_files = parts.into_iter().flatten().filter(|(_, t)| !t.is_empty());
                    let last = with_files.next_back().map(|(q, _)| q);
                    last.and_then(|q| shift(q, 1 - n as i32))
                };
                let (then, now) = (read(before), read(Some(parts)));
                quarters.retain(|q| {
                    then.as_ref().is_some_and(|t| q >= t) || now.as_ref().is_some_and(|t| q >= t)
                });
            }
            changed |= !quarters.is_empty();
            fed.extend(shifted(&quarters, lags_of(input), 1));
        }
        let exists = prev.is_some()
            && self
                .base
                .dirs
                .contains_key(&DirKey::Published(a.name.clone()).key());
        let unchanged = exists && !changed && !redefined && !self.full;
        let incremental = (exists && !always_full).then_some(fed);
        // Aggregates with lags over tracked inputs only are computed a few
        // output quarters at a time, so memory follows a pass, not the table.
        let outs = match &incremental {
            Some(outs) => outs.clone(),
            None if a.lags.is_some() && !untracked => current
                .iter()
                .flat_map(|(input, parts)| shifted(parts.keys(), lags_of(input), 1))
                .collect(),
            None => BTreeSet::new(),
        };
        let pass = |outputs: BTreeSet<String>| Pass {
            reads: current
                .keys()
                .map(|input| (input.clone(), shifted(&outputs, lags_of(input), -1)))
                .collect(),
            outputs,
        };
        let passes = if outs.is_empty() {
            vec![incremental.clone().map(pass)]
        } else {
            let outs: Vec<String> = outs.into_iter().collect();
            outs.chunks(self.quarters_per_pass(&current, &pending))
                .map(|c| Some(pass(c.iter().cloned().collect())))
                .collect()
        };
        Step {
            current,
            incremental,
            passes,
            unchanged,
        }
    }

    /// Output quarters per pass for inputs with these partitions: as many
    /// as keep a pass near [`ROWS_PER_PASS`] input rows, at least one.
    fn quarters_per_pass(
        &self,
        current: &BTreeMap<String, BTreeMap<String, String>>,
        pending: &BTreeMap<String, DirState>,
    ) -> usize {
        let rows: u64 = current
            .keys()
            .map(|key| {
                let pending = match DirKey::parse(key) {
                    Some(DirKey::Published(p)) => pending.get(&p),
                    _ => None,
                };
                let state = pending.or_else(|| self.base.dirs.get(key));
                state.map_or(0, DirState::rows)
            })
            .sum();
        let quarters = current
            .values()
            .flat_map(BTreeMap::keys)
            .collect::<BTreeSet<_>>();
        let per_quarter = rows / quarters.len().max(1) as u64;
        usize::try_from(ROWS_PER_PASS / per_quarter.max(1))
            .unwrap_or(usize::MAX)
            .max(1)
    }

    /// The session an incremental recomputation runs in: the snapshot, with
    /// the new versions published so far, and every input narrowed to the
    /// quarters `reads` names for it (by manifest key).
    async fn narrowed(
        &self,
        a: &Aggregate,
        inputs: &BTreeSet<Input>,
        reads: &BTreeMap<String, BTreeSet<String>>,
    ) -> Result<SessionContext, ModelError> {
        let c = refresh_session(self.catalog.refresh_snapshot(self.base.clone()).await?.ctx);
        let published: Vec<(String, PathBuf, PublishedMeta)> = {
            let done = self.done();
            done.pending
                .iter()
                .map(|(name, dir)| {
                    let meta = done.metas.get(name).expect("pending has meta");
                    let path = self.wh.root().join(&dir.generation);
                    (name.clone(), path, meta.clone())
                })
                .collect()
        };
        for (name, path, meta) in &published {
            let _ = c.deregister_table(format!("published.{name}").as_str());
            catalog::register_published(&c, name, path, meta).await?;
        }
        for input in inputs {
            let (table, key) = match input {
                Input::Dir(d @ (DirKey::Table(_) | DirKey::Published(_))) => {
                    (d.sql_name(), d.key())
                }
                _ => continue,
            };
            let quarters: Vec<_> = reads
                .get(&key)
                .into_iter()
                .flatten()
                .map(|q| lit(q.clone()))
                .collect();
            let err = sql_err(&a.name);
            let df = c.table(table.as_str()).await.map_err(&err)?;
            let df = df
                .filter(col(PARTITION_COLUMN).in_list(quarters, false))
                .map_err(&err)?;
            c.deregister_table(table.as_str()).map_err(&err)?;
            c.register_table(table.as_str(), df.into_view())
                .map_err(&err)?;
        }
        Ok(c)
    }

    /// The query of one pass: `sql` over the inputs narrowed to the quarters
    /// the pass reads, keeping only its output quarters (everything when
    /// the pass is `None`).
    async fn pass_frame(
        &self,
        a: &Aggregate,
        sql: &str,
        inputs: &BTreeSet<Input>,
        pass: Option<&Pass>,
    ) -> Result<datafusion::dataframe::DataFrame, ModelError> {
        let err = sql_err(&a.name);
        let ctx = match pass {
            Some(p) => self.narrowed(a, inputs, &p.reads).await?,
            None => self.ctx.clone(),
        };
        let df = ctx
            .sql_with_options(sql, crate::query::read_only_options())
            .await
            .and_then(crate::query::plain_strings)
            .map_err(&err)?;
        match pass {
            Some(p) => {
                let outs: Vec<_> = p.outputs.iter().map(|q| lit(q.clone())).collect();
                df.filter(col(PARTITION_COLUMN).in_list(outs, false))
                    .map_err(&err)
            }
            None => Ok(df),
        }
    }

    /// Recomputes one aggregate into a new generation (built without the
    /// warehouse lock) and records it for the commit.
    async fn recompute(
        &self,
        a: &Aggregate,
        sql: &str,
        inputs: &BTreeSet<Input>,
        step: Step,
    ) -> Result<(), ModelError> {
        let started = std::time::Instant::now();
        let err = sql_err(&a.name);
        let key = DirKey::Published(a.name.clone()).key();
        let from = match step.incremental {
            Some(_) => self.base.dirs.get(&key).cloned().unwrap_or_default(),
            None => DirState::default(),
        };
        let mut g = self
            .wh
            .begin_generation_unlocked(&self.base, &key, &self.run_id, from)?;
        let file = g.file_name(0);
        let mut files: Option<QuarterFiles<_>> = None;
        for pass in &step.passes {
            let df = self.pass_frame(a, sql, inputs, pass.as_ref()).await?;
            let files = match &mut files {
                Some(f) => f,
                None => {
                    let schema = Arc::new(df.schema().as_arrow().clone());
                    let place = |q: &str| Ok(g.partition_dir(q)?.join(&file));
                    files.insert(QuarterFiles::new(&a.name, schema, place)?)
                }
            };
            let task = Arc::new(df.task_ctx());
            let plan = df.create_physical_plan().await.map_err(&err)?;
            let mut stream =
                datafusion::physical_plan::execute_stream(plan.clone(), task).map_err(&err)?;
            while let Some(batch) = stream.next().await {
                files.write(&batch.map_err(&err)?)?;
            }
            if tracing::enabled!(tracing::Level::DEBUG) {
                let shown =
                    datafusion::physical_plan::display::DisplayableExecutionPlan::with_metrics(
                        plan.as_ref(),
                    );
                tracing::debug!(aggregate = %a.name, "Executed plan:\n{}", shown.indent(true));
            }
        }
        let files = files.expect("at least one pass");
        let out_schema = files.schema.clone();
        let (data_schema, mut parts) = files.finish()?;
        let targets: BTreeSet<String> = match &step.incremental {
            Some(outputs) => outputs.clone(),
            None => parts.keys().cloned().collect(),
        };
        for q in &targets {
            match parts.remove(q) {
                Some(entry) if entry.rows > 0 => g.set_partition(q, vec![entry]),
                _ => g.set_partition(q, Vec::new()),
            }
        }
        let change = self.wh.finish_generation(g)?;
        let mode = if step.incremental.is_some() {
            RefreshMode::Incremental
        } else {
            RefreshMode::Full
        };
        let meta = self.next_meta(
            a,
            &out_schema,
            &data_schema,
            step.current,
            &change,
            mode,
            &targets,
        );
        // Later aggregates read the new version.
        let state = change.state().clone();
        let _ = self
            .ctx
            .deregister_table(format!("published.{}", a.name).as_str());
        catalog::register_published(
            &self.ctx,
            &a.name,
            &self.wh.root().join(&state.generation),
            &meta,
        )
        .await?;
        let mut done = self.done();
        done.report.push(Refreshed {
            secs: started.elapsed().as_secs_f64(),
            name: a.name.clone(),
            mode,
            quarters: targets.into_iter().collect(),
            rows: state.rows(),
            version: self.base.version + 1,
        });
        done.pending.insert(a.name.clone(), state);
        done.metas.insert(a.name.clone(), meta);
        done.changes.push(change);
        Ok(())
    }

    /// The aggregate's metadata with the new version appended (and old ones
    /// past the retention dropped).
    #[allow(clippy::too_many_arguments)]
    fn next_meta(
        &self,
        a: &Aggregate,
        out_schema: &SchemaRef,
        data_schema: &SchemaRef,
        inputs: BTreeMap<String, BTreeMap<String, String>>,
        change: &warehouse::DirChange,
        mode: RefreshMode,
        quarters: &BTreeSet<String>,
    ) -> PublishedMeta {
        let mut meta = self
            .base
            .published
            .get(&a.name)
            .cloned()
            .unwrap_or_default();
        meta.columns = out_schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        meta.schema = data_schema
            .fields()
            .iter()
            .map(|f| (f.name().clone(), f.data_type().to_string(), f.is_nullable()))
            .collect();
        meta.inputs = inputs;
        meta.definition = Some(a.definition());
        meta.versions.push(PublishedVersion {
            version: self.base.version + 1,
            generation: change.state().generation.clone(),
            published_at: warehouse::now(),
            rows: change.state().rows(),
            mode: mode.as_str().into(),
            quarters: quarters.iter().cloned().collect(),
        });
        if meta.versions.len() > self.retention {
            let drop = meta.versions.len() - self.retention;
            meta.versions.drain(..drop);
        }
        meta
    }

    /// Commits every new generation in one manifest version, on top of
    /// whatever was committed meanwhile, unless another refresh published one
    /// of these aggregates (then nothing is published).
    async fn commit(self) -> Result<Vec<Refreshed>, ModelError> {
        let Done {
            changes,
            metas,
            pending: _,
            mut report,
        } = self
            .done
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if changes.is_empty() {
            return Ok(report);
        }
        let names: Vec<&str> = report.iter().map(|r| r.name.as_str()).collect();
        let mut run = RunRecord::start(
            &self.run_id,
            "refresh",
            warehouse::RunType::Refresh,
            &names.join(","),
        );
        run.partitions_touched = report
            .iter()
            .flat_map(|r| r.quarters.iter().map(move |q| format!("{}:{q}", r.name)))
            .collect();
        run.rows_written = report
            .iter()
            .filter(|r| r.mode != RefreshMode::Unchanged)
            .map(|r| r.rows)
            .sum();
        let guard = self.wh.lock_async().await?;
        let current = self.wh.manifest()?;
        for name in metas.keys() {
            let key = DirKey::Published(name.clone()).key();
            if current.dirs.get(&key) != self.base.dirs.get(&key)
                || current.published.get(name) != self.base.published.get(name)
            {
                return Err(ModelError::Conflict(name.clone()));
            }
        }
        let committed = self.wh.commit_with(
            &guard,
            &current,
            changes,
            BTreeMap::new(),
            move |m: &mut Manifest| {
                let version = m.version;
                for (name, mut meta) in metas {
                    if let Some(v) = meta.versions.last_mut() {
                        v.version = version;
                    }
                    m.published.insert(name, meta);
                }
            },
            run,
        )?;
        for r in &mut report {
            if r.mode != RefreshMode::Unchanged {
                r.version = committed.version;
            }
        }
        Ok(report)
    }
}

/// The report of an aggregate nothing it reads changed for.
fn unchanged(base: &Manifest, a: &Aggregate) -> Refreshed {
    let prev = base.published.get(&a.name);
    Refreshed {
        secs: 0.0,
        name: a.name.clone(),
        mode: RefreshMode::Unchanged,
        quarters: vec![],
        rows: base
            .dirs
            .get(&DirKey::Published(a.name.clone()).key())
            .map_or(0, DirState::rows),
        version: prev
            .and_then(|p| p.versions.last())
            .map_or(base.version, |v| v.version),
    }
}

/// Refreshes aggregates (all when `names` is empty, plus what they read);
/// `full` forces full rebuilds. The aggregates are computed without the
/// warehouse lock, so ingest commits need not wait; the lock is taken only
/// to commit at the end.
pub async fn refresh(
    catalog: &Catalog,
    names: &[String],
    full: bool,
) -> Result<Vec<Refreshed>, ModelError> {
    let project = catalog.project().clone();
    let (aggs, diags) = load(&project);
    if diags.iter().any(Diagnostic::is_error) {
        let text: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
        return Err(ModelError::Definitions(text.join("\n")));
    }
    let ordered = order(&aggs).map_err(ModelError::Definitions)?;
    let wanted = selection(&aggs, &ordered, names)?;
    let wh = catalog.warehouse().clone();
    let base = wh.manifest()?;
    let ctx = refresh_session(catalog.refresh_snapshot(base.clone()).await?.ctx);
    let r = Refresh {
        catalog,
        wh,
        base,
        ctx,
        run_id: warehouse::new_run_id("refresh"),
        full,
        retention: project.settings.publish.retention_versions as usize,
        done: Mutex::new(Done::default()),
    };
    let mut waiting: Vec<&Aggregate> = ordered
        .iter()
        .map(|&i| &aggs[i])
        .filter(|a| wanted.contains(&a.name))
        .collect();
    // Each aggregate starts once the aggregates it reads are published
    // (in this refresh's pending state); see `concurrent_recomputations`.
    let limit = concurrent_recomputations();
    let mut running = futures::stream::FuturesUnordered::new();
    let mut running_names: BTreeSet<String> = BTreeSet::new();
    let mut alone = false;
    loop {
        let mut i = 0;
        while i < waiting.len() && running.len() < limit && !alone {
            let a = waiting[i];
            let inputs = a.reads.clone().map_err(|m| ModelError::Sql {
                name: a.name.clone(),
                message: m,
            })?;
            let ready = inputs
                .iter()
                .filter_map(Input::published)
                .all(|p| !running_names.contains(p) && !waiting[..i].iter().any(|w| w.name == p));
            if !ready {
                i += 1;
                continue;
            }
            let step = r.step(a, &inputs);
            if step.unchanged {
                waiting.remove(i);
                r.done().report.push(unchanged(&r.base, a));
                continue;
            }
            if step.incremental.is_none() {
                if !running.is_empty() {
                    break;
                }
                alone = true;
            }
            waiting.remove(i);
            running_names.insert(a.name.clone());
            let r = &r;
            let whole = step.incremental.is_none();
            running.push(async move {
                let result = r.recompute(a, &a.sql, &inputs, step).await;
                (a, whole, result)
            });
        }
        let Some((a, whole, result)) = running.next().await else {
            break;
        };
        result?;
        running_names.remove(&a.name);
        alone = false;
        // The peak of a refresh is that of its largest aggregates, not the
        // sum of what each one's hash tables left in the allocator. After an
        // incremental step (a few quarters) the freed memory is kept for
        // the next: handing it back and faulting it in again cost more
        // system time than the step's reading.
        if whole {
            crate::primitives::release_freed_memory();
        }
    }
    drop(running);
    // The report in the aggregates' order, however they finished.
    r.done()
        .report
        .sort_by_key(|x| ordered.iter().position(|&i| aggs[i].name == x.name));
    r.commit().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> (Directives, Vec<String>) {
        let mut diags = Vec::new();
        let policy = Policy {
            recommendation_lookback_quarters: 6,
            ..Policy::default()
        };
        let file = SourceFile::new("a.sql", text);
        let reads = references(&render_sql(text, &policy)).unwrap();
        let d = directives(&file, &policy, &reads, &mut diags);
        (d, diags.iter().map(|d| d.message.clone()).collect())
    }

    #[test]
    fn per_input_lags_and_latest_quarters_name_inputs_the_sql_reads() {
        let sql = "SELECT l.quarter FROM bank_loans l JOIN published.loan_balances b ON b.quarter = l.quarter";
        let (d, errors) = parsed(&format!(
            "-- ironlake: partition_by = quarter\n-- ironlake: lags = 0, 4\n\
             -- ironlake: lags(published.loan_balances) = 0\n{sql}"
        ));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(d.lags, Some(vec![0, 4]));
        assert_eq!(
            d.input_lags,
            BTreeMap::from([("published/loan_balances".to_string(), vec![0])])
        );
        // latest(x) takes policy placeholders, on an aggregate recomputed whole.
        let (d, errors) = parsed(&format!(
            "-- ironlake: partition_by = quarter\n\
             -- ironlake: latest(bank_loans) = {{{{recommendation_lookback_quarters}}}}\n{sql}"
        ));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            d.latest,
            BTreeMap::from([("tables/bank_loans".to_string(), 6)])
        );
        for (directives, expected) in [
            (
                "-- ironlake: lags = 0\n-- ironlake: lags(enterprises) = 0",
                "lags(enterprises): the SQL does not read enterprises",
            ),
            ("-- ironlake: lags(bank_loans) = 0", "declare `lags` too"),
            (
                "-- ironlake: lags = 0\n-- ironlake: lags(bank_loans) = -1",
                "lags are quarter offsets",
            ),
            (
                "-- ironlake: lags = 0\n-- ironlake: latest(bank_loans) = 4",
                "latest(INPUT) is for aggregates recomputed whole",
            ),
            (
                "-- ironlake: latest(bank_loans) = 0",
                "a number of quarters 1..400, got \"0\"",
            ),
            ("-- ironlake: latest() = 4", "unknown directive"),
        ] {
            let (_, errors) = parsed(&format!(
                "-- ironlake: partition_by = quarter\n{directives}\n{sql}"
            ));
            assert!(
                errors.iter().any(|e| e.contains(expected)),
                "{directives:?}: {errors:?}"
            );
        }
    }

    #[test]
    fn output_batches_land_in_their_quarters_files_in_order_without_the_quarter() {
        use arrow::array::{Int64Array, StringArray};
        use arrow::datatypes::{DataType, Field};
        let dir = tempfile::tempdir().unwrap();
        let schema: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("quarter", DataType::Utf8, true),
            Field::new("n", DataType::Int64, false),
        ]));
        let batch = |qs: Vec<Option<&str>>, ns: Vec<i64>| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from(qs)),
                    Arc::new(Int64Array::from(ns)),
                ],
            )
            .unwrap()
        };
        let root = dir.path().to_path_buf();
        let place = |q: &str| {
            let d = root.join(format!("quarter={q}"));
            std::fs::create_dir_all(&d).unwrap();
            Ok(d.join("part.parquet"))
        };
        let mut files = QuarterFiles::new("agg", schema.clone(), place).unwrap();
        // A batch of one quarter, a mixed one, then the first quarter again.
        files
            .write(&batch(vec![Some("2019Q1"), Some("2019Q1")], vec![1, 2]))
            .unwrap();
        files
            .write(&batch(
                vec![Some("2019Q2"), Some("2019Q1"), Some("2019Q2")],
                vec![3, 4, 5],
            ))
            .unwrap();
        files.write(&batch(vec![Some("2019Q1")], vec![6])).unwrap();
        let (data_schema, parts) = files.finish().unwrap();
        assert_eq!(data_schema.fields().len(), 1);
        assert_eq!(data_schema.field(0).name(), "n");
        assert_eq!(parts.keys().collect::<Vec<_>>(), ["2019Q1", "2019Q2"]);
        let read = |q: &str| -> Vec<i64> {
            let b = merge::read_parquet(
                &dir.path().join(format!("quarter={q}/part.parquet")),
                &data_schema,
            )
            .unwrap();
            assert_eq!(b.num_columns(), 1);
            let n = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
            n.values().to_vec()
        };
        assert_eq!(read("2019Q1"), [1, 2, 4, 6]);
        assert_eq!(read("2019Q2"), [3, 5]);
        assert_eq!(parts["2019Q1"].rows, 4);
        assert_eq!(parts["2019Q2"].rows, 2);

        let mut files = QuarterFiles::new("agg", schema.clone(), |_: &str| {
            Ok(dir.path().join("never.parquet"))
        })
        .unwrap();
        let e = files
            .write(&batch(vec![Some("2019Q1"), None], vec![1, 2]))
            .unwrap_err();
        assert!(e.to_string().contains("null quarter"), "{e}");
    }

    fn project() -> Project {
        crate::config::bundled_for_tests()
    }

    #[test]
    fn column_lines_are_documentation_not_description() {
        let text = "-- 贷款: balances.\n-- column: quarter | 季度 | | the quarter\n\
                    -- column: balance | 余额 | CNY yuan | Σ balance\n-- column: bad line\n\
                    -- ironlake: partition_by = quarter\nSELECT 1";
        let file = SourceFile::new("a.sql", text);
        let mut diags = Vec::new();
        let cols = column_docs(&file, &mut diags);
        assert_eq!(cols.len(), 2);
        assert_eq!(cols[0].unit, None);
        assert_eq!(cols[1].label, "余额");
        assert_eq!(cols[1].unit.as_deref(), Some("CNY yuan"));
        assert_eq!(cols[1].formula, "Σ balance");
        assert_eq!(diags.len(), 1, "{diags:?}");
        assert_eq!(description(text), "贷款: balances.");
    }

    #[test]
    fn every_policy_value_fills_its_placeholder() {
        let policy = Policy::default();
        let text: String = policy
            .placeholders()
            .iter()
            .map(|(k, _)| format!("{{{{{k}}}}} "))
            .collect();
        let sql = render_sql(&text, &policy);
        assert!(!sql.contains("{{"), "{sql}");
        assert!(sql.contains("2.0000 1.0000 50.00 500000.00"), "{sql}");
    }

    #[test]
    fn aggregates_come_after_the_aggregates_they_read() {
        let p = project();
        let (aggs, diags) = load(&p);
        assert!(diags.iter().all(|d| !d.is_error()));
        let ordered = order(&aggs).unwrap();
        let pos = |n: &str| ordered.iter().position(|&i| aggs[i].name == n).unwrap();
        assert!(pos("loan_balances") < pos("loan_growth"));
        assert!(pos("direct_financing_quarterly") < pos("direct_financing_growth"));
        // Asking for one brings what it reads along.
        let wanted = selection(&aggs, &ordered, &["loan_growth".into()]).unwrap();
        assert_eq!(
            wanted.into_iter().collect::<Vec<_>>(),
            ["loan_balances", "loan_growth"]
        );
        assert!(matches!(
            selection(&aggs, &ordered, &["nope".into()]),
            Err(ModelError::Unknown(..))
        ));
    }

    #[test]
    fn quarter_shifts_cross_years_for_year_on_year_inputs() {
        assert_eq!(shift("2019Q1", 4).as_deref(), Some("2020Q1"));
        assert_eq!(shift("2019Q1", -1).as_deref(), Some("2018Q4"));
        assert_eq!(shift("unknown", 1), None);
    }

    #[test]
    fn the_definition_is_the_header_without_directives() {
        let text = "-- 贷款增长: growth.\n-- yoy in percent.\n-- ironlake: lags = 0, 4\nSELECT 1";
        assert_eq!(description(text), "贷款增长: growth. yoy in percent.");
    }
}
