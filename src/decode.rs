//! Decode: a page's bytes into raw records, one cell per schema column.
//!
//! Cells keep the partner's exact text (JSON numbers are never turned into
//! floats, dates are never guessed), so validation sees what was sent. A
//! record that cannot be read on its own (an NDJSON line or CSV row that is
//! not UTF-8, a JSON element that is not an object) becomes a bad item for
//! the quarantine; a page that cannot be split into records at all (broken
//! JSON, invalid UTF-8 inside a JSON array) is a [`DecodeError`].

use crate::config::pipeline::Format;
use serde::de::{DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// One cell as sent.
#[derive(Debug, Clone)]
pub enum Cell<'a> {
    /// A JSON value other than a string without escapes, verbatim (its
    /// exact text, known to be valid JSON).
    Json(&'a str),
    /// A JSON string without escapes: its text between the quotes.
    JsonStr(&'a str),
    /// A CSV field, unquoted.
    Text(Cow<'a, str>),
}

impl<'a> Cell<'a> {
    /// The cell of a valid JSON value's text: a string without escapes
    /// is kept as its contents, anything else verbatim.
    fn json(raw: &'a str) -> Cell<'a> {
        match raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
            Some(inner) if !inner.contains('\\') => Cell::JsonStr(inner),
            _ => Cell::Json(raw),
        }
    }

    /// The length of the cell's text: at least that of the string value
    /// it checks into (unescaping and trimming only shorten text).
    pub fn text_len(&self) -> usize {
        match self {
            Cell::Json(s) | Cell::JsonStr(s) => s.len(),
            Cell::Text(s) => s.len(),
        }
    }
}

/// One record, its cells in schema column order (`None`: the field was absent or empty).
#[derive(Debug, Clone)]
pub struct RawRecord<'a> {
    /// 1-based position of the record in its page.
    pub no: u64,
    /// The record's text as sent, for the quarantine.
    pub raw: Cow<'a, str>,
    /// Cells by schema column index.
    pub cells: Vec<Option<Cell<'a>>>,
}

/// A record that could not be read on its own.
#[derive(Debug, Clone, PartialEq)]
pub struct BadItem {
    /// 1-based position in the page (line number for NDJSON, row for CSV).
    pub no: u64,
    /// Its text (lossy if it was not UTF-8).
    pub raw: String,
    /// A stable code for the kind of problem (`not_utf8`, `csv_field_count`, …).
    pub code: &'static str,
    /// Why it could not be read.
    pub reason: String,
}

/// A decoded page.
#[derive(Debug, Default)]
pub struct DecodedPage<'a> {
    /// Records in page order.
    pub records: Vec<RawRecord<'a>>,
    /// Items that are not records.
    pub bad: Vec<BadItem>,
    /// The next cursor, for cursor pagination.
    pub next_cursor: Option<String>,
    /// Fields not in the schema, with how often they appeared.
    pub unknown_fields: BTreeMap<String, u64>,
    /// Items in the page (records and bad items).
    pub items: u64,
}

/// Why a page could not be decoded at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The body is not valid UTF-8 where the whole page must be.
    #[error("the body is not valid UTF-8 (first bad byte at offset {offset})")]
    Utf8 {
        /// Byte offset of the first invalid byte.
        offset: usize,
    },
    /// The body is not the JSON shape the pipeline declares.
    #[error("the body is not {expected}: {message}")]
    Json {
        /// What the pipeline expects.
        expected: String,
        /// serde_json's message, with line and column.
        message: String,
    },
    /// The CSV has no header row or a broken one.
    #[error("CSV header: {0}")]
    CsvHeader(String),
}

/// Maps field names to schema column indexes.
#[derive(Debug, Clone)]
pub struct Columns {
    index: HashMap<String, usize>,
    /// Names in schema order.
    names: Vec<String>,
    /// Each name as a JSON key is written (`"name"`), byte for byte, when
    /// the name needs no escape; `None` for a name that would.
    quoted: Vec<Option<Box<[u8]>>>,
    len: usize,
}

