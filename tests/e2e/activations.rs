//! The activations module through HTTP: seats under concurrency on several replicas (US3), the
//! SPEC §2 rules in order, deactivation (US5), the brand-side release, the reaction to a
//! cancelled license, the license version moving with its activations, and idempotency on the
//! product routes.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cls_contracts::{Event, EventEnvelope};
use cls_tests::{Options, TestCluster, TestResponse, eventually};
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

static CUSTOMERS: AtomicUsize = AtomicUsize::new(0);

/// A brand with the products `pro` and `addon`, and its write key: (brand id, API key).
async fn brand(c: &TestCluster, slug: &str, prefix: &str) -> (String, String) {
    let (brand_id, key) = c.brand_with_key(slug, prefix).await;
    for code in ["pro", "addon"] {
        let r = c.post("/v1/products", &[("x-api-key", &key)], &json!({"code": code, "name": code})).await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", String::from_utf8_lossy(&r.body));
    }
    (brand_id, key)
}

/// A `pro` license for a new customer (so a new key): (license, full license key).
async fn license(c: &TestCluster, api_key: &str, item: Value) -> (Value, String) {
    let n = CUSTOMERS.fetch_add(1, Ordering::Relaxed);
    let mut item = item;
    item["code"] = json!("pro");
    let body = json!({"customer_email": format!("seat{n}@example.com"), "products": [item]});
    let r = c.post("/v1/licenses", &[("x-api-key", api_key)], &body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", String::from_utf8_lossy(&r.body));
    let body = r.json();
    (body["licenses"][0].clone(), body["license_key"]["key"].as_str().unwrap().to_owned())
}

async fn activate(c: &TestCluster, key: &str, instance: &str) -> TestResponse {
    c.post("/v1/activations", &[], &json!({"license_key": key, "product": "pro", "instance_id": instance})).await
}

async fn deactivate(c: &TestCluster, key: &str, instance: &str) -> TestResponse {
    c.post("/v1/activations/deactivate", &[], &json!({"license_key": key, "product": "pro", "instance_id": instance})).await
}

async fn release(c: &TestCluster, api_key: &str, id: &str) -> TestResponse {
    c.request(Method::DELETE, &format!("/v1/activations/{id}"), &[("x-api-key", api_key)], None).await
}

async fn get_license(c: &TestCluster, api_key: &str, l: &Value) -> Value {
    let r = c.get(&format!("/v1/licenses/{}", l["id"].as_str().unwrap()), &[("x-api-key", api_key)]).await;
    assert_eq!(r.status, StatusCode::OK);
    r.json()
}

/// Asserts the status and, for a problem, its code; returns the body.
fn expect(r: &TestResponse, status: StatusCode, code: Option<&str>, what: &str) -> Value {
    assert_eq!(r.status, status, "{what}: {}", String::from_utf8_lossy(&r.body));
    if r.body.is_empty() {
        return Value::Null;
    }
    let body = r.json();
    if let Some(code) = code {
        assert_eq!(body["code"], code, "{what}");
    }
    body
}

async fn scalar(c: &TestCluster, sql: &str, license_id: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .bind(uuid::Uuid::parse_str(license_id).unwrap())
        .fetch_one(&c.pool)
        .await
        .unwrap()
}

/// The license's events in the outbox, decoded, in version order.
async fn outbox_events(c: &TestCluster, license_id: &str) -> Vec<EventEnvelope> {
    let payloads: Vec<Vec<u8>> = sqlx::query_scalar("SELECT payload FROM outbox WHERE aggregate_id = $1 ORDER BY aggregate_version, id")
        .bind(uuid::Uuid::parse_str(license_id).unwrap())
        .fetch_all(&c.pool)
        .await
        .unwrap();
    payloads.iter().map(|p| cls_contracts::decode(p).expect("an event envelope")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_activations_on_three_replicas_grant_exactly_the_free_seats() {
    // A generous reply timeout: the assertion is on outcomes, never on speed.
    let options = Options { activations_workers: 3, reply_timeout: Duration::from_secs(60), ..Default::default() };
    let c = Arc::new(TestCluster::spawn_with(options).await);
    let (_, api_key) = brand(&c, "racers", "RC").await;
    let (l, key) = license(&c, &api_key, json!({"seat_limit": 5})).await;

    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let (c, key) = (c.clone(), key.clone());
            tokio::spawn(async move { activate(&c, &key, &format!("https://site-{i}.example")).await })
        })
        .collect();
    let mut granted = Vec::new();
    let mut refused = 0;
    for t in tasks {
        let r = t.await.unwrap();
        match r.status {
            StatusCode::CREATED => granted.push(r.json()),
            StatusCode::CONFLICT => {
                let body = r.json();
                assert_eq!(body["code"], "SEAT_LIMIT_REACHED");
                let listed = body["activations"].as_array().expect("the problem lists the active activations");
                assert_eq!(listed.len(), 5, "{body}");
                assert!(listed.iter().all(|a| a["instance_id"].is_string() && a["activated_at"].is_string()), "{body}");
                refused += 1;
            }
            other => panic!("unexpected {other}: {}", String::from_utf8_lossy(&r.body)),
        }
    }
    assert_eq!((granted.len(), refused), (5, 95));
    assert!(granted.iter().all(|g| g["license"]["seat_limit"] == 5));
    let id = l["id"].as_str().unwrap();
    assert_eq!(scalar(&c, "SELECT count(*) FROM activations WHERE license_id = $1 AND deactivated_at IS NULL", id).await, 5);
    assert_eq!(scalar(&c, "SELECT count(*) FROM activations WHERE license_id = $1", id).await, 5);
    let read = get_license(&c, &api_key, &l).await;
    assert_eq!((read["seats_used"].clone(), read["seats_remaining"].clone()), (json!(5), json!(0)));
    assert_eq!(read["version"], 6, "one version per granted seat");
    // 95 refusals were reported as events, 5 grants as activation.created.
    let events = outbox_events(&c, id).await;
    let count = |t: &str| events.iter().filter(|e| e.event.event_type() == t).count();
    assert_eq!((count("activation.created"), count("activation.rejected")), (5, 95));
    // More than one replica took part.
    let mut busy = 0;
    for name in ["activations-worker", "activations-worker-1", "activations-worker-2"] {
        let metrics = String::from_utf8_lossy(&c.ops_get(name, "/metrics").await.body).into_owned();
        busy += usize::from(metrics.contains("command=\"activations.activate\",outcome=\"handled\""));
    }
    assert!(busy >= 2, "only {busy} replica(s) handled activations");

    // 50 concurrent activations of one instance: one activation, the same id for everyone.
    let (l, key) = license(&c, &api_key, json!({"seat_limit": 5})).await;
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (c, key) = (c.clone(), key.clone());
            tokio::spawn(async move { activate(&c, &key, "machine-42").await })
        })
        .collect();
    let mut ids = HashSet::new();
    let mut created = 0;
    for t in tasks {
        let r = t.await.unwrap();
        assert!(r.status == StatusCode::CREATED || r.status == StatusCode::OK, "{}: {}", r.status, String::from_utf8_lossy(&r.body));
        created += usize::from(r.status == StatusCode::CREATED);
        ids.insert(r.json()["activation"]["id"].as_str().unwrap().to_owned());
    }
    assert_eq!((created, ids.len()), (1, 1));
    assert_eq!(scalar(&c, "SELECT count(*) FROM activations WHERE license_id = $1", l["id"].as_str().unwrap()).await, 1);

    Arc::into_inner(c).unwrap().stop().await;
}

