"""Prometheus metrics of one server, in a registry of its own (several apps can live in one process)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST

from rayhistory.store import StoreStats
from rayhistory.store_metrics import StoreStatsCollector

_LOAD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.loads = Counter(
            "rayhistory_session_loads", "Session loads by where they started from and how they ended",
            ["source", "result"], registry=r,
        )
        self.load_seconds = Histogram(
            "rayhistory_session_load_seconds", "Wall time of one session load", ["source"],
            buckets=_LOAD_BUCKETS, registry=r,
        )
        self.loads_backed_off = Counter(
            "rayhistory_session_loads_backed_off", "Requests refused at once because the session's last load "
            "failed and its backoff runs", registry=r,
        )
        self.events_parsed = Counter("rayhistory_events_parsed", "Raw events parsed by loads", registry=r)
        self.snapshots_written = Counter("rayhistory_snapshots_written", "Compacted snapshots written", registry=r)
        self.cache_hits = Counter("rayhistory_cache_hits", "Session lookups answered from the LRU", registry=r)
        self.cache_misses = Counter("rayhistory_cache_misses", "Session lookups that needed a load", registry=r)
        self.cache_evictions = Counter("rayhistory_cache_evictions", "Snapshots evicted from the LRU", registry=r)
        self.cache_bytes = Gauge("rayhistory_cache_bytes", "Measured bytes of the cached snapshots", registry=r)
        self.cache_sessions = Gauge("rayhistory_cache_sessions", "Snapshots in the LRU", registry=r)
        self.task_spills = Counter(
            "rayhistory_task_spills", "Sessions whose tasks were written to local disk (too large to keep in "
            "memory), by result", ["result"], registry=r,
        )
        self.disk_task_chunk_reads = Counter(
            "rayhistory_disk_task_chunk_reads", "Chunks of tasks read back from local disk (misses of their LRU)",
            registry=r,
        )
        self.requests = Counter(
            "rayhistory_http_requests", "HTTP requests by route and status", ["route", "status"], registry=r,
        )
        self.request_seconds = Histogram(
            "rayhistory_http_request_seconds", "HTTP request latency by route", ["route"],
            buckets=_REQUEST_BUCKETS, registry=r,
        )

        self.auth_reviews = Counter(
            "rayhistory_auth_reviews", "TokenReviews and SubjectAccessReviews made (cache hits excluded), by result",
            ["review", "result"], registry=r,
        )
        self.auth_refusals = Counter(
            "rayhistory_auth_refusals", "Requests refused by --auth kubernetes, by status (401, 403, 503)", ["status"],
            registry=r,
        )

    def watch_store(self, stats: Callable[[], StoreStats]) -> None:
        """Export a Store's stats() (read at every scrape): a stalled backend shows as calls in flight that
        keep getting older, then as timeouts."""
        self.registry.register(StoreStatsCollector(stats))

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
