//! The example workload: the test ground's Greeter gRPC server (`proto/greeter.proto`), whose
//! replies name the backend that answered, run as [`GracefulServer`] with the resolver's drain
//! helper ([`drainer`]): on SIGTERM it turns NOT_SERVING on `grpc.health.v1`, keeps serving
//! for [`DRAIN_DELAY`], then shuts down gracefully (stop accepting, let in-flight RPCs finish),
//! bounded by a grace period — what a pod does on SIGTERM — and its client.

use std::sync::Arc;
use std::time::Duration;

use registrar_resolver::Drain;
use registrar_testenv::greeter::{BoxUnit, Drainer};
pub use registrar_testenv::greeter::{
    GracefulServer, GreeterClient, HelloReply, HelloRequest, ServeError, Shutdown,
};

/// How long a server keeps serving after turning NOT_SERVING: clients with health checking
/// stop picking it within one message; calls already picked still arrive.
pub const DRAIN_DELAY: Duration = Duration::from_secs(2);

/// The drain helper (`registrar_resolver::Drain`) with `delay`, for
/// [`GracefulServer::start_draining`]: started by the server's shutdown (the SIGTERM).
pub fn drainer(delay: Duration) -> Drainer {
    Arc::new(move |reporter, trigger: BoxUnit| -> BoxUnit {
        Box::pin(Drain::new(reporter).delay(delay).trigger(trigger).wait())
    })
}
