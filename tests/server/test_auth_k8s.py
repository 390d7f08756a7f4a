"""--auth kubernetes against the real kube-apiserver (tests/k8s/cluster.py): TokenReview, SubjectAccessReview, RBAC.

The history server runs as a ServiceAccount with only the ClusterRole the operator gives it (operator/specs.py),
with a kubeconfig holding that ServiceAccount's token, as it would in a pod. Users are the API server's static
tokens: alice gets a RoleBinding (to her user) in one namespace, bob one (to his group) in another.
"""

from __future__ import annotations

import pytest

from rayhistory.store import Store
from tests.conftest import free_port
from tests.k8s.cluster import USERS, Cluster, running_cluster, viewer_grant, write_kubeconfig
from tests.e2e.browser import browser  # noqa: F401 - the Chromium fixture
from tests.server.fixture_store import fixture_ref, log_files, running_server, write_fixture_session

pytestmark = [pytest.mark.k8s, pytest.mark.slow]

NS_A, NS_B, SERVER_NS = "auth-team-a", "auth-team-b", "auth-rayhistory"


def server_rbac() -> list[dict]:
    from rayhistory.operator.specs import server_auth_rules

    return [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "auth-test-server"},
         "rules": server_auth_rules()},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "auth-test-server"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "auth-test-server"},
         "subjects": [{"kind": "ServiceAccount", "name": "server", "namespace": SERVER_NS}]},
    ]


@pytest.fixture(scope="module")
def server_kubeconfig(k8s: Cluster):
    """A kubeconfig with the token of a ServiceAccount that holds only the server's auth ClusterRole."""
    return server_identity(k8s)


def server_identity(k8s: Cluster):
    for ns in (NS_A, NS_B, SERVER_NS):
        if k8s.get("namespace", ns) is None:
            k8s.kubectl("create", "namespace", ns)
    k8s.kubectl("create", "serviceaccount", "server", "-n", SERVER_NS)
    k8s.apply_docs(server_rbac())
    k8s.apply_docs(viewer_grant(NS_A, {"kind": "User", "name": "alice", "apiGroup": "rbac.authorization.k8s.io"}))
    k8s.apply_docs(viewer_grant(NS_B, {"kind": "Group", "name": "team-b-devs",
                                       "apiGroup": "rbac.authorization.k8s.io"}))
    token = k8s.kubectl("create", "token", "server", "-n", SERVER_NS, "--duration=1h").strip()
    return k8s.kubeconfig_for_token("auth-server", token)


@pytest.fixture
async def sessions(tmp_path):
    store = Store(f"file://{tmp_path}/store")
    a = await write_fixture_session(store, fixture_ref(namespace=NS_A, cluster="ca"))
    b = await write_fixture_session(store, fixture_ref(namespace=NS_B, cluster="cb"))
    return store, a, b


