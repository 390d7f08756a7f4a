"""Incremental log upload from a copy of the real fixture session folder: new bytes only, rotation,
truncation, sockets and symlinks, restarts, storage errors, and a head restart in the same pod."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

from rayhistory import layout
from rayhistory.collector.logs_upload import FileState, LogUploader, UploadPlan, node_id_from_names, plan_upload
from rayhistory.collector.metrics import CollectorMetrics
from rayhistory.collector.registry import SessionRegistry, superseded_sessions
from rayhistory.layout import SessionRef
from rayhistory.store import Store
from tests.collector.storage_view import session_info, stored_logs
from tests.conftest import FIXTURES, HEAD_NODE_ID, SESSION_NAME

NEWER_SESSION = "session_2026-11-23_15-00-00_000001_777"
WORKER_NODE = "cd" * 28


def files_on_disk(logs_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(logs_dir)): p.read_bytes() for p in logs_dir.rglob("*")
            if p.is_file() and not p.is_symlink() and not p.is_socket()}


@pytest.fixture
def ray_root(tmp_path) -> Path:
    root = tmp_path / "ray"
    # copyfile, not copy: the fixture is read-only and the test appends to its logs like Ray would
    shutil.copytree(FIXTURES / "session" / SESSION_NAME, root / SESSION_NAME, copy_function=shutil.copyfile)
    os.symlink(root / SESSION_NAME, root / "session_latest")
    return root


def make_uploader(store: Store, root: Path, state: Path) -> tuple[LogUploader, SessionRegistry]:
    registry = SessionRegistry(store, "w1", "", "")
    return LogUploader(store, root, state, "ray", "demo", CollectorMetrics(), registry.note_on_disk), registry


def test_the_node_id_comes_from_rays_port_files():
    names = os.listdir(FIXTURES / "session" / SESSION_NAME)
    assert node_id_from_names(names) == HEAD_NODE_ID
    # a worker node's session folder has no gcs_server_port file, the rest is the same
    worker = [f"{n}_port_{WORKER_NODE}" for n in ("dashboard_agent_listen", "metrics_agent", "runtime_env_agent")]
    assert node_id_from_names(worker + ["logs", "sockets"]) == WORKER_NODE
    assert node_id_from_names(["logs"]) is None  # not written yet
    assert node_id_from_names(names + worker) is None  # two raylets in one folder: whose logs? unknown


def test_upload_plans():
    assert plan_upload(None, inode=5, size=0, mtime_ns=1) == UploadPlan(0, 0, 0)
    assert plan_upload(None, inode=5, size=100, mtime_ns=1) == UploadPlan(0, 0, 100)
    assert plan_upload(FileState(0, 5, 100, 1), inode=5, size=100, mtime_ns=1) is None
    assert plan_upload(FileState(0, 5, 100, 1), inode=5, size=150, mtime_ns=2) == UploadPlan(0, 100, 50)
    assert plan_upload(FileState(0, 5, 100, 1), inode=6, size=150, mtime_ns=2) == UploadPlan(1, 0, 150)  # rotated
    assert plan_upload(FileState(2, 5, 100, 1), inode=5, size=40, mtime_ns=2) == UploadPlan(3, 0, 40)  # truncated
    assert plan_upload(FileState(2, 5, 100, 1), inode=5, size=100, mtime_ns=2) == UploadPlan(3, 0, 100)  # rewritten


def test_superseded_sessions_are_the_older_ones_of_each_cluster():
    old, new = SessionRef("ray", "demo", SESSION_NAME), SessionRef("ray", "demo", NEWER_SESSION)
    other = SessionRef("ray", "other", SESSION_NAME)
    assert superseded_sessions({new, old, other}) == [old]
    assert superseded_sessions({old}) == []


async def test_logs_are_uploaded_incrementally_and_reassemble_byte_equal(tmp_path, ray_root, monkeypatch):
    store = Store(f"file://{tmp_path}/store")
    ref = SessionRef("ray", "demo", SESSION_NAME)
    logs = ray_root / SESSION_NAME / "logs"
    # things that are not regular files are skipped: a socket and a symlink inside logs/
    sock = socket.socket(socket.AF_UNIX)
    monkeypatch.chdir(logs)  # a relative name: the absolute path is over the 107 bytes AF_UNIX allows
    sock.bind("a.sock")
    os.mkfifo(logs / "a.fifo")
    os.symlink(logs / "raylet.out", logs / "raylet_link.out")
    uploader, _ = make_uploader(store, ray_root, tmp_path / "state.json")
    try:
        assert await uploader.upload_cycle()
        stored = await stored_logs(store, ref)
        assert {rel: data for (node, rel), data in stored.items()} == files_on_disk(logs)
        assert {node for node, _ in stored} == {HEAD_NODE_ID}
        assert (HEAD_NODE_ID, "dashboard.err") in stored  # empty files exist too
        assert not any(rel in ("a.sock", "a.fifo", "raylet_link.out") for _, rel in stored)

        # Ray appends; only the new bytes are uploaded, as a part starting where the last one ended
        raylet = logs / "raylet.out"
        size_before = raylet.stat().st_size
        with open(raylet, "ab") as fh:
            fh.write(b"[raylet] more lines\n" * 50)
        keys_before = {i.key for i in await store.list(layout.logs_prefix(ref))}
        assert await uploader.upload_cycle()
        new_keys = {i.key for i in await store.list(layout.logs_prefix(ref))} - keys_before
        assert new_keys == {layout.log_part_key(ref, HEAD_NODE_ID, "raylet.out", 0, size_before)}
        assert len(await store.get(new_keys.pop())) == 1000

        # rotation: Ray renames the file away and starts a new one with the same name
        os.rename(raylet, logs / "raylet.out.1")
        raylet.write_bytes(b"fresh file after rotation\n")
        # truncation in place
        with open(logs / "dashboard.log", "r+b") as fh:
            fh.truncate(10)
        # a new file in a new folder
        (logs / "jobs" / "new-job.log").write_bytes(b"hello\n")
        # rewritten in place, like the raylet's debug_state.txt: once at the same size, once bigger
        debug_state = logs / "debug_state.txt"
        old = debug_state.read_bytes()
        with open(debug_state, "r+b") as fh:
            fh.write(old[::-1])
        os.utime(debug_state, ns=(1, debug_state.stat().st_mtime_ns + 1_000_000))
        with open(logs / "dashboard_agent.log", "r+b") as fh:
            old = fh.read()
            fh.seek(0)
            fh.write(old[:-50] + b"Y" * 50 + b"grown\n")
        assert await uploader.upload_cycle()
        stored = await stored_logs(store, ref)
        assert {rel: data for (_, rel), data in stored.items()} == files_on_disk(logs)
        for rel in ("raylet.out", "debug_state.txt", "dashboard_agent.log"):
            generations = {layout.parse_log_part_key(ref, i.key).generation
                           for i in await store.list(layout.log_file_prefix(ref, HEAD_NODE_ID, rel))}
            assert generations == {0, 1}, rel
    finally:
        sock.close()


async def test_a_restarted_uploader_continues_where_its_predecessor_stopped(tmp_path, ray_root):
    store = Store(f"file://{tmp_path}/store")
    ref = SessionRef("ray", "demo", SESSION_NAME)
    first, _ = make_uploader(store, ray_root, tmp_path / "state.json")
    assert await first.upload_cycle()
    keys = {i.key for i in await store.list(layout.logs_prefix(ref))}
    log_file = ray_root / SESSION_NAME / "logs" / "gcs_server.out"
    size = log_file.stat().st_size
    with open(log_file, "ab") as fh:
        fh.write(b"after restart\n")
    second, _ = make_uploader(store, ray_root, tmp_path / "state.json")
    assert await second.upload_cycle()
    new_keys = {i.key for i in await store.list(layout.logs_prefix(ref))} - keys
    assert new_keys == {layout.log_part_key(ref, HEAD_NODE_ID, "gcs_server.out", 0, size)}


async def test_a_storage_error_keeps_offsets_and_the_next_cycle_catches_up(tmp_path, ray_root):
    root = tmp_path / "store"
    store = Store(f"file://{root}")
    ref = SessionRef("ray", "demo", SESSION_NAME)
    uploader, _ = make_uploader(store, ray_root, tmp_path / "state.json")
    (root / "v1").write_bytes(b"")  # a real I/O failure: the store's top folder is a plain file
    assert not await uploader.upload_cycle()
    assert uploader.metrics.upload_errors.labels("logs")._value.get() == 1
    (root / "v1").unlink()
    assert await uploader.upload_cycle()
    assert uploader.metrics.upload_retries.labels("logs")._value.get() == 1
    stored = await stored_logs(store, ref)
    assert {rel: data for (_, rel), data in stored.items()} == files_on_disk(ray_root / SESSION_NAME / "logs")


async def test_a_head_restart_in_the_pod_starts_a_new_session_and_ends_the_old_one(tmp_path, ray_root):
    store = Store(f"file://{tmp_path}/store")
    uploader, registry = make_uploader(store, ray_root, tmp_path / "state.json")
    assert await uploader.upload_cycle()
    old, new = SessionRef("ray", "demo", SESSION_NAME), SessionRef("ray", "demo", NEWER_SESSION)
    assert (await session_info(store, old)).state == "live"

    # the head container restarts: Ray makes a new session folder next to the old one
    new_dir = ray_root / NEWER_SESSION
    (new_dir / "logs").mkdir(parents=True)
    (new_dir / f"gcs_server_port_{HEAD_NODE_ID}").write_text("6380")
    (new_dir / "logs" / "raylet.out").write_bytes(b"new session raylet\n")
    assert await uploader.upload_cycle()

    old_info, new_info = await session_info(store, old), await session_info(store, new)
    assert old_info.state == "dead" and old_info.dead_reason == "head restarted"
    assert new_info.state == "live" and new_info.node_ids == [HEAD_NODE_ID]
    assert (await stored_logs(store, new)) == {(HEAD_NODE_ID, "raylet.out"): b"new session raylet\n"}
    assert registry.registered == {old: {HEAD_NODE_ID}, new: {HEAD_NODE_ID}}
