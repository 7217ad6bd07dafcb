//! A request body that can be sent again: what a call's body yields is kept (up to a limit), so
//! a call that provably never reached a backend's application can be retried on another
//! backend with the same body, as gRPC's transparent retry does.
//!
//! The caller's body is pulled lazily, as the transport asks for it; each attempt gets an
//! [`Attempt`] body that first replays what earlier attempts pulled, then continues pulling.
//! Only the newest attempt may read: a superseded attempt's body fails. Once the call has its
//! response (it is committed, as gRPC says), or once more than the limit has been pulled (a
//! large stream), nothing more is kept and the call can no longer be retried; it goes on
//! unchanged.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Frame, SizeHint};
use tonic::body::Body;

/// How much of a request body is kept for a retry (grpc-go's default per-call retry buffer).
pub(crate) const REPLAY_LIMIT: usize = 256 * 1024;

enum Kept {
    Data(Bytes),
    Trailers(HeaderMap),
}

impl Kept {
    fn frame(&self) -> Frame<Bytes> {
        match self {
            Kept::Data(bytes) => Frame::data(bytes.clone()),
            Kept::Trailers(trailers) => Frame::trailers(trailers.clone()),
        }
    }
}

struct Shared {
    /// The caller's body; `None` once it ended or failed.
    source: Option<Body>,
    /// What was pulled from `source` and may have to be sent (again).
    kept: Vec<Kept>,
    /// How many of `kept` the current attempt has sent.
    pos: usize,
    /// Bytes pulled from `source` so far.
    pulled: usize,
    /// Whether the call may still be sent again (pulled frames are kept): false once committed,
    /// past the limit, or after the source failed.
    replayable: bool,
    /// The attempt allowed to read.
    current: u64,
    limit: usize,
}

impl Shared {
    /// Stops keeping frames: drops those the current attempt already sent.
    fn stop_keeping(&mut self) {
        self.replayable = false;
        self.kept.drain(..self.pos);
        self.pos = 0;
    }
}

/// The body of one call, shared by its attempts.
#[derive(Clone)]
pub(crate) struct Replay(Arc<Mutex<Shared>>);

impl Replay {
    pub(crate) fn new(body: Body, limit: usize) -> Self {
        Replay(Arc::new(Mutex::new(Shared {
            source: Some(body),
            kept: Vec::new(),
            pos: 0,
            pulled: 0,
            replayable: true,
            current: 0,
            limit,
        })))
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        // Nothing panics while holding the lock except the caller's body, after which the state
        // is still consistent (that frame is simply lost and the source dropped below).
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The body of the first attempt.
    pub(crate) fn first(&self) -> Attempt {
        Attempt {
            shared: self.clone(),
            id: self.lock().current,
        }
    }

    /// The body of a new attempt, replaying from the start; `None` if the body cannot be sent
    /// again. Earlier attempts' bodies stop working.
    pub(crate) fn again(&self) -> Option<Attempt> {
        let mut shared = self.lock();
        if !shared.replayable {
            return None;
        }
        shared.current += 1;
        shared.pos = 0;
        Some(Attempt {
            shared: self.clone(),
            id: shared.current,
        })
    }

    /// The call got its response: it will not be sent again, so what the current attempt has
    /// sent is dropped and nothing more is kept (a long stream holds no copy of its body).
    pub(crate) fn commit(&self) {
        self.lock().stop_keeping();
    }
}

/// The request body of one attempt.
pub(crate) struct Attempt {
    shared: Replay,
    id: u64,
}

impl http_body::Body for Attempt {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let mut shared = self.shared.lock();
        if shared.current != self.id {
            return Poll::Ready(Some(Err(tonic::Status::cancelled(
                "request body superseded by a retry of the call",
            ))));
        }
        if shared.pos < shared.kept.len() {
            let frame = shared.kept[shared.pos].frame();
            shared.pos += 1;
            if !shared.replayable {
                shared.stop_keeping();
            }
            return Poll::Ready(Some(Ok(frame)));
        }
        let Some(source) = shared.source.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(source).poll_frame(cx);
        match polled {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                shared.source = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                shared.source = None;
                shared.stop_keeping();
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    shared.pulled += data.len();
                }
                if shared.replayable && shared.pulled > shared.limit {
                    shared.stop_keeping();
                }
                if shared.replayable {
                    let kept = match frame.data_ref() {
                        Some(data) => Some(Kept::Data(data.clone())),
                        None => frame.trailers_ref().cloned().map(Kept::Trailers),
                    };
                    if let Some(kept) = kept {
                        shared.kept.push(kept);
                        shared.pos = shared.kept.len();
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let shared = self.shared.lock();
        if shared.current != self.id {
            return false;
        }
        if shared.pos < shared.kept.len() {
            return false;
        }
        shared.source.as_ref().is_none_or(|s| s.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        if self.is_end_stream() {
            SizeHint::with_exact(0)
        } else {
            SizeHint::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;
    use http_body_util::BodyExt;

    fn source(chunks: &[&'static str]) -> Body {
        let frames: Vec<Result<Frame<Bytes>, tonic::Status>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes()))))
            .collect();
        Body::new(http_body_util::StreamBody::new(futures::stream::iter(
            frames,
        )))
    }

    async fn read(body: Attempt) -> Result<String, tonic::Status> {
        let bytes = body.collect().await?.to_bytes();
        Ok(String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn a_retry_replays_what_was_pulled_then_continues() {
        let replay = Replay::new(source(&["ab", "cd", "ef"]), 1024);
        let mut first = replay.first();
        let frame = first.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "ab");
        let second = replay.again().unwrap();
        // The superseded attempt stops.
        assert!(first.frame().await.unwrap().is_err());
        assert_eq!(read(second).await.unwrap(), "abcdef");
        // A third attempt after the source ended replays everything.
        let third = replay.again().unwrap();
        assert_eq!(read(third).await.unwrap(), "abcdef");
    }

    #[tokio::test]
    async fn a_body_past_the_limit_cannot_be_replayed_but_is_sent_whole() {
        let replay = Replay::new(source(&["abc", "def", "ghi"]), 5);
        assert_eq!(read(replay.first()).await.unwrap(), "abcdefghi");
        assert!(replay.again().is_none());
        // Untouched bodies can always be sent again.
        let replay = Replay::new(source(&["abc", "def"]), 5);
        let _unused = replay.first();
        assert_eq!(read(replay.again().unwrap()).await.unwrap(), "abcdef");
    }

    #[tokio::test]
    async fn a_committed_call_keeps_nothing_but_still_sends_its_whole_body() {
        let replay = Replay::new(source(&["ab", "cd", "ef"]), 1024);
        let mut first = replay.first();
        first.frame().await.unwrap().unwrap();
        let mut second = replay.again().unwrap();
        // Committed while the retry had replayed nothing yet: it still sends everything.
        replay.commit();
        assert!(replay.again().is_none());
        assert_eq!(replay.lock().kept.len(), 1);
        let frame = second.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "ab");
        assert!(replay.lock().kept.is_empty());
        assert_eq!(read(second).await.unwrap(), "cdef");
        assert!(replay.lock().kept.is_empty());
    }

    #[tokio::test]
    async fn empty_bodies_end_at_once() {
        let replay = Replay::new(Body::empty(), 1024);
        let first = replay.first();
        assert!(first.is_end_stream());
        assert_eq!(first.size_hint().exact(), Some(0));
        let again = replay.again().unwrap();
        assert!(again.is_end_stream());
    }
}
