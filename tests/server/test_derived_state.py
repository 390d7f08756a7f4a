"""What the events prove, the dashboard shows (issue 10, items 1, 2, 3, 6 and 10), on the Ray 2.60 fixture
with the kinds of loss Ray really has: a dropped definition event, a missing terminal transition.

docs/dead-sessions.md states the rules these tests hold the builder to."""

from __future__ import annotations

import base64
import copy
import gzip
import json

import pytest

from rayhistory.server.snapshot import SnapshotBuilder
from tests.conftest import received_bodies
from tests.server.test_ground_truth import REF, call

EVENTS = [e for body in received_bodies() for e in body]
SESSION_END_MS = 1_795_441_800_000


def hex_of(b64: str) -> str:
    return base64.b64decode(b64).hex()


def b64_of(hex_id: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_id)).decode()


def task_of(event: dict) -> tuple[str, int] | None:
    payload = event.get("taskDefinitionEvent") or event.get("actorTaskDefinitionEvent") \
        or event.get("taskLifecycleEvent")
    if payload is not None:
        return hex_of(payload["taskId"]), payload.get("taskAttempt", 0)
    if "taskProfileEvents" in event:
        p = event["taskProfileEvents"]
        return hex_of(p["taskId"]), p.get("attemptNumber", 0)
    return None


def build(events: list[dict], dead: bool):
    builder = SnapshotBuilder(REF, dead=dead, end_ms=SESSION_END_MS if dead else 0)
    builder.add_event_batch("batch", gzip.compress(b"\n".join(json.dumps(e).encode() for e in events)))
    return builder.build()


def rows(snapshot, path="/api/v0/tasks?detail=1&limit=10000") -> dict:
    status, body = call(snapshot, "GET", path)
    assert status == 200
    return {(r["task_id"], r["attempt_number"]): r for r in body["data"]["result"]["result"]}


def named_task(name: str) -> tuple[str, int]:
    """An attempt of that name whose worker's profile events name it (the fixture has some that do not)."""
    live = rows(build(EVENTS, dead=False))
    profiled = {task_of(e) for e in EVENTS if e["eventType"] == "TASK_PROFILE_EVENT"
                and any(x["eventName"].startswith("task::") for x in e["taskProfileEvents"]["profileEvents"]["events"])}
    return next(key for key, r in live.items() if r["name"] == name and key in profiled)


def without(events: list[dict], key: tuple[str, int], *, definition=False, terminal=False, profile=False) -> list[dict]:
    """The events with parts of one attempt's record lost, as Ray loses them."""
    out = []
    for event in events:
        if task_of(event) != key:
            out.append(event)
            continue
        if definition and event["eventType"] in ("TASK_DEFINITION_EVENT", "ACTOR_TASK_DEFINITION_EVENT"):
            continue
        if profile and event["eventType"] == "TASK_PROFILE_EVENT":
            continue
        if terminal and event["eventType"] == "TASK_LIFECYCLE_EVENT":
            event = copy.deepcopy(event)
            payload = event["taskLifecycleEvent"]
            payload["stateTransitions"] = [t for t in payload["stateTransitions"]
                                           if t["state"] not in ("FINISHED", "FAILED")]
            payload.pop("rayErrorInfo", None)
        out.append(event)
    return out


@pytest.mark.parametrize("name", ["child", "alive_actor:Counter.__init__", "Counter.incr"])
def test_an_attempt_without_its_own_definition_is_not_listed_as_in_ray(name):
    """Item 1: such attempts were listed with no name and no type (and, in a dead session, FAILED). Ray's
    GCS lists only attempts with task info of their own (gcs_task_manager.cc, HandleGetTaskEvents: "Skip
    task events w/o task info"); the end-to-end run shows it for a restarted actor's constructor."""
    key = named_task(name)
    live = rows(build(EVENTS, dead=False))
    for dead in (False, True):
        ours = rows(build(without(EVENTS, key, definition=True), dead=dead))
        assert key not in ours and set(ours) == set(live) - {key}
        assert all(r["name"] and r["type"] for r in ours.values())


