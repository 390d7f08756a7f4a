"""Routing by each event's own session and node, and the flush policy: timer, size, retries, idempotence."""

from __future__ import annotations

import asyncio
import gzip
import json
import shutil

from rayhistory import layout
from rayhistory.collector.flush import Backoff, Flusher, batch_body, batch_objects
from rayhistory.collector.ingest import spool_records
from rayhistory.collector.metrics import CollectorMetrics
from rayhistory.collector.registry import SessionRegistry
from rayhistory.collector.spool import SegmentName, Spool, decode_segment
from rayhistory.events import accept_events
from rayhistory.layout import SessionRef
from rayhistory.store import Store
from tests.collector.storage_view import session_info, stored_event_lines
from tests.conftest import HEAD_NODE_ID, SESSION_NAME, received_bodies

OTHER_SESSION = "session_2026-11-24_08-00-00_000001_42"
OTHER_NODE_B64 = "q" * 36 + "qg=="  # 28 bytes of 0xaa
OTHER_NODE = "aa" * 28


def _body(events: list[dict]) -> bytes:
    return json.dumps(events).encode()


def interleaved_events() -> list[dict]:
    """The fixture's events, with every third one moved to another session and every fifth to another node:
    what a collector sees if it receives events of several sessions and nodes at once."""
    events = [e for body in received_bodies() for e in body]
    for i, event in enumerate(events):
        if i % 3 == 0:
            event["sessionName"] = OTHER_SESSION
        if i % 5 == 0:
            event["nodeId"] = OTHER_NODE_B64
    return events


def test_interleaved_events_route_by_their_own_session_and_node():
    events = interleaved_events()
    accepted, errors = accept_events(_body(events))
    assert not errors
    groups = decode_segment(spool_records(accepted)).groups
    expected: dict[tuple[str, str], list[str]] = {}
    for e in events:
        node = OTHER_NODE if e["nodeId"] == OTHER_NODE_B64 else HEAD_NODE_ID
        expected.setdefault((e["sessionName"], node), []).append(e["eventId"])
    got = {k: [json.loads(line)["eventId"] for p in v for line in bytes(p).splitlines()] for k, v in groups.items()}
    assert got == expected
    assert len(got) == 4


def test_batch_keys_come_from_the_segment_name_and_the_group():
    name = SegmentName(1795441689800, "abc123", 4)
    keys = batch_objects(name, {(SESSION_NAME, HEAD_NODE_ID): [], (OTHER_SESSION, OTHER_NODE): []}, "ray", "demo")
    ref = SessionRef("ray", "demo", SESSION_NAME)
    assert keys[(ref, HEAD_NODE_ID)] == layout.event_batch_key(ref, HEAD_NODE_ID, "abc123", 4, 1795441689800)
    assert layout.parse_event_batch_key(ref, keys[(ref, HEAD_NODE_ID)]).seq == 4


def test_batch_bodies_are_byte_identical_when_built_again():
    payloads = [b'{"a":1}\n', b'{"a":2}\n']
    assert batch_body(payloads) == batch_body(list(payloads))
    assert gzip.decompress(batch_body(payloads)) == b'{"a":1}\n{"a":2}\n'


def test_backoff_grows_to_its_maximum_and_resets():
    b = Backoff(initial=1, maximum=8)
    delays = [b.next_delay() for _ in range(6)]
    assert delays[0] < 1.3 and 6.4 <= delays[-1] <= 9.6
    b.reset()
    assert b.next_delay() < 1.3


def _flusher(tmp_path, store: Store, **kw) -> tuple[Flusher, Spool, CollectorMetrics]:
    spool = Spool(tmp_path / "spool", "w1", max_bytes=1 << 30)
    metrics = CollectorMetrics()
    registry = SessionRegistry(store, "w1", "RayJob", "nightly")
    flusher = Flusher(spool, store, "ray", "demo", metrics, registry.note, kw.get("interval", 3600),
                      kw.get("flush_bytes", 1 << 30))
    flusher.backoff = Backoff(initial=0.05, maximum=0.2)
    return flusher, spool, metrics


async def test_flush_stores_exactly_the_accepted_lines_and_registers_each_session(tmp_path):
    store = Store(f"file://{tmp_path}/store")
    flusher, spool, metrics = _flusher(tmp_path, store)
    events = interleaved_events()
    accepted, _ = accept_events(_body(events))
    await spool.append(spool_records(accepted))
    assert await flusher.flush_all()
    assert spool.sealed() == [] and spool.bytes == 0
    stored = {}
    for session in (SESSION_NAME, OTHER_SESSION):
        for node, lines in (await stored_event_lines(store, SessionRef("ray", "demo", session))).items():
            stored[(session, node)] = lines
    want: dict[tuple[str, str], list[bytes]] = {}
    for a in accepted:
        want.setdefault((a.session_name, a.node_id_hex), []).append(a.raw)
    assert stored == want
    assert metrics.events_flushed._value.get() == len(events)
    info = await session_info(store, SessionRef("ray", "demo", OTHER_SESSION))
    assert info.state == "live" and info.node_ids == sorted([HEAD_NODE_ID, OTHER_NODE])
    assert (info.owner_kind, info.owner_name) == ("RayJob", "nightly")


