//! US4 validation (SPEC §3 `POST /v1/license-keys/validate`): what an end-user product may know
//! about its key, and the one code that sums it up, decided from the key's read-model document.
//!
//! With a product, that product's license decides (the non-cancelled one, else the latest);
//! without one, the key is valid if any license is, and the code is the best in the order VALID,
//! SUSPENDED, EXPIRED, CANCELLED. An instance that is not active on an otherwise valid license
//! gives NOT_ACTIVATED. The answer never holds the customer's email or the full key.

use chrono::{DateTime, Utc};
use cls_contracts::http::{ValidatedLicense, Validation};
use cls_contracts::internal::ValidateKey;
use cls_contracts::read_model::{KeyDoc, KeyLicense};
use cls_contracts::{format_time, parse_time};
use cls_domain::{KeyHash, LicenseStatus};

use crate::hot::{Hot, HotError};

/// The codes of a validation answer.
const VALID: &str = "VALID";
const NOT_FOUND: &str = "LICENSE_KEY_NOT_FOUND";
const NO_LICENSE: &str = "NO_LICENSE_FOR_PRODUCT";
const NOT_ACTIVATED: &str = "NOT_ACTIVATED";

pub async fn validate(hot: &Hot, q: &ValidateKey) -> Result<Validation, HotError> {
    let doc = match q.key_hash.as_deref().and_then(|h| KeyHash::from_hex(h).ok()) {
        Some(hash) => hot.key(&hash).await?,
        None => KeyDoc::Unknown,
    };
    Ok(decide(&doc, q, Utc::now()))
}

/// The answer for a key document at `now`.
pub fn decide(doc: &KeyDoc, q: &ValidateKey, now: DateTime<Utc>) -> Validation {
    let KeyDoc::Live(key) = doc else {
        return Validation { valid: false, code: NOT_FOUND.into(), key_hint: None, licenses: vec![], checked_at: format_time(now) };
    };
    let deciding: Vec<&KeyLicense> = match &q.product {
        Some(product) => match pick_for_product(&key.licenses, product) {
            Some(l) => vec![l],
            None => {
                return Validation {
                    valid: false,
                    code: NO_LICENSE.into(),
                    key_hint: Some(key.key_hint.clone()),
                    licenses: vec![],
                    checked_at: format_time(now),
                };
            }
        },
        None => key.licenses.iter().collect(),
    };
    let answers = deciding
        .into_iter()
        .map(|l| judge(l, q.instance_id.as_deref().map(|i| l.instances.iter().any(|held| held == i)), now))
        .collect();
    summarize(key.key_hint.clone(), answers, now)
}

/// The license that counts for a product: the non-cancelled one, else the latest.
fn pick_for_product<'a>(held: &'a [KeyLicense], product: &str) -> Option<&'a KeyLicense> {
    let of_product = || held.iter().filter(|l| l.product == product);
    of_product()
        .find(|l| l.status != "cancelled")
        .or_else(|| of_product().max_by_key(|l| (parse_time(&l.created_at), l.id.clone())))
}

/// One license's verdict at `now`, with the instance's state when one was given.
fn judge(l: &KeyLicense, instance_active: Option<bool>, now: DateTime<Utc>) -> ValidatedLicense {
    let expires_at = l.expires_at.as_deref().and_then(parse_time);
    let status = LicenseStatus::parse(&l.status).unwrap_or(LicenseStatus::Cancelled).effective(expires_at, now);
    let code = match (status, instance_active) {
        (LicenseStatus::Valid, Some(false)) => NOT_ACTIVATED,
        (LicenseStatus::Valid, _) => VALID,
        (LicenseStatus::Suspended, _) => "SUSPENDED",
        (LicenseStatus::Expired, _) => "EXPIRED",
        (LicenseStatus::Cancelled, _) => "CANCELLED",
    };
    ValidatedLicense {
        product: l.product.clone(),
        status: status.as_str().to_owned(),
        valid: code == VALID,
        code: code.to_owned(),
        expires_at: l.expires_at.clone(),
        seat_limit: l.seat_limit,
        seats_used: l.seats_used,
        seats_remaining: l.seat_limit.map(|n| n.saturating_sub(l.seats_used)),
        instance_active,
    }
}

