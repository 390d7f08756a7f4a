"""The event model against every event Ray 2.60 really sent, and the live dashboard's ids."""

from __future__ import annotations

import json

import msgspec
import pytest

from rayhistory import events as ev
from tests.conftest import HEAD_NODE_ID, SESSION_NAME, api_answer, received_bodies


def _accept(batch: bytes) -> tuple[list[ev.RayEvent], list[ev.EventError]]:
    """What the collector accepts of a POST body, as the typed events it validated them as."""
    accepted, errors = ev.accept_events(batch)
    return [msgspec.json.decode(a.raw, type=ev.RayEvent) for a in accepted], errors


def _all_events() -> list[ev.RayEvent]:
    events, errors = _accept(json.dumps([e for body in received_bodies() for e in body]).encode())
    assert errors == []
    return events


def test_every_received_event_parses_without_error():
    events = _all_events()
    assert len(events) == 440
    counts: dict[str, int] = {}
    for e in events:
        counts[e.event_type] = counts.get(e.event_type, 0) + 1
        assert e.payload is not None
        assert e.session_name == SESSION_NAME
        assert ev.hex_id(e.node_id) == HEAD_NODE_ID
    # the counts the fixture README reports for RUN A
    assert counts == {
        "TASK_LIFECYCLE_EVENT": 211, "TASK_DEFINITION_EVENT": 66, "TASK_PROFILE_EVENT": 84,
        "ACTOR_TASK_DEFINITION_EVENT": 11, "ACTOR_DEFINITION_EVENT": 5, "ACTOR_LIFECYCLE_EVENT": 9,
        "DRIVER_JOB_DEFINITION_EVENT": 2, "DRIVER_JOB_LIFECYCLE_EVENT": 4, "NODE_DEFINITION_EVENT": 1,
        "NODE_LIFECYCLE_EVENT": 1, "WORKER_DEFINITION_EVENT": 16, "WORKER_LIFECYCLE_EVENT": 30,
    }


def test_decoded_ids_match_the_live_dashboard():
    decoded = _all_events()
    task_ids = {ev.hex_id(e.task_definition_event.task_id) for e in decoded if e.task_definition_event}
    task_ids |= {ev.hex_id(e.actor_task_definition_event.task_id) for e in decoded if e.actor_task_definition_event}
    actor_ids = {ev.hex_id(e.actor_definition_event.actor_id) for e in decoded if e.actor_definition_event}
    job_ids = {ev.hex_id(e.driver_job_definition_event.job_id) for e in decoded if e.driver_job_definition_event}
    node_ids = {ev.hex_id(e.node_definition_event.node_id) for e in decoded if e.node_definition_event}

    live_tasks = api_answer("api__v0__tasks__detail=1__limit=10000.json")["data"]["result"]["result"]
    live_actors = api_answer("api__v0__actors__detail=1__limit=10000.json")["data"]["result"]["result"]
    live_nodes = api_answer("api__v0__nodes__detail=1__limit=10000.json")["data"]["result"]["result"]
    live_jobs = api_answer("api__jobs.json")

    assert {t["task_id"] for t in live_tasks} <= task_ids
    assert len(task_ids - {t["task_id"] for t in live_tasks}) == 6  # the DRIVER_TASKs /api/v0/tasks leaves out
    assert {a["actor_id"] for a in live_actors} == actor_ids
    assert {n["node_id"] for n in live_nodes} == node_ids
    assert {j["job_id"] for j in live_jobs if j["job_id"]} == job_ids


def test_ids_and_numbers_are_decoded_like_ray_does():
    assert ev.hex_id("AQAAAA==") == "01000000"
    assert ev.hex_id("////////////////////////") == "ff" * 18
    assert ev.hex_id("") == ""
    assert ev.ts_ns("2026-11-23T13:48:03.261643971Z") == 1795441683261643971
    assert ev.ts_ns("2026-11-23T13:48:03.260Z") == 1795441683260000000
    assert ev.ts_ns("2026-11-23T13:48:03Z") == 1795441683000000000
    assert ev.ts_ns("2026-11-23T14:48:03.5+01:00") == 1795441683500000000
    for bad in ("2026-13-23T13:48:03Z", "yesterday", "2026-11-23 13:48:03", "2026-11-23T13:48:03.Z"):
        with pytest.raises(ValueError):
            ev.ts_ns(bad)


def _example(event_type: str) -> dict:
    return json.loads(json.dumps(api_examples()[event_type]))


def api_examples() -> dict:
    from tests.conftest import FIXTURES

    return json.loads((FIXTURES / "received_examples_by_type.json").read_text())


@pytest.mark.parametrize(
    "mutate, reason",
    [
        (lambda e: e.update(sessionName="../../etc"), "is not a Ray session name"),
        (lambda e: e.update(nodeId="not base64!"), "nodeId is not base64"),
        (lambda e: e.update(nodeId="AQAAAA=="), "expected 28"),
        (lambda e: e.update(eventId=""), "eventId is empty"),
        (lambda e: e.update(timestamp="yesterday"), "not an RFC3339 timestamp"),
        (lambda e: e.pop("taskDefinitionEvent"), "has no taskDefinitionEvent payload"),
        (lambda e: e["taskDefinitionEvent"].update(taskAttempt="zero"), "taskAttempt"),
        (lambda e: e.pop("eventId"), "eventId"),
    ],
)
def test_a_malformed_event_is_rejected_alone_with_its_reason(mutate, reason):
    good1, good2 = _example("TASK_LIFECYCLE_EVENT"), _example("NODE_DEFINITION_EVENT")
    bad = _example("TASK_DEFINITION_EVENT")
    mutate(bad)
    events, errors = _accept(json.dumps([good1, bad, good2]).encode())
    assert [e.event_id for e in events] == [good1["eventId"], good2["eventId"]]
    assert [e.index for e in errors] == [1]
    assert reason in errors[0].reason


