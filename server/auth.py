"""Who may see what: callers authenticated and authorized by Kubernetes (`--auth kubernetes`).

Identity: a bearer token, from the `Authorization: Bearer ...` header or from the cookie that `/login` sets
(a page where a user pastes a token), verified with a TokenReview. Authorization: a SubjectAccessReview of
that identity on the session's namespace, by default "get rayclusters.ray.io" there (`--auth-verb`,
`--auth-group`, `--auth-resource`): access to a dead cluster's history follows access to the cluster.

What each public route needs (`requirement`, pure):
- `/healthz`, `/login`, `/logout`: nothing;
- every route with a session namespace in its path (`/s/{namespace}/...`: the dashboard, its API, log files,
  the timeline, `rayhistory/status`, the live proxy; `/enter_cluster/{namespace}/...`): the review on that
  namespace;
- `/clusters`: an identity; the list keeps only the namespaces the caller passes the review on (one review per
  namespace, cached);
- everything else (the picker, unknown paths): an identity. Nothing is open by omission.

Answers: no or a malformed/rejected token 401 (a browser navigating is sent to `login`), a refused review 403
naming the missing permission, TokenReview or SubjectAccessReview unreachable (or refusing the server's own
credentials) 503: never open. Decisions are cached for `--auth-cache-ttl-s` seconds, one review in flight per
key (singleflight); failures to reach the API are never cached. Audit lines (logger `rayhistory.audit`): who
opened which session (once per caller, session and TTL), who was refused and why.

The pure parts (token parsing, review bodies and their answers, requirements, redirects) are functions; the
middleware and `KubernetesReviewer` (the kubernetes client, in a thread, with the server's own in-cluster or
kubeconfig credentials: live_proxy.load_api_client) are thin.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import ipaddress
import json
import logging
import re
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from aiohttp import web

from rayhistory import layout

if TYPE_CHECKING:
    from rayhistory.index import SessionInfo

    from .main import Settings

log = logging.getLogger(__name__)
audit = logging.getLogger("rayhistory.audit")

COOKIE = "rayhistory_token"
# an ASCII bearer token of bounded size (service-account JWTs are ~1-2 KB); checked by full match, once
_TOKEN = re.compile(r"[\x21-\x7e]{1,8192}")
_BEARER = re.compile(r"Bearer +([\x21-\x7e]{1,8192}) *", re.IGNORECASE)
_SAFE_NEXT = re.compile(r"(?:s/[A-Za-z0-9._/-]*|clusters|)")
PUBLIC_PATHS = frozenset({"/healthz", "/login", "/logout"})
# request keys: an async filter of SessionInfo lists (for /clusters), and who is asking
VISIBLE_KEY: web.RequestKey[Callable[[list[SessionInfo]], Awaitable[list[SessionInfo]]]] = web.RequestKey(
    "rayhistory_auth_visible", object)
IDENTITY_KEY: web.RequestKey[Identity] = web.RequestKey("rayhistory_auth_identity", object)


# ---- pure decisions ------------------------------------------------------------------------------

class AuthFailure(Exception):
    """An answer other than the handler's: status 401, 403 or 503, with the reason shown to the caller."""

    def __init__(self, status: int, reason: str, permission: str = ""):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.permission = permission


def unauthenticated(reason: str) -> AuthFailure:
    return AuthFailure(401, reason)


def unavailable(reason: str) -> AuthFailure:
    return AuthFailure(503, reason)


@dataclass(frozen=True)
class Identity:
    user: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()
    via: str = "token"  # token | cookie

    def key(self) -> Hashable:
        return (self.user, self.uid, self.groups, self.extra)


@dataclass(frozen=True)
class Permission:
    verb: str = "get"
    group: str = "ray.io"
    resource: str = "rayclusters"

    def what(self) -> str:
        return f"{self.verb} {self.resource}.{self.group}" if self.group else f"{self.verb} {self.resource}"

    def describe(self, namespace: str) -> str:
        return f"{self.what()} in namespace {namespace}"


