"""One suite, every backend: write, list by prefix, read, ranged read, delete, the session index,
and concurrent writers that never overwrite each other."""

from __future__ import annotations

import asyncio

import pytest

from rayhistory import layout
from rayhistory.index import SessionIndex, mark_dead, merge_records
from rayhistory.layout import IndexKind, SessionRef
from rayhistory.store import ObjectNotFound, Store

REF = SessionRef("ray", "demo-cluster", "session_2026-11-23_13-47-55_556257_9670")
NODE = "b9f6904d0ece740ede49c3a63814b9b8a86f18bd7142541a299c8dc2"


async def test_write_read_list_range_delete(store: Store):
    key = layout.event_batch_key(REF, NODE, "w1", 1, at_ms=1000)
    other = layout.endpoint_key(REF, "placement_groups", "w1", at_ms=2000)
    await store.put(key, b"0123456789")
    await store.put(other, b'{"a": 1}')
    assert await store.get(key) == b"0123456789"
    assert await store.get_range(key, 2, 5) == b"234"
    listed = await store.list(layout.events_prefix(REF))
    assert [(o.key, o.size) for o in listed] == [(key, 10)]
    assert {o.key for o in await store.list(layout.session_prefix(REF))} == {key, other}
    assert await store.list("v1/sessions/nope/") == []
    await store.delete([key])
    with pytest.raises(ObjectNotFound):
        await store.get(key)
    assert await store.delete_prefix(layout.session_prefix(REF)) == 1
    assert await store.list(layout.session_prefix(REF)) == []


async def test_ranges_exists_and_deleting_missing_keys(store: Store):
    key = layout.event_batch_key(REF, NODE, "w1", 1, at_ms=1000)
    other = layout.event_batch_key(REF, NODE, "w1", 2, at_ms=1000)
    await store.put(key, b"0123456789")
    await store.put(other, b"x")
    assert await store.get_range(key, 0, 1) == b"0"
    assert await store.get_range(key, 8, 100) == b"89"  # a range past the end is cut, as a slice is
    assert await store.get_range(key, 4, 4) == b""
    assert await store.exists(key)
    assert not await store.exists(key + ".missing")
    assert not await store.exists(layout.events_prefix(REF).rstrip("/"))  # a "folder" is not an object
    with pytest.raises(ObjectNotFound):
        await store.get_range(key + ".missing", 0, 2)
    await store.delete([key + ".missing", key, other])  # a missing key stops nothing
    assert await store.list(layout.session_prefix(REF)) == []


async def test_list_matches_any_key_prefix_not_only_folders(store: Store):
    keys = [layout.endpoint_key(SessionRef("ray", cluster, REF.session), "timezone", "w1", at_ms=1)
            for cluster in ("demo", "demo-cluster", "other")]
    for key in keys:
        await store.put(key, b"{}")
    assert [o.key for o in await store.list("v1/sessions/ray/demo")] == sorted(keys[:2])
    assert [o.key for o in await store.list("v1/sessions/ray/demo/")] == keys[:1]
    assert [o.key for o in await store.list("")] == sorted(keys)


async def test_stores_in_sibling_folders_of_one_bucket_stay_apart(store_config):
    url, options = store_config
    team_a, team_ab = Store(f"{url}/team-a", options), Store(f"{url}/team-ab", options)
    key = layout.endpoint_key(REF, "timezone", "w1", at_ms=1)
    await team_a.put(key, b"a")
    await team_ab.put(key, b"ab")
    assert [o.key for o in await team_a.list("")] == [key]
    assert [o.key for o in await team_a.list("v1/")] == [key]
    assert await team_ab.get(key) == b"ab"
    assert await team_a.delete_prefix("") == 1
    assert not await team_a.exists(key) and await team_ab.exists(key)
    assert [o.key for o in await Store(url, options).list("")] == [f"team-ab/{key}"]


async def test_listings_show_what_other_writers_did_since(store_config):
    url, options = store_config
    reader = Store(url, options)
    # another process: its own filesystem object, nothing shared with the reader
    writer = Store(url, {**options, "skip_instance_cache": True} if options else options)
    prefix = layout.endpoints_prefix(REF)
    first, second = (layout.endpoint_key(REF, "timezone", "w2", at_ms=at) for at in (1, 2))
    await writer.put(first, b"1")
    assert [o.key for o in await reader.list(prefix)] == [first]
    assert await reader.exists(first) and not await reader.exists(second)
    await writer.put(second, b"2")
    await writer.delete([first])
    assert [o.key for o in await reader.list(prefix)] == [second]
    assert await reader.exists(second) and not await reader.exists(first)


