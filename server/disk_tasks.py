"""A session's tasks on the replica's local disk, for a session larger than the replica should hold.

As Spark's history server keeps a large application in a disk store, a session whose tasks would take more
than `tasks_on_disk_above_bytes` (server/main.py) keeps them in a local file: its compacted snapshot's task
chunks, still compressed. `DiskTasks` stands in for the snapshot's task list: an index reads its chunk back,
checks the chunk's CRC32 and decodes it; the last few decoded chunks stay in memory (an LRU). A page of tasks
costs a chunk's decode (tens of milliseconds), and the session holds its head, its per-job index, a state
byte per task, its driver attempts and those few chunks: 10M tasks in well under 2 GB.

`spill_tasks` decodes every chunk once, in the loader's worker thread while the head answers: the section is
checked whole, as an in-memory decode checks it, and what filters, counts and lookups read without decoding
is kept (the states, each chunk's first task id, the driver attempts).

The file is unlinked as soon as it is made (tempfile.TemporaryFile): it goes when the DiskTasks does, or
with the process.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
import zlib
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import compress
from operator import attrgetter
from typing import Any

from rayhistory.compression import InflateError, InflateLimits, zlib_inflate
from rayhistory.store import StoreError

from .cache import measure_bytes
from .snapshot_model import Snapshot, SnapshotFormatError, Task, TaskSection, decode_job_tasks, decode_task_chunk

_state, _type = attrgetter("state"), attrgetter("type")


@dataclass(frozen=True)
class DiskSpill:
    """Which loaded sessions keep their tasks on local disk (Settings.tasks_on_disk_above_bytes)."""

    above_bytes: int = 0  # 0: none
    directory: str = ""  # "": the system's temporary folder
    cache_chunks: int = 16  # decoded chunks kept in memory per session

    def applies(self, tasks_resident: int) -> bool:
        """For a stored snapshot's task section, by the resident bytes its writer measured."""
        return 0 < self.above_bytes < tasks_resident


class LocalTasksUnreadable(StoreError):
    """The replica's local task file failed (a read error, a chunk that no longer passes its CRC): a storage
    failure, answered 503 (app._storage_failures), never 500."""


class DiskTasks(Sequence):
    """The tasks of a snapshot, by position (the order of Snapshot.tasks), from a local file of chunks."""

    def __init__(self, file: Any, spans: list[tuple[int, int, int]], starts: list[int], first_ids: list[str],
                 states: bytes, drivers: list[Task], driver_positions: frozenset[int], limits: InflateLimits,
                 cache_chunks: int, chunk_bytes: int):
        self._file = file  # kept open: the file has no name any more
        self._fd = file.fileno()
        self._spans = spans  # per chunk: (offset, length, CRC32) in the file
        self._starts = starts  # position of each chunk's first task, then the task count
        self.first_ids = first_ids  # each chunk's first task id
        self.states = states  # Task.state of every task, one byte each: filters and counts without a decode
        self.drivers = drivers  # the DRIVER_TASK attempts (the workers page lists them)
        self.driver_positions = driver_positions  # ... and their positions (the lists leave them out)
        self._limits = limits
        self._cache: OrderedDict[int, list[Task]] = OrderedDict()
        self._cache_chunks = cache_chunks
        self._lock = threading.Lock()
        self.chunk_bytes = chunk_bytes  # the resident bytes of a decoded chunk (the largest measured at the spill)
        self.on_unreadable: Callable[[], None] | None = None  # told when the file fails (the loader drops the entry)
        self.on_read: Callable[[], None] | None = None  # told of every chunk read back (a metric)

    @property
    def resident_bound(self) -> int:
        """What the decoded chunks may hold at most, besides the columns."""
        return self._cache_chunks * self.chunk_bytes

    @property
    def in_memory_bytes(self) -> int:
        """What the tasks would hold decoded in memory (a snapshot written from them records it)."""
        return len(self._spans) * self.chunk_bytes

    def __len__(self) -> int:
        return self._starts[-1]

    def _read(self, index: int) -> list[Task]:
        offset, length, crc = self._spans[index]
        try:
            part = os.pread(self._fd, length, offset)
        except OSError as exc:
            raise self._unreadable(f"task chunk {index} of the local task file: {exc}") from exc
        if len(part) != length or zlib.crc32(part) != crc:
            raise self._unreadable(f"task chunk {index} of the local task file fails its CRC32")
        if self.on_read is not None:
            self.on_read()
        return decode_task_chunk(zlib_inflate(part, self._limits))

    def _unreadable(self, reason: str) -> LocalTasksUnreadable:
        if self.on_unreadable is not None:
            self.on_unreadable()
        return LocalTasksUnreadable(reason)

    def _chunk(self, index: int) -> list[Task]:
        with self._lock:
            tasks = self._cache.get(index)
            if tasks is not None:
                self._cache.move_to_end(index)
                return tasks
        tasks = self._read(index)  # outside the lock: other requests' chunks decode meanwhile
        with self._lock:
            self._cache[index] = tasks
            while len(self._cache) > self._cache_chunks:
                self._cache.popitem(last=False)
        return tasks

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[p] for p in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError("task position out of range")
        index = bisect_right(self._starts, i) - 1
        return self._chunk(index)[i - self._starts[index]]

    def __iter__(self) -> Iterator[Task]:
        """Every task, a chunk at a time; a chunk not in the LRU is decoded without entering it, so that a
        scan (a summary, a filter no column answers) does not push out the chunks the pages read."""
        for index in range(len(self._spans)):
            yield from self._past_lru(index)

    def _past_lru(self, index: int) -> list[Task]:
        """A chunk from the LRU if it is there, else read without entering it (a scan's read)."""
        with self._lock:
            tasks = self._cache.get(index)
        return tasks if tasks is not None else self._read(index)

    def at(self, positions: Iterable[int]) -> Iterator[Task]:
        """The tasks at `positions` (ascending reads each chunk once), as __iter__ reads them: past the LRU."""
        tasks, start, end = [], 0, 0
        starts = self._starts
        for p in positions:
            if not start <= p < end:
                index = bisect_right(starts, p) - 1
                tasks, start, end = self._past_lru(index), starts[index], starts[index + 1]
            yield tasks[p - start]

    def id_bounds(self, task_id: str) -> tuple[int, int]:
        """Positions between which the attempts of `task_id` are, if it has any: the chunks whose first ids
        say they may hold it (a bisect between them decodes one chunk, two at a chunk boundary)."""
        first = max(bisect_left(self.first_ids, task_id) - 1, 0)
        return self._starts[first], self._starts[bisect_right(self.first_ids, task_id)]

    def close(self) -> None:
        self._file.close()


