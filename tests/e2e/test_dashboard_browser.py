"""The unmodified Ray 2.60 Dashboard, served by the history server for a dead session, in a real browser.

Headless Debian Chromium driven by playwright (tests/e2e/browser.py). The history server runs in this
process on free ports of 127.0.0.1, over a file:// store holding the fixture session written exactly as the
collector writes it (tests/server/fixture_store.py), or what `make demo` records. Screenshots go to
test-output/screenshots/ for a person to look at.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from rayhistory import layout
from rayhistory.index import SessionIndex
from rayhistory.layout import IndexKind, SessionRef
from rayhistory.store import Store
from tests.conftest import HEAD_NODE_ID, SESSION_NAME
from tests.e2e.browser import (browser, running_server, screenshot_on_failure, session_url, shot,  # noqa: F401
                               show_failed_task)
from tests.server.fixture_store import fixture_ref, write_fixture_session, write_index

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
async def history_server(tmp_path):
    """The server over a store holding the fixture session twice, under two clusters."""
    store_url = f"file://{tmp_path / 'store'}"
    store = Store(store_url)
    ref = await write_fixture_session(store, fixture_ref("ray", "demo"))
    other = await write_fixture_session(store, fixture_ref("ray", "other-cluster"))
    async with running_server(store_url) as base:
        yield base, ref, other


async def test_picker_enters_the_dead_session_and_every_page_shows_its_data(history_server, browser, tmp_path):
    base, ref, other = history_server
    page = await browser.new_page()
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))

    async with screenshot_on_failure(page, "picker-and-pages"):
        # -- the picker: every session, newest first, a search box, entering one --
        await page.goto(base)
        rows = page.locator("tr.session")
        await rows.first.wait_for()
        assert await rows.count() == 2
        assert await page.locator("tr.session .badge.dead").count() == 2
        await page.fill("#search", "other-cluster")
        await page.wait_for_function("document.querySelectorAll('tr.session').length === 1")
        await page.fill("#search", "")
        await page.wait_for_function("document.querySelectorAll('tr.session').length === 2")
        await shot(page, "01-picker")

        # a cold session: first the loading page, which polls the status endpoint, then the dashboard
        async with page.expect_response(session_url(base, ref)) as first_answer:
            await page.locator("tr.session", has_text="demo").get_by_role("link", name=SESSION_NAME).click()
        assert "Loading the session" in await (await first_answer.value).text()
        await page.wait_for_url(session_url(base, ref) + "#/overview")
        assert any(u.startswith(session_url(base, ref) + "rayhistory/status") for u in requests)
        await page.get_by_text("Cluster status and autoscaler").first.wait_for()
        await shot(page, "02-overview")

        # -- jobs: the driver job and both submitted jobs --
        await page.goto(session_url(base, ref) + "#/jobs")
        await page.get_by_text("fixture_submitted_job_ok").first.wait_for()
        await page.get_by_text("01000000").first.wait_for()
        await shot(page, "03-jobs")

        # -- one job: its task table with the failed task --
        await page.goto(session_url(base, ref) + "#/jobs/01000000")
        await show_failed_task(page, "boom")
        await shot(page, "04-job-failed-task")

        # -- actors: the dead ones and why they died --
        await page.goto(session_url(base, ref) + "#/actors")
        await page.get_by_text("killed_actor").first.wait_for()
        await page.get_by_text("bad_init_actor").first.wait_for()
        killed = page.locator("tr", has_text="killed_actor").first
        assert "DEAD" in await killed.inner_text()
        await shot(page, "05-actors")
        # the dead actor's own page says why it died
        await killed.get_by_role("link", name="91bb2749d7f8867082bb29c701000000").click()
        await page.get_by_text("killed by `ray.kill`").first.wait_for()
        await shot(page, "06-dead-actor")

        # -- the cluster's node --
        await page.goto(session_url(base, ref) + "#/cluster")
        node_row = page.locator("tr", has_text="127.0.0.1").first
        await node_row.wait_for()
        assert HEAD_NODE_ID[:8] in await page.content()
        await shot(page, "07-cluster-node")

        # -- log files: a submitted job's driver log on its page, and the node's files in the log viewer --
        await page.goto(session_url(base, ref) + "#/jobs/fixture_submitted_job_ok")
        await page.get_by_text("job result: 30").first.wait_for()
        await shot(page, "08-job-driver-log")
        # Ray's Logs tab lists only ALIVE nodes, so for a dead session the file list is reached by node id
        # (the link a bookmark or the docs give): it lists the stored files, and one opens in the viewer
        await page.goto(session_url(base, ref) + f"#/logs/?nodeId={HEAD_NODE_ID}")
        await page.get_by_role("link", name="raylet.out").click()
        await page.get_by_text("Per-worker process group cleanup is ENABLED").first.wait_for()
        await shot(page, "09-log-file")

        # -- the job's timeline: the "Download trace file" button saves the Chrome trace --
        await page.goto(session_url(base, ref) + "#/jobs/01000000")
        async with page.expect_download() as download_info:
            await page.get_by_text("Download trace file").first.click()
        download = await download_info.value
        trace_path = tmp_path / "timeline.json"
        await download.save_as(trace_path)
        trace = json.loads(trace_path.read_text())
        # a Chrome trace with the job's task spans, the failed one included
        assert {"__main__.square", "__main__.boom", "task:execute"} <= {e.get("name") for e in trace}

    # every request the dashboard made stayed under this session's prefix (or the picker's own)
    ours = [u for u in requests if u.startswith(base)]
    strays = [u for u in ours if not u.startswith(session_url(base, ref)) and u not in (base, base + "clusters?limit=200")]
    assert strays == []


async def test_two_tabs_show_two_sessions_at_once(history_server, browser):
    base, ref, other = history_server
    tabs = {}
    for r in (ref, other):
        page = await browser.new_page()
        seen: list[str] = []
        page.on("request", lambda req, seen=seen: seen.append(req.url))
        tabs[r] = (page, seen)
    # both open at the same time, each on its own session
    await asyncio.gather(*(page.goto(session_url(base, r) + "#/actors") for r, (page, _) in tabs.items()))
    for r, (page, seen) in tabs.items():
        await page.get_by_text("killed_actor").first.wait_for()
        api_calls = [u for u in seen if "/logical/actors" in u]
        assert api_calls and all(u.startswith(session_url(base, r)) for u in api_calls), api_calls
    # a shared link with a #/route opens that route
    page, _ = tabs[other]
    await page.goto(session_url(base, other) + "#/jobs/01000000")
    await page.get_by_text("Task Table").first.wait_for()
    await shot(page, "10-second-tab-job")
    # KubeRay's entry point still works, and `latest` picks the cluster's newest session
    await page.goto(f"{base}enter_cluster/{other.namespace}/{other.cluster}/latest")
    await page.wait_for_url(session_url(base, other) + "#/overview")


@pytest.fixture
async def demo_session_server(tmp_path):
    """What `make demo` records (a real Ray 2.60 head, the collector, the sample workload), served like the demo.

    Run as a user who once ran a local `ray.init()` (~/.ray/auth_token exists) and exports RAY_AUTH_MODE=token:
    the demo's Ray has its own explicit auth setup, so neither breaks it."""
    workdir = tmp_path / "demo"
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("a-token-of-the-users-own")
    env = {**os.environ, "HOME": str(home), "RAY_AUTH_MODE": "token"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(REPO / "scripts" / "demo.py"), "--workdir", str(workdir), "--no-serve",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
    )
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), 240)
    finally:
        if proc.returncode is None:  # timed out: SIGTERM makes the demo stop Ray and the collector it started
            proc.terminate()
            await proc.wait()
    assert proc.returncode == 0, output.decode()[-5000:]
    store_url = f"file://{workdir / 'store'}"
    sessions = await SessionIndex(Store(store_url)).sessions()
    assert [s.state for s in sessions] == ["dead"]
    async with running_server(store_url) as base:
        yield base, sessions[0].ref


