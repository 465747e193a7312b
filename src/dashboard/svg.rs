//! Charts of published aggregates, drawn here as SVG so the dashboard needs
//! no charting code in the browser and nothing from the internet.
//!
//! The numbers in a chart are for the eye (`f64`); the exact decimals are in
//! the table beside it and in every download.

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, SchemaRef};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// What to draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One line per column, with a point per quarter.
    Line,
    /// Bars side by side per quarter.
    Bar,
    /// Bars stacked per quarter (a funnel by status).
    Stacked,
    /// A small trend line of the first column, without axes.
    Spark,
}

impl Kind {
    /// `line`, `bar`, `stacked` or `spark`.
    pub fn parse(s: &str) -> Result<Kind, String> {
        match s {
            "line" => Ok(Kind::Line),
            "bar" => Ok(Kind::Bar),
            "stacked" => Ok(Kind::Stacked),
            "spark" => Ok(Kind::Spark),
            other => Err(format!(
                "unknown chart kind {other:?}; use line, bar, stacked or spark"
            )),
        }
    }
}

/// Values by quarter: quarters ascending, one series per requested column.
#[derive(Debug, Default, PartialEq)]
pub struct Data {
    /// The quarters, ascending (`2019Q3`).
    pub quarters: Vec<String>,
    /// One value per quarter for each column, `None` where there is none.
    pub series: Vec<Vec<Option<f64>>>,
}

fn strings(a: &dyn Array) -> Result<arrow::array::StringArray, String> {
    let c = cast(a, &DataType::Utf8).map_err(|e| e.to_string())?;
    Ok(c.as_string::<i32>().clone())
}

