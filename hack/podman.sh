#!/usr/bin/env bash
# podman with the settings that work on the machines Registrar is tested on, for hack/image.sh,
# tests/image/ and by hand:
#   bash hack/podman.sh images
#   bash hack/podman.sh run --rm --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 \
#     localhost/registrar:0.1.0 --version
#
# - its own storage in the cache (images, build cache), apart from any other podman storage;
# - the vfs storage driver (slow and disk-hungry, but what is known to work here);
# - runc (crun fails to set rlimits here, as do runc's defaults: containers need
#   `--ulimit nofile=1024:1024 --ulimit nproc=1024:1024`, which hack/image.sh and the test pass).
#   REGISTRAR_CACHE   cache root (default: $XDG_CACHE_HOME/registrar or ~/.cache/registrar)
set -euo pipefail

cache=${REGISTRAR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/registrar}
# Run state belongs on a tmpfs (it must not survive a reboot).
run=${XDG_RUNTIME_DIR:-/run}/registrar-podman
mkdir -p "$cache/podman/tmp" "$run"
# TMPDIR also holds `RUN --mount=type=cache` directories (buildah-cache/): cargo's registry and
# target dir of the in-image build persist in the cache between builds.
export TMPDIR="$cache/podman/tmp"
exec podman \
  --root "$cache/podman/storage" \
  --runroot "$run/storage" \
  --tmpdir "$run/libpod" \
  --storage-driver vfs \
  --runtime runc \
  --cgroup-manager cgroupfs \
  --events-backend file \
  "$@"
