"""The collector sidecar: durable Ray event ingest, incremental log upload and dashboard polling.

One process per Ray pod. Ray's aggregator agent POSTs events to /v1/events; they are spooled durably,
then flushed to storage (spool.py, flush.py). Session log folders are uploaded incrementally
(logs_upload.py); on the head the live dashboard is polled (dashboard_poll.py). On SIGTERM the collector
stops accepting, uploads everything once more and exits 0 if nothing is left behind within the grace.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

from aiohttp import web
from pydantic import Field, SecretStr, field_validator

from rayhistory import layout, ray_token
from rayhistory.config import CommonSettings
from rayhistory.store import Store

from .dashboard_poll import DashboardPoller
from .flush import Flusher
from .ingest import Ingest
from .logs_upload import LogUploader
from .metrics import CollectorMetrics
from .registry import SessionRegistry
from .spool import Spool

log = logging.getLogger(__name__)


async def every(interval: float, stopping: asyncio.Event, step: Callable[[], Awaitable[object]]) -> None:
    """Run `step` now and then every `interval` seconds until `stopping` is set."""
    while not stopping.is_set():
        await step()
        try:
            await asyncio.wait_for(stopping.wait(), interval)
        except asyncio.TimeoutError:
            pass


class Settings(CommonSettings):
    host: str = Field("127.0.0.1", description="address of /v1/events (and /healthz, /metrics): Ray's agent posts from "
                                             "the same pod, so nothing else in the pod network can forge events")
    port: int = Field(8084, description="port of /v1/events, /healthz and /metrics")
    metrics_host: str = Field("0.0.0.0", description="address of the pod-network port (Prometheus, kubelet probes)")
    metrics_port: int = Field(8085, description="port of /metrics and /healthz only, for the pod network (-1: none)")
    cluster_name: str = Field("local", description="RayCluster name (the storage and index key)")
    namespace: str = Field("default", description="Kubernetes namespace of the RayCluster")
    owner_kind: str = Field("", description="kind of the RayCluster's owner (RayJob, RayService), if any")
    owner_name: str = Field("", description="name of the RayCluster's owner, if any")
    ray_temp_root: str = Field("/tmp/ray", description="Ray's temp root holding the session_* folders")
    spool_dir: str = Field("/tmp/rayhistory-spool", description="local spool folder (keep it on the pod's disk)")
    spool_fsync: Literal["group", "request"] = Field(
        "group", description="group: one fdatasync covers every concurrent request; request: one per request")
    flush_interval: float = Field(5.0, description="seconds between flushes of the spool to storage")
    flush_bytes: int = Field(4 << 20, description="flush as soon as the active spool segment holds this many bytes")
    log_upload_interval: float = Field(
        30.0, description="seconds between log upload cycles (and dashboard polls on the head)")
    dashboard_url: str = Field("", description="live dashboard to poll, head only (e.g. http://127.0.0.1:8265); "
                                               "empty: no polling")
    ray_auth_token: SecretStr = Field(
        SecretStr(""), description="Ray's dashboard token (RAY_AUTH_MODE=token heads); empty: the token file, then "
        "Ray's own RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH in this container's environment")
    ray_auth_token_path: str = Field("", description="file holding Ray's dashboard token (a mounted Secret; read on "
                                                     "every poll)")
    max_body_bytes: int = Field(64 << 20, description="largest POST body accepted (413 above)")
    spool_max_bytes: int = Field(1 << 30, description="spool bound: above it POSTs get 503 + Retry-After")
    shutdown_grace: float = Field(25.0, description="seconds to finish uploading after SIGTERM")

    @field_validator("namespace", "cluster_name")
    @classmethod
    def _storage_key_name(cls, value: str, info) -> str:
        # they are segments of every storage key: refuse a bad one now, not at the first flush
        return layout.check_name(value, info.field_name)


class Collector:
    """The parts wired together; `start()` serves, `shutdown()` drains. Tests run it in-process."""

    def __init__(self, settings: Settings):
        self.settings = s = settings
        self.writer = layout.new_writer_id()
        self.store = Store(s.storage, s.storage_options, timeout_s=s.storage_timeout_s)
        self.metrics = CollectorMetrics()
        self.metrics.watch_store(self.store.stats)
        self.spool = Spool(Path(s.spool_dir) / "events", self.writer, s.spool_max_bytes, s.spool_fsync)
        self.registry = SessionRegistry(self.store, self.writer, s.owner_kind, s.owner_name)
        self.flusher = Flusher(self.spool, self.store, s.namespace, s.cluster_name, self.metrics,
                               self.registry.note, s.flush_interval, s.flush_bytes)
        self.ingest = Ingest(self.spool, self.flusher, self.metrics, s.max_body_bytes)
        self.uploader = LogUploader(self.store, s.ray_temp_root, Path(s.spool_dir) / "logs-state.json",
                                    s.namespace, s.cluster_name, self.metrics, self.registry.note_on_disk)
        self.poller = (DashboardPoller(
            s.dashboard_url, self.store, s.namespace, s.cluster_name, self.writer, self.metrics,
            ray_token=lambda: ray_token.resolve_token(s.ray_auth_token.get_secret_value(), s.ray_auth_token_path),
        ) if s.dashboard_url else None)
        self.stopping = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._metrics_runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task] = []
        self.port = s.port
        self.metrics_port = s.metrics_port

    async def start(self) -> None:
        self.metrics.spool_bytes.set(self.spool.bytes)
        self._runner = web.AppRunner(self.ingest.app(), access_log=None, shutdown_timeout=self.settings.shutdown_grace)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.host, self.settings.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        if self.settings.metrics_port >= 0:
            self._metrics_runner = web.AppRunner(self.ingest.metrics_app(), access_log=None)
            await self._metrics_runner.setup()
            await web.TCPSite(self._metrics_runner, self.settings.metrics_host, self.settings.metrics_port).start()
            self.metrics_port = self._metrics_runner.addresses[0][1]
        interval = self.settings.log_upload_interval
        self._tasks = [asyncio.create_task(self.flusher.run(self.stopping), name="flusher"),
                       asyncio.create_task(every(interval, self.stopping, self.uploader.upload_cycle),
                                           name="log-uploader")]
        if self.poller is not None:
            self._tasks.append(asyncio.create_task(every(interval, self.stopping, self.poller.poll_once),
                                                   name="dashboard-poller"))
        if self.spool.sealed():
            self.flusher.wake()  # a predecessor's acknowledged events go first
        log.info("collector started", extra={
            "port": self.port, "metrics_port": self.metrics_port, "storage": self.store.redacted_url, "cluster": self.settings.cluster_name,
            "namespace": self.settings.namespace, "writer": self.writer, "spool_bytes": self.spool.bytes,
            "dashboard_url": self.settings.dashboard_url or None})

    async def shutdown(self) -> int:
        """Stop accepting, upload everything once more, register the final flush. 0 if nothing is left."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.shutdown_grace
        self.ingest.accepting = False
        self.stopping.set()
        self.flusher.wake()
        if self._runner is not None:
            await self._runner.cleanup()  # stops listening; waits for requests in flight
        if self._metrics_runner is not None:
            await self._metrics_runner.cleanup()
        _, pending = await asyncio.wait(self._tasks, timeout=max(0.0, deadline - loop.time()) / 2)
        for task in pending:  # a storage call hanging on a dead endpoint
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

        remaining = lambda: max(0.1, deadline - loop.time())  # noqa: E731
        try:  # the spooled events, the logs' last bytes and the dashboard's last answers, side by side
            events_ok, logs_ok, *_ = await asyncio.wait_for(asyncio.gather(
                self.flusher.flush_all(deadline=deadline), self.uploader.upload_cycle(),
                *([self.poller.poll_once()] if self.poller else [])), remaining())
        except asyncio.TimeoutError:
            events_ok = logs_ok = False
        flushed = False
        if events_ok and logs_ok:
            try:
                await asyncio.wait_for(self.registry.write_flushed(), remaining())
                flushed = True
            except Exception as exc:  # noqa: BLE001 - reported below; the exit code says it
                log.error("flushed records not written", extra={"error": repr(exc)})
        log.info("collector stopped", extra={
            "events_flushed": events_ok, "logs_uploaded": logs_ok, "index_flushed": flushed,
            "spool_bytes_left": self.spool.bytes})
        return 0 if flushed else 1


async def run(settings: Settings) -> int:
    # Few threads (fdatasync, gzip, file and storage I/O): each thread that allocates gets its own malloc
    # arena, and with the default pool the arenas' retained memory adds tens of MB of RSS under load.
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=4, thread_name_prefix="collector"))
    collector = Collector(settings)
    await collector.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, collector.stopping.set)
    await collector.stopping.wait()
    log.info("collector stopping", extra={"grace_s": settings.shutdown_grace})
    return await collector.shutdown()


def main(settings: Settings) -> int:
    return asyncio.run(run(settings))
