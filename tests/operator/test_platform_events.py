"""Kubernetes Events kept (issue 14, item 4): the pure parts, and the recorder over a real file:// store.

Ground truth for the answer's shape is Ray 2.60's own code, run here: its KubernetesEventProvider turns the
same Kubernetes Event (a kubernetes-client V1Event, as its watch gives it) into a RayEvent, and its
PlatformEventsHead renders that with message_to_dict and to_google_style. The Kubernetes API itself is not
needed for these (the recorder's one API call, a Pod GET, is a stub that says so); the real control plane
is in test_k8s_operator.py.
"""

from __future__ import annotations

import asyncio
import base64
import json

import pytest
from kubernetes.client import ApiClient

from rayhistory import layout
from rayhistory.index import SessionInfo
from rayhistory.layout import IndexKind, SessionRef
from rayhistory.operator import platform_events as pe
from rayhistory.operator.metrics import OperatorMetrics
from rayhistory.platform_events import (
    PlatformEventRecord, decode_batch, encode_batch, merge_records, parse_k8s_time, platform_events_answer,
    ray_platform_event, record_from_event,
)
from rayhistory.store import Store
from tests.server.fixture_store import write_index

NS = "default"
SESSION_A = "session_2026-12-01_10-00-00_000000_1"
SESSION_B = "session_2026-12-01_12-00-00_000000_1"


def k8s_event(uid: str, kind: str = "Pod", name: str = "demo-head-abcde", reason: str = "FailedScheduling",
              message: str = "0/3 nodes are available: 3 Insufficient memory.", type_: str = "Warning",
              count: int | None = 3, last: str = "2026-12-01T10:05:00.123456Z", rv: str = "123", **extra) -> dict:
    event = {"apiVersion": "v1", "kind": "Event",
             "metadata": {"name": f"{name}.{uid[:6]}", "namespace": NS, "uid": uid, "resourceVersion": rv},
             "involvedObject": {"kind": kind, "name": name, "namespace": NS,
                                "apiVersion": "v1" if kind == "Pod" else "ray.io/v1"},
             "reason": reason, "message": message, "type": type_, "source": {"component": "default-scheduler"},
             "firstTimestamp": "2026-12-01T10:00:00Z", "lastTimestamp": last}
    if count is not None:
        event["count"] = count
    event.update(extra)
    return event


def ray_answer(events: list[dict], cluster: str) -> dict:
    """What Ray 2.60's PlatformEventsHead answers after its k8s provider saw `events` (its own code)."""
    from ray.dashboard import utils as dashboard_utils
    from ray.dashboard.modules.platform_events.providers.k8s_provider import KubernetesEventProvider

    seen = []
    provider = KubernetesEventProvider(seen.append)
    provider._namespace, provider._cluster_name = NS, cluster
    for event in events:
        provider._process_k8s_event(ApiClient().deserialize(json.dumps(event), "CoreV1Event", "application/json"))
    seen.sort(key=lambda e: e.timestamp.seconds + e.timestamp.nanos / 1e9, reverse=True)
    payload = [dashboard_utils.message_to_dict(e, always_print_fields_with_no_presence=True) for e in seen]
    return {"result": True, "msg": "Retrieved platform events", "data": dashboard_utils.to_google_style(
        {"events": payload})}


