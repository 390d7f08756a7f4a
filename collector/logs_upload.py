"""Incremental upload of every session's log folder under the Ray temp root.

Each cycle (every --log-upload-interval seconds, and once more on shutdown) walks
`{ray_temp_root}/session_*/logs/`, skips symlinks, sockets and anything that is not a regular file, and
uploads only the bytes a file gained since the last cycle, as a part at
`layout.log_part_key(ref, node_id, relpath, generation, offset)`. A file that was replaced rather than
appended to starts a new generation, uploaded whole from offset 0: its inode changed (rotated away and
recreated), it shrank (truncated), its mtime changed at the same size, or the last KiB before the old end
no longer matches (rewritten in place, like the raylet's debug_state.txt). The rotated-away copy
(`raylet.out.1`, ...) is a file of its own and is uploaded whole. docs/storage-layout.md says how a reader
reassembles a file.

The node id of a session folder is read from the folder itself: Ray's raylet writes its port files as
`{name}_port_{node_id_hex}` in the session dir (head and workers alike; the head adds gcs_server_port_*).
The session is the folder's name. Nothing is taken from this process's state, so a head restart in the same
pod (a new session folder) simply shows up as a new session.

What was uploaded is remembered in `{spool_dir}/logs-state.json`, so a restarted collector continues where
its predecessor stopped; if that file is lost, parts are uploaded again under the same keys.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Awaitable, Callable, Iterator

from rayhistory import layout
from rayhistory.layout import LayoutError, SessionRef
from rayhistory.store import Store

from .metrics import CollectorMetrics

log = logging.getLogger(__name__)

PART_MAX_BYTES = 16 << 20
TAIL_BYTES = 1024
_PORT_FILE_RE = re.compile(r"^[a-z_]+_port_([0-9a-f]{56})$")


@dataclass
class FileState:
    generation: int
    inode: int
    offset: int  # bytes of this generation already in storage
    mtime_ns: int = 0
    tail_crc: int = 0  # crc32 of the last TAIL_BYTES bytes before offset: tells an append from a rewrite


@dataclass(frozen=True)
class UploadPlan:
    generation: int
    offset: int
    length: int  # 0 with offset 0: an empty file, stored as one empty part so readers see it exists


# ---- pure decisions -----------------------------------------------------------------------------

def node_id_from_names(names: list[str]) -> str | None:
    """The node id a session folder belongs to, from Ray's `*_port_{node_id}` files; None if unknown yet
    or ambiguous (several raylets sharing one temp dir happens only on a developer machine)."""
    ids = {m.group(1) for name in names if (m := _PORT_FILE_RE.match(name))}
    return ids.pop() if len(ids) == 1 else None


def plan_upload(state: FileState | None, inode: int, size: int, mtime_ns: int) -> UploadPlan | None:
    """What to upload of a file now, given what was uploaded before (None: nothing).

    A new inode (rotated away and recreated), a smaller size (truncated) or a new mtime at the same size
    (rewritten in place, like debug_state.txt) start a new generation. A larger size is an append, to be
    confirmed by `is_append` before the new bytes are uploaded."""
    if state is None:
        return UploadPlan(0, 0, size)
    if inode != state.inode or size < state.offset or (size == state.offset and mtime_ns != state.mtime_ns):
        return UploadPlan(state.generation + 1, 0, size)
    if size > state.offset:
        return UploadPlan(state.generation, state.offset, size - state.offset)
    return None


def is_append(state: FileState, bytes_before_offset: bytes) -> bool:
    """Whether the file still holds what was uploaded, judged by the bytes just before the old end; a file
    rewritten in place and grown (debug_state.txt again) fails this and is uploaded whole."""
    return zlib.crc32(bytes_before_offset) == state.tail_crc


def session_dirs(temp_root: Path) -> list[Path]:
    """Ray session folders under the temp root, oldest first (names sort by start time); session_latest
    is a symlink and is skipped."""
    try:
        entries = list(os.scandir(temp_root))
    except FileNotFoundError:
        return []
    found = [Path(e.path) for e in entries
             if e.is_dir(follow_symlinks=False) and layout.SESSION_RE.match(e.name)]
    return sorted(found, key=lambda p: layout.session_start_ms(p.name))


def walk_regular_files(root: Path) -> Iterator[tuple[str, os.stat_result]]:
    """(relpath, stat) of every regular file under root; symlinks, sockets and fifos are skipped."""
    stack = [""]
    while stack:
        rel = stack.pop()
        try:
            entries = list(os.scandir(root / rel if rel else root))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        for entry in entries:
            child = f"{rel}/{entry.name}" if rel else entry.name
            if entry.is_symlink():
                continue
            if entry.is_dir(follow_symlinks=False):
                stack.append(child)
            elif entry.is_file(follow_symlinks=False):
                try:
                    yield child, entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue


def _read_range(path: Path, offset: int, length: int) -> bytes:
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            return fh.read(length)
    except FileNotFoundError:  # removed since it was listed: nothing more to upload
        return b""


# Called with the (session, node) pairs found on disk, before their logs are uploaded.
SeenHook = Callable[[set[tuple[SessionRef, str]]], Awaitable[None]]


class LogUploader:
    def __init__(self, store: Store, temp_root: str | Path, state_path: str | Path, namespace: str, cluster: str,
                 metrics: CollectorMetrics, on_seen: SeenHook):
        self.store = store
        self.temp_root = Path(temp_root)
        self.state_path = Path(state_path)
        self.namespace = namespace
        self.cluster = cluster
        self.metrics = metrics
        self.on_seen = on_seen
        self.state: dict[str, dict[str, FileState]] = self._load_state()
        self._skipped: set[str] = set()
        self._last_failed = False

    def _load_state(self) -> dict[str, dict[str, FileState]]:
        try:
            raw = json.loads(self.state_path.read_text())
            return {s: {rel: FileState(**fs) for rel, fs in files.items()} for s, files in raw.items()}
        except FileNotFoundError:
            return {}
        except (ValueError, TypeError) as exc:
            log.warning("log upload state unreadable; uploading again from the start", extra={"error": repr(exc)})
            return {}

    def _save_state(self) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({s: {rel: asdict(fs) for rel, fs in files.items()}
                                   for s, files in self.state.items()}))
        os.replace(tmp, self.state_path)

    def sessions_on_disk(self) -> list[tuple[SessionRef, str | None, Path]]:
        """(ref, node id or None, folder) of every session folder, oldest first."""
        out = []
        for folder in session_dirs(self.temp_root):
            try:
                names = os.listdir(folder)
            except FileNotFoundError:
                continue
            out.append((SessionRef(self.namespace, self.cluster, folder.name), node_id_from_names(names), folder))
        return out

    async def upload_cycle(self) -> bool:
        """Upload what changed in every session folder. Stops at the first storage error (the next cycle
        retries from the same offsets); returns whether everything was uploaded."""
        if self._last_failed:
            self.metrics.upload_retries.labels("logs").inc()
        sessions = await asyncio.to_thread(self.sessions_on_disk)
        known = {(ref, node) for ref, node, _ in sessions if node}
        uploaded = 0
        try:
            if known:
                await self.on_seen(known)
            for ref, node, folder in sessions:
                if node is None:
                    continue  # Ray has not written its port files yet; the next cycle will see them
                uploaded += await self._upload_session(ref, node, folder / "logs")
            log.debug("log upload cycle done", extra={"sessions": len(sessions), "bytes": uploaded})
            self._last_failed = False
            return True
        except Exception as exc:  # noqa: BLE001 - storage errors: keep offsets, retry next cycle
            self._last_failed = True
            self.metrics.upload_errors.labels("logs").inc()
            log.warning("log upload failed; retrying next cycle", extra={"error": repr(exc)})
            return False
        finally:
            await asyncio.to_thread(self._save_state)

    async def _upload_session(self, ref: SessionRef, node: str, logs_dir: Path) -> int:
        """Upload what changed in one session's logs folder; returns the bytes uploaded."""
        files = await asyncio.to_thread(lambda: list(walk_regular_files(logs_dir)))
        state = self.state.setdefault(ref.session, {})
        uploaded = 0
        for relpath, st in sorted(files):
            plan = plan_upload(state.get(relpath), st.st_ino, st.st_size, st.st_mtime_ns)
            if plan is None:
                continue
            try:
                layout.check_relpath(relpath)
            except LayoutError:
                if relpath not in self._skipped:
                    self._skipped.add(relpath)
                    self.metrics.log_files_skipped.inc()
                    log.warning("log file name cannot be stored; skipped", extra={"relpath": relpath})
                continue
            uploaded += await self._upload_file(ref, node, logs_dir / relpath, relpath, plan, st, state)
        return uploaded

    async def _upload_file(self, ref: SessionRef, node: str, path: Path, relpath: str, plan: UploadPlan,
                           st: os.stat_result, state: dict[str, FileState]) -> int:
        tail = b""
        if plan.offset:
            window = min(TAIL_BYTES, plan.offset)
            tail = await asyncio.to_thread(_read_range, path, plan.offset - window, window)
            if not is_append(state[relpath], tail):
                plan, tail = UploadPlan(plan.generation + 1, 0, plan.offset + plan.length), b""
        offset, remaining = plan.offset, plan.length
        if remaining == 0:
            await self.store.put(layout.log_part_key(ref, node, relpath, plan.generation, 0), b"")
            state[relpath] = FileState(plan.generation, st.st_ino, 0, st.st_mtime_ns, zlib.crc32(b""))
            return 0
        while remaining > 0:
            data = await asyncio.to_thread(_read_range, path, offset, min(remaining, PART_MAX_BYTES))
            if not data:
                break  # truncated under us; the next cycle starts a new generation
            await self.store.put(layout.log_part_key(ref, node, relpath, plan.generation, offset), data)
            offset += len(data)
            remaining -= len(data)
            tail = (tail + data[-TAIL_BYTES:])[-TAIL_BYTES:]
            state[relpath] = FileState(plan.generation, st.st_ino, offset, st.st_mtime_ns, zlib.crc32(tail))
            self.metrics.log_bytes_uploaded.inc(len(data))
        return offset - plan.offset
