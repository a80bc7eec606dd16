//! `cls up` (SPEC §7): the whole cluster, locally, in the foreground.
//!
//! It migrates, declares the topology, then starts the sibling binaries found next to `cls`
//! (what `cargo build --bins` produces) as supervised children: the query service first (once
//! its ops `/health` answers), then every worker replica, then the gateway, and waits for the
//! gateway's public `/ready`. A child that exits on its own is restarted with backoff. On
//! SIGINT/SIGTERM the children are stopped in the reverse order of dependence (gateway, workers,
//! query service) under one shutdown deadline (`CLS_SHUTDOWN_TIMEOUT_MS`), after which stragglers
//! are killed; a group stopped after a straggler used up the deadline still gets a short grace.
//!
//! Children run in their own process group, so a Ctrl-C in the terminal reaches only `cls`,
//! which then stops them in order. If `cls` is killed outright (SIGKILL, the OOM killer), each
//! child sees within a second that it was orphaned (`CLS_SUPERVISOR_PID`) and stops as on
//! SIGTERM. They inherit this process's environment and its stdout/stderr, except the secrets a
//! child does not use (the gateway gets no `CLS_SECRET_KEY`, the workers no
//! `CLS_INTERNAL_TOKEN`); each gets its own `CLS_OPS_ADDR`. Unless `CLS_QUERY_SOCKET` is set, they also
//! get one (see [`default_query_socket`]): the gateway then reaches the query service over a Unix
//! socket instead of loopback TCP.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use cls_contracts::Module;
use cls_runtime::{CancellationToken, Secret, Settings};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rand::Rng;
use tokio::process::{Child, Command};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::http::{self, Client};
use crate::setup;

/// A worker kind `cls up` runs.
#[derive(Debug)]
pub struct WorkerKind {
    /// The module whose command queue it consumes; its name is the `--replicas` key.
    pub module: Module,
    /// The binary's file name, next to `cls`.
    pub binary: &'static str,
    /// Whether a missing binary is an error. `false` while the kind's crate does not exist yet:
    /// the kind is then skipped with a warning.
    pub required: bool,
}

/// Every worker kind, in start order. A new kind is one more line here.
pub const WORKER_KINDS: &[WorkerKind] = &[
    WorkerKind { module: Module::Brands, binary: "cls-brands-worker", required: true },
    WorkerKind { module: Module::Licenses, binary: "cls-licenses-worker", required: true },
    WorkerKind { module: Module::Activations, binary: "cls-activations-worker", required: true },
];

const QUERY_BINARY: &str = "cls-query";
const GATEWAY_BINARY: &str = "cls-gateway";

/// Ops ports, as offsets from `--ops-base-port`.
const GATEWAY_OPS_OFFSET: u16 = 0;
const QUERY_OPS_OFFSET: u16 = 1;
const FIRST_WORKER_OPS_OFFSET: u16 = 10;

/// Upper bound on `--replicas KIND=N`, to catch typos before they fork a thousand processes.
const MAX_REPLICAS: u16 = 64;

/// How long the query service may take to answer its ops `/health`.
const HEALTH_DEADLINE: Duration = Duration::from_secs(30);
/// How long the gateway may take to report ready.
const READY_DEADLINE: Duration = Duration::from_secs(60);
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Restart backoff: doubles from the first delay up to the cap; a child that ran at least
/// `RESTART_RESET_AFTER` starts over from the first delay.
const RESTART_FIRST_DELAY: Duration = Duration::from_secs(1);
const RESTART_MAX_DELAY: Duration = Duration::from_secs(30);
const RESTART_RESET_AFTER: Duration = Duration::from_secs(60);

/// The least time a stop group gets after its SIGTERM, even when an earlier group used up the
/// shutdown deadline: a healthy service then still exits cleanly instead of being killed.
const STOP_GRACE: Duration = Duration::from_secs(1);

/// Secrets the user did not set, generated for this run and handed to every child.
#[derive(Debug, Default)]
pub struct GeneratedSecrets {
    /// `CLS_SECRET_KEY`.
    pub secret_key: Option<Secret>,
    /// `CLS_INTERNAL_TOKEN`.
    pub internal_token: Option<Secret>,
}