def test_the_answer_is_the_one_rays_own_code_gives_for_the_same_events():
    events = [
        k8s_event("5a8a0c1e-1111-2222-3333-444455556666"),
        k8s_event("6b8a0c1e-1111-2222-3333-444455556666", kind="RayCluster", name="demo", reason="CreatedHeadPod",
                  message="Created head Pod default/demo-head-abcde", type_="Normal", count=1,
                  last="2026-12-01T09:59:59Z", source={"component": "raycluster-controller"}),
        # events.k8s.io/v1 style: no legacy source or lastTimestamp, a series and a reporting component
        k8s_event("7c8a0c1e-1111-2222-3333-444455556666", reason="Evicted", count=None, last=None,
                  message="The node was low on resource: memory.", source={},
                  reportingComponent="kubelet", eventTime="2026-12-01T10:07:00.000001Z",
                  series={"count": 4, "lastObservedTime": "2026-12-01T10:08:00.500000Z"}),
    ]
    ours = platform_events_answer([record_from_event(e, "demo") for e in events])
    assert ours == ray_answer(events, "demo")
    assert [e["platformEvent"]["reason"] for e in ours["data"]["events"]] == [
        "Evicted", "FailedScheduling", "CreatedHeadPod"]  # newest first
    evicted = ours["data"]["events"][0]
    assert evicted["platformEvent"]["customFields"] == {"count": "4"}
    assert evicted["platformEvent"]["source"]["component"] == "kubelet"
    assert base64.b64decode(evicted["eventId"]).decode() == "7c8a0c1e-1111-2222-3333-444455556666"


def test_times_keep_nanoseconds_and_bad_times_are_zero():
    assert parse_k8s_time("2026-12-01T10:05:00.123456789Z") % 1_000_000_000 == 123456789
    assert parse_k8s_time("2026-12-01T10:05:00Z") == 1796119500 * 1_000_000_000
    for bad in (None, "", "yesterday", 5, "x" * 100):
        assert parse_k8s_time(bad) == 0
    record = record_from_event(k8s_event("u1", last="2026-12-01T10:05:00.123456789Z"), "demo")
    assert ray_platform_event(record)["timestamp"] == "2026-12-01T10:05:00.123456789Z"


def test_records_are_checked_and_bounded():
    for bad in (k8s_event("u1", kind="Node"), k8s_event("../x"), k8s_event(""),
                k8s_event("u1", name="../../etc"), k8s_event("u1", name="a" * 300)):
        with pytest.raises(layout.LayoutError):
            record_from_event(bad, "demo")
    with pytest.raises(layout.LayoutError):
        record_from_event(k8s_event("u1"), "../other")
    long = record_from_event(k8s_event("u1", message="m" * 100_000, reason="r" * 1000, count=True), "demo")
    assert len(long.message) == 4096 and len(long.reason) == 128 and long.count == 0


def test_merge_keeps_the_latest_version_of_each_event():
    old = record_from_event(k8s_event("u1", count=2, rv="10"), "demo")
    new = record_from_event(k8s_event("u1", count=5, rv="20", last="2026-12-01T10:09:00Z"), "demo")
    other = record_from_event(k8s_event("u2", count=1), "demo")
    for order in ([old, new, other], [other, new, old], [new, old, old, other]):
        merged = merge_records(order)
        assert [(r.uid, r.count) for r in merged] == [("u1", 5), ("u2", 1)]


def test_batches_round_trip_and_refuse_what_they_must():
    records = [record_from_event(k8s_event(f"u{i}"), "demo") for i in range(3)]
    assert decode_batch(encode_batch(records), 1 << 20) == records
    forged = encode_batch([PlatformEventRecord(uid="../x", kind="Pod", name="p", namespace=NS, cluster="demo",
                                               time_ns=1)])
    with pytest.raises(ValueError):
        decode_batch(forged, 1 << 20)
    with pytest.raises(ValueError):
        decode_batch(b"not gzip", 1 << 20)


def test_session_of_an_event_is_the_one_the_head_was_running():
    a = SessionInfo(namespace=NS, cluster="demo", session=SESSION_A, start_ms=layout.session_start_ms(SESSION_A))
    b = SessionInfo(namespace=NS, cluster="demo", session=SESSION_B, start_ms=layout.session_start_ms(SESSION_B))
    assert pe.session_for([], 0) is None
    assert pe.session_for([b, a], a.start_ms - 60_000).session == SESSION_A  # scheduling, before the first
    assert pe.session_for([b, a], a.start_ms + 60_000).session == SESSION_A
    assert pe.session_for([b, a], b.start_ms + 1).session == SESSION_B  # after the head restarted


