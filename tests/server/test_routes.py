"""The server over HTTP: real aiohttp servers on local ports, over real local storage (file://).

aiohttp's TestServer runs its apps with handler_cancellation=True, so a client that disconnects really
cancels its request handler: the disconnect test is the real thing.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from yarl import URL

from rayhistory import layout
from rayhistory.layout import IndexKind
from rayhistory.server.snapshot import FORMAT_VERSION
from rayhistory.server.snapshot_store import list_session
from rayhistory.store import Store
from tests.conftest import API, HEAD_NODE_ID, api_answer
from tests.server.fixture_store import (
    late_task_batch, late_task_id, numbered_ref, running_server, write_fixture_session, write_index,
)

TASKS = "api/v0/tasks?detail=1&limit=10000"


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(f"file://{tmp_path}/store")


def loads(state) -> float:
    registry = state.metrics.registry
    return sum(
        registry.get_sample_value("rayhistory_session_loads_total", {"source": s, "result": "ok"}) or 0
        for s in ("raw", "snapshot", "snapshot+raw", "memory", "memory+raw")
    )


def url(ref, path: str) -> str:
    return f"/s/{ref.tail}/{path}"


async def stored_snapshots(store: Store, ref) -> list[str]:
    return [o.key for o in await store.list(layout.snapshots_prefix(ref, FORMAT_VERSION))]


class GatedStore(Store):
    """Emulated slowness: reads of event batches wait until the test opens the gate, so a load is
    certainly still running when the test acts (no real backend is reliably that slow)."""

    def __init__(self, url: str):
        super().__init__(url)
        self.gate = asyncio.Event()

    async def get_many(self, keys):
        if any("/events/" in k for k in keys):
            await self.gate.wait()
        return await super().get_many(keys)


# ---- loads ---------------------------------------------------------------------------------------


async def test_fifty_concurrent_requests_for_a_cold_session_cause_one_load(store):
    ref = await write_fixture_session(store)
    async with running_server(store) as (client, _, state):
        async def one():
            async with client.get(url(ref, TASKS)) as resp:
                assert resp.status == 200
                return await resp.json()

        bodies = await asyncio.gather(*(one() for _ in range(50)))
        assert loads(state) == 1
    assert all(b == bodies[0] for b in bodies)
    live = api_answer("api__v0__tasks__detail=1__limit=10000.json")["data"]["result"]
    assert bodies[0]["data"]["result"]["total"] == live["total"]


async def test_a_disconnecting_first_client_does_not_cancel_the_load(store):
    ref = await write_fixture_session(store)
    gated = GatedStore(store.url)
    async with running_server(gated) as (client, _, state):
        # the first client gives up (its connection closes) while the load is still reading
        with pytest.raises(asyncio.TimeoutError):
            await client.get(url(ref, TASKS), timeout=aiohttp.ClientTimeout(total=0.5))
        job = state.loader.job(ref)
        assert job is not None and not job.task.done()
        status = await (await client.get(url(ref, "rayhistory/status"))).json()
        assert status["load_state"] == "loading" and status["progress"]["phase"] == "reading_raw"
        assert status["progress"]["objects_total"] > 0  # progress is readable while the load runs
        gated.gate.set()
        async with client.get(url(ref, TASKS)) as resp:
            assert resp.status == 200
        assert not job.task.cancelled()
        assert loads(state) == 1


async def test_status_reports_progress_and_completeness(store):
    ref = await write_fixture_session(store)
    async with running_server(store) as (client, _, state):
        first = await (await client.get(url(ref, "rayhistory/status"))).json()
        # the status page starts the load; the small fixture may be done within its short grace period
        assert first["load_state"] in ("loading", "loaded") and first["ready"] == (first["load_state"] == "loaded")
        await client.get(url(ref, "api/v0/nodes"))
        resp = await client.get(url(ref, "rayhistory/status"))
        body = await resp.json()
    assert body["ready"] is True and body["load_state"] == "loaded"
    assert body["complete"] is True and body["objects_missing"] == 0 and body["objects_corrupt"] == 0
    assert body["progress"]["events"] == 440 and body["progress"]["phase"] == "done"
    assert body["tasks"] > 0 and body["snapshot_key"]
    assert resp.headers["X-Rayhistory-Complete"] == "true"
    # what the index says, for the session's banner
    index = body["index"]
    assert index["state"] == "dead" and index["start_ms"] > 0 and index["end_ms"] >= index["start_ms"]
    assert index["nodes"] >= 1 and index["stale"] is False


async def test_a_corrupt_object_marks_responses_incomplete_not_failed(store):
    ref = await write_fixture_session(store)
    events = (await list_session(store, ref)).events
    await store.put(events[0].key, b"\x1f\x8b garbage")
    whole = await store.get(events[1].key)
    await store.put(events[1].key, whole[:-20])  # truncated
    async with running_server(store) as (client, _, _state):
        resp = await client.get(url(ref, TASKS))
        assert resp.status == 200
        assert resp.headers["X-Rayhistory-Complete"] == "false"
        assert resp.headers["X-Rayhistory-Objects-Corrupt"] == "2"
        assert resp.headers["X-Rayhistory-Objects-Missing"] == "0"
        status = await (await client.get(url(ref, "rayhistory/status"))).json()
    assert status["complete"] is False and status["objects_corrupt"] == 2
    assert {k for k, _ in status["objects_corrupt_keys"]} == {events[0].key, events[1].key}


async def test_a_live_session_is_served_marked_incomplete(store):
    ref = await write_fixture_session(store, dead=False)
    async with running_server(store) as (client, _, _state):
        resp = await client.get(url(ref, "api/v0/actors"))
        assert resp.status == 200
        assert resp.headers["X-Rayhistory-Complete"] == "false"
        assert resp.headers["X-Rayhistory-Session-State"] == "live"
    assert await stored_snapshots(store, ref) == []


async def test_an_evicted_session_reloads_transparently(store):
    refs = [await write_fixture_session(store, numbered_ref(i), with_logs=False) for i in range(3)]
    async with running_server(store, cache_max_sessions=1) as (client, _, state):
        for ref in refs + refs:
            async with client.get(url(ref, "api/v0/nodes")) as resp:
                assert resp.status == 200  # never a 503, never "re-enter the session"
            assert len(state.cache) == 1
        # the second round came from the compacted snapshots the first round wrote
        registry = state.metrics.registry
        assert registry.get_sample_value("rayhistory_session_loads_total", {"source": "snapshot", "result": "ok"}) == 3
        assert registry.get_sample_value("rayhistory_cache_evictions_total") == 5


# ---- bad input -----------------------------------------------------------------------------------


async def test_unknown_session_is_404_with_a_message(store):
    await write_fixture_session(store)
    async with running_server(store) as (client, _, _state):
        resp = await client.get(url(numbered_ref(7), TASKS))
        assert resp.status == 404
        assert "not found" in await resp.text()
        # a name that cannot be a session at all
        resp = await client.get("/s/ray/demo/not-a-session/api/v0/tasks")
        assert resp.status == 404
        resp = await client.get(url(numbered_ref(7), "rayhistory/status"))
        await asyncio.sleep(0.05)
        resp = await client.get(url(numbered_ref(7), "rayhistory/status"))
        assert resp.status == 404


@pytest.mark.parametrize("path", [
    "/s/ray/demo/..%2F..%2Fv1/api/v0/tasks",
    "/s/ray/demo/%2e%2e/api/v0/tasks",
    "/s/ray/..%2Fdemo/{session}/api/v0/tasks",
    "/s/%2e%2e/demo/{session}/api/v0/tasks",
    "/s/ray/demo/{session}%00/api/v0/tasks",
    "/s/ray/demo/{session}%2F..%2F..%2F..%2Findex/api/v0/tasks",
])
async def test_session_path_tricks_find_nothing(store, path):
    ref = await write_fixture_session(store, with_logs=False)
    async with running_server(store) as (client, _, state):
        resp = await client.get(URL(path.format(session=ref.session), encoded=True))
        assert resp.status in (400, 404)
        assert state.loader.job(ref) is None and len(state.cache) == 0


@pytest.mark.parametrize("query, message", [
    ("filter_keys=job_id&filter_predicates=~&filter_values=01000000", "predicate"),
    ("filter_keys=job_id&filter_predicates=%3D", "filter"),
    ("limit=lots", "limit"),
    ("detail=maybe", "boolean"),
])
async def test_bad_task_filters_are_400_with_a_message(store, query, message):
    ref = await write_fixture_session(store, with_logs=False)
    async with running_server(store) as (client, _, _state):
        resp = await client.get(url(ref, f"api/v0/tasks?{query}"))
        body = await resp.json()
    assert resp.status == 400
    assert body["result"] is False and message in body["msg"].lower()


@pytest.mark.parametrize("query", [
    "state=zombie", "limit=0", "limit=ten", "cursor=%%%", "started_after=yesterday", "colour=blue",
])
async def test_bad_cluster_filters_are_400_with_a_message(store, query):
    await write_fixture_session(store, with_logs=False)
    async with running_server(store) as (client, _, _state):
        resp = await client.get(URL(f"/clusters?{query}", encoded=True))
        assert resp.status == 400
        assert len(await resp.text()) > 10


# ---- /clusters and /enter_cluster ------------------------------------------------------------------


async def test_clusters_lists_filters_and_pages_every_session(store):
    refs = [await write_fixture_session(store, numbered_ref(i, cluster=f"c{i % 3}"), with_logs=False, dead=i % 2 == 0)
            for i in range(25)]
    async with running_server(store) as (client, _, _state):
        everything = await (await client.get("/clusters")).json()
        assert everything["total"] == 25 and len(everything["sessions"]) == 25
        assert everything["next_cursor"] is None
        seen, cursor = [], None
        while True:
            params = {"limit": "10", **({"cursor": cursor} if cursor else {})}
            page = await (await client.get("/clusters", params=params)).json()
            seen += page["sessions"]
            cursor = page["next_cursor"]
            if not cursor:
                break
        assert [s["session"] for s in seen] == [s["session"] for s in everything["sessions"]]
        assert len({(s["cluster"], s["session"]) for s in seen}) == 25
        dead = await (await client.get("/clusters", params={"state": "dead", "name": "c0"})).json()
        expected = {r.session for i, r in enumerate(refs) if i % 2 == 0 and i % 3 == 0}
        assert {s["session"] for s in dead["sessions"]} == expected
        assert all(s["state"] == "dead" and s["owner_kind"] == "RayJob" for s in dead["sessions"])
        starts = [layout.session_start_ms(r.session) for r in refs]  # one second apart
        none = await (await client.get("/clusters", params={"started_after": str(starts[-1] + 1)})).json()
        assert none["total"] == 0
        window = await (await client.get("/clusters", params={
            "started_after": str(starts[5]), "started_before": "2026-11-23T10:00:10.556Z"})).json()
        assert {s["session"] for s in window["sessions"]} == {r.session for r in refs[5:10]}
        row = everything["sessions"][0]
        assert set(row) >= {"namespace", "cluster", "owner_kind", "owner_name", "session", "start_ms", "end_ms",
                            "state", "size_bytes", "load_state"}


async def test_a_dead_sessions_row_follows_its_load_and_its_records(store):
    """A dead session's row is encoded once (server/routes.py `_dead_row`): it must still change when this
    replica loads the session and when the session's records change."""
    ref = await write_fixture_session(store, numbered_ref(1), with_logs=False)
    async with running_server(store) as (client, _, state):
        async def row() -> dict:
            (only,) = (await (await client.get("/clusters")).json())["sessions"]
            return only

        before = await row()
        assert (before["load_state"], before["size_bytes"], before["failed_tasks"]) == ("not_loaded", None, None)
        assert before["owner_kind"] == "RayJob" and before["state"] == "dead"
        tasks = (await (await client.get(url(ref, TASKS))).json())["data"]["result"]["result"]
        loaded = await row()
        assert loaded["load_state"] == "loaded" and loaded["size_bytes"] > 0
        assert loaded["failed_tasks"] == sum(1 for t in tasks if t["state"] == "FAILED") > 0  # as its list says
        state.cache.discard(ref)
        assert await row() == before
        await write_index(store, ref, IndexKind.LIVE, layout.now_ms(), owner_kind="RayService", owner_name="web")
        await state.directory.refresh()
        assert (await row())["owner_kind"] == "RayService" and (await row())["owner_name"] == "web"


