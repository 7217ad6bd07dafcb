//! Builds a small Go module of the project's tests (e.g. the grpc-go interop client) with the
//! machine's Go (`GOTOOLCHAIN=local`, `$GO` or `go` on `PATH`), cached by a hash of its sources.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use anyhow::{Context, Result, bail};

/// FNV-1a over `go.mod`, `go.sum` and the `.go` files of `dir` (sorted): the cache key.
fn source_hash(dir: &Path) -> Result<u64> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n == "go.mod" || n == "go.sum" || n.ends_with(".go"))
        .collect();
    names.sort();
    let mut hash = 0xcbf29ce484222325u64;
    for name in names {
        let bytes = std::fs::read(dir.join(&name)).with_context(|| format!("reading {name}"))?;
        for b in name.bytes().chain(bytes) {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x100000001b3);
        }
    }
    Ok(hash)
}

/// The binary `name` built from the module in `src` under `cache` (e.g. cargo's
/// `CARGO_TARGET_TMPDIR`), building it only when its sources changed. Once per process: the
/// first call builds (or finds) it while concurrent callers wait, later calls get the same
/// answer (a failure too, so that one broken build is reported once per test, not rebuilt).
pub fn go_build(src: &Path, cache: &Path, name: &str) -> Result<PathBuf> {
    type Built = HashMap<(PathBuf, PathBuf, String), Result<PathBuf, String>>;
    static BUILT: Mutex<Option<Built>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    let key = (src.to_path_buf(), cache.to_path_buf(), name.to_string());
    let answer = built
        .get_or_insert_with(HashMap::new)
        .entry(key)
        .or_insert_with(|| build(src, cache, name).map_err(|e| format!("{e:#}")))
        .clone();
    answer.map_err(|e| anyhow::anyhow!("{e}"))
}

fn build(src: &Path, cache: &Path, name: &str) -> Result<PathBuf> {
    let hash = source_hash(src)?;
    let dir = cache.join(format!("go-{name}-{hash:016x}"));
    let bin = dir.join(name);
    if bin.is_file() {
        return Ok(bin);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // Built under a private name, then renamed: concurrent builders never see a partial file.
    let tmp = dir.join(format!("{name}.{}", std::process::id()));
    let go = std::env::var("GO").unwrap_or_else(|_| "go".into());
    let out = Command::new(&go)
        .args(["build", "-o"])
        .arg(&tmp)
        .arg(".")
        .current_dir(src)
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=readonly")
        .output()
        .with_context(|| format!("running {go} (set $GO to the Go binary)"))?;
    if !out.status.success() {
        bail!("go build failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    std::fs::rename(&tmp, &bin).with_context(|| format!("installing {}", bin.display()))?;
    Ok(bin)
}
