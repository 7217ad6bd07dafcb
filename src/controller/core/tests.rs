//! Table tests of the engine's decisions: each scenario feeds inputs to a [`Core`] and checks
//! the effects of every step (no API server, no etcd, no clock: time moves only when a step
//! says so).

use super::*;
use k8s_openapi::jiff::Timestamp;
use serde_json::json;

const SEC: u64 = 1000;

fn reg_value(name: &str, finalizer: bool, deleting: bool) -> serde_json::Value {
    let mut meta = json!({"name": name, "namespace": "shop", "generation": 1});
    if finalizer {
        meta["finalizers"] = json!([FINALIZER]);
    }
    if deleting {
        meta["deletionTimestamp"] = json!("2025-01-01T00:00:00Z");
    }
    json!({
        "apiVersion": "registrar.dev/v1alpha1", "kind": "ServiceRegistration",
        "metadata": meta,
        "spec": {"selector": {"matchLabels": {"app": name}}, "port": 50051}
    })
}

fn reg(name: &str) -> ServiceRegistration {
    serde_json::from_value(reg_value(name, true, false)).unwrap()
}

fn reg_without_finalizer(name: &str) -> ServiceRegistration {
    serde_json::from_value(reg_value(name, false, false)).unwrap()
}

fn deleting(name: &str) -> ServiceRegistration {
    serde_json::from_value(reg_value(name, true, true)).unwrap()
}

fn with_status(mut r: ServiceRegistration, s: &ServiceRegistrationStatus) -> ServiceRegistration {
    r.status = Some(s.clone());
    r
}

/// A ready pod selected by registration `app`.
fn pod(app: &str, name: &str, ip: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "shop", "labels": {"app": app}},
        "spec": {"containers": [{"name": "c", "ports": [{"containerPort": 50051}]}], "nodeName": "n1"},
        "status": {"phase": "Running", "podIP": ip,
                   "conditions": [{"type": "Ready", "status": "True",
                                   "lastTransitionTime": "2025-01-01T00:00:00Z"}]}
    }))
    .unwrap()
}

/// One step of a scenario: wait `after_ms`, feed `input` (or, with `None`, the debounce timer
/// if one is due), then check the effects: each of `want` is the start of some effect's
/// summary, none of `never` is.
struct Step {
    after_ms: u64,
    input: Option<Input>,
    want: &'static [&'static str],
    never: &'static [&'static str],
}

fn step(input: Input, want: &'static [&'static str], never: &'static [&'static str]) -> Step {
    Step {
        after_ms: 0,
        input: Some(input),
        want,
        never,
    }
}

/// The debounce timer fires (the time moves to it).
fn flush(want: &'static [&'static str], never: &'static [&'static str]) -> Step {
    Step {
        after_ms: 0,
        input: None,
        want,
        never,
    }
}

fn later(ms: u64, s: Step) -> Step {
    Step { after_ms: ms, ..s }
}

fn key_of(key: &RegKey) -> String {
    key.to_string()
}

fn name_of(reg: &ServiceRegistration) -> String {
    format!(
        "{}/{}",
        reg.metadata.namespace.as_deref().unwrap_or_default(),
        reg.metadata.name.as_deref().unwrap_or_default()
    )
}

/// A one-line summary of an effect, for the expectations.
fn summary(e: &Effect) -> String {
    match e {
        Effect::PublishDesired(d) => format!(
            "Publish seq={} keys={} complete={}",
            d.seq,
            d.keys.len(),
            d.complete
        ),
        Effect::StartWriter => "StartWriter".into(),
        Effect::StopWriter => "StopWriter".into(),
        Effect::WriteStatus { key, status } => {
            let reason = status
                .conditions
                .iter()
                .find(|c| c.type_ == crate::crd::READY_CONDITION)
                .map(|c| c.reason.clone())
                .unwrap_or_default();
            let terminating = status
                .conditions
                .iter()
                .find(|c| c.type_ == crate::status::terminating::TERMINATING_CONDITION)
                .map(|c| format!(" Terminating={}", c.reason))
                .unwrap_or_default();
            format!(
                "Status {} {reason} {}{terminating}",
                key_of(key),
                status.ready_endpoints
            )
        }
        Effect::ResyncStatuses(v) => format!(
            "Resync {}",
            v.iter()
                .map(|(k, _)| key_of(k))
                .collect::<Vec<_>>()
                .join(",")
        ),
        Effect::ForgetStatus(key) => format!("Forget {}", key_of(key)),
        Effect::ClearStatuses => "ClearStatuses".into(),
        Effect::AddFinalizer(r) => format!("AddFinalizer {}", name_of(r)),
        Effect::ReleaseFinalizer(r) => format!("Release {}", name_of(r)),
        Effect::Event {
            reg,
            warning,
            reason,
            ..
        } => format!("Event {} {reason} warning={warning}", name_of(reg)),
        Effect::SetReady => "Ready".into(),
        Effect::Metric(Metric::Error(kind)) => format!("Error {kind:?}"),
        Effect::Metric(Metric::Leader(on)) => format!("Leader {on}"),
        Effect::Metric(m) => format!("Metric {m:?}"),
    }
}

