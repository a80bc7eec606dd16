//! The license lifecycle of SPEC §2 (US2 renew, suspend, resume, cancel, seat limit), and key
//! rotation and transfer. Every cell of the lifecycle table is one arm of a `match` on the
//! license's effective status; a change bumps the version, writes an audit entry and emits an
//! event carrying the license's whole new state.

use chrono::{DateTime, Datelike, TimeDelta, Utc};
use cls_contracts::command::{Cancel, ChangeSeats, Renew, Resume, RotateKey, Suspend, TransferKey};
use cls_contracts::event::{self, Event};
use cls_contracts::{ProblemCode, format_time, http};
use cls_domain::{Email, KeyPrefix, LicenseKey, LicenseStatus};
use cls_store::licenses::{self, LicenseKeyRecord, LicenseRow};
use cls_store::{PgConnection, WriteError, brands, views};
use cls_worker::{Audit, CommandContext, HandleError, Handled, NewEvent, Touched};
use serde_json::json;
use uuid::Uuid;

use LicenseStatus::{Cancelled, Expired, Suspended, Valid};

/// The caller's license, locked; another brand's answers like a missing one.
async fn locked(conn: &mut PgConnection, ctx: &CommandContext, brand_id: &str, license_id: &str) -> Result<(LicenseRow, LicenseStatus), HandleError> {
    let brand = caller_brand(ctx, brand_id)?;
    let not_found = || HandleError::rejected(ProblemCode::NotFound, "No license with this id.");
    let id: Uuid = license_id.parse().map_err(|_| not_found())?;
    let row = licenses::lock_license(conn, brand, id).await?.ok_or_else(not_found)?;
    let status = LicenseStatus::parse(&row.status).map_err(HandleError::malformed)?.effective(row.expires_at, ctx.now);
    Ok((row, status))
}

fn caller_brand(ctx: &CommandContext, brand_id: &str) -> Result<Uuid, HandleError> {
    ctx.brand_id()
        .filter(|b| b.to_string() == brand_id)
        .ok_or_else(|| HandleError::malformed("the command's brand is not the caller's brand"))
}

fn invalid_transition(action: &str, status: LicenseStatus) -> HandleError {
    HandleError::rejected(ProblemCode::InvalidTransition, format!("A {status} license cannot be {action}."))
}

/// The new state a change writes.
struct Change {
    status: LicenseStatus,
    expires_at: Option<DateTime<Utc>>,
    seat_limit: Option<u32>,
    action: &'static str,
    reason: Option<String>,
    event: fn(event::LicenseState) -> Event,
}

/// Writes a change: new state and version, an audit entry, an event; answers the license.
async fn apply(conn: &mut PgConnection, ctx: &CommandContext, row: &LicenseRow, before: LicenseStatus, change: Change) -> Result<Handled, HandleError> {
    let version = licenses::update_license(conn, row.id, change.status.as_str(), change.expires_at, change.seat_limit, ctx.now).await?;
    let view = current(conn, row.id).await?;
    let state = event::LicenseState {
        license_id: row.id.to_string(),
        license_key_id: row.license_key_id.to_string(),
        brand_id: row.brand_id.to_string(),
        product: view.product.clone(),
        status: change.status.as_str().to_owned(),
        expires_at: change.expires_at.map(format_time),
        seat_limit: change.seat_limit,
        reason: change.reason.clone(),
        previous_status: before.as_str().to_owned(),
    };
    Ok(Handled {
        status: 200,
        body: json!(views::license(&view, ctx.now)),
        secret: false,
        events: vec![NewEvent { brand_id: Some(row.brand_id), aggregate_id: row.id, aggregate_version: version, event: (change.event)(state) }],
        audit: vec![Audit {
            brand_id: Some(row.brand_id),
            action: change.action,
            target_type: "license",
            target_id: row.id,
            status_before: Some(before.as_str().to_owned()),
            status_after: Some(change.status.effective(change.expires_at, ctx.now).as_str().to_owned()),
            reason: change.reason,
        }],
        touched: vec![Touched::License(row.id)],
    })
}

/// A no-op cell of the table: 200 with the license as it is, nothing written.
async fn unchanged(conn: &mut PgConnection, ctx: &CommandContext, row: &LicenseRow) -> Result<Handled, HandleError> {
    let view = current(conn, row.id).await?;
    // Nothing changed, but the answer still promises reads show this state.
    Ok(Handled {
        status: 200,
        body: json!(views::license(&view, ctx.now)),
        secret: false,
        events: vec![],
        audit: vec![],
        touched: vec![Touched::License(row.id)],
    })
}

