"""History server figures: session loads, resident bytes, HTTP latency, the session list.

Run: make bench-server  (or .venv/bin/python -m benchmarks.bench_server [--tasks 10000,100000] [--sessions 100000])
Results: bench-results/server.json.

For each session size: a synthetic session (benchmarks/synthetic.py, shaped like the fixture) is written to
a local file:// store as the collector writes it, then
- cold load from raw events through the server's loader (a fresh replica: list, read, parse, build,
  write the compacted snapshot), in wall and CPU seconds, and events/s;
- load from the compacted snapshot (another fresh replica);
- resident bytes per task (the LRU's measurement of the snapshot, and the process's RSS growth);
- p50/p99 over HTTP, against a real aiohttp server on a local port, of
  /s/.../api/v0/tasks?detail=1&limit=100 filtered by job_id, and of ...&limit=10000.
Then /clusters over an index of `--sessions` sessions (cold: first read of the index; warm: p50/p99).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import psutil
from aiohttp.test_utils import TestServer

from rayhistory import layout
from rayhistory.index import IndexRecord, encode_record
from rayhistory.layout import IndexKind, SessionRef
from rayhistory.server.app import STATE_KEY, create_app
from rayhistory.server.main import Settings
from rayhistory.server.snapshot import FORMAT_VERSION
from rayhistory.store import Store

from .common import cpu_seconds, peak_rss_mb, write_results
from .synthetic import SESSION, generate_session

JOB_FILTER = "filter_keys=job_id&filter_predicates=%3D&filter_values=01000000"
RAW_RUNS = 3
SNAPSHOT_RUNS = 5


def rss() -> int:
    """Resident bytes after a full collection, with freed heap handed back to the OS (glibc)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    return psutil.Process(os.getpid()).memory_info().rss


async def rss_probe(store_url: str, ref: SessionRef) -> dict:
    """In a fresh process: RSS a replica gains by loading one session from its compacted snapshot."""
    store = Store(store_url)
    public, _ = create_app(Settings(storage=store_url, cache_max_bytes=64 << 30, load_timeout=3600), store)
    state = public[STATE_KEY]
    await state.index.session(ref)  # index read and imports done before the baseline
    before = rss()
    entry = await state.loader.get(ref)
    after = rss()
    await state.loader.close()
    return {"rss_delta": after - before, "measured": entry.nbytes, "tasks": len(entry.snapshot.tasks)}


def run_rss_probe(store_url: str, ref: SessionRef) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_server", "--rss-probe", store_url, ref.namespace, ref.cluster,
         ref.session], check=True, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def percentiles(samples: list[float]) -> dict:
    ordered = sorted(samples)
    return {"p50_ms": round(statistics.median(ordered) * 1000, 2),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 2),
            "n": len(ordered)}


async def write_index(store: Store, ref: SessionRef, dead: bool = True) -> None:
    start = layout.session_start_ms(ref.session)
    for kind, at in ((IndexKind.LIVE, start), (IndexKind.DEAD, start + 60_000)):
        if kind == IndexKind.DEAD and not dead:
            continue
        record = IndexRecord(kind=kind.value, namespace=ref.namespace, cluster=ref.cluster, session=ref.session,
                             at_ms=at, writer="bench", start_ms=start, end_ms=at if kind == IndexKind.DEAD else 0)
        await store.put(layout.index_record_key(ref, kind, "bench", at), encode_record(record))


async def timed_gets(session: aiohttp.ClientSession, url: str, n: int) -> dict:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        async with session.get(url) as resp:
            assert resp.status == 200, (url, resp.status)
            await resp.read()
        samples.append(time.perf_counter() - t0)
    return percentiles(samples)


async def timed_load(settings: Settings, store: Store, ref: SessionRef):
    """One load by a fresh replica: (its public app, the entry, wall s, CPU s)."""
    public, _internal = create_app(settings, store)
    wall, cpu = time.perf_counter(), cpu_seconds()
    entry = await public[STATE_KEY].loader.get(ref)
    return public, entry, time.perf_counter() - wall, cpu_seconds() - cpu


