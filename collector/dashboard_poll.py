"""On the head only: poll the live dashboard for what Ray 2.60 does not send as events.

Placement groups and submission jobs have no RayEvents in 2.60 (fixtures/ray/README.txt, surprise 3), and
serve applications, cluster metadata, timezone and cluster status are not events at all. Each answer is
stored byte for byte at `layout.endpoint_key(ref, endpoint, writer)`, so the server can answer exactly as
the dashboard did. The session comes from the dashboard's own /api/version answer (`session_name`), never
from this process: after a head restart the answers go to the new session.

Only 200 answers are stored (e.g. serve answers 501 when Serve is not installed: nothing is stored, and the
server shows what a dashboard without Serve shows). An answer equal to the last one stored for the same
session and endpoint is not stored again; the newest key of an endpoint is its latest answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging

import aiohttp

from rayhistory import layout
from rayhistory.layout import SessionRef
from rayhistory.store import Store

from .metrics import CollectorMetrics

log = logging.getLogger(__name__)

# endpoint name (the storage key's segment) -> the dashboard path polled
ENDPOINTS: dict[str, str] = {
    "placement_groups": "/api/v0/placement_groups?detail=1&limit=10000",
    "jobs": "/api/jobs/",
    "serve_applications": "/api/serve/applications/",
    "cluster_metadata": "/api/v0/cluster_metadata",
    "timezone": "/timezone",
    "cluster_status": "/api/cluster_status?format=1",
}
VERSION_PATH = "/api/version"


def session_of_version_answer(body: bytes) -> str | None:
    """The session name in the dashboard's /api/version answer, if it is a valid one."""
    try:
        name = json.loads(body).get("session_name", "")
        return layout.check_session(name)
    except (ValueError, AttributeError, layout.LayoutError):
        return None


class DashboardPoller:
    def __init__(self, dashboard_url: str, store: Store, namespace: str, cluster: str, writer: str,
                 metrics: CollectorMetrics, timeout_s: float = 10.0):
        self.base = dashboard_url.rstrip("/")
        self.store = store
        self.namespace = namespace
        self.cluster = cluster
        self.writer = writer
        self.metrics = metrics
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._last_digest: dict[tuple[str, str], bytes] = {}

    async def _get(self, http: aiohttp.ClientSession, path: str) -> tuple[int, bytes]:
        async with http.get(self.base + path, allow_redirects=False) as resp:
            return resp.status, await resp.read()

    async def poll_once(self) -> bool:
        """Poll every endpoint once and store changed answers; False if the dashboard or storage failed."""
        ok = True
        async with aiohttp.ClientSession(timeout=self.timeout) as http:
            try:
                status, body = await self._get(http, VERSION_PATH)
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                log.info("dashboard not reachable", extra={"url": self.base, "error": repr(exc)})
                return False
            session = session_of_version_answer(body) if status == 200 else None
            if session is None:
                log.warning("dashboard /api/version has no session name", extra={"status": status})
                return False
            ref = SessionRef(self.namespace, self.cluster, session)
            for endpoint, path in ENDPOINTS.items():
                try:
                    status, body = await self._get(http, path)
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    self.metrics.endpoint_polls.labels(endpoint, "unreachable").inc()
                    log.info("dashboard poll failed", extra={"endpoint": endpoint, "error": repr(exc)})
                    ok = False
                    continue
                if status != 200:
                    self.metrics.endpoint_polls.labels(endpoint, f"status_{status}").inc()
                    continue
                digest = hashlib.sha256(body).digest()
                if self._last_digest.get((session, endpoint)) == digest:
                    self.metrics.endpoint_polls.labels(endpoint, "unchanged").inc()
                    continue
                try:
                    await self.store.put(layout.endpoint_key(ref, endpoint, self.writer), body)
                except Exception as exc:  # noqa: BLE001 - storage errors: stored at the next poll
                    self.metrics.upload_errors.labels("endpoints").inc()
                    log.warning("endpoint answer not stored", extra={"endpoint": endpoint, "error": repr(exc)})
                    ok = False
                    continue
                self._last_digest[(session, endpoint)] = digest
                self.metrics.endpoint_polls.labels(endpoint, "stored").inc()
        return ok
