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
