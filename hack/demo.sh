#!/usr/bin/env bash
# hack/demo.sh — the whole rollout on this machine, in one command:
#   a local Redis on a free port, the local control plane (hack/cluster.sh up), the CRD, the example
#   fleet from examples/ (pointed at that Redis, with a few legacy payloads in it), the operator,
#   then examples/rollout.yaml; prints each phase as it is reached until Completed, and cleans up.
#
#   DEDUP2D_DEMO_NAMESPACE   namespace to use (default dedup2d-demo; recreated)
#   DEDUP2D_DEMO_TIMEOUT     seconds to wait for Completed (default 300)
#   DEDUP2D_DEMO_KEEP=1      leave the namespace, Redis and a cluster this script started running
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
export DEDUP2D_CACHE="${DEDUP2D_CACHE:-$HOME/.cache/dedup2d}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$DEDUP2D_CACHE/target}"
NS="${DEDUP2D_DEMO_NAMESPACE:-dedup2d-demo}"
TIMEOUT="${DEDUP2D_DEMO_TIMEOUT:-300}"
WORK="$(mktemp -d)"
say() { printf '[demo %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

REDIS_PID="" OPERATOR_PID="" STARTED_CLUSTER=0
cleanup() {
  local rc=$?
  if [[ "${DEDUP2D_DEMO_KEEP:-}" == 1 ]]; then
    say "kept: namespace $NS, Redis pid ${REDIS_PID:-none}, operator log $WORK/operator.log"
    [[ -n "$OPERATOR_PID" ]] && kill "$OPERATOR_PID" 2>/dev/null
    exit "$rc"
  fi
  say "cleaning up"
  [[ -n "$OPERATOR_PID" ]] && kill "$OPERATOR_PID" 2>/dev/null && wait "$OPERATOR_PID" 2>/dev/null
  command -v kubectl >/dev/null && kubectl delete namespace "$NS" --wait=false >/dev/null 2>&1
  [[ -n "$REDIS_PID" ]] && kill "$REDIS_PID" 2>/dev/null
  (( STARTED_CLUSTER )) && hack/cluster.sh down >/dev/null 2>&1
  (( rc != 0 )) && [[ -f "$WORK/operator.log" ]] && { say "operator log (tail):"; tail -n 30 "$WORK/operator.log"; }
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

command -v redis-server >/dev/null || { say "redis-server is missing (Debian: apt-get install -y redis-server)"; exit 1; }

say "building dedup2d"
cargo build --quiet --bin dedup2d
BIN="$CARGO_TARGET_DIR/debug/dedup2d"

PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
redis-server --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" >"$WORK/redis.log" 2>&1 &
REDIS_PID=$!
REDIS_URL="redis://127.0.0.1:$PORT/0"
for _ in $(seq 50); do redis-cli -p "$PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
redis-cli -p "$PORT" ping >/dev/null || { say "Redis did not start"; exit 1; }
say "Redis at $REDIS_URL"

if ! hack/cluster.sh status >/dev/null 2>&1; then
  say "starting the local control plane (hack/cluster.sh up)"
  STARTED_CLUSTER=1
  hack/cluster.sh up >/dev/null
fi
eval "$(hack/cluster.sh env)"
say "cluster: $(kubectl version -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])')"

"$BIN" crd | kubectl apply --server-side --force-conflicts -f - >/dev/null
kubectl wait --for=condition=Established crd/dedup2drollouts.dedup2d.io --timeout=60s >/dev/null

kubectl delete namespace "$NS" --ignore-not-found --wait=true >/dev/null
kubectl create namespace "$NS" >/dev/null
kubectl -n "$NS" apply -f examples/dedup2d-fleet.yaml >/dev/null
kubectl -n "$NS" patch configmap dedup2d-config --type merge \
  -p "{\"data\":{\"DEDUP2D_REDIS_URL\":\"$REDIS_URL\"}}" >/dev/null
kubectl -n "$NS" rollout status deployment --timeout=120s >/dev/null
say "fleet up in namespace $NS: $(kubectl -n "$NS" get deployments -o jsonpath='{range .items[*]}{.metadata.name}={.spec.template.spec.containers[0].image} {end}')"

# Jobs enqueued before the rollout by the legacy API: payloads carrying file_bytes_b64, which the
# drain waits out (they expire after 40 s here; the real TTL is DEDUP2D_ASYNC_TTL_SECONDS).
for i in 1 2 3; do
  redis-cli -p "$PORT" set "dedup2d:payload:legacy-$i" \
    "{\"job_id\":\"legacy-$i\",\"file_name\":\"part-$i.dxf\",\"file_bytes_b64\":\"AAECAwQ=\"}" EX 40 >/dev/null
done
say "3 legacy payloads in Redis (expiring in 40s)"

RUST_LOG=info DEDUP2D_LOG_FORMAT=text "$BIN" operator --namespace "$NS" >"$WORK/operator.log" 2>&1 &
OPERATOR_PID=$!
say "operator running (pid $OPERATOR_PID, log $WORK/operator.log)"

kubectl -n "$NS" apply -f examples/rollout.yaml >/dev/null
NAME="$(kubectl -n "$NS" get d2r -o jsonpath='{.items[0].metadata.name}')"
say "applied examples/rollout.yaml ($NAME); phases:"

last="" start=$SECONDS deadline=$((SECONDS + TIMEOUT))
while (( SECONDS < deadline )); do
  kill -0 "$OPERATOR_PID" 2>/dev/null || { say "the operator exited"; exit 1; }
  line="$(kubectl -n "$NS" get d2r "$NAME" -o jsonpath='{.status.phase}|{.status.message}|{.status.workerSummary}|{.status.dualWrite}|{.status.legacyPayloads}' 2>/dev/null || true)"
  IFS='|' read -r phase message workers dual legacy <<<"$line"
  if [[ -n "$phase" && "$phase" != "$last" ]]; then
    printf '  %-8s %-17s workers %-4s dual-write %-10s legacy payloads %-3s %s\n' \
      "+$((SECONDS - start))s" "$phase" "${workers:--}" "${dual:--}" "${legacy:--}" "$message"
    last="$phase"
  fi
  case "$phase" in
    Completed) say "done: the fleet is file_ref-only"; exit 0 ;;
    RolledBack|Failed) say "the rollout ended in $phase"; exit 1 ;;
  esac
  sleep 1
done
say "timed out after ${TIMEOUT}s in phase ${last:-none}"
exit 1
