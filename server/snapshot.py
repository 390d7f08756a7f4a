"""A session's snapshot: everything the dashboard shows for one Ray session, built once from storage.

Pure code, no I/O. `SnapshotBuilder` folds raw objects (the collector's event batches, the head's
endpoint answers, the log index) into a `Snapshot`; `encode_snapshot`/`decode_snapshot` turn it into
the compacted, versioned bytes every replica loads instead of re-parsing raw events.

Merging is a join of semilattices, so the result does not depend on arrival order or repeats:
- task attempts are keyed by (task id, attempt), actors/nodes/workers/jobs by id;
- state transitions are a set keyed by (state, timestamp), ordered by timestamp;
- a scalar seen twice keeps the non-empty, greatest value (it is normally the same value twice);
- events are deduplicated by eventId within a build; across builds the merge above is idempotent,
  and batch keys already covered (`Snapshot.covered`) are skipped.

Memory: tasks are the bulk (millions per session), so a task is a gc-free array-like struct of
integers that index one string table (`Snapshot.strings`), plus two packed byte strings (transitions
and profile events). Actors, nodes, workers and jobs are few and kept as plain structs.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import json
import logging
import struct
import zlib
from array import array
from collections import defaultdict
from typing import Any

import msgspec
from msgspec import Struct

from rayhistory.events import PAYLOAD_FIELD, RayEvent, decode_events, hex_id, ts_ns
from rayhistory.layout import SessionRef

log = logging.getLogger(__name__)

FORMAT_VERSION = 1

# TaskStatus enum of Ray 2.60 (common.proto); the dashboard orders a task's events by this number.
TASK_STATES = (
    "NIL", "PENDING_ARGS_AVAIL", "PENDING_NODE_ASSIGNMENT", "PENDING_OBJ_STORE_MEM_AVAIL", "PENDING_ARGS_FETCH",
    "SUBMITTED_TO_WORKER", "PENDING_ACTOR_TASK_ARGS_FETCH", "PENDING_ACTOR_TASK_ORDERING_OR_CONCURRENCY", "RUNNING",
    "RUNNING_IN_RAY_GET", "RUNNING_IN_RAY_WAIT", "FINISHED", "FAILED", "GETTING_AND_PINNING_ARGS",
)
TASK_STATE_CODE = {name: code for code, name in enumerate(TASK_STATES)}
FINISHED, FAILED = TASK_STATE_CODE["FINISHED"], TASK_STATE_CODE["FAILED"]
NIL_PLACEMENT_GROUP = "ff" * 18

_TRANSITION = struct.Struct("<Bq")  # state code, timestamp ns
_PROFILE = struct.Struct("<IqqI")
_LOG_OFFSETS = struct.Struct("<4q")  # stdout start, stdout end, stderr start, stderr end  # event name (string index), start ns, end ns, extra data (string index)


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
    log_out: int = 0  # task_log_info: stdout file, stderr file, packed _LOG_OFFSETS
    log_err: int = 0
    log_offsets: bytes = b""
    debugger_paused: int = 0  # 0 unknown, 1 false, 2 true
    transitions: bytes = b""  # packed _TRANSITION, sorted by (timestamp, state)
    profile: bytes = b""  # packed _PROFILE, sorted by end time
    component: int = 0  # "component_type\ncomponent_id\nnode_ip" of the profile events
    state: int = 0  # the state the dashboard shows (TASK_STATES code); derived in build()
    end_ns: int = 0  # derived: FINISHED/FAILED time, or the session end for a dead session


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


class Snapshot(Struct, gc=False):
    """Everything the dashboard needs for one session. Build it with SnapshotBuilder."""

    namespace: str
    cluster: str
    session: str
    dead: bool = False
    end_ms: int = 0
    strings: list[str] = msgspec.field(default_factory=lambda: [""])
    tasks: list[Task] = []  # every attempt, sorted by (task_id, attempt), driver tasks included
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

_MAGIC = b"RHSNAP"
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Snapshot)


def encode_snapshot(snapshot: Snapshot) -> bytes:
    """MAGIC + format version (u16) + zlib(msgpack). Compression: storage and network, not RAM."""
    return _MAGIC + struct.pack("<H", FORMAT_VERSION) + zlib.compress(_encoder.encode(snapshot), 1)


def decode_snapshot(data: bytes) -> Snapshot:
    if data[: len(_MAGIC)] != _MAGIC or len(data) < len(_MAGIC) + 2:
        raise SnapshotFormatError("not a rayhistory snapshot (bad magic)")
    (version,) = struct.unpack_from("<H", data, len(_MAGIC))
    if version != FORMAT_VERSION:
        raise SnapshotFormatError(f"snapshot format v{version}, this server reads v{FORMAT_VERSION}: rebuild it")
    try:
        return _decoder.decode(zlib.decompress(data[len(_MAGIC) + 2:]))
    except (zlib.error, msgspec.DecodeError) as exc:
        raise SnapshotFormatError(f"corrupt snapshot: {exc}") from exc


# ---- packed fields ---------------------------------------------------------------------------------


def task_transitions(task: Task) -> list[tuple[int, int]]:
    """[(state code, ts ns)] sorted by timestamp."""
    return list(_TRANSITION.iter_unpack(task.transitions))


def task_profile(task: Task) -> list[tuple[int, int, int, int]]:
    """[(event name index, start ns, end ns, extra data index)] sorted by end."""
    return list(_PROFILE.iter_unpack(task.profile))


def _join(a, b):
    """Order-independent merge of two observations of one scalar: non-empty wins, then the greater."""
    if not a:
        return b
    if not b:
        return a
    return a if a >= b else b


def _join_transitions(old: list[Transition], new: list[Transition]) -> list[Transition]:
    by_key = {(t.state, t.ts_ns): t for t in old}
    for t in new:
        key = (t.state, t.ts_ns)
        if key not in by_key or _info_key(t.info) > _info_key(by_key[key].info):
            by_key[key] = t
    return sorted(by_key.values(), key=lambda t: (t.ts_ns, t.state))


def _info_key(info: dict) -> str:
    return json.dumps(info, sort_keys=True)


# ---- the builder -----------------------------------------------------------------------------------


# A task attempt being built is a plain dict of atoms (str, int, bytes): the cyclic GC does not track such
# dicts, and a 100k-task build would otherwise spend a third of its time in GC passes over them.
# Keys: the Task field names for scalars, the task_log_info keys, "component", and two packed byte strings
# that only grow: "t" (transitions, _ACC_TRANSITION) and "p" (profile events, _ACC_PROFILE, names as
# indices into the builder's word list).
_ACC_TRANSITION = struct.Struct("<qB")  # ts ns, state code: sorts by time
_ACC_PROFILE = struct.Struct("<qqII")  # end ns, start ns, name, extra data (builder word indices)


def _put(fields: dict, name: str, value: Any) -> None:
    """Order-independent merge of one scalar: non-empty wins, then the greater."""
    if value:
        old = fields.get(name)
        if not old or value > old:
            fields[name] = value


def _merge_fields(into: dict, other: dict) -> None:
    for name, value in other.items():
        if name in ("t", "p"):
            into[name] = into.get(name, b"") + value
        else:
            _put(into, name, value)


def _func_name(descriptor) -> str:
    """Ray's CallString(): Class.function, or function."""
    if descriptor is None:
        return ""
    py = descriptor.python_function_descriptor
    if py is not None:
        return f"{py.class_name}.{py.function_name}" if py.class_name else py.function_name
    other = descriptor.java_function_descriptor or descriptor.cpp_function_descriptor or {}
    return ".".join(v for k, v in sorted(other.items()) if k.endswith("Name") and v)


