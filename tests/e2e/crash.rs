//! A worker SIGKILLed mid-stream loses nothing and doubles nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cls_tests::{Options, TestCluster, eventually};
use hyper::StatusCode;
use serde_json::json;

const PRODUCTS: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brands_worker_sigkilled_during_200_idempotent_creations() {
    let c = Arc::new(TestCluster::spawn_with(Options { brands_workers: 0, reply_timeout: Duration::from_secs(2), ..Default::default() }).await);
    let mut worker = c.spawn_worker_process("cls-brands-worker");
    c.wait_ready().await;
    let (_brand, key) = c.brand_with_key("crashy", "CR").await;

    let clients = Arc::new(tokio::sync::Semaphore::new(16));
    let accepted = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..PRODUCTS {
        let (c, key, clients, accepted) = (c.clone(), key.clone(), clients.clone(), accepted.clone());
        tasks.push(tokio::spawn(async move {
            let _slot = clients.acquire().await.unwrap();
            create_until_done(&c, &key, i, &accepted).await
        }));
    }

    // Kill the worker three times while the clients work, restarting it each time.
    for round in 1..=3 {
        let target = round * PRODUCTS as i64 / 5;
        eventually(Duration::from_secs(60), "progress before the kill", || async { products(&c).await >= target }).await;
        worker.start_kill().expect("SIGKILL");
        worker.wait().await.unwrap();
        if round == 2 {
            // Stay down past the reply timeout once, so clients also go through 202 + polling.
            eventually(Duration::from_secs(30), "a client answered 202", || async { accepted.load(Ordering::Relaxed) > 0 }).await;
        }
        worker = c.spawn_worker_process("cls-brands-worker");
    }

    let mut via_202 = 0;
    for task in tasks {
        if task.await.unwrap() {
            via_202 += 1;
        }
    }
    assert_eq!(products(&c).await, PRODUCTS as i64, "exactly one product per request");
    let events: i64 = sqlx::query_scalar("SELECT count(DISTINCT event_id) FROM outbox WHERE event_type = 'product.created'").fetch_one(&c.pool).await.unwrap();
    assert_eq!(events, PRODUCTS as i64);
    assert!(via_202 > 0, "no client went through the 202 path");
    eprintln!("{via_202} of {PRODUCTS} clients completed through 202 + operation polling");

    worker.start_kill().unwrap();
    worker.wait().await.unwrap();
    Arc::into_inner(c).expect("all clients done").stop().await;
}

async fn products(c: &TestCluster) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM products").fetch_one(&c.pool).await.unwrap()
}

/// A client that retries with its idempotency key until it gets 201 (directly or through the
/// operation of a 202). Returns whether it went through a 202.
async fn create_until_done(c: &TestCluster, key: &str, i: usize, accepted: &AtomicUsize) -> bool {
    let idempotency_key = format!("product-{i}");
    let body = json!({"code": format!("p-{i}"), "name": format!("Product {i}")});
    let until = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        assert!(tokio::time::Instant::now() < until, "client {i} never completed");
        let r = c.post("/v1/products", &[("x-api-key", key), ("idempotency-key", &idempotency_key)], &body).await;
        match r.status {
            StatusCode::CREATED => return false,
            StatusCode::ACCEPTED => {
                accepted.fetch_add(1, Ordering::Relaxed);
                let op = format!("/v1/operations/{}", r.json()["operation_id"].as_str().unwrap());
                let until = tokio::time::Instant::now() + Duration::from_secs(60);
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