struct Sim {
    core: Core,
    t0: Instant,
    ms: u64,
}

impl Sim {
    fn new() -> Self {
        Sim {
            core: Core::new(CoreConfig {
                prefix: "registrar".into(),
                coalesce: Duration::from_millis(50),
                hold: Duration::from_secs(5),
                topology: false,
                publish_cluster_id: None,
            }),
            t0: Instant::now(),
            ms: 0,
        }
    }

    fn now(&self) -> Now {
        Now {
            at: self.t0 + Duration::from_millis(self.ms),
            wall: Time(Timestamp::from_second(1_750_000_000 + (self.ms / SEC) as i64).unwrap()),
        }
    }

    fn on(&mut self, input: Input) -> Vec<String> {
        self.core
            .on(&self.now(), input)
            .iter()
            .map(summary)
            .collect()
    }

    /// Feeds both initial lists (registrations first), then the debounce.
    fn sync(&mut self, regs: Vec<ServiceRegistration>, pods: Vec<Pod>) -> Vec<String> {
        let mut out = self.on(Input::registration(watcher::Event::Init));
        for r in regs {
            out.extend(self.on(Input::registration(watcher::Event::InitApply(r))));
        }
        out.extend(self.on(Input::registration(watcher::Event::InitDone)));
        out.extend(self.on(Input::pod(watcher::Event::Init)));
        for p in pods {
            out.extend(self.on(Input::pod(watcher::Event::InitApply(p))));
        }
        out.extend(self.on(Input::pod(watcher::Event::InitDone)));
        out.extend(self.fire_flush());
        out
    }

    fn fire_flush(&mut self) -> Vec<String> {
        let Some(at) = self.core.flush_at() else {
            return Vec::new();
        };
        let due = u64::try_from(at.duration_since(self.t0).as_millis()).unwrap();
        self.ms = self.ms.max(due);
        self.on(Input::FlushDue)
    }

    /// Leading on a connected etcd, the writer ready and caught up; one registration "greeter"
    /// with one ready pod, status published.
    fn leading() -> (Sim, Vec<String>) {
        let mut sim = Sim::new();
        let mut out = sim.sync(
            vec![reg("greeter")],
            vec![pod("greeter", "g1", "127.0.0.1")],
        );
        out.extend(sim.on(Input::Leader(true)));
        out.extend(sim.on(Input::WriterState(WriterState::Ready { lease: 1 })));
        let seq = sim.core.desired.seq;
        out.extend(sim.on(Input::WriterApplied(seq)));
        assert!(
            out.iter().any(|e| e == "Status shop/greeter Published 1"),
            "{out:#?}"
        );
        (sim, out)
    }

    fn run(&mut self, name: &str, steps: Vec<Step>) {
        for (i, s) in steps.into_iter().enumerate() {
            self.ms += s.after_ms;
            let label = match &s.input {
                Some(input) => format!("{input:?}"),
                None => "FlushDue".into(),
            };
            let label: String = label.chars().take(90).collect();
            let out = match s.input {
                Some(input) => self.on(input),
                None => self.fire_flush(),
            };
            println!(
                "[{name}] step {i} at {} ms: {label}\n    -> {out:?}",
                self.ms
            );
            for want in s.want {
                assert!(
                    out.iter().any(|e| e.starts_with(want)),
                    "[{name}] step {i} ({label}): expected {want:?} in {out:#?}"
                );
            }
            for never in s.never {
                assert!(
                    !out.iter().any(|e| e.starts_with(never)),
                    "[{name}] step {i} ({label}): unexpected {never:?} in {out:#?}"
                );
            }
        }
    }
}

