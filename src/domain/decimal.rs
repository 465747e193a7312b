//! Exact decimal text → `Decimal128` values, never rounded or truncated.
//!
//! A value with more fractional digits than the column's scale, or more
//! digits than its precision, is an error: the warehouse never silently
//! changes a number a partner sent.

use std::fmt;

/// Why a text is not an exact `Decimal128(precision, scale)` value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecimalError {
    /// Not a plain decimal number (`-1234.56`); exponents, spaces, `NaN` are refused.
    #[error(
        "{0:?} is not a decimal number (expected digits with an optional sign and point, e.g. -1234.56)"
    )]
    Syntax(String),
    /// More fractional digits than the scale allows.
    #[error(
        "{text:?} has {found} decimal places, more than the {scale} allowed; it would have to be rounded"
    )]
    Scale {
        /// The text as given.
        text: String,
        /// Fractional digits found (after dropping trailing zeros).
        found: usize,
        /// Fractional digits allowed.
        scale: u8,
    },
    /// More integer digits than precision − scale allows.
    #[error(
        "{text:?} does not fit Decimal128({precision},{scale}): at most {max} digits before the point"
    )]
    Precision {
        /// The text as given.
        text: String,
        /// Column precision.
        precision: u8,
        /// Column scale.
        scale: u8,
        /// Integer digits allowed.
        max: u8,
    },
}

/// Parses `text` as an exact `Decimal128(precision, scale)`; returns the unscaled value.
///
/// Accepts an optional sign, digits, and an optional point with digits.
/// Trailing zeros past the scale are exact and accepted (`1.500` at scale 2).
pub fn parse_decimal(text: &str, precision: u8, scale: u8) -> Result<i128, DecimalError> {
    let syntax = || DecimalError::Syntax(text.to_string());
    let bytes = text.as_bytes();
    let (negative, body) = match bytes.first() {
        Some(b'-') => (true, &bytes[1..]),
        Some(b'+') => (false, &bytes[1..]),
        _ => (false, bytes),
    };
    if let Some(value) = parse_short(body, precision, scale) {
        return Ok(if negative { -value } else { value });
    }
    // One pass: digits, at most one point (the first splits the parts).
    let mut point = None;
    for (i, &b) in body.iter().enumerate() {
        match b {
            b'0'..=b'9' => {}
            b'.' if point.is_none() => point = Some(i),
            _ => return Err(syntax()),
        }
    }
    let (int_part, frac_part) = match point {
        Some(p) => (&body[..p], &body[p + 1..]),
        None => (body, &body[body.len()..]),
    };
    if int_part.is_empty() && frac_part.is_empty() {
        return Err(syntax());
    }
    let frac_len = frac_part
        .iter()
        .rposition(|&b| b != b'0')
        .map_or(0, |p| p + 1);
    let frac = &frac_part[..frac_len];
    if frac.len() > usize::from(scale) {
        return Err(DecimalError::Scale {
            text: text.to_string(),
            found: frac.len(),
            scale,
        });
    }
    let int_start = int_part
        .iter()
        .position(|&b| b != b'0')
        .unwrap_or(int_part.len());
    let int = &int_part[int_start..];
    let max_int = precision.saturating_sub(scale);
    if int.len() > usize::from(max_int) {
        return Err(DecimalError::Precision {
            text: text.to_string(),
            precision,
            scale,
            max: max_int,
        });
    }
    let digits = int.iter().chain(frac);
    let value: i128 = if int.len() + frac.len() <= 18 {
        // Fits in 64 bits: the common case, without 128-bit multiplies.
        i128::from(digits.fold(0u64, |v, &b| v * 10 + u64::from(b - b'0')))
    } else {
        digits.fold(0i128, |v, &b| v * 10 + i128::from(b - b'0'))
    };
    let value = value * 10i128.pow(u32::from(scale) - frac.len() as u32);
    Ok(if negative { -value } else { value })
}

/// Powers of ten up to the largest `Decimal128` scale.
const POW10: [i128; 39] = {
    let mut p = [1i128; 39];
    let mut i = 1;
    while i < 39 {
        p[i] = p[i - 1] * 10;
        i += 1;
    }
    p
};

/// The common case of [`parse_decimal`]'s `body` (the text after its sign)
/// in one pass over its bytes: at most 19 of them, so the digits fit in a
/// `u64`, and a valid value of the column. `None` for anything else, which
/// the general path then reads (and explains, if it is wrong).
fn parse_short(body: &[u8], precision: u8, scale: u8) -> Option<i128> {
    if body.len() > 19 || precision > 38 || scale > precision {
        return None;
    }
    let digit = |i: usize| {
        body.get(i)
            .map(|b| b.wrapping_sub(b'0'))
            .filter(|&d| d < 10)
    };
    let mut acc = 0u64;
    let mut i = 0;
    while let Some(d) = digit(i) {
        acc = acc * 10 + u64::from(d);
        i += 1;
    }
    let int_len = i;
    // Its integer part has more digits than allowed (leading zeros aside).
    let max_int = usize::from(precision - scale);
    if max_int < 19 && acc >= POW10[max_int] as u64 {
        return None;
    }
    let (frac_len, frac_zeros) = match body.get(i) {
        None => (0, 0),
        Some(b'.') => {
            i += 1;
            let start = i;
            // Where the fraction's last digit that is not zero ends.
            let mut end = start;
            while let Some(d) = digit(i) {
                acc = acc * 10 + u64::from(d);
                i += 1;
                end = if d == 0 { end } else { i };
            }
            (i - start, i - end)
        }
        Some(_) => return None,
    };
    let scale = usize::from(scale);
    if i != body.len() || int_len + frac_len == 0 || frac_len - frac_zeros > scale {
        return None;
    }
    // Below 10^precision, so it fits: scaled up to the column's scale, or
    // down by the zeros past it.
    Some(if frac_len <= scale {
        i128::from(acc) * POW10[scale - frac_len]
    } else {
        // (At most 18 zeros: a u64 divides.)
        i128::from(acc / POW10[frac_len - scale] as u64)
    })
}