impl GeneratedSecrets {
    /// The generated values as environment variables.
    pub fn vars(&self) -> Vec<(&'static str, &Secret)> {
        let mut vars = Vec::new();
        if let Some(v) = &self.secret_key {
            vars.push(("CLS_SECRET_KEY", v));
        }
        if let Some(v) = &self.internal_token {
            vars.push(("CLS_INTERNAL_TOKEN", v));
        }
        vars
    }
}

/// Everything `cls up` needs, resolved by `main`.
#[derive(Debug)]
pub struct Plan {
    /// Where the sibling binaries are.
    pub bin_dir: PathBuf,
    /// `--replicas`, in the order given (a later entry for a kind wins); unnamed kinds get 1.
    pub replicas: Vec<(Module, u16)>,
    /// `--ops-base-port`.
    pub ops_base_port: u16,
    pub generated: GeneratedSecrets,
    /// The environment as the children will read it (used for addresses, URLs and timeouts).
    pub settings: Settings,
}

/// Parses one `--replicas` value, `KIND=N`.
pub fn parse_replicas(value: &str) -> Result<(Module, u16), String> {
    let kinds = || WORKER_KINDS.iter().map(|k| k.module.as_str()).collect::<Vec<_>>().join(", ");
    let (kind, count) =
        value.split_once('=').ok_or_else(|| format!("expected KIND=N, e.g. brands=2 (kinds: {})", kinds()))?;
    let module = Module::parse(kind.trim())
        .filter(|m| WORKER_KINDS.iter().any(|k| k.module == *m))
        .ok_or_else(|| format!("unknown worker kind {kind:?} (kinds: {})", kinds()))?;
    let count: u16 = count
        .trim()
        .parse()
        .ok()
        .filter(|n| *n <= MAX_REPLICAS)
        .ok_or_else(|| format!("replicas must be a whole number from 0 to {MAX_REPLICAS}, got {count:?}"))?;
    Ok((module, count))
}

/// 32 random bytes, hex-encoded, for each secret that is not set.
pub fn generate_missing_secrets(secret_key_set: bool, internal_token_set: bool) -> GeneratedSecrets {
    let generate = || {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        Secret::new(hex::encode(bytes))
    };
    GeneratedSecrets {
        secret_key: (!secret_key_set).then(generate),
        internal_token: (!internal_token_set).then(generate),
    }
}

/// The address to connect to for a listener bound to `addr` (a wildcard means loopback).
pub fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(std::net::Ipv6Addr::LOCALHOST.into(), addr.port()),
        _ => addr,
    }
}

/// The Unix socket between the gateway and the query service when the user named none: in the
/// temporary directory, named after the namespace and the query service's port, so two clusters
/// on one host do not meet. None if that path is too long for a socket address.
pub fn default_query_socket(settings: &Settings) -> Option<PathBuf> {
    if settings.query_socket.is_some() {
        return None;
    }
    let path = std::env::temp_dir().join(format!("cls-{}-query-{}.sock", settings.namespace, settings.query_addr.port()));
    (path.as_os_str().len() <= cls_runtime::settings::MAX_SOCKET_PATH).then_some(path)
}

/// Runs the cluster until `shutdown`, then stops it. Exits cleanly (Ok) on a signal; fails if
/// the cluster cannot be prepared or started.
pub async fn run(plan: Plan, shutdown: CancellationToken) -> anyhow::Result<()> {
    let children = plan_children(&plan)?;
    announce_generated(&plan.generated);
    setup::migrate(&plan.settings.database_url).await?;
    setup::declare_topology(&plan.settings.amqp_url, &plan.settings.namespace).await?;

    let client = http::client();
    let mut cluster = Cluster::default();
    let started = tokio::select! {
        started = start(&children, &client, &plan.settings, &mut cluster) => Some(started),
        _ = shutdown.cancelled() => None,
    };
    let outcome = match started {
        Some(Ok(())) => {
            announce_ready(&plan.settings);
            shutdown.cancelled().await;
            Ok(())
        }
        Some(Err(error)) => Err(error),
        // Interrupted while starting: stop what was started, and that is a clean exit.
        None => Ok(()),
    };
    println!("Stopping CLS...");
    stop(cluster, plan.settings.shutdown_timeout).await;
    outcome
}

