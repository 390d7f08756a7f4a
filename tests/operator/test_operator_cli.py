"""`rayhistory operator` as a process: it logs in from $KUBECONFIG, serves its webhook and gets healthy."""

from __future__ import annotations

import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.kube_api import running_kube_api, write_kubeconfig

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_operator_process_starts_and_stops(tmp_path):
    with running_kube_api() as (api, url):
        # as if both CRDs were installed (before the operator starts: no request is being served)
        api.declare("rayhistory.io/v1alpha1/rayhistories", "RayHistory", True, ("status",))
        api.declare("ray.io/v1/rayclusters", "RayCluster", True, ("status",))
        kubeconfig = write_kubeconfig(str(tmp_path / "kubeconfig"), url)
        health, webhook, metrics = free_port(), free_port(), free_port()
        log = open(tmp_path / "operator.log", "wb")
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "rayhistory"), "operator", "--liveness-port", str(health),
             "--metrics-port", str(metrics),
             "--webhook-addr", "127.0.0.1", "--webhook-port", str(webhook),
             "--webhook-cert-dir", str(tmp_path / "no-certs"), "--log-format", "text"],
            env={"KUBECONFIG": kubeconfig, "PATH": "/usr/bin:/bin"}, stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 60
            healthy = False
            while time.monotonic() < deadline and not healthy:
                assert proc.poll() is None, (tmp_path / "operator.log").read_text()
                try:
                    healthy = urllib.request.urlopen(f"http://127.0.0.1:{health}/healthz", timeout=1).status == 200
                except OSError:
                    time.sleep(0.3)
            assert healthy, (tmp_path / "operator.log").read_text()
            # The webhook answers HTTPS with the self-signed fallback certificate.
            context = ssl.create_default_context()
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
            request = urllib.request.Request(f"https://127.0.0.1:{webhook}/inject", data=b"not json", method="POST")
            with pytest.raises(urllib.error.HTTPError) as bad:
                urllib.request.urlopen(request, context=context, timeout=5)
            assert bad.value.code == 400  # reached Kopf's admission handler, which rejects a non-review
            scraped = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5).read().decode()
            assert "# TYPE rayhistory_operator_admissions_total counter" in scraped
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
            # It watched what it handles, cluster-wide.
            watched = {r.url.path for r in api.requests if r.params.get("watch") == "true"}
            assert {"/apis/rayhistory.io/v1alpha1/rayhistories", "/apis/ray.io/v1/rayclusters"} <= watched
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            log.close()
