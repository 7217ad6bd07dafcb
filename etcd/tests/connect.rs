//! The shared etcd layer against a real etcd: the timeout policy of [`EtcdConnect`] (unary
//! requests may have a deadline; a watch stream never does, however long it stays idle).

use std::time::Duration;

use anyhow::{Result, bail};
use registrar_etcd::{EtcdConnect, Reflector, Update};
use registrar_testenv::Etcd;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_timeout_never_cuts_an_idle_watch() -> Result<()> {
    let etcd = Etcd::start().await?;
    let timeout = Duration::from_millis(500);
    let client = EtcdConnect::new([etcd.endpoint()])
        .request_timeout(Some(timeout))
        .member_probe(None)
        .connect()
        .await?;
    let mut reflector = Reflector::builder(client, "idle/")
        .history_check(Duration::from_secs(60))
        .build();
    let Update::Listed { .. } = reflector.next().await? else {
        bail!("the first update is not a listing");
    };
    let Update::Watching { .. } = reflector.next().await? else {
        bail!("no watch after the listing");
    };
    // Nothing changes for four times the request timeout: the watch must neither end nor
    // deliver anything.
    let idle = timeout * 4;
    if let Ok(update) = tokio::time::timeout(idle, reflector.next()).await {
        bail!("the idle watch did not stay quiet for {idle:?}: {update:?}");
    }
    let mut kv = etcd.client().await?;
    kv.put("idle/a", "1", None).await?;
    match tokio::time::timeout(Duration::from_secs(10), reflector.next()).await?? {
        Update::Changes { events, .. } if events.first().is_some_and(|e| e.key == "idle/a") => {}
        other => bail!("the watch did not deliver the change after {idle:?} idle: {other:?}"),
    }
    println!(
        "a watch idle for {idle:?} under a {timeout:?} request timeout delivered the next change"
    );
    Ok(())
}
