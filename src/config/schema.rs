//! Table schemas (`schemas/<table>.toml`): columns with Arrow types,
//! nullability, enumerations, units and validators; primary key and the
//! period column that gives each row's quarter.

use super::diag::{Diagnostic, SourceFile};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::Deserialize;
use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use toml::Spanned;

/// Column name reserved for the partition column added by the warehouse.
pub const PARTITION_COLUMN: &str = "quarter";

/// The Arrow types a column may declare.
pub const VALID_TYPES: &str = "Utf8, Boolean, Int32, Int64, Date32, Decimal128(precision,scale)";

/// The validators a column may name in `check`.
pub const VALID_CHECKS: &str = "uscc, district_code, industry_code";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchema {
    table: Spanned<String>,
    description: String,
    primary_key: Spanned<Vec<Spanned<String>>>,
    period_column: Spanned<String>,
    columns: Vec<RawColumn>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawColumn {
    name: Spanned<String>,
    #[serde(rename = "type")]
    data_type: Spanned<String>,
    #[serde(default)]
    nullable: bool,
    description: String,
    #[serde(default)]
    unit: Option<String>,
    #[serde(default)]
    allowed: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    check: Option<Spanned<String>>,
    #[serde(default)]
    few_values: Option<Spanned<bool>>,
}

/// A column's Arrow type, restricted to what the warehouse stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    /// UTF-8 text (stored as plain Utf8 in Parquet).
    Utf8,
    /// true/false.
    Boolean,
    /// 32-bit integer.
    Int32,
    /// 64-bit integer.
    Int64,
    /// Calendar date (days since 1970-01-01), given as `YYYY-MM-DD` text.
    Date32,
    /// Exact decimal, e.g. money as `Decimal128(18,2)`.
    Decimal128 {
        /// Total significant digits, 1..=38.
        precision: u8,
        /// Digits after the point, 0..=precision.
        scale: u8,
    },
}

impl ColumnType {
    /// The Arrow data type.
    pub fn arrow(self) -> DataType {
        match self {
            ColumnType::Utf8 => DataType::Utf8,
            ColumnType::Boolean => DataType::Boolean,
            ColumnType::Int32 => DataType::Int32,
            ColumnType::Int64 => DataType::Int64,
            ColumnType::Date32 => DataType::Date32,
            ColumnType::Decimal128 { precision, scale } => {
                DataType::Decimal128(precision, scale as i8)
            }
        }
    }

    /// Parses a type name as written in a schema file.
    pub fn parse(text: &str) -> Result<ColumnType, String> {
        let t = text.trim();
        Ok(match t {
            "Utf8" => ColumnType::Utf8,
            "Boolean" => ColumnType::Boolean,
            "Int32" => ColumnType::Int32,
            "Int64" => ColumnType::Int64,
            "Date32" => ColumnType::Date32,
            _ => {
                let Some(args) = t
                    .strip_prefix("Decimal128(")
                    .and_then(|r| r.strip_suffix(')'))
                else {
                    return Err(format!("unknown type {text:?}; valid types: {VALID_TYPES}"));
                };
                let parts: Vec<&str> = args.split(',').map(str::trim).collect();
                let (Some(p), Some(s), 2) = (
                    parts.first().and_then(|p| p.parse::<u8>().ok()),
                    parts.get(1).and_then(|s| s.parse::<u8>().ok()),
                    parts.len(),
                ) else {
                    return Err(format!(
                        "{text:?}: Decimal128 takes two integers, precision and scale, e.g. Decimal128(18,2)"
                    ));
                };
                if !(1..=38).contains(&p) {
                    return Err(format!(
                        "{text:?}: Decimal128 precision must be 1..=38, found {p}"
                    ));
                }
                if s > p {
                    return Err(format!(
                        "{text:?}: Decimal128 scale {s} is greater than precision {p}; scale must be 0..={p}"
                    ));
                }
                ColumnType::Decimal128 {
                    precision: p,
                    scale: s,
                }
            }
        })
    }
}

impl fmt::Display for ColumnType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ColumnType::Decimal128 { precision, scale } => {
                write!(f, "Decimal128({precision},{scale})")
            }
            other => write!(f, "{other:?}"),
        }
    }
}

/// A domain validator a text column is checked with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// GB 32100-2015 unified social credit code.
    Uscc,
    /// One of Chongqing's 38 GB/T 2260 district codes.
    DistrictCode,
    /// A GB/T 4754-2017 4-digit industry class.
    IndustryCode,
}

