"""The user's path: Chromium -> Traefik (a real Ingress controller) -> the history server, as users reach it.

What is real: the control plane of tests/k8s (etcd, kube-apiserver, controller-manager), Traefik v3 built
from its Go module with its Kubernetes Ingress provider (out of cluster, admin kubeconfig, watching the
IngressClass the RayHistory names), the RayHistory stored through the CRD's schema (defaults filled in by the
API server), the Service and Ingress exactly as the operator builds them (`build_server_service_spec`,
`build_server_ingress_spec`: what reconcile.py applies), the history server (`rayhistory server`, a process
of its own) on a host of the test's own (a network namespace, tests/ingress/netns.py), Chromium.
What is not: no kubelet or kube-proxy runs, so no Pod exists; the test publishes the server's address in the
Service's EndpointSlice, as the EndpointSlice controller would for a ready Pod. The browser reaches only
Traefik: the Ingress's host names resolve to Traefik's loopback port (Chromium's host resolver rules).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import http.client
import json
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from benchmarks.synthetic import T0_NS, generate_session
from rayhistory.layout import IndexKind, SessionRef
from rayhistory.operator import config
from rayhistory.store import Store
from tests.conftest import HEAD_NODE_ID, SESSION_NAME
from tests.e2e.browser import SCREENSHOTS, chromium, screenshot_on_failure, shot, show_failed_task
from tests.ingress.cluster_objects import (apply_server_objects, fetch, prepared_cluster, run_server_as_deployed,
                                           via_traefik)
from tests.ingress.netns import NetnsHost, network_namespace
from tests.ingress.traefik import Traefik, running_traefik
from tests.k8s.cluster import Cluster, wait_for
from tests.server.fixture_store import fixture_ref, write_fixture_session, write_index

pytestmark = [pytest.mark.k8s, pytest.mark.slow, pytest.mark.timeout(900)]

NS = "rayhistory-ingress"
INGRESS_CLASS = "rayhistory-traefik"
HOST = "history.test"
TLS_HOST = "secure.history.test"
TLS_SECRET = "secure-history-tls"
HISTORY = "history"
# The controller's timeout for a backend's response headers in this test (Traefik's own default has none;
# ingress-nginx's is 60 s): short, so that the big session's cold load outlasts it in seconds.
RESPONSE_HEADER_TIMEOUT_S = 2.0
# Big enough that its cold load takes longer than that timeout even on a fast machine (60k tasks: about 2.5 CPU-s
# by bench-results/server.json's rate), and one job's timeline is a download of the size users hit (18 MB).
BIG_TASKS = 60_000
BIG_JOB = "01000000"  # the synthetic session's first driver job
GATEWAY_ERRORS = (502, 503, 504)


@dataclass
class World:
    k8s: Cluster
    traefik: Traefik
    backend: NetnsHost
    store_url: str
    fixture: SessionRef
    big: SessionRef
    cold_spare: SessionRef  # the same big session under another cluster, never opened by the browser
    host_rules: list[str] = field(default_factory=list)

    @property
    def base(self) -> str:
        """What users type: the Ingress's host, on Traefik's port."""
        return f"http://{HOST}:{self.traefik.web_port}/"

    @property
    def backend_base(self) -> str:
        return f"http://{self.backend.address}:{config.SERVER_PORT}/"

    def session_url(self, ref: SessionRef) -> str:
        return f"{self.base}s/{ref.namespace}/{ref.cluster}/{ref.session}/"


async def write_big_session(store: Store, ref: SessionRef) -> None:
    _, batches, _ = await asyncio.to_thread(generate_session, BIG_TASKS, 0, ref)
    for key, data in batches.items():
        await store.put(key, data)
    start = T0_NS // 1_000_000
    await write_index(store, ref, IndexKind.LIVE, start)
    await write_index(store, ref, IndexKind.DEAD, start + 600_000, end_ms=start + 600_000, reason="test")


def rayhistory_doc(name: str, store_url: str, ingress: dict) -> dict:
    return {
        "apiVersion": "rayhistory.io/v1alpha1", "kind": "RayHistory", "metadata": {"name": name, "namespace": NS},
        "spec": {
            "storage": {"url": store_url},
            # Who may read what is the auth tests' business; here anyone who reaches the Ingress reads.
            "server": {"auth": {"mode": "off"}},
            "ingress": {"enabled": True, "className": INGRESS_CLASS, **ingress},
        },
    }


@pytest.fixture(scope="module")
def world(k8s: Cluster, tmp_path_factory) -> Iterator[World]:
    folder = tmp_path_factory.mktemp("ingress")
    store_url = f"file://{folder / 'store'}"
    store = Store(store_url)
    fixture = fixture_ref("ray", "demo")
    big = SessionRef("ray", "big", "session_2026-11-23_13-48-09_000000_1")
    spare = SessionRef("ray", "big-spare", big.session)

    async def write_store() -> None:
        await write_fixture_session(store, fixture)
        await asyncio.gather(write_big_session(store, big), write_big_session(store, spare))
    asyncio.run(write_store())

    with network_namespace() as backend, prepared_cluster(k8s, NS, INGRESS_CLASS):
        history, spec, ingress = apply_server_objects(k8s, rayhistory_doc(HISTORY, store_url, {"host": HOST}), backend)
        assert ingress["spec"]["ingressClassName"] == INGRESS_CLASS
        server = run_server_as_deployed(folder, backend, history, spec)
        k8s.processes[server.name] = server
        try:
            with running_traefik(folder / "traefik", k8s, INGRESS_CLASS, [NS],
                                 response_header_timeout_s=RESPONSE_HEADER_TIMEOUT_S) as traefik:
                # routed once Traefik has read the Ingress and the EndpointSlice
                wait_for("Traefik to route the Ingress to the test host",
                         lambda: via_traefik(traefik, "/healthz", HOST, timeout=5)[0] == 200, timeout=60)
                yield World(k8s, traefik, backend, store_url, fixture, big, spare,
                            host_rules=[f"--host-resolver-rules=MAP {HOST} 127.0.0.1"])
        finally:
            server.stop()
            k8s.processes.pop(server.name, None)


def test_traefik_routes_what_the_operator_wrote(world: World):
    """Traefik's own view: the Ingress's rule (its host, its path prefix) on both entry points, its service the
    Service's http port, and that service's one server the address in the EndpointSlice."""
    routers = [r for r in world.traefik.routers() if r.get("provider") == "kubernetes" and f'Host("{HOST}")' in r["rule"]]
    assert {r["rule"] for r in routers} == {f'Host("{HOST}") && PathPrefix("/")'}
    assert {e for r in routers for e in r["using"]} == {"web", "websecure"}
    (service_name,) = {r["service"] for r in routers}
    (service,) = [s for s in world.traefik.services() if s["name"] == service_name + "@kubernetes"]
    assert [s["url"] for s in service["loadBalancer"]["servers"]] == [
        f"http://{world.backend.address}:{config.SERVER_PORT}"]
    # The internal port (pre-warm, metrics) is no route: only the Service's http port is behind the Ingress.
    status, _ = via_traefik(world.traefik, "/internal/prewarm", HOST)
    assert status == 404
    # A request for another host is not routed to the server at all.
    status, _ = via_traefik(world.traefik, "/healthz", host="elsewhere.test")
    assert status == 404


async def test_the_dashboard_of_a_dead_session_through_the_controller(world: World, tmp_path):
    answers: list[tuple[str, int]] = []
    async with chromium(tmp_path / "profile", world.host_rules) as browser:
        page = await browser.new_page()
        page.on("response", lambda r: answers.append((r.url, r.status)))
        session = world.session_url(world.fixture)
        async with screenshot_on_failure(page, "ingress-dashboard"):
            # the picker, at the Ingress's root: every session of the store
            await page.goto(world.base)
            await page.wait_for_function("document.querySelectorAll('tr.session').length === 3")
            await shot(page, "ingress-01-picker")
            # a cold session: the loading page, then the dashboard, under the session's prefix
            await page.locator("tr.session", has_text="demo").get_by_role("link", name=SESSION_NAME).click()
            await page.wait_for_url(session + "#/overview")
            await page.get_by_text("Cluster status and autoscaler").first.wait_for()
            # jobs, the driver job's failed task
            await page.goto(session + "#/jobs")
            await page.get_by_text("fixture_submitted_job_ok").first.wait_for()
            await shot(page, "ingress-02-jobs")
            await page.goto(session + "#/jobs/01000000")
            await show_failed_task(page, "boom")
            await shot(page, "ingress-03-failed-task")
            # a log file, in the log viewer
            await page.goto(session + f"#/logs/?nodeId={HEAD_NODE_ID}")
            await page.get_by_role("link", name="raylet.out").click()
            await page.get_by_text("Per-worker process group cleanup is ENABLED").first.wait_for()
            await shot(page, "ingress-04-log-file")
    ours = [(u, s) for u, s in answers if u.startswith(world.base)]
    assert ours and not [u for u, _ in answers if world.backend.address in u]  # the browser never saw the server
    assert [a for a in ours if a[1] >= 500] == []
    # the dashboard's API calls went through the controller, under the session's prefix
    assert any(u.startswith(session + "api/") for u, _ in ours)


async def test_a_cold_load_longer_than_the_controllers_timeout_opens_the_dashboard(world: World, tmp_path):
    """The big session's first load outlasts the controller's response timeout; the loading page answers at once
    and polls, so the user sees it and then the dashboard, never the controller's gateway error."""
    answers: list[tuple[str, int]] = []
    session = world.session_url(world.big)
    async with chromium(tmp_path / "profile", world.host_rules) as browser:
        page = await browser.new_page()
        page.on("response", lambda r: answers.append((r.url, r.status)))
        async with screenshot_on_failure(page, "ingress-cold-load"):
            await page.goto(world.base)
            async with page.expect_response(session) as first:
                await page.locator(f'tr.session a[href$="/{world.big.cluster}/{world.big.session}/"]').click()
            assert "Loading the session" in await (await first.value).text()
            # (no networkidle wait: the loading page polls)
            await page.screenshot(path=str(SCREENSHOTS / "ingress-05-loading.png"))
            await page.wait_for_url(session + "#/overview", timeout=240_000)
            await page.get_by_text("Cluster status and autoscaler").first.wait_for(timeout=120_000)
            await shot(page, "ingress-06-big-overview")
    status, body = via_traefik(world.traefik, f"s/{world.big.namespace}/{world.big.cluster}/{world.big.session}/"
                                              "rayhistory/status", HOST)
    assert status == 200
    loaded = json.loads(body)
    assert loaded["ready"] and loaded["tasks"] == BIG_TASKS
    assert loaded["progress"]["source"] == "raw"
    # the point: the load took longer than the controller waits for an answer
    assert loaded["progress"]["elapsed_s"] > RESPONSE_HEADER_TIMEOUT_S, loaded["progress"]
    polls = [s for u, s in answers if u.startswith(session + "rayhistory/status")]
    assert len(polls) >= 2, polls
    assert [a for a in answers if a[1] in GATEWAY_ERRORS] == []


