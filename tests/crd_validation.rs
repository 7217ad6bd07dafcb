//! The generated CRD against a real kube-apiserver: valid ServiceRegistrations are accepted
//! (with defaults applied, and a status written through the status subresource), invalid ones
//! are refused by the API server itself with a message that names the offending field.
//!
//! One control plane serves every case (starting one is the expensive part); every object lives
//! in a namespace unique to this test.

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use registrar::crd::ServiceRegistration;
use registrar::desired::registration_outcome;
use registrar::status::{Publishing, next_status};
use registrar_testenv::{ControlPlane, unique_name};
use serde_json::{Value, json};

/// A registration named `name` with `spec`, as raw JSON (so that invalid shapes can be sent).
fn object(ns: &str, name: &str, spec: Value) -> Result<DynamicObject> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "registrar.dev/v1alpha1",
        "kind": "ServiceRegistration",
        "metadata": { "name": name, "namespace": ns },
        "spec": spec,
    }))?)
}

fn valid_spec() -> Value {
    json!({ "selector": { "matchLabels": { "app": "greeter" } }, "port": "grpc" })
}

/// `valid_spec()` with `field` replaced by `value` (or removed when `value` is null).
fn spec_with(field: &str, value: Value) -> Value {
    let mut spec = valid_spec();
    if value.is_null() {
        spec.as_object_mut().map(|m| m.remove(field));
    } else {
        spec[field] = value;
    }
    spec
}

