"""Live sessions: proxied to the running cluster's own dashboard, found through Kubernetes only.

Which dashboard a session URL reaches is decided here from three facts and nothing a client sends
(no cookie, header or query parameter names a target):
- the session index (rayhistory.index): dead sessions are always served from storage;
- the RayCluster object (ray.io/v1) in the session's namespace: gone means the session is dead even if no
  one marked it; a session older than the cluster's newest one was ended by a head restart;
- the RayCluster's head Service (status.head.serviceName, else "{name}-head-svc") and its port named
  "dashboard" (else status.endpoints.dashboard, else 8265).

When the live dashboard cannot be reached, or the server has no Kubernetes access, a live session is served
from storage as it stands, marked incomplete; with `--live-sessions storage` every live session is (a busy
head is never asked). A proxied session's index.html gets the banner (ui.py) saying it is live and proxied;
the server's own paths under a session (`rayhistory/...`) are never proxied. With Kubernetes access, the server also marks dead (in the
index) the live sessions whose cluster is gone, every `sweep_interval` seconds. Only GET and HEAD are proxied: a history server's Ingress is
no place to submit or stop jobs on a running cluster.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
from aiohttp import web

from rayhistory import ray_token
from rayhistory.index import SessionInfo, mark_dead
from rayhistory.layout import SessionRef
from rayhistory.store import Store

from .ui import render_dashboard_index, session_ref

log = logging.getLogger(__name__)

RAYCLUSTER_GROUP, RAYCLUSTER_VERSION, RAYCLUSTER_PLURAL = "ray.io", "v1", "rayclusters"
DEFAULT_DASHBOARD_PORT = 8265
# Response headers that tell the UI (and people with curl) where an answer came from.
SOURCE_HEADER = "X-Rayhistory-Source"
INCOMPLETE_HEADER = "X-Rayhistory-Incomplete"
MAX_INDEX_BYTES = 1 << 20  # a head's index.html bigger than this is passed on without the banner

_FORWARD_REQUEST_HEADERS = ("Accept", "Authorization", "Range", "If-None-Match", "If-Modified-Since")
_FORWARD_RESPONSE_HEADERS = (
    "Content-Type", "Content-Disposition", "Cache-Control", "ETag", "Last-Modified", "Content-Range",
)


# ---- pure decisions ------------------------------------------------------------------------------

@dataclass(frozen=True)
class ClusterView:
    """What Kubernetes says about one RayCluster."""

    exists: bool
    dashboard_url: str | None = None  # http://host:port of the head's dashboard, when known


def dashboard_url(raycluster: dict[str, Any], service: dict[str, Any] | None) -> str | None:
    """The head dashboard's base URL from a RayCluster and its head Service (pure)."""
    status = raycluster.get("status") or {}
    port: int | None = None
    host: str | None = None
    if service:
        spec = service.get("spec") or {}
        for entry in spec.get("ports") or []:
            if entry.get("name") == "dashboard":
                port = int(entry["port"])
        cluster_ip = spec.get("clusterIP")
        if cluster_ip and cluster_ip != "None":
            host = cluster_ip
        else:  # headless Service: its DNS name resolves to the head pod
            meta = service.get("metadata") or {}
            host = f"{meta.get('name')}.{meta.get('namespace')}.svc"
    if port is None:
        port = int((status.get("endpoints") or {}).get("dashboard") or DEFAULT_DASHBOARD_PORT)
    if host is None:
        return None
    if ":" in host:  # IPv6 cluster IP
        host = f"[{host}]"
    return f"http://{host}:{port}"


def head_service_name(raycluster: dict[str, Any]) -> str:
    status = raycluster.get("status") or {}
    name = (status.get("head") or {}).get("serviceName")
    return name or f"{raycluster['metadata']['name']}-head-svc"


@dataclass(frozen=True)
class Route:
    """Where one session's requests go."""

    kind: Literal["proxy", "storage"]
    target: str | None = None  # the live dashboard, for kind == "proxy"
    dead: bool = False  # the session is over (marked, or its cluster is gone or has a newer session)
    incomplete: str = ""  # why an answer from storage may lack the session's latest data