def test_without_the_loading_page_the_same_cold_load_is_a_gateway_timeout(world: World):
    """The counterpart, so the test above cannot pass for the wrong reason: an API call that waits for the cold
    load gets the controller's own 504 once its timeout passes (the load itself goes on, bound to the server)."""
    ref = world.cold_spare
    t0 = time.monotonic()
    status, body = via_traefik(world.traefik, f"s/{ref.namespace}/{ref.cluster}/{ref.session}/api/v0/tasks?limit=1",
                               HOST)
    waited = time.monotonic() - t0
    assert status == 504 and b"Gateway Timeout" in body, (status, body[:200])
    assert RESPONSE_HEADER_TIMEOUT_S <= waited < RESPONSE_HEADER_TIMEOUT_S + 15


async def test_a_jobs_timeline_downloads_whole_through_the_controller(world: World, tmp_path):
    """The dashboard's "Download trace file" for one job of the big session: ~15 MB through Traefik, byte for
    byte what the server answers on its own address."""
    session = world.session_url(world.big)
    async with chromium(tmp_path / "profile", world.host_rules) as browser:
        page = await browser.new_page()
        async with screenshot_on_failure(page, "ingress-timeline"):
            await page.goto(session + f"#/jobs/{BIG_JOB}")
            async with page.expect_download(timeout=240_000) as download_info:
                await page.get_by_text("Download trace file").first.click(timeout=240_000)
            download = await download_info.value
            saved = tmp_path / "timeline.json"
            await download.save_as(saved)
            await shot(page, "ingress-07-job-timeline")
    got = saved.read_bytes()
    assert len(got) > 10 << 20, len(got)
    url = download.url
    assert url.startswith(session), url
    direct = await asyncio.to_thread(fetch, world.backend_base + url[len(world.base):], 120)
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(direct).hexdigest()
    trace = json.loads(got)
    # one job of four: a quarter of the tasks, each with its execute span
    assert sum(1 for e in trace if e.get("name") == "task:execute") == BIG_TASKS // 4