impl Columns {
    /// The column map for these names, in schema order.
    pub fn new<'n>(names: impl IntoIterator<Item = &'n str>) -> Columns {
        let index: HashMap<String, usize> = names
            .into_iter()
            .enumerate()
            .map(|(i, n)| (n.to_string(), i))
            .collect();
        let len = index.len();
        let mut names = vec![String::new(); len];
        for (n, &i) in &index {
            names[i].clone_from(n);
        }
        let quoted = names
            .iter()
            .map(|n| {
                let plain = n.bytes().all(|c| c >= 0x20 && c != b'"' && c != b'\\');
                plain.then(|| format!("\"{n}\"").into_bytes().into_boxed_slice())
            })
            .collect();
        Columns {
            index,
            names,
            quoted,
            len,
        }
    }

    /// A record's cells, all absent (written in place: cloning a `None`
    /// cell by cell, as `vec!` does, costs more than the allocation).
    fn empty_cells<'a>(&self) -> Vec<Option<Cell<'a>>> {
        let mut cells = Vec::with_capacity(self.len);
        cells.resize_with(self.len, || None);
        cells
    }

    /// The length of column `guess`'s quoted name if `text` starts with
    /// it: then `text` starts with a JSON string that is exactly that name
    /// (a plain name holds no quote, so the string ends where it does).
    fn key_at(&self, guess: usize, text: &[u8]) -> Option<usize> {
        let q = self.quoted.get(guess)?.as_deref()?;
        text.starts_with(q).then_some(q.len())
    }

    /// The index of field `name`, trying `guess` first: records usually
    /// list their fields in schema order, so most fields need no hashing.
    fn find(&self, name: &str, guess: usize) -> Option<usize> {
        match self.names.get(guess) {
            Some(n) if n == name => Some(guess),
            _ => self.index.get(name).copied(),
        }
    }
}

/// Decodes one page.
pub fn decode<'a>(
    format: Format,
    records_field: Option<&str>,
    cursor_field: Option<&str>,
    columns: &Columns,
    body: &'a [u8],
) -> Result<DecodedPage<'a>, DecodeError> {
    match format {
        Format::Json => decode_json(records_field, cursor_field, columns, body),
        Format::Ndjson => Ok(decode_ndjson(columns, body)),
        Format::Csv => decode_csv(columns, None, body),
    }
}

/// Decodes CSV rows that follow a header row given apart (`header` holds
/// it, with or without its line end): a later chunk of a local file.
pub fn decode_csv_after<'a>(
    columns: &Columns,
    header: &[u8],
    body: &'a [u8],
) -> Result<DecodedPage<'a>, DecodeError> {
    decode_csv(columns, Some(header), body)
}

struct Key<'de>(Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// Deserialises one JSON object straight into schema-ordered cells.
struct RecordSeed<'c> {
    columns: &'c Columns,
}

struct JsonCells<'a> {
    cells: Vec<Option<Cell<'a>>>,
    unknown: Vec<String>,
}

impl<'de> DeserializeSeed<'de> for RecordSeed<'_> {
    type Value = JsonCells<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        struct V<'c> {
            columns: &'c Columns,
        }
        impl<'de> Visitor<'de> for V<'_> {
            type Value = JsonCells<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut cells = self.columns.empty_cells();
                let mut unknown = Vec::new();
                let mut guess = 0;
                while let Some(Key(k)) = map.next_key::<Key<'de>>()? {
                    let v: &'de RawValue = map.next_value()?;
                    match self.columns.find(k.as_ref(), guess) {
                        Some(i) => {
                            cells[i] = Some(Cell::json(v.get()));
                            guess = i + 1;
                        }
                        None => unknown.push(k.into_owned()),
                    }
                }
                Ok(JsonCells { cells, unknown })
            }
        }
        d.deserialize_map(V {
            columns: self.columns,
        })
    }
}

fn parse_record<'a>(columns: &Columns, text: &'a str) -> Result<JsonCells<'a>, String> {
    if let Some(cells) = flat_object(columns, text) {
        return Ok(cells);
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let cells = RecordSeed { columns }
        .deserialize(&mut de)
        .map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(cells)
}

