//! `registrar inspect`: why is (or isn't) a pod getting traffic. A thin adapter: it reads the
//! registration, the pods of its namespace and what etcd holds under the target (values,
//! leases and their remaining TTL, mod revisions, the prefix claim), hands them to the pure
//! [`verdict`] and prints the rows ([`render`]: a table, or JSON).
//!
//! `--target <prefix>/<namespace>/<service>` reads etcd alone, for clients outside the cluster.

pub mod render;
pub mod verdict;

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::Context;
use etcd_client::GetOptions;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams};
use serde::Serialize;

use crate::config::{ConnectArgs, InspectArgs, OutputFormat};
use crate::connect::timed;
use crate::crd::ServiceRegistration;
use crate::topology::NodeTopology;
use verdict::{Claim, EtcdEntry, Row};

/// The whole report (`-o json` prints it as is; the README documents the shape).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// `<namespace>/<name>`, absent with `--target`.
    pub registration: Option<String>,
    /// `<prefix>/<namespace>/<service>`.
    pub target: String,
    /// The prefix claim.
    pub owner: Owner,
    /// etcd's revision when the keys were read.
    pub revision: i64,
    /// The rows.
    pub rows: Vec<Row>,
}

/// The prefix claim as reported.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Owner {
    /// `<prefix>/.owner`.
    pub key: String,
    /// Its value (the owning cluster's id), if any.
    pub cluster: Option<String>,
    /// This cluster's id, if known.
    pub this_cluster: Option<String>,
    /// `free`, `ours`, `elsewhere` or `unknown` (this cluster's id is not known).
    pub claim: &'static str,
}

/// What etcd holds under a target, and the claim.
struct EtcdState {
    keys: BTreeMap<String, EtcdEntry>,
    owner: Option<String>,
    revision: i64,
}

