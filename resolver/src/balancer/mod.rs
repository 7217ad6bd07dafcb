//! The client-side balancer: a [`tower::Service`] (hence a [`tonic::client::GrpcService`]) that
//! sends each call to the next READY backend of a target, round-robin.
//!
//! - One HTTP/2 connection per distinct backend address (keys naming the same `Addr` share it).
//! - Connectivity is tracked per backend ([`ConnectivityState`]); only READY backends are picked,
//!   in true round-robin order from a random start. Failing backends are retried with gRPC's
//!   connection backoff; a lost connection is redialed at once.
//! - With no READY backend a call waits up to the configured time (and never past its own
//!   `grpc-timeout`), then fails with `Unavailable`.
//! - A backend removed from etcd leaves the picker at once; calls already sent to it finish.
//! - A call that fails without having reached a backend's application (its connection got
//!   GOAWAY or closed between the pick and the opening of the HTTP/2 stream, or the stream was
//!   refused) is sent again to another backend, as gRPC's transparent retry does.
//! - Opt-in health checking (gRFC A17, [`BalancerBuilder::health_check`]): a READY backend is
//!   picked only while its `grpc.health.v1.Health/Watch` stream says SERVING.
//! - Opt-in outlier ejection (gRFC A50, [`BalancerBuilder::outlier_detection`]): calls count
//!   their outcome per backend as they complete; a periodic sweep ejects backends that fail far
//!   more than the others (their connection stays open) and brings them back later.
//! - Opt-in zone preference ([`BalancerBuilder::zone`]): only backends in the client's zone
//!   while at least `min_local` of them are pickable.
//! - Opt-in weights ([`BalancerBuilder::weighted`]): the endpoints' `weight` metadata through
//!   gRPC's static-stride scheduler.
//! - [`Balancer::snapshot`] shows every backend's zone, weight, state and picks;
//!   [`Balancer::watch_pick_set`] follows the pick set as it changes.

#[cfg(any(test, feature = "bench-internals"))]
pub mod bench;
mod calls;
mod connector;
mod duplicates;
mod failover;
mod groups;
mod health;
mod locality;
mod manager;
mod meta;
mod outlier;
mod pick_watch;
mod picker;
mod pool;
mod replay;
mod snapshot;
mod source;
mod stride;
mod subchannel;
mod unsent;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use etcd_client::Client;
use futures::future::BoxFuture;
use tonic::body::Body;
use tonic::transport::{ClientTlsConfig, Endpoint};
use tower::ServiceExt;

use crate::backoff::Backoff;
use crate::discovery::{Resolver, ResolverBuilder};
use crate::error::Error;
pub use failover::{FailoverBalancer, FailoverBuilder, FailoverSnapshot, GroupSnapshot};
use health::HealthCheck;
pub use health::HealthState;
use locality::ZonePreference;
use manager::EndpointFactory;
pub use outlier::{FailurePercentageEjection, OutlierDetection, SuccessRateEjection};
pub use pick_watch::PickSetWatch;
use pool::{AbortOnDrop, Picked, Pool, Routing};
use replay::{REPLAY_LIMIT, Replay};
pub use snapshot::{BackendSnapshot, BackendState, RoutingSnapshot, ZoneFilter};
use source::{PickSet, Source};
use subchannel::ConnectPolicy;
use unsent::unsent;

/// Connectivity of one backend, as in gRPC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConnectivityState {
    /// Not connected and not trying (just added, or its connection was just lost).
    Idle,
    /// A connection attempt is in progress.
    Connecting,
    /// Connected: calls are sent here.
    Ready,
    /// The last attempt failed; the next one starts when the backoff window ends.
    TransientFailure,
}

/// The state of one backend, from [`Balancer::backends`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackendStatus {
    /// `host:port`.
    pub addr: String,
    /// Current connectivity.
    pub state: ConnectivityState,
    /// Why the last connection attempt failed, while not READY.
    pub last_error: Option<String>,
}

/// What health checking says of one backend, from [`Balancer::health`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackendHealth {
    /// `host:port`.
    pub addr: String,
    /// The health of its current connection ([`HealthState::Off`] when health checking is off).
    pub health: HealthState,
    /// Whether [outlier ejection](BalancerBuilder::outlier_detection) keeps it out now.
    pub ejected: bool,
    /// Whether calls may go to it now: READY, healthy and not ejected.
    pub pickable: bool,
    /// Why its last health Watch failed, while [`HealthState::Failed`].
    pub last_error: Option<String>,
}

