"""The per-replica LRU of parsed session snapshots, bounded by session count and by measured bytes.

The cache only holds references: a request that already has a snapshot keeps it alive (Python keeps an
object alive while anyone refers to it), so an eviction never breaks a request in flight; the next
request for an evicted session simply loads it again (the loader goes through the compacted snapshot).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import sys
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import cachetools

from rayhistory.layout import SessionRef

from .metrics import ServerMetrics

log = logging.getLogger(__name__)

# Walking every object of a 1M-task snapshot would cost seconds; large containers are measured on a
# sample of their items and extrapolated.
_SAMPLE = 64


def measure_bytes(obj: Any) -> int:
    """Resident bytes of an object graph (sys.getsizeof, recursively; large containers sampled).

    Shared immutable singletons (small ints, interned short strings, None, booleans) count once per
    reference, which over-counts slightly: the bound errs on the safe side.
    """
    return _measure(obj, set())


def _measure(obj: Any, seen: set[int]) -> int:
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    size = sys.getsizeof(obj)
    if isinstance(obj, (str, bytes, bytearray, int, float, bool, type(None))):
        return size
    if isinstance(obj, dict):
        return size + _measure_items(list(obj.items()), seen, pair=True)
    if isinstance(obj, (list, tuple, set, frozenset)):
        return size + _measure_items(list(obj), seen)
    fields = getattr(type(obj), "__struct_fields__", None)  # msgspec.Struct
    if fields is None:
        fields = [n for n in getattr(obj, "__dict__", {})] + list(getattr(type(obj), "__slots__", ()))
        if hasattr(obj, "__dict__"):
            size += sys.getsizeof(obj.__dict__)
    return size + sum(_measure(getattr(obj, name, None), seen) for name in fields)


def _measure_items(items: list, seen: set[int], pair: bool = False) -> int:
    def one(item: Any) -> int:
        return _measure(item[0], seen) + _measure(item[1], seen) if pair else _measure(item, seen)

    if len(items) <= _SAMPLE:
        return sum(one(i) for i in items)
    step = len(items) / _SAMPLE
    sampled = sum(one(items[int(i * step)]) for i in range(_SAMPLE))
    return int(sampled * len(items) / _SAMPLE)


class EncodedRows:
    """Encoded JSON rows of the list API, reused across requests: a 10,000-row answer is mostly rows that
    an earlier answer encoded already (the same page reloaded, or another filter over the same tasks).

    One bound for the whole process (not per snapshot, or it would multiply by the number of cached
    sessions), oldest rows dropped first. A row is keyed by its snapshot's token and its object's id:
    snapshots are immutable once built, and both keys stay unique while the snapshot lives. A snapshot's
    token dies with it (weakref.finalize, before its id can be reused), and its rows are then dropped.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._rows: dict[tuple[int, int, bool], bytes] = {}
        self._bytes = 0
        self._tokens: dict[int, int] = {}  # id(snapshot) -> token, while the snapshot lives
        self._dead: list[int] = []  # tokens of snapshots gone since, whose rows are still here
        self._next_token = itertools.count(1)

    def _token(self, snapshot: Any) -> int:
        with self._lock:
            token = self._tokens.get(id(snapshot))
            if token is None:
                token = self._tokens[id(snapshot)] = next(self._next_token)
                weakref.finalize(snapshot, self._forget, id(snapshot))
            return token

    def _forget(self, snapshot_id: int) -> None:
        # runs wherever the snapshot's last reference went, maybe inside _lock's holder: no lock here,
        # only single dict/list operations (atomic); the rows go at the next insertion
        self._dead.append(self._tokens.pop(snapshot_id))

    def rows(self, snapshot: Any, items: Sequence, variant: bool, encode: Callable[[Any], bytes]) -> list[bytes]:
        """encode(item) for each item of the snapshot (`variant` tells two encodings of one item apart),
        from the cache where it has them."""
        token = self._token(snapshot)
        get = self._rows.get
        out = [get((token, id(item), variant)) for item in items]
        missing = [i for i, row in enumerate(out) if row is None]
        if not missing:
            return out
        for i in missing:  # outside the lock: encoding is the slow part, and other requests go on meanwhile
            out[i] = encode(items[i])
        with self._lock:
            self._drop_dead()
            for i in missing:
                key = (token, id(items[i]), variant)
                if key not in self._rows:
                    self._rows[key] = out[i]
                    self._bytes += len(out[i])
            while self._bytes > self.max_bytes and self._rows:
                self._bytes -= len(self._rows.pop(next(iter(self._rows))))
        return out

    def _drop_dead(self) -> None:
        if not self._dead:
            return
        dead = set()
        while self._dead:
            dead.add(self._dead.pop())
        for key in [k for k in self._rows if k[0] in dead]:
            self._bytes -= len(self._rows.pop(key))

    @property
    def nbytes(self) -> int:
        return self._bytes


