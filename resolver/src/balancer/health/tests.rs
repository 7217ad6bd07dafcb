//! The Watch loop against a scripted `grpc.health.v1.Health` server over an in-memory HTTP/2
//! connection, on tokio's paused clock: what each answer means, when the Watch is sent again,
//! and that `UNIMPLEMENTED` is never retried even after a minute.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Code, Request, Response, Status};
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use super::*;

const SERVING: i32 = 1;
const NOT_SERVING: i32 = 2;
const UNKNOWN: i32 = 0;
const SERVICE_UNKNOWN: i32 = 3;

/// What the server does with one Watch call.
enum Step {
    /// Fails the call at once with this code.
    Fail(Code),
    /// Sends these statuses, each after its delay, then ends as said.
    Answer(Vec<(Duration, i32)>, End),
}

enum End {
    Error(Code),
    Close,
    Hang,
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

/// A Health server playing one step per Watch call (a call past the script hangs).
struct Scripted {
    script: Mutex<VecDeque<Step>>,
    calls: Arc<Mutex<Vec<(Instant, String)>>>,
}

#[tonic::async_trait]
impl Health for Scripted {
    async fn check(
        &self,
        _: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        Err(Status::unimplemented("check"))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        self.calls
            .lock()
            .unwrap()
            .push((Instant::now(), request.into_inner().service));
        let step = self.script.lock().unwrap().pop_front();
        let (answers, end) = match step {
            Some(Step::Fail(code)) => return Err(Status::new(code, "scripted")),
            Some(Step::Answer(answers, end)) => (answers, end),
            None => (Vec::new(), End::Hang),
        };
        let answers = futures::stream::iter(answers).then(|(delay, status)| async move {
            tokio::time::sleep(delay).await;
            Ok(HealthCheckResponse { status })
        });
        let end: WatchStream = match end {
            End::Error(code) => {
                Box::pin(futures::stream::iter([Err(Status::new(code, "scripted"))]))
            }
            End::Close => Box::pin(futures::stream::empty()),
            End::Hang => Box::pin(futures::stream::pending()),
        };
        Ok(Response::new(Box::pin(answers.chain(end))))
    }
}

/// A channel to a server running `script`, over one in-memory connection; the Watch calls the
/// server saw (when, for which service).
async fn scripted(script: Vec<Step>) -> (Channel, Arc<Mutex<Vec<(Instant, String)>>>) {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let service = Scripted {
        script: Mutex::new(script.into()),
        calls: calls.clone(),
    };
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    tokio::spawn(
        Server::builder()
            .add_service(HealthServer::new(service))
            .serve_with_incoming(futures::stream::iter([Ok::<_, std::io::Error>(server_io)])),
    );
    let client_io = Arc::new(Mutex::new(Some(client_io)));
    let channel = Endpoint::from_static("http://in-memory")
        .connect_with_connector(tower::service_fn(move |_| {
            let io = client_io.lock().unwrap().take();
            async move {
                io.map(TokioIo::new)
                    .ok_or_else(|| std::io::Error::other("one connection only"))
            }
        }))
        .await
        .unwrap();
    (channel, calls)
}

type Reports = Arc<Mutex<Vec<(Instant, HealthState)>>>;

/// Runs the Watch loop for `run` of (virtual) time; what it reported, and when.
async fn watch_for(channel: Channel, check: HealthCheck, run: Duration) -> Reports {
    let reports: Reports = Arc::default();
    let sink = reports.clone();
    let result = tokio::time::timeout(
        run,
        watch(channel, &check, move |state, _| {
            sink.lock().unwrap().push((Instant::now(), state))
        }),
    )
    .await;
    assert!(result.is_err(), "the Watch loop never returns");
    reports
}

fn check(service: &str, backoff: Backoff) -> HealthCheck {
    HealthCheck {
        service: service.into(),
        backoff,
    }
}

fn states(reports: &Reports) -> Vec<HealthState> {
    reports.lock().unwrap().iter().map(|(_, s)| *s).collect()
}

/// Gaps between consecutive Watch calls, in whole milliseconds.
fn gaps(calls: &Mutex<Vec<(Instant, String)>>) -> Vec<u128> {
    let calls = calls.lock().unwrap();
    calls
        .windows(2)
        .map(|w| (w[1].0 - w[0].0).as_millis())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn every_answer_sets_the_state_and_a_broken_stream_is_watched_again_at_once() {
    let second = Duration::from_secs(1);
    let (channel, calls) = scripted(vec![
        Step::Answer(
            vec![
                (Duration::ZERO, SERVING),
                (second, NOT_SERVING),
                (second, UNKNOWN),
                (second, SERVICE_UNKNOWN),
                (second, 42),
                (second, SERVING),
            ],
            End::Error(Code::Unavailable),
        ),
        Step::Answer(vec![(Duration::ZERO, SERVING)], End::Hang),
    ])
    .await;
    let reports = watch_for(
        channel,
        check("greeter.v1.Greeter", Backoff::GRPC),
        30 * second,
    )
    .await;
    use HealthState::*;
    assert_eq!(
        states(&reports),
        [
            Serving,
            NotServing,
            Unknown,
            ServiceUnknown,
            Unknown,
            Serving,
            Failed,
            Serving
        ]
    );
    let calls_seen = calls.lock().unwrap().clone();
    assert_eq!(calls_seen.len(), 2, "{calls_seen:?}");
    assert!(calls_seen.iter().all(|(_, s)| s == "greeter.v1.Greeter"));
    // The stream had delivered messages: no backoff before the next Watch.
    assert_eq!(
        gaps(&calls),
        [5000],
        "the second Watch follows the failure at once"
    );
    let pickable: Vec<bool> = states(&reports).iter().map(|s| s.is_pickable()).collect();
    assert_eq!(
        pickable,
        [true, false, false, false, false, true, false, true]
    );
}

#[tokio::test(start_paused = true)]
async fn failures_without_a_message_back_off_and_a_message_resets_the_backoff() {
    let backoff = Backoff {
        initial: Duration::from_secs(1),
        multiplier: 2.0,
        max: Duration::from_secs(8),
        jitter: 0.0,
    };
    let (channel, calls) = scripted(vec![
        Step::Fail(Code::Unavailable),
        Step::Fail(Code::Internal),
        Step::Fail(Code::NotFound),
        Step::Answer(vec![], End::Close),
        Step::Answer(vec![(Duration::ZERO, SERVING)], End::Close),
        Step::Fail(Code::Unavailable),
        Step::Answer(vec![(Duration::ZERO, NOT_SERVING)], End::Hang),
    ])
    .await;
    let reports = watch_for(channel, check("", backoff), Duration::from_secs(60)).await;
    // 1, 2, 4, 8 s after failures without a message; none after the message; then 1 s again.
    assert_eq!(gaps(&calls), [1000, 2000, 4000, 8000, 0, 1000]);
    use HealthState::*;
    assert_eq!(
        states(&reports),
        [
            Failed, Failed, Failed, Failed, Serving, Failed, Failed, NotServing
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn unimplemented_counts_as_healthy_and_is_never_retried() {
    let (channel, calls) = scripted(vec![Step::Fail(Code::Unimplemented)]).await;
    let reports = watch_for(
        channel,
        check(
            "",
            Backoff::new(Duration::from_millis(10), Duration::from_millis(10)),
        ),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(states(&reports), [HealthState::Unimplemented]);
    assert!(HealthState::Unimplemented.is_pickable());
    let n = calls.lock().unwrap().len();
    eprintln!("Watch calls in 60 s (virtual) against UNIMPLEMENTED: {n}");
    assert_eq!(n, 1);
}
