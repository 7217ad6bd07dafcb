//! Client-side health checking (gRFC A17): one `grpc.health.v1.Health/Watch` stream per backend
//! connection, on that connection's own channel, whose answers decide whether the backend may be
//! picked.
//!
//! - SERVING makes the backend pickable; NOT_SERVING, UNKNOWN and SERVICE_UNKNOWN take it out of
//!   the pick set (the connection stays open). Until the first answer it is not pickable.
//! - `UNIMPLEMENTED` (the server has no health service): the backend counts as healthy, one error
//!   is logged, and the Watch is never sent again on this connection.
//! - Any other end of the stream takes the backend out and starts the Watch again: at once if
//!   the stream had delivered a message (the backoff then starts over), after the next backoff
//!   delay otherwise.

use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::backoff::{Backoff, BackoffState};

/// What the health checking of one backend says, from [`Balancer::health`](crate::Balancer::health).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HealthState {
    /// Health checking is off: a READY backend is pickable.
    Off,
    /// No answer yet on the current connection (or not connected): not pickable.
    Pending,
    /// The last answer was SERVING: pickable.
    Serving,
    /// The last answer was NOT_SERVING: not pickable.
    NotServing,
    /// The last answer was UNKNOWN: not pickable.
    Unknown,
    /// The last answer was SERVICE_UNKNOWN (the server does not know the service): not pickable.
    ServiceUnknown,
    /// The server has no health service (`UNIMPLEMENTED`): treated as healthy, pickable.
    Unimplemented,
    /// The Watch stream failed; it is retried with backoff. Not pickable.
    Failed,
}

impl HealthState {
    /// Whether a READY backend in this state may be picked.
    pub fn is_pickable(self) -> bool {
        matches!(
            self,
            HealthState::Off | HealthState::Serving | HealthState::Unimplemented
        )
    }

    /// The state an answer puts the backend in (an unknown number counts as UNKNOWN).
    fn from_status(status: i32) -> Self {
        match ServingStatus::try_from(status) {
            Ok(ServingStatus::Serving) => HealthState::Serving,
            Ok(ServingStatus::NotServing) => HealthState::NotServing,
            Ok(ServingStatus::ServiceUnknown) => HealthState::ServiceUnknown,
            Ok(ServingStatus::Unknown) | Err(_) => HealthState::Unknown,
        }
    }
}

/// The health checking settings of a balancer.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct HealthCheck {
    /// The service name sent in the Watch request (`""`: the whole server).
    pub(crate) service: String,
    /// Delay before starting a Watch again after one that failed without any message.
    pub(crate) backoff: Backoff,
}

/// Watches the health of the backend behind `channel` (one connection), reporting every change of
/// state with `report` (and why, for a failed stream). Never returns: it runs until dropped,
/// which the subchannel does when the connection is gone.
pub(crate) async fn watch(
    channel: Channel,
    check: &HealthCheck,
    mut report: impl FnMut(HealthState, Option<String>),
) {
    let mut backoff = BackoffState::new(check.backoff);
    let mut wait_first = false;
    loop {
        if wait_first {
            tokio::time::sleep(backoff.next_delay()).await;
        }
        let (failure, received) = attempt(channel.clone(), &check.service, &mut report).await;
        if received {
            backoff.reset();
        }
        wait_first = !received;
        if failure.code() == Code::Unimplemented {
            tracing::error!(
                service = %check.service,
                error = %failure.message(),
                "the backend has no health service (UNIMPLEMENTED): health checking is off \
                 for this connection, the backend counts as healthy"
            );
            report(HealthState::Unimplemented, None);
            return std::future::pending().await;
        }
        tracing::debug!(
            service = %check.service,
            code = ?failure.code(),
            error = %failure.message(),
            received,
            "health Watch stream ended; starting it again"
        );
        report(
            HealthState::Failed,
            Some(format!(
                "health Watch: {:?}: {}",
                failure.code(),
                failure.message()
            )),
        );
    }
}

/// One Watch call: reports each answer; returns how the stream ended and whether any message
/// came.
async fn attempt(
    channel: Channel,
    service: &str,
    report: &mut impl FnMut(HealthState, Option<String>),
) -> (tonic::Status, bool) {
    let mut client = HealthClient::new(channel);
    let request = HealthCheckRequest {
        service: service.to_owned(),
    };
    let mut stream = match client.watch(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => return (status, false),
    };
    let mut received = false;
    loop {
        match stream.message().await {
            Ok(Some(answer)) => {
                received = true;
                report(HealthState::from_status(answer.status), None);
            }
            Ok(None) => {
                return (
                    tonic::Status::unavailable("the server ended the stream"),
                    received,
                );
            }
            Err(status) => return (status, received),
        }
    }
}

/// The default delay between Watch attempts that failed without a message: gRPC's connection
/// backoff, as grpc-go uses for its health checks.
pub(crate) const DEFAULT_BACKOFF: Backoff = Backoff::GRPC;

#[cfg(test)]
mod tests;