def test_which_clusters_an_event_is_about():
    demo = pe.InjectedCluster(NS, "demo", "rayhistory-system/history", (("RayJob", "nightly"),))
    other = pe.InjectedCluster("team-b", "demo", "rayhistory-system/history")
    clusters = [demo, other]
    assert pe.clusters_for("RayCluster", "demo", NS, clusters) == [demo]
    assert pe.clusters_for("RayJob", "nightly", NS, clusters) == [demo]
    assert pe.clusters_for("RayService", "nightly", NS, clusters) == []
    assert pe.clusters_for("Pod", "demo-head-x", NS, clusters, pod_cluster="demo") == [demo]
    assert pe.clusters_for("Pod", "demo-head-x", NS, clusters, pod_cluster="") == []
    assert pe.may_be_pod_of("demo-head-x", NS, clusters) and not pe.may_be_pod_of("web-1", NS, clusters)
    meta = {"annotations": {"rayhistory.io/history": "rayhistory-system/history"},
            "ownerReferences": [{"kind": "RayJob", "name": "nightly"}, {"kind": "ReplicaSet", "name": "x"}]}
    assert pe.injected_cluster(NS, "demo", meta, "rayhistory.io/history") == demo


def test_budget_keeps_newer_versions_and_warnings_first():
    warn = record_from_event(k8s_event("w", type_="Warning"), "demo")
    normal = record_from_event(k8s_event("n", type_="Normal"), "demo")
    again = record_from_event(k8s_event("k", count=9), "demo")
    chosen, dropped = pe.fit_budget([normal, warn, again], {"k": (3, 0, 0)}, max_events=2)
    assert [r.uid for r in chosen] == ["k", "w"] and dropped == 1
    chosen, dropped = pe.fit_budget([again], {"k": again.version}, max_events=10)
    assert chosen == [] and dropped == 0  # already stored


class PodsOfOneCluster:
    """Stands in for operator.kube.Kube's one call here (GET a Pod): the real API is in test_k8s_operator."""

    def __init__(self, labels: dict[str, str]):
        self.labels = labels
        self.gets: list[str] = []

    async def get(self, path: str):
        name = path.rsplit("/", 1)[-1]
        self.gets.append(name)
        return {"metadata": {"labels": {"ray.io/cluster": self.labels[name]}}} if name in self.labels else None


