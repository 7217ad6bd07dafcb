//! The Registrar operator, run in-process: the same [`Engine`] that `registrar run` runs, as the
//! only replica (always the leader), writing to the given etcd.

use std::time::Duration;

use anyhow::Context;
use registrar::controller::Engine;
use registrar::etcd::WriterConfig;
use registrar::metrics::Metrics;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running in-process operator; stopped when dropped.
pub struct Operator {
    shutdown: watch::Sender<bool>,
    _leader: watch::Sender<bool>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Operator {
    /// Starts the operator with key prefix `prefix` and waits until its caches are synced
    /// (what `/readyz` reports).
    pub async fn start(
        client: kube::Client,
        etcd: etcd_client::Client,
        prefix: &str,
        cluster_id: &str,
    ) -> anyhow::Result<Operator> {
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (leader, leader_rx) = watch::channel(true);
        let (ready_tx, mut ready_rx) = watch::channel(false);
        let coalesce = Duration::from_millis(registrar::coalesce::DEFAULT_WINDOW_MS);
        let writer = WriterConfig::new(prefix, cluster_id);
        let engine = Engine {
            client,
            etcd: etcd.into(),
            writer,
            metrics: Metrics::new(),
            identity: "registrar-demo".to_string(),
            coalesce,
            status_resync: registrar::controller::DEFAULT_STATUS_RESYNC,
            publish_cluster_id: None,
            kube_writes: Default::default(),
        };
        let task = tokio::spawn(engine.run(leader_rx, ready_tx, shutdown_rx));
        let mut op = Operator {
            shutdown,
            _leader: leader,
            task: Some(task),
        };
        let ready = tokio::time::timeout(Duration::from_secs(60), ready_rx.wait_for(|r| *r)).await;
        match ready {
            Ok(Ok(_)) => Ok(op),
            _ => {
                // The engine ended (its error says why) or never synced.
                let why = match op.task.take() {
                    Some(task) if task.is_finished() => match task.await {
                        Ok(Err(e)) => format!("{e:#}"),
                        Ok(Ok(())) => "it stopped".to_string(),
                        Err(e) => e.to_string(),
                    },
                    Some(task) => {
                        task.abort();
                        "its caches did not sync within 60 s".to_string()
                    }
                    None => String::new(),
                };
                Err(anyhow::anyhow!(why)).context("the registrar operator did not become ready")
            }
        }
    }

    /// Stops it (gracefully: its keys stay until their lease ends).
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take()
            && let Ok(Ok(Err(e))) = tokio::time::timeout(Duration::from_secs(10), task).await
        {
            tracing::warn!("the operator stopped with an error: {e:#}");
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
