"""Folding a large session's event batches in worker processes, one per core (the I/O stays in the loader).

Gunzip, decode and the task folds are most of a cold build's CPU, and each batch is independent, so a load
whose new event batches add up to at least `min_bytes` splits them over `workers` processes:
- worker k gets a contiguous stretch of the batches in time (their keys' flush stamps), so few task
  attempts have events in two workers (1.5% at 100k tasks) and merging their states in the parent is cheap;
- it folds task events into a SnapshotBuilder of its own (word ids in a range of its own) and keeps the
  other events (actors, nodes, workers, jobs: a few thousand) whole, for the parent, which folds them in
  storage order: some of their fields are merged in arrival order, so the result is byte for byte the
  in-process build's;
- the parent merges the task states (SnapshotBuilder.merge_tasks) and builds the snapshot as before.
Measured hand-off at 100k tasks: 0.17 CPU-s to pickle a worker's 50k task states, 0.21 s to unpickle them,
0.03 s to merge (benchmarks/bench_snapshot.py measures the whole).

A worker that dies (killed, out of memory) fails only its load: its pipe closes, the parent raises
BuildWorkerDied and kills the others; the loader remembers the failure with its backoff. Workers are
processes started for one load (spawn: nothing of the server's threads or sockets is inherited) and
gone when it ends, so a load never waits on, nor leaves behind, another's process.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import resource
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from rayhistory.compression import InflateLimits
from rayhistory.layout import SessionRef
from rayhistory.store import ObjectInfo

from .snapshot import SnapshotBuilder

# task states go back in pieces, each unpickled and merged on its own: the server's event loop is never
# held for the whole of a worker's states (one pickle.loads holds the GIL)
RESULT_PIECE = 20_000
WORD_RANGE = 1 << 24  # word ids of worker k start at (k + 1) * WORD_RANGE; the parent's at 0
MAX_WORKERS = 254  # word ids are uint32


def usable_cores() -> int:
    """The cores this process may use: its CPU affinity (a container's cpuset), and no more than its CPU quota
    (a Kubernetes CPU limit is a CFS quota, not a cpuset: a pod limited to 2 CPUs on a 64-core node sees 64)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = cgroup_quota_cores()
    return max(1, min(cores, quota)) if quota else cores


def quota_cores(quota_us: int, period_us: int) -> int:
    """A CFS quota as whole cores, rounded up (1.5 CPUs may keep two workers busy half the time); 0: no quota."""
    if quota_us <= 0 or period_us <= 0:
        return 0
    return -(-quota_us // period_us)


def cgroup_quota_cores(root: Path = Path("/sys/fs/cgroup")) -> int:
    """This process's CPU quota from cgroup v2 (`cpu.max`: "max 100000" or "200000 100000") or v1, 0: none."""
    try:
        quota, period = ((root / "cpu.max").read_text().split() + ["100000"])[:2]
        return 0 if quota == "max" else quota_cores(int(quota), int(period))
    except (OSError, ValueError):
        pass
    try:
        v1 = root / "cpu"
        return quota_cores(int((v1 / "cpu.cfs_quota_us").read_text()), int((v1 / "cpu.cfs_period_us").read_text()))
    except (OSError, ValueError):
        return 0


@dataclass(frozen=True)
class ParallelBuild:
    """How a load folds event batches: `workers` processes when the new batches add up to `min_bytes` or
    more, else (and with workers=1) in the loader's own process."""

    workers: int = 1
    min_bytes: int = 32 << 20

    def applies(self, infos: list[ObjectInfo]) -> bool:
        return self.workers > 1 and len(infos) > 1 and sum(o.size for o in infos) >= self.min_bytes


class BuildWorkerDied(RuntimeError):
    """A worker process of a parallel load ended before it answered: the load fails (and is retried)."""


@dataclass
class FoldedObject:
    key: str
    unreadable: str
    rejected: int
    deferred: list  # the events a worker did not fold (SnapshotBuilder.deferred)


@dataclass
class WorkerResult:
    """What a worker sends last, after its task states (dicts of RESULT_PIECE attempts)."""

    words: dict[int, str]
    events_folded: int
    objects: list[FoldedObject]
    cpu_s: float  # the worker's own CPU seconds, start-up included


def worker_main(conn, ref: SessionRef, dead: bool, end_ms: int, limits: InflateLimits, word_base: int) -> None:
    """A worker process: fold each chunk of (key, gzip'd batch) it receives, acknowledge it with the events
    folded so far; on None, answer the WorkerResult and end."""
    builder = SnapshotBuilder(ref, dead, end_ms, limits, word_base=word_base, defer_entities=True)
    objects: list[FoldedObject] = []
    while (chunk := conn.recv()) is not None:
        for key, data in chunk:
            unreadable, rejected = builder.fold_object(key, data)
            objects.append(FoldedObject(key, unreadable, rejected, builder.deferred))
            builder.deferred = []
        conn.send(builder.events_parsed)
    tasks, words = builder.take_tasks()
    items = iter(tasks.items())
    while piece := dict(islice(items, RESULT_PIECE)):
        conn.send(piece)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    conn.send(WorkerResult(words, builder.events_parsed, objects, usage.ru_utime + usage.ru_stime))
    conn.close()


# looked up when a load starts its workers (a test swaps in one that dies)
WORKER_MAIN: Callable = worker_main


def partition(infos: list[ObjectInfo], parts: int) -> list[list[ObjectInfo]]:
    """The batches in flush-stamp order (the key's last part), cut into `parts` contiguous stretches of
    about equal bytes."""
    ordered = sorted(infos, key=lambda o: (o.key.rsplit("/", 1)[-1], o.key))
    total = sum(o.size for o in ordered) or 1
    out: list[list[ObjectInfo]] = [[] for _ in range(parts)]
    seen = 0
    for info in ordered:
        out[min(parts - 1, seen * parts // total)].append(info)
        seen += info.size
    return [p for p in out if p]


async def fold_in_workers(
    builder: SnapshotBuilder, infos: list[ObjectInfo], workers: int, chunk: int,
    read: Callable[[list[str]], Awaitable[dict[str, bytes | Exception]]],
    on_chunk: Callable[[list[ObjectInfo], dict[str, bytes | Exception], int], None],
) -> list[float]:
    """Fold `infos` (event batches, in storage order) into `builder` through `workers` processes.

    `read(keys)` reads objects (an Exception for one that could not be read); `on_chunk(chunk, datas,
    events)` is called as each chunk is read and folded (events: folded so far by all workers), for
    progress, the manifest and objects that could not be read. Returns each worker's CPU seconds; raises
    BuildWorkerDied."""
    stretches = partition(infos, min(workers, MAX_WORKERS))
    context = multiprocessing.get_context("spawn")
    started: list[tuple] = []
    try:
        for k in range(len(stretches)):
            parent_end, child_end = context.Pipe()
            process = context.Process(
                target=WORKER_MAIN, name=f"rayhistory-build-{k}", daemon=True,
                args=(child_end, builder.ref, builder.dead, builder.end_ms, builder.limits, (k + 1) * WORD_RANGE))
            try:
                await asyncio.to_thread(process.start)
            except BaseException:
                parent_end.close()
                raise
            finally:
                child_end.close()  # the parent holds only its own end: a dead worker's pipe reads as closed
            started.append((process, parent_end))
        folded = [0] * len(stretches)
        merging = asyncio.Lock()  # one merge into the builder at a time

        async def merge(piece: dict) -> None:
            async with merging:
                await asyncio.to_thread(builder.merge_tasks, piece, {}, 0)

        # a thread per worker for its pipe, each blocked while its worker folds a chunk: not the default
        # executor's, which the requests of every other session share
        pipes = ThreadPoolExecutor(max_workers=len(started), thread_name_prefix="rayhistory-build-pipe")
        try:
            async with asyncio.TaskGroup() as group:  # one worker failing cancels the others' feeds
                feeds = [group.create_task(_feed(process, conn, stretch, chunk, read, on_chunk, merge, folded, k,
                                                 pipes))
                         for k, ((process, conn), stretch) in enumerate(zip(started, stretches))]
        except ExceptionGroup as failed:
            raise failed.exceptions[0] from None
        finally:
            pipes.shutdown(wait=False)
        results = [feed.result() for feed in feeds]
    finally:
        for process, conn in started:
            if process.is_alive():
                process.kill()
            conn.close()
        for process, _ in started:
            await asyncio.to_thread(process.join)
    await asyncio.to_thread(_fold_results, builder, infos, results)
    return [result.cpu_s for result in results]


def _fold_results(builder: SnapshotBuilder, infos: list[ObjectInfo], results: list[WorkerResult]) -> None:
    for result in results:
        # a worker counts the events it deferred, and add_folded_object counts them when it folds them
        deferred = sum(len(o.deferred) for o in result.objects)
        builder.merge_tasks({}, result.words, result.events_folded - deferred)
    by_key = {o.key: o for result in results for o in result.objects}
    for info in infos:  # storage order, as the in-process build folds them
        o = by_key.get(info.key)
        if o is not None:
            builder.add_folded_object(o.key, o.unreadable, o.rejected, o.deferred)


async def _feed(process, conn, stretch: list[ObjectInfo], chunk: int, read, on_chunk, merge,
                folded: list[int], k: int, pipes: ThreadPoolExecutor) -> WorkerResult:
    """Send one worker its stretch a chunk at a time, reading the next chunk while it folds one."""
    chunks = [stretch[i:i + chunk] for i in range(0, len(stretch), chunk)]
    loop = asyncio.get_running_loop()

    async def call(fn, *args):
        try:
            return await loop.run_in_executor(pipes, fn, *args)
        except (EOFError, OSError) as exc:
            await asyncio.to_thread(process.join, 5)
            raise BuildWorkerDied(f"build worker {k} (pid {process.pid}) ended during the load "
                                  f"(exit code {process.exitcode})") from exc

    reading = asyncio.ensure_future(read([o.key for o in chunks[0]]))
    try:
        for i, objects in enumerate(chunks):
            datas = await reading
            if i + 1 < len(chunks):
                reading = asyncio.ensure_future(read([o.key for o in chunks[i + 1]]))
            await call(conn.send, [(o.key, d) for o in objects if not isinstance(d := datas[o.key], Exception)])
            folded[k] = await call(conn.recv)
            on_chunk(objects, datas, sum(folded))
        await call(conn.send, None)
        while isinstance(message := await call(conn.recv), dict):
            await merge(message)
        return message
    finally:
        if not reading.done():
            reading.cancel()
