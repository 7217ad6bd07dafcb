//! Client-side gRPC service discovery through etcd for [tonic], wire-compatible with etcd's
//! gRPC naming (`go.etcd.io/etcd/client/v3/naming`), with real round-robin over READY backends.
//!
//! Backends of a *target* (e.g. `registrar/shop/greeter`) are etcd keys `<target>/<addr>`
//! whose values are `{"Op":0,"Addr":"192.0.2.25:50051","Metadata":…}`: what the Registrar
//! operator publishes for Kubernetes workloads, what Go's `endpoints.Manager` writes and what
//! [`Registration`] writes for servers outside Kubernetes.
//!
//! - [`Resolver`] keeps the endpoint set of a target: list, then watch from the next revision,
//!   resume after broken streams, relist after compaction, keep the last known set while etcd
//!   is unreachable. Consumers get [`Snapshot`]s.
//! - [`Balancer`] is a `Clone` [`tower::Service`] usable by any tonic-generated client: one
//!   connection per backend address, round-robin over READY backends only, gRPC connection
//!   backoff for failing ones, bounded wait then `Unavailable` when none is ready. Opt-in
//!   client-side health checking (gRFC A17, [`BalancerBuilder::health_check`]) keeps backends
//!   that report NOT_SERVING out of the pick set while their connection stays open; opt-in
//!   outlier ejection (gRFC A50, [`BalancerBuilder::outlier_detection`]) keeps backends that
//!   fail far more calls than the others out for a while. Opt-in zone preference
//!   ([`BalancerBuilder::zone`]) and weights ([`BalancerBuilder::weighted`]);
//!   [`Balancer::snapshot`] shows how it routes.
//! - [`FailoverBalancer`] spreads one client over several targets in priority order (the same
//!   service in several clusters, each target with its own etcd client): all calls go to the
//!   first group with a pickable backend; a group whose etcd is unreachable keeps serving from
//!   its last endpoints until [`FailoverBuilder::stale_after`] (60 s), then only as a last resort.
//! - [`Registration`] / [`SharedLease`] register a server under a lease kept alive, re-granted
//!   and re-put after a loss, deleted on shutdown.
//! - [`Drain`] is the server half of a zero-error rollout: on SIGTERM, NOT_SERVING on the
//!   health service, deregistration, a drain delay, then tonic's graceful shutdown.
//! - [`EtcdConnect`] builds an etcd client with several endpoints, TLS and user/password; its
//!   [`members`] guard keeps dead or frozen etcd members out of the client's balanced set.
//!
//! # Example
//!
//! A server registers itself; a client calls the target through the balancer.
//!
//! ```no_run
//! # mod pb { // stands for your tonic-generated module: `tonic::include_proto!("greeter.v1");`
//! #     #[derive(Clone, PartialEq, prost::Message)]
//! #     pub struct HelloRequest { #[prost(string, tag = "1")] pub name: String }
//! #     #[derive(Clone, PartialEq, prost::Message)]
//! #     pub struct HelloReply {
//! #         #[prost(string, tag = "1")] pub message: String,
//! #         #[prost(string, tag = "2")] pub backend: String,
//! #     }
//! #     pub struct GreeterClient(tonic::client::Grpc<registrar_resolver::Balancer>);
//! #     impl GreeterClient {
//! #         pub fn new(channel: registrar_resolver::Balancer) -> Self {
//! #             GreeterClient(tonic::client::Grpc::new(channel))
//! #         }
//! #         pub async fn say_hello(
//! #             &mut self,
//! #             request: HelloRequest,
//! #         ) -> Result<tonic::Response<HelloReply>, tonic::Status> {
//! #             self.0.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
//! #             let path = http::uri::PathAndQuery::from_static("/greeter.v1.Greeter/SayHello");
//! #             let codec = tonic_prost::ProstCodec::default();
//! #             self.0.unary(tonic::Request::new(request), path, codec).await
//! #         }
//! #     }
//! # }
//! use std::time::Duration;
//! use registrar_resolver::{Balancer, EtcdConnect, Registration};
//! use serde_json::json;
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let etcd = EtcdConnect::new(["http://127.0.0.1:2379"]).connect().await?;
//!
//!     // Server side: serve on 127.0.0.2:50051 (not shown), then register it.
//!     let registration = Registration::builder(etcd.clone(), "registrar/shop/greeter", "127.0.0.2:50051")
//!         .metadata(json!({"zone": "a"}))
//!         .ttl(Duration::from_secs(10))
//!         .register()
//!         .await?;
//!
//!     // Client side: one balanced channel for the whole target.
//!     let channel = Balancer::builder(etcd, "registrar/shop/greeter")
//!         .wait_for_ready_timeout(Duration::from_secs(5))
//!         .build()
//!         .await?;
//!     let mut client = pb::GreeterClient::new(channel);
//!     let reply = client
//!         .say_hello(pb::HelloRequest { name: "world".into() })
//!         .await?;
//!     println!("{} (from {})", reply.get_ref().message, reply.get_ref().backend);
//!
//!     registration.deregister().await?;
//!     Ok(())
//! }
//! ```
//!
//! # Health checking
//!
//! Off by default. [`BalancerBuilder::health_check`] turns it on for a service name (`""`: the
//! whole server); [`BalancerBuilder::health_check_backoff`] sets the retry backoff of a failed
//! Watch (default [`Backoff::GRPC`]). Servers offer the standard `grpc.health.v1.Health`
//! service, e.g. with [`tonic_health`]:
//!
//! ```no_run
//! # async fn f(etcd: registrar_resolver::etcd_client::Client) -> Result<(), Box<dyn std::error::Error>> {
//! // Server: the health service next to the real ones; NOT_SERVING when it starts draining.
//! let (reporter, health_service) = tonic_health::server::health_reporter();
//! reporter
//!     .set_service_status("greeter.v1.Greeter", tonic_health::ServingStatus::Serving)
//!     .await;
//! // Server::builder().add_service(health_service).add_service(greeter)...
//! # drop(health_service);
//!
//! // Client: only backends whose Watch says SERVING are picked.
//! let channel = registrar_resolver::Balancer::builder(etcd, "registrar/shop/greeter")
//!     .health_check("greeter.v1.Greeter")
//!     .build()
//!     .await?;
//! for backend in channel.health() {
//!     println!("{} {:?} pickable={}", backend.addr, backend.health, backend.pickable);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Outlier ejection
//!
//! Off by default. [`BalancerBuilder::outlier_detection`] with an [`OutlierDetection`] turns
//! it on; its defaults are gRFC A50's: a sweep every 10 s over the calls completed since the
//! last one; the success-rate check (≥ 5 backends with ≥ 100 calls; eject below
//! `mean − 1.9 × stdev`) and the failure-percentage check (≥ 5 backends with ≥ 50 calls; eject
//! above 85 % failures); ejections last 30 s × the number of ejections in a row, at most
//! 300 s; at most 10 % of the backends ejected at once (one always may be). Failures are
//! transport errors and UNAVAILABLE, INTERNAL, UNKNOWN and DATA_LOSS (see
//! [`OutlierDetection::failure_codes`]). Counting is one atomic add per completed call; an
//! ejected backend keeps its connection. It composes with health checking: a backend is
//! picked only when READY, healthy and not ejected ([`Balancer::health`] shows all three).
//!
//! ```no_run
//! # async fn f(etcd: registrar_resolver::etcd_client::Client) -> Result<(), Box<dyn std::error::Error>> {
//! use registrar_resolver::{Balancer, OutlierDetection};
//!
//! let channel = Balancer::builder(etcd, "registrar/shop/greeter")
//!     .outlier_detection(OutlierDetection::default())
//!     .build()
//!     .await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Draining a server
//!
//! The server half of a zero-error rollout, [`Drain`]: on SIGTERM (or a future given to
//! [`Drain::trigger`]) it sets the whole server (`""`) and every [`Drain::service`]
//! NOT_SERVING on its `tonic-health` reporter, deletes the [`Drain::registration`] if one is
//! attached, keeps serving for [`Drain::delay`] (default 5 s), then returns, which starts
//! tonic's graceful shutdown (GOAWAY, in-flight calls finish). The pod's
//! `terminationGracePeriodSeconds` must cover the delay plus the longest call; a `preStop` hook
//! is then optional. Clients with health checking stop picking the server within one message;
//! clients without it drop it when the operator (or the deregistration) removes its key.
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use registrar_resolver::Drain;
//!
//! let (reporter, health) = tonic_health::server::health_reporter();
//! let drain = Drain::new(reporter).delay(Duration::from_secs(5));
//! tonic::transport::Server::builder()
//!     .add_service(health) // and your services
//!     .serve_with_shutdown("0.0.0.0:50051".parse()?, drain.wait())
//!     .await?;
//! # Ok(())
//! # }
//! ```
//!
//! Measured on a kwok cluster (`cargo bench --bench rollouts`): three rolling updates of 4
//! replicas under 8 concurrent callers lost no RPC with health checking and a 2 s drain delay;
//! servers that die on SIGTERM lost calls in flight in every rollout.
//!
//! # Compatibility notes
//!
//! - The resolver reads `<target>/` (with the slash), as etcd's Go resolver 3.5+ does for its
//!   watch; a target with a trailing slash is the same target.
//! - Values are decoded like Go's `encoding/json` (see [`value`]); invalid ones are skipped with
//!   a warning. A PUT that replaces a valid value with an invalid one removes the endpoint (a
//!   relist would not find it either), where Go's resolver would keep the stale address.
//! - Unlike Go's resolver, which stops for good when its watch fails, this one resumes, relists
//!   after compaction, and lets calls wait (bounded) instead of blocking forever on an empty set.
//! - grpc-go clients dialing `etcd:///registrar/shop/greeter` send the target path as
//!   `:authority`, which is not a valid authority; hyper (hence tonic servers) resets such
//!   streams with `PROTOCOL_ERROR`. Go clients of tonic servers need `grpc.WithAuthority(..)`.
//! - A backend that shuts down gracefully (HTTP/2 GOAWAY) stops getting new calls at once on
//!   plaintext connections (the balancer reads frame headers as they pass); under TLS it is
//!   noticed when tonic finds the connection unusable, which can cost that one call.

