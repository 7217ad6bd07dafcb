//! The example client: a tonic `GreeterClient` on a [`registrar_resolver::Balancer`] that sends
//! RPCs at a bounded rate and tallies which backend answered each one, and every failure.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use registrar_resolver::Balancer;
use tokio::sync::{Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::MissedTickBehavior;

use crate::greeter::{GreeterClient, HelloRequest};

/// Deadline of one RPC (sent as `grpc-timeout`).
pub const RPC_TIMEOUT: Duration = Duration::from_secs(2);
/// At most this many RPCs are in flight at once.
const MAX_IN_FLIGHT: usize = 64;
/// At most this many error messages are kept per window.
const MAX_ERRORS_KEPT: usize = 5;

/// What a stretch of RPCs produced: answers per backend, and failures.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Successful RPCs by the backend named in the reply.
    pub by_backend: BTreeMap<String, u64>,
    /// RPCs that failed (any status, or no answer in time).
    pub failures: u64,
    /// The first few failure messages.
    pub errors: Vec<String>,
}

impl Counts {
    /// Successful RPCs.
    pub fn ok(&self) -> u64 {
        self.by_backend.values().sum()
    }

    /// All RPCs, successful or not.
    pub fn total(&self) -> u64 {
        self.ok() + self.failures
    }
}

/// Counts RPC outcomes into a window that the caller takes (and resets) at phase boundaries.
#[derive(Debug, Default)]
pub struct Tally {
    window: Mutex<Counts>,
}

impl Tally {
    fn lock(&self) -> MutexGuard<'_, Counts> {
        // A panic while holding this lock cannot leave the counts inconsistent: keep going.
        self.window.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records an answer from `backend`.
    pub fn answered(&self, backend: &str) {
        let mut w = self.lock();
        match w.by_backend.get_mut(backend) {
            Some(n) => *n += 1,
            None => {
                w.by_backend.insert(backend.to_string(), 1);
            }
        }
    }

    /// Records a failed RPC.
    pub fn failed(&self, why: String) {
        let mut w = self.lock();
        w.failures += 1;
        if w.errors.len() < MAX_ERRORS_KEPT {
            w.errors.push(why);
        }
    }

    /// The current window.
    pub fn peek(&self) -> Counts {
        self.lock().clone()
    }

    /// Returns the current window and starts a new one.
    pub fn take(&self) -> Counts {
        std::mem::take(&mut *self.lock())
    }
}

/// A running load loop (see [`Load::start`]).
pub struct Load {
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Load {
    /// Sends `SayHello` through `channel` at `rate` RPCs per second (at most [`MAX_IN_FLIGHT`]
    /// at once, each with [`RPC_TIMEOUT`]) until stopped, tallying outcomes into `tally`.
    pub fn start(channel: Balancer, rate: u32, tally: Arc<Tally>) -> Load {
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(load_loop(channel, rate.max(1), tally, stop_rx));
        Load {
            stop,
            task: Some(task),
        }
    }

    /// Stops sending and waits for the RPCs in flight (bounded by their deadline).
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn load_loop(
    channel: Balancer,
    rate: u32,
    tally: Arc<Tally>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let limit = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut calls = JoinSet::new();
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            _ = tick.tick() => {}
        }
        while calls.try_join_next().is_some() {}
        let permit = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            p = limit.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        n += 1;
        let mut client = GreeterClient::new(channel.clone());
        let tally = tally.clone();
        calls.spawn(async move {
            let _permit = permit;
            let mut request = tonic::Request::new(HelloRequest {
                name: format!("rpc {n}"),
            });
            request.set_timeout(RPC_TIMEOUT);
            // The balancer honours grpc-timeout; this outer bound only guards against a hang.
            match tokio::time::timeout(RPC_TIMEOUT * 2, client.say_hello(request)).await {
                Ok(Ok(reply)) => tally.answered(&reply.into_inner().backend),
                Ok(Err(status)) => {
                    tally.failed(format!("{:?}: {}", status.code(), status.message()))
                }
                Err(_) => tally.failed(format!("no answer within {:?}", RPC_TIMEOUT * 2)),
            }
        });
    }
    // Let the RPCs in flight finish; their own deadlines bound this.
    let drain = async { while calls.join_next().await.is_some() {} };
    if tokio::time::timeout(RPC_TIMEOUT * 3, drain).await.is_err() {
        calls.abort_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_windows_reset_and_keep_a_few_errors() {
        let t = Tally::default();
        t.answered("a");
        t.answered("a");
        t.answered("b");
        for i in 0..10 {
            t.failed(format!("e{i}"));
        }
        let w = t.take();
        assert_eq!(w.by_backend["a"], 2);
        assert_eq!(w.by_backend["b"], 1);
        assert_eq!(w.ok(), 3);
        assert_eq!(w.failures, 10);
        assert_eq!(w.total(), 13);
        assert_eq!(w.errors.len(), MAX_ERRORS_KEPT);
        assert_eq!(t.peek(), Counts::default());
    }
}
