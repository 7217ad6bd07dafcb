//! Registrar end to end on one machine, in one command (`hack/demo.sh`).
//!
//! The demo starts a local cluster from the test ground (etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler and kwok, whose pods get 127.x IPs), a separate etcd
//! for Registrar's keys and the `registrar` operator; applies `examples/greeter-registration.yaml`
//! and `examples/greeter-deployment.yaml`; runs a Greeter server for each Running pod on the pod's
//! IP, each draining on SIGTERM with the resolver's drain helper; and drives a client that
//! balances RPCs over the published backends with `registrar-resolver` (health checking and
//! outlier ejection on), while the Deployment is scaled to 5, rolled, and scaled to 2. Each
//! phase waits until the change has settled, then measures which backend answered how many RPCs.
//! [`run`] returns a [`DemoReport`]; the test asserts on it.
//!
//! - [`greeter`]: the example workload (a tonic server that names the backend that answered).
//! - [`client`]: the example client (a tonic client on a `registrar_resolver::Balancer`).
//! - [`kubelet`]: runs the workload for kwok's pods like a kubelet (pod watch; start; on
//!   deletion preStop, SIGTERM, grace period), never looking at etcd.
//! - [`operator`]: the operator's engine, in-process.
//! - [`manifests`]: the example YAMLs, parsed strictly.
//! - [`scenario`]: the script (with `settle`: when a change is done); [`console`], [`dashboard`],
//!   [`render`], [`etcd_log`] and `narrate`: what it prints.
//!
//! Everything listens on and dials loopback addresses only.

pub mod client;
pub mod console;
pub mod dashboard;
pub mod etcd_log;
pub mod greeter;
pub mod kubelet;
pub mod manifests;
mod narrate;
pub mod operator;
pub mod render;
pub mod report;
pub mod scenario;
mod settle;

pub use console::Output;
pub use report::{DemoReport, PhaseReport, PodInfo};
pub use scenario::{DemoOptions, NAMESPACE, PREFIX, run};