# ---- TLS: the certificate of a Secret the RayHistory names, from a CA of the test's own ----

@dataclass
class Secure:
    ca: trustme.CA
    spki_pin: str  # what Chromium is told to accept: exactly this certificate's key

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context


def tls_secret(name: str, cert: trustme.LeafCert) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": name, "namespace": NS},
            "stringData": {"tls.crt": b"".join(p.bytes() for p in cert.cert_chain_pems).decode(),
                           "tls.key": cert.private_key_pem.bytes().decode()}}


def spki_sha256(cert_pem: bytes) -> str:
    key = x509.load_pem_x509_certificate(cert_pem).public_key()
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def https_get(world: World, context: ssl.SSLContext, path: str, host: str = TLS_HOST) -> tuple[int, bytes, dict]:
    """GET over TLS to Traefik's websecure entry point, SNI and Host `host`, verified with `context`."""
    conn = http.client.HTTPSConnection(host, world.traefik.websecure_port, context=context, timeout=60)
    conn.sock = context.wrap_socket(socket.create_connection(("127.0.0.1", world.traefik.websecure_port), 10),
                                    server_hostname=host)
    try:
        conn.request("GET", path, headers={"Host": host})
        resp = conn.getresponse()
        return resp.status, resp.read(), {"cert": conn.sock.getpeercert()}
    finally:
        conn.close()


