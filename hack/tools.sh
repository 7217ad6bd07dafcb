#!/usr/bin/env bash
# Builds the pinned control-plane binaries that the test ground and the demo run
# (kube-apiserver, kube-controller-manager, kube-scheduler, etcd, etcdctl, helm, kwok)
# from Go modules with the machine's Go, into a cache outside the repository keyed by
# the pins. Idempotent: a binary that is already built for its pin is not rebuilt.
#
# Prints the directory holding the binaries on its last line (stdout); progress goes to stderr.
#   REGISTRAR_CACHE   cache root (default: $XDG_CACHE_HOME/registrar or ~/.cache/registrar)
set -euo pipefail

K8S_VERSION=v1.35.4
ETCD_VERSION=v3.6.16
HELM_VERSION=v3.19.5
KWOK_VERSION=v0.8.0

cache=${REGISTRAR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/registrar}
bin="$cache/bin/k8s-$K8S_VERSION.etcd-$ETCD_VERSION.helm-$HELM_VERSION.kwok-$KWOK_VERSION"
export GOTOOLCHAIN=local GOFLAGS=-mod=mod
mkdir -p "$bin"

log() { printf '[tools] %s\n' "$*" >&2; }

# wrapper NAME: a fresh module directory for one tool
wrapper() {
  local dir="$cache/src/$1"
  rm -rf "$dir" && mkdir -p "$dir"
  printf '%s' "$dir"
}

timed() { # timed LABEL CMD...: runs CMD, logs wall time and peak RSS
  local label=$1; shift
  local start=$SECONDS
  if [ -x /usr/bin/time ]; then
    /usr/bin/time -f "[tools] $label: %e s wall, %M KiB peak RSS" "$@"
  else
    "$@"; log "$label: $((SECONDS - start)) s wall"
  fi
}

build_k8s() {
  local dir; dir=$(wrapper k8s)
  local mod; mod=$(cd "$dir" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  local minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  {
    echo "module registrar.dev/tools/k8s"
    echo
    grep -E '^go ' "$mod"
    grep -E '^godebug ' "$mod" || true
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    # every staging module k8s.io/kubernetes requires at v0.0.0 -> its published v0.<minor>.<patch>
    grep -E '^\s+k8s\.io/[a-z0-9-]+ v0\.0\.0$' "$mod" | awk -v v="v0.${K8S_VERSION#v1.}" '{print "replace " $1 " => " $1 " " v}'
  } >"$dir/go.mod"
  printf 'package tools\n\nimport (\n\t_ "k8s.io/kubernetes/cmd/kube-apiserver/app"\n)\n' >"$dir/tools.go"
  (cd "$dir" && go mod tidy >&2)
  local pkg=k8s.io/component-base/version cgo=k8s.io/client-go/pkg/version flags=""
  for p in $pkg $cgo; do
    flags+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
  done
  (cd "$dir" && timed "build kube-apiserver, kube-controller-manager, kube-scheduler" \
    go build -ldflags "-s -w$flags" -o "$bin/" \
      k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler)
}

build_etcd() {
  local dir; dir=$(wrapper etcd)
  printf 'module registrar.dev/tools/etcd\n\ngo 1.26.0\n\nrequire (\n\tgo.etcd.io/etcd/server/v3 %s\n\tgo.etcd.io/etcd/etcdctl/v3 %s\n\tgo.etcd.io/etcd/etcdutl/v3 %s\n)\n' "$ETCD_VERSION" "$ETCD_VERSION" "$ETCD_VERSION" >"$dir/go.mod"
  printf 'package tools\n\nimport (\n\t_ "go.etcd.io/etcd/server/v3"\n\t_ "go.etcd.io/etcd/etcdctl/v3"\n\t_ "go.etcd.io/etcd/etcdutl/v3"\n)\n' >"$dir/tools.go"
  # etcdutl restores snapshots (the restore tests); etcdctl takes them.
  (cd "$dir" && go mod tidy >&2 && timed "build etcd, etcdctl, etcdutl" go build -ldflags "-s -w" -o "$bin/etcd" go.etcd.io/etcd/server/v3 \
    && go build -ldflags "-s -w" -o "$bin/etcdctl" go.etcd.io/etcd/etcdctl/v3 \
    && go build -ldflags "-s -w" -o "$bin/etcdutl" go.etcd.io/etcd/etcdutl/v3)
}

build_helm() {
  local dir; dir=$(wrapper helm)
  printf 'module registrar.dev/tools/helm\n\ngo 1.24.0\n\nrequire helm.sh/helm/v3 %s\n' "$HELM_VERSION" >"$dir/go.mod"
  printf 'package tools\n\nimport _ "helm.sh/helm/v3/pkg/action"\n' >"$dir/tools.go"
  (cd "$dir" && go mod tidy >&2)
  local k8s; k8s=$(cd "$dir" && go list -m -f '{{.Version}}' k8s.io/client-go)
  local maj=1 min=${k8s#v0.}; min=${min%%.*}
  (cd "$dir" && timed "build helm" go build -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean \
      -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=$maj -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$min \
      -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=$maj -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$min" \
      -o "$bin/helm" helm.sh/helm/v3/cmd/helm)
}

build_kwok() {
  local dir; dir=$(wrapper kwok)
  printf 'module registrar.dev/tools/kwok\n\ngo 1.26.0\n\nrequire sigs.k8s.io/kwok %s\n' "$KWOK_VERSION" >"$dir/go.mod"
  printf 'package tools\n\nimport _ "sigs.k8s.io/kwok/pkg/kwok/cmd"\n' >"$dir/tools.go"
  (cd "$dir" && go mod tidy >&2 && timed "build kwok" go build -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION" -o "$bin/kwok" sigs.k8s.io/kwok/cmd/kwok)
}

need() { for b in "$@"; do [ -x "$bin/$b" ] || return 0; done; return 1; }

want=${*:-etcd k8s helm kwok}
for t in $want; do
  case $t in
    etcd) need etcd etcdctl etcdutl && { log "building etcd $ETCD_VERSION"; build_etcd; } ;;
    k8s) need kube-apiserver kube-controller-manager kube-scheduler && { log "building Kubernetes $K8S_VERSION (cold: tens of minutes)"; build_k8s; } ;;
    helm) need helm && { log "building helm $HELM_VERSION"; build_helm; } ;;
    kwok) need kwok && { log "building kwok $KWOK_VERSION"; build_kwok; } ;;
    *) log "unknown tool $t"; exit 2 ;;
  esac
done
echo "$bin"
