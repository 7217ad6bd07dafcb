//! Self-registration, the server side of etcd's gRPC naming: a server puts
//! `<target>/<addr>` → `{"Op":0,"Addr":…,"Metadata":…}` under a lease that it keeps alive.
//!
//! A [`SharedLease`] owns one etcd lease and a background task that keeps it alive (every
//! TTL/3). If the lease is lost (revoked, or expired while etcd was unreachable) the task grants
//! a new one and puts every registered key again, retrying forever with backoff: registrations
//! never silently stop. Several [`Registration`]s can share one lease, so keepalive cost does not
//! grow with them. Dropping a `Registration` deletes its key; when the lease and all its
//! registrations are dropped, the lease is revoked. For a clean shutdown await
//! [`Registration::deregister`] or [`SharedLease::shutdown`]: background work cannot run once
//! the runtime is gone (the keys then vanish when the TTL ends).
//!
//! Not covered: a key deleted or overwritten by someone else while the lease stays alive is not
//! restored (it is on the next lease loss).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, PutOptions, Txn, TxnOp};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::backoff::{Backoff, BackoffState};
use crate::discovery::normalize_target;
use crate::error::{Error, etcd_call};
use crate::value::{Endpoint, Metadata};

/// etcd's default limit of operations per transaction.
const MAX_TXN_OPS: usize = 128;

/// Options and constructor of a [`SharedLease`].
#[derive(Clone)]
pub struct SharedLeaseBuilder {
    client: Client,
    ttl: Duration,
    backoff: Backoff,
    request_timeout: Duration,
}

impl std::fmt::Debug for SharedLeaseBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLeaseBuilder")
            .field("ttl", &self.ttl)
            .field("backoff", &self.backoff)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

impl SharedLeaseBuilder {
    /// Lease TTL, whole seconds, at least 2 s (default 10 s). Keys vanish this long after the
    /// process stops keeping the lease alive.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Backoff between attempts to re-grant a lost lease (default 0.5 s ×1.6 up to 30 s).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Deadline of each etcd request (default 5 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Grants the lease (failing if etcd cannot be reached) and starts keeping it alive.
    pub async fn grant(self) -> Result<SharedLease, Error> {
        let ttl_secs = i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX);
        if ttl_secs < 2 {
            return Err(Error::Config(format!(
                "lease TTL {:?} is below 2 s",
                self.ttl
            )));
        }
        let mut task = LeaseTask {
            client: self.client,
            ttl_secs,
            request_timeout: self.request_timeout,
            backoff: BackoffState::new(self.backoff),
            desired: BTreeMap::new(),
            lease: None,
            id: watch::Sender::new(None),
        };
        task.acquire().await?;
        let id = task.id.subscribe();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(task.run(rx));
        Ok(SharedLease {
            inner: Arc::new(LeaseHandle {
                tx,
                id,
                ttl: Duration::from_secs(ttl_secs.unsigned_abs()),
            }),
        })
    }
}

/// An etcd lease kept alive in the background and shared by [`Registration`]s (see the module
/// docs). Cheap to clone.
#[derive(Clone, Debug)]
pub struct SharedLease {
    inner: Arc<LeaseHandle>,
}

#[derive(Debug)]
struct LeaseHandle {
    tx: mpsc::UnboundedSender<Command>,
    id: watch::Receiver<Option<i64>>,
    ttl: Duration,
}

