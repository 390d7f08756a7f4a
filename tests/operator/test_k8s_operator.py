"""The operator against a real Kubernetes control plane and the real KubeRay operator.

What is real: etcd, kube-apiserver (RBAC, admission chain, CRD schemas), kube-controller-manager
(garbage collector, namespaces, service accounts), KubeRay v1.5.0 with its own CRDs, the operator
(`rayhistory operator`, a process of its own, authenticated with a token of its ServiceAccount and bound
to exactly deploy/operator's ClusterRole), its HTTPS webhook (called by the API server by URL), the
history store (file://) and the pre-warm endpoint of a real `rayhistory server`.
What is not: no kubelet or scheduler, so Pods stay Pending and no Ray runs; the tests play the
collectors' index records (live, flushed) where a Ray session would write them.

Run alone: `make test-k8s` (or `.venv/bin/pytest -m k8s`). Binaries: `make k8s-tools`.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime
import gzip
import json
import os
import re
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
import yaml

from rayhistory import layout
from rayhistory.index import IndexRecord, SessionIndex, encode_record
from rayhistory.layout import IndexKind, SessionRef
from rayhistory.operator import config
from rayhistory.platform_events import PlatformEventRecord, decode_batch, merge_records
from rayhistory.store import Store
from tests.conftest import HEAD_NODE_ID, SESSION_NAME, free_port, received_bodies
from tests.k8s.cluster import Cluster, Process, child_env, wait_for

pytestmark = [pytest.mark.k8s, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
OVERLAY = ROOT / "tests" / "operator" / "k8s-overlay"
SYSTEM_NS = "rayhistory-system"
NS = "default"
OPERATOR_SA = f"system:serviceaccount:{SYSTEM_NS}:rayhistory-operator"
PREWARM_TOKEN = "prewarm-secret"
FINALIZER_DEADLINE = 20.0
SHUTDOWN_GRACE = 40  # the test RayHistory's collector.shutdownGrace: pods get at least 50 s of grace
NODE_WORKER = "2" * 56
# A newer session of the same cluster closes the older one after this long (head restart). Every other
# test keeps one session per cluster, or sessions far apart in clusters of their own.
SUPERSEDED_GRACE = 600
# How Kopf and the kubernetes client log a refused request (not a "403" inside a uid).
REFUSED = re.compile(r"(?<![0-9a-fA-F-])403(?![0-9a-fA-F-])|forbidden", re.IGNORECASE)


def run(coro):
    return asyncio.run(coro)


class Operator:
    """`rayhistory operator` as a process, as the Deployment runs it, with its ServiceAccount's token."""

    def __init__(self, k8s: Cluster, folder: Path, kubeconfig: Path, cert_dir: Path, prewarm_url: str,
                 webhook_port: int):
        self.webhook_port, self.liveness_port, self.metrics_port = webhook_port, free_port(), free_port()
        argv = [
            str(Path(sys.executable).parent / "rayhistory"), "operator", "--log-format", "text",
            "--webhook-addr", "127.0.0.1", "--webhook-port", str(self.webhook_port),
            "--webhook-cert-dir", str(cert_dir),
            "--finalizer-deadline", str(FINALIZER_DEADLINE), "--finalizer-poll-interval", "0.5",
            "--retention-interval", "2", "--superseded-grace", str(SUPERSEDED_GRACE),
            "--prewarm-url", prewarm_url, "--prewarm-token", PREWARM_TOKEN, "--prewarm-timeout", "10",
            "--liveness-port", str(self.liveness_port), "--metrics-port", str(self.metrics_port),
            "--platform-events-flush-interval", "1",
        ]
        self.process = Process("rayhistory-operator", argv, folder, env=child_env(KUBECONFIG=str(kubeconfig)))
        k8s.processes["rayhistory-operator"] = self.process  # its log is shown with the others on failure

    def start(self) -> None:
        self.process.start()

        def healthy() -> bool:
            self.process.check_alive()
            with urllib.request.urlopen(f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=5) as resp:
                return resp.status == 200
        wait_for("the operator's /healthz", healthy, timeout=90)

    def metrics(self) -> dict[str, float]:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                for line in text.splitlines() if line and not line.startswith("#")}


class World:
    def __init__(self, k8s: Cluster, folder: Path, store_url: str):
        self.k8s = k8s
        self.folder = folder
        self.store_url = store_url
        self.operator: Operator | None = None
        self.public_url = ""  # the real server's public port

    def store(self) -> Store:
        return Store(self.store_url, {})

    def sessions(self, cluster: str) -> dict:
        async def go():
            return {s.session: s for s in await SessionIndex(self.store()).sessions(NS, cluster)}
        return run(go())

    def write_record(self, ref: SessionRef, kind: IndexKind, node_ids: list[str], **fields) -> None:
        at_ms = layout.now_ms()
        record = IndexRecord(kind=kind.value, namespace=ref.namespace, cluster=ref.cluster, session=ref.session,
                             at_ms=at_ms, writer="collector1", node_ids=node_ids, **fields)
        run(self.store().put(layout.index_record_key(ref, kind, "collector1", at_ms), encode_record(record)))

    def raycluster(self, name: str) -> dict | None:
        return self.k8s.get("raycluster", name, "-n", NS)

    def pods(self, cluster: str) -> list[dict]:
        return self.k8s.get("pods", "-n", NS, "-l", f"ray.io/cluster={cluster}")["items"]

    def events(self, namespace: str, name: str, reason: str) -> list[str]:
        items = self.k8s.get("events", "-n", namespace,
                             "--field-selector", f"involvedObject.name={name},reason={reason}")["items"]
        return [e["message"] for e in items]


