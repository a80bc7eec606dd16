//! Domain events on `<ns>.events`: a subscriber with its own queue receives the brand module's
//! events as MessagePack maps in the SPEC §5 envelope, with no secret inside.

use std::collections::BTreeMap;
use std::time::Duration;

use cls_tests::{ADMIN_TOKEN, Module, Options, TestCluster, next_delivery};
use hyper::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn a_subscriber_receives_the_four_brand_events() {
    let mut c = TestCluster::spawn().await;
    let (_conn, ch) = c.amqp().await;
    let mut consumer = c.subscribe(&ch, "test-subscriber", &["#"]).await;

    let brand = c.create_brand("evented", "EV").await;
    let brand_id = brand["id"].as_str().unwrap();
    let created = c.admin_post(&format!("/v1/admin/brands/{brand_id}/api-keys"), &json!({"name": "k"})).await.json();
    let secret = created["api_key"].as_str().unwrap().to_owned();
    let p = c.post("/v1/products", &[("x-api-key", &secret), ("x-request-id", "req-product-1")], &json!({"code": "p", "name": "P"})).await;
    assert_eq!(p.status, StatusCode::CREATED);
    let r = c.request(Method::DELETE, &format!("/v1/admin/api-keys/{}", created["id"].as_str().unwrap()), &[("x-admin-token", ADMIN_TOKEN)], None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);

    let mut seen: BTreeMap<String, rmpv::Value> = BTreeMap::new();
    let mut ids = std::collections::HashSet::new();
    while seen.len() < 4 {
        let delivery = next_delivery(&mut consumer, "the brand module's four events").await;
        assert_eq!(delivery.properties.content_type().as_ref().map(|s| s.as_str()), Some("application/msgpack"));
        let raw = String::from_utf8_lossy(&delivery.data).into_owned();
        assert!(!raw.contains(&secret), "an event carries the API key");

        // Decoded generically, as a subscriber in another language would.
        let value: rmpv::Value = rmpv::decode::read_value(&mut delivery.data.as_slice()).expect("MessagePack");
        let map: BTreeMap<String, rmpv::Value> = value
            .as_map()
            .expect("a map, not an array")
            .iter()
            .map(|(k, v)| (k.as_str().unwrap().to_owned(), v.clone()))
            .collect();
        for field in ["id", "type", "schema_version", "occurred_at", "brand_id", "aggregate_id", "aggregate_version", "correlation_id", "causation_id", "data"] {
            assert!(map.contains_key(field), "envelope lacks {field}");
        }
        let id = map["id"].as_str().unwrap().to_owned();
        assert_eq!(delivery.properties.message_id().as_ref().map(|s| s.to_string()), Some(id.clone()));
        assert!(ids.insert(id), "duplicate event id");
        let event_type = map["type"].as_str().unwrap().to_owned();
        assert_eq!(delivery.routing_key.as_str(), event_type);
        assert_eq!(map["brand_id"].as_str(), Some(brand_id));
        if event_type == "product.created" {
            assert_eq!(map["correlation_id"].as_str(), Some("req-product-1"));
        }
        seen.insert(event_type, map["data"].clone());
    }
    let types: Vec<&str> = seen.keys().map(String::as_str).collect();
    assert_eq!(types, ["api_key.created", "api_key.revoked", "brand.created", "product.created"]);
    c.stop().await;
}

/// The relay lingers after a commit so that the events committed meanwhile share a batch. A
/// worker stopped during that wait publishes what it was holding before it exits, instead of
/// leaving it in the outbox until some relay polls again.
#[tokio::test]
async fn a_worker_stopped_while_its_relay_lingers_publishes_first() {
    let mut c = TestCluster::spawn_with(Options { brands_workers: 0, licenses_workers: 0, activations_workers: 0, ..Default::default() }).await;
    // Far beyond the deadline below: only the stop can end this wait (and no other worker
    // process polls the outbox).
    c.settings.relay_linger = Duration::from_secs(600);
    c.start_worker(Module::Brands).await;
    let (_conn, ch) = c.amqp().await;
    let mut consumer = c.subscribe(&ch, "test-linger", &["brand.created"]).await;

    let brand = c.create_brand("lingering", "LG").await;
    c.stop_workers().await;

    let delivery = next_delivery(&mut consumer, "brand.created, published when the worker stops").await;
    let value: rmpv::Value = rmpv::decode::read_value(&mut delivery.data.as_slice()).expect("MessagePack");
    let aggregate = value.as_map().unwrap().iter().find(|(k, _)| k.as_str() == Some("aggregate_id")).map(|(_, v)| v.as_str().unwrap().to_owned());
    assert_eq!(aggregate.as_deref(), brand["id"].as_str());
    let unpublished: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL").fetch_one(&c.pool).await.unwrap();
    assert_eq!(unpublished, 0);
    c.stop().await;
}
