//! Validate: each raw record against its table schema, into typed values
//! that cannot be wrong — or a rejection that names the field and says why.
//!
//! Exact decimals only (never rounded), dates only as `YYYY-MM-DD` text (a
//! bare number is never read as a date), enumerations from the schema,
//! required fields, and the USCC, district and industry validators.

use crate::config::schema::{Check, Column, ColumnType, TableSchema};
use crate::decode::{Cell, RawRecord};
use crate::domain::decimal::parse_decimal;
use crate::domain::{Quarter, reference, uscc};
use chrono::{Datelike, NaiveDate};
use std::borrow::Cow;

/// A validated value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    /// Absent (nullable columns only).
    Null,
    /// Text.
    Str(Cow<'a, str>),
    /// Boolean.
    Bool(bool),
    /// 32-bit integer.
    I32(i32),
    /// 64-bit integer.
    I64(i64),
    /// Days since 1970-01-01.
    Date(i32),
    /// Unscaled decimal at the column's scale.
    Dec(i128),
}

/// Why a record was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The field concerned, if one.
    pub field: Option<String>,
    /// A stable code for the kind of problem (`decimal_scale`, `uscc_check_char`, …),
    /// for grouping; the same for every value with that problem.
    pub code: &'static str,
    /// What is wrong and what was expected, with the value.
    pub reason: String,
}

/// A validation failure of one value: its stable code and its message.
type Bad = (&'static str, String);

const EPOCH_DAYS_CE: i32 = 719_163;

/// Parses a `YYYY-MM-DD` date strictly.
pub fn parse_date(s: &str) -> Option<NaiveDate> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        b[r].iter().try_fold(0u32, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
        })
    };
    NaiveDate::from_ymd_opt(num(0..4)? as i32, num(5..7)?, num(8..10)?)
}

fn days(d: NaiveDate) -> i32 {
    d.num_days_from_ce() - EPOCH_DAYS_CE
}

/// What a JSON cell holds.
enum Json<'a> {
    Null,
    Str(Cow<'a, str>),
    Num(&'a str),
    Bool(bool),
    Nested,
}

fn classify<'a>(raw: &'a str) -> Result<Json<'a>, String> {
    // JSON's whitespace is ASCII (and a valid value has none of the other
    // ASCII whitespace outside its strings).
    let t = raw.trim_ascii();
    Ok(match t.as_bytes().first() {
        Some(b'"') => {
            let inner = &t[1..t.len() - 1];
            if inner.contains('\\') {
                Json::Str(Cow::Owned(
                    serde_json::from_str::<String>(t).map_err(|e| e.to_string())?,
                ))
            } else {
                Json::Str(Cow::Borrowed(inner))
            }
        }
        Some(b'n') => Json::Null,
        Some(b't') => Json::Bool(true),
        Some(b'f') => Json::Bool(false),
        Some(b'[') | Some(b'{') => Json::Nested,
        _ => Json::Num(t),
    })
}

fn shown_num(s: &str) -> String {
    let cut: String = s.chars().take(40).collect();
    if cut.len() < s.len() {
        format!("{cut}…")
    } else {
        cut
    }
}

fn shown(s: &str) -> String {
    const MAX: usize = 60;
    if s.chars().count() > MAX {
        let cut: String = s.chars().take(MAX).collect();
        format!("{cut:?}…")
    } else {
        format!("{s:?}")
    }
}

/// Validates records of one table.
#[derive(Debug, Clone)]
pub struct Validator {
    schema: TableSchema,
}

impl Validator {
    /// A validator for `schema`.
    pub fn new(schema: &TableSchema) -> Validator {
        Validator {
            schema: schema.clone(),
        }
    }

    /// The schema.
    pub fn schema(&self) -> &TableSchema {
        &self.schema
    }

    /// The quarter of a record's period column, if it can be read (for quarantine placement).
    pub fn quarter_of(&self, rec: &RawRecord) -> Option<Quarter> {
        let text = match rec.cells.get(self.schema.period_column)?.as_ref()? {
            Cell::Json(raw) => match classify(raw).ok()? {
                Json::Str(s) => s.into_owned(),
                _ => return None,
            },
            Cell::JsonStr(s) => s.to_string(),
            Cell::Text(t) => t.to_string(),
        };
        parse_date(&text).map(Quarter::from_date)
    }