fn apply(r: ServiceRegistration) -> Input {
    Input::registration(watcher::Event::Apply(r))
}

fn ready() -> Input {
    Input::WriterState(WriterState::Ready { lease: 2 })
}

fn etcd_down() -> Input {
    Input::WriterState(WriterState::EtcdUnavailable {
        reason: "connection refused".into(),
    })
}

#[test]
fn leadership_starts_and_stops_the_writer() {
    let mut sim = Sim::new();
    let out = sim.sync(
        vec![reg_without_finalizer("greeter")],
        vec![pod("greeter", "g1", "127.0.0.1")],
    );
    assert!(out.iter().any(|e| e == "Ready"), "{out:?}");
    assert!(!out.iter().any(|e| e.starts_with("Status")), "{out:?}");
    let seq = sim.core.desired.seq;
    sim.run(
        "leadership",
        vec![
            // Gained: a writer starts, the finalizer is added, statuses wait for the writer.
            step(
                Input::Leader(true),
                &[
                    "Leader true",
                    "StartWriter",
                    "ClearStatuses",
                    "AddFinalizer shop/greeter",
                ],
                &["Status", "StopWriter"],
            ),
            step(Input::Leader(true), &[], &["StartWriter", "Leader"]),
            // Ready before anything applied: etcd holds nothing of it yet (Pending, not a
            // NoReadyPods Warning), and the first publication is no Event either.
            step(ready(), &["Status shop/greeter Pending 0"], &["Event"]),
            step(
                Input::WriterApplied(seq),
                &["Status shop/greeter Published 1"],
                &["Event"],
            ),
            // Lost: the writer stops, and nothing it reports afterwards is acted on.
            step(
                Input::Leader(false),
                &["Leader false", "StopWriter", "ClearStatuses"],
                &["StartWriter", "Status"],
            ),
            step(etcd_down(), &[], &["Status", "Event"]),
            step(Input::WriterApplied(seq + 1), &[], &["Status", "Release"]),
            step(Input::WriterDied, &[], &["StartWriter", "Error"]),
            step(Input::ResyncTick, &[], &["Status", "Resync"]),
            // A registration event while not leading adds no finalizer.
            step(
                apply(reg_without_finalizer("other")),
                &[],
                &["AddFinalizer"],
            ),
            flush(&[], &["Status"]),
            // Gained again: a new term.
            step(
                Input::Leader(true),
                &[
                    "StartWriter",
                    "AddFinalizer shop/greeter",
                    "AddFinalizer shop/other",
                ],
                &["Status"],
            ),
        ],
    );
}

#[test]
fn a_writer_that_died_is_started_again_and_statuses_are_kept_meanwhile() {
    let (mut sim, _) = Sim::leading();
    sim.run(
        "writer died",
        vec![
            step(
                Input::WriterDied,
                &["Error Internal", "StartWriter"],
                &["Status", "StopWriter", "ClearStatuses", "Event"],
            ),
            // The new writer starting: its state and progress flip no status.
            step(
                Input::WriterState(WriterState::Starting),
                &[],
                &["Status", "Event"],
            ),
            step(ready(), &[], &["Status", "Event"]),
            step(Input::WriterApplied(sim_seq()), &[], &["Status"]),
            // A new pod: published and shown as usual.
            step(
                Input::pod(watcher::Event::Apply(pod("greeter", "g2", "127.0.0.2"))),
                &[],
                &[],
            ),
            flush(
                &["Publish seq=2 keys=2"],
                &["Status shop/greeter Published 2"],
            ),
            step(
                Input::WriterApplied(2),
                &["Status shop/greeter Published 2"],
                &[],
            ),
        ],
    );
}

/// The seq of the desired state [`Sim::leading`] ends with.
fn sim_seq() -> u64 {
    1
}

