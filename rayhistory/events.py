"""The Ray 2.60 RayEvent export format (protobuf JSON as the aggregator agent POSTs it).

Every event has an envelope (eventId, sourceType, eventType, timestamp, severity, message, sessionName,
nodeId) and one payload named after its type. Bytes fields are standard base64 (`hex_id` turns them into
the hex the dashboard shows), 64-bit integers are strings, timestamps are RFC3339 with up to nine
fractional digits, and unset fields appear as ""/0/false/{}.

Decoding is msgspec on the hot path (the collector's ingest; the server reads stored events with its own
decoder, server/stored_events.py, over these same types). Each event is
checked on its own: a malformed one becomes an `EventError` with its position and reason, and never
costs its neighbours. Event types this module does not model are accepted and kept as they came.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import re
from functools import lru_cache
from typing import Any

import msgspec
from msgspec import Struct

from . import layout

# Bounds on one event, checked on its raw bytes before it is decoded: a crafted event costs nothing but its
# own rejection. Ray's events nest about six levels deep; msgspec recurses once per level up to Python's
# recursion limit (about 1000, less whatever the caller's stack already holds), so without a bound of its
# own one deep event fails its whole batch. The largest real events are task errors with a traceback.
MAX_EVENT_DEPTH = 64
MAX_EVENT_BYTES = 4 << 20

# ---- ids and timestamps --------------------------------------------------------------------------


@lru_cache(maxsize=1 << 16)
def hex_id(b64: str) -> str:
    """Base64 id as Ray writes it in JSON -> the hex the dashboard shows ("" stays "")."""
    if not b64:
        return ""
    return base64.b64decode(b64, validate=True).hex()


_RFC3339_SECONDS = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}", re.ASCII)


@lru_cache(maxsize=1 << 14)
def _epoch_seconds(prefix: str) -> int:
    # prefix is "YYYY-MM-DDTHH:MM:SS"; many events share a second, so this is cached.
    if not _RFC3339_SECONDS.fullmatch(prefix):
        raise ValueError(f"not an RFC3339 timestamp: {prefix!r}")
    y, mo, d = int(prefix[0:4]), int(prefix[5:7]), int(prefix[8:10])
    h, mi, s = int(prefix[11:13]), int(prefix[14:16]), int(prefix[17:19])
    if not (1 <= mo <= 12 and 1 <= d <= 31 and h < 24 and mi < 60 and s < 61):
        raise ValueError(f"not an RFC3339 timestamp: {prefix!r}")
    return calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0))


def ts_ns(value: str) -> int:
    """RFC3339 timestamp (protobuf JSON: 0-9 fractional digits, 'Z' or an offset) -> ns since the epoch."""
    if not value:
        return 0
    try:
        if not value.isascii():  # then str.isdigit below means 0-9 only
            raise ValueError
        seconds = _epoch_seconds(value[:19])
        if len(value) == 30 and value[19] == "." and value[29] in "Zz" and value[20:29].isdigit():
            return seconds * 1_000_000_000 + int(value[20:29])  # Ray's own form, the common case
        rest = value[19:]
        frac_ns = 0
        if rest[0] == ".":
            end = 1
            while end < len(rest) and rest[end].isdigit():
                end += 1
            if end == 1 or end > 10:
                raise ValueError
            frac_ns = int(rest[1:end].ljust(9, "0"))
            rest = rest[end:]
        if rest not in ("Z", "z"):
            if len(rest) != 6 or rest[0] not in "+-" or rest[3] != ":" or not (rest[1:3] + rest[4:6]).isdigit():
                raise ValueError
            offset = int(rest[1:3]) * 3600 + int(rest[4:6]) * 60
            seconds -= offset if rest[0] == "+" else -offset
    except (ValueError, IndexError):
        raise ValueError(f"not an RFC3339 timestamp: {value[:40]!r}") from None
    return seconds * 1_000_000_000 + frac_ns


def ts_ms(value: str) -> int:
    return ts_ns(value) // 1_000_000


# ---- payloads ------------------------------------------------------------------------------------
# Field names are the proto's snake_case; `rename="camel"` maps them to the JSON names Ray sends.
# Rarely used nested messages (death causes, error infos, function descriptors) stay plain dicts.


class _Msg(Struct, rename="camel", omit_defaults=True, gc=False):
    # gc=False: millions of small structs per session must not trigger the cyclic GC.
    pass


class PythonFunctionDescriptor(_Msg):
    module_name: str = ""
    class_name: str = ""
    function_name: str = ""
    function_hash: str = ""


class FunctionDescriptor(_Msg):
    """Only one of the three is set; Java/C++ descriptors are kept as plain dicts."""

    python_function_descriptor: PythonFunctionDescriptor | None = None
    java_function_descriptor: dict[str, str] | None = None
    cpp_function_descriptor: dict[str, str] | None = None


class StateTransition(_Msg):
    state: str = ""
    timestamp: str = ""


class _TaskSpec(_Msg):
    """The fields TASK_DEFINITION and ACTOR_TASK_DEFINITION events share."""

    task_id: str = ""
    task_attempt: int = 0
    language: str = "PYTHON"
    required_resources: dict[str, float] = {}
    job_id: str = ""
    parent_task_id: str = ""
    placement_group_id: str = ""
    ref_ids: dict[str, str] = {}
    serialized_runtime_env: str = ""
    call_site: str = ""
    label_selector: dict[str, str] = {}
    is_detached_actor: bool = False


class TaskDefinition(_TaskSpec):
    task_type: str = "NORMAL_TASK"
    task_func: FunctionDescriptor | None = None
    task_name: str = ""


class ActorTaskDefinition(_TaskSpec):
    actor_func: FunctionDescriptor | None = None
    actor_task_name: str = ""
    actor_id: str = ""


class TaskLogInfo(_Msg):
    """The offsets are proto3 `optional`: absent (None) is not 0. An absent end means "to the end of the
    file" (Ray's log_manager), an absent start "from its beginning"."""

    stdout_file: str = ""
    stderr_file: str = ""
    stdout_start: int | str | None = None
    stdout_end: int | str | None = None
    stderr_start: int | str | None = None
    stderr_end: int | str | None = None


