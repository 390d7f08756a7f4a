"""`rayhistory import`: a one-shot capture of a running Ray dashboard, stored as an imported session.

For clusters that never had a collector. What the requests are is decided in capture.py; this is the I/O:
every answer is read with a size bound and a timeout, stored verbatim as a captured endpoint answer
(layout.capture_endpoint: the server replays it for the same request), the collector's own endpoints are
stored under their names too, and every log file the dashboard lists is read through its log API and stored
as log parts, as the collector stores them. Last come the import manifest (what was captured, skipped,
truncated) and one `dead` index record with `imported_ms`: a session shows in the picker only once its
capture is whole.

An imported session is partial: no event history (task state transitions, profile events, the timeline
beyond what the dashboard answered), and what the live API caps (10,000 rows per list) stays capped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from pydantic import Field, SecretStr, field_validator

from . import capture, layout, ray_token
from .capture import Request
from .config import CommonSettings
from .index import SessionIndex
from .layout import IndexKind, SessionRef
from .store import Store, StoreError

log = logging.getLogger(__name__)

LOG_PART_BYTES = 8 << 20  # a log file is stored in parts this big: a big file is never whole in memory


class Settings(CommonSettings):
    dashboard: str = Field(..., description="URL of the running Ray dashboard (e.g. http://127.0.0.1:8265)")
    namespace: str = Field(..., description="Kubernetes namespace to file the session under")
    cluster: str = Field(..., description="cluster name to file the session under")
    ray_auth_token: SecretStr = Field(
        SecretStr(""), description="Ray's dashboard token (RAY_AUTH_MODE=token heads); empty: the token file, then "
        "Ray's own RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH")
    ray_auth_token_path: str = Field("", description="file holding Ray's dashboard token")
    request_timeout_s: float = Field(60.0, gt=0, description="seconds one dashboard request may take (a log file: "
                                                              "seconds it may go without sending a byte)")
    max_answer_bytes: int = Field(64 << 20, gt=0, description="largest answer stored; a bigger one is skipped")
    max_log_file_bytes: int = Field(256 << 20, gt=0, description="bytes kept of one log file; the rest is cut")
    max_log_bytes: int = Field(4 << 30, ge=0, description="bytes of logs kept in all (0: no logs)")
    max_log_files: int = Field(20_000, ge=0, description="log files kept in all")
    max_detail_requests: int = Field(20_000, ge=0, description="requests per job, actor and node, at most")

    @field_validator("namespace", "cluster")
    @classmethod
    def _name(cls, value: str, info) -> str:
        return layout.check_name(value, info.field_name)

    @field_validator("dashboard")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"the dashboard URL must be http(s)://host[:port][/prefix], got {value[:100]!r}")
        return value.rstrip("/")


class ImportFailed(RuntimeError):
    """The import cannot go on (unreachable dashboard, 401, no session name): said once, no traceback."""


@dataclass
class Report:
    """What an import did; stored as the import manifest and printed at the end."""

    dashboard: str
    session: str = ""
    captured_ms: int = 0
    answers: dict[str, int] = field(default_factory=dict)  # canonical request -> status
    skipped: list[list[str]] = field(default_factory=list)  # [request, why]
    log_files: int = 0
    log_bytes: int = 0
    logs_truncated: list[str] = field(default_factory=list)
    logs_refused: list[str] = field(default_factory=list)
    nodes_without_logs: list[str] = field(default_factory=list)

    def manifest(self) -> bytes:
        return json.dumps({
            "dashboard": self.dashboard, "session": self.session, "captured_ms": self.captured_ms,
            "answers": self.answers, "skipped": self.skipped[:1000], "log_files": self.log_files,
            "log_bytes": self.log_bytes, "logs_truncated": self.logs_truncated[:1000],
            "logs_refused": self.logs_refused[:1000], "nodes_without_logs": self.nodes_without_logs,
        }).encode()


def shown_url(url: str) -> str:
    """The dashboard URL without credentials, for the manifest and messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    return urlunsplit((parts.scheme, netloc + (f":{parts.port}" if parts.port else ""), parts.path, "", ""))


