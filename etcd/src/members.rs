//! Keeping dead and frozen etcd members out of an etcd client's balanced endpoint set.
//!
//! etcd-client balances requests over all endpoints with tonic's balanced channel, whose
//! per-endpoint connections report ready even after their connect failed (etcdv3/etcd-client#39,
//! hyperium/tonic#1147): with one member of three dead, a third of all requests go to the dead
//! address and fail, and each failure restarts whatever made the request.
//!
//! [`connect`] builds the client over a balanced channel whose endpoint changes pass through a
//! guard task. The guard asks every member for its status every [`ProbeSettings::every`] (each
//! over its own connection, with a deadline of [`ProbeSettings::timeout`]) and keeps in the
//! balanced set only the members that answer and know a leader; a member that answers again is
//! put back. When no member is healthy, all of them stay in the set, so that requests fail fast
//! with the real error instead of waiting for an endpoint. Endpoints added or removed later
//! through [`Client::add_endpoint`]/[`Client::remove_endpoint`] are followed. The guard ends
//! when the last clone of the client is dropped.
//!
//! Taking a member out does not help the requests already in flight on it: a frozen member
//! never answers them, and a write that a follower forwarded to a leader that then died is lost
//! (etcd answers it only when the request's deadline ends). So whenever a member turns
//! unhealthy or the leader that the members report changes, the guard fails every unary request
//! then in flight with `UNAVAILABLE` at once; the caller retries on the healthy members.
//! Established streams (watches, lease keepalives) are not touched: their own keepalives and
//! errors tell their users.
//!
//! This file is shared by the resolver crate and the operator binary (which includes it by
//! path), so it uses nothing but etcd-client, tonic, http, tokio and tracing.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use etcd_client::{BalancedChannelBuilder, Channel, Client, ConnectOptions};
use http::Uri;
use tokio::sync::{mpsc, watch};
use tonic::transport::Endpoint;
use tonic::transport::channel::Change;
use tower::Service;
use tower::util::BoxCloneSyncService;

/// How the members are probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProbeSettings {
    /// Interval between two probes of the members.
    pub every: Duration,
    /// Deadline of one probe: a member that does not answer within it is taken out.
    pub timeout: Duration,
}

impl ProbeSettings {
    /// A probe every `every`, each with the deadline `timeout`.
    pub const fn new(every: Duration, timeout: Duration) -> Self {
        ProbeSettings { every, timeout }
    }
}

impl Default for ProbeSettings {
    /// A probe every 5 s with a 1 s deadline: a dead member is out within about 5 s, a frozen
    /// one within about 6 s, at a cost of one status call per member per 5 s for each client
    /// (thousands of resolver clients share one etcd). A client that needs faster exclusion
    /// (the operator probes every 250 ms) sets its own.
    fn default() -> Self {
        ProbeSettings {
            every: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
        }
    }
}

/// What the guard knows about one member.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MemberState {
    /// Not probed yet (kept in the balanced set).
    Unknown,
    /// Answered its last probe and knows a leader.
    Healthy,
    /// Its last probe failed, for this reason.
    Unhealthy(String),
}

/// One member as the guard sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemberStatus {
    /// The endpoint URL.
    pub endpoint: String,
    /// What its last probe said.
    pub state: MemberState,
    /// Whether requests are balanced to it right now.
    pub in_balanced_set: bool,
}

/// A view of the guard: the members' states, updated after every probe round.
#[derive(Debug, Clone)]
pub struct MemberHealth {
    members: watch::Receiver<Vec<MemberStatus>>,
}

impl MemberHealth {
    /// The members' current states.
    pub fn snapshot(&self) -> Vec<MemberStatus> {
        self.members.borrow().clone()
    }

    /// A receiver that is told about every change.
    pub fn subscribe(&self) -> watch::Receiver<Vec<MemberStatus>> {
        self.members.clone()
    }
}

/// Connects to `endpoints` like [`Client::connect`], with a guard that keeps unhealthy members
/// out of the balanced set (see the module docs). Must run inside a tokio runtime.
pub async fn connect<E: AsRef<str>>(
    endpoints: &[E],
    options: ConnectOptions,
    probe: ProbeSettings,
) -> Result<(Client, MemberHealth), etcd_client::Error> {
    let handoff = Arc::new(Mutex::new(None));
    let builder = Interposed {
        options: options.clone(),
        probe,
        handoff: handoff.clone(),
    };
    let client = Client::connect_with_balanced_channel(endpoints, Some(options), builder).await?;
    let members = handoff.lock().map(|mut h| h.take()).ok().flatten();
    match members {
        Some(members) => Ok((client, MemberHealth { members })),
        None => Err(etcd_client::Error::Internal(
            "the balanced channel was not built".into(),
        )),
    }
}