#[tokio::test]
async fn an_active_instance_reactivates_even_when_full_but_not_when_suspended() {
    let c = TestCluster::spawn().await;
    let (_, api_key) = brand(&c, "again", "AG").await;
    let (l, key) = license(&c, &api_key, json!({"seat_limit": 1})).await;

    let first = expect(&activate(&c, &key, "host-a").await, StatusCode::CREATED, None, "first activation");
    assert_eq!(first["activation"]["instance_id"], "host-a");
    assert_eq!(first["license"], json!({"product": "pro", "status": "valid", "expires_at": l["expires_at"], "seat_limit": 1, "seats_used": 1, "seats_remaining": 0}));
    let seen_before: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT last_seen_at FROM activations")
        .fetch_one(&c.pool)
        .await
        .unwrap();

    // The license is full, yet the active instance gets its activation back: 200, same id.
    let again = expect(&activate(&c, &key, "host-a").await, StatusCode::OK, None, "re-activation");
    assert_eq!(again["activation"], first["activation"]);
    assert_eq!(again["license"]["seats_used"], 1);
    let seen_after: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT last_seen_at FROM activations")
        .fetch_one(&c.pool)
        .await
        .unwrap();
    assert!(seen_after >= seen_before);
    // Another instance is refused, and told which instance holds the seat.
    let full = expect(&activate(&c, &key, "host-b").await, StatusCode::CONFLICT, Some("SEAT_LIMIT_REACHED"), "full");
    assert_eq!(full["activations"], json!([{"instance_id": "host-a", "activated_at": first["activation"]["activated_at"]}]));
    assert_eq!(full["status"], 409);
    assert!(full["request_id"].is_string());
    // The re-activation changed nothing a reader sees in the version.
    assert_eq!(get_license(&c, &api_key, &l).await["version"], 2);

    // Suspended: refused, also for the instance that is already active.
    let suspend = c.post(&format!("/v1/licenses/{}/suspend", l["id"].as_str().unwrap()), &[("x-api-key", &api_key)], &json!({})).await;
    expect(&suspend, StatusCode::OK, None, "suspend");
    expect(&activate(&c, &key, "host-a").await, StatusCode::CONFLICT, Some("LICENSE_SUSPENDED"), "active instance, suspended license");
    expect(&activate(&c, &key, "host-c").await, StatusCode::CONFLICT, Some("LICENSE_SUSPENDED"), "new instance, suspended license");
    let active: i64 = sqlx::query_scalar("SELECT count(*) FROM activations WHERE deactivated_at IS NULL").fetch_one(&c.pool).await.unwrap();
    assert_eq!(active, 1, "a suspension keeps the activations");
    c.stop().await;
}