def bearer_token(authorization: str | None, cookie: str | None) -> tuple[str, str] | None:
    """(token, via) from the Authorization header (wins) or the login cookie; None when neither is given.
    A header that is not a well-formed bearer token is a 401, never a fall-back to the cookie."""
    if authorization:
        match = _BEARER.fullmatch(authorization)
        if match is None:
            raise unauthenticated("the Authorization header must be 'Bearer <token>' (printable ASCII, at most 8 KiB)")
        return match.group(1), "token"
    if cookie:
        if _TOKEN.fullmatch(cookie) is None:
            raise unauthenticated("the login cookie does not hold a token: log in again")
        return cookie, "cookie"
    return None


def token_review_body(token: str, audiences: Iterable[str] = ()) -> dict[str, Any]:
    spec: dict[str, Any] = {"token": token}
    if audiences:
        spec["audiences"] = list(audiences)
    return {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec}


def identity_from_review(review: dict[str, Any], via: str = "token") -> Identity:
    """The identity a TokenReview answer vouches for; a 401 when it does not."""
    status = review.get("status") or {}
    if not status.get("authenticated"):
        error = str(status.get("error") or "")[:200]
        raise unauthenticated("the token was not accepted by Kubernetes (invalid or expired)"
                              + (f": {error}" if error else ""))
    user = status.get("user") or {}
    name = user.get("username") or ""
    if not name:
        raise unauthenticated("the token review named no user")
    extra = tuple(sorted((str(k), tuple(str(x) for x in v or ())) for k, v in (user.get("extra") or {}).items()))
    return Identity(user=name, uid=str(user.get("uid") or ""), groups=tuple(str(g) for g in user.get("groups") or ()),
                    extra=extra, via=via)


def access_review_body(identity: Identity, permission: Permission, namespace: str) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "user": identity.user, "groups": list(identity.groups),
        "resourceAttributes": {"namespace": namespace, "verb": permission.verb, "group": permission.group,
                               "resource": permission.resource},
    }
    if identity.uid:
        spec["uid"] = identity.uid
    if identity.extra:
        spec["extra"] = {k: list(v) for k, v in identity.extra}
    return {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec}


@dataclass(frozen=True)
class Access:
    allowed: bool
    reason: str = ""


def access_from_review(review: dict[str, Any]) -> Access:
    """allowed only when the review says so; an evaluation error alone never allows."""
    status = review.get("status") or {}
    reason = str(status.get("reason") or status.get("evaluationError") or "")[:300]
    return Access(allowed=bool(status.get("allowed")) and not status.get("denied"), reason=reason)


_HEADER_NAME = re.compile(r"[\x21-\x7e]{1,256}")


@dataclass(frozen=True)
class TrustedProxy:
    """A fronting proxy (oauth2-proxy style) whose identity headers are believed, from its addresses only.
    mode access-token: its X-Forwarded-Access-Token is verified with a TokenReview like any bearer token;
    mode user-headers: its X-Forwarded-User / X-Forwarded-Groups are the identity as they are (the proxy
    authenticated the user; it must drop those headers from what clients send)."""

    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    mode: Literal["access-token", "user-headers"] = "access-token"

    @classmethod
    def parse(cls, addresses: Iterable[str], mode: str = "access-token") -> TrustedProxy | None:
        networks = tuple(ipaddress.ip_network(a.strip(), strict=False) for a in addresses if a.strip())
        return cls(networks, mode) if networks else None  # type: ignore[arg-type]

    def trusts(self, remote: str | None) -> bool:
        try:
            address = ipaddress.ip_address((remote or "").strip("[]"))
        except ValueError:
            return False
        return any(address in net for net in self.networks)


def proxy_identity(proxy: TrustedProxy, headers) -> Identity | tuple[str, str] | None:
    """What a trusted proxy's headers say (pure): an Identity (user-headers), (token, "proxy") to review
    (access-token), or None when it sent neither (the request's own bearer token, if any, applies)."""
    if proxy.mode == "access-token":
        token = headers.get("X-Forwarded-Access-Token")
        if token is None:
            return None
        if _TOKEN.fullmatch(token) is None:
            raise unauthenticated("X-Forwarded-Access-Token is not a token (printable ASCII, at most 8 KiB)")
        return token, "proxy"
    user = headers.get("X-Forwarded-User")
    if user is None:
        return None
    if _HEADER_NAME.fullmatch(user) is None:
        raise unauthenticated("X-Forwarded-User must be 1-256 printable ASCII characters")
    groups = tuple(g.strip() for g in headers.get("X-Forwarded-Groups", "").split(",") if g.strip())
    if len(groups) > 256 or any(_HEADER_NAME.fullmatch(g) is None for g in groups):
        raise unauthenticated("X-Forwarded-Groups must be at most 256 comma-separated printable ASCII names")
    if user.startswith("system:") or any(g.startswith("system:") for g in groups):
        # a proxy's users are people: never let its headers claim Kubernetes' own identities (system:masters)
        raise unauthenticated("a fronting proxy may not assert system: users or groups")
    return Identity(user=user, groups=groups, via="proxy-headers")


