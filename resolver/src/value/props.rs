//! Property tests of the value codec: decode(encode(x)) == x for random endpoints and metadata
//! (through both the resolver's and the operator's encoder), and the decoder never panics on
//! arbitrary bytes, deep nesting, huge numbers, invalid UTF-8, a BOM or trailing data, with the
//! verdicts Go's `encoding/json` gives where they are fixed.

use proptest::prelude::*;
use serde_json::{Map, Value};

use super::*;

fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|o| std::net::Ipv4Addr::from(o).to_string()),
        any::<[u16; 8]>().prop_map(|s| format!("[{}]", Ipv6Addr::from(s))),
        "[a-z0-9_-]{1,20}(\\.[a-z0-9-]{1,10}){0,3}",
    ]
}

fn addr() -> impl Strategy<Value = String> {
    (host(), 1u16..).prop_map(|(h, p)| format!("{h}:{p}"))
}

/// A number that survives Go's float64 formatting and parsing unchanged as a JSON value:
/// integers, and floats with a fraction.
fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite with a fraction", |f| f.is_finite()
                && f.fract() != 0.0)
            .prop_map(Value::from),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        any::<String>().prop_map(Value::String),
        "[<>&\"\\\\\u{2028}\u{2029}\u{0}-\u{1f}a-z]{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(any::<String>(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn metadata_map() -> impl Strategy<Value = Map<String, Value>> {
    proptest::collection::btree_map(any::<String>(), json_value(), 0..6)
        .prop_map(|m| m.into_iter().collect())
}

/// A valid value to mutate: what the operator writes.
fn valid_value() -> impl Strategy<Value = Vec<u8>> {
    (addr(), proptest::option::of(metadata_map()))
        .prop_map(|(a, m)| registrar_etcd::value::encode(&a, m.as_ref()).into_bytes())
}

/// Ways an etcd value can be broken.
#[derive(Clone, Debug)]
enum Damage {
    Truncate(usize),
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        any::<usize>().prop_map(Damage::Truncate),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Damage::Flip(i, b)),
        (
            any::<usize>(),
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 1..8),
                Just(b"\xef\xbb\xbf".to_vec()),
                Just(b"\xff\xfe".to_vec()),
                Just(b"\\ud800".to_vec()),
                Just(b"1e999999".to_vec()),
                Just(b"-".to_vec()),
                Just("9".repeat(400).into_bytes()),
                (1usize..3000).prop_map(|n| "[".repeat(n).into_bytes()),
                Just(b"{}".to_vec()),
            ]
        )
            .prop_map(|(i, b)| Damage::Insert(i, b)),
    ]
}

fn apply(mut bytes: Vec<u8>, damage: &Damage) -> Vec<u8> {
    let at = |i: usize, len: usize| if len == 0 { 0 } else { i % (len + 1) };
    match damage {
        Damage::Truncate(i) => bytes.truncate(at(*i, bytes.len())),
        Damage::Flip(i, b) => {
            if !bytes.is_empty() {
                let i = i % bytes.len();
                bytes[i] ^= b | 1;
            }
        }
        Damage::Insert(i, ins) => {
            let i = at(*i, bytes.len());
            bytes.splice(i..i, ins.iter().copied());
        }
    }
    bytes
}

