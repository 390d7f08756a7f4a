"""The Ray 2.60 dashboard API, answered from a Snapshot: pure functions, one per path.

Each handler is `(snapshot, query) -> (status, body)`; body is a dict/list (sent as JSON), str (text/plain)
or bytes (an endpoint answer stored verbatim, JSON). `query` is the request's query mapping; repeated
keys (filter_keys, ...) are read with `getall` when the mapping has it (aiohttp's MultiDictProxy).
Shapes, field names, sorting and counters follow Ray 2.60's own code (ray/dashboard/state_aggregator.py,
ray/util/state/common.py, ray/_private/profiling.py; Apache-2.0), so the unmodified UI works. Unlike
Ray, a limit above 10,000 is honoured: `total` always reports the full count.

`ROUTES` lists every path (relative to the session root) with its handler, for the runtime to register.
Log files are served by the runtime; the pure parts it needs are `resolve_log_file` (/api/v0/logs/file and
/stream: task_id, actor_id, pid or filename -> node, file, byte range) and `job_logs` (/api/jobs/{id}/logs:
which job-driver log file); `list_logs` (/api/v0/logs) is a route here.

What the live dashboard reads from running processes (process metrics, core-worker stats, the object
store) is absent or empty, shaped so the UI renders; docs/dead-sessions.md says how a dead session ends
what was still alive.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import json
import re
import string
from array import array
from bisect import bisect_left, bisect_right
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from itertools import compress
from operator import attrgetter, not_
from typing import Any

from .snapshot import (
    FAILED, FINISHED, TASK_STATES, Actor, DriverJob, Node, Snapshot, Task, Transition, Worker, task_log_info,
    task_profile, task_transitions,
)

Query = Mapping[str, str]
Body = dict | list | str | bytes
Handler = Callable[[Snapshot, Query], tuple[int, Body]]

DEFAULT_LIMIT = 100
DRIVER_TASK_ID_PREFIX = "ffffffffffffffffffffffff"
_HEX = frozenset(string.hexdigits)


class ApiError(Exception):
    """A request the API refuses (bad filter, unknown id); `body()` is Ray's error envelope."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message

    def body(self) -> dict:
        return {"result": False, "msg": self.message, "data": {}}


def _ok(data: Any, msg: str = "") -> dict:
    return {"result": True, "msg": msg, "data": data}


def _getall(query: Query, key: str) -> list[str]:
    if hasattr(query, "getall"):
        return list(query.getall(key, []))
    value = query.get(key)
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _bool(value: str | None, default: bool) -> bool:
    if value is None:
        return default
    v = str(value).lower()
    if v in ("1", "true", "t", "yes", "y"):
        return True
    if v in ("0", "false", "f", "no", "n", ""):
        return False
    raise ApiError(400, f"Invalid boolean value {value!r}")


def _int_param(query: Query, key: str, default: int) -> int:
    value = query.get(key)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ApiError(400, f"{key} must be an integer, got {value!r}") from None
    if number < 0:
        raise ApiError(400, f"{key} must not be negative, got {number}")
    return number


def _ms(ns: int) -> float:
    """Ray's `int(ns) // 1e6`: a float of whole milliseconds."""
    return ns // 1e6


def _nil(value: str) -> str | None:
    return value or None


def _json(text: str, default: Any) -> Any:
    return json.loads(text) if text else default


@lru_cache(maxsize=4096)
def _shared_json(text: str) -> Any:
    """Parsed JSON of a string-table value that many rows repeat (resources, selectors, extra data).
    Rows share the result: they are encoded and dropped, never changed (copy before changing one)."""
    return json.loads(text)


def _endpoint_json(snapshot: Snapshot, name: str) -> Any:
    data = snapshot.endpoints.get(name)
    if data is None:
        return None
    try:
        return json.loads(data)
    except (ValueError, RecursionError):  # the builder keeps only answers that decode; stored snapshots predate that
        return None


# ---- list API machinery (filters, columns, counters) -----------------------------------------------

class Filter:
    __slots__ = ("column", "equal", "value")

    def __init__(self, column: str, equal: bool, value: str):
        self.column, self.equal, self.value = column, equal, value

    def match(self, datum_value: Any) -> bool:
        """Ray's do_filter: strings compare case-insensitively; a missing value never equals."""
        v = self.value
        if isinstance(datum_value, bool):
            same = datum_value == _bool(v, False)
        elif isinstance(datum_value, int):
            try:
                same = datum_value == int(v)
            except ValueError:
                same = False
        elif isinstance(datum_value, str):
            same = datum_value.lower() == v.lower()
        else:
            same = datum_value == v
        return same if self.equal else not same


def parse_filters(query: Query, filterable: frozenset[str] | set[str]) -> list[Filter]:
    keys = _getall(query, "filter_keys")
    predicates = _getall(query, "filter_predicates")
    values = _getall(query, "filter_values")
    if not (len(keys) == len(predicates) == len(values)):
        raise ApiError(400, "filter_keys, filter_predicates and filter_values must have the same number of entries")
    filters = []
    for key, predicate, value in zip(keys, predicates, values):
        column = key.lower()
        if column not in filterable:
            raise ApiError(400, f"The given filter column {column} is not supported. "
                                f"Supported filter columns: {sorted(filterable)}")
        if predicate not in ("=", "!="):
            raise ApiError(400, f"Unsupported filter predicate {predicate} is given. Available predicates: =, !=.")
        filters.append(Filter(column, predicate == "=", value))
    return filters


def _list_body(rows: list, total: int, num_after_truncation: int, num_filtered: int) -> dict:
    return _ok({"result": {"total": total, "num_after_truncation": num_after_truncation, "num_filtered": num_filtered,
                           "result": rows, "partial_failure_warning": "", "warnings": None}})


def _list_options(query: Query) -> tuple[int, bool]:
    return _int_param(query, "limit", DEFAULT_LIMIT), _bool(query.get("detail"), False)


def _list_rows(rows: list[dict], query: Query, filterable: set[str], columns: tuple[str, ...],
               detail_columns: tuple[str, ...], sort_key: str) -> tuple[int, dict]:
    """The list API for small resources (actors, nodes, workers, jobs, placement groups, events)."""
    limit, detail = _list_options(query)
    filters = parse_filters(query, filterable)
    kept = [r for r in rows if all(f.column in r and f.match(r[f.column]) for f in filters)]
    kept.sort(key=lambda r: r[sort_key] or "")
    shown = columns + detail_columns if detail else columns
    out = [{c: r.get(c) for c in shown} for r in kept[:limit]]
    return 200, _list_body(out, len(rows), len(rows), len(kept))


# ---- tasks -----------------------------------------------------------------------------------------

TASK_COLUMNS = ("task_id", "attempt_number", "name", "state", "job_id", "actor_id", "type", "func_or_class_name",
                "parent_task_id", "node_id", "worker_id", "worker_pid", "error_type")
TASK_DETAIL_COLUMNS = ("language", "required_resources", "runtime_env_info", "placement_group_id", "events",
                       "profiling_data", "creation_time_ms", "start_time_ms", "end_time_ms", "task_log_info",
                       "error_message", "is_debugger_paused", "call_site", "label_selector", "fallback_strategy")
TASK_FILTERABLE = frozenset({"task_id", "attempt_number", "name", "state", "job_id", "actor_id", "type",
                             "func_or_class_name", "parent_task_id", "node_id", "worker_id", "worker_pid",
                             "error_type", "language", "placement_group_id", "is_debugger_paused"})
# Columns the GCS filters before counting `total` (state_manager.get_all_task_info); the others after.
_TASK_SOURCE_FILTERS = frozenset({"actor_id", "job_id", "task_id", "name", "state"})
_ID_COLUMNS = frozenset({"actor_id", "job_id", "task_id"})
_RUNNING = TASK_STATES.index("RUNNING")
_PENDING_ARGS_AVAIL = TASK_STATES.index("PENDING_ARGS_AVAIL")


def _task_name(s: Snapshot, t: Task) -> str:
    name = s.strings[t.name]
    # Ray names an actor task after the actor's repr when the task has no name of its own.
    if t.repr_name and s.strings[t.type] == "ACTOR_TASK" and name == s.strings[t.func]:
        return f"{s.strings[t.repr_name]}.{name.split('.')[-1]}"
    return name


