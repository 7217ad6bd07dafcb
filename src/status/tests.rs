//! Unit tests of the status computation.

use std::collections::BTreeMap;

use super::*;
use crate::crd::ServiceRegistrationSpec;
use crate::desired::Endpoint;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;

fn time(secs: i64) -> Time {
    Time(Timestamp::from_second(secs).unwrap())
}

fn registration(generation: i64, status: Option<ServiceRegistrationStatus>) -> ServiceRegistration {
    let mut reg = ServiceRegistration::new(
        "greeter",
        ServiceRegistrationSpec {
            service: None,
            selector: LabelSelector::default(),
            port: IntOrString::String("grpc".into()),
            metadata: None,
            publish_not_ready: false,
        },
    );
    reg.metadata.namespace = Some("shop".into());
    reg.metadata.generation = Some(generation);
    reg.status = status;
    reg
}

fn outcome(addrs: &[&str], problems: Vec<Problem>) -> RegistrationOutcome {
    RegistrationOutcome {
        target: "registrar/shop/greeter".into(),
        endpoints: addrs
            .iter()
            .map(|a| {
                (
                    a.to_string(),
                    Endpoint {
                        addr: a.to_string(),
                        value: String::new(),
                        pod: "p".into(),
                        ready_since: None,
                    },
                )
            })
            .collect::<BTreeMap<_, _>>(),
        problems,
        registration: "greeter".into(),
        created: None,
    }
}

fn port_not_found(pod: &str) -> Problem {
    Problem::PortNotFound {
        pod: pod.into(),
        port: "grpc".into(),
    }
}

#[test]
fn reasons_table() {
    let two = &["192.0.2.11:1", "192.0.2.12:1"][..];
    let cases: Vec<(&str, RegistrationOutcome, Publishing, &str, &str, &str)> = vec![
        (
            "published",
            outcome(two, vec![]),
            Publishing::Ok,
            "True",
            reason::PUBLISHED,
            "2 endpoints published to registrar/shop/greeter",
        ),
        (
            "one endpoint",
            outcome(&two[..1], vec![]),
            Publishing::Ok,
            "True",
            reason::PUBLISHED,
            "1 endpoint published to registrar/shop/greeter",
        ),
        (
            "no ready pods",
            outcome(&[], vec![]),
            Publishing::Ok,
            "False",
            reason::NO_READY_PODS,
            "no ready pod with an IP matches the selector",
        ),
        (
            "port missing on one pod",
            outcome(two, vec![port_not_found("b")]),
            Publishing::Ok,
            "False",
            reason::PORT_NOT_FOUND,
            "pod b has no TCP container port named \"grpc\"; 2 endpoints published",
        ),
        (
            "invalid pod ip",
            outcome(
                two,
                vec![Problem::InvalidPodIp {
                    pod: "c".into(),
                    ip: "x".into(),
                }],
            ),
            Publishing::Ok,
            "False",
            reason::INVALID_POD_IP,
            "pod c has an invalid IP \"x\"; 2 endpoints published",
        ),
        (
            "etcd down beats problems",
            outcome(two, vec![port_not_found("b")]),
            Publishing::EtcdUnavailable("connection refused".into()),
            "False",
            reason::ETCD_UNAVAILABLE,
            "etcd is unavailable (connection refused); 2 endpoints waiting to be published to registrar/shop/greeter",
        ),
        (
            "prefix owned elsewhere beats everything",
            outcome(two, vec![]),
            Publishing::PrefixOwnedElsewhere("cluster-b".into()),
            "False",
            reason::PREFIX_OWNED_ELSEWHERE,
            "the etcd prefix of registrar/shop/greeter is claimed by another cluster (cluster-b); nothing is written",
        ),
        (
            "pending",
            outcome(two, vec![]),
            Publishing::Pending,
            "Unknown",
            reason::PENDING,
            "waiting for the connection to etcd; 2 endpoints to publish",
        ),
    ];
    for (case, outcome, publishing, status, reason, message) in cases {
        let update = next_status(&registration(3, None), &outcome, &publishing, time(10));
        let ready = update.ready().unwrap();
        assert_eq!(
            (
                ready.status.as_str(),
                ready.reason.as_str(),
                ready.message.as_str()
            ),
            (status, reason, message),
            "case: {case}"
        );
        assert_eq!(ready.observed_generation, Some(3), "case: {case}");
        assert_eq!(ready.last_transition_time, time(10), "case: {case}");
        assert!(update.changed && update.reason_changed, "case: {case}");
    }
}

