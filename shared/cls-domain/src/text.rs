//! Shared checks for text-shaped values, and the accessor boilerplate of string newtypes.
//!
//! Two families of text exist in CLS: *identifiers* (slugs, codes, prefixes) that are matched
//! byte-for-byte and so are checked strictly, with no trimming or case folding, because a
//! silently rewritten identifier would name a different thing; and *labels* (brand, product and
//! API key names) that people type, which are trimmed and only need to be printable.

use crate::error::FieldError;

/// Checks a strict identifier: `min..=max` ASCII bytes, each accepted by `allowed`.
/// Nothing is trimmed or case-folded; `rule` is the sentence reported on any failure, because
/// a caller fixing one problem should see the whole rule, not one symptom at a time.
pub(crate) fn strict_ascii(
    s: &str,
    min: usize,
    max: usize,
    allowed: impl Fn(u8) -> bool,
    rule: &str,
) -> Result<String, FieldError> {
    // `len()` counts bytes; every accepted byte is ASCII, so that equals the character count.
    if (min..=max).contains(&s.len()) && s.bytes().all(allowed) {
        Ok(s.to_owned())
    } else {
        Err(FieldError::new(rule))
    }
}

/// Checks a human label: trimmed, then 1..=`max` characters (Unicode scalar values, not
/// bytes, so a non-Latin name is not penalised), with no control characters, which would
/// corrupt logs, CSV exports and terminal output.
pub(crate) fn label(s: &str, max: usize) -> Result<String, FieldError> {
    let trimmed = s.trim();
    if trimmed.is_empty() {
        return Err(FieldError::new("must not be empty"));
    }
    if trimmed.chars().count() > max {
        return Err(FieldError::new(format!("must be at most {max} characters")));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(FieldError::new("must not contain control characters"));
    }
    Ok(trimmed.to_owned())
}

/// Implements the read-only accessors every non-secret string newtype shares:
/// `as_str`, `into_inner`, `AsRef<str>`, `Display` (the value itself) and `FromStr` (= `parse`).
/// Secrets (`LicenseKey`, `ApiKeySecret`) deliberately do not use this.
macro_rules! text_newtype {
    ($ty:ident) => {
        impl $ty {
            /// The value as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The value as an owned `String`.
            pub fn into_inner(self) -> String {
                self.0
            }
        }

        impl ::core::convert::AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl ::core::fmt::Display for $ty {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl ::core::str::FromStr for $ty {
            type Err = $crate::error::FieldError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }
    };
}
pub(crate) use text_newtype;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_table() {
        let cases: &[(&str, Result<&str, &str>)] = &[
            ("Rank Math", Ok("Rank Math")),
            ("  padded\t", Ok("padded")),
            ("Ünïcödé", Ok("Ünïcödé")),
            ("", Err("must not be empty")),
            ("   ", Err("must not be empty")),
            ("a\u{0}b", Err("must not contain control characters")),
            ("a\nb", Err("must not contain control characters")),
            ("abcdefghijk", Err("must be at most 10 characters")),
        ];
        for (input, want) in cases {
            let got = label(input, 10).map_err(|e| e.message);
            let want = want.map(str::to_owned).map_err(str::to_owned);
            assert_eq!(got, want, "input {input:?}");
        }
    }

    #[test]
    fn label_counts_characters_not_bytes() {
        // Five two-byte characters fit a five-character limit.
        assert_eq!(label("ééééé", 5).unwrap(), "ééééé");
    }

    #[test]
    fn strict_ascii_does_not_trim() {
        let digits = |b: u8| b.is_ascii_digit();
        assert!(strict_ascii("123", 1, 3, digits, "rule").is_ok());
        assert!(strict_ascii(" 12", 1, 3, digits, "rule").is_err());
        assert!(strict_ascii("", 1, 3, digits, "rule").is_err());
        assert!(strict_ascii("1234", 1, 3, digits, "rule").is_err());
    }
}
