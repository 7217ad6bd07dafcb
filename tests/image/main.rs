//! The container image, run as the Helm chart's Deployment runs it: the image built from the
//! Dockerfile by `hack/image.sh` (on local stand-ins of its base images), started with podman
//! with the chart's rendered env, args, volumes and security context — user 65532, read-only
//! root file system, no capabilities, no-new-privileges — on the host network (loopback only),
//! against the test ground's kube-apiserver and an etcd with authentication. Kubernetes access is
//! in-cluster configuration only: a TokenRequest token of the chart's ServiceAccount and the API
//! server's CA mounted where kubelet mounts them, `KUBERNETES_SERVICE_HOST`/`_PORT` pointing at
//! the test API server; the ServiceAccount has exactly the chart's RBAC.
//!
//! Needs podman (hack/image.sh installs it as root, or names the command to run): the test fails,
//! it never passes by doing nothing. Prints the image size, build time, time to ready and time to
//! stop.

#[path = "../support/mod.rs"]
mod support;

mod pod;
mod podman;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use etcd_client::{ConnectOptions, Permission};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use registrar_testenv::{free_port, http_get, poll, unique_name};
use serde_json::{Value, json};
use support::*;

use crate::pod::{PodContext, PodRun};
use crate::podman::Container;

const RELEASE: &str = "registrar";
const RELEASE_NS: &str = "registrar-system";
const POD_NAME: &str = "registrar-7c9d5b8f6-x2k7q";
const AUTH_SECRET: &str = "registrar-etcd-auth";
const ETCD_USER: &str = "registrar";
const PASSWORD: &str = "Im4ge-Pa55-7f3a9c";
const ROOT_PASSWORD: &str = "root-Pa55-c0ffee";

/// Creates the chart's ServiceAccount and RBAC objects as the admin (nothing else is applied:
/// no kubelet runs the Deployment here, podman does).
async fn apply_rbac(client: &kube::Client, docs: &[Value]) -> Vec<String> {
    let mut kinds = Vec::new();
    for doc in docs {
        let kind = doc["kind"].as_str().unwrap_or_default();
        let cluster_scoped = match kind {
            "ClusterRole" | "ClusterRoleBinding" => true,
            "ServiceAccount" | "Role" | "RoleBinding" => false,
            _ => continue,
        };
        let (group, version) = match doc["apiVersion"].as_str().unwrap().split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", doc["apiVersion"].as_str().unwrap()),
        };
        let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
        let obj: DynamicObject = serde_json::from_value(doc.clone()).unwrap();
        let api: Api<DynamicObject> = if cluster_scoped {
            Api::all_with(client.clone(), &ar)
        } else {
            let ns = doc["metadata"]["namespace"].as_str().unwrap_or(RELEASE_NS);
            Api::namespaced_with(client.clone(), ns, &ar)
        };
        api.create(&PostParams::default(), &obj).await.unwrap();
        kinds.push(kind.to_string());
    }
    kinds.sort();
    kinds
}

/// Turns on etcd authentication: `root`, and a user whose role may only use `prefix/`.
async fn enable_etcd_auth(kv: &mut etcd_client::Client, prefix: &str) {
    kv.user_add("root", ROOT_PASSWORD, None).await.unwrap();
    let _ = kv.role_add("root").await;
    kv.user_grant_role("root", "root").await.unwrap();
    kv.role_add("registrar-rw").await.unwrap();
    kv.role_grant_permission(
        "registrar-rw",
        Permission::read_write(format!("{prefix}/")).with_prefix(),
    )
    .await
    .unwrap();
    kv.user_add(ETCD_USER, PASSWORD, None).await.unwrap();
    kv.user_grant_role(ETCD_USER, "registrar-rw").await.unwrap();
    kv.auth_enable().await.unwrap();
}

/// A token for the ServiceAccount from the TokenRequest API (what kubelet mounts).
async fn service_account_token(client: &kube::Client, sa: &str) -> String {
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: Vec::new(),
            expiration_seconds: Some(3600),
            bound_object_ref: None,
        },
        ..Default::default()
    };
    Api::<ServiceAccount>::namespaced(client.clone(), RELEASE_NS)
        .create_token_request(sa, &PostParams::default(), &request)
        .await
        .unwrap()
        .status
        .expect("a TokenRequest status")
        .token
}

