//! The `main` of a `harness = false` benchmark: does nothing unless run by `cargo bench`
//! (`cargo test --benches` runs bench targets without `--bench`), runs the async body on a
//! multi-threaded runtime and turns its error into a message and a failing exit code; and the
//! numeric knobs a benchmark reads from the environment.

use std::future::Future;
use std::process::ExitCode;

use anyhow::Result;

/// Runs `body` when invoked with `--bench`.
pub fn main<F, Fut>(name: &str, body: F) -> ExitCode
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<()>>,
{
    if !std::env::args().any(|a| a == "--bench") {
        println!("{name}: a benchmark; run it with `cargo bench --bench {name}`");
        return ExitCode::SUCCESS;
    }
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(body()));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name} benchmark failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The number in `$var`, else `default`; an error names the variable when it is not a number.
pub fn env_number<T: std::str::FromStr>(var: &str, default: T) -> Result<T> {
    match std::env::var(var) {
        Ok(v) => v
            .trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("{var}={v:?}: expected a number")),
        Err(_) => Ok(default),
    }
}
