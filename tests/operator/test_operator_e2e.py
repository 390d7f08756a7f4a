"""The operator end to end, against a Kubernetes API over real HTTP.

What is real: the operator (Kopf, run by kopf.testing.KopfRunner with --standalone) and its HTTPS
admission webhook (certificates from trustme, laid out as a cert-manager Secret), kubectl applying the
project's own manifests, the history store (S3: moto's server, credentials from the environment as in a
pod), the index code. What is emulated, and why: the
Kubernetes API server (tests/kube_api.py: none can be installed here), KubeRay (the test creates the
pods a RayCluster would have and plays the collectors' final flush by writing their `flushed` records).
The pre-warm endpoint is the real `rayhistory server`, on the same store.
"""

from __future__ import annotations

import asyncio
import datetime
import gzip
import json
import os
import shutil
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

from rayhistory import layout
from rayhistory.index import IndexRecord, SessionIndex, encode_record
from rayhistory.layout import IndexKind, SessionRef
from rayhistory.operator import config
from rayhistory.operator.main import Settings, build_kopf_settings, build_registry, kopf_run_args
from rayhistory.store import Store
from tests.conftest import HEAD_NODE_ID, SESSION_NAME, free_port, received_bodies
from tests.backends import S3_KEY, S3_SECRET, RunningBackend, moto_s3
from tests.kube_api import KubeAPI, running_kube_api, write_kubeconfig

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed (Debian image package)"),
]

ROOT = Path(__file__).resolve().parents[2]
HISTORY_NS = "rayhistory-system"
CLUSTER_NS = "default"
TOKEN = "prewarm-secret"
NODE_HEAD = "1" * 56
NODE_WORKER = "2" * 56
WEBHOOK_CONFIG = "rayhistory-test"
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
        result = subprocess.run(["kubectl", "--kubeconfig", self.kubeconfig, "--cache-dir", self.cache, *args],
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
    out = subprocess.run(["kubectl", "kustomize", str(ROOT / base)], capture_output=True, text=True, check=True).stdout
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


def add_pods(env: Env, cluster: str) -> None:
    """What KubeRay would create: one head and one worker pod labelled with the cluster's name."""
    for role in ("head", "worker"):
        env.core.create_namespaced_pod(CLUSTER_NS, {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{cluster}-{role}", "labels": {"ray.io/cluster": cluster, "ray.io/node-type": role}},
            "spec": {"containers": [{"name": "ray", "image": "rayproject/ray:2.60.0"}]},
        })


def pods_of(env: Env, cluster: str) -> list[str]:
    return [p.metadata.name for p in env.core.list_namespaced_pod(CLUSTER_NS, label_selector=f"ray.io/cluster={cluster}").items]


def write_record(env: Env, ref: SessionRef, kind: IndexKind, at_ms: int, **fields) -> None:
    record = IndexRecord(kind=kind.value, namespace=ref.namespace, cluster=ref.cluster, session=ref.session,
                         at_ms=at_ms, writer="collector1", **fields)
    run(env.store().put(layout.index_record_key(ref, kind, "collector1", at_ms), encode_record(record)))


def session_of_today(offset_s: int) -> str:
    stamp = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=offset_s)
    return stamp.strftime("session_%Y-%m-%d_%H-%M-%S_000000_7")


# ---- reconcile ----------------------------------------------------------------------------------

def test_rayhistory_reconciles_server_objects(env: Env, history: dict):
    uid = history["metadata"]["uid"]
    objects = {
        "Deployment": env.get("apps", "v1", "deployments", HISTORY_NS, "history-server"),
        "Service": env.get("", "v1", "services", HISTORY_NS, "history-server"),
        "Ingress": env.get("networking.k8s.io", "v1", "ingresses", HISTORY_NS, "history-server"),
        "ServiceAccount": env.get("", "v1", "serviceaccounts", HISTORY_NS, "history-server"),
    }
    for kind, obj in objects.items():
        assert obj is not None, kind
        assert [(r["kind"], r["uid"]) for r in obj["metadata"]["ownerReferences"]] == [("RayHistory", uid)], kind
    assert objects["Deployment"]["spec"]["replicas"] == 2  # from the example
    assert objects["Ingress"]["spec"]["rules"][0]["host"] == "ray-history.example.com"
    binding = env.get("rbac.authorization.k8s.io", "v1", "clusterrolebindings", None,
                      f"rayhistory-server-{HISTORY_NS}-history")
    assert binding["subjects"][0]["name"] == "history-server"
    status = history["status"]
    assert status["serverURL"] == "https://ray-history.example.com/"
    assert [(c["type"], c["status"]) for c in status["conditions"]] == [("Ready", "True")]

    # A spec change reconciles again: fewer replicas, no Ingress.
    env.kubectl("patch", "rayhistory", "history", "-n", HISTORY_NS, "--type=merge",
                "-p", json.dumps({"spec": {"server": {"replicas": 1}, "ingress": {"enabled": False}}}))
    wait_for("the Ingress to go", lambda: env.get(
        "networking.k8s.io", "v1", "ingresses", HISTORY_NS, "history-server") is None)
    assert env.get("apps", "v1", "deployments", HISTORY_NS, "history-server")["spec"]["replicas"] == 1
    wait_for("the in-cluster server URL", lambda: env.get(
        config.GROUP, config.VERSION, config.HISTORY_PLURAL, HISTORY_NS, "history")["status"]["serverURL"]
        == "http://history-server.rayhistory-system.svc:8080/")


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


