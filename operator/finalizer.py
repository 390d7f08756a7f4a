"""Record on deletion: an injected RayCluster's deletion waits (bounded) for its collectors' final flush,
then its sessions are marked dead in the index and the history server is asked to pre-warm them.

Order of events on `kubectl delete raycluster X`:
1. Kubernetes sets deletionTimestamp; our finalizer (added by the webhook) holds the object.
2. The operator deletes the cluster's pods: KubeRay does not reconcile a cluster being deleted, and the
   pods' own garbage collection would only start after the RayCluster is gone, i.e. after the final
   flush we wait for. Each collector flushes on SIGTERM and writes a `flushed` index record.
3. The operator polls the index until every node of every live session is flushed, or the deadline
   (deletionTimestamp + finalizer_deadline) passes; then it marks the sessions dead, calls pre-warm
   and Kopf removes the finalizer.
If the operator is down, the deletion waits until it is back (the deadline has then passed, so it
records and releases at once), or until someone removes the finalizer by hand (docs/operator.md).
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass

from rayhistory.index import SessionIndex, SessionInfo, mark_dead
from rayhistory.store import Store

log = logging.getLogger(__name__)


def pending_flush(sessions: list[SessionInfo]) -> list[SessionInfo]:
    """Live sessions with a node whose collector has not reported its final flush yet."""
    return [s for s in sessions if s.state == "live" and set(s.node_ids) - set(s.flushed_node_ids)]


def parse_timestamp(value: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))


def deadline_passed(deletion_timestamp: str | None, deadline_s: float, now: datetime.datetime) -> bool:
    if not deletion_timestamp:
        return True
    return now >= parse_timestamp(deletion_timestamp) + datetime.timedelta(seconds=deadline_s)


def dead_reason(pending: list[SessionInfo]) -> str:
    if not pending:
        return "cluster deleted"
    nodes = sorted({n for s in pending for n in set(s.node_ids) - set(s.flushed_node_ids)})
    return f"cluster deleted; final flush not confirmed before the deadline for nodes {', '.join(n[:12] for n in nodes)}"


class FlushPending(Exception):
    def __init__(self, pending: list[SessionInfo]):
        super().__init__(f"waiting for the final flush of {len(pending)} session(s): "
                         + ", ".join(s.session for s in pending))
        self.pending = pending


@dataclass
class Recorded:
    marked: list[SessionInfo]
    reason: str
    flushed: bool  # every collector confirmed its final flush (else the deadline ended the wait)


async def record_cluster(store: Store, namespace: str, cluster: str, deadline_reached: bool,
                         end_ms: int | None = None) -> Recorded:
    """Mark the cluster's sessions dead once flushed (ended at `end_ms`, the deletion time); raises
    FlushPending while waiting is allowed."""
    sessions = await SessionIndex(store).sessions(namespace, cluster)
    pending = pending_flush(sessions)
    if pending and not deadline_reached:
        raise FlushPending(pending)
    reason = dead_reason(pending)
    marked = await mark_dead(store, namespace, cluster, None, reason, end_ms)
    log.info("cluster recorded", extra={"namespace": namespace, "cluster": cluster, "reason": reason,
                                        "sessions": [s.session for s in marked]})
    return Recorded(marked, reason, flushed=not pending)
