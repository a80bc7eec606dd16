//! The license lifecycle of SPEC §2 through HTTP: every cell of the table, renewals, seat
//! limits, the expiry sweeper with two replicas, key rotation and transfer, and tenancy.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cls_tests::{Options, TestCluster, eventually};
use hyper::StatusCode;
use serde_json::{Value, json};

static CUSTOMERS: AtomicUsize = AtomicUsize::new(0);

/// A brand with product `pro` (2 seats) and its write key.
async fn setup(c: &TestCluster, slug: &str, prefix: &str) -> String {
    let (_, key) = c.brand_with_key(slug, prefix).await;
    let r = c.post("/v1/products", &[("x-api-key", &key)], &json!({"code": "pro", "name": "Pro", "default_seat_limit": 2})).await;
    assert_eq!(r.status, StatusCode::CREATED);
    key
}

/// A new license (for a new customer) in the given starting state.
async fn license(c: &TestCluster, key: &str, state: &str) -> Value {
    let n = CUSTOMERS.fetch_add(1, Ordering::Relaxed);
    let item = match state {
        "expired" => json!({"code": "pro", "expires_at": "2020-01-01T00:00:00Z"}),
        "perpetual" => json!({"code": "pro", "expires_at": null}),
        _ => json!({"code": "pro"}),
    };
    let r = c.post("/v1/licenses", &[("x-api-key", key)], &json!({"customer_email": format!("c{n}@life.io"), "products": [item]})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json());
    let mut l = r.json()["licenses"][0].clone();
    l["full_key"] = r.json()["license_key"]["key"].clone();
    match state {
        "suspended" => l = act(c, key, &l, "suspend", json!({})).await.json(),
        "cancelled" => l = act(c, key, &l, "cancel", json!({})).await.json(),
        _ => {}
    }
    assert_eq!(l["status"], if state == "perpetual" { "valid" } else { state }, "{l}");
    l
}

async fn act(c: &TestCluster, key: &str, l: &Value, action: &str, body: Value) -> cls_tests::TestResponse {
    c.post(&format!("/v1/licenses/{}/{action}", l["id"].as_str().unwrap()), &[("x-api-key", key)], &body).await
}

fn future(days: i64) -> String {
    cls_contracts::format_time(chrono::Utc::now() + chrono::TimeDelta::days(days))
}

/// Expects 200 with the status; returns the body.
fn ok(r: cls_tests::TestResponse, status: &str, what: &str) -> Value {
    assert_eq!(r.status, StatusCode::OK, "{what}: {:?}", String::from_utf8_lossy(&r.body));
    let body = r.json();
    assert_eq!(body["status"], status, "{what}");
    body
}