def bearer(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {USERS[user][0]}"}


def a_log_file() -> str:
    return next(name for name in log_files() if "/" not in name and name.endswith(".out"))


async def test_two_users_see_only_their_own_namespace(sessions, server_kubeconfig, monkeypatch):
    store, a, b = sessions
    monkeypatch.setenv("KUBECONFIG", str(server_kubeconfig))
    mine = {"alice": a, "bob": b}
    theirs = {"alice": b, "bob": a}
    log_file = a_log_file()
    async with running_server(store, auth="kubernetes", kubernetes="off") as (client, _, _s):
        for user in ("alice", "bob"):
            async with client.get("/clusters", headers=bearer(user)) as resp:
                assert resp.status == 200, await resp.text()
                body = await resp.json()
            assert [s["namespace"] for s in body["sessions"]] == [mine[user].namespace], user
            assert body["total"] == 1
            for ref, status in ((mine[user], 200), (theirs[user], 403)):
                for path in ("api/v0/tasks?detail=1", "api/v0/tasks/timeline",
                             f"api/v0/logs/file?node_id={_head(ref)}&filename={log_file}", "rayhistory/status", ""):
                    async with client.get(f"/s/{ref.tail}/{path}", headers=bearer(user)) as resp:
                        assert resp.status == status, (user, path, resp.status, await resp.text())
                        if status == 403:
                            assert (await resp.json())["missing_permission"] == \
                                f"get rayclusters.ray.io in namespace {ref.namespace}"
        # alice, no grants in team-b: the HTML page names what she lacks
        async with client.get(f"/s/{b.tail}/", headers={**bearer("alice"), "Accept": "text/html"}) as resp:
            assert resp.status == 403
            assert f"get rayclusters.ray.io in namespace {NS_B}" in await resp.text()
        async with client.get(f"/enter_cluster/{NS_B}/cb/latest", headers=bearer("alice"),
                              allow_redirects=False) as resp:
            assert resp.status == 403


def _head(ref) -> str:
    from tests.conftest import HEAD_NODE_ID

    return HEAD_NODE_ID


async def test_an_invalid_token_is_401_and_login_needs_a_valid_one(sessions, server_kubeconfig, monkeypatch):
    store, a, _ = sessions
    monkeypatch.setenv("KUBECONFIG", str(server_kubeconfig))
    async with running_server(store, auth="kubernetes", kubernetes="off") as (client, _, _s):
        for headers in ({"Authorization": "Bearer not-a-token"}, {}, {"Cookie": "rayhistory_token=expired"}):
            async with client.get(f"/s/{a.tail}/api/v0/tasks", headers=headers) as resp:
                assert resp.status == 401, headers
            async with client.get("/clusters", headers=headers) as resp:
                assert resp.status == 401, headers
        async with client.post("/login", data={"token": "not-a-token"}) as resp:
            assert resp.status == 401
        async with client.post("/login", data={"token": USERS["alice"][0], "next": f"s/{a.tail}/"},
                               allow_redirects=False) as resp:
            assert resp.status == 303
            cookie = resp.cookies["rayhistory_token"].value
        async with client.get(f"/s/{a.tail}/api/v0/tasks", headers={"Cookie": f"rayhistory_token={cookie}"}) as resp:
            assert resp.status == 200


async def test_an_unreachable_api_server_is_503_never_open(sessions, k8s: Cluster, tmp_path, monkeypatch):
    store, a, _ = sessions
    # the server's credentials are fine, but nothing listens where its kubeconfig points
    gone = write_kubeconfig(tmp_path / "kubeconfig-gone", f"https://127.0.0.1:{free_port()}", k8s.ca_file,
                            "admin", USERS["admin"][0])
    monkeypatch.setenv("KUBECONFIG", str(gone))
    async with running_server(store, auth="kubernetes", kubernetes="off", auth_review_timeout_s=2) as (client, _, _s):
        for path in ("/clusters", f"/s/{a.tail}/api/v0/tasks", f"/s/{a.tail}/api/v0/tasks/timeline"):
            async with client.get(path, headers=bearer("alice")) as resp:
                assert resp.status == 503, path
                assert resp.headers["Retry-After"]


async def test_server_credentials_without_the_review_rbac_are_503(sessions, k8s: Cluster, monkeypatch):
    store, a, _ = sessions
    # alice may not create TokenReviews: a server running as her must refuse everyone, not let them in
    monkeypatch.setenv("KUBECONFIG", str(k8s.kubeconfigs["alice"]))
    async with running_server(store, auth="kubernetes", kubernetes="off") as (client, _, _s):
        async with client.get(f"/s/{a.tail}/api/v0/tasks", headers=bearer("alice")) as resp:
            assert resp.status == 503
            assert "tokenreviews" in (await resp.json())["msg"]


async def test_a_trusted_proxy_s_user_headers_and_access_token(sessions, server_kubeconfig, monkeypatch):
    store, a, b = sessions
    monkeypatch.setenv("KUBECONFIG", str(server_kubeconfig))
    async with running_server(store, auth="kubernetes", kubernetes="off", auth_trusted_proxies=["127.0.0.1"],
                              auth_proxy_identity="user-headers") as (client, _, _s):
        # bob by his group only: the group reaches the SubjectAccessReview
        headers = {"X-Forwarded-User": "someone-in-b", "X-Forwarded-Groups": "team-b-devs"}
        async with client.get("/clusters", headers=headers) as resp:
            assert [s["namespace"] for s in (await resp.json())["sessions"]] == [NS_B]
        async with client.get(f"/s/{a.tail}/api/v0/tasks", headers=headers) as resp:
            assert resp.status == 403
    async with running_server(store, auth="kubernetes", kubernetes="off",
                              auth_trusted_proxies=["127.0.0.1"]) as (client, _, _s):
        async with client.get(f"/s/{a.tail}/api/v0/tasks",
                              headers={"X-Forwarded-Access-Token": USERS["alice"][0]}) as resp:
            assert resp.status == 200
        async with client.get(f"/s/{a.tail}/api/v0/tasks", headers={"X-Forwarded-Access-Token": "forged"}) as resp:
            assert resp.status == 401


async def test_the_api_server_stopped_is_503(sessions, tmp_path, monkeypatch):
    """A control plane of its own (the shared one keeps running): up, alice reads her session; the API server
    stopped, every check is a 503, with no decision cached (TTL 0) to hide it."""
    store, a, _ = sessions
    with running_cluster(tmp_path / "k8s", with_kuberay=False) as own:
        monkeypatch.setenv("KUBECONFIG", str(server_identity(own)))
        async with running_server(store, auth="kubernetes", kubernetes="off", auth_cache_ttl_s=0,
                                  auth_review_timeout_s=2) as (client, _, _s):
            async with client.get(f"/s/{a.tail}/api/v0/tasks", headers=bearer("alice")) as resp:
                assert resp.status == 200, await resp.text()
            own.processes["kube-apiserver"].stop()
            for path in ("/clusters", f"/s/{a.tail}/api/v0/tasks", f"/s/{a.tail}/api/v0/tasks/timeline"):
                async with client.get(path, headers=bearer("alice")) as resp:
                    assert resp.status == 503, path
                    assert "could not be reached" in (await resp.json())["msg"]


async def test_the_picker_and_the_dashboard_work_in_a_browser_after_login(sessions, server_kubeconfig, monkeypatch,
                                                                          browser):
    """Chromium: the picker sends a browser without credentials to /login; after alice pastes her token the
    picker lists only her namespace's session, its dashboard renders, and bob's session is a 403 page that
    names the permission. Screenshots: test-output/screenshots/auth-*.png."""
    from tests.e2e import browser as ui

    store, a, b = sessions
    monkeypatch.setenv("KUBECONFIG", str(server_kubeconfig))
    async with ui.running_server(store.url, auth="kubernetes", kubernetes="off") as base:
        page = await browser.new_page()
        async with ui.screenshot_on_failure(page, "auth-login"):
            await page.goto(base)
            await page.wait_for_url(base + "login?next=")
            await ui.shot(page, "auth-login")
            await page.fill("textarea[name=token]", USERS["alice"][0])
            await page.get_by_role("button", name="Log in").click()
            await page.wait_for_url(base)
            rows = page.locator("tr.session")
            await rows.first.wait_for()
            assert await rows.count() == 1
            assert NS_A in await rows.first.inner_text()
            await ui.shot(page, "auth-picker-after-login")
            await rows.first.get_by_role("link", name=a.session).click()
            await page.wait_for_url(ui.session_url(base, a) + "#/overview")
            await page.get_by_text("Cluster status and autoscaler").first.wait_for()
            await ui.shot(page, "auth-dashboard-after-login")
            answer = await page.goto(ui.session_url(base, b))
            assert answer.status == 403
            await page.get_by_text(f"get rayclusters.ray.io in namespace {NS_B}").first.wait_for()
            await ui.shot(page, "auth-forbidden")
