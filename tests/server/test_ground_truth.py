"""Ground truth: the live Ray 2.60 dashboard's answers (tests/fixtures/ray/api/) against ours.

The fixture session is loaded as the collector stores it: every POST body of the aggregator agent becomes
one gzip'd JSON-lines event batch under its layout key; the head endpoint answers the collector polls
(placement groups, jobs, cluster metadata, timezone, cluster status) are the fixture's own api/ files;
the log index and legacy event files come from the session folder copied after `ray stop`. The session is
built as NOT dead: the fixtures were captured live.

Every request in api/_index.json is either compared field by field (`ALLOWED` lists, in this one place,
the fields that may differ and why) or listed in `NOT_SERVED` with the reason.
"""

from __future__ import annotations

import fnmatch
import gzip
import json
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

import pytest
from multidict import MultiDict

from rayhistory import layout
from rayhistory.server import api
from rayhistory.server.snapshot import Snapshot, SnapshotBuilder
from tests.conftest import API, FIXTURES, HEAD_NODE_ID, SESSION_NAME, received_bodies

REF = layout.SessionRef("ray", "fixture", SESSION_NAME)
SESSION_LOGS = FIXTURES / "session" / SESSION_NAME / "logs"
# The endpoint answers the collector stores, by endpoint name (what it polls on the head).
ENDPOINT_FILES = {
    "placement_groups": "api__v0__placement_groups__detail=1__limit=10000.json",
    "jobs": "api__jobs.json",
    "cluster_metadata": "api__v0__cluster_metadata.json",
    "timezone": "timezone.json",
    "cluster_status": "api__cluster_status__format=1.json",
    "version": "api__version.json",
}


@dataclass(frozen=True)
class Allowed:
    path: str  # regex on the request path (with query)
    field: str  # fnmatch glob on the JSON path ("/data/result/result/<id>/field"); "" is the status line
    reason: str
    tolerance: float = 0.0  # numbers may differ by this much; 0 means any difference is allowed
    ours: int | None = None  # when set: only a difference where our answer is this value
    varies: bool = False  # happens in some runs only (a clock read 1 ms apart): no run proves it is needed
    ours_minus_live: tuple[float, float] | None = None  # numbers: only when lo <= ours - live <= hi


_PROCESS = "live process metrics (CPU, memory, disks, cmdline...) come from the running node; nothing records them"
_GCS_CLOCK = ("the GCS stamps start/end with its own millisecond clock before it records the event: the event's "
              "timestamp (ours) is never earlier, and later by however long that took (1-3 ms idle, 10+ ms loaded)")
# A driver's row in /api/v0/workers is the GCS worker table's: its start_time_ms is stamped when the driver
# registers, its end_time_ms by the raylet when the driver disconnects (CreateWorkerFailureData:
# current_sys_time_ms()). Drivers get no WORKER_LIFECYCLE event, so no event carries either stamp. What the
# events do commit to is an order: the driver task's RUNNING is recorded after the driver registered, its
# FINISHED before the driver disconnects. We answer those two (the closest times any event has), so ours is
# never earlier than the live start and never later than the live end. The gap is however long the driver
# and the raylet took in between: 1-2 ms on an idle machine, 10 ms and more on a busy one (a fixed tolerance
# made the end-to-end run flaky), so only the order and a sanity bound are checked.
_DRIVER_CLOCKS = ("a driver's start/end are the worker table's own clock reads (registration, the raylet's "
                  "disconnect), carried by no event; the driver task's RUNNING/FINISHED bound them")
_DRIVER_GAP_MS = 2000.0
_GCS_GAP_MS = 2000.0  # a sanity bound on that delay, not a measure of it
_CORE_WORKER_STATS = ("ipAddress", "port", "workerId", "numExecutedTasks", "numPendingTasks", "numObjectRefsInScope",
                      "usedResources", "numInPlasma", "numLocalObjects", "usedObjectStoreMemory", "taskQueueLength",
                      "objectRefs", "language", "workerType", "objectsTotal", "numOwnedObjects", "numOwnedActors",
                      "numRunningTasks", "numInFlightArgPinningRequests", "numOfFailedArgPinningRequests")
_NODE_PROCESS_KEYS = ("now", "cpu", "cpus", "mem", "hostMem", "cgroupMem", "shm", "agent", "bootTime", "loadAvg",
                      "disk", "diskIo", "diskIoSpeed", "gpus", "tpus", "network", "networkSpeed", "cmdline", "gcs")
