"""Object storage behind one fsspec URL: file:// (the embedded default), s3://, gs://, abfs://, oss://.

The store speaks in layout keys (see rayhistory.layout) relative to the URL's root, which may be a
bucket or a folder in one. Calls run in worker threads so the event loop never blocks; fsspec's
async backends (s3fs, gcsfs, adlfs, ossfs's AioOSSFileSystem) then run their requests concurrently
on fsspec's own I/O loop, and bulk reads are bounded by ``max_concurrency``.

Other processes write to the same store all the time, so nothing is ever answered from fsspec's
listings cache: every list and exists asks the server.

Every async call has an overall timeout (`timeout_s`, the `storage_timeout_s` setting): past it the caller
gets `StorageTimeout` (a StoreError). A thread cannot be stopped, so the backend call itself goes on in
the store's own thread pool (at most `max_concurrency` threads, so a stalled backend never takes the event
loop's default executor) until the backend gives up; a call still waiting for a thread is dropped.
`stats()` tells what a stall looks like from outside: calls in flight (timed-out ones whose thread still
runs included), the age of the oldest, timeouts and errors so far.

Credentials come from each backend's usual environment variables or mounted files (for OSS:
OSS_ACCESS_KEY_ID / OSS_ACCESS_KEY_SECRET / OSS_SESSION_TOKEN, which ossfs does not read itself).
A `key:secret@` in an s3:// or oss:// URL is taken out of the URL and passed as options. URLs are
logged and shown only through `redact_url`, and options (which may hold secrets) never.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import fsspec
import fsspec.asyn
from fsspec.implementations.local import LocalFileSystem

log = logging.getLogger(__name__)

# gcsfs probes for a gRPC "zonal bucket" API on every call unless told not to (60 s per call offline).
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

_TMP_MARK = ".tmp-"
# In abfs://container@account.dfs.core.windows.net/ the user-info part names the container.
_AZURE = ("abfs", "abfss", "az")
_S3 = ("s3", "s3a")
_OSS_CREDENTIAL_ENV = {"key": "OSS_ACCESS_KEY_ID", "secret": "OSS_ACCESS_KEY_SECRET", "token": "OSS_SESSION_TOKEN"}


DEFAULT_TIMEOUT_S = 30.0
_FAILURE_MARK = "_rayhistory_store_op"


class StoreError(RuntimeError):
    pass


class ObjectNotFound(StoreError, FileNotFoundError):
    pass


class StorageTimeout(StoreError):
    """A store call did not finish within the store's timeout (its backend call may still be running)."""

    def __init__(self, op: str, key: str, timeout_s: float):
        super().__init__(f"storage {op} {key!r} did not finish within {timeout_s:g} s")
        self.op, self.key, self.timeout_s = op, key, timeout_s


def is_storage_failure(exc: BaseException) -> bool:
    """True for an exception a Store call raised because storage failed: a StoreError other than a missing
    object, or any backend error (botocore, aiohttp, OSError...) that came out of a Store call. Callers
    answer it 503 (retry later), never 500."""
    if isinstance(exc, ObjectNotFound):
        return False
    return isinstance(exc, StoreError) or bool(getattr(exc, _FAILURE_MARK, ""))


@dataclass(frozen=True)
class StoreStats:
    """What one Store has seen (for metrics and health): counters since it was made, and the calls now running."""

    calls: int  # async calls started
    in_flight: int  # started and not finished: a timed-out call whose backend thread still runs counts
    oldest_in_flight_s: float  # age of the oldest of those (0 when none)
    timeouts: int  # calls that raised StorageTimeout
    errors: int  # calls that raised another storage error (a missing object is an answer, not an error)
    timeout_s: float
    seconds_since_timeout: float | None = None  # since the last timeout; None if none yet


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int


def redact_url(url: str) -> str:
    """The URL without credentials (user-info, query string), for logs and status fields."""
    parts = urlsplit(url)
    keeps_container = parts.scheme in _AZURE and parts.password is None
    if "@" in parts.netloc and not keeps_container:
        parts = parts._replace(netloc=parts.netloc.rpartition("@")[2])
    return urlunsplit(parts._replace(query="", fragment=""))