class Progress:
    """One line per step on stderr: long imports show where they are."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr

    def __call__(self, text: str) -> None:
        print(f"import: {text}", file=self.stream, flush=True)


class TooLarge(Exception):
    pass


class Importer:
    def __init__(self, settings: Settings, store: Store, progress: Progress | None = None):
        self.settings = settings
        self.store = store
        self.progress = progress or Progress()
        self.writer = layout.new_writer_id()
        self.report = Report(shown_url(settings.dashboard))
        self.ref: SessionRef | None = None
        self._polled = {r: name for name, r in capture.POLLED.items()}

    async def run(self) -> Report:
        s = self.settings
        try:
            token = ray_token.resolve_token(s.ray_auth_token.get_secret_value(), s.ray_auth_token_path)
        except ray_token.RayTokenError as exc:
            raise ImportFailed(str(exc)) from None
        timeout = aiohttp.ClientTimeout(total=s.request_timeout_s)
        async with aiohttp.ClientSession(timeout=timeout, headers=ray_token.headers(token)) as http:
            self.http, self.token_sent = http, bool(token)
            version = await self._version()
            self.ref = SessionRef(s.namespace, s.cluster, version)
            self.report.session = version
            self.report.captured_ms = layout.now_ms()
            self.progress(f"session {self.ref.tail} from {self.report.dashboard}")
            answers = await self._capture(list(capture.FIXED), "first round")
            details = capture.detail_requests(answers, s.max_detail_requests)
            answers.update(await self._capture(details, "jobs, actors, nodes"))
            nodes_answer = answers.get(capture.Request("nodes", (("view", "summary"),)))
            await self._logs(capture.alive_node_ids(nodes_answer, capture.MAX_NODES),
                             capture.node_ids(nodes_answer, capture.MAX_NODES))
        await self.store.put(layout.endpoint_key(self.ref, layout.IMPORT_MANIFEST, self.writer),
                             self.report.manifest())
        await SessionIndex(self.store, self.writer).append(
            self.ref, IndexKind.DEAD, start_ms=layout.session_start_ms(version), end_ms=self.report.captured_ms,
            imported_ms=self.report.captured_ms, node_ids=capture.node_ids(nodes_answer, capture.MAX_NODES),
            reason=f"imported: a one-shot capture of {self.report.dashboard} (no event history)")
        self.progress(f"done: {len(self.report.answers)} answers, {self.report.log_files} log files "
                      f"({self.report.log_bytes / 1e6:.1f} MB), {len(self.report.skipped)} skipped")
        return self.report

    # ---- HTTP -----------------------------------------------------------------------------------

    async def _open(self, request: Request, streaming: bool = False) -> aiohttp.ClientResponse:
        """A streamed log file may take as long as it takes while bytes keep coming: its bound is per read."""
        url = self.settings.dashboard + request.url
        t = self.settings.request_timeout_s
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=t, sock_read=t) if streaming else None
        try:
            return await self.http.get(url, allow_redirects=False, timeout=timeout or self.http.timeout)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise ConnectionError(f"{type(exc).__name__}: {exc}".rstrip(": ")) from None

    async def _read(self, request: Request, limit: int) -> tuple[int, bytes]:
        """(status, body) of one GET, the body at most `limit` bytes (TooLarge beyond)."""
        resp = await self._open(request)
        try:
            if resp.content_length is not None and resp.content_length > limit:
                raise TooLarge(f"answer of {resp.content_length} bytes is above --max-answer-bytes {limit}")
            body = bytearray()
            async for chunk in resp.content.iter_chunked(1 << 16):
                body += chunk
                if len(body) > limit:
                    raise TooLarge(f"answer above --max-answer-bytes {limit}")
            return resp.status, bytes(body)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise ConnectionError(f"{type(exc).__name__}: {exc}") from None
        finally:
            resp.release()

    async def _version(self) -> str:
        where = self.report.dashboard
        try:
            status, body = await self._read(Request("api/version"), 1 << 20)
        except (ConnectionError, TooLarge) as exc:
            raise ImportFailed(f"cannot reach the Ray dashboard at {where}: {exc}") from None
        if status in (401, 403):
            raise ImportFailed(
                f"the Ray dashboard at {where} answered {status}: "
                + ("it refused the Ray token sent" if self.token_sent else
                   "it wants Ray's token (RAY_AUTH_MODE=token): pass --ray-auth-token or --ray-auth-token-path, "
                   "or set RAY_AUTH_TOKEN"))
        session = capture.parse(body) if status == 200 else None
        name = session.get("session_name") if isinstance(session, dict) else None
        if not layout.is_session_name(name):
            raise ImportFailed(f"{where}/api/version answered {status} without a Ray session name: is it a Ray "
                               "2.x dashboard?")
        return name

    # ---- answers --------------------------------------------------------------------------------

    async def _capture(self, requests: list[Request], what: str) -> dict[Request, Any]:
        """Each request's answer stored; the parsed answers (for the next round)."""
        answers: dict[Request, Any] = {}
        for i, request in enumerate(requests, 1):
            parsed = await self._capture_one(request)
            if parsed is not None:
                answers[request] = parsed
            if i % 20 == 0 or i == len(requests):
                self.progress(f"{what}: {i}/{len(requests)} requests")
        return answers

    async def _capture_one(self, request: Request) -> Any:
        """Store a 200 JSON answer (under the collector's endpoint name too, if it is one); its parsed JSON, or
        None for any other answer (e.g. 501 without Serve: the server answers what a dead session shows)."""
        try:
            status, body = await self._read(request, self.settings.max_answer_bytes)
        except (ConnectionError, TooLarge) as exc:
            self.report.skipped.append([request.canonical, str(exc)])
            return None
        self.report.answers[request.canonical] = status
        parsed = capture.parse(body) if status == 200 else None
        if status == 200 and parsed is None:
            self.report.skipped.append([request.canonical, "not JSON"])
        if parsed is None:
            return None
        await self.store.put(layout.endpoint_key(self.ref, request.endpoint, self.writer), body)
        if request in self._polled:
            await self.store.put(layout.endpoint_key(self.ref, self._polled[request], self.writer), body)
        return parsed

    # ---- logs -----------------------------------------------------------------------------------

    async def _logs(self, alive: list[str], nodes: list[str]) -> None:
        self.report.nodes_without_logs = [n for n in nodes if n not in alive]
        if not self.settings.max_log_bytes or not self.settings.max_log_files:
            return
        for number, node_id in enumerate(alive, 1):
            files = await self._list_logs(node_id)
            self.progress(f"node {number}/{len(alive)} {node_id[:12]}: {len(files)} log files")
            for i, relpath in enumerate(files, 1):
                if self.report.log_files >= self.settings.max_log_files:
                    self.report.skipped.append([f"logs of {node_id}", "--max-log-files reached"])
                    return
                if self.report.log_bytes >= self.settings.max_log_bytes:
                    self.report.skipped.append([f"logs of {node_id}", "--max-log-bytes reached"])
                    return
                await self._log_file(node_id, relpath)
                if i % 50 == 0:
                    self.progress(f"node {number}/{len(alive)}: {i}/{len(files)} log files, "
                                  f"{self.report.log_bytes / 1e6:.1f} MB")

    async def _list_logs(self, node_id: str) -> list[str]:
        """Every file under the node's logs folder (folders listed one level at a time, as Ray globs)."""
        files: list[str] = []
        folders = [""]
        limit = self.settings.max_log_files + 1  # one more than kept: a cut shows as skipped
        while folders and len(files) < limit:
            folder = folders.pop(0)
            # stored too: replayed for the Logs tab's own listing requests
            listing = capture.log_listing(await self._capture_one(capture.log_list_request(node_id, folder)),
                                          limit - len(files))
            self.report.logs_refused += listing.refused
            # a glob "a/*" lists "a/b" as files of a: keep only what is really below the folder asked
            below = [f for f in listing.files if not folder or f.startswith(folder + "/")]
            files += below
            if folder.count("/") + 1 < layout.MAX_RELPATH_DEPTH - 1:
                folders += [f for f in listing.folders if not folder or f.startswith(folder + "/")]
        return files[:limit]

    async def _log_file(self, node_id: str, relpath: str) -> None:
        request = capture.log_file_request(node_id, relpath)
        keep = min(self.settings.max_log_file_bytes, self.settings.max_log_bytes - self.report.log_bytes)
        try:
            resp = await self._open(request, streaming=True)
        except ConnectionError as exc:
            self.report.skipped.append([request.canonical, str(exc)])
            return
        offset, part, truncated = 0, bytearray(), False
        try:
            if resp.status != 200:
                self.report.skipped.append([request.canonical, f"status {resp.status}"])
                return
            async for chunk in resp.content.iter_chunked(1 << 16):
                room = keep - offset - len(part)
                if len(chunk) > room:
                    chunk, truncated = chunk[:room], True
                part += chunk
                if len(part) >= LOG_PART_BYTES:
                    await self._put_part(node_id, relpath, offset, bytes(part))
                    offset, part = offset + len(part), bytearray()
                if truncated:
                    break
            if part or not offset:
                await self._put_part(node_id, relpath, offset, bytes(part))
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            self.report.skipped.append([request.canonical, f"{type(exc).__name__}: {exc} (kept what was read)"])
            if part:
                await self._put_part(node_id, relpath, offset, bytes(part))
        finally:
            resp.release()
        self.report.log_files += 1
        if truncated:
            self.report.logs_truncated.append(f"{node_id}/{relpath}")

    async def _put_part(self, node_id: str, relpath: str, offset: int, data: bytes) -> None:
        await self.store.put(layout.log_part_key(self.ref, node_id, relpath, 0, offset), data)
        self.report.log_bytes += len(data)


def main(settings: Settings) -> int:
    try:
        store = Store(settings.storage, settings.storage_options, timeout_s=settings.storage_timeout_s)
        report = asyncio.run(Importer(settings, store).run())
    except ImportFailed as exc:
        print(f"rayhistory import: {exc}", file=sys.stderr)
        return 1
    except (StoreError, OSError) as exc:  # the session's index record comes last: a cut import is never listed
        print(f"rayhistory import: storage failed ({type(exc).__name__}: {exc}); nothing was listed, import again",
              file=sys.stderr)
        return 1
    print(json.dumps({"imported": f"{settings.namespace}/{settings.cluster}/{report.session}",
                      "answers": len(report.answers), "log_files": report.log_files, "log_bytes": report.log_bytes,
                      "skipped": len(report.skipped), "logs_truncated": len(report.logs_truncated)}))
    return 0
