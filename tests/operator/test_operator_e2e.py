"""The operator against an emulated Kubernetes API (tests/kube_api.py), for what the real control plane
of test_k8s_operator.py cannot check: the self-signed variant's managed webhook configuration (Kopf
writes URL and caBundle itself), a RayCluster input so broken that KubeRay's real CRD schema would
refuse it before our webhook, and every request the operator sent, request by request, against the
self-signed variant's ClusterRole. Everything else (reconcile, injection into KubeRay's Pods,
deletion, retention, RBAC as the API server enforces it) is tested on the real control plane.

What is real here: the operator (Kopf, run by kopf.testing.KopfRunner with --standalone) and its HTTPS
admission webhook (certificates from trustme), kubectl applying the project's own manifests, the
history store (S3: moto's server), the pre-warm endpoint (the real `rayhistory server`).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import trustme
import yaml
from kopf.testing import KopfRunner

from rayhistory.index import SessionIndex
from rayhistory.operator import config
from rayhistory.operator.main import Settings, build_kopf_settings, build_registry, kopf_run_args
from rayhistory.store import Store
from tests.conftest import free_port
from tests.backends import S3_KEY, S3_SECRET, RunningBackend, moto_s3
from tests.k8s.cluster import kubectl_path
from tests.kube_api import KubeAPI, running_kube_api, write_kubeconfig

KUBECTL = kubectl_path()  # the one built in .tools first: not every machine has kubectl
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(KUBECTL is None, reason="no kubectl: `make k8s-tools` builds one"),
]

ROOT = Path(__file__).resolve().parents[2]
HISTORY_NS = "rayhistory-system"
CLUSTER_NS = "default"
TOKEN = "prewarm-secret"
NODE_HEAD = "1" * 56
NODE_WORKER = "2" * 56
WEBHOOK_CONFIG = "rayhistory-operator"  # the name deploy/operator-selfsigned gives it
FINALIZER_DEADLINE = 12.0
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET}


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30.0, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


def run(coro):
    return asyncio.run(coro)


class Env:
    """Everything a test needs: the API, kubectl, the store."""

    def __init__(self, api: KubeAPI, kubeconfig: str, cache: str, storage_url: str, storage_options: dict):
        self.api = api
        self.kubeconfig = kubeconfig
        self.cache = cache
        self.storage_url = storage_url
        self.storage_options = storage_options
        client = kubernetes.config.new_client_from_config(config_file=kubeconfig)
        client.user_agent = "rayhistory-tests"
        self.core = kubernetes.client.CoreV1Api(client)
        self.custom = kubernetes.client.CustomObjectsApi(client)

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        result = subprocess.run([KUBECTL, "--kubeconfig", self.kubeconfig, "--cache-dir", self.cache, *args],
                                input=stdin, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
        return result.stdout

    def apply(self, docs: list[dict]) -> None:
        self.kubectl("apply", "--validate=false", "-f", "-", stdin=yaml.safe_dump_all(docs))

    def get(self, group: str, version: str, plural: str, namespace: str | None, name: str) -> dict | None:
        return self.api.get_object(group, version, plural, namespace, name)

    def raycluster(self, name: str) -> dict | None:
        return self.get(config.RAY_GROUP, config.RAY_VERSION, config.RAYCLUSTER_PLURAL, CLUSTER_NS, name)

    def store(self) -> Store:
        return Store(self.storage_url, self.storage_options)

    def sessions(self, cluster: str):
        async def go():
            return {s.session: s for s in await SessionIndex(self.store()).sessions(CLUSTER_NS, cluster)}
        return run(go())


def render(base: str) -> list[dict]:
    out = subprocess.run([KUBECTL, "kustomize", str(ROOT / base)], capture_output=True, text=True, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.fixture(scope="module")
def tmp_module(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("operator-e2e")


@pytest.fixture(scope="module")
def webhook_cert_dir(tmp_module: Path) -> Path:
    """A cert-manager style Secret's files (tls.crt, tls.key, ca.crt), made with trustme."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    folder = tmp_module / "webhook-tls"
    folder.mkdir()
    cert.private_key_pem.write_to_path(str(folder / "tls.key"))
    (folder / "tls.crt").write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    ca.cert_pem.write_to_path(str(folder / "ca.crt"))
    return folder


@pytest.fixture(scope="module")
def s3() -> Iterator[RunningBackend]:
    with moto_s3() as backend:
        yield backend


