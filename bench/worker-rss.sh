#!/usr/bin/env bash
# The worker's peak RSS (VmHWM) for one job at 10, 50 and 200 MiB files, b64_only and
# file_ref_only payloads, with the ratio to the file size: writes bench/results/worker-rss.json.
# A measurement, not a test: nothing here is timed. Needs redis-server (hack/lib/peers.sh
# installs it). DEDUP2D_BENCH_PROFILE=release measures an optimised build (default: dev, the
# allocation pattern is the same); DEDUP2D_BENCH_SIZES_MIB=10,50 measures other sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
. hack/lib/peers.sh
peers_redis_server
profile="${DEDUP2D_BENCH_PROFILE:-dev}"
export DEDUP2D_BENCH_PROFILE="$profile"
cargo test --profile "$profile" --test local bench_worker_rss:: -- --ignored --nocapture
