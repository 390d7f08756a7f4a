"""The operator's settings and the names it shares with the manifests in crds/ and deploy/."""

from __future__ import annotations

from pydantic import Field

from rayhistory.config import CommonSettings

GROUP = "rayhistory.io"
VERSION = "v1alpha1"
HISTORY_PLURAL = "rayhistories"
RAY_GROUP = "ray.io"
RAY_VERSION = "v1"
RAYCLUSTER_PLURAL = "rayclusters"

# On a RayCluster, as an annotation or a label: "false" opts the cluster out of injection.
INJECT_ANNOTATION = f"{GROUP}/inject"
# On an injected RayCluster: "<namespace>/<name>" of the RayHistory that injected it.
HISTORY_ANNOTATION = f"{GROUP}/history"
# Holds an injected RayCluster's deletion until its sessions are recorded (or the deadline passes).
FINALIZER = f"{GROUP}/record"
# Kopf keeps its handler progress in annotations under this prefix.
KOPF_PREFIX = f"operator.{GROUP}"

COLLECTOR_CONTAINER = "rayhistory-collector"
# The servers' internal-port token: one Secret in the operator's namespace, copied into each RayHistory's.
INTERNAL_TOKEN_SECRET = "rayhistory-internal-token"
INTERNAL_TOKEN_KEY = "token"

COLLECTOR_PORT = 8084  # ingest, on the pod's loopback only
COLLECTOR_METRICS_PORT = 8085  # /metrics and /healthz, for Prometheus and the kubelet
RAY_TEMP_ROOT = "/tmp/ray"
# KubeRay's own name for the /tmp/ray emptyDir it shares between Ray and its autoscaler sidecar: using it
# makes KubeRay mount our volume into the autoscaler too, instead of a second, separate /tmp/ray.
RAY_TEMP_VOLUME = "ray-logs"
RAY_TEMP_VOLUME_FALLBACK = "rayhistory-ray-tmp"  # when the pod already uses that name for something else
RAY_DASHBOARD_URL = "http://127.0.0.1:8265"
# The collector's spool on a pod volume: it survives a restart of the collector container.
SPOOL_VOLUME = "rayhistory-spool"
SPOOL_DIR = "/var/spool/rayhistory"

SERVER_PORT = 8080
SERVER_INTERNAL_PORT = 8081
SERVER_CLUSTER_ROLE = "rayhistory-server"


class Settings(CommonSettings):
    """`rayhistory operator`: storage comes from each RayHistory, not from --storage."""

    namespace: str = Field(
        "", description="comma-separated namespaces to watch; empty watches all namespaces",
    )
    webhook_addr: str = Field("0.0.0.0", description="address the admission webhook listens on")
    webhook_port: int = Field(9443, description="port of the admission webhook (HTTPS)")
    webhook_host: str = Field(
        "", description="host name the API server uses to reach the webhook (managed configuration only)",
    )
    webhook_cert_dir: str = Field(
        "/etc/rayhistory/webhook-tls",
        description="folder with tls.crt, tls.key and optionally ca.crt (a cert-manager Secret); "
        "a self-signed certificate is generated when it is missing",
    )
    webhook_managed_config: str = Field(
        "",
        description="name of a MutatingWebhookConfiguration the operator writes itself (URL and "
        "caBundle); empty uses the static one from deploy/",
    )
    finalizer_deadline: float = Field(
        120.0, description="seconds a RayCluster deletion may wait for its collectors' final flush",
    )
    finalizer_poll_interval: float = Field(3.0, description="seconds between checks of the final flush")
    retention_interval: float = Field(600.0, description="seconds between retention runs per RayHistory")
    superseded_grace: float = Field(
        600.0, description="seconds after a newer session started before an older live one is marked dead",
    )
    prewarm_url: str = Field(
        "",
        description="base URL of the server's internal port for pre-warm calls; empty means "
        "http://<server-service>.<namespace>.svc:8081",
    )
    prewarm_token: str = Field(
        "", description="bearer token of the servers' /internal/prewarm; empty: the operator keeps a random one in "
        "the Secret rayhistory-internal-token of its own namespace and hands it to every server it deploys")
    operator_namespace: str = Field(
        "", description="the operator's own namespace (the downward API sets it in deploy/): where the internal "
        "token's Secret lives")
    platform_events: bool = Field(
        True, description="keep the Kubernetes Events of injected RayClusters, their Pods and owners in their "
        "sessions (the dashboard's Platform Events page); needs list/watch on events",
    )
    platform_events_flush_interval: float = Field(
        5.0, gt=0, description="seconds between writes of the Kubernetes Events kept (one object per session)")
    platform_events_max_per_session: int = Field(
        2000, ge=1, description="most distinct Kubernetes Events kept per session (warnings first when over)")
    platform_events_max_bytes: int = Field(
        1 << 20, ge=4096, description="most stored bytes of Kubernetes Events per session")
    prewarm_timeout: float = Field(10.0, description="seconds one pre-warm call may take")
    liveness_port: int = Field(8090, description="port of the operator's /healthz (0 disables it)")
    metrics_port: int = Field(8091, description="port of the operator's Prometheus /metrics (0 disables it)")
    standalone: bool = Field(True, description="run without Kopf peering (one operator replica)")

    def watched_namespaces(self) -> list[str]:
        """The namespaces Kopf watches; empty means all."""
        return [n.strip() for n in self.namespace.split(",") if n.strip()]