async def test_enter_cluster_redirects_to_the_session_url(store):
    old = await write_fixture_session(store, numbered_ref(1), with_logs=False)
    new = await write_fixture_session(store, numbered_ref(2), with_logs=False)
    async with running_server(store) as (client, _, _state):
        resp = await client.get("/enter_cluster/ray/demo/latest", allow_redirects=False)
        assert resp.status == 302
        assert URL("/enter_cluster/ray/demo/latest").join(URL(resp.headers["Location"])).path == f"/s/{new.tail}/"
        resp = await client.get(f"/enter_cluster/ray/demo/{old.session}", allow_redirects=False)
        assert URL(f"/enter_cluster/ray/demo/{old.session}").join(URL(resp.headers["Location"])).path == f"/s/{old.tail}/"
        assert (await client.get("/enter_cluster/ray/nope/latest", allow_redirects=False)).status == 404


# ---- the internal port -----------------------------------------------------------------------------


async def test_prewarm_builds_and_stores_the_snapshot_on_the_internal_port_only(store):
    ref = await write_fixture_session(store)
    async with running_server(store) as (client, internal, state):
        public = await client.post("/internal/prewarm", json={"namespace": "ray", "cluster": "demo",
                                                              "session": ref.session})
        assert public.status in (404, 405)
        assert await stored_snapshots(store, ref) == []
        resp = await internal.post("/internal/prewarm", json={"namespace": "ray", "cluster": "demo",
                                                               "session": ref.session})
        body = await resp.json()
        assert resp.status == 200 and body["complete"] is True
        assert await stored_snapshots(store, ref) == [body["snapshot_key"]]

        # a late flush after the pre-warm: the next pre-warm merges it and rewrites the snapshot
        await store.put(layout.event_batch_key(ref, HEAD_NODE_ID, "late", 1), late_task_batch(1))
        again = await (await internal.post("/internal/prewarm", json={
            "namespace": "ray", "cluster": "demo", "session": ref.session})).json()
        assert await stored_snapshots(store, ref) == [again["snapshot_key"]] != [body["snapshot_key"]]
        tasks = await (await client.get(url(ref, "api/v0/tasks?filter_keys=name&filter_predicates=%3D"
                                                 "&filter_values=late_task"))).json()
        assert [t["task_id"] for t in tasks["data"]["result"]["result"]] == [late_task_id(1)]

        assert (await internal.post("/internal/prewarm", json={"namespace": "ray", "cluster": "demo",
                                                                "session": numbered_ref(9).session})).status == 404
        assert (await internal.post("/internal/prewarm", json={"namespace": "..", "cluster": "demo",
                                                                "session": ref.session})).status == 400
        metrics = await (await internal.get("/metrics")).text()
        assert "rayhistory_snapshots_written_total 2.0" in metrics
        assert "rayhistory_cache_hits_total" in metrics
        assert (await internal.get("/healthz")).status == 200
        assert (await client.get("/metrics")).status == 404


