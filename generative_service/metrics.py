"""Prometheus metrics. Every process pushes into Redis; the gateway's /metrics renders Redis.

How worker metrics reach /metrics (the decision):
  Workers and gateways never keep the authoritative numbers in process memory. Each call below
  (`job_submitted`, `job_finished`, `batch_ran`, `nsfw_flagged`, `webhook_delivery`) adds to
  Redis in one pipelined round trip, so /metrics on ANY gateway shows the same cluster totals
  and a restarted process loses nothing. Gauges (queue depth, workers alive, Redis up) are read
  live at scrape time. Scrape one gateway (or all: they agree); do not sum across gateways.

  Optionally, a worker started with `GENSVC_WORKER_METRICS_PORT=N` also serves its OWN
  per-process counters on :N/metrics (`serve_process_metrics`), for operators who scrape every
  worker and want per-instance rates; those series carry the same names and count only that process.

Redis keys (named in keys.py):
  P:metrics:counter:NAME   hash: label value ("" when unlabelled) -> count
  P:metrics:hist:NAME      hash: "b:I" -> observations in bucket I (not cumulative; I = len(bounds)
                           is +Inf), "sum" -> total of observed values, "count" -> observations

Series (all prefixed `gensvc_`): jobs_submitted_total{queue}, jobs_finished_total{status},
nsfw_flagged_total, webhook_deliveries_total{outcome}, queue_wait_seconds, batch_size,
denoise_step_seconds, job_latency_seconds (histograms), queue_depth{queue}, workers_alive,
queue_workers_alive{queue}, redis_up.

NOTE: the recording functions never raise: metrics must not fail a job or a request.
"""

from __future__ import annotations

import bisect
import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from redis import Redis
from redis.exceptions import RedisError

from generative_service.logs import get_logger
from generative_service.redis_client import reply_text
from generative_service.settings import Settings

log = get_logger(__name__)
# Text format 0.0.4: what every Prometheus version scrapes.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
NAMESPACE = "gensvc"


@dataclass(frozen=True)
class CounterSpec:
    name: str
    label: str | None
    help: str


@dataclass(frozen=True)
class HistogramSpec:
    name: str
    bounds: tuple[float, ...]
    help: str


