#!/usr/bin/env bash
# The drain check's Redis cost: the operator's bounded check, the naive GET-everything approach,
# the first Lua check and a bare SCAN over the same payload keys, side by side on one private
# redis-server; writes bench/results/$DEDUP2D_BENCH_NAME.json (default drain). A measurement, not
# a test: nothing here is timed. Needs redis-server (hack/lib/peers.sh installs it).
# DEDUP2D_BENCH_KEYS (default 20000 small payloads), DEDUP2D_BENCH_DUAL_EVERY (one in N of them
# dual-write, default 5) and DEDUP2D_BENCH_BIG (default 50 payloads of 10 MiB) size it;
# DEDUP2D_BENCH_PROFILE=release measures an optimised client (Redis does the work either way).
# DEDUP2D_BENCH_REDIS_CPU=N pins redis-server to core N (at nice -10) and the client and the pinger
# to the other cores, so that what the pinger sees is Redis's own latency, not another process
# holding its core.
set -euo pipefail
cd "$(dirname "$0")/.."
. hack/lib/peers.sh
peers_redis_server
profile="${DEDUP2D_BENCH_PROFILE:-dev}"
pin=()
if [ -n "${DEDUP2D_BENCH_REDIS_CPU:-}" ]; then
  cpu="$DEDUP2D_BENCH_REDIS_CPU"
  others="$(seq 0 $(( $(nproc) - 1 )) | grep -vx "$cpu" | paste -sd, -)"
  [ -n "$others" ] || { echo "bench/drain.sh: DEDUP2D_BENCH_REDIS_CPU needs at least 2 cores" >&2; exit 2; }
  wrapper="$(mktemp -t redis-pinned.XXXXXX)"
  trap 'rm -f "$wrapper"' EXIT
  # exec all the way down: the pid the test starts is redis-server's own
  printf '#!/bin/sh\nexec nice -n -10 taskset -c %s %s "$@"\n' "$cpu" "$(command -v redis-server)" >"$wrapper"
  chmod +x "$wrapper"
  export DEDUP2D_REDIS_SERVER="$wrapper"
  cargo test --profile "$profile" --test local --no-run
  pin=(taskset -c "$others")
fi
"${pin[@]}" cargo test --profile "$profile" --test local bench_drain:: -- --ignored --nocapture
