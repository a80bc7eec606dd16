//! The Redis read model (SPEC §4) behind the hot reads: read-your-writes after every 2xx,
//! duplicated and reordered events, the compare-and-set, a namespace wiped while serving, what
//! the hit / miss / fallback counters say, Postgres fallback with Redis unreachable, and
//! `GET /v1/licenses/{id}` (tenancy and negative entries) from the read model.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use cls_tests::{ADMIN_TOKEN, Options, TestCluster, TestResponse, eventually, next_delivery};
use hyper::StatusCode;
use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use serde_json::{Value, json};

// ---------------------------------------------------------------- helpers

/// Polls every future until all are done (on the test's own task), outputs in input order.
async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(v) => *output = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending { Poll::Pending } else { Poll::Ready(()) }
    })
    .await;
    outputs.into_iter().map(|o| o.expect("every future finished")).collect()
}

/// Runs the futures `batch` at a time.
async fn in_batches<F: Future>(futures: Vec<F>, batch: usize) -> Vec<F::Output> {
    let mut out = Vec::with_capacity(futures.len());
    let mut futures = futures.into_iter().peekable();
    while futures.peek().is_some() {
        out.extend(join_all(futures.by_ref().take(batch).collect()).await);
    }
    out
}

fn text(r: &TestResponse) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// `POST /v1/license-keys/validate`, expecting 200.
async fn validate(c: &TestCluster, key: &str, product: Option<&str>, instance: Option<&str>) -> Value {
    let mut body = json!({"license_key": key});
    if let Some(p) = product {
        body["product"] = json!(p);
    }
    if let Some(i) = instance {
        body["instance_id"] = json!(i);
    }
    let r = c.post("/v1/license-keys/validate", &[], &body).await;
    assert_eq!(r.status, StatusCode::OK, "validate {body}: {}", text(&r));
    r.json()
}

/// `GET /v1/licenses/{id}`, expecting 200.
async fn get_license(c: &TestCluster, api_key: &str, id: &str) -> Value {
    let r = c.get(&format!("/v1/licenses/{id}"), &[("x-api-key", api_key)]).await;
    assert_eq!(r.status, StatusCode::OK, "GET license {id}: {}", text(&r));
    r.json()
}

/// The body of a write's answer, which must be `expected`. A 202 is counted in `accepted` and its
/// operation polled (as `auth`) until `succeeded`; its stored response must be `expected` too.
/// An operation the namespace wipe made unknown before its command committed reads 404 for a
/// moment, so 404 counts as "not yet".
async fn written(c: &TestCluster, r: TestResponse, expected: StatusCode, auth: &[(&str, &str)], accepted: &AtomicUsize, what: &str) -> Value {
    if r.status != StatusCode::ACCEPTED {
        assert_eq!(r.status, expected, "{what}: {}", text(&r));
        return r.json();
    }
    accepted.fetch_add(1, Ordering::Relaxed);
    let operation = r.json()["operation_id"].as_str().expect("202 names its operation").to_owned();
    let outcome = RefCell::new(None);
    eventually(Duration::from_secs(15), &format!("{what}: operation {operation} succeeded"), || {
        let outcome = &outcome;
        let path = format!("/v1/operations/{operation}");
        async move {
            let o = c.get(&path, auth).await;
            if o.status == StatusCode::NOT_FOUND {
                return false;
            }
            assert_eq!(o.status, StatusCode::OK, "{what}: GET {path}: {}", text(&o));
            let body = o.json();
            assert_ne!(body["status"], "failed", "{what}: {body}");
            if body["status"] != "succeeded" {
                return false;
            }
            *outcome.borrow_mut() = Some(body["response"].clone());
            true
        }
    })
    .await;
    let response = outcome.into_inner().expect("set when succeeded");
    assert_eq!(response["status"], expected.as_u16(), "{what}: {response}");
    response["body"].clone()
}