def render(k8s: Cluster, path: Path) -> list[dict]:
    """`kubectl kustomize`, with the kubectl built here (not every machine has one)."""
    return [d for d in yaml.safe_load_all(k8s.kubectl("kustomize", str(path))) if d]


def webhook_certs(folder: Path) -> tuple[Path, bytes]:
    """A cert-manager style Secret's files for the webhook on 127.0.0.1, and the CA for the caBundle."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    folder.mkdir()
    cert.private_key_pem.write_to_path(str(folder / "tls.key"))
    (folder / "tls.crt").write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    ca.cert_pem.write_to_path(str(folder / "ca.crt"))
    return folder, ca.cert_pem.bytes()


def loopback_overlay(folder: Path, webhook_port: int, ca_pem: bytes) -> Path:
    """tests/operator/k8s-overlay plus the operator's port and CA (known only now), in `folder`."""
    folder.mkdir()
    config_patch = [{"op": "replace", "path": "/webhooks/0/clientConfig", "value": {
        "url": f"https://127.0.0.1:{webhook_port}/inject", "caBundle": base64.b64encode(ca_pem).decode()}}]
    (folder / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(OVERLAY, folder)],
        "patches": [{"target": {"kind": "MutatingWebhookConfiguration", "name": "rayhistory-operator"},
                     "patch": json.dumps(config_patch)}],
    }))
    return folder


@pytest.fixture(scope="module")
def prewarm_server(tmp_path_factory) -> Iterator[tuple[str, str, str]]:
    """The real `rayhistory server` on the test's file store; yields (store URL, internal base URL, public
    base URL)."""
    folder = tmp_path_factory.mktemp("k8s-store")
    store_url = f"file://{folder / 'store'}"
    (folder / "store").mkdir()
    port, internal = free_port(), free_port()
    proc = Process("rayhistory-server", [
        str(Path(sys.executable).parent / "rayhistory"), "server", "--storage", store_url,
        "--host", "127.0.0.1", "--port", str(port), "--internal-port", str(internal),
        "--prewarm-token", PREWARM_TOKEN, "--log-format", "text", "--index-refresh-interval", "1"], folder).start()
    url = f"http://127.0.0.1:{internal}"
    try:
        def healthy() -> bool:
            proc.check_alive()
            return urllib.request.urlopen(url + "/healthz", timeout=2).status == 200
        wait_for("the history server", healthy, timeout=60)
        yield store_url, url, f"http://127.0.0.1:{port}"
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def world(k8s: Cluster, tmp_path_factory, prewarm_server) -> Iterator[World]:
    """crds/ and deploy/operator applied with kubectl (webhook by loopback URL); the operator running
    under its own ServiceAccount's token."""
    folder = tmp_path_factory.mktemp("k8s-operator")
    store_url, prewarm_url, public_url = prewarm_server
    cert_dir, ca_pem = webhook_certs(folder / "webhook-tls")
    w = World(k8s, folder, store_url)
    w.public_url = public_url
    # The port first: the overlay needs it.
    operator_port = free_port()
    overlay = loopback_overlay(folder / "overlay", operator_port, ca_pem)
    k8s.kubectl("apply", "--server-side", "-k", str(overlay))
    k8s.wait_established("rayhistories.rayhistory.io")
    token = k8s.kubectl("create", "token", "rayhistory-operator", "-n", SYSTEM_NS, "--duration=4h").strip()
    kubeconfig = k8s.kubeconfig_for_token("rayhistory-operator", token)
    w.operator = Operator(k8s, folder, kubeconfig, cert_dir, prewarm_url, operator_port)
    _EXAMPLES[:] = render(k8s, ROOT / "deploy" / "examples")
    w.operator.start()
    try:
        yield w
    finally:
        w.operator.process.stop()


_EXAMPLES: list[dict] = []


def example(kind: str) -> dict:
    """A document of deploy/examples (rendered once per module by the `world` fixture)."""
    (doc,) = [d for d in _EXAMPLES if d["kind"] == kind]
    return copy.deepcopy(doc)


@pytest.fixture(scope="module")
def history(world: World) -> dict:
    """The example RayHistory, storage pointed at the test's store, applied with kubectl."""
    doc = example("RayHistory")
    doc["spec"]["storage"] = {"url": world.store_url}
    doc["spec"]["collector"]["shutdownGrace"] = SHUTDOWN_GRACE
    world.k8s.apply_docs([doc])
    return wait_for("the RayHistory to be reconciled", lambda: (
        (h := world.k8s.get("rayhistory", "history", "-n", SYSTEM_NS))
        and h.get("status", {}).get("serverURL") and h), timeout=90)


def cluster_doc(name: str, workers: int = 2, labels: dict | None = None, annotations: dict | None = None) -> dict:
    doc = example("RayCluster")
    doc["metadata"]["name"] = name
    if labels:
        doc["metadata"]["labels"] = labels
    if annotations:
        doc["metadata"]["annotations"] = annotations
    doc["spec"]["workerGroupSpecs"][0]["replicas"] = workers
    return doc


def create_cluster(world: World, doc: dict, workers: int) -> list[dict]:
    """`kubectl apply` (client-side, as users do) and wait for KubeRay's head and worker Pods."""
    path = world.folder / f"{doc['metadata']['name']}.yaml"
    path.write_text(yaml.safe_dump(doc))
    world.k8s.kubectl("apply", "-f", str(path))
    name = doc["metadata"]["name"]
    return wait_for(f"KubeRay's pods of {name}", lambda: (
        (pods := world.pods(name)) and len(pods) == 1 + workers and pods), timeout=90)