impl Check {
    fn parse(s: &str) -> Option<Check> {
        Some(match s {
            "uscc" => Check::Uscc,
            "district_code" => Check::DistrictCode,
            "industry_code" => Check::IndustryCode,
            _ => return None,
        })
    }
}

/// One validated column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Column name (snake_case).
    pub name: String,
    /// Arrow type.
    pub data_type: ColumnType,
    /// Whether the value may be missing.
    pub nullable: bool,
    /// Description carrying the Chinese statistical term.
    pub description: String,
    /// Unit of measure (`CNY yuan`, `percent per year`, …), if any.
    pub unit: Option<String>,
    /// Allowed values of an enumeration column.
    pub allowed: Option<Vec<String>>,
    /// Domain validator applied to each value.
    pub check: Option<Check>,
    /// Declared to take few distinct values (`few_values = true`: a few
    /// dozen reporting banks), though they are not listed as an enumeration;
    /// [`Column::few_values`] tells whether the column takes few values
    /// for any reason.
    pub declared_few_values: bool,
}

impl Column {
    /// Whether the column takes few distinct values: an enumeration
    /// (`allowed` values), a district code (38 of them), an industry class
    /// (a few hundred) or a column declared with `few_values = true`.
    pub fn few_values(&self) -> bool {
        self.declared_few_values
            || self.allowed.is_some()
            || matches!(self.check, Some(Check::DistrictCode | Check::IndustryCode))
    }
}

/// One validated table schema.
#[derive(Debug, Clone)]
pub struct TableSchema {
    /// Table name, unique in the warehouse.
    pub name: String,
    /// Byte span of the `table` value in the file, for cross-file diagnostics.
    pub name_span: std::ops::Range<usize>,
    /// What the table holds.
    pub description: String,
    /// Columns in declaration order.
    pub columns: Vec<Column>,
    /// Indexes of the primary-key columns.
    pub primary_key: Vec<usize>,
    /// Index of the Date32 column whose quarter partitions the row.
    pub period_column: usize,
    /// File the schema was loaded from.
    pub file: String,
}

impl TableSchema {
    /// The Arrow schema of the stored rows (without the `quarter` partition column).
    pub fn arrow_schema(&self) -> SchemaRef {
        self.schema_with(|c| c.data_type.arrow())
    }

    /// The Arrow schema analysts' queries read the stored rows with (the
    /// refresh reads them as stored: [`crate::catalog::Catalog::refresh_snapshot`]): as
    /// [`TableSchema::arrow_schema`], but text of few distinct values
    /// ([`Column::few_values`]) as `Utf8View`. Such a column is
    /// dictionary-encoded in the files; the Parquet reader makes views of
    /// the dictionary instead of copying each row's string, and grouping by
    /// or comparing them mostly compares the bytes inside the view. Results
    /// leave the engine as `Utf8` again ([`crate::query::plain_strings`]).
    /// Text of many values (USCCs, names, contract numbers) stays `Utf8`:
    /// there, hashing and comparing views measured slower.
    pub fn read_schema(&self) -> SchemaRef {
        self.schema_with(|c| match c.data_type.arrow() {
            DataType::Utf8 if c.few_values() => DataType::Utf8View,
            dt => dt,
        })
    }

    /// The columns as Arrow fields, each of the type `type_of` gives it.
    fn schema_with(&self, type_of: impl Fn(&Column) -> DataType) -> SchemaRef {
        let fields: Vec<Field> = self
            .columns
            .iter()
            .map(|c| Field::new(&c.name, type_of(c), c.nullable))
            .collect();
        Arc::new(Schema::new(fields))
    }

    /// The column with this name.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// Names of the primary-key columns.
    pub fn primary_key_names(&self) -> Vec<&str> {
        self.primary_key
            .iter()
            .map(|&i| self.columns[i].name.as_str())
            .collect()
    }

    /// The period column.
    pub fn period(&self) -> &Column {
        &self.columns[self.period_column]
    }
}