impl SharedLease {
    /// A builder for a lease granted through `client`.
    pub fn builder(client: Client) -> SharedLeaseBuilder {
        SharedLeaseBuilder {
            client,
            ttl: Duration::from_secs(10),
            backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(30)),
            request_timeout: Duration::from_secs(5),
        }
    }

    /// Grants a lease with `ttl` and default options.
    pub async fn grant(client: Client, ttl: Duration) -> Result<SharedLease, Error> {
        Self::builder(client).ttl(ttl).grant().await
    }

    /// The current lease id; `None` while a lost lease is being re-granted. It changes after
    /// every re-grant.
    pub fn id(&self) -> Option<i64> {
        *self.inner.id.borrow()
    }

    /// The lease TTL.
    pub fn ttl(&self) -> Duration {
        self.inner.ttl
    }

    /// Registers `endpoint` under `target` (key `<target>/<addr>`) on this lease, returning once
    /// the key is written. The key is kept (re-put after a lease loss) until the returned
    /// [`Registration`] is dropped or deregistered.
    pub async fn register(&self, target: &str, endpoint: Endpoint) -> Result<Registration, Error> {
        let target = normalize_target(target)?;
        let key = format!("{target}/{}", endpoint.addr);
        let (reply, answer) = oneshot::channel();
        self.send(Command::Put {
            key: key.clone(),
            value: endpoint.encode(),
            reply,
        })?;
        answer.await.map_err(|_| Error::Stopped)??;
        Ok(Registration {
            key,
            endpoint,
            lease: self.clone(),
            active: true,
        })
    }

    /// Revokes the lease (deleting every key registered on it) and stops keeping it alive.
    /// Registrations still held become inert.
    pub async fn shutdown(self) -> Result<(), Error> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Shutdown { reply })?;
        answer.await.map_err(|_| Error::Stopped)?
    }

    fn send(&self, command: Command) -> Result<(), Error> {
        self.inner.tx.send(command).map_err(|_| Error::Stopped)
    }
}

/// Options and constructor of a [`Registration`] with its own lease.
#[derive(Clone, Debug)]
pub struct RegistrationBuilder {
    lease: SharedLeaseBuilder,
    target: String,
    addr: String,
    metadata: Metadata,
}

impl RegistrationBuilder {
    /// Metadata stored with the address (default `null`).
    pub fn metadata(mut self, metadata: impl Into<Metadata>) -> Self {
        self.metadata = metadata.into();
        self
    }

    /// Lease TTL (see [`SharedLeaseBuilder::ttl`]).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.lease = self.lease.ttl(ttl);
        self
    }

    /// Backoff of lease re-grants (see [`SharedLeaseBuilder::backoff`]).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.lease = self.lease.backoff(backoff);
        self
    }

    /// Deadline of each etcd request (see [`SharedLeaseBuilder::request_timeout`]).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.lease = self.lease.request_timeout(timeout);
        self
    }

    /// Grants a lease and writes the key.
    pub async fn register(self) -> Result<Registration, Error> {
        let endpoint = Endpoint::new(self.addr, self.metadata)?;
        let target = normalize_target(&self.target)?;
        let lease = self.lease.grant().await?;
        lease.register(&target, endpoint).await
    }
}

/// One registered endpoint (see the module docs). Dropping it deletes the key.
#[derive(Debug)]
pub struct Registration {
    key: String,
    endpoint: Endpoint,
    lease: SharedLease,
    active: bool,
}

impl Registration {
    /// A builder registering `addr` (`host:port`) under `target` on a lease of its own.
    pub fn builder(
        client: Client,
        target: impl Into<String>,
        addr: impl Into<String>,
    ) -> RegistrationBuilder {
        RegistrationBuilder {
            lease: SharedLease::builder(client),
            target: target.into(),
            addr: addr.into(),
            metadata: Metadata::null(),
        }
    }

    /// Registers `addr` under `target` with no metadata on a lease of its own (10 s TTL).
    pub async fn register(
        client: Client,
        target: impl Into<String>,
        addr: impl Into<String>,
    ) -> Result<Registration, Error> {
        Self::builder(client, target, addr).register().await
    }

    /// The etcd key, `<target>/<addr>`.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The registered endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The lease the key is attached to.
    pub fn lease(&self) -> &SharedLease {
        &self.lease
    }

    /// Deletes the key and waits for etcd to confirm.
    pub async fn deregister(mut self) -> Result<(), Error> {
        self.active = false;
        let (reply, answer) = oneshot::channel();
        self.lease.send(Command::Delete {
            key: self.key.clone(),
            reply: Some(reply),
        })?;
        answer.await.map_err(|_| Error::Stopped)?
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if self.active {
            // Best effort: fails only when the lease task is gone, whose lease then expires.
            let _ = self.lease.send(Command::Delete {
                key: self.key.clone(),
                reply: None,
            });
        }
    }
}