/// Sums the columns `y` per quarter. A text column (other than the quarter
/// and the district's name) that has an `ALL` row is read at `ALL` only,
/// so a city total is not added to its own districts.
pub fn collect(schema: &SchemaRef, batches: &[RecordBatch], y: &[String]) -> Result<Data, String> {
    let qi = schema.index_of("quarter").map_err(|e| e.to_string())?;
    let yi = y
        .iter()
        .map(|c| schema.index_of(c).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let text: Vec<usize> = schema
        .fields()
        .iter()
        .enumerate()
        .filter(|(i, f)| {
            *i != qi
                && f.name() != "district_name"
                && matches!(
                    f.data_type(),
                    DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8
                )
        })
        .map(|(i, _)| i)
        .collect();
    let mut at_all = Vec::new();
    for &i in &text {
        let mut any = false;
        for b in batches {
            any |= strings(b.column(i))?.iter().any(|v| v == Some("ALL"));
        }
        if any {
            at_all.push(i);
        }
    }
    let mut by_quarter: BTreeMap<String, Vec<Option<f64>>> = BTreeMap::new();
    for b in batches {
        let quarters = strings(b.column(qi))?;
        let dims = at_all
            .iter()
            .map(|&i| strings(b.column(i)))
            .collect::<Result<Vec<_>, _>>()?;
        let values = yi
            .iter()
            .map(|&i| {
                cast(b.column(i), &DataType::Float64)
                    .map(|a| a.as_primitive::<Float64Type>().clone())
                    .map_err(|e| e.to_string())
            })
            .collect::<Result<Vec<_>, _>>()?;
        for row in 0..b.num_rows() {
            if quarters.is_null(row) || dims.iter().any(|d| d.is_null(row) || d.value(row) != "ALL")
            {
                continue;
            }
            let entry = by_quarter
                .entry(quarters.value(row).to_string())
                .or_insert_with(|| vec![None; y.len()]);
            for (k, v) in values.iter().enumerate() {
                if v.is_valid(row) {
                    *entry[k].get_or_insert(0.0) += v.value(row);
                }
            }
        }
    }
    let mut data = Data {
        quarters: by_quarter.keys().cloned().collect(),
        series: vec![Vec::new(); y.len()],
    };
    for values in by_quarter.values() {
        for (k, v) in values.iter().enumerate() {
            data.series[k].push(*v);
        }
    }
    Ok(data)
}

const COLORS: [&str; 8] = [
    "#2f6fdf", "#e8684a", "#2ca02c", "#9467bd", "#f2a93b", "#17becf", "#8c564b", "#d62728",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// How values of a unit are shown on an axis: divisor and suffix.
fn scale_of(unit: Option<&str>, max_abs: f64) -> (f64, &'static str) {
    match unit {
        Some("CNY yuan") if max_abs >= 1e8 => (1e8, "亿元"),
        Some("CNY yuan") if max_abs >= 1e4 => (1e4, "万元"),
        Some("CNY yuan") => (1.0, "元"),
        Some("percentage points") => (1.0, "pp"),
        Some(u) if u.starts_with("percent") => (1.0, "%"),
        _ => (1.0, ""),
    }
}

/// A number with thousands separators and at most `decimals` places.
pub fn format_number(v: f64, decimals: usize) -> String {
    let s = format!("{:.*}", decimals, v.abs());
    let (int, frac) = s.split_once('.').unwrap_or((&s, ""));
    let mut grouped = String::new();
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    let frac = frac.trim_end_matches('0');
    let sign = if v < 0.0 && s.chars().any(|c| c.is_ascii_digit() && c != '0') {
        "-"
    } else {
        ""
    };
    if frac.is_empty() {
        format!("{sign}{grouped}")
    } else {
        format!("{sign}{grouped}.{frac}")
    }
}

/// A "nice" tick step (1, 2 or 5 × 10ⁿ) for about five ticks over `span`.
fn nice_step(span: f64) -> f64 {
    let raw = (span / 5.0).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    mag * if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    }
}

/// The smallest and largest value to draw (stacked: the tallest stack),
/// including zero but for sparklines; never an empty range.
fn value_range(kind: Kind, series: &[&Vec<Option<f64>>], n: usize) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for i in 0..n {
        if kind == Kind::Stacked {
            let total: f64 = series
                .iter()
                .filter_map(|s| s[i])
                .filter(|v| *v > 0.0)
                .sum();
            hi = hi.max(total);
            lo = lo.min(0.0);
        } else {
            for v in series.iter().filter_map(|s| s[i]) {
                lo = lo.min(v);
                hi = hi.max(v);
            }
        }
    }
    if kind != Kind::Spark {
        lo = lo.min(0.0);
        hi = hi.max(0.0);
    }
    if !lo.is_finite() || !hi.is_finite() {
        (lo, hi) = (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        hi = lo + 1.0;
    }
    (lo, hi)
}

/// Where things go: the plot area inside the margins, the value scale,
/// one band per quarter, and how values are written.
struct Frame {
    left: f64,
    top: f64,
    width: f64,
    height: f64,
    lo: f64,
    hi: f64,
    step: f64,
    band: f64,
    div: f64,
    suffix: &'static str,
}

impl Frame {
    fn new(
        kind: Kind,
        (lo, hi): (f64, f64),
        unit: Option<&str>,
        (w, h): (f64, f64),
        n: usize,
    ) -> Frame {
        let spark = kind == Kind::Spark;
        let (ml, mr, mt, mb) = if spark {
            (3.0, 3.0, 3.0, 3.0)
        } else {
            (72.0, 16.0, 34.0, 40.0)
        };
        let (width, height) = ((w - ml - mr).max(10.0), (h - mt - mb).max(10.0));
        let step = nice_step(hi - lo);
        let (lo, hi) = if spark {
            (lo, hi)
        } else {
            ((lo / step).floor() * step, (hi / step).ceil() * step)
        };
        let (div, suffix) = scale_of(unit, lo.abs().max(hi.abs()));
        Frame {
            left: ml,
            top: mt,
            width,
            height,
            lo,
            hi,
            step,
            band: width / n as f64,
            div,
            suffix,
        }
    }

    fn x(&self, i: usize) -> f64 {
        self.left + self.band * (i as f64 + 0.5)
    }

    fn y(&self, v: f64) -> f64 {
        self.top + self.height - (v - self.lo) / (self.hi - self.lo) * self.height
    }

    /// A value as a tooltip shows it, in the axis's unit.
    fn shown(&self, v: f64) -> String {
        format!("{}{}", format_number(v / self.div, 2), self.suffix)
    }
}

/// Grid lines with their values, the unit, and the quarters under the plot.
fn axes(out: &mut String, f: &Frame, quarters: &[String]) {
    let mut t = f.lo;
    while t <= f.hi + f.step / 2.0 {
        let y = f.y(t);
        let _ = write!(
            out,
            "<line x1=\"{}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"{}\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#555\">{}</text>",
            f.left,
            f.left + f.width,
            if t.abs() < f.step / 1e6 {
                "#999"
            } else {
                "#e5e5e5"
            },
            f.left - 6.0,
            y + 4.0,
            esc(&format_number(t / f.div, 2))
        );
        t += f.step;
    }
    if !f.suffix.is_empty() {
        let _ = write!(
            out,
            "<text x=\"4\" y=\"14\" fill=\"#555\">{}</text>",
            esc(f.suffix)
        );
    }
    let n = quarters.len();
    let every = ((n as f64 * 60.0 / f.width).ceil() as usize).max(1);
    for (i, q) in quarters.iter().enumerate() {
        if i % every == 0 || i + 1 == n {
            let _ = write!(
                out,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#555\">{}</text>",
                f.x(i),
                f.top + f.height + 18.0,
                esc(q)
            );
        }
    }
}

/// A colour swatch and name per series, above the plot.
fn legend(out: &mut String, f: &Frame, labels: &[String], series: usize) {
    let mut x = f.left;
    for (k, l) in labels.iter().enumerate().take(series) {
        let _ = write!(
            out,
            "<rect x=\"{x:.1}\" y=\"8\" width=\"12\" height=\"12\" fill=\"{}\"/>\
             <text x=\"{:.1}\" y=\"18\" fill=\"#333\">{}</text>",
            COLORS[k % COLORS.len()],
            x + 16.0,
            esc(l)
        );
        x += 28.0 + 13.0 * l.chars().count() as f64;
    }
}

/// One line per series, broken where a value is missing, with a point per
/// value (sparklines: the last one only).
fn lines(
    out: &mut String,
    f: &Frame,
    data: &Data,
    series: &[&Vec<Option<f64>>],
    labels: &[String],
    spark: bool,
) {
    let n = data.quarters.len();
    for (k, s) in series.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        let mut path = String::new();
        let mut pen_down = false;
        for (i, v) in s.iter().enumerate() {
            match v {
                Some(v) => {
                    let pen = if pen_down { "L" } else { "M" };
                    let _ = write!(path, "{pen}{:.1},{:.1} ", f.x(i), f.y(*v));
                    pen_down = true;
                }
                None => pen_down = false,
            }
        }
        let _ = write!(
            out,
            "<path d=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"{}\"/>",
            path.trim_end(),
            if spark { 1.5 } else { 2.0 }
        );
        for (i, v) in s.iter().enumerate() {
            let Some(v) = v else { continue };
            if spark && i + 1 != n {
                continue;
            }
            let _ = write!(
                out,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"{}\" fill=\"{color}\"><title>{} {}: {}</title></circle>",
                f.x(i),
                f.y(*v),
                if spark { 2.0 } else { 3.0 },
                esc(&data.quarters[i]),
                esc(labels.get(k).map_or("", String::as_str)),
                esc(&f.shown(*v))
            );
        }
    }
}

