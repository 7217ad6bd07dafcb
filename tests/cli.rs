//! The `registrar` binary's command line: `registrar crd` prints exactly the checked-in CRD, and
//! bad configuration fails at start with one line naming the flag.

use std::process::Command;

fn registrar(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_registrar"))
        .args(args)
        .env_remove("KUBECONFIG")
        .output()
        .expect("the registrar binary runs")
}

#[test]
fn crd_subcommand_prints_the_checked_in_crd() {
    let out = registrar(&["crd"]);
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    let file = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crds/serviceregistrations.registrar.dev.yaml"
    ))
    .unwrap();
    assert_eq!(
        printed, file,
        "crds/ drifted from the Rust types: run `registrar crd > crds/...`"
    );
    let chart = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/charts/registrar/crds/serviceregistrations.registrar.dev.yaml"
    ))
    .unwrap();
    assert_eq!(chart, file, "the chart's CRD copy drifted from crds/");
}

#[test]
fn bad_configuration_fails_at_start_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.pem");
    let missing = missing.to_str().unwrap();
    for (args, flag) in [
        (vec!["run", "--lease-ttl", "0"], "--lease-ttl"),
        (vec!["run", "--prefix", "/registrar"], "--prefix"),
        (vec!["run", "--log-format", "yaml"], "--log-format"),
        (vec!["run", "--etcd-username", "u"], "--etcd-username"),
        (
            vec![
                "run",
                "--etcd-endpoints",
                "https://127.0.0.1:1",
                "--etcd-ca-file",
                missing,
            ],
            "--etcd-ca-file",
        ),
        (vec!["run", "--etcd-ca-file", missing], "--etcd-endpoints"),
    ] {
        let out = registrar(&args);
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(flag),
            "{args:?}: stderr does not name {flag}: {err}"
        );
    }
}

#[test]
fn the_password_is_not_echoed_on_a_configuration_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_registrar"))
        .args(["run", "--etcd-password", "s3cr3t-value", "--lease-ttl", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!all.contains("s3cr3t-value"), "{all}");
}

/// Environment variables go through the same checks as the flags, and the error names the flag.
#[test]
fn bad_environment_fails_at_start_naming_the_flag() {
    for (var, value, flag) in [
        ("REGISTRAR_LEASE_TTL", "1", "--lease-ttl"),
        ("REGISTRAR_PREFIX", "registrar/", "--prefix"),
        ("REGISTRAR_LOG_FORMAT", "xml", "--log-format"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_registrar"))
            .arg("run")
            .env_remove("KUBECONFIG")
            .env(var, value)
            .output()
            .expect("the registrar binary runs");
        assert!(!out.status.success(), "{var}={value} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(flag),
            "{var}={value}: stderr does not name {flag}: {err}"
        );
    }
}
