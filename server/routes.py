"""HTTP routes: the Ray Dashboard API under each session's prefix, the session list, the internal port.

Public port:
- `/s/{namespace}/{cluster}/{session}/{path}` for every `api.ROUTES` entry (pure handlers over the
  snapshot), plus `api/v0/logs/{media_type}` (bytes from storage, logs.py), `api/v0/platform_events` (the
  Kubernetes Events the operator kept, platform_events.py; an imported session's captured answer first) and
  `rayhistory/status`
  (load progress and completeness; it never waits for a load). The dashboard UI requests relative
  paths, so its API calls land here.
- `GET /clusters`: sessions from the index, filtered and paged with an opaque cursor (no cap).
- `GET /enter_cluster/{namespace}/{name}/{session}`: a redirect to the session's URL (`latest` works).
Every session response says how complete the snapshot is: `X-Rayhistory-Complete: true|false`, with
`X-Rayhistory-Objects-Missing` / `-Corrupt` counts and `X-Rayhistory-Session-State: live|dead`; the same
figures are fields of `rayhistory/status`.

Internal port (never behind the Ingress): `POST /internal/prewarm`, `GET /metrics`, `GET /healthz` (liveness, with
the detail). The public port has a `GET /healthz` without detail (readiness). See docs/server-runtime.md.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import time
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import web

from rayhistory import layout
from rayhistory.index import SessionInfo, session_last_activity_ms
from rayhistory.layout import SessionRef

from . import api, api_captured, logs
from .auth import VISIBLE_KEY
from .cache import CacheEntry
from .api_tasks import failed_task_count
from .disk_tasks import DiskTasks
from .loader import LoadTimeout, LoadUnavailable, SessionNotFound
from .session_list import filter_sessions, sort_key
from .ui import SESSION_PREFIX, session_base, session_ref

if TYPE_CHECKING:
    from .app import ServerState

log = logging.getLogger(__name__)

STATUS_PATH = "rayhistory/status"
PLATFORM_EVENTS_PATH = "api/v0/platform_events"
LAST_WRITE_TTL_S = 30.0  # how often a live session's storage is listed to tell whether it went stale
LAST_WRITE_PER_PAGE = 200  # live sessions of one /clusters page whose staleness is checked
STATUS_GRACE_S = 0.25  # how long the status page waits for a load it starts (it never waits for more)
COMPLETE_HEADER = "X-Rayhistory-Complete"
MISSING_HEADER = "X-Rayhistory-Objects-Missing"
CORRUPT_HEADER = "X-Rayhistory-Objects-Corrupt"
STATE_HEADER = "X-Rayhistory-Session-State"

_json = msgspec.json.Encoder()


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=_json.encode(body), status=status, content_type="application/json", headers=headers)


def completeness(entry: CacheEntry) -> dict[str, Any]:
    snapshot = entry.snapshot
    return {
        "state": "live" if entry.live else "dead",
        # a live session is still being written: what storage holds is never the whole story yet
        "complete": bool(snapshot.complete) and not entry.live,
        "objects_total": snapshot.objects_total,
        "objects_missing": len(snapshot.objects_missing),
        "objects_corrupt": len(snapshot.objects_corrupt),
        "events_rejected": snapshot.events_rejected,
    }


def index_fields(info: SessionInfo, last_write_ms: int, stale_after_ms: int, now_ms: int | None = None) -> dict:
    """What the index says of a session, for the banner. `stale`: see is_stale."""
    return {
        "owner_kind": info.owner_kind, "owner_name": info.owner_name, "start_ms": info.start_ms,
        "end_ms": info.end_ms, "state": info.state, "dead_reason": info.dead_reason,
        "last_update_ms": last_write_ms or info.last_update_ms, "nodes": len(info.node_ids),
        "stale": is_stale(info, last_write_ms, stale_after_ms, now_ms),
        "imported": bool(info.imported_ms), "imported_ms": info.imported_ms,
    }


def is_stale(info: SessionInfo, last_write_ms: int, stale_after_ms: int, now_ms: int | None = None) -> bool:
    """Live in the index, but nothing of it was written for `stale_after_ms` (0: never stale): a recording
    that stopped without a mark-dead (without Kubernetes nothing else ends it)."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    last = last_write_ms or info.last_update_ms
    return bool(stale_after_ms) and info.state == "live" and bool(last) and now_ms - last > stale_after_ms


