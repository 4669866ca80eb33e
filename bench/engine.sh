#!/usr/bin/env bash
# The engine benchmark: LSH index vs brute force at 10,000 and 100,000 drawings on a private
# redis-server; writes bench/results/engine.json. Extra arguments go to the benchmark
# (--sizes 10000,100000 --queries 400 --out FILE). Never part of the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run --release --locked --example engine-bench -- "$@"