/// The key's verdict: valid if any license is; the best code in SPEC order.
fn summarize(key_hint: String, licenses: Vec<ValidatedLicense>, now: DateTime<Utc>) -> Validation {
    const ORDER: [&str; 5] = [VALID, NOT_ACTIVATED, "SUSPENDED", "EXPIRED", "CANCELLED"];
    let best = licenses.iter().map(|l| l.code.as_str()).min_by_key(|c| ORDER.iter().position(|o| o == c).unwrap_or(ORDER.len()));
    let code = best.unwrap_or(NO_LICENSE).to_owned();
    Validation { valid: code == VALID, code, key_hint: Some(key_hint), licenses, checked_at: format_time(now) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cls_contracts::read_model::LiveKey;

    fn license(product: &str, status: &str, expires_in_days: Option<i64>, created_minutes_ago: i64) -> KeyLicense {
        let now = Utc::now();
        KeyLicense {
            id: uuid::Uuid::now_v7().to_string(),
            product: product.into(),
            status: status.into(),
            expires_at: expires_in_days.map(|d| format_time(now + chrono::TimeDelta::days(d))),
            seat_limit: Some(3),
            seats_used: 1,
            created_at: format_time(now - chrono::TimeDelta::minutes(created_minutes_ago)),
            instances: vec!["host-1".into()],
        }
    }

    fn key(licenses: Vec<KeyLicense>) -> KeyDoc {
        KeyDoc::Live(LiveKey { key_id: "k".into(), brand_id: "b".into(), key_hint: "RM-…-AAAA".into(), licenses })
    }

    fn query(product: Option<&str>, instance: Option<&str>) -> ValidateKey {
        ValidateKey { key_hash: None, product: product.map(str::to_owned), instance_id: instance.map(str::to_owned) }
    }

    #[test]
    fn codes_follow_the_effective_status_and_the_instance() {
        let now = Utc::now();
        let cases = [
            (license("a", "valid", Some(1), 0), None, "VALID"),
            (license("a", "valid", Some(-1), 0), None, "EXPIRED"),
            (license("a", "suspended", Some(1), 0), None, "SUSPENDED"),
            (license("a", "cancelled", None, 0), None, "CANCELLED"),
            (license("a", "valid", None, 0), Some(false), "NOT_ACTIVATED"),
            (license("a", "valid", None, 0), Some(true), "VALID"),
            // An inactive instance does not change a license that is not valid anyway.
            (license("a", "suspended", None, 0), Some(false), "SUSPENDED"),
        ];
        for (l, active, code) in cases {
            let v = judge(&l, active, now);
            assert_eq!(v.code, code, "{} / {active:?}", l.status);
            assert_eq!(v.valid, code == "VALID");
            assert_eq!(v.instance_active, active);
        }
    }

    #[test]
    fn the_instance_is_looked_up_on_the_deciding_license() {
        let now = Utc::now();
        let doc = key(vec![license("a", "valid", None, 0)]);
        assert_eq!(decide(&doc, &query(Some("a"), Some("host-1")), now).code, "VALID");
        assert_eq!(decide(&doc, &query(Some("a"), Some("host-2")), now).code, "NOT_ACTIVATED");
        assert_eq!(decide(&doc, &query(Some("b"), None), now).code, "NO_LICENSE_FOR_PRODUCT");
        assert_eq!(decide(&KeyDoc::Retired, &query(None, None), now).code, "LICENSE_KEY_NOT_FOUND");
        assert_eq!(decide(&KeyDoc::Unknown, &query(None, None), now).key_hint, None);
    }

    #[test]
    fn without_a_product_the_best_code_wins() {
        let now = Utc::now();
        let judged = |ls: Vec<KeyLicense>| decide(&key(ls), &query(None, None), now);
        let v = judged(vec![license("a", "cancelled", None, 0), license("b", "suspended", None, 0), license("c", "valid", Some(-2), 0)]);
        assert_eq!((v.valid, v.code.as_str()), (false, "SUSPENDED"));
        let v = judged(vec![license("a", "cancelled", None, 0), license("b", "valid", None, 0)]);
        assert_eq!((v.valid, v.code.as_str()), (true, "VALID"));
        let v = judged(vec![license("a", "cancelled", None, 0), license("c", "valid", Some(-2), 0)]);
        assert_eq!(v.code, "EXPIRED");
    }

    #[test]
    fn for_a_product_the_live_license_counts_else_the_latest() {
        let cancelled_old = license("a", "cancelled", None, 10);
        let live = license("a", "valid", None, 5);
        let held = [cancelled_old.clone(), live.clone()];
        assert_eq!(pick_for_product(&held, "a").map(|l| l.id.clone()), Some(live.id));
        let cancelled_new = license("a", "cancelled", None, 1);
        let held = [cancelled_old, cancelled_new.clone()];
        assert_eq!(pick_for_product(&held, "a").map(|l| l.id.clone()), Some(cancelled_new.id));
        assert!(pick_for_product(&held, "b").is_none());
    }
}
