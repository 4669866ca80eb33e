"""A pre-upgrade dedup2d worker: the real `arq` Worker running a handler that reads only
`file_bytes_b64`, as the Python workers before the file_ref change did.

usage: legacy_worker.py REDIS_URL QUEUE KEY_PREFIX [--max-jobs N] [--burst]
                        [--received-log FILE] [--completion-wait S] [--vision-url URL]
Writes the job hash/result like the Python system: result {"success": true, "sha256": ..., "size": ...};
with --vision-url, the result is what the Python worker's dedupcad-vision pipeline makes of the job
(legacy_vision.py), and a failure of that pipeline fails the job with its message.
--received-log appends one JSON line per job it was handed: {"job_id", "keys" (the payload's keys),
"file_bytes_b64" (whether it carried a non-empty one), "pid", "at"}, so a test can tell which
payloads the legacy fleet ever saw. --completion-wait lets running jobs finish for S seconds after
SIGTERM (arq's job_completion_wait) instead of cancelling them back to the queue.
"""
import argparse
import asyncio
import base64
import hashlib
import json
import os
import time

import legacy_vision
from arq.connections import RedisSettings
from arq.worker import Worker, func


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("redis_url")
    p.add_argument("queue")
    p.add_argument("prefix")
    p.add_argument("--max-jobs", type=int, default=10)
    p.add_argument("--burst", action="store_true")
    p.add_argument("--received-log")
    p.add_argument("--completion-wait", type=int, default=0)
    p.add_argument("--vision-url")
    a = p.parse_args()
    prefix = a.prefix

    def record(job_id: str, payload: dict) -> None:
        if not a.received_log:
            return
        line = json.dumps({"job_id": job_id, "keys": sorted(payload), "file_bytes_b64": bool(payload.get("file_bytes_b64")),
                           "pid": os.getpid(), "at": time.time()})
        with open(a.received_log, "a") as f:
            f.write(line + "\n")

    async def dedup2d_run_job(ctx, job_id: str):
        redis = ctx["redis"]
        job_key = f"{prefix}:job:{job_id}"
        started = time.time()
        await redis.hset(job_key, mapping={"status": "in_progress", "started_at": str(started)})
        raw = await redis.get(f"{prefix}:payload:{job_id}")
        payload = json.loads(raw) if raw else {}
        record(job_id, payload)
        b64 = payload.get("file_bytes_b64")
        if not b64:
            err = "legacy worker: payload has no file_bytes_b64 (file_ref is not supported)"
            await redis.hset(job_key, mapping={"status": "failed", "finished_at": str(time.time()), "error": err})
            await redis.srem(f"{prefix}:active", job_id)
            raise RuntimeError(err)
        data = base64.b64decode(b64)
        if a.vision_url:
            try:
                result = await asyncio.to_thread(legacy_vision.run, a.vision_url, payload, data)
            except Exception as e:  # the Python worker fails the job with str(e)
                await redis.hset(job_key, mapping={"status": "failed", "finished_at": str(time.time()), "error": str(e)})
                await redis.srem(f"{prefix}:active", job_id)
                return {"status": "failed"}
        else:
            result = {"success": True, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "worker": "python-legacy"}
        await redis.setex(f"{prefix}:result:{job_id}", 3600, json.dumps(result))
        await redis.hset(job_key, mapping={"status": "completed", "finished_at": str(time.time()), "error": ""})
        await redis.srem(f"{prefix}:active", job_id)
        return result

    worker = Worker(
        functions=[func(dedup2d_run_job, name="dedup2d_run_job")],
        redis_settings=RedisSettings.from_dsn(a.redis_url),
        queue_name=a.queue,
        max_jobs=a.max_jobs,
        burst=a.burst,
        poll_delay=0.05,
        handle_signals=True,
        job_completion_wait=a.completion_wait,
    )
    worker.run()


if __name__ == "__main__":
    main()
