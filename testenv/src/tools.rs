//! Where the pinned control-plane binaries are: `$REGISTRAR_TOOLS_BIN`, or else whatever
//! `hack/tools.sh` builds (or finds already built) in its cache.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use anyhow::{Context, Result};

/// The workspace root (where `crds/`, `hack/` and `Cargo.toml` are).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn tools_dir() -> Result<&'static Path> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("REGISTRAR_TOOLS_BIN") {
            return Ok(PathBuf::from(dir));
        }
        let script = workspace_root().join("hack/tools.sh");
        let out = Command::new("bash")
            .arg(&script)
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("running {}: {e}", script.display()))?;
        if !out.status.success() {
            return Err(format!("{} failed with {}", script.display(), out.status));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        stdout
            .lines()
            .last()
            .map(|l| PathBuf::from(l.trim()))
            .ok_or_else(|| format!("{} printed no directory", script.display()))
    });
    dir.as_deref().map_err(|e| anyhow::anyhow!("{e}"))
}

/// The path of one pinned binary (`etcd`, `kube-apiserver`, `kwok`, `helm`, ...).
pub fn tool(name: &str) -> Result<PathBuf> {
    let path = tools_dir()?.join(name);
    anyhow::ensure!(
        path.is_file(),
        "{} is missing: run hack/tools.sh (or set REGISTRAR_TOOLS_BIN)",
        path.display()
    );
    Ok(path)
}

/// Runs a tool to completion and returns its stdout; fails with its stderr.
pub fn run_tool(name: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(tool(name)?)
        .args(args)
        .output()
        .with_context(|| format!("running {name}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{name} {args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