class TaskLifecycle(_Msg):
    task_id: str = ""
    task_attempt: int = 0
    state_transitions: list[StateTransition] = []
    ray_error_info: dict[str, Any] | None = None
    node_id: str = ""
    worker_id: str = ""
    worker_pid: int = 0
    job_id: str = ""
    is_debugger_paused: bool = False
    actor_repr_name: str = ""
    task_log_info: TaskLogInfo | None = None


class ProfileEventEntry(_Msg):
    start_time: int | str = 0
    end_time: int | str = 0
    extra_data: str = ""
    event_name: str = ""


class ProfileEvents(_Msg):
    component_type: str = ""
    component_id: str = ""
    node_ip_address: str = ""
    events: list[ProfileEventEntry] = []


class TaskProfile(_Msg):
    task_id: str = ""
    attempt_number: int = 0
    job_id: str = ""
    profile_events: ProfileEvents | None = None


class ActorDefinition(_Msg):
    actor_id: str = ""
    job_id: str = ""
    is_detached: bool = False
    name: str = ""
    ray_namespace: str = ""
    serialized_runtime_env: str = ""
    class_name: str = ""
    required_resources: dict[str, float] = {}
    placement_group_id: str = ""
    label_selector: dict[str, str] = {}
    call_site: str = ""
    parent_id: str = ""
    ref_ids: dict[str, str] = {}


class ActorStateTransition(_Msg):
    state: str = "DEPENDENCIES_UNREADY"
    timestamp: str = ""
    node_id: str = ""
    worker_id: str = ""
    repr_name: str = ""
    death_cause: dict[str, Any] | None = None
    pid: int = 0
    port: int = 0
    restart_reason: str = ""


