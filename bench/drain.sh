#!/usr/bin/env bash
# The drain check's Redis cost: the operator's bounded check, the naive GET-everything approach,
# the first Lua check and a bare SCAN over the same payload keys, side by side on one private
# redis-server; writes bench/results/$DEDUP2D_BENCH_NAME.json (default drain). A measurement, not
# a test: nothing here is timed. Needs redis-server (hack/lib/peers.sh installs it).
# DEDUP2D_BENCH_KEYS (default 20000 small payloads), DEDUP2D_BENCH_DUAL_EVERY (one in N of them
# dual-write, default 5) and DEDUP2D_BENCH_BIG (default 50 payloads of 10 MiB) size it;
# DEDUP2D_BENCH_PROFILE=release measures an optimised client (Redis does the work either way).
set -euo pipefail
cd "$(dirname "$0")/.."
. hack/lib/peers.sh
peers_redis_server
profile="${DEDUP2D_BENCH_PROFILE:-dev}"
cargo test --profile "$profile" --test local bench_drain:: -- --ignored --nocapture
