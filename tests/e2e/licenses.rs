//! The licenses module through HTTP: US1 provisioning, key choice, all-or-nothing rejections,
//! concurrency, idempotency, reads, lookup, history and US6.

use cls_tests::TestCluster;
use hyper::StatusCode;
use serde_json::{Value, json};

/// A brand with products and a write key.
async fn brand_with_products(c: &TestCluster, slug: &str, prefix: &str, products: &[&str]) -> (String, String) {
    let (brand_id, key) = c.brand_with_key(slug, prefix).await;
    for code in products {
        let r = c.post("/v1/products", &[("x-api-key", &key)], &json!({"code": code, "name": code})).await;
        assert_eq!(r.status, StatusCode::CREATED);
    }
    (brand_id, key)
}

async fn provision(c: &TestCluster, key: &str, body: Value) -> cls_tests::TestResponse {
    c.post("/v1/licenses", &[("x-api-key", key)], &body).await
}

async fn licenses_of(c: &TestCluster, key: &str) -> Vec<Value> {
    let r = c.get("/v1/licenses?limit=200", &[("x-api-key", key)]).await;
    assert_eq!(r.status, StatusCode::OK);
    r.json()["items"].as_array().unwrap().clone()
}

#[tokio::test]
async fn us1_one_key_per_brand_and_customer() {
    let c = TestCluster::spawn().await;
    let (_, rm) = brand_with_products(&c, "rankmath", "RM", &["rankmath-pro", "content-ai"]).await;
    let (_, wr) = brand_with_products(&c, "wp-rocket", "WR", &["wp-rocket"]).await;

    // Buys RankMath: a license on a new key n°1, shown in full once.
    let first = provision(&c, &rm, json!({"customer_email": "Jane.Doe@Example.com", "products": [{"code": "rankmath-pro"}]})).await;
    assert_eq!(first.status, StatusCode::CREATED, "{:?}", first.json());
    let first = first.json();
    let key1 = first["license_key"].clone();
    assert_eq!(key1["created"], true);
    assert_eq!(key1["customer_email"], "jane.doe@example.com");
    let full_key = key1["key"].as_str().unwrap().to_owned();
    assert!(full_key.starts_with("RM-") && full_key.len() == "RM-XXXX-XXXX-XXXX-XXXX".len(), "{full_key}");
    assert!(key1["key_hint"].as_str().unwrap().starts_with("RM-…-"));
    let license = &first["licenses"][0];
    assert_eq!(license["product"], "rankmath-pro");
    assert_eq!(license["status"], "valid");
    assert_eq!(license["seat_limit"], 1);
    assert_eq!(license["seats_used"], 0);
    assert_eq!(license["seats_remaining"], 1);
    assert_eq!(license["version"], 1);
    assert!(license["expires_at"].is_string());

    // Buys the Content AI add-on (email in other letter case): the same key n°1, no key shown.
    let second = provision(&c, &rm, json!({"customer_email": "JANE.DOE@example.COM", "products": [{"code": "content-ai"}]})).await;
    assert_eq!(second.status, StatusCode::CREATED);
    let second = second.json();
    assert_eq!(second["license_key"]["id"], key1["id"]);
    assert_eq!(second["license_key"]["created"], false);
    assert!(second["license_key"].get("key").is_none(), "the key is shown only when created");

    // Buys WP Rocket (another brand): a new key n°2.
    let third = provision(&c, &wr, json!({"customer_email": "jane.doe@example.com", "products": [{"code": "wp-rocket"}]})).await;
    assert_eq!(third.status, StatusCode::CREATED);
    let third = third.json();
    assert_ne!(third["license_key"]["id"], key1["id"]);
    assert!(third["license_key"]["key"].as_str().unwrap().starts_with("WR-"));

    // The brand listing shows its two licenses on one key, nothing of the other brand.
    let listed = licenses_of(&c, &rm).await;
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|l| l["license_key_id"] == key1["id"] && l["customer_email"] == "jane.doe@example.com"));
    let by_email = c.get("/v1/licenses?customer_email=JANE.DOE%40example.com", &[("x-api-key", &rm)]).await.json();
    assert_eq!(by_email["items"].as_array().unwrap().len(), 2);

    // new_key: true forces a new key for the same customer.
    let fresh = provision(&c, &rm, json!({"customer_email": "jane.doe@example.com", "products": [{"code": "content-ai"}], "new_key": true})).await;
    assert_eq!(fresh.status, StatusCode::CREATED, "{:?}", fresh.json());
    assert_ne!(fresh.json()["license_key"]["id"], key1["id"]);

    // GET one license, and the lookup a support agent does with a pasted key (typed sloppily).
    let id = license["id"].as_str().unwrap();
    let one = c.get(&format!("/v1/licenses/{id}"), &[("x-api-key", &rm)]).await;
    assert_eq!(one.status, StatusCode::OK);
    assert_eq!(one.json()["activations"], json!([]));
    assert_eq!(c.get(&format!("/v1/licenses/{id}"), &[("x-api-key", &wr)]).await.status, StatusCode::NOT_FOUND);
    let typed = full_key.to_lowercase().replace('0', "o").replace('1', "l");
    let looked = c.post("/v1/license-keys/lookup", &[("x-api-key", &rm)], &json!({"license_key": format!("  {typed} ")})).await;
    assert_eq!(looked.status, StatusCode::OK, "{:?}", looked.json());
    assert_eq!(looked.json()["id"], key1["id"]);
    assert_eq!(looked.json()["licenses"].as_array().unwrap().len(), 2);
    let other_brand = c.post("/v1/license-keys/lookup", &[("x-api-key", &wr)], &json!({"license_key": full_key})).await;
    assert_eq!(other_brand.status, StatusCode::NOT_FOUND);
    assert_eq!(other_brand.json()["code"], "LICENSE_KEY_NOT_FOUND");

    // The full key appears in no listing or lookup.
    for body in [c.get("/v1/licenses", &[("x-api-key", &rm)]).await.body, looked.body, one.body] {
        assert!(!String::from_utf8_lossy(&body).contains(&full_key));
    }
    c.stop().await;
}