Requirement = tuple[Literal["none", "identity", "namespace"], str]


def requirement(path: str, match_info: dict[str, str]) -> Requirement:
    """What a public request needs before its handler runs (pure; see the module doc)."""
    if path in PUBLIC_PATHS:
        return ("none", "")
    namespace = match_info.get("namespace", match_info.get("cluster_namespace"))
    if namespace is not None:
        return ("namespace", namespace)
    return ("identity", "")


def safe_next(value: str | None) -> str:
    """Where /login sends the browser afterwards: a relative path of this server only (no open redirect)."""
    value = (value or "").lstrip("/")
    if len(value) > 1000 or _SAFE_NEXT.fullmatch(value) is None or ".." in value.split("/"):
        return ""
    return value


def to_root(path: str) -> str:
    """The relative path from a request path to the server's root ("" or "../../"): links stay right behind an
    Ingress that strips a path prefix."""
    return "../" * max(0, path.count("/") - 1)


def wants_html(request: web.Request) -> bool:
    return request.method in ("GET", "HEAD") and "text/html" in request.headers.get("Accept", "")


# ---- caches --------------------------------------------------------------------------------------

class TTLSingleflight:
    """Values cached for `ttl` seconds, at most one computation in flight per key. A computation runs in a task
    of its own (a caller that disconnects does not cancel it for the others); exceptions are not cached,
    except AuthFailure(401) (a rejected token stays rejected for the TTL, and costs no review per request)."""

    def __init__(self, ttl: float, max_entries: int = 10_000):
        self.ttl = ttl
        self.max_entries = max_entries
        self._values: dict[Hashable, tuple[float, Any]] = {}
        self._inflight: dict[Hashable, asyncio.Task] = {}
        self.computed = 0  # how many computations ran (tests and metrics)

    async def get(self, key: Hashable, compute: Callable[[], Awaitable[Any]]) -> Any:
        now = time.monotonic()
        hit = self._values.get(key)
        if hit is not None and now - hit[0] < self.ttl:
            value = hit[1]
            if isinstance(value, AuthFailure):
                raise value
            return value
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._run(key, compute))
            self._inflight[key] = task
        return await asyncio.shield(task)

    async def _run(self, key: Hashable, compute: Callable[[], Awaitable[Any]]) -> Any:
        self.computed += 1
        try:
            value = await compute()
        except AuthFailure as exc:
            if exc.status == 401:
                self._store(key, exc)
            raise
        else:
            self._store(key, value)
            return value
        finally:
            self._inflight.pop(key, None)

    def _store(self, key: Hashable, value: Any) -> None:
        self._values.pop(key, None)
        self._values[key] = (time.monotonic(), value)
        while len(self._values) > self.max_entries:
            self._values.pop(next(iter(self._values)))


# ---- Kubernetes --------------------------------------------------------------------------------------