_RAYLET_LIVE_KEYS = ("nodeManagerPort", "objectManagerPort", "metricsExportPort", "metricsAgentPort",
                     "dashboardAgentListenPort", "runtimeEnvAgentPort", "rayletSocketName", "objectStoreSocketName",
                     "tempDir", "sessionDir", "storeStats", "objectStoreAvailableMemory",
                     "stateSnapshot", "nodeTypeName")
_ACTOR_VIEWS = r"^/(logical/actors|nodes/)"
ALLOWED: list[Allowed] = [
    *[Allowed(r"^/nodes", glob, _PROCESS) for key in _NODE_PROCESS_KEYS
      for glob in (f"/data/summary/*/{key}*", f"/data/detail/{key}*")],
    *[Allowed(r"^/nodes", f"/data/*/raylet/{key}", "the raylet's ports, sockets, object store and idle state at "
              "capture: read from the running raylet, in no event") for key in _RAYLET_LIVE_KEYS],
    # objectStoreUsedMemory: we answer 0 (nothing is stored once the session is over); the idle capture head's
    # store was empty too, so it matches. objectStoreAvailableMemory: we answer the store's whole size.
    Allowed(r"^/nodes", "*/raylet/coreWorkersStats*", "processes alive at capture (the raylet's process table); we "
            "list the workers and drivers the events leave alive, e.g. drivers 04-06000000 started by the capture"),
    Allowed(r"^/nodes", "*/raylet/numWorkers", "the same processes, counted"),
    Allowed(r"^/nodes/", "/data/detail/workers*", "the same processes, with their live process stats"),
    Allowed(r"^/nodes\?view=summary", "/data/nodeLogicalResources/*", "logical resource usage at request time"),
    Allowed(_ACTOR_VIEWS, "*/mem", _PROCESS),
    Allowed(_ACTOR_VIEWS, "*/tpus", _PROCESS),
    Allowed(_ACTOR_VIEWS, "*/processStats", _PROCESS),
    *[Allowed(path, f"{prefix}/{name}", "alive_actor was alive at capture: the dashboard merged its worker's "
              "live core-worker stats into the row (a live RPC to the worker; no event carries them)")
      for name in _CORE_WORKER_STATS
      for path, prefix in ((_ACTOR_VIEWS, "*/e8c9d4ea6f2c1968dcf59ee701000000"),
                           (r"^/logical/actors/e8c9d4ea6f2c1968dcf59ee701000000$", "/data/detail"))],
    Allowed(_ACTOR_VIEWS, "*/startTime", _GCS_CLOCK, ours_minus_live=(0, _GCS_GAP_MS)),
    Allowed(_ACTOR_VIEWS, "*/endTime", _GCS_CLOCK, ours_minus_live=(0, _GCS_GAP_MS)),
    Allowed(r"^/api/v0/workers", "/data/result/result/0*ffffffff*/start_time_ms", _DRIVER_CLOCKS,
            ours_minus_live=(0, _DRIVER_GAP_MS)),
    Allowed(r"^/api/v0/workers", "/data/result/result/0*ffffffff*/end_time_ms", _DRIVER_CLOCKS,
            ours_minus_live=(-_DRIVER_GAP_MS, 0)),
    # equal in the fixture run; 1 ms apart in some runs of tests/e2e/test_collector_ray.py's pipeline test
    Allowed(r"^/api/jobs/", "*/start_time", _GCS_CLOCK, ours_minus_live=(0, _GCS_GAP_MS), varies=True),
    Allowed(r"^/api/jobs/", "*/end_time", _GCS_CLOCK, ours_minus_live=(0, _GCS_GAP_MS), varies=True),
    # driver rows (worker id = job id + ff...) whose pid we answer 0: 02/04000000 here, other numbers in the
    # collector's end-to-end run (tests/e2e/test_collector_ray.py), which compares against this list too
    Allowed(r"^/api/v0/workers", "/data/result/result/*" + "ff" * 24 + "/pid",
            "Ray's internal drivers (dashboard agent, DataHead...) get no DRIVER_JOB events: nothing carries their pid",
            ours=0),
    Allowed(r"^/api/v0/workers", "/data/result/result/0[56]000000ff*",
            "drivers 05000000/06000000 were started by the capture itself, after this endpoint was read"),
    Allowed(r"^/api/v0/workers", "/data/result/total", "counts those two drivers too"),
    Allowed(r"^/api/v0/workers", "/data/result/num_*", "counts those two drivers too"),
    Allowed(r"^/api/data/datasets/", "", "the live head had no pandas (503); Ray Data metrics are not recorded, "
                                         "we answer an empty dataset list"),
    Allowed(r"^/api/cluster_status$", "/*", "the collector stores the ?format=1 answer only; we serve it for both"),
    Allowed(r"^/api/grafana_health", "", "we answer Ray's 'Grafana disabled' (200): metrics are not kept"),
    Allowed(r"^/api/grafana_health", "/*", "we answer Ray's 'Grafana disabled' (200): metrics are not kept"),
    Allowed(r"^/api/prometheus_health", "", "200 with result false: the UI's 'no Prometheus', no failed request"),
    Allowed(r"^/api/prometheus_health", "/*", "200 with result false: the UI's 'no Prometheus', no failed request"),
    Allowed(r"^/api/serve/applications/", "", "Serve was not installed on the capture head; we answer Ray's "
                                               "'no Serve instance' (200) so the UI says Serve is not running"),
    Allowed(r"^/api/v0/logs/file", "", "log lookups that fail: Ray answers 500, we answer 404 (same message)"),
]

