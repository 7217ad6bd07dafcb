//! The stand-in kubelet ([`PodServers`]) behaves like a real one on a kwok cluster: driven by a
//! pod watch, on a pod's deletion it serves on for the `preStop` time, then sends the SIGTERM
//! equivalent (the drainer's trigger), kills the server at the end of the grace period (counted
//! from the deletion) when it has not exited by itself, and only then lets the pod go (its
//! finalizer). It never looks at etcd; there is none here.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, PostParams};
use registrar_testenv::greeter::{BoxUnit, Drainer};
use registrar_testenv::pod_servers::{FINALIZER, PodServers, Termination};
use registrar_testenv::{Cluster, poll, unique_name};
use serde_json::json;
use tokio::time::Instant;

#[tokio::test]
async fn a_deleted_pod_gets_pre_stop_then_sigterm_then_is_killed_at_the_grace_period() {
    const PRE_STOP: Duration = Duration::from_millis(300);
    const GRACE: Duration = Duration::from_millis(1500);
    let cluster = Cluster::start(1).await.unwrap();
    let client = cluster.client().await.unwrap();
    let ns = unique_name("kubelet");
    let namespace: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .unwrap();

    // A server that ignores its SIGTERM (the drainer never ends): only the kill stops it.
    let sigterm: Arc<Mutex<Option<Instant>>> = Arc::default();
    let seen = sigterm.clone();
    let drainer: Drainer = Arc::new(move |_reporter, trigger: BoxUnit| -> BoxUnit {
        let seen = seen.clone();
        Box::pin(async move {
            trigger.await;
            *seen.lock().unwrap() = Some(Instant::now());
            std::future::pending::<()>().await;
        })
    });
    let termination = Termination {
        pre_stop: PRE_STOP,
        grace: GRACE,
    };
    let kubelet =
        PodServers::start_draining(client.clone(), &ns, "app=k", 50051, termination, drainer);
    let deploy: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "k"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "k"}},
            "template": {
                "metadata": {"labels": {"app": "k"}, "finalizers": [FINALIZER]},
                "spec": {"containers": [{"name": "k", "image": "example.invalid/k"}]}
            }
        }
    }))
    .unwrap();
    Api::<Deployment>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &deploy)
        .await
        .unwrap();
    let addr = poll("the pod's server", Duration::from_secs(120), || async {
        kubelet.serving().first().copied()
    })
    .await
    .unwrap();
    tokio::net::TcpStream::connect(addr).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod = pods.list(&Default::default()).await.unwrap().items[0]
        .metadata
        .name
        .clone()
        .unwrap();
    // Scale to 0 so that no replacement takes the address.
    Api::<Deployment>::namespaced(client.clone(), &ns)
        .patch(
            "k",
            &Default::default(),
            &kube::api::Patch::Merge(json!({"spec": {"replicas": 0}})),
        )
        .await
        .unwrap();

    let before_delete = Instant::now();
    pods.delete(&pod, &DeleteParams::default()).await.unwrap();
    let signalled = poll("SIGTERM", Duration::from_secs(10), || async {
        *sigterm.lock().unwrap()
    })
    .await
    .unwrap();
    // Still serving after SIGTERM (its drainer never ends), until the grace period is over;
    // the pod stays Terminating meanwhile (the finalizer).
    let serving_after_sigterm = tokio::net::TcpStream::connect(addr).await.is_ok();
    let terminating = pods
        .get_opt(&pod)
        .await
        .unwrap()
        .is_some_and(|p| p.metadata.deletion_timestamp.is_some());
    let killed = poll("the server killed", Duration::from_secs(10), || async {
        tokio::net::TcpStream::connect(addr)
            .await
            .is_err()
            .then(Instant::now)
    })
    .await
    .unwrap();
    let released = poll("the pod gone", Duration::from_secs(10), || async {
        pods.get_opt(&pod).await.ok()?.is_none().then(Instant::now)
    })
    .await
    .unwrap();
    let (to_sigterm, to_kill, to_gone) = (
        signalled - before_delete,
        killed - before_delete,
        released - before_delete,
    );
    println!(
        "pod deleted -> SIGTERM {to_sigterm:.2?} (preStop {PRE_STOP:?}), server killed \
         {to_kill:.2?} (grace {GRACE:?}), pod gone {to_gone:.2?}; drains {:?}",
        kubelet.drains()
    );
    assert!(
        to_sigterm >= PRE_STOP,
        "SIGTERM before preStop ended: {to_sigterm:?}"
    );
    assert!(
        to_sigterm < PRE_STOP + Duration::from_secs(5),
        "SIGTERM late: {to_sigterm:?}"
    );
    assert!(
        serving_after_sigterm,
        "the server stopped before the grace period"
    );
    assert!(
        to_kill >= GRACE,
        "killed before the grace period: {to_kill:?}"
    );
    assert!(terminating, "the pod went before its server stopped");
    // The deleted pod was drained once. (Under load the ReplicaSet controller may have made a
    // second pod before the scale to 0, which the kubelet then drains too.)
    let drains = kubelet.drains();
    assert_eq!(
        drains.iter().filter(|(name, _)| *name == pod).count(),
        1,
        "{drains:?}"
    );
}
