//! A Greeter server that registers itself in etcd with a [`Registration`] and drains with
//! [`Drain`] on SIGTERM (or Ctrl-C): NOT_SERVING on its health service, deregistration, a drain
//! delay during which it keeps answering, then tonic's graceful shutdown. Clients (the `client`
//! example, or Go's `etcd:///` resolver) stop picking it before it goes away: no call fails.
//!
//! ```text
//! # one terminal per server, on distinct loopback addresses
//! cargo run -p registrar-resolver --example server -- 127.0.0.2:50051 b1
//! cargo run -p registrar-resolver --example server -- 127.0.0.3:50051 b2
//! ```
//!
//! `ETCD` (default `http://127.0.0.1:2379`) and `TARGET` (default `registrar/demo/greeter`)
//! select the etcd cluster and the target. In Kubernetes, the Registrar operator registers the
//! pods instead: keep the [`Drain`] and leave out the [`Registration`].

#[path = "common/greeter_pb.rs"]
mod pb;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use pb::{GreeterServer, HelloReply, HelloRequest};
use registrar_resolver::{Drain, EtcdConnect, Registration};
use serde_json::json;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let etcd = std::env::var("ETCD").unwrap_or_else(|_| "http://127.0.0.1:2379".into());
    let target = std::env::var("TARGET").unwrap_or_else(|_| "registrar/demo/greeter".into());
    let mut args = std::env::args().skip(1);
    let (Some(addr), Some(name)) = (args.next(), args.next()) else {
        return Err("usage: server <ip:port> <name>".into());
    };
    let addr: SocketAddr = addr.parse()?;

    // The service itself.
    let served = Arc::new(AtomicU64::new(0));
    let greeter = GreeterServer::new({
        let (name, served) = (name.clone(), served.clone());
        move |request: HelloRequest| {
            served.fetch_add(1, Ordering::Relaxed);
            HelloReply {
                message: format!("Hello {}", request.name),
                backend: name.clone(),
            }
        }
    });
    // The standard health service next to it: what health-checking clients watch.
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("greeter.v1.Greeter", ServingStatus::Serving)
        .await;

    // Bind first, so that the registered address is the one that accepts connections (port 0
    // picks a free port).
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;

    // Register `<target>/<addr>` under a lease that is kept alive (and re-granted after a loss).
    let etcd = EtcdConnect::new(etcd.split(',').map(str::trim))
        .connect()
        .await?;
    let registration = Registration::builder(etcd, &target, addr.to_string())
        .metadata(json!({"name": name}))
        .ttl(Duration::from_secs(10))
        .register()
        .await?;
    println!(
        "serving {name} on {addr}, registered as {}",
        registration.key()
    );

    // On SIGTERM / Ctrl-C: NOT_SERVING, deregister, keep serving 5 s, then stop gracefully.
    let drain = Drain::new(reporter)
        .service("greeter.v1.Greeter")
        .registration(registration)
        .delay(Duration::from_secs(5));
    Server::builder()
        .add_service(health)
        .add_service(greeter)
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), drain.wait())
        .await?;
    println!(
        "drained and stopped; served {} calls",
        served.load(Ordering::Relaxed)
    );
    Ok(())
}
