//! Fuzz targets of the resolver's parsers of untrusted input, on stable (the harness of
//! `registrar_testenv::fuzz`): the etcd value decoder and the `grpc-timeout` header. Each
//! replays `resolver/fuzz/corpus/<target>/` first, then runs generated inputs for
//! `REGISTRAR_FUZZ_SECS` (default 3 s).

use std::path::PathBuf;
use std::time::Duration;

use registrar_testenv::fuzz::fuzz;

use crate::balancer::grpc_timeout;
use crate::value::{Endpoint, validate_addr};

fn corpus(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

const VALUE_TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b",",
    b"\"",
    b"\\",
    b"\\u",
    b"\\ud800",
    b"null",
    b"true",
    b"\"Addr\"",
    b"\"addr\"",
    b"\"Metadata\"",
    b"\"Op\"",
    b"\"Op\":0",
    b"\"Op\":256",
    b"\"Addr\":\"127.0.0.1:1\"",
    b"\"Addr\":\"[::1]:80\"",
    b"1e999",
    b"-0",
    b"0.5",
    b"123456789012345678901234567890",
    b"\xef\xbb\xbf",
    b"\xff",
    b"\xc3\xa9",
    b" ",
    b"\n",
    b"[[[[[[[[[[[[[[[[",
    b":65536",
    b":0",
];

/// The decoder never panics, and what it accepts is consistent: a valid address, and an
/// encoding that decodes to the same endpoint.
#[test]
fn fuzz_etcd_value() {
    let report = fuzz("etcd_value", &corpus("etcd_value"), VALUE_TOKENS, |bytes| {
        if let Ok(e) = Endpoint::decode(bytes) {
            assert!(validate_addr(&e.addr).is_ok(), "accepted {:?}", e.addr);
            let again = Endpoint::decode(e.encode().as_bytes()).expect("own encoding refused");
            assert_eq!(again, e);
        }
    });
    assert!(report.corpus > 0, "the corpus is missing");
}

/// gRPC's `TimeoutValue TimeoutUnit`: 1 to 8 ASCII digits and one of `HMSmun`.
fn spec_timeout(value: &[u8]) -> Option<Duration> {
    let (unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The `grpc-timeout` parser agrees with the specification on every header value.
#[test]
fn fuzz_grpc_timeout() {
    let tokens: &[&[u8]] = &[
        b"H",
        b"M",
        b"S",
        b"m",
        b"u",
        b"n",
        b"+",
        b"-",
        b"0",
        b"9",
        b"99999999",
        b".",
        b" ",
        b"\xc3\xa9",
    ];
    let report = fuzz("grpc_timeout", &corpus("grpc_timeout"), tokens, |bytes| {
        let Ok(value) = http::HeaderValue::from_bytes(bytes) else {
            return;
        };
        let mut headers = http::HeaderMap::new();
        headers.insert("grpc-timeout", value);
        assert_eq!(
            grpc_timeout(&headers),
            spec_timeout(bytes),
            "{:?}",
            String::from_utf8_lossy(bytes)
        );
    });
    assert!(report.corpus > 0, "the corpus is missing");
}
