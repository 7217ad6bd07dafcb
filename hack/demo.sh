#!/usr/bin/env bash
# The Registrar demo, in one command:
#   bash hack/demo.sh            # interactive: live table, ~1 minute once built
#   bash hack/demo.sh --quick    # short, plain output (what the test runs)
#   bash hack/demo.sh --help     # options (--hold, --rate, --nodes, --plain)
#
# The first run builds the pinned control-plane binaries (hack/tools.sh, cached outside the
# repository; progress on stderr) and the demo itself; later runs start in seconds.
# A local cluster (etcd, kube-apiserver, controller-manager, scheduler, kwok), Registrar's etcd,
# the operator, one Greeter server per Ready pod and a balancing client run on loopback only.
# Ctrl-C stops everything the demo started.
set -euo pipefail
cd "$(dirname "$0")/.."

# protoc (Debian protobuf-compiler, libprotobuf-dev): what a machine with Rust and Go lacks for
# the demo; installed, or the exact command to run is printed.
# shellcheck source=hack/prereqs.sh
source hack/prereqs.sh
prereqs_protoc

echo "==> control-plane binaries (built the first time, then cached)" >&2
REGISTRAR_TOOLS_BIN=$(bash hack/tools.sh)
export REGISTRAR_TOOLS_BIN

# The dev profile: it shares the build with `cargo test`, and 200 RPC/s need no optimizer.
echo "==> building and running the demo (cargo run -p registrar-demo)" >&2
exec cargo run -p registrar-demo -- "$@"
