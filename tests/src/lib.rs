//! The end-to-end test harness: [`TestCluster::spawn`] runs the real services (query service,
//! brands worker, gateway) in-process on port 0 against the real PostgreSQL, RabbitMQ and Redis
//! of the machine, isolated per test: its own database, its own AMQP namespace, its own Redis key
//! prefix. [`TestCluster::stop`] tears all three down (quorum queues cannot be auto-delete, so a
//! forgotten namespace would pile up on the broker). Services that a test must SIGKILL run as
//! the built binaries instead ([`TestCluster::spawn_worker_process`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use cls_bus::Topology;
pub use cls_contracts::Module;
use cls_runtime::{CancellationToken, Secret, ServiceKind, Settings};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::task::JoinHandle;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
pub const LOCAL_DATABASE: &str = "postgres://postgres@127.0.0.1:5432";

/// How a test cluster is started.
#[derive(Clone)]
pub struct Options {
    /// In-process brands worker replicas (0: the test starts its own).
    pub brands_workers: usize,
    /// In-process licenses worker replicas (0: the test starts its own).
    pub licenses_workers: usize,
    /// In-process activations worker replicas (0: the test starts its own).
    pub activations_workers: usize,
    pub reply_timeout: Duration,
    /// The Redis URL every service of the cluster uses (`None`: the local Redis). Teardown
    /// still removes the namespace's keys from the local Redis.
    pub redis_url: Option<String>,
    /// `(CLS_RATE_API_KEY, CLS_RATE_IP, CLS_RATE_LICENSE_KEY)`; off (0) unless a test is about
    /// rate limits, since tests send thousands of requests from one address.
    pub rate_limits: (u32, u32, u32),
    /// `CLS_TRUSTED_PROXIES` of the gateway (none unless a test is about a proxy in front).
    pub trusted_proxies: Vec<cls_runtime::IpRange>,
    /// The gateway reaches the query service over a Unix socket only (`CLS_QUERY_SOCKET`): its
    /// `CLS_QUERY_URL` names a port nobody listens on, so every read that answers went through
    /// the socket.
    pub query_over_socket: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            brands_workers: 1,
            licenses_workers: 1,
            activations_workers: 1,
            reply_timeout: Duration::from_secs(5),
            redis_url: None,
            rate_limits: (0, 0, 0),
            trusted_proxies: Vec::new(),
            query_over_socket: false,
        }
    }
}

/// A running cluster for one test.
pub struct TestCluster {
    pub namespace: String,
    pub database_url: String,
    /// `http://127.0.0.1:<port>` of the gateway.
    pub gateway: String,
    pub query_addr: std::net::SocketAddr,
    /// Ops listeners by service name (`gateway`, `query`, `brands-worker` when in-process).
    pub ops: HashMap<String, std::net::SocketAddr>,
    /// Settings template of this cluster (service-specific fields are overridden per service).
    pub settings: Settings,
    /// A pool on the test's database, for checks the API does not expose.
    pub pool: cls_store::PgPool,
    http: Client<HttpConnector, Full<Bytes>>,
    services: Vec<(CancellationToken, JoinHandle<anyhow::Result<()>>)>,
    workers: Vec<(CancellationToken, JoinHandle<anyhow::Result<()>>)>,
    extra_queues: Vec<String>,
    /// The Redis teardown removes the namespace's keys from (the local one, even when the
    /// services were pointed elsewhere).
    cleanup_redis_url: String,
    stopped: bool,
}

