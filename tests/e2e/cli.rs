//! The `cls` binary as a newcomer uses it: `cls up` runs the whole cluster (readiness, replica
//! counts, a dead child restarted, a clean stop), `cls brand create` gives a brand and an API key in one
//! command, and the key creates a product.

use std::time::Duration;

use cls_runtime::{Secret, ServiceKind, Settings};
use cls_tests::{ADMIN_TOKEN, LOCAL_DATABASE, binary_path, eventually};
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A free port below the kernel's ephemeral range (32768+), where the other tests' port-0
/// listeners and client connections never land, so nothing takes it between this check and
/// `cls up` binding it.
fn free_port(from: u16, to: u16) -> u16 {
    use rand::RngExt;
    loop {
        let port = rand::rng().random_range(from..to);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Direct children of a process (spawned from any of its threads), with their command lines.
fn children(pid: u32) -> Vec<(u32, String)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.flatten().collect::<Vec<_>>()).unwrap_or_default();
    tasks
        .iter()
        .flat_map(|t| std::fs::read_to_string(t.path().join("children")).unwrap_or_default().split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .filter_map(|p| p.parse::<u32>().ok())
        .map(|p| (p, std::fs::read_to_string(format!("/proc/{p}/cmdline")).unwrap_or_default().replace('\0', " ")))
        .collect()
}

/// If the test ends early: stops `cls up` with SIGTERM (so its children are not orphaned) and
/// removes the run's database and namespace.
struct StopOnDrop(u32, Settings);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if kill(Pid::from_raw(self.0 as i32), Signal::SIGTERM).is_ok() {
            let until = std::time::Instant::now() + Duration::from_secs(15);
            while std::path::Path::new(&format!("/proc/{}", self.0)).exists() && std::time::Instant::now() < until {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let settings = self.1.clone();
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
                rt.block_on(cls_tests::cleanup(&settings, &[]));
            }
        })
        .join();
    }
}

/// `cls up` started on free ports in a namespace and database of its own, without secrets (it
/// generates them); stopped and cleaned up by `guard` if the test ends early.
struct Up {
    child: tokio::process::Child,
    pid: u32,
    http_addr: String,
    settings: Settings,
    guard: StopOnDrop,
}

