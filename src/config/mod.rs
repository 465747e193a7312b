//! Declarative configuration: `ironlake.toml`, table schemas and pipelines.
//!
//! Each file is parsed into a raw serde form (`deny_unknown_fields`) and then
//! validated into types that cannot be invalid. Every problem in every file
//! is collected, with file, line, column, key and what is allowed, so that
//! an operator sees all of them in one go.

pub mod diag;
pub mod pipeline;
pub mod schema;
pub mod settings;

pub use diag::{Diagnostic, Diagnostics, Severity, SourceFile};
pub use pipeline::{Pipeline, PushPipeline};
pub use schema::TableSchema;
pub use settings::Settings;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The embedded default configuration (`ironlake.toml` at the repository root).
pub const EMBEDDED_CONFIG: &str = include_str!("../../ironlake.toml");

/// Default config path when neither `--config` nor `IRONLAKE_CONFIG` is given.
pub const DEFAULT_CONFIG_PATH: &str = "ironlake.toml";

/// A fully loaded, cross-checked project: settings, tables and pipelines.
#[derive(Debug, Clone)]
pub struct Project {
    /// Validated settings.
    pub settings: Settings,
    /// Table schemas, sorted by name.
    pub tables: Vec<TableSchema>,
    /// Pipelines, sorted by name.
    pub pipelines: Vec<Pipeline>,
    /// Push pipelines (partners post records), sorted by name.
    pub push_pipelines: Vec<PushPipeline>,
    /// Warnings found while loading.
    pub warnings: Vec<Diagnostic>,
}

impl Project {
    /// The table with this name.
    pub fn table(&self, name: &str) -> Option<&TableSchema> {
        self.tables.iter().find(|t| t.name == name)
    }

    /// The pipeline with this name.
    pub fn pipeline(&self, name: &str) -> Option<&Pipeline> {
        self.pipelines.iter().find(|p| p.name == name)
    }

    /// The push pipeline with this name.
    pub fn push_pipeline(&self, name: &str) -> Option<&PushPipeline> {
        self.push_pipelines.iter().find(|p| p.name == name)
    }
}

/// What `load` found in each file, for `ironlake check`.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// One line per file that loaded cleanly: (file, summary).
    pub summaries: Vec<(String, String)>,
    /// Every error and warning, in file order.
    pub diagnostics: Diagnostics,
    /// The project, when there were no errors.
    pub project: Option<Project>,
    /// What did load when there were errors (the settings, the good schemas
    /// and pipelines), so `ironlake check` can go on to the aggregates.
    pub partial: Option<Project>,
}

impl LoadReport {
    /// Every error, one per line, as a message for the operator.
    pub fn errors_text(&self) -> String {
        self.diagnostics
            .all()
            .iter()
            .filter(|d| d.is_error())
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Where to load the project from.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Config file; `None` means `./ironlake.toml`, or the embedded default if that is absent.
    pub config: Option<PathBuf>,
    /// Overrides the configured warehouse directory.
    pub warehouse: Option<PathBuf>,
}

fn read_dir_toml(dir: &Path, display_base: &Path) -> Result<Vec<(String, SourceFile)>, String> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read directory {}: {e}", dir.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot read directory {}: {e}", dir.display()))?;
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") || !path.is_file() {
            continue;
        }
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        let shown = path
            .strip_prefix(display_base)
            .unwrap_or(&path)
            .display()
            .to_string();
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("cannot read {shown}: {e}"))?;
        files.push((stem, SourceFile::new(shown, text)));
    }
    files.sort_by(|a, b| a.1.name.cmp(&b.1.name));
    Ok(files)
}

