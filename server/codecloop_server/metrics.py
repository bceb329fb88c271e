"""Prometheus metrics on an HTTP port (``codecloop serve --metrics-port``).

Request counts by method and status code, request latency and task queue-wait histograms are
recorded as they happen; engine counters (clips encoded, cache hits/misses) and gauges (queue
depth per client, tasks in flight, workers) are read from the engine's statistics
(``Engine.stats``, jobs.EngineStats) at scrape time.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from codecloop_server.engine import Engine

_LATENCY_BUCKETS = (0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 100, 300, 1000)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class _EngineCollector:
    """Reads the engine's statistics at each scrape."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        stats = self.engine.stats()
        clips = CounterMetricFamily("codecloop_clips_encoded", "Clips through libx264 + h264 decode", labels=["kind"])
        for kind in ("clean", "poisoned", "transcode"):
            clips.add_metric([kind], stats.encodes.get(kind, 0))
        yield clips
        hits = CounterMetricFamily("codecloop_cache_hits", "Cache hits", labels=["cache"])
        misses = CounterMetricFamily("codecloop_cache_misses", "Cache misses", labels=["cache"])
        hits.add_metric(["clean_cache"], stats.clean_cache_hits)
        misses.add_metric(["clean_cache"], stats.clean_cache_misses)
        hits.add_metric(["result_cache"], stats.result_cache_hits)
        misses.add_metric(["result_cache"], stats.result_cache_misses)
        yield hits
        yield misses
        depth = GaugeMetricFamily("codecloop_queue_depth", "Queued clip tasks per client", labels=["client"])
        for client, n in stats.queued_by_client.items():
            depth.add_metric([client], n)
        yield depth
        yield GaugeMetricFamily("codecloop_tasks_in_flight", "Clip tasks running in workers", value=stats.tasks_in_flight)
        yield GaugeMetricFamily("codecloop_workers", "Codec worker processes", value=stats.workers)
        yield GaugeMetricFamily(
            "codecloop_workers_responsive", "Codec workers alive, not stopped, no task past the timeout", value=stats.workers_responsive
        )
        yield CounterMetricFamily("codecloop_worker_restarts", "Worker pools replaced after a worker died", value=stats.worker_restarts)
        yield GaugeMetricFamily("codecloop_clean_cache_bytes", "Bytes held by the clean cache", value=stats.clean_cache_bytes)


class Metrics:
    """The server's Prometheus registry: RPC, queue-wait and detector-batch histograms, the engine's statistics."""

    def __init__(self, engine: Engine) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("codecloop_requests", "RPCs by method and status code", ["method", "code"], registry=self.registry)
        self.latency = Histogram(
            "codecloop_request_seconds", "RPC latency", ["method"], buckets=_LATENCY_BUCKETS, registry=self.registry
        )
        self.queue_wait = Histogram(
            "codecloop_queue_wait_seconds", "Clip task wait from queueing to a worker", buckets=_LATENCY_BUCKETS, registry=self.registry
        )
        self.detector_batch = Histogram(
            "codecloop_detector_batch_size", "Clips per detector forward pass", buckets=_BATCH_BUCKETS, registry=self.registry
        )
        self.registry.register(_EngineCollector(engine))
        engine.scheduler.on_dispatch = self.queue_wait.observe

    def observe(self, method: str, code: str, seconds: float) -> None:
        self.requests.labels(method, code).inc()
        self.latency.labels(method).observe(seconds)

    def serve(self, host: str, port: int) -> int:
        """Start the HTTP endpoint (``/metrics``); returns the bound port (``port`` 0 picks one)."""
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        return server.server_port
