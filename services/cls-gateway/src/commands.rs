//! Turning a write request into a command: parse the JSON body, validate every field into domain
//! types (collecting every error for one 400), and emit the normalized command.

use cls_contracts::command::{
    Activate, ActivationsCommand, BrandsCommand, Cancel, ChangeSeats, Command, CreateApiKey, CreateBrand, CreateProduct, Deactivate,
    KeyChoice, LicensesCommand, Provision, ProvisionItem, Release, Renew, Resume, RevokeApiKey, RotateKey, Setting, Suspend,
    TransferKey,
};
use cls_contracts::http::{
    ActivateRequest, CreateApiKeyRequest, CreateBrandRequest, CreateProductRequest, DeactivateRequest, ProvisionRequest, ReasonRequest,
    RenewRequest, SeatsRequest, TransferRequest,
};
use cls_contracts::{Principal, ProblemCode};
use cls_contracts::problem::FieldProblem;
use cls_domain::{
    ApiKeyName, Email, InstanceId, LicenseKey, BrandName, BrandSlug, DEFAULT_DURATION_DAYS, DEFAULT_SEAT_LIMIT, DurationDays, FieldError, KeyPrefix, ProductCode,
    ProductName, Scopes, SeatLimit,
};
use chrono::Datelike;
use serde::de::DeserializeOwned;
use uuid::Uuid;

/// Why a request is not a valid command.
pub enum Invalid {
    /// 400 with the invalid fields.
    Fields(Vec<FieldProblem>),
    /// 404: a path id that cannot exist.
    NotFound,
    /// 404 with a specific code.
    NotFoundAs(ProblemCode),
}

/// Most products one provisioning may carry (SPEC §3).
const MAX_PROVISION_ITEMS: usize = 20;

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
    // serde's derived structs also take a JSON array (fields by position): a body is an object.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        let message = if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok() { "must be a JSON object" } else { "is not valid JSON" };
        return Err(Invalid::Fields(vec![FieldProblem { field: "body".to_owned(), message: message.to_owned() }]));
    }
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

pub fn provision(brand_id: &str, body: &[u8]) -> Result<Command, Invalid> {
    let req: ProvisionRequest = parse_json(body)?;
    let mut f = Fields::default();
    let email = f.check("customer_email", Email::parse(&req.customer_email));
    if req.products.is_empty() || req.products.len() > MAX_PROVISION_ITEMS {
        f.0.push(FieldProblem { field: "products".into(), message: format!("must hold 1 to {MAX_PROVISION_ITEMS} products") });
    }
    let mut items = Vec::with_capacity(req.products.len());
    let mut seen = std::collections::HashSet::new();
    for (i, item) in req.products.iter().enumerate() {
        let code = f.check(&format!("products[{i}].code"), ProductCode::parse(&item.code));
        if let Some(code) = &code
            && !seen.insert(code.as_str().to_owned())
        {
            f.0.push(FieldProblem { field: format!("products[{i}].code"), message: "appears twice; codes must be distinct".into() });
        }
        let seat_limit = match item.seat_limit {
            None => Some(Setting::Default),
            Some(None) => Some(Setting::None),
            Some(Some(n)) => f.check(&format!("products[{i}].seat_limit"), SeatLimit::new(n)).map(|s| Setting::Value(s.get())),
        };
        let expires_at = match &item.expires_at {
            None => Some(Setting::Default),
            Some(None) => Some(Setting::None),
            Some(Some(s)) => match utc_time(s) {
                Some(t) => Some(Setting::Value(t)),
                None => {
                    f.0.push(FieldProblem { field: format!("products[{i}].expires_at"), message: TIME_RULE.into() });
                    None
                }
            },
        };
        if let (Some(code), Some(seat_limit), Some(expires_at)) = (code, seat_limit, expires_at) {
            items.push(ProvisionItem { code: code.into_inner(), seat_limit, expires_at });
        }
    }
    let new_key = req.new_key.unwrap_or(false);
    let key = match (&req.license_key_id, &req.import_key) {
        (Some(_), _) if new_key || req.import_key.is_some() => {
            f.0.push(FieldProblem { field: "license_key_id".into(), message: "cannot be combined with new_key or import_key".into() });
            None
        }
        (Some(id), None) => Some(KeyChoice::Existing { license_key_id: id.clone() }),
        (None, Some(key)) => f.check("import_key", LicenseKey::parse_import(key)).map(|k| KeyChoice::Import { key: k.expose().to_owned() }),
        (None, None) if new_key => Some(KeyChoice::New),
        (None, None) => Some(KeyChoice::Latest),
        (Some(_), Some(_)) => unreachable!("handled by the first arm"),
    };
    f.finish(|| {
        Some(Command::Licenses(LicensesCommand::Provision(Provision {
            brand_id: brand_id.to_owned(),
            customer_email: email?.into_inner(),
            products: items,
            key: key?,
        })))
    })
}