#[tokio::test]
async fn defaults_overrides_and_past_expiry() {
    let c = TestCluster::spawn().await;
    let (_, key) = c.brand_with_key("defaults", "DF").await;
    c.post("/v1/products", &[("x-api-key", &key)], &json!({"code": "site", "name": "Site", "default_seat_limit": 3, "default_duration_days": 30})).await;
    c.post("/v1/products", &[("x-api-key", &key)], &json!({"code": "agency", "name": "Agency"})).await;
    c.post("/v1/products", &[("x-api-key", &key)], &json!({"code": "old", "name": "Old"})).await;
    let r = provision(&c, &key, json!({
        "customer_email": "a@b.co",
        "products": [
            {"code": "site"},
            {"code": "agency", "seat_limit": null, "expires_at": null},
            {"code": "old", "seat_limit": 7, "expires_at": "2020-01-01T00:00:00Z"}
        ]
    }))
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json());
    let body = r.json();
    let by_code = |code: &str| body["licenses"].as_array().unwrap().iter().find(|l| l["product"] == code).unwrap().clone();
    let site = by_code("site");
    assert_eq!(site["seat_limit"], 3);
    let expires = cls_contracts::parse_time(site["expires_at"].as_str().unwrap()).unwrap();
    let days = (expires - chrono::Utc::now()).num_days();
    assert!((29..=30).contains(&days), "30 days from now, got {days}");
    let agency = by_code("agency");
    assert_eq!(agency["seat_limit"], Value::Null);
    assert_eq!(agency["seats_remaining"], Value::Null);
    assert_eq!(agency["expires_at"], Value::Null);
    let old = by_code("old");
    assert_eq!(old["seat_limit"], 7);
    assert_eq!(old["status"], "expired", "a past expiry is effectively expired at once");
    c.stop().await;
}

