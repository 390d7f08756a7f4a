"""A session's snapshot as the API reads it, and its compacted bytes (pure code, no I/O).

`Snapshot` holds everything the dashboard shows for one Ray session; server/snapshot.py builds it from
storage. `encode_snapshot`/`decode_snapshot` turn it into the compacted, versioned bytes every replica
loads instead of re-parsing raw events.

Memory: tasks are the bulk (millions per session), so a task is a gc-free array-like struct of
integers that index one string table (`Snapshot.strings`), plus packed byte strings (transitions,
profile events, log offsets). Actors, nodes, workers and jobs are few and kept as plain structs.
"""

from __future__ import annotations

import dataclasses
import struct
import time
import zlib
from collections.abc import Callable, Iterable
from typing import Any

import msgspec
from msgspec import Struct

from rayhistory.compression import InflateError, InflateLimits, zlib_inflate
from rayhistory.layout import SessionRef

FORMAT_VERSION = 4  # 4: a head, then the task fields in chunks (decode_head); 3: packed task records

# TaskStatus enum of Ray 2.60 (common.proto); the dashboard orders a task's events by this number.
TASK_STATES = (
    "NIL", "PENDING_ARGS_AVAIL", "PENDING_NODE_ASSIGNMENT", "PENDING_OBJ_STORE_MEM_AVAIL", "PENDING_ARGS_FETCH",
    "SUBMITTED_TO_WORKER", "PENDING_ACTOR_TASK_ARGS_FETCH", "PENDING_ACTOR_TASK_ORDERING_OR_CONCURRENCY", "RUNNING",
    "RUNNING_IN_RAY_GET", "RUNNING_IN_RAY_WAIT", "FINISHED", "FAILED", "GETTING_AND_PINNING_ARGS",
)
TASK_STATE_CODE = {name: code for code, name in enumerate(TASK_STATES)}
FINISHED, FAILED = TASK_STATE_CODE["FINISHED"], TASK_STATE_CODE["FAILED"]
NIL_PLACEMENT_GROUP = "ff" * 18

TRANSITION_ENTRY = struct.Struct("<Bq")  # state code, timestamp ns
PROFILE_ENTRY = struct.Struct("<IqqI")  # event name (string index), start ns, end ns, extra data (string index)
LOG_OFFSETS = struct.Struct("<4q")  # stdout start, stdout end, stderr start, stderr end; -1: absent


class SnapshotFormatError(ValueError):
    """Bytes that are not a snapshot of this FORMAT_VERSION."""


# ---- the snapshot ----------------------------------------------------------------------------------


class Task(Struct, array_like=True, gc=False):
    """One task attempt. `int` fields index `Snapshot.strings` (0 is "", shown as null)."""

    task_id: str
    attempt: int
    job: int = 0
    name: int = 0
    func: int = 0
    type: int = 0
    language: int = 0
    actor: int = 0
    parent: int = 0
    node: int = 0
    worker: int = 0
    worker_pid: int = 0
    placement_group: int = 0
    resources: int = 0  # JSON object
    runtime_env: int = 0  # serialized runtime env as Ray sends it
    call_site: int = 0
    label_selector: int = 0  # JSON object
    repr_name: int = 0
    error_type: int = 0
    error_message: int = 0
    log_out: int = 0  # task_log_info: stdout file, stderr file (its offsets are packed)
    log_err: int = 0
    debugger_paused: int = 0  # 0 unknown, 1 false, 2 true
    # transitions, profile events and log offsets (pack_records; read with task_transitions, task_profile,
    # task_log_info): one bytes object, not three, is a third of a task's resident size less
    packed: bytes = b""
    component: int = 0  # "component_type\ncomponent_id\nnode_ip" of the profile events
    state: int = 0  # the state the dashboard shows (TASK_STATES code); derived in build()
    # derived: the FINISHED/FAILED time no transition of that state recorded (docs/dead-sessions.md), else 0
    end_ns: int = 0
    end_reason: int = 0  # derived: "ERROR_TYPE\nmessage" of a failure no event recorded (string index)
    listed: bool = True  # derived: False for attempts Ray's lists leave out (no definition event of their own)


class Transition(Struct, array_like=True, gc=False):
    """A state change of an actor, node, worker or job; `info` holds the state's own fields."""

    state: str
    ts_ns: int
    info: dict[str, Any] = {}


