//! Whether the CRD installed in the cluster is the one this binary was built with: every
//! version of ours is served there with the same schema (printer columns and other cosmetics
//! are not compared).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

/// `Ok(versions)` when `installed` serves every version of `ours` with the same schema;
/// otherwise what differs.
pub fn crd_matches(
    installed: &CustomResourceDefinition,
    ours: &CustomResourceDefinition,
) -> Result<String, String> {
    let mut names = Vec::new();
    for want in &ours.spec.versions {
        let Some(have) = installed.spec.versions.iter().find(|v| v.name == want.name) else {
            return Err(format!("version {} is not installed", want.name));
        };
        if want.served && !have.served {
            return Err(format!("version {} is not served", want.name));
        }
        let schema = |v: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinitionVersion| {
            v.schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .and_then(|s| serde_json::to_value(s).ok())
        };
        if schema(have) != schema(want) {
            return Err(format!(
                "the schema of version {} differs from this binary's",
                want.name
            ));
        }
        names.push(want.name.clone());
    }
    Ok(names.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ours_matches_itself_and_a_changed_schema_or_version_does_not() {
        let ours = crate::crd::crd();
        assert_eq!(crd_matches(&ours, &ours), Ok("v1alpha1".to_string()));

        let mut old = ours.clone();
        if let Some(s) = old.spec.versions[0]
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            s.description = Some("an older schema".into());
        }
        assert!(crd_matches(&old, &ours).unwrap_err().contains("schema"));

        let mut renamed = ours.clone();
        renamed.spec.versions[0].name = "v1beta1".into();
        assert!(
            crd_matches(&renamed, &ours)
                .unwrap_err()
                .contains("not installed")
        );
    }
}
