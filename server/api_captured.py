"""An imported session (`rayhistory import`): the live dashboard's captured answers, replayed (pure).

The import stored each answer it got under `layout.capture_endpoint(path, query)`, so a request the UI makes
again finds the exact bytes the live dashboard sent: replaying keeps every field, order and cap the live
API had, where rebuilding them from the few objects an import has would not. Two kinds of request are not
captured one by one and are answered from what was:
- a state list (api/v0/tasks, actors, ...) with filters the import did not ask (the task page's
  filter_keys=task_id): Ray's filters over the captured full list, then its limit;
- anything else falls through to the server's own handlers, which read the collector-named endpoints the
  import stored too (jobs, placement groups, cluster status, ...) and answer the rest as a dead session's
  "not recorded" shapes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from rayhistory import layout

from .api_common import ApiError, Body, Query, _getall, _list_body, _list_options, parse_filters
from .api_logs import ResolvedLog, _worker_file, logs_relpath
from .snapshot import Snapshot

STATE_LISTS = frozenset(f"api/v0/{name}" for name in
                        ("tasks", "actors", "nodes", "workers", "jobs", "placement_groups", "cluster_events"))
_CAPTURED_LIMIT = (("limit", "10000"),)


def is_imported(s: Snapshot) -> bool:
    return layout.IMPORT_MANIFEST in s.endpoints


def import_summary(s: Snapshot) -> dict:
    """What the import manifest says was left out, for the status page and the banner."""
    try:
        found = json.loads(s.endpoints.get(layout.IMPORT_MANIFEST, b"{}"))
    except (ValueError, RecursionError):
        found = None
    found = found if isinstance(found, dict) else {}

    def listed(name: str) -> list:
        value = found.get(name)
        return value if isinstance(value, list) else []
    return {"captured_ms": found.get("captured_ms") if isinstance(found.get("captured_ms"), int) else 0,
            "skipped": listed("skipped")[:100], "logs_truncated": listed("logs_truncated")[:100],
            "nodes_without_logs": listed("nodes_without_logs")[:100]}


def captured(s: Snapshot, path: str, query: Iterable[tuple[str, str]]) -> bytes | None:
    try:
        return s.endpoints.get(layout.capture_endpoint(path, query))
    except layout.LayoutError:  # a request too long to have been captured
        return None


def _rows(answer: bytes | None) -> tuple[dict, list[dict]] | None:
    try:
        body = json.loads(answer) if answer is not None else None
    except (ValueError, RecursionError):
        return None
    envelope = body
    for key in ("data", "result"):
        envelope = envelope.get(key) if isinstance(envelope, dict) else None
    rows = envelope.get("result") if isinstance(envelope, dict) else None
    if not isinstance(rows, list):
        return None
    return envelope, [r for r in rows if isinstance(r, dict)]


def filtered_list(s: Snapshot, path: str, query: Query) -> dict | None:
    """A state list the import did not ask for, from the captured list of the same detail (None: nothing
    captured to answer from)."""
    if path not in STATE_LISTS:
        return None
    limit, detail = _list_options(query)
    full = _rows(captured(s, path, ((("detail", "1"),) if detail else ()) + _CAPTURED_LIMIT))
    if full is None:
        return None
    envelope, rows = full
    filters = parse_filters(query, {key for row in rows for key in row})
    kept = [r for r in rows if all(f.column in r and f.match(r[f.column]) for f in filters)]
    body = _list_body(kept[:limit], len(kept), len(kept), len(kept))
    body["data"]["result"]["partial_failure_warning"] = envelope.get("partial_failure_warning", "")
    body["data"]["result"]["warnings"] = envelope.get("warnings")
    return body


def answer(s: Snapshot, path: str, query: Query) -> Body | None:
    """What an imported session answers for `path` (relative to the session root) and `query`, or None for
    the server's own handler. Raises ApiError for a filter Ray refuses."""
    pairs = [(k, v) for k in dict.fromkeys(query) for v in _getall(query, k)]
    found = captured(s, path, pairs)
    return found if found is not None else filtered_list(s, path, query)


def _captured_tasks(s: Snapshot) -> list[dict] | None:
    found = _rows(captured(s, "api/v0/tasks", (("detail", "1"),) + _CAPTURED_LIMIT))
    return found[1] if found is not None else None


def failed_tasks(s: Snapshot) -> int | None:
    """Failed task attempts of an imported session's captured list (None: not an imported session)."""
    if not is_imported(s):
        return None
    return sum(1 for r in _captured_tasks(s) or [] if r.get("state") == "FAILED")


def _is_node_id(value: str) -> bool:
    try:
        layout.check_node_id(value)
    except layout.LayoutError:
        return False
    return True


def task_log(s: Snapshot, task_id: str, attempt: int, suffix: str) -> ResolvedLog | None:
    """Which file and byte range holds a task attempt's output, from the captured task list (its
    task_log_info), as Ray's state head finds it; None if the capture does not have the attempt."""
    row = next((r for r in _captured_tasks(s) or [] if r.get("task_id") == task_id
                and r.get("attempt_number") == attempt), None)
    if row is None:
        return None
    info: Any = row.get("task_log_info")
    path = info.get(f"std{suffix}_file") if isinstance(info, dict) else None
    node_id = row.get("node_id")
    if not isinstance(path, str) or not isinstance(node_id, str) or not _is_node_id(node_id):
        raise ApiError(404, f"Could not find log file for task attempt:{task_id}({attempt})")
    start, end = info.get(f"std{suffix}_start"), info.get(f"std{suffix}_end")
    return ResolvedLog(node_id, logs_relpath(path), start if isinstance(start, int) else None,
                       end if isinstance(end, int) else None)


def actor_log(s: Snapshot, actor_id: str, suffix: str) -> ResolvedLog | None:
    """An actor's worker log, from the captured actor list (its node and pid name the worker's file among the
    stored ones); None if the capture does not have the actor."""
    found = _rows(captured(s, "api/v0/actors", (("detail", "1"),) + _CAPTURED_LIMIT))
    row = next((r for r in (found[1] if found else []) if r.get("actor_id") == actor_id), None)
    if row is None:
        return None
    node_id, pid = row.get("node_id"), row.get("pid")
    path = _worker_file(s, node_id, suffix, pid=pid) if isinstance(node_id, str) and _is_node_id(node_id) \
        and isinstance(pid, int) and not isinstance(pid, bool) and pid > 0 else None
    if path is None:
        raise ApiError(404, f"Could not find a log file of actor {actor_id} (suffix {suffix}) in the imported logs")
    return ResolvedLog(node_id, path)