def _task_error(s: Snapshot, t: Task) -> tuple[str | None, str | None]:
    if t.state != FAILED:
        return None, None
    if t.error_type or t.error_message:
        return s.strings[t.error_type], re.sub(r"\x1b[^m]*m", "", s.strings[t.error_message])
    if s.dead and not any(code == FAILED for code, _ in task_transitions(t)):
        return "WORKER_DIED", "The session ended before this task finished (no terminal state was recorded)."
    return None, None


def _task_value(s: Snapshot, t: Task, column: str) -> Any:
    """The value a filter compares, as Ray's task row holds it."""
    strings = s.strings
    if column == "task_id":
        return t.task_id
    if column == "attempt_number":
        return t.attempt
    if column == "state":
        return TASK_STATES[t.state]
    if column == "name":
        return _task_name(s, t)
    if column == "worker_pid":
        return t.worker_pid or None
    if column == "is_debugger_paused":
        return None if not t.debugger_paused else t.debugger_paused == 2
    if column == "error_type":
        return _task_error(s, t)[0]
    field = _TASK_FIELD[column]
    return strings[getattr(t, field)] or None


_TASK_FIELD = {"job_id": "job", "actor_id": "actor", "type": "type", "func_or_class_name": "func",
               "parent_task_id": "parent", "node_id": "node", "worker_id": "worker", "language": "language",
               "placement_group_id": "placement_group"}


def _narrow(s: Snapshot, tasks: Sequence[Task], f: Filter) -> list[Task]:
    """The tasks that pass one filter. Column values that live in the string table, states and ids are
    compared without building rows, by C-level pipelines (compress/map/attrgetter): no Python frame per task."""
    field = _TASK_FIELD.get(f.column)
    if field is not None:
        value = f.value.lower()
        wanted = frozenset(i for i, v in enumerate(s.strings) if v and v.lower() == value)
        values = map(attrgetter(field), tasks)
    elif f.column == "state":
        state = f.value.upper()
        wanted = frozenset([TASK_STATES.index(state)] if state in TASK_STATES else [])
        values = map(attrgetter("state"), tasks)
    elif f.column == "task_id":
        if f.equal and tasks is s.tasks:  # sorted by task id: bisect
            lo = bisect_left(tasks, f.value.lower(), key=attrgetter("task_id"))
            hi = bisect_right(tasks, f.value.lower(), key=attrgetter("task_id"))
            return tasks[lo:hi]
        wanted = frozenset([f.value.lower()])
        values = map(attrgetter("task_id"), tasks)
    else:
        return [t for t in tasks if f.match(_task_value(s, t, f.column))]
    matches = map(wanted.__contains__, values)
    return list(compress(tasks, matches if f.equal else map(not_, matches)))


def _check_id_filters(filters: list[Filter]) -> None:
    for f in filters:
        if f.column in _ID_COLUMNS and not (f.value and len(f.value) % 2 == 0 and set(f.value) <= _HEX):
            raise ApiError(400, f"Invalid {f.column} filter value {f.value!r}: expected a hex id")


@lru_cache(maxsize=1024)
def _runtime_env_info(serialized: str) -> dict:
    info: dict[str, Any] = {"serialized_runtime_env": serialized or "{}"}
    try:
        env = json.loads(serialized) if serialized else {}
    except ValueError:
        env = {}
    uris = {}
    if env.get("working_dir"):
        uris["working_dir_uri"] = env["working_dir"]
    if env.get("py_modules"):
        uris["py_modules_uris"] = list(env["py_modules"])
    if uris:
        uris.setdefault("py_modules_uris", [])
        info["uris"] = uris
    info["runtime_env_config"] = {"setup_timeout_seconds": 600, "eager_install": True, "log_files": []}
    return info


def _profiling_data(s: Snapshot, t: Task) -> dict:
    if not t.profile:
        return {}
    component_type, component_id, node_ip = (s.strings[t.component].split("\n") + ["", "", ""])[:3]
    events = []
    for name, start, end, extra in task_profile(t):
        try:
            extra_data = dict(_shared_json(s.strings[extra] or "{}"))
        except ValueError:
            extra_data = {}
        events.append({"start_time": int(start) / 1e6, "end_time": int(end) / 1e6, "extra_data": extra_data,
                       "event_name": s.strings[name]})
    return {"component_type": component_type, "component_id": component_id, "node_ip_address": node_ip,
            "events": events}


def task_row(s: Snapshot, t: Task, detail: bool) -> dict:
    """One /api/v0/tasks row, as Ray's protobuf_to_task_state_dict + filter_fields build it."""
    strings = s.strings
    error_type, error_message = _task_error(s, t)
    row = {
        "task_id": t.task_id, "attempt_number": t.attempt, "name": _task_name(s, t), "state": TASK_STATES[t.state],
        "job_id": _nil(strings[t.job]), "actor_id": _nil(strings[t.actor]), "type": _nil(strings[t.type]),
        "func_or_class_name": _nil(strings[t.func]), "parent_task_id": _nil(strings[t.parent]),
        "node_id": _nil(strings[t.node]), "worker_id": _nil(strings[t.worker]), "worker_pid": t.worker_pid or None,
        "error_type": error_type,
    }
    if not detail:
        return row
    transitions = task_transitions(t)
    first_ts: dict[int, int] = {}
    for code, ts in transitions:
        first_ts.setdefault(code, ts)
    if s.dead and t.state == FAILED and FAILED not in first_ts and t.end_ns:
        first_ts[FAILED] = t.end_ns
    # Ray lists a task's events in TaskStatus order, one per state.
    events = [{"state": TASK_STATES[code], "created_ms": _ms(ts)} for code, ts in sorted(first_ts.items())]
    row.update({
        "language": _nil(strings[t.language]),
        "required_resources": _shared_json(strings[t.resources]) if t.resources else None,
        "runtime_env_info": _runtime_env_info(strings[t.runtime_env]),
        "placement_group_id": _nil(strings[t.placement_group]),
        "events": events,
        "profiling_data": _profiling_data(s, t),
        "creation_time_ms": _ms(first_ts[_PENDING_ARGS_AVAIL]) if _PENDING_ARGS_AVAIL in first_ts else None,
        "start_time_ms": _ms(first_ts[_RUNNING]) if _RUNNING in first_ts else None,
        "end_time_ms": _ms(first_ts[t.state]) if t.state in (FINISHED, FAILED) and t.state in first_ts else None,
        "task_log_info": task_log_info(strings, t),
        "error_message": error_message,
        "is_debugger_paused": None if not t.debugger_paused else t.debugger_paused == 2,
        "call_site": _nil(strings[t.call_site]),
        "label_selector": _shared_json(strings[t.label_selector]) if t.label_selector else {},
        "fallback_strategy": {"options": []},
    })
    return row


class _Subset(Sequence):
    """Tasks at some positions of the snapshot's task list, without building a list of them."""

    def __init__(self, tasks: list[Task], positions: array):
        self.tasks, self.positions = tasks, positions

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self.tasks[p] for p in self.positions[i]]
        return self.tasks[self.positions[i]]

    def __iter__(self):
        return map(self.tasks.__getitem__, self.positions)


def _job_subset(s: Snapshot, f: Filter) -> Sequence[Task]:
    """The non-driver tasks of the jobs a job_id '=' filter names, from the snapshot's per-job index."""
    value = f.value.lower()
    jobs = [i for i, v in enumerate(s.strings) if v and v.lower() == value and i in s.job_tasks]
    parts = [array("I", s.job_tasks[j]) for j in jobs]
    if len(parts) == 1:
        return _Subset(s.tasks, parts[0])
    return _Subset(s.tasks, array("I", sorted(p for part in parts for p in part)))


def select_tasks(s: Snapshot, filters: list[Filter], exclude_driver: bool) -> tuple[Sequence[Task], int]:
    """(tasks matching every filter sorted by task id, count matching the GCS-side filters only)."""
    _check_id_filters(filters)
    tasks: Sequence[Task] = s.tasks
    source = sorted((f for f in filters if f.column in _TASK_SOURCE_FILTERS), key=lambda f: f.column != "task_id")
    by_job = next((f for f in source if f.column == "job_id" and f.equal), None)
    if by_job is not None and exclude_driver and not any(f.column == "task_id" for f in source):
        # the dashboard's most common query (a job's tasks): start from the job's index, O(job) not O(session)
        tasks = _job_subset(s, by_job)
        source.remove(by_job)
        exclude_driver = False
    # most selective first: the GCS-side filters decide `total`, then the others
    for f in source:
        tasks = _narrow(s, tasks, f)
    if exclude_driver:
        tasks = _narrow(s, tasks, Filter("type", False, "DRIVER_TASK"))
    total = len(tasks)
    for f in filters:
        if f.column not in _TASK_SOURCE_FILTERS:
            tasks = _narrow(s, tasks, f)
    return tasks, total


