"""What `rayhistory import` asks a live dashboard, decided from its answers (pure; importer.py does the I/O).

Every answer is untrusted input: it may be huge (the importer bounds its size before it gets here), not JSON,
or JSON of any shape. Whatever cannot be read yields nothing (no ids, no files), never an exception, and
every id or file name taken from an answer is checked by rayhistory.layout before it goes into a request,
so nothing the dashboard says can make the importer ask for, or store, anything outside its session.

The requests are the ones the Ray 2.60 UI makes (tests/fixtures/ray/dashboard_frontend_api_paths.txt), in
two rounds: the fixed ones, then those per job, actor and node the first round names. The UI's own answers
(authentication mode, profiling, Grafana/Prometheus probes) are left to the server: an imported session has
no process left to profile or authenticate against.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from . import layout
from .collector.dashboard_poll import ENDPOINTS, VERSION_PATH

LIST_LIMIT = "10000"  # what the UI asks for, and what Ray caps its lists at: an import stays capped the same


@dataclass(frozen=True)
class Request:
    """One GET of the dashboard: a path relative to its root and the query pairs."""

    path: str
    query: tuple[tuple[str, str], ...] = ()

    @property
    def url(self) -> str:
        return "/" + self.path + ("?" + urlencode(self.query) if self.query else "")

    @property
    def endpoint(self) -> str:
        return layout.capture_endpoint(self.path, self.query)

    @property
    def canonical(self) -> str:
        return layout.canonical_request(self.path, self.query)


def request_of(url: str) -> Request:
    """A Request from a path with its query (the collector poller's ENDPOINTS spelling)."""
    path, _, query = url.partition("?")
    pairs = tuple(tuple(p.split("=", 1)) for p in query.split("&") if p) if query else ()
    return Request(path.lstrip("/"), pairs)  # type: ignore[arg-type]


def _filter(key: str, value: str) -> tuple[tuple[str, str], ...]:
    return (("filter_keys", key), ("filter_predicates", "="), ("filter_values", value))


_DETAIL = (("detail", "1"), ("limit", LIST_LIMIT))
STATE_LISTS = ("tasks", "actors", "nodes", "workers", "jobs", "placement_groups", "cluster_events")

# The first round. The collector's own endpoints come first (the server's answers without a capture read
# them), then what the UI and the state API answer from.
FIXED: tuple[Request, ...] = tuple(dict.fromkeys((  # once each: the poller's placement groups are a state list too
    Request(VERSION_PATH.lstrip("/")),
    *(request_of(url) for url in ENDPOINTS.values()),
    Request("api/ray/version"),
    Request("api/cluster_status"),
    Request("usage_stats_enabled"),
    Request("api/v0/runtime_env_redaction"),
    Request("nodes", (("view", "summary"),)),
    Request("logical/actors"),
    Request("events"),
    *(Request(f"api/v0/{name}", q) for name in STATE_LISTS for q in (_DETAIL, (("limit", LIST_LIMIT),), ())),
    Request("api/v0/tasks/summarize"),
    Request("api/v0/tasks/summarize", (("summary_by", "lineage"),)),
    Request("api/v0/actors/summarize"),
    Request("api/v0/tasks/timeline", (("download", "1"),)),
    Request("api/v0/platform_events"),  # a head that may watch Kubernetes answers it (else 404: the server's own)
)))
MAX_NODES = 10_000  # nodes of one cluster an import reads (Ray's own lists stop at 10,000 too)

# collector endpoint name -> its request: stored under that name too, so the server's own handlers (which
# read the poller's endpoints) see them when no captured answer fits a request
POLLED: dict[str, Request] = {"version": Request(VERSION_PATH.lstrip("/")),
                              **{name: request_of(url) for name, url in ENDPOINTS.items()}}


def parse(body: bytes | None) -> Any:
    """JSON, or None for anything that is not (bad bytes, nesting too deep for the parser)."""
    if body is None:
        return None
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


def _get(value: Any, *path: str) -> Any:
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _checked(values: Any, check, limit: int) -> list[str]:
    """Distinct values that pass `check` (a layout check), in order, at most `limit`."""
    out: dict[str, None] = {}
    for value in values:
        if len(out) >= limit:
            break
        try:
            out[check(value)] = None
        except (layout.LayoutError, TypeError):
            continue
    return list(out)


def _hex_id(value: Any) -> str:
    if not layout.is_hex_id(value):
        raise layout.LayoutError("not a hex id")
    return value


def job_ids(jobs_answer: Any, limit: int) -> list[str]:
    """The ids the UI opens a job by (api/jobs/ rows: submission id, else job id)."""
    rows = jobs_answer if isinstance(jobs_answer, list) else []
    ids = []
    for row in rows:
        if isinstance(row, dict):
            ids += [row.get("submission_id"), row.get("job_id")]
    return _checked((i for i in ids if i), lambda v: layout.check_name(v, "job id"), limit)


def driver_job_ids(jobs_answer: Any, limit: int) -> list[str]:
    """Ray job ids (hex) of api/jobs/ rows: the tasks, summaries and events per job are keyed by them."""
    rows = jobs_answer if isinstance(jobs_answer, list) else []
    return _checked((r.get("job_id") for r in rows if isinstance(r, dict)), _hex_id, limit)


def actor_ids(logical_actors_answer: Any, limit: int) -> list[str]:
    actors = _get(logical_actors_answer, "data", "actors")
    return _checked(actors if isinstance(actors, dict) else (), _hex_id, limit)


def node_ids(nodes_summary_answer: Any, limit: int) -> list[str]:
    summary = _get(nodes_summary_answer, "data", "summary")
    rows = summary if isinstance(summary, list) else []
    return _checked((_get(r, "raylet", "nodeId") for r in rows), layout.check_node_id, limit)


def alive_node_ids(nodes_summary_answer: Any, limit: int) -> list[str]:
    """Nodes whose agent can still serve their logs (a dead node's log files went with it)."""
    summary = _get(nodes_summary_answer, "data", "summary")
    rows = summary if isinstance(summary, list) else []
    alive = (_get(r, "raylet", "nodeId") for r in rows if _get(r, "raylet", "state") == "ALIVE")
    return _checked(alive, layout.check_node_id, limit)


def detail_requests(answers: dict[Request, Any], limit: int) -> list[Request]:
    """The second round: what the UI asks per job, actor and node named in the first round's answers."""
    jobs = answers.get(Request("api/jobs/"))
    out: list[Request] = []
    for job in job_ids(jobs, limit):
        out.append(Request(f"api/jobs/{job}"))
    for job in driver_job_ids(jobs, limit):
        out += [
            Request("api/v0/tasks", _DETAIL + _filter("job_id", job)),
            Request("api/v0/tasks/summarize", _filter("job_id", job)),
            Request("api/v0/tasks/summarize", _filter("job_id", job) + (("summary_by", "lineage"),)),
            Request("api/v0/tasks/timeline", (("download", "1"), ("job_id", job))),
            Request("events", (("job_id", job),)),
            Request(f"api/data/datasets/{job}"),
        ]
    out += [Request(f"logical/actors/{a}") for a in actor_ids(answers.get(Request("logical/actors")), limit)]
    nodes = answers.get(Request("nodes", (("view", "summary"),)))
    out += [Request(f"nodes/{n}") for n in node_ids(nodes, limit)]
    return out[:limit]


@dataclass(frozen=True)
class LogListing:
    files: list[str]  # relative to the session's logs folder, checked by layout.check_relpath
    folders: list[str]  # to list next (glob "{folder}/*")
    refused: list[str]  # names that would leave the session's logs folder (or are no name), shown truncated


def log_listing(answer: Any, limit: int) -> LogListing:
    """The files and folders of one api/v0/logs answer ({"data": {"result": {category: [name, ...]}}})."""
    categories = _get(answer, "data", "result")
    files: dict[str, None] = {}
    folders: dict[str, None] = {}
    refused: list[str] = []
    for names in (categories.values() if isinstance(categories, dict) else ()):
        for name in names if isinstance(names, list) else ():
            if len(files) + len(folders) >= limit:
                break
            folder = isinstance(name, str) and name.endswith("/")
            relpath = name[:-1] if folder else name
            try:
                layout.check_relpath(relpath)
            except layout.LayoutError:
                refused.append(repr(name)[:100])
                continue
            (folders if folder else files)[relpath] = None
    return LogListing(list(files), list(folders), refused[:100])


def log_list_request(node_id: str, folder: str = "") -> Request:
    query = (("node_id", layout.check_node_id(node_id)),)
    return Request("api/v0/logs", query + ((("glob", f"{layout.check_relpath(folder)}/*"),) if folder else ()))


def log_file_request(node_id: str, relpath: str) -> Request:
    return Request("api/v0/logs/file", (("node_id", layout.check_node_id(node_id)),
                                         ("filename", layout.check_relpath(relpath)), ("lines", "-1")))