LiveSessions = Literal["proxy", "storage"]
FROM_STORAGE = "live session, answered from what its collectors flushed (--live-sessions storage)"


def decide_route(info: SessionInfo, sessions: list[SessionInfo], cluster: ClusterView | None,
                 live_sessions: LiveSessions = "proxy") -> Route:
    """Pure: proxy a live session to its cluster's dashboard, or serve it from storage (and why).

    `sessions` are the index's sessions of the same cluster; `cluster` is None without Kubernetes access.
    With `live_sessions` "storage" no session is proxied: Kubernetes still says which are over.
    """
    route = _decide_route(info, sessions, cluster)
    if route.kind == "proxy" and live_sessions == "storage":
        return Route("storage", incomplete=FROM_STORAGE)
    return route


def _decide_route(info: SessionInfo, sessions: list[SessionInfo], cluster: ClusterView | None) -> Route:
    if info.state == "dead":
        return Route("storage", dead=True)
    if cluster is None:
        return Route("storage", incomplete="live session; this server has no Kubernetes access to reach its dashboard")
    if not cluster.exists:
        return Route("storage", dead=True)
    newest = max(sessions, key=lambda s: (s.start_ms, s.session), default=info)
    if (newest.start_ms, newest.session) > (info.start_ms, info.session):
        return Route("storage", dead=True)  # the head restarted: this session ended when the next began
    if cluster.dashboard_url is None:
        return Route("storage", incomplete="live session; its cluster has no head service yet")
    return Route("proxy", target=cluster.dashboard_url)


def effective_state(info: SessionInfo, sessions: list[SessionInfo], cluster: ClusterView | None) -> str:
    """live or dead, as /clusters should show it: Kubernetes knows more than an unmarked index."""
    return "dead" if decide_route(info, sessions, cluster).dead else info.state


# ---- Kubernetes ------------------------------------------------------------------------------------

def load_api_client() -> Any | None:
    """A kubernetes ApiClient with the server's own credentials: in-cluster config, else the kubeconfig
    ($KUBECONFIG, read now); None when neither exists. Each call gets a Configuration of its own."""
    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        try:
            config.load_kube_config(config_file=os.environ.get("KUBECONFIG"), client_configuration=configuration)
        except (config.ConfigException, FileNotFoundError, TypeError):
            return None
    return client.ApiClient(configuration)


class KubernetesClusters:
    """Reads RayClusters and their head Services with the kubernetes client, cached for `ttl` seconds."""

    def __init__(self, api_client: Any, ttl: float = 5.0):
        from kubernetes import client

        self._custom = client.CustomObjectsApi(api_client)
        self._core = client.CoreV1Api(api_client)
        self._ttl = ttl
        self._cache: dict[tuple[str, str], tuple[float, ClusterView]] = {}

    @classmethod
    def from_environment(cls, ttl: float = 5.0) -> KubernetesClusters | None:
        """In-cluster config, else the kubeconfig; None when neither exists (local runs, the demo)."""
        api_client = load_api_client()
        return cls(api_client, ttl) if api_client is not None else None

    def _read(self, namespace: str, name: str) -> ClusterView:
        from kubernetes.client.exceptions import ApiException

        try:
            raycluster = self._custom.get_namespaced_custom_object(
                RAYCLUSTER_GROUP, RAYCLUSTER_VERSION, namespace, RAYCLUSTER_PLURAL, name,
            )
        except ApiException as exc:
            if exc.status == 404:
                return ClusterView(exists=False)
            raise
        try:
            service = self._core.read_namespaced_service(head_service_name(raycluster), namespace).to_dict()
            # to_dict() uses snake_case: bring the two fields we read back to the API's names
            service["spec"]["clusterIP"] = service["spec"].get("cluster_ip")
        except ApiException as exc:
            if exc.status != 404:
                raise
            service = None
        return ClusterView(exists=True, dashboard_url=dashboard_url(raycluster, service))

    async def view(self, namespace: str, name: str) -> ClusterView | None:
        """The cluster as Kubernetes sees it; None when the API cannot tell (error: decide nothing)."""
        key = (namespace, name)
        cached = self._cache.get(key)
        if cached and time.monotonic() - cached[0] < self._ttl:
            return cached[1]
        try:
            view = await asyncio.to_thread(self._read, namespace, name)
        except Exception as exc:  # noqa: BLE001 - an API outage must not break the history
            log.warning("kubernetes lookup failed", extra={"namespace": namespace, "cluster": name, "error": str(exc)})
            return None
        self._cache[key] = (time.monotonic(), view)
        return view