def list_tasks(s: Snapshot, query: Query) -> tuple[int, dict]:
    limit, detail = _list_options(query)
    filters = parse_filters(query, TASK_FILTERABLE)
    kept, total = select_tasks(s, filters, _bool(query.get("exclude_driver"), True))
    rows = [task_row(s, t, detail) for t in kept[:limit]]
    return 200, _list_body(rows, total, total, len(kept))


def summarize_tasks(s: Snapshot, query: Query) -> tuple[int, dict]:
    summary_by = query.get("summary_by") or "func_name"
    if summary_by not in ("func_name", "task_name", "lineage"):
        raise ApiError(400, 'summary_by must be one of "func_name", "task_name", or "lineage".')
    filters = parse_filters(query, TASK_FILTERABLE)
    kept, total = select_tasks(s, filters, True)
    if summary_by == "lineage":
        summary = _summary_by_lineage(s, kept)
    else:
        summary = _summary_by_func_name(s, kept)
    return 200, _ok({"result": {"total": total, "num_after_truncation": total, "num_filtered": len(kept),
                                "result": {"node_id_to_summary": {"cluster": summary}},
                                "partial_failure_warning": "", "warnings": None}})


def _count_type(counts: dict[str, int], task_type: str) -> None:
    key = {"NORMAL_TASK": "total_tasks", "ACTOR_CREATION_TASK": "total_actor_scheduled",
           "ACTOR_TASK": "total_actor_tasks"}.get(task_type)
    if key:
        counts[key] += 1


def _summary_by_func_name(s: Snapshot, tasks: list[Task]) -> dict:
    summary: dict[str, dict] = {}
    counts = {"total_tasks": 0, "total_actor_tasks": 0, "total_actor_scheduled": 0}
    for t in tasks:
        key = _task_name(s, t) or s.strings[t.func]
        entry = summary.get(key)
        if entry is None:
            entry = summary[key] = {"func_or_class_name": key, "type": s.strings[t.type], "state_counts": {}}
        state = TASK_STATES[t.state]
        entry["state_counts"][state] = entry["state_counts"].get(state, 0) + 1
        _count_type(counts, s.strings[t.type])
    return {"summary": summary, **counts, "summary_by": "func_name"}


def _summary_by_lineage(s: Snapshot, tasks: list[Task]) -> dict:
    """Ray's TaskSummaries.to_summary_by_lineage (ray/util/state/common.py), on snapshot tasks."""
    by_id = {t.task_id: t for t in tasks}
    creation_for_actor = {s.strings[t.actor]: t.task_id for t in tasks if s.strings[t.type] == "ACTOR_CREATION_TASK"}
    actors = {a.actor_id: a for a in s.actors}
    groups: dict[str, dict] = {}
    top: list[dict] = []
    counts = {"total_tasks": 0, "total_actor_tasks": 0, "total_actor_scheduled": 0}

    def node(name, key, type_, timestamp, link=None) -> dict:
        n = {"name": name, "key": key, "type": type_, "timestamp": timestamp, "state_counts": {}, "children": []}
        if link is not None:
            n["link"] = link
        return n

    def attach(group: dict, parent_task_id: str) -> None:
        if not parent_task_id or parent_task_id.startswith(DRIVER_TASK_ID_PREFIX):
            top.append(group)
        else:
            parent = task_group(parent_task_id)
            if parent is not None:
                parent["children"].append(group)

    def creation_ms(t: Task) -> int | None:
        for code, ts in task_transitions(t):
            if code == _PENDING_ARGS_AVAIL:
                return ts // 1_000_000
        return None

    def task_group(task_id: str) -> dict | None:
        if task_id in groups:
            return groups[task_id]
        t = by_id.get(task_id)
        if t is None:
            return None
        group = groups[task_id] = node(_task_name(s, t) or s.strings[t.func], task_id, s.strings[t.type],
                                       creation_ms(t), {"type": "task", "id": task_id})
        if s.strings[t.type] in ("ACTOR_TASK", "ACTOR_CREATION_TASK"):
            parent = actor_group(s.strings[t.actor], t)
            if parent is not None:
                parent["children"].append(group)
        else:
            attach(group, s.strings[t.parent])
        return group

    def actor_group(actor_id: str, t: Task) -> dict | None:
        key = f"actor:{actor_id}"
        if key not in groups:
            creation = by_id.get(creation_for_actor.get(actor_id, ""))
            if creation is None:
                return None
            actor = actors.get(actor_id)
            if actor is None:
                name = s.strings[creation.func].split(".")[0]
            else:
                name = _actor_repr_name(actor) or actor.class_name
            # Ray stamps the actor group with the creation time of the task that created the group.
            groups[key] = node(name, key, "ACTOR", creation_ms(t), {"type": "actor", "id": actor_id})
            attach(groups[key], s.strings[creation.parent])
        return groups[key]

    for t in tasks:
        group = task_group(t.task_id)
        if group is None:
            continue
        state = TASK_STATES[t.state]
        group["state_counts"][state] = group["state_counts"].get(state, 0) + 1
        _count_type(counts, s.strings[t.type])

    big = float("inf")

    def merge_siblings(siblings: list[dict]) -> tuple[list[dict], float | None]:
        if not siblings:
            return siblings, None
        named: dict[str, dict] = {}
        min_ts = None
        for child in siblings:
            child["children"], child_min = merge_siblings(child["children"])
            if child_min and child_min < (child["timestamp"] or big):
                child["timestamp"] = child_min
            name = child["name"]
            if name not in named:
                named[name] = node(name, name, "GROUP", None)
            named[name]["children"].append(child)
            if child["timestamp"] and child["timestamp"] < (named[name]["timestamp"] or big):
                named[name]["timestamp"] = child["timestamp"]
                if child["timestamp"] < (min_ts or big):
                    min_ts = child["timestamp"]
        return [g if len(g["children"]) > 1 else g["children"][0] for g in named.values()], min_ts

    def running(g: dict) -> int:
        c = g["state_counts"]
        return c.get("RUNNING", 0) + c.get("RUNNING_IN_RAY_GET", 0) + c.get("RUNNING_IN_RAY_WAIT", 0)

    def pending(g: dict) -> int:
        c = g["state_counts"]
        return (c.get("PENDING_ARGS_AVAIL", 0) + c.get("PENDING_NODE_ASSIGNMENT", 0)
                + c.get("PENDING_OBJ_STORE_MEM_AVAIL", 0) + c.get("PENDING_ARGS_FETCH", 0))

    def sort_groups(gs: list[dict]) -> None:
        gs.sort(key=lambda g: 0 if g["type"] == "ACTOR_CREATION_TASK" else 1)
        gs.sort(key=lambda g: g["timestamp"] or big)
        gs.sort(key=lambda g: g["state_counts"].get("FAILED", 0), reverse=True)
        gs.sort(key=pending, reverse=True)
        gs.sort(key=running, reverse=True)

    def total(g: dict) -> dict:
        for child in g["children"]:
            for state, n in total(child)["state_counts"].items():
                g["state_counts"][state] = g["state_counts"].get(state, 0) + n
        if g["children"]:
            sort_groups(g["children"])
        return g

    merged, _ = merge_siblings(top)
    merged = [total(g) for g in merged]
    sort_groups(merged)
    _order_lineage_keys(merged)
    return {"summary": merged, **counts, "summary_by": "lineage"}


def _order_lineage_keys(groups: list[dict]) -> None:
    """Key order of Ray's NestedTaskSummary dataclass (link last, only when set)."""
    for i, g in enumerate(groups):
        _order_lineage_keys(g["children"])
        ordered = {k: g[k] for k in ("name", "key", "type", "timestamp", "state_counts", "children")}
        ordered["link"] = g.get("link")
        groups[i] = ordered


