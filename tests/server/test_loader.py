"""The session loader, the LRU and the compacted snapshots, over real local storage (file://).

Each test writes the fixture session as the collector writes it (fixture_store.py) and loads it through
the same objects the server uses. HTTP-level versions of the same guarantees are in test_routes.py.
"""

from __future__ import annotations

import asyncio
import gzip

import pytest

from rayhistory import layout
from rayhistory.index import SessionIndex
from rayhistory.layout import IndexKind
from rayhistory.server.cache import SnapshotCache
from rayhistory.server.loader import LoadTimeout, SessionLoader, SessionNotFound
from rayhistory.server.metrics import ServerMetrics
from rayhistory.server.snapshot import FORMAT_VERSION
from rayhistory.server.snapshot_store import decode_stored, list_session
from rayhistory.store import Store
from tests.server.fixture_store import (
    WRITER, late_task_batch, late_task_id, numbered_ref, write_fixture_session, write_index,
)
from tests.conftest import HEAD_NODE_ID, api_answer


def make_loader(store: Store, max_sessions: int = 10, max_bytes: int = 1 << 30, timeout: float = 60.0) -> SessionLoader:
    """One replica's loader, as ServerState.create wires it."""
    metrics = ServerMetrics()
    writer = layout.new_writer_id()
    cache = SnapshotCache(max_sessions, max_bytes, metrics)
    return SessionLoader(store, SessionIndex(store, writer), cache, metrics, writer, timeout, live_refresh_s=3600)


def loads(loader: SessionLoader, source: str | None = None, result: str = "ok") -> float:
    registry = loader.metrics.registry
    sources = [source] if source else ["raw", "snapshot", "snapshot+raw", "memory", "memory+raw", "none"]
    return sum(registry.get_sample_value("rayhistory_session_loads_total", {"source": s, "result": result}) or 0
               for s in sources)


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(f"file://{tmp_path}/store")


async def stored_snapshots(store: Store, ref) -> list[str]:
    return [o.key for o in await store.list(layout.snapshots_prefix(ref, FORMAT_VERSION))]


async def test_fifty_concurrent_gets_of_a_cold_session_cause_one_load(store):
    ref = await write_fixture_session(store)
    loader = make_loader(store)
    try:
        entries = await asyncio.gather(*(loader.get(ref) for _ in range(50)))
    finally:
        await loader.close()
    assert loads(loader) == 1
    assert all(e is entries[0] for e in entries)
    # every task attempt the live dashboard listed (it leaves driver tasks out) is in the snapshot
    live_ids = {t["task_id"] for t in api_answer("api__v0__tasks__detail=1__limit=10000.json")["data"]["result"]["result"]}
    assert live_ids <= {t.task_id for t in entries[0].snapshot.tasks}


async def test_a_cancelled_first_caller_does_not_cancel_the_load(store):
    ref = await write_fixture_session(store)
    loader = make_loader(store)
    try:
        first = asyncio.create_task(loader.get(ref))
        while loader.job(ref) is None:
            await asyncio.sleep(0)
        job = loader.job(ref)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        assert not job.task.cancelled()
        entry = await loader.get(ref)
    finally:
        await loader.close()
    assert job.task.done() and not job.task.cancelled()
    assert entry.snapshot.complete
    assert loads(loader) == 1


async def test_unknown_session_is_not_found_and_not_cached(store):
    await write_fixture_session(store)
    loader = make_loader(store)
    try:
        with pytest.raises(SessionNotFound):
            await loader.get(numbered_ref(1))
    finally:
        await loader.close()
    assert len(loader.cache) == 0
    assert loads(loader, "none", "not_found") == 1