/// Whether `s` is a lower-case identifier: `[a-z][a-z0-9_]*`.
pub fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// One column entry, checked: name, type, enumeration and validator.
/// `None` when its type is unreadable (the error is in `errors`).
fn column(
    file: &SourceFile,
    i: usize,
    rc: &RawColumn,
    seen: &mut HashSet<String>,
    errors: &mut Vec<Diagnostic>,
) -> Option<Column> {
    let key = |k: &str| format!("columns[{i}].{k}");
    let name = rc.name.get_ref().clone();
    let name_problem = if !is_identifier(&name) {
        Some(format!(
            "column name {name:?} must be a lower-case identifier ([a-z][a-z0-9_]*)"
        ))
    } else if name == PARTITION_COLUMN {
        Some("`quarter` is reserved for the partition column the warehouse adds".to_string())
    } else if !seen.insert(name.clone()) {
        Some(format!("column {name:?} is declared twice"))
    } else {
        None
    };
    if let Some(msg) = name_problem {
        errors.push(file.error(Some(rc.name.span()), &key("name"), msg));
    }
    let data_type = match ColumnType::parse(rc.data_type.get_ref()) {
        Ok(t) => t,
        Err(msg) => {
            errors.push(file.error(Some(rc.data_type.span()), &key("type"), msg));
            return None;
        }
    };
    if let Some(allowed) = &rc.allowed {
        let problems: Vec<String> = if data_type != ColumnType::Utf8 {
            vec![format!(
                "`allowed` values apply only to Utf8 columns, not {data_type}"
            )]
        } else if allowed.get_ref().is_empty() {
            vec!["an enumeration needs at least one allowed value".into()]
        } else {
            let mut vals = HashSet::new();
            allowed
                .get_ref()
                .iter()
                .filter(|v| !vals.insert(*v))
                .map(|v| format!("allowed value {v:?} is listed twice"))
                .collect()
        };
        for msg in problems {
            errors.push(file.error(Some(allowed.span()), &key("allowed"), msg));
        }
    }
    let check = rc.check.as_ref().and_then(|c| {
        let problem = match Check::parse(c.get_ref()) {
            Some(chk) if data_type == ColumnType::Utf8 => return Some(chk),
            Some(_) => format!("`check` applies only to Utf8 columns, not {data_type}"),
            None => format!(
                "unknown check {:?}; valid checks: {VALID_CHECKS}",
                c.get_ref()
            ),
        };
        errors.push(file.error(Some(c.span()), &key("check"), problem));
        None
    });
    if let Some(few) = &rc.few_values
        && data_type != ColumnType::Utf8
    {
        errors.push(file.error(
            Some(few.span()),
            &key("few_values"),
            format!("`few_values` applies only to Utf8 columns, not {data_type}"),
        ));
    }
    Some(Column {
        name,
        data_type,
        nullable: rc.nullable,
        description: rc.description.clone(),
        unit: rc.unit.clone(),
        allowed: rc.allowed.as_ref().map(|a| a.get_ref().clone()),
        check,
        declared_few_values: rc.few_values.as_ref().is_some_and(|f| *f.get_ref()),
    })
}

/// The primary key as column indexes: each named column exists once and is not nullable.
fn primary_key(
    file: &SourceFile,
    raw: &RawSchema,
    columns: &[Column],
    names: &[String],
    errors: &mut Vec<Diagnostic>,
) -> Vec<usize> {
    let mut primary_key = Vec::new();
    if raw.primary_key.get_ref().is_empty() {
        errors.push(file.error(
            Some(raw.primary_key.span()),
            "primary_key",
            "the primary key needs at least one column",
        ));
    }
    let mut pk_seen = HashSet::new();
    for k in raw.primary_key.get_ref() {
        let problem = match columns.iter().position(|c| &c.name == k.get_ref()) {
            Some(idx) => {
                primary_key.push(idx);
                if !pk_seen.insert(idx) {
                    Some(format!(
                        "column {:?} is listed twice in the primary key",
                        k.get_ref()
                    ))
                } else if columns[idx].nullable {
                    Some(format!(
                        "primary-key column {:?} must not be nullable",
                        k.get_ref()
                    ))
                } else {
                    None
                }
            }
            None if names.contains(k.get_ref()) => None, // a type error, reported already
            None => Some(format!(
                "primary key names column {:?}, which the table does not have; columns: {}",
                k.get_ref(),
                names.join(", ")
            )),
        };
        if let Some(msg) = problem {
            errors.push(file.error(Some(k.span()), "primary_key", msg));
        }
    }
    primary_key
}