#[test]
fn etcd_lost_and_back_changes_statuses_once_it_held() {
    let (mut sim, _) = Sim::leading();
    assert_eq!(sim.core.desired.seq, sim_seq());
    sim.run(
        "etcd flaps and goes down",
        vec![
            // A flap shorter than the hold: nothing shown.
            step(etcd_down(), &[], &["Status", "Event"]),
            later(2 * SEC, step(ready(), &[], &["Status"])),
            later(4 * SEC, step(Input::SettleDue, &[], &["Status"])),
            // Down for good: shown once the hold ended.
            step(etcd_down(), &[], &["Status"]),
            later(
                2 * SEC,
                step(
                    Input::WriterState(WriterState::EtcdUnavailable {
                        reason: "timeout".into(),
                    }),
                    &[],
                    &["Status"],
                ),
            ),
            later(
                3 * SEC,
                step(
                    Input::SettleDue,
                    &[
                        "Status shop/greeter EtcdUnavailable 1",
                        "Event shop/greeter EtcdUnavailable warning=true",
                    ],
                    &[],
                ),
            ),
            // While down, a new pod is published to the writer but not counted.
            step(
                Input::pod(watcher::Event::Apply(pod("greeter", "g2", "127.0.0.2"))),
                &[],
                &[],
            ),
            flush(
                &["Publish seq=2 keys=2"],
                &["Status shop/greeter EtcdUnavailable 2"],
            ),
            // Back: shown once it held, with what etcd then holds.
            step(ready(), &[], &["Status"]),
            // The count follows what etcd holds; the condition waits for the hold.
            step(
                Input::WriterApplied(2),
                &["Status shop/greeter EtcdUnavailable 2"],
                &["Event"],
            ),
            later(
                5 * SEC,
                step(
                    Input::SettleDue,
                    &[
                        "Status shop/greeter Published 2",
                        "Event shop/greeter Published warning=false",
                    ],
                    &[],
                ),
            ),
        ],
    );
}

#[test]
fn a_leader_waits_for_its_etcd_connection_and_shows_why() {
    let mut sim = Sim::new();
    sim.sync(
        vec![reg("greeter")],
        vec![pod("greeter", "g1", "127.0.0.1")],
    );
    let connecting = |reason: &str| {
        Input::WriterState(WriterState::Connecting {
            reason: reason.into(),
        })
    };
    sim.run(
        "etcd connection",
        vec![
            // The writer starts at once and dials etcd itself: statuses wait for it.
            step(Input::Leader(true), &["StartWriter"], &["Status"]),
            step(
                connecting("connection refused"),
                &[
                    "Status shop/greeter EtcdUnavailable 0",
                    "Event shop/greeter EtcdUnavailable",
                ],
                &["StartWriter"],
            ),
            // A new reason: the text follows, no new Event.
            step(
                connecting("authentication failed"),
                &["Status shop/greeter EtcdUnavailable 0"],
                &["StartWriter", "Event", "ClearStatuses", "AddFinalizer"],
            ),
            // Connected: the writer starts its session; statuses wait for it.
            step(
                Input::WriterState(WriterState::Starting),
                &[],
                &["StartWriter", "Status", "ClearStatuses"],
            ),
            // Ready: the problem shown stays until the endpoint is in etcd, and its end is
            // announced.
            step(ready(), &[], &["Status", "Event"]),
            step(
                Input::WriterApplied(1),
                &[
                    "Status shop/greeter Published 1",
                    "Event shop/greeter Published warning=false",
                ],
                &[],
            ),
        ],
    );
}

#[test]
fn a_finalizer_is_released_only_once_the_writer_applied_the_removal() {
    let (mut sim, _) = Sim::leading();
    sim.run(
        "deletion",
        vec![
            step(apply(deleting("greeter")), &[], &["Release", "Status"]),
            // Its keys leave with seq 2; the writer still applies older ones.
            flush(&["Publish seq=2 keys=0"], &["Release", "Status"]),
            step(Input::WriterApplied(1), &[], &["Release"]),
            step(ready(), &[], &["Release"]),
            step(Input::WriterApplied(2), &["Release shop/greeter"], &[]),
            // Once only.
            step(Input::WriterApplied(2), &[], &["Release"]),
            step(
                Input::registration(watcher::Event::Delete(deleting("greeter"))),
                &[],
                &[],
            ),
            flush(&["Forget shop/greeter"], &["Release"]),
        ],
    );
}

