"""Compacted snapshots in storage, and building a session's snapshot from what storage holds.

A stored snapshot (layout.snapshot_key, one object per write, never modified) is a msgpack envelope:
the manifest of every raw object it covers (key -> size: event batches, endpoint answers, log parts),
who wrote it and when, and the snapshot itself (snapshot.encode_snapshot, versioned by FORMAT_VERSION).

Loading a session (`build_session`):
1. list the session's objects once (events, endpoints, logs, snapshots of the current format);
2. start from the newest readable snapshot of the current format (or from the caller's base, the
   snapshot already in memory), else from nothing;
3. fold in only the raw objects that are not in the manifest (a late flush, a new endpoint answer, new
   log parts); parsing runs in a worker thread so the event loop keeps answering;
4. if the session is dead and anything was added (or no snapshot was stored yet), write a new snapshot
   and delete the older ones, so no replica parses those raw events again.
A live session's snapshot is never written: it is still changing.

Objects that cannot be read are marked missing (and stay out of the manifest, so a later load retries
them); objects that do not decode are marked corrupt by the builder (and stay in the manifest: reading
them again would not help). Either way the load succeeds, with `complete` false.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict, dataclass, field, replace

import msgspec

from rayhistory import layout
from rayhistory.compression import DEFAULT_LIMITS, InflateLimits
from rayhistory.layout import SessionRef
from rayhistory.store import ObjectInfo, ObjectNotFound, Store

from . import logs
from .cache import measure_bytes
from .disk_tasks import DiskTasks
from .parallel_build import ParallelBuild, fold_in_workers
from .snapshot import SnapshotBuilder
from .snapshot_model import (
    FORMAT_VERSION, SNAPSHOT_LIMITS, Snapshot, SnapshotFormatError, TaskSection, decode_head, decode_snapshot,
    encode_snapshot,
)

log = logging.getLogger(__name__)

READ_CHUNK = 64  # objects read concurrently, then parsed together in one worker-thread call


class StoredSnapshot(msgspec.Struct):
    manifest: dict[str, int]
    written_ms: int
    writer: str
    snapshot: memoryview  # a view into the stored object: a large session's snapshot is not copied


_envelope_decoder = msgspec.msgpack.Decoder(StoredSnapshot)


def encode_stored(snapshot: Snapshot, manifest: dict[str, int], writer: str) -> bytes:
    tasks_resident = tasks_resident_bytes(snapshot)
    return msgspec.msgpack.encode(StoredSnapshot(manifest, layout.now_ms(), writer,
                                                 encode_snapshot(snapshot, tasks_resident)))


def tasks_resident_bytes(snapshot: Snapshot) -> int:
    """What the snapshot's string table, tasks and per-job index hold decoded in memory (for tasks on disk:
    would hold), as a stored snapshot records it for its readers (DiskSpill.applies)."""
    tasks = snapshot.tasks
    if isinstance(tasks, DiskTasks):
        return measure_bytes((snapshot.strings, snapshot.job_tasks)) + tasks.in_memory_bytes
    return measure_bytes((snapshot.strings, tasks, snapshot.job_tasks))


def decode_stored(data: bytes, limits: InflateLimits = SNAPSHOT_LIMITS) -> tuple[Snapshot, dict[str, int]]:
    """The whole snapshot. Raises msgspec.DecodeError or snapshot.SnapshotFormatError for anything unusable."""
    envelope = _envelope_decoder.decode(data)
    return decode_snapshot(envelope.snapshot, limits), envelope.manifest


def decode_stored_head(
    data: bytes, limits: InflateLimits = SNAPSHOT_LIMITS,
) -> tuple[Snapshot, dict[str, int], TaskSection]:
    """The snapshot without its task fields, its manifest, and its task section (TaskSection.decode, disk_tasks.spill_tasks); raises
    as decode_stored."""
    envelope = _envelope_decoder.decode(data)
    snapshot, tasks = decode_head(envelope.snapshot, limits)
    return snapshot, envelope.manifest, tasks


@dataclass
class LoadProgress:
    """What a load has done so far; read by /rayhistory/status while the load runs."""

    # queued, listing, reading_snapshot, decoding_tasks, reading_raw, building, writing, done, failed
    phase: str = "queued"
    source: str = ""  # raw, snapshot, snapshot+raw, memory+raw
    objects_listed: int = 0
    objects_total: int = 0
    objects_done: int = 0
    bytes_read: int = 0
    events: int = 0  # raw events parsed
    started_at: float = field(default_factory=time.time)
    finished_at: float = 0.0
    error: str = ""

    def as_dict(self) -> dict:
        out = asdict(self)
        out["elapsed_s"] = round((self.finished_at or time.time()) - self.started_at, 3)
        return out


@dataclass
class SessionObjects:
    """One listing of a session's prefix, sorted out by kind."""

    events: list[ObjectInfo]
    endpoints: dict[str, list[ObjectInfo]]
    log_parts: list[ObjectInfo]
    snapshots: list[ObjectInfo]

    @property
    def raw(self) -> list[ObjectInfo]:
        return self.events + [o for infos in self.endpoints.values() for o in infos] + self.log_parts

    @property
    def empty(self) -> bool:
        return not self.raw and not self.snapshots


