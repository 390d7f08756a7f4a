"""/api/jobs/, /api/v0/jobs and /api/v0/placement_groups."""

from __future__ import annotations

from .api_actors import SESSION_ENDED, _node_ip
from .api_common import Body, Query, _endpoint_json, _first_ts, _json, _last_ts, _list_rows
from .snapshot_model import DriverJob, Snapshot


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
