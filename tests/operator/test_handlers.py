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


async def test_a_cluster_with_null_metadata_is_admitted_unchanged_with_a_warning():
    """Issue 9, item 9: `metadata: null` raised outside the handler's guard."""
    for broken in ({"metadata": None, "spec": {}}, {"metadata": {"annotations": None}, "spec": None}, {}):
        patch, warnings = kopf.Patch(), []
        await Handlers(Settings(namespace="default")).inject(body=kopf.Body(broken), patch=patch, warnings=warnings,
                                                              histories={"rh/history": [history()]})
        assert dict(patch) == {}
        await Handlers(Settings()).inject(body=kopf.Body(broken), patch=patch, warnings=warnings,
                                          histories={"rh/history": [history()]})
        assert dict(patch) == {}
