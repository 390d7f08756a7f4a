"""The Ray Dashboard UI, served unmodified, one copy per session URL.

Ray 2.60's dashboard build (ray/dashboard/client/build, shipped in the `ray` wheel) is position
independent: index.html loads "./static/...", webpack's public path is "./", the router is a
HashRouter (#/jobs/...) and every API call goes through formatUrl(), which strips the leading "/".
So serving the same index.html at /s/{namespace}/{cluster}/{session}/ makes the UI call
/s/{namespace}/{cluster}/{session}/api/... : the session lives in the path, two tabs can show two
sessions at once, and a URL can be shared. Nothing of the build is rewritten.

Also here: the picker page at / (plain HTML+JS over /clusters) and the loading page shown at a
session's URL while its snapshot is still being built.
"""

from __future__ import annotations

import functools
import html
import importlib.util
import json
import logging
import os
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from rayhistory import layout
from rayhistory.layout import SessionRef

log = logging.getLogger(__name__)

DASHBOARD_DIR_ENV = "RAYHISTORY_DASHBOARD_DIR"
SESSION_PREFIX = "/s/{namespace}/{cluster}/{session}"
_PAGES = Path(__file__).parent
# The build's hashed assets never change under one name; index.html and our pages always may.
_IMMUTABLE = "public, max-age=31536000, immutable"
_NO_CACHE = "no-cache"


class DashboardBuildMissing(RuntimeError):
    pass


def find_dashboard_dir(configured: str | None = None) -> Path | None:
    """Where the dashboard build is: the setting, else $RAYHISTORY_DASHBOARD_DIR, else the `ray` package.

    Finding the `ray` package does not import it (importing Ray takes seconds and starts nothing we need).
    """
    if configured:
        if not is_dashboard_build(Path(configured)):
            # A setting that points nowhere is a mistake worth stopping for, not a silent fallback.
            raise DashboardBuildMissing(f"--dashboard-dir {configured!r} holds no dashboard build (index.html, static/)")
        return Path(configured).resolve()
    candidates = [Path(os.environ[DASHBOARD_DIR_ENV])] if os.environ.get(DASHBOARD_DIR_ENV) else []
    spec = importlib.util.find_spec("ray")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidates.append(Path(location) / "dashboard" / "client" / "build")
    for candidate in candidates:
        if is_dashboard_build(candidate):
            return candidate.resolve()
    return None


def is_dashboard_build(path: Path) -> bool:
    return (path / "index.html").is_file() and (path / "static").is_dir()


def session_base(ref: SessionRef) -> str:
    """The shareable URL path of one session's dashboard."""
    return f"/s/{ref.namespace}/{ref.cluster}/{ref.session}/"


def session_ref(request: web.Request) -> SessionRef:
    """The session named by a request's path; 404 for a name that cannot be a session."""
    info = request.match_info
    try:
        return SessionRef(info["namespace"], info["cluster"], info["session"])
    except layout.LayoutError as exc:
        raise web.HTTPNotFound(text=str(exc)) from exc


def asset_path(build: Path, relpath: str) -> Path | None:
    """A file of the build named by a URL path; None if it is missing or would leave the build."""
    if not relpath or "\\" in relpath or "\0" in relpath:
        return None
    parts = relpath.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return None
    path = (build / relpath).resolve()
    if build not in path.parents or not path.is_file():
        return None
    return path


# ---- pages ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LoadState:
    """What the UI needs to know about a session before it serves the dashboard."""

    ready: bool  # a snapshot is in memory: the dashboard can open at once
    exists: bool = True  # the index (or storage) knows the session


# Given a request and the session it names, tells whether the dashboard can open now.
LoadStateFn = Callable[[web.Request, SessionRef], Awaitable[LoadState]]


@functools.cache
def page_template(name: str) -> str:
    """A page of ours, with the style the one-card pages share filled in."""
    return (_PAGES / name).read_text().replace("{{card_css}}", (_PAGES / "card.css").read_text().rstrip("\n"))


def render_loading_page(ref: SessionRef, status_path: str) -> str:
    """The page shown while a cold session loads: it polls `status_path` (relative) and reloads when ready."""
    template = page_template("loading.html")
    config = {"statusPath": status_path, "session": ref.session, "cluster": ref.cluster, "namespace": ref.namespace}
    return (
        template.replace("{{title}}", html.escape(f"{ref.cluster} / {ref.session}"))
        # </script> cannot appear inside a JSON string from layout-checked names, but escape '<' anyway.
        .replace("{{config}}", json.dumps(config).replace("<", "\\u003c"))
    )


BANNER_MARK = b'<div id="root">'
NODES_PATH = "nodes?view=summary"


def render_banner(ref: SessionRef, status_path: str, source: str = "storage") -> str:
    """The context banner injected into a session's index.html: which session this is, its state and what is
    missing (filled from `status_path` by its script), node log links, the way back and the shareable URL.
    `source`: where the page's answers come from, storage or the live head (a proxied session)."""
    config = {"namespace": ref.namespace, "cluster": ref.cluster, "session": ref.session,
              "statusPath": status_path, "nodesPath": NODES_PATH, "source": source}
    return (
        page_template("banner.html")
        .replace("{{picker}}", "../../../../")
        .replace("{{config}}", json.dumps(config).replace("<", "\\u003c"))
    )


def render_dashboard_index(index_html: bytes, ref: SessionRef, status_path: str, source: str = "storage") -> bytes:
    """The build's index.html for one session (or a live head's own, `source` "live"): the banner before the
    app's root and a per-session <title>. The build's own files are never rewritten; only this copy of its
    page, per request."""
    title = html.escape(f"Ray Dashboard · {ref.cluster} / {ref.session}").encode()
    page = re.sub(rb"<title>[^<]*</title>", b"<title>" + title + b"</title>", index_html, count=1)
    banner = render_banner(ref, status_path, source).encode()
    if BANNER_MARK in page:
        return page.replace(BANNER_MARK, banner + BANNER_MARK, 1)
    return page.replace(b"</body>", banner + b"</body>", 1)  # another build's layout: still shown


