#!/usr/bin/env bash
# hack/demo.sh — the whole rollout on this machine with live traffic, in one command:
#
#   one local Redis; the local control plane (hack/cluster.sh up, unless it is up); the CRD; the
#   example fleet (examples/dedup2d-fleet.yaml) whose fake pods stand for real local processes:
#   tests/peers/fleet_supervisor.py runs the Python legacy arq worker (or `dedup2d worker`, once the
#   operator moved that Deployment to the new image) for each worker Deployment, and `dedup2d api`
#   for the API Deployment, restarted with the ConfigMap's values whenever its pod template changes;
#   uploads through the API the whole time (tests/peers/traffic.py); the operator; then
#   examples/rollout.yaml. Prints every status.transitions entry as it appears, each process swap,
#   a `dedup2d rollout status` snapshot while soaking and `dedup2d rollout status --watch` while
#   draining, then per phase: jobs submitted, completed and failed, and how long the phase took.
#
#   hack/demo.sh         run it (exit 0 only if Completed with every job completed)
#   hack/demo.sh down    stop what a DEDUP2D_DEMO_KEEP=1 run left running
#
#   DEDUP2D_DEMO_NAMESPACE   namespace (default dedup2d-demo; recreated)
#   DEDUP2D_DEMO_TIMEOUT     seconds to wait for the rollout to finish (default 300)
#   DEDUP2D_DEMO_RATE        uploads per second (default 5)
#   DEDUP2D_DEMO_KEEP=1      leave Redis, the operator, the API and workers, the namespace and a
#                            cluster this script started running (stop them with `hack/demo.sh down`)
#
# Logs (operator, every process, kubectl, the cluster start) go to $DEDUP2D_CACHE/demo/work/; the
# PIDs of what is running to $DEDUP2D_CACHE/demo/state.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
export DEDUP2D_CACHE="${DEDUP2D_CACHE:-$HOME/.cache/dedup2d}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$DEDUP2D_CACHE/target}"
NS="${DEDUP2D_DEMO_NAMESPACE:-dedup2d-demo}"
TIMEOUT="${DEDUP2D_DEMO_TIMEOUT:-300}"
RATE="${DEDUP2D_DEMO_RATE:-5}"
KEEP="${DEDUP2D_DEMO_KEEP:-}"
DEMO_HOME="$DEDUP2D_CACHE/demo"
STATE="$DEMO_HOME/state"
WORK="$DEMO_HOME/work"
API_KEY="demo-key"
LEGACY_IMAGE="registry.example.com/cad-ml-platform/dedup2d-worker:2.4.0"
ROLLOUT="file-ref-migration"
T0=$SECONDS
say() { printf '[demo %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

# ---- the state file: KEY=VALUE lines, appended as things start, read by `down` ----------------
state_set() { mkdir -p "$DEMO_HOME"; printf '%s=%q\n' "$1" "$2" >>"$STATE"; }
alive() { [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null; }
stop_pid() { # pid name: SIGTERM, up to 40 s, then SIGKILL
  local pid="$1" i
  alive "$pid" || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for i in $(seq 400); do alive "$pid" || return 0; sleep 0.1; done
  say "$2 (pid $pid) did not stop in 40 s; killing it"
  kill -KILL "$pid" 2>/dev/null || true
}

down() {
  [[ -f "$STATE" ]] || { say "nothing to stop (no $STATE)"; return 0; }
  local SUPERVISOR_PID="" OPERATOR_PID="" REDIS_PID="" TRAFFIC_PID="" NAMESPACE="" STARTED_CLUSTER=0
  local KUBECTL=kubectl KUBECONFIG_USED=""
  # shellcheck disable=SC1090
  . "$STATE"
  stop_pid "$TRAFFIC_PID" "traffic"
  stop_pid "$OPERATOR_PID" "the operator"
  stop_pid "$SUPERVISOR_PID" "the fleet supervisor (API and workers)"
  stop_pid "$REDIS_PID" "Redis"
  if [[ -n "$NAMESPACE" && -n "$KUBECONFIG_USED" ]]; then
    KUBECONFIG="$KUBECONFIG_USED" "$KUBECTL" --request-timeout=10s delete namespace "$NAMESPACE" \
      --ignore-not-found --wait=false >/dev/null 2>&1 || true
  fi
  if [[ "$STARTED_CLUSTER" == 1 ]]; then
    hack/cluster.sh down >>"$WORK/logs/cluster.log" 2>&1 || true
    say "stopped the local control plane this demo had started"
  fi
  rm -f "$STATE"
  say "stopped: traffic, operator, API and workers, Redis${NAMESPACE:+; namespace $NAMESPACE deleted}"
}

case "${1:-}" in
  down) down; exit 0 ;;
  "") ;;
  *) echo "usage: hack/demo.sh [down]" >&2; exit 2 ;;