    /// A JSON cell as a value of the column's type: strings are parsed like
    /// CSV text; numbers only as numbers (never as a date); booleans only
    /// as booleans.
    fn json_cell<'a>(&self, t: ColumnType, raw: &'a str) -> Result<Value<'a>, Bad> {
        let bad = |code: &'static str, what: String| Err((code, what));
        match classify(raw).map_err(|e| ("bad_json_string", e))? {
            Json::Null => Ok(Value::Null),
            Json::Str(s) => self.json_text(t, s),
            Json::Num(n) => match t {
                ColumnType::Utf8 => bad(
                    "not_text",
                    format!("expected text, got the number {}", shown_num(n)),
                ),
                ColumnType::Boolean => bad(
                    "not_boolean",
                    format!("expected true or false, got the number {}", shown_num(n)),
                ),
                ColumnType::Date32 => bad(
                    "number_as_date",
                    format!(
                        "expected a date as text YYYY-MM-DD, got the number {} (a number is never read as a date)",
                        shown_num(n)
                    ),
                ),
                _ => self.parse_text(t, &Cow::Borrowed(n)),
            },
            Json::Bool(b) if t == ColumnType::Boolean => Ok(Value::Bool(b)),
            Json::Bool(b) => bad(
                "boolean_for_other_type",
                format!("expected {}, got the boolean {b}", expected(t)),
            ),
            Json::Nested => bad(
                "nested_json",
                format!(
                    "expected {}, got a nested JSON array or object",
                    expected(t)
                ),
            ),
        }
    }

    /// A JSON string as a value of the column's type: parsed like CSV
    /// text, except that it is never a boolean.
    fn json_text<'a>(&self, t: ColumnType, s: Cow<'a, str>) -> Result<Value<'a>, Bad> {
        if t == ColumnType::Boolean {
            return Err((
                "not_boolean",
                format!("expected true or false, got the text {}", shown(&s)),
            ));
        }
        self.parse_text(t, &s)
    }

    /// A text value against the column's enumeration and validator.
    fn check_text(col: &Column, s: &str) -> Result<(), Bad> {
        if let Some(allowed) = &col.allowed
            && !allowed.iter().any(|a| a == s)
        {
            return Err((
                "not_allowed_value",
                format!(
                    "{} is not one of the allowed values: {}",
                    shown(s),
                    allowed.join(", ")
                ),
            ));
        }
        match col.check {
            Some(Check::Uscc) => uscc::validate(s).map_err(|e| {
                let code = match e {
                    uscc::UsccError::Length { .. } => "uscc_length",
                    uscc::UsccError::Character { .. } => "uscc_character",
                    uscc::UsccError::CheckCharacter { .. } => "uscc_check_char",
                };
                (code, e.to_string())
            }),
            Some(Check::DistrictCode) => {
                reference::validate_district(s).map_err(|e| ("district_code", e.to_string()))
            }
            Some(Check::IndustryCode) => {
                reference::validate_industry(s).map_err(|e| ("industry_code", e.to_string()))
            }
            None => Ok(()),
        }
    }

    /// Validates one record into `values`, in schema column order (cleared
    /// first; left partly filled on a rejection), so a page's records can
    /// share one buffer. Returns the quarter of its period column.
    pub fn validate_into<'a>(
        &self,
        rec: &'a RawRecord<'a>,
        values: &mut Vec<Value<'a>>,
    ) -> Result<Quarter, Rejection> {
        values.clear();
        for (i, col) in self.schema.columns.iter().enumerate() {
            let reject = |(code, reason): Bad| Rejection {
                field: Some(col.name.clone()),
                code,
                reason,
            };
            let cell = rec.cells.get(i).and_then(Option::as_ref);
            let v = match cell {
                None => Value::Null,
                // Text is most columns: taken as it is, without a call.
                Some(Cell::Text(t)) if col.data_type == ColumnType::Utf8 => Value::Str(t.clone()),
                Some(Cell::JsonStr(s)) if col.data_type == ColumnType::Utf8 => {
                    Value::Str(Cow::Borrowed(s))
                }
                Some(Cell::Text(t)) => self.parse_text(col.data_type, t).map_err(reject)?,
                Some(Cell::Json(raw)) => self.json_cell(col.data_type, raw).map_err(reject)?,
                Some(Cell::JsonStr(s)) => self
                    .json_text(col.data_type, Cow::Borrowed(s))
                    .map_err(reject)?,
            };
            match &v {
                Value::Null if !col.nullable => {
                    return Err(reject(if cell.is_some() {
                        ("required_null", "required value is null".into())
                    } else {
                        ("required_missing", "required field is missing".into())
                    }));
                }
                Value::Str(s) => Self::check_text(col, s).map_err(reject)?,
                _ => {}
            }
            values.push(v);
        }
        match values[self.schema.period_column] {
            Value::Date(d) => Ok(Quarter::from_date(
                NaiveDate::from_num_days_from_ce_opt(d + EPOCH_DAYS_CE).expect("valid date"),
            )),
            _ => unreachable!("period column is a non-null Date32"),
        }
    }

    fn parse_text<'a>(&self, t: ColumnType, s: &Cow<'a, str>) -> Result<Value<'a>, Bad> {
        match t {
            ColumnType::Utf8 => Ok(Value::Str(s.clone())),
            ColumnType::Boolean => match s.to_ascii_lowercase().as_str() {
                "true" => Ok(Value::Bool(true)),
                "false" => Ok(Value::Bool(false)),
                _ => Err((
                    "not_boolean",
                    format!("expected true or false, got {}", shown(s)),
                )),
            },
            ColumnType::Int32 => s.parse::<i32>().map(Value::I32).map_err(|_| {
                (
                    "not_integer",
                    format!("expected a whole number (Int32), got {}", shown(s)),
                )
            }),
            ColumnType::Int64 => s.parse::<i64>().map(Value::I64).map_err(|_| {
                (
                    "not_integer",
                    format!("expected a whole number (Int64), got {}", shown(s)),
                )
            }),
            ColumnType::Date32 => parse_date(s).map(|d| Value::Date(days(d))).ok_or_else(|| {
                (
                    "not_a_date",
                    format!("expected a date YYYY-MM-DD, got {}", shown(s)),
                )
            }),
            ColumnType::Decimal128 { precision, scale } => parse_decimal(s, precision, scale)
                .map(Value::Dec)
                .map_err(|e| {
                    let code = match e {
                        crate::domain::decimal::DecimalError::Syntax(_) => "decimal_syntax",
                        crate::domain::decimal::DecimalError::Scale { .. } => "decimal_scale",
                        crate::domain::decimal::DecimalError::Precision { .. } => {
                            "decimal_precision"
                        }
                    };
                    (code, e.to_string())
                }),
        }
    }
}

