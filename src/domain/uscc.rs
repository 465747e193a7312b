//! GB 32100-2015 unified social credit code (统一社会信用代码).
//!
//! 18 characters from `0123456789ABCDEFGHJKLMNPQRTUWXY` (no I, O, S, V, Z).
//! The 18th is a check character over the first 17:
//! `c18 = (31 − (Σ cᵢ·wᵢ mod 31)) mod 31` with `wᵢ = 3^(i−1) mod 31`.

use std::fmt;

/// The 31 characters a USCC may contain, in value order (`0` = 0 … `Y` = 30).
pub const ALPHABET: &[u8; 31] = b"0123456789ABCDEFGHJKLMNPQRTUWXY";

/// Weights 3^(i−1) mod 31 for positions 1..=17.
const WEIGHTS: [u32; 17] = [
    1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28,
];

/// Why a string is not a valid USCC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsccError {
    /// The code does not have exactly 18 characters.
    Length {
        /// Number of characters found.
        found: usize,
    },
    /// A character outside the GB 32100 alphabet.
    Character {
        /// 1-based position of the character.
        position: usize,
        /// The offending character.
        found: char,
    },
    /// The check character does not match the first 17.
    CheckCharacter {
        /// The check character present in the code.
        found: char,
        /// The check character the first 17 characters call for.
        expected: char,
    },
}

impl fmt::Display for UsccError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UsccError::Length { found } => {
                write!(f, "USCC must have 18 characters, found {found}")
            }
            UsccError::Character { position, found } => write!(
                f,
                "USCC character {position} is {found:?}, expected one of 0-9 A-H J-N P-R T U W-Y"
            ),
            UsccError::CheckCharacter { found, expected } => write!(
                f,
                "USCC check character is {found:?}, the first 17 characters call for {expected:?}"
            ),
        }
    }
}

impl std::error::Error for UsccError {}

fn value_of(c: char) -> Option<u32> {
    if !c.is_ascii() {
        return None;
    }
    ALPHABET
        .iter()
        .position(|&a| a == c as u8)
        .map(|p| p as u32)
}

/// Computes the check character for the first 17 characters of a code.
///
/// Returns `None` if `body` is not exactly 17 characters of the USCC alphabet.
pub fn check_character(body: &str) -> Option<char> {
    let mut sum = 0u32;
    let mut n = 0;
    for (i, c) in body.chars().enumerate() {
        if i >= 17 {
            return None;
        }
        sum += value_of(c)? * WEIGHTS[i];
        n += 1;
    }
    if n != 17 {
        return None;
    }
    let check = (31 - sum % 31) % 31;
    Some(ALPHABET[check as usize] as char)
}

/// The value of an ASCII byte in the USCC alphabet.
const fn byte_value(b: u8) -> Option<u32> {
    let mut i = 0;
    while i < 31 {
        if ALPHABET[i] == b {
            return Some(i as u32);
        }
        i += 1;
    }
    None
}

/// Validates a USCC: length, alphabet and check character.
pub fn validate(code: &str) -> Result<(), UsccError> {
    // Fast path, no allocation: 18 ASCII characters, all in the alphabet.
    let b = code.as_bytes();
    if b.len() == 18 {
        let mut sum = 0u32;
        let mut ok = true;
        for (i, &c) in b[..17].iter().enumerate() {
            match byte_value(c) {
                Some(v) => sum += v * WEIGHTS[i],
                None => {
                    ok = false;
                    break;
                }
            }
        }
        if ok && byte_value(b[17]).is_some() {
            let expected = ALPHABET[((31 - sum % 31) % 31) as usize];
            if b[17] == expected {
                return Ok(());
            }
            return Err(UsccError::CheckCharacter {
                found: b[17] as char,
                expected: expected as char,
            });
        }
    }
    let chars: Vec<char> = code.chars().collect();
    if chars.len() != 18 {
        return Err(UsccError::Length { found: chars.len() });
    }
    for (i, &c) in chars.iter().enumerate() {
        if value_of(c).is_none() {
            return Err(UsccError::Character {
                position: i + 1,
                found: c,
            });
        }
    }
    let body: String = chars[..17].iter().collect();
    let expected = check_character(&body).expect("17 valid characters");
    if chars[17] != expected {
        return Err(UsccError::CheckCharacter {
            found: chars[17],
            expected,
        });
    }
    Ok(())
}

/// True if `code` is a valid USCC.
pub fn is_valid(code: &str) -> bool {
    validate(code).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_powers_of_three_mod_31() {
        let mut w = 1u32;
        for expected in WEIGHTS {
            assert_eq!(w, expected);
            w = w * 3 % 31;
        }
    }

    #[test]
    fn worked_example_from_reference_note() {
        // 91500000202833449G: weighted sum 759; 759 mod 31 = 15; 31 - 15 = 16 = 'G'.
        assert_eq!(check_character("91500000202833449"), Some('G'));
        assert!(is_valid("91500000202833449G"));
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert_eq!(
            validate("91500000202833449"),
            Err(UsccError::Length { found: 17 })
        );
        assert_eq!(
            validate("91500000202833449I"),
            Err(UsccError::Character {
                position: 18,
                found: 'I'
            })
        );
        assert_eq!(
            validate("915000002032881838"),
            Err(UsccError::CheckCharacter {
                found: '8',
                expected: 'J'
            })
        );
    }
}
