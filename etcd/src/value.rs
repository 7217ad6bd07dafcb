//! The etcd key and value of one endpoint, byte-compatible with etcd's gRPC naming convention
//! (`go.etcd.io/etcd/client/v3/naming/endpoints`): the one encoder of the project. The operator
//! writes its values with [`encode`]; the resolver's `Registration` with [`encode_raw`] around
//! metadata it made with [`to_go_json`], so the same metadata gives the same bytes whoever
//! writes it.
//!
//! The value is what Go's `json.Marshal` produces for `internal.Update{Op: Add, Addr, Metadata}`:
//! `{"Op":0,"Addr":"192.0.2.25:50051","Metadata":null}`. We encode it by hand rather than through
//! serde so that the bytes are exactly Go's, which matters because the writer compares values
//! byte for byte to find drift:
//!
//! - fields in the order `Op`, `Addr`, `Metadata`; `Op` is always `0` (an add; removal is a
//!   deletion of the key, never `"Op":1`);
//! - `Metadata` is `null` when there is none, *and* when the map is empty (the contract: "null when
//!   there is nothing");
//! - object keys are sorted by their UTF-8 bytes at every depth, like Go sorts map keys;
//! - strings are escaped like Go's default (HTML-safe) encoder: `"` `\\` `\b` `\f` `\n` `\r`
//!   `\t` get short escapes, other control characters `\u00XX`, and `<` `>` `&` U+2028 U+2029
//!   become `\u003c` `\u003e` `\u0026` `\u2028` `\u2029`. This is what the Go registration
//!   library writes (it calls `json.Marshal`), and every JSON decoder (Go's included) accepts it;
//! - integers are written exactly; other numbers like Go formats a `float64` (`1.5`, `1e+21`,
//!   `1e-7`), integral floats without a fraction (`2.0` becomes `2`).

use serde_json::{Map, Number, Value};

/// The etcd key of endpoint `addr` in `target` (`<prefix>/<namespace>/<service>`):
/// `<target>/<addr>`, e.g. `registrar/shop/greeter/192.0.2.25:50051`.
pub fn key(target: &str, addr: &str) -> String {
    format!("{target}/{addr}")
}

