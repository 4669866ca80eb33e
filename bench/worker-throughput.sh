#!/usr/bin/env bash
# Our worker's ARQ consumer against the Python arq worker on the same jobs, at concurrency 1, 10
# and 50: jobs/s and Redis commands per job (INFO commandstats), with the ratios; writes
# bench/results/worker-throughput.json. A measurement, not a test: nothing here is timed.
# Needs redis-server and the Python peers (hack/lib/peers.sh installs both).
#   DEDUP2D_BENCH_JOBS=3000   jobs per side and concurrency
#   DEDUP2D_BENCH_JOB_MS=0    the sleep each job makes after reading its payload (both sides)
#   DEDUP2D_BENCH_CONCURRENCY=1,10,50
#   DEDUP2D_BENCH_ROUNDS=3    rounds per concurrency, the sides alternating; the ratio is of the medians
#   DEDUP2D_BENCH_PROFILE=release (default) or dev
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
export DEDUP2D_CACHE="${DEDUP2D_CACHE:-$HOME/.cache/dedup2d}"
. hack/lib/peers.sh
peers_redis_server
peers_venv
profile="${DEDUP2D_BENCH_PROFILE:-release}"
export DEDUP2D_BENCH_PROFILE="$profile"
cargo test --profile "$profile" --test local bench_worker_throughput:: -- --ignored --nocapture
