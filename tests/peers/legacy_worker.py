"""A pre-upgrade dedup2d worker: the real `arq` Worker running a handler that reads only
`file_bytes_b64`, as the Python workers before the file_ref change did.

usage: legacy_worker.py REDIS_URL QUEUE KEY_PREFIX [--max-jobs N] [--burst]
Writes the job hash/result like the Python system: result {"success": true, "sha256": ..., "size": ...}.
"""
import argparse
import asyncio
import base64
import hashlib
import json
import time

from arq.connections import RedisSettings
from arq.worker import Worker, func


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("redis_url")
    p.add_argument("queue")
    p.add_argument("prefix")
    p.add_argument("--max-jobs", type=int, default=10)
    p.add_argument("--burst", action="store_true")
    a = p.parse_args()
    prefix = a.prefix

    async def dedup2d_run_job(ctx, job_id: str):
        redis = ctx["redis"]
        job_key = f"{prefix}:job:{job_id}"
        started = time.time()
        await redis.hset(job_key, mapping={"status": "in_progress", "started_at": str(started)})
        raw = await redis.get(f"{prefix}:payload:{job_id}")
        payload = json.loads(raw) if raw else {}
        b64 = payload.get("file_bytes_b64")
        if not b64:
            err = "legacy worker: payload has no file_bytes_b64 (file_ref is not supported)"
            await redis.hset(job_key, mapping={"status": "failed", "finished_at": str(time.time()), "error": err})
            await redis.srem(f"{prefix}:active", job_id)
            raise RuntimeError(err)
        data = base64.b64decode(b64)
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
    )
    worker.run()


if __name__ == "__main__":
    main()