type Configure = dyn Fn(Endpoint) -> Result<Endpoint, tonic::transport::Error> + Send + Sync;

/// Options and constructor of a [`Balancer`].
pub struct BalancerBuilder {
    resolver: ResolverBuilder,
    tls: Option<ClientTlsConfig>,
    configure: Option<Arc<Configure>>,
    backoff: Backoff,
    min_connect_timeout: Duration,
    wait_for_ready: Duration,
    health_service: Option<String>,
    health_backoff: Backoff,
    outlier: Option<OutlierDetection>,
    zone: Option<String>,
    min_local: usize,
    weighted: bool,
}

/// The environment variable naming the client's zone when [`BalancerBuilder::zone`] is not set.
pub const ZONE_ENV: &str = "REGISTRAR_ZONE";

impl fmt::Debug for BalancerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BalancerBuilder")
            .field("resolver", &self.resolver)
            .field("tls", &self.tls)
            .field("configure", &self.configure.is_some())
            .field("backoff", &self.backoff)
            .field("min_connect_timeout", &self.min_connect_timeout)
            .field("wait_for_ready", &self.wait_for_ready)
            .field("health_service", &self.health_service)
            .field("health_backoff", &self.health_backoff)
            .field("outlier", &self.outlier)
            .field("zone", &self.zone)
            .field("min_local", &self.min_local)
            .field("weighted", &self.weighted)
            .finish()
    }
}

