//! A license's status and what it effectively is at a given moment (SPEC §2 "Effective status").

use std::fmt;

use chrono::{DateTime, Utc};

use crate::error::FieldError;

/// The status stored on a license.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LicenseStatus {
    /// Grants its seats (unless its expiry has passed: then it is effectively expired).
    Valid,
    /// Held back by the brand; resumable.
    Suspended,
    /// Terminal.
    Cancelled,
    /// Persisted by the expiry sweeper once `expires_at` has passed.
    Expired,
}

impl LicenseStatus {
    /// The status as stored and shown: `valid`, `suspended`, `cancelled`, `expired`.
    pub fn as_str(self) -> &'static str {
        match self {
            LicenseStatus::Valid => "valid",
            LicenseStatus::Suspended => "suspended",
            LicenseStatus::Cancelled => "cancelled",
            LicenseStatus::Expired => "expired",
        }
    }

    /// Parses a stored status.
    pub fn parse(s: &str) -> Result<Self, FieldError> {
        match s {
            "valid" => Ok(LicenseStatus::Valid),
            "suspended" => Ok(LicenseStatus::Suspended),
            "cancelled" => Ok(LicenseStatus::Cancelled),
            "expired" => Ok(LicenseStatus::Expired),
            _ => Err(FieldError::new("must be one of valid, suspended, cancelled, expired")),
        }
    }

    /// What the license is at `now`: a `valid` license whose `expires_at` has passed is
    /// `expired` for every purpose, even before the sweeper persists it.
    pub fn effective(self, expires_at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> LicenseStatus {
        match (self, expires_at) {
            (LicenseStatus::Valid, Some(at)) if at <= now => LicenseStatus::Expired,
            (status, _) => status,
        }
    }
}

impl fmt::Display for LicenseStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;

    #[test]
    fn a_valid_license_past_its_expiry_is_expired() {
        let now = Utc::now();
        let past = Some(now - TimeDelta::seconds(1));
        let future = Some(now + TimeDelta::days(1));
        let cases = [
            (LicenseStatus::Valid, past, LicenseStatus::Expired),
            (LicenseStatus::Valid, Some(now), LicenseStatus::Expired),
            (LicenseStatus::Valid, future, LicenseStatus::Valid),
            (LicenseStatus::Valid, None, LicenseStatus::Valid),
            (LicenseStatus::Suspended, past, LicenseStatus::Suspended),
            (LicenseStatus::Cancelled, past, LicenseStatus::Cancelled),
            (LicenseStatus::Expired, future, LicenseStatus::Expired),
        ];
        for (stored, expires_at, effective) in cases {
            assert_eq!(stored.effective(expires_at, now), effective, "{stored} with {expires_at:?}");
        }
    }

    #[test]
    fn statuses_round_trip() {
        for s in [LicenseStatus::Valid, LicenseStatus::Suspended, LicenseStatus::Cancelled, LicenseStatus::Expired] {
            assert_eq!(LicenseStatus::parse(s.as_str()), Ok(s));
        }
        assert!(LicenseStatus::parse("active").is_err());
    }
}