/// A deletion that waits for etcd says so: a Terminating condition and a Warning Event, once;
/// it completes by itself once etcd is back.
#[test]
fn a_deletion_blocked_by_etcd_shows_a_terminating_condition_and_an_event() {
    let (mut sim, _) = Sim::leading();
    sim.run(
        "deletion while etcd is down",
        vec![
            step(etcd_down(), &[], &["Status"]),
            later(
                5 * SEC,
                step(
                    Input::SettleDue,
                    &["Status shop/greeter EtcdUnavailable 1"],
                    &[],
                ),
            ),
            step(apply(deleting("greeter")), &[], &["Release"]),
            flush(
                &[
                    "Publish seq=2 keys=0",
                    "Status shop/greeter EtcdUnavailable 1 Terminating=EtcdUnavailable",
                    "Event shop/greeter DeletionBlocked warning=true",
                ],
                &["Release"],
            ),
            // Still down, another reason text: no new Event; the resync writes nothing new.
            step(
                Input::WriterState(WriterState::EtcdUnavailable {
                    reason: "timeout".into(),
                }),
                &[],
                &["Event", "Release"],
            ),
            step(Input::ResyncTick, &[], &["Event", "Release"]),
            // Back: the keys leave with seq 2, then the finalizer goes.
            step(ready(), &[], &["Release", "Event"]),
            step(
                Input::WriterApplied(2),
                &["Release shop/greeter"],
                &["Event"],
            ),
        ],
    );
}

#[test]
fn a_release_after_leadership_was_lost_is_not_made() {
    let (mut sim, _) = Sim::leading();
    sim.run(
        "deletion across a leadership loss",
        vec![
            step(apply(deleting("greeter")), &[], &[]),
            flush(&["Publish seq=2 keys=0"], &["Release"]),
            step(Input::Leader(false), &["StopWriter"], &["Release"]),
            // The old writer's progress arrives late: not ours any more.
            step(Input::WriterApplied(2), &[], &["Release"]),
            // Leading again: the new term's writer must apply the removal first.
            step(
                Input::Leader(true),
                &["StartWriter"],
                &["Release", "AddFinalizer"],
            ),
            step(Input::WriterApplied(1), &[], &["Release"]),
            step(Input::WriterApplied(2), &["Release shop/greeter"], &[]),
        ],
    );
}

#[test]
fn statuses_wait_for_both_caches() {
    let mut sim = Sim::new();
    sim.run(
        "sync",
        vec![
            step(Input::Leader(true), &["StartWriter"], &[]),
            step(ready(), &[], &["Status"]),
            step(Input::registration(watcher::Event::Init), &[], &[]),
            step(
                Input::registration(watcher::Event::InitApply(reg("greeter"))),
                &[],
                &[],
            ),
            step(
                Input::registration(watcher::Event::InitDone),
                &[],
                &["Status", "Ready"],
            ),
            // Registrations listed, pods not: a flush publishes what is known, but no status
            // (it would say NoReadyPods) and no deletion.
            flush(
                &["Publish seq=1 keys=0 complete=false"],
                &["Status", "Event", "Ready"],
            ),
            step(Input::ResyncTick, &[], &["Status", "Resync"]),
            step(Input::pod(watcher::Event::Init), &[], &[]),
            step(
                Input::pod(watcher::Event::InitApply(pod("greeter", "g1", "127.0.0.1"))),
                &[],
                &["Status"],
            ),
            step(
                Input::pod(watcher::Event::InitDone),
                &[
                    "Ready",
                    "Publish seq=2 keys=1 complete=true",
                    "Status shop/greeter Pending 0",
                ],
                &[],
            ),
            step(
                Input::WriterApplied(2),
                &["Status shop/greeter Published 1"],
                &[],
            ),
        ],
    );
}

#[test]
fn no_status_flips_on_a_restart_that_lists_registrations_before_pods() {
    // A warm restart: this process leads at once (the old one let go) and its writer is up
    // before the (slower) pod list is done. The incomplete desired state it writes first has
    // no endpoint for "greeter"; etcd still holds the old term's key, so the status must not
    // say 0 endpoints / NoReadyPods in between.
    let (old, _) = Sim::leading();
    let shown = old.core.statuses[&RegKey::new("shop", "greeter")].clone();
    let mut sim = Sim::new();
    sim.ms = 30 * SEC;
    sim.on(Input::Leader(true));
    sim.on(Input::registration(watcher::Event::Init));
    sim.on(Input::registration(watcher::Event::InitApply(with_status(
        reg("greeter"),
        &shown,
    ))));
    sim.on(Input::registration(watcher::Event::InitDone));
    sim.on(Input::pod(watcher::Event::Init));
    let out = sim.fire_flush();
    assert!(
        out.iter()
            .any(|e| e.starts_with("Publish") && e.ends_with("complete=false")),
        "{out:#?}"
    );
    let incomplete = sim.core.desired.seq;
    let mut out = sim.on(ready());
    out.extend(sim.on(Input::WriterApplied(incomplete)));
    out.extend(sim.on(Input::pod(watcher::Event::InitApply(pod(
        "greeter",
        "g1",
        "127.0.0.1",
    )))));
    out.extend(sim.on(Input::pod(watcher::Event::InitDone)));
    out.extend(sim.fire_flush());
    let complete = sim.core.desired.seq;
    assert!(complete > incomplete && sim.core.desired.complete);
    out.extend(sim.on(Input::WriterApplied(complete)));
    assert!(
        !out.iter()
            .any(|e| e.starts_with("Status") && !e.ends_with("Published 1")),
        "a status other than Published with 1 endpoint was written: {out:#?}"
    );
    assert_eq!(
        sim.core
            .published
            .in_etcd(&RegKey::new("shop", "greeter"))
            .map(|e| e.count),
        Some(1)
    );
}

