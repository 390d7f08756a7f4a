"""`rayhistory collector` as a real process: configured by environment, SIGTERM drains and exits 0,
SIGKILL loses nothing that was acknowledged, and the restarted collector uploads it."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import shutil

import aiohttp

from rayhistory.layout import SessionRef
from rayhistory.store import Store
from tests.collector.process import collector_process
from tests.collector.storage_view import session_info, stored_event_lines, stored_logs
from tests.conftest import FIXTURES, HEAD_NODE_ID, SESSION_NAME, received_bodies

REF = SessionRef("ray", "demo", SESSION_NAME)


def unique_bodies(rounds: int, per_body: int = 100) -> list[list[dict]]:
    """The fixture's events over and over, each copy with an eventId of its own."""
    events = [e for body in received_bodies() for e in body]
    out = []
    for r in range(rounds):
        copies = []
        for i, event in enumerate(events):
            e = copy.copy(event)
            e["eventId"] = base64.b64encode(f"r{r}-e{i}".encode()).decode()
            copies.append(e)
        out.extend(copies[i:i + per_body] for i in range(0, len(copies), per_body))
    return out


async def post_all(url: str, bodies: list[list[dict]], senders: int = 4, acked: set[str] | None = None) -> set[str]:
    """POST the bodies from several concurrent senders; the eventIds of every 200 answer (also added to
    `acked` as they come). A sender stops at its first failure (a killed collector)."""
    acked = set() if acked is None else acked
    queue = list(reversed(bodies))

    async def sender(http: aiohttp.ClientSession) -> None:
        while queue:
            body = queue.pop()
            try:
                async with http.post(url + "/v1/events", json=body) as resp:
                    if resp.status != 200:
                        return
                    assert (await resp.json())["accepted"] == len(body)
            except aiohttp.ClientError:
                return
            acked.update(e["eventId"] for e in body)

    async with aiohttp.ClientSession() as http:
        await asyncio.gather(*(sender(http) for _ in range(senders)))
    return acked


async def test_sigterm_flushes_everything_and_records_the_session(tmp_path):
    ray_root = tmp_path / "ray"
    shutil.copytree(FIXTURES / "session" / SESSION_NAME, ray_root / SESSION_NAME)
    storage = f"file://{tmp_path}/store"
    with collector_process(storage, tmp_path / "spool", ray_root, via_env=True, namespace="ray", cluster_name="demo",
                           owner_kind="RayJob", owner_name="nightly", flush_interval=3600,
                           log_upload_interval=3600) as collector:
        acked = await post_all(collector.url, received_bodies())
        assert collector.terminate() == 0, collector.log_tail()
    store = Store(storage)
    lines = await stored_event_lines(store, REF)
    assert list(lines) == [HEAD_NODE_ID]
    assert sorted(json.loads(line)["eventId"] for line in lines[HEAD_NODE_ID]) == sorted(acked)
    assert len(acked) == sum(len(b) for b in received_bodies())
    info = await session_info(store, REF)
    assert (info.state, info.owner_kind, info.owner_name) == ("live", "RayJob", "nightly")
    assert info.node_ids == info.flushed_node_ids == [HEAD_NODE_ID]
    logs = await stored_logs(store, REF)
    disk = ray_root / SESSION_NAME / "logs"
    assert {rel: data for (_, rel), data in logs.items()} == {
        str(p.relative_to(disk)): p.read_bytes() for p in disk.rglob("*") if p.is_file()}


def _spool_holds_events(spool) -> bool:
    for segment in spool.glob("events/*.seg"):
        try:
            if segment.stat().st_size:
                return True
        except FileNotFoundError:  # flushed and deleted meanwhile
            pass
    return False


async def test_sigkill_mid_stream_loses_nothing_acknowledged(tmp_path):
    storage = f"file://{tmp_path}/store"
    spool = tmp_path / "spool"
    bodies = unique_bodies(rounds=100)
    flags = dict(namespace="ray", cluster_name="demo", flush_interval=0.5, flush_bytes=256 << 10)
    store = Store(storage)
    with collector_process(storage, spool, tmp_path / "ray", **flags) as first:
        acked_before: set[str] = set()
        sending = asyncio.create_task(post_all(first.url, bodies, acked=acked_before))
        # mid-stream: batches already in storage, more in the spool, requests in flight (the spool is looked
        # at last, right before the kill: on a fast machine the flusher empties it within milliseconds)
        while (len(acked_before) < 8000 or not await store.list("v1/sessions/")
               or not _spool_holds_events(spool)):
            assert not sending.done()
            await asyncio.sleep(0.002)
        first.kill()
        await sending
    assert len(acked_before) < sum(len(b) for b in bodies), "the kill did not land mid-stream"
    assert list(spool.glob("events/*.seg")), "nothing was left in the spool for the restart to upload"
    with collector_process(storage, spool, tmp_path / "ray", **flags) as second:
        rest = [b for b in bodies if b[0]["eventId"] not in acked_before]
        acked_after = await post_all(second.url, rest)
        assert second.terminate() == 0, second.log_tail()
    lines = (await stored_event_lines(store, REF))[HEAD_NODE_ID]
    stored_ids = [json.loads(line)["eventId"] for line in lines]
    assert set(stored_ids) >= acked_before | acked_after
    assert len(acked_before | acked_after) == sum(len(b) for b in bodies)
    assert not list(spool.glob("events/*.seg"))
