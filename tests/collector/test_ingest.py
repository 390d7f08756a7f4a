"""POST /v1/events over real HTTP: per-event validation, 413, 503 + Retry-After, /healthz, /metrics."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from rayhistory.collector.main import Collector, Settings
from tests.conftest import HEAD_NODE_ID, SESSION_NAME, received_bodies


@pytest.fixture
async def collector(tmp_path):
    settings = Settings(storage=f"file://{tmp_path}/store", port=0, metrics_port=0, spool_dir=str(tmp_path / "spool"),
                        ray_temp_root=str(tmp_path / "ray"), flush_interval=3600, log_upload_interval=3600,
                        max_body_bytes=200_000, spool_max_bytes=2_000_000, shutdown_grace=10)
    c = Collector(settings)
    await c.start()
    try:
        yield c
    finally:
        if not c.stopping.is_set():
            await c.shutdown()


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


def url(c: Collector, path: str) -> str:
    return f"http://127.0.0.1:{c.port}{path}"


async def test_good_events_are_accepted_and_bad_ones_listed_with_reasons(collector, http):
    good = [e for body in received_bodies() for e in body][:3]
    bad_session = dict(good[0], eventId="YmFkc2Vzc2lvbg==", sessionName="not-a-session")
    bad_node = dict(good[1], eventId="YmFkbm9kZQ==", nodeId="AAAA")
    no_payload = {k: v for k, v in good[2].items() if not k.endswith("Event") and not k.endswith("Events")}
    body = [good[0], bad_session, good[1], bad_node, 17, no_payload, good[2]]
    async with http.post(url(collector, "/v1/events"), json=body) as resp:
        assert resp.status == 200
        answer = await resp.json()
    assert answer["accepted"] == 3
    # (which index each rejection names is rayhistory.events' business, tested there)
    rejected = {r["eventId"]: r["reason"] for r in answer["rejected"]}
    assert len(answer["rejected"]) == 4
    assert "sessionName" in rejected["YmFkc2Vzc2lvbg=="]
    assert "nodeId" in rejected["YmFkbm9kZQ=="]
    assert "payload" in rejected[good[2]["eventId"]]
    assert "object" in rejected[""]
    # the accepted ones are in the spool, durable, before the answer
    await collector.spool.seal()
    [segment] = collector.spool.sealed()
    groups = collector.spool.read(segment).groups
    ids = [json.loads(line)["eventId"] for p in groups[(SESSION_NAME, HEAD_NODE_ID)] for line in bytes(p).splitlines()]
    assert ids == [good[0]["eventId"], good[1]["eventId"], good[2]["eventId"]]


@pytest.mark.parametrize("body", [b'{"eventId": "x"', b"", b"   ", b'{"eventId": "x"}', b"17", b'"[]"', b"[1, 2"])
async def test_a_body_that_is_not_an_array_of_events_is_a_400(collector, http, body):
    """Issue 9, item 6: a JSON object and an empty body used to get a 200."""
    async with http.post(url(collector, "/v1/events"), data=body) as resp:
        assert resp.status == 400
        assert "not a JSON array" in (await resp.json())["error"]
    assert collector.spool.bytes == 0


def _crafted(template: dict, event_id: str, **fields) -> dict:
    return dict(template, eventId=event_id, **fields)


async def test_crafted_identities_and_deep_nesting_are_rejected_alone_and_their_neighbours_flushed(collector, http):
    """Issue 9, items 1, 2 and 4: a session name ending in a newline, a very long pid, fullwidth digits, an
    event nested a thousand levels deep: each is rejected alone, the request is a 200, and every event it
    acknowledged (before and after them, in one segment) reaches storage."""
    good = [e for body in received_bodies() for e in body if e["sessionName"] == SESSION_NAME][:6]
    base = good[0]
    deep = "DEEP"  # placeholder: json.dumps itself cannot write a thousand levels
    crafted = [
        _crafted(base, "bmV3bGluZQ==", sessionName=SESSION_NAME + "\n"),
        _crafted(base, "bG9uZ3BpZA==", sessionName=SESSION_NAME + "9" * 4000),
        _crafted(base, "ZnVsbHdpZHRo", sessionName=SESSION_NAME[:-4] + "\uff19\uff16\uff17\uff10"),
        _crafted(base, "ZGVlcA==", message="deep", taskDefinitionEvent=deep),
        _crafted(base, "dHJhdmVyc2Fs", sessionName="../../" + SESSION_NAME),
    ]
    body = json.dumps(good[:3] + crafted + good[3:]).replace('"DEEP"', '{"x":' * 1000 + "1" + "}" * 1000)
    async with http.post(url(collector, "/v1/events"), data=body.encode()) as resp:
        assert resp.status == 200
        answer = await resp.json()
    assert answer["accepted"] == len(good)
    assert sorted(r["index"] for r in answer["rejected"]) == list(range(3, 3 + len(crafted)))
    deep_reason = next(r["reason"] for r in answer["rejected"] if r["index"] == 6)
    assert "deeper than" in deep_reason
    # a second request in the same segment: it must survive whatever the first one held
    async with http.post(url(collector, "/v1/events"), json=good[:1]) as resp:
        assert resp.status == 200
    assert await collector.flusher.flush_all()
    stored = _stored_event_ids(collector)
    assert stored == {e["eventId"] for e in good}
    assert collector.metrics.spool_damaged._value.get() == 0


def _stored_event_ids(c: Collector) -> set[str]:
    import gzip
    from pathlib import Path

    root = Path(c.store.root)
    ids = set()
    for path in root.rglob("*.jsonl.gz"):
        assert f"/sessions/{c.settings.namespace}/{c.settings.cluster_name}/{SESSION_NAME}/events/" in str(path)
        ids.update(json.loads(line)["eventId"] for line in gzip.decompress(path.read_bytes()).splitlines())
    return ids


async def test_ingest_is_on_loopback_and_the_pod_network_port_has_no_ingest(collector, http):
    """Issue 9, item 10: ingest listens on 127.0.0.1 by default; /metrics and /healthz have their own port."""
    assert Settings().host == "127.0.0.1"
    assert collector._runner.addresses[0][0] == "127.0.0.1"
    pod_port = f"http://127.0.0.1:{collector.metrics_port}"
    async with http.post(pod_port + "/v1/events", json=received_bodies()[0]) as resp:
        assert resp.status in (404, 405)
    async with http.get(pod_port + "/metrics") as resp:
        assert resp.status == 200 and "rayhistory_collector_spool_bytes" in await resp.text()
    async with http.get(pod_port + "/healthz") as resp:
        assert resp.status == 200 and (await resp.json())["status"] == "ok"


async def test_a_body_over_the_limit_is_a_413_also_when_chunked(collector, http):
    big = json.dumps(received_bodies()[0] * 200).encode()
    assert len(big) > collector.settings.max_body_bytes
    async with http.post(url(collector, "/v1/events"), data=big) as resp:
        assert resp.status == 413

    async def chunks():
        for i in range(0, len(big), 65536):
            yield big[i:i + 65536]

    async with http.post(url(collector, "/v1/events"), data=chunks()) as resp:
        assert resp.status == 413
    assert collector.spool.bytes == 0


async def test_a_full_spool_answers_503_with_retry_after(collector, http):
    body = received_bodies()[1]
    status = 200
    posts = 0
    while status == 200:
        async with http.post(url(collector, "/v1/events"), json=body) as resp:
            status = resp.status
            retry_after = resp.headers.get("Retry-After")
        posts += 1
        assert posts < 1000
    # issue 9, item 6: the sender's retry is the storage backoff (1 s while storage answers), not the
    # flush interval (an hour here)
    assert status == 503 and 1 <= int(retry_after) <= 30
    assert collector.spool.bytes >= collector.settings.spool_max_bytes
    # once the flusher has moved the spool to storage, the same POST is accepted again
    assert await collector.flusher.flush_all()
    async with http.post(url(collector, "/v1/events"), json=body) as resp:
        assert resp.status == 200


async def test_healthz_and_metrics(collector, http):
    async with http.get(url(collector, "/healthz")) as resp:
        assert resp.status == 200
    async with http.post(url(collector, "/v1/events"), json=received_bodies()[0] + [{"eventId": "x"}]) as resp:
        accepted = (await resp.json())["accepted"]
    async with http.get(url(collector, "/metrics")) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    metrics = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
               if line and not line.startswith("#")}
    assert metrics["rayhistory_collector_events_received_total"] == accepted
    assert metrics["rayhistory_collector_events_rejected_total"] == 1
    assert metrics['rayhistory_collector_requests_total{status="200"}'] == 1
    assert metrics["rayhistory_collector_spool_bytes"] > 0
    for name in ("rayhistory_collector_events_flushed_total", "rayhistory_collector_log_bytes_uploaded_total"):
        assert name in metrics


async def test_after_shutdown_starts_posts_are_refused_and_everything_is_flushed(collector, http):
    async with http.post(url(collector, "/v1/events"), json=received_bodies()[0]) as resp:
        assert resp.status == 200
    collector.ingest.accepting = False
    async with http.post(url(collector, "/v1/events"), json=received_bodies()[1]) as resp:
        assert resp.status == 503
    assert await collector.shutdown() == 0
    assert collector.spool.bytes == 0


async def test_a_storage_stall_shows_in_health_and_metrics(tmp_path, http):
    """Issue 9, item 6: while storage hung, nothing moved but the spool's bytes. Storage is a real TCP server
    that accepts and never answers (tests/backends.py), used as the S3 endpoint."""
    from tests.backends import hanging_s3

    with hanging_s3() as s3:
        settings = Settings(storage="s3://history/store", storage_options=s3.s3_options(), storage_timeout_s=1.0,
                            port=0, metrics_port=0,
                            spool_dir=str(tmp_path / "spool"), ray_temp_root=str(tmp_path / "ray"),
                            flush_interval=0.2, log_upload_interval=3600, shutdown_grace=2)
        c = Collector(settings)
        await c.start()
        try:
            async with http.post(url(c, "/v1/events"), json=received_bodies()[0]) as resp:
                assert resp.status == 200  # durable in the spool: storage is not needed for a 200
            for _ in range(100):
                async with http.get(f"http://127.0.0.1:{c.metrics_port}/healthz") as resp:
                    health = await resp.json()
                if health["storage"]["timeouts"] and health["oldest_unflushed_s"] > 1:
                    break
                await asyncio.sleep(0.1)
            assert resp.status == 200 and health["spool_bytes"] > 0 and health["storage"]["timeouts"] >= 1
            async with http.get(f"http://127.0.0.1:{c.metrics_port}/metrics") as resp:
                text = await resp.text()
            assert "rayhistory_storage_timeouts_total" in text and "rayhistory_collector_oldest_unflushed_seconds" in text
            assert 'rayhistory_collector_upload_errors_total{kind="events"}' in text
        finally:
            await c.shutdown()
