//! Several targets with priority failover (multi-cluster): [`FailoverBalancer`] sends every call
//! to the first target (group) that has a pickable backend, each group being a [`Balancer`]
//! with its own etcd client, options and zone preference. The group choice is in
//! [`super::groups`].

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Request;
use tonic::body::Body;

use super::groups::{self, Layer};
use super::pool::AbortOnDrop;
use super::snapshot::RoutingSnapshot;
use super::{Balancer, BalancerBuilder, ResponseFuture, grpc_timeout, send};
use crate::error::Error;

/// Options and constructor of a [`FailoverBalancer`].
///
/// | option | default |
/// |---|---|
/// | [`target`](Self::target) | none: at least one is needed |
/// | [`stale_after`](Self::stale_after) | 60 s |
/// | [`wait_for_ready_timeout`](Self::wait_for_ready_timeout) | 10 s |
///
/// Every other option (TLS, backoff, health checking, outlier ejection, zone preference,
/// weights) is set per target on its [`BalancerBuilder`].
#[derive(Debug)]
#[must_use]
pub struct FailoverBuilder {
    groups: Vec<BalancerBuilder>,
    stale_after: Duration,
    wait_for_ready: Duration,
}

impl FailoverBuilder {
    /// Adds a target, after those already added (the first added has the highest priority).
    /// Its own options apply within its group, except
    /// [`wait_for_ready_timeout`](BalancerBuilder::wait_for_ready_timeout), which is the
    /// failover balancer's ([`Self::wait_for_ready_timeout`]).
    pub fn target(mut self, group: BalancerBuilder) -> Self {
        self.groups.push(group);
        self
    }

    /// How long a target's etcd may be unreachable before its group is *stale* (default 60 s).
    /// A group whose etcd is unreachable keeps its last known endpoints and its connections
    /// (fail-static) and stays where its priority puts it until then; a stale group is used
    /// only when no fresh group has a pickable backend. It is fresh again as soon as its etcd
    /// answers.
    pub fn stale_after(mut self, stale_after: Duration) -> Self {
        self.stale_after = stale_after;
        self
    }

    /// How long a call waits for a pickable backend in any group before failing with
    /// `Unavailable` (default 10 s; a shorter `grpc-timeout` on the call wins).
    pub fn wait_for_ready_timeout(mut self, timeout: Duration) -> Self {
        self.wait_for_ready = timeout;
        self
    }

    /// Builds every target's [`Balancer`] (failing if any target's etcd cannot be read now)
    /// and starts following them. Calls wait for the first pickable backend.
    pub async fn build(self) -> Result<FailoverBalancer, Error> {
        if self.groups.is_empty() {
            return Err(Error::config(
                "a failover balancer needs at least one target",
            ));
        }
        let mut balancers = Vec::with_capacity(self.groups.len());
        for group in self.groups {
            balancers.push(group.build().await?);
        }
        let layer = Arc::new(Layer::new(balancers));
        let mut tasks = Vec::new();
        for (i, balancer) in layer.balancers.iter().enumerate() {
            tasks.push(AbortOnDrop(tokio::spawn(groups::follow(layer.clone(), i))));
            tasks.push(AbortOnDrop(tokio::spawn(groups::staleness(
                balancer.resolver().connection(),
                layer.fresh[i].clone(),
                self.stale_after,
                balancer.resolver().target().to_owned(),
            ))));
        }
        Ok(FailoverBalancer {
            inner: Arc::new(Inner {
                layer,
                stale_after: self.stale_after,
                wait_for_ready: self.wait_for_ready,
                _tasks: tasks,
            }),
        })
    }
}

