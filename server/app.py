"""The server's two aiohttp applications and the state they share.

`create_app(settings)` returns (public, internal): the public app serves the dashboard API, the session
list and the UI (the port the Ingress exposes); the internal app serves the pre-warm endpoint, metrics and
health (a port the Ingress never routes to). Both share one ServerState: one store, one session index,
one LRU, one loader. The state's background work (the index refresher, running loads) belongs to the
apps' lifetime through aiohttp's cleanup_ctx: it starts with the first app and stops with the last.
"""

from __future__ import annotations

import logging
import math
import time
import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import asyncio
from aiohttp import web

from rayhistory import layout, ray_token
from rayhistory.compression import InflateLimits
from rayhistory.index import SessionIndex
from rayhistory.layout import SessionRef
from rayhistory.store import Store, is_storage_failure

from . import auth, live_proxy, routes, ui
from .cache import SnapshotCache
from .disk_tasks import DiskSpill
from .loader import SessionLoader
from .metrics import ServerMetrics
from .parallel_build import ParallelBuild, usable_cores
from .platform_events import PlatformEventsReader
from .session_list import SessionDirectory

if TYPE_CHECKING:
    from .main import Settings

log = logging.getLogger(__name__)


@dataclass
class ServerState:
    settings: Settings
    store: Store
    index: SessionIndex
    directory: SessionDirectory
    cache: SnapshotCache
    loader: SessionLoader
    metrics: ServerMetrics
    writer: str
    platform_events: PlatformEventsReader
    _users: int = 0
    _background: list[asyncio.Task] = field(default_factory=list)

    @classmethod
    def create(cls, settings: Settings, store: Store | None = None) -> ServerState:
        store = store or Store(settings.storage, settings.storage_options, timeout_s=settings.storage_timeout_s)
        writer = layout.new_writer_id()
        metrics = ServerMetrics()
        index = SessionIndex(store, writer)
        cache = SnapshotCache(settings.cache_max_sessions, settings.cache_max_bytes, metrics)
        loader = SessionLoader(
            store, index, cache, metrics, writer, settings.load_timeout, settings.live_reload_s,
            settings.max_concurrent_loads,
            inflate_limits=InflateLimits(settings.max_inflated_bytes, settings.max_inflate_ratio),
            # a compacted snapshot bigger than the whole cache could never be kept anyway
            snapshot_limits=InflateLimits(max(settings.cache_max_bytes, settings.max_inflated_bytes),
                                          settings.max_inflate_ratio),
            parallel=ParallelBuild(settings.build_workers or usable_cores(), settings.build_workers_min_bytes),
            disk=DiskSpill(settings.cache_max_bytes // 2 if settings.tasks_on_disk_above_bytes < 0
                           else settings.tasks_on_disk_above_bytes, settings.task_spill_dir, settings.disk_task_chunks),
        )
        directory = SessionDirectory(index, settings.index_refresh_interval)
        metrics.watch_store(store.stats)
        platform_events = PlatformEventsReader(store, settings.index_refresh_interval)
        return cls(settings, store, index, directory, cache, loader, metrics, writer, platform_events)

    def health(self) -> dict:
        """/healthz's body: ok, or degraded while storage stalls (a call older than the storage timeout, or a
        timeout in the last minute). Cached sessions are still served meanwhile: never a reason to restart."""
        stats = self.store.stats()
        window = max(60.0, 2 * stats.timeout_s)
        stalled = stats.in_flight > 0 and stats.oldest_in_flight_s >= stats.timeout_s
        recent_timeout = stats.seconds_since_timeout is not None and stats.seconds_since_timeout < window
        return {
            "status": "degraded" if stalled or recent_timeout else "ok",
            "storage": {**dataclasses.asdict(stats), "stalled": stalled, "storage": self.store.redacted_url},
            "sessions_cached": len(self.cache), "loads_running": len(self.loader.loading()),
        }

    async def lifetime(self, app: web.Application):
        """cleanup_ctx of both apps: background work runs while at least one of them runs."""
        self._users += 1
        if self._users == 1:
            self._background.append(asyncio.create_task(self.directory.run(), name="index refresher"))
        try:
            yield
        finally:
            self._users -= 1
            if self._users == 0:
                for task in self._background:
                    task.cancel()
                await asyncio.gather(*self._background, return_exceptions=True)
                self._background.clear()
                await self.loader.close()

    async def load_state(self, request: web.Request, ref: SessionRef) -> ui.LoadState:
        """For the UI: is the session in memory (ready), and does it exist at all. A session that exists and
        is not in memory starts loading now: a link opened by a plain HTTP client or a prefetch warms it too,
        not only the loading page's script."""
        if self.cache.peek(ref) is not None:
            return ui.LoadState(ready=True)
        exists = self.loader.job(ref) is not None or self.directory.find(ref) is not None
        if not exists:
            exists = await self.index.session(ref) is not None
        if exists:
            self.loader.warm(ref)
        return ui.LoadState(ready=False, exists=exists)


def _request_metrics(metrics: ServerMetrics):
    @web.middleware
    async def middleware(request: web.Request, handler):
        started = time.perf_counter()
        resource = request.match_info.route.resource
        # the route's pattern, never the raw path: bounded label cardinality
        route = resource.canonical if resource is not None else "unmatched"
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            metrics.requests.labels(route=route, status=str(status)).inc()
            metrics.request_seconds.labels(route=route).observe(time.perf_counter() - started)

    return middleware


def _storage_failures(retry_after_s: float):
    """Storage that fails or stalls during a request: 503 with Retry-After, never 500 (store.is_storage_failure)."""

    @web.middleware
    async def middleware(request: web.Request, handler):
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except Exception as exc:
            if not is_storage_failure(exc):
                raise
            log.warning("storage failed during a request", extra={
                "path": request.path, "error": f"{type(exc).__name__}: {exc}"})
            return web.json_response(
                {"result": False, "msg": f"storage unavailable, retry later: {type(exc).__name__}: {exc}"},
                status=503, headers={"Retry-After": str(max(1, math.ceil(retry_after_s)))},
            )

    return middleware


def create_app(settings: Settings, store: Store | None = None,
               reviewer=None) -> tuple[web.Application, web.Application]:
    state = ServerState.create(settings, store)
    retry_after = min(settings.storage_timeout_s, 30.0)
    public = web.Application(middlewares=[_request_metrics(state.metrics), _storage_failures(retry_after)])
    internal = web.Application(middlewares=[_storage_failures(retry_after)])
    public[STATE_KEY] = state
    internal[STATE_KEY] = state
    # before the live proxy's middleware: live sessions are checked like any other (auth.py)
    authorizer = auth.setup_auth(public, settings, reviewer, state.metrics)
    routes.add_public_routes(public, state)
    ui.setup_ui(public, settings.dashboard_dir or None, state.load_state, routes.STATUS_PATH)
    # live sessions go to their cluster's own dashboard when Kubernetes says where it is (live_proxy.py)
    live_proxy.setup_live_proxy(
        public, state.directory.current, store=state.store,
        kubernetes={"auto": None, "on": True, "off": False}[settings.kubernetes],
        forward_authorization=authorizer is None, live_sessions=settings.live_sessions,
        status_path=routes.STATUS_PATH,
        ray_token=lambda: ray_token.resolve_token(settings.ray_auth_token.get_secret_value(), settings.ray_auth_token_path),
    )
    routes.add_internal_routes(internal, state)
    public.cleanup_ctx.append(state.lifetime)
    internal.cleanup_ctx.append(state.lifetime)
    return public, internal


STATE_KEY = web.AppKey("rayhistory_state", ServerState)