/// Bars per quarter: side by side, or stacked (positive values).
fn bars(
    out: &mut String,
    f: &Frame,
    data: &Data,
    series: &[&Vec<Option<f64>>],
    labels: &[String],
    stacked: bool,
) {
    let width = if stacked {
        f.band * 0.7
    } else {
        f.band * 0.8 / series.len() as f64
    };
    for i in 0..data.quarters.len() {
        let mut base = 0.0;
        for (k, s) in series.iter().enumerate() {
            let Some(v) = s[i] else { continue };
            let (from, to) = if stacked {
                let from = base;
                base += v.max(0.0);
                (from, base)
            } else {
                (0.0, v)
            };
            let x = if stacked {
                f.x(i) - width / 2.0
            } else {
                f.left + f.band * i as f64 + f.band * 0.1 + width * k as f64
            };
            let (y0, y1) = (f.y(from.max(to)), f.y(from.min(to)));
            let _ = write!(
                out,
                "<rect x=\"{x:.1}\" y=\"{y0:.1}\" width=\"{width:.1}\" height=\"{:.1}\" fill=\"{}\"><title>{} {}: {}</title></rect>",
                (y1 - y0).max(0.5),
                COLORS[k % COLORS.len()],
                esc(&data.quarters[i]),
                esc(labels.get(k).map_or("", String::as_str)),
                esc(&f.shown(v))
            );
        }
    }
}

