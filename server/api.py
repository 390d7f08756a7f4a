"""The Ray 2.60 dashboard API, answered from a Snapshot: pure functions, one per path.

Each handler is `(snapshot, query) -> (status, body)`; body is a dict/list (sent as JSON), str (text/plain)
or bytes (an endpoint answer stored verbatim, JSON). `query` is the request's query mapping; repeated
keys (filter_keys, ...) are read with `getall` when the mapping has it (aiohttp's MultiDictProxy).
Shapes, field names, sorting and counters follow Ray 2.60's own code (ray/dashboard/state_aggregator.py,
ray/util/state/common.py, ray/_private/profiling.py; Apache-2.0), so the unmodified UI works. Unlike
Ray, a limit above 10,000 is honoured: `total` always reports the full count.

`ROUTES` lists every path (relative to the session root) with its handler, for the runtime to register.
The handlers live in one module per resource, as Ray's state code is split: api_tasks, api_summaries,
api_timeline, api_actors, api_nodes (nodes and workers), api_jobs (jobs and placement groups), api_events,
api_logs and api_cluster (head endpoints stored verbatim, version, the UI's probes); api_common holds
what they share. Log files are served by the runtime; the pure parts it needs are `resolve_log_file`
(/api/v0/logs/file and /stream: task_id, actor_id, pid or filename -> node, file, byte range) and
`job_logs` (/api/jobs/{id}/logs: which job-driver log file); `list_logs` (/api/v0/logs) is a route here.
/api/v0/platform_events (the Kubernetes Events the operator kept) is read apart from the snapshot
(server/platform_events.py).

What the live dashboard reads from running processes (process metrics, core-worker stats, the object
store) is absent or empty, shaped so the UI renders; docs/dead-sessions.md says how a dead session ends
what was still alive.
"""

from __future__ import annotations

from .api_actors import list_actors, logical_actor_detail, logical_actors
from .api_cluster import (
    authentication_mode, cluster_metadata, cluster_status, datasets, grafana_health, profiling_enabled,
    prometheus_health, runtime_env_redaction, serve_applications, timezone, usage_stats_enabled, version,
)
from .api_common import ApiError, Body, Handler, Query, _with
from .api_events import events, list_cluster_events
from .api_jobs import job_detail, jobs, list_jobs, list_placement_groups
from .api_logs import ResolvedLog, _resolve_task_log, job_logs, list_logs, resolve_log_file
from .api_nodes import list_nodes, list_workers, node_detail, nodes
from .api_summaries import summarize_actors, summarize_tasks
from .api_tasks import list_tasks
from .api_timeline import task_timeline

# what the runtime and the tests use besides ROUTES
__all__ = ["HEAD_ONLY", "ROUTES", "ApiError", "Body", "Handler", "Query", "ResolvedLog", "job_logs", "resolve_log_file",
           "_resolve_task_log"]

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

# The routes answered from a snapshot's head alone (snapshot_model.TaskSection.head_view: no tasks but the
# drivers): a session read from its compacted snapshot answers them while its tasks are still being decoded.
# test_lazy_tasks checks each against the whole snapshot.
HEAD_ONLY: frozenset[str] = frozenset({
    "/api/v0/actors", "/api/v0/actors/summarize", "/api/v0/nodes", "/api/v0/jobs", "/api/v0/placement_groups",
    "/api/v0/workers", "/api/v0/cluster_events", "/api/v0/cluster_metadata", "/api/v0/runtime_env_redaction",
    "/api/v0/logs", "/logical/actors", "/nodes/{node_id}",
    "/logical/actors/{actor_id}", "/nodes", "/api/jobs/", "/api/jobs/{job_id}", "/events", "/api/cluster_status",
    "/api/serve/applications/", "/api/data/datasets/{job_id}", "/timezone", "/api/version", "/api/ray/version",
    "/usage_stats_enabled", "/api/authentication_mode", "/api/profiling_enabled", "/api/grafana_health",
    "/api/prometheus_health",
})

