"""An imported session, served (server/api_captured.py and its routes): captured answers replayed byte for byte;
state lists the import did not ask filtered from the captured list as Ray filters; captured answers that are not
what they should be, and hostile requests, give a clear answer, never a 500.

The captured answers are the fixture's live Ray 2.60 answers (tests/fixtures/ray/api), stored as the importer
stores them (capture endpoints, the import manifest, a dead index record with imported_ms)."""

from __future__ import annotations

import json
from urllib.parse import parse_qsl, urlsplit

import pytest
from multidict import MultiDict

from rayhistory import layout
from rayhistory.index import SessionIndex
from rayhistory.layout import IndexKind
from rayhistory.server import api_captured
from rayhistory.server.api_common import ApiError
from rayhistory.server.snapshot import SnapshotBuilder
from rayhistory.store import Store
from tests.conftest import API, SESSION_NAME
from tests.server.fixture_store import fixture_ref, running_server

REF = fixture_ref("ray", "imported", SESSION_NAME)
TASKS = "/api/v0/tasks?detail=1&limit=10000"
# captured path (as the UI asks it) -> the fixture's live answer
CAPTURED = {TASKS: "api__v0__tasks__detail=1__limit=10000.json", "/api/jobs/": "api__jobs.json",
            "/api/v0/actors?detail=1&limit=10000": "api__v0__actors__detail=1__limit=10000.json",
            "/nodes?view=summary": None}
TASK_ID = "0ab01f2d6283d719ffffffffffffffffffffffff03000000"


def endpoint(path: str) -> str:
    url = urlsplit(path)
    return layout.capture_endpoint(url.path, parse_qsl(url.query, keep_blank_values=True))


def answers() -> dict[str, bytes]:
    out = {endpoint(p): (API / f).read_bytes() for p, f in CAPTURED.items() if f}
    out[endpoint("/nodes?view=summary")] = b'{"result": true, "data": {"summary": []}}'
    out[layout.IMPORT_MANIFEST] = json.dumps({"captured_ms": 1, "skipped": [["events?", "timed out"]]}).encode()
    return out


def snapshot(extra: dict[str, bytes] | None = None):
    builder = SnapshotBuilder(REF, dead=True, end_ms=1)
    for name, data in {**answers(), **(extra or {})}.items():
        builder.add_endpoint(name, data)
    return builder.build()


def query(path: str) -> MultiDict:
    return MultiDict(parse_qsl(urlsplit(path).query, keep_blank_values=True))


def live(name: str) -> dict:
    return json.loads((API / name).read_text())


def test_a_captured_request_is_replayed_in_any_query_order():
    s = snapshot()
    assert api_captured.is_imported(s)
    assert api_captured.answer(s, "api/v0/tasks", query("?limit=10000&detail=1")) == (API / CAPTURED[TASKS]).read_bytes()
    assert api_captured.answer(s, "api/v0/tasks/summarize", query("")) is None  # not captured: the server's own
    assert not api_captured.is_imported(SnapshotBuilder(REF, dead=True, end_ms=1).build())


def test_a_filtered_list_is_the_live_filtered_answer():
    """The task page's request: never asked by the import, answered from the captured list like Ray answered it."""
    path = f"?detail=1&limit=1&filter_keys=task_id&filter_predicates=%3D&filter_values={TASK_ID}"
    ours = api_captured.answer(snapshot(), "api/v0/tasks", query(path))
    assert ours == live(f"api__v0__tasks__detail=1__limit=1__filter_keys=task_id__filter_predicates=eq__"
                        f"filter_values={TASK_ID}.json")
    by_job = api_captured.answer(snapshot(), "api/v0/tasks", query(
        "?detail=1&limit=10000&filter_keys=job_id&filter_predicates=%3D&filter_values=01000000"))
    assert by_job == live("api__v0__tasks__detail=1__limit=10000__filter_keys=job_id__filter_predicates=eq__"
                          "filter_values=01000000.json")
    # != and limit; a list without detail was not captured: the server's own handler answers
    rest = api_captured.answer(snapshot(), "api/v0/tasks", query(
        "?detail=1&limit=3&filter_keys=job_id&filter_predicates=!%3D&filter_values=01000000"))["data"]["result"]
    assert len(rest["result"]) == 3 and rest["total"] == 71 - 66
    assert {r["job_id"] for r in rest["result"]} != {"01000000"}
    assert api_captured.answer(snapshot(), "api/v0/tasks", query("?limit=5")) is None


def test_bad_filters_are_ray_s_400():
    with pytest.raises(ApiError) as bad:
        api_captured.answer(snapshot(), "api/v0/tasks", query("?detail=1&filter_keys=state&filter_predicates=~"
                                                             "&filter_values=x"))
    assert bad.value.status == 400


@pytest.mark.parametrize("body", [b"[1, 2]", b'{"data": {"result": {"result": "x"}}}', b'{"data": 5}', b"7"])
def test_a_captured_list_of_the_wrong_shape_answers_nothing_of_its_own(body):
    s = snapshot({endpoint(TASKS): body})
    assert api_captured.filtered_list(s, "api/v0/tasks", query("?detail=1&filter_keys=task_id&filter_predicates=%3D"
                                                                "&filter_values=x")) is None
    assert api_captured.task_log(s, TASK_ID, 0, "out") is None and api_captured.failed_tasks(s) == 0


