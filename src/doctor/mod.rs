//! `registrar doctor`: checks that the operator, configured by the same flags and environment
//! as `registrar run`, can do its job, and prints one line per check with the fix for each
//! failure ([`check`]). The exit code is non-zero when any check fails.
//!
//! Checks, in order: the API server answers; the ServiceRegistration CRD is installed and the
//! same as this binary's ([`crd_match`]); every permission the operator needs ([`permissions`],
//! the list a test compares with the chart) is granted, asked with SelfSubjectAccessReviews, so
//! they are the permissions of whoever runs `doctor` (run it with the operator's credentials);
//! etcd answers; authentication works; the user may read and write the prefix (a transaction
//! whose write branch is never taken: etcd checks the permissions of both branches); the prefix
//! claim is ours or free; the etcd lease TTL outlives a leader change.

pub mod check;
pub mod crd_match;
pub mod permissions;

use std::process::ExitCode;

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, PostParams};

use crate::config::{DoctorArgs, RunArgs, lease_ttl_covers_failover};
use crate::connect::timed;
use crate::crd::ServiceRegistration;
use check::Check;

const CRD_NAME: &str = "serviceregistrations.registrar.dev";
const APPLY_CRD: &str = "apply this binary's CRD: `registrar crd | kubectl apply -f -` (or upgrade the chart, which ships it)";

/// Runs every check, printing one line each; `FAILURE` when any failed.
pub async fn run(args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let mut report = Report::default();
    let cluster_id = kube_checks(&args.run, &mut report).await;
    etcd_checks(&args.run, cluster_id, &mut report).await;
    report.push(lease_ttl_check(&args.run));
    let failed = report.checks.iter().filter(|c| c.failed()).count();
    println!("{} checks, {failed} failed", report.checks.len());
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The checks so far; each is printed when it is added.
#[derive(Default)]
struct Report {
    checks: Vec<Check>,
}

impl Report {
    fn push(&mut self, check: Check) {
        println!("{check}");
        self.checks.push(check);
    }
}

/// The API server, the CRD and RBAC; returns this cluster's id when it can be known.
async fn kube_checks(args: &RunArgs, report: &mut Report) -> Option<String> {
    const REACHABLE: &str = "API server reachable";
    let skip_rest = |report: &mut Report| {
        report.push(Check::skip(
            format!("CRD {CRD_NAME}"),
            "the API server is not reachable",
        ));
        report.push(Check::skip("RBAC", "the API server is not reachable"));
    };
    let client = match crate::connect::kube_client(args).await {
        Ok(client) => client,
        Err(e) => {
            report.push(Check::fail(
                REACHABLE,
                format!("{e:#}"),
                "set --kubeconfig (or REGISTRAR_KUBECONFIG / KUBECONFIG), or run in the cluster",
            ));
            skip_rest(report);
            return args.cluster_id.clone();
        }
    };
    match timed("ask the API server's version", client.apiserver_version()).await {
        Ok(Ok(v)) => report.push(Check::ok(REACHABLE, v.git_version)),
        Ok(Err(e)) => {
            report.push(Check::fail(
                REACHABLE,
                e.to_string(),
                "check the server address and credentials of the kubeconfig, and the network",
            ));
            skip_rest(report);
            return args.cluster_id.clone();
        }
        Err(e) => {
            report.push(Check::fail(
                REACHABLE,
                format!("{e:#}"),
                "check the server address of the kubeconfig and the network",
            ));
            skip_rest(report);
            return args.cluster_id.clone();
        }
    }
    report.push(crd_check(&client).await);
    for needed in permissions::needed(args) {
        report.push(access_check(&client, &needed).await);
    }
    match crate::connect::cluster_id(&client, args).await {
        Ok(id) => Some(id),
        Err(e) => {
            tracing::warn!("{e:#}");
            None
        }
    }
}

async fn crd_check(client: &kube::Client) -> Check {
    let name = format!("CRD {CRD_NAME}");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    match timed("read the CRD", crds.get_opt(CRD_NAME)).await {
        Ok(Ok(Some(installed))) => match crd_match::crd_matches(&installed, &crate::crd::crd()) {
            Ok(versions) => Check::ok(
                name,
                format!("installed, {versions} as this binary expects"),
            ),
            Err(diff) => Check::fail(
                name,
                format!("the installed CRD is not this binary's: {diff}"),
                APPLY_CRD,
            ),
        },
        Ok(Ok(None)) => Check::fail(name, "not installed", APPLY_CRD),
        // Not allowed to read CRDs: at least see whether the resource is served.
        Ok(Err(kube::Error::Api(e))) if e.code == 403 => {
            let regs: Api<ServiceRegistration> = Api::all(client.clone());
            match timed(
                "list registrations",
                regs.list(&ListParams::default().limit(1)),
            )
            .await
            {
                Ok(Ok(_)) => Check::ok(
                    name,
                    "served (schema not compared: not allowed to read CRDs)",
                ),
                Ok(Err(kube::Error::Api(e))) if e.code == 404 => {
                    Check::fail(name, "not installed", APPLY_CRD)
                }
                Ok(Err(e)) => Check::fail(
                    name,
                    e.to_string(),
                    "check the API server and the permissions to list serviceregistrations",
                ),
                Err(e) => Check::fail(name, format!("{e:#}"), "check the API server"),
            }
        }
        Ok(Err(e)) => Check::fail(name, e.to_string(), "check the API server"),
        Err(e) => Check::fail(name, format!("{e:#}"), "check the API server"),
    }
}

async fn access_check(client: &kube::Client, needed: &permissions::Needed) -> Check {
    let name = format!("RBAC {}", needed.describe());
    let p = &needed.permission;
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                group: Some(p.group.to_string()),
                resource: Some(p.resource.to_string()),
                subresource: (!p.subresource.is_empty()).then(|| p.subresource.to_string()),
                verb: Some(p.verb.to_string()),
                namespace: needed.namespace.clone(),
                name: needed.name.clone(),
                ..ResourceAttributes::default()
            }),
            ..SelfSubjectAccessReviewSpec::default()
        },
        ..SelfSubjectAccessReview::default()
    };
    let reviews: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    match timed(
        "review access",
        reviews.create(&PostParams::default(), &review),
    )
    .await
    {
        Ok(Ok(r)) => match r.status {
            Some(s) if s.allowed => Check::ok(name, "allowed"),
            s => {
                let reason = s
                    .and_then(|s| s.reason.filter(|r| !r.is_empty()))
                    .unwrap_or_else(|| "no rule allows it".into());
                let role = match p.scope {
                    permissions::Scope::Cluster => "ClusterRole",
                    permissions::Scope::LeaderElection => "Role in the leader-election namespace",
                };
                Check::fail(
                    name,
                    format!("denied ({reason})"),
                    format!(
                        "grant it to the operator's ServiceAccount in a {role} (the chart's has it: `helm upgrade` with rbac.create=true)"
                    ),
                )
            }
        },
        Ok(Err(e)) => Check::fail(name, e.to_string(), "check the kubeconfig's credentials"),
        Err(e) => Check::fail(name, format!("{e:#}"), "check the API server"),
    }
}

