//! Admin HTTP server: liveness (`/healthz`), readiness (`/readyz`) and Prometheus metrics
//! (`/metrics`).
//!
//! `/healthz` answers 200 as long as the process serves HTTP. `/readyz` answers 200 only while
//! the ready flag (a `watch` channel the controller sets after its initial sync) is `true`,
//! else 503. `/metrics` serves the Prometheus text format 0.0.4, or OpenMetrics 1.0.0 when the
//! scraper asks for it in `Accept`.
//!
//! ```no_run
//! # async fn run(metrics: registrar::metrics::Metrics, ready: tokio::sync::watch::Receiver<bool>) -> Result<(), registrar::admin::AdminError> {
//! use registrar::admin::{AdminServer, AdminState};
//! let server = AdminServer::bind("0.0.0.0:8080".parse().unwrap()).await?;
//! server.serve(AdminState { metrics, ready }, async { /* shutdown signal */ }).await
//! # }
//! ```

use std::future::{Future, IntoFuture};
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

use crate::metrics::{self, Metrics};

/// How long [`AdminServer::serve`] waits for open connections after the shutdown signal.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

const TEXT_PLAIN: &str = "text/plain; charset=utf-8";

/// What the handlers read.
#[derive(Clone, Debug)]
pub struct AdminState {
    /// Exposed on `/metrics`.
    pub metrics: Metrics,
    /// `/readyz` is 200 while this is `true`.
    pub ready: watch::Receiver<bool>,
}

/// Errors of the admin server.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot listen on {addr} for the admin server: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("admin server failed: {0}")]
    Serve(#[source] io::Error),
}

/// A bound, not yet serving, admin server. Binding first lets the caller learn the port
/// (e.g. after binding port 0) and fail early on a bad address.
#[derive(Debug)]
pub struct AdminServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    shutdown_grace: Duration,
}

impl AdminServer {
    /// Binds `addr`.
    pub async fn bind(addr: SocketAddr) -> Result<Self, AdminError> {
        let bind_err = |source| AdminError::Bind { addr, source };
        let listener = TcpListener::bind(addr).await.map_err(bind_err)?;
        let local_addr = listener.local_addr().map_err(bind_err)?;
        Ok(Self {
            listener,
            local_addr,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
        })
    }

    /// Sets how long to wait for open connections once shutdown is signalled.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` completes, then lets open requests finish for at most the
    /// shutdown grace.
    pub async fn serve(
        self,
        state: AdminState,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), AdminError> {
        tracing::debug!(addr = %self.local_addr, "admin server serving");
        let (signalled_tx, signalled_rx) = oneshot::channel::<()>();
        let signal = async move {
            shutdown.await;
            // The receiver only disappears when serve() itself has returned.
            let _ = signalled_tx.send(());
        };
        let server = axum::serve(self.listener, router(state))
            .with_graceful_shutdown(signal)
            .into_future();
        let grace = self.shutdown_grace;
        let deadline = async move {
            if signalled_rx.await.is_ok() {
                tokio::time::sleep(grace).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            served = server => served.map_err(AdminError::Serve),
            () = deadline => {
                tracing::warn!(?grace, "admin server: connections still open after the shutdown grace, closing");
                Ok(())
            }
        }
    }
}

/// The admin routes (GET and HEAD; other methods get 405, other paths 404).
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_handler))
        .with_state(state)
}

async fn healthz() -> Response {
    text(StatusCode::OK, "ok\n")
}

async fn readyz(State(state): State<AdminState>) -> Response {
    if *state.ready.borrow() {
        text(StatusCode::OK, "ok\n")
    } else {
        text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn metrics_handler(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    let (encoded, content_type) = if wants_openmetrics(&headers) {
        (
            state.metrics.encode_openmetrics(),
            metrics::OPENMETRICS_CONTENT_TYPE,
        )
    } else {
        (
            state.metrics.encode(),
            metrics::PROMETHEUS_TEXT_CONTENT_TYPE,
        )
    };
    match encoded {
        Ok(body) => (
            [
                (CONTENT_TYPE, HeaderValue::from_static(content_type)),
                (CACHE_CONTROL, HeaderValue::from_static("no-store")),
            ],
            body,
        )
            .into_response(),
        Err(err) => {
            tracing::error!(%err, "encoding metrics failed");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding metrics failed\n",
            )
        }
    }
}

/// Whether `Accept` lists `application/openmetrics-text` with a non-zero quality.
fn wants_openmetrics(headers: &HeaderMap) -> bool {
    headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|range| {
            let mut parts = range.split(';').map(str::trim);
            let is_openmetrics = parts
                .next()
                .is_some_and(|media| media.eq_ignore_ascii_case("application/openmetrics-text"));
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            is_openmetrics && !refused
        })
}

