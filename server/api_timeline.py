"""/api/v0/tasks/timeline: the Chrome trace of profile events (ray/_private/profiling.py)."""

from __future__ import annotations

from .api_common import Filter, Query, _nil
from .api_tasks import _profiling_data, select_tasks
from .snapshot import Snapshot


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
