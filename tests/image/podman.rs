//! podman as the test uses it: always through `hack/podman.sh` (the storage, driver and runtime
//! settings that work on the test machines), the image built by `hack/image.sh`, and a
//! container that is removed when dropped (also when the test panics).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use registrar_testenv::{Process, log_tail, workspace_root};

/// Label on every container this test starts: the test process's pid, to remove leftovers of
/// test processes that died without cleaning up.
const LABEL: &str = "registrar.test.pid";

fn script(name: &str) -> PathBuf {
    workspace_root().join("hack").join(name)
}

/// `podman <args>` with the project's settings; its stdout, or an error with its stderr.
pub fn podman(args: &[&str]) -> Result<String> {
    let out = Command::new("bash")
        .arg(script("podman.sh"))
        .args(args)
        .output()
        .context("running hack/podman.sh")?;
    anyhow::ensure!(
        out.status.success(),
        "podman {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The image built from the Dockerfile by `hack/image.sh` (which installs podman, runc and
/// mmdebstrap when missing, or fails naming the command to run), and how long that took
/// (seconds when hack/test.sh has built it already). Its progress goes to `log`.
pub fn build_image(log: &Path) -> Result<(String, Duration)> {
    let start = Instant::now();
    let err = std::fs::File::create(log)?;
    let out = Command::new("bash")
        .arg(script("image.sh"))
        .stderr(err)
        .output()
        .context("running hack/image.sh")?;
    anyhow::ensure!(
        out.status.success(),
        "hack/image.sh failed ({}); this test needs podman to build and run the image \
         (run `bash hack/image.sh` for the full output). Last lines:\n{}",
        out.status,
        log_tail(log, 30)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let image = stdout
        .lines()
        .last()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .context("hack/image.sh printed no image name")?;
    Ok((image, start.elapsed()))
}

/// Size of an image in bytes.
pub fn image_size(image: &str) -> Result<u64> {
    let text = podman(&["image", "inspect", "--format", "{{.Size}}", image])?;
    text.trim()
        .parse()
        .with_context(|| format!("image size {text:?}"))
}

/// Removes containers left by test processes that no longer exist.
pub fn remove_stale_containers() -> Result<()> {
    let filter = format!("label={LABEL}");
    let format = format!("{{{{.Names}}}} {{{{index .Labels \"{LABEL}\"}}}}");
    let list = podman(&["ps", "--all", "--filter", &filter, "--format", &format])?;
    for line in list.lines() {
        let Some((name, pid)) = line.split_once(' ') else {
            continue;
        };
        if !Path::new("/proc").join(pid.trim()).exists() {
            podman(&["rm", "--force", "--time", "0", name])?;
        }
    }
    Ok(())
}

/// A container started with `podman run` (attached: its output goes to the log file).
pub struct Container {
    pub name: String,
    run: Process,
    log: PathBuf,
}

impl Container {
    /// `podman run --rm --name <name> <args>`; `args` holds the options, the image and its
    /// arguments.
    pub fn run(name: &str, args: &[String], log: &Path) -> Result<Container> {
        let mut cmd = Command::new("bash");
        cmd.arg(script("podman.sh"))
            .args(["run", "--rm", "--name", name, "--label"])
            .arg(format!("{LABEL}={}", std::process::id()))
            .args(args);
        let run = Process::spawn("podman run", cmd, log)?;
        Ok(Container {
            name: name.to_string(),
            run,
            log: log.to_path_buf(),
        })
    }

    /// The host pid of the container's first process (the operator).
    pub fn pid(&self) -> Result<u32> {
        let text = podman(&["inspect", "--format", "{{.State.Pid}}", &self.name])?;
        let pid: u32 = text
            .trim()
            .parse()
            .with_context(|| format!("pid {text:?}"))?;
        anyhow::ensure!(pid > 0, "{} is not running", self.name);
        Ok(pid)
    }

    /// Fails with the log tail when `podman run` has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        self.run.check_alive()
    }

    /// The container's output so far (and podman's own messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        log_tail(&self.log, n)
    }

    /// `podman stop --time <grace>` (SIGTERM, then SIGKILL after `grace`): how long until the
    /// container had exited, and the exit status of `podman run` (the container's).
    pub fn stop(&mut self, grace: Duration) -> Result<(Duration, ExitStatus)> {
        let start = Instant::now();
        podman(&["stop", "--time", &grace.as_secs().to_string(), &self.name])?;
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.run.exited() {
                return Ok((start.elapsed(), status));
            }
            anyhow::ensure!(Instant::now() < end, "podman run did not return after stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if self.run.exited().is_none() {
            let _ = podman(&["rm", "--force", "--time", "0", &self.name]);
        }
    }
}
