//! Store records in the wire shapes of SPEC §3, shared by the workers' outcomes and the query
//! service's reads, so a license looks the same in a provisioning answer and in a listing.

use chrono::{DateTime, Utc};
use cls_contracts::format_time;
use cls_contracts::http;
use cls_domain::LicenseStatus;

use crate::audit::AuditEntry;
use crate::brands::ProductRecord;
use crate::licenses::{ActiveActivation, EcosystemLicense, LicenseView};

/// A license at `now`: its effective status, and seats remaining (null when unlimited).
pub fn license(v: &LicenseView, now: DateTime<Utc>) -> http::License {
    let status = LicenseStatus::parse(&v.status).map(|s| s.effective(v.expires_at, now).as_str()).unwrap_or("cancelled");
    let seats_used = v.seats_used.max(0) as u32;
    http::License {
        id: v.id.to_string(),
        license_key_id: v.license_key_id.to_string(),
        key_hint: v.key_hint.clone(),
        product: v.product.clone(),
        status: status.to_owned(),
        expires_at: v.expires_at.map(format_time),
        seat_limit: v.seat_limit.map(|n| n as u32),
        seats_used,
        seats_remaining: v.seat_limit.map(|n| (n as u32).saturating_sub(seats_used)),
        created_at: format_time(v.created_at),
        updated_at: format_time(v.updated_at),
        version: v.version,
    }
}

pub fn activation(a: &ActiveActivation) -> http::Activation {
    http::Activation {
        id: a.id.to_string(),
        instance_id: a.instance_id.clone(),
        instance_name: a.instance_name.clone(),
        activated_at: format_time(a.activated_at),
        last_seen_at: format_time(a.last_seen_at),
    }
}

pub fn ecosystem_license(e: &EcosystemLicense, now: DateTime<Utc>) -> http::EcosystemLicense {
    let status = LicenseStatus::parse(&e.status).map(|s| s.effective(e.expires_at, now).as_str()).unwrap_or("cancelled");
    http::EcosystemLicense {
        brand: e.brand.clone(),
        product: e.product.clone(),
        status: status.to_owned(),
        expires_at: e.expires_at.map(format_time),
        seat_limit: e.seat_limit.map(|n| n as u32),
        seats_used: e.seats_used.max(0) as u32,
        key_hint: e.key_hint.clone(),
    }
}

pub fn product(p: &ProductRecord) -> http::Product {
    http::Product {
        id: p.id.to_string(),
        code: p.code.clone(),
        name: p.name.clone(),
        default_seat_limit: p.default_seat_limit.map(|n| n as u32),
        default_duration_days: p.default_duration_days.map(|n| n as u32),
        created_at: format_time(p.created_at),
    }
}

pub fn audit_entry(e: &AuditEntry) -> http::AuditEntry {
    http::AuditEntry {
        id: e.id.to_string(),
        actor: http::Actor { kind: e.actor_kind.clone(), id: e.actor_id.clone() },
        action: e.action.clone(),
        target_type: e.target_type.clone(),
        target_id: e.target_id.to_string(),
        request_id: e.request_id.clone(),
        status_before: e.status_before.clone(),
        status_after: e.status_after.clone(),
        reason: e.reason.clone(),
        at: format_time(e.at),
    }
}