impl BalancerBuilder {
    /// Connect to backends with TLS (`https`). Backends are usually registered by IP address,
    /// so set the name to verify with [`ClientTlsConfig::domain_name`].
    pub fn tls(mut self, tls: ClientTlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Adjusts every backend's [`Endpoint`] (request timeout, HTTP/2 keepalive, window sizes,
    /// user agent, concurrency limit, …). It receives the endpoint for `http(s)://<addr>` with
    /// TLS already applied. [`Endpoint::connect_timeout`] bounds the TCP connect; the whole
    /// attempt is bounded by the connection backoff (see [`min_connect_timeout`](Self::min_connect_timeout)).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # fn f(b: registrar_resolver::BalancerBuilder) -> registrar_resolver::BalancerBuilder {
    /// b.configure_endpoint(|e| {
    ///     Ok(e.timeout(Duration::from_secs(5))
    ///         .http2_keep_alive_interval(Duration::from_secs(10))
    ///         .keep_alive_timeout(Duration::from_secs(5)))
    /// })
    /// # }
    /// ```
    pub fn configure_endpoint(
        mut self,
        f: impl Fn(Endpoint) -> Result<Endpoint, tonic::transport::Error> + Send + Sync + 'static,
    ) -> Self {
        self.configure = Some(Arc::new(f));
        self
    }

    /// Backoff between connection attempts to a failing backend (default [`Backoff::GRPC`]:
    /// 1 s, ×1.6, at most 120 s, jitter 0.2).
    pub fn connection_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The least time a connection attempt is given (default 20 s, as in gRPC).
    pub fn min_connect_timeout(mut self, timeout: Duration) -> Self {
        self.min_connect_timeout = timeout;
        self
    }

    /// How long a call waits for a READY backend before failing with `Unavailable`
    /// (default 10 s; a shorter `grpc-timeout` on the call wins).
    pub fn wait_for_ready_timeout(mut self, timeout: Duration) -> Self {
        self.wait_for_ready = timeout;
        self
    }

    /// Turns on client-side health checking (gRFC A17) for `service` (`""`: the whole server;
    /// off by default).
    ///
    /// Each backend connection carries one `grpc.health.v1.Health/Watch` stream for `service`
    /// (on the same HTTP/2 connection as the calls; no extra connection). A READY backend is
    /// picked only while the last answer is SERVING: it is not picked before the first answer,
    /// and NOT_SERVING, UNKNOWN or SERVICE_UNKNOWN take it out of the pick set without closing
    /// its connection; SERVING brings it back on the same connection. A server without the
    /// health service (`UNIMPLEMENTED`) counts as healthy: one error is logged and the Watch is
    /// not sent again on that connection. Any other failure of the stream takes the backend out
    /// and the Watch is sent again, after [`health_check_backoff`](Self::health_check_backoff)
    /// unless the failed stream had delivered a message (then at once, and the backoff starts
    /// over). [`Balancer::health`] shows what each backend's health checking says.
    ///
    /// A server pairs this with [`tonic_health`]: `health_reporter()` gives the service to add
    /// and the reporter that sets NOT_SERVING when the server starts draining.
    ///
    /// ```
    /// # fn f(b: registrar_resolver::BalancerBuilder) -> registrar_resolver::BalancerBuilder {
    /// b.health_check("greeter.v1.Greeter")
    /// # }
    /// ```
    pub fn health_check(mut self, service: impl Into<String>) -> Self {
        self.health_service = Some(service.into());
        self
    }

    /// Backoff before sending a health Watch again after one failed without any answer
    /// (default [`Backoff::GRPC`]: 1 s, ×1.6, at most 120 s, jitter 0.2). Only used with
    /// [`health_check`](Self::health_check).
    pub fn health_check_backoff(mut self, backoff: Backoff) -> Self {
        self.health_backoff = backoff;
        self
    }

    /// Turns on outlier ejection (gRFC A50; off by default): every call's outcome is counted
    /// per backend when it completes (one atomic add, no lock), and every
    /// [`interval`](OutlierDetection::interval) a sweep ejects the backends that fail much more
    /// than the others from the pick set, for `base_ejection_time × n` (the n-th ejection in a
    /// row; at most `max_ejection_time`). An ejected backend keeps its connection.
    ///
    /// Two checks, each with A50's defaults ([`OutlierDetection::default`]): *success rate*
    /// (among at least 5 backends with at least 100 calls in the interval, eject one below
    /// `mean − 1.9 × stdev`) and *failure percentage* (among at least 5 backends with at least
    /// 50 calls, eject one with more than 85 % failures). At most `max_ejection_percent` (10)
    /// of the backends are ejected at once, but one always may be. A failure is a transport
    /// error or a status in [`failure_codes`](OutlierDetection::failure_codes) (UNAVAILABLE,
    /// INTERNAL, UNKNOWN, DATA_LOSS); errors of the caller's making such as NOT_FOUND or
    /// INVALID_ARGUMENT never count. [`Balancer::health`] shows which backends are ejected.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # fn f(b: registrar_resolver::BalancerBuilder) -> registrar_resolver::BalancerBuilder {
    /// use registrar_resolver::OutlierDetection;
    ///
    /// let mut outliers = OutlierDetection::default();
    /// outliers.interval = Duration::from_secs(5);
    /// outliers.failure_percentage = None; // the success-rate check only
    /// b.outlier_detection(outliers)
    /// # }
    /// ```
    pub fn outlier_detection(mut self, config: OutlierDetection) -> Self {
        self.outlier = Some(config);
        self
    }

    /// Turns on zone preference (off by default; when this is not called, the zone is read
    /// from the `REGISTRAR_ZONE` environment variable at [`build`](Self::build), if set and
    /// not empty): calls go only to backends whose `zone` metadata is `zone` while at least
    /// [`min_local`](Self::min_local) of them are pickable (READY and, with the policies that
    /// are on, healthy and not ejected); otherwise to every zone. This is decided again at
    /// every change of the pick set, so traffic leaves the zone when its last backend goes and
    /// comes back when one returns. When some backend has no `zone` metadata, or none is in
    /// `zone`, there is no filtering and one warning is logged.
    /// [`Balancer::snapshot`] shows what was decided.
    ///
    /// ```
    /// # fn f(b: registrar_resolver::BalancerBuilder) -> registrar_resolver::BalancerBuilder {
    /// b.zone("eu-west-1a").min_local(2)
    /// # }
    /// ```
    pub fn zone(mut self, zone: impl Into<String>) -> Self {
        self.zone = Some(zone.into());
        self
    }

    /// How many same-zone backends must be pickable for calls to stay in the client's
    /// [zone](Self::zone) (default 1; 0 counts as 1).
    pub fn min_local(mut self, min_local: usize) -> Self {
        self.min_local = min_local;
        self
    }

    /// Turns on weights (off by default): each backend gets a share of the calls proportional
    /// to its endpoint's `weight` metadata (a positive integer, as a string such as `"3"`),
    /// picked by gRPC's static-stride scheduler (lock-free, a few atomic increments per pick on
    /// average). A backend with no valid weight (missing, zero, negative, not a number) weighs
    /// the mean of the others and is counted in [`RoutingSnapshot::weights_defaulted`] (and,
    /// when set but not valid, in [`RoutingSnapshot::weights_invalid`]); a weight is capped at
    /// 10 × the mean. Equal weights give exact round-robin, and a change of weights goes on
    /// with the same pick sequence. Weights apply among the backends the
    /// [zone preference](Self::zone) admits.
    pub fn weighted(mut self, on: bool) -> Self {
        self.weighted = on;
        self
    }

    /// Backoff between attempts to reach etcd again (see [`ResolverBuilder::backoff`]).
    pub fn etcd_backoff(mut self, backoff: Backoff) -> Self {
        self.resolver = self.resolver.backoff(backoff);
        self
    }

    /// Deadline of each etcd list/watch request (see [`ResolverBuilder::request_timeout`]).
    pub fn etcd_request_timeout(mut self, timeout: Duration) -> Self {
        self.resolver = self.resolver.request_timeout(timeout);
        self
    }

    /// How often a live watch checks that etcd's history did not go back (see
    /// [`ResolverBuilder::history_check`]; default 5 s).
    pub fn etcd_history_check(mut self, every: Duration) -> Self {
        self.resolver = self.resolver.history_check(every);
        self
    }

    /// Reads the target's endpoints from etcd (failing if etcd cannot be read), starts watching
    /// them and connecting to the backends. Returns without waiting for connections: calls wait
    /// for the first READY backend. Background tasks stop when the last clone is dropped.
    pub async fn build(self) -> Result<Balancer, Error> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let tls = self.tls;
        let configure = self.configure;
        let factory: Arc<EndpointFactory> = Arc::new(move |addr: &str| {
            let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))?;
            if let Some(tls) = &tls {
                endpoint = endpoint.tls_config(tls.clone())?;
            }
            match &configure {
                Some(f) => f(endpoint),
                None => Ok(endpoint),
            }
        });
        // Fail early on settings that cannot work for any address.
        factory("127.0.0.1:1")?;
        let resolver = self.resolver.build().await?;
        let zone = self
            .zone
            .or_else(|| std::env::var(ZONE_ENV).ok())
            .filter(|z| !z.is_empty());
        let routing = Routing {
            zone: zone.map(|zone| ZonePreference {
                zone,
                min_local: self.min_local.max(1),
            }),
            weighted: self.weighted,
        };
        let pool = Arc::new(
            Pool::counting(
                self.outlier
                    .as_ref()
                    .map(|o| calls::FailureCodes::new(&o.failure_codes)),
            )
            .routing(routing),
        );
        let sweeper = self
            .outlier
            .map(|config| AbortOnDrop(tokio::spawn(sweep(pool.clone(), config))));
        let policy = ConnectPolicy {
            backoff: self.backoff,
            min_connect_timeout: self.min_connect_timeout,
            health: self.health_service.map(|service| HealthCheck {
                service,
                backoff: self.health_backoff,
            }),
        };
        let manager = tokio::spawn(manager::manage(
            resolver.clone(),
            pool.clone(),
            factory,
            policy,
        ));
        Ok(Balancer {
            inner: Arc::new(Inner {
                pool,
                resolver,
                wait_for_ready: self.wait_for_ready,
                _manager: AbortOnDrop(manager),
                _sweeper: sweeper,
            }),
        })
    }
}

