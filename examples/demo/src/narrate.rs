//! The narration around the phases: the `kubectl get svcreg` and `etcdctl get` views once a
//! change has settled, each phase's final traffic table and verdict, and the closing summary.

use std::time::Duration;

use kube::api::ListParams;

use crate::console::Console;
use crate::render;
use crate::report::{DemoReport, PhaseReport};
use crate::scenario::NAMESPACE;
use crate::settle::{Settled, World};

impl World {
    /// How long the change took, then the registration and the keys in etcd.
    pub(crate) async fn show_settled(&self, s: &Settled, took: Duration) {
        self.console.line(format!(
            "settled in {:.1}s: {n} pods Ready and serving, {n} keys in etcd, {n} backends READY in the client",
            took.as_secs_f64(),
            n = s.pods.len()
        ));
        let now = k8s_openapi::jiff::Timestamp::now().as_second();
        let regs = self.regs.list(&ListParams::default()).await;
        let mut lines = vec![format!("$ kubectl get svcreg -n {NAMESPACE} -o wide")];
        match regs {
            Ok(list) => lines.extend(render::svcreg_table(&list.items, now)),
            Err(e) => lines.push(format!("(cannot list: {e})")),
        }
        lines.push(String::new());
        lines.push(format!("$ etcdctl get --prefix {}/", self.target));
        lines.extend(render::etcd_listing(&s.keys));
        self.console.block(&lines);
    }

    /// The steady window's traffic table and the phase's verdict.
    pub(crate) fn show_phase(&self, heading: &str, p: &PhaseReport) {
        let rows: Vec<render::Row> = p
            .pods
            .iter()
            .map(|(pod, info)| render::Row {
                pod: pod.clone(),
                addr: info.addr.clone(),
                zone: info.zone.clone().unwrap_or_else(|| "-".into()),
                server: "serving".into(),
                client: "READY".into(),
            })
            .collect();
        let mut lines =
            render::traffic_table(&format!("{heading}, steady window"), &rows, &p.steady, 0);
        // The heading line of the table counts the whole run's failures; use the phase's.
        if let Some(l) = lines.get_mut(1) {
            *l = format!(
                "  {heading}, steady window: {} RPCs answered, {} failed (while changing: {} answered, {} failed)",
                p.steady.ok(),
                p.steady.failures,
                p.during_change.ok(),
                p.during_change.failures
            );
        }
        self.console.print(&lines);
        let idle = p.idle_pods();
        let verdict = if idle.is_empty() && p.failures() == 0 {
            format!(
                "every one of the {} pods answered; no RPC failed",
                p.pods.len()
            )
        } else if idle.is_empty() {
            format!("{} RPCs FAILED: {:?}", p.failures(), errors_of(p))
        } else {
            format!(
                "pods that answered nothing: {idle:?}; {} RPCs failed",
                p.failures()
            )
        };
        self.console.line(verdict);
    }
}

fn errors_of(p: &PhaseReport) -> Vec<String> {
    p.during_change
        .errors
        .iter()
        .chain(&p.steady.errors)
        .cloned()
        .collect()
}

/// One line per phase, and the first errors if any.
pub(crate) fn show_summary(console: &Console, report: &DemoReport) {
    console.step(format!(
        "Summary: {} RPCs through the balancer, {} failed",
        report.rpcs(),
        report.failures()
    ));
    let mut rows = vec![
        [
            "PHASE",
            "PODS",
            "SETTLED IN",
            "RPCS (CHANGING)",
            "RPCS (STEADY)",
            "PODS ANSWERING",
            "FAILED",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for p in &report.phases {
        rows.push(vec![
            p.name.clone(),
            p.pods.len().to_string(),
            format!("{:.1}s", p.settled_in.as_secs_f64()),
            p.during_change.total().to_string(),
            p.steady.total().to_string(),
            format!("{}/{}", p.pods.len() - p.idle_pods().len(), p.pods.len()),
            p.failures().to_string(),
        ]);
    }
    console.block(&render::columns(&rows));
    let errors: Vec<String> = report.phases.iter().flat_map(errors_of).take(5).collect();
    if !errors.is_empty() {
        console.line(format!("first errors: {errors:?}"));
    }
}
