"""Python `arq` client side for interop tests.

usage:
  arq_client.py enqueue REDIS_URL QUEUE EXPIRES_S JOB_ID...   enqueue dedup2d_run_job(job_id) like the Python API
  arq_client.py result REDIS_URL QUEUE JOB_ID                 print Job(...).result() as JSON, or {"raised": ...}
"""
import asyncio
import json
import sys

from arq.connections import RedisSettings, create_pool
from arq.jobs import Job


async def enqueue(url, queue, expires, ids):
    pool = await create_pool(RedisSettings.from_dsn(url))
    out = []
    for job_id in ids:
        job = await pool.enqueue_job("dedup2d_run_job", job_id, _job_id=job_id, _queue_name=queue, _expires=int(expires))
        out.append({"job_id": job_id, "enqueued": job is not None})
    print(json.dumps(out))
    await pool.aclose()


async def result(url, queue, job_id):
    pool = await create_pool(RedisSettings.from_dsn(url))
    job = Job(job_id, pool, _queue_name=queue)
    try:
        value = await job.result(timeout=10)
        print(json.dumps({"value": value, "status": str((await job.status()).value)}))
    except Exception as e:  # the failure a job ended with is re-raised by arq
        print(json.dumps({"raised": type(e).__name__, "message": str(e)}))
    await pool.aclose()


def main():
    cmd, url, queue = sys.argv[1], sys.argv[2], sys.argv[3]
    if cmd == "enqueue":
        asyncio.run(enqueue(url, queue, sys.argv[4], sys.argv[5:]))
    elif cmd == "result":
        asyncio.run(result(url, queue, sys.argv[4]))
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