/// A gRPC channel over several targets in priority order, each a [`Balancer`] with its own etcd
/// client (for example the same service in two clusters, each registered by its own operator
/// under its own etcd or prefix).
///
/// - All calls go to the first group (target) with a pickable backend; within it, the group's
///   own routing applies (round-robin or weights, zone preference, health, ejection).
/// - When the group loses its last pickable backend, calls go to the next group at once (the
///   choice is rebuilt with the group's picker); they come back when one returns.
/// - A group whose etcd is unreachable keeps its endpoints and connections (fail-static); after
///   [`stale_after`](FailoverBuilder::stale_after) it is *stale* and used only when no fresh
///   group has a pickable backend.
/// - Backends are kept per (target, address): an address registered under two targets is two
///   backends, never merged, and is counted in [`FailoverSnapshot::duplicates`].
///
/// ```no_run
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use registrar_resolver::{Balancer, FailoverBalancer};
/// use registrar_resolver::etcd_client::Client;
///
/// let east = Client::connect(["http://127.0.0.1:2379"], None).await?;
/// let west = Client::connect(["http://127.0.0.1:3379"], None).await?;
/// let channel = FailoverBalancer::builder()
///     .target(Balancer::builder(east, "registrar/shop/greeter").zone("east-1a"))
///     .target(Balancer::builder(west, "registrar/shop/greeter"))
///     .stale_after(Duration::from_secs(30))
///     .build()
///     .await?;
/// // Use `channel` wherever a tonic Channel goes, e.g. `GreeterClient::new(channel)`.
/// # let _ = channel; Ok(()) }
/// ```
#[derive(Clone)]
pub struct FailoverBalancer {
    inner: Arc<Inner>,
}

struct Inner {
    layer: Arc<Layer>,
    stale_after: Duration,
    wait_for_ready: Duration,
    _tasks: Vec<AbortOnDrop>,
}

impl fmt::Debug for FailoverBalancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailoverBalancer")
            .field("groups", &self.inner.layer.balancers)
            .field("active", &self.inner.layer.choice().active())
            .finish()
    }
}

impl FailoverBalancer {
    /// A builder with no target yet; add them with [`FailoverBuilder::target`].
    pub fn builder() -> FailoverBuilder {
        FailoverBuilder {
            groups: Vec::new(),
            stale_after: Duration::from_secs(60),
            wait_for_ready: Duration::from_secs(10),
        }
    }

    /// The groups' balancers, by priority (for their backends, health and routing).
    pub fn groups(&self) -> &[Balancer] {
        &self.inner.layer.balancers
    }

    /// How the failover balancer routes now: each group's freshness and routing, the group calls
    /// go to, and the duplicated addresses.
    pub fn snapshot(&self) -> FailoverSnapshot {
        let layer = &self.inner.layer;
        let active = layer.choice().active();
        let (duplicates, duplicates_seen) = layer.duplicates();
        FailoverSnapshot {
            active,
            stale_after: self.inner.stale_after,
            duplicates,
            duplicates_seen,
            groups: layer
                .balancers
                .iter()
                .zip(&layer.fresh)
                .enumerate()
                .map(|(i, (b, fresh))| GroupSnapshot {
                    target: b.resolver().target().to_owned(),
                    etcd_connected: b.resolver().is_connected(),
                    stale: !*fresh.borrow(),
                    active: active == Some(i),
                    routing: b.snapshot(),
                })
                .collect(),
        }
    }
}

/// How a [`FailoverBalancer`] routes now, from [`FailoverBalancer::snapshot`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FailoverSnapshot {
    /// The group (index in priority order) calls go to now, if any has a pickable backend.
    pub active: Option<usize>,
    /// The configured [`stale_after`](FailoverBuilder::stale_after).
    pub stale_after: Duration,
    /// How many addresses are registered under more than one target now.
    pub duplicates: usize,
    /// How many times an address was found under a second target (a counter).
    pub duplicates_seen: u64,
    /// Every group, by priority.
    pub groups: Vec<GroupSnapshot>,
}

/// One group (target) in a [`FailoverSnapshot`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupSnapshot {
    /// Its target.
    pub target: String,
    /// Whether its etcd watch is established.
    pub etcd_connected: bool,
    /// Whether its etcd has been unreachable for longer than `stale_after`.
    pub stale: bool,
    /// Whether calls go to it now.
    pub active: bool,
    /// Its own routing (backends, zone decision, weights, picks); its backends'
    /// `in_pick_set` says whether they are picked when this group is active.
    pub routing: RoutingSnapshot,
}

impl tower::Service<Request<Body>> for FailoverBalancer {
    type Response = http::Response<Body>;
    type Error = tower::BoxError;
    type Future = ResponseFuture;

    /// Always ready: waiting for a backend happens per call, bounded in time.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let layer = &self.inner.layer;
        let picked = layer.pick();
        let wait = grpc_timeout(request.headers()).map_or(self.inner.wait_for_ready, |t| {
            t.min(self.inner.wait_for_ready)
        });
        ResponseFuture {
            inner: Box::pin(send(layer.clone(), picked, wait, request)),
        }
    }
}
