//! US4 validation (SPEC §3 `POST /v1/license-keys/validate`): what an end-user product may know
//! about its key, and the one code that sums it up.
//!
//! With a product, that product's license decides (the non-cancelled one, else the latest);
//! without one, the key is valid if any license is, and the code is the best in the order VALID,
//! SUSPENDED, EXPIRED, CANCELLED. An instance that is not active on an otherwise valid license
//! gives NOT_ACTIVATED. The answer never holds the customer's email or the full key.

use chrono::{DateTime, Utc};
use cls_contracts::format_time;
use cls_contracts::http::{ValidatedLicense, Validation};
use cls_contracts::internal::ValidateKey;
use cls_domain::{KeyHash, LicenseStatus};
use cls_store::licenses::{self, LicenseView};
use cls_store::{PgPool, StoreError};

/// The codes of a validation answer.
const VALID: &str = "VALID";
const NOT_FOUND: &str = "LICENSE_KEY_NOT_FOUND";
const NO_LICENSE: &str = "NO_LICENSE_FOR_PRODUCT";
const NOT_ACTIVATED: &str = "NOT_ACTIVATED";

pub async fn validate(pool: &PgPool, q: &ValidateKey) -> Result<Validation, StoreError> {
    let now = Utc::now();
    let key = match q.key_hash.as_deref().and_then(|h| KeyHash::from_hex(h).ok()) {
        Some(hash) => {
            let mut conn = pool.acquire().await?;
            match licenses::find_key_by_hash(&mut conn, &hash).await? {
                Some(key) => Some((key.key_hint.clone(), licenses::licenses_of_key(&mut conn, key.id).await?)),
                None => None,
            }
        }
        None => None,
    };
    let Some((key_hint, held)) = key else {
        return Ok(Validation { valid: false, code: NOT_FOUND.into(), key_hint: None, licenses: vec![], checked_at: format_time(now) });
    };
    let deciding = match &q.product {
        Some(product) => match pick_for_product(&held, product) {
            Some(l) => vec![l.clone()],
            None => {
                return Ok(Validation { valid: false, code: NO_LICENSE.into(), key_hint: Some(key_hint), licenses: vec![], checked_at: format_time(now) });
            }
        },
        None => held,
    };
    let mut answers = Vec::with_capacity(deciding.len());
    for l in &deciding {
        let active = match &q.instance_id {
            Some(instance) => {
                let mut conn = pool.acquire().await?;
                Some(licenses::instance_active(&mut conn, l.id, instance).await?)
            }
            None => None,
        };
        answers.push(judge(l, active, now));
    }
    Ok(summarize(key_hint, answers, now))
}

/// The license that counts for a product: the non-cancelled one, else the latest.
fn pick_for_product<'a>(held: &'a [LicenseView], product: &str) -> Option<&'a LicenseView> {
    let of_product = || held.iter().filter(|l| l.product == product);
    of_product().find(|l| l.status != "cancelled").or_else(|| of_product().max_by_key(|l| (l.created_at, l.id)))
}

/// One license's verdict at `now`, with the instance's state when one was given.
fn judge(l: &LicenseView, instance_active: Option<bool>, now: DateTime<Utc>) -> ValidatedLicense {
    let status = LicenseStatus::parse(&l.status).unwrap_or(LicenseStatus::Cancelled).effective(l.expires_at, now);
    let code = match (status, instance_active) {
        (LicenseStatus::Valid, Some(false)) => NOT_ACTIVATED,
        (LicenseStatus::Valid, _) => VALID,
        (LicenseStatus::Suspended, _) => "SUSPENDED",
        (LicenseStatus::Expired, _) => "EXPIRED",
        (LicenseStatus::Cancelled, _) => "CANCELLED",
    };
    let view = cls_store::views::license(l, now);
    ValidatedLicense {
        product: view.product,
        status: view.status,
        valid: code == VALID,
        code: code.to_owned(),
        expires_at: view.expires_at,
        seat_limit: view.seat_limit,
        seats_used: view.seats_used,
        seats_remaining: view.seats_remaining,
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
    use uuid::Uuid;

    fn license(product: &str, status: &str, expires_in_days: Option<i64>, created_minutes_ago: i64) -> LicenseView {
        let now = Utc::now();
        LicenseView {
            id: Uuid::now_v7(),
            brand_id: Uuid::nil(),
            license_key_id: Uuid::nil(),
            key_hint: "RM-…-AAAA".into(),
            customer_email: "secret@example.com".into(),
            product_id: Uuid::nil(),
            product: product.into(),
            status: status.into(),
            expires_at: expires_in_days.map(|d| now + chrono::TimeDelta::days(d)),
            seat_limit: Some(3),
            seats_used: 1,
            created_at: now - chrono::TimeDelta::minutes(created_minutes_ago),
            updated_at: now,
            version: 1,
        }
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
    fn without_a_product_the_best_code_wins() {
        let now = Utc::now();
        let judged = |ls: &[LicenseView]| summarize("h".into(), ls.iter().map(|l| judge(l, None, now)).collect(), now);
        let v = judged(&[license("a", "cancelled", None, 0), license("b", "suspended", None, 0), license("c", "valid", Some(-2), 0)]);
        assert_eq!((v.valid, v.code.as_str()), (false, "SUSPENDED"));
        let v = judged(&[license("a", "cancelled", None, 0), license("b", "valid", None, 0)]);
        assert_eq!((v.valid, v.code.as_str()), (true, "VALID"));
        let v = judged(&[license("a", "cancelled", None, 0), license("c", "valid", Some(-2), 0)]);
        assert_eq!(v.code, "EXPIRED");
        let json = serde_json::to_string(&v).unwrap();
        assert!(!json.contains("secret@example.com"), "no email in a validation");
    }

    #[test]
    fn for_a_product_the_live_license_counts_else_the_latest() {
        let cancelled_old = license("a", "cancelled", None, 10);
        let live = license("a", "valid", None, 5);
        let held = [cancelled_old.clone(), live.clone()];
        assert_eq!(pick_for_product(&held, "a").map(|l| l.id), Some(live.id));
        let cancelled_new = license("a", "cancelled", None, 1);
        let held = [cancelled_old, cancelled_new.clone()];
        assert_eq!(pick_for_product(&held, "a").map(|l| l.id), Some(cancelled_new.id));
        assert!(pick_for_product(&held, "b").is_none());
    }
}
