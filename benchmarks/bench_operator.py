"""Operator costs: collector injection (pure), an admission review over HTTPS, retention planning.

Run: .venv/bin/python -m benchmarks.bench_operator. Results: bench-results/operator.json.
- inject: `specs.inject_raycluster` on the example RayCluster with 1 and with 10 worker groups.
- admission: the webhook's HTTPS server (Kopf's WebhookServer with the operator's certificate code) answering
  AdmissionReviews with the injection patch, called sequentially from one client over keep-alive: the latency
  a Kubernetes API server adds to a RayCluster CREATE (Kopf's handler dispatch is not included).
- retention: `sessions_to_delete` over 100,000 sessions in 1,000 clusters.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import socket
import ssl
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
import yaml

from rayhistory import layout
from rayhistory.index import SessionInfo
from rayhistory.operator import injection, specs
from rayhistory.operator.config import Settings
from rayhistory.operator.history import RetentionSpec, parse_spec
from rayhistory.operator.retention import sessions_to_delete
from rayhistory.operator.webhook import build_webhook_server

from .common import ROOT, write_results

HISTORY = {"apiVersion": "rayhistory.io/v1alpha1", "kind": "RayHistory",
           "metadata": {"name": "history", "namespace": "rh", "uid": "u"},
           "spec": {"storage": {"url": "s3://bucket/prefix"}}}


def example_cluster(worker_groups: int) -> dict:
    cluster = yaml.safe_load((ROOT / "deploy" / "examples" / "raycluster.yaml").read_text())
    group = cluster["spec"]["workerGroupSpecs"][0]
    cluster["spec"]["workerGroupSpecs"] = [dict(copy.deepcopy(group), groupName=f"g{i}") for i in range(worker_groups)]
    return cluster


def bench_inject(worker_groups: int, n: int = 2000) -> float:
    cluster, spec = example_cluster(worker_groups), parse_spec(HISTORY["spec"])
    t0 = time.perf_counter()
    for _ in range(n):
        specs.inject_raycluster(cluster, HISTORY, spec)
    return (time.perf_counter() - t0) / n * 1e6


async def bench_admission(n: int = 300) -> dict:
    async def review(request: dict, **_: object) -> dict:
        patch, _note = injection.admission_patch(request["request"]["object"], [HISTORY])
        return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                "response": {"uid": request["request"]["uid"], "allowed": True,
                             "patch": base64.b64encode(json.dumps(patch).encode()).decode()}}

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = Settings(webhook_addr="127.0.0.1", webhook_port=port, webhook_host="127.0.0.1",
                        webhook_cert_dir=str(Path(tempfile.mkdtemp()) / "none"))
    configs = build_webhook_server(settings)(review)
    config = await configs.__anext__()
    body = {"request": {"uid": "u", "object": example_cluster(2)}}
    latencies = []
    try:
        context = ssl.create_default_context(cadata=base64.b64decode(config["caBundle"]).decode())
        async with aiohttp.ClientSession() as http:
            for _ in range(n):
                t0 = time.perf_counter()
                async with http.post(config["url"] + "/inject", json=body, ssl=context) as resp:
                    assert resp.status == 200
                    await resp.read()
                latencies.append((time.perf_counter() - t0) * 1000)
    finally:
        await configs.aclose()
    latencies = latencies[10:]  # warm-up: TLS handshake, first imports
    return {"reviews": len(latencies), "p50_ms": round(statistics.median(latencies), 2),
            "p95_ms": round(statistics.quantiles(latencies, n=20)[18], 2)}


def bench_retention(clusters: int = 1000, per_cluster: int = 100) -> float:
    base = layout.session_start_ms("session_2026-01-01_00-00-00_000000_1")
    sessions = [
        SessionInfo(namespace="ns", cluster=f"c{c}", session=f"session_2026-01-01_00-00-00_{s:06d}_1",
                    start_ms=base + s * 3600_000, end_ms=base + s * 3600_000 + 60_000, state="dead")
        for c in range(clusters) for s in range(per_cluster)
    ]
    now = base + per_cluster * 3600_000
    t0 = time.perf_counter()
    doomed = sessions_to_delete(sessions, now, RetentionSpec(max_age="2d", max_sessions_per_cluster=20))
    elapsed = (time.perf_counter() - t0) * 1000
    assert len(doomed) == clusters * (per_cluster - 20)
    return elapsed


def main() -> None:
    results = {
        "inject_us_per_cluster_1_worker_group": round(bench_inject(1), 1),
        "inject_us_per_cluster_10_worker_groups": round(bench_inject(10), 1),
        "admission_https": asyncio.run(bench_admission()),
        "retention_plan_ms_100k_sessions": round(bench_retention(), 1),
    }
    write_results("operator", results)


if __name__ == "__main__":
    main()
