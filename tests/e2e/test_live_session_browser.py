"""A live session, in a real browser: the history server proxies it to the running Ray head's own dashboard,
or, with --live-sessions storage, answers it from what its collectors flushed without asking the head.

A real Ray 2.60 head on 127.0.0.1 (tests/e2e/raystart.py), a real `rayhistory server`, Debian's Chromium.
Kubernetes is kmock's emulator over HTTP (no real API server installs here): it holds the RayCluster and its
head Service, whose cluster IP is 127.0.0.1 and whose `dashboard` port is the head's dashboard port, and
the server finds it through a kubeconfig, as it would with in-cluster credentials.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import urllib.request

import pytest

from rayhistory import layout
from rayhistory.index import SessionIndex
from rayhistory.layout import IndexKind, SessionRef
from rayhistory.server import live_proxy as lp
from rayhistory.store import Store
from rayhistory import raystart
from tests.kube_api import use_kmock_kubeconfig
from tests.conftest import HEAD_NODE_ID
from tests.e2e.browser import browser, running_server, screenshot_on_failure, session_url, shot  # noqa: F401
from tests.server.fixture_store import fixture_ref, late_task_batch, write_fixture_session
from tests.server.test_live_proxy import add_raycluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture
def ray_head():
    cluster = raystart.start(num_cpus=1)
    try:
        yield cluster
    finally:
        cluster.cleanup()


def fetch(url: str) -> tuple[dict, bytes]:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return dict(resp.headers), resp.read()


async def test_live_session_is_the_running_clusters_own_dashboard(ray_head, kmock, browser, tmp_path, monkeypatch):  # noqa: F811
    dashboard_port = ray_head.ports["dashboard-port"]
    add_raycluster(kmock, "live-cluster", dashboard_port)
    use_kmock_kubeconfig(kmock, tmp_path, monkeypatch)

    # the collector's `live` index record for the head's session (what it writes on first sight)
    store_url = f"file://{tmp_path / 'store'}"
    ref = SessionRef("ray", "live-cluster", ray_head.session_dir.name)
    await SessionIndex(Store(store_url)).append(ref, IndexKind.LIVE, start_ms=layout.session_start_ms(ref.session))

    async with running_server(store_url) as base:
        # the server runs in this event loop: fetch from a thread
        headers, body = await asyncio.to_thread(fetch, session_url(base, ref) + "api/version")
        assert headers[lp.SOURCE_HEADER] == "live"
        assert json.loads(body)["ray_version"] == "2.60.0"
        page = await browser.new_page()
        async with screenshot_on_failure(page, "live-session"):
            await page.goto(session_url(base, ref) + "#/cluster")
            # the live node, ALIVE: only the running head can say that
            await page.locator("tr", has_text="127.0.0.1").first.wait_for()
            assert "ALIVE" in await page.locator("tr", has_text="127.0.0.1").first.inner_text()
            # the head's own page carries the banner: which session, live, proxied
            banner = page.locator("#rayhistory-banner")
            await banner.get_by_text("proxied").wait_for()
            text = await banner.inner_text()
            assert "live-cluster" in text and ref.session in text and "live" in text, text
            await shot(page, "live-01-cluster")


async def test_live_session_from_storage_follows_new_flushes_and_says_how_fresh(kmock, browser, tmp_path, monkeypatch):  # noqa: F811
    """--live-sessions storage: the RayCluster runs (Kubernetes names its head's dashboard: a port where nothing
    may answer, and nothing is asked), the session is live, and the UI shows what the collectors flushed."""
    head = socket.socket()
    head.bind(("127.0.0.1", 0))
    head.listen(8)  # a "head" that would see any connection the server made
    head.setblocking(False)
    port = head.getsockname()[1]
    add_raycluster(kmock, "busy", port)
    use_kmock_kubeconfig(kmock, tmp_path, monkeypatch)
    store_url = f"file://{tmp_path / 'store'}"
    store = Store(store_url)
    ref = await write_fixture_session(store, fixture_ref("ray", "busy"), dead=False)
    # stale_after=0: the fixture's flushes are from long ago, and this cluster is running
    async with running_server(store_url, live_sessions="storage", live_reload_s=1.0, stale_after=0) as base:
        page = await browser.new_page()
        async with screenshot_on_failure(page, "live-from-storage"):
            await page.goto(session_url(base, ref) + "#/jobs/01000000")
            total = page.locator("p", has_text=re.compile(r"^Total: \d+$"))
            await total.wait_for()
            tasks_before = int((await total.inner_text()).split()[-1])
            banner = page.locator("#rayhistory-banner")
            await banner.locator("[data-rh=freshness]").wait_for()
            freshness = await banner.locator("[data-rh=freshness]").inner_text()
            assert "from storage as of" in freshness and "reloaded at most every 1 s" in freshness, freshness
            assert await banner.locator(".rh-badge.live").count() == 1
            await shot(page, "live-02-from-storage-banner")
            # a new flush of the collectors: the task appears after the next reload
            await store.put(layout.event_batch_key(ref, HEAD_NODE_ID, "collector9", 1), late_task_batch(1))
            await page.goto(session_url(base, ref) + "#/jobs/01000000")
            await page.locator("p", has_text=f"Total: {tasks_before + 1}").wait_for()
            await shot(page, "live-03-from-storage-new-flush")
    try:
        head.accept()
        raise AssertionError("the server connected to the head's dashboard")
    except BlockingIOError:
        pass  # nobody knocked
    finally:
        head.close()
