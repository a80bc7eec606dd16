//! A worker SIGKILLed mid-stream loses nothing and doubles nothing: clients retry with their
//! idempotency keys, and every one ends with its 201 (directly, or through the operation of a
//! 202).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cls_tests::{Options, TestCluster, eventually};
use hyper::StatusCode;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brands_worker_sigkilled_during_200_idempotent_creations() {
    let c = Arc::new(TestCluster::spawn_with(Options { brands_workers: 0, reply_timeout: Duration::from_secs(2), ..Default::default() }).await);
    let worker = c.spawn_worker_process("cls-brands-worker");
    c.wait_ready().await;
    let (_brand, key) = c.brand_with_key("crashy", "CR").await;

    let requests = (0..200).map(|i| json!({"code": format!("p-{i}"), "name": format!("Product {i}")})).collect();
    let count = "SELECT count(*) FROM products";
    let via_202 = kill_during(&c, worker, "cls-brands-worker", &key, "/v1/products", requests, count).await;
    assert_eq!(scalar(&c, count).await, 200, "exactly one product per request");
    assert_eq!(scalar(&c, "SELECT count(*) FROM outbox WHERE event_type = 'product.created'").await, 200, "one event per product");
    eprintln!("{via_202} of 200 clients completed through 202 + operation polling");
    Arc::into_inner(c).expect("all clients done").stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn licenses_worker_sigkilled_during_500_idempotent_provisionings() {
    let c = TestCluster::spawn_with(Options { licenses_workers: 0, reply_timeout: Duration::from_secs(2), ..Default::default() }).await;
    let worker = c.spawn_worker_process("cls-licenses-worker");
    c.wait_ready().await;
    let (_brand, key) = c.brand_with_key("crashing-licenses", "CL").await;
    let r = c.post("/v1/products", &[("x-api-key", &key)], &json!({"code": "pro", "name": "Pro"})).await;
    assert_eq!(r.status, StatusCode::CREATED);

    let c = Arc::new(c);
    let requests = (0..500).map(|i| json!({"customer_email": format!("buyer-{i}@shop.io"), "products": [{"code": "pro"}]})).collect();
    let count = "SELECT count(*) FROM licenses";
    kill_during(&c, worker, "cls-licenses-worker", &key, "/v1/licenses", requests, count).await;
    assert_eq!(scalar(&c, count).await, 500, "exactly one license per request");
    assert_eq!(scalar(&c, "SELECT count(*) FROM license_keys").await, 500);
    assert_eq!(scalar(&c, "SELECT count(*) FROM outbox WHERE event_type = 'license.provisioned'").await, 500, "no duplicated events");
    assert_eq!(scalar(&c, "SELECT count(DISTINCT event_id) FROM outbox").await, scalar(&c, "SELECT count(*) FROM outbox").await);
    // Nothing was dead-lettered along the way.
    let (_conn, ch) = c.amqp().await;
    for queue in c.topology().dead_letter_queues() {
        let passive = lapin::options::QueueDeclareOptions { passive: true, ..Default::default() };
        let depth = ch.queue_declare(queue.clone().into(), passive, Default::default()).await.unwrap().message_count();
        assert_eq!(depth, 0, "{queue} holds dead letters");
    }
    Arc::into_inner(c).expect("all clients done").stop().await;
}

async fn scalar(c: &TestCluster, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&c.pool).await.unwrap()
}

/// Sends every request (16 clients at a time, each retrying with its idempotency key) while the
/// worker process is SIGKILLed three times and restarted; once it stays down past the reply
/// timeout, so clients also go through 202 + polling. Returns how many did.
async fn kill_during(
    c: &Arc<TestCluster>,
    mut worker: tokio::process::Child,
    binary: &str,
    key: &str,
    path: &'static str,
    requests: Vec<Value>,
    count_sql: &'static str,
) -> usize {
    let total = requests.len() as i64;
    let clients = Arc::new(tokio::sync::Semaphore::new(16));
    let accepted = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for (i, body) in requests.into_iter().enumerate() {
        let (c, key, clients, accepted) = (c.clone(), key.to_owned(), clients.clone(), accepted.clone());
        tasks.push(tokio::spawn(async move {
            let _slot = clients.acquire().await.unwrap();
            send_until_done(&c, &key, path, i, &body, &accepted).await
        }));
    }
    for round in 1..=3 {
        let target = round * total / 5;
        eventually(Duration::from_secs(60), "progress before the kill", || async { scalar(c, count_sql).await >= target }).await;
        worker.start_kill().expect("SIGKILL");
        worker.wait().await.unwrap();
        if round == 2 {
            eventually(Duration::from_secs(30), "a client answered 202", || async { accepted.load(Ordering::Relaxed) > 0 }).await;
        }
        worker = c.spawn_worker_process(binary);
    }
    let mut via_202 = 0;
    for task in tasks {
        if task.await.unwrap() {
            via_202 += 1;
        }
    }
    assert!(via_202 > 0, "no client went through the 202 path");
    worker.start_kill().unwrap();
    worker.wait().await.unwrap();
    via_202
}

/// One client: retries with its idempotency key until it gets 201, directly or through the
/// operation of a 202. Returns whether it went through a 202.
async fn send_until_done(c: &TestCluster, key: &str, path: &str, i: usize, body: &Value, accepted: &AtomicUsize) -> bool {
    let idempotency_key = format!("request-{i}");
    let until = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        assert!(tokio::time::Instant::now() < until, "client {i} never completed");
        let r = c.post(path, &[("x-api-key", key), ("idempotency-key", &idempotency_key)], body).await;
        match r.status {
            StatusCode::CREATED => return false,
            StatusCode::ACCEPTED => {
                accepted.fetch_add(1, Ordering::Relaxed);
                let op = format!("/v1/operations/{}", r.json()["operation_id"].as_str().unwrap());
                let done = loop {
                    let o = c.get(&op, &[("x-api-key", key)]).await;
                    if o.status == StatusCode::OK && o.json()["status"] == "succeeded" {
                        break o.json()["response"]["status"].as_u64();
                    }
                    assert!(tokio::time::Instant::now() < until, "client {i}: operation never finished");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                };
                assert_eq!(done, Some(201), "client {i}: operation outcome");
                return true;
            }
            StatusCode::SERVICE_UNAVAILABLE => tokio::time::sleep(Duration::from_millis(100)).await,
            other => panic!("client {i}: unexpected {other}: {:?}", String::from_utf8_lossy(&r.body)),
        }
    }
}