def test_unknown_event_types_are_kept_as_they_came():
    platform = {
        "eventId": "AAAA", "sourceType": "CLUSTER_LIFECYCLE", "eventType": "PLATFORM_EVENT",
        "timestamp": "2026-11-23T13:48:03Z", "severity": "INFO", "message": "", "sessionName": SESSION_NAME,
        "nodeId": _example("NODE_DEFINITION_EVENT")["nodeId"], "platformEvent": {"objectKind": "Pod"},
    }
    accepted, errors = ev.accept_events(json.dumps([platform, _example("NODE_LIFECYCLE_EVENT")]).encode())
    assert errors == [] and len(accepted) == 2
    assert json.loads(accepted[0].raw)["platformEvent"] == {"objectKind": "Pod"}


@pytest.mark.parametrize("encode", [
    lambda body: json.dumps(body, indent=2),
    lambda body: json.dumps(body, separators=(",\r", ":\r")),  # a carriage return alone is JSON whitespace too
    lambda body: json.dumps(body),
], ids=["newlines", "carriage-returns", "one-line"])
def test_accepted_events_are_one_line_each(encode):
    body = received_bodies()[3]
    accepted, errors = ev.accept_events(encode(body).encode())
    assert errors == []
    for a, original in zip(accepted, body):
        assert b"\n" not in a.raw and b"\r" not in a.raw
        assert msgspec.json.decode(a.raw) == original
        assert a.session_name == SESSION_NAME and a.node_id_hex == HEAD_NODE_ID


def test_a_body_that_is_not_json_is_one_error():
    for body in (b"{not json", b"[{not json"):
        accepted, errors = ev.accept_events(body)
        assert accepted == [] and [e.index for e in errors] == [-1] and ev.BODY_NOT_AN_ARRAY in errors[0].reason


def test_errors_keep_their_positions_when_a_batch_mixes_kinds_of_bad_events():
    # one event that does not decode at all and one that decodes but fails the checks: both keep their index
    good = _example("NODE_DEFINITION_EVENT")
    undecodable = _example("TASK_LIFECYCLE_EVENT")
    undecodable["taskLifecycleEvent"]["taskAttempt"] = "zero"
    unroutable = _example("TASK_DEFINITION_EVENT")
    unroutable["sessionName"] = "elsewhere"
    events, errors = _accept(json.dumps([undecodable, good, unroutable]).encode())
    assert [e.index for e in errors] == [0, 2]
    assert [e.event_id for e in events] == [good["eventId"]]


# ---- bounds (issue 9, item 2) ------------------------------------------------------------------------

def _reference_depth(value) -> int:
    if isinstance(value, dict):
        return 1 + max((_reference_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_reference_depth(v) for v in value), default=0)
    return 0


@pytest.mark.parametrize("text", [
    '[]', '{}', '[[],[[]],{"a":[{}]}]', '{"a":"[[[[[[", "b":["]]]"]}', '["\\"[[["]', '[1,{"x":[2,[3,[4]]]}]',
    '{"k":"\\\\\\\\"}', '[' * 64 + ']' * 64, '[' * 65 + ']' * 65, '{"a":' * 70 + '1' + '}' * 70,
])
def test_nesting_depth_check_agrees_with_a_recursive_reference(text):
    from rayhistory.events import nested_deeper_than

    depth = _reference_depth(json.loads(text))
    for limit in (0, 1, 2, 3, 63, 64, 65):
        assert nested_deeper_than(text.encode(), limit) == (depth > limit), (text, limit)


def test_an_event_too_deep_or_too_big_is_rejected_alone_in_collector_and_server_decoding():
    from rayhistory.events import MAX_EVENT_BYTES, accept_events
    from rayhistory.server.stored_events import decode_careful

    good = [e for body in received_bodies() for e in body][:4]
    texts = [json.dumps(e) for e in good]
    deep = texts[0][:-1] + ', "extra": ' + '[' * 2000 + ']' * 2000 + '}'
    big = texts[1][:-1] + ', "message": "' + "x" * MAX_EVENT_BYTES + '"}'
    medium = texts[2][:-1] + ', "extra": ' + '[' * 100 + ']' * 100 + '}'  # past the bound, within msgspec's reach
    body = ("[" + ",".join([texts[0], deep, texts[1], big, medium, texts[3]]) + "]").encode()
    accepted, errors = accept_events(body)
    assert [a.event_id for a in accepted] == [good[0]["eventId"], good[1]["eventId"], good[3]["eventId"]]
    assert {e.index: e.reason.split(" ")[1] for e in errors} == {1: "nests", 3: "is", 4: "nests"}
    lines = b"\n".join([texts[0].encode(), deep.encode(), texts[3].encode()])
    events, rejected = decode_careful(lines)  # the server's careful path over a stored batch
    assert [e.event_id for e in events] == [good[0]["eventId"], good[3]["eventId"]] and rejected == 1


def test_timestamps_take_ascii_digits_only():
    from rayhistory.events import ts_ns

    assert ts_ns("2026-11-23T13:47:55.123456789Z") == ts_ns("2026-11-23T13:47:55.123456789+00:00")
    for bad in ("２026-11-23T13:47:55Z", "2026-11-23T13:47:55.１Z", "2026-11-23T13:47:55+0１:00", " 026-11-23T13:47:55Z"):
        with pytest.raises(ValueError):
            ts_ns(bad)
