"""What the snapshot builder reads of a stored event batch, and how it decodes one (pure code).

The collector validated every stored event in full (rayhistory.events.accept_events), so the builder
decodes only what it folds in: msgspec skips the other fields without building them. Function
descriptors and resource maps stay raw JSON: a few distinct ones repeat across thousands of tasks, and
each is decoded and normalised once (SnapshotBuilder._cached), not once per task. A batch that does not
decode in one call is decoded event by event with the same decoder (decode_careful).
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta, Struct

from rayhistory.events import (
    ActorDefinition, ActorLifecycle, DriverJobDefinition, DriverJobLifecycle, FunctionDescriptor, NodeDefinition,
    NodeLifecycle, ProfileEventEntry, ProfileEvents, TaskLifecycle, TaskLogInfo, TaskProfile, WorkerDefinition,
    WorkerLifecycle,
)

_NULL, _EMPTY_OBJECT = msgspec.Raw(b"null"), msgspec.Raw(b"{}")


class StoredTaskDefinition(Struct, rename="camel", gc=False):
    task_id: str = ""
    task_attempt: int = 0
    task_type: str = "NORMAL_TASK"
    language: str = "PYTHON"
    task_func: msgspec.Raw = _NULL  # FunctionDescriptor | None
    task_name: str = ""
    required_resources: msgspec.Raw = _EMPTY_OBJECT  # dict[str, float]
    job_id: str = ""
    parent_task_id: str = ""
    placement_group_id: str = ""
    serialized_runtime_env: str = ""
    call_site: str = ""
    label_selector: msgspec.Raw = _EMPTY_OBJECT  # dict[str, str]


class StoredActorTaskDefinition(Struct, rename="camel", gc=False):
    task_id: str = ""
    task_attempt: int = 0
    language: str = "PYTHON"
    actor_func: msgspec.Raw = _NULL
    actor_task_name: str = ""
    required_resources: msgspec.Raw = _EMPTY_OBJECT
    job_id: str = ""
    actor_id: str = ""
    parent_task_id: str = ""
    placement_group_id: str = ""
    serialized_runtime_env: str = ""
    call_site: str = ""
    label_selector: msgspec.Raw = _EMPTY_OBJECT


# The task payloads' 64-bit integers (log offsets, profile times), which protobuf JSON sends as strings, typed
# int: STORED_EVENT decodes laxly, so msgspec turns "9820" into 9820 in C (int() on each was a fifth of a
# fold's CPU). An event whose such field is not an integer is rejected alone (decode_careful).
LogOffset = Annotated[int, Meta(ge=0, le=(1 << 63) - 1)]  # a byte offset; the snapshot packs it in 64 bits


class StoredTaskLogInfo(TaskLogInfo):
    stdout_start: LogOffset | None = None
    stdout_end: LogOffset | None = None
    stderr_start: LogOffset | None = None
    stderr_end: LogOffset | None = None


class StoredTaskLifecycle(TaskLifecycle):
    task_log_info: StoredTaskLogInfo | None = None


class StoredProfileEventEntry(ProfileEventEntry):
    start_time: int = 0
    end_time: int = 0


class StoredProfileEvents(ProfileEvents):
    events: list[StoredProfileEventEntry] = []


class StoredTaskProfile(TaskProfile):
    profile_events: StoredProfileEvents | None = None


class StoredEvent(Struct, rename="camel", gc=False):
    """RayEvent as the builder reads it: the envelope's ids and the payloads (same attribute names)."""

    event_id: str
    event_type: str
    task_definition_event: StoredTaskDefinition | None = None
    task_lifecycle_event: StoredTaskLifecycle | None = None
    actor_task_definition_event: StoredActorTaskDefinition | None = None
    task_profile_events: StoredTaskProfile | None = None
    driver_job_definition_event: DriverJobDefinition | None = None
    driver_job_lifecycle_event: DriverJobLifecycle | None = None
    node_definition_event: NodeDefinition | None = None
    node_lifecycle_event: NodeLifecycle | None = None
    actor_definition_event: ActorDefinition | None = None
    actor_lifecycle_event: ActorLifecycle | None = None
    worker_definition_event: WorkerDefinition | None = None
    worker_lifecycle_event: WorkerLifecycle | None = None


# lax: strings of digits into the int fields above. Elsewhere it changes nothing for what the collector
# wrote: it validated every stored event strictly against the same types, which admit no string where they
# have a number or bool. Data it did not write is read by the same rule in both paths.
STORED_EVENT = msgspec.json.Decoder(StoredEvent, strict=False)
_raw_list = msgspec.json.Decoder(list[msgspec.Raw])
_function_descriptor = msgspec.json.Decoder(FunctionDescriptor | None)
_resources = msgspec.json.Decoder(dict[str, float])
_labels = msgspec.json.Decoder(dict[str, str])


def func_name_of(raw: bytes) -> str:
    return _func_name(_function_descriptor.decode(raw))


def resources_of(raw: bytes) -> str:
    return _json_obj(_resources.decode(raw)) or "{}"


def labels_of(raw: bytes) -> str:
    return _json_obj(_labels.decode(raw))


def decode_clean(raw: bytes) -> list[StoredEvent] | None:
    """Fast path for a stored batch (JSON lines, as the collector writes them): one msgspec call; the
    per-event checks of rayhistory.events are not repeated. None when any event does not decode, for the
    careful path."""
    try:
        return STORED_EVENT.decode_lines(raw)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None


def decode_careful(raw: bytes) -> tuple[list[StoredEvent], int] | str:
    """Careful path, for a batch that does not decode in one call: each event decoded on its own by the
    fast path's own decoder, so whether an event is used never depends on its neighbours (a lax
    `"taskAttempt": "1"` is 1 in either path), and a bad one is rejected alone; a line nested too deep
    for the decoder too. (events, rejected count), or why the whole object is unreadable."""
    texts = _event_texts(raw)
    if texts is None:
        return "not JSON lines, nor one JSON array of events"
    events, rejected = [], 0
    for text in texts:
        try:
            events.append(STORED_EVENT.decode(text))
        except (msgspec.DecodeError, RecursionError):  # a ValidationError is a DecodeError
            rejected += 1
    return events, rejected


def _event_texts(raw: bytes) -> list[bytes] | None:
    """The JSON text of each event: a line each (as the collector stores them), or the elements of one
    JSON array (a POST body, as Ray's agent sends them). None for an array that does not parse."""
    stripped = raw.strip()
    if stripped[:1] != b"[":
        return [line for line in stripped.splitlines() if line.strip()]
    try:
        return [bytes(text) for text in _raw_list.decode(stripped)]
    except (msgspec.DecodeError, RecursionError):
        return None


def _func_name(descriptor) -> str:
    """Ray's CallString(): Class.function, or function, each the last dotted part of its name (a lambda in
    a list comprehension is `<listcomp>.<lambda>` in the event and `<lambda>` on the live dashboard)."""
    if descriptor is None:
        return ""
    py = descriptor.python_function_descriptor
    if py is not None:
        function = py.function_name.rsplit(".", 1)[-1]
        return f"{py.class_name.rsplit('.', 1)[-1]}.{function}" if py.class_name else function
    other = descriptor.java_function_descriptor or descriptor.cpp_function_descriptor or {}
    return ".".join(v for k, v in sorted(other.items()) if k.endswith("Name") and v)


def _json_obj(value: dict) -> str:
    return msgspec.json.encode(value, order="sorted").decode() if value else ""

