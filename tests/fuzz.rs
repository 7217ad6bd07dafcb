//! Fuzz targets of the operator's parsers of untrusted input, on stable (the harness of
//! `registrar_testenv::fuzz`): a ServiceRegistration as the API server hands it over (port
//! spec, selector, metadata) through the endpoint decision and the status, and the command
//! line. Each replays `fuzz/corpus/<target>/` first, then runs generated inputs for
//! `REGISTRAR_FUZZ_SECS` (default 3 s; `REGISTRAR_FUZZ_SECS=600 cargo test --test fuzz` for a
//! long run). Environment variables (`REGISTRAR_*`) go through the same clap value parsers as
//! the flags, so the flags cover them.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use registrar::config::{Cli, Command};
use registrar::crd::ServiceRegistration;
use registrar::desired;
use registrar::status::{self, Publishing};
use registrar_testenv::fuzz::fuzz;
use serde_json::json;

fn corpus(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

fn pods() -> Vec<Pod> {
    let pod = |name: &str, ip: &str, labels: serde_json::Value, ports: serde_json::Value| {
        serde_json::from_value::<Pod>(json!({
            "metadata": {"name": name, "namespace": "shop", "labels": labels},
            "spec": {"nodeName": "n1", "containers": [{"name": "app", "ports": ports}],
                     "initContainers": [{"name": "side", "restartPolicy": "Always",
                                         "ports": [{"name": "side", "containerPort": 9000}]}]},
            "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap()
    };
    vec![
        pod(
            "a",
            "192.0.2.1",
            json!({"app": "g", "tier": "gold"}),
            json!([{"name": "grpc", "containerPort": 50051}]),
        ),
        pod(
            "b",
            "2001:db8::2",
            json!({"app": "g"}),
            json!([{"name": "grpc", "containerPort": 50052, "protocol": "UDP"}]),
        ),
        pod("c", "not-an-ip", json!({"app": "h", "env": "x"}), json!([])),
    ]
}

/// A registration from the API server never panics the endpoint decision or the status.
#[test]
fn fuzz_crd_spec() {
    let pods = pods();
    let tokens: &[&[u8]] = &[
        b"{",
        b"}",
        b"[",
        b"]",
        b",",
        b":",
        b"\"",
        b"null",
        b"\"spec\"",
        b"\"selector\"",
        b"\"matchLabels\"",
        b"\"matchExpressions\"",
        b"\"key\"",
        b"\"operator\"",
        b"\"values\"",
        b"\"In\"",
        b"\"NotIn\"",
        b"\"Exists\"",
        b"\"DoesNotExist\"",
        b"\"port\"",
        b"\"grpc\"",
        b"\"side\"",
        b"0",
        b"65535",
        b"65536",
        b"-1",
        b"2147483648",
        b"\"metadata\"",
        b"\"service\"",
        b"\"publishNotReady\"",
        b"true",
        b"\"app\"",
        b"\"g\"",
        b"\"deletionTimestamp\":\"2025-01-01T00:00:00Z\"",
        b"\"namespace\":\"shop\"",
    ];
    let now = Time(Timestamp::from_second(1_750_000_000).unwrap());
    let report = fuzz("crd_spec", &corpus("crd_spec"), tokens, |bytes| {
        let Ok(reg) = serde_json::from_slice::<ServiceRegistration>(bytes) else {
            return;
        };
        let outcome = desired::registration_outcome("registrar", &reg, &pods);
        for pod in &pods {
            let decision = desired::pod_decision(&reg, pod);
            if let desired::PodDecision::Endpoint(e) = &decision {
                assert!(outcome.endpoints.contains_key(&e.addr), "{decision:?}");
                assert!(registrar_resolver::value::Endpoint::decode(e.value.as_bytes()).is_ok());
            }
            let _ = decision.to_string();
        }
        let _ = desired::desired_keys("registrar", [&outcome]);
        for p in [Publishing::Ok, Publishing::EtcdUnavailable("x".into())] {
            let _ = status::next_status(&reg, &outcome, &p, now.clone());
        }
    });
    assert!(report.corpus > 0, "the corpus is missing");
}

/// Any command line (one argument per line, bytes as given, invalid UTF-8 included) is parsed
/// or refused with an error, never a panic; a parsed `run` command builds its etcd connection
/// and derived settings without panicking.
#[test]
fn fuzz_config_flags() {
    let tokens: &[&[u8]] = &[
        b"\n",
        b"run",
        b"inspect",
        b"doctor",
        b"crd",
        b"--prefix",
        b"--lease-ttl",
        b"--coalesce-ms",
        b"--etcd-endpoints",
        b"--etcd-username",
        b"--etcd-password",
        b"--admin-addr",
        b"--log-format",
        b"--leader-elect",
        b"--cluster-id",
        b"--etcd-tls-server-name",
        b"--status-resync-seconds",
        b"--topology",
        b"=",
        b"0",
        b"1",
        b"3600",
        b"3601",
        b"18446744073709551616",
        b"-1",
        b"http://127.0.0.1:2379",
        b"https://127.0.0.1:2379",
        b"127.0.0.1:8080",
        b"[::1]:9",
        b"json",
        b"text",
        b"/",
        b"a/b",
        b"--",
        b"-h",
        b"\xff",
        b",",
    ];
    let report = fuzz("config_flags", &corpus("config_flags"), tokens, |bytes| {
        let args: Vec<OsString> = std::iter::once(OsString::from("registrar"))
            .chain(
                bytes
                    .split(|b| *b == b'\n')
                    .map(|a| OsString::from_vec(a.to_vec())),
            )
            .collect();
        let Ok(cli) = <Cli as clap::Parser>::try_parse_from(args) else {
            return;
        };
        if let Command::Run(run) = cli.command {
            let _ = (run.lease_ttl(), run.coalesce(), run.identity());
            let _ = run.leader_election_namespace();
            // Files are read by `etcd_connect`: only without file flags (no reads of
            // arbitrary paths from a test).
            if !bytes.windows(5).any(|w| w == b"-file") {
                let _ = run.etcd_connect();
            }
        }
    });
    assert!(report.corpus > 0, "the corpus is missing");
}
