"""The session loader: lazy, one load per session per replica at a time, owned by the server.

A request that needs a session not in the LRU starts a load, or joins the one already running
(singleflight). The load is a task in the loader's registry, never the request's: a request waits on it
through `asyncio.shield`, so a client that disconnects (or a request that times out) cancels only its
own wait. The server's lifetime owns the registry (`close()` cancels what is left at shutdown).

A request waits at most `load_timeout` seconds; past that it gets `LoadTimeout` (the load keeps going
and the next request finds it further along or done). Progress is readable at any time (`progress()`).

Dead sessions are loaded once and stay cached until evicted. A live session is refreshed in the
background when its entry is older than `live_refresh_s`; requests meanwhile get the entry they have.

A load that fails (storage down, a bug the session's data triggers) is remembered, with a backoff: the
request that waited on it gets `LoadFailed`, and requests during the backoff get `LoadBackoff` at once
(both carry `retry_after_s`; the routes answer 503 with Retry-After), without a new load. The backoff starts
at `backoff_base_s` and doubles with every failure up to `backoff_max_s`. It ends early when the session's
objects in storage change (a late flush, a repaired object: checked with one listing at most every
`backoff_check_s`), on a pre-warm (`refresh`), and a success forgets it. A session that does not exist
(`SessionNotFound`) is not a failure: it is looked up again by the next request.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

from rayhistory.compression import DEFAULT_LIMITS, InflateLimits
from rayhistory.index import SessionIndex
from rayhistory.layout import SessionRef
from rayhistory.store import Store

from .cache import CacheEntry, SnapshotCache, measure_bytes
from .disk_tasks import DiskSpill, DiskTasks, LocalTasksUnreadable, spill_tasks
from .metrics import ServerMetrics
from .parallel_build import ParallelBuild
from .snapshot_model import SNAPSHOT_LIMITS, TaskSection, fill_or_mark_corrupt
from .snapshot_store import (
    LoadProgress, SessionObjects, build_session, decode_stored_head, list_session, tasks_resident_bytes,
)

log = logging.getLogger(__name__)


class SessionNotFound(LookupError):
    def __init__(self, ref: SessionRef):
        super().__init__(f"session {ref.tail} not found: no index record and nothing stored under it")
        self.ref = ref


class LoadTimeout(TimeoutError):
    def __init__(self, ref: SessionRef, progress: LoadProgress, timeout: float):
        super().__init__(f"session {ref.tail} is still loading after {timeout:g} s; it keeps loading, retry")
        self.ref = ref
        self.progress = progress


class LoadUnavailable(Exception):
    """The session cannot be served now; retry after `retry_after_s` seconds (routes: 503 + Retry-After)."""

    def __init__(self, message: str, ref: SessionRef, error: str, retry_after_s: float):
        super().__init__(message)
        self.ref = ref
        self.error = error
        self.retry_after_s = retry_after_s


class LoadFailed(LoadUnavailable):
    """The load this request waited on failed."""

    def __init__(self, ref: SessionRef, error: str, retry_after_s: float):
        super().__init__(f"loading session {ref.tail} failed: {error}; retry in {retry_after_s:.0f} s",
                         ref, error, retry_after_s)


class LoadBackoff(LoadUnavailable):
    """The last load failed and the backoff is not over: no new load was started."""

    def __init__(self, ref: SessionRef, error: str, retry_after_s: float):
        super().__init__(f"loading session {ref.tail} failed recently ({error}); next try in "
                         f"{retry_after_s:.0f} s", ref, error, retry_after_s)


@dataclass
class LoadJob:
    ref: SessionRef
    progress: LoadProgress
    task: asyncio.Task


@dataclass
class LoadFailure:
    """A session's failed loads, remembered for the backoff."""

    error: str
    failures: int
    delay_s: float
    until: float  # time.monotonic() at which the next load may start
    signature: tuple | None  # the session's listing when it failed (None: the listing itself failed)
    checked_at: float

    def retry_after(self) -> float:
        return max(0.0, self.until - time.monotonic())


def resident_bytes(snapshot) -> int:
    """What a loaded snapshot holds, as the cache counts it: for tasks on disk, their LRU full."""
    tasks = snapshot.tasks
    return measure_bytes(snapshot) + (tasks.resident_bound if isinstance(tasks, DiskTasks) else 0)