# ---- the proxy -------------------------------------------------------------------------------------

# The index's view of a session and of its cluster's sessions (the server's SessionIndex).
SessionLookup = Callable[[SessionRef], Awaitable[tuple[SessionInfo | None, list[SessionInfo]]]]


class LiveProxy:
    """Routes requests under /s/{namespace}/{cluster}/{session}/ to a live dashboard or to storage."""

    def __init__(self, clusters: KubernetesClusters | None, lookup: SessionLookup, timeout: float = 30.0,
                 forward_authorization: bool = True, ray_token: Callable[[], str | None] | None = None,
                 live_sessions: LiveSessions = "proxy", status_path: str = "rayhistory/status"):
        self.clusters = clusters
        self.lookup = lookup
        self.live_sessions = live_sessions
        # the server's own paths under a session prefix (the banner's status): never the head's to answer
        self.own_prefix = status_path.split("/", 1)[0] + "/"
        self.status_path = status_path
        # Ray's own token auth (rayhistory.ray_token): a token-mode head answers 401 without it
        self.ray_token = ray_token or (lambda: None)
        # with --auth kubernetes the caller's Authorization is their Kubernetes token: never sent to a Ray head
        self.forward_headers = tuple(h for h in _FORWARD_REQUEST_HEADERS
                                     if forward_authorization or h != "Authorization")
        self.timeout = aiohttp.ClientTimeout(total=timeout, connect=3.0)
        self._client: aiohttp.ClientSession | None = None

    async def route(self, ref: SessionRef) -> Route | None:
        """None for a session the index does not know (the storage handlers answer 404)."""
        info, sessions = await self.lookup(ref)
        if info is None:
            return None
        if info.state == "dead":
            return Route("storage", dead=True)
        cluster = await self.clusters.view(ref.namespace, ref.cluster) if self.clusters else None
        if self.clusters is not None and cluster is None:
            return Route("storage", incomplete="live session; Kubernetes did not answer")
        return decide_route(info, sessions, cluster, self.live_sessions)

    @web.middleware
    async def middleware(self, request: web.Request, handler):
        if "session" not in request.match_info or "namespace" not in request.match_info:
            return await handler(request)
        path = _origin_path(request)
        if path.count("/") < 5 or path.split("/", 5)[5].startswith(self.own_prefix):
            return await handler(request)  # /s/{ns}/{cluster}/{session}: the slash redirect; our own paths
        ref = session_ref(request)
        route = await self.route(ref)
        if route is None:
            return await handler(request)
        if route.kind == "proxy" and request.method in ("GET", "HEAD"):
            try:
                return await self._forward(request, route.target or "", ref)
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                log.info("live dashboard unreachable; serving from storage",
                         extra={"session": ref.tail, "error": f"{type(exc).__name__}: {exc}"})
                route = Route("storage", incomplete="live dashboard unreachable")
            except RayTokenRefused as exc:
                log.warning("the live dashboard refused this server's Ray token (or wants one: RAY_AUTH_MODE=token); "
                            "serving from storage", extra={"session": ref.tail, "status": exc.status,
                                                           "token_sent": exc.token_sent})
                route = Route("storage", incomplete="the live dashboard wants Ray's token (RAY_AUTH_MODE=token), "
                                                    "which this server does not have")
        elif route.kind == "proxy":
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD"])
        response = await handler(request)
        response.headers.setdefault(SOURCE_HEADER, "storage")
        if route.incomplete:
            response.headers[INCOMPLETE_HEADER] = route.incomplete
        return response

    async def _forward(self, request: web.Request, target: str, ref: SessionRef) -> web.StreamResponse:
        # /s/{ns}/{cluster}/{session}/<rest> -> <target>/<rest>, query string unchanged
        rest = _origin_path(request).split('/', 5)[5]
        url = f"{target}/{rest}"
        if request.rel_url.raw_query_string:
            url += "?" + request.rel_url.raw_query_string
        headers = {h: request.headers[h] for h in self.forward_headers if h in request.headers}
        try:
            headers.update(ray_token.headers(self.ray_token()))
        except ray_token.RayTokenError as exc:
            log.warning("no Ray token for the live dashboard", extra={"error": str(exc)})
        if self._client is None:
            self._client = aiohttp.ClientSession(timeout=self.timeout, auto_decompress=True)
        async with self._client.request(request.method, url, headers=headers, allow_redirects=False) as upstream:
            if upstream.status in (401, 403) and "Authorization" not in headers:
                # Ray's token auth, not the caller's: the history in storage is better than Ray's refusal
                raise RayTokenRefused(upstream.status, ray_token.HEADER in headers)
            head = b""
            if rest == "" and request.method == "GET" and upstream.status == 200 \
                    and upstream.content_type == "text/html":
                head = await _read_up_to(upstream, MAX_INDEX_BYTES + 1)
                if len(head) <= MAX_INDEX_BYTES:
                    return self._index_with_banner(head, upstream, ref)
            response = web.StreamResponse(status=upstream.status)
            for name in _FORWARD_RESPONSE_HEADERS:
                if name in upstream.headers:
                    response.headers[name] = upstream.headers[name]
            if "Location" in upstream.headers:
                # the live dashboard redirects within itself: keep the browser under this session's prefix
                response.headers["Location"] = upstream.headers["Location"].lstrip("/")
            response.headers[SOURCE_HEADER] = "live"
            await response.prepare(request)
            if head:  # an index.html too big for the banner: passed on whole
                await response.write(head)
            async for chunk in upstream.content.iter_chunked(64 * 1024):
                await response.write(chunk)
            await response.write_eof()
            return response

    def _index_with_banner(self, body: bytes, upstream: aiohttp.ClientResponse, ref: SessionRef) -> web.Response:
        """The head's own index.html with the banner saying the session is live and proxied. Its status comes
        from the index only (`load=0`): a proxied session is never loaded."""
        body = render_dashboard_index(body, ref, f"{self.status_path}?load=0", source="live")
        headers = {name: upstream.headers[name] for name in _FORWARD_RESPONSE_HEADERS
                   if name in upstream.headers and name != "ETag"}  # the page is ours now, not the head's
        headers[SOURCE_HEADER] = "live"
        return web.Response(body=body, status=200, headers=headers)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


