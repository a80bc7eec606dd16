//! US4: what an end-user product learns from `POST /v1/license-keys/validate` (answered from
//! the Redis read model; tests/e2e/read_model.rs covers freshness, misses and outages).

use cls_tests::TestCluster;
use hyper::StatusCode;
use serde_json::{Value, json};

async fn validate(c: &TestCluster, body: Value) -> Value {
    let r = c.post("/v1/license-keys/validate", &[], &body).await;
    assert_eq!(r.status, StatusCode::OK, "{body}: {:?}", String::from_utf8_lossy(&r.body));
    r.json()
}

#[tokio::test]
async fn every_code_with_and_without_product_and_instance() {
    let c = TestCluster::spawn().await;
    let (_, brand) = c.brand_with_key("validating", "VA").await;
    for code in ["live", "paused", "old", "gone", "spare"] {
        c.post("/v1/products", &[("x-api-key", &brand)], &json!({"code": code, "name": code, "default_seat_limit": 3})).await;
    }
    let r = c
        .post("/v1/licenses", &[("x-api-key", &brand)], &json!({"customer_email": "private@customer.io", "products": [
            {"code": "live"}, {"code": "paused"}, {"code": "old", "expires_at": "2020-01-01T00:00:00Z"}, {"code": "gone"}
        ]}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let body = r.json();
    let key = body["license_key"]["key"].as_str().unwrap().to_owned();
    let id = |product: &str| body["licenses"].as_array().unwrap().iter().find(|l| l["product"] == product).unwrap()["id"].as_str().unwrap().to_owned();
    assert_eq!(c.post(&format!("/v1/licenses/{}/suspend", id("paused")), &[("x-api-key", &brand)], &json!({})).await.status, StatusCode::OK);
    assert_eq!(c.post(&format!("/v1/licenses/{}/cancel", id("gone")), &[("x-api-key", &brand)], &json!({})).await.status, StatusCode::OK);
    let a = c.post("/v1/activations", &[], &json!({"license_key": key, "product": "live", "instance_id": "https://Shop.example/"})).await;
    assert_eq!(a.status, StatusCode::CREATED);

    // With a product: that license decides.
    for (product, code) in [("live", "VALID"), ("paused", "SUSPENDED"), ("old", "EXPIRED"), ("gone", "CANCELLED"), ("spare", "NO_LICENSE_FOR_PRODUCT")] {
        let v = validate(&c, json!({"license_key": key, "product": product})).await;
        assert_eq!(v["code"], code, "{product}");
        assert_eq!(v["valid"], code == "VALID", "{product}");
        assert!(v["key_hint"].as_str().unwrap().starts_with("VA-…-"));
    }
    // The instance: active (any spelling of the same URL), or not activated.
    let v = validate(&c, json!({"license_key": key, "product": "live", "instance_id": "https://shop.example"})).await;
    assert_eq!((v["valid"].as_bool(), v["code"].as_str()), (Some(true), Some("VALID")));
    assert_eq!(v["licenses"][0]["instance_active"], true);
    assert_eq!(v["licenses"][0]["seats_used"], 1);
    assert_eq!(v["licenses"][0]["seats_remaining"], 2);
    let v = validate(&c, json!({"license_key": key, "product": "live", "instance_id": "https://other.example"})).await;
    assert_eq!((v["valid"].as_bool(), v["code"].as_str()), (Some(false), Some("NOT_ACTIVATED")));
    assert_eq!(v["licenses"][0]["instance_active"], false);

    // Without a product: valid if any is; then the best code in order.
    let v = validate(&c, json!({"license_key": key})).await;
    assert_eq!((v["valid"].as_bool(), v["code"].as_str()), (Some(true), Some("VALID")));
    assert_eq!(v["licenses"].as_array().unwrap().len(), 4);
    assert!(v["licenses"][0].get("instance_active").is_none(), "only when an instance was given");
    assert_eq!(c.post(&format!("/v1/licenses/{}/suspend", id("live")), &[("x-api-key", &brand)], &json!({})).await.status, StatusCode::OK);
    let v = validate(&c, json!({"license_key": key})).await;
    assert_eq!((v["valid"].as_bool(), v["code"].as_str()), (Some(false), Some("SUSPENDED")));

    // Unknown keys, Crockford typos, and bad input.
    let v = validate(&c, json!({"license_key": "VA-0000-0000-0000-0000"})).await;
    assert_eq!(v["code"], "LICENSE_KEY_NOT_FOUND");
    assert_eq!(v["licenses"], json!([]));
    assert!(v.get("key_hint").is_none());
    assert_eq!(validate(&c, json!({"license_key": "not a key!"})).await["code"], "LICENSE_KEY_NOT_FOUND");
    let typo = format!("  {} ", key.to_lowercase().replace('0', "o").replace('1', "i"));
    assert_eq!(validate(&c, json!({"license_key": typo, "product": "old"})).await["code"], "EXPIRED");
    for bad in [json!({"license_key": ""}), json!({"license_key": "x".repeat(65)}), json!({"license_key": key, "instance_id": "a"})] {
        let r = c.post("/v1/license-keys/validate", &[], &bad).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
    }

    // Nothing private in any answer.
    let all = c.post("/v1/license-keys/validate", &[], &json!({"license_key": key})).await;
    let text = String::from_utf8_lossy(&all.body);
    assert!(!text.contains("private@customer.io") && !text.contains(&key));
    c.stop().await;
}
