"""Building a session's snapshot (server/snapshot_model.py) from the raw objects in storage.

Pure code, no I/O. `SnapshotBuilder` folds raw objects (the collector's event batches, the head's
endpoint answers, the log index) into a `Snapshot`, decoding event batches with server/stored_events.py.

Merging is a join of semilattices, so the result does not depend on arrival order or repeats:
- task attempts are keyed by (task id, attempt), actors/nodes/workers/jobs by id;
- state transitions are a set keyed by (state, timestamp), ordered by timestamp;
- a scalar seen twice keeps the non-empty, greatest value (it is normally the same value twice);
- so an event folded in twice (Ray resends, a collector flushes twice) changes nothing, and batch keys
  already covered (`Snapshot.covered`) are skipped. Event ids are not kept: a set of them cost more
  memory (58 MB per 100k tasks) than the tasks being built.
"""

from __future__ import annotations

import binascii
import json
import logging
import struct
from array import array
from collections import defaultdict
from operator import attrgetter
from typing import Any

import msgspec

from rayhistory.compression import DEFAULT_LIMITS, InflateError, InflateLimits, gunzip
from rayhistory.events import PAYLOAD_FIELD, hex_id, ts_ns
from rayhistory.layout import SessionRef

from .derived_state import SESSION_ENDED_REASON, execution_closed_ns, first_alive_after, job_end, worker_death
from .gc_pause import gc_paused
# the model and its compacted bytes, named here too: callers build and read snapshots through this module
from .snapshot_model import (  # noqa: F401 - FORMAT_VERSION, SNAPSHOT_LIMITS, decode/encode are re-exported
    FAILED, FINISHED, FORMAT_VERSION, LOG_INFO_KEYS, LOG_OFFSETS, NIL_PLACEMENT_GROUP, PROFILE_ENTRY, SNAPSHOT_LIMITS,
    TASK_STATE_CODE, TRANSITION_ENTRY, Actor, DriverJob, LogFile, Node, ObjectProblem, Snapshot, SnapshotFormatError,
    Task, Transition, Worker, decode_snapshot, encode_snapshot, pack_records, task_log_info, task_profile,
    task_transitions,
)
from .stored_events import (
    StoredActorTaskDefinition, StoredTaskDefinition, StoredTaskLifecycle, StoredTaskProfile, decode_careful,
    func_name_of, labels_of, resources_of,
)
from .stored_events import decode_clean as _decode_stored  # a module global, looked up on each call

log = logging.getLogger(__name__)


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


class _HexIds(dict):
    """base64 id -> hex, cached (`ids[b64]` is one lookup in C): job, node, worker and parent ids repeat
    across many tasks."""

    def __missing__(self, b64: str) -> str:
        if len(self) > 1 << 18:
            self.clear()
        value = self[b64] = _hex(b64)
        return value


class _Shared(dict):
    """A string -> its first copy (`shared[text]` is one lookup in C): every event decodes its own copy of
    values that thousands of tasks share."""

    def __missing__(self, text: str) -> str:
        if len(self) > 1 << 18:
            self.clear()
        self[text] = text
        return text


class _WordIds(dict):
    """text -> its word id, given on first sight, and `texts`: id -> text. Ids start at `base`: the builders
    of one parallel load (server/parallel_build.py) number their words in disjoint ranges, so their packed
    profile events merge without being rewritten."""

    def __init__(self, base: int = 0):
        super().__init__()
        self.next = base
        self.texts: dict[int, str] = {}

    def __missing__(self, text: str) -> int:
        i = self[text] = self.next
        self.next += 1
        self.texts[i] = text
        return i


class _Interner(dict):
    """value -> its index in `values`, given on first sight: `interner[value]` is one lookup in C."""

    def __init__(self, values: list):
        super().__init__((v, i) for i, v in enumerate(values))
        self.values = values

    def __missing__(self, value):
        i = self[value] = len(self.values)
        self.values.append(value)
        return i


# Task's string fields before and after worker_pid, in its field order
_TASK_STRINGS_HEAD = ("job", "name", "func", "type", "language", "actor", "parent", "node", "worker")
_TASK_STRINGS_TAIL = ("placement_group", "resources", "runtime_env", "call_site", "label_selector", "repr_name",
                      "error_type", "error_message", "stdout_file", "stderr_file")


