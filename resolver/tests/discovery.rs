//! The resolver against a real etcd: malformed values, outages (fail-static), resuming a broken
//! watch, relisting after compaction, and slow consumers.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use anyhow::Result;
use common::*;
use etcd_client::{Client, CompactionOptions};
use registrar_resolver::{Backoff, Balancer, Endpoint, Metadata, Resolver};
use registrar_testenv::greeter::{self, GreeterClient};
use registrar_testenv::{Etcd, poll};

/// Everything logged by this test binary (to assert on warnings).
static LOGS: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();

struct Capture;

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(logs) = LOGS.get() {
            logs.lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(buf);
        }
        std::io::stderr().write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    if LOGS.set(Mutex::new(Vec::new())).is_ok() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("info,registrar_resolver=debug")
            .with_ansi(false)
            .with_writer(|| Capture)
            .try_init();
    }
}

fn logs() -> String {
    LOGS.get()
        .map(|l| String::from_utf8_lossy(&l.lock().unwrap_or_else(|p| p.into_inner())).into_owned())
        .unwrap_or_default()
}

fn keys(resolver: &Resolver) -> BTreeSet<String> {
    resolver.snapshot().endpoints().keys().cloned().collect()
}

fn value(addr: &str) -> String {
    Endpoint::new(addr, Metadata::null())
        .map(|e| e.encode())
        .unwrap_or_default()
}

async fn wait_keys(resolver: &Resolver, want: &[String]) -> Result<()> {
    let want: BTreeSet<String> = want.iter().cloned().collect();
    poll(
        &format!("keys {want:?}"),
        Duration::from_secs(20),
        || async { (keys(resolver) == want).then_some(()) },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}; have {:?}", keys(resolver)))
}

