"""Head endpoints stored verbatim (cluster status, Serve, Ray Data, metadata, timezone), the version and
the UI's probes."""

from __future__ import annotations

from .api_common import Body, Query, _endpoint_json, _ok
from .snapshot_model import Snapshot


def cluster_status(s: Snapshot, query: Query) -> tuple[int, Body]:
    stored = s.endpoints.get("cluster_status")
    if stored is not None:
        return 200, stored
    return 200, _ok({"clusterStatus": "The cluster is gone; no autoscaler status was recorded."},
                    "Got formatted cluster status.")


def serve_applications(s: Snapshot, query: Query) -> tuple[int, Body]:
    stored = s.endpoints.get("serve_applications")
    if stored is not None:
        return 200, stored
    # what a head with Ray Serve installed answers when no Serve instance runs (ServeInstanceDetails.
    # get_empty_schema_dict): the UI shows its "Serve not running" notice, not an error (a head without Serve
    # installed answers 501, which the UI shows as a raw AxiosError)
    return 200, {"controller_info": {}, "proxies": {}, "applications": {}, "target_capacity": None}


def datasets(s: Snapshot, query: Query, job_id: str) -> tuple[int, Body]:
    # the collector's last poll of the job's datasets (collector/dashboard_poll.py); without one, an empty list
    # renders as "no datasets"
    stored = s.endpoints.get(f"datasets_{job_id}")
    if stored is not None:
        return 200, stored
    return 200, {"datasets": []}


def cluster_metadata(s: Snapshot, query: Query) -> tuple[int, Body]:
    stored = s.endpoints.get("cluster_metadata")
    if stored is not None:
        return 200, stored
    return 200, _ok({"rayVersion": "", "pythonVersion": "", "rayInitCluster": False})


def timezone(s: Snapshot, query: Query) -> tuple[int, Body]:
    stored = s.endpoints.get("timezone")
    if stored is not None:
        return 200, stored
    return 200, {"offset": "+00:00", "value": "UTC"}


def version(s: Snapshot, query: Query) -> tuple[int, dict]:
    stored = _endpoint_json(s, "version")
    if isinstance(stored, dict):
        return 200, {**stored, "session_name": s.session}
    metadata = _endpoint_json(s, "cluster_metadata") or {}
    ray_version = (metadata.get("data") or {}).get("rayVersion", "")
    return 200, {"version": "4", "ray_version": ray_version, "ray_commit": "", "session_name": s.session}


def usage_stats_enabled(s: Snapshot, query: Query) -> tuple[int, dict]:
    return 200, _ok({"usageStatsEnabled": False, "usageStatsPromptEnabled": True}, "Fetched usage stats enabled")


def authentication_mode(s: Snapshot, query: Query) -> tuple[int, dict]:
    return 200, {"authentication_mode": "disabled"}


def profiling_enabled(s: Snapshot, query: Query) -> tuple[int, dict]:
    # no process is left to profile; the defaults keep the UI's form happy
    return 200, _ok({"profilingEnabled": False, "profilingDefaults": {
        "native": False, "subprocesses": False, "idle": False, "leaks": False, "tracePythonAllocators": False,
        "cpuDuration": 5, "memoryDuration": 10, "maxDuration": 60, "cpuFormat": "flamegraph",
        "memoryFormat": "flamegraph", "pyspyNativeSupported": True}})


def runtime_env_redaction(s: Snapshot, query: Query) -> tuple[int, dict]:
    return 200, _ok({"redactionEnabled": True})


GRAFANA_DISABLED = "DISABLED"  # Ray's GRAFANA_HOST_DISABLED_VALUE


def grafana_health(s: Snapshot, query: Query) -> tuple[int, dict]:
    # Ray's answer when Grafana is turned off (RAY_GRAFANA_HOST=DISABLED, metrics_head.py): the UI hides the
    # Metrics tab and shows the panels as not configured, with no failed request. Metrics are not kept.
    return 200, _ok({"grafanaHost": GRAFANA_DISABLED}, "Grafana disabled")


def prometheus_health(s: Snapshot, query: Query) -> tuple[int, dict]:
    # Ray has no "disabled" answer here; result false is what the UI reads as "no Prometheus" (it only looks
    # at `result`), and a 200 keeps the browser's console and the access log free of failures.
    return 200, {"result": False, "msg": "prometheus healthcheck failed: metrics are not kept by the history server",
                 "data": {}}
