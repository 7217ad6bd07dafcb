//! The etcd writer against a real 3-member etcd with all three endpoints, while members die
//! (issue: "one dead etcd member stalls publishing although quorum is intact"). The desired state
//! changes every 100 ms; an etcd watch on a member that stays up sees when each change is
//! written. For every member killed in turn (the leader and each follower) the largest delay
//! from a desired change to its key in etcd is printed; the goal is 1 s, the assertion allows
//! 3 s. When the leader fails, no write can commit until the others elected a new one (etcd's
//! election timeout, 1-2 s by default), so there the time to the new leader is printed too and
//! the assertion allows that plus 1.5 s. The client keeps dead members out of its balanced set
//! ([`registrar_resolver::members`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use etcd_client::{ConnectOptions, WatchOptions};
use registrar::etcd::value::{encode, key};
use registrar::etcd::{Desired, WriterConfig, WriterHandle, WriterState, spawn_writer};
use registrar_resolver::members::{self, MemberHealth, MemberState, ProbeSettings};
use registrar_testenv::{EtcdCluster, poll, unique_name};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(30);
/// The goal is 1 s; asserted generously.
const BOUND: Duration = Duration::from_secs(3);
/// What a leader failure may cost on top of etcd's own election.
const BEYOND_ELECTION: Duration = Duration::from_millis(1500);
/// How often the desired state changes.
const CHANGE_EVERY: Duration = Duration::from_millis(100);
/// How long after a kill the delays are measured.
const AFTER_KILL: Duration = Duration::from_secs(6);

/// The operator's settings: the member probe it uses and HTTP/2 keepalives.
fn probe() -> ProbeSettings {
    ProbeSettings::new(Duration::from_millis(250), Duration::from_millis(500))
}

fn options() -> ConnectOptions {
    ConnectOptions::new()
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
        .with_keep_alive_while_idle(true)
}

/// The address that stands for desired state `seq`: one endpoint whose port is the seq.
fn addr(seq: u64) -> String {
    format!("192.0.2.1:{}", 10000 + seq)
}

fn seq_of(key: &str) -> Option<u64> {
    key.rsplit(':')
        .next()?
        .parse::<u64>()
        .ok()?
        .checked_sub(10000)
}

/// Changes the desired state every [`CHANGE_EVERY`], recording when each seq was sent.
struct Driver {
    sent: Arc<Mutex<Vec<(u64, Instant)>>>,
    task: JoinHandle<()>,
}

