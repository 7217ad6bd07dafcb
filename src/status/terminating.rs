//! The `Terminating` condition of a deleted registration whose keys cannot leave etcd yet.
//!
//! A registration is deleted only once its keys are gone from etcd (the finalizer), so while
//! etcd cannot be written (or the prefix is claimed by another cluster) its deletion waits.
//! That is by design — releasing the finalizer without deleting the keys would leave endpoints
//! that clients dial until their lease expires, and forever if the lease survives — but it must
//! not be silent: the registration shows a `Terminating` condition (status True) saying why,
//! with the way out, and the controller publishes a Warning Event when the reason changes.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::{Publishing, StatusUpdate, clip};
use crate::crd::{Condition, ServiceRegistration, ServiceRegistrationStatus};

/// The type of the condition.
pub const TERMINATING_CONDITION: &str = "Terminating";

/// The Event reason (and the condition's reason is the writer's state, e.g. `EtcdUnavailable`).
pub const DELETION_BLOCKED: &str = "DeletionBlocked";

/// The status a deleted `reg` still holding the finalizer should show, replacing `previous`,
/// when `publishing` keeps its keys in etcd; `None` when nothing blocks the deletion (the
/// keys are being removed, or the writer has not reached etcd yet and may still).
/// `reason_changed` is set when the Terminating condition is new or its reason changed.
pub fn terminating_status(
    reg: &ServiceRegistration,
    previous: Option<&ServiceRegistrationStatus>,
    target: &str,
    finalizer: &str,
    publishing: &Publishing,
    now: Time,
) -> Option<StatusUpdate> {
    let (reason, why) = match publishing {
        Publishing::EtcdUnavailable(why) => (
            super::reason::ETCD_UNAVAILABLE,
            format!("etcd cannot be reached ({})", clip(why)),
        ),
        Publishing::PrefixOwnedElsewhere(owner) => (
            super::reason::PREFIX_OWNED_ELSEWHERE,
            format!(
                "the etcd prefix is claimed by another cluster ({})",
                clip(owner)
            ),
        ),
        Publishing::Ok | Publishing::Pending => return None,
    };
    let name = reg.metadata.name.as_deref().unwrap_or_default();
    let namespace = reg.metadata.namespace.as_deref().unwrap_or_default();
    let message = format!(
        "deletion waits until the keys under {target}/ are removed from etcd: {why}; it \
         completes by itself once etcd can be written. To delete anyway (etcd or the operator \
         is going away), remove the finalizer {finalizer} (kubectl -n {namespace} patch \
         serviceregistration {name} --type=json -p '[{{\"op\":\"remove\",\"path\":\"/metadata/finalizers\"}}]' \
         when it is the only one); the keys left are removed once the operator reaches etcd \
         again, or by hand with etcdctl del --prefix {target}/"
    );
    let mut conditions: Vec<Condition> = previous.map(|s| s.conditions.clone()).unwrap_or_default();
    let old = conditions
        .iter()
        .find(|c| c.type_ == TERMINATING_CONDITION)
        .cloned();
    let condition = Condition {
        type_: TERMINATING_CONDITION.into(),
        status: "True".into(),
        reason: reason.into(),
        message,
        observed_generation: reg.metadata.generation,
        last_transition_time: match &old {
            Some(c) if c.status == "True" => c.last_transition_time.clone(),
            _ => now,
        },
    };
    match conditions
        .iter_mut()
        .find(|c| c.type_ == TERMINATING_CONDITION)
    {
        Some(slot) => *slot = condition,
        None => conditions.push(condition),
    }
    let status = ServiceRegistrationStatus {
        conditions,
        ..previous.cloned().unwrap_or_default()
    };
    Some(StatusUpdate {
        changed: previous != Some(&status),
        reason_changed: old.map(|c| c.reason) != Some(reason.to_owned()),
        status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ServiceRegistrationSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    use k8s_openapi::jiff::Timestamp;

    fn time(s: i64) -> Time {
        Time(Timestamp::from_second(s).unwrap())
    }

    fn reg() -> ServiceRegistration {
        let mut reg = ServiceRegistration::new(
            "greeter",
            ServiceRegistrationSpec {
                service: None,
                selector: LabelSelector::default(),
                port: IntOrString::Int(50051),
                metadata: None,
                publish_not_ready: false,
            },
        );
        reg.metadata.namespace = Some("shop".into());
        reg.metadata.generation = Some(2);
        reg
    }

    const T: &str = "registrar/shop/greeter";
    const F: &str = "registrar.dev/cleanup";

    #[test]
    fn nothing_while_the_keys_can_be_removed() {
        for p in [Publishing::Ok, Publishing::Pending] {
            assert_eq!(terminating_status(&reg(), None, T, F, &p, time(1)), None);
        }
    }

    #[test]
    fn etcd_down_shows_why_and_the_way_out() {
        let ready = Condition {
            type_: "Ready".into(),
            status: "True".into(),
            reason: "Published".into(),
            message: "1 endpoint published".into(),
            observed_generation: Some(2),
            last_transition_time: time(1),
        };
        let previous = ServiceRegistrationStatus {
            ready_endpoints: 1,
            conditions: vec![ready.clone()],
            ..Default::default()
        };
        let down = Publishing::EtcdUnavailable("connection refused".into());
        let u = terminating_status(&reg(), Some(&previous), T, F, &down, time(10)).unwrap();
        assert!(u.changed && u.reason_changed);
        assert_eq!(
            u.status.ready_endpoints, 1,
            "the rest of the status is kept"
        );
        assert_eq!(u.status.conditions[0], ready, "Ready is kept");
        let c = &u.status.conditions[1];
        assert_eq!(
            (c.type_.as_str(), c.status.as_str(), c.reason.as_str()),
            ("Terminating", "True", "EtcdUnavailable")
        );
        assert_eq!(c.last_transition_time, time(10));
        for part in [
            "connection refused",
            "etcdctl del --prefix registrar/shop/greeter/",
            "kubectl -n shop patch serviceregistration greeter",
        ] {
            assert!(
                c.message.contains(part),
                "{part:?} missing in {}",
                c.message
            );
        }
        // Again: nothing to write; another reason: an Event, the time kept.
        let again = terminating_status(&reg(), Some(&u.status), T, F, &down, time(20)).unwrap();
        assert!(!again.changed && !again.reason_changed);
        let owned = Publishing::PrefixOwnedElsewhere("cluster-b".into());
        let o = terminating_status(&reg(), Some(&u.status), T, F, &owned, time(30)).unwrap();
        assert!(o.changed && o.reason_changed);
        assert_eq!(o.status.conditions[1].reason, "PrefixOwnedElsewhere");
        assert_eq!(o.status.conditions[1].last_transition_time, time(10));
    }
}
