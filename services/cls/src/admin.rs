//! `cls brand create`: a brand and its first API key through the gateway's admin API
//! (SPEC §3 "Admin"), so a new user is set up in one command.
//!
//! Both requests carry an `Idempotency-Key` derived from the arguments, so re-running the same
//! command replays the first outcome (the API key included) instead of failing or creating a
//! second key. A 202 is followed by polling the operation until it settles.

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use cls_contracts::http::{Accepted, ApiKeyCreated, Brand, Operation, OperationStatus};
use cls_contracts::problem::FieldProblem;
use cls_runtime::Secret;
use hyper::{Method, StatusCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::time::Instant;
use uuid::Uuid;

use crate::http::{self, Answer, Client};

/// How long a 202 is polled before giving up.
const OPERATION_DEADLINE: Duration = Duration::from_secs(30);
const OPERATION_POLL: Duration = Duration::from_millis(250);

/// What the user asked for.
#[derive(Debug)]
pub struct NewBrand {
    pub slug: String,
    pub name: String,
    pub key_prefix: String,
    pub api_key_name: String,
    /// `None` leaves the scopes to the server's default (`licenses:write`).
    pub scopes: Option<Vec<String>>,
}

/// What the gateway created (or replayed).
#[derive(Debug)]
pub struct Created {
    pub brand: Brand,
    pub api_key: ApiKeyCreated,
    /// Both answers were replays of an earlier run of the same command.
    pub replayed: bool,
}

/// Where the gateway is and how to authenticate to it.
struct Target<'a> {
    client: Client,
    base_url: &'a str,
    admin_token: &'a Secret,
}

/// Creates the brand, then its API key.
pub async fn create_brand(base_url: &str, admin_token: &Secret, new: &NewBrand) -> anyhow::Result<Created> {
    let target = Target { client: http::client(), base_url: base_url.trim_end_matches('/'), admin_token };

    let body = json!({ "slug": new.slug, "name": new.name, "key_prefix": new.key_prefix });
    let key = idempotency_key(&format!("cls-brand-create-{}", new.slug));
    let (brand, brand_replayed): (Brand, bool) =
        admin_post(&target, "/v1/admin/brands", &body, &key).await.context("cannot create the brand")?;

    let mut body = json!({ "name": new.api_key_name });
    if let Some(scopes) = &new.scopes {
        body["scopes"] = json!(scopes);
    }
    let key = idempotency_key(&format!("cls-api-key-{}-{}", new.slug, new.api_key_name));
    let path = format!("/v1/admin/brands/{}/api-keys", brand.id);
    let (api_key, key_replayed): (ApiKeyCreated, bool) =
        admin_post(&target, &path, &body, &key).await.with_context(|| {
            format!(
                "brand {} ({}) exists, but its API key could not be created \
                 (re-run with corrected arguments, or with another --api-key-name for a new key)",
                brand.slug, brand.id
            )
        })?;

    Ok(Created { brand, api_key, replayed: brand_replayed && key_replayed })
}

/// The result for people.
pub fn to_text(created: &Created) -> String {
    let Created { brand, api_key, replayed } = created;
    let mut out = String::new();
    if *replayed {
        out.push_str("This brand and API key were created by an earlier run of this command (replayed).\n");
    }
    out.push_str(&format!(
        "Brand\n  id:          {}\n  slug:        {}\n  name:        {}\n  key prefix:  {}\n\n",
        brand.id, brand.slug, brand.name, brand.key_prefix
    ));
    out.push_str(&format!(
        "API key {:?}\n  id:          {}\n  scopes:      {}\n  API key:     {}\n\n",
        api_key.name,
        api_key.id,
        api_key.scopes.join(", "),
        api_key.api_key
    ));
    out.push_str("The API key is shown only once: store it now. Send it as the X-API-Key header.\n");
    out
}

/// The result for scripts: one JSON object.
pub fn to_json(created: &Created) -> String {
    let Created { brand, api_key, replayed } = created;
    json!({
        "brand_id": brand.id,
        "slug": brand.slug,
        "name": brand.name,
        "key_prefix": brand.key_prefix,
        "api_key_id": api_key.id,
        "api_key_name": api_key.name,
        "api_key": api_key.api_key,
        "display_prefix": api_key.display_prefix,
        "scopes": api_key.scopes,
        "replayed": replayed,
    })
    .to_string()
}

/// POSTs an admin command and decodes its 2xx body, following a 202 to its operation. The flag
/// says whether the gateway replayed an earlier outcome.
async fn admin_post<T: DeserializeOwned>(
    target: &Target<'_>,
    path: &str,
    body: &serde_json::Value,
    idempotency_key: &str,
) -> anyhow::Result<(T, bool)> {
    let url = format!("{}{path}", target.base_url);
    let headers = [("x-admin-token", target.admin_token.expose()), ("idempotency-key", idempotency_key)];
    let answer = http::send(&target.client, Method::POST, &url, &headers, Some(body))
        .await
        .with_context(|| format!("cannot reach the gateway at {} (is `cls up` running?)", target.base_url))?;
    let replayed = answer.replayed;
    let (status, body) = if answer.status == StatusCode::ACCEPTED {
        settle(target, &answer).await?
    } else {
        (answer.status, serde_json::from_slice(&answer.body).unwrap_or(serde_json::Value::Null))
    };
    if !status.is_success() {
        bail!(describe_failure(status, &body));
    }
    let value = serde_json::from_value(body).with_context(|| format!("unexpected answer to POST {path}"))?;
    Ok((value, replayed))
}