esac

if [[ -f "$STATE" ]]; then
  # shellcheck disable=SC1090
  if (SUPERVISOR_PID="" OPERATOR_PID="" REDIS_PID=""; . "$STATE"; alive "$SUPERVISOR_PID" || alive "$OPERATOR_PID" || alive "$REDIS_PID"); then
    say "a kept demo is still running; stop it first with: hack/demo.sh down"
    exit 1
  fi
  rm -f "$STATE"
fi
rm -rf "$WORK"
mkdir -p "$WORK/logs" "$WORK/uploads"

# ---- cleanup -----------------------------------------------------------------------------------
REDIS_PID="" OPERATOR_PID="" SUPERVISOR_PID="" TRAFFIC_PID="" PRINTER_PID="" TAIL_PID="" STARTED_CLUSTER=0
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_pid "$TRAFFIC_PID" traffic
  [[ -n "$PRINTER_PID" ]] && kill "$PRINTER_PID" 2>/dev/null
  if [[ "$KEEP" == 1 && -f "$STATE" ]]; then
    sleep 0.3
    [[ -n "$TAIL_PID" ]] && kill "$TAIL_PID" 2>/dev/null
    say "DEDUP2D_DEMO_KEEP=1: left running (PIDs in $STATE):"
    say "  Redis ${REDIS_URL:-} (pid $REDIS_PID), operator pid $OPERATOR_PID, fleet supervisor pid $SUPERVISOR_PID"
    say "  API $(cat "$WORK/api.url" 2>/dev/null) (X-API-Key: $API_KEY), workers: see $WORK/pids.json"
    say "  namespace $NS; KUBECONFIG=${KUBECONFIG:-}"
    say "  stop everything with: hack/demo.sh down"
    exit "$rc"
  fi
  (( rc != 0 )) && say "failed; logs are in $WORK/logs (operator: $WORK/logs/operator.log)"
  say "cleaning up"
  down >/dev/null
  [[ -n "$TAIL_PID" ]] && kill "$TAIL_PID" 2>/dev/null
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- prerequisites -----------------------------------------------------------------------------
# shellcheck source=hack/lib/peers.sh
. hack/lib/peers.sh
peers_redis_server
peers_venv
PY="$DEDUP2D_PYTHON"

say "building dedup2d (cargo build)"
cargo build --quiet --bin dedup2d
BIN="$CARGO_TARGET_DIR/debug/dedup2d"

# Long-lived parts run in their own session, so a Ctrl-C reaches only this script, which stops
# them in order (or, with DEDUP2D_DEMO_KEEP=1, leaves them running).
PORT="$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
setsid redis-server --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" \
  >"$WORK/logs/redis.log" 2>&1 </dev/null &
REDIS_PID=$!
state_set REDIS_PID "$REDIS_PID"
REDIS_URL="redis://127.0.0.1:$PORT/0"
for _ in $(seq 50); do redis-cli -p "$PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
redis-cli -p "$PORT" ping >/dev/null || { say "Redis did not start; see $WORK/logs/redis.log"; exit 1; }
say "Redis at $REDIS_URL"