#[test]
fn no_status_flips_on_failover() {
    // The old leader's status, as the new leader's watch shows it.
    let (old, _) = Sim::leading();
    let shown = old.core.statuses[&RegKey::new("shop", "greeter")].clone();
    let mut sim = Sim::new();
    sim.ms = 30 * SEC;
    sim.sync(
        vec![with_status(reg("greeter"), &shown)],
        vec![pod("greeter", "g1", "127.0.0.1")],
    );
    sim.run(
        "failover",
        vec![
            step(Input::Leader(true), &["StartWriter"], &["Status", "Event"]),
            // The new writer starting (the old term's keys still in etcd): statuses kept.
            step(
                Input::WriterState(WriterState::Starting),
                &[],
                &["Status", "Event"],
            ),
            later(10 * SEC, step(Input::SettleDue, &[], &["Status"])),
            step(Input::ResyncTick, &[], &["Status", "Resync"]),
            step(ready(), &[], &["Status", "Event"]),
            step(Input::WriterApplied(1), &[], &["Status", "Event"]),
        ],
    );
}

#[test]
fn the_resync_rewrites_only_statuses_that_differ() {
    let (mut sim, _) = Sim::leading();
    let key = RegKey::new("shop", "greeter");
    let ours = sim.core.statuses[&key].clone();
    // The watch brings our own write back: nothing to rewrite.
    let mut echoed = with_status(reg("greeter"), &ours);
    sim.run(
        "resync",
        vec![
            step(apply(echoed.clone()), &[], &[]),
            flush(&[], &["Status", "Publish"]),
            step(Input::ResyncTick, &[], &["Status", "Resync"]),
        ],
    );
    // Someone else rewrites it: the resync puts it right.
    let mut theirs = ours.clone();
    theirs.ready_endpoints = 99;
    echoed.status = Some(theirs);
    sim.run(
        "resync after a foreign write",
        vec![
            step(apply(echoed), &[], &[]),
            flush(&[], &["Status"]),
            step(Input::ResyncTick, &["Resync shop/greeter"], &["Status"]),
        ],
    );
}

#[test]
fn changes_within_the_window_are_coalesced() {
    let (mut sim, _) = Sim::leading();
    let start = sim.ms;
    sim.on(Input::pod(watcher::Event::Apply(pod(
        "greeter",
        "g2",
        "127.0.0.2",
    ))));
    // After a quiet period: at once.
    assert_eq!(sim.core.flush_at(), Some(sim.now().at));
    let out = sim.fire_flush();
    assert!(
        out.iter().any(|e| e.starts_with("Publish seq=2")),
        "{out:?}"
    );
    // Within the window: when it ends, both together.
    sim.ms += 10;
    sim.on(Input::pod(watcher::Event::Apply(pod(
        "greeter",
        "g3",
        "127.0.0.3",
    ))));
    sim.on(Input::pod(watcher::Event::Apply(pod(
        "greeter",
        "g4",
        "127.0.0.4",
    ))));
    assert_eq!(
        sim.core.flush_at(),
        Some(sim.t0 + Duration::from_millis(start + 50))
    );
    let out = sim.fire_flush();
    assert!(
        out.iter().any(|e| e.starts_with("Publish seq=3 keys=4")),
        "{out:?}"
    );
}

/// `p` as it looks once deleted (terminating) or no longer Ready.
fn terminating(mut p: Pod) -> Pod {
    p.metadata.deletion_timestamp = Some(Time(Timestamp::from_second(1_750_000_000).unwrap()));
    p
}

