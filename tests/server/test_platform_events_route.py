"""api/v0/platform_events of a stored session over HTTP (issue 14, item 4): real aiohttp server, file:// store.

The batches are written as the operator writes them (rayhistory.platform_events.encode_batch under
layout.platform_events_batch_key); the operator's side is tested in tests/operator/test_platform_events.py
and against the real control plane in test_k8s_operator.py.
"""

from __future__ import annotations

from rayhistory import layout
from rayhistory.platform_events import encode_batch, record_from_event
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
