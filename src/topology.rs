//! Node topology: the zone and region of each Node, from its well-known labels, published as
//! the `zone` and `region` metadata of the endpoints of the pods scheduled on it (DESIGN §10).
//!
//! Nodes are cached trimmed to their name and these two labels, so a Node's frequent status
//! updates cost nothing and only a relabel changes what is published.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;

/// The label holding a node's zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// The label holding a node's region.
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";

/// Where one node is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeTopology {
    /// Its `topology.kubernetes.io/zone` label.
    pub zone: Option<String>,
    /// Its `topology.kubernetes.io/region` label.
    pub region: Option<String>,
}

impl NodeTopology {
    /// The topology labels of `node` (empty values count as absent).
    pub fn of(node: &Node) -> Self {
        let label = |key: &str| {
            node.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(key))
                .filter(|v| !v.is_empty())
                .cloned()
        };
        NodeTopology {
            zone: label(ZONE_LABEL),
            region: label(REGION_LABEL),
        }
    }
}

/// Drops everything of a Node but its name and its two topology labels before it is cached.
pub fn trim_node(node: &mut Node) {
    let labels = node.metadata.labels.take().map(|labels| {
        labels
            .into_iter()
            .filter(|(k, _)| k == ZONE_LABEL || k == REGION_LABEL)
            .collect::<BTreeMap<_, _>>()
    });
    *node = Node {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: node.metadata.name.take(),
            resource_version: node.metadata.resource_version.take(),
            labels,
            ..Default::default()
        },
        ..Node::default()
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_to_name_and_topology_labels() {
        let mut node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1", "resourceVersion": "7", "annotations": {"a": "b"},
                "labels": {ZONE_LABEL: "z1", REGION_LABEL: "r1", "kubernetes.io/os": "linux"}},
            "spec": {"podCIDR": "192.0.2.0/24"},
            "status": {"capacity": {"cpu": "4"}}
        }))
        .unwrap();
        trim_node(&mut node);
        assert_eq!(
            serde_json::to_value(&node).unwrap(),
            serde_json::json!({"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": "n1", "resourceVersion": "7",
                "labels": {ZONE_LABEL: "z1", REGION_LABEL: "r1"}}})
        );
        assert_eq!(
            NodeTopology::of(&node),
            NodeTopology {
                zone: Some("z1".into()),
                region: Some("r1".into())
            }
        );
        assert_eq!(NodeTopology::of(&Node::default()), NodeTopology::default());
    }
}
