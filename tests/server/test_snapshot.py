"""SnapshotBuilder: order independence, idempotence, incremental merge, completeness, the compact format,
dead sessions; and the API's handling of bad input. Data: the Ray 2.60 fixture session."""

from __future__ import annotations

import base64
import gc
import gzip
import json
import random
from concurrent.futures import ThreadPoolExecutor

import msgspec
import pytest

from rayhistory import layout
from rayhistory.events import accept_events
from rayhistory.server import api
from rayhistory.server.snapshot import (
    FORMAT_VERSION, SnapshotBuilder, SnapshotFormatError, decode_snapshot, encode_snapshot,
)
from tests.conftest import HEAD_NODE_ID, received_bodies
from tests.server.test_ground_truth import REF, build_fixture_snapshot, stored_batches

ALIVE_ACTOR = "e8c9d4ea6f2c1968dcf59ee701000000"


def _batch(events: list[dict]) -> bytes:
    return gzip.compress(b"\n".join(json.dumps(e).encode() for e in events))


def _content(snapshot) -> bytes:
    """The snapshot without its manifest (which names the objects, not what they said)."""
    return encode_snapshot(msgspec.structs.replace(snapshot, covered=[], objects_total=0))


def _build(batches: dict[str, bytes], dead: bool = False, end_ms: int = 0):
    builder = SnapshotBuilder(REF, dead=dead, end_ms=end_ms)
    for key, data in batches.items():
        builder.add_event_batch(key, data)
    return builder.build()


@pytest.fixture(scope="module")
def reference():
    return _build(stored_batches())