async def test_prewarm_token_is_enforced_when_set(store):
    ref = await write_fixture_session(store, with_logs=False)
    body = {"namespace": "ray", "cluster": "demo", "session": ref.session}
    async with running_server(store, prewarm_token="s3cret") as (_client, internal, _state):
        assert (await internal.post("/internal/prewarm", json=body)).status == 401
        wrong = await internal.post("/internal/prewarm", json=body, headers={"Authorization": "Bearer nope"})
        assert wrong.status == 401
        assert await stored_snapshots(store, ref) == []
        right = await internal.post("/internal/prewarm", json=body, headers={"Authorization": "Bearer s3cret"})
        assert right.status == 200
        assert await stored_snapshots(store, ref) != []


def test_the_server_does_not_start_with_an_open_internal_port(tmp_path):
    """Issue 9, item 8: without a token the internal port let anyone who reached it load any session."""
    import subprocess
    import sys
    from pathlib import Path

    from tests.conftest import free_port

    rayhistory = str(Path(sys.executable).parent / "rayhistory")
    argv = [rayhistory, "server", "--storage", f"file://{tmp_path}", "--host", "127.0.0.1",
            "--port", str(free_port()), "--internal-port", str(free_port()), "--log-format", "text"]
    refused = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "--insecure-internal-port" in refused.stderr
    env_token = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                               env={"RAYHISTORY_PREWARM_TOKEN": "", "PATH": "/usr/bin:/bin"})
    assert env_token.returncode == 2