class Actor(Struct, gc=False):
    actor_id: str
    job_id: str = ""
    name: str = ""
    ray_namespace: str = ""
    class_name: str = ""
    serialized_runtime_env: str = ""
    required_resources: dict[str, float] = {}
    is_detached: bool = False
    placement_group_id: str = ""
    label_selector: dict[str, str] = {}
    call_site: str = ""
    parent_id: str = ""
    transitions: list[Transition] = []
    defined: bool = False


class Node(Struct, gc=False):
    node_id: str
    node_ip: str = ""
    hostname: str = ""
    node_name: str = ""
    labels: dict[str, str] = {}
    start_ns: int = 0
    instance_id: str = ""
    instance_type_name: str = ""
    transitions: list[Transition] = []


class Worker(Struct, gc=False):
    worker_id: str
    node_id: str = ""
    worker_type: str = ""
    pid: int = 0
    job_id: str = ""
    transitions: list[Transition] = []


class DriverJob(Struct, gc=False):
    job_id: str
    driver_pid: int = 0
    driver_node_id: str = ""
    entrypoint: str = ""
    serialized_runtime_env: str = ""
    metadata: dict[str, str] = {}
    transitions: list[Transition] = []


class LogFile(Struct, array_like=True, gc=False):
    relpath: str
    size: int


class ObjectProblem(Struct, array_like=True):
    key: str
    reason: str


class Snapshot(Struct, weakref=True):
    """Everything the dashboard needs for one session. Build it with SnapshotBuilder.

    Weak-referenceable, so that what the server derives from a snapshot (cache.EncodedRows) goes with it;
    msgspec allows that only with the GC tracking it (one object per session: no cost)."""

    namespace: str
    cluster: str
    session: str
    dead: bool = False
    end_ms: int = 0
    strings: list[str] = msgspec.field(default_factory=lambda: [""])
    tasks: list[Task] = []  # every attempt, by task id, later attempts first (Ray's order); drivers included
    unlisted: int = 0  # how many of them Ray's lists leave out (Task.listed false)
    job_tasks: dict[int, bytes] = {}  # job id (string index) -> positions in `tasks` (uint32) of its non-driver tasks
    actors: list[Actor] = []
    nodes: list[Node] = []
    workers: list[Worker] = []
    driver_jobs: list[DriverJob] = []
    cluster_events: list[dict[str, Any]] = []  # legacy events (logs/events/event_*.log), snake_case as Ray writes
    log_index: dict[str, list[LogFile]] = {}  # node_id -> files under the session's logs/ folder
    endpoints: dict[str, bytes] = {}  # endpoint name -> the head's answer, verbatim
    covered: list[str] = []  # keys of the raw objects folded in (the snapshot's manifest)
    objects_total: int = 0
    objects_missing: list[ObjectProblem] = []
    objects_corrupt: list[ObjectProblem] = []
    events_rejected: int = 0
    complete: bool = True

    @property
    def ref(self) -> SessionRef:
        return SessionRef(self.namespace, self.cluster, self.session)

    @property
    def end_ns(self) -> int:
        return self.end_ms * 1_000_000


# ---- compacted snapshot bytes ----------------------------------------------------------------------
#
# MAGIC + format version (u16) + msgpack(_Sections). The head (everything but the tasks, with the string
# table and the driver tasks: a few thousand objects at 1M tasks) is decoded when the snapshot is read: the
# overview, jobs, actors and nodes pages need nothing else. The tasks and their per-job index follow in
# chunks, decoded afterwards (TaskSection.decode), a chunk per call so that a decode in a worker thread gives
# the interpreter back between chunks and requests go on meanwhile.
# Each part is zlib-compressed (storage and network, not RAM) and carries a CRC32 checked when the head is
# read, so a damaged part is found before any answer is given.

_MAGIC = b"RHSNAP"
TASK_CHUNK = 16_384  # tasks per chunk: about 30 ms of decoding each on this project's 2-core VM


class _Sections(Struct, array_like=True):
    """Decoded as views into the snapshot's bytes (memoryview: no copy of a part that may be a gigabyte)."""

    head: memoryview  # zlib(msgpack(Snapshot)) without tasks and job_tasks, with its string table
    drivers: memoryview  # zlib(msgpack(list[Task])): the DRIVER_TASK attempts (the nodes and workers pages list them)
    n_tasks: int
    tasks_resident: int  # resident bytes of tasks and job_tasks as the writer measured them (0: not measured)
    tasks: list[memoryview]  # zlib(msgpack(list[Task])), consecutive chunks of Snapshot.tasks
    job_tasks: memoryview  # zlib(msgpack(dict[int, bytes]))
    crc32: list[int]  # of every part above, in order: head, drivers, tasks..., job_tasks


