//! The `ServiceRegistration` custom resource (`registrar.dev/v1alpha1`).
//!
//! A registration names a set of pods (label selector + port) whose ready addresses the operator
//! publishes into etcd under `<prefix>/<namespace>/<service>/<addr>`.
//!
//! Every rule that can be checked without looking at pods is enforced by the API server through
//! the OpenAPI schema and CEL rules (`x-kubernetes-validations`) generated here, so an invalid
//! registration is refused at `kubectl apply` time with a message that names the field. What only
//! the operator can see (a pod lacking the named port, etcd down, a foreign prefix owner) ends up
//! in `status.conditions`.
//!
//! `spec.metadata` is a map of strings, not free-form JSON: CEL cannot see inside fields marked
//! `x-kubernetes-preserve-unknown-fields`, so a size limit on arbitrary JSON cannot be enforced by
//! the API server. With string values the rule below bounds the serialized size exactly (for
//! text that needs no JSON escaping), which keeps every etcd value small.

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, CustomResourceExt};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

/// API group of the custom resource.
pub const GROUP: &str = "registrar.dev";
/// API version of the custom resource.
pub const VERSION: &str = "v1alpha1";
/// Type of the one condition the operator maintains.
pub const READY_CONDITION: &str = "Ready";
/// At most this many addresses are listed in `status.endpoints` (the count is authoritative).
pub const MAX_STATUS_ENDPOINTS: usize = 50;
/// Upper bound of the serialized size of `spec.metadata`, in bytes.
pub const MAX_METADATA_BYTES: usize = 4096;
/// Metadata keys the operator sets itself on every endpoint; a spec may not use them.
pub const RESERVED_METADATA_KEYS: [&str; 5] = ["pod", "node", "zone", "region", "cluster"];

/// DNS-1123 label (without the length limit, which the schema checks with `maxLength`).
const DNS1123_LABEL: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// Label value syntax (may be empty), as in `metav1` label validation.
const LABEL_VALUE: &str = "^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$";
/// Label key syntax: an optional DNS-1123 subdomain prefix and a name.
const LABEL_KEY: &str = "^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$";

/// Desired state of a ServiceRegistration.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "registrar.dev",
    version = "v1alpha1",
    kind = "ServiceRegistration",
    plural = "serviceregistrations",
    singular = "serviceregistration",
    shortname = "svcreg",
    category = "registrar",
    namespaced,
    status = "ServiceRegistrationStatus",
    derive = "PartialEq",
    doc = "ServiceRegistration publishes the ready endpoints of the pods it selects into etcd, \
           under <prefix>/<namespace>/<service>/<address>, for gRPC clients that use etcd's naming resolver.",
    printcolumn(
        name = "Service",
        type_ = "string",
        description = "Service name the endpoints are published under",
        json_path = ".status.service"
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        description = "Number of endpoints published",
        json_path = ".status.readyEndpoints"
    ),
    printcolumn(
        name = "Status",
        type_ = "string",
        description = "Reason of the Ready condition",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Target",
        type_ = "string",
        description = "etcd target the endpoints are published under (what gRPC clients dial)",
        json_path = ".status.target",
        priority = "1"
    ),
    validation = kube::core::Rule::new(
        "has(self.spec.service) || (size(self.metadata.name) <= 63 && self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'))"
    )
    .message("spec.service is required when metadata.name is not a DNS-1123 label (at most 63 lowercase letters, digits and '-'; no '.')")
    .field_path(".spec.service")
    .reason(kube::core::Reason::FieldValueRequired)
)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRegistrationSpec {
    /// Name the endpoints are published under: <prefix>/<namespace>/<service>. Defaults to
    /// metadata.name. A DNS-1123 label: at most 63 lowercase letters, digits and '-', starting
    /// and ending with a letter or digit (no '/' and no '.'). Several registrations in a namespace
    /// may name the same service; the published set is the union of their endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "service_schema")]
    pub service: Option<String>,

    /// Label selector of the pods to publish (matchLabels and/or matchExpressions, ANDed). Must
    /// not be empty. Only pods in the registration's namespace are considered.
    #[schemars(schema_with = "selector_schema")]
    pub selector: LabelSelector,

    /// Port to publish: a number (1-65535), or the name of a container port (TCP), resolved per
    /// pod like a Service's targetPort. A pod that has no such named port is skipped and reported
    /// in the Ready condition.
    #[schemars(schema_with = "port_schema")]
    pub port: IntOrString,

    /// Extra metadata copied into every endpoint's etcd value (its Metadata object), next to the
    /// keys "pod", "node", "zone" and "region" that the operator sets. A map of strings, at most
    /// 4 KiB serialized; the keys "pod", "node", "zone", "region" and "cluster" are reserved.
    /// "weight" (a positive integer as a string) is read by the Rust balancer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "metadata_schema")]
    pub metadata: Option<BTreeMap<String, String>>,

    /// Publish pods whether or not they are Ready, like a Service's publishNotReadyAddresses.
    #[serde(default)]
    pub publish_not_ready: bool,
}

