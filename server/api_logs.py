"""Logs, the pure parts (the runtime streams the bytes): /api/v0/logs, and which file and byte range a
/api/v0/logs/file request names."""

from __future__ import annotations

import fnmatch
import re
from collections import defaultdict

from .api_common import ApiError, Body, Query, _head_node_id, _int_param, _latest, _ok
from .api_jobs import job_detail
from .api_tasks import task_id_range
from .snapshot_model import Snapshot, task_log_info


_WORKER_LOG = re.compile(r".*worker-([0-9a-f]+)-([0-9a-f]+)-(\d+)\.(out|err)$")


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


def logs_relpath(path: str) -> str:
    """Ray stores absolute paths under the session's logs/ folder; the stored log index is relative to it."""
    return path.split("/logs/", 1)[1] if "/logs/" in path else path.rsplit("/", 1)[-1]


def _not_found(**fields) -> str:
    lines = "".join(f"\t{k}: {v}\n" for k, v in fields.items())
    return f"Could not find a log file. Please make sure the given option exists in the cluster.\n{lines}"


def _resolve_task_log(s: Snapshot, task_id: str, attempt: int, suffix: str) -> ResolvedLog:
    attempts = s.tasks[slice(*task_id_range(s.tasks, task_id))]  # sorted by task id: no scan of the session
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
    return ResolvedLog(node_id, logs_relpath(path), log_info.get(f"std{suffix}_start"), log_info.get(f"std{suffix}_end"))


def job_logs(s: Snapshot, query: Query, job_or_submission_id: str) -> tuple[int, Body]:
    """Submission job logs: the runtime serves job-driver-{submission_id}.log; this says which file."""
    status, job = job_detail(s, query, job_or_submission_id)
    if status != 200:
        return status, job
    if not job.get("submission_id"):
        return 400, f"Job {job_or_submission_id} is a driver job: it has no submission logs"
    return 200, {"node_id": job.get("driver_node_id") or _head_node_id(s),
                 "filename": f"job-driver-{job['submission_id']}.log"}