def _split_credentials(url: str, protocol: str) -> tuple[str, dict[str, str]]:
    """`s3://key:secret@bucket/...` -> (`s3://bucket/...`, {key, secret}): fsspec would take them for the bucket."""
    parts = urlsplit(url)
    if protocol in _AZURE or "@" not in parts.netloc:
        return url, {}
    if protocol not in _S3 and protocol != "oss":
        raise StoreError(f"credentials in a {protocol}:// URL are not supported; use the backend's environment")
    creds = {"key": unquote(parts.username or ""), "secret": unquote(parts.password or "")}
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2])), creds


def _prepare_options(protocol: str, options: dict[str, Any], url_credentials: dict[str, str]) -> dict[str, Any]:
    opts = {**url_credentials, **options}
    if protocol in _S3 and "endpoint_url" in opts:
        opts["client_kwargs"] = {"endpoint_url": opts.pop("endpoint_url"), **opts.get("client_kwargs", {})}
    if protocol in _AZURE and "connection_string" not in opts:
        conn = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
        if conn:
            opts["connection_string"] = conn
    if protocol == "oss":
        for option, env in _OSS_CREDENTIAL_ENV.items():
            if option not in opts and os.environ.get(env):
                opts[option] = os.environ[env]
    if protocol not in ("file", "local"):
        # Other writers change the store behind our back: a cached listing would hide their objects.
        opts.setdefault("use_listings_cache", False)
    return opts


def _patch_aiooss2() -> None:
    """aiooss2 (ossfs's async client) predates aiohttp 3.12, where `Payload.decode` became abstract:
    its upload payload class can no longer be instantiated and every upload fails with
    "Can't instantiate abstract class AsyncPayload". Uploads never call decode(); give it one."""
    from aiooss2.adapter import AsyncPayload

    if "decode" in getattr(AsyncPayload, "__abstractmethods__", ()):
        def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
            raise TypeError("an OSS upload stream has no text form")

        AsyncPayload.decode = decode
        AsyncPayload.__abstractmethods__ = AsyncPayload.__abstractmethods__ - {"decode"}


def _open_filesystem(url: str, protocol: str, options: dict[str, Any]) -> tuple[fsspec.AbstractFileSystem, str]:
    if protocol == "oss":
        # fsspec maps oss:// to ossfs's synchronous client, which cannot run without its listings
        # cache (it reads back what it just cached); the async client can, and runs concurrently.
        from ossfs import AioOSSFileSystem

        _patch_aiooss2()
        return AioOSSFileSystem(**options), AioOSSFileSystem._strip_protocol(url)
    return fsspec.url_to_fs(url, **options)