async def bench_session(root: str, n_tasks: int) -> dict:
    store = Store(f"file://{root}/tasks-{n_tasks}")
    t0 = time.perf_counter()
    ref, batches, n_events = generate_session(n_tasks)
    for key, data in batches.items():
        await store.put(key, data)
    await write_index(store, ref)
    out: dict = {"tasks": n_tasks, "events": n_events, "batches": len(batches),
                 "stored_bytes": sum(len(b) for b in batches.values()),
                 "generate_and_write_s": round(time.perf_counter() - t0, 2)}
    del batches
    gc.collect()
    settings = Settings(storage=store.url, cache_max_bytes=64 << 30, load_timeout=3600)

    # cold load from raw events: a replica that never saw the session, no compacted snapshot yet.
    # Repeated (snapshot deleted in between) on a machine shared with other work: best and median.
    runs = []
    for _ in range(RAW_RUNS):
        await store.delete_prefix(layout.snapshots_prefix(ref, FORMAT_VERSION))
        public, entry = None, None  # the previous run's replica goes away
        rss0 = rss()
        public, entry, wall, cpu = await timed_load(settings, store, ref)
        runs.append((wall, cpu))
    state = public[STATE_KEY]
    walls, cpus = [w for w, _ in runs], [c for _, c in runs]
    out["cold_load_from_raw"] = {
        "wall_s_best": round(min(walls), 3), "wall_s_median": round(statistics.median(walls), 3),
        "cpu_s_best": round(min(cpus), 3), "cpu_s_median": round(statistics.median(cpus), 3),
        "events_per_s": round(n_events / min(walls)), "events_per_cpu_s": round(n_events / min(cpus)),
        "runs": len(runs), "source": state.loader.progress(ref).source, "complete": entry.snapshot.complete,
    }
    out["resident_bytes_per_task"] = {
        "measured_by_cache": round(entry.nbytes / n_tasks),
        # this process also parsed the raw events: its heap keeps some of that garbage's pages
        "rss_growth_after_raw_load": round((rss() - rss0) / n_tasks),
    }
    assert len([t for t in entry.snapshot.tasks if not t.task_id.startswith("ffffffffffffffffffffffff")]) >= n_tasks

    # p50/p99 over HTTP on this (warm) replica
    async with TestServer(public) as server, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{server.port}/s/{ref.tail}/api/v0/tasks?detail=1"
        await timed_gets(http, f"{base}&limit=100&{JOB_FILTER}", 5)  # warm-up
        out["http_tasks_limit_100_job_filter"] = await timed_gets(http, f"{base}&limit=100&{JOB_FILTER}", 200)
        out["http_tasks_limit_10000"] = await timed_gets(http, f"{base}&limit=10000", 20)
        snapshot_key = entry.snapshot_key
    del entry
    gc.collect()

    # load from the compacted snapshot: fresh replicas
    runs = []
    for _ in range(SNAPSHOT_RUNS):
        public2, entry2, wall, cpu = await timed_load(settings, store, ref)
        assert public2[STATE_KEY].loader.progress(ref).source == "snapshot"
        runs.append((wall, cpu))
    walls, cpus = [w for w, _ in runs], [c for _, c in runs]
    out["load_from_snapshot"] = {
        "wall_s_best": round(min(walls), 3), "wall_s_median": round(statistics.median(walls), 3),
        "cpu_s_best": round(min(cpus), 3), "cpu_s_median": round(statistics.median(cpus), 3), "runs": len(runs),
        "snapshot_bytes": (await store.list(snapshot_key))[0].size,
    }
    assert entry2.snapshot_key == snapshot_key
    probe = run_rss_probe(store.url, ref)
    out["resident_bytes_per_task"]["rss_growth_fresh_replica_from_snapshot"] = round(probe["rss_delta"] / n_tasks)
    await state.loader.close()
    return out


