//! Diagnostics for configuration files: every problem points at a file,
//! line and column, names the key, and says what is allowed.

use std::fmt;
use std::ops::Range;

/// How serious a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Something an operator should look at; loading goes on.
    Warning,
    /// The file cannot be used; `ironlake check` exits 1.
    Error,
}

/// One problem found in one configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// The file, as given to the loader (relative to the project root).
    pub file: String,
    /// 1-based line, 0 when the problem concerns the whole file.
    pub line: usize,
    /// 1-based column, 0 when the problem concerns the whole file.
    pub column: usize,
    /// Dotted key path the problem concerns (`source.pagination.style`), if any.
    pub key: Option<String>,
    /// What is wrong and what is allowed.
    pub message: String,
    /// The offending source line, for display under the message.
    pub snippet: Option<String>,
}

impl Diagnostic {
    /// True for errors, false for warnings.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        if self.line > 0 {
            write!(f, "{}:{}:{}: {sev}", self.file, self.line, self.column)?;
        } else {
            write!(f, "{}: {sev}", self.file)?;
        }
        if let Some(key) = &self.key {
            write!(f, ": `{key}`")?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(snippet) = &self.snippet {
            write!(f, "\n    | {snippet}")?;
            if self.column > 0 {
                let pad: String = snippet
                    .chars()
                    .take(self.column - 1)
                    .map(|c| if c == '\t' { '\t' } else { ' ' })
                    .collect();
                write!(f, "\n    | {pad}^")?;
            }
        }
        Ok(())
    }
}

/// A configuration file's name and text; turns byte offsets into positions.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// Name shown in diagnostics (path relative to the project root).
    pub name: String,
    /// Full text of the file.
    pub text: String,
}

impl SourceFile {
    /// A file with this display name and text.
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> SourceFile {
        SourceFile {
            name: name.into(),
            text: text.into(),
        }
    }

    /// 1-based (line, column) of a byte offset; columns count characters.
    pub fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..floor_char_boundary(&self.text, offset)];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        (line, column)
    }

    fn line_text(&self, line: usize) -> Option<String> {
        self.text
            .lines()
            .nth(line.checked_sub(1)?)
            .map(|l| l.trim_end().to_string())
    }

    /// A diagnostic at a span of this file (`None`: the whole file).
    pub fn diag(
        &self,
        severity: Severity,
        span: Option<Range<usize>>,
        key: Option<&str>,
        message: impl Into<String>,
    ) -> Diagnostic {
        let (line, column) = span.map_or((0, 0), |s| self.position(s.start));
        Diagnostic {
            severity,
            file: self.name.clone(),
            line,
            column,
            key: key.map(str::to_string),
            message: message.into(),
            snippet: if line > 0 { self.line_text(line) } else { None },
        }
    }

    /// An error at a span of this file.
    pub fn error(
        &self,
        span: Option<Range<usize>>,
        key: &str,
        message: impl Into<String>,
    ) -> Diagnostic {
        let key = (!key.is_empty()).then_some(key);
        self.diag(Severity::Error, span, key, message)
    }

    /// A warning at a span of this file.
    pub fn warning(
        &self,
        span: Option<Range<usize>>,
        key: &str,
        message: impl Into<String>,
    ) -> Diagnostic {
        let key = (!key.is_empty()).then_some(key);
        self.diag(Severity::Warning, span, key, message)
    }

    /// Parses the file as TOML into `T`; a syntax or shape error becomes a diagnostic.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, Diagnostic> {
        toml::from_str(&self.text).map_err(|e| {
            let message = e.message().trim().to_string();
            self.diag(Severity::Error, e.span(), None, message)
        })
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Collects diagnostics across files, so that all problems are reported in one go.
#[derive(Debug, Default, Clone)]
pub struct Diagnostics {
    items: Vec<Diagnostic>,
}

impl Diagnostics {
    /// Adds one diagnostic.
    pub fn push(&mut self, d: Diagnostic) {
        self.items.push(d);
    }

    /// True if any diagnostic is an error.
    pub fn has_errors(&self) -> bool {
        self.items.iter().any(Diagnostic::is_error)
    }

    /// Diagnostics for one file.
    pub fn for_file<'a>(&'a self, file: &'a str) -> impl Iterator<Item = &'a Diagnostic> + 'a {
        self.items.iter().filter(move |d| d.file == file)
    }

    /// All diagnostics, in the order found.
    pub fn all(&self) -> &[Diagnostic] {
        &self.items
    }

    /// All diagnostics, consumed.
    pub fn into_vec(self) -> Vec<Diagnostic> {
        self.items
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_lines_and_characters() {
        let f = SourceFile::new("x.toml", "a = 1\n名字 = \"x\"\n");
        assert_eq!(f.position(0), (1, 1));
        assert_eq!(f.position(6), (2, 1));
        // "名字 " is 7 bytes but 3 characters: the '=' is column 4.
        assert_eq!(f.position(6 + 7), (2, 4));
    }

    #[test]
    fn display_has_file_line_column_key_and_caret() {
        let f = SourceFile::new("p.toml", "x = 1\ncron = \"bad\"\n");
        let d = f.error(Some(13..18), "schedule.cron", "invalid");
        let s = d.to_string();
        assert!(
            s.starts_with("p.toml:2:8: error: `schedule.cron`: invalid"),
            "{s}"
        );
        assert!(s.contains("cron = \"bad\"\n    |        ^"), "{s}");
    }
}