#[tokio::test]
async fn api_server_enforces_the_crd_schema() -> Result<()> {
    let cp = ControlPlane::start().await?;
    let client = cp.client().await?;
    let ns = unique_name("crd-validation");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({ "metadata": { "name": ns } }))?,
        )
        .await?;
    let resource = ApiResource::erase::<ServiceRegistration>(&());
    let raw: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &resource);
    let typed: Api<ServiceRegistration> = Api::namespaced(client.clone(), &ns);

    // --- accepted -------------------------------------------------------------------------
    let accepted: Vec<(&str, Value)> = vec![
        ("minimal", valid_spec()),
        (
            "everything",
            json!({
                "service": "greeter-v2",
                "selector": {
                    "matchLabels": { "app": "greeter", "example.com/tier": "" },
                    "matchExpressions": [
                        { "key": "track", "operator": "In", "values": ["stable", "canary"] },
                        { "key": "example.com/legacy", "operator": "DoesNotExist" }
                    ]
                },
                "port": 50051,
                "metadata": { "tier": "gold", "weight": "10" },
                "publishNotReady": true
            }),
        ),
        ("port 1", spec_with("port", json!(1))),
        ("port 65535", spec_with("port", json!(65535))),
        (
            "port name of 15 chars",
            spec_with("port", json!("h2c-grpc-123456")),
        ),
        ("port name of 1 letter", spec_with("port", json!("g"))),
        (
            "service of 63 chars",
            spec_with("service", json!("a".repeat(63))),
        ),
        (
            "metadata just under 4 KiB",
            spec_with("metadata", json!({ "k": "v".repeat(4088) })),
        ),
    ];
    for (i, (case, spec)) in accepted.iter().enumerate() {
        raw.create(
            &PostParams::default(),
            &object(&ns, &format!("ok-{i}"), spec.clone())?,
        )
        .await
        .with_context(|| format!("valid registration refused: {case}"))?;
    }
    // metadata.name that is not a DNS-1123 label is fine when spec.service is set
    raw.create(
        &PostParams::default(),
        &object(&ns, "greeter.v1", spec_with("service", json!("greeter")))?,
    )
    .await
    .context("a dotted name with spec.service set was refused")?;

    // defaults are applied by the API server, and the typed client reads the object back
    let minimal = typed.get("ok-0").await?;
    assert!(!minimal.spec.publish_not_ready);
    assert_eq!(minimal.service_name(), "ok-0");

    // a status computed by the operator's code is accepted by the status subresource
    let outcome = registration_outcome(
        "registrar",
        &minimal,
        std::iter::empty::<&k8s_openapi::api::core::v1::Pod>(),
    );
    let update = next_status(
        &minimal,
        &outcome,
        &Publishing::Ok,
        Time(Timestamp::from_second(1_700_000_000)?),
    );
    let patched = typed
        .patch_status(
            "ok-0",
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": update.status })),
        )
        .await
        .context("status refused by the API server")?;
    assert_eq!(patched.status.as_ref(), Some(&update.status));
    assert_eq!(
        update.ready().map(|c| c.reason.as_str()),
        Some("NoReadyPods")
    );

    // --- refused: (case, name, spec, text expected in the error message) -------------------
    let refused: Vec<(&str, &str, Value, &[&str])> = vec![
        (
            "missing selector",
            "r",
            spec_with("selector", Value::Null),
            &["spec.selector: Required value"],
        ),
        (
            "empty selector",
            "r",
            spec_with("selector", json!({})),
            &["spec.selector", "must not be empty"],
        ),
        (
            "selector with empty maps",
            "r",
            spec_with(
                "selector",
                json!({ "matchLabels": {}, "matchExpressions": [] }),
            ),
            &["spec.selector", "must not be empty"],
        ),
        (
            "unknown operator",
            "r",
            spec_with(
                "selector",
                json!({ "matchExpressions": [{ "key": "a", "operator": "Gt", "values": ["1"] }] }),
            ),
            &[
                "spec.selector.matchExpressions[0].operator",
                "Unsupported value",
            ],
        ),
        (
            "In without values",
            "r",
            spec_with(
                "selector",
                json!({ "matchExpressions": [{ "key": "a", "operator": "In" }] }),
            ),
            &[
                "spec.selector.matchExpressions[0]",
                "values must be non-empty",
            ],
        ),
        (
            "Exists with values",
            "r",
            spec_with(
                "selector",
                json!({ "matchExpressions": [{ "key": "a", "operator": "Exists", "values": ["x"] }] }),
            ),
            &["spec.selector.matchExpressions[0]", "empty for Exists"],
        ),
        (
            "bad label value",
            "r",
            spec_with("selector", json!({ "matchLabels": { "app": "-bad-" } })),
            &["spec.selector.matchLabels.app"],
        ),
        (
            "missing port",
            "r",
            spec_with("port", Value::Null),
            &["spec.port: Required value"],
        ),
        (
            "port 0",
            "r",
            spec_with("port", json!(0)),
            &["spec.port", "between 1 and 65535"],
        ),
        (
            "port 70000",
            "r",
            spec_with("port", json!(70000)),
            &["spec.port", "between 1 and 65535"],
        ),
        (
            "port negative",
            "r",
            spec_with("port", json!(-5)),
            &["spec.port", "between 1 and 65535"],
        ),
        (
            "port float",
            "r",
            spec_with("port", json!(80.5)),
            &["spec.port"],
        ),
        (
            "port name uppercase",
            "r",
            spec_with("port", json!("Grpc")),
            &["spec.port", "IANA service name"],
        ),
        (
            "port name digits only",
            "r",
            spec_with("port", json!("8080")),
            &["spec.port", "IANA service name"],
        ),
        (
            "port name leading hyphen",
            "r",
            spec_with("port", json!("-grpc")),
            &["spec.port", "IANA service name"],
        ),
        (
            "port name double hyphen",
            "r",
            spec_with("port", json!("grpc--web")),
            &["spec.port", "IANA service name"],
        ),
        (
            "port name underscore",
            "r",
            spec_with("port", json!("grpc_web")),
            &["spec.port", "IANA service name"],
        ),
        (
            "port name too long",
            "r",
            spec_with("port", json!("grpc-abcdefghijk")),
            &["spec.port", "Too long"],
        ),
        (
            "service with '/'",
            "r",
            spec_with("service", json!("shop/greeter")),
            &["spec.service", "DNS-1123 label"],
        ),
        (
            "service with '.'",
            "r",
            spec_with("service", json!("greeter.v1")),
            &["spec.service", "DNS-1123 label"],
        ),
        (
            "service uppercase",
            "r",
            spec_with("service", json!("Greeter")),
            &["spec.service", "DNS-1123 label"],
        ),
        (
            "service empty",
            "r",
            spec_with("service", json!("")),
            &["spec.service", "DNS-1123 label"],
        ),
        (
            "service too long",
            "r",
            spec_with("service", json!("a".repeat(64))),
            &["spec.service", "Too long"],
        ),
        (
            "dotted name without service",
            "greeter.v2",
            valid_spec(),
            &["spec.service: Required value", "not a DNS-1123 label"],
        ),
        (
            "metadata not an object",
            "r",
            spec_with("metadata", json!("tier=gold")),
            &["spec.metadata", "must be of type object"],
        ),
        (
            "metadata value not a string",
            "r",
            spec_with("metadata", json!({ "weight": 10 })),
            &["spec.metadata.weight", "must be of type string"],
        ),
        (
            "metadata too large",
            "r",
            spec_with("metadata", json!({ "k": "v".repeat(4089) })),
            &["spec.metadata", "at most 4 KiB"],
        ),
        (
            "metadata too large in many keys",
            "r",
            spec_with(
                "metadata",
                Value::Object(
                    (0..20)
                        .map(|i| (format!("key-{i}"), json!("v".repeat(200))))
                        .collect(),
                ),
            ),
            &["spec.metadata", "at most 4 KiB"],
        ),
        (
            "metadata reserved key",
            "r",
            spec_with("metadata", json!({ "pod": "mine" })),
            &["spec.metadata", "'pod' and 'node'"],
        ),
        (
            "publishNotReady not a bool",
            "r",
            spec_with("publishNotReady", json!("yes")),
            &["spec.publishNotReady", "must be of type boolean"],
        ),
    ];
    let mut failures = Vec::new();
    for (case, name, spec, expected) in &refused {
        match raw
            .create(&PostParams::default(), &object(&ns, name, spec.clone())?)
            .await
        {
            Ok(_) => failures.push(format!("{case}: accepted")),
            Err(kube::Error::Api(status)) => {
                if status.code != 422 || expected.iter().any(|e| !status.message.contains(e)) {
                    failures.push(format!(
                        "{case}: expected 422 with {expected:?}, got {} {:?}",
                        status.code, status.message
                    ));
                }
            }
            Err(other) => failures.push(format!("{case}: unexpected error {other}")),
        }
    }
    if !failures.is_empty() {
        bail!(
            "{} case(s) failed:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
    Ok(())
}
