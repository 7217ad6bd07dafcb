//! `registrar-demo`: runs the Registrar demo (see the library docs), or, with `serve`, the
//! example Greeter workload as a standalone server (what the example Deployment's container runs).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use registrar_demo::greeter::{DRAIN_DELAY, GracefulServer, Shutdown, drainer};
use registrar_demo::{DemoOptions, Output};

#[derive(Parser)]
#[command(
    version,
    about = "Registrar end to end on one machine: a local cluster, the operator, a Greeter workload and a balancing client"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Short, non-interactive run with plain output (what the test runs).
    #[arg(long, env = "DEMO_QUICK")]
    quick: bool,
    /// Seconds each phase is measured once it has settled.
    #[arg(long, env = "DEMO_HOLD")]
    hold: Option<u64>,
    /// RPCs per second the client sends (1-2000).
    #[arg(long, env = "DEMO_RATE", default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=2000))]
    rate: u32,
    /// Fake nodes in the cluster (1-8).
    #[arg(long, env = "DEMO_NODES", default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=8))]
    nodes: u64,
    /// Plain output even on a terminal (no live table).
    #[arg(long, env = "DEMO_PLAIN")]
    plain: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the example Greeter until SIGTERM/SIGINT, then drain: NOT_SERVING on
    /// grpc.health.v1, serving on for the drain delay, then a graceful shutdown.
    Serve {
        /// Address to listen on.
        #[arg(long, env = "GREETER_ADDR", default_value = "127.0.0.1:50051")]
        addr: SocketAddr,
        /// Backend name the replies carry (e.g. the pod name).
        #[arg(long, env = "POD_NAME", default_value = "greeter")]
        name: String,
        /// Longest time the whole drain may take (drain delay, then in-flight RPCs).
        #[arg(long, default_value_t = 10)]
        grace_seconds: u64,
        /// Seconds to keep serving after turning NOT_SERVING.
        #[arg(long, default_value_t = DRAIN_DELAY.as_secs())]
        drain_delay_seconds: u64,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Serve {
            addr,
            name,
            grace_seconds,
            drain_delay_seconds,
        }) => {
            init_logging("info");
            let drain_delay = Duration::from_secs(drain_delay_seconds);
            serve(addr, name, drain_delay, Duration::from_secs(grace_seconds)).await
        }
        None => demo(cli).await,
    }
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn demo(cli: Cli) -> ExitCode {
    let mut opts = if cli.quick {
        DemoOptions::quick()
    } else {
        DemoOptions::interactive()
    };
    if let Some(hold) = cli.hold {
        opts.hold = Duration::from_secs(hold);
    }
    if cli.plain && opts.output == Output::Live {
        opts.output = Output::Plain;
    }
    opts.rate = cli.rate;
    opts.nodes = usize::try_from(cli.nodes).unwrap_or(2);
    // Log lines would tear the live table: only errors, unless RUST_LOG asks for more. (The
    // kube client logs every failed probe while the test ground waits for kube-apiserver.)
    init_logging(if opts.output == Output::Live {
        "error,kube_client::client::builder=off"
    } else {
        "warn,kube_client::client::builder=off"
    });

    // Dropping the demo's future (on Ctrl-C) drops the cluster, etcd, the operator and every
    // server: the child processes are killed and the listeners closed.
    tokio::select! {
        result = registrar_demo::run(opts) => match result {
            Ok(report) if report.success() => ExitCode::SUCCESS,
            Ok(report) => {
                eprintln!("demo finished with {} failed RPCs or idle backends", report.failures());
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        _ = interrupted() => {
            eprintln!("\ninterrupted: stopping every process the demo started");
            ExitCode::from(130)
        }
    }
}

async fn serve(addr: SocketAddr, name: String, drain_delay: Duration, grace: Duration) -> ExitCode {
    let server = match GracefulServer::start_draining(addr, name, drainer(drain_delay)).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(addr = %server.addr(), name = server.name(), "serving");
    interrupted().await;
    tracing::info!(
        ?drain_delay,
        "draining: NOT_SERVING, serving on for the drain delay"
    );
    let served = server.served();
    match server.shutdown(grace).await {
        Shutdown::Drained => tracing::info!(served, "drained and stopped"),
        Shutdown::Forced => tracing::warn!(served, "grace period over; connections cut"),
    }
    ExitCode::SUCCESS
}

/// SIGINT or SIGTERM.
async fn interrupted() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
