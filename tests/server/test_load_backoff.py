"""A failed session load is remembered with an exponential backoff (issue 9, server side): requests during it get
a clear 503 with Retry-After and start no load; new objects in storage, a pre-warm or a success end it.

Over real local storage (file://); the failures are emulated (see FailingStore), the HTTP side is the real apps.
"""

from __future__ import annotations

import asyncio

import pytest

from rayhistory import layout
from rayhistory.server.snapshot_store import list_session
from rayhistory.store import Store
from tests.conftest import HEAD_NODE_ID
from tests.server.fixture_store import running_server, write_fixture_session
from tests.server.test_loader import loads, make_loader


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(f"file://{tmp_path}/store")



class FailingStore(Store):
    """Emulated: a store whose listing raises an error the loader does not expect, until `fail` is False
    (a real backend cannot be made to raise an arbitrary exception on demand)."""

    fail = True
    lists = 0

    async def list(self, prefix, timeout_s=None):
        if "/sessions/" in prefix:  # the session's own objects (layout.session_prefix), not the index
            type(self).lists += 1
            if self.fail:
                raise RuntimeError("the listing came back mangled")
        return await super().list(prefix, timeout_s)


async def test_a_failed_load_is_remembered_with_exponential_backoff(store):
    ref = await write_fixture_session(store, with_logs=False)
    failing = FailingStore(store.url)
    FailingStore.fail, FailingStore.lists = True, 0
    loader = make_loader(failing)
    loader.backoff_base_s, loader.backoff_max_s = 0.2, 0.5
    from rayhistory.server.loader import LoadBackoff, LoadFailed

    try:
        with pytest.raises(LoadFailed) as first:
            await loader.get(ref)
        assert "mangled" in str(first.value) and first.value.retry_after_s == pytest.approx(0.2, abs=0.05)
        for _ in range(20):  # every request during the backoff: a clear error, no new load
            with pytest.raises(LoadBackoff) as waiting:
                await loader.get(ref)
        assert FailingStore.lists == 1
        assert 0 < waiting.value.retry_after_s <= 0.2 and "mangled" in str(waiting.value)
        await asyncio.sleep(0.25)
        with pytest.raises(LoadFailed) as second:  # retried once the backoff is over; it doubles
            await loader.get(ref)
        assert second.value.retry_after_s == pytest.approx(0.4, abs=0.05)
        await asyncio.sleep(0.45)
        with pytest.raises(LoadFailed) as third:  # capped
            await loader.get(ref)
        assert third.value.retry_after_s == pytest.approx(0.5, abs=0.05)
        assert FailingStore.lists == 3
        FailingStore.fail = False
        await asyncio.sleep(0.55)
        entry = await loader.get(ref)  # a success forgets the failures
        assert entry.snapshot.tasks and loader.backoff(ref) is None
    finally:
        FailingStore.fail = True
        await loader.close()
    assert loads(loader, result="error") == 3


async def test_new_objects_in_storage_end_the_backoff(store):
    ref = await write_fixture_session(store, with_logs=False)
    events = (await list_session(store, ref)).events
    bad_key = events[0].key
    loader = make_loader(store)
    loader.backoff_base_s = 60

    from rayhistory.server import snapshot_store
    from rayhistory.server.loader import LoadBackoff, LoadFailed

    real_build = snapshot_store.build_session
    calls = []

    async def build_that_fails_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug in the builder")
        return await real_build(*args, **kwargs)

    import rayhistory.server.loader as loader_module

    loader_module.build_session, restore = build_that_fails_once, loader_module.build_session
    try:
        with pytest.raises(LoadFailed):
            await loader.get(ref)
        with pytest.raises(LoadBackoff):
            await loader.get(ref)
        # a new object (a late flush) is seen at the next check: the backoff is over at once
        await store.put(layout.event_batch_key(ref, HEAD_NODE_ID, "latewriter", 1), await store.get(bad_key))
        loader.backoff_check_s = 0
        entry = await loader.get(ref)
    finally:
        loader_module.build_session = restore
        await loader.close()
    assert entry.snapshot.tasks and len(calls) == 2


async def test_routes_answer_503_with_retry_after_while_a_load_backs_off(store):
    ref = await write_fixture_session(store, with_logs=False)
    failing = FailingStore(store.url)
    FailingStore.fail, FailingStore.lists = True, 0
    try:
        async with running_server(failing) as (client, _, state):
            for _ in range(5):
                resp = await client.get(f"/s/{ref.tail}/api/v0/tasks?detail=1")
                assert resp.status == 503, await resp.text()
                assert int(resp.headers["Retry-After"]) >= 1
                body = await resp.json()
                assert body["result"] is False and "mangled" in body["msg"]
            assert FailingStore.lists == 1
            status = await (await client.get(f"/s/{ref.tail}/rayhistory/status")).json()
            assert status["load_state"] == "failed" and "mangled" in status["error"] and status["retry_after_s"] > 0
    finally:
        FailingStore.fail = True


async def test_a_failing_background_refresh_of_a_live_session_backs_off_too(store):
    ref = await write_fixture_session(store, dead=False, with_logs=False)
    failing = FailingStore(store.url)
    FailingStore.fail, FailingStore.lists = False, 0
    loader = make_loader(failing)
    loader.live_refresh_s = 0  # every get of the live entry would start a refresh
    try:
        first = await loader.get(ref)
        FailingStore.fail = True
        assert await loader.get(ref) is first  # served from memory; the refresh starts and fails
        job = loader.job(ref)
        assert job is not None
        await asyncio.gather(job.task, return_exceptions=True)
        lists = FailingStore.lists
        for _ in range(10):  # still served, and no new refresh while the backoff runs
            assert await loader.get(ref) is first
            assert loader.job(ref) is None
        assert FailingStore.lists == lists
    finally:
        FailingStore.fail = True
        await loader.close()