def render_error_page(status: int, reason: str, message: str, picker: str) -> str:
    """A 404 or error page in the picker's style, with a link back to it (`picker`: relative path)."""
    return (
        page_template("error.html")
        .replace("{{picker}}", html.escape(picker))
        .replace("{{status}}", str(status))
        .replace("{{reason}}", html.escape(reason))
        .replace("{{message}}", html.escape(message))
    )


def picker_path(request_path: str) -> str:
    """The picker (/) relative to a request's path, so links work behind an Ingress path prefix too."""
    depth = max(0, request_path.count("/") - 1)
    return "../" * depth or "./"


def wants_html(request: web.Request) -> bool:
    """A browser navigating (not the dashboard's fetch/axios calls, which ask for JSON or */*)."""
    return request.method == "GET" and "text/html" in request.headers.get("Accept", "")


@web.middleware
async def error_pages(request: web.Request, handler):
    """A browser that navigates to a path that fails gets a page with a way back, not bare text. API calls
    (which never ask for text/html) keep their answers as they are."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or not wants_html(request):
            raise
        message = exc.text if exc.text and exc.content_type == "text/plain" else exc.reason
        if message.startswith(f"{exc.status}: "):
            message = message[len(f"{exc.status}: "):]
        return web.Response(
            text=render_error_page(exc.status, exc.reason, message, picker_path(request.path)), status=exc.status,
            content_type="text/html", headers={"Cache-Control": "no-store", **{
                k: v for k, v in exc.headers.items() if k in ("Retry-After",)}})
    return response


class DashboardUI:
    """aiohttp handlers for the picker, the loading page and the dashboard build under a session prefix."""

    def __init__(self, build: Path | None, load_state: LoadStateFn, status_path: str):
        self.build = build
        self.load_state = load_state
        self.status_path = status_path
        self._index_html = (build / "index.html").read_bytes() if build else b""

    def _require_build(self) -> Path:
        if self.build is None:
            raise web.HTTPServiceUnavailable(
                text="The Ray Dashboard build was not found. Install `ray`, or run `make dashboard` and start the "
                f"server with --dashboard-dir .tools/dashboard (or set {DASHBOARD_DIR_ENV}).",
            )
        return self.build

    async def picker(self, request: web.Request) -> web.Response:
        return web.Response(text=page_template("picker.html"), content_type="text/html", headers={"Cache-Control": _NO_CACHE})

    async def add_slash(self, request: web.Request) -> web.Response:
        ref = session_ref(request)
        # Relative, so it also works behind an Ingress that strips a path prefix.
        location = f"{ref.session}/" + (f"?{request.query_string}" if request.query_string else "")
        raise web.HTTPFound(location)

    async def index(self, request: web.Request) -> web.Response:
        ref = session_ref(request)
        self._require_build()
        state = await self.load_state(request, ref)
        if not state.exists:
            raise web.HTTPNotFound(text=f"no session {ref.tail} in this history store")
        if not state.ready:
            body = render_loading_page(ref, self.status_path)
            return web.Response(text=body, content_type="text/html", headers={"Cache-Control": "no-store"})
        body = render_dashboard_index(self._index_html, ref, self.status_path)
        return web.Response(body=body, content_type="text/html", headers={"Cache-Control": _NO_CACHE})

    async def asset(self, request: web.Request) -> web.StreamResponse:
        session_ref(request)
        build = self._require_build()
        relpath = request.match_info["asset"]
        path = asset_path(build, relpath)
        if path is None:
            raise web.HTTPNotFound()
        cache = _IMMUTABLE if relpath.startswith("static/") else _NO_CACHE
        return web.FileResponse(path, headers={"Cache-Control": cache})

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/", self.picker, name="picker")
        app.router.add_get(SESSION_PREFIX, self.add_slash)
        app.router.add_get(SESSION_PREFIX + "/", self.index, name="dashboard_index")
        if self.build is None:
            return
        # Everything the build loads by itself, besides API calls: its folders (static/, speedscope-*/) and
        # top-level files (favicon.ico, ...), as this build names them.
        entries = sorted(self.build.iterdir())
        folders = "|".join(re.escape(p.name) for p in entries if p.is_dir())
        files = "|".join(re.escape(p.name) for p in entries if p.is_file() and p.name != "index.html")
        if folders:
            app.router.add_get(SESSION_PREFIX + "/{asset:(?:" + folders + ")/.+}", self.asset)
        if files:
            app.router.add_get(SESSION_PREFIX + "/{asset:(?:" + files + ")}", self.asset)


def setup_ui(
    app: web.Application, dashboard_dir: str | None, load_state: LoadStateFn, status_path: str,
) -> DashboardUI:
    """Register the picker at / and the dashboard under /s/{namespace}/{cluster}/{session}/.

    `status_path` is the session's status endpoint relative to its prefix (the loading page polls it);
    `load_state` tells whether a session is ready, so a cold one gets the loading page first.
    """
    build = find_dashboard_dir(dashboard_dir)
    if build is None:
        log.warning("ray dashboard build not found: the UI answers 503, the API works",
                    extra={"env": DASHBOARD_DIR_ENV})
    else:
        log.info("serving the ray dashboard build", extra={"dashboard_dir": str(build)})
    ui = DashboardUI(build, load_state, status_path)
    ui.add_routes(app)
    app.middlewares.append(error_pages)
    return ui