/// Observed state of a ServiceRegistration, written by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRegistrationStatus {
    /// metadata.generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Effective service name (spec.service, or metadata.name when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,

    /// etcd target the endpoints are published under, <prefix>/<namespace>/<service>; gRPC
    /// clients dial etcd:///<target>.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,

    /// Number of endpoints this registration publishes.
    #[serde(default)]
    pub ready_endpoints: i64,

    /// Published addresses, sorted, at most the first 50 (readyEndpoints is the full count).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,

    /// Conditions of the registration; "Ready" says whether its endpoints are published.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}

impl ServiceRegistration {
    /// Service name the endpoints are published under: `spec.service`, else `metadata.name`.
    pub fn service_name(&self) -> &str {
        match &self.spec.service {
            Some(service) => service,
            None => self.metadata.name.as_deref().unwrap_or_default(),
        }
    }
}

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    /// The CustomResourceDefinition could not be rendered as YAML.
    #[error("cannot render the CustomResourceDefinition as YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
}

/// The CustomResourceDefinition of `ServiceRegistration`.
pub fn crd() -> CustomResourceDefinition {
    ServiceRegistration::crd()
}

/// The CustomResourceDefinition as the YAML document checked in under `crds/`.
pub fn crd_yaml() -> Result<String, CrdError> {
    let body = serde_yaml::to_string(&crd())?;
    Ok(format!(
        "# Generated from the Rust types by `registrar crd`; do not edit by hand.\n---\n{body}"
    ))
}

/// One `x-kubernetes-validations` entry.
fn rule(rule: &str, message: &str) -> serde_json::Value {
    serde_json::json!({ "rule": rule, "message": message })
}

/// Refuses the [`RESERVED_METADATA_KEYS`] in `spec.metadata`, naming the (first) one that was
/// set. The message is a chain of constant choices: CEL's `join` over a list costs too much for
/// the API server's estimate.
fn reserved_keys_rule() -> serde_json::Value {
    let keys = RESERVED_METADATA_KEYS.map(|k| format!("'{k}'")).join(", ");
    let (last, others) = RESERVED_METADATA_KEYS
        .split_last()
        .map_or(("", &[][..]), |(l, o)| (*l, o));
    let named = others
        .iter()
        .rev()
        .fold(format!("\"'{last}'\""), |rest, k| {
            format!("('{k}' in self ? \"'{k}'\" : {rest})")
        });
    let why = "'pod' and 'node' are set by the operator on every endpoint, 'zone' and 'region' \
               from the pod's node (labels topology.kubernetes.io/zone and /region), 'cluster' \
               is the cluster id";
    serde_json::json!({
        "rule": RESERVED_METADATA_KEYS.map(|k| format!("!('{k}' in self)")).join(" && "),
        "message": format!("spec.metadata must not set the reserved keys {keys}: {why}"),
        "messageExpression": format!(
            "'spec.metadata must not set the reserved key ' + {named} + \": {why}\""
        ),
    })
}

fn service_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "maxLength": 63,
        "x-kubernetes-validations": [rule(
            &format!("self.matches('{DNS1123_LABEL}')"),
            "spec.service must be a DNS-1123 label: lowercase letters, digits and '-', starting and ending with a letter or digit (no '/', no '.')",
        )],
    })
}