async def test_get_many_reports_missing_objects_without_raising(store: Store):
    key = layout.endpoint_key(REF, "timezone", "w1", at_ms=1)
    await store.put(key, b"x")
    got = await store.get_many([key, key + ".missing"])
    assert got[key] == b"x"
    assert isinstance(got[key + ".missing"], Exception)


async def test_concurrent_writers_never_overwrite_each_other(store: Store):
    writers = [layout.new_writer_id() for _ in range(8)]
    at = layout.now_ms()  # the same millisecond for every writer: names must still differ
    # 120 objects: more than one page of a listing for ossfs (100 keys a page)
    keys = [layout.event_batch_key(REF, NODE, w, seq, at_ms=at) for w in writers for seq in range(15)]
    assert len(set(keys)) == len(keys)
    await asyncio.gather(*(store.put(k, k.encode()) for k in keys))
    listed = await store.list(layout.events_prefix(REF))
    assert sorted(o.key for o in listed) == sorted(keys)
    got = await store.get_many(keys)
    assert all(got[k] == k.encode() for k in keys)
    await store.delete(keys)
    assert await store.list(layout.session_prefix(REF)) == []


async def test_session_index_lists_live_and_dead_sessions(store: Store):
    other = SessionRef("ray", "demo-cluster", "session_2026-11-24_08-00-00_000001_1")
    collector_a, collector_b = SessionIndex(store), SessionIndex(store)
    await collector_a.append(REF, IndexKind.LIVE, node_ids=[NODE], owner_kind="RayJob", owner_name="job-1")
    await collector_b.append(REF, IndexKind.LIVE, node_ids=["a" * 56])
    await collector_a.append(other, IndexKind.LIVE, node_ids=[NODE])
    await collector_a.append(REF, IndexKind.FLUSHED, node_ids=[NODE])

    reader = SessionIndex(store)
    sessions = await reader.sessions()
    assert [s.session for s in sessions] == [other.session, REF.session]  # newest first
    first = sessions[1]
    assert first.state == "live" and first.owner_kind == "RayJob" and first.owner_name == "job-1"
    assert first.node_ids == sorted([NODE, "a" * 56]) and first.flushed_node_ids == [NODE]
    assert first.start_ms == layout.session_start_ms(REF.session)

    marked = await mark_dead(store, "ray", "demo-cluster", reason="cluster deleted")
    assert sorted(s.session for s in marked) == sorted([REF.session, other.session])
    assert await mark_dead(store, "ray", "demo-cluster") == []  # idempotent
    after = {s.session: s for s in await reader.sessions("ray", "demo-cluster")}
    assert after[REF.session].state == "dead" and after[REF.session].end_ms > 0
    assert after[REF.session].dead_reason == "cluster deleted"
    assert await reader.sessions("ray", "other-cluster") == []


async def test_a_corrupt_index_record_does_not_hide_the_others(store: Store):
    index = SessionIndex(store)
    await index.append(REF, IndexKind.LIVE, node_ids=[NODE])
    await store.put(layout.index_record_key(REF, IndexKind.LIVE, "broken", at_ms=5), b"{not json")
    reader = SessionIndex(store)
    assert [s.session for s in await reader.sessions()] == [REF.session]
    assert len(reader.unreadable) == 1


@pytest.mark.parametrize("claims", [
    {"namespace": "other-ns"}, {"cluster": "other-cluster"}, {"session": "session_2026-01-01_00-00-00_000001_1"},
    {"namespace": "../../x"}, {"kind": "dead"},
])
async def test_an_index_record_that_names_another_session_than_its_key_is_refused(store: Store, claims):
    """Issue 9, item 5: a record stored under one session's prefix used to be taken for whatever it named:
    listing `../../x` or marking another namespace's session dead."""
    from rayhistory.index import IndexRecord, encode_record

    index = SessionIndex(store)
    await index.append(REF, IndexKind.LIVE, node_ids=[NODE])
    forged = IndexRecord(**{"kind": "live", "namespace": REF.namespace, "cluster": REF.cluster,
                            "session": REF.session, "at_ms": 9, **claims})
    await store.put(layout.index_record_key(REF, IndexKind.LIVE, "forger", at_ms=9), encode_record(forged))
    reader = SessionIndex(store)
    [only] = await reader.sessions()
    assert (only.namespace, only.cluster, only.session, only.state) == (REF.namespace, REF.cluster, REF.session, "live")
    assert list(reader.unreadable) == [layout.index_record_key(REF, IndexKind.LIVE, "forger", at_ms=9)]
    assert "stored under" in next(iter(reader.unreadable.values()))


