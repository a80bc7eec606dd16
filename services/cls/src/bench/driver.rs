//! What one load slot sends: HTTP requests on its own kept-alive connection (the CLS scenarios
//! and the hyper + Redis reference), or RabbitMQ request/reply calls (the broker reference).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::reference::RpcCaller;
use super::workload::Workload;

/// Bound on one request: a hung target shows as `timeout`, not as a stuck benchmark.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How a request ended.
#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    /// Answered with this status.
    Status(u16),
    /// Answered 2xx, but not with what the scenario expects (e.g. a validation that is not
    /// `valid`): the fixture or the service is wrong, so it counts as an error.
    Unexpected(u16),
    /// The connection failed (it is re-opened for the next request).
    Io,
    Timeout,
}

impl Outcome {
    /// Whether an outcome label (see `load::KindStats::outcomes`) counts as an error: anything
    /// but a 2xx with the expected body.
    pub fn is_error(label: &str) -> bool {
        !label.starts_with('2') || label.contains("unexpected")
    }
}

/// One slot's sender. A closed set, dispatched by one `match`.
pub enum Driver {
    Http(HttpSlot),
    Rpc(RpcSlot),
}

impl Driver {
    /// Sends request number `seq` and waits for its answer.
    pub async fn call(&mut self, seq: u64) -> (&'static str, Outcome) {
        match self {
            Driver::Http(slot) => slot.call(seq).await,
            Driver::Rpc(slot) => ("rpc", slot.caller.call(seq).await),
        }
    }
}

/// One kept-alive HTTP/1 connection and the workload it sends.
pub struct HttpSlot {
    addr: SocketAddr,
    host: HeaderValue,
    workload: Arc<Workload>,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl HttpSlot {
    /// Opens the slot's connection now, so connecting is not part of the first measurement.
    pub async fn connect(addr: SocketAddr, workload: Arc<Workload>) -> anyhow::Result<HttpSlot> {
        let host = HeaderValue::from_str(&addr.to_string())?;
        let mut slot = HttpSlot { addr, host, workload, sender: None };
        slot.sender = Some(slot.open().await?);
        Ok(slot)
    }

    async fn open(&self) -> anyhow::Result<SendRequest<Full<Bytes>>> {
        let stream = TcpStream::connect(self.addr).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            // Ends when the slot drops its sender or the server closes the connection.
            let _ = connection.await;
        });
        Ok(sender)
    }

    async fn call(&mut self, seq: u64) -> (&'static str, Outcome) {
        let planned = self.workload.request(seq);
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(planned.path)
            .header(HOST, self.host.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(Full::new(planned.body))
            .expect("static request parts are valid");
        if let Some(key) = &planned.api_key {
            request.headers_mut().insert("x-api-key", key.clone());
        }
        let outcome = match tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(request, planned.expect)).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => {
                self.sender = None;
                Outcome::Io
            }
            Err(_) => {
                // The connection may still deliver the late answer: start over on a fresh one.
                self.sender = None;
                Outcome::Timeout
            }
        };
        (planned.kind, outcome)
    }

    async fn exchange(&mut self, request: Request<Full<Bytes>>, expect: Option<&'static [u8]>) -> anyhow::Result<Outcome> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            self.sender = Some(self.open().await?);
        }
        let sender = self.sender.as_mut().expect("opened above");
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        Ok(match expect {
            Some(prefix) if (200..300).contains(&status) && !body.starts_with(prefix) => Outcome::Unexpected(status),
            _ => Outcome::Status(status),
        })
    }
}

/// One slot of the broker reference: calls share the client's channel, as the gateway's do.
pub struct RpcSlot {
    pub caller: Arc<RpcCaller>,
}
