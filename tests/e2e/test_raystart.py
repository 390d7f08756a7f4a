"""rayhistory/raystart.py: the Ray head starter of `make demo` and the end-to-end tests, with explicit auth."""

from __future__ import annotations

import http.server
import threading
import urllib.error
import urllib.request

import pytest

from rayhistory import raystart


def test_a_401_is_reported_as_what_it_is_not_waited_out():
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            ok = self.headers.get("Authorization") == "Bearer right"
            self.send_response(200 if ok else 401)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/api/version"
    try:
        with pytest.raises(raystart.DashboardUnauthorized, match="401 Unauthorized.*sent no token"):
            raystart.wait_http(url, timeout_s=30)
        with pytest.raises(raystart.DashboardUnauthorized, match="sent a token it refused"):
            raystart.wait_http(url, timeout_s=30, headers={"Authorization": "Bearer wrong"})
        raystart.wait_http(url, timeout_s=5, headers={"Authorization": "Bearer right"})
    finally:
        server.shutdown()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_users_token_file_and_auth_mode_do_not_reach_the_cluster_and_token_mode_is_private(tmp_path, monkeypatch):
    """~/.ray/auth_token (which a first local ray.init() writes) and RAY_AUTH_MODE=token in the environment
    would turn token auth on for `ray start`: the starter's cluster is explicit about its own auth instead."""
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("the-users-own-token")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    cluster = raystart.start(num_cpus=1)
    try:
        with urllib.request.urlopen(cluster.dashboard_url + "/api/version", timeout=5) as resp:
            assert resp.status == 200  # no token needed: the cluster's auth is off, explicitly
        assert cluster.env["RAY_AUTH_MODE"] == "disabled" and not cluster.auth_token
    finally:
        cluster.cleanup()
    cluster = raystart.start(num_cpus=1, auth="token")
    try:
        assert cluster.auth_token and cluster.auth_token != "the-users-own-token"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(cluster.dashboard_url + "/api/version", timeout=5)
        assert refused.value.code == 401
        request = urllib.request.Request(cluster.dashboard_url + "/api/version", headers=cluster.auth_headers)
        with urllib.request.urlopen(request, timeout=5) as resp:
            assert resp.status == 200
    finally:
        cluster.cleanup()