fn fast_etcd_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(100), Duration::from_millis(500))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_values_are_skipped_and_logged() -> Result<()> {
    capture_logs();
    let etcd = Etcd::start().await?;
    let mut kv = etcd.client().await?;
    let t = target("malformed");
    let k = |s: &str| format!("{t}/{s}");

    // 2 MB of garbage exceeds etcd's default 1.5 MiB request limit; use the largest value this
    // etcd accepts.
    let mut huge: Vec<u8> = (0..2_000_000u64).map(|i| (i * 7919 % 251) as u8).collect();
    if let Err(e) = kv.put(k("huge"), huge.clone(), None).await {
        eprintln!("etcd refused a 2 MB value ({e}); using 1.5 MiB - 1 KiB");
        huge.truncate(1536 * 1024 - 1024);
        kv.put(k("huge"), huge, None).await?;
    }
    let bad = [
        ("not-json", "not json".to_string()),
        ("array", "[1,2]".to_string()),
        ("no-addr", r#"{"Op":0,"Metadata":{"x":1}}"#.to_string()),
        (
            "bad-addr",
            r#"{"Op":0,"Addr":"no-port","Metadata":null}"#.to_string(),
        ),
        (
            "op-string",
            r#"{"Op":"add","Addr":"127.0.0.1:1"}"#.to_string(),
        ),
    ];
    for (name, v) in &bad {
        kv.put(k(name), v.as_str(), None).await?;
    }
    kv.put(k("good-a"), value("127.0.0.20:1000"), None).await?;
    kv.put(k("good-b"), value("127.0.0.21:1000"), None).await?;
    // A sibling target sharing the prefix without the slash is not ours.
    kv.put(format!("{t}-canary/x"), value("127.0.0.22:1000"), None)
        .await?;

    let resolver = Resolver::new(etcd.client().await?, &t).await?;
    assert_eq!(
        keys(&resolver),
        [k("good-a"), k("good-b")].into_iter().collect()
    );
    let logged = logs();
    for name in [
        "huge",
        "not-json",
        "array",
        "no-addr",
        "bad-addr",
        "op-string",
    ] {
        assert!(
            logged
                .lines()
                .any(|l| l.contains("skipping invalid endpoint value") && l.contains(&k(name))),
            "no warning for {name}"
        );
    }

    // The same through the watch: bad values are skipped, a good value overwritten with garbage
    // disappears, a new good one appears.
    for (name, v) in &bad {
        kv.put(k(&format!("w-{name}")), v.as_str(), None).await?;
    }
    kv.put(k("good-b"), "{garbage", None).await?;
    kv.put(k("good-c"), value("127.0.0.23:1000"), None).await?;
    wait_keys(&resolver, &[k("good-a"), k("good-c")]).await?;
    let logged = logs();
    assert!(logged.contains(&k("w-array")) && logged.contains(&k("w-bad-addr")));
    assert_eq!(
        resolver.snapshot().endpoints()[&k("good-a")].addr,
        "127.0.0.20:1000"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_survive_an_etcd_outage_and_changes_made_meanwhile_apply() -> Result<()> {
    capture_logs();
    let mut etcd = Etcd::start().await?;
    let proxy = etcd_proxy(etcd_addr(&etcd.endpoint())?).await?;
    let mut kv = etcd.client().await?;
    let t = target("outage");
    let a = greeter::serve(loopback(30), "a".into()).await;
    let b = greeter::serve(loopback(31), "b".into()).await;
    let c = greeter::serve(loopback(32), "c".into()).await;
    put_endpoint(&mut kv, &t, a.addr()).await?;
    put_endpoint(&mut kv, &t, b.addr()).await?;

    // The balancer reaches etcd through the proxy, so the test can keep it away from etcd
    // while making changes.
    let balancer = Balancer::builder(Client::connect([proxy.endpoint()], None).await?, &t)
        .etcd_backoff(fast_etcd_backoff())
        .etcd_request_timeout(Duration::from_secs(2))
        .build()
        .await?;
    wait_ready(&balancer, 2).await?;
    let mut client = GreeterClient::new(balancer.clone());

    etcd.stop().await?;
    poll(
        "the resolver to notice",
        Duration::from_secs(20),
        || async { (!balancer.resolver().is_connected()).then_some(()) },
    )
    .await?;
    let counts = spread(&mut client, 200).await?;
    assert_eq!(counts.get("a"), Some(&100), "{counts:?}");
    assert_eq!(counts.get("b"), Some(&100), "{counts:?}");

    // etcd back, but not yet for the balancer: change the set.
    proxy.cut();
    etcd.restart().await?;
    let mut kv = etcd.client().await?;
    delete_endpoint(&mut kv, &t, a.addr()).await?;
    put_endpoint(&mut kv, &t, c.addr()).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!balancer.resolver().is_connected());
    assert_eq!(spread(&mut client, 10).await?.len(), 2);

    proxy.open();
    poll("the changes to apply", Duration::from_secs(30), || async {
        let addrs: BTreeSet<String> = balancer.backends().into_iter().map(|b| b.addr).collect();
        let want: BTreeSet<String> = [b.addr(), c.addr()].iter().map(|a| a.to_string()).collect();
        (addrs == want).then_some(())
    })
    .await?;
    wait_ready(&balancer, 2).await?;
    let counts = spread(&mut client, 200).await?;
    assert_eq!(counts.get("b"), Some(&100), "{counts:?}");
    assert_eq!(counts.get("c"), Some(&100), "{counts:?}");
    assert!(balancer.resolver().is_connected());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relists_after_compaction_past_its_revision() -> Result<()> {
    capture_logs();
    let etcd = Etcd::start().await?;
    let proxy = etcd_proxy(etcd_addr(&etcd.endpoint())?).await?;
    let mut kv = etcd.client().await?;
    let t = target("compact");
    let k = |s: &str| format!("{t}/{s}");
    kv.put(k("a"), value("127.0.0.40:1"), None).await?;
    kv.put(k("b"), value("127.0.0.41:1"), None).await?;
    let resolver = Resolver::builder(Client::connect([proxy.endpoint()], None).await?, &t)
        .backoff(fast_etcd_backoff())
        .request_timeout(Duration::from_secs(2))
        .build()
        .await?;
    wait_keys(&resolver, &[k("a"), k("b")]).await?;
    let seen = resolver.snapshot().revision();

    proxy.cut();
    poll("the watch to break", Duration::from_secs(20), || async {
        (!resolver.is_connected()).then_some(())
    })
    .await?;
    kv.delete(k("a"), None).await?;
    kv.put(k("c"), value("127.0.0.42:1"), None).await?;
    for i in 0..20 {
        kv.put(format!("unrelated/{i}"), "x", None).await?;
    }
    let rev = kv
        .put(k("d"), value("127.0.0.43:1"), None)
        .await?
        .header()
        .map_or(0, |h| h.revision());
    kv.compact(rev, Some(CompactionOptions::new().with_physical()))
        .await?;
    assert!(rev > seen + 1);

    proxy.open();
    wait_keys(&resolver, &[k("b"), k("c"), k("d")]).await?;
    assert!(resolver.snapshot().revision() >= rev);
    assert!(
        logs().contains("watch start revision compacted; relisting"),
        "the resolver did not take the relist path"
    );

    // And it keeps watching after the relist.
    kv.delete(k("b"), None).await?;
    wait_keys(&resolver, &[k("c"), k("d")]).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_never_blocks_the_watcher() -> Result<()> {
    capture_logs();
    let etcd = Etcd::start().await?;
    let mut kv = etcd.client().await?;
    let t = target("slow");
    let resolver = Resolver::new(etcd.client().await?, &t).await?;
    let mut stalled = resolver.subscribe(); // never read until the end
    for i in 0..200u16 {
        kv.put(
            format!("{t}/{i}"),
            value(&format!("127.0.0.50:{}", 1000 + i)),
            None,
        )
        .await?;
    }
    poll("200 endpoints", Duration::from_secs(20), || async {
        (resolver.snapshot().len() == 200).then_some(())
    })
    .await?;
    // The stalled receiver just sees the latest set.
    assert!(stalled.has_changed()?);
    assert_eq!(stalled.borrow_and_update().len(), 200);
    Ok(())
}

/// How long a resolver may take to notice that etcd's history went back and list again, once
/// etcd answers: one history check interval (the default, 5 s) plus a listing and a reconnect
/// with the fast backoff these tests use. On a reconnect the check is immediate, so the
/// figures printed are far below it.
const HISTORY_RECOVERY_BOUND: Duration = Duration::from_secs(7);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovers_after_etcd_is_wiped_and_the_set_changes() -> Result<()> {
    capture_logs();
    let mut etcd = Etcd::start().await?;
    let mut kv = etcd.client().await?;
    let t = target("wipe");
    let old = [
        greeter::serve(loopback(60), "old-a".into()).await,
        greeter::serve(loopback(61), "old-b".into()).await,
    ];
    let new = [
        greeter::serve(loopback(62), "new-a".into()).await,
        greeter::serve(loopback(63), "new-b".into()).await,
    ];
    for s in &old {
        put_endpoint(&mut kv, &t, s.addr()).await?;
    }
    let seen = advance_revision(&mut kv, 30).await?;
    let balancer = Balancer::builder(etcd.client().await?, &t)
        .etcd_backoff(fast_etcd_backoff())
        .etcd_request_timeout(Duration::from_secs(2))
        .build()
        .await?;
    wait_ready(&balancer, 2).await?;
    let mut client = GreeterClient::new(balancer.clone());
    spread(&mut client, 10).await?;

    // The data is gone; etcd comes back empty on the same address, and the set is rewritten
    // (as an operator re-puts its keys) with a rolling update on top: new addresses only.
    etcd.wipe().await?;
    let mut kv = etcd.client().await?;
    for s in &new {
        put_endpoint(&mut kv, &t, s.addr()).await?;
    }
    let now = kv
        .get("x", None)
        .await?
        .header()
        .map_or(0, |h| h.revision());
    assert!(
        now < seen,
        "the fresh store (revision {now}) must be behind {seen}"
    );
    let recovered = converge(&balancer, &[new[0].addr(), new[1].addr()]).await?;
    let counts = spread(&mut client, 100).await?;
    println!(
        "etcd wiped: revision {seen} -> {now}; resolver on the new set {recovered:?} after it \
         was written; 100 calls after: {counts:?}"
    );
    assert_eq!(counts.get("new-a"), Some(&50), "{counts:?}");
    assert_eq!(counts.get("new-b"), Some(&50), "{counts:?}");
    assert!(
        recovered < HISTORY_RECOVERY_BOUND,
        "recovery took {recovered:?}"
    );
    assert!(
        logs().contains("etcd's history went back"),
        "the resolver did not report the wipe"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovers_after_etcd_is_restored_from_an_older_snapshot() -> Result<()> {
    capture_logs();
    let mut etcd = Etcd::start().await?;
    let mut kv = etcd.client().await?;
    let t = target("restore");
    let s = [
        greeter::serve(loopback(64), "a".into()).await,
        greeter::serve(loopback(65), "b".into()).await,
        greeter::serve(loopback(66), "c".into()).await,
        greeter::serve(loopback(67), "d".into()).await,
    ];
    let addr = |i: usize| s[i].addr();
    put_endpoint(&mut kv, &t, addr(0)).await?;
    put_endpoint(&mut kv, &t, addr(1)).await?;
    let backup = tempfile::tempdir()?;
    let snapshot = backup.path().join("etcd.db");
    etcd.snapshot_save(&snapshot).await?;

    let balancer = Balancer::builder(etcd.client().await?, &t)
        .etcd_backoff(fast_etcd_backoff())
        .etcd_request_timeout(Duration::from_secs(2))
        .build()
        .await?;
    let mut client = GreeterClient::new(balancer.clone());
    converge(&balancer, &[addr(0), addr(1)]).await?;
    // Life goes on after the backup: a replaced, c added, many unrelated writes.
    delete_endpoint(&mut kv, &t, addr(0)).await?;
    put_endpoint(&mut kv, &t, addr(2)).await?;
    let seen = advance_revision(&mut kv, 30).await?;
    converge(&balancer, &[addr(1), addr(2)]).await?;

    // Disaster recovery from the older backup, then a change on the restored store.
    etcd.restore_snapshot(&snapshot).await?;
    let mut kv = etcd.client().await?;
    delete_endpoint(&mut kv, &t, addr(1)).await?;
    put_endpoint(&mut kv, &t, addr(3)).await?;
    let now = kv
        .get("x", None)
        .await?
        .header()
        .map_or(0, |h| h.revision());
    assert!(
        now < seen,
        "the restored store ({now}) must be behind {seen}"
    );
    let recovered = converge(&balancer, &[addr(0), addr(3)]).await?;
    let counts = spread(&mut client, 100).await?;
    println!(
        "etcd restored from a snapshot: revision {seen} -> {now}; resolver on the restored \
         set {recovered:?} after the change; 100 calls after: {counts:?}"
    );
    assert_eq!(counts.get("a"), Some(&50), "{counts:?}");
    assert_eq!(counts.get("d"), Some(&50), "{counts:?}");
    assert!(
        recovered < HISTORY_RECOVERY_BOUND,
        "recovery took {recovered:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notices_a_restore_even_when_the_revision_has_caught_up() -> Result<()> {
    capture_logs();
    let mut etcd = Etcd::start().await?;
    let mut kv = etcd.client().await?;
    let t = target("caught-up");
    let k = |s: &str| format!("{t}/{s}");
    kv.put(k("a"), value("127.0.0.70:1"), None).await?;
    let backup = tempfile::tempdir()?;
    let snapshot = backup.path().join("etcd.db");
    etcd.snapshot_save(&snapshot).await?;
    kv.put(k("b"), value("127.0.0.71:1"), None).await?;

    // The resolver reaches etcd through a proxy, so it is away during the whole restore.
    let proxy = etcd_proxy(etcd_addr(&etcd.endpoint())?).await?;
    let resolver = Resolver::builder(Client::connect([proxy.endpoint()], None).await?, &t)
        .backoff(fast_etcd_backoff())
        .request_timeout(Duration::from_secs(2))
        .build()
        .await?;
    wait_keys(&resolver, &[k("a"), k("b")]).await?;
    let seen = kv
        .get("x", None)
        .await?
        .header()
        .map_or(0, |h| h.revision());
    proxy.cut();
    poll("the watch to break", Duration::from_secs(20), || async {
        (!resolver.is_connected()).then_some(())
    })
    .await?;

    // Restored to the backup ({a}), then so many writes that the revision passes what the
    // resolver saw: only the content of the history can tell.
    etcd.restore_snapshot(&snapshot).await?;
    let mut kv = etcd.client().await?;
    let now = advance_revision(&mut kv, 20).await?;
    kv.put(k("c"), value("127.0.0.72:1"), None).await?;
    assert!(
        now > seen,
        "the restored store ({now}) must have passed {seen}"
    );

    proxy.open();
    let started = tokio::time::Instant::now();
    wait_keys(&resolver, &[k("a"), k("c")]).await?;
    println!(
        "etcd restored and written past the revision seen ({seen} -> {now}); resolver on the \
         restored set {:?} after reconnecting",
        started.elapsed()
    );
    assert!(
        logs().contains("is not in etcd's history"),
        "the resolver did not detect the restore from the last change it saw"
    );
    Ok(())
}
