"""RayHistory -> the server's ServiceAccount, RBAC, Deployment, Service and Ingress.

Namespaced objects are owned by the RayHistory, so Kubernetes deletes them with it; the one
cluster-scoped object (the ClusterRoleBinding) is deleted by `remove_cluster_objects` on deletion.
"""

from __future__ import annotations

import datetime
from typing import Any

from . import specs
from .history import HistorySpec, server_name
from .kube import Kube, object_path, path_of


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def ready_condition(ok: bool, reason: str, message: str) -> dict[str, Any]:
    return {
        "type": "Ready", "status": "True" if ok else "False", "reason": reason, "message": message,
        "lastTransitionTime": now_rfc3339(),
    }


async def reconcile(kube: Kube, history: dict[str, Any], spec: HistorySpec, internal_token: str) -> dict[str, Any]:
    """Bring the server's objects to the desired state; returns the status to record."""
    if spec.server.prewarm_token_secret is None:  # else the user's Secret holds the token (docs/operator.md)
        await kube.put(specs.build_internal_token_secret_spec(history, internal_token))
    await kube.apply(specs.build_service_account_spec(history))
    await kube.apply(specs.build_cluster_role_binding_spec(history))
    await kube.apply(specs.build_server_deployment_spec(history, spec))
    await kube.apply(specs.build_server_service_spec(history))
    ingress = specs.build_server_ingress_spec(history, spec)
    if ingress is not None:
        await kube.apply(ingress)
    else:
        meta = history["metadata"]
        await kube.delete(object_path("networking.k8s.io/v1", "Ingress", meta["namespace"], server_name(meta["name"])))
    return {
        "serverURL": specs.server_url(history, spec),
        "observedGeneration": history["metadata"].get("generation", 0),
        "conditions": [ready_condition(True, "Reconciled", "server Deployment, Service and Ingress are applied")],
    }


async def remove_cluster_objects(kube: Kube, history: dict[str, Any]) -> None:
    await kube.delete(path_of(specs.build_cluster_role_binding_spec(history)))