async def _read_up_to(upstream: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body's first `limit` bytes (all of it if shorter): content.read(n) returns only what is buffered."""
    chunks: list[bytes] = []
    size = 0
    while size < limit and (chunk := await upstream.content.read(limit - size)):
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


class RayTokenRefused(Exception):
    def __init__(self, status: int, token_sent: bool):
        super().__init__(status)
        self.status = status
        self.token_sent = token_sent


def _origin_path(request: web.Request) -> str:
    """The request target's path, still percent-encoded, without the query: the same for the origin form
    (`GET /s/... HTTP/1.1`) and the absolute form (`GET http://host/s/... HTTP/1.1`, which every HTTP/1.1 server
    must accept), whose `raw_path` starts with the scheme and authority."""
    return request.rel_url.raw_path


def lookup_from_listing(list_sessions: Callable[[], Awaitable[list[SessionInfo]]]) -> SessionLookup:
    """A SessionLookup over the server's (refreshed, cached) list of every session in the index."""
    by_cluster: dict[tuple[str, str], list[SessionInfo]] = {}
    listed: list[list[SessionInfo]] = [[]]

    async def lookup(ref: SessionRef) -> tuple[SessionInfo | None, list[SessionInfo]]:
        sessions = await list_sessions()
        if sessions is not listed[0]:  # a new listing: index it once, not on every request
            by_cluster.clear()
            for s in sessions:
                by_cluster.setdefault((s.namespace, s.cluster), []).append(s)
            listed[0] = sessions
        same = by_cluster.get((ref.namespace, ref.cluster), [])
        return next((s for s in same if s.session == ref.session), None), same

    return lookup


async def mark_gone_sessions(
    store: Store, sessions: list[SessionInfo], clusters: KubernetesClusters,
) -> list[SessionInfo]:
    """Mark dead, in the index, the live sessions whose RayCluster is gone or has a newer session.

    The operator's finalizer normally does this; this catches clusters deleted while it was down or absent.
    Index records are append-only and `mark_dead` is idempotent, so replicas doing it at once is harmless.
    """
    by_cluster: dict[tuple[str, str], list[SessionInfo]] = {}
    for s in sessions:
        by_cluster.setdefault((s.namespace, s.cluster), []).append(s)
    marked = []
    for (namespace, name), same in by_cluster.items():
        live = [s for s in same if s.state == "live"]
        if not live:
            continue
        cluster = await clusters.view(namespace, name)
        if cluster is None:  # Kubernetes did not answer: decide nothing
            continue
        for info in live:
            if decide_route(info, same, cluster).dead:
                reason = "RayCluster gone" if not cluster.exists else "a newer session of the RayCluster started"
                marked += await mark_dead(store, namespace, name, info.session, reason=f"{reason} (history server)")
    if marked:
        log.info("sessions marked dead from Kubernetes", extra={"sessions": [s.ref.tail for s in marked]})
    return marked


def setup_live_proxy(
    app: web.Application, list_sessions: Callable[[], Awaitable[list[SessionInfo]]], store: Store,
    kubernetes: bool | None = None, sweep_interval: float = 30.0, forward_authorization: bool = True,
    ray_token: Callable[[], str | None] | None = None, live_sessions: LiveSessions = "proxy",
    status_path: str = "rayhistory/status",
) -> LiveProxy:
    """Route live sessions of `app` to their clusters' dashboards, and mark dead those whose cluster is gone.

    `kubernetes`: True requires Kubernetes access (in-cluster or kubeconfig), False never uses it, None uses it
    when it is there. Without it every live session is served from storage, marked incomplete, and only
    `rayhistory mark-dead` or the operator end sessions.
    """
    clusters = KubernetesClusters.from_environment() if kubernetes is not False else None
    if kubernetes and clusters is None:
        raise RuntimeError("Kubernetes access was asked for, but there is no in-cluster config and no kubeconfig")
    log.info("live sessions", extra={"kubernetes": clusters is not None, "live_sessions": live_sessions})
    proxy = LiveProxy(clusters, lookup_from_listing(list_sessions), forward_authorization=forward_authorization,
                      ray_token=ray_token, live_sessions=live_sessions, status_path=status_path)
    app.middlewares.append(proxy.middleware)

    async def lifetime(app: web.Application):
        sweeper = None
        if clusters is not None:
            sweeper = asyncio.create_task(_sweep(list_sessions, store, clusters, sweep_interval), name="live sweep")
        yield
        if sweeper is not None:
            sweeper.cancel()
            await asyncio.gather(sweeper, return_exceptions=True)
        await proxy.close()

    app.cleanup_ctx.append(lifetime)
    return proxy


async def _sweep(list_sessions, store: Store, clusters: KubernetesClusters, interval: float) -> None:
    while True:
        try:
            await mark_gone_sessions(store, await list_sessions(), clusters)
        except Exception:  # noqa: BLE001 - a storage or API hiccup: try again next round
            log.exception("marking gone sessions dead failed")
        await asyncio.sleep(interval)
