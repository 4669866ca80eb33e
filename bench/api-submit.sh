#!/usr/bin/env bash
# The API's submit rate as pending jobs grow (no worker runs, so every submit stays pending): the
# real `dedup2d api` process, the submit script alone, and the capacity check before the change
# (SMEMBERS + an HGET per member), side by side, each on a private redis-server, per block of
# 1/10 of the submits; writes bench/results/api-submit.json. A measurement, not a test: nothing
# here is timed. Needs redis-server (hack/lib/peers.sh installs it). DEDUP2D_BENCH_SUBMITS
# (default 10000 per pass), DEDUP2D_BENCH_CONCURRENCY (default 1,8,32) and DEDUP2D_BENCH_ROUNDS
# (default 5: the API and script passes are repeated, each block's figure the median) size it; the API is
# built with the release profile unless DEDUP2D_BENCH_PROFILE says otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
. hack/lib/peers.sh
peers_redis_server
profile="${DEDUP2D_BENCH_PROFILE:-release}"
export DEDUP2D_BENCH_PROFILE="$profile"
cargo test --profile "$profile" --test local bench_api_submit:: -- --ignored --nocapture