def test_opted_out_cluster_is_left_alone(env: Env, history: dict):
    env.apply([example_cluster("private", **{config.INJECT_ANNOTATION: "false"})])
    cluster = env.raycluster("private")
    assert "finalizers" not in cluster["metadata"]
    assert [c["name"] for c in cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"]] == ["ray-head"]
    env.kubectl("delete", "raycluster", "private", "-n", CLUSTER_NS, "--wait=false")
    wait_for("the opted-out cluster to go at once", lambda: env.raycluster("private") is None)


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


# ---- record on deletion -------------------------------------------------------------------------

def write_fixture_events(env: Env, ref: SessionRef) -> None:
    """The real Ray 2.60 events of the fixture session, stored as a collector stores a batch."""
    lines = b"".join(json.dumps(e, separators=(",", ":")).encode() + b"\n" for body in received_bodies() for e in body)
    run(env.store().put(layout.event_batch_key(ref, HEAD_NODE_ID, "collector1", 1), gzip.compress(lines)))


def events_about(env: Env, name: str, reason: str) -> list[str]:
    return [e["message"] for e in env.api.list_objects("", "v1", "events", CLUSTER_NS)
            if e["involvedObject"]["name"] == name and e["reason"] == reason]


def test_deleting_a_cluster_records_its_sessions_and_prewarms(env: Env, history: dict):
    assert env.raycluster("demo") is not None  # created and injected above
    add_pods(env, "demo")
    ref = SessionRef(CLUSTER_NS, "demo", SESSION_NAME)  # the fixture session: real events
    older = SessionRef(CLUSTER_NS, "demo", session_of_today(24 * 3600))  # e.g. before a head restart
    write_fixture_events(env, ref)
    for r in (ref, older):
        write_record(env, r, IndexKind.LIVE, layout.now_ms(), node_ids=[HEAD_NODE_ID, NODE_WORKER])

    env.kubectl("delete", "raycluster", "demo", "-n", CLUSTER_NS, "--wait=false")
    # The operator stops the pods so that the collectors flush; we play the collectors.
    wait_for("the cluster's pods to be deleted", lambda: pods_of(env, "demo") == [])
    assert env.raycluster("demo")["metadata"].get("deletionTimestamp")  # still held by the finalizer
    assert all(s.state == "live" for s in env.sessions("demo").values())
    for r in (ref, older):
        write_record(env, r, IndexKind.FLUSHED, layout.now_ms(), node_ids=[HEAD_NODE_ID, NODE_WORKER])

    wait_for("the cluster to be released", lambda: env.raycluster("demo") is None, timeout=FINALIZER_DEADLINE * 3)
    sessions = env.sessions("demo")
    assert {s: (i.state, i.dead_reason) for s, i in sessions.items()} == {
        ref.session: ("dead", "cluster deleted"), older.session: ("dead", "cluster deleted")}
    # The real server pre-warmed the session: its compacted snapshot is in the store.
    snapshots = run(env.store().list(layout.session_prefix(ref) + "snapshots/"))
    assert snapshots, "no snapshot written by the pre-warm"
    (message,) = wait_for("the Recorded event", lambda: events_about(env, "demo", "Recorded"))
    assert f"'{ref.session}': 200" in message and "2 session(s) marked dead" in message


def test_deletion_never_waits_past_the_deadline(env: Env, history: dict):
    env.apply([example_cluster("stuck")])
    ref = SessionRef(CLUSTER_NS, "stuck", session_of_today(60))
    write_record(env, ref, IndexKind.LIVE, layout.now_ms(), node_ids=[NODE_HEAD, NODE_WORKER])
    write_record(env, ref, IndexKind.FLUSHED, layout.now_ms(), node_ids=[NODE_HEAD])  # the worker never flushes
    env.kubectl("delete", "raycluster", "stuck", "-n", CLUSTER_NS, "--wait=false")
    wait_for("the cluster to be released at the deadline", lambda: env.raycluster("stuck") is None,
             timeout=FINALIZER_DEADLINE * 4)
    info = env.sessions("stuck")[ref.session]
    assert info.state == "dead"
    assert "final flush not confirmed before the deadline" in info.dead_reason and NODE_WORKER[:12] in info.dead_reason


def test_metrics_count_what_the_operator_did(env: Env, history: dict):
    text = urllib.request.urlopen(f"http://127.0.0.1:{env.settings.metrics_port}/metrics", timeout=5).read().decode()
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
               for line in text.splitlines() if line and not line.startswith("#")}
    # the tests above: clusters injected, one recorded after its collectors flushed, one at the deadline
    assert samples['rayhistory_operator_admissions_total{result="injected"}'] >= 2
    assert samples['rayhistory_operator_clusters_recorded_total{reason="flushed"}'] >= 1
    assert samples['rayhistory_operator_clusters_recorded_total{reason="deadline"}'] >= 1
    assert samples['rayhistory_operator_sessions_marked_dead_total'] >= 3
    assert samples['rayhistory_operator_prewarms_total{result="ok"}'] >= 1
    assert samples['rayhistory_operator_reconciles_total{result="ok"}'] >= 1