async def test_a_session_marked_dead_after_a_live_load_is_stored_by_the_prewarm(store):
    ref = await write_fixture_session(store, dead=False, with_logs=False)
    async with running_server(store) as (client, internal, _state):
        assert (await client.get(url(ref, "api/v0/nodes"))).headers["X-Rayhistory-Session-State"] == "live"
        await write_index(store, ref, IndexKind.DEAD, layout.now_ms(), end_ms=layout.now_ms(), reason="test")
        resp = await internal.post("/internal/prewarm", params={"namespace": "ray", "cluster": "demo",
                                                                 "session": ref.session})
        assert resp.status == 200 and (await resp.json())["state"] == "dead"
        after = await client.get(url(ref, "api/v0/nodes"))
        assert after.headers["X-Rayhistory-Session-State"] == "dead"
        assert after.headers["X-Rayhistory-Complete"] == "true"
    assert len(await stored_snapshots(store, ref)) == 1


async def test_every_api_route_is_served_under_the_session_prefix(store):
    from rayhistory.server import api

    ref = await write_fixture_session(store)
    ids = {"actor_id": "91bb2749d7f8867082bb29c701000000", "node_id": HEAD_NODE_ID, "job_id": "01000000"}
    # what the live dashboard itself answered with a server error (no grafana, no serve, no Ray Data)
    live_errors = {e["path"].split("?")[0].lstrip("/") for e in json.loads((API / "_index.json").read_text())
                   if e["status"] >= 500}
    async with running_server(store) as (client, _, _state):
        for method, pattern, _handler in api.ROUTES:
            path = pattern.lstrip("/").format(**ids)
            resp = await client.request(method, url(ref, path))
            assert resp.status < 500 or path in live_errors, (path, resp.status)
            assert "X-Rayhistory-Complete" in resp.headers, path
            if resp.content_type == "application/json":
                json.loads(await resp.text())


