//! Per-backend call outcomes for outlier ejection: a counter that calls update when they complete
//! (one atomic add, no lock), and the response body wrapper that finds each call's gRPC status.
//!
//! A call's outcome is its `grpc-status`: in the response headers of a trailers-only response,
//! otherwise in the trailers at the end of the body. A call whose body fails (the stream was
//! reset, the connection lost) is a failure; a call dropped by its caller before the end is not
//! counted at all (the backend is not to blame).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Frame, SizeHint};
use tonic::Code;
use tonic::body::Body;

use super::outlier::Counts;

/// Successes (low 32 bits) and failures (high 32 bits) since the last sweep, in one atomic so
/// that a sweep takes both at once. 2³² calls per interval and backend is out of reach.
#[derive(Debug, Default)]
pub(crate) struct CallCounter(AtomicU64);

const FAILURE: u64 = 1 << 32;

impl CallCounter {
    pub(crate) fn success(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn failure(&self) {
        self.0.fetch_add(FAILURE, Ordering::Relaxed);
    }

    /// The counts since the last call, starting over.
    pub(crate) fn take(&self) -> Counts {
        let v = self.0.swap(0, Ordering::Relaxed);
        Counts {
            successes: v & (FAILURE - 1),
            failures: v >> 32,
        }
    }
}

/// Which gRPC status codes count as failures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct FailureCodes(u32);

impl FailureCodes {
    pub(crate) fn new(codes: &[Code]) -> Self {
        FailureCodes(
            codes
                .iter()
                .map(|c| *c as i32)
                .filter(|c| (0..32).contains(c))
                .fold(0, |bits, c| bits | (1 << c)),
        )
    }

    fn contains(self, code: i32) -> bool {
        (0..32).contains(&code) && self.0 & (1 << code) != 0
    }
}

/// Where one call reports its outcome.
#[derive(Clone, Debug)]
pub(crate) struct Outcome {
    pub(crate) counter: Arc<CallCounter>,
    pub(crate) failures: FailureCodes,
}

impl Outcome {
    /// Records a call that ended with `status` (a `grpc-status` value; missing or unreadable
    /// counts as UNKNOWN, as gRPC clients read it).
    fn status(&self, status: Option<&http::HeaderValue>) {
        let code = status
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i32>().ok())
            .unwrap_or(Code::Unknown as i32);
        if code != Code::Ok as i32 && self.failures.contains(code) {
            self.counter.failure();
        } else {
            self.counter.success();
        }
    }

    /// Records a transport failure.
    pub(crate) fn transport_failure(&self) {
        self.counter.failure();
    }

    /// Counts the call whose response is `response` once it completes.
    pub(crate) fn watch(self, response: http::Response<Body>) -> http::Response<Body> {
        if response.status() != http::StatusCode::OK {
            // Not a gRPC answer (a proxy's error page, 503, …): the client sees UNAVAILABLE,
            // UNKNOWN or INTERNAL.
            self.transport_failure();
            return response;
        }
        if let Some(status) = response.headers().get("grpc-status") {
            // Trailers-only: the call is over.
            self.status(Some(status));
            return response;
        }
        response.map(|body| {
            Body::new(Counted {
                inner: body,
                outcome: Some(self),
            })
        })
    }
}

/// A response body that records the call's outcome when its trailers arrive, when it fails, or
/// when it ends without trailers.
struct Counted {
    inner: Body,
    /// `None` once recorded.
    outcome: Option<Outcome>,
}

impl Counted {
    fn trailers(&mut self, trailers: &HeaderMap) {
        if let Some(outcome) = self.outcome.take() {
            outcome.status(trailers.get("grpc-status"));
        }
    }
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    this.trailers(trailers);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(outcome) = this.outcome.take() {
                    outcome.transport_failure();
                }
            }
            Poll::Ready(None) => {
                // The end without trailers: gRPC reads that as a missing status.
                if let Some(outcome) = this.outcome.take() {
                    outcome.status(None);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn outcome() -> (Outcome, Arc<CallCounter>) {
        let counter = Arc::new(CallCounter::default());
        let outcome = Outcome {
            counter: counter.clone(),
            failures: FailureCodes::new(&[
                Code::Unavailable,
                Code::Internal,
                Code::Unknown,
                Code::DataLoss,
            ]),
        };
        (outcome, counter)
    }

    fn counts(successes: u64, failures: u64) -> Counts {
        Counts {
            successes,
            failures,
        }
    }

    /// A response whose body yields `data` then trailers with `status` (if any).
    fn streamed(status: Option<&str>) -> http::Response<Body> {
        let mut trailers = HeaderMap::new();
        if let Some(s) = status {
            trailers.insert("grpc-status", s.parse().unwrap());
        }
        let frames = vec![
            Ok::<_, tonic::Status>(Frame::data(Bytes::from_static(b"\0\0\0\0\0"))),
            Ok(Frame::trailers(trailers)),
        ];
        let body = http_body_util::StreamBody::new(futures::stream::iter(frames));
        http::Response::new(Body::new(body))
    }

    async fn drain(response: http::Response<Body>) {
        let _ = response.into_body().collect().await;
    }

    #[tokio::test]
    async fn statuses_in_trailers_are_classified() {
        let (outcome, counter) = outcome();
        for status in [Some("0"), Some("5"), Some("3"), Some("16")] {
            drain(outcome.clone().watch(streamed(status))).await;
        }
        assert_eq!(counter.take(), counts(4, 0), "OK and caller errors");
        for status in [
            Some("14"),
            Some("13"),
            Some("2"),
            Some("15"),
            Some("x"),
            None,
        ] {
            drain(outcome.clone().watch(streamed(status))).await;
        }
        assert_eq!(
            counter.take(),
            counts(0, 6),
            "failures, and a missing status"
        );
        assert_eq!(counter.take(), counts(0, 0), "taking starts over");
    }

    #[tokio::test]
    async fn trailers_only_answers_and_http_errors_count_at_once() {
        let (outcome, counter) = outcome();
        let mut only = http::Response::new(Body::empty());
        only.headers_mut()
            .insert("grpc-status", "14".parse().unwrap());
        drop(outcome.clone().watch(only));
        let mut not_found = http::Response::new(Body::empty());
        not_found
            .headers_mut()
            .insert("grpc-status", "5".parse().unwrap());
        drop(outcome.clone().watch(not_found));
        let mut bad_gateway = http::Response::new(Body::empty());
        *bad_gateway.status_mut() = http::StatusCode::BAD_GATEWAY;
        drop(outcome.clone().watch(bad_gateway));
        assert_eq!(counter.take(), counts(1, 2));
    }

    #[tokio::test]
    async fn a_failed_body_fails_and_an_abandoned_one_is_not_counted() {
        let (outcome, counter) = outcome();
        let frames = vec![Err::<Frame<Bytes>, _>(tonic::Status::internal("reset"))];
        let failing = http::Response::new(Body::new(http_body_util::StreamBody::new(
            futures::stream::iter(frames),
        )));
        drain(outcome.clone().watch(failing)).await;
        drop(outcome.clone().watch(streamed(Some("14"))));
        assert_eq!(counter.take(), counts(0, 1));
    }

    #[test]
    fn codes_outside_the_set_never_count() {
        let codes = FailureCodes::new(&[Code::Unavailable]);
        assert!(codes.contains(14));
        assert!(!codes.contains(13) && !codes.contains(-1) && !codes.contains(40));
        let counter = CallCounter::default();
        for _ in 0..3 {
            counter.success();
        }
        counter.failure();
        assert_eq!(counter.take(), counts(3, 1));
    }
}