def containers(pod: dict) -> dict[str, dict]:
    return {c["name"]: c for c in pod["spec"]["containers"]}


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


# ---- 1. the manifests on a real API server -------------------------------------------------------

def test_operator_runs_as_its_service_account(world: World):
    who = json.loads(world.k8s.kubectl("auth", "whoami", "-o", "json", user="rayhistory-operator"))
    assert who["status"]["userInfo"]["username"] == OPERATOR_SA
    binding = world.k8s.get("clusterrolebinding", "rayhistory-operator")
    assert binding["roleRef"]["name"] == "rayhistory-operator"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "rayhistory-operator", "namespace": SYSTEM_NS}]


def test_invalid_rayhistory_is_refused_with_the_schema_message(world: World):
    doc = {"apiVersion": "rayhistory.io/v1alpha1", "kind": "RayHistory",
           "metadata": {"name": "bad", "namespace": SYSTEM_NS},
           "spec": {"storage": {"url": "ftp://nowhere/x"}, "retention": {"maxAge": "a month"},
                    "collector": {"shutdownGrace": 0}}}
    result = world.k8s.kubectl_result("create", "-f", "-", stdin=yaml.safe_dump(doc))
    assert result.returncode != 0
    err = result.stderr
    assert "The RayHistory \"bad\" is invalid" in err, err
    assert "spec.storage.url" in err and "should match '^(file|s3|s3a|gs|gcs|abfs|abfss|az|oss|memory)://.+'" in err
    assert "spec.retention.maxAge" in err
    assert "spec.collector.shutdownGrace" in err and "should be greater than or equal to 1" in err
    assert world.k8s.get("rayhistory", "bad", "-n", SYSTEM_NS) is None
    # The required storage too:
    result = world.k8s.kubectl_result("create", "-f", "-", stdin=yaml.safe_dump(dict(doc, spec={})))
    assert result.returncode != 0 and "spec.storage: Required value" in result.stderr, result.stderr


def test_ordinary_user_cannot_touch_rayhistories(world: World):
    doc = example("RayHistory")
    result = world.k8s.kubectl_result("create", "-f", "-", stdin=yaml.safe_dump(doc), user="alice")
    assert result.returncode != 0 and "Forbidden" in result.stderr, result.stderr


# ---- 2. RayHistory -> server objects, and their garbage collection --------------------------------

def test_rayhistory_reconciles_its_server_objects(world: World, history: dict):
    k8s = world.k8s
    uid = history["metadata"]["uid"]
    objects = {kind: k8s.get(kind, "history-server", "-n", SYSTEM_NS)
               for kind in ("deployment", "service", "ingress", "serviceaccount")}
    for kind, obj in objects.items():
        assert obj is not None, kind
        assert [(r["kind"], r["name"], r["uid"]) for r in obj["metadata"]["ownerReferences"]] == [
            ("RayHistory", "history", uid)], kind
    deployment = objects["deployment"]
    assert deployment["spec"]["replicas"] == 2
    pod_spec = deployment["spec"]["template"]["spec"]
    assert pod_spec["serviceAccountName"] == "history-server"
    assert env_of(pod_spec["containers"][0])["RAYHISTORY_STORAGE"] == world.store_url
    assert objects["service"]["spec"]["clusterIP"]  # allocated by the API server, never dialled
    assert objects["ingress"]["spec"]["rules"][0]["host"] == "ray-history.example.com"
    binding = k8s.get("clusterrolebinding", f"rayhistory-server-{SYSTEM_NS}-history")
    assert binding["roleRef"]["name"] == "rayhistory-server"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "history-server", "namespace": SYSTEM_NS}]
    # The server's ServiceAccount may read what the live proxy needs and make the reviews --auth kubernetes
    # needs, and nothing more.
    sa = f"system:serviceaccount:{SYSTEM_NS}:history-server"
    assert k8s.kubectl("auth", "can-i", "list", "rayclusters.ray.io", "-A", "--as", sa).strip() == "yes"
    assert k8s.kubectl("auth", "can-i", "create", "tokenreviews.authentication.k8s.io", "--as", sa).strip() == "yes"
    assert k8s.kubectl("auth", "can-i", "create", "subjectaccessreviews.authorization.k8s.io",
                       "--as", sa).strip() == "yes"
    assert k8s.kubectl_result("auth", "can-i", "get", "secrets", "-A", "--as", sa).stdout.strip() == "no"
    assert "--auth" in pod_spec["containers"][0]["args"]
    args = pod_spec["containers"][0]["args"]
    assert args[args.index("--auth") + 1] == "kubernetes"
    status = history["status"]
    assert status["serverURL"] == "https://ray-history.example.com/"
    assert [(c["type"], c["status"]) for c in status["conditions"]] == [("Ready", "True")]


def test_deleting_a_rayhistory_garbage_collects_its_objects(world: World, history: dict):
    k8s = world.k8s
    doc = {"apiVersion": "rayhistory.io/v1alpha1", "kind": "RayHistory",
           "metadata": {"name": "scratch", "namespace": SYSTEM_NS},
           "spec": {"storage": {"url": world.store_url}, "injection": {"enabled": False},
                    "ingress": {"enabled": True, "host": "scratch.example.com"}}}
    k8s.apply_docs([doc])
    kinds = ("deployment", "service", "ingress", "serviceaccount")
    wait_for("the scratch server's objects", lambda: all(
        k8s.get(kind, "scratch-server", "-n", SYSTEM_NS) for kind in kinds)
        and k8s.get("clusterrolebinding", f"rayhistory-server-{SYSTEM_NS}-scratch"), timeout=90)
    k8s.kubectl("delete", "rayhistory", "scratch", "-n", SYSTEM_NS, "--wait=false")
    # The operator's cleanup handler deletes the cluster-scoped binding; the controller-manager's
    # garbage collector deletes the namespaced objects by their owner reference.
    wait_for("the garbage collector", lambda: not any(
        k8s.get(kind, "scratch-server", "-n", SYSTEM_NS) for kind in kinds), timeout=120)
    wait_for("the binding to go", lambda: k8s.get(
        "clusterrolebinding", f"rayhistory-server-{SYSTEM_NS}-scratch") is None, timeout=60)
    assert k8s.get("rayhistory", "scratch", "-n", SYSTEM_NS) is None
    assert k8s.get("deployment", "history-server", "-n", SYSTEM_NS) is not None  # the other one stays
    assert k8s.get("clusterrolebinding", f"rayhistory-server-{SYSTEM_NS}-history") is not None