/// One child process `cls up` keeps running.
#[derive(Debug, Clone)]
struct ChildSpec {
    /// Shown in `cls up`'s log lines, e.g. `brands-worker-2`.
    name: String,
    binary: PathBuf,
    ops_addr: SocketAddr,
    /// Variables set on top of the inherited environment (generated secrets).
    env: Vec<(&'static str, String)>,
    /// Secrets this child does not use, removed from what it inherits (least privilege).
    withheld: &'static [&'static str],
}

/// The gateway never opens a sealed outcome; the workers never call the query service.
const GATEWAY_WITHHELD: &[&str] = &["CLS_SECRET_KEY", "CLS_SECRET_KEY_PREVIOUS"];
const WORKER_WITHHELD: &[&str] = &["CLS_INTERNAL_TOKEN"];

/// Which children to run, by start group.
#[derive(Debug)]
struct Children {
    query: ChildSpec,
    workers: Vec<ChildSpec>,
    gateway: ChildSpec,
}

/// Resolves binaries, replicas and ops ports. Fails on a missing required binary.
fn plan_children(plan: &Plan) -> anyhow::Result<Children> {
    let mut env: Vec<(&'static str, String)> =
        plan.generated.vars().into_iter().map(|(name, v)| (name, v.expose().to_owned())).collect();
    if let Some(path) = default_query_socket(&plan.settings) {
        env.push(("CLS_QUERY_SOCKET", path.display().to_string()));
    }
    let ops_addr = |offset: u16| -> anyhow::Result<SocketAddr> {
        let port = plan
            .ops_base_port
            .checked_add(offset)
            .context("--ops-base-port leaves no room for every child's ops port")?;
        Ok(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port))
    };
    let spec = |name: String, binary: PathBuf, offset: u16, withheld: &'static [&'static str]| -> anyhow::Result<ChildSpec> {
        Ok(ChildSpec { name, binary, ops_addr: ops_addr(offset)?, env: env.clone(), withheld })
    };

    let query = spec("query".into(), required_binary(&plan.bin_dir, QUERY_BINARY)?, QUERY_OPS_OFFSET, &[])?;
    let gateway = spec("gateway".into(), required_binary(&plan.bin_dir, GATEWAY_BINARY)?, GATEWAY_OPS_OFFSET, GATEWAY_WITHHELD)?;
    let mut workers = Vec::new();
    let mut offset = FIRST_WORKER_OPS_OFFSET;
    for kind in WORKER_KINDS {
        let replicas = plan.replicas.iter().rev().find(|(m, _)| *m == kind.module).map_or(1, |(_, n)| *n);
        let binary = plan.bin_dir.join(kind.binary);
        if !binary.is_file() {
            if kind.required {
                return Err(missing_binary(&plan.bin_dir, kind.binary));
            }
            tracing::warn!(
                binary = kind.binary,
                "the {} worker is not built yet; running without it",
                kind.module.as_str()
            );
            continue;
        }
        if replicas == 0 {
            tracing::warn!(
                "--replicas {}=0: no {} worker runs, so the gateway will not report ready",
                kind.module.as_str(),
                kind.module.as_str()
            );
        }
        for replica in 1..=replicas {
            workers.push(spec(format!("{}-worker-{replica}", kind.module.as_str()), binary.clone(), offset, WORKER_WITHHELD)?);
            offset += 1;
        }
    }
    Ok(Children { query, workers, gateway })
}

fn required_binary(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    if path.is_file() { Ok(path) } else { Err(missing_binary(dir, name)) }
}

fn missing_binary(dir: &Path, name: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "{name} is not in {}: build every binary first with `cargo build --bins` (same profile and target dir as cls)",
        dir.display()
    )
}

/// A supervised child: the token that stops its supervisor, and the supervisor, which hands
/// back the child if it is still running.
struct Slot {
    name: String,
    stop: CancellationToken,
    task: JoinHandle<Option<Child>>,
}

/// The running children, by stop group.
#[derive(Default)]
struct Cluster {
    gateway: Vec<Slot>,
    workers: Vec<Slot>,
    query: Vec<Slot>,
}

/// Starts the children in dependency order and waits until the gateway is ready.
async fn start(children: &Children, client: &Client, settings: &Settings, cluster: &mut Cluster) -> anyhow::Result<()> {
    cluster.query.push(launch(children.query.clone()));
    wait_healthy(client, &children.query).await?;
    for worker in &children.workers {
        cluster.workers.push(launch(worker.clone()));
    }
    cluster.gateway.push(launch(children.gateway.clone()));
    wait_ready(client, settings.http_addr).await
}