def test_task_log_and_failed_counts_from_the_captured_tasks():
    s = snapshot()
    row = next(r for r in live(CAPTURED[TASKS])["data"]["result"]["result"] if r.get("task_log_info"))
    found = api_captured.task_log(s, row["task_id"], row["attempt_number"], "out")
    assert found.node_id == row["node_id"] and found.filename == row["task_log_info"]["stdout_file"].split("/logs/")[1]
    assert (found.start, found.end) == (row["task_log_info"]["stdout_start"], row["task_log_info"]["stdout_end"])
    assert api_captured.task_log(s, row["task_id"], 7, "out") is None
    without_info = next(r for r in live(CAPTURED[TASKS])["data"]["result"]["result"] if not r.get("task_log_info"))
    with pytest.raises(ApiError):  # Ray's 404: the attempt has no log info
        api_captured.task_log(s, without_info["task_id"], without_info["attempt_number"], "out")
    assert api_captured.failed_tasks(s) == sum(1 for r in live(CAPTURED[TASKS])["data"]["result"]["result"]
                                               if r["state"] == "FAILED") > 0
    hostile = json.loads((API / CAPTURED[TASKS]).read_bytes())
    hostile["data"]["result"]["result"] = [dict(row, node_id="../../x")]
    with pytest.raises(ApiError):  # a node id that would leave the session's logs: Ray's 404, never a key
        api_captured.task_log(snapshot({endpoint(TASKS): json.dumps(hostile).encode()}), row["task_id"],
                              row["attempt_number"], "out")
    assert api_captured.import_summary(s)["skipped"] == [["events?", "timed out"]]
    assert api_captured.import_summary(snapshot({layout.IMPORT_MANIFEST: b'{"skipped": 3}'}))["skipped"] == []


def test_actor_log_from_the_captured_actor_list():
    actor = next(r for r in live(CAPTURED["/api/v0/actors?detail=1&limit=10000"])["data"]["result"]["result"]
                 if r.get("pid"))
    builder = SnapshotBuilder(REF, dead=True, end_ms=1)
    for name, data in answers().items():
        builder.add_endpoint(name, data)
    worker_file = f"worker-{'c' * 56}-{actor['job_id']}-{actor['pid']}.out"
    for relpath in (worker_file, f"worker-{'d' * 56}-{actor['job_id']}-1{actor['pid']}.out", "raylet.out"):
        builder.add_log_index(actor["node_id"], relpath, 10)
    s = builder.build()
    found = api_captured.actor_log(s, actor["actor_id"], "out")
    assert (found.node_id, found.filename) == (actor["node_id"], worker_file)
    assert api_captured.actor_log(s, "00" * 16, "out") is None  # not captured: Ray's own "not found" follows
    with pytest.raises(ApiError):  # captured, but its worker's file was not imported
        api_captured.actor_log(s, actor["actor_id"], "err")


async def test_served_through_the_routes(tmp_path):
    """Stored as the importer stores it, then asked over HTTP: replay, the server's own answers for the rest,
    the index's imported flag in /clusters and the status; a hostile query is a 400, not a 500."""
    store = Store(f"file://{tmp_path}/store")
    for name, data in answers().items():
        await store.put(layout.endpoint_key(REF, name, "importer"), data)
    await SessionIndex(store).append(REF, IndexKind.DEAD, end_ms=2, imported_ms=2, reason="imported")
    async with running_server(store, kubernetes="off") as (client, _, _state):
        base = f"/s/{REF.tail}"
        resp = await client.get(base + "/api/v0/tasks?limit=10000&detail=1")
        assert resp.status == 200 and await resp.read() == (API / CAPTURED[TASKS]).read_bytes()
        resp = await client.get(base + f"/api/v0/tasks?detail=1&limit=1&filter_keys=task_id&filter_predicates=%3D"
                                       f"&filter_values={TASK_ID}")
        assert (await resp.json())["data"]["result"]["result"][0]["task_id"] == TASK_ID
        assert (await client.get(base + "/api/authentication_mode")).status == 200  # the server's own
        bad = await client.get(base + "/api/v0/tasks?detail=1&filter_keys=a&filter_keys=b&filter_predicates=%3D")
        assert bad.status == 400
        status = await (await client.get(base + "/rayhistory/status")).json()
        assert status["index"]["imported"] is True and status["import"]["skipped"] == [["events?", "timed out"]]
        row = (await (await client.get("/clusters")).json())["sessions"][0]
        failed = sum(1 for r in live(CAPTURED[TASKS])["data"]["result"]["result"] if r["state"] == "FAILED")
        assert row["imported"] is True and row["failed_tasks"] == failed  # from the captured list
        resp = await client.get(base + "/api/v0/logs/file?task_id=" + TASK_ID + "&attempt_number=x")
        assert resp.status == 400
