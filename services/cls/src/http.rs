//! A minimal HTTP/1 client for talking to the gateway and to the children's ops listeners
//! (hyper-util's client; plain `http://` only, which is all a local cluster serves).

use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderName, HeaderValue};
use hyper::HeaderMap;
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub type Client = HyperClient<HttpConnector, Full<Bytes>>;

/// Bound on one request, connection included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// A response, read in full.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub location: Option<String>,
    /// `Idempotent-Replayed: true`: the gateway replayed a stored outcome.
    pub replayed: bool,
    /// Every header (Retry-After, RateLimit-*: what a client that retries reads).
    pub headers: HeaderMap,
    pub body: Bytes,
}

pub fn client() -> Client {
    HyperClient::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// Sends one request with `headers` and an optional JSON body and reads the whole answer.
pub async fn send(
    client: &Client,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    json: Option<&serde_json::Value>,
) -> anyhow::Result<Answer> {
    send_within(client, method, url, headers, json, REQUEST_TIMEOUT).await
}

/// [`send`] with its own bound on the whole exchange.
pub async fn send_within(
    client: &Client,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    json: Option<&serde_json::Value>,
    timeout: Duration,
) -> anyhow::Result<Answer> {
    if !url.starts_with("http://") {
        bail!("{url:?}: only http:// URLs are supported");
    }
    let mut request = Request::builder().method(method.clone()).uri(url);
    for (name, value) in headers {
        // Header values may be secrets: never put them into an error message.
        let value = HeaderValue::from_str(value)
            .with_context(|| format!("header {name} has a character HTTP does not allow"))?;
        request = request.header(HeaderName::from_bytes(name.as_bytes())?, value);
    }
    let body = match json {
        Some(value) => {
            request = request.header(hyper::header::CONTENT_TYPE, "application/json");
            Bytes::from(serde_json::to_vec(value)?)
        }
        None => Bytes::new(),
    };
    let request = request.body(Full::new(body)).with_context(|| format!("{url:?} is not a valid URL"))?;
    let exchange = async {
        let (parts, body) = client.request(request).await?.into_parts();
        let location = parts.headers.get(hyper::header::LOCATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let replayed = parts.headers.get("idempotent-replayed").is_some_and(|v| v.as_bytes() == b"true");
        let body = body.collect().await?.to_bytes();
        anyhow::Ok(Answer { status: parts.status, location, replayed, headers: parts.headers, body })
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(answer) => answer.with_context(|| format!("{method} {url} failed")),
        Err(_) => bail!("{method} {url}: no answer within {}s", timeout.as_secs()),
    }
}

/// Bound on one probe: polling must not stall on a listener that accepts but never answers.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET url` for polling: the answer, or `None` if nothing answered in time.
pub async fn probe(client: &Client, url: &str) -> Option<Answer> {
    tokio::time::timeout(PROBE_TIMEOUT, send(client, Method::GET, url, &[], None)).await.ok()?.ok()
}
