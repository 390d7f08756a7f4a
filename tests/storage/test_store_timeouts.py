"""Every Store call has an overall timeout (`storage_timeout_s`): against a storage endpoint that accepts and
never answers (tests/backends.py HangingEndpoint, used as the s3 endpoint of real s3fs), the caller gets
StorageTimeout in time, the stall is visible in `Store.stats()` while it lasts, and the thread left behind
never blocks the event loop's own worker threads. The server side (metrics, /healthz, 503) is at the end."""

from __future__ import annotations

import asyncio
import time

import pytest

from rayhistory.config import CommonSettings
from rayhistory.store import ObjectNotFound, StorageTimeout, Store, StoreError, StoreStats, is_storage_failure
from tests.backends import hanging_s3
from tests.conftest import SESSION_NAME

KEY = f"v1/sessions/ray/demo/{SESSION_NAME}/events/x.jsonl.gz"


def test_storage_timeout_is_a_common_setting(monkeypatch):
    assert CommonSettings().storage_timeout_s == 30.0
    monkeypatch.setenv("RAYHISTORY_STORAGE_TIMEOUT_S", "2.5")
    assert CommonSettings().storage_timeout_s == 2.5


async def test_a_hanging_store_times_out_and_shows_the_stall_in_its_stats():
    with hanging_s3() as s3:
        store = Store("s3://bucket/prefix", s3.s3_options(), timeout_s=0.5)
        assert store.stats() == StoreStats(calls=0, in_flight=0, oldest_in_flight_s=0.0, timeouts=0, errors=0,
                                           timeout_s=0.5, seconds_since_timeout=None)
        started = time.monotonic()
        call = asyncio.ensure_future(store.get(KEY))
        await asyncio.sleep(0.3)
        during = store.stats()
        assert during.in_flight == 1 and during.oldest_in_flight_s > 0.2  # (a busy machine may sleep longer)
        with pytest.raises(StorageTimeout) as timed_out:
            await call
        assert time.monotonic() - started < 10  # bounded by the timeout, not by the backend (which never answers)
        assert isinstance(timed_out.value, StoreError) and is_storage_failure(timed_out.value)
        assert "get" in str(timed_out.value) and "0.5" in str(timed_out.value)
        # the thread is still stuck in the backend: still in flight, and getting older
        await asyncio.sleep(0.2)
        after = store.stats()
        assert after.timeouts == 1 and after.calls == 1 and after.in_flight == 1
        assert after.oldest_in_flight_s > 0.6 and after.seconds_since_timeout is not None
        # every kind of call is bounded
        for op in (store.list("v1/"), store.put(KEY, b"x"), store.exists(KEY), store.delete([KEY]),
                   store.get_range(KEY, 0, 10)):
            with pytest.raises(StorageTimeout):
                await op
        assert store.stats().timeouts == 6
        # stuck storage threads are the store's own: the loop's default executor is free for other work
        assert await asyncio.wait_for(asyncio.to_thread(lambda: "free"), 2) == "free"
    for _ in range(100):  # the endpoint is gone: the stuck calls fail and leave
        if store.stats().in_flight == 0:
            break
        await asyncio.sleep(0.1)
    assert store.stats().in_flight == 0


async def test_calls_in_a_healthy_store_are_counted_and_leave(tmp_path):
    store = Store(f"file://{tmp_path}/store", timeout_s=5)
    await store.put(KEY, b"data")
    got = await store.get_many([KEY, KEY + ".missing"])
    assert got[KEY] == b"data" and isinstance(got[KEY + ".missing"], ObjectNotFound)
    stats = store.stats()
    assert stats.calls == 3 and stats.in_flight == 0 and stats.timeouts == 0
    assert stats.errors == 0  # an object that is not there is an answer, not a storage error


async def test_a_cancellation_that_comes_as_a_call_finishes_is_never_dropped(tmp_path):
    """Python 3.11's wait_for returns the result when a cancellation arrives just as the inner call
    finishes: a background task cancelled at shutdown (the index refresher) then went on forever and
    the app never stopped (seen in CI). Here the call finishes while the loop is blocked, then the task is
    cancelled before the loop sees the result: the task must end cancelled."""
    store = Store(f"file://{tmp_path}/store")
    await store.put(KEY, b"x")
    for _ in range(5):
        call = asyncio.ensure_future(store.list("v1/"))
        await asyncio.sleep(0)  # the task has handed the call to a thread and waits on it
        time.sleep(0.3)  # the loop is blocked: the thread finishes and queues its result
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
