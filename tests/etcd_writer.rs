//! The etcd writer against a real etcd: exact keys and values, one lease for all keys, batching,
//! drift repair, outages, data loss, the prefix claim and shutdown.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use etcd_client::{Client, GetOptions, LeaseTimeToLiveOptions};
use registrar::etcd::value::{encode, key};
use registrar::etcd::{Desired, WriterConfig, WriterHandle, WriterState, spawn_writer};
use registrar_testenv::{DelayProxy, Etcd, poll, unique_name};
use serde_json::{Map, Value};
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(20);

/// Settings for tests: a 2 s lease and quick retries.
fn config(prefix: &str, cluster: &str) -> WriterConfig {
    let mut c = WriterConfig::new(prefix, cluster);
    c.lease_ttl = Duration::from_secs(2);
    c.request_timeout = Duration::from_secs(2);
    c.owner_recheck = Duration::from_millis(200);
    c.backoff_initial = Duration::from_millis(50);
    c.backoff_max = Duration::from_millis(500);
    c
}

/// `n` endpoint keys of `<prefix>/shop/greeter` with pod metadata, as the controller makes them.
fn endpoints(prefix: &str, n: usize) -> BTreeMap<String, String> {
    let target = format!("{prefix}/shop/greeter");
    (0..n)
        .map(|i| {
            let addr = format!("192.0.2.{}:{}", i % 250, 50000 + i / 250);
            let mut meta = Map::new();
            meta.insert("pod".into(), Value::String(format!("greeter-{i}")));
            meta.insert("tier".into(), Value::String("<gold>".into()));
            (key(&target, &addr), encode(&addr, Some(&meta)))
        })
        .collect()
}

fn desired(seq: u64, keys: BTreeMap<String, String>, complete: bool) -> Desired {
    Desired {
        seq,
        keys: keys.into_iter().collect(),
        complete,
        ..Default::default()
    }
}

struct Running {
    handle: WriterHandle,
    desired: watch::Sender<Desired>,
    shutdown: watch::Sender<bool>,
}

async fn start(etcd: &Etcd, cfg: WriterConfig, first: Desired) -> Result<Running> {
    let (desired, desired_rx) = watch::channel(first);
    let (shutdown, shutdown_rx) = watch::channel(false);
    let handle = spawn_writer(etcd.client().await?, cfg, desired_rx, shutdown_rx);
    Ok(Running {
        handle,
        desired,
        shutdown,
    })
}

impl Running {
    async fn applied(&mut self, seq: u64) -> Result<()> {
        let mut rx = self.handle.applied.clone();
        tokio::time::timeout(WAIT, rx.wait_for(|a| *a >= seq))
            .await
            .with_context(|| {
                format!(
                    "desired {seq} not applied; state {:?}",
                    *self.handle.state.borrow()
                )
            })??;
        Ok(())
    }

    fn lease(&self) -> Option<i64> {
        match *self.handle.state.borrow() {
            WriterState::Ready { lease } => Some(lease),
            _ => None,
        }
    }

    async fn wait_state(&self, what: &str, f: impl Fn(&WriterState) -> bool) -> Result<()> {
        let mut rx = self.handle.state.clone();
        tokio::time::timeout(WAIT, rx.wait_for(|s| f(s)))
            .await
            .with_context(|| format!("waiting for state {what}"))??;
        Ok(())
    }
}

/// Everything under `<prefix>/`: key -> (value, lease).
async fn dump(client: &mut Client, prefix: &str) -> Result<BTreeMap<String, (String, i64)>> {
    let resp = client
        .get(format!("{prefix}/"), Some(GetOptions::new().with_prefix()))
        .await?;
    resp.kvs()
        .iter()
        .map(|kv| {
            Ok((
                kv.key_str()?.to_owned(),
                (kv.value_str()?.to_owned(), kv.lease()),
            ))
        })
        .collect()
}

/// The endpoint keys of `dump` (without the claim), if they are exactly `want` under one lease.
fn exactly_under_one_lease(
    got: &BTreeMap<String, (String, i64)>,
    want: &BTreeMap<String, String>,
    prefix: &str,
) -> Option<i64> {
    let owner = format!("{prefix}/.owner");
    let endpoints: BTreeMap<&String, &(String, i64)> =
        got.iter().filter(|(k, _)| **k != owner).collect();
    if endpoints.len() != want.len() {
        return None;
    }
    let mut lease = None;
    for (k, v) in want {
        let (value, l) = endpoints.get(k)?;
        if value != v || *l == 0 || lease.is_some_and(|x| x != *l) {
            return None;
        }
        lease = Some(*l);
    }
    lease.or(Some(0))
}