/// A response, fully read.
#[derive(Debug)]
pub struct TestResponse {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl TestResponse {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

fn random_suffix() -> String {
    use rand::Rng;
    let mut bytes = [0u8; 6];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

impl TestCluster {
    pub async fn spawn() -> TestCluster {
        Self::spawn_with(Options::default()).await
    }

    pub async fn spawn_with(options: Options) -> TestCluster {
        cls_runtime::telemetry::init(cls_runtime::settings::LogFormat::Text);
        let suffix = random_suffix();
        let namespace = format!("t{suffix}");
        let database_url = format!("{LOCAL_DATABASE}/cls_test_{suffix}");

        let mut settings = Settings::local(ServiceKind::Gateway, Secret::new("test-secret-key-0123456789"), Secret::new("test-internal-token-0123456789"));
        settings.database_url = database_url.clone();
        settings.namespace = namespace.clone();
        settings.admin_token = Some(Secret::new(ADMIN_TOKEN));
        settings.reply_timeout = options.reply_timeout;
        settings.db_pool_size = 4;
        settings.worker_concurrency = 8;
        settings.shutdown_timeout = Duration::from_secs(5);
        let any_port: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
        settings.http_addr = any_port;
        settings.query_addr = any_port;
        settings.ops_addr = any_port;
        (settings.rate_api_key, settings.rate_ip, settings.rate_license_key) = options.rate_limits;
        settings.trusted_proxies = options.trusted_proxies.clone();
        let cleanup_redis_url = settings.redis_url.clone();
        if let Some(url) = &options.redis_url {
            settings.redis_url = url.clone();
        }

        cls_store::pool::create_database_if_missing(&database_url).await.expect("create test database");
        let pool = cls_store::pool::connect_now(&database_url, 4, "cls-tests", cls_store::pool::Planning::Default).await.expect("connect test database");
        cls_store::pool::migrate(&pool).await.expect("migrate test database");

        let mut services = Vec::new();
        if options.query_over_socket {
            settings.query_socket = Some(std::env::temp_dir().join(format!("cls-{namespace}-query.sock")));
        }
        let query = cls_query::App::build(settings.clone()).await.expect("build query service");
        let query_addr = query.addr();
        let mut ops = HashMap::from([("query".to_owned(), query.ops_addr())]);
        settings.query_url = format!("http://{query_addr}");
        services.push(spawn_service(|t| query.run_until_stopped(t)));

        let mut gateway_settings = settings.clone();
        if options.query_over_socket {
            // The discard port: nothing listens on it here.
            gateway_settings.query_url = "http://127.0.0.1:9".into();
        }
        let gateway = cls_gateway::App::build(gateway_settings).await.expect("build gateway");
        let gateway_url = format!("http://{}", gateway.addr());
        ops.insert("gateway".to_owned(), gateway.ops_addr());
        services.push(spawn_service(|t| gateway.run_until_stopped(t)));

        let http = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        let mut cluster = TestCluster {
            namespace,
            database_url,
            gateway: gateway_url,
            query_addr,
            ops,
            settings,
            pool,
            http,
            services,
            workers: Vec::new(),
            extra_queues: Vec::new(),
            cleanup_redis_url,
            stopped: false,
        };
        for _ in 0..options.brands_workers {
            cluster.start_worker(Module::Brands).await;
        }
        for _ in 0..options.licenses_workers {
            cluster.start_worker(Module::Licenses).await;
        }
        for _ in 0..options.activations_workers {
            cluster.start_worker(Module::Activations).await;
        }
        if options.brands_workers > 0 && options.licenses_workers > 0 && options.activations_workers > 0 {
            cluster.wait_ready().await;
        }
        cluster
    }

    /// Starts an in-process worker replica of a module; its ops listener is `<module>-worker`
    /// for the first replica, `<module>-worker-<n>` for the next ones.
    pub async fn start_worker(&mut self, module: Module) {
        let settings = self.settings.clone();
        let base = format!("{}-worker", module.as_str());
        let name = match self.ops.keys().filter(|k| k.starts_with(&base)).count() {
            0 => base,
            n => format!("{base}-{n}"),
        };
        let service = match module {
            Module::Brands => {
                let worker = cls_brands_worker::build(settings).await.expect("build brands worker");
                self.ops.insert(name, worker.ops_addr());
                spawn_service(|t| worker.run_until_stopped(t))
            }
            Module::Licenses => {
                let worker = cls_licenses_worker::build(settings).await.expect("build licenses worker");
                self.ops.insert(name, worker.ops_addr());
                spawn_service(|t| cls_licenses_worker::run(worker, t))
            }
            Module::Activations => {
                let worker = cls_activations_worker::build(settings).await.expect("build activations worker");
                self.ops.insert(name, worker.ops_addr());
                spawn_service(|t| worker.run_until_stopped(t))
            }
        };
        self.workers.push(service);
    }

    /// Stops the in-process worker replicas gracefully.
    pub async fn stop_workers(&mut self) {
        for (token, handle) in self.workers.drain(..) {
            token.cancel();
            handle.await.expect("worker task").expect("worker stopped cleanly");
        }
    }

    /// Waits until the gateway's `/ready` is 200.
    pub async fn wait_ready(&self) {
        eventually(Duration::from_secs(30), "gateway ready", || async {
            self.get("/ready", &[]).await.status == StatusCode::OK
        })
        .await;
    }

    /// The environment a service binary needs to join this cluster.
    pub fn env(&self) -> HashMap<&'static str, String> {
        let s = &self.settings;
        let mut env = HashMap::from([
            ("CLS_DATABASE_URL", s.database_url.clone()),
            ("CLS_REDIS_URL", s.redis_url.clone()),
            ("CLS_AMQP_URL", s.amqp_url.clone()),
            ("CLS_NAMESPACE", s.namespace.clone()),
            ("CLS_OPS_ADDR", "127.0.0.1:0".to_owned()),
            ("CLS_DB_POOL_SIZE", "4".to_owned()),
            ("CLS_WORKER_CONCURRENCY", "8".to_owned()),
            ("CLS_LOG", "warn".to_owned()),
            ("CLS_RATE_API_KEY", s.rate_api_key.to_string()),
            ("CLS_RATE_IP", s.rate_ip.to_string()),
            ("CLS_RATE_LICENSE_KEY", s.rate_license_key.to_string()),
        ]);
        for (name, secret) in [("CLS_SECRET_KEY", &s.secret_key), ("CLS_INTERNAL_TOKEN", &s.internal_token)] {
            if let Some(secret) = secret {
                env.insert(name, secret.expose().to_owned());
            }
        }
        if let Some(previous) = &s.secret_key_previous {
            env.insert("CLS_SECRET_KEY_PREVIOUS", previous.expose().to_owned());
        }
        env
    }

    /// Starts a service binary (e.g. `cls-brands-worker`) as a child process of the test.
    pub fn spawn_worker_process(&self, binary: &str) -> tokio::process::Child {
        let path = binary_path(binary);
        tokio::process::Command::new(&path)
            .envs(self.env())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e} (run `cargo build --bins` first)", path.display()))
    }

