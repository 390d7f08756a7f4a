"""A session whose tasks are kept on local disk (server/disk_tasks.py) answers every route as from memory.

The in-memory answers are the ones the ground-truth tests compare with Ray's live dashboard; here the same
snapshot, spilled to a file in chunks of a few tasks (so that attempts of one task straddle chunks and the
chunk LRU holds fewer chunks than a page reads), must give the same bytes.
"""

from __future__ import annotations

import asyncio
import os
import zlib

import msgspec
import pytest

from rayhistory.server import api, snapshot_model
from rayhistory.server.api_tasks import failed_task_count
from rayhistory.server.disk_tasks import DiskSpill, DiskTasks, LocalTasksUnreadable, spill_tasks
from rayhistory.server.snapshot_model import (
    SnapshotFormatError, decode_head, decode_snapshot, encode_snapshot, fill_or_mark_corrupt,
)
from rayhistory.store import is_storage_failure
from tests.server.fixture_store import running_server, write_fixture_session
from tests.server.test_ground_truth import build_fixture_snapshot
from tests.server.test_lazy_tasks import _resealed
from tests.server.test_loader import store  # noqa: F401 - the fixture

HANDLERS = {pattern: handler for _, pattern, handler in api.ROUTES}
CHUNK = 4


def _with_retries(snapshot):
    """The fixture snapshot with a second attempt of every third task (later attempts first, as Ray lists
    them) and some attempts unlisted: what a session with retries holds."""
    tasks = []
    for i, t in enumerate(snapshot.tasks):
        if i % 3 == 0 and snapshot.strings[t.type] != "DRIVER_TASK":
            tasks.append(msgspec.structs.replace(t, attempt=1, listed=i % 2 == 0))
        tasks.append(t)
    positions: dict[int, list[int]] = {}
    for p, t in enumerate(tasks):
        if snapshot.strings[t.type] != "DRIVER_TASK":
            positions.setdefault(t.job, []).append(p)
    job_tasks = {job: b"".join(p.to_bytes(4, "little") for p in ps) for job, ps in positions.items()}
    return msgspec.structs.replace(snapshot, tasks=tasks, job_tasks=job_tasks,
                                   unlisted=sum(not t.listed for t in tasks))


@pytest.fixture(scope="module")
def encoded() -> bytes:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(snapshot_model, "TASK_CHUNK", CHUNK)
        return encode_snapshot(_with_retries(build_fixture_snapshot()))


def _on_disk(data: bytes, tmp_path, cache_chunks: int = 2):
    head, section = decode_head(data)
    spill_tasks(section, head, str(tmp_path), cache_chunks)
    return head


def _queries(full) -> list[tuple[str, dict]]:
    """Every route, and the task routes with each filter the dashboard sends (and some it does not)."""
    out = []
    for pattern in HANDLERS:
        if "{actor_id}" in pattern:
            out += [(pattern, {"actor_id": a.actor_id}) for a in full.actors[:3]]
        elif "{node_id}" in pattern:
            out.append((pattern, {"node_id": full.nodes[0].node_id}))
        elif "{job_id}" in pattern:
            out += [(pattern, {"job_id": j.job_id}) for j in full.driver_jobs]
        else:
            out.append((pattern, {}))
    s = full.strings
    retried = next(t for t in full.tasks if t.attempt == 1)
    filters = [("job_id", "=", s[j]) for j in full.job_tasks] + [
        ("state", "=", "FINISHED"), ("state", "!=", "FINISHED"), ("state", "=", "FAILED"),
        ("task_id", "=", retried.task_id), ("task_id", "=", full.tasks[-1].task_id), ("task_id", "=", "ab" * 24),
        ("task_id", "!=", retried.task_id), ("type", "=", "ACTOR_TASK"), ("name", "=", s[retried.name]),
        ("func_or_class_name", "=", s[retried.func]), ("error_type", "=", "WORKER_DIED"),
        ("attempt_number", "=", "1"),
    ]
    for key, predicate, value in filters:
        query = {"filter_keys": key, "filter_predicates": predicate, "filter_values": value}
        for pattern in ("/api/v0/tasks", "/api/v0/tasks/summarize"):
            out += [(pattern, query), (pattern, {**query, "detail": "1", "limit": "3"})]
        out.append(("/api/v0/tasks/summarize", {**query, "summary_by": "lineage"}))
    for query in ({"detail": "1"}, {"limit": "5"}, {"exclude_driver": "false"}, {"limit": "0"}):
        out.append(("/api/v0/tasks", query))
    return out


