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
//!
//! The Greeter service (`proto/greeter.proto`) is written out by hand in [`pb`] so that the
//! example needs no build script; in your project `tonic-prost-build` generates it.

use std::collections::BTreeMap;
use std::error::Error;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use pb::{HelloReply, HelloRequest};
use registrar_resolver::{Balancer, EtcdConnect, Registration};
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
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let served = Arc::new(AtomicU64::new(0));
    let greeter = pb::GreeterServer::new({
        let (name, served) = (name.to_owned(), served.clone());
        move |request: HelloRequest| {
            served.fetch_add(1, Ordering::Relaxed);
            HelloReply {
                message: format!("Hello {}", request.name),
                backend: name.clone(),
            }
        }
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(greeter)
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                async {
                    let _ = stopped.await;
                },
            ),
    );
    let registration = Registration::builder(etcd, target, addr.to_string())
        .metadata(json!({"name": name}))
        .ttl(Duration::from_secs(10))
        .register()
        .await?;
    println!(
        "serving {name} on {addr}, registered as {}",
        registration.key()
    );
    tokio::signal::ctrl_c().await?;
    // Deregister first, so clients stop picking this server before it goes away.
    registration.deregister().await?;
    let _ = stop.send(());
    server.await??;
    println!(
        "deregistered and stopped; served {} calls",
        served.load(Ordering::Relaxed)
    );
    Ok(())
}

/// Makes `n` calls and prints which backend answered how often.
async fn call(etcd: etcd_client::Client, target: &str, n: usize) -> Result<()> {
    let channel = Balancer::builder(etcd, target)
        .wait_for_ready_timeout(Duration::from_secs(5))
        .build()
        .await?;
    let mut counts = BTreeMap::new();
    for i in 0..n {
        let reply = pb::say_hello(
            channel.clone(),
            HelloRequest {
                name: format!("call {i}"),
            },
        )
        .await?;
        println!("{} (from {})", reply.message, reply.backend);
        *counts.entry(reply.backend).or_insert(0usize) += 1;
    }
    println!("spread: {counts:?}");
    println!("backends: {:#?}", channel.backends());
    Ok(())
}

/// The Greeter service of `proto/greeter.proto` (package `greeter.v1`), by hand: its two
/// messages, a client call and a server. `tonic-prost-build` generates the same (with a
/// `GreeterClient` and a `GreeterServer` trait) from the `.proto` file.
mod pb {
    use std::convert::Infallible;
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use registrar_resolver::Balancer;
    use tonic::body::Body;
    use tonic_prost::ProstCodec;

    const SAY_HELLO: &str = "/greeter.v1.Greeter/SayHello";

    /// `greeter.v1.HelloRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct HelloRequest {
        /// Who to greet.
        #[prost(string, tag = "1")]
        pub name: String,
    }

    /// `greeter.v1.HelloReply`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct HelloReply {
        /// The greeting.
        #[prost(string, tag = "1")]
        pub message: String,
        /// The name of the backend that answered.
        #[prost(string, tag = "2")]
        pub backend: String,
    }

    /// Calls `SayHello` through the balancer (what `GreeterClient::new(balancer).say_hello(..)`
    /// does).
    pub async fn say_hello(
        channel: Balancer,
        request: HelloRequest,
    ) -> Result<HelloReply, tonic::Status> {
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let path = http::uri::PathAndQuery::from_static(SAY_HELLO);
        let reply = grpc
            .unary(tonic::Request::new(request), path, ProstCodec::default())
            .await?;
        Ok(reply.into_inner())
    }

    /// A Greeter server answering each `SayHello` with `handler(request)`.
    pub struct GreeterServer<F> {
        handler: Arc<F>,
    }

    impl<F> GreeterServer<F> {
        /// A server around `handler`.
        pub fn new(handler: F) -> Self {
            GreeterServer {
                handler: Arc::new(handler),
            }
        }
    }

    impl<F> Clone for GreeterServer<F> {
        fn clone(&self) -> Self {
            GreeterServer {
                handler: self.handler.clone(),
            }
        }
    }

    impl<F> tonic::server::NamedService for GreeterServer<F> {
        const NAME: &'static str = "greeter.v1.Greeter";
    }

    impl<F> tower::Service<http::Request<Body>> for GreeterServer<F>
    where
        F: Fn(HelloRequest) -> HelloReply + Send + Sync + 'static,
    {
        type Response = http::Response<Body>;
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: http::Request<Body>) -> Self::Future {
            if request.uri().path() != SAY_HELLO {
                let status = tonic::Status::unimplemented(request.uri().path().to_owned());
                return Box::pin(async move { Ok(status.into_http()) });
            }
            let method = SayHello(self.handler.clone());
            Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(ProstCodec::default());
                Ok(grpc.unary(method, request).await)
            })
        }
    }

    struct SayHello<F>(Arc<F>);

    impl<F> tonic::server::UnaryService<HelloRequest> for SayHello<F>
    where
        F: Fn(HelloRequest) -> HelloReply + Send + Sync + 'static,
    {
        type Response = HelloReply;
        type Future = std::future::Ready<Result<tonic::Response<HelloReply>, tonic::Status>>;

        fn call(&mut self, request: tonic::Request<HelloRequest>) -> Self::Future {
            std::future::ready(Ok(tonic::Response::new((self.0)(request.into_inner()))))
        }
    }
}
