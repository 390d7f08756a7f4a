"""`rayhistory import` against a real Ray 2.60 head on 127.0.0.1 (rayhistory/raystart.py), no collector.

The head runs the collector end-to-end workload (tasks that fail and retry, actors killed, restarted, left
alive, a placement group, a submitted job). `rayhistory import` (the real command, a subprocess) captures
its dashboard into a file:// store; the real history server then serves the imported session, and its
answers are compared with the live dashboard's answers of the same run by the ground-truth suite's
comparator and allow-list (tests/server/test_ground_truth.py). The browser test shows the banner of the
imported session, in Debian's Chromium.
"""

from __future__ import annotations

import fnmatch
import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from rayhistory import capture, raystart
from rayhistory.layout import SessionRef
from rayhistory.store import Store
from tests.conftest import TEST_OUTPUT
from tests.e2e.browser import (  # noqa: F401
    browser, running_server as browser_server, screenshot_on_failure, session_url, shot, show_failed_task,
)
from tests.server.fixture_store import running_server
from tests.server.test_ground_truth import diff, unexplained

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

WORKLOAD = Path(__file__).parent / "collector_workload.py"
NS, CLUSTER = "ray", "no-collector"
OUT = TEST_OUTPUT / "import_e2e"


def dashboard_get(base: str, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(base + path, timeout=60) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def run_import(storage: str, dashboard: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rayhistory", "import", "--dashboard", dashboard, "--namespace", NS,
         "--cluster", CLUSTER, "--storage", storage, "--log-format", "text", *extra],
        capture_output=True, text=True, timeout=300, env=raystart.base_process_env())


def live_answers(dashboard: str, summary: dict) -> dict[str, tuple[int, bytes]]:
    """The live dashboard's answers to every request the UI makes of this run (what the import asks, and more:
    the task page's filtered requests, a node's log listing, a file, a task's log)."""
    first = {r: dashboard_get(dashboard, r.url) for r in capture.FIXED}
    parsed = {r: capture.parse(body) for r, (status, body) in first.items() if status == 200}
    answers = {r.url: dashboard_get(dashboard, r.url) for r in capture.FIXED + tuple(capture.detail_requests(parsed, 10_000))}
    tasks = json.loads(answers["/api/v0/tasks?detail=1&limit=10000"][1])["data"]["result"]["result"]
    head = capture.alive_node_ids(parsed[capture.Request("nodes", (("view", "summary"),))], 10)[0]
    parent = next(t for t in tasks if t["job_id"] == summary["job_id"] and t["func_or_class_name"] == "parent"
                  and t["state"] == "FINISHED")
    extra = [f"/api/v0/tasks?detail=1&limit=1&filter_keys=task_id&filter_predicates=%3D&filter_values={t['task_id']}"
             for t in tasks[:5]]
    actors = json.loads(answers["/api/v0/actors?detail=1&limit=10000"][1])["data"]["result"]["result"]
    alive = next(a for a in actors if a["name"] == "alive_actor")
    extra += [LOG_LISTING.format(head), RAYLET_LOG.format(head), TASK_LOG.format(parent["task_id"]),
              ACTOR_LOG.format(alive["actor_id"])]
    answers.update({path: dashboard_get(dashboard, path) for path in extra})
    return answers


LOG_LISTING = "/api/v0/logs?node_id={}"
RAYLET_LOG = "/api/v0/logs/file?node_id={}&filename=raylet.out&lines=-1"
TASK_LOG = "/api/v0/logs/file?task_id={}&suffix=out"
ACTOR_LOG = "/api/v0/logs/file?actor_id={}&suffix=err"
# What differs between any two reads of the live dashboard, the import's among them (the comparison below only
# counts a field that differs from both the read before and the read after the import; these differ from both).
BETWEEN_READS = [
    (r"^/api/cluster_status", "/data/clusterStatus", "the autoscaler's report is stamped with the time it is read"),
    (r"^/logical/actors", "/data/actors/*/mem/*", "each read samples the actors' processes' memory anew"),
    (r"^/api/v0/cluster_events", "*", "Ray 2.60's head answers 500 here (it did to the import too); the server answers "
                                      "from the legacy event files the import stored, as for a recorded session"),
]


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """A head after the workload, imported; the live answers of the same run, read right after the import."""
    root = tmp_path_factory.mktemp("import")
    cluster = raystart.start(num_cpus=2)
    try:
        done = cluster.run_driver(WORKLOAD, args=("full", cluster.dashboard_url), timeout_s=300)
        summary = json.loads([ln for ln in done.stdout.splitlines() if ln.startswith("SUMMARY ")][-1][8:])
        storage = f"file://{root}/store"
        before = live_answers(cluster.dashboard_url, summary)
        result = run_import(storage, cluster.dashboard_url)
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "import-stderr.txt").write_text(result.stderr)
        assert result.returncode == 0, result.stderr[-3000:]
        report = json.loads(result.stdout.strip().splitlines()[-1])
        after = live_answers(cluster.dashboard_url, summary)
        yield {"storage": storage, "session": cluster.session_dir.name, "before": before, "after": after,
               "report": report, "stderr": result.stderr}
    finally:
        cluster.cleanup()