def completeness_headers(entry: CacheEntry) -> dict[str, str]:
    c = completeness(entry)
    return {
        COMPLETE_HEADER: "true" if c["complete"] else "false",
        MISSING_HEADER: str(c["objects_missing"]),
        CORRUPT_HEADER: str(c["objects_corrupt"]),
        STATE_HEADER: c["state"],
    }


def cluster_row(s: SessionInfo, entry: CacheEntry | None, loading: bool, last_write_ms: int, stale_after_ms: int,
                failures: tuple[int, int] | None) -> dict:
    """One session of /clusters (pure): what the index says, and what this replica knows of it."""
    return {
        "namespace": s.namespace, "cluster": s.cluster, "owner_kind": s.owner_kind, "owner_name": s.owner_name,
        "session": s.session, "start_ms": s.start_ms, "end_ms": s.end_ms, "state": s.state,
        "nodes": len(s.node_ids), "size_bytes": entry.stored_bytes if entry is not None else None,
        "load_state": "loading" if loading else "loaded" if entry is not None else "not_loaded",
        "url": session_base(s),
        "stale": is_stale(s, last_write_ms, stale_after_ms),
        "imported": bool(s.imported_ms),
        "last_write_ms": last_write_ms or None,
        # for loaded sessions only (counting means a load): failed tasks and jobs
        "failed_tasks": failures[0] if failures else None, "failed_jobs": failures[1] if failures else None,
    }


def failure_counts(entry: CacheEntry) -> tuple[int, int] | None:
    """(failed tasks, failed jobs) of a loaded session, as its task and job lists say; computed once per
    loaded snapshot (kept on the entry)."""
    cached = getattr(entry, "_rayhistory_failures", None)
    if cached is not None or not entry.tasks_decoded:  # counted once the tasks are decoded
        return cached
    try:
        imported = api_captured.failed_tasks(entry.snapshot)  # an import has the task list, not the tasks
        failed_tasks = imported if imported is not None else failed_task_count(entry.snapshot)
        failed_jobs = sum(1 for j in api.jobs(entry.snapshot, {})[1] if j.get("status") == "FAILED")
    except Exception:  # noqa: BLE001 - a count is a nicety of the picker, never a failed list
        log.exception("counting a session's failures failed")
        return None
    counts = (failed_tasks, failed_jobs)
    if not entry.live:  # a live session's snapshot is replaced on refresh, with its entry
        entry._rayhistory_failures = counts
    return counts


# ---- answers of dead sessions, cached ----------------------------------------------------------------

CACHE_HEADER = "X-Rayhistory-Answer-Cache"


class AnswerCache:
    """Rendered answers of dead sessions, per (loaded snapshot, path, query). A dead session's snapshot never
    changes, and the UI's auto-refresh (on by default, on every page, not switchable from outside) asks the
    same questions every few seconds: those become a dict lookup. Bounded by count and bytes (LRU); an entry
    holds its snapshot only weakly, so an evicted session's answers die with it."""

    def __init__(self, max_entries: int = 4096, max_bytes: int = 64 << 20, max_answer_bytes: int = 4 << 20):
        self.max_entries, self.max_bytes, self.max_answer_bytes = max_entries, max_bytes, max_answer_bytes
        self._answers: OrderedDict[tuple, tuple] = OrderedDict()
        self.nbytes = 0

    @staticmethod
    def key(entry: CacheEntry, pattern: str, query) -> tuple:
        return (id(entry), pattern, tuple(sorted(query.items())))

    def get(self, key: tuple, entry: CacheEntry) -> tuple | None:
        hit = self._answers.get(key)
        if hit is None:
            return None
        if hit[0]() is not entry:  # another entry now lives at that id: the old one is gone
            self._drop(key)
            return None
        self._answers.move_to_end(key)
        return hit[1:]

    def put(self, key: tuple, entry: CacheEntry, response: web.Response) -> None:
        body = response.body
        if not isinstance(body, bytes) or len(body) > self.max_answer_bytes:
            return
        if key in self._answers:
            self._drop(key)
        headers = {k: v for k, v in response.headers.items() if k.lower() not in ("content-type", "content-length")}
        self._answers[key] = (weakref.ref(entry), response.status, body, response.content_type, response.charset,
                              headers)
        self.nbytes += len(body)
        while len(self._answers) > self.max_entries or self.nbytes > self.max_bytes:
            self._drop(next(iter(self._answers)))

    def _drop(self, key: tuple) -> None:
        self.nbytes -= len(self._answers.pop(key)[2])


