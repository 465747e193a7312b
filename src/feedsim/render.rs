//! Records as the partners send them (JSON objects, NDJSON lines, CSV rows),
//! and the malformed variants real partners produce.

use super::world::{DemandEvent, Enterprise, Issue, Loan, Operations};
use crate::domain::Quarter;
use crate::domain::decimal::format_decimal;
use crate::domain::uscc::ALPHABET;
use chrono::NaiveDate;
use std::fmt::Write as _;

/// The five simulated tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    /// Registry snapshots.
    Enterprises,
    /// Quarterly operating reports.
    Operations,
    /// Loan positions.
    BankLoans,
    /// Financing demands (one record per status change).
    FinancingDemands,
    /// Bond and equity issues.
    DirectFinancing,
}

impl Table {
    /// Every table, in a fixed order.
    pub const ALL: [Table; 5] = [
        Table::Enterprises,
        Table::Operations,
        Table::BankLoans,
        Table::FinancingDemands,
        Table::DirectFinancing,
    ];

    /// Warehouse table name.
    pub fn name(self) -> &'static str {
        match self {
            Table::Enterprises => "enterprises",
            Table::Operations => "operations",
            Table::BankLoans => "bank_loans",
            Table::FinancingDemands => "financing_demands",
            Table::DirectFinancing => "direct_financing",
        }
    }

    /// The malformations this table's feed produces, with the field each touches.
    pub fn faults(self) -> &'static [(Malformation, &'static str)] {
        use Malformation::*;
        match self {
            Table::Enterprises => &[
                (BadUscc, "uscc"),
                (UnknownDistrict, "district_code"),
                (DateAsNumber, "as_of"),
                (MissingField, "name"),
                (WrongType, "above_scale"),
                (UnknownEnum, "size_class"),
            ],
            Table::Operations => &[
                (BadUscc, "uscc"),
                (DateAsNumber, "period_end"),
                (ExtraDecimals, "revenue"),
                (MissingField, "revenue"),
                (WrongType, "employees"),
            ],
            Table::BankLoans => &[
                (BadUscc, "uscc"),
                (DateAsNumber, "period_end"),
                (ExtraDecimals, "balance"),
                (MissingField, "balance"),
                (WrongType, "rate_pct"),
                (UnknownEnum, "guarantee"),
            ],
            Table::FinancingDemands => &[
                (BadUscc, "uscc"),
                (DateAsNumber, "submitted_on"),
                (ExtraDecimals, "amount"),
                (MissingField, "uscc"),
                (WrongType, "term_months"),
                (UnknownEnum, "status"),
            ],
            Table::DirectFinancing => &[
                (BadUscc, "uscc"),
                (DateAsNumber, "issued_on"),
                (ExtraDecimals, "amount"),
                (MissingField, "amount"),
                (WrongType, "amount"),
                (UnknownEnum, "instrument"),
            ],
        }
    }
}

/// A kind of malformed record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Malformation {
    /// USCC with a wrong check character.
    BadUscc,
    /// A district code that is not one of the 38.
    UnknownDistrict,
    /// A date sent as a number (days since 1970).
    DateAsNumber,
    /// More decimals than the column's scale.
    ExtraDecimals,
    /// A required field left out.
    MissingField,
    /// A value of the wrong type.
    WrongType,
    /// An enumeration value the schema does not allow.
    UnknownEnum,
}

