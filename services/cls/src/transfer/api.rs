//! The brand API as `cls import` and `cls export` use it: one call = one request that is retried
//! until it has a definite answer. 429 waits out `Retry-After` (and pauses every other request of
//! the run, since the limit is per API key); 503 and lost connections retry with backoff (safe:
//! writes carry an idempotency key); 202 polls the operation until the command has settled.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cls_contracts::http::{Accepted, Operation, OperationStatus};
use cls_runtime::Secret;
use hyper::{HeaderMap, Method, StatusCode};
use serde_json::Value;
use tokio::time::Instant;

use crate::http::{self, Client};
use crate::transfer::rows::Reject;

/// Bound on one request, connection included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Tries of one request that found no gateway, or a 503, before the row is given up (re-running
/// the import picks it up again). With the backoff below: about a minute.
const UNAVAILABLE_TRIES: u32 = 8;
/// 429s one request accepts before giving up: a limit is not an error, the server says when.
const RATE_LIMITED_TRIES: u32 = 100;
/// Longest wait for one 429 or 503, whatever `Retry-After` says.
const MAX_WAIT: Duration = Duration::from_secs(120);
/// How long a 202's operation is polled before the row is reported as still pending.
const OPERATION_DEADLINE: Duration = Duration::from_secs(120);
const OPERATION_POLL: Duration = Duration::from_millis(250);

/// The gateway and the brand credential, shared by every task of a run.
pub struct Api {
    client: Client,
    base_url: String,
    api_key: Secret,
    /// No request leaves before this instant: set by a 429's `Retry-After`.
    paused_until: Mutex<Instant>,
    /// 429s answered so far (for the summary).
    pub rate_limited: AtomicU64,
    /// 202s followed to their operation so far (for the summary).
    pub accepted: AtomicU64,
}

/// A definite answer: the command's own status and body (after a 202, the operation's).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
    /// `Idempotent-Replayed: true`: the server answered an earlier request's stored outcome.
    pub replayed: bool,
}

impl Reply {
    /// The problem's code and detail (`HTTP <status>` for a body that is not a problem).
    pub fn reject(&self) -> Reject {
        match self.body.get("code").and_then(Value::as_str) {
            Some(code) => {
                let mut detail = self.body.get("detail").and_then(Value::as_str).unwrap_or_default().to_owned();
                for error in self.body.get("errors").and_then(Value::as_array).into_iter().flatten() {
                    let field = error.get("field").and_then(Value::as_str).unwrap_or_default();
                    let message = error.get("message").and_then(Value::as_str).unwrap_or_default();
                    let line = format!("{field}: {message}");
                    if line != detail {
                        detail = if detail.is_empty() { line } else { format!("{detail}; {line}") };
                    }
                }
                Reject::new(code, detail)
            }
            None => Reject::new(format!("HTTP_{}", self.status.as_u16()), format!("the gateway answered {}", self.status)),
        }
    }

    /// A missing, unknown or revoked API key, or one without the scope: no row can succeed.
    pub fn is_credential_problem(&self) -> bool {
        self.status == StatusCode::UNAUTHORIZED || self.status == StatusCode::FORBIDDEN
    }
}

/// What came back from one exchange.
type Raw = http::Answer;

/// What to do after one exchange.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// A definite answer (202 included: the caller polls it).
    Done,
    /// Rate limited: pause every request for this long.
    RateLimited(Duration),
    /// Overloaded or down: wait this long, then try again.
    Unavailable(Duration),
}