/// The common case of a record, read without serde: one flat JSON object
/// whose keys and strings hold no escapes or control characters and whose
/// values are strings, numbers, `true`, `false` or `null`. `None` for
/// anything else (nested values, escapes, any syntax error), which the full
/// parser then reads, so every record reads (or fails) exactly as with it.
fn flat_object<'a>(columns: &Columns, text: &'a str) -> Option<JsonCells<'a>> {
    let b = text.as_bytes();
    let ws = |mut i: usize| {
        while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
            i += 1;
        }
        i
    };
    // A string without escapes or control characters: the index after its
    // closing quote (one pass over the short string, no call per string).
    let string = |i: usize| -> Option<usize> {
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let mut j = i + 1;
        // Eight bytes at a time: the first word holding a quote, backslash
        // or control character says which byte it is; the last few bytes
        // of the text go byte by byte.
        while let Some(word) = b.get(j..j + 8) {
            let stops = string_stop(u64::from_le_bytes(word.try_into().expect("8 bytes")));
            if stops != 0 {
                let at = j + (stops.trailing_zeros() / 8) as usize;
                return (b[at] == b'"').then_some(at + 1);
            }
            j += 8;
        }
        loop {
            match *b.get(j)? {
                b'"' => return Some(j + 1),
                c if c < 0x20 || c == b'\\' => return None,
                _ => j += 1,
            }
        }
    };
    let digits = |mut i: usize| {
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        (i > start).then_some(i)
    };
    let number = |mut i: usize| -> Option<usize> {
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        i = match b.get(i)? {
            b'0' => i + 1,
            b'1'..=b'9' => digits(i)?,
            _ => return None,
        };
        if b.get(i) == Some(&b'.') {
            i = digits(i + 1)?;
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(b.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            i = digits(i)?;
        }
        Some(i)
    };
    let mut cells = columns.empty_cells();
    let mut unknown = Vec::new();
    let mut i = ws(0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = ws(i + 1);
    let mut guess = 0;
    if b.get(i) == Some(&b'}') {
        i += 1;
    } else {
        loop {
            // Keys usually come in schema order: the expected one is
            // matched as bytes, anything else is read and looked up.
            let (key_end, column) = match columns.key_at(guess, &b[i..]) {
                Some(n) => (i + n, Ok(guess)),
                None => {
                    let end = string(i)?;
                    let key = &text[i + 1..end - 1];
                    (end, columns.find(key, guess).ok_or(key))
                }
            };
            i = ws(key_end);
            if b.get(i) != Some(&b':') {
                return None;
            }
            let start = ws(i + 1);
            let (end, cell) = match b.get(start)? {
                b'"' => {
                    let end = string(start)?;
                    (end, Cell::JsonStr(&text[start + 1..end - 1]))
                }
                b't' if b[start..].starts_with(b"true") => (start + 4, Cell::Json("true")),
                b'f' if b[start..].starts_with(b"false") => (start + 5, Cell::Json("false")),
                b'n' if b[start..].starts_with(b"null") => (start + 4, Cell::Json("null")),
                _ => {
                    let end = number(start)?;
                    (end, Cell::Json(&text[start..end]))
                }
            };
            match column {
                Ok(c) => {
                    cells[c] = Some(cell);
                    guess = c + 1;
                }
                Err(key) => unknown.push(key.to_string()),
            }
            i = ws(end);
            match b.get(i)? {
                b',' => i = ws(i + 1),
                b'}' => {
                    i += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    (ws(i) == b.len()).then_some(JsonCells { cells, unknown })
}

/// Flags the bytes of `word` (little-endian) that are a quote, a backslash
/// or a control character (below 0x20): the bytes that end or leave a
/// plain JSON string. Bit tricks on the whole word; bytes of 0x80 and above
/// (UTF-8 beyond ASCII) never count. The lowest flag (its high bit) is
/// exact; flags above it may be spurious (borrows), so only the first
/// stop may be read from the result, and zero means none.
fn string_stop(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // A byte's high bit is set where it is zero (after the xor) or below
    // the bound; borrows only ever flag bytes above a flagged one.
    let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let below_space = word.wrapping_sub(ONES * 0x20) & !word & HIGH;
    zero(word ^ (ONES * u64::from(b'"'))) | zero(word ^ (ONES * u64::from(b'\\'))) | below_space
}

fn utf8(body: &[u8]) -> Result<&str, DecodeError> {
    std::str::from_utf8(body).map_err(|e| DecodeError::Utf8 {
        offset: e.valid_up_to(),
    })
}

fn push_record<'a>(page: &mut DecodedPage<'a>, no: u64, raw: &'a str, columns: &Columns) {
    match parse_record(columns, raw) {
        Ok(c) => {
            for u in c.unknown {
                *page.unknown_fields.entry(u).or_default() += 1;
            }
            page.records.push(RawRecord {
                no,
                raw: Cow::Borrowed(raw),
                cells: c.cells,
            });
        }
        Err(e) => page.bad.push(BadItem {
            no,
            raw: raw.to_string(),
            code: "not_json_object",
            reason: format!("not a JSON object: {e}"),
        }),
    }
}

fn decode_json<'a>(
    records_field: Option<&str>,
    cursor_field: Option<&str>,
    columns: &Columns,
    body: &'a [u8],
) -> Result<DecodedPage<'a>, DecodeError> {
    let text = utf8(body)?;
    let mut page = DecodedPage::default();
    let elements: Vec<&'a RawValue> = match records_field {
        None => serde_json::from_str(text).map_err(|e| DecodeError::Json {
            expected: "a JSON array of records".into(),
            message: e.to_string(),
        })?,
        Some(field) => {
            let expected = format!("a JSON object with the records in {field:?}");
            let obj: HashMap<Cow<'a, str>, &'a RawValue> =
                serde_json::from_str(text).map_err(|e| DecodeError::Json {
                    expected: expected.clone(),
                    message: e.to_string(),
                })?;
            let records = obj.get(field).ok_or_else(|| DecodeError::Json {
                expected: expected.clone(),
                message: format!("there is no field {field:?}"),
            })?;
            if let Some(cf) = cursor_field {
                page.next_cursor = match obj.get(cf).map(|v| v.get().trim()) {
                    None | Some("null") | Some("\"\"") => None,
                    Some(v) => {
                        Some(serde_json::from_str::<String>(v).unwrap_or_else(|_| v.to_string()))
                    }
                };
            }
            serde_json::from_str(records.get()).map_err(|e| DecodeError::Json {
                expected: format!("an array in {field:?}"),
                message: e.to_string(),
            })?
        }
    };
    for (i, el) in elements.into_iter().enumerate() {
        page.items += 1;
        push_record(&mut page, i as u64 + 1, el.get(), columns);
    }
    Ok(page)
}

fn decode_ndjson<'a>(columns: &Columns, body: &'a [u8]) -> DecodedPage<'a> {
    let mut page = DecodedPage::default();
    // A body of valid UTF-8 (the usual case) is checked once; lines are cut
    // from it at newlines, so they are whole text too.
    let whole = std::str::from_utf8(body).ok();
    let mut start = 0;
    let ends = memchr::memchr_iter(b'\n', body).chain(std::iter::once(body.len()));
    for (i, end) in ends.enumerate() {
        let at = start;
        start = end + 1;
        let line = &body[at..end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        page.items += 1;
        let no = i as u64 + 1;
        let text = match whole.and_then(|t| t.get(at..at + line.len())) {
            Some(t) => Ok(t),
            None => std::str::from_utf8(line),
        };
        match text {
            Ok(text) => push_record(&mut page, no, text, columns),
            Err(e) => page.bad.push(BadItem {
                no,
                raw: String::from_utf8_lossy(line).into_owned(),
                code: "not_utf8",
                reason: format!(
                    "line is not valid UTF-8 (first bad byte at offset {})",
                    e.valid_up_to()
                ),
            }),
        }
    }
    page
}

