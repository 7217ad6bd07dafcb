#!/usr/bin/env bash
# Static checks of the Helm chart (no cluster needed):
#   - helm lint --strict with the default values and with every charts/registrar/ci/*.yaml
#   - helm template with the default values and with every ci values file, plus assertions on
#     what gets rendered
#   - the chart's CRD is an identical copy of the generated crds/ file
#   - helm package: the archive holds the chart's files, lints, and renders like the directory
#   - helm template FAILS for every tests/chart/bad/*.yaml, with the message named by the file's
#     "# expect: <text>" line
# Prints a summary; exits non-zero if anything failed.
#
#   HELM   helm binary (default: helm on PATH)
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
chart="$root/charts/registrar"
bad_dir="$root/tests/chart/bad"
crd_name=serviceregistrations.registrar.dev.yaml
helm=${HELM:-helm}
# Rendering against a fixed Kubernetes version keeps the output independent of helm's build.
kube_version=1.35.0
release=registrar
namespace=registrar-system

if ! command -v "$helm" >/dev/null 2>&1; then
  echo "chart-check: helm not found (set HELM to the helm binary)" >&2
  exit 2
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

passed=0
failed=0
failures=()

pass() { passed=$((passed + 1)); printf 'PASS  %s\n' "$1"; }
fail() {
  failed=$((failed + 1))
  failures+=("$1")
  printf 'FAIL  %s\n' "$1"
  if [ -n "${2:-}" ] && [ -s "$2" ]; then sed 's/^/      | /' "$2" | head -n 20; fi
}

# check NAME CMD...: runs CMD, PASS when it succeeds
check() {
  local name=$1; shift
  if "$@" >"$tmp/out" 2>&1; then pass "$name"; else fail "$name" "$tmp/out"; fi
}

render() { # render OUT [helm template args...]
  local out=$1; shift
  "$helm" template "$release" "$chart" --namespace "$namespace" --kube-version "$kube_version" "$@" >"$out" 2>"$out.err"
}

# expect_in FILE LABEL PATTERN...: every extended regex must match a line of FILE
expect_in() {
  local file=$1 label=$2; shift 2
  local missing=()
  for pattern in "$@"; do
    grep -Eq -- "$pattern" "$file" || missing+=("$pattern")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    pass "$label"
  else
    printf 'missing: %s\n' "${missing[@]}" >"$tmp/missing"
    fail "$label" "$tmp/missing"
  fi
}