def sort_objects(ref: SessionRef, infos: list[ObjectInfo]) -> SessionObjects:
    events_prefix = layout.events_prefix(ref)
    endpoints_prefix = layout.endpoints_prefix(ref)
    logs_prefix = layout.logs_prefix(ref)
    snapshots_prefix = layout.snapshots_prefix(ref, FORMAT_VERSION)
    out = SessionObjects([], {}, [], [])
    for info in infos:
        key = info.key
        if key.startswith(events_prefix) and key.endswith(".jsonl.gz"):
            out.events.append(info)
        elif key.startswith(endpoints_prefix) and key.endswith(".json"):
            name = key[len(endpoints_prefix):].split("/", 1)[0]
            out.endpoints.setdefault(name, []).append(info)
        elif key.startswith(logs_prefix) and key.endswith(".part"):
            out.log_parts.append(info)
        elif key.startswith(snapshots_prefix) and key.endswith(".snap"):
            out.snapshots.append(info)
    return out


def is_legacy_event_log(relpath: str) -> bool:
    """logs/events/event_*.log: Ray's legacy events, the source of /events and cluster_events."""
    return relpath.startswith("events/event_") and relpath.endswith(".log") and relpath.count("/") == 1


@dataclass
class BuildResult:
    snapshot: Snapshot
    manifest: dict[str, int]
    snapshot_key: str  # the stored snapshot read or written ("" if none)
    wrote: bool
    source: str
    tasks: TaskSection | None = None  # the snapshot's task fields, still to decode (TaskSection.decode, disk_tasks.spill_tasks)


async def list_session(store: Store, ref: SessionRef) -> SessionObjects:
    return sort_objects(ref, await store.list(layout.session_prefix(ref)))


async def read_newest_snapshot(
    store: Store, objects: SessionObjects, limits: InflateLimits = SNAPSHOT_LIMITS,
) -> tuple[Snapshot, dict[str, int], str, TaskSection] | None:
    """The newest stored snapshot whose head reads back (its task section still to decode), or None; an
    unreadable one is logged and skipped."""
    for info in sorted(objects.snapshots, key=lambda o: o.key.rsplit("/", 1)[-1], reverse=True):
        try:
            data = await store.get(info.key)
            snapshot, manifest, tasks = await asyncio.to_thread(decode_stored_head, data, limits)
        except ObjectNotFound:
            continue  # replaced by a newer one meanwhile
        except Exception as exc:  # noqa: BLE001 - a bad snapshot is rebuilt from raw, never fatal
            log.warning("unreadable stored snapshot", extra={"key": info.key, "error": f"{type(exc).__name__}: {exc}"})
            continue
        return snapshot, manifest, info.key, tasks
    return None