/// What a time field must be.
const TIME_RULE: &str = "must be an RFC 3339 time in the years 0001-9999 (UTC)";

/// An RFC 3339 time in the UTC form every message carries, within the years 0001-9999: a later
/// year has no RFC 3339 form and PostgreSQL writes year 0 as `0001 BC`, so answers, events and
/// the read model could not carry either.
fn utc_time(s: &str) -> Option<String> {
    let t = cls_contracts::parse_time(s).filter(|t| (1..=9999).contains(&t.year()))?;
    Some(cls_contracts::format_time(t))
}

/// Longest free-text reason kept on a suspension or cancellation.
const MAX_REASON_CHARS: usize = 500;
/// Largest activation metadata object (SPEC §3).
const MAX_METADATA_BYTES: usize = 4 * 1024;

fn license_id(id: &str) -> Result<String, Invalid> {
    id.parse::<Uuid>().map(|u| u.to_string()).map_err(|_| Invalid::NotFound)
}

fn optional_json<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, Invalid> {
    if body.iter().all(u8::is_ascii_whitespace) { Ok(T::default()) } else { parse_json(body) }
}

fn reason(f: &mut Fields, reason: Option<String>) -> Option<Option<String>> {
    match reason.map(|r| r.trim().to_owned()).filter(|r| !r.is_empty()) {
        Some(r) if r.chars().count() > MAX_REASON_CHARS || r.chars().any(char::is_control) => {
            f.0.push(FieldProblem { field: "reason".into(), message: format!("must be at most {MAX_REASON_CHARS} characters, no control characters") });
            None
        }
        r => Some(r),
    }
}

pub fn renew(brand_id: &str, id: &str, body: &[u8]) -> Result<Command, Invalid> {
    let license_id = license_id(id)?;
    let req: RenewRequest = parse_json(body)?;
    let mut f = Fields::default();
    let (expires_at, extend_days) = match (&req.expires_at, req.extend_days) {
        (Some(at), None) => match utc_time(at) {
            Some(t) => (Some(t), None),
            None => {
                f.0.push(FieldProblem { field: "expires_at".into(), message: TIME_RULE.into() });
                (None, None)
            }
        },
        (None, Some(days)) => (None, f.check("extend_days", DurationDays::new(days)).map(|d| d.get())),
        _ => {
            f.0.push(FieldProblem { field: "body".into(), message: "give exactly one of expires_at and extend_days".into() });
            (None, None)
        }
    };
    f.finish(|| {
        Some(Command::Licenses(LicensesCommand::Renew(Renew { brand_id: brand_id.to_owned(), license_id, expires_at, extend_days })))
    })
}

