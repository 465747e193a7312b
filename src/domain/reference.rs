//! Reference data: Chongqing's district codes (GB/T 2260) and the industry
//! divisions of GB/T 4754-2017, embedded from `schemas/reference/*.csv`.

use std::sync::OnceLock;

/// `schemas/reference/districts.csv`: code, name, kind.
pub const DISTRICTS_CSV: &str = include_str!("../../schemas/reference/districts.csv");
/// `schemas/reference/industries.csv`: division, section, name (sections B, C, D).
pub const INDUSTRIES_CSV: &str = include_str!("../../schemas/reference/industries.csv");

/// One of Chongqing's 38 districts and counties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct District {
    /// Six-digit GB/T 2260 code, e.g. `500112`.
    pub code: String,
    /// Chinese name, e.g. `渝北区`.
    pub name: String,
    /// `district` (区) or `county` (县).
    pub kind: String,
}

/// An industrial division (two-digit GB/T 4754-2017 code) in sections B–D.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Division {
    /// Two-digit division code, e.g. `36`.
    pub code: String,
    /// Section letter: `B` mining, `C` manufacturing, `D` utilities.
    pub section: char,
    /// Chinese name, e.g. `汽车制造业`.
    pub name: String,
}

fn rows(csv: &str) -> impl Iterator<Item = Vec<&str>> {
    csv.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split(',').map(str::trim).collect())
}

/// Chongqing's 38 districts and counties.
pub fn districts() -> &'static [District] {
    static CELL: OnceLock<Vec<District>> = OnceLock::new();
    CELL.get_or_init(|| {
        rows(DISTRICTS_CSV)
            .map(|r| District {
                code: r[0].to_string(),
                name: r[1].to_string(),
                kind: r[2].to_string(),
            })
            .collect()
    })
}

/// The industrial divisions 06–46 with their names.
pub fn industrial_divisions() -> &'static [Division] {
    static CELL: OnceLock<Vec<Division>> = OnceLock::new();
    CELL.get_or_init(|| {
        rows(INDUSTRIES_CSV)
            .map(|r| Division {
                code: r[0].to_string(),
                section: r[1].chars().next().unwrap_or('?'),
                name: r[2].to_string(),
            })
            .collect()
    })
}

/// The district with this code, if it is one of Chongqing's 38.
pub fn district(code: &str) -> Option<&'static District> {
    districts().iter().find(|d| d.code == code)
}

/// Why a string is not a Chongqing district code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "district code {0:?} is not one of Chongqing's 38 GB/T 2260 codes (500101..500156, 500229..500243)"
)]
pub struct DistrictError(pub String);

/// Validates a Chongqing district code.
pub fn validate_district(code: &str) -> Result<(), DistrictError> {
    district(code)
        .map(|_| ())
        .ok_or_else(|| DistrictError(code.to_string()))
}

/// Why a string is not a GB/T 4754-2017 industry class.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "industry code {0:?} is not a GB/T 4754-2017 class: expected 4 digits whose first two are a division 01..97"
)]
pub struct IndustryError(pub String);

/// The GB/T 4754-2017 section letter of a division (01..=97).
pub fn section_of(division: u8) -> Option<char> {
    Some(match division {
        1..=5 => 'A',
        6..=12 => 'B',
        13..=43 => 'C',
        44..=46 => 'D',
        47..=50 => 'E',
        51..=52 => 'F',
        53..=60 => 'G',
        61..=62 => 'H',
        63..=65 => 'I',
        66..=69 => 'J',
        70 => 'K',
        71..=72 => 'L',
        73..=75 => 'M',
        76..=79 => 'N',
        80..=82 => 'O',
        83 => 'P',
        84..=85 => 'Q',
        86..=90 => 'R',
        91..=96 => 'S',
        97 => 'T',
        _ => return None,
    })
}

/// The division (first two digits) of a 4-digit industry class, validated.
pub fn division_of(class: &str) -> Result<u8, IndustryError> {
    let err = || IndustryError(class.to_string());
    let b = class.as_bytes();
    if b.len() != 4 || !b.iter().all(u8::is_ascii_digit) {
        return Err(err());
    }
    let division = (b[0] - b'0') * 10 + (b[1] - b'0');
    section_of(division).ok_or_else(err)?;
    Ok(division)
}

/// Validates a 4-digit industry class code.
pub fn validate_industry(class: &str) -> Result<(), IndustryError> {
    division_of(class).map(|_| ())
}

/// Industry (工业): divisions 06–46, sections B, C and D.
pub fn is_industry_division(division: u8) -> bool {
    (6..=46).contains(&division)
}

/// Manufacturing (制造业): divisions 13–43, section C.
pub fn is_manufacturing_division(division: u8) -> bool {
    (13..=43).contains(&division)
}

/// Whether the 4-digit class belongs to industry (工业).
pub fn is_industry(class: &str) -> bool {
    division_of(class).is_ok_and(is_industry_division)
}

/// Whether the 4-digit class belongs to manufacturing (制造业).
pub fn is_manufacturing(class: &str) -> bool {
    division_of(class).is_ok_and(is_manufacturing_division)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thirty_eight_districts() {
        assert_eq!(districts().len(), 38);
        assert_eq!(district("500112").unwrap().name, "渝北区");
        assert!(validate_district("500243").is_ok());
        // 500225 is a pre-2011 code (old 大足县), not one of today's 38.
        assert!(validate_district("500225").is_err());
        assert!(validate_district("510101").is_err());
        assert!(validate_district("").is_err());
    }

    #[test]
    fn divisions_match_reference_csv() {
        let divs = industrial_divisions();
        assert_eq!(divs.len(), 41, "06..=46");
        for d in divs {
            let n: u8 = d.code.parse().unwrap();
            assert!(is_industry_division(n));
            assert_eq!(section_of(n), Some(d.section), "{}", d.code);
            assert_eq!(is_manufacturing_division(n), d.section == 'C');
        }
    }

    #[test]
    fn class_to_division_to_industry() {
        assert_eq!(division_of("3610"), Ok(36));
        assert!(is_industry("3610") && is_manufacturing("3610"));
        assert!(
            is_industry("0610") && !is_manufacturing("0610"),
            "coal mining"
        );
        assert!(is_industry("4411") && !is_manufacturing("4411"), "power");
        assert!(is_manufacturing("1310") && is_manufacturing("4390"));
        assert!(!is_industry("5110"), "wholesale");
        assert!(!is_industry("0511"), "agricultural services");
        assert!(validate_industry("5110").is_ok());
        for bad in ["361", "36100", "36A0", "0010", "9810", ""] {
            assert!(validate_industry(bad).is_err(), "{bad}");
        }
    }
}