/// The period column's index: a non-nullable Date32 column.
fn period_column(
    file: &SourceFile,
    raw: &RawSchema,
    columns: &[Column],
    names: &[String],
    errors: &mut Vec<Diagnostic>,
) -> usize {
    let period = raw.period_column.get_ref();
    let (idx, problem) = match columns.iter().position(|c| &c.name == period) {
        Some(idx) if columns[idx].data_type != ColumnType::Date32 => (
            idx,
            Some(format!(
                "period column {period:?} is {}, but it must be Date32 (its quarter partitions the table)",
                columns[idx].data_type
            )),
        ),
        Some(idx) if columns[idx].nullable => (
            idx,
            Some(format!("period column {period:?} must not be nullable")),
        ),
        Some(idx) => (idx, None),
        None if names.contains(period) => (0, None), // a type error, reported already
        None => (
            0,
            Some(format!(
                "period column {period:?} is not a column of the table; columns: {}",
                names.join(", ")
            )),
        ),
    };
    if let Some(msg) = problem {
        errors.push(file.error(Some(raw.period_column.span()), "period_column", msg));
    }
    idx
}

/// Loads and validates one schema file; returns every problem found in it.
pub fn load(file: &SourceFile) -> Result<TableSchema, Vec<Diagnostic>> {
    let raw: RawSchema = file.parse().map_err(|d| vec![d])?;
    let mut errors = Vec::new();
    let table = raw.table.get_ref().clone();
    if !is_identifier(&table) {
        errors.push(file.error(
            Some(raw.table.span()),
            "table",
            format!("table name {table:?} must be a lower-case identifier ([a-z][a-z0-9_]*)"),
        ));
    }
    if raw.columns.is_empty() {
        errors.push(file.error(
            None,
            "columns",
            "a table needs at least one [[columns]] entry",
        ));
    }
    let mut seen = HashSet::new();
    let columns: Vec<Column> = raw
        .columns
        .iter()
        .enumerate()
        .filter_map(|(i, rc)| column(file, i, rc, &mut seen, &mut errors))
        .collect();
    let names: Vec<String> = raw
        .columns
        .iter()
        .map(|c| c.name.get_ref().clone())
        .collect();
    let primary_key = primary_key(file, &raw, &columns, &names, &mut errors);
    let period_column = period_column(file, &raw, &columns, &names, &mut errors);
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(TableSchema {
        name: table,
        name_span: raw.table.span(),
        description: raw.description,
        columns,
        primary_key,
        period_column,
        file: file.name.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_of_few_values_is_read_as_views_and_stored_as_text() {
        let text = |few: &str| {
            format!(
                r#"table = "t"
description = "d"
primary_key = ["id"]
period_column = "day"
[[columns]]
name = "id"
type = "Utf8"
description = "many values"
[[columns]]
name = "day"
type = "Date32"
description = "the period"
[[columns]]
name = "kind"
type = "Utf8"
allowed = ["a", "b"]
description = "an enumeration"
[[columns]]
name = "bank"
type = "{few}"
description = "declared few"
few_values = true
"#
            )
        };
        let t = load(&SourceFile::new("t.toml", text("Utf8"))).unwrap();
        let types = |s: SchemaRef| -> Vec<DataType> {
            s.fields().iter().map(|f| f.data_type().clone()).collect()
        };
        assert_eq!(
            types(t.read_schema()),
            [
                DataType::Utf8,
                DataType::Date32,
                DataType::Utf8View,
                DataType::Utf8View
            ]
        );
        assert_eq!(
            types(t.arrow_schema()),
            [
                DataType::Utf8,
                DataType::Date32,
                DataType::Utf8,
                DataType::Utf8
            ]
        );
        let errors = load(&SourceFile::new("t.toml", text("Int64"))).unwrap_err();
        assert_eq!(errors.len(), 1);
        let shown = errors[0].to_string();
        assert!(
            shown.contains("columns[3].few_values")
                && shown.contains("`few_values` applies only to Utf8 columns, not Int64"),
            "{shown}"
        );
    }

    #[test]
    fn decimal_types_parse_with_limits() {
        assert_eq!(
            ColumnType::parse("Decimal128(18,2)"),
            Ok(ColumnType::Decimal128 {
                precision: 18,
                scale: 2
            })
        );
        assert_eq!(
            ColumnType::parse("Decimal128(9, 4)").unwrap().arrow(),
            DataType::Decimal128(9, 4)
        );
        assert!(
            ColumnType::parse("Decimal128(2,4)")
                .unwrap_err()
                .contains("greater than precision")
        );
        assert!(
            ColumnType::parse("Decimal128(39,2)")
                .unwrap_err()
                .contains("1..=38")
        );
        assert!(
            ColumnType::parse("Float64")
                .unwrap_err()
                .contains(VALID_TYPES)
        );
        assert!(
            ColumnType::parse("Decimal128(18)")
                .unwrap_err()
                .contains("two integers")
        );
    }
}