async def bench_clusters(root: str, n_sessions: int) -> dict:
    store = Store(f"file://{root}/clusters")
    t0 = time.perf_counter()
    sem = asyncio.Semaphore(64)

    async def one(i: int) -> None:
        day, rest = divmod(i, 86400)
        clock = f"{rest // 3600:02d}-{rest // 60 % 60:02d}-{rest % 60:02d}"
        ref = SessionRef(f"ns{i % 10}", f"cluster-{i % 500}", f"session_2026-11-{1 + day:02d}_{clock}_000000_{i + 1}")
        async with sem:
            await write_index(store, ref, dead=i % 3 != 0)

    await asyncio.gather(*(one(i) for i in range(n_sessions)))
    out: dict = {"sessions": n_sessions, "write_index_s": round(time.perf_counter() - t0, 2)}
    public, _ = create_app(Settings(storage=store.url), store)
    async with TestServer(public) as server, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{server.port}/clusters"
        t0 = time.perf_counter()
        async with http.get(base) as resp:
            body = await resp.json()
        out["cold_first_request_s"] = round(time.perf_counter() - t0, 3)  # reads the whole index once
        assert body["total"] == n_sessions and len(body["sessions"]) == n_sessions
        out["http_all_sessions"] = await timed_gets(http, base, 20)
        out["http_limit_100"] = await timed_gets(http, f"{base}?limit=100", 100)
        out["http_filtered_namespace_dead_limit_100"] = await timed_gets(http, f"{base}?namespace=ns3&state=dead&limit=100", 100)
        state = public[STATE_KEY]
        t0, cpu0 = time.perf_counter(), time.process_time()
        await state.directory.refresh()  # the background refresh when nothing changed: a listing, no merge
        out["refresh_unchanged_s"] = round(time.perf_counter() - t0, 3)
        out["refresh_unchanged_cpu_s"] = round(time.process_time() - cpu0, 3)
    out["index_digests"] = len(await store.list(layout.index_digests_prefix()))
    # a second replica starting now: the first wrote an index digest, so it reads one object, not 200k
    public, _ = create_app(Settings(storage=store.url), store)
    async with TestServer(public) as server, aiohttp.ClientSession() as http:
        t0 = time.perf_counter()
        async with http.get(f"http://127.0.0.1:{server.port}/clusters?limit=100") as resp:
            assert (await resp.json())["total"] == n_sessions
        out["cold_first_request_from_digest_s"] = round(time.perf_counter() - t0, 3)
    return out


async def run(sizes: list[int], n_sessions: int) -> dict:
    results: dict = {"sizes": {}}
    with tempfile.TemporaryDirectory(prefix="rayhistory-bench-") as root:
        for n in sizes:
            results["sizes"][str(n)] = await bench_session(root, n)
            gc.collect()
        if n_sessions:
            results["clusters"] = await bench_clusters(root, n_sessions)
    results["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="10000,100000", help="comma-separated session sizes (tasks)")
    parser.add_argument("--sessions", type=int, default=100_000,
                        help="sessions in the index for /clusters (issue 15: 100k; 0: skip)")
    parser.add_argument("--rss-probe", nargs=4, metavar=("STORE", "NAMESPACE", "CLUSTER", "SESSION"),
                        help="internal: measure one load from the compacted snapshot in this fresh process")
    args = parser.parse_args()
    if args.rss_probe:
        store_url, *names = args.rss_probe
        print(json.dumps(asyncio.run(rss_probe(store_url, SessionRef(*names)))))
        return
    sizes = [int(s) for s in args.tasks.split(",") if s]
    results = asyncio.run(run(sizes, args.sessions))
    results["note"] = (f"synthetic session {SESSION!r} (benchmarks/synthetic.py); local file:// store; "
                       "one process, the event loop and one worker thread at a time (~1 core)")
    write_results("server", results)


if __name__ == "__main__":
    main()
