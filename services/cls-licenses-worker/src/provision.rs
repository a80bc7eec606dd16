//! US1: provisioning licenses onto a key (SPEC §3 `POST /v1/licenses`).
//!
//! All or nothing: every check runs before or inside the command's savepoint, so a rejection
//! leaves no key and no license behind. Key choice for one (brand, email) is serialized by an
//! advisory lock, so concurrent first purchases end on one key.

use std::collections::HashMap;

use chrono::TimeDelta;
use cls_contracts::command::{KeyChoice, Provision, Setting};
use cls_contracts::event::{self, Event};
use cls_contracts::{ProblemCode, format_time, http};
use cls_domain::{Email, KeyPrefix, LicenseKey, LicenseStatus};
use cls_store::brands::{self, ProductRecord};
use cls_store::licenses::{self, LicenseKeyRecord, NewLicense, NewLicenseKey};
use cls_store::{PgConnection, WriteError, views};
use cls_worker::{Audit, CommandContext, HandleError, Handled, NewEvent, Touched};
use serde_json::json;
use uuid::Uuid;

#[tracing::instrument(skip_all, fields(products = c.products.len()))]
pub async fn provision(conn: &mut PgConnection, ctx: &CommandContext, c: &Provision) -> Result<Handled, HandleError> {
    let brand_id = ctx
        .brand_id()
        .filter(|b| b.to_string() == c.brand_id)
        .ok_or_else(|| HandleError::malformed("the provisioning's brand is not the caller's brand"))?;
    let email = Email::parse(&c.customer_email).map_err(HandleError::malformed)?;

    let (prefix, products) = products_by_code(conn, brand_id, c).await?;
    let (key, secret) = choose_key(conn, ctx, brand_id, &prefix, &email, &c.key).await?;
    if key.customer_email != email.as_str() {
        return Err(HandleError::rejected(
            ProblemCode::KeyEmailMismatch,
            "The license key belongs to another customer email.",
        ));
    }

    let mut new = Vec::with_capacity(c.products.len());
    for item in &c.products {
        let product = &products[&item.code];
        // A key this command created holds nothing yet.
        if secret.is_none() && licenses::has_live_license(conn, key.id, product.id).await? {
            return Err(license_exists(&item.code));
        }
        let seat_limit = match item.seat_limit {
            Setting::Default => product.default_seat_limit.map(|n| n as u32),
            Setting::None => None,
            Setting::Value(n) => Some(n),
        };
        let expires_at = match &item.expires_at {
            Setting::Default => product.default_duration_days.map(|d| ctx.now + TimeDelta::days(d.into())),
            Setting::None => None,
            Setting::Value(at) => Some(cls_contracts::parse_time(at).ok_or_else(|| HandleError::malformed("expires_at"))?),
        };
        new.push(NewLicense { id: Uuid::now_v7(), brand_id, license_key_id: key.id, product_id: product.id, expires_at, seat_limit, created_at: ctx.now });
    }
    let views = licenses::insert_licenses(conn, &new).await.map_err(|e| match e {
        // Only when a concurrent command took a product between the check above and the insert.
        WriteError::Conflict(_) => {
            let codes: Vec<&str> = c.products.iter().map(|p| p.code.as_str()).collect();
            license_exists(&codes.join("', '"))
        }
        WriteError::Store(e) => e.into(),
    })?;

    let mut events = Vec::new();
    let mut audit = Vec::new();
    if secret.is_some() {
        events.push(NewEvent {
            brand_id: Some(brand_id),
            aggregate_id: key.id,
            aggregate_version: key.version,
            event: Event::LicenseKeyCreated(event::LicenseKeyCreated {
                license_key_id: key.id.to_string(),
                brand_id: brand_id.to_string(),
                customer_email: key.customer_email.clone(),
                key_hint: key.key_hint.clone(),
                imported: key.imported,
                created_at: format_time(key.created_at),
            }),
        });
        audit.push(Audit {
            brand_id: Some(brand_id),
            action: "license_key.created",
            target_type: "license_key",
            target_id: key.id,
            status_before: None,
            status_after: None,
            reason: None,
        });
    }
    for v in &views {
        let status = LicenseStatus::parse(&v.status).map_err(HandleError::malformed)?.effective(v.expires_at, ctx.now);
        events.push(NewEvent {
            brand_id: Some(brand_id),
            aggregate_id: v.id,
            aggregate_version: v.version,
            event: Event::LicenseProvisioned(event::LicenseProvisioned {
                license_id: v.id.to_string(),
                license_key_id: v.license_key_id.to_string(),
                brand_id: brand_id.to_string(),
                customer_email: v.customer_email.clone(),
                product: v.product.clone(),
                status: status.as_str().to_owned(),
                expires_at: v.expires_at.map(format_time),
                seat_limit: v.seat_limit.map(|n| n as u32),
                created_at: format_time(v.created_at),
            }),
        });
        audit.push(Audit {
            brand_id: Some(brand_id),
            action: "license.provisioned",
            target_type: "license",
            target_id: v.id,
            status_before: None,
            status_after: Some(status.as_str().to_owned()),
            reason: None,
        });
    }

    let body = http::Provisioned {
        license_key: http::ProvisionedKey {
            id: key.id.to_string(),
            key: secret.as_ref().map(|k| k.expose().to_owned()),
            key_hint: key.key_hint.clone(),
            customer_email: key.customer_email.clone(),
            created: secret.is_some(),
        },
        licenses: views.iter().map(|v| views::license(v, ctx.now)).collect(),
    };
    Ok(Handled { status: 201, body: json!(body), secret: secret.is_some(), events, audit, touched: vec![Touched::LicenseKey(key.id)] })
}

