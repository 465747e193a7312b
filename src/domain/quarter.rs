//! Calendar quarters, the warehouse's partition unit (`2019Q3`).

use chrono::{Datelike, NaiveDate};
use std::fmt;
use std::str::FromStr;

/// A calendar quarter such as `2019Q3`.
///
/// Ordered chronologically; `Display` and `FromStr` use the `YYYYQn` form
/// used for partition directories (`quarter=2019Q3`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Quarter {
    /// Quarters since year 0: `year * 4 + (q - 1)`.
    index: i32,
}

/// Why a string is not a `YYYYQn` quarter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid quarter {input:?}: {reason}; expected YYYYQn with n in 1..=4, e.g. 2019Q3")]
pub struct QuarterParseError {
    /// The text that failed to parse.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl Quarter {
    /// The quarter `q` (1..=4) of `year`; `None` if `q` is out of range or
    /// the year is outside 1..=9999.
    pub fn new(year: i32, q: u8) -> Option<Quarter> {
        if !(1..=4).contains(&q) || !(1..=9999).contains(&year) {
            return None;
        }
        Some(Quarter {
            index: year * 4 + i32::from(q) - 1,
        })
    }

    /// The year of this quarter.
    pub fn year(self) -> i32 {
        self.index.div_euclid(4)
    }

    /// The quarter number, 1..=4.
    pub fn q(self) -> u8 {
        (self.index.rem_euclid(4) + 1) as u8
    }

    /// The quarter containing `date`.
    pub fn from_date(date: NaiveDate) -> Quarter {
        Quarter {
            index: date.year() * 4 + (date.month0() / 3) as i32,
        }
    }

    /// The quarter `n` quarters after this one (before it if `n` is negative).
    pub fn plus(self, n: i32) -> Quarter {
        Quarter {
            index: self.index + n,
        }
    }

    /// How many quarters after `earlier` this one is (negative if before
    /// it): the `n` with `earlier.plus(n) == self`.
    pub fn quarters_since(self, earlier: Quarter) -> i32 {
        self.index - earlier.index
    }

    /// The next quarter (`2019Q4` → `2020Q1`).
    pub fn next(self) -> Quarter {
        self.plus(1)
    }

    /// The previous quarter (`2020Q1` → `2019Q4`).
    pub fn prev(self) -> Quarter {
        self.plus(-1)
    }

    /// The same quarter one year earlier, the base of year-on-year rates.
    pub fn year_ago(self) -> Quarter {
        self.plus(-4)
    }

    /// The first day of the quarter.
    pub fn first_day(self) -> NaiveDate {
        let month = u32::from(self.q() - 1) * 3 + 1;
        NaiveDate::from_ymd_opt(self.year(), month, 1).expect("valid quarter start")
    }

    /// The last day of the quarter (the reporting date `period_end`).
    pub fn last_day(self) -> NaiveDate {
        self.next()
            .first_day()
            .pred_opt()
            .expect("valid quarter end")
    }

    /// Whether `date` falls inside this quarter.
    pub fn contains(self, date: NaiveDate) -> bool {
        Quarter::from_date(date) == self
    }

    /// Every quarter from `self` to `last`, both included (empty if `last` is earlier).
    pub fn through(self, last: Quarter) -> impl Iterator<Item = Quarter> {
        (self.index..=last.index).map(|index| Quarter { index })
    }
}

impl fmt::Display for Quarter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}Q{}", self.year(), self.q())
    }
}

impl FromStr for Quarter {
    type Err = QuarterParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| QuarterParseError {
            input: s.to_string(),
            reason,
        };
        let bytes = s.as_bytes();
        if bytes.len() != 6 {
            return Err(err("wrong length"));
        }
        if !bytes[..4].iter().all(u8::is_ascii_digit) {
            return Err(err("the year must be four digits"));
        }
        if bytes[4] != b'Q' {
            return Err(err("the fifth character must be 'Q'"));
        }
        let year: i32 = s[..4].parse().map_err(|_| err("bad year"))?;
        let q = match bytes[5] {
            b @ b'1'..=b'4' => b - b'0',
            _ => return Err(err("the quarter number must be 1, 2, 3 or 4")),
        };
        Quarter::new(year, q).ok_or_else(|| err("the year must be 0001..=9999"))
    }
}

impl serde::Serialize for Quarter {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Quarter {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quarter {
        s.parse().unwrap()
    }

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap()
    }

    #[test]
    fn arithmetic_crosses_years() {
        assert_eq!(q("2019Q4").next(), q("2020Q1"));
        assert_eq!(q("2020Q1").prev(), q("2019Q4"));
        assert_eq!(q("2019Q3").year_ago(), q("2018Q3"));
        assert_eq!(q("2017Q1").plus(11), q("2019Q4"));
        assert_eq!(q("2017Q1").through(q("2019Q4")).count(), 12);
        assert_eq!(q("2019Q4").through(q("2019Q1")).count(), 0);
        assert_eq!(q("2019Q4").quarters_since(q("2017Q1")), 11);
        assert_eq!(q("2017Q1").quarters_since(q("2019Q4")), -11);
    }

    #[test]
    fn dates_map_to_quarters_and_back() {
        assert_eq!(Quarter::from_date(d(2019, 9, 30)), q("2019Q3"));
        assert_eq!(Quarter::from_date(d(2019, 10, 1)), q("2019Q4"));
        assert_eq!(Quarter::from_date(d(2020, 1, 1)), q("2020Q1"));
        assert_eq!(q("2019Q3").first_day(), d(2019, 7, 1));
        assert_eq!(q("2019Q3").last_day(), d(2019, 9, 30));
        assert_eq!(q("2020Q1").last_day(), d(2020, 3, 31));
        assert_eq!(q("2019Q4").last_day(), d(2019, 12, 31));
        assert_eq!(q("2019Q2").last_day(), d(2019, 6, 30));
        assert!(q("2019Q2").contains(d(2019, 4, 1)));
        assert!(!q("2019Q2").contains(d(2019, 7, 1)));
    }

    #[test]
    fn display_round_trips() {
        for s in ["2017Q1", "2019Q4", "0001Q1", "9999Q4"] {
            assert_eq!(q(s).to_string(), s);
        }
    }

    #[test]
    fn parse_errors_say_what_is_wrong() {
        let cases = [
            ("2019Q5", "the quarter number must be 1, 2, 3 or 4"),
            ("2019q3", "the fifth character must be 'Q'"),
            ("19Q3", "wrong length"),
            ("20X9Q3", "the year must be four digits"),
            ("2019-Q3", "wrong length"),
            ("0000Q1", "the year must be 0001..=9999"),
        ];
        for (input, reason) in cases {
            let err = input.parse::<Quarter>().unwrap_err();
            assert_eq!(err.reason, reason, "{input}");
            assert!(err.to_string().contains("expected YYYYQn"), "{err}");
        }
    }
}