def spill_tasks(section: TaskSection, snapshot: Snapshot, directory: str, cache_chunks: int) -> None:
    """Fill in the snapshot's task fields as a DiskTasks in a new file under `directory` ("" for the
    system's temporary folder), and its per-job index in memory. Raises SnapshotFormatError for a section
    that does not decode (the file is then closed and gone)."""
    parts = section.take()
    limits = section.limits
    # as the filter type != DRIVER_TASK compares (api_tasks._narrow): case-insensitively
    driver_types = frozenset(i for i, v in enumerate(snapshot.strings) if v.lower() == "driver_task")
    try:
        file = tempfile.TemporaryFile(dir=directory or None, prefix="rayhistory-tasks-")
    except OSError as exc:
        raise LocalTasksUnreadable(f"no local task file under {directory or tempfile.gettempdir()}: {exc}") from exc
    try:
        spans, starts, first_ids, drivers, driver_positions = [], [0], [], [], []
        states = bytearray()
        offset = 0
        crcs = parts.crc32[2:2 + len(parts.tasks)]  # after the head's and the drivers' (snapshot_model._all_parts)
        chunk_bytes = 0
        for part, crc in zip(parts.tasks, crcs):
            tasks = decode_task_chunk(zlib_inflate(part, limits), share_ints=False)  # read, then let go
            if not tasks:
                raise SnapshotFormatError("corrupt snapshot task section: an empty chunk")
            chunk_bytes = max(chunk_bytes, measure_bytes(tasks))  # sampled: cheap, and the LRU's bound is the largest
            first_ids.append(tasks[0].task_id)
            states += bytes(map(_state, tasks))
            is_driver = list(map(driver_types.__contains__, map(_type, tasks)))
            drivers += compress(tasks, is_driver)
            driver_positions += compress(range(starts[-1], starts[-1] + len(tasks)), is_driver)
            file.write(part)
            spans.append((offset, len(part), crc))
            offset += len(part)
            starts.append(starts[-1] + len(tasks))
            time.sleep(0)  # the interpreter to the other threads between chunks, as TaskSection.decode does
        if starts[-1] != parts.n_tasks:
            raise SnapshotFormatError(f"corrupt snapshot task section: {starts[-1]} tasks, {parts.n_tasks} listed")
        job_tasks = decode_job_tasks(zlib_inflate(parts.job_tasks, limits))
        file.flush()
    except SnapshotFormatError:
        file.close()
        raise
    except OSError as exc:  # the local disk (full, gone), not the stored snapshot
        file.close()
        raise LocalTasksUnreadable(f"writing the local task file under {directory or tempfile.gettempdir()}: "
                                   f"{exc}") from exc
    except (InflateError, ValueError, RecursionError) as exc:  # msgspec.DecodeError is a ValueError
        file.close()
        raise SnapshotFormatError(f"corrupt snapshot task section: {exc}") from exc
    except BaseException:
        file.close()
        raise
    snapshot.tasks = DiskTasks(file, spans, starts, first_ids, bytes(states), drivers, frozenset(driver_positions),
                               limits, cache_chunks, chunk_bytes)
    snapshot.job_tasks = job_tasks