/// Splits CSV (RFC 4180) into records of byte ranges and cells, one record
/// at a time into the same cell buffer.
struct CsvReader<'a> {
    body: &'a [u8],
    /// Where the next record starts.
    at: usize,
    /// The cells of the record [`CsvReader::next`] returned last.
    cells: Vec<Cow<'a, [u8]>>,
}

/// One CSV record's text; its cells are in [`CsvReader::cells`].
struct CsvRecord<'a> {
    raw: &'a [u8],
    /// A quoted field was still open at the end of the page.
    unterminated: bool,
}

impl<'a> CsvReader<'a> {
    fn new(body: &'a [u8]) -> CsvReader<'a> {
        CsvReader {
            body,
            at: 0,
            cells: Vec::new(),
        }
    }

    /// The next record (blank lines are none), its cells in `self.cells`.
    fn next(&mut self) -> Option<CsvRecord<'a>> {
        let body = self.body;
        let n = body.len();
        let mut i = self.at;
        while i < n {
            let start = i;
            self.cells.clear();
            let mut unterminated = false;
            loop {
                // One cell.
                if i < n && body[i] == b'"' {
                    let mut buf: Option<Vec<u8>> = None;
                    let content_start = i + 1;
                    i += 1;
                    loop {
                        if i >= n {
                            unterminated = true;
                            break;
                        }
                        if body[i] == b'"' {
                            if i + 1 < n && body[i + 1] == b'"' {
                                let b = buf.get_or_insert_with(|| body[content_start..i].to_vec());
                                b.push(b'"');
                                i += 2;
                                continue;
                            }
                            break;
                        }
                        if let Some(b) = buf.as_mut() {
                            b.push(body[i]);
                        }
                        i += 1;
                    }
                    let cell = match buf {
                        Some(b) => Cow::Owned(b),
                        None => Cow::Borrowed(&body[content_start..i.min(n)]),
                    };
                    i = (i + 1).min(n); // closing quote (none at the end of an unterminated page)
                    // Anything up to the delimiter after a closing quote is kept verbatim.
                    let extra_start = i;
                    while i < n && body[i] != b',' && body[i] != b'\n' {
                        i += 1;
                    }
                    if i > extra_start {
                        let mut c = cell.into_owned();
                        c.extend_from_slice(&body[extra_start..i]);
                        self.cells.push(Cow::Owned(c));
                    } else {
                        self.cells.push(cell);
                    }
                } else {
                    let s = i;
                    i = memchr::memchr2(b',', b'\n', &body[i..]).map_or(n, |k| i + k);
                    let mut cell = &body[s..i];
                    if i < n && body[i] == b'\n' && cell.last() == Some(&b'\r') {
                        cell = &cell[..cell.len() - 1];
                    }
                    self.cells.push(Cow::Borrowed(cell));
                }
                if i < n && body[i] == b',' {
                    i += 1;
                    continue;
                }
                break;
            }
            let mut end = i;
            if i < n && body[i] == b'\n' {
                i += 1;
            }
            if end > start && body[end - 1] == b'\r' {
                end -= 1;
            }
            let raw = &body[start..end];
            // A blank line is no record; a line holding `""` is one (an empty value).
            if !raw.is_empty() || unterminated {
                self.at = i;
                return Some(CsvRecord { raw, unterminated });
            }
        }
        self.at = n;
        None
    }
}

