//! The command envelope (gateway → worker) and the reply (worker → gateway).
//!
//! Commands are a closed enum per module; adding a variant fails to compile in the worker that
//! must handle it. On the wire a command is `{module, command: {type, data}}` inside the envelope.

use serde::{Deserialize, Serialize};

/// Major version of the command envelope. A worker dead-letters any other version.
pub const COMMAND_SCHEMA_VERSION: u16 = 1;

/// The write modules, each with its own command queue and worker binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Module {
    Brands,
    Licenses,
    Activations,
}

impl Module {
    pub const ALL: [Module; 3] = [Module::Brands, Module::Licenses, Module::Activations];

    pub fn as_str(self) -> &'static str {
        match self {
            Module::Brands => "brands",
            Module::Licenses => "licenses",
            Module::Activations => "activations",
        }
    }

    pub fn parse(s: &str) -> Option<Module> {
        Module::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

/// Who sent a command or a read, as the gateway authenticated it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Principal {
    /// The operator, with the admin token.
    Admin,
    /// A brand system, with one of the brand's API keys.
    ApiKey { api_key_id: String, brand_id: String, scopes: Vec<String> },
    /// An end-user product; the license key (by hash) is its only credential.
    LicenseKey { key_hash: String },
}

impl Principal {
    /// The idempotency and operation scope: the brand (not the individual API key), the
    /// operator, or the license key.
    pub fn scope(&self) -> String {
        match self {
            Principal::Admin => "admin".to_owned(),
            Principal::ApiKey { brand_id, .. } => format!("brand:{brand_id}"),
            Principal::LicenseKey { key_hash } => format!("license_key:{key_hash}"),
        }
    }
}

/// What the gateway publishes to `<ns>.commands` with routing key `<module>.<command>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandEnvelope {
    /// UUID; also the operation id and the AMQP `message_id`. Derived from the
    /// `Idempotency-Key` when the caller sent one, so retries carry the same id.
    pub command_id: String,
    pub schema_version: u16,
    /// The HTTP request id; becomes the events' `correlation_id`.
    pub request_id: String,
    pub principal: Principal,
    /// When the gateway accepted the request (RFC 3339).
    pub issued_at: String,
    /// SHA-256 (hex) of (method, path, body as parsed): the same idempotency key with another
    /// request gets 422.
    pub request_hash: String,
    pub command: Command,
}

/// Every command, grouped by the module that owns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "module", content = "command", rename_all = "snake_case")]
pub enum Command {
    Brands(BrandsCommand),
    Licenses(LicensesCommand),
    Activations(ActivationsCommand),
}

impl Command {
    pub fn module(&self) -> Module {
        match self {
            Command::Brands(_) => Module::Brands,
            Command::Licenses(_) => Module::Licenses,
            Command::Activations(_) => Module::Activations,
        }
    }

    /// The routing key on `<ns>.commands`: `<module>.<command>`.
    pub fn routing_key(&self) -> &'static str {
        match self {
            Command::Brands(c) => match c {
                BrandsCommand::CreateBrand(_) => "brands.create_brand",
                BrandsCommand::CreateApiKey(_) => "brands.create_api_key",
                BrandsCommand::RevokeApiKey(_) => "brands.revoke_api_key",
                BrandsCommand::CreateProduct(_) => "brands.create_product",
            },
            Command::Licenses(c) => match c {
                LicensesCommand::Provision(_) => "licenses.provision",
                LicensesCommand::Renew(_) => "licenses.renew",
                LicensesCommand::Suspend(_) => "licenses.suspend",
                LicensesCommand::Resume(_) => "licenses.resume",
                LicensesCommand::Cancel(_) => "licenses.cancel",
                LicensesCommand::ChangeSeats(_) => "licenses.change_seats",
                LicensesCommand::RotateKey(_) => "licenses.rotate_key",
                LicensesCommand::TransferKey(_) => "licenses.transfer_key",
            },
            Command::Activations(c) => match c {
                ActivationsCommand::Activate(_) => "activations.activate",
                ActivationsCommand::Deactivate(_) => "activations.deactivate",
                ActivationsCommand::Release(_) => "activations.release",
            },
        }
    }
}