fn text(status: StatusCode, body: &'static str) -> Response {
    (
        status,
        [(CONTENT_TYPE, HeaderValue::from_static(TEXT_PLAIN))],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    const DEADLINE: Duration = Duration::from_secs(10);

    struct Reply {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Reply {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    /// A minimal HTTP/1.1 client: one request per connection, `Connection: close`, reads to EOF.
    async fn request(addr: SocketAddr, method: &str, path: &str, extra: &[(&str, &str)]) -> Reply {
        let exchange = async {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            let mut req =
                format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
            for (k, v) in extra {
                req.push_str(&format!("{k}: {v}\r\n"));
            }
            req.push_str("\r\n");
            stream.write_all(req.as_bytes()).await.unwrap();
            let mut raw = Vec::new();
            stream.read_to_end(&mut raw).await.unwrap();
            raw
        };
        let raw = tokio::time::timeout(DEADLINE, exchange)
            .await
            .expect("HTTP exchange timed out");
        let raw = String::from_utf8(raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").expect("no end of headers");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
        let headers = lines
            .map(|l| {
                let (k, v) = l.split_once(':').unwrap();
                (k.trim().to_owned(), v.trim().to_owned())
            })
            .collect();
        Reply {
            status,
            headers,
            body: body.to_owned(),
        }
    }

    async fn get(addr: SocketAddr, path: &str) -> Reply {
        request(addr, "GET", path, &[]).await
    }

    struct Running {
        addr: SocketAddr,
        ready: watch::Sender<bool>,
        metrics: Metrics,
        stop: Option<oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<Result<(), AdminError>>,
    }

    async fn start() -> Running {
        let (ready_tx, ready_rx) = watch::channel(false);
        let metrics = Metrics::new();
        let server = AdminServer::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = server.local_addr();
        assert!(addr.ip().is_loopback());
        assert_ne!(addr.port(), 0);
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let state = AdminState {
            metrics: metrics.clone(),
            ready: ready_rx,
        };
        let task = tokio::spawn(server.serve(state, async move {
            let _ = stop_rx.await;
        }));
        Running {
            addr,
            ready: ready_tx,
            metrics,
            stop: Some(stop_tx),
            task,
        }
    }

    #[tokio::test]
    async fn healthz_is_ok_and_readyz_follows_the_flag() {
        let srv = start().await;

        let health = get(srv.addr, "/healthz").await;
        assert_eq!(health.status, 200);
        assert_eq!(health.body, "ok\n");

        let not_ready = get(srv.addr, "/readyz").await;
        assert_eq!(not_ready.status, 503);
        assert_eq!(not_ready.body, "not ready\n");
        // Liveness does not depend on readiness.
        assert_eq!(get(srv.addr, "/healthz").await.status, 200);

        srv.ready.send(true).unwrap();
        let ready = get(srv.addr, "/readyz").await;
        assert_eq!(ready.status, 200);
        assert_eq!(ready.body, "ok\n");

        srv.ready.send(false).unwrap();
        assert_eq!(get(srv.addr, "/readyz").await.status, 503);
    }

    #[tokio::test]
    async fn metrics_in_both_formats() {
        let srv = start().await;
        srv.metrics.reconciled(true);
        srv.metrics.set_published(7);

        let plain = get(srv.addr, "/metrics").await;
        assert_eq!(plain.status, 200);
        assert_eq!(
            plain.header("content-type"),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
        assert!(
            plain
                .body
                .contains("registrar_reconciles_total{result=\"ok\"} 1\n"),
            "{}",
            plain.body
        );
        assert!(
            plain.body.contains("registrar_published_endpoints 7\n"),
            "{}",
            plain.body
        );
        assert!(!plain.body.contains("# EOF"));

        // What Prometheus sends when it prefers OpenMetrics.
        let accept = "application/openmetrics-text;version=1.0.0;q=0.5,\
                      application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
        let om = request(srv.addr, "GET", "/metrics", &[("Accept", accept)]).await;
        assert_eq!(om.status, 200);
        assert_eq!(
            om.header("content-type"),
            Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
        );
        assert!(om.body.ends_with("# EOF\n"), "{}", om.body);
        assert!(om.body.contains("registrar_published_endpoints 7\n"));

        let refused = request(
            srv.addr,
            "GET",
            "/metrics",
            &[("Accept", "application/openmetrics-text;q=0, text/plain")],
        )
        .await;
        assert_eq!(
            refused.header("content-type"),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
    }

    #[tokio::test]
    async fn unknown_paths_and_methods_are_refused() {
        let srv = start().await;
        assert_eq!(get(srv.addr, "/nope").await.status, 404);
        assert_eq!(request(srv.addr, "POST", "/healthz", &[]).await.status, 405);
        let head = request(srv.addr, "HEAD", "/healthz", &[]).await;
        assert_eq!(head.status, 200);
        assert_eq!(head.body, "");
    }

    #[tokio::test]
    async fn shutdown_stops_serving() {
        let mut srv = start().await;
        assert_eq!(get(srv.addr, "/healthz").await.status, 200);
        srv.stop.take().unwrap().send(()).unwrap();
        let result = tokio::time::timeout(DEADLINE, &mut srv.task)
            .await
            .expect("server did not stop")
            .unwrap();
        assert!(result.is_ok(), "{result:?}");
        assert!(
            TcpStream::connect(srv.addr).await.is_err(),
            "still accepting"
        );
    }

    #[tokio::test]
    async fn shutdown_does_not_wait_forever_for_idle_clients() {
        let (_ready_tx, ready) = watch::channel(true);
        let server = AdminServer::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap()
            .shutdown_grace(Duration::from_millis(200));
        let addr = server.local_addr();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(
            AdminState {
                metrics: Metrics::new(),
                ready,
            },
            async move {
                let _ = stop_rx.await;
            },
        ));
        // A client that opened a connection and sent half a request, then went quiet.
        let mut stuck = TcpStream::connect(addr).await.unwrap();
        stuck.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
        // Make sure the server has accepted it before shutting down.
        assert_eq!(get(addr, "/healthz").await.status, 200);

        let started = Instant::now();
        stop_tx.send(()).unwrap();
        let result = tokio::time::timeout(DEADLINE, task)
            .await
            .expect("server hung")
            .unwrap();
        assert!(result.is_ok(), "{result:?}");
        assert!(started.elapsed() < DEADLINE);
        drop(stuck);
    }

    #[tokio::test]
    async fn bind_error_names_the_address() {
        let taken = AdminServer::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let err = AdminServer::bind(taken.local_addr()).await.unwrap_err();
        assert!(matches!(err, AdminError::Bind { addr, .. } if addr == taken.local_addr()));
        assert!(err.to_string().contains(&taken.local_addr().to_string()));
    }
}