NOT_SERVED = {
    r"^/api/v0/objects": "objects live in the object store of a running cluster; nothing records them",
    r"^/api/v0/runtime_envs": "runtime env agents' caches of a running cluster",
    r"^/api/(gcs_healthz|healthz|local_raylet_healthz)$": "health probes of live processes (the server has /healthz)",
    r"^/api/component_activities$": "idle/active state of a running cluster's components",
    r"^/cluster_id$": "cluster id of the live GCS (not called by the UI)",
    r"^/(namespaces|utils/jstack)$": "404 in Ray 2.60 too",
    r"^/api/train/v2/runs$": "Ray Train was not installed (500 live); Train state is not recorded",
    r"^/api/prometheus/sd$": "Prometheus service discovery of live metrics agents",
    r"^/$": "the dashboard UI's index.html, served by the runtime with the UI build",
    r"^/api/v0/platform_events$": "the Kubernetes Events the operator kept, read apart from the snapshot "
                                  "(tests/server/test_platform_events_route.py: 404 with none, as here)",
}


# ---- the fixture session, as stored ------------------------------------------------------------


def stored_batches() -> dict[str, bytes]:
    """The aggregator agent's POST bodies as the collector stores them: gzip'd JSON lines, one per POST."""
    out = {}
    for seq, body in enumerate(received_bodies()):
        key = layout.event_batch_key(REF, HEAD_NODE_ID, "fixture", seq, at_ms=1_795_441_680_000 + seq)
        out[key] = gzip.compress(b"\n".join(json.dumps(e, separators=(",", ":")).encode() for e in body))
    return out


def log_files() -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(SESSION_LOGS)), p.stat().st_size) for p in SESSION_LOGS.rglob("*") if p.is_file())


def build_fixture_snapshot(batch_order: list[str] | None = None) -> Snapshot:
    builder = SnapshotBuilder(REF, dead=False, end_ms=0)
    batches = stored_batches()
    for key in batch_order or list(batches):
        builder.add_event_batch(key, batches[key])
    for name, file in ENDPOINT_FILES.items():
        builder.add_endpoint(name, (API / file).read_bytes())
    for relpath, size in log_files():
        builder.add_log_index(HEAD_NODE_ID, relpath, size)
    for path in sorted((SESSION_LOGS / "events").glob("event_*.log")):
        builder.add_legacy_events(f"logs/{path.name}", path.read_bytes())
    return builder.build()


@pytest.fixture(scope="module")
def snapshot() -> Snapshot:
    return build_fixture_snapshot()


# ---- calling the API like the runtime does -----------------------------------------------------

