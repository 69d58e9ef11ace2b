"""Put N real queued jobs in the default queue quickly (bench_submit.py's queue-depth part).

Each job goes through the gateway's own submit script (`JobStore.prepare` + the script), pipelined
1000 at a time, so records, RQ jobs, counts and positions are exactly what submits would leave.

    GENSVC_REDIS_URL=... GENSVC_KEY_PREFIX=... python benchmarks/_fill_queue.py 100000
"""

from __future__ import annotations

import sys

from redis import Redis

from generative_service.jobs import JobStore
from generative_service.schemas import GenerationRequest
from generative_service.settings import get_settings


def main() -> int:
    count = int(sys.argv[1])
    settings = get_settings()
    redis = Redis.from_url(settings.redis_url)
    store = JobStore(redis, settings)
    request = GenerationRequest(prompt="a queued filler", width=64, height=64, steps=4)
    script = store.queue._submit
    for start in range(0, count, 1000):
        pipe = redis.pipeline(transaction=False)
        for _ in range(min(1000, count - start)):
            submission = store.prepare(request)
            script(keys=submission.keys, args=submission.args, client=pipe)
        pipe.execute()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
