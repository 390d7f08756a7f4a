"""The spool: record format, torn tails, durability modes, bounds, and what a restarted collector finds."""

from __future__ import annotations

import asyncio
import resource
import signal

import pytest

from rayhistory import layout
from rayhistory.collector.spool import (
    HEADER_BYTES, MAGIC, MAX_RECORD_BYTES, SegmentName, Spool, SpoolFull, decode_segment, encode_record,
)
from tests.conftest import HEAD_NODE_ID, SESSION_NAME

OTHER_SESSION = "session_2026-11-24_08-00-00_000001_42"
OTHER_NODE = "ab" * 28


def test_records_round_trip_grouped_by_session_and_node():
    data = (encode_record(SESSION_NAME, HEAD_NODE_ID, [b'{"a":1}', b'{"a":2}'])
            + encode_record(OTHER_SESSION, OTHER_NODE, [b'{"b":1}'])
            + encode_record(SESSION_NAME, HEAD_NODE_ID, [b'{"a":3}']))
    decoded = decode_segment(data)
    assert decoded.torn_tail == -1 and decoded.damaged == []
    assert decoded.events == 4
    assert decoded.groups == {
        (SESSION_NAME, HEAD_NODE_ID): [b'{"a":1}\n{"a":2}\n', b'{"a":3}\n'],
        (OTHER_SESSION, OTHER_NODE): [b'{"b":1}\n'],
    }


@pytest.mark.parametrize("cut", [1, 10, 30, -1])
def test_a_torn_last_record_is_dropped_and_the_rest_kept(cut):
    first = encode_record(SESSION_NAME, HEAD_NODE_ID, [b'{"a":1}'])
    second = encode_record(SESSION_NAME, HEAD_NODE_ID, [b'{"a":2}', b'{"a":3}'])
    decoded = decode_segment(first + second[:cut])
    assert decoded.torn_tail == len(first) and decoded.damaged == []
    assert decoded.groups == {(SESSION_NAME, HEAD_NODE_ID): [b'{"a":1}\n']}


@pytest.mark.parametrize("where", ["magic", "length", "checksum", "identity", "payload"])
def test_a_damaged_record_is_skipped_and_every_record_after_it_kept(where):
    """Issue 9, item 1: one bad record used to end the segment, and the flusher deleted what followed it."""
    first = encode_record(SESSION_NAME, HEAD_NODE_ID, [b'{"a":1}'])
    second = bytearray(encode_record(SESSION_NAME, HEAD_NODE_ID, [b'{"a":2}']))
    third = encode_record(OTHER_SESSION, OTHER_NODE, [b'{"b":1}'])
    offset = {"magic": 1, "length": len(MAGIC), "checksum": len(MAGIC) + 4, "identity": HEADER_BYTES + 3,
              "payload": len(second) - 3}[where]
    second[offset] ^= 0x01
    decoded = decode_segment(first + bytes(second) + third)
    assert decoded.damaged == [(len(first), len(second))]
    assert decoded.torn_tail == -1
    assert decoded.groups == {(SESSION_NAME, HEAD_NODE_ID): [b'{"a":1}\n'], (OTHER_SESSION, OTHER_NODE): [b'{"b":1}\n']}


def test_event_content_cannot_look_like_a_record():
    """A payload holding the text of a record (or of an old-format header) is data, never a boundary."""
    inner = encode_record(OTHER_SESSION, OTHER_NODE, [b'{"forged":1}'])
    line = b'{"message":%s}' % repr(inner).encode()  # the same bytes, escaped as JSON would carry them
    data = encode_record(SESSION_NAME, HEAD_NODE_ID, [line, b'{"a":2}']) + encode_record(SESSION_NAME, HEAD_NODE_ID, [b'{"a":3}'])
    decoded = decode_segment(data)
    assert list(decoded.groups) == [(SESSION_NAME, HEAD_NODE_ID)] and decoded.events == 3


@pytest.mark.parametrize("session", [SESSION_NAME + "\n", SESSION_NAME + "9" * 300, "session_２０２６-11-23_13-47-55_556257_9670",
                                     "../" + SESSION_NAME])
def test_an_identity_that_cannot_be_a_key_is_never_encoded(session):
    with pytest.raises(layout.LayoutError):
        encode_record(session, HEAD_NODE_ID, [b'{"a":1}'])


