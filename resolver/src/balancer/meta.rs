//! What the balancer reads from an endpoint's metadata: its `zone` and its `weight`.

use std::sync::Arc;

use crate::value::Metadata;

/// Routing metadata of one backend.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct BackendMeta {
    /// The `zone` metadata string, if any.
    pub(crate) zone: Option<Arc<str>>,
    /// The `weight` metadata: a positive integer (as a string, or a JSON number), else `None`.
    pub(crate) weight: Option<u32>,
    /// Whether a `weight` was set that is not a positive integer.
    pub(crate) weight_invalid: bool,
}

impl BackendMeta {
    /// Reads `zone` and `weight` from endpoint metadata (anything else, or a non-object, is
    /// ignored).
    pub(crate) fn read(metadata: &Metadata) -> Self {
        let Ok(serde_json::Value::Object(map)) = metadata.to_value() else {
            return BackendMeta::default();
        };
        let zone = map
            .get("zone")
            .and_then(|z| z.as_str())
            .filter(|z| !z.is_empty())
            .map(Arc::from);
        let (weight, weight_invalid) = match map.get("weight") {
            None | Some(serde_json::Value::Null) => (None, false),
            Some(w) => {
                let parsed = match w {
                    serde_json::Value::String(s) => s.trim().parse::<u32>().ok(),
                    serde_json::Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
                    _ => None,
                }
                .filter(|w| *w > 0);
                (parsed, parsed.is_none())
            }
        };
        BackendMeta {
            zone,
            weight,
            weight_invalid,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_zone_and_weight() {
        let read = |v: serde_json::Value| {
            let m = BackendMeta::read(&Metadata::from_value(&v));
            (m.zone.map(|z| z.to_string()), m.weight, m.weight_invalid)
        };
        assert_eq!(read(json!(null)), (None, None, false));
        assert_eq!(read(json!("text")), (None, None, false));
        assert_eq!(
            read(json!({"zone": "a", "weight": "3"})),
            (Some("a".into()), Some(3), false)
        );
        assert_eq!(read(json!({"weight": 7})), (None, Some(7), false));
        assert_eq!(read(json!({"zone": ""})), (None, None, false));
        for bad in [
            json!("0"),
            json!("-2"),
            json!("x"),
            json!("1.5"),
            json!(0),
            json!(-1),
            json!(true),
        ] {
            assert_eq!(read(json!({"weight": bad})), (None, None, true), "{bad}");
        }
    }
}