class KubernetesReviewer:
    """TokenReview and SubjectAccessReview with the kubernetes client (blocking: run in a thread)."""

    def __init__(self, api_client: Any, timeout_s: float = 5.0):
        from kubernetes import client

        self._authn = client.AuthenticationV1Api(api_client)
        self._authz = client.AuthorizationV1Api(api_client)
        self.timeout_s = timeout_s

    def _call(self, what: str, fn: Callable, body: dict) -> dict:
        from kubernetes.client.exceptions import ApiException

        try:
            response = fn(body, _preload_content=False, _request_timeout=self.timeout_s)
            return json.loads(response.data)
        except ApiException as exc:
            # the API refused the server's own credentials (or its RBAC lacks the review): never open
            log.error("kubernetes refused the server's review", extra={"review": what, "status": exc.status,
                                                                        "error": str(exc.reason)})
            raise unavailable(f"{what} failed: the API server answered {exc.status} {exc.reason} to the history "
                              "server's own credentials (its RBAC needs create on tokenreviews and "
                              "subjectaccessreviews)") from None
        except Exception as exc:  # noqa: BLE001 - unreachable, timed out, garbled: never open
            log.warning("kubernetes review unreachable", extra={"review": what, "error": f"{type(exc).__name__}: "
                                                                                          f"{str(exc)[:300]}"})
            raise unavailable(f"{what} unavailable: the Kubernetes API server could not be reached") from None

    async def review_token(self, token: str, audiences: Iterable[str] = ()) -> dict:
        return await asyncio.to_thread(self._call, "TokenReview", self._authn.create_token_review,
                                       token_review_body(token, audiences))

    async def review_access(self, identity: Identity, permission: Permission, namespace: str) -> dict:
        return await asyncio.to_thread(self._call, "SubjectAccessReview",
                                       self._authz.create_subject_access_review,
                                       access_review_body(identity, permission, namespace))


# ---- the authorizer and its middleware -----------------------------------------------------------

@dataclass
class Authorizer:
    reviewer: Any  # KubernetesReviewer, or anything with the same two coroutines
    permission: Permission = field(default_factory=Permission)
    ttl: float = 30.0
    audiences: tuple[str, ...] = ()
    proxy: TrustedProxy | None = None
    metrics: Any = None  # ServerMetrics: auth_reviews, auth_refusals

    def _count(self, review: str, result: str) -> None:
        if self.metrics is not None:
            self.metrics.auth_reviews.labels(review, result).inc()

    def _refused(self, status: int) -> None:
        if self.metrics is not None:
            self.metrics.auth_refusals.labels(str(status)).inc()

    def __post_init__(self) -> None:
        self.identities = TTLSingleflight(self.ttl)
        self.access = TTLSingleflight(self.ttl)
        self._audited: TTLSingleflight = TTLSingleflight(self.ttl)

    async def identify(self, token: str, via: str) -> Identity:
        key = hashlib.sha256(token.encode()).digest()

        async def review() -> Identity:
            try:
                identity = identity_from_review(await self.reviewer.review_token(token, self.audiences), via)
            except AuthFailure as exc:
                self._count("token", "rejected" if exc.status == 401 else "unavailable")
                raise
            self._count("token", "ok")
            return identity

        identity = await self.identities.get(key, review)
        return identity if identity.via == via else Identity(identity.user, identity.uid, identity.groups,
                                                             identity.extra, via)

    async def may(self, identity: Identity, namespace: str) -> Access:
        async def review() -> Access:
            try:
                access = access_from_review(await self.reviewer.review_access(identity, self.permission, namespace))
            except AuthFailure:
                self._count("access", "unavailable")
                raise
            self._count("access", "allowed" if access.allowed else "denied")
            return access

        return await self.access.get((identity.key(), namespace), review)

    async def check(self, identity: Identity, namespace: str) -> None:
        access = await self.may(identity, namespace)
        if not access.allowed:
            needed = self.permission.describe(namespace)
            raise AuthFailure(403, f"user {identity.user!r} may not {needed}"
                              + (f" ({access.reason})" if access.reason else ""), permission=needed)

    async def visible(self, identity: Identity, sessions: list[SessionInfo]) -> list[SessionInfo]:
        """The sessions whose namespace the caller may see (one review per namespace, concurrently, cached).
        A review that cannot be made fails the whole list (503), never shows a namespace open."""
        namespaces = sorted({s.namespace for s in sessions})
        answers = await asyncio.gather(*(self.may(identity, ns) for ns in namespaces))
        allowed = {ns for ns, a in zip(namespaces, answers) if a.allowed}
        return [s for s in sessions if s.namespace in allowed]

    async def audit_open(self, identity: Identity, request: web.Request, namespace: str) -> None:
        info = request.match_info
        session = "/".join(x for x in (namespace, info.get("cluster") or info.get("cluster_name"),
                                       info.get("session") or info.get("session_name")) if x)

        async def once() -> bool:
            audit.info("session opened", extra={"user": identity.user, "groups": list(identity.groups),
                                                "session": session, "path": request.path, "via": identity.via,
                                                "remote": request.remote})
            return True

        await self._audited.get((identity.key(), session), once)

    async def authenticate(self, request: web.Request) -> Identity:
        if self.proxy is not None and self.proxy.trusts(request.remote):
            said = proxy_identity(self.proxy, request.headers)
            if isinstance(said, Identity):
                return said
            if said is not None:
                return await self.identify(*said)
        given = bearer_token(request.headers.get("Authorization"), request.cookies.get(COOKIE))
        if given is None:
            raise unauthenticated("no credentials: send 'Authorization: Bearer <token>' or log in")
        return await self.identify(*given)

    def middleware(self):
        @web.middleware
        async def middleware(request: web.Request, handler):
            need, namespace = requirement(request.path, dict(request.match_info))
            if need == "none":
                return await handler(request)
            identity: Identity | None = None
            try:
                identity = await self.authenticate(request)
                if need == "namespace":
                    try:
                        layout.check_name(namespace, "namespace")
                    except layout.LayoutError as exc:
                        raise web.HTTPNotFound(text=str(exc)) from None
                    await self.check(identity, namespace)
                    await self.audit_open(identity, request, namespace)
            except AuthFailure as exc:
                audit.warning("access refused", extra={
                    "user": identity.user if identity else "", "status": exc.status, "reason": exc.reason,
                    "path": request.path, "remote": request.remote})
                self._refused(exc.status)
                return failure_response(request, exc)
            request[IDENTITY_KEY] = identity
            request[VISIBLE_KEY] = lambda sessions: self.visible(identity, sessions)
            try:
                return await handler(request)
            except AuthFailure as exc:  # a review the handler needed (/clusters' namespaces) failed
                audit.warning("access refused", extra={
                    "user": identity.user, "status": exc.status, "reason": exc.reason, "path": request.path,
                    "remote": request.remote})
                self._refused(exc.status)
                return failure_response(request, exc)

        return middleware


