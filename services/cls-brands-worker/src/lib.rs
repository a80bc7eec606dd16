//! The brands module's worker: brands, API keys and products (SPEC §3 admin routes and
//! `POST /v1/products`). One function per command; [`dispatch`] is the one `match`.

use cls_contracts::command::{BrandsCommand, Command, CreateApiKey, CreateBrand, CreateProduct, RevokeApiKey};
use cls_contracts::event::{self, Event};
use cls_contracts::{ProblemCode, format_time, http};
use cls_domain::{ApiKeyName, ApiKeySecret, BrandName, BrandSlug, KeyPrefix, ProductCode, ProductName, Scopes};
use cls_runtime::{CancellationToken, ServiceKind, Settings};
use cls_store::brands::{self, BrandConflict, NewApiKey, NewBrand, NewProduct};
use cls_store::{PgConnection, WriteError};
use cls_worker::{Audit, CommandContext, HandleError, Handled, NewEvent, Touched, Worker};
use serde_json::json;
use uuid::Uuid;

/// Builds the brands worker (connects, declares the topology, binds the ops listener).
pub async fn build(settings: Settings) -> anyhow::Result<Worker> {
    Worker::build(settings, ServiceKind::BrandsWorker, cls_contracts::Module::Brands, dispatch).await
}

/// Runs a built worker until `shutdown`.
pub async fn run(worker: Worker, shutdown: CancellationToken) -> anyhow::Result<()> {
    worker.run_until_stopped(shutdown).await
}

fn dispatch<'a>(
    conn: &'a mut PgConnection,
    ctx: &'a CommandContext,
) -> std::pin::Pin<Box<dyn Future<Output = Result<Handled, HandleError>> + Send + 'a>> {
    Box::pin(async move {
        let Command::Brands(command) = &ctx.command else {
            return Err(HandleError::malformed("not a brands command"));
        };
        match command {
            BrandsCommand::CreateBrand(c) => create_brand(conn, ctx, c).await,
            BrandsCommand::CreateApiKey(c) => create_api_key(conn, ctx, c).await,
            BrandsCommand::RevokeApiKey(c) => revoke_api_key(conn, ctx, c).await,
            BrandsCommand::CreateProduct(c) => create_product(conn, ctx, c).await,
        }
    })
}

#[tracing::instrument(skip_all, fields(slug = %c.slug))]
async fn create_brand(conn: &mut PgConnection, ctx: &CommandContext, c: &CreateBrand) -> Result<Handled, HandleError> {
    let slug = BrandSlug::parse(&c.slug).map_err(HandleError::malformed)?;
    let name = BrandName::parse(&c.name).map_err(HandleError::malformed)?;
    let key_prefix = KeyPrefix::parse(&c.key_prefix).map_err(HandleError::malformed)?;
    let new = NewBrand { id: Uuid::now_v7(), slug: &slug, name: &name, key_prefix: &key_prefix, created_at: ctx.now };
    let brand = brands::insert_brand(conn, &new).await.map_err(|e| match e {
        WriteError::Conflict(BrandConflict::Slug) => {
            HandleError::rejected(ProblemCode::BrandExists, format!("A brand with slug '{slug}' exists."))
        }
        WriteError::Conflict(BrandConflict::KeyPrefix) => {
            HandleError::rejected(ProblemCode::BrandExists, format!("A brand with key prefix '{key_prefix}' exists."))
        }
        WriteError::Store(e) => e.into(),
    })?;
    let body = http::Brand {
        id: brand.id.to_string(),
        slug: brand.slug.clone(),
        name: brand.name.clone(),
        key_prefix: brand.key_prefix.clone(),
        created_at: format_time(brand.created_at),
    };
    Ok(Handled {
        status: 201,
        body: json!(body),
        secret: false,
        events: vec![NewEvent {
            brand_id: Some(brand.id),
            aggregate_id: brand.id,
            aggregate_version: 1,
            event: Event::BrandCreated(event::BrandCreated {
                brand_id: body.id.clone(),
                slug: body.slug.clone(),
                name: body.name.clone(),
                key_prefix: body.key_prefix.clone(),
                created_at: body.created_at.clone(),
            }),
        }],
        audit: vec![audit(Some(brand.id), "brand.created", "brand", brand.id)],
        touched: vec![],
    })
}