type Changes = mpsc::Receiver<Change<Uri, Endpoint>>;
type Updater = mpsc::Sender<Change<Uri, Endpoint>>;

/// Builds tonic's balanced channel and hands the client a sender whose changes reach the
/// channel only through the guard, which it starts right away (the client sends its first
/// request, the authentication, before `connect` returns).
struct Interposed {
    options: ConnectOptions,
    probe: ProbeSettings,
    handoff: Arc<Mutex<Option<watch::Receiver<Vec<MemberStatus>>>>>,
}

impl BalancedChannelBuilder for Interposed {
    type Error = tonic::transport::Error;

    fn balanced_channel(self, buffer_size: usize) -> Result<(Channel, Updater), Self::Error> {
        let (channel, balanced) = tonic::transport::Channel::balance_channel(buffer_size);
        let (tx, changes) = mpsc::channel(buffer_size);
        let (report, members) = watch::channel(Vec::new());
        let (epoch, epoch_rx) = watch::channel(0);
        let guard = Guard {
            options: self.options,
            probe: self.probe,
            balanced,
            members: Vec::new(),
            report,
            epoch,
        };
        tokio::spawn(guard.run(changes));
        if let Ok(mut h) = self.handoff.lock() {
            *h = Some(members);
        }
        let fenced = Fenced {
            inner: channel,
            epoch: epoch_rx,
        };
        Ok((Channel::Custom(BoxCloneSyncService::new(fenced)), tx))
    }
}

type HttpRequest = http::Request<tonic::body::Body>;
type HttpResponse = http::Response<tonic::body::Body>;

/// The balanced channel, with every request failed as soon as the guard's epoch moves on
/// before the request got its response headers (for a unary call: its answer).
#[derive(Clone)]
struct Fenced {
    inner: tonic::transport::Channel,
    epoch: watch::Receiver<u64>,
}

impl Service<HttpRequest> for Fenced {
    type Response = HttpResponse;
    type Error = tower::BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, tower::BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: HttpRequest) -> Self::Future {
        let mut epoch = self.epoch.clone();
        let started = *epoch.borrow_and_update();
        let response = self.inner.call(req);
        Box::pin(async move {
            tokio::select! {
                r = response => r.map_err(Into::into),
                // Err: the guard is gone; then nothing fences any more.
                Ok(_) = epoch.wait_for(|e| *e != started) => Err(Box::new(tonic::Status::unavailable(
                    "an etcd member failed or the leader changed while the request was in flight",
                )) as tower::BoxError),
            }
        })
    }
}

struct Member {
    uri: Uri,
    endpoint: Endpoint,
    url: String,
    state: MemberState,
    /// The leader it reported in its last answer.
    leader: Option<u64>,
    in_set: bool,
    /// A client of this member alone, for the probes (made on first use).
    prober: Option<Client>,
}

struct Guard {
    options: ConnectOptions,
    probe: ProbeSettings,
    /// The sender into tonic's balanced channel.
    balanced: Updater,
    members: Vec<Member>,
    report: watch::Sender<Vec<MemberStatus>>,
    /// Moved on to fail the requests in flight (see the module docs).
    epoch: watch::Sender<u64>,
}

/// Why the guard stops.
struct ClientGone;

impl Guard {
    async fn run(mut self, mut changes: Changes) {
        let mut ticker = tokio::time::interval(self.probe.every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let step = tokio::select! {
                // Changes first: the client waits for them to reach the channel.
                biased;
                change = changes.recv() => match change {
                    Some(change) => self.on_change(change).await,
                    // Every clone of the client is gone.
                    None => Err(ClientGone),
                },
                _ = ticker.tick() => self.probe_round().await,
            };
            if step.is_err() {
                tracing::debug!("etcd client dropped; member guard stops");
                return;
            }
        }
    }

