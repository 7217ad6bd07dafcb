//! Connection options: etcd over TLS with a client certificate, etcd user/password, and TLS to
//! the backends with an explicit server name plus per-endpoint settings.

mod common;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use anyhow::{Context, Result};
use common::*;
use registrar_resolver::{Balancer, EtcdConnect};
use registrar_testenv::greeter::{GreeterClient, GreeterServer, NamedGreeter};
use registrar_testenv::{Etcd, EtcdOptions, Pki};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, Server, ServerTlsConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_over_tls_with_a_client_certificate() -> Result<()> {
    init_tracing();
    let etcd = Etcd::start_with(EtcdOptions { tls: true }).await?;
    let tls = etcd.tls().context("no TLS material")?.clone();
    let mut client = EtcdConnect::new([etcd.endpoint()])
        .ca_file(&tls.ca)?
        .identity_files(&tls.root_client.cert, &tls.root_client.key)?
        .domain_name("localhost")
        .connect()
        .await?;
    client.put("tls-check", "ok", None).await?;
    let got = client.get("tls-check", None).await?;
    assert_eq!(got.kvs()[0].value(), b"ok");

    // Without a client certificate etcd refuses.
    let result = async {
        let mut c = EtcdConnect::new([etcd.endpoint()])
            .ca_file(&tls.ca)?
            .domain_name("localhost")
            .connect_timeout(Duration::from_secs(2))
            .connect()
            .await?;
        c.put("tls-check", "no", None).await?;
        anyhow::Ok(())
    };
    let outcome = tokio::time::timeout(Duration::from_secs(15), result).await?;
    assert!(
        outcome.is_err(),
        "a client without certificate was accepted"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_with_user_and_password() -> Result<()> {
    init_tracing();
    let etcd = Etcd::start().await?;
    let mut admin = etcd.client().await?;
    admin.user_add("root", "s3cret", None).await?;
    admin.user_grant_role("root", "root").await?;
    admin.auth_enable().await?;

    let mut client = EtcdConnect::new([etcd.endpoint()])
        .user("root", "s3cret")
        .connect()
        .await?;
    client.put("auth-check", "ok", None).await?;

    let wrong = EtcdConnect::new([etcd.endpoint()])
        .user("root", "nope")
        .connect()
        .await;
    assert!(wrong.is_err(), "a wrong password was accepted");

    let mut anonymous = EtcdConnect::new([etcd.endpoint()]).connect().await?;
    assert!(anonymous.put("auth-check", "no", None).await.is_err());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_over_tls_with_an_explicit_server_name() -> Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let pki = Pki::new(dir.path())?;
    let serving = pki.serving("greeter")?;
    let identity = Identity::from_pem(std::fs::read(&serving.cert)?, std::fs::read(&serving.key)?);
    let ca = Certificate::from_pem(std::fs::read(&pki.ca)?);

    let etcd = Etcd::start().await?;
    let mut kv = etcd.client().await?;
    let t = target("tls");
    let mut servers = Vec::new();
    let mut drains = Vec::new();
    for (n, name) in [(60u8, "t0"), (61, "t1")] {
        let listener = tokio::net::TcpListener::bind(loopback(n)).await?;
        let addr = listener.local_addr()?;
        let served = Arc::new(AtomicU64::new(0));
        let svc = GreeterServer::new(NamedGreeter::new(name, served));
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let (drain, drained) = tokio::sync::oneshot::channel::<()>();
        drains.push(drain);
        let server = Server::builder()
            .tls_config(ServerTlsConfig::new().identity(identity.clone()))?
            .add_service(svc)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = drained.await;
            });
        servers.push(tokio::spawn(server));
        put_endpoint(&mut kv, &t, addr).await?;
    }

    // The certificate names localhost, the backends are 127.0.0.60/61: verification passes only
    // with the explicit domain name.
    let balancer = Balancer::builder(etcd.client().await?, &t)
        .tls(
            ClientTlsConfig::new()
                .ca_certificate(ca.clone())
                .domain_name("localhost"),
        )
        .configure_endpoint(|e| {
            Ok(e.timeout(Duration::from_secs(5))
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(5)))
        })
        .build()
        .await?;
    wait_ready(&balancer, 2).await?;
    let mut client = GreeterClient::new(balancer.clone());
    let counts = spread(&mut client, 100).await?;
    assert_eq!(counts.get("t0"), Some(&50), "{counts:?}");
    assert_eq!(counts.get("t1"), Some(&50), "{counts:?}");

    // t0 shuts down gracefully (GOAWAY). Under TLS the balancer cannot read the GOAWAY off the
    // socket: it learns from the first call that finds the connection unusable, so at most one
    // call fails; the rest go to t1.
    let _ = drains.remove(0).send(());
    let mut failed = 0;
    let mut counts = std::collections::BTreeMap::new();
    for _ in 0..100 {
        match hello(&mut client).await {
            Ok(b) => *counts.entry(b).or_insert(0) += 1,
            Err(_) => failed += 1,
        }
    }
    eprintln!("TLS drain: {failed} failed, {counts:?}");
    assert!(failed <= 1, "{failed} calls failed: {counts:?}");
    assert!(counts.get("t1").is_some_and(|n| *n >= 98), "{counts:?}");

    // A wrong server name never becomes READY; calls fail with Unavailable after the wait.
    let wrong = Balancer::builder(etcd.client().await?, &t)
        .tls(
            ClientTlsConfig::new()
                .ca_certificate(ca)
                .domain_name("not-the-name"),
        )
        .wait_for_ready_timeout(Duration::from_millis(500))
        .build()
        .await?;
    let mut client = GreeterClient::new(wrong.clone());
    assert_eq!(
        hello(&mut client).await.unwrap_err().code(),
        tonic::Code::Unavailable
    );
    assert!(
        wrong
            .backends()
            .iter()
            .all(|b| b.state != registrar_resolver::ConnectivityState::Ready)
    );
    for s in servers {
        s.abort();
    }
    Ok(())
}