/// Formats an unscaled `Decimal128` value with `scale` fractional digits.
pub fn format_decimal(value: i128, scale: u8) -> String {
    DecimalDisplay { value, scale }.to_string()
}

struct DecimalDisplay {
    value: i128,
    scale: u8,
}

impl fmt::Display for DecimalDisplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.value < 0 { "-" } else { "" };
        let abs = self.value.unsigned_abs();
        if self.scale == 0 {
            return write!(f, "{sign}{abs}");
        }
        let pow = 10u128.pow(u32::from(self.scale));
        write!(
            f,
            "{sign}{}.{:0width$}",
            abs / pow,
            abs % pow,
            width = usize::from(self.scale)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_values_parse() {
        assert_eq!(parse_decimal("1234.56", 18, 2), Ok(123456));
        assert_eq!(parse_decimal("-0.5", 18, 2), Ok(-50));
        assert_eq!(parse_decimal("4.35", 9, 4), Ok(43500));
        assert_eq!(parse_decimal("7", 18, 2), Ok(700));
        assert_eq!(
            parse_decimal("1.500", 18, 2),
            Ok(150),
            "trailing zeros are exact"
        );
        assert_eq!(parse_decimal(".5", 18, 2), Ok(50));
        assert_eq!(
            parse_decimal("9999999999999999.99", 18, 2),
            Ok(999999999999999999)
        );
    }

    #[test]
    fn inexact_values_are_refused_not_rounded() {
        assert!(matches!(
            parse_decimal("1.005", 18, 2),
            Err(DecimalError::Scale { found: 3, .. })
        ));
        assert!(matches!(
            parse_decimal("10000000000000000", 18, 2),
            Err(DecimalError::Precision { max: 16, .. })
        ));
        for bad in ["", "-", ".", "1e5", "1,000.00", " 1", "NaN", "1.2.3", "--1"] {
            assert!(
                matches!(parse_decimal(bad, 18, 2), Err(DecimalError::Syntax(_))),
                "{bad:?}"
            );
        }
    }

    /// The plain reading of the rules, kept as the oracle of the one-pass parser.
    fn reference(text: &str, precision: u8, scale: u8) -> Result<i128, DecimalError> {
        let syntax = || DecimalError::Syntax(text.to_string());
        let (negative, body) = match text.as_bytes().first() {
            Some(b'-') => (true, &text[1..]),
            Some(b'+') => (false, &text[1..]),
            _ => (false, text),
        };
        let (int_part, frac_part) = body.split_once('.').unwrap_or((body, ""));
        let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if (int_part.is_empty() && frac_part.is_empty()) || !digits(int_part) || !digits(frac_part)
        {
            return Err(syntax());
        }
        let frac = frac_part.trim_end_matches('0');
        if frac.len() > usize::from(scale) {
            let found = frac.len();
            return Err(DecimalError::Scale {
                text: text.into(),
                found,
                scale,
            });
        }
        let int = int_part.trim_start_matches('0');
        let max = precision.saturating_sub(scale);
        if int.len() > usize::from(max) {
            return Err(DecimalError::Precision {
                text: text.into(),
                precision,
                scale,
                max,
            });
        }
        let mut value: i128 = 0;
        for b in int.bytes().chain(frac.bytes()) {
            value = value * 10 + i128::from(b - b'0');
        }
        for _ in frac.len()..usize::from(scale) {
            value *= 10;
        }
        Ok(if negative { -value } else { value })
    }

    proptest::proptest! {
        #[test]
        fn one_pass_parser_agrees_with_the_plain_rules(
            text in "[-+]?[0-9]{0,24}(\\.[0-9]{0,24})?[.0-9a]?",
            precision in 1u8..=38,
            scale in 0u8..=12,
        ) {
            let scale = scale.min(precision);
            proptest::prop_assert_eq!(parse_decimal(&text, precision, scale), reference(&text, precision, scale));
        }
    }

    #[test]
    fn formatting_round_trips() {
        for (text, scale) in [("1234.56", 2), ("-0.05", 2), ("4.3500", 4), ("12", 0)] {
            let v = parse_decimal(text, 38, scale).unwrap();
            assert_eq!(format_decimal(v, scale), text);
        }
    }
}
