//! The write contract: idempotency, replays, 202 + operations, duplicate deliveries.

use std::time::Duration;

use cls_contracts::command::{BrandsCommand, COMMAND_SCHEMA_VERSION, Command, CreateProduct};
use cls_contracts::{CommandEnvelope, Principal};
use cls_runtime::Secret;
use cls_runtime::secret::SecretBox;
use cls_tests::{ADMIN_TOKEN, Module, Options, TestCluster, eventually};
use hyper::StatusCode;
use serde_json::json;

#[tokio::test]
async fn idempotent_replay_returns_the_first_outcome_with_its_secret() {
    let c = TestCluster::spawn().await;
    let brand = c.create_brand("idem", "ID").await;
    let path = format!("/v1/admin/brands/{}/api-keys", brand["id"].as_str().unwrap());
    let headers = [("x-admin-token", ADMIN_TOKEN), ("idempotency-key", "create-key-1")];
    let body = json!({"name": "billing"});

    let first = c.post(&path, &headers, &body).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(first.header("idempotent-replayed"), None);
    let again = c.post(&path, &headers, &body).await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.body, first.body, "the replay carries the same body, secret included");

    // Same key, another body → 422, and nothing new.
    let other = c.post(&path, &headers, &json!({"name": "another"})).await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(other.json()["code"], "IDEMPOTENCY_KEY_REUSED");
    let keys = c.admin_get(&path).await.json();
    assert_eq!(keys["items"].as_array().unwrap().len(), 1);

    // The stored outcome holding the secret is sealed at rest.
    let secret = first.json()["api_key"].as_str().unwrap().to_owned();
    let stored: Vec<(Vec<u8>, bool)> = sqlx::query_as("SELECT response_body, response_sealed FROM inbox WHERE response_status = 201 AND command_type = 'brands.create_api_key'")
        .fetch_all(&c.pool)
        .await
        .unwrap();
    assert_eq!(stored.len(), 1);
    assert!(stored[0].1, "sealed flag");
    assert!(!stored[0].0.windows(secret.len()).any(|w| w == secret.as_bytes()), "secret stored in clear");

    // A rejection is replayed too (same 409 body).
    let brand_body = json!({"slug": "idem", "name": "x", "key_prefix": "ZZ"});
    let h = [("x-admin-token", ADMIN_TOKEN), ("idempotency-key", "dup-brand")];
    let r1 = c.post("/v1/admin/brands", &h, &brand_body).await;
    let r2 = c.post("/v1/admin/brands", &h, &brand_body).await;
    assert_eq!((r1.status, r2.status), (StatusCode::CONFLICT, StatusCode::CONFLICT));
    assert_eq!(r1.body, r2.body);

    c.stop().await;
}

/// Rotating `CLS_SECRET_KEY`: a retry of a request answered before the rotation replays its
/// first answer, secret included, once the old key is given as `CLS_SECRET_KEY_PREVIOUS`;
/// without it the stored secret cannot be opened and the retry gets a 500, never another answer.
/// New outcomes are sealed with the new key.
#[tokio::test]
async fn a_replay_after_the_secret_key_rotated_opens_with_the_previous_key() {
    let mut c = TestCluster::spawn().await;
    let brand = c.create_brand("rotate", "RO").await;
    let path = format!("/v1/admin/brands/{}/api-keys", brand["id"].as_str().unwrap());
    let headers = [("x-admin-token", ADMIN_TOKEN), ("idempotency-key", "before-rotation")];
    let body = json!({"name": "billing"});
    let first = c.post(&path, &headers, &body).await;
    assert_eq!(first.status, StatusCode::CREATED);

    let old_key = c.settings.secret_key.clone().expect("the test cluster has one");
    let new_key = Secret::new("the-rotated-secret-key-0123");
    c.stop_workers().await;
    c.settings.secret_key = Some(new_key.clone());
    c.start_worker(Module::Brands).await;
    let closed = c.post(&path, &headers, &body).await;
    assert_eq!(closed.status, StatusCode::INTERNAL_SERVER_ERROR, "rotated without the previous key");
    assert_eq!(closed.json()["code"], "INTERNAL");

    c.stop_workers().await;
    c.settings.secret_key_previous = Some(old_key.clone());
    c.start_worker(Module::Brands).await;
    let again = c.post(&path, &headers, &body).await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.body, first.body, "the replay carries the first body, secret included");

    let after = c.post(&path, &[("x-admin-token", ADMIN_TOKEN), ("idempotency-key", "after-rotation")], &json!({"name": "ci"})).await;
    assert_eq!(after.status, StatusCode::CREATED);
    let (sealed,): (Vec<u8>,) = sqlx::query_as("SELECT response_body FROM inbox WHERE response_status = 201 AND command_type = 'brands.create_api_key' ORDER BY completed_at DESC LIMIT 1")
        .fetch_one(&c.pool)
        .await
        .unwrap();
    assert!(SecretBox::new(&old_key).open(&sealed).is_err(), "sealed with the new key only");
    assert_eq!(SecretBox::new(&new_key).open(&sealed).unwrap(), after.body.as_ref());
    c.stop().await;
}