def failure_response(request: web.Request, exc: AuthFailure) -> web.StreamResponse:
    headers: dict[str, str] = {}
    if exc.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="rayhistory"'
        if wants_html(request) and COOKIE not in request.cookies and "Authorization" not in request.headers:
            # a browser without credentials: the login page, and back here afterwards
            target = to_root(request.path) + "login?" + urllib.parse.urlencode({"next": request.path_qs.lstrip("/")})
            return web.Response(status=303, headers={"Location": target, **headers})
    elif exc.status == 503:
        headers["Retry-After"] = "5"
    if wants_html(request):
        return web.Response(text=_page(exc, to_root(request.path)), status=exc.status, content_type="text/html",
                            headers=headers)
    body = {"result": False, "msg": exc.reason}
    if exc.permission:
        body["missing_permission"] = exc.permission
    return web.json_response(body, status=exc.status, headers=headers)


_TITLES = {401: "Log in to the Ray history server", 403: "Permission needed", 503: "Access checks unavailable"}


def _page(exc: AuthFailure, root: str) -> str:
    detail = html.escape(exc.reason)
    extra = ""
    if exc.permission:
        extra = (f"<p>Missing permission: <code>{html.escape(exc.permission)}</code>. Ask for a RoleBinding that "
                 "grants it; access to a cluster's history follows access to the RayCluster.</p>")
    action = f'<p><a href="{root}login">Log in with another token</a></p>' if exc.status in (401, 403) else \
        "<p>Try again in a few seconds.</p>"
    return (f"<!doctype html><meta charset=utf-8><title>{_TITLES[exc.status]}</title>"
            f"<h1>{_TITLES[exc.status]}</h1><p>{detail}</p>{extra}{action}")


# ---- /login and /logout --------------------------------------------------------------------------

LOGIN_PAGE = """<!doctype html><meta charset=utf-8><title>Log in: Ray history server</title>
<h1>Ray history server</h1>
<p>Paste a Kubernetes bearer token (for example the output of <code>kubectl create token NAME</code>, or your
OIDC ID token). You will see the sessions of the namespaces where you may <code>{permission}</code>.</p>
{error}
<form method=post action="login"><input type=hidden name=next value="{next}">
<label for=token>Token</label><br>
<textarea id=token name=token rows=6 cols=80 autocomplete=off spellcheck=false required></textarea><br>
<button type=submit>Log in</button></form>
"""