class Store:
    """Async access to one history store. Keys are '/'-separated paths relative to the root."""

    def __init__(self, url: str, options: dict[str, Any] | None = None, max_concurrency: int = 32,
                 timeout_s: float = DEFAULT_TIMEOUT_S):
        protocol = urlsplit(url).scheme or "file"
        url, url_credentials = _split_credentials(url, protocol)
        self.url = url
        self.redacted_url = redact_url(url)
        self.fs, root = _open_filesystem(url, protocol, _prepare_options(protocol, options or {}, url_credentials))
        self.root = root.rstrip("/")
        self.is_local = isinstance(self.fs, LocalFileSystem)
        if self.is_local:
            os.makedirs(self.root, exist_ok=True)
        self._oss = protocol == "oss"
        self.max_concurrency = max_concurrency
        self.timeout_s = timeout_s
        # the store's own threads: a stalled backend ties up these, never the event loop's default executor
        self._executor = concurrent.futures.ThreadPoolExecutor(max_concurrency, thread_name_prefix="store")
        self._lock = threading.Lock()
        self._in_flight: dict[int, float] = {}  # call number -> time.monotonic() at its start
        self._ids = itertools.count()
        self._calls = self._timeouts = self._errors = 0
        self._last_timeout = 0.0
        log.debug("store opened", extra={"storage": self.redacted_url, "filesystem": type(self.fs).__name__})

    def __repr__(self) -> str:
        return f"Store({self.redacted_url!r})"

    def _path(self, key: str) -> str:
        if key.startswith("/") or ".." in key.split("/"):
            raise StoreError(f"key escapes the store root: {key!r}")
        return f"{self.root}/{key}" if key else self.root

    def _key(self, path: str) -> str | None:
        """The key of a listed path; None outside the root (a listing of `root/a` may also hold `root/ab`)."""
        path = path.rstrip("/")
        root = self.root.lstrip("/") if not path.startswith("/") else self.root
        if path.startswith(root + "/"):
            return path[len(root) + 1:]
        return None

    # ---- sync primitives (run in threads) ------------------------------------------------------

    def _put_sync(self, key: str, data: bytes) -> None:
        path = self._path(key)
        if self.is_local:
            # Atomic on a filesystem: readers never see half an object.
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}{_TMP_MARK}{uuid.uuid4().hex}"
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        else:
            self.fs.pipe_file(path, data)

    def _get_sync(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        path = self._path(key)
        if start is not None and end is not None and end <= start:
            return b""  # S3 and OSS would answer an empty range with the whole object
        try:
            if start is None and end is None:
                return self.fs.cat_file(path)
            if self._oss:
                # ossfs hands (start, end) to OSS as an inclusive range, unlike fsspec's [start, end);
                # "standard" behaviour: a range past the end is an error, not the whole object
                return self.fs.cat_file(path, start=start, end=end - 1,
                                        headers={"x-oss-range-behavior": "standard"})
            return self.fs.cat_file(path, start=start, end=end)
        except FileNotFoundError as exc:
            raise ObjectNotFound(key) from exc

    def _list_sync(self, prefix: str) -> list[ObjectInfo]:
        try:
            found = self._find_local(prefix) if self.is_local else self._find_remote(prefix)
        except FileNotFoundError:
            return []
        out = []
        for path, info in found.items():
            if info.get("type") == "directory" or path.endswith("/") or _TMP_MARK in path.rsplit("/", 1)[-1]:
                continue  # folders, folder-marker objects, half-written local files
            key = self._key(path)
            if key is not None and key.startswith(prefix):
                out.append(ObjectInfo(key, int(info.get("size") or 0)))
        out.sort(key=lambda o: o.key)
        return out

    def _find_local(self, prefix: str) -> dict[str, dict]:
        """Every file under the prefix's folder, walked with os.scandir: fsspec's local find builds a full
        info dict per file, which at 200k index records is most of a minute on a busy machine."""
        found: dict[str, dict] = {}
        folders = [self._path(prefix.rpartition("/")[0])]
        while folders:
            folder = folders.pop()
            try:
                entries = os.scandir(folder)
            except (FileNotFoundError, NotADirectoryError):
                continue
            except PermissionError:  # as fsspec's find did: an unreadable folder is left out, not fatal
                log.warning("folder not listed", extra={"folder": folder, "error": "permission denied"})
                continue
            with entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):  # no loop through a linked folder
                            folders.append(entry.path)
                        elif entry.is_file():
                            found[entry.path] = {"type": "file", "size": entry.stat().st_size}
                    except FileNotFoundError:  # removed while listed (retention, a replaced temp file)
                        continue
        return found

    def _find_remote(self, prefix: str) -> dict[str, dict]:
        """One flat, server-side prefix listing (no walk folder by folder, which costs a request each)."""
        target = self._path(prefix) if prefix else self.root + "/"  # the whole store is "root/", not "root*"
        parent, _, _ = target.rstrip("/").rpartition("/")
        if not parent.strip("/"):  # the target is a bucket: list it whole
            return self.fs.find(target.rstrip("/"), detail=True, withdirs=False)
        return self.fs.find(parent, prefix=target[len(parent) + 1:], detail=True, withdirs=False)

    def _exists_sync(self, key: str) -> bool:
        try:
            return self.fs.info(self._path(key)).get("type") != "directory"
        except FileNotFoundError:
            return False

    def _delete_sync(self, keys: list[str]) -> None:
        if not keys:
            return
        paths = [self._path(k) for k in keys]
        if self._oss:
            # ossfs's rm(list) deletes key by key, with a lookup each; DeleteMultipleObjects takes 1000 at once
            for i in range(0, len(paths), 1000):
                fsspec.asyn.sync(self.fs.loop, self.fs._bulk_delete, paths[i:i + 1000])
            return
        if not self.is_local:
            self.fs.rm(paths)  # batched by s3fs, gcsfs and adlfs; a missing key is no error
            return
        for path in paths:  # fsspec's local rm stops at the first missing file
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
            _prune_empty_dirs(os.path.dirname(path), self.root)

    # ---- async API -----------------------------------------------------------------------------

    def stats(self) -> StoreStats:
        now = time.monotonic()
        with self._lock:
            oldest = min(self._in_flight.values(), default=now)
            return StoreStats(
                calls=self._calls, in_flight=len(self._in_flight), oldest_in_flight_s=round(now - oldest, 3),
                timeouts=self._timeouts, errors=self._errors, timeout_s=self.timeout_s,
                seconds_since_timeout=round(now - self._last_timeout, 3) if self._timeouts else None,
            )

    async def _call(self, op: str, key: str, fn, *args, timeout_s: float | None = None):
        """fn(*args) in the store's threads, within the overall timeout (or `timeout_s`), counted in stats()."""
        timeout_s = timeout_s or self.timeout_s
        call = next(self._ids)
        with self._lock:
            self._calls += 1
            self._in_flight[call] = time.monotonic()

        def finished(_future) -> None:  # in the thread that ran it, or here when dropped before it ran
            with self._lock:
                self._in_flight.pop(call, None)

        try:
            future = self._executor.submit(fn, *args)
        except RuntimeError:  # the executor was shut down
            finished(None)
            raise
        future.add_done_callback(finished)
        try:
            # cancelling the wrapper cancels the thread's future if it has not started yet. asyncio.timeout,
            # not wait_for: Python 3.11's wait_for drops a cancellation that comes as the call finishes,
            # and a background task cancelled at shutdown then went on forever
            async with asyncio.timeout(timeout_s):
                return await asyncio.wrap_future(future)
        except TimeoutError:
            with self._lock:
                self._timeouts += 1
                self._last_timeout = time.monotonic()
            log.warning("storage call timed out", extra={"op": op, "key": key, "timeout_s": timeout_s,
                                                         "storage": self.redacted_url})
            raise StorageTimeout(op, key, timeout_s) from None
        except (FileNotFoundError, asyncio.CancelledError):
            raise
        except Exception as exc:
            with self._lock:
                self._errors += 1
            with contextlib.suppress(AttributeError, TypeError):
                setattr(exc, _FAILURE_MARK, op)  # is_storage_failure() tells it from the caller's own errors
            raise

    async def put(self, key: str, data: bytes) -> None:
        await self._call("put", key, self._put_sync, key, data)

    async def get(self, key: str) -> bytes:
        return await self._call("get", key, self._get_sync, key)

    async def get_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of an object."""
        return await self._call("get_range", key, self._get_sync, key, start, end)

    async def list(self, prefix: str, timeout_s: float | None = None) -> list[ObjectInfo]:
        """Every object whose key starts with `prefix`, sorted by key. A listing is one call however many
        objects it returns: a caller that lists very many may give it a longer `timeout_s`."""
        return await self._call("list", prefix, self._list_sync, prefix, timeout_s=timeout_s)

    async def exists(self, key: str) -> bool:
        return await self._call("exists", key, self._exists_sync, key)

    async def get_many(self, keys: list[str]) -> dict[str, bytes | Exception]:
        """Read many objects, at most `max_concurrency` at a time (each read's timeout starts when it does);
        a failed read is returned, never raised."""
        limit = asyncio.Semaphore(self.max_concurrency)

        async def one(key: str) -> tuple[str, bytes | Exception]:
            async with limit:
                try:
                    return key, await self.get(key)
                except Exception as exc:  # noqa: BLE001 - a failed object is the caller's to count
                    return key, exc

        return dict(await asyncio.gather(*(one(k) for k in keys)))

    async def delete(self, keys: list[str]) -> None:
        keys = list(keys)
        await self._call("delete", keys[0] if keys else "", self._delete_sync, keys)

    async def delete_prefix(self, prefix: str) -> int:
        infos = await self.list(prefix)
        await self.delete([i.key for i in infos])
        return len(infos)


def _prune_empty_dirs(path: str, root: str) -> None:
    while path.startswith(root) and path != root:
        try:
            os.rmdir(path)
        except OSError:
            return
        path = os.path.dirname(path)