impl Driver {
    fn start(prefix: &str, tx: watch::Sender<Desired>) -> Driver {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let target = format!("{prefix}/shop/greeter");
        let log = sent.clone();
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(CHANGE_EVERY);
            for seq in 2u64.. {
                ticker.tick().await;
                let a = addr(seq);
                let keys = BTreeMap::from([(key(&target, &a), encode(&a, None))]);
                tx.send_replace(Desired {
                    seq,
                    keys: keys.into_iter().collect(),
                    complete: true,
                    ..Default::default()
                });
                if let Ok(mut l) = log.lock() {
                    l.push((seq, Instant::now()));
                }
            }
        });
        Driver { sent, task }
    }

    fn sent_between(&self, from: Instant, to: Instant) -> Vec<(u64, Instant)> {
        let sent = self.sent.lock().map(|s| s.clone()).unwrap_or_default();
        sent.into_iter()
            .filter(|(_, t)| *t >= from && *t <= to)
            .collect()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Watches the prefix through one member and records when each seq's key was put.
struct Observer {
    seen: Arc<Mutex<Vec<(u64, Instant)>>>,
    task: JoinHandle<()>,
}

impl Observer {
    async fn start(cluster: &EtcdCluster, member: usize, prefix: &str) -> Result<Observer> {
        let mut client = cluster.member_client(member).await?;
        let mut stream = client
            .watch(
                format!("{prefix}/"),
                Some(WatchOptions::new().with_prefix()),
            )
            .await?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok(Some(resp)) = stream.message().await {
                let now = Instant::now();
                for ev in resp.events() {
                    let put = ev.event_type() == etcd_client::EventType::Put;
                    let seq = ev.kv().and_then(|kv| kv.key_str().ok()).and_then(seq_of);
                    if let (true, Some(seq), Ok(mut l)) = (put, seq, log.lock()) {
                        l.push((seq, now));
                    }
                }
            }
        });
        Ok(Observer { seen, task })
    }

    /// When the first seq >= `seq` was seen in etcd.
    fn written(&self, seq: u64) -> Option<Instant> {
        let seen = self.seen.lock().ok()?;
        seen.iter()
            .filter(|(s, _)| *s >= seq)
            .map(|(_, t)| *t)
            .min()
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Ground {
    cluster: EtcdCluster,
    prefix: String,
    writer: WriterHandle,
    health: MemberHealth,
    driver: Driver,
    _shutdown: watch::Sender<bool>,
}

async fn ground(probe: Option<ProbeSettings>) -> Result<Ground> {
    let cluster = EtcdCluster::start().await?;
    let prefix = unique_name("cluster");
    let endpoints = cluster.endpoints();
    let (client, health) = match probe {
        Some(p) => members::connect(&endpoints, options(), p).await?,
        // Without probing: the guard is there only to report; it never sees an unhealthy
        // member because it probes too rarely to matter.
        None => {
            members::connect(
                &endpoints,
                options(),
                ProbeSettings::new(Duration::from_secs(3600), Duration::from_secs(1)),
            )
            .await?
        }
    };
    let (tx, rx) = watch::channel(Desired {
        seq: 1,
        keys: Default::default(),
        complete: true,
        ..Default::default()
    });
    let (shutdown, shutdown_rx) = watch::channel(false);
    let writer = spawn_writer(
        client,
        WriterConfig::new(prefix.clone(), "cluster-a"),
        rx,
        shutdown_rx,
    );
    let mut applied = writer.applied.clone();
    tokio::time::timeout(WAIT, applied.wait_for(|a| *a >= 1))
        .await
        .context("the writer did not start")??;
    let driver = Driver::start(&prefix, tx);
    Ok(Ground {
        cluster,
        prefix,
        writer,
        health,
        driver,
        _shutdown: shutdown,
    })
}

/// What one fault cost.
struct Round {
    what: String,
    max_delay: Duration,
    /// Fault -> the surviving members agree on a new leader (zero if the leader survived).
    election: Duration,
    changes: usize,
}

impl Ground {
    /// Kills (or freezes) member `victim`, measures the delays of the changes sent from just
    /// before the fault until [`AFTER_KILL`] after it, and restarts the member.
    async fn round(&mut self, what: &str, victim: usize, freeze: bool) -> Result<Round> {
        let watcher = (victim + 1) % self.cluster.len();
        let observer = Observer::start(&self.cluster, watcher, &self.prefix).await?;
        // Steady state first.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let failures_before = self.writer.stats.snapshot().txn_failures;
        let was_leader = self.cluster.wait_leader().await? == victim;
        let from = Instant::now();
        if freeze {
            self.cluster.freeze(victim)?;
        } else {
            self.cluster.kill(victim).await?;
        }
        let faulted = Instant::now();
        let new_leader = self.cluster.wait_leader().await?;
        let election = if was_leader {
            faulted.elapsed()
        } else {
            Duration::ZERO
        };
        anyhow::ensure!(new_leader != victim, "the faulted member still leads");
        tokio::time::sleep(AFTER_KILL).await;
        let to = Instant::now();
        // Changes sent until `to` get up to BOUND to be written before they count as late.
        tokio::time::sleep(BOUND).await;
        let sent = self.driver.sent_between(from, to);
        let mut max_delay = Duration::ZERO;
        for (seq, t) in &sent {
            let delay = match observer.written(*seq) {
                Some(w) => w.saturating_duration_since(*t),
                None => Instant::now() - *t,
            };
            max_delay = max_delay.max(delay);
        }
        let stats = self.writer.stats.snapshot();
        println!(
            "{what} (member {victim}, faulted in {:?}): {} changes, max desired->etcd delay \
             {max_delay:?}; new leader after {election:?}; txn failures {}; writer state {:?}; members {:?}",
            faulted - from,
            sent.len(),
            stats.txn_failures - failures_before,
            *self.writer.state.borrow(),
            self.health
                .snapshot()
                .iter()
                .map(|m| {
                    let state = match m.state {
                        MemberState::Healthy => "healthy",
                        MemberState::Unknown => "unknown",
                        MemberState::Unhealthy(_) => "unhealthy",
                        _ => "other",
                    };
                    let set = if m.in_balanced_set { "in" } else { "out" };
                    format!("{state}/{set}")
                })
                .collect::<Vec<_>>()
        );
        self.cluster.restart(victim).await?;
        Ok(Round {
            what: format!("{what} (member {victim})"),
            max_delay,
            election,
            changes: sent.len(),
        })
    }

    /// Waits until the guard sees every member healthy again and the writer is ready.
    async fn settle(&self) -> Result<()> {
        poll("every member healthy again", WAIT, || async {
            self.health
                .snapshot()
                .iter()
                .all(|m| m.state == MemberState::Healthy && m.in_balanced_set)
                .then_some(())
        })
        .await?;
        poll("the writer ready", WAIT, || async {
            matches!(*self.writer.state.borrow(), WriterState::Ready { .. }).then_some(())
        })
        .await
    }

    async fn followers(&self) -> Result<Vec<usize>> {
        let leader = self.cluster.wait_leader().await?;
        Ok((0..self.cluster.len()).filter(|i| *i != leader).collect())
    }
}

fn check(rounds: &[Round]) {
    for r in rounds {
        assert!(
            r.changes >= 30,
            "{}: only {} changes measured",
            r.what,
            r.changes
        );
        let bound = if r.election.is_zero() {
            BOUND
        } else {
            r.election + BEYOND_ELECTION
        };
        assert!(
            r.max_delay < bound,
            "{}: publishing stalled {:?} (bound {bound:?}; new leader after {:?})",
            r.what,
            r.max_delay,
            r.election
        );
    }
}

#[tokio::test]
async fn killing_any_one_member_barely_delays_publishing() -> Result<()> {
    let mut g = ground(Some(probe())).await?;
    let mut rounds = Vec::new();
    let leader = g.cluster.wait_leader().await?;
    rounds.push(g.round("kill the leader", leader, false).await?);
    g.settle().await?;
    for follower in g.followers().await? {
        rounds.push(g.round("kill a follower", follower, false).await?);
        g.settle().await?;
    }
    check(&rounds);
    Ok(())
}

#[tokio::test]
async fn a_frozen_member_barely_delays_publishing() -> Result<()> {
    let mut g = ground(Some(probe())).await?;
    let mut rounds = Vec::new();
    let follower = g
        .followers()
        .await?
        .first()
        .copied()
        .context("no follower")?;
    rounds.push(g.round("freeze a follower", follower, true).await?);
    g.settle().await?;
    let leader = g.cluster.wait_leader().await?;
    rounds.push(g.round("freeze the leader", leader, true).await?);
    g.settle().await?;
    check(&rounds);
    Ok(())
}

/// The same kills with etcd-client's plain balancing, for comparison (prints only).
#[tokio::test]
#[ignore = "a comparison without the member guard; prints figures, asserts nothing about them"]
async fn without_the_guard_for_comparison() -> Result<()> {
    let mut g = ground(None).await?;
    let leader = g.cluster.wait_leader().await?;
    g.round("unguarded: kill the leader", leader, false).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let follower = g
        .followers()
        .await?
        .first()
        .copied()
        .context("no follower")?;
    g.round("unguarded: kill a follower", follower, false)
        .await?;
    Ok(())
}