    pub async fn request(&self, method: Method, path: &str, headers: &[(&str, &str)], body: Option<Vec<u8>>) -> TestResponse {
        let mut req = Request::builder().method(method).uri(format!("{}{}", self.gateway, path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::from(body.unwrap_or_default()))).unwrap();
        // SPEC §3: never a hang. A request the gateway leaves unanswered fails the test here
        // instead of holding the whole run.
        let response = tokio::time::timeout(Duration::from_secs(60), self.http.request(req))
            .await
            .unwrap_or_else(|_| panic!("the gateway left a request unanswered for 60 s: {path}"))
            .expect("gateway answers");
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.expect("body").to_bytes();
        TestResponse { status, headers, body }
    }

    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> TestResponse {
        self.request(Method::GET, path, headers, None).await
    }

    /// `GET` on a service's ops listener.
    pub async fn ops_get(&self, service: &str, path: &str) -> TestResponse {
        let addr = self.ops[service];
        let req = Request::builder().uri(format!("http://{addr}{path}")).body(Full::new(Bytes::new())).unwrap();
        let response = self.http.request(req).await.expect("ops listener answers");
        let (status, headers) = (response.status(), response.headers().clone());
        let body = response.into_body().collect().await.expect("body").to_bytes();
        TestResponse { status, headers, body }
    }

    /// POSTs JSON with the given extra headers.
    pub async fn post(&self, path: &str, headers: &[(&str, &str)], body: &Value) -> TestResponse {
        let mut all = vec![("content-type", "application/json")];
        all.extend_from_slice(headers);
        self.request(Method::POST, path, &all, Some(serde_json::to_vec(body).unwrap())).await
    }