@dataclass
class CacheEntry:
    """A loaded session: its snapshot and what the loader knows about where it came from."""

    snapshot: Any
    live: bool
    manifest: dict[str, int]  # raw object key -> size, every object the snapshot covers
    nbytes: int
    loaded_at: float = field(default_factory=time.monotonic)
    snapshot_key: str = ""  # the compacted snapshot it was read from or written to, if any
    task_count: int = 0
    # a snapshot read from storage decodes its tasks after the load (SessionLoader.tasks_decoded); meanwhile
    # api.HEAD_ONLY routes answer from its head (snapshot_model.TaskSection.head_view)
    tasks_decoding: asyncio.Future | None = None
    head_view: Any = None
    tasks_unreadable: bool = False  # its stored task section did not decode: answered, never built on

    @property
    def tasks_decoded(self) -> bool:
        """The task fields are there: no decode, or one that finished without raising (a failed one is
        awaited again by SessionLoader.tasks_decoded, which raises its error to every request)."""
        decoding = self.tasks_decoding
        return decoding is None or (decoding.done() and not decoding.cancelled() and decoding.exception() is None)

    @property
    def head(self) -> Any:
        """What api.HEAD_ONLY routes read: the snapshot, or its head while its tasks decode."""
        return self.snapshot if self.tasks_decoded else self.head_view

    @property
    def stored_bytes(self) -> int:
        return sum(self.manifest.values())


class _ByteBoundedLRU(cachetools.LRUCache):
    def __init__(self, max_bytes: int, on_evict) -> None:
        super().__init__(maxsize=max_bytes, getsizeof=lambda entry: entry.nbytes)
        self._on_evict = on_evict

    def popitem(self):
        key, entry = super().popitem()
        self._on_evict(key, entry)
        return key, entry


class SnapshotCache:
    def __init__(self, max_sessions: int, max_bytes: int, metrics: ServerMetrics):
        self.max_sessions = max_sessions
        self.max_bytes = max_bytes
        self.metrics = metrics
        self._lru = _ByteBoundedLRU(max_bytes, self._evicted)

    def _evicted(self, ref: SessionRef, entry: CacheEntry) -> None:
        self.metrics.cache_evictions.inc()
        log.info("snapshot evicted", extra={"session": ref.tail, "bytes": entry.nbytes})

    def get(self, ref: SessionRef) -> CacheEntry | None:
        entry = self._lru.get(ref)
        (self.metrics.cache_hits if entry is not None else self.metrics.cache_misses).inc()
        return entry

    def peek(self, ref: SessionRef) -> CacheEntry | None:
        """The entry without touching its recency or the hit counters (status pages, listings)."""
        try:
            return cachetools.Cache.__getitem__(self._lru, ref)  # the base class does not reorder
        except KeyError:
            return None

    def refs(self) -> list[SessionRef]:
        return list(self._lru.keys())

    def put(self, ref: SessionRef, entry: CacheEntry) -> bool:
        """Cache an entry; False if it alone is larger than the byte bound (it is then served uncached)."""
        self._lru.pop(ref, None)
        try:
            self._lru[ref] = entry
        except ValueError:
            log.warning("snapshot larger than the cache", extra={"session": ref.tail, "bytes": entry.nbytes,
                                                                   "max_bytes": self.max_bytes})
            self._update_gauges()
            return False
        while len(self._lru) > self.max_sessions:
            self._lru.popitem()
        self._update_gauges()
        return True

    def discard(self, ref: SessionRef) -> None:
        self._lru.pop(ref, None)
        self._update_gauges()

    def _update_gauges(self) -> None:
        self.metrics.cache_bytes.set(self._lru.currsize)
        self.metrics.cache_sessions.set(len(self._lru))

    @property
    def currsize(self) -> int:
        return self._lru.currsize

    def __len__(self) -> int:
        return len(self._lru)

    def __contains__(self, ref: SessionRef) -> bool:
        return ref in self._lru
