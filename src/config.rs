//! Command line and environment: every flag of `registrar run` is also an environment variable.
//! Bad configuration fails at start with one line that names the flag.
//!
//! The connection flags (Kubernetes, etcd, prefix, cluster id) are defined once, in
//! [`ConnectArgs`], and shared by `run`, `inspect` and `doctor`.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use registrar_etcd::EtcdConnect;

/// Registrar mirrors the ready endpoints of ServiceRegistrations into etcd.
#[derive(Debug, Parser)]
#[command(name = "registrar", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the operator.
    Run(Box<RunArgs>),
    /// Print the ServiceRegistration CustomResourceDefinition as YAML.
    Crd,
    /// Show, per pod of a registration, what should be in etcd, what is, and why.
    Inspect(Box<InspectArgs>),
    /// Check connectivity and permissions to the API server and etcd; non-zero exit on failure.
    Doctor(Box<DoctorArgs>),
    /// GET an admin endpoint (e.g. http://registrar-metrics:8080/readyz); exit 0 on a 2xx answer.
    Probe(ProbeArgs),
}

/// Flags of `registrar probe`.
#[derive(Clone, Debug, Args)]
pub struct ProbeArgs {
    /// URL to GET: http://<host>:<port>/<path> (plain HTTP, as the admin server serves).
    #[arg(value_name = "URL")]
    pub url: String,

    /// Seconds to wait for the whole answer.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout: u64,
}

/// Output format of `registrar inspect`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// An aligned table.
    Table,
    /// One JSON document (see the README for its shape).
    Json,
}

/// Flags of `registrar inspect`.
#[derive(Clone, Debug, Args)]
pub struct InspectArgs {
    /// The registration, as `<namespace>/<name>`.
    #[arg(value_name = "NAMESPACE/REGISTRATION", required_unless_present = "target", conflicts_with = "target", value_parser = parse_registration_ref)]
    pub registration: Option<(String, String)>,

    /// Inspect only what etcd holds under this target (`<prefix>/<namespace>/<service>`),
    /// without the Kubernetes API.
    #[arg(long, value_parser = parse_target)]
    pub target: Option<String>,

    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,

    /// Connection flags.
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// Flags of `registrar doctor`: exactly those of `registrar run`, so that it checks the
/// configuration the operator would run with.
#[derive(Clone, Debug, Args)]
pub struct DoctorArgs {
    /// The operator's flags.
    #[command(flatten)]
    pub run: RunArgs,
}

fn parse_registration_ref(s: &str) -> Result<(String, String), String> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_string(), name.to_string()))
        }
        _ => Err("expected <namespace>/<registration>".into()),
    }
}