_encoder = msgspec.msgpack.Encoder()
_sections_decoder = msgspec.msgpack.Decoder(_Sections)
_head_decoder = msgspec.msgpack.Decoder(Snapshot)
_tasks_decoder = msgspec.msgpack.Decoder(list[Task])
_job_tasks_decoder = msgspec.msgpack.Decoder(dict[int, bytes])


def _packed(value: Any) -> bytes:
    return zlib.compress(_encoder.encode(value), 1)


def _all_parts(parts: _Sections) -> tuple[bytes, ...]:
    return parts.head, parts.drivers, *parts.tasks, parts.job_tasks


def encode_snapshot(snapshot: Snapshot, tasks_resident: int = 0) -> bytes:
    """The compacted bytes; `tasks_resident` is what tasks and job_tasks hold in memory (cache.measure_bytes),
    recorded so that a reader can account for them before it has decoded them."""
    driver = snapshot.strings.index("DRIVER_TASK") if "DRIVER_TASK" in snapshot.strings else -1
    tasks = snapshot.tasks
    return encode_sections(msgspec.structs.replace(snapshot, tasks=[], job_tasks={}),
                           [t for t in tasks if t.type == driver], len(tasks),
                           (tasks[i:i + TASK_CHUNK] for i in range(0, len(tasks), TASK_CHUNK)),
                           lambda: snapshot.job_tasks, tasks_resident)


def encode_sections(head: Snapshot, drivers: list[Task], n_tasks: int, chunks: Iterable[list[Task]],
                    job_tasks: Callable[[], dict[int, bytes]], tasks_resident: int) -> bytes:
    """encode_snapshot from its parts: the head (a snapshot without tasks), the driver attempts, and the
    tasks in chunks of TASK_CHUNK (any iterable: a session need not be in memory whole to be written);
    job_tasks is asked for after the chunks are read."""
    parts = _Sections(_packed(head), _packed(drivers), n_tasks, tasks_resident, [_packed(c) for c in chunks],
                      b"", [])
    parts.job_tasks = _packed(job_tasks())
    parts.crc32 = [zlib.crc32(p) for p in _all_parts(parts)]
    return _MAGIC + struct.pack("<H", FORMAT_VERSION) + _encoder.encode(parts)


# A compacted snapshot is read whole into memory anyway: its inflated size is capped by what the caller can
# hold (the server passes its cache's byte bound), and by the same ratio as every other compressed object.
SNAPSHOT_LIMITS = InflateLimits(max_bytes=4 << 30)


class TasksNotDecoded(RuntimeError):
    """A task field of a snapshot whose task section is not decoded yet was read (a caller that did not
    wait for TaskSection.decode: a bug, said loudly instead of answering from no tasks)."""


class _NotDecoded:
    """Stands in for Snapshot.tasks and .job_tasks until the task section is decoded."""

    def _refuse(self, *_args: Any) -> Any:
        raise TasksNotDecoded("the snapshot's task section is not decoded yet")

    __iter__ = __len__ = __getitem__ = __contains__ = __bool__ = get = items = keys = values = _refuse


NOT_DECODED: Any = _NotDecoded()


