"""Event parse speed: events/s on one core for the server's hot path (its typed decode of stored batches,
server/stored_events.py) and for the collector's validation of a POST body.

Run: make bench  (or .venv/bin/python -m benchmarks.bench_events). Results: bench-results/events.json.
The input is the fixture's 440 real Ray 2.60 events, repeated, cut into stored batches of ~1,000 events
(the aggregator agent sends up to 1,000 per POST; the collector stores JSON lines).
"""

from __future__ import annotations

import json
import time

from rayhistory.events import accept_events
from rayhistory.server.stored_events import decode_clean

from .common import cpu_seconds, fixture_events, peak_rss_mb, write_results


def _batches(lines: list[bytes], total: int, per_batch: int) -> list[bytes]:
    out = []
    for start in range(0, total, per_batch):
        out.append(b"\n".join(lines[(start + i) % len(lines)] for i in range(min(per_batch, total - start))))
    return out


def _rate(fn, batches: list[bytes], repeat: int = 3) -> tuple[float, int]:
    best = 0.0
    count = 0
    for _ in range(repeat):
        c0 = cpu_seconds()
        count = sum(fn(b) for b in batches)
        best = max(best, count / max(cpu_seconds() - c0, 1e-9))
    return best, count


def main() -> None:
    lines = [json.dumps(e, separators=(",", ":")).encode() for e in fixture_events()]
    batches = _batches(lines, total=200_000, per_batch=1000)
    decode_rate, n = _rate(lambda b: len(decode_clean(b)), batches)
    posts = [b"[" + b.replace(b"\n", b", ") + b"]" for b in batches]  # Ray POSTs a JSON array
    accept_rate, _ = _rate(lambda b: len(accept_events(b)[0]), posts)
    write_results("events", {
        "events": n,
        "batch_size": 1000,
        "decode_events_per_cpu_second": round(decode_rate),
        "collector_accept_events_per_cpu_second": round(accept_rate),
        "target_decode_events_per_cpu_second": 200_000,
        "peak_rss_mb": round(peak_rss_mb(), 1),
    })


if __name__ == "__main__":
    main()
