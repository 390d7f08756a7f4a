"""Log files served from stored log parts: against the live dashboard's answers, Ray's own tail code,
and path tricks that try to leave the session."""

from __future__ import annotations

import json

import pytest
from ray.dashboard.modules.log.log_agent import find_start_offset_last_n_lines_from_offset
from yarl import URL

from rayhistory import layout
from rayhistory.store import ObjectInfo, Store
from rayhistory.server import logs
from tests.conftest import API, HEAD_NODE_ID
from tests.server.fixture_store import fixture_ref, log_files, running_server, write_fixture_session


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(f"file://{tmp_path}/store")


def captured_log_requests() -> list[dict]:
    return [e for e in json.loads((API / "_index.json").read_text())
            if e["path"].startswith("/api/v0/logs/file")
            or (e["path"].startswith("/api/jobs/") and e["path"].endswith("/logs"))]


async def test_log_requests_answer_like_the_live_dashboard(store):
    """Every captured logs/file (and job logs) request, against the answer the live dashboard gave.

    The capture was taken before `ray stop`, the stored files after it: a file that grew since (raylet.out,
    gcs_server.out, ...) cannot match byte for byte, but the live tail must then be a slice of it.
    """
    ref = await write_fixture_session(store)  # large files are stored as two overlapping parts
    files = log_files()
    grown = 0
    async with running_server(store) as (client, _, _state):
        requests = captured_log_requests()
        assert len(requests) >= 30
        for entry in requests:
            resp = await client.get(URL(f"/s/{ref.tail}{entry['path']}", encoded=True))
            body = await resp.read()
            want = (API / entry["file"]).read_bytes()
            if entry["status"] == 500:
                # Ray answers "no such log" with a 500 and its message; we answer 404 with the same message
                assert resp.status == 404 and body == want, entry["path"]
                continue
            assert resp.status == 200, entry["path"]
            if entry["path"].startswith("/api/jobs/"):
                assert json.loads(body) == json.loads(want)
                continue
            assert resp.headers["Content-Disposition"] == 'attachment; filename="file.txt"'
            if body != want:
                query = URL(entry["path"]).query
                stored = files[query["filename"]]
                if query.get("filter_ansi_code") == "true":
                    stored = logs.ANSI_ESC_PATTERN.sub(b"", stored)
                assert want in stored, entry["path"]
                grown += 1
    assert grown <= 4  # the files the head kept writing to after the capture


