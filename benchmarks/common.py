"""Shared by the benchmarks: fixture events, result files, resource readings."""

from __future__ import annotations

import json
import os
import platform
import resource
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench-results"
FIXTURE_RECEIVED = ROOT / "tests" / "fixtures" / "ray" / "received"


def fixture_events() -> list[dict]:
    """The 440 events Ray 2.60 sent in the fixture run, in arrival order."""
    return [e for p in sorted(FIXTURE_RECEIVED.glob("*.json")) for e in json.loads(p.read_text())["body"]]


def peak_rss_mb() -> float:
    """This process's peak RSS: Linux's VmHWM, which starts again at exec and at reset_peak_rss (getrusage's
    ru_maxrss keeps the parent's peak across the fork and exec of a subprocess)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # "5": reset the peak RSS (VmHWM) to the current RSS
        f.write("5")


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def children_cpu_seconds() -> float:
    """CPU seconds of this process's children that ended and were waited for (worker processes)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def write_results(name: str, results: dict) -> Path:
    """Print the figures and write them, with the machine they were taken on, to bench-results/NAME.json."""
    RESULTS.mkdir(exist_ok=True)
    record = {
        "benchmark": name,
        "taken_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "results": results,
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    return path