def test_a_group_larger_than_one_record_is_split_under_the_shared_bound():
    line = b'{"x":"%s"}' % (b"y" * (1 << 20))
    data = encode_record(SESSION_NAME, HEAD_NODE_ID, [line] * 40)  # 40 MiB: three records
    decoded = decode_segment(data)
    assert decoded.events == 40 and len(decoded.groups[(SESSION_NAME, HEAD_NODE_ID)]) == 3
    assert all(len(p) <= MAX_RECORD_BYTES for p in decoded.groups[(SESSION_NAME, HEAD_NODE_ID)])
    with pytest.raises(ValueError):
        encode_record(SESSION_NAME, HEAD_NODE_ID, [b"z" * MAX_RECORD_BYTES])


def test_segment_names_parse_back():
    name = SegmentName(1795441689800, "3f2a9c0e11aa", 7)
    assert SegmentName.parse(name.filename) == name
    assert SegmentName.parse("logs-state.json") is None


@pytest.mark.parametrize("mode", ["group", "request"])
async def test_concurrent_appends_are_all_durable_and_sealed_in_order(tmp_path, mode):
    spool = Spool(tmp_path, "w1", max_bytes=1 << 30, fsync=mode)
    records = [encode_record(SESSION_NAME, HEAD_NODE_ID, [b'{"i":%d}' % i]) for i in range(200)]
    await asyncio.gather(*(spool.append(r) for r in records))
    first = await spool.seal()
    await spool.append(encode_record(SESSION_NAME, HEAD_NODE_ID, [b'{"i":200}']))
    second = await spool.seal()
    assert spool.sealed() == [first, second]
    lines = b"".join(spool.read(first).groups[(SESSION_NAME, HEAD_NODE_ID)]).splitlines()
    assert sorted(lines) == sorted(b'{"i":%d}' % i for i in range(200))
    assert spool.read(second).events == 1
    assert spool.bytes == sum(len(r) for r in records) + spool.path(second).stat().st_size
    spool.delete(first)
    assert spool.sealed() == [second] and not spool.path(first).exists()


async def test_sealing_an_empty_spool_makes_no_segment(tmp_path):
    spool = Spool(tmp_path, "w1", max_bytes=1 << 30)
    assert await spool.seal() is None
    assert spool.sealed() == []


async def test_over_its_bound_the_spool_refuses_writes(tmp_path):
    spool = Spool(tmp_path, "w1", max_bytes=100)
    await spool.append(encode_record(SESSION_NAME, HEAD_NODE_ID, [b"x" * 200]))
    with pytest.raises(SpoolFull):
        await spool.append(encode_record(SESSION_NAME, HEAD_NODE_ID, [b"y"]))


async def test_a_restarted_spool_finds_its_predecessors_segments_sealed(tmp_path):
    old = Spool(tmp_path, "old", max_bytes=1 << 30)
    await old.append(encode_record(SESSION_NAME, HEAD_NODE_ID, [b'{"acked":1}']))
    sealed = await old.seal()
    await old.append(encode_record(SESSION_NAME, HEAD_NODE_ID, [b'{"acked":2}']))
    active = old._active
    # SIGKILL mid-write: the active segment ends with half a record, never acknowledged
    with open(old.path(active), "ab") as fh:
        fh.write(encode_record(SESSION_NAME, HEAD_NODE_ID, [b'{"torn":3}'])[:20])

    new = Spool(tmp_path, "new", max_bytes=1 << 30)
    assert new.sealed() == [sealed, active]
    assert new.read(sealed).groups == {(SESSION_NAME, HEAD_NODE_ID): [b'{"acked":1}\n']}
    assert new.read(active).groups == {(SESSION_NAME, HEAD_NODE_ID): [b'{"acked":2}\n']}
    await new.append(encode_record(SESSION_NAME, HEAD_NODE_ID, [b'{"new":1}']))
    assert new._active.writer == "new" and new._active not in (sealed, active)


async def test_a_failed_write_leaves_no_half_record_to_hide_later_ones(tmp_path):
    """A real write failure: the file size limit (RLIMIT_FSIZE) stops the write half-way, as a full disk would."""
    spool = Spool(tmp_path, "w1", max_bytes=1 << 30, fsync="request")
    first = encode_record(SESSION_NAME, HEAD_NODE_ID, [b'{"i":1}'])
    await spool.append(first)
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a killed process
    resource.setrlimit(resource.RLIMIT_FSIZE, (len(first) + 10, limit[1]))
    try:
        with pytest.raises(OSError):
            await spool.append(encode_record(SESSION_NAME, HEAD_NODE_ID, [b'{"i":2}' * 10]))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limit)
        signal.signal(signal.SIGXFSZ, previous_handler)
    await spool.append(encode_record(SESSION_NAME, HEAD_NODE_ID, [b'{"i":3}']))
    name = await spool.seal()
    assert spool.read(name).groups == {(SESSION_NAME, HEAD_NODE_ID): [b'{"i":1}\n', b'{"i":3}\n']}