# ---- the builder -----------------------------------------------------------------------------------


_ACC_TRANSITION = struct.Struct("<qB")  # ts ns, state code: sorts by time
_ACC_PROFILE = struct.Struct("<qqII")  # end ns, start ns, name, extra data (builder word indices)


TaskFields = msgspec.defstruct(
    "TaskFields",
    [(name, str, "") for name in (*_TASK_STRINGS_HEAD, *_TASK_STRINGS_TAIL, "component")]
    + [(name, int, 0) for name in ("worker_pid", "debugger_paused", *LOG_INFO_KEYS[2:])]
    + [("t", bytes, b""), ("p", bytes, b"")],
    gc=False, module=__name__)
TaskFields.__doc__ = """A task attempt being built: Task's string fields as the strings themselves, its
ints and the task_log_info offsets (stored + 1, so that a real 0 is not unknown), "" or 0 while unknown;
`t` and `p` only grow: transitions (_ACC_TRANSITION) and profile events (_ACC_PROFILE, names as indices
into the builder's word list). Atoms only, untracked by the cyclic GC (a 100k-task build would otherwise
spend a third of its time in GC passes over them), half the size of a dict of the same fields: the fold
state is most of a cold build's peak."""


# the fields only a task's definition sets (its job is merged, as other events name it too)
_DEFINITION_FIELDS = ("name", "func", "type", "actor", "language", "parent", "placement_group", "resources",
                      "runtime_env", "call_site", "label_selector")
_definition_fields = attrgetter(*_DEFINITION_FIELDS)
_NO_DEFINITION = ("",) * len(_DEFINITION_FIELDS)
_TASK_SCALARS = tuple(name for name in TaskFields.__struct_fields__ if name not in ("t", "p"))
_task_strings_head, _task_strings_tail = attrgetter(*_TASK_STRINGS_HEAD), attrgetter(*_TASK_STRINGS_TAIL)
_log_offsets = attrgetter(*LOG_INFO_KEYS[2:])


def task_key(task_id: bytes, attempt: int) -> bytes:
    """How the builder keys a task attempt: the id's bytes, then 0xFFFFFFFF - attempt as 4 big-endian bytes,
    so that keys of one length sort as Ray lists attempts (by id, a later attempt first). One object of ~60 B
    where a tuple of the base64 text and the attempt took ~160 B: keys and fields are most of a build's peak.
    Raises OverflowError for an attempt out of 0..2**32-1."""
    suffix = _ATTEMPT_SUFFIXES[attempt] if 0 <= attempt < len(_ATTEMPT_SUFFIXES) else \
        (_LAST_ATTEMPT - attempt).to_bytes(4, "big")
    return task_id + suffix


def _b64_task_key(b64: str, attempt: int, a2b=binascii.a2b_base64) -> bytes:
    """task_key of an id as Ray sends it (base64); binascii.Error for one that is not base64."""
    if 0 <= attempt < 64:  # task_key's common case, inlined: this runs for every task event
        return a2b(b64, strict_mode=True) + _ATTEMPT_SUFFIXES[attempt]
    return task_key(a2b(b64, strict_mode=True), attempt)


def _attempt_of(key: bytes) -> int:
    return _LAST_ATTEMPT - int.from_bytes(key[-4:], "big")


_LAST_ATTEMPT = 0xFFFFFFFF
_ATTEMPT_SUFFIXES = tuple((_LAST_ATTEMPT - attempt).to_bytes(4, "big") for attempt in range(64))  # 0..63


def _put(fields: TaskFields, name: str, value: Any) -> None:
    """Order-independent merge of one scalar: non-empty wins, then the greater."""
    if value:
        old = getattr(fields, name)
        if not old or value > old:
            setattr(fields, name, value)


def _put_all(fields: TaskFields, values: tuple[tuple[str, Any], ...]) -> None:
    """_put of several (name, value) pairs, in one call."""
    for name, value in values:
        if value:
            old = getattr(fields, name)
            if not old or value > old:
                setattr(fields, name, value)


def _merge_fields(into: TaskFields, other: TaskFields) -> None:
    into.t += other.t
    into.p += other.p
    for name in _TASK_SCALARS:
        _put(into, name, getattr(other, name))



