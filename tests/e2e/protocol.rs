//! HTTP conventions of SPEC §3: problem+json, request ids, 404 / 405 / 413 / 415 / 400.

use std::time::Duration;

use cls_tests::{ADMIN_TOKEN, TestCluster, eventually};
use hyper::{Method, StatusCode};
use serde_json::json;

fn assert_problem(r: &cls_tests::TestResponse, status: StatusCode, code: &str) {
    assert_eq!(r.status, status, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    let p = r.json();
    assert_eq!(p["code"], code);
    assert_eq!(p["status"], status.as_u16());
    for member in ["type", "title", "detail", "request_id"] {
        assert!(p[member].is_string(), "problem lacks {member}: {p}");
    }
    assert_eq!(p["request_id"].as_str(), r.header("x-request-id"));
}

#[tokio::test]
async fn conventions_of_every_route() {
    let c = TestCluster::spawn().await;
    let admin = ("x-admin-token", ADMIN_TOKEN);

    // Request ids: the caller's is echoed; otherwise a new one.
    let r = c.get("/health", &[("x-request-id", "my-request-42")]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("x-request-id"), Some("my-request-42"));
    let r = c.get("/health", &[]).await;
    assert!(uuid::Uuid::parse_str(r.header("x-request-id").unwrap()).is_ok());
    let long = "x".repeat(129);
    assert_ne!(c.get("/health", &[("x-request-id", &long)]).await.header("x-request-id"), Some(long.as_str()));
    assert_eq!(c.get("/ready", &[]).await.status, StatusCode::OK);

    assert_problem(&c.get("/v1/nothing-here", &[]).await, StatusCode::NOT_FOUND, "NOT_FOUND");
    let r = c.request(Method::PUT, "/v1/admin/brands", &[admin], None).await;
    assert_problem(&r, StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED");
    assert_eq!(r.header("allow"), Some("GET, POST"));

    // 415: not JSON.
    let r = c.request(Method::POST, "/v1/admin/brands", &[admin, ("content-type", "text/plain")], Some(b"slug=x".to_vec())).await;
    assert_problem(&r, StatusCode::UNSUPPORTED_MEDIA_TYPE, "UNSUPPORTED_MEDIA_TYPE");

    // 413 after draining: the client reads the answer.
    let big = vec![b' '; 200 * 1024];
    let r = c.request(Method::POST, "/v1/admin/brands", &[admin, ("content-type", "application/json")], Some(big)).await;
    assert_problem(&r, StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE");

    // 400: malformed JSON, wrong types, unknown fields, invalid values (every field reported).
    let r = c.request(Method::POST, "/v1/admin/brands", &[admin, ("content-type", "application/json")], Some(b"{\"slug\":".to_vec())).await;
    assert_problem(&r, StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    let r = c.admin_post("/v1/admin/brands", &json!({"slug": 7, "name": "x", "key_prefix": "XX"})).await;
    assert_problem(&r, StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    let r = c.admin_post("/v1/admin/brands", &json!({"slug": "ok", "name": "x", "key_prefix": "XX", "extra": true})).await;
    assert_problem(&r, StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    let r = c.admin_post("/v1/admin/brands", &json!({"slug": "Not OK", "name": "", "key_prefix": "toolongprefix"})).await;
    assert_problem(&r, StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    let fields: Vec<String> = r.json()["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap().to_owned()).collect();
    assert_eq!(fields, ["slug", "name", "key_prefix"]);
    let r = c.admin_post("/v1/admin/brands", &json!({"slug": "ok", "name": "x", "key_prefix": "XX"})).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let brand_id = r.json()["id"].as_str().unwrap().to_owned();
    let key = c.create_api_key(&brand_id, &["licenses:write"]).await;
    let r = c.post("/v1/products", &[("x-api-key", &key)], &json!({"code": "x", "name": "X", "default_seat_limit": 0})).await;
    assert_problem(&r, StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    assert_eq!(r.json()["errors"][0]["field"], "default_seat_limit");
    let r = c.admin_post(&format!("/v1/admin/brands/{brand_id}/api-keys"), &json!({"name": "k", "scopes": ["root"]})).await;
    assert_problem(&r, StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    let r = c.post("/v1/products", &[("x-api-key", &key), ("idempotency-key", "")], &json!({"code": "x", "name": "X"})).await;
    assert_problem(&r, StatusCode::BAD_REQUEST, "INVALID_REQUEST");

    // Nothing half-written by any of the refused requests.
    let brands = c.admin_get("/v1/admin/brands").await.json();
    assert_eq!(brands["items"].as_array().unwrap().len(), 1);
    assert_eq!(c.get("/v1/products", &[("x-api-key", &key)]).await.json()["items"], json!([]));

    c.stop().await;
}

#[tokio::test]
async fn every_service_has_an_ops_listener() {
    let c = TestCluster::spawn().await;
    for (service, checks) in [("gateway", &["broker"][..]), ("query", &["db", "cache"][..]), ("brands-worker", &["db", "broker"][..])] {
        assert_eq!(c.ops_get(service, "/health").await.status, StatusCode::OK, "{service} /health");
        for check in checks {
            let r = c.ops_get(service, &format!("/health/{check}")).await;
            assert_eq!(r.status, StatusCode::OK, "{service} /health/{check}: {:?}", String::from_utf8_lossy(&r.body));
        }
        assert_eq!(c.ops_get(service, "/ready").await.status, StatusCode::OK, "{service} /ready");
        let metrics = c.ops_get(service, "/metrics").await;
        assert_eq!(metrics.status, StatusCode::OK);
        assert!(String::from_utf8_lossy(&metrics.body).contains("# EOF"), "{service} metrics are Prometheus text");
    }
    // The worker counts what it handled; the gateway counts requests by route.
    c.create_brand("metered", "MT").await;
    let worker = String::from_utf8_lossy(&c.ops_get("brands-worker", "/metrics").await.body).into_owned();
    assert!(worker.contains("cls_commands_total{command=\"brands.create_brand\",outcome=\"handled\"} 1"), "{worker}");
    let gateway = String::from_utf8_lossy(&c.ops_get("gateway", "/metrics").await.body).into_owned();
    assert!(gateway.contains("route=\"create_brand\""), "{gateway}");
    assert!(gateway.contains("cls_command_round_trip_seconds_count{command=\"brands.create_brand\"} 1"), "{gateway}");
    assert!(worker.contains("cls_command_handling_seconds_count{command=\"brands.create_brand\"} 1"), "{worker}");
    // The query service counts the reads the gateway forwarded, by path template.
    c.admin_get("/v1/admin/brands").await;
    let query = String::from_utf8_lossy(&c.ops_get("query", "/metrics").await.body).into_owned();
    assert!(query.contains("cls_http_requests_total{route=\"/v1/admin/brands\",status=\"200\"} 1"), "{query}");
    // Sampled gauges: the brand's event leaves the outbox (lag back to 0) and reaches the
    // projector (its lag is set); the worker's dead-letter queue is watched and empty.
    let dlq = format!("cls_dlq_depth{{queue=\"{}\"}}", c.topology().dead_letter_queue(cls_tests::Module::Brands));
    eventually(Duration::from_secs(30), "the worker samples its gauges", || async {
        let worker = String::from_utf8_lossy(&c.ops_get("brands-worker", "/metrics").await.body).into_owned();
        worker.contains(&format!("{dlq} 0")) && worker.contains("cls_outbox_lag_seconds 0.0")
    })
    .await;
    // The projector counts an event before its lag guard drops, so wait for both.
    eventually(Duration::from_secs(30), "the projector reports its lag", || async {
        let query = String::from_utf8_lossy(&c.ops_get("query", "/metrics").await.body).into_owned();
        query.contains("cls_projector_events_total{")
            && query.lines().any(|l| l.starts_with("cls_projector_lag_seconds ") && l != "cls_projector_lag_seconds 0.0")
    })
    .await;
    // The projector's dead-letter queue is watched by the query service.
    let projector_dlq = format!("cls_dlq_depth{{queue=\"{}.query.events.dlq\"}} 0", c.namespace);
    eventually(Duration::from_secs(30), "the query service samples the projector's DLQ", || async {
        String::from_utf8_lossy(&c.ops_get("query", "/metrics").await.body).contains(&projector_dlq)
    })
    .await;
    c.stop().await;
}

#[tokio::test]
async fn activation_metadata_is_checked_at_the_edge() {
    let c = TestCluster::spawn().await;
    let base = json!({"license_key": "AB-0000-0000-0000-0000", "product": "p", "instance_id": "x"});
    let with = |metadata: serde_json::Value| {
        let mut b = base.clone();
        b["metadata"] = metadata;
        b
    };
    // A NUL cannot be stored by Postgres: refused with a 400, never a dead-lettered command.
    let r = c.post("/v1/activations", &[], &with(json!({"note": "a\u{0}b"}))).await;
    assert_problem(&r, StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    assert_eq!(r.json()["errors"][0]["field"], "metadata");
    let r = c.post("/v1/activations", &[], &with(json!(["not", "an", "object"]))).await;
    assert_problem(&r, StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    let r = c.post("/v1/activations", &[], &with(json!({"big": "x".repeat(5000)}))).await;
    assert_problem(&r, StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    // Well-formed: the unknown key is what answers.
    let r = c.post("/v1/activations", &[], &with(json!({"site": "shop"}))).await;
    assert_problem(&r, StatusCode::NOT_FOUND, "LICENSE_KEY_NOT_FOUND");
    c.stop().await;
}