@pytest.fixture(scope="module")
def secure(world: World) -> Secure:
    """A second RayHistory whose Ingress has TLS for its host from a Secret (spec.ingress.tls[].secretName)."""
    ca = trustme.CA()
    cert = ca.issue_cert(TLS_HOST)
    world.k8s.apply_docs([tls_secret(TLS_SECRET, cert)])
    doc = rayhistory_doc("secure", world.store_url, {
        "host": TLS_HOST, "tls": [{"hosts": [TLS_HOST], "secretName": TLS_SECRET}]})
    _, _, ingress = apply_server_objects(world.k8s, doc, world.backend)
    assert ingress["spec"]["tls"] == [{"hosts": [TLS_HOST], "secretName": TLS_SECRET}]
    found = Secure(ca, spki_sha256(cert.cert_chain_pems[0].bytes()))
    wait_for("Traefik to serve the Secret's certificate", lambda: https_get(world, found.context(), "/healthz")[0] == 200,
             timeout=60)
    return found


def test_tls_with_the_secrets_certificate(world: World, secure: Secure):
    """Verified against the test's CA for the Ingress's host; a client that trusts only the system's CAs refuses
    it; another host name on the same entry point gets Traefik's own certificate, not the Secret's."""
    status, body, info = https_get(world, secure.context(), "/clusters?limit=10")
    assert status == 200 and json.loads(body)
    assert ("DNS", TLS_HOST) in info["cert"]["subjectAltName"]
    with pytest.raises(ssl.SSLCertVerificationError):
        https_get(world, ssl.create_default_context(), "/healthz")
    with pytest.raises(ssl.SSLCertVerificationError):
        https_get(world, secure.context(), "/healthz", host=HOST)


async def test_the_dashboard_over_tls_in_the_browser(world: World, secure: Secure, tmp_path):
    """Chromium accepts exactly the Secret's certificate (its key pinned; anything Traefik served instead, its own
    default certificate included, fails the navigation) and shows the picker and a dashboard over https."""
    base = f"https://{TLS_HOST}:{world.traefik.websecure_port}/"
    args = [f"--host-resolver-rules=MAP {TLS_HOST} 127.0.0.1", f"--ignore-certificate-errors-spki-list={secure.spki_pin}"]
    async with chromium(tmp_path / "profile", args) as browser:
        page = await browser.new_page()
        async with screenshot_on_failure(page, "ingress-tls"):
            answer = await page.goto(base)
            assert answer.ok and (await answer.security_details() or {}).get("protocol", "").startswith("TLS")
            await page.wait_for_function("document.querySelectorAll('tr.session').length === 3")
            await shot(page, "ingress-08-tls-picker")
            session = f"{base}s/{world.fixture.namespace}/{world.fixture.cluster}/{world.fixture.session}/"
            await page.goto(session + "#/jobs")
            await page.get_by_text("fixture_submitted_job_ok").first.wait_for()
            await shot(page, "ingress-09-tls-jobs")
