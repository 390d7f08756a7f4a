"""A dead session's Platform Events page, in a real browser: the Kubernetes Events the operator kept, and
the OOMKill it read from a deleted pod's status.

The fixture session (tests/server/fixture_store.py) is dead; its Kubernetes Events are kept by the
operator's own recorder (operator/platform_events.py) from core/v1 Events as a watch delivers them, into
the same file:// store. The recorder's one API call (a Pod GET) is the stub of
tests/operator/test_platform_events.py; the watch itself is tested on the real control plane
(test_k8s_operator.py). The history server, the unmodified Ray 2.60 UI and Debian's Chromium are real.
"""

from __future__ import annotations

import datetime as dt

import pytest

from rayhistory import layout
from rayhistory.operator import platform_events as pe
from rayhistory.operator.metrics import OperatorMetrics
from rayhistory.store import Store
from tests.e2e.browser import browser, running_server, screenshot_on_failure, session_url, shot  # noqa: F401
from tests.operator.test_platform_events import PodsOfOneCluster, k8s_event, oomkilled_pod
from tests.server.fixture_store import fixture_ref, write_fixture_session

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def stamp(session: str, seconds: int) -> str:
    ms = layout.session_start_ms(session) + seconds * 1000
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


async def test_the_platform_events_page_of_a_dead_session_shows_the_kept_events(browser, tmp_path):
    store_url = f"file://{tmp_path / 'store'}"
    store = Store(store_url)
    ref = await write_fixture_session(store, fixture_ref("ray", "demo"))
    bare = await write_fixture_session(store, fixture_ref("ray", "no-kubernetes"))
    demo = pe.InjectedCluster(ref.namespace, ref.cluster, "rayhistory-system/history")
    recorder = pe.PlatformEventRecorder(OperatorMetrics(), "operator1", 60.0, 2000, 1 << 20)
    kube = PodsOfOneCluster({"demo-head-abcde": "demo", "demo-gpu-worker-fghij": "demo"})
    for event in (
        k8s_event("e1", kind="RayCluster", name="demo", reason="CreatedHeadPod", type_="Normal", count=1,
                  message="Created head Pod ray/demo-head-abcde", last=stamp(ref.session, -20),
                  source={"component": "raycluster-controller"}),
        k8s_event("e2", name="demo-gpu-worker-fghij", reason="FailedScheduling", count=6, last=stamp(ref.session, 5),
                  message="0/3 nodes are available: 3 Insufficient nvidia.com/gpu."),
        k8s_event("e3", name="demo-head-abcde", reason="Evicted", count=1, last=stamp(ref.session, 40),
                  message="The node was low on resource: memory. Container ray-head was using 7Gi, request is 2Gi.",
                  source={"component": "kubelet"}),
        k8s_event("e4", name="demo-head-abcde", reason="BackOff", count=4, last=stamp(ref.session, 45),
                  message="Back-off restarting failed container ray-head in pod demo-head-abcde",
                  source={"component": "kubelet"}),
    ):
        event["metadata"]["namespace"] = event["involvedObject"]["namespace"] = ref.namespace
        assert await recorder.offer(kube, event, [demo], lambda c: store) == 1
    # the OOMKill the head's status showed when the operator deleted the pod (not an Event)
    oom = pe.container_terminations(oomkilled_pod(finished=stamp(ref.session, 50)), ref.cluster)
    assert recorder.add(store, ref.namespace, ref.cluster, oom) == 1
    assert await recorder.flush() == 5

    async with running_server(store_url) as base:
        page = await browser.new_page()
        async with screenshot_on_failure(page, "platform-events"):
            await page.goto(session_url(base, ref) + "#/overview")
            # the UI's HEAD probe said yes: its menu offers the page
            await page.get_by_role("link", name="Platform Events").first.click()
            table = page.locator("table")
            await table.get_by_text("FailedScheduling").wait_for()
            text = await table.inner_text()
            for expected in ("OOMKilled", "exit code 137", "Evicted", "BackOff", "CreatedHeadPod", "Insufficient nvidia.com/gpu",
                             "Pod/demo-head-abcde", "RayCluster/demo", "KUBERNETES/kubelet"):
                assert expected in text, (expected, text)
            rows = await table.locator("tbody tr").all_inner_texts()
            assert len(rows) == 5 and "OOMKilled" in rows[0] and "CreatedHeadPod" in rows[-1]  # newest first
            await page.get_by_text("5 events").wait_for()
            await shot(page, "21-platform-events-dead-session")

            # a session nothing was kept for (no operator): Ray's answer when platform events are off, and
            # the UI offers no such page
            await page.goto(session_url(base, bare) + "#/overview")
            await page.get_by_text("Cluster status and autoscaler").first.wait_for()
            await page.wait_for_load_state("networkidle")
            assert await page.get_by_role("link", name="Platform Events").count() == 0