fn launch(spec: ChildSpec) -> Slot {
    let stop = CancellationToken::new();
    let name = spec.name.clone();
    let task = tokio::spawn(supervise(spec, stop.clone()));
    Slot { name, stop, task }
}

/// Keeps one child running until `stop`, restarting it with backoff when it exits on its own.
/// Returns the child if it is still running when stopped.
async fn supervise(spec: ChildSpec, stop: CancellationToken) -> Option<Child> {
    let mut delay = RESTART_FIRST_DELAY;
    loop {
        let started = Instant::now();
        let exit = match spawn(&spec) {
            Ok(mut child) => {
                let exited = tokio::select! {
                    status = child.wait() => Some(status),
                    _ = stop.cancelled() => None,
                };
                match exited {
                    None => return Some(child),
                    Some(Ok(status)) => status.to_string(),
                    Some(Err(error)) => format!("cannot wait for it: {error}"),
                }
            }
            Err(error) => format!("{error:#}"),
        };
        if stop.is_cancelled() {
            return None;
        }
        if started.elapsed() >= RESTART_RESET_AFTER {
            delay = RESTART_FIRST_DELAY;
        }
        tracing::warn!(child = %spec.name, %exit, restart_in = ?delay, "child exited unexpectedly; restarting it");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.cancelled() => return None,
        }
        delay = (delay * 2).min(RESTART_MAX_DELAY);
    }
}