_ROUTES = [(m, re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", p) + "$"), h) for m, p, h in api.ROUTES]


def call(s: Snapshot, method: str, path: str) -> tuple[int, object] | None:
    url = urlsplit(path)
    for route_method, pattern, handler in _ROUTES:
        m = pattern.match(url.path)
        if m and route_method == method:
            query = MultiDict(parse_qsl(url.query, keep_blank_values=True))
            query.update(m.groupdict())
            try:
                status, body = handler(s, query)
            except api.ApiError as exc:
                return exc.status, exc.body()
            return status, json.loads(body) if isinstance(body, bytes) else body
    return None


# ---- field-by-field comparison -----------------------------------------------------------------

_ID_KEYS = ("task_id", "actor_id", "worker_id", "node_id", "placement_group_id", "event_id", "submission_id",
            "job_id", "key")


def _list_id(items: list) -> str | None:
    """The key that identifies the elements of a list of rows, if every row has a distinct one. Task rows
    are attempts: (task_id, attempt_number) identifies them, also when a retried task repeats its id."""
    if not items or not all(isinstance(i, dict) for i in items):
        return None
    for key in _ID_KEYS:
        ids = [_element_id(i, key) if i.get(key) else None for i in items]
        if all(ids) and len(set(ids)) == len(ids):
            return key
    if all(i.get("job_id") or i.get("submission_id") for i in items):
        return "job"
    return None


def _element_id(item: dict, key: str) -> str:
    if key == "job":
        return item.get("submission_id") or item["job_id"]
    if key == "task_id":
        return f"{item['task_id']}:{item.get('attempt_number', 0)}"
    return str(item[key])


def test_the_comparator_keys_task_rows_by_attempt():
    """Issue 10, item 8: with a retried task the ids repeat; keyed by a field shared by every row, the rows
    collapsed into one and only one was compared."""
    live = [{"task_id": "t1", "attempt_number": 0, "state": "FAILED", "job_id": "01"},
            {"task_id": "t1", "attempt_number": 1, "state": "FINISHED", "job_id": "01"},
            {"task_id": "t2", "attempt_number": 0, "state": "FINISHED", "job_id": "01"}]
    ours = [dict(live[0]), dict(live[1], state="FAILED"), dict(live[2])]
    assert _list_id(live) == "task_id"
    assert diff(live, ours) == [("/t1:1/state", "FINISHED", "FAILED")]
    assert diff(live, live[:2]) == [("/t2:0", live[2], "<absent>")]
    assert diff(live, list(reversed(live)))[0][0] == "/<order>"


def diff(live, ours, path: str = "") -> list[tuple[str, object, object]]:
    if isinstance(live, dict) and isinstance(ours, dict):
        out = []
        for k in sorted(live.keys() | ours.keys()):
            out += diff(live.get(k, "<absent>"), ours.get(k, "<absent>"), f"{path}/{k}")
        return out
    if isinstance(live, list) and isinstance(ours, list):
        key = _list_id(live) or _list_id(ours)
        if key and _list_id(live) == _list_id(ours) == key:
            a = {_element_id(i, key): i for i in live}
            b = {_element_id(i, key): i for i in ours}
            out = []
            common = [i for i in a if i in b]
            if common != [i for i in b if i in a]:
                out.append((f"{path}/<order>", common, [i for i in b if i in a]))
            for k in list(a) + [k for k in b if k not in a]:
                out += diff(a.get(k, "<absent>"), b.get(k, "<absent>"), f"{path}/{k}")
            return out
        if len(live) != len(ours):
            return [(f"{path}/<len>", len(live), len(ours))]
        return [d for i, (x, y) in enumerate(zip(live, ours)) for d in diff(x, y, f"{path}/{i}")]
    if live != ours or type(live) is not type(ours):
        return [(path, live, ours)]
    return []


def _explains(allowed: Allowed, request: str, field: str, live, ours) -> bool:
    if not re.search(allowed.path, request) or not fnmatch.fnmatchcase(field, allowed.field or ""):
        return False
    if allowed.ours is not None and ours != allowed.ours:
        return False
    if allowed.ours_minus_live is not None:
        lo, hi = allowed.ours_minus_live
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in (live, ours))
        return numbers and lo <= ours - live <= hi
    return not allowed.tolerance or (isinstance(live, (int, float)) and isinstance(ours, (int, float))
                                     and abs(live - ours) <= allowed.tolerance)


def unexplained(request: str, differences: list[tuple[str, object, object]], used: set | None = None) -> list:
    """The differences no ALLOWED entry explains; `used` collects every entry that explains one."""
    left = []
    for field, live, ours in differences:
        explaining = [a for a in ALLOWED if _explains(a, request, field, live, ours)]
        if used is not None:
            used.update(explaining)
        if not explaining:
            left.append((field, live, ours))
    return left


# ---- the captured requests ---------------------------------------------------------------------

INDEX = json.loads((API / "_index.json").read_text())


def _live_body(entry: dict):
    text = (API / entry["file"]).read_text()
    try:
        return json.loads(text) if "json" in entry["content_type"] else text
    except ValueError:
        return text


def _ids(entries):
    return [f"{e['method']} {e['path'][:90]}" for e in entries]


LISTING_REQUESTS = [e for e in INDEX if e["path"].startswith("/api/v0/logs?")]
DATA_REQUESTS = [e for e in INDEX if not e["path"].startswith("/api/v0/logs")
                 and not re.match(r"^/api/jobs/[^/]+/logs$", e["path"])
                 and not any(re.search(p, e["path"]) for p in NOT_SERVED)]


def test_every_capture_is_classified(snapshot):
    """A new capture must be compared or explicitly listed as not served (with a reason)."""
    for entry in INDEX:
        path = entry["path"]
        served = any(re.search(p, path) for p in NOT_SERVED)
        if entry["method"] == "HEAD":
            continue  # the UI's HEAD probe of platform_events; the runtime answers HEAD from the GET route
        if path.startswith("/api/v0/logs") or re.match(r"^/api/jobs/[^/]+/logs$", path):
            continue  # checked by the log tests below
        assert served or call(snapshot, "GET", path) is not None, path


@pytest.mark.parametrize("entry", [e for e in DATA_REQUESTS if e["method"] == "GET"],
                         ids=_ids([e for e in DATA_REQUESTS if e["method"] == "GET"]))
def test_answer_matches_live_dashboard(snapshot, entry):
    answer = call(snapshot, "GET", entry["path"])
    assert answer is not None, f"no route for {entry['path']}"
    status, body = answer
    differences = diff(_live_body(entry), body)
    if status != entry["status"]:
        differences.append(("", entry["status"], status))
    assert unexplained(entry["path"], differences) == []


def test_every_allowed_difference_is_needed(snapshot):
    """The allow-list stays honest: each entry explains at least one difference."""
    used: set[Allowed] = set()
    for entry in DATA_REQUESTS:
        if entry["method"] != "GET":
            continue
        status, body = call(snapshot, "GET", entry["path"])
        differences = diff(_live_body(entry), body)
        if status != entry["status"]:
            differences.append(("", entry["status"], status))
        unexplained(entry["path"], differences, used)
    for entry in LOG_REQUESTS:
        if entry["status"] != 200:
            used.update(a for a in ALLOWED if re.search(a.path, entry["path"]) and a.field == "")
    assert [a for a in ALLOWED if a not in used and not a.varies] == []


def test_head_probe_of_platform_events(snapshot):
    """The capture had platform events off: Ray answered 404, which the route gives a session with none kept."""
    entry = next(e for e in INDEX if e["method"] == "HEAD")
    assert entry["path"] == "/api/v0/platform_events" and entry["status"] == 404


# ---- log files: resolution from the snapshot, content from the stored session folder -------------

LOG_REQUESTS = [e for e in INDEX if e["path"].startswith("/api/v0/logs/file")]


def _strip_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)