# ---- handlers ------------------------------------------------------------------------------------


class Routes:
    def __init__(self, state: ServerState):
        self.state = state
        self.answers = AnswerCache()
        self._last_write: dict[tuple, tuple[float, int]] = {}
        self._dead_rows: dict[tuple, tuple[SessionInfo, bytes]] = {}

    # -- sessions --

    async def entry(self, ref: SessionRef, tasks: bool = True) -> CacheEntry:
        """The loaded session (its task fields decoded unless `tasks` is false), or the HTTP error that says
        why not (404 unknown, 504 still loading, 503 the load failed: retry after its backoff)."""
        try:
            return await self.state.loader.get(ref, tasks)
        except SessionNotFound as exc:
            raise web.HTTPNotFound(text=str(exc)) from None
        except LoadUnavailable as exc:
            raise web.HTTPServiceUnavailable(
                text=json.dumps({"result": False, "msg": str(exc), "error": exc.error,
                                 "retry_after_s": math.ceil(exc.retry_after_s)}),
                content_type="application/json", headers={"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))},
            ) from None
        except LoadTimeout as exc:
            raise web.HTTPGatewayTimeout(
                text=json.dumps({"result": False, "msg": str(exc), "progress": exc.progress.as_dict()}),
                content_type="application/json",
            ) from None

    def api_handler(self, pattern: str, handler: Callable) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        extra_headers = EXTRA_HEADERS.get(pattern)
        needs_tasks = f"/{pattern}" not in api.HEAD_ONLY

        async def handle(request: web.Request) -> web.StreamResponse:
            ref = session_ref(request)
            entry = await self.entry(ref, needs_tasks)
            params = {k: v for k, v in request.match_info.items() if k not in ("namespace", "cluster", "session")}
            query = request.query.copy()
            query.extend(params)
            # answers with per-request headers (a download's dated file name) are rendered each time
            cache_key = None if entry.live or extra_headers else AnswerCache.key(entry, pattern, query)
            hit = self.answers.get(cache_key, entry) if cache_key is not None else None
            if hit is not None:
                status, body, content_type, charset, headers = hit
                return web.Response(body=body, status=status, content_type=content_type, charset=charset,
                                    headers={**headers, CACHE_HEADER: "hit"})
            try:
                # in a worker thread: a 10,000-row answer takes a while, and the event loop keeps
                # serving other requests meanwhile (snapshots are immutable, handlers pure)
                snapshot = entry.snapshot if needs_tasks else entry.head
                status, body = await asyncio.to_thread(answer, handler, snapshot, request, ref, query)
                headers = completeness_headers(entry)
                if extra_headers is not None:
                    headers.update(extra_headers(query))
                response = await asyncio.to_thread(body_response, status, body, headers)
            except api.ApiError as exc:
                return json_response(exc.body(), status=exc.status, headers=completeness_headers(entry))
            if cache_key is not None:
                self.answers.put(cache_key, entry, response)
            return response

        return handle

    async def log_file(self, request: web.Request) -> web.StreamResponse:
        ref = session_ref(request)
        if request.match_info["media_type"] not in ("file", "stream"):  # a dead session's stream is its file
            raise web.HTTPNotFound(text="only api/v0/logs/file and api/v0/logs/stream exist")
        q = request.query
        try:
            lines = logs.parse_lines(q.get("lines"))
            filter_ansi = logs.parse_bool(q.get("filter_ansi_code"))
            download = logs.check_download_filename(q.get("download_filename"))
            if q.get("filename") is not None:
                logs.check_filename(q["filename"])
            entry = await self.entry(ref)
            try:
                target = imported_log(entry.snapshot, q) or api.resolve_log_file(entry.snapshot, q)
            except api.ApiError as exc:  # Ray answers log errors as text, not JSON
                raise logs.LogRequestError(exc.status, exc.message) from None
            logs.check_filename(target.filename)
            data = await logs.log_file_bytes(
                self.state.store, ref, target.node_id, target.filename, target.start, target.end, lines, filter_ansi,
            )
        except logs.LogRequestError as exc:
            return web.Response(text=exc.message, status=exc.status, content_type="text/plain")
        headers = completeness_headers(entry)
        headers["Content-Disposition"] = f'attachment; filename="{download}"'
        return web.Response(body=data, content_type="text/plain", charset="utf-8", headers=headers)

    async def platform_events(self, request: web.Request) -> web.Response:
        """An imported session's captured answer, when the live head had one; else the Kubernetes Events the
        operator kept for the session (server/platform_events.py); 404 with none, as Ray answers with platform
        events off (its UI then hides the page). HEAD is the UI's probe."""
        ref = session_ref(request)
        info = await self.session_info(ref)
        if info is not None and info.imported_ms:  # the index says so: other sessions are never loaded here
            entry = await self.entry(ref, tasks=False)
            replayed = api_captured.answer(entry.head, PLATFORM_EVENTS_PATH, request.query)
            if replayed is not None:
                return body_response(200, replayed, completeness_headers(entry))
        kept = await self.state.platform_events.answer(ref)
        if kept is None:
            return web.Response(text="404: Not Found", status=404, content_type="text/plain")
        return web.Response(body=kept, content_type="application/json")

    async def job_logs(self, request: web.Request) -> web.Response:
        """/api/jobs/{job_id}/logs: the whole driver log of a submission job, as {"logs": text}."""
        ref = session_ref(request)
        entry = await self.entry(ref)
        headers = completeness_headers(entry)
        status, body = api.job_logs(entry.snapshot, request.query, request.match_info["job_id"])
        if status != 200:
            return body_response(status, body, headers)
        try:
            data = await logs.log_file_bytes(self.state.store, ref, body["node_id"], body["filename"], None, None,
                                             lines=-1, filter_ansi=False)
        except logs.LogRequestError as exc:
            return web.Response(text=exc.message, status=exc.status, headers=headers)
        return json_response({"logs": data.decode("utf-8", "replace")}, headers=headers)

    async def status(self, request: web.Request) -> web.Response:
        """Load state, progress and completeness; starts a load if none ran yet, never waits for it."""
        ref = session_ref(request)
        loader = self.state.loader
        entry = self.state.cache.peek(ref)
        body: dict[str, Any] = {"namespace": ref.namespace, "cluster": ref.cluster, "session": ref.session}
        # load=0: what the index says only (the banner of a proxied live session: it is never loaded)
        if entry is None and loader.job(ref) is None and request.query.get("load") != "0":
            # start the load, and give it a moment: an unknown session fails fast and gets its 404 here
            task = asyncio.ensure_future(loader.get(ref))
            await asyncio.wait([task], timeout=STATUS_GRACE_S)
            if task.done() and not task.cancelled() and isinstance(task.exception(), SessionNotFound):
                raise web.HTTPNotFound(text=str(task.exception()))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            entry = self.state.cache.peek(ref)
        info = await self.session_info(ref)
        if info is not None:  # the index's view, for the banner (owner, times, state, staleness)
            last = await self.last_write_ms(info, always=True)
            body["index"] = index_fields(info, last, self.stale_after_ms())
        progress = loader.progress(ref)
        body["load_state"] = loader.state(ref)
        body["ready"] = entry is not None
        body["error"] = progress.error if progress is not None and progress.phase == "failed" else ""
        body["progress"] = progress.as_dict() if progress is not None else None
        failure = loader.backoff(ref) if entry is None else None
        body["retry_after_s"] = math.ceil(failure.retry_after()) if failure is not None else None
        if failure is not None:
            body["error"] = body["error"] or failure.error
        if entry is not None:
            body.update(completeness(entry))
            if entry.live:  # served from storage: how fresh it is, for the banner
                body["loaded_at_ms"] = int(time.time() * 1000 - (time.monotonic() - entry.loaded_at) * 1000)
                body["reload_s"] = loader.live_refresh_s
            body["tasks"] = entry.task_count
            body["tasks_ready"] = entry.tasks_decoded  # the task pages answer (decoded, or on local disk)
            body["tasks_on_disk"] = isinstance(entry.snapshot.tasks, DiskTasks)
            body["snapshot_key"] = entry.snapshot_key
            body["resident_bytes"] = entry.nbytes
            body["stored_bytes"] = entry.stored_bytes
            body["objects_missing_keys"] = [[p.key, p.reason] for p in entry.snapshot.objects_missing[:100]]
            body["objects_corrupt_keys"] = [[p.key, p.reason] for p in entry.snapshot.objects_corrupt[:100]]
            if api_captured.is_imported(entry.snapshot):
                body["import"] = api_captured.import_summary(entry.snapshot)
            return json_response(body, headers=completeness_headers(entry))
        return json_response(body)

    async def session_info(self, ref: SessionRef) -> SessionInfo | None:
        found = self.state.directory.find(ref)
        return found if found is not None else await self.state.index.session(ref)

    def stale_after_ms(self) -> int:
        return int(getattr(self.state.settings, "stale_after", 0) * 1000)

    async def last_write_ms(self, info: SessionInfo, always: bool = False) -> int:
        """When anything of a live session was last written (listed at most every LAST_WRITE_TTL_S); 0 for a
        dead one (not needed) or when staleness is off (unless `always`: the banner's newest flush)."""
        if info.state != "live" or not (always or self.stale_after_ms()):
            return 0
        key = (info.namespace, info.cluster, info.session)
        known = self._last_write.get(key)
        if known is not None and time.monotonic() - known[0] < LAST_WRITE_TTL_S:
            return known[1]
        ms = await session_last_activity_ms(self.state.store, info.ref)
        self._last_write[key] = (time.monotonic(), ms)
        if len(self._last_write) > 10_000:
            self._last_write.pop(next(iter(self._last_write)))
        return ms

    # -- the session list --

    async def clusters(self, request: web.Request) -> web.Response:
        sessions = await self.state.directory.current()
        visible = request.get(VISIBLE_KEY)  # --auth kubernetes: only the namespaces the caller may see
        if visible is not None:
            sessions = await visible(sessions)
        page, cursor, total = filter_sessions(sessions, request.query)
        # one pass over this replica's sessions, not one SessionRef per row: a page can hold 10,000s
        cached = {(r.namespace, r.cluster, r.session): self.state.cache.peek(r) for r in self.state.cache.refs()}
        loading = {(r.namespace, r.cluster, r.session) for r in self.state.loader.loading()}
        live = [s for s in page if s.state == "live"][:LAST_WRITE_PER_PAGE]
        writes = dict(zip([(s.namespace, s.cluster, s.session) for s in live],
                          await asyncio.gather(*(self.last_write_ms(s) for s in live))))
        stale_after = self.stale_after_ms()
        rows = []
        for s in page:
            key = (s.namespace, s.cluster, s.session)
            entry = cached.get(key)
            if entry is None and s.state == "dead" and key not in loading:
                rows.append(self._dead_row(key, s))
                continue
            counts = failure_counts(entry) if entry is not None else None
            rows.append(_json.encode(cluster_row(s, entry, key in loading, writes.get(key, 0), stale_after, counts)))
        body = b"".join((b'{"sessions":[', b",".join(rows), b'],"next_cursor":', _json.encode(cursor),
                         b',"total":', b"%d}" % total))
        return web.Response(body=body, content_type="application/json")

    def _dead_row(self, key: tuple, info: SessionInfo) -> bytes:
        """The row of a dead session this replica has not loaded: it depends only on the session's merged
        record, which the session list keeps until the session's records change, so it is encoded once."""
        hit = self._dead_rows.get(key)
        if hit is not None and hit[0] is info:
            return hit[1]
        if len(self._dead_rows) > 2 * len(self.state.directory.sessions) + 1000:  # sessions retention removed
            self._dead_rows.clear()
        row = _json.encode(cluster_row(info, None, False, 0, 0, None))
        self._dead_rows[key] = (info, row)
        return row

    async def enter_cluster(self, request: web.Request) -> web.Response:
        info = request.match_info
        namespace, name, session = info["cluster_namespace"], info["cluster_name"], info["session_name"]
        try:
            layout.check_name(namespace, "namespace")
            layout.check_name(name, "cluster name")
            if session != "latest":
                layout.check_session(session)
        except layout.LayoutError as exc:
            raise web.HTTPNotFound(text=str(exc)) from None
        if session == "latest":
            ours = [s for s in await self.state.directory.current() if (s.namespace, s.cluster) == (namespace, name)]
            if not ours:
                ours = [s for s in await self.state.directory.refresh() if (s.namespace, s.cluster) == (namespace, name)]
            if not ours:
                raise web.HTTPNotFound(text=f"no session of cluster {namespace}/{name} in this history store")
            session = min(ours, key=sort_key).session
        # relative, so it still works behind an Ingress that strips a path prefix
        raise web.HTTPFound(f"../../../s/{namespace}/{name}/{session}/")

    # -- internal --

    async def prewarm(self, request: web.Request) -> web.Response:
        token = self.state.settings.prewarm_token.get_secret_value()
        if token:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                raise web.HTTPUnauthorized(text="prewarm needs 'Authorization: Bearer <token>'",
                                           headers={"WWW-Authenticate": "Bearer"})
        params = dict(request.query)
        if request.can_read_body:
            try:
                params.update(await request.json())
            except (ValueError, TypeError):
                raise web.HTTPBadRequest(text="body must be a JSON object {namespace, cluster, session}") from None
        try:
            ref = SessionRef(params.get("namespace", ""), params.get("cluster", ""), params.get("session", ""))
        except layout.LayoutError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        loader = self.state.loader
        try:
            entry = await loader.refresh(ref)
        except SessionNotFound as exc:
            raise web.HTTPNotFound(text=str(exc)) from None
        except LoadTimeout as exc:
            return json_response({"session": ref.tail, "load_state": "loading", "progress": exc.progress.as_dict()},
                                 status=202)
        except LoadUnavailable as exc:
            return json_response({"session": ref.tail, "load_state": "failed", "error": exc.error,
                                  "retry_after_s": math.ceil(exc.retry_after_s)}, status=503,
                                 headers={"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))})
        progress = loader.progress(ref)
        return json_response({
            "session": ref.tail, "load_state": "loaded", "snapshot_key": entry.snapshot_key,
            "tasks": entry.task_count, **completeness(entry),
            "progress": progress.as_dict() if progress is not None else None,
        })

    async def metrics(self, request: web.Request) -> web.Response:
        body, content_type = self.state.metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def healthz(self, request: web.Request) -> web.Response:
        """Liveness (internal port): always 200 while the process answers; the body says ok or degraded, and why."""
        return json_response(self.state.health())

    async def readyz(self, request: web.Request) -> web.Response:
        """Readiness (public port, the operator's readinessProbe): 200 while this replica serves; degraded storage
        does not make it unready (its cached sessions still answer). No detail on the public port."""
        return json_response({"status": self.state.health()["status"]})


def timeline_download_headers(query) -> dict[str, str]:
    """Ray's tasks_timeline: download=1 makes the Chrome trace an attachment (the UI's "Download trace file")."""
    if query.get("download") != "1":
        return {}
    now = time.strftime("%Y-%m-%d_%H-%M-%S", time.localtime())
    return {"Content-Disposition": f'attachment; filename="timeline-{query.get("job_id")}-{now}.json"'}


# api.ROUTES pattern -> response headers the transport adds (api handlers return bodies only)
EXTRA_HEADERS: dict[str, Callable[[Any], dict[str, str]]] = {"api/v0/tasks/timeline": timeline_download_headers}


def answer(handler: Callable, snapshot, request: web.Request, ref: SessionRef, query) -> tuple[int, Any]:
    """An api handler's answer; an imported session's captured answer first, when it has one (api_captured)."""
    if api_captured.is_imported(snapshot):
        replayed = api_captured.answer(snapshot, request.path[len(session_base(ref)):], request.query)
        if replayed is not None:
            return 200, replayed
    return handler(snapshot, query)


def imported_log(snapshot, query) -> api.ResolvedLog | None:
    """A task's or an actor's log in an imported session: the captured lists say where (no events were kept)."""
    suffix = query.get("suffix") or "out"
    if not api_captured.is_imported(snapshot) or query.get("filename") or suffix not in ("out", "err"):
        return None
    if query.get("task_id"):
        try:
            attempt = int(query.get("attempt_number") or 0)
        except ValueError:
            raise api.ApiError(400, f"attempt_number must be an integer, got {query['attempt_number']!r}") from None
        return api_captured.task_log(snapshot, query["task_id"], attempt, suffix)
    return api_captured.actor_log(snapshot, query["actor_id"], suffix) if query.get("actor_id") else None


def body_response(status: int, body: Any, headers: dict[str, str]) -> web.Response:
    """An api handler's answer: bytes and str go out as they are, anything else as JSON."""
    if isinstance(body, bytes):
        return web.Response(body=body, status=status, content_type="application/json", headers=headers)
    if isinstance(body, str):
        return web.Response(text=body, status=status, content_type="text/plain", headers=headers)
    return json_response(body, status=status, headers=headers)


def add_public_routes(app: web.Application, state: ServerState) -> Routes:
    routes = Routes(state)
    own = {("GET", "api/v0/logs/{media_type}"), ("GET", STATUS_PATH), ("GET", PLATFORM_EVENTS_PATH)}
    app.router.add_get(f"{SESSION_PREFIX}/{PLATFORM_EVENTS_PATH}", routes.platform_events)
    app.router.add_get(f"{SESSION_PREFIX}/api/v0/logs/{{media_type}}", routes.log_file)
    app.router.add_get(f"{SESSION_PREFIX}/{STATUS_PATH}", routes.status)
    app.router.add_get(f"{SESSION_PREFIX}/api/jobs/{{job_id}}/logs", routes.job_logs)
    for method, pattern, handler in api.ROUTES:
        pattern = pattern.lstrip("/")
        if (method, pattern) in own:
            continue
        if method == "GET":  # and HEAD
            app.router.add_get(f"{SESSION_PREFIX}/{pattern}", routes.api_handler(pattern, handler))
        else:
            app.router.add_route(method, f"{SESSION_PREFIX}/{pattern}", routes.api_handler(pattern, handler))
    app.router.add_get("/clusters", routes.clusters)
    app.router.add_get("/healthz", routes.readyz)
    # parameter names unlike the session prefix's: middlewares that act on /s/... sessions leave this alone
    app.router.add_get("/enter_cluster/{cluster_namespace}/{cluster_name}/{session_name}", routes.enter_cluster)
    return routes


def add_internal_routes(app: web.Application, state: ServerState) -> Routes:
    routes = Routes(state)
    app.router.add_post("/internal/prewarm", routes.prewarm)
    app.router.add_get("/metrics", routes.metrics)
    app.router.add_get("/healthz", routes.healthz)
    return routes
