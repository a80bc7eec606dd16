//! Hostile input at the edge (SPEC §3, issue 6): every JSON route refuses malformed documents,
//! wrong types, duplicate keys, out-of-range numbers and bad text with a 400 problem, answers
//! oversized or endless headers and stalled bodies with a 4xx, stays up for the next client, and
//! writes nothing for any refused request.

use std::time::Duration;

use cls_tests::{ADMIN_TOKEN, TestCluster};
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Documents no route may take: each must be a 400 `INVALID_REQUEST`.
fn malformed_documents() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("an array", b"[]".to_vec()),
        ("a string", br#""body""#.to_vec()),
        ("a number", b"42".to_vec()),
        ("null", b"null".to_vec()),
        ("truncated", br#"{"a":"#.to_vec()),
        ("trailing garbage", b"{} {}".to_vec()),
        ("a byte-order mark", b"\xEF\xBB\xBF{}".to_vec()),
        ("invalid UTF-8", b"{\"x\":\"\xff\xfe\"}".to_vec()),
        ("a lone surrogate", br#"{"x":"\ud800"}"#.to_vec()),
        ("nesting 10,000 deep", [vec![b'['; 10_000], vec![b']'; 10_000]].concat()),
        ("a number out of f64 range", br#"{"x":1e400}"#.to_vec()),
    ]
}

struct Target {
    path: String,
    headers: Vec<(&'static str, String)>,
    /// A body the route accepts, or would accept but for the state of the resource.
    valid: Value,
}

impl Target {
    fn new(path: impl Into<String>, headers: &[(&'static str, &str)], valid: Value) -> Target {
        Target { path: path.into(), headers: headers.iter().map(|(n, v)| (*n, v.to_string())).collect(), valid }
    }

    async fn send(&self, c: &TestCluster, body: Vec<u8>) -> cls_tests::TestResponse {
        let mut headers: Vec<(&str, &str)> = self.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        headers.push(("content-type", "application/json"));
        c.request(Method::POST, &self.path, &headers, Some(body)).await
    }
}

fn assert_invalid(r: &cls_tests::TestResponse, what: &str) {
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{what}: {:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-type"), Some("application/problem+json"), "{what}");
    assert_eq!(r.json()["code"], "INVALID_REQUEST", "{what}");
}

/// The body with `field` (a top-level member, or `products.0.<name>`) replaced.
fn with(body: &Value, field: &str, value: Value) -> Value {
    let mut b = body.clone();
    match field.strip_prefix("products.0.") {
        Some(inner) => b["products"][0][inner] = value,
        None => b[field] = value,
    }
    b
}

/// (brands, products, licenses, activations, outbox rows): what a refused request must not change.
async fn written(c: &TestCluster) -> Vec<i64> {
    let sql = "SELECT ARRAY[(SELECT count(*) FROM brands), (SELECT count(*) FROM products), (SELECT count(*) FROM licenses),
                            (SELECT count(*) FROM activations), (SELECT count(*) FROM outbox)]";
    sqlx::query_scalar(sql).fetch_one(&c.pool).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_json_route_refuses_hostile_bodies_and_writes_nothing() {
    let c = TestCluster::spawn().await;
    let (brand_id, key) = c.brand_with_key("hardened", "HD").await;
    let r = c.post("/v1/products", &[("x-api-key", &key)], &json!({"code": "pro", "name": "Pro"})).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let r = c.post("/v1/licenses", &[("x-api-key", &key)], &json!({"customer_email": "a@shop.io", "products": [{"code": "pro"}]})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let provisioned = r.json();
    let license_id = provisioned["licenses"][0]["id"].as_str().expect("license id").to_owned();
    let key_id = provisioned["license_key"]["id"].as_str().expect("license key id").to_owned();
    let license_key = provisioned["license_key"]["key"].as_str().expect("license key").to_owned();

    let admin = [("x-admin-token", ADMIN_TOKEN)];
    let brand = [("x-api-key", key.as_str())];
    let product_key = json!({"license_key": license_key, "product": "pro", "instance_id": "host-1"});
    let targets = [
        Target::new("/v1/admin/brands", &admin, json!({"slug": "other", "name": "Other", "key_prefix": "OT"})),
        Target::new(format!("/v1/admin/brands/{brand_id}/api-keys"), &admin, json!({"name": "ci"})),
        Target::new("/v1/products", &brand, json!({"code": "basic", "name": "Basic"})),
        Target::new("/v1/licenses", &brand, json!({"customer_email": "b@shop.io", "products": [{"code": "pro"}]})),
        Target::new(format!("/v1/licenses/{license_id}/renew"), &brand, json!({"extend_days": 30})),
        Target::new(format!("/v1/licenses/{license_id}/suspend"), &brand, json!({"reason": "chargeback"})),
        Target::new(format!("/v1/licenses/{license_id}/seats"), &brand, json!({"seat_limit": 5})),
        Target::new(format!("/v1/license-keys/{key_id}/transfer"), &brand, json!({"customer_email": "c@shop.io"})),
        Target::new("/v1/license-keys/lookup", &brand, json!({"license_key": license_key})),
        Target::new("/v1/activations", &[], product_key.clone()),
        Target::new("/v1/activations/deactivate", &[], product_key.clone()),
        Target::new("/v1/license-keys/validate", &[], json!({"license_key": license_key, "product": "pro"})),
    ];
    let before = written(&c).await;

    for target in &targets {
        for (what, body) in malformed_documents() {
            assert_invalid(&target.send(&c, body).await, &format!("{} with {what}", target.path));
        }
        // The route's own fields: each wrong type, and a repeated member, is refused.
        for (field, _) in target.valid.as_object().unwrap() {
            for wrong in [json!({"nested": true}), json!([1]), json!(true)] {
                let body = with(&target.valid, field, wrong.clone());
                assert_invalid(&target.send(&c, serde_json::to_vec(&body).unwrap()).await, &format!("{} with {field}: {wrong}", target.path));
            }
            let text = serde_json::to_string(&target.valid).unwrap();
            let first = serde_json::to_string(&json!({field: target.valid[field]})).unwrap();
            let repeated = format!("{},{}", &first[..first.len() - 1], &text[1..]);
            assert_invalid(&target.send(&c, repeated.into_bytes()).await, &format!("{} with {field} twice", target.path));
        }
        let unknown = with(&target.valid, "unexpected", json!(1));
        assert_invalid(&target.send(&c, serde_json::to_vec(&unknown).unwrap()).await, &format!("{} with an unknown member", target.path));
    }

    // Values of the right type but out of range or badly formed, per field.
    let provision = &targets[3];
    let bad_values = [
        ("customer_email", json!("no-at-sign")),
        ("customer_email", json!(format!("{}@shop.io", "a".repeat(300)))),
        ("customer_email", json!("nul\u{0}@shop.io")),
        ("customer_email", json!("")),
        ("products", json!([])),
        ("products.0.code", json!("x".repeat(500))),
        ("products.0.code", json!("spaces are not codes")),
        ("products.0.seat_limit", json!(-1)),
        ("products.0.seat_limit", json!(0)),
        ("products.0.seat_limit", json!(1u64 << 40)),
        ("products.0.seat_limit", json!(1.5)),
        ("products.0.seat_limit", json!("3")),
        ("products.0.expires_at", json!("tomorrow")),
        ("products.0.expires_at", json!("2026-13-40T00:00:00Z")),
        ("products.0.expires_at", json!(1_767_225_600)),
    ];
    for (field, value) in bad_values {
        let body = with(&provision.valid, field, value.clone());
        assert_invalid(&provision.send(&c, serde_json::to_vec(&body).unwrap()).await, &format!("provision with {field} = {value}"));
    }
    let renew = &targets[4];
    for value in [json!(0), json!(-5), json!(1_000_000_000), json!(i64::MAX), json!(2.5)] {
        let body = json!({"extend_days": value});
        assert_invalid(&renew.send(&c, serde_json::to_vec(&body).unwrap()).await, &format!("renew by {value} days"));
    }
    let seats = &targets[6];
    for value in [json!(-1), json!(1u64 << 33), json!("5")] {
        assert_invalid(&seats.send(&c, serde_json::to_vec(&json!({"seat_limit": value})).unwrap()).await, &format!("seats = {value}"));
    }
    let activate = &targets[9];
    for (field, value) in [
        ("instance_id", json!("")),
        ("instance_id", json!("i".repeat(10_000))),
        ("instance_id", json!("line\nbreak")),
        ("instance_name", json!("bell\u{7}")),
        ("metadata", json!({"note": "x".repeat(5000)})),
    ] {
        let body = with(&activate.valid, field, value.clone());
        assert_invalid(&activate.send(&c, serde_json::to_vec(&body).unwrap()).await, &format!("activate with {field} = {value:.40}"));
    }
    let names = &targets[0];
    for (field, value) in [("name", json!("tab\there")), ("name", json!("n".repeat(1000))), ("slug", json!("Ünïcode")), ("key_prefix", json!("😀"))] {
        let body = with(&names.valid, field, value.clone());
        assert_invalid(&names.send(&c, serde_json::to_vec(&body).unwrap()).await, &format!("brand with {field} = {value}"));
    }
    // Free-form metadata: a repeated key is refused too, at any depth.
    let text = format!(r#"{{"license_key":"{license_key}","product":"pro","instance_id":"h","metadata":{{"a":{{"b":1,"b":2}}}}}}"#);
    assert_invalid(&activate.send(&c, text.into_bytes()).await, "metadata with a repeated key");

    assert_eq!(written(&c).await, before, "a refused request wrote something");
    // And every route still works for a well-formed request.
    let r = c.post("/v1/licenses", &[("x-api-key", &key)], &json!({"customer_email": "ok@shop.io", "products": [{"code": "pro"}]})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    c.stop().await;
}

/// Sends raw bytes on a fresh connection; returns the status line the server answered with
/// (empty if it closed without one).
async fn raw(addr: &str, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // The server may answer and close before it read everything: a failed write is fine.
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer)).await.expect("the server answered");
    String::from_utf8_lossy(&answer).lines().next().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn oversized_heads_and_stalled_bodies_get_a_4xx_and_the_server_stays_up() {
    let c = TestCluster::spawn().await;
    let addr = c.gateway.trim_start_matches("http://").to_owned();

    // More headers than the parser takes.
    let many: String = (0..200).map(|i| format!("x-h{i}: v\r\n")).collect();
    let status = raw(&addr, format!("GET /health HTTP/1.1\r\nhost: x\r\n{many}\r\n").as_bytes()).await;
    assert!(status.starts_with("HTTP/1.1 431"), "200 headers: {status:?}");
    // A head past the read buffer's bound (64 KiB; hyper checks it between reads, so a head
    // that fits in the reads so far may end up somewhat larger).
    let big = "v".repeat(512 * 1024);
    let status = raw(&addr, format!("GET /health HTTP/1.1\r\nhost: x\r\nx-big: {big}\r\n\r\n").as_bytes()).await;
    assert!(status.starts_with("HTTP/1.1 431"), "a 512 KiB header: {status:?}");
    // A request line larger than the buffer.
    let path = format!("/v1/{}", "p".repeat(512 * 1024));
    let status = raw(&addr, format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes()).await;
    assert!(status.starts_with("HTTP/1.1 414") || status.starts_with("HTTP/1.1 431"), "a 512 KiB path: {status:?}");
    // Not HTTP at all.
    let status = raw(&addr, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n").await;
    assert!(status.is_empty() || status.starts_with("HTTP/1.1 400"), "a TLS hello: {status:?}");

    // A body that stops half way: the gateway stops waiting (body read timeout) and says 400.
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v1/admin/brands HTTP/1.1\r\nhost: x\r\nx-admin-token: {ADMIN_TOKEN}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"slug\":"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut answer)).await.expect("the gateway gave up on the body").unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 400"), "stalled body: {answer:?}");
    assert!(answer.contains("INVALID_REQUEST"), "stalled body: {answer:?}");

    // Still serving, and nothing was written.
    assert_eq!(c.get("/health", &[]).await.status, StatusCode::OK);
    assert_eq!(c.admin_get("/v1/admin/brands").await.json()["items"], json!([]));
    c.stop().await;
}