pub fn suspend(brand_id: &str, id: &str, body: &[u8]) -> Result<Command, Invalid> {
    let license_id = license_id(id)?;
    let req: ReasonRequest = optional_json(body)?;
    let mut f = Fields::default();
    let reason = reason(&mut f, req.reason);
    f.finish(|| Some(Command::Licenses(LicensesCommand::Suspend(Suspend { brand_id: brand_id.to_owned(), license_id, reason: reason? }))))
}

pub fn resume(brand_id: &str, id: &str, body: &[u8]) -> Result<Command, Invalid> {
    let license_id = license_id(id)?;
    let _: serde_json::Map<String, serde_json::Value> = optional_json(body)?;
    Ok(Command::Licenses(LicensesCommand::Resume(Resume { brand_id: brand_id.to_owned(), license_id })))
}

pub fn cancel(brand_id: &str, id: &str, body: &[u8]) -> Result<Command, Invalid> {
    let license_id = license_id(id)?;
    let req: ReasonRequest = optional_json(body)?;
    let mut f = Fields::default();
    let reason = reason(&mut f, req.reason);
    f.finish(|| Some(Command::Licenses(LicensesCommand::Cancel(Cancel { brand_id: brand_id.to_owned(), license_id, reason: reason? }))))
}

pub fn change_seats(brand_id: &str, id: &str, body: &[u8]) -> Result<Command, Invalid> {
    let license_id = license_id(id)?;
    let req: SeatsRequest = parse_json(body)?;
    let mut f = Fields::default();
    let seat_limit = match req.seat_limit {
        None => {
            f.0.push(FieldProblem { field: "seat_limit".into(), message: "is required (a whole number >= 1, or null for unlimited)".into() });
            None
        }
        Some(None) => Some(None),
        Some(Some(n)) => f.check("seat_limit", SeatLimit::new(n)).map(|s| Some(s.get())),
    };
    f.finish(|| {
        Some(Command::Licenses(LicensesCommand::ChangeSeats(ChangeSeats { brand_id: brand_id.to_owned(), license_id, seat_limit: seat_limit? })))
    })
}

pub fn rotate_key(brand_id: &str, id: &str, body: &[u8]) -> Result<Command, Invalid> {
    let license_key_id = id.parse::<Uuid>().map_err(|_| Invalid::NotFoundAs(ProblemCode::LicenseKeyNotFound))?.to_string();
    let _: serde_json::Map<String, serde_json::Value> = optional_json(body)?;
    Ok(Command::Licenses(LicensesCommand::RotateKey(RotateKey { brand_id: brand_id.to_owned(), license_key_id })))
}

pub fn transfer_key(brand_id: &str, id: &str, body: &[u8]) -> Result<Command, Invalid> {
    let license_key_id = id.parse::<Uuid>().map_err(|_| Invalid::NotFoundAs(ProblemCode::LicenseKeyNotFound))?.to_string();
    let req: TransferRequest = parse_json(body)?;
    let mut f = Fields::default();
    let email = f.check("customer_email", Email::parse(&req.customer_email));
    f.finish(|| {
        Some(Command::Licenses(LicensesCommand::TransferKey(TransferKey {
            brand_id: brand_id.to_owned(),
            license_key_id,
            customer_email: email?.into_inner(),
        })))
    })
}

pub fn release_activation(brand_id: &str, id: &str) -> Result<Command, Invalid> {
    let activation_id = id.parse::<Uuid>().map_err(|_| Invalid::NotFoundAs(ProblemCode::ActivationNotFound))?.to_string();
    Ok(Command::Activations(ActivationsCommand::Release(Release { brand_id: brand_id.to_owned(), activation_id })))
}

/// A product route's principal is its license key, known only once the body is parsed.
fn key_principal(f: &mut Fields, key: &str) -> Option<(String, Principal)> {
    f.check("license_key", LicenseKey::parse(key)).map(|k| {
        let hash = k.hash().into_inner();
        (hash.clone(), Principal::LicenseKey { key_hash: hash })
    })
}

