//! A background observer: watches that run on their own thread and tokio runtime (so the
//! bench's own load never delays their timestamps) and publish their live progress through a
//! `watch` channel, which the bench waits on with deadlines.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::sync::{oneshot, watch};

/// A running observer with progress `P` that returns `T` when stopped.
pub struct Observer<P, T> {
    stop: Option<oneshot::Sender<()>>,
    progress: watch::Receiver<P>,
    thread: Option<std::thread::JoinHandle<Result<T>>>,
    describe: fn(&P) -> String,
}

impl<P, T> Observer<P, T>
where
    P: Clone + Default + Send + Sync + 'static,
    T: Send + 'static,
{
    /// Runs `observe(stop, progress)` on a new thread named `name`; `describe` renders the
    /// progress in timeout messages.
    pub fn spawn<F, Fut>(name: &str, describe: fn(&P) -> String, observe: F) -> Result<Self>
    where
        F: FnOnce(oneshot::Receiver<()>, watch::Sender<P>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T>>,
    {
        let (stop_tx, stop_rx) = oneshot::channel();
        let (progress_tx, progress) = watch::channel(P::default());
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(observe(stop_rx, progress_tx))
            })?;
        Ok(Observer {
            stop: Some(stop_tx),
            progress,
            thread: Some(thread),
            describe,
        })
    }

    /// The latest progress.
    pub fn now(&self) -> P {
        self.progress.borrow().clone()
    }

    /// Waits until `done` holds, failing after `deadline` (with the last progress) or when the
    /// observer thread failed (with its error).
    pub async fn wait(
        &mut self,
        what: &str,
        deadline: Duration,
        done: impl Fn(&P) -> bool,
    ) -> Result<P> {
        self.wait_ticking(what, deadline, done, |_| Ok(())).await
    }

    /// Like [`Observer::wait`], calling `tick` with the progress about once a second while
    /// waiting (to print it, or to fail early when the operator died).
    pub async fn wait_ticking(
        &mut self,
        what: &str,
        deadline: Duration,
        done: impl Fn(&P) -> bool,
        mut tick: impl FnMut(&P) -> Result<()>,
    ) -> Result<P> {
        let end = Instant::now() + deadline;
        loop {
            let slice = end
                .saturating_duration_since(Instant::now())
                .min(Duration::from_secs(1));
            let res = tokio::time::timeout(slice, self.progress.wait_for(|p| done(p)))
                .await
                .map(|r| r.map(|p| p.clone()));
            match res {
                Ok(Ok(p)) => return Ok(p),
                Ok(Err(_)) => {
                    // The thread ended: surface its error.
                    let err = match self.join().await {
                        Err(e) => e,
                        Ok(_) => anyhow::anyhow!("observer stopped"),
                    };
                    return Err(err.context(format!("waiting for {what}")));
                }
                Err(_) => {
                    let now = self.now();
                    tick(&now).with_context(|| format!("waiting for {what}"))?;
                    if Instant::now() >= end {
                        anyhow::bail!(
                            "timed out after {deadline:?} waiting for {what}; progress: {}",
                            (self.describe)(&now)
                        );
                    }
                }
            }
        }
    }

    /// Stops the observer and returns what it saw.
    pub async fn finish(mut self) -> Result<T> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.join().await
    }

    async fn join(&mut self) -> Result<T> {
        let thread = self.thread.take().context("observer already joined")?;
        tokio::task::spawn_blocking(move || thread.join())
            .await?
            .map_err(|_| anyhow::anyhow!("observer thread panicked"))?
    }
}

impl<P, T> Drop for Observer<P, T> {
    fn drop(&mut self) {
        // The thread ends on its own once told to stop; nothing waits for it here.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
