"""oauth2-proxy in front: a user logs in with the identity provider and gets exactly their namespaces.

Chromium -> Traefik (forwardAuth to oauth2-proxy, named by the Ingress's annotation) -> the history server on
the test host, run as its Deployment runs it with `spec.server.auth` = kubernetes, `trustedProxies` = the
address Traefik's connections come from, `proxyIdentity` = user-headers. oauth2-proxy logs the browser in with
a test-only OIDC provider (mockoidc, tests/ingress/oauth2.py: the one part that stands in for something that
cannot run here, a company's identity provider) and passes who the user is as X-Forwarded-User and
X-Forwarded-Groups; the server asks the real kube-apiserver (its ServiceAccount's token, reached from the test
host through a relay of the API server's loopback port) a SubjectAccessReview per namespace. RBAC: alice may
read RayClusters in one namespace (a RoleBinding to her user), bob in another (to his group).
"""

from __future__ import annotations

import asyncio
import http.client
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from rayhistory.layout import SessionRef
from rayhistory.operator import config, specs
from rayhistory.store import Store
from tests.conftest import free_port
from tests.e2e.browser import chromium, screenshot_on_failure, shot
from tests.ingress.cluster_objects import apply_server_objects, prepared_cluster, run_server_as_deployed
from tests.ingress.netns import loopback_port_inside, network_namespace
from tests.ingress.oauth2 import MockOidc, running_mockoidc, running_oauth2_proxy, traefik_forward_auth
from tests.ingress.traefik import Traefik, running_traefik
from tests.k8s.cluster import Cluster, viewer_grant, wait_for
from tests.server.fixture_store import fixture_ref, write_fixture_session

pytestmark = [pytest.mark.k8s, pytest.mark.slow, pytest.mark.timeout(600)]

NS = "rayhistory-oauth2"
NS_A, NS_B = "oauth2-team-a", "oauth2-team-b"
INGRESS_CLASS = "rayhistory-traefik"
HOST = "guarded.history.test"
HISTORY = "guarded"
USERS = {  # user -> (groups, the namespace RBAC lets them read)
    "alice": ([], NS_A),
    "bob": (["team-b-devs"], NS_B),
}


@dataclass
class Guarded:
    traefik: Traefik
    oidc: MockOidc
    sessions: dict[str, SessionRef]  # namespace -> its one session

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.traefik.web_port}/"

    def session_url(self, ref: SessionRef) -> str:
        return f"{self.base}s/{ref.namespace}/{ref.cluster}/{ref.session}/"


def grant_users(k8s: Cluster) -> None:
    for ns in (NS_A, NS_B):
        k8s.apply_docs([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}])
    k8s.apply_docs(viewer_grant(NS_A, {"kind": "User", "name": "alice", "apiGroup": "rbac.authorization.k8s.io"}))
    k8s.apply_docs(viewer_grant(NS_B, {"kind": "Group", "name": "team-b-devs", "apiGroup": "rbac.authorization.k8s.io"}))


def server_credentials(k8s: Cluster, history: dict) -> Path:
    """The server's ServiceAccount and ClusterRoleBinding as the operator makes them (the ClusterRole as
    deploy/operator ships it), and a kubeconfig with that ServiceAccount's token."""
    k8s.apply_docs([
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": config.SERVER_CLUSTER_ROLE}, "rules": specs.SERVER_CLUSTER_ROLE_RULES},
        specs.build_service_account_spec(history), specs.build_cluster_role_binding_spec(history)])
    account = specs.build_service_account_spec(history)["metadata"]
    token = k8s.kubectl("create", "token", account["name"], "-n", account["namespace"], "--duration=1h").strip()
    return k8s.kubeconfig_for_token(f"{HISTORY}-server", token)


