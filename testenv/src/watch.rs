//! Recording what happens under an etcd prefix, for tests that check which keys were put or
//! deleted (and when) while something else runs: a watch from the current revision whose events
//! arrive on an unbounded channel. Dropping the receiver ends the watch.

use std::time::Instant;

use anyhow::Result;
use etcd_client::{Client, EventType, WatchOptions};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

/// One change under a watched prefix.
#[derive(Clone, Debug)]
pub struct PrefixEvent {
    /// A DELETE (else a PUT).
    pub delete: bool,
    /// The key.
    pub key: String,
    /// The key's lease (0 for none, and for deletes).
    pub lease: i64,
    /// When the watch delivered it.
    pub at: Instant,
}

/// Records every PUT and DELETE under `prefix/` from now on (the watch is established when this
/// returns). The recording (and the watch) stops when the receiver is dropped or the watch ends.
pub async fn watch_prefix(etcd: &Client, prefix: &str) -> Result<UnboundedReceiver<PrefixEvent>> {
    watch_filtered(etcd, prefix, Some).await
}

/// Records the key of every DELETE under `prefix/` from now on.
pub async fn watch_deletes(etcd: &Client, prefix: &str) -> Result<UnboundedReceiver<String>> {
    watch_filtered(etcd, prefix, |event| event.delete.then_some(event.key)).await
}

async fn watch_filtered<T: Send + 'static>(
    etcd: &Client,
    prefix: &str,
    keep: fn(PrefixEvent) -> Option<T>,
) -> Result<UnboundedReceiver<T>> {
    let (tx, rx) = unbounded_channel();
    let mut etcd = etcd.clone();
    let mut stream = etcd
        .watch(
            format!("{prefix}/"),
            Some(WatchOptions::new().with_prefix()),
        )
        .await?;
    tokio::spawn(async move {
        loop {
            let resp = tokio::select! {
                msg = stream.message() => match msg {
                    Ok(Some(resp)) => resp,
                    _ => return,
                },
                // The receiver is gone: end the watch (its stream closes with the task).
                () = tx.closed() => return,
            };
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                let event = PrefixEvent {
                    delete: ev.event_type() == EventType::Delete,
                    key: String::from_utf8_lossy(kv.key()).into_owned(),
                    lease: kv.lease(),
                    at: Instant::now(),
                };
                if let Some(item) = keep(event)
                    && tx.send(item).is_err()
                {
                    return;
                }
            }
        }
    });
    Ok(rx)
}
