//! The Greeter service of `proto/greeter.proto` (package `greeter.v1`), written out by hand so
//! that the examples need no build script: its two messages, a client and a server.
//! `tonic-prost-build` generates the same (a `GreeterClient` and a `GreeterServer` trait) from
//! the `.proto` file; in your project, use that instead of this module.

// Each example uses one half (client or server).
#![allow(dead_code)]

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

/// A Greeter client over the [`Balancer`] (what tonic generates as
/// `GreeterClient<Channel>`; generated clients take the balancer the same way).
#[derive(Clone)]
pub struct GreeterClient {
    grpc: tonic::client::Grpc<Balancer>,
}

impl GreeterClient {
    /// A client sending its calls through `channel`.
    pub fn new(channel: Balancer) -> Self {
        GreeterClient {
            grpc: tonic::client::Grpc::new(channel),
        }
    }

    /// Calls `SayHello`.
    pub async fn say_hello(
        &mut self,
        request: HelloRequest,
    ) -> Result<tonic::Response<HelloReply>, tonic::Status> {
        self.grpc
            .ready()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let path = http::uri::PathAndQuery::from_static(SAY_HELLO);
        self.grpc
            .unary(tonic::Request::new(request), path, ProstCodec::default())
            .await
    }
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