fn parse_target(s: &str) -> Result<String, String> {
    let parts: Vec<&str> = s.split('/').collect();
    if parts.len() < 3 || parts.iter().any(|p| p.is_empty()) {
        return Err("expected <prefix>/<namespace>/<service> (no leading or trailing '/')".into());
    }
    Ok(s.to_string())
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// A secret string: never printed by `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret value.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

/// The connection flags shared by `run`, `inspect` and `doctor`: Kubernetes, etcd, the prefix
/// and the cluster id.
#[derive(Clone, Debug, Args)]
pub struct ConnectArgs {
    /// Kubeconfig file; default: in-cluster config, then $KUBECONFIG / ~/.kube/config.
    #[arg(long, env = "REGISTRAR_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// etcd client URLs, comma separated (https:// when TLS is configured).
    #[arg(
        long,
        env = "REGISTRAR_ETCD_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    pub etcd_endpoints: Vec<String>,

    /// CA certificate (PEM) that signed etcd's serving certificate.
    #[arg(long, env = "REGISTRAR_ETCD_CA_FILE")]
    pub etcd_ca_file: Option<PathBuf>,

    /// Client certificate (PEM) for etcd; requires --etcd-key-file.
    #[arg(long, env = "REGISTRAR_ETCD_CERT_FILE", requires = "etcd_key_file")]
    pub etcd_cert_file: Option<PathBuf>,

    /// Client key (PEM) for etcd; requires --etcd-cert-file.
    #[arg(long, env = "REGISTRAR_ETCD_KEY_FILE", requires = "etcd_cert_file")]
    pub etcd_key_file: Option<PathBuf>,

    /// TLS server name to verify etcd's certificate against (default: the endpoint's host).
    #[arg(long, env = "REGISTRAR_ETCD_TLS_SERVER_NAME")]
    pub etcd_tls_server_name: Option<String>,

    /// etcd user name (auth); the password comes from --etcd-password-file or REGISTRAR_ETCD_PASSWORD.
    #[arg(long, env = "REGISTRAR_ETCD_USERNAME")]
    pub etcd_username: Option<String>,

    /// File holding the etcd password (trailing newline ignored).
    #[arg(
        long,
        env = "REGISTRAR_ETCD_PASSWORD_FILE",
        conflicts_with = "etcd_password"
    )]
    pub etcd_password_file: Option<PathBuf>,

    /// etcd password (prefer --etcd-password-file; never logged).
    #[arg(long, env = "REGISTRAR_ETCD_PASSWORD", hide_env_values = true)]
    pub etcd_password: Option<Secret>,

    /// Key prefix in etcd; targets are `<prefix>/<namespace>/<service>`.
    #[arg(long, env = "REGISTRAR_PREFIX", default_value = "registrar", value_parser = parse_prefix)]
    pub prefix: String,

    /// Identity of this cluster, recorded in `<prefix>/.owner` (default: the UID of the
    /// kube-system namespace).
    #[arg(long, env = "REGISTRAR_CLUSTER_ID")]
    pub cluster_id: Option<String>,

    /// Adds `cluster=<id>` to every published endpoint's metadata, for clients that route across
    /// clusters (default: not added). `inspect` needs the operator's value to compare values.
    #[arg(long, env = "REGISTRAR_PUBLISH_CLUSTER_ID", value_parser = parse_publish_cluster_id)]
    pub publish_cluster_id: Option<String>,
}

/// Flags of `registrar run`: the shared [`ConnectArgs`] (reachable through `Deref`) and the
/// operator's own.
#[derive(Clone, Debug, Args)]
pub struct RunArgs {
    /// Connection flags.
    #[command(flatten)]
    pub connect: ConnectArgs,

    /// TTL of the etcd lease that holds every published key, in seconds (keepalive every TTL/3).
    #[arg(long, env = "REGISTRAR_LEASE_TTL", default_value_t = 30, value_parser = clap::value_parser!(u64).range(2..=3600))]
    pub lease_ttl: u64,

    /// Coalescing window, in milliseconds: a change after a quiet period is written at once;
    /// changes within this window of the last write are batched into the next one.
    #[arg(long, env = "REGISTRAR_COALESCE_MS", default_value_t = crate::coalesce::DEFAULT_WINDOW_MS, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub coalesce_ms: u64,

    /// How often, in seconds, every registration's status is compared with what the API server
    /// shows and rewritten where it differs (repairs statuses edited or lost elsewhere).
    #[arg(long, env = "REGISTRAR_STATUS_RESYNC_SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub status_resync_seconds: u64,

    /// Sustained Kubernetes writes per second (status patches, finalizers, Events), a token
    /// bucket shared by all of them; watches are not limited.
    #[arg(long, env = "REGISTRAR_KUBE_API_QPS", default_value_t = crate::controller::WriteLimits::DEFAULT_QPS, value_parser = parse_qps)]
    pub kube_api_qps: f64,

    /// Kubernetes writes allowed at once above the sustained rate after a quiet period.
    #[arg(long, env = "REGISTRAR_KUBE_API_BURST", default_value_t = crate::controller::WriteLimits::DEFAULT_BURST, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub kube_api_burst: u32,

    /// Sizes the Kubernetes writes in flight at once (each holds one seat of the API server's
    /// priority level while it runs): twice this many in all, given to status patches first,
    /// then finalizers (always one when any waits), then Events (at most a quarter of this).
    #[arg(long, env = "REGISTRAR_KUBE_API_MAX_IN_FLIGHT", default_value_t = crate::controller::WriteLimits::DEFAULT_IN_FLIGHT, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    pub kube_api_max_in_flight: u32,

