//! Registrar, the operator: mirrors the ready endpoints selected by `ServiceRegistration`s into
//! etcd, in etcd's gRPC naming format, under one lease that it keeps alive.
//!
//! - [`crd`]: the `ServiceRegistration` custom resource.
//! - [`desired`]: the pure decision "which endpoints belong in etcd".
//! - [`index`]: the in-memory view of registrations and pods that feeds it.
//! - [`status`]: the pure status computation.
//! - [`etcd`]: the etcd writer (lease, diffs, batching, drift repair, prefix ownership).
//! - [`controller`]: the engine that wires watches, the index, the writer and the API writes.
//! - [`leader`], [`admin`], [`metrics`], [`config`], [`connect`]: running it.
//! - [`inspect`] and [`doctor`]: the diagnostic commands (`registrar inspect`, `registrar doctor`).
//! - [`probe`]: `registrar probe`, the chart's `helm test` check of `/readyz`.

pub mod admin;
pub mod backoff;
pub mod coalesce;
pub mod config;
pub mod connect;
pub mod controller;
pub mod crd;
pub mod desired;
pub mod doctor;
pub mod etcd;
pub mod index;
pub mod inspect;
pub mod leader;
pub mod metrics;
pub mod pod;
pub mod probe;
pub mod status;
pub mod topology;
