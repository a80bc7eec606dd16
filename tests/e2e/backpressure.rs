//! A full command queue answers 503 with Retry-After at once, and loses nothing it accepted.
//!
//! Command queues are bounded (`x-max-length` 100,000, `reject-publish`): the broker nacks a
//! publish to a full queue and the gateway answers 503. Filling 100,000 real commands would
//! take minutes, so the test lowers this namespace's bound with a policy (RabbitMQ applies the
//! lower of the policy and the queue argument); the path from nack to 503 is the same.

use std::process::Command;
use std::time::{Duration, Instant};

use cls_tests::{Module, Options, TestCluster, eventually};
use hyper::StatusCode;
use serde_json::json;

/// The lowered bound of the licenses command queue.
const BOUND: usize = 3;

#[tokio::test]
async fn a_full_command_queue_answers_503_with_retry_after_and_loses_nothing() {
    // No licenses worker: provisioning commands stay in their queue.
    let mut c = TestCluster::spawn_with(Options { licenses_workers: 0, reply_timeout: Duration::from_secs(1), ..Default::default() }).await;
    let (_brand, key) = c.brand_with_key("backpressure", "BP").await;
    let r = c.post("/v1/products", &[("x-api-key", &key)], &json!({"code": "pro", "name": "Pro"})).await;
    assert_eq!(r.status, StatusCode::CREATED);

    let queue = c.topology().command_queue(Module::Licenses);
    let policy = QueuePolicy::set(&format!("{}-bound", c.namespace), &queue, BOUND).await;

    // Published and confirmed, but nobody answers: 202 with the operation to poll, until the
    // queue is full (a quorum queue may take one past its bound before it refuses). Then the
    // broker refuses the publish and the gateway says so at once, well inside the reply timeout
    // it would otherwise have waited.
    let mut operations = Vec::new();
    let (refused, waited) = loop {
        assert!(operations.len() <= BOUND + 1, "the queue took {} commands past its bound of {BOUND}", operations.len());
        let started = Instant::now();
        let r = provision(&c, &key, operations.len()).await;
        if r.status != StatusCode::ACCEPTED {
            break (r, started.elapsed());
        }
        operations.push(r.json()["operation_id"].as_str().unwrap().to_owned());
    };
    assert!(operations.len() >= BOUND, "refused with room in the queue");
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", refused.body);
    assert_eq!(refused.json()["code"], "UNAVAILABLE", "{:?}", refused.body);
    assert!(refused.header("retry-after").is_some(), "a 503 says when to retry");
    assert!(waited < Duration::from_secs(1), "refused after {waited:?}, not after the reply timeout");
    assert_eq!(count(&c, "SELECT count(*) FROM licenses").await, 0);

    // A worker drains the queue: every accepted command completes, the refused one was never
    // taken, and its retry (same idempotency key) goes through once there is room.
    drop(policy);
    c.start_worker(Module::Licenses).await;
    c.wait_ready().await;
    for operation in &operations {
        eventually(Duration::from_secs(30), &format!("operation {operation} succeeded"), || async {
            c.get(&format!("/v1/operations/{operation}"), &[("x-api-key", &key)]).await.json()["status"] == "succeeded"
        })
        .await;
    }
    assert_eq!(count(&c, "SELECT count(*) FROM licenses").await, operations.len() as i64);
    let retried = provision(&c, &key, operations.len()).await;
    assert_eq!(retried.status, StatusCode::CREATED, "{:?}", retried.body);
    assert_eq!(count(&c, "SELECT count(*) FROM licenses").await, operations.len() as i64 + 1);
    c.stop().await;
}

async fn provision(c: &TestCluster, key: &str, i: usize) -> cls_tests::TestResponse {
    let body = json!({"customer_email": format!("queued-{i}@shop.io"), "products": [{"code": "pro"}]});
    c.post("/v1/licenses", &[("x-api-key", key), ("idempotency-key", &format!("backpressure-{i}"))], &body).await
}

async fn count(c: &TestCluster, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&c.pool).await.unwrap()
}

/// A RabbitMQ policy bounding one queue's length, cleared on drop (the test passed or not).
struct QueuePolicy {
    name: String,
}

impl QueuePolicy {
    /// Sets the policy and waits until the broker applies it to the queue.
    async fn set(name: &str, queue: &str, max_length: usize) -> QueuePolicy {
        let pattern = format!("^{}$", queue.replace('.', "\\."));
        let definition = format!(r#"{{"max-length":{max_length},"overflow":"reject-publish"}}"#);
        rabbitmqctl(&["set_policy", "--apply-to", "queues", "--priority", "100", name, &pattern, &definition]);
        let policy = QueuePolicy { name: name.to_owned() };
        eventually(Duration::from_secs(30), &format!("policy {name} applied to {queue}"), || async {
            rabbitmqctl(&["list_queues", "name", "policy"]).lines().any(|l| l.split_whitespace().eq([queue, name]))
        })
        .await;
        policy
    }
}

impl Drop for QueuePolicy {
    fn drop(&mut self) {
        rabbitmqctl(&["clear_policy", &self.name]);
    }
}

fn rabbitmqctl(args: &[&str]) -> String {
    let out = Command::new("timeout").args(["-k", "5", "60", "rabbitmqctl", "-q"]).args(args).output().expect("rabbitmqctl");
    assert!(out.status.success(), "rabbitmqctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}