# ---- 3. RayCluster -> admission -> webhook -> KubeRay -> Pods ---------------------------------------

def assert_pod_injected(pod: dict, cluster: str, owner: tuple[str, str] = ("", "")) -> None:
    by_name = containers(pod)
    ray_name = pod["spec"]["containers"][0]["name"]
    assert config.COLLECTOR_CONTAINER in by_name, [c for c in by_name]
    ray, collector = by_name[ray_name], by_name[config.COLLECTOR_CONTAINER]
    ray_env, collector_env = env_of(ray), env_of(collector)
    assert ray_env["RAY_enable_ray_event"] == "true"
    assert ray_env["RAY_enable_core_worker_ray_event_to_aggregator"] == "true"
    assert ray_env["RAY_DASHBOARD_AGGREGATOR_AGENT_EVENTS_EXPORT_ADDR"] == "http://127.0.0.1:8084/v1/events"
    assert ray_env["RAY_DASHBOARD_AGGREGATOR_AGENT_EXPOSABLE_EVENT_TYPES"] == "ALL"
    assert collector_env["RAYHISTORY_CLUSTER_NAME"] == cluster
    assert collector_env["RAYHISTORY_NAMESPACE"] == NS
    assert (collector_env["RAYHISTORY_OWNER_KIND"], collector_env["RAYHISTORY_OWNER_NAME"]) == owner
    assert collector_env["RAYHISTORY_SHUTDOWN_GRACE"] == str(SHUTDOWN_GRACE)
    # One shared emptyDir at /tmp/ray in both containers.
    ray_tmp = {m["mountPath"]: m["name"] for m in ray["volumeMounts"]}["/tmp/ray"]
    collector_tmp = {m["mountPath"]: m["name"] for m in collector["volumeMounts"]}["/tmp/ray"]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert ray_tmp == collector_tmp and "emptyDir" in volumes[ray_tmp]
    assert "emptyDir" in volumes[config.SPOOL_VOLUME]
    # Long enough for the collector's final flush after SIGTERM.
    assert pod["spec"]["terminationGracePeriodSeconds"] >= SHUTDOWN_GRACE + 10


def assert_pod_untouched(pod: dict) -> None:
    assert config.COLLECTOR_CONTAINER not in containers(pod)
    assert not any(k.startswith("RAY_DASHBOARD_AGGREGATOR") for k in env_of(pod["spec"]["containers"][0]))


def test_kuberay_pods_carry_the_collector(world: World, history: dict):
    pods = create_cluster(world, cluster_doc("demo", workers=2), workers=2)
    types = sorted(p["metadata"]["labels"]["ray.io/node-type"] for p in pods)
    assert types == ["head", "worker", "worker"]
    for pod in pods:
        assert pod["status"]["phase"] == "Pending"  # no kubelet here
        assert [r["kind"] for r in pod["metadata"]["ownerReferences"]] == ["RayCluster"]
        assert_pod_injected(pod, "demo")
    head = next(p for p in pods if p["metadata"]["labels"]["ray.io/node-type"] == "head")
    assert env_of(containers(head)[config.COLLECTOR_CONTAINER])["RAYHISTORY_DASHBOARD_URL"] == "http://127.0.0.1:8265"
    cluster = world.raycluster("demo")
    assert config.FINALIZER in cluster["metadata"]["finalizers"]
    assert cluster["metadata"]["annotations"][config.HISTORY_ANNOTATION] == f"{SYSTEM_NS}/history"


def test_applying_the_cluster_twice_changes_nothing(world: World, history: dict):
    """A client-side `kubectl apply` of a custom resource replaces whole lists: without the webhook on
    UPDATE, re-applying the user's manifest stripped the collector from every pod template."""
    before = world.raycluster("demo")
    pods_before = sorted(p["metadata"]["uid"] for p in world.pods("demo"))
    world.k8s.kubectl("apply", "-f", str(world.folder / "demo.yaml"))
    after = world.raycluster("demo")
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    assert after["spec"] == before["spec"]
    time.sleep(3)  # give KubeRay a chance to (wrongly) act on a change
    assert sorted(p["metadata"]["uid"] for p in world.pods("demo")) == pods_before


def test_a_users_change_keeps_the_collector(world: World, history: dict):
    doc = yaml.safe_load((world.folder / "demo.yaml").read_text())
    doc["spec"]["workerGroupSpecs"][0]["replicas"] = 3
    (world.folder / "demo.yaml").write_text(yaml.safe_dump(doc))
    world.k8s.kubectl("apply", "-f", str(world.folder / "demo.yaml"))
    cluster = world.raycluster("demo")
    assert cluster["spec"]["workerGroupSpecs"][0]["replicas"] == 3
    pods = wait_for("KubeRay's third worker", lambda: len(p := world.pods("demo")) == 4 and p, timeout=90)
    for pod in pods:
        assert_pod_injected(pod, "demo")


