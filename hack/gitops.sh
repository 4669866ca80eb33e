#!/usr/bin/env bash
# hack/gitops.sh — check docs/gitops: the Argo CD health check and resource actions run in Argo CD's
# Lua environment (gopher-lua v1.1.2, base/table/package/safe os only) and kstatus, on the documents
# the planner produced (docs/gitops/testdata, kept current by `cargo test`), and the argocd-cm snippet
# in docs/gitops/README.md against the .lua files. The checker is hack/gitops-check, built once per
# change under the cache by hack/tools.sh.
#
# DEDUP2D_BLESS=1 rewrites the snippet from the .lua files.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
if ! command -v go >/dev/null 2>&1; then
  echo "hack/gitops.sh: 'go' is missing; install Go 1.24 or newer (https://go.dev/dl/) and put it on PATH" >&2
  exit 1
fi
bin="$("$ROOT/hack/tools.sh" gitops-check)"
args=()
if [[ -n "${DEDUP2D_BLESS:-}" ]]; then
  args+=(-bless)
fi
exec "$bin" "${args[@]}" "$ROOT/docs/gitops"
