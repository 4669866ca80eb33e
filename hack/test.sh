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

if [ -x hack/cluster.sh ] && [ -z "${KUBECONFIG:-}" ]; then
  step "local Kubernetes control plane"
  hack/cluster.sh build
  hack/cluster.sh up
  eval "$(hack/cluster.sh env)"
  trap 'hack/cluster.sh down >/dev/null 2>&1 || true' EXIT
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --all-targets --locked -- -D warnings

step "cargo test"
cargo test --locked --all-targets -- --test-threads="${DEDUP2D_TEST_THREADS:-4}"

step "done"
