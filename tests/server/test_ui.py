"""The dashboard UI routes: the real Ray 2.60 build served under session prefixes, the picker and the loading page.

The session's load state comes from a small table here instead of the server's loader, so that these tests
check the UI's own decisions; the browser test (tests/e2e/test_dashboard_browser.py) runs them against the
real server.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from rayhistory.layout import SessionRef
from rayhistory.server import ui
from tests.conftest import SESSION_NAME
from tests.ui_page import without_additions

OTHER_SESSION = "session_2026-11-24_08-00-00_000001_42"
STATUS_PATH = "api/rayhistory/status"


def installed_build() -> Path:
    build = ui.find_dashboard_dir()
    assert build is not None, "the test environment installs ray, whose wheel ships the dashboard build"
    return build


@pytest.fixture
async def client():
    states = {
        ("ray", "demo", SESSION_NAME): ui.LoadState(ready=True),
        ("ray", "other", OTHER_SESSION): ui.LoadState(ready=True),
        ("ray", "cold", SESSION_NAME): ui.LoadState(ready=False),
    }

    async def load_state(request: web.Request, ref: SessionRef) -> ui.LoadState:
        return states.get((ref.namespace, ref.cluster, ref.session), ui.LoadState(ready=False, exists=False))

    app = web.Application()
    ui.setup_ui(app, None, load_state, STATUS_PATH)
    async with TestClient(TestServer(app)) as c:
        yield c


def test_build_found_in_installed_ray_and_setting_wins(tmp_path, monkeypatch):
    build = installed_build()
    assert (build / "index.html").is_file() and build.parts[-4:] == ("ray", "dashboard", "client", "build")
    copy = tmp_path / "dash"
    shutil.copytree(build, copy)
    assert ui.find_dashboard_dir(str(copy)) == copy.resolve()
    monkeypatch.setenv(ui.DASHBOARD_DIR_ENV, str(copy))
    assert ui.find_dashboard_dir() == copy.resolve()
    with pytest.raises(ui.DashboardBuildMissing):
        ui.find_dashboard_dir(str(tmp_path / "nothing-here"))


async def test_session_prefix_serves_the_unmodified_build_and_every_asset_it_references(client):
    build = installed_build()
    for session_path in (f"/s/ray/demo/{SESSION_NAME}/", f"/s/ray/other/{OTHER_SESSION}/"):
        resp = await client.get(session_path)
        assert resp.status == 200
        page = await resp.read()
        # the build's page, with only the banner and the title added for this session
        assert without_additions(page) == (build / "index.html").read_bytes()
        # index.html loads its bundles with paths relative to the session's URL
        refs = re.findall(rb'(?:src|href)="\./([^"]+)"', page)
        assert {r.split(b"/")[0] for r in refs} >= {b"static", b"favicon.ico"}
        for ref in refs:
            asset = await client.get(session_path + ref.decode())
            assert asset.status == 200, ref
            assert await asset.read() == (build / ref.decode()).read_bytes()
    # lazily loaded chunks and fonts (webpack public path "./") resolve under the prefix too
    chunk = next((build / "static" / "js").glob("*.chunk.js")).name
    assert (await client.get(f"/s/ray/demo/{SESSION_NAME}/static/js/{chunk}")).status == 200
    assert (await client.get(f"/s/ray/demo/{SESSION_NAME}/speedscope-1.5.3/index.html")).status == 200


async def test_paths_that_leave_the_build_or_name_no_session_are_refused(client):
    base = f"/s/ray/demo/{SESSION_NAME}"
    for path in (
        base + "/static/%2e%2e/index.html",
        base + "/static/..%2f..%2f..%2fetc/passwd",
        base + "/static/js/nope.js",
        "/s/ray/demo/not-a-session/",
        "/s/ray/demo/..%2f..%2f/",
    ):
        resp = await client.get(path)
        assert resp.status == 404, path
    resp = await client.get(f"/s/ray/gone/{SESSION_NAME}/")
    assert resp.status == 404


async def test_session_url_without_slash_redirects_relative(client):
    resp = await client.get(f"/s/ray/demo/{SESSION_NAME}?x=1", allow_redirects=False)
    assert resp.status == 302
    assert resp.headers["Location"] == f"{SESSION_NAME}/?x=1"


async def test_cold_session_gets_the_loading_page_polling_its_status(client):
    resp = await client.get(f"/s/ray/cold/{SESSION_NAME}/")
    assert resp.status == 200
    page = await resp.text()
    assert "Loading the session" in page
    assert f'"statusPath": "{STATUS_PATH}"' in page
    assert "{{" not in page
    assert resp.headers["Cache-Control"] == "no-store"


async def test_picker_page_lists_clusters_with_a_relative_url(client):
    resp = await client.get("/")
    assert resp.status == 200
    page = await resp.text()
    assert "fetch(`clusters?" in page and 'id="search"' in page


def test_missing_build_answers_503_with_how_to_get_it(tmp_path):
    async def load_state(request, ref):
        return ui.LoadState(ready=True)

    ui_ = ui.DashboardUI(None, load_state, STATUS_PATH)
    with pytest.raises(web.HTTPServiceUnavailable) as err:
        ui_._require_build()
    assert "make dashboard" in err.value.text


async def test_session_page_carries_the_banner_and_a_per_session_title(client):
    resp = await client.get(f"/s/ray/demo/{SESSION_NAME}/")
    page = await resp.text()
    assert f"<title>Ray Dashboard · demo / {SESSION_NAME}</title>" in page
    assert page.index('id="rayhistory-banner"') < page.index('<div id="root">')
    # the way back to the picker and the status the banner reads, both relative to the session's URL
    assert 'href="../../../../"' in page
    config = json.loads(re.search(r"const CONFIG = (\{.*?\});", page).group(1))
    assert config == {"namespace": "ray", "cluster": "demo", "session": SESSION_NAME, "statusPath": STATUS_PATH,
                      "nodesPath": "nodes?view=summary", "source": "storage"}
    assert "{{" not in page
    # the build's own file is untouched
    assert b"rayhistory" not in (installed_build() / "index.html").read_bytes()


async def test_a_browser_gets_error_pages_with_a_way_back_and_api_clients_their_answers(client):
    html_accept = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    resp = await client.get(f"/s/ray/gone/{SESSION_NAME}/", headers=html_accept)
    assert resp.status == 404 and resp.content_type == "text/html"
    page = await resp.text()
    assert "Back to all sessions" in page and 'href="../../../../"' in page
    assert SESSION_NAME in page and "in this history store" in page
    assert "{{" not in page
    resp = await client.get("/no/such/page", headers=html_accept)
    assert resp.status == 404 and 'href="../../"' in await resp.text()
    # what the dashboard's axios sends: the plain answer, never HTML
    resp = await client.get(f"/s/ray/gone/{SESSION_NAME}/", headers={"Accept": "application/json, text/plain, */*"})
    assert resp.status == 404 and resp.content_type == "text/plain"


def test_picker_path_is_relative_to_the_request():
    assert ui.picker_path("/") == "./"
    assert ui.picker_path("/clusters") == "./"
    assert ui.picker_path(f"/s/ray/demo/{SESSION_NAME}/") == "../../../../"
    assert ui.picker_path(f"/s/ray/demo/{SESSION_NAME}/api/v0/x") == "../../../../../../"