def task_timeline(s: Snapshot, query: Query) -> tuple[int, list]:
    """Chrome trace events from TASK_PROFILE events (ray/_private/profiling.py chrome_tracing_dump)."""
    job_id = query.get("job_id")
    filters = [Filter("job_id", True, job_id)] if job_id else []
    tasks, _ = select_tasks(s, filters, True)
    node_index: dict[str, int] = {}
    worker_index: dict[tuple[int, str], int] = {}
    events: list[dict] = []
    for t in tasks:
        profiling = _profiling_data(s, t)
        if not profiling or profiling["component_type"] not in ("worker", "driver"):
            continue
        ip = profiling["node_ip_address"]
        component = f"{profiling['component_type']}:{profiling['component_id']}"
        for ev in profiling["events"]:
            extra = ev["extra_data"] if isinstance(ev["extra_data"], dict) else {}
            extra.update({"task_id": t.task_id, "job_id": _nil(s.strings[t.job]), "attempt_number": t.attempt,
                          "func_or_class_name": _nil(s.strings[t.func]), "actor_id": _nil(s.strings[t.actor])})
            pid = node_index.setdefault(ip, len(node_index))
            tid = worker_index.setdefault((pid, component), len(worker_index))
            name = ev["event_name"]
            events.append({
                "cat": name, "name": extra.get("name", name), "pid": pid, "tid": tid,
                "ts": ev["start_time"] * 1e3, "dur": ev["end_time"] * 1e3 - ev["start_time"] * 1e3,
                "cname": _COLORS.get(extra.get("cname", name), "generic_work"), "args": extra, "ph": "X",
            })
    for ip, i in node_index.items():
        events.append({"name": "process_name", "args": {"name": f"Node {ip}"}, "pid": i, "tid": None, "ph": "M"})
    for (pid, component), i in worker_index.items():
        events.append({"name": "thread_name", "args": {"name": component}, "pid": pid, "tid": i, "ph": "M"})
    return 200, events


_COLORS = {
    "worker_idle": "cq_build_abandoned", "task": "rail_response", "task:deserialize_arguments": "rail_load",
    "task:execute": "rail_animation", "task:store_outputs": "rail_idle", "wait_for_function": "detailed_memory_dump",
    "ray.get": "good", "ray.put": "terrible", "ray.wait": "vsync_highlight_color", "submit_task": "background_memory_dump",
    "fetch_and_run_function": "detailed_memory_dump", "register_remote_function": "detailed_memory_dump",
}


# ---- actors ----------------------------------------------------------------------------------------

ACTOR_COLUMNS = ("actor_id", "class_name", "state", "job_id", "name", "node_id", "pid", "ray_namespace")
ACTOR_DETAIL_COLUMNS = ("serialized_runtime_env", "required_resources", "death_cause", "is_detached",
                        "placement_group_id", "repr_name", "num_restarts", "num_restarts_due_to_lineage_reconstruction",
                        "num_restarts_due_to_node_preemption", "call_site", "label_selector", "fallback_strategy")
ACTOR_FILTERABLE = {"actor_id", "class_name", "state", "job_id", "name", "node_id", "pid", "ray_namespace",
                    "placement_group_id", "repr_name"}
SESSION_ENDED = "The session ended (ray stop or cluster deletion) while this was alive; no later state was recorded."


def _latest(transitions: list[Transition], field: str) -> Any:
    for t in reversed(transitions):
        if t.info.get(field):
            return t.info[field]
    return None


def _first_ts(transitions: list[Transition], state: str) -> int:
    return next((t.ts_ns for t in transitions if t.state == state), 0)


def _last_ts(transitions: list[Transition], state: str) -> int:
    return next((t.ts_ns for t in reversed(transitions) if t.state == state), 0)


def actor_state(s: Snapshot, a: Actor) -> tuple[str, int]:
    """(state, end ns). In a dead session an actor not DEAD is shown DEAD at the session's end."""
    state = a.transitions[-1].state if a.transitions else "DEPENDENCIES_UNREADY"
    if state == "DEAD":
        # DEAD can repeat (the GCS re-reports it); the actor ended at the first one after its last start
        last_start = max((i for i, t in enumerate(a.transitions) if t.state != "DEAD"), default=-1)
        return state, a.transitions[last_start + 1].ts_ns
    if s.dead:
        return "DEAD", s.end_ns
    return state, 0


def _actor_repr_name(a: Actor) -> str:
    return _latest(a.transitions, "repr_name") or ""


def _actor_death_cause(s: Snapshot, a: Actor) -> dict | None:
    dead = [t for t in a.transitions if t.state == "DEAD" and t.info.get("death_cause")]
    if dead:
        return dead[0].info["death_cause"]
    state, _ = actor_state(s, a)
    if state == "DEAD":
        return {"actor_died_error_context": {"error_message": SESSION_ENDED, "actor_id": a.actor_id,
                                             "reason": "NODE_DIED", "never_started": False}}
    return None


def actor_row(s: Snapshot, a: Actor) -> dict:
    state, _ = actor_state(s, a)
    restarts = sum(1 for t in a.transitions if t.state == "RESTARTING")
    return {
        "actor_id": a.actor_id, "class_name": a.class_name, "state": state, "job_id": a.job_id,
        "name": a.name, "node_id": _latest(a.transitions, "node_id"), "pid": _latest(a.transitions, "pid"),
        "ray_namespace": a.ray_namespace, "serialized_runtime_env": a.serialized_runtime_env or "{}",
        "required_resources": a.required_resources, "death_cause": _actor_death_cause(s, a),
        "is_detached": a.is_detached, "placement_group_id": _nil(a.placement_group_id),
        "repr_name": _actor_repr_name(a), "num_restarts": str(restarts),
        "num_restarts_due_to_lineage_reconstruction": "0", "num_restarts_due_to_node_preemption": "0",
        "call_site": _nil(a.call_site), "label_selector": a.label_selector, "fallback_strategy": None,
    }


def list_actors(s: Snapshot, query: Query) -> tuple[int, dict]:
    rows = [actor_row(s, a) for a in s.actors]
    return _list_rows(rows, query, ACTOR_FILTERABLE, ACTOR_COLUMNS, ACTOR_DETAIL_COLUMNS, "actor_id")


def summarize_actors(s: Snapshot, query: Query) -> tuple[int, dict]:
    filters = parse_filters(query, ACTOR_FILTERABLE)
    rows = [r for r in (actor_row(s, a) for a in s.actors) if all(f.match(r[f.column]) for f in filters)]
    summary: dict[str, dict] = {}
    for r in rows:
        entry = summary.setdefault(r["class_name"], {"class_name": r["class_name"], "state_counts": {}})
        entry["state_counts"][r["state"]] = entry["state_counts"].get(r["state"], 0) + 1
    result = {"node_id_to_summary": {"cluster": {"summary": summary, "total_actors": len(rows), "summary_by": "class"}}}
    return 200, _ok({"result": {"total": len(s.actors), "num_after_truncation": len(s.actors),
                                "num_filtered": len(rows), "result": result,
                                "partial_failure_warning": "", "warnings": None}})


def _node_ip(s: Snapshot, node_id: str | None) -> str:
    return next((n.node_ip for n in s.nodes if n.node_id == node_id), "")


def logical_actor(s: Snapshot, a: Actor) -> dict:
    """An actor as /logical/actors shows it (camelCase, GCS actor table fields that outlive the process)."""
    state, end_ns = actor_state(s, a)
    node_id = _latest(a.transitions, "node_id") or ""
    alive_ns = _first_ts(a.transitions, "ALIVE")
    cause = _actor_death_cause(s, a) or {}
    context = cause.get("actor_died_error_context") or {}
    exit_detail = context.get("error_message") or ("-" if state != "DEAD" else "")
    if not exit_detail and "creation_task_failure_context" in cause:
        exit_detail = cause["creation_task_failure_context"].get("formatted_exception_string", "")
    return {
        "actorId": a.actor_id, "jobId": a.job_id,
        "address": {"nodeId": node_id, "ipAddress": _node_ip(s, node_id), "port": _latest(a.transitions, "port") or 0,
                    "workerId": _latest(a.transitions, "worker_id") or ""},
        "name": a.name, "className": a.class_name, "state": state,
        "numRestarts": str(sum(1 for t in a.transitions if t.state == "RESTARTING")),
        "timestamp": _ms(a.transitions[-1].ts_ns) if a.transitions else None,
        "pid": _latest(a.transitions, "pid") or 0,
        "startTime": alive_ns // 1_000_000, "endTime": end_ns // 1_000_000,
        "reprName": _actor_repr_name(a), "labelSelector": a.label_selector, "actorClass": a.class_name,
        "exitDetail": exit_detail, "requiredResources": a.required_resources, "gpus": [], "processStats": None,
    }


