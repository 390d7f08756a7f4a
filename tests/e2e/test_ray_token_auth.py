"""A real Ray 2.60 head with token authentication (RAY_AUTH_MODE=token, RAY_AUTH_TOKEN): the collector's head
poller and the server's live proxy send Ray's token, or every call is refused and the history loses the
head's endpoint answers (placement groups, submission jobs, serve state)."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from rayhistory import ray_token
from rayhistory.collector.dashboard_poll import DashboardPoller
from rayhistory.collector.metrics import CollectorMetrics
from rayhistory.index import SessionInfo
from rayhistory.layout import SessionRef
from rayhistory.server import live_proxy as lp
from rayhistory.store import Store
from tests.collector.storage_view import stored_endpoints
from rayhistory import raystart

pytestmark = [pytest.mark.slow]

@pytest.fixture(scope="module")
def head():
    cluster = raystart.start(auth="token", num_cpus=1)  # RAY_AUTH_MODE=token, a fresh token of its own
    try:
        yield cluster
    finally:
        cluster.stop()
        cluster.cleanup()


def version_status(url: str, headers: dict[str, str]) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url + "/api/version", headers=headers), timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_head_really_wants_the_token(head):
    assert version_status(head.dashboard_url, {}) == 401
    assert version_status(head.dashboard_url, ray_token.headers(head.auth_token)) == 200


async def test_the_head_poller_sends_ray_s_token(head, tmp_path):
    store = Store(f"file://{tmp_path}/store")
    metrics = CollectorMetrics()
    without = DashboardPoller(head.dashboard_url, store, "ray", "tok", "w1", metrics)
    assert not await without.poll_once()
    assert metrics.endpoint_polls.labels("version", "status_401")._value.get() == 1
    wrong = DashboardPoller(head.dashboard_url, store, "ray", "tok", "w1", CollectorMetrics(), ray_token=lambda: "x" * 64)
    assert not await wrong.poll_once()
    token_file = tmp_path / "token"
    token_file.write_text(head.auth_token + "\n")  # a mounted Secret, newline and all
    poller = DashboardPoller(head.dashboard_url, store, "ray", "tok", "w1", CollectorMetrics(),
                             ray_token=lambda: ray_token.resolve_token(token_path=str(token_file), environ={}))
    assert await poller.poll_once()
    session = head.session_dir.name
    stored = await stored_endpoints(store, SessionRef("ray", "tok", session))
    assert {"version", "jobs", "placement_groups", "cluster_metadata"} <= set(stored)


class Head:
    """The RayCluster as Kubernetes would name it: its dashboard is the real head."""

    def __init__(self, url: str):
        self.url = url

    async def view(self, namespace, name):
        return lp.ClusterView(exists=True, dashboard_url=self.url)


async def proxied(head, token: str | None) -> tuple[int, dict[str, str]]:
    session = head.session_dir.name
    sessions = [SessionInfo(namespace="ray", cluster="tok", session=session, state="live", start_ms=1)]

    async def list_sessions():
        return sessions

    async def from_storage(request):
        return web.json_response({"from": "storage"})

    proxy = lp.LiveProxy(Head(head.dashboard_url), lp.lookup_from_listing(list_sessions), timeout=10,
                         forward_authorization=False, ray_token=lambda: token)
    app = web.Application(middlewares=[proxy.middleware])
    app.router.add_route("*", "/s/{namespace}/{cluster}/{session}/api/version", from_storage)
    app.on_cleanup.append(lambda app: proxy.close())
    async with TestClient(TestServer(app)) as client:
        # the caller's own (Kubernetes) token is never what reaches Ray
        async with client.get(f"/s/ray/tok/{session}/api/version",
                              headers={"Authorization": "Bearer kubernetes-token"}) as resp:
            return resp.status, dict(resp.headers)


async def test_the_live_proxy_sends_ray_s_token_and_falls_back_to_storage_without_it(head):
    status, headers = await proxied(head, head.auth_token)
    assert status == 200 and headers[lp.SOURCE_HEADER] == "live"
    status, headers = await proxied(head, None)
    assert status == 200 and headers[lp.SOURCE_HEADER] == "storage"
    assert "Ray's token" in headers[lp.INCOMPLETE_HEADER]


def test_where_the_token_comes_from(tmp_path):
    path = tmp_path / "t"
    path.write_text("from-file\n")
    assert ray_token.resolve_token("explicit", str(path), {"RAY_AUTH_TOKEN": "env"}) == "explicit"
    assert ray_token.resolve_token("", str(path), {"RAY_AUTH_TOKEN": "env"}) == "from-file"
    assert ray_token.resolve_token("", "", {"RAY_AUTH_TOKEN": "env"}) == "env"
    assert ray_token.resolve_token("", "", {"RAY_AUTH_TOKEN_PATH": str(path)}) == "from-file"
    assert ray_token.resolve_token("", "", {}) is None
    with pytest.raises(ray_token.RayTokenError):
        ray_token.resolve_token("", str(tmp_path / "missing"), {})
    with pytest.raises(ray_token.RayTokenError):
        ray_token.resolve_token("two words", "", {})
