"""/api/v0/nodes, /nodes (summary and detail) and /api/v0/workers."""

from __future__ import annotations

from .api_actors import SESSION_ENDED, _node_ip, logical_actor
from .api_common import ApiError, Query, _head_node_id, _latest, _list_rows, _node_resources, _ok
from .api_tasks import _RUNNING
from .disk_tasks import DiskTasks
from .snapshot_model import FINISHED, Node, Snapshot, Worker, task_transitions


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
    # the object store's size is in the node's definition; nothing is stored in it once the session is over
    # (the UI adds used + available: without both it shows NaN)
    store_bytes = row["resources_total"].get("object_store_memory")
    if store_bytes is not None:
        raylet["objectStoreUsedMemory"] = 0
        raylet["objectStoreAvailableMemory"] = store_bytes
    alive = _alive_workers(s, n.node_id)
    raylet["coreWorkersStats"] = [_core_worker_stats(w) for w in alive]
    raylet["numWorkers"] = len(alive)
    summary = {"hostname": n.hostname, "ip": n.node_ip, "raylet": raylet}
    if n.start_ns:
        summary["bootTime"] = n.start_ns / 1e9  # the node page's boot time: the raylet's start is what is known
    return summary


def _format_memory(num_bytes: float) -> str:
    """Ray's autoscaler format_memory (ray/autoscaler/_private/util.py)."""
    for suffix, unit in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if num_bytes >= unit:
            return f"{num_bytes / unit:.2f}{suffix}"
    return f"{int(num_bytes)}B"


def logical_resources(totals: dict[str, float]) -> str:
    """A dead node's line of nodeLogicalResources, as Ray's autoscaler writes it (parse_usage, verbose):
    nothing is in use once the cluster is gone, so each resource is 0 of its total."""
    lines = []
    for name, total in sorted(totals.items()):
        if "node:" in name or "_group_" in name:
            continue  # the per-node marker resource and placement group bundles
        if name in ("memory", "object_store_memory"):
            lines.append(f"{_format_memory(0)}/{_format_memory(total)} {name}")
        else:
            lines.append(f"{0.0}/{float(total)} {name}")
    return "\n".join(lines)


def _node_logical_resources(s: Snapshot) -> dict[str, str]:
    # usage is read live from the GCS; a live session read from storage has no honest figure, a dead one has 0
    return {n.node_id: logical_resources(_node_resources(n)) for n in s.nodes} if s.dead else {}


NIL_ACTOR_ID = "ff" * 16


def _alive_workers(s: Snapshot, node_id: str) -> list[dict]:
    """Workers and drivers still alive at the end of the record (none in a dead session), with the job and
    actor the events give them: an actor's ALIVE names the worker it runs on."""
    job_of = {w.worker_id: w.job_id for w in s.workers}
    actor_on = {_latest(a.transitions, "worker_id"): a for a in s.actors}
    rows = [w for w in list_worker_rows(s) if w["is_alive"] and w["node_id"] == node_id]
    for w in rows:
        actor = actor_on.get(w["worker_id"])
        w["actor_id"] = actor.actor_id if actor is not None else NIL_ACTOR_ID
        w["job_id"] = (job_of.get(w["worker_id"]) or (actor.job_id if actor is not None else "")
                       or (w["worker_id"][:8] if w["worker_type"] == "DRIVER" else "ffff"))
    return rows


def _core_worker_stats(w: dict) -> dict:
    return {"ipAddress": w["ip"], "workerId": w["worker_id"], "pid": w["pid"], "workerType": w["worker_type"],
            "jobId": w["job_id"], "actorId": w["actor_id"], "language": "PYTHON"}


def nodes(s: Snapshot, query: Query) -> tuple[int, dict]:
    view = query.get("view", "summary")
    if view == "summary":
        return 200, _ok({"summary": [node_summary(s, n) for n in s.nodes],
                         "nodeLogicalResources": _node_logical_resources(s)}, "Node summary fetched.")
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
    # cpus (the host's logical/physical core counts, not Ray's CPU resource) is guarded: left out, the page
    # omits the line rather than saying "0/ 0".
    # cpu (percent in use) is read unguarded too: Number(undefined) draws a full bar; a dead node uses none.
    detail.update(loadAvg=[], networkSpeed=[0, 0], cmdline=[], cpu=0)
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
    # a session on disk keeps its driver attempts apart: the other tasks are not decoded for them
    for t in s.tasks.drivers if isinstance(s.tasks, DiskTasks) else s.tasks:
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