/// What `/proc/<pid>/status` and the root mount say about the running operator.
fn process_security(pid: u32) -> BTreeMap<&'static str, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let root_options = mountinfo
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .rfind(|f| f.get(4) == Some(&"/"))
        .and_then(|f| f.get(5).map(|o| o.to_string()))
        .unwrap_or_default();
    BTreeMap::from([
        ("Uid", field("Uid")),
        ("Gid", field("Gid")),
        ("CapEff", field("CapEff")),
        ("CapPrm", field("CapPrm")),
        ("CapBnd", field("CapBnd")),
        ("NoNewPrivs", field("NoNewPrivs")),
        ("Seccomp", field("Seccomp")),
        ("root mount", root_options),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_runs_as_the_charts_deployment_runs_it() {
    // The image (hack/test.sh built it before the tests; this is then a cache hit).
    let work = tempfile::Builder::new()
        .prefix("registrar-image-")
        .tempdir()
        .unwrap();
    let (image, build_time) = tokio::task::spawn_blocking({
        let log = work.path().join("image.log");
        move || podman::build_image(&log)
    })
    .await
    .unwrap()
    .unwrap();
    let size = podman::image_size(&image).unwrap();
    podman::remove_stale_containers().unwrap();

    // The test ground, and etcd with authentication.
    let mut g = Ground::new().await.unwrap();
    enable_etcd_auth(&mut g.kv, &g.prefix).await;
    g.kv = etcd_client::Client::connect(
        [g.etcd.endpoint()],
        Some(ConnectOptions::new().with_user("root", ROOT_PASSWORD)),
    )
    .await
    .unwrap();
    namespace(&g.client, RELEASE_NS).await.unwrap();

    // The chart, rendered for this etcd and a free loopback admin port.
    let admin_port = free_port().unwrap();
    let endpoints = format!("etcd.endpoints[0]={}", g.etcd.endpoint());
    let port = format!("admin.port={admin_port}");
    let secret = format!("etcd.auth.secretName={AUTH_SECRET}");
    let docs = helm_template(
        RELEASE,
        RELEASE_NS,
        &[
            "--set",
            &endpoints,
            "--set",
            "etcd.auth.enabled=true",
            "--set",
            &secret,
            "--set",
            &port,
            "--set",
            "admin.bindAddress=127.0.0.1",
            "--set",
            "logLevel=info\\,registrar=debug",
        ],
    )
    .unwrap();
    let kinds = apply_rbac(&g.client, &docs).await;
    assert_eq!(
        kinds,
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "ServiceAccount"
        ]
    );
    let deployment = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("a Deployment is rendered");
    let sa = deployment["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .unwrap();

    // What kubelet would mount and inject.
    let token = service_account_token(&g.client, sa).await;
    let ca = std::fs::read_to_string(&g.cp.pki().ca).unwrap();
    let api_port: u16 = g.cp.url().rsplit(':').next().unwrap().parse().unwrap();
    let secrets = BTreeMap::from([(
        AUTH_SECRET.to_string(),
        BTreeMap::from([
            ("username".to_string(), ETCD_USER.to_string()),
            ("password".to_string(), PASSWORD.to_string()),
        ]),
    )]);
    let ctx = PodContext {
        pod_name: POD_NAME,
        namespace: RELEASE_NS,
        secrets: &secrets,
        service_account: [
            ("token", token),
            ("ca.crt", ca),
            ("namespace", RELEASE_NS.to_string()),
        ],
        api_host: "127.0.0.1",
        api_port,
    };
    let run: PodRun = pod::from_deployment(deployment, &ctx, work.path());
    assert_eq!(run.service_account_name, sa);
    assert_eq!(run.admin_port, admin_port);
    let lease_name = run
        .options
        .iter()
        .find_map(|o| o.strip_prefix("REGISTRAR_LEADER_ELECTION_LEASE_NAME="))
        .expect("the chart enables leader election")
        .to_string();

    // Start it and wait for the probes' endpoints.
    let mut args = run.options.clone();
    args.push(image.clone());
    args.extend(run.args.iter().cloned());
    let started = Instant::now();
    let mut container = Container::run(
        &unique_name("registrar-image"),
        &args,
        &work.path().join("container.log"),
    )
    .unwrap();
    let admin = format!("127.0.0.1:{}", run.admin_port);
    let ready = poll("the container's /readyz", Duration::from_secs(60), || {
        let admin = admin.clone();
        let path = run.readiness_path.clone();
        async move { matches!(http_get(&admin, &path).await, Ok((200, _))).then_some(()) }
    })
    .await;
    if let Err(e) = ready {
        let alive = container.check_alive();
        panic!("{e}; {alive:?}; container log:\n{}", container.log_tail(40));
    }
    let time_to_ready = started.elapsed();
    let (code, body) = http_get(&admin, &run.liveness_path).await.unwrap();
    assert_eq!(code, 200, "{} answered {code}: {body}", run.liveness_path);

    // The settings are in effect in the running process.
    let security = process_security(container.pid().unwrap());
    println!("operator process in the container: {security:?}");
    assert_eq!(security["Uid"], "65532 65532 65532 65532");
    assert_eq!(security["Gid"], "65532 65532 65532 65532");
    for caps in ["CapEff", "CapPrm", "CapBnd"] {
        assert_eq!(security[caps], "0000000000000000", "{caps}");
    }
    assert_eq!(security["NoNewPrivs"], "1");
    assert_eq!(
        security["Seccomp"], "2",
        "a seccomp filter (RuntimeDefault)"
    );
    assert!(
        security["root mount"].split(',').any(|o| o == "ro"),
        "{security:?}"
    );

    // It leads (the chart's Lease) and publishes.
    let leases: Api<Lease> = Api::namespaced(g.client.clone(), RELEASE_NS);
    poll("the chart's Lease held by the pod", DEADLINE, || {
        let leases = leases.clone();
        let lease_name = lease_name.clone();
        async move {
            let lease = leases.get(&lease_name).await.ok()?;
            (lease.spec?.holder_identity.as_deref() == Some(POD_NAME)).then_some(())
        }
    })
    .await
    .unwrap();
    let keys = g.publish_greeter(&[("p1", "127.0.0.161")]).await.unwrap();
    let reg = wait_reason(&g.client, &g.ns, "greeter", "Published")
        .await
        .unwrap();
    assert_eq!(ready_condition(&reg).status, "True");
    let mut kv = g.kv.clone();
    let value = kv.get(keys[0].as_str(), None).await.unwrap();
    let value: Value = serde_json::from_slice(value.kvs()[0].value()).unwrap();
    assert_eq!(value["Addr"], "127.0.0.161:50051");
    assert_eq!(value["Op"], json!(0));

    // The chart's `helm test` pod, run from the same image as kubelet would run it, against
    // the running replica (the Service's address is the admin port here): it passes.
    let hooks = helm_template_tests(RELEASE, RELEASE_NS, &["--set", &port]).unwrap();
    let test_pod = hooks
        .iter()
        .find(|d| d["metadata"]["annotations"]["helm.sh/hook"] == "test")
        .expect("the helm test pod");
    let (test_options, test_args) = pod::from_test_pod(
        test_pod,
        // An address, not `localhost`: a name could send a DNS query off the machine.
        &format!("http://127.0.0.1:{}{}", run.admin_port, run.readiness_path),
    );
    let run_test_pod = || {
        let mut a: Vec<String> = vec!["run".into(), "--rm".into()];
        a.extend(test_options.iter().cloned());
        a.push(image.clone());
        a.extend(test_args.iter().cloned());
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        podman::podman(&a)
    };
    let passed = run_test_pod().unwrap();
    println!("helm test pod against the running replica: {passed}");
    assert!(passed.contains(" 200 "), "{passed}");

    // SIGTERM: a clean exit within the grace period, and the Lease given up.
    let (stop_time, status) = container.stop(run.grace).unwrap();
    let log = container.log_text();
    assert!(
        status.success(),
        "the container exited with {status} after SIGTERM; log:\n{log}"
    );
    assert!(stop_time < run.grace, "stopped after {stop_time:?}");
    let lease = leases.get(&lease_name).await.unwrap();
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity),
        None,
        "the Lease is released; log:\n{log}"
    );
    assert!(log.contains("Lease released"), "{log}");

    // Nothing behind the Service: the helm test pod fails.
    let failed = run_test_pod().expect_err("the helm test pod passed with no operator");
    println!("helm test pod with the replica stopped: {failed:#}");
    assert!(format!("{failed:#}").contains("connecting"), "{failed:#}");

    // The chart's RBAC was enough, and the password stayed out of the log.
    assert!(
        !log.contains("forbidden") && !log.contains("Forbidden"),
        "the operator was refused something:\n{log}"
    );
    assert!(!log.contains(PASSWORD), "the etcd password is in the log");
    assert!(!log.contains(ROOT_PASSWORD));
    // Structured logs as the chart asks (logFormat json).
    let json_lines = log
        .lines()
        .filter(|l| serde_json::from_str::<Value>(l).is_ok())
        .count();
    assert!(json_lines > 0, "no JSON log line:\n{log}");

    println!(
        "image {image}: {:.1} MB; hack/image.sh took {:.1} s; ready {:.2} s after podman run; \
         stopped {:.2} s after SIGTERM (grace {} s); {json_lines} log lines",
        size as f64 / 1e6,
        build_time.as_secs_f64(),
        time_to_ready.as_secs_f64(),
        stop_time.as_secs_f64(),
        run.grace.as_secs()
    );
}
