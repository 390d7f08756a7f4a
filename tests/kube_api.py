"""A Kubernetes API over real HTTP for the operator tests: kmock 0.8's emulator plus what it lacks.

No real API server can be installed here (DESIGN.md), so this emulates one. kmock serves discovery and
records every request; this subclass keeps the object state itself to add what Kopf, kubectl and the
kubernetes client rely on: resourceVersion and uid, namespace filling, merge and JSON patches (422 when
a JSON-patch `test` fails, which Kopf uses for optimistic concurrency), the status subresource,
finalizers and deletionTimestamp, label selectors on list/deletecollection, watch from a
resourceVersion, CRDs that register their resources, and the mutating admission chain: it calls the
webhooks of stored MutatingWebhookConfigurations over HTTPS (their caBundle), applies their JSON
patches, and honours failurePolicy. Not emulated: validation, defaulting, garbage collection of owned
objects, namespaceSelector on webhooks, server-side apply.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime
import json
import ssl
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
import aiohttp.web
import attrs
import jsonpatch
import kmock
from kmock._internal import apps, rendering

Obj = dict[str, Any]
Key = tuple[str, str, str, str | None, str]  # group, version, plural, namespace, name

CORE_RESOURCES = {
    # "group/version/plural": (kind, namespaced, subresources)
    "v1/namespaces": ("Namespace", False, ()),
    "v1/events": ("Event", True, ()),
    "v1/pods": ("Pod", True, ()),
    "v1/services": ("Service", True, ()),
    "v1/serviceaccounts": ("ServiceAccount", True, ()),
    "v1/secrets": ("Secret", True, ()),
    "v1/configmaps": ("ConfigMap", True, ()),
    "apps/v1/deployments": ("Deployment", True, ("status",)),
    "networking.k8s.io/v1/ingresses": ("Ingress", True, ("status",)),
    "rbac.authorization.k8s.io/v1/clusterroles": ("ClusterRole", False, ()),
    "rbac.authorization.k8s.io/v1/clusterrolebindings": ("ClusterRoleBinding", False, ()),
    "rbac.authorization.k8s.io/v1/roles": ("Role", True, ()),
    "rbac.authorization.k8s.io/v1/rolebindings": ("RoleBinding", True, ()),
    "apiextensions.k8s.io/v1/customresourcedefinitions": ("CustomResourceDefinition", False, ("status",)),
    "admissionregistration.k8s.io/v1/mutatingwebhookconfigurations": ("MutatingWebhookConfiguration", False, ()),
    "admissionregistration.k8s.io/v1/validatingwebhookconfigurations": ("ValidatingWebhookConfiguration", False, ()),
}
VERBS = {"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"}


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str):
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def response(self) -> aiohttp.web.Response:
        return aiohttp.web.json_response({
            "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
            "code": self.code, "reason": self.reason, "message": self.message,
        }, status=self.code)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def selector_matches(selector: str, labels: dict[str, str]) -> bool:
    """Equality-based label selectors: 'a=b,c!=d,e'."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k.strip()) == v.strip():
                return False
        elif "=" in term:
            k, v = term.replace("==", "=").split("=", 1)
            if labels.get(k.strip()) != v.strip():
                return False
        elif labels.get(term) is None:
            return False
    return True


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@attrs.define(kw_only=True)
class KubeAPI(kmock.KubernetesEmulator):
    store: dict[Key, Obj] = attrs.field(factory=dict, init=False)
    events: list[tuple[int, Key, Obj]] = attrs.field(factory=list, init=False)  # (rv, key, watch event)
    admission_log: list[Obj] = attrs.field(factory=list, init=False)
    _rv: int = attrs.field(default=1, init=False)
    # Set and replaced on every change: a watcher waits on the one it saw.
    _tick: asyncio.Event = attrs.field(factory=asyncio.Event, init=False)
    _closing: bool = attrs.field(default=False, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for path, (kind, namespaced, subresources) in CORE_RESOURCES.items():
            self.declare(path, kind, namespaced, subresources)

    def declare(self, path: str, kind: str, namespaced: bool, subresources: tuple[str, ...] = ()) -> None:
        self.resources[path] = kmock.ResourceInfo(
            kind=kind, namespaced=namespaced, singular=kind.lower(), verbs=VERBS, subresources=set(subresources),
        )

    @property
    def requests(self) -> list[rendering.Request]:
        """Every request served so far, in arrival order (kmock records them before handling)."""
        return list(self._requests)

    # ---- state ---------------------------------------------------------------------------------

    def _info(self, group: str, version: str, plural: str) -> kmock.ResourceInfo | None:
        for res in self.resources:
            if (res.group, res.version, res.plural) == (group, version, plural):
                return self.resources[res]
        return None

    def _emit(self, key: Key, kind: str, obj: Obj) -> None:
        self.events.append((self._rv, key, {"type": kind, "object": copy.deepcopy(obj)}))
        self._tick.set()
        self._tick = asyncio.Event()

    def end_watches(self) -> None:
        """Let open watch streams end (else the server waits for them at shutdown)."""
        self._closing = True
        self._tick.set()

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def get_object(self, group: str, version: str, plural: str, namespace: str | None, name: str) -> Obj | None:
        obj = self.store.get((group, version, plural, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def list_objects(self, group: str, version: str, plural: str, namespace: str | None = None) -> list[Obj]:
        return [copy.deepcopy(o) for (g, v, p, ns, _), o in sorted(self.store.items(), key=lambda kv: str(kv[0]))
                if (g, v, p) == (group, version, plural) and (namespace is None or ns == namespace)]

    # ---- request handling ----------------------------------------------------------------------

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        res = request.resource
        if res is None or res.plural is None:
            return await super()._handle(request)  # discovery and non-resource paths: kmock's
        info = self._info(res.group, res.version, res.plural)
        if info is None:
            return ApiError(404, "NotFound", f"the server could not find the requested resource {res}").response()
        try:
            method = request.method.value if hasattr(request.method, "value") else str(request.method)
            params = dict(request.params)
            if method == "GET" and params.get("watch") in ("true", "1"):
                return await self._watch(request, info)
            async with self._lock:
                ns = request.namespace if info.namespaced else None
                if method == "GET" and request.name is None:
                    return aiohttp.web.json_response(self._list(res, info, ns, params))
                if method == "GET":
                    return aiohttp.web.json_response(self._fetch(res, ns, request.name))
                if method == "DELETE" and request.name is None:
                    return aiohttp.web.json_response(self._delete_collection(res, info, ns, params))
                if method == "DELETE":
                    return aiohttp.web.json_response(self._delete(res, ns, request.name))
                if method == "PATCH":
                    ctype = request.headers.get("Content-Type", "").split(";")[0]
                    return aiohttp.web.json_response(
                        self._patch(res, info, ns, request.name, request.subresource, ctype, request.data))
                if method == "PUT":
                    return aiohttp.web.json_response(
                        self._replace(res, info, ns, request.name, request.subresource, request.data))
            if method == "POST":
                obj = dict(request.data or {})
                obj.setdefault("metadata", {})
                if info.namespaced:
                    obj["metadata"]["namespace"] = obj["metadata"].get("namespace") or request.namespace or "default"
                obj = await self._admit(res, info, obj)
                async with self._lock:
                    return aiohttp.web.json_response(self._create(res, info, obj), status=201)
            return ApiError(405, "MethodNotAllowed", f"{method} is not supported here").response()
        except ApiError as exc:
            return exc.response()

    def _key(self, res: Any, ns: str | None, name: str) -> Key:
        return (res.group, res.version, res.plural, ns, name)

    def _fetch(self, res: Any, ns: str | None, name: str) -> Obj:
        obj = self.store.get(self._key(res, ns, name))
        if obj is None:
            raise ApiError(404, "NotFound", f'{res.plural} "{name}" not found')
        return obj

    def _list(self, res: Any, info: kmock.ResourceInfo, ns: str | None, params: dict[str, str]) -> Obj:
        items = [o for o in self.list_objects(res.group, res.version, res.plural, ns)
                 if selector_matches(params.get("labelSelector", ""), o["metadata"].get("labels") or {})]
        return {"apiVersion": f"{res.group}/{res.version}".lstrip("/"), "kind": f"{info.kind}List",
                "metadata": {"resourceVersion": str(self._rv)}, "items": items}

    def _create(self, res: Any, info: kmock.ResourceInfo, obj: Obj) -> Obj:
        meta = obj["metadata"]
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        if not meta.get("name"):
            raise ApiError(422, "Invalid", "metadata.name: Required value")
        key = self._key(res, meta.get("namespace"), meta["name"])
        if key in self.store:
            raise ApiError(409, "AlreadyExists", f'{res.plural} "{meta["name"]}" already exists')
        meta.update(uid=str(uuid.uuid4()), resourceVersion=self._next_rv(), creationTimestamp=now_rfc3339(),
                    generation=1)
        obj.setdefault("apiVersion", f"{res.group}/{res.version}".lstrip("/"))
        obj.setdefault("kind", info.kind)
        self.store[key] = obj
        self._emit(key, "ADDED", obj)
        if (res.group, res.plural) == ("apiextensions.k8s.io", "customresourcedefinitions"):
            self._register_crd(obj)
        return obj

    def _register_crd(self, crd: Obj) -> None:
        spec = crd["spec"]
        for version in spec.get("versions", []):
            if version.get("served", True):
                self.declare(f"{spec['group']}/{version['name']}/{spec['names']['plural']}", spec["names"]["kind"],
                             spec.get("scope", "Namespaced") == "Namespaced", tuple(version.get("subresources") or {}))

    def _store_update(self, key: Key, old: Obj, new: Obj) -> Obj:
        meta = new.setdefault("metadata", {})
        for field in ("name", "namespace", "uid", "creationTimestamp", "deletionTimestamp"):
            if field in old["metadata"]:
                meta[field] = old["metadata"][field]
            else:
                meta.pop(field, None)
        if new.get("spec") != old.get("spec"):
            meta["generation"] = int(old["metadata"].get("generation", 1)) + 1
        if new == old:
            return new  # no change, no new resourceVersion (as Kubernetes does)
        meta["resourceVersion"] = self._next_rv()
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            del self.store[key]
            self._emit(key, "DELETED", new)
        else:
            self.store[key] = new
            self._emit(key, "MODIFIED", new)
        return new

    def _patch(self, res: Any, info: kmock.ResourceInfo, ns: str | None, name: str, subresource: str | None,
               ctype: str, patch: Any) -> Obj:
        key = self._key(res, ns, name)
        old = self._fetch(res, ns, name)
        if ctype == "application/json-patch+json":
            try:
                new = jsonpatch.apply_patch(old, patch)
            except jsonpatch.JsonPatchTestFailed as exc:
                raise ApiError(422, "Invalid", f"the JSON patch test failed: {exc}") from exc
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
                raise ApiError(422, "Invalid", f"the JSON patch cannot be applied: {exc}") from exc
        elif ctype in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            # Strategic merge is taken as a JSON merge (lists replaced), which is what our callers need.
            new = merge_patch(old, patch)
        else:
            raise ApiError(415, "UnsupportedMediaType", f"unsupported patch type {ctype!r}")
        return self._store_update(key, old, self._split_status(info, old, new, subresource))

    def _replace(self, res: Any, info: kmock.ResourceInfo, ns: str | None, name: str, subresource: str | None,
                 obj: Obj) -> Obj:
        old = self._fetch(res, ns, name)
        return self._store_update(self._key(res, ns, name), old, self._split_status(info, old, dict(obj), subresource))

    @staticmethod
    def _split_status(info: kmock.ResourceInfo, old: Obj, new: Obj, subresource: str | None) -> Obj:
        """With a status subresource, /status changes only the status and the object everything else."""
        if "status" not in info.subresources:
            return new
        if subresource == "status":
            out = copy.deepcopy(old)
            if "status" in new:
                out["status"] = new["status"]
            else:
                out.pop("status", None)
            return out
        out = dict(new)
        if "status" in old:
            out["status"] = old["status"]
        else:
            out.pop("status", None)
        return out

    def _delete(self, res: Any, ns: str | None, name: str) -> Obj:
        key = self._key(res, ns, name)
        obj = self._fetch(res, ns, name)
        if obj["metadata"].get("finalizers"):
            if not obj["metadata"].get("deletionTimestamp"):
                new = copy.deepcopy(obj)
                new["metadata"]["deletionTimestamp"] = now_rfc3339()
                new["metadata"]["resourceVersion"] = self._next_rv()
                self.store[key] = new
                self._emit(key, "MODIFIED", new)
                return new
            return obj
        del self.store[key]
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = self._next_rv()
        self._emit(key, "DELETED", obj)
        return obj

    def _delete_collection(self, res: Any, info: kmock.ResourceInfo, ns: str | None, params: dict[str, str]) -> Obj:
        listing = self._list(res, info, ns, params)
        for item in listing["items"]:
            self._delete(res, item["metadata"].get("namespace"), item["metadata"]["name"])
        return listing

    async def _watch(self, request: rendering.Request, info: kmock.ResourceInfo) -> aiohttp.web.StreamResponse:
        res = request.resource
        ns = request.namespace if info.namespaced else None
        params = dict(request.params)
        selector = params.get("labelSelector", "")
        since = params.get("resourceVersion", "")
        timeout = float(params["timeoutSeconds"]) if params.get("timeoutSeconds") else None
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request._raw_request)

        def wanted(key: Key, event: Obj) -> bool:
            return (key[:3] == (res.group, res.version, res.plural) and (ns is None or key[3] == ns)
                    and selector_matches(selector, event["object"]["metadata"].get("labels") or {}))

        async with self._lock:
            if since and since != "0":
                position = next((i for i, (rv, _, _) in enumerate(self.events) if rv > int(since)), len(self.events))
                pending = [e for _, k, e in self.events[position:] if wanted(k, e)]
            else:  # no resourceVersion: the current state first, as ADDED events
                pending = [{"type": "ADDED", "object": o} for o in self.list_objects(res.group, res.version, res.plural, ns)
                           if selector_matches(selector, o["metadata"].get("labels") or {})]
            position = len(self.events)
        loop = asyncio.get_running_loop()
        ends_at = loop.time() + timeout if timeout else None
        try:
            while not self._closing:
                for event in pending:
                    await response.write(json.dumps(event).encode() + b"\n")
                if position == len(self.events):
                    tick = self._tick
                    wait = None if ends_at is None else max(0.0, ends_at - loop.time())
                    try:
                        await asyncio.wait_for(tick.wait(), wait)
                    except TimeoutError:
                        break
                new, position = self.events[position:], len(self.events)
                pending = [e for _, k, e in new if wanted(k, e)]
        except ConnectionResetError:
            pass
        return response

    # ---- admission -----------------------------------------------------------------------------

    async def _admit(self, res: Any, info: kmock.ResourceInfo, obj: Obj) -> Obj:
        configs = self.list_objects("admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations")
        for config in configs:
            for webhook in config.get("webhooks") or []:
                if self._webhook_applies(webhook, res, obj):
                    obj = await self._call_webhook(webhook, res, obj)
        return obj

    @staticmethod
    def _webhook_applies(webhook: Obj, res: Any, obj: Obj) -> bool:
        def one(values: list[str], value: str) -> bool:
            return "*" in values or value in values

        ok = any(
            one(rule.get("apiGroups", []), res.group) and one(rule.get("apiVersions", []), res.version)
            and one(rule.get("resources", []), res.plural) and one(rule.get("operations", []), "CREATE")
            for rule in webhook.get("rules") or []
        )
        selector = webhook.get("objectSelector") or {}
        labels = obj["metadata"].get("labels") or {}
        if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
            return False
        for expr in selector.get("matchExpressions") or []:
            present = expr["key"] in labels
            if (expr["operator"] == "Exists" and not present) or (expr["operator"] == "DoesNotExist" and present):
                return False
            if expr["operator"] == "In" and labels.get(expr["key"]) not in expr.get("values", []):
                return False
            if expr["operator"] == "NotIn" and present and labels[expr["key"]] in expr.get("values", []):
                return False
        return ok

    async def _call_webhook(self, webhook: Obj, res: Any, obj: Obj) -> Obj:
        client = webhook.get("clientConfig") or {}
        review = {
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": str(uuid.uuid4()),
                "kind": {"group": res.group, "version": res.version, "kind": obj.get("kind", "")},
                "resource": {"group": res.group, "version": res.version, "resource": res.plural},
                "requestKind": {"group": res.group, "version": res.version, "kind": obj.get("kind", "")},
                "requestResource": {"group": res.group, "version": res.version, "resource": res.plural},
                "name": obj["metadata"].get("name", ""), "namespace": obj["metadata"].get("namespace", ""),
                "operation": "CREATE", "userInfo": {"username": "kube-api-emulator", "groups": ["system:masters"]},
                "object": obj, "oldObject": None, "dryRun": False, "options": {},
            },
        }
        entry: Obj = {"webhook": webhook.get("name"), "name": obj["metadata"].get("name")}
        self.admission_log.append(entry)
        try:
            context = ssl.create_default_context(cadata=base64.b64decode(client["caBundle"]).decode()) \
                if client.get("caBundle") else ssl.create_default_context()
            timeout = aiohttp.ClientTimeout(total=float(webhook.get("timeoutSeconds", 10)))
            async with aiohttp.ClientSession(timeout=timeout) as http:
                async with http.post(client["url"], json=review, ssl=context) as resp:
                    resp.raise_for_status()
                    answer = (await resp.json())["response"]
        except Exception as exc:  # noqa: BLE001 - the failure policy decides
            entry["error"] = f"{type(exc).__name__}: {exc}"
            if webhook.get("failurePolicy", "Fail") == "Ignore":
                return obj
            raise ApiError(500, "InternalError", f"failed calling webhook {webhook.get('name')}: {exc}") from exc
        entry.update(allowed=answer.get("allowed"), warnings=answer.get("warnings", []))
        if not answer.get("allowed"):
            status = answer.get("status") or {}
            raise ApiError(int(status.get("code") or 400), "Forbidden",
                           f"admission webhook {webhook.get('name')} denied the request: {status.get('message', '')}")
        if answer.get("patch"):
            entry["patched"] = True
            obj = jsonpatch.apply_patch(obj, json.loads(base64.b64decode(answer["patch"])))
        return obj


@contextmanager
def running_kube_api(**kwargs: Any) -> Iterator[tuple[KubeAPI, str]]:
    """Serve a KubeAPI on a free 127.0.0.1 port from its own thread; yields (api, base URL)."""
    loop = asyncio.new_event_loop()
    ready: dict[str, Any] = {}
    started = threading.Event()
    stop: asyncio.Event | None = None

    async def serve() -> None:
        nonlocal stop
        stop = asyncio.Event()
        try:
            async with KubeAPI(**kwargs) as api, apps.Server(api) as server:
                ready.update(api=api, url=str(server.url).rstrip("/"))
                started.set()
                await stop.wait()
                api.end_watches()
        except BaseException as exc:
            ready["error"] = exc
            started.set()
            raise

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), name="kube-api", daemon=True)
    thread.start()
    started.wait(30)
    if "error" in ready:
        raise ready["error"]
    try:
        yield ready["api"], ready["url"]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        loop.close()


def write_kubeconfig(path: str, server_url: str) -> str:
    import yaml

    with open(path, "w") as fh:
        yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
            "clusters": [{"name": "emulator", "cluster": {"server": server_url}}],
            "users": [{"name": "tester", "user": {"token": "test-token"}}],
            "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "tester"}}],
        }, fh)
    return path


def use_kmock_kubeconfig(kmock: Any, tmp_path: Any, monkeypatch: Any) -> None:
    """Point the kubernetes client (in-process, read at call time) at kmock's own emulator fixture."""
    monkeypatch.setenv("KUBECONFIG", write_kubeconfig(str(tmp_path / "kubeconfig"), str(kmock.url).rstrip("/")))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