class ActorLifecycle(_Msg):
    actor_id: str = ""
    state_transitions: list[ActorStateTransition] = []


class DriverJobConfig(_Msg):
    serialized_runtime_env: str = ""
    metadata: dict[str, str] = {}


class DriverJobDefinition(_Msg):
    job_id: str = ""
    driver_pid: int | str = 0
    driver_node_id: str = ""
    entrypoint: str = ""
    config: DriverJobConfig | None = None


class DriverJobLifecycle(_Msg):
    job_id: str = ""
    state_transitions: list[StateTransition] = []


class NodeDefinition(_Msg):
    node_id: str = ""
    node_ip_address: str = ""
    labels: dict[str, str] = {}
    start_timestamp: str = ""
    hostname: str = ""
    node_name: str = ""
    instance_id: str = ""
    instance_type_name: str = ""


class NodeStateTransition(_Msg):
    state: str = "ALIVE"
    timestamp: str = ""
    resources: dict[str, float] = {}
    death_info: dict[str, Any] | None = None
    alive_sub_state: str = ""


class NodeLifecycle(_Msg):
    node_id: str = ""
    state_transitions: list[NodeStateTransition] = []


class WorkerDefinition(_Msg):
    worker_id: str = ""
    node_id: str = ""
    worker_type: str = "WORKER"
    pid: int = 0


class WorkerStateTransition(_Msg):
    state: str = "ALIVE"
    timestamp: str = ""
    worker_launch_time_ms: int | str = 0
    worker_launched_time_ms: int | str = 0
    start_time_ms: int | str = 0
    end_time_ms: int | str = 0
    death_info: dict[str, Any] | None = None


class WorkerLifecycle(_Msg):
    worker_id: str = ""
    job_id: str = ""
    state_transitions: list[WorkerStateTransition] = []


class RayEvent(_Msg):
    """One event; exactly one payload attribute is set, the one `PAYLOAD_FIELD[event_type]` names."""

    event_id: str
    event_type: str
    session_name: str
    timestamp: str = ""
    source_type: str = ""
    severity: str = ""
    message: str = ""
    node_id: str = ""
    task_definition_event: TaskDefinition | None = None
    task_lifecycle_event: TaskLifecycle | None = None
    actor_task_definition_event: ActorTaskDefinition | None = None
    task_profile_events: TaskProfile | None = None
    driver_job_definition_event: DriverJobDefinition | None = None
    driver_job_lifecycle_event: DriverJobLifecycle | None = None
    node_definition_event: NodeDefinition | None = None
    node_lifecycle_event: NodeLifecycle | None = None
    actor_definition_event: ActorDefinition | None = None
    actor_lifecycle_event: ActorLifecycle | None = None
    worker_definition_event: WorkerDefinition | None = None
    worker_lifecycle_event: WorkerLifecycle | None = None

    @property
    def payload(self) -> Any:
        return getattr(self, PAYLOAD_FIELD[self.event_type])


PAYLOAD_FIELD: dict[str, str] = {
    "TASK_DEFINITION_EVENT": "task_definition_event",
    "TASK_LIFECYCLE_EVENT": "task_lifecycle_event",
    "ACTOR_TASK_DEFINITION_EVENT": "actor_task_definition_event",
    "TASK_PROFILE_EVENT": "task_profile_events",
    "DRIVER_JOB_DEFINITION_EVENT": "driver_job_definition_event",
    "DRIVER_JOB_LIFECYCLE_EVENT": "driver_job_lifecycle_event",
    "NODE_DEFINITION_EVENT": "node_definition_event",
    "NODE_LIFECYCLE_EVENT": "node_lifecycle_event",
    "ACTOR_DEFINITION_EVENT": "actor_definition_event",
    "ACTOR_LIFECYCLE_EVENT": "actor_lifecycle_event",
    "WORKER_DEFINITION_EVENT": "worker_definition_event",
    "WORKER_LIFECYCLE_EVENT": "worker_lifecycle_event",
}