/// Whether an etcd error is etcd refusing our credentials.
fn is_auth_error(e: &etcd_client::Error) -> bool {
    const UNAUTHENTICATED: i32 = 16;
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            let m = s.message();
            i32::from(s.code()) == UNAUTHENTICATED
                || m.contains("authentication failed")
                || m.contains("invalid auth token")
                || m.contains("user name is empty")
                || m.contains("user name not found")
        }
        _ => false,
    }
}

/// Whether an etcd error means etcd did not answer (rather than answered no): the writer's
/// own classification.
fn is_unreachable(e: etcd_client::Error) -> bool {
    crate::etcd::is_unreachable(&crate::etcd::EtcdError::Etcd {
        what: "status",
        source: e,
    })
}

async fn etcd_checks(args: &RunArgs, cluster_id: Option<String>, report: &mut Report) {
    const REACHABLE: &str = "etcd reachable";
    const AUTH: &str = "etcd authentication";
    let access = format!("etcd permissions on {}/", args.prefix);
    let claim_name = format!("prefix claim {}/.owner", args.prefix);
    let skip_rest = |report: &mut Report, why: &str, from_auth: bool| {
        if from_auth {
            report.push(Check::skip(AUTH, why));
        }
        report.push(Check::skip(access.clone(), why));
        report.push(Check::skip(claim_name.clone(), why));
    };
    let connect = match args.etcd_connect() {
        Ok(c) => c.member_probe(None),
        Err(e) => {
            report.push(Check::fail(REACHABLE, e.to_string(), "fix the flag named"));
            skip_rest(report, "the etcd configuration is invalid", true);
            return;
        }
    };
    let endpoints = connect.endpoints().join(",");
    let user = connect.user_name().map(str::to_string);
    let mut client = match timed("connect to etcd", connect.connect()).await {
        Ok(Ok(client)) => client,
        Ok(Err(registrar_etcd::ConnectError::Etcd(e))) if is_auth_error(&e) => {
            report.push(Check::ok(REACHABLE, format!("{endpoints} answered")));
            report.push(Check::fail(
                AUTH,
                format!("etcd refused user {:?}: {e}", user.unwrap_or_default()),
                "check --etcd-username and the password (--etcd-password-file / REGISTRAR_ETCD_PASSWORD) against the etcd user",
            ));
            skip_rest(report, "not authenticated", false);
            return;
        }
        Ok(Err(e)) => {
            report.push(Check::fail(REACHABLE, format!("{endpoints}: {e}"), "check --etcd-endpoints, TLS (--etcd-ca-file, --etcd-cert-file, --etcd-key-file, https://) and the network"));
            skip_rest(report, "etcd is not reachable", true);
            return;
        }
        Err(e) => {
            report.push(Check::fail(
                REACHABLE,
                format!("{endpoints}: {e:#}"),
                "check --etcd-endpoints and the network",
            ));
            skip_rest(report, "etcd is not reachable", true);
            return;
        }
    };
    match timed("ask etcd's status", client.status()).await {
        Ok(Ok(s)) => report.push(Check::ok(
            REACHABLE,
            format!("{endpoints}, etcd {}", s.version()),
        )),
        Ok(Err(e)) => {
            let text = e.to_string();
            if !is_unreachable(e) {
                report.push(Check::ok(
                    REACHABLE,
                    format!("{endpoints} answered ({text})"),
                ));
            } else {
                report.push(Check::fail(
                    REACHABLE,
                    format!("{endpoints}: {text}"),
                    "check --etcd-endpoints, TLS and the network",
                ));
                skip_rest(report, "etcd is not reachable", true);
                return;
            }
        }
        Err(e) => {
            report.push(Check::fail(
                REACHABLE,
                format!("{endpoints}: {e:#}"),
                "check --etcd-endpoints and the network",
            ));
            skip_rest(report, "etcd is not reachable", true);
            return;
        }
    }
    report.push(match &user {
        Some(u) => Check::ok(AUTH, format!("authenticated as {u:?}")),
        None => Check::ok(AUTH, "no user configured"),
    });

    // Read and write permission on the prefix, without writing: etcd checks the permissions
    // of both branches of a transaction, and this one's compare is never true.
    let owner_key = format!("{}/.owner", args.prefix);
    let read = client.get(
        format!("{}/", args.prefix),
        Some(GetOptions::new().with_prefix().with_count_only()),
    );
    let probe_key = format!("{}/.doctor", args.prefix);
    let write = Txn::new()
        .when([Compare::create_revision(
            owner_key.as_str(),
            CompareOp::Less,
            0,
        )])
        .and_then([TxnOp::put(probe_key.as_str(), "", None)]);
    let fix = format!(
        "grant the etcd user a role with readwrite on the prefix: `etcdctl role grant-permission <role> readwrite {}/ --prefix`",
        args.prefix
    );
    let read = timed("read the prefix", read).await;
    let write = match &read {
        Ok(Ok(_)) => Some(timed("check write access", client.txn(write)).await),
        _ => None,
    };
    match (read, write) {
        (Ok(Ok(_)), Some(Ok(Ok(_)))) => report.push(Check::ok(access, "read and write")),
        (Ok(Ok(_)), Some(Ok(Err(e)))) => report.push(Check::fail(
            access,
            format!("write refused: {e}"),
            fix.clone(),
        )),
        (Ok(Err(e)), _) => report.push(Check::fail(
            access,
            format!("read refused: {e}"),
            fix.clone(),
        )),
        (Err(e), _) | (_, Some(Err(e))) => {
            report.push(Check::fail(access, format!("{e:#}"), "check etcd"))
        }
        (Ok(Ok(_)), None) => {}
    }

    let owner = match timed(
        "read the prefix claim",
        client.get(owner_key.as_str(), None),
    )
    .await
    {
        Ok(Ok(r)) => r
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
        Ok(Err(e)) => {
            report.push(Check::fail(claim_name, e.to_string(), fix));
            return;
        }
        Err(e) => {
            report.push(Check::fail(claim_name, format!("{e:#}"), "check etcd"));
            return;
        }
    };
    report.push(claim_check(
        claim_name,
        &owner_key,
        owner.as_deref(),
        cluster_id.as_deref(),
    ));
}

