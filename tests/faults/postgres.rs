//! PostgreSQL restarted (fast: every connection is cut) twice during mixed load: no service is
//! restarted by hand, every request ends 2xx, 503 (retried) or 202-then-succeeded, no
//! acknowledged write is lost or doubled, and every event is published.

use std::sync::Arc;
use std::time::Duration;

use cls_tests::TestCluster;

use crate::load::{EventTap, Load, ready_again, verify};
use crate::support::{Restore, restart_postgres, until_ok};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mixed_load_survives_postgres_restarts() {
    let _restore = Restore;
    let mut c = TestCluster::spawn().await;
    let tap = EventTap::bind(&mut c, &["license.provisioned", "activation.created"]).await;
    let c = Arc::new(c);
    let load = Load::start(c.clone(), "pgfault").await;
    load.progress(100).await;
    for _ in 0..2 {
        restart_postgres();
        until_ok("PostgreSQL answers", "pg_isready", &["-h", "127.0.0.1", "-p", "5432", "-t", "2"]).await;
        load.progress(100).await;
    }
    let tally = load.finish().await;
    verify(&c, &tap, &tally).await;
    ready_again(&c, Duration::from_secs(30)).await;
    Arc::try_unwrap(c).ok().expect("the cluster is no longer shared").stop().await;
}
