//! The brands module through HTTP: brands, API keys, products, authentication and tenancy.

use cls_tests::{ADMIN_TOKEN, TestCluster, eventually};
use hyper::{Method, StatusCode};
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn brands_api_keys_and_products_end_to_end() {
    let c = TestCluster::spawn().await;

    let brand = c.create_brand("rankmath", "RM").await;
    assert_eq!(brand["slug"], "rankmath");
    assert_eq!(brand["key_prefix"], "RM");
    let brand_id = brand["id"].as_str().unwrap();

    // Slug or prefix taken → 409 BRAND_EXISTS.
    for body in [json!({"slug": "rankmath", "name": "x", "key_prefix": "XX"}), json!({"slug": "other", "name": "x", "key_prefix": "RM"})] {
        let r = c.admin_post("/v1/admin/brands", &body).await;
        assert_eq!(r.status, StatusCode::CONFLICT);
        assert_eq!(r.json()["code"], "BRAND_EXISTS");
    }

    let listed = c.admin_get("/v1/admin/brands").await;
    assert_eq!(listed.status, StatusCode::OK);
    assert_eq!(listed.json()["items"].as_array().unwrap().len(), 1);

    // API key: the secret once, listed without it.
    let created = c.admin_post(&format!("/v1/admin/brands/{brand_id}/api-keys"), &json!({"name": "billing"})).await;
    assert_eq!(created.status, StatusCode::CREATED);
    let created = created.json();
    let secret = created["api_key"].as_str().unwrap().to_owned();
    assert_eq!(created["scopes"], json!(["licenses:write"]));
    assert_eq!(created["display_prefix"].as_str().unwrap(), &secret[..8]);
    let keys = c.admin_get(&format!("/v1/admin/brands/{brand_id}/api-keys")).await;
    assert_eq!(keys.status, StatusCode::OK);
    assert!(!String::from_utf8_lossy(&keys.body).contains(&secret), "a listing leaked the secret");
    assert_eq!(keys.json()["items"][0]["name"], "billing");

    // Products: defaults when absent, null means none.
    let p = c.post("/v1/products", &[("x-api-key", &secret)], &json!({"code": "seo-pro", "name": "SEO Pro"})).await;
    assert_eq!(p.status, StatusCode::CREATED, "{:?}", p.json());
    assert_eq!(p.json()["default_seat_limit"], 1);
    assert_eq!(p.json()["default_duration_days"], 365);
    let p = c
        .post("/v1/products", &[("x-api-key", &secret)], &json!({"code": "content-ai", "name": "Content AI", "default_seat_limit": null, "default_duration_days": null}))
        .await;
    assert_eq!(p.status, StatusCode::CREATED);
    assert_eq!(p.json()["default_seat_limit"], serde_json::Value::Null);
    assert_eq!(p.json()["default_duration_days"], serde_json::Value::Null);
    let dup = c.post("/v1/products", &[("x-api-key", &secret)], &json!({"code": "seo-pro", "name": "Again"})).await;
    assert_eq!(dup.status, StatusCode::CONFLICT);
    assert_eq!(dup.json()["code"], "PRODUCT_EXISTS");

    let products = c.get("/v1/products", &[("x-api-key", &secret)]).await;
    assert_eq!(products.status, StatusCode::OK);
    let codes: Vec<String> = products.json()["items"].as_array().unwrap().iter().map(|p| p["code"].as_str().unwrap().to_owned()).collect();
    assert_eq!(codes, ["seo-pro", "content-ai"]);

    // Pagination: limit and cursor.
    let first = c.get("/v1/products?limit=1", &[("x-api-key", &secret)]).await.json();
    assert_eq!(first["items"].as_array().unwrap().len(), 1);
    let cursor = first["next_cursor"].as_str().unwrap();
    let second = c.get(&format!("/v1/products?limit=1&cursor={cursor}"), &[("x-api-key", &secret)]).await.json();
    assert_eq!(second["items"][0]["code"], "content-ai");
    assert_eq!(second["next_cursor"], serde_json::Value::Null);
    let bad = c.get("/v1/products?limit=0", &[("x-api-key", &secret)]).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);

    c.stop().await;
}

