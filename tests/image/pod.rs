//! What a kubelet would do with the chart's rendered Deployment, for one replica run by podman:
//! the container's environment (values, field references, Secret keys), its Secret volumes and
//! the service-account token volume written to a directory and mounted where the pod spec says,
//! its security context as podman options, its admin port and probe paths, and the grace period.
//! Anything in the pod spec this translation does not know fails the test, so that a chart change
//! cannot silently make the test run something else than the chart.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

/// Where kubelet mounts the service account's token, CA and namespace.
pub const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The replica's identity and the objects kubelet would read for it.
pub struct PodContext<'a> {
    pub pod_name: &'a str,
    pub namespace: &'a str,
    /// Secret name -> key -> value.
    pub secrets: &'a BTreeMap<String, BTreeMap<String, String>>,
    /// token, ca.crt and namespace (PEM and text).
    pub service_account: [(&'a str, String); 3],
    /// KUBERNETES_SERVICE_HOST / _PORT: the API server, as kubelet injects them.
    pub api_host: &'a str,
    pub api_port: u16,
}

/// The podman view of the Deployment's single container.
pub struct PodRun {
    /// Options for `podman run` (security context, env, mounts, limits, network).
    pub options: Vec<String>,
    /// The container's `args` (the image's ENTRYPOINT stays).
    pub args: Vec<String>,
    pub admin_port: u16,
    pub liveness_path: String,
    pub readiness_path: String,
    pub grace: Duration,
    pub service_account_name: String,
}

fn s(v: &Value) -> &str {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string, got {v}"))
}

/// Writes `files` into a new directory under `root` readable by the container's user (kubelet's
/// Secret volumes are 0440 with the pod's fsGroup; world-readable here, as the host's uid/gid
/// mapping is podman's business).
fn volume_dir(root: &Path, name: &str, files: &[(String, String)]) -> std::path::PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for (file, content) in files {
        let path = dir.join(file);
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
    }
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// Translates the rendered `deployment` (the chart's) for `ctx`, writing volumes under `root`.
pub fn from_deployment(deployment: &Value, ctx: &PodContext, root: &Path) -> PodRun {
    let pod = &deployment["spec"]["template"]["spec"];
    let containers = pod["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1, "the chart's pod has one container");
    let c = &containers[0];
    let mut options: Vec<String> = Vec::new();
    let mut opt = |parts: &[&str]| options.extend(parts.iter().map(|p| p.to_string()));

    // Host network as the test ground has no pod network; everything listens on loopback.
    opt(&["--network", "host"]);
    // Limits these machines need (the defaults fail with "error setting rlimit").
    opt(&[
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
    ]);

    // Pod and container security context.
    let psc = &pod["securityContext"];
    let csc = &c["securityContext"];
    assert_eq!(psc["runAsNonRoot"], true);
    assert_eq!(csc["runAsNonRoot"], true);
    let user = csc["runAsUser"].as_i64().expect("runAsUser");
    let group = csc["runAsGroup"].as_i64().expect("runAsGroup");
    opt(&["--user", &format!("{user}:{group}")]);
    if let Some(fs_group) = psc["fsGroup"].as_i64() {
        opt(&["--group-add", &fs_group.to_string()]);
    }
    assert_eq!(csc["readOnlyRootFilesystem"], true);
    // Kubernetes gives a read-only root file system no writable /tmp or /run.
    opt(&["--read-only", "--read-only-tmpfs=false"]);
    assert_eq!(csc["allowPrivilegeEscalation"], false);
    opt(&["--security-opt", "no-new-privileges"]);
    assert_eq!(csc["privileged"], false);
    assert_eq!(csc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert!(csc["capabilities"]["add"].is_null(), "no capability added");
    opt(&["--cap-drop", "ALL"]);
    // RuntimeDefault: podman applies its default seccomp profile unless told otherwise.
    assert_eq!(csc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(psc["seccompProfile"]["type"], "RuntimeDefault");
    if let Some(memory) = c["resources"]["limits"]["memory"].as_str() {
        let mib = memory
            .strip_suffix("Mi")
            .unwrap_or_else(|| panic!("memory limit {memory}: only Mi is translated"));
        opt(&["--memory", &format!("{mib}m")]);
    }

    // Environment: kubelet's service variables, then the container's env in order.
    opt(&[
        "--env",
        &format!("KUBERNETES_SERVICE_HOST={}", ctx.api_host),
    ]);
    opt(&[
        "--env",
        &format!("KUBERNETES_SERVICE_PORT={}", ctx.api_port),
    ]);
    for e in c["env"].as_array().expect("env") {
        let name = s(&e["name"]);
        let value = if let Some(v) = e["value"].as_str() {
            v.to_string()
        } else if let Some(path) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            match path {
                "metadata.name" => ctx.pod_name.to_string(),
                "metadata.namespace" => ctx.namespace.to_string(),
                other => panic!("env {name}: fieldRef {other} is not translated"),
            }
        } else if let Some(r) = e["valueFrom"]["secretKeyRef"].as_object() {
            let (secret, key) = (s(&r["name"]), s(&r["key"]));
            ctx.secrets
                .get(secret)
                .and_then(|keys| keys.get(key))
                .unwrap_or_else(|| panic!("env {name}: Secret {secret} key {key} not provided"))
                .clone()
        } else {
            panic!("env {name}: {e} is not translated")
        };
        opt(&["--env", &format!("{name}={value}")]);
    }

    // Volumes: Secrets (with items), and the token volume kubelet adds.
    let volumes: BTreeMap<&str, &Value> = pod["volumes"]
        .as_array()
        .map(|v| v.iter().map(|v| (s(&v["name"]), v)).collect())
        .unwrap_or_default();
    for m in c["volumeMounts"].as_array().into_iter().flatten() {
        let name = s(&m["name"]);
        assert_eq!(m["readOnly"], true, "volume {name} is mounted read-only");
        let secret = &volumes
            .get(name)
            .unwrap_or_else(|| panic!("volume {name} not in the pod"))["secret"];
        let secret_name = s(&secret["secretName"]);
        let keys = ctx
            .secrets
            .get(secret_name)
            .unwrap_or_else(|| panic!("Secret {secret_name} not provided"));
        let files: Vec<(String, String)> = secret["items"]
            .as_array()
            .unwrap_or_else(|| panic!("volume {name}: only Secret items are translated"))
            .iter()
            .map(|i| {
                let key = s(&i["key"]);
                let value = keys
                    .get(key)
                    .unwrap_or_else(|| panic!("Secret {secret_name} has no key {key}"));
                (s(&i["path"]).to_string(), value.clone())
            })
            .collect();
        let dir = volume_dir(root, name, &files);
        opt(&[
            "--volume",
            &format!("{}:{}:ro", dir.display(), s(&m["mountPath"])),
        ]);
    }
    assert_eq!(pod["automountServiceAccountToken"], true);
    let sa_files: Vec<(String, String)> = ctx
        .service_account
        .iter()
        .map(|(f, v)| (f.to_string(), v.clone()))
        .collect();
    let dir = volume_dir(root, "kube-api-access", &sa_files);
    opt(&["--volume", &format!("{}:{SA_DIR}:ro", dir.display())]);

    // The admin port the probes use (by name).
    let port_name = s(&c["readinessProbe"]["httpGet"]["port"]);
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], port_name);
    let admin_port = c["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["name"] == port_name)
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no container port named {port_name}"));

    PodRun {
        options,
        args: c["args"]
            .as_array()
            .expect("args")
            .iter()
            .map(|a| s(a).to_string())
            .collect(),
        admin_port: u16::try_from(admin_port).expect("a port"),
        liveness_path: s(&c["livenessProbe"]["httpGet"]["path"]).to_string(),
        readiness_path: s(&c["readinessProbe"]["httpGet"]["path"]).to_string(),
        grace: Duration::from_secs(
            pod["terminationGracePeriodSeconds"]
                .as_u64()
                .expect("terminationGracePeriodSeconds"),
        ),
        service_account_name: s(&pod["serviceAccountName"]).to_string(),
    }
}

/// The podman view of the chart's `helm test` pod: options (its security context, memory limit,
/// host network) and its container's args, with the Service URL (the last argument) replaced by
/// `url` (what cluster DNS and kube-proxy would reach).
pub fn from_test_pod(pod: &Value, url: &str) -> (Vec<String>, Vec<String>) {
    assert_eq!(pod["metadata"]["annotations"]["helm.sh/hook"], "test");
    let spec = &pod["spec"];
    assert_eq!(spec["restartPolicy"], "Never");
    assert_eq!(spec["automountServiceAccountToken"], false);
    assert!(spec["volumes"].is_null(), "the test pod mounts nothing");
    let containers = spec["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1, "the test pod has one container");
    let c = &containers[0];
    let (psc, csc) = (&spec["securityContext"], &c["securityContext"]);
    assert_eq!(psc["runAsNonRoot"], true);
    assert_eq!(csc["runAsNonRoot"], true);
    assert_eq!(csc["readOnlyRootFilesystem"], true);
    assert_eq!(csc["allowPrivilegeEscalation"], false);
    assert_eq!(csc["privileged"], false);
    assert_eq!(csc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(csc["seccompProfile"]["type"], "RuntimeDefault");
    let user = csc["runAsUser"].as_i64().expect("runAsUser");
    let group = csc["runAsGroup"].as_i64().expect("runAsGroup");
    let memory = s(&c["resources"]["limits"]["memory"]);
    let mib = memory
        .strip_suffix("Mi")
        .unwrap_or_else(|| panic!("memory limit {memory}: only Mi is translated"));
    let options = [
        "--network",
        "host",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
        "--user",
        &format!("{user}:{group}"),
        "--read-only",
        "--read-only-tmpfs=false",
        "--security-opt",
        "no-new-privileges",
        "--cap-drop",
        "ALL",
        "--memory",
        &format!("{mib}m"),
    ]
    .map(String::from)
    .to_vec();
    let mut args: Vec<String> = c["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| s(a).to_string())
        .collect();
    let last = args.last_mut().expect("the URL argument");
    assert!(last.starts_with("http://"), "{last}");
    *last = url.to_string();
    (options, args)
}