def test_opted_out_and_unselected_clusters_are_left_alone(world: World, history: dict):
    for doc in (cluster_doc("private", workers=1, annotations={config.INJECT_ANNOTATION: "false"}),
                cluster_doc("sandbox", workers=1, labels={"environment": "scratch"})):
        pods = create_cluster(world, doc, workers=1)
        for pod in pods:
            assert_pod_untouched(pod)
        name = doc["metadata"]["name"]
        assert "finalizers" not in world.raycluster(name)["metadata"] or config.FINALIZER not in world.raycluster(
            name)["metadata"]["finalizers"]
        world.k8s.kubectl("delete", "raycluster", name, "-n", NS, "--wait=false")
        wait_for(f"{name} to go at once, without our finalizer", lambda: world.raycluster(name) is None, timeout=60)
        # The controller-manager's garbage collector removes KubeRay's pods.
        wait_for(f"the pods of {name} to be collected", lambda: world.pods(name) == [], timeout=120)


def test_with_the_webhook_down_the_cluster_is_still_created(world: World, history: dict):
    world.operator.process.stop()
    try:
        pods = create_cluster(world, cluster_doc("unguarded", workers=1), workers=1)
        for pod in pods:
            assert_pod_untouched(pod)
        cluster = world.raycluster("unguarded")
        assert config.FINALIZER not in cluster["metadata"].get("finalizers", [])
        assert config.HISTORY_ANNOTATION not in cluster["metadata"].get("annotations", {})
    finally:
        world.operator.start()
    world.k8s.kubectl("delete", "raycluster", "unguarded", "-n", NS, "--wait=false")
    wait_for("the unguarded cluster to go", lambda: world.raycluster("unguarded") is None, timeout=60)


# ---- 4. RayJob and RayService: the owner reaches the collector ------------------------------------

@pytest.mark.parametrize("kind", ["RayJob", "RayService"])
def test_owner_kind_and_name_reach_the_collector(world: World, history: dict, kind: str):
    name = f"owned-{kind.lower()}"
    cluster_spec = cluster_doc("unused", workers=1)["spec"]
    spec = ({"entrypoint": "python -c 'print(1)'", "rayClusterSpec": cluster_spec} if kind == "RayJob"
            else {"rayClusterConfig": cluster_spec})
    world.k8s.apply_docs([{"apiVersion": "ray.io/v1", "kind": kind, "metadata": {"name": name, "namespace": NS},
                           "spec": spec}])

    def owned_cluster() -> dict | None:
        for c in world.k8s.get("rayclusters", "-n", NS)["items"]:
            if any(r["kind"] == kind and r["name"] == name for r in c["metadata"].get("ownerReferences", [])):
                return c
        return None
    cluster = wait_for(f"KubeRay's RayCluster for the {kind}", owned_cluster, timeout=90)
    cname = cluster["metadata"]["name"]
    assert config.FINALIZER in cluster["metadata"]["finalizers"]
    pods = wait_for(f"the pods of {cname}", lambda: len(p := world.pods(cname)) == 2 and p, timeout=90)
    for pod in pods:
        assert_pod_injected(pod, cname, owner=(kind, name))
    # An Event about the owner is kept in its cluster's session
    ref = SessionRef(NS, cname, session_of_today(240))
    world.write_record(ref, IndexKind.LIVE, [HEAD_NODE_ID])
    owner = world.k8s.get(kind.lower(), name, "-n", NS)
    post_event(world, regarding(owner), "DeadlineExceeded", f"the {kind} ran out of time", "ray-operator", "Stopping")
    wait_for(f"the {kind}'s event in its cluster's session", lambda: any(
        (r.kind, r.name, r.reason) == (kind, name, "DeadlineExceeded") for r in kept_events(world, ref)), timeout=60)
    world.write_record(ref, IndexKind.FLUSHED, [HEAD_NODE_ID])
    # Deleting the owner deletes its cluster (garbage collector), which our finalizer records and releases.
    world.k8s.kubectl("delete", kind.lower(), name, "-n", NS, "--wait=false")
    wait_for(f"the {kind}'s cluster to be recorded and go", lambda: world.raycluster(cname) is None, timeout=120)
    wait_for(f"the {kind} to go", lambda: world.k8s.get(kind.lower(), name, "-n", NS) is None, timeout=60)


# ---- 5. deletion: finalizer, final flush, dead sessions, pre-warm -------------------------------------

def write_fixture_events(world: World, ref: SessionRef) -> None:
    """The real Ray 2.60 events of the fixture session, stored as a collector stores a batch."""
    lines = b"".join(json.dumps(e, separators=(",", ":")).encode() + b"\n" for body in received_bodies() for e in body)
    run(world.store().put(layout.event_batch_key(ref, HEAD_NODE_ID, "collector1", 1), gzip.compress(lines)))


def session_of_today(offset_s: int) -> str:
    stamp = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=offset_s)
    return stamp.strftime("session_%Y-%m-%d_%H-%M-%S_000000_7")


