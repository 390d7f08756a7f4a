"""The session list over real local storage (file://): kept merged incrementally, and started from index
digests.

Ground truth is a fresh SessionIndex reading every record one by one and `merge_records` folding them all
at once, the path the list took before it was incremental and that the operator still takes.
"""

from __future__ import annotations

import gzip
import random

import pytest

from rayhistory import layout
from rayhistory.index import IndexRecord, SessionIndex, encode_digest, merge_records
from rayhistory.layout import IndexKind, SessionRef
from rayhistory.server.session_list import DIGEST_AFTER_READS, SessionDirectory, sort_key
from rayhistory.store import Store
from tests.server.fixture_store import numbered_ref, running_server, write_index

REFRESH_S = 3600.0  # the tests refresh by hand


class CountingStore(Store):
    """A real file:// store that counts the index records read one by one (the cost a digest saves)."""

    def __init__(self, url: str):
        super().__init__(url)
        self.record_reads = 0

    async def get_many(self, keys):
        self.record_reads += sum(1 for k in keys if k.startswith(layout.index_root()))
        return await super().get_many(keys)


class DigestlessStore(CountingStore):
    """A store whose digests cannot be written, as with read-only credentials for that prefix (a failure
    injected here: the storage emulators' access policies are not part of these tests)."""

    async def put(self, key, data):
        if key.startswith(layout.index_digests_prefix()):
            raise PermissionError("read-only")
        await super().put(key, data)


@pytest.fixture
def store(tmp_path) -> CountingStore:
    return CountingStore(f"file://{tmp_path}/store")


async def truth(store: Store) -> list:
    records = await SessionIndex(Store(store.url)).refresh()
    return sorted(merge_records(records), key=sort_key)


async def write_sessions(store: Store, numbers, dead: bool = False) -> list[SessionRef]:
    refs = [numbered_ref(n, cluster=f"c{n % 7}") for n in numbers]
    for ref in refs:
        await write_index(store, ref, IndexKind.LIVE, layout.session_start_ms(ref.session) + 1000)
        if dead:
            await write_index(store, ref, IndexKind.DEAD, layout.session_start_ms(ref.session) + 2000,
                              reason="cluster deleted")
    return refs


async def digests(store: Store) -> list[str]:
    return [o.key for o in await store.list(layout.index_digests_prefix())]


def test_a_sessions_records_merge_as_the_storage_layout_says_in_any_order():
    """docs/storage-layout.md, "The session index": nodes are the union, the state is dead once one dead
    record exists and the first one's end counts, the latest owner wins, and the order read does not matter."""
    node_a, node_b = "a" * 56, "b" * 56
    ref = numbered_ref(3)
    common = {"namespace": ref.namespace, "cluster": ref.cluster, "session": ref.session}
    records = [
        IndexRecord(kind="live", at_ms=100, owner_kind="RayJob", owner_name="nightly", start_ms=90,
                    node_ids=[node_b], **common),
        IndexRecord(kind="live", at_ms=150, start_ms=95, node_ids=[node_a], **common),
        IndexRecord(kind="flushed", at_ms=200, node_ids=[node_a], **common),
        IndexRecord(kind="dead", at_ms=300, end_ms=290, reason="cluster deleted", **common),
        IndexRecord(kind="dead", at_ms=400, end_ms=390, reason="again", owner_kind="RayService",
                    owner_name="web", **common),
    ]
    expected = dict(state="dead", start_ms=90, end_ms=290, dead_reason="cluster deleted", owner_kind="RayService",
                    owner_name="web", node_ids=[node_a, node_b], flushed_node_ids=[node_a], last_update_ms=400,
                    imported_ms=0)
    rng = random.Random(3)
    for _ in range(5):
        rng.shuffle(records)
        (merged,) = merge_records(records)
        assert merged.ref == ref
        assert {k: getattr(merged, k) for k in expected} == expected
    (live,) = merge_records([IndexRecord(kind="live", at_ms=5, **common)])
    assert (live.state, live.end_ms, live.start_ms) == ("live", 0, layout.session_start_ms(ref.session))


async def test_incremental_list_equals_a_full_merge_through_adds_ends_and_removals(store):
    rng = random.Random(15)
    directory = SessionDirectory(SessionIndex(store), REFRESH_S)
    live: list[SessionRef] = []
    next_number = 0
    for step in range(12):
        added = await write_sessions(store, range(next_number, next_number + rng.randint(0, 6)))
        next_number += len(added)
        live += added
        for ref in rng.sample(live, min(len(live), rng.randint(0, 3))):  # some end
            await write_index(store, ref, IndexKind.DEAD, layout.now_ms() + step, reason=f"step {step}")
        for ref in rng.sample(live, min(len(live), rng.randint(0, 2))):  # retention removes some
            await store.delete_prefix(layout.index_session_prefix(ref))
            live.remove(ref)
        assert await directory.refresh() == await truth(store), f"step {step}"
        for ref in live:
            assert directory.find(ref) == next(s for s in directory.sessions if s.ref == ref)
    assert len(directory.sessions) == len(live) > 0