/// The prefix claim: ours or free passes; another cluster's fails.
fn claim_check(
    name: String,
    owner_key: &str,
    owner: Option<&str>,
    cluster_id: Option<&str>,
) -> Check {
    use crate::inspect::verdict::{Claim, claim};
    match claim(owner, cluster_id) {
        Claim::Free => Check::ok(name, "free: the operator will claim it"),
        Claim::Ours => Check::ok(
            name,
            format!("ours (cluster {:?})", cluster_id.unwrap_or_default()),
        ),
        Claim::Elsewhere(other) => Check::fail(
            name,
            format!(
                "claimed by cluster {other:?}, this cluster is {:?}: the operator will write nothing",
                cluster_id.unwrap_or_default()
            ),
            format!(
                "give each cluster its own --prefix, or, if cluster {other:?} no longer uses it, `etcdctl del {owner_key}`"
            ),
        ),
        Claim::Unknown(other) => Check::skip(
            name,
            format!("claimed by {other:?}; this cluster's id is unknown (set --cluster-id)"),
        ),
    }
}

/// `--lease-ttl` against `--leader-election-lease-duration` (the rule the chart enforces).
fn lease_ttl_check(args: &RunArgs) -> Check {
    const NAME: &str = "lease TTL vs leader election";
    let ttl = args.lease_ttl;
    let duration = args.leader_election_lease_duration;
    if !args.leader_elect {
        return Check::ok(NAME, format!("leader election off; --lease-ttl {ttl}s"));
    }
    if lease_ttl_covers_failover(ttl, duration) {
        Check::ok(
            NAME,
            format!(
                "--lease-ttl {ttl}s >= 1.5 x (--leader-election-lease-duration {duration}s + 2s)"
            ),
        )
    } else {
        let min = (3 * (duration + 2)).div_ceil(2);
        Check::fail(
            NAME,
            format!(
                "--lease-ttl {ttl}s < 1.5 x (--leader-election-lease-duration {duration}s + 2s): after a leader dies, endpoints may vanish from etcd until the new leader puts them again"
            ),
            format!("use --lease-ttl >= {min} (or a shorter --leader-election-lease-duration)"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn run_args(extra: &[&str]) -> RunArgs {
        let mut all = vec!["registrar", "doctor"];
        all.extend_from_slice(extra);
        match crate::config::Cli::try_parse_from(all).unwrap().command {
            crate::config::Command::Doctor(d) => d.run,
            _ => panic!("not doctor"),
        }
    }

    #[test]
    fn the_lease_ttl_rule_is_the_charts() {
        let ok = lease_ttl_check(&run_args(&["--leader-elect", "true"]));
        assert!(!ok.failed(), "{ok}");
        let bad = lease_ttl_check(&run_args(&["--leader-elect", "true", "--lease-ttl", "25"]));
        assert!(bad.failed());
        assert!(bad.to_string().contains("--lease-ttl >= 26"), "{bad}");
        assert!(!lease_ttl_check(&run_args(&["--lease-ttl", "2"])).failed());
        // The boundary: 1.5 x (15 + 2) = 25.5, so 26 is the least TTL that passes.
        assert!(lease_ttl_covers_failover(26, 15) && !lease_ttl_covers_failover(25, 15));
    }

    #[test]
    fn the_claim_check_fails_only_for_another_cluster() {
        let k = "registrar/.owner";
        assert!(!claim_check("c".into(), k, None, Some("a")).failed());
        assert!(!claim_check("c".into(), k, Some("a"), Some("a")).failed());
        let other = claim_check("c".into(), k, Some("b"), Some("a"));
        assert!(other.failed());
        assert!(other.to_string().contains("etcdctl del registrar/.owner"));
        assert!(!claim_check("c".into(), k, Some("b"), None).failed());
    }

    #[test]
    fn permissions_follow_the_configuration() {
        let all = permissions::needed(&run_args(&["--leader-elect", "true"]));
        assert_eq!(all.len(), permissions::REQUIRED.len());
        let fewer = permissions::needed(&run_args(&["--cluster-id", "x"]));
        assert_eq!(fewer.len(), permissions::REQUIRED.len() - 4);
        let lease = all
            .iter()
            .find(|n| n.permission.verb == "patch" && n.permission.resource == "leases")
            .unwrap();
        assert_eq!(lease.name.as_deref(), Some("registrar"));
        assert_eq!(
            lease.describe(),
            format!(
                "patch coordination.k8s.io/leases \"registrar\" in {}",
                lease.namespace.as_deref().unwrap()
            )
        );
    }
}