@pytest.mark.parametrize("entry", LOG_REQUESTS, ids=_ids(LOG_REQUESTS))
def test_log_file_resolution(snapshot, entry):
    """Which file (and byte range) a log request names; the bytes the live head sent are in that file.

    The session folder was copied after `ray stop`, so files kept growing after the capture: the live
    answer (a tail at capture time) must be a contiguous part of the stored file, not all of it.
    """
    query = MultiDict(parse_qsl(urlsplit(entry["path"]).query, keep_blank_values=True))
    live = (API / entry["file"]).read_text()
    if entry["status"] != 200:
        with pytest.raises(api.ApiError) as failure:
            api.resolve_log_file(snapshot, query)
        assert failure.value.message.strip() == live.strip()
        return
    resolved = api.resolve_log_file(snapshot, query)
    assert resolved.node_id == HEAD_NODE_ID
    layout.check_relpath(resolved.filename)
    data = (SESSION_LOGS / resolved.filename).read_bytes()
    if resolved.start is not None:
        data = data[resolved.start:resolved.end]
    text = data.decode("utf-8", "replace")
    if query.get("filter_ansi_code") == "true":
        text = _strip_ansi(text)
    assert live in text


@pytest.mark.parametrize("submission_id", ["fixture_submitted_job", "fixture_submitted_job_ok"])
def test_job_logs_file(snapshot, submission_id):
    status, where = api.job_logs(snapshot, {}, submission_id)
    assert status == 200 and where["node_id"] == HEAD_NODE_ID
    live = json.loads((API / f"api__jobs__{submission_id}__logs.json").read_text())["logs"]
    assert (SESSION_LOGS / where["filename"]).read_text().startswith(live)


