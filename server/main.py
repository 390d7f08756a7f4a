"""rayhistory server: the Ray Dashboard, its API and logs, for every session in the history store."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Literal

from aiohttp import web
from pydantic import Field, SecretStr

from rayhistory.config import CommonSettings
from rayhistory.store import redact_url

log = logging.getLogger(__name__)


class Settings(CommonSettings):
    host: str = Field("0.0.0.0", description="address both ports listen on")
    port: int = Field(8080, description="public port: dashboard UI, API, /clusters (what the Ingress exposes)")
    internal_port: int = Field(
        8081, description="internal port: /internal/prewarm, /metrics, /healthz (never exposed by the Ingress)",
    )
    prewarm_token: SecretStr = Field(
        SecretStr(""), description="bearer token /internal/prewarm requires; without one the server does not start "
        "unless --insecure-internal-port is given",
    )
    insecure_internal_port: bool = Field(
        False, description="serve /internal/prewarm without a token (local runs only: anyone who reaches the "
        "internal port can then make this replica load any session)",
    )
    cache_max_sessions: int = Field(50, ge=1, description="parsed sessions kept in memory per replica")
    cache_max_bytes: int = Field(4 << 30, ge=1 << 20, description="measured bytes of parsed sessions kept per replica")
    load_timeout: float = Field(
        120.0, gt=0, description="seconds a request waits for a session load (the load itself keeps going)",
    )
    max_concurrent_loads: int = Field(
        2, ge=1, description="session loads one replica runs at once (a load's peak memory is several snapshots')",
    )
    build_workers: int = Field(
        0, ge=0, le=254, description="worker processes that parse a large session's stored events in parallel "
        "(0: one per core this process may use, by its affinity and its CPU limit; 1: parse in the server's own "
        "process)",
    )
    build_workers_min_bytes: int = Field(
        32 << 20, ge=0, description="stored event bytes from which a load uses the worker processes (below, "
        "starting them costs more than it saves: about 0.3 CPU-s each)",
    )
    tasks_on_disk_above_bytes: int = Field(
        -1, ge=-1, description="a session whose tasks would hold more than this many bytes in memory keeps them "
        "in a local file (task_spill_dir) and decodes them a chunk at a time when asked (-1: half of "
        "cache_max_bytes; 0: never)",
    )
    task_spill_dir: str = Field(
        "", description="folder of those files (default: the system's temporary folder); each is unlinked at once "
        "and goes with its session",
    )
    disk_task_chunks: int = Field(
        16, ge=1, le=4096, description="decoded chunks (16,384 tasks each) a session on disk keeps in memory",
    )
    max_inflated_bytes: int = Field(
        256 << 20, ge=1 << 20, description="most bytes one stored event batch may inflate to; past it the object is "
        "corrupt and its session incomplete (compacted snapshots: cache_max_bytes)",
    )
    max_inflate_ratio: float = Field(
        100.0, gt=1, description="most one stored object may inflate per compressed byte (Ray's events gzip about "
        "11x); past it the object is corrupt. Objects inflating to 1 MiB or less are never refused by the ratio",
    )
    index_refresh_interval: float = Field(
        15.0, gt=0, description="seconds between reads of the session index; also how often live sessions refresh",
    )
    live_sessions: Literal["proxy", "storage"] = Field(
        "proxy", description="how live sessions are answered: proxy (to the running cluster's own dashboard, "
        "found through Kubernetes) or storage (from what its collectors have flushed, reloaded incrementally at "
        "most every --live-reload-s: the head is never asked)",
    )
    live_reload_s: float = Field(
        15.0, gt=0, description="seconds a live session served from storage may be behind what storage holds "
        "(it is reloaded incrementally, at most this often, while it is being looked at)",
    )
    stale_after: float = Field(
        3600.0, ge=0, description="seconds without any write after which a live session shows as stale in the "
        "picker and its banner (a recording that stopped without a mark-dead; `rayhistory mark-dead` ends it); "
        "0: never",
    )
    dashboard_dir: str = Field("", description="Ray dashboard build to serve (default: the one in the ray package)")
    kubernetes: Literal["auto", "on", "off"] = Field(
        "auto", description="use Kubernetes to find live clusters' dashboards and gone clusters: auto (in-cluster "
        "credentials or KUBECONFIG when present), on (required), off (storage and mark-dead decide)",
    )
    ray_auth_token: SecretStr = Field(
        SecretStr(""), description="Ray's dashboard token the live proxy sends to token-mode heads "
        "(RAY_AUTH_MODE=token); empty: the token file, then RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH",
    )
    ray_auth_token_path: str = Field("", description="file holding Ray's dashboard token (read on every use)")
    auth: Literal["off", "kubernetes"] = Field(
        "off", description="who may see what (docs/security.md): kubernetes (a bearer token or the /login cookie, "
        "verified with TokenReview; each session's namespace checked with a SubjectAccessReview) or off (anyone "
        "who reaches the public port sees everything: local runs and the demo only; a warning at start)",
    )
    auth_verb: str = Field("get", pattern=r"^[a-z*]{1,63}$",
                           description="--auth kubernetes: the verb the caller needs on the session's namespace")
    auth_group: str = Field("ray.io", pattern=r"^[a-z0-9.-]{0,253}$",
                            description="--auth kubernetes: the API group of that resource")
    auth_resource: str = Field("rayclusters", pattern=r"^[a-z0-9*/-]{1,253}$",
                               description="--auth kubernetes: the resource the caller needs the verb on")
    auth_cache_ttl_s: float = Field(
        30.0, ge=0, description="--auth kubernetes: seconds a token's review and an access decision are reused "
        "(a revoked token or RoleBinding takes effect within this)",
    )
    auth_review_timeout_s: float = Field(5.0, gt=0, description="--auth kubernetes: seconds one review may take")
    auth_token_audiences: list[str] = Field(
        default_factory=list, description="--auth kubernetes: audiences the TokenReview asks for (JSON list; "
        "empty: the API server's own)",
    )
    auth_trusted_proxies: list[str] = Field(
        default_factory=list, description="--auth kubernetes: addresses or CIDRs (JSON list) of a fronting proxy "
        "(oauth2-proxy style) whose identity headers are believed; from anywhere else they are ignored",
    )
    auth_proxy_identity: Literal["access-token", "user-headers"] = Field(
        "access-token", description="--auth kubernetes, from a trusted proxy: access-token (its "
        "X-Forwarded-Access-Token, verified with TokenReview) or user-headers (its X-Forwarded-User and "
        "X-Forwarded-Groups, believed as they are)",
    )


class InsecureInternalPort(RuntimeError):
    pass


def check_internal_port(settings: Settings) -> None:
    """The internal port loads sessions on request: it needs a token, or an explicit insecure opt-in."""
    if not settings.prewarm_token.get_secret_value() and not settings.insecure_internal_port:
        raise InsecureInternalPort(
            "no --prewarm-token (RAYHISTORY_PREWARM_TOKEN): the internal port would let anyone who reaches it "
            "load any session; set a token, or pass --insecure-internal-port for a local run")
    if settings.insecure_internal_port and not settings.prewarm_token.get_secret_value():
        log.warning("the internal port takes pre-warm calls without a token (--insecure-internal-port)")


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    from .app import create_app

    check_internal_port(settings)
    public, internal = create_app(settings)
    runners = [web.AppRunner(public, access_log=None), web.AppRunner(internal, access_log=None)]
    try:
        for runner, port in zip(runners, (settings.port, settings.internal_port)):
            await runner.setup()
            await web.TCPSite(runner, settings.host, port).start()
        log.info("server started", extra={"port": settings.port, "internal_port": settings.internal_port,
                                          "storage": redact_url(settings.storage)})
        await stop.wait()
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
        log.info("server stopped")


def main(settings: Settings) -> int:
    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(settings, stop)

    try:
        asyncio.run(run())
    except InsecureInternalPort as exc:
        log.error(str(exc))
        return 2
    return 0