class TaskSection:
    """The task fields of a compacted snapshot, still compressed (their CRCs already checked)."""

    def __init__(self, parts: _Sections, limits: InflateLimits, inflated: int, head_view: Snapshot):
        self._parts: _Sections | None = parts
        self._limits = limits
        self._inflated = inflated  # what the head inflated to: the bound is for the whole snapshot
        self.n_tasks = parts.n_tasks
        self.tasks_resident = parts.tasks_resident
        self.nbytes = sum(map(len, parts.tasks)) + len(parts.job_tasks)
        # the head with the driver tasks as its tasks: what api.HEAD_ONLY routes read, and nothing else
        self.head_view = head_view

    @property
    def limits(self) -> InflateLimits:
        return self._limits

    def _inflate(self, part: bytes) -> bytes:
        data = zlib_inflate(part, dataclasses.replace(self._limits, max_bytes=self._limits.max_bytes - self._inflated))
        self._inflated += len(data)
        return data

    def take(self) -> _Sections:
        """The compressed parts, handed over once (to decode here, or to disk_tasks.spill_tasks)."""
        parts, self._parts = self._parts, None
        if parts is None:
            raise RuntimeError("a task section is decoded once")
        return parts

    def decode(self, snapshot: Snapshot) -> None:
        """Fill in the snapshot's task fields, a chunk at a time (time.sleep(0) between chunks hands the
        interpreter to other threads); the compressed parts are let go. Raises SnapshotFormatError."""
        parts = self.take()
        try:
            tasks: list[Task] = []
            for part in parts.tasks:
                tasks += _tasks_decoder.decode(self._inflate(part))
                time.sleep(0)
            job_tasks = _job_tasks_decoder.decode(self._inflate(parts.job_tasks))
        except (InflateError, msgspec.DecodeError, RecursionError) as exc:
            raise SnapshotFormatError(f"corrupt snapshot task section: {exc}") from exc
        if len(tasks) != parts.n_tasks:
            raise SnapshotFormatError(f"corrupt snapshot task section: {len(tasks)} tasks, {parts.n_tasks} listed")
        _share_worker_ints(tasks)
        snapshot.tasks, snapshot.job_tasks = tasks, job_tasks


def fill_or_mark_corrupt(snapshot: Snapshot, key: str, fill: Callable[[], None]) -> bool:
    """fill(), which sets the snapshot's tasks; if it raises SnapshotFormatError, the snapshot is left without
    tasks and incomplete, with `key` marked corrupt, instead of failing the session: a snapshot whose tasks do
    not decode is answered, never built on (its tasks would be lost from every snapshot written after it).
    Returns whether fill() succeeded. Anything else fill() raises (a local disk that fails, disk_tasks.LocalTasksUnreadable) is no fault of the
    stored snapshot's and goes to the caller."""
    try:
        fill()
        return True
    except SnapshotFormatError as exc:  # past the CRC check only a writer's bug gets here
        snapshot.tasks, snapshot.job_tasks = [], {}
        snapshot.objects_corrupt = [*snapshot.objects_corrupt, ObjectProblem(key, f"{type(exc).__name__}: {exc}")]
        snapshot.complete = False
        return False


def decode_task_chunk(data: bytes, share_ints: bool = True) -> list[Task]:
    """One inflated chunk of a task section (its worker fields shared within the chunk, unless the tasks are
    read and let go)."""
    tasks = _tasks_decoder.decode(data)
    if share_ints:
        _share_worker_ints(tasks)
    return tasks


def decode_job_tasks(data: bytes) -> dict[int, bytes]:
    return _job_tasks_decoder.decode(data)


def decode_head(data: bytes, limits: InflateLimits = SNAPSHOT_LIMITS) -> tuple[Snapshot, TaskSection]:
    """The snapshot without tasks and job_tasks (NOT_DECODED until `TaskSection.decode`), and its task section."""
    if data[: len(_MAGIC)] != _MAGIC or len(data) < len(_MAGIC) + 2:
        raise SnapshotFormatError("not a rayhistory snapshot (bad magic)")
    (version,) = struct.unpack_from("<H", data, len(_MAGIC))
    if version != FORMAT_VERSION:
        raise SnapshotFormatError(f"snapshot format v{version}, this server reads v{FORMAT_VERSION}: rebuild it")
    try:
        parts = _sections_decoder.decode(memoryview(data)[len(_MAGIC) + 2:])
        if [zlib.crc32(p) for p in _all_parts(parts)] != parts.crc32:
            raise SnapshotFormatError("corrupt snapshot: a part fails its CRC32")
        head_bytes = zlib_inflate(parts.head, limits)
        snapshot = _head_decoder.decode(head_bytes)
        drivers = _tasks_decoder.decode(zlib_inflate(parts.drivers, limits))
    except (InflateError, msgspec.DecodeError, RecursionError) as exc:
        raise SnapshotFormatError(f"corrupt snapshot: {exc}") from exc
    snapshot.tasks = snapshot.job_tasks = NOT_DECODED
    head_view = msgspec.structs.replace(snapshot, tasks=drivers)
    return snapshot, TaskSection(parts, limits, len(head_bytes), head_view)


