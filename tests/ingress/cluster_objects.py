"""What the Ingress tests put in the control plane and run on the test host, shared by their modules.

A RayHistory goes through the API server (CRD schema, defaults filled in); the Service and Ingress are what
the operator builds from it (operator/specs.py, what reconcile.py applies); the server runs as the
Deployment's container would (its args and env from `build_server_deployment_spec`), on a test host
(tests/ingress/netns.py) whose address the test publishes in the Service's EndpointSlice, as the
EndpointSlice controller would for a ready Pod (no kubelet runs, so no Pod exists).
"""

from __future__ import annotations

import contextlib
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from rayhistory.operator import config, specs
from rayhistory.operator.history import HistorySpec, parse_spec, server_name
from tests.ingress.netns import NetnsHost
from tests.ingress.traefik import Traefik, ingress_class
from tests.e2e.browser import http_ok
from tests.k8s.cluster import Cluster, Process, child_env

ROOT = Path(__file__).resolve().parents[2]
PREWARM_TOKEN = "ingress-tests"


def via_traefik(traefik: Traefik, path: str, host: str, timeout: float = 60,
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """A request to Traefik's web entry point for `host`, as a client outside the cluster makes it."""
    request = urllib.request.Request(traefik.http_base + path.lstrip("/"), headers={"Host": host, **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def fetch(url: str, timeout: float = 60) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.read()


@contextlib.contextmanager
def prepared_cluster(k8s: Cluster, namespace: str, ingress_class_name: str) -> Iterator[None]:
    """The namespace, Traefik's IngressClass and the RayHistory CRD (crds/, as users install it); afterwards the
    namespace's RayHistories are gone, since the control plane is the session's: the operator tests that run
    after these would otherwise inject clusters with this RayHistory's settings."""
    k8s.apply_docs([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
                    ingress_class(ingress_class_name)])
    k8s.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds" / "rayhistory.yaml"))
    k8s.wait_established("rayhistories.rayhistory.io")
    try:
        yield
    finally:
        k8s.kubectl("delete", "rayhistory", "--all", "-n", namespace, "--wait=true", "--timeout=60s")
        k8s.kubectl("delete", "namespace", namespace, "--wait=false")


def endpoint_slice(service: str, namespace: str, address: str) -> dict:
    """What the EndpointSlice controller writes for one ready Pod of the Service, at `address`."""
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": f"{service}-test-host", "namespace": namespace,
                     "labels": {"kubernetes.io/service-name": service,
                                "endpointslice.kubernetes.io/managed-by": "rayhistory-tests"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [address], "conditions": {"ready": True, "serving": True, "terminating": False}}],
        "ports": [{"name": "http", "port": config.SERVER_PORT, "protocol": "TCP"}],
    }


def apply_server_objects(k8s: Cluster, doc: dict, backend: NetnsHost) -> tuple[dict, HistorySpec, dict]:
    """The RayHistory `doc` through the API server, then the Service and Ingress the operator builds from what
    was stored, and the Service's endpoint on the test host. Returns (stored RayHistory, its spec, Ingress)."""
    k8s.apply_docs([doc])
    meta = doc["metadata"]
    history = k8s.get("rayhistory", meta["name"], "-n", meta["namespace"])
    spec = parse_spec(history["spec"])
    ingress = specs.build_server_ingress_spec(history, spec)
    assert ingress is not None, "the RayHistory asks for no Ingress"
    k8s.apply_docs([specs.build_server_service_spec(history), ingress,
                    endpoint_slice(server_name(meta["name"]), meta["namespace"], backend.address)])
    return history, spec, ingress


def run_server_as_deployed(folder: Path, backend: NetnsHost, history: dict, spec: HistorySpec,
                           kubeconfig: Path | None = None) -> Process:
    """`rayhistory <the Deployment's args>` with the Deployment's plain env on the test host; the Secret-held
    pre-warm token is given directly, and `kubeconfig` stands in for the Pod's ServiceAccount credentials."""
    (container,) = specs.build_server_deployment_spec(history, spec)["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    env["RAYHISTORY_PREWARM_TOKEN"] = PREWARM_TOKEN
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    argv = backend.exec_argv([str(Path(sys.executable).parent / "rayhistory"), *container["args"],
                              "--log-format", "text"])
    server = Process(f"rayhistory-server-{history['metadata']['name']}", argv, folder,
                     env=child_env(**env)).start()
    server.wait_ready("the history server on the test host",
                      lambda: http_ok(f"http://{backend.address}:{config.SERVER_PORT}/healthz"))
    return server
