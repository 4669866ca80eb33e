"""Live traffic for a dedup2d API: uploads through `POST /api/v1/dedup/2d/search?async=true`
(multipart field `file`), at a steady rate, bounded in count and time, loopback only.

usage: traffic.py --url-file FILE --api-key KEY --out JOBS.jsonl
                  [--rate PER_S] [--max-jobs N] [--max-seconds S] [--stop-file FILE]

The API's base URL is read from --url-file before every request (a supervisor rewrites it when the
API restarts, as a Service would move to the new pods). A connection error (the API between two
processes) is retried up to 20 times, 0.1 s apart; an HTTP error is not. Every submission is one JSON
line in --out: {"seq", "at", "job_id", "attempts"} or, when refused, {"seq", "at", "error", "status"}.
Stops at --max-jobs, --max-seconds or when --stop-file exists, then prints
{"submitted": N, "refused": N, "connection_retries": N} on stdout.
"""
import argparse
import json
import os
import random
import sys
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url-file", required=True)
    ap.add_argument("--api-key", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--rate", type=float, default=5.0)
    ap.add_argument("--max-jobs", type=int, default=2000)
    ap.add_argument("--max-seconds", type=float, default=600)
    ap.add_argument("--stop-file")
    a = ap.parse_args()
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
            else:
                refused += 1
                print(f"traffic.py: upload {seq} refused: {r['status']} {r['error']}", file=sys.stderr, flush=True)
            out.write(json.dumps({"seq": seq, "at": at, **r}) + "\n")
            out.flush()
            time.sleep(max(0.0, start + (seq + 1) / a.rate - time.time()))
    print(json.dumps({"submitted": submitted, "refused": refused, "connection_retries": retries}))


if __name__ == "__main__":
    main()
