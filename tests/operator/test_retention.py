"""Retention and record-on-deletion decisions (pure), and a retention run on a real file:// store."""

from __future__ import annotations

import datetime

from rayhistory import layout
from rayhistory.index import IndexRecord, SessionIndex, SessionInfo, encode_record
from rayhistory.layout import IndexKind, SessionRef
from rayhistory.operator import finalizer, retention
from rayhistory.operator.history import RetentionSpec
from rayhistory.store import Store

DAY_MS = 86400 * 1000
NODE_A = "a" * 56
NODE_B = "b" * 56


def session_name(day: int, hour: int = 0) -> str:
    return f"session_2026-11-{day:02d}_{hour:02d}-00-00_000000_1"


def info(cluster: str, day: int, state: str = "dead", end_day: int | None = None, **kw) -> SessionInfo:
    name = session_name(day)
    start = layout.session_start_ms(name)
    end = layout.session_start_ms(session_name(end_day)) if end_day else (start + 3600_000 if state == "dead" else 0)
    return SessionInfo(namespace="ns", cluster=cluster, session=name, start_ms=start, end_ms=end, state=state,
                       last_update_ms=end or start, **kw)


NOW = layout.session_start_ms(session_name(23, 12))


def names(sessions: list[SessionInfo]) -> list[str]:
    return [f"{s.cluster}/{s.session[8:18]}" for s in sessions]


def test_max_age_deletes_only_old_dead_sessions():
    sessions = [info("a", 1), info("a", 20), info("b", 2, state="live"), info("c", 3, end_day=22)]
    doomed = retention.sessions_to_delete(sessions, NOW, RetentionSpec(max_age="7d"))
    assert names(doomed) == ["a/2026-11-01"]  # c ended yesterday; b is live however old


def test_max_sessions_per_cluster_keeps_the_newest():
    sessions = [info("a", d) for d in (5, 6, 7, 8)] + [info("a", 9, state="live"), info("b", 1)]
    doomed = retention.sessions_to_delete(sessions, NOW, RetentionSpec(max_age="", max_sessions_per_cluster=2))
    assert names(doomed) == ["a/2026-11-05", "a/2026-11-06", "a/2026-11-07"]


def test_no_limits_delete_nothing():
    sessions = [info("a", d) for d in range(1, 20)]
    assert retention.sessions_to_delete(sessions, NOW, RetentionSpec(max_age="", max_sessions_per_cluster=0)) == []


def test_superseded_live_sessions_are_closed_after_the_grace():
    sessions = [info("a", 1, state="live"), info("a", 22, state="live"), info("b", 23, state="live"),
                info("b", 2, state="live"), info("c", 5, state="live")]
    # b's newest session started at midnight today: 12 h ago
    closed = retention.superseded_sessions(sessions, NOW, grace_ms=DAY_MS)
    assert names(closed) == ["a/2026-11-01"]
    closed = retention.superseded_sessions(sessions, NOW, grace_ms=3600_000)
    assert names(closed) == ["a/2026-11-01", "b/2026-11-02"]


def test_pending_flush_and_deadline():
    flushed = info("a", 1, state="live", node_ids=[NODE_A, NODE_B], flushed_node_ids=[NODE_A, NODE_B])
    waiting = info("a", 2, state="live", node_ids=[NODE_A, NODE_B], flushed_node_ids=[NODE_A])
    dead = info("a", 3, node_ids=[NODE_A])
    assert finalizer.pending_flush([flushed, waiting, dead]) == [waiting]
    assert "bbbbbbbbbbbb" in finalizer.dead_reason([waiting])
    deleted_at = "2026-11-23T10:00:00Z"
    t0 = datetime.datetime(2026, 11, 23, 10, 0, tzinfo=datetime.timezone.utc)
    assert not finalizer.deadline_passed(deleted_at, 120, t0 + datetime.timedelta(seconds=119))
    assert finalizer.deadline_passed(deleted_at, 120, t0 + datetime.timedelta(seconds=120))


async def write_record(store: Store, ref: SessionRef, kind: IndexKind, at_ms: int, **fields) -> None:
    record = IndexRecord(kind=kind.value, namespace=ref.namespace, cluster=ref.cluster, session=ref.session,
                         at_ms=at_ms, writer="test", **fields)
    await store.put(layout.index_record_key(ref, kind, "test", at_ms), encode_record(record))


async def write_session(store: Store, ref: SessionRef, dead_at_ms: int | None) -> None:
    start = layout.session_start_ms(ref.session)
    await write_record(store, ref, IndexKind.LIVE, start + 1000, node_ids=[NODE_A])
    await store.put(layout.event_batch_key(ref, NODE_A, "test", 1, start + 2000), b"events")
    await store.put(layout.log_part_key(ref, NODE_A, "raylet.out", 0, 0), b"log")
    await store.put(layout.endpoint_key(ref, "jobs", "test", start + 3000), b"{}")
    await store.put(layout.snapshot_key(ref, 1, "test", start + 4000), b"snap")
    if dead_at_ms:
        await write_record(store, ref, IndexKind.DEAD, dead_at_ms, end_ms=dead_at_ms, reason="test")


async def test_retention_run_removes_exactly_the_doomed_sessions(tmp_path):
    store = Store(f"file://{tmp_path}/store")
    old = SessionRef("ns", "a", session_name(1))
    recent = SessionRef("ns", "a", session_name(20))
    live_old = SessionRef("ns", "b", session_name(2))
    superseded = SessionRef("ns", "c", session_name(3))
    current = SessionRef("ns", "c", session_name(4))
    await write_session(store, old, layout.session_start_ms(old.session) + 3600_000)
    await write_session(store, recent, layout.session_start_ms(recent.session) + 3600_000)
    await write_session(store, live_old, None)
    await write_session(store, superseded, None)
    # its last write an hour ago: closed now, it ends then (issue 10, item 5), so retention keeps it
    await store.put(layout.event_batch_key(superseded, NODE_A, "test", 2, NOW - 3600_000), b"events")
    await write_session(store, current, None)
    before = {o.key for o in await store.list("")}

    run = await retention.apply_retention(store, RetentionSpec(max_age="7d"), NOW, superseded_grace_ms=DAY_MS)

    assert run.closed == [superseded.tail]
    assert run.deleted == [old.tail]  # the superseded session ended an hour ago: kept for 7 more days
    old_keys = {k for k in before if k.startswith((layout.session_prefix(old), layout.index_session_prefix(old)))}
    assert len(old_keys) == 6 and run.deleted_objects == 6  # raw events, logs, endpoints, snapshots, index
    after = {o.key for o in await store.list("")}
    added = after - (before - old_keys)
    assert after >= before - old_keys
    assert [layout.parse_index_record_key(k) for k in added][0].kind == IndexKind.DEAD and len(added) == 1
    assert run.sessions_recorded == 4
    states = {s.ref: s.state for s in await SessionIndex(store).sessions()}
    assert states == {recent: "dead", live_old: "live", superseded: "dead", current: "live"}
    assert {s.ref: s.end_ms for s in await SessionIndex(store).sessions()}[superseded] == NOW - 3600_000

    again = await retention.apply_retention(store, RetentionSpec(max_age="7d"), NOW, superseded_grace_ms=DAY_MS)
    assert (again.closed, again.deleted) == ([], [])
