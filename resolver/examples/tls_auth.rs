//! Connecting to an etcd cluster that requires TLS and a user/password (what a production etcd
//! usually does), then balancing over the target's backends, also over TLS.
//!
//! ```text
//! ETCD=https://127.0.0.1:2379 ETCD_CA=ca.pem ETCD_USER=reader ETCD_PASSWORD=secret \
//!   cargo run -p registrar-resolver --example tls_auth
//! ```
//!
//! - `ETCD`: the members' URLs (`https://`), comma-separated;
//! - `ETCD_CA`: the CA that signed the members' certificates (PEM);
//! - `ETCD_CERT` and `ETCD_KEY` (optional): a client certificate, when etcd requires one
//!   (`--client-cert-auth`);
//! - `ETCD_DOMAIN` (optional): the name to verify in the members' certificates, when the URLs
//!   use IP addresses the certificates do not name;
//! - `ETCD_USER` and `ETCD_PASSWORD` (optional): an etcd user with read access to the target's
//!   prefix (`etcdctl role grant-permission <role> read --prefix registrar/demo/greeter/`);
//! - `TARGET` (default `registrar/demo/greeter`);
//! - `BACKEND_CA` and `BACKEND_DOMAIN` (optional): TLS to the backends themselves.

use std::time::Duration;

use registrar_resolver::{Balancer, EtcdConnect};
use tonic::transport::{Certificate, ClientTlsConfig};

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let endpoints = var("ETCD").unwrap_or_else(|| "https://127.0.0.1:2379".into());
    let target = var("TARGET").unwrap_or_else(|| "registrar/demo/greeter".into());

    // TLS and authentication to etcd: each setting is optional; any TLS one turns TLS on.
    let mut connect = EtcdConnect::new(endpoints.split(',').map(str::trim))
        .connect_timeout(Duration::from_secs(5));
    if let Some(ca) = var("ETCD_CA") {
        connect = connect.ca_file(ca)?;
    }
    if let (Some(cert), Some(key)) = (var("ETCD_CERT"), var("ETCD_KEY")) {
        connect = connect.identity_files(cert, key)?;
    }
    if let Some(domain) = var("ETCD_DOMAIN") {
        connect = connect.domain_name(domain);
    }
    if let (Some(user), Some(password)) = (var("ETCD_USER"), var("ETCD_PASSWORD")) {
        connect = connect.user(user, password);
    }
    // Fails here, naming the cause, on a wrong CA, a wrong password or an unreachable cluster.
    let etcd = connect.connect().await?;

    // TLS to the backends (independent of etcd's TLS).
    let mut builder = Balancer::builder(etcd, target.clone());
    if let Some(ca) = var("BACKEND_CA") {
        let mut tls =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(std::fs::read(ca)?));
        if let Some(domain) = var("BACKEND_DOMAIN") {
            tls = tls.domain_name(domain);
        }
        builder = builder.tls(tls);
    }
    let channel = builder.build().await?;

    // Give the backends a moment to connect, then show what the balancer sees.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while channel.ready_count() == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("{target}: {} backend(s) READY", channel.ready_count());
    for backend in channel.backends() {
        println!(
            "  {} {:?} {:?}",
            backend.addr, backend.state, backend.last_error
        );
    }
    // `channel` is what a tonic-generated client takes: `GreeterClient::new(channel)`.
    Ok(())
}
