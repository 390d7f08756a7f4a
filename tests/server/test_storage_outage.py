"""Storage that hangs while the server runs: requests get 503 with Retry-After (never 500, never a hang), the
stall shows in /metrics and in /healthz's detail, and liveness stays 200 (cached sessions are still served).

The hanging storage is real: a TCP endpoint on 127.0.0.1 that accepts and never answers (tests/backends.py),
used as the S3 endpoint of the real s3fs client, with a 0.5 s storage timeout.
"""

from __future__ import annotations

import asyncio
import time

from rayhistory.store import Store
from tests.backends import hanging_s3
from tests.conftest import SESSION_NAME
from tests.server.fixture_store import running_server, write_fixture_session


def metric(text: str, name: str) -> float:
    return next(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " "))


async def test_a_hanging_store_answers_503_and_shows_in_metrics_and_healthz():
    with hanging_s3() as s3:
        store = Store("s3://history/store", s3.s3_options(), timeout_s=0.5)
        async with running_server(store, index_refresh_interval=3600) as (client, internal, _state):
            # (already degraded, maybe: the server's first index refresh hangs from its start on; a busy
            # machine answers this after the 0.5 s timeout. "ok" is test_healthz_is_ok_with_healthy_storage's)
            health = await (await internal.get("/healthz")).json()
            assert health["storage"]["timeout_s"] == 0.5
            for path in ("/clusters", f"/s/ray/demo/{SESSION_NAME}/api/v0/tasks?detail=1",
                         f"/s/ray/demo/{SESSION_NAME}/", f"/s/ray/demo/{SESSION_NAME}/api/jobs/"):
                started = time.monotonic()
                resp = await client.get(path)
                assert resp.status == 503, (path, resp.status, await resp.text())
                assert int(resp.headers["Retry-After"]) >= 1, path
                assert time.monotonic() - started < 5, path
            metrics = await (await internal.get("/metrics")).text()
            assert metric(metrics, "rayhistory_storage_timeouts_total") >= 2
            assert metric(metrics, "rayhistory_storage_calls_in_flight") >= 1
            assert metric(metrics, "rayhistory_storage_oldest_call_age_seconds") > 0
            assert metric(metrics, "rayhistory_storage_timeout_seconds") == 0.5
            assert 'rayhistory_http_requests_total{route="/clusters",status="503"} 1.0' in metrics
            resp = await internal.get("/healthz")  # liveness: 200, detail says degraded
            health = await resp.json()
            assert resp.status == 200 and health["status"] == "degraded"
            assert health["storage"]["timeouts"] >= 2 and health["storage"]["in_flight"] >= 1
            ready = await client.get("/healthz")  # readiness, public port: 200, no detail
            assert ready.status == 200 and await ready.json() == {"status": "degraded"}


async def test_healthz_is_ok_with_healthy_storage(tmp_path):
    store = Store(f"file://{tmp_path}/store")
    ref = await write_fixture_session(store, with_logs=False)
    async with running_server(store) as (client, internal, _state):
        assert (await client.get(f"/s/{ref.tail}/api/jobs/")).status == 200
        health = await (await internal.get("/healthz")).json()
        assert health["status"] == "ok" and health["storage"]["timeouts"] == 0
        assert health["storage"]["calls"] > 0 and health["sessions_cached"] == 1
        assert await (await client.get("/healthz")).json() == {"status": "ok"}
    await asyncio.sleep(0)