/// Draws `data` (series named by `labels`) as an SVG document of `w`×`h` pixels.
pub fn render(
    kind: Kind,
    data: &Data,
    labels: &[String],
    unit: Option<&str>,
    w: u32,
    h: u32,
) -> String {
    let (w, h) = (f64::from(w), f64::from(h));
    let title = labels.join(" / ");
    let points: usize = data.series.iter().map(|s| s.iter().flatten().count()).sum();
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" \
         role=\"img\" aria-label=\"{t}\" data-points=\"{points}\" font-family=\"sans-serif\" font-size=\"12\">\
         <title>{t}</title>",
        t = esc(&title)
    );
    if points == 0 {
        let _ = write!(
            out,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"#888\">暂无数据 (no data)</text></svg>",
            w / 2.0,
            h / 2.0
        );
        return out;
    }
    let spark = kind == Kind::Spark;
    let series: Vec<&Vec<Option<f64>>> = data
        .series
        .iter()
        .take(if spark { 1 } else { usize::MAX })
        .collect();
    let n = data.quarters.len();
    let f = Frame::new(kind, value_range(kind, &series, n), unit, (w, h), n);
    if !spark {
        axes(&mut out, &f, &data.quarters);
        legend(&mut out, &f, labels, series.len());
    }
    match kind {
        Kind::Line | Kind::Spark => lines(&mut out, &f, data, &series, labels, spark),
        Kind::Bar | Kind::Stacked => {
            bars(&mut out, &f, data, &series, labels, kind == Kind::Stacked)
        }
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Decimal128Array, StringArray};
    use arrow::datatypes::{Field, Schema};
    use std::sync::Arc;

    fn batch() -> (SchemaRef, RecordBatch) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("quarter", DataType::Utf8, false),
            Field::new("district_code", DataType::Utf8, false),
            Field::new("amount", DataType::Decimal128(18, 2), true),
        ]));
        let b = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec![
                    "2019Q2", "2019Q1", "2019Q1", "2019Q1",
                ])),
                Arc::new(StringArray::from(vec!["ALL", "ALL", "500101", "500102"])),
                Arc::new(
                    Decimal128Array::from(vec![Some(150), Some(300), Some(100), None])
                        .with_precision_and_scale(18, 2)
                        .unwrap(),
                ),
            ],
        )
        .unwrap();
        (schema, b)
    }

    #[test]
    fn a_dimension_with_an_all_row_is_read_at_all() {
        let (schema, b) = batch();
        let d = collect(&schema, &[b], &["amount".into()]).unwrap();
        assert_eq!(d.quarters, ["2019Q1", "2019Q2"]);
        assert_eq!(d.series, vec![vec![Some(3.0), Some(1.5)]]);
    }

    #[test]
    fn charts_have_a_mark_per_value_and_say_when_there_is_none() {
        let (schema, b) = batch();
        let d = collect(&schema, &[b], &["amount".into()]).unwrap();
        let svg = render(Kind::Bar, &d, &["金额".into()], Some("CNY yuan"), 400, 200);
        assert_eq!(svg.matches("<rect").count(), 1 + 2, "{svg}");
        assert!(svg.contains("data-points=\"2\""), "{svg}");
        assert!(svg.contains("2019Q1 金额: 3元"), "{svg}");
        let empty = render(Kind::Line, &Data::default(), &["x".into()], None, 400, 200);
        assert!(empty.contains("暂无数据"), "{empty}");
    }

    #[test]
    fn numbers_get_thousands_separators() {
        assert_eq!(format_number(1234567.891, 2), "1,234,567.89");
        assert_eq!(format_number(-0.001, 2), "0");
        assert_eq!(format_number(-12.5, 2), "-12.5");
        assert_eq!(format_number(100.0, 2), "100");
    }
}
