"""Traefik v3, the real Ingress controller, run outside the cluster against the test's kube-apiserver.

    with running_traefik(folder, k8s, ingress_class="rayhistory-test", namespaces=["ns"]) as traefik:
        traefik.http_base      # http://127.0.0.1:PORT/ (send the Ingress's Host, or resolve it there)

Its Kubernetes Ingress provider reads the admin kubeconfig (KUBECONFIG, as an out-of-cluster controller
does), watches the IngressClass it is given and routes to the addresses of the Services' EndpointSlices.
Every entry point listens on 127.0.0.1. The binary comes from `make k8s-tools` (tests/k8s/build.sh builds
it from the github.com/traefik/traefik/v3 module into .tools/traefik-<version>/).
"""

from __future__ import annotations

import contextlib
import json
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.backends import require_tool
from tests.conftest import free_port
from tests.e2e.browser import http_ok
from tests.k8s.cluster import BUILD_HINT, TOOLS, Cluster, Process, child_env

TRAEFIK_VERSION = "v3.6.12"  # the same as tests/k8s/build.sh
TRAEFIK = TOOLS / f"traefik-{TRAEFIK_VERSION}" / "traefik"
# What Traefik's IngressClass names as its controller (an IngressClass for another controller is ignored).
CONTROLLER = "traefik.io/ingress-controller"


def ingress_class(name: str) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass", "metadata": {"name": name},
            "spec": {"controller": CONTROLLER}}


@dataclass
class Traefik:
    process: Process
    web_port: int
    websecure_port: int
    api_port: int

    @property
    def http_base(self) -> str:
        return f"http://127.0.0.1:{self.web_port}/"

    def routers(self) -> list[dict]:
        """Traefik's own view of the routes it built (its API on the internal entry point)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.api_port}/api/http/routers", timeout=5) as resp:
            return json.loads(resp.read())

    def services(self) -> list[dict]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.api_port}/api/http/services", timeout=5) as resp:
            return json.loads(resp.read())


def static_config(web: int, websecure: int, api: int, ingress_class_name: str, namespaces: list[str],
                  response_header_timeout_s: float, dynamic_file: Path | None) -> dict:
    providers: dict = {"kubernetesIngress": {
        "ingressClass": ingress_class_name, "namespaces": namespaces, "throttleDuration": "0s"}}
    if dynamic_file is not None:  # routes and middlewares of the test's own (the Ingress names them as <name>@file)
        providers["file"] = {"filename": str(dynamic_file), "watch": False}
    return {
        "global": {"checkNewVersion": False, "sendAnonymousUsage": False},
        "log": {"level": "INFO"},
        "accessLog": {"format": "json"},
        "entryPoints": {
            "web": {"address": f"127.0.0.1:{web}"},
            # TLS on the entry point, as Traefik's Helm chart sets it up: every router on it is HTTPS, with the
            # certificate of the Ingresses' spec.tls Secrets picked by SNI (Traefik's own default one otherwise).
            "websecure": {"address": f"127.0.0.1:{websecure}", "http": {"tls": {}}},
            "traefik": {"address": f"127.0.0.1:{api}"},
        },
        "ping": {"entryPoint": "traefik"},
        "api": {"insecure": True, "dashboard": False},  # the routers' API only; the web UI is not built
        # Traefik itself sets no limit on a backend's response headers; this stands in for controllers whose
        # default does (ingress-nginx: 60 s), kept short so that a cold load outlasts it in seconds.
        "serversTransport": {"forwardingTimeouts": {"responseHeaderTimeout": f"{response_header_timeout_s}s"}},
        "providers": providers,
    }


@contextlib.contextmanager
def running_traefik(folder: Path, k8s: Cluster, ingress_class_name: str, namespaces: list[str],
                    response_header_timeout_s: float = 60.0, web_port: int | None = None,
                    dynamic: dict | None = None) -> Iterator[Traefik]:
    """`dynamic`: Traefik dynamic configuration for its file provider (None: the Ingress provider only)."""
    binary = require_tool(TRAEFIK, BUILD_HINT)
    folder.mkdir(parents=True, exist_ok=True)
    web, websecure, api = web_port or free_port(), free_port(), free_port()
    dynamic_file = None
    if dynamic is not None:
        dynamic_file = folder / "dynamic.yaml"
        dynamic_file.write_text(yaml.safe_dump(dynamic))
    config = folder / "traefik.yaml"
    config.write_text(yaml.safe_dump(static_config(web, websecure, api, ingress_class_name, namespaces,
                                                   response_header_timeout_s, dynamic_file)))
    process = Process("traefik", [str(binary), f"--configFile={config}"], folder,
                      env=child_env(KUBECONFIG=str(k8s.admin_kubeconfig)))
    k8s.processes["traefik"] = process  # its log is shown with the control plane's on failure
    try:
        with process.running("Traefik /ping", lambda: http_ok(f"http://127.0.0.1:{api}/ping")):
            yield Traefik(process, web, websecure, api)
    finally:
        k8s.processes.pop("traefik", None)