#[tracing::instrument(skip_all, fields(brand_id = %c.brand_id))]
async fn create_api_key(conn: &mut PgConnection, ctx: &CommandContext, c: &CreateApiKey) -> Result<Handled, HandleError> {
    let name = ApiKeyName::parse(&c.name).map_err(HandleError::malformed)?;
    let scopes = Scopes::parse_list(&c.scopes).map_err(HandleError::malformed)?;
    let Some(brand) = parse_id(&c.brand_id) else { return Err(brand_not_found()) };
    if brands::find_brand(conn, brand).await?.is_none() {
        return Err(brand_not_found());
    }
    let secret = ApiKeySecret::generate(&mut rand::rng());
    let hash = secret.hash();
    let display_prefix = secret.display_prefix();
    let new = NewApiKey {
        id: Uuid::now_v7(),
        brand_id: brand,
        name: &name,
        key_hash: &hash,
        display_prefix: &display_prefix,
        scopes: &scopes,
        created_at: ctx.now,
    };
    let key = brands::insert_api_key(conn, &new).await?;
    let body = http::ApiKeyCreated {
        id: key.id.to_string(),
        brand_id: key.brand_id.to_string(),
        name: key.name.clone(),
        api_key: secret.expose().to_owned(),
        display_prefix: key.display_prefix.clone(),
        scopes: key.scopes.clone(),
        created_at: format_time(key.created_at),
    };
    Ok(Handled {
        status: 201,
        body: json!(body),
        secret: true,
        events: vec![NewEvent {
            brand_id: Some(brand),
            aggregate_id: key.id,
            aggregate_version: key.version,
            event: Event::ApiKeyCreated(event::ApiKeyCreated {
                api_key_id: body.id.clone(),
                brand_id: body.brand_id.clone(),
                name: body.name.clone(),
                display_prefix: body.display_prefix.clone(),
                scopes: body.scopes.clone(),
                created_at: body.created_at.clone(),
            }),
        }],
        audit: vec![audit(Some(brand), "api_key.created", "api_key", key.id)],
        touched: vec![Touched::ApiKey(key.id)],
    })
}

#[tracing::instrument(skip_all, fields(api_key_id = %c.api_key_id))]
async fn revoke_api_key(conn: &mut PgConnection, ctx: &CommandContext, c: &RevokeApiKey) -> Result<Handled, HandleError> {
    let not_found = || HandleError::rejected(ProblemCode::NotFound, "No API key with this id.");
    let id = parse_id(&c.api_key_id).ok_or_else(not_found)?;
    let (key, changed) = brands::revoke_api_key(conn, id, ctx.now).await?.ok_or_else(not_found)?;
    // Touched even when already revoked: the answer promises the key is refused from now on.
    let no_content = |events, audit| Handled {
        status: 204,
        body: serde_json::Value::Null,
        secret: false,
        events,
        audit,
        touched: vec![Touched::ApiKey(key.id)],
    };
    if !changed {
        // Revoking twice is a no-op that answers the same.
        return Ok(no_content(vec![], vec![]));
    }
    let revoked_at = key.revoked_at.map(format_time).unwrap_or_default();
    Ok(no_content(
        vec![NewEvent {
            brand_id: Some(key.brand_id),
            aggregate_id: key.id,
            aggregate_version: key.version,
            event: Event::ApiKeyRevoked(event::ApiKeyRevoked {
                api_key_id: key.id.to_string(),
                brand_id: key.brand_id.to_string(),
                revoked_at,
            }),
        }],
        vec![audit(Some(key.brand_id), "api_key.revoked", "api_key", key.id)],
    ))
}

#[tracing::instrument(skip_all, fields(code = %c.code))]
async fn create_product(conn: &mut PgConnection, ctx: &CommandContext, c: &CreateProduct) -> Result<Handled, HandleError> {
    let code = ProductCode::parse(&c.code).map_err(HandleError::malformed)?;
    let name = ProductName::parse(&c.name).map_err(HandleError::malformed)?;
    let brand = ctx.brand_id().filter(|b| b.to_string() == c.brand_id).ok_or_else(|| {
        HandleError::malformed("the product's brand is not the caller's brand")
    })?;
    let new = NewProduct {
        id: Uuid::now_v7(),
        brand_id: brand,
        code: &code,
        name: &name,
        default_seat_limit: c.default_seat_limit,
        default_duration_days: c.default_duration_days,
        created_at: ctx.now,
    };
    let product = brands::insert_product(conn, &new).await.map_err(|e| match e {
        WriteError::Conflict(_) => {
            HandleError::rejected(ProblemCode::ProductExists, format!("A product with code '{code}' exists."))
        }
        WriteError::Store(e) => e.into(),
    })?;
    let body = cls_store::views::product(&product);
    Ok(Handled {
        status: 201,
        body: json!(body),
        secret: false,
        events: vec![NewEvent {
            brand_id: Some(brand),
            aggregate_id: product.id,
            aggregate_version: 1,
            event: Event::ProductCreated(event::ProductCreated {
                product_id: body.id.clone(),
                brand_id: brand.to_string(),
                code: body.code.clone(),
                name: body.name.clone(),
                default_seat_limit: body.default_seat_limit,
                default_duration_days: body.default_duration_days,
                created_at: body.created_at.clone(),
            }),
        }],
        audit: vec![audit(Some(brand), "product.created", "product", product.id)],
        touched: vec![],
    })
}

fn audit(brand_id: Option<Uuid>, action: &'static str, target_type: &'static str, target_id: Uuid) -> Audit {
    Audit { brand_id, action, target_type, target_id, status_before: None, status_after: None, reason: None }
}

fn parse_id(s: &str) -> Option<Uuid> {
    s.parse().ok()
}

fn brand_not_found() -> HandleError {
    HandleError::rejected(ProblemCode::NotFound, "No brand with this id.")
}
