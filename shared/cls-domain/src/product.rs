//! Products and their license defaults: code, name, seat limit and duration (SPEC §2).
//!
//! `SeatLimit` and `DurationDays` model only the *bounded* case. "Unlimited seats" and
//! "perpetual" are `None` in an `Option<SeatLimit>` / `Option<DurationDays>` at the use site,
//! so no sentinel number (0, -1) can leak into arithmetic.

use crate::error::FieldError;
use crate::text::{self, text_newtype};
use std::fmt;

/// Seat limit a product grants when the brand leaves it out (SPEC §2: absent → 1).
pub const DEFAULT_SEAT_LIMIT: u32 = 1;

/// License duration a product grants when the brand leaves it out (SPEC §2: absent → 365).
pub const DEFAULT_DURATION_DAYS: u32 = 365;

/// A product's identifier within its brand, e.g. `content-ai`: 1-64 characters of `a-z`,
/// `0-9` and `-`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProductCode(String);

impl ProductCode {
    /// Accepts exactly `[a-z0-9-]{1,64}`; no trimming, no lower-casing.
    pub fn parse(s: &str) -> Result<Self, FieldError> {
        text::strict_ascii(
            s,
            1,
            64,
            |b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-',
            "must be 1-64 characters of a-z, 0-9 and '-'",
        )
        .map(Self)
    }
}
text_newtype!(ProductCode);

/// A product's human name: trimmed, 1-200 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProductName(String);

impl ProductName {
    /// Longest accepted name, in characters.
    pub const MAX_CHARS: usize = 200;

    /// Trims surrounding whitespace, then checks length and characters.
    pub fn parse(s: &str) -> Result<Self, FieldError> {
        text::label(s, Self::MAX_CHARS).map(Self)
    }
}
text_newtype!(ProductName);

/// A bounded number of seats (concurrent active activations): 1 to 1,000,000.
///
/// The upper bound is not a business rule but a sanity bound: it keeps the value far inside
/// every integer type the store and the wire use, and catches a unit mistake early.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeatLimit(u32);

impl SeatLimit {
    /// Largest accepted limit.
    pub const MAX: u32 = 1_000_000;

    /// Accepts `1..=1_000_000`. Takes `i64` because that is what JSON numbers and `BIGINT`
    /// columns decode to, so the range check happens here instead of in a lossy cast.
    pub fn new(n: i64) -> Result<Self, FieldError> {
        bounded(n, Self::MAX).map(Self)
    }

    /// The limit.
    pub fn get(&self) -> u32 {
        self.0
    }
}

impl Default for SeatLimit {
    /// [`DEFAULT_SEAT_LIMIT`].
    fn default() -> Self {
        Self(DEFAULT_SEAT_LIMIT)
    }
}

impl fmt::Display for SeatLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A bounded license duration in days: 1 to 36,500 (a century, the sanity bound).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DurationDays(u32);

impl DurationDays {
    /// Largest accepted duration.
    pub const MAX: u32 = 36_500;

    /// Accepts `1..=36_500`.
    pub fn new(n: i64) -> Result<Self, FieldError> {
        bounded(n, Self::MAX).map(Self)
    }

    /// The number of days.
    pub fn get(&self) -> u32 {
        self.0
    }

    /// The duration as a `chrono` delta, to add to a caller-supplied `now`.
    pub fn as_time_delta(&self) -> chrono::TimeDelta {
        chrono::TimeDelta::days(i64::from(self.0))
    }
}

impl Default for DurationDays {
    /// [`DEFAULT_DURATION_DAYS`].
    fn default() -> Self {
        Self(DEFAULT_DURATION_DAYS)
    }
}

impl fmt::Display for DurationDays {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// `1..=max` as a `u32`, with the rule as the error.
fn bounded(n: i64, max: u32) -> Result<u32, FieldError> {
    match u32::try_from(n) {
        Ok(v) if (1..=max).contains(&v) => Ok(v),
        _ => Err(FieldError::new(format!(
            "must be an integer from 1 to {max}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn code_table() {
        let cases = [
            ("rankmath-pro", true),
            ("a", true),
            ("0", true),
            (&*"a".repeat(64), true),
            (&*"a".repeat(65), false),
            ("", false),
            ("Pro", false),
            ("pro ", false),
            ("pro.plugin", false),
        ];
        for (input, ok) in cases {
            assert_eq!(ProductCode::parse(input).is_ok(), ok, "input {input:?}");
        }
    }

    #[test]
    fn seat_limit_table() {
        let cases: &[(i64, Option<u32>)] = &[
            (1, Some(1)),
            (5, Some(5)),
            (1_000_000, Some(1_000_000)),
            (1_000_001, None),
            (0, None),
            (-1, None),
            (i64::MAX, None),
            (i64::MIN, None),
            (i64::from(u32::MAX) + 1, None),
        ];
        for &(input, want) in cases {
            assert_eq!(
                SeatLimit::new(input).ok().map(|s| s.get()),
                want,
                "input {input}"
            );
        }
        assert_eq!(
            SeatLimit::new(0).unwrap_err().message,
            "must be an integer from 1 to 1000000"
        );
    }

    #[test]
    fn duration_table() {
        let cases: &[(i64, Option<u32>)] = &[
            (1, Some(1)),
            (365, Some(365)),
            (36_500, Some(36_500)),
            (36_501, None),
            (0, None),
            (-365, None),
        ];
        for &(input, want) in cases {
            assert_eq!(
                DurationDays::new(input).ok().map(|d| d.get()),
                want,
                "input {input}"
            );
        }
    }

    #[test]
    fn defaults_match_the_spec() {
        assert_eq!(SeatLimit::default().get(), 1);
        assert_eq!(DurationDays::default().get(), 365);
        assert_eq!(
            DurationDays::default().as_time_delta(),
            chrono::TimeDelta::days(365)
        );
        assert_eq!(SeatLimit::new(3).unwrap().to_string(), "3");
    }

    #[test]
    fn product_name_is_trimmed() {
        assert_eq!(
            ProductName::parse(" Content AI ").unwrap().as_str(),
            "Content AI"
        );
        assert!(ProductName::parse(" ").is_err());
    }

    proptest! {
        #[test]
        fn seat_limit_accepts_exactly_its_range(n in any::<i64>()) {
            prop_assert_eq!(SeatLimit::new(n).is_ok(), (1..=1_000_000).contains(&n));
        }

        #[test]
        fn duration_accepts_exactly_its_range(n in -100i64..40_000) {
            prop_assert_eq!(DurationDays::new(n).is_ok(), (1..=36_500).contains(&n));
        }

        #[test]
        fn any_code_shaped_string_parses_unchanged(s in "[a-z0-9-]{1,64}") {
            let code = ProductCode::parse(&s).unwrap();
            prop_assert_eq!(code.as_str(), s.as_str());
        }
    }
}