def test_deleting_a_cluster_records_its_sessions_and_prewarms(world: World, history: dict):
    assert world.pods("demo")  # created and injected above; KubeRay made its pods
    head_service = f"{world.raycluster('demo')['metadata']['name']}-head-svc"
    assert world.k8s.get("service", head_service, "-n", NS) is not None
    ref = SessionRef(NS, "demo", SESSION_NAME)
    write_fixture_events(world, ref)
    world.write_record(ref, IndexKind.LIVE, [HEAD_NODE_ID, NODE_WORKER])

    started = time.monotonic()
    world.k8s.kubectl("delete", "raycluster", "demo", "-n", NS, "--wait=false")
    # The operator deletes the pods so that the collectors flush (they are unscheduled: they go at once).
    wait_for("the operator to stop the cluster's pods", lambda: world.pods("demo") == [], timeout=60)
    held = world.raycluster("demo")
    assert held is not None and held["metadata"].get("deletionTimestamp")  # our finalizer holds it
    assert config.FINALIZER in held["metadata"]["finalizers"]
    assert world.sessions("demo")[ref.session].state == "live"
    time.sleep(2)
    assert world.pods("demo") == [], "KubeRay recreated pods of a cluster being deleted"
    world.write_record(ref, IndexKind.FLUSHED, [HEAD_NODE_ID, NODE_WORKER])  # the collectors' final flush

    wait_for("the cluster to be released", lambda: world.raycluster("demo") is None, timeout=FINALIZER_DEADLINE * 3)
    assert time.monotonic() - started < FINALIZER_DEADLINE + 30
    info = world.sessions("demo")[ref.session]
    assert (info.state, info.dead_reason) == ("dead", "cluster deleted")
    snapshots = run(world.store().list(layout.session_prefix(ref) + "snapshots/"))
    assert snapshots, "the real server's pre-warm wrote no snapshot"
    (message,) = wait_for("the Recorded event", lambda: world.events(NS, "demo", "Recorded"))
    assert f"'{ref.session}': 200" in message and "1 session(s) marked dead" in message
    # What KubeRay made for the cluster goes with it (the controller-manager's garbage collector).
    wait_for("the head Service to be collected", lambda: world.k8s.get("service", head_service, "-n", NS) is None,
             timeout=120)


def test_deletion_never_waits_past_the_deadline(world: World, history: dict):
    create_cluster(world, cluster_doc("stuck", workers=1), workers=1)
    ref = SessionRef(NS, "stuck", session_of_today(60))
    world.write_record(ref, IndexKind.LIVE, [HEAD_NODE_ID, NODE_WORKER])
    world.write_record(ref, IndexKind.FLUSHED, [HEAD_NODE_ID])  # the worker never flushes
    started = time.monotonic()
    world.k8s.kubectl("delete", "raycluster", "stuck", "-n", NS, "--wait=false")
    wait_for("the cluster to be released at the deadline", lambda: world.raycluster("stuck") is None,
             timeout=FINALIZER_DEADLINE * 4)
    assert time.monotonic() - started >= FINALIZER_DEADLINE - 2  # it did wait for the flush
    info = world.sessions("stuck")[ref.session]
    assert info.state == "dead"
    assert "final flush not confirmed before the deadline" in info.dead_reason and NODE_WORKER[:12] in info.dead_reason


def test_metrics_count_what_the_operator_did(world: World, history: dict):
    """Counted since the operator's restart in the webhook-down test: the owners' clusters, `demo`'s
    deletion after its final flush, `stuck`'s at the deadline."""
    samples = world.operator.metrics()
    assert samples['rayhistory_operator_admissions_total{result="injected"}'] >= 3
    assert samples['rayhistory_operator_clusters_recorded_total{reason="flushed"}'] >= 1
    assert samples['rayhistory_operator_clusters_recorded_total{reason="deadline"}'] >= 1
    assert samples['rayhistory_operator_sessions_marked_dead_total'] >= 2
    assert samples['rayhistory_operator_prewarms_total{result="ok"}'] >= 1


def test_operator_killed_mid_deletion_still_finishes(world: World, history: dict):
    create_cluster(world, cluster_doc("crash", workers=1), workers=1)
    ref = SessionRef(NS, "crash", session_of_today(120))
    world.write_record(ref, IndexKind.LIVE, [HEAD_NODE_ID, NODE_WORKER])
    world.k8s.kubectl("delete", "raycluster", "crash", "-n", NS, "--wait=false")
    wait_for("the operator to start the deletion", lambda: world.pods("crash") == [], timeout=60)
    world.operator.process.kill()  # SIGKILL: no cleanup, mid-wait for the final flush
    world.write_record(ref, IndexKind.FLUSHED, [HEAD_NODE_ID, NODE_WORKER])
    time.sleep(2)
    held = world.raycluster("crash")
    assert held is not None and config.FINALIZER in held["metadata"]["finalizers"]  # nobody released it
    world.operator.start()
    wait_for("the restarted operator to release the cluster", lambda: world.raycluster("crash") is None,
             timeout=FINALIZER_DEADLINE * 3)
    info = world.sessions("crash")[ref.session]
    assert info.state == "dead" and info.dead_reason == "cluster deleted"


# ---- 5b. Kubernetes Events, kept in the session ---------------------------------------------------

def micro_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def regarding(obj: dict) -> dict:
    meta = obj["metadata"]
    return {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": meta["name"], "namespace": NS,
            "uid": meta["uid"]}


def post_event(world: World, about: dict, reason: str, note: str, controller: str, action: str) -> dict:
    """An Event as the scheduler or the kubelet reports one, created through the Events API (events.k8s.io/v1)."""
    doc = {"apiVersion": "events.k8s.io/v1", "kind": "Event",
           "metadata": {"generateName": f"{about['name']}-", "namespace": NS},
           "eventTime": micro_now(), "reportingController": controller, "reportingInstance": f"{controller}-127.0.0.1",
           "action": action, "reason": reason, "type": "Warning", "note": note, "regarding": about}
    return json.loads(world.k8s.kubectl("create", "-o", "json", "-f", "-", stdin=json.dumps(doc)))


