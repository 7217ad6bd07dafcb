//! The etcd value format of gRPC naming: Go's `naming/endpoints/internal.Update` as JSON,
//! `{"Op":0,"Addr":"192.0.2.25:50051","Metadata":null}`.
//!
//! Decoding follows Go's `encoding/json` reader as used by etcd's resolver: field names match
//! case-insensitively, unknown fields are ignored, a later duplicate field wins, `null` leaves
//! `Addr` unset, `Op` must be a small unsigned integer if present but its value is ignored (every
//! PUT is an add), and `Metadata` is kept as opaque JSON, byte for byte; where serde_json and Go
//! differ on what is valid (invalid UTF-8 in strings, nesting depth, huge metadata numbers) Go's
//! verdict is taken (see `go_json`). On top of Go, values
//! without an `Addr`, or whose `Addr` is not `host:port`, are rejected (Go would hand them to
//! gRPC, which could not dial them).
//!
//! Encoding is the project's one encoder ([`registrar_etcd::value`]): exactly the Go field names
//! and order with `Op` 0, `Metadata` `null` when there is none, metadata made from a value
//! written as Go's `json.Marshal` writes it, and decoded metadata written back verbatim.

use std::fmt;
use std::net::Ipv6Addr;
use std::sync::Arc;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

/// One endpoint as stored under `<target>/<addr>`: the address to dial and opaque metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `host:port` to connect to (`[v6]:port` for IPv6).
    pub addr: String,
    /// Opaque metadata; not interpreted by this crate.
    pub metadata: Metadata,
}

impl Endpoint {
    /// An endpoint at `addr` with `metadata`, checking that `addr` is `host:port`.
    pub fn new(addr: impl Into<String>, metadata: Metadata) -> Result<Self, ValueError> {
        let addr = addr.into();
        validate_addr(&addr)?;
        Ok(Endpoint { addr, metadata })
    }

    /// Decodes an etcd value (see the module docs for the rules).
    pub fn decode(value: &[u8]) -> Result<Self, ValueError> {
        // Go replaces invalid UTF-8 in strings (see `go_json`); elsewhere it stays invalid.
        let text = String::from_utf8_lossy(value);
        if go_json::too_deep(text.as_bytes()) {
            return Err(ValueError::GoRefuses("nesting deeper than 10000"));
        }
        let wire: WireIn = serde_json::from_str(&text).map_err(ValueError::Json)?;
        if wire
            .metadata
            .as_ref()
            .is_some_and(|m| go_json::float_overflow(m.get()))
        {
            return Err(ValueError::GoRefuses(
                "a metadata number out of float64 range",
            ));
        }
        let addr = wire
            .addr
            .filter(|a| !a.is_empty())
            .ok_or(ValueError::MissingAddr)?;
        validate_addr(&addr)?;
        Ok(Endpoint {
            addr,
            metadata: Metadata(wire.metadata.map(Arc::from)),
        })
    }

    /// Encodes the value to store in etcd: `{"Op":0,"Addr":...,"Metadata":...}`, with the
    /// address escaped as Go escapes it and the metadata verbatim (the shared encoder
    /// [`registrar_etcd::value::encode_raw`]).
    pub fn encode(&self) -> String {
        registrar_etcd::value::encode_raw(&self.addr, self.metadata.0.as_deref().map(RawValue::get))
    }
}

/// Opaque JSON metadata of an endpoint (`null` when absent), kept exactly as written.
#[derive(Clone, Default)]
pub struct Metadata(Option<Arc<RawValue>>);

impl Metadata {
    /// No metadata (`null`).
    pub const fn null() -> Self {
        Metadata(None)
    }

    /// Metadata from a JSON value (`Value::Null` gives [`Metadata::null`]), written as Go's
    /// `json.Marshal` writes it (sorted keys, HTML-safe escapes), as the operator does.
    pub fn from_value(value: &serde_json::Value) -> Self {
        if value.is_null() {
            return Metadata(None);
        }
        // Go's JSON of a `Value` is always valid JSON.
        match RawValue::from_string(registrar_etcd::value::to_go_json(value)) {
            Ok(raw) => Metadata(Some(Arc::from(raw))),
            Err(_) => Metadata(None),
        }
    }