/// The config file to read and the directory its relative paths start from.
fn config_file(opts: &LoadOptions) -> Result<(SourceFile, PathBuf), Diagnostic> {
    let (file, base) = match &opts.config {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => (
                SourceFile::new(path.display().to_string(), text),
                path.parent().map(Path::to_path_buf).unwrap_or_default(),
            ),
            Err(e) => {
                return Err(SourceFile::new(path.display().to_string(), "").error(
                    None,
                    "",
                    format!("cannot read the config file: {e}"),
                ));
            }
        },
        None => match std::fs::read_to_string(DEFAULT_CONFIG_PATH) {
            Ok(text) => (SourceFile::new(DEFAULT_CONFIG_PATH, text), PathBuf::new()),
            Err(_) => (
                SourceFile::new("<embedded ironlake.toml>", EMBEDDED_CONFIG),
                PathBuf::new(),
            ),
        },
    };
    let base = if base.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        base
    };
    Ok((file, base))
}

/// Applies `--warehouse`: the warehouse, and a spill directory that lived inside the old one.
fn override_warehouse(settings: &mut Settings, base: &Path, warehouse: Option<&PathBuf>) {
    let Some(w) = warehouse else {
        return;
    };
    settings.warehouse_dir = w.clone();
    if settings.sql.spill_dir.starts_with(base.join("warehouse"))
        || !settings.sql.spill_dir.is_absolute()
    {
        settings.sql.spill_dir = w.join("_ironlake").join("spill");
    }
}

/// The TOML files of a directory named by a config key; a diagnostic if it cannot be read.
fn files_of(
    report: &mut LoadReport,
    config: &SourceFile,
    key: &str,
    dir: &Path,
    base: &Path,
) -> Vec<(String, SourceFile)> {
    read_dir_toml(dir, base).unwrap_or_else(|msg| {
        report.diagnostics.push(config.error(None, key, msg));
        Vec::new()
    })
}

/// Loads every schema; duplicates and misnamed files are reported.
fn load_tables(report: &mut LoadReport, files: &[(String, SourceFile)]) -> Vec<TableSchema> {
    let mut tables: Vec<TableSchema> = Vec::new();
    let mut table_files: HashMap<String, String> = HashMap::new();
    for (stem, file) in files {
        let t = match schema::load(file) {
            Ok(t) => t,
            Err(errs) => {
                errs.into_iter().for_each(|e| report.diagnostics.push(e));
                continue;
            }
        };
        if let Some(first) = table_files.get(&t.name) {
            report.diagnostics.push(file.error(
                Some(t.name_span.clone()),
                "table",
                format!(
                    "table {:?} is already declared in {first}; table names must be unique",
                    t.name
                ),
            ));
            continue;
        }
        if &t.name != stem {
            report.diagnostics.push(file.warning(
                Some(t.name_span.clone()),
                "table",
                format!("table {:?} is declared in a file named {stem}.toml; name the file after the table", t.name),
            ));
        }
        let key = t.primary_key_names().join(", ");
        report.summaries.push((
            file.name.clone(),
            format!(
                "table {}, {} columns, key ({key}), partitioned by quarter of {}",
                t.name,
                t.columns.len(),
                t.period().name
            ),
        ));
        table_files.insert(t.name.clone(), file.name.clone());
        tables.push(t);
    }
    tables.sort_by(|a, b| a.name.cmp(&b.name));
    tables
}

