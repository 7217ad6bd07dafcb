//! Self-registration, the server side of etcd's gRPC naming: a server puts
//! `<target>/<addr>` → `{"Op":0,"Addr":…,"Metadata":…}` under a lease that it keeps alive.
//!
//! A [`SharedLease`] owns one etcd lease, kept alive (every TTL/3) by the shared
//! [`KeptLease`](registrar_etcd::KeptLease) with its one expiry policy (the operator's writer
//! uses the same): the lease is gone only when etcd says so (a keepalive answered with TTL 0,
//! or "lease not found" on a keepalive or a put), never because a local clock ran out. While
//! etcd cannot be reached the keepalives are retried and the lease is kept; if it survived the
//! outage, nothing is granted or put again. If etcd says it is gone (revoked, expired, or etcd
//! lost its data), a new lease is granted and every registered key put again under it,
//! retrying forever with backoff: registrations never silently stop. Several
//! [`Registration`]s can share one lease, so keepalive cost does not grow with them. Dropping a `Registration` deletes its key; when the lease and all its
//! registrations are dropped, the lease is revoked. For a clean shutdown await
//! [`Registration::deregister`] or [`SharedLease::shutdown`]: background work cannot run once
//! the runtime is gone (the keys then vanish when the TTL ends).
//!
//! Each registered key is also watched (its [`guard`]): a key deleted or overwritten by someone
//! else while the lease lives is put back at once under the current lease.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, PutOptions, Txn, TxnOp};
use registrar_etcd::{KeptLease, LeaseState, is_lease_not_found};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::backoff::{Backoff, BackoffState};
use crate::discovery::normalize_target;
use crate::error::{Error, etcd_call};
use crate::value::{Endpoint, Metadata};

mod guard;