def decode_snapshot(data: bytes, limits: InflateLimits = SNAPSHOT_LIMITS) -> Snapshot:
    """The whole snapshot, task fields included."""
    snapshot, tasks = decode_head(data, limits)
    tasks.decode(snapshot)
    return snapshot


class _Same(dict):
    """value -> its first copy (`same[value]` is one lookup in C)."""

    def __missing__(self, value: int) -> int:
        self[value] = value
        return value


def _share_worker_ints(tasks: list[Task]) -> None:
    """msgpack decodes every integer into an object of its own (above 256): the fields that one worker's
    tasks share get one object per value instead, a sixth of a task's resident size."""
    same = _Same()
    for t in tasks:
        t.worker, t.worker_pid, t.log_out, t.log_err, t.component = (
            same[t.worker], same[t.worker_pid], same[t.log_out], same[t.log_err], same[t.component])


# ---- packed fields ---------------------------------------------------------------------------------


_PACKED_COUNTS = struct.Struct("<IIB")  # transitions, profile events, log offsets (0 or 1)


def pack_records(transitions: bytes, profile: bytes, log_offsets: bytes) -> bytes:
    """Task.packed: the counts, then packed TRANSITION_ENTRY sorted by (timestamp, state), packed
    PROFILE_ENTRY sorted by end time, and LOG_OFFSETS if an event gave any; b"" when all are empty."""
    if not (transitions or profile or log_offsets):
        return b""
    counts = _PACKED_COUNTS.pack(len(transitions) // TRANSITION_ENTRY.size, len(profile) // PROFILE_ENTRY.size,
                                 1 if log_offsets else 0)
    return b"".join((counts, transitions, profile, log_offsets))


def _sections(task: Task) -> tuple[memoryview, memoryview, memoryview]:
    """(transitions, profile events, log offsets) of Task.packed, as views (no copies)."""
    packed = memoryview(task.packed)
    if not packed:
        return packed, packed, packed
    n_transitions, n_profile, n_offsets = _PACKED_COUNTS.unpack_from(packed)
    profile_at = _PACKED_COUNTS.size + n_transitions * TRANSITION_ENTRY.size
    offsets_at = profile_at + n_profile * PROFILE_ENTRY.size
    return (packed[_PACKED_COUNTS.size:profile_at], packed[profile_at:offsets_at],
            packed[offsets_at:offsets_at + n_offsets * LOG_OFFSETS.size])


def task_transitions(task: Task) -> list[tuple[int, int]]:
    """[(state code, ts ns)] sorted by timestamp."""
    return list(TRANSITION_ENTRY.iter_unpack(_sections(task)[0]))


def task_profile(task: Task) -> list[tuple[int, int, int, int]]:
    """[(event name index, start ns, end ns, extra data index)] sorted by end."""
    return list(PROFILE_ENTRY.iter_unpack(packed_profile(task.packed)))


_unpack_counts = _PACKED_COUNTS.unpack_from


def packed_profile(packed: bytes) -> memoryview:
    """The packed PROFILE_ENTRY records of a Task.packed (a view, empty when there are none), found without
    slicing the other parts: the timeline reads it for every task."""
    if not packed:
        return memoryview(packed)
    n_transitions, n_profile, _ = _unpack_counts(packed)
    at = _PACKED_COUNTS.size + n_transitions * TRANSITION_ENTRY.size
    return memoryview(packed)[at:at + n_profile * PROFILE_ENTRY.size]


def task_log_offsets(task: Task) -> tuple[int, int, int, int] | None:
    """(stdout start, stdout end, stderr start, stderr end), -1 where absent; None when no event gave any."""
    offsets = _sections(task)[2]
    return LOG_OFFSETS.unpack(offsets) if offsets else None



LOG_INFO_KEYS = ("stdout_file", "stderr_file", "stdout_start", "stdout_end", "stderr_start", "stderr_end")


def task_log_info(strings: list[str], task: "Task") -> dict | None:
    """The task's task_log_info as Ray shows it, or None. Offsets no event gave stay absent, as in Ray."""
    offsets = task_log_offsets(task)
    if not (task.log_out or task.log_err or offsets):
        return None
    offsets = offsets or (-1, -1, -1, -1)
    return {"stdout_file": strings[task.log_out], "stderr_file": strings[task.log_err],
            **{key: offset for key, offset in zip(LOG_INFO_KEYS[2:], offsets) if offset >= 0}}
