//! A Greeter server that registers itself in etcd, and a client that calls every registered
//! server round-robin through the [`Balancer`].
//!
//! ```text
//! # terminal 1, 2, 3: servers on distinct loopback addresses
//! cargo run -p registrar-resolver --example greeter -- serve 127.0.0.2:50051 b1
//! cargo run -p registrar-resolver --example greeter -- serve 127.0.0.3:50051 b2
//! # terminal 4: ten calls, spread over b1 and b2
//! cargo run -p registrar-resolver --example greeter -- call 10
//! ```
//!
//! `ETCD` (default `http://127.0.0.1:2379`, comma-separated for several) and `TARGET` (default
//! `registrar/demo/greeter`) select the etcd cluster and the target.

use std::collections::BTreeMap;
use std::error::Error;
use std::net::SocketAddr;
use std::time::Duration;

use registrar_resolver::{Balancer, EtcdConnect, Registration};
use registrar_testenv::greeter::{GreeterClient, HelloRequest};
use serde_json::json;

type Result<T> = std::result::Result<T, Box<dyn Error>>;

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let etcd = std::env::var("ETCD").unwrap_or_else(|_| "http://127.0.0.1:2379".into());
    let target = std::env::var("TARGET").unwrap_or_else(|_| "registrar/demo/greeter".into());
    let etcd = EtcdConnect::new(etcd.split(',').map(str::trim))
        .connect()
        .await?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["serve", addr, name] => serve(etcd, &target, addr.parse()?, name).await,
        ["call", n] => call(etcd, &target, n.parse()?).await,
        _ => Err("usage: greeter serve <ip:port> <name> | greeter call <n>".into()),
    }
}

/// Serves until Ctrl-C, registered under `target`; deregisters on the way out.
async fn serve(
    etcd: etcd_client::Client,
    target: &str,
    addr: SocketAddr,
    name: &str,
) -> Result<()> {
    let server = registrar_testenv::greeter::try_serve(addr, name.to_owned()).await?;
    let registration = Registration::builder(etcd, target, server.addr().to_string())
        .metadata(json!({"name": name}))
        .ttl(Duration::from_secs(10))
        .register()
        .await?;
    println!(
        "serving {name} on {}, registered as {}",
        server.addr(),
        registration.key()
    );
    tokio::signal::ctrl_c().await?;
    registration.deregister().await?;
    println!("deregistered; served {} calls", server.served());
    Ok(())
}

/// Makes `n` calls and prints which backend answered how often.
async fn call(etcd: etcd_client::Client, target: &str, n: usize) -> Result<()> {
    let channel = Balancer::builder(etcd, target)
        .wait_for_ready_timeout(Duration::from_secs(5))
        .build()
        .await?;
    let mut client = GreeterClient::new(channel.clone());
    let mut counts = BTreeMap::new();
    for i in 0..n {
        let reply = client
            .say_hello(HelloRequest {
                name: format!("call {i}"),
            })
            .await?
            .into_inner();
        println!("{} (from {})", reply.message, reply.backend);
        *counts.entry(reply.backend).or_insert(0usize) += 1;
    }
    println!("spread: {counts:?}");
    println!("backends: {:#?}", channel.backends());
    Ok(())
}
