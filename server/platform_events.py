"""api/v0/platform_events of a session served from storage: the Kubernetes Events the operator kept.

Read apart from the snapshot: the operator keeps writing a session's events after its collectors stopped
(the pods' deletion, a late eviction), and a dead session's snapshot is built once. A session's batches
are listed at most every `ttl_s` seconds and only new ones are read; a few hundred sessions are kept
(their events are bounded by the operator, rayhistory/platform_events.py). No batch at all answers 404,
as Ray does when platform events are off: the UI then hides its Platform Events page.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from rayhistory import layout
from rayhistory.layout import SessionRef
from rayhistory.platform_events import PlatformEventRecord, decode_batch
from rayhistory.store import Store

log = logging.getLogger(__name__)

MAX_BATCH_BYTES = 16 << 20  # inflated; the operator writes at most platform_events_max_bytes per session


@dataclass
class SessionEvents:
    listed_at: float = 0.0
    batches: dict[str, list[PlatformEventRecord]] = field(default_factory=dict)  # key -> records ([] if bad)


class PlatformEventsReader:
    def __init__(self, store: Store, ttl_s: float, max_sessions: int = 256):
        self.store = store
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[SessionRef, SessionEvents] = OrderedDict()

    async def records(self, ref: SessionRef) -> list[PlatformEventRecord]:
        """Every record kept for the session (all versions; platform_events.merge_records folds them)."""
        known = self._sessions.get(ref)
        if known is None:
            known = self._sessions[ref] = SessionEvents()
            if len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        self._sessions.move_to_end(ref)
        if time.monotonic() - known.listed_at >= self.ttl_s or not known.listed_at:
            await self._reload(ref, known)
        return [r for records in known.batches.values() for r in records]

    async def _reload(self, ref: SessionRef, known: SessionEvents) -> None:
        listed = {i.key for i in await self.store.list(layout.platform_events_prefix(ref))
                  if layout.is_platform_events_batch_key(ref, i.key)}
        for gone in set(known.batches) - listed:  # removed by retention
            del known.batches[gone]
        new = sorted(listed - set(known.batches))
        for key, data in (await self.store.get_many(new)).items():
            if isinstance(data, Exception):  # read again on the next reload
                log.warning("kubernetes events not read", extra={"key": key, "error": f"{type(data).__name__}: {data}"})
                continue
            try:
                known.batches[key] = decode_batch(data, MAX_BATCH_BYTES)
            except (ValueError, OSError) as exc:  # a corrupt batch hides only itself
                log.warning("unreadable kubernetes events", extra={"key": key, "error": f"{type(exc).__name__}: {exc}"})
                known.batches[key] = []
        known.listed_at = time.monotonic()