/// The error for a pipeline whose target table no schema declares.
fn missing_table(
    file: &SourceFile,
    table: &str,
    span: std::ops::Range<usize>,
    tables: &[TableSchema],
    schemas_dir: &Path,
) -> Diagnostic {
    let known = if tables.is_empty() {
        "none are declared".to_string()
    } else {
        tables
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    file.error(
        Some(span),
        "table",
        format!(
            "pipeline targets table {table:?}, which no schema in {} declares; tables: {known}",
            schemas_dir.display()
        ),
    )
}

/// Checks a loaded pipeline against the tables: its table exists and its
/// cursor field is one of that table's columns.
fn check_against_tables(
    report: &mut LoadReport,
    file: &SourceFile,
    p: &Pipeline,
    tables: &[TableSchema],
    schemas_dir: &Path,
) -> bool {
    let Some(t) = tables.iter().find(|t| t.name == p.table) else {
        let d = missing_table(file, &p.table, p.table_span.clone(), tables, schemas_dir);
        report.diagnostics.push(d);
        return false;
    };
    if let pipeline::Window::Incremental { field, .. } = &p.source.window
        && t.column(field).is_none()
    {
        report.diagnostics.push(file.error(
            None,
            "source.incremental.field",
            format!(
                "the cursor field {field:?} is not a column of table {}; columns: {}",
                t.name,
                t.columns.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ")
            ),
        ));
        return false;
    }
    true
}

/// Loads every pipeline and checks it against the tables.
fn load_pipelines(
    report: &mut LoadReport,
    files: &[(String, SourceFile)],
    tables: &[TableSchema],
    schemas_dir: &Path,
) -> Vec<Pipeline> {
    let mut pipelines = Vec::new();
    for (stem, file) in files {
        match pipeline::load(file, stem) {
            Ok((p, warnings)) => {
                let ok = check_against_tables(report, file, &p, tables, schemas_dir);
                warnings
                    .into_iter()
                    .for_each(|w| report.diagnostics.push(w));
                if ok {
                    report
                        .summaries
                        .push((file.name.clone(), describe_pipeline(&p)));
                    pipelines.push(p);
                }
            }
            Err(errs) => {
                errs.into_iter().for_each(|e| report.diagnostics.push(e));
                // The file has other errors; still say if its table does not exist.
                if let Some((table, span)) = pipeline::declared_table(file)
                    && !tables.iter().any(|t| t.name == table)
                {
                    let d = missing_table(file, &table, span, tables, schemas_dir);
                    report.diagnostics.push(d);
                }
            }
        }
    }
    pipelines.sort_by(|a, b| a.name.cmp(&b.name));
    pipelines
}

/// Loads the push pipelines (`[source] kind = "push"`) and checks their tables.
fn load_push_pipelines(
    report: &mut LoadReport,
    files: &[(String, SourceFile)],
    tables: &[TableSchema],
    schemas_dir: &Path,
) -> Vec<PushPipeline> {
    let mut out = Vec::new();
    for (stem, file) in files {
        match pipeline::load_push(file, stem) {
            Ok(p) => {
                if !tables.iter().any(|t| t.name == p.table) {
                    let d =
                        missing_table(file, &p.table, p.table_span.clone(), tables, schemas_dir);
                    report.diagnostics.push(d);
                    continue;
                }
                report.summaries.push((
                    file.name.clone(),
                    format!(
                        "{} <- push (POST /api/v1/intake/{}, JSON, NDJSON or CSV, at most {} bytes a request)",
                        p.table, p.name, p.max_body_bytes
                    ),
                ));
                out.push(p);
            }
            Err(errs) => errs.into_iter().for_each(|e| report.diagnostics.push(e)),
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Every partner may push only to push pipelines that exist.
fn check_partners(
    report: &mut LoadReport,
    config: &SourceFile,
    settings: &Settings,
    push: &[PushPipeline],
) {
    for partner in &settings.api.partners {
        for p in &partner.pipelines {
            if !push.iter().any(|x| &x.name == p) {
                let known: Vec<&str> = push.iter().map(|x| x.name.as_str()).collect();
                report.diagnostics.push(config.error(
                    None,
                    "api.partners.pipelines",
                    format!(
                        "partner {:?} may push to {p:?}, which is not a push pipeline; push pipelines: {}",
                        partner.name,
                        if known.is_empty() { "none".to_string() } else { known.join(", ") }
                    ),
                ));
            }
        }
    }
}

/// Loads config, schemas and pipelines, collecting every problem.
pub fn load(opts: &LoadOptions) -> LoadReport {
    let mut report = LoadReport::default();
    let (config, base) = match config_file(opts) {
        Ok(c) => c,
        Err(d) => {
            report.diagnostics.push(d);
            return report;
        }
    };
    let mut settings = match settings::load(&config, &base) {
        Ok(s) => s,
        Err(errs) => {
            errs.into_iter().for_each(|e| report.diagnostics.push(e));
            return report;
        }
    };
    override_warehouse(&mut settings, &base, opts.warehouse.as_ref());
    let schema_files = files_of(
        &mut report,
        &config,
        "project.schemas_dir",
        &settings.schemas_dir,
        &base,
    );
    let pipeline_files = files_of(
        &mut report,
        &config,
        "project.pipelines_dir",
        &settings.pipelines_dir,
        &base,
    );
    let tables = load_tables(&mut report, &schema_files);
    let (push_files, pull_files): (Vec<_>, Vec<_>) = pipeline_files
        .into_iter()
        .partition(|(_, f)| pipeline::is_push(f));
    let pipelines = load_pipelines(&mut report, &pull_files, &tables, &settings.schemas_dir);
    let push_pipelines =
        load_push_pipelines(&mut report, &push_files, &tables, &settings.schemas_dir);
    check_partners(&mut report, &config, &settings, &push_pipelines);
    let summary = format!(
        "warehouse {}, {} tables, {} pipelines{}",
        settings.warehouse_dir.display(),
        tables.len(),
        pipelines.len(),
        if push_pipelines.is_empty() {
            String::new()
        } else {
            let n = push_pipelines.len();
            format!(" and {n} push pipeline{}", if n == 1 { "" } else { "s" })
        }
    );
    report.summaries.insert(0, (config.name.clone(), summary));
    let warnings = report.diagnostics.all().to_vec();
    let project = Project {
        settings,
        tables,
        pipelines,
        push_pipelines,
        warnings,
    };
    if report.diagnostics.has_errors() {
        report.partial = Some(project);
    } else {
        report.project = Some(project);
    }
    report
}

fn describe_pipeline(p: &Pipeline) -> String {
    use pipeline::{Auth, Format, Pagination, Window};
    let format = match p.source.format {
        Format::Json => "json",
        Format::Ndjson => "ndjson",
        Format::Csv => "csv",
    };
    let pages = match p.source.pagination {
        Pagination::None => "one page",
        Pagination::PageNumber { .. } => "page-number pages",
        Pagination::OffsetLimit { .. } => "offset/limit pages",
        Pagination::Cursor { .. } => "cursor pages",
        Pagination::LinkHeader { .. } => "Link-header pages",
    };
    let auth = match p.source.auth {
        Auth::None => "no auth",
        Auth::Bearer { .. } => "bearer auth",
        Auth::ApiKey { .. } => "API-key auth",
        Auth::Basic { .. } => "basic auth",
    };
    let window = match &p.source.window {
        Window::Snapshot => "full snapshot each run".to_string(),
        Window::Quarters => format!("quarters from {}", p.start),
        Window::Incremental {
            param,
            field,
            lookback_days,
        } => {
            format!(
                "incremental by {field} (?{param}=, lookback {lookback_days} days) from {}",
                p.start
            )
        }
    };
    let next = p
        .schedule
        .cron
        .upcoming(p.schedule.time_zone)
        .next()
        .map(|t| format!("; next run {}", t.format("%Y-%m-%d %H:%M:%S %Z")))
        .unwrap_or_default();
    format!(
        "{} <- {format}, {pages}, {auth}, {window}; cron \"{}\" {}{next}",
        p.table, p.schedule.expression, p.schedule.time_zone
    )
}

/// The project bundled with the repository, for unit tests (its warehouse is never opened).
#[cfg(test)]
pub(crate) fn bundled_for_tests() -> Project {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    load(&LoadOptions {
        config: Some(root.join("ironlake.toml")),
        warehouse: Some(std::env::temp_dir().join("ironlake-unit-unused")),
    })
    .project
    .expect("the bundled project loads")
}
