//! Every Kubernetes permission the operator needs: the one list `registrar doctor` checks with
//! SelfSubjectAccessReviews, and which a test compares with the chart's ClusterRole and Role
//! (`tests/doctor.rs`), so the two cannot drift.

use crate::config::RunArgs;

/// Where a permission applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// All namespaces (or a cluster-scoped resource): the ClusterRole.
    Cluster,
    /// The leader-election namespace: the Role.
    LeaderElection,
}

/// Which object a permission is limited to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Name {
    /// Any object.
    Any,
    /// One named object.
    Fixed(&'static str),
    /// The leader-election Lease (`--leader-election-lease-name`).
    LeaderElectionLease,
}

/// When a permission is needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum When {
    /// Always.
    Always,
    /// Without `--cluster-id` (the kube-system namespace's UID is the default id).
    NoClusterId,
    /// With `--leader-elect`.
    LeaderElect,
}

/// One permission.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Permission {
    /// API group (`""` for core).
    pub group: &'static str,
    /// Resource (plural).
    pub resource: &'static str,
    /// Subresource, or `""`.
    pub subresource: &'static str,
    /// Verb.
    pub verb: &'static str,
    /// Which object.
    pub name: Name,
    /// Where.
    pub scope: Scope,
    /// When it is needed.
    pub when: When,
}

const fn cluster(
    group: &'static str,
    resource: &'static str,
    subresource: &'static str,
    verb: &'static str,
) -> Permission {
    Permission {
        group,
        resource,
        subresource,
        verb,
        name: Name::Any,
        scope: Scope::Cluster,
        when: When::Always,
    }
}

/// What the operator does with the API server, and therefore needs.
pub const REQUIRED: &[Permission] = &[
    cluster("", "pods", "", "get"),
    cluster("", "pods", "", "list"),
    cluster("", "pods", "", "watch"),
    // Nodes: their zone and region labels join the endpoints' metadata.
    cluster("", "nodes", "", "get"),
    cluster("", "nodes", "", "list"),
    cluster("", "nodes", "", "watch"),
    cluster("registrar.dev", "serviceregistrations", "", "get"),
    cluster("registrar.dev", "serviceregistrations", "", "list"),
    cluster("registrar.dev", "serviceregistrations", "", "watch"),
    // The finalizer (JSON patch) and the status (merge patch).
    cluster("registrar.dev", "serviceregistrations", "", "patch"),
    cluster("registrar.dev", "serviceregistrations", "status", "patch"),
    cluster("events.k8s.io", "events", "", "create"),
    cluster("events.k8s.io", "events", "", "patch"),
    Permission {
        name: Name::Fixed("kube-system"),
        when: When::NoClusterId,
        ..cluster("", "namespaces", "", "get")
    },
    Permission {
        scope: Scope::LeaderElection,
        when: When::LeaderElect,
        ..cluster("coordination.k8s.io", "leases", "", "create")
    },
    Permission {
        name: Name::LeaderElectionLease,
        scope: Scope::LeaderElection,
        when: When::LeaderElect,
        ..cluster("coordination.k8s.io", "leases", "", "get")
    },
    Permission {
        name: Name::LeaderElectionLease,
        scope: Scope::LeaderElection,
        when: When::LeaderElect,
        ..cluster("coordination.k8s.io", "leases", "", "patch")
    },
];

/// A permission made concrete for a configuration: the namespace and name to ask about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Needed {
    /// The permission.
    pub permission: Permission,
    /// Namespace (`None`: all namespaces / cluster-scoped).
    pub namespace: Option<String>,
    /// Object name (`None`: any).
    pub name: Option<String>,
}

impl Needed {
    /// `patch registrar.dev/serviceregistrations/status`, `get leases "registrar" in ns`.
    pub fn describe(&self) -> String {
        let p = &self.permission;
        let group = if p.group.is_empty() {
            String::new()
        } else {
            format!("{}/", p.group)
        };
        let sub = if p.subresource.is_empty() {
            String::new()
        } else {
            format!("/{}", p.subresource)
        };
        let mut text = format!("{} {group}{}{sub}", p.verb, p.resource);
        if let Some(name) = &self.name {
            text.push_str(&format!(" {name:?}"));
        }
        match &self.namespace {
            Some(ns) => text.push_str(&format!(" in {ns}")),
            None => text.push_str(" (all namespaces)"),
        }
        text
    }
}

/// The permissions `args` needs.
pub fn needed(args: &RunArgs) -> Vec<Needed> {
    REQUIRED
        .iter()
        .filter(|p| match p.when {
            When::Always => true,
            When::NoClusterId => args.cluster_id.is_none(),
            When::LeaderElect => args.leader_elect,
        })
        .map(|p| Needed {
            permission: *p,
            namespace: match p.scope {
                Scope::Cluster => None,
                Scope::LeaderElection => Some(args.leader_election_namespace()),
            },
            name: match p.name {
                Name::Any => None,
                Name::Fixed(n) => Some(n.to_string()),
                Name::LeaderElectionLease => Some(args.leader_election_lease_name.clone()),
            },
        })
        .collect()
}