impl Api {
    pub fn new(base_url: &str, api_key: Secret) -> Api {
        Api { client: http::client(), base_url: base_url.trim_end_matches('/').to_owned(), api_key, paused_until: Mutex::new(Instant::now()), rate_limited: AtomicU64::new(0), accepted: AtomicU64::new(0) }
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The first request of a run (a read): a connection error fails at once, so a wrong
    /// `--url` is reported now rather than after the retry budget; a 429 or 503 is retried
    /// like any call.
    pub async fn first_contact(&self, path: &str) -> anyhow::Result<Reply> {
        let raw = self.exchange(Method::GET, path, None, None).await?;
        if next(raw.status, &raw.headers, 0) == Next::Done {
            return Ok(Reply { status: raw.status, body: serde_json::from_slice(&raw.body).unwrap_or(Value::Null), replayed: false });
        }
        self.call(Method::GET, path, None, None).await.map_err(|r| anyhow::anyhow!("{}: {}", r.code, r.detail))
    }

    /// Sends one request until it has a definite answer, following a 202 to its outcome.
    /// `Err` only when the server could not be reached or kept refusing past the retry budget:
    /// the error is then the row's reason (`UNAVAILABLE`, `PENDING`, ...).
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>, idempotency_key: Option<&str>) -> Result<Reply, Reject> {
        let raw = self.until_answered(method, path, body, idempotency_key).await?;
        let replayed = raw.replayed;
        if raw.status == StatusCode::ACCEPTED {
            self.accepted.fetch_add(1, Ordering::Relaxed);
            let operation = raw.location.clone();
            return self.settle(&raw.body, operation).await;
        }
        Ok(Reply { status: raw.status, body: serde_json::from_slice(&raw.body).unwrap_or(Value::Null), replayed })
    }