class EventError(Struct):
    """Why the event at `index` of a batch was rejected."""

    index: int
    reason: str
    event_id: str = ""


class AcceptedEvent(Struct):
    """A validated event as the collector stores it: its routing fields and its compact JSON."""

    event_id: str
    session_name: str
    node_id_hex: str
    raw: bytes


_raw_list = msgspec.json.Decoder(list[msgspec.Raw])
_event_list = msgspec.json.Decoder(list[RayEvent])
_event_decoder = msgspec.json.Decoder(RayEvent)
_session_ok = lru_cache(maxsize=1024)(layout.is_session_name)


# ---- bounds, checked without recursion -------------------------------------------------------------

_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_JSON_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{},]', re.DOTALL)
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_BRACES_TO_SQUARE = bytes.maketrans(b"{}", b"[]")


def nested_deeper_than(raw: bytes, limit: int = MAX_EVENT_DEPTH) -> bool:
    """Whether JSON text nests arrays and objects more than `limit` levels deep. Exact, and no recursion:
    the brackets outside strings are kept, and each pass of `replace` removes exactly one level (the
    innermost pairs), so `limit` passes empty the text unless it nests deeper."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False  # too few brackets to nest that deep: the common case, two C-level scans
    brackets = _JSON_STRING.sub(b"", raw).translate(_BRACES_TO_SQUARE, _NOT_BRACKET)
    for _ in range(limit):
        if not brackets:
            return False
        brackets = brackets.replace(b"[]", b"")
    return bool(brackets)


def bound_error(raw: bytes) -> str:
    """Why one event's raw JSON is outside the bounds, or ''."""
    if len(raw) > MAX_EVENT_BYTES:
        return f"event is {len(raw)} bytes, more than the {MAX_EVENT_BYTES} one event may have"
    if nested_deeper_than(raw):
        return f"event nests deeper than {MAX_EVENT_DEPTH} levels"
    return ""


def _split_top_level(array: bytes) -> list[bytes]:
    """The elements of a JSON array, found without recursion (for arrays too deep for msgspec to split).
    Malformed text yields pieces that then fail to decode on their own."""
    items: list[bytes] = []
    depth, start = 0, -1
    for m in _JSON_TOKEN.finditer(array):
        token = m.group()
        if token in (b"[", b"{"):
            depth += 1
            if depth == 1:
                start = m.end()
        elif token in (b"]", b"}"):
            if depth == 1 and start >= 0:
                items.append(array[start:m.start()])
            depth -= 1
        elif token == b"," and depth == 1:
            items.append(array[start:m.start()])
            start = m.end()
    return [item.strip() for item in items if item.strip()]


def _split_raw(array: bytes) -> list[bytes]:
    """The raw JSON of each element of an array. Raises msgspec.DecodeError if it is not one."""
    try:
        return [bytes(raw) for raw in _raw_list.decode(array)]
    except RecursionError:
        pieces = _split_top_level(array)
        if array[:1] != b"[":
            raise msgspec.DecodeError("not a JSON array") from None
        return pieces


def check_event(event: RayEvent) -> str:
    """Why a decoded event is unusable, or ''. Its session and node ids become storage keys."""
    if not event.event_id:
        return "eventId is empty"
    if not event.event_type:
        return "eventType is empty"
    if not _session_ok(event.session_name):
        return f"sessionName {event.session_name[:80]!r} is not a Ray session name"
    try:
        node = hex_id(event.node_id)
    except (binascii.Error, ValueError):
        return "nodeId is not base64"
    if len(node) != 56:
        return f"nodeId decodes to {len(node) // 2} bytes, expected 28"
    try:
        ts_ns(event.timestamp)
    except ValueError as exc:
        return str(exc)
    field = PAYLOAD_FIELD.get(event.event_type)
    if field is not None and getattr(event, field) is None:
        return f"{event.event_type} has no {_camel(field)} payload"
    return ""


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


