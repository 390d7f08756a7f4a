"""api/v0/platform_events of a stored session over HTTP (issue 14, item 4): real aiohttp server, file:// store.

The batches are written as the operator writes them (rayhistory.platform_events.encode_batch under
layout.platform_events_batch_key); the operator's side is tested in tests/operator/test_platform_events.py
and against the real control plane in test_k8s_operator.py.
"""

from __future__ import annotations

import json

from rayhistory import layout
from rayhistory.layout import SessionRef
from rayhistory.platform_events import encode_batch, platform_events_answer, record_from_event
from rayhistory.server.platform_events import PlatformEventsReader
from rayhistory.store import Store
from tests.operator.test_platform_events import k8s_event
from tests.server.fixture_store import running_server, write_fixture_session


async def test_a_dead_sessions_kept_events_are_served_and_the_probe_follows_them(tmp_path):
    store = Store(f"file://{tmp_path}/store")
    ref = await write_fixture_session(store)
    async with running_server(store, index_refresh_interval=0.2) as (client, _, state):
        base = f"/s/{ref.tail}/api/v0/platform_events"
        async with client.head(base) as resp:
            assert resp.status == 404  # nothing kept: the UI hides its Platform Events page, as with Ray
        records = [record_from_event(k8s_event("u1", count=2), ref.cluster),
                   record_from_event(k8s_event("u2", reason="Evicted", last="2026-12-01T11:00:00Z"), ref.cluster)]
        await store.put(layout.platform_events_batch_key(ref, "operator1", 1), encode_batch(records))
        # a later version of u1, a corrupt batch (hides only itself) and an object that is not a batch
        await store.put(layout.platform_events_batch_key(ref, "operator1", 2),
                        encode_batch([record_from_event(k8s_event("u1", count=9, rv="200"), ref.cluster)]))
        await store.put(layout.platform_events_batch_key(ref, "operator1", 3), b"\x1f\x8bnot really")
        await store.put(layout.platform_events_prefix(ref) + "notes.txt", b"ignored")
        state.platform_events.ttl_s = 0
        async with client.head(base) as resp:
            assert resp.status == 200
        async with client.get(base) as resp:
            assert resp.status == 200
            body = await resp.json()
        events = body["data"]["events"]
        assert [(e["platformEvent"]["reason"], e["platformEvent"]["customFields"]) for e in events] == [
            ("Evicted", {"count": "3"}), ("FailedScheduling", {"count": "9"})]
        other = layout.SessionRef(ref.namespace, "other", ref.session)
        async with client.get(f"/s/{other.tail}/api/v0/platform_events") as resp:
            assert resp.status == 404
        async with client.get(f"/s/{ref.namespace}/..%2F..%2Fx/{ref.session}/api/v0/platform_events") as resp:
            assert resp.status == 404


class CountingStore(Store):
    """A real file:// store that counts the objects read: what the reader keeps shows in what it reads again."""

    reads = 0

    async def get(self, key: str) -> bytes:
        self.reads += 1
        return await super().get(key)


async def test_the_reader_keeps_one_answer_per_session_for_the_last_sessions_only(tmp_path):
    store = CountingStore(f"file://{tmp_path}/store")
    refs = [SessionRef("default", f"c{i}", "session_2026-12-01_10-00-00_000000_1") for i in range(3)]
    for ref in refs:
        await store.put(layout.platform_events_batch_key(ref, "operator1", 1),
                        encode_batch([record_from_event(k8s_event("u1"), ref.cluster)]))
    reader = PlatformEventsReader(store, ttl_s=0, max_sessions=2)  # listed on every ask: a new batch shows
    for ref in refs:
        expected = platform_events_answer([record_from_event(k8s_event("u1"), ref.cluster)])
        assert json.loads(await reader.answer(ref)) == expected
    assert store.reads == 3
    await reader.answer(refs[2])
    await reader.answer(refs[1])
    assert store.reads == 3  # the last two sessions' answers are kept
    await reader.answer(refs[0])
    assert store.reads == 4  # the first one's was not: two is the bound
    later = record_from_event(k8s_event("u2", reason="Evicted", last="2026-12-01T11:00:00Z"), refs[0].cluster)
    await store.put(layout.platform_events_batch_key(refs[0], "operator1", 2), encode_batch([later]))
    assert json.loads(await reader.answer(refs[0])) == platform_events_answer(
        [record_from_event(k8s_event("u1"), refs[0].cluster), later])
    assert await reader.answer(SessionRef("default", "none", refs[0].session)) is None