def test_merge_is_order_independent():
    from rayhistory.index import IndexRecord

    recs = [
        IndexRecord(kind="live", namespace="n", cluster="c", session=REF.session, at_ms=1, node_ids=["x"]),
        IndexRecord(kind="dead", namespace="n", cluster="c", session=REF.session, at_ms=5, end_ms=5, reason="r1"),
        IndexRecord(kind="dead", namespace="n", cluster="c", session=REF.session, at_ms=9, end_ms=9, reason="r2"),
    ]
    assert merge_records(recs) == merge_records(list(reversed(recs)))
    assert merge_records(recs)[0].end_ms == 5


def test_key_building_refuses_names_that_escape_their_prefix():
    for bad in ("..", "a/b", "", "-x", "a" * 300):
        with pytest.raises(layout.LayoutError):
            SessionRef(bad, "c", REF.session)
    with pytest.raises(layout.LayoutError):
        SessionRef("ns", "c", "session_../../x")
    for bad in ("../x", "/etc/passwd", "a//b", "a/./b", "a\\b", "a/../../b", "%2e%2e/x/.."):
        with pytest.raises(layout.LayoutError):
            layout.log_part_key(REF, NODE, bad, 0, 0)
    assert layout.log_part_key(REF, NODE, "events/event_GCS.log", 1, 42).endswith(
        "/logs/" + NODE + "/events/event_GCS.log/000001-0000000000000042.part"
    )


@pytest.mark.parametrize("name", [
    REF.session + "\n",  # `$` matches before a final newline
    REF.session[:-4] + "\uff19\uff16\uff17\uff10",  # fullwidth digits: `\d` without re.ASCII takes them
    REF.session[:-4] + "\u0669\u0660",  # Arabic-Indic digits
    REF.session + "9" * 50,  # a pid of 54 digits
    "session_2026-11-23_13-47-55_556257_",
])
def test_session_names_are_ascii_full_matches_of_bounded_length(name):
    """Issue 9, items 1 and 4: one check, in layout, for every part."""
    from rayhistory.events import check_event
    from rayhistory.events import RayEvent

    assert not layout.is_session_name(name)
    with pytest.raises(layout.LayoutError):
        layout.check_session(name)
    with pytest.raises(layout.LayoutError):
        SessionRef("ns", "c", name)
    assert "sessionName" in check_event(RayEvent(event_id="x", event_type="NODE_DEFINITION_EVENT", session_name=name))


@pytest.mark.parametrize("check,value", [
    (layout.check_name, "ns\n"), (layout.check_name, "n\uff53"), (layout.check_name, "a" * 254),
    (layout.check_node_id, NODE + "\n"), (layout.check_node_id, NODE.upper()), (layout.check_writer, "w\n"),
    (layout.check_relpath, "a/" * 20 + "b"), (layout.check_relpath, "x" * 1025), (layout.check_relpath, "raylet.out\n"),
    (layout.check_relpath, "r\uff41ylet.out"),
])
def test_every_name_check_is_ascii_full_match_and_bounded(check, value):
    with pytest.raises(layout.LayoutError):
        check(value)


@pytest.mark.parametrize("key", [
    "v1/index/ns/c/%s/live-\uff11234567890123-w.json" % REF.session,
    "v1/index/ns/c/%s/live-1234567890123-w.json\n" % REF.session,
    "v1/index/ns/c/%s/live-1234567890123.json" % REF.session,
    "v1/index/ns/c/%s/alive-1234567890123-w.json" % REF.session,
])
def test_keys_that_do_not_match_the_layout_in_full_do_not_parse(key):
    with pytest.raises(layout.LayoutError):
        layout.parse_index_record_key(key)
    with pytest.raises(layout.LayoutError):
        layout.parse_event_batch_key(REF, layout.events_prefix(REF) + NODE + "/1234567890123-w-0000000\uff11.jsonl.gz")


def test_keys_parse_back():
    key = layout.event_batch_key(REF, NODE, "abc123", 7, at_ms=1234)
    assert layout.parse_event_batch_key(REF, key) == layout.EventBatchName(NODE, 1234, "abc123", 7)
    part = layout.log_part_key(REF, NODE, "events/event_GCS.log", 2, 99)
    assert layout.parse_log_part_key(REF, part) == layout.LogPartName(NODE, "events/event_GCS.log", 2, 99)
    rec = layout.index_record_key(REF, IndexKind.DEAD, "w9", at_ms=77)
    parsed = layout.parse_index_record_key(rec)
    assert (parsed.ref, parsed.kind, parsed.at_ms, parsed.writer) == (REF, IndexKind.DEAD, 77, "w9")
