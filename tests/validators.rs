//! The domain validators against the real reference data in `tests/data/`.

use ironlake::domain::uscc::{self, ALPHABET};

fn vectors() -> Vec<(String, bool, String)> {
    let text = include_str!("data/uscc_vectors.csv");
    text.lines()
        .skip(1)
        .filter(|l| !l.is_empty())
        .map(|l| {
            let mut parts = l.splitn(3, ',');
            let code = parts.next().unwrap().to_string();
            let expect = parts.next().unwrap() == "valid";
            let note = parts.next().unwrap_or_default().to_string();
            (code, expect, note)
        })
        .collect()
}

#[test]
fn every_reference_vector_gives_the_stated_answer() {
    let v = vectors();
    assert_eq!(v.len(), 20);
    for (code, expect, note) in v {
        assert_eq!(uscc::is_valid(&code), expect, "{code} ({note})");
    }
}

#[test]
fn reference_notes_name_the_correct_check_character() {
    // "915000002032881838 … (a correct check character would be J)"
    assert_eq!(uscc::check_character("91500000203288183"), Some('J'));
    assert_eq!(uscc::check_character("91500000MA5U6K8E2"), Some('N'));
}

/// Changing any one character of a valid code, to any other character of the
/// alphabet, makes it invalid (checked exhaustively: 18 positions × 30 values).
#[test]
fn any_single_character_change_invalidates_a_valid_code() {
    let valid: Vec<String> = vectors().into_iter().filter(|v| v.1).map(|v| v.0).collect();
    assert!(!valid.is_empty());
    let mut tried = 0;
    for code in valid {
        let bytes = code.as_bytes();
        for pos in 0..18 {
            for &c in ALPHABET.iter() {
                if c == bytes[pos] {
                    continue;
                }
                let mut changed = bytes.to_vec();
                changed[pos] = c;
                let changed = String::from_utf8(changed).unwrap();
                assert!(
                    !uscc::is_valid(&changed),
                    "{code} → {changed} still validates"
                );
                tried += 1;
            }
        }
    }
    assert_eq!(tried, 14 * 18 * 30);
}