async fn lease_ttl(client: &mut Client, lease: i64) -> Result<i64> {
    Ok(client
        .lease_time_to_live(lease, Some(LeaseTimeToLiveOptions::new()))
        .await?
        .ttl())
}

/// Waits until etcd holds exactly `want` under one live lease, which is the writer's; returns it.
async fn converged(
    client: &mut Client,
    run: &Running,
    prefix: &str,
    want: &BTreeMap<String, String>,
) -> Result<i64> {
    poll("etcd to hold exactly the desired keys", WAIT, || {
        let mut client = client.clone();
        async move {
            let got = dump(&mut client, prefix).await.ok()?;
            let lease = exactly_under_one_lease(&got, want, prefix)?;
            (run.lease() == Some(lease)).then_some(lease)
        }
    })
    .await
}

/// Starts a writer for `cluster-a` with `want` (complete), waits until it applied it and every
/// key is on its lease; returns the run and that lease.
async fn start_converged(
    etcd: &Etcd,
    client: &mut Client,
    prefix: &str,
    want: &BTreeMap<String, String>,
) -> Result<(Running, i64)> {
    let mut run = start(
        etcd,
        config(prefix, "cluster-a"),
        desired(1, want.clone(), true),
    )
    .await?;
    run.applied(1).await?;
    let lease = converged(client, &run, prefix, want).await?;
    Ok((run, lease))
}

