"""The collector's Prometheus metrics, in a registry of its own (several collectors can share a process)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from rayhistory.store import StoreStats
from rayhistory.store_metrics import StoreStatsCollector


class CollectorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("rayhistory_collector_requests", "POST /v1/events answers, by HTTP status",
                                ["status"], registry=r)
        self.events_received = Counter("rayhistory_collector_events_received", "events accepted into the spool",
                                       registry=r)
        self.events_rejected = Counter("rayhistory_collector_events_rejected", "events rejected as malformed",
                                       registry=r)
        self.events_flushed = Counter("rayhistory_collector_events_flushed", "events written to storage",
                                      registry=r)
        self.batches_flushed = Counter("rayhistory_collector_batches_flushed", "event batch objects written",
                                       registry=r)
        self.spool_bytes = Gauge("rayhistory_collector_spool_bytes", "bytes in the local spool", registry=r)
        self.upload_errors = Counter("rayhistory_collector_upload_errors", "failed storage writes, by kind",
                                     ["kind"], registry=r)
        self.upload_retries = Counter("rayhistory_collector_upload_retries", "storage writes retried, by kind",
                                      ["kind"], registry=r)
        self.log_bytes_uploaded = Counter("rayhistory_collector_log_bytes_uploaded", "log bytes written to storage",
                                          registry=r)
        self.log_files_skipped = Counter("rayhistory_collector_log_files_skipped",
                                         "log files whose path cannot be a storage key", registry=r)
        self.spool_damaged = Counter("rayhistory_collector_spool_records_damaged",
                                     "damaged spool records skipped (a disk fault; logged with their offsets)",
                                     registry=r)
        self.spool_segments = Gauge("rayhistory_collector_spool_segments", "spool segments not yet in storage",
                                    registry=r)
        self.oldest_unflushed = Gauge("rayhistory_collector_oldest_unflushed_seconds",
                                      "age of the oldest spooled event not yet in storage (grows while storage "
                                      "is down or hangs)", registry=r)
        self.last_flush = Gauge("rayhistory_collector_last_flush_timestamp_seconds",
                                "when a spool segment last reached storage", registry=r)
        self.endpoint_polls = Counter("rayhistory_collector_endpoint_polls", "dashboard endpoint polls, by result",
                                      ["endpoint", "result"], registry=r)

    def watch_store(self, stats: Callable[[], StoreStats]) -> None:
        self.registry.register(StoreStatsCollector(stats))

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
