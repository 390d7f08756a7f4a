"""The local spool: accepted events on disk before the collector answers 200, until they are in storage.

The spool is a folder of append-only segment files named `{unix_ms}-{writer}-{seq}.seg`. Requests append
to the one active segment; the flusher seals it (later requests go to a new one), uploads the sealed
segments and deletes each once every batch in it is in storage. A segment's name fixes the storage keys
of its batches (see flush.py), so uploading it again, after a storage error or by a collector restarted
after SIGKILL, rewrites the same objects instead of adding copies.

A segment is a sequence of records, one or more per (session, node) group of a request:

    MAGIC (8 bytes) | body length (u32 LE) | crc32 of the body (u32 LE) | body
    body = len(session) (u8) | session | len(node id) (u8) | node id | payload

where the payload is the events' compact JSON, one per line, each line ending in "\n". The identity is
inside the checksummed body, and nothing in a record's content can look like a record's start: MAGIC holds
NUL bytes, which neither JSON text nor a checked name can contain. One bound, MAX_RECORD_BYTES, holds for
the encoder (which splits a group into several records rather than exceed it) and the decoder (which
refuses a length above it). The decoder skips a damaged record (bad magic, length or checksum) to the
next intact one, counting and logging it with its offset; only a torn tail, bytes after the last intact
record that no intact record follows, is cut: a crash in the middle of a write leaves one, and its
request never got its 200. docs/collector.md describes the format.

Durability: `append` returns only once the bytes are on disk. In "group" mode (the default) writes go to the
page cache at once and one fdatasync, run in a thread, covers every request that wrote before it started:
concurrent requests share a sync instead of queueing one sync each. In "request" mode every request holds
the spool for its own write and sync. bench_collector.py measures both.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal

from rayhistory import layout

log = logging.getLogger(__name__)

MAGIC = b"\x00RHS2\x00\xff\n"
_HEADER = struct.Struct("<II")  # body length, crc32 of the body
HEADER_BYTES = len(MAGIC) + _HEADER.size
MAX_RECORD_BYTES = 16 << 20  # one record's body; rayhistory.events.MAX_EVENT_BYTES keeps any one event below it
SEGMENT_SUFFIX = ".seg"
_SEGMENT_RE = re.compile(r"(\d{13})-([A-Za-z0-9]{1,64})-(\d{8})\.seg", re.ASCII)

FsyncMode = Literal["group", "request"]


class SpoolFull(RuntimeError):
    """The spool holds more than its bound; the sender should retry later."""


@dataclass(frozen=True, order=True)
class SegmentName:
    at_ms: int
    writer: str
    seq: int

    @property
    def filename(self) -> str:
        return f"{self.at_ms:013d}-{self.writer}-{self.seq:08d}{SEGMENT_SUFFIX}"

    @classmethod
    def parse(cls, filename: str) -> "SegmentName | None":
        m = _SEGMENT_RE.fullmatch(filename)
        return cls(int(m.group(1)), m.group(2), int(m.group(3))) if m else None


# ---- the record format (pure) -------------------------------------------------------------------

def _record(session: bytes, node: bytes, payload: bytes) -> bytes:
    identity = b"%c%s%c%s" % (len(session), session, len(node), node)
    crc = zlib.crc32(payload, zlib.crc32(identity))  # of the whole body, without joining it first
    return b"".join((MAGIC, _HEADER.pack(len(identity) + len(payload), crc), identity, payload))


def encode_record(session: str, node_id_hex: str, lines: Iterable[bytes]) -> bytes:
    """The records of one (session, node) group: as few as MAX_RECORD_BYTES allows. Raises LayoutError for
    an identity that cannot be a storage key, ValueError for one line longer than a record may be."""
    sess, node = layout.check_session(session).encode(), layout.check_node_id(node_id_hex).encode()
    room = MAX_RECORD_BYTES - 2 - len(sess) - len(node)
    out: list[bytes] = []
    chunk: list[bytes] = []
    size = 0
    for line in lines:
        if len(line) + 1 > room:
            raise ValueError(f"one event of {len(line)} bytes does not fit a spool record")
        if size + len(line) + 1 > room:
            out.append(_record(sess, node, _lines(chunk)))
            chunk, size = [], 0
        chunk.append(line)
        size += len(line) + 1
    if chunk:
        out.append(_record(sess, node, _lines(chunk)))
    return b"".join(out)


def _lines(chunk: list[bytes]) -> bytes:
    chunk.append(b"")  # the last line ends with a newline too
    return b"\n".join(chunk)


@dataclass
class DecodedSegment:
    # (session, node) -> payloads, as views into the segment's bytes (no copies of a segment's worth of events)
    groups: dict[tuple[str, str], list[memoryview]] = field(default_factory=dict)
    events: int = 0
    damaged: list[tuple[int, int]] = field(default_factory=list)  # (offset, bytes) skipped between intact records
    torn_tail: int = -1  # offset of a tail that no intact record follows, or -1


def _record_at(data: bytes, view: memoryview, pos: int) -> tuple[int, str, str, memoryview] | None:
    """The intact record starting at `pos`: (end, session, node, payload), or None."""
    body_at = pos + HEADER_BYTES
    if data[pos:pos + len(MAGIC)] != MAGIC or body_at > len(data):
        return None
    length, crc = _HEADER.unpack_from(data, pos + len(MAGIC))
    end = body_at + length
    if length > MAX_RECORD_BYTES or end > len(data) or zlib.crc32(view[body_at:end]) != crc:
        return None
    try:
        at = body_at + 1
        session = data[at:at + data[body_at]].decode("ascii")
        at += data[body_at]
        node = data[at + 1:at + 1 + data[at]].decode("ascii")
        at += 1 + data[at]
        layout.check_session(session)
        layout.check_node_id(node)
    except (IndexError, UnicodeDecodeError, layout.LayoutError):
        return None  # a checksum that matches a body no encoder writes: treat it as damage
    payload = view[at:end]
    if payload and payload[-1] != 0x0A:
        return None
    return end, session, node, payload


def _next_record(data: bytes, view: memoryview, start: int) -> int:
    """Offset of the next intact record at or after `start`, or -1."""
    while (pos := data.find(MAGIC, start)) >= 0:
        if _record_at(data, view, pos) is not None:
            return pos
        start = pos + 1
    return -1


def decode_segment(data: bytes) -> DecodedSegment:
    """Records of a segment grouped by (session, node). A damaged record is skipped to the next intact one;
    a tail that no intact record follows is torn (cut short by a crash: never acknowledged)."""
    out = DecodedSegment()
    view = memoryview(data)
    pos = 0
    while pos < len(data):
        record = _record_at(data, view, pos)
        if record is None:
            following = _next_record(data, view, pos + 1)
            if following < 0:
                out.torn_tail = pos
                break
            out.damaged.append((pos, following - pos))
            pos = following
            continue
        end, session, node, payload = record
        out.groups.setdefault((session, node), []).append(payload)
        out.events += data.count(b"\n", end - len(payload), end)
        pos = end
    return out


# ---- the spool (I/O) ----------------------------------------------------------------------------

class Spool:
    def __init__(self, directory: str | Path, writer: str, max_bytes: int, fsync: FsyncMode = "group"):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.writer = writer
        self.max_bytes = max_bytes
        self.fsync_mode = fsync
        self._seq = 0
        self._active: SegmentName | None = None
        self._fd: int | None = None
        self.active_bytes = 0
        self._sizes: dict[SegmentName, int] = {}
        self._lock = asyncio.Lock()  # held while syncing or closing a segment file
        self._waiters: list[tuple[int, asyncio.Future]] = []
        self._committer: asyncio.Task | None = None
        self._must_rotate = False
        for path in self.dir.glob("*" + SEGMENT_SUFFIX):
            name = SegmentName.parse(path.name)
            if name is not None:  # a predecessor's segment: sealed, never appended to again
                self._sizes[name] = path.stat().st_size
        if self._sizes:
            log.info("spool holds segments from before a restart",
                     extra={"segments": len(self._sizes), "bytes": self.bytes})

    @property
    def bytes(self) -> int:
        return sum(self._sizes.values())

    @property
    def is_full(self) -> bool:
        return self.bytes >= self.max_bytes

    def path(self, name: SegmentName) -> Path:
        return self.dir / name.filename

    def oldest_unflushed_s(self) -> float:
        """Seconds since the oldest segment still in the spool was started (0 when none holds events)."""
        held = [n.at_ms for n, size in self._sizes.items() if size]
        return max(0.0, (layout.now_ms() - min(held)) / 1000) if held else 0.0

    def sealed(self) -> list[SegmentName]:
        """Segments no longer written to, oldest first."""
        return sorted(n for n in self._sizes if n != self._active)

    def _open_segment(self) -> int:
        self._seq += 1
        self._active = SegmentName(layout.now_ms(), self.writer, self._seq)
        self._fd = os.open(self.path(self._active), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_EXCL, 0o644)
        self._sizes[self._active] = 0
        self.active_bytes = 0
        # the new file's directory entry must survive a crash too
        _fsync_dir(self.dir)
        return self._fd

    def _write(self, data: bytes) -> int:
        if self.is_full:
            raise SpoolFull(f"spool holds {self.bytes} bytes, bound {self.max_bytes}")
        fd = self._fd if self._fd is not None else self._open_segment()
        view = memoryview(data)
        try:
            while view:
                written = os.write(fd, view)
                view = view[written:]
        except OSError:
            # Half a record would end the segment for a reader (see decode_segment) and hide the records
            # of later requests: cut it off, or start a new segment if even that fails.
            try:
                os.ftruncate(fd, self.active_bytes)
            except OSError:
                self._must_rotate = True
            raise
        self.active_bytes += len(data)
        self._sizes[self._active] += len(data)
        return fd

    async def append(self, data: bytes) -> None:
        """Write records and return once they are durable on disk."""
        if not data:
            return
        if self._must_rotate:
            self._must_rotate = False
            await self.seal()
        if self.fsync_mode == "request":
            async with self._lock:
                fd = self._write(data)
                await asyncio.to_thread(os.fdatasync, fd)
            return
        fd = self._write(data)
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((fd, fut))
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit())
        await fut

    async def _commit(self) -> None:
        while self._waiters:
            async with self._lock:
                batch, self._waiters = self._waiters, []
                if not batch:
                    continue
                try:
                    await asyncio.to_thread(_sync_all, {fd for fd, _ in batch})
                except OSError as exc:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
            for _, fut in batch:
                if not fut.done():
                    fut.set_result(None)

    async def seal(self) -> SegmentName | None:
        """Close the active segment (after syncing it); the next append starts a new one."""
        # shielded: a cancelled caller must not leave requests waiting on a half-closed segment
        return await asyncio.shield(self._seal())

    async def _seal(self) -> SegmentName | None:
        async with self._lock:
            if self._fd is None:
                return None
            fd, name = self._fd, self._active
            self._fd, self._active, self.active_bytes = None, None, 0
            mine = [(f, fut) for f, fut in self._waiters if f == fd]
            self._waiters = [(f, fut) for f, fut in self._waiters if f != fd]
            try:
                await asyncio.to_thread(os.fdatasync, fd)
            except OSError as exc:
                for _, fut in mine:
                    fut.set_exception(exc)
                raise
            finally:
                os.close(fd)
            for _, fut in mine:
                if not fut.done():
                    fut.set_result(None)
            if self._sizes.get(name) == 0:  # nothing was written: no segment to upload
                self._drop(name)
                return None
            return name

    def read(self, name: SegmentName) -> DecodedSegment:
        data = self.path(name).read_bytes()
        decoded = decode_segment(data)
        for offset, length in decoded.damaged:
            log.error("damaged spool record skipped; the records after it are kept",
                      extra={"segment": name.filename, "offset": offset, "bytes": length})
        if decoded.torn_tail >= 0:
            log.warning("spool segment has a torn tail; the cut-off records were never acknowledged",
                        extra={"segment": name.filename, "offset": decoded.torn_tail,
                               "bytes": len(data) - decoded.torn_tail})
        return decoded

    def delete(self, name: SegmentName) -> None:
        self._drop(name)
        _fsync_dir(self.dir)

    def _drop(self, name: SegmentName) -> None:
        self._sizes.pop(name, None)
        try:
            os.unlink(self.path(name))
        except FileNotFoundError:
            pass

    async def close(self) -> None:
        await self.seal()


def _sync_all(fds: set[int]) -> None:
    for fd in fds:
        os.fdatasync(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
