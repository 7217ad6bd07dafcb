//! Pieces shared by the end-to-end benchmarks (`propagation`, `scale`): the Node and pod
//! statuses they create, running the `registrar` release binary against a test control plane
//! (admin endpoints, memory), and rendering and writing the Markdown reports.
//!
//! Each benchmark is its own crate and uses a subset of these helpers, hence the `dead_code`
//! allowance.
#![allow(dead_code)]

pub mod harness;
pub mod objects;
pub mod observer;
pub mod operator;
pub mod report;
