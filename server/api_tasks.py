"""/api/v0/tasks: task attempts as rows, filters narrowed on the snapshot's indexes (Ray's state_aggregator)."""

from __future__ import annotations

import heapq
import json
import re
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Sequence
from functools import lru_cache
from itertools import compress, islice
from operator import attrgetter, not_
from typing import Any

import msgspec

from .api_common import (
    _HEX, ApiError, Filter, Query, _bool, _list_body, _list_options, _ms, _nil, _shared_json, parse_filters,
)
from .cache import EncodedRows
from .disk_tasks import DiskTasks
from .snapshot_model import FAILED, FINISHED, TASK_STATES, Snapshot, Task, task_log_info, task_profile, task_transitions


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
    if t.end_reason:  # a failure the builder derived: a dead worker, the job's end, the session's end
        error_type, _, message = s.strings[t.end_reason].partition("\n")
        return error_type, message
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
        values = _states(tasks)
    elif f.column == "task_id":
        if f.equal and tasks is s.tasks:  # sorted by task id: bisect
            return tasks[slice(*task_id_range(tasks, f.value.lower()))]
        wanted = frozenset([f.value.lower()])
        values = map(attrgetter("task_id"), tasks)
    else:
        return _kept(tasks, (f.match(_task_value(s, t, f.column)) for t in tasks))
    matches = map(wanted.__contains__, values)
    return _kept(tasks, matches if f.equal else map(not_, matches))


def task_id_range(tasks: Sequence[Task], task_id: str) -> tuple[int, int]:
    """(first, end) positions of the attempts of `task_id` in a snapshot's tasks (sorted by task id)."""
    lo, hi = tasks.id_bounds(task_id) if isinstance(tasks, DiskTasks) else (0, len(tasks))
    key = attrgetter("task_id")
    return bisect_left(tasks, task_id, lo, hi, key=key), bisect_right(tasks, task_id, lo, hi, key=key)


def _on_disk(tasks: Sequence[Task]) -> tuple[DiskTasks, Sequence[int]] | None:
    """(the tasks on disk, the positions among them) of a snapshot's tasks on disk or a _Subset of them."""
    if isinstance(tasks, DiskTasks):
        return tasks, range(len(tasks))
    if isinstance(tasks, _Subset) and isinstance(tasks.tasks, DiskTasks):
        return tasks.tasks, tasks.positions
    return None


def _states(tasks: Sequence[Task]) -> Iterator[int]:
    """Task.state of each of the tasks; for tasks on disk from their state column, without decoding them."""
    on_disk = _on_disk(tasks)
    if on_disk is None:
        return map(attrgetter("state"), tasks)
    disk, positions = on_disk
    return iter(disk.states) if tasks is disk else map(disk.states.__getitem__, positions)


def _without_drivers(s: Snapshot, tasks: Sequence[Task]) -> Sequence[Task]:
    """The filter type != DRIVER_TASK; for tasks on disk from the positions of their driver attempts, kept
    apart at the spill (disk_tasks.spill_tasks matches the type as the filter does)."""
    on_disk = _on_disk(tasks)
    if on_disk is None:
        return _narrow(s, tasks, Filter("type", False, "DRIVER_TASK"))
    disk, positions = on_disk
    if not disk.driver_positions:
        return tasks
    return _kept(tasks, map(not_, map(disk.driver_positions.__contains__, positions)))


# What an answer that holds every selected task at once may cover in a session on disk: the lineage summary
# (a group per task) and the timeline (several trace events per task) of 100k tasks take a few hundred MB.
ON_DISK_WHOLE_ANSWER_MAX_TASKS = 100_000


def check_whole_answer(s: Snapshot, count: int, what: str) -> None:
    """Refuse, with a reason, an answer that would hold `count` tasks in memory at once when the session's
    tasks are on disk (disk_tasks.py: it is on disk because it does not fit) and they are too many."""
    if isinstance(s.tasks, DiskTasks) and count > ON_DISK_WHOLE_ANSWER_MAX_TASKS:
        raise ApiError(400, f"{what} of {count:,} tasks would not fit in this replica's memory (the session's "
                            f"{len(s.tasks):,} tasks are kept on local disk); it is answered for up to "
                            f"{ON_DISK_WHOLE_ANSWER_MAX_TASKS:,}: filter by job_id, state or name, or ask for fewer")