def _json_obj(value: dict) -> str:
    return msgspec.json.encode(value, order="sorted").decode() if value else ""


_LOG_INFO_KEYS = ("stdout_file", "stderr_file", "stdout_start", "stdout_end", "stderr_start", "stderr_end")


def task_log_info(strings: list[str], task: "Task") -> dict | None:
    """The task's task_log_info as Ray shows it, or None."""
    if not (task.log_out or task.log_err or task.log_offsets):
        return None
    offsets = _LOG_OFFSETS.unpack(task.log_offsets) if task.log_offsets else (0, 0, 0, 0)
    return {"stdout_file": strings[task.log_out], "stderr_file": strings[task.log_err],
            **dict(zip(_LOG_INFO_KEYS[2:], offsets))}


def _decode_bytes_fields(value: Any) -> Any:
    """Nested protobuf JSON (death causes, error infos): camelCase -> snake_case, *Id base64 -> hex."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            snake = "".join("_" + c.lower() if c.isupper() else c for c in key)
            if isinstance(item, str) and (snake.endswith("_id") or snake == "id") and item:
                try:
                    item = hex_id(item)
                except (binascii.Error, ValueError):
                    pass
            out[snake] = _decode_bytes_fields(item)
        return out
    if isinstance(value, list):
        return [_decode_bytes_fields(v) for v in value]
    return value


def _hex(b64: str) -> str:
    if not b64:
        return ""
    try:
        return binascii.a2b_base64(b64, strict_mode=True).hex()
    except (binascii.Error, ValueError):
        return ""


_second_of: dict[str, int] = {}


def _ts(value: str) -> int:
    """ts_ns with a fast path for Ray's own form (nine fractional digits, 'Z'): the builder's hottest call."""
    if len(value) == 30 and value[19] == "." and value[29] == "Z":
        seconds = _second_of.get(value[:19])
        if seconds is None:
            seconds = ts_ns(value[:19] + "Z") // 1_000_000_000
            if len(_second_of) < 1 << 20:
                _second_of[value[:19]] = seconds
        try:
            return seconds * 1_000_000_000 + int(value[20:29])
        except ValueError:
            pass
    return ts_ns(value)


def _int(value) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


_stored_batch = msgspec.json.Decoder(list[RayEvent])


def _decode_stored(raw: bytes) -> list[RayEvent] | None:
    """Fast path for a stored batch: the collector validated every event (rayhistory.events.accept_events)
    and wrote one per line, so one typed decode is enough; the per-event checks are not repeated (they are
    a quarter of decode time). None when the batch is not clean, for the careful path."""
    lines = raw.strip()
    if not lines.startswith(b"{") or b"\r" in lines or b"\n\n" in lines:
        return None
    try:
        return _stored_batch.decode(b"[" + lines.replace(b"\n", b",") + b"]")
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


class SnapshotBuilder:
    """Folds raw objects into a Snapshot. Every add_* is pure in-memory work and never raises on bad data."""

    def __init__(self, ref: SessionRef, dead: bool, end_ms: int):
        self.ref = ref
        self.dead = dead
        self.end_ms = end_ms
        self._tasks: dict[tuple[str, int], dict] = {}  # (base64 task id, attempt) -> fields, see _put
        self._words: list[str] = []  # profile event names and extra data, by index
        self._word_index: dict[str, int] = {}
        self._hex_cache: dict[str, str] = {}
        self._actors: dict[str, Actor] = {}
        self._nodes: dict[str, Node] = {}
        self._workers: dict[str, Worker] = {}
        self._jobs: dict[str, DriverJob] = {}
        self._cluster_events: dict[str, dict] = {}
        self._log_index: dict[str, dict[str, int]] = defaultdict(dict)
        self._endpoints: dict[str, bytes] = {}
        self._covered: set[str] = set()
        self._missing: dict[str, str] = {}
        self._corrupt: dict[str, str] = {}
        self._event_ids: set[str] = set()
        self._events_rejected = 0
        self._objects_seen: set[str] = set()

    @property
    def events_parsed(self) -> int:
        """Events folded in by this builder so far (distinct eventIds): a progress figure for loaders."""
        return len(self._event_ids)

    # -- inputs ------------------------------------------------------------------------------------

    def add_event_batch(self, key: str, data: bytes) -> None:
        """A stored event batch (gzip'd JSON lines). Unreadable data marks the object corrupt."""
        if key in self._covered:
            return
        self._objects_seen.add(key)
        self._missing.pop(key, None)
        try:
            raw = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            self._corrupt[key] = f"not gzip: {exc}"
            return
        events = _decode_stored(raw)
        if events is None:  # not one clean typed batch: decode event by event, rejecting bad ones alone
            batch = decode_events(raw)
            if batch.errors and any(e.index == -1 for e in batch.errors):
                self._corrupt[key] = batch.errors[0].reason
                return
            self._events_rejected += len(batch.errors)
            events = batch.events
        for event in events:
            if isinstance(event, RayEvent) and event.event_id not in self._event_ids:
                try:
                    self._add_event(event)
                except (ValueError, TypeError, KeyError, AttributeError) as exc:
                    # valid envelope, unusable payload (e.g. a nested timestamp that is not RFC3339)
                    self._events_rejected += 1
                    log.debug("event rejected", extra={"key": key, "event_id": event.event_id, "error": str(exc)})
                    continue
                self._event_ids.add(event.event_id)
        self._corrupt.pop(key, None)
        self._covered.add(key)

    def add_endpoint(self, name: str, data: bytes) -> None:
        """A head endpoint answer (placement_groups, jobs, serve_applications, cluster_metadata, timezone,
        cluster_status), verbatim; a later call for the same name replaces it."""
        self._endpoints[name] = bytes(data)

    def add_log_index(self, node_id: str, relpath: str, size: int) -> None:
        current = self._log_index[node_id].get(relpath, -1)
        self._log_index[node_id][relpath] = max(current, int(size))

    def add_legacy_events(self, key: str, data: bytes) -> None:
        """A legacy event log (logs/events/event_*.log: one ray.rpc.Event JSON per line), for /events and
        /api/v0/cluster_events. Bad lines are counted as rejected events."""
        for line in data.splitlines():
            if not line.strip():
                continue
            try:
                event = json.loads(line)
                event_id = event["event_id"]
            except (ValueError, KeyError, TypeError):
                self._events_rejected += 1
                continue
            self._cluster_events[event_id] = event

    def mark_missing(self, key: str, reason: str) -> None:
        """An object listed in storage that could not be read (gone, timed out, denied)."""
        if key not in self._covered:
            self._objects_seen.add(key)
            self._missing[key] = reason

    # -- events ------------------------------------------------------------------------------------

    def _add_event(self, event: RayEvent) -> None:
        handler = _HANDLERS.get(event.event_type)
        if handler is not None:
            handler(self, getattr(event, PAYLOAD_FIELD[event.event_type]))

    def _task(self, b64_id: str, attempt: int) -> dict:
        # keyed by the base64 id as Ray sends it (decoded once, in build): most ids appear in ~5 events
        key = (b64_id, attempt)
        fields = self._tasks.get(key)
        if fields is None:
            fields = self._tasks[key] = {}
        return fields

    def _id(self, b64: str) -> str:
        """base64 id -> hex, cached: job, node, worker and parent ids repeat across many tasks."""
        value = self._hex_cache.get(b64)
        if value is None:
            if len(self._hex_cache) > 1 << 18:
                self._hex_cache.clear()
            value = self._hex_cache[b64] = _hex(b64)
        return value

    def _word(self, text: str) -> int:
        i = self._word_index.get(text)
        if i is None:
            i = self._word_index[text] = len(self._words)
            self._words.append(text)
        return i

    def _actor_task_definition(self, d) -> None:
        self._task_definition(d, actor_task=True)

    def _task_definition(self, d, actor_task: bool = False) -> None:
        f = self._task(d.task_id, d.task_attempt)
        if actor_task:
            _put(f, "name", d.actor_task_name)
            _put(f, "func", _func_name(d.actor_func))
            _put(f, "type", "ACTOR_TASK")
            _put(f, "actor", self._id(d.actor_id))
        else:
            _put(f, "name", d.task_name)
            _put(f, "func", _func_name(d.task_func))
            _put(f, "type", d.task_type)
            if d.task_type == "ACTOR_CREATION_TASK":
                _put(f, "actor", _hex(d.task_id)[16:])  # a creation task's id ends with its actor's id
        _put(f, "language", d.language)
        _put(f, "job", self._id(d.job_id))
        _put(f, "parent", self._id(d.parent_task_id))
        pg = self._id(d.placement_group_id)
        _put(f, "placement_group", "" if pg == NIL_PLACEMENT_GROUP else pg)
        _put(f, "resources", _json_obj(d.required_resources) or "{}")
        _put(f, "runtime_env", d.serialized_runtime_env)
        _put(f, "call_site", d.call_site)
        _put(f, "label_selector", _json_obj(d.label_selector))

    def _task_lifecycle(self, e) -> None:
        f = self._task(e.task_id, e.task_attempt)
        packed = [_ACC_TRANSITION.pack(_ts(t.timestamp), TASK_STATE_CODE[t.state])
                  for t in e.state_transitions if t.state in TASK_STATE_CODE]
        if packed:
            f["t"] = f.get("t", b"") + b"".join(packed)
        if e.job_id:
            _put(f, "job", self._id(e.job_id))
        if e.node_id:
            _put(f, "node", self._id(e.node_id))
        if e.worker_id:
            _put(f, "worker", self._id(e.worker_id))
        if e.worker_pid:
            _put(f, "worker_pid", e.worker_pid)
        if e.actor_repr_name:
            _put(f, "repr_name", e.actor_repr_name)
        if e.is_debugger_paused:
            _put(f, "debugger_paused", 2)
        if e.ray_error_info:
            _put(f, "error_type", e.ray_error_info.get("errorType", ""))
            _put(f, "error_message", e.ray_error_info.get("errorMessage", ""))
        info = e.task_log_info
        if info is not None:
            # offsets arrive in several events (start when the task runs, end when it finishes): merge per field
            _put(f, "stdout_file", info.stdout_file)
            _put(f, "stderr_file", info.stderr_file)
            _put(f, "stdout_start", _int(info.stdout_start))
            _put(f, "stdout_end", _int(info.stdout_end))
            _put(f, "stderr_start", _int(info.stderr_start))
            _put(f, "stderr_end", _int(info.stderr_end))

    def _task_profile(self, p) -> None:
        f = self._task(p.task_id, p.attempt_number)
        if p.job_id:
            _put(f, "job", self._id(p.job_id))
        pe = p.profile_events
        if pe is None:
            return
        _put(f, "component", f"{pe.component_type}\n{self._id(pe.component_id)}\n{pe.node_ip_address}")
        word, pack = self._word, _ACC_PROFILE.pack
        f["p"] = f.get("p", b"") + b"".join([
            pack(_int(ev.end_time), _int(ev.start_time), word(ev.event_name), word(ev.extra_data or "{}"))
            for ev in pe.events])

    def _actor(self, b64_id: str) -> Actor:
        actor_id = _hex(b64_id)
        actor = self._actors.get(actor_id)
        if actor is None:
            actor = self._actors[actor_id] = Actor(actor_id=actor_id)
        return actor

    def _actor_definition(self, d) -> None:
        a = self._actor(d.actor_id)
        a.job_id = _join(a.job_id, _hex(d.job_id))
        a.name = _join(a.name, d.name)
        a.ray_namespace = _join(a.ray_namespace, d.ray_namespace)
        a.class_name = _join(a.class_name, d.class_name)
        a.serialized_runtime_env = _join(a.serialized_runtime_env, d.serialized_runtime_env)
        a.required_resources = d.required_resources or a.required_resources
        a.is_detached = a.is_detached or d.is_detached
        pg = _hex(d.placement_group_id)
        a.placement_group_id = _join(a.placement_group_id, "" if pg == NIL_PLACEMENT_GROUP else pg)
        a.label_selector = d.label_selector or a.label_selector
        a.call_site = _join(a.call_site, d.call_site)
        a.parent_id = _join(a.parent_id, _hex(d.parent_id))
        a.defined = True

    def _actor_lifecycle(self, e) -> None:
        new = []  # every transition is parsed before anything changes: a bad one rejects the whole event
        for t in e.state_transitions:
            info = {"node_id": _hex(t.node_id), "worker_id": _hex(t.worker_id), "pid": t.pid, "port": t.port,
                    "repr_name": t.repr_name, "restart_reason": t.restart_reason}
            if t.death_cause:
                info["death_cause"] = _decode_bytes_fields(t.death_cause)
            new.append(Transition(t.state, _ts(t.timestamp), {k: v for k, v in info.items() if v}))
        a = self._actor(e.actor_id)
        a.transitions = _join_transitions(a.transitions, new)

    def _node_definition(self, d) -> None:
        node_id = _hex(d.node_id)
        n = self._nodes.setdefault(node_id, Node(node_id=node_id))
        n.node_ip = _join(n.node_ip, d.node_ip_address)
        n.hostname = _join(n.hostname, d.hostname)
        n.node_name = _join(n.node_name, d.node_name)
        n.labels = d.labels or n.labels
        n.start_ns = _join(n.start_ns, _ts(d.start_timestamp))
        n.instance_id = _join(n.instance_id, d.instance_id)
        n.instance_type_name = _join(n.instance_type_name, d.instance_type_name)

    def _node_lifecycle(self, e) -> None:
        new = []
        for t in e.state_transitions:
            info = {"resources": t.resources, "alive_sub_state": t.alive_sub_state}
            if t.death_info:
                info["death_info"] = _decode_bytes_fields(t.death_info)
            new.append(Transition(t.state, _ts(t.timestamp), {k: v for k, v in info.items() if v}))
        node_id = _hex(e.node_id)
        n = self._nodes.setdefault(node_id, Node(node_id=node_id))
        n.transitions = _join_transitions(n.transitions, new)

    def _worker_definition(self, d) -> None:
        worker_id = _hex(d.worker_id)
        w = self._workers.setdefault(worker_id, Worker(worker_id=worker_id))
        w.node_id = _join(w.node_id, _hex(d.node_id))
        w.worker_type = _join(w.worker_type, d.worker_type)
        w.pid = _join(w.pid, d.pid)

    def _worker_lifecycle(self, e) -> None:
        new = []
        for t in e.state_transitions:
            info = {"worker_launch_time_ms": _int(t.worker_launch_time_ms),
                    "worker_launched_time_ms": _int(t.worker_launched_time_ms),
                    "start_time_ms": _int(t.start_time_ms), "end_time_ms": _int(t.end_time_ms)}
            if t.death_info:
                info["death_info"] = _decode_bytes_fields(t.death_info)
            new.append(Transition(t.state, _ts(t.timestamp), {k: v for k, v in info.items() if v}))
        worker_id = _hex(e.worker_id)
        w = self._workers.setdefault(worker_id, Worker(worker_id=worker_id))
        w.job_id = _join(w.job_id, _hex(e.job_id))
        w.transitions = _join_transitions(w.transitions, new)

    def _job_definition(self, d) -> None:
        job_id = _hex(d.job_id)
        j = self._jobs.setdefault(job_id, DriverJob(job_id=job_id))
        j.driver_pid = _join(j.driver_pid, _int(d.driver_pid))
        j.driver_node_id = _join(j.driver_node_id, _hex(d.driver_node_id))
        j.entrypoint = _join(j.entrypoint, d.entrypoint)
        if d.config is not None:
            j.serialized_runtime_env = _join(j.serialized_runtime_env, d.config.serialized_runtime_env)
            j.metadata = d.config.metadata or j.metadata

    def _job_lifecycle(self, e) -> None:
        new = [Transition(t.state, _ts(t.timestamp)) for t in e.state_transitions]
        job_id = _hex(e.job_id)
        j = self._jobs.setdefault(job_id, DriverJob(job_id=job_id))
        j.transitions = _join_transitions(j.transitions, new)

    # -- output ------------------------------------------------------------------------------------

    def build(self) -> Snapshot:
        strings: list[str] = [""]
        index: dict[str, int] = {"": 0}
        lookup = index.get

        def ref(value: str | None) -> int:
            if not value:
                return 0
            i = lookup(value)
            if i is None:
                i = index[value] = len(strings)
                strings.append(value)
            return i

        end_ns = self.end_ms * 1_000_000
        dead = self.dead
        pack_transition, pack_profile, pack_offsets = _TRANSITION.pack, _PROFILE.pack, _LOG_OFFSETS.pack
        by_hex: dict[tuple[str, int], dict] = {}
        for (b64, attempt), fields in self._tasks.items():
            key = (_hex(b64), attempt)
            if key in by_hex:  # the same id spelled two ways (non-canonical base64)
                _merge_fields(by_hex[key], fields)
            else:
                by_hex[key] = fields
        words = self._words
        tasks = []
        append = tasks.append
        for (task_id, attempt), f in sorted(by_hex.items()):
            get = f.get
            transitions = sorted(set(_ACC_TRANSITION.iter_unpack(get("t", b""))))
            # the dashboard shows the greatest state by enum number (Ray's protobuf_to_task_state_dict)
            state = max((code for _, code in transitions), default=0)
            end = max((ts for ts, code in transitions if code == FINISHED or code == FAILED), default=0)
            if dead and state != FINISHED and state != FAILED:
                state, end = FAILED, end_ns
            profile = get("p")
            if profile:
                # a worker records a profile event when it ends: end time is the order Ray shows them in
                events = sorted({(e, s, words[n], words[x]) for e, s, n, x in _ACC_PROFILE.iter_unpack(profile)})
                profile = b"".join([pack_profile(ref(n), s, e, ref(x)) for e, s, n, x in events])
            has_log = "stdout_file" in f or "stderr_file" in f
            # positional: this is the hot loop of a build (Task's field order)
            append(Task(
                task_id, attempt, ref(get("job")), ref(get("name")), ref(get("func")), ref(get("type")),
                ref(get("language")), ref(get("actor")), ref(get("parent")), ref(get("node")), ref(get("worker")),
                get("worker_pid", 0), ref(get("placement_group")), ref(get("resources")), ref(get("runtime_env")),
                ref(get("call_site")), ref(get("label_selector")), ref(get("repr_name")), ref(get("error_type")),
                ref(get("error_message")), ref(get("stdout_file")), ref(get("stderr_file")),
                pack_offsets(*(get(k, 0) for k in _LOG_INFO_KEYS[2:])) if has_log else b"",
                get("debugger_paused", 0),
                b"".join([pack_transition(code, ts) for ts, code in transitions]),
                profile or b"", ref(get("component")), state, end,
            ))
        job_positions: dict[int, array] = {}
        driver = index.get("DRIVER_TASK", -1)
        for position, task in enumerate(tasks):
            if task.type != driver:
                positions = job_positions.get(task.job)
                if positions is None:
                    positions = job_positions[task.job] = array("I")
                positions.append(position)
        covered = sorted(self._covered)
        return Snapshot(
            namespace=self.ref.namespace, cluster=self.ref.cluster, session=self.ref.session,
            dead=self.dead, end_ms=self.end_ms, strings=strings, tasks=tasks,
            job_tasks={job: positions.tobytes() for job, positions in job_positions.items()},
            actors=[self._actors[k] for k in sorted(self._actors)],
            nodes=[self._nodes[k] for k in sorted(self._nodes)],
            workers=[self._workers[k] for k in sorted(self._workers)],
            driver_jobs=[self._jobs[k] for k in sorted(self._jobs)],
            cluster_events=sorted(self._cluster_events.values(), key=lambda e: (str(e.get("timestamp", "")), e["event_id"])),
            log_index={node: [LogFile(p, s) for p, s in sorted(files.items())] for node, files in sorted(self._log_index.items())},
            endpoints=dict(sorted(self._endpoints.items())),
            covered=covered,
            objects_total=len(self._objects_seen | self._covered),
            objects_missing=[ObjectProblem(k, r) for k, r in sorted(self._missing.items())],
            objects_corrupt=[ObjectProblem(k, r) for k, r in sorted(self._corrupt.items())],
            events_rejected=self._events_rejected,
            complete=not self._missing and not self._corrupt,
        )

    @classmethod
    def from_snapshot(cls, snapshot: Snapshot) -> "SnapshotBuilder":
        """Continue from a stored snapshot (a late flush): add the new objects, then build() again."""
        b = cls(snapshot.ref, snapshot.dead, snapshot.end_ms)
        strings = snapshot.strings
        names = ("job", "name", "func", "type", "language", "actor", "parent", "node", "worker", "placement_group",
                 "resources", "runtime_env", "call_site", "label_selector", "repr_name", "error_type",
                 "error_message")
        for t in snapshot.tasks:
            f = b._tasks[(base64.b64encode(bytes.fromhex(t.task_id)).decode(), t.attempt)] = {}
            for name in names:
                _put(f, name, strings[getattr(t, name)])
            for name, value in (task_log_info(strings, t) or {}).items():
                _put(f, name, value)
            _put(f, "worker_pid", t.worker_pid)
            _put(f, "debugger_paused", t.debugger_paused)
            _put(f, "component", strings[t.component])
            f["t"] = b"".join(_ACC_TRANSITION.pack(ts, code) for code, ts in _TRANSITION.iter_unpack(t.transitions))
            f["p"] = b"".join(_ACC_PROFILE.pack(e, s, b._word(strings[n]), b._word(strings[x]))
                              for n, s, e, x in _PROFILE.iter_unpack(t.profile))
        b._actors = {a.actor_id: msgspec.structs.replace(a) for a in snapshot.actors}
        b._nodes = {n.node_id: msgspec.structs.replace(n) for n in snapshot.nodes}
        b._workers = {w.worker_id: msgspec.structs.replace(w) for w in snapshot.workers}
        b._jobs = {j.job_id: msgspec.structs.replace(j) for j in snapshot.driver_jobs}
        b._cluster_events = {e["event_id"]: e for e in snapshot.cluster_events}
        for node, files in snapshot.log_index.items():
            for f in files:
                b.add_log_index(node, f.relpath, f.size)
        b._endpoints = dict(snapshot.endpoints)
        b._covered = set(snapshot.covered)
        b._objects_seen = set(snapshot.covered)
        for p in snapshot.objects_missing:
            b.mark_missing(p.key, p.reason)
        b._corrupt = {p.key: p.reason for p in snapshot.objects_corrupt}
        b._objects_seen |= set(b._corrupt)
        b._events_rejected = snapshot.events_rejected
        return b


# event type -> the builder method that folds its payload in
_HANDLERS = {
    "TASK_DEFINITION_EVENT": SnapshotBuilder._task_definition,
    "ACTOR_TASK_DEFINITION_EVENT": SnapshotBuilder._actor_task_definition,
    "TASK_LIFECYCLE_EVENT": SnapshotBuilder._task_lifecycle,
    "TASK_PROFILE_EVENT": SnapshotBuilder._task_profile,
    "ACTOR_DEFINITION_EVENT": SnapshotBuilder._actor_definition,
    "ACTOR_LIFECYCLE_EVENT": SnapshotBuilder._actor_lifecycle,
    "NODE_DEFINITION_EVENT": SnapshotBuilder._node_definition,
    "NODE_LIFECYCLE_EVENT": SnapshotBuilder._node_lifecycle,
    "WORKER_DEFINITION_EVENT": SnapshotBuilder._worker_definition,
    "WORKER_LIFECYCLE_EVENT": SnapshotBuilder._worker_lifecycle,
    "DRIVER_JOB_DEFINITION_EVENT": SnapshotBuilder._job_definition,
    "DRIVER_JOB_LIFECYCLE_EVENT": SnapshotBuilder._job_lifecycle,
}