async def test_demo_session_in_the_browser(demo_session_server, browser):
    base, ref = demo_session_server
    page = await browser.new_page()
    async with screenshot_on_failure(page, "demo"):
        await page.goto(base)
        await page.locator("tr.session", has_text=ref.session).get_by_role("link").click()
        await page.wait_for_url(session_url(base, ref) + "#/overview")
        await page.goto(session_url(base, ref) + "#/jobs")
        await page.get_by_text("demo_submitted_job").first.wait_for()
        await shot(page, "demo-01-jobs")
        await page.goto(session_url(base, ref) + "#/actors")
        killed = page.locator("tr", has_text="killed_actor").first
        await killed.wait_for()
        assert "DEAD" in await killed.inner_text()
        await page.locator("tr", has_text="bad_init_actor").first.wait_for()
        await shot(page, "demo-02-actors")
        # the driver's job (its entrypoint ran the workload): the failed task
        await page.goto(session_url(base, ref) + "#/jobs")
        await page.locator("tr", has_text="--run-workload").get_by_role("link").first.click()
        await show_failed_task(page, "boom")
        await shot(page, "demo-03-failed-task")


async def test_picker_pages_through_every_session_and_searches_them_all(browser, tmp_path):
    """No cap: 450 sessions show 200 at a time, and a search finds the oldest one beyond the first page."""
    store_url = f"file://{tmp_path / 'store'}"
    store = Store(store_url)
    refs = [SessionRef("team-a" if i % 2 else "team-b", f"cluster-{i % 5}",
                       f"session_2026-01-01_{i // 60:02d}-{i % 60:02d}-00_000000_{i}") for i in range(450)]
    await asyncio.gather(*(write_index(store, ref, IndexKind.LIVE, layout.session_start_ms(ref.session)) for ref in refs))
    async with running_server(store_url) as base:
        page = await browser.new_page()
        async with screenshot_on_failure(page, "picker-paging"):
            await page.goto(base)
            rows = page.locator("tr.session")
            await page.wait_for_function("document.querySelectorAll('tr.session').length === 200")
            # newest first
            assert await rows.first.get_attribute("data-session") == refs[-1].session
            await page.click("#more")
            await page.wait_for_function("document.querySelectorAll('tr.session').length === 400")
            await page.fill("#search", f"{refs[0].session}")
            await page.wait_for_function("document.querySelectorAll('tr.session').length === 1")
            assert await rows.first.get_attribute("data-session") == refs[0].session
            assert await page.locator("#count").inner_text() == "1 of 450 sessions"


