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
    let proxy = Proxy::start(etcd_addr(&etcd.endpoint())?).await?;
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
    proxy.cut().await;
    etcd.restart().await?;
    let mut kv = etcd.client().await?;
    delete_endpoint(&mut kv, &t, a.addr()).await?;
    put_endpoint(&mut kv, &t, c.addr()).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!balancer.resolver().is_connected());
    assert_eq!(spread(&mut client, 10).await?.len(), 2);

    proxy.restore();
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
    let proxy = Proxy::start(etcd_addr(&etcd.endpoint())?).await?;
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

    proxy.cut().await;
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

    proxy.restore();
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
