"""/api/v0/tasks/timeline: the Chrome trace of profile events (ray/_private/profiling.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from .api_common import Filter, Query, _nil, _shared_json
from .api_tasks import check_whole_answer, select_tasks
from .gc_pause import gc_paused
from .snapshot_model import PROFILE_ENTRY, Snapshot, Task, packed_profile


class _TraceEvent(msgspec.Struct, gc=False):
    """A complete ("X") Chrome trace event: encoded as the JSON object Ray's dict is, keys in this order.
    `cat` holds the encoded values of "cat", "name", "pid" and "tid" with their keys between them (one
    object per kind and worker, made once): four fields fewer to make and encode per event."""

    cat: msgspec.Raw  # b'"<cat>","name":"<name>","pid":<pid>,"tid":<tid>'
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
    check_whole_answer(s, len(tasks), "A timeline")
    # the events are structs of atoms and shared parsed JSON, no cycles: without the pause, the GC's passes
    # over the hundreds of thousands of objects being made take as long as making them
    with gc_paused():
        return 200, _encode(_trace_events(s, tasks))


class _Kind(msgspec.Struct, array_like=True, gc=False):
    """What the trace shows of one (event name, extra data) pair of a session's profile events."""

    name_json: bytes  # b'"<cat>","name":"<name>"': the event name, then the extra data's "name" or the event name
    colour: str
    extra: dict  # the extra data, parsed
    extra_json: bytes  # ... and encoded, b"" when it is empty


def _kinds(strings: list[str]):
    """The function that gives the kind of an (event name index, extra data index) pair; each is worked out
    once: a session has few."""
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
            found = kinds[key] = _Kind(b"%s,\"name\":%s" % (_encode(name), _encode(extra.get("name", name))),
                                       _COLORS.get(cname, "generic_work") if isinstance(cname, str) else "generic_work",
                                       extra, _encode(extra) if extra else b"")
        return found

    return kind


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
    kind = _kinds(strings)
    # tid -> (event name index, extra data index) -> (its _TraceEvent.cat on that worker, its colour, and its
    # kind if it has extra data)
    worker_heads: dict[int, dict[tuple[int, int], tuple[msgspec.Raw, str, _Kind | None]]] = {}
    # (component, job, attempt, func, actor) -> what the events of the tasks that share them share
    per_key: dict[tuple[int, int, int, int, int], tuple[bytes, dict, int, int] | None] = {}
    id_json = _cached_json(strings, nil=True)
    raw = msgspec.Raw

    def shown_on(t: Task) -> tuple[bytes, dict, int, int] | None:
        """(the task's ids after its task id, the worker's event heads, pid, tid), or None for a task whose
        events are not a worker's or a driver's (the trace leaves them out)."""
        if t.component not in components:
            component_type, component_id, ip = (strings[t.component].split("\n") + ["", "", ""])[:3]
            components[t.component] = ((f"{component_type}:{component_id}", ip)
                                       if component_type in ("worker", "driver") else None)
        shown_as = components[t.component]
        if shown_as is None:
            return None
        component, ip = shown_as
        pid = node_index.setdefault(ip, len(node_index))
        tid = worker_index.setdefault((pid, component), len(worker_index))
        after_id = b"".join((b'","job_id":', id_json(t.job), b',"attempt_number":', str(t.attempt).encode(),
                             b',"func_or_class_name":', id_json(t.func), b',"actor_id":', id_json(t.actor), b"}"))
        return after_id, worker_heads.setdefault(tid, {}), pid, tid

    iter_profile = PROFILE_ENTRY.iter_unpack
    trace_event = _TraceEvent
    for t in tasks:
        profile = packed_profile(t.packed)
        if not profile:
            continue
        key = (t.component, t.job, t.attempt, t.func, t.actor)
        shared = per_key.get(key, False)
        if shared is False:
            shared = per_key[key] = shown_on(t)
        if shared is None:  # not a worker's or a driver's
            continue
        after_id, heads, pid, tid = shared
        # the task's ids, the args of every event (after its extra data), as _encode would write the dict
        ids = b'{"task_id":"%s%s' % (t.task_id.encode(), after_id)
        ids_raw = raw(ids)
        for name_index, start, end, extra_index in iter_profile(profile):
            known = heads.get((name_index, extra_index))
            if known is None:
                k = kind((name_index, extra_index))
                known = heads[name_index, extra_index] = (raw(b"%s,\"pid\":%d,\"tid\":%d" % (k.name_json, pid, tid)),
                                                          k.colour, k if k.extra_json else None)
            head, colour, with_extra = known
            # the same float operations as _profiling_data's seconds, then milliseconds: the same numbers
            start_ms = start / 1e6 * 1e3
            if with_extra is None:
                args = ids_raw
            elif with_extra.extra.keys().isdisjoint(_IDS):  # {**extra, **ids}: extra's keys, then the ids
                args = raw(with_extra.extra_json[:-1] + b"," + ids[1:])
            else:
                args = {**with_extra.extra, **msgspec.json.decode(ids)}
            append(trace_event(head, start_ms, end / 1e6 * 1e3 - start_ms, colour, args))
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
