"""A compacted snapshot's head answers before its task fields are decoded (snapshot_model.decode_head)."""

from __future__ import annotations

import asyncio
import struct
import threading
import zlib

import msgspec
import pytest

from rayhistory.server import api
from rayhistory.server.snapshot_model import (
    _MAGIC, NOT_DECODED, FORMAT_VERSION, SnapshotFormatError, TaskSection, TasksNotDecoded, _Sections,
    decode_head, decode_snapshot, encode_snapshot, fill_or_mark_corrupt,
)
from tests.server.fixture_store import running_server, write_fixture_session
from tests.server.test_ground_truth import build_fixture_snapshot
from tests.server.test_loader import make_loader, store  # noqa: F401 - the fixture

HANDLERS = {pattern: handler for _, pattern, handler in api.ROUTES}


def _query(full, pattern: str) -> dict[str, str]:
    """The path parameters a route needs, taken from the snapshot."""
    if "{actor_id}" in pattern:
        return {"actor_id": full.actors[0].actor_id}
    if "{node_id}" in pattern:
        return {"node_id": full.nodes[0].node_id}
    if "{job_id}" in pattern:
        return {"job_id": full.driver_jobs[0].job_id}
    return {}


@pytest.mark.parametrize("pattern", sorted(api.HEAD_ONLY))
def test_head_only_routes_answer_from_the_head_as_from_the_whole_snapshot(pattern):
    data = encode_snapshot(build_fixture_snapshot())
    full = decode_snapshot(data)
    head = decode_head(data)[1].head_view
    query = _query(full, pattern)

    def answer(snapshot):
        try:
            status, body = HANDLERS[pattern](snapshot, query)
        except api.ApiError as exc:  # some routes answer a session without the data as Ray does: an error
            return exc.status, exc.body()
        return status, msgspec.json.decode(body) if isinstance(body, bytes) else body

    assert answer(head) == answer(full)


def test_every_route_outside_head_only_reads_the_task_fields():
    """The set is not too small either: a route left out of HEAD_ONLY waits for the tasks for a reason."""
    data = encode_snapshot(build_fixture_snapshot())
    head = decode_head(data)[0]
    for pattern in ("/api/v0/tasks", "/api/v0/tasks/summarize", "/api/v0/tasks/timeline"):
        with pytest.raises(TasksNotDecoded):
            HANDLERS[pattern](head, {})


def _resealed(data: bytes, damage) -> bytes:
    """The snapshot with its sections changed by `damage`, CRCs recomputed (a writer's bug, not bit rot)."""
    parts = msgspec.msgpack.decode(data[len(_MAGIC) + 2:], type=_Sections)
    damage(parts)
    parts.crc32 = [zlib.crc32(p) for p in (parts.head, parts.drivers, *parts.tasks, parts.job_tasks)]
    return _MAGIC + struct.pack("<H", FORMAT_VERSION) + msgspec.msgpack.encode(parts)


def test_a_task_section_that_does_not_decode_marks_the_snapshot_incomplete():
    data = encode_snapshot(build_fixture_snapshot())
    bad = _resealed(data, lambda parts: parts.tasks.__setitem__(0, zlib.compress(b"\xc1 not msgpack")))
    head, tasks = decode_head(bad)
    assert head.complete and head.tasks is NOT_DECODED
    assert not fill_or_mark_corrupt(head, "snapshots/v4/x.snap", lambda: tasks.decode(head))
    assert not head.complete and head.tasks == [] and head.job_tasks == {}
    assert [p.key for p in head.objects_corrupt] == ["snapshots/v4/x.snap"]
    assert "task section" in head.objects_corrupt[0].reason
    assert api.list_tasks(head, {})[0] == 200  # answers, from no tasks


def test_a_damaged_part_fails_its_crc_before_anything_is_answered():
    data = bytearray(encode_snapshot(build_fixture_snapshot()))
    data[-40] ^= 0xFF  # inside the last parts (the task chunks, job_tasks)
    with pytest.raises(SnapshotFormatError, match="CRC32|corrupt"):
        decode_head(bytes(data))


async def test_a_replica_answers_the_head_first_and_the_tasks_once_decoded(store):  # noqa: F811
    ref = await write_fixture_session(store)
    first = make_loader(store)
    built = await first.get(ref)
    await first.close()

    second = make_loader(store)  # reads the stored snapshot
    try:
        entry = await second.get(ref, tasks=False)
        assert entry.task_count == len(built.snapshot.tasks)
        assert api.jobs(entry.snapshot, {}) == api.jobs(built.snapshot, {})
        counted_before = entry.nbytes  # counted from the start: the head, the recorded tasks, the compressed parts
        full = await second.get(ref)
        assert full is entry and entry.tasks_decoded
        assert [t.task_id for t in full.snapshot.tasks] == [t.task_id for t in built.snapshot.tasks]
        assert api.list_tasks(full.snapshot, {"detail": "1"}) == api.list_tasks(built.snapshot, {"detail": "1"})
        assert second.cache.currsize == entry.nbytes
        assert 0.5 * built.nbytes < entry.nbytes < 1.5 * built.nbytes  # re-measured once decoded
        assert counted_before >= 0.8 * built.nbytes
    finally:
        await second.close()


