#!/usr/bin/env bash
# The test command: everything Registrar checks, in one run.
#   format, clippy (-D warnings), docs, unit + integration tests against real etcd and a real
#   kube-apiserver (and a kwok cluster), Go interop tests, Helm chart checks (tests/helm.rs runs
#   hack/chart-check.sh, then installs the chart into the test API server), the demo's short mode.
#   The container image is built from the Dockerfile (hack/image.sh, podman on stand-in base
#   images) and run by tests/image/ as the chart's Deployment runs it.
# The control-plane binaries are built the first time (see hack/tools.sh) and cached; so are the
# image's stand-in bases and its cargo caches. What a fresh Debian machine with Rust and Go lacks
# is installed first (hack/prereqs.sh says what), or the script stops at once naming the command.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "prerequisites (protoc, clippy/rustfmt, hadolint, podman/runc/mmdebstrap)"
# shellcheck source=hack/prereqs.sh
source hack/prereqs.sh
prereqs_protoc
prereqs_rust_tools
prereqs_hadolint
prereqs_containers
echo "all present"

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

step "cargo publish --dry-run (registrar-etcd + registrar-resolver, built from their .crate files)"
cargo publish --dry-run --allow-dirty -p registrar-etcd -p registrar-resolver

step "Dockerfile: hadolint, the image (hack/image.sh: podman build), and its binary runs"
"$HADOLINT" Dockerfile
image_start=$SECONDS
image=$(bash hack/image.sh)
echo "$image built in $((SECONDS - image_start)) s"
run_image=(bash hack/podman.sh run --rm --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 "$image")
"${run_image[@]}" --version
"${run_image[@]}" crd | cmp - crds/serviceregistrations.registrar.dev.yaml

step "cargo test (unit; integration against etcd + kube-apiserver; Go interop; helm chart; demo)"
cargo test --workspace --locked --no-fail-fast