/// A brand with product `pro` (`seats` seats) and its write key: (brand id, API key).
async fn brand_with_product(c: &TestCluster, slug: &str, prefix: &str, seats: u32) -> (String, String) {
    let (brand, api_key) = c.brand_with_key(slug, prefix).await;
    let r = c.post("/v1/products", &[("x-api-key", &api_key)], &json!({"code": "pro", "name": "Pro", "default_seat_limit": seats})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", text(&r));
    (brand, api_key)
}

/// A provisioned license of `pro` for a new customer: (license id, license key id, key).
async fn provision(c: &TestCluster, api_key: &str, email: &str) -> (String, String, String) {
    let r = c.post("/v1/licenses", &[("x-api-key", api_key)], &json!({"customer_email": email, "products": [{"code": "pro"}]})).await;
    assert_eq!(r.status, StatusCode::CREATED, "provision: {}", text(&r));
    let body = r.json();
    let l = &body["licenses"][0];
    (
        l["id"].as_str().unwrap().to_owned(),
        body["license_key"]["id"].as_str().unwrap().to_owned(),
        body["license_key"]["key"].as_str().unwrap().to_owned(),
    )
}

/// The read model's Redis key of a license key's validation document.
fn key_doc(c: &TestCluster, key: &str) -> String {
    let hash = cls_domain::LicenseKey::parse(key).expect("a valid key").hash();
    format!("{}:rm:key:{}", c.namespace, hash.as_str())
}

async fn redis_get(redis: &fred::clients::Client, key: &str) -> Option<String> {
    use fred::prelude::*;
    redis.get::<Option<String>, _>(key).await.expect("redis GET")
}

/// Deletes every key of the namespace (`<ns>:*`, nothing else); returns how many there were.
async fn wipe_namespace(redis: &fred::clients::Client, namespace: &str) -> usize {
    use fred::prelude::*;
    let keys: Vec<String> = redis
        .custom(fred::types::CustomCommand::new_static("KEYS", fred::types::ClusterHash::FirstKey, false), vec![format!("{namespace}:*")])
        .await
        .expect("redis KEYS");
    assert!(keys.iter().all(|k| k.starts_with(&format!("{namespace}:"))));
    if !keys.is_empty() {
        let _: i64 = redis.del(keys.clone()).await.expect("redis DEL");
    }
    keys.len()
}

fn series(name: &str, doc: &str) -> String {
    format!("cls_read_model_{name}_total{{doc=\"{doc}\"}}")
}

fn projected(event: &str, outcome: &str) -> String {
    format!("cls_projector_events_total{{event=\"{event}\",outcome=\"{outcome}\"}}")
}

/// Hits, misses and fallbacks of one document kind in the query service.
async fn counters(c: &TestCluster, doc: &str) -> [f64; 3] {
    [c.metric("query", &series("hits", doc)).await, c.metric("query", &series("misses", doc)).await, c.metric("query", &series("fallbacks", doc)).await]
}

/// A random unknown key with the generated shape (`ZZ-XXXX-XXXX-XXXX-XXXX`, Crockford symbols).
fn random_key() -> String {
    const CROCKFORD: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let bytes: [u8; 16] = rand::random();
    let symbols: Vec<char> = bytes.iter().map(|b| CROCKFORD[(*b % 32) as usize] as char).collect();
    let groups: Vec<String> = symbols.chunks(4).map(|g| g.iter().collect()).collect();
    format!("ZZ-{}", groups.join("-"))
}

// ---------------------------------------------------------------- 1. read-your-writes

/// 40 rounds × 5 writes (suspend, resume, activate, deactivate, rotate): each read right after
/// the write's 2xx — validation and `GET /v1/licenses/{id}` — already shows it. No polling.
#[tokio::test]
async fn read_model_every_read_after_a_2xx_shows_the_write() {
    const ROUNDS: usize = 40;
    let c = TestCluster::spawn().await;
    let (_, api) = brand_with_product(&c, "ryw", "RW", 3).await;
    let (id, key_id, mut key) = provision(&c, &api, "ryw@customer.io").await;
    let brand_auth = [("x-api-key", api.as_str())];
    let accepted = AtomicUsize::new(0);

    // One seat held for the whole run, so a new instance makes it 2 and deactivating it 1 again.
    let anchor = c.post("/v1/activations", &[], &json!({"license_key": key, "product": "pro", "instance_id": "anchor-host"})).await;
    written(&c, anchor, StatusCode::CREATED, &[], &accepted, "anchor activation").await;

    let mut steps = 0;
    for round in 0..ROUNDS {
        let what = |step: &str| format!("round {round}, {step}");

        // suspend → SUSPENDED
        let r = c.post(&format!("/v1/licenses/{id}/suspend"), &brand_auth, &json!({"reason": "ryw"})).await;
        let body = written(&c, r, StatusCode::OK, &brand_auth, &accepted, &what("suspend")).await;
        assert_eq!(body["status"], "suspended", "{}", what("suspend"));
        let v = validate(&c, &key, Some("pro"), None).await;
        assert_eq!((v["valid"].as_bool(), v["code"].as_str()), (Some(false), Some("SUSPENDED")), "{}: {v}", what("suspend"));
        assert_eq!(get_license(&c, &api, &id).await["status"], "suspended", "{}", what("suspend"));
        steps += 1;

        // resume → VALID
        let r = c.post(&format!("/v1/licenses/{id}/resume"), &brand_auth, &json!({})).await;
        let body = written(&c, r, StatusCode::OK, &brand_auth, &accepted, &what("resume")).await;
        assert_eq!(body["status"], "valid", "{}", what("resume"));
        let v = validate(&c, &key, Some("pro"), None).await;
        assert_eq!((v["valid"].as_bool(), v["code"].as_str()), (Some(true), Some("VALID")), "{}: {v}", what("resume"));
        assert_eq!(get_license(&c, &api, &id).await["status"], "valid", "{}", what("resume"));
        steps += 1;

        // activate a new instance → seats 2, the instance active
        let instance = format!("host-{round}");
        let r = c.post("/v1/activations", &[], &json!({"license_key": key, "product": "pro", "instance_id": instance})).await;
        written(&c, r, StatusCode::CREATED, &[], &accepted, &what("activate")).await;
        let v = validate(&c, &key, Some("pro"), Some(&instance)).await;
        assert_eq!(v["code"], "VALID", "{}: {v}", what("activate"));
        assert_eq!(v["licenses"][0]["seats_used"], 2, "{}: {v}", what("activate"));
        assert_eq!(v["licenses"][0]["seats_remaining"], 1, "{}: {v}", what("activate"));
        assert_eq!(v["licenses"][0]["instance_active"], true, "{}: {v}", what("activate"));
        let l = get_license(&c, &api, &id).await;
        assert_eq!((l["seats_used"].as_u64(), l["seats_remaining"].as_u64()), (Some(2), Some(1)), "{}: {l}", what("activate"));
        assert!(l["activations"].as_array().unwrap().iter().any(|a| a["instance_id"] == instance.as_str()), "{}: {l}", what("activate"));
        steps += 1;

        // deactivate it → seats 1, the instance not active
        let r = c.post("/v1/activations/deactivate", &[], &json!({"license_key": key, "product": "pro", "instance_id": instance})).await;
        let body = written(&c, r, StatusCode::OK, &[], &accepted, &what("deactivate")).await;
        assert_eq!(body["deactivated"], true, "{}", what("deactivate"));
        let v = validate(&c, &key, Some("pro"), Some(&instance)).await;
        assert_eq!(v["code"], "NOT_ACTIVATED", "{}: {v}", what("deactivate"));
        assert_eq!(v["licenses"][0]["seats_used"], 1, "{}: {v}", what("deactivate"));
        assert_eq!(v["licenses"][0]["instance_active"], false, "{}: {v}", what("deactivate"));
        let l = get_license(&c, &api, &id).await;
        assert_eq!((l["seats_used"].as_u64(), l["seats_remaining"].as_u64()), (Some(1), Some(2)), "{}: {l}", what("deactivate"));
        assert!(l["activations"].as_array().unwrap().iter().all(|a| a["instance_id"] != instance.as_str()), "{}: {l}", what("deactivate"));
        steps += 1;

        // rotate the key → the old one is unknown at once, the new one validates
        let r = c.post(&format!("/v1/license-keys/{key_id}/rotate"), &brand_auth, &json!({})).await;
        let rotated = written(&c, r, StatusCode::OK, &brand_auth, &accepted, &what("rotate")).await;
        assert_eq!(rotated["id"], key_id.as_str());
        let new_key = rotated["key"].as_str().expect("the new key").to_owned();
        assert_ne!(new_key, key);
        let old = validate(&c, &key, Some("pro"), None).await;
        assert_eq!((old["valid"].as_bool(), old["code"].as_str()), (Some(false), Some("LICENSE_KEY_NOT_FOUND")), "{}: {old}", what("rotate"));
        let v = validate(&c, &new_key, Some("pro"), None).await;
        assert_eq!(v["code"], "VALID", "{}: {v}", what("rotate"));
        assert_eq!(v["key_hint"], rotated["key_hint"], "{}: {v}", what("rotate"));
        assert_eq!(get_license(&c, &api, &id).await["key_hint"], rotated["key_hint"], "{}", what("rotate"));
        key = new_key;
        steps += 1;
    }
    let accepted = accepted.load(Ordering::Relaxed);
    println!("{steps} writes, {accepted} answered 202");
    assert_eq!(steps, ROUNDS * 5);
    assert_eq!(accepted, 0, "with Redis up every write is visible before its 2xx");
    c.stop().await;
}

// ---------------------------------------------------------------- 2. events and compare-and-set

/// Old `license.suspended` / `license.resumed` envelopes published again (duplicates, and the
/// older one last) leave the newest state; and the compare-and-set itself: a lower or equal
/// version never replaces a document, a higher one does, a stale epoch writes nothing.
#[tokio::test]
async fn read_model_replayed_old_events_and_lower_versions_leave_the_newest_state() {
    let mut c = TestCluster::spawn().await;
    let (_conn, ch) = c.amqp().await;
    let mut consumer = c.subscribe(&ch, "test-read-model-capture", &["license.suspended", "license.resumed"]).await;

    let (_, api) = brand_with_product(&c, "replay", "RP", 3).await;
    let (id, _, key) = provision(&c, &api, "replay@customer.io").await;
    let brand_auth = [("x-api-key", api.as_str())];
    let r = c.post(&format!("/v1/licenses/{id}/suspend"), &brand_auth, &json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", text(&r));
    let r = c.post(&format!("/v1/licenses/{id}/resume"), &brand_auth, &json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", text(&r));

    // The real envelopes, as the relay published them.
    let mut captured: std::collections::BTreeMap<String, (Vec<u8>, BasicProperties)> = Default::default();
    while captured.len() < 2 {
        let delivery = next_delivery(&mut consumer, "the lifecycle events").await;
        captured.insert(delivery.routing_key.to_string(), (delivery.data.clone(), delivery.properties.clone()));
    }

    // Each names what its command made visible: the key, at the version drawn then (the resume
    // was the last change).
    let (key_id, version): (uuid::Uuid, i64) =
        sqlx::query_as("SELECT k.id, k.rm_version FROM licenses l JOIN license_keys k ON k.id = l.license_key_id WHERE l.id = $1::uuid")
            .bind(&id)
            .fetch_one(&c.pool)
            .await
            .unwrap();
    let header = |event: &str| {
        let headers = captured[event].1.headers().clone().expect("headers");
        match headers.inner().get(cls_bus::READ_MODEL_TARGETS_HEADER) {
            Some(lapin::types::AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
            other => panic!("{event}: no read-model targets header: {other:?}"),
        }
    };
    assert_eq!(header("license.resumed"), format!("key:{key_id}:{version}"));
    assert!(header("license.suspended").starts_with(&format!("key:{key_id}:")));

    // The workers had made both changes visible, so the projector saw from Redis alone that the
    // originals needed nothing (once each).
    let (suspended, resumed) = (projected("license.suspended", "already_visible"), projected("license.resumed", "already_visible"));
    eventually(Duration::from_secs(15), "the projector handled the original events", || async {
        c.metric("query", &suspended).await >= 1.0 && c.metric("query", &resumed).await >= 1.0
    })
    .await;
    let (s0, r0) = (c.metric("query", &suspended).await, c.metric("query", &resumed).await);
    let redis = c.redis().await;
    let (key_doc_before, license_doc_before) =
        (redis_get(&redis, &key_doc(&c, &key)).await, redis_get(&redis, &format!("{}:rm:lic:{id}", c.namespace)).await);
    assert!(key_doc_before.as_deref().is_some_and(|d| d.contains("\"valid\"")), "{key_doc_before:?}");

    // Replay: duplicates of both, in the wrong order, the older (suspended) last.
    let publisher = c.amqp().await;
    publisher.1.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let order = ["license.suspended", "license.resumed", "license.suspended", "license.resumed", "license.suspended", "license.suspended"];
    for routing_key in order {
        let (data, properties) = &captured[routing_key];
        let confirm = publisher
            .1
            .basic_publish(c.topology().events_exchange().into(), routing_key.into(), BasicPublishOptions::default(), data, properties.clone())
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack(), "the broker took the replayed event");
    }
    eventually(Duration::from_secs(15), "the projector handled every replayed event", || async {
        c.metric("query", &suspended).await >= s0 + 4.0 && c.metric("query", &resumed).await >= r0 + 2.0
    })
    .await;
    assert_eq!((c.metric("query", &suspended).await, c.metric("query", &resumed).await), (s0 + 4.0, r0 + 2.0));
    for event in ["license.suspended", "license.resumed"] {
        assert_eq!(c.metric("query", &projected(event, "dead_lettered")).await, 0.0, "{event}");
    }
    let v = validate(&c, &key, Some("pro"), None).await;
    assert_eq!((v["valid"].as_bool(), v["code"].as_str()), (Some(true), Some("VALID")), "{v}");
    assert_eq!(get_license(&c, &api, &id).await["status"], "valid");
    // Byte for byte the same documents: every replay was a no-op.
    assert_eq!(redis_get(&redis, &key_doc(&c, &key)).await, key_doc_before);
    assert_eq!(redis_get(&redis, &format!("{}:rm:lic:{id}", c.namespace)).await, license_doc_before);

    // The compare-and-set, through the read model's own API.
    let read_model = cls_readmodel::ReadModel::new(redis.clone(), &c.namespace);
    let epoch = redis_get(&redis, &format!("{}:rm:epoch", c.namespace)).await.expect("the namespace has an epoch");
    let write = |key: &str, version: i64, json: &str| cls_readmodel::Write { key: key.to_owned(), version, json: json.to_owned(), ttl_ms: 0 };

    let scratch = format!("{}:rm:test-cas", c.namespace);
    assert_eq!(read_model.write(&epoch, &[write(&scratch, 5, "\"five\"")]).await.unwrap(), 1);
    assert_eq!(read_model.write(&epoch, &[write(&scratch, 3, "\"three\"")]).await.unwrap(), 0, "lower version");
    assert_eq!(read_model.write(&epoch, &[write(&scratch, 5, "\"other five\"")]).await.unwrap(), 0, "equal version");
    assert_eq!(redis_get(&redis, &scratch).await.as_deref(), Some("5|\"five\""));
    let stale = read_model.write("not-the-epoch", &[write(&scratch, 9, "\"nine\"")]).await;
    assert!(matches!(stale, Err(cls_readmodel::RefreshError::EpochMoved)), "{stale:?}");
    assert_eq!(redis_get(&redis, &scratch).await.as_deref(), Some("5|\"five\""));
    assert_eq!(read_model.write(&epoch, &[write(&scratch, 6, "\"six\"")]).await.unwrap(), 1, "higher version");
    assert_eq!(redis_get(&redis, &scratch).await.as_deref(), Some("6|\"six\""));

    // On the real validation document: a suspended copy at a lower or equal version changes
    // nothing validation sees; at a higher version it does (so it is the document read).
    let current = key_doc_before.expect("checked above");
    let (version, doc) = current.split_once('|').expect("<version>|<json>");
    let version: i64 = version.parse().expect("a version");
    let mut tampered: Value = serde_json::from_str(doc).expect("JSON");
    for l in tampered["licenses"].as_array_mut().expect("licenses") {
        l["status"] = json!("suspended");
    }
    let tampered = tampered.to_string();
    let doc_key = key_doc(&c, &key);
    for v in [version - 1, version] {
        assert_eq!(read_model.write(&epoch, &[write(&doc_key, v, &tampered)]).await.unwrap(), 0, "version {v} of {version}");
        assert_eq!(redis_get(&redis, &doc_key).await.as_deref(), Some(current.as_str()));
        assert_eq!(validate(&c, &key, Some("pro"), None).await["code"], "VALID", "after writing version {v} of {version}");
    }
    assert_eq!(read_model.write(&epoch, &[write(&doc_key, version + 1, &tampered)]).await.unwrap(), 1);
    assert_eq!(validate(&c, &key, Some("pro"), None).await["code"], "SUSPENDED", "the higher version is what validation reads");

    // A writer that read the epoch before a wipe of the namespace cannot land after it, even on
    // an empty key; and the wipe leaves validation to Postgres, which has the truth.
    wipe_namespace(&redis, &c.namespace).await;
    let late = read_model.write(&epoch, &[write(&doc_key, version + 2, &tampered)]).await;
    assert!(matches!(late, Err(cls_readmodel::RefreshError::EpochMoved)), "{late:?}");
    assert_eq!(redis_get(&redis, &doc_key).await, None);
    assert_eq!(validate(&c, &key, Some("pro"), None).await["code"], "VALID");
    let _ = fred::prelude::ClientLike::quit(&redis).await;
    c.stop().await;
}

// ---------------------------------------------------------------- 3. namespace wiped

/// Phases of writes (suspend / resume) and concurrent validations, with the namespace's Redis
/// keys deleted again and again during both: every answer is the state the last acknowledged
/// write left, and afterwards the documents come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_model_wiped_namespace_mid_run_never_answers_stale() {
    const PHASES: usize = 8;
    const READERS: usize = 4;
    const READS: usize = 12;
    const NOISE: usize = 4;
    let c = TestCluster::spawn().await;
    let (_, api) = brand_with_product(&c, "wiped", "WP", 3).await;
    let (id, _, key) = provision(&c, &api, "wiped@customer.io").await;
    let (_, _, other_key) = provision(&c, &api, "untouched@customer.io").await;
    let brand_auth = [("x-api-key", api.as_str())];
    let redis = c.redis().await;
    let accepted = AtomicUsize::new(0);
    let wipes = AtomicUsize::new(0);
    let wiped_keys = AtomicUsize::new(0);
    let wipe = {
        let (redis, namespace, wipes, wiped_keys) = (&redis, c.namespace.as_str(), &wipes, &wiped_keys);
        move || async move {
            wiped_keys.fetch_add(wipe_namespace(redis, namespace).await, Ordering::Relaxed);
            wipes.fetch_add(1, Ordering::Relaxed);
        }
    };

    // Unchecked readers for the whole run, writes included: their misses fill the read model
    // from snapshots that may be older than a write committing meanwhile, which the version and
    // epoch checks must keep from landing over the write's documents.
    let done = AtomicBool::new(false);
    let noise = async {
        let loops = (0..NOISE).map(|_| async {
            let mut n = 0;
            while !done.load(Ordering::Relaxed) {
                let v = validate(&c, &key, Some("pro"), None).await;
                assert!(v["code"] == "VALID" || v["code"] == "SUSPENDED", "{v}");
                let status = get_license(&c, &api, &id).await["status"].clone();
                assert!(status == "valid" || status == "suspended", "{status}");
                n += 2;
            }
            n
        });
        join_all(loops.collect()).await.into_iter().sum::<usize>()
    };
    let checked = async {
        let mut answers = 0;
        for phase in 0..PHASES {
            let (action, code, status) = if phase.is_multiple_of(2) { ("suspend", "SUSPENDED", "suspended") } else { ("resume", "VALID", "valid") };
            // The write, with wipes around and during it.
            let write = async {
                let r = c.post(&format!("/v1/licenses/{id}/{action}"), &brand_auth, &json!({})).await;
                written(&c, r, StatusCode::OK, &brand_auth, &accepted, &format!("phase {phase}, {action}")).await
            };
            let wiping = async {
                for _ in 0..3 {
                    wipe().await;
                    tokio::task::yield_now().await;
                }
            };
            let (body, ()) = futures_lite::future::zip(write, wiping).await;
            assert_eq!(body["status"], status, "phase {phase}");

            // Readers against the acknowledged state, with a wiper among them.
            let readers = (0..READERS).map(|reader| {
                let key = key.clone();
                let other_key = other_key.clone();
                let (c, id, api) = (&c, &id, &api);
                Box::pin(async move {
                    for read in 0..READS {
                        let what = format!("phase {phase} ({action}), reader {reader}, read {read}");
                        let v = validate(c, &key, Some("pro"), None).await;
                        assert_eq!(v["code"], code, "{what}: {v}");
                        let v = validate(c, &other_key, None, None).await;
                        assert_eq!(v["code"], "VALID", "{what}, the other key: {v}");
                        assert_eq!(get_license(c, api, id).await["status"], status, "{what}");
                    }
                    READS * 3
                }) as Pin<Box<dyn Future<Output = usize> + '_>>
            });
            let wiper = Box::pin(async {
                for _ in 0..4 {
                    wipe().await;
                    // Let some reads through between wipes.
                    for _ in 0..3 {
                        let v = validate(&c, &key, Some("pro"), None).await;
                        assert_eq!(v["code"], code, "phase {phase} ({action}), wiper: {v}");
                    }
                }
                3 * 4_usize
            }) as Pin<Box<dyn Future<Output = usize> + '_>>;
            answers += join_all(readers.chain(std::iter::once(wiper)).collect()).await.into_iter().sum::<usize>();
        }
        done.store(true, Ordering::Relaxed);
        answers
    };
    let (answers, unchecked) = futures_lite::future::zip(checked, noise).await;
    let (wipes, wiped_keys, accepted) = (wipes.load(Ordering::Relaxed), wiped_keys.load(Ordering::Relaxed), accepted.load(Ordering::Relaxed));
    let [_, misses, fallbacks] = counters(&c, "license_key").await;
    println!("{answers} answers checked (and {unchecked} unchecked ones), {wipes} wipes removed {wiped_keys} keys, {misses} misses, {accepted} writes answered 202");
    assert_eq!(wipes, PHASES * 7);
    assert!(wiped_keys > 0, "the wipes removed documents");
    // Each of the wiper's wipes among the readers is followed by a validation of the key: at
    // least one read missed (went to Postgres) after each.
    assert!(misses >= (PHASES * 4) as f64, "the wipes sent reads to Postgres: {misses} misses");
    assert_eq!(fallbacks, 0.0, "Redis stayed up");

    // Refilled. The query service caches the epoch it writes under, so its first fill after a
    // wipe is refused (the epoch it holds is gone) and resets the cache; the next fill stores
    // the document. So: the document is back after at most two validations.
    wipe_namespace(&redis, &c.namespace).await;
    assert_eq!(redis_get(&redis, &key_doc(&c, &key)).await, None);
    let last = if PHASES.is_multiple_of(2) { "VALID" } else { "SUSPENDED" };
    assert_eq!(validate(&c, &key, Some("pro"), None).await["code"], last);
    let after_one = redis_get(&redis, &key_doc(&c, &key)).await;
    assert_eq!(validate(&c, &key, Some("pro"), None).await["code"], last);
    let refilled = redis_get(&redis, &key_doc(&c, &key)).await.expect("two validations refilled the key's document");
    println!("refilled after the first validation: {}", after_one.is_some());
    assert!(refilled.contains(if last == "VALID" { "\"valid\"" } else { "\"suspended\"" }), "{refilled}");
    let [hits, ..] = counters(&c, "license_key").await;
    assert_eq!(validate(&c, &key, Some("pro"), None).await["code"], last);
    assert_eq!(counters(&c, "license_key").await[0], hits + 1.0, "the next validation is a hit");
    let _ = fred::prelude::ClientLike::quit(&redis).await;
    c.stop().await;
}

// ---------------------------------------------------------------- 4. counters

/// Warm keys are answered by Redis alone (1,000 hits, no miss, no fallback); 1,000 unknown
/// keys miss once each and are hits the second time (negative entries).
#[tokio::test]
async fn read_model_warm_and_unknown_keys_are_hits() {
    const KEYS: usize = 8;
    const BATCH: usize = 32;
    let c = TestCluster::spawn().await;
    let (_, api) = brand_with_product(&c, "counted", "CT", 3).await;
    let mut keys = Vec::new();
    for n in 0..KEYS {
        keys.push(provision(&c, &api, &format!("c{n}@counted.io")).await.2);
    }
    for key in &keys {
        assert_eq!(validate(&c, key, Some("pro"), None).await["code"], "VALID");
    }

    let before = counters(&c, "license_key").await;
    let warm: Vec<_> = (0..1000)
        .map(|i| {
            let key = &keys[i % KEYS];
            let c = &c;
            async move { validate(c, key, if i % 2 == 0 { Some("pro") } else { None }, None).await["code"].as_str().map(str::to_owned) }
        })
        .collect();
    let codes = in_batches(warm, BATCH).await;
    assert!(codes.iter().all(|code| code.as_deref() == Some("VALID")), "{codes:?}");
    let after = counters(&c, "license_key").await;
    println!("warm keys: hits/misses/fallbacks {before:?} -> {after:?}");
    assert_eq!(after[0] - before[0], 1000.0, "hits");
    assert_eq!(after[1] - before[1], 0.0, "misses");
    assert_eq!(after[2] - before[2], 0.0, "fallbacks");

    let unknown: Vec<String> = (0..1000).map(|_| random_key()).collect();
    let round = |n: usize| {
        let c = &c;
        let unknown = &unknown;
        async move {
            let futures: Vec<_> = unknown
                .iter()
                .map(|key| async move { validate(c, key, None, None).await["code"].as_str().map(str::to_owned) })
                .collect();
            let codes = in_batches(futures, BATCH).await;
            assert!(codes.iter().all(|code| code.as_deref() == Some("LICENSE_KEY_NOT_FOUND")), "round {n}: {codes:?}");
        }
    };
    let before = counters(&c, "license_key").await;
    round(1).await;
    let first = counters(&c, "license_key").await;
    round(2).await;
    let second = counters(&c, "license_key").await;
    println!("unknown keys: hits/misses/fallbacks {before:?} -> {first:?} -> {second:?}");
    assert_eq!(first[1] - before[1], 1000.0, "each unknown key misses once");
    assert_eq!(first[2] - before[2], 0.0, "no fallback with Redis up");
    assert_eq!((second[1] - first[1]) + (second[2] - first[2]), 0.0, "the second round reaches Postgres zero times");
    assert_eq!(second[0] - first[0], 1000.0, "the second round is all hits");
    assert_eq!(c.metric("query", &series("shed", "license_key")).await, 0.0);

    // A key remembered as unknown that a brand then imports validates right after the 201: the
    // import's documents replace the negative entry.
    let imported = &unknown[0];
    let r = c
        .post("/v1/licenses", &[("x-api-key", &api)], &json!({"customer_email": "imported@counted.io", "products": [{"code": "pro"}], "import_key": imported}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "import: {}", text(&r));
    assert_eq!(validate(&c, imported, Some("pro"), None).await["code"], "VALID", "the negative entry no longer answers");
    c.stop().await;
}

// ---------------------------------------------------------------- 5. Redis unavailable

/// Every service pointed at a Redis that is not there: the cache is unhealthy but the query
/// service is ready, writes answer 202 and their operations read `succeeded`, reads (API keys,
/// validation, a license) come from Postgres and show every write.
#[tokio::test]
async fn read_model_redis_unavailable_falls_back_to_postgres() {
    let c = TestCluster::spawn_with(Options { redis_url: Some("redis://127.0.0.1:1".into()), ..Default::default() }).await;
    let health = c.ops_get("query", "/health/cache").await;
    println!("/health/cache: {} {}", health.status, text(&health));
    assert_eq!(health.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(text(&health).contains("Redis"), "a reason: {}", text(&health));
    assert_eq!(c.ops_get("query", "/ready").await.status, StatusCode::OK, "the cache is degradable");

    let accepted = AtomicUsize::new(0);
    let admin = [("x-admin-token", ADMIN_TOKEN)];
    let r = c.admin_post("/v1/admin/brands", &json!({"slug": "noredis", "name": "No Redis", "key_prefix": "NR"})).await;
    let brand = written(&c, r, StatusCode::CREATED, &admin, &accepted, "create brand").await;
    let brand_id = brand["id"].as_str().unwrap().to_owned();
    let r = c.admin_post(&format!("/v1/admin/brands/{brand_id}/api-keys"), &json!({"name": "k", "scopes": ["licenses:write"]})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "an API key cannot be made visible in Redis: {}", text(&r));
    let created = written(&c, r, StatusCode::CREATED, &admin, &accepted, "create API key").await;
    let api = created["api_key"].as_str().expect("the secret, from the operation").to_owned();
    let brand_auth = [("x-api-key", api.as_str())];

    let fallbacks_before = [c.metric("query", &series("fallbacks", "license_key")).await, c.metric("query", &series("fallbacks", "license")).await];
    let r = c.post("/v1/products", &brand_auth, &json!({"code": "pro", "name": "Pro", "default_seat_limit": 3})).await;
    written(&c, r, StatusCode::CREATED, &brand_auth, &accepted, "create product").await;
    let r = c.post("/v1/licenses", &brand_auth, &json!({"customer_email": "down@customer.io", "products": [{"code": "pro"}]})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "provisioning cannot be made visible in Redis: {}", text(&r));
    let provisioned = written(&c, r, StatusCode::CREATED, &brand_auth, &accepted, "provision").await;
    let key = provisioned["license_key"]["key"].as_str().unwrap().to_owned();
    let id = provisioned["licenses"][0]["id"].as_str().unwrap().to_owned();

    let v = validate(&c, &key, Some("pro"), None).await;
    assert_eq!((v["valid"].as_bool(), v["code"].as_str()), (Some(true), Some("VALID")), "{v}");
    assert_eq!(get_license(&c, &api, &id).await["status"], "valid");

    let r = c.post(&format!("/v1/licenses/{id}/suspend"), &brand_auth, &json!({})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", text(&r));
    assert_eq!(written(&c, r, StatusCode::OK, &brand_auth, &accepted, "suspend").await["status"], "suspended");
    assert_eq!(validate(&c, &key, Some("pro"), None).await["code"], "SUSPENDED");
    assert_eq!(get_license(&c, &api, &id).await["status"], "suspended");

    let r = c.post("/v1/activations", &[], &json!({"license_key": key, "product": "pro", "instance_id": "host-1"})).await;
    written(&c, r, StatusCode::CONFLICT, &[], &accepted, "activate a suspended license").await;
    assert_eq!(validate(&c, &key, Some("pro"), Some("host-1")).await["code"], "SUSPENDED");

    let fallbacks_after = [c.metric("query", &series("fallbacks", "license_key")).await, c.metric("query", &series("fallbacks", "license")).await];
    println!("fallbacks (license_key, license): {fallbacks_before:?} -> {fallbacks_after:?}; {} writes answered 202", accepted.load(Ordering::Relaxed));
    assert!(fallbacks_after[0] >= fallbacks_before[0] + 3.0, "validations came from Postgres");
    assert!(fallbacks_after[1] >= fallbacks_before[1] + 2.0, "licenses came from Postgres");
    assert!(c.metric("query", &series("fallbacks", "api_key")).await >= 1.0, "API keys came from Postgres");
    assert_eq!(c.metric("query", &series("hits", "license_key")).await, 0.0);
    assert_eq!(c.metric("query", &series("misses", "license_key")).await, 0.0);
    assert!(accepted.load(Ordering::Relaxed) >= 3, "API key, provisioning and suspension answered 202");
    assert_eq!(c.ops_get("query", "/health/cache").await.status, StatusCode::SERVICE_UNAVAILABLE);
    c.stop().await;
}

// ---------------------------------------------------------------- 6. a license by id

/// `GET /v1/licenses/{id}` from the read model: another brand's license reads exactly like an
/// unknown id (404), and an unknown id is a miss once, then a hit on its negative entry.
#[tokio::test]
async fn read_model_license_by_id_tenancy_and_negative_entries() {
    let c = TestCluster::spawn().await;
    let (_, owner) = brand_with_product(&c, "owner", "OW", 3).await;
    let (_, intruder) = c.brand_with_key("intruder", "IN").await;
    let (id, _, _) = provision(&c, &owner, "owned@customer.io").await;
    let get = |api: &str, id: &str| {
        let path = format!("/v1/licenses/{id}");
        let api = api.to_owned();
        let c = &c;
        async move { c.get(&path, &[("x-api-key", &api)]).await }
    };
    let stable = |r: &TestResponse| {
        let b = r.json();
        (r.status, b["type"].clone(), b["title"].clone(), b["code"].clone(), b["detail"].clone())
    };
    // Warm the intruder's API key so only license documents move below.
    let unknown = uuid::Uuid::now_v7().to_string();
    let _ = get(&intruder, &uuid::Uuid::now_v7().to_string()).await;

    let before = counters(&c, "license").await;
    let foreign = get(&intruder, &id).await;
    assert_eq!(foreign.status, StatusCode::NOT_FOUND, "{}", text(&foreign));
    let after_foreign = counters(&c, "license").await;
    assert_eq!(after_foreign[0], before[0] + 1.0, "the owner's license was read from the read model");
    assert_eq!(after_foreign[1], before[1], "no miss");

    let first = get(&intruder, &unknown).await;
    let after_first = counters(&c, "license").await;
    let second = get(&intruder, &unknown).await;
    let after_second = counters(&c, "license").await;
    println!("license hits/misses/fallbacks: {before:?} -> {after_foreign:?} -> {after_first:?} -> {after_second:?}");
    assert_eq!(stable(&first), stable(&foreign), "another brand's license answers like an unknown id");
    assert_eq!(stable(&second), stable(&foreign));
    assert_eq!((after_first[0] - after_foreign[0], after_first[1] - after_foreign[1]), (0.0, 1.0), "an unknown id misses first");
    assert_eq!((after_second[0] - after_first[0], after_second[1] - after_first[1]), (1.0, 0.0), "then hits its negative entry");
    assert_eq!(after_second[2], before[2], "no fallback");

    let redis = c.redis().await;
    let negative = redis_get(&redis, &format!("{}:rm:lic:{unknown}", c.namespace)).await.expect("a negative entry");
    assert!(negative.starts_with("0|"), "{negative}");
    let ttl: i64 = fred::prelude::KeysInterface::pttl(&redis, format!("{}:rm:lic:{unknown}", c.namespace)).await.unwrap();
    assert!(ttl > 0 && ttl <= 60_000, "a negative entry expires: {ttl}");
    let _ = fred::prelude::ClientLike::quit(&redis).await;

    // The owner still reads it.
    assert_eq!(get_license(&c, &owner, &id).await["id"], id.as_str());
    c.stop().await;
}

/// `CLS_QUERY_SOCKET`: the gateway's reads reach the query service over a Unix socket (the
/// gateway's query URL names a port nobody listens on), and the socket's file goes with the
/// service.
#[tokio::test]
async fn reads_reach_the_query_service_over_its_unix_socket() {
    let c = TestCluster::spawn_with(Options { query_over_socket: true, ..Options::default() }).await;
    let socket = c.settings.query_socket.clone().expect("the cluster's socket");
    assert!(socket.exists(), "{} is bound", socket.display());
    c.wait_ready().await;

    let (_, api) = brand_with_product(&c, "socketed", "SK", 2).await;
    let (id, _, key) = provision(&c, &api, "socket@customer.io").await;
    let r = c.post("/v1/activations", &[], &json!({"license_key": key, "product": "pro", "instance_id": "host-1"})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", text(&r));
    let v = validate(&c, &key, Some("pro"), Some("host-1")).await;
    assert_eq!((v["valid"].as_bool(), v["code"].as_str()), (Some(true), Some("VALID")), "{v}");
    let license = get_license(&c, &api, &id).await;
    assert_eq!(license["seats_used"], 1, "{license}");
    assert_eq!(c.admin_get("/v1/admin/brands").await.status, StatusCode::OK);

    c.stop().await;
    assert!(!socket.exists(), "{} is removed when the query service stops", socket.display());
}
