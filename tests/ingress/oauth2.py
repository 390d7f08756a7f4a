"""oauth2-proxy (github.com/oauth2-proxy/oauth2-proxy/v7) and its test-only OIDC provider, on 127.0.0.1.

The provider is github.com/oauth2-proxy/mockoidc (tests/ingress/mockoidc/main.go runs it as a process): it
signs real ID tokens, and the next login is whichever user the test queued (`MockOidc.queue_user`); it stands in
for a company's identity provider, which cannot run here. oauth2-proxy is the real thing, configured as it is
behind Traefik's forwardAuth: every request is checked at its `/` (upstream `static://202`), a browser without
its cookie is sent to the provider, and an allowed request gets the user's identity as response headers that
Traefik copies onto the request it forwards (`authResponseHeaders`, replacing whatever the client sent).
Both binaries come from `make k8s-tools` (tests/k8s/build.sh) into .tools/.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.backends import require_tool
from tests.conftest import free_port
from tests.e2e.browser import http_ok
from tests.k8s.cluster import BUILD_HINT, TOOLS, Process

OAUTH2_PROXY_VERSION = "v7.15.6"  # the same as tests/k8s/build.sh
MOCKOIDC_DIR = Path(__file__).with_name("mockoidc")
CLIENT_ID, CLIENT_SECRET = "rayhistory", "rayhistory-client-secret"
# The identity headers the history server believes from a trusted proxy (--auth-proxy-identity user-headers).
IDENTITY_HEADERS = ["X-Forwarded-User", "X-Forwarded-Groups"]


def mockoidc_version() -> str:
    for line in (MOCKOIDC_DIR / "go.mod").read_text().splitlines():
        parts = line.split()
        if parts[:1] == ["require"] and len(parts) == 3 and parts[1] == "github.com/oauth2-proxy/mockoidc":
            return parts[2]
    raise RuntimeError("tests/ingress/mockoidc/go.mod requires no github.com/oauth2-proxy/mockoidc")


@dataclass
class MockOidc:
    process: Process
    issuer: str
    control: str

    def queue_user(self, subject: str, groups: list[str]) -> None:
        """The next login through the provider is this user (preferred_username = subject)."""
        body = json.dumps({"subject": subject, "email": f"{subject}@example.test", "preferred_username": subject,
                           "groups": groups}).encode()
        request = urllib.request.Request(self.control + "/next-user", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert resp.status == 204


@contextlib.contextmanager
def running_mockoidc(folder: Path) -> Iterator[MockOidc]:
    binary = require_tool(TOOLS / f"mockoidc-{mockoidc_version()}" / "mockoidc", BUILD_HINT)
    port, control = free_port(), free_port()
    issuer = f"http://127.0.0.1:{port}/oidc"
    process = Process("mockoidc", [str(binary), "-addr", f"127.0.0.1:{port}", "-control", f"127.0.0.1:{control}",
                                   "-client-id", CLIENT_ID, "-client-secret", CLIENT_SECRET], folder)
    with process.running("mockoidc's discovery document", lambda: http_ok(issuer + "/.well-known/openid-configuration")):
        yield MockOidc(process, issuer, f"http://127.0.0.1:{control}")


def alpha_config(port: int, issuer: str) -> dict:
    """oauth2-proxy's structured configuration: the provider, the 202 upstream, the identity response headers."""
    claim = {"X-Forwarded-User": "preferred_username", "X-Forwarded-Groups": "groups"}
    return {
        "server": {"bindAddress": f"127.0.0.1:{port}"},
        "upstreamConfig": {"upstreams": [{"id": "forward-auth", "path": "/", "static": True, "staticCode": 202}]},
        "injectResponseHeaders": [{"name": name, "values": [{"claimSource": {"claim": claim[name]}}]}
                                  for name in IDENTITY_HEADERS],
        "providers": [{
            "id": "mockoidc", "provider": "oidc", "clientID": CLIENT_ID, "clientSecret": CLIENT_SECRET,
            "scope": "openid email profile groups",
            "oidcConfig": {"issuerURL": issuer, "emailClaim": "email", "groupsClaim": "groups",
                           "userIDClaim": "sub", "audienceClaims": ["aud"], "insecureSkipNonce": True},
        }],
    }


@dataclass
class OAuth2Proxy:
    process: Process
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"


@contextlib.contextmanager
def running_oauth2_proxy(folder: Path, issuer: str, public_host: str, public_port: int) -> Iterator[OAuth2Proxy]:
    """`public_host:public_port`: what the user's browser has in its address bar (the Ingress host on Traefik's
    port); the callback is under it, and redirects after login may go only there."""
    binary = require_tool(TOOLS / f"oauth2-proxy-{OAUTH2_PROXY_VERSION}" / "oauth2-proxy", BUILD_HINT)
    port = free_port()
    config = folder / "oauth2-proxy.yaml"
    config.write_text(yaml.safe_dump(alpha_config(port, issuer)))
    argv = [str(binary), f"--alpha-config={config}",
            f"--cookie-secret={base64.urlsafe_b64encode(os.urandom(32)).decode()}",
            "--cookie-secure=false",  # the test's plain-HTTP entry point; use TLS in production
            "--email-domain=*", f"--redirect-url=http://{public_host}:{public_port}/oauth2/callback",
            "--reverse-proxy=true", "--skip-provider-button=true", f"--whitelist-domain={public_host}:{public_port}"]
    process = Process("oauth2-proxy", argv, folder)
    with process.running("oauth2-proxy /ping", lambda: http_ok(f"http://127.0.0.1:{port}/ping")):
        yield OAuth2Proxy(process, port)


def traefik_forward_auth(proxy: OAuth2Proxy, host: str) -> dict:
    """Traefik dynamic configuration: the `oauth2` middleware (forwardAuth to oauth2-proxy) that the Ingress names
    in its annotation, and a route for oauth2-proxy's own /oauth2/ paths (its callback) on the same host."""
    return {"http": {
        "middlewares": {"oauth2": {"forwardAuth": {"address": proxy.url, "authResponseHeaders": IDENTITY_HEADERS}}},
        "routers": {"oauth2-proxy": {"rule": f"Host(`{host}`) && PathPrefix(`/oauth2/`)", "priority": 10_000,
                                     "service": "oauth2-proxy"}},
        "services": {"oauth2-proxy": {"loadBalancer": {"servers": [{"url": proxy.url}]}}},
    }}