def logical_actors(s: Snapshot, query: Query) -> tuple[int, dict]:
    return 200, _ok({"actors": {a.actor_id: logical_actor(s, a) for a in s.actors}}, "All actors fetched.")


def logical_actor_detail(s: Snapshot, query: Query, actor_id: str) -> tuple[int, dict]:
    actor = next((a for a in s.actors if a.actor_id == actor_id), None)
    if actor is None:
        return 200, {"result": False, "msg": "Actor not found.", "data": {}}
    return 200, _ok({"detail": logical_actor(s, actor)}, "Actor details fetched.")


# ---- nodes -----------------------------------------------------------------------------------------

NODE_COLUMNS = ("node_id", "node_ip", "is_head_node", "state", "state_message", "node_name", "resources_total", "labels")
NODE_DETAIL_COLUMNS = ("start_time_ms", "end_time_ms")
NODE_FILTERABLE = {"node_id", "node_ip", "is_head_node", "state", "node_name"}


def node_state(s: Snapshot, n: Node) -> tuple[str, int, dict]:
    """(state, end ns, death info). A node still ALIVE in a dead session is shown DEAD at the session's end."""
    last = n.transitions[-1] if n.transitions else None
    if last is not None and last.state == "DEAD":
        return "DEAD", last.ts_ns, last.info.get("death_info", {})
    if s.dead:
        return "DEAD", s.end_ns, {"reason": "EXPECTED_TERMINATION", "reason_message": SESSION_ENDED}
    return (last.state if last else "ALIVE"), 0, {}


def _node_resources(n: Node) -> dict:
    return _latest(n.transitions, "resources") or {}


def node_row(s: Snapshot, n: Node) -> dict:
    state, end_ns, death = node_state(s, n)
    reason = death.get("reason")
    message = death.get("reason_message")
    state_message = None
    if reason or message:
        state_message = f"{_DEATH_REASONS.get(reason, reason or '')}: {message}" if message else _DEATH_REASONS.get(reason, reason)
    resources = _node_resources(n)
    return {
        "node_id": n.node_id, "node_ip": n.node_ip, "is_head_node": "node:__internal_head__" in resources,
        "state": state, "state_message": state_message, "node_name": n.node_name, "resources_total": resources,
        "labels": n.labels, "start_time_ms": n.start_ns // 1_000_000, "end_time_ms": end_ns // 1_000_000,
    }


_DEATH_REASONS = {"EXPECTED_TERMINATION": "Expected termination", "UNEXPECTED_TERMINATION": "Unexpected termination",
                  "AUTOSCALER_DRAIN_PREEMPTED": "Terminated due to preemption",
                  "AUTOSCALER_DRAIN_IDLE": "Terminated due to idle (no Ray activity)"}


def list_nodes(s: Snapshot, query: Query) -> tuple[int, dict]:
    rows = [node_row(s, n) for n in s.nodes]
    return _list_rows(rows, query, NODE_FILTERABLE, NODE_COLUMNS, NODE_DETAIL_COLUMNS, "node_id")


def _camel_resource(name: str) -> str:
    # the dashboard's node view camel-cases resource names (ray.dashboard.utils.to_camel_case)
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def node_summary(s: Snapshot, n: Node) -> dict:
    """A node as /nodes?view=summary shows it: the GCS fields; the live process metrics are gone."""
    row = node_row(s, n)
    raylet = {
        "nodeId": n.node_id, "nodeManagerAddress": n.node_ip, "nodeManagerHostname": n.hostname,
        "resourcesTotal": {_camel_resource(k): v for k, v in row["resources_total"].items()},
        "nodeName": n.node_name, "startTimeMs": str(row["start_time_ms"]), "isHeadNode": row["is_head_node"],
        "labels": n.labels, "instanceId": n.instance_id, "instanceTypeName": n.instance_type_name,
        "state": row["state"], "endTimeMs": str(row["end_time_ms"]), "stateMessage": row["state_message"],
    }
    alive = _alive_workers(s, n.node_id)
    raylet["coreWorkersStats"] = [_core_worker_stats(w) for w in alive]
    raylet["numWorkers"] = len(alive)
    return {"hostname": n.hostname, "ip": n.node_ip, "raylet": raylet}


def _alive_workers(s: Snapshot, node_id: str) -> list[dict]:
    """Workers and drivers still alive at the end of the record (none in a dead session)."""
    job_of = {w.worker_id: w.job_id for w in s.workers}
    rows = [w for w in list_worker_rows(s) if w["is_alive"] and w["node_id"] == node_id]
    for w in rows:
        w["job_id"] = job_of.get(w["worker_id"]) or (w["worker_id"][:8] if w["worker_type"] == "DRIVER" else "ffff")
    return rows


def _core_worker_stats(w: dict) -> dict:
    return {"ipAddress": w["ip"], "workerId": w["worker_id"], "pid": w["pid"], "workerType": w["worker_type"],
            "jobId": w["job_id"], "language": "PYTHON"}


def nodes(s: Snapshot, query: Query) -> tuple[int, dict]:
    view = query.get("view", "summary")
    if view == "summary":
        return 200, _ok({"summary": [node_summary(s, n) for n in s.nodes], "nodeLogicalResources": {}},
                        "Node summary fetched.")
    if view == "hostnamelist":
        return 200, _ok({"hostNameList": sorted({n.hostname for n in s.nodes})}, "Node hostname list fetched.")
    # Ray raises on any other view; its error middleware answers 500 with this message
    raise ApiError(500, f"Unknown view {view}")


def node_detail(s: Snapshot, query: Query, node_id: str) -> tuple[int, dict]:
    node = next((n for n in s.nodes if n.node_id == node_id), None)
    if node is None:
        raise ApiError(404, f"Node {node_id} not found in this session")
    detail = node_summary(s, node)
    # The node page indexes these without a guard (NodeDetail.tsx); nothing recorded them, so they are empty.
    detail.update(cpus=[0, 0], loadAvg=[], networkSpeed=[0, 0], cmdline=[])
    detail["workers"] = [{"pid": w["pid"], "coreWorkerStats": [_core_worker_stats(w)], "language": "PYTHON",
                          "jobId": w["job_id"]} for w in _alive_workers(s, node_id)]
    detail["actors"] = {a.actor_id: logical_actor(s, a) for a in s.actors if _latest(a.transitions, "node_id") == node_id}
    return 200, _ok({"detail": detail}, "Node details fetched.")


# ---- workers ---------------------------------------------------------------------------------------

WORKER_COLUMNS = ("worker_id", "is_alive", "worker_type", "exit_type", "node_id", "ip", "pid")
WORKER_DETAIL_COLUMNS = ("exit_detail", "worker_launch_time_ms", "worker_launched_time_ms", "start_time_ms",
                         "end_time_ms", "debugger_port", "num_paused_threads")
WORKER_FILTERABLE = {"worker_id", "is_alive", "worker_type", "exit_type", "node_id", "ip", "pid", "debugger_port",
                     "num_paused_threads"}
_UNSET_MS = 18446744073709551615  # Ray's "never set" for driver launch times (uint64 max)


def worker_row(s: Snapshot, w: Worker) -> dict:
    last = w.transitions[-1] if w.transitions else None
    alive = last is not None and last.state == "ALIVE"
    death = _latest(w.transitions, "death_info") or {}
    end_ms = _latest(w.transitions, "end_time_ms") or 0
    exit_type, exit_detail = death.get("exit_type"), death.get("exit_detail")
    if alive and s.dead:
        alive, end_ms = False, s.end_ms
        exit_type, exit_detail = "SYSTEM_ERROR", SESSION_ENDED
    return {
        "worker_id": w.worker_id, "is_alive": alive, "worker_type": w.worker_type or "WORKER", "exit_type": exit_type,
        "node_id": w.node_id, "ip": _node_ip(s, w.node_id), "pid": w.pid, "exit_detail": exit_detail,
        "worker_launch_time_ms": _latest(w.transitions, "worker_launch_time_ms") or 0,
        "worker_launched_time_ms": _latest(w.transitions, "worker_launched_time_ms") or 0,
        "start_time_ms": _latest(w.transitions, "start_time_ms") or 0, "end_time_ms": end_ms,
        "debugger_port": None, "num_paused_threads": None,
    }


