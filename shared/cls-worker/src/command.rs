//! The contract between the shared consumer and a module's use cases.

use chrono::{DateTime, Utc};
use cls_contracts::command::Command;
use cls_contracts::problem::FieldProblem;
use cls_contracts::{Event, Principal, ProblemCode};
use cls_store::StoreError;
use sqlx::PgConnection;
use uuid::Uuid;

/// One command as a use case sees it.
#[derive(Debug, Clone)]
pub struct CommandContext {
    pub command_id: Uuid,
    pub request_id: String,
    pub principal: Principal,
    /// The worker's clock at the start of the transaction; use cases take time from here.
    pub now: DateTime<Utc>,
    pub command: Command,
}

impl CommandContext {
    /// The brand of an API-key principal.
    pub fn brand_id(&self) -> Option<Uuid> {
        match &self.principal {
            Principal::ApiKey { brand_id, .. } => brand_id.parse().ok(),
            _ => None,
        }
    }
}

/// A module's dispatcher: one `match` over its closed command enum, a function per variant.
/// It runs inside a savepoint of the command's transaction.
pub type Dispatch =
    for<'a> fn(&'a mut PgConnection, &'a CommandContext) -> std::pin::Pin<Box<dyn Future<Output = Result<Handled, HandleError>> + Send + 'a>>;

/// A successful command: the HTTP answer plus what the transaction must also record.
#[derive(Debug)]
pub struct Handled {
    pub status: u16,
    pub body: serde_json::Value,
    /// The body holds a secret (a new API key or license key): it is sealed at rest.
    pub secret: bool,
    pub events: Vec<NewEvent>,
    pub audit: Vec<Audit>,
    /// What the command changed that hot reads show: the consumer draws new read-model versions
    /// for them in the transaction and makes them visible before it replies 2xx.
    pub touched: Vec<Touched>,
}

/// An entity whose read-model documents a change invalidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Touched {
    /// A license key (its hash, hint or owner changed, or a license was added to it).
    LicenseKey(Uuid),
    /// A license or its activations (the key that holds it is refreshed).
    License(Uuid),
    /// An API key (created or revoked).
    ApiKey(Uuid),
    /// A license key whose read-model version the use case drew itself, in the statement that
    /// made the change and after locking the license rows it changed (the order
    /// [`crate::visibility::draw_versions`] keeps): one round trip fewer on a hot path.
    DrawnKey { id: Uuid, version: i64 },
}

/// An event to append to the outbox; the consumer fills in the envelope.
#[derive(Debug)]
pub struct NewEvent {
    pub brand_id: Option<Uuid>,
    pub aggregate_id: Uuid,
    pub aggregate_version: i64,
    pub event: Event,
}

/// An audit entry; the consumer fills in who (from the principal), the request and the time.
#[derive(Debug)]
pub struct Audit {
    pub brand_id: Option<Uuid>,
    pub action: &'static str,
    pub target_type: &'static str,
    pub target_id: Uuid,
    pub status_before: Option<String>,
    pub status_after: Option<String>,
    pub reason: Option<String>,
}

/// Why a command did not succeed, classified into the three things a worker can do about it.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// A business rule said no (4xx): the outcome is stored, replayed on retries, and nothing
    /// else the use case wrote is kept.
    #[error("rejected: {code:?}: {detail}")]
    Rejected {
        code: ProblemCode,
        detail: String,
        errors: Vec<FieldProblem>,
        extra: serde_json::Map<String, serde_json::Value>,
    },
    /// Worth retrying later (database briefly down, serialization failure).
    #[error("transient failure")]
    Transient(#[source] anyhow::Error),
    /// A bug or a malformed command: dead-letter it.
    #[error("fatal failure")]
    Fatal(#[source] anyhow::Error),
}

impl HandleError {
    pub fn rejected(code: ProblemCode, detail: impl Into<String>) -> Self {
        HandleError::Rejected { code, detail: detail.into(), errors: Vec::new(), extra: serde_json::Map::new() }
    }

    /// A 400 for one field.
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        let errors = vec![FieldProblem { field: field.to_owned(), message: message.into() }];
        HandleError::Rejected {
            code: ProblemCode::InvalidRequest,
            detail: format!("{field} is invalid"),
            errors,
            extra: serde_json::Map::new(),
        }
    }

    /// A command whose fields do not parse although the gateway validated them.
    pub fn malformed(what: impl std::fmt::Display) -> Self {
        HandleError::Fatal(anyhow::anyhow!("malformed command: {what}"))
    }
}

impl From<StoreError> for HandleError {
    fn from(e: StoreError) -> Self {
        if e.is_transient() { HandleError::Transient(e.into()) } else { HandleError::Fatal(e.into()) }
    }
}

impl From<sqlx::Error> for HandleError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::from(e).into()
    }
}