#![deny(missing_docs)]

mod backoff;
mod balancer;
mod discovery;
mod drain;
mod error;
pub use registrar_etcd::members;
mod registration;
pub mod value;

#[cfg(test)]
mod fuzz;

pub use backoff::Backoff;
/// Internals for the crate's own `picker` benchmark (feature `bench-internals`); not part of
/// the public API.
#[cfg(feature = "bench-internals")]
pub use balancer::bench as bench_internals;
pub use balancer::{
    BackendHealth, BackendSnapshot, BackendState, BackendStatus, Balancer, BalancerBuilder,
    ConnectivityState, FailoverBalancer, FailoverBuilder, FailoverSnapshot,
    FailurePercentageEjection, GroupSnapshot, HealthState, OutlierDetection, PickSetWatch,
    ResponseFuture, RoutingSnapshot, SuccessRateEjection, ZONE_ENV, ZoneFilter,
};
pub use discovery::{Endpoints, Resolver, ResolverBuilder, Snapshot};
pub use drain::Drain;
pub use error::{Error, ErrorKind};
pub use registrar_etcd::EtcdConnect;
pub use registration::{Registration, RegistrationBuilder, SharedLease, SharedLeaseBuilder};
pub use value::{Endpoint, Metadata};

/// The etcd client this crate works with (re-exported so versions match).
pub use etcd_client;

/// The crate README's code, compiled as doctests so that the quick start stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
