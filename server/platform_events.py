"""api/v0/platform_events of a session served from storage: the Kubernetes Events the operator kept.

Read apart from the snapshot: the operator keeps writing a session's events after its collectors stopped
(the pods' deletion, a late eviction), and a dead session's snapshot is built once. A session's batches
are listed at most every `ttl_s` seconds; what is kept is the rendered answer only (one JSON body per
session, never the stored versions it folds), for the last `max_sessions` sessions asked, under the
listing it was made from: a new or removed batch makes a new answer. The batches are decoded, folded and
rendered off the event loop. No batch at all answers 404, as Ray does when platform events are off: the UI
then hides its Platform Events page.
"""

from __future__ import annotations

import asyncio
import logging
import time

import cachetools
import msgspec

from rayhistory import layout
from rayhistory.layout import SessionRef
from rayhistory.platform_events import PlatformEventRecord, decode_batch, platform_events_answer
from rayhistory.store import Store

log = logging.getLogger(__name__)

MAX_BATCH_BYTES = 16 << 20  # inflated; the operator writes at most platform_events_max_bytes per session

Listing = tuple[tuple[str, int], ...]  # (key, size) of each batch, sorted: batches are written once per key

_json = msgspec.json.Encoder()


def rendered_answer(batches: dict[str, bytes]) -> bytes:
    """The JSON answer over every stored batch (pure; a corrupt batch hides only itself)."""
    records: list[PlatformEventRecord] = []
    for key, data in batches.items():
        try:
            records += decode_batch(data, MAX_BATCH_BYTES)
        except (ValueError, OSError) as exc:
            log.warning("unreadable kubernetes events", extra={"key": key, "error": f"{type(exc).__name__}: {exc}"})
    return _json.encode(platform_events_answer(records))


class PlatformEventsReader:
    def __init__(self, store: Store, ttl_s: float, max_sessions: int = 256):
        self.store = store
        self.ttl_s = ttl_s
        self._listings: cachetools.LRUCache[SessionRef, tuple[float, Listing]] = cachetools.LRUCache(max_sessions)
        self._answers: cachetools.LRUCache[tuple[SessionRef, Listing], bytes] = cachetools.LRUCache(max_sessions)

    async def answer(self, ref: SessionRef) -> bytes | None:
        """The session's api/v0/platform_events body; None when nothing is kept for it."""
        listing = await self._listing(ref)
        if not listing:
            return None
        key = (ref, listing)
        found = self._answers.get(key)
        if found is not None:
            return found
        read = await self.store.get_many([k for k, _ in listing])
        failed = {k: exc for k, exc in read.items() if isinstance(exc, Exception)}
        for k, exc in failed.items():
            log.warning("kubernetes events not read", extra={"key": k, "error": f"{type(exc).__name__}: {exc}"})
        body = await asyncio.to_thread(rendered_answer, {k: v for k, v in read.items() if k not in failed})
        if not failed:  # a partial answer is not kept: the batches not read are read again next time
            self._answers[key] = body
        return body

    async def _listing(self, ref: SessionRef) -> Listing:
        known = self._listings.get(ref)
        if known is not None and time.monotonic() - known[0] < self.ttl_s:
            return known[1]
        listing = tuple(sorted((i.key, i.size) for i in await self.store.list(layout.platform_events_prefix(ref))
                               if layout.is_platform_events_batch_key(ref, i.key)))
        self._listings[ref] = (time.monotonic(), listing)
        return listing
