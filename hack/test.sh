#!/usr/bin/env bash
# The project's one test command (README; `.ci/run` calls exactly this).
#
# On a fresh machine it installs what the tests need (Debian redis-server, a virtualenv with the
# pinned Python peers), builds or reuses the local Kubernetes control plane when the cluster
# script is present, then runs fmt, clippy and every test. Expensive builds are cached outside
# the clone under ${DEDUP2D_CACHE:-~/.cache/dedup2d}.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
export DEDUP2D_CACHE="${DEDUP2D_CACHE:-$HOME/.cache/dedup2d}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$DEDUP2D_CACHE/target}"
mkdir -p "$DEDUP2D_CACHE"

step() { printf '\n==> %s (%ss)\n' "$*" "$SECONDS"; }

step "system packages"
if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    echo "redis-server is missing: install it with 'sudo apt-get install -y redis-server'" >&2
    exit 1
  fi
fi
# The Debian package starts a system instance on 6379; tests use their own ports.
redis-server --version

step "python peers"
REQ="tests/peers/requirements.txt"
REQ_HASH="$(sha256sum "$REQ" | cut -c1-12)"
VENV="$DEDUP2D_CACHE/venv-$REQ_HASH"
if [ ! -x "$VENV/bin/python" ] || [ ! -f "$VENV/.complete" ]; then
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REQ"
  touch "$VENV/.complete"
fi
export DEDUP2D_PYTHON="$VENV/bin/python"
"$DEDUP2D_PYTHON" -c 'import arq, importlib.metadata as m; print("arq", m.version("arq"))'

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

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --all-targets --locked -- -D warnings

step "cargo build (tests)"
cargo test --locked --all-targets --no-run

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

step "cargo test"
cargo test --locked --all-targets -- --test-threads="${DEDUP2D_TEST_THREADS:-4}"

step "container image: reproducible build, config, run under runc (hack/image.sh check)"
hack/image.sh check

step "done"