def kept_events(world: World, ref: SessionRef) -> list[PlatformEventRecord]:
    """Every Kubernetes Event stored for the session, its latest version each."""
    store = world.store()
    records = [r for o in run(store.list(layout.platform_events_prefix(ref)))
               for r in decode_batch(run(store.get(o.key)), 1 << 20)]
    return merge_records(records)


def test_kubernetes_events_of_a_cluster_and_its_pods_are_kept_in_its_session(world: World, history: dict):
    pods = create_cluster(world, cluster_doc("eventful", workers=1), workers=1)
    head = next(p for p in pods if p["metadata"]["labels"]["ray.io/node-type"] == "head")
    worker = next(p for p in pods if p["metadata"]["labels"]["ray.io/node-type"] == "worker")
    ref = SessionRef(NS, "eventful", session_of_today(300))
    world.write_record(ref, IndexKind.LIVE, [HEAD_NODE_ID, NODE_WORKER])
    failed = post_event(world, regarding(head), "FailedScheduling",
                        "0/3 nodes are available: 3 Insufficient memory.", "default-scheduler", "Scheduling")
    post_event(world, regarding(worker), "Evicted", "The node was low on resource: memory. Container ray-worker "
               "was using 3Gi, request is 1Gi.", "kubelet", "Evicting")
    post_event(world, regarding(head), "BackOff", f"Back-off restarting failed container ray-head in pod "
               f"{head['metadata']['name']}", "kubelet", "Restarting")
    # the scheduler tries again: the same Event, now a series of 4 (kept once, with its count)
    world.k8s.kubectl("patch", "events.events.k8s.io", failed["metadata"]["name"], "-n", NS, "--type", "merge",
                      "-p", json.dumps({"series": {"count": 4, "lastObservedTime": micro_now()}}))
    # not this cluster's: a pod named like it that does not exist, and a pod of no cluster at all
    post_event(world, {"apiVersion": "v1", "kind": "Pod", "name": "eventful-impostor", "namespace": NS,
                       "uid": "00000000-0000-0000-0000-000000000001"}, "FailedScheduling", "not ours",
               "default-scheduler", "Scheduling")

    def kept() -> list[PlatformEventRecord] | None:
        records = kept_events(world, ref)
        reasons = {r.reason for r in records}
        counted = [r.count for r in records if r.uid == failed["metadata"]["uid"]]
        return records if {"FailedScheduling", "Evicted", "BackOff"} <= reasons and counted == [4] else None
    records = wait_for("the operator to keep the events in the session", kept, timeout=60)
    assert [r.reason for r in records].count("FailedScheduling") == 1
    assert not any(r.name == "eventful-impostor" for r in records)
    assert {(r.kind, r.name) for r in records if r.reason in ("BackOff", "Evicted")} == {
        ("Pod", head["metadata"]["name"]), ("Pod", worker["metadata"]["name"])}
    # KubeRay's own Events about the RayCluster (the real controller's, not the test's) are kept too
    assert any(r.kind == "RayCluster" and r.name == "eventful" for r in records), [(r.kind, r.reason) for r in records]

    # the kubelet's report of the head's Ray container, OOMKilled once and restarted (no kubelet here: the
    # test writes the pod's status as one would); it is in the pod's status, not in any Event
    ray_container = head["spec"]["containers"][0]["name"]
    world.k8s.kubectl("patch", "pod", head["metadata"]["name"], "-n", NS, "--subresource=status", "--type", "merge",
                      "-p", json.dumps({"status": {"containerStatuses": [{
                          "name": ray_container, "ready": True, "restartCount": 1, "image": "rayproject/ray:2.60.0",
                          "imageID": "", "state": {"running": {"startedAt": "2026-12-02T00:00:10Z"}},
                          "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137,
                                                       "startedAt": "2026-12-02T00:00:00Z",
                                                       "finishedAt": "2026-12-02T00:00:09Z"}}}]}}))
    world.k8s.kubectl("delete", "raycluster", "eventful", "-n", NS, "--wait=false")
    wait_for("the operator to stop the cluster's pods", lambda: world.pods("eventful") == [], timeout=60)
    world.write_record(ref, IndexKind.FLUSHED, [HEAD_NODE_ID, NODE_WORKER])
    wait_for("the cluster to be released", lambda: world.raycluster("eventful") is None, timeout=FINALIZER_DEADLINE * 3)
    assert world.sessions("eventful")[ref.session].state == "dead"
    # the real server answers the dead session's Platform Events page from storage, in Ray's shape
    url = f"{world.public_url}/s/{ref.tail}/api/v0/platform_events"
    with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=10) as resp:
        assert resp.status == 200
    with urllib.request.urlopen(url, timeout=10) as resp:
        events = json.loads(resp.read())["data"]["events"]
    shown = {(e["platformEvent"]["objectKind"], e["platformEvent"]["reason"]): e for e in events}
    scheduling = shown[("Pod", "FailedScheduling")]
    assert scheduling["severity"] == "WARNING" and scheduling["platformEvent"]["customFields"] == {"count": "4"}
    assert scheduling["platformEvent"]["source"]["component"] == "default-scheduler"
    assert ("Pod", "Evicted") in shown and ("Pod", "BackOff") in shown
    # the OOMKill, from the status of the pod the operator deleted
    oom = shown[("Pod", "OOMKilled")]
    assert oom["platformEvent"]["objectName"] == head["metadata"]["name"]
    assert oom["message"] == f"container {ray_container} terminated: OOMKilled (exit code 137), restarts 1"


# ---- 6. retention --------------------------------------------------------------------------------