@pytest.fixture(scope="module")
def guarded(k8s: Cluster, tmp_path_factory) -> Iterator[Guarded]:
    folder = tmp_path_factory.mktemp("oauth2")
    store_url = f"file://{folder / 'store'}"
    store = Store(store_url)
    sessions = {ns: fixture_ref(ns, f"cluster-{ns[-1]}") for ns in (NS_A, NS_B)}

    async def write_store() -> None:
        await asyncio.gather(*(write_fixture_session(store, r) for r in sessions.values()))
    asyncio.run(write_store())
    grant_users(k8s)
    api_port = urlsplit(k8s.server).port
    web_port = free_port()

    with network_namespace(index=1) as backend, prepared_cluster(k8s, NS, INGRESS_CLASS):
        doc = {
            "apiVersion": "rayhistory.io/v1alpha1", "kind": "RayHistory", "metadata": {"name": HISTORY, "namespace": NS},
            "spec": {
                "storage": {"url": store_url},
                # Traefik's connections to the server come from this side of the test host's veth pair.
                "server": {"auth": {"mode": "kubernetes", "trustedProxies": [f"{backend.gateway}/32"],
                                    "proxyIdentity": "user-headers"}},
                "ingress": {"enabled": True, "className": INGRESS_CLASS, "host": HOST,
                            "annotations": {"traefik.ingress.kubernetes.io/router.middlewares": "oauth2@file"}},
            },
        }
        history, spec, _ = apply_server_objects(k8s, doc, backend)
        kubeconfig = server_credentials(k8s, history)
        with loopback_port_inside(backend, api_port):
            server = run_server_as_deployed(folder, backend, history, spec, kubeconfig)
            k8s.processes[server.name] = server
            try:
                with running_mockoidc(folder) as oidc, \
                        running_oauth2_proxy(folder, oidc.issuer, HOST, web_port) as proxy, \
                        running_traefik(folder / "traefik", k8s, INGRESS_CLASS, [NS], web_port=web_port,
                                        dynamic=traefik_forward_auth(proxy, HOST)) as traefik:
                    wait_for("Traefik to route the Ingress with its middleware", lambda: any(
                        f'Host("{HOST}")' in r["rule"] and r.get("status") == "enabled"
                        and r.get("middlewares") == ["oauth2@file"] for r in traefik.routers()), timeout=60)
                    yield Guarded(traefik, oidc, sessions)
            finally:
                server.stop()
                k8s.processes.pop(server.name, None)


def first_answer(guarded: Guarded, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
    """One request to Traefik for the guarded host, redirects not followed."""
    conn = http.client.HTTPConnection("127.0.0.1", guarded.traefik.web_port, timeout=30)
    try:
        conn.request("GET", path, headers={"Host": f"{HOST}:{guarded.traefik.web_port}", **headers})
        resp = conn.getresponse()
        resp.read()
        return resp.status, dict(resp.getheaders())
    finally:
        conn.close()


def test_without_a_login_nothing_is_served_whatever_the_headers_say(guarded: Guarded):
    """A client that sends the identity headers itself, without oauth2-proxy's cookie, is sent to the identity
    provider; the server never sees the request."""
    for path in ("/", "/clusters?limit=10", guarded.session_url(guarded.sessions[NS_A])[len(guarded.base) - 1:]):
        status, headers = first_answer(guarded, path, {"X-Forwarded-User": "alice", "X-Forwarded-Groups": ""})
        assert status == 302, (path, status)
        assert headers["Location"].startswith(guarded.oidc.issuer + "/authorize"), headers["Location"]


@pytest.mark.parametrize("user", sorted(USERS))
async def test_a_user_gets_exactly_their_namespaces(guarded: Guarded, user: str, tmp_path):
    """Logged in through oauth2-proxy, the picker lists only the sessions of the namespaces RBAC lets the user read,
    their dashboard renders, another namespace's session is a 403; identity headers the browser adds itself are
    replaced by oauth2-proxy's (Traefik's authResponseHeaders), so claiming to be the other user changes nothing."""
    groups, own_ns = USERS[user]
    other_ns = next(ns for _, ns in USERS.values() if ns != own_ns)
    other_user = next(u for u, (_, ns) in USERS.items() if ns == other_ns)
    mine, theirs = guarded.sessions[own_ns], guarded.sessions[other_ns]
    guarded.oidc.queue_user(user, groups)
    async with chromium(tmp_path / "profile", [f"--host-resolver-rules=MAP {HOST} 127.0.0.1"]) as browser:
        page = await browser.new_page()
        async with screenshot_on_failure(page, f"oauth2-{user}"):
            await page.set_extra_http_headers({"X-Forwarded-User": other_user,
                                               "X-Forwarded-Groups": ",".join(USERS[other_user][0])})
            await page.goto(guarded.base)  # -> the provider -> oauth2-proxy's callback -> back here
            await page.wait_for_url(guarded.base)
            rows = page.locator("tr.session")
            await rows.first.wait_for()
            assert await rows.count() == 1
            assert own_ns in await rows.first.inner_text()
            await shot(page, f"oauth2-{user}-picker")
            await rows.first.get_by_role("link", name=mine.session).click()
            await page.wait_for_url(guarded.session_url(mine) + "#/overview")
            await page.get_by_text("Cluster status and autoscaler").first.wait_for()
            await shot(page, f"oauth2-{user}-dashboard")
            answer = await page.goto(guarded.session_url(theirs))
            assert answer.status == 403
            await page.get_by_text(f"get rayclusters.ray.io in namespace {other_ns}").first.wait_for()
            await shot(page, f"oauth2-{user}-forbidden")
