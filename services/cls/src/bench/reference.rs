//! The two reference runs that give each scenario a ceiling measured on the same machine, at
//! the same time, by the same load generator:
//!
//! - [`RedisReference`], the read-path ceiling: an in-process hyper server (HTTP/1, keep-alive)
//!   that answers every request with one Redis GET, through the same Redis client the query
//!   service uses ([`cls_readmodel::connect_redis`]). The stored value is a real validation
//!   answer of the fixture, so the bytes moved are those of a validation.
//! - [`RabbitReference`], the write-path ceiling: a bare request/reply round trip the way the
//!   gateway and a worker do it, minus the work. A quorum queue; the client publishes
//!   persistent, `mandatory` messages with publisher confirms on one channel that also consumes
//!   direct reply-to, and waits for the confirm and then the reply; the responder consumes with
//!   a prefetch of 16 (a worker's default concurrency), replies on a second connection, acks.
//!
//! Both clean up after themselves (the Redis key and the queue); the queue also expires on its
//! own if the benchmark dies.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use cls_runtime::CancellationToken;
use fred::prelude::*;
use futures_lite::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use super::driver::Outcome;

/// How long a reference key or queue outlives a benchmark that died without cleaning up.
const LEFTOVER_TTL: Duration = Duration::from_secs(600);
/// Responder prefetch: `CLS_WORKER_CONCURRENCY`'s default.
const RESPONDER_PREFETCH: u16 = 16;
/// About the size of a command envelope and of a worker's reply.
const REQUEST_BYTES: usize = 512;
const REPLY_BYTES: usize = 256;
/// Bound on one reference round trip, like the gateway's default reply timeout.
const RPC_TIMEOUT: Duration = Duration::from_secs(5);
const REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// The hyper + Redis GET server.
pub struct RedisReference {
    pub addr: SocketAddr,
    redis: fred::clients::Client,
    key: String,
    stop: CancellationToken,
}

impl RedisReference {
    /// Stores `value` under `key` and starts serving on a free loopback port.
    pub async fn start(redis_url: &str, key: String, value: Bytes) -> anyhow::Result<RedisReference> {
        let redis = cls_readmodel::connect_redis(redis_url).await?;
        let ttl = Some(Expiration::EX(LEFTOVER_TTL.as_secs() as i64));
        let () = redis.set(&key, value, ttl, None, false).await.context("cannot write the reference value to Redis")?;
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        tokio::spawn(serve(listener, redis.clone(), key.clone(), stop.clone()));
        Ok(RedisReference { addr, redis, key, stop })
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let _: Result<i64, _> = self.redis.del(&self.key).await;
        let _ = self.redis.quit().await;
    }
}

