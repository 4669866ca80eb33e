#!/usr/bin/env bash
# The fault suite at full size: every test whose name starts with `faults_` in tests/local and
# tests/cluster, run with DEDUP2D_FAULTS=full (the normal test run, and so CI, runs the same tests
# at a reduced size). Each writes its counts to bench/results/faults/. Starts the local control
# plane like hack/test.sh cluster (or uses the cluster in KUBECONFIG).
#
#   hack/faults.sh            both groups
#   hack/faults.sh local      only the ones that need no cluster
#   hack/faults.sh cluster    only the ones on the control plane
set -euo pipefail
GROUP="${1:-all}"
case "$GROUP" in
  all | local | cluster) ;;
  *)
    echo "usage: hack/faults.sh [local|cluster]" >&2
    exit 2
    ;;
esac
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
export DEDUP2D_CACHE="${DEDUP2D_CACHE:-$HOME/.cache/dedup2d}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$DEDUP2D_CACHE/target}"
export DEDUP2D_FAULTS=full
. hack/lib/peers.sh
peers_redis_server
peers_venv
mkdir -p bench/results/faults
if [ "$GROUP" != cluster ]; then
  env -u KUBECONFIG cargo test --locked --test local faults_ -- --test-threads=1 --nocapture
fi
if [ "$GROUP" != local ]; then
  if [ -z "${KUBECONFIG:-}" ]; then
    hack/cluster.sh up
    eval "$(hack/cluster.sh env)"
  fi
  cargo test --locked --test cluster faults_ -- --test-threads=1 --nocapture
fi
ls -1 bench/results/faults
