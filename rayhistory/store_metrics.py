"""A Store's stats() as Prometheus metrics, read at every scrape: one definition for every part."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .store import StoreStats


class StoreStatsCollector:
    """A stalled backend shows as calls in flight that keep getting older, then as timeouts."""

    def __init__(self, stats: Callable[[], StoreStats]):
        self._stats = stats

    def describe(self):
        return []  # read at scrape time only (nothing to check at registration)

    def collect(self):
        s = self._stats()
        yield GaugeMetricFamily("rayhistory_storage_calls_in_flight",
                                "Storage calls running (timed-out calls whose backend call still runs included)",
                                value=s.in_flight)
        yield GaugeMetricFamily("rayhistory_storage_oldest_call_age_seconds",
                                "Age of the oldest storage call in flight (0 when none)", value=s.oldest_in_flight_s)
        yield GaugeMetricFamily("rayhistory_storage_timeout_seconds", "The overall timeout of one storage call",
                                value=s.timeout_s)
        yield CounterMetricFamily("rayhistory_storage_calls", "Storage calls started", value=s.calls)
        yield CounterMetricFamily("rayhistory_storage_timeouts", "Storage calls that timed out", value=s.timeouts)
        yield CounterMetricFamily("rayhistory_storage_errors",
                                  "Storage calls that failed otherwise (a missing object is not a failure)",
                                  value=s.errors)
