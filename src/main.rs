//! `registrar`: the operator binary. `registrar run` mirrors ready endpoints into etcd;
//! `registrar crd` prints the CustomResourceDefinition; `registrar inspect` and `registrar
//! doctor` diagnose; `registrar probe` checks an admin endpoint (the chart's `helm test`).
//! Invoked as `kubectl-registrar` (a symlink), it is a kubectl plugin:
//! `kubectl registrar inspect ...`.

use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches};
use registrar::admin::{AdminServer, AdminState};
use registrar::config::{Cli, Command, LogFormat, RunArgs};
use registrar::controller::Engine;
use registrar::etcd::WriterConfig;
use registrar::metrics::Metrics;
use tokio::sync::watch;

use registrar_etcd::members;

/// How the operator probes the etcd members to keep dead or frozen ones out of its client's
/// balanced set: a dead member is out within about 0.25 s, a frozen one within about 0.75 s.
const MEMBER_PROBE: members::ProbeSettings =
    members::ProbeSettings::new(Duration::from_millis(250), Duration::from_millis(500));

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match parse_cli() {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match cli.command {
        Command::Inspect(args) => {
            init_cli_logging();
            report(registrar::inspect::run(*args).await)
        }
        Command::Doctor(args) => {
            init_cli_logging();
            report(registrar::doctor::run(*args).await)
        }
        Command::Probe(args) => {
            let timeout = Duration::from_secs(args.timeout);
            match registrar::probe::probe(&args.url, timeout).await {
                Ok(answer) => {
                    println!("{}: {} {}", args.url, answer.status, answer.body);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Crd => match registrar::crd::crd_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Run(args) => {
            init_logging(args.log_format);
            match run(*args).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Parses the command line; as `kubectl-registrar`, help and errors say `kubectl registrar`.
fn parse_cli() -> Result<Cli, clap::Error> {
    let mut command = Cli::command();
    let invoked_as = std::env::args_os()
        .next()
        .map(std::path::PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    if invoked_as.as_deref() == Some("kubectl-registrar") {
        command = command.bin_name("kubectl registrar");
    }
    Cli::from_arg_matches(&command.try_get_matches()?)
}

/// Exit code of a diagnostic command: its own on success, 1 (after the error) on failure.
fn report(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Diagnostic commands log warnings only (to stderr), unless `RUST_LOG` says otherwise.
fn init_cli_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    // Configuration errors first: they must fail at start, naming the flag.
    args.etcd_connect()?;
    let (shutdown_tx, shutdown) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        let _ = shutdown_tx.send(true);
    });

    let metrics = Metrics::new();
    let (ready_tx, ready_rx) = watch::channel(false);
    let admin = AdminServer::bind(args.admin_addr).await?;
    tracing::info!(addr = %admin.local_addr(), "admin server listening");
    let admin_state = AdminState {
        metrics: metrics.clone(),
        ready: ready_rx,
    };
    let mut admin_shutdown = shutdown.clone();
    tokio::spawn(async move {
        let stop = async move {
            let _ = admin_shutdown.wait_for(|s| *s).await;
        };
        if let Err(e) = admin.serve(admin_state, stop).await {
            tracing::error!(error = %e, "admin server failed");
        }
    });

    let client = registrar::connect::kube_client(&args).await?;
    let cluster_id = registrar::connect::cluster_id(&client, &args).await?;
    tracing::info!(prefix = %args.prefix, cluster_id = %cluster_id, lease_ttl = ?args.lease_ttl(), "starting");

    if args.leader_elect {
        warn_on_short_lease_ttl(&args);
    }
    // Each writer term dials etcd with these settings (and says why while it cannot). The
    // client keeps dead or frozen members out of its balanced endpoint set ([`members`]).
    let etcd = args.etcd_connect()?.member_probe(Some(MEMBER_PROBE));
    let leadership = registrar::leader::elect(client.clone(), &args).await?;
    let mut writer = WriterConfig::new(args.prefix.clone(), cluster_id);
    writer.lease_ttl = args.lease_ttl();
    let engine = Engine {
        client,
        etcd: etcd.into(),
        writer,
        metrics,
        identity: args.identity(),
        coalesce: args.coalesce(),
        status_resync: Duration::from_secs(args.status_resync_seconds),
        publish_cluster_id: args.publish_cluster_id.clone(),
        kube_writes: args.kube_writes(),
    };
    let result = engine.run(leadership.subscribe(), ready_tx, shutdown).await;
    // The engine stopped writing: give the Lease up so that a standby takes over at once.
    leadership.release().await;
    result
}

/// Warns when the etcd lease may expire before a new leader re-puts the keys
/// ([`lease_ttl_covers_failover`](registrar::config::lease_ttl_covers_failover)).
fn warn_on_short_lease_ttl(args: &RunArgs) {
    let ttl = args.lease_ttl;
    let duration = args.leader_election_lease_duration;
    if !registrar::config::lease_ttl_covers_failover(ttl, duration) {
        tracing::warn!(
            lease_ttl = ttl,
            leader_election_lease_duration = duration,
            "--lease-ttl is too short for --leader-election-lease-duration: after a leader dies, \
             endpoints may disappear from etcd until the new leader puts them again; use \
             --lease-ttl >= 1.5 x (lease duration + 2 s)"
        );
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
