"""Object storage behind one fsspec URL: file:// (the embedded default), s3://, gs://, abfs://, oss://.

The store speaks in layout keys (see rayhistory.layout) relative to the URL's root. Calls run in worker
threads so the event loop never blocks; fsspec's async backends (s3fs, gcsfs, adlfs) then run their
requests concurrently on fsspec's own I/O loop, and bulk reads are bounded by ``max_concurrency``.
Credentials come from each backend's usual environment variables or mounted files; the URL is logged
only with any user-info part removed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import fsspec
from fsspec.implementations.local import LocalFileSystem

log = logging.getLogger(__name__)

# gcsfs probes for a gRPC "zonal bucket" API on every call unless told not to (60 s per call offline).
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

_TMP_MARK = ".tmp-"


class StoreError(RuntimeError):
    pass


class ObjectNotFound(StoreError, FileNotFoundError):
    pass


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int


def redact_url(url: str) -> str:
    """The URL without credentials, for logs and status fields."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        parts = parts._replace(netloc=host)
    return urlunsplit(parts._replace(query=""))


def _prepare_options(protocol: str, options: dict[str, Any]) -> dict[str, Any]:
    opts = dict(options)
    if protocol in ("s3", "s3a") and "endpoint_url" in opts:
        opts.setdefault("client_kwargs", {}).setdefault("endpoint_url", opts.pop("endpoint_url"))
    if protocol in ("abfs", "az", "abfss") and "connection_string" not in opts:
        conn = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
        if conn:
            opts["connection_string"] = conn
    return opts


class Store:
    """Async access to one history store. Keys are '/'-separated paths relative to the root."""

    def __init__(self, url: str, options: dict[str, Any] | None = None, max_concurrency: int = 32):
        self.url = url
        self.redacted_url = redact_url(url)
        protocol = urlsplit(url).scheme or "file"
        self.fs, root = fsspec.url_to_fs(url, **_prepare_options(protocol, options or {}))
        self.root = root.rstrip("/")
        self.is_local = isinstance(self.fs, LocalFileSystem)
        if self.is_local:
            os.makedirs(self.root, exist_ok=True)
        self.max_concurrency = max_concurrency
        self._limit = asyncio.Semaphore(max_concurrency)

    def __repr__(self) -> str:
        return f"Store({self.redacted_url!r})"

    def _path(self, key: str) -> str:
        if key.startswith("/") or ".." in key.split("/"):
            raise StoreError(f"key escapes the store root: {key!r}")
        return f"{self.root}/{key}" if key else self.root

    def _key(self, path: str) -> str:
        path = path.rstrip("/")
        root = self.root.lstrip("/") if not path.startswith("/") else self.root
        if path.startswith(root + "/"):
            return path[len(root) + 1:]
        raise StoreError(f"path outside the store: {path!r}")

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
        try:
            return self.fs.cat_file(self._path(key), start=start, end=end)
        except FileNotFoundError as exc:
            raise ObjectNotFound(key) from exc

    def _list_sync(self, prefix: str) -> list[ObjectInfo]:
        base = self._path(prefix.rstrip("/")) if prefix else self.root
        try:
            found = self.fs.find(base, detail=True, withdirs=False)
        except FileNotFoundError:
            return []
        out = []
        for path, info in found.items():
            if info.get("type") == "directory" or _TMP_MARK in path.rsplit("/", 1)[-1]:
                continue
            key = self._key(path)
            if key.startswith(prefix):
                out.append(ObjectInfo(key, int(info.get("size") or 0)))
        out.sort(key=lambda o: o.key)
        return out

    def _delete_sync(self, keys: list[str]) -> None:
        if not keys:
            return
        paths = [self._path(k) for k in keys]
        try:
            self.fs.rm(paths)
        except FileNotFoundError:
            pass
        if self.is_local:
            for path in paths:
                _prune_empty_dirs(os.path.dirname(path), self.root)

    # ---- async API -----------------------------------------------------------------------------

    async def put(self, key: str, data: bytes) -> None:
        async with self._limit:
            await asyncio.to_thread(self._put_sync, key, data)

    async def get(self, key: str) -> bytes:
        async with self._limit:
            return await asyncio.to_thread(self._get_sync, key)

    async def get_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of an object."""
        async with self._limit:
            return await asyncio.to_thread(self._get_sync, key, start, end)

    async def list(self, prefix: str) -> list[ObjectInfo]:
        """Every object whose key starts with `prefix`, sorted by key."""
        async with self._limit:
            return await asyncio.to_thread(self._list_sync, prefix)

    async def exists(self, key: str) -> bool:
        async with self._limit:
            return await asyncio.to_thread(self.fs.exists, self._path(key))

    async def get_many(self, keys: list[str]) -> dict[str, bytes | Exception]:
        """Read many objects with bounded concurrency; a failed read is returned, never raised."""

        async def one(key: str) -> tuple[str, bytes | Exception]:
            try:
                return key, await self.get(key)
            except Exception as exc:  # noqa: BLE001 - a failed object is the caller's to count
                return key, exc

        return dict(await asyncio.gather(*(one(k) for k in keys)))

    async def delete(self, keys: list[str]) -> None:
        async with self._limit:
            await asyncio.to_thread(self._delete_sync, list(keys))

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
