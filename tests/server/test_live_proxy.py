"""Live sessions: the target comes only from Kubernetes, unreachable dashboards fall back to storage.

Kubernetes is kmock's emulator over real HTTP, read through the real kubernetes client. The "live
dashboard" is a small aiohttp app on 127.0.0.1 that answers like a Ray head (the captured fixture answers):
starting a real Ray head for each case would add a minute and prove nothing more about the routing.
The storage side is a handler that says it answered; the real server's storage routes are exercised by
tests/server and tests/e2e.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import urllib.request

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from kubernetes import client as k8s

from rayhistory import layout
from rayhistory.index import SessionIndex, SessionInfo
from rayhistory.layout import IndexKind, SessionRef
from rayhistory.server import live_proxy as lp
from rayhistory.server.app import create_app
from rayhistory.server.main import Settings
from rayhistory.store import Store
from tests.conftest import SESSION_NAME, api_answer, free_port, received_bodies
from tests.kube_api import use_kmock_kubeconfig
from tests.collector.process import collector_process
from tests.server.fixture_store import fixture_ref, late_task_batch, late_task_id, write_fixture_session
from tests.ui_page import without_additions

NEWER_SESSION = "session_2026-11-24_08-00-00_000001_42"
RAYCLUSTERS = "ray.io/v1/rayclusters"
LIVE_INDEX = '<html><head><title>Ray Dashboard</title></head><body><div id="root"></div></body></html>'


def info(session=SESSION_NAME, state="live", cluster="raycluster-a", start_ms=1):
    return SessionInfo(namespace="ray", cluster=cluster, session=session, state=state, start_ms=start_ms)


# ---- pure decisions ----------------------------------------------------------------------------

def test_dashboard_url_from_head_service_and_fallbacks():
    rc = {"metadata": {"name": "rc", "namespace": "ray"},
          "status": {"head": {"serviceName": "rc-head"}, "endpoints": {"dashboard": "8266"}}}
    svc = {"metadata": {"name": "rc-head", "namespace": "ray"},
           "spec": {"clusterIP": "10.0.0.7", "ports": [{"name": "gcs", "port": 6379}, {"name": "dashboard", "port": 8265}]}}
    assert lp.head_service_name(rc) == "rc-head"
    assert lp.dashboard_url(rc, svc) == "http://10.0.0.7:8265"
    headless = {**svc, "spec": {"clusterIP": "None", "ports": []}}
    assert lp.dashboard_url(rc, headless) == "http://rc-head.ray.svc:8266"
    assert lp.dashboard_url(rc, None) is None
    assert lp.head_service_name({"metadata": {"name": "rc"}}) == "rc-head-svc"


def test_decide_route():
    live, up = info(), lp.ClusterView(True, "http://127.0.0.1:1")
    assert lp.decide_route(info(state="dead"), [], up) == lp.Route("storage", dead=True)
    assert lp.decide_route(live, [live], up) == lp.Route("proxy", target="http://127.0.0.1:1")
    # the cluster is gone: dead even though nobody marked it
    assert lp.decide_route(live, [live], lp.ClusterView(False)).dead
    assert lp.effective_state(live, [live], lp.ClusterView(False)) == "dead"
    # a newer session of the same cluster means the head restarted: the old one is over
    newer = info(NEWER_SESSION, start_ms=2)
    assert lp.decide_route(live, [live, newer], up).dead
    assert lp.decide_route(newer, [live, newer], up).kind == "proxy"
    # no Kubernetes: storage, incomplete, and still live
    no_k8s = lp.decide_route(live, [live], None)
    assert no_k8s.kind == "storage" and no_k8s.incomplete and not no_k8s.dead
    assert lp.effective_state(live, [live], None) == "live"
    # --live-sessions storage: never proxied, and Kubernetes still says what is over
    assert lp.decide_route(live, [live], up, "storage") == lp.Route("storage", incomplete=lp.FROM_STORAGE)
    assert lp.decide_route(live, [live], lp.ClusterView(False), "storage").dead
    assert lp.decide_route(live, [live, newer], up, "storage").dead


# ---- through HTTP --------------------------------------------------------------------------------

@pytest.fixture
async def live_dashboard():
    """Stands in for a running Ray head's dashboard (answers from the fixture capture)."""
    seen = []

    async def jobs(request):
        seen.append(request)
        return web.json_response(api_answer("api__jobs.json"), headers={"X-Live": "1"})

    async def index(request):
        # in two writes with a pause between, as a busy head or a slow link sends it: the proxy must read on
        seen.append(request)
        response = web.StreamResponse(headers={"Content-Type": "text/html", "ETag": '"head-etag"'})
        await response.prepare(request)
        page = LIVE_INDEX.encode()
        await response.write(page[:len(page) // 2])
        await asyncio.sleep(0.05)
        await response.write(page[len(page) // 2:])
        await response.write_eof()
        return response

    async def anything_else(request):
        seen.append(request)
        raise web.HTTPNotFound()

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/api/jobs/", jobs)
    app.router.add_post("/api/jobs/", jobs)
    app.router.add_route("*", "/{tail:.*}", anything_else)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield server, seen
    finally:
        await server.close()


@pytest.fixture
def kubernetes_clusters(kmock):
    config = k8s.Configuration(host=str(kmock.url).rstrip("/"))
    api = k8s.ApiClient(config)
    try:
        yield lp.KubernetesClusters(api, ttl=0)
    finally:
        api.close()


def add_raycluster(kmock, name: str, port: int, service_ip: str = "127.0.0.1"):
    kmock.objects[RAYCLUSTERS, "ray", name] = {
        "apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": name, "namespace": "ray"},
        "status": {"head": {"serviceName": f"{name}-head-svc"}, "endpoints": {"dashboard": "8265"}},
    }
    kmock.objects["v1/services", "ray", f"{name}-head-svc"] = {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": f"{name}-head-svc", "namespace": "ray"},
        "spec": {"clusterIP": service_ip, "ports": [{"name": "dashboard", "port": port, "targetPort": 8265}]},
    }


async def proxy_client(clusters, sessions: list[SessionInfo]):
    async def list_sessions():
        return sessions

    async def from_storage(request):
        return web.json_response({"from": "storage"})

    proxy = lp.LiveProxy(clusters, lp.lookup_from_listing(list_sessions), timeout=5)
    app = web.Application(middlewares=[proxy.middleware])
    app.router.add_route("*", "/s/{namespace}/{cluster}/{session}/api/jobs/", from_storage)
    app.on_cleanup.append(lambda app: proxy.close())
    return TestClient(TestServer(app))


async def test_live_session_is_proxied_to_the_dashboard_kubernetes_names(kmock, kubernetes_clusters, live_dashboard):
    server, seen = live_dashboard
    add_raycluster(kmock, "raycluster-a", server.port)
    async with await proxy_client(kubernetes_clusters, [info()]) as client:
        # a client cannot pick the target: headers, cookies and query naming another host change nothing
        resp = await client.get(
            f"/s/ray/raycluster-a/{SESSION_NAME}/api/jobs/?target=http://evil:1",
            headers={"Host": "evil", "X-Forwarded-Host": "evil", "Cookie": "session=evil"},
        )
        assert resp.status == 200
        assert resp.headers[lp.SOURCE_HEADER] == "live"
        assert await resp.json() == api_answer("api__jobs.json")
        assert seen[-1].path == "/api/jobs/" and seen[-1].query_string == "target=http://evil:1"
        assert "Cookie" not in seen[-1].headers
        # writes are not proxied
        resp = await client.post(f"/s/ray/raycluster-a/{SESSION_NAME}/api/jobs/", json={})
        assert resp.status == 405
        assert len(seen) == 1


async def test_unreachable_dashboard_serves_storage_marked_incomplete(kmock, kubernetes_clusters):
    add_raycluster(kmock, "raycluster-a", free_port())  # nothing listens there
    async with await proxy_client(kubernetes_clusters, [info()]) as client:
        resp = await client.get(f"/s/ray/raycluster-a/{SESSION_NAME}/api/jobs/")
        assert resp.status == 200
        assert await resp.json() == {"from": "storage"}
        assert resp.headers[lp.SOURCE_HEADER] == "storage"
        assert resp.headers[lp.INCOMPLETE_HEADER] == "live dashboard unreachable"


async def test_gone_cluster_and_dead_sessions_come_from_storage_complete(kmock, kubernetes_clusters, live_dashboard):
    server, seen = live_dashboard
    add_raycluster(kmock, "raycluster-a", server.port)
    sessions = [info(cluster="deleted-cluster"), info(state="dead")]
    async with await proxy_client(kubernetes_clusters, sessions) as client:
        for path in (f"/s/ray/deleted-cluster/{SESSION_NAME}/api/jobs/", f"/s/ray/raycluster-a/{SESSION_NAME}/api/jobs/"):
            resp = await client.get(path)
            assert await resp.json() == {"from": "storage"}, path
            assert lp.INCOMPLETE_HEADER not in resp.headers
    assert seen == []
    assert (await kubernetes_clusters.view("ray", "deleted-cluster")) == lp.ClusterView(exists=False)


async def test_without_kubernetes_a_live_session_is_served_from_storage_incomplete():
    async with await proxy_client(None, [info()]) as client:
        resp = await client.get(f"/s/ray/raycluster-a/{SESSION_NAME}/api/jobs/")
        assert await resp.json() == {"from": "storage"}
        assert "no Kubernetes access" in resp.headers[lp.INCOMPLETE_HEADER]


async def test_setup_without_kubernetes_serves_every_session_from_storage(monkeypatch, tmp_path):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    sessions = [info()]

    async def list_sessions():
        return sessions

    async def from_storage(request):
        return web.json_response({"from": "storage"})

    app = web.Application()
    app.router.add_get("/s/{namespace}/{cluster}/{session}/api/jobs/", from_storage)
    store = Store(f"file://{tmp_path / 'store'}")
    proxy = lp.setup_live_proxy(app, list_sessions, store)
    assert proxy.clusters is None
    with pytest.raises(RuntimeError):
        lp.setup_live_proxy(web.Application(), list_sessions, store, kubernetes=True)
    async with TestClient(TestServer(app)) as client:
        resp = await client.get(f"/s/ray/raycluster-a/{SESSION_NAME}/api/jobs/")
        assert await resp.json() == {"from": "storage"}
        assert "no Kubernetes access" in resp.headers[lp.INCOMPLETE_HEADER]


async def test_sessions_of_gone_or_restarted_clusters_are_marked_dead_in_the_index(kmock, kubernetes_clusters, tmp_path):
    store = Store(f"file://{tmp_path / 'store'}")
    index = SessionIndex(store)
    refs = {
        "running": SessionRef("ray", "raycluster-a", NEWER_SESSION),
        "restarted": SessionRef("ray", "raycluster-a", SESSION_NAME),
        "deleted": SessionRef("ray", "deleted-cluster", SESSION_NAME),
    }
    for ref in refs.values():
        await index.append(ref, IndexKind.LIVE, start_ms=layout.session_start_ms(ref.session))
    add_raycluster(kmock, "raycluster-a", free_port())
    marked = await lp.mark_gone_sessions(store, await index.sessions(), kubernetes_clusters)
    assert sorted(s.ref for s in marked) == sorted([refs["restarted"], refs["deleted"]])
    states = {s.ref: s for s in await SessionIndex(store).sessions()}
    assert states[refs["running"]].state == "live"
    assert states[refs["deleted"]].state == "dead" and "RayCluster gone" in states[refs["deleted"]].dead_reason
    assert states[refs["restarted"]].state == "dead"
    # idempotent: nothing more to mark
    assert await lp.mark_gone_sessions(store, list(states.values()), kubernetes_clusters) == []


# ---- through the real server (create_app), Kubernetes found from a kubeconfig -------------------------

async def test_server_proxies_live_sessions_and_marks_gone_ones_dead(kmock, live_dashboard, tmp_path, monkeypatch):
    server, seen = live_dashboard
    use_kmock_kubeconfig(kmock, tmp_path, monkeypatch)
    add_raycluster(kmock, "raycluster-a", server.port)
    store_url = f"file://{tmp_path / 'store'}"
    store = Store(store_url)
    running = await write_fixture_session(store, fixture_ref("ray", "raycluster-a"), dead=False)
    gone = await write_fixture_session(store, fixture_ref("ray", "deleted-cluster"), dead=False)
    settings = Settings(storage=store_url, index_refresh_interval=0.2)
    public, internal = create_app(settings)
    async with TestClient(TestServer(public)) as client:
        resp = await client.get(f"/s/ray/raycluster-a/{running.session}/api/jobs/")
        assert resp.headers[lp.SOURCE_HEADER] == "live", resp.headers.get(lp.INCOMPLETE_HEADER)
        assert await resp.json() == api_answer("api__jobs.json")
        # the UI itself comes from the live head too (its Ray version's own build), once under the slash
        resp = await client.get(f"/s/ray/raycluster-a/{running.session}", allow_redirects=False)
        assert resp.status == 302 and resp.headers["Location"] == f"{running.session}/"
        resp = await client.get(f"/s/ray/raycluster-a/{running.session}/")
        page = await resp.text()
        assert resp.headers[lp.SOURCE_HEADER] == "live" and "ETag" not in resp.headers
        # the head's own page, with the banner saying it is live and proxied (taken off: the head's page)
        assert without_additions(page.encode()).decode() == LIVE_INDEX
        config = json.loads(re.search(r"const CONFIG = (\{.*?\});", page).group(1))
        assert (config["source"], config["statusPath"]) == ("live", "rayhistory/status?load=0")
        assert f"<title>Ray Dashboard · raycluster-a / {running.session}</title>" in page
        # the banner's status is the server's own, never the head's, and loads nothing
        resp = await client.get(f"/s/ray/raycluster-a/{running.session}/rayhistory/status?load=0")
        status = await resp.json()
        assert status["index"]["state"] == "live" and status["ready"] is False and status["load_state"] != "loading"
        assert len(seen) == 2
        # the RayCluster of the other session is gone: served from storage, and marked dead in the index
        resp = await client.get(f"/s/ray/deleted-cluster/{gone.session}/api/jobs/")
        assert resp.status == 200 and resp.headers[lp.SOURCE_HEADER] == "storage"
        for _ in range(100):
            listing = await (await client.get("/clusters")).json()
            states = {s["cluster"]: s["state"] for s in listing["sessions"]}
            if states.get("deleted-cluster") == "dead":
                break
            await asyncio.sleep(0.1)
        assert states == {"raycluster-a": "live", "deleted-cluster": "dead"}
        assert len(seen) == 2


async def test_kubernetes_off_serves_live_sessions_from_storage_even_with_a_kubeconfig(
    kmock, live_dashboard, tmp_path, monkeypatch,
):
    server, seen = live_dashboard
    use_kmock_kubeconfig(kmock, tmp_path, monkeypatch)
    add_raycluster(kmock, "raycluster-a", server.port)
    store_url = f"file://{tmp_path / 'store'}"
    running = await write_fixture_session(Store(store_url), fixture_ref("ray", "raycluster-a"), dead=False)
    public, _ = create_app(Settings(storage=store_url, kubernetes="off"))
    async with TestClient(TestServer(public)) as client:
        resp = await client.get(f"/s/ray/raycluster-a/{running.session}/api/jobs/")
        assert resp.status == 200 and resp.headers[lp.SOURCE_HEADER] == "storage"
    assert seen == []


async def _raw_get(port: int, target: str) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request over a plain socket, with the request target written exactly as given."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        raw = await reader.read()
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in header_lines)}
    return int(status_line.split()[1]), headers, body


async def test_an_absolute_form_request_target_is_proxied_to_the_same_path(kmock, kubernetes_clusters, live_dashboard):
    """RFC 9112 3.2.2: a server must accept `GET http://host/path HTTP/1.1`; the upstream path is the path part,
    never the scheme and authority glued in front of it."""
    server, seen = live_dashboard
    add_raycluster(kmock, "raycluster-a", server.port)
    async with await proxy_client(kubernetes_clusters, [info()]) as client:
        port = client.server.port
        for target in (f"http://127.0.0.1:{port}/s/ray/raycluster-a/{SESSION_NAME}/api/jobs/?x=1",
                       f"http://evil.example/s/ray/raycluster-a/{SESSION_NAME}/api/jobs/?x=1",
                       f"/s/ray/raycluster-a/{SESSION_NAME}/api/jobs/?x=1"):
            status, headers, body = await _raw_get(port, target)
            assert status == 200, (target, body[:300])
            assert headers[lp.SOURCE_HEADER.lower()] == "live", target
            assert seen[-1].path == "/api/jobs/" and seen[-1].query_string == "x=1", (target, seen[-1].path_qs)
        assert len(seen) == 3


def post_events(url: str, body: bytes) -> int:
    request = urllib.request.Request(url + "/v1/events", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        return resp.status


async def test_storage_mode_serves_a_live_session_from_its_collectors_flushes_and_never_asks_the_head(
    kmock, live_dashboard, tmp_path, monkeypatch,
):
    """--live-sessions storage: the cluster runs and Kubernetes knows its head's dashboard, but every answer
    comes from what the real collector (a process, flushing every 0.3 s) wrote, and follows new flushes."""
    server, seen = live_dashboard
    use_kmock_kubeconfig(kmock, tmp_path, monkeypatch)
    add_raycluster(kmock, "raycluster-a", server.port)
    store_url = f"file://{tmp_path / 'store'}"
    (tmp_path / "ray").mkdir()
    ref = SessionRef("ray", "raycluster-a", SESSION_NAME)
    tasks = f"/s/{ref.tail}/api/v0/tasks?detail=1&limit=10000"
    with collector_process(store_url, tmp_path / "spool", tmp_path / "ray", namespace="ray",
                           cluster_name="raycluster-a", flush_interval=0.3, log_upload_interval=3600) as collector:
        for body in received_bodies():
            assert await asyncio.to_thread(post_events, collector.url, json.dumps(body).encode()) == 200
        # every body flushed (a first flush can hold only some of them) with the session's `live` index record
        await asyncio.to_thread(collector.wait_flushed)
        assert await SessionIndex(Store(store_url)).session(ref) is not None
        settings = Settings(storage=store_url, live_sessions="storage", live_reload_s=0.5, index_refresh_interval=0.2)
        public, _ = create_app(settings)
        async with TestClient(TestServer(public)) as client:
            async def task_ids() -> set[str]:
                resp = await client.get(tasks)
                assert resp.status == 200
                assert resp.headers[lp.SOURCE_HEADER] == "storage" and resp.headers[lp.INCOMPLETE_HEADER] == lp.FROM_STORAGE
                return {t["task_id"] for t in (await resp.json())["data"]["result"]["result"]}

            before = await task_ids()
            assert before  # the fixture's tasks, as flushed
            late = [line for line in gzip.decompress(late_task_batch(1)).splitlines() if line]
            assert await asyncio.to_thread(post_events, collector.url, b"[" + b",".join(late) + b"]") == 200
            for _ in range(200):  # the next flush, then the next reload (at most every 0.5 s)
                after = await task_ids()
                if late_task_id(1) in after:
                    break
                await asyncio.sleep(0.1)
            assert after == before | {late_task_id(1)}
            status = await (await client.get(f"/s/{ref.tail}/rayhistory/status")).json()
            assert status["state"] == "live" and status["reload_s"] == 0.5
            assert 0 < layout.now_ms() - status["loaded_at_ms"] < 30_000
            page = await (await client.get(f"/s/{ref.tail}/")).text()
            assert '"source": "storage"' in page  # the build's page and banner, not the head's
    assert seen == []  # the head was never asked anything