/// The decoder's contract on anything it accepts: a valid address, and metadata that is JSON
/// and encodes back to a value that decodes to the same endpoint.
fn check_accepted(e: &Endpoint) -> Result<(), TestCaseError> {
    prop_assert!(validate_addr(&e.addr).is_ok());
    prop_assert!(serde_json::from_str::<serde::de::IgnoredAny>(e.metadata.as_json()).is_ok());
    let again = Endpoint::decode(e.encode().as_bytes());
    prop_assert_eq!(again.as_ref().ok(), Some(e));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// decode(encode(x)) == x, for the resolver's encoder and the operator's.
    #[test]
    fn round_trip(addr in addr(), metadata in proptest::option::of(metadata_map())) {
        let value = metadata.clone().map_or(Value::Null, Value::Object);
        let endpoint = Endpoint::new(addr.clone(), Metadata::from_value(&value)).unwrap();
        let encoded = endpoint.encode();
        let decoded = Endpoint::decode(encoded.as_bytes()).unwrap();
        prop_assert_eq!(&decoded, &endpoint);
        // Compared as text: serde_json's default float parser is not always correctly rounded
        // (one ULP off, e.g. -1.3085659247945373e-286), so values are compared by
        // `go_floats_round_trip` below instead.
        let want = Metadata::from_value(&value);
        prop_assert_eq!(decoded.metadata.as_json(), want.as_json());
        if !value.is_null() {
            prop_assert_eq!(decoded.metadata.as_json(), registrar_etcd::value::to_go_json(&value));
        }
        // The operator's encoder writes the same bytes for the same metadata (it writes `null`
        // for an empty map, where Go's `json.Marshal`, and so the resolver, writes `{}`).
        let empty = metadata.as_ref().is_none_or(Map::is_empty);
        let operator = registrar_etcd::value::encode(&addr, metadata.as_ref());
        if !empty {
            prop_assert_eq!(&operator, &encoded);
        }
        prop_assert_eq!(Endpoint::decode(operator.as_bytes()).unwrap().addr, addr);
    }

    /// Arbitrary bytes: an error or a consistent endpoint, never a panic.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(e) = Endpoint::decode(&bytes) {
            check_accepted(&e)?;
        }
    }

    /// Damaged valid values: an error or a consistent endpoint, never a panic.
    #[test]
    fn damaged_values_never_panic(value in valid_value(), damages in proptest::collection::vec(damage(), 1..4)) {
        let bytes = damages.iter().fold(value, apply);
        if let Ok(e) = Endpoint::decode(&bytes) {
            check_accepted(&e)?;
        }
    }

    /// Fixed verdicts around a valid value: a BOM, trailing data or invalid UTF-8 outside
    /// strings are refused (as Go refuses them); trailing whitespace is not.
    #[test]
    fn fixed_verdicts(value in valid_value(), ws in "[ \t\r\n]{0,4}", tail in "[^ \t\r\n]{1,4}") {
        prop_assert!(Endpoint::decode(&value).is_ok());
        let with = |pre: &[u8], post: &[u8]| [pre, &value, post].concat();
        prop_assert!(Endpoint::decode(&with(ws.as_bytes(), ws.as_bytes())).is_ok());
        prop_assert!(Endpoint::decode(&with(b"\xef\xbb\xbf", b"")).is_err(), "BOM accepted");
        prop_assert!(Endpoint::decode(&with(b"", tail.as_bytes())).is_err(), "trailing data accepted");
        prop_assert!(Endpoint::decode(&with(b"", b"\xff")).is_err(), "invalid UTF-8 accepted");
        prop_assert!(Endpoint::decode(&value[..value.len() - 1]).is_err(), "truncated value accepted");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Go's float64 format reads back to the same number (with a correctly rounded parser, as
    /// Go's), and uses an exponent exactly outside 1e-6 <= |f| < 1e21.
    #[test]
    fn go_floats_round_trip(f in any::<f64>().prop_filter("finite", |f| f.is_finite())) {
        let text = registrar_etcd::value::to_go_json(&Value::from(f));
        prop_assert_eq!(text.parse::<f64>().ok(), Some(f), "{}", text);
        let abs = f.abs();
        let plain = abs == 0.0 || (1e-6..1e21).contains(&abs);
        prop_assert_eq!(!text.contains('e'), plain, "{}", text);
    }
}

#[test]
fn deep_nesting_and_huge_numbers_do_not_panic() {
    for depth in [1usize, 127, 128, 129, 10_000, 1_000_000] {
        let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        for value in [
            nested.clone(),
            format!(r#"{{"Addr":"a:1","Metadata":{nested}}}"#),
            format!(r#"{{"Addr":"a:1","Other":{nested}}}"#),
            format!(r#"{{"Addr":{nested}}}"#),
        ] {
            if let Ok(e) = Endpoint::decode(value.as_bytes()) {
                assert_eq!(e.addr, "a:1", "depth {depth}");
            }
        }
    }
    for number in [
        "1e999999",
        "-1e999999",
        "1e-999999",
        &"9".repeat(100_000),
        "-0",
    ] {
        let v = format!(r#"{{"Addr":"a:1","Metadata":{number},"Op":0}}"#);
        let _ = Endpoint::decode(v.as_bytes());
        let v = format!(r#"{{"Addr":"a:1","Op":{number}}}"#);
        assert!(Endpoint::decode(v.as_bytes()).is_err(), "Op {number}");
    }
}
