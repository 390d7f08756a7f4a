"""Retention: which sessions to close and to delete (pure), and the run that does it on one store.

Only dead sessions are ever deleted. A session goes with everything under its two prefixes: raw events,
logs, endpoint answers and snapshots (sessions/...), then its index records (index/...), last, so that a
run interrupted half-way still lists the session and the next run finishes it.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field

from rayhistory import layout
from rayhistory.index import SessionIndex, SessionInfo, mark_dead
from rayhistory.store import Store

from .history import RetentionSpec

log = logging.getLogger(__name__)

SUPERSEDED_REASON = "superseded by a newer session of the same cluster (head restart)"


def session_end_ms(info: SessionInfo) -> int:
    return info.end_ms or info.last_update_ms or info.start_ms


def sessions_to_delete(sessions: list[SessionInfo], now_ms: int, retention: RetentionSpec) -> list[SessionInfo]:
    """Dead sessions older than max age, and dead ones beyond the newest N of their cluster."""
    doomed: dict[tuple[str, str, str], SessionInfo] = {}
    max_age_ms = retention.max_age_ms
    if max_age_ms:
        for info in sessions:
            if info.state == "dead" and now_ms - session_end_ms(info) > max_age_ms:
                doomed[(info.namespace, info.cluster, info.session)] = info
    if retention.max_sessions_per_cluster > 0:
        by_cluster: dict[tuple[str, str], list[SessionInfo]] = defaultdict(list)
        for info in sessions:
            by_cluster[(info.namespace, info.cluster)].append(info)
        for group in by_cluster.values():
            group.sort(key=lambda s: (s.start_ms, s.session), reverse=True)
            for info in group[retention.max_sessions_per_cluster:]:
                if info.state == "dead":
                    doomed[(info.namespace, info.cluster, info.session)] = info
    return sorted(doomed.values(), key=lambda s: (s.namespace, s.cluster, s.session))


def superseded_sessions(sessions: list[SessionInfo], now_ms: int, grace_ms: int) -> list[SessionInfo]:
    """Live sessions of a cluster whose newer session started more than `grace_ms` ago.

    A cluster runs one session at a time: after a head restart the old session is over, even though no
    collector will say so if the old head died hard. The grace leaves the old collectors time to flush.
    """
    by_cluster: dict[tuple[str, str], list[SessionInfo]] = defaultdict(list)
    for info in sessions:
        by_cluster[(info.namespace, info.cluster)].append(info)
    out = []
    for group in by_cluster.values():
        newest = max(group, key=lambda s: (s.start_ms, s.session))
        if now_ms - newest.start_ms < grace_ms:
            continue
        out.extend(s for s in group if s is not newest and s.state == "live" and s.start_ms < newest.start_ms)
    return sorted(out, key=lambda s: (s.namespace, s.cluster, s.session))


async def delete_session(store: Store, info: SessionInfo) -> int:
    """Delete every object of one session; returns how many objects went."""
    removed = await store.delete_prefix(layout.session_prefix(info.ref))
    removed += await store.delete_prefix(layout.index_session_prefix(info.ref))
    return removed


@dataclass
class RetentionRun:
    closed: list[str] = field(default_factory=list)  # "namespace/cluster/session"
    deleted: list[str] = field(default_factory=list)
    deleted_objects: int = 0
    sessions_recorded: int = 0


async def apply_retention(store: Store, retention: RetentionSpec, now_ms: int, superseded_grace_ms: int) -> RetentionRun:
    run = RetentionRun()
    sessions = await SessionIndex(store).sessions()
    for info in superseded_sessions(sessions, now_ms, superseded_grace_ms):
        await mark_dead(store, info.namespace, info.cluster, info.session, SUPERSEDED_REASON)
        run.closed.append(info.ref.tail)
    if run.closed:
        sessions = await SessionIndex(store).sessions()
    for info in sessions_to_delete(sessions, now_ms, retention):
        run.deleted_objects += await delete_session(store, info)
        run.deleted.append(info.ref.tail)
    run.sessions_recorded = len(sessions) - len(run.deleted)
    if run.closed or run.deleted:
        log.info("retention", extra={"store": store.redacted_url, "closed": run.closed, "deleted": run.deleted,
                                     "deleted_objects": run.deleted_objects})
    return run
