"""The Python side of bench/worker-throughput.sh: the real `arq` Worker running the benchmark's job,
which reads its payload key (one GET) and sleeps SLEEP_MS (0: no sleep), as the Rust side's job does.

usage: bench_arq_worker.py REDIS_URL QUEUE PAYLOAD_PREFIX MAX_JOBS SLEEP_MS
Runs in burst mode: exits once the queue is empty.
"""
import asyncio
import sys

from arq.connections import RedisSettings
from arq.worker import Worker, func


def main() -> None:
    redis_url, queue, prefix, max_jobs, sleep_ms = sys.argv[1:6]
    pause = int(sleep_ms) / 1000

    async def dedup2d_run_job(ctx, job_id: str):
        await ctx["redis"].get(f"{prefix}{job_id}")
        if pause:
            await asyncio.sleep(pause)
        return {"status": "completed"}

    Worker(
        functions=[func(dedup2d_run_job, name="dedup2d_run_job")],
        redis_settings=RedisSettings.from_dsn(redis_url),
        queue_name=queue,
        max_jobs=int(max_jobs),
        burst=True,
        poll_delay=0.05,
        handle_signals=False,
    ).run()


if __name__ == "__main__":
    main()
