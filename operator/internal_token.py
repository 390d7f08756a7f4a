"""The servers' internal-port token: what lets the operator, and only it, call /internal/prewarm.

One random token per operator, kept in the Secret `rayhistory-internal-token` of the operator's own
namespace (created on first use, read back after a restart, so it survives the operator), and copied
into a Secret beside each RayHistory's server, which reads it from there. The operator writes Secrets in
other namespaces but never reads them: its ClusterRole has create and patch on secrets, and only its own
namespace's Role may get this one Secret.
"""

from __future__ import annotations

import base64
import logging
import secrets

from kubernetes.client.rest import ApiException

from . import config
from .config import Settings
from .kube import Kube, Obj, object_path

log = logging.getLogger(__name__)


def new_token() -> str:
    return secrets.token_urlsafe(32)


def build_operator_token_secret_spec(namespace: str, token: str) -> Obj:
    return {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": config.INTERNAL_TOKEN_SECRET, "namespace": namespace,
                     "labels": {"app.kubernetes.io/name": "rayhistory-operator"}},
        "stringData": {config.INTERNAL_TOKEN_KEY: token},
    }


def token_of(secret: Obj) -> str:
    """The token a Secret holds (its data is base64), or '' when it holds none."""
    value = (secret.get("data") or {}).get(config.INTERNAL_TOKEN_KEY, "")
    return base64.b64decode(value).decode() if value else (secret.get("stringData") or {}).get(config.INTERNAL_TOKEN_KEY, "")


async def load_operator_token(kube: Kube, settings: Settings) -> str:
    """The token: given explicitly, else the operator's Secret (created with a fresh token if absent)."""
    if settings.prewarm_token:
        return settings.prewarm_token
    if not settings.operator_namespace:
        log.warning("no --prewarm-token and no --operator-namespace: this process's servers get a token that "
                    "lives only as long as it does")
        return new_token()
    path = object_path("v1", "Secret", settings.operator_namespace, config.INTERNAL_TOKEN_SECRET)
    found = await kube.get(path)
    if found is None:
        try:
            await kube.request("POST", path.rsplit("/", 1)[0],
                               build_operator_token_secret_spec(settings.operator_namespace, new_token()))
            log.info("internal token created", extra={"secret": config.INTERNAL_TOKEN_SECRET})
        except ApiException as exc:
            if exc.status != 409:  # another operator process created it first: read theirs
                raise
        found = await kube.get(path) or {}
    token = token_of(found)
    if not token:
        raise RuntimeError(f"Secret {settings.operator_namespace}/{config.INTERNAL_TOKEN_SECRET} has no "
                           f"{config.INTERNAL_TOKEN_KEY!r} key")
    return token