# expect_not_in FILE LABEL PATTERN...: no regex may match
expect_not_in() {
  local file=$1 label=$2; shift 2
  local found=()
  for pattern in "$@"; do
    grep -Eq -- "$pattern" "$file" && found+=("$pattern")
  done
  if [ ${#found[@]} -eq 0 ]; then
    pass "$label"
  else
    printf 'unexpected: %s\n' "${found[@]}" >"$tmp/found"
    fail "$label" "$tmp/found"
  fi
}

echo "== helm lint"
check "lint --strict (default values)" "$helm" lint --strict "$chart"
for values in "$chart"/ci/*.yaml; do
  check "lint --strict ($(basename "$values"))" "$helm" lint --strict "$chart" -f "$values"
done

echo "== helm template (default values)"
if render "$tmp/default.yaml"; then
  pass "template (default values)"
  expect_in "$tmp/default.yaml" "default: every object rendered" \
    '^kind: Deployment$' '^kind: ServiceAccount$' '^kind: ClusterRole$' '^kind: ClusterRoleBinding$' \
    '^kind: Role$' '^kind: RoleBinding$' '^kind: Service$' '^kind: PodDisruptionBudget$'
  expect_in "$tmp/default.yaml" "default: operator settings as env" \
    'name: REGISTRAR_ETCD_ENDPOINTS' 'name: REGISTRAR_LEADER_ELECT$' 'value: "0.0.0.0:8080"' \
    'name: REGISTRAR_LEADER_ELECTION_LEASE_NAME' 'name: POD_NAME' 'fieldPath: metadata.namespace'
  expect_in "$tmp/default.yaml" "default: restricted pod security" \
    'runAsNonRoot: true' 'runAsUser: 65532' 'readOnlyRootFilesystem: true' \
    'allowPrivilegeEscalation: false' 'drop: \["ALL"\]' 'type: RuntimeDefault'
  expect_in "$tmp/default.yaml" "default: kube-system readable for the default cluster id" \
    'resourceNames: \["kube-system"\]'
  expect_in "$tmp/default.yaml" "default: probes on the admin port" 'path: /healthz' 'path: /readyz' 'port: admin'
  expect_not_in "$tmp/default.yaml" "default: optional objects off" '^kind: ServiceMonitor$' 'REGISTRAR_ETCD_CA_FILE' 'REGISTRAR_ETCD_PASSWORD_FILE'
else
  fail "template (default values)" "$tmp/default.yaml.err"
fi

echo "== helm template (ci values)"
for values in "$chart"/ci/*.yaml; do
  name=$(basename "$values" .yaml)
  out="$tmp/$name.yaml"
  if ! render "$out" -f "$values"; then
    fail "template ($name)" "$out.err"
    continue
  fi
  pass "template ($name)"
  case "$name" in
    full-values)
      expect_in "$out" "$name: TLS, auth, ServiceMonitor, IPv6 bind rendered" \
        '^kind: ServiceMonitor$' 'name: REGISTRAR_ETCD_CA_FILE' 'name: REGISTRAR_ETCD_CERT_FILE' \
        'name: REGISTRAR_ETCD_KEY_FILE' 'name: REGISTRAR_ETCD_PASSWORD_FILE' 'name: REGISTRAR_ETCD_USERNAME' \
        'secretName: etcd-client-tls' 'value: "etcd.storage.svc"' 'key: pass$' 'value: "\[::\]:9090"' 'value: "prod-eu-1"' \
        'value: "https://etcd-0.etcd:2379,https://etcd-1.etcd:2379,https://\[fd00::10\]:2379"' \
        'image: "registry.example.test/registrar@sha256:0123' 'resourceNames: \["registrar-leader"\]' \
        'minAvailable: 50%'
      expect_not_in "$out" "$name: no namespace access with an explicit cluster id" '"kube-system"'
      ;;
    single-replica-values)
      expect_in "$out" "$name: CA only, election off" 'name: REGISTRAR_ETCD_CA_FILE' 'value: "false"' \
        'serviceAccountName: registrar-existing'
      expect_not_in "$out" "$name: no lease RBAC, PDB, Service, client cert" '^kind: Role$' \
        '^kind: PodDisruptionBudget$' '^kind: Service$' '^kind: ServiceAccount$' 'REGISTRAR_ETCD_CERT_FILE' \
        'REGISTRAR_LEADER_ELECTION_LEASE_NAME'
      ;;
  esac
done

echo "== CRD copy"
if [ -f "$root/crds/$crd_name" ]; then
  check "charts/registrar/crds/$crd_name equals crds/$crd_name" \
    diff -u "$root/crds/$crd_name" "$chart/crds/$crd_name"
else
  fail "crds/$crd_name exists (generate it, then copy it into the chart)"
fi

echo "== helm package"
version=$(sed -n 's/^version: //p' "$chart/Chart.yaml")
pkg="$tmp/pkg/registrar-$version.tgz"
if "$helm" package "$chart" --destination "$tmp/pkg" >"$tmp/out" 2>&1 && [ -s "$pkg" ]; then
  pass "package registrar-$version.tgz"
  tar -tzf "$pkg" >"$tmp/pkg.list"
  expect_in "$tmp/pkg.list" "package: chart, schema, README, CRD, dashboard, test hook" \
    '^registrar/Chart.yaml$' '^registrar/values.yaml$' '^registrar/values.schema.json$' \
    '^registrar/README.md$' "^registrar/crds/$crd_name\$" '^registrar/dashboards/registrar.json$' \
    '^registrar/templates/tests/readyz.yaml$'
  check "lint --strict (the package)" "$helm" lint --strict "$pkg"
  # The package renders exactly what the chart directory renders.
  if "$helm" template "$release" "$pkg" --namespace "$namespace" --kube-version "$kube_version" \
    >"$tmp/pkg.yaml" 2>"$tmp/pkg.yaml.err"; then
    check "package renders like the chart directory" diff -u "$tmp/default.yaml" "$tmp/pkg.yaml"
  else
    fail "template (the package)" "$tmp/pkg.yaml.err"
  fi
else
  fail "package registrar-$version.tgz" "$tmp/out"
fi

echo "== helm template must refuse bad values"
shopt -s nullglob
bad_files=("$bad_dir"/*.yaml)
if [ ${#bad_files[@]} -lt 5 ]; then
  fail "at least 5 bad values files in tests/chart/bad (found ${#bad_files[@]})"
fi
for values in "${bad_files[@]}"; do
  name="bad/$(basename "$values")"
  expect=$(sed -n 's/^# expect: //p' "$values" | head -n 1)
  if [ -z "$expect" ]; then
    fail "$name has an '# expect: <error text>' line"
    continue
  fi
  if render "$tmp/bad.yaml" -f "$values"; then
    echo "helm template succeeded" >"$tmp/bad.msg"
    fail "$name refused" "$tmp/bad.msg"
  elif grep -Fq -- "$expect" "$tmp/bad.yaml.err"; then
    pass "$name refused: $expect"
  else
    fail "$name refused with '$expect'" "$tmp/bad.yaml.err"
  fi
done

echo
echo "chart-check: $passed passed, $failed failed"
if [ "$failed" -ne 0 ]; then
  printf '  failed: %s\n' "${failures[@]}"
  exit 1
fi
