"""The LRU's measurement and bounds (the loader-level bound tests are in test_loader.py)."""

from __future__ import annotations

import gc
import json
import tracemalloc

from rayhistory import layout
from rayhistory.server.cache import CacheEntry, EncodedRows, SnapshotCache, measure_bytes
from rayhistory.server.metrics import ServerMetrics
from rayhistory.server.snapshot import SnapshotBuilder, decode_snapshot, encode_snapshot
from tests.server.fixture_store import event_batches, fixture_ref, late_task_batch, numbered_ref


def fixture_snapshot_bytes(extra_tasks: int = 0) -> bytes:
    ref = fixture_ref()
    builder = SnapshotBuilder(ref, True, layout.now_ms())
    for i, (_, data) in enumerate(event_batches()):
        builder.add_event_batch(f"k{i}", data)
    for n in range(extra_tasks):
        builder.add_event_batch(f"late{n}", late_task_batch(n))
    return encode_snapshot(builder.build())


def test_measured_bytes_track_what_python_allocates():
    data = fixture_snapshot_bytes(extra_tasks=2000)  # enough tasks for the sampling to matter
    gc.collect()
    tracemalloc.start()
    try:
        snapshot = decode_snapshot(data)
        allocated, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    measured = measure_bytes(snapshot)
    assert 0.8 * allocated <= measured <= 1.25 * allocated, (measured, allocated)


def entry(nbytes: int) -> CacheEntry:
    return CacheEntry(snapshot=object(), live=False, manifest={}, nbytes=nbytes)


def test_bounds_evictions_and_gauges():
    metrics = ServerMetrics()
    cache = SnapshotCache(max_sessions=3, max_bytes=1000, metrics=metrics)
    refs = [numbered_ref(i) for i in range(6)]
    for ref in refs[:3]:
        assert cache.put(ref, entry(300))
    assert len(cache) == 3 and cache.currsize == 900
    assert cache.get(refs[0]) is not None  # refs[0] is now the most recent
    assert cache.put(refs[3], entry(300))  # over the byte bound: the least recent (refs[1]) goes
    assert refs[1] not in cache and refs[0] in cache
    assert cache.put(refs[4], entry(50))
    assert cache.put(refs[5], entry(50))  # over the count bound
    assert len(cache) == 3 and cache.currsize <= 1000
    assert metrics.registry.get_sample_value("rayhistory_cache_evictions_total") == 3
    assert metrics.registry.get_sample_value("rayhistory_cache_bytes") == cache.currsize
    assert metrics.registry.get_sample_value("rayhistory_cache_sessions") == 3
    # peek does not count or reorder
    hits = metrics.registry.get_sample_value("rayhistory_cache_hits_total")
    assert cache.peek(refs[5]) is not None and cache.peek(refs[1]) is None
    assert metrics.registry.get_sample_value("rayhistory_cache_hits_total") == hits


def test_an_entry_larger_than_the_cache_is_not_cached():
    cache = SnapshotCache(max_sessions=3, max_bytes=1000, metrics=ServerMetrics())
    cache.put(numbered_ref(0), entry(400))
    assert not cache.put(numbered_ref(1), entry(5000))
    assert numbered_ref(1) not in cache and numbered_ref(0) in cache


def test_encoded_rows_are_reused_bounded_and_go_with_their_snapshot():
    calls = []

    def encode(item):
        calls.append(item)
        return json.dumps(item).encode()

    rows = EncodedRows(max_bytes=1 << 20)
    a, b = decode_snapshot(fixture_snapshot_bytes()), decode_snapshot(fixture_snapshot_bytes())
    first = rows.rows(a, a.tasks[:5], True, lambda t: encode(t.task_id))
    assert rows.rows(a, a.tasks[:5], True, lambda t: encode(t.task_id)) == first and len(calls) == 5  # reused
    rows.rows(a, a.tasks[:5], False, lambda t: encode(t.attempt))  # another variant of the same items: its own rows
    b_rows = rows.rows(b, b.tasks[:5], True, lambda t: encode(t.task_id))  # an equal snapshot is another one
    assert len(calls) == 15 and b_rows == first
    del a
    gc.collect()
    rows.rows(b, b.tasks[:5], True, lambda t: encode(t.task_id))
    assert len(calls) == 15  # b's rows stayed
    rows.rows(b, b.tasks[5:6], True, lambda t: encode(t.task_id))  # a dead snapshot's rows go at the next insertion
    assert rows.nbytes == sum(len(json.dumps(t.task_id)) for t in b.tasks[:6])

    small = EncodedRows(max_bytes=200)
    small.rows(b, b.tasks, True, lambda t: encode(t.task_id))
    assert 0 < small.nbytes <= 200  # the oldest rows made room
    assert small.rows(b, b.tasks[-1:], True, lambda t: encode(t.task_id)) == [json.dumps(b.tasks[-1].task_id).encode()]