    /// Metadata from JSON text, validated (`"null"` gives [`Metadata::null`]).
    pub fn from_json(json: &str) -> Result<Self, ValueError> {
        let raw = RawValue::from_string(json.trim().to_owned()).map_err(ValueError::Json)?;
        Ok(Self::from_raw(raw))
    }

    fn from_raw(raw: Box<RawValue>) -> Self {
        Metadata((raw.get() != "null").then(|| Arc::from(raw)))
    }

    /// Whether there is no metadata.
    pub fn is_null(&self) -> bool {
        self.0.is_none()
    }

    /// The JSON text, `null` when there is none.
    pub fn as_json(&self) -> &str {
        self.0.as_deref().map_or("null", RawValue::get)
    }

    /// Parses the metadata as a JSON value.
    pub fn to_value(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::from_str(self.as_json())
    }

    /// Deserializes the metadata into `T`.
    pub fn deserialize<T: de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.as_json())
    }
}

impl PartialEq for Metadata {
    fn eq(&self, other: &Self) -> bool {
        self.as_json() == other.as_json()
    }
}

impl Eq for Metadata {}

impl fmt::Debug for Metadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_json())
    }
}

impl From<serde_json::Value> for Metadata {
    fn from(value: serde_json::Value) -> Self {
        Metadata::from_value(&value)
    }
}

/// Why an etcd value or an address was rejected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ValueError {
    /// Not JSON, not an object, or a field of the wrong type.
    #[error("not a naming update: {0}")]
    Json(#[source] serde_json::Error),
    /// Valid JSON that Go's `encoding/json` refuses to decode into a naming update (too deep,
    /// or a metadata number beyond float64).
    #[error("not a naming update: {0}")]
    GoRefuses(&'static str),
    /// No `Addr` field, or an empty one.
    #[error("no Addr")]
    MissingAddr,
    /// `Addr` is not `host:port`.
    #[error("Addr {addr:?} is not host:port: {reason}")]
    InvalidAddr {
        /// The address (truncated to 100 characters).
        addr: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Checks that `addr` is `host:port` with a non-zero port, where host is an IPv4 address, a DNS
/// name or a bracketed IPv6 address, so that `http://<addr>` is a valid URI authority.
pub fn validate_addr(addr: &str) -> Result<(), ValueError> {
    let bad = |reason| ValueError::InvalidAddr {
        addr: addr.chars().take(100).collect(),
        reason,
    };
    let (host, port) = if let Some(rest) = addr.strip_prefix('[') {
        let (v6, port) = rest.split_once("]:").ok_or_else(|| bad("no port"))?;
        v6.parse::<Ipv6Addr>()
            .map_err(|_| bad("invalid IPv6 address"))?;
        (v6, port)
    } else {
        let (host, port) = addr.rsplit_once(':').ok_or_else(|| bad("no port"))?;
        if host.contains(':') {
            return Err(bad("IPv6 addresses must be in brackets"));
        }
        if host.is_empty() {
            return Err(bad("empty host"));
        }
        let host_ok = host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_');
        if !host_ok || host.len() > 253 {
            return Err(bad("invalid host"));
        }
        (host, port)
    };
    if host.is_empty() {
        return Err(bad("empty host"));
    }
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("invalid port"));
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(bad("port out of range")),
        Ok(_) => Ok(()),
    }
}

/// The fields of Go's `internal.Update` as decoded by `encoding/json`.
struct WireIn {
    addr: Option<String>,
    metadata: Option<Box<RawValue>>,
}

impl<'de> Deserialize<'de> for WireIn {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(WireVisitor)
    }
}

struct WireVisitor;