fn selector_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-map-type": "atomic",
        "properties": {
            "matchLabels": {
                "description": "Pods must carry every one of these labels with exactly this value.",
                "type": "object",
                "maxProperties": 64,
                "additionalProperties": { "type": "string", "maxLength": 63, "pattern": LABEL_VALUE },
            },
            "matchExpressions": {
                "description": "Pods must satisfy every one of these requirements.",
                "type": "array",
                "maxItems": 64,
                "items": {
                    "type": "object",
                    "required": ["key", "operator"],
                    "properties": {
                        "key": {
                            "description": "Label key the requirement applies to.",
                            "type": "string",
                            "maxLength": 317,
                            "pattern": LABEL_KEY,
                        },
                        "operator": {
                            "description": "One of In, NotIn, Exists, DoesNotExist.",
                            "type": "string",
                            "enum": ["In", "NotIn", "Exists", "DoesNotExist"],
                        },
                        "values": {
                            "description": "Label values: non-empty for In and NotIn, empty for Exists and DoesNotExist.",
                            "type": "array",
                            "maxItems": 256,
                            "items": { "type": "string", "maxLength": 63, "pattern": LABEL_VALUE },
                        },
                    },
                    "x-kubernetes-validations": [rule(
                        "self.operator in ['In', 'NotIn'] ? (has(self.values) && size(self.values) > 0) : (!has(self.values) || size(self.values) == 0)",
                        "spec.selector.matchExpressions: values must be non-empty for In and NotIn, and empty for Exists and DoesNotExist",
                    )],
                },
            },
        },
        "x-kubernetes-validations": [rule(
            "(has(self.matchLabels) && size(self.matchLabels) > 0) || (has(self.matchExpressions) && size(self.matchExpressions) > 0)",
            "spec.selector must not be empty: set matchLabels and/or matchExpressions (an empty selector would select every pod of the namespace)",
        )],
    })
}

fn port_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "x-kubernetes-int-or-string": true,
        "maxLength": 15,
        "x-kubernetes-validations": [
            rule(
                "type(self) == string || (self >= 1 && self <= 65535)",
                "spec.port must be a port number between 1 and 65535, or a container port name",
            ),
            rule(
                "type(self) == int || (self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$') && self.matches('[a-z]') && !self.contains('--'))",
                "spec.port must be a port number, or a container port name (IANA service name): at most 15 lowercase letters, digits and '-', with at least one letter, not starting or ending with '-', without '--'",
            ),
        ],
    })
}

fn metadata_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "maxProperties": 64,
        "additionalProperties": { "type": "string", "maxLength": MAX_METADATA_BYTES },
        "x-kubernetes-validations": [
            reserved_keys_rule(),
            rule(
                "self.all(k, size(k) > 0)",
                "spec.metadata keys must not be empty",
            ),
            // Serialized as {"k":"v",...}: 2 braces + per entry 2+2 quotes, ':' and ',' minus the
            // last comma, i.e. 1 + sum(len(k) + len(v) + 6) bytes for text without escapes.
            rule(
                &format!("self.map(k, size(k) + size(self[k]) + 6).sum() <= {}", MAX_METADATA_BYTES - 1),
                "spec.metadata must be at most 4 KiB when serialized as JSON",
            ),
        ],
    })
}

