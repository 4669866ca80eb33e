#!/usr/bin/env bash
# hack/check-core-purity.sh — the pure core (crates/dedup2d-core) must build without any IO stack: no
# Kubernetes client or runtime, no Redis, no async runtime, no HTTP server or client. Fails naming the
# crate and the path that pulls it in.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
forbidden='^(kube-client|kube-runtime|redis|tokio|axum|hyper|reqwest) '
tree="$(cargo tree --locked -p dedup2d-core -e normal --prefix none | sed 's/ (\*)$//')"
bad="$(printf '%s\n' "$tree" | grep -E "$forbidden" | sort -u || true)"
if [[ -n "$bad" ]]; then
  echo "hack/check-core-purity.sh: dedup2d-core depends on an IO crate:" >&2
  printf '  %s\n' "$bad" >&2
  for crate in $(printf '%s\n' "$bad" | cut -d' ' -f1 | sort -u); do
    echo "  how $crate comes in:" >&2
    cargo tree --locked -p dedup2d-core -e normal -i "$crate" 2>&1 | sed 's/^/    /' >&2 || true
  done
  exit 1
fi
echo "dedup2d-core: $(printf '%s\n' "$tree" | sort -u | wc -l) crates, none of kube-client, kube-runtime, redis, tokio, axum, hyper, reqwest"