def _event_id_of(raw: bytes) -> str:
    if bound_error(raw):
        return ""
    try:
        value = msgspec.json.decode(raw).get("eventId", "")
    except (msgspec.DecodeError, AttributeError, RecursionError):
        return ""
    return value[:128] if isinstance(value, str) else ""


def _decode_each(array: bytes) -> tuple[list[tuple[int, RayEvent, bytes]], list[EventError]]:
    """Slow path, taken only when a batch has a bad event: decode one by one to isolate it."""
    try:
        raws = _split_raw(array)
    except msgspec.DecodeError as exc:
        return [], [EventError(index=-1, reason=f"not valid JSON: {exc}")]
    good: list[tuple[int, RayEvent, bytes]] = []
    errors: list[EventError] = []
    for i, raw in enumerate(raws):
        reason = bound_error(raw)
        if reason:
            errors.append(EventError(index=i, reason=reason, event_id=_event_id_of(raw)))
            continue
        try:
            event = _event_decoder.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            errors.append(EventError(index=i, reason=str(exc), event_id=_event_id_of(raw)))
            continue
        reason = check_event(event)
        if reason:
            errors.append(EventError(index=i, reason=reason, event_id=event.event_id[:128]))
        else:
            good.append((i, event, raw))
    return good, errors


def _decode(array: bytes) -> tuple[list[tuple[int, RayEvent, bytes]], list[EventError]]:
    """Decode a whole JSON array with one msgspec call, each event held to the bounds and the checks; fall
    back to per-event decoding if the call fails."""
    try:
        events = _event_list.decode(array)
    except (msgspec.DecodeError, RecursionError):  # ValidationError is a DecodeError
        return _decode_each(array)
    raws = _split_raw(array)
    out: list[tuple[int, RayEvent, bytes]] = []
    errors: list[EventError] = []
    for i, event in enumerate(events):
        raw = raws[i]
        # bound_error's own first test, inlined: the hot path of ingest, true for almost every event
        if len(raw) > MAX_EVENT_BYTES or raw.count(b"[") + raw.count(b"{") > MAX_EVENT_DEPTH:
            reason = bound_error(raw)
            if reason:
                errors.append(EventError(index=i, reason=reason, event_id=event.event_id[:128]))
                continue
        reason = check_event(event)
        if reason:
            errors.append(EventError(index=i, reason=reason, event_id=event.event_id[:128]))
            continue
        out.append((i, event, raw))
    return out, errors


BODY_NOT_AN_ARRAY = "body is not a JSON array"


def accept_events(data: bytes) -> tuple[list[AcceptedEvent], list[EventError]]:
    """The collector's check: every event validated on its own; good ones kept as one-line JSON.

    The body must be one JSON array (what Ray's agent POSTs): anything else, an empty body included, is
    one error with index -1 whose reason starts with BODY_NOT_AN_ARRAY."""
    stripped = data.strip()
    if stripped[:1] != b"[":
        what = "it is empty" if not stripped else f"it starts with {stripped[:1]!r}"
        return [], [EventError(index=-1, reason=f"{BODY_NOT_AN_ARRAY}: {what}")]
    decoded, errors = _decode(stripped)
    for error in errors:
        if error.index == -1:
            error.reason = f"{BODY_NOT_AN_ARRAY}: {error.reason}"
    # A stored event is one line. JSON strings cannot hold a raw line break, so a body without one has only
    # one-line events (Ray's agent sends them so); only a body with line breaks is reformatted, event by event.
    one_line = (lambda raw: raw) if b"\n" not in stripped and b"\r" not in stripped else _one_line
    accepted = [
        AcceptedEvent(event.event_id, event.session_name, hex_id(event.node_id), one_line(raw))
        for _, event, raw in decoded
    ]
    return accepted, errors


def _one_line(raw: bytes) -> bytes:
    return msgspec.json.format(raw, indent=0)