enum Command {
    Put {
        key: String,
        value: String,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Delete {
        key: String,
        reply: Option<oneshot::Sender<Result<(), Error>>>,
    },
    Shutdown {
        reply: oneshot::Sender<Result<(), Error>>,
    },
}

/// How a keepalive session ended.
enum SessionEnd {
    /// Every handle is gone, or shutdown was requested.
    Stop,
    /// etcd says the lease no longer exists, or it expired while unconfirmed.
    LeaseLost(String),
    /// The keepalive stream failed; the lease may still be alive.
    Broken(String),
}

struct LeaseTask {
    client: Client,
    ttl_secs: i64,
    request_timeout: Duration,
    backoff: BackoffState,
    desired: BTreeMap<String, String>,
    /// The current lease and when etcd last confirmed it (grant or keepalive).
    lease: Option<(i64, Instant)>,
    id: watch::Sender<Option<i64>>,
}

impl LeaseTask {
    fn ttl(&self) -> Duration {
        Duration::from_secs(self.ttl_secs.unsigned_abs())
    }

    /// Grants a new lease and puts every desired key under it.
    async fn acquire(&mut self) -> Result<(), Error> {
        let resp = etcd_call(
            self.request_timeout,
            self.client.lease_grant(self.ttl_secs, None),
        )
        .await?;
        let id = resp.id();
        let granted = Instant::now();
        let ops: Vec<_> = self
            .desired
            .iter()
            .map(|(k, v)| {
                TxnOp::put(
                    k.as_str(),
                    v.as_str(),
                    Some(PutOptions::new().with_lease(id)),
                )
            })
            .collect();
        for chunk in ops.chunks(MAX_TXN_OPS) {
            let txn = Txn::new().and_then(chunk.to_vec());
            if let Err(e) = etcd_call(self.request_timeout, self.client.txn(txn)).await {
                // The fresh lease holds no complete set; let it expire and start over.
                let _ = etcd_call(self.request_timeout, self.client.lease_revoke(id)).await;
                return Err(e);
            }
        }
        tracing::info!(
            lease = id,
            keys = self.desired.len(),
            ttl = self.ttl_secs,
            "lease granted, keys registered"
        );
        self.lease = Some((id, granted));
        self.id.send_replace(Some(id));
        Ok(())
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>) {
        loop {
            if self.lease.is_none() {
                match self.acquire().await {
                    Ok(()) => self.backoff.reset(),
                    Err(e) => {
                        let delay = self.backoff.next_delay();
                        tracing::warn!(error = %e, ?delay, keys = self.desired.len(), "re-granting the lease failed; retrying");
                        if self.idle(&mut rx, delay).await {
                            return self.stop().await;
                        }
                        continue;
                    }
                }
            }
            match self.session(&mut rx).await {
                SessionEnd::Stop => return self.stop().await,
                SessionEnd::LeaseLost(reason) => {
                    tracing::warn!(%reason, keys = self.desired.len(), "lease lost; re-granting and re-registering");
                    self.lease = None;
                    self.id.send_replace(None);
                }
                SessionEnd::Broken(reason) => {
                    let delay = self.backoff.next_delay();
                    tracing::warn!(%reason, ?delay, "lease keepalive broken; retrying");
                    if self.idle(&mut rx, delay).await {
                        return self.stop().await;
                    }
                    if let Some((_, confirmed)) = self.lease
                        && confirmed.elapsed() >= self.ttl()
                    {
                        tracing::warn!("lease unconfirmed for a whole TTL; assuming it expired");
                        self.lease = None;
                        self.id.send_replace(None);
                    }
                }
            }
        }
    }