async def test_timeline_download_is_an_attachment_like_rays(store):
    ref = await write_fixture_session(store, with_logs=False)
    async with running_server(store) as (client, _, _state):
        plain = await client.get(url(ref, "api/v0/tasks/timeline"))
        assert "Content-Disposition" not in plain.headers
        resp = await client.get(url(ref, "api/v0/tasks/timeline?download=1&job_id=01000000"))
        assert resp.status == 200
        assert resp.headers["Content-Disposition"].startswith('attachment; filename="timeline-01000000-')
        trace = await resp.json()
    live = api_answer("api__v0__tasks__timeline__download=1__job_id=01000000.json")
    assert {e["name"] for e in trace} == {e["name"] for e in live}


async def test_a_plain_get_of_a_session_page_starts_its_load(store):
    """Issue 10, item 11: only the loading page's script started a load, so a link opened by a plain HTTP
    client or a prefetch never warmed the session."""
    ref = await write_fixture_session(store, with_logs=False)
    async with running_server(store) as (client, _internal, state):
        assert state.loader.state(ref) == "not_loaded"
        page = await client.get(f"/s/{ref.tail}/")
        assert page.status == 200
        for _ in range(200):
            if state.loader.state(ref) == "loaded":
                break
            await asyncio.sleep(0.05)
        assert state.loader.state(ref) == "loaded"
        assert (await client.get(f"/s/{ref.tail}/")).status == 200
        unknown = await client.get(f"/s/ray/demo/{numbered_ref(9).session}/")
        assert unknown.status == 404 and state.loader.state(numbered_ref(9)) == "not_loaded"