#[tokio::test]
async fn rejections_write_nothing() {
    let c = TestCluster::spawn().await;
    let (_, rm) = brand_with_products(&c, "rankmath", "RM", &["pro", "addon"]).await;
    let (_, other) = brand_with_products(&c, "other", "OT", &["pro"]).await;
    let created = provision(&c, &rm, json!({"customer_email": "x@y.io", "products": [{"code": "pro"}]})).await.json();
    let key_id = created["license_key"]["id"].as_str().unwrap().to_owned();
    let other_key = provision(&c, &other, json!({"customer_email": "x@y.io", "products": [{"code": "pro"}]})).await.json();
    let other_key_id = other_key["license_key"]["id"].as_str().unwrap().to_owned();
    let imported = provision(&c, &other, json!({"customer_email": "z@y.io", "products": [{"code": "pro"}], "import_key": "LEGACY-KEY-0001"})).await;
    assert_eq!(imported.status, StatusCode::CREATED, "{:?}", imported.json());
    assert_eq!(imported.json()["license_key"]["key"], "LEGACY-KEY-0001");

    let cases: Vec<(Value, StatusCode, &str)> = vec![
        // Unknown product, even next to a valid one: nothing is written.
        (json!({"customer_email": "new@y.io", "products": [{"code": "addon"}, {"code": "nope"}]}), StatusCode::NOT_FOUND, "PRODUCT_NOT_FOUND"),
        // The key already holds a live license for the product (the addon would be fine).
        (json!({"customer_email": "x@y.io", "products": [{"code": "addon"}, {"code": "pro"}]}), StatusCode::CONFLICT, "LICENSE_EXISTS"),
        (json!({"customer_email": "new@y.io", "products": [{"code": "pro"}, {"code": "pro"}]}), StatusCode::BAD_REQUEST, "INVALID_REQUEST"),
        (json!({"customer_email": "new@y.io", "products": []}), StatusCode::BAD_REQUEST, "INVALID_REQUEST"),
        (json!({"customer_email": "not-an-email", "products": [{"code": "pro"}]}), StatusCode::BAD_REQUEST, "INVALID_REQUEST"),
        (json!({"customer_email": "x@y.io", "products": [{"code": "addon"}], "license_key_id": other_key_id}), StatusCode::NOT_FOUND, "LICENSE_KEY_NOT_FOUND"),
        (json!({"customer_email": "someone@else.io", "products": [{"code": "addon"}], "license_key_id": key_id}), StatusCode::CONFLICT, "KEY_EMAIL_MISMATCH"),
        (json!({"customer_email": "x@y.io", "products": [{"code": "addon"}], "license_key_id": key_id, "new_key": true}), StatusCode::BAD_REQUEST, "INVALID_REQUEST"),
        // The imported key exists already (in another brand): typed in lower case it is the same key.
        (json!({"customer_email": "new@y.io", "products": [{"code": "addon"}], "import_key": "legacy-key-0001"}), StatusCode::CONFLICT, "KEY_EXISTS"),
        (json!({"customer_email": "new@y.io", "products": [{"code": "addon"}], "import_key": "short"}), StatusCode::BAD_REQUEST, "INVALID_REQUEST"),
    ];
    for (body, status, code) in cases {
        let r = provision(&c, &rm, body.clone()).await;
        assert_eq!(r.status, status, "{body}: {:?}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["code"], code, "{body}");
    }
    // Through the listing: still exactly the one license on the one key.
    let listed = licenses_of(&c, &rm).await;
    assert_eq!(listed.len(), 1);
    let keys: i64 = sqlx::query_scalar("SELECT count(*) FROM license_keys").fetch_one(&c.pool).await.unwrap();
    assert_eq!(keys, 3, "no key left behind by a rejection");

    // With license_key_id and the right email, it works.
    let ok = provision(&c, &rm, json!({"customer_email": "X@Y.io", "products": [{"code": "addon"}], "license_key_id": key_id})).await;
    assert_eq!(ok.status, StatusCode::CREATED);
    assert_eq!(ok.json()["license_key"]["id"], key_id.as_str());
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_purchases_share_one_key() {
    let c = std::sync::Arc::new(TestCluster::spawn_with(cls_tests::Options { licenses_workers: 2, ..Default::default() }).await);
    let codes: Vec<String> = (0..20).map(|i| format!("p{i}")).collect();
    let refs: Vec<&str> = codes.iter().map(String::as_str).collect();
    let (_, key) = brand_with_products(&c, "racy", "RC", &refs).await;
    let mut tasks = Vec::new();
    for code in codes {
        let (c, key) = (c.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            let r = provision(&c, &key, json!({"customer_email": "first@buyer.io", "products": [{"code": code}]})).await;
            assert_eq!(r.status, StatusCode::CREATED, "{:?}", String::from_utf8_lossy(&r.body));
            r.json()["license_key"]["id"].as_str().unwrap().to_owned()
        }));
    }
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        ids.insert(t.await.unwrap());
    }
    assert_eq!(ids.len(), 1, "20 concurrent first purchases made {} keys", ids.len());
    assert_eq!(licenses_of(&c, &key).await.len(), 20);
    std::sync::Arc::into_inner(c).unwrap().stop().await;
}

#[tokio::test]
async fn idempotent_provisioning_replays_the_full_key() {
    let c = TestCluster::spawn().await;
    let (_, key) = brand_with_products(&c, "idem", "IP", &["pro"]).await;
    let headers = [("x-api-key", key.as_str()), ("idempotency-key", "order-1001")];
    let body = json!({"customer_email": "buyer@shop.io", "products": [{"code": "pro"}]});
    let first = c.post("/v1/licenses", &headers, &body).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let replay = c.post("/v1/licenses", &headers, &body).await;
    assert_eq!(replay.status, StatusCode::CREATED);
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(replay.body, first.body);
    assert!(replay.json()["license_key"]["key"].is_string(), "the replay carries the full key");
    let other = c.post("/v1/licenses", &headers, &json!({"customer_email": "other@shop.io", "products": [{"code": "pro"}]})).await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(licenses_of(&c, &key).await.len(), 1);
    c.stop().await;
}