/// The brand's key prefix and its products for the requested codes; any unknown code is a 404.
async fn products_by_code(conn: &mut PgConnection, brand_id: Uuid, c: &Provision) -> Result<(KeyPrefix, HashMap<String, ProductRecord>), HandleError> {
    let codes: Vec<String> = c.products.iter().map(|p| p.code.clone()).collect();
    let not_found = |code: &str| HandleError::rejected(ProblemCode::ProductNotFound, format!("No product with code '{code}'."));
    // No brand has no products (the caller's brand always exists: its API key resolved).
    let Some(catalog) = brands::catalog(conn, brand_id, &codes).await? else {
        return Err(not_found(codes.first().map(String::as_str).unwrap_or_default()));
    };
    let prefix = KeyPrefix::parse(&catalog.key_prefix).map_err(HandleError::malformed)?;
    let found: HashMap<String, ProductRecord> = catalog.products.into_iter().map(|p| (p.code.clone(), p)).collect();
    if let Some(missing) = codes.iter().find(|code| !found.contains_key(*code)) {
        return Err(not_found(missing));
    }
    Ok((prefix, found))
}

/// The key the licenses go on, and the full key when this command created it.
async fn choose_key(
    conn: &mut PgConnection,
    ctx: &CommandContext,
    brand_id: Uuid,
    prefix: &KeyPrefix,
    email: &Email,
    choice: &KeyChoice,
) -> Result<(LicenseKeyRecord, Option<LicenseKey>), HandleError> {
    match choice {
        KeyChoice::Existing { license_key_id } => {
            let not_found = || HandleError::rejected(ProblemCode::LicenseKeyNotFound, "No license key with this id.");
            let id: Uuid = license_key_id.parse().map_err(|_| not_found())?;
            // Locked, so a concurrent transfer cannot move the key to another email between
            // the email check and the new licenses.
            let key = licenses::lock_key(conn, brand_id, id).await?.ok_or_else(not_found)?;
            Ok((key, None))
        }
        KeyChoice::Import { key } => {
            let key = LicenseKey::parse_import(key).map_err(HandleError::malformed)?;
            let record = insert_key(conn, ctx, brand_id, email, &key, true).await?.ok_or_else(|| {
                HandleError::rejected(ProblemCode::KeyExists, "This license key exists already.")
            })?;
            Ok((record, Some(key)))
        }
        KeyChoice::Latest => {
            licenses::lock_customer(conn, brand_id, email).await?;
            match licenses::latest_key(conn, brand_id, email).await? {
                Some(key) => Ok((key, None)),
                None => generate_key(conn, ctx, brand_id, prefix, email).await,
            }
        }
        KeyChoice::New => generate_key(conn, ctx, brand_id, prefix, email).await,
    }
}

async fn generate_key(
    conn: &mut PgConnection,
    ctx: &CommandContext,
    brand_id: Uuid,
    prefix: &KeyPrefix,
    email: &Email,
) -> Result<(LicenseKeyRecord, Option<LicenseKey>), HandleError> {
    // 80 random bits: a collision is astronomically unlikely, but a retry costs nothing.
    for _ in 0..3 {
        let key = LicenseKey::generate(prefix, &mut rand::rng());
        if let Some(record) = insert_key(conn, ctx, brand_id, email, &key, false).await? {
            return Ok((record, Some(key)));
        }
    }
    Err(HandleError::Fatal(anyhow::anyhow!("three generated keys collided")))
}

/// Inserts a key; `None` when its hash is taken.
async fn insert_key(
    conn: &mut PgConnection,
    ctx: &CommandContext,
    brand_id: Uuid,
    email: &Email,
    key: &LicenseKey,
    imported: bool,
) -> Result<Option<LicenseKeyRecord>, HandleError> {
    let new = NewLicenseKey {
        id: Uuid::now_v7(),
        brand_id,
        customer_email: email,
        key_hash: &key.hash(),
        key_hint: &key.hint(),
        imported,
        created_at: ctx.now,
    };
    match licenses::insert_key(conn, &new).await {
        Ok(record) => Ok(Some(record)),
        Err(WriteError::Conflict(_)) => Ok(None),
        Err(WriteError::Store(e)) => Err(e.into()),
    }
}

fn license_exists(code: &str) -> HandleError {
    HandleError::rejected(ProblemCode::LicenseExists, format!("The key already holds a license for '{code}'."))
}