fn conditions_schema(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = <Vec<Condition>>::json_schema(generator);
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert(
        "x-kubernetes-list-map-keys".into(),
        serde_json::json!(["type"]),
    );
    schema
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHECKED_IN: &str = include_str!("../crds/serviceregistrations.registrar.dev.yaml");

    /// Fails when the checked-in CRD differs from the Rust types. Regenerate with
    /// `REGISTRAR_UPDATE_CRDS=1 cargo test -p registrar --lib crd_yaml` (or `registrar crd`).
    #[test]
    fn crd_yaml_matches_checked_in_file() {
        let generated = crd_yaml().unwrap();
        if std::env::var_os("REGISTRAR_UPDATE_CRDS").is_some() {
            let path = concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/crds/serviceregistrations.registrar.dev.yaml"
            );
            std::fs::write(path, &generated).unwrap();
            return;
        }
        assert!(
            generated == CHECKED_IN,
            "crds/serviceregistrations.registrar.dev.yaml is out of date: regenerate it with \
             `REGISTRAR_UPDATE_CRDS=1 cargo test -p registrar --lib crd_yaml`"
        );
    }

    fn schema_json() -> serde_json::Value {
        let crd = crd();
        let version = &crd.spec.versions[0];
        serde_json::to_value(&version.schema.as_ref().unwrap().open_api_v3_schema).unwrap()
    }

    #[test]
    fn names_and_scope() {
        let crd = crd();
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some("serviceregistrations.registrar.dev")
        );
        assert_eq!(crd.spec.group, GROUP);
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.kind, "ServiceRegistration");
        assert_eq!(crd.spec.names.plural, "serviceregistrations");
        assert_eq!(crd.spec.names.short_names, Some(vec!["svcreg".to_string()]));
        assert_eq!(
            crd.spec.names.categories,
            Some(vec!["registrar".to_string()])
        );
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, VERSION);
        assert!(version.served && version.storage);
        assert!(version.subresources.as_ref().unwrap().status.is_some());
    }

    #[test]
    fn printer_columns() {
        let crd = crd();
        let columns = crd.spec.versions[0]
            .additional_printer_columns
            .clone()
            .unwrap();
        let names: Vec<_> = columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["Service", "Ready", "Status", "Age", "Target"]);
        assert_eq!(
            columns[2].json_path,
            ".status.conditions[?(@.type==\"Ready\")].reason"
        );
        assert_eq!(columns[4].priority, Some(1));
    }

    #[test]
    fn schema_carries_validations() {
        let schema = schema_json();
        let spec = &schema["properties"]["spec"];
        assert_eq!(spec["required"], serde_json::json!(["port", "selector"]));
        let props = &spec["properties"];
        assert_eq!(props["service"]["maxLength"], 63);
        assert_eq!(props["port"]["x-kubernetes-int-or-string"], true);
        assert_eq!(props["publishNotReady"]["default"], false);
        assert!(props["selector"]["x-kubernetes-validations"].is_array());
        assert_eq!(
            props["metadata"]["x-kubernetes-validations"]
                .as_array()
                .unwrap()
                .len(),
            3
        );
        // field docs reach `kubectl explain`
        assert!(
            props["port"]["description"]
                .as_str()
                .unwrap()
                .contains("targetPort")
        );
        // the root rule defaulting the service to metadata.name
        let root_rules = schema["x-kubernetes-validations"].as_array().unwrap();
        assert_eq!(root_rules.len(), 1);
        assert_eq!(root_rules[0]["fieldPath"], ".spec.service");
        let conditions = &schema["properties"]["status"]["properties"]["conditions"];
        assert_eq!(conditions["x-kubernetes-list-type"], "map");
    }

    #[test]
    fn service_name_defaults_to_metadata_name() {
        let spec = ServiceRegistrationSpec {
            service: None,
            selector: LabelSelector::default(),
            port: IntOrString::Int(80),
            metadata: None,
            publish_not_ready: false,
        };
        let mut reg = ServiceRegistration::new("greeter", spec);
        assert_eq!(reg.service_name(), "greeter");
        reg.spec.service = Some("other".into());
        assert_eq!(reg.service_name(), "other");
    }

    #[test]
    fn spec_round_trips_with_defaults() {
        let reg: ServiceRegistration = serde_json::from_value(serde_json::json!({
            "apiVersion": "registrar.dev/v1alpha1",
            "kind": "ServiceRegistration",
            "metadata": { "name": "greeter", "namespace": "shop" },
            "spec": { "selector": { "matchLabels": { "app": "greeter" } }, "port": "grpc" },
        }))
        .unwrap();
        assert_eq!(reg.spec.port, IntOrString::String("grpc".into()));
        assert!(!reg.spec.publish_not_ready);
        assert_eq!(reg.spec.metadata, None);
        assert!(reg.status.is_none());
    }
}
