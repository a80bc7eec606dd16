//! The RabbitMQ bus (SPEC §5; the bus port, RabbitMQ now): connections, the [`topology`],
//! confirmed publishing ([`publisher`]), the gateway's request/reply client ([`rpc`]) and the
//! dead-letter queues' listing and replay ([`dlq`]).
//!
//! Every publish waits for the broker's confirm; a mandatory publish that comes back unroutable
//! is an error, never a silent drop.

pub mod dlq;
pub mod link;
pub mod publisher;
pub mod rpc;
pub mod topology;

pub use lapin::{BasicProperties, Channel, Connection};
pub use link::Link;
pub use publisher::{PublishError, Publisher};
pub use rpc::{RpcClient, RpcOutcome};
pub use topology::Topology;

use lapin::ConnectionProperties;

/// `content_type` of every CLS message.
pub const MSGPACK: &str = "application/msgpack";

/// Header of a domain event: the read-model targets its transaction's writer made visible
/// (`key:<id>:<version>,…`), so the projector can see from Redis alone that the event needs no
/// refresh. Absent when unknown. Not part of the event contract (SPEC §5): subscribers ignore it.
pub const READ_MODEL_TARGETS_HEADER: &str = "cls-read-model-targets";

/// How long opening a connection may take. With automatic recovery on, lapin keeps retrying a
/// refused first connection instead of failing, so the bound is ours: a process that cannot
/// reach the broker at startup fails with a clear error (and its supervisor restarts it)
/// instead of hanging without an ops listener.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Opens a connection with automatic recovery (lapin re-creates the connection, channels in
/// confirm mode and consumers after a broker restart); `name` shows in the broker's tools.
pub async fn connect(url: &str, name: &str) -> anyhow::Result<Connection> {
    let properties = ConnectionProperties::default()
        .enable_auto_recover()
        .with_connection_name(name.to_owned().into());
    match tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(url, properties)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(anyhow::anyhow!("cannot connect to RabbitMQ: {e}")),
        Err(_) => Err(anyhow::anyhow!("cannot connect to RabbitMQ within {CONNECT_TIMEOUT:?}")),
    }
}

/// Whether the connection is usable right now, for `/health/broker`.
pub fn connection_health(conn: &Connection) -> Result<(), String> {
    if conn.status().connected() { Ok(()) } else { Err("RabbitMQ connection is not open".to_owned()) }
}
