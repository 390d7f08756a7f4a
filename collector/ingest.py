"""The HTTP face of the collector: POST /v1/events (Ray's aggregator agent), GET /healthz, GET /metrics.

A POST answers 200 only after its accepted events are durable in the spool; malformed events are listed
with their reasons and cost nothing to their neighbours. Ray's agent retries any answer that is not 2xx
(forever, with backoff), which is what the 413/503/500 answers rely on.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import defaultdict

import msgspec
from aiohttp import web

from rayhistory.events import AcceptedEvent, EventError, accept_events

from .flush import Flusher
from .metrics import CollectorMetrics
from .spool import Spool, SpoolFull, encode_record

log = logging.getLogger(__name__)

MAX_RETRY_AFTER_S = 30


def spool_records(accepted: list[AcceptedEvent]) -> bytes:
    """The spool records for one request: one per (session, node), events in arrival order (pure)."""
    groups: dict[tuple[str, str], list[bytes]] = defaultdict(list)
    for event in accepted:
        groups[(event.session_name, event.node_id_hex)].append(event.raw)
    return b"".join(encode_record(session, node, lines) for (session, node), lines in groups.items())


class RejectedEvent(msgspec.Struct, rename="camel"):
    index: int
    reason: str
    event_id: str = ""


class IngestAnswer(msgspec.Struct):
    accepted: int
    rejected: list[RejectedEvent]


def ingest_answer(accepted: int, errors: list[EventError]) -> bytes:
    return msgspec.json.encode(IngestAnswer(accepted, [RejectedEvent(e.index, e.reason, e.event_id) for e in errors]))


class Ingest:
    def __init__(self, spool: Spool, flusher: Flusher, metrics: CollectorMetrics, max_body_bytes: int):
        self.spool = spool
        self.flusher = flusher
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.accepting = True

    @property
    def retry_after(self) -> str:
        """When to come back: the flusher's current storage backoff (1 s while storage answers, up to its
        cap while it does not), never the flush interval, which may be an hour."""
        return str(min(MAX_RETRY_AFTER_S, max(1, math.ceil(self.flusher.backoff.current))))

    def _answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> web.Response:
        self.metrics.requests.labels(str(status)).inc()
        return web.Response(status=status, body=body, content_type="application/json", headers=headers)

    def _error(self, status: int, reason: str, headers: dict[str, str] | None = None) -> web.Response:
        return self._answer(status, msgspec.json.encode({"error": reason}), headers)

    async def post_events(self, request: web.Request) -> web.Response:
        if not self.accepting:
            return self._error(503, "collector is shutting down", {"Retry-After": self.retry_after})
        if request.content_length is not None and request.content_length > self.max_body_bytes:
            return self._error(413, f"body over {self.max_body_bytes} bytes")
        if self.spool.is_full:
            return self._error(503, "spool is full; storage is behind", {"Retry-After": self.retry_after})
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._error(413, f"body over {self.max_body_bytes} bytes")
        try:
            accepted, errors = accept_events(body)
        except Exception as exc:  # noqa: BLE001 - a bug of ours: still the body's answer, never a 500 loop
            log.exception("body not decodable")
            return self._error(400, f"body not decodable: {type(exc).__name__}")
        if not accepted and len(errors) == 1 and errors[0].index == -1:
            return self._error(400, errors[0].reason)  # nothing in it can be accepted; retrying cannot help
        if errors:
            self.metrics.events_rejected.inc(len(errors))
            log.info("events rejected", extra={"rejected": len(errors), "first_reason": errors[0].reason})
        records, count = spool_records(accepted), len(accepted)
        del accepted  # only the records wait for the disk
        try:
            await self.spool.append(records)
        except SpoolFull as exc:
            return self._error(503, str(exc), {"Retry-After": self.retry_after})
        except OSError as exc:  # disk error: not durable, so not acknowledged; the sender retries
            log.error("spool write failed", extra={"error": repr(exc)})
            return self._error(503, f"spool write failed: {exc.strerror or exc}", {"Retry-After": self.retry_after})
        self.metrics.events_received.inc(count)
        self.metrics.spool_bytes.set(self.spool.bytes)
        try:
            await self.flusher.after_append()
        except OSError as exc:  # sealing failed; these events are durable already, the flusher retries
            log.error("spool segment not sealed", extra={"error": repr(exc)})
        return self._answer(200, ingest_answer(count, errors))

    def health(self) -> dict:
        """What /healthz says besides its status: enough to see storage falling behind or hanging."""
        return {"status": "ok" if self.accepting else "stopping", "spool_bytes": self.spool.bytes,
                "spool_segments": len(self.spool.sealed()) + (1 if self.spool.active_bytes else 0),
                "oldest_unflushed_s": round(self.spool.oldest_unflushed_s(), 3),
                "storage_backoff_s": round(self.flusher.backoff.current, 3),
                "storage": dataclasses.asdict(self.flusher.store.stats())}

    def _update_gauges(self) -> None:
        self.metrics.spool_bytes.set(self.spool.bytes)
        self.metrics.spool_segments.set(len(self.spool.sealed()) + (1 if self.spool.active_bytes else 0))
        self.metrics.oldest_unflushed.set(self.spool.oldest_unflushed_s())

    async def healthz(self, request: web.Request) -> web.Response:
        # alive while it can take events: a storage outage is what the spool is for, so it stays 200
        return web.json_response(self.health(), status=200 if self.accepting else 503)

    async def metrics_page(self, request: web.Request) -> web.Response:
        self._update_gauges()
        body, content_type = self.metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": content_type})

    def app(self) -> web.Application:
        # client_max_size makes aiohttp refuse a chunked body over the limit while reading it
        app = web.Application(client_max_size=self.max_body_bytes)
        app.router.add_post("/v1/events", self.post_events)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.metrics_page)
        return app

    def metrics_app(self) -> web.Application:
        """What the pod network may reach: probes and Prometheus, no ingest."""
        app = web.Application(client_max_size=1024)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.metrics_page)
        return app
