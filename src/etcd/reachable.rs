//! Noticing at once that etcd answers again.
//!
//! After a session failed because etcd could not be reached, the writer waits out its backoff
//! delay (which grows to many seconds during a long outage), while the etcd client itself would
//! reconnect on the very next request. So during such a wait the writer asks etcd a cheap
//! question every [`PROBE_EVERY`] (a count-only, linearizable get of the claim key, which needs a
//! quorum just like a write) and starts the next session as soon as etcd answers. A down etcd
//! sees at most one tiny request per interval; failures of other kinds (etcd answered and said
//! no) keep the plain backoff.

use std::time::Duration;

use etcd_client::{GetOptions, KvClient};

use super::error::{EtcdError, timed};

/// How often etcd is asked whether it answers again.
pub(crate) const PROBE_EVERY: Duration = Duration::from_millis(250);

/// Deadline of one probe (capped by the writer's request timeout).
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

// gRPC status codes (the crate does not re-export tonic's `Code`).
const CANCELLED: i32 = 1;
const UNKNOWN: i32 = 2;
const DEADLINE_EXCEEDED: i32 = 4;
const UNAVAILABLE: i32 = 14;

/// Whether `e` says that etcd (or a quorum of it) could not be reached, as opposed to etcd
/// answering with a refusal: only then is probing worth it.
pub(crate) fn is_unreachable(e: &EtcdError) -> bool {
    match e {
        EtcdError::Timeout { .. } | EtcdError::Keepalive(_) => true,
        EtcdError::Etcd { source, .. } => match source {
            etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
            etcd_client::Error::GRpcStatus(s) => matches!(
                i32::from(s.code()),
                CANCELLED | UNKNOWN | DEADLINE_EXCEEDED | UNAVAILABLE
            ),
            etcd_client::Error::WatchError(_) | etcd_client::Error::LeaseKeepAliveError(_) => true,
            _ => false,
        },
        // A stream that simply closed; "canceled by etcd" is etcd saying no.
        EtcdError::Watch(reason) => !reason.starts_with("canceled by etcd"),
        // Claim churn, and anything else: etcd answered.
        _ => false,
    }
}

/// Probes etcd every [`PROBE_EVERY`] until it answers; never returns while it does not.
pub(crate) async fn until_etcd_answers(mut kv: KvClient, key: String, request_timeout: Duration) {
    let timeout = PROBE_TIMEOUT.min(request_timeout);
    let mut ticker =
        tokio::time::interval_at(tokio::time::Instant::now() + PROBE_EVERY, PROBE_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let probe = kv.get(key.as_str(), Some(GetOptions::new().with_count_only()));
        match timed("probe etcd", timeout, probe).await {
            Ok(_) => return,
            Err(e) => tracing::debug!(error = %e, "etcd still unreachable"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn refusals_are_not_unreachability() {
        let status = |code, msg: &str| EtcdError::Etcd {
            what: "x",
            source: etcd_client::Error::GRpcStatus(tonic::Status::new(code, msg)),
        };
        assert!(is_unreachable(&status(
            Code::Unavailable,
            "tcp connect error"
        )));
        assert!(is_unreachable(&EtcdError::Timeout {
            what: "x",
            after: Duration::from_secs(1)
        }));
        assert!(is_unreachable(&EtcdError::Watch(
            "watch stream closed".into()
        )));
        assert!(!is_unreachable(&status(Code::PermissionDenied, "denied")));
        assert!(!is_unreachable(&status(
            Code::InvalidArgument,
            "too many ops"
        )));
        assert!(!is_unreachable(&EtcdError::Watch(
            "canceled by etcd: x".into()
        )));
        assert!(!is_unreachable(&EtcdError::ClaimChurn("k".into())));
    }
}
