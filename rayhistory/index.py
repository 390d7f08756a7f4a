"""The session index: which clusters and sessions the store holds, live or dead.

The index is append-only: collectors write a `live` record when they see a session on a node and a
`flushed` record after their final flush; the operator or `rayhistory mark-dead` write a `dead` record.
A session's state is the merge of its records (pure function `merge_records`), so writers never race.

Reading the index means listing it and reading every record once: at 100k sessions, 200k small objects, a
minute or more before a new server replica could list a session. So a server that has read many records
writes an *index digest* (`v1/index-digests/`): every record it holds, in one object. A replica that starts
reads the newest digest first and then reads only the records the digest lacks. The listing stays the
truth: a digest's record whose key is no longer listed (retention removed it) is dropped, so a digest can
only save reads, never bring back or change what the index says. Records never change once written, so
a record copied into a digest is the record, for a reader whose records have the same fields.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from typing import Literal

import msgspec
from pydantic import BaseModel, Field

from . import layout
from .compression import InflateLimits, gunzip
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


SessionKey = tuple[str, str, str]  # (namespace, cluster, session)
# Records one store timeout is allowed to list: object stores list 1,000 keys per request, so 100 requests.
INDEX_RECORDS_PER_LIST_TIMEOUT = 100_000

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
    return check_record(key, decode_record(data))


def check_record(key: str, record: IndexRecord) -> IndexRecord:
    """`record` if it may be stored at `key` (see record_for_key), else ValueError with the reason (pure)."""
    name = layout.parse_index_record_key(key)
    claimed = (record.namespace, record.cluster, record.session, record.kind)
    actual = (name.ref.namespace, name.ref.cluster, name.ref.session, name.kind.value)
    if claimed != actual:
        raise ValueError(f"record names {'/'.join(claimed)!r} but is stored under {'/'.join(actual)!r}")
    for node_id in record.node_ids:
        layout.check_node_id(node_id)
    return record


def merge_records(records: list[IndexRecord]) -> list[SessionInfo]:
    """Fold index records into one SessionInfo per session (pure; any order of records)."""
    grouped: dict[SessionKey, list[IndexRecord]] = defaultdict(list)
    for rec in records:
        grouped[(rec.namespace, rec.cluster, rec.session)].append(rec)
    out = [merge_session(recs) for recs in grouped.values()]
    out.sort(key=lambda s: (s.start_ms, s.namespace, s.cluster, s.session), reverse=True)
    return out


def merge_session(records: list[IndexRecord]) -> SessionInfo:
    """Fold the records of one session (at least one; any order) into its SessionInfo (pure). Plain locals,
    then one model_construct: the fields come from decoded records, and pydantic's per-assignment checks
    were half the cost of listing 100k sessions."""
    recs = sorted(records, key=lambda r: r.at_ms)
    owner_kind = owner_name = dead_reason = ""
    start_ms = end_ms = imported_ms = last_update_ms = 0
    dead = False
    nodes: set[str] = set()
    flushed: set[str] = set()
    for rec in recs:
        owner_kind = rec.owner_kind or owner_kind
        owner_name = rec.owner_name or owner_name
        if rec.start_ms:
            start_ms = min(start_ms or rec.start_ms, rec.start_ms)
        nodes.update(rec.node_ids)
        imported_ms = max(imported_ms, rec.imported_ms)
        if rec.kind == _FLUSHED:
            flushed.update(rec.node_ids)
        elif rec.kind == _DEAD:
            dead = True
            # the first dead record decides when it ended; later ones only repeat it
            if not end_ms:
                end_ms = rec.end_ms or rec.at_ms
                dead_reason = rec.reason
        last_update_ms = max(last_update_ms, rec.at_ms)
    session = recs[0].session
    if not start_ms:
        try:
            start_ms = layout.session_start_ms(session)
        except (layout.LayoutError, ValueError):
            pass
    return SessionInfo.model_construct(
        namespace=recs[0].namespace, cluster=recs[0].cluster, session=session, owner_kind=owner_kind,
        owner_name=owner_name, start_ms=start_ms, end_ms=end_ms, state="dead" if dead else "live",
        dead_reason=dead_reason, node_ids=sorted(nodes), flushed_node_ids=sorted(flushed),
        last_update_ms=last_update_ms, imported_ms=imported_ms,
    )


_FLUSHED, _DEAD = IndexKind.FLUSHED.value, IndexKind.DEAD.value


# ---- index digests ---------------------------------------------------------------------------------

class IndexDigest(msgspec.Struct):
    """Every index record one server held when it wrote this, by key, and the record fields its version
    knew: records are re-encoded, so a digest from a version with other fields would lose some for good."""

    fields: list[str]
    records: dict[str, IndexRecord]


RECORD_FIELDS = list(IndexRecord.__struct_fields__)


_digest_decoder = msgspec.json.Decoder(IndexDigest)
# A digest holds about 200 bytes per record and gzips about 10x; 1 GiB is 5M records.
DIGEST_LIMITS = InflateLimits(max_bytes=1 << 30, max_ratio=1000.0)


def encode_digest(records: dict[str, IndexRecord]) -> bytes:
    return gzip.compress(msgspec.json.encode(IndexDigest(RECORD_FIELDS, records)), compresslevel=6)


def decode_digest(data: bytes) -> tuple[dict[str, IndexRecord], int]:
    """(the records of a digest that pass check_record, how many did not) (pure). A digest is checked
    record by record, as the records themselves are: one bad entry costs only its own read.
    Raises ValueError (InflateError, msgspec errors) for a digest that does not decode at all."""
    digest = _digest_decoder.decode(gunzip(data, DIGEST_LIMITS))
    if digest.fields != RECORD_FIELDS:
        raise ValueError(f"written by a version whose records have the fields {digest.fields[:40]}")
    records: dict[str, IndexRecord] = {}
    refused = 0
    for key, record in digest.records.items():
        try:
            records[key] = check_record(key, record)
        except ValueError:
            refused += 1
    return records, refused


class SessionIndex:
    """Reads and appends index records; remembers records it has read, so a refresh reads only new ones.

    `take_changed()` tells which sessions' records were added or removed since it was last called, so a
    caller keeping merged sessions re-merges only those."""

    def __init__(self, store: Store, writer: str | None = None):
        self.store = store
        self.writer = writer or layout.new_writer_id()
        self._records: dict[str, IndexRecord] = {}
        self._keys_of: dict[SessionKey, set[str]] = defaultdict(set)
        self._changed: set[SessionKey] = set()
        self.unreadable: dict[str, str] = {}
        self.read_since_digest = 0  # records read one by one since this index last read or wrote a digest
        self._digest_tried = False

    def _add(self, key: str, record: IndexRecord) -> None:
        session = (record.namespace, record.cluster, record.session)
        self._records[key] = record
        self._keys_of[session].add(key)
        self._changed.add(session)

    def _remove(self, key: str) -> None:
        record = self._records.pop(key)
        session = (record.namespace, record.cluster, record.session)
        keys = self._keys_of[session]
        keys.discard(key)
        if not keys:
            del self._keys_of[session]
        self._changed.add(session)

    def take_changed(self) -> set[SessionKey]:
        changed, self._changed = self._changed, set()
        return changed

    def mark_changed(self, sessions: Iterable[SessionKey]) -> None:
        self._changed.update(sessions)

    def records_of(self, session: SessionKey) -> list[IndexRecord]:
        return [self._records[k] for k in self._keys_of.get(session, ())]

    async def append(self, ref: SessionRef, kind: IndexKind, **fields) -> IndexRecord:
        at_ms = layout.now_ms()
        record = IndexRecord(
            kind=IndexKind(kind).value, namespace=ref.namespace, cluster=ref.cluster,
            session=ref.session, at_ms=at_ms, writer=self.writer, **fields,
        )
        key = layout.index_record_key(ref, kind, self.writer, at_ms)
        await self.store.put(key, encode_record(record))
        self._add(key, record)
        return record

    async def refresh(self, prefix: str | None = None, use_digest: bool = False) -> list[IndexRecord]:
        """Read index records not seen before (under `prefix`, default the whole index). With `use_digest`,
        the first refresh of the whole index starts from the newest index digest."""
        if use_digest and prefix is None and not self._digest_tried:
            self._digest_tried = True
            await self.read_digest()
        # the listing is one call: give the whole of a large index (as large as last seen) more time
        scale = len(self._records) / INDEX_RECORDS_PER_LIST_TIMEOUT if prefix is None else 1.0
        timeout_s = self.store.timeout_s * max(1.0, scale)
        infos = await self.store.list(prefix or layout.index_root(), timeout_s)
        present = {i.key for i in infos}
        for gone in [k for k in self._records if k not in present and k.startswith(prefix or "")]:
            self._remove(gone)  # removed by retention
        new = [k for k in present if k not in self._records and k not in self.unreadable]
        for key, data in (await self.store.get_many(new)).items():
            if isinstance(data, Exception):  # a storage error: read again on the next refresh
                log.warning("index record not read", extra={"key": key, "error": f"{type(data).__name__}: {data}"})
                continue
            try:
                self._add(key, record_for_key(key, data))
                self.read_since_digest += 1
            except Exception as exc:  # noqa: BLE001 - a bad record must not hide the others
                self.unreadable[key] = f"{type(exc).__name__}: {exc}"
                log.warning("unreadable index record", extra={"key": key, "error": self.unreadable[key]})
        return list(self._records.values())

    async def read_digest(self) -> int:
        """Take the records of the newest index digest (before the first listing: records the listing then
        lacks are dropped by it). Returns how many were taken. A digest is a cache: one that cannot be read
        or decoded is logged and skipped, and the records are read one by one as without it."""
        started = time.monotonic()
        key = None
        try:
            key = layout.latest_key([i.key for i in await self.store.list(layout.index_digests_prefix())
                                     if layout.is_index_digest_key(i.key)])
            if key is None:
                return 0
            data = await self.store.get(key)
            records, refused = await asyncio.to_thread(decode_digest, data)
        except Exception as exc:  # noqa: BLE001 - without a digest the index is read record by record
            log.warning("index digest not used", extra={"key": key, "error": f"{type(exc).__name__}: {exc}"})
            return 0
        for record_key, record in records.items():
            if record_key not in self._records and record_key not in self.unreadable:
                self._add(record_key, record)
        if refused:
            log.warning("index digest records refused", extra={"key": key, "refused": refused})
        log.info("index digest read", extra={"key": key, "records": len(records),
                                             "seconds": round(time.monotonic() - started, 3)})
        return len(records)

    async def write_digest(self) -> str:
        """Write every record held as a new index digest, then delete older digests (a digest is a cache:
        deleting one, even one another replica is reading, only costs that reader its reads)."""
        records = dict(self._records)
        key = layout.index_digest_key(self.writer)
        await self.store.put(key, await asyncio.to_thread(encode_digest, records))
        self.read_since_digest = 0
        older = [i.key for i in await self.store.list(layout.index_digests_prefix())
                 if layout.is_index_digest_key(i.key) and i.key.rsplit("/", 1)[-1] < key.rsplit("/", 1)[-1]]
        if older:
            await self.store.delete(older)
        log.info("index digest written", extra={"key": key, "records": len(records), "replaced": len(older)})
        return key

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