def test_fixture_counts(reference):
    assert len(reference.tasks) == 77  # 71 listed by the dashboard + 6 driver tasks
    assert [a.actor_id for a in reference.actors if a.name == "alive_actor"] == [ALIVE_ACTOR]
    assert len(reference.nodes) == 1 and len(reference.workers) == 16 and len(reference.driver_jobs) == 2
    assert reference.complete and reference.objects_total == 41 and reference.events_rejected == 0


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_any_arrival_order_and_batching_gives_the_same_snapshot(reference, seed):
    """Shuffle all 440 events, cut them into new batches, and repeat a third of them."""
    rng = random.Random(seed)
    events = [e for body in received_bodies() for e in body]
    events += rng.sample(events, len(events) // 3)
    rng.shuffle(events)
    batches, seq = {}, 0
    while events:
        size = rng.randint(1, 60)
        batches[layout.event_batch_key(REF, HEAD_NODE_ID, "shuffled", seq, at_ms=1000 + seq)] = _batch(events[:size])
        events, seq = events[size:], seq + 1
    assert _content(_build(batches)) == _content(reference)


def test_readding_a_batch_or_a_reflush_changes_nothing(reference):
    batches = stored_batches()
    builder = SnapshotBuilder(REF, dead=False, end_ms=0)
    for key, data in batches.items():
        builder.add_event_batch(key, data)
        builder.add_event_batch(key, data)  # the same object twice
    # the same events again under other keys (a collector that flushed twice)
    for i, data in enumerate(batches.values()):
        builder.add_event_batch(layout.event_batch_key(REF, HEAD_NODE_ID, "again", i, at_ms=5000 + i), data)
    assert _content(builder.build()) == _content(reference)


def test_late_flush_merges_into_a_stored_snapshot(reference):
    batches = list(stored_batches().items())
    first = _build(dict(batches[::2]))
    assert len(first.tasks) < len(reference.tasks) or _content(first) != _content(reference)
    stored = decode_snapshot(encode_snapshot(first))
    builder = SnapshotBuilder.from_snapshot(stored)
    for key, data in batches[1::2]:
        builder.add_event_batch(key, data)
    merged = builder.build()
    assert encode_snapshot(merged) == encode_snapshot(reference)
    # and again: merging everything once more is a no-op
    again = SnapshotBuilder.from_snapshot(decode_snapshot(encode_snapshot(merged)))
    for key, data in batches:
        again.add_event_batch(key, data)
    assert encode_snapshot(again.build()) == encode_snapshot(reference)


def test_corrupt_and_truncated_batches_make_an_incomplete_snapshot(reference):
    batches = stored_batches()
    keys = list(batches)
    batches[keys[3]] = batches[keys[3]][: len(batches[keys[3]]) // 2]  # truncated gzip
    batches[keys[5]] = b"not gzip at all"
    batches[keys[7]] = gzip.compress(b'{"eventId": "x", "eventType": ')  # gzip of broken JSON
    builder = SnapshotBuilder(REF, dead=False, end_ms=0)
    for key, data in batches.items():
        builder.add_event_batch(key, data)
    builder.mark_missing("v1/sessions/x/events/gone.jsonl.gz", "NoSuchKey")
    snap = builder.build()
    assert not snap.complete
    assert sorted(p.key for p in snap.objects_corrupt) == sorted([keys[3], keys[5], keys[7]])
    assert all(p.reason for p in snap.objects_corrupt)
    assert [(p.key, p.reason) for p in snap.objects_missing] == [("v1/sessions/x/events/gone.jsonl.gz", "NoSuchKey")]
    assert snap.objects_total == len(batches) + 1
    assert 0 < len(snap.tasks) <= len(reference.tasks)
    # the snapshot still answers, and says it is incomplete in the encoded form too
    assert api.list_tasks(snap, {})[0] == 200
    assert decode_snapshot(encode_snapshot(snap)).objects_corrupt == snap.objects_corrupt


def test_a_bad_event_is_rejected_alone():
    body = received_bodies()[0]
    lifecycle = next(i for i, e in enumerate(body) if e["eventType"] == "NODE_LIFECYCLE_EVENT")
    bad_payload = json.loads(json.dumps(body[lifecycle]))
    bad_payload["nodeLifecycleEvent"]["stateTransitions"][0]["timestamp"] = "not a time"
    broken = [dict(body[0], eventId=17)] + body[1:lifecycle] + [bad_payload] + body[lifecycle + 1:]
    key = layout.event_batch_key(REF, HEAD_NODE_ID, "w", 0, at_ms=1)
    snap = _build({key: _batch(broken)})
    # rejected alone, and named: a stored event the builder cannot use is damage (issue 9, item 2)
    assert snap.events_rejected == 2 and not snap.complete and [p.key for p in snap.objects_corrupt] == [key]
    assert len(snap.workers) == sum(e["eventType"] == "WORKER_DEFINITION_EVENT" for e in body)


def _assert_rejected_alone(events: list[dict], bad: int, broken: dict) -> None:
    """events with events[bad] replaced by `broken` build as if it had never arrived, the object named."""
    key = layout.event_batch_key(REF, HEAD_NODE_ID, "w", 0, at_ms=1)
    snap = _build({key: _batch(events[:bad] + [broken] + events[bad + 1:])})
    without = _build({key: _batch(events[:bad] + events[bad + 1:])})
    assert snap.events_rejected == 1 and without.events_rejected == 0
    assert [p.key for p in snap.objects_corrupt] == [key] and not snap.complete
    assert _content(msgspec.structs.replace(snap, events_rejected=0, objects_corrupt=[], complete=True)) == _content(without)


def _definition(task_id: bytes, attempt: int, b64: str | None = None) -> dict:
    return {"eventId": f"d{task_id.hex()}{attempt}", "eventType": "TASK_DEFINITION_EVENT", "sessionName": "s",
            "taskDefinitionEvent": {"taskId": b64 or base64.b64encode(task_id).decode(), "taskAttempt": attempt,
                                    "taskName": "f", "jobId": "AQAAAA=="}}


def test_whether_an_event_is_used_never_depends_on_its_neighbours():
    """Stored data the collector did not write may say `"taskAttempt": "1"`; the builder's decoder reads
    such a number laxly. A batch with another, broken event goes down the careful path, which must read
    the same event the same way (it once rejected it there, and used it in a clean batch)."""
    lax = _definition(bytes([4]) * 24, 0)
    lax["taskDefinitionEvent"]["taskAttempt"] = "1"
    good = _definition(bytes([6]) * 24, 0)
    broken = dict(_definition(bytes([8]) * 24, 0), eventId=17)
    key = layout.event_batch_key(REF, HEAD_NODE_ID, "w", 0, at_ms=1)
    clean = _build({key: _batch([lax, good])})
    careful = _build({key: _batch([lax, broken, good])})
    assert [(t.task_id, t.attempt) for t in clean.tasks] == [("04" * 24, 1), ("06" * 24, 0)]
    assert clean.events_rejected == 0 and careful.events_rejected == 1
    assert _content(msgspec.structs.replace(careful, events_rejected=0, objects_corrupt=[], complete=True)) == \
        _content(clean)


@pytest.mark.parametrize("layout_of", [
    lambda events: b"\n".join(json.dumps(e).encode() for e in events),
    lambda events: json.dumps(events).encode(),
    lambda events: json.dumps(events, indent=2).encode(),
], ids=["json-lines", "one-array", "an-indented-array"])
def test_the_careful_path_reads_json_lines_and_an_array_alike(layout_of):
    from rayhistory.server.stored_events import decode_careful

    events = [_definition(bytes([n]) * 24, 0) for n in (1, 2, 3)]
    events[1]["eventId"] = 17  # the careful path, whatever the layout
    decoded, rejected = decode_careful(layout_of(events))
    assert [e.event_id for e in decoded] == [events[0]["eventId"], events[2]["eventId"]] and rejected == 1


def test_tasks_are_listed_by_id_then_the_later_attempt_first_whatever_the_ids_lengths():
    """Ray's order (by task id, a retry before the attempt it replaced). The builder keys attempts by the id's
    bytes and the attempt; ids of several lengths (not Ray's, but storage may hold anything) sort too."""
    ids = [bytes([9]) * 24, bytes([1]) * 24, bytes([1]) * 8, bytes([1]) * 30, bytes([255]) * 2]
    events = [_definition(task_id, attempt) for task_id in ids for attempt in (0, 2, 1, 300)]
    key = layout.event_batch_key(REF, HEAD_NODE_ID, "w", 0, at_ms=1)
    listed = [(t.task_id, t.attempt) for t in _build({key: _batch(events)}).tasks]
    assert listed == sorted(((i.hex(), a) for i in ids for a in (0, 1, 2, 300)), key=lambda k: (k[0], -k[1]))


def test_definitions_merge_in_any_order_even_one_without_a_type():
    """The first definition of an attempt is assigned at once; one without a task type (the collector keeps
    any string there) must not make a later one look like the first."""
    task_id = bytes([5]) * 24
    untyped = _definition(task_id, 0)
    untyped["taskDefinitionEvent"].update(taskType="", taskName="zzz", callSite="here")
    typed = _definition(task_id, 0)
    typed["taskDefinitionEvent"].update(taskName="mmm")
    key = layout.event_batch_key(REF, HEAD_NODE_ID, "w", 0, at_ms=1)
    one, other = _build({key: _batch([untyped, typed])}), _build({key: _batch([typed, untyped])})
    assert _content(one) == _content(other)
    assert one.strings[one.tasks[0].name] == "zzz" and one.strings[one.tasks[0].call_site] == "here"


def test_continuing_a_snapshot_leaves_out_an_attempt_no_key_can_hold():
    """Builders before task_key kept any attempt number; continuing such a stored snapshot must not fail."""
    key = layout.event_batch_key(REF, HEAD_NODE_ID, "w", 0, at_ms=1)
    snap = _build({key: _batch([_definition(bytes([1]) * 24, 0), _definition(bytes([2]) * 24, 0)])})
    old = msgspec.structs.replace(snap, tasks=[snap.tasks[0], msgspec.structs.replace(snap.tasks[1], attempt=-1)])
    continued = SnapshotBuilder.from_snapshot(decode_snapshot(encode_snapshot(old))).build()
    assert [(t.task_id, t.attempt) for t in continued.tasks] == [(snap.tasks[0].task_id, 0)]


def test_a_task_event_whose_id_is_not_base64_is_rejected_alone():
    good = _definition(bytes([7]) * 24, 0)
    key = layout.event_batch_key(REF, HEAD_NODE_ID, "w", 0, at_ms=1)
    snap = _build({key: _batch([good, _definition(b"", 0, b64="not base64!")])})
    assert [t.task_id for t in snap.tasks] == ["07" * 24] and snap.events_rejected == 1 and not snap.complete


def test_an_error_info_that_is_not_ray_s_shape_costs_only_itself():
    """rayErrorInfo is any JSON object to the collector: an errorType that is an object once failed the whole
    build (it reached the string table, unhashable). Only strings are shown; the rest of the session is."""
    events = [e for body in received_bodies() for e in body]
    bad = next(i for i, e in enumerate(events) if e["eventType"] == "TASK_LIFECYCLE_EVENT")
    broken = json.loads(json.dumps(events[bad]))
    broken["taskLifecycleEvent"]["rayErrorInfo"] = {"errorType": {"nested": 1}, "errorMessage": ["a", "list"]}
    assert accept_events(json.dumps([broken]).encode())[1] == []  # the collector stores it
    key = layout.event_batch_key(REF, HEAD_NODE_ID, "w", 0, at_ms=1)
    snap = _build({key: _batch(events[:bad] + [broken] + events[bad + 1:])})
    assert _content(snap) == _content(_build({key: _batch(events)}))


@pytest.mark.parametrize("event_type, change", [
    ("TASK_LIFECYCLE_EVENT", lambda e: e["taskLifecycleEvent"]["taskLogInfo"].update(stdoutStart="ten")),
    ("TASK_PROFILE_EVENT", lambda e: e["taskProfileEvents"]["profileEvents"]["events"][0].update(startTime="1.5")),
    # integers, but not what the snapshot can hold: once the whole build failed on such an offset; a rejected
    # profile event once left its task behind, unlisted
    ("TASK_LIFECYCLE_EVENT", lambda e: e["taskLifecycleEvent"]["taskLogInfo"].update(stdoutEnd=str(2**64 - 1))),
    ("TASK_LIFECYCLE_EVENT", lambda e: e["taskLifecycleEvent"]["taskLogInfo"].update(stderrStart="-5")),
    ("TASK_PROFILE_EVENT", lambda e: e["taskProfileEvents"]["profileEvents"]["events"][0].update(endTime=str(2**64))),
])
def test_a_bad_int64_is_rejected_alone(event_type, change):
    """Ray sends 64-bit integers as strings, and the collector keeps any string there; the builder reads them
    as integers in its decoder (stored_events.py): one that is not, or that the snapshot cannot hold,
    rejects its own event only."""
    events = [e for body in received_bodies() for e in body]
    bad = next(i for i, e in enumerate(events) if e["eventType"] == event_type
               and (event_type != "TASK_LIFECYCLE_EVENT" or "taskLogInfo" in e["taskLifecycleEvent"]))
    broken = json.loads(json.dumps(events[bad]))
    change(broken)
    assert accept_events(json.dumps([broken]).encode())[1] == []  # the collector stores it
    _assert_rejected_alone(events, bad, broken)


@pytest.mark.parametrize("field, value", [
    ("requiredResources", "not a map"), ("labelSelector", {"a": 1}), ("taskFunc", ["not", "a", "descriptor"]),
])
def test_a_task_definition_with_a_bad_field_is_rejected_alone(field, value):
    """The builder decodes descriptors and resource maps lazily (raw JSON, normalised once per distinct value):
    a bad one still rejects its own event only, exactly as if the event had never arrived."""
    events = [e for body in received_bodies() for e in body]
    bad = next(i for i, e in enumerate(events) if e["eventType"] == "TASK_DEFINITION_EVENT")
    broken = json.loads(json.dumps(events[bad]))
    broken["taskDefinitionEvent"][field] = value
    _assert_rejected_alone(events, bad, broken)


def test_line_endings_and_blank_lines_do_not_matter(reference):
    batches = {}
    for key, data in stored_batches().items():
        lines = gzip.decompress(data).split(b"\n")
        batches[key] = gzip.compress(b"\r\n\r\n".join(lines) + b"\n\n")
    assert _content(_build(batches)) == _content(reference)


def test_the_gc_switch_is_put_back_as_it_was_found():
    """The builder pauses the (process-wide) cyclic GC while it works; builds in threads overlap."""
    batches = stored_batches()
    was = gc.isenabled()
    try:
        for enabled in (True, False):
            (gc.enable if enabled else gc.disable)()
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(lambda _: _build(batches), range(8)))
            assert gc.isenabled() is enabled
    finally:
        (gc.enable if was else gc.disable)()


def test_format_version_and_magic():
    snap = build_fixture_snapshot()
    data = encode_snapshot(snap)
    assert decode_snapshot(data) == snap
    other = data[:6] + (FORMAT_VERSION + 1).to_bytes(2, "little") + data[8:]
    with pytest.raises(SnapshotFormatError, match=f"v{FORMAT_VERSION + 1}"):
        decode_snapshot(other)
    with pytest.raises(SnapshotFormatError):
        decode_snapshot(b"garbage")
    with pytest.raises(SnapshotFormatError):
        decode_snapshot(data[:-10])


def test_dead_session_ends_what_was_still_alive():
    """Ray sends nothing after `ray stop`: what was last ALIVE is shown DEAD at the session's end."""
    end_ms = 1_795_441_900_000
    snap = _build(stored_batches(), dead=True, end_ms=end_ms)
    actor = next(a for a in api.list_actors(snap, {"detail": "1"})[1]["data"]["result"]["result"]
                 if a["actor_id"] == ALIVE_ACTOR)
    assert actor["state"] == "DEAD" and actor["death_cause"]["actor_died_error_context"]["error_message"]
    logical = api.logical_actors(snap, {})[1]["data"]["actors"][ALIVE_ACTOR]
    assert logical["endTime"] == end_ms
    node = api.list_nodes(snap, {"detail": "1"})[1]["data"]["result"]["result"][0]
    assert node["state"] == "DEAD" and node["end_time_ms"] == end_ms and node["state_message"]
    workers = api.list_workers(snap, {"limit": "100"})[1]["data"]["result"]["result"]
    assert workers and not any(w["is_alive"] for w in workers)
    tasks = json.loads(api.list_tasks(snap, {"limit": "1000", "exclude_driver": "false"})[1])["data"]["result"]["result"]
    assert {t["state"] for t in tasks} <= {"FINISHED", "FAILED"}
    running_drivers = [t for t in tasks if t["type"] == "DRIVER_TASK" and t["error_type"] == "WORKER_DIED"]
    assert running_drivers  # the internal drivers were RUNNING when the session stopped
    pgs = api.list_placement_groups(snap, {})[1]["data"]["result"]["result"]
    assert pgs == []  # no endpoint answer was stored in this build
    # the same session, live, still shows them alive; marking it dead later (a stored snapshot rebuilt
    # after the operator's mark-dead) ends them the same way
    live = _build(stored_batches())
    assert any(a["state"] == "ALIVE" for a in api.list_actors(live, {})[1]["data"]["result"]["result"])
    builder = SnapshotBuilder.from_snapshot(decode_snapshot(encode_snapshot(live)))
    builder.dead, builder.end_ms = True, end_ms
    assert encode_snapshot(builder.build()) == encode_snapshot(snap)


def test_node_page_fields_the_ui_reads_unguarded():
    """NodeDetail.tsx indexes loadAvg, networkSpeed, cmdline and workers without a guard; cpus (the host's
    core counts, which no event records) is guarded, and left out rather than answered "0/ 0"."""
    snap = build_fixture_snapshot()
    detail = api.node_detail(snap, {}, HEAD_NODE_ID)[1]["data"]["detail"]
    for key in ("loadAvg", "networkSpeed", "cmdline", "workers"):
        assert isinstance(detail[key], list), key
    assert "cpus" not in detail
    assert detail["cpu"] == 0  # the CPU bar's percent (NaN draws it full)
    # the object store's size from the node's definition: the UI sums used + available (NaN without them)
    raylet = detail["raylet"]
    assert raylet["objectStoreUsedMemory"] == 0 and raylet["objectStoreAvailableMemory"] > 0
    assert detail["raylet"]["nodeId"] == HEAD_NODE_ID and detail["raylet"]["state"] == "ALIVE"
    with pytest.raises(api.ApiError) as failure:
        api.node_detail(snap, {}, "00" * 28)
    assert failure.value.status == 404


# ---- the API on bad or large input ---------------------------------------------------------------


@pytest.mark.parametrize("query, message", [
    ({"filter_keys": "colour", "filter_predicates": "=", "filter_values": "red"}, "not supported"),
    ({"filter_keys": "state", "filter_predicates": "~", "filter_values": "RUNNING"}, "Unsupported filter predicate"),
    ({"filter_keys": ["state", "job_id"], "filter_predicates": "=", "filter_values": "RUNNING"}, "same number"),
    ({"filter_keys": "job_id", "filter_predicates": "=", "filter_values": "zz"}, "hex id"),
    ({"limit": "many"}, "integer"),
    ({"limit": "-1"}, "negative"),
    ({"detail": "perhaps"}, "boolean"),
])
def test_bad_filters_are_400(query, message):
    snap = build_fixture_snapshot()
    with pytest.raises(api.ApiError) as failure:
        api.list_tasks(snap, query)
    assert failure.value.status == 400 and message in failure.value.message
    assert failure.value.body() == {"result": False, "msg": failure.value.message, "data": {}}


def test_summary_by_must_be_known():
    with pytest.raises(api.ApiError) as failure:
        api.summarize_tasks(build_fixture_snapshot(), {"summary_by": "colour"})
    assert failure.value.status == 400


def _tasks(snap, **query):
    status, body = api.list_tasks(snap, query)  # the encoded body, as the runtime sends it
    assert status == 200
    return json.loads(body)["data"]["result"]


def test_filters_not_equal_several_and_exclude_driver():
    snap = build_fixture_snapshot()
    everything = _tasks(snap, limit="1000")
    assert everything["total"] == 71
    not_finished = _tasks(snap, limit="1000", filter_keys="state", filter_predicates="!=", filter_values="finished")
    assert {t["state"] for t in not_finished["result"]} == {"FAILED"}
    both = _tasks(snap, limit="1000", filter_keys=["job_id", "type"], filter_predicates=["=", "="],
                  filter_values=["01000000", "ACTOR_TASK"])
    assert both["num_filtered"] == 11 and {t["type"] for t in both["result"]} == {"ACTOR_TASK"}
    # total counts what the GCS-side filters (job_id here) let through; num_filtered applies them all
    assert both["total"] == 66
    with_drivers = _tasks(snap, limit="1000", exclude_driver="false")
    assert with_drivers["total"] == 77
    assert sum(t["type"] == "DRIVER_TASK" for t in with_drivers["result"]) == 6
    by_pid = _tasks(snap, limit="1000", filter_keys="worker_pid", filter_predicates="=", filter_values="10627")
    assert by_pid["num_filtered"] and all(t["worker_pid"] == 10627 for t in by_pid["result"])


def test_no_ten_thousand_cap():
    """Ray refuses limit > 10000; we honour it and report the total."""
    snap = build_fixture_snapshot()
    body = _tasks(snap, limit="50000")
    assert body["total"] == len(body["result"]) == 71
    page = _tasks(snap, limit="5")
    assert len(page["result"]) == 5 and page["total"] == 71 and page["num_filtered"] == 71
    assert [t["task_id"] for t in page["result"]] == sorted(t["task_id"] for t in body["result"])[:5]


@pytest.mark.parametrize("query", [
    {"node_id": HEAD_NODE_ID, "filename": "../../../etc/passwd"},
    {"node_id": HEAD_NODE_ID, "filename": "/etc/passwd"},
    {"node_id": HEAD_NODE_ID, "filename": "events/../raylet.out"},
    {"node_id": HEAD_NODE_ID, "filename": "%2e%2e/raylet.out"},
])
def test_log_paths_outside_the_index_are_not_found(query):
    with pytest.raises(api.ApiError) as failure:
        api.resolve_log_file(build_fixture_snapshot(), query)
    assert failure.value.status == 404


def test_log_resolution_by_pid_and_bad_queries():
    snap = build_fixture_snapshot()
    resolved = api.resolve_log_file(snap, {"node_id": HEAD_NODE_ID, "pid": "10229", "suffix": "err"})
    assert resolved.filename.endswith("-10229.err")
    for query, status in [({"node_id": HEAD_NODE_ID, "pid": "x"}, 400), ({"suffix": "log", "pid": "1"}, 400),
                          ({"node_ip": "10.0.0.1", "filename": "raylet.out"}, 404), ({}, 400)]:
        with pytest.raises(api.ApiError) as failure:
            api.resolve_log_file(snap, query)
        assert failure.value.status == status, query


def test_routes_are_unique_and_cover_the_ui_paths():
    paths = [p for _, p, _ in api.ROUTES]
    assert len(paths) == len(set(paths))
    for ui_path in ("/logical/actors", "/logical/actors/{actor_id}", "/nodes", "/nodes/{node_id}", "/api/jobs/",
                    "/api/jobs/{job_id}", "/api/v0/tasks/summarize", "/api/v0/tasks", "/api/v0/tasks/timeline",
                    "/api/v0/placement_groups", "/api/v0/logs", "/events", "/api/cluster_status",
                    "/api/serve/applications/", "/api/data/datasets/{job_id}",
                    "/usage_stats_enabled", "/api/v0/cluster_metadata", "/api/v0/runtime_env_redaction",
                    "/api/profiling_enabled", "/api/authentication_mode", "/api/grafana_health",
                    "/api/prometheus_health", "/timezone", "/api/v0/actors", "/api/v0/nodes", "/api/v0/jobs",
                    "/api/version"):
        assert ui_path in paths, ui_path


def test_absent_task_log_offsets_stay_absent_and_the_log_is_read_to_its_end():
    """Issue 10, item 4: an end offset no event gave was filled with 0, so the task's log was served empty;
    Ray reads to the end of the file then (ray/dashboard/modules/log/log_manager.py)."""
    events = [e for body in received_bodies() for e in body]
    with_log = next(e for e in events if e["eventType"] == "TASK_LIFECYCLE_EVENT"
                    and (e["taskLifecycleEvent"].get("taskLogInfo") or {}).get("stdoutEnd"))
    lifecycle = json.loads(json.dumps(with_log))
    info = lifecycle["taskLifecycleEvent"]["taskLogInfo"]
    for key in ("stdoutEnd", "stderrEnd"):
        info.pop(key)
    info["stdoutStart"] = 0  # a real 0, which must stay a 0
    lifecycle["eventId"] = "bm8tZW5k"
    others = [e for e in events if e["eventId"] != with_log["eventId"]
              and not (e["eventType"] == "TASK_LIFECYCLE_EVENT"
                       and e["taskLifecycleEvent"]["taskId"] == with_log["taskLifecycleEvent"]["taskId"]
                       and (e["taskLifecycleEvent"].get("taskLogInfo") or {}))]
    snapshot = _build({"k": _batch(others + [lifecycle])})
    task_id = layout_hex(with_log["taskLifecycleEvent"]["taskId"])
    attempt = with_log["taskLifecycleEvent"].get("taskAttempt", 0)
    [task] = [t for t in snapshot.tasks if t.task_id == task_id and t.attempt == attempt]
    from rayhistory.server.snapshot import task_log_info

    shown = task_log_info(snapshot.strings, task)
    assert "stdout_end" not in shown and "stderr_end" not in shown
    assert shown["stdout_start"] == 0 and "stdout_file" in shown
    resolved = api._resolve_task_log(snapshot, task_id, attempt, "out")
    assert (resolved.start, resolved.end) == (0, None)
    # the compacted snapshot keeps the difference, and so does a builder continued from it
    again = SnapshotBuilder.from_snapshot(decode_snapshot(encode_snapshot(snapshot))).build()
    [task] = [t for t in again.tasks if t.task_id == task_id and t.attempt == attempt]
    assert task_log_info(again.strings, task) == shown


def layout_hex(b64: str) -> str:
    import base64

    return base64.b64decode(b64).hex()


@pytest.mark.parametrize("query", [{}, {"detail": "1", "limit": "3"}, {"limit": "0"}])
def test_unfiltered_task_list_from_the_job_index_is_the_filtered_path(query):
    """An unfiltered list comes from the per-job index; a filter that keeps every row takes the general path."""
    snap = build_fixture_snapshot()
    no_op = {"filter_keys": "type", "filter_predicates": "!=", "filter_values": "NO_SUCH_TYPE"}
    assert api.list_tasks(snap, query)[1] == api.list_tasks(snap, {**query, **no_op})[1]


@pytest.mark.parametrize("extra_data, colour", [
    ("[1]", "rail_animation"), ("12", "rail_animation"), ("not json", "rail_animation"),  # not an object: ignored
    ('{"cname": []}', "generic_work"), ('{"cname": {"a": 1}}', "generic_work"),  # a colour that is not a name
])
def test_a_profile_events_odd_extra_data_is_a_slice_in_the_timeline(extra_data, colour):
    # extra_data is whatever the worker wrote: JSON that is not an object, or an unhashable cname, was a 500
    from rayhistory.server.api_timeline import _kinds

    found = _kinds(["task:execute", extra_data])((0, 1))
    assert (found.name_json, found.colour) == (b'"task:execute","name":"task:execute"', colour)