async def build_session(
    store: Store, ref: SessionRef, dead: bool, end_ms: int, writer: str, progress: LoadProgress,
    base: tuple[Snapshot, dict[str, int], str] | None = None, objects: SessionObjects | None = None,
    limits: InflateLimits = DEFAULT_LIMITS, snapshot_limits: InflateLimits = SNAPSHOT_LIMITS,
    lazy_tasks: bool = False, parallel: ParallelBuild = ParallelBuild(),
) -> BuildResult:
    """Bring a session's snapshot up to date with storage (see the module docstring).

    `limits` bound how far one raw object may inflate, `snapshot_limits` a stored snapshot (compression.py);
    `parallel` says when event batches are folded in worker processes (server/parallel_build.py).
    With `lazy_tasks`, a snapshot read from storage and used as it is comes back without its task fields,
    left to the caller (BuildResult.tasks)."""
    progress.phase = "listing"
    if objects is None:
        objects = await list_session(store, ref)
    progress.objects_listed = len(objects.raw) + len(objects.snapshots)
    stored_key = ""
    source = "raw"
    tasks: TaskSection | None = None  # the stored snapshot's task section, decoded only when needed
    if base is not None:
        source = "memory"
        # the snapshot in memory came from (or was written to) this key, if it is still there
        stored_key = base[2] if base[2] in {o.key for o in objects.snapshots} else ""
    else:
        progress.phase = "reading_snapshot"
        stored = await read_newest_snapshot(store, objects, snapshot_limits)
        if stored is not None:
            base, tasks = stored[:3], stored[3]
            stored_key, source = base[2], "snapshot"
    snapshot, manifest = (base[0], dict(base[1])) if base is not None else (None, {})  # never mutate the caller's

    new_events = [o for o in objects.events if o.key not in manifest]
    new_endpoints = {
        name: infos for name, infos in objects.endpoints.items() if any(o.key not in manifest for o in infos)
    }
    files = logs.group_log_parts(ref, objects.log_parts)
    changed_files = {f: parts for f, parts in files.items() if any(p.key not in manifest for p in parts)}
    progress.objects_total = len(new_events) + len(new_endpoints) + sum(
        len(parts) for (_, relpath), parts in changed_files.items() if is_legacy_event_log(relpath))
    has_new = bool(new_events or new_endpoints or changed_files)
    changed = snapshot is None or has_new or snapshot.dead != dead or (dead and snapshot.end_ms != end_ms)
    if has_new and source != "raw":
        source += "+raw"
    progress.source = source
    if tasks is not None and (changed or not lazy_tasks):  # folding new objects in needs every task
        progress.phase = "decoding_tasks"
        try:
            await asyncio.to_thread(tasks.decode, snapshot)
        except SnapshotFormatError as exc:
            # as an unreadable snapshot is: passed over (built from an older one or from raw), never built on,
            # which would write its tasks' loss into every snapshot after it
            log.warning("stored snapshot's tasks do not decode; building without it",
                        extra={"session": ref.tail, "key": stored_key, "error": str(exc)})
            passed_over = replace(objects, snapshots=[o for o in objects.snapshots if o.key != stored_key])
            return await build_session(store, ref, dead, end_ms, writer, progress, None, passed_over, limits,
                                       snapshot_limits, lazy_tasks, parallel)
        tasks = None
    if not changed:
        result = await _finish(store, ref, snapshot, manifest, writer, objects, stored_key, dead, source, progress)
        result.tasks = tasks
        return result
    if snapshot is None:
        builder = SnapshotBuilder(ref, dead, end_ms, limits)
    else:
        builder = await asyncio.to_thread(SnapshotBuilder.from_snapshot, snapshot, limits)
        builder.dead, builder.end_ms = dead, end_ms
    progress.phase = "reading_raw"

    if parallel.applies(new_events):
        await _fold_events_in_workers(store, builder, new_events, manifest, progress, parallel.workers)
    else:
        await _fold_events(store, builder, new_events, manifest, progress)
    for name, infos in new_endpoints.items():
        newest = layout.latest_key([o.key for o in infos])
        try:
            data = await store.get(newest)
        except Exception as exc:  # noqa: BLE001 - counted, never fatal
            builder.mark_missing(newest, f"{type(exc).__name__}: {exc}")
            continue
        builder.add_endpoint(name, data, newest)
        manifest.update({o.key: o.size for o in infos})
        progress.objects_done += 1
        progress.bytes_read += len(data)
    for (node_id, relpath), parts in changed_files.items():
        builder.add_log_index(node_id, relpath, logs.file_size(parts))
        if is_legacy_event_log(relpath) and not await _fold_legacy_events(store, builder, parts, progress):
            continue  # unreadable: retried on the next load
        manifest.update({p.key: p.size for p in parts})

    progress.phase = "building"
    snapshot = await asyncio.to_thread(builder.build, True)  # release: the builder is not used again
    return await _finish(store, ref, snapshot, manifest, writer, objects, "", dead, source, progress)