def _answer(snapshot, pattern: str, query: dict):
    try:
        status, body = HANDLERS[pattern](snapshot, query)
    except api.ApiError as exc:
        return exc.status, exc.body()
    return status, body if isinstance(body, bytes) else msgspec.json.encode(body)


def test_every_route_answers_from_disk_as_from_memory(encoded, tmp_path):
    full = decode_snapshot(encoded)
    disk = _on_disk(encoded, tmp_path)
    assert isinstance(disk.tasks, DiskTasks) and len(disk.tasks) == len(full.tasks) > 3 * CHUNK
    assert len(disk.tasks._spans) == -(-len(full.tasks) // CHUNK)
    assert full.unlisted and any(t.attempt for t in full.tasks)
    for pattern, query in _queries(full):
        assert _answer(disk, pattern, query) == _answer(full, pattern, query), (pattern, query)


def test_the_session_lists_failure_count_is_the_task_lists_from_disk_as_from_memory(tmp_path, monkeypatch):
    """/clusters' failed_tasks counts what the task list shows FAILED, whichever holds the tasks: drivers
    left out (a dead session's unfinished drivers end FAILED; they count among its failed jobs)."""
    snapshot = _with_retries(build_fixture_snapshot())
    tasks = [msgspec.structs.replace(t, state=snapshot_model.FAILED) if snapshot.strings[t.type] == "DRIVER_TASK"
             else t for t in snapshot.tasks]
    monkeypatch.setattr(snapshot_model, "TASK_CHUNK", CHUNK)
    data = encode_snapshot(msgspec.structs.replace(snapshot, tasks=tasks))
    full, disk = decode_snapshot(data), _on_disk(data, tmp_path)
    _, listed = _answer(full, "/api/v0/tasks", {"detail": "1", "limit": "10000", "filter_keys": "state",
                                                  "filter_predicates": "=", "filter_values": "FAILED"})
    expected = msgspec.json.decode(listed)["data"]["result"]["total"]
    assert sum(d.state == snapshot_model.FAILED for d in disk.tasks.drivers) == 6
    assert failed_task_count(full) == failed_task_count(disk) == expected > 0


def test_disk_tasks_index_slice_iterate_and_find_ids_as_a_list(encoded, tmp_path):
    full = decode_snapshot(encoded)
    disk = _on_disk(encoded, tmp_path, cache_chunks=1).tasks
    n = len(full.tasks)
    assert list(disk) == full.tasks
    assert [disk[i] for i in range(n)] == full.tasks and disk[-1] == full.tasks[-1]
    assert disk[3:11] == full.tasks[3:11] and disk[::5] == full.tasks[::5] and disk[n:] == []
    for bad in (n, -n - 1):
        with pytest.raises(IndexError):
            disk[bad]
    from rayhistory.server.api_tasks import task_id_range

    for task_id in {t.task_id for t in full.tasks} | {"00" * 24, "ff" * 24}:
        assert task_id_range(disk, task_id) == task_id_range(full.tasks, task_id), task_id
    assert disk.states == bytes(t.state for t in full.tasks)
    assert disk.drivers == [t for t in full.tasks if full.strings[t.type] == "DRIVER_TASK"]


def test_a_task_chunk_damaged_on_local_disk_is_a_storage_failure(encoded, tmp_path):
    disk = _on_disk(encoded, tmp_path, cache_chunks=1)
    offset, length, _ = disk.tasks._spans[1]
    os.pwrite(disk.tasks._fd, b"\0" * 8, offset + length // 2)
    with pytest.raises(LocalTasksUnreadable, match="chunk 1 .* CRC32") as raised:
        disk.tasks[CHUNK]
    assert is_storage_failure(raised.value)  # the server answers it 503, not 500 (app._storage_failures)
    assert disk.tasks[0] is not None  # the other chunks still read


def test_a_task_section_that_does_not_decode_leaves_no_file_and_the_snapshot_incomplete(encoded, tmp_path):
    bad = _resealed(encoded, lambda parts: parts.tasks.__setitem__(2, zlib.compress(b"\xc1 not msgpack")))
    head, section = decode_head(bad)
    assert not fill_or_mark_corrupt(head, "snapshots/v4/x.snap", lambda: spill_tasks(section, head, str(tmp_path), 2))
    assert not head.complete and head.tasks == [] and "task section" in head.objects_corrupt[0].reason
    assert os.listdir(tmp_path) == []
    empty_chunk = _resealed(encoded, lambda parts: parts.tasks.__setitem__(0, zlib.compress(b"\x90")))
    head, section = decode_head(empty_chunk)
    with pytest.raises(SnapshotFormatError, match="empty chunk"):
        spill_tasks(section, head, str(tmp_path), 2)


def test_disk_spill_applies_above_its_bound_only():
    assert not DiskSpill().applies(1 << 40)  # 0: never
    assert DiskSpill(100).applies(101) and not DiskSpill(100).applies(100)


async def test_a_session_above_the_bound_is_served_from_local_disk(store, tmp_path, monkeypatch):  # noqa: F811
    """Through the server: compacted by one replica, then loaded by one whose bound it exceeds: every task
    route answers as the first replica's (in memory), and the entry counts what it holds, not the tasks."""
    monkeypatch.setattr(snapshot_model, "TASK_CHUNK", CHUNK)  # the snapshot the first replica writes
    ref = await write_fixture_session(store)
    base = f"/s/{ref.tail}"
    paths = ["/api/v0/tasks?detail=1", "/api/v0/tasks/summarize", "/api/v0/tasks/timeline", "/api/v0/workers",
             "/api/v0/tasks?filter_keys=state&filter_predicates=%3D&filter_values=FINISHED"]
    answers = {}
    async with running_server(store) as (client, _, state):
        for path in paths:
            async with client.get(base + path) as resp:
                assert resp.status == 200, path
                answers[path] = await resp.read()
        in_memory = state.cache.peek(ref)
    spill_dir = tmp_path / "spill"
    spill_dir.mkdir()
    async with running_server(store, tasks_on_disk_above_bytes=1, task_spill_dir=str(spill_dir),
                              disk_task_chunks=1) as (client, _, state):
        for path in paths:
            async with client.get(base + path) as resp:
                assert resp.status == 200, path
                assert await resp.read() == answers[path], path
        entry = state.cache.peek(ref)
        assert entry.tasks_decoded and isinstance(entry.snapshot.tasks, DiskTasks)
        status = await (await client.get(f"{base}/rayhistory/status")).json()
        assert status["tasks_on_disk"] and status["tasks_ready"]
        registry = state.metrics.registry
        assert registry.get_sample_value("rayhistory_task_spills_total", {"result": "ok"}) == 1
        assert registry.get_sample_value("rayhistory_disk_task_chunk_reads_total") >= 1
        assert os.listdir(spill_dir) == []  # the file was unlinked at once
        assert entry.nbytes < in_memory.nbytes


@pytest.mark.parametrize("pattern, query", [("/api/v0/tasks/summarize", {"summary_by": "lineage"}),
                                            ("/api/v0/tasks/timeline", {})])
def test_an_answer_holding_every_task_is_bounded_only_for_a_session_on_disk(encoded, tmp_path, monkeypatch,
                                                                            pattern, query):
    from rayhistory.server import api_tasks

    monkeypatch.setattr(api_tasks, "ON_DISK_WHOLE_ANSWER_MAX_TASKS", 10)
    status, body = _answer(_on_disk(encoded, tmp_path), pattern, query)
    assert status == 400 and "kept on local disk" in body["msg"] and "filter by job_id" in body["msg"]
    assert _answer(decode_snapshot(encoded), pattern, query)[0] == 200  # in memory: answered whole, as before
    one_job = ({"job_id": "ffffffff"} if pattern.endswith("timeline")
               else {"filter_keys": "job_id", "filter_predicates": "=", "filter_values": "ffffffff", **query})
    assert _answer(_on_disk(encoded, tmp_path), pattern, one_job)[0] == 200  # a filter that keeps few: answered


async def test_a_session_built_from_raw_above_the_bound_is_served_from_what_it_wrote(tmp_path, monkeypatch):
    """A replica that builds a session from raw events and finds it larger than its bound does not keep the
    tasks it built: it serves them from the snapshot it just wrote, on disk, with the same answers as a
    replica that keeps them in memory (each replica on a store of its own, both from raw)."""
    from rayhistory.store import Store

    monkeypatch.setattr(snapshot_model, "TASK_CHUNK", CHUNK)
    paths = ["/api/v0/tasks?detail=1", "/api/v0/tasks/summarize?summary_by=lineage", "/api/v0/workers"]
    answers = []
    for name, settings in (("memory", {}), ("disk", {"tasks_on_disk_above_bytes": 1})):
        store = Store(f"file://{tmp_path}/{name}")
        ref = await write_fixture_session(store)
        async with running_server(store, **settings) as (client, _, state):
            answers.append([await (await client.get(f"/s/{ref.tail}{path}")).read() for path in paths])
            entry = state.cache.peek(ref)
            assert state.loader.progress(ref).source == "raw" and entry.snapshot_key
            assert isinstance(entry.snapshot.tasks, DiskTasks) == (name == "disk")
    assert answers[0] == answers[1]


def test_a_task_list_from_disk_is_bounded_as_the_other_whole_answers(encoded, tmp_path, monkeypatch):
    from rayhistory.server import api_tasks

    monkeypatch.setattr(api_tasks, "ON_DISK_WHOLE_ANSWER_MAX_TASKS", 10)
    disk = _on_disk(encoded, tmp_path)
    for query in ({"limit": "11"}, {"limit": "11", "filter_keys": "state", "filter_predicates": "!=",
                                    "filter_values": "NIL"}):
        status, body = _answer(disk, "/api/v0/tasks", query)
        assert status == 400 and "A task list of 11 tasks" in body["msg"], query
        assert _answer(disk, "/api/v0/tasks", {**query, "limit": "10"})[0] == 200


def test_a_snapshot_written_from_tasks_on_disk_records_what_they_hold_in_memory(encoded, tmp_path):
    from rayhistory.server.snapshot_store import tasks_resident_bytes

    in_memory = tasks_resident_bytes(decode_snapshot(encoded))
    on_disk = tasks_resident_bytes(_on_disk(encoded, tmp_path))
    assert in_memory * 0.8 < on_disk < in_memory * 2  # so that its readers decide on disk as its first did


async def test_a_local_disk_that_fails_is_a_503_not_a_session_without_tasks(store, tmp_path, monkeypatch):  # noqa: F811
    """A spill dir that is gone (or full) is the replica's failure, not the stored snapshot's: 503 with
    Retry-After, the snapshot not marked corrupt, and the entry dropped so that a later load spills anew;
    a chunk that fails its CRC later does the same."""
    monkeypatch.setattr(snapshot_model, "TASK_CHUNK", CHUNK)
    ref = await write_fixture_session(store)
    async with running_server(store) as (client, _, state):  # compacts it
        assert (await client.get(f"/s/{ref.tail}/api/v0/tasks")).status == 200
    async with running_server(store, tasks_on_disk_above_bytes=1, task_spill_dir=str(tmp_path / "gone"),
                              disk_task_chunks=1) as (client, _, state):
        resp = await client.get(f"/s/{ref.tail}/api/v0/tasks")
        assert resp.status == 503 and resp.headers["Retry-After"], await resp.text()
        assert "local task file" in (await resp.json())["msg"]
        assert state.metrics.registry.get_sample_value("rayhistory_task_spills_total", {"result": "failed"}) == 1
        await asyncio.sleep(0.05)  # the drop runs on the event loop
        assert state.cache.peek(ref) is None and state.loader.backoff(ref) is not None
    async with running_server(store, tasks_on_disk_above_bytes=1, task_spill_dir=str(tmp_path / "gone"),
                              disk_task_chunks=1) as (client, _, state):
        # a request that comes to the entry after its spill failed gets the failure too, not the undecoded tasks
        entry = await state.loader.get(ref, tasks=False)
        await asyncio.wait([entry.tasks_decoding])
        assert not entry.tasks_decoded
        with pytest.raises(LocalTasksUnreadable):
            await state.loader.tasks_decoded(entry)
    async with running_server(store, tasks_on_disk_above_bytes=1, task_spill_dir=str(tmp_path),
                              disk_task_chunks=1) as (client, _, state):
        assert (await client.get(f"/s/{ref.tail}/api/v0/tasks?limit=1")).status == 200
        spilled = state.cache.peek(ref)
        # a pre-warm of the unchanged session makes a new entry that keeps the tasks on disk it had
        refreshed = await state.loader.refresh(ref)
        assert refreshed is not spilled and refreshed.snapshot.tasks is spilled.snapshot.tasks
        tasks = refreshed.snapshot.tasks
        last_id, _ = tasks[len(tasks) - 1].task_id, tasks[0]  # the LRU of one chunk holds the first again
        offset, length, _ = tasks._spans[-1]
        os.pwrite(tasks._fd, b"\0" * 8, offset + length // 2)
        resp = await client.get(f"/s/{ref.tail}/api/v0/tasks?filter_keys=task_id&filter_predicates=%3D"
                                f"&filter_values={last_id}")
        assert resp.status == 503 and "fails its CRC32" in (await resp.json())["msg"]
        await asyncio.sleep(0.05)
        assert state.cache.peek(ref) is None and state.loader.backoff(ref) is not None
