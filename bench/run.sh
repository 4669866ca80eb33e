#!/usr/bin/env bash
# Every benchmark, one after another: each bench/<name>.sh writes its JSON to bench/results/ and
# bench/README.md gives every figure with its baseline and ratio.
#
#   bench/run.sh              all of them
#   bench/run.sh drain engine only these (by script name)
set -euo pipefail
cd "$(dirname "$0")"
names=("$@")
if [ ${#names[@]} -eq 0 ]; then
  for f in *.sh; do
    [ "$f" = run.sh ] || names+=("${f%.sh}")
  done
fi
for n in "${names[@]}"; do
  if [ ! -x "$n.sh" ]; then
    echo "bench/run.sh: no benchmark named $n (have: $(ls *.sh | grep -v '^run.sh$' | sed 's/\.sh$//' | tr '\n' ' '))" >&2
    exit 2
  fi
done
for n in "${names[@]}"; do
  printf '\n==> bench/%s.sh (%ss)\n' "$n" "$SECONDS"
  "./$n.sh"
done
