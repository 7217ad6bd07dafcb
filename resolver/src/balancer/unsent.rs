//! Which call failures prove that the backend's application never saw the call, so the call can
//! be sent again to another backend without risk of running twice (gRPC's "transparent retry").
//!
//! A backend connection that receives HTTP/2 GOAWAY (graceful shutdown) or closes can still be
//! handed a call in the short window between the pick and the moment the HTTP/2 layer opens the
//! stream: the call then fails without ever leaving the client. A stream that did leave but is
//! numbered above the GOAWAY's last stream id, or is reset with `REFUSED_STREAM`, was not
//! processed either (RFC 9113 §6.8, §8.7).
//!
//! One caveat, from hyper: it reports the same GOAWAY error for a stream it opened an instant
//! before the GOAWAY was processed and then abandoned (a window of a few instructions between
//! opening the stream and re-checking the connection). Such a stream is reset by the client but
//! its headers may have reached the backend, which then sees a cancelled call.

use std::error::Error as StdError;

use super::connector::ConnectionClosed;

/// Why a failed call never reached the backend's application.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unsent {
    /// The connection was closing or closed before the request was handed to HTTP/2 (hyper's
    /// "operation was canceled", or the channel trying to redial).
    Closed,
    /// The backend sent GOAWAY: the stream could not be opened, or was above the last stream
    /// id the backend promised to process.
    GoAway,
    /// The backend refused the stream (`REFUSED_STREAM`) before processing it.
    Refused,
}

impl Unsent {
    /// Whether the connection that failed the call can take no new calls.
    pub(crate) fn connection_unusable(self) -> bool {
        matches!(self, Unsent::Closed | Unsent::GoAway)
    }
}

/// Classifies a call's error by walking its source chain.
pub(crate) fn unsent(error: &(dyn StdError + 'static)) -> Option<Unsent> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(hyper) = e.downcast_ref::<hyper::Error>()
            && hyper.is_canceled()
        {
            return Some(Unsent::Closed);
        }
        if let Some(h2) = e.downcast_ref::<h2::Error>()
            && h2.is_remote()
        {
            if h2.is_go_away() {
                return Some(Unsent::GoAway);
            }
            if h2.is_reset() && h2.reason() == Some(h2::Reason::REFUSED_STREAM) {
                return Some(Unsent::Refused);
            }
        }
        if e.is::<ConnectionClosed>() {
            return Some(Unsent::Closed);
        }
        // `io::Error::other(e)` hides `e` from `source()`.
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io
                .get_ref()
                .is_some_and(|inner| inner.is::<ConnectionClosed>())
        {
            return Some(Unsent::Closed);
        }
        next = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Box<dyn StdError + Send + Sync>);

    #[test]
    fn finds_a_redial_refusal_anywhere_in_the_chain() {
        let io = std::io::Error::other(ConnectionClosed);
        assert_eq!(unsent(&io), Some(Unsent::Closed));
        let wrapped = Outer(Box::new(Outer(Box::new(io))));
        assert_eq!(unsent(&wrapped), Some(Unsent::Closed));
        assert!(Unsent::Closed.connection_unusable());
        assert!(!Unsent::Refused.connection_unusable());
    }

    #[test]
    fn other_errors_are_not_retried() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert_eq!(unsent(&Outer(Box::new(io))), None);
        // A stream reset by the server after it started processing.
        let h2: h2::Error = h2::Reason::CANCEL.into();
        assert_eq!(unsent(&Outer(Box::new(h2))), None);
        assert_eq!(unsent(&tonic::Status::unavailable("down")), None);
    }
}
