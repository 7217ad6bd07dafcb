//! Pointing an API client at a proxy (the proxy itself, `DelayProxy`, is in the test ground).

/// A copy of `kubeconfig` (in `dir`) whose server URL points at `port` instead of the API
/// server's `api_port`.
pub fn kubeconfig_via(
    kubeconfig: &std::path::Path,
    api_port: u16,
    port: u16,
    dir: &std::path::Path,
) -> anyhow::Result<std::path::PathBuf> {
    let text = std::fs::read_to_string(kubeconfig)?;
    let from = format!("https://127.0.0.1:{api_port}");
    anyhow::ensure!(text.contains(&from), "{from} not in the kubeconfig");
    let path = dir.join("via-proxy.kubeconfig");
    std::fs::write(
        &path,
        text.replace(&from, &format!("https://127.0.0.1:{port}")),
    )?;
    Ok(path)
}