#[tokio::test]
async fn reply_timeout_answers_202_and_the_command_still_completes() {
    // No worker at first: the command waits in its queue and the gateway gives up waiting.
    let mut c = TestCluster::spawn_with(Options { brands_workers: 0, reply_timeout: Duration::from_millis(300), ..Default::default() }).await;
    let headers = [("x-admin-token", ADMIN_TOKEN), ("idempotency-key", "late-brand")];
    let body = json!({"slug": "late", "name": "Late", "key_prefix": "LT"});
    let r = c.post("/v1/admin/brands", &headers, &body).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let operation_id = r.json()["operation_id"].as_str().unwrap().to_owned();
    assert_eq!(r.header("location"), Some(format!("/v1/operations/{operation_id}").as_str()));

    let op_path = format!("/v1/operations/{operation_id}");
    let pending = c.admin_get(&op_path).await;
    assert_eq!(pending.status, StatusCode::OK);
    assert_eq!(pending.json()["status"], "pending");
    // A retry while it is still pending gets the same 202.
    let retry = c.post("/v1/admin/brands", &headers, &body).await;
    assert_eq!(retry.status, StatusCode::ACCEPTED);
    assert_eq!(retry.json()["operation_id"], operation_id.as_str());
    // Another principal cannot see it; an id never issued is 404.
    let (_, key) = {
        c.start_worker(cls_tests::Module::Brands).await;
        c.wait_ready().await;
        c.brand_with_key("other", "OT").await
    };
    assert_eq!(c.get(&op_path, &[("x-api-key", &key)]).await.status, StatusCode::NOT_FOUND);
    let never = c.admin_get(&format!("/v1/operations/{}", uuid::Uuid::now_v7())).await;
    assert_eq!(never.status, StatusCode::NOT_FOUND);
    assert_eq!(never.json()["code"], "OPERATION_NOT_FOUND");

    // The worker is up now: the command completes exactly once.
    eventually(Duration::from_secs(20), "operation succeeded", || async {
        c.admin_get(&op_path).await.json()["status"] == "succeeded"
    })
    .await;
    let op = c.admin_get(&op_path).await.json();
    assert_eq!(op["response"]["status"], 201);
    assert_eq!(op["response"]["body"]["slug"], "late");
    let replay = c.post("/v1/admin/brands", &headers, &body).await;
    assert_eq!(replay.status, StatusCode::CREATED);
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    let slugs = c.admin_get("/v1/admin/brands").await.json();
    assert_eq!(slugs["items"].as_array().unwrap().iter().filter(|b| b["slug"] == "late").count(), 1);

    c.stop().await;
}

