"""/api/v0/tasks/timeline: the Chrome trace of profile events (ray/_private/profiling.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from .api_common import Filter, Query, _nil, _shared_json
from .api_tasks import select_tasks
from .gc_pause import gc_paused
from .snapshot_model import Snapshot, Task, task_profile


class _TraceEvent(msgspec.Struct, gc=False):
    """A complete ("X") Chrome trace event: encoded as the JSON object Ray's dict is, keys in this order."""

    cat: str
    name: str
    pid: int
    tid: int
    ts: float
    dur: float
    cname: str
    args: Any  # dict, or msgspec.Raw of the task's ids when the event has no extra data of its own
    ph: str = "X"


_encode = msgspec.json.Encoder().encode  # as the runtime encodes a body (routes.json_response)


def task_timeline(s: Snapshot, query: Query) -> tuple[int, bytes]:
    """Chrome trace events from TASK_PROFILE events (ray/_private/profiling.py chrome_tracing_dump).
    One pass over the packed profile events, as api_tasks._profiling_data reads them, without building
    its per-task dicts: a 100k-task session has 400k trace events. Encoded here, as the same bytes the
    runtime would make of Ray's list of dicts."""
    job_id = query.get("job_id")
    filters = [Filter("job_id", True, job_id)] if job_id else []
    tasks, _ = select_tasks(s, filters, True)
    # the events are structs of atoms and shared parsed JSON, no cycles: without the pause, the GC's passes
    # over the hundreds of thousands of objects being made take as long as making them
    with gc_paused():
        return 200, _encode(_trace_events(s, tasks))


class _Kind(msgspec.Struct, array_like=True, gc=False):
    """What the trace shows of one (event name, extra data) pair of a session's profile events."""

    name: str
    shown: str  # the trace event's name: the extra data's "name", or the event name
    colour: str
    extra: dict  # the extra data, parsed
    extra_json: bytes  # ... and encoded, b"" when it is empty


def _kinds(strings: list[str]):
    """The known kinds, by (event name index, extra data index), and the function that adds one; each is
    worked out once: a session has few."""
    kinds: dict[tuple[int, int], _Kind] = {}

    def kind(key: tuple[int, int]) -> _Kind:
        found = kinds.get(key)
        if found is None:
            name_index, extra_index = key
            try:
                extra = _shared_json(strings[extra_index] or "{}")
            except ValueError:
                extra = {}
            if not isinstance(extra, dict):  # extra_data is the worker's free text: "[1]" is JSON too
                extra = {}
            name = strings[name_index]
            cname = extra.get("cname", name)
            found = kinds[key] = _Kind(name, extra.get("name", name),
                                       _COLORS.get(cname, "generic_work") if isinstance(cname, str) else "generic_work",
                                       extra,
                                       _encode(extra) if extra else b"")
        return found

    return kinds, kind


def _cached_json(strings: list[str], nil: bool):
    """string index -> the JSON of that string (null for "" when `nil`), encoded once per index."""
    cache: dict[int, bytes] = {}

    def encoded(index: int) -> bytes:
        found = cache.get(index)
        if found is None:
            found = cache[index] = _encode(_nil(strings[index]) if nil else strings[index])
        return found

    return encoded


_IDS = ("task_id", "job_id", "attempt_number", "func_or_class_name", "actor_id")


def _trace_events(s: Snapshot, tasks: Sequence[Task]) -> list:
    strings = s.strings
    node_index: dict[str, int] = {}
    worker_index: dict[tuple[int, str], int] = {}
    components: dict[int, tuple[str, str] | None] = {}  # component string index -> (component, node ip)
    events: list = []
    append = events.append
    kinds, kind = _kinds(strings)
    id_json = _cached_json(strings, nil=True)
    raw = msgspec.Raw
    for t in tasks:
        profile = task_profile(t)
        if not profile:
            continue
        if t.component not in components:
            component_type, component_id, ip = (strings[t.component].split("\n") + ["", "", ""])[:3]
            components[t.component] = ((f"{component_type}:{component_id}", ip)
                                       if component_type in ("worker", "driver") else None)
        shown_as = components[t.component]
        if shown_as is None:
            continue
        component, ip = shown_as
        # the task's ids, the args of every event (after its extra data), as _encode would write the dict
        ids = b"".join((b'{"task_id":"', t.task_id.encode(), b'","job_id":', id_json(t.job),
                        b',"attempt_number":', str(t.attempt).encode(), b',"func_or_class_name":', id_json(t.func),
                        b',"actor_id":', id_json(t.actor), b"}"))
        ids_raw = raw(ids)
        pid = node_index.setdefault(ip, len(node_index))
        tid = worker_index.setdefault((pid, component), len(worker_index))
        for name_index, start, end, extra_index in profile:
            k = kinds.get((name_index, extra_index)) or kind((name_index, extra_index))
            # the same float operations as _profiling_data's seconds, then milliseconds: the same numbers
            start_ms, end_ms = start / 1e6 * 1e3, end / 1e6 * 1e3
            if not k.extra_json:
                args = ids_raw
            elif k.extra.keys().isdisjoint(_IDS):  # {**extra, **ids}: extra's keys, then the ids
                args = raw(k.extra_json[:-1] + b"," + ids[1:])
            else:
                args = {**k.extra, **msgspec.json.decode(ids)}
            append(_TraceEvent(k.name, k.shown, pid, tid, start_ms, end_ms - start_ms, k.colour, args))
    for ip, i in node_index.items():
        events.append({"name": "process_name", "args": {"name": f"Node {ip}"}, "pid": i, "tid": None, "ph": "M"})
    for (pid, component), i in worker_index.items():
        events.append({"name": "thread_name", "args": {"name": component}, "pid": pid, "tid": i, "ph": "M"})
    return events


_COLORS = {
    "worker_idle": "cq_build_abandoned", "task": "rail_response", "task:deserialize_arguments": "rail_load",
    "task:execute": "rail_animation", "task:store_outputs": "rail_idle", "wait_for_function": "detailed_memory_dump",
    "ray.get": "good", "ray.put": "terrible", "ray.wait": "vsync_highlight_color", "submit_task": "background_memory_dump",
    "fetch_and_run_function": "detailed_memory_dump", "register_remote_function": "detailed_memory_dump",
}
