//! SIGTERM stops every service binary cleanly (exit status 0) within the SPEC §7 bound, after
//! its ops listener was serving.

use std::time::Duration;

use cls_tests::{TestCluster, binary_path, eventually};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A port that is free now (the service binds it right after; another test taking it in
/// between would make the start fail loudly, not pass wrongly).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_stops_cleanly_on_sigterm() {
    let c = TestCluster::spawn().await;
    for binary in ["cls-query", "cls-gateway", "cls-brands-worker", "cls-licenses-worker", "cls-activations-worker"] {
        let ops = free_port();
        let mut child = tokio::process::Command::new(binary_path(binary))
            .envs(c.env())
            .env("CLS_OPS_ADDR", format!("127.0.0.1:{ops}"))
            .env("CLS_HTTP_ADDR", "127.0.0.1:0")
            .env("CLS_QUERY_ADDR", "127.0.0.1:0")
            .env("CLS_QUERY_URL", format!("http://{}", c.query_addr))
            .env("CLS_SHUTDOWN_TIMEOUT_MS", "10000")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
        let health = format!("127.0.0.1:{ops}");
        eventually(Duration::from_secs(30), &format!("{binary} serves /health"), || async {
            tokio::net::TcpStream::connect(&health).await.is_ok()
        })
        .await;
        kill(Pid::from_raw(child.id().unwrap() as i32), Signal::SIGTERM).unwrap();
        // The bound: the shutdown timeout (10 s) plus closing connections.
        let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
            .await
            .unwrap_or_else(|_| panic!("{binary} still running 15 s after SIGTERM"))
            .unwrap();
        assert!(status.success(), "{binary} exited with {status}");
    }
    c.stop().await;
}
