//! The server half of a zero-error rollout: a drain helper for tonic servers.
//!
//! On SIGTERM (or a future of the caller's choosing) it sets every health service it was given
//! NOT_SERVING (clients with [health checking](crate::BalancerBuilder::health_check) stop
//! picking the server within one message), deletes the server's [`Registration`] if one is
//! attached (clients without health checking drop it when etcd tells them), keeps serving for a
//! drain delay (calls already picked still arrive and are answered), then returns: passed to
//! tonic's `serve_with_shutdown`, that return starts the graceful shutdown (HTTP/2 GOAWAY, no
//! new connections, in-flight calls finish).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::time::Instant;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::registration::Registration;

type Trigger = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Drains a tonic server before its graceful shutdown: on SIGTERM (or a given future) every
/// health service it was given turns NOT_SERVING, the attached [`Registration`] is deleted, the
/// server keeps serving for the drain delay, then [`wait`](Drain::wait) returns, which starts
/// tonic's graceful shutdown (GOAWAY, in-flight calls finish). See [`Drain::new`].
pub struct Drain {
    reporter: HealthReporter,
    services: Vec<String>,
    registration: Option<Registration>,
    delay: Duration,
    trigger: Option<Trigger>,
}

impl std::fmt::Debug for Drain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drain")
            .field("services", &self.services)
            .field(
                "registration",
                &self.registration.as_ref().map(Registration::key),
            )
            .field("delay", &self.delay)
            .field("trigger", &self.trigger.as_ref().map(|_| "custom"))
            .finish()
    }
}

impl Drain {
    /// The drain of a server whose health service is driven by `reporter` (from
    /// `tonic_health::server::health_reporter()`): on SIGTERM (Ctrl-C where there is no
    /// SIGTERM), the whole server (`""`) and every [`service`](Self::service) turn NOT_SERVING,
    /// then the server keeps serving for the [`delay`](Self::delay) (default 5 s).
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use registrar_resolver::Drain;
    ///
    /// let (reporter, health) = tonic_health::server::health_reporter();
    /// reporter
    ///     .set_service_status("greeter.v1.Greeter", tonic_health::ServingStatus::Serving)
    ///     .await;
    /// let drain = Drain::new(reporter)
    ///     .service("greeter.v1.Greeter")
    ///     .delay(Duration::from_secs(10));
    /// tonic::transport::Server::builder()
    ///     .add_service(health) // and your services
    ///     .serve_with_shutdown("0.0.0.0:50051".parse()?, drain.wait())
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn new(reporter: HealthReporter) -> Self {
        Drain {
            reporter,
            services: vec![String::new()],
            registration: None,
            delay: Duration::from_secs(5),
            trigger: None,
        }
    }

    /// Another service name to set NOT_SERVING (the whole server, `""`, always is).
    pub fn service(mut self, name: impl Into<String>) -> Self {
        let name = name.into();
        if !self.services.contains(&name) {
            self.services.push(name);
        }
        self
    }

    /// The server's own registration in etcd, deleted when the drain starts (within the drain
    /// delay at most; if etcd does not answer by then, its lease expires it).
    pub fn registration(mut self, registration: Registration) -> Self {
        self.registration = Some(registration);
        self
    }

    /// How long the server keeps serving after turning NOT_SERVING (default 5 s): long enough
    /// for every client to stop picking it. The pod's `terminationGracePeriodSeconds` must
    /// cover this delay plus the longest call.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Starts the drain when `trigger` completes, instead of on SIGTERM.
    pub fn trigger(mut self, trigger: impl Future<Output = ()> + Send + 'static) -> Self {
        self.trigger = Some(Box::pin(trigger));
        self
    }

    /// Waits for the trigger, drains, and returns when the server should start its graceful
    /// shutdown: the future to pass to tonic's `serve_with_shutdown`.
    pub async fn wait(self) {
        match self.trigger {
            Some(trigger) => trigger.await,
            None => terminated().await,
        }
        let started = Instant::now();
        tracing::info!(
            delay = ?self.delay,
            services = ?self.services,
            "draining: health NOT_SERVING, serving on for the drain delay"
        );
        for service in &self.services {
            self.reporter
                .set_service_status(service, ServingStatus::NotServing)
                .await;
        }
        let until = started + self.delay;
        if let Some(registration) = self.registration {
            let key = registration.key().to_owned();
            match tokio::time::timeout_at(until, registration.deregister()).await {
                Ok(Ok(())) => tracing::info!(%key, "draining: deregistered"),
                Ok(Err(e)) => {
                    tracing::warn!(%key, error = %e, "draining: deregistration failed; the lease will expire it")
                }
                Err(_) => {
                    tracing::warn!(%key, "draining: etcd did not confirm the deregistration within the drain delay")
                }
            }
        }
        tokio::time::sleep_until(until).await;
        tracing::info!("drain delay over: graceful shutdown");
    }
}

/// Resolves on SIGTERM (on Unix; Ctrl-C elsewhere, or if SIGTERM cannot be watched).
async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
                return;
            }
            Err(e) => tracing::warn!(error = %e, "cannot watch SIGTERM; draining on Ctrl-C"),
        }
    }
    if let Err(e) = tokio::signal::ctrl_c().await {
        tracing::warn!(error = %e, "cannot watch Ctrl-C either; never draining by signal");
        std::future::pending::<()>().await;
    }
}
