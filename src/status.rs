//! The status a registration should show, computed from what it wants published and from the
//! state of the etcd writer. Pure: the controller writes the result only when `changed` is set.
//!
//! The `Ready` condition, in order of precedence:
//!
//! | situation                                 | status  | reason                 |
//! |-------------------------------------------|---------|------------------------|
//! | the prefix is claimed by another cluster  | False   | `PrefixOwnedElsewhere` |
//! | etcd cannot be written                    | False   | `EtcdUnavailable`      |
//! | the writer has not started yet            | Unknown | `Pending`              |
//! | a selected pod lacks the named port       | False   | `PortNotFound`         |
//! | a selected pod has an unparsable IP       | False   | `InvalidPodIP`         |
//! | pods qualify; etcd holds none of them yet | Unknown | `Pending` (1)          |
//! | no selected pod qualifies                 | False   | `NoReadyPods`          |
//! | otherwise                                 | True    | `Published`            |
//!
//! (1) A new registration between the decision and the writer's txn is not a problem to warn
//! about. One that showed a problem (any `False` reason) keeps showing it until the txn, so
//! that its end is announced by a `Published` Event.
//!
//! A registration with some pods lacking the named port is `False` even if other pods are
//! published (`readyEndpoints` still counts them): a half-working registration is a
//! misconfiguration to surface, not a success. `lastTransitionTime` changes only when the
//! condition's status changes, like `meta.SetStatusCondition`.
//!
//! `readyEndpoints`, `endpoints`, and the choice between `Pending`, `NoReadyPods` and
//! `Published` describe what etcd holds ([`InEtcd`]: the registration's endpoints as of the
//! last desired state the writer applied, see [`published`]), not what is about to be written:
//! during an outage a pod that turns Ready is counted only in the message ("waiting to be
//! published").

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::crd::{
    Condition, MAX_STATUS_ENDPOINTS, READY_CONDITION, ServiceRegistration,
    ServiceRegistrationStatus,
};
use crate::desired::{Problem, RegistrationOutcome};

pub mod published;
pub mod terminating;

/// Reasons of the `Ready` condition.
pub mod reason {
    /// Endpoints are published.
    pub const PUBLISHED: &str = "Published";
    /// No selected pod is ready (or, with publishNotReady, has an IP).
    pub const NO_READY_PODS: &str = "NoReadyPods";
    /// Some selected pod has no container port with the registration's port name.
    pub const PORT_NOT_FOUND: &str = "PortNotFound";
    /// Some selected pod has an IP that cannot be parsed.
    pub const INVALID_POD_IP: &str = "InvalidPodIP";
    /// etcd cannot be written.
    pub const ETCD_UNAVAILABLE: &str = "EtcdUnavailable";
    /// Another cluster owns the etcd prefix.
    pub const PREFIX_OWNED_ELSEWHERE: &str = "PrefixOwnedElsewhere";
    /// The etcd writer has not reached etcd yet, or has not yet written any of the
    /// registration's endpoints.
    pub const PENDING: &str = "Pending";
}

/// At most this many problem subjects (pods) are named in a condition message.
const MAX_NAMED_IN_MESSAGE: usize = 5;
/// Longest text taken from an external error (etcd) into a condition message, in characters.
const MAX_EXTERNAL_TEXT: usize = 512;

/// State of the etcd writer, as far as a registration's status is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Publishing {
    /// The writer holds the prefix and a lease: desired keys are (being) written.
    Ok,
    /// The writer has not reached etcd yet.
    Pending,
    /// etcd cannot be written; the text says why.
    EtcdUnavailable(String),
    /// The prefix is claimed by another cluster (its id).
    PrefixOwnedElsewhere(String),
}

/// The status to show, and whether it differs from the registration's current one.
#[derive(Clone, Debug, PartialEq)]
pub struct StatusUpdate {
    /// The complete new status.
    pub status: ServiceRegistrationStatus,
    /// The new status differs from the current one: write it.
    pub changed: bool,
    /// The Ready condition's reason differs from the current one (or there was none): a
    /// moment for a Kubernetes Event.
    pub reason_changed: bool,
}

impl StatusUpdate {
    /// The new Ready condition.
    pub fn ready(&self) -> Option<&Condition> {
        ready_condition(&self.status)
    }
}

/// A registration's endpoints that etcd holds: their number and the first
/// [`MAX_STATUS_ENDPOINTS`] addresses (sorted).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InEtcd {
    /// How many.
    pub count: usize,
    /// The first addresses, sorted.
    pub endpoints: Vec<String>,
}

impl InEtcd {
    /// All endpoints of `outcome` (once the writer applied it).
    pub fn of(outcome: &RegistrationOutcome) -> Self {
        InEtcd {
            count: outcome.endpoints.len(),
            endpoints: outcome
                .endpoints
                .keys()
                .take(MAX_STATUS_ENDPOINTS)
                .cloned()
                .collect(),
        }
    }

    /// What a status says etcd holds.
    fn shown_in(status: &ServiceRegistrationStatus) -> Self {
        InEtcd {
            count: usize::try_from(status.ready_endpoints).unwrap_or(0),
            endpoints: status.endpoints.clone(),
        }
    }
}

/// The status `reg` should have given `outcome` (its endpoints and problems) and `publishing`,
/// when etcd holds exactly the endpoints of `outcome`. `now` becomes `lastTransitionTime` when
/// the Ready condition's status changes.
pub fn next_status(
    reg: &ServiceRegistration,
    outcome: &RegistrationOutcome,
    publishing: &Publishing,
    now: Time,
) -> StatusUpdate {
    next_status_from(
        reg,
        reg.status.as_ref(),
        outcome,
        Some(&InEtcd::of(outcome)),
        publishing,
        now,
    )
}

