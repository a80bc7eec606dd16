//! RFC 9457 problem details with the stable code enum of SPEC §3.

use serde::{Deserialize, Serialize};

/// The stable error codes of SPEC §3. Clients branch on these, so they never change meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ProblemCode {
    InvalidRequest,
    Unauthenticated,
    Forbidden,
    NotFound,
    ProductNotFound,
    LicenseKeyNotFound,
    NoLicenseForProduct,
    ActivationNotFound,
    OperationNotFound,
    MethodNotAllowed,
    BrandExists,
    ProductExists,
    LicenseExists,
    KeyExists,
    KeyEmailMismatch,
    InvalidTransition,
    SeatsInUse,
    SeatLimitReached,
    LicenseSuspended,
    LicenseCancelled,
    LicenseExpired,
    PayloadTooLarge,
    UnsupportedMediaType,
    IdempotencyKeyReused,
    RateLimited,
    Internal,
    Unavailable,
}

impl ProblemCode {
    pub fn status(self) -> u16 {
        use ProblemCode::*;
        match self {
            InvalidRequest => 400,
            Unauthenticated => 401,
            Forbidden => 403,
            NotFound | ProductNotFound | LicenseKeyNotFound | NoLicenseForProduct
            | ActivationNotFound | OperationNotFound => 404,
            MethodNotAllowed => 405,
            BrandExists | ProductExists | LicenseExists | KeyExists | KeyEmailMismatch
            | InvalidTransition | SeatsInUse | SeatLimitReached | LicenseSuspended
            | LicenseCancelled | LicenseExpired => 409,
            PayloadTooLarge => 413,
            UnsupportedMediaType => 415,
            IdempotencyKeyReused => 422,
            RateLimited => 429,
            Internal => 500,
            Unavailable => 503,
        }
    }

    pub fn as_str(self) -> &'static str {
        use ProblemCode::*;
        match self {
            InvalidRequest => "INVALID_REQUEST",
            Unauthenticated => "UNAUTHENTICATED",
            Forbidden => "FORBIDDEN",
            NotFound => "NOT_FOUND",
            ProductNotFound => "PRODUCT_NOT_FOUND",
            LicenseKeyNotFound => "LICENSE_KEY_NOT_FOUND",
            NoLicenseForProduct => "NO_LICENSE_FOR_PRODUCT",
            ActivationNotFound => "ACTIVATION_NOT_FOUND",
            OperationNotFound => "OPERATION_NOT_FOUND",
            MethodNotAllowed => "METHOD_NOT_ALLOWED",
            BrandExists => "BRAND_EXISTS",
            ProductExists => "PRODUCT_EXISTS",
            LicenseExists => "LICENSE_EXISTS",
            KeyExists => "KEY_EXISTS",
            KeyEmailMismatch => "KEY_EMAIL_MISMATCH",
            InvalidTransition => "INVALID_TRANSITION",
            SeatsInUse => "SEATS_IN_USE",
            SeatLimitReached => "SEAT_LIMIT_REACHED",
            LicenseSuspended => "LICENSE_SUSPENDED",
            LicenseCancelled => "LICENSE_CANCELLED",
            LicenseExpired => "LICENSE_EXPIRED",
            PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            UnsupportedMediaType => "UNSUPPORTED_MEDIA_TYPE",
            IdempotencyKeyReused => "IDEMPOTENCY_KEY_REUSED",
            RateLimited => "RATE_LIMITED",
            Internal => "INTERNAL",
            Unavailable => "UNAVAILABLE",
        }
    }

    /// A short human title, the same for every occurrence of the code.
    pub fn title(self) -> &'static str {
        use ProblemCode::*;
        match self {
            InvalidRequest => "The request is invalid",
            Unauthenticated => "Authentication is required",
            Forbidden => "The credential lacks the required scope",
            NotFound => "Not found",
            ProductNotFound => "Product not found",
            LicenseKeyNotFound => "License key not found",
            NoLicenseForProduct => "The key has no license for this product",
            ActivationNotFound => "Activation not found",
            OperationNotFound => "Operation not found",
            MethodNotAllowed => "Method not allowed",
            BrandExists => "A brand with this slug or key prefix exists",
            ProductExists => "A product with this code exists",
            LicenseExists => "The key already holds a license for this product",
            KeyExists => "This license key exists",
            KeyEmailMismatch => "The license key belongs to another email",
            InvalidTransition => "The license cannot make this transition",
            SeatsInUse => "More seats are in use than the new limit",
            SeatLimitReached => "Every seat of the license is in use",
            LicenseSuspended => "The license is suspended",
            LicenseCancelled => "The license is cancelled",
            LicenseExpired => "The license is expired",
            PayloadTooLarge => "The request body is too large",
            UnsupportedMediaType => "The request body must be application/json",
            IdempotencyKeyReused => "The idempotency key was used with another request",
            RateLimited => "Too many requests",
            Internal => "Internal error",
            Unavailable => "The service is temporarily unavailable",
        }
    }
}

/// One invalid field of a 400.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldProblem {
    pub field: String,
    pub message: String,
}

/// An `application/problem+json` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    pub code: ProblemCode,
    pub request_id: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldProblem>,
    /// Extra members for codes that carry data (e.g. the active activations of a full license).
    #[serde(flatten, default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Problem {
    pub fn new(code: ProblemCode, detail: impl Into<String>, request_id: impl Into<String>) -> Self {
        Problem {
            type_uri: format!("https://cls.dev/problems/{}", code.as_str().to_ascii_lowercase().replace('_', "-")),
            title: code.title().to_owned(),
            status: code.status(),
            detail: detail.into(),
            code,
            request_id: request_id.into(),
            errors: Vec::new(),
            extra: serde_json::Map::new(),
        }
    }

    /// A 400 listing each invalid field.
    pub fn invalid(errors: Vec<FieldProblem>, request_id: impl Into<String>) -> Self {
        let detail = match errors.as_slice() {
            [one] => format!("{}: {}", one.field, one.message),
            _ => format!("{} fields are invalid", errors.len()),
        };
        Problem { errors, ..Problem::new(ProblemCode::InvalidRequest, detail, request_id) }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a problem always serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialize_as_their_stable_names() {
        for code in [ProblemCode::InvalidRequest, ProblemCode::SeatLimitReached, ProblemCode::IdempotencyKeyReused] {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }

    #[test]
    fn problem_has_the_rfc_9457_members() {
        let p = Problem::invalid(
            vec![FieldProblem { field: "slug".into(), message: "too short".into() }],
            "req-1",
        );
        let v: serde_json::Value = serde_json::from_str(&p.to_json()).unwrap();
        for member in ["type", "title", "status", "detail", "code", "request_id", "errors"] {
            assert!(v.get(member).is_some(), "missing {member}");
        }
        assert_eq!(v["status"], 400);
        assert_eq!(v["code"], "INVALID_REQUEST");
    }
}