#[tokio::test]
async fn two_spellings_of_one_site_are_one_instance() {
    let c = TestCluster::spawn().await;
    let (_, api_key) = brand(&c, "spelling", "SP").await;
    let (_, key) = license(&c, &api_key, json!({"seat_limit": 3})).await;

    let first = expect(&activate(&c, &key, "https://Site.example/").await, StatusCode::CREATED, None, "first spelling");
    assert_eq!(first["activation"]["instance_id"], "https://site.example");
    let second = expect(&activate(&c, &key, "  https://site.example  ").await, StatusCode::OK, None, "second spelling");
    assert_eq!(second["activation"]["id"], first["activation"]["id"]);
    assert_eq!(second["license"]["seats_used"], 1);
    let back = expect(&deactivate(&c, &key, "HTTPS://SITE.EXAMPLE:443/").await, StatusCode::OK, None, "third spelling");
    assert_eq!(back, json!({"deactivated": true, "seats_remaining": 3}));
    c.stop().await;
}

#[tokio::test]
async fn an_unlimited_license_takes_any_number_of_instances_with_their_details() {
    let c = TestCluster::spawn().await;
    let (_, api_key) = brand(&c, "unlimited", "UL").await;
    let (l, key) = license(&c, &api_key, json!({"seat_limit": null})).await;
    for i in 0..3 {
        let body = json!({"license_key": key, "product": "pro", "instance_id": format!("host-{i}"), "instance_name": format!("Host {i}"), "metadata": {"os": "linux", "n": i}});
        let r = expect(&c.post("/v1/activations", &[], &body).await, StatusCode::CREATED, None, "unlimited");
        assert_eq!(r["license"]["seat_limit"], Value::Null);
        assert_eq!(r["license"]["seats_remaining"], Value::Null);
        assert_eq!(r["license"]["seats_used"], i + 1);
    }
    let read = get_license(&c, &api_key, &l).await;
    let names: Vec<&str> = read["activations"].as_array().unwrap().iter().map(|a| a["instance_name"].as_str().unwrap()).collect();
    assert_eq!(names, ["Host 0", "Host 1", "Host 2"]);
    let metadata: Value = sqlx::query_scalar("SELECT metadata FROM activations WHERE instance_id = 'host-2'").fetch_one(&c.pool).await.unwrap();
    assert_eq!(metadata, json!({"os": "linux", "n": 2}));
    let off = expect(&deactivate(&c, &key, "host-0").await, StatusCode::OK, None, "deactivate");
    assert_eq!(off, json!({"deactivated": true, "seats_remaining": null}));
    c.stop().await;
}