def s3_spec(backend: RunningBackend) -> dict:
    """What a RayHistory says about the store: URL and endpoint; the credentials come from the environment."""
    return {"url": backend.url, "options": {"endpoint_url": backend.endpoint}}


@pytest.fixture(scope="module")
def server(tmp_module: Path, s3: RunningBackend) -> Iterator[str]:
    """The real `rayhistory server` on the test's store; yields the base URL of its internal port."""
    port, internal = free_port(), free_port()
    log = open(tmp_module / "server.log", "wb")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "rayhistory"), "server", "--storage", s3.url,
         "--storage-options", json.dumps(s3_spec(s3)["options"]),
         "--host", "127.0.0.1", "--port", str(port), "--internal-port", str(internal), "--prewarm-token", TOKEN,
         "--log-format", "text"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **S3_CREDENTIALS},
    )
    url = f"http://127.0.0.1:{internal}"
    try:
        def healthy() -> bool:
            assert proc.poll() is None, (tmp_module / "server.log").read_text()
            try:
                return urllib.request.urlopen(url + "/healthz", timeout=1).status == 200
            except OSError:
                return False
        wait_for("the history server", healthy, timeout=60)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


@pytest.fixture(scope="module")
def env(tmp_module: Path, webhook_cert_dir: Path, s3: RunningBackend, server: str) -> Iterator[Env]:
    with running_kube_api() as (api, url), pytest.MonkeyPatch.context() as mp:
        for name, value in S3_CREDENTIALS.items():  # the operator's pod gets these from a Secret
            mp.setenv(name, value)
        kubeconfig = write_kubeconfig(str(tmp_module / "kubeconfig"), url)
        mp.setenv("KUBECONFIG", kubeconfig)
        # The kubernetes client reads $KUBECONFIG once, at import: point its default at ours too.
        mp.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", kubeconfig)
        mp.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        e = Env(api, kubeconfig, str(tmp_module / "kubectl-cache"), s3.url, s3_spec(s3)["options"])
        e.kubectl("apply", "--validate=false", "-f", str(ROOT / "crds" / "rayhistory.yaml"))
        e.kubectl("apply", "--validate=false", "-f", str(ROOT / "tests" / "operator" / "raycluster-crd.yaml"))
        settings = Settings(
            webhook_addr="127.0.0.1", webhook_port=free_port(), webhook_host="127.0.0.1",
            webhook_cert_dir=str(webhook_cert_dir), webhook_managed_config=WEBHOOK_CONFIG,
            finalizer_deadline=FINALIZER_DEADLINE, finalizer_poll_interval=0.5, retention_interval=1.0,
            superseded_grace=365 * 86400.0,  # head-restart closing is tested in test_retention.py; not here
            prewarm_url=server, prewarm_token=TOKEN, prewarm_timeout=5.0, liveness_port=0,
            metrics_port=free_port(),
        )
        e.settings = settings
        args = kopf_run_args(settings)
        with KopfRunner(args, registry=build_registry(settings), settings=build_kopf_settings(settings),
                        timeout=60) as runner:
            # Kopf writes the webhook configuration once it has discovered rayclusters.
            wait_for("the managed webhook configuration", lambda: any(
                w.get("clientConfig", {}).get("url") for w in (e.get(
                    "admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations", None, WEBHOOK_CONFIG)
                    or {}).get("webhooks", [])))
            yield e
        print(runner.output[-5000:])  # shown by pytest when a test of this module failed


@pytest.fixture(scope="module")
def history(env: Env) -> dict:
    """The example RayHistory, applied with kubectl, with its storage pointed at the test's store."""
    (doc,) = [d for d in render("deploy/examples") if d["kind"] == "RayHistory"]
    doc["spec"]["storage"] = {"url": env.storage_url, "options": env.storage_options}
    env.apply([doc])
    return wait_for("the RayHistory to be reconciled", lambda: (
        (h := env.get(config.GROUP, config.VERSION, config.HISTORY_PLURAL, HISTORY_NS, "history"))
        and h.get("status", {}).get("serverURL") and h))


def example_cluster(name: str = "demo", **annotations: str) -> dict:
    (doc,) = [d for d in render("deploy/examples") if d["kind"] == "RayCluster"]
    doc["metadata"]["name"] = name
    if annotations:
        doc["metadata"]["annotations"] = annotations
    return doc


# ---- injection ----------------------------------------------------------------------------------