#[tokio::test]
async fn a_duplicate_delivery_changes_nothing() {
    let c = TestCluster::spawn().await;
    let (brand_id, _key) = c.brand_with_key("dupes", "DP").await;
    let (conn, _channel) = c.amqp().await;
    let publisher = cls_bus::Publisher::open(&conn, Duration::from_secs(5)).await.unwrap();
    let envelope = CommandEnvelope {
        command_id: uuid::Uuid::now_v7().to_string(),
        schema_version: COMMAND_SCHEMA_VERSION,
        request_id: "dup-test".into(),
        principal: Principal::ApiKey { api_key_id: uuid::Uuid::now_v7().to_string(), brand_id: brand_id.clone(), scopes: vec!["licenses:write".into()] },
        issued_at: cls_contracts::format_time(chrono::Utc::now()),
        request_hash: "same-request".into(),
        command: Command::Brands(BrandsCommand::CreateProduct(CreateProduct {
            brand_id: brand_id.clone(),
            code: "twice".into(),
            name: "Twice".into(),
            default_seat_limit: Some(1),
            default_duration_days: Some(365),
        })),
    };
    let payload = cls_contracts::encode(&envelope);
    let exchange = c.topology().commands_exchange();
    for _ in 0..3 {
        publisher.publish(&exchange, "brands.create_product", &payload, Default::default(), true).await.unwrap();
    }
    let count = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM inbox WHERE command_id = $1 AND state = 'succeeded'")
            .bind(uuid::Uuid::parse_str(&envelope.command_id).unwrap())
            .fetch_one(&c.pool)
            .await
            .unwrap()
    };
    eventually(Duration::from_secs(10), "command handled", || async { count().await == 1 }).await;
    // Wait until all three deliveries were consumed (the queue drains), then check effects once.
    let ch = conn.create_channel().await.unwrap();
    eventually(Duration::from_secs(10), "queue drained", || async {
        let q = ch
            .queue_declare(c.topology().command_queue(cls_contracts::Module::Brands).into(), lapin::options::QueueDeclareOptions { passive: true, ..Default::default() }, Default::default())
            .await
            .unwrap();
        q.message_count() == 0
    })
    .await;
    let products: i64 = sqlx::query_scalar("SELECT count(*) FROM products WHERE code = 'twice'").fetch_one(&c.pool).await.unwrap();
    assert_eq!(products, 1);
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE event_type = 'product.created'").fetch_one(&c.pool).await.unwrap();
    assert_eq!(events, 1);
    let audits: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_entries WHERE action = 'product.created'").fetch_one(&c.pool).await.unwrap();
    assert_eq!(audits, 1);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_the_work_and_each_command_runs_once() {
    let c = std::sync::Arc::new(TestCluster::spawn_with(Options { brands_workers: 3, ..Default::default() }).await);
    let (_brand, key) = c.brand_with_key("replicated", "RP").await;
    let mut tasks = Vec::new();
    for i in 0..60 {
        let (c, key) = (c.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            let body = json!({"code": format!("r-{i}"), "name": "R"});
            let idem = format!("replica-{i}");
            // Each request sent twice, concurrently: still one product each.
            let headers = [("x-api-key", key.as_str()), ("idempotency-key", idem.as_str())];
            let (a, b) = tokio::join!(c.post("/v1/products", &headers, &body), c.post("/v1/products", &headers, &body));
            assert_eq!((a.status, b.status), (StatusCode::CREATED, StatusCode::CREATED));
            assert_eq!(a.json()["id"], b.json()["id"]);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let products: i64 = sqlx::query_scalar("SELECT count(*) FROM products").fetch_one(&c.pool).await.unwrap();
    assert_eq!(products, 60);
    // More than one replica did work.
    let mut busy = 0;
    for name in ["brands-worker", "brands-worker-1", "brands-worker-2"] {
        let metrics = String::from_utf8_lossy(&c.ops_get(name, "/metrics").await.body).into_owned();
        if metrics.contains("command=\"brands.create_product\",outcome=\"handled\"") {
            busy += 1;
        }
    }
    assert!(busy >= 2, "only {busy} replica(s) handled commands");
    std::sync::Arc::into_inner(c).unwrap().stop().await;
}
