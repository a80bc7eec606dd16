//! The gateway's client of the query service (internal address, internal credential).

use std::time::Duration;

use bytes::Bytes;
use cls_contracts::Principal;
use cls_contracts::internal::{INTERNAL_TOKEN_HEADER, PRINCIPAL_HEADER};
use cls_runtime::Secret;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// What the query service answered.
pub struct Answer {
    pub status: StatusCode,
    pub content_type: Option<hyper::header::HeaderValue>,
    pub body: Bytes,
}

#[derive(Debug, thiserror::Error)]
#[error("the query service is unavailable")]
pub struct Unavailable;

pub struct QueryClient {
    base: String,
    token: Secret,
    timeout: Duration,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl QueryClient {
    pub fn new(base: String, token: Secret, timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(connector);
        QueryClient { base, token, timeout, client }
    }

    pub async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        principal: Option<&Principal>,
        request_id: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Answer, Unavailable> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path_and_query))
            .header(INTERNAL_TOKEN_HEADER, self.token.expose())
            .header("x-request-id", request_id);
        if let Some(p) = principal {
            req = req.header(PRINCIPAL_HEADER, serde_json::to_string(p).expect("principal serializes"));
        }
        if body.is_some() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let req = req.body(Full::new(Bytes::from(body.unwrap_or_default()))).map_err(|_| Unavailable)?;
        let call = async {
            let response = self.client.request(req).await.map_err(|error| {
                tracing::warn!(%error, "query service request failed");
                Unavailable
            })?;
            let status = response.status();
            let content_type = response.headers().get(hyper::header::CONTENT_TYPE).cloned();
            let body = response.into_body().collect().await.map_err(|_| Unavailable)?.to_bytes();
            Ok(Answer { status, content_type, body })
        };
        tokio::time::timeout(self.timeout, call).await.map_err(|_| Unavailable)?
    }
}
