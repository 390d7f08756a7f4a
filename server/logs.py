"""Log files of a session, served from the stored log parts (reassembled per docs/storage-layout.md).

`/api/v0/logs/file` answers like Ray 2.60's state head: text/plain, `Content-Disposition: attachment;
filename="{download_filename}"`, the last `lines` lines (default 1000, -1 for all) of the file or of a
task's byte range, ANSI colour codes removed when `filter_ansi_code=true`. Which file a task, an actor or a
pid means is decided by the pure helpers in api.py from the snapshot; this module only reads bytes.

A path never leaves its session: a file name is a relative path checked by layout.check_relpath, and
anything percent-encoded or with a backslash is refused before it gets there (aiohttp has already decoded
the query string once, so a '%' left in a name is a second encoding: a trick, never a Ray log name).
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

from rayhistory import layout
from rayhistory.layout import SessionRef
from rayhistory.store import ObjectInfo, Store

# Ray's own pattern (dashboard/modules/state/state_head.py ANSI_ESC_PATTERN).
ANSI_ESC_PATTERN = re.compile(b"\x1b\\x5b[(\x30-\x39)\x3b]+\x6d")
DEFAULT_LINES = 1000
DEFAULT_DOWNLOAD_FILENAME = "file.txt"


class LogRequestError(ValueError):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class LogPart:
    key: str
    offset: int
    size: int

    @property
    def end(self) -> int:
        return self.offset + self.size


def group_log_parts(ref: SessionRef, infos: list[ObjectInfo]) -> dict[tuple[str, str], list[LogPart]]:
    """(node_id, relpath) -> the parts of the file's newest generation, by offset. Other keys are ignored."""
    by_file: dict[tuple[str, str], dict[int, list[LogPart]]] = defaultdict(lambda: defaultdict(list))
    prefix = layout.logs_prefix(ref)
    for info in infos:
        if not info.key.startswith(prefix):
            continue
        try:
            name = layout.parse_log_part_key(ref, info.key)
        except (layout.LayoutError, ValueError):
            continue
        by_file[(name.node_id, name.relpath)][name.generation].append(LogPart(info.key, name.offset, info.size))
    return {
        file: sorted(generations[max(generations)], key=lambda p: (p.offset, -p.size))
        for file, generations in by_file.items()
    }


def file_size(parts: list[LogPart]) -> int:
    return max((p.end for p in parts), default=0)


def assemble(pieces: list[tuple[int, bytes]], base: int = 0) -> bytes:
    """Concatenate (offset, bytes) pieces sorted by offset into the file's bytes from `base` on.

    A piece that starts below what is already assembled contributes only its tail; a gap (a part never
    uploaded) is left out, so the text around it still reads.
    """
    out = bytearray()
    for offset, data in sorted(pieces, key=lambda p: p[0]):
        have = base + len(out)
        if offset + len(data) <= have:
            continue
        out += data[max(0, have - offset):]
    return bytes(out)


def tail_start(data: bytes, end: int, lines: int) -> int:
    """Offset where the last `lines` lines before `end` start (Ray's find_start_offset_last_n_lines)."""
    if lines == 0:
        return end
    if end > 0 and data[end - 1:end] != b"\n":
        lines -= 1  # an unterminated last line counts as a line
    pos = end
    for _ in range(lines + 1):
        pos = data.rfind(b"\n", 0, pos)
        if pos == -1:
            return 0
    return pos + 1


def select(data: bytes, start: int | None, end: int | None, lines: int, filter_ansi: bool) -> bytes:
    """What Ray returns for bytes [start, end) of a file and `lines` (-1: no tail)."""
    start = 0 if start is None else max(0, min(start, len(data)))
    end = len(data) if end is None else max(start, min(end, len(data)))
    if lines != -1:
        start = max(start, tail_start(data, end, lines))
    out = data[start:end]
    return ANSI_ESC_PATTERN.sub(b"", out) if filter_ansi else out


def check_filename(filename: str) -> str:
    """A log file name from a request: relative, inside the session's logs folder, never encoded."""
    if "%" in filename or "\\" in filename or "\x00" in filename:
        raise LogRequestError(400, f"invalid log file name {filename!r}: encoded characters are not allowed")
    try:
        return layout.check_relpath(filename)
    except layout.LayoutError:
        raise LogRequestError(400, f"invalid log file name {filename!r}: must be a path relative to the "
                                   "session's logs folder, without '..'") from None


def parse_lines(value: str | None) -> int:
    if value is None or value == "":
        return DEFAULT_LINES
    try:
        lines = int(value)
    except ValueError:
        raise LogRequestError(400, f"lines must be an integer, got {value!r}") from None
    if lines < -1:
        raise LogRequestError(400, f"lines must be -1 (all) or a count, got {lines}")
    return lines


def parse_bool(value: str | None) -> bool:
    return (value or "").lower() == "true"


def check_download_filename(name: str | None) -> str:
    """The attachment name goes into a header: refuse what could break out of it."""
    if not name:
        return DEFAULT_DOWNLOAD_FILENAME
    if any(c in name for c in '"\\/\r\n\x00') or len(name) > 255:
        raise LogRequestError(400, f"invalid download_filename {name!r}")
    return name


async def read_log(
    store: Store, ref: SessionRef, node_id: str, relpath: str, start: int | None = None, end: int | None = None,
) -> tuple[bytes, int]:
    """(bytes of the file from `base` on, base): only the parts overlapping [start, end) are read."""
    parts = group_log_parts(ref, await store.list(layout.log_file_prefix(ref, node_id, relpath)))
    file_parts = parts.get((node_id, relpath))
    if not file_parts:
        raise LogRequestError(404, f"log file {relpath!r} not found on node {node_id}")
    lo = start or 0
    hi = end if end is not None else file_size(file_parts)
    wanted = [p for p in file_parts if p.end > lo and p.offset < hi] or file_parts[-1:]
    base = min(p.offset for p in wanted)
    datas = await store.get_many([p.key for p in wanted])
    pieces = []
    for part in wanted:
        data = datas[part.key]
        if isinstance(data, Exception):
            raise LogRequestError(502, f"log part {part.key} could not be read: {data}")
        pieces.append((part.offset, data))
    return assemble(pieces, base), base


async def log_file_bytes(
    store: Store, ref: SessionRef, node_id: str, relpath: str, start: int | None, end: int | None,
    lines: int, filter_ansi: bool,
) -> bytes:
    data, base = await read_log(store, ref, node_id, relpath, start, end)
    rel_start = None if start is None else max(0, start - base)
    rel_end = None if end is None else max(0, end - base)
    return select(data, rel_start, rel_end, lines, filter_ansi)