    /// One request, retried on 429, 503 and transport errors within the budgets above.
    async fn until_answered(&self, method: Method, path: &str, body: Option<&Value>, idempotency_key: Option<&str>) -> Result<Raw, Reject> {
        let (mut unavailable, mut limited) = (0u32, 0u32);
        loop {
            let pause = *self.paused_until.lock().expect("not poisoned");
            tokio::time::sleep_until(pause).await;
            let wait = match self.exchange(method.clone(), path, body, idempotency_key).await {
                Ok(raw) => match next(raw.status, &raw.headers, unavailable) {
                    Next::Done => return Ok(raw),
                    Next::RateLimited(wait) => {
                        limited += 1;
                        self.rate_limited.fetch_add(1, Ordering::Relaxed);
                        if limited >= RATE_LIMITED_TRIES {
                            return Err(Reject::new("RATE_LIMITED", format!("still rate limited after {limited} tries; run the import again later")));
                        }
                        let mut paused = self.paused_until.lock().expect("not poisoned");
                        *paused = (*paused).max(Instant::now() + wait);
                        continue;
                    }
                    Next::Unavailable(wait) => {
                        unavailable += 1;
                        if unavailable >= UNAVAILABLE_TRIES {
                            return Err(Reject::new("UNAVAILABLE", format!("the gateway answered 503 {unavailable} times; run the import again later")));
                        }
                        wait
                    }
                },
                Err(error) => {
                    unavailable += 1;
                    if unavailable >= UNAVAILABLE_TRIES {
                        return Err(Reject::new("UNAVAILABLE", format!("{error:#} ({unavailable} tries); run the import again later")));
                    }
                    backoff(unavailable)
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Polls the operation a 202 named until it has settled; answers the command's own outcome.
    async fn settle(&self, accepted: &[u8], location: Option<String>) -> Result<Reply, Reject> {
        let Ok(Accepted { operation_id }) = serde_json::from_slice(accepted) else {
            return Err(Reject::new("HTTP_202", "a 202 without an operation id"));
        };
        let path = location.unwrap_or_else(|| format!("/v1/operations/{operation_id}"));
        let deadline = Instant::now() + OPERATION_DEADLINE;
        loop {
            let raw = self.until_answered(Method::GET, &path, None, None).await?;
            if raw.status != StatusCode::OK {
                let reply = Reply { status: raw.status, body: serde_json::from_slice(&raw.body).unwrap_or(Value::Null), replayed: false };
                let Reject { code, detail } = reply.reject();
                return Err(Reject::new(code, format!("operation {operation_id}: {detail}")));
            }
            let Ok(operation) = serde_json::from_slice::<Operation>(&raw.body) else {
                return Err(Reject::new("HTTP_200", format!("operation {operation_id}: unexpected answer")));
            };
            match (operation.status, operation.response) {
                (OperationStatus::Succeeded, Some(response)) => {
                    let status = StatusCode::from_u16(response.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                    return Ok(Reply { status, body: response.body, replayed: false });
                }
                (OperationStatus::Succeeded, None) => {
                    return Err(Reject::new("HTTP_200", format!("operation {operation_id} succeeded without a response")));
                }
                (OperationStatus::Failed, _) => {
                    return Err(Reject::new("DEAD_LETTERED", format!("operation {operation_id} failed: the command was dead-lettered (an operator can replay it: cls dlq)")));
                }
                (OperationStatus::Pending, _) if Instant::now() >= deadline => {
                    return Err(Reject::new(
                        "PENDING",
                        format!("operation {operation_id} still pending after {}s; it will complete: run the import again to see its outcome", OPERATION_DEADLINE.as_secs()),
                    ));
                }
                (OperationStatus::Pending, _) => tokio::time::sleep(OPERATION_POLL).await,
            }
        }
    }

    /// One request and its whole answer.
    async fn exchange(&self, method: Method, path: &str, body: Option<&Value>, idempotency_key: Option<&str>) -> anyhow::Result<Raw> {
        let mut headers = vec![("x-api-key", self.api_key.expose())];
        headers.extend(idempotency_key.map(|key| ("idempotency-key", key)));
        http::send_within(&self.client, method, &format!("{}{path}", self.base_url), &headers, body, REQUEST_TIMEOUT).await
    }
}

/// Classifies an answer; `tries` is how many 503s / failures this request has had so far.
fn next(status: StatusCode, headers: &HeaderMap, tries: u32) -> Next {
    let retry_after = headers
        .get(hyper::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| Duration::from_secs(s).min(MAX_WAIT));
    match status {
        // A 429 without Retry-After should not happen; a second is a polite guess.
        StatusCode::TOO_MANY_REQUESTS => Next::RateLimited(retry_after.unwrap_or(Duration::from_secs(1)).max(Duration::from_millis(100))),
        StatusCode::SERVICE_UNAVAILABLE => Next::Unavailable(retry_after.unwrap_or_else(|| backoff(tries + 1)).max(backoff(tries + 1) / 2)),
        _ => Next::Done,
    }
}

/// Exponential backoff with jitter: about 0.25 s, 0.5 s, 1 s ... capped at 15 s, so many rows
/// retrying at once do not come back in step.
fn backoff(tries: u32) -> Duration {
    use rand::RngExt;
    let base = Duration::from_millis(250).saturating_mul(1 << tries.saturating_sub(1).min(6)).min(Duration::from_secs(15));
    base.mul_f64(rand::rng().random_range(0.75..1.25))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn headers(retry_after: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(v) = retry_after {
            h.insert(hyper::header::RETRY_AFTER, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn rate_limits_wait_what_the_server_says() {
        assert_eq!(next(StatusCode::TOO_MANY_REQUESTS, &headers(Some("7")), 0), Next::RateLimited(Duration::from_secs(7)));
        assert_eq!(next(StatusCode::TOO_MANY_REQUESTS, &headers(None), 0), Next::RateLimited(Duration::from_secs(1)));
        assert_eq!(next(StatusCode::TOO_MANY_REQUESTS, &headers(Some("100000")), 0), Next::RateLimited(MAX_WAIT));
    }

    #[test]
    fn unavailable_backs_off_and_everything_else_is_an_answer() {
        assert_eq!(next(StatusCode::SERVICE_UNAVAILABLE, &headers(Some("3")), 0), Next::Unavailable(Duration::from_secs(3)));
        let Next::Unavailable(wait) = next(StatusCode::SERVICE_UNAVAILABLE, &headers(None), 3) else { panic!() };
        assert!(wait >= Duration::from_millis(750) && wait <= Duration::from_millis(2500), "{wait:?}");
        for status in [StatusCode::CREATED, StatusCode::ACCEPTED, StatusCode::CONFLICT, StatusCode::INTERNAL_SERVER_ERROR, StatusCode::UNAUTHORIZED] {
            assert_eq!(next(status, &headers(Some("5")), 0), Next::Done);
        }
        assert!(backoff(50) <= Duration::from_millis(18_750));
    }

    #[test]
    fn problems_become_reasons() {
        let reply = Reply {
            status: StatusCode::BAD_REQUEST,
            body: serde_json::json!({"code": "INVALID_REQUEST", "detail": "2 fields are invalid", "errors": [{"field": "a", "message": "b"}]}),
            replayed: false,
        };
        assert_eq!(reply.reject(), Reject::new("INVALID_REQUEST", "2 fields are invalid; a: b"));
        let reply = Reply { status: StatusCode::BAD_GATEWAY, body: Value::Null, replayed: false };
        assert_eq!(reply.reject().code, "HTTP_502");
    }
}