fn not_ready(mut p: Pod) -> Pod {
    if let Some(c) = p
        .status
        .as_mut()
        .and_then(|s| s.conditions.as_mut())
        .and_then(|c| c.first_mut())
    {
        c.status = "False".into();
    }
    p
}

#[test]
fn removals_are_not_held_behind_the_window() {
    // (what happens to the published pod g1 inside a window filled by g2, whether it is a
    // removal that is flushed at once)
    let cases: Vec<(&str, Input, bool)> = vec![
        (
            "terminating",
            Input::pod(watcher::Event::Apply(terminating(pod(
                "greeter",
                "g1",
                "127.0.0.1",
            )))),
            true,
        ),
        (
            "not ready",
            Input::pod(watcher::Event::Apply(not_ready(pod(
                "greeter",
                "g1",
                "127.0.0.1",
            )))),
            true,
        ),
        (
            "deleted",
            Input::pod(watcher::Event::Delete(pod("greeter", "g1", "127.0.0.1"))),
            true,
        ),
        (
            "moved to another IP",
            Input::pod(watcher::Event::Apply(pod("greeter", "g1", "127.0.0.9"))),
            true,
        ),
        (
            "a label change that keeps it",
            Input::pod(watcher::Event::Apply({
                let mut p = pod("greeter", "g1", "127.0.0.1");
                p.metadata
                    .labels
                    .get_or_insert_default()
                    .insert("extra".into(), "x".into());
                p
            })),
            false,
        ),
    ];
    for (name, input, removal) in cases {
        let (mut sim, _) = Sim::leading();
        let start = sim.ms;
        // g2 becomes ready after a quiet period: flushed at once, a window starts.
        sim.on(Input::pod(watcher::Event::Apply(pod(
            "greeter",
            "g2",
            "127.0.0.2",
        ))));
        let out = sim.fire_flush();
        assert!(
            out.iter().any(|e| e.starts_with("Publish seq=2 keys=2")),
            "{name}: {out:?}"
        );
        // Inside the window: g3 (unrelated) waits for the window's end...
        sim.ms += 10;
        sim.on(Input::pod(watcher::Event::Apply(pod(
            "greeter",
            "g3",
            "127.0.0.3",
        ))));
        let window_end = sim.t0 + Duration::from_millis(start + 50);
        assert_eq!(sim.core.flush_at(), Some(window_end), "{name}");
        // ...then g1 changes.
        sim.ms += 5;
        sim.on(input);
        let want = if removal { sim.now().at } else { window_end };
        assert_eq!(sim.core.flush_at(), Some(want), "{name}");
        let out = sim.fire_flush();
        println!("[{name}] flushed at {} ms: {out:?}", sim.ms);
        // g1 is gone (2 keys: g2, g3) unless it is kept or moved (3 keys).
        let keys = if removal && name != "moved to another IP" {
            "keys=2"
        } else {
            "keys=3"
        };
        assert!(
            out.iter()
                .any(|e| e.starts_with(&format!("Publish seq=3 {keys}"))),
            "{name}: {out:?}"
        );
        // After a removal's flush, the next change waits for a new window again.
        sim.ms += 1;
        sim.on(Input::pod(watcher::Event::Apply(pod(
            "greeter",
            "g4",
            "127.0.0.4",
        ))));
        assert!(sim.core.flush_at() > Some(sim.now().at), "{name}");
    }
}

#[test]
fn receipt_times_go_with_their_changes_until_applied() {
    let (mut sim, _) = Sim::leading();
    // g2 turns Ready: flushed at once, its receipt time goes with the desired state.
    sim.on(Input::pod(watcher::Event::Apply(pod(
        "greeter",
        "g2",
        "127.0.0.2",
    ))));
    let g2 = sim.now().at;
    sim.fire_flush();
    assert_eq!(&*sim.core.desired.received, [g2]);
    // g3 within the window, flushed when it ends: the writer has not applied seq 2 yet, so the
    // new desired state carries both (it may be the only one the writer sees).
    sim.ms += 10;
    sim.on(Input::pod(watcher::Event::Apply(pod(
        "greeter",
        "g3",
        "127.0.0.3",
    ))));
    let g3 = sim.now().at;
    sim.fire_flush();
    let seq = sim.core.desired.seq;
    assert_eq!(&*sim.core.desired.received, [g2, g3]);
    // Applied: nothing left to carry; a change of no key carries nothing either.
    sim.on(Input::WriterApplied(seq));
    sim.ms += 100;
    sim.on(Input::pod(watcher::Event::Apply({
        let mut p = pod("greeter", "g1", "127.0.0.1");
        p.metadata
            .labels
            .get_or_insert_default()
            .insert("extra".into(), "x".into());
        p
    })));
    sim.fire_flush();
    assert_eq!(sim.core.desired.seq, seq, "no new desired state");
    assert!(sim.core.received.is_empty() && sim.core.unapplied.is_empty());
    // g1 deleted: a removal, timed the same way.
    sim.on(Input::pod(watcher::Event::Delete(pod(
        "greeter",
        "g1",
        "127.0.0.1",
    ))));
    let g1 = sim.now().at;
    sim.fire_flush();
    assert_eq!(&*sim.core.desired.received, [g1]);
}