async def test_a_second_replica_starts_from_the_digest_and_reads_only_what_it_lacks(store):
    refs = await write_sessions(store, range(DIGEST_AFTER_READS // 2 + 1), dead=True)  # 2 records each
    first = SessionDirectory(SessionIndex(store), REFRESH_S)
    expected = await first.refresh()
    assert len(await digests(store)) == 1, "a refresh that read 1000 records writes a digest"
    assert store.record_reads == DIGEST_AFTER_READS + 2

    # what changes after the digest: a new session, one that ends, one retention removes
    (new,) = await write_sessions(store, [9000])
    await write_index(store, refs[1], IndexKind.FLUSHED, layout.now_ms())
    await store.delete_prefix(layout.index_session_prefix(refs[0]))
    reads_before = store.record_reads
    second = SessionDirectory(SessionIndex(store), REFRESH_S)
    sessions = await second.refresh()
    assert store.record_reads - reads_before == 2, "only the two records written after the digest"
    assert sessions == await truth(store)
    assert second.find(refs[0]) is None, "a record the listing lacks is not brought back by the digest"
    assert second.find(new) is not None and second.find(refs[1]).flushed_node_ids
    assert len(sessions) == len(expected)  # one removed, one added
    assert len(await digests(store)) == 1, "it read 2 records one by one: no new digest"


async def test_a_new_digest_replaces_the_older_ones(store):
    await write_sessions(store, range(DIGEST_AFTER_READS + 1))
    await SessionDirectory(SessionIndex(store), REFRESH_S).refresh()
    (old,) = await digests(store)
    await write_sessions(store, range(5000, 5000 + DIGEST_AFTER_READS))
    index = SessionIndex(store)
    directory = SessionDirectory(index, REFRESH_S)
    await directory.refresh()
    (newer,) = await digests(store)
    assert newer != old and newer.rsplit("/", 1)[-1] > old.rsplit("/", 1)[-1]
    assert index.read_since_digest == 0


@pytest.mark.parametrize("damage", ["garbage", "truncated", "not_a_digest", "another_version"])
async def test_a_damaged_digest_costs_only_the_reads_it_would_have_saved(store, damage, caplog):
    await write_sessions(store, range(40), dead=True)
    good = encode_digest({})
    data = {"garbage": b"\x1f\x8b not gzip", "truncated": good[:-6],
            "not_a_digest": gzip.compress(b'{"records": [1, 2]}'),
            # a version whose records have other fields: its re-encoded records would lose some for good
            "another_version": gzip.compress(b'{"fields": ["kind"], "records": {}}')}[damage]
    await store.put(layout.index_digest_key("tests"), data)
    directory = SessionDirectory(SessionIndex(store), REFRESH_S)
    assert await directory.refresh() == await truth(store)
    assert store.record_reads == 80
    assert "index digest not used" in caplog.text


async def test_digest_records_are_checked_against_their_keys(store):
    """A digest is storage anyone with write access can craft: an entry is held to what its key says, as a
    record is; one that names another session is refused (and read from storage instead), and one whose
    key is not listed never shows."""
    (ref,) = await write_sessions(store, [1])
    (key,) = [o.key for o in await store.list(layout.index_session_prefix(ref))]
    forged = IndexRecord(kind="dead", namespace="other", cluster="c1", session=ref.session, at_ms=1, reason="forged")
    ghost_ref = numbered_ref(2, namespace="ghost")
    ghost_key = layout.index_record_key(ghost_ref, IndexKind.DEAD, "forger", 5)
    ghost = IndexRecord(kind="dead", namespace="ghost", cluster="demo", session=ghost_ref.session, at_ms=5)
    await store.put(layout.index_digest_key("forger"), encode_digest({key: forged, ghost_key: ghost}))
    directory = SessionDirectory(SessionIndex(store), REFRESH_S)
    sessions = await directory.refresh()
    assert sessions == await truth(store)
    assert [(s.namespace, s.state) for s in sessions] == [("ray", "live")]
    assert store.record_reads == 1, "the refused entry's record is read from storage"


async def test_a_digest_that_cannot_be_written_leaves_the_list_right_and_is_not_retried_each_refresh(tmp_path,
                                                                                                      caplog):
    store = DigestlessStore(f"file://{tmp_path}/store")
    await write_sessions(store, range(DIGEST_AFTER_READS + 1))
    index = SessionIndex(store)
    directory = SessionDirectory(index, REFRESH_S)
    assert await directory.refresh() == await truth(store)
    assert "index digest not written" in caplog.text and index.read_since_digest == 0
    assert await digests(store) == []


async def test_clusters_on_a_replica_started_from_a_digest_answers_as_one_that_read_every_record(store):
    await write_sessions(store, range(DIGEST_AFTER_READS), dead=True)
    async with running_server(store, index_refresh_interval=REFRESH_S) as (client, _, _state):
        cold = await (await client.get("/clusters")).json()
    assert len(await digests(store)) == 1
    reads = store.record_reads
    async with running_server(store, index_refresh_interval=REFRESH_S) as (client, _, _state):
        warm = await (await client.get("/clusters")).json()
    assert store.record_reads == reads
    assert warm == cold and warm["total"] == DIGEST_AFTER_READS
    assert {s["state"] for s in cold["sessions"]} == {"dead"}
