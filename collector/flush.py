"""Moving spooled events to storage: on a timer, when the active segment reaches a size, and on shutdown.

Each sealed segment becomes one gzip'd JSON-lines object per (session, node) found in it, at
`layout.event_batch_key(ref, node, writer, seq, at_ms)` with writer, seq and at_ms taken from the
segment's name. The routing comes from each event's own sessionName and nodeId (recorded in the spool
record); the flusher keeps no notion of a current session or node, and an identity change never triggers
a flush. A segment is deleted only after every one of its objects is in storage; until then it is retried
with exponential backoff and stays on disk, where a restarted collector finds it.

Dedup: uploading a segment again writes the same keys with the same bytes, so retries and restarts do not
duplicate objects. An event that Ray itself sent twice (its agent retries a POST whose answer it missed)
is stored twice; the server drops repeats by eventId when it builds a session's snapshot.
"""

from __future__ import annotations

import asyncio
import logging
import random
import zlib
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from rayhistory import layout
from rayhistory.layout import SessionRef
from rayhistory.store import Store

from .metrics import CollectorMetrics
from .spool import SegmentName, Spool

log = logging.getLogger(__name__)

GZIP_LEVEL = 3  # as fast as level 1 on Ray's JSON, a little smaller


def batch_body(payloads: list[bytes | memoryview]) -> bytes:
    """One stored batch: the events' JSON lines, gzip'd. Streamed (no joined copy of the lines), and the gzip
    header has no timestamp, so uploading the same segment again writes the same bytes."""
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)  # wbits 31: gzip framing, mtime 0
    out = [compressor.compress(p) for p in payloads]
    out.append(compressor.flush())
    return b"".join(out)


def batch_objects(name: SegmentName, groups: dict[tuple[str, str], list[bytes]], namespace: str,
                  cluster: str) -> dict[tuple[SessionRef, str], str]:
    """(session ref, node id) -> the key of its batch from this segment (pure)."""
    return {
        (ref, node): layout.event_batch_key(ref, node, name.writer, name.seq, name.at_ms)
        for (session, node) in groups
        for ref in [SessionRef(namespace, cluster, session)]
    }


@dataclass
class Backoff:
    """Exponential backoff with jitter, reset by a success."""

    initial: float = 0.5
    maximum: float = 30.0
    current: float = field(default=0.0)

    def next_delay(self) -> float:
        self.current = self.initial if not self.current else min(self.current * 2, self.maximum)
        return self.current * random.uniform(0.8, 1.2)

    def reset(self) -> None:
        self.current = 0.0


# Called with the (session, node) pairs of a segment before its batches are written: registers them in the
# session index. Raises on a storage error, which retries the segment.
SeenHook = Callable[[set[tuple[SessionRef, str]]], Awaitable[None]]


class Flusher:
    def __init__(self, spool: Spool, store: Store, namespace: str, cluster: str, metrics: CollectorMetrics,
                 on_seen: SeenHook, interval: float, flush_bytes: int):
        self.spool = spool
        self.store = store
        self.namespace = namespace
        self.cluster = cluster
        self.metrics = metrics
        self.on_seen = on_seen
        self.interval = interval
        self.flush_bytes = flush_bytes
        self.backoff = Backoff()
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def after_append(self) -> None:
        """Called after each append: a full active segment is sealed at once (also while storage is down, so
        no segment grows past flush_bytes and a flush never reads more than that) and flushed now."""
        if self.spool.active_bytes >= self.flush_bytes:
            await self.spool.seal()
            self._wake.set()

    async def flush_segment(self, name: SegmentName) -> int:
        """Upload one sealed segment and delete it; returns the number of events it held."""
        decoded = await asyncio.to_thread(self.spool.read, name)
        keys = batch_objects(name, decoded.groups, self.namespace, self.cluster)
        await self.on_seen(set(keys))

        async def put(ref_node: tuple[SessionRef, str], key: str) -> None:
            ref, node = ref_node
            body = await asyncio.to_thread(batch_body, decoded.groups[(ref.session, node)])
            await self.store.put(key, body)

        await asyncio.gather(*(put(rn, key) for rn, key in keys.items()))
        self.spool.delete(name)
        self.metrics.spool_damaged.inc(len(decoded.damaged))
        self.metrics.last_flush.set_to_current_time()
        self.metrics.events_flushed.inc(decoded.events)
        self.metrics.batches_flushed.inc(len(keys))
        self.metrics.spool_bytes.set(self.spool.bytes)
        return decoded.events

    async def flush_all(self, deadline: float | None = None, stopping: asyncio.Event | None = None) -> bool:
        """Seal the active segment and upload every sealed one, retrying storage errors with backoff
        until `deadline` (loop time) or until `stopping` is set. Returns whether the spool is empty."""
        await self.spool.seal()
        loop = asyncio.get_running_loop()
        while names := self.spool.sealed():  # segments sealed while this runs are taken too
            name = names[0]
            while True:
                try:
                    await self.flush_segment(name)
                    self.backoff.reset()
                    break
                except Exception as exc:  # noqa: BLE001 - any storage error: keep the segment, retry
                    delay = self.backoff.next_delay()
                    self.metrics.upload_errors.labels("events").inc()
                    log.warning("event upload failed; segment stays in the spool",
                                extra={"segment": name.filename, "error": repr(exc), "retry_in_s": round(delay, 2)})
                    if deadline is not None and loop.time() + delay > deadline:
                        return False
                    self.metrics.upload_retries.labels("events").inc()
                    if stopping is None:
                        await asyncio.sleep(delay)
                    elif await _wait_set(stopping, delay):
                        return False
        return not self.spool.sealed() and not self.spool.active_bytes

    async def run(self, stopping: asyncio.Event) -> None:
        """Flush every `interval` seconds, or sooner when the active segment is full, until `stopping`."""
        while not stopping.is_set():
            await _wait_set(self._wake, self.interval)
            self._wake.clear()
            if stopping.is_set():
                return
            await self.flush_all(stopping=stopping)


async def _wait_set(event: asyncio.Event, timeout: float) -> bool:
    """Wait up to `timeout` seconds for `event`; True if it was set."""
    try:
        await asyncio.wait_for(event.wait(), timeout)
        return True
    except asyncio.TimeoutError:
        return False
