//! One backend connection and its connectivity state machine, after gRPC's subchannel:
//! `CONNECTING` → `READY` → (connection lost) → `IDLE` → `CONNECTING` …, and on a failed attempt
//! `TRANSIENT_FAILURE`, then a new attempt when the backoff window ends.
//!
//! Attempts follow gRPC's connection backoff: each attempt gets
//! `max(backoff window, min_connect_timeout)`; the next one starts when the window ends; the
//! window grows ×multiplier with jitter up to its maximum and resets once connected.
//!
//! With health checking on, each connection runs its own health Watch on its own channel while
//! it lasts ([`health::watch`]); it is pickable only while that says so.

use std::time::Duration;

use tokio::time::Instant;
use tonic::transport::Endpoint;

use super::ConnectivityState;
use super::connector::{OneShotConnector, TcpSettings};
use super::health::{self, HealthCheck, HealthState};
use super::pool::Sink;
use crate::backoff::{Backoff, BackoffState};

/// When and how long to try connecting, and whether to check health once connected.
#[derive(Clone, Debug)]
pub(crate) struct ConnectPolicy {
    pub(crate) backoff: Backoff,
    pub(crate) min_connect_timeout: Duration,
    pub(crate) health: Option<HealthCheck>,
}

/// Runs the connection of one backend through `endpoint`, reporting to `sink`, until aborted
/// by the pool.
pub(crate) async fn run(endpoint: Endpoint, policy: ConnectPolicy, sink: Sink) {
    let addr = sink.addr().clone();
    let tcp = TcpSettings::from_endpoint(&endpoint);
    // Under TLS the HTTP/2 frames cannot be read off the socket.
    let plaintext = endpoint.uri().scheme_str() != Some("https");
    let mut backoff = BackoffState::new(policy.backoff);
    let mut window_end = Instant::now() + backoff.current();
    loop {
        sink.state(ConnectivityState::Connecting, None);
        let timeout = window_end
            .saturating_duration_since(Instant::now())
            .max(policy.min_connect_timeout);
        let (connector, live) = OneShotConnector::new(tcp, plaintext);
        let error =
            match tokio::time::timeout(timeout, endpoint.connect_with_connector(connector)).await {
                Ok(Ok(channel)) => {
                    let ready_at = Instant::now();
                    backoff.reset();
                    tracing::debug!(%addr, "backend connected");
                    match &policy.health {
                        None => {
                            sink.ready(channel, live.clone(), HealthState::Off);
                            live.gone().await;
                        }
                        Some(check) => {
                            sink.ready(channel.clone(), live.clone(), HealthState::Pending);
                            // The Watch runs as long as the connection; never past it.
                            tokio::select! {
                                () = live.gone() => {}
                                () = health::watch(channel, check, |state, error| {
                                    sink.health(state, error)
                                }) => {}
                            }
                        }
                    }
                    tracing::info!(%addr, "backend connection lost or draining; reconnecting");
                    sink.state(ConnectivityState::Idle, None);
                    // A connection that dies right after connecting must not make us redial in a
                    // tight loop: space attempts by at least the initial backoff.
                    let earliest = ready_at + backoff.current();
                    tokio::time::sleep_until(earliest).await;
                    window_end = Instant::now() + backoff.current();
                    continue;
                }
                Ok(Err(e)) => error_chain(&e),
                Err(_) => format!("connect timed out after {timeout:?}"),
            };
        tracing::debug!(%addr, %error, "backend connection attempt failed");
        sink.state(ConnectivityState::TransientFailure, Some(error));
        tokio::time::sleep_until(window_end).await;
        window_end = Instant::now() + backoff.next_window();
    }
}

/// An error and its sources, joined (tonic's transport errors say little at the top level).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
