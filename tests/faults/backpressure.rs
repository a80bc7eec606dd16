//! Backpressure: a broker under a memory alarm blocks publishers. The broker blocks a connection
//! (and says so) when it next publishes: that first command waits at most the reply timeout and
//! answers 202 (its frames are queued; it runs once the alarm clears). From then on the gateway
//! answers commands 503 with Retry-After at once without publishing, says so on /ready, and
//! takes commands again when the alarm clears.

use std::process::Command;
use std::time::Duration;

use cls_tests::{TestCluster, eventually};
use hyper::StatusCode;
use serde_json::json;

use crate::support::run;

/// The broker's memory high watermark as configured now (e.g. `0.4`).
fn watermark() -> String {
    let out = Command::new("rabbitmqctl").args(["-q", "eval", "vm_memory_monitor:get_vm_memory_high_watermark()."]).output().expect("rabbitmqctl");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(text.parse::<f64>().is_ok(), "a relative watermark, got {text:?}");
    text
}

/// Puts the watermark back however the test ends.
struct Watermark(String);

impl Drop for Watermark {
    fn drop(&mut self) {
        run("rabbitmqctl", &["-q", "set_vm_memory_high_watermark", &self.0]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_broker_gets_503_at_once_and_recovers() {
    let c = TestCluster::spawn().await;
    let (_, brand) = c.brand_with_key("blocked", "BL").await;
    let product = |code: &str, key: &str| {
        let body = json!({"code": code, "name": code});
        let headers = [("x-api-key", brand.clone()), ("idempotency-key", key.to_owned())];
        let c = &c;
        async move {
            let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            c.post("/v1/products", &headers, &body).await
        }
    };
    assert_eq!(product("before", "p-before").await.status, StatusCode::CREATED);

    let restore = Watermark(watermark());
    run("rabbitmqctl", &["-q", "set_vm_memory_high_watermark", "0.000001"]);
    let first = product("first", "p-first").await;
    assert!(matches!(first.status, StatusCode::ACCEPTED | StatusCode::SERVICE_UNAVAILABLE), "{:?}", String::from_utf8_lossy(&first.body));
    eventually(Duration::from_secs(30), "the gateway sees the alarm", || async {
        c.get("/ready", &[]).await.status == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    let r = product("during", "p-during").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["code"], "UNAVAILABLE");
    assert!(r.header("retry-after").is_some());
    // Reads do not need to publish: still served.
    assert_eq!(c.get("/v1/products", &[("x-api-key", &brand)]).await.status, StatusCode::OK);

    drop(restore);
    eventually(Duration::from_secs(30), "the gateway is ready again", || async { c.get("/ready", &[]).await.status == StatusCode::OK }).await;
    // The client retries with the same key: exactly one product.
    assert_eq!(product("during", "p-during").await.status, StatusCode::CREATED);
    // The command queued before the block ran too, once.
    if first.status == StatusCode::ACCEPTED {
        let operation = format!("/v1/operations/{}", first.json()["operation_id"].as_str().unwrap());
        eventually(Duration::from_secs(30), "the queued command completed", || async {
            c.get(&operation, &[("x-api-key", &brand)]).await.json()["status"] == "succeeded"
        })
        .await;
    }
    let listed = c.get("/v1/products", &[("x-api-key", &brand)]).await.json();
    assert_eq!(listed["items"].as_array().unwrap().iter().filter(|p| p["code"] == "during").count(), 1);
    c.stop().await;
}
