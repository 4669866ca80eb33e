#!/usr/bin/env bash
# The project's one test command (README; `.ci/run` calls exactly this).
#
# On a fresh machine it installs what the tests need (Debian redis-server, a virtualenv with the
# pinned Python peers), builds or reuses the local Kubernetes control plane when the cluster
# script is present, then runs fmt, clippy and every test. Expensive builds are cached outside
# the clone under ${DEDUP2D_CACHE:-~/.cache/dedup2d}.
#
#   hack/test.sh           everything (CI)
#   hack/test.sh local     the unit tests and the tests that need no cluster (tests/local/), run
#                          without KUBECONFIG
#   hack/test.sh cluster   the tests that need the control plane (tests/cluster/), starting it
set -euo pipefail

GROUP="${1:-all}"
case "$GROUP" in
  all | local | cluster) ;;
  *)
    echo "usage: hack/test.sh [local|cluster]" >&2
    exit 2
    ;;
esac

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
export DEDUP2D_CACHE="${DEDUP2D_CACHE:-$HOME/.cache/dedup2d}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$DEDUP2D_CACHE/target}"
mkdir -p "$DEDUP2D_CACHE"

step() { printf '\n==> %s (%ss)\n' "$*" "$SECONDS"; }

step "system packages"
# shellcheck source=hack/lib/peers.sh
. hack/lib/peers.sh
peers_redis_server
# The Debian package starts a system instance on 6379; tests use their own ports.
redis-server --version

step "python peers"
peers_venv
"$DEDUP2D_PYTHON" -c 'import arq, importlib.metadata as m; print("arq", m.version("arq"))'

THREADS="--test-threads=${DEDUP2D_TEST_THREADS:-4}"
if [ "$GROUP" = local ]; then
  step "cargo test (unit tests, tests/local; no cluster)"
  env -u KUBECONFIG -u KUBERNETES_SERVICE_HOST cargo test --workspace --locked --lib --bins --test local -- "$THREADS"
  step "done"
  exit 0
fi

if [ "$GROUP" = all ]; then
  step "demo scripts parse (hack/demo.sh, hack/lib/demo.py, tests/peers/*.py)"
  bash -n hack/demo.sh
  "$DEDUP2D_PYTHON" -c 'import ast, sys; [ast.parse(open(f).read(), f) for f in sys.argv[1:]]' hack/lib/demo.py tests/peers/*.py
fi

# The local control plane: built from Go modules once per machine (cached by version), started
# fresh for this run. Any cluster given through KUBECONFIG is used instead.
OWN_CLUSTER=0
if [ -z "${KUBECONFIG:-}" ]; then
  OWN_CLUSTER=1
  step "local Kubernetes control plane: build (background, cached)"
  CLUSTER_BUILD_LOG="$DEDUP2D_CACHE/cluster-build.log"
  hack/cluster.sh build >"$CLUSTER_BUILD_LOG" 2>&1 &
  CLUSTER_BUILD_PID=$!
fi

if [ "$GROUP" = all ]; then
  step "docs: no reference outside the repository, every relative link resolves"
  hack/check-links.sh

  step "cargo fmt --check"
  cargo fmt --all -- --check

  step "core crate purity: no kube client/runtime, redis, tokio, axum or hyper (hack/check-core-purity.sh)"
  hack/check-core-purity.sh

  step "cargo clippy"
  cargo clippy --workspace --all-targets --locked -- -D warnings

  step "gitops: Argo CD health/actions and kstatus (hack/gitops.sh)"
  hack/gitops.sh

  step "cargo build (tests)"
  cargo test --workspace --locked --all-targets --no-run
fi

if [ "$OWN_CLUSTER" = 1 ]; then
  step "local Kubernetes control plane: up"
  if ! wait "$CLUSTER_BUILD_PID"; then
    echo "building the control plane failed; its log:" >&2
    tail -50 "$CLUSTER_BUILD_LOG" >&2
    exit 1
  fi
  # A cluster that was already up (a developer's) is reused and left running.
  if ! hack/cluster.sh status >/dev/null 2>&1; then
    trap 'hack/cluster.sh down >/dev/null 2>&1 || true' EXIT
  fi
  hack/cluster.sh up >/dev/null
  eval "$(hack/cluster.sh env)"
fi
kubectl version 2>/dev/null | head -2 || true

if [ "$GROUP" = cluster ]; then
  step "cargo test (tests/cluster)"
  cargo test --locked --test cluster -- "$THREADS"
  step "done"
  exit 0
fi

step "helm chart: lint, unit tests, kubeconform, server dry-run (hack/chart.sh)"
hack/chart.sh

step "cargo test"
cargo test --workspace --locked --all-targets -- "$THREADS"

step "benchmarks: smoke run at tiny sizes (their own correctness checks; figures to a temp dir)"
BENCH_OUT="$(mktemp -d)"
DEDUP2D_BENCH_OUT="$BENCH_OUT" DEDUP2D_BENCH_KEYS=300 DEDUP2D_BENCH_BIG=2 DEDUP2D_BENCH_SIZES_MIB=1 \
  DEDUP2D_BENCH_SUBMITS=100 DEDUP2D_BENCH_JOBS=40 DEDUP2D_BENCH_ROUNDS=1 DEDUP2D_BENCH_SIZES_KIB=100 \
  cargo test --workspace --locked --test local bench_ -- --ignored --test-threads=1
test -s "$BENCH_OUT/drain.json" && test -s "$BENCH_OUT/worker-rss.json" && test -s "$BENCH_OUT/worker-throughput.json"
test -s "$BENCH_OUT/api-submit.json" && test -s "$BENCH_OUT/redis-memory.json"
rm -rf "$BENCH_OUT"

step "operator benchmark: smoke run at tiny sizes, the debug build on both sides (its own checks; figures to a temp dir)"
BENCH_OUT="$(mktemp -d)"
cargo build --locked --bin dedup2d
DEDUP2D_BENCH_OUT="$BENCH_OUT" DEDUP2D_BENCH_BASELINE_BIN="$CARGO_TARGET_DIR/debug/dedup2d" \
  DEDUP2D_BENCH_CANDIDATE_BIN="$CARGO_TARGET_DIR/debug/dedup2d" DEDUP2D_BENCH_SIZES=3 \
  DEDUP2D_BENCH_PROGRESSING=3 DEDUP2D_BENCH_IDLE_SECS=10 DEDUP2D_BENCH_RESTART_SECS=10 bench/operator.sh
test -s "$BENCH_OUT/operator.json"
rm -rf "$BENCH_OUT"

step "container image: reproducible build, config, run under runc (hack/image.sh check)"
hack/image.sh check

step "done"
