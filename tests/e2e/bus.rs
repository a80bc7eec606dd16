//! The bus against the real broker: confirms, unroutable detection, request/reply.

use std::time::Duration;

use cls_bus::{PublishError, Publisher, RpcClient, RpcOutcome};
use cls_tests::TestCluster;
use futures_lite::StreamExt;
use lapin::BasicProperties;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, QueueBindOptions, QueueDeclareOptions};

#[tokio::test]
async fn confirms_unroutable_and_request_reply() {
    let mut c = TestCluster::spawn_with(cls_tests::Options { brands_workers: 0, ..Default::default() }).await;
    let (conn, ch) = c.amqp().await;
    let publisher = Publisher::open(&conn, Duration::from_secs(5)).await.unwrap();
    let exchange = c.topology().commands_exchange();

    // Routed: confirmed.
    publisher.publish(&exchange, "brands.anything", b"x", BasicProperties::default(), true).await.unwrap();
    // No queue bound for this key: mandatory makes it an error, not a silent drop.
    let err = publisher.publish(&exchange, "nobody.listens", b"x", BasicProperties::default(), true).await.unwrap_err();
    assert!(matches!(err, PublishError::Unroutable(_)), "{err:?}");

    // Request/reply over direct reply-to with a responder of our own.
    let queue = format!("{}.echo", c.namespace);
    c.track_queue(queue.clone());
    ch.queue_declare(queue.clone().into(), QueueDeclareOptions { durable: true, ..Default::default() }, Default::default()).await.unwrap();
    ch.queue_bind(queue.clone().into(), exchange.clone().into(), "echo.#".into(), QueueBindOptions::default(), Default::default()).await.unwrap();
    let mut requests = ch.basic_consume(queue.into(), "".into(), BasicConsumeOptions::default(), Default::default()).await.unwrap();
    let responder_channel = conn.create_channel().await.unwrap();
    tokio::spawn(async move {
        while let Some(Ok(d)) = requests.next().await {
            let reply_to = d.properties.reply_to().clone().unwrap();
            let props = BasicProperties::default().with_correlation_id(d.properties.correlation_id().clone().unwrap());
            let mut body = b"echo:".to_vec();
            body.extend_from_slice(&d.data);
            responder_channel.basic_publish("".into(), reply_to.as_str().into(), BasicPublishOptions::default(), &body, props).await.unwrap();
            d.ack(BasicAckOptions::default()).await.unwrap();
        }
    });
    let rpc = RpcClient::open(cls_bus::Link::open(&c.settings.amqp_url, "rpc-test").await.unwrap()).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    match rpc.call(&exchange, "echo.1", b"ping", BasicProperties::default(), deadline).await.unwrap() {
        RpcOutcome::Replied(body) => assert_eq!(body, b"echo:ping"),
        RpcOutcome::TimedOut => panic!("no reply"),
    }
    // Nobody consumes brands commands here: confirmed, then no reply → TimedOut (the 202 path).
    let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
    let outcome = rpc.call(&exchange, "brands.whatever", b"x", BasicProperties::default(), deadline).await.unwrap();
    assert!(matches!(outcome, RpcOutcome::TimedOut));
    // Unroutable through the RPC client too.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let err = rpc.call(&exchange, "nobody.listens", b"x", BasicProperties::default(), deadline).await.unwrap_err();
    assert!(matches!(err, PublishError::Unroutable(_)));

    c.stop().await;
}
