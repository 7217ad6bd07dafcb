//! Self-registration against a real etcd: lease kept alive, re-registration after the lease is
//! revoked or etcd loses its data, deregistration on drop, several registrations on one lease.

mod common;

use std::time::Duration;

use anyhow::{Context, Result};
use common::*;
use etcd_client::Client;
use registrar_resolver::{Backoff, Endpoint, Metadata, Registration, Resolver, SharedLease};
use registrar_testenv::{Etcd, poll};
use serde_json::json;

/// The key's (value, lease) if present.
async fn read(kv: &mut Client, key: &str) -> Result<Option<(Vec<u8>, i64)>> {
    let resp = kv.get(key, None).await?;
    Ok(resp
        .kvs()
        .first()
        .map(|kv| (kv.value().to_vec(), kv.lease())))
}

fn fast() -> Backoff {
    Backoff::new(Duration::from_millis(100), Duration::from_millis(500))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_is_kept_alive_and_survives_lease_revocation() -> Result<()> {
    init_tracing();
    let etcd = Etcd::start().await?;
    let mut kv = etcd.client().await?;
    let t = target("reg");
    let reg = Registration::builder(etcd.client().await?, &t, "127.0.0.70:5000")
        .metadata(json!({"zone": "a", "weight": 3}))
        .ttl(Duration::from_secs(2))
        .backoff(fast())
        .register()
        .await?;
    assert_eq!(reg.key(), format!("{t}/127.0.0.70:5000"));
    let (value, lease) = read(&mut kv, reg.key()).await?.context("key missing")?;
    let decoded = Endpoint::decode(&value)?;
    assert_eq!(decoded.addr, "127.0.0.70:5000");
    assert_eq!(
        decoded.metadata.to_value()?,
        json!({"zone": "a", "weight": 3})
    );
    assert_eq!(Some(lease), reg.lease().id());

    // Kept alive well past its TTL.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(read(&mut kv, reg.key()).await?.map(|(_, l)| l), Some(lease));

    // Revoked behind its back: the key disappears, then comes back on a new lease.
    kv.lease_revoke(lease).await?;
    let new_lease = poll("re-registration", Duration::from_secs(10), || async {
        match read(&mut kv.clone(), reg.key()).await {
            Ok(Some((_, l))) if l != lease && l != 0 => Some(l),
            _ => None,
        }
    })
    .await?;
    assert_eq!(reg.lease().id(), Some(new_lease));

    // Dropped: the key is deleted.
    drop(reg);
    poll("the key to be deleted", Duration::from_secs(10), || async {
        matches!(
            read(&mut kv.clone(), &format!("{t}/127.0.0.70:5000")).await,
            Ok(None)
        )
        .then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_share_one_lease_and_deregister_individually() -> Result<()> {
    init_tracing();
    let etcd = Etcd::start().await?;
    let mut kv = etcd.client().await?;
    let t = target("shared");
    let lease = SharedLease::builder(etcd.client().await?)
        .ttl(Duration::from_secs(3))
        .backoff(fast())
        .grant()
        .await?;
    let one = lease
        .register(&t, Endpoint::new("127.0.0.71:1", Metadata::null())?)
        .await?;
    let two = lease
        .register(&t, Endpoint::new("127.0.0.72:1", json!("two").into())?)
        .await?;
    let other_target = format!("{t}-other");
    let three = lease
        .register(
            &other_target,
            Endpoint::new("127.0.0.73:1", Metadata::null())?,
        )
        .await?;
    let id = lease.id().context("no lease")?;
    for r in [&one, &two, &three] {
        assert_eq!(read(&mut kv, r.key()).await?.map(|(_, l)| l), Some(id));
    }
    // The same key twice on one lease is refused.
    assert!(
        lease
            .register(&t, Endpoint::new("127.0.0.71:1", Metadata::null())?)
            .await
            .is_err()
    );

    // A resolver sees exactly this target's two.
    let resolver = Resolver::new(etcd.client().await?, &t).await?;
    assert_eq!(
        resolver.snapshot().addrs().into_iter().collect::<Vec<_>>(),
        ["127.0.0.71:1", "127.0.0.72:1"]
    );

    let one_key = one.key().to_owned();
    one.deregister().await?;
    assert_eq!(read(&mut kv, &one_key).await?, None);
    assert!(read(&mut kv, two.key()).await?.is_some());
    let two_key = two.key().to_owned();
    let three_key = three.key().to_owned();
    drop(two);
    poll("two to be deleted", Duration::from_secs(10), || async {
        matches!(read(&mut kv.clone(), &two_key).await, Ok(None)).then_some(())
    })
    .await?;
    assert!(read(&mut kv, &three_key).await?.is_some());

    // Shutting the lease down revokes it: every remaining key goes.
    lease.shutdown().await?;
    assert_eq!(read(&mut kv, &three_key).await?, None);
    drop(three);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_comes_back_after_etcd_loses_its_data() -> Result<()> {
    init_tracing();
    let mut etcd = Etcd::start().await?;
    let t = target("wipe");
    let reg = Registration::builder(etcd.client().await?, &t, "127.0.0.74:1")
        .ttl(Duration::from_secs(2))
        .backoff(fast())
        .register()
        .await?;
    let key = reg.key().to_owned();
    let mut kv = etcd.client().await?;
    let (_, old_lease) = read(&mut kv, &key)
        .await?
        .context("registered key missing")?;
    etcd.wipe().await?;
    let mut kv = etcd.client().await?;
    // The registration may already have come back by now (it notices the wipe within a
    // keepalive interval), so the wipe is proven by its old lease, which etcd no longer knows.
    let old = kv.lease_time_to_live(old_lease, None).await?;
    assert!(
        old.ttl() < 0,
        "etcd was not wiped: lease {old_lease:x} still has {} s",
        old.ttl()
    );
    poll(
        "re-registration on the fresh etcd",
        Duration::from_secs(20),
        || async {
            matches!(read(&mut kv.clone(), &key).await, Ok(Some((_, lease))) if lease != 0 && lease != old_lease)
                .then_some(())
        },
    )
    .await?;
    drop(reg);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_registrations_are_refused() -> Result<()> {
    init_tracing();
    let etcd = Etcd::start().await?;
    let c = etcd.client().await?;
    assert!(
        Registration::register(c.clone(), "t", "no-port")
            .await
            .is_err()
    );
    assert!(
        Registration::register(c.clone(), "", "127.0.0.1:1")
            .await
            .is_err()
    );
    assert!(
        Registration::builder(c.clone(), "t", "127.0.0.1:1")
            .ttl(Duration::from_millis(1500))
            .register()
            .await
            .is_err()
    );
    // etcd unreachable: an error, not a hang.
    let dead = Client::connect(["http://127.0.0.1:1"], None).await?;
    let result = tokio::time::timeout(
        Duration::from_secs(15),
        Registration::register(dead, "t", "127.0.0.1:1"),
    )
    .await?;
    assert!(result.is_err());
    Ok(())
}

/// Expiry is never guessed from the clock: etcd gives leases a fresh TTL when it restarts, so a
/// registration whose etcd was down longer than the TTL keeps its lease (no second grant, no
/// re-put under another lease).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_that_survives_an_etcd_outage_longer_than_its_ttl_is_kept() -> Result<()> {
    init_tracing();
    let mut etcd = Etcd::start().await?;
    let t = target("outage");
    let reg = Registration::builder(etcd.client().await?, &t, "127.0.0.75:1")
        .ttl(Duration::from_secs(2))
        .backoff(fast())
        .register()
        .await?;
    let lease = reg.lease().id().context("no lease")?;
    etcd.stop().await?;
    // Twice the TTL without a single keepalive answer.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        reg.lease().id(),
        Some(lease),
        "lease given up during the outage"
    );
    etcd.restart().await?;
    let mut kv = etcd.client().await?;
    assert_eq!(read(&mut kv, reg.key()).await?.map(|(_, l)| l), Some(lease));
    // Kept alive again for several TTLs, under the same lease.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let now = read(&mut kv, reg.key()).await?.map(|(_, l)| l);
    println!("lease {lease} before a 4 s outage (TTL 2 s); the key's lease 5 s after: {now:?}");
    assert_eq!(now, Some(lease));
    assert_eq!(reg.lease().id(), Some(lease));
    drop(reg);
    Ok(())
}

/// A key deleted, overwritten, or put without the lease by someone else while the lease lives is
/// put back (the registration watches its own key), without a new lease; a key deregistered is
/// not put back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_deleted_or_changed_by_hand_is_put_back() -> Result<()> {
    init_tracing();
    let etcd = Etcd::start().await?;
    let mut kv = etcd.client().await?;
    let t = target("guarded");
    let lease = SharedLease::builder(etcd.client().await?)
        .ttl(Duration::from_secs(30))
        .backoff(fast())
        .grant()
        .await?;
    let reg = lease
        .register(
            &t,
            Endpoint::new("127.0.0.71:5000", json!({"zone": "a"}).into())?,
        )
        .await?;
    let other = lease
        .register(&t, Endpoint::new("127.0.0.71:500", Metadata::null())?)
        .await?;
    let (value, id) = read(&mut kv, reg.key()).await?.context("key missing")?;
    let (reader, key) = (kv.clone(), reg.key().to_owned());
    let restored = |what: &'static str| {
        let (kv, key, value) = (reader.clone(), key.clone(), value.clone());
        async move {
            let started = std::time::Instant::now();
            poll(what, Duration::from_secs(10), || async {
                (read(&mut kv.clone(), &key).await.ok()? == Some((value.clone(), id))).then_some(())
            })
            .await?;
            println!("{what}: back after {:?}", started.elapsed());
            anyhow::Ok(())
        }
    };

    kv.delete(reg.key(), None).await?;
    restored("the deleted key put back").await?;
    kv.put(reg.key(), "garbage", None).await?;
    restored("the overwritten key put back").await?;
    kv.put(reg.key(), value.clone(), None).await?;
    restored("the key put without the lease put back under it").await?;
    assert_eq!(lease.id(), Some(id), "no new lease for a restore");
    // The neighbour whose key is a prefix of this one was never touched.
    assert!(read(&mut kv, other.key()).await?.is_some());

    // Deregistered: stays deleted (the guard stopped with the registration).
    reg.deregister().await?;
    kv.put(key.as_str(), "someone else's", None).await?;
    kv.delete(key.as_str(), None).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        read(&mut kv, &key).await?,
        None,
        "a deregistered key came back"
    );
    drop(other);
    Ok(())
}
