//! The example workload: the test ground's Greeter gRPC server (`proto/greeter.proto`), whose
//! replies name the backend that answered, run as [`GracefulServer`]: a graceful shutdown (stop
//! accepting, let in-flight RPCs finish, then close) bounded by a grace period — what a pod
//! does on SIGTERM — and its client.

pub use registrar_testenv::greeter::{
    GracefulServer, GreeterClient, HelloReply, HelloRequest, ServeError, Shutdown,
};
