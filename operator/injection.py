"""The mutating admission webhook on RayCluster CREATE and UPDATE: inject the collector, never block.

CREATE picks the RayHistory and injects. UPDATE only keeps an injected cluster injected: `kubectl apply`
of the user's unchanged manifest sends the pod templates without our container (for a custom resource
a client-side apply replaces whole lists, and a server-side apply drops what the webhook added at
creation), and KubeRay would then create new Pods without the collector.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError

from . import config, specs
from .history import HistorySpec, parse_spec

log = logging.getLogger(__name__)


def known_histories(bodies: list[dict[str, Any]]) -> list[tuple[dict[str, Any], HistorySpec]]:
    """The RayHistories with a valid spec (an invalid one is reported by reconcile, skipped here)."""
    out = []
    for body in bodies:
        try:
            out.append((body, parse_spec(body.get("spec") or {})))
        except ValidationError:
            continue
    return out


def admission_patch(cluster: dict[str, Any], histories: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, str]:
    """(merge patch or None, note). Any error leaves the cluster unchanged and says why in the note."""
    try:
        chosen = specs.choose_history(cluster, known_histories(histories))
        if chosen is None:
            return None, "no RayHistory selects this cluster"
        history, spec = chosen
        return specs.inject_raycluster(cluster, history, spec), f"collector injected by {specs.history_ref(history)}"
    except Exception as exc:  # noqa: BLE001 - a broken input must never block a RayCluster's creation
        return None, f"rayhistory: collector not injected ({type(exc).__name__}: {exc})"


def update_patch(cluster: dict[str, Any], histories: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, str]:
    """On UPDATE: the spec changes that put back what an update removed, for a cluster injected at
    creation by a RayHistory that still exists. Finalizers and annotations are left as the update has
    them (removing the finalizer by hand must keep working), and a cluster being deleted is left alone."""
    try:
        meta = cluster.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            return None, "being deleted"
        ref = (meta.get("annotations") or {}).get(config.HISTORY_ANNOTATION)
        if not ref:
            return None, "not injected at creation"
        found = [(h, s) for h, s in known_histories(histories) if specs.history_ref(h) == ref]
        if not found:
            return None, f"rayhistory: RayHistory {ref} is gone: collector not re-injected"
        history, spec = found[0]
        changes = specs.inject_raycluster(cluster, history, spec)["spec"]
        body = cluster.get("spec") or {}
        if all(body.get(key) == value for key, value in changes.items()):
            return None, "still injected"
        return {"spec": changes}, f"collector re-injected by {ref}"
    except Exception as exc:  # noqa: BLE001 - a broken input must never block an update
        return None, f"rayhistory: collector not re-injected ({type(exc).__name__}: {exc})"