def test_retention_against_the_real_api(world: World, history: dict):
    store = world.store()
    expired = SessionRef(NS, "nightly", "session_2026-01-02_03-04-05_000000_1")
    kept = SessionRef(NS, "nightly", session_of_today(3600))
    for r in (expired, kept):
        world.write_record(r, IndexKind.LIVE, [HEAD_NODE_ID])
        run(store.put(layout.log_part_key(r, HEAD_NODE_ID, "raylet.out", 0, 0), b"log"))
    day = 86400 * 1000
    end = layout.session_start_ms(expired.session) + day
    run(store.put(layout.index_record_key(expired, IndexKind.DEAD, "collector1", end), encode_record(IndexRecord(
        kind=IndexKind.DEAD.value, namespace=NS, cluster="nightly", session=expired.session, at_ms=end,
        writer="collector1", end_ms=end, reason="test"))))

    def expired_gone() -> bool:
        return not any(o.key.startswith((layout.session_prefix(expired), layout.index_session_prefix(expired)))
                       for o in run(store.list("")))
    wait_for("a retention run that removes the expired session", expired_gone, timeout=60)
    assert any(o.key.startswith(layout.session_prefix(kept)) for o in run(store.list("")))
    # The status subresource and the Event were written through the real API, under the operator's RBAC.
    wait_for("the Retention event", lambda: any(
        m.startswith(f"removed 1 session(s) (3 objects): {expired.tail}")
        for m in world.events(SYSTEM_NS, "history", "Retention")), timeout=60)
    status = world.k8s.get("rayhistory", "history", "-n", SYSTEM_NS)["status"]
    assert status["retention"]["lastRun"]
    recorded = len(run(SessionIndex(store).sessions()))
    wait_for("the session count in the status", lambda: world.k8s.get(
        "rayhistory", "history", "-n", SYSTEM_NS)["status"]["sessionsRecorded"] == recorded, timeout=60)


def test_a_head_restart_marks_the_old_session_dead(world: World, history: dict):
    """A living cluster whose head restarted: two live sessions, the newer one started more than the
    grace ago. The retention timer closes the older one; the newer stays live."""
    old = SessionRef(NS, "restarted", session_of_today(SUPERSEDED_GRACE + 7200))
    new = SessionRef(NS, "restarted", session_of_today(SUPERSEDED_GRACE + 60))
    for ref in (old, new):
        world.write_record(ref, IndexKind.LIVE, [HEAD_NODE_ID])
    wait_for("the old session to be closed", lambda: world.sessions("restarted")[old.session].state == "dead",
             timeout=60)
    sessions = world.sessions("restarted")
    assert "superseded by a newer session" in sessions[old.session].dead_reason
    assert sessions[new.session].state == "live"
    wait_for("the closing reported in an Event on the RayHistory", lambda: any(
        "closed 1 superseded session(s)" in m for m in world.events(SYSTEM_NS, "history", "Retention")), timeout=60)


# ---- 7. least privilege, as the API server decides it ----------------------------------------------

def can_i(world: World, *args: str) -> bool:
    result = world.k8s.kubectl_result("auth", "can-i", *args, user="rayhistory-operator")
    assert result.stdout.strip() in ("yes", "no"), result.stderr
    return result.stdout.strip() == "yes"


def test_the_operator_was_never_refused(world: World, history: dict):
    """Every test above ran the operator under deploy/'s ClusterRole: one missing permission would
    show as a 403 in its log (Kopf logs and retries what the API server refuses)."""
    log = world.operator.process.log_path.read_text(errors="replace")
    assert "Handler 'reconcile' succeeded" in log  # the log is the operator's, and it did work
    refused = [line for line in log.splitlines() if REFUSED.search(line)]
    assert not refused, "\n".join(refused[:10])


def test_operator_has_no_write_it_does_not_use(world: World, history: dict):
    # What it uses (each exercised by a test above, under this very token).
    for verb, what in [("patch", "rayclusters.ray.io"), ("deletecollection", "pods"), ("create", "deployments.apps"),
                       ("patch", "rayhistories.rayhistory.io/status"), ("create", "events"),
                       ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
                       ("list", "events"), ("watch", "events"), ("get", "pods")]:
        assert can_i(world, verb, what, "-A"), (verb, what)
    assert can_i(world, "bind", "clusterroles.rbac.authorization.k8s.io/rayhistory-server")
    # What it must not be able to do.
    for verb, what in [("get", "secrets"), ("create", "pods"), ("delete", "rayclusters.ray.io"),
                       ("update", "rayclusters.ray.io"), ("delete", "namespaces"), ("create", "rayhistories.rayhistory.io"),
                       ("delete", "deployments.apps"), ("create", "clusterroles.rbac.authorization.k8s.io"),
                       ("escalate", "clusterroles.rbac.authorization.k8s.io"),
                       ("patch", "customresourcedefinitions.apiextensions.k8s.io"),
                       # deploy/operator's webhook configuration is static (cert-manager injects the CA)
                       ("patch", "mutatingwebhookconfigurations.admissionregistration.k8s.io"),
                       ("create", "mutatingwebhookconfigurations.admissionregistration.k8s.io"),
                       ("list", "pods"), ("get", "rayclusters.ray.io")]:
        assert not can_i(world, verb, what, "-A"), (verb, what)
    assert not can_i(world, "bind", "clusterroles.rbac.authorization.k8s.io/cluster-admin")
    # The API server would refuse a binding to a role the operator may not bind.
    escalation = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                  "metadata": {"name": "rayhistory-escalation"},
                  "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
                  "subjects": [{"kind": "ServiceAccount", "name": "history-server", "namespace": SYSTEM_NS}]}
    result = world.k8s.kubectl_result("create", "-f", "-", stdin=yaml.safe_dump(escalation), user="rayhistory-operator")
    assert result.returncode != 0 and "forbidden" in result.stderr.lower(), result.stderr
