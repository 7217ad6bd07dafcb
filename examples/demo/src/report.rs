//! What a demo run produced, phase by phase: the pods, the keys in etcd, and which backend
//! answered how many RPCs, with every failure counted.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::client::Counts;

/// A pod of the workload at the end of a phase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    /// Its UID.
    pub uid: String,
    /// `podIP:port`, where its server listens and what the operator published.
    pub addr: String,
    /// The zone the operator published for it (its node's `topology.kubernetes.io/zone`).
    pub zone: Option<String>,
}

/// One phase: a change to the Deployment, the time to settle, then a steady window.
#[derive(Clone, Debug)]
pub struct PhaseReport {
    /// Short name (`deploy`, `scale to 5`, `roll`, `scale to 2`).
    pub name: String,
    /// Replicas asked for.
    pub replicas: usize,
    /// The Ready pods once settled, by name.
    pub pods: BTreeMap<String, PodInfo>,
    /// The keys under the target in etcd once settled.
    pub etcd_keys: Vec<String>,
    /// From the change to: every pod Ready and serving, etcd exactly matching, and (after the
    /// first phase) every backend READY in the client.
    pub settled_in: Duration,
    /// RPCs while the change was under way.
    pub during_change: Counts,
    /// RPCs in the steady window after it settled.
    pub steady: Counts,
}

impl PhaseReport {
    /// Failed RPCs in this phase (during the change and after).
    pub fn failures(&self) -> u64 {
        self.during_change.failures + self.steady.failures
    }

    /// Pods that answered no RPC in the steady window.
    pub fn idle_pods(&self) -> Vec<String> {
        self.pods
            .keys()
            .filter(|p| self.steady.by_backend.get(*p).copied().unwrap_or(0) == 0)
            .cloned()
            .collect()
    }
}

/// The whole run.
#[derive(Clone, Debug, Default)]
pub struct DemoReport {
    /// The etcd target the client balanced over.
    pub target: String,
    /// The phases in order.
    pub phases: Vec<PhaseReport>,
}

impl DemoReport {
    /// Failed RPCs over the whole run.
    pub fn failures(&self) -> u64 {
        self.phases.iter().map(PhaseReport::failures).sum()
    }

    /// RPCs over the whole run (answered or failed).
    pub fn rpcs(&self) -> u64 {
        self.phases
            .iter()
            .map(|p| p.during_change.total() + p.steady.total())
            .sum()
    }

    /// True when every RPC succeeded and every pod of every phase answered in its steady window.
    pub fn success(&self) -> bool {
        self.failures() == 0 && self.phases.iter().all(|p| p.idle_pods().is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(pairs: &[(&str, u64)], failures: u64) -> Counts {
        Counts {
            by_backend: pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            failures,
            errors: vec![],
        }
    }

    #[test]
    fn success_needs_every_pod_answering_and_no_failure() {
        let pod = |addr: &str| PodInfo {
            uid: addr.into(),
            addr: addr.into(),
            zone: None,
        };
        let mut phase = PhaseReport {
            name: "deploy".into(),
            replicas: 2,
            pods: BTreeMap::from([("a".to_string(), pod("1")), ("b".to_string(), pod("2"))]),
            etcd_keys: vec![],
            settled_in: Duration::ZERO,
            during_change: counts(&[("a", 3)], 0),
            steady: counts(&[("a", 5), ("b", 4)], 0),
        };
        let mut report = DemoReport {
            target: "t".into(),
            phases: vec![phase.clone()],
        };
        assert!(report.success());
        assert_eq!(report.rpcs(), 12);

        phase.steady = counts(&[("a", 9)], 0);
        report.phases = vec![phase.clone()];
        assert_eq!(report.phases[0].idle_pods(), vec!["b".to_string()]);
        assert!(!report.success());

        phase.steady = counts(&[("a", 5), ("b", 4)], 0);
        phase.during_change.failures = 1;
        report.phases = vec![phase];
        assert_eq!(report.failures(), 1);
        assert!(!report.success());
    }
}