fn start_up(extra_args: &[&str]) -> Up {
    let suffix = uuid::Uuid::now_v7().simple().to_string();
    let namespace = format!("cli{}", &suffix[20..]);
    let database_url = format!("{LOCAL_DATABASE}/cls_cli_{}", &suffix[20..]);
    let http_addr = format!("127.0.0.1:{}", free_port(10_000, 20_000));
    let query_addr = format!("127.0.0.1:{}", free_port(10_000, 20_000));
    // cls up takes the base port and the dozen above it for ops listeners.
    let ops_base = free_port(20_000, 30_000);
    let env = [
        ("CLS_DATABASE_URL", database_url.as_str()),
        ("CLS_NAMESPACE", namespace.as_str()),
        ("CLS_HTTP_ADDR", http_addr.as_str()),
        ("CLS_QUERY_ADDR", query_addr.as_str()),
        ("CLS_ADMIN_TOKEN", ADMIN_TOKEN),
        ("CLS_DB_POOL_SIZE", "3"),
        ("CLS_LOG", "warn"),
    ];
    let child = tokio::process::Command::new(binary_path("cls"))
        .args(["up", "--ops-base-port", &ops_base.to_string()])
        .args(extra_args)
        .envs(env)
        .env_remove("CLS_SECRET_KEY")
        .env_remove("CLS_INTERNAL_TOKEN")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("cls up starts (run `cargo build --bins` first)");
    let pid = child.id().unwrap();
    let mut settings = Settings::local(ServiceKind::Gateway, Secret::new("unused-secret-key-000"), Secret::new("unused-internal-token"));
    settings.database_url = database_url;
    settings.namespace = namespace;
    let guard = StopOnDrop(pid, settings.clone());
    Up { child, pid, http_addr, settings, guard }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cls_up_brand_create_and_a_product() {
    let Up { child: mut up, pid, http_addr, settings, guard } = start_up(&["--replicas", "activations=3"]);

    let http = Client::builder(TokioExecutor::new()).build_http::<Full<bytes::Bytes>>();
    let get = |path: String| {
        let http = http.clone();
        async move {
            let req = Request::get(path).body(Full::default()).unwrap();
            match http.request(req).await {
                Ok(r) => r.status(),
                Err(_) => StatusCode::SERVICE_UNAVAILABLE,
            }
        }
    };
    let ready = format!("http://{http_addr}/ready");
    eventually(Duration::from_secs(90), "cls up ready", || get(ready.clone()).map_ok()).await;

    // Replica counts per worker kind.
    let count = |binary: &str| children(pid).iter().filter(|(_, cmd)| cmd.contains(binary)).count();
    assert_eq!(count("cls-activations-worker"), 3);
    assert_eq!(count("cls-brands-worker"), 1);

    // A worker that dies is restarted and the cluster is ready again.
    let (worker, _) = children(pid).into_iter().find(|(_, cmd)| cmd.contains("cls-brands-worker")).expect("a brands worker child");
    kill(Pid::from_raw(worker as i32), Signal::SIGKILL).unwrap();
    eventually(Duration::from_secs(30), "worker restarted", || async {
        children(pid).iter().any(|(p, cmd)| cmd.contains("cls-brands-worker") && *p != worker)
    })
    .await;
    eventually(Duration::from_secs(30), "ready again", || get(ready.clone()).map_ok()).await;

    // A brand and an API key in one command.
    let out = tokio::process::Command::new(binary_path("cls"))
        .args(["brand", "create", "--slug", "newcomer", "--name", "Newcomer", "--key-prefix", "NC", "--json", "--url", &format!("http://{http_addr}")])
        .env("CLS_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "brand create: {}", String::from_utf8_lossy(&out.stderr));
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).expect("--json prints JSON");
    let api_key = created["api_key"].as_str().expect("an API key").to_owned();

    let req = Request::post(format!("http://{http_addr}/v1/products"))
        .header("x-api-key", &api_key)
        .header("content-type", "application/json")
        .body(Full::new(bytes::Bytes::from_static(br#"{"code":"first","name":"First"}"#)))
        .unwrap();
    let r = http.request(req).await.unwrap();
    let status = r.status();
    let body = r.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(status, StatusCode::CREATED, "{body:?}");

    // SIGTERM stops everything cleanly within the shutdown bound.
    kill(Pid::from_raw(pid as i32), Signal::SIGTERM).unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(15), up.wait()).await.expect("cls up stopped within the bound").unwrap();
    assert!(exit.success(), "cls up exit: {exit:?}");
    std::mem::forget(guard);
    cls_tests::cleanup(&settings, &[]).await;
}

/// Turns a status future into "is it 200".
trait MapOk {
    async fn map_ok(self) -> bool;
}

impl<F: Future<Output = StatusCode>> MapOk for F {
    async fn map_ok(self) -> bool {
        self.await == StatusCode::OK
    }
}

/// A counter of the query service's /metrics (0 when it has no sample yet).
async fn counter(c: &cls_tests::TestCluster, sample: &str) -> f64 {
    let text = String::from_utf8(c.ops_get("query", "/metrics").await.body.to_vec()).unwrap();
    text.lines().find_map(|l| l.strip_prefix(sample).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
}

#[tokio::test]
async fn cls_read_model_rebuild_refills_a_wiped_namespace_while_serving() {
    use fred::prelude::*;
    let c = cls_tests::TestCluster::spawn().await;
    let (_, brand) = c.brand_with_key("rebuilt", "RB").await;
    c.post("/v1/products", &[("x-api-key", &brand)], &serde_json::json!({"code": "app", "name": "App"})).await;
    let r = c.post("/v1/licenses", &[("x-api-key", &brand)], &serde_json::json!({"customer_email": "a@b.io", "products": [{"code": "app"}]})).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let key = r.json()["license_key"]["key"].as_str().unwrap().to_owned();
    let hash = cls_domain::LicenseKey::parse(&key).unwrap().hash();
    let doc = format!("{}:rm:key:{}", c.namespace, hash.as_str());

    let redis = cls_readmodel::connect_redis(&c.settings.redis_url).await.unwrap();
    let exists = |redis: fred::clients::Client, doc: String| async move { redis.exists::<i64, _>(doc).await.unwrap() == 1 };
    assert!(exists(redis.clone(), doc.clone()).await, "the provisioning wrote the key's document (read-your-writes)");

    let rebuild = |wipe: bool| {
        let mut cmd = tokio::process::Command::new(binary_path("cls"));
        cmd.envs(c.env()).arg("read-model").arg("rebuild");
        if wipe {
            cmd.arg("--wipe");
        }
        async move { cmd.output().await.expect("cls runs") }
    };
    let out = rebuild(true).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("1 license keys, 1 API keys"), "{stdout}");
    assert!(stdout.contains("deleted "), "{stdout}");
    assert!(exists(redis.clone(), doc.clone()).await, "the rebuild wrote the key's document again");

    // Served from Redis: no miss.
    let misses = counter(&c, "cls_read_model_misses_total{doc=\"license_key\"}").await;
    let v = c.post("/v1/license-keys/validate", &[], &serde_json::json!({"license_key": key, "product": "app"})).await.json();
    assert_eq!(v["code"], "VALID");
    assert_eq!(counter(&c, "cls_read_model_misses_total{doc=\"license_key\"}").await, misses);

    // Without --wipe it rewrites nothing older and changes no answer.
    let out = rebuild(false).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v = c.post("/v1/license-keys/validate", &[], &serde_json::json!({"license_key": key, "product": "app"})).await.json();
    assert_eq!(v["code"], "VALID");
    let _ = redis.quit().await;
    c.stop().await;
}

/// Whether a process has ended (gone, or a zombie its new parent has not reaped yet).
fn ended(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in brackets, which may itself hold spaces.
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cls_up_killed_outright_takes_its_children_with_it() {
    let Up { child: mut up, pid, guard: _guard, .. } = start_up(&[]);

    // Every child started: the query service, one worker per kind, the gateway.
    eventually(Duration::from_secs(90), "cls up started its five children", || async { children(pid).len() == 5 }).await;
    let started: Vec<u32> = children(pid).into_iter().map(|(p, _)| p).collect();

    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    up.wait().await.unwrap();
    eventually(Duration::from_secs(30), "the orphaned children stopped", || async { started.iter().all(|p| ended(*p)) }).await;
}
