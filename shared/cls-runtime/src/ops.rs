//! The ops listener every service runs on `CLS_OPS_ADDR` (not public): `GET /health` (the process
//! is alive), `/health/db`, `/health/cache`, `/health/broker` (for the dependencies that service
//! uses: 200, or 503 with the reason), `/ready`, and `/metrics` (Prometheus text).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::http::{self, Body};

/// A health probe: `Ok` when the dependency answers, else the reason (never a secret).
pub type Probe = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// Builds a [`Probe`] from an async closure.
pub fn probe<F, Fut>(f: F) -> Probe
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    Arc::new(move || Box::pin(f()))
}

/// What the ops listener reports on.
#[derive(Clone)]
pub struct Ops {
    /// Named dependency probes: served at `/health/<name>`; required by `/ready` unless the
    /// service degrades gracefully without that dependency (third field false).
    pub checks: Vec<(&'static str, Probe, bool)>,
    /// Extra readiness beyond the dependencies (e.g. "consuming", "every worker kind has a consumer").
    pub ready: Option<Probe>,
    /// The service's metrics.
    pub registry: Arc<Registry>,
}

impl Ops {
    pub fn new(registry: Arc<Registry>) -> Self {
        Ops { checks: Vec::new(), ready: None, registry }
    }

    /// A dependency the service cannot work without (`/ready` requires it).
    pub fn check(mut self, name: &'static str, probe: Probe) -> Self {
        self.checks.push((name, probe, true));
        self
    }

    /// A dependency the service degrades without (e.g. Redis: reads fall back to PostgreSQL,
    /// writes answer 202): reported at `/health/<name>`, not required by `/ready`.
    pub fn check_degradable(mut self, name: &'static str, probe: Probe) -> Self {
        self.checks.push((name, probe, false));
        self
    }

    pub fn ready_when(mut self, probe: Probe) -> Self {
        self.ready = Some(probe);
        self
    }

    /// Serves the ops routes until `shutdown`.
    pub async fn serve(self, listener: TcpListener, shutdown: CancellationToken) {
        let ops = Arc::new(self);
        let grace = std::time::Duration::from_secs(1);
        http::serve(listener, move |req, _| {
            let ops = ops.clone();
            async move { ops.handle(req).await }
        }, shutdown, grace)
        .await;
    }

    async fn handle<B>(&self, req: Request<B>) -> Response<Body> {
        if req.method() != Method::GET {
            return status_json(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        }
        match req.uri().path() {
            "/health" => status_json(StatusCode::OK, "ok"),
            "/ready" => match self.readiness().await {
                Ok(()) => status_json(StatusCode::OK, "ready"),
                Err(reason) => status_json(StatusCode::SERVICE_UNAVAILABLE, &reason),
            },
            "/metrics" => {
                let mut text = String::new();
                prometheus_client::encoding::text::encode(&mut text, &self.registry)
                    .expect("encoding metrics into a String cannot fail");
                http::respond(StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", text)
            }
            path => match path.strip_prefix("/health/").and_then(|name| self.checks.iter().find(|(n, _, _)| *n == name)) {
                Some((_, probe, _)) => match probe().await {
                    Ok(()) => status_json(StatusCode::OK, "ok"),
                    Err(reason) => status_json(StatusCode::SERVICE_UNAVAILABLE, &reason),
                },
                None => status_json(StatusCode::NOT_FOUND, "not found"),
            },
        }
    }

    /// Ready when every dependency answers and the service's own readiness holds.
    pub async fn readiness(&self) -> Result<(), String> {
        for (name, probe, _) in self.checks.iter().filter(|(_, _, required)| *required) {
            probe().await.map_err(|reason| format!("{name}: {reason}"))?;
        }
        match &self.ready {
            Some(probe) => probe().await,
            None => Ok(()),
        }
    }
}

fn status_json(status: StatusCode, detail: &str) -> Response<Body> {
    let body = serde_json::json!({ "status": if status.is_success() { "ok" } else { "unavailable" }, "detail": detail });
    http::json(status, body.to_string())
}
