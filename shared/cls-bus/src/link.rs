//! A supervised AMQP connection: [`Link`] hands out its connection while it is open and replaces
//! it with a fresh one when it is not.
//!
//! lapin's automatic recovery can stay in `Reconnecting` for good after a broker restart (seen
//! here: publishes failed with "invalid connection state: Reconnecting" for minutes after the
//! broker was back), so CLS does not rely on it: a link's connections have recovery off, and
//! whoever needs a channel after the connection died gets a new connection (one caller
//! reconnects, the others wait for it). Consumers and the relay already rebuild their channels
//! in a loop; through a link they also rebuild the connection under them.
//!
//! The link also follows `connection.blocked` / `connection.unblocked` (a broker resource alarm)
//! on every connection it makes, so a publisher can refuse at once instead of stalling.

use std::sync::{Arc, Mutex};

use futures_lite::StreamExt;
use lapin::{Channel, Connection, ConnectionProperties};

use crate::CONNECT_TIMEOUT;

pub struct Link {
    url: String,
    name: String,
    current: Mutex<Arc<Connection>>,
    /// Serializes reconnecting, so a dead connection is replaced once, not by every caller.
    reconnecting: tokio::sync::Mutex<()>,
    /// The broker's reason while it blocks the current connection.
    blocked: Arc<Mutex<Option<String>>>,
}

async fn open(url: &str, name: &str, blocked: &Arc<Mutex<Option<String>>>) -> anyhow::Result<Arc<Connection>> {
    let properties = ConnectionProperties::default().with_connection_name(name.to_owned().into());
    let conn = match tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(url, properties)).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => anyhow::bail!("cannot connect to RabbitMQ: {e}"),
        Err(_) => anyhow::bail!("cannot connect to RabbitMQ within {CONNECT_TIMEOUT:?}"),
    };
    *blocked.lock().expect("blocked flag poisoned") = None;
    let mut events = conn.events_listener();
    let flag = blocked.clone();
    let name = name.to_owned();
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            let now = match event {
                lapin::Event::ConnectionBlocked(reason) => Some(if reason.is_empty() { "resource alarm".to_owned() } else { reason }),
                lapin::Event::ConnectionUnblocked => None,
                _ => continue,
            };
            match &now {
                Some(reason) => tracing::warn!(connection = %name, reason, "the broker blocks publishing"),
                None => tracing::info!(connection = %name, "the broker unblocked publishing"),
            }
            *flag.lock().expect("blocked flag poisoned") = now;
        }
    });
    Ok(Arc::new(conn))
}

impl Link {
    /// Connects (failing after [`CONNECT_TIMEOUT`] if the broker does not answer); `name` shows
    /// in the broker's tools.
    pub async fn open(url: &str, name: &str) -> anyhow::Result<Link> {
        let blocked = Arc::default();
        let conn = open(url, name, &blocked).await?;
        Ok(Link { url: url.to_owned(), name: name.to_owned(), current: Mutex::new(conn), reconnecting: Default::default(), blocked })
    }

    fn current(&self) -> Arc<Connection> {
        self.current.lock().expect("link poisoned").clone()
    }

    /// The open connection: the current one, or a new one if it died.
    pub async fn connection(&self) -> anyhow::Result<Arc<Connection>> {
        let conn = self.current();
        if conn.status().connected() {
            return Ok(conn);
        }
        let _one_at_a_time = self.reconnecting.lock().await;
        let conn = self.current();
        if conn.status().connected() {
            return Ok(conn);
        }
        let fresh = open(&self.url, &self.name, &self.blocked).await?;
        *self.current.lock().expect("link poisoned") = fresh.clone();
        tracing::info!(connection = %self.name, "reconnected to RabbitMQ");
        Ok(fresh)
    }

    /// A new channel on the open connection (failing after [`CONNECT_TIMEOUT`]: a broker that
    /// stopped answering must not hold a consumer's supervisor forever).
    pub async fn create_channel(&self) -> anyhow::Result<Channel> {
        let conn = self.connection().await?;
        match tokio::time::timeout(CONNECT_TIMEOUT, conn.create_channel()).await {
            Ok(channel) => Ok(channel?),
            Err(_) => anyhow::bail!("RabbitMQ did not open a channel within {CONNECT_TIMEOUT:?}"),
        }
    }

    /// For `/health/broker`: the connection is open, or could be opened again now (a link
    /// nobody publishes on would otherwise stay dead and report so forever).
    pub async fn health(&self) -> Result<(), String> {
        self.connection().await.map(drop).map_err(|e| format!("RabbitMQ connection is not open: {e:#}"))
    }

    /// The broker's reason while it blocks publishing on this link.
    pub fn blocked(&self) -> Option<String> {
        self.blocked.lock().expect("blocked flag poisoned").clone()
    }

    /// Closes the connection, waiting for the broker's close-ok at most [`CONNECT_TIMEOUT`].
    pub async fn close(&self) {
        let _ = tokio::time::timeout(CONNECT_TIMEOUT, self.current().close(200, "shutdown".into())).await;
    }
}
