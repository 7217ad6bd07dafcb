//! Endpoint counts per target (`<prefix>/<namespace>/<service>`), for the
//! `registrar_target_endpoints` gauge.

use std::collections::BTreeMap;

/// A target's namespace and service.
pub type TargetName = (String, String);

/// The (namespace, service) of `target` when it is of the form `<prefix>/<namespace>/<service>`
/// (both non-empty, the service without `/`): the labels of its `registrar_target_endpoints`
/// series.
pub fn target_name(prefix: &str, target: &str) -> Option<TargetName> {
    let (namespace, service) = target
        .strip_prefix(prefix)?
        .strip_prefix('/')?
        .split_once('/')?;
    (!namespace.is_empty() && !service.is_empty() && !service.contains('/'))
        .then(|| (namespace.to_string(), service.to_string()))
}

/// The number of keys of `keys` under each target below `prefix`, by (namespace, service);
/// every target of `targets` (full `<prefix>/<namespace>/<service>` strings, e.g. the
/// registrations' targets) is present, at 0 when it has no key. Keys and targets not of the form
/// `<prefix>/<namespace>/<service>[/<addr>]` are skipped.
pub fn endpoints_per_target<'a>(
    prefix: &str,
    keys: impl IntoIterator<Item = &'a String>,
    targets: impl IntoIterator<Item = &'a str>,
) -> BTreeMap<TargetName, usize> {
    let split = |target: &str| target_name(prefix, target);
    let mut out = BTreeMap::new();
    for target in targets {
        if let Some(name) = split(target) {
            out.entry(name).or_insert(0);
        }
    }
    for key in keys {
        // The address never contains '/'.
        if let Some(name) = key.rsplit_once('/').and_then(|(target, _)| split(target)) {
            *out.entry(name).or_insert(0) += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_keys_per_target_and_keeps_empty_targets() {
        let keys: Vec<String> = [
            "registrar/shop/greeter/192.0.2.1:50051",
            "registrar/shop/greeter/[2001:db8::1]:50051",
            "registrar/shop/cart/192.0.2.2:8080",
            "registrar/ops/greeter/192.0.2.3:50051",
            "other/shop/greeter/192.0.2.4:50051",
            "registrar/.owner",
        ]
        .map(String::from)
        .to_vec();
        let counts = endpoints_per_target(
            "registrar",
            &keys,
            ["registrar/shop/greeter", "registrar/shop/idle", "other/x/y"],
        );
        let pair = |n: &str, s: &str| (n.to_string(), s.to_string());
        assert_eq!(
            counts,
            BTreeMap::from([
                (pair("ops", "greeter"), 1),
                (pair("shop", "cart"), 1),
                (pair("shop", "greeter"), 2),
                (pair("shop", "idle"), 0),
            ])
        );
    }

    #[test]
    fn a_nested_prefix_is_stripped_whole() {
        let keys = vec!["services/registrar/shop/greeter/192.0.2.1:1".to_string()];
        let counts = endpoints_per_target("services/registrar", &keys, []);
        assert_eq!(
            counts.into_iter().collect::<Vec<_>>(),
            [(("shop".to_string(), "greeter".to_string()), 1)]
        );
    }
}
