"""`rayhistory import` against hostile dashboards (rayhistory/importer.py).

Real Ray never answers like this, so the dashboard here is a small aiohttp server of the test's own on
127.0.0.1 (the one mock: a real head cannot be made to send huge, mistyped or path-escaping answers); the
store is a real file:// store. The honest path, against a real Ray head, is tests/e2e/test_import_ray.py.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web

from rayhistory import layout
from rayhistory.importer import Importer, ImportFailed, Settings, main
from rayhistory.index import SessionIndex
from rayhistory.platform_events import platform_events_answer, record_from_event
from rayhistory.store import Store
from tests.conftest import API
from tests.operator.test_platform_events import k8s_event
from tests.server.fixture_store import running_server

SESSION = "session_2026-11-23_13-47-55_556257_9670"
NODE = "ab" * 28
HOSTILE_NAMES = ["raylet.out", "../../../../etc/passwd", "/etc/shadow", "a/../../b", "big.log", "slow.log", "events/"]


def hostile_app(version: dict | None = None, status: int = 200,
                platform_events: bytes | None = None) -> web.Application:
    """`platform_events`: the head's answer to api/v0/platform_events (None: Ray's 404, platform events off)."""
    async def answer(request: web.Request) -> web.StreamResponse:
        path, q = request.path, request.query
        if status != 200:
            return web.Response(status=status, text="Unauthorized")
        if path == "/api/v0/platform_events":
            if platform_events is None:
                return web.Response(status=404, body=(API / "api__v0__platform_events.txt").read_bytes())
            return web.Response(body=platform_events, content_type="application/json")
        if path == "/api/version":
            return web.json_response({"session_name": SESSION} if version is None else version)
        if path == "/nodes" and q.get("view") == "summary":
            return web.json_response({"data": {"summary": [{"raylet": {"nodeId": NODE, "state": "ALIVE"}},
                                                           {"raylet": {"nodeId": "../../x", "state": "ALIVE"}}]}})
        if path == "/api/jobs/":  # wrong types everywhere: nothing to ask per job
            return web.json_response([{"job_id": ["x"]}, "row", {"submission_id": "../../x"}])
        if path == "/logical/actors":
            return web.Response(body=b"<html>not json</html>")
        if path == "/api/v0/tasks" and q.get("detail") == "1" and "filter_keys" not in q:
            return web.Response(body=b"[" + b"0," * 600_000 + b"0]")  # above max_answer_bytes
        if path == "/api/v0/logs":
            if q.get("glob") == "events/*":
                return web.json_response({"data": {"result": {"x": ["events/event_GCS.log", "events/../../up"]}}})
            return web.json_response({"data": {"result": {"internal": HOSTILE_NAMES, "worker_out": "raylet.out"}}})
        if path == "/api/v0/logs/file":
            name = q.get("filename")
            if name == "big.log":
                return web.Response(body=b"x" * 3_000_000)
            if name == "slow.log":
                await asyncio.sleep(5)
            return web.Response(body=f"content of {name}\n".encode())
        return web.json_response({"result": True, "data": {}})

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    return app


@pytest.fixture
async def dashboard():
    runners = []

    async def start(**kwargs) -> str:
        runner = web.AppRunner(hostile_app(**kwargs))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield start
    for runner in runners:
        await runner.cleanup()


def settings(url: str, tmp_path, **extra) -> Settings:
    fields = {"storage": f"file://{tmp_path}/store", "request_timeout_s": 2, "max_answer_bytes": 1_000_000,
              "max_log_file_bytes": 1_000_000, **extra}
    return Settings(dashboard=url, namespace="ns", cluster="c1", **fields)


async def test_hostile_answers_stay_bounded_and_inside_the_session(dashboard, tmp_path):
    s = settings(await dashboard(), tmp_path)
    store = Store(s.storage)
    lines: list[str] = []
    report = await Importer(s, store, progress=lines.append).run()
    ref = layout.SessionRef("ns", "c1", SESSION)
    keys = [o.key for o in await store.list("")]
    assert all(k.startswith((layout.session_prefix(ref), layout.index_session_prefix(ref))) for k in keys), keys
    logs = sorted(k.rsplit("/", 1)[0][len(layout.logs_prefix(ref, NODE)):] for k in keys if "/logs/" in k)
    assert logs == ["big.log", "events/event_GCS.log", "raylet.out"]  # slow.log timed out, the rest refused
    big = [o for o in await store.list(layout.log_file_prefix(ref, NODE, "big.log"))]
    assert sum(o.size for o in big) == 1_000_000 and report.logs_truncated == [f"{NODE}/big.log"]
    assert len(report.logs_refused) == 4 and any("etc/passwd" in r for r in report.logs_refused)
    skipped = dict(report.skipped)
    assert "max-answer-bytes" in skipped["api/v0/tasks?detail=1&limit=10000"]
    assert any("slow.log" in request for request in skipped)
    assert "logical/actors?" in skipped and skipped["logical/actors?"] == "not JSON"
    # the second round asked nothing per job (the jobs answer named none that pass the checks)
    assert not any(k.startswith("api/jobs/") and k != "api/jobs/?" for k in report.answers)
    assert any("session ns/c1/" in line for line in lines) and lines[-1].startswith("done:")
    info = await SessionIndex(store).session(ref)
    assert info.state == "dead" and info.imported_ms == report.captured_ms and info.node_ids == [NODE]
    manifest = json.loads(await store.get(layout.latest_key(
        [o.key for o in await store.list(layout.endpoints_prefix(ref, layout.IMPORT_MANIFEST))])))
    assert manifest["logs_truncated"] == report.logs_truncated and manifest["dashboard"].startswith("http://127.0.0.1:")


async def test_the_heads_platform_events_are_replayed_and_its_404_stays_a_404(dashboard, tmp_path):
    """A head that watched Kubernetes answered api/v0/platform_events: the imported session answers the same
    bytes (GET, and the UI's HEAD probe); a head with platform events off answered 404, and so does the server."""
    ref = layout.SessionRef("ns", "c1", SESSION)
    watched = json.dumps(platform_events_answer([record_from_event(k8s_event("u1"), "c1")])).encode()
    for folder, head_answer, status in (("watched", watched, 200), ("off", None, 404)):
        s = settings(await dashboard(platform_events=head_answer), tmp_path / folder, max_log_bytes=0)
        store = Store(s.storage)
        await Importer(s, store, progress=lambda _: None).run()
        async with running_server(store, kubernetes="off") as (client, _, _state):
            url = f"/s/{ref.tail}/api/v0/platform_events"
            async with client.get(url) as resp:
                live = (API / "api__v0__platform_events.txt").read_bytes()
                assert (resp.status, await resp.read()) == (status, watched if head_answer else live)
            async with client.head(url) as resp:
                assert resp.status == status


async def test_limits_of_logs(dashboard, tmp_path):
    s = settings(await dashboard(), tmp_path, max_log_files=1)
    report = await Importer(s, Store(s.storage), progress=lambda _: None).run()
    assert report.log_files == 1 and ["logs of " + NODE, "--max-log-files reached"] in report.skipped
    s = settings(await dashboard(), tmp_path / "none", max_log_bytes=0)
    assert (await Importer(s, Store(s.storage), progress=lambda _: None).run()).log_files == 0


@pytest.mark.parametrize("token, said", [("", "it wants Ray's token"), ("wrong", "it refused the Ray token sent")])
async def test_401_says_what_to_do(dashboard, tmp_path, token, said, monkeypatch):
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    s = settings(await dashboard(status=401), tmp_path, ray_auth_token=token)
    with pytest.raises(ImportFailed, match="answered 401: " + said):
        await Importer(s, Store(s.storage)).run()
    assert await Store(s.storage).list("") == []  # nothing written


@pytest.mark.parametrize("version", [{"session_name": "../../x"}, {"session_name": 5}, {}])
async def test_a_dashboard_without_a_session_name_is_refused(dashboard, tmp_path, version):
    s = settings(await dashboard(version=version), tmp_path)
    with pytest.raises(ImportFailed, match="without a Ray session name"):
        await Importer(s, Store(s.storage)).run()


def test_unreachable_dashboard_is_exit_1(tmp_path, capsys):
    from tests.conftest import free_port

    assert main(settings(f"http://127.0.0.1:{free_port()}", tmp_path)) == 1
    assert "cannot reach the Ray dashboard at http://127.0.0.1:" in capsys.readouterr().err


async def test_a_storage_failure_is_exit_1_and_lists_nothing(dashboard, tmp_path, capsys):
    (tmp_path / "a-file").write_text("not a folder")
    s = settings(await dashboard(), tmp_path, storage=f"file://{tmp_path}/a-file/store")
    assert await asyncio.to_thread(main, s) == 1
    assert "rayhistory import: storage failed" in capsys.readouterr().err


@pytest.mark.parametrize("field, value", [("dashboard", "file:///etc"), ("dashboard", "http://"),
                                          ("namespace", "../x"), ("cluster", "a/b")])
def test_bad_settings_are_refused(tmp_path, field, value):
    args = {"dashboard": "http://127.0.0.1:1", "namespace": "ns", "cluster": "c", field: value}
    with pytest.raises(ValueError):
        Settings(**args)


def test_credentials_in_the_url_are_not_recorded():
    from rayhistory.importer import shown_url

    assert shown_url("https://user:secret@head.example:8265/ray?x=1") == "https://head.example:8265/ray"
