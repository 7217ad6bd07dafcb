//! A client that calls every server registered under a target, round-robin, through the
//! [`Balancer`]: one channel for the whole target, usable by any tonic-generated client.
//!
//! ```text
//! # start servers first (see the `server` example), then:
//! cargo run -p registrar-resolver --example client -- 10
//! ```
//!
//! `ETCD` (default `http://127.0.0.1:2379`, comma-separated for several members) and `TARGET`
//! (default `registrar/demo/greeter`: what the Registrar operator publishes for the
//! ServiceRegistration `greeter` in namespace `demo`) select the etcd cluster and the target.
//! `HEALTH_CHECK=1` picks only backends whose `grpc.health.v1` service says SERVING.

#[path = "common/greeter_pb.rs"]
mod pb;

use std::collections::BTreeMap;
use std::time::Duration;

use pb::{GreeterClient, HelloRequest};
use registrar_resolver::{Balancer, EtcdConnect};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let etcd = std::env::var("ETCD").unwrap_or_else(|_| "http://127.0.0.1:2379".into());
    let target = std::env::var("TARGET").unwrap_or_else(|_| "registrar/demo/greeter".into());
    let calls: usize = match std::env::args().nth(1) {
        Some(n) => n.parse()?,
        None => 10,
    };

    let etcd = EtcdConnect::new(etcd.split(',').map(str::trim))
        .connect()
        .await?;
    let mut builder = Balancer::builder(etcd, target)
        // A call waits at most this long for a READY backend, then fails with UNAVAILABLE.
        .wait_for_ready_timeout(Duration::from_secs(5));
    if std::env::var_os("HEALTH_CHECK").is_some() {
        builder = builder.health_check("greeter.v1.Greeter");
    }
    let channel = builder.build().await?;

    let mut client = GreeterClient::new(channel.clone());
    let mut counts = BTreeMap::new();
    for i in 0..calls {
        let request = HelloRequest {
            name: format!("call {i}"),
        };
        match client.say_hello(request).await {
            Ok(reply) => {
                let reply = reply.into_inner();
                println!("{} (from {})", reply.message, reply.backend);
                *counts.entry(reply.backend).or_insert(0usize) += 1;
            }
            // A failed call is a tonic::Status (UNAVAILABLE when no backend is ready).
            Err(status) => println!("call {i} failed: {:?} {}", status.code(), status.message()),
        }
    }
    println!("spread: {counts:?}");
    for backend in channel.backends() {
        println!("{} {:?}", backend.addr, backend.state);
    }
    Ok(())
}
