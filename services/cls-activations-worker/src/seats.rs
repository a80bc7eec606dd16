//! What the use cases share: finding and locking the license a key holds for a product, the
//! license's effective status and seats, and the `activation.*` events and audit entries.

use chrono::{DateTime, Utc};
use cls_contracts::event::{ActivationChanged, Event};
use cls_contracts::{ProblemCode, format_time, http};
use cls_domain::{KeyHash, LicenseStatus};
use cls_store::PgConnection;
use cls_store::activations::{self, ActivationRecord, DeactivatedBy, KeyLicense, SeatLicense};
use cls_worker::{Audit, HandleError, NewEvent};

/// SPEC §2 Seats rule 1, then the lock: the license the key holds for the product (the
/// non-cancelled one, else the latest), locked until the transaction ends. One round trip when
/// the license exists; a second one tells an unknown key from a key without that product.
pub async fn locked_license(conn: &mut PgConnection, key_hash: &str, product: &str) -> Result<SeatLicense, HandleError> {
    let hash = KeyHash::from_hex(key_hash).map_err(HandleError::malformed)?;
    if let Some(license) = activations::lock_license_for_key(conn, &hash, product).await? {
        return Ok(license);
    }
    let license_id = match activations::license_for_key(conn, &hash, product).await? {
        KeyLicense::UnknownKey => {
            return Err(HandleError::rejected(ProblemCode::LicenseKeyNotFound, "No license key matches."));
        }
        KeyLicense::NoLicense => {
            return Err(HandleError::rejected(ProblemCode::NoLicenseForProduct, format!("The license key has no license for {product}.")));
        }
        // Provisioned between the two statements.
        KeyLicense::License(id) => id,
    };
    lock(conn, license_id).await
}

/// Locks a license known to exist (licenses are never deleted).
pub async fn lock(conn: &mut PgConnection, license_id: uuid::Uuid) -> Result<SeatLicense, HandleError> {
    activations::lock_license(conn, license_id)
        .await?
        .ok_or_else(|| HandleError::Fatal(anyhow::anyhow!("license {license_id} vanished")))
}

/// The license's status at `now` (SPEC §2 "Effective status").
pub fn effective_status(license: &SeatLicense, now: DateTime<Utc>) -> Result<LicenseStatus, HandleError> {
    Ok(LicenseStatus::parse(&license.status).map_err(HandleError::malformed)?.effective(license.expires_at, now))
}

/// Seats in use as every answer reports them: a cancelled license grants nothing, so it
/// reports 0 even before its activations are released.
pub fn seats_used(license: &SeatLicense, active: i64) -> u32 {
    if license.status == LicenseStatus::Cancelled.as_str() { 0 } else { active.max(0) as u32 }
}

/// Free seats; `None` when unlimited.
pub fn seats_remaining(license: &SeatLicense, seats_used: u32) -> Option<u32> {
    license.seat_limit.map(|n| (n.max(0) as u32).saturating_sub(seats_used))
}

/// What a product may see of its license.
pub fn seat_view(license: &SeatLicense, status: LicenseStatus, seats_used: u32) -> http::SeatView {
    http::SeatView {
        product: license.product.clone(),
        status: status.as_str().to_owned(),
        expires_at: license.expires_at.map(format_time),
        seat_limit: license.seat_limit.map(|n| n as u32),
        seats_used,
        seats_remaining: seats_remaining(license, seats_used),
    }
}

/// `activation.created` (when `by` is `None`) or `activation.deactivated`, on the license's
/// stream at its new `version`.
pub fn changed(license: &SeatLicense, a: &ActivationRecord, version: i64, seats_used: u32, by: Option<DeactivatedBy>, at: DateTime<Utc>) -> NewEvent {
    let data = ActivationChanged {
        activation_id: a.id.to_string(),
        license_id: license.id.to_string(),
        brand_id: license.brand_id.to_string(),
        product: license.product.clone(),
        instance_id: a.instance_id.clone(),
        instance_name: a.instance_name.clone(),
        at: format_time(at),
        seats_used,
        deactivated_by: by.map(|b| b.as_str().to_owned()),
    };
    NewEvent {
        brand_id: Some(license.brand_id),
        aggregate_id: license.id,
        aggregate_version: version,
        event: match by {
            None => Event::ActivationCreated(data),
            Some(_) => Event::ActivationDeactivated(data),
        },
    }
}

/// The audit entry of a seat change, on the license (so it shows in the license's history);
/// the reason names the instance and activation.
pub fn audit(license: &SeatLicense, a: &ActivationRecord, by: Option<DeactivatedBy>) -> Audit {
    let (action, reason) = match by {
        None => ("activation.created", format!("instance {} (activation {})", a.instance_id, a.id)),
        Some(by) => ("activation.deactivated", format!("instance {} (activation {}) by {}", a.instance_id, a.id, by.as_str())),
    };
    Audit {
        brand_id: Some(license.brand_id),
        action,
        target_type: "license",
        target_id: license.id,
        status_before: None,
        status_after: None,
        reason: Some(reason),
    }
}