#[tokio::test]
async fn deactivation_frees_the_seat_once() {
    let c = TestCluster::spawn().await;
    let (_, api_key) = brand(&c, "freeing", "FR").await;
    let (l, key) = license(&c, &api_key, json!({"seat_limit": 1})).await;

    let a = expect(&activate(&c, &key, "host-a").await, StatusCode::CREATED, None, "activate a");
    expect(&activate(&c, &key, "host-b").await, StatusCode::CONFLICT, Some("SEAT_LIMIT_REACHED"), "b while full");

    let off = expect(&deactivate(&c, &key, "host-a").await, StatusCode::OK, None, "deactivate a");
    assert_eq!(off, json!({"deactivated": true, "seats_remaining": 1}));
    let again = expect(&deactivate(&c, &key, "host-a").await, StatusCode::OK, None, "deactivate a again");
    assert_eq!(again, json!({"deactivated": false, "seats_remaining": 1}));
    expect(&deactivate(&c, &key, "host-never").await, StatusCode::NOT_FOUND, Some("ACTIVATION_NOT_FOUND"), "never activated");

    // The freed seat is taken by b; then a comes back on a new activation row.
    expect(&activate(&c, &key, "host-b").await, StatusCode::CREATED, None, "b after a left");
    expect(&deactivate(&c, &key, "host-b").await, StatusCode::OK, None, "deactivate b");
    let back = expect(&activate(&c, &key, "host-a").await, StatusCode::CREATED, None, "a again");
    assert_ne!(back["activation"]["id"], a["activation"]["id"], "a previously deactivated instance gets a new row");

    let id = l["id"].as_str().unwrap();
    assert_eq!(scalar(&c, "SELECT count(*) FROM activations WHERE license_id = $1 AND deactivated_by = 'product'", id).await, 2);
    let read = get_license(&c, &api_key, &l).await;
    assert_eq!(read["activations"].as_array().unwrap().len(), 1);
    assert_eq!(read["activations"][0]["id"], back["activation"]["id"]);
    c.stop().await;
}

#[tokio::test]
async fn a_cancelled_license_refuses_at_once_and_its_seats_are_released() {
    let c = TestCluster::spawn().await;
    let (_, api_key) = brand(&c, "cancels", "CN").await;
    let (l, key) = license(&c, &api_key, json!({"seat_limit": 3})).await;
    let id = l["id"].as_str().unwrap();
    expect(&activate(&c, &key, "host-a").await, StatusCode::CREATED, None, "a");
    expect(&activate(&c, &key, "host-b").await, StatusCode::CREATED, None, "b");

    let cancelled = c.post(&format!("/v1/licenses/{id}/cancel"), &[("x-api-key", &api_key)], &json!({"reason": "refund"})).await;
    let cancelled = expect(&cancelled, StatusCode::OK, None, "cancel");
    assert_eq!(cancelled["seats_used"], 0);
    let cancelled_version = cancelled["version"].as_i64().unwrap();

    // At once: refused for a new and for an active instance, and no seat is reported in use.
    expect(&activate(&c, &key, "host-c").await, StatusCode::CONFLICT, Some("LICENSE_CANCELLED"), "new instance");
    expect(&activate(&c, &key, "host-a").await, StatusCode::CONFLICT, Some("LICENSE_CANCELLED"), "active instance");
    assert_eq!(get_license(&c, &api_key, &l).await["seats_used"], 0);

    // Within seconds the activations module releases the rows (license.cancelled reaction).
    eventually(Duration::from_secs(20), "the cancelled license's activations released", || async {
        scalar(&c, "SELECT count(*) FROM activations WHERE license_id = $1 AND deactivated_at IS NULL", id).await == 0
    })
    .await;
    assert_eq!(scalar(&c, "SELECT count(*) FROM activations WHERE license_id = $1 AND deactivated_by = 'license_cancelled'", id).await, 2);
    let handled: i64 = sqlx::query_scalar("SELECT count(*) FROM processed_events WHERE consumer = 'activations'").fetch_one(&c.pool).await.unwrap();
    assert_eq!(handled, 1);
    assert_eq!(scalar(&c, "SELECT version FROM licenses WHERE id = $1", id).await, cancelled_version + 2, "one version per released seat");
    // The reaction brings the read model up to date after its commit, so reads show it shortly.
    eventually(Duration::from_secs(20), "the read model shows the release", || async {
        get_license(&c, &api_key, &l).await["version"].as_i64() == Some(cancelled_version + 2)
    })
    .await;
    assert_eq!(get_license(&c, &api_key, &l).await["activations"], json!([]));
    let released: Vec<_> = outbox_events(&c, id)
        .await
        .into_iter()
        .filter_map(|e| match e.event {
            Event::ActivationDeactivated(d) => Some((e.aggregate_version, d, e.causation_id)),
            _ => None,
        })
        .collect();
    assert_eq!(released.len(), 2);
    assert_eq!(released.iter().map(|(v, ..)| *v).collect::<Vec<_>>(), [cancelled_version + 1, cancelled_version + 2]);
    assert!(released.iter().all(|(_, d, _)| d.deactivated_by.as_deref() == Some("license_cancelled") && d.seats_used == 0));
    // Caused by the license.cancelled event.
    let cancel_event: String = sqlx::query_scalar("SELECT event_id::text FROM outbox WHERE event_type = 'license.cancelled'")
        .fetch_one(&c.pool)
        .await
        .unwrap();
    assert!(released.iter().all(|(.., cause)| cause.as_deref() == Some(cancel_event.as_str())));
    let audits: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_entries WHERE actor_kind = 'system' AND action = 'activation.deactivated'")
        .fetch_one(&c.pool)
        .await
        .unwrap();
    assert_eq!(audits, 2);
    c.stop().await;
}

