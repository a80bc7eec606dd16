//! US3: an instance takes a seat of the key's license for a product (SPEC §2 "Seats"), rules in
//! the SPEC's order: key and license (404s), effective status (409), already active (200, the
//! same activation), seat limit (409), else a new activation (201).
//!
//! The seat count runs after the license row is locked, as its own statement, so N concurrent
//! activations on any number of replicas grant exactly the free seats. Refusals that a brand
//! wants to know about (status, seat limit) are answered as stored outcomes *with* an
//! `activation.rejected` event: a `HandleError::Rejected` would roll the event back with the
//! rest of the command's savepoint.

use cls_contracts::command::Activate;
use cls_contracts::event::{ActivationRejected, Event};
use cls_contracts::{Problem, ProblemCode, format_time, http};
use cls_domain::{InstanceId, LicenseStatus};
use cls_store::activations::{self, NewActivation, SeatLicense};
use cls_store::{PgConnection, WriteError};
use cls_worker::{CommandContext, HandleError, Handled, NewEvent, Touched};
use serde_json::json;
use uuid::Uuid;

use crate::seats;

#[tracing::instrument(skip_all, fields(product = %c.product))]
pub async fn activate(conn: &mut PgConnection, ctx: &CommandContext, c: &Activate) -> Result<Handled, HandleError> {
    let instance = InstanceId::parse(&c.instance_id).map_err(HandleError::malformed)?;
    let license = seats::locked_license(conn, &c.key_hash, &c.product).await?;

    let status = seats::effective_status(&license, ctx.now)?;
    let refusal = match status {
        LicenseStatus::Valid => None,
        LicenseStatus::Suspended => Some((ProblemCode::LicenseSuspended, "The license is suspended.")),
        LicenseStatus::Cancelled => Some((ProblemCode::LicenseCancelled, "The license is cancelled.")),
        LicenseStatus::Expired => Some((ProblemCode::LicenseExpired, "The license is expired.")),
    };
    if let Some((code, detail)) = refusal {
        return Ok(refused(ctx, &license, &instance, code, detail, serde_json::Map::new()));
    }

    // A separate statement after the lock: it sees every activation committed before.
    let (active, existing) = activations::seats_and_instance(conn, license.id, instance.as_str()).await?;
    if let Some(existing) = existing {
        // Idempotent: no seat taken, nothing emitted, works on a full license.
        activations::touch(conn, existing.id, ctx.now).await?;
        return Ok(answer(200, &license, status, &existing, seats::seats_used(&license, active)));
    }
    if let Some(limit) = license.seat_limit
        && active >= i64::from(limit)
    {
        let listed: Vec<serde_json::Value> = cls_store::licenses::active_activations(conn, license.id)
            .await?
            .iter()
            .map(|a| json!({"instance_id": a.instance_id, "activated_at": format_time(a.activated_at)}))
            .collect();
        let mut extra = serde_json::Map::new();
        extra.insert("activations".to_owned(), serde_json::Value::Array(listed));
        let detail = format!("All {limit} seats of the license are in use; deactivate an instance first.");
        return Ok(refused(ctx, &license, &instance, ProblemCode::SeatLimitReached, &detail, extra));
    }

    let new = NewActivation {
        id: Uuid::now_v7(),
        license_id: license.id,
        instance_id: instance.as_str(),
        instance_name: c.instance_name.as_deref(),
        metadata: c.metadata.as_deref(),
        at: ctx.now,
    };
    let inserted = activations::insert(conn, &new).await.map_err(|e| match e {
        // Impossible under the license lock; if it ever happens, a retry answers 200.
        WriteError::Conflict(_) => HandleError::Transient(anyhow::anyhow!("the instance became active concurrently")),
        WriteError::Store(e) => e.into(),
    })?;
    let activation = inserted.activation;
    let used = seats::seats_used(&license, active + 1);
    let mut handled = answer(201, &license, status, &activation, used);
    // The insert drew the key's read-model version already (one round trip fewer).
    handled.touched = vec![Touched::DrawnKey { id: inserted.key_id, version: inserted.key_rm_version }];
    handled.events.push(seats::changed(&license, &activation, inserted.license_version, used, None, ctx.now));
    handled.audit.push(seats::audit(&license, &activation, None));
    Ok(handled)
}

fn answer(status_code: u16, license: &SeatLicense, status: LicenseStatus, a: &activations::ActivationRecord, seats_used: u32) -> Handled {
    let body = http::Activated {
        activation: http::ActivationRef { id: a.id.to_string(), instance_id: a.instance_id.clone(), activated_at: format_time(a.activated_at) },
        license: seats::seat_view(license, status, seats_used),
    };
    Handled {
        status: status_code,
        body: serde_json::to_value(body).expect("contract types serialize"),
        secret: false,
        events: Vec::new(),
        audit: Vec::new(),
        touched: vec![Touched::License(license.id)],
    }
}

/// A refusal kept as the command's outcome, with its `activation.rejected` event.
fn refused(
    ctx: &CommandContext,
    license: &SeatLicense,
    instance: &InstanceId,
    code: ProblemCode,
    detail: &str,
    extra: serde_json::Map<String, serde_json::Value>,
) -> Handled {
    let problem = Problem { extra, ..Problem::new(code, detail, &ctx.request_id) };
    let event = NewEvent {
        brand_id: Some(license.brand_id),
        aggregate_id: license.id,
        // Nothing changed: the license's current version.
        aggregate_version: license.version,
        event: Event::ActivationRejected(ActivationRejected {
            license_id: Some(license.id.to_string()),
            brand_id: Some(license.brand_id.to_string()),
            product: license.product.clone(),
            instance_id: instance.as_str().to_owned(),
            code: code.as_str().to_owned(),
            at: format_time(ctx.now),
        }),
    };
    Handled {
        status: problem.status,
        body: serde_json::to_value(&problem).expect("a problem serializes"),
        secret: false,
        events: vec![event],
        audit: Vec::new(),
        touched: Vec::new(),
    }
}
