#!/usr/bin/env bash
# Builds the operator image from the repository's unchanged Dockerfile with podman, on local
# stand-ins of its two base images made from Debian packages (base images cannot be pulled on
# the machines Registrar is tested on):
#
#   builder  like rust:1-bookworm: Debian bookworm (minbase) + protoc (protobuf-compiler,
#            libprotobuf-dev) + gcc/libc6-dev,
#            and this machine's Rust toolchain (rustc, cargo, std) in /usr/local/rustup, with
#            /usr/local/cargo as CARGO_HOME;
#   runtime  like gcr.io/distroless/cc-debian12:nonroot: libc6, libgcc-s1, libssl3 and the CA
#            certificates, /etc/passwd with root and nonroot (65532), no shell.
#
#   bash hack/image.sh     # prints the image name (localhost/registrar:<version>) on its last line
#
# Cached under $REGISTRAR_CACHE (default ~/.cache/registrar): the stand-ins are podman images
# tagged by Debian suite and rustc version and built only when missing; the image is not rebuilt
# when its label says it was built from the same files and bases; the in-image build keeps
# cargo's registry and target dir in cache mounts (hack/podman.sh puts them in the cache), so a
# rebuild only recompiles what changed. Progress goes to stderr.
#   REGISTRAR_IMAGE          image name (default localhost/registrar:<package version>)
#   REGISTRAR_DEBIAN_MIRROR  Debian archive (default http://deb.debian.org/debian)
#   REGISTRAR_REBUILD_BASES  1: rebuild the stand-ins even when present (e.g. for Debian updates)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=hack/prereqs.sh
source "$root/hack/prereqs.sh"
prereqs_containers