async fn serve(listener: TcpListener, redis: fred::clients::Client, key: String, stop: CancellationToken) {
    let key = Arc::new(key);
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => continue,
            },
        };
        let _ = stream.set_nodelay(true);
        let (redis, key) = (redis.clone(), key.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (redis, key) = (redis.clone(), key.clone());
                async move {
                    // Read the request as the gateway does, then one GET.
                    let _ = req.into_body().collect().await;
                    let response = match redis.get::<Option<Bytes>, _>(key.as_str()).await {
                        Ok(Some(value)) => Response::builder()
                            .status(StatusCode::OK)
                            .header(hyper::header::CONTENT_TYPE, "application/json")
                            .body(Full::new(value)),
                        _ => Response::builder().status(StatusCode::SERVICE_UNAVAILABLE).body(Full::new(Bytes::new())),
                    };
                    Ok::<_, std::convert::Infallible>(response.expect("static response parts are valid"))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

/// The RabbitMQ request/reply reference: a responder and a caller on their own connections.
pub struct RabbitReference {
    pub caller: Arc<RpcCaller>,
    queue: String,
    connections: Vec<Connection>,
}

/// The client side, shared by every slot (one channel, as the gateway's RPC client).
pub struct RpcCaller {
    channel: Channel,
    queue: String,
    pending: Arc<Mutex<HashMap<String, oneshot::Sender<()>>>>,
    payload: Vec<u8>,
}

impl RabbitReference {
    pub async fn start(amqp_url: &str, queue: String) -> anyhow::Result<RabbitReference> {
        let admin = cls_bus::connect(amqp_url, "cls-bench-reference").await?;
        let declare = admin.create_channel().await?;
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
        args.insert("x-expires".into(), AMQPValue::LongLongInt(LEFTOVER_TTL.as_millis() as i64));
        let durable = QueueDeclareOptions { durable: true, ..Default::default() };
        declare.queue_declare(queue.clone().into(), durable, args).await.context("cannot declare the reference queue")?;

        // The responder: consume on one connection, reply on another (as a worker does).
        let consume = cls_bus::connect(amqp_url, "cls-bench-responder").await?;
        let replies = cls_bus::connect(amqp_url, "cls-bench-responder-replies").await?;
        let consume_channel = consume.create_channel().await?;
        consume_channel.basic_qos(RESPONDER_PREFETCH, BasicQosOptions::default()).await?;
        let reply_channel = replies.create_channel().await?;
        let mut deliveries = consume_channel
            .basic_consume(queue.clone().into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
            .await?;
        tokio::spawn(async move {
            let reply = vec![0x5a_u8; REPLY_BYTES];
            while let Some(Ok(delivery)) = deliveries.next().await {
                let (reply_channel, reply) = (reply_channel.clone(), reply.clone());
                tokio::spawn(async move {
                    if let Some(reply_to) = delivery.properties.reply_to() {
                        let mut properties = BasicProperties::default();
                        if let Some(correlation) = delivery.properties.correlation_id() {
                            properties = properties.with_correlation_id(correlation.clone());
                        }
                        let _ = reply_channel
                            .basic_publish("".into(), reply_to.as_str().into(), BasicPublishOptions::default(), &reply, properties)
                            .await;
                    }
                    let _ = delivery.ack(BasicAckOptions::default()).await;
                });
            }
        });

        // The caller: confirms and direct reply-to on one channel.
        let client = cls_bus::connect(amqp_url, "cls-bench-caller").await?;
        let channel = client.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        let pending: Arc<Mutex<HashMap<String, oneshot::Sender<()>>>> = Arc::default();
        let options = BasicConsumeOptions { no_ack: true, ..Default::default() };
        let mut incoming = channel.basic_consume(REPLY_TO.into(), "".into(), options, FieldTable::default()).await?;
        let waiting = pending.clone();
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = incoming.next().await {
                let Some(correlation) = delivery.properties.correlation_id() else { continue };
                let waiter = waiting.lock().expect("not poisoned").remove(correlation.as_str());
                if let Some(waiter) = waiter {
                    let _ = waiter.send(());
                }
            }
        });
        let caller = RpcCaller { channel, queue: queue.clone(), pending, payload: vec![0xa5_u8; REQUEST_BYTES] };
        Ok(RabbitReference { caller: Arc::new(caller), queue, connections: vec![admin, consume, replies, client] })
    }

    pub async fn stop(self) {
        if let Some(admin) = self.connections.first()
            && let Ok(channel) = admin.create_channel().await
        {
            let _ = channel.queue_delete(self.queue.clone().into(), QueueDeleteOptions::default()).await;
        }
        for connection in &self.connections {
            let _ = connection.close(200, "bench done".into()).await;
        }
    }
}

impl RpcCaller {
    /// One round trip: publish with confirm, then wait for the reply.
    pub async fn call(&self, seq: u64) -> Outcome {
        let correlation = format!("{seq}");
        let (tx, rx) = oneshot::channel();
        self.pending.lock().expect("not poisoned").insert(correlation.clone(), tx);
        let outcome = tokio::time::timeout(RPC_TIMEOUT, self.round_trip(&correlation, rx)).await.unwrap_or(Outcome::Timeout);
        self.pending.lock().expect("not poisoned").remove(&correlation);
        outcome
    }

    async fn round_trip(&self, correlation: &str, reply: oneshot::Receiver<()>) -> Outcome {
        let properties = BasicProperties::default()
            .with_reply_to(REPLY_TO.into())
            .with_correlation_id(correlation.into())
            .with_delivery_mode(2);
        let options = BasicPublishOptions { mandatory: true, ..Default::default() };
        let confirm = match self.channel.basic_publish("".into(), self.queue.as_str().into(), options, &self.payload, properties).await {
            Ok(confirm) => confirm,
            Err(_) => return Outcome::Io,
        };
        match confirm.await {
            Ok(confirmation) if confirmation.is_ack() => {}
            _ => return Outcome::Status(503),
        }
        match reply.await {
            Ok(()) => Outcome::Status(200),
            Err(_) => Outcome::Io,
        }
    }
}