/// Runs `registrar inspect`; prints the report on stdout.
pub async fn run(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let report = match (&args.registration, &args.target) {
        (Some((namespace, name)), _) => {
            inspect_registration(&args.connect, namespace, name).await?
        }
        (None, Some(target)) => inspect_target(&args.connect, target).await?,
        (None, None) => anyhow::bail!("give <namespace>/<registration> or --target"),
    };
    let text = match args.output {
        OutputFormat::Table => render::table(&report),
        OutputFormat::Json => render::json(&report)?,
    };
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

async fn inspect_registration(
    connect: &ConnectArgs,
    namespace: &str,
    name: &str,
) -> anyhow::Result<Report> {
    let etcd = connect.etcd_connect()?;
    let client = crate::connect::kube_client(connect).await?;
    let regs: Api<ServiceRegistration> = Api::namespaced(client.clone(), namespace);
    let reg = timed("read the registration", regs.get_opt(name))
        .await??
        .with_context(|| format!("ServiceRegistration {namespace}/{name} not found"))?;
    let registrations = timed("list registrations", regs.list(&ListParams::default()))
        .await??
        .items;
    let pods = timed(
        "list pods",
        Api::<Pod>::namespaced(client.clone(), namespace).list(&ListParams::default()),
    )
    .await??
    .items;
    let cluster_id = match crate::connect::cluster_id(&client, connect).await {
        Ok(id) => Some(id),
        Err(e) => {
            tracing::warn!("cannot tell whether the prefix claim is ours: {e:#}");
            None
        }
    };
    let nodes = node_topology(&client, &pods).await;
    let target = verdict::target_of(&connect.prefix, &reg);
    let state = read_etcd(&etcd, &connect.prefix, &target).await?;
    let claim = verdict::claim(state.owner.as_deref(), cluster_id.as_deref());
    let rows = verdict::rows(&verdict::Input {
        prefix: &connect.prefix,
        registration: &reg,
        registrations: &registrations,
        pods: &pods,
        etcd: &state.keys,
        claim: &claim,
        nodes: &nodes,
        cluster: connect.publish_cluster_id.as_deref(),
    });
    Ok(Report {
        registration: Some(format!("{namespace}/{name}")),
        owner: owner(&connect.prefix, &state, cluster_id, &claim),
        target,
        revision: state.revision,
        rows,
    })
}

async fn inspect_target(connect: &ConnectArgs, target: &str) -> anyhow::Result<Report> {
    let etcd = connect.etcd_connect()?;
    // `<prefix>/<namespace>/<service>`: the prefix may itself contain '/'.
    let prefix = target
        .rsplitn(3, '/')
        .nth(2)
        .context("--target: expected <prefix>/<namespace>/<service>")?;
    let state = read_etcd(&etcd, prefix, target).await?;
    let cluster_id = connect.cluster_id.clone();
    let claim = verdict::claim(state.owner.as_deref(), cluster_id.as_deref());
    let rows = verdict::etcd_rows(target, &state.keys, &claim);
    Ok(Report {
        registration: None,
        owner: owner(prefix, &state, cluster_id, &claim),
        target: target.to_string(),
        revision: state.revision,
        rows,
    })
}

/// The zone and region of each node the pods run on, as the operator reads them
/// ([`NodeTopology::of`]); nodes that cannot be read (not allowed, gone) are left out, and
/// their pods' values are then compared without zone and region.
async fn node_topology(client: &kube::Client, pods: &[Pod]) -> BTreeMap<String, NodeTopology> {
    let nodes: Api<Node> = Api::all(client.clone());
    let names: std::collections::BTreeSet<&str> = pods
        .iter()
        .filter_map(|p| p.spec.as_ref()?.node_name.as_deref())
        .collect();
    let mut topology = BTreeMap::new();
    for name in names {
        if let Ok(Ok(Some(node))) = timed("read a node", nodes.get_opt(name)).await {
            topology.insert(name.to_string(), NodeTopology::of(&node));
        }
    }
    topology
}

fn owner(prefix: &str, state: &EtcdState, this_cluster: Option<String>, claim: &Claim) -> Owner {
    Owner {
        key: format!("{prefix}/.owner"),
        cluster: state.owner.clone(),
        this_cluster,
        claim: match claim {
            Claim::Free => "free",
            Claim::Ours => "ours",
            Claim::Elsewhere(_) => "elsewhere",
            Claim::Unknown(_) => "unknown",
        },
    }
}

/// Reads the keys under `<target>/`, the remaining TTL of each distinct lease
/// (`LeaseTimeToLive`) and the claim `<prefix>/.owner`.
async fn read_etcd(
    etcd: &registrar_etcd::EtcdConnect,
    prefix: &str,
    target: &str,
) -> anyhow::Result<EtcdState> {
    let etcd = etcd.clone().member_probe(None);
    let mut client = timed("connect to etcd", etcd.connect())
        .await?
        .context("connecting to etcd")?;
    let got = timed(
        "read the target's keys",
        client.get(format!("{target}/"), Some(GetOptions::new().with_prefix())),
    )
    .await?
    .context("reading the target's keys from etcd")?;
    let revision = got.header().map_or(0, |h| h.revision());
    let mut keys: BTreeMap<String, EtcdEntry> = got
        .kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                EtcdEntry {
                    value: String::from_utf8_lossy(kv.value()).into_owned(),
                    lease: kv.lease(),
                    ttl: None,
                    mod_revision: kv.mod_revision(),
                },
            )
        })
        .collect();
    let mut ttls: BTreeMap<i64, i64> = BTreeMap::new();
    for lease in keys.values().map(|e| e.lease).filter(|l| *l != 0) {
        if ttls.contains_key(&lease) {
            continue;
        }
        let resp = timed("read a lease's TTL", client.lease_time_to_live(lease, None))
            .await?
            .context("reading a lease's remaining TTL (LeaseTimeToLive)")?;
        ttls.insert(lease, resp.ttl());
    }
    for entry in keys.values_mut() {
        entry.ttl = ttls.get(&entry.lease).copied();
    }
    let owner_key = format!("{prefix}/.owner");
    let owner = timed("read the prefix claim", client.get(owner_key, None))
        .await?
        .context("reading the prefix claim from etcd")?;
    let owner = owner
        .kvs()
        .first()
        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned());
    Ok(EtcdState {
        keys,
        owner,
        revision,
    })
}