#[tokio::test]
async fn writes_exact_keys_and_values_under_one_lease() -> Result<()> {
    let etcd = Etcd::start().await?;
    let mut client = etcd.client().await?;
    let prefix = unique_name("exact");
    let want = endpoints(&prefix, 3);
    let mut run = start(
        &etcd,
        config(&prefix, "cluster-a"),
        desired(1, want.clone(), true),
    )
    .await?;
    run.applied(1).await?;

    let got = dump(&mut client, &prefix).await?;
    let owner = format!("{prefix}/.owner");
    assert_eq!(
        got.get(&owner),
        Some(&("cluster-a".to_string(), 0)),
        "claim holds the cluster id, not under a lease"
    );
    assert_eq!(
        got.get(&format!("{prefix}/shop/greeter/192.0.2.1:50000"))
            .map(|v| v.0.as_str()),
        Some(
            r#"{"Op":0,"Addr":"192.0.2.1:50000","Metadata":{"pod":"greeter-1","tier":"\u003cgold\u003e"}}"#
        )
    );
    let lease = exactly_under_one_lease(&got, &want, &prefix).context("keys or lease differ")?;
    assert_eq!(run.lease(), Some(lease));
    let ttl = client
        .lease_time_to_live(lease, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await?;
    assert!(ttl.ttl() > 0);
    assert_eq!(ttl.keys().len(), 3, "the one lease carries every key");
    let all = client.leases().await?;
    assert_eq!(all.leases().len(), 1, "one lease in etcd");
    assert_eq!(run.handle.stats.snapshot().lease_grants, 1);

    // Keepalives hold the lease well beyond its 2 s TTL.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(lease_ttl(&mut client, lease).await? > 0);
    assert_eq!(converged(&mut client, &run, &prefix, &want).await?, lease);

    // A removed endpoint is deleted, a changed one rewritten.
    let mut next = want.clone();
    let removed = next.pop_first().context("empty")?.0;
    let (k, _) = next.pop_last().context("empty")?;
    next.insert(k, encode("192.0.2.99:1", None));
    run.desired.send_replace(desired(2, next.clone(), true));
    run.applied(2).await?;
    let got = dump(&mut client, &prefix).await?;
    assert!(!got.contains_key(&removed));
    assert_eq!(exactly_under_one_lease(&got, &next, &prefix), Some(lease));
    Ok(())
}

#[tokio::test]
async fn a_rollout_of_500_pods_is_a_handful_of_txns() -> Result<()> {
    let etcd = Etcd::start().await?;
    let mut client = etcd.client().await?;
    let prefix = unique_name("rollout");
    let cfg = config(&prefix, "cluster-a");
    let mut run = start(&etcd, cfg, desired(1, BTreeMap::new(), true)).await?;
    run.applied(1).await?;
    let before = run.handle.stats.snapshot();

    // 500 pods becoming ready one after the other, each a new desired state.
    let all = endpoints(&prefix, 500);
    let mut keys = BTreeMap::new();
    for (seq, (k, v)) in (2..).zip(all.clone()) {
        keys.insert(k, v);
        run.desired.send_replace(desired(seq, keys.clone(), true));
    }
    run.applied(501).await?;
    let after = run.handle.stats.snapshot();
    let txns = after.txns - before.txns;
    assert!(
        txns <= 500usize.div_ceil(128) as u64 + 2,
        "{txns} transactions for 500 keys"
    );
    assert_eq!(after.puts - before.puts, 500);
    let got = dump(&mut client, &prefix).await?;
    assert!(exactly_under_one_lease(&got, &all, &prefix).is_some());

    // And all gone at once: again a handful.
    run.desired
        .send_replace(desired(502, BTreeMap::new(), true));
    run.applied(502).await?;
    let done = run.handle.stats.snapshot();
    assert!(done.txns - after.txns <= 500usize.div_ceil(128) as u64 + 2);
    assert_eq!(done.deletes, 500);
    assert_eq!(dump(&mut client, &prefix).await?.len(), 1, "only the claim");
    Ok(())
}

#[tokio::test]
async fn drift_by_hand_is_repaired() -> Result<()> {
    let etcd = Etcd::start().await?;
    let mut client = etcd.client().await?;
    let prefix = unique_name("drift");
    let want = endpoints(&prefix, 5);
    let (run, lease) = start_converged(&etcd, &mut client, &prefix, &want).await?;

    let keys: Vec<&String> = want.keys().collect();
    client.delete(keys[0].as_str(), None).await?;
    client.put(keys[1].as_str(), "garbage", None).await?;
    client
        .put(keys[2].as_str(), want[keys[2]].as_str(), None)
        .await?; // detached from the lease
    client
        .put(format!("{prefix}/shop/greeter/192.0.2.66:1"), "stray", None)
        .await?;

    assert_eq!(converged(&mut client, &run, &prefix, &want).await?, lease);
    assert_eq!(
        run.handle.stats.snapshot().watch_resumes,
        0,
        "repaired by the running session, not by a restart"
    );

    // The claim deleted by hand is taken again.
    client.delete(format!("{prefix}/.owner"), None).await?;
    poll("the claim to be restored", WAIT, || {
        let mut client = client.clone();
        let prefix = prefix.clone();
        async move {
            let owner = format!("{prefix}/.owner");
            let got = dump(&mut client, &prefix).await.ok()?;
            (got.get(&owner)? == &("cluster-a".to_string(), 0)).then_some(())
        }
    })
    .await?;
    assert!(run.handle.stats.snapshot().foreign_changes >= 4);
    Ok(())
}

#[tokio::test]
async fn nothing_is_deleted_until_desired_is_complete() -> Result<()> {
    let etcd = Etcd::start().await?;
    let mut client = etcd.client().await?;
    let prefix = unique_name("incomplete");
    // Keys of a previous term that the new (partial) desired state does not name yet.
    let old = endpoints(&prefix, 4);
    for (k, v) in &old {
        client.put(k.as_str(), v.as_str(), None).await?;
    }
    let partial: BTreeMap<String, String> = old.clone().into_iter().take(2).collect();
    let mut run = start(
        &etcd,
        config(&prefix, "cluster-a"),
        desired(1, partial.clone(), false),
    )
    .await?;
    run.applied(1).await?;
    // Removing a key while still incomplete deletes nothing either; and a stray key added by
    // hand is left alone too.
    client
        .put(format!("{prefix}/shop/greeter/192.0.2.66:1"), "stray", None)
        .await?;
    let fewer: BTreeMap<String, String> = partial.clone().into_iter().take(1).collect();
    run.desired.send_replace(desired(2, fewer.clone(), false));
    run.applied(2).await?;
    // Let the watch deliver the stray key and any repair run.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = dump(&mut client, &prefix).await?;
    for k in old.keys() {
        assert!(got.contains_key(k), "{k} deleted while incomplete");
    }
    assert!(got.contains_key(&format!("{prefix}/shop/greeter/192.0.2.66:1")));
    assert_eq!(run.handle.stats.snapshot().deletes, 0);
    let lease = run.lease().context("not ready")?;
    assert_eq!(got[fewer.keys().next().context("empty")?].1, lease);

    // Complete: now what is not desired goes.
    run.desired.send_replace(desired(3, fewer.clone(), true));
    run.applied(3).await?;
    assert_eq!(converged(&mut client, &run, &prefix, &fewer).await?, lease);
    Ok(())
}

#[tokio::test]
async fn etcd_down_longer_than_the_ttl_then_back() -> Result<()> {
    let mut etcd = Etcd::start().await?;
    let prefix = unique_name("outage");
    let want = endpoints(&prefix, 20);
    let mut run = start(
        &etcd,
        config(&prefix, "cluster-a"),
        desired(1, want.clone(), true),
    )
    .await?;
    run.applied(1).await?;

    etcd.stop().await?;
    run.wait_state("EtcdUnavailable", |s| {
        matches!(s, WriterState::EtcdUnavailable { .. })
    })
    .await?;
    // The outage itself: longer than the 2 s lease TTL.
    tokio::time::sleep(Duration::from_secs(5)).await;
    // Desired changes during the outage are written when etcd is back.
    let mut more = want.clone();
    more.insert(
        key(&format!("{prefix}/shop2/greeter"), "192.0.2.41:50051"),
        encode("192.0.2.41:50051", None),
    );
    run.desired.send_replace(desired(2, more.clone(), true));
    etcd.restart().await?;

    run.applied(2).await?;
    let mut client = etcd.client().await?;
    let lease = converged(&mut client, &run, &prefix, &more).await?;
    assert!(lease_ttl(&mut client, lease).await? > 0, "live lease");
    // Still alive after several TTLs: keepalives resumed.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(converged(&mut client, &run, &prefix, &more).await?, lease);
    let stats = run.handle.stats.snapshot();
    assert!(stats.keepalive_failures >= 1);
    assert_eq!(
        (stats.relists, stats.watch_resumes),
        (1, 1),
        "the watch resumed at the next revision instead of listing again"
    );
    Ok(())
}

#[tokio::test]
async fn a_watch_resumed_past_a_compaction_lists_again() -> Result<()> {
    let etcd = Etcd::start().await?;
    let prefix = unique_name("compact");
    let want = endpoints(&prefix, 5);
    // The writer reaches etcd through a proxy, so the test can keep it away while it changes
    // and compacts etcd (the writer reconnects within a probe interval once etcd answers).
    let port: u16 = etcd
        .endpoint()
        .rsplit(':')
        .next()
        .context("no port")?
        .parse()?;
    let proxy = DelayProxy::start(port, Duration::ZERO).await?;
    let via = Client::connect([format!("http://127.0.0.1:{}", proxy.port)], None).await?;
    let cfg = config(&prefix, "cluster-a");
    let (desired, desired_rx) = watch::channel(desired(1, want.clone(), true));
    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut run = Running {
        handle: spawn_writer(via, cfg, desired_rx, shutdown_rx),
        desired,
        shutdown,
    };
    run.applied(1).await?;

    proxy.set_open(false);
    run.wait_state("EtcdUnavailable", |s| {
        matches!(s, WriterState::EtcdUnavailable { .. })
    })
    .await?;
    let mut client = etcd.client().await?;
    let first = want.keys().next().context("empty")?;
    client.delete(first.as_str(), None).await?;
    let stray = format!("{prefix}/shop/greeter/192.0.2.66:1");
    let put = client.put(stray.as_str(), "stray", None).await?;
    let rev = put.header().context("no header")?.revision();
    client.compact(rev, None).await?;
    proxy.set_open(true);

    converged(&mut client, &run, &prefix, &want).await?;
    assert!(
        run.handle.stats.snapshot().relists >= 2,
        "resuming past the compaction must list again"
    );
    Ok(())
}

#[tokio::test]
async fn etcd_wiped_everything_comes_back_under_a_new_lease() -> Result<()> {
    let mut etcd = Etcd::start().await?;
    let mut client = etcd.client().await?;
    let prefix = unique_name("wipe");
    let want = endpoints(&prefix, 10);
    let (run, old) = start_converged(&etcd, &mut client, &prefix, &want).await?;

    etcd.wipe().await?;
    let mut client = etcd.client().await?;
    let new = poll("a new lease", WAIT, || {
        let run = &run;
        async move { run.lease().filter(|l| *l != old) }
    })
    .await?;
    assert_eq!(converged(&mut client, &run, &prefix, &want).await?, new);
    let got = dump(&mut client, &prefix).await?;
    assert_eq!(
        got.get(&format!("{prefix}/.owner")),
        Some(&("cluster-a".to_string(), 0))
    );
    assert!(run.handle.stats.snapshot().lease_grants >= 2);
    Ok(())
}

#[tokio::test]
async fn a_revoked_lease_is_replaced_and_every_key_put_again() -> Result<()> {
    let etcd = Etcd::start().await?;
    let mut client = etcd.client().await?;
    let prefix = unique_name("revoke");
    let want = endpoints(&prefix, 10);
    let (run, old) = start_converged(&etcd, &mut client, &prefix, &want).await?;

    client.lease_revoke(old).await?;
    let new = poll("a new lease", WAIT, || {
        let run = &run;
        async move { run.lease().filter(|l| *l != old) }
    })
    .await?;
    assert_eq!(converged(&mut client, &run, &prefix, &want).await?, new);
    let stats = run.handle.stats.snapshot();
    assert_eq!(stats.lease_grants, 2);
    assert!(stats.leases_lost >= 1);
    Ok(())
}

#[tokio::test]
async fn a_prefix_claimed_by_another_cluster_is_left_alone() -> Result<()> {
    let etcd = Etcd::start().await?;
    let mut client = etcd.client().await?;
    let prefix = unique_name("claimed");
    let owner = format!("{prefix}/.owner");
    client.put(owner.as_str(), "cluster-b", None).await?;
    let theirs = format!("{prefix}/shop/greeter/192.0.2.31:50051");
    client.put(theirs.as_str(), "theirs", None).await?;
    let want = endpoints(&prefix, 3);
    let run = start(
        &etcd,
        config(&prefix, "cluster-a"),
        desired(1, want.clone(), true),
    )
    .await?;
    run.wait_state("PrefixOwnedElsewhere", |s| {
        *s == WriterState::PrefixOwnedElsewhere {
            owner: "cluster-b".into(),
        }
    })
    .await?;
    // Several re-checks later, still nothing written.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got = dump(&mut client, &prefix).await?;
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[&owner].0, "cluster-b");
    assert_eq!(got[&theirs].0, "theirs");
    let stats = run.handle.stats.snapshot();
    assert_eq!((stats.txns, stats.lease_grants), (0, 0));
    assert_eq!(*run.handle.applied.borrow(), 0);
    assert!(client.leases().await?.leases().is_empty());

    // Released by hand: the writer claims it and takes over (reaping the stray key).
    client.delete(owner.as_str(), None).await?;
    converged(&mut client, &run, &prefix, &want).await?;
    assert_eq!(dump(&mut client, &prefix).await?[&owner].0, "cluster-a");
    Ok(())
}

