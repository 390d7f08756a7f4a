"""The operator from the image, on the host network with a kubeconfig mounted, against a real Kubernetes control
plane and the real KubeRay operator (tests/k8s/cluster.py, a control plane of this test's own): deploy/operator
applied with kubectl (webhook by loopback URL), the operator under its ServiceAccount's token, a RayHistory
reconciled, and KubeRay's Pods of a RayCluster carrying the collector, under the image's own name.

The webhook certificate comes from trustme (DESIGN.md: Kopf's self-signed one fails with OpenSSL 3 here)."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import pytest
import yaml

from rayhistory.operator import config
from tests.conftest import free_port
from tests.image.conftest import container, shared_dir
from tests.k8s.cluster import running_cluster
from tests.operator.test_k8s_operator import NS, SYSTEM_NS, loopback_overlay, render, webhook_certs

pytestmark = [pytest.mark.slow, pytest.mark.k8s]

ROOT = Path(__file__).resolve().parents[2]


def wait_for(what: str, check, timeout: float = 90.0, logs=lambda: ""):
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n{logs()}")
        time.sleep(0.5)
    return value


def container_kubeconfig(path: Path, server: str, ca_pem: bytes, token: str) -> Path:
    """A kubeconfig the image's user can read, with the CA inside it (no host path to mount)."""
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": server,
                                                  "certificate-authority-data": base64.b64encode(ca_pem).decode()}}],
        "users": [{"name": "rayhistory-operator", "user": {"token": token}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "rayhistory-operator"}}],
    }))
    path.chmod(0o644)
    return path


def test_operator_from_the_image_reconciles_and_injects_on_the_real_control_plane(image_name, tmp_path):
    with running_cluster(tmp_path / "k8s") as k8s:
        tls, ca_pem = webhook_certs(tmp_path / "tls")
        tls.chmod(0o755)
        for path in tls.iterdir():
            path.chmod(0o644)  # readable by the image's user (a test key)
        webhook_port, liveness = free_port(), free_port()
        k8s.kubectl("apply", "--server-side", "-k", str(loopback_overlay(tmp_path / "overlay", webhook_port, ca_pem)))
        k8s.wait_established("rayhistories.rayhistory.io")
        token = k8s.kubectl("create", "token", "rayhistory-operator", "-n", SYSTEM_NS, "--duration=1h").strip()
        kube = shared_dir(tmp_path / "kube")
        container_kubeconfig(kube / "config", k8s.server, k8s.ca_file.read_bytes(), token)
        args = ["operator", "--webhook-addr", "127.0.0.1", "--webhook-port", str(webhook_port),
                "--webhook-cert-dir", "/tls", "--liveness-port", str(liveness), "--metrics-port", "0",
                "--retention-interval", "3600", "--prewarm-token", "image-test", "--log-format", "text"]
        env = {"KUBECONFIG": "/kube/config", "RAYHISTORY_STORAGE": "file:///tmp/store",
               "RAYHISTORY_OPERATOR_NAMESPACE": SYSTEM_NS}
        with container(image_name, args, {tls: "/tls", kube: "/kube"}, env, read_only=True) as operator:
            operator.wait_ready(f"http://127.0.0.1:{liveness}/healthz")
            docs = render(k8s, ROOT / "deploy" / "examples")
            (history,) = [d for d in docs if d["kind"] == "RayHistory"]
            history["spec"]["storage"] = {"url": "file:///tmp/store"}
            k8s.apply_docs([history])
            deployment = wait_for("the server Deployment", lambda: k8s.get(
                "deployment", "history-server", "-n", SYSTEM_NS), logs=operator.logs)
            server = deployment["spec"]["template"]["spec"]["containers"][0]
            assert server["args"][0] == "server"

            (cluster,) = [d for d in docs if d["kind"] == "RayCluster"]
            cluster["metadata"]["namespace"] = NS
            k8s.kubectl("create", "-f", "-", stdin=yaml.safe_dump(cluster))
            name = cluster["metadata"]["name"]
            pods = wait_for("KubeRay's Pods", lambda: len((k8s.get(
                "pods", "-n", NS, "-l", f"ray.io/cluster={name}") or {"items": []})["items"]) >= 2 and k8s.get(
                "pods", "-n", NS, "-l", f"ray.io/cluster={name}")["items"], logs=operator.logs)
            for pod in pods:  # as the API server stored them, created by KubeRay from the mutated RayCluster
                [collector] = [c for c in pod["spec"]["containers"] if c["name"] == config.COLLECTOR_CONTAINER]
                assert collector["image"] == server["image"]  # the one image, named once in deploy/
            stored = k8s.get("raycluster", name, "-n", NS)
            assert config.FINALIZER in stored["metadata"]["finalizers"]
            # released by the operator itself, or the control plane's teardown would wait on it
            k8s.kubectl("delete", "raycluster", name, "-n", NS, "--wait=true", "--timeout=120s")
            assert operator.stop() == 0, operator.logs()