/// A round-robin gRPC channel over the backends registered in etcd under one target.
///
/// Use it wherever a tonic [`Channel`](tonic::transport::Channel) goes: it is `Clone` and
/// implements [`tower::Service`] for HTTP requests, hence [`tonic::client::GrpcService`]. Calls
/// that cannot be served fail with a [`tonic::Status`] (boxed in the service error), which tonic
/// clients return as is.
#[derive(Clone)]
pub struct Balancer {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Arc<Pool>,
    resolver: Resolver,
    wait_for_ready: Duration,
    _manager: AbortOnDrop,
    _sweeper: Option<AbortOnDrop>,
}

impl fmt::Debug for Balancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balancer")
            .field("target", &self.inner.resolver.target())
            .field("backends", &self.inner.pool.statuses())
            .finish()
    }
}

impl Balancer {
    /// A builder for a balancer over `target` (e.g. `registrar/shop/greeter`).
    pub fn builder(client: Client, target: impl Into<String>) -> BalancerBuilder {
        BalancerBuilder {
            resolver: Resolver::builder(client, target),
            tls: None,
            configure: None,
            backoff: Backoff::GRPC,
            min_connect_timeout: Duration::from_secs(20),
            wait_for_ready: Duration::from_secs(10),
            health_service: None,
            health_backoff: health::DEFAULT_BACKOFF,
            outlier: None,
            zone: None,
            min_local: 1,
            weighted: false,
        }
    }

