//! The gateway's client of the query service (internal address, internal credential).
//!
//! A pool of HTTP/1.1 keep-alive connections, each carrying one request at a time: a request
//! takes an idle connection (the most recently used) or opens one, and gives it back once its
//! answer is read. Cheaper per request than hyper_util's general-purpose client (no pool keyed
//! by scheme and authority, no connector service, no absolute-URI rewriting), for the one address
//! it talks to. A request that times out drops its connection, as HTTP/1 must.
//!
//! With `CLS_QUERY_SOCKET` the connections go to that Unix socket instead of the URL's host and
//! port (the URL still gives the path prefix and the `Host` header).

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use cls_contracts::Principal;
use cls_contracts::internal::{INTERNAL_TOKEN_HEADER, PRINCIPAL_HEADER};
use cls_runtime::Secret;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::http::uri::{Authority, Scheme};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpStream, UnixStream};

/// Idle connections kept for reuse; more are opened under load and closed when given back
/// past this many.
const MAX_IDLE: usize = 256;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// What the query service answered.
pub struct Answer {
    pub status: StatusCode,
    pub content_type: Option<HeaderValue>,
    pub body: Bytes,
}

#[derive(Debug, thiserror::Error)]
#[error("the query service is unavailable")]
pub struct Unavailable;

type Sender = http1::SendRequest<Full<Bytes>>;

pub struct QueryClient {
    authority: Authority,
    /// Where to connect instead of `authority`, if set.
    socket: Option<PathBuf>,
    host: HeaderValue,
    /// The base URL's path (`CLS_QUERY_URL` may put the service under a prefix); empty if none.
    prefix: String,
    token: HeaderValue,
    timeout: Duration,
    /// Idle connections, the most recently used last.
    idle: Mutex<Vec<Sender>>,
}

impl QueryClient {
    pub fn new(base: &str, socket: Option<PathBuf>, token: &Secret, timeout: Duration) -> anyhow::Result<Self> {
        let uri: Uri = base.parse().with_context(|| format!("the query service URL {base:?} is not a URL"))?;
        anyhow::ensure!(uri.scheme() == Some(&Scheme::HTTP), "the query service URL {base:?} must be http://host:port");
        let authority = uri.authority().cloned().with_context(|| format!("the query service URL {base:?} has no host"))?;
        let host = HeaderValue::from_str(authority.as_str()).context("the query service's host is not a valid header value")?;
        let prefix = uri.path().trim_end_matches('/').to_owned();
        let token = HeaderValue::from_str(token.expose()).context("the internal token is not a valid header value")?;
        Ok(QueryClient { authority, socket, host, prefix, token, timeout, idle: Mutex::new(Vec::new()) })
    }

    pub async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        principal: Option<&Principal>,
        request_id: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Answer, Unavailable> {
        let uri: Uri = if self.prefix.is_empty() {
            Uri::try_from(path_and_query)
        } else {
            Uri::try_from(format!("{}{path_and_query}", self.prefix))
        }
        .map_err(|_| Unavailable)?;
        let mut headers = hyper::HeaderMap::with_capacity(5);
        headers.insert(header::HOST, self.host.clone());
        headers.insert(INTERNAL_TOKEN_HEADER, self.token.clone());
        headers.insert(REQUEST_ID, HeaderValue::from_str(request_id).map_err(|_| Unavailable)?);
        if let Some(p) = principal {
            let principal = serde_json::to_string(p).expect("principal serializes");
            headers.insert(PRINCIPAL_HEADER, HeaderValue::from_str(&principal).map_err(|_| Unavailable)?);
        }
        if body.is_some() {
            headers.insert(header::CONTENT_TYPE, JSON);
        }
        let mut request = Request::new(Full::new(Bytes::from(body.unwrap_or_default())));
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        tokio::time::timeout(self.timeout, self.call(request)).await.map_err(|_| Unavailable)?
    }

    /// Sends on an idle connection or a new one. A request that fails on an idle connection
    /// before it was written (the query service closed it meanwhile: restarted, or its idle
    /// timeout) is sent again on a new one, as hyper_util's client does.
    async fn call(&self, request: Request<Full<Bytes>>) -> Result<Answer, Unavailable> {
        let mut request = request;
        let (sender, response) = loop {
            let (mut sender, reused) = self.checkout().await?;
            match sender.try_send_request(request).await {
                Ok(response) => break (sender, response),
                Err(mut error) => match error.take_message() {
                    Some(unsent) if reused => {
                        tracing::debug!(error = %error.error(), "idle query service connection closed; using another");
                        request = unsent;
                    }
                    _ => {
                        tracing::warn!(error = %error.error(), "query service request failed");
                        return Err(Unavailable);
                    }
                },
            }
        };
        let status = response.status();
        let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
        let body = response.into_body().collect().await.map_err(|_| Unavailable)?.to_bytes();
        // The next request waits for it to be ready (see `checkout`).
        if !sender.is_closed() {
            let mut idle = self.idle.lock().expect("pool lock");
            if idle.len() < MAX_IDLE {
                idle.push(sender);
            }
        }
        Ok(Answer { status, content_type, body })
    }

    /// The most recently used idle connection that is still open (`true`), or a new one.
    async fn checkout(&self) -> Result<(Sender, bool), Unavailable> {
        loop {
            let Some(mut sender) = self.idle.lock().expect("pool lock").pop() else { break };
            // Usually at once: the connection finished its last answer when the body was read.
            // It fails if the connection closed meanwhile (or the answer asked to close it).
            if sender.ready().await.is_ok() {
                return Ok((sender, true));
            }
        }
        let sender = self.connect().await.map_err(|error| {
            tracing::warn!(error = format!("{error:#}"), "cannot connect to the query service");
            Unavailable
        })?;
        Ok((sender, false))
    }

    async fn connect(&self) -> anyhow::Result<Sender> {
        if let Some(path) = &self.socket {
            let stream = UnixStream::connect(path).await.with_context(|| format!("cannot connect to {}", path.display()))?;
            return handshake(stream).await;
        }
        let port = self.authority.port_u16().unwrap_or(80);
        let stream = TcpStream::connect((self.authority.host(), port)).await?;
        stream.set_nodelay(true)?;
        handshake(stream).await
    }
}

async fn handshake<S>(stream: S) -> anyhow::Result<Sender>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "query service connection ended with an error");
        }
    });
    Ok(sender)
}