/// Polls the operation a 202 named until it succeeds or fails; returns the command's own
/// status and body.
async fn settle(target: &Target<'_>, accepted: &Answer) -> anyhow::Result<(StatusCode, serde_json::Value)> {
    let Accepted { operation_id } = serde_json::from_slice(&accepted.body).context("a 202 without an operation id")?;
    let path = accepted.location.clone().unwrap_or_else(|| format!("/v1/operations/{operation_id}"));
    // On stderr, so `--json` output stays one object.
    eprintln!(
        "The gateway accepted the request but the command is still running; waiting for operation {operation_id}..."
    );
    let url = format!("{}{path}", target.base_url);
    let headers = [("x-admin-token", target.admin_token.expose())];
    let deadline = Instant::now() + OPERATION_DEADLINE;
    loop {
        match http::send(&target.client, Method::GET, &url, &headers, None).await {
            Ok(answer) if answer.status == StatusCode::OK => {
                let operation: Operation =
                    serde_json::from_slice(&answer.body).context("unexpected answer from the operations route")?;
                match (operation.status, operation.response) {
                    (OperationStatus::Pending, _) => {}
                    (OperationStatus::Succeeded, Some(response)) => {
                        let status =
                            StatusCode::from_u16(response.status).context("an operation with an invalid status")?;
                        return Ok((status, response.body));
                    }
                    (OperationStatus::Succeeded, None) => {
                        bail!("operation {operation_id} succeeded without a response")
                    }
                    (OperationStatus::Failed, _) => {
                        bail!("operation {operation_id} failed: the command was dead-lettered (see the worker's log)")
                    }
                }
            }
            // The gateway or the query service is briefly unavailable: keep polling.
            Ok(answer) if answer.status == StatusCode::SERVICE_UNAVAILABLE => {}
            Err(_) => {}
            Ok(answer) => {
                let body = serde_json::from_slice(&answer.body).unwrap_or(serde_json::Value::Null);
                return Err(anyhow!(describe_failure(answer.status, &body)))
                    .with_context(|| format!("cannot read operation {operation_id}"));
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "operation {operation_id} was still pending after {}s; it will complete, re-run the same command later to see its outcome",
                OPERATION_DEADLINE.as_secs()
            );
        }
        tokio::time::sleep(OPERATION_POLL).await;
    }
}

/// The members of a problem+json body worth showing; lenient, so an unknown code still prints.
#[derive(Debug, Deserialize)]
struct ProblemView {
    code: String,
    #[serde(default)]
    detail: String,
    #[serde(default)]
    errors: Vec<FieldProblem>,
}

/// `CODE: detail` (plus one line per invalid field), or the bare status for a non-problem body.
fn describe_failure(status: StatusCode, body: &serde_json::Value) -> String {
    let Ok(problem) = ProblemView::deserialize(body) else {
        return format!("the gateway answered {status}");
    };
    let mut text = format!("{}: {}", problem.code, problem.detail);
    for FieldProblem { field, message } in &problem.errors {
        let line = format!("{field}: {message}");
        // A single invalid field is already the detail.
        if line != problem.detail {
            text.push_str(&format!("\n  {line}"));
        }
    }
    match problem.code.as_str() {
        "UNAUTHENTICATED" => text.push_str("\n  (is CLS_ADMIN_TOKEN the token the gateway was started with?)"),
        "IDEMPOTENCY_KEY_REUSED" => text.push_str(
            "\n  (this command ran before for the same slug / API key name with other arguments; re-run it with the original ones)",
        ),
        _ => {}
    }
    text
}

/// An `Idempotency-Key` (1-255 visible ASCII) from `raw`: other bytes and `%` are
/// percent-encoded, so distinct inputs give distinct keys; an over-long one becomes its UUIDv5.
fn idempotency_key(raw: &str) -> String {
    let mut key = String::with_capacity(raw.len());
    for b in raw.bytes() {
        if b.is_ascii_graphic() && b != b'%' {
            key.push(b as char);
        } else {
            key.push_str(&format!("%{b:02X}"));
        }
    }
    if key.len() <= 255 { key } else { format!("cls-{}", Uuid::new_v5(&Uuid::NAMESPACE_OID, raw.as_bytes())) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_are_visible_ascii_and_injective() {
        assert_eq!(idempotency_key("cls-brand-create-acme"), "cls-brand-create-acme");
        assert_eq!(idempotency_key("cls-api-key-acme-my key"), "cls-api-key-acme-my%20key");
        assert_ne!(idempotency_key("a b"), idempotency_key("a%20b"));
        assert_eq!(idempotency_key("é"), "%C3%A9");
        let long = idempotency_key(&"x".repeat(300));
        assert!(long.len() <= 255 && long.starts_with("cls-"));
    }

    #[test]
    fn problems_print_code_detail_and_fields() {
        let body = json!({
            "type": "t", "title": "Bad", "status": 400, "code": "INVALID_REQUEST",
            "detail": "2 fields are invalid", "request_id": "r",
            "errors": [{"field": "slug", "message": "too short"}, {"field": "key_prefix", "message": "bad"}]
        });
        let text = describe_failure(StatusCode::BAD_REQUEST, &body);
        assert_eq!(text, "INVALID_REQUEST: 2 fields are invalid\n  slug: too short\n  key_prefix: bad");
        let one = json!({"code": "INVALID_REQUEST", "detail": "slug: too short", "errors": [{"field": "slug", "message": "too short"}]});
        assert_eq!(describe_failure(StatusCode::BAD_REQUEST, &one), "INVALID_REQUEST: slug: too short");
        assert_eq!(describe_failure(StatusCode::BAD_GATEWAY, &json!(null)), "the gateway answered 502 Bad Gateway");
    }
}