    /// The resolver feeding this balancer.
    pub fn resolver(&self) -> &Resolver {
        &self.inner.resolver
    }

    /// Every known backend and its connectivity, ordered by address.
    pub fn backends(&self) -> Vec<BackendStatus> {
        self.inner.pool.statuses()
    }

    /// Number of backends calls can go to: READY (and, with
    /// [health checking](BalancerBuilder::health_check), healthy; not ejected; with
    /// [zone preference](BalancerBuilder::zone), only those the zone filter admits).
    pub fn ready_count(&self) -> usize {
        self.inner.pool.picker().len()
    }

    /// What health checking says of every known backend, ordered by address.
    pub fn health(&self) -> Vec<BackendHealth> {
        self.inner.pool.health()
    }

    /// How the balancer routes now: every known backend (ordered by address) with its zone,
    /// weight, state and picks, and what the [zone preference](BalancerBuilder::zone) decided.
    pub fn snapshot(&self) -> RoutingSnapshot {
        self.inner.pool.snapshot()
    }

    /// Follows the pick set (the backends calls can go to now) as it changes, without polling
    /// [`snapshot`](Self::snapshot).
    pub fn watch_pick_set(&self) -> PickSetWatch {
        PickSetWatch::new(self.inner.pool.subscribe())
    }
}

/// Future of a call through the [`Balancer`].
pub struct ResponseFuture {
    inner: BoxFuture<'static, Result<http::Response<Body>, tower::BoxError>>,
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResponseFuture")
    }
}

impl Future for ResponseFuture {
    type Output = Result<http::Response<Body>, tower::BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl tower::Service<http::Request<Body>> for Balancer {
    type Response = http::Response<Body>;
    type Error = tower::BoxError;
    type Future = ResponseFuture;

    /// Always ready: waiting for a backend happens per call, bounded in time.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // The first pick is made now, in call order, so that round-robin follows the calls.
        let picked = self.inner.pool.pick();
        let wait = grpc_timeout(request.headers()).map_or(self.inner.wait_for_ready, |t| {
            t.min(self.inner.wait_for_ready)
        });
        ResponseFuture {
            inner: Box::pin(send(self.inner.pool.clone(), picked, wait, request)),
        }
    }
}

/// How many times one call is sent again after failing without reaching a backend. Each such
/// failure (but a refused stream) also takes its connection out of the picker, so retries land
/// on other connections; the bound only guards against a backend that keeps refusing.
const MAX_TRANSPARENT_RETRIES: usize = 8;