#[tokio::test]
async fn a_claim_taken_over_mid_term_stops_all_writes() -> Result<()> {
    let etcd = Etcd::start().await?;
    let mut client = etcd.client().await?;
    let prefix = unique_name("takeover");
    let want = endpoints(&prefix, 3);
    let (run, _) = start_converged(&etcd, &mut client, &prefix, &want).await?;

    let owner = format!("{prefix}/.owner");
    client.put(owner.as_str(), "cluster-b", None).await?;
    run.wait_state("PrefixOwnedElsewhere", |s| {
        matches!(s, WriterState::PrefixOwnedElsewhere { .. })
    })
    .await?;
    let txns = run.handle.stats.snapshot().txns;
    let stray = format!("{prefix}/shop/greeter/192.0.2.31:50051");
    client.put(stray.as_str(), "theirs", None).await?;
    run.desired
        .send_replace(desired(2, endpoints(&prefix, 5), true));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        run.handle.stats.snapshot().txns,
        txns,
        "no write after losing the claim"
    );
    assert_eq!(*run.handle.applied.borrow(), 1);
    let got = dump(&mut client, &prefix).await?;
    assert_eq!(got[&stray].0, "theirs");
    assert_eq!(got[&owner].0, "cluster-b");
    Ok(())
}

#[tokio::test]
async fn shutdown_leaves_the_keys_and_does_not_revoke() -> Result<()> {
    let etcd = Etcd::start().await?;
    let mut client = etcd.client().await?;
    let prefix = unique_name("shutdown");
    let want = endpoints(&prefix, 3);
    let (run, lease) = start_converged(&etcd, &mut client, &prefix, &want).await?;

    run.shutdown.send_replace(true);
    tokio::time::timeout(WAIT, run.handle.join)
        .await
        .context("writer did not stop")??;
    assert!(
        lease_ttl(&mut client, lease).await? > 0,
        "lease not revoked"
    );
    let got = dump(&mut client, &prefix).await?;
    assert_eq!(exactly_under_one_lease(&got, &want, &prefix), Some(lease));
    // Without keepalives the TTL then ends the keys, as it would for a crashed leader.
    let gone = poll("the keys to expire", WAIT, || {
        let mut client = client.clone();
        let prefix = prefix.clone();
        async move {
            let got = dump(&mut client, &prefix).await.ok()?;
            (got.len() == 1).then_some(got)
        }
    })
    .await?;
    if !gone.contains_key(&format!("{prefix}/.owner")) {
        bail!("the claim must outlive the lease: {gone:?}");
    }
    Ok(())
}