async def test_lru_byte_bound_holds_while_loading_many_sessions(store):
    refs = [await write_fixture_session(store, numbered_ref(i), with_logs=False) for i in range(8)]
    probe = make_loader(store)
    one = (await probe.get(refs[0])).nbytes
    await probe.close()
    max_bytes = int(one * 2.5)  # room for two snapshots, never three
    loader = make_loader(store, max_sessions=100, max_bytes=max_bytes)
    held = []
    try:
        results = await asyncio.gather(*(loader.get(ref) for ref in refs))
        for ref, entry in zip(refs, results):
            held.append(entry)
            assert loader.cache.currsize <= max_bytes
            assert len(loader.cache) <= 2
        # sequential loads too: the bound holds after each one
        for ref in refs:
            entry = await loader.get(ref)
            assert loader.cache.currsize <= max_bytes
            assert len(loader.cache) <= 2
    finally:
        await loader.close()
    assert loader.metrics.registry.get_sample_value("rayhistory_cache_evictions_total") >= len(refs) - 2
    # an evicted snapshot is still whole for whoever holds it (a request in flight)
    assert refs[0] not in loader.cache
    assert len(held[0].snapshot.tasks) == len(results[-1].snapshot.tasks) > 0
    assert loader.metrics.registry.get_sample_value("rayhistory_cache_bytes") == loader.cache.currsize


async def test_count_bound_holds(store):
    refs = [await write_fixture_session(store, numbered_ref(i), with_logs=False) for i in range(4)]
    loader = make_loader(store, max_sessions=2)
    try:
        for ref in refs:
            await loader.get(ref)
            assert len(loader.cache) <= 2
        # a miss reloads transparently (from the compacted snapshot written by the first load)
        again = await loader.get(refs[0])
    finally:
        await loader.close()
    assert again.snapshot.tasks
    assert loads(loader, "snapshot") == 1