def test_recorder_keeps_events_in_the_session_once_within_bounds(tmp_path):
    async def go():
        store = Store(f"file://{tmp_path}/store")
        a, b = SessionRef(NS, "demo", SESSION_A), SessionRef(NS, "demo", SESSION_B)
        kube = PodsOfOneCluster({"demo-head-abcde": "demo", "demo-extra-head-x": "demo-extra"})
        demo = pe.InjectedCluster(NS, "demo", "h")
        recorder = pe.PlatformEventRecorder(OperatorMetrics(), "operator1", 60.0, max_events=3, max_bytes=1 << 20)
        # scheduling before any session: waits in memory
        assert await recorder.offer(kube, k8s_event("u1", last="2026-12-01T09:59:00Z"), [demo], lambda c: store) == 1
        assert await recorder.flush() == 0
        await write_index(store, a, IndexKind.LIVE, layout.session_start_ms(SESSION_A))
        await write_index(store, b, IndexKind.LIVE, layout.session_start_ms(SESSION_B))
        assert await recorder.offer(kube, k8s_event("u2", last="2026-12-01T12:30:00Z"), [demo], lambda c: store) == 1
        # a pod of another cluster (not injected), named like demo's: looked up once, not kept
        assert await recorder.offer(kube, k8s_event("u3", name="demo-extra-head-x"), [demo], lambda c: store) == 0
        assert await recorder.offer(kube, k8s_event("u3", name="demo-extra-head-x"), [demo], lambda c: store) == 0
        assert await recorder.offer(kube, k8s_event("u4", name="web-1"), [demo], lambda c: store) == 0
        assert kube.gets == ["demo-head-abcde", "demo-extra-head-x"]  # "web-1" cannot be demo's: no GET
        assert await recorder.flush() == 2
        stored = {ref: [r.uid for k in await store.list(layout.platform_events_prefix(ref))
                        for r in decode_batch(await store.get(k.key), 1 << 20)] for ref in (a, b)}
        assert stored == {a: ["u1"], b: ["u2"]}
        # a restarted operator sees the same events again (the watch's first listing): nothing is rewritten,
        # a newer version is; past the session's bound new events are dropped
        again = pe.PlatformEventRecorder(OperatorMetrics(), "operator2", 60.0, max_events=2, max_bytes=1 << 20)
        await again.offer(kube, k8s_event("u2", last="2026-12-01T12:30:00Z"), [demo], lambda c: store)
        await again.offer(kube, k8s_event("u2", count=7, last="2026-12-01T12:31:00Z"), [demo], lambda c: store)
        for i in range(5, 9):
            await again.offer(kube, k8s_event(f"u{i}", last="2026-12-01T12:40:00Z"), [demo], lambda c: store)
        assert await again.flush() == 2  # u2's new count, and one new event: the bound is 2 per session
        records = [r for k in await store.list(layout.platform_events_prefix(b))
                   for r in decode_batch(await store.get(k.key), 1 << 20)]
        assert {r.uid: r.count for r in merge_records(records)} == {"u2": 7, "u5": 3}
        assert again.metrics.platform_events.labels("dropped")._value.get() == 3
        # keys come from the session and the writer only
        assert all(layout.is_platform_events_batch_key(b, k.key) for k in await store.list(
            layout.platform_events_prefix(b)))
    asyncio.run(go())


def test_a_gone_pod_costs_one_get_per_ttl(tmp_path):
    """A deleted pod's events come in bursts (Killing, the kubelet's last words): each asked the API again
    before; now one GET per TTL, and a pod that comes back under the name is seen once the TTL is over."""
    async def go():
        store = Store(f"file://{tmp_path}/store")
        demo = pe.InjectedCluster(NS, "demo", "h")
        kube = PodsOfOneCluster({})
        recorder = pe.PlatformEventRecorder(OperatorMetrics(), "operator1", 60.0, max_events=10, max_bytes=1 << 20,
                                            gone_pod_ttl_s=0.2)
        for i in range(5):
            assert await recorder.offer(kube, k8s_event(f"u{i}"), [demo], lambda c: store) == 0
        assert kube.gets == ["demo-head-abcde"]
        kube.labels["demo-head-abcde"] = "demo"  # back under the same name
        await asyncio.sleep(0.3)
        assert await recorder.offer(kube, k8s_event("u9"), [demo], lambda c: store) == 1
        assert await recorder.offer(kube, k8s_event("u10"), [demo], lambda c: store) == 1
        assert kube.gets == ["demo-head-abcde"] * 2  # the found pod is cached as before
    asyncio.run(go())


def test_recorder_never_stores_more_bytes_than_the_bound(tmp_path):
    async def go():
        store = Store(f"file://{tmp_path}/store")
        ref = SessionRef(NS, "demo", SESSION_A)
        await write_index(store, ref, IndexKind.LIVE, layout.session_start_ms(SESSION_A))
        demo = pe.InjectedCluster(NS, "demo", "h")
        kube = PodsOfOneCluster({"demo-head-abcde": "demo"})
        recorder = pe.PlatformEventRecorder(OperatorMetrics(), "operator1", 60.0, max_events=1000, max_bytes=8192)
        import random
        noise = random.Random(1)
        for i in range(200):  # messages that do not compress: the byte bound bites before the count
            message = "".join(noise.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(300))
            await recorder.offer(kube, k8s_event(f"u{i}", message=message), [demo], lambda c: store)
            if i % 50 == 49:
                await recorder.flush()
        stored = await store.list(layout.platform_events_prefix(ref))
        assert stored and sum(o.size for o in stored) <= 8192
        assert recorder.metrics.platform_events.labels("dropped")._value.get() > 0
    asyncio.run(go())


