//! The RabbitMQ bus (SPEC §5; the bus port, RabbitMQ now): connections, the [`topology`],
//! confirmed publishing ([`publisher`]) and the gateway's request/reply client ([`rpc`]).
//!
//! Every publish waits for the broker's confirm; a mandatory publish that comes back unroutable
//! is an error, never a silent drop.

pub mod publisher;
pub mod rpc;
pub mod topology;

pub use lapin::{BasicProperties, Channel, Connection};
pub use publisher::{PublishError, Publisher};
pub use rpc::{RpcClient, RpcOutcome};
pub use topology::Topology;

use lapin::ConnectionProperties;

/// `content_type` of every CLS message.
pub const MSGPACK: &str = "application/msgpack";

/// Opens a connection with automatic recovery (lapin re-creates the connection, channels in
/// confirm mode and consumers after a broker restart); `name` shows in the broker's tools.
pub async fn connect(url: &str, name: &str) -> anyhow::Result<Connection> {
    let properties = ConnectionProperties::default()
        .enable_auto_recover()
        .with_connection_name(name.to_owned().into());
    Connection::connect(url, properties)
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to RabbitMQ: {e}"))
}

/// Whether the connection is usable right now, for `/health/broker`.
pub fn connection_health(conn: &Connection) -> Result<(), String> {
    if conn.status().connected() { Ok(()) } else { Err("RabbitMQ connection is not open".to_owned()) }
}