fn expected(t: ColumnType) -> String {
    match t {
        ColumnType::Utf8 => "text".into(),
        ColumnType::Boolean => "true or false".into(),
        ColumnType::Int32 | ColumnType::Int64 => "a whole number".into(),
        ColumnType::Date32 => "a date YYYY-MM-DD".into(),
        ColumnType::Decimal128 { precision, scale } => {
            format!("a decimal number Decimal128({precision},{scale})")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SourceFile;
    use crate::config::pipeline::Format;
    use crate::decode::{Columns, decode};

    fn schema() -> TableSchema {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/schemas/bank_loans.toml"
        ))
        .unwrap();
        crate::config::schema::load(&SourceFile::new("bank_loans.toml", text)).unwrap()
    }

    fn check(json: &str) -> Result<Vec<String>, (Option<String>, String)> {
        let s = schema();
        let cols = Columns::new(s.columns.iter().map(|c| c.name.as_str()));
        let body = format!("[{json}]");
        let page = decode(Format::Json, None, None, &cols, body.as_bytes()).unwrap();
        let v = Validator::new(&s);
        let mut values = Vec::new();
        v.validate_into(&page.records[0], &mut values)
            .map(|_| values.iter().map(|v| format!("{v:?}")).collect())
            .map_err(|r| (r.field, format!("{}: {}", r.code, r.reason)))
    }

    const GOOD: &str = r#"{"bank_code":"102653000013","loan_id":"L1","period_end":"2019-09-30","uscc":"91500000202833449G","balance":1234.50,"disbursed":"0","rate_pct":4.35,"term":"short","guarantee":"credit","product":"ordinary","guarantee_fee_pct":null}"#;

    fn with(field: &str, value: &str) -> String {
        let mut v: serde_json::Map<String, serde_json::Value> = serde_json::from_str(GOOD).unwrap();
        let mut s = serde_json::to_string(&v).unwrap();
        if value == "<missing>" {
            v.remove(field);
            s = serde_json::to_string(&v).unwrap();
            return s;
        }
        let old = serde_json::to_string(&v[field]).unwrap();
        s = s.replace(
            &format!("\"{field}\":{old}"),
            &format!("\"{field}\":{value}"),
        );
        s
    }

    #[test]
    fn a_good_record_gets_exact_values() {
        let vals = check(GOOD).unwrap();
        assert_eq!(vals[4], "Dec(123450)");
        assert_eq!(vals[5], "Dec(0)");
        assert_eq!(vals[6], "Dec(43500)");
        assert_eq!(vals[10], "Null");
    }

    #[test]
    fn each_kind_of_bad_value_is_rejected_with_field_and_reason() {
        let cases = [
            (
                "uscc",
                r#""91500000202833449H""#,
                "uscc_check_char: USCC check character",
            ),
            ("period_end", "18169", "number_as_date: "),
            ("period_end", "18169", "a number is never read as a date"),
            (
                "period_end",
                r#""30/09/2019""#,
                "expected a date YYYY-MM-DD",
            ),
            (
                "balance",
                "1234.567",
                "decimal_scale: \"1234.567\" has 3 decimal places, more than the 2 allowed",
            ),
            ("balance", r#""12.5e3""#, "is not a decimal number"),
            (
                "balance",
                "<missing>",
                "required_missing: required field is missing",
            ),
            ("balance", "null", "required value is null"),
            ("rate_pct", r#""4.35%""#, "is not a decimal number"),
            ("rate_pct", "true", "got the boolean true"),
            (
                "guarantee",
                r#""none""#,
                "is not one of the allowed values: credit, guaranteed",
            ),
            ("loan_id", "12345", "expected text, got the number 12345"),
            ("uscc", "[[[1]]]", "nested JSON"),
        ];
        for (field, value, reason) in cases {
            let err = check(&with(field, value)).unwrap_err();
            assert_eq!(err.0.as_deref(), Some(field), "{field}={value}");
            assert!(err.1.contains(reason), "{field}={value}: {}", err.1);
        }
    }
}