    pub async fn admin_post(&self, path: &str, body: &Value) -> TestResponse {
        self.post(path, &[("x-admin-token", ADMIN_TOKEN)], body).await
    }

    pub async fn admin_get(&self, path: &str) -> TestResponse {
        self.get(path, &[("x-admin-token", ADMIN_TOKEN)]).await
    }

    /// Creates a brand and returns its JSON.
    pub async fn create_brand(&self, slug: &str, key_prefix: &str) -> Value {
        let r = self.admin_post("/v1/admin/brands", &serde_json::json!({"slug": slug, "name": slug, "key_prefix": key_prefix})).await;
        assert_eq!(r.status, StatusCode::CREATED, "create brand: {:?}", String::from_utf8_lossy(&r.body));
        r.json()
    }

    /// Creates an API key for a brand and returns the secret.
    pub async fn create_api_key(&self, brand_id: &str, scopes: &[&str]) -> String {
        let r = self
            .admin_post(&format!("/v1/admin/brands/{brand_id}/api-keys"), &serde_json::json!({"name": "test", "scopes": scopes}))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "create api key: {:?}", String::from_utf8_lossy(&r.body));
        r.json()["api_key"].as_str().unwrap().to_owned()
    }

    /// A brand with a `licenses:write` API key: (brand id, key).
    pub async fn brand_with_key(&self, slug: &str, key_prefix: &str) -> (String, String) {
        let brand = self.create_brand(slug, key_prefix).await;
        let id = brand["id"].as_str().unwrap().to_owned();
        let key = self.create_api_key(&id, &["licenses:write"]).await;
        (id, key)
    }

    /// A channel on a fresh connection to the broker (for tests that talk AMQP directly).
    pub async fn amqp(&self) -> (lapin::Connection, lapin::Channel) {
        let conn = cls_bus::connect(&self.settings.amqp_url, "cls-tests").await.expect("amqp");
        let ch = conn.create_channel().await.expect("channel");
        (conn, ch)
    }

    pub fn topology(&self) -> Topology {
        Topology::new(self.namespace.clone())
    }

    /// A test subscriber to `<ns>.events`, as another internal system would be: a durable
    /// queue `<ns>.<name>` bound with each routing key (removed at teardown), consumed on `ch`.
    /// Events published before the first read wait in the queue.
    pub async fn subscribe(&mut self, ch: &lapin::Channel, name: &str, routing_keys: &[&str]) -> lapin::Consumer {
        let queue = format!("{}.{name}", self.namespace);
        self.track_queue(queue.clone());
        subscribe_queue(ch, &queue, &self.topology(), routing_keys).await
    }

    /// Stops every service and removes the database, the AMQP namespace and the Redis keys.
    pub async fn stop(mut self) {
        self.stop_workers().await;
        for (token, handle) in self.services.drain(..).rev() {
            token.cancel();
            let _ = handle.await;
        }
        self.pool.close().await;
        cleanup(&self.cleanup_settings(), &self.extra_queues).await;
        self.stopped = true;
    }

    /// The settings teardown works with: the cluster's, with the local Redis.
    fn cleanup_settings(&self) -> Settings {
        let mut settings = self.settings.clone();
        settings.redis_url = self.cleanup_redis_url.clone();
        settings
    }

    /// A client of the local Redis (where the namespace's keys live unless `Options::redis_url`
    /// pointed the services elsewhere).
    pub async fn redis(&self) -> fred::clients::Client {
        let client = cls_query::connect_redis(&self.cleanup_redis_url).await.expect("redis client");
        use fred::prelude::*;
        client.wait_for_connect().await.expect("redis connects");
        client
    }

    /// The value of one series of a service's `/metrics` (OpenMetrics text), e.g.
    /// `cls_read_model_hits_total{doc="license_key"}`; labels in the order the service prints
    /// them. A series not printed yet (a counter never incremented) reads 0.
    pub async fn metric(&self, service: &str, series: &str) -> f64 {
        let r = self.ops_get(service, "/metrics").await;
        assert_eq!(r.status, StatusCode::OK, "{service} /metrics");
        let text = String::from_utf8_lossy(&r.body);
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (name, rest) = l.split_once(' ')?;
                (name == series).then(|| rest.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()))?
            })
            .unwrap_or(0.0)
    }

    /// Remembers a queue the test declared, so teardown deletes it with the namespace.
    pub fn track_queue(&mut self, name: String) {
        self.extra_queues.push(name);
    }
}

