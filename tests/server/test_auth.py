"""--auth kubernetes without Kubernetes: the pure decisions, and the middleware over a scripted reviewer.

The same behaviour against the real kube-apiserver (TokenReview, SubjectAccessReview, RBAC) is
tests/server/test_auth_k8s.py; this file covers what a real API server cannot be made to do on cue
(counting reviews, singleflight, an evaluation error).
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from rayhistory.server import auth
from rayhistory.store import Store
from tests.server.fixture_store import fixture_ref, running_server, write_fixture_session


class ScriptedReviewer:
    """tokens: token -> (user, groups); grants: user -> namespaces; down: every review is unreachable."""

    def __init__(self, tokens: dict[str, tuple[str, list[str]]], grants: dict[str, set[str]]):
        self.tokens = tokens
        self.grants = grants
        self.down = False
        self.access_down = False
        self.token_reviews = 0
        self.access_reviews = 0
        self.delay = 0.0

    async def review_token(self, token, audiences=()):
        self.token_reviews += 1
        await asyncio.sleep(self.delay)
        if self.down:
            raise auth.unavailable("TokenReview unavailable")
        if token not in self.tokens:
            return {"status": {"authenticated": False, "error": "invalid bearer token"}}
        user, groups = self.tokens[token]
        return {"status": {"authenticated": True, "user": {"username": user, "uid": "u-" + user, "groups": groups}}}

    async def review_access(self, identity, permission, namespace):
        self.access_reviews += 1
        await asyncio.sleep(self.delay)
        if self.down or self.access_down:
            raise auth.unavailable("SubjectAccessReview unavailable")
        assert (permission.verb, permission.group, permission.resource) == ("get", "ray.io", "rayclusters")
        return {"status": {"allowed": namespace in self.grants.get(identity.user, set())}}


# ---- pure ------------------------------------------------------------------------------------------

def test_bearer_token_prefers_the_header_and_rejects_malformed_ones():
    assert auth.bearer_token("Bearer abc", "cookie") == ("abc", "token")
    assert auth.bearer_token(None, "abc") == ("abc", "cookie")
    assert auth.bearer_token(None, None) is None
    for bad in ("Basic abc", "Bearer ", "Bearer a b", "Bearer " + "x" * 9000, "Bearer \u00e9"):
        with pytest.raises(auth.AuthFailure) as info:
            auth.bearer_token(bad, "good-cookie")
        assert info.value.status == 401


def test_reviews_decide_and_never_allow_on_an_error():
    identity = auth.identity_from_review(
        {"status": {"authenticated": True, "user": {"username": "alice", "groups": ["g"], "extra": {"k": ["v"]}}}})
    assert identity.user == "alice" and identity.groups == ("g",)
    body = auth.access_review_body(identity, auth.Permission(), "team-a")
    assert body["spec"]["resourceAttributes"] == {"namespace": "team-a", "verb": "get", "group": "ray.io",
                                                  "resource": "rayclusters"}
    assert body["spec"]["extra"] == {"k": ["v"]}
    with pytest.raises(auth.AuthFailure) as info:
        auth.identity_from_review({"status": {"authenticated": False, "error": "expired"}})
    assert info.value.status == 401 and "expired" in info.value.reason
    assert not auth.access_from_review({"status": {"evaluationError": "webhook down"}}).allowed
    assert not auth.access_from_review({"status": {"allowed": True, "denied": True}}).allowed
    assert auth.access_from_review({"status": {"allowed": True}}).allowed


def test_requirements_leave_nothing_open_by_omission():
    assert auth.requirement("/healthz", {}) == ("none", "")
    assert auth.requirement("/login", {}) == ("none", "")
    assert auth.requirement("/", {}) == ("identity", "")
    assert auth.requirement("/clusters", {}) == ("identity", "")
    assert auth.requirement("/nowhere", {}) == ("identity", "")
    assert auth.requirement("/s/a/b/c/api/v0/tasks", {"namespace": "a", "cluster": "b", "session": "c"}) == \
        ("namespace", "a")
    assert auth.requirement("/enter_cluster/a/b/latest", {"cluster_namespace": "a"}) == ("namespace", "a")


def test_next_after_login_stays_on_this_server():
    assert auth.safe_next("s/ns/c/session_x/") == "s/ns/c/session_x/"
    assert auth.safe_next("/clusters") == "clusters"
    for bad in ("//evil.example/", "https://evil.example/", "s/../../x", "javascript:alert(1)"):
        assert auth.safe_next(bad) == ""
    assert auth.to_root("/s/ns/c/sess/") == "../../../../"
    assert auth.to_root("/clusters") == ""


# ---- the middleware over a scripted reviewer -------------------------------------------------------

@pytest.fixture
async def two_namespaces(tmp_path):
    store = Store(f"file://{tmp_path}/store")
    a = await write_fixture_session(store, fixture_ref(namespace="team-a", cluster="ca"), with_logs=False)
    b = await write_fixture_session(store, fixture_ref(namespace="team-b", cluster="cb"), with_logs=False)
    reviewer = ScriptedReviewer({"ta": ("alice", []), "tb": ("bob", [])}, {"alice": {"team-a"}, "bob": {"team-b"}})
    return store, reviewer, a, b


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_each_user_sees_only_their_namespace_and_singleflight_bounds_reviews(two_namespaces, caplog):
    store, reviewer, a, b = two_namespaces
    reviewer.delay = 0.05
    caplog.set_level(logging.INFO, logger="rayhistory.audit")
    async with running_server(store, auth="kubernetes", kubernetes="off", reviewer=reviewer) as (client, _, state):
        async def clusters(token):
            async with client.get("/clusters", headers=bearer(token)) as resp:
                assert resp.status == 200
                return {s["namespace"] for s in (await resp.json())["sessions"]}

        seen = await asyncio.gather(*(clusters("ta") for _ in range(20)))
        assert all(s == {"team-a"} for s in seen)
        assert reviewer.token_reviews == 1 and reviewer.access_reviews == 2  # one per token, one per namespace
        assert await clusters("tb") == {"team-b"}

        async with client.get(f"/s/{a.tail}/api/v0/tasks", headers=bearer("ta")) as resp:
            assert resp.status == 200
        async with client.get(f"/s/{b.tail}/api/v0/tasks", headers=bearer("ta")) as resp:
            assert resp.status == 403
            body = await resp.json()
            assert body["missing_permission"] == "get rayclusters.ray.io in namespace team-b"
        async with client.get(f"/s/{b.tail}/", headers={**bearer("ta"), "Accept": "text/html"}) as resp:
            assert resp.status == 403
            assert "get rayclusters.ray.io in namespace team-b" in await resp.text()
        registry = state.metrics.registry
        assert registry.get_sample_value("rayhistory_auth_reviews_total", {"review": "token", "result": "ok"}) == 2
        assert registry.get_sample_value("rayhistory_auth_reviews_total", {"review": "access", "result": "denied"}) == 2
        assert registry.get_sample_value("rayhistory_auth_refusals_total", {"status": "403"}) == 2
    opened = [r for r in caplog.records if r.getMessage() == "session opened"]
    assert [(r.user, r.session) for r in opened] == [("alice", a.tail)]
    refused = [r for r in caplog.records if r.getMessage() == "access refused"]
    assert any(r.user == "alice" and r.status == 403 and "team-b" in r.reason for r in refused)


async def test_no_or_bad_token_is_401_and_unreachable_reviews_are_503(two_namespaces):
    store, reviewer, a, _ = two_namespaces
    async with running_server(store, auth="kubernetes", kubernetes="off", reviewer=reviewer) as (client, _, _s):
        async with client.get("/clusters") as resp:
            assert resp.status == 401 and resp.headers["WWW-Authenticate"].startswith("Bearer")
        async with client.get(f"/s/{a.tail}/api/v0/tasks", headers=bearer("nope")) as resp:
            assert resp.status == 401
        async with client.get(f"/s/{a.tail}/", headers={"Accept": "text/html"}, allow_redirects=False) as resp:
            assert resp.status == 303
            assert resp.headers["Location"] == f"../../../../login?next=s%2F{a.tail.replace('/', '%2F')}%2F"
        async with client.get("/healthz") as resp:
            assert resp.status == 200
        reviewer.down = True
        for path in ("/clusters", f"/s/{a.tail}/api/v0/tasks"):
            async with client.get(path, headers=bearer("ta")) as resp:
                assert resp.status == 503, path
                assert resp.headers["Retry-After"]
        reviewer.down = False  # never cached: the next request reviews again
        reviewer.access_down = True  # the token passes, the list's namespace reviews fail: still 503, never open
        async with client.get("/clusters", headers=bearer("tb")) as resp:
            assert resp.status == 503
        reviewer.access_down = False
        async with client.get(f"/s/{a.tail}/api/v0/tasks", headers=bearer("ta")) as resp:
            assert resp.status == 200


async def test_login_sets_an_http_only_cookie_that_then_authenticates(two_namespaces):
    store, reviewer, a, _ = two_namespaces
    async with running_server(store, auth="kubernetes", kubernetes="off", reviewer=reviewer) as (client, _, _s):
        async with client.get("/login?next=s/x/") as resp:
            assert resp.status == 200 and 'value="s/x/"' in await resp.text()
        async with client.post("/login", data={"token": "bad", "next": ""}) as resp:
            assert resp.status == 401 and "not accepted" in await resp.text()
        async with client.post("/login", data={"token": "ta", "next": "//evil/"}, allow_redirects=False) as resp:
            assert resp.status == 303 and resp.headers["Location"] == "./"
            cookie = resp.cookies[auth.COOKIE]
            assert cookie.value == "ta" and cookie["httponly"] and cookie["samesite"] == "Strict"
        async with client.post("/login", data={"token": "ta"}, headers={"Origin": "http://evil.example"}) as resp:
            assert resp.status == 403
        async with client.get(f"/s/{a.tail}/api/v0/tasks", headers={"Cookie": f"{auth.COOKIE}=ta"}) as resp:
            assert resp.status == 200


async def test_auth_off_is_the_default_and_warns(tmp_path, caplog):
    store = Store(f"file://{tmp_path}/store")
    ref = await write_fixture_session(store, with_logs=False)
    caplog.set_level(logging.WARNING)
    async with running_server(store, kubernetes="off") as (client, _, _s):
        async with client.get(f"/s/{ref.tail}/api/v0/tasks") as resp:
            assert resp.status == 200
    assert any("authentication is off" in r.getMessage() for r in caplog.records)


# ---- a trusted fronting proxy ------------------------------------------------------------------------

def test_proxy_headers_are_bounded_and_never_claim_system_identities():
    proxy = auth.TrustedProxy.parse(["127.0.0.1"], "user-headers")
    assert proxy.trusts("127.0.0.1") and not proxy.trusts("127.0.0.2") and not proxy.trusts(None)
    said = auth.proxy_identity(proxy, {"X-Forwarded-User": "alice", "X-Forwarded-Groups": "a, b"})
    assert (said.user, said.groups) == ("alice", ("a", "b"))
    assert auth.proxy_identity(proxy, {}) is None
    for headers in ({"X-Forwarded-User": "alice", "X-Forwarded-Groups": "system:masters"},
                    {"X-Forwarded-User": "system:admin"}, {"X-Forwarded-User": "a" * 300}):
        with pytest.raises(auth.AuthFailure):
            auth.proxy_identity(proxy, headers)
    tokens = auth.TrustedProxy.parse(["10.0.0.0/8", "::1"])
    assert tokens.trusts("10.1.2.3") and tokens.trusts("::1")
    assert auth.proxy_identity(tokens, {"X-Forwarded-Access-Token": "t"}) == ("t", "proxy")
    assert auth.proxy_identity(tokens, {"X-Forwarded-User": "alice"}) is None  # not believed in this mode


async def test_proxy_identity_counts_only_from_the_configured_addresses(two_namespaces):
    store, reviewer, a, b = two_namespaces
    as_alice = {"X-Forwarded-User": "alice"}
    for trusted, status in ((["127.0.0.0/8"], 200), (["10.0.0.0/8"], 401)):
        async with running_server(store, auth="kubernetes", kubernetes="off", reviewer=reviewer,
                                  auth_trusted_proxies=trusted, auth_proxy_identity="user-headers") as (client, _, _s):
            async with client.get(f"/s/{a.tail}/api/v0/tasks", headers=as_alice) as resp:
                assert resp.status == status, trusted
            async with client.get(f"/s/{b.tail}/api/v0/tasks", headers=as_alice) as resp:
                assert resp.status == (403 if status == 200 else 401)
    async with running_server(store, auth="kubernetes", kubernetes="off", reviewer=reviewer,
                              auth_trusted_proxies=["127.0.0.1"]) as (client, _, _s):
        async with client.get(f"/s/{b.tail}/api/v0/tasks", headers={"X-Forwarded-Access-Token": "tb"}) as resp:
            assert resp.status == 200
        async with client.get(f"/s/{b.tail}/api/v0/tasks", headers={"X-Forwarded-Access-Token": "bad"}) as resp:
            assert resp.status == 401
