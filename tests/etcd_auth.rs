//! The operator against an etcd with client-certificate TLS and authentication enabled, as a
//! user whose role may only read and write the `registrar/` prefix: it publishes (with user +
//! password from a file, or as the user named by its certificate's CN), the resolver reads
//! what it published over TLS with the same user, and wrong credentials or a prefix outside the
//! role become an `EtcdUnavailable` condition with a clear message — the process stays up,
//! `/healthz` answers, and the password never reaches the logs.

mod support;

use std::path::PathBuf;

use etcd_client::{Permission, UserAddOptions};
use registrar_resolver::{EtcdConnect, Resolver};
use registrar_testenv::{ControlPlane, Etcd, EtcdOptions, poll, unique_name};
use serde_json::json;
use support::*;

const PASSWORD: &str = "Pa55-registrar-8c1f2e";
const ROLE: &str = "registrar-rw";

/// A control plane and an etcd with TLS, client-certificate auth and authentication on.
struct Secured {
    cp: ControlPlane,
    etcd: Etcd,
    client: kube::Client,
    /// etcd as `root` (its client certificate's CN).
    root: etcd_client::Client,
    ns: String,
    dir: tempfile::TempDir,
}

impl Secured {
    async fn new() -> Secured {
        let (cp, etcd) = tokio::try_join!(
            ControlPlane::start(),
            Etcd::start_with(EtcdOptions { tls: true })
        )
        .unwrap();
        let mut root = etcd.client().await.unwrap();
        root.user_add("root", "root-Pa55-41d7", None).await.unwrap();
        // The root role exists implicitly in some etcd versions; granting is what matters.
        let _ = root.role_add("root").await;
        root.user_grant_role("root", "root").await.unwrap();
        root.role_add(ROLE).await.unwrap();
        root.role_grant_permission(ROLE, Permission::read_write("registrar/").with_prefix())
            .await
            .unwrap();
        root.user_add("registrar", PASSWORD, None).await.unwrap();
        root.user_grant_role("registrar", ROLE).await.unwrap();
        // A user without a password, for client-certificate (CN) authentication.
        root.user_add(
            "registrar-cn",
            "",
            Some(UserAddOptions::new().with_no_pwd()),
        )
        .await
        .unwrap();
        root.user_grant_role("registrar-cn", ROLE).await.unwrap();
        root.auth_enable().await.unwrap();

        let client = cp.client().await.unwrap();
        let ns = unique_name("ns");
        namespace(&client, &ns).await.unwrap();
        Secured {
            cp,
            etcd,
            client,
            root,
            ns,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn ca(&self) -> PathBuf {
        self.etcd.tls().unwrap().ca.clone()
    }

    /// TLS flags with a client certificate whose CN is `cn`.
    fn tls_args(&self, cn: &str) -> Vec<String> {
        let cert = self.etcd.pki().unwrap().client(cn, &[]).unwrap();
        vec![
            "--etcd-ca-file".into(),
            self.ca().display().to_string(),
            "--etcd-cert-file".into(),
            cert.cert.display().to_string(),
            "--etcd-key-file".into(),
            cert.key.display().to_string(),
        ]
    }

    /// User + password flags, the password in a file (with a trailing newline, as editors and
    /// Kubernetes Secrets made with `echo` leave it).
    fn password_args(&self, user: &str, password: &str) -> Vec<String> {
        let file = self.dir.path().join(format!("{user}-password"));
        std::fs::write(&file, format!("{password}\n")).unwrap();
        vec![
            "--etcd-username".into(),
            user.into(),
            "--etcd-password-file".into(),
            file.display().to_string(),
        ]
    }

    /// Starts the operator with every library logging at debug level (the password must not
    /// show up there either).
    async fn operator(&self, prefix: &str, args: Vec<String>) -> Operator {
        let mut opts = OperatorOptions::new(prefix);
        opts.extra = args;
        opts.env = vec![("RUST_LOG".into(), "debug".into())];
        Operator::start(&self.cp, &self.etcd, &opts).await.unwrap()
    }

    /// A registration with one Ready pod at `ip`.
    async fn greeter(&self, ip: &str) {
        create_reg(
            &self.client,
            &self.ns,
            "greeter",
            json!({"selector": {"matchLabels": {"app": "g"}}, "port": 50051}),
        )
        .await
        .unwrap();
        ready_pod(&self.client, &self.ns, "p1", json!({"app": "g"}), ip)
            .await
            .unwrap();
    }

    fn key(&self, ip: &str) -> String {
        format!("registrar/{}/greeter/{ip}:50051", self.ns)
    }

    async fn condition_message(&self, reason: &str) -> String {
        let reg = wait_reason(&self.client, &self.ns, "greeter", reason)
            .await
            .unwrap();
        ready_condition(&reg).message
    }

    async fn wait_event(&self, reason: &str) {
        wait_event(&self.client, &self.ns, reason, "greeter")
            .await
            .unwrap();
    }
}

/// The operator is alive, `/healthz` answers 200, and it retried at least twice.
async fn up_and_retrying(op: &mut Operator, retry_line: &str) {
    poll("two failed attempts in the log", DEADLINE, || async {
        (op.log_text().matches(retry_line).count() >= 2).then_some(())
    })
    .await
    .unwrap();
    op.process.check_alive().unwrap();
    assert_eq!(http_get(&op.admin, "/healthz").await.unwrap().0, 200);
}

#[tokio::test]
async fn tls_with_user_and_password_publishes_and_the_resolver_reads_it() {
    let s = Secured::new().await;
    let mut args = s.tls_args("registrar-tls");
    args.extend(s.password_args("registrar", PASSWORD));
    let op = s.operator("registrar", args).await;
    s.greeter("127.0.0.161").await;
    let key = s.key("127.0.0.161");
    let keys = wait_keys(&s.root, "registrar", &[&key]).await.unwrap();
    assert!(keys[&key].contains(r#""Addr":"127.0.0.161:50051""#));
    s.condition_message("Published").await;

    // The resolver, over TLS as the same limited user, sees the endpoint.
    let cert = s.etcd.pki().unwrap().client("resolver", &[]).unwrap();
    let etcd = EtcdConnect::new([s.etcd.endpoint()])
        .ca_file(s.ca())
        .unwrap()
        .identity_files(&cert.cert, &cert.key)
        .unwrap()
        .user("registrar", PASSWORD)
        .connect()
        .await
        .unwrap();
    let resolver = Resolver::new(etcd.clone(), format!("registrar/{}/greeter", s.ns))
        .await
        .unwrap();
    poll("the resolver sees the endpoint", DEADLINE, || async {
        resolver
            .snapshot()
            .addrs()
            .contains("127.0.0.161:50051")
            .then_some(())
    })
    .await
    .unwrap();

    // The user really is limited to the prefix.
    let mut limited = etcd.clone();
    let denied = limited.put("elsewhere/x", "1", None).await.unwrap_err();
    assert!(denied.to_string().contains("permission denied"), "{denied}");

    let log = op.log_text();
    assert!(log.contains("connected to etcd"), "{log}");
    assert!(!log.contains(PASSWORD), "the password is in the log");
}

#[tokio::test]
async fn a_wrong_password_is_a_condition_not_a_crash_loop() {
    let s = Secured::new().await;
    let wrong = "wrong-Pa55-a1b2c3";
    let mut args = s.tls_args("registrar-tls");
    args.extend(s.password_args("registrar", wrong));
    let mut op = s.operator("registrar", args).await;
    s.greeter("127.0.0.162").await;

    let message = s.condition_message("EtcdUnavailable").await;
    println!("EtcdUnavailable condition: {message}");
    assert!(message.contains("authentication failed"), "{message}");
    s.wait_event("EtcdUnavailable").await;
    up_and_retrying(&mut op, "cannot connect to etcd").await;
    let mut root = s.root.clone();
    assert!(etcd_keys(&mut root, "registrar").await.unwrap().is_empty());
    let log = op.log_text();
    assert!(log.contains("authentication failed"), "{log}");
    assert!(!log.contains(wrong), "the password is in the log");
    assert!(!message.contains(wrong));
}

#[tokio::test]
async fn the_client_certificates_cn_is_the_user() {
    let s = Secured::new().await;
    // No user name: etcd takes the user from the certificate.
    let op = s.operator("registrar", s.tls_args("registrar-cn")).await;
    s.greeter("127.0.0.163").await;
    let key = s.key("127.0.0.163");
    wait_keys(&s.root, "registrar", &[&key]).await.unwrap();
    s.condition_message("Published").await;
    drop(op);

    // A certificate of the right CA but of no etcd user publishes nothing, and says why.
    let mut intruder = s.operator("registrar", s.tls_args("intruder")).await;
    let mut root = s.root.clone();
    root.delete(key.as_str(), None).await.unwrap();
    ready_pod(&s.client, &s.ns, "p2", json!({"app": "g"}), "127.0.0.164")
        .await
        .unwrap();
    let message = s.condition_message("EtcdUnavailable").await;
    println!("EtcdUnavailable condition: {message}");
    assert!(
        message.contains("permission denied") || message.contains("user name not found"),
        "{message}"
    );
    up_and_retrying(&mut intruder, "etcd unavailable, retrying").await;
    assert!(etcd_keys(&mut root, "registrar").await.unwrap().is_empty());
}

#[tokio::test]
async fn a_prefix_outside_the_users_role_is_a_condition() {
    let s = Secured::new().await;
    let mut args = s.tls_args("registrar-tls");
    args.extend(s.password_args("registrar", PASSWORD));
    let mut op = s.operator("elsewhere", args).await;
    s.greeter("127.0.0.165").await;
    let message = s.condition_message("EtcdUnavailable").await;
    println!("EtcdUnavailable condition: {message}");
    assert!(message.contains("permission denied"), "{message}");
    up_and_retrying(&mut op, "etcd unavailable, retrying").await;
    let mut root = s.root.clone();
    assert!(etcd_keys(&mut root, "elsewhere").await.unwrap().is_empty());
    assert!(!op.log_text().contains(PASSWORD));
}