fn conflict(r: cls_tests::TestResponse, code: &str, what: &str) {
    assert_eq!(r.status, StatusCode::CONFLICT, "{what}: {:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["code"], code, "{what}");
}

#[tokio::test]
async fn every_cell_of_the_lifecycle_table() {
    let c = TestCluster::spawn().await;
    let key = setup(&c, "lifecycle", "LC").await;
    let renew = || json!({"expires_at": future(30)});

    // From valid.
    let l = license(&c, &key, "valid").await;
    let renewed = ok(act(&c, &key, &l, "renew", renew()).await, "valid", "renew valid");
    assert_eq!(renewed["version"], 2);
    let l = license(&c, &key, "valid").await;
    ok(act(&c, &key, &l, "suspend", json!({"reason": "chargeback"})).await, "suspended", "suspend valid");
    let l = license(&c, &key, "valid").await;
    let same = ok(act(&c, &key, &l, "resume", json!({})).await, "valid", "resume valid is a no-op");
    assert_eq!(same["version"], l["version"], "a no-op changes nothing");
    let l = license(&c, &key, "valid").await;
    ok(act(&c, &key, &l, "cancel", json!({})).await, "cancelled", "cancel valid");
    let l = license(&c, &key, "valid").await;
    assert_eq!(ok(act(&c, &key, &l, "seats", json!({"seat_limit": 10})).await, "valid", "seats valid")["seat_limit"], 10);

    // From expired (effectively: past expiry, before any sweep).
    let l = license(&c, &key, "expired").await;
    ok(act(&c, &key, &l, "renew", renew()).await, "valid", "renewing an expired license makes it valid");
    let l = license(&c, &key, "expired").await;
    ok(act(&c, &key, &l, "suspend", json!({})).await, "suspended", "suspend expired");
    let l = license(&c, &key, "expired").await;
    let same = ok(act(&c, &key, &l, "resume", json!({})).await, "expired", "resume expired is a no-op");
    assert_eq!(same["version"], l["version"]);
    let l = license(&c, &key, "expired").await;
    ok(act(&c, &key, &l, "cancel", json!({})).await, "cancelled", "cancel expired");
    let l = license(&c, &key, "expired").await;
    assert_eq!(ok(act(&c, &key, &l, "seats", json!({"seat_limit": null})).await, "expired", "seats expired")["seat_limit"], Value::Null);

    // From suspended.
    let l = license(&c, &key, "suspended").await;
    let r = ok(act(&c, &key, &l, "renew", renew()).await, "suspended", "renewing a suspended license keeps it suspended");
    assert_ne!(r["expires_at"], l["expires_at"], "but moves its expiry");
    let l = license(&c, &key, "suspended").await;
    let same = ok(act(&c, &key, &l, "suspend", json!({})).await, "suspended", "suspend suspended is a no-op");
    assert_eq!(same["version"], l["version"]);
    let l = license(&c, &key, "suspended").await;
    ok(act(&c, &key, &l, "resume", json!({})).await, "valid", "resume suspended");
    let l = license(&c, &key, "expired").await;
    let l = ok(act(&c, &key, &l, "suspend", json!({})).await, "suspended", "suspend expired");
    ok(act(&c, &key, &l, "resume", json!({})).await, "expired", "resuming past its expiry gives expired");
    let l = license(&c, &key, "suspended").await;
    ok(act(&c, &key, &l, "cancel", json!({})).await, "cancelled", "cancel suspended");
    let l = license(&c, &key, "suspended").await;
    ok(act(&c, &key, &l, "seats", json!({"seat_limit": 3})).await, "suspended", "seats suspended");

    // From cancelled: terminal.
    let l = license(&c, &key, "cancelled").await;
    for (action, body) in [("renew", renew()), ("suspend", json!({})), ("resume", json!({})), ("seats", json!({"seat_limit": 4}))] {
        conflict(act(&c, &key, &l, action, body).await, "INVALID_TRANSITION", &format!("{action} cancelled"));
    }
    let same = ok(act(&c, &key, &l, "cancel", json!({})).await, "cancelled", "cancel cancelled is a no-op");
    assert_eq!(same["version"], l["version"]);

    // Renewals: into the past → 400; extend_days counts from max(now, expiry); perpetual → 409.
    let l = license(&c, &key, "valid").await;
    let r = act(&c, &key, &l, "renew", json!({"expires_at": "2021-06-01T00:00:00Z"})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = act(&c, &key, &l, "renew", json!({"expires_at": future(10), "extend_days": 5})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "exactly one of the two");
    let before = cls_contracts::parse_time(l["expires_at"].as_str().unwrap()).unwrap();
    let r = ok(act(&c, &key, &l, "renew", json!({"extend_days": 10})).await, "valid", "extend");
    let after = cls_contracts::parse_time(r["expires_at"].as_str().unwrap()).unwrap();
    assert_eq!((after - before).num_days(), 10);
    let expired = license(&c, &key, "expired").await;
    let r = ok(act(&c, &key, &expired, "renew", json!({"extend_days": 3})).await, "valid", "extend an expired one from now");
    let days = (cls_contracts::parse_time(r["expires_at"].as_str().unwrap()).unwrap() - chrono::Utc::now()).num_hours();
    assert!((71..=72).contains(&days), "3 days from now, got {days} h");
    let perpetual = license(&c, &key, "perpetual").await;
    conflict(act(&c, &key, &perpetual, "renew", renew()).await, "INVALID_TRANSITION", "renew perpetual");
    let r = act(&c, &key, &l, "seats", json!({"seat_limit": 0})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = act(&c, &key, &l, "seats", json!({})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "seat_limit is required");

    // The history records each change with its statuses and reason.
    let l = license(&c, &key, "valid").await;
    act(&c, &key, &l, "suspend", json!({"reason": "fraud review"})).await;
    act(&c, &key, &l, "resume", json!({})).await;
    let history = c.get(&format!("/v1/licenses/{}/history", l["id"].as_str().unwrap()), &[("x-api-key", &key)]).await.json();
    let actions: Vec<&str> = history["items"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["license.resumed", "license.suspended", "license.provisioned"]);
    assert_eq!(history["items"][1]["reason"], "fraud review");
    assert_eq!(history["items"][1]["status_before"], "valid");
    assert_eq!(history["items"][1]["status_after"], "suspended");
    c.stop().await;
}

#[tokio::test]
async fn lowering_seats_below_the_seats_in_use_is_refused() {
    let c = TestCluster::spawn().await;
    let key = setup(&c, "seated", "ST").await;
    let l = license(&c, &key, "valid").await;
    for instance in ["https://a.example", "https://b.example"] {
        let r = c
            .post("/v1/activations", &[], &json!({"license_key": l["full_key"], "product": "pro", "instance_id": instance}))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", String::from_utf8_lossy(&r.body));
    }
    conflict(act(&c, &key, &l, "seats", json!({"seat_limit": 1})).await, "SEATS_IN_USE", "below in use");
    let r = ok(act(&c, &key, &l, "seats", json!({"seat_limit": 2})).await, "valid", "equal to in use");
    assert_eq!(r["seats_remaining"], 0);
    c.stop().await;
}

#[tokio::test]
async fn the_sweeper_expires_each_due_license_once_with_two_replicas() {
    let mut c = TestCluster::spawn_with(Options { licenses_workers: 0, ..Default::default() }).await;
    c.settings.sweep_interval = Duration::from_millis(100);
    c.start_worker(cls_tests::Module::Licenses).await;
    c.start_worker(cls_tests::Module::Licenses).await;
    c.wait_ready().await;
    let key = setup(&c, "sweeping", "SW").await;
    let mut due = Vec::new();
    for _ in 0..12 {
        due.push(license(&c, &key, "expired").await);
    }
    let fresh = license(&c, &key, "valid").await;
    eventually(Duration::from_secs(30), "every due license persisted as expired", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM licenses WHERE status = 'expired'").fetch_one(&c.pool).await.unwrap();
        n == 12
    })
    .await;
    // Several more sweeps from both replicas find nothing new to emit.
    let sweeps = cls_licenses_worker::sweeper::sweep_once(&c.pool, None).await.unwrap();
    assert_eq!(sweeps, 0);
    let per_license: Vec<(uuid::Uuid, i64)> =
        sqlx::query_as("SELECT aggregate_id, count(*) FROM outbox WHERE event_type = 'license.expired' GROUP BY aggregate_id")
            .fetch_all(&c.pool)
            .await
            .unwrap();
    assert_eq!(per_license.len(), 12);
    assert!(per_license.iter().all(|(_, n)| *n == 1), "{per_license:?}");
    let status: String = sqlx::query_scalar("SELECT status FROM licenses WHERE id = $1::uuid").bind(fresh["id"].as_str().unwrap()).fetch_one(&c.pool).await.unwrap();
    assert_eq!(status, "valid");
    let history = c.get(&format!("/v1/licenses/{}/history", due[0]["id"].as_str().unwrap()), &[("x-api-key", &key)]).await.json();
    assert_eq!(history["items"][0]["actor"], json!({"kind": "system", "id": "expiry-sweeper"}));
    c.stop().await;
}

#[tokio::test]
async fn rotation_and_transfer() {
    let c = TestCluster::spawn().await;
    let key = setup(&c, "rotating", "RT").await;
    let l = license(&c, &key, "valid").await;
    let old = l["full_key"].as_str().unwrap().to_owned();
    let key_id = l["license_key_id"].as_str().unwrap().to_owned();
    let lookup = |k: String| {
        let c = &c;
        let key = key.clone();
        async move { c.post("/v1/license-keys/lookup", &[("x-api-key", &key)], &json!({"license_key": k})).await.status }
    };
    assert_eq!(lookup(old.clone()).await, StatusCode::OK);

    let r = c.post(&format!("/v1/license-keys/{key_id}/rotate"), &[("x-api-key", &key)], &json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", String::from_utf8_lossy(&r.body));
    let new = r.json()["key"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert!(new.starts_with("RT-"));
    assert_eq!(r.json()["id"], key_id.as_str());
    // The old key is refused at once, the new one works.
    assert_eq!(lookup(old.clone()).await, StatusCode::NOT_FOUND);
    assert_eq!(lookup(new.clone()).await, StatusCode::OK);
    let activate = |k: &str| json!({"license_key": k, "product": "pro", "instance_id": "host-1"});
    assert_eq!(c.post("/v1/activations", &[], &activate(&old)).await.status, StatusCode::NOT_FOUND);
    assert_eq!(c.post("/v1/activations", &[], &activate(&new)).await.status, StatusCode::CREATED);
    let history = c.get(&format!("/v1/licenses/{}", l["id"].as_str().unwrap()), &[("x-api-key", &key)]).await.json();
    assert_ne!(history["key_hint"], l["key_hint"], "the hint follows the new key");

    // Transfer: the key moves to the new email in every listing.
    let r = c.post(&format!("/v1/license-keys/{key_id}/transfer"), &[("x-api-key", &key)], &json!({"customer_email": "New.Address@Life.io"})).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["customer_email"], "new.address@life.io");
    let old_email = l["customer_email"].as_str().map(str::to_owned).unwrap_or_default();
    let by_new = c.get("/v1/licenses?customer_email=new.address%40life.io", &[("x-api-key", &key)]).await.json();
    assert_eq!(by_new["items"].as_array().unwrap().len(), 1);
    assert_eq!(by_new["items"][0]["license_key_id"], key_id.as_str());
    let listed = c.get("/v1/licenses", &[("x-api-key", &key)]).await.json();
    let mine = listed["items"].as_array().unwrap().iter().find(|i| i["license_key_id"] == key_id.as_str()).unwrap().clone();
    assert_eq!(mine["customer_email"], "new.address@life.io");
    assert_ne!(old_email, "new.address@life.io");
    let looked = c.post("/v1/license-keys/lookup", &[("x-api-key", &key)], &json!({"license_key": new})).await.json();
    assert_eq!(looked["customer_email"], "new.address@life.io");
    let (brand_id, _) = c.brand_with_key("eco-reader", "ER").await;
    let eco = c.create_api_key(&brand_id, &["ecosystem:read"]).await;
    let eco_list = c.get("/v1/ecosystem/licenses?customer_email=new.address%40life.io", &[("x-api-key", &eco)]).await.json();
    assert_eq!(eco_list["items"].as_array().unwrap().len(), 1);

    // Both changes are events without the key.
    let types: Vec<String> = sqlx::query_scalar("SELECT event_type FROM outbox WHERE aggregate_id = $1::uuid ORDER BY id").bind(&key_id).fetch_all(&c.pool).await.unwrap();
    assert_eq!(types, ["license_key.created", "license_key.rotated", "license_key.transferred"]);
    let payloads: Vec<Vec<u8>> = sqlx::query_scalar("SELECT payload FROM outbox").fetch_all(&c.pool).await.unwrap();
    for p in payloads {
        for k in [&old, &new] {
            assert!(!p.windows(k.len()).any(|w| w == k.as_bytes()));
        }
    }
    c.stop().await;
}

#[tokio::test]
async fn another_brands_licenses_keys_and_activations_answer_404() {
    let c = TestCluster::spawn().await;
    let owner = setup(&c, "owner", "OW").await;
    let intruder = setup(&c, "intruder", "IN").await;
    let l = license(&c, &owner, "valid").await;
    let activated = c.post("/v1/activations", &[], &json!({"license_key": l["full_key"], "product": "pro", "instance_id": "x"})).await;
    assert_eq!(activated.status, StatusCode::CREATED, "{:?}", String::from_utf8_lossy(&activated.body));
    let activation_id = activated.json()["activation"]["id"].as_str().unwrap().to_owned();
    let id = l["id"].as_str().unwrap();
    let key_id = l["license_key_id"].as_str().unwrap();
    let writes = [
        (format!("/v1/licenses/{id}/renew"), json!({"extend_days": 1})),
        (format!("/v1/licenses/{id}/suspend"), json!({})),
        (format!("/v1/licenses/{id}/resume"), json!({})),
        (format!("/v1/licenses/{id}/cancel"), json!({})),
        (format!("/v1/licenses/{id}/seats"), json!({"seat_limit": 9})),
        (format!("/v1/license-keys/{key_id}/rotate"), json!({})),
        (format!("/v1/license-keys/{key_id}/transfer"), json!({"customer_email": "x@y.io"})),
    ];
    for (path, body) in writes {
        let r = c.post(&path, &[("x-api-key", &intruder)], &body).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}: {:?}", String::from_utf8_lossy(&r.body));
    }
    for path in [format!("/v1/licenses/{id}"), format!("/v1/licenses/{id}/history")] {
        assert_eq!(c.get(&path, &[("x-api-key", &intruder)]).await.status, StatusCode::NOT_FOUND, "{path}");
    }
    let r = c.request(hyper::Method::DELETE, &format!("/v1/activations/{activation_id}"), &[("x-api-key", &intruder)], None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // Nothing changed for the owner.
    let mine = c.get(&format!("/v1/licenses/{id}"), &[("x-api-key", &owner)]).await.json();
    assert_eq!(mine["status"], "valid");
    assert_eq!(mine["activations"].as_array().unwrap().len(), 1);
    c.stop().await;
}

/// Times travel as RFC 3339 with four-digit years: an expiry outside the years 0001-9999 (in UTC)
/// is a 400, never a dead-lettered command or a license whose read model can no longer be written.
#[tokio::test]
async fn an_expiry_outside_the_years_1_to_9999_is_refused() {
    let c = TestCluster::spawn().await;
    let key = setup(&c, "far", "FA").await;
    let beyond = "9999-12-31T23:30:00-01:00";
    // Year 0 too: PostgreSQL writes it as `0001 BC`, which no reader parses back.
    for expires_at in [beyond, "0000-06-01T00:00:00Z"] {
        let r = c.post("/v1/licenses", &[("x-api-key", &key)], &json!({"customer_email": "far@life.io", "products": [{"code": "pro", "expires_at": expires_at}]})).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{expires_at}: {:?}", r.json());
        assert_eq!(r.json()["errors"][0]["field"], "products[0].expires_at");
    }

    let r = c.post("/v1/licenses", &[("x-api-key", &key)], &json!({"customer_email": "far@life.io", "products": [{"code": "pro", "expires_at": "9990-01-01T00:00:00Z"}]})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json());
    let l = r.json()["licenses"][0].clone();
    for (body, field) in [(json!({"expires_at": beyond}), "expires_at"), (json!({"extend_days": 36500}), "extend_days")] {
        let r = act(&c, &key, &l, "renew", body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.json());
        assert_eq!(r.json()["errors"][0]["field"], field);
    }
    let renewed = ok(act(&c, &key, &l, "renew", json!({"extend_days": 30})).await, "valid", "a representable renewal");
    assert_eq!(renewed["expires_at"], "9990-01-31T00:00:00.000000Z");
    c.stop().await;
}