#[test]
fn status_fields() {
    let update = next_status(
        &registration(7, None),
        &outcome(&["192.0.2.12:1", "192.0.2.11:1"], vec![]),
        &Publishing::Ok,
        time(10),
    );
    let s = &update.status;
    assert_eq!(s.observed_generation, Some(7));
    assert_eq!(s.service.as_deref(), Some("greeter"));
    assert_eq!(s.target.as_deref(), Some("registrar/shop/greeter"));
    assert_eq!(s.ready_endpoints, 2);
    assert_eq!(s.endpoints, ["192.0.2.11:1", "192.0.2.12:1"]);
    assert_eq!(s.conditions.len(), 1);
}

#[test]
fn endpoints_capped_sorted_count_authoritative() {
    let addrs: Vec<String> = (0..120)
        .map(|i| format!("192.0.2.1:{}", 1000 + i))
        .collect();
    let refs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let update = next_status(
        &registration(1, None),
        &outcome(&refs, vec![]),
        &Publishing::Ok,
        time(1),
    );
    assert_eq!(update.status.ready_endpoints, 120);
    assert_eq!(update.status.endpoints.len(), MAX_STATUS_ENDPOINTS);
    let mut sorted = update.status.endpoints.clone();
    sorted.sort();
    assert_eq!(update.status.endpoints, sorted);
    assert_eq!(update.status.endpoints[0], "192.0.2.1:1000");
}

#[test]
fn unchanged_status_is_not_rewritten() {
    let o = outcome(&["192.0.2.11:1"], vec![]);
    let first = next_status(&registration(2, None), &o, &Publishing::Ok, time(10));
    let again = next_status(
        &registration(2, Some(first.status.clone())),
        &o,
        &Publishing::Ok,
        time(99),
    );
    assert!(!again.changed);
    assert!(!again.reason_changed);
    assert_eq!(again.status, first.status);
}

#[test]
fn transition_time_kept_while_status_unchanged() {
    // True/Published with 1 endpoint at t=10, then 2 endpoints at t=20: message changes, time stays
    let first = next_status(
        &registration(1, None),
        &outcome(&["a:1"], vec![]),
        &Publishing::Ok,
        time(10),
    );
    let more = next_status(
        &registration(1, Some(first.status.clone())),
        &outcome(&["a:1", "b:1"], vec![]),
        &Publishing::Ok,
        time(20),
    );
    assert!(more.changed);
    assert!(!more.reason_changed);
    assert_eq!(more.ready().unwrap().last_transition_time, time(10));

    // False/NoReadyPods at t=30: new time
    let none = next_status(
        &registration(1, Some(more.status.clone())),
        &outcome(&[], vec![]),
        &Publishing::Ok,
        time(30),
    );
    assert!(none.changed && none.reason_changed);
    assert_eq!(none.ready().unwrap().last_transition_time, time(30));

    // False/EtcdUnavailable at t=40: status still False, so the time stays, the reason changes
    let down = next_status(
        &registration(1, Some(none.status.clone())),
        &outcome(&[], vec![]),
        &Publishing::EtcdUnavailable("timeout".into()),
        time(40),
    );
    assert!(down.changed && down.reason_changed);
    assert_eq!(down.ready().unwrap().last_transition_time, time(30));
}

#[test]
fn new_generation_changes_status() {
    let o = outcome(&["a:1"], vec![]);
    let first = next_status(&registration(1, None), &o, &Publishing::Ok, time(10));
    let next = next_status(
        &registration(2, Some(first.status)),
        &o,
        &Publishing::Ok,
        time(20),
    );
    assert!(next.changed);
    assert_eq!(next.status.observed_generation, Some(2));
    assert_eq!(next.ready().unwrap().observed_generation, Some(2));
    assert_eq!(next.ready().unwrap().last_transition_time, time(10));
}

#[test]
fn other_conditions_are_kept_in_place() {
    let other = Condition {
        type_: "Other".into(),
        status: "True".into(),
        reason: "Because".into(),
        message: String::new(),
        observed_generation: None,
        last_transition_time: time(1),
    };
    let o = outcome(&["a:1"], vec![]);
    let first = next_status(&registration(1, None), &o, &Publishing::Ok, time(10));
    let mut previous = first.status.clone();
    previous.conditions.insert(0, other.clone());
    let next = next_status(
        &registration(1, Some(previous.clone())),
        &o,
        &Publishing::Ok,
        time(20),
    );
    assert!(!next.changed);
    assert_eq!(next.status.conditions[0], other);
    assert_eq!(next.status.conditions[1].type_, READY_CONDITION);
}