async def test_a_full_segment_is_flushed_before_the_timer(tmp_path):
    store = Store(f"file://{tmp_path}/store")
    flusher, spool, _ = _flusher(tmp_path, store, interval=3600, flush_bytes=10_000)
    stopping = asyncio.Event()
    runner = asyncio.create_task(flusher.run(stopping))
    try:
        records = spool_records(accept_events(_body(received_bodies()[0]))[0])
        for _ in range(10_000 // len(records) + 1):
            await spool.append(records)
            await flusher.after_append()
        assert spool.active_bytes < 10_000  # sealed on size by the request path, not by the timer
        for _ in range(100):
            if await store.list(layout.events_prefix(SessionRef("ray", "demo", SESSION_NAME))):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("a segment over flush_bytes was not flushed")
    finally:
        stopping.set()
        flusher.wake()
        await runner


async def test_the_timer_flushes_a_small_segment(tmp_path):
    store = Store(f"file://{tmp_path}/store")
    flusher, spool, _ = _flusher(tmp_path, store, interval=0.1)
    stopping = asyncio.Event()
    runner = asyncio.create_task(flusher.run(stopping))
    try:
        accepted, _ = accept_events(_body(received_bodies()[0]))
        await spool.append(spool_records(accepted))
        for _ in range(100):
            if not spool.bytes:
                break
            await asyncio.sleep(0.05)
        assert spool.bytes == 0
    finally:
        stopping.set()
        flusher.wake()
        await runner


async def test_storage_errors_keep_the_segment_and_are_retried_until_storage_is_back(tmp_path):
    root = tmp_path / "store"
    store = Store(f"file://{root}")
    flusher, spool, metrics = _flusher(tmp_path, store)
    accepted, _ = accept_events(_body(received_bodies()[0]))
    await spool.append(spool_records(accepted))
    # A real I/O failure: a plain file where the store's top folder must be makes every write fail.
    (root / "v1").write_bytes(b"")
    loop = asyncio.get_running_loop()
    assert not await flusher.flush_all(deadline=loop.time() + 0.5)
    assert len(spool.sealed()) == 1 and spool.bytes > 0
    assert metrics.upload_errors.labels("events")._value.get() >= 1

    retrying = asyncio.create_task(flusher.flush_all())
    # requests keep coming while storage is down: they are spooled in segments of at most flush_bytes
    flusher.flush_bytes = 50_000
    more, _ = accept_events(_body(received_bodies()[1] * 20))
    for _ in range(10):
        await spool.append(spool_records(more))
        await flusher.after_append()
    await asyncio.sleep(0.3)
    assert not retrying.done()
    assert len(spool.sealed()) > 2
    assert all(spool.path(n).stat().st_size < 50_000 + len(spool_records(more)) for n in spool.sealed())
    (root / "v1").unlink()  # storage is back
    assert await asyncio.wait_for(retrying, 10)
    assert spool.bytes == 0
    lines = await stored_event_lines(store, SessionRef("ray", "demo", SESSION_NAME))
    assert sorted(lines[HEAD_NODE_ID]) == sorted([a.raw for a in accepted] + [a.raw for a in more] * 10)
    assert metrics.upload_retries.labels("events")._value.get() >= 1


async def test_uploading_a_segment_again_rewrites_the_same_objects(tmp_path):
    store = Store(f"file://{tmp_path}/store")
    flusher, spool, _ = _flusher(tmp_path, store)
    accepted, _ = accept_events(_body(received_bodies()[0]))
    await spool.append(spool_records(accepted))
    name = await spool.seal()
    copy = tmp_path / "copy.seg"
    shutil.copy(spool.path(name), copy)
    await flusher.flush_segment(name)
    ref = SessionRef("ray", "demo", SESSION_NAME)
    first = {i.key: await store.get(i.key) for i in await store.list(layout.events_prefix(ref))}
    # a collector killed after the upload but before deleting the segment uploads it again on restart
    shutil.copy(copy, spool.path(name))
    restarted, _, _ = _flusher(tmp_path, store)
    assert await restarted.flush_all()
    second = {i.key: await store.get(i.key) for i in await store.list(layout.events_prefix(ref))}
    assert first == second and len(first) == 1