async def test_corrupt_and_truncated_objects_give_an_incomplete_snapshot(store):
    ref = await write_fixture_session(store)
    events = (await list_session(store, ref)).events
    corrupt, truncated = events[3].key, events[5].key
    await store.put(corrupt, b"this is not gzip")
    whole = await store.get(truncated)
    await store.put(truncated, whole[: len(whole) // 2])
    loader = make_loader(store)
    try:
        entry = await loader.get(ref)
    finally:
        await loader.close()
    snapshot = entry.snapshot
    assert not snapshot.complete
    assert {p.key for p in snapshot.objects_corrupt} == {corrupt, truncated}
    assert snapshot.objects_missing == []
    assert snapshot.tasks  # the rest of the session is there
    # completeness travels with the stored snapshot
    stored, _ = decode_stored(await store.get(entry.snapshot_key))
    assert not stored.complete and len(stored.objects_corrupt) == 2


async def test_compacted_snapshot_is_written_once_and_read_by_other_replicas(store):
    ref = await write_fixture_session(store)
    first = make_loader(store)
    entry = await first.get(ref)
    await first.close()
    keys = await stored_snapshots(store, ref)
    assert keys == [entry.snapshot_key]
    _, manifest = decode_stored(await store.get(entry.snapshot_key))
    raw = (await list_session(store, ref)).raw
    assert manifest == {o.key: o.size for o in raw}

    second = make_loader(store)  # another replica: reads the snapshot, parses no raw event
    other = await second.get(ref)
    await second.close()
    assert loads(second, "snapshot") == 1
    assert second.progress(ref).events == 0
    assert await stored_snapshots(store, ref) == keys
    assert [t.task_id for t in other.snapshot.tasks] == [t.task_id for t in entry.snapshot.tasks]


async def test_a_late_raw_object_is_merged_and_the_snapshot_rewritten(store):
    ref = await write_fixture_session(store)
    first = make_loader(store)
    before = await first.get(ref)
    await first.close()
    assert late_task_id(1) not in {t.task_id for t in before.snapshot.tasks}

    late_key = layout.event_batch_key(ref, HEAD_NODE_ID, "latewriter", 1)
    await store.put(late_key, late_task_batch(1))
    second = make_loader(store)
    after = await second.get(ref)
    await second.close()
    assert loads(second, "snapshot+raw") == 1
    assert second.progress(ref).events == 2  # only the late batch was parsed
    assert late_task_id(1) in {t.task_id for t in after.snapshot.tasks}
    assert len(after.snapshot.tasks) == len(before.snapshot.tasks) + 1
    keys = await stored_snapshots(store, ref)
    assert keys == [after.snapshot_key] and after.snapshot_key != before.snapshot_key
    _, manifest = decode_stored(await store.get(after.snapshot_key))
    assert late_key in manifest

    third = make_loader(store)
    await third.get(ref)
    await third.close()
    assert loads(third, "snapshot") == 1
    assert await stored_snapshots(store, ref) == keys


async def test_a_live_session_is_served_but_not_stored(store):
    ref = await write_fixture_session(store, dead=False)
    loader = make_loader(store)
    entry = await loader.get(ref)
    assert entry.live and entry.snapshot_key == ""
    assert await stored_snapshots(store, ref) == []
    # once it is marked dead, a refresh (the operator's pre-warm) stores it
    await write_index(store, ref, IndexKind.DEAD, layout.now_ms(), end_ms=layout.now_ms(), reason="test")
    refreshed = await loader.refresh(ref)
    await loader.close()
    assert not refreshed.live
    assert await stored_snapshots(store, ref) == [refreshed.snapshot_key]
    assert loads(loader, "memory") == 1  # built from the snapshot in memory, no raw object read again


async def test_a_slow_load_times_the_request_out_but_keeps_going(store):
    ref = await write_fixture_session(store)
    gate = asyncio.Event()

    class GatedStore(Store):
        # Emulated slowness: a store whose reads wait for the test to open a gate, so the load
        # certainly outlasts the request's timeout (no real backend is reliably that slow).
        async def get_many(self, keys):
            if any("/events/" in k for k in keys):
                await gate.wait()
            return await super().get_many(keys)

    slow = GatedStore(store.url)
    loader = make_loader(slow, timeout=0.2)
    try:
        with pytest.raises(LoadTimeout) as info:
            await loader.get(ref)
        assert info.value.progress.phase == "reading_raw"
        assert loader.state(ref) == "loading"
        gate.set()
        loader.load_timeout = 60
        entry = await loader.get(ref)
    finally:
        gate.set()
        await loader.close()
    assert entry.snapshot.tasks
    assert loads(loader) == 1


async def test_unreadable_stored_snapshot_is_rebuilt_from_raw(store):
    ref = await write_fixture_session(store)
    bad_key = layout.snapshot_key(ref, FORMAT_VERSION, WRITER)
    await store.put(bad_key, gzip.compress(b"garbage"))
    loader = make_loader(store)
    entry = await loader.get(ref)
    await loader.close()
    assert loads(loader, "raw") == 1
    assert entry.snapshot.complete
    assert await stored_snapshots(store, ref) == [entry.snapshot_key]


async def test_a_live_session_is_refreshed_in_the_background(store):
    ref = await write_fixture_session(store, dead=False, with_logs=False)
    loader = make_loader(store)
    loader.live_refresh_s = 0  # every get of a live entry starts a refresh
    try:
        first = await loader.get(ref)
        await store.put(layout.event_batch_key(ref, HEAD_NODE_ID, "latewriter", 1), late_task_batch(1))
        stale = await loader.get(ref)  # answered at once from memory, refresh started
        assert stale is first
        job = loader.job(ref)
        assert job is not None
        fresh = await loader.wait(job)
        assert loader.progress(ref).events == 2  # only the new batch was read
    finally:
        await loader.close()
    assert late_task_id(1) in {t.task_id for t in fresh.snapshot.tasks}
    assert loader.cache.peek(ref) is fresh
    assert await stored_snapshots(store, ref) == []  # still live: never stored


async def test_an_unreadable_object_is_missing_and_retried_by_the_next_load(store):
    ref = await write_fixture_session(store)
    unreadable = (await list_session(store, ref)).events[2].key

    class DenyingStore(Store):
        # Emulated: a store that refuses one object (as a bucket policy or an outage would); a real
        # backend cannot be made to deny one key on demand here.
        async def get_many(self, keys):
            out = await super().get_many(keys)
            if unreadable in out:
                out[unreadable] = PermissionError("access denied")
            return out

    first = make_loader(DenyingStore(store.url))
    entry = await first.get(ref)
    await first.close()
    assert not entry.snapshot.complete
    assert [(p.key, p.reason) for p in entry.snapshot.objects_missing] == [(unreadable, "PermissionError: access denied")]
    assert unreadable not in entry.manifest  # so the next load reads it again

    second = make_loader(store)  # the object is readable again
    fixed = await second.get(ref)
    await second.close()
    assert fixed.snapshot.complete and fixed.snapshot.objects_missing == []
    assert second.progress(ref).objects_done == 1
    assert unreadable in fixed.manifest
    assert await stored_snapshots(store, ref) == [fixed.snapshot_key]