impl Drop for TestCluster {
    /// A test that panicked still removes what it created (from another thread, since the
    /// test's runtime may be going away).
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        let settings = self.cleanup_settings();
        let extra = self.extra_queues.clone();
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
                rt.block_on(cleanup(&settings, &extra));
            }
        })
        .join();
    }
}

/// Removes a namespace's queues and exchanges, its database and its Redis keys.
pub async fn cleanup(settings: &Settings, extra_queues: &[String]) {
    if let Ok(conn) = cls_bus::connect(&settings.amqp_url, "cls-tests-cleanup").await {
        if let Ok(ch) = conn.create_channel().await
            && let Err(error) = Topology::new(settings.namespace.clone()).delete(&ch, extra_queues).await
        {
            eprintln!("cleanup: deleting namespace {} failed: {error}", settings.namespace);
        }
        let _ = conn.close(200, "bye".into()).await;
    }
    if let Err(error) = cls_store::pool::drop_database(&settings.database_url).await {
        eprintln!("cleanup: dropping the test database failed: {error}");
    }
    if let Ok(redis) = cls_query::connect_redis(&settings.redis_url).await {
        use fred::prelude::*;
        let pattern = format!("{}:*", settings.namespace);
        let keys: Vec<String> = redis
            .custom(fred::types::CustomCommand::new_static("KEYS", fred::types::ClusterHash::FirstKey, false), vec![pattern])
            .await
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: Result<i64, _> = redis.del(keys).await;
        }
        let _ = redis.quit().await;
    }
}

fn spawn_service<F, Fut>(run: F) -> (CancellationToken, JoinHandle<anyhow::Result<()>>)
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let token = CancellationToken::new();
    let handle = tokio::spawn(run(token.clone()));
    (token, handle)
}

/// Path of a workspace binary next to the test executable (`target/<profile>/<name>`).
pub fn binary_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test-binary>
    exe.parent().and_then(|deps| deps.parent()).expect("target dir").join(name)
}

/// Declares the durable queue `queue`, binds it to the events exchange with each routing key and
/// consumes it on `ch` (for tests whose cluster is not a [`TestCluster`]; the caller removes it).
pub async fn subscribe_queue(ch: &lapin::Channel, queue: &str, topology: &Topology, routing_keys: &[&str]) -> lapin::Consumer {
    use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
    ch.queue_declare(queue.into(), QueueDeclareOptions { durable: true, ..Default::default() }, Default::default()).await.expect("declare the subscriber's queue");
    for key in routing_keys {
        ch.queue_bind(queue.into(), topology.events_exchange().into(), (*key).into(), QueueBindOptions::default(), Default::default())
            .await
            .expect("bind the subscriber's queue");
    }
    ch.basic_consume(queue.into(), "".into(), BasicConsumeOptions::default(), Default::default()).await.expect("consume the subscriber's queue")
}

/// A subscriber's next delivery, acked; panics naming `what` if none arrives within 15 s.
pub async fn next_delivery(consumer: &mut lapin::Consumer, what: &str) -> lapin::message::Delivery {
    use futures_lite::StreamExt;
    let delivery = tokio::time::timeout(Duration::from_secs(15), consumer.next())
        .await
        .unwrap_or_else(|_| panic!("timed out after 15 s waiting for: {what}"))
        .expect("the subscriber's stream is open")
        .expect("a delivery");
    delivery.ack(lapin::options::BasicAckOptions::default()).await.expect("ack");
    delivery
}

/// Polls `condition` until it holds, or panics after `deadline` naming what was awaited.
pub async fn eventually<F, Fut>(deadline: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if condition().await {
            return;
        }
        if tokio::time::Instant::now() > until {
            panic!("timed out after {deadline:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