def test_log_listing_matches_live_as_sets(snapshot):
    """The agent lists files in directory order; we list them sorted. Same files in the same groups, except:
    the live node had empty folders (the log index holds files), and drivers 05000000/06000000 (pids 9785,
    9789) were started by the capture itself, after the listing was taken."""
    for entry in LISTING_REQUESTS:
        status, body = call(snapshot, "GET", entry["path"])
        assert status == 200
        live = {(group, f) for group, files in json.loads((API / entry["file"]).read_text())["data"]["result"].items()
                for f in files}
        ours = {(group, f) for group, files in body["data"]["result"].items() for f in files}
        assert {f for _, f in live - ours} <= {"nsight/", "old/", "profiles/", "rocprof_sys/"}
        assert ours - live and all(re.search(r"_(9785|9789)\.log$", f) for _, f in ours - live)


def test_ray_data_is_served_from_the_collectors_last_poll():
    """Issue 10, item 9: the datasets answer the collector stored for a job (endpoint datasets_<job id>)."""
    builder = SnapshotBuilder(REF, dead=True, end_ms=1)
    answer = b'{"datasets": [{"dataset": "dataset_1_0", "job_id": "01000000", "state": "FINISHED"}]}'
    builder.add_endpoint("datasets_01000000", answer)
    s = builder.build()
    assert call(s, "GET", "/api/data/datasets/01000000") == (200, json.loads(answer))
    assert call(s, "GET", "/api/data/datasets/02000000") == (200, {"datasets": []})


def test_driver_times_are_compared_by_the_order_the_events_commit_to():
    """Issue 9 item 11: a loaded machine ran a driver's disconnect 10 ms after its FINISHED event, and a fixed
    3 ms tolerance failed the end-to-end comparison. Ours may trail the live start and lead the live end by
    any realistic gap, never the other way round."""
    path = "/api/v0/workers?detail=1&limit=10000"
    row = "/data/result/result/04000000" + "ff" * 24
    assert unexplained(path, [(row + "/end_time_ms", 1_000_010, 1_000_000)]) == []  # FINISHED 10 ms before
    assert unexplained(path, [(row + "/start_time_ms", 1_000_000, 1_000_012)]) == []  # RUNNING 12 ms after
    for field, live, ours in ((row + "/end_time_ms", 1_000_000, 1_000_001),  # after the live end: wrong
                              (row + "/start_time_ms", 1_000_001, 1_000_000),  # before the live start: wrong
                              (row + "/end_time_ms", 1_000_000, 0),  # no end at all
                              (row + "/end_time_ms", 1_010_000, 1_000_000)):  # 10 s off: another moment
        assert unexplained(path, [(field, live, ours)]) == [(field, live, ours)]
    # a worker that is not a driver has its times in its WORKER_LIFECYCLE event: compared exactly
    worker = "/data/result/result/" + "ab" * 28
    assert unexplained(path, [(worker + "/end_time_ms", 1_000_010, 1_000_000)]) != []


def test_gcs_stamped_times_may_only_trail_the_live_answer():
    """A loaded CI run recorded a job's DRIVER_JOB event 12 ms after the GCS stamped its start_time, and a fixed
    3 ms tolerance failed the end-to-end comparison. The event is recorded after the stamp: ours may trail the
    live time by a realistic delay, never lead it."""
    cases = [("/api/jobs/", "/04000000/start_time"), ("/api/jobs/", "/04000000/end_time"),
             ("/logical/actors", "/data/actors/" + "ab" * 16 + "/startTime"),
             ("/logical/actors", "/data/actors/" + "ab" * 16 + "/endTime")]
    for path, field in cases:
        assert unexplained(path, [(field, 1_000_000, 1_000_012)]) == []  # recorded 12 ms after the stamp
        for live, ours in ((1_000_001, 1_000_000), (1_000_000, 1_010_000)):  # before the stamp; 10 s later
            assert unexplained(path, [(field, live, ours)]) == [(field, live, ours)]