if [[ -z "${KUBECONFIG:-}" ]] && ! hack/cluster.sh status >/dev/null 2>&1; then
  say "starting the local control plane (hack/cluster.sh up; log $WORK/logs/cluster.log)"
  STARTED_CLUSTER=1
  state_set STARTED_CLUSTER 1
  hack/cluster.sh up >>"$WORK/logs/cluster.log" 2>&1 || { say "hack/cluster.sh up failed; see $WORK/logs/cluster.log"; exit 1; }
fi
if [[ -z "${KUBECONFIG:-}" ]]; then eval "$(hack/cluster.sh env)"; fi
KUBECTL="${DEDUP2D_K8S_BIN:+$DEDUP2D_K8S_BIN/}kubectl"
state_set KUBECTL "$KUBECTL"
state_set KUBECONFIG_USED "$KUBECONFIG"
k() { "$KUBECTL" --namespace "$NS" "$@"; }
say "cluster: $("$KUBECTL" version -o json 2>/dev/null | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])')"

"$BIN" crd | "$KUBECTL" apply --server-side --force-conflicts -f - >/dev/null
"$KUBECTL" wait --for=condition=Established crd/dedup2drollouts.dedup2d.io --timeout=60s >/dev/null

# ---- the fleet ---------------------------------------------------------------------------------
"$KUBECTL" delete namespace "$NS" --ignore-not-found --wait=true >/dev/null
"$KUBECTL" create namespace "$NS" >/dev/null
state_set NAMESPACE "$NS"
for _ in $(seq 50); do k get serviceaccount default >/dev/null 2>&1 && break; sleep 0.2; done
k apply -f examples/dedup2d-fleet.yaml >/dev/null
# This Redis, and the shortest job TTL the contract allows, so legacy payloads drain in a minute.
k patch configmap dedup2d-config --type merge \
  -p "{\"data\":{\"DEDUP2D_REDIS_URL\":\"$REDIS_URL\",\"DEDUP2D_ASYNC_TTL_SECONDS\":\"60\"}}" >/dev/null
for d in dedup2d-worker dedup2d-render-worker dedup2d-api; do k rollout status "deployment/$d" --timeout=120s >/dev/null; done
say "fleet in namespace $NS: $(k get deployments -o jsonpath='{range .items[*]}{.metadata.name}={.spec.template.spec.containers[0].image} {end}')"

setsid "$PY" tests/peers/fleet_supervisor.py --namespace "$NS" --kubectl "$KUBECTL" --dedup2d "$BIN" \
  --python "$PY" --legacy-image "$LEGACY_IMAGE" --api dedup2d-api \
  --worker dedup2d-worker --worker dedup2d-render-worker --configmap dedup2d-config --dir "$WORK" \
  --env "DEDUP2D_API_KEYS=$API_KEY" --env "DEDUP2D_FILE_STORAGE_DIR=$WORK/uploads" \
  >"$WORK/logs/fleet.log" 2>&1 </dev/null &
SUPERVISOR_PID=$!
state_set SUPERVISOR_PID "$SUPERVISOR_PID"
tail --pid=$$ -n +1 -F "$WORK/logs/fleet.log" 2>/dev/null | sed -u 's/^/  /' &
TAIL_PID=$!
for _ in $(seq 300); do [[ -f "$WORK/api.url" ]] && break; alive "$SUPERVISOR_PID" || break; sleep 0.1; done
[[ -f "$WORK/api.url" ]] || { say "the API process did not start; see $WORK/logs/fleet.log"; exit 1; }

"$PY" tests/peers/traffic.py --url-file "$WORK/api.url" --api-key "$API_KEY" --out "$WORK/jobs.jsonl" \
  --results "$WORK/results.jsonl" --rate "$RATE" --max-seconds "$TIMEOUT" --stop-file "$WORK/stop-traffic" \
  >"$WORK/traffic.out" 2>"$WORK/logs/traffic.log" </dev/null &
