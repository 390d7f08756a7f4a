"""The image from deploy/Dockerfile: each part starts from it, the server serves a real recorded session with
the dashboard UI built in (Ray itself not installed), the collector accepts a real batch and flushes it on
SIGTERM. Containers use the host network and listen on 127.0.0.1 only."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import urllib.request

import pytest

from rayhistory.store import Store
from scripts import image
from tests.collector.storage_view import session_info, stored_event_lines
from tests.conftest import FIXTURES, HEAD_NODE_ID, SESSION_NAME, free_port, received_bodies
from tests.image.conftest import container, run, shared_dir
from tests.server.fixture_store import fixture_ref, write_fixture_session
from tests.ui_page import without_additions

pytestmark = pytest.mark.slow


def get(url: str, timeout: float = 130) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), resp.read()


@pytest.mark.parametrize("part", ["", "collector", "server", "operator", "mark-dead"])
def test_each_part_starts_from_the_image(image_name, part):
    out = run(image_name, *([part] if part else []), "--help")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: rayhistory"), out.stdout
    if part:
        assert "--storage" in out.stdout


def test_non_root_no_compiler_no_test_packages_ui_inside(image_name):
    probe = (
        "import importlib.util as u, json, os, shutil; "
        f"print(json.dumps([os.getuid(), [m for m in {image.TEST_ONLY!r} if u.find_spec(m)], "
        f"[c for c in {image.COMPILERS!r} if shutil.which(c)], os.environ['RAYHISTORY_DASHBOARD_DIR'], "
        "sorted(os.listdir(os.environ['RAYHISTORY_DASHBOARD_DIR']))]))"
    )
    out = run(image_name, "-c", probe, entrypoint="python")
    assert out.returncode == 0, out.stderr
    uid, test_only, compilers, ui_dir, ui_files = json.loads(out.stdout)
    assert uid == 10001
    # numeric, so that the kubelet can check runAsNonRoot: true (the manifests ask for it)
    user = image.podman("image", "inspect", "--format", "{{.Config.User}}", image_name, capture=True).stdout.strip()
    assert user == "10001"
    assert test_only == [] and compilers == []
    assert {"index.html", "static", "RAY_VERSION"} <= set(ui_files), ui_files
    # the operator's imports resolve without the kubernetes client's asyncio copy the Dockerfile leaves out
    out = run(image_name, "-c", "import rayhistory.operator.main, rayhistory.server.app, rayhistory.collector.main",
              entrypoint="python")
    assert out.returncode == 0, out.stderr


def test_server_serves_a_recorded_session_and_its_dashboard(image_name, tmp_path):
    store_dir = shared_dir(tmp_path / "store")
    ref = asyncio.run(write_fixture_session(Store(f"file://{store_dir}"), fixture_ref()))
    for path in store_dir.rglob("*"):
        path.chmod(0o777 if path.is_dir() else 0o666)  # the server writes its compacted snapshot back
    port, internal = free_port(), free_port()
    args = ["server", "--storage", "file:///store", "--host", "127.0.0.1", "--port", str(port),
            "--internal-port", str(internal), "--prewarm-token", "image-test", "--kubernetes", "off",
            "--log-format", "text"]
    with container(image_name, args, {store_dir: "/store"}, read_only=True) as server:
        base = f"http://127.0.0.1:{port}"
        server.wait_ready(base + "/clusters")
        status, ctype, body = get(base + "/")
        assert status == 200 and ctype.startswith("text/html")
        status, _, body = get(base + "/clusters")
        sessions = json.loads(body)["sessions"]
        assert [(s["namespace"], s["cluster"], s["session"], s["state"]) for s in sessions] == [
            ("ray", "demo", SESSION_NAME, "dead")]
        prefix = f"{base}/s/{ref.namespace}/{ref.cluster}/{ref.session}"
        # an API call loads the session (the request waits for the load), then the UI is ready at once
        status, _, body = get(prefix + "/api/v0/tasks?limit=10000")
        assert status == 200, body[:300]
        tasks = json.loads(body)["data"]["result"]
        assert tasks["total"] > 0 and tasks["result"], tasks
        status, ctype, index_html = get(prefix + "/")
        assert status == 200 and ctype.startswith("text/html")
        assert without_additions(index_html) == read_ui_index(image_name)  # the build's page, banner aside
        script = re.search(rb'src="\.?/?(static/js/main\.[0-9a-f]+\.js)"', index_html)
        assert script, index_html[:500]
        status, ctype, js = get(f"{prefix}/{script.group(1).decode()}")
        assert status == 200 and "javascript" in ctype and len(js) > 100_000
        assert server.running(), server.logs()
        assert server.stop() == 0, server.logs()


def read_ui_index(image_name: str) -> bytes:
    out = run(image_name, "-c", "import os, sys; sys.stdout.write(open(os.path.join("
              "os.environ['RAYHISTORY_DASHBOARD_DIR'], 'index.html')).read())", entrypoint="python")
    assert out.returncode == 0, out.stderr
    return out.stdout.encode()


def test_collector_accepts_a_real_batch_and_flushes_it_on_sigterm(image_name, tmp_path):
    ray_root = shared_dir(tmp_path / "ray")
    shutil.copytree(FIXTURES / "session" / SESSION_NAME, ray_root / SESSION_NAME)
    for path in ray_root.rglob("*"):
        path.chmod(0o777 if path.is_dir() else 0o666)
    store_dir, spool_dir = shared_dir(tmp_path / "store"), shared_dir(tmp_path / "spool")
    port, metrics_port = free_port(), free_port()
    env = {"RAYHISTORY_STORAGE": "file:///store", "RAYHISTORY_PORT": str(port),
           "RAYHISTORY_METRICS_PORT": str(metrics_port),
           "RAYHISTORY_NAMESPACE": "ray", "RAYHISTORY_CLUSTER_NAME": "demo", "RAYHISTORY_SPOOL_DIR": "/spool",
           "RAYHISTORY_RAY_TEMP_ROOT": "/tmp/ray", "RAYHISTORY_FLUSH_INTERVAL": "3600",
           "RAYHISTORY_LOG_UPLOAD_INTERVAL": "3600", "RAYHISTORY_LOG_FORMAT": "text"}
    volumes = {store_dir: "/store", spool_dir: "/spool", ray_root: "/tmp/ray"}
    bodies = received_bodies()
    with container(image_name, ["collector"], volumes, env) as collector:
        url = f"http://127.0.0.1:{port}"
        collector.wait_ready(f"http://127.0.0.1:{metrics_port}/healthz")  # what the kubelet probes
        accepted = 0
        for body in bodies:
            request = urllib.request.Request(url + "/v1/events", data=json.dumps(body).encode(), method="POST",
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=30) as resp:
                assert resp.status == 200
                accepted += json.loads(resp.read())["accepted"]
        assert accepted == sum(len(b) for b in bodies)
        # nothing flushed yet (the timer is an hour): SIGTERM is what uploads it
        assert asyncio.run(stored_event_lines(Store(f"file://{store_dir}"), fixture_ref())) == {}
        assert collector.stop() == 0, collector.logs()
    store = Store(f"file://{store_dir}")
    lines = asyncio.run(stored_event_lines(store, fixture_ref()))
    assert list(lines) == [HEAD_NODE_ID]
    assert sorted(json.loads(line)["eventId"] for line in lines[HEAD_NODE_ID]) == sorted(
        e["eventId"] for body in bodies for e in body)
    info = asyncio.run(session_info(store, fixture_ref()))
    assert info.state == "live" and info.flushed_node_ids == [HEAD_NODE_ID]