def test_webhook_configuration_never_blocks(env: Env, history: dict):
    webhooks = env.get("admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations", None,
                       WEBHOOK_CONFIG)["webhooks"]
    assert [w["failurePolicy"] for w in webhooks] == ["Ignore"]
    assert webhooks[0]["rules"][0]["resources"] == ["rayclusters"]
    assert webhooks[0]["rules"][0]["operations"] == ["CREATE", "UPDATE"]


def test_raycluster_comes_back_injected(env: Env, history: dict):
    env.apply([example_cluster("demo")])
    cluster = env.raycluster("demo")
    assert cluster["metadata"]["annotations"][config.HISTORY_ANNOTATION] == f"{HISTORY_NS}/history"
    assert config.FINALIZER in cluster["metadata"]["finalizers"]
    groups = [cluster["spec"]["headGroupSpec"]] + cluster["spec"]["workerGroupSpecs"]
    for group in groups:
        names = [c["name"] for c in group["template"]["spec"]["containers"]]
        assert names[1:] == [config.COLLECTOR_CONTAINER]
        ray_env = {e["name"]: e["value"] for e in group["template"]["spec"]["containers"][0]["env"]}
        assert ray_env["RAY_DASHBOARD_AGGREGATOR_AGENT_EVENTS_EXPORT_ADDR"] == "http://127.0.0.1:8084/v1/events"
        collector_env = {e["name"]: e["value"] for e in group["template"]["spec"]["containers"][1]["env"]}
        assert collector_env["RAYHISTORY_STORAGE"] == env.storage_url
        assert collector_env["RAYHISTORY_CLUSTER_NAME"] == "demo"
    assert env.api.admission_log[-1]["patched"] is True


def test_broken_webhook_input_still_admits_the_cluster(env: Env, history: dict):
    broken = {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "broken"},
              "spec": {"headGroupSpec": "this is not a head group", "workerGroupSpecs": 42}}
    env.custom.create_namespaced_custom_object("ray.io", "v1", CLUSTER_NS, "rayclusters", broken)
    cluster = env.raycluster("broken")
    assert cluster["spec"] == broken["spec"]
    assert "finalizers" not in cluster["metadata"]
    review = env.api.admission_log[-1]
    assert review["name"] == "broken" and review["allowed"] is True and "patched" not in review
    assert any("not injected" in w for w in review["warnings"])


# ---- RBAC ---------------------------------------------------------------------------------------

def rbac_verb(method: str, named: bool, params: dict) -> str:
    if method == "GET":
        return "watch" if params.get("watch") in ("true", "1") else ("get" if named else "list")
    if method == "DELETE":
        return "delete" if named else "deletecollection"
    return {"POST": "create", "PATCH": "patch", "PUT": "update"}[method]


def test_cluster_role_covers_every_api_call_the_operator_made(env: Env, history: dict):
    """Runs last in this module: every request Kopf and the operator sent above must be allowed by the
    self-signed variant's role (the managed webhook configuration is what only this module runs)."""
    (role,) = [d for d in render("deploy/operator-selfsigned") if d["kind"] == "ClusterRole"
               and d["metadata"]["name"] == "rayhistory-operator"]

    def allowed(group: str, resource: str, verb: str, name: str | None) -> bool:
        return any(group in rule["apiGroups"] and resource in rule["resources"] and verb in rule["verbs"]
                   and (not rule.get("resourceNames") or name in rule["resourceNames"]) for rule in role["rules"])

    calls = set()
    for request in env.api.requests:
        agent = request.headers.get("User-Agent", "")
        if not agent.startswith(("kopf/", "rayhistory-operator")) or request.resource is None \
                or request.resource.plural is None:
            continue  # discovery paths are open to every authenticated user
        resource = request.resource.plural + (f"/{request.subresource}" if request.subresource else "")
        calls.add((request.resource.group, resource, rbac_verb(request.method.value, request.name is not None,
                                                               dict(request.params)), request.name))
    denied = sorted(c for c in calls if not allowed(*c))
    assert not denied, f"calls the ClusterRole does not allow: {denied}"
    made = {(g, r, v) for g, r, v, _ in calls}
    # The check covered the calls that matter (it is not vacuous).
    assert {("ray.io", "rayclusters", "watch"), ("apps", "deployments", "create"),
            ("rayhistory.io", "rayhistories/status", "patch"),
            ("admissionregistration.k8s.io", "mutatingwebhookconfigurations", "create"),
            ("admissionregistration.k8s.io", "mutatingwebhookconfigurations", "patch")} <= made
