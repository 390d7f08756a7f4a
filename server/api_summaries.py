"""/api/v0/tasks/summarize (by func_name and by lineage) and /api/v0/actors/summarize."""

from __future__ import annotations

from .api_actors import ACTOR_FILTERABLE, _actor_repr_name, actor_row
from .api_common import DRIVER_TASK_ID_PREFIX, ApiError, Query, _ok, parse_filters
from .api_tasks import _PENDING_ARGS_AVAIL, TASK_FILTERABLE, _task_name, check_whole_answer, select_tasks
from .snapshot_model import TASK_STATES, Snapshot, Task, task_transitions


def summarize_tasks(s: Snapshot, query: Query) -> tuple[int, dict]:
    summary_by = query.get("summary_by") or "func_name"
    if summary_by not in ("func_name", "task_name", "lineage"):
        raise ApiError(400, 'summary_by must be one of "func_name", "task_name", or "lineage".')
    filters = parse_filters(query, TASK_FILTERABLE)
    kept, total = select_tasks(s, filters, True)
    if summary_by == "lineage":
        check_whole_answer(s, len(kept), "A lineage summary")
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
