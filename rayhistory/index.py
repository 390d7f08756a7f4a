"""The session index: which clusters and sessions the store holds, live or dead.

The index is append-only: collectors write a `live` record when they see a session on a node and a
`flushed` record after their final flush; the operator or `rayhistory mark-dead` write a `dead` record.
A session's state is the merge of its records (pure function `merge_records`), so writers never race.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Literal

import msgspec
from pydantic import BaseModel, Field

from . import layout
from .layout import IndexKind, SessionRef
from .store import Store

log = logging.getLogger(__name__)


class IndexRecord(msgspec.Struct, omit_defaults=True):
    """One immutable index object. Fields a writer does not know stay empty."""

    kind: str
    namespace: str
    cluster: str
    session: str
    at_ms: int
    owner_kind: str = ""
    owner_name: str = ""
    start_ms: int = 0
    node_ids: list[str] = []
    end_ms: int = 0
    reason: str = ""
    writer: str = ""
    imported_ms: int = 0  # `rayhistory import`: when the live dashboard was captured (no event history)


class SessionInfo(BaseModel):
    """The merged view of one session, as /clusters and the operator see it."""

    namespace: str
    cluster: str
    session: str
    owner_kind: str = ""
    owner_name: str = ""
    start_ms: int = 0
    end_ms: int = 0
    state: Literal["live", "dead"] = "live"
    dead_reason: str = ""
    node_ids: list[str] = Field(default_factory=list)
    flushed_node_ids: list[str] = Field(default_factory=list)
    last_update_ms: int = 0
    imported_ms: int = 0  # a one-shot capture of a running dashboard (`rayhistory import`), not a recording

    @property
    def ref(self) -> SessionRef:
        return SessionRef(self.namespace, self.cluster, self.session)


_record_decoder = msgspec.json.Decoder(IndexRecord)


def encode_record(record: IndexRecord) -> bytes:
    return msgspec.json.encode(record)


def decode_record(data: bytes) -> IndexRecord:
    return _record_decoder.decode(data)


def record_for_key(key: str, data: bytes) -> IndexRecord:
    """The record stored at `key`, trusted only as far as its key vouches for it (pure).

    A record names its namespace, cluster, session and kind; so does its key, which is where listings,
    retention and access decisions look. A record whose content disagrees with its key (written under one
    session's prefix, naming another) is refused: it could otherwise list or end a session it is not under.
    Raises ValueError (LayoutError, msgspec errors) with the reason.
    """
    name = layout.parse_index_record_key(key)
    record = decode_record(data)
    claimed = (record.namespace, record.cluster, record.session, record.kind)
    actual = (name.ref.namespace, name.ref.cluster, name.ref.session, name.kind.value)
    if claimed != actual:
        raise ValueError(f"record names {'/'.join(claimed)!r} but is stored under {'/'.join(actual)!r}")
    for node_id in record.node_ids:
        layout.check_node_id(node_id)
    return record


def merge_records(records: list[IndexRecord]) -> list[SessionInfo]:
    """Fold index records into one SessionInfo per session (pure; any order of records)."""
    grouped: dict[tuple[str, str, str], list[IndexRecord]] = defaultdict(list)
    for rec in records:
        grouped[(rec.namespace, rec.cluster, rec.session)].append(rec)
    out = []
    for (namespace, cluster, session), recs in grouped.items():
        recs.sort(key=lambda r: r.at_ms)
        info = SessionInfo(namespace=namespace, cluster=cluster, session=session)
        nodes: set[str] = set()
        flushed: set[str] = set()
        for rec in recs:
            info.owner_kind = rec.owner_kind or info.owner_kind
            info.owner_name = rec.owner_name or info.owner_name
            if rec.start_ms:
                info.start_ms = min(info.start_ms or rec.start_ms, rec.start_ms)
            nodes.update(rec.node_ids)
            info.imported_ms = max(info.imported_ms, rec.imported_ms)
            if rec.kind == IndexKind.FLUSHED.value:
                flushed.update(rec.node_ids)
            elif rec.kind == IndexKind.DEAD.value:
                info.state = "dead"
                # the first dead record decides when it ended; later ones only repeat it
                if not info.end_ms:
                    info.end_ms = rec.end_ms or rec.at_ms
                    info.dead_reason = rec.reason
            info.last_update_ms = max(info.last_update_ms, rec.at_ms)
        if not info.start_ms:
            try:
                info.start_ms = layout.session_start_ms(session)
            except (layout.LayoutError, ValueError):
                pass
        info.node_ids = sorted(nodes)
        info.flushed_node_ids = sorted(flushed)
        out.append(info)
    out.sort(key=lambda s: (s.start_ms, s.namespace, s.cluster, s.session), reverse=True)
    return out


class SessionIndex:
    """Reads and appends index records; remembers records it has read, so a refresh reads only new ones."""

    def __init__(self, store: Store, writer: str | None = None):
        self.store = store
        self.writer = writer or layout.new_writer_id()
        self._records: dict[str, IndexRecord] = {}
        self.unreadable: dict[str, str] = {}

    async def append(self, ref: SessionRef, kind: IndexKind, **fields) -> IndexRecord:
        at_ms = layout.now_ms()
        record = IndexRecord(
            kind=IndexKind(kind).value, namespace=ref.namespace, cluster=ref.cluster,
            session=ref.session, at_ms=at_ms, writer=self.writer, **fields,
        )
        key = layout.index_record_key(ref, kind, self.writer, at_ms)
        await self.store.put(key, encode_record(record))
        self._records[key] = record
        return record

    async def refresh(self, prefix: str | None = None) -> list[IndexRecord]:
        """Read index records not seen before (under `prefix`, default the whole index)."""
        infos = await self.store.list(prefix or layout.index_root())
        present = {i.key for i in infos}
        for gone in [k for k in self._records if k not in present and k.startswith(prefix or "")]:
            del self._records[gone]  # removed by retention
        new = [k for k in present if k not in self._records and k not in self.unreadable]
        for key, data in (await self.store.get_many(new)).items():
            if isinstance(data, Exception):  # a storage error: read again on the next refresh
                log.warning("index record not read", extra={"key": key, "error": f"{type(data).__name__}: {data}"})
                continue
            try:
                self._records[key] = record_for_key(key, data)
            except Exception as exc:  # noqa: BLE001 - a bad record must not hide the others
                self.unreadable[key] = f"{type(exc).__name__}: {exc}"
                log.warning("unreadable index record", extra={"key": key, "error": self.unreadable[key]})
        return list(self._records.values())

    async def sessions(self, namespace: str | None = None, cluster: str | None = None) -> list[SessionInfo]:
        prefix = None
        if namespace and cluster:
            prefix = layout.index_cluster_prefix(namespace, cluster)
        records = await self.refresh(prefix)
        return [
            s for s in merge_records(records)
            if (namespace is None or s.namespace == namespace) and (cluster is None or s.cluster == cluster)
        ]

    async def session(self, ref: SessionRef) -> SessionInfo | None:
        records = await self.refresh(layout.index_session_prefix(ref))
        merged = merge_records([r for r in records if (r.namespace, r.cluster, r.session) == (ref.namespace, ref.cluster, ref.session)])
        return merged[0] if merged else None


def last_activity_ms(keys: list[str]) -> int:
    """The last time anything of a session was written, from its keys' own times (pure): its newest event
    batch, endpoint answer or index record (a collector's final `flushed` record among them). Event batch
    names carry their spool segment's start, so this is exact to the flush interval. 0 if none says."""
    return max((t for t in map(layout.written_at_ms, keys) if t is not None), default=0)


async def session_last_activity_ms(store: Store, ref: SessionRef) -> int:
    keys = [o.key for o in await store.list(layout.session_prefix(ref))]
    keys += [o.key for o in await store.list(layout.index_session_prefix(ref)) if "/dead-" not in o.key]
    return last_activity_ms(keys)


async def mark_dead(
    store: Store, namespace: str, cluster: str, session: str | None = None, reason: str = "cluster deleted",
    end_ms: int | None = None,
) -> list[SessionInfo]:
    """Mark one session (or every live session of a cluster) dead. Idempotent: dead stays dead.

    The end is `end_ms` when given (the operator: the RayCluster's deletion time), else each session's last
    recorded activity (a session closed by hand a week later did not run for that week), else now.
    Used by `rayhistory mark-dead`, by the collector on a head restart, and by the operator's finalizer.
    """
    index = SessionIndex(store)
    sessions = await index.sessions(namespace, cluster)
    if session is not None:
        sessions = [s for s in sessions if s.session == session]
        if not sessions:
            # A session the index never saw (no collector reached storage) can still be closed.
            ref = SessionRef(namespace, cluster, session)
            sessions = [SessionInfo(namespace=namespace, cluster=cluster, session=ref.session)]
    marked = []
    for info in sessions:
        if info.state == "dead":
            continue
        end = end_ms or await session_last_activity_ms(store, info.ref) or layout.now_ms()
        await index.append(info.ref, IndexKind.DEAD, end_ms=end, reason=reason)
        marked.append(info)
    return marked