@pytest.mark.parametrize("name", ["child", "square", "alive_actor:Counter.__init__"])
def test_a_dead_session_ends_an_attempt_as_the_events_prove_not_as_failed(name):
    """Item 1: in a dead session every attempt without a terminal transition was FAILED (WORKER_DIED),
    although its profile events closed its execution, or the actor it constructs became ALIVE."""
    key = named_task(name)
    truth = rows(build(EVENTS, dead=True))[key]
    assert truth["state"] == "FINISHED"
    lost = without(EVENTS, key, terminal=True)
    if name.endswith("__init__"):
        lost = without(lost, key, profile=True)  # only the actor's ALIVE can prove it now
    ours = rows(build(lost, dead=True))[key]
    assert (ours["state"], ours["name"], ours["error_type"]) == ("FINISHED", name, None)
    assert abs(ours["end_time_ms"] - truth["end_time_ms"]) < 1000  # the proof's own time, not the session's end
    assert ours["end_time_ms"] < SESSION_END_MS - 60_000

    # with nothing to prove it finished, nor a dead worker or a finished job to fail it, the session's end does
    nothing = [e for e in without(EVENTS, key, terminal=True, profile=True)
               if not _an_end(e) and not (name.endswith("__init__") and e["eventType"] == "ACTOR_LIFECYCLE_EVENT")]
    failed = rows(build(nothing, dead=True))[key]
    assert (failed["state"], failed["error_type"], failed["end_time_ms"]) == ("FAILED", "WORKER_DIED", SESSION_END_MS)


def _an_end(event: dict) -> bool:
    """A worker's DEAD or a job's FINISHED: what Ray's GCS fails a task's unfinished attempts with."""
    payload = event.get("workerLifecycleEvent") or event.get("driverJobLifecycleEvent") or {}
    return any(t["state"] in ("DEAD", "FINISHED") for t in payload.get("stateTransitions", []))


def test_a_task_running_on_a_worker_that_died_fails_at_the_workers_end_in_any_session():
    """Item 2: Ray's GCS fails what ran on a dead worker; no task event says so, the worker's event does."""
    key = named_task("child")
    lost = without(EVENTS, key, terminal=True, profile=True)
    live = rows(build(lost, dead=False))[key]
    worker_id = live["worker_id"]
    deaths = [e for e in EVENTS if e["eventType"] == "WORKER_LIFECYCLE_EVENT"
              and hex_of(e["workerLifecycleEvent"]["workerId"]) == worker_id
              and any(t["state"] == "DEAD" for t in e["workerLifecycleEvent"]["stateTransitions"])]
    assert deaths, "the fixture's worker of this task died (it was a pooled worker of a finished job)"
    dead_transition = next(t for t in deaths[0]["workerLifecycleEvent"]["stateTransitions"] if t["state"] == "DEAD")
    for dead in (False, True):
        row = rows(build(lost, dead=dead))[key]
        assert row["state"] == "FAILED" and row["error_type"] == "WORKER_DIED"
        assert row["end_time_ms"] == int(dead_transition["endTimeMs"])
        assert row["error_message"].startswith(f"Worker running the task ({key[0]}) died with exit_type: ")
        assert dead_transition["deathInfo"]["exitDetail"] in row["error_message"]


def test_a_task_of_a_job_that_ended_fails_at_the_jobs_end():
    """Item 2: the GCS fails a finished job's unfinished tasks (here with no worker death to go by)."""
    key = named_task("child")
    lost = [e for e in without(EVENTS, key, terminal=True, profile=True)
            if not (e["eventType"] == "WORKER_LIFECYCLE_EVENT" and _an_end(e))]
    job_end = next(t for e in EVENTS if e["eventType"] == "DRIVER_JOB_LIFECYCLE_EVENT"
                   for t in e["driverJobLifecycleEvent"]["stateTransitions"] if t["state"] == "FINISHED")
    row = rows(build(lost, dead=False))[key]
    assert (row["state"], row["error_type"]) == ("FAILED", "WORKER_DIED")
    assert row["error_message"] == f"Job finishes ({row['job_id']}) as driver exits. Marking all non-terminal tasks as failed."
    assert abs(row["end_time_ms"] - _rfc3339_ms(job_end["timestamp"])) <= 1


def _rfc3339_ms(text: str) -> float:
    from rayhistory.events import ts_ns

    return ts_ns(text) / 1e6


