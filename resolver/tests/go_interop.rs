//! Interoperability with etcd's Go implementation of gRPC naming, both directions:
//!
//! - a grpc-go client with `naming/resolver` and `round_robin` calls Rust tonic servers that
//!   registered themselves with [`Registration`];
//! - Go servers registered with `naming/endpoints.Manager` are discovered and balanced by the
//!   Rust [`Balancer`];
//! - the JSON values each side writes decode on the other side, for a table of metadata values.
//!
//! The Go side is the module in `tests/interop`, built with the machine's Go (`GOTOOLCHAIN=local`,
//! `$GO` or `go` on `PATH`) into cargo's target dir, rebuilt only when its sources change.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use common::*;
use registrar_resolver::{Balancer, Endpoint, Metadata, Resolver, SharedLease};
use registrar_testenv::greeter::{self, GreeterClient};
use registrar_testenv::{Etcd, Process, poll};
use serde_json::{Value, json};

fn interop_source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

/// Builds (once per source version) and returns the Go interop binary.
fn interop_binary() -> Result<PathBuf> {
    registrar_testenv::go_build(
        &interop_source(),
        Path::new(env!("CARGO_TARGET_TMPDIR")),
        "interop",
    )
}

/// Runs the interop binary to completion; its stdout.
async fn run_go(args: &[&str]) -> Result<String> {
    let bin = interop_binary()?;
    let out = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::process::Command::new(&bin)
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("interop timed out")??;
    if !out.status.success() {
        bail!(
            "interop {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// A Go Greeter server registered by `endpoints.Manager`; killed on drop.
struct GoServer {
    process: Process,
    addr: String,
    _dir: tempfile::TempDir,
}

async fn go_server(etcd: &Etcd, target: &str, ip: u8, name: &str) -> Result<GoServer> {
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("serve.log");
    let mut cmd = Command::new(interop_binary()?);
    cmd.args(["serve", "-etcd", &etcd.endpoint(), "-target", target])
        .args(["-addr", &format!("127.0.0.{ip}:0"), "-name", name]);
    let process = Process::spawn(&format!("go-{name}"), cmd, &log)?;
    let addr = go_ready_addr(&log, &format!("Go server {name}")).await?;
    Ok(GoServer {
        process,
        addr,
        _dir: dir,
    })
}

fn ratio(counts: &BTreeMap<String, u64>) -> f64 {
    let max = counts.values().max().copied().unwrap_or(0) as f64;
    let min = counts.values().min().copied().unwrap_or(0) as f64;
    max / min
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_client_balances_over_rust_registered_servers() -> Result<()> {
    init_tracing();
    let etcd = Etcd::start().await?;
    let t = target("go-client");
    let lease = SharedLease::grant(etcd.client().await?, Duration::from_secs(10)).await?;
    let mut servers = Vec::new();
    let mut registrations = Vec::new();
    for (i, n) in [80u8, 81, 82].into_iter().enumerate() {
        let s = greeter::serve(loopback(n), format!("rust{i}")).await;
        let endpoint = Endpoint::new(s.addr().to_string(), json!({"lang": "rust"}).into())?;
        registrations.push(lease.register(&t, endpoint).await?);
        servers.push(s);
    }
    // grpc-go sends the target path as :authority unless told otherwise; tonic (h2) rejects it.
    let err = run_go(&[
        "client",
        "-etcd",
        &etcd.endpoint(),
        "-target",
        &t,
        "-n",
        "1",
    ])
    .await
    .expect_err("h2 accepted an :authority with slashes; update the docs");
    assert!(err.to_string().contains("PROTOCOL_ERROR"), "{err:#}");

    let out = run_go(&[
        "client",
        "-etcd",
        &etcd.endpoint(),
        "-target",
        &t,
        "-authority",
        "greeter",
        "-n",
        "300",
        "-expect",
        "3",
    ])
    .await?;
    let counts: BTreeMap<String, u64> = serde_json::from_str(out.trim())?;
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(ratio(&counts) <= 1.05, "grpc-go spread {counts:?}");
    for s in &servers {
        assert!(s.served() >= counts[s.name()], "{}", s.name());
    }

    // A deregistered server is dropped by the Go resolver too.
    let gone = registrations.remove(1);
    gone.deregister().await?;
    let out = run_go(&[
        "client",
        "-etcd",
        &etcd.endpoint(),
        "-target",
        &t,
        "-authority",
        "greeter",
        "-n",
        "100",
        "-expect",
        "2",
    ])
    .await?;
    let counts: BTreeMap<String, u64> = serde_json::from_str(out.trim())?;
    assert_eq!(
        counts.keys().cloned().collect::<Vec<_>>(),
        ["rust0", "rust2"],
        "{counts:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_balancer_over_go_registered_servers() -> Result<()> {
    init_tracing();
    let etcd = Etcd::start().await?;
    let t = target("go-servers");
    let mut go = Vec::new();
    for (i, n) in [83u8, 84, 85].into_iter().enumerate() {
        go.push(go_server(&etcd, &t, n, &format!("go{i}")).await?);
    }
    let balancer = Balancer::builder(etcd.client().await?, &t).build().await?;
    wait_ready(&balancer, 3).await?;
    // Go's metadata arrives intact.
    let snapshot = balancer.resolver().snapshot();
    let e = snapshot
        .endpoints()
        .get(&format!("{t}/{}", go[0].addr))
        .context("go0 not discovered")?;
    assert_eq!(e.metadata.to_value()?, json!({"lang": "go", "name": "go0"}));

    let mut client = GreeterClient::new(balancer.clone());
    let counts = spread(&mut client, 300).await?;
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(counts.values().all(|c| *c == 100), "{counts:?}");

    // Graceful stop: Go deletes its endpoint, the Rust balancer drops it.
    let stopped = go.remove(1);
    let stopped_addr = stopped.addr.clone();
    let mut process = stopped.process;
    tokio::task::spawn_blocking(move || process.terminate(Duration::from_secs(5))).await?;
    poll(
        "the stopped Go server to leave",
        Duration::from_secs(10),
        || async {
            balancer
                .backends()
                .iter()
                .all(|b| b.addr != stopped_addr)
                .then_some(())
        },
    )
    .await?;
    let counts = spread(&mut client, 200).await?;
    assert_eq!(
        counts,
        BTreeMap::from([("go0".to_string(), 100), ("go2".to_string(), 100)])
    );
    Ok(())
}

/// Metadata values exchanged in both directions, as JSON text (numbers beyond 64 bits must
/// survive as written).
const METADATA: &[&str] = &[
    "null",
    r#""tags <b>&amp; \"quotes\" \\ / \u0000""#,
    r#""日本語 ✓ é \u2028\u2029 🦀""#,
    r#"{"nested":{"list":[1,"x",true,null,{"deep":[]}],"empty":{}},"<key>":"&"}"#,
    "18446744073709551615",
    "-9223372036854775808",
    "123456789012345678901234567890",
    "1.5e+300",
    "0.1",
    r#""""#,
    "[]",
    "true",
    r#"{"pod":"greeter-7d4b9c-x2x","node":"node-1","zone":"a"}"#,
];

/// Equal as JSON, with numbers compared as the f64 a Go reader holds (`any` decodes numbers to
/// float64).
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_json(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_decode_on_the_other_side() -> Result<()> {
    init_tracing();
    let etcd = Etcd::start().await?;
    let table: Vec<Value> = METADATA
        .iter()
        .map(|raw| serde_json::from_str(raw))
        .collect::<Result<_, _>>()?;

    // Rust writes (Registration), Go reads (endpoints.Manager.List).
    let rust_target = target("rust-writes");
    let lease = SharedLease::grant(etcd.client().await?, Duration::from_secs(10)).await?;
    let mut regs = Vec::new();
    for (i, raw) in METADATA.iter().enumerate() {
        let addr = format!("127.0.0.90:{}", 1000 + i);
        let endpoint = Endpoint::new(addr, Metadata::from_json(raw)?)?;
        regs.push(lease.register(&rust_target, endpoint).await?);
    }
    let out = run_go(&["list", "-etcd", &etcd.endpoint(), "-target", &rust_target]).await?;
    let listed: BTreeMap<String, Value> = serde_json::from_str(out.trim())?;
    assert_eq!(listed.len(), table.len(), "{listed:?}");
    for (i, md) in table.iter().enumerate() {
        let addr = format!("127.0.0.90:{}", 1000 + i);
        let got = &listed[&format!("{rust_target}/{addr}")];
        assert_eq!(got["Addr"], json!(addr));
        assert!(
            same_json(&got["Metadata"], md),
            "Go read {:?} for {md:?}",
            got["Metadata"]
        );
    }

    // Go writes (endpoints.Manager.AddEndpoint), Rust reads (Resolver).
    let go_target = target("go-writes");
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("in.jsonl");
    let mut lines = String::new();
    for (i, raw) in METADATA.iter().enumerate() {
        let addr = format!("127.0.0.91:{}", 1000 + i);
        let key = json!(format!("{go_target}/{addr}"));
        lines.push_str(&format!(
            r#"{{"key":{key},"addr":"{addr}","metadata":{raw}}}"#
        ));
        lines.push('\n');
    }
    std::fs::write(&input, lines)?;
    let input = input.to_string_lossy().into_owned();
    run_go(&[
        "write",
        "-etcd",
        &etcd.endpoint(),
        "-target",
        &go_target,
        "-in",
        &input,
    ])
    .await?;
    let resolver = Resolver::new(etcd.client().await?, &go_target).await?;
    let snapshot = resolver.snapshot();
    assert_eq!(snapshot.len(), table.len());
    let mut kv = etcd.client().await?;
    for (i, md) in table.iter().enumerate() {
        let addr = format!("127.0.0.91:{}", 1000 + i);
        let key = format!("{go_target}/{addr}");
        let endpoint = &snapshot.endpoints()[&key];
        assert_eq!(endpoint.addr, addr);
        let got: Value = serde_json::from_str(endpoint.metadata.as_json())?;
        assert_eq!(&got, md, "for {key}");
        // Numbers stay exact, even beyond 64 bits: the metadata is kept as written.
        if md.is_number() {
            assert_eq!(endpoint.metadata.as_json(), METADATA[i], "for {key}");
        }
        assert_eq!(endpoint.metadata.is_null(), md.is_null());
        // Go's writer escapes <, > and & as \u003c…; decoded they are the same text.
        let stored = kv.get(key.as_str(), None).await?;
        let stored = String::from_utf8_lossy(stored.kvs()[0].value()).into_owned();
        if md.to_string().contains('<') {
            assert!(stored.contains("\\u003c"), "{stored}");
        }
        assert!(stored.starts_with(r#"{"Op":0,"Addr":"#), "{stored}");
    }
    drop(regs);
    Ok(())
}

/// Calls after `since_ms` (unix ms) in the Go follower's log: (answered by `backend`, failed).
fn go_calls_since(log: &Path, since_ms: u128, backend: &str) -> (usize, usize) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut ok = 0;
    let mut failed = 0;
    for line in text.lines() {
        let mut parts = line.splitn(3, ' ');
        let (Some(ts), Some(kind), rest) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if ts.parse::<u128>().map_or(true, |t| t < since_ms) {
            continue;
        }
        match kind {
            "OK" if rest == Some(backend) => ok += 1,
            "ERR" => failed += 1,
            _ => {}
        }
    }
    (ok, failed)
}

fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// etcd wiped under a grpc-go client (etcd's resolver, round_robin) and a Rust balancer that
/// follow the same target, then the set replaced. The Rust balancer must recover; what Go does
/// is reported, not asserted (it resumes its watch at a revision the fresh store has not reached).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_etcd_wipe_rust_recovers_and_go_is_reported() -> Result<()> {
    init_tracing();
    let mut etcd = Etcd::start().await?;
    let mut kv = etcd.client().await?;
    let t = target("go-wipe");
    let mut old = greeter::serve(loopback(84), "old".into()).await;
    let new = greeter::serve(loopback(85), "new".into()).await;
    put_endpoint(&mut kv, &t, old.addr()).await?;
    advance_revision(&mut kv, 30).await?;
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("follow.log");
    let mut cmd = Command::new(interop_binary()?);
    cmd.args(["follow", "-etcd", &etcd.endpoint(), "-target", &t])
        .args(["-authority", "greeter", "-duration", "60s"]);
    let _go = Process::spawn("go-follow", cmd, &log)?;
    poll(
        "the Go client on the old backend",
        Duration::from_secs(30),
        || async { (go_calls_since(&log, 0, "old").0 > 0).then_some(()) },
    )
    .await
    .with_context(|| registrar_testenv::log_tail(&log, 20))?;
    let balancer = Balancer::builder(etcd.client().await?, &t)
        .etcd_backoff(registrar_resolver::Backoff::new(
            Duration::from_millis(100),
            Duration::from_millis(500),
        ))
        .build()
        .await?;
    wait_ready(&balancer, 1).await?;

    // etcd loses its data; the old backend goes away and a new one is published.
    etcd.wipe().await?;
    old.stop();
    let mut kv = etcd.client().await?;
    put_endpoint(&mut kv, &t, new.addr()).await?;
    let written = tokio::time::Instant::now();
    let written_ms = unix_ms();

    converge(&balancer, &[new.addr()]).await?;
    let rust = written.elapsed();
    let go = poll(
        "the Go client on the new backend",
        Duration::from_secs(15),
        || async { (go_calls_since(&log, written_ms, "new").0 > 0).then_some(()) },
    )
    .await
    .map(|()| written.elapsed());
    let (go_ok, go_failed) = go_calls_since(&log, written_ms, "new");
    match go {
        Ok(d) => println!(
            "etcd wipe: Rust balancer on the new set after {rust:?}; grpc-go after {d:?} \
             ({go_failed} failed calls since the new set was written)"
        ),
        Err(_) => println!(
            "etcd wipe: Rust balancer on the new set after {rust:?}; grpc-go did NOT recover \
             within 15 s: {go_ok} calls reached the new backend, {go_failed} failed since it \
             was written"
        ),
    }
    Ok(())
}

/// Generated etcd values: valid ones from the operator's encoder with random addresses and
/// metadata, then damaged (BOM, invalid UTF-8, lone surrogates, huge numbers, deep nesting,
/// trailing data, renamed or repeated fields, odd `Op`s), plus the nesting limit's edges.
fn decode_corpus() -> Vec<Vec<u8>> {
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

    let addr = prop_oneof![
        (any::<[u8; 4]>(), 0u16..)
            .prop_map(|(o, p)| format!("{}:{p}", std::net::Ipv4Addr::from(o))),
        "[a-z0-9.:_\\[\\]-]{0,12}",
    ];
    let leaf = prop_oneof![
        Just(json!(null)),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ];
    let meta = leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map("[a-zA-Z]{0,4}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    let base = (addr, proptest::option::of(meta)).prop_map(|(a, m)| {
        let map = m.map(|m| match m {
            Value::Object(o) => o,
            other => [("v".to_string(), other)].into_iter().collect(),
        });
        registrar_etcd::value::encode(&a, map.as_ref()).into_bytes()
    });
    let tokens: &[&[u8]] = &[
        b"\xef\xbb\xbf",
        b"\xff",
        b"\xc3",
        b"\\ud800",
        b"\\udc00",
        b"1e999",
        b"-1e400",
        b"1e-999",
        b"123456789012345678901234567890",
        b"\"addr\":\"127.0.0.1:1\",",
        b"\"ADDR\":null,",
        b"\"Op\":1e0,",
        b"\"Op\":1.0,",
        b"\"op\":255,",
        b"\"Op\":256,",
        b"\"Op\":\"0\",",
        b"\"Op\":-0,",
        b"\"Metadata\":null,",
        b"\"x\":[[[[{}]]]],",
        b" ",
        b"\t\n",
        b"}",
        b"]",
        b",",
        b"\"",
        b"\\",
        b"\x01",
        b"null",
        b"trailing",
    ];
    let damage = (any::<usize>(), proptest::sample::select(tokens));
    let strategy = (base, proptest::collection::vec(damage, 0..3)).prop_map(|(mut v, ds)| {
        for (at, token) in ds {
            let at = at % (v.len() + 1);
            v.splice(at..at, token.iter().copied());
        }
        v
    });
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &[15; 32]),
    );
    let mut corpus: Vec<Vec<u8>> = (0..3000)
        .map(|_| strategy.new_tree(&mut runner).unwrap().current())
        .collect();
    // Go's nesting limit counts the outer object: metadata may nest 9,999 deep, not 10,000.
    for depth in [9_999usize, 10_000, 10_001] {
        let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        corpus.push(format!(r#"{{"Addr":"127.0.0.1:1","Metadata":{nested}}}"#).into_bytes());
        corpus.push(format!(r#"{{"Addr":"127.0.0.1:1","Other":{nested}}}"#).into_bytes());
    }
    corpus.push(b"{\"Addr\":\"127.0.0.1:1\",\"Metadata\":{\"k\":\"\xff\xfe\"}}".to_vec());
    corpus.push(b"{\"Addr\":\"127.0.0.1:1\",\"Metadata\":1e999}".to_vec());
    corpus.push(b"{\"Addr\":\"127.0.0.1:1\",\"Other\":1e999}".to_vec());
    corpus
}

/// The Rust decoder and etcd's Go resolver (`json.Unmarshal` into `internal.Update`) give the
/// same verdict on every value of a generated corpus, where Go's verdict counts as "accepted"
/// only with an address gRPC can dial (the Rust decoder refuses the others up front).
#[test]
fn rust_and_go_decoders_agree_on_a_generated_corpus() -> Result<()> {
    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
    fn unhex(text: &str) -> Vec<u8> {
        (0..text.len() / 2)
            .filter_map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok())
            .collect()
    }
    let corpus = decode_corpus();
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("corpus.hex");
    let lines: Vec<String> = corpus.iter().map(|v| hex(v)).collect();
    std::fs::write(&file, lines.join("\n"))?;
    let out = Command::new(interop_binary()?)
        .args(["decode", "-in", file.to_str().context("path")?])
        .output()?;
    if !out.status.success() {
        bail!(
            "interop decode failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let verdicts: Vec<String> = String::from_utf8(out.stdout)?
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(verdicts.len(), corpus.len());
    let (mut accepted, mut disagree, mut surrogate_keys) = (0, Vec::new(), 0);
    for (value, go) in corpus.iter().zip(&verdicts) {
        let go_addr = go
            .strip_prefix("ok ")
            .or_else(|| (go == "ok").then_some(""))
            .map(|h| String::from_utf8_lossy(&unhex(h)).into_owned());
        let go_ok = go_addr
            .as_deref()
            .filter(|a| !a.is_empty() && registrar_resolver::value::validate_addr(a).is_ok());
        let rust = Endpoint::decode(value);
        match (&rust, go_ok) {
            (Ok(e), Some(a)) if e.addr == a => accepted += 1,
            (Err(_), None) => {}
            // serde_json refuses a lone surrogate escape in a field name; Go replaces it.
            (Err(registrar_resolver::value::ValueError::Json(_)), Some(_))
                if value.windows(4).any(|w| {
                    w[..3] == *b"\\ud" && matches!(w[3], b'8'..=b'9' | b'a'..=b'f' | b'A'..=b'F')
                }) =>
            {
                surrogate_keys += 1
            }
            _ => disagree.push(format!(
                "{:?}: rust {:?}, go {go}",
                String::from_utf8_lossy(&value[..value.len().min(200)]),
                rust.map(|e| e.addr)
            )),
        }
    }
    println!(
        "{} values: {accepted} accepted by both, {} refused by both, {surrogate_keys} refused only \
         by Rust (a lone surrogate escape in a field name), {} disagreements",
        corpus.len(),
        corpus.len() - accepted - surrogate_keys - disagree.len(),
        disagree.len()
    );
    assert!(
        disagree.is_empty(),
        "{} disagreements:\n{}",
        disagree.len(),
        disagree
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(accepted > 100, "the corpus barely has valid values");
    Ok(())
}
