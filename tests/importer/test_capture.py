"""What `rayhistory import` asks and keeps, decided from the dashboard's answers (rayhistory/capture.py, pure):
hostile answers (wrong types, huge lists, nesting too deep, names that would leave the session) yield nothing
of theirs, never an exception."""

from __future__ import annotations

import json

import pytest

from rayhistory import capture, layout
from rayhistory.capture import Request
from tests.conftest import API

NODE = "ab" * 28


def test_the_first_round_holds_what_the_ui_and_the_collector_read():
    urls = {r.url for r in capture.FIXED}
    assert {"/api/version", "/api/jobs/", "/nodes?view=summary", "/logical/actors", "/events",
            "/api/v0/tasks?detail=1&limit=10000", "/api/v0/placement_groups?detail=1&limit=10000",
            "/api/cluster_status?format=1", "/api/serve/applications/"} <= urls
    # the server's own answers (no process is left to authenticate against or profile) are never captured
    assert not any(p in urls for p in ("/api/authentication_mode", "/api/profiling_enabled", "/api/grafana_health"))
    assert set(capture.POLLED) == {"version", "placement_groups", "jobs", "serve_applications", "cluster_metadata",
                                   "timezone", "cluster_status"}


def test_a_request_has_one_name_whatever_its_query_order():
    a = Request("api/v0/tasks", (("limit", "1"), ("detail", "1")))
    b = Request("api/v0/tasks", (("detail", "1"), ("limit", "1")))
    assert a.endpoint == b.endpoint and a.endpoint.startswith("capture_")
    assert a.endpoint != Request("api/v0/tasks", (("detail", "1"),)).endpoint
    assert layout.endpoint_key(layout.SessionRef("n", "c", "session_2026-11-23_13-47-55_556257_9670"), a.endpoint, "w")
    with pytest.raises(layout.LayoutError):
        layout.capture_endpoint("x" * 5000, ())


def test_second_round_from_the_fixture_answers():
    answers = {Request("api/jobs/"): json.loads((API / "api__jobs.json").read_text()),
               Request("logical/actors"): {"data": {"actors": {"b292f1fc52f7f2982c2a1b1a01000000": {}}}},
               Request("nodes", (("view", "summary"),)): {"data": {"summary": [{"raylet": {"nodeId": NODE,
                                                                                             "state": "ALIVE"}}]}}}
    urls = [r.url for r in capture.detail_requests(answers, 1000)]
    assert "/api/jobs/fixture_submitted_job" in urls and "/api/jobs/01000000" in urls
    assert "/api/v0/tasks?detail=1&limit=10000&filter_keys=job_id&filter_predicates=%3D&filter_values=01000000" in urls
    assert "/logical/actors/b292f1fc52f7f2982c2a1b1a01000000" in urls and f"/nodes/{NODE}" in urls
    assert len(capture.detail_requests(answers, 3)) == 3  # bounded


HOSTILE = [None, 1, "x", [], {}, {"data": None}, {"data": {"actors": ["a"]}}, {"data": {"summary": {"a": 1}}},
           [{"job_id": ["x"]}, {"submission_id": "../../etc"}, {"job_id": "0" * 9000}, "row", None]]


@pytest.mark.parametrize("answer", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_answers_name_nothing(answer):
    assert capture.job_ids(answer, 100) == [] and capture.driver_job_ids(answer, 100) == []
    assert capture.actor_ids(answer, 100) == [] and capture.node_ids(answer, 100) == []
    assert capture.detail_requests({Request("api/jobs/"): answer, Request("logical/actors"): answer}, 100) == []
    assert capture.log_listing(answer, 100).files == []


def test_ids_from_answers_are_checked_and_bounded():
    rows = [{"job_id": f"{i:08x}"} for i in range(50_000)] + [{"job_id": "ZZ"}, {"submission_id": "a/b"}]
    assert len(capture.driver_job_ids(rows, 100)) == 100
    assert capture.job_ids([{"submission_id": "a/b"}, {"submission_id": "..", "job_id": "01000000"}], 10) == ["01000000"]
    summary = {"data": {"summary": [{"raylet": {"nodeId": "../" + NODE, "state": "ALIVE"}},
                                    {"raylet": {"nodeId": NODE.upper(), "state": "ALIVE"}},
                                    {"raylet": {"nodeId": NODE, "state": "DEAD"}}]}}
    assert capture.node_ids(summary, 10) == [NODE] and capture.alive_node_ids(summary, 10) == []


def test_nesting_too_deep_or_bad_bytes_parse_as_nothing():
    assert capture.parse(b"[" * 100_000 + b"]" * 100_000) is None
    assert capture.parse(b"\xff\xfe") is None and capture.parse(None) is None
    assert capture.parse(b'{"a": 1}') == {"a": 1}


def test_log_names_that_would_leave_the_session_are_refused():
    names = ["raylet.out", "events/", "../../../etc/passwd", "/etc/passwd", "a//b", "./x", "x/../../y", "ok\n",
             "a\\b", "caf\u00e9.log", "", 7, None, ["x"], "a/" * 40 + "f", "x" * 300, "events/event_GCS.log"]
    listing = capture.log_listing({"data": {"result": {"internal": names, "bad": "raylet.out", "worse": None}}}, 100)
    assert listing.files == ["raylet.out", "events/event_GCS.log"] and listing.folders == ["events"]
    assert len(listing.refused) == len(names) - 3
    for name in listing.files:
        layout.check_relpath(name)
    assert len(capture.log_listing({"data": {"result": {"x": [f"f{i}" for i in range(10_000)]}}}, 25).files) == 25


def test_log_requests_take_checked_names_only():
    assert capture.log_file_request(NODE, "events/event_GCS.log").url == \
        f"/api/v0/logs/file?node_id={NODE}&filename=events%2Fevent_GCS.log&lines=-1"
    assert capture.log_list_request(NODE, "events").url == f"/api/v0/logs?node_id={NODE}&glob=events%2F%2A"
    for bad_node, bad_path in ((NODE, "../x"), ("../" + NODE, "x"), (NODE, "/abs")):
        with pytest.raises(layout.LayoutError):
            capture.log_file_request(bad_node, bad_path)
