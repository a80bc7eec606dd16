//! `cls dlq list` and `cls dlq replay`: the operator's view of dead letters (SPEC §5), and the
//! way back to work once the cause is fixed.

use cls_bus::Topology;
use cls_bus::dlq::{self, DeadLetter};

use crate::setup::one_shot_connection;

fn line(d: &DeadLetter) -> String {
    format!(
        "  {}  type={}  died in {} ({})  {} bytes",
        d.message_id.as_deref().unwrap_or("(no id)"),
        d.kind.as_deref().unwrap_or("?"),
        d.queue.as_deref().unwrap_or("?"),
        d.reason.as_deref().unwrap_or("?"),
        d.bytes
    )
}

/// Prints every dead-letter queue of the namespace with its depth, and up to `show` messages of
/// each non-empty one (left in place).
pub async fn list(amqp_url: &str, namespace: &str, show: usize) -> anyhow::Result<()> {
    let conn = one_shot_connection(amqp_url, "cls-dlq").await?;
    let listed = async {
        let topology = Topology::new(namespace);
        for depth in dlq::depths(&conn, &topology).await? {
            println!("{}  {} message(s)", depth.queue, depth.messages);
            if depth.messages > 0 && show > 0 {
                for d in dlq::peek(&conn, &depth.queue, show).await? {
                    println!("{}", line(&d));
                }
            }
        }
        anyhow::Ok(())
    }
    .await;
    let _ = conn.close(200, "done".into()).await;
    listed
}

/// Replays a dead-letter queue's messages (or the one with `message_id`) to their original queues.
pub async fn replay(amqp_url: &str, namespace: &str, queue: &str, message_id: Option<&str>) -> anyhow::Result<()> {
    let topology = Topology::new(namespace);
    if !topology.dead_letter_queues().iter().any(|q| q == queue) {
        anyhow::bail!("{queue} is not a dead-letter queue of namespace {namespace}; `cls dlq list` shows them");
    }
    let conn = one_shot_connection(amqp_url, "cls-dlq").await?;
    let replayed = dlq::replay(&conn, queue, message_id).await;
    let _ = conn.close(200, "done".into()).await;
    let replayed = replayed?;
    for d in &replayed.replayed {
        println!("replayed {}", line(d).trim());
    }
    println!("{} replayed, {} left in {queue}", replayed.replayed.len(), replayed.left);
    if message_id.is_some() && replayed.replayed.is_empty() {
        anyhow::bail!("no message with that id in {queue}");
    }
    Ok(())
}
