//! The resolver against a hostile etcd: a million-deep JSON nesting, a key whose suffix is not
//! an address, the largest value etcd accepts, and 100,000 keys under one target. The resolver
//! must skip what it cannot use, keep following the watch (a good key put after each attack
//! shows up), and stay within bounded memory (this process's peak RSS is printed and bounded).
//! (`discovery.rs` covers the other malformed values.) Only a [`Resolver`] runs here: nothing
//! dials the 100,000 addresses.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::Result;
use common::*;
use etcd_client::{Client, DeleteOptions, Txn, TxnOp};
use registrar_resolver::{Endpoint, Metadata, Resolver};
use registrar_testenv::{Etcd, poll};

/// How many keys the flood puts under one target.
const FLOOD: usize = 100_000;

fn value(addr: &str) -> String {
    Endpoint::new(addr, Metadata::null())
        .map(|e| e.encode())
        .unwrap_or_default()
}

fn addrs(resolver: &Resolver) -> BTreeSet<String> {
    resolver
        .snapshot()
        .endpoints()
        .values()
        .map(|e| e.addr.clone())
        .collect()
}

/// This process's peak and current resident set, MiB.
fn rss_mib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap_or(0)
            / 1024
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Puts a good key and waits until the resolver has it: the watch still follows.
async fn still_follows(kv: &mut Client, resolver: &Resolver, t: &str, addr: &str) -> Result<()> {
    kv.put(format!("{t}/{addr}"), value(addr), None).await?;
    poll(
        &format!("{addr} resolved after the attack"),
        Duration::from_secs(30),
        || async { addrs(resolver).contains(addr).then_some(()) },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_etcd_is_survived_in_bounded_memory() -> Result<()> {
    // No log subscriber: 100,000 "endpoint added" lines would measure the terminal.
    let etcd = Etcd::start().await?;
    let mut kv = etcd.client().await?;
    let t = target("hostile");
    let resolver = Resolver::new(etcd.client().await?, &t).await?;
    let (peak_start, _) = rss_mib();

    // A million-deep nesting (1 MB of '['), and the same inside a valid-looking value.
    let deep = "[".repeat(1_000_000);
    kv.put(format!("{t}/deep"), deep.as_str(), None).await?;
    let deep_meta = format!(
        r#"{{"Op":0,"Addr":"127.0.0.30:1","Metadata":{}}}"#,
        "[".repeat(1_000_000)
    );
    kv.put(format!("{t}/deep-meta"), deep_meta, None).await?;
    still_follows(&mut kv, &resolver, &t, "127.0.0.31:1").await?;

    // A key whose suffix is not an address (the value's Addr is), and one whose value's Addr
    // is not an address either.
    kv.put(format!("{t}/not-an-address"), value("127.0.0.32:1"), None)
        .await?;
    kv.put(
        format!("{t}/neither"),
        r#"{"Op":0,"Addr":"not an address at all"}"#,
        None,
    )
    .await?;
    still_follows(&mut kv, &resolver, &t, "127.0.0.33:1").await?;

    // The largest value etcd accepts by default (1.5 MiB request limit): valid JSON whose
    // metadata is one huge string.
    let big = format!(
        r#"{{"Op":0,"Addr":"127.0.0.34:1","Metadata":"{}"}}"#,
        "x".repeat(1536 * 1024 - 2048)
    );
    kv.put(format!("{t}/127.0.0.34:1"), big, None).await?;
    still_follows(&mut kv, &resolver, &t, "127.0.0.35:1").await?;

    let have = addrs(&resolver);
    assert!(
        !have.contains("127.0.0.30:1"),
        "a million-deep metadata was accepted"
    );
    assert!(!have.iter().any(|a| a.contains("not an address")));
    println!(
        "after the malformed values: {} endpoints: {have:?}",
        have.len()
    );

    // 100,000 keys under one target, 128 puts per txn.
    let flood_start = Instant::now();
    let flood: Vec<String> = (0..FLOOD)
        .map(|i| {
            format!(
                "127.{}.{}.{}:50051",
                100 + i / 65_536,
                (i / 256) % 256,
                i % 256
            )
        })
        .collect();
    for chunk in flood.chunks(128) {
        let ops: Vec<TxnOp> = chunk
            .iter()
            .map(|a| TxnOp::put(format!("{t}/{a}"), value(a), None))
            .collect();
        kv.txn(Txn::new().and_then(ops)).await?;
    }
    let written = flood_start.elapsed();
    let want = have.len() + FLOOD;
    poll(
        "the resolver holds the flood",
        Duration::from_secs(120),
        || async { (resolver.snapshot().len() >= want).then_some(()) },
    )
    .await?;
    let resolved = flood_start.elapsed();
    still_follows(&mut kv, &resolver, &t, "127.0.0.36:1").await?;

    // A second resolver lists the flood from scratch (paginated).
    let list_start = Instant::now();
    let second = Resolver::new(etcd.client().await?, &t).await?;
    let listed = list_start.elapsed();
    assert!(second.snapshot().len() > FLOOD);
    drop(second);

    // All of it deleted in one revision.
    let delete_start = Instant::now();
    kv.delete(
        format!("{t}/127.1"),
        Some(DeleteOptions::new().with_prefix()),
    )
    .await?;
    poll(
        "the flood gone from the resolver",
        Duration::from_secs(60),
        || async { (resolver.snapshot().len() < 20).then_some(()) },
    )
    .await?;
    let deleted = delete_start.elapsed();
    still_follows(&mut kv, &resolver, &t, "127.0.0.37:1").await?;

    let (peak, now) = rss_mib();
    println!(
        "{FLOOD} keys: written in {written:?}, in the resolver after {resolved:?}; a fresh list took \
         {listed:?}; deleted in one revision, gone from the resolver after {deleted:?}; peak RSS \
         {peak} MiB (at start {peak_start} MiB), now {now} MiB"
    );
    // Generous: the values are ~60 bytes each; a copy per stage would still be far below this.
    assert!(
        peak < peak_start + 1024,
        "peak RSS {peak} MiB grew by more than 1 GiB"
    );
    Ok(())
}
