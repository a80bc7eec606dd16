//! RabbitMQ stopped and started again (every connection is cut; quorum queues come back with
//! their messages) during mixed load: no service is restarted by hand, every request ends 2xx,
//! 503 (retried) or 202-then-succeeded, no acknowledged write is lost or doubled, and every
//! event is published.

use std::sync::Arc;
use std::time::Duration;

use cls_tests::TestCluster;

use crate::load::{EventTap, Load, ready_again, verify};
use crate::support::{Restore, start_rabbitmq_app, stop_rabbitmq_app, until_ok};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mixed_load_survives_a_rabbitmq_restart() {
    let _restore = Restore;
    let mut c = TestCluster::spawn().await;
    let tap = EventTap::bind(&mut c, &["license.provisioned", "activation.created"]).await;
    let c = Arc::new(c);
    let load = Load::start(c.clone(), "mqfault").await;
    load.progress(100).await;
    stop_rabbitmq_app();
    start_rabbitmq_app();
    until_ok("RabbitMQ answers", "rabbitmq-diagnostics", &["-q", "check_port_connectivity"]).await;
    load.progress(100).await;
    let tally = load.finish().await;
    verify(&c, &tap, &tally).await;
    ready_again(&c, Duration::from_secs(60)).await;
    Arc::try_unwrap(c).ok().expect("the cluster is no longer shared").stop().await;
}
