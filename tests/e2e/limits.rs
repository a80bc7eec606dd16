//! Rate limits (SPEC §3): per API key on brand routes, per client IP and per license key on
//! product routes; 429 RATE_LIMITED with Retry-After and RateLimit-* headers; shared through
//! Redis by every gateway replica; fail open (and counted) when Redis is unavailable.

use std::time::Duration;

use bytes::Bytes;
use cls_runtime::CancellationToken;
use cls_tests::{Options, TestCluster, eventually};
use http_body_util::Full;
use hyper::StatusCode;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::json;

#[tokio::test]
async fn each_limit_counts_its_own_bucket_and_refuses_with_429() {
    let c = TestCluster::spawn_with(Options { rate_limits: (5, 7, 3), ..Options::default() }).await;
    let (_, brand) = c.brand_with_key("limited", "LI").await;
    let other_brand = c.brand_with_key("unlimited", "UN").await.1;

    // Per API key: the fifth request passes with 0 left, the sixth is refused.
    for n in 1..=5u32 {
        let r = c.get("/v1/products", &[("x-api-key", &brand)]).await;
        assert_eq!(r.status, StatusCode::OK, "request {n}");
        assert_eq!(r.header("ratelimit-limit"), Some("5"));
        assert_eq!(r.header("ratelimit-remaining"), Some((5 - n).to_string().as_str()));
        let reset: u64 = r.header("ratelimit-reset").unwrap().parse().unwrap();
        assert!((1..=60).contains(&reset), "reset {reset}");
    }
    let r = c.get("/v1/products", &[("x-api-key", &brand)]).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.json()["code"], "RATE_LIMITED");
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry));
    // Another API key has its own bucket.
    assert_eq!(c.get("/v1/products", &[("x-api-key", &other_brand)]).await.status, StatusCode::OK);

    // Per license key (3/min) on product routes: validation and activation share the bucket.
    c.post("/v1/products", &[("x-api-key", &other_brand)], &json!({"code": "app", "name": "App"})).await;
    let mut keys = Vec::new();
    for email in ["a@b.io", "c@d.io"] {
        let r = c.post("/v1/licenses", &[("x-api-key", &other_brand)], &json!({"customer_email": email, "products": [{"code": "app"}]})).await;
        assert_eq!(r.status, StatusCode::CREATED);
        keys.push(r.json()["license_key"]["key"].as_str().unwrap().to_owned());
    }
    let cluster = &c;
    let validate = |key: &str| {
        let body = json!({"license_key": key});
        async move { cluster.post("/v1/license-keys/validate", &[], &body).await }
    };
    assert_eq!(validate(&keys[0]).await.status, StatusCode::OK);
    let r = c.post("/v1/activations", &[], &json!({"license_key": keys[0], "product": "app", "instance_id": "host-1"})).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.header("ratelimit-remaining"), Some("1"), "the license key's bucket is the tighter one");
    assert_eq!(validate(&keys[0]).await.status, StatusCode::OK);
    let r = validate(&keys[0]).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(r.header("retry-after").is_some());
    // The other key still validates (product requests from this address so far: 4 of 7, the
    // refused one included).
    assert_eq!(validate(&keys[1]).await.status, StatusCode::OK);
    assert_eq!(validate(&keys[1]).await.status, StatusCode::OK);
    assert_eq!(validate(&keys[1]).await.status, StatusCode::OK);
    // Per IP: the eighth product request from this address is refused whatever its key.
    let r = validate("NOPE-NOT-A-KEY").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{:?}", r.headers);
    assert_eq!(r.header("ratelimit-limit"), Some("7"));

    // The buckets reach Redis under the namespace (the gateway sends its counts every 100 ms).
    let redis = c.redis().await;
    eventually(Duration::from_secs(10), "the API-key and IP buckets in Redis", || async {
        let counted = rate_limit_keys(&redis, &c.namespace, "*").await;
        counted.iter().any(|k| k.contains(":rl:api_key:")) && counted.iter().any(|k| k.contains(":rl:ip:"))
    })
    .await;
    c.stop().await;
}

/// Behind a trusted proxy (HAProxy in compose appends the client's address to
/// `X-Forwarded-For`), each client has its own per-IP bucket; what a client writes into the
/// header itself does not move it to another one.
#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_ip_bucket() {
    let loopback = cls_runtime::IpRange::parse("127.0.0.1").unwrap();
    let c = TestCluster::spawn_with(Options { rate_limits: (0, 2, 0), trusted_proxies: vec![loopback], ..Options::default() }).await;
    let validate = |forwarded: &'static str| {
        let cluster = &c;
        async move {
            let r = cluster.post("/v1/license-keys/validate", &[("x-forwarded-for", forwarded)], &json!({"license_key": "NOPE-NOT-A-KEY"})).await;
            (r.status, r.header("ratelimit-remaining").map(str::to_owned))
        }
    };
    // The proxy appended 203.0.113.7: two requests pass, the third is refused.
    assert_eq!(validate("203.0.113.7").await, (StatusCode::OK, Some("1".into())));
    assert_eq!(validate("203.0.113.7").await, (StatusCode::OK, Some("0".into())));
    assert_eq!(validate("203.0.113.7").await.0, StatusCode::TOO_MANY_REQUESTS);
    // Another client behind the same proxy has its own bucket...
    assert_eq!(validate("203.0.113.8").await, (StatusCode::OK, Some("1".into())));
    // ...and the first one cannot escape its bucket by writing another address before its own.
    assert_eq!(validate("198.51.100.1, 203.0.113.7").await.0, StatusCode::TOO_MANY_REQUESTS);
    c.stop().await;
}