# ---- retention ----------------------------------------------------------------------------------

def test_retention_removes_exactly_what_it_should(env: Env, history: dict):
    # The example keeps 30 days and at most 50 sessions per cluster.
    store = env.store()
    expired = SessionRef(CLUSTER_NS, "nightly", "session_2026-01-02_03-04-05_000000_1")
    kept = SessionRef(CLUSTER_NS, "nightly", session_of_today(3600))
    day = 86400 * 1000
    for r, end in ((expired, layout.session_start_ms(expired.session) + day), (kept, layout.now_ms())):
        write_record(env, r, IndexKind.LIVE, end - 1000, node_ids=[NODE_HEAD])
        run(store.put(layout.event_batch_key(r, NODE_HEAD, "collector1", 1, end - 500), b"raw"))
        run(store.put(layout.log_part_key(r, NODE_HEAD, "raylet.out", 0, 0), b"log"))
        write_record(env, r, IndexKind.DEAD, end, end_ms=end, reason="test")
    before = {o.key for o in run(store.list(""))}

    def expired_gone() -> bool:
        return not any(o.key.startswith((layout.session_prefix(expired), layout.index_session_prefix(expired)))
                       for o in run(store.list("")))

    wait_for("a retention run that removes the expired session", expired_gone, timeout=20)
    after = {o.key for o in run(store.list(""))}
    gone = before - after
    assert gone == {k for k in before if k.startswith(
        (layout.session_prefix(expired), layout.index_session_prefix(expired)))}
    assert len(gone) == 4  # live + dead records, raw events, log part
    assert any(k.startswith(layout.session_prefix(kept)) for k in after)
    # What it removed is recorded: an event on the RayHistory, and the count in its status.
    (message,) = wait_for("the Retention event", lambda: [
        e["message"] for e in env.api.list_objects("", "v1", "events", HISTORY_NS)
        if e["involvedObject"]["name"] == "history" and e["reason"] == "Retention"])
    assert message.startswith(f"removed 1 session(s) (4 objects): {expired.tail}")
    recorded = len(run(SessionIndex(store).sessions()))
    wait_for("the session count in the status", lambda: env.get(
        config.GROUP, config.VERSION, config.HISTORY_PLURAL, HISTORY_NS, "history")["status"]["sessionsRecorded"]
        == recorded)


# ---- RayHistory deletion -------------------------------------------------------------------------

def test_deleting_a_rayhistory_removes_its_cluster_role_binding(env: Env, history: dict):
    """Namespaced objects go by owner reference (Kubernetes' garbage collector, not emulated here);
    the cluster-scoped binding is the operator's to delete."""
    doc = {"apiVersion": "rayhistory.io/v1alpha1", "kind": "RayHistory",
           "metadata": {"name": "scratch", "namespace": HISTORY_NS},
           "spec": {"storage": {"url": env.storage_url, "options": env.storage_options},
                    "injection": {"enabled": False}}}
    env.apply([doc])
    binding = f"rayhistory-server-{HISTORY_NS}-scratch"
    rbac = ("rbac.authorization.k8s.io", "v1", "clusterrolebindings", None, binding)
    wait_for("the scratch server's binding", lambda: env.get(*rbac))
    env.kubectl("delete", "rayhistory", "scratch", "-n", HISTORY_NS, "--wait=false")
    wait_for("the scratch RayHistory to go", lambda: env.get(
        config.GROUP, config.VERSION, config.HISTORY_PLURAL, HISTORY_NS, "scratch") is None)
    assert env.get(*rbac) is None
    assert env.get(*rbac[:3], None, f"rayhistory-server-{HISTORY_NS}-history") is not None  # the other stays


# ---- RBAC ---------------------------------------------------------------------------------------

def rbac_verb(method: str, named: bool, params: dict) -> str:
    if method == "GET":
        return "watch" if params.get("watch") in ("true", "1") else ("get" if named else "list")
    if method == "DELETE":
        return "delete" if named else "deletecollection"
    return {"POST": "create", "PATCH": "patch", "PUT": "update"}[method]


def test_cluster_role_covers_every_api_call_the_operator_made(env: Env, history: dict):
    """Runs last in this module: every request Kopf and the operator sent above must be allowed."""
    (role,) = [d for d in render("deploy/operator") if d["kind"] == "ClusterRole"
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
    assert {("ray.io", "rayclusters", "watch"), ("ray.io", "rayclusters", "patch"), ("", "pods", "deletecollection"),
            ("apps", "deployments", "create"), ("networking.k8s.io", "ingresses", "delete"),
            ("rayhistory.io", "rayhistories/status", "patch"), ("", "events", "create"),
            ("rbac.authorization.k8s.io", "clusterrolebindings", "delete")} <= made
