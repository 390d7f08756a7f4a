"""Run the Kopf operator: RayHistory -> history server, collector injection, record on deletion, retention."""

from __future__ import annotations

import kopf

from . import config
from .config import Settings
from .handlers import Handlers
from .webhook import build_webhook_server

__all__ = ["Settings", "main", "build_registry", "build_kopf_settings", "kopf_run_args"]


def build_registry(settings: Settings) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    # Kopf's default registry adds this itself; ours is explicit: in-cluster or KUBECONFIG credentials.
    kopf.on.login(registry=registry)(kopf.login_via_client)
    Handlers(settings).register(registry)
    return registry


def build_kopf_settings(settings: Settings) -> kopf.OperatorSettings:
    kopf_settings = kopf.OperatorSettings()
    kopf_settings.persistence.finalizer = config.FINALIZER
    # Annotations only: a RayCluster's status belongs to KubeRay.
    kopf_settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=config.KOPF_PREFIX)
    kopf_settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=config.KOPF_PREFIX, key="last-handled-configuration")
    kopf_settings.admission.server = build_webhook_server(settings)
    kopf_settings.admission.managed = settings.webhook_managed_config or None
    kopf_settings.watching.server_timeout = 300
    return kopf_settings


def kopf_run_args(settings: Settings) -> list[str]:
    """The `kopf run` flags equivalent to `main` (what tests pass to kopf.testing.KopfRunner)."""
    args = ["run"]
    if settings.standalone:
        args.append("--standalone")
    watched = settings.watched_namespaces()
    args += [a for n in watched for a in ("--namespace", n)] if watched else ["--all-namespaces"]
    if settings.liveness_port:
        args += ["--liveness", f"http://0.0.0.0:{settings.liveness_port}/healthz"]
    return args


def main(settings: Settings) -> int:
    watched = settings.watched_namespaces()
    kopf.run(
        registry=build_registry(settings),
        settings=build_kopf_settings(settings),
        standalone=settings.standalone,
        namespaces=watched,
        clusterwide=not watched,
        liveness_endpoint=f"http://0.0.0.0:{settings.liveness_port}/healthz" if settings.liveness_port else None,
    )
    return 0