#[test]
fn many_problems_are_summarized() {
    let problems: Vec<Problem> = (0..8).map(|i| port_not_found(&format!("p{i}"))).collect();
    let update = next_status(
        &registration(1, None),
        &outcome(&[], problems),
        &Publishing::Ok,
        time(1),
    );
    let message = &update.ready().unwrap().message;
    assert!(message.contains("pod p4 has"), "{message}");
    assert!(!message.contains("pod p5 has"), "{message}");
    assert!(
        message.ends_with("(and 3 more); 0 endpoints published"),
        "{message}"
    );
}

#[test]
fn long_external_text_is_clipped() {
    let why = "x".repeat(2000);
    let update = next_status(
        &registration(1, None),
        &outcome(&[], vec![]),
        &Publishing::EtcdUnavailable(why),
        time(1),
    );
    assert!(update.ready().unwrap().message.len() < 700);
}

fn in_etcd(addrs: &[&str]) -> InEtcd {
    InEtcd {
        count: addrs.len(),
        endpoints: addrs.iter().map(|a| a.to_string()).collect(),
    }
}

/// Issue 10 §3: `readyEndpoints`, `endpoints` and NoReadyPods/Published describe what etcd
/// holds; the message counts what waits while etcd cannot be written.
#[test]
fn counts_describe_what_etcd_holds() {
    let prev = next_status(
        &registration(1, None),
        &outcome(&["a:1"], vec![]),
        &Publishing::Ok,
        time(10),
    )
    .status;
    let down = Publishing::EtcdUnavailable("no quorum".into());
    // (case, wanted, in etcd (None: not known yet), publishing, count, endpoints, reason, message)
    type Case<'a> = (
        &'a str,
        &'a [&'a str],
        Option<InEtcd>,
        Publishing,
        i64,
        &'a [&'a str],
        &'a str,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            "outage: a new pod waits",
            &["a:1", "b:1"],
            Some(in_etcd(&["a:1"])),
            down.clone(),
            1,
            &["a:1"],
            reason::ETCD_UNAVAILABLE,
            "etcd is unavailable (no quorum); 2 endpoints waiting to be published to registrar/shop/greeter",
        ),
        (
            "outage: a removed pod is still in etcd",
            &[],
            Some(in_etcd(&["a:1"])),
            down.clone(),
            1,
            &["a:1"],
            reason::ETCD_UNAVAILABLE,
            "etcd is unavailable (no quorum); 0 endpoints waiting to be published to registrar/shop/greeter",
        ),
        (
            "applied",
            &["a:1", "b:1"],
            Some(in_etcd(&["a:1", "b:1"])),
            Publishing::Ok,
            2,
            &["a:1", "b:1"],
            reason::PUBLISHED,
            "2 endpoints published to registrar/shop/greeter",
        ),
        (
            "being written: the count follows the writer",
            &["a:1", "b:1"],
            Some(in_etcd(&["a:1"])),
            Publishing::Ok,
            1,
            &["a:1"],
            reason::PUBLISHED,
            "1 endpoint published to registrar/shop/greeter",
        ),
        (
            "last pod gone, delete not applied yet",
            &[],
            Some(in_etcd(&["a:1"])),
            Publishing::Ok,
            1,
            &["a:1"],
            reason::PUBLISHED,
            "1 endpoint published to registrar/shop/greeter",
        ),
        (
            "wanted, but etcd holds none of it yet: Pending, not a NoReadyPods warning",
            &["a:1", "b:1"],
            Some(in_etcd(&[])),
            Publishing::Ok,
            0,
            &[],
            reason::PENDING,
            "2 endpoints waiting to be published to registrar/shop/greeter",
        ),
        (
            "delete applied",
            &[],
            Some(in_etcd(&[])),
            Publishing::Ok,
            0,
            &[],
            reason::NO_READY_PODS,
            "no ready pod with an IP matches the selector",
        ),
        (
            "nothing applied yet by this replica: the previous status stays right",
            &["a:1", "b:1"],
            None,
            down.clone(),
            1,
            &["a:1"],
            reason::ETCD_UNAVAILABLE,
            "etcd is unavailable (no quorum); 2 endpoints waiting to be published to registrar/shop/greeter",
        ),
    ];
    for (case, wanted, etcd, publishing, count, endpoints, why, message) in cases {
        let update = next_status_from(
            &registration(1, None),
            Some(&prev),
            &outcome(wanted, vec![]),
            etcd.as_ref(),
            &publishing,
            time(20),
        );
        let ready = update.ready().unwrap();
        assert_eq!(update.status.ready_endpoints, count, "case: {case}");
        assert_eq!(update.status.endpoints, endpoints, "case: {case}");
        assert_eq!(
            (ready.reason.as_str(), ready.message.as_str()),
            (why, message),
            "case: {case}"
        );
    }
}

