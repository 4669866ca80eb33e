#!/usr/bin/env bash
# hack/chart.sh — the Helm chart's checks (a step of hack/test.sh, after the control plane is up).
#
#   1. Chart.yaml's appVersion is Cargo.toml's version; the chart's crds/ is the committed CRD.
#   2. helm lint --strict, namespaced and cluster-wide, fleet on.
#   3. values.schema.json refuses bad values with a readable message (helm template, helm install).
#   4. the helm-unittest suites in charts/dedup2d-operator/tests/ (hack/tools.sh helm-unittest).
#   5. kubeconform -strict against the running control plane's own schemas (/openapi/v2, offline),
#      and for ServiceMonitor/PrometheusRule the prometheus-operator CRDs (a pinned Go module).
#   6. kubectl apply --dry-run=server of the rendered chart, both RBAC modes, fleet on, in a
#      throwaway namespace.
#
# Needs helm and kubectl (hack/cluster.sh build) and a cluster (KUBECONFIG, or the local one).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
export DEDUP2D_CACHE="${DEDUP2D_CACHE:-$HOME/.cache/dedup2d}"
CHART=charts/dedup2d-operator

say() { printf '[chart.sh] %s\n' "$*"; }
die() { printf '[chart.sh] FAILED: %s\n' "$*" >&2; exit 1; }

# helm and kubectl from the local control plane's build; keep a KUBECONFIG the caller chose.
if [[ -n "${KUBECONFIG:-}" ]]; then
  eval "$(hack/cluster.sh env | grep -v '^export KUBECONFIG=')"
else
  eval "$(hack/cluster.sh env)"
fi
if ! command -v helm >/dev/null || ! command -v kubectl >/dev/null; then
  say "helm/kubectl not built yet: hack/cluster.sh build (cached by version)"
  hack/cluster.sh build >&2
fi
command -v helm >/dev/null || die "helm not found after 'hack/cluster.sh build'"
command -v kubectl >/dev/null || die "kubectl not found after 'hack/cluster.sh build'"
kubectl version --request-timeout=10s >/dev/null 2>&1 \
  || die "no cluster answers (KUBECONFIG=${KUBECONFIG:-}): start one with 'hack/cluster.sh up'"

WORK="$(mktemp -d)"
DRYRUN_NS="chart-dryrun-$RANDOM$RANDOM"
cleanup() {
  rm -rf "$WORK"
  kubectl delete namespace "$DRYRUN_NS" --wait=false --ignore-not-found >/dev/null 2>&1 || true
}
trap cleanup EXIT

