//! The example manifests in `examples/` (compiled in), parsed into typed objects. A field that
//! the typed object does not know (a typo, a wrong indentation) is an error rather than silently
//! dropped, so the documented YAML is exactly what the demo and its test apply.

use k8s_openapi::api::apps::v1::Deployment;
use registrar::crd::ServiceRegistration;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// `examples/greeter-registration.yaml`.
pub const REGISTRATION_YAML: &str = include_str!("../../greeter-registration.yaml");
/// `examples/greeter-deployment.yaml`.
pub const DEPLOYMENT_YAML: &str = include_str!("../../greeter-deployment.yaml");
/// Where they live, relative to the repository root (for the narration).
pub const REGISTRATION_PATH: &str = "examples/greeter-registration.yaml";
/// See [`REGISTRATION_PATH`].
pub const DEPLOYMENT_PATH: &str = "examples/greeter-deployment.yaml";

/// Errors loading a manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not valid YAML, or not the expected kind of object.
    #[error("{file}: {source}")]
    Parse {
        /// The file.
        file: &'static str,
        /// Why.
        source: serde_yaml::Error,
    },
    /// Fields that the typed object does not know.
    #[error("{file}: unknown fields {fields:?}")]
    UnknownFields {
        /// The file.
        file: &'static str,
        /// Their paths, e.g. `spec.template.spec.containers[0].prots`.
        fields: Vec<String>,
    },
    /// Re-serializing the typed object failed.
    #[error("{file}: {source}")]
    Json {
        /// The file.
        file: &'static str,
        /// Why.
        source: serde_json::Error,
    },
}

/// The example ServiceRegistration.
pub fn registration() -> Result<ServiceRegistration, ManifestError> {
    load(REGISTRATION_PATH, REGISTRATION_YAML)
}

/// The example Deployment.
pub fn deployment() -> Result<Deployment, ManifestError> {
    load(DEPLOYMENT_PATH, DEPLOYMENT_YAML)
}

fn load<T: DeserializeOwned + Serialize>(
    file: &'static str,
    yaml: &str,
) -> Result<T, ManifestError> {
    let typed: T =
        serde_yaml::from_str(yaml).map_err(|source| ManifestError::Parse { file, source })?;
    let raw: Value =
        serde_yaml::from_str(yaml).map_err(|source| ManifestError::Parse { file, source })?;
    let back =
        serde_json::to_value(&typed).map_err(|source| ManifestError::Json { file, source })?;
    let mut fields = Vec::new();
    dropped(&raw, &back, "", &mut fields);
    if fields.is_empty() {
        Ok(typed)
    } else {
        Err(ManifestError::UnknownFields { file, fields })
    }
}

/// Collects the paths of object fields present in `raw` but missing from `back`.
fn dropped(raw: &Value, back: &Value, path: &str, out: &mut Vec<String>) {
    match (raw, back) {
        (Value::Object(r), Value::Object(b)) => {
            for (k, v) in r {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match b.get(k) {
                    Some(bv) => dropped(v, bv, &p, out),
                    // A null or empty value may legitimately be skipped when serializing.
                    None if is_empty(v) => {}
                    None => out.push(p),
                }
            }
        }
        (Value::Array(r), Value::Array(b)) => {
            for (i, (rv, bv)) in r.iter().zip(b).enumerate() {
                dropped(rv, bv, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    #[test]
    fn the_registration_sets_every_spec_field() {
        let reg = registration().unwrap();
        assert_eq!(reg.metadata.name.as_deref(), Some("greeter"));
        let raw: Value = serde_yaml::from_str(REGISTRATION_YAML).unwrap();
        for field in ["service", "selector", "port", "metadata", "publishNotReady"] {
            assert!(
                raw["spec"].get(field).is_some(),
                "spec.{field} is not shown"
            );
        }
        let spec = &reg.spec;
        assert_eq!(spec.service.as_deref(), Some("greeter"));
        assert!(spec.selector.match_labels.is_some());
        assert!(spec.selector.match_expressions.is_some());
        assert_eq!(spec.port, IntOrString::String("grpc".into()));
    }

    #[test]
    fn the_deployment_has_the_port_and_labels_the_registration_selects() {
        let reg = registration().unwrap();
        let dep = deployment().unwrap();
        let spec = dep.spec.unwrap();
        assert_eq!(spec.replicas, Some(3));
        let template_labels = spec.template.metadata.unwrap().labels.unwrap();
        for (k, v) in reg.spec.selector.match_labels.unwrap() {
            assert_eq!(template_labels.get(&k), Some(&v), "label {k}");
        }
        let pod = spec.template.spec.unwrap();
        let ports = pod.containers[0].ports.clone().unwrap();
        assert!(
            ports
                .iter()
                .any(|p| p.name.as_deref() == Some("grpc") && p.container_port == 50051)
        );
        assert!(pod.termination_grace_period_seconds.is_some());
    }

    #[test]
    fn unknown_fields_are_refused() {
        let yaml = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  replicas: 1\n  replcias: 2\n  selector: {}\n  template: {}\n";
        match load::<Deployment>("x.yaml", yaml) {
            Err(ManifestError::UnknownFields { fields, .. }) => {
                assert_eq!(fields, vec!["spec.replcias".to_string()])
            }
            other => panic!("{other:?}"),
        }
    }
}
