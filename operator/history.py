"""A RayHistory's spec as typed values, with the same defaults as the CRD (crds/rayhistory.yaml).

The API server fills the CRD's defaults; parsing the spec here again makes the operator independent of
that (an older stored object, a test API without defaulting) and gives one typed view to every handler.
"""

from __future__ import annotations

import ipaddress

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

DEFAULT_IMAGE = "ghcr.io/rayhistory/rayhistory:0.1.0"
_DURATION_RE = re.compile(r"^(\d+)(s|m|h|d)$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_seconds(value: str) -> int:
    """'90s', '15m', '12h', '30d' -> seconds; '' or '0d' means no limit (0)."""
    if not value:
        return 0
    match = _DURATION_RE.match(value)
    if not match:
        raise ValueError(f"invalid duration {value!r}: use a number and one of s, m, h, d")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


class _Spec(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class SecretKeyRef(_Spec):
    name: str
    key: str = "token"


class LabelSelectorRequirement(_Spec):
    key: str
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] = Field(default_factory=list)


class LabelSelector(_Spec):
    match_labels: dict[str, str] = Field(default_factory=dict)
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list)

    def matches(self, labels: dict[str, str]) -> bool:
        if any(labels.get(k) != v for k, v in self.match_labels.items()):
            return False
        for req in self.match_expressions:
            present = req.key in labels
            if req.operator == "Exists" and not present:
                return False
            if req.operator == "DoesNotExist" and present:
                return False
            if req.operator == "In" and labels.get(req.key) not in req.values:
                return False
            if req.operator == "NotIn" and present and labels[req.key] in req.values:
                return False
        return True


class StorageSpec(_Spec):
    url: str
    options: dict[str, Any] = Field(default_factory=dict)
    # A Secret whose keys are environment variables (AWS_ACCESS_KEY_ID, AZURE_STORAGE_CONNECTION_STRING,
    # ...): the server and the collectors get it with envFrom; it must exist in each RayCluster namespace.
    credentials_secret: str = ""


class InjectionSpec(_Spec):
    enabled: bool = True
    namespaces: list[str] = Field(default_factory=list)  # empty: every watched namespace
    cluster_selector: LabelSelector = Field(default_factory=LabelSelector)


class CollectorSpec(_Spec):
    image: str = DEFAULT_IMAGE
    image_pull_policy: str = "IfNotPresent"
    resources: dict[str, Any] = Field(
        default_factory=lambda: {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}}
    )
    flush_interval: float = 5.0
    log_upload_interval: float = 30.0
    shutdown_grace: int = 20


class AuthSpec(_Spec):
    """Who may read the server's sessions (docs/security.md): the server's --auth settings."""

    mode: Literal["kubernetes", "off"] = "kubernetes"
    verb: str = Field("get", pattern=r"^[a-z*]{1,63}$")
    group: str = Field("ray.io", pattern=r"^[a-z0-9.-]{0,253}$")
    resource: str = Field("rayclusters", pattern=r"^[a-z0-9*/-]{1,253}$")
    cache_ttl_seconds: float = Field(30.0, ge=0, le=3600)
    # a fronting proxy (oauth2-proxy style) whose identity headers count, from these addresses/CIDRs only
    trusted_proxies: list[str] = Field(default_factory=list)
    proxy_identity: Literal["access-token", "user-headers"] = "access-token"

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for item in value:
            ipaddress.ip_network(item, strict=False)  # ValueError names the bad one
        return value


class ServerSpec(_Spec):
    replicas: int = 1
    image: str = DEFAULT_IMAGE
    image_pull_policy: str = "IfNotPresent"
    resources: dict[str, Any] = Field(
        default_factory=lambda: {"requests": {"cpu": "250m", "memory": "1Gi"}, "limits": {"memory": "4Gi"}}
    )
    cache_max_sessions: int = 16
    cache_max_bytes: int = 2 * 1024**3
    # a session whose tasks take more keeps them on the Pod's /tmp emptyDir (-1: half of cache_max_bytes)
    tasks_on_disk_above_bytes: int = -1
    load_timeout: float = 120.0
    # live sessions: proxied to their heads, or answered from storage (the heads never asked)
    live_sessions: Literal["proxy", "storage"] = "proxy"
    live_reload_seconds: float = 15.0
    prewarm_token_secret: SecretKeyRef | None = None
    auth: AuthSpec = Field(default_factory=AuthSpec)
    # Ray's dashboard token (RAY_AUTH_MODE=token heads) the live proxy sends; the Secret beside the server
    ray_token_secret: SecretKeyRef | None = None


class IngressTLS(_Spec):
    hosts: list[str] = Field(default_factory=list)
    secret_name: str = ""


class IngressSpec(_Spec):
    enabled: bool = False
    host: str = ""
    class_name: str = ""
    path: str = "/"
    annotations: dict[str, str] = Field(default_factory=dict)
    tls: list[IngressTLS] = Field(default_factory=list)


class RetentionSpec(_Spec):
    max_age: str = "30d"
    max_sessions_per_cluster: int = 0  # 0: no limit

    @property
    def max_age_ms(self) -> int:
        return duration_seconds(self.max_age) * 1000


class HistorySpec(_Spec):
    storage: StorageSpec
    injection: InjectionSpec = Field(default_factory=InjectionSpec)
    collector: CollectorSpec = Field(default_factory=CollectorSpec)
    server: ServerSpec = Field(default_factory=ServerSpec)
    ingress: IngressSpec = Field(default_factory=IngressSpec)
    retention: RetentionSpec = Field(default_factory=RetentionSpec)


def parse_spec(spec: dict[str, Any]) -> HistorySpec:
    return HistorySpec.model_validate(dict(spec))


def server_name(history_name: str) -> str:
    """The name of the server's Deployment, Service, Ingress and ServiceAccount."""
    return f"{history_name}-server"


def server_service_url(history_name: str, namespace: str, port: int) -> str:
    return f"http://{server_name(history_name)}.{namespace}.svc:{port}"