#[test]
fn waiting_for_the_txn_is_pending_unless_a_problem_was_shown_which_then_stays() {
    let wanted = outcome(&["a:1"], vec![]);
    let nothing_yet = in_etcd(&[]);
    let step = |previous: Option<&ServiceRegistrationStatus>, at: i64| {
        next_status_from(
            &registration(1, previous.cloned()),
            previous,
            &wanted,
            Some(&nothing_yet),
            &Publishing::Ok,
            time(at),
        )
    };
    // (case, the reason shown before, the reason shown while waiting)
    let gone = next_status(
        &registration(1, None),
        &outcome(&[], vec![]),
        &Publishing::Ok,
        time(5),
    )
    .status;
    let down = next_status(
        &registration(1, None),
        &wanted,
        &Publishing::EtcdUnavailable("no quorum".into()),
        time(5),
    )
    .status;
    let cases: Vec<(&str, Option<&ServiceRegistrationStatus>, &str, bool)> = vec![
        ("a new registration", None, reason::PENDING, true),
        (
            "all its pods went, one came back",
            Some(&gone),
            reason::NO_READY_PODS,
            false,
        ),
        (
            "etcd came back",
            Some(&down),
            reason::ETCD_UNAVAILABLE,
            false,
        ),
    ];
    for (case, previous, want, changed) in cases {
        let update = step(previous, 10);
        assert_eq!(update.ready().unwrap().reason, want, "case: {case}");
        assert_eq!(update.reason_changed, changed, "case: {case}");
        // Then the txn: Published, a change of reason (the moment for an Event, if any).
        let done = next_status_from(
            &registration(1, Some(update.status.clone())),
            Some(&update.status),
            &wanted,
            Some(&in_etcd(&["a:1"])),
            &Publishing::Ok,
            time(20),
        );
        assert_eq!(
            done.ready().unwrap().reason,
            reason::PUBLISHED,
            "case: {case}"
        );
        assert!(done.reason_changed, "case: {case}");
    }
}

#[test]
fn published_log_reports_the_newest_applied_seq() {
    use published::PublishedLog;
    let mut log = PublishedLog::default();
    let k = "greeter";
    assert_eq!(log.in_etcd(&k), None);
    log.record(k, 1, Some(in_etcd(&["a:1"])));
    assert_eq!(log.in_etcd(&k), None, "seq 1 not applied yet");
    assert_eq!(log.applied(1), vec![k]);
    assert_eq!(log.in_etcd(&k), Some(&in_etcd(&["a:1"])));

    // An outage: seqs 2 and 3 wait; the status keeps seq 1.
    log.record(k, 2, Some(in_etcd(&["a:1", "b:1"])));
    log.record(k, 3, Some(in_etcd(&["a:1", "b:1", "c:1"])));
    assert_eq!(log.applied(1), Vec::<&str>::new());
    assert_eq!(log.in_etcd(&k), Some(&in_etcd(&["a:1"])));
    // The writer skips to 3 (it writes the newest desired state).
    assert_eq!(log.applied(3), vec![k]);
    assert_eq!(log.in_etcd(&k), Some(&in_etcd(&["a:1", "b:1", "c:1"])));

    // A seq that applied some other registration's change does not disturb this one.
    log.record("other", 4, Some(in_etcd(&["x:1"])));
    assert_eq!(log.applied(4), vec!["other"]);
    assert_eq!(log.in_etcd(&k), Some(&in_etcd(&["a:1", "b:1", "c:1"])));

    // Gone: forgotten once the removal is applied.
    log.record(k, 5, None);
    assert!(log.in_etcd(&k).is_some());
    log.applied(5);
    assert_eq!(log.in_etcd(&k), None);
    assert_eq!(log.len(), 1);
}

#[test]
fn published_log_is_bounded_and_ends_on_the_newest() {
    use published::{MAX_PENDING, PublishedLog};
    let mut log = PublishedLog::default();
    for seq in 1..=1000u64 {
        log.record(
            1,
            seq,
            Some(InEtcd {
                count: seq as usize,
                endpoints: vec![],
            }),
        );
    }
    // Only the oldest and the newest are certain to be kept.
    log.applied(1);
    assert_eq!(log.in_etcd(&1).map(|e| e.count), Some(1));
    log.applied(1000);
    assert_eq!(log.in_etcd(&1).map(|e| e.count), Some(1000));
    // An intermediate seq dropped from the middle shows an older applied entry, never a newer one.
    let mut log = PublishedLog::default();
    for seq in 1..=(MAX_PENDING as u64 + 10) {
        log.record(
            1,
            seq,
            Some(InEtcd {
                count: seq as usize,
                endpoints: vec![],
            }),
        );
    }
    log.applied(5);
    assert!(log.in_etcd(&1).unwrap().count <= 5);
}