def _cookie_secure(request: web.Request) -> bool:
    return request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"


def _same_origin(request: web.Request) -> bool:
    """A form post from another site (login CSRF) is refused; no Origin header (curl, old browsers) is fine."""
    origin = request.headers.get("Origin")
    if not origin or origin == "null":
        return origin is None
    host = urllib.parse.urlsplit(origin).netloc.lower()
    return host in {request.host.lower(), request.headers.get("X-Forwarded-Host", "").split(",")[0].strip().lower()}


def add_login_routes(app: web.Application, authorizer: Authorizer) -> None:
    def login_page(next_: str, error: str = "", status: int = 200) -> web.Response:
        return web.Response(
            text=LOGIN_PAGE.format(permission=html.escape(authorizer.permission.what()),
                                   next=html.escape(next_), error=f"<p><b>{html.escape(error)}</b></p>" if error else ""),
            status=status, content_type="text/html")

    async def get_login(request: web.Request) -> web.Response:
        return login_page(safe_next(request.query.get("next")))

    async def post_login(request: web.Request) -> web.StreamResponse:
        if not _same_origin(request):
            raise web.HTTPForbidden(text="a login from another origin is refused")
        form = await request.post()
        next_ = safe_next(str(form.get("next") or ""))
        token = str(form.get("token") or "").strip()
        try:
            if _TOKEN.fullmatch(token) is None:
                raise unauthenticated("that is not a token (printable ASCII, at most 8 KiB)")
            identity = await authorizer.identify(token, "cookie")
        except AuthFailure as exc:
            audit.warning("login refused", extra={"status": exc.status, "reason": exc.reason, "remote": request.remote})
            return login_page(next_, exc.reason, status=exc.status)
        audit.info("login", extra={"user": identity.user, "groups": list(identity.groups), "remote": request.remote})
        response = web.HTTPSeeOther(next_ or "./")
        response.set_cookie(COOKIE, token, httponly=True, samesite="Strict", secure=_cookie_secure(request))
        raise response

    async def logout(request: web.Request) -> web.StreamResponse:
        response = web.HTTPSeeOther("login")
        response.del_cookie(COOKIE)
        raise response

    app.router.add_get("/login", get_login)
    app.router.add_post("/login", post_login)
    app.router.add_get("/logout", logout)
    app.router.add_post("/logout", logout)


def setup_auth(app: web.Application, settings: Settings, reviewer: Any | None = None,
               metrics: Any = None) -> Authorizer | None:
    """Put `settings.auth` in force on the public app: returns the Authorizer (None for `--auth off`). The middleware
    must run before the live proxy's: call this before setup_live_proxy."""
    if settings.auth == "off":
        log.warning("authentication is off (--auth off): anyone who reaches the public port reads every namespace's "
                    "sessions and logs; use --auth kubernetes anywhere but a local run")
        return None
    if reviewer is None:
        from .live_proxy import load_api_client

        api_client = load_api_client()
        if api_client is None:
            raise RuntimeError("--auth kubernetes needs Kubernetes credentials (in-cluster or a kubeconfig); "
                               "there are none")
        reviewer = KubernetesReviewer(api_client, settings.auth_review_timeout_s)
    authorizer = Authorizer(reviewer, Permission(settings.auth_verb, settings.auth_group, settings.auth_resource),
                            ttl=settings.auth_cache_ttl_s, audiences=tuple(settings.auth_token_audiences),
                            proxy=TrustedProxy.parse(settings.auth_trusted_proxies, settings.auth_proxy_identity),
                            metrics=metrics)
    app.middlewares.append(authorizer.middleware())
    add_login_routes(app, authorizer)
    log.info("authentication by Kubernetes", extra={
        "permission": authorizer.permission.what() + " in the session's namespace", "cache_ttl_s": authorizer.ttl,
        "trusted_proxies": [str(n) for n in authorizer.proxy.networks] if authorizer.proxy else [],
        "proxy_identity": authorizer.proxy.mode if authorizer.proxy else ""})
    return authorizer
