//! Turning a write request into a command: parse the JSON body, validate every field into domain
//! types (collecting every error for one 400), and emit the normalized command.

use cls_contracts::command::{BrandsCommand, Command, CreateApiKey, CreateBrand, CreateProduct, RevokeApiKey};
use cls_contracts::http::{CreateApiKeyRequest, CreateBrandRequest, CreateProductRequest};
use cls_contracts::problem::FieldProblem;
use cls_domain::{
    ApiKeyName, BrandName, BrandSlug, DEFAULT_DURATION_DAYS, DEFAULT_SEAT_LIMIT, DurationDays, FieldError, KeyPrefix, ProductCode,
    ProductName, Scopes, SeatLimit,
};
use serde::de::DeserializeOwned;
use uuid::Uuid;

/// Why a request is not a valid command.
pub enum Invalid {
    /// 400 with the invalid fields.
    Fields(Vec<FieldProblem>),
    /// 404: a path id that cannot exist.
    NotFound,
}

/// Collects field errors so the caller sees all of them at once.
#[derive(Default)]
struct Fields(Vec<FieldProblem>);

impl Fields {
    fn check<T>(&mut self, field: &str, result: Result<T, FieldError>) -> Option<T> {
        result.map_err(|e| self.0.push(FieldProblem { field: field.to_owned(), message: e.message })).ok()
    }

    fn finish<T>(self, build: impl FnOnce() -> Option<T>) -> Result<T, Invalid> {
        if self.0.is_empty() { build().ok_or(Invalid::Fields(vec![])) } else { Err(Invalid::Fields(self.0)) }
    }
}

pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, Invalid> {
    serde_json::from_slice(body).map_err(|e| {
        let message = match e.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => "is not valid JSON".to_owned(),
            // Data errors name the field and the expected type, never our internals.
            _ => e.to_string().split(" at line ").next().unwrap_or("is invalid").to_owned(),
        };
        Invalid::Fields(vec![FieldProblem { field: "body".to_owned(), message }])
    })
}

pub fn create_brand(body: &[u8]) -> Result<Command, Invalid> {
    let req: CreateBrandRequest = parse_json(body)?;
    let mut f = Fields::default();
    let slug = f.check("slug", BrandSlug::parse(&req.slug));
    let name = f.check("name", BrandName::parse(&req.name));
    let prefix = f.check("key_prefix", KeyPrefix::parse(&req.key_prefix));
    f.finish(|| {
        Some(Command::Brands(BrandsCommand::CreateBrand(CreateBrand {
            slug: slug?.into_inner(),
            name: name?.into_inner(),
            key_prefix: prefix?.into_inner(),
        })))
    })
}

pub fn create_api_key(brand_id: &str, body: &[u8]) -> Result<Command, Invalid> {
    let brand_id: Uuid = brand_id.parse().map_err(|_| Invalid::NotFound)?;
    let req: CreateApiKeyRequest = parse_json(body)?;
    let mut f = Fields::default();
    let name = f.check("name", ApiKeyName::parse(&req.name));
    let scopes = match &req.scopes {
        Some(list) => f.check("scopes", Scopes::parse_list(list)),
        None => Some(Scopes::default_for_new_key()),
    };
    f.finish(|| {
        Some(Command::Brands(BrandsCommand::CreateApiKey(CreateApiKey {
            brand_id: brand_id.to_string(),
            name: name?.into_inner(),
            scopes: scopes?.to_strings(),
        })))
    })
}

pub fn revoke_api_key(api_key_id: &str) -> Result<Command, Invalid> {
    let id: Uuid = api_key_id.parse().map_err(|_| Invalid::NotFound)?;
    Ok(Command::Brands(BrandsCommand::RevokeApiKey(RevokeApiKey { api_key_id: id.to_string() })))
}

pub fn create_product(brand_id: &str, body: &[u8]) -> Result<Command, Invalid> {
    let req: CreateProductRequest = parse_json(body)?;
    let mut f = Fields::default();
    let code = f.check("code", ProductCode::parse(&req.code));
    let name = f.check("name", ProductName::parse(&req.name));
    // Absent means the default; an explicit null means none (unlimited / perpetual).
    let seats = match req.default_seat_limit {
        None => Some(Some(DEFAULT_SEAT_LIMIT)),
        Some(None) => Some(None),
        Some(Some(n)) => f.check("default_seat_limit", SeatLimit::new(n)).map(|s| Some(s.get())),
    };
    let days = match req.default_duration_days {
        None => Some(Some(DEFAULT_DURATION_DAYS)),
        Some(None) => Some(None),
        Some(Some(n)) => f.check("default_duration_days", DurationDays::new(n)).map(|d| Some(d.get())),
    };
    f.finish(|| {
        Some(Command::Brands(BrandsCommand::CreateProduct(CreateProduct {
            brand_id: brand_id.to_owned(),
            code: code?.into_inner(),
            name: name?.into_inner(),
            default_seat_limit: seats?,
            default_duration_days: days?,
        })))
    })
}
