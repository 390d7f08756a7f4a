"""/api/v0/tasks/timeline: the Chrome trace of profile events (ray/_private/profiling.py)."""

from __future__ import annotations

from collections.abc import Sequence

from .api_common import Filter, Query, _nil, _shared_json
from .api_tasks import select_tasks
from .snapshot import Snapshot, Task, _gc_paused, task_profile


def task_timeline(s: Snapshot, query: Query) -> tuple[int, list]:
    """Chrome trace events from TASK_PROFILE events (ray/_private/profiling.py chrome_tracing_dump).
    One pass over the packed profile events, as api_tasks._profiling_data reads them, without building
    its per-task dicts: a 100k-task session has 400k trace events."""
    job_id = query.get("job_id")
    filters = [Filter("job_id", True, job_id)] if job_id else []
    tasks, _ = select_tasks(s, filters, True)
    # the events are dicts of atoms and shared parsed JSON, no cycles: without the pause, the GC's passes
    # over the hundreds of thousands of dicts being made take as long as making them
    with _gc_paused():
        return 200, _trace_events(s, tasks)


def _trace_events(s: Snapshot, tasks: Sequence[Task]) -> list[dict]:
    strings = s.strings
    node_index: dict[str, int] = {}
    worker_index: dict[tuple[int, str], int] = {}
    events: list[dict] = []
    append = events.append
    for t in tasks:
        if not t.profile:
            continue
        component_type, component_id, ip = (strings[t.component].split("\n") + ["", "", ""])[:3]
        if component_type not in ("worker", "driver"):
            continue
        component = f"{component_type}:{component_id}"
        ids = {"task_id": t.task_id, "job_id": _nil(strings[t.job]), "attempt_number": t.attempt,
               "func_or_class_name": _nil(strings[t.func]), "actor_id": _nil(strings[t.actor])}
        pid = node_index.setdefault(ip, len(node_index))
        tid = worker_index.setdefault((pid, component), len(worker_index))
        for name_index, start, end, extra_index in task_profile(t):
            try:
                extra = dict(_shared_json(strings[extra_index] or "{}"))
            except ValueError:
                extra = {}
            extra.update(ids)
            name = strings[name_index]
            # the same float operations as _profiling_data's seconds, then milliseconds: the same numbers
            start_ms, end_ms = int(start) / 1e6 * 1e3, int(end) / 1e6 * 1e3
            append({
                "cat": name, "name": extra.get("name", name), "pid": pid, "tid": tid,
                "ts": start_ms, "dur": end_ms - start_ms,
                "cname": _COLORS.get(extra.get("cname", name), "generic_work"), "args": extra, "ph": "X",
            })
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
