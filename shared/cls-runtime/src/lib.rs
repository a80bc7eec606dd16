//! What every CLS process needs around its own work: typed [`settings`] loaded once,
//! [`telemetry`] (tracing), [`shutdown`] on SIGINT/SIGTERM, an HTTP accept loop with graceful
//! shutdown ([`http`]) and its [`metrics`], the per-service [`ops`] listener (health, readiness,
//! metrics), and
//! [`secret`] sealing of secrets kept in stored outcomes.

pub mod http;
pub mod metrics;
pub mod ops;
pub mod secret;
pub mod settings;
pub mod shutdown;
pub mod telemetry;

pub use settings::{IpRange, Secret, ServiceKind, Settings};
pub use tokio_util::sync::CancellationToken;
