"""Property-based tests of the snapshot builder over damaged storage (issue 9: damaged storage never fails a
session, never blows a replica's memory, and is reported).

A real session (tests/server/fixture_store.py writes the Ray 2.60 fixture as the collector writes it) is
damaged at random: objects truncated, bytes flipped, replaced with nothing, with bytes that are not gzip,
with a gzip bomb (a few hundred KB inflating to 256 MB), with JSON lines nested ~1000 deep, duplicated
under another key, or deleted between listing and reading. Then `build_session` (server/snapshot_store.py,
with server/snapshot.py's SnapshotBuilder) loads it. The oracle is the fixture itself, not today's output:

- the load raises nothing;
- `complete` is False when an event batch was damaged, True when nothing (or only a duplicate) was;
  damage to log parts and endpoint answers must only not break the load;
- every damaged event batch is named in objects_corrupt or objects_missing, no undamaged one is;
- every task (id, attempt) of an undamaged batch is in the snapshot, and no task outside the fixture is;
- the load's peak of Python allocations (tracemalloc) stays under MEMORY_BOUND;
- the snapshot written back reads back (a second replica) with the same tasks and the same verdict.

Then through the real aiohttp app: no request answers 500, and requests after the first do not load the
session again (one load, whatever its result).

Budget as in tests/collector/test_properties.py: profile `ci` (default, derandomized, no shrinking, 25
examples); RAYHISTORY_PROPERTY_EXAMPLES over that switches to `deep` (random seed printed, shrinking).
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import shutil
import tracemalloc
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from rayhistory import layout
from rayhistory.server.snapshot_store import LoadProgress, build_session, list_session
from rayhistory.store import Store
from tests.conftest import HEAD_NODE_ID, RECEIVED
from tests.server.fixture_store import fixture_ref, running_server, write_fixture_session
from tests.property_budget import budget, fail

pytestmark = pytest.mark.property

BUDGET = budget("snapshot", ci_examples=25)

BOMB_BYTES = 256 << 20  # what a bomb inflates to
MEMORY_BOUND = 128 << 20  # peak Python allocations of one load of the 2 MB fixture session, damage included
DEPTH = 1000
REF = fixture_ref()
END_MS = layout.session_start_ms(REF.session) + 3_600_000

# ---- ground truth: the fixture's own tasks, per POST (= per stored batch, in order) ----------------------

TASK_PAYLOADS = {"taskDefinitionEvent": "taskAttempt", "taskLifecycleEvent": "taskAttempt",
                 "actorTaskDefinitionEvent": "taskAttempt", "taskProfileEvents": "attemptNumber"}


def fixture_tasks_per_batch() -> list[set[tuple[str, int]]]:
    out = []
    for path in sorted(RECEIVED.glob("*.json")):
        tasks = set()
        for event in json.loads(path.read_text())["body"]:
            for name, attempt in TASK_PAYLOADS.items():
                if name in event:
                    tasks.add((base64.b64decode(event[name]["taskId"]).hex(), int(event[name].get(attempt, 0))))
        out.append(tasks)
    return out


TASKS_BY_SEQ = dict(enumerate(fixture_tasks_per_batch(), start=1))  # fixture_store numbers batches from 1
ALL_TASKS = set().union(*TASKS_BY_SEQ.values())

# ---- damage -------------------------------------------------------------------------------------------

BATCH_DAMAGE = ["truncate", "flip", "empty", "not_gzip", "bomb_zeros", "bomb_newlines", "deep", "duplicate",
                "delete"]
OTHER_DAMAGE = ["truncate", "flip", "empty", "not_gzip", "bomb_zeros", "deep", "delete"]
BENIGN = {"duplicate"}


@dataclass(frozen=True)
class Damage:
    kind: str  # "batch", "endpoint" or "log"
    index: int  # into the sorted listing of that kind (modulo its length)
    how: str
    fraction: float  # where to cut or flip


@st.composite
def damage(draw) -> Damage:
    kind = draw(st.sampled_from(["batch", "batch", "batch", "endpoint", "log"]))
    how = draw(st.sampled_from(BATCH_DAMAGE if kind == "batch" else OTHER_DAMAGE))
    return Damage(kind, draw(st.integers(0, 10_000)), how, draw(st.floats(0.0, 1.0)))


damages = st.lists(damage(), max_size=4)


def gzip_bomb(filler: bytes) -> bytes:
    """gzip of BOMB_BYTES of `filler` (~1000:1), made a MB at a time."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = filler * ((1 << 20) // len(filler))
    out = [compressor.compress(chunk) for _ in range(BOMB_BYTES // len(chunk))]
    out.append(compressor.flush())
    return b"".join(out)


class Bombs(dict):
    def __repr__(self) -> str:  # hypothesis prints the test's arguments: not half a MB of them
        return f"Bombs({', '.join(f'{k}: {len(v)} bytes' for k, v in self.items())})"


@pytest.fixture(scope="session")
def bombs() -> Bombs:
    return Bombs(bomb_zeros=gzip_bomb(b"\x00"), bomb_newlines=gzip_bomb(b"\n"))


@pytest.fixture(scope="session")
def pristine(tmp_path_factory) -> Path:
    """The fixture session in a file:// store, written once; every example damages a copy."""
    root = tmp_path_factory.mktemp("pristine") / "store"
    asyncio.run(write_fixture_session(Store(f"file://{root}")))
    return root


def deep_line() -> bytes:
    return b'{"eventId":"ZGVlcA==","eventType":"TASK_DEFINITION_EVENT","zExtra":' + b"[" * DEPTH + b"]" * DEPTH + b"}"


def damaged_bytes(d: Damage, data: bytes, bombs: dict[str, bytes]) -> bytes:
    if d.how == "truncate":
        return data[: max(1, min(len(data) - 1, int(len(data) * d.fraction)))]  # "empty" is its own damage
    if d.how == "flip":
        # past the 10-byte gzip header (its mtime and OS bytes change nothing that is read); XOR 0xff changes
        # at least one bit the inflater or the CRC uses
        start = 10 if data[:2] == b"\x1f\x8b" else 0
        pos = start + int((len(data) - start - 1) * d.fraction)
        return data[:pos] + bytes([data[pos] ^ 0xFF]) + data[pos + 1:]
    if d.how == "empty":
        return b""
    if d.how == "not_gzip":
        return b"this is not gzip \x00\xff" + data[:100]
    if d.how in bombs:
        return bombs[d.how]
    if d.how == "deep":
        lines = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
        return gzip.compress(deep_line() + b"\n" + lines)
    raise AssertionError(d.how)


@dataclass
class Damaged:
    store: Store
    objects: object  # SessionObjects as listed before the deletes
    batches: dict[str, str]  # key -> how, for damaged event batches (benign ones included)
    others: dict[str, str]  # key -> how, for damaged endpoints and log parts
    seq_of: dict[str, int]  # every original batch key -> its fixture seq


async def damage_copy(pristine: Path, plan: list[Damage], bombs: dict[str, bytes], into: Path) -> Damaged:
    shutil.copytree(pristine, into)
    store = Store(f"file://{into}")
    listed = await list_session(store, REF)
    pools = {"batch": sorted(o.key for o in listed.events),
             "endpoint": sorted(o.key for infos in listed.endpoints.values() for o in infos),
             "log": sorted(o.key for o in listed.log_parts)}
    seq_of = {key: layout.parse_event_batch_key(REF, key).seq for key in pools["batch"]}
    chosen: dict[str, Damage] = {}
    for d in plan:
        key = pools[d.kind][d.index % len(pools[d.kind])]
        chosen.setdefault(key, d)  # one damage per object: the first one drawn
    for key, d in chosen.items():
        if d.how == "delete":
            continue
        data = await store.get(key)
        if d.how == "duplicate":
            name = layout.parse_event_batch_key(REF, key)
            await store.put(layout.event_batch_key(REF, HEAD_NODE_ID, "dup0000", name.seq + 1000, name.at_ms), data)
        else:
            await store.put(key, damaged_bytes(d, data, bombs))
    objects = await list_session(store, REF)
    for key, d in chosen.items():
        if d.how == "delete":  # between listing and reading: the reader must meet it
            await store.delete([key])
    return Damaged(store, objects, {k: d.how for k, d in chosen.items() if d.kind == "batch"},
                   {k: d.how for k, d in chosen.items() if d.kind != "batch"}, seq_of)


def short_key(key: str) -> str:
    """The part of a key after the session's prefix (events/<node>/<name> shortened to events/<name>)."""
    tail = key[len(layout.session_prefix(REF)):]
    kind, _node, rest = tail.split("/", 2)
    return f"{kind}/{rest}"


def check(result_snapshot, damaged: Damaged, peak: int | None, where: str) -> list[str]:
    problems = []
    snap = result_snapshot
    harmful = {k: how for k, how in damaged.batches.items() if how not in BENIGN}
    named = {p.key: p.reason for p in snap.objects_corrupt} | {p.key: p.reason for p in snap.objects_missing}
    if harmful and snap.complete:
        problems.append(f"{where}: complete is True although event batches were damaged: "
                        + ", ".join(f"{how} {short_key(k)}" for k, how in harmful.items()))
    if not harmful and not damaged.others and not snap.complete:
        problems.append(f"{where}: complete is False with nothing damaged; named: {named}")
    for key, how in harmful.items():
        if key not in named:
            problems.append(f"{where}: damaged batch ({how}) not named in objects_corrupt/objects_missing: "
                            f"{short_key(key)}")
    wrongly = [k for k in named if k in damaged.seq_of and k not in harmful]
    if wrongly:
        problems.append(f"{where}: undamaged batches named corrupt or missing: {[short_key(k) for k in wrongly]}")
    have = {(t.task_id, t.attempt) for t in snap.tasks}
    expected = set().union(set(), *(TASKS_BY_SEQ[seq] for key, seq in damaged.seq_of.items() if key not in harmful))
    if expected - have:
        problems.append(f"{where}: {len(expected - have)} tasks of undamaged batches are missing, e.g. "
                        f"{sorted(expected - have)[:3]}")
    if have - ALL_TASKS:
        problems.append(f"{where}: tasks that are not in the fixture: {sorted(have - ALL_TASKS)[:3]}")
    if peak is not None and peak > MEMORY_BOUND:
        problems.append(f"{where}: the load's allocations peaked at {peak >> 20} MiB (bound {MEMORY_BOUND >> 20} MiB)"
                        f"; damage: {sorted(set(damaged.batches.values()) | set(damaged.others.values()))}")
    return problems


async def load_and_check(pristine: Path, plan: list[Damage], bombs: dict[str, bytes], into: Path) -> list[str]:
    damaged = await damage_copy(pristine, plan, bombs, into)
    what = ", ".join(f"{how} {short_key(k)}"
                     for k, how in {**damaged.batches, **damaged.others}.items()) or "no damage"
    tracemalloc.start()
    try:
        result = await build_session(damaged.store, REF, True, END_MS, "props0000", LoadProgress(),
                                     objects=damaged.objects)
    except Exception as exc:  # noqa: BLE001 - the property: nothing raises
        return [f"build_session raised {type(exc).__name__}: {str(exc)[:300]} (damage: {what})"]
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    problems = check(result.snapshot, damaged, peak, "first load")
    # another replica: starts from the snapshot the first one wrote back
    try:
        again = await build_session(damaged.store, REF, True, END_MS, "props0001", LoadProgress())
    except Exception as exc:  # noqa: BLE001
        return problems + [f"second load raised {type(exc).__name__}: {str(exc)[:300]}"]
    if result.wrote and not again.source.startswith("snapshot") and not damaged.others and not any(
            how == "delete" for how in damaged.batches.values()):
        problems.append(f"second load did not start from the stored snapshot (source {again.source!r})")
    if {(t.task_id, t.attempt) for t in again.snapshot.tasks} != {(t.task_id, t.attempt) for t in result.snapshot.tasks}:
        problems.append("second load (from the stored snapshot) has other tasks than the first")
    if again.snapshot.complete != result.snapshot.complete and not any(
            how == "delete" for how in damaged.batches.values()):
        problems.append("second load's `complete` differs from the first's")
    return [f"{p}\n    damage: {what}" for p in problems]


_examples = iter(range(1 << 30))


@pytest.fixture(scope="module", autouse=True)
def _print_budget():
    print("\n" + BUDGET.describe())


@pytest.mark.slow
@BUDGET.apply
@given(plan=damages)
@example(plan=[])
@example(plan=[Damage("batch", 3, "truncate", 0.5), Damage("batch", 7, "not_gzip", 0.0),
               Damage("batch", 9, "delete", 0.0), Damage("batch", 11, "duplicate", 0.0)])
def test_damaged_storage_loads_reports_and_keeps_the_rest(pristine, bombs, tmp_path_factory, plan):
    into = tmp_path_factory.getbasetemp() / f"damaged-{next(_examples)}-{uuid.uuid4().hex[:6]}"
    try:
        problems = asyncio.run(load_and_check(pristine, plan, bombs, into))
    finally:
        shutil.rmtree(into, ignore_errors=True)
    if problems:
        fail("\n".join(problems))


# ---- the issue's items, minimal, at the builder and over HTTP --------------------------------------------

def run_plan(pristine, bombs, tmp_path, plan) -> None:
    problems = asyncio.run(load_and_check(pristine, plan, bombs, tmp_path / "store"))
    if problems:
        fail("\n".join(problems))


def test_issue9_item2_a_deeply_nested_batch_marks_the_session_incomplete(pristine, bombs, tmp_path):
    run_plan(pristine, bombs, tmp_path, [Damage("batch", 5, "deep", 0.0)])


def test_issue9_item3_a_gzip_bomb_is_corrupt_and_bounded(pristine, bombs, tmp_path):
    run_plan(pristine, bombs, tmp_path, [Damage("batch", 5, "bomb_newlines", 0.0)])


def test_issue9_item6_a_zero_byte_batch_is_corrupt(pristine, bombs, tmp_path):
    run_plan(pristine, bombs, tmp_path, [Damage("batch", 5, "empty", 0.0)])


PATHS = ["api/v0/tasks?detail=1&limit=10000", "api/v0/nodes", "nodes?view=summary", "api/v0/actors",
         "logical/actors", "api/jobs/", "api/v0/placement_groups", "events", "api/v0/cluster_events",
         "rayhistory/status", "api/v0/tasks/summarize", "api/v0/logs?node_id=" + HEAD_NODE_ID]


def session_loads(state) -> float:
    """Loads of any result (ok, error) so far."""
    total = 0.0
    for metric in state.metrics.registry.collect():
        if metric.name == "rayhistory_session_loads":
            total += sum(s.value for s in metric.samples if s.name == "rayhistory_session_loads_total")
    return total


@pytest.mark.parametrize("how", ["deep", "bomb_newlines", "empty", "truncate"])
async def test_issue9_items_2_3_6_over_http_no_500_one_load_marked_incomplete(pristine, bombs, tmp_path, how):
    damaged = await damage_copy(pristine, [Damage("batch", 5, how, 0.5)], bombs, tmp_path / "store")
    async with running_server(damaged.store) as (client, _, state):
        answers = []
        for _ in range(2):
            for path in PATHS:
                async with client.get(f"/s/{REF.tail}/{path}") as resp:
                    answers.append((path, resp.status, resp.headers.get("X-Rayhistory-Complete")))
        loads = session_loads(state)
    problems = []
    errors = [(p, s) for p, s, _ in answers if s >= 500]
    if errors:
        problems.append(f"{len(errors)} of {len(answers)} requests answered 5xx, e.g. {errors[:4]}")
    if loads != 1:
        problems.append(f"{loads:.0f} loads for {len(answers)} requests of one session (expected one)")
    completes = {c for p, s, c in answers if s == 200 and c is not None}
    if completes != {"false"}:
        problems.append(f"X-Rayhistory-Complete answers {sorted(completes)} (expected only 'false')")
    if problems:
        fail(f"{how} batch: " + "; ".join(problems))
