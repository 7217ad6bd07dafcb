//! Connecting as configured by [`ConnectArgs`]: the Kubernetes client and the cluster id. One
//! place for `run`, `inspect` and `doctor`; and the deadline of the diagnostic commands'
//! requests ([`timed`]).

use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;

use crate::config::ConnectArgs;

/// The Kubernetes client: `--kubeconfig`, else in-cluster, else `$KUBECONFIG`/`~/.kube/config`.
pub async fn kube_client(args: &ConnectArgs) -> anyhow::Result<kube::Client> {
    let config = match &args.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("--kubeconfig: cannot read {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .context("--kubeconfig")?
        }
        None => kube::Config::infer()
            .await
            .context("no Kubernetes configuration found")?,
    };
    kube::Client::try_from(config).context("building the Kubernetes client")
}

/// This cluster's id: `--cluster-id`, else the UID of the `kube-system` namespace.
pub async fn cluster_id(client: &kube::Client, args: &ConnectArgs) -> anyhow::Result<String> {
    match &args.cluster_id {
        Some(id) => Ok(id.clone()),
        None => Api::<Namespace>::all(client.clone())
            .get("kube-system")
            .await
            .context("reading the kube-system namespace for the default --cluster-id")?
            .metadata
            .uid
            .context("kube-system has no uid; set --cluster-id"),
    }
}

/// How long one etcd or API request of a diagnostic command (`inspect`, `doctor`) may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// `fut` with [`REQUEST_TIMEOUT`]; the error names `what`.
pub async fn timed<T>(what: &str, fut: impl std::future::Future<Output = T>) -> anyhow::Result<T> {
    tokio::time::timeout(REQUEST_TIMEOUT, fut)
        .await
        .with_context(|| format!("{what}: no answer within {REQUEST_TIMEOUT:?}"))
}
