#!/usr/bin/env bash
# Redis memory per pending job (no worker runs): file_ref-only and dual-write payloads through the
# real `dedup2d api`, and legacy (file_bytes_b64 only) payloads, at 100 KiB, 1 MiB and 10 MiB
# files, each on a fresh private redis-server: INFO memory used_memory delta per job and MEMORY
# USAGE of each key kind, with the ratios to file_ref-only; writes bench/results/redis-memory.json.
# A measurement, not a test. Needs redis-server (hack/lib/peers.sh installs it).
# DEDUP2D_BENCH_JOBS (default 20 per measurement) and DEDUP2D_BENCH_SIZES_KIB (default
# 100,1024,10240) size it; DEDUP2D_BENCH_PROFILE=release builds an optimised API (the memory
# figures do not depend on it).
set -euo pipefail
cd "$(dirname "$0")/.."
. hack/lib/peers.sh
peers_redis_server
profile="${DEDUP2D_BENCH_PROFILE:-dev}"
cargo test --profile "$profile" --test local bench_redis_memory:: -- --ignored --nocapture