    /// Elect a leader with a coordination.k8s.io Lease; only the leader writes.
    #[arg(long, env = "REGISTRAR_LEADER_ELECT", default_value_t = false, action = clap::ArgAction::Set)]
    pub leader_elect: bool,

    /// Namespace of the leader-election Lease (default: $POD_NAMESPACE, else `default`).
    #[arg(long, env = "REGISTRAR_LEADER_ELECTION_NAMESPACE")]
    pub leader_election_namespace: Option<String>,

    /// Name of the leader-election Lease.
    #[arg(
        long,
        env = "REGISTRAR_LEADER_ELECTION_LEASE_NAME",
        default_value = "registrar"
    )]
    pub leader_election_lease_name: String,

    /// Leader-election lease duration in seconds.
    #[arg(long, env = "REGISTRAR_LEADER_ELECTION_LEASE_DURATION", default_value_t = 15, value_parser = clap::value_parser!(u64).range(2..=600))]
    pub leader_election_lease_duration: u64,

    /// This replica's identity for leader election and events (default: $POD_NAME, else the host name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,

    /// Address of the admin HTTP server (/healthz, /readyz, /metrics).
    #[arg(long, env = "REGISTRAR_ADMIN_ADDR", default_value = "127.0.0.1:8080")]
    pub admin_addr: SocketAddr,

    /// Log format.
    #[arg(long, env = "REGISTRAR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// A configuration problem, naming the flag.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file named by a flag could not be read.
    #[error("{flag}: cannot read {path}: {source}")]
    File {
        /// The flag.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A flag's value is unusable.
    #[error("{flag}: {reason}")]
    Invalid {
        /// The flag.
        flag: &'static str,
        /// Why.
        reason: String,
    },
}

fn parse_prefix(s: &str) -> Result<String, String> {
    if s.is_empty() || s.starts_with('/') || s.ends_with('/') || s.contains("//") {
        return Err("must be non-empty, without a leading or trailing '/' or '//'".into());
    }
    Ok(s.to_string())
}

/// Highest accepted `--kube-api-qps`.
const MAX_QPS: f64 = 100_000.0;

fn parse_qps(s: &str) -> Result<f64, String> {
    let qps: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number"))?;
    if !qps.is_finite() || qps <= 0.0 || qps > MAX_QPS {
        return Err(format!("{s} is not in (0, {MAX_QPS}] (writes per second)"));
    }
    Ok(qps)
}

fn parse_publish_cluster_id(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 253 || s.chars().any(char::is_control) {
        return Err("must be 1 to 253 characters, without control characters".into());
    }
    Ok(s.to_string())
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|source| ConfigError::File {
        flag,
        path: path.to_path_buf(),
        source,
    })
}

impl std::ops::Deref for RunArgs {
    type Target = ConnectArgs;

    fn deref(&self) -> &ConnectArgs {
        &self.connect
    }
}

/// Whether an etcd lease of `lease_ttl` seconds outlives a leader change with a leader-election
/// lease of `lease_duration` seconds: a new leader re-puts every key under its own etcd lease
/// before the old one can expire only if it takes over in time. The old lease may have as
/// little as 2/3 of its TTL left when the leader dies (keepalives every TTL/3), and a standby
/// takes over up to the lease duration plus about 2 s (release jitter, API calls, first write)
/// later: `lease_ttl >= 1.5 x (lease_duration + 2)`. The chart enforces the same rule.
pub fn lease_ttl_covers_failover(lease_ttl: u64, lease_duration: u64) -> bool {
    2 * lease_ttl >= 3 * (lease_duration + 2)
}

impl RunArgs {
    /// The lease TTL.
    pub fn lease_ttl(&self) -> Duration {
        Duration::from_secs(self.lease_ttl)
    }

    /// The coalescing window.
    pub fn coalesce(&self) -> Duration {
        Duration::from_millis(self.coalesce_ms)
    }

    /// The budget of Kubernetes writes.
    pub fn kube_writes(&self) -> crate::controller::WriteLimits {
        crate::controller::WriteLimits {
            qps: self.kube_api_qps,
            burst: self.kube_api_burst,
            in_flight: self.kube_api_max_in_flight as usize,
        }
    }