/// A registration's first publication is no news (the status says it; a cold start of 10,000
/// registrations would send 10,000 Events); a problem is a Warning, and its end a Normal Event.
#[test]
fn a_first_publication_sends_no_event_a_problem_and_its_end_do() {
    let mut sim = Sim::new();
    sim.sync(
        vec![reg("greeter")],
        vec![pod("greeter", "g1", "127.0.0.1")],
    );
    sim.on(Input::Leader(true));
    let seq = sim.core.desired.seq;
    sim.run(
        "first publication",
        vec![
            // The writer applied the first desired state before it said Ready: no status yet.
            step(Input::WriterApplied(seq), &[], &["Status"]),
            step(ready(), &["Status shop/greeter Published 1"], &["Event"]),
        ],
    );
    sim.run(
        "the pod goes and comes back",
        vec![
            step(
                Input::pod(watcher::Event::Delete(pod("greeter", "g1", "127.0.0.1"))),
                &[],
                &["Event"],
            ),
            flush(&["Publish"], &["Event"]),
            step(
                Input::WriterApplied(seq + 1),
                &[
                    "Status shop/greeter NoReadyPods 0",
                    "Event shop/greeter NoReadyPods warning=true",
                ],
                &[],
            ),
            later(
                1000,
                step(
                    Input::pod(watcher::Event::Apply(pod("greeter", "g1", "127.0.0.1"))),
                    &[],
                    &[],
                ),
            ),
            flush(&["Publish"], &["Event"]),
            step(
                Input::WriterApplied(seq + 2),
                &[
                    "Status shop/greeter Published 1",
                    "Event shop/greeter Published warning=false",
                ],
                &[],
            ),
        ],
    );
}

#[test]
fn the_target_gauge_changes_only_for_changed_targets() {
    let (mut sim, out) = Sim::leading();
    assert!(
        out.iter()
            .any(|e| e == r#"Metric TargetEndpoints({("shop", "greeter"): Some(1)})"#),
        "{out:#?}"
    );
    sim.run(
        "target gauge",
        vec![
            // A second registration with a pod: only its target is reported.
            step(apply(reg("cart")), &[], &[]),
            later(
                SEC,
                step(
                    Input::pod(watcher::Event::Apply(pod("cart", "c1", "127.0.0.2"))),
                    &[],
                    &[],
                ),
            ),
            flush(
                &[
                    r#"Metric TargetEndpoints({("shop", "cart"): Some(1)})"#,
                    "Metric Registrations(2)",
                ],
                &[],
            ),
            // greeter's pod goes: greeter at 0, cart not reported.
            later(
                SEC,
                step(
                    Input::pod(watcher::Event::Apply(not_ready(pod(
                        "greeter",
                        "g1",
                        "127.0.0.1",
                    )))),
                    &[],
                    &[],
                ),
            ),
            flush(
                &[r#"Metric TargetEndpoints({("shop", "greeter"): Some(0)})"#],
                &[],
            ),
            // A flush that changes no key reports no target.
            later(
                SEC,
                step(
                    Input::pod(watcher::Event::Apply(pod("nobody", "n1", "127.0.0.9"))),
                    &[],
                    &[],
                ),
            ),
            flush(&[], &["Metric TargetEndpoints"]),
            // cart's registration is gone: its series goes.
            later(
                SEC,
                step(
                    Input::registration(watcher::Event::Delete(reg("cart"))),
                    &[],
                    &[],
                ),
            ),
            flush(
                &[
                    r#"Metric TargetEndpoints({("shop", "cart"): None})"#,
                    "Metric Registrations(1)",
                ],
                &[],
            ),
        ],
    );
}
