"""The webhook handler's own guard: clusters outside the watched namespaces are never injected."""

from __future__ import annotations

import kopf

from rayhistory.operator.config import FINALIZER, Settings
from rayhistory.operator.handlers import Handlers
from tests.operator.test_specs import example_cluster, history


async def inject(settings: Settings, cluster: dict) -> kopf.Patch:
    patch = kopf.Patch()
    await Handlers(settings).inject(body=kopf.Body(cluster), patch=patch, warnings=[],
                                    histories={"rh/history": [history()]})
    return patch


async def test_injects_in_watched_namespaces_only():
    cluster = example_cluster()  # namespace "default"
    assert (await inject(Settings(namespace="default,ml"), cluster))["metadata"]["finalizers"] == [FINALIZER]
    assert (await inject(Settings(), cluster))["metadata"]["finalizers"] == [FINALIZER]  # all namespaces
    # Not watched: the operator would never see the deletion, so the finalizer would hold it forever.
    assert dict(await inject(Settings(namespace="ml"), cluster)) == {}