TRAFFIC_PID=$!
state_set TRAFFIC_PID "$TRAFFIC_PID"
sleep 5
say "traffic: $RATE uploads/s through $(cat "$WORK/api.url"); $(wc -l <"$WORK/jobs.jsonl") submitted, $(cat "$WORK/legacy-received.jsonl" 2>/dev/null | wc -l) handed to the legacy workers so far"

# ---- the operator and the rollout --------------------------------------------------------------
RUST_LOG=info DEDUP2D_LOG_FORMAT=text NO_COLOR=1 setsid "$BIN" operator --namespace "$NS" \
  --metrics-addr 127.0.0.1:0 >"$WORK/logs/operator.log" 2>&1 </dev/null &
OPERATOR_PID=$!
state_set OPERATOR_PID "$OPERATOR_PID"
say "operator running (pid $OPERATOR_PID)"

SINCE="$("$PY" -c 'import time; print(time.time())')"
k apply -f examples/rollout.yaml >/dev/null
say "applied examples/rollout.yaml ($ROLLOUT); transitions (seconds after apply) and process swaps:"
"$PY" hack/lib/demo.py transitions --kubectl "$KUBECTL" --namespace "$NS" --name "$ROLLOUT" --since "$SINCE" \
  --out "$WORK/transitions.json" &
PRINTER_PID=$!

deadline=$((SECONDS + TIMEOUT))
reached() { grep -qxE "$1" "$WORK/transitions.json.phases" 2>/dev/null; }
wait_for() { # phase regex
  until reached "$1"; do
    alive "$PRINTER_PID" || return 1
    alive "$OPERATOR_PID" || { say "the operator exited; see $WORK/logs/operator.log"; exit 1; }
    (( SECONDS < deadline )) || { say "timed out after ${TIMEOUT}s"; exit 1; }
    sleep 0.2
  done
}
if wait_for 'Soaking|RolledBack|Failed' && reached Soaking; then
  sleep 1
  say "snapshot: dedup2d rollout status $ROLLOUT -n $NS"
  "$BIN" rollout status "$ROLLOUT" -n "$NS" | sed 's/^/    | /'
fi
if wait_for 'Draining|RolledBack|Failed' && reached Draining; then
  say "while draining: dedup2d rollout status $ROLLOUT -n $NS --watch (until it ends)"
  timeout "$((deadline - SECONDS))" "$BIN" rollout status "$ROLLOUT" -n "$NS" --watch 2>&1 | sed -u 's/^/    | /' || true
fi
rc=0
wait "$PRINTER_PID" || rc=$?
PRINTER_PID=""
phase="$(k get d2r "$ROLLOUT" -o jsonpath='{.status.phase}')"
(( rc == 0 )) || { say "the rollout ended in $phase"; exit 1; }

touch "$WORK/stop-traffic"
say "stopping the uploads; waiting for the last jobs to finish"
wait "$TRAFFIC_PID" || true
TRAFFIC_PID=""
sleep 0.5
kill "$TAIL_PID" 2>/dev/null || true
TAIL_PID=""
say "rollout $phase; traffic stopped: $(cat "$WORK/traffic.out")"
say "summary:"
ok=0
"$PY" hack/lib/demo.py summary --work "$WORK" --transitions "$WORK/transitions.json" --since "$SINCE" || ok=$?
say "logs: $WORK/logs/ (operator.log, fleet.log, one per process: $(cd "$WORK/logs" && ls | grep -cE '^dedup2d-'))," \
  "jobs $WORK/jobs.jsonl, process events $WORK/events.jsonl, legacy workers' jobs $WORK/legacy-received.jsonl"
say "wall time $((SECONDS - T0))s"
(( ok == 0 )) || { say "some jobs failed or did not finish"; exit 1; }