def _log_offset(value: int | None) -> int:
    """A log offset as the builder accumulates it: offset + 1, and 0 when absent (a real 0 is not absent)."""
    return 0 if value is None else value + 1


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


class _SecondStarts(dict):
    """"YYYY-MM-DDTHH:MM:SS." -> ns since the epoch of that second: `starts[prefix]` is one lookup in C."""

    def __missing__(self, prefix: str) -> int:
        if prefix[19] != ".":
            raise ValueError(f"not an RFC3339 timestamp: {prefix!r}")
        start = ts_ns(prefix[:19] + "Z")
        if len(self) < 1 << 20:
            self[prefix] = start
        return start


_second_starts = _SecondStarts()


def _ts(value: str) -> int:
    """ts_ns with a fast path for Ray's own form (nine fractional digits, 'Z'): the builder's hottest call."""
    if len(value) == 30 and value[29] == "Z":
        try:
            return _second_starts[value[:20]] + int(value[20:29])
        except ValueError:
            pass
    return ts_ns(value)


def _int(value) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0



class SnapshotBuilder:
    """Folds raw objects into a Snapshot. Every add_* is pure in-memory work and never raises on bad data."""

    def __init__(self, ref: SessionRef, dead: bool, end_ms: int, limits: InflateLimits = DEFAULT_LIMITS,
                 word_base: int = 0, defer_entities: bool = False):
        self.ref = ref
        self.limits = limits  # how far one stored object may inflate (rayhistory.compression)
        self.dead = dead
        self.end_ms = end_ms
        self._tasks: dict[bytes, TaskFields] = {}  # task_key -> the attempt's fields
        self._word_index = _WordIds(word_base)  # profile event names and extra data
        self._words = self._word_index.texts  # word id -> text
        # a parallel load's worker folds task events and keeps the others (actors, nodes, workers, jobs: a few
        # thousand, some merged in arrival order) for the parent, which folds them in storage order
        self._handlers = _DEFERRING_HANDLERS if defer_entities else _HANDLERS
        self.deferred: list = []  # with defer_entities: the current object's events not folded in
        self._id = _HexIds().__getitem__  # base64 id -> hex
        # raw JSON of a function descriptor, resource map, label selector -> its normalised form
        self._func_names: dict[bytes, str] = {}
        self._resources_json: dict[bytes, str] = {}
        self._labels_json: dict[bytes, str] = {}
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
        self._events_folded = 0
        self._text = _Shared()  # one copy of each string the events repeat (log file names, names, languages)
        self._events_rejected = 0
        self._objects_seen: set[str] = set()

    @property
    def events_parsed(self) -> int:
        """Events folded in by this builder so far (one sent twice counts twice): a progress figure for loaders."""
        return self._events_folded

    # -- inputs ------------------------------------------------------------------------------------

    def add_event_batch(self, key: str, data: bytes) -> None:
        """A stored event batch (gzip'd JSON lines). Unreadable data marks the object corrupt: not gzip, empty,
        truncated, inflating past `limits`, or anything at all raising while it is folded in (the session still
        loads, incomplete, with this key and the reason in objects_corrupt)."""
        if key in self._covered:
            return
        self.record_object(key, *self.fold_object(key, data))

    def fold_object(self, key: str, data: bytes) -> tuple[str, int]:
        """Gunzip, decode and fold in one stored batch: (why it is unreadable or "", events rejected)."""
        try:
            raw = gunzip(data, self.limits)
        except InflateError as exc:
            return str(exc), 0  # empty, not gzip, truncated, or past a cap: the message says which
        rejected_before = self._events_rejected
        try:
            with gc_paused():  # the batch's decoded events are freed before the GC runs again: it never sees them
                unreadable = self._fold_batch(key, raw)
        except (RecursionError, Exception) as exc:  # noqa: BLE001 - one object's damage stays that object's
            # events folded in before the failure stay (each was whole); the object is not covered, and named
            log.warning("stored object could not be folded in", extra={"key": key, "error": f"{type(exc).__name__}: {exc}"})
            unreadable = f"{type(exc).__name__}: {exc}"
        return unreadable, self._events_rejected - rejected_before

    def record_object(self, key: str, unreadable: str, rejected: int) -> None:
        """What folding one stored batch found, in the snapshot's completeness."""
        self._objects_seen.add(key)
        self._missing.pop(key, None)
        if unreadable:
            self._corrupt[key] = unreadable
            return
        self._covered.add(key)
        if rejected:
            # the collector stored only events it checked: one the builder cannot use is damage. Its
            # neighbours are shown; the object is named, and the session says it is incomplete.
            self._corrupt[key] = f"{rejected} of its events could not be used (each rejected alone)"
        else:
            self._corrupt.pop(key, None)

    def _fold_batch(self, key: str, raw: bytes) -> str:
        """Decode a batch and fold its events in. Why the whole batch is unreadable, or ''."""
        events = _decode_stored(raw)
        if events is None:  # not one clean batch: decode event by event, rejecting bad ones alone
            careful = decode_careful(raw)
            if isinstance(careful, str):
                return careful
            events, rejected = careful
            self._events_rejected += rejected
        self._events_folded += self.fold_events(key, events, self._handlers)
        return ""

    def fold_events(self, key: str, events: list, handlers: dict | None = None) -> int:
        """Fold decoded events in, rejecting an unusable one alone; how many were folded."""
        handlers = _HANDLERS if handlers is None else handlers
        folded = 0
        for event in events:
            handler = handlers.get(event.event_type)
            if handler is not None:
                payload_of, fold = handler
                try:
                    fold(self, payload_of(event))
                except Exception as exc:  # noqa: BLE001 - ValueError, TypeError, RecursionError, ...: this event alone
                    # valid envelope, unusable payload (e.g. a nested timestamp that is not RFC3339)
                    self._events_rejected += 1
                    log.debug("event rejected", extra={"key": key, "event_id": event.event_id, "error": str(exc)})
                    continue
            folded += 1
        return folded

    def add_endpoint(self, name: str, data: bytes, key: str = "") -> None:
        """A head endpoint answer (placement_groups, jobs, serve_applications, cluster_metadata, timezone,
        cluster_status), verbatim; a later call for the same name replaces it. An answer that is not JSON the
        API can read (or nests too deep to read) is not kept: it marks its object (`key`) corrupt."""
        try:
            msgspec.json.decode(data)
        except Exception as exc:  # noqa: BLE001 - DecodeError, RecursionError, ...
            self._objects_seen.add(key or name)
            self._corrupt[key or name] = f"endpoint answer {name!r} is not readable JSON: {type(exc).__name__}: {exc}"
            return
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
                if not isinstance(event_id, str):
                    raise TypeError("event_id is not a string")
            except Exception:  # noqa: BLE001 - ValueError, KeyError, TypeError, RecursionError: this line alone
                self._events_rejected += 1
                continue
            self._cluster_events[event_id] = event

    def take_tasks(self) -> tuple[dict[bytes, TaskFields], dict[int, str]]:
        """A parallel load's worker hands its task states and words over (for merge_tasks); they leave it."""
        tasks, self._tasks = self._tasks, {}
        return tasks, self._words

    def merge_tasks(self, tasks: dict[bytes, TaskFields], words: dict[int, str], events_folded: int) -> None:
        """The task states a parallel load's worker folded (`words`: its word ids, in a range of its own)."""
        self._words.update(words)
        mine = self._tasks
        for key in mine.keys() & tasks.keys():  # few: a worker gets a contiguous stretch of time
            _merge_fields(mine[key], tasks.pop(key))
        mine.update(tasks)
        self._events_folded += events_folded

    def add_folded_object(self, key: str, unreadable: str, rejected: int, deferred: list) -> None:
        """A batch a parallel load's worker folded: the events it deferred are folded in here (call in storage
        order, as add_event_batch would be), then what the object's folding found is recorded."""
        before = self._events_rejected
        self._events_folded += self.fold_events(key, deferred)
        self._events_rejected += rejected
        self.record_object(key, unreadable, self._events_rejected - before)

    def mark_missing(self, key: str, reason: str) -> None:
        """An object listed in storage that could not be read (gone, timed out, denied)."""
        if key not in self._covered:
            self._objects_seen.add(key)
            self._missing[key] = reason

    # -- events ------------------------------------------------------------------------------------

    def _task(self, b64_id: str, attempt: int) -> TaskFields:
        key = _b64_task_key(b64_id, attempt)
        fields = self._tasks.get(key)
        if fields is None:
            fields = self._tasks[key] = TaskFields()
        return fields

    def _defer(self, event) -> None:
        self.deferred.append(event)

    def _word(self, text: str) -> int:
        return self._word_index[text]

    def _cached(self, cache: dict[bytes, str], raw: msgspec.Raw, normalise) -> str:
        key = bytes(raw)
        value = cache.get(key)
        if value is None:
            if len(cache) > 1 << 12:
                cache.clear()
            value = cache[key] = normalise(key)
        return value

    def _task_definition(self, d: StoredTaskDefinition) -> None:
        func = self._cached(self._func_names, d.task_func, func_name_of)
        # a creation task's id ends with its actor's id
        actor = _hex(d.task_id)[16:] if d.task_type == "ACTOR_CREATION_TASK" else ""
        self._fold_definition(d, d.task_name, func, d.task_type, actor)

    def _actor_task_definition(self, d: StoredActorTaskDefinition) -> None:
        func = self._cached(self._func_names, d.actor_func, func_name_of)
        self._fold_definition(d, d.actor_task_name, func, "ACTOR_TASK", self._id(d.actor_id))

    def _fold_definition(self, d, name: str, func: str, task_type: str, actor: str) -> None:
        # everything is decoded before the task is touched: a bad field rejects the whole event
        resources = self._cached(self._resources_json, d.required_resources, resources_of)
        labels = self._cached(self._labels_json, d.label_selector, labels_of)
        pg = self._id(d.placement_group_id)
        text = self._text
        job = self._id(d.job_id)
        f = self._task(d.task_id, d.task_attempt)
        if job and (not f.job or job > f.job):
            f.job = job
        values = (text[name], func, text[task_type], actor, text[d.language], self._id(d.parent_task_id),
                  "" if pg == NIL_PLACEMENT_GROUP else pg, resources, text[d.serialized_runtime_env],
                  text[d.call_site], labels)
        if _definition_fields(f) == _NO_DEFINITION:  # the attempt's first definition: nothing to merge with
            (f.name, f.func, f.type, f.actor, f.language, f.parent, f.placement_group, f.resources, f.runtime_env,
             f.call_site, f.label_selector) = values
        else:  # sent again
            _put_all(f, tuple(zip(_DEFINITION_FIELDS, values)))

    def _task_lifecycle(self, e: StoredTaskLifecycle) -> None:
        # the hottest handler (three events of five): _task, _ts and _put inlined. What can fail (the id, a
        # timestamp) comes before the task is touched: a bad event is rejected as if it never arrived
        codes, pack, starts = TASK_STATE_CODE, _ACC_TRANSITION.pack, _second_starts
        packed = b"".join([pack(starts[ts[:20]] + int(ts[20:29]) if len(ts) == 30 and ts[29] == "Z" else _ts(ts),
                                codes[t.state])
                           for t in e.state_transitions if t.state in codes for ts in (t.timestamp,)])
        key = _b64_task_key(e.task_id, e.task_attempt)
        f = self._tasks.get(key)
        if f is None:
            f = self._tasks[key] = TaskFields()
        if packed:
            f.t += packed
        hex_of = self._id
        for name, value in (("job", e.job_id), ("node", e.node_id), ("worker", e.worker_id)):
            if value:
                value = hex_of(value)
                if value:
                    old = getattr(f, name)
                    if not old or value > old:
                        setattr(f, name, value)
        value = e.worker_pid
        if value and (not f.worker_pid or value > f.worker_pid):
            f.worker_pid = value
        if e.actor_repr_name:
            _put(f, "repr_name", self._text[e.actor_repr_name])
        if e.is_debugger_paused:
            _put(f, "debugger_paused", 2)
        if e.ray_error_info:
            # Ray's enum name and message; anything else there (the collector keeps any JSON) is not shown
            for name, value in (("error_type", e.ray_error_info.get("errorType")),
                                ("error_message", e.ray_error_info.get("errorMessage"))):
                if isinstance(value, str):
                    _put(f, name, value)
        info = e.task_log_info
        if info is not None:
            text = self._text
            values = (text[info.stdout_file], text[info.stderr_file], _log_offset(info.stdout_start),
                      _log_offset(info.stdout_end), _log_offset(info.stderr_start), _log_offset(info.stderr_end))
            if not (f.stdout_file or f.stderr_file or f.stdout_start or f.stdout_end or f.stderr_start or f.stderr_end):
                f.stdout_file, f.stderr_file, f.stdout_start, f.stdout_end, f.stderr_start, f.stderr_end = values
            else:  # offsets arrive in several events (start when the task runs, end when it ends): merge per field
                _put_all(f, tuple(zip(LOG_INFO_KEYS, values)))

    def _task_profile(self, p: StoredTaskProfile) -> None:
        # everything is decoded and packed before the task is touched: a bad field rejects the whole event
        pe = p.profile_events
        if pe is not None:
            word, pack = self._word_index.__getitem__, _ACC_PROFILE.pack
            # times arrive as decimal strings (64-bit integers in protobuf JSON), decoded to int (stored_events.py)
            packed = b"".join([pack(ev.end_time, ev.start_time, word(ev.event_name), word(ev.extra_data or "{}"))
                               for ev in pe.events])
            component = self._text[f"{pe.component_type}\n{self._id(pe.component_id)}\n{pe.node_ip_address}"]
        job = self._id(p.job_id) if p.job_id else ""
        f = self._task(p.task_id, p.attempt_number)
        if job and (not f.job or job > f.job):
            f.job = job
        if pe is not None:
            if not f.component or component > f.component:
                f.component = component
            f.p += packed

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

    # -- derived state -----------------------------------------------------------------------------

    def _profile_of(self, f: TaskFields) -> list[tuple[int, int, str]]:
        words = self._words
        return [(e, s, words[n]) for e, s, n, _ in _ACC_PROFILE.iter_unpack(f.p)]

    def _derived_end(self, task_id: str, f: TaskFields, transitions: list[tuple[int, int]], state: int,
                     end_ns: int) -> tuple[int, int, str]:
        """(state, end ns, failure reason) of an attempt no terminal transition ended (docs/dead-sessions.md):
        in a dead session what the events prove (its execution closed, its actor became ALIVE) ends it
        FINISHED; else, in any session, a DEAD worker it ran on or its job's end fails it as Ray's GCS does;
        else a dead session fails it at the session's end."""
        if self.dead:
            closed = execution_closed_ns(self._profile_of(f))
            if not closed and f.type == "ACTOR_CREATION_TASK":
                closed = first_alive_after(self._actors.get(f.actor),
                                            transitions[0][0] if transitions else 0)
            if closed:
                return FINISHED, closed, ""
        for end, reason in (worker_death(self._workers.get(f.worker)), job_end(self._jobs.get(f.job))):
            if end:
                return FAILED, end, reason.replace("{task_id}", task_id)
        if self.dead:
            return FAILED, end_ns, SESSION_ENDED_REASON
        return state, 0, ""

    # -- output ------------------------------------------------------------------------------------

    def build(self, release: bool = False) -> Snapshot:
        """The snapshot of everything folded in so far. With `release`, each task's state is freed once its
        Task is made, so that a cold build's peak is about the larger of the two, not their sum; the builder
        is spent then (a loader builds once)."""
        with gc_paused():
            return self._build(release)

    def _build(self, release: bool) -> Snapshot:
        strings: list[str] = [""]
        index = _Interner(strings)
        index[None] = 0  # a field never set
        ref = index.__getitem__
        end_ns = self.end_ms * 1_000_000
        pack_transition, pack_profile, pack_offsets = TRANSITION_ENTRY.pack, PROFILE_ENTRY.pack, LOG_OFFSETS.pack
        by_key = self._tasks
        if release:
            self._tasks = {}
        take = by_key.pop if release else by_key.__getitem__
        words = self._words
        tasks = []
        append = tasks.append
        # Ray sorts its task list by task id alone, stably, over the GCS's order, where an attempt that ended
        # later comes first: a retry before the attempt it replaced. That is the keys' own order (task_key)
        # when all ids are of one length, as Ray's are
        order = sorted(by_key)
        if len(set(map(len, order))) > 1:
            order.sort(key=lambda k: (k[:-4], k[-4:]))
        for key in order:
            task_id, attempt = key[:-4].hex(), _attempt_of(key)
            f = take(key)
            # Ray's GCS lists only task attempts with task info of their own (HandleGetTaskEvents skips the
            # others): a restarted actor's constructor, an id only a submitter's profile events name. They are
            # kept, unlisted, for a definition a later flush may bring.
            listed = f.type != ""
            transitions = sorted(set(_ACC_TRANSITION.iter_unpack(f.t)))
            # the dashboard shows the greatest state by enum number (Ray's protobuf_to_task_state_dict)
            state = 0
            for _, code in transitions:
                if code > state:
                    state = code
            reason = ""
            derived_end = 0  # what the API reads: a recorded end is among the transitions already
            if state != FINISHED and state != FAILED and listed:
                state, derived_end, reason = self._derived_end(task_id, f, transitions, state, end_ns)
            profile = f.p
            if profile:
                # a worker records a profile event when it ends: end time is the order Ray shows them in
                events = sorted({(e, s, words[n], words[x]) for e, s, n, x in _ACC_PROFILE.iter_unpack(profile)})
                profile = b"".join([pack_profile(ref(n), s, e, ref(x)) for e, s, n, x in events])
            has_log = f.stdout_file != "" or f.stderr_file != ""
            # positional, in Task's field order (which is also the order strings get their index in)
            append(Task(
                task_id, attempt, *map(ref, _task_strings_head(f)), f.worker_pid,
                *map(ref, _task_strings_tail(f)), f.debugger_paused,
                pack_records(b"".join([pack_transition(code, ts) for ts, code in transitions]), profile,
                             pack_offsets(*[offset - 1 for offset in _log_offsets(f)]) if has_log else b""),
                ref(f.component), state, derived_end, ref(reason or None), listed,
            ))
        job_positions: dict[int, array] = {}
        driver = index.get("DRIVER_TASK", -1)
        for position, task in enumerate(tasks):
            if task.type != driver and task.listed:
                positions = job_positions.get(task.job)
                if positions is None:
                    positions = job_positions[task.job] = array("I")
                positions.append(position)
        covered = sorted(self._covered)
        return Snapshot(
            namespace=self.ref.namespace, cluster=self.ref.cluster, session=self.ref.session,
            dead=self.dead, end_ms=self.end_ms, strings=strings, tasks=tasks,
            unlisted=sum(1 for t in tasks if not t.listed),
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
    def from_snapshot(cls, snapshot: Snapshot, limits: InflateLimits = DEFAULT_LIMITS) -> "SnapshotBuilder":
        """Continue from a stored snapshot (a late flush): add the new objects, then build() again."""
        b = cls(snapshot.ref, snapshot.dead, snapshot.end_ms, limits)
        strings = snapshot.strings
        names = ("job", "name", "func", "type", "language", "actor", "parent", "node", "worker", "placement_group",
                 "resources", "runtime_env", "call_site", "label_selector", "repr_name", "error_type",
                 "error_message")
        for t in snapshot.tasks:
            try:
                key = task_key(bytes.fromhex(t.task_id), t.attempt)
            except OverflowError:  # an attempt out of range, which builders before task_key kept: not continued
                continue
            f = b._tasks[key] = TaskFields()
            for name in names:
                _put(f, name, strings[getattr(t, name)])
            for name, value in (task_log_info(strings, t) or {}).items():
                _put(f, name, value + 1 if isinstance(value, int) else value)
            _put(f, "worker_pid", t.worker_pid)
            _put(f, "debugger_paused", t.debugger_paused)
            _put(f, "component", strings[t.component])
            f.t = b"".join(_ACC_TRANSITION.pack(ts, code) for code, ts in task_transitions(t))
            f.p = b"".join(_ACC_PROFILE.pack(e, s, b._word(strings[n]), b._word(strings[x]))
                              for n, s, e, x in task_profile(t))
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


# event type -> (the payload's getter, the builder method that folds it in)
_HANDLERS = {kind: (attrgetter(PAYLOAD_FIELD[kind]), fold) for kind, fold in {
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
}.items()}


_TASK_EVENTS = ("TASK_DEFINITION_EVENT", "ACTOR_TASK_DEFINITION_EVENT", "TASK_LIFECYCLE_EVENT", "TASK_PROFILE_EVENT")
# a parallel load's worker: task events folded, the others kept whole (SnapshotBuilder.deferred)
_DEFERRING_HANDLERS = {kind: handler if kind in _TASK_EVENTS else (lambda event: event, SnapshotBuilder._defer)
                       for kind, handler in _HANDLERS.items()}