    /// Waits `delay` while serving commands; returns true when the task must stop.
    async fn idle(&mut self, rx: &mut mpsc::UnboundedReceiver<Command>, delay: Duration) -> bool {
        let until = Instant::now() + delay;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return false,
                command = rx.recv() => match command {
                    None => return true,
                    Some(command) => if self.handle(command).await { return true },
                },
            }
        }
    }

    /// Keeps the current lease alive while serving commands.
    async fn session(&mut self, rx: &mut mpsc::UnboundedReceiver<Command>) -> SessionEnd {
        let Some((id, _)) = self.lease else {
            return SessionEnd::LeaseLost("no lease".into());
        };
        let (mut keeper, mut stream) =
            match etcd_call(self.request_timeout, self.client.lease_keep_alive(id)).await {
                Ok(pair) => pair,
                Err(e) => return SessionEnd::Broken(e.to_string()),
            };
        let mut tick = tokio::time::interval(self.ttl() / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                command = rx.recv() => match command {
                    None => return SessionEnd::Stop,
                    Some(command) => if self.handle(command).await { return SessionEnd::Stop },
                },
                _ = tick.tick() => {
                    if let Some((_, confirmed)) = self.lease
                        && confirmed.elapsed() >= self.ttl()
                    {
                        return SessionEnd::LeaseLost("no keepalive answer for a whole TTL".into());
                    }
                    if let Err(e) = keeper.keep_alive().await {
                        return SessionEnd::Broken(e.to_string());
                    }
                }
                message = stream.message() => match message {
                    Ok(Some(resp)) if resp.ttl() <= 0 => {
                        return SessionEnd::LeaseLost(format!("etcd reports lease {id} gone"));
                    }
                    Ok(Some(_)) => {
                        self.lease = Some((id, Instant::now()));
                        self.backoff.reset();
                    }
                    Ok(None) => return SessionEnd::Broken("keepalive stream closed".into()),
                    Err(e) => return SessionEnd::Broken(e.to_string()),
                },
            }
        }
    }

    /// Serves one command; returns true when the task must stop.
    async fn handle(&mut self, command: Command) -> bool {
        match command {
            Command::Put { key, value, reply } => {
                let result = if self.desired.contains_key(&key) {
                    Err(Error::Config(format!(
                        "{key} is already registered on this lease"
                    )))
                } else {
                    match self.lease {
                        Some((id, _)) => {
                            let put = self.client.put(
                                key.as_str(),
                                value.as_str(),
                                Some(PutOptions::new().with_lease(id)),
                            );
                            etcd_call(self.request_timeout, put).await.map(|_| ())
                        }
                        None => Err(Error::NoLease),
                    }
                };
                if result.is_ok() {
                    tracing::info!(%key, "registered");
                    self.desired.insert(key, value);
                }
                let _ = reply.send(result);
                false
            }
            Command::Delete { key, reply } => {
                self.desired.remove(&key);
                let result = if self.lease.is_some() {
                    etcd_call(self.request_timeout, self.client.delete(key.as_str(), None))
                        .await
                        .map(|_| ())
                } else {
                    // No lease: the key is gone already or expires with the lost lease.
                    Ok(())
                };
                match &result {
                    Ok(()) => tracing::info!(%key, "deregistered"),
                    Err(e) => {
                        tracing::warn!(%key, error = %e, "deregistering failed; the key expires with the lease")
                    }
                }
                if let Some(reply) = reply {
                    let _ = reply.send(result);
                }
                false
            }
            Command::Shutdown { reply } => {
                let result = self.revoke().await;
                let _ = reply.send(result);
                true
            }
        }
    }

    async fn revoke(&mut self) -> Result<(), Error> {
        self.desired.clear();
        self.id.send_replace(None);
        match self.lease.take() {
            Some((id, _)) => etcd_call(self.request_timeout, self.client.lease_revoke(id))
                .await
                .map(|_| {
                    tracing::info!(lease = id, "lease revoked");
                }),
            None => Ok(()),
        }
    }

    async fn stop(mut self) {
        if let Err(e) = self.revoke().await {
            tracing::warn!(error = %e, "revoking the lease failed; it expires after its TTL");
        }
    }
}
