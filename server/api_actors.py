"""/api/v0/actors and /logical/actors."""

from __future__ import annotations

from .api_common import Query, _first_ts, _latest, _list_rows, _ms, _nil, _ok
from .snapshot_model import Actor, Snapshot


ACTOR_COLUMNS = ("actor_id", "class_name", "state", "job_id", "name", "node_id", "pid", "ray_namespace")
ACTOR_DETAIL_COLUMNS = ("serialized_runtime_env", "required_resources", "death_cause", "is_detached",
                        "placement_group_id", "repr_name", "num_restarts", "num_restarts_due_to_lineage_reconstruction",
                        "num_restarts_due_to_node_preemption", "call_site", "label_selector", "fallback_strategy")
ACTOR_FILTERABLE = {"actor_id", "class_name", "state", "job_id", "name", "node_id", "pid", "ray_namespace",
                    "placement_group_id", "repr_name"}
SESSION_ENDED = "The session ended (ray stop or cluster deletion) while this was alive; no later state was recorded."


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