async def test_banner_says_which_session_it_is_and_offers_its_nodes_logs(history_server, browser):
    """The context banner: namespace, cluster, session, times, dead and complete, the way back, the shareable
    URL, a per-session title; the dead session's nodes' logs from the banner (Ray's Logs tab lists only ALIVE
    nodes); a 404 page with a way back."""
    base, ref, other = history_server
    page = await browser.new_page()
    async with screenshot_on_failure(page, "banner"):
        await page.goto(session_url(base, ref) + "#/jobs")
        banner = page.locator("#rayhistory-banner")
        await banner.get_by_text("dead").first.wait_for()
        await banner.get_by_text("complete").first.wait_for()
        text = await banner.inner_text()
        for expected in ("ray", "demo", ref.session, "started", "ended", "Ray History"):
            assert expected in text, (expected, text)
        await page.wait_for_function(f"document.title.startsWith('Jobs') && document.title.endsWith('{ref.session}')")
        assert await banner.locator("a[data-rh=url]").get_attribute("href") == session_url(base, ref)
        await shot(page, "11-banner-jobs")

        # the Logs tab: Ray lists no dead node; the banner's node links open the node's files
        await page.goto(session_url(base, ref) + "#/logs")
        node_link = banner.locator(f"a[data-node-id='{HEAD_NODE_ID}']")
        await node_link.wait_for()
        assert "(head)" in await node_link.inner_text()
        await node_link.click()
        await page.get_by_role("link", name="raylet.out").wait_for()
        await shot(page, "12-banner-node-logs")

        # back to the picker
        await banner.get_by_role("link", name="Ray History").click()
        await page.wait_for_url(base)
        await page.locator("tr.session").first.wait_for()

        # a session that does not exist: a page in the picker's style, with the way back
        await page.goto(f"{base}s/ray/nowhere/{ref.session}/")
        await page.get_by_text("404").first.wait_for()
        await shot(page, "13-not-found")
        await page.get_by_role("link", name="Back to all sessions").click()
        await page.wait_for_url(base)


async def test_serve_metrics_cluster_and_node_pages_show_no_errors_nan_or_invalid_dates(history_server, browser):
    """Serve says "not started" and metrics "not configured" without a failed request or an error popup;
    the Cluster and node pages show what the node definitions know, no NaN / Invalid Date."""
    base, ref, other = history_server
    page = await browser.new_page()
    failed: list[str] = []
    page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    async with screenshot_on_failure(page, "no-errors"):
        await page.goto(session_url(base, ref) + "#/serve")
        await page.get_by_text("Serve not started").first.wait_for()
        assert not await page.get_by_text("AxiosError").count()
        await shot(page, "14-serve-not-running")
        await page.goto(session_url(base, ref) + "#/overview")
        await page.get_by_text("Cluster status and autoscaler").first.wait_for()
        await shot(page, "15-overview-no-metrics")
        await page.goto(session_url(base, ref) + "#/cluster")
        await page.locator("tr", has_text="127.0.0.1").first.wait_for()
        await page.wait_for_load_state("networkidle")
        body = await page.locator("body").inner_text()
        await shot(page, "16-cluster-nodes")
        bad = [w for w in ("NaN", "Invalid Date", "0/ 0") if w in body]
        await page.goto(session_url(base, ref) + f"#/cluster/nodes/{HEAD_NODE_ID}")
        await page.get_by_text(HEAD_NODE_ID).first.wait_for()
        await page.wait_for_load_state("networkidle")
        node_body = await page.locator("body").inner_text()
        await shot(page, "17-node-page")
        bad += [f"node page: {w}" for w in ("NaN", "Invalid Date", "0/ 0") if w in node_body]
        assert bad == [], bad
    assert [f for f in failed if "serve" in f or "grafana" in f or "prometheus" in f] == []