def failed_task_count(s: Snapshot) -> int:
    """The FAILED tasks the task list shows, chosen as it chooses them: driver attempts left out (Ray's
    exclude_driver default; a failed job's driver counts among the failed jobs), unlisted attempts too."""
    return len(select_tasks(s, [Filter("state", True, "FAILED")], exclude_driver=True)[0])


def _kept(tasks: Sequence[Task], matches: Iterable[bool]) -> Sequence[Task]:
    """The tasks whose `matches` is true: a list; for tasks on disk their positions (a _Subset), so that a
    filter that keeps millions of them holds no decoded task."""
    on_disk = _on_disk(tasks)
    if on_disk is None:
        return list(compress(tasks, matches))
    disk, positions = on_disk
    return _Subset(disk, array("I", compress(positions, matches)))


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
    profile = task_profile(t)
    if not profile:
        return {}
    component_type, component_id, node_ip = (s.strings[t.component].split("\n") + ["", "", ""])[:3]
    events = []
    for name, start, end, extra in profile:
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
    if t.state in (FINISHED, FAILED) and t.state not in first_ts and t.end_ns:
        first_ts[t.state] = t.end_ns  # an end the builder derived (docs/dead-sessions.md)
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
        if isinstance(self.tasks, DiskTasks):  # a chunk at a time, past its LRU (DiskTasks.__iter__)
            return self.tasks.at(self.positions)
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
        tasks = _without_drivers(s, tasks)
    if s.unlisted:
        tasks = _kept(tasks, map(attrgetter("listed"), tasks))
    total = len(tasks)
    for f in filters:
        if f.column not in _TASK_SOURCE_FILTERS:
            tasks = _narrow(s, tasks, f)
    return tasks, total


# A detail row is about 2 KB of JSON: room for the dashboard's 10,000-row pages of a few sessions.
ENCODED_ROWS = EncodedRows(max_bytes=64 << 20)
_encode = msgspec.json.Encoder().encode  # as the runtime encodes a body (routes.json_response)


def _first_listed_non_driver(s: Snapshot, limit: int) -> tuple[list[Task], int] | None:
    """(the first `limit` listed non-driver tasks, how many there are) from the per-job index, without
    scanning every task: the dashboard's unfiltered page of a million-task session. None when the index
    does not answer exactly what select_tasks would (a type other than DRIVER_TASK that a filter on it
    matches, case-insensitively)."""
    drivers = [i for i, v in enumerate(s.strings) if v and v.lower() == "driver_task"]
    if len(drivers) > 1 or (drivers and s.strings[drivers[0]] != "DRIVER_TASK"):
        return None
    parts = [array("I", positions) for positions in s.job_tasks.values()]
    total = sum(map(len, parts))
    check_whole_answer(s, min(limit, total), "A task list")
    tasks = s.tasks
    return [tasks[p] for p in islice(heapq.merge(*parts), limit)], total


def list_tasks(s: Snapshot, query: Query) -> tuple[int, bytes]:
    """The JSON body, assembled from encoded rows (ENCODED_ROWS): the same bytes as encoding the rows'
    dicts in the body, without building or encoding again the rows an earlier request encoded."""
    limit, detail = _list_options(query)
    filters = parse_filters(query, TASK_FILTERABLE)
    exclude_driver = _bool(query.get("exclude_driver"), True)
    fast = _first_listed_non_driver(s, limit) if exclude_driver and not filters else None
    if fast is not None:
        shown, total = fast
        matched = total
    else:
        kept, total = select_tasks(s, filters, exclude_driver)
        check_whole_answer(s, min(limit, len(kept)), "A task list")
        shown, matched = kept[:limit], len(kept)
    if isinstance(s.tasks, DiskTasks):  # decoded anew from disk: a task's id() would not name it for long
        rows = [_encode(task_row(s, t, detail)) for t in shown]
    else:
        rows = ENCODED_ROWS.rows(s, shown, detail, lambda t: _encode(task_row(s, t, detail)))
    return 200, _encode(_list_body(msgspec.Raw(b"[" + b",".join(rows) + b"]"), total, total, matched))