/// A field value before serialisation.
#[derive(Debug, Clone, PartialEq)]
pub enum V {
    /// Text.
    S(String),
    /// Static text.
    T(&'static str),
    /// Exact decimal (unscaled, scale); `true` sends it as a JSON string.
    Dec(i128, u8, bool),
    /// Date as `YYYY-MM-DD`.
    Date(NaiveDate),
    /// Integer.
    I(i64),
    /// Boolean.
    B(bool),
    /// JSON null / empty CSV cell.
    Null,
    /// Verbatim JSON text (a number with too many decimals, a nested value).
    Raw(String),
    /// Field left out entirely.
    Missing,
}

/// One record: field names and values in schema order.
#[derive(Debug, Clone, PartialEq)]
pub struct Rec(pub Vec<(&'static str, V)>);

impl Rec {
    fn get_mut(&mut self, field: &str) -> &mut V {
        &mut self
            .0
            .iter_mut()
            .find(|(k, _)| *k == field)
            .expect("field exists")
            .1
    }

    fn get(&self, field: &str) -> &V {
        &self
            .0
            .iter()
            .find(|(k, _)| *k == field)
            .expect("field exists")
            .1
    }

    /// A copy of this record with one malformation applied to `field`.
    pub fn malformed(&self, kind: Malformation, field: &'static str) -> Rec {
        let mut r = self.clone();
        let v = r.get_mut(field);
        *v = match (kind, &*v) {
            (Malformation::BadUscc, V::S(code)) => {
                let mut chars: Vec<char> = code.chars().collect();
                let last = chars[17] as u8;
                let pos = ALPHABET.iter().position(|&c| c == last).unwrap_or(0);
                chars[17] = ALPHABET[(pos + 7) % 31] as char;
                V::S(chars.into_iter().collect())
            }
            (Malformation::UnknownDistrict, _) => V::T("500199"),
            (Malformation::DateAsNumber, V::Date(d)) => {
                V::I((*d - NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid")).num_days())
            }
            (Malformation::ExtraDecimals, V::Dec(u, s, as_string)) => {
                let text = format!("{}7", format_decimal(*u, *s));
                if *as_string { V::S(text) } else { V::Raw(text) }
            }
            (Malformation::MissingField, _) => V::Missing,
            (Malformation::WrongType, V::B(_)) => V::T("yes"),
            (Malformation::WrongType, V::I(_)) => V::T("many"),
            (Malformation::WrongType, V::Dec(u, s, _)) => {
                if field == "amount" {
                    V::B(true)
                } else {
                    V::S(format!("{}%", format_decimal(*u, *s)))
                }
            }
            (Malformation::UnknownEnum, _) => V::T(match field {
                "size_class" => "giant",
                "guarantee" => "none",
                "status" => "approved",
                "instrument" => "convertible",
                _ => "unknown",
            }),
            (_, other) => other.clone(),
        };
        r
    }

    /// The text of a key field (for the malformed-record listing).
    pub fn text(&self, field: &str) -> String {
        match self.get(field) {
            V::S(s) => s.clone(),
            V::T(s) => s.to_string(),
            V::Date(d) => d.to_string(),
            V::I(i) => i.to_string(),
            V::Dec(u, s, _) => format_decimal(*u, *s),
            V::B(b) => b.to_string(),
            V::Raw(r) => r.clone(),
            V::Null | V::Missing => String::new(),
        }
    }

    /// Appends the record as one JSON object.
    pub fn write_json(&self, out: &mut String) {
        out.push('{');
        let mut first = true;
        for (k, v) in &self.0 {
            if *v == V::Missing {
                continue;
            }
            if !first {
                out.push(',');
            }
            first = false;
            out.push('"');
            out.push_str(k);
            out.push_str("\":");
            match v {
                V::S(s) => json_string(out, s),
                V::T(s) => json_string(out, s),
                V::Dec(u, s, true) => {
                    out.push('"');
                    push_decimal(out, *u, *s);
                    out.push('"');
                }
                V::Dec(u, s, false) => push_decimal(out, *u, *s),
                V::Date(d) => {
                    out.push('"');
                    push_date(out, *d);
                    out.push('"');
                }
                V::I(i) => {
                    let _ = write!(out, "{i}");
                }
                V::B(b) => out.push_str(if *b { "true" } else { "false" }),
                V::Null => out.push_str("null"),
                V::Raw(r) => out.push_str(r),
                V::Missing => {}
            }
        }
        out.push('}');
    }

    /// Appends the CSV header for this record's fields.
    pub fn write_csv_header(&self, out: &mut String) {
        let names: Vec<&str> = self.0.iter().map(|(k, _)| *k).collect();
        out.push_str(&names.join(","));
        out.push('\n');
    }

    /// Appends the record as one CSV row.
    pub fn write_csv(&self, out: &mut String) {
        for (i, (_, v)) in self.0.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            match v {
                V::S(s) => csv_field(out, s),
                V::T(s) => csv_field(out, s),
                V::Dec(u, s, _) => push_decimal(out, *u, *s),
                V::Date(d) => push_date(out, *d),
                V::I(i) => {
                    let _ = write!(out, "{i}");
                }
                V::B(b) => out.push_str(if *b { "true" } else { "false" }),
                V::Raw(r) => csv_field(out, r),
                V::Null | V::Missing => {}
            }
        }
        out.push('\n');
    }
}

/// Appends `value` (unscaled) with `scale` fractional digits, as
/// [`format_decimal`] writes it, without allocating.
fn push_decimal(out: &mut String, value: i128, scale: u8) {
    let abs = value.unsigned_abs();
    let Ok(small) = u64::try_from(abs) else {
        out.push_str(&format_decimal(value, scale));
        return;
    };
    if value < 0 {
        out.push('-');
    }
    // Digits from the right; at least one before the point.
    let mut buf = [b'0'; 24];
    let (mut n, mut i, scale) = (small, buf.len(), usize::from(scale));
    while n > 0 || buf.len() - i <= scale {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    let point = buf.len() - scale;
    push_ascii(out, &buf[i..point]);
    if scale > 0 {
        out.push('.');
        push_ascii(out, &buf[point..]);
    }
}

/// Appends ASCII bytes (digits) without checking them as UTF-8 first.
fn push_ascii(out: &mut String, ascii: &[u8]) {
    out.extend(ascii.iter().map(|&b| char::from(b)));
}

/// Appends `n` in decimal, zero-padded to at least `width` digits.
pub(super) fn push_padded(out: &mut String, mut n: u64, width: usize) {
    let mut buf = [b'0'; 20];
    let mut i = buf.len();
    while n > 0 || buf.len() - i < width {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    push_ascii(out, &buf[i..]);
}

/// Appends `d` as `YYYY-MM-DD` without allocating.
fn push_date(out: &mut String, d: NaiveDate) {
    use chrono::Datelike;
    let (y, m, day) = (d.year(), d.month(), d.day());
    if !(0..=9999).contains(&y) {
        let _ = write!(out, "{}", d.format("%Y-%m-%d"));
        return;
    }
    push_padded(out, y.unsigned_abs().into(), 4);
    out.push('-');
    push_padded(out, m.into(), 2);
    out.push('-');
    push_padded(out, day.into(), 2);
}

/// Appends the last day of `q` as [`push_date`] would, without computing
/// the date: the same four month-days end every year's quarters.
fn push_quarter_end(out: &mut String, q: Quarter) {
    let y = q.year();
    if !(0..=9999).contains(&y) {
        return push_date(out, q.last_day());
    }
    push_padded(out, y.unsigned_abs().into(), 4);
    out.push_str(match q.q() {
        1 => "-03-31",
        2 => "-06-30",
        3 => "-09-30",
        _ => "-12-31",
    });
}

fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn csv_field(out: &mut String, s: &str) {
    if s.bytes().any(|b| matches!(b, b',' | b'"' | b'\n' | b'\r')) {
        out.push('"');
        out.push_str(&s.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(s);
    }
}

/// A registry snapshot row.
pub fn enterprise(e: &Enterprise, q: Quarter) -> Rec {
    Rec(vec![
        ("uscc", V::S(e.uscc.clone())),
        ("as_of", V::Date(q.last_day())),
        ("name", V::S(e.name.clone())),
        ("district_code", V::T(e.district)),
        ("industry_code", V::S(e.industry.clone())),
        ("size_class", V::T(e.size.as_str())),
        ("above_scale", V::B(e.above_scale)),
        ("key_enterprise", V::B(e.key_enterprise)),
        ("growth_enterprise", V::B(e.growth_enterprise)),
        ("specialized_sme", V::B(e.specialized_sme)),
        (
            "listing_reserve",
            V::B(e.listing_from.is_some_and(|l| l <= q)),
        ),
        ("established_on", e.established_on.map_or(V::Null, V::Date)),
    ])
}

/// An operating report row; amounts as JSON numbers.
pub fn operations(uscc: &str, o: &Operations) -> Rec {
    let d = |v: i128| V::Dec(v, 2, false);
    Rec(vec![
        ("uscc", V::S(uscc.to_string())),
        ("period_end", V::Date(o.quarter.last_day())),
        ("revenue", d(o.revenue)),
        ("main_business_cost", d(o.cost)),
        ("financial_expenses", d(o.financial_expenses)),
        ("interest_expense", d(o.interest_expense)),
        ("total_profit", d(o.total_profit)),
        ("output_value", d(o.output_value)),
        ("total_assets", d(o.total_assets)),
        ("total_liabilities", d(o.total_liabilities)),
        ("employees", V::I(i64::from(o.employees))),
        ("energy_tce", d(o.energy)),
        ("water_m3", d(o.water)),
    ])
}

/// A loan position row.
pub fn loan(uscc: &str, l: &Loan) -> Rec {
    Rec(vec![
        ("bank_code", V::T(l.bank_code)),
        ("loan_id", V::S(l.loan_id.clone())),
        ("period_end", V::Date(l.quarter.last_day())),
        ("uscc", V::S(uscc.to_string())),
        ("balance", V::Dec(l.balance, 2, false)),
        ("disbursed", V::Dec(l.disbursed, 2, false)),
        ("rate_pct", V::Dec(l.rate, 4, false)),
        ("term", V::T(l.term)),
        ("guarantee", V::T(l.guarantee)),
        ("product", V::T(l.product)),
        (
            "guarantee_fee_pct",
            l.guarantee_fee.map_or(V::Null, |f| V::Dec(f, 4, false)),
        ),
    ])
}

/// Appends the CSV row of [`loan`]`(uscc, l)` (the same bytes as its
/// [`Rec::write_csv`]) without building the record: a backfill's pages are
/// mostly loan rows, and the simulator shares the cores with the ingest.
pub fn write_loan_csv(out: &mut String, uscc: &str, l: &Loan) {
    for text in [l.bank_code, l.loan_id.as_str()] {
        csv_field(out, text);
        out.push(',');
    }
    push_quarter_end(out, l.quarter);
    out.push(',');
    csv_field(out, uscc);
    for (value, scale) in [(l.balance, 2), (l.disbursed, 2), (l.rate, 4)] {
        out.push(',');
        push_decimal(out, value, scale);
    }
    for text in [l.term, l.guarantee, l.product] {
        out.push(',');
        csv_field(out, text);
    }
    out.push(',');
    if let Some(fee) = l.guarantee_fee {
        push_decimal(out, fee, 4);
    }
    out.push('\n');
}

/// A financing-demand version; amounts as JSON strings.
pub fn demand(uscc: &str, d: &DemandEvent) -> Rec {
    Rec(vec![
        ("demand_id", V::S(d.demand_id.clone())),
        ("uscc", V::S(uscc.to_string())),
        ("submitted_on", V::Date(d.submitted_on)),
        ("amount", V::Dec(d.amount, 2, true)),
        ("term_months", V::I(i64::from(d.term_months))),
        ("purpose", V::T(d.purpose)),
        ("instrument", V::T(d.instrument)),
        ("project_category", V::T(d.project_category)),
        ("status", V::T(d.status)),
        ("status_on", V::Date(d.status_on)),
        ("bank_code", d.bank_code.map_or(V::Null, V::T)),
        (
            "funded_amount",
            d.funded_amount.map_or(V::Null, |v| V::Dec(v, 2, true)),
        ),
        ("rate_pct", d.rate.map_or(V::Null, |v| V::Dec(v, 4, true))),
    ])
}

/// A bond/equity issue row; amounts as JSON strings.
pub fn issue(uscc: &str, i: &Issue) -> Rec {
    Rec(vec![
        ("record_id", V::S(i.record_id.clone())),
        ("uscc", V::S(uscc.to_string())),
        ("instrument", V::T(i.instrument)),
        ("amount", V::Dec(i.amount, 2, true)),
        ("issued_on", V::Date(i.issued_on)),
        ("rate_pct", i.rate.map_or(V::Null, |v| V::Dec(v, 4, true))),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loan_rows_written_directly_are_the_records_csv() {
        let w = super::super::world::World {
            seed: 5,
            enterprises: 300,
            from: "2016Q1".parse().unwrap(),
            to: "2019Q4".parse().unwrap(),
        };
        let mut loans = Vec::new();
        let (mut rows, mut fees, mut commas) = (0, 0, 0);
        for e in 0..w.enterprises {
            let ent = w.enterprise(e);
            for q in w.quarters() {
                loans.clear();
                w.loans(&ent, q, &mut loans);
                for l in &loans {
                    let (mut direct, mut via_rec) = (String::new(), String::new());
                    write_loan_csv(&mut direct, &ent.uscc, l);
                    loan(&ent.uscc, l).write_csv(&mut via_rec);
                    assert_eq!(direct, via_rec);
                    rows += 1;
                    fees += usize::from(l.guarantee_fee.is_some());
                }
            }
        }
        // A text needing quotes is quoted the same way.
        let mut l = loans.pop().expect("some loan");
        l.loan_id = "A,\"1\"".into();
        let (mut direct, mut via_rec) = (String::new(), String::new());
        write_loan_csv(&mut direct, "91500000MA00000000", &l);
        loan("91500000MA00000000", &l).write_csv(&mut via_rec);
        assert_eq!(direct, via_rec);
        commas += usize::from(direct.contains("\"A,\"\"1\"\"\""));
        assert!(
            rows > 1000 && fees > 0 && fees < rows && commas == 1,
            "{rows} {fees} {commas}"
        );
    }

    #[test]
    fn fast_decimals_and_dates_read_like_the_formatter() {
        for value in [
            0i128,
            5,
            -5,
            99,
            100,
            123_456,
            -1_000_000_007,
            i128::from(u64::MAX),
        ]
        .into_iter()
        .chain([i128::MAX, i128::MIN + 1])
        {
            for scale in [0u8, 1, 2, 4] {
                let mut out = String::new();
                push_decimal(&mut out, value, scale);
                assert_eq!(
                    out,
                    format_decimal(value, scale),
                    "{value} at scale {scale}"
                );
            }
        }
        for (y, m, d) in [
            (2019, 3, 31),
            (2017, 12, 1),
            (1, 1, 1),
            (10_000, 1, 1),
            (-5, 6, 30),
        ] {
            let day = NaiveDate::from_ymd_opt(y, m, d).unwrap();
            let mut out = String::new();
            push_date(&mut out, day);
            assert_eq!(out, day.format("%Y-%m-%d").to_string());
        }
        for index in [0, 4 * 1985, 4 * 2019 + 3, 4 * 10_000 + 1, -7] {
            let q = Quarter::new(2000, 1).unwrap().plus(index - 4 * 2000);
            let mut out = String::new();
            push_quarter_end(&mut out, q);
            assert_eq!(out, q.last_day().format("%Y-%m-%d").to_string(), "{q}");
        }
    }
}
