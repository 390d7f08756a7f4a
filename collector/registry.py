"""The collector's entries in the session index: live on first sight, flushed after the final flush, and
dead for an older session when a newer one appears in the same pod (head restart)."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

from rayhistory import layout
from rayhistory.index import SessionIndex, mark_dead
from rayhistory.layout import IndexKind, SessionRef
from rayhistory.store import Store

log = logging.getLogger(__name__)


def new_pairs(pairs: set[tuple[SessionRef, str]], registered: dict[SessionRef, set[str]]) -> dict[SessionRef, list[str]]:
    """The (session -> node ids) among `pairs` that have no live record from this process yet (pure)."""
    out: dict[SessionRef, set[str]] = defaultdict(set)
    for ref, node in pairs:
        if node not in registered.get(ref, ()):
            out[ref].add(node)
    return {ref: sorted(nodes) for ref, nodes in out.items()}


def superseded_sessions(refs: set[SessionRef]) -> list[SessionRef]:
    """Sessions of a cluster on this pod's disk that a newer session of the same cluster replaced (pure)."""
    by_cluster: dict[tuple[str, str], list[SessionRef]] = defaultdict(list)
    for ref in refs:
        by_cluster[(ref.namespace, ref.cluster)].append(ref)
    out = []
    for group in by_cluster.values():
        group.sort(key=lambda r: layout.session_start_ms(r.session))
        out.extend(group[:-1])
    return out


class SessionRegistry:
    def __init__(self, store: Store, writer: str, owner_kind: str, owner_name: str):
        self.store = store
        self.index = SessionIndex(store, writer)
        self.owner_kind = owner_kind
        self.owner_name = owner_name
        self.registered: dict[SessionRef, set[str]] = {}
        self._marked_dead: set[SessionRef] = set()
        self._lock = asyncio.Lock()

    async def note(self, pairs: set[tuple[SessionRef, str]]) -> None:
        """Write a live record for every (session, node) not registered yet. Raises on storage errors."""
        async with self._lock:
            for ref, nodes in new_pairs(pairs, self.registered).items():
                await self.index.append(ref, IndexKind.LIVE, owner_kind=self.owner_kind, owner_name=self.owner_name,
                                        start_ms=layout.session_start_ms(ref.session), node_ids=nodes)
                self.registered.setdefault(ref, set()).update(nodes)
                log.info("session registered live", extra={"session": ref.session, "node_ids": nodes})

    async def note_on_disk(self, pairs: set[tuple[SessionRef, str]]) -> None:
        """Sessions found in the Ray temp root: register them, and mark the superseded ones dead."""
        await self.note(pairs)
        for old in superseded_sessions({ref for ref, _ in pairs}):
            if old in self._marked_dead:
                continue
            await mark_dead(self.store, old.namespace, old.cluster, session=old.session, reason="head restarted")
            self._marked_dead.add(old)
            log.info("older session marked dead: a newer one started in this pod", extra={"session": old.session})

    async def write_flushed(self) -> None:
        """After the final flush: tell the index (and the operator's finalizer) which nodes are complete."""
        for ref, nodes in sorted(self.registered.items()):
            await self.index.append(ref, IndexKind.FLUSHED, node_ids=sorted(nodes))
