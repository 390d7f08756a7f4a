"""The parallel cold build (server/parallel_build.py): byte for byte the in-process build, with the same
completeness, and a worker that dies fails only its load (which the loader's backoff retries)."""

from __future__ import annotations

import gzip
import multiprocessing
import os

import pytest

from benchmarks.synthetic import generate_session
from rayhistory import layout
from rayhistory.server import parallel_build
from rayhistory.server.loader import LoadFailed
from rayhistory.server.parallel_build import BuildWorkerDied, ParallelBuild, partition
from rayhistory.server.snapshot import encode_snapshot
from rayhistory.server.snapshot_store import LoadProgress, build_session
from rayhistory.store import ObjectInfo, Store
from tests.conftest import HEAD_NODE_ID
from tests.server.fixture_store import write_fixture_session
from tests.server.test_loader import make_loader

IN_PROCESS = ParallelBuild(workers=1)
TWO_WORKERS = ParallelBuild(workers=2, min_bytes=0)


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(f"file://{tmp_path}/store")


@pytest.fixture
def stretches(monkeypatch) -> list[int]:
    """How many workers each parallel load started."""
    started: list[int] = []

    def counted(infos, parts):
        out = partition(infos, parts)
        started.append(len(out))
        return out

    monkeypatch.setattr(parallel_build, "partition", counted)
    return started


async def build_both_ways(store: Store, ref, dead: bool = True, end_ms: int = 1_795_500_000_000):
    out = []
    for parallel in (IN_PROCESS, TWO_WORKERS):
        progress = LoadProgress()
        result = await build_session(store, ref, dead, end_ms, "tester0000", progress, parallel=parallel)
        out.append((result, progress))
        written = [o.key for o in await store.list(layout.session_prefix(ref)) if o.key.endswith(".snap")]
        await store.delete(written)  # the second build starts from raw too
    return out


async def test_the_fixture_session_builds_byte_identical_in_workers(store, stretches):
    ref = await write_fixture_session(store)
    (serial, serial_progress), (parallel, parallel_progress) = await build_both_ways(store, ref)
    assert stretches == [2]
    assert serial.snapshot.tasks and serial.snapshot.complete
    assert encode_snapshot(parallel.snapshot) == encode_snapshot(serial.snapshot)
    assert parallel.manifest == serial.manifest
    # progress counts the same objects, bytes and events
    for name in ("objects_total", "objects_done", "bytes_read", "events"):
        assert getattr(parallel_progress, name) == getattr(serial_progress, name), name
    assert not multiprocessing.active_children()  # the load's workers are gone


async def test_a_synthetic_session_with_damage_builds_byte_identical_in_workers(store, stretches):
    ref, batches, _ = generate_session(3000)
    for key, data in batches.items():
        await store.put(key, data)
    keys = sorted(batches)
    bad = keys[len(keys) // 2]
    await store.put(bad, gzip.compress(b'{"eventId": "x", "eventType": "TASK_LIFECYCLE_EVENT"')[:-9])  # truncated
    await store.put(layout.event_batch_key(ref, HEAD_NODE_ID, "crafted", 1), b"")  # zero bytes
    (serial, _), (parallel, _) = await build_both_ways(store, ref)
    assert stretches == [2]
    assert len(serial.snapshot.tasks) > 2500
    assert not serial.snapshot.complete and bad in [p.key for p in serial.snapshot.objects_corrupt]
    assert encode_snapshot(parallel.snapshot) == encode_snapshot(serial.snapshot)


def test_workers_get_contiguous_stretches_of_flush_time_of_about_equal_bytes():
    infos = [ObjectInfo(f"e/node{n}/{t:013d}-w-{t:08d}.jsonl.gz", 10) for t in range(10) for n in (1, 2)]
    stretches = partition(infos, 2)
    assert [len(s) for s in stretches] == [10, 10]
    assert max(o.key.rsplit("/", 1)[-1] for o in stretches[0]) < min(o.key.rsplit("/", 1)[-1] for o in stretches[1])
    assert sorted(o.key for s in stretches for o in s) == sorted(o.key for o in infos)


def test_small_loads_and_one_worker_stay_in_process():
    infos = [ObjectInfo("a", 10 << 20), ObjectInfo("b", 10 << 20)]
    assert not ParallelBuild(workers=2, min_bytes=32 << 20).applies(infos)
    assert ParallelBuild(workers=2, min_bytes=16 << 20).applies(infos)
    assert not ParallelBuild(workers=1, min_bytes=0).applies(infos)


def dying_worker(conn, *args) -> None:
    """A worker that dies (as an out-of-memory kill would) once it has its first chunk."""
    conn.recv()
    os._exit(9)


async def test_a_worker_that_dies_fails_only_its_load_and_the_loader_retries(store, monkeypatch):
    ref = await write_fixture_session(store)
    monkeypatch.setattr(parallel_build, "WORKER_MAIN", dying_worker)
    progress = LoadProgress()
    with pytest.raises(BuildWorkerDied, match="exit code 9"):
        await build_session(store, ref, True, 1_795_500_000_000, "tester0000", progress, parallel=TWO_WORKERS)
    assert not multiprocessing.active_children()

    loader = make_loader(store)
    loader.parallel = TWO_WORKERS
    loader.backoff_base_s = 0.0
    try:
        with pytest.raises(LoadFailed, match="BuildWorkerDied"):
            await loader.get(ref)
        monkeypatch.setattr(parallel_build, "WORKER_MAIN", parallel_build.worker_main)
        entry = await loader.get(ref)  # after the backoff: a new load, whose workers live
        assert entry.snapshot.tasks and entry.snapshot.complete
    finally:
        await loader.close()
    assert not multiprocessing.active_children()


def test_build_workers_are_settings_with_one_name_as_flag_env_and_field(monkeypatch):
    import argparse

    from rayhistory.config import add_settings_arguments, settings_from_args
    from rayhistory.server.main import Settings

    defaults = Settings()
    assert defaults.build_workers == 0 and defaults.build_workers_min_bytes == 32 << 20  # 0: the usable cores
    monkeypatch.setenv("RAYHISTORY_BUILD_WORKERS", "3")
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser, Settings)
    settings = settings_from_args(Settings, parser.parse_args(["--build-workers-min-bytes", str(1 << 20)]))
    assert settings.build_workers == 3 and settings.build_workers_min_bytes == 1 << 20
    assert 1 <= parallel_build.usable_cores() <= len(os.sched_getaffinity(0))


def test_a_cpu_limit_bounds_the_workers_as_a_cpuset_does(tmp_path):
    # a Kubernetes CPU limit is a CFS quota: the pod sees every core of its node in its affinity
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert parallel_build.cgroup_quota_cores(tmp_path) == 2  # 1.5 CPUs: two workers
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert parallel_build.cgroup_quota_cores(tmp_path) == 0  # no limit
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("400000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert parallel_build.cgroup_quota_cores(tmp_path) == 4  # cgroup v1
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert parallel_build.cgroup_quota_cores(tmp_path) == 0
    assert parallel_build.cgroup_quota_cores(tmp_path / "absent") == 0
