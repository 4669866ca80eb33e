#!/usr/bin/env bash
# The operator's cost on a local control plane of its own (named dedup2d-bench, with an audit
# log), the baseline operator and the candidate side by side in one run: writes
# bench/results/$DEDUP2D_BENCH_NAME.json, default operator.json (tests/cluster/bench_operator.rs, an
# #[ignore]d test this runs).
# A measurement, not a test: nothing here is timed. See bench/README.md, section operator.
#
#   bench/operator.sh
#   DEDUP2D_BENCH_SIZES=10,100 DEDUP2D_BENCH_PROGRESSING=20 DEDUP2D_BENCH_IDLE_SECS=30 bench/operator.sh
#
# Operators: the baseline is a release build of DEDUP2D_BENCH_BASELINE_REV (default 07c047f, the
# commit the issue measured), exported with `git archive` into $DEDUP2D_CACHE/opbench-src-<commit>
# and built into $DEDUP2D_CACHE/target-opbench-base; the candidate is a release build of this
# checkout (in CARGO_TARGET_DIR, or target/). DEDUP2D_BENCH_BASELINE_BIN / DEDUP2D_BENCH_CANDIDATE_BIN
# take ready binaries instead (DEDUP2D_BENCH_OPERATOR_NOTES: what they are, for the JSON).
# DEDUP2D_BENCH_IDLE_SECS (default 120, one re-observe period) is each of the two idle windows,
# DEDUP2D_BENCH_RESTART_SECS (default 60) the window after the leader restart. The cluster is stopped at the end unless DEDUP2D_BENCH_KEEP_CLUSTER=1.
# About 25 minutes at the default sizes on 2 cores (plus the builds the first time).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
export DEDUP2D_CACHE="${DEDUP2D_CACHE:-$HOME/.cache/dedup2d}"
. hack/lib/peers.sh
peers_redis_server

log() { printf '[operator.sh %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

base_rev="$(git rev-parse "${DEDUP2D_BENCH_BASELINE_REV:-07c047f}^{commit}")"
cand_rev="$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src crates Cargo.toml Cargo.lock || echo '+dirty')"

baseline_bin() {
  if [ -n "${DEDUP2D_BENCH_BASELINE_BIN:-}" ]; then echo "$DEDUP2D_BENCH_BASELINE_BIN"; return; fi
  local src="$DEDUP2D_CACHE/opbench-src-$base_rev" target="$DEDUP2D_CACHE/target-opbench-base"
  if [ ! -f "$src/.complete" ]; then
    rm -rf "$src" && mkdir -p "$src"
    git archive "$base_rev" | tar -x -C "$src"
    touch "$src/.complete"
  fi
  log "building the baseline ($base_rev) into $target"
  (cd "$src" && env -u CARGO_BUILD_BUILD_DIR CARGO_TARGET_DIR="$target" cargo build --release --locked --bin dedup2d >&2)
  echo "$target/release/dedup2d"
}

candidate_bin() {
  if [ -n "${DEDUP2D_BENCH_CANDIDATE_BIN:-}" ]; then echo "$DEDUP2D_BENCH_CANDIDATE_BIN"; return; fi
  log "building the candidate ($cand_rev)"
  cargo build --release --locked --bin dedup2d >&2
  echo "${CARGO_TARGET_DIR:-$ROOT/target}/release/dedup2d"
}

base="$(baseline_bin)"
cand="$(candidate_bin)"
export DEDUP2D_BENCH_OPERATORS="baseline=$base,candidate=$cand"
base_note="release build of $base_rev" cand_note="release build of $cand_rev"
[ -z "${DEDUP2D_BENCH_BASELINE_BIN:-}" ] || base_note="$base"
[ -z "${DEDUP2D_BENCH_CANDIDATE_BIN:-}" ] || cand_note="$cand"
export DEDUP2D_BENCH_OPERATOR_NOTES="${DEDUP2D_BENCH_OPERATOR_NOTES:-baseline: $base_note; candidate: $cand_note}"

# Enough kwok nodes (110 pods each) for the idle fleets (2 pods each) and the progressing ones.
max() { tr ',' '\n' | sort -n | tail -1; }
# (An empty DEDUP2D_BENCH_PROGRESSING= runs no progressing scenario.)
idle_max="$(max <<<"${DEDUP2D_BENCH_SIZES-10,100,1000}")"
prog_max="$(max <<<"${DEDUP2D_BENCH_PROGRESSING-50,150}")"
idle_max="${idle_max:-0}" prog_max="${prog_max:-0}"
nodes=$(( (2 * idle_max + 4 * prog_max + 100) / 100 + 1 ))

export DEDUP2D_CLUSTER_NAME=dedup2d-bench DEDUP2D_AUDIT_POLICY="$ROOT/bench/operator-audit.yaml"
hack/cluster.sh down >/dev/null 2>&1 || true   # a fresh audit log and no objects of an earlier run
[ "${DEDUP2D_BENCH_KEEP_CLUSTER:-0}" = 1 ] || trap 'hack/cluster.sh down >/dev/null 2>&1 || true' EXIT
hack/cluster.sh up --nodes "$nodes" >/dev/null
eval "$(hack/cluster.sh env)"
log "cluster dedup2d-bench up ($nodes nodes); measuring $DEDUP2D_BENCH_OPERATOR_NOTES"
cargo test --test cluster bench_operator:: -- --ignored --nocapture --test-threads 1