impl<'de> Visitor<'de> for WireVisitor {
    type Value = WireIn;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object with Op, Addr and Metadata")
    }

    // Go decodes `null` into a struct as "no change": every field stays empty.
    fn visit_unit<E: de::Error>(self) -> Result<WireIn, E> {
        Ok(WireIn {
            addr: None,
            metadata: None,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<WireIn, A::Error> {
        let mut out = WireIn {
            addr: None,
            metadata: None,
        };
        while let Some(key) = map.next_key::<String>()? {
            if key.eq_ignore_ascii_case("addr") {
                // Go: `null` leaves a string field unchanged; anything but a string is an error.
                if let Some(addr) = map.next_value::<Option<String>>()? {
                    out.addr = Some(addr);
                }
            } else if key.eq_ignore_ascii_case("metadata") {
                // Go: `null` sets the `any` field to nil.
                let raw = map.next_value::<Box<RawValue>>()?;
                out.metadata = (raw.get() != "null").then_some(raw);
            } else if key.eq_ignore_ascii_case("op") {
                // Go's `Op` is a uint8: other types or out-of-range numbers fail the decode.
                map.next_value::<Option<u8>>()?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn decode(s: &str) -> Result<Endpoint, ValueError> {
        Endpoint::decode(s.as_bytes())
    }

    #[test]
    fn decodes_go_output() {
        let e = decode(r#"{"Op":0,"Addr":"192.0.2.25:50051","Metadata":null}"#).unwrap();
        assert_eq!(e.addr, "192.0.2.25:50051");
        assert!(e.metadata.is_null());
    }

    #[test]
    fn ignores_op_value_and_unknown_fields() {
        let e =
            decode(r#"{"Op":1,"Addr":"a:1","Extra":[1,{"x":2}],"Metadata":{"k":"v"}}"#).unwrap();
        assert_eq!(e.addr, "a:1");
        assert_eq!(e.metadata.to_value().unwrap(), json!({"k": "v"}));
    }

    #[test]
    fn field_names_are_case_insensitive_and_last_wins() {
        let e =
            decode(r#"{"addr":"a:1","ADDR":"b:2","metadata":1,"mEtAdAtA":{"z":null}}"#).unwrap();
        assert_eq!(e.addr, "b:2");
        assert_eq!(e.metadata.as_json(), r#"{"z":null}"#);
    }

    #[test]
    fn escaped_field_names_match_like_go() {
        let e = decode(r#"{"\u0041ddr":"a:1"}"#).unwrap();
        assert_eq!(e.addr, "a:1");
    }

    #[test]
    fn null_addr_keeps_earlier_value_and_null_metadata_clears() {
        let e = decode(r#"{"Addr":"a:1","Addr":null,"Metadata":{"x":1},"Metadata":null}"#).unwrap();
        assert_eq!(e.addr, "a:1");
        assert!(e.metadata.is_null());
    }

    #[test]
    fn metadata_is_kept_byte_for_byte() {
        let raw = r#"{"big":123456789012345678901234567890,"f":1.50,"s":"<>&\u00e9"}"#;
        let e = decode(&format!(r#"{{"Addr":"a:1","Metadata":{raw}}}"#)).unwrap();
        assert_eq!(e.metadata.as_json(), raw);
        let again = Endpoint::decode(e.encode().as_bytes()).unwrap();
        assert_eq!(again.metadata.as_json(), raw);
    }

    #[test]
    fn rejects_what_go_rejects() {
        for bad in [
            "not json",
            "[1,2]",
            r#""a string""#,
            "42",
            r#"{"Addr":5}"#,
            r#"{"Addr":"a:1","Op":"x"}"#,
            r#"{"Addr":"a:1","Op":256}"#,
            r#"{"Addr":"a:1","Op":-1}"#,
            r#"{"Addr":"a:1"} trailing"#,
            r#"{"Addr":"a:1""#,
        ] {
            assert!(matches!(decode(bad), Err(ValueError::Json(_))), "{bad}");
        }
    }

    #[test]
    fn rejects_missing_or_bad_addr() {
        assert!(matches!(decode("{}"), Err(ValueError::MissingAddr)));
        assert!(matches!(decode("null"), Err(ValueError::MissingAddr)));
        assert!(matches!(
            decode(r#"{"Addr":""}"#),
            Err(ValueError::MissingAddr)
        ));
        for bad in [
            "nohost",
            ":80",
            "h:",
            "h:0",
            "h:65536",
            "h:8o",
            "::1:80",
            "[::1]",
            "[zz]:80",
            "h h:80",
            "h/x:80",
            "http://h:80",
        ] {
            let v = json!({ "Addr": bad }).to_string();
            assert!(
                matches!(decode(&v), Err(ValueError::InvalidAddr { .. })),
                "{bad} accepted"
            );
        }
        for good in ["127.0.0.2:50051", "[::1]:80", "svc.ns.example:443", "h_1:1"] {
            let v = json!({ "Addr": good }).to_string();
            assert_eq!(decode(&v).unwrap().addr, good);
        }
    }

    /// Where serde_json alone would differ from Go's `encoding/json`, Go's verdict.
    #[test]
    fn go_verdicts_where_serde_json_differs() {
        let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        let deep = format!(r#"{{"Addr":"a:1","Metadata":{}}}"#, nested(10_000));
        assert!(matches!(
            decode(&deep),
            Err(ValueError::GoRefuses("nesting deeper than 10000"))
        ));
        let deepest_go_takes = format!(r#"{{"Addr":"a:1","Other":{}}}"#, nested(9_999));
        assert_eq!(decode(&deepest_go_takes).unwrap().addr, "a:1");
        assert!(matches!(
            decode(r#"{"Addr":"a:1","Metadata":{"w":-1e999}}"#),
            Err(ValueError::GoRefuses(_))
        ));
        // Outside the metadata Go never converts the number.
        assert!(decode(r#"{"Addr":"a:1","Other":1e999}"#).is_ok());
        let e = Endpoint::decode(b"{\"Addr\":\"a:1\",\"Metadata\":\"\xff\"}").unwrap();
        assert_eq!(e.metadata.to_value().unwrap(), json!("\u{fffd}"));
    }

    #[test]
    fn garbage_does_not_panic() {
        let garbage: Vec<u8> = (0..2_000_000u64).map(|i| (i * 7919 % 251) as u8).collect();
        assert!(Endpoint::decode(&garbage).is_err());
        let deep = "[".repeat(100_000);
        assert!(Endpoint::decode(deep.as_bytes()).is_err());
        let deep_meta = format!(r#"{{"Addr":"a:1","Metadata":{}}}"#, "[".repeat(100_000));
        assert!(Endpoint::decode(deep_meta.as_bytes()).is_err());
    }

    #[test]
    fn same_bytes_as_the_operator_for_the_same_metadata() {
        let meta = json!({"zone": "a<b>&c", "tier": "gold", "w": 1.0, "u": "\u{2028}"});
        let ours = Endpoint::new("192.0.2.7:50051", meta.clone().into())
            .unwrap()
            .encode();
        let operator = registrar_etcd::value::encode("192.0.2.7:50051", meta.as_object());
        assert_eq!(ours, operator);
        assert!(ours.contains(r"a\u003cb\u003e\u0026c"), "{ours}");
    }

    #[test]
    fn encodes_go_shape() {
        let e = Endpoint::new("127.0.0.2:1", Metadata::null()).unwrap();
        assert_eq!(
            e.encode(),
            r#"{"Op":0,"Addr":"127.0.0.2:1","Metadata":null}"#
        );
        let e = Endpoint::new("h:2", json!({"pod": "p", "n": [1, 2]}).into()).unwrap();
        assert_eq!(
            e.encode(),
            r#"{"Op":0,"Addr":"h:2","Metadata":{"n":[1,2],"pod":"p"}}"#
        );
        assert!(Endpoint::new("bad", Metadata::null()).is_err());
    }

    #[test]
    fn metadata_from_json() {
        assert!(Metadata::from_json(" null ").unwrap().is_null());
        assert_eq!(Metadata::from_json(" [1] ").unwrap().as_json(), "[1]");
        assert!(Metadata::from_json("{").is_err());
        #[derive(serde::Deserialize)]
        struct M {
            zone: String,
        }
        let m: M = Metadata::from_json(r#"{"zone":"a"}"#)
            .unwrap()
            .deserialize()
            .unwrap();
        assert_eq!(m.zone, "a");
    }
}
mod go_json;

#[cfg(test)]
mod props;
