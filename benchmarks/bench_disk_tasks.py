"""A session larger than the replica's memory bound, served with its tasks on local disk (server/disk_tasks.py).

Run: RAYHISTORY_BENCH_10M=1 make bench-server  (10M tasks), or
     .venv/bin/python -m benchmarks.bench_disk_tasks 2000000
Results: bench-results/disk_tasks.json, which keeps the latest run of each size (with its time).

The session's compacted snapshot is written directly, not built from raw events (the builder would hold
every task in memory, which is what a replica of this size must not do, and generating 50M raw events
alone takes half an hour here): its tasks are a 100k-task synthetic session's (benchmarks/synthetic.py,
built from its raw events by the real builder), repeated under new task ids (the copy's number in the
id's first two bytes, so they stay in Ray's order) up to N, and its head (jobs, actors, nodes, workers,
string table) is that session's. It is written into a local file:// store with its index records.

Then a fresh process is the replica: the server's app with cache_max_bytes 2 GiB (tasks on disk above
the default, half of it), over HTTP on 127.0.0.1. Measured there, in wall seconds:
- the first answer (api/jobs/, from the head) after the app starts, and when the task pages answer
  (the tasks spilled: every chunk decoded once and written to the local file);
- p50 of the dashboard's task queries, each request distinct (no answer-cache hit): a job's tasks
  (detail=1&limit=100), the unfiltered detail=1&limit=10000 page, a task by id, FAILED tasks (limit 100);
  the workers page; and one tasks/summarize, which reads every chunk;
- RSS after the tasks are on disk and at the end, the peak RSS, and what the cache counts for the entry.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from array import array
from pathlib import Path

import msgspec

from .common import RESULTS, ROOT, peak_rss_mb, write_results

CACHE_MAX_BYTES = 2 << 30
TEMPLATE_TASKS = 100_000
DEFAULT_SIZES = (2_000_000,)


def write_session(root: str, n_tasks: int) -> dict:
    """The N-task session's compacted snapshot and index records in a file:// store under `root`."""
    from rayhistory import layout
    from rayhistory.server.cache import measure_bytes
    from rayhistory.server.snapshot import SnapshotBuilder
    from rayhistory.server.snapshot_model import FORMAT_VERSION, TASK_CHUNK, encode_sections
    from rayhistory.server.snapshot_store import StoredSnapshot
    from rayhistory.store import Store

    from .bench_server import write_index
    from .synthetic import generate_session

    ref, batches, _ = generate_session(TEMPLATE_TASKS)
    builder = SnapshotBuilder(ref, dead=True, end_ms=layout.session_start_ms(ref.session) + 60_000)
    for key, data in batches.items():
        builder.add_event_batch(key, data)
    del batches
    template = builder.build()
    del builder
    gc.collect()
    tasks = template.tasks
    assert all(t.task_id.startswith("0000") for t in tasks), "the template's ids leave no room for a copy number"
    started = time.perf_counter()
    per_job: dict[int, array] = {job: array("I") for job in template.job_tasks}

    def chunks():
        for first in range(0, n_tasks, TASK_CHUNK):
            chunk = []
            for position in range(first, min(first + TASK_CHUNK, n_tasks)):
                copy, i = divmod(position, len(tasks))
                t = tasks[i]
                chunk.append(msgspec.structs.replace(t, task_id=f"{copy:04x}{t.task_id[4:]}"))
                per_job[t.job].append(position)
            yield chunk

    resident = measure_bytes(tasks) * n_tasks // len(tasks) + 4 * n_tasks
    head = msgspec.structs.replace(template, tasks=[], job_tasks={})
    data = encode_sections(head, [], n_tasks, chunks(), lambda: {j: p.tobytes() for j, p in per_job.items()},
                           resident)
    encode_s = time.perf_counter() - started
    store = Store(f"file://{root}/store")

    async def put() -> None:
        envelope = msgspec.msgpack.encode(StoredSnapshot({}, layout.now_ms(), "bench", data))
        await store.put(layout.snapshot_key(ref, FORMAT_VERSION, "bench"), envelope)
        await write_index(store, ref)

    asyncio.run(put())
    rng = random.Random(15)
    return {
        "store": store.url, "ref": [ref.namespace, ref.cluster, ref.session],
        "jobs": [template.strings[j] for j in template.job_tasks],
        "task_ids": [f"{rng.randrange(n_tasks // len(tasks)):04x}{tasks[rng.randrange(len(tasks))].task_id[4:]}"
                     for _ in range(20)],
        "snapshot_bytes": len(data), "tasks_resident_estimate": resident,
        "write_s": round(encode_s, 1),
    }