fn spawn(spec: &ChildSpec) -> anyhow::Result<Child> {
    let mut command = Command::new(&spec.binary);
    command
        .envs(spec.env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("CLS_OPS_ADDR", spec.ops_addr.to_string())
        // If `cls` is killed without stopping them, the children notice and stop themselves.
        .env(cls_runtime::shutdown::SUPERVISOR_PID_VAR, std::process::id().to_string())
        .stdin(Stdio::null())
        // Its own process group: a terminal's Ctrl-C reaches `cls` only, which stops children in order.
        .process_group(0)
        // If `cls` itself fails, no child outlives it.
        .kill_on_drop(true);
    for name in spec.withheld {
        command.env_remove(name);
    }
    let child = command.spawn().with_context(|| format!("cannot start {}", spec.binary.display()))?;
    tracing::info!(child = %spec.name, pid = child.id(), ops = %spec.ops_addr, "started");
    Ok(child)
}

/// Polls the child's ops `/health` until it answers 200.
async fn wait_healthy(client: &Client, spec: &ChildSpec) -> anyhow::Result<()> {
    let url = format!("http://{}/health", spec.ops_addr);
    let deadline = Instant::now() + HEALTH_DEADLINE;
    loop {
        if http::probe(client, &url).await.is_some_and(|a| a.status.is_success()) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "the {} service did not answer {url} within {}s (see its log above)",
                spec.name,
                HEALTH_DEADLINE.as_secs()
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Polls the gateway's public `/ready` until it answers 200.
async fn wait_ready(client: &Client, http_addr: SocketAddr) -> anyhow::Result<()> {
    let url = format!("http://{}/ready", reachable(http_addr));
    let deadline = Instant::now() + READY_DEADLINE;
    loop {
        let reason = match http::probe(client, &url).await {
            Some(answer) if answer.status.is_success() => return Ok(()),
            Some(answer) => serde_json::from_slice::<serde_json::Value>(&answer.body)
                .ok()
                .and_then(|v| v.get("detail").and_then(|d| d.as_str()).map(str::to_owned))
                .unwrap_or_else(|| answer.status.to_string()),
            None => "nothing answers".to_owned(),
        };
        if Instant::now() >= deadline {
            bail!(
                "the gateway was not ready within {}s: {url}: {reason} (see the logs above)",
                READY_DEADLINE.as_secs()
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Stops the gateway (so no new commands arrive), then the workers, then the query service,
/// under one deadline.
async fn stop(cluster: Cluster, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let Cluster { gateway, workers, query } = cluster;
    for group in [gateway, workers, query] {
        stop_group(group, deadline).await;
    }
}

/// Sends SIGTERM to every child of the group and waits for them until `deadline` (or for
/// [`STOP_GRACE`], if that is later); a child still running then is killed.
async fn stop_group(slots: Vec<Slot>, deadline: Instant) {
    for slot in &slots {
        slot.stop.cancel();
    }
    let deadline = deadline.max(Instant::now() + STOP_GRACE);
    let mut waits = JoinSet::new();
    for slot in slots {
        let child = match slot.task.await {
            Ok(Some(child)) => child,
            // Between restarts: nothing is running.
            Ok(None) => continue,
            Err(error) => {
                tracing::error!(child = %slot.name, %error, "the supervisor failed");
                continue;
            }
        };
        let name = slot.name;
        terminate(&name, &child);
        waits.spawn(async move {
            let mut child = child;
            match tokio::time::timeout_at(deadline, child.wait()).await {
                Ok(Ok(status)) => tracing::info!(child = %name, %status, "stopped"),
                Ok(Err(error)) => tracing::warn!(child = %name, %error, "cannot wait for it"),
                Err(_) => {
                    tracing::warn!(child = %name, "still running at the shutdown deadline; killing it");
                    if let Err(error) = child.kill().await {
                        tracing::warn!(child = %name, %error, "cannot kill it");
                    }
                }
            }
        });
    }
    while waits.join_next().await.is_some() {}
}

fn terminate(name: &str, child: &Child) {
    let Some(pid) = child.id() else { return };
    let Ok(pid) = i32::try_from(pid) else { return };
    if let Err(error) = kill(Pid::from_raw(pid), Signal::SIGTERM) {
        tracing::warn!(child = %name, %error, "cannot send SIGTERM");
    }
}

fn announce_generated(generated: &GeneratedSecrets) {
    if generated.secret_key.is_some() {
        println!(
            "CLS_SECRET_KEY is not set: generated a random one for this run. Secrets kept in stored \
             outcomes (e.g. an API key replayed for a retried request) will not be readable after a \
             restart unless you set CLS_SECRET_KEY (at least 16 characters)."
        );
    }
    if generated.internal_token.is_some() {
        println!(
            "CLS_INTERNAL_TOKEN is not set: generated a random one for this run (shared by the gateway and the query service)."
        );
    }
}

fn announce_ready(settings: &Settings) {
    let addr = reachable(settings.http_addr);
    println!("CLS is ready on http://{addr}");
    if settings.admin_token.is_none() {
        println!("CLS_ADMIN_TOKEN is not set: admin routes answer 401 until you set it and restart `cls up`.");
    } else {
        println!(
            "Create a brand and its API key: cls brand create --slug acme --name Acme --key-prefix AC --url http://{addr}"
        );
    }
    println!("Press Ctrl-C to stop.");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_socket_is_named_after_the_namespace_and_port_unless_set() {
        let mut settings = Settings::local(cls_runtime::ServiceKind::Gateway, Secret::new("k"), Secret::new("t"));
        settings.namespace = "acme".into();
        let path = default_query_socket(&settings).expect("a short path");
        assert_eq!(path, std::env::temp_dir().join("cls-acme-query-8081.sock"));
        settings.query_socket = Some("/run/cls/query.sock".into());
        assert_eq!(default_query_socket(&settings), None, "the user's socket is inherited as is");
    }

    #[test]
    fn replicas_parse_known_kinds_only() {
        assert_eq!(parse_replicas("brands=2"), Ok((Module::Brands, 2)));
        assert_eq!(parse_replicas("activations=0"), Ok((Module::Activations, 0)));
        assert!(parse_replicas("brands").is_err());
        assert!(parse_replicas("billing=1").unwrap_err().contains("brands, licenses, activations"));
        assert!(parse_replicas("brands=-1").is_err());
        assert!(parse_replicas("brands=1000").is_err());
    }

    #[test]
    fn generated_secrets_are_long_enough_and_distinct() {
        let g = generate_missing_secrets(false, false);
        let (a, b) = (g.secret_key.unwrap(), g.internal_token.unwrap());
        assert_eq!(a.expose().len(), 64);
        assert_ne!(a, b);
        assert!(generate_missing_secrets(true, true).vars().is_empty());
    }

    #[test]
    fn wildcard_addresses_are_reached_on_loopback() {
        assert_eq!(reachable("0.0.0.0:8080".parse().unwrap()).to_string(), "127.0.0.1:8080");
        assert_eq!(reachable("10.0.0.1:8080".parse().unwrap()).to_string(), "10.0.0.1:8080");
    }
}
