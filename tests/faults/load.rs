//! Mixed load the way real clients send it: brand systems provisioning with idempotency keys,
//! end-user products activating seats and validating. Writes are retried with the same
//! Idempotency-Key on 503, and a 202 is followed through its operation, so every write either
//! ends applied or the test fails; anything but 2xx, 202 or 503 fails it at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use cls_tests::{TestCluster, eventually};
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

/// What the clients saw.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// License ids of every acknowledged provisioning.
    pub licenses: Vec<String>,
    /// Activation ids of every acknowledged activation.
    pub activations: Vec<String>,
    pub validations: usize,
    /// Writes first answered 202 (each then read `succeeded`).
    pub accepted: usize,
    /// 503 answers (each retried).
    pub unavailable: usize,
}

pub struct Load {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    tasks: Vec<JoinHandle<Tally>>,
}

/// One write until it is applied: 2xx, or 202 then its operation `succeeded`; 503 is retried
/// with the same idempotency key. Returns the final body and whether it went through 202.
async fn write(c: &TestCluster, path: &str, headers: &[(&str, &str)], body: &Value, idempotency_key: &str, tally: &mut Tally) -> Value {
    let mut all = headers.to_vec();
    all.push(("idempotency-key", idempotency_key));
    all.push(("content-type", "application/json"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        let r = c.request(Method::POST, path, &all, Some(serde_json::to_vec(body).unwrap())).await;
        match r.status {
            s if s.is_success() && s != StatusCode::ACCEPTED => return r.json(),
            StatusCode::ACCEPTED => {
                tally.accepted += 1;
                let operation = format!("/v1/operations/{}", r.json()["operation_id"].as_str().unwrap());
                let result = std::sync::Mutex::new(Value::Null);
                eventually(Duration::from_secs(180), &format!("{path}: operation {operation} succeeded"), || async {
                    let o = c.get(&operation, headers).await;
                    if o.status != StatusCode::OK {
                        // 503 while a dependency restarts; 404 cannot happen for a registered 202.
                        assert_eq!(o.status, StatusCode::SERVICE_UNAVAILABLE, "{operation}: {:?}", String::from_utf8_lossy(&o.body));
                        assert!(o.header("retry-after").is_some(), "a read's 503 carries Retry-After too");
                        return false;
                    }
                    let o = o.json();
                    assert_ne!(o["status"], "failed", "{operation}: {o}");
                    if o["status"] == "succeeded" {
                        *result.lock().unwrap() = o["response"]["body"].clone();
                    }
                    o["status"] == "succeeded"
                })
                .await;
                return result.into_inner().unwrap();
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                tally.unavailable += 1;
                assert!(r.header("retry-after").is_some(), "503 carries Retry-After");
                assert!(tokio::time::Instant::now() < deadline, "{path}: still 503 after 180 s");
                // A client's pause before retrying (what Retry-After asks for), not a wait for a condition.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => panic!("{path}: unexpected {other}: {:?}", String::from_utf8_lossy(&r.body)),
        }
    }
}

impl Load {
    /// Prepares a brand (product `app`, unlimited seats) and starts the clients.
    pub async fn start(c: Arc<TestCluster>, tag: &str) -> Load {
        let (_, brand) = c.brand_with_key(tag, &tag[..2].to_uppercase()).await;
        let r = c.post("/v1/products", &[("x-api-key", &brand)], &json!({"code": "app", "name": "App", "default_seat_limit": null})).await;
        assert_eq!(r.status, StatusCode::CREATED);
        let r = c.post("/v1/licenses", &[("x-api-key", &brand)], &json!({"customer_email": "seats@x.io", "products": [{"code": "app"}]})).await;
        assert_eq!(r.status, StatusCode::CREATED);
        let seats_key = r.json()["license_key"]["key"].as_str().unwrap().to_owned();

        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for client in 0..2 {
            let (c, brand, stop, done) = (c.clone(), brand.clone(), stop.clone(), done.clone());
            tasks.push(tokio::spawn(async move {
                let mut tally = Tally::default();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let body = json!({"customer_email": format!("c{client}-{n}@x.io"), "products": [{"code": "app"}]});
                    let key = format!("provision-{client}-{n}");
                    let answer = write(&c, "/v1/licenses", &[("x-api-key", &brand)], &body, &key, &mut tally).await;
                    tally.licenses.push(answer["licenses"][0]["id"].as_str().expect("a license").to_owned());
                    done.fetch_add(1, Ordering::Relaxed);
                    n += 1;
                }
                tally
            }));
        }
        for client in 0..2 {
            let (c, seats_key, stop, done) = (c.clone(), seats_key.clone(), stop.clone(), done.clone());
            tasks.push(tokio::spawn(async move {
                let mut tally = Tally::default();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let body = json!({"license_key": seats_key, "product": "app", "instance_id": format!("host-{client}-{n}")});
                    let answer = write(&c, "/v1/activations", &[], &body, &format!("activate-{client}-{n}"), &mut tally).await;
                    tally.activations.push(answer["activation"]["id"].as_str().expect("an activation").to_owned());
                    done.fetch_add(1, Ordering::Relaxed);
                    n += 1;
                }
                tally
            }));
        }
        for _ in 0..2 {
            let (c, seats_key, stop, done) = (c.clone(), seats_key.clone(), stop.clone(), done.clone());
            tasks.push(tokio::spawn(async move {
                let mut tally = Tally::default();
                while !stop.load(Ordering::Relaxed) {
                    let r = c.post("/v1/license-keys/validate", &[], &json!({"license_key": seats_key, "product": "app"})).await;
                    match r.status {
                        StatusCode::OK => assert_eq!(r.json()["code"], "VALID"),
                        StatusCode::SERVICE_UNAVAILABLE => tally.unavailable += 1,
                        other => panic!("validate: unexpected {other}: {:?}", String::from_utf8_lossy(&r.body)),
                    }
                    tally.validations += 1;
                    done.fetch_add(1, Ordering::Relaxed);
                    if r.status == StatusCode::SERVICE_UNAVAILABLE {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
                tally
            }));
        }
        Load { stop, done, tasks }
    }

    /// Waits until the clients completed `n` more operations.
    pub async fn progress(&self, n: usize) {
        let target = self.done.load(Ordering::Relaxed) + n;
        eventually(Duration::from_secs(180), "clients make progress", || async { self.done.load(Ordering::Relaxed) >= target }).await;
    }

    /// Stops the clients (each finishes its write) and adds up what they saw.
    pub async fn finish(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = Tally::default();
        for task in self.tasks {
            let t = task.await.expect("a client failed");
            total.licenses.extend(t.licenses);
            total.activations.extend(t.activations);
            total.validations += t.validations;
            total.accepted += t.accepted;
            total.unavailable += t.unavailable;
        }
        println!(
            "{} provisionings, {} activations, {} validations; {} answered 202, {} answered 503",
            total.licenses.len(),
            total.activations.len(),
            total.validations,
            total.accepted,
            total.unavailable
        );
        total
    }
}

/// A durable queue bound to `<ns>.events` for the whole test; read at the end (it survives a
/// broker restart, so what was published during the fault is still there).
pub struct EventTap {
    queue: String,
}

impl EventTap {
    pub async fn bind(c: &mut TestCluster, routing_keys: &[&str]) -> EventTap {
        let queue = format!("{}.fault-tap", c.namespace);
        c.track_queue(queue.clone());
        let (conn, ch) = c.amqp().await;
        let durable = lapin::options::QueueDeclareOptions { durable: true, ..Default::default() };
        ch.queue_declare(queue.clone().into(), durable, Default::default()).await.unwrap();
        for key in routing_keys {
            ch.queue_bind(queue.clone().into(), c.topology().events_exchange().into(), (*key).into(), Default::default(), Default::default())
                .await
                .unwrap();
        }
        let _ = conn.close(200, "bound".into()).await;
        EventTap { queue }
    }

    /// Reads events until `enough` holds for the distinct ones (by event id), or fails after a
    /// deadline; returns `(event id, type, aggregate id)` per distinct event.
    pub async fn read_until(&self, c: &TestCluster, enough: impl Fn(&[(String, String, String)]) -> bool) -> Vec<(String, String, String)> {
        use futures_lite::StreamExt;
        let (_conn, ch) = c.amqp().await;
        let mut consumer = ch.basic_consume(self.queue.clone().into(), "".into(), Default::default(), Default::default()).await.unwrap();
        let mut seen = std::collections::HashMap::new();
        let mut events: Vec<(String, String, String)> = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while !enough(&events) {
            let next = tokio::time::timeout_at(deadline, consumer.next()).await;
            let delivery = next.expect("every event arrives").expect("stream open").expect("delivery");
            delivery.ack(Default::default()).await.unwrap();
            let envelope: cls_contracts::EventEnvelope = cls_contracts::decode(&delivery.data).expect("an event");
            // At-least-once: a duplicate delivery carries the same id.
            if seen.insert(envelope.id.clone(), ()).is_none() {
                events.push((envelope.id, envelope.event.event_type().to_owned(), envelope.aggregate_id));
            }
        }
        events
    }
}

/// After the clients stopped: every acknowledged write is in Postgres exactly once, every one of
/// them produced its event, and nothing was dead-lettered.
pub async fn verify(c: &TestCluster, tap: &EventTap, tally: &Tally) {
    let mut licenses = tally.licenses.clone();
    licenses.sort();
    licenses.dedup();
    assert_eq!(licenses.len(), tally.licenses.len(), "two idempotency keys answered with the same license");
    // Every license in the database is one a client was told about (plus the seats license).
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM licenses").fetch_one(&c.pool).await.unwrap();
    assert_eq!(stored as usize, tally.licenses.len() + 1, "licenses in the database vs. acknowledged provisionings");
    let active: i64 = sqlx::query_scalar("SELECT count(*) FROM activations WHERE deactivated_at IS NULL").fetch_one(&c.pool).await.unwrap();
    assert_eq!(active as usize, tally.activations.len(), "activations in the database vs. acknowledged activations");

    let want: std::collections::HashSet<&str> = tally.licenses.iter().map(String::as_str).collect();
    let events = tap
        .read_until(c, |events| {
            let provisioned = events.iter().filter(|(_, t, a)| t == "license.provisioned" && want.contains(a.as_str())).count();
            let activated = events.iter().filter(|(_, t, _)| t == "activation.created").count();
            provisioned == want.len() && activated == tally.activations.len()
        })
        .await;
    let provisioned = events.iter().filter(|(_, t, _)| t == "license.provisioned").count();
    assert_eq!(provisioned, tally.licenses.len() + 1, "one license.provisioned per license, no more");

    let (_conn, ch) = c.amqp().await;
    for queue in c.topology().dead_letter_queues() {
        let passive = lapin::options::QueueDeclareOptions { passive: true, ..Default::default() };
        let depth = ch.queue_declare(queue.clone().into(), passive, Default::default()).await.unwrap().message_count();
        assert_eq!(depth, 0, "{queue} holds dead letters");
    }
}

/// Every in-process service answers `/ready` again (no restart by hand) before `deadline`.
pub async fn ready_again(c: &TestCluster, deadline: Duration) {
    for service in ["gateway", "query"] {
        eventually(deadline, &format!("{service} ready"), || async {
            let r = c.ops_get(service, "/ready").await;
            if r.status != StatusCode::OK {
                println!("{service} /ready: {}", String::from_utf8_lossy(&r.body));
            }
            r.status == StatusCode::OK
        })
        .await;
    }
}