# first in the module: its head is stopped before the shared one starts (two at once crowd 2 cores)
async def test_unreachable_and_unauthorized_dashboards_are_clear_errors(tmp_path):
    """Nothing listening: exit 1 naming the URL; a token-mode head without the token: exit 1 naming the 401 and
    the flag that fixes it; with the token (--ray-auth-token-path) the import works."""
    storage = f"file://{tmp_path}/store"
    gone = run_import(storage, f"http://127.0.0.1:{raystart.free_port()}")
    assert gone.returncode == 1 and "cannot reach the Ray dashboard at http://127.0.0.1:" in gone.stderr
    cluster = raystart.start(num_cpus=1, auth="token")
    try:
        refused = run_import(storage, cluster.dashboard_url, "--max-log-files", "0")
        assert refused.returncode == 1, refused.stderr
        assert "answered 401" in refused.stderr and "--ray-auth-token" in refused.stderr
        ok = run_import(storage, cluster.dashboard_url, "--max-log-files", "0",
                        "--ray-auth-token-path", cluster.env["RAY_AUTH_TOKEN_PATH"])
        assert ok.returncode == 0, ok.stderr[-2000:]
        assert json.loads(ok.stdout.strip().splitlines()[-1])["imported"].endswith(cluster.session_dir.name)
    finally:
        cluster.cleanup()


def compare(path: str, live: tuple[int, bytes], ours: tuple[int, bytes]) -> list:
    """The differences of one answer that neither the ground-truth allow-list nor BETWEEN_READS explains."""
    def body(raw: bytes):
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode(errors="replace")
    found = diff(body(live[1]), body(ours[1])) + ([("", live[0], ours[0])] if live[0] != ours[0] else [])
    return [d for d in unexplained(path, found)
            if not any(re.search(p, path) and fnmatch.fnmatchcase(d[0], f) for p, f, _ in BETWEEN_READS)]


async def test_imported_session_answers_like_the_live_dashboard(imported):
    """Served from the capture, every answer of the UI's requests is the live dashboard's (the comparator and its
    allow-list decide); the task page's filtered request, never asked by the import, is answered from the
    captured list like Ray answers it; logs come from the stored files; the index says imported."""
    assert "import: session" in imported["stderr"] and "requests" in imported["stderr"]  # the progress lines
    assert imported["report"]["log_files"] > 10 and imported["report"]["answers"] > 40
    ref = SessionRef(NS, CLUSTER, imported["session"])
    store = Store(imported["storage"])
    compared, differences = 0, {}
    async with running_server(store, kubernetes="off") as (client, _, _state):
        for path, (status, live_body) in imported["after"].items():
            resp = await client.get(f"/s/{ref.tail}{path}")
            ours = await resp.read()
            if "/logs" in path:
                assert resp.status == status == 200, (path, resp.status, ours[:300])
                if "task_id=" in path:  # the task's byte range of its worker's file, found from the captured task
                    assert ours == live_body and b"asks two children" in ours
                elif "actor_id=" in path:  # its worker's file, found from the captured actor's node and pid
                    assert ours == live_body and b":actor_name:Counter" in ours
                elif "/logs/file" in path:  # the raylet may have written more since the import
                    assert live_body.startswith(ours) and len(ours) > 1000, path
                else:
                    assert json.loads(ours) == json.loads(live_body), path
                continue
            left = None
            for read in (imported["before"][path], (status, live_body)):
                fields = {f for f, _, _ in compare(path, read, (resp.status, ours))}
                left = fields if left is None else left & fields
            if left:
                differences[path] = sorted(left)[:10]
            compared += 1
        clusters = await (await client.get("/clusters")).json()
        status = await (await client.get(f"/s/{ref.tail}/rayhistory/status")).json()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "differences.json").write_text(json.dumps(differences, indent=1, default=str))
    assert differences == {}
    assert compared >= 40
    row = next(s for s in clusters["sessions"] if s["session"] == ref.session)
    assert row["imported"] is True and row["state"] == "dead"
    assert status["index"]["imported"] is True and status["index"]["imported_ms"] > 0


async def test_imported_session_in_the_browser(imported, browser):  # noqa: F811
    """The imported session's dashboard: the banner says imported and partial, a job's task table shows its failed
    task, the Logs tab opens a node's file; the picker says imported."""
    ref = SessionRef(NS, CLUSTER, imported["session"])
    async with browser_server(imported["storage"]) as base:
        page = await browser.new_page()
        async with screenshot_on_failure(page, "imported"):
            await page.goto(session_url(base, ref) + "#/jobs")
            banner = page.locator("#rayhistory-banner")
            await banner.locator(".rh-badge.imported").wait_for()
            text = await banner.inner_text()
            assert "imported" in text and "partial" in text and "no event history" in text
            assert ref.session in text
            await page.get_by_role("table").first.wait_for()
            await shot(page, "40-imported-session-jobs")
            # a job's task table: the job's captured task list, with the task that failed
            await page.goto(session_url(base, ref) + "#/jobs/01000000")
            await show_failed_task(page, "boom")
            await shot(page, "41-imported-session-failed-task")
            await page.goto(session_url(base, ref) + "#/actors")
            await page.get_by_text("detached_actor").first.wait_for()
            assert "DEAD" in await page.locator("tr", has_text="killed_actor").first.inner_text()
            # the Logs tab: the node was alive at the capture, its files were read through the log API
            await page.goto(session_url(base, ref) + "#/logs")
            await page.get_by_role("link", name="127.0.0.1").first.click()
            await page.get_by_role("link", name="raylet.out").click()
            await page.get_by_text("Per-worker process group cleanup is ENABLED").first.wait_for()
            await shot(page, "42-imported-session-log-file")
            await page.goto(base)
            row = page.locator("tr.session", has_text=ref.session)
            await row.locator(".badge.imported").wait_for()
            await shot(page, "43-picker-imported")