/// Commands of the brands module. Field values were validated and normalized by the gateway;
/// the worker parses them into domain types again and dead-letters a command that does not parse.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum BrandsCommand {
    CreateBrand(CreateBrand),
    CreateApiKey(CreateApiKey),
    RevokeApiKey(RevokeApiKey),
    CreateProduct(CreateProduct),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateBrand {
    pub slug: String,
    pub name: String,
    pub key_prefix: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateApiKey {
    pub brand_id: String,
    pub name: String,
    pub scopes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RevokeApiKey {
    pub api_key_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateProduct {
    pub brand_id: String,
    pub code: String,
    pub name: String,
    /// Already resolved from "absent" (1) vs `null` (unlimited) by the gateway.
    pub default_seat_limit: Option<u32>,
    /// Already resolved from "absent" (365) vs `null` (perpetual) by the gateway.
    pub default_duration_days: Option<u32>,
}

/// Commands of the licenses module.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum LicensesCommand {
    Provision(Provision),
    Renew(Renew),
    Suspend(Suspend),
    Resume(Resume),
    Cancel(Cancel),
    ChangeSeats(ChangeSeats),
    RotateKey(RotateKey),
    TransferKey(TransferKey),
}

/// US2: a new expiry, given outright or as days added to max(now, current expiry). Exactly one
/// of the two is set (the gateway checks).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Renew {
    pub brand_id: String,
    pub license_id: String,
    pub expires_at: Option<String>,
    pub extend_days: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Suspend {
    pub brand_id: String,
    pub license_id: String,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resume {
    pub brand_id: String,
    pub license_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cancel {
    pub brand_id: String,
    pub license_id: String,
    pub reason: Option<String>,
}

/// A new seat limit; `None` = unlimited.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeSeats {
    pub brand_id: String,
    pub license_id: String,
    pub seat_limit: Option<u32>,
}

/// A new generated key value for the key; the old value stops working at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RotateKey {
    pub brand_id: String,
    pub license_key_id: String,
}

/// The customer changed email address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransferKey {
    pub brand_id: String,
    pub license_key_id: String,
    /// Normalized.
    pub customer_email: String,
}

/// Commands of the activations module. Product routes carry the license key only as its hash
/// (the principal); the key itself never leaves the gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum ActivationsCommand {
    Activate(Activate),
    Deactivate(Deactivate),
    Release(Release),
}

/// US3: take (or confirm) a seat of the key's license for `product` on an instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Activate {
    pub key_hash: String,
    pub product: String,
    /// Normalized instance id.
    pub instance_id: String,
    pub instance_name: Option<String>,
    /// A JSON object (at most 4 KiB) as JSON text.
    pub metadata: Option<String>,
}

/// US5: free the instance's seat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deactivate {
    pub key_hash: String,
    pub product: String,
    pub instance_id: String,
}

/// A brand releases a seat by activation id (`DELETE /v1/activations/{id}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Release {
    pub brand_id: String,
    pub activation_id: String,
}

/// US1: licenses for one customer on one key (SPEC §3 `POST /v1/licenses`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provision {
    pub brand_id: String,
    /// Normalized email.
    pub customer_email: String,
    /// 1-20 items with distinct codes.
    pub products: Vec<ProvisionItem>,
    pub key: KeyChoice,
}

/// Which key the licenses go on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum KeyChoice {
    /// `license_key_id`: this brand's key, whose email must match.
    Existing { license_key_id: String },
    /// `import_key`: a key from the brand's previous system (normalized); 409 if it exists anywhere.
    Import { key: String },
    /// The brand's most recent key for the email, or a new one if there is none.
    Latest,
    /// `new_key: true`: always a new generated key.
    New,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProvisionItem {
    pub code: String,
    pub seat_limit: Setting<u32>,
    /// RFC 3339; may be in the past (imports).
    pub expires_at: Setting<String>,
}

/// A field that may be absent (the product's default), `null` (none: unlimited / perpetual) or
/// a value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Setting<T> {
    Default,
    None,
    Value(T),
}

/// The worker's answer, sent to the RPC `reply_to` after commit, and the stored outcome of the
/// command (what a replay or `GET /v1/operations/{id}` returns).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub command_id: String,
    /// The HTTP status the gateway answers with.
    pub status: u16,
    /// The HTTP body (JSON text); a problem body when `status >= 400`.
    pub body: String,
    /// True when this is a stored outcome sent again (a duplicate command).
    pub replayed: bool,
}
