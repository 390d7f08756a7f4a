"""The mutating admission webhook on RayCluster CREATE: inject the collector, never block creation."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError

from . import specs
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