async fn current(conn: &mut PgConnection, id: Uuid) -> Result<licenses::LicenseView, HandleError> {
    licenses::licenses_by_ids(conn, &[id]).await?.pop().ok_or_else(|| HandleError::malformed("license vanished"))
}

fn seat_limit(row: &LicenseRow) -> Option<u32> {
    row.seat_limit.map(|n| n as u32)
}

pub async fn renew(conn: &mut PgConnection, ctx: &CommandContext, c: &Renew) -> Result<Handled, HandleError> {
    let (row, status) = locked(conn, ctx, &c.brand_id, &c.license_id).await?;
    if status == Cancelled {
        return Err(invalid_transition("renewed", status));
    }
    let Some(current_expiry) = row.expires_at else {
        return Err(HandleError::rejected(ProblemCode::InvalidTransition, "A perpetual license cannot be renewed."));
    };
    let new_expiry = match (&c.expires_at, c.extend_days) {
        (Some(at), None) => cls_contracts::parse_time(at).ok_or_else(|| HandleError::malformed("expires_at"))?,
        (None, Some(days)) => current_expiry.max(ctx.now) + TimeDelta::days(days.into()),
        _ => return Err(HandleError::malformed("renew needs exactly one of expires_at and extend_days")),
    };
    if new_expiry <= ctx.now {
        return Err(HandleError::invalid("expires_at", "the new expiry must be in the future"));
    }
    // Times travel as RFC 3339, whose years have four digits: a later expiry could be stored
    // but never read back (answers, events and the read model).
    if new_expiry.year() > 9999 {
        return Err(HandleError::invalid("extend_days", "the new expiry must be before the year 10000"));
    }
    // Renewing a suspended license changes its expiry only; an expired one becomes valid.
    let new_status = if status == Suspended { Suspended } else { Valid };
    let change = Change { status: new_status, expires_at: Some(new_expiry), seat_limit: seat_limit(&row), action: "license.renewed", reason: None, event: Event::LicenseRenewed };
    apply(conn, ctx, &row, status, change).await
}

pub async fn suspend(conn: &mut PgConnection, ctx: &CommandContext, c: &Suspend) -> Result<Handled, HandleError> {
    let (row, status) = locked(conn, ctx, &c.brand_id, &c.license_id).await?;
    match status {
        Valid | Expired => {
            let change = Change { status: Suspended, expires_at: row.expires_at, seat_limit: seat_limit(&row), action: "license.suspended", reason: c.reason.clone(), event: Event::LicenseSuspended };
            apply(conn, ctx, &row, status, change).await
        }
        Suspended => unchanged(conn, ctx, &row).await,
        Cancelled => Err(invalid_transition("suspended", status)),
    }
}

pub async fn resume(conn: &mut PgConnection, ctx: &CommandContext, c: &Resume) -> Result<Handled, HandleError> {
    let (row, status) = locked(conn, ctx, &c.brand_id, &c.license_id).await?;
    match status {
        Valid | Expired => unchanged(conn, ctx, &row).await,
        Suspended => {
            // Back to valid, or to expired when its expiry passed while suspended.
            let resumed = Valid.effective(row.expires_at, ctx.now);
            let change = Change { status: resumed, expires_at: row.expires_at, seat_limit: seat_limit(&row), action: "license.resumed", reason: None, event: Event::LicenseResumed };
            apply(conn, ctx, &row, status, change).await
        }
        Cancelled => Err(invalid_transition("resumed", status)),
    }
}

pub async fn cancel(conn: &mut PgConnection, ctx: &CommandContext, c: &Cancel) -> Result<Handled, HandleError> {
    let (row, status) = locked(conn, ctx, &c.brand_id, &c.license_id).await?;
    match status {
        Valid | Expired | Suspended => {
            let change = Change { status: Cancelled, expires_at: row.expires_at, seat_limit: seat_limit(&row), action: "license.cancelled", reason: c.reason.clone(), event: Event::LicenseCancelled };
            apply(conn, ctx, &row, status, change).await
        }
        Cancelled => unchanged(conn, ctx, &row).await,
    }
}