async def serve(written: dict) -> dict:
    """In this (fresh) process: a replica over the written store, measured as the module docstring says."""
    import aiohttp
    from aiohttp.test_utils import TestServer

    from rayhistory.layout import SessionRef
    from rayhistory.server.app import STATE_KEY, create_app
    from rayhistory.server.disk_tasks import DiskTasks
    from rayhistory.server.main import Settings

    from .bench_server import rss

    ref = SessionRef(*written["ref"])
    started = time.perf_counter()
    public, _ = create_app(Settings(storage=written["store"], cache_max_bytes=CACHE_MAX_BYTES, load_timeout=3600))
    out: dict = {"cache_max_bytes": CACHE_MAX_BYTES}
    async with TestServer(public) as server, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{server.port}/s/{ref.tail}"

        async def get(path: str, expect: bytes = b"") -> float:
            t0 = time.perf_counter()
            async with http.get(base + path, timeout=aiohttp.ClientTimeout(total=3600)) as resp:
                body = await resp.read()
                assert resp.status == 200 and expect in body, (path, resp.status, body[:300])
            return time.perf_counter() - t0

        await get("/api/jobs/")
        out["first_answer_s"] = round(time.perf_counter() - started, 2)
        await get("/api/v0/tasks?limit=1")
        out["tasks_on_disk_s"] = round(time.perf_counter() - started, 2)
        entry = public[STATE_KEY].cache.peek(ref)
        assert isinstance(entry.snapshot.tasks, DiskTasks), "the session's tasks were not spilled to disk"
        out["tasks"] = len(entry.snapshot.tasks)
        out["rss_after_spill_mb"] = round(rss() / 2**20)
        out["cache_entry_mb"] = round(entry.nbytes / 2**20)

        def p50(samples: list[float]) -> float:
            return round(statistics.median(samples) * 1000, 1)

        jobs, ids = written["jobs"], written["task_ids"]
        by_job = "&filter_keys=job_id&filter_predicates=%3D&filter_values="
        by_id = "&filter_keys=task_id&filter_predicates=%3D&filter_values="
        failed = "&filter_keys=state&filter_predicates=%3D&filter_values=FAILED"
        out["http_p50_ms"] = {
            "tasks_job_detail_limit100": p50([await get(f"/api/v0/tasks?detail=1&limit={100 + i}{by_job}{jobs[i % len(jobs)]}")
                                              for i in range(10)]),
            "tasks_detail_limit10000": p50([await get(f"/api/v0/tasks?detail=1&limit={10_000 + i}") for i in range(3)]),
            "task_by_id": p50([await get(f"/api/v0/tasks?detail=1{by_id}{task_id}", f'"task_id":"{task_id}"'.encode())
                               for task_id in ids]),
            "tasks_failed_limit100": p50([await get(f"/api/v0/tasks?limit={100 + i}{failed}") for i in range(5)]),
            "workers": p50([await get(f"/api/v0/workers?limit={100 + i}") for i in range(3)]),
        }
        out["tasks_summarize_s"] = round(await get("/api/v0/tasks/summarize"), 1)
        out["rss_end_mb"] = round(rss() / 2**20)
    out["peak_rss_mb"] = round(peak_rss_mb())
    await public[STATE_KEY].loader.close()
    return out


def measure(n_tasks: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="rayhistory-bench-disk-") as root:
        t0 = time.perf_counter()
        written = write_session(root, n_tasks)
        replica = subprocess.run([sys.executable, "-m", "benchmarks.bench_disk_tasks", "--serve", json.dumps(written)],
                                 check=True, capture_output=True, text=True, cwd=ROOT)
        served = json.loads(replica.stdout.strip().splitlines()[-1])
        return {"tasks": n_tasks, "snapshot_bytes": written["snapshot_bytes"],
                "tasks_resident_estimate_mb": round(written["tasks_resident_estimate"] / 2**20),
                "write_snapshot_s": written["write_s"], **served,
                "wall_s_including_generation": round(time.perf_counter() - t0, 1),
                "taken_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def main(argv: list[str]) -> None:
    if argv[:1] == ["--serve"]:
        print(json.dumps(asyncio.run(serve(json.loads(argv[1])))))
        return
    sizes = [int(a) for a in argv] or ([10_000_000] if os.environ.get("RAYHISTORY_BENCH_10M") else list(DEFAULT_SIZES))
    previous = _previous_runs()
    runs = [measure(n) for n in sizes]
    kept = {r["tasks"]: r for r in previous} | {r["tasks"]: r for r in runs}
    write_results("disk_tasks", {"runs": [kept[n] for n in sorted(kept)]})


def _previous_runs() -> list[dict]:
    path = Path(RESULTS) / "disk_tasks.json"
    try:
        return json.loads(path.read_text())["results"]["runs"]
    except (OSError, ValueError, KeyError):
        return []


if __name__ == "__main__":
    main(sys.argv[1:])