def test_a_retried_constructor_without_its_definition_leaves_no_group_of_its_own():
    """Item 3: a second attempt without a definition moved an actor's constructor out of its actor's lineage
    group into an unnamed one. As in Ray, that attempt is not listed; the first stays where it belongs."""
    key = named_task("alive_actor:Counter.__init__")
    retry = []
    for event in EVENTS:
        if task_of(event) == key and event["eventType"] != "TASK_DEFINITION_EVENT":
            event = copy.deepcopy(event)
            payload = event.get("taskLifecycleEvent") or event["taskProfileEvents"]
            payload["taskAttempt" if "taskLifecycleEvent" in event else "attemptNumber"] = 1
            event["eventId"] = "r" + event["eventId"]
            retry.append(event)
    snapshot = build(EVENTS + retry, dead=False)
    assert (key[0], 1) not in rows(snapshot)
    status, body = call(snapshot, "GET", "/api/v0/tasks/summarize?summary_by=lineage")
    reference = call(build(EVENTS, dead=False), "GET", "/api/v0/tasks/summarize?summary_by=lineage")
    assert (status, body) == reference
    groups = body["data"]["result"]["result"]["node_id_to_summary"]["cluster"]["summary"]

    def find(nodes, key_):
        for n in nodes:
            if n["key"] == key_:
                return n
            found = find(n["children"], key_)
            if found:
                return found
        return None

    constructor = find(find(groups, f"actor:{key[0][16:]}")["children"], key[0])
    assert constructor is not None and not any(n["key"] == key[0] for n in groups)


def test_ids_only_a_submitter_named_are_not_listed():
    """Item 10: profile events with only "submit_task" entries named a task no list of Ray's shows."""
    submit = next(e for e in EVENTS if e["eventType"] == "TASK_PROFILE_EVENT"
                  and {x["eventName"] for x in e["taskProfileEvents"]["profileEvents"]["events"]} == {"submit_task"})
    ghost = copy.deepcopy(submit)
    ghost["eventId"] = "Z2hvc3Q="
    ghost["taskProfileEvents"]["taskId"] = b64_of("0123456789abcdef" + "f" * 24 + "01000000")
    snapshot = build(EVENTS + [ghost], dead=True)
    reference = build(EVENTS, dead=True)
    assert rows(snapshot) == rows(reference)
    for path in ("/api/v0/tasks/summarize", "/api/v0/tasks?limit=10000&filter_keys=job_id&filter_predicates=%3D"
                 "&filter_values=01000000"):
        assert call(snapshot, "GET", path) == call(reference, "GET", path)


def test_node_summary_fills_what_the_events_know():
    """Item 6: worker rows lacked the job and actor their events give, and a dead session's nodes had no
    logical resources (the Cluster page showed NaN and "0/ 0")."""
    from tests.conftest import API

    live = json.loads((API / "nodes__view=summary.json").read_text())["data"]
    live_workers = {w["workerId"]: w for w in live["summary"][0]["raylet"]["coreWorkersStats"]}
    _, ours = call(build(EVENTS, dead=False), "GET", "/nodes?view=summary")
    for w in ours["data"]["summary"][0]["raylet"]["coreWorkersStats"]:
        if w["workerId"] in live_workers:
            assert (w["jobId"], w["actorId"]) == (live_workers[w["workerId"]]["jobId"],
                                                  live_workers[w["workerId"]]["actorId"])
    assert any(w["actorId"] != "ff" * 16 for w in ours["data"]["summary"][0]["raylet"]["coreWorkersStats"])
    [(node_id, line)] = live["nodeLogicalResources"].items()
    _, dead = call(build(EVENTS, dead=True), "GET", "/nodes?view=summary")
    # the live line's totals, with nothing in use (the placement group's reservation is gone with the cluster)
    assert dead["data"]["nodeLogicalResources"] == {
        node_id: line.replace(" (0.0 used of 0.25 reserved in placement groups)", "")}
    assert dead["data"]["summary"][0]["bootTime"] > 1.7e9


def test_a_retry_is_listed_before_the_attempt_it_replaced():
    """As the live dashboard lists them (tests/e2e's retried task): Ray sorts by task id only, stably, over
    the GCS's order, in which the later attempt comes first."""
    key = named_task("child")
    retry = []
    for event in EVENTS:
        if task_of(event) == key:
            event = copy.deepcopy(event)
            payload = (event.get("taskDefinitionEvent") or event.get("taskLifecycleEvent")
                       or event["taskProfileEvents"])
            payload["attemptNumber" if "taskProfileEvents" in event else "taskAttempt"] = 1
            event["eventId"] = "r" + event["eventId"]
            retry.append(event)
    listed = list(rows(build(EVENTS + retry, dead=False)))
    assert listed.index((key[0], 1)) == listed.index((key[0], 0)) - 1
