"""The operator from the image, on the host network with a kubeconfig mounted: it reconciles a RayHistory and
its admission webhook injects the collector into a RayCluster, the image's own name for it in the pod.

The Kubernetes API is the project's emulator (tests/kube_api.py) on 127.0.0.1; against the real control plane
of the Kubernetes issue once that exists. The webhook certificate comes from trustme (DESIGN.md: Kopf's
self-signed one fails with OpenSSL 3 here)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import trustme
import yaml

from rayhistory.operator import config
from tests.conftest import free_port
from tests.image.conftest import container, shared_dir
from tests.kube_api import running_kube_api, write_kubeconfig

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
HISTORY_NS, CLUSTER_NS = "rayhistory-system", "default"
WEBHOOK_CONFIG = "rayhistory-image-test"


def wait_for(what: str, check, timeout: float = 60.0, logs=lambda: ""):
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n{logs()}")
        time.sleep(0.2)
    return value


def render(base: str) -> list[dict]:
    out = subprocess.run(["kubectl", "kustomize", str(ROOT / base)], capture_output=True, text=True, check=True)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def test_operator_from_the_image_reconciles_and_injects(image_name, tmp_path):
    from tests.image.test_manifests import render as render_checked

    render_checked("deploy/examples")  # fails under CI, skips elsewhere, without kubectl
    tls = shared_dir(tmp_path / "tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_pem.write_to_path(str(tls / "tls.key"))
    (tls / "tls.crt").write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    ca.cert_pem.write_to_path(str(tls / "ca.crt"))
    for path in tls.iterdir():
        path.chmod(0o644)  # readable by the image's user (a test key)
    kube = shared_dir(tmp_path / "kube")
    with running_kube_api() as (api, url):
        kubeconfig = write_kubeconfig(str(kube / "config"), url)
        Path(kubeconfig).chmod(0o644)
        kubectl = ["kubectl", "--kubeconfig", kubeconfig, "--cache-dir", str(tmp_path / "kubectl-cache")]
        for crd in (ROOT / "crds" / "rayhistory.yaml", ROOT / "tests" / "operator" / "raycluster-crd.yaml"):
            subprocess.run([*kubectl, "apply", "--validate=false", "-f", str(crd)], check=True, capture_output=True)
        webhook_port, liveness = free_port(), free_port()
        args = ["operator", "--webhook-addr", "127.0.0.1", "--webhook-port", str(webhook_port),
                "--webhook-host", "127.0.0.1", "--webhook-cert-dir", "/tls",
                "--webhook-managed-config", WEBHOOK_CONFIG, "--liveness-port", str(liveness),
                "--metrics-port", "0", "--retention-interval", "3600", "--log-format", "text"]
        env = {"KUBECONFIG": "/kube/config", "RAYHISTORY_STORAGE": "file:///tmp/store"}
        with container(image_name, args, {tls: "/tls", kube: "/kube"}, env, read_only=True) as operator:
            operator.wait_ready(f"http://127.0.0.1:{liveness}/healthz")
            wait_for("the managed webhook configuration", lambda: any(
                w.get("clientConfig", {}).get("url") for w in (api.get_object(
                    "admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations", None, WEBHOOK_CONFIG)
                    or {}).get("webhooks", [])), logs=operator.logs)

            docs = render("deploy/examples")
            (history,) = [d for d in docs if d["kind"] == "RayHistory"]
            history["spec"]["storage"] = {"url": "file:///tmp/store"}
            subprocess.run([*kubectl, "apply", "--validate=false", "-f", "-"], input=yaml.safe_dump(history),
                           text=True, check=True, capture_output=True)
            deployment = wait_for("the server Deployment", lambda: api.get_object(
                "apps", "v1", "deployments", HISTORY_NS, "history-server"), logs=operator.logs)
            assert deployment["spec"]["template"]["spec"]["containers"][0]["args"][0] == "server"

            (cluster,) = [d for d in docs if d["kind"] == "RayCluster"]
            subprocess.run([*kubectl, "create", "--validate=false", "-f", "-"], input=yaml.safe_dump(cluster),
                           text=True, check=True, capture_output=True)
            stored = api.get_object(config.RAY_GROUP, config.RAY_VERSION, config.RAYCLUSTER_PLURAL, CLUSTER_NS,
                                    cluster["metadata"]["name"])
            groups = [stored["spec"]["headGroupSpec"], *stored["spec"]["workerGroupSpecs"]]
            for group in groups:
                containers = group["template"]["spec"]["containers"]
                assert [c["name"] for c in containers][1:] == [config.COLLECTOR_CONTAINER], operator.logs()
            assert config.FINALIZER in stored["metadata"]["finalizers"]
            assert operator.stop() == 0, operator.logs()
