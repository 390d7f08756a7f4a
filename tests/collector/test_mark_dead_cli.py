"""`rayhistory mark-dead`, the command line the operator's finalizer's code path is also reachable by."""

from __future__ import annotations

import json
import subprocess
import sys

from rayhistory.index import SessionIndex
from rayhistory.layout import IndexKind, SessionRef
from rayhistory.store import Store
from tests.conftest import HEAD_NODE_ID, SESSION_NAME

NEWER = "session_2026-11-23_15-00-00_000001_777"


def mark_dead(storage: str, *args: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "rayhistory", "mark-dead", "--storage", storage, *args],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


async def test_mark_dead_one_session_then_the_whole_cluster(tmp_path):
    storage = f"file://{tmp_path}/store"
    store = Store(storage)
    index = SessionIndex(store, "collector1")
    for session in (SESSION_NAME, NEWER):
        await index.append(SessionRef("ray", "demo", session), IndexKind.LIVE, node_ids=[HEAD_NODE_ID])
    await index.append(SessionRef("ray", "other", SESSION_NAME), IndexKind.LIVE, node_ids=[HEAD_NODE_ID])

    out = mark_dead(storage, "--namespace", "ray", "--cluster", "demo", "--session", SESSION_NAME,
                    "--reason", "test says so")
    assert out == {"marked_dead": [SESSION_NAME]}
    states = {s.session: (s.state, s.dead_reason) for s in await SessionIndex(store).sessions("ray", "demo")}
    assert states == {SESSION_NAME: ("dead", "test says so"), NEWER: ("live", "")}

    # without --session: every live session of the cluster, and only of that cluster; dead stays dead
    assert mark_dead(storage, "--namespace", "ray", "--cluster", "demo") == {"marked_dead": [NEWER]}
    assert mark_dead(storage, "--namespace", "ray", "--cluster", "demo") == {"marked_dead": []}
    sessions = await SessionIndex(store).sessions()
    assert {(s.cluster, s.session): s.state for s in sessions} == {
        ("demo", SESSION_NAME): "dead", ("demo", NEWER): "dead", ("other", SESSION_NAME): "live"}


def test_mark_dead_needs_namespace_and_cluster(tmp_path):
    done = subprocess.run([sys.executable, "-m", "rayhistory", "mark-dead", "--storage", f"file://{tmp_path}/s"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "namespace" in done.stderr


async def test_a_session_marked_dead_later_ends_at_its_last_recorded_activity(tmp_path):
    """Issue 10, item 5: mark-dead used its own clock, so a session closed by hand a week later "ended" a
    week late. The default is now the session's last write: its newest batch, endpoint answer or flush."""
    from rayhistory import layout

    storage = f"file://{tmp_path}/store"
    store = Store(storage)
    ref = SessionRef("ray", "demo", SESSION_NAME)
    week_ago = layout.now_ms() - 7 * 86400_000
    await store.put(layout.event_batch_key(ref, HEAD_NODE_ID, "c1", 1, at_ms=week_ago - 60_000), b"")
    await store.put(layout.endpoint_key(ref, "jobs", "c1", at_ms=week_ago), b"[]")
    await store.put(layout.index_record_key(ref, IndexKind.LIVE, "c1", at_ms=week_ago - 120_000),
                    b'{"kind":"live","namespace":"ray","cluster":"demo","session":"%s","at_ms":1}' % SESSION_NAME.encode())
    mark_dead(storage, "--namespace", "ray", "--cluster", "demo")
    [info] = await SessionIndex(store).sessions("ray", "demo")
    assert info.end_ms == week_ago

    other = SessionRef("ray", "other", SESSION_NAME)
    await SessionIndex(store, "c2").append(other, IndexKind.LIVE, node_ids=[HEAD_NODE_ID])
    mark_dead(storage, "--namespace", "ray", "--cluster", "other", "--end-time", "2026-11-23T14:00:00Z")
    [info] = await SessionIndex(store).sessions("ray", "other")
    assert info.end_ms == 1795442400000  # 2026-11-23T14:00:00Z
    bad = subprocess.run([sys.executable, "-m", "rayhistory", "mark-dead", "--storage", storage, "--namespace",
                          "ray", "--cluster", "other", "--end-time", "yesterday"], capture_output=True, text=True)
    assert bad.returncode == 2 and "RFC3339" in bad.stderr
