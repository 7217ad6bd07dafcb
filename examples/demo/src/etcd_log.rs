//! Narrates the operator's writes: watches the target's keys in etcd and prints every PUT and
//! DELETE as it happens, plus the `etcdctl get --prefix` view.

use std::collections::HashMap;
use std::sync::Arc;

use etcd_client::{EventType, GetOptions, WatchOptions};
use tokio::task::JoinHandle;

use crate::console::Console;

/// The running watch; stops when dropped.
pub struct EtcdLog {
    task: JoinHandle<()>,
}

impl EtcdLog {
    /// Prints the changes under `<target>/` from now on.
    pub async fn start(
        mut etcd: etcd_client::Client,
        target: &str,
        console: Arc<Console>,
    ) -> Result<EtcdLog, etcd_client::Error> {
        let prefix = format!("{target}/");
        let mut stream = etcd
            .watch(prefix.as_str(), Some(WatchOptions::new().with_prefix()))
            .await?;
        let task = tokio::spawn(async move {
            // Which pod each key belonged to, to name it on DELETE.
            let mut pods: HashMap<String, String> = HashMap::new();
            loop {
                match stream.message().await {
                    Ok(Some(resp)) => {
                        for ev in resp.events() {
                            let Some(kv) = ev.kv() else { continue };
                            let key = String::from_utf8_lossy(kv.key()).into_owned();
                            let line = match ev.event_type() {
                                EventType::Put => {
                                    let pod = pod_of(kv.value());
                                    let text = pod
                                        .as_ref()
                                        .map(|p| format!("   (pod {p})"))
                                        .unwrap_or_default();
                                    if let Some(pod) = pod {
                                        pods.insert(key.clone(), pod);
                                    }
                                    format!("PUT     {key}{text}")
                                }
                                EventType::Delete => match pods.remove(&key) {
                                    Some(pod) => format!("DELETE  {key}   (pod {pod})"),
                                    None => format!("DELETE  {key}"),
                                },
                            };
                            console.event("etcd", line);
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        console.event("etcd", format!("watch failed: {e}"));
                        break;
                    }
                }
            }
        });
        Ok(EtcdLog { task })
    }
}

impl Drop for EtcdLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The `pod` field of an endpoint value's Metadata.
fn pod_of(value: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(value).ok()?;
    Some(v.get("Metadata")?.get("pod")?.as_str()?.to_string())
}

/// Every key under `<target>/` with its value, sorted by key.
pub async fn list(
    etcd: &mut etcd_client::Client,
    target: &str,
) -> Result<Vec<(String, String)>, etcd_client::Error> {
    let resp = etcd
        .get(format!("{target}/"), Some(GetOptions::new().with_prefix()))
        .await?;
    let mut kvs: Vec<(String, String)> = resp
        .kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                String::from_utf8_lossy(kv.value()).into_owned(),
            )
        })
        .collect();
    kvs.sort();
    Ok(kvs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_names_come_from_the_metadata() {
        assert_eq!(
            pod_of(br#"{"Op":0,"Addr":"a:1","Metadata":{"pod":"p1","node":"n"}}"#),
            Some("p1".to_string())
        );
        assert_eq!(pod_of(br#"{"Op":0,"Addr":"a:1","Metadata":null}"#), None);
        assert_eq!(pod_of(b"not json"), None);
    }
}