use guard::{Guards, Seen};

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

    /// Backoff between attempts to reopen a failing keepalive stream, to re-grant a lost lease
    /// and to put the keys again (default 0.5 s ×1.6 up to 30 s).
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
            return Err(Error::config(format!(
                "lease TTL {:?} is below 2 s",
                self.ttl
            )));
        }
        let lease = KeptLease::builder(
            self.client.clone(),
            ttl_secs,
            BackoffState::new(self.backoff),
        )
        .request_timeout(self.request_timeout)
        .grant()
        .await?;
        let id = lease.state();
        let (tx, rx) = mpsc::unbounded_channel();
        let (seen_tx, seen_rx) = mpsc::unbounded_channel();
        let task = LeaseTask {
            client: self.client,
            request_timeout: self.request_timeout,
            backoff: BackoffState::new(self.backoff),
            desired: BTreeMap::new(),
            state: lease.state(),
            written: lease.id(),
            put_again_at: None,
            lease: Some(lease),
            guards: Guards::default(),
            guard_backoff: self.backoff,
            seen_tx,
        };
        tokio::spawn(task.run(rx, seen_rx));
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
    id: watch::Receiver<LeaseState>,
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

    /// The current lease id; `None` while a lost lease is being re-granted, and after the
    /// lease was revoked. It changes after every re-grant.
    pub fn id(&self) -> Option<i64> {
        // An error: the keepalive task is gone (the lease was revoked).
        self.inner.id.has_changed().ok()?;
        self.inner.id.borrow().id()
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
        answer.await.map_err(|_| Error::stopped())??;
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
        answer.await.map_err(|_| Error::stopped())?
    }

    fn send(&self, command: Command) -> Result<(), Error> {
        self.inner.tx.send(command).map_err(|_| Error::stopped())
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
        answer.await.map_err(|_| Error::stopped())?
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

/// Serves the handles' commands and puts every key again under a new lease.
struct LeaseTask {
    client: Client,
    request_timeout: Duration,
    /// Delays between attempts to put the keys again.
    backoff: BackoffState,
    desired: BTreeMap<String, String>,
    /// The lease, kept alive (and granted again when etcd says it is gone) by its own task;
    /// `None` once revoked.
    lease: Option<KeptLease>,
    state: watch::Receiver<LeaseState>,
    /// The lease every desired key is known to be put under.
    written: Option<i64>,
    /// When to try to put every key again under the current lease.
    put_again_at: Option<Instant>,
    /// The watchers of the desired keys.
    guards: Guards,
    guard_backoff: Backoff,
    /// Where the guards report.
    seen_tx: mpsc::UnboundedSender<Seen>,
}

impl LeaseTask {
    fn current(&self) -> Option<i64> {
        self.lease.as_ref().and_then(KeptLease::id)
    }

    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Command>,
        mut seen: mpsc::UnboundedReceiver<Seen>,
    ) {
        loop {
            let put_again_at = self.put_again_at;
            let put_again = async {
                match put_again_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                command = rx.recv() => match command {
                    None => return self.stop().await,
                    Some(command) => if self.handle(command).await { return },
                },
                changed = self.state.changed() => {
                    if changed.is_err() {
                        // The lease's task never ends by itself; nothing more to keep.
                        return self.stop().await;
                    }
                    let id = self.state.borrow_and_update().id();
                    if id.is_some() && id != self.written && self.put_again_at.is_none() {
                        tracing::warn!(lease = ?id, keys = self.desired.len(), "new lease; registering every key again");
                        self.put_again_at = Some(Instant::now());
                    }
                }
                () = put_again => self.put_again().await,
                Some(seen) = seen.recv() => self.restore(seen).await,
            }
        }
    }

    /// Puts a desired key back when its guard saw it deleted, overwritten or under another
    /// lease than the current one; on failure, every key is put again later.
    async fn restore(&mut self, seen: Seen) {
        let Some(value) = self.desired.get(&seen.key) else {
            return;
        };
        let Some(id) = self.current() else {
            // Being granted: every key is put again under the new lease.
            return;
        };
        if seen.state == Some((true, id)) || self.put_again_at.is_some() {
            return;
        }
        tracing::warn!(key = %seen.key, state = ?seen.state, lease = id, "registered key deleted or changed by someone else; putting it back");
        let put = self.client.put(
            seen.key.as_str(),
            value.as_str(),
            Some(PutOptions::new().with_lease(id)),
        );
        if let Err(e) = etcd_call(self.request_timeout, put).await {
            if let Some(source) = e.etcd_source()
                && is_lease_not_found(source)
                && let Some(lease) = &self.lease
            {
                lease.report_not_found(id);
            }
            let delay = self.backoff.next_delay();
            tracing::warn!(key = %seen.key, error = %e, ?delay, "putting the key back failed; retrying");
            self.put_again_at = Some(Instant::now() + delay);
        }
    }

    /// Puts every desired key under the current lease; on failure, tries again later.
    async fn put_again(&mut self) {
        self.put_again_at = None;
        let Some(id) = self.current() else {
            // Being granted: the new id triggers the next attempt.
            return;
        };
        match self.put_all(id).await {
            Ok(()) => {
                tracing::info!(
                    lease = id,
                    keys = self.desired.len(),
                    "keys registered again"
                );
                self.written = Some(id);
                self.backoff.reset();
            }
            Err(e) => {
                if let Some(source) = e.etcd_source()
                    && is_lease_not_found(source)
                    && let Some(lease) = &self.lease
                {
                    lease.report_not_found(id);
                }
                let delay = self.backoff.next_delay();
                tracing::warn!(error = %e, ?delay, keys = self.desired.len(), "registering the keys again failed; retrying");
                self.put_again_at = Some(Instant::now() + delay);
            }
        }
    }

    async fn put_all(&mut self, id: i64) -> Result<(), Error> {
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
            etcd_call(self.request_timeout, self.client.txn(txn)).await?;
        }
        Ok(())
    }

    /// Serves one command; returns true when the task must stop.
    async fn handle(&mut self, command: Command) -> bool {
        match command {
            Command::Put { key, value, reply } => {
                let result = if self.desired.contains_key(&key) {
                    Err(Error::config(format!(
                        "{key} is already registered on this lease"
                    )))
                } else {
                    match self.current() {
                        Some(id) => {
                            let put = self.client.put(
                                key.as_str(),
                                value.as_str(),
                                Some(PutOptions::new().with_lease(id)),
                            );
                            let result = etcd_call(self.request_timeout, put).await.map(|_| ());
                            if let Some(source) = result.as_ref().err().and_then(Error::etcd_source)
                                && is_lease_not_found(source)
                                && let Some(lease) = &self.lease
                            {
                                lease.report_not_found(id);
                            }
                            result
                        }
                        None => Err(Error::no_lease()),
                    }
                };
                if result.is_ok() {
                    tracing::info!(%key, "registered");
                    self.guards.start(
                        &self.client,
                        &key,
                        &value,
                        self.guard_backoff,
                        self.request_timeout,
                        &self.seen_tx,
                    );
                    self.desired.insert(key, value);
                }
                let _ = reply.send(result);
                false
            }
            Command::Delete { key, reply } => {
                self.guards.stop(&key);
                self.desired.remove(&key);
                let result = if self.current().is_some() {
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
        self.guards.stop_all();
        self.desired.clear();
        match self.lease.take() {
            Some(lease) => lease.revoke().await.map_err(Error::from),
            None => Ok(()),
        }
    }

    async fn stop(mut self) {
        if let Err(e) = self.revoke().await {
            tracing::warn!(error = %e, "revoking the lease failed; it expires after its TTL");
        }
    }
}