# The fleet on in every render (it needs a Redis URL).
FLEET=(--set fleet.enabled=true --set fleet.redis.url=redis://redis:6379/0)
MODES=("--set rbac.scope=Namespace" "--set rbac.scope=Cluster")

say "1/6 versions and CRD"
cargo_version="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)"
app_version="$(sed -n 's/^appVersion: "\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$CHART/Chart.yaml")"
[[ "$app_version" == "$cargo_version" ]] \
  || die "$CHART/Chart.yaml appVersion is '$app_version' but Cargo.toml says '$cargo_version'"
[[ "$(ls "$CHART/crds")" == "dedup2d.io_dedup2drollouts.yaml" ]] \
  || die "$CHART/crds/ must hold exactly dedup2d.io_dedup2drollouts.yaml, has: $(ls "$CHART/crds" | tr '\n' ' ')"
cmp -s crds/dedup2d.io_dedup2drollouts.yaml "$CHART/crds/dedup2d.io_dedup2drollouts.yaml" \
  || die "$CHART/crds/dedup2d.io_dedup2drollouts.yaml differs from crds/: cp crds/dedup2d.io_dedup2drollouts.yaml $CHART/crds/"

say "2/6 helm lint --strict"
for mode in "${MODES[@]}"; do
  # shellcheck disable=SC2086 # $mode is two words on purpose
  helm lint --strict "$CHART" $mode >"$WORK/lint.log" 2>&1 || { cat "$WORK/lint.log" >&2; die "helm lint --strict $mode"; }
  # shellcheck disable=SC2086
  helm lint --strict "$CHART" $mode "${FLEET[@]}" \
    --set metrics.serviceMonitor.enabled=true --set metrics.prometheusRule.enabled=true \
    >"$WORK/lint.log" 2>&1 || { cat "$WORK/lint.log" >&2; die "helm lint --strict $mode (fleet, monitoring)"; }
done

say "3/6 values.schema.json refuses bad values"
refused() { # refused PATTERN ARGS...: helm template and helm install must fail and say PATTERN
  local pattern="$1" cmd; shift
  for cmd in "template t" "install t --dry-run=client"; do
    # shellcheck disable=SC2086 # $cmd is several words on purpose
    if helm $cmd "$CHART" "$@" >/dev/null 2>"$WORK/err"; then
      die "helm $cmd $* was accepted"
    fi
    grep -qF "$pattern" "$WORK/err" || { cat "$WORK/err" >&2; die "helm $cmd $*: no \"$pattern\" in the message"; }
  done
  say "  refused $*: $(grep -F "$pattern" "$WORK/err" | head -1)"
}
refused "at '/replicaCount': got string, want integer" --set-string replicaCount=two
refused "at '/rbac/scope': value must be one of 'Namespace', 'Cluster'" --set rbac.scope=Foo
refused "at '/logFormat': value must be one of 'json', 'text'" --set logFormat=xml
refused "additional properties 'replicas' not allowed" --set replicas=3
refused "fleet.redis.url is required with fleet.enabled=true" --set fleet.enabled=true

say "4/6 helm-unittest"
UNITTEST="$(hack/tools.sh helm-unittest)"
# On a copy: helm-unittest creates tests/__snapshot__ in the chart it runs on.
cp -r "$CHART" "$WORK/chart"
"$UNITTEST" --strict --color=false "$WORK/chart" >"$WORK/unittest.log" 2>&1 || { cat "$WORK/unittest.log" >&2; die "helm-unittest"; }
grep -E '^(Charts|Test Suites|Tests):' "$WORK/unittest.log" | sed 's/^/[chart.sh]   /'
grep -qE '^Tests: +[1-9][0-9]* passed' "$WORK/unittest.log" || { cat "$WORK/unittest.log" >&2; die "helm-unittest ran no test"; }

say "5/6 kubeconform (the cluster's own schemas)"
KUBECONFORM="$(hack/tools.sh kubeconform)"
kubectl get --raw /openapi/v2 >"$WORK/openapi.json"
PROM_CRDS="$(hack/tools.sh prometheus-operator-src)/jsonnet/prometheus-operator"
python3 hack/chart-schemas.py "$WORK/openapi.json" "$WORK/schemas" \
  "$PROM_CRDS/servicemonitors-crd.json" "$PROM_CRDS/prometheusrules-crd.json"
for mode in "${MODES[@]}"; do
  # shellcheck disable=SC2086
  helm template dedup2d "$CHART" --namespace dedup2d --include-crds $mode "${FLEET[@]}" \
    --set metrics.serviceMonitor.enabled=true --set metrics.prometheusRule.enabled=true >"$WORK/rendered.yaml"
  "$KUBECONFORM" -strict -summary -exit-on-error \
    -schema-location "$WORK/schemas/{{ .ResourceKind }}{{ .KindSuffix }}.json" \
    "$WORK/rendered.yaml" \
    || die "kubeconform ($mode)"
done

say "6/6 kubectl apply --dry-run=server (namespace $DRYRUN_NS)"
kubectl create namespace "$DRYRUN_NS" >/dev/null
for mode in "${MODES[@]}"; do
  # shellcheck disable=SC2086
  helm template dedup2d "$CHART" --namespace "$DRYRUN_NS" --include-crds $mode "${FLEET[@]}" >"$WORK/rendered.yaml"
  # Server-side so the CRD's size does not matter; --force-conflicts: the CRD's fields belong to
  # whoever installed it, and this changes nothing anyway.
  kubectl apply --dry-run=server --server-side --force-conflicts --field-manager=chart-dryrun \
    -f "$WORK/rendered.yaml" >"$WORK/apply.log" 2>&1 \
    || { cat "$WORK/apply.log" >&2; die "kubectl apply --dry-run=server ($mode)"; }
  say "  $mode: $(wc -l <"$WORK/apply.log") objects accepted"
done
say "all chart checks passed"