#[tokio::test]
async fn history_shows_who_provisioned_when_with_the_request_id() {
    let c = TestCluster::spawn().await;
    let (_, key) = brand_with_products(&c, "audited", "AU", &["pro"]).await;
    let r = c
        .post("/v1/licenses", &[("x-api-key", &key), ("x-request-id", "checkout-77")], &json!({"customer_email": "a@b.io", "products": [{"code": "pro"}]}))
        .await;
    let id = r.json()["licenses"][0]["id"].as_str().unwrap().to_owned();
    let history = c.get(&format!("/v1/licenses/{id}/history"), &[("x-api-key", &key)]).await;
    assert_eq!(history.status, StatusCode::OK);
    let entries = history.json()["items"].as_array().unwrap().clone();
    assert_eq!(entries.len(), 1);
    let e = &entries[0];
    assert_eq!(e["action"], "license.provisioned");
    assert_eq!(e["actor"]["kind"], "api_key");
    let api_key_id: String = sqlx::query_scalar("SELECT id::text FROM api_keys WHERE brand_id = (SELECT brand_id FROM licenses WHERE id = $1::uuid)")
        .bind(&id)
        .fetch_one(&c.pool)
        .await
        .unwrap();
    assert_eq!(e["actor"]["id"], api_key_id.as_str());
    assert_eq!(e["request_id"], "checkout-77");
    assert_eq!(e["status_after"], "valid");
    assert!(cls_contracts::parse_time(e["at"].as_str().unwrap()).is_some());
    c.stop().await;
}

#[tokio::test]
async fn us6_ecosystem_listing_across_brands() {
    let c = TestCluster::spawn().await;
    let mut keys = Vec::new();
    for (slug, prefix) in [("alpha", "AL"), ("beta", "BE"), ("gamma", "GA")] {
        let (brand_id, key) = brand_with_products(&c, slug, prefix, &["pro"]).await;
        let r = provision(&c, &key, json!({"customer_email": "Shared@Customer.io", "products": [{"code": "pro"}]})).await;
        assert_eq!(r.status, StatusCode::CREATED);
        keys.push((brand_id, key, r.json()["license_key"]["key"].as_str().unwrap().to_owned()));
    }
    let (brand_a, write_a, _) = &keys[0];
    let eco = c.create_api_key(brand_a, &["ecosystem:read"]).await;

    let r = c.get("/v1/ecosystem/licenses?customer_email=shared%40CUSTOMER.io", &[("x-api-key", &eco)]).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json());
    let items = r.json()["items"].as_array().unwrap().clone();
    let brands: Vec<&str> = items.iter().map(|l| l["brand"].as_str().unwrap()).collect();
    assert_eq!(brands, ["alpha", "beta", "gamma"]);
    for l in &items {
        for field in ["product", "status", "expires_at", "seat_limit", "seats_used", "key_hint"] {
            assert!(l.get(field).is_some(), "missing {field}");
        }
    }
    // Cursor pagination.
    let page1 = c.get("/v1/ecosystem/licenses?customer_email=shared%40customer.io&limit=2", &[("x-api-key", &eco)]).await.json();
    assert_eq!(page1["items"].as_array().unwrap().len(), 2);
    let cursor = page1["next_cursor"].as_str().unwrap();
    let page2 = c.get(&format!("/v1/ecosystem/licenses?customer_email=shared%40customer.io&limit=2&cursor={cursor}"), &[("x-api-key", &eco)]).await.json();
    assert_eq!(page2["items"][0]["brand"], "gamma");

    // Without the scope 403, without a key 401, unknown email empty, email required.
    assert_eq!(c.get("/v1/ecosystem/licenses?customer_email=shared%40customer.io", &[("x-api-key", write_a)]).await.status, StatusCode::FORBIDDEN);
    assert_eq!(c.get("/v1/ecosystem/licenses?customer_email=shared%40customer.io", &[]).await.status, StatusCode::UNAUTHORIZED);
    let unknown = c.get("/v1/ecosystem/licenses?customer_email=nobody%40nowhere.io", &[("x-api-key", &eco)]).await;
    assert_eq!(unknown.status, StatusCode::OK);
    assert_eq!(unknown.json()["items"], json!([]));
    assert_eq!(c.get("/v1/ecosystem/licenses", &[("x-api-key", &eco)]).await.status, StatusCode::BAD_REQUEST);

    // The brand listing shows only the caller's brand; no full key anywhere.
    assert_eq!(licenses_of(&c, write_a).await.len(), 1);
    let everything = String::from_utf8_lossy(&r.body).into_owned() + &String::from_utf8_lossy(&c.get("/v1/licenses", &[("x-api-key", write_a)]).await.body);
    for (_, _, full) in &keys {
        assert!(!everything.contains(full.as_str()));
    }
    let events: Vec<Vec<u8>> = sqlx::query_scalar("SELECT payload FROM outbox").fetch_all(&c.pool).await.unwrap();
    for payload in events {
        for (_, _, full) in &keys {
            assert!(!payload.windows(full.len()).any(|w| w == full.as_bytes()), "an event carries a full key");
        }
    }
    c.stop().await;
}