async def _finish(
    store: Store, ref: SessionRef, snapshot: Snapshot, manifest: dict[str, int], writer: str,
    objects: SessionObjects, stored_key: str, dead: bool, source: str, progress: LoadProgress,
) -> BuildResult:
    """Write the snapshot if it is not stored yet (`stored_key` empty) and the session is dead."""
    wrote = False
    if dead and not stored_key:
        progress.phase = "writing"
        stored_key = await write_snapshot(store, ref, snapshot, manifest, writer, objects.snapshots)
        wrote = True
    progress.phase = "done"
    progress.finished_at = time.time()
    return BuildResult(snapshot, manifest, stored_key, wrote, source)


async def _fold_events(
    store: Store, builder: SnapshotBuilder, infos: list[ObjectInfo], manifest: dict[str, int], progress: LoadProgress,
) -> None:
    """Read event batches a chunk at a time, parsing one chunk while the next is read."""
    chunks = [infos[i:i + READ_CHUNK] for i in range(0, len(infos), READ_CHUNK)]
    if not chunks:
        return

    def parse(chunk: list[ObjectInfo], datas: dict[str, bytes | Exception]) -> None:
        for info in chunk:
            data = datas[info.key]
            if isinstance(data, Exception):
                builder.mark_missing(info.key, f"{type(data).__name__}: {data}")
                continue
            builder.add_event_batch(info.key, data)
            manifest[info.key] = info.size
            progress.objects_done += 1
            progress.bytes_read += len(data)
        progress.events = builder.events_parsed

    reading = asyncio.ensure_future(store.get_many([o.key for o in chunks[0]]))
    try:
        for i, chunk in enumerate(chunks):
            datas = await reading
            if i + 1 < len(chunks):
                reading = asyncio.ensure_future(store.get_many([o.key for o in chunks[i + 1]]))
            await asyncio.to_thread(parse, chunk, datas)
    finally:
        if not reading.done():
            reading.cancel()


async def _fold_events_in_workers(
    store: Store, builder: SnapshotBuilder, infos: list[ObjectInfo], manifest: dict[str, int], progress: LoadProgress,
    workers: int,
) -> None:
    def on_chunk(chunk: list[ObjectInfo], datas: dict[str, bytes | Exception], events: int) -> None:
        for info in chunk:
            data = datas[info.key]
            if isinstance(data, Exception):
                builder.mark_missing(info.key, f"{type(data).__name__}: {data}")
                continue
            manifest[info.key] = info.size
            progress.objects_done += 1
            progress.bytes_read += len(data)
        progress.events = events

    await fold_in_workers(builder, infos, workers, READ_CHUNK, store.get_many, on_chunk)
    progress.events = builder.events_parsed


async def _fold_legacy_events(
    store: Store, builder: SnapshotBuilder, parts: list[logs.LogPart], progress: LoadProgress,
) -> bool:
    datas = await store.get_many([p.key for p in parts])
    failed = [(p.key, datas[p.key]) for p in parts if isinstance(datas[p.key], Exception)]
    for key, exc in failed:
        builder.mark_missing(key, f"{type(exc).__name__}: {exc}")
    if failed:
        return False
    data = logs.assemble([(p.offset, datas[p.key]) for p in parts])
    builder.add_legacy_events(parts[0].key.rsplit("/", 1)[0], data)
    progress.objects_done += len(parts)
    progress.bytes_read += len(data)
    return True


async def write_snapshot(
    store: Store, ref: SessionRef, snapshot: Snapshot, manifest: dict[str, int], writer: str,
    older: list[ObjectInfo],
) -> str:
    """Store a new compacted snapshot, then drop the ones it replaces (best effort: they are only older)."""
    data = await asyncio.to_thread(encode_stored, snapshot, manifest, writer)
    key = layout.snapshot_key(ref, FORMAT_VERSION, writer)
    await store.put(key, data)
    log.info("snapshot written", extra={"session": ref.tail, "key": key, "bytes": len(data),
                                        "tasks": len(snapshot.tasks), "complete": snapshot.complete})
    stale = [o.key for o in older if o.key != key]
    if stale:
        try:
            await store.delete(stale)
        except Exception as exc:  # noqa: BLE001
            log.warning("could not delete older snapshots", extra={"session": ref.tail, "error": str(exc)})
    return key
