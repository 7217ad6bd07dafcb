//! `registrar`: the operator binary. `registrar run` mirrors ready endpoints into etcd;
//! `registrar crd` prints the CustomResourceDefinition.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use registrar::admin::{AdminServer, AdminState};
use registrar::config::{Cli, Command, LogFormat, RunArgs};
use registrar::controller::Engine;
use registrar::etcd::WriterConfig;
use registrar::metrics::Metrics;
use tokio::sync::watch;

use registrar_etcd::members;

/// How the operator probes the etcd members to keep dead or frozen ones out of its client's
/// balanced set: a dead member is out within about 0.25 s, a frozen one within about 0.75 s.
const MEMBER_PROBE: members::ProbeSettings = members::ProbeSettings {
    every: Duration::from_millis(250),
    timeout: Duration::from_millis(500),
};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
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

async fn kube_client(args: &RunArgs) -> anyhow::Result<kube::Client> {
    let config = match &args.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("--kubeconfig: cannot read {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .context("--kubeconfig")?
        }
        None => kube::Config::infer()
            .await
            .context("no Kubernetes configuration found")?,
    };
    kube::Client::try_from(config).context("building the Kubernetes client")
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

    let client = kube_client(&args).await?;
    let cluster_id = match &args.cluster_id {
        Some(id) => id.clone(),
        None => Api::<Namespace>::all(client.clone())
            .get("kube-system")
            .await
            .context("reading the kube-system namespace for the default --cluster-id")?
            .metadata
            .uid
            .context("kube-system has no uid; set --cluster-id")?,
    };
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
    };
    let result = engine.run(leadership.subscribe(), ready_tx, shutdown).await;
    // The engine stopped writing: give the Lease up so that a standby takes over at once.
    leadership.release().await;
    result
}

/// A new leader re-puts every key under its own etcd lease before the old one can expire only
/// if it takes over in time: the old lease may have as little as 2/3 of its TTL left when the
/// leader dies (keepalives every TTL/3), and a standby takes over up to the leader-election
/// lease duration plus about 2 s (release jitter, API calls, first write) later.
fn warn_on_short_lease_ttl(args: &RunArgs) {
    let ttl = args.lease_ttl;
    let duration = args.leader_election_lease_duration;
    if 2 * ttl < 3 * (duration + 2) {
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