def listing_signature(objects: SessionObjects) -> tuple:
    """What changes when objects are added to, replaced in or removed from a session's prefix."""
    infos = objects.raw + objects.snapshots
    return (len(infos), sum(o.size for o in infos), hash(tuple(o.key for o in infos)))


class SessionLoader:
    def __init__(
        self, store: Store, index: SessionIndex, cache: SnapshotCache, metrics: ServerMetrics, writer: str,
        load_timeout: float, live_refresh_s: float, max_concurrent_loads: int = 2,
        inflate_limits: InflateLimits = DEFAULT_LIMITS, snapshot_limits: InflateLimits = SNAPSHOT_LIMITS,
        backoff_base_s: float = 2.0, backoff_max_s: float = 300.0, backoff_check_s: float = 10.0,
        parallel: ParallelBuild = ParallelBuild(), disk: DiskSpill = DiskSpill(),
    ):
        self.store = store
        self.disk = disk
        self.index = index
        self.cache = cache
        self.metrics = metrics
        self.writer = writer
        self.load_timeout = load_timeout
        self.live_refresh_s = live_refresh_s
        self._jobs: dict[SessionRef, LoadJob] = {}
        self._last: dict[SessionRef, LoadProgress] = {}  # the last finished load's progress, for status
        self.inflate_limits = inflate_limits
        self.parallel = parallel
        self.snapshot_limits = snapshot_limits
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.backoff_check_s = backoff_check_s
        self._failures: dict[SessionRef, LoadFailure] = {}
        self._listed: dict[SessionRef, tuple] = {}  # the running load's listing signature, for its failure
        self._closed = False
        # a load's peak memory is several times its snapshot's: bound how many run at once
        self._slots = asyncio.Semaphore(max_concurrent_loads)
        self._decodes: set[asyncio.Task] = set()  # the task-field decodes running (see _decode_tasks)

    # ---- what requests call --------------------------------------------------------------------

    async def get(self, ref: SessionRef, tasks: bool = True) -> CacheEntry:
        """The session's snapshot: from the LRU, else from a load (started or joined). With `tasks` false
        the snapshot's task fields may still be decoding (what api.HEAD_ONLY answers need is there)."""
        entry = await self._entry(ref)
        if tasks:
            await self.tasks_decoded(entry)
        return entry

    async def tasks_decoded(self, entry: CacheEntry) -> None:
        """Wait for the entry's task fields (one decode per entry, which every waiter joins)."""
        if entry.tasks_decoded:
            return
        try:
            async with asyncio.timeout(self.load_timeout):  # not wait_for: see Store._call
                await asyncio.shield(entry.tasks_decoding)
        except TimeoutError:
            progress = self._last.get(entry.snapshot.ref) or LoadProgress(phase="decoding_tasks")
            raise LoadTimeout(entry.snapshot.ref, progress, self.load_timeout) from None

    async def _entry(self, ref: SessionRef) -> CacheEntry:
        entry = self.cache.get(ref)
        if entry is not None:
            if entry.live and time.monotonic() - entry.loaded_at > self.live_refresh_s and ref not in self._jobs \
                    and self.backoff(ref) is None:  # a failed refresh waits out its backoff too
                self._start(ref, base=entry)  # served stale meanwhile: a live session keeps moving anyway
            return entry
        job = self._jobs.get(ref)
        if job is None:
            await self._check_backoff(ref)
            job = self._jobs.get(ref) or self._start(ref)
        return await self.wait(job)

    async def refresh(self, ref: SessionRef) -> CacheEntry:
        """Bring a session up to date with storage now (the pre-warm): reads only what is new. A pre-warm
        comes after a final flush: it ends a backoff."""
        running = self._jobs.get(ref)
        if running is not None:
            try:
                await self.wait(running)
            except LoadFailed:
                pass  # this refresh tries again at once
        self._failures.pop(ref, None)
        job = self._jobs.get(ref) or self._start(ref, base=self.cache.peek(ref))
        return await self.wait(job)

    async def wait(self, job: LoadJob) -> CacheEntry:
        try:
            async with asyncio.timeout(self.load_timeout):  # not wait_for: see Store._call
                return await asyncio.shield(job.task)
        except TimeoutError:
            if not job.task.done():
                raise LoadTimeout(job.ref, job.progress, self.load_timeout) from None
            failure = self._failures.get(job.ref)  # the load itself timed out (e.g. a storage call)
            raise LoadFailed(job.ref, failure.error if failure else "timed out",
                             failure.retry_after() if failure else self.backoff_base_s) from None
        except (SessionNotFound, asyncio.CancelledError):
            raise
        except Exception as exc:
            failure = self._failures.get(job.ref)
            raise LoadFailed(job.ref, failure.error if failure else f"{type(exc).__name__}: {exc}",
                             failure.retry_after() if failure else self.backoff_base_s) from exc

    def backoff(self, ref: SessionRef) -> LoadFailure | None:
        """The session's remembered failure while its backoff runs, else None."""
        failure = self._failures.get(ref)
        return failure if failure is not None and failure.retry_after() > 0 else None

    async def _check_backoff(self, ref: SessionRef) -> None:
        """Raise LoadBackoff while the session's backoff runs, unless its objects in storage changed."""
        failure = self._failures.get(ref)
        if failure is None:
            return
        now = time.monotonic()
        if now >= failure.until:
            return
        if failure.signature is not None and now - failure.checked_at >= self.backoff_check_s:
            failure.checked_at = now  # before the listing: concurrent requests do not list too
            try:
                changed = listing_signature(await list_session(self.store, ref)) != failure.signature
            except Exception:  # noqa: BLE001 - storage still failing: the backoff stands
                changed = False
            if changed and self._failures.get(ref) is failure:
                log.info("session objects changed: retrying its failed load now", extra={"session": ref.tail})
                del self._failures[ref]
                return
        self.metrics.loads_backed_off.inc()
        raise LoadBackoff(ref, failure.error, failure.retry_after())

    def _remember_failure(self, ref: SessionRef, error: str) -> LoadFailure:
        signature = self._listed.pop(ref, None)
        previous = self._failures.get(ref)
        # new objects since the last failure: a new situation, the backoff starts over
        failures = previous.failures + 1 if previous is not None and previous.signature == signature else 1
        delay = min(self.backoff_max_s, self.backoff_base_s * 2 ** min(failures - 1, 30))
        now = time.monotonic()
        failure = self._failures[ref] = LoadFailure(error, failures, delay, now + delay, signature, now)
        if len(self._failures) > 4 * max(1, self.cache.max_sessions):
            self._failures.pop(next(iter(self._failures)))
        return failure

    def warm(self, ref: SessionRef) -> LoadJob | None:
        """Start loading a session in the background, without waiting (a GET of its page, a prefetch): unless it
        is cached, already loading, or its backoff runs."""
        job = self._jobs.get(ref)
        if job is not None or ref in self.cache or self._closed or self.backoff(ref) is not None:
            return job
        return self._start(ref)

    def job(self, ref: SessionRef) -> LoadJob | None:
        return self._jobs.get(ref)

    def progress(self, ref: SessionRef) -> LoadProgress | None:
        job = self._jobs.get(ref)
        return job.progress if job is not None else self._last.get(ref)

    def loading(self) -> list[SessionRef]:
        return list(self._jobs)

    def state(self, ref: SessionRef) -> str:
        """loading, loaded (in this replica's LRU), failed (its backoff runs) or not_loaded."""
        if ref in self._jobs:
            return "loading"
        if ref in self.cache:
            return "loaded"
        return "failed" if self.backoff(ref) is not None else "not_loaded"

    # ---- the loads ------------------------------------------------------------------------------

    def _start(self, ref: SessionRef, base: CacheEntry | None = None) -> LoadJob:
        if self._closed:
            raise RuntimeError("the server is shutting down")
        progress = LoadProgress()
        task = asyncio.get_running_loop().create_task(self._load(ref, progress, base), name=f"load {ref.tail}")
        job = self._jobs[ref] = LoadJob(ref, progress, task)
        task.add_done_callback(lambda t: self._done(job, t))
        return job

    def _done(self, job: LoadJob, task: asyncio.Task) -> None:
        if self._jobs.get(job.ref) is job:
            del self._jobs[job.ref]
        self._last[job.ref] = job.progress
        if len(self._last) > 4 * max(1, self.cache.max_sessions):
            self._last.pop(next(iter(self._last)))
        if not task.cancelled():
            task.exception()  # retrieved here, so a load nobody waits for any more logs no asyncio warning

    async def _load(self, ref: SessionRef, progress: LoadProgress, base: CacheEntry | None) -> CacheEntry:
        started = time.monotonic()
        try:
            async with self._slots:
                return await self._load_now(ref, progress, base, started)
        except SessionNotFound:
            progress.phase, progress.error, progress.finished_at = "failed", "not found", time.time()
            self.metrics.loads.labels(source="none", result="not_found").inc()
            raise
        except asyncio.CancelledError:
            progress.phase, progress.error, progress.finished_at = "failed", "cancelled", time.time()
            raise
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            progress.phase, progress.error, progress.finished_at = "failed", error, time.time()
            self.metrics.loads.labels(source=progress.source or "raw", result="error").inc()
            failure = self._remember_failure(ref, error)
            log.exception("session load failed", extra={"session": ref.tail, "failures": failure.failures,
                                                        "retry_after_s": math.ceil(failure.delay_s)})
            raise

    async def _load_now(self, ref: SessionRef, progress: LoadProgress, base: CacheEntry | None,
                        started: float) -> CacheEntry:
        progress.phase = "resolving"  # "queued" until a load slot is free
        self._listed.pop(ref, None)
        info = await self.index.session(ref)
        objects = await list_session(self.store, ref)
        self._listed[ref] = listing_signature(objects)
        if info is None and objects.empty:
            raise SessionNotFound(ref)
        dead = info is not None and info.state == "dead"
        unreadable = False
        if base is not None:  # folding in what is new needs its tasks
            await self.tasks_decoded(base)
            if base.tasks_unreadable:  # built again from storage, decoding the tasks at once: build_session
                base, unreadable = None, True  # then passes over the snapshot whose tasks do not decode
        result = await build_session(
            self.store, ref, dead, info.end_ms if dead else 0, self.writer, progress,
            base=(base.snapshot, base.manifest, base.snapshot_key) if base is not None else None,
            objects=objects, limits=self.inflate_limits, snapshot_limits=self.snapshot_limits,
            lazy_tasks=not unreadable,
            parallel=self.parallel,
        )
        source = result.source
        if result.wrote and result.tasks is None and self.disk.applies(
                await asyncio.to_thread(tasks_resident_bytes, result.snapshot)):
            # built in memory, and larger than it should stay: served from what was just written, tasks on disk
            try:
                snapshot, _, tasks = await asyncio.to_thread(
                    decode_stored_head, await self.store.get(result.snapshot_key), self.snapshot_limits)
            except Exception as exc:  # noqa: BLE001 - the snapshot in memory is as good: served from memory
                log.warning("reading back a written snapshot failed; its tasks stay in memory",
                            extra={"session": ref.tail, "key": result.snapshot_key,
                                   "error": f"{type(exc).__name__}: {exc}"})
            else:
                result.snapshot, result.tasks = snapshot, tasks
        nbytes = await asyncio.to_thread(resident_bytes, result.snapshot)
        tasks = result.tasks
        on_disk = tasks is not None and self.disk.applies(tasks.tasks_resident)
        if tasks is not None:  # counted before they are decoded: what they will hold, and what is held meanwhile
            nbytes += tasks.nbytes if on_disk else tasks.tasks_resident + tasks.nbytes
        entry = CacheEntry(result.snapshot, live=not dead, manifest=result.manifest, nbytes=nbytes,
                           snapshot_key=result.snapshot_key,
                           task_count=tasks.n_tasks if tasks is not None else len(result.snapshot.tasks))
        if tasks is not None:
            entry.head_view = tasks.head_view
            entry.tasks_decoding = asyncio.get_running_loop().create_task(
                self._decode_tasks(ref, entry, tasks, on_disk), name=f"decode tasks {ref.tail}")
            self._decodes.add(entry.tasks_decoding)
            entry.tasks_decoding.add_done_callback(self._decodes.discard)
            # retrieved here: a failed spill (LocalTasksUnreadable) nobody waited for logs no asyncio warning
            entry.tasks_decoding.add_done_callback(lambda t: t.cancelled() or t.exception())
        self.cache.put(ref, entry)
        self._failures.pop(ref, None)
        self._listed.pop(ref, None)
        snapshot = result.snapshot
        if not snapshot.complete:
            log.warning("session snapshot incomplete", extra={
                "session": ref.tail, "objects_missing": len(snapshot.objects_missing),
                "objects_corrupt": len(snapshot.objects_corrupt),
                "examples": [f"{p.key}: {p.reason}" for p in (snapshot.objects_missing + snapshot.objects_corrupt)[:5]],
            })
        seconds = time.monotonic() - started
        self.metrics.loads.labels(source=source, result="ok").inc()
        self.metrics.load_seconds.labels(source=source).observe(seconds)
        self.metrics.events_parsed.inc(progress.events)
        if result.wrote:
            self.metrics.snapshots_written.inc()
        log.info("session loaded", extra={
            "session": ref.tail, "source": source, "seconds": round(seconds, 3), "tasks": entry.task_count,
            "events_parsed": progress.events, "objects_read": progress.objects_done, "bytes": nbytes,
            "complete": result.snapshot.complete, "snapshot_written": result.wrote,
        })
        return entry

    async def _decode_tasks(self, ref: SessionRef, entry: CacheEntry, tasks: TaskSection, on_disk: bool) -> None:
        """In the background, right after the load: a worker thread decodes, a chunk at a time, while the
        event loop and the head's answers go on; or, for a session larger than the replica should hold, writes
        them to local disk (disk_tasks.spill_tasks). Then the entry counts what it really holds."""
        snapshot, loop = entry.snapshot, asyncio.get_running_loop()
        if on_disk:
            def fill() -> None:
                spill_tasks(tasks, snapshot, self.disk.directory, self.disk.cache_chunks)
        else:
            def fill() -> None:
                tasks.decode(snapshot)
        try:
            entry.tasks_unreadable = not await asyncio.to_thread(
                fill_or_mark_corrupt, snapshot, entry.snapshot_key, fill)
        except LocalTasksUnreadable as exc:  # the replica's disk, not the session: 503 and a backoff
            self.metrics.task_spills.labels(result="failed").inc()
            self._local_disk_failed(loop, ref, lambda cached: cached is entry, exc)
            raise
        nbytes = await asyncio.to_thread(resident_bytes, snapshot)
        if isinstance(snapshot.tasks, DiskTasks):
            self.metrics.task_spills.labels(result="ok").inc()
            snapshot.tasks.on_read = self.metrics.disk_task_chunk_reads.inc
            # whichever entry holds these tasks then (a refresh of an unchanged session keeps them); by a weak
            # reference, or the file would wait for the GC to break the cycle
            held = weakref.ref(snapshot.tasks)
            snapshot.tasks.on_unreadable = lambda: self._local_disk_failed(
                loop, ref, lambda cached: cached.snapshot.tasks is held(), "a task chunk is unreadable")
            log.info("session tasks on local disk", extra={"session": ref.tail, "tasks": len(snapshot.tasks),
                                                           "resident_bytes": nbytes})
        if self.cache.peek(ref) is entry:
            entry.nbytes = nbytes
            self.cache.put(ref, entry)

    def _local_disk_failed(self, loop: asyncio.AbstractEventLoop, ref: SessionRef,
                           holds: Callable[[CacheEntry], bool], error: object) -> None:
        """The local task file of the cached entry that `holds` says failed: the entry is dropped, so that a
        load after the backoff writes a new one. Called from worker threads too (a chunk read): the event
        loop does the rest."""
        def drop() -> None:
            cached = self.cache.peek(ref)
            if cached is not None and holds(cached):
                self.cache.discard(ref)
                self._remember_failure(ref, f"local task file: {error}")
                log.error("session tasks on local disk unreadable; dropped", extra={"session": ref.tail,
                                                                                   "error": str(error)})
        if not loop.is_closed():  # a read still running after the server stopped: nothing left to drop
            loop.call_soon_threadsafe(drop)

    async def close(self) -> None:
        """Cancel the loads and task decodes still running (server shutdown) and wait for them to end."""
        self._closed = True
        tasks = [job.task for job in self._jobs.values()] + list(self._decodes)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
