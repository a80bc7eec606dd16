//! Stopping and restarting the local services, and putting them back whatever happens.

use std::process::Command;
use std::time::Duration;

/// No service command may hold a test longer than this (coreutils `timeout` kills it).
const COMMAND_LIMIT: &str = "120";

/// `program args`, killed after [`COMMAND_LIMIT`] seconds.
fn bounded(program: &str, args: &[&str]) -> Command {
    let mut command = Command::new("timeout");
    command.args(["-k", "5", COMMAND_LIMIT, program]).args(args);
    command
}

/// Runs a command to completion; panics with its output if it fails or outlives its bound.
pub fn run(program: &str, args: &[&str]) {
    let out = bounded(program, args).output().unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn succeeds(program: &str, args: &[&str]) -> bool {
    bounded(program, args).output().map(|o| o.status.success()).unwrap_or(false)
}

/// Polls a command until it succeeds (a service answering again).
pub async fn until_ok(what: &str, program: &str, args: &[&str]) {
    cls_tests::eventually(Duration::from_secs(90), what, || async { succeeds(program, args) }).await;
}

/// `bash scripts/services.sh ensure`: starts whatever is not running (the project's own script).
pub fn ensure_services() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root");
    run("bash", &[root.join("scripts/services.sh").to_str().unwrap(), "ensure"]);
}

/// On drop (the test ended, passed or not): makes sure every service runs again.
pub struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        ensure_services();
    }
}

pub fn redis_ping() -> bool {
    bounded("redis-cli", &["-h", "127.0.0.1", "-p", "6379", "ping"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("PONG"))
        .unwrap_or(false)
}

/// Stops Redis (it keeps nothing on disk here, so a restart is also a flush).
pub fn stop_redis() {
    // SHUTDOWN closes the connection before answering, so its exit status means nothing.
    let _ = bounded("redis-cli", &["-h", "127.0.0.1", "-p", "6379", "shutdown", "nosave"]).output();
}

pub fn start_redis() {
    run("redis-server", &["--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", "6379", "--save", "", "--appendonly", "no"]);
}

fn pg_version() -> String {
    std::fs::read_dir("/etc/postgresql")
        .expect("/etc/postgresql")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .max()
        .expect("a PostgreSQL cluster")
}

/// Restarts PostgreSQL (fast shutdown: open connections are terminated).
pub fn restart_postgres() {
    run("pg_ctlcluster", &["--skip-systemctl-redirect", &pg_version(), "main", "restart", "-m", "fast"]);
}

pub fn stop_rabbitmq_app() {
    run("rabbitmqctl", &["-q", "stop_app"]);
}

pub fn start_rabbitmq_app() {
    run("rabbitmqctl", &["-q", "start_app"]);
}
