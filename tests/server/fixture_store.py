"""Write the fixture session into a store exactly as the collector writes it.

- events: one gzip'd JSON-lines object per aggregator POST (layout.event_batch_key), each line the compact
  JSON of one accepted event (events.accept_events), named after the time the POST was received;
- logs: every file of the captured session folder as log parts (layout.log_part_key); files larger than
  `split_logs_over` bytes are uploaded as two parts that overlap, as an incremental upload can;
- endpoints: the live dashboard answers the head's collector polls (layout.endpoint_key), stored as the
  response body, byte for byte;
- index: a `live` record and, for a dead session, a `dead` record (rayhistory.index).

Other tests reuse `write_fixture_session`; `raw_event_keys` etc. let a test damage or add single objects.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import json

from rayhistory import layout
from rayhistory.events import accept_events
from rayhistory.index import IndexRecord, encode_record
from rayhistory.layout import IndexKind, SessionRef
from rayhistory.store import Store
from tests.conftest import API, FIXTURES, HEAD_NODE_ID, RECEIVED, SESSION_NAME

SESSION_DIR = FIXTURES / "session" / SESSION_NAME
WRITER = "fixture0000"

# endpoint name (as the collector stores it) -> the captured live answer it polls
ENDPOINT_ANSWERS = {
    "placement_groups": "api__v0__placement_groups__detail=1__limit=10000.json",
    "jobs": "api__jobs.json",
    "cluster_metadata": "api__v0__cluster_metadata.json",
    "timezone": "timezone.json",
    "cluster_status": "api__cluster_status__format=1.json",
}


def fixture_ref(namespace: str = "ray", cluster: str = "demo", session: str = SESSION_NAME) -> SessionRef:
    return SessionRef(namespace, cluster, session)


def event_batches() -> list[tuple[int, bytes]]:
    """(received at, unix ms; gzip'd JSON lines) for every POST of the fixture run, in arrival order."""
    out = []
    for path in sorted(RECEIVED.glob("*.json")):
        record = json.loads(path.read_text())
        accepted, errors = accept_events(json.dumps(record["body"]).encode())
        assert not errors, errors
        lines = b"".join(e.raw + b"\n" for e in accepted)
        out.append((int(record["received_at_unix"] * 1000), gzip.compress(lines)))
    return out


def log_files() -> dict[str, bytes]:
    """relpath under logs/ -> content, for every file the layout accepts."""
    root = SESSION_DIR / "logs"
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            relpath = path.relative_to(root).as_posix()
            try:
                layout.check_relpath(relpath)
            except layout.LayoutError:
                continue
            out[relpath] = path.read_bytes()
    return out


async def write_fixture_session(
    store: Store, ref: SessionRef | None = None, dead: bool = True, split_logs_over: int = 4096,
    with_logs: bool = True,
) -> SessionRef:
    ref = ref or fixture_ref()
    start_ms = layout.session_start_ms(ref.session)
    for seq, (at_ms, data) in enumerate(event_batches(), start=1):
        await store.put(layout.event_batch_key(ref, HEAD_NODE_ID, WRITER, seq, at_ms), data)
    if with_logs:
        for relpath, content in log_files().items():
            await write_log_file(store, ref, relpath, content, split_logs_over)
    last_ms = max(at for at, _ in event_batches())
    for endpoint, name in ENDPOINT_ANSWERS.items():
        await store.put(layout.endpoint_key(ref, endpoint, WRITER, last_ms), (API / name).read_bytes())
    await write_index(store, ref, IndexKind.LIVE, start_ms, owner_kind="RayJob", owner_name="nightly")
    if dead:
        await write_index(store, ref, IndexKind.DEAD, last_ms + 10_000, end_ms=last_ms + 10_000, reason="fixture")
    return ref


async def write_log_file(store: Store, ref: SessionRef, relpath: str, content: bytes, split_over: int = 4096) -> None:
    if len(content) <= split_over:
        await store.put(layout.log_part_key(ref, HEAD_NODE_ID, relpath, 0, 0), content)
        return
    # two parts that overlap by 100 bytes: the reader must skip the repeated bytes
    cut = len(content) // 2
    await store.put(layout.log_part_key(ref, HEAD_NODE_ID, relpath, 0, 0), content[:cut])
    await store.put(layout.log_part_key(ref, HEAD_NODE_ID, relpath, 0, cut - 100), content[cut - 100:])


async def write_index(store: Store, ref: SessionRef, kind: IndexKind, at_ms: int, **fields) -> None:
    record = IndexRecord(
        kind=kind.value, namespace=ref.namespace, cluster=ref.cluster, session=ref.session, at_ms=at_ms,
        writer=WRITER, start_ms=layout.session_start_ms(ref.session),
        node_ids=[HEAD_NODE_ID] if kind != IndexKind.DEAD else [], **fields,
    )
    await store.put(layout.index_record_key(ref, kind, WRITER, at_ms), encode_record(record))


def late_task_batch(task_number: int, job_b64: str = "AQAAAA==") -> bytes:
    """A gzip'd event batch that defines one new, finished task (named `late_task`), as a late flush would.

    Its task id is 0x4c41 ("LA") + the number + the fixture driver's job suffix, so it cannot collide
    with a captured task.
    """
    task_b64 = base64.b64encode(bytes.fromhex(late_task_id(task_number))).decode()
    node_b64 = base64.b64encode(bytes.fromhex(HEAD_NODE_ID)).decode()
    envelope = {"sourceType": "CORE_WORKER", "severity": "INFO", "sessionName": SESSION_NAME, "nodeId": node_b64,
                "message": ""}
    events = [
        {**envelope, "eventId": base64.b64encode(b"late-def-%08d" % task_number).decode(),
         "eventType": "TASK_DEFINITION_EVENT", "timestamp": "2026-11-23T13:49:00.000000001Z",
         "taskDefinitionEvent": {
             "taskId": task_b64, "taskAttempt": 0, "taskType": "NORMAL_TASK", "language": "PYTHON",
             "taskFunc": {"pythonFunctionDescriptor": {"moduleName": "workload", "functionName": "late_task",
                                                       "className": "", "functionHash": "00"}},
             "taskName": "late_task", "jobId": job_b64, "requiredResources": {"CPU": 1.0},
             "parentTaskId": "//////////////////////////8BAAAA", "placementGroupId": "////////////////////////",
             "serializedRuntimeEnv": "{}"}},
        {**envelope, "eventId": base64.b64encode(b"late-lc-%08d" % task_number).decode(),
         "eventType": "TASK_LIFECYCLE_EVENT", "timestamp": "2026-11-23T13:49:00.500000000Z",
         "taskLifecycleEvent": {
             "taskId": task_b64, "taskAttempt": 0, "jobId": job_b64, "nodeId": node_b64, "workerPid": 10228,
             "stateTransitions": [{"state": "PENDING_NODE_ASSIGNMENT", "timestamp": "2026-11-23T13:49:00.100000000Z"},
                                  {"state": "RUNNING", "timestamp": "2026-11-23T13:49:00.200000000Z"},
                                  {"state": "FINISHED", "timestamp": "2026-11-23T13:49:00.500000000Z"}]}},
    ]
    accepted, errors = accept_events(json.dumps(events).encode())
    assert not errors, errors
    return gzip.compress(b"".join(e.raw + b"\n" for e in accepted))


def late_task_id(task_number: int) -> str:
    return (b"LA" + task_number.to_bytes(6, "big") + b"\xff" * 12 + b"\x01\x00\x00\x00").hex()


def numbered_ref(n: int, namespace: str = "ray", cluster: str = "demo") -> SessionRef:
    """Distinct session names for tests that need many sessions (the same data in each); a greater `n`
    started later (by n seconds)."""
    clock = f"{10 + n // 3600 % 14:02d}-{n // 60 % 60:02d}-{n % 60:02d}"
    return SessionRef(namespace, cluster, f"session_2026-11-23_{clock}_556257_{10000 + n}")


@contextlib.asynccontextmanager
async def running_server(store: Store, reviewer=None, **settings):
    """The server's public and internal apps on real local ports, over `store`; stopped on exit.

    Yields (public client, internal client, ServerState). `settings` override Settings fields.
    """
    from aiohttp.test_utils import TestClient, TestServer

    from rayhistory.server.app import STATE_KEY, create_app
    from rayhistory.server.main import Settings

    public, internal = create_app(Settings(storage=store.url, **settings), store, reviewer=reviewer)
    async with TestClient(TestServer(public)) as public_client, TestClient(TestServer(internal)) as internal_client:
        yield public_client, internal_client, public[STATE_KEY]
