//! `REGISTRAR_ZONE` names the client's zone when the builder does not (alone in its test binary:
//! it sets the process environment).

mod common;

use anyhow::Result;
use common::*;
use registrar_resolver::{Balancer, Endpoint, Metadata, ZONE_ENV, ZoneFilter};
use registrar_testenv::greeter::{self, GreeterClient};
use registrar_testenv::{Etcd, poll};
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_zone_comes_from_the_environment() -> Result<()> {
    init_tracing();
    // SAFETY: the only test of this binary, before any other thread reads the environment.
    unsafe { std::env::set_var(ZONE_ENV, "b") };
    let etcd = Etcd::start().await?;
    let mut kv = etcd.client().await?;
    let target = target("zone-env");
    let mut servers = Vec::new();
    for (i, (n, zone)) in [(174u8, "a"), (175, "b")].into_iter().enumerate() {
        let s = greeter::serve(loopback(n), format!("{zone}{i}")).await;
        let value = Endpoint::new(
            s.addr().to_string(),
            Metadata::from_value(&json!({"zone": zone})),
        )?
        .encode();
        kv.put(format!("{target}/{}", s.addr()), value, None)
            .await?;
        servers.push(s);
    }
    let balancer = Balancer::builder(etcd.client().await?, &target)
        .build()
        .await?;
    poll("zone b only", Duration::from_secs(20), || async {
        let s = balancer.snapshot();
        (s.zone_filter == ZoneFilter::Local).then_some(())
    })
    .await?;
    assert_eq!(balancer.snapshot().zone.as_deref(), Some("b"));
    let mut client = GreeterClient::new(balancer.clone());
    let counts = spread(&mut client, 100).await?;
    eprintln!("REGISTRAR_ZONE=b, 100 RPCs: {counts:?}");
    assert_eq!(counts.get("b1"), Some(&100), "{counts:?}");
    // The builder wins over the environment.
    let other = Balancer::builder(etcd.client().await?, &target)
        .zone("a")
        .build()
        .await?;
    assert_eq!(other.snapshot().zone.as_deref(), Some("a"));
    Ok(())
}
