//! Hundreds of idle or byte-by-byte slow connections do not starve normal requests, and the
//! gateway closes them once the header read timeout passes (no descriptor is held forever).

use std::time::Duration;

use cls_tests::{TestCluster, eventually};
use hyper::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_connections_do_not_starve_normal_requests() {
    let c = TestCluster::spawn().await;
    let addr = c.gateway.trim_start_matches("http://").to_owned();
    let (_, brand) = c.brand_with_key("patient", "PA").await;

    // 400 connections that never send a byte.
    let mut idle = Vec::new();
    for _ in 0..400 {
        idle.push(TcpStream::connect(&addr).await.expect("connect"));
    }
    // 100 that send a request one byte at a time, never finishing the headers.
    let slow: Vec<_> = (0..100)
        .map(|_| {
            let addr = addr.clone();
            tokio::spawn(async move {
                let mut s = TcpStream::connect(&addr).await.expect("connect");
                let trickle = b"GET /v1/products HTTP/1.1\r\nHost: cls\r\nX-Padding: ";
                for byte in trickle.iter().chain(std::iter::repeat(&b'a')) {
                    if s.write_all(&[*byte]).await.is_err() {
                        return true; // the server closed it
                    }
                    // The attacker's pace, not a wait for a condition.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                unreachable!()
            })
        })
        .collect();

    // Meanwhile, normal requests are served.
    for _ in 0..50 {
        assert_eq!(c.get("/v1/products", &[("x-api-key", &brand)]).await.status, StatusCode::OK);
        let v = c.post("/v1/license-keys/validate", &[], &serde_json::json!({"license_key": "PA-NOPE"})).await;
        assert_eq!(v.status, StatusCode::OK);
    }

    // The server hangs up on both kinds once the header read timeout passes.
    for s in &mut idle {
        let mut buf = [0u8; 512];
        let closed = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue, // e.g. a 408 before closing
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "an idle connection stayed open");
    }
    for task in slow {
        assert!(tokio::time::timeout(Duration::from_secs(30), task).await.expect("a slow connection stayed open").unwrap());
    }
    eventually(Duration::from_secs(5), "the gateway still serves", || async {
        c.get("/v1/products", &[("x-api-key", &brand)]).await.status == StatusCode::OK
    })
    .await;
    c.stop().await;
}
