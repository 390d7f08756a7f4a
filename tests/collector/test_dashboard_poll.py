"""Dashboard polling stores each answer byte for byte under the dashboard's own session.

The dashboard here is emulated: a small aiohttp app answering with the live Ray 2.60 dashboard's saved
answers (tests/fixtures/ray/api), so the byte-equality check needs no Ray start. The e2e test polls a real one.
"""

from __future__ import annotations

import json

import pytest
from aiohttp import web

from rayhistory import layout
from rayhistory.collector.dashboard_poll import (
    ENDPOINTS, DashboardPoller, datasets_endpoint, jobs_to_poll_for_datasets, session_of_version_answer,
)
from rayhistory.collector.metrics import CollectorMetrics
from rayhistory.layout import SessionRef
from rayhistory.store import Store
from tests.collector.storage_view import stored_endpoints
from tests.conftest import API, SESSION_NAME, free_port

SAVED = {entry["path"]: entry for entry in json.loads((API / "_index.json").read_text())}


def saved_answer(path: str) -> tuple[int, bytes, str]:
    entry = SAVED[path]
    return entry["status"], (API / entry["file"]).read_bytes(), entry["content_type"]


@pytest.fixture
async def dashboard():
    state = {"session": None}

    async def answer(request: web.Request) -> web.Response:
        path = request.path_qs
        if path == "/api/version" and state["session"]:
            body = json.dumps({"version": "4", "ray_version": "2.60.0", "session_name": state["session"]}).encode()
            return web.Response(body=body, content_type="application/json")
        status, body, content_type = saved_answer(path)
        return web.Response(status=status, body=body, headers={"Content-Type": content_type})

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", state
    finally:
        await runner.cleanup()


def test_the_session_comes_from_the_version_answer():
    assert session_of_version_answer(saved_answer("/api/version")[1]) == SESSION_NAME
    assert session_of_version_answer(b'{"session_name": "../etc"}') is None
    assert session_of_version_answer(b"not json") is None


async def test_answers_are_stored_byte_for_byte_under_the_dashboards_session(tmp_path, dashboard):
    url, state = dashboard
    store = Store(f"file://{tmp_path}/store")
    metrics = CollectorMetrics()
    poller = DashboardPoller(url, store, "ray", "demo", "w1", metrics)
    assert await poller.poll_once()
    ref = SessionRef("ray", "demo", SESSION_NAME)
    stored = await stored_endpoints(store, ref)
    expected = {name: saved_answer(path)[1] for name, path in ENDPOINTS.items() if saved_answer(path)[0] == 200}
    expected["version"] = saved_answer("/api/version")[1]  # issue 10, item 7: the Ray commit it names
    assert stored == expected  # the datasets answers were 503 (no pandas on that head): nothing stored
    assert "serve_applications" not in stored  # 501 without Serve: nothing to store
    assert metrics.endpoint_polls.labels("serve_applications", "status_501")._value.get() == 1

    # unchanged answers are not stored again
    count = len(await store.list(layout.endpoints_prefix(ref)))
    assert await poller.poll_once()
    assert len(await store.list(layout.endpoints_prefix(ref))) == count

    # after a head restart the same dashboard URL belongs to a new session: answers go there
    state["session"] = "session_2026-11-23_15-00-00_000001_777"
    assert await poller.poll_once()
    assert set(await stored_endpoints(store, SessionRef("ray", "demo", state["session"]))) == set(expected)


async def test_an_unreachable_dashboard_is_a_failed_poll_not_an_error(tmp_path):
    poller = DashboardPoller(f"http://127.0.0.1:{free_port()}", Store(f"file://{tmp_path}/store"), "ray", "demo", "w1",
                             CollectorMetrics())
    assert not await poller.poll_once()


async def test_ray_data_is_polled_while_a_job_runs_and_once_after_it_ended(tmp_path):
    """Issue 10, item 9: each datasets request runs an actor task in the session, so no more than needed."""
    job = {"job_id": "02000000", "status": "RUNNING", "type": "DRIVER"}
    asked: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        if request.path == "/api/version":
            return web.json_response({"version": "4", "ray_version": "2.60.0", "session_name": SESSION_NAME})
        if request.path == "/api/jobs/":
            return web.json_response([job, {"job_id": None, "status": "PENDING", "submission_id": "s"}])
        if request.path.startswith("/api/data/datasets/"):
            asked.append(request.path.rsplit("/", 1)[-1])
            return web.json_response({"datasets": [{"dataset": "ds_1", "state": job["status"], "progress": len(asked)}]})
        return web.Response(status=404)

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        store = Store(f"file://{tmp_path}/store")
        poller = DashboardPoller(f"http://127.0.0.1:{runner.addresses[0][1]}", store, "ray", "demo", "w1",
                                 CollectorMetrics())
        for _ in range(3):
            await poller.poll_once()
        job["status"] = "SUCCEEDED"
        for _ in range(3):
            await poller.poll_once()
    finally:
        await runner.cleanup()
    assert asked == ["02000000"] * 4  # three while running, one after the end, none after that
    stored = await stored_endpoints(store, SessionRef("ray", "demo", SESSION_NAME))
    assert json.loads(stored[datasets_endpoint("02000000")])["datasets"][0] == {
        "dataset": "ds_1", "state": "SUCCEEDED", "progress": 4}


def test_only_well_formed_job_ids_are_polled():
    body = json.dumps([{"job_id": "0a000000"}, {"job_id": "../x"}, {"job_id": "０1"}, {"job_id": 5}, "x"]).encode()
    assert jobs_to_poll_for_datasets(body, set()) == ["0a000000"]
    assert jobs_to_poll_for_datasets(body, {"0a000000"}) == []
    assert jobs_to_poll_for_datasets(b"not json", set()) == []