class BrokenStore(Store):
    """A RayHistory's storage that refuses everything (revoked credentials): the one stand-in here, since
    what is tested is the recorder's isolation of one cluster's failure, not a storage protocol."""

    async def list(self, prefix: str, timeout_s=None):
        raise PermissionError("credentials revoked")

    async def put(self, key: str, data: bytes) -> None:
        raise PermissionError("credentials revoked")


def test_one_clusters_broken_storage_does_not_keep_the_others_events_out(tmp_path):
    async def go():
        good, broken = Store(f"file://{tmp_path}/good"), BrokenStore(f"file://{tmp_path}/broken")
        ref = SessionRef(NS, "demo", SESSION_A)
        await write_index(good, ref, IndexKind.LIVE, layout.session_start_ms(SESSION_A))
        clusters = [pe.InjectedCluster(NS, "broken", "h1"), pe.InjectedCluster(NS, "demo", "h2")]
        stores = {"broken": broken, "demo": good}
        kube = PodsOfOneCluster({"broken-head-abcde": "broken", "demo-head-abcde": "demo"})
        recorder = pe.PlatformEventRecorder(OperatorMetrics(), "operator1", 60.0, max_events=10, max_bytes=1 << 20)
        await recorder.offer(kube, k8s_event("u1", name="broken-head-abcde"), clusters, lambda c: stores[c.name])
        await recorder.offer(kube, k8s_event("u2"), clusters, lambda c: stores[c.name])
        assert await recorder.flush() == 1  # demo's, though the broken cluster's came first
        stored = [r.uid for k in await good.list(layout.platform_events_prefix(ref))
                  for r in decode_batch(await good.get(k.key), 1 << 20)]
        assert stored == ["u2"]
        with pytest.raises(PermissionError):  # asked for by name (after mark-dead): the caller sees it
            await recorder.flush(broken, NS, "broken")
    asyncio.run(go())


def oomkilled_pod(name: str = "demo-head-abcde", uid: str = "9f0c1e2d-1111-2222-3333-444455556666",
                  finished: str = "2026-12-01T10:05:59Z") -> dict:
    """A pod as the API returns it after its head container was OOMKilled once and restarted (the kubelet's
    container status), with a sidecar that completed normally."""
    return {"metadata": {"name": name, "namespace": NS, "uid": uid},
            "status": {"containerStatuses": [
                {"name": "ray-head", "restartCount": 1, "state": {"running": {"startedAt": "2026-12-01T10:06:00Z"}},
                 "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137, "finishedAt": finished}}},
                {"name": "rayhistory-collector", "restartCount": 0,
                 "state": {"terminated": {"reason": "Completed", "exitCode": 0, "finishedAt": "2026-12-01T10:07:00Z"}}},
            ]}}


def test_container_terminations_of_a_deleted_pod_become_its_events():
    (record,) = pe.container_terminations(oomkilled_pod(), "demo")
    assert (record.kind, record.name, record.reason, record.type, record.component) == (
        "Pod", "demo-head-abcde", "OOMKilled", "Warning", "kubelet")
    assert record.message == "container ray-head terminated: OOMKilled (exit code 137), restarts 1"
    assert record.time_ns == parse_k8s_time("2026-12-01T10:05:59Z")
    assert pe.container_terminations(oomkilled_pod(), "demo")[0].uid == record.uid  # the same termination: one uid
    layout.check_k8s_uid(record.uid)
    assert pe.container_terminations({"metadata": {"name": "../x", "namespace": NS, "uid": "u"},
                                      "status": oomkilled_pod()["status"]}, "demo") == []
    assert pe.container_terminations({}, "demo") == []