#[tokio::test]
async fn authentication_scopes_and_tenancy() {
    let c = TestCluster::spawn().await;
    let (brand_a, key_a) = c.brand_with_key("brand-a", "AA").await;
    let (_brand_b, key_b) = c.brand_with_key("brand-b", "BB").await;
    let read_only = c.create_api_key(&brand_a, &["licenses:read"]).await;
    let eco_only = c.create_api_key(&brand_a, &["ecosystem:read"]).await;

    // 401: no key, unknown key; admin routes without or with a wrong token.
    assert_eq!(c.get("/v1/products", &[]).await.status, StatusCode::UNAUTHORIZED);
    let r = c.get("/v1/products", &[("x-api-key", "cls_unknown")]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.json()["code"], "UNAUTHENTICATED");
    assert_eq!(c.get("/v1/admin/brands", &[]).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(c.get("/v1/admin/brands", &[("x-admin-token", "wrong")]).await.status, StatusCode::UNAUTHORIZED);
    // An API key is not an admin token.
    assert_eq!(c.get("/v1/admin/brands", &[("x-api-key", &key_a)]).await.status, StatusCode::UNAUTHORIZED);

    // 403: read scope cannot write; ecosystem scope cannot read products; write implies read.
    let body = json!({"code": "p1", "name": "P1"});
    let r = c.post("/v1/products", &[("x-api-key", &read_only)], &body).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.json()["code"], "FORBIDDEN");
    assert_eq!(c.get("/v1/products", &[("x-api-key", &eco_only)]).await.status, StatusCode::FORBIDDEN);
    assert_eq!(c.get("/v1/products", &[("x-api-key", &read_only)]).await.status, StatusCode::OK);

    // Tenancy: each brand sees only its own products.
    assert_eq!(c.post("/v1/products", &[("x-api-key", &key_a)], &body).await.status, StatusCode::CREATED);
    assert_eq!(c.post("/v1/products", &[("x-api-key", &key_b)], &body).await.status, StatusCode::CREATED, "codes are unique per brand only");
    let a = c.get("/v1/products", &[("x-api-key", &key_a)]).await.json();
    let b = c.get("/v1/products", &[("x-api-key", &key_b)]).await.json();
    assert_eq!(a["items"].as_array().unwrap().len(), 1);
    assert_ne!(a["items"][0]["id"], b["items"][0]["id"]);

    // Admin routes: unknown or malformed brand ids are 404.
    let missing = uuid::Uuid::now_v7();
    assert_eq!(c.admin_get(&format!("/v1/admin/brands/{missing}/api-keys")).await.status, StatusCode::NOT_FOUND);
    assert_eq!(c.admin_get("/v1/admin/brands/not-a-uuid/api-keys").await.status, StatusCode::NOT_FOUND);
    let r = c.admin_post(&format!("/v1/admin/brands/{missing}/api-keys"), &json!({"name": "x"})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.json()["code"], "NOT_FOUND");

    c.stop().await;
}

#[tokio::test]
async fn a_revoked_key_is_refused_within_two_seconds() {
    let c = TestCluster::spawn().await;
    let brand = c.create_brand("revoker", "RV").await;
    let brand_id = brand["id"].as_str().unwrap();
    let created = c.admin_post(&format!("/v1/admin/brands/{brand_id}/api-keys"), &json!({"name": "k"})).await.json();
    let (key_id, secret) = (created["id"].as_str().unwrap().to_owned(), created["api_key"].as_str().unwrap().to_owned());
    assert_eq!(c.get("/v1/products", &[("x-api-key", &secret)]).await.status, StatusCode::OK);

    let revoke = c.request(Method::DELETE, &format!("/v1/admin/api-keys/{key_id}"), &[("x-admin-token", ADMIN_TOKEN)], None).await;
    assert_eq!(revoke.status, StatusCode::NO_CONTENT);
    assert!(revoke.body.is_empty());
    // SPEC §3: the key stops working within 2 s everywhere.
    eventually(Duration::from_secs(2), "revoked key refused", || async {
        c.get("/v1/products", &[("x-api-key", &secret)]).await.status == StatusCode::UNAUTHORIZED
    })
    .await;

    // Revoking again is the same 204; an unknown key id is 404.
    let again = c.request(Method::DELETE, &format!("/v1/admin/api-keys/{key_id}"), &[("x-admin-token", ADMIN_TOKEN)], None).await;
    assert_eq!(again.status, StatusCode::NO_CONTENT);
    let unknown = c.request(Method::DELETE, &format!("/v1/admin/api-keys/{}", uuid::Uuid::now_v7()), &[("x-admin-token", ADMIN_TOKEN)], None).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let listed = c.admin_get(&format!("/v1/admin/brands/{brand_id}/api-keys")).await.json();
    assert!(listed["items"][0]["revoked_at"].is_string());

    c.stop().await;
}