/// The status `reg` should have, replacing `previous` (the status it has or is about to have),
/// given what it wants published (`outcome`), what etcd holds of it (`in_etcd`; None when not
/// known yet: `previous` stays right about that) and `publishing`.
pub fn next_status_from(
    reg: &ServiceRegistration,
    previous: Option<&ServiceRegistrationStatus>,
    outcome: &RegistrationOutcome,
    in_etcd: Option<&InEtcd>,
    publishing: &Publishing,
    now: Time,
) -> StatusUpdate {
    let in_etcd = match in_etcd {
        Some(e) => e.clone(),
        None => previous.map(InEtcd::shown_in).unwrap_or_default(),
    };
    let generation = reg.metadata.generation;
    let previous_ready = previous.and_then(ready_condition);
    let decided = ready(outcome, &in_etcd, publishing);
    // Waiting for the writer's txn after a problem was shown: the problem stays until the
    // endpoints are in etcd, so that its end is announced (`Published` after a False reason)
    // rather than hidden behind a `Pending` in between.
    let waiting = decided.1 == reason::PENDING && *publishing == Publishing::Ok;
    let (status, reason, message): (&str, &str, String) =
        match previous_ready.filter(|c| waiting && c.status == "False") {
            Some(shown) => (&shown.status, &shown.reason, shown.message.clone()),
            None => decided,
        };
    let last_transition_time = match previous_ready {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => now,
    };
    let condition = Condition {
        type_: READY_CONDITION.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time,
    };
    // Replace the Ready condition in place, keeping conditions of other types (and their order).
    let mut conditions: Vec<Condition> = previous.map(|s| s.conditions.clone()).unwrap_or_default();
    match conditions.iter_mut().find(|c| c.type_ == READY_CONDITION) {
        Some(slot) => *slot = condition,
        None => conditions.push(condition),
    }

    let status = ServiceRegistrationStatus {
        observed_generation: generation,
        service: Some(reg.service_name().to_string()),
        target: Some(outcome.target.clone()),
        ready_endpoints: i64::try_from(in_etcd.count).unwrap_or(i64::MAX),
        endpoints: in_etcd.endpoints,
        conditions,
    };
    StatusUpdate {
        changed: previous != Some(&status),
        reason_changed: previous_ready.map(|c| c.reason.as_str()) != Some(reason),
        status,
    }
}

/// The Ready condition of `status`, if it has one.
pub fn ready_condition(status: &ServiceRegistrationStatus) -> Option<&Condition> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == READY_CONDITION)
}

/// (status, reason, message) of the Ready condition. While etcd cannot be written, the message
/// counts what waits to be published; otherwise what etcd holds.
fn ready(
    outcome: &RegistrationOutcome,
    in_etcd: &InEtcd,
    publishing: &Publishing,
) -> (&'static str, &'static str, String) {
    let waiting = plural(outcome.endpoints.len(), "endpoint", "endpoints");
    let count = in_etcd.count;
    let endpoints = plural(count, "endpoint", "endpoints");
    match publishing {
        Publishing::PrefixOwnedElsewhere(owner) => {
            return (
                "False",
                reason::PREFIX_OWNED_ELSEWHERE,
                format!(
                    "the etcd prefix of {} is claimed by another cluster ({}); nothing is written",
                    outcome.target,
                    clip(owner)
                ),
            );
        }
        Publishing::EtcdUnavailable(why) => {
            return (
                "False",
                reason::ETCD_UNAVAILABLE,
                format!(
                    "etcd is unavailable ({}); {waiting} waiting to be published to {}",
                    clip(why),
                    outcome.target
                ),
            );
        }
        Publishing::Pending => {
            return (
                "Unknown",
                reason::PENDING,
                format!("waiting for the connection to etcd; {waiting} to publish"),
            );
        }
        Publishing::Ok => {}
    }
    let port_problems: Vec<&Problem> = outcome
        .problems
        .iter()
        .filter(|p| {
            matches!(
                p,
                Problem::PortNotFound { .. } | Problem::InvalidPort { .. }
            )
        })
        .collect();
    if !port_problems.is_empty() {
        return (
            "False",
            reason::PORT_NOT_FOUND,
            format!("{}; {endpoints} published", summarize(&port_problems)),
        );
    }
    if !outcome.problems.is_empty() {
        let problems: Vec<&Problem> = outcome.problems.iter().collect();
        return (
            "False",
            reason::INVALID_POD_IP,
            format!("{}; {endpoints} published", summarize(&problems)),
        );
    }
    if count == 0 && !outcome.endpoints.is_empty() {
        // A new registration (or one whose pods all just turned Ready) between the decision and
        // the writer's txn: not a problem to warn about, only not done yet.
        return (
            "Unknown",
            reason::PENDING,
            format!("{waiting} waiting to be published to {}", outcome.target),
        );
    }
    if count == 0 {
        return (
            "False",
            reason::NO_READY_PODS,
            "no ready pod with an IP matches the selector".into(),
        );
    }
    (
        "True",
        reason::PUBLISHED,
        format!("{endpoints} published to {}", outcome.target),
    )
}

/// The first few problems, and how many more there are.
fn summarize(problems: &[&Problem]) -> String {
    let mut text = problems
        .iter()
        .take(MAX_NAMED_IN_MESSAGE)
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    if problems.len() > MAX_NAMED_IN_MESSAGE {
        text.push_str(&format!(
            " (and {} more)",
            problems.len() - MAX_NAMED_IN_MESSAGE
        ));
    }
    text
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// `text` cut to [`MAX_EXTERNAL_TEXT`] characters.
fn clip(text: &str) -> String {
    match text.char_indices().nth(MAX_EXTERNAL_TEXT) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests;