COUNTERS = {
    spec.name: spec
    for spec in (
        CounterSpec("jobs_submitted", "queue", "Jobs accepted by a gateway, by queue."),
        CounterSpec(
            "jobs_finished",
            "status",
            "Jobs that reached a terminal status (succeeded, failed, canceled).",
        ),
        CounterSpec("nsfw_flagged", None, "Images the NSFW filter flagged."),
        CounterSpec(
            "webhook_deliveries",
            "outcome",
            "Webhook delivery attempts by outcome (delivered, retry, failed, gone, refused).",
        ),
    )
}
HISTOGRAMS = {
    spec.name: spec
    for spec in (
        HistogramSpec(
            "queue_wait_seconds",
            (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
            "Time a job waited in its queue before a worker started it.",
        ),
        HistogramSpec("batch_size", (1, 2, 3, 4, 6, 8, 12, 16), "Images per pipeline call."),
        HistogramSpec(
            "denoise_step_seconds",
            (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            "Seconds per denoising step of a batch.",
        ),
        HistogramSpec(
            "job_latency_seconds",
            (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800),
            "Submit-to-terminal time of a job.",
        ),
    )
}


# --- per-process mirror (only served when WORKER_METRICS_PORT > 0) -----------------------------
PROCESS_REGISTRY = CollectorRegistry(auto_describe=True)
_local_counters = {
    spec.name: Counter(
        f"{NAMESPACE}_{spec.name}",
        spec.help,
        [spec.label] if spec.label else [],
        registry=PROCESS_REGISTRY,
    )
    for spec in COUNTERS.values()
}
_local_histograms = {
    spec.name: Histogram(
        f"{NAMESPACE}_{spec.name}", spec.help, buckets=spec.bounds, registry=PROCESS_REGISTRY
    )
    for spec in HISTOGRAMS.values()
}
_server_lock = threading.Lock()
_server_started = False


# --- recording ------------------------------------------------------------------------------------
def _inc(pipe, settings: Settings, name: str, label_value: str = "", amount: float = 1) -> None:
    pipe.hincrbyfloat(settings.keys.counter(name), label_value, amount)
    counter = _local_counters[name]
    (counter.labels(label_value) if COUNTERS[name].label else counter).inc(amount)


def _observe(pipe, settings: Settings, name: str, value: float) -> None:
    spec = HISTOGRAMS[name]
    key = settings.keys.histogram(name)
    pipe.hincrby(key, f"b:{bisect.bisect_left(spec.bounds, value)}", 1)
    pipe.hincrbyfloat(key, "sum", value)
    pipe.hincrby(key, "count", 1)
    _local_histograms[name].observe(value)


def _record(redis: Redis, what: str, fill) -> None:
    """Run `fill(pipe)` and execute the pipeline; log and swallow any failure."""
    try:
        pipe = redis.pipeline(transaction=False)
        fill(pipe)
        pipe.execute()
    except Exception as exc:  # noqa: BLE001 - metrics must never fail the caller
        log.warning("metrics.record_failed", extra={"metric": what, "error": repr(exc)})


def submitted_counter_key(settings: Settings) -> str:
    """The Redis hash the submit script increments (field: the queue) for each accepted job."""
    return settings.keys.counter("jobs_submitted")


def job_submitted_here(queue: str) -> None:
    """Mirror a submit the submit script already counted in Redis into this process's registry."""
    _local_counters["jobs_submitted"].labels(queue).inc()


def job_submitted(redis: Redis, settings: Settings, queue: str) -> None:
    """A gateway accepted a new job into `queue` (not an idempotent replay)."""
    _record(redis, "jobs_submitted", lambda pipe: _inc(pipe, settings, "jobs_submitted", queue))


def job_finished(
    redis: Redis,
    settings: Settings,
    status: str,
    latency_s: float | None = None,
    queue_wait_s: float | None = None,
) -> None:
    """A job reached terminal `status`; `latency_s` is submit-to-end, `queue_wait_s` the time queued."""

    def fill(pipe) -> None:
        _inc(pipe, settings, "jobs_finished", status)
        if latency_s is not None:
            _observe(pipe, settings, "job_latency_seconds", max(0.0, latency_s))
        if queue_wait_s is not None:
            _observe(pipe, settings, "queue_wait_seconds", max(0.0, queue_wait_s))

    _record(redis, "jobs_finished", fill)


def batch_ran(
    redis: Redis, settings: Settings, size: int, step_seconds: float | Iterable[float] | None = None
) -> None:
    """A pipeline call ran `size` images; `step_seconds` is each step's duration (or their mean)."""
    steps = (
        []
        if step_seconds is None
        else [step_seconds]
        if isinstance(step_seconds, int | float)
        else list(step_seconds)
    )

    def fill(pipe) -> None:
        _observe(pipe, settings, "batch_size", size)
        for seconds in steps:
            _observe(pipe, settings, "denoise_step_seconds", max(0.0, float(seconds)))

    _record(redis, "batch_ran", fill)


def nsfw_flagged(redis: Redis, settings: Settings, n: int = 1) -> None:
    """`n` images were flagged by the NSFW filter (call with n=0 is a no-op)."""
    if n > 0:
        _record(redis, "nsfw_flagged", lambda pipe: _inc(pipe, settings, "nsfw_flagged", "", n))


def webhook_delivery(redis: Redis, settings: Settings, outcome: str) -> None:
    """One webhook delivery attempt ended with `outcome` (delivered, retry, failed, gone, refused)."""
    _record(
        redis,
        "webhook_deliveries",
        lambda pipe: _inc(pipe, settings, "webhook_deliveries", outcome),
    )


# --- rendering ------------------------------------------------------------------------------------
def render(redis: Redis, settings: Settings) -> bytes:
    """The Prometheus text exposition of the whole service (serve with `CONTENT_TYPE`).

    Blocking (sync Redis): call it from a sync route, which FastAPI runs in a thread pool.
    With Redis down it still answers, with `gensvc_redis_up 0` and no other series.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_RedisCollector(redis, settings))
    return generate_latest(registry)


class _RedisCollector:
    """Reads the Redis-backed totals and the live gauges at scrape time."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings

    def collect(self):
        try:
            families = [*self._counters(), *self._histograms(), *self._gauges()]
        except RedisError as exc:
            log.warning("metrics.redis_unavailable", extra={"error": repr(exc)})
            yield GaugeMetricFamily(
                f"{NAMESPACE}_redis_up", "1 when Redis answered this scrape.", value=0
            )
            return
        yield GaugeMetricFamily(
            f"{NAMESPACE}_redis_up", "1 when Redis answered this scrape.", value=1
        )
        yield from families

    def _counters(self) -> list:
        out = []
        for spec in COUNTERS.values():
            values = self.redis.hgetall(self.settings.keys.counter(spec.name))
            family = CounterMetricFamily(
                f"{NAMESPACE}_{spec.name}", spec.help, labels=[spec.label] if spec.label else None
            )
            if spec.label:
                for label, value in sorted((reply_text(k), float(v)) for k, v in values.items()):
                    family.add_metric([label], value)
            else:
                family.add_metric([], float(values.get(b"", values.get("", 0))))
            out.append(family)
        return out

    def _histograms(self) -> list:
        out = []
        for spec in HISTOGRAMS.values():
            raw = {
                reply_text(k): float(v)
                for k, v in self.redis.hgetall(self.settings.keys.histogram(spec.name)).items()
            }
            cumulative, buckets = 0.0, []
            for index, bound in enumerate((*spec.bounds, float("inf"))):
                cumulative += raw.get(f"b:{index}", 0.0)
                buckets.append(("+Inf" if bound == float("inf") else _le(bound), cumulative))
            family = HistogramMetricFamily(f"{NAMESPACE}_{spec.name}", spec.help)
            family.add_metric([], buckets, sum_value=raw.get("sum", 0.0))
            out.append(family)
        return out

    def _gauges(self) -> list:
        depth = GaugeMetricFamily(
            f"{NAMESPACE}_queue_depth", "Jobs waiting in each queue now.", labels=["queue"]
        )
        for queue, count in sorted(queue_depths(self.redis, self.settings).items()):
            depth.add_metric([queue], count)
        workers = live_worker_records(self.redis, self.settings)
        alive = GaugeMetricFamily(
            f"{NAMESPACE}_workers_alive", "GPU workers with a fresh heartbeat.", value=len(workers)
        )
        per_queue = GaugeMetricFamily(
            f"{NAMESPACE}_queue_workers_alive",
            "Live GPU workers serving each queue.",
            labels=["queue"],
        )
        counts: dict[str, int] = {}
        keys = self.settings.keys
        for info in workers.values():
            for queue in info.get("queues") or []:
                queue = keys.logical_queue(str(queue)) or str(queue)  # whichever a worker wrote
                counts[queue] = counts.get(queue, 0) + 1
        for queue, count in sorted(counts.items()):
            per_queue.add_metric([queue], count)
        return [depth, alive, per_queue]


def queue_depths(redis: Redis, settings: Settings) -> dict[str, int]:
    """Waiting jobs per logical queue: the configured ones plus every RQ queue under our prefix."""
    from rq import Queue

    keys = settings.keys
    lists = {keys.rq_queue_list(name): name for name in {*settings.routed_queues, *settings.queues}}
    for key in redis.smembers(Queue.redis_queues_keys):  # also every API key's queue (fair share)
        name = keys.logical_queue(reply_text(key))
        if name is not None:
            lists[reply_text(key)] = name
    depths: dict[str, int] = dict.fromkeys(lists.values(), 0)
    for key, name in lists.items():
        depths[name] += redis.llen(key)
    return depths


def live_worker_records(redis: Redis, settings: Settings) -> dict[str, dict]:
    """Worker id -> its liveness record, for every `P:worker:{id}` key still alive (TTL-bound)."""
    keys = list(redis.scan_iter(match=settings.keys.worker_pattern, count=500))
    values = redis.mget(keys) if keys else []
    out: dict[str, dict] = {}
    for key, value in zip(keys, values, strict=True):
        if value is None:
            continue  # expired between SCAN and MGET
        try:
            info = json.loads(value)
        except (ValueError, TypeError):
            info = {}
        out[settings.keys.worker_id(reply_text(key))] = info if isinstance(info, dict) else {}
    return out


def serve_process_metrics(settings: Settings) -> bool:
    """Serve this process's own counters on WORKER_METRICS_PORT (once). True if serving."""
    global _server_started
    if settings.worker_metrics_port <= 0:
        return False
    from prometheus_client import start_http_server

    with _server_lock:
        if not _server_started:
            try:
                start_http_server(settings.worker_metrics_port, registry=PROCESS_REGISTRY)
            except OSError as exc:  # port taken: the worker still runs, its numbers reach Redis
                log.warning(
                    "metrics.port_unavailable",
                    extra={"port": settings.worker_metrics_port, "error": repr(exc)},
                )
                return False
            _server_started = True
            log.info("metrics.serving", extra={"port": settings.worker_metrics_port})
    return True


def _le(bound: float) -> str:
    return repr(float(bound))