async def test_picker_groups_by_cluster_keeps_filters_in_the_url_and_shows_failures_and_stale(browser, tmp_path):
    store_url = f"file://{tmp_path / 'store'}"
    store = Store(store_url)
    ref = await write_fixture_session(store, fixture_ref("ray", "demo"))
    await write_fixture_session(store, fixture_ref("ray", "other-cluster"))
    stuck = await write_fixture_session(store, fixture_ref("team-b", "stuck"), dead=False)  # last write: long ago
    async with running_server(store_url) as base:
        page = await browser.new_page()
        async with screenshot_on_failure(page, "picker-groups"):
            # a loaded session lists its failures
            await page.goto(session_url(base, ref) + "#/overview")
            await page.get_by_text("Cluster status and autoscaler").first.wait_for()
            await page.goto(base)
            await page.wait_for_function("document.querySelectorAll('tr.session').length === 3")
            groups = await page.locator("tr.group").evaluate_all("rows => rows.map(r => r.dataset.cluster)")
            assert sorted(groups) == ["ray/demo", "ray/other-cluster", "team-b/stuck"]
            demo_row = page.locator("tr.session", has_text="demo").first
            assert "1 job" in await demo_row.inner_text() and "task" in await demo_row.inner_text()
            stuck_row = page.locator("tr.session", has_text="stuck").first
            assert "stale" in await stuck_row.locator(".badge.stale").inner_text()
            await shot(page, "18-picker-groups")
            # filters go into the URL; the URL brings them back
            await page.fill("#search", "other")
            await page.select_option("#state", "dead")
            await page.wait_for_function("document.querySelectorAll('tr.session').length === 1")
            assert "q=other" in page.url and "state=dead" in page.url
            shared = page.url
            other_page = await browser.new_page()
            await other_page.goto(shared)
            await other_page.wait_for_function("document.querySelectorAll('tr.session').length === 1")
            assert await other_page.input_value("#search") == "other"
            assert await other_page.input_value("#state") == "dead"
            await shot(other_page, "19-picker-filter-in-url")
            # the stuck session's banner says it is stale
            await page.goto(session_url(base, stuck) + "#/jobs")
            await page.locator("#rayhistory-banner .rh-badge.stale").wait_for()
            await shot(page, "20-banner-stale")


async def test_a_session_whose_tasks_are_on_local_disk_shows_its_tasks_and_timeline(browser, tmp_path):
    """A replica whose bound the session exceeds (tasks_on_disk_above_bytes=1) builds it from raw, then serves
    it from the snapshot it wrote with the tasks on local disk (server/disk_tasks.py): the job's task table
    finds the failed task, and the timeline downloads, as from memory."""
    store_url = f"file://{tmp_path / 'store'}"
    ref = await write_fixture_session(Store(store_url), fixture_ref("ray", "demo"))
    spill_dir = tmp_path / "spill"
    spill_dir.mkdir()
    async with running_server(store_url, tasks_on_disk_above_bytes=1, task_spill_dir=str(spill_dir)) as base:
        page = await browser.new_page()
        async with screenshot_on_failure(page, "tasks-on-disk"):
            await page.goto(session_url(base, ref) + "#/jobs/01000000")
            await show_failed_task(page, "boom")
            await shot(page, "20-tasks-on-disk-job-failed-task")
            async with page.expect_download() as download_info:
                await page.get_by_text("Download trace file").first.click()
            trace_path = tmp_path / "timeline.json"
            await (await download_info.value).save_as(trace_path)
            assert {"__main__.square", "__main__.boom"} <= {e.get("name") for e in json.loads(trace_path.read_text())}
        status = await page.request.get(session_url(base, ref) + "rayhistory/status")
        assert (await status.json())["tasks_on_disk"] is True
