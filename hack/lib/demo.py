"""hack/demo.sh's two readers (Python stdlib only).

  demo.py transitions --kubectl K --namespace NS --name NAME --since EPOCH --out FILE
      Watches the Dedup2DRollout (`kubectl get --watch`, every version) and prints each entry of
      status.transitions once (deduplicated by time + target phase), as it appears. Appends every
      phase reached to FILE.phases, and at a terminal phase writes FILE (JSON: transitions, the
      peak of status.legacyPayloads, the final status) and exits 0 for Completed, 1 otherwise.

  demo.py summary --work DIR --transitions FILE --since EPOCH
      From traffic.py's DIR/jobs.jsonl (submissions) and DIR/results.jsonl (outcomes, polled through
      the API while the jobs existed), prints per phase (by submit time): jobs submitted, completed,
      failed and who ran them, and the time each phase took; then what the legacy workers were
      handed and the drained legacy payloads. Exits 1 if a job failed or did not finish, an upload
      was refused, or a legacy worker was handed a payload without file_bytes_b64.
"""
import argparse
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime

TERMINAL = ("Completed", "RolledBack", "Failed")


def die_with_parent():
    """Linux prctl(PR_SET_PDEATHSIG, SIGTERM): the kubectl child ends with this process."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)


def epoch(rfc3339):
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def transitions(a):
    seen, phases, peak, final = set(), [], None, {}
    cmd = [a.kubectl, "--namespace", a.namespace, "get", "dedup2drollouts", a.name, "-o", "json", "--watch",
           "--output-watch-events"]
    decoder = json.JSONDecoder()
    while True:
        log = open(f"{a.out}.kubectl.log", "ab")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, preexec_fn=die_with_parent)
        buf = ""
        for chunk in iter(proc.stdout.readline, ""):
            buf += chunk
            while True:
                buf = buf.lstrip()
                try:
                    ev, end = decoder.raw_decode(buf)
                except json.JSONDecodeError:
                    break
                buf = buf[end:]
                status = (ev.get("object") or {}).get("status") or {}
                if status.get("legacyPayloads") is not None:
                    peak = max(peak or 0, status["legacyPayloads"])
                for t in status.get("transitions") or []:
                    key = (t["at"], t["to"])
                    if key in seen:
                        continue
                    seen.add(key)
                    phases.append(t)
                    with open(f"{a.out}.phases", "a") as f:
                        f.write(t["to"] + "\n")
                    offset = epoch(t["at"]) - a.since
                    print(f"  +{offset:5.0f}s  {t['from'] + ' -> ' + t['to']:<34} {t['reason']}: {t['message']}", flush=True)
                final = status
                if status.get("phase") in TERMINAL and any(t["to"] == status["phase"] for t in phases):
                    proc.terminate()
                    with open(a.out, "w") as f:
                        json.dump({"transitions": phases, "legacy_peak": peak, "status": final}, f)
                    sys.exit(0 if status["phase"] == "Completed" else 1)
        proc.wait()
        time.sleep(1)  # the watch ended early (server timeout): watch again; `seen` dedupes


def read_jsonl(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def summary(a):
    jobs = read_jsonl(os.path.join(a.work, "jobs.jsonl"))
    with open(a.transitions) as f:
        rollout = json.load(f)
    trans = rollout["transitions"]
    accepted = [j for j in jobs if "job_id" in j]
    refused = [j for j in jobs if "job_id" not in j]
    views = {r["job_id"]: r for r in read_jsonl(os.path.join(a.work, "results.jsonl"))}

    # Phases by submit time: before the rollout was applied, Pending until the first transition,
    # then the target of each transition. A phase ends where the next one starts.
    first = accepted[0]["at"] if accepted else a.since
    bounds = [("before rollout", first), ("Pending", a.since)] + [(t["to"], epoch(t["at"])) for t in trans]
    rows = {}
    for name, _ in bounds:
        rows.setdefault(name, {"submitted": 0, "completed": 0, "failed": 0, "unfinished": 0, "legacy": 0, "dedup2d": 0})
    for j in accepted:
        phase = [name for name, start in bounds if start <= j["at"]][-1] if j["at"] >= first else "before rollout"
        r = rows[phase]
        r["submitted"] += 1
        v = views.get(j["job_id"])
        if v is None:
            r["unfinished"] += 1
        elif v["status"] == "completed":
            r["completed"] += 1
            r["legacy" if v["worker"] == "python-legacy" else "dedup2d"] += 1
        else:
            r["failed"] += 1

    cols = ("submitted", "completed", "failed", "unfinished", "legacy", "dedup2d")
    print("  phase (jobs by submit time)   took  submitted  completed  failed  unfinished  by legacy  by dedup2d")
    for i, (name, start) in enumerate(bounds):
        took = f"{bounds[i + 1][1] - start:.0f}s" if i + 1 < len(bounds) else ""
        r = rows[name]
        print(f"  {name:<28} {took:>5}  " + "  ".join(f"{r[c]:>{w}}" for c, w in zip(cols, (9, 9, 6, 10, 9, 10))))
    total = {c: sum(r[c] for r in rows.values()) for c in cols}
    print(f"  {'total':<28} {'':>5}  " + "  ".join(f"{total[c]:>{w}}" for c, w in zip(cols, (9, 9, 6, 10, 9, 10))))
    if trans:
        print(f"  rollout: {epoch(trans[-1]['at']) - a.since:.0f}s from apply to {trans[-1]['to']} "
              "(transition times have 1 s resolution)")
    received = read_jsonl(os.path.join(a.work, "legacy-received.jsonl"))
    without = [r for r in received if not r["file_bytes_b64"]]
    print(f"  legacy workers were handed {len(received)} jobs; {len(received) - len(without)} carried file_bytes_b64, "
          f"{len(without)} did not")
    peak = rollout.get("legacy_peak")
    left = (rollout.get("status") or {}).get("legacyPayloads")
    print(f"  legacy payloads (file_bytes_b64) in Redis: peak {peak} during the rollout, {left} at the end")
    retries = sum(j.get("attempts", 1) - 1 for j in jobs)
    print(f"  uploads refused by the API: {len(refused)} (connection retries while the API restarted: {retries})")
    bad = total["failed"] + total["unfinished"] + len(refused) + len(without)
    sys.exit(1 if bad else 0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("transitions")
    t.add_argument("--kubectl", required=True)
    t.add_argument("--namespace", required=True)
    t.add_argument("--name", required=True)
    t.add_argument("--since", type=float, required=True)
    t.add_argument("--out", required=True)
    s = sub.add_parser("summary")
    s.add_argument("--work", required=True)
    s.add_argument("--transitions", required=True)
    s.add_argument("--since", type=float, required=True)
    a = ap.parse_args()
    transitions(a) if a.cmd == "transitions" else summary(a)


if __name__ == "__main__":
    main()