def _driver_worker_rows(s: Snapshot) -> list[dict]:
    """Drivers get no WORKER_* events: their rows come from DRIVER_TASK attempts and driver job events.
    A driver without driver-job events (Ray's internal drivers) is placed on the head node."""
    jobs_by_id = {j.job_id: j for j in s.driver_jobs}
    rows = []
    for t in s.tasks:
        if s.strings[t.type] != "DRIVER_TASK" or t.attempt:
            continue
        job_id = s.strings[t.job]
        job = jobs_by_id.get(job_id)
        node_id = job.driver_node_id if job else _head_node_id(s)
        transitions = dict(task_transitions(t))
        alive = t.state != FINISHED and not s.dead
        end_ms = 0 if alive else (transitions.get(FINISHED, 0) // 1_000_000 or s.end_ms)
        exit_type, exit_detail = None, None
        if t.state == FINISHED:
            exit_type, exit_detail = "INTENDED_USER_EXIT", "Shutdown by ray.shutdown()."
        elif not alive:  # still running when the session ended: shown like any worker alive at the end
            exit_type, exit_detail = "SYSTEM_ERROR", SESSION_ENDED
        rows.append({
            "worker_id": job_id + "ff" * 24, "is_alive": alive, "worker_type": "DRIVER",
            "exit_type": exit_type, "node_id": node_id, "ip": _node_ip(s, node_id),
            "pid": job.driver_pid if job else t.worker_pid,
            "exit_detail": exit_detail,
            "worker_launch_time_ms": _UNSET_MS, "worker_launched_time_ms": _UNSET_MS,
            "start_time_ms": transitions.get(_RUNNING, 0) // 1_000_000, "end_time_ms": end_ms,
            "debugger_port": None, "num_paused_threads": None,
        })
    return rows


def list_worker_rows(s: Snapshot) -> list[dict]:
    return [worker_row(s, w) for w in s.workers] + _driver_worker_rows(s)


def list_workers(s: Snapshot, query: Query) -> tuple[int, dict]:
    rows = list_worker_rows(s)
    return _list_rows(rows, query, WORKER_FILTERABLE, WORKER_COLUMNS, WORKER_DETAIL_COLUMNS, "worker_id")


# ---- jobs ------------------------------------------------------------------------------------------

JOB_COLUMNS = ("job_id", "submission_id", "entrypoint", "type", "status", "message", "error_type", "driver_info")
JOB_DETAIL_COLUMNS = ("start_time", "end_time", "metadata", "runtime_env", "driver_agent_http_address",
                      "driver_node_id", "driver_exit_code")
JOB_FILTERABLE = {"job_id", "submission_id", "type", "status"}
_JOB_KEYS = ("type", "job_id", "submission_id", "driver_info", "status", "entrypoint", "message", "error_type",
             "start_time", "end_time", "metadata", "runtime_env", "driver_agent_http_address", "driver_node_id",
             "driver_exit_code")


def _job_times(s: Snapshot, j: DriverJob) -> tuple[str, int, int]:
    """(status, start ns, end ns) of a driver job from its CREATED/FINISHED transitions."""
    start = _first_ts(j.transitions, "CREATED")
    end = _last_ts(j.transitions, "FINISHED")
    if end:
        return "SUCCEEDED", start, end
    if s.dead:
        return "FAILED", start, s.end_ns
    return "RUNNING", start, 0


def _driver_job_details(s: Snapshot, j: DriverJob) -> dict:
    status, start_ns, end_ns = _job_times(s, j)
    return {
        "type": "DRIVER", "job_id": j.job_id, "submission_id": None,
        "driver_info": {"id": j.job_id, "node_ip_address": _node_ip(s, j.driver_node_id), "pid": str(j.driver_pid)},
        "status": status, "entrypoint": j.entrypoint,
        "message": SESSION_ENDED if status == "FAILED" else None, "error_type": None,
        "start_time": start_ns // 1_000_000, "end_time": end_ns // 1_000_000 or None,
        "metadata": j.metadata, "runtime_env": _json(j.serialized_runtime_env, {}),
        "driver_agent_http_address": None, "driver_node_id": None, "driver_exit_code": None,
    }


def job_details(s: Snapshot) -> list[dict]:
    """Submission jobs (the head's /api/jobs/ answer), then driver jobs that no submission owns (like Ray)."""
    submitted = _endpoint_json(s, "jobs")
    submitted = [dict(j) for j in submitted if isinstance(j, dict) and j.get("type") == "SUBMISSION"] \
        if isinstance(submitted, list) else []
    if s.dead:
        for j in submitted:
            if j.get("status") in ("PENDING", "RUNNING"):
                j.update(status="FAILED", message=SESSION_ENDED, end_time=j.get("end_time") or s.end_ms)
    owned = {j.get("job_id") for j in submitted}
    drivers = [_driver_job_details(s, j) for j in s.driver_jobs if j.job_id not in owned]
    return submitted + drivers


def jobs(s: Snapshot, query: Query) -> tuple[int, list]:
    return 200, job_details(s)


def job_detail(s: Snapshot, query: Query, job_or_submission_id: str) -> tuple[int, Body]:
    for j in job_details(s):
        if job_or_submission_id in (j.get("submission_id"), j.get("job_id")):
            return 200, j
    return 404, f"Job {job_or_submission_id} does not exist"


def job_logs(s: Snapshot, query: Query, job_or_submission_id: str) -> tuple[int, Body]:
    """Submission job logs: the runtime serves job-driver-{submission_id}.log; this says which file."""
    status, job = job_detail(s, query, job_or_submission_id)
    if status != 200:
        return status, job
    if not job.get("submission_id"):
        return 400, f"Job {job_or_submission_id} is a driver job: it has no submission logs"
    return 200, {"node_id": job.get("driver_node_id") or _head_node_id(s),
                 "filename": f"job-driver-{job['submission_id']}.log"}


def list_jobs(s: Snapshot, query: Query) -> tuple[int, dict]:
    rows = job_details(s)
    return _list_rows(rows, query, JOB_FILTERABLE, JOB_COLUMNS, JOB_DETAIL_COLUMNS, "job_id")


# ---- placement groups ------------------------------------------------------------------------------

PG_COLUMNS = ("placement_group_id", "name", "creator_job_id", "state")
PG_DETAIL_COLUMNS = ("bundles", "is_detached", "stats", "topology_strategy", "topology_assignments")
PG_FILTERABLE = {"placement_group_id", "name", "creator_job_id", "state", "is_detached"}


def placement_group_rows(s: Snapshot) -> list[dict]:
    """Rows of the head's /api/v0/placement_groups?detail=1 answer; in a dead session none is left CREATED."""
    answer = _endpoint_json(s, "placement_groups") or {}
    try:
        rows = [dict(r) for r in answer["data"]["result"]["result"]]
    except (KeyError, TypeError):
        return []
    if s.dead:
        for r in rows:
            if r.get("state") != "REMOVED":
                r["state"] = "REMOVED"
    return rows


def list_placement_groups(s: Snapshot, query: Query) -> tuple[int, dict]:
    return _list_rows(placement_group_rows(s), query, PG_FILTERABLE, PG_COLUMNS, PG_DETAIL_COLUMNS,
                      "placement_group_id")


# ---- events ----------------------------------------------------------------------------------------

def _tz(s: Snapshot) -> dt.timezone:
    offset = (_endpoint_json(s, "timezone") or {}).get("offset", "+00:00")
    m = re.fullmatch(r"([+-])(\d\d):?(\d\d)", offset or "")
    if not m:
        return dt.timezone.utc
    delta = dt.timedelta(hours=int(m.group(2)), minutes=int(m.group(3)))
    return dt.timezone(-delta if m.group(1) == "-" else delta)


def _event_time(s: Snapshot, event: dict) -> str:
    try:
        stamp = int(event.get("timestamp", 0))
    except (TypeError, ValueError):
        return ""
    return dt.datetime.fromtimestamp(stamp, _tz(s)).strftime("%Y-%m-%d %H:%M:%S")


def _camel_event(s: Snapshot, event: dict) -> dict:
    out = {}
    for key, value in event.items():
        head, *rest = key.split("_")
        if key == "custom_fields" and isinstance(value, dict):
            value = {_camel_resource(k): v for k, v in value.items()}
        out[head + "".join(p.title() for p in rest)] = value
    out["time"] = _event_time(s, event)
    return out


def _event_job_id(event: dict) -> str:
    return (event.get("custom_fields") or {}).get("job_id", "")


def events(s: Snapshot, query: Query) -> tuple[int, dict]:
    job_id = query.get("job_id")
    if job_id:
        matching = [_camel_event(s, e) for e in s.cluster_events if _event_job_id(e) == job_id]
        return 200, _ok({"jobId": job_id, "events": matching}, "Job events fetched.")
    grouped: dict[str, list] = {"global": []}
    for j in s.driver_jobs:
        grouped[j.job_id] = []
    for e in s.cluster_events:
        grouped.setdefault(_event_job_id(e) or "global", []).append(_camel_event(s, e))
    return 200, _ok({"events": grouped}, "All events fetched.")


CLUSTER_EVENT_COLUMNS = ("severity", "time", "source_type", "message", "event_id")
CLUSTER_EVENT_FILTERABLE = {"event_id", "severity", "source_type"}


def list_cluster_events(s: Snapshot, query: Query) -> tuple[int, dict]:
    rows = [{"severity": e.get("severity"), "time": _event_time(s, e), "source_type": e.get("source_type"),
             "message": e.get("message"), "event_id": e.get("event_id"), "custom_fields": e.get("custom_fields")}
            for e in s.cluster_events]
    limit, detail = _list_options(query)
    filters = parse_filters(query, CLUSTER_EVENT_FILTERABLE)
    kept = [r for r in rows if all(f.match(r[f.column]) for f in filters)]
    shown = CLUSTER_EVENT_COLUMNS + (("custom_fields",) if detail else ())
    return 200, _list_body([{c: r[c] for c in shown} for r in kept[:limit]], len(rows), len(rows), len(kept))


def platform_events(s: Snapshot, query: Query) -> tuple[int, str]:
    # Ray 2.60 answers 404 unless RAY_DASHBOARD_INGEST_PLATFORM_EVENTS is on; the UI hides the panel.
    return 404, "404: Not Found"


# ---- logs (pure parts; the runtime streams the bytes) ----------------------------------------------

_WORKER_LOG = re.compile(r".*worker-([0-9a-f]+)-([0-9a-f]+)-(\d+)\.(out|err)$")


def _head_node_id(s: Snapshot) -> str:
    for n in s.nodes:
        if "node:__internal_head__" in _node_resources(n):
            return n.node_id
    return s.nodes[0].node_id if s.nodes else ""


def node_id_for(s: Snapshot, query: Query) -> str:
    node_id = query.get("node_id")
    if node_id:
        if node_id not in s.log_index and all(n.node_id != node_id for n in s.nodes):
            raise ApiError(404, f"Node {node_id} not found in this session")
        return node_id
    ip = query.get("node_ip")
    if ip:
        for n in s.nodes:
            if n.node_ip == ip:
                return n.node_id
        raise ApiError(404, f"No node with ip {ip} in this session")
    raise ApiError(400, "node_id or node_ip is required")


def categorize_logs(files: list[str]) -> dict[str, list[str]]:
    """Ray's LogsManager._categorize_log_files."""
    result: dict[str, list[str]] = defaultdict(list)
    for f in files:
        if "worker" in f and f.endswith(".out"):
            result["worker_out"].append(f)
        elif "worker" in f and f.endswith(".err"):
            result["worker_err"].append(f)
        elif "core-worker" in f and f.endswith(".log"):
            result["core_worker"].append(f)
        elif "core-driver" in f and f.endswith(".log"):
            result["driver"].append(f)
        elif "raylet." in f:
            result["raylet"].append(f)
        elif "gcs_server." in f:
            result["gcs_server"].append(f)
        elif "log_monitor" in f:
            result["internal"].append(f)
        elif "monitor" in f:
            result["autoscaler"].append(f)
        elif "agent." in f:
            result["agent"].append(f)
        elif "dashboard." in f:
            result["dashboard"].append(f)
        else:
            result["internal"].append(f)
    return dict(result)


def _node_files(s: Snapshot, node_id: str, pattern: str) -> list[str]:
    """Like the agent's glob under logs/: one level per '*', folders listed once with a trailing '/'."""
    names: dict[str, None] = {}
    depth = pattern.count("/")
    for f in s.log_index.get(node_id, []):
        parts = f.relpath.split("/")
        if len(parts) > depth + 1:
            name = "/".join(parts[: depth + 1]) + "/"
            if fnmatch.fnmatchcase(name[:-1], pattern):
                names[name] = None
        elif fnmatch.fnmatchcase(f.relpath, pattern):
            names[f.relpath] = None
    return list(names)


def list_logs(s: Snapshot, query: Query) -> tuple[int, dict]:
    node_id = node_id_for(s, query)
    glob = query.get("glob") or "*"
    if glob.startswith("/") or ".." in glob.split("/"):
        raise ApiError(400, f"Invalid glob {glob!r}")
    return 200, _ok({"result": categorize_logs(_node_files(s, node_id, glob))})


class ResolvedLog:
    __slots__ = ("node_id", "filename", "start", "end")

    def __init__(self, node_id: str, filename: str, start: int | None = None, end: int | None = None):
        self.node_id, self.filename, self.start, self.end = node_id, filename, start, end

    def __repr__(self) -> str:
        return f"ResolvedLog({self.node_id!r}, {self.filename!r}, {self.start}, {self.end})"


def _worker_file(s: Snapshot, node_id: str, suffix: str, worker_id: str = "", pid: int = 0) -> str | None:
    for f in s.log_index.get(node_id, []):
        m = _WORKER_LOG.match(f.relpath)
        if m and "/" not in f.relpath and m.group(4) == suffix:
            if (worker_id and m.group(1) == worker_id) or (pid and int(m.group(3)) == pid):
                return f.relpath
    return None


def resolve_log_file(s: Snapshot, query: Query) -> ResolvedLog:
    """/api/v0/logs/file and /api/v0/logs/stream: which stored file (and byte range) a query names.

    filename (with node_id or node_ip), task_id (+ attempt_number), actor_id, or pid (with a node), with
    suffix out|err. Raises ApiError: 400 for a bad query, 404 when the session has no such file; the
    messages are Ray's. The filename is checked by the runtime against rayhistory.layout.check_relpath.
    """
    suffix = query.get("suffix") or "out"
    if suffix not in ("out", "err"):
        raise ApiError(400, f"Suffix {suffix} is not supported. ")
    filename = query.get("filename")
    if filename:
        node_id = node_id_for(s, query)
        if all(f.relpath != filename for f in s.log_index.get(node_id, [])):
            raise ApiError(404, f"Log file {filename} not found on node {node_id}")
        return ResolvedLog(node_id, filename)
    actor_id = query.get("actor_id")
    if actor_id:
        actor = next((a for a in s.actors if a.actor_id == actor_id), None)
        if actor is None:
            raise ApiError(404, f"Actor ID {actor_id} not found.")
        node_id, worker_id = _latest(actor.transitions, "node_id"), _latest(actor.transitions, "worker_id")
        if not node_id or not worker_id:
            raise ApiError(404, f"Worker ID for Actor ID {actor_id} not found. Actor is not scheduled yet.")
        found = _worker_file(s, node_id, suffix, worker_id=worker_id)
        if found is None:
            raise ApiError(404, _not_found(node_id=node_id, actor_id=actor_id, suffix=suffix))
        return ResolvedLog(node_id, found)
    task_id = query.get("task_id")
    if task_id:
        return _resolve_task_log(s, task_id, _int_param(query, "attempt_number", 0), suffix)
    pid = query.get("pid")
    if pid:
        node_id = node_id_for(s, query)
        try:
            number = int(pid)
        except ValueError:
            raise ApiError(400, f"pid must be an integer, got {pid!r}") from None
        found = _worker_file(s, node_id, suffix, pid=number)
        if found is None:
            raise ApiError(404, _not_found(node_id=node_id, pid=pid, suffix=suffix))
        return ResolvedLog(node_id, found)
    submission_id = query.get("submission_id")
    if submission_id:
        status, body = job_logs(s, query, submission_id)
        if status != 200:
            raise ApiError(status, str(body))
        return ResolvedLog(body["node_id"], body["filename"])
    raise ApiError(400, "One of filename, task_id, actor_id, pid or submission_id is required")


def _not_found(**fields) -> str:
    lines = "".join(f"\t{k}: {v}\n" for k, v in fields.items())
    return f"Could not find a log file. Please make sure the given option exists in the cluster.\n{lines}"


def _resolve_task_log(s: Snapshot, task_id: str, attempt: int, suffix: str) -> ResolvedLog:
    attempts = [t for t in s.tasks if t.task_id == task_id]
    if not attempts:
        raise ApiError(404, f"Could not find log file for task: {task_id} (attempt {attempt}) with suffix: {suffix}")
    t = next((t for t in attempts if t.attempt == attempt), None)
    if t is None:
        raise ApiError(404, f"Could not find log file for task attempt:{task_id}({attempt})")
    node_id = s.strings[t.node]
    if not node_id:
        raise ApiError(404, f"Could not find log file for task attempt.{task_id}({attempt}) due to missing node info.")
    log_info = task_log_info(s.strings, t)
    actor_id = s.strings[t.actor]
    if log_info is None and actor_id:
        raise ApiError(404, f"For actor task, please query actor log for actor({actor_id}): e.g. ray logs actor "
                            f"--id {actor_id} . Or set RAY_ENABLE_RECORD_ACTOR_TASK_LOGGING=1 in actor's runtime env "
                            "or when starting the cluster. Recording actor task's log could be expensive, so Ray "
                            "turns it off by default.")
    if log_info is None:
        raise ApiError(404, f"Could not find log file for task attempt:{task_id}({attempt}).Worker id = "
                            f"{s.strings[t.worker] or None}, node id = {node_id},log_info = None")
    path = log_info.get("stdout_file" if suffix == "out" else "stderr_file")
    if not path:
        raise ApiError(404, f"Missing log filename info in {log_info} for task {task_id},attempt {attempt}")
    # Ray stores absolute paths under the session's logs/ folder; the stored log index is relative to it.
    relpath = path.split("/logs/", 1)[1] if "/logs/" in path else path.rsplit("/", 1)[-1]
    return ResolvedLog(node_id, relpath, log_info.get(f"std{suffix}_start"), log_info.get(f"std{suffix}_end"))


# ---- head endpoints stored verbatim, version and the UI's probes -----------------------------------

def cluster_status(s: Snapshot, query: Query) -> tuple[int, Body]:
    stored = s.endpoints.get("cluster_status")
    if stored is not None:
        return 200, stored
    return 200, _ok({"clusterStatus": "The cluster is gone; no autoscaler status was recorded."},
                    "Got formatted cluster status.")


def serve_applications(s: Snapshot, query: Query) -> tuple[int, Body]:
    stored = s.endpoints.get("serve_applications")
    if stored is not None:
        return 200, stored
    # what a head without Ray Serve answers; the UI shows its "Serve not running" state
    return 501, "Serve was not running in this session."


def datasets(s: Snapshot, query: Query, job_id: str) -> tuple[int, Body]:
    # the collector's last poll of the job's datasets (collector/dashboard_poll.py); without one, an empty list
    # renders as "no datasets"
    stored = s.endpoints.get(f"datasets_{job_id}")
    if stored is not None:
        return 200, stored
    return 200, {"datasets": []}


def cluster_metadata(s: Snapshot, query: Query) -> tuple[int, Body]:
    stored = s.endpoints.get("cluster_metadata")
    if stored is not None:
        return 200, stored
    return 200, _ok({"rayVersion": "", "pythonVersion": "", "rayInitCluster": False})


def timezone(s: Snapshot, query: Query) -> tuple[int, Body]:
    stored = s.endpoints.get("timezone")
    if stored is not None:
        return 200, stored
    return 200, {"offset": "+00:00", "value": "UTC"}


def version(s: Snapshot, query: Query) -> tuple[int, dict]:
    stored = _endpoint_json(s, "version")
    if isinstance(stored, dict):
        return 200, {**stored, "session_name": s.session}
    metadata = _endpoint_json(s, "cluster_metadata") or {}
    ray_version = (metadata.get("data") or {}).get("rayVersion", "")
    return 200, {"version": "4", "ray_version": ray_version, "ray_commit": "", "session_name": s.session}


def usage_stats_enabled(s: Snapshot, query: Query) -> tuple[int, dict]:
    return 200, _ok({"usageStatsEnabled": False, "usageStatsPromptEnabled": True}, "Fetched usage stats enabled")


def authentication_mode(s: Snapshot, query: Query) -> tuple[int, dict]:
    return 200, {"authentication_mode": "disabled"}


def profiling_enabled(s: Snapshot, query: Query) -> tuple[int, dict]:
    # no process is left to profile; the defaults keep the UI's form happy
    return 200, _ok({"profilingEnabled": False, "profilingDefaults": {
        "native": False, "subprocesses": False, "idle": False, "leaks": False, "tracePythonAllocators": False,
        "cpuDuration": 5, "memoryDuration": 10, "maxDuration": 60, "cpuFormat": "flamegraph",
        "memoryFormat": "flamegraph", "pyspyNativeSupported": True}})


def runtime_env_redaction(s: Snapshot, query: Query) -> tuple[int, dict]:
    return 200, _ok({"redactionEnabled": True})


def grafana_health(s: Snapshot, query: Query) -> tuple[int, dict]:
    # Ray's answer when Grafana is unreachable: the UI then hides the metrics panels
    return 500, {"result": False, "msg": "Grafana healthcheck failed",
                 "data": {"exception": "Metrics are not kept by the history server"}}


def prometheus_health(s: Snapshot, query: Query) -> tuple[int, dict]:
    return 500, {"result": False, "msg": "prometheus healthcheck failed.",
                 "data": {"reason": "Metrics are not kept by the history server"}}


def _with(handler: Callable[..., tuple[int, Body]], param: str) -> Handler:
    """Adapt a handler taking a path parameter: the runtime passes match_info merged into the query."""
    def adapted(s: Snapshot, query: Query) -> tuple[int, Body]:
        return handler(s, query, query[param])
    adapted.__name__ = handler.__name__
    return adapted


# (method, aiohttp path pattern relative to the session root, handler). Path parameters ({name}) are
# merged into the query mapping the handler receives. Log file bytes are the runtime's (see module doc).
ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/api/v0/tasks", list_tasks),
    ("GET", "/api/v0/tasks/summarize", summarize_tasks),
    ("GET", "/api/v0/tasks/timeline", task_timeline),
    ("GET", "/api/v0/actors", list_actors),
    ("GET", "/api/v0/actors/summarize", summarize_actors),
    ("GET", "/api/v0/nodes", list_nodes),
    ("GET", "/api/v0/workers", list_workers),
    ("GET", "/api/v0/jobs", list_jobs),
    ("GET", "/api/v0/placement_groups", list_placement_groups),
    ("GET", "/api/v0/cluster_events", list_cluster_events),
    ("GET", "/api/v0/platform_events", platform_events),
    ("GET", "/api/v0/logs", list_logs),
    ("GET", "/api/v0/cluster_metadata", cluster_metadata),
    ("GET", "/api/v0/runtime_env_redaction", runtime_env_redaction),
    ("GET", "/logical/actors", logical_actors),
    ("GET", "/logical/actors/{actor_id}", _with(logical_actor_detail, "actor_id")),
    ("GET", "/nodes", nodes),
    ("GET", "/nodes/{node_id}", _with(node_detail, "node_id")),
    ("GET", "/api/jobs/", jobs),
    ("GET", "/api/jobs/{job_id}", _with(job_detail, "job_id")),
    ("GET", "/events", events),
    ("GET", "/api/cluster_status", cluster_status),
    ("GET", "/api/serve/applications/", serve_applications),
    ("GET", "/api/data/datasets/{job_id}", _with(datasets, "job_id")),
    ("GET", "/timezone", timezone),
    ("GET", "/api/version", version),
    ("GET", "/api/ray/version", version),
    ("GET", "/usage_stats_enabled", usage_stats_enabled),
    ("GET", "/api/authentication_mode", authentication_mode),
    ("GET", "/api/profiling_enabled", profiling_enabled),
    ("GET", "/api/grafana_health", grafana_health),
    ("GET", "/api/prometheus_health", prometheus_health),
]