    /// This replica's identity.
    pub fn identity(&self) -> String {
        self.identity.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| format!("registrar-{}", std::process::id()))
        })
    }

    /// The leader-election namespace.
    pub fn leader_election_namespace(&self) -> String {
        self.leader_election_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .unwrap_or_else(|| "default".to_string())
    }
}

impl ConnectArgs {
    /// The etcd connection from the endpoint, TLS and auth flags (reads the files now, so a
    /// missing file fails at start). The shared builder's timeout policy applies: no deadline on
    /// the channel; every unary request is timed by its caller, streams never.
    pub fn etcd_connect(&self) -> Result<EtcdConnect, ConfigError> {
        if self.etcd_endpoints.iter().all(|e| e.trim().is_empty()) {
            return Err(ConfigError::Invalid {
                flag: "--etcd-endpoints",
                reason: "at least one endpoint is required".into(),
            });
        }
        let mut connect = EtcdConnect::new(&self.etcd_endpoints);
        let password = match (&self.etcd_password_file, &self.etcd_password) {
            (Some(path), _) => {
                let bytes = read("--etcd-password-file", path)?;
                let text = String::from_utf8(bytes).map_err(|_| ConfigError::Invalid {
                    flag: "--etcd-password-file",
                    reason: "the password is not UTF-8".into(),
                })?;
                Some(text.trim_end_matches(['\r', '\n']).to_string())
            }
            (None, Some(secret)) => Some(secret.expose().to_string()),
            (None, None) => None,
        };
        match (&self.etcd_username, password) {
            (Some(user), Some(password)) => connect = connect.user(user.clone(), password),
            (Some(_), None) => {
                return Err(ConfigError::Invalid {
                    flag: "--etcd-username",
                    reason: "needs --etcd-password-file or REGISTRAR_ETCD_PASSWORD".into(),
                });
            }
            (None, Some(_)) => {
                return Err(ConfigError::Invalid {
                    flag: "--etcd-password-file",
                    reason: "a password without --etcd-username".into(),
                });
            }
            (None, None) => {}
        }
        let tls_wanted = self.etcd_ca_file.is_some() || self.etcd_cert_file.is_some();
        if tls_wanted {
            if let Some(e) = self
                .etcd_endpoints
                .iter()
                .find(|e| e.starts_with("http://"))
            {
                return Err(ConfigError::Invalid {
                    flag: "--etcd-endpoints",
                    reason: format!("{e} is http:// but TLS is configured; use https://"),
                });
            }
            if let Some(ca) = &self.etcd_ca_file {
                connect = connect.ca_pem(read("--etcd-ca-file", ca)?);
            }
            if let (Some(cert), Some(key)) = (&self.etcd_cert_file, &self.etcd_key_file) {
                connect = connect.identity_pem(
                    read("--etcd-cert-file", cert)?,
                    read("--etcd-key-file", key)?,
                );
            }
            if let Some(name) = &self.etcd_tls_server_name {
                connect = connect.domain_name(name.clone());
            }
        }
        Ok(connect)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<RunArgs, clap::Error> {
        let mut all = vec!["registrar", "run"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).map(|cli| match cli.command {
            Command::Run(args) => *args,
            _ => panic!("parsed as another subcommand"),
        })
    }

    #[test]
    fn defaults_are_sensible() {
        let a = parse(&[]).unwrap();
        assert_eq!(a.prefix, "registrar");
        assert_eq!(a.lease_ttl(), Duration::from_secs(30));
        assert_eq!(a.etcd_endpoints, vec!["http://127.0.0.1:2379"]);
        assert!(!a.leader_elect);
        assert_eq!(a.log_format, LogFormat::Text);
        let w = a.kube_writes();
        assert_eq!((w.qps, w.burst, w.in_flight), (500.0, 1000, 16));
    }

    #[test]
    fn kube_write_limits_are_read() {
        let a = parse(&[
            "--kube-api-qps",
            "12.5",
            "--kube-api-burst",
            "30",
            "--kube-api-max-in-flight",
            "4",
        ])
        .unwrap();
        let w = a.kube_writes();
        assert_eq!((w.qps, w.burst, w.in_flight), (12.5, 30, 4));
    }

    #[test]
    fn bad_values_name_the_flag() {
        for (args, flag) in [
            (vec!["--lease-ttl", "1"], "--lease-ttl"),
            (vec!["--prefix", "/abs"], "--prefix"),
            (vec!["--prefix", "x/"], "--prefix"),
            (vec!["--admin-addr", "nope"], "--admin-addr"),
            (vec!["--log-format", "xml"], "--log-format"),
            (vec!["--etcd-cert-file", "c.pem"], "--etcd-key-file"),
        ] {
            let err = parse(&args).unwrap_err().to_string();
            assert!(err.contains(flag), "{args:?}: {err}");
        }
    }

    #[test]
    fn password_is_never_printed() {
        let a = parse(&["--etcd-username", "u", "--etcd-password", "hunter2"]).unwrap();
        assert!(!format!("{a:?}").contains("hunter2"));
        assert!(a.etcd_connect().is_ok());
    }

    #[test]
    fn auth_and_tls_errors_name_the_flag() {
        let a = parse(&["--etcd-username", "u"]).unwrap();
        assert!(
            a.etcd_connect()
                .unwrap_err()
                .to_string()
                .starts_with("--etcd-username")
        );
        let a = parse(&[
            "--etcd-ca-file",
            "/nonexistent/ca.pem",
            "--etcd-endpoints",
            "https://127.0.0.1:2379",
        ])
        .unwrap();
        assert!(
            a.etcd_connect()
                .unwrap_err()
                .to_string()
                .starts_with("--etcd-ca-file")
        );
        let a = parse(&["--etcd-ca-file", "/nonexistent/ca.pem"]).unwrap();
        assert!(
            a.etcd_connect()
                .unwrap_err()
                .to_string()
                .starts_with("--etcd-endpoints")
        );
    }

    /// More refused values, each naming its flag (the table in `docs/bad-input.md`).
    #[test]
    fn more_bad_values_name_the_flag() {
        for (args, expected) in [
            (vec!["--lease-ttl", "3601"], "--lease-ttl"),
            (vec!["--coalesce-ms", "10001"], "--coalesce-ms"),
            (
                vec!["--status-resync-seconds", "0"],
                "--status-resync-seconds",
            ),
            (
                vec!["--leader-election-lease-duration", "601"],
                "--leader-election-lease-duration",
            ),
            (vec!["--lease-ttl", "ten"], "--lease-ttl"),
            (vec!["--bogus-flag"], "--bogus-flag"),
            (vec!["--kube-api-qps", "0"], "--kube-api-qps"),
            (vec!["--kube-api-qps=-5"], "--kube-api-qps"),
            (vec!["--kube-api-qps", "NaN"], "--kube-api-qps"),
            (vec!["--kube-api-qps", "inf"], "--kube-api-qps"),
            (vec!["--kube-api-qps", "100001"], "--kube-api-qps"),
            (vec!["--kube-api-burst", "0"], "--kube-api-burst"),
            (
                vec!["--kube-api-max-in-flight", "0"],
                "--kube-api-max-in-flight",
            ),
            (
                vec!["--kube-api-max-in-flight", "1001"],
                "--kube-api-max-in-flight",
            ),
        ] {
            let err = parse(&args).unwrap_err().to_string();
            assert!(err.contains(expected), "{args:?}: {err}");
        }
        for (args, expected) in [
            (
                vec!["--etcd-endpoints", " "],
                "--etcd-endpoints: at least one endpoint is required",
            ),
            (
                vec!["--etcd-password", "p"],
                "--etcd-password-file: a password without --etcd-username",
            ),
        ] {
            let err = parse(&args)
                .unwrap()
                .etcd_connect()
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(expected), "{args:?}: {err}");
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        std::fs::write(&file, b"\xff\xfe").unwrap();
        let a = parse(&[
            "--etcd-username",
            "u",
            "--etcd-password-file",
            file.to_str().unwrap(),
        ])
        .unwrap();
        let err = a.etcd_connect().unwrap_err().to_string();
        assert!(err.starts_with("--etcd-password-file"), "{err}");
        assert!(err.contains("not UTF-8"), "{err}");
    }
}