pub fn activate(body: &[u8]) -> Result<(Command, Principal), Invalid> {
    let req: ActivateRequest = parse_json(body)?;
    let mut f = Fields::default();
    let key = key_principal(&mut f, &req.license_key);
    let product = f.check("product", ProductCode::parse(&req.product));
    let instance = f.check("instance_id", InstanceId::parse(&req.instance_id));
    let name = match req.instance_name.map(|n| n.trim().to_owned()).filter(|n| !n.is_empty()) {
        Some(n) if n.chars().count() > 255 || n.chars().any(char::is_control) => {
            f.0.push(FieldProblem { field: "instance_name".into(), message: "must be at most 255 characters, no control characters".into() });
            None
        }
        n => Some(n),
    };
    let metadata = match req.metadata {
        None | Some(serde_json::Value::Null) => Some(None),
        Some(v @ serde_json::Value::Object(_)) => {
            let text = v.to_string();
            if has_nul(&v) {
                f.0.push(FieldProblem { field: "metadata".into(), message: "must not contain the character U+0000".into() });
                None
            } else if text.len() > MAX_METADATA_BYTES {
                f.0.push(FieldProblem { field: "metadata".into(), message: "must be at most 4 KiB".into() });
                None
            } else {
                Some(Some(text))
            }
        }
        Some(_) => {
            f.0.push(FieldProblem { field: "metadata".into(), message: "must be a JSON object".into() });
            None
        }
    };
    f.finish(|| {
        let (key_hash, principal) = key?;
        let command = Command::Activations(ActivationsCommand::Activate(Activate {
            key_hash,
            product: product?.into_inner(),
            instance_id: instance?.into_inner(),
            instance_name: name?,
            metadata: metadata?,
        }));
        Some((command, principal))
    })
}

pub fn deactivate(body: &[u8]) -> Result<(Command, Principal), Invalid> {
    let req: DeactivateRequest = parse_json(body)?;
    let mut f = Fields::default();
    let key = key_principal(&mut f, &req.license_key);
    let product = f.check("product", ProductCode::parse(&req.product));
    let instance = f.check("instance_id", InstanceId::parse(&req.instance_id));
    f.finish(|| {
        let (key_hash, principal) = key?;
        let command = Command::Activations(ActivationsCommand::Deactivate(Deactivate {
            key_hash,
            product: product?.into_inner(),
            instance_id: instance?.into_inner(),
        }));
        Some((command, principal))
    })
}

/// `POST /v1/license-keys/validate`: 1-64 characters of key; an instance needs a product. A key
/// of the right length that cannot be a key is simply not found (`key_hash: None`).
pub fn validate(body: &[u8]) -> Result<cls_contracts::internal::ValidateKey, Invalid> {
    let req: cls_contracts::http::ValidateRequest = parse_json(body)?;
    let mut f = Fields::default();
    let length = req.license_key.trim().chars().count();
    if !(1..=64).contains(&length) {
        f.0.push(FieldProblem { field: "license_key".into(), message: "must be 1-64 characters".into() });
    }
    let product = match &req.product {
        Some(p) => f.check("product", ProductCode::parse(p)).map(|p| Some(p.into_inner())),
        None => Some(None),
    };
    let instance = match (&req.instance_id, &req.product) {
        (Some(_), None) => {
            f.0.push(FieldProblem { field: "instance_id".into(), message: "needs a product".into() });
            None
        }
        (Some(i), Some(_)) => f.check("instance_id", InstanceId::parse(i)).map(|i| Some(i.into_inner())),
        (None, _) => Some(None),
    };
    f.finish(|| {
        Some(cls_contracts::internal::ValidateKey {
            key_hash: LicenseKey::parse(&req.license_key).ok().map(|k| k.hash().into_inner()),
            product: product?,
            instance_id: instance?,
        })
    })
}

/// Whether any key or string in the value holds U+0000, which Postgres text and jsonb cannot
/// store.
fn has_nul(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(has_nul),
        serde_json::Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}