#[tokio::test]
async fn a_redelivered_license_cancelled_event_changes_nothing() {
    let c = TestCluster::spawn().await;
    let (_, api_key) = brand(&c, "redeliver", "RD").await;
    let (l, key) = license(&c, &api_key, json!({"seat_limit": 3})).await;
    let id = l["id"].as_str().unwrap();
    expect(&activate(&c, &key, "host-a").await, StatusCode::CREATED, None, "a");
    expect(&c.post(&format!("/v1/licenses/{id}/cancel"), &[("x-api-key", &api_key)], &json!({})).await, StatusCode::OK, None, "cancel");
    eventually(Duration::from_secs(20), "released", || async {
        scalar(&c, "SELECT count(*) FROM activations WHERE license_id = $1 AND deactivated_at IS NULL", id).await == 0
    })
    .await;
    // From Postgres: the release commits before the worker brings the read model up to date, so a
    // read through the API right after the release can still show the version before it.
    let version_sql = "SELECT version FROM licenses WHERE id = $1";
    let version = scalar(&c, version_sql, id).await;

    // The same event again (at-least-once delivery): deduplicated by its id.
    let payload: Vec<u8> = sqlx::query_scalar("SELECT payload FROM outbox WHERE event_type = 'license.cancelled'").fetch_one(&c.pool).await.unwrap();
    let (conn, _ch) = c.amqp().await;
    let publisher = cls_bus::Publisher::open(&conn, Duration::from_secs(5)).await.unwrap();
    publisher.publish(&c.topology().events_exchange(), "license.cancelled", &payload, Default::default(), true).await.unwrap();
    eventually(Duration::from_secs(20), "the duplicate consumed", || async {
        let metrics = String::from_utf8_lossy(&c.ops_get("activations-worker", "/metrics").await.body).into_owned();
        metrics.contains("event=\"license.cancelled\",outcome=\"duplicate\"")
    })
    .await;
    assert_eq!(scalar(&c, version_sql, id).await, version, "the duplicate changed nothing");
    assert_eq!(scalar(&c, "SELECT count(*) FROM outbox WHERE aggregate_id = $1 AND event_type = 'activation.deactivated'", id).await, 1);

    // A poison message goes to the dead-letter queue, and the worker keeps working.
    publisher.publish(&c.topology().events_exchange(), "license.cancelled", b"not msgpack", Default::default(), true).await.unwrap();
    let dlq = format!("{}.dlq", c.topology().license_events_queue());
    let ch = conn.create_channel().await.unwrap();
    eventually(Duration::from_secs(20), "the poison message dead-lettered", || async {
        let passive = lapin::options::QueueDeclareOptions { passive: true, ..Default::default() };
        ch.queue_declare(dlq.clone().into(), passive, Default::default()).await.unwrap().message_count() == 1
    })
    .await;
    let (_, other) = license(&c, &api_key, json!({"seat_limit": 1})).await;
    expect(&activate(&c, &other, "host-z").await, StatusCode::CREATED, None, "still working");
    let _ = conn.close(200, "bye".into()).await;
    c.stop().await;
}