/// The writer reports every transaction to its observer where it happens: with the operator's
/// metrics as the observer, a transaction etcd refuses counts as `result="error"`, and every
/// transaction is one latency sample.
#[tokio::test]
async fn every_transaction_is_observed_where_it_happens() -> Result<()> {
    use registrar::metrics::Metrics;
    use registrar_testenv::prometheus::sample;

    let etcd = Etcd::start().await?;
    let prefix = unique_name("observed");
    let metrics = Metrics::new();
    // More operations per transaction than etcd accepts (its default --max-txn-ops is 128):
    // the first write fails for real, again on every retry.
    let mut cfg = config(&prefix, "cluster-a");
    cfg.max_txn_ops = 1000;
    let too_many = endpoints(&prefix, 200);
    let (desired_tx, desired_rx) = watch::channel(desired(1, too_many, true));
    let (shutdown, shutdown_rx) = watch::channel(false);
    let handle = registrar::etcd::spawn_writer_with(
        etcd.client().await?,
        cfg,
        desired_rx,
        shutdown_rx,
        Arc::new(metrics.clone()),
    );
    let mut run = Running {
        handle,
        desired: desired_tx,
        shutdown,
    };
    let series = |name: &str| -> Result<f64> {
        let text = metrics.encode()?;
        sample(&text, name).with_context(|| format!("{name} missing"))
    };
    poll("a failed transaction", WAIT, || async {
        (series(r#"registrar_etcd_txns_total{result="error"}"#).ok()? >= 1.0).then_some(())
    })
    .await?;

    // Fewer keys: written. Then five more changes, each one transaction.
    run.desired
        .send_replace(desired(2, endpoints(&prefix, 100), true));
    run.applied(2).await?;
    for seq in 3..8u64 {
        let n = 100 + usize::try_from(seq)? - 2;
        run.desired
            .send_replace(desired(seq, endpoints(&prefix, n), true));
        run.applied(seq).await?;
    }
    run.shutdown.send_replace(true);
    tokio::time::timeout(WAIT, &mut run.handle.join).await??;

    let stats = run.handle.stats.snapshot();
    let ok = series(r#"registrar_etcd_txns_total{result="ok"}"#)?;
    let failed = series(r#"registrar_etcd_txns_total{result="error"}"#)?;
    let samples = series("registrar_etcd_txn_duration_seconds_count")?;
    let etcd_errors = series(r#"registrar_errors_total{kind="etcd"}"#)?;
    println!(
        "writer stats: {} txns, {} failures; metrics: ok {ok}, error {failed}, latency samples \
         {samples}, errors_total{{kind=\"etcd\"}} {etcd_errors}",
        stats.txns, stats.txn_failures
    );
    assert!(failed >= 1.0);
    assert_eq!(failed, stats.txn_failures as f64);
    assert_eq!(etcd_errors, failed);
    // One transaction for the 100 keys, one for each of the five changes.
    assert_eq!(ok, 6.0);
    assert_eq!(ok, stats.txns as f64);
    assert_eq!(samples, ok + failed, "one latency sample per transaction");
    assert_eq!(series("registrar_etcd_lease_grants_total")?, 1.0);
    Ok(())
}