suite=bookworm
mirror=${REGISTRAR_DEBIAN_MIRROR:-http://deb.debian.org/debian}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -n 1)
image=${REGISTRAR_IMAGE:-localhost/registrar:$version}
podman=(bash "$root/hack/podman.sh")
cache=$PREREQS_CACHE
# Containers here need lowered limits (the defaults fail with "error setting rlimit").
limits=(--ulimit nofile=1024:1024 --ulimit nproc=1024:1024)

log() { printf '[image] %s\n' "$*" >&2; }

sysroot=$(rustc --print sysroot)
host=$(rustc -vV | sed -n 's/^host: //p')
rust_version=$(rustc -vV | sed -n 's/^release: //p')
# Bump when what goes into a stand-in changes (the tags are the cache keys). podman import takes
# one variable per ENV change.
standin_rev=3
builder_base=localhost/registrar-builder-base:$suite-rust-$rust_version-r$standin_rev
runtime_base=localhost/registrar-runtime-base:$suite-r$standin_rev

scratch_dirs=()
cleanup() { [ ${#scratch_dirs[@]} -eq 0 ] || rm -rf "${scratch_dirs[@]}"; }
trap cleanup EXIT
new_scratch() { # sets $dir to a new temp dir in the cache (the images' file system), removed on exit
  mkdir -p "$cache/podman/tmp"
  dir=$(mktemp -d "$cache/podman/tmp/standin.XXXXXX")
  scratch_dirs+=("$dir")
}

needs_build() {
  [ "${REGISTRAR_REBUILD_BASES:-0}" = 1 ] || ! "${podman[@]}" image exists "$1"
}

remove_other_tags() { # remove_other_tags IMAGE: older stand-ins of the same kind (~1 GB each)
  local old
  for old in $("${podman[@]}" images --format '{{.Repository}}:{{.Tag}}' "${1%:*}"); do
    [ "$old" = "$1" ] || "${podman[@]}" rmi --force "$old" >/dev/null || true
  done
}

build_runtime_base() {
  needs_build "$runtime_base" || return 0
  local start=$SECONDS dir
  new_scratch
  log "building $runtime_base (mmdebstrap, Debian $suite)"
  # extract: the packages' files only, no maintainer scripts; what those scripts would create
  # (the CA bundle, users) is written below.
  mmdebstrap --quiet --variant=extract --include=libc6,libgcc-s1,libssl3,ca-certificates \
    "$suite" "$dir/root" "$mirror" >&2
  local r="$dir/root"
  rm -rf "$r"/usr/share/{doc,man,info,locale,lintian} "$r"/var/cache/* "$r"/var/lib/apt
  rm -f "$r"/bin/{sh,dash,bash} "$r"/usr/bin/{sh,dash,bash}
  find "$r/usr/share/ca-certificates" -name '*.crt' -print0 | sort -z | xargs -0 cat \
    >"$r/etc/ssl/certs/ca-certificates.crt"
  cat >"$r/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
EOF
  cat >"$r/etc/group" <<'EOF'
root:x:0:
nobody:x:65534:
nonroot:x:65532:
EOF
  printf 'hosts: files dns\n' >"$r/etc/nsswitch.conf"
  install -d -m 0700 -o 65532 -g 65532 "$r/home/nonroot"
  install -d -m 0700 "$r/root"
  install -d -m 1777 "$r/tmp"
  if [ -e "$r/bin/sh" ] || [ -e "$r/usr/bin/sh" ]; then
    log "the runtime stand-in has a shell"; return 1
  fi
  tar -C "$r" -c . | "${podman[@]}" import \
    --change 'USER 65532:65532' --change 'WORKDIR /home/nonroot' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    - "$runtime_base" >/dev/null
  rm -rf "$dir"
  remove_other_tags "$runtime_base"
  log "$runtime_base built in $((SECONDS - start)) s"
}

build_builder_base() {
  needs_build "$builder_base" || return 0
  if [ ! -x "$sysroot/bin/rustc" ] || [ ! -x "$sysroot/bin/cargo" ] || [ ! -d "$sysroot/lib/rustlib/$host" ]; then
    log "expected a rustup-style toolchain (bin/rustc, bin/cargo, lib/rustlib/$host) in $sysroot"
    return 1
  fi
  local start=$SECONDS dir
  new_scratch
  log "building $builder_base (mmdebstrap, Debian $suite, + Rust $rust_version from $sysroot)"
  mmdebstrap --quiet --variant=minbase --include=ca-certificates,protobuf-compiler,libprotobuf-dev,gcc,libc6-dev \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    "$suite" "$dir/root" "$mirror" >&2
  local r="$dir/root" tc="/usr/local/rustup/toolchains/$rust_version-$host"
  rm -rf "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/*.bin
  # What building needs of the toolchain (as rust:1-bookworm lays it out), not its docs.
  mkdir -p "$r$tc/bin" "$r$tc/lib/rustlib" "$r/usr/local/cargo/bin"
  cp -a "$sysroot/bin/rustc" "$sysroot/bin/cargo" "$r$tc/bin/"
  cp -a "$sysroot"/lib/*.so* "$r$tc/lib/"
  cp -a "$sysroot/lib/rustlib/$host" "$r$tc/lib/rustlib/"
  ln -s "$tc/bin/rustc" "$r/usr/local/cargo/bin/rustc"
  ln -s "$tc/bin/cargo" "$r/usr/local/cargo/bin/cargo"
  tar -C "$r" -c . | "${podman[@]}" import \
    --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV RUSTUP_HOME=/usr/local/rustup' --change 'ENV CARGO_HOME=/usr/local/cargo' \
    --change "ENV RUST_VERSION=$rust_version" \
    - "$builder_base" >/dev/null
  rm -rf "$dir"
  remove_other_tags "$builder_base"
  log "$builder_base built in $((SECONDS - start)) s"
}

# The build's inputs: every file of the checkout that git knows of (tracked, or untracked and not
# ignored) and the two base images. Empty outside a git checkout (then it always builds).
inputs_hash() {
  git -C "$root" rev-parse --git-dir >/dev/null 2>&1 || return 0
  {
    (cd "$root" && git ls-files -z --cached --others --exclude-standard | sort -z |
      xargs -0 sha256sum 2>/dev/null) || true
    "${podman[@]}" image inspect --format '{{.Id}}' "$builder_base" "$runtime_base"
  } | sha256sum | cut -c1-32
}

build_runtime_base
build_builder_base

inputs=$(inputs_hash)
if [ -n "$inputs" ] && [ "$("${podman[@]}" image inspect --format '{{index .Labels "registrar.inputs"}}' \
  "$image" 2>/dev/null)" = "$inputs" ]; then
  log "$image is up to date (built from the same files and base images)"
  echo "$image"
  exit 0
fi

start=$SECONDS
log "building $image from the Dockerfile (podman build; a cold build compiles every crate)"
# --layers=false: with the vfs driver every committed layer is a full copy of the file system;
# the cargo cache mounts make rebuilding cheap instead. --network host: cargo fetches crates
# (once; the registry cache mount keeps them), trusting the CAs this machine trusts (the bundle
# is mounted for the build only, so that a TLS-inspecting proxy's CA works and no image keeps it).
trust=()
host_ca=/etc/ssl/certs/ca-certificates.crt
[ -f "$host_ca" ] && trust=(--volume "$host_ca:$host_ca:ro")
"${podman[@]}" build --layers=false --network host "${limits[@]}" "${trust[@]}" \
  --build-arg "BUILDER_IMAGE=$builder_base" \
  --build-arg "RUNTIME_IMAGE=$runtime_base" \
  --label "registrar.inputs=$inputs" \
  --tag "$image" --file "$root/Dockerfile" "$root" >&2
# Nothing else is kept: a rebuilt image leaves its predecessor unnamed.
"${podman[@]}" image prune --force >/dev/null
size=$("${podman[@]}" image inspect --format '{{.Size}}' "$image")
log "$image built in $((SECONDS - start)) s, $((size / 1000000)) MB"
echo "$image"