pub async fn change_seats(conn: &mut PgConnection, ctx: &CommandContext, c: &ChangeSeats) -> Result<Handled, HandleError> {
    let (row, status) = locked(conn, ctx, &c.brand_id, &c.license_id).await?;
    if status == Cancelled {
        return Err(invalid_transition("given another seat limit", status));
    }
    if let Some(limit) = c.seat_limit {
        // Counted after the lock, in its own statement: a concurrent activation either
        // committed before (counted) or waits for this transaction.
        let in_use = cls_store::activations::active_count(conn, row.id).await?;
        if in_use > i64::from(limit) {
            return Err(HandleError::rejected(ProblemCode::SeatsInUse, format!("{in_use} seats are in use; deactivate some before lowering the limit to {limit}.")));
        }
    }
    let stored = LicenseStatus::parse(&row.status).map_err(HandleError::malformed)?;
    let change = Change { status: stored, expires_at: row.expires_at, seat_limit: c.seat_limit, action: "license.seats_changed", reason: None, event: Event::LicenseSeatsChanged };
    apply(conn, ctx, &row, status, change).await
}

async fn locked_key(conn: &mut PgConnection, ctx: &CommandContext, brand_id: &str, key_id: &str) -> Result<LicenseKeyRecord, HandleError> {
    let brand = caller_brand(ctx, brand_id)?;
    let not_found = || HandleError::rejected(ProblemCode::LicenseKeyNotFound, "No license key with this id.");
    let id: Uuid = key_id.parse().map_err(|_| not_found())?;
    licenses::lock_key(conn, brand, id).await?.ok_or_else(not_found)
}

fn key_event(after: &LicenseKeyRecord, before: &LicenseKeyRecord, rotated: bool) -> event::LicenseKeyChanged {
    event::LicenseKeyChanged {
        license_key_id: after.id.to_string(),
        brand_id: after.brand_id.to_string(),
        customer_email: after.customer_email.clone(),
        key_hint: after.key_hint.clone(),
        previous_key_hint: rotated.then(|| before.key_hint.clone()),
        previous_customer_email: (!rotated).then(|| before.customer_email.clone()),
    }
}

fn key_audit(key: &LicenseKeyRecord, action: &'static str) -> Audit {
    Audit { brand_id: Some(key.brand_id), action, target_type: "license_key", target_id: key.id, status_before: None, status_after: None, reason: None }
}

pub async fn rotate_key(conn: &mut PgConnection, ctx: &CommandContext, c: &RotateKey) -> Result<Handled, HandleError> {
    let before = locked_key(conn, ctx, &c.brand_id, &c.license_key_id).await?;
    let brand = brands::find_brand(conn, before.brand_id).await?.ok_or_else(|| HandleError::malformed("unknown brand"))?;
    let prefix = KeyPrefix::parse(&brand.key_prefix).map_err(HandleError::malformed)?;
    // 80 random bits never collide in practice; a collision would abort the transaction and
    // the command would be retried with a fresh key.
    let key = LicenseKey::generate(&prefix, &mut rand::rng());
    let after = licenses::rotate_key(conn, before.id, &key.hash(), &key.hint(), ctx.now).await.map_err(|e| match e {
        WriteError::Conflict(_) => HandleError::Transient(anyhow::anyhow!("generated key collided")),
        WriteError::Store(e) => e.into(),
    })?;
    let body = http::RotatedKey { id: after.id.to_string(), key: key.expose().to_owned(), key_hint: after.key_hint.clone() };
    Ok(Handled {
        status: 200,
        body: json!(body),
        secret: true,
        events: vec![NewEvent { brand_id: Some(after.brand_id), aggregate_id: after.id, aggregate_version: after.version, event: Event::LicenseKeyRotated(key_event(&after, &before, true)) }],
        audit: vec![key_audit(&after, "license_key.rotated")],
        touched: vec![Touched::LicenseKey(after.id)],
    })
}

pub async fn transfer_key(conn: &mut PgConnection, ctx: &CommandContext, c: &TransferKey) -> Result<Handled, HandleError> {
    let email = Email::parse(&c.customer_email).map_err(HandleError::malformed)?;
    let before = locked_key(conn, ctx, &c.brand_id, &c.license_key_id).await?;
    let body = |k: &LicenseKeyRecord| json!(http::TransferredKey { id: k.id.to_string(), key_hint: k.key_hint.clone(), customer_email: k.customer_email.clone() });
    if before.customer_email == email.as_str() {
        return Ok(Handled { status: 200, body: body(&before), secret: false, events: vec![], audit: vec![], touched: vec![] });
    }
    let after = licenses::transfer_key(conn, before.id, &email, ctx.now).await?;
    Ok(Handled {
        status: 200,
        body: body(&after),
        secret: false,
        events: vec![NewEvent { brand_id: Some(after.brand_id), aggregate_id: after.id, aggregate_version: after.version, event: Event::LicenseKeyTransferred(key_event(&after, &before, false)) }],
        audit: vec![key_audit(&after, "license_key.transferred")],
        touched: vec![Touched::LicenseKey(after.id)],
    })
}