    /// An endpoint added or removed through the client: follow it.
    async fn on_change(&mut self, change: Change<Uri, Endpoint>) -> Result<(), ClientGone> {
        match &change {
            Change::Insert(uri, endpoint) => {
                self.members.retain(|m| m.uri != *uri);
                self.members.push(Member {
                    uri: uri.clone(),
                    endpoint: endpoint.clone(),
                    url: uri.to_string().trim_end_matches('/').to_owned(),
                    state: MemberState::Unknown,
                    leader: None,
                    in_set: true,
                    prober: None,
                });
            }
            Change::Remove(uri) => self.members.retain(|m| m.uri != *uri),
        }
        self.balanced.send(change).await.map_err(|_| ClientGone)?;
        self.publish();
        Ok(())
    }

    /// Probes every member at once, then brings the balanced set in line.
    async fn probe_round(&mut self) -> Result<(), ClientGone> {
        let (options, timeout) = (self.options.clone(), self.probe.timeout);
        let probes = self.members.iter_mut().map(|m| {
            let options = options.clone();
            async move {
                let state = probe(m, options, timeout).await;
                (m, state)
            }
        });
        let mut fence = false;
        for (m, (state, leader)) in futures::future::join_all(probes).await {
            let failed = matches!(state, MemberState::Unhealthy(_))
                && !matches!(m.state, MemberState::Unhealthy(_));
            let leader_changed = leader.is_some() && m.leader.is_some() && leader != m.leader;
            fence |= failed || leader_changed;
            if state != m.state {
                match &state {
                    MemberState::Unhealthy(why) => {
                        tracing::warn!(endpoint = %m.url, reason = %why, "etcd member unhealthy")
                    }
                    _ => tracing::info!(endpoint = %m.url, "etcd member healthy"),
                }
                m.state = state;
            }
            if leader.is_some() {
                m.leader = leader;
            }
        }
        if fence {
            tracing::info!("etcd members changed; failing the requests in flight");
            self.epoch.send_modify(|e| *e = e.wrapping_add(1));
        }
        self.apply().await?;
        self.publish();
        Ok(())
    }

    /// Healthy (or not yet probed) members in the set, the others out; all of them in when
    /// none is healthy.
    async fn apply(&mut self) -> Result<(), ClientGone> {
        let any_healthy = self
            .members
            .iter()
            .any(|m| !matches!(m.state, MemberState::Unhealthy(_)));
        for m in &mut self.members {
            let want = !any_healthy || !matches!(m.state, MemberState::Unhealthy(_));
            if want == m.in_set {
                continue;
            }
            let change = if want {
                tracing::info!(endpoint = %m.url, "etcd member back in the balanced set");
                Change::Insert(m.uri.clone(), m.endpoint.clone())
            } else {
                tracing::warn!(endpoint = %m.url, "etcd member taken out of the balanced set");
                Change::Remove(m.uri.clone())
            };
            self.balanced.send(change).await.map_err(|_| ClientGone)?;
            m.in_set = want;
        }
        Ok(())
    }

    fn publish(&self) {
        let now: Vec<MemberStatus> = self
            .members
            .iter()
            .map(|m| MemberStatus {
                endpoint: m.url.clone(),
                state: m.state.clone(),
                in_balanced_set: m.in_set,
            })
            .collect();
        self.report.send_if_modified(|cur| {
            let changed = *cur != now;
            *cur = now;
            changed
        });
    }
}

/// One probe of one member: its status, within `timeout`; also the leader it reports
/// (`Some(0)`: none).
async fn probe(
    m: &mut Member,
    options: ConnectOptions,
    timeout: Duration,
) -> (MemberState, Option<u64>) {
    let attempt = async {
        if m.prober.is_none() {
            m.prober = Some(Client::connect([m.url.as_str()], Some(options)).await?);
        }
        match m.prober.as_mut() {
            Some(c) => c.status().await.map(|s| s.leader()),
            None => Err(etcd_client::Error::Internal("no probe client".into())),
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(0)) => (MemberState::Unhealthy("knows no leader".into()), Some(0)),
        Ok(Ok(leader)) => (MemberState::Healthy, Some(leader)),
        // The member answered, if only to refuse (e.g. permission denied): it is alive.
        Ok(Err(etcd_client::Error::GRpcStatus(s))) if !unreachable_code(s.code()) => {
            (MemberState::Healthy, None)
        }
        Ok(Err(e)) => {
            // A client that could not authenticate is made again next time.
            m.prober = None;
            (MemberState::Unhealthy(e.to_string()), None)
        }
        Err(_) => (
            MemberState::Unhealthy(format!("no status within {timeout:?}")),
            None,
        ),
    }
}

/// gRPC codes that mean the member did not really answer.
fn unreachable_code(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Unknown
            | tonic::Code::Cancelled
    )
}
