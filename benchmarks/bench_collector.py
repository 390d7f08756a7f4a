"""Collector ingest: sustained events/s with the spool durable, CPU seconds per 10,000 events, peak RSS.

Run: make bench-collector  (or .venv/bin/python -m benchmarks.bench_collector). Results: bench-results/collector.json.

A real `rayhistory collector` process, pinned to one core, storing to file:// under a temp dir, receives
POSTs of 1,000 events each (the aggregator agent's batch size), built from the fixture's real Ray 2.60
events, from 1 sender (what one Ray node's agent does: one request at a time) and from 8 concurrent senders.
Each run is measured from the first POST to the collector's exit after SIGTERM, so the CPU figures include
flushing everything to storage, not only the spool writes. Each configuration runs 3 times; the fastest run
is reported, with the highest peak RSS of the three. Both durability modes are measured: `group` (one
fdatasync covers every request that wrote before it) and `request` (one fdatasync per request).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp
import psutil

from tests.conftest import free_port

from .common import fixture_events, write_results

EVENTS_PER_POST = 1000
EVENTS_PER_RUN = 200_000
DISTINCT_BODIES = 20
REPEATS = 3


def make_bodies() -> list[bytes]:
    events = fixture_events()
    bodies = []
    for b in range(DISTINCT_BODIES):
        batch = []
        for i in range(EVENTS_PER_POST):
            e = dict(events[(b * EVENTS_PER_POST + i) % len(events)])
            e["eventId"] = base64.b64encode(f"bench-{b}-{i}".encode()).decode()
            batch.append(e)
        bodies.append(json.dumps(batch).encode())
    return bodies


def vm_hwm_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


async def drive(url: str, bodies: list[bytes], senders: int, total_posts: int) -> None:
    remaining = [total_posts]

    async def sender(http: aiohttp.ClientSession) -> None:
        i = 0
        while remaining[0] > 0:
            remaining[0] -= 1
            i += 1
            async with http.post(url, data=bodies[i % len(bodies)], headers={"Content-Type": "application/json"}) as r:
                if r.status != 200:
                    raise RuntimeError(f"collector answered {r.status}: {await r.text()}")
                await r.read()

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=senders)) as http:
        await asyncio.gather(*(sender(http) for _ in range(senders)))


def run_once(mode: str, senders: int, bodies: list[bytes], core: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix="rh-bench-collector-"))
    port = free_port()
    argv = [sys.executable, "-m", "rayhistory", "collector", "--storage", f"file://{work}/store",
            "--port", str(port), "--metrics-port", "-1", "--spool-dir", str(work / "spool"),
            "--ray-temp-root", str(work / "no-ray"), "--spool-fsync", mode, "--log-level", "WARNING",
            "--shutdown-grace", "120"]
    usage0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        psutil.Process(proc.pid).cpu_affinity([core])
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url + "/healthz", timeout=1).read()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("collector did not start: " + proc.stderr.read().decode()[-2000:])
                time.sleep(0.1)
        posts = EVENTS_PER_RUN // EVENTS_PER_POST
        cpu_before = sum(psutil.Process(proc.pid).cpu_times()[:2])
        t0 = time.monotonic()
        asyncio.run(drive(url + "/v1/events", bodies, senders, posts))
        ingest_s = time.monotonic() - t0
        peak = vm_hwm_mb(proc.pid)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(180)
        total_s = time.monotonic() - t0
        if code != 0:
            raise RuntimeError(f"collector exited {code}: {proc.stderr.read().decode()[-2000:]}")
        usage1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_total = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
        cpu_run = cpu_total - cpu_before  # without interpreter start-up
        stored = sum(f.stat().st_size for f in (work / "store").rglob("*.jsonl.gz"))
        return {
            "fsync": mode,
            "senders": senders,
            "events": EVENTS_PER_RUN,
            "ingest_events_per_s": round(EVENTS_PER_RUN / ingest_s),
            "ingest_and_drain_events_per_s": round(EVENTS_PER_RUN / total_s),
            "collector_cpu_s_per_10k_events": round(cpu_run / (EVENTS_PER_RUN / 10_000), 4),
            "events_per_collector_cpu_s": round(EVENTS_PER_RUN / cpu_run),
            "peak_rss_mb": round(peak, 1),
            "stored_gzip_mb": round(stored / 1e6, 1),
        }
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(work, ignore_errors=True)


def best_of(repeats: int, mode: str, senders: int, bodies: list[bytes], core: int) -> dict:
    """The fastest of a few runs (the machine is shared: other load only ever slows a run down), with the
    highest peak RSS seen in any of them."""
    runs = [run_once(mode, senders, bodies, core) for _ in range(repeats)]
    best = max(runs, key=lambda r: r["ingest_events_per_s"])
    return best | {"peak_rss_mb": max(r["peak_rss_mb"] for r in runs), "runs": repeats}


def main() -> None:
    cores = sorted(os.sched_getaffinity(0))
    collector_core = cores[-1]
    if len(cores) > 1:
        os.sched_setaffinity(0, [c for c in cores if c != collector_core])
    bodies = make_bodies()
    runs = [best_of(REPEATS, mode, senders, bodies, collector_core) for mode in ("group", "request") for senders in (1, 8)]
    for r in runs:
        print(json.dumps(r))
    default = next(r for r in runs if r["fsync"] == "group" and r["senders"] == 1)
    write_results("collector", {
        "runs": runs,
        "default_mode": "group",
        "body_events": EVENTS_PER_POST,
        "collector_cores": 1,
        "storage": "file:// (local disk)",
        "target_events_per_s_one_core": 50_000,
        "target_peak_rss_mb": 150,
        "default_ingest_events_per_s": default["ingest_events_per_s"],
        "default_collector_cpu_s_per_10k_events": default["collector_cpu_s_per_10k_events"],
        "default_peak_rss_mb": default["peak_rss_mb"],
    })


if __name__ == "__main__":
    main()