/// Sends `request` to `picked` (or the first backend READY within `wait`); a call that fails
/// without having reached the backend's application is sent again, to another backend when the
/// failure took its connection out, waiting for one within what is left of `wait`.
async fn send<S: Source>(
    pool: Arc<S>,
    mut picked: Option<Arc<Picked>>,
    wait: Duration,
    request: http::Request<Body>,
) -> Result<http::Response<Body>, tower::BoxError> {
    let deadline = tokio::time::Instant::now() + wait;
    let (parts, body) = request.into_parts();
    let body = Replay::new(body, REPLAY_LIMIT);
    let mut attempt = body.first();
    let mut retries = 0;
    loop {
        let backend = match picked.take() {
            Some(p) => p,
            None => wait_until(&*pool, deadline, wait).await?,
        };
        let request = http::Request::from_parts(parts.clone(), Body::new(attempt));
        // tonic's `Service::call` needs a handle of its own: a spare one of the connection,
        // given back as soon as the request is handed over.
        let mut channel = backend.take_channel();
        let response = match channel.ready().await {
            Ok(ready) => {
                let response = tower::Service::call(ready, request);
                backend.put_channel(channel);
                response.await
            }
            Err(e) => Err(e),
        };
        let error: tower::BoxError = match response {
            Ok(response) => {
                body.commit();
                return Ok(match &backend.outcome {
                    Some(outcome) => outcome.clone().watch(response),
                    None => response,
                });
            }
            Err(e) => e.into(),
        };
        let Some(why) = unsent(&*error) else {
            // A transport failure, unless it is the caller's own deadline.
            if let Some(outcome) = &backend.outcome
                && !error.is::<tonic::TimeoutExpired>()
            {
                outcome.transport_failure();
            }
            return Err(error);
        };
        if why.connection_unusable() {
            backend.alive.kill("a call failed on it before being sent");
        }
        let next = (retries < MAX_TRANSPARENT_RETRIES)
            .then(|| body.again())
            .flatten();
        let Some(next) = next else {
            tracing::debug!(
                addr = %backend.addr,
                ?why,
                retries,
                "call failed before reaching the backend; not retried"
            );
            return Err(error);
        };
        retries += 1;
        tracing::debug!(
            addr = %backend.addr,
            ?why,
            error = %error,
            "call failed before reaching the backend; sending it again"
        );
        attempt = next;
    }
}

/// Runs outlier ejection sweeps every `config.interval` (at least 1 ms) until aborted.
async fn sweep(pool: Arc<Pool>, config: OutlierDetection) {
    let every = config.interval.max(Duration::from_millis(1));
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        pool.sweep(&config, tokio::time::Instant::now(), &mut || {
            rand::Rng::random_range(&mut rand::rng(), 0..100)
        });
    }
}

/// Waits until a backend can be picked, at most `wait`.
#[cfg(test)]
async fn wait_for_ready(pool: &Pool, wait: Duration) -> Result<Arc<Picked>, tower::BoxError> {
    wait_until(pool, tokio::time::Instant::now() + wait, wait).await
}

/// Waits until a backend can be picked, at most until `deadline` (`wait` after the call began).
async fn wait_until<S: Source>(
    pool: &S,
    deadline: tokio::time::Instant,
    wait: Duration,
) -> Result<Arc<Picked>, tower::BoxError> {
    let mut pickers = pool.pick_sets();
    loop {
        if let Some(picked) = pickers.borrow_and_update().pick_next().map(Picked::count) {
            return Ok(picked);
        }
        // A picker can also become empty of live entries without being replaced (its only
        // connection just closed); the replacement follows at once, so waiting for it is right.
        match tokio::time::timeout_at(deadline, pickers.changed()).await {
            Ok(Ok(())) => continue,
            Ok(Err(_)) | Err(_) => {
                return Err(Box::new(tonic::Status::unavailable(format!(
                    "no ready backend within {wait:?}"
                ))));
            }
        }
    }
}

/// The `grpc-timeout` of a request: 1 to 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`).
pub(crate) fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    // Digits only: `u64::from_str` would also take a leading `+`.
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(v: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert("grpc-timeout", v.parse().unwrap());
        h
    }

    #[test]
    fn parses_grpc_timeout() {
        assert_eq!(grpc_timeout(&headers("5S")), Some(Duration::from_secs(5)));
        assert_eq!(
            grpc_timeout(&headers("250m")),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            grpc_timeout(&headers("2H")),
            Some(Duration::from_secs(7200))
        );
        assert_eq!(grpc_timeout(&headers("7u")), Some(Duration::from_micros(7)));
        assert_eq!(
            grpc_timeout(&headers("99999999n")),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in ["", "S", "5", "5x", "123456789S", "-1S", "1.5S"] {
            let mut h = http::HeaderMap::new();
            if let Ok(v) = bad.parse() {
                h.insert("grpc-timeout", v);
            }
            assert_eq!(grpc_timeout(&h), None, "{bad}");
        }
        assert_eq!(grpc_timeout(&http::HeaderMap::new()), None);
    }

    #[tokio::test]
    async fn empty_pool_fails_unavailable_after_the_wait() {
        let pool = Pool::new();
        let start = tokio::time::Instant::now();
        let err = wait_for_ready(&pool, Duration::from_millis(200))
            .await
            .unwrap_err();
        let status = err.downcast::<tonic::Status>().unwrap();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(200) && waited < Duration::from_secs(2));
    }
}