@pytest.mark.parametrize("lines", [0, 1, 2, 3, 10, 999, 1000, 5000, 100000])
def test_tail_start_matches_rays_own_code(lines, tmp_path):
    for name, content in list(log_files().items())[:40] + [("unterminated", b"a\nb\nc"), ("empty", b"")]:
        path = tmp_path / "f"
        path.write_bytes(content)
        with open(path, "rb") as fh:
            ray_start = find_start_offset_last_n_lines_from_offset(fh, offset=-1, n=lines)
        assert logs.tail_start(content, len(content), lines) == ray_start, name
        for end in (len(content) // 3, len(content) // 2):
            with open(path, "rb") as fh:
                assert logs.tail_start(content, end, lines) == \
                    find_start_offset_last_n_lines_from_offset(fh, offset=end, n=lines), (name, end)


def test_assemble_skips_repeated_bytes_and_keeps_order():
    data = bytes(range(200))
    pieces = [(100, data[100:200]), (0, data[:120]), (50, data[50:60])]
    assert logs.assemble(pieces) == data
    assert logs.assemble([(10, data[10:50]), (40, data[40:80])], base=10) == data[10:80]


def test_group_log_parts_keeps_the_newest_generation():
    ref = fixture_ref()
    key = lambda gen, off: layout.log_part_key(ref, HEAD_NODE_ID, "raylet.out", gen, off)  # noqa: E731
    infos = [ObjectInfo(key(0, 0), 100), ObjectInfo(key(0, 100), 50), ObjectInfo(key(1, 0), 20),
             ObjectInfo(layout.event_batch_key(ref, HEAD_NODE_ID, "w", 1, 1), 5)]
    groups = logs.group_log_parts(ref, infos)
    assert list(groups) == [(HEAD_NODE_ID, "raylet.out")]
    assert [p.key for p in groups[(HEAD_NODE_ID, "raylet.out")]] == [key(1, 0)]
    assert logs.file_size(groups[(HEAD_NODE_ID, "raylet.out")]) == 20


def test_select_applies_range_tail_and_ansi_filter():
    data = b"one\n\x1b[32mtwo\x1b[0m\nthree\nfour\n"
    assert logs.select(data, None, None, 2, False) == b"three\nfour\n"
    assert logs.select(data, None, None, -1, True) == b"one\ntwo\nthree\nfour\n"
    assert logs.select(data, 4, 17, -1, True) == b"two\n"
    assert logs.select(data, 4, 17, 1000, False) == data[4:17]


async def test_range_reads_only_the_parts_it_needs(store):
    ref = fixture_ref()
    content = b"".join(b"line %04d\n" % i for i in range(1000))
    for offset in range(0, len(content), 1000):
        await store.put(layout.log_part_key(ref, HEAD_NODE_ID, "worker.out", 0, offset), content[offset:offset + 1000])
    data, base = await logs.read_log(store, ref, HEAD_NODE_ID, "worker.out", 4500, 5500)
    assert base == 4000 and data == content[4000:6000]
    assert await logs.log_file_bytes(store, ref, HEAD_NODE_ID, "worker.out", 4500, 5500, -1, False) == content[4500:5500]
    assert await logs.log_file_bytes(store, ref, HEAD_NODE_ID, "worker.out", None, None, 3, False) == content[-30:]


TRAVERSALS = [
    "filename=../../../../etc/passwd",
    "filename=..%2F..%2Fetc%2Fpasswd",
    "filename=%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "filename=%252e%252e%252fetc%252fpasswd",
    "filename=%2Fetc%2Fpasswd",
    "filename=/etc/passwd",
    "filename=..%5C..%5Cetc%5Cpasswd",
    "filename=events/../../../index",
    "filename=events%2F..%2F..%2Fevents",
    "filename=.",
    "filename=raylet.out%00.txt",
]


@pytest.mark.parametrize("query", TRAVERSALS)
async def test_log_paths_never_leave_the_session(store, query):
    ref = await write_fixture_session(store, with_logs=False)
    async with running_server(store) as (client, _, _state):
        path = f"/s/{ref.tail}/api/v0/logs/file?node_id={HEAD_NODE_ID}&{query}&lines=10"
        resp = await client.get(URL(path, encoded=True))
        assert resp.status == 400, (query, resp.status)
        assert "invalid log file name" in await resp.text()


@pytest.mark.parametrize("query", ["glob=../*", "glob=/etc/*", "glob=events/../../*"])
async def test_log_listing_globs_never_leave_the_session(store, query):
    ref = await write_fixture_session(store, with_logs=False)
    async with running_server(store) as (client, _, _state):
        resp = await client.get(URL(f"/s/{ref.tail}/api/v0/logs?node_id={HEAD_NODE_ID}&{query}", encoded=True))
        assert resp.status == 400


@pytest.mark.parametrize("query, status", [
    ("lines=many", 400), ("lines=-5", 400), ("download_filename=a%22b", 400), ("suffix=log&task_id=00", 400),
])
async def test_bad_log_parameters_are_400(store, query, status):
    ref = await write_fixture_session(store)
    async with running_server(store) as (client, _, _state):
        resp = await client.get(URL(f"/s/{ref.tail}/api/v0/logs/file?node_id={HEAD_NODE_ID}&filename=raylet.out&"
                                    f"{query}", encoded=True))
        assert resp.status == status, await resp.text()


async def test_download_filename_names_the_attachment(store):
    ref = await write_fixture_session(store)
    async with running_server(store) as (client, _, _state):
        resp = await client.get(f"/s/{ref.tail}/api/v0/logs/file",
                                params={"node_ip": "127.0.0.1", "filename": "raylet.out", "lines": "-1",
                                        "download_filename": "raylet-full.txt"})
        assert resp.status == 200
        assert resp.headers["Content-Disposition"] == 'attachment; filename="raylet-full.txt"'
        assert await resp.read() == log_files()["raylet.out"]