/// The field names of a CSV page's header row (a leading BOM dropped).
fn csv_header(reader: &mut CsvReader<'_>) -> Result<Vec<String>, DecodeError> {
    let Some(header) = reader.next() else {
        return Err(DecodeError::CsvHeader(
            "the body is empty; a CSV page starts with a header row".into(),
        ));
    };
    if header.unterminated {
        return Err(DecodeError::CsvHeader(
            "a quoted field in the header row is never closed".into(),
        ));
    }
    reader
        .cells
        .iter()
        .map(|c| {
            String::from_utf8(c.to_vec())
                .map(|s| s.trim().trim_start_matches('\u{feff}').to_string())
        })
        .collect::<Result<_, _>>()
        .map_err(|_| DecodeError::CsvHeader("the header row is not valid UTF-8".into()))
}

fn decode_csv<'a>(
    columns: &Columns,
    header: Option<&[u8]>,
    body: &'a [u8],
) -> Result<DecodedPage<'a>, DecodeError> {
    let mut page = DecodedPage::default();
    let mut recs = CsvReader::new(body);
    let names = match header {
        Some(h) => csv_header(&mut CsvReader::new(h))?,
        None => csv_header(&mut recs)?,
    };
    let mapping: Vec<Option<usize>> = names
        .iter()
        .map(|n| columns.index.get(n).copied())
        .collect();
    for (name, m) in names.iter().zip(&mapping) {
        if m.is_none() {
            page.unknown_fields.insert(name.clone(), 0);
        }
    }
    // A page of valid UTF-8 (the usual case) is checked once: rows and cells
    // are cut from it at ASCII delimiters, so they are whole text too.
    let whole = std::str::from_utf8(body).ok();
    let text_of = |bytes: &'a [u8]| -> Option<&'a str> {
        match whole {
            Some(t) => {
                let at = bytes.as_ptr() as usize - body.as_ptr() as usize;
                t.get(at..at + bytes.len())
            }
            None => std::str::from_utf8(bytes).ok(),
        }
    };
    let mut no = 0;
    while let Some(rec) = recs.next() {
        page.items += 1;
        no += 1;
        let raw = match text_of(rec.raw)
            .ok_or(())
            .or_else(|_| std::str::from_utf8(rec.raw))
        {
            Ok(r) => r,
            Err(e) => {
                page.bad.push(BadItem {
                    no,
                    raw: String::from_utf8_lossy(rec.raw).into_owned(),
                    code: "not_utf8",
                    reason: format!(
                        "row is not valid UTF-8 (first bad byte at offset {})",
                        e.valid_up_to()
                    ),
                });
                continue;
            }
        };
        if rec.unterminated {
            page.bad.push(BadItem {
                no,
                raw: raw.to_string(),
                code: "csv_unterminated_quote",
                reason: "a quoted field is never closed (the page ends inside quotes)".into(),
            });
            continue;
        }
        if recs.cells.len() != names.len() {
            page.bad.push(BadItem {
                no,
                raw: raw.to_string(),
                code: "csv_field_count",
                reason: format!(
                    "row has {} fields, the header has {}",
                    recs.cells.len(),
                    names.len()
                ),
            });
            continue;
        }
        let mut cells = columns.empty_cells();
        for (cell, m) in recs.cells.drain(..).zip(&mapping) {
            let Some(idx) = *m else {
                continue;
            };
            if cell.is_empty() {
                continue;
            }
            // Cells are slices of the row, which is valid UTF-8, cut at ASCII
            // delimiters; checked anyway so no input can panic here.
            let text = match cell {
                Cow::Borrowed(b) => text_of(b).map(Cow::Borrowed),
                Cow::Owned(b) => String::from_utf8(b).ok().map(Cow::Owned),
            };
            let Some(text) = text else {
                continue;
            };
            cells[idx] = Some(Cell::Text(text));
        }
        for (name, m) in names.iter().zip(&mapping) {
            if m.is_none() {
                *page.unknown_fields.entry(name.clone()).or_default() += 1;
            }
        }
        page.records.push(RawRecord {
            no,
            raw: Cow::Borrowed(raw),
            cells,
        });
    }
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols() -> Columns {
        Columns::new(["id", "amount", "day"])
    }

    #[test]
    fn flat_objects_read_like_serde_and_anything_else_is_left_to_it() {
        let cols = cols();
        let fast = [
            r#"{"id":"x","amount":1.50,"day":null}"#,
            " { \"amount\" : -0.5e+3 ,\t\"id\" : \"y\" }\r ",
            "{}",
            r#"{"zz":true,"id":"é","zz":false,"amount":0}"#,
            r#"{"id":1e5,"id":2}"#,
            r#"{"idx":1,"id":2,"i":3,"amount" :4,"day":5,"day2":6}"#,
            r#"{"day":1,"amount":2,"id":3}"#,
            r#"{"a key longer than eight":"a plain string longer than eight bytes, é 重庆","id":"91500000MA5U0000X1"}"#,
        ];
        let deferred = [
            r#"{"id":"\"q\""}"#,
            r#"{"id":[1]}"#,
            r#"{"id":{"a":1}}"#,
            r#"{"id":01}"#,
            r#"{"id":1,}"#,
            r#"{"id":tru}"#,
            r#"{"id":"x"} x"#,
            "{\"id\":\"tab\there\"}",
            r#"{"id":1.}"#,
            r#"{"id":-}"#,
            r#"{"id" 1}"#,
            r#"["id"]"#,
            r#"{"id":"x""#,
            r#"{"id":"a string longer than eight bytes with an escaped \" quote"}"#,
            "{\"id\":\"0123456789abcdef\u{1}ghij\"}",
            "{\"id\":\"0123456789abcdef\u{1f}\"}",
            r#"{"id":"an unterminated string longer than eight bytes"#,
        ];
        for line in fast.iter().chain(&deferred) {
            let mut de = serde_json::Deserializer::from_str(line);
            let full = RecordSeed { columns: &cols }
                .deserialize(&mut de)
                .and_then(|c| de.end().map(|_| c));
            let quick = flat_object(&cols, line);
            assert_eq!(quick.is_some(), fast.contains(line), "{line}");
            if let Some(quick) = quick {
                let full = full.expect(line);
                assert_eq!(
                    format!("{:?}", quick.cells),
                    format!("{:?}", full.cells),
                    "{line}"
                );
                assert_eq!(quick.unknown, full.unknown, "{line}");
            }
        }
    }

    #[test]
    fn string_stop_finds_exactly_the_first_quote_backslash_or_control_byte() {
        let is_stop = |b: u8| b == b'"' || b == b'\\' || b < 0x20;
        // The first stop of a word, as read from string_stop's flags.
        let first = |word: [u8; 8]| match string_stop(u64::from_le_bytes(word)) {
            0 => None,
            flags => Some(flags.trailing_zeros() as usize / 8),
        };
        // Every byte value at every position of words of plain fillers
        // (ASCII and bytes beyond it), alone and followed by a second byte
        // that stops, borders a stop or carries a borrow.
        let seconds = [
            0x00, 0x01, 0x1F, 0x20, 0x21, 0x23, b'"', b'\\', 0x5D, 0x80, 0xFF,
        ];
        for filler in [b'a', b' ', b'~', 0x80, 0xE9, 0xFF] {
            assert_eq!(first([filler; 8]), None);
            for at in 0..8 {
                for byte in 0..=255u8 {
                    let mut word = [filler; 8];
                    word[at] = byte;
                    let want = is_stop(byte).then_some(at);
                    assert_eq!(first(word), want, "{byte:#x} at {at} among {filler:#x}");
                    for later in at + 1..8 {
                        for &second in &seconds {
                            word[later] = second;
                            let want = word.iter().position(|&b| is_stop(b));
                            assert_eq!(first(word), want, "{word:x?}");
                            word[later] = filler;
                        }
                    }
                }
            }
        }
    }

    fn text(c: &Option<Cell>) -> String {
        match c {
            Some(Cell::Json(v)) => v.to_string(),
            Some(Cell::JsonStr(v)) => format!("{v:?}"),
            Some(Cell::Text(t)) => t.to_string(),
            None => "<none>".into(),
        }
    }

    #[test]
    fn json_keeps_numbers_verbatim_and_counts_unknown_fields() {
        let body = br#"[{"id":"a","amount":1234.5678901234567890123,"extra":1},{"id":"b","day":"2019-09-30"},7]"#;
        let p = decode(Format::Json, None, None, &cols(), body).unwrap();
        assert_eq!(p.records.len(), 2);
        assert_eq!(text(&p.records[0].cells[1]), "1234.5678901234567890123");
        assert_eq!(text(&p.records[1].cells[1]), "<none>");
        assert_eq!(p.unknown_fields.get("extra"), Some(&1));
        assert_eq!(p.bad.len(), 1);
        assert_eq!(p.bad[0].no, 3);
        assert!(
            p.bad[0].reason.contains("not a JSON object"),
            "{}",
            p.bad[0].reason
        );
    }

    #[test]
    fn json_object_pages_give_records_and_cursor() {
        let body = br#"{"data":[{"id":"x"}],"next_cursor":"0.5.1"}"#;
        let p = decode(
            Format::Json,
            Some("data"),
            Some("next_cursor"),
            &cols(),
            body,
        )
        .unwrap();
        assert_eq!(p.records.len(), 1);
        assert_eq!(p.next_cursor.as_deref(), Some("0.5.1"));
        let body = br#"{"data":[],"next_cursor":null}"#;
        assert_eq!(
            decode(
                Format::Json,
                Some("data"),
                Some("next_cursor"),
                &cols(),
                body
            )
            .unwrap()
            .next_cursor,
            None
        );
        let err = decode(Format::Json, Some("items"), None, &cols(), body).unwrap_err();
        assert!(
            err.to_string().contains("there is no field \"items\""),
            "{err}"
        );
    }

    #[test]
    fn broken_json_pages_are_errors_with_position() {
        let err = decode(Format::Json, None, None, &cols(), b"[{\"id\":\"a\"},").unwrap_err();
        assert!(err.to_string().contains("line 1 column"), "{err}");
        let err = decode(Format::Json, None, None, &cols(), b"[{\"id\":\"\xff\"}]").unwrap_err();
        assert_eq!(err, DecodeError::Utf8 { offset: 8 });
        // Deep nesting is skipped without recursion and ends up a bad item, not a stack overflow.
        let deep = format!("[{}{}]", "[".repeat(100_000), "]".repeat(100_000));
        let p = decode(Format::Json, None, None, &cols(), deep.as_bytes()).unwrap();
        assert_eq!(p.bad.len(), 1);
        assert!(
            p.bad[0].reason.contains("expected a JSON object"),
            "{}",
            p.bad[0].reason
        );
    }

    #[test]
    fn ndjson_bad_lines_are_items_not_failures() {
        let body = b"{\"id\":\"a\"}\n\n{\"id\":\"\xff\"}\r\n[1]\n{\"id\":\"c\",\"amount\":\"1.5\"}";
        let p = decode(Format::Ndjson, None, None, &cols(), body).unwrap();
        assert_eq!(p.records.len(), 2);
        assert_eq!(p.records[1].no, 5);
        assert_eq!(p.bad.len(), 2);
        assert_eq!(p.bad[0].no, 3);
        assert!(p.bad[0].reason.contains("not valid UTF-8"));
        assert_eq!(p.items, 4);
    }

    #[test]
    fn csv_page_ending_inside_an_open_quote_is_a_bad_item_not_a_panic() {
        let body = b"id,amount,day\na,1,2019-01-01\n\"x";
        let p = decode(Format::Csv, None, None, &cols(), body).unwrap();
        assert_eq!(p.records.len(), 1);
        assert_eq!(p.bad.len(), 1);
        assert_eq!(p.bad[0].no, 2);
        assert_eq!(p.bad[0].raw, "\"x");
        assert!(
            p.bad[0].reason.contains("never closed"),
            "{}",
            p.bad[0].reason
        );
        for body in [
            &b"\""[..],
            b"id,\"am",
            b"id\n\"",
            b"id\n\"\"\"",
            b"id\r\n\"a\r",
        ] {
            let _ = decode(Format::Csv, None, None, &cols(), body);
        }
        assert!(decode(Format::Csv, None, None, &cols(), b"\"id").is_err());
    }

    #[test]
    fn csv_quotes_empty_cells_and_ragged_rows() {
        let body = b"id,amount,day,note\r\n\"a,1\",12.50,,\"say \"\"hi\"\"\"\nb,1,2019-01-01\nc,,2019-03-31,x\n";
        let p = decode(Format::Csv, None, None, &cols(), body).unwrap();
        assert_eq!(p.records.len(), 2);
        assert_eq!(text(&p.records[0].cells[0]), "a,1");
        assert_eq!(text(&p.records[0].cells[2]), "<none>");
        assert_eq!(p.records[0].raw, "\"a,1\",12.50,,\"say \"\"hi\"\"\"");
        assert_eq!(p.bad.len(), 1);
        assert!(
            p.bad[0]
                .reason
                .contains("row has 3 fields, the header has 4")
        );
        assert_eq!(p.unknown_fields.get("note"), Some(&2));
        assert!(decode(Format::Csv, None, None, &cols(), b"").is_err());
    }

    proptest::proptest! {
        /// Unquoted cells of any length split exactly at commas and line
        /// ends, `\r\n` or `\n`, with or without a last line end.
        #[test]
        fn unquoted_csv_cells_split_at_every_length(
            rows in proptest::collection::vec(
                proptest::collection::vec("[a-z0-9. -]{0,80}", 2..6), 1..8),
            crlf in proptest::bool::ANY,
            last_newline in proptest::bool::ANY,
        ) {
            let end = if crlf { "\r\n" } else { "\n" };
            let mut body = rows.iter().map(|r| r.join(",")).collect::<Vec<_>>().join(end);
            if last_newline {
                body.push_str(end);
            }
            let mut reader = CsvReader::new(body.as_bytes());
            let mut got: Vec<Vec<String>> = Vec::new();
            while let Some(rec) = reader.next() {
                proptest::prop_assert!(!rec.unterminated);
                got.push(reader.cells.iter().map(|c| String::from_utf8(c.to_vec()).unwrap()).collect());
            }
            proptest::prop_assert_eq!(got, rows);
        }
    }
}
