//! Redis stopped and started again (which flushes it: it keeps nothing on disk) during
//! validation load: every answer stays correct, Postgres answers while Redis is away, and the
//! read model refills afterwards.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use cls_tests::{TestCluster, eventually};
use hyper::StatusCode;
use serde_json::json;

use crate::support::{Restore, redis_ping, start_redis, stop_redis, until_ok};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn validations_stay_correct_while_redis_restarts_empty() {
    let _restore = Restore;
    let c = Arc::new(TestCluster::spawn().await);
    let (_, brand) = c.brand_with_key("redisfault", "RF").await;
    c.post("/v1/products", &[("x-api-key", &brand)], &json!({"code": "app", "name": "App", "default_seat_limit": 3})).await;
    let provision = |email: &str, extra: serde_json::Value| {
        let mut product = json!({"code": "app"});
        product.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let body = json!({"customer_email": email, "products": [product]});
        let c = c.clone();
        let brand = brand.clone();
        async move {
            let r = c.post("/v1/licenses", &[("x-api-key", &brand)], &body).await;
            assert_eq!(r.status, StatusCode::CREATED);
            let body = r.json();
            (body["license_key"]["key"].as_str().unwrap().to_owned(), body["licenses"][0]["id"].as_str().unwrap().to_owned())
        }
    };
    let (valid, _) = provision("valid@x.io", json!({})).await;
    let (suspended, suspended_id) = provision("suspended@x.io", json!({})).await;
    let (expired, _) = provision("expired@x.io", json!({"expires_at": "2021-01-01T00:00:00Z"})).await;
    let (cancelled, cancelled_id) = provision("cancelled@x.io", json!({})).await;
    assert_eq!(c.post(&format!("/v1/licenses/{suspended_id}/suspend"), &[("x-api-key", &brand)], &json!({})).await.status, StatusCode::OK);
    assert_eq!(c.post(&format!("/v1/licenses/{cancelled_id}/cancel"), &[("x-api-key", &brand)], &json!({})).await.status, StatusCode::OK);
    let a = c.post("/v1/activations", &[], &json!({"license_key": valid, "product": "app", "instance_id": "host-1"})).await;
    assert_eq!(a.status, StatusCode::CREATED);

    // (request, expected code, expected seats_used of the first license)
    let cases: Arc<Vec<(serde_json::Value, &str, Option<u64>)>> = Arc::new(vec![
        (json!({"license_key": valid, "product": "app", "instance_id": "host-1"}), "VALID", Some(1)),
        (json!({"license_key": valid, "product": "app", "instance_id": "host-2"}), "NOT_ACTIVATED", Some(1)),
        (json!({"license_key": suspended, "product": "app"}), "SUSPENDED", Some(0)),
        (json!({"license_key": expired}), "EXPIRED", Some(0)),
        (json!({"license_key": cancelled, "product": "app"}), "CANCELLED", Some(0)),
        (json!({"license_key": "RF-0000-0000-0000-0000"}), "LICENSE_KEY_NOT_FOUND", None),
    ]);

    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let readers: Vec<_> = (0..4)
        .map(|reader| {
            let (c, cases, stop, answered) = (c.clone(), cases.clone(), stop.clone(), answered.clone());
            tokio::spawn(async move {
                let mut i = reader;
                while !stop.load(Ordering::Relaxed) {
                    let (request, code, seats) = &cases[i % cases.len()];
                    let r = c.post("/v1/license-keys/validate", &[], request).await;
                    assert_eq!(r.status, StatusCode::OK, "{request}: {:?}", String::from_utf8_lossy(&r.body));
                    let v = r.json();
                    assert_eq!(v["code"], *code, "{request}: {v}");
                    if let Some(seats) = seats {
                        assert_eq!(v["licenses"][0]["seats_used"], *seats, "{request}: {v}");
                    }
                    answered.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();
    // Waits until the readers have given `n` more (checked) answers.
    let more = |n: usize| {
        let answered = answered.clone();
        async move {
            let target = answered.load(Ordering::Relaxed) + n;
            eventually(Duration::from_secs(60), "validations answered", || {
                let answered = answered.clone();
                async move { answered.load(Ordering::Relaxed) >= target }
            })
            .await;
        }
    };

    let fallbacks_before = c.metric("query", "cls_read_model_fallbacks_total{doc=\"license_key\"}").await;
    more(200).await;
    for _ in 0..2 {
        stop_redis();
        eventually(Duration::from_secs(30), "Redis is down", || async { !redis_ping() }).await;
        more(200).await; // answered while Redis is away
        start_redis();
        until_ok("Redis answers", "redis-cli", &["-h", "127.0.0.1", "-p", "6379", "ping"]).await;
        more(200).await; // and after it came back empty
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.await.expect("every validation answer was correct");
    }
    assert!(c.metric("query", "cls_read_model_fallbacks_total{doc=\"license_key\"}").await > fallbacks_before, "Postgres answered while Redis was away");

    // The read model refills: the valid key's document is back in Redis after a validation.
    let hash = cls_domain::LicenseKey::parse(&valid).unwrap().hash();
    let doc = format!("{}:rm:key:{}", c.namespace, hash.as_str());
    let redis = c.redis().await;
    eventually(Duration::from_secs(20), "the key's document refilled", || {
        let (c, redis, doc, valid) = (c.clone(), redis.clone(), doc.clone(), valid.clone());
        async move {
            use fred::prelude::*;
            c.post("/v1/license-keys/validate", &[], &json!({"license_key": valid})).await;
            redis.exists::<i64, _>(doc).await.unwrap_or(0) == 1
        }
    })
    .await;
    println!("{} validations answered correctly across two Redis restarts", answered.load(Ordering::Relaxed));
    match Arc::try_unwrap(c) {
        Ok(c) => c.stop().await,
        Err(_) => panic!("the cluster is still shared"),
    }
}
