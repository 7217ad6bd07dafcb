//! The live traffic view: every tick, the RPCs each backend answered in the current window, the
//! state of its server (from the stand-in kubelet), and its zone and state in the client's
//! balancer (`Balancer::snapshot()`: READY, UNHEALTHY when health checking took it out,
//! EJECTED by outlier detection, ...).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use registrar_resolver::{BackendState, Balancer};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::client::Tally;
use crate::console::{Console, Output};
use crate::kubelet::{Kubelet, ServerState};
use crate::render::{self, Row};

/// The running view; stops when dropped.
pub struct Dashboard {
    heading: watch::Sender<String>,
    task: JoinHandle<()>,
}

/// What the view shows.
pub struct Sources {
    /// Where to print.
    pub console: Arc<Console>,
    /// The client's counts.
    pub tally: Arc<Tally>,
    /// Server states.
    pub kubelet: Arc<Kubelet>,
    /// Connection states.
    pub balancer: Balancer,
    /// The total of failures before the current window.
    pub failures_before: Arc<std::sync::atomic::AtomicU64>,
}

impl Dashboard {
    /// Starts redrawing (live: 4 times a second; plain: a summary line every second).
    pub fn start(sources: Sources, heading: &str) -> Dashboard {
        let (tx, rx) = watch::channel(heading.to_string());
        let task = tokio::spawn(run(sources, rx));
        Dashboard { heading: tx, task }
    }

    /// Sets the heading (the phase, and whether it is changing or steady); the window's clock
    /// restarts.
    pub fn set_heading(&self, heading: String) {
        let _ = self.heading.send(heading);
    }
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn client_state(s: BackendState) -> &'static str {
    match s {
        BackendState::Idle => "IDLE",
        BackendState::Connecting => "CONNECTING",
        BackendState::Ready => "READY",
        BackendState::TransientFailure => "TRANSIENT_FAILURE",
        BackendState::Unhealthy => "UNHEALTHY",
        BackendState::Ejected => "EJECTED",
        _ => "UNKNOWN",
    }
}

async fn run(src: Sources, mut heading: watch::Receiver<String>) {
    let period = match src.console.output() {
        Output::Live => Duration::from_millis(250),
        _ => Duration::from_secs(1),
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut since = Instant::now();
    loop {
        tick.tick().await;
        if heading.has_changed().unwrap_or(false) {
            heading.borrow_and_update();
            since = Instant::now();
        }
        let title = format!(
            "{} · {:.0}s",
            heading.borrow().as_str(),
            since.elapsed().as_secs_f64()
        );
        let counts = src.tally.peek();
        let known: HashMap<String, (BackendState, Option<String>)> = src
            .balancer
            .snapshot()
            .backends
            .into_iter()
            .map(|b| (b.addr, (b.state, b.zone)))
            .collect();
        let rows: Vec<Row> = src
            .kubelet
            .backends()
            .into_iter()
            .filter(|b| b.state != ServerState::Stopped || counts.by_backend.contains_key(&b.pod))
            .map(|b| {
                let addr = b.addr.to_string();
                let seen = known.get(&addr);
                let client = match (b.state, seen) {
                    (ServerState::Stopped, _) | (_, None) => "-",
                    (_, Some((s, _))) => client_state(*s),
                };
                let zone = seen
                    .and_then(|(_, z)| z.clone())
                    .unwrap_or_else(|| "-".into());
                Row {
                    pod: b.pod,
                    addr,
                    zone,
                    server: b.state.as_str().to_string(),
                    client: client.to_string(),
                }
            })
            .collect();
        let total_failures = src
            .failures_before
            .load(std::sync::atomic::Ordering::Relaxed)
            + counts.failures;
        src.console.status(
            render::traffic_table(&title, &rows, &counts, total_failures),
            render::traffic_summary(&title, &counts),
        );
    }
}
