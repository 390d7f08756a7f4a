"""Reading back what a collector stored, the way docs/storage-layout.md says a reader must (test side)."""

from __future__ import annotations

import gzip
import json
from collections import defaultdict

from rayhistory import layout
from rayhistory.index import SessionIndex, SessionInfo
from rayhistory.layout import SessionRef
from rayhistory.store import Store


async def stored_event_lines(store: Store, ref: SessionRef) -> dict[str, list[bytes]]:
    """node id -> every stored event line (compact JSON), in key order, repeats kept."""
    out: dict[str, list[bytes]] = defaultdict(list)
    for info in await store.list(layout.events_prefix(ref)):
        name = layout.parse_event_batch_key(ref, info.key)
        out[name.node_id].extend(gzip.decompress(await store.get(info.key)).splitlines())
    return dict(out)


async def stored_events(store: Store, ref: SessionRef) -> list[dict]:
    return [json.loads(line) for lines in (await stored_event_lines(store, ref)).values() for line in lines]


def reassemble(parts: list[tuple[layout.LogPartName, bytes]]) -> bytes:
    """A log file from its parts: newest generation, by offset, repeated bytes skipped."""
    if not parts:
        return b""
    newest = max(p.generation for p, _ in parts)
    out = bytearray()
    for part, data in sorted(((p, d) for p, d in parts if p.generation == newest), key=lambda pd: pd[0].offset):
        if part.offset > len(out):
            raise AssertionError(f"gap in {part.relpath} before offset {part.offset}")
        out += data[len(out) - part.offset:]
    return bytes(out)


async def stored_logs(store: Store, ref: SessionRef) -> dict[tuple[str, str], bytes]:
    """(node id, relpath) -> the reassembled file."""
    parts: dict[tuple[str, str], list[tuple[layout.LogPartName, bytes]]] = defaultdict(list)
    for info in await store.list(layout.logs_prefix(ref)):
        name = layout.parse_log_part_key(ref, info.key)
        parts[(name.node_id, name.relpath)].append((name, await store.get(info.key)))
    return {k: reassemble(v) for k, v in parts.items()}


async def stored_endpoints(store: Store, ref: SessionRef) -> dict[str, bytes]:
    """endpoint -> its latest stored answer."""
    by_endpoint: dict[str, list[str]] = defaultdict(list)
    for info in await store.list(layout.endpoints_prefix(ref)):
        by_endpoint[info.key[len(layout.endpoints_prefix(ref)):].split("/", 1)[0]].append(info.key)
    return {ep: await store.get(layout.latest_key(keys)) for ep, keys in by_endpoint.items()}


async def session_info(store: Store, ref: SessionRef) -> SessionInfo | None:
    return await SessionIndex(store).session(ref)
