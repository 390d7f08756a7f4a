"""/events and /api/v0/cluster_events (platform events: server/platform_events.py)."""

from __future__ import annotations

import datetime as dt

import re

from .api_common import Query, _endpoint_json, _list_body, _list_options, _ok, parse_filters
from .api_nodes import _camel_resource
from .snapshot_model import Snapshot


def _tz(s: Snapshot) -> dt.timezone:
    offset = (_endpoint_json(s, "timezone") or {}).get("offset", "+00:00")
    m = re.fullmatch(r"([+-])(\d\d):?(\d\d)", offset or "")
    if not m:
        return dt.timezone.utc
    delta = dt.timedelta(hours=int(m.group(2)), minutes=int(m.group(3)))
    return dt.timezone(-delta if m.group(1) == "-" else delta)


def _event_time(s: Snapshot, event: dict) -> str:
    try:
        stamp = int(event.get("timestamp", 0))
    except (TypeError, ValueError):
        return ""
    return dt.datetime.fromtimestamp(stamp, _tz(s)).strftime("%Y-%m-%d %H:%M:%S")


def _camel_event(s: Snapshot, event: dict) -> dict:
    out = {}
    for key, value in event.items():
        head, *rest = key.split("_")
        if key == "custom_fields" and isinstance(value, dict):
            value = {_camel_resource(k): v for k, v in value.items()}
        out[head + "".join(p.title() for p in rest)] = value
    out["time"] = _event_time(s, event)
    return out


def _event_job_id(event: dict) -> str:
    return (event.get("custom_fields") or {}).get("job_id", "")


def events(s: Snapshot, query: Query) -> tuple[int, dict]:
    job_id = query.get("job_id")
    if job_id:
        matching = [_camel_event(s, e) for e in s.cluster_events if _event_job_id(e) == job_id]
        return 200, _ok({"jobId": job_id, "events": matching}, "Job events fetched.")
    grouped: dict[str, list] = {"global": []}
    for j in s.driver_jobs:
        grouped[j.job_id] = []
    for e in s.cluster_events:
        grouped.setdefault(_event_job_id(e) or "global", []).append(_camel_event(s, e))
    return 200, _ok({"events": grouped}, "All events fetched.")


CLUSTER_EVENT_COLUMNS = ("severity", "time", "source_type", "message", "event_id")
CLUSTER_EVENT_FILTERABLE = {"event_id", "severity", "source_type"}


def list_cluster_events(s: Snapshot, query: Query) -> tuple[int, dict]:
    rows = [{"severity": e.get("severity"), "time": _event_time(s, e), "source_type": e.get("source_type"),
             "message": e.get("message"), "event_id": e.get("event_id"), "custom_fields": e.get("custom_fields")}
            for e in s.cluster_events]
    limit, detail = _list_options(query)
    filters = parse_filters(query, CLUSTER_EVENT_FILTERABLE)
    kept = [r for r in rows if all(f.match(r[f.column]) for f in filters)]
    shown = CLUSTER_EVENT_COLUMNS + (("custom_fields",) if detail else ())
    return 200, _list_body([{c: r[c] for c in shown} for r in kept[:limit]], len(rows), len(rows), len(kept))

