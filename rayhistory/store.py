"""Object storage behind one fsspec URL: file:// (the embedded default), s3://, gs://, abfs://, oss://.

The store speaks in layout keys (see rayhistory.layout) relative to the URL's root, which may be a
bucket or a folder in one. Calls run in worker threads so the event loop never blocks; fsspec's
async backends (s3fs, gcsfs, adlfs, ossfs's AioOSSFileSystem) then run their requests concurrently
on fsspec's own I/O loop, and bulk reads are bounded by ``max_concurrency``.

Other processes write to the same store all the time, so nothing is ever answered from fsspec's
listings cache: every list and exists asks the server.

Credentials come from each backend's usual environment variables or mounted files (for OSS:
OSS_ACCESS_KEY_ID / OSS_ACCESS_KEY_SECRET / OSS_SESSION_TOKEN, which ossfs does not read itself).
A `key:secret@` in an s3:// or oss:// URL is taken out of the URL and passed as options. URLs are
logged and shown only through `redact_url`, and options (which may hold secrets) never.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
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


class StoreError(RuntimeError):
    pass


class ObjectNotFound(StoreError, FileNotFoundError):
    pass


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

    def __init__(self, url: str, options: dict[str, Any] | None = None, max_concurrency: int = 32):
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
        self._limit = asyncio.Semaphore(max_concurrency)
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
        base = self._path(prefix.rpartition("/")[0])
        return self.fs.find(base, detail=True, withdirs=False)

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
            return await asyncio.to_thread(self._exists_sync, key)

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