/// The namespace's rate-limit counters of one kind (`*` for all).
async fn rate_limit_keys(redis: &fred::clients::Client, namespace: &str, kind: &str) -> Vec<String> {
    use fred::prelude::*;
    redis
        .custom(fred::types::CustomCommand::new_static("KEYS", fred::types::ClusterHash::FirstKey, false), vec![format!("{namespace}:rl:{kind}:*")])
        .await
        .unwrap()
}

/// The one API-key counter of the namespace (0 before it reaches Redis).
async fn api_key_counter(redis: &fred::clients::Client, namespace: &str) -> u64 {
    use fred::prelude::*;
    match rate_limit_keys(redis, namespace, "api_key").await.as_slice() {
        [] => 0,
        [key] => redis.get::<Option<u64>, _>(key).await.unwrap().unwrap_or(0),
        more => panic!("one API key was used, counters: {more:?}"),
    }
}

/// A second gateway replica of a test cluster: same settings, namespace, Redis and query service.
struct Replica {
    url: String,
    http: Client<HttpConnector, Full<Bytes>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Replica {
    async fn start(c: &TestCluster) -> Replica {
        let app = cls_gateway::App::build(c.settings.clone()).await.expect("build a second gateway");
        let url = format!("http://{}", app.addr());
        let stop = CancellationToken::new();
        let task = tokio::spawn(app.run_until_stopped(stop.clone()));
        Replica { url, http: Client::builder(TokioExecutor::new()).build(HttpConnector::new()), stop, task }
    }

    /// `GET path` with an API key: the status and `RateLimit-Remaining`.
    async fn get(&self, path: &str, api_key: &str) -> (StatusCode, Option<String>) {
        let request = hyper::Request::get(format!("{}{path}", self.url)).header("x-api-key", api_key).body(Full::new(Bytes::new())).unwrap();
        let response = self.http.request(request).await.expect("the second gateway answers");
        let remaining = response.headers().get("ratelimit-remaining").and_then(|v| v.to_str().ok()).map(str::to_owned);
        (response.status(), remaining)
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.expect("the second gateway's task").expect("the second gateway stops cleanly");
    }
}

#[tokio::test]
async fn replicas_share_each_limit_through_redis() {
    let c = TestCluster::spawn_with(Options { rate_limits: (30, 0, 0), ..Options::default() }).await;
    let (_, brand) = c.brand_with_key("shared", "SH").await;
    let second = Replica::start(&c).await;
    let redis = c.redis().await;

    // 20 of the 30 through the first gateway; it counts alone so far, so exactly.
    for n in 1..=20u32 {
        let r = c.get("/v1/products", &[("x-api-key", &brand)]).await;
        assert_eq!(r.status, StatusCode::OK, "request {n}");
        assert_eq!(r.header("ratelimit-remaining"), Some((30 - n).to_string().as_str()));
    }
    eventually(Duration::from_secs(10), "the first gateway's 20 in Redis", || async { api_key_counter(&redis, &c.namespace).await == 20 }).await;

    // The second gateway reads the shared total back with its first flush, so it admits only
    // the 10 left. (Its first request is decided before that flush; it is within the 10 here.)
    // Waiting for each request to reach Redis keeps the second gateway's view current.
    let mut admitted = 0u64;
    loop {
        let (status, _) = second.get("/v1/products", &brand).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            break;
        }
        assert_eq!(status, StatusCode::OK);
        admitted += 1;
        assert!(admitted <= 30, "the second gateway never refused: the limit is not shared");
        eventually(Duration::from_secs(10), "the second gateway's request in Redis", || async {
            api_key_counter(&redis, &c.namespace).await >= 20 + admitted
        })
        .await;
    }
    assert_eq!(admitted, 10, "the second gateway admits what the first left");

    // The first gateway learns of the second's requests with its own next flush: it may admit
    // one more on the total it last read (the bounded overshoot), then refuses.
    eventually(Duration::from_secs(10), "the first gateway refuses too", || async {
        c.get("/v1/products", &[("x-api-key", &brand)]).await.status == StatusCode::TOO_MANY_REQUESTS
    })
    .await;
    second.stop().await;
    c.stop().await;
}

#[tokio::test]
async fn without_redis_requests_pass_and_the_fail_open_is_counted() {
    let c = TestCluster::spawn_with(Options { rate_limits: (1, 1, 1), redis_url: Some("redis://127.0.0.1:1".into()), ..Options::default() }).await;
    // Without Redis an API key cannot be made visible at once: 202, then its operation.
    let brand = c.create_brand("failopen", "FO").await;
    let r = c.admin_post(&format!("/v1/admin/brands/{}/api-keys", brand["id"].as_str().unwrap()), &json!({"name": "k"})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let operation = format!("/v1/operations/{}", r.json()["operation_id"].as_str().unwrap());
    let found = std::cell::RefCell::new(String::new());
    eventually(Duration::from_secs(10), "the API key's operation succeeded", || async {
        let o = c.admin_get(&operation).await.json();
        if o["status"] == "succeeded" {
            *found.borrow_mut() = o["response"]["body"]["api_key"].as_str().unwrap().to_owned();
        }
        o["status"] == "succeeded"
    })
    .await;
    let brand = found.into_inner();
    for _ in 0..3 {
        let r = c.get("/v1/products", &[("x-api-key", &brand)]).await;
        assert_eq!(r.status, StatusCode::OK, "a limit of 1/min is not enforced without its store");
        assert!(r.header("ratelimit-limit").is_none());
    }
    assert!(c.metric("gateway", "cls_rate_limit_fail_open_total").await >= 3.0);
    let health = c.ops_get("gateway", "/health/cache").await;
    assert_eq!(health.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(String::from_utf8_lossy(&health.body).contains("fail open"));
    assert_eq!(c.ops_get("gateway", "/ready").await.status, StatusCode::OK, "the gateway still serves");
    c.stop().await;
}