async def test_a_dead_sessions_answers_are_cached_per_snapshot_for_the_uis_auto_refresh(store):
    """The UI refreshes every page every few seconds: a dead session answers a repeated question from cache."""
    ref = await write_fixture_session(store)
    async with running_server(store) as (client, _, state):
        first = await client.get(url(ref, TASKS))
        body = await first.read()
        assert first.status == 200 and "X-Rayhistory-Answer-Cache" not in first.headers
        again = await client.get(url(ref, TASKS))
        assert again.headers["X-Rayhistory-Answer-Cache"] == "hit"
        assert await again.read() == body and again.content_type == first.content_type
        assert again.headers["X-Rayhistory-Complete"] == "true"
        # another question, or the same with other parameters, is answered afresh
        other = await client.get(url(ref, "api/v0/tasks?detail=1&limit=1"))
        assert "X-Rayhistory-Answer-Cache" not in other.headers and await other.read() != body


def test_answer_cache_is_bounded_and_never_serves_another_snapshots_answer():
    from aiohttp import web as _web

    from rayhistory.server.routes import AnswerCache
    from rayhistory.server.cache import CacheEntry

    cache = AnswerCache(max_entries=2, max_bytes=10)
    a, b = CacheEntry(None, False, {}, 0), CacheEntry(None, False, {}, 0)
    cache.put(("a",), a, _web.Response(body=b"12345"))
    assert cache.get(("a",), a)[1] == b"12345"
    assert cache.get(("a",), b) is None  # the key's entry is another one: dropped, not served
    cache.put(("a",), a, _web.Response(body=b"12345"))
    cache.put(("b",), b, _web.Response(body=b"123456"))  # 11 bytes > 10: the oldest goes
    assert cache.get(("a",), a) is None and cache.get(("b",), b) is not None and cache.nbytes == 6


async def test_a_live_session_with_no_write_for_stale_after_is_stale_in_the_list_and_status(store):
    """Without Kubernetes nothing ends a recording that failed half-way: after --stale-after seconds with no
    write it shows as stale (mark-dead ends it); a session written recently does not."""
    from tests.server.fixture_store import write_index

    old = await write_fixture_session(store, dead=False)  # written on 2026-11-23
    fresh = layout.SessionRef("ray", "fresh", old.session)
    await write_index(store, fresh, IndexKind.LIVE, layout.now_ms())
    async with running_server(store, stale_after=600) as (client, _, _state):
        rows = {r["cluster"]: r for r in (await (await client.get("/clusters")).json())["sessions"]}
        assert rows[old.cluster]["stale"] is True and rows[old.cluster]["state"] == "live"
        assert rows[old.cluster]["last_write_ms"] < layout.now_ms() - 600_000
        assert rows["fresh"]["stale"] is False
        status = await (await client.get(url(old, "rayhistory/status"))).json()
        assert status["index"]["stale"] is True
    async with running_server(store, stale_after=0) as (client, _, _state):
        rows = (await (await client.get("/clusters")).json())["sessions"]
        assert not any(r["stale"] for r in rows)


async def test_loaded_sessions_list_their_failed_tasks_and_jobs(store):
    ref = await write_fixture_session(store)
    async with running_server(store) as (client, _, _state):
        row = (await (await client.get("/clusters")).json())["sessions"][0]
        assert row["failed_tasks"] is None and row["failed_jobs"] is None  # not loaded: counting would load it
        await client.get(url(ref, TASKS))
        row = (await (await client.get("/clusters")).json())["sessions"][0]
    # the fixture's failed task (boom) and its failed submission job
    assert row["load_state"] == "loaded" and row["failed_tasks"] >= 1 and row["failed_jobs"] == 1
