"""On the head only: poll the live dashboard for what Ray 2.60 does not send as events.

Placement groups and submission jobs have no RayEvents in 2.60 (fixtures/ray/README.txt, surprise 3), and
serve applications, cluster metadata, timezone and cluster status are not events at all. Each answer is
stored byte for byte at `layout.endpoint_key(ref, endpoint, writer)`, so the server can answer exactly as
the dashboard did. The session comes from the dashboard's own /api/version answer (`session_name`), never
from this process: after a head restart the answers go to the new session.

Only 200 answers are stored (e.g. serve answers 501 when Serve is not installed: nothing is stored, and the
server shows what a dashboard without Serve shows). An answer equal to the last one stored for the same
session and endpoint is not stored again; the newest key of an endpoint is its latest answer. The
/api/version answer itself is stored too (endpoint `version`: the Ray commit the dashboard shows).

Ray Data: `/api/data/datasets/{job_id}` per job, stored as endpoint `datasets_{job_id}`. Each such request
makes Ray run an actor task (`_StatsActor.get_datasets`) in the session itself, so a job is polled only
while it may still change: while it runs, and once more after it ended, then never again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Callable

import aiohttp

from rayhistory import layout, ray_token
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
DATASETS_PATH = "/api/data/datasets/{job_id}"
_ENDED = ("STOPPED", "SUCCEEDED", "FAILED")


def datasets_endpoint(job_id: str) -> str:
    return f"datasets_{job_id}"


def jobs_to_poll_for_datasets(jobs_body: bytes, polled_after_end: set[str]) -> list[str]:
    """Job ids (hex) whose datasets may still change: running jobs, and ended ones not yet polled since they
    ended (pure). Anything unreadable in the answer is skipped."""
    try:
        jobs = json.loads(jobs_body)
    except ValueError:
        return []
    out = []
    for job in jobs if isinstance(jobs, list) else []:
        job_id = job.get("job_id") if isinstance(job, dict) else None
        if not isinstance(job_id, str) or not layout.is_hex_id(job_id) or job_id in polled_after_end:
            continue
        out.append(job_id)
    return sorted(set(out))


def ended_jobs(jobs_body: bytes) -> set[str]:
    """Job ids (hex) the jobs answer says have ended (pure)."""
    try:
        jobs = json.loads(jobs_body)
    except ValueError:
        return set()
    return {j["job_id"] for j in (jobs if isinstance(jobs, list) else [])
            if isinstance(j, dict) and isinstance(j.get("job_id"), str) and j.get("status") in _ENDED}


def session_of_version_answer(body: bytes) -> str | None:
    """The session name in the dashboard's /api/version answer, if it is a valid one."""
    try:
        name = json.loads(body).get("session_name", "")
        return layout.check_session(name)
    except (ValueError, AttributeError, layout.LayoutError):
        return None


class DashboardPoller:
    def __init__(self, dashboard_url: str, store: Store, namespace: str, cluster: str, writer: str,
                 metrics: CollectorMetrics, timeout_s: float = 10.0,
                 ray_token: Callable[[], str | None] | None = None):
        self.base = dashboard_url.rstrip("/")
        # Ray's token auth (rayhistory.ray_token): without it a token-mode head answers every poll 401
        self.ray_token = ray_token or (lambda: None)
        self.store = store
        self.namespace = namespace
        self.cluster = cluster
        self.writer = writer
        self.metrics = metrics
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._last_digest: dict[tuple[str, str], bytes] = {}
        self._datasets_done: dict[str, set[str]] = {}  # session -> jobs polled for datasets after they ended

    async def _get(self, http: aiohttp.ClientSession, path: str) -> tuple[int, bytes]:
        async with http.get(self.base + path, allow_redirects=False) as resp:
            return resp.status, await resp.read()

    async def poll_once(self) -> bool:
        """Poll every endpoint once and store changed answers; False if the dashboard or storage failed."""
        try:
            auth = ray_token.headers(self.ray_token())
        except ray_token.RayTokenError as exc:
            log.warning("no Ray token to poll the dashboard with", extra={"error": str(exc)})
            return False
        async with aiohttp.ClientSession(timeout=self.timeout, headers=auth) as http:
            try:
                status, body = await self._get(http, VERSION_PATH)
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                log.info("dashboard not reachable", extra={"url": self.base, "error": repr(exc)})
                return False
            session = session_of_version_answer(body) if status == 200 else None
            if session is None:
                if status in (401, 403):
                    self.metrics.endpoint_polls.labels("version", f"status_{status}").inc()
                    log.warning("the dashboard wants Ray's token (RAY_AUTH_MODE=token): set RAY_AUTH_TOKEN or "
                                "--ray-auth-token(-path) on the collector", extra={"status": status,
                                                                                   "token_sent": bool(auth)})
                    return False
                log.warning("dashboard /api/version has no session name", extra={"status": status})
                return False
            ref = SessionRef(self.namespace, self.cluster, session)
            ok = await self._store_answer(ref, "version", status, body)
            answers: dict[str, bytes] = {}
            for endpoint, path in ENDPOINTS.items():
                got = await self._poll(http, ref, endpoint, path)
                ok = ok and got is not None
                if got:
                    answers[endpoint] = got
            if "jobs" in answers:
                ok = await self._poll_datasets(http, ref, answers["jobs"]) and ok
        return ok

    async def _poll(self, http: aiohttp.ClientSession, ref: SessionRef, endpoint: str, path: str) -> bytes | None:
        """The 200 answer of one endpoint, stored if it changed: b'' for another status, None on failure."""
        try:
            status, body = await self._get(http, path)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            self.metrics.endpoint_polls.labels(endpoint, "unreachable").inc()
            log.info("dashboard poll failed", extra={"endpoint": endpoint, "error": repr(exc)})
            return None
        if not await self._store_answer(ref, endpoint, status, body):
            return None
        return body if status == 200 else b""

    async def _store_answer(self, ref: SessionRef, endpoint: str, status: int, body: bytes) -> bool:
        """Store a 200 answer that differs from the last one stored; False on a storage error."""
        if status != 200:
            self.metrics.endpoint_polls.labels(endpoint, f"status_{status}").inc()
            return True
        digest = hashlib.sha256(body).digest()
        if self._last_digest.get((ref.session, endpoint)) == digest:
            self.metrics.endpoint_polls.labels(endpoint, "unchanged").inc()
            return True
        try:
            await self.store.put(layout.endpoint_key(ref, endpoint, self.writer), body)
        except Exception as exc:  # noqa: BLE001 - storage errors: stored at the next poll
            self.metrics.upload_errors.labels("endpoints").inc()
            log.warning("endpoint answer not stored", extra={"endpoint": endpoint, "error": repr(exc)})
            return False
        self._last_digest[(ref.session, endpoint)] = digest
        self.metrics.endpoint_polls.labels(endpoint, "stored").inc()
        return True

    async def _poll_datasets(self, http: aiohttp.ClientSession, ref: SessionRef, jobs_body: bytes) -> bool:
        done = self._datasets_done.setdefault(ref.session, set())
        ended = ended_jobs(jobs_body)
        ok = True
        for job_id in jobs_to_poll_for_datasets(jobs_body, done):
            got = await self._poll(http, ref, datasets_endpoint(job_id), DATASETS_PATH.format(job_id=job_id))
            if got is None:
                ok = False
            elif job_id in ended:
                done.add(job_id)  # its last answer is in: never asked again
        return ok
