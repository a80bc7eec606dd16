//! Poison messages land in the dead-letter queues and the worker keeps serving; `cls dlq list`
//! shows them; `cls dlq replay` sends a message back to the queue it died in.

use std::time::Duration;

use cls_contracts::command::{BrandsCommand, COMMAND_SCHEMA_VERSION, Command, CreateBrand, CreateProduct};
use cls_contracts::{CommandEnvelope, Module, Principal};
use cls_tests::{TestCluster, binary_path, eventually};
use hyper::StatusCode;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};

async fn depth(channel: &lapin::Channel, queue: &str) -> u32 {
    let passive = lapin::options::QueueDeclareOptions { passive: true, ..Default::default() };
    channel.queue_declare(queue.into(), passive, FieldTable::default()).await.unwrap().message_count()
}

async fn cls(c: &TestCluster, args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new(binary_path("cls")).envs(c.env()).args(args).output().await.expect("cls runs");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[tokio::test]
async fn poison_messages_are_dead_lettered_listed_and_replayed() {
    let c = TestCluster::spawn().await;
    let (brand_id, key) = c.brand_with_key("poisoned", "PO").await;
    let (conn, channel) = c.amqp().await;
    let publisher = cls_bus::Publisher::open(&conn, Duration::from_secs(5)).await.unwrap();
    let topology = c.topology();
    let licenses_dlq = topology.dead_letter_queue(Module::Licenses);
    let brands_dlq = topology.dead_letter_queue(Module::Brands);

    // Garbage bytes and an envelope of an unknown schema version: both dead-lettered at once.
    let exchange = topology.commands_exchange();
    let garbage = BasicProperties::default().with_message_id("garbage-1".into());
    publisher.publish(&exchange, "licenses.provision", b"\xc1\xc1 not msgpack", garbage, true).await.unwrap();
    let future_envelope = CommandEnvelope {
        command_id: uuid::Uuid::now_v7().to_string(),
        schema_version: COMMAND_SCHEMA_VERSION + 1,
        request_id: "from-the-future".into(),
        principal: Principal::Admin,
        issued_at: cls_contracts::format_time(chrono::Utc::now()),
        request_hash: "h".into(),
        command: Command::Brands(BrandsCommand::CreateBrand(CreateBrand { slug: "future".into(), name: "Future".into(), key_prefix: "FU".into() })),
    };
    let props = BasicProperties::default().with_message_id("future-1".into());
    publisher.publish(&exchange, "licenses.provision", &cls_contracts::encode(&future_envelope), props, true).await.unwrap();
    eventually(Duration::from_secs(10), "two dead letters", || async { depth(&channel, &licenses_dlq).await == 2 }).await;

    // The worker keeps serving.
    c.post("/v1/products", &[("x-api-key", &key)], &serde_json::json!({"code": "app", "name": "App"})).await;
    let r = c.post("/v1/licenses", &[("x-api-key", &key)], &serde_json::json!({"customer_email": "a@b.io", "products": [{"code": "app"}]})).await;
    assert_eq!(r.status, StatusCode::CREATED);

    // A good command that died earlier (say, before a bug was fixed): in the brands DLQ with the
    // broker's death headers.
    let command_id = uuid::Uuid::now_v7();
    let revived = CommandEnvelope {
        command_id: command_id.to_string(),
        schema_version: COMMAND_SCHEMA_VERSION,
        request_id: "revived".into(),
        principal: Principal::Admin,
        issued_at: cls_contracts::format_time(chrono::Utc::now()),
        request_hash: "revived-request".into(),
        command: Command::Brands(BrandsCommand::CreateBrand(CreateBrand { slug: "revived".into(), name: "Revived".into(), key_prefix: "RV".into() })),
    };
    let mut headers = FieldTable::default();
    headers.insert("x-first-death-queue".into(), AMQPValue::LongString(topology.command_queue(Module::Brands).into()));
    headers.insert("x-first-death-reason".into(), AMQPValue::LongString("rejected".into()));
    let props = BasicProperties::default().with_message_id(command_id.to_string().into()).with_type("brands.create_brand".into()).with_headers(headers);
    publisher
        .publish(&topology.dead_letter_exchange(), &topology.command_queue(Module::Brands), &cls_contracts::encode(&revived), props, true)
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "the dead command is in the brands DLQ", || async { depth(&channel, &brands_dlq).await == 1 }).await;

    let (ok, listed) = cls(&c, &["dlq", "list"]).await;
    assert!(ok, "{listed}");
    assert!(listed.contains(&format!("{licenses_dlq}  2 message(s)")), "{listed}");
    assert!(listed.contains(&format!("{brands_dlq}  1 message(s)")), "{listed}");
    assert!(listed.contains("garbage-1") && listed.contains("future-1") && listed.contains(&command_id.to_string()), "{listed}");
    assert!(listed.contains("rejected"), "the reason is shown: {listed}");
    // Peeked messages go back when the CLI's channel closes (a quorum queue re-enqueues them
    // asynchronously, so the depth is polled).
    eventually(Duration::from_secs(10), "listing leaves the messages in place", || async { depth(&channel, &licenses_dlq).await == 2 }).await;

    // Replaying the fixed command brings it back to work.
    let (ok, out) = cls(&c, &["dlq", "replay", &brands_dlq, "--message-id", &command_id.to_string()]).await;
    assert!(ok, "{out}");
    assert!(out.contains("1 replayed, 0 left"), "{out}");
    eventually(Duration::from_secs(10), "the replayed command succeeded", || async {
        c.admin_get(&format!("/v1/operations/{command_id}")).await.json()["status"] == "succeeded"
    })
    .await;
    let brands = c.admin_get("/v1/admin/brands").await.json();
    assert!(brands["items"].as_array().unwrap().iter().any(|b| b["slug"] == "revived"));
    assert_eq!(depth(&channel, &brands_dlq).await, 0);

    // Replaying poison only sends it back to the DLQ; the worker still serves.
    let (ok, out) = cls(&c, &["dlq", "replay", &licenses_dlq]).await;
    assert!(ok, "{out}");
    assert!(out.contains("2 replayed"), "{out}");
    eventually(Duration::from_secs(10), "poison dead-lettered again", || async { depth(&channel, &licenses_dlq).await == 2 }).await;
    let r = c.post("/v1/licenses", &[("x-api-key", &key)], &serde_json::json!({"customer_email": "c@d.io", "products": [{"code": "app"}]})).await;
    assert_eq!(r.status, StatusCode::CREATED);

    // A command whose handler always fails (its brand is not the caller's: a fatal error, never
    // retried): dead-lettered, and its operation reads `failed`.
    let failing_id = uuid::Uuid::now_v7();
    let failing = CommandEnvelope {
        command_id: failing_id.to_string(),
        schema_version: COMMAND_SCHEMA_VERSION,
        request_id: "always-fails".into(),
        principal: Principal::ApiKey { api_key_id: uuid::Uuid::now_v7().to_string(), brand_id: brand_id.clone(), scopes: vec!["licenses:write".into()] },
        issued_at: cls_contracts::format_time(chrono::Utc::now()),
        request_hash: "h".into(),
        command: Command::Brands(BrandsCommand::CreateProduct(CreateProduct {
            brand_id: uuid::Uuid::now_v7().to_string(),
            code: "stolen".into(),
            name: "Stolen".into(),
            default_seat_limit: None,
            default_duration_days: None,
        })),
    };
    let props = BasicProperties::default().with_message_id(failing_id.to_string().into());
    publisher.publish(&exchange, "brands.create_product", &cls_contracts::encode(&failing), props, true).await.unwrap();
    eventually(Duration::from_secs(10), "the failing command is dead-lettered", || async { depth(&channel, &brands_dlq).await == 1 }).await;
    let op = c.get(&format!("/v1/operations/{failing_id}"), &[("x-api-key", &key)]).await;
    assert_eq!(op.json()["status"], "failed", "{:?}", String::from_utf8_lossy(&op.body));
    assert_eq!(c.post("/v1/products", &[("x-api-key", &key)], &serde_json::json!({"code": "after", "name": "After"})).await.status, StatusCode::CREATED);

    // A queue that is not a DLQ of the namespace is refused.
    let (ok, out) = cls(&c, &["dlq", "replay", &topology.command_queue(Module::Brands)]).await;
    assert!(!ok && out.contains("not a dead-letter queue"), "{out}");
    c.stop().await;
}
