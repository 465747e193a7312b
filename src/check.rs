//! `ironlake check`: validate the config, every schema and every pipeline,
//! and report one summary line per good file or every problem found.

use crate::config::{self, LoadOptions, LoadReport};
use std::collections::BTreeSet;
use std::fmt::Write as _;

/// The outcome of `ironlake check`: the text to print and the exit code.
#[derive(Debug)]
pub struct CheckOutcome {
    /// What to print on stdout (summaries) — one line per good file.
    pub stdout: String,
    /// What to print on stderr: every error and warning.
    pub stderr: String,
    /// 0 when there are no errors, 1 otherwise.
    pub exit_code: i32,
}

/// Loads the project, plans every aggregate, and renders the report.
pub async fn run(opts: &LoadOptions) -> CheckOutcome {
    let mut report = config::load(opts);
    // With errors elsewhere, the aggregates are still planned against what did load.
    let partial = report.partial.take();
    if let Some(project) = report.project.as_ref().or(partial.as_ref()) {
        let diags = crate::models::check(project).await;
        let (aggs, _) = crate::models::load(project);
        for a in &aggs {
            report.summaries.push((
                a.file.name.clone(),
                format!(
                    "published.{}, partitioned by quarter, {}",
                    a.name,
                    a.refresh_rule()
                ),
            ));
        }
        let failed = diags.iter().any(|d| d.is_error());
        for d in diags {
            report.diagnostics.push(d);
        }
        if failed {
            report.project = None;
        }
    }
    render(&report)
}

/// Renders a load report as `ironlake check` prints it.
pub fn render(report: &LoadReport) -> CheckOutcome {
    let mut stdout = String::new();
    let mut stderr = String::new();
    let bad_files: BTreeSet<&str> = report
        .diagnostics
        .all()
        .iter()
        .filter(|d| d.is_error())
        .map(|d| d.file.as_str())
        .collect();
    for (file, summary) in &report.summaries {
        if !bad_files.contains(file.as_str()) {
            let _ = writeln!(stdout, "ok {file}: {summary}");
        }
    }
    for d in report.diagnostics.all() {
        let _ = writeln!(stderr, "{d}");
    }
    let errors = report
        .diagnostics
        .all()
        .iter()
        .filter(|d| d.is_error())
        .count();
    let warnings = report.diagnostics.all().len() - errors;
    if errors > 0 {
        let _ = writeln!(
            stderr,
            "check failed: {errors} error{} in {} file{}, {warnings} warning{}",
            plural(errors),
            bad_files.len(),
            plural(bad_files.len()),
            plural(warnings)
        );
    } else {
        let _ = writeln!(
            stdout,
            "check passed: {} files, {warnings} warning{}",
            report.summaries.len(),
            plural(warnings)
        );
    }
    CheckOutcome {
        stdout,
        stderr,
        exit_code: if errors > 0 { 1 } else { 0 },
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}