async def test_the_server_answers_the_overview_while_the_tasks_decode(store, monkeypatch):  # noqa: F811
    ref = await write_fixture_session(store)
    tasks_url, jobs_url = f"/s/{ref.tail}/api/v0/tasks?detail=1", f"/s/{ref.tail}/api/jobs/"
    async with running_server(store) as (client, _, _state):  # builds from raw and stores the snapshot
        expected_tasks = await (await client.get(tasks_url)).json()
        expected_jobs = await (await client.get(jobs_url)).json()
        expected_count = (await (await client.get(f"/s/{ref.tail}/rayhistory/status")).json())["tasks"]

    release = threading.Event()
    decode = TaskSection.decode

    def held_decode(self, snapshot):
        assert release.wait(30)
        decode(self, snapshot)

    monkeypatch.setattr(TaskSection, "decode", held_decode)
    async with running_server(store) as (client, _, state):  # another replica: reads the stored snapshot
        async with client.get(jobs_url) as resp:
            assert resp.status == 200 and resp.headers["X-Rayhistory-Complete"] == "true"
            assert await resp.json() == expected_jobs
        entry = state.cache.peek(ref)
        assert entry is not None and not entry.tasks_decoded  # answered from the head
        status = await (await client.get(f"/s/{ref.tail}/rayhistory/status")).json()
        assert status["tasks"] == expected_count > 0
        waiting = asyncio.ensure_future(client.get(tasks_url))
        await asyncio.sleep(0.2)
        assert not waiting.done()  # a task page waits for the decode
        release.set()
        async with await waiting as resp:
            assert resp.status == 200 and await resp.json() == expected_tasks


async def _session_whose_stored_tasks_do_not_decode(store):  # noqa: F811
    """The fixture session, compacted, then its stored snapshot's task section replaced by one that passes its
    CRCs but does not decode (a writer's bug). Returns (ref, the tasks the session has)."""
    from rayhistory.server.snapshot_store import StoredSnapshot, _envelope_decoder

    ref = await write_fixture_session(store)
    first = make_loader(store)
    built = await first.get(ref)
    await first.close()
    envelope = _envelope_decoder.decode(await store.get(built.snapshot_key))
    envelope.snapshot = _resealed(envelope.snapshot, lambda p: p.tasks.__setitem__(0, zlib.compress(b"\xc1 bad")))
    await store.put(built.snapshot_key, msgspec.msgpack.encode(StoredSnapshot(
        envelope.manifest, envelope.written_ms, envelope.writer, envelope.snapshot)))
    return ref, {t.task_id for t in built.snapshot.tasks}


async def test_a_late_object_never_builds_on_a_snapshot_whose_tasks_do_not_decode(store):  # noqa: F811
    # Folding the late batch onto no tasks would write a snapshot whose manifest covers every old batch:
    # the tasks would be gone from storage's snapshots for good. Built from raw instead, as for an
    # unreadable snapshot.
    from tests.server.fixture_store import late_task_batch, late_task_id
    from tests.conftest import HEAD_NODE_ID
    from rayhistory import layout
    from rayhistory.server.snapshot_store import decode_stored

    ref, tasks = await _session_whose_stored_tasks_do_not_decode(store)
    await store.put(layout.event_batch_key(ref, HEAD_NODE_ID, "latewriter", 1), late_task_batch(1))
    second = make_loader(store)
    try:
        entry = await second.get(ref)
    finally:
        await second.close()
    assert {t.task_id for t in entry.snapshot.tasks} == tasks | {late_task_id(1)}
    stored, _ = decode_stored(await store.get(entry.snapshot_key))
    assert {t.task_id for t in stored.tasks} == tasks | {late_task_id(1)}


async def test_a_replica_whose_stored_tasks_do_not_decode_rebuilds_on_its_next_load(store):  # noqa: F811
    from rayhistory.server.snapshot_store import decode_stored

    ref, tasks = await _session_whose_stored_tasks_do_not_decode(store)
    loader = make_loader(store)
    try:
        entry = await loader.get(ref)  # the head answers; the tasks fail to decode behind it
        assert entry.tasks_unreadable and entry.snapshot.tasks == [] and not entry.snapshot.complete
        rebuilt = await loader._load_now(ref, loader.progress(ref), entry, 0.0)  # what the next load does
    finally:
        await loader.close()
    assert {t.task_id for t in rebuilt.snapshot.tasks} == tasks and rebuilt.snapshot.complete
    stored, _ = decode_stored(await store.get(rebuilt.snapshot_key))
    assert {t.task_id for t in stored.tasks} == tasks
