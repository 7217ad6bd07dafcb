//! Runs the demo end to end in its short, non-interactive mode and checks what the client saw:
//! in every phase, every Ready pod answered RPCs through the balancer, and no RPC failed.

use std::collections::BTreeSet;

use registrar_demo::{DemoOptions, NAMESPACE, Output, PREFIX, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_demo_balances_over_every_ready_pod_through_scale_and_roll_without_failures() {
    // The narration is captured by the harness: shown when the test fails.
    let opts = DemoOptions {
        output: Output::Captured,
        ..DemoOptions::quick()
    };
    let report = run(opts).await.unwrap();
    assert_eq!(report.target, format!("{PREFIX}/{NAMESPACE}/greeter"));

    let names: Vec<&str> = report.phases.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["deploy", "scale to 5", "roll", "scale to 2"]);
    let sizes: Vec<usize> = report.phases.iter().map(|p| p.pods.len()).collect();
    assert_eq!(sizes, [3, 5, 5, 2]);

    for p in &report.phases {
        // etcd held exactly the pods' addresses, and every one answered in the steady window.
        let addrs: BTreeSet<String> = p
            .pods
            .values()
            .map(|i| format!("{}/{}", report.target, i.addr))
            .collect();
        let keys: BTreeSet<String> = p.etcd_keys.iter().cloned().collect();
        assert_eq!(keys, addrs, "phase {}: etcd keys", p.name);
        let answered: BTreeSet<&String> = p.steady.by_backend.keys().collect();
        let pods: BTreeSet<&String> = p.pods.keys().collect();
        assert_eq!(answered, pods, "phase {}: backends that answered", p.name);
        assert!(
            p.idle_pods().is_empty(),
            "phase {}: idle {:?}",
            p.name,
            p.idle_pods()
        );
        assert!(
            p.steady.by_backend.values().all(|n| *n > 0),
            "phase {}: {:?}",
            p.name,
            p.steady.by_backend
        );
        assert_eq!(
            p.failures(),
            0,
            "phase {}: errors {:?} {:?}",
            p.name,
            p.during_change.errors,
            p.steady.errors
        );
        for info in p.pods.values() {
            let ip: std::net::SocketAddr = info.addr.parse().unwrap();
            assert!(ip.ip().is_loopback(), "{ip}");
        }
    }
    // The client ran through every change (not only the steady windows).
    for p in &report.phases[1..] {
        assert!(
            p.during_change.total() > 0,
            "phase {}: no RPCs while changing",
            p.name
        );
    }

    // Scaling up kept the first pods; the roll replaced every pod; scaling down kept survivors.
    let pods = |i: usize| -> BTreeSet<String> {
        report.phases[i]
            .pods
            .values()
            .map(|p| p.uid.clone())
            .collect()
    };
    assert!(pods(0).is_subset(&pods(1)));
    assert!(
        pods(2).is_disjoint(&pods(1)),
        "the roll must replace every pod"
    );
    assert!(pods(3).is_subset(&pods(2)));
    // During the roll the old pods answered too, until they left etcd.
    let roll = &report.phases[2];
    let old_names: BTreeSet<&String> = report.phases[1].pods.keys().collect();
    assert!(
        roll.during_change
            .by_backend
            .keys()
            .any(|b| old_names.contains(b)),
        "{:?}",
        roll.during_change.by_backend
    );

    assert_eq!(report.failures(), 0);
    assert!(report.success());
    assert!(report.rpcs() > 0);
}