#[tokio::test]
async fn refusals_expired_unknown_key_and_no_license_for_the_product() {
    let c = TestCluster::spawn().await;
    let (_, api_key) = brand(&c, "refusals", "RF").await;
    let (l, key) = license(&c, &api_key, json!({"expires_at": "2020-01-01T00:00:00Z"})).await;
    assert_eq!(l["status"], "expired");

    expect(&activate(&c, &key, "host-a").await, StatusCode::CONFLICT, Some("LICENSE_EXPIRED"), "expired");
    let rejected: Vec<_> = outbox_events(&c, l["id"].as_str().unwrap())
        .await
        .into_iter()
        .filter_map(|e| match e.event {
            Event::ActivationRejected(r) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(rejected.len(), 1);
    assert_eq!((rejected[0].code.as_str(), rejected[0].instance_id.as_str()), ("LICENSE_EXPIRED", "host-a"));

    let unknown = activate(&c, "RF-0000-0000-0000-0000", "host-a").await;
    expect(&unknown, StatusCode::NOT_FOUND, Some("LICENSE_KEY_NOT_FOUND"), "unknown key");
    let no_license = c.post("/v1/activations", &[], &json!({"license_key": key, "product": "addon", "instance_id": "host-a"})).await;
    expect(&no_license, StatusCode::NOT_FOUND, Some("NO_LICENSE_FOR_PRODUCT"), "no license for addon");
    let unknown_deactivate = deactivate(&c, "RF-0000-0000-0000-0000", "host-a").await;
    expect(&unknown_deactivate, StatusCode::NOT_FOUND, Some("LICENSE_KEY_NOT_FOUND"), "deactivate, unknown key");
    // Nothing in any answer gives away the customer's email or the key.
    for r in [unknown, no_license] {
        let text = String::from_utf8_lossy(&r.body).into_owned();
        assert!(!text.contains("@example.com") && !text.contains(&key), "{text}");
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM activations").fetch_one(&c.pool).await.unwrap();
    assert_eq!(rows, 0);
    c.stop().await;
}

#[tokio::test]
async fn a_cancelled_license_gives_way_to_the_live_one_for_the_product() {
    let c = TestCluster::spawn().await;
    let (_, api_key) = brand(&c, "rebought", "RB").await;
    let (old, key) = license(&c, &api_key, json!({"seat_limit": 1})).await;
    let cancel = c.post(&format!("/v1/licenses/{}/cancel", old["id"].as_str().unwrap()), &[("x-api-key", &api_key)], &json!({})).await;
    expect(&cancel, StatusCode::OK, None, "cancel");
    expect(&activate(&c, &key, "host-a").await, StatusCode::CONFLICT, Some("LICENSE_CANCELLED"), "only the cancelled license");

    // A new license for the same product on the same key: that one counts.
    let body = json!({"license_key_id": old["license_key_id"], "customer_email": email_of(&c, &api_key, &old).await, "products": [{"code": "pro", "seat_limit": 2}]});
    let r = c.post("/v1/licenses", &[("x-api-key", &api_key)], &body).await;
    let new = expect(&r, StatusCode::CREATED, None, "re-provision")["licenses"][0].clone();
    let on = expect(&activate(&c, &key, "host-a").await, StatusCode::CREATED, None, "the live license");
    assert_eq!(on["license"]["seat_limit"], 2);
    assert_eq!(get_license(&c, &api_key, &new).await["seats_used"], 1);
    c.stop().await;
}

async fn email_of(c: &TestCluster, api_key: &str, l: &Value) -> String {
    let r = c.get("/v1/licenses?limit=200", &[("x-api-key", api_key)]).await;
    let items = r.json()["items"].as_array().unwrap().clone();
    items.iter().find(|i| i["id"] == l["id"]).unwrap()["customer_email"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn every_seat_change_moves_the_license_version_and_emits_an_event() {
    let c = TestCluster::spawn().await;
    let (brand_id, api_key) = brand(&c, "versions", "VR").await;
    let (l, key) = license(&c, &api_key, json!({"seat_limit": 3})).await;
    let id = l["id"].as_str().unwrap();
    assert_eq!(l["version"], 1);
    let version = |v: Value| v["version"].as_i64().unwrap();

    let a = expect(&activate(&c, &key, "host-a").await, StatusCode::CREATED, None, "a");
    assert_eq!(version(get_license(&c, &api_key, &l).await), 2);
    expect(&activate(&c, &key, "host-b").await, StatusCode::CREATED, None, "b");
    assert_eq!(version(get_license(&c, &api_key, &l).await), 3);
    expect(&deactivate(&c, &key, "host-b").await, StatusCode::OK, None, "deactivate b");
    assert_eq!(version(get_license(&c, &api_key, &l).await), 4);
    expect(&release(&c, &api_key, a["activation"]["id"].as_str().unwrap()).await, StatusCode::NO_CONTENT, None, "release a");
    let read = get_license(&c, &api_key, &l).await;
    assert_eq!(version(read.clone()), 5);
    assert_ne!(read["updated_at"], l["updated_at"]);
    // No-ops do not move it.
    expect(&deactivate(&c, &key, "host-b").await, StatusCode::OK, None, "deactivate b again");
    expect(&release(&c, &api_key, a["activation"]["id"].as_str().unwrap()).await, StatusCode::NO_CONTENT, None, "release a again");
    assert_eq!(version(get_license(&c, &api_key, &l).await), 5);

    let events: Vec<(i64, &'static str, Option<String>, String)> = outbox_events(&c, id)
        .await
        .into_iter()
        .filter_map(|e| match &e.event {
            Event::ActivationCreated(d) | Event::ActivationDeactivated(d) => {
                assert_eq!(d.license_id, id);
                assert_eq!(d.brand_id, brand_id);
                assert_eq!(e.brand_id.as_deref(), Some(brand_id.as_str()));
                Some((e.aggregate_version, e.event.event_type(), d.deactivated_by.clone(), d.instance_id.clone()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        events,
        [
            (2, "activation.created", None, "host-a".to_owned()),
            (3, "activation.created", None, "host-b".to_owned()),
            (4, "activation.deactivated", Some("product".to_owned()), "host-b".to_owned()),
            (5, "activation.deactivated", Some("brand".to_owned()), "host-a".to_owned()),
        ]
    );
    // Each change is in the license's history.
    let history = c.get(&format!("/v1/licenses/{id}/history"), &[("x-api-key", &api_key)]).await.json();
    let actions: Vec<&str> = history["items"].as_array().unwrap().iter().filter_map(|e| e["action"].as_str()).filter(|a| a.starts_with("activation.")).collect();
    assert_eq!(actions, ["activation.deactivated", "activation.deactivated", "activation.created", "activation.created"]);
    // No event carries the full key.
    let raw: Vec<Vec<u8>> = sqlx::query_scalar("SELECT payload FROM outbox").fetch_all(&c.pool).await.unwrap();
    assert!(raw.iter().all(|p| !p.windows(key.len()).any(|w| w == key.as_bytes())));
    c.stop().await;
}

#[tokio::test]
async fn a_brand_releases_its_activations_and_only_its_own() {
    let c = TestCluster::spawn().await;
    let (_, api_key) = brand(&c, "releaser", "RL").await;
    let (_, intruder) = brand(&c, "intruder", "IN").await;
    let (l, key) = license(&c, &api_key, json!({"seat_limit": 1})).await;
    let a = expect(&activate(&c, &key, "host-a").await, StatusCode::CREATED, None, "a");
    let activation_id = a["activation"]["id"].as_str().unwrap();

    // Another brand's activation answers exactly like a missing one.
    let theirs = expect(&release(&c, &intruder, activation_id).await, StatusCode::NOT_FOUND, Some("ACTIVATION_NOT_FOUND"), "other brand");
    let missing = expect(&release(&c, &api_key, &uuid::Uuid::now_v7().to_string()).await, StatusCode::NOT_FOUND, Some("ACTIVATION_NOT_FOUND"), "missing");
    assert_eq!((theirs["title"].clone(), theirs["detail"].clone()), (missing["title"].clone(), missing["detail"].clone()));
    expect(&release(&c, &api_key, "not-a-uuid").await, StatusCode::NOT_FOUND, Some("ACTIVATION_NOT_FOUND"), "malformed");
    assert_eq!(get_license(&c, &api_key, &l).await["seats_used"], 1, "still active");

    let gone = release(&c, &api_key, activation_id).await;
    assert_eq!(gone.status, StatusCode::NO_CONTENT);
    assert!(gone.body.is_empty());
    assert_eq!(release(&c, &api_key, activation_id).await.status, StatusCode::NO_CONTENT, "again → 204");
    let by: String = sqlx::query_scalar("SELECT deactivated_by FROM activations").fetch_one(&c.pool).await.unwrap();
    assert_eq!(by, "brand");
    // The seat is free for another instance.
    expect(&activate(&c, &key, "host-b").await, StatusCode::CREATED, None, "b");
    c.stop().await;
}

#[tokio::test]
async fn product_routes_are_idempotent_and_their_operations_readable_without_a_header() {
    let c = TestCluster::spawn().await;
    let (_, api_key) = brand(&c, "idempotent", "IP").await;
    let (_, key) = license(&c, &api_key, json!({"seat_limit": 2})).await;
    let body = json!({"license_key": key, "product": "pro", "instance_id": "host-a"});
    let headers = [("idempotency-key", "activate-host-a")];

    let first = c.post("/v1/activations", &headers, &body).await;
    expect(&first, StatusCode::CREATED, None, "first");
    let replay = c.post("/v1/activations", &headers, &body).await;
    assert_eq!(replay.status, StatusCode::CREATED, "the replay answers the first outcome");
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(replay.body, first.body);
    let other = c.post("/v1/activations", &headers, &json!({"license_key": key, "product": "pro", "instance_id": "host-b"})).await;
    expect(&other, StatusCode::UNPROCESSABLE_ENTITY, Some("IDEMPOTENCY_KEY_REUSED"), "same key, other body");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM activations").fetch_one(&c.pool).await.unwrap();
    assert_eq!(rows, 1);

    // The operation of a product command reads with no header: the id is the credential.
    let command_id: uuid::Uuid = sqlx::query_scalar("SELECT command_id FROM inbox WHERE command_type = 'activations.activate'")
        .fetch_one(&c.pool)
        .await
        .unwrap();
    let op = c.get(&format!("/v1/operations/{command_id}"), &[]).await;
    let op = expect(&op, StatusCode::OK, None, "operation");
    assert_eq!(op["status"], "succeeded");
    assert_eq!(op["response"]["status"], 201);
    assert_eq!(op["response"]["body"], first.json());
    c.stop().await;
}

#[tokio::test]
async fn an_activation_answered_202_completes_once_its_worker_runs() {
    let options = Options { activations_workers: 0, reply_timeout: Duration::from_secs(2), ..Default::default() };
    let mut c = TestCluster::spawn_with(options).await;
    let (_, api_key) = brand(&c, "late", "LA").await;
    let (l, key) = license(&c, &api_key, json!({"seat_limit": 2})).await;

    let r = c.post("/v1/activations", &[("idempotency-key", "late-1")], &json!({"license_key": key, "product": "pro", "instance_id": "host-a"})).await;
    let accepted = expect(&r, StatusCode::ACCEPTED, None, "no activations worker yet");
    let op_path = format!("/v1/operations/{}", accepted["operation_id"].as_str().unwrap());
    assert_eq!(expect(&c.get(&op_path, &[]).await, StatusCode::OK, None, "pending")["status"], "pending");

    c.start_worker(cls_tests::Module::Activations).await;
    eventually(Duration::from_secs(20), "operation succeeded", || async { c.get(&op_path, &[]).await.json()["status"] == "succeeded" }).await;
    let op = c.get(&op_path, &[]).await.json();
    assert_eq!(op["response"]["status"], 201);
    assert_eq!(op["response"]["body"]["activation"]["instance_id"], "host-a");
    assert_eq!(get_license(&c, &api_key, &l).await["seats_used"], 1);
    c.stop().await;
}
