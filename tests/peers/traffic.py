"""Live traffic for a dedup2d API: uploads through `POST /api/v1/dedup/2d/search?async=true`
(multipart field `file`), at a steady rate, bounded in count and time, loopback only.

usage: traffic.py --url-file FILE --api-key KEY --out JOBS.jsonl [--results RESULTS.jsonl]
                  [--rate PER_S] [--max-jobs N] [--max-seconds S] [--stop-file FILE] [--drain-seconds S]

The API's base URL is read from --url-file before every request (a supervisor rewrites it when the
API restarts, as a Service would move to the new pods). A connection error (the API between two
processes) is retried up to 20 times, 0.1 s apart; an HTTP error is not. Every submission is one JSON
line in --out: {"seq", "at", "job_id", "attempts"} or, when refused, {"seq", "at", "error", "status"}.
With --results it also polls every accepted job (`GET /api/v1/dedup/2d/jobs/{id}`, as a client
would) and writes one line per finished job: {"seq", "job_id", "status", "error", "worker"}, where
worker is the result's "worker" field ("python-legacy" for the legacy peer) or "dedup2d". Job records
live only DEDUP2D_ASYNC_TTL_SECONDS, so outcomes are taken while they exist, not afterwards.
Stops submitting at --max-jobs, --max-seconds or when --stop-file exists, waits up to
--drain-seconds for the polled jobs to finish, then prints {"submitted", "refused",
"connection_retries", "completed", "failed", "unfinished"} as JSON on stdout.
"""
import argparse
import json
import os
import random
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

BOUNDARY = "dedup2d-traffic-boundary"


def multipart(name, data):
    head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            "Content-Type: application/dxf\r\n\r\n").encode()
    return head + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def base_url(path):
    with open(path) as f:
        url = f.read().strip()
    host = urllib.parse.urlparse(url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"traffic.py: refusing a non-loopback API URL {url!r}")
    return url


def submit(url_file, key, name, data):
    body = multipart(name, data)
    for attempt in range(1, 21):
        req = urllib.request.Request(f"{base_url(url_file)}/api/v1/dedup/2d/search?async=true", data=body, method="POST",
                                     headers={"X-API-Key": key, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return {"job_id": json.loads(r.read())["job_id"], "attempts": attempt}
        except urllib.error.HTTPError as e:
            return {"error": e.read().decode(errors="replace")[:300], "status": e.code, "attempts": attempt}
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.1)
    return {"error": "the API did not accept a connection (20 attempts)", "status": None, "attempts": 20}


class Poller(threading.Thread):
    """Polls accepted jobs until they finish; records each outcome once."""

    def __init__(self, url_file, key, path):
        super().__init__(daemon=True)
        self.url_file, self.key, self.path = url_file, key, path
        self.pending, self.lock, self.counts = {}, threading.Lock(), {"completed": 0, "failed": 0, "canceled": 0}

    def add(self, seq, job_id):
        with self.lock:
            self.pending[job_id] = seq

    def left(self):
        with self.lock:
            return len(self.pending)

    def run(self):
        while True:
            with self.lock:
                todo = list(self.pending.items())
            for job_id, seq in todo:
                try:
                    req = urllib.request.Request(f"{base_url(self.url_file)}/api/v1/dedup/2d/jobs/{job_id}",
                                                 headers={"X-API-Key": self.key})
                    with urllib.request.urlopen(req, timeout=10) as r:
                        v = json.loads(r.read())
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    continue  # the API restarting, or a 404 before the job is visible: next round
                if v["status"] not in self.counts:
                    continue
                worker = (v.get("result") or {}).get("worker") or "dedup2d"
                with self.lock:
                    del self.pending[job_id]
                    self.counts[v["status"]] += 1
                    with open(self.path, "a") as f:
                        f.write(json.dumps({"seq": seq, "job_id": job_id, "status": v["status"], "error": v.get("error"),
                                            "worker": worker}) + "\n")
            time.sleep(0.3)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url-file", required=True)
    ap.add_argument("--api-key", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--rate", type=float, default=5.0)
    ap.add_argument("--max-jobs", type=int, default=2000)
    ap.add_argument("--max-seconds", type=float, default=600)
    ap.add_argument("--stop-file")
    ap.add_argument("--results")
    ap.add_argument("--drain-seconds", type=float, default=60)
    a = ap.parse_args()
    poller = Poller(a.url_file, a.api_key, a.results) if a.results else None
    if poller:
        poller.start()
    rng = random.Random(2026)
    start = time.time()
    submitted = refused = retries = 0
    with open(a.out, "a") as out:
        for seq in range(a.max_jobs):
            if time.time() - start > a.max_seconds or (a.stop_file and os.path.exists(a.stop_file)):
                break
            data = rng.randbytes(rng.randint(256, 4096))
            at = time.time()
            r = submit(a.url_file, a.api_key, f"part-{seq:05d}.dxf", data)
            retries += r["attempts"] - 1
            if "job_id" in r:
                submitted += 1
                if poller:
                    poller.add(seq, r["job_id"])
            else:
                refused += 1
                print(f"traffic.py: upload {seq} refused: {r['status']} {r['error']}", file=sys.stderr, flush=True)
            out.write(json.dumps({"seq": seq, "at": at, **r}) + "\n")
            out.flush()
            time.sleep(max(0.0, start + (seq + 1) / a.rate - time.time()))
    summary = {"submitted": submitted, "refused": refused, "connection_retries": retries}
    if poller:
        deadline = time.time() + a.drain_seconds
        while poller.left() and time.time() < deadline:
            time.sleep(0.2)
        with poller.lock:
            summary.update(poller.counts, unfinished=len(poller.pending))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