/// The etcd value of endpoint `addr`: exactly Go's `internal.Update` JSON (see the module docs).
pub fn encode(addr: &str, metadata: Option<&Map<String, Value>>) -> String {
    let mut out = String::with_capacity(40 + addr.len());
    out.push_str(r#"{"Op":0,"Addr":"#);
    write_string(&mut out, addr);
    out.push_str(r#","Metadata":"#);
    match metadata {
        Some(map) if !map.is_empty() => write_object(&mut out, map),
        _ => out.push_str("null"),
    }
    out.push('}');
    out
}

/// The etcd value of endpoint `addr` with metadata that is already JSON text (`None` or
/// `"null"` for none), written verbatim: what a reader decoded stays byte for byte. Metadata made
/// from a value should come from [`to_go_json`].
pub fn encode_raw(addr: &str, metadata: Option<&str>) -> String {
    let metadata = metadata.unwrap_or("null");
    let mut out = String::with_capacity(40 + addr.len() + metadata.len());
    out.push_str(r#"{"Op":0,"Addr":"#);
    write_string(&mut out, addr);
    out.push_str(r#","Metadata":"#);
    out.push_str(metadata);
    out.push('}');
    out
}

/// A JSON value as Go's `json.Marshal` writes it (sorted keys, HTML-safe escapes, Go's number
/// format; see the module docs).
pub fn to_go_json(value: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, value);
    out
}

fn write_value(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => write_number(out, n),
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => write_object(out, map),
    }
}

fn write_object(out: &mut String, map: &Map<String, Value>) {
    // Sorted explicitly: serde_json's `preserve_order` feature (which any crate in the build may
    // switch on) would otherwise keep insertion order.
    let mut entries: Vec<(&String, &Value)> = map.iter().collect();
    entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    out.push('{');
    for (i, (k, v)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_string(out, k);
        out.push(':');
        write_value(out, v);
    }
    out.push('}');
}

fn write_number(out: &mut String, n: &Number) {
    if let Some(u) = n.as_u64() {
        out.push_str(&u.to_string());
    } else if let Some(i) = n.as_i64() {
        out.push_str(&i.to_string());
    } else if let Some(f) = n.as_f64().filter(|f| f.is_finite()) {
        write_go_float(out, f);
    } else {
        // Only reachable with serde_json's arbitrary_precision: keep the number's own text.
        out.push_str(&n.to_string());
    }
}

/// Go's `encoding/json` float64 format: shortest round-trip digits, plain notation for
/// 1e-6 <= |f| < 1e21, otherwise exponent notation with a sign and at least one digit (`1e+21`).
fn write_go_float(out: &mut String, f: f64) {
    let abs = f.abs();
    if abs == 0.0 || (1e-6..1e21).contains(&abs) {
        // Rust's Display is also shortest round-trip and never uses an exponent.
        out.push_str(&format!("{f}"));
    } else {
        let s = format!("{f:e}");
        match s.split_once('e') {
            Some((mantissa, exp)) if !exp.starts_with('-') => {
                out.push_str(mantissa);
                out.push_str("e+");
                out.push_str(exp);
            }
            _ => out.push_str(&s),
        }
    }
}

fn write_string(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{00}'..='\u{1f}' => {
                let b = c as u32;
                out.push_str("\\u00");
                out.push(char::from(HEX[(b >> 4) as usize & 0xf]));
                out.push(char::from(HEX[b as usize & 0xf]));
            }
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            other => panic!("not an object: {other}"),
        }
    }

    #[test]
    fn key_is_target_slash_addr() {
        assert_eq!(
            key("registrar/shop/greeter", "192.0.2.25:50051"),
            "registrar/shop/greeter/192.0.2.25:50051"
        );
        assert_eq!(
            key("registrar/shop/greeter", "[fd00::5]:50051"),
            "registrar/shop/greeter/[fd00::5]:50051"
        );
    }

    #[test]
    fn no_metadata_is_null() {
        assert_eq!(
            encode("192.0.2.25:50051", None),
            r#"{"Op":0,"Addr":"192.0.2.25:50051","Metadata":null}"#
        );
        assert_eq!(
            encode("192.0.2.25:50051", Some(&Map::new())),
            r#"{"Op":0,"Addr":"192.0.2.25:50051","Metadata":null}"#
        );
    }

    #[test]
    fn ipv6_address() {
        assert_eq!(
            encode("[fd00::5]:50051", None),
            r#"{"Op":0,"Addr":"[fd00::5]:50051","Metadata":null}"#
        );
    }

    #[test]
    fn metadata_keys_sorted_at_every_depth() {
        let m = map(json!({"tier": "gold", "pod": "greeter-0", "node": "n1",
                           "z": {"b": 1, "a": [true, null, "x"]}}));
        assert_eq!(
            encode("192.0.2.25:50051", Some(&m)),
            r#"{"Op":0,"Addr":"192.0.2.25:50051","Metadata":{"node":"n1","pod":"greeter-0","tier":"gold","z":{"a":[true,null,"x"],"b":1}}}"#
        );
    }

    #[test]
    fn sorting_is_by_bytes_like_go() {
        // 'Z' (0x5a) < '_' (0x5f) < 'a' (0x61) < 'é' (0xc3 0xa9)
        let m = map(json!({"é": 1, "a": 2, "_": 3, "Z": 4}));
        assert_eq!(
            encode("a:1", Some(&m)),
            r#"{"Op":0,"Addr":"a:1","Metadata":{"Z":4,"_":3,"a":2,"é":1}}"#
        );
    }

    #[test]
    fn strings_escaped_like_go_html_safe() {
        let m = map(
            json!({"html": "<a href=\"x\">&</a>", "ctl": "\u{1}\u{8}\u{c}\n\r\t\u{1f}\u{7f}",
                           "sep": "\u{2028}\u{2029}", "back": "a\\b", "uni": "ü😀"}),
        );
        assert_eq!(
            encode("a:1", Some(&m)),
            concat!(
                r#"{"Op":0,"Addr":"a:1","Metadata":{"back":"a\\b","#,
                r#""ctl":"\u0001\b\f\n\r\t\u001f"#,
                "\u{7f}",
                r#"","html":"\u003ca href=\"x\"\u003e\u0026\u003c/a\u003e","#,
                r#""sep":"\u2028\u2029","uni":"ü😀"}}"#
            )
        );
    }

    #[test]
    fn numbers_like_go() {
        let m = map(
            json!({"a": 1, "b": -7, "c": 1.5, "d": 2.0, "e": 1e21, "f": 1e-7,
                           "g": 0.000001, "h": 18446744073709551615u64, "i": -0.0, "j": 123456.789e3}),
        );
        assert_eq!(
            encode("a:1", Some(&m)),
            r#"{"Op":0,"Addr":"a:1","Metadata":{"a":1,"b":-7,"c":1.5,"d":2,"e":1e+21,"f":1e-7,"g":0.000001,"h":18446744073709551615,"i":-0,"j":123456789}}"#
        );
    }

    /// The expected string is the output of Go 1.26's `json.Marshal` of an `internal.Update`
    /// whose Metadata is this input unmarshalled into a `map[string]interface{}`.
    #[test]
    fn matches_go_json_marshal_golden() {
        let input = r#"{"back":"a\\b","ctl":"\u0001\b\f\n\r\t\u001f\u007f","html":"<a href=\"x\">&</a>","sep":"\u2028\u2029","uni":"ü😀","é":1,"a":2,"_":3,"Z":4,"c":1.5,"d":2.0,"e":1e21,"f":1e-7,"g":0.000001,"i":-0.0,"j":123456.789e3}"#;
        let go = concat!(
            r#"{"Op":0,"Addr":"192.0.2.25:50051","Metadata":{"Z":4,"_":3,"a":2,"back":"a\\b","c":1.5,"#,
            r#""ctl":"\u0001\b\f\n\r\t\u001f"#,
            "\u{7f}",
            r#"","d":2,"e":1e+21,"f":1e-7,"g":0.000001,"#,
            r#""html":"\u003ca href=\"x\"\u003e\u0026\u003c/a\u003e","i":-0,"j":123456789,"#,
            r#""sep":"\u2028\u2029","uni":"ü😀","é":1}}"#
        );
        let m = map(serde_json::from_str(input).unwrap());
        assert_eq!(encode("192.0.2.25:50051", Some(&m)), go);
    }

    #[test]
    fn output_is_valid_json_with_go_field_names() {
        let m = map(json!({"tier": "<gold>", "n": [1, 2.5]}));
        let v: Value = serde_json::from_str(&encode("192.0.2.11:80", Some(&m))).unwrap();
        assert_eq!(
            v,
            json!({"Op": 0, "Addr": "192.0.2.11:80", "Metadata": {"tier": "<gold>", "n": [1, 2.5]}})
        );
    }

    #[test]
    fn raw_and_structured_encoders_agree() {
        let meta = map(json!({"z": "<b>", "a": [1, 2.5], "m": {"y": 1, "x": null}}));
        let raw = to_go_json(&Value::Object(meta.clone()));
        assert_eq!(
            encode_raw("192.0.2.1:1", Some(&raw)),
            encode("192.0.2.1:1", Some(&meta))
        );
        assert_eq!(encode_raw("h:1", None), encode("h:1", None));
        assert_eq!(
            encode_raw("h:1", Some(r#"{"keep":1.50}"#)),
            r#"{"Op":0,"Addr":"h:1","Metadata":{"keep":1.50}}"#,
            "raw metadata is written verbatim"
        );
    }
}
