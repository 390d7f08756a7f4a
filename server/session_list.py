"""The session list behind `GET /clusters`: every session of the index, kept merged and sorted, and the
list's filters and cursor (pure functions).

The directory refreshes in the background. A refresh reads only index records it has not seen, and
re-merges only the sessions whose records changed: at 100k sessions a full merge is seconds of CPU, which
every refresh interval would otherwise spend on a list that barely moved. The first refresh starts from
the newest index digest (rayhistory.index), and a refresh that had to read many records one by one
writes a new digest, so the next replica to start does not.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import binascii
import json
import logging
import time

from aiohttp import web

from rayhistory.events import ts_ms
from rayhistory.index import SessionIndex, SessionInfo, SessionKey, merge_session
from rayhistory.layout import SessionRef

log = logging.getLogger(__name__)

# A refresh that read at least this many records one by one writes a digest: a cold start of a large
# index pays it once, the few records a day of new sessions adds never does.
DIGEST_AFTER_READS = 1000


class SessionDirectory:
    """Every session of the index, merged and sorted newest first, refreshed in the background."""

    def __init__(self, index: SessionIndex, refresh_s: float):
        self.index = index
        self.refresh_s = refresh_s
        self.sessions: list[SessionInfo] = []
        self.refreshed_at = 0.0
        self._merged: dict[SessionKey, SessionInfo] = {}
        self._lock = asyncio.Lock()

    async def refresh(self) -> list[SessionInfo]:
        async with self._lock:
            await self.index.refresh(use_digest=True)  # reads only records it has not seen
            changed = {key: self.index.records_of(key) for key in self.index.take_changed()}
            if changed or not self.refreshed_at:
                # merging and sorting 10,000s of sessions takes a while: off the event loop, shielded so
                # that a cancelled refresh never leaves a fold running beside the next one
                fold = asyncio.ensure_future(asyncio.to_thread(self._fold, changed))
                try:
                    self.sessions = await asyncio.shield(fold)
                except BaseException:
                    self.index.mark_changed(changed)  # merged again by the next refresh, not lost
                    await asyncio.wait([fold])
                    raise
            self.refreshed_at = time.monotonic()
            if self.index.read_since_digest >= DIGEST_AFTER_READS:
                await self._write_digest()
            return self.sessions

    def _fold(self, changed: dict[SessionKey, list]) -> list[SessionInfo]:
        for key, records in changed.items():
            if records:
                self._merged[key] = merge_session(records)
            else:
                self._merged.pop(key, None)
        return sorted(self._merged.values(), key=sort_key)

    async def _write_digest(self) -> None:
        try:
            await self.index.write_digest()
        except Exception as exc:  # noqa: BLE001 - a digest only saves reads; the list is right without it
            self.index.read_since_digest = 0  # not again at every refresh: after as many reads again
            log.warning("index digest not written", extra={"error": f"{type(exc).__name__}: {exc}"})

    def find(self, ref: SessionRef) -> SessionInfo | None:
        """The session as of the last refresh (None: not in the index then)."""
        return self._merged.get((ref.namespace, ref.cluster, ref.session))

    async def current(self) -> list[SessionInfo]:
        """The list as of the last refresh; refreshed here only before the first background refresh, or
        when the background refresher has fallen well behind."""
        if not self.refreshed_at or time.monotonic() - self.refreshed_at > 2 * self.refresh_s + 5:
            return await self.refresh()
        return self.sessions

    async def run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:  # noqa: BLE001 - storage hiccup: keep the last list, try again later
                log.exception("session index refresh failed")
            await asyncio.sleep(self.refresh_s)


def sort_key(s: SessionInfo) -> tuple:
    # newest first, then by name: the same order SessionIndex.sessions() returns
    return (-s.start_ms, s.namespace, s.cluster, s.session)


def encode_cursor(s: SessionInfo) -> str:
    raw = json.dumps([s.start_ms, s.namespace, s.cluster, s.session], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple:
    try:
        start_ms, namespace, cluster, session = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return (-int(start_ms), str(namespace), str(cluster), str(session))
    except (ValueError, TypeError, binascii.Error):
        raise web.HTTPBadRequest(text=f"invalid cursor {cursor[:80]!r}: pass back next_cursor as it came") from None


def parse_time_ms(name: str, value: str) -> int:
    """Unix milliseconds, or an RFC3339 time."""
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return ts_ms(value)
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name} must be unix milliseconds or an RFC3339 time, got {value!r}") from None


def filter_sessions(sessions: list[SessionInfo], query) -> tuple[list[SessionInfo], str | None, int]:
    """(one page, next cursor, how many match) for /clusters' query parameters (pure).

    `sessions` must be sorted by sort_key (SessionDirectory keeps them so): no sort per request.
    """
    known = {"namespace", "name", "cluster", "state", "started_after", "started_before", "limit", "cursor"}
    unknown = sorted(set(query) - known)
    if unknown:
        raise web.HTTPBadRequest(text=f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    namespace = query.get("namespace")
    name = query.get("name") or query.get("cluster")
    state = query.get("state")
    if state not in (None, "", "live", "dead"):
        raise web.HTTPBadRequest(text=f"state must be live or dead, got {state!r}")
    after = parse_time_ms("started_after", query["started_after"]) if query.get("started_after") else None
    before = parse_time_ms("started_before", query["started_before"]) if query.get("started_before") else None
    limit = None
    if query.get("limit"):
        try:
            limit = int(query["limit"])
        except ValueError:
            limit = 0
        if limit < 1:
            raise web.HTTPBadRequest(text=f"limit must be a positive integer, got {query['limit']!r}")
    if namespace or name or state or after is not None or before is not None:
        matching = [
            s for s in sessions
            if (not namespace or s.namespace == namespace) and (not name or s.cluster == name)
            and (not state or s.state == state) and (after is None or s.start_ms >= after)
            and (before is None or s.start_ms < before)
        ]
    else:
        matching = sessions
    start = bisect.bisect_right(matching, decode_cursor(query["cursor"]), key=sort_key) if query.get("cursor") else 0
    page = matching[start:start + limit] if limit else matching[start:]
    more = limit is not None and start + limit < len(matching)
    return page, (encode_cursor(page[-1]) if more and page else None), len(matching)
